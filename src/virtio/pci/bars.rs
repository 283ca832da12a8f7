//! Base address registers: decoding and sizing (PCI 3.0, 6.2.5.1).

use core::fmt;

use super::{PciAddress, PciConfigAccess, cfg};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    Io,
    /// A 32-bit memory BAR (including the obsolete "below 1 MiB" type).
    Mem32,
    /// A 64-bit memory BAR: this register and the next.
    Mem64,
}

impl BarKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BarKind::Io => "io",
            BarKind::Mem32 => "mem32",
            BarKind::Mem64 => "mem64",
        }
    }
}

/// One implemented BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// 0..=5 (a 64-bit BAR is named by its low register).
    pub index: u8,
    pub kind: BarKind,
    pub prefetchable: bool,
    /// The bus address programmed into it (0: nothing assigned yet, as far as firmware goes).
    pub addr: u64,
    /// A power of two.
    pub size: u64,
}

impl Bar {
    /// The config offset of its (low) register.
    pub fn offset(&self) -> u16 {
        cfg::BAR0 + 4 * u16::from(self.index)
    }
}

/// The six BARs of a type 0 header; `None` for an unimplemented one and for the upper half
/// of a 64-bit BAR.
pub type Bars = [Option<Bar>; 6];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarError {
    /// A 64-bit BAR in the last register: it has no upper half.
    Mem64InLastSlot,
    /// Memory type 3 is reserved.
    ReservedType { index: u8, value: u32 },
}

impl fmt::Display for BarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BarError::Mem64InLastSlot => f.write_str("BAR 5 claims to be 64-bit"),
            BarError::ReservedType { index, value } => {
                write!(
                    f,
                    "BAR {index} has the reserved memory type ({value:#010x})"
                )
            }
        }
    }
}

/// The size a BAR's writable-bits mask stands for: its lowest set bit. `None` when no address
/// bit sticks (the BAR is not implemented).
fn size_of_mask(mask: u64) -> Option<u64> {
    (mask != 0).then(|| 1u64 << mask.trailing_zeros())
}

/// Reads and sizes the BARs: each is written with all ones and read back, with I/O and memory
/// decoding off meanwhile so that the device never decodes the probe value, then restored
/// (value and command register).
pub fn read_bars<C: PciConfigAccess + ?Sized>(
    cfg: &mut C,
    at: PciAddress,
) -> Result<Bars, BarError> {
    let command = cfg.read16(at, cfg::COMMAND);
    cfg.write16(
        at,
        cfg::COMMAND,
        command & !(cfg::COMMAND_IO | cfg::COMMAND_MEMORY),
    );
    let result = size_all(cfg, at);
    cfg.write16(at, cfg::COMMAND, command);
    result
}

fn probe_register<C: PciConfigAccess + ?Sized>(
    cfg: &mut C,
    at: PciAddress,
    off: u16,
) -> (u32, u32) {
    let value = cfg.read32(at, off);
    cfg.write32(at, off, u32::MAX);
    let mask = cfg.read32(at, off);
    cfg.write32(at, off, value);
    (value, mask)
}

fn size_all<C: PciConfigAccess + ?Sized>(cfg: &mut C, at: PciAddress) -> Result<Bars, BarError> {
    let mut bars: Bars = [None; 6];
    let mut i = 0u8;
    while i < 6 {
        let off = cfg::BAR0 + 4 * u16::from(i);
        let (value, mask) = probe_register(cfg, at, off);
        if value & 1 == 1 {
            // I/O: bits 31..2 are the address (x86 decodes 16 of them; the upper ones then
            // read back 0, which the lowest-bit rule does not mind).
            bars[usize::from(i)] = size_of_mask(u64::from(mask & !3)).map(|size| Bar {
                index: i,
                kind: BarKind::Io,
                prefetchable: false,
                addr: u64::from(value & !3),
                size,
            });
            i += 1;
            continue;
        }
        let prefetchable = value & 8 != 0;
        match (value >> 1) & 3 {
            0 | 1 => {
                bars[usize::from(i)] = size_of_mask(u64::from(mask & !0xf)).map(|size| Bar {
                    index: i,
                    kind: BarKind::Mem32,
                    prefetchable,
                    addr: u64::from(value & !0xf),
                    size,
                });
                i += 1;
            }
            2 => {
                if i == 5 {
                    return Err(BarError::Mem64InLastSlot);
                }
                let (high, high_mask) = probe_register(cfg, at, off + 4);
                let mask = u64::from(mask & !0xf) | u64::from(high_mask) << 32;
                bars[usize::from(i)] = size_of_mask(mask).map(|size| Bar {
                    index: i,
                    kind: BarKind::Mem64,
                    prefetchable,
                    addr: u64::from(value & !0xf) | u64::from(high) << 32,
                    size,
                });
                i += 2;
            }
            _ => return Err(BarError::ReservedType { index: i, value }),
        }
    }
    Ok(bars)
}

/// Programs `bar` with bus address `addr` (both halves of a 64-bit BAR). The caller turns
/// decoding on afterwards.
pub fn write_bar<C: PciConfigAccess + ?Sized>(cfg: &mut C, at: PciAddress, bar: &Bar, addr: u64) {
    cfg.write32(at, bar.offset(), addr as u32);
    if bar.kind == BarKind::Mem64 {
        cfg.write32(at, bar.offset() + 4, (addr >> 32) as u32);
    }
}
