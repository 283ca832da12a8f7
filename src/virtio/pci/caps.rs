//! The capability list and the virtio structures it points at (virtio 1.2, 4.1.4).
//!
//! The list is device data: the walk follows at most [`MAX_CAPS`] pointers, refuses a pointer
//! into the header (below 0x40) or one whose capability would end beyond the 256 bytes of
//! configuration space, and stops with an error at the first pointer it has seen before (a
//! loop). Each virtio structure must then lie inside an implemented BAR, be aligned as the
//! specification requires and be long enough for what the driver accesses.

use alloc::vec::Vec;
use core::fmt;

use super::bars::Bars;
use super::{PciAddress, PciConfigAccess, cfg};

/// At most this many capabilities: (256 - 64) / 4, one per dword after the header.
pub const MAX_CAPS: usize = 48;

pub const CAP_ID_MSIX: u8 = 0x11;
pub const CAP_ID_VENDOR: u8 = 0x09;

/// virtio structure types (`cfg_type`).
pub const COMMON_CFG: u8 = 1;
pub const NOTIFY_CFG: u8 = 2;
pub const ISR_CFG: u8 = 3;
pub const DEVICE_CFG: u8 = 4;
pub const PCI_CFG: u8 = 5;

/// The smallest structures the transport accepts: the common config up to `queue_device`
/// (virtio 1.0), one notify register, the ISR byte.
pub const COMMON_CFG_MIN_LEN: u64 = 0x38;
pub const NOTIFY_MIN_LEN: u64 = 2;
pub const ISR_MIN_LEN: u64 = 1;

/// One entry of the capability list: its ID and where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap {
    pub id: u8,
    pub at: u8,
}

pub type CapList = Vec<Cap>;

/// A virtio structure: `length` bytes at `offset` in BAR `bar`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub bar: u8,
    pub offset: u64,
    pub length: u64,
}

/// The modern interface's structures, each checked against its BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioCaps {
    pub common: Region,
    pub notify: Region,
    /// Queue `q`'s notify register is at `queue_notify_off(q) * notify_multiplier`.
    pub notify_multiplier: u32,
    pub isr: Region,
    /// Absent when the device has no device-specific configuration.
    pub device: Option<Region>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapError {
    /// A capability pointer below 0x40 (into the header), found at config offset `from`.
    PointerIntoHeader { from: u8, ptr: u8 },
    /// A capability that would end beyond configuration space.
    BeyondConfigSpace { at: u8, len: u8 },
    /// The list comes back to a capability it already listed.
    Loop { at: u8 },
    /// More than [`MAX_CAPS`] capabilities.
    TooMany,
    /// A virtio capability whose `cap_len` is too small for its type.
    ShortCapability { at: u8, cfg_type: u8, cap_len: u8 },
    /// Every capability of a needed type is unusable; the first one's problem.
    Unusable {
        cfg_type: u8,
        at: u8,
        why: RegionProblem,
    },
    /// A needed structure type is not offered at all (the others are).
    Missing { cfg_type: u8 },
}

/// What is wrong with a virtio structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionProblem {
    /// `bar` is 6 or more (reserved) or names an unimplemented BAR or the upper half of a
    /// 64-bit one.
    NoSuchBar {
        bar: u8,
    },
    /// offset + length beyond the BAR.
    BeyondBar {
        bar: u8,
        offset: u32,
        length: u32,
        bar_size: u64,
    },
    Misaligned {
        offset: u32,
        align: u32,
    },
    TooShort {
        length: u32,
        need: u64,
    },
    /// `notify_off_multiplier` neither 0 nor an even power of two (2, 4, 8, ...; QEMU uses 4).
    BadMultiplier {
        value: u32,
    },
}

fn type_name(cfg_type: u8) -> &'static str {
    match cfg_type {
        COMMON_CFG => "common config",
        NOTIFY_CFG => "notify",
        ISR_CFG => "ISR",
        DEVICE_CFG => "device config",
        PCI_CFG => "PCI config access",
        _ => "unknown",
    }
}

