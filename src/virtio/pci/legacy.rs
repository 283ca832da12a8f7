//! The legacy virtio-pci interface (virtio 0.9.5; virtio 1.2, 4.1.4.8): one register block in
//! I/O BAR 0. 32 feature bits, a queue given by its PFN in the legacy layout, queue sizes fixed
//! by the device, device config right after the registers (MSI-X is kept off), read and written
//! a byte at a time.

use super::super::barrier;
use super::super::features::DeviceType;
use super::super::regs::{Registers, config_accessors, in_window};
use super::super::transport::{
    DeviceStatus, InterruptStatus, LegacyLayout, QueueAddresses, Transport, TransportError,
};

/// Register offsets in BAR 0.
pub mod reg {
    pub const HOST_FEATURES: usize = 0x00;
    pub const GUEST_FEATURES: usize = 0x04;
    pub const QUEUE_PFN: usize = 0x08;
    pub const QUEUE_NUM: usize = 0x0c;
    pub const QUEUE_SEL: usize = 0x0e;
    pub const QUEUE_NOTIFY: usize = 0x10;
    pub const STATUS: usize = 0x12;
    pub const ISR: usize = 0x13;
    /// Device config, while MSI-X is off.
    pub const CONFIG: usize = 0x14;
}

pub struct VirtioPciLegacy<R> {
    regs: R,
    device_type: DeviceType,
}

impl<R: Registers> VirtioPciLegacy<R> {
    /// `regs`: the whole of BAR 0, at least [`reg::CONFIG`] bytes (checked by the probe).
    pub fn new(regs: R, device_type: DeviceType) -> Self {
        VirtioPciLegacy { regs, device_type }
    }

    fn select(&mut self, queue: u16) {
        self.regs.write16(reg::QUEUE_SEL, queue);
    }

    fn config_window(
        &mut self,
        offset: usize,
        width: usize,
    ) -> Result<(&mut R, usize), TransportError> {
        let len = self.regs.len().saturating_sub(reg::CONFIG);
        if !in_window(offset, width, len) {
            return Err(TransportError::ConfigOutOfRange { offset, width });
        }
        Ok((&mut self.regs, reg::CONFIG + offset))
    }
}

impl<R: Registers> Transport for VirtioPciLegacy<R> {
    fn name(&self) -> &'static str {
        "virtio-pci-legacy"
    }

    fn is_legacy(&self) -> bool {
        true
    }

    fn device_type(&mut self) -> DeviceType {
        self.device_type
    }

    fn device_features(&mut self) -> u64 {
        u64::from(self.regs.read32(reg::HOST_FEATURES))
    }

    fn set_driver_features(&mut self, features: u64) {
        self.regs.write32(reg::GUEST_FEATURES, features as u32);
    }

    fn status(&mut self) -> DeviceStatus {
        DeviceStatus(self.regs.read8(reg::STATUS))
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.regs.write8(reg::STATUS, status.bits());
    }

    fn max_queue_size(&mut self, queue: u16) -> u16 {
        self.select(queue);
        self.regs.read16(reg::QUEUE_NUM)
    }

    fn queue_in_use(&mut self, queue: u16) -> bool {
        self.select(queue);
        self.regs.read32(reg::QUEUE_PFN) != 0
    }

    fn queue_size_fixed(&self) -> bool {
        true
    }

    fn set_queue_size(&mut self, queue: u16, size: u16) -> Result<(), TransportError> {
        if size == self.max_queue_size(queue) {
            Ok(())
        } else {
            Err(TransportError::QueueSizeFixed { queue, size })
        }
    }

    fn set_queue_addresses(
        &mut self,
        queue: u16,
        addresses: &QueueAddresses,
    ) -> Result<(), TransportError> {
        let pfn = LegacyLayout::check(addresses)?;
        self.select(queue);
        self.regs.write32(reg::QUEUE_PFN, pfn);
        Ok(())
    }

    /// The PFN write made the queue live.
    fn enable_queue(&mut self, _queue: u16) {}

    fn notify(&mut self, queue: u16) {
        barrier::publish();
        self.regs.write16(reg::QUEUE_NOTIFY, queue);
    }

    fn config_generation(&mut self) -> u32 {
        0
    }

    // Bytewise: see `config_accessors` (QEMU on ppc64 swaps multi-byte legacy config reads).
    config_accessors!(bytewise);

    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus(u32::from(self.regs.read8(reg::ISR)))
    }
}
