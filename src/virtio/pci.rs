//! virtio-pci (virtio 1.2, 4.1): the modern interface (vendor capabilities pointing into memory
//! BARs) and the legacy one (a register block in I/O BAR 0), over two small platform traits:
//!
//! * [`PciConfigAccess`]: configuration space reads and writes at (bus, device, function,
//!   offset). x86: ports 0xcf8/0xcfc. pseries: RTAS `ibm,read-pci-config`.
//! * [`BarMapper`]: turns "`len` bytes at `offset` in this BAR" into a [`Registers`] window the
//!   CPU can reach (x86: identity-mapped MMIO or port I/O; pseries: the PHB window address).
//!
//! [`probe`] does the portable work for one function: identify the device (0x1040 + type:
//! modern only; 0x1000..=0x103f: transitional, type in the subsystem ID), size the BARs, walk
//! the capability list ([`caps`], bounded and loop-safe), check every virtio structure against
//! its BAR, pick the interface, turn on decoding and bus mastering, and map the registers.
//!
//! Which interface: modern when the device offers the virtio capabilities; legacy only for a
//! transitional device that offers none (QEMU `disable-modern=on`), or when
//! [`ProbeOptions::pci_force_legacy`] asks for it. A device whose capabilities are present but
//! wrong is an error, not a silent fall back to legacy: the point of this guest is to say what
//! the host got wrong.
//!
//! Everything read from configuration space is hostile: pointers, BAR sizes, structure offsets
//! and lengths are checked before use, and an inconsistency is a [`ProbeError`] that names it.

pub mod assign;
pub mod bars;
pub mod caps;
pub mod fdt;
pub mod legacy;
pub mod modern;

#[cfg(test)]
mod tests;

use alloc::boxed::Box;
use alloc::string::String;
use core::fmt;

pub use bars::{Bar, BarError, BarKind, Bars};
pub use caps::{CapError, Region, VirtioCaps};
pub use legacy::VirtioPciLegacy;
pub use modern::VirtioPciModern;

use super::features::DeviceType;
use super::found::ProbeOptions;
use super::regs::Registers;
use super::transport::Transport;

/// The PCI vendor ID of virtio devices (Red Hat / Qumranet).
pub const VIRTIO_VENDOR_ID: u16 = 0x1af4;

/// A function on a PCI bus (the host bridge is implied by the [`PciConfigAccess`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    pub bus: u8,
    /// 0..=31
    pub device: u8,
    /// 0..=7
    pub function: u8,
}

impl PciAddress {
    pub const fn new(bus: u8, device: u8, function: u8) -> Self {
        PciAddress {
            bus,
            device: device & 0x1f,
            function: function & 7,
        }
    }

    /// Device and function as one byte (`dddddfff`).
    pub const fn devfn(self) -> u8 {
        (self.device & 0x1f) << 3 | (self.function & 7)
    }
}

impl PciAddress {
    /// "bb:dd.f", as lspci writes it (without `core::fmt`: see [`crate::report::push_hex`]).
    pub fn bdf(self) -> String {
        let mut s = String::with_capacity(7);
        crate::report::push_hex(&mut s, self.bus.into(), 2);
        s.push(':');
        crate::report::push_hex(&mut s, self.device.into(), 2);
        s.push('.');
        crate::report::push_hex(&mut s, self.function.into(), 1);
        s
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.bdf())
    }
}

/// Configuration space access. Offsets are below 256 here (the capabilities virtio uses live
/// in the conventional space) and naturally aligned for their width. A read the platform cannot
/// perform (no function there, an RTAS error) returns all ones, as a PCI master abort does; a
/// write it cannot perform is dropped.
pub trait PciConfigAccess {
    fn read8(&mut self, at: PciAddress, offset: u16) -> u8;
    fn read16(&mut self, at: PciAddress, offset: u16) -> u16;
    fn read32(&mut self, at: PciAddress, offset: u16) -> u32;
    fn write8(&mut self, at: PciAddress, offset: u16, value: u8);
    fn write16(&mut self, at: PciAddress, offset: u16, value: u16);
    fn write32(&mut self, at: PciAddress, offset: u16, value: u32);
}

/// Configuration header offsets and bits (type 0 header).
pub mod cfg {
    pub const VENDOR_ID: u16 = 0x00;
    pub const DEVICE_ID: u16 = 0x02;
    pub const COMMAND: u16 = 0x04;
    pub const STATUS: u16 = 0x06;
    pub const REVISION_ID: u16 = 0x08;
    pub const HEADER_TYPE: u16 = 0x0e;
    pub const BAR0: u16 = 0x10;
    pub const SUBSYSTEM_ID: u16 = 0x2e;
    pub const CAPABILITIES: u16 = 0x34;

