//! What device discovery hands to the drivers: each virtio device with its transport, ready for
//! [`crate::virtio::init::init`], and a line for each one that was found but cannot be used.
//!
//! The arch layer (`src/arch/*`, `virtio_devices`) finds the devices: virtio-mmio nodes of the
//! device tree (microvm), PCI functions (q35 and pc by enumeration, pseries from the device
//! tree, behind RTAS config access). Nothing there panics on what a device or firmware says: a
//! device that cannot be set up becomes a [`Skipped`] entry with the reason.

use alloc::boxed::Box;
use alloc::string::String;

use super::transport::Transport;

/// A virtio device found on this machine, with its transport ready for `virtio::init`.
pub struct FoundDevice {
    /// Where it is, for the report: the device-tree path of a virtio-mmio node
    /// (`/virtio_mmio@feb02e00`) or a PCI address (`00:02.0`; on pseries a PHB other than the
    /// first is named too: `pci@800000020000001/00:01.0`).
    pub location: String,
    pub transport: Box<dyn Transport + Send>,
    /// The IOMMU domain (an index in the run's domains, `arch::iommu_domains`) that translates
    /// the device's DMA once it negotiates `ACCESS_PLATFORM`; `None`: no IOMMU in its way.
    pub iommu: Option<usize>,
}

impl core::fmt::Debug for FoundDevice {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FoundDevice")
            .field("location", &self.location)
            .field("transport", &self.transport.name())
            .finish()
    }
}

/// A device that was found but could not be set up: (location, why).
pub type Skipped = (String, String);

/// Choices for discovery. [`Default`] is what a normal run uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeOptions {
    /// Drive transitional virtio-pci devices (PCI device ID 0x1000..=0x103f, which offer both
    /// interfaces) through their legacy I/O BAR even though they offer the modern one.
    /// Modern-only devices are unaffected.
    pub pci_force_legacy: bool,
}