impl fmt::Display for RegionProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RegionProblem::NoSuchBar { bar } => write!(f, "BAR {bar} does not exist"),
            RegionProblem::BeyondBar {
                bar,
                offset,
                length,
                bar_size,
            } => write!(
                f,
                "{length:#x} bytes at {offset:#x} do not fit BAR {bar} of {bar_size:#x} bytes"
            ),
            RegionProblem::Misaligned { offset, align } => {
                write!(f, "offset {offset:#x} not {align}-byte aligned")
            }
            RegionProblem::TooShort { length, need } => {
                write!(f, "{length} bytes, at least {need} needed")
            }
            RegionProblem::BadMultiplier { value } => {
                write!(
                    f,
                    "notify_off_multiplier {value} is not 0 or an even power of 2"
                )
            }
        }
    }
}

impl fmt::Display for CapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            CapError::PointerIntoHeader { from, ptr } => {
                write!(
                    f,
                    "capability pointer at {from:#04x} points into the header ({ptr:#04x})"
                )
            }
            CapError::BeyondConfigSpace { at, len } => write!(
                f,
                "capability at {at:#04x} ({len} bytes) ends beyond configuration space"
            ),
            CapError::Loop { at } => write!(f, "capability list loops back to {at:#04x}"),
            CapError::TooMany => write!(f, "more than {MAX_CAPS} capabilities"),
            CapError::ShortCapability {
                at,
                cfg_type,
                cap_len,
            } => write!(
                f,
                "virtio {} capability at {at:#04x} has cap_len {cap_len}",
                type_name(cfg_type)
            ),
            CapError::Unusable { cfg_type, at, why } => {
                write!(
                    f,
                    "virtio {} capability at {at:#04x}: {why}",
                    type_name(cfg_type)
                )
            }
            CapError::Missing { cfg_type } => {
                write!(f, "no virtio {} capability", type_name(cfg_type))
            }
        }
    }
}

/// Walks the capability list: every capability's ID and offset, in list order.
pub fn walk<C: PciConfigAccess + ?Sized>(cfg: &mut C, at: PciAddress) -> Result<CapList, CapError> {
    let mut list = Vec::new();
    if cfg.read16(at, cfg::STATUS) & cfg::STATUS_CAP_LIST == 0 {
        return Ok(list);
    }
    // The bottom two bits of every pointer are reserved (PCI 3.0, 6.7).
    let mut from = cfg::CAPABILITIES as u8;
    let mut ptr = cfg.read8(at, cfg::CAPABILITIES) & !3;
    let mut seen = [false; 64];
    while ptr != 0 {
        if ptr < 0x40 {
            return Err(CapError::PointerIntoHeader { from, ptr });
        }
        let slot = &mut seen[usize::from(ptr / 4)];
        if *slot {
            return Err(CapError::Loop { at: ptr });
        }
        *slot = true;
        if list.len() == MAX_CAPS {
            return Err(CapError::TooMany);
        }
        // ptr <= 0xfc: the ID and next bytes are always inside.
        let id = cfg.read8(at, u16::from(ptr));
        list.push(Cap { id, at: ptr });
        from = ptr + 1;
        ptr = cfg.read8(at, u16::from(ptr) + 1) & !3;
    }
    Ok(list)
}

/// A virtio vendor capability as read (virtio_pci_cap).
#[derive(Clone, Copy, Debug)]
struct RawVirtioCap {
    at: u8,
    cfg_type: u8,
    bar: u8,
    offset: u32,
    length: u32,
    multiplier: u32,
}