    pub const COMMAND_IO: u16 = 1 << 0;
    pub const COMMAND_MEMORY: u16 = 1 << 1;
    pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
    pub const STATUS_CAP_LIST: u16 = 1 << 4;
}

/// How the platform reaches a BAR.
pub trait BarMapper {
    type Regs: Registers;

    /// A window over `len` bytes at `offset` in `bar` of function `at`. The caller checked that
    /// the range lies inside the BAR; the mapper checks that the BAR has an address the CPU can
    /// reach (assigned, inside a host bridge window, mapped) and says why not otherwise.
    fn map(
        &mut self,
        at: PciAddress,
        bar: &Bar,
        offset: u64,
        len: u64,
    ) -> Result<Self::Regs, String>;
}

/// Who the function says it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub vendor_id: u16,
    pub device_id: u16,
    pub subsystem_id: u16,
    pub revision: u8,
    pub device_type: DeviceType,
    /// A transitional device (0x1000..=0x103f) offers the legacy interface too.
    pub transitional: bool,
}

/// Why a PCI function could not be set up as a virtio device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// Not a virtio function at all (or nothing answers there: all ones).
    NotVirtio {
        vendor_id: u16,
        device_id: u16,
    },
    /// A transitional device whose subsystem ID (the device type) is 0, or modern ID 0x1040.
    NoDeviceType {
        device_id: u16,
        subsystem_id: u16,
    },
    /// Not a type 0 (endpoint) header, so there are no six BARs.
    HeaderType {
        header_type: u8,
    },
    Bar(BarError),
    /// The capability list or a virtio structure is malformed.
    Caps(CapError),
    /// A modern-only device (0x1040..) without the virtio capabilities.
    NoModernInterface,
    /// Legacy was needed (no modern capabilities, or forced) but BAR 0 is not an I/O BAR large
    /// enough for the legacy registers.
    NoLegacyInterface {
        why: &'static str,
    },
    /// The platform could not map a BAR.
    Map {
        what: &'static str,
        bar: u8,
        why: String,
    },
}

impl From<BarError> for ProbeError {
    fn from(e: BarError) -> Self {
        ProbeError::Bar(e)
    }
}

impl From<CapError> for ProbeError {
    fn from(e: CapError) -> Self {
        ProbeError::Caps(e)
    }
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::NotVirtio {
                vendor_id,
                device_id,
            } => {
                write!(f, "not a virtio function ({vendor_id:04x}:{device_id:04x})")
            }
            ProbeError::NoDeviceType {
                device_id,
                subsystem_id,
            } => write!(
                f,
                "virtio PCI device {device_id:#06x} with subsystem ID {subsystem_id:#06x} names \
                 no device type"
            ),
            ProbeError::HeaderType { header_type } => {
                write!(f, "header type {header_type:#04x}, expected 0 (endpoint)")
            }
            ProbeError::Bar(e) => write!(f, "{e}"),
            ProbeError::Caps(e) => write!(f, "{e}"),
            ProbeError::NoModernInterface => {
                f.write_str("modern-only virtio device without virtio capabilities")
            }
            ProbeError::NoLegacyInterface { why } => write!(f, "no legacy interface: {why}"),
            ProbeError::Map { what, bar, why } => write!(f, "{what} (BAR {bar}): {why}"),
        }
    }
}

/// Reads the IDs and derives the device type.
pub fn identify<C: PciConfigAccess + ?Sized>(
    cfg: &mut C,
    at: PciAddress,
) -> Result<Identity, ProbeError> {
    let vendor_id = cfg.read16(at, cfg::VENDOR_ID);
    let device_id = cfg.read16(at, cfg::DEVICE_ID);
    if vendor_id != VIRTIO_VENDOR_ID || !(0x1000..=0x107f).contains(&device_id) {
        return Err(ProbeError::NotVirtio {
            vendor_id,
            device_id,
        });
    }
    let subsystem_id = cfg.read16(at, cfg::SUBSYSTEM_ID);
    let revision = cfg.read8(at, cfg::REVISION_ID);
    let transitional = device_id < 0x1040;
    let device_type = match DeviceType::from_pci_modern_id(device_id) {
        Some(t) => t,
        None => DeviceType(u32::from(subsystem_id)),
    };
    if device_type == DeviceType::NONE {
        return Err(ProbeError::NoDeviceType {
            device_id,
            subsystem_id,
        });
    }
    Ok(Identity {
        vendor_id,
        device_id,
        subsystem_id,
        revision,
        device_type,
        transitional,
    })
}

/// A set-up virtio-pci transport.
pub enum VirtioPci<R> {
    Modern(VirtioPciModern<R>),
    Legacy(VirtioPciLegacy<R>),
}

impl<R: Registers + Send + 'static> VirtioPci<R> {
    pub fn into_transport(self) -> Box<dyn Transport + Send> {
        match self {
            VirtioPci::Modern(t) => Box::new(t),
            VirtioPci::Legacy(t) => Box::new(t),
        }
    }
}

