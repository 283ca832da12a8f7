//! virtio devices on x86_64: virtio-mmio slots from microvm's device tree, virtio-pci functions
//! from the enumeration of q35 and pc (BARs as SeaBIOS assigned them, config through
//! 0xcf8/0xcfc, legacy registers through port I/O).

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use secure_guest::devtree::DeviceTree;
use secure_guest::virtio::found::{FoundDevice, ProbeOptions, Skipped};
use secure_guest::virtio::mmio::VirtioMmio;
use secure_guest::virtio::pci::{self, Bar, BarKind, BarMapper, PciAddress};
use secure_guest::virtio::regs::{MmioWindow, Registers};

use super::paging;
use super::pci::PortConfig;
use super::port::PortWindow;

/// Registers behind a memory BAR or an I/O BAR.
pub enum BarRegs {
    Mmio(MmioWindow),
    Port(PortWindow),
}

impl Registers for BarRegs {
    fn len(&self) -> usize {
        match self {
            BarRegs::Mmio(w) => w.len(),
            BarRegs::Port(w) => w.len(),
        }
    }
    fn read8(&mut self, offset: usize) -> u8 {
        match self {
            BarRegs::Mmio(w) => w.read8(offset),
            BarRegs::Port(w) => w.read8(offset),
        }
    }
    fn read16(&mut self, offset: usize) -> u16 {
        match self {
            BarRegs::Mmio(w) => w.read16(offset),
            BarRegs::Port(w) => w.read16(offset),
        }
    }
    fn read32(&mut self, offset: usize) -> u32 {
        match self {
            BarRegs::Mmio(w) => w.read32(offset),
            BarRegs::Port(w) => w.read32(offset),
        }
    }
    fn write8(&mut self, offset: usize, value: u8) {
        match self {
            BarRegs::Mmio(w) => w.write8(offset, value),
            BarRegs::Port(w) => w.write8(offset, value),
        }
    }
    fn write16(&mut self, offset: usize, value: u16) {
        match self {
            BarRegs::Mmio(w) => w.write16(offset, value),
            BarRegs::Port(w) => w.write16(offset, value),
        }
    }
    fn write32(&mut self, offset: usize, value: u32) {
        match self {
            BarRegs::Mmio(w) => w.write32(offset, value),
            BarRegs::Port(w) => w.write32(offset, value),
        }
    }
}

/// A memory window at physical `base`, mapped first if it lies above the boot map.
fn mmio_window(base: u64, len: u64) -> Result<MmioWindow, String> {
    paging::ensure_mapped(base, len).map_err(|e| format!("{base:#x}+{len:#x}: {e}"))?;
    let base = usize::try_from(base).map_err(|_| String::from("address too high"))?;
    let len = usize::try_from(len).map_err(|_| String::from("length too large"))?;
    // SAFETY: the range is device memory that the device tree (virtio-mmio) or a BAR the
    // firmware programmed (PCI) names, identity-mapped (just checked / extended). Nothing else
    // in the guest references it.
    Ok(unsafe { MmioWindow::new(base, len) })
}

/// BARs as the firmware (SeaBIOS) left them: bus address == physical address.
pub(super) struct X86Bars;

impl BarMapper for X86Bars {
    type Regs = BarRegs;

    fn map(
        &mut self,
        _at: PciAddress,
        bar: &Bar,
        offset: u64,
        len: u64,
    ) -> Result<BarRegs, String> {
        if bar.addr == 0 {
            return Err(String::from("the firmware left the BAR unassigned"));
        }
        let start = bar.addr.checked_add(offset).ok_or("address overflow")?;
        match bar.kind {
            BarKind::Io => PortWindow::new(start, len)
                .map(BarRegs::Port)
                .ok_or_else(|| format!("I/O range {start:#x}+{len:#x} beyond the port space")),
            BarKind::Mem32 | BarKind::Mem64 => mmio_window(start, len).map(BarRegs::Mmio),
        }
    }
}

/// Every virtio device: see [`virtio_devices_with`].
pub fn virtio_devices(tree: &DeviceTree) -> (Vec<FoundDevice>, Vec<Skipped>) {
    virtio_devices_with(tree, &ProbeOptions::default())
}

/// The virtio-mmio nodes of the tree (microvm), then the virtio PCI functions the enumeration
/// found (q35, pc), each with its transport set up, in that order. Empty virtio-mmio slots
/// (device ID 0) are left out; devices that cannot be used are listed with the reason.
pub fn virtio_devices_with(
    tree: &DeviceTree,
    options: &ProbeOptions,
) -> (Vec<FoundDevice>, Vec<Skipped>) {
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    for node in &tree.virtio_mmio {
        let probed = mmio_window(node.base, node.size)
            .and_then(|w| VirtioMmio::probe(w).map_err(|e| format!("{e}")));
        match probed {
            Ok(Some(t)) => found.push(FoundDevice {
                location: node.path.clone(),
                transport: Box::new(t),
                iommu: None,
            }),
            Ok(None) => {}
            Err(why) => skipped.push((node.path.clone(), why)),
        }
    }
    for f in tree.pci_functions.iter().filter(|f| f.is_virtio()) {
        // The virtio-iommu is driven as the IOMMU (`iommu.rs`), not as a device.
        if super::iommu::is_iommu_function(f.bus, f.device, f.function) {
            continue;
        }
        let at = PciAddress::new(f.bus, f.device, f.function);
        match pci::probe(&mut PortConfig, &mut X86Bars, at, options) {
            Ok(t) => found.push(FoundDevice {
                location: at.bdf(),
                transport: t.into_transport(),
                iommu: super::iommu::domain_index(f.bus, f.device, f.function),
            }),
            Err(e) => skipped.push((at.bdf(), format!("{e}"))),
        }
    }
    (found, skipped)
}