/// Reads the virtio structures from the vendor capabilities and checks them against the BARs.
/// `Ok(None)`: the device offers none of the four structures (a legacy-only device).
pub fn virtio_caps<C: PciConfigAccess + ?Sized>(
    cfg: &mut C,
    at: PciAddress,
    list: &[Cap],
    bars: &Bars,
) -> Result<Option<VirtioCaps>, CapError> {
    let mut raw = Vec::new();
    for cap in list.iter().filter(|c| c.id == CAP_ID_VENDOR) {
        let p = u16::from(cap.at);
        let cap_len = cfg.read8(at, p + 2);
        let cfg_type = cfg.read8(at, p + 3);
        if !(COMMON_CFG..=DEVICE_CFG).contains(&cfg_type) {
            continue; // PCI_CFG, shared memory, vendor data: not used here
        }
        let need: u8 = if cfg_type == NOTIFY_CFG { 20 } else { 16 };
        if u16::from(cap.at) + u16::from(need) > 256 {
            return Err(CapError::BeyondConfigSpace {
                at: cap.at,
                len: need,
            });
        }
        if cap_len < need {
            return Err(CapError::ShortCapability {
                at: cap.at,
                cfg_type,
                cap_len,
            });
        }
        raw.push(RawVirtioCap {
            at: cap.at,
            cfg_type,
            bar: cfg.read8(at, p + 4),
            offset: cfg.read32(at, p + 8),
            length: cfg.read32(at, p + 12),
            multiplier: if cfg_type == NOTIFY_CFG {
                cfg.read32(at, p + 16)
            } else {
                0
            },
        });
    }
    if raw.is_empty() {
        return Ok(None);
    }
    // The first usable capability of each type (virtio 1.2, 4.1.4: "the driver SHOULD use the
    // first instance of each virtio structure type they can support").
    let pick = |cfg_type: u8| -> Result<Option<(Region, u32)>, CapError> {
        let mut first_problem = None;
        for c in raw.iter().filter(|c| c.cfg_type == cfg_type) {
            match check(c, bars) {
                Ok(r) => return Ok(Some((r, c.multiplier))),
                Err(why) => {
                    first_problem.get_or_insert(CapError::Unusable {
                        cfg_type,
                        at: c.at,
                        why,
                    });
                }
            }
        }
        first_problem.map_or(Ok(None), Err)
    };
    let common = pick(COMMON_CFG)?;
    let notify = pick(NOTIFY_CFG)?;
    let isr = pick(ISR_CFG)?;
    let device = pick(DEVICE_CFG)?;
    let missing = |t| CapError::Missing { cfg_type: t };
    let (common, _) = common.ok_or(missing(COMMON_CFG))?;
    let (notify, notify_multiplier) = notify.ok_or(missing(NOTIFY_CFG))?;
    let (isr, _) = isr.ok_or(missing(ISR_CFG))?;
    Ok(Some(VirtioCaps {
        common,
        notify,
        notify_multiplier,
        isr,
        device: device.map(|(r, _)| r),
    }))
}

/// Checks one structure against its BAR, alignment and minimum length.
fn check(c: &RawVirtioCap, bars: &Bars) -> Result<Region, RegionProblem> {
    let bar = bars
        .get(usize::from(c.bar))
        .copied()
        .flatten()
        .ok_or(RegionProblem::NoSuchBar { bar: c.bar })?;
    let (align, need) = match c.cfg_type {
        COMMON_CFG => (4, COMMON_CFG_MIN_LEN),
        NOTIFY_CFG => (2, NOTIFY_MIN_LEN),
        ISR_CFG => (1, ISR_MIN_LEN),
        _ => (4, 0),
    };
    if !c.offset.is_multiple_of(align) {
        return Err(RegionProblem::Misaligned {
            offset: c.offset,
            align,
        });
    }
    if u64::from(c.length) < need {
        return Err(RegionProblem::TooShort {
            length: c.length,
            need,
        });
    }
    if u64::from(c.offset) + u64::from(c.length) > bar.size {
        return Err(RegionProblem::BeyondBar {
            bar: c.bar,
            offset: c.offset,
            length: c.length,
            bar_size: bar.size,
        });
    }
    let multiplier_ok = c.multiplier == 0 || (c.multiplier.is_power_of_two() && c.multiplier >= 2);
    if c.cfg_type == NOTIFY_CFG && !multiplier_ok {
        return Err(RegionProblem::BadMultiplier {
            value: c.multiplier,
        });
    }
    // Any BAR kind will do (the spec allows I/O BARs too); the mapper decides whether the
    // platform can reach it.
    Ok(Region {
        bar: c.bar,
        offset: u64::from(c.offset),
        length: u64::from(c.length),
    })
}

/// Turns MSI-X off if firmware left it on (legacy: it moves the device config; this guest
/// polls and never uses interrupts).
pub fn disable_msix<C: PciConfigAccess + ?Sized>(cfg: &mut C, at: PciAddress, list: &[Cap]) {
    for cap in list.iter().filter(|c| c.id == CAP_ID_MSIX) {
        let control_at = u16::from(cap.at) + 2;
        let control = cfg.read16(at, control_at);
        if control & 0x8000 != 0 {
            cfg.write16(at, control_at, control & !0x8000);
        }
    }
}