/// The legacy registers end here; device config follows (without MSI-X, which this guest
/// never enables).
const LEGACY_REGS_LEN: u64 = legacy::reg::CONFIG as u64;

/// The legacy interface: the registers in I/O BAR 0.
fn setup_legacy<C, M>(
    cfg: &mut C,
    mapper: &mut M,
    at: PciAddress,
    id: &Identity,
    bars: &Bars,
    list: &caps::CapList,
) -> Result<VirtioPci<M::Regs>, ProbeError>
where
    C: PciConfigAccess + ?Sized,
    M: BarMapper + ?Sized,
{
    let bar = match &bars[0] {
        Some(b) if b.kind == BarKind::Io && b.size >= LEGACY_REGS_LEN => *b,
        Some(b) if b.kind == BarKind::Io => {
            return Err(ProbeError::NoLegacyInterface {
                why: "I/O BAR 0 is smaller than the legacy registers",
            });
        }
        Some(_) => {
            return Err(ProbeError::NoLegacyInterface {
                why: "BAR 0 is a memory BAR, the legacy registers need I/O",
            });
        }
        None => {
            return Err(ProbeError::NoLegacyInterface {
                why: "BAR 0 is not implemented",
            });
        }
    };
    // MSI-X on would move the device config by 4 bytes; this guest polls, so it is off.
    caps::disable_msix(cfg, at, list);
    let regs = mapper
        .map(at, &bar, 0, bar.size)
        .map_err(|why| ProbeError::Map {
            what: "legacy registers",
            bar: bar.index,
            why,
        })?;
    let command = cfg.read16(at, cfg::COMMAND);
    cfg.write16(
        at,
        cfg::COMMAND,
        command | cfg::COMMAND_IO | cfg::COMMAND_BUS_MASTER,
    );
    Ok(VirtioPci::Legacy(VirtioPciLegacy::new(
        regs,
        id.device_type,
    )))
}

/// Sets up function `at` as a virtio device: see the module docs. On success, memory (modern)
/// or I/O (legacy) decoding and bus mastering are on; on failure nothing was enabled.
pub fn probe<C, M>(
    cfg: &mut C,
    mapper: &mut M,
    at: PciAddress,
    options: &ProbeOptions,
) -> Result<VirtioPci<M::Regs>, ProbeError>
where
    C: PciConfigAccess + ?Sized,
    M: BarMapper + ?Sized,
{
    let id = identify(cfg, at)?;
    let header_type = cfg.read8(at, cfg::HEADER_TYPE) & 0x7f;
    if header_type != 0 {
        return Err(ProbeError::HeaderType { header_type });
    }
    let bars = bars::read_bars(cfg, at)?;
    let list = caps::walk(cfg, at)?;
    let modern = caps::virtio_caps(cfg, at, &list, &bars)?;

    let caps = match modern {
        None if !id.transitional => return Err(ProbeError::NoModernInterface),
        Some(caps) if !(id.transitional && options.pci_force_legacy) => caps,
        _ => return setup_legacy(cfg, mapper, at, &id, &bars, &list),
    };

    let command = cfg.read16(at, cfg::COMMAND);
    let mut map = |what: &'static str, r: &Region| {
        // `virtio_caps` checked the index; `get` keeps that from being a panic if it ever
        // did not.
        let bar = bars
            .get(usize::from(r.bar))
            .and_then(Option::as_ref)
            .ok_or(ProbeError::Map {
                what,
                bar: r.bar,
                why: String::from("no such BAR"),
            })?;
        mapper
            .map(at, bar, r.offset, r.length)
            .map_err(|why| ProbeError::Map {
                what,
                bar: r.bar,
                why,
            })
    };
    let common = map("common config", &caps.common)?;
    let notify = map("notify area", &caps.notify)?;
    let isr = map("ISR", &caps.isr)?;
    let device = match &caps.device {
        Some(r) => Some(map("device config", r)?),
        None => None,
    };
    // Decode whatever kind of BAR the structures live in (normally memory).
    let mut enable = cfg::COMMAND_BUS_MASTER;
    for r in [
        Some(&caps.common),
        Some(&caps.notify),
        Some(&caps.isr),
        caps.device.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        if let Some(Some(b)) = bars.get(usize::from(r.bar)) {
            enable |= if b.kind == BarKind::Io {
                cfg::COMMAND_IO
            } else {
                cfg::COMMAND_MEMORY
            };
        }
    }
    cfg.write16(at, cfg::COMMAND, command | enable);
    Ok(VirtioPci::Modern(VirtioPciModern::new(
        common,
        notify,
        caps.notify_multiplier,
        isr,
        device,
        id.device_type,
    )))
}
