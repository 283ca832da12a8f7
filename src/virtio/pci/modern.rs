//! The modern virtio-pci interface (virtio 1.2, 4.1.4): common config, notify area, ISR and
//! device config, each its own register window. MSI-X vectors are never assigned: this guest
//! polls.

use super::super::barrier;
use super::super::features::DeviceType;
use super::super::regs::{Registers, config_accessors, in_window};
use super::super::transport::{
    DeviceStatus, InterruptStatus, QueueAddresses, Transport, TransportError,
};

/// `virtio_pci_common_cfg` offsets.
pub mod common {
    pub const DEVICE_FEATURE_SELECT: usize = 0x00;
    pub const DEVICE_FEATURE: usize = 0x04;
    pub const DRIVER_FEATURE_SELECT: usize = 0x08;
    pub const DRIVER_FEATURE: usize = 0x0c;
    pub const NUM_QUEUES: usize = 0x12;
    pub const DEVICE_STATUS: usize = 0x14;
    pub const CONFIG_GENERATION: usize = 0x15;
    pub const QUEUE_SELECT: usize = 0x16;
    pub const QUEUE_SIZE: usize = 0x18;
    pub const QUEUE_ENABLE: usize = 0x1c;
    pub const QUEUE_NOTIFY_OFF: usize = 0x1e;
    pub const QUEUE_DESC: usize = 0x20;
    pub const QUEUE_DRIVER: usize = 0x28;
    pub const QUEUE_DEVICE: usize = 0x30;
}

/// Notify offsets of the first queues are kept so that a notification is one register write.
const NOTIFY_CACHE: usize = 16;

pub struct VirtioPciModern<R> {
    common: R,
    notify: R,
    notify_multiplier: u32,
    isr: R,
    device: Option<R>,
    device_type: DeviceType,
    /// Offset in the notify window of queue `q < NOTIFY_CACHE`, once its addresses were set.
    notify_offsets: [Option<u32>; NOTIFY_CACHE],
}

impl<R: Registers> VirtioPciModern<R> {
    /// The windows come from checked capabilities (see [`super::caps`]).
    pub fn new(
        common: R,
        notify: R,
        notify_multiplier: u32,
        isr: R,
        device: Option<R>,
        device_type: DeviceType,
    ) -> Self {
        VirtioPciModern {
            common,
            notify,
            notify_multiplier,
            isr,
            device,
            device_type,
            notify_offsets: [None; NOTIFY_CACHE],
        }
    }

    fn select(&mut self, queue: u16) {
        self.common.write16(common::QUEUE_SELECT, queue);
    }

    fn num_queues(&mut self) -> u16 {
        self.common.read16(common::NUM_QUEUES)
    }

    fn write64(&mut self, at: usize, value: u64) {
        self.common.write32(at, value as u32);
        self.common.write32(at + 4, (value >> 32) as u32);
    }

    /// Where queue `queue`'s notify register is, checked against the notify window. Selects
    /// the queue.
    fn notify_offset(&mut self, queue: u16) -> Result<usize, TransportError> {
        self.select(queue);
        let off = u64::from(self.common.read16(common::QUEUE_NOTIFY_OFF))
            * u64::from(self.notify_multiplier);
        match usize::try_from(off) {
            Ok(at) if in_window(at, 2, self.notify.len()) => Ok(at),
            // The trait has no notify-specific error; the offset says what was wrong.
            _ => Err(TransportError::ConfigOutOfRange {
                offset: usize::try_from(off).unwrap_or(usize::MAX),
                width: 2,
            }),
        }
    }

    fn config_window(
        &mut self,
        offset: usize,
        width: usize,
    ) -> Result<(&mut R, usize), TransportError> {
        match &mut self.device {
            Some(r) if in_window(offset, width, r.len()) => Ok((r, offset)),
            _ => Err(TransportError::ConfigOutOfRange { offset, width }),
        }
    }
}

impl<R: Registers> Transport for VirtioPciModern<R> {
    fn name(&self) -> &'static str {
        "virtio-pci-modern"
    }

    fn is_legacy(&self) -> bool {
        false
    }

    fn device_type(&mut self) -> DeviceType {
        self.device_type
    }

    fn device_features(&mut self) -> u64 {
        self.common.write32(common::DEVICE_FEATURE_SELECT, 0);
        let low = self.common.read32(common::DEVICE_FEATURE);
        self.common.write32(common::DEVICE_FEATURE_SELECT, 1);
        let high = self.common.read32(common::DEVICE_FEATURE);
        u64::from(low) | u64::from(high) << 32
    }

    fn set_driver_features(&mut self, features: u64) {
        self.common.write32(common::DRIVER_FEATURE_SELECT, 0);
        self.common.write32(common::DRIVER_FEATURE, features as u32);
        self.common.write32(common::DRIVER_FEATURE_SELECT, 1);
        self.common
            .write32(common::DRIVER_FEATURE, (features >> 32) as u32);
    }

    fn status(&mut self) -> DeviceStatus {
        DeviceStatus(self.common.read8(common::DEVICE_STATUS))
    }

    fn set_status(&mut self, status: DeviceStatus) {
        if status == DeviceStatus::RESET {
            self.notify_offsets = [None; NOTIFY_CACHE];
        }
        self.common.write8(common::DEVICE_STATUS, status.bits());
    }

    fn max_queue_size(&mut self, queue: u16) -> u16 {
        if queue >= self.num_queues() {
            return 0;
        }
        self.select(queue);
        self.common.read16(common::QUEUE_SIZE)
    }

    fn queue_in_use(&mut self, queue: u16) -> bool {
        self.select(queue);
        self.common.read16(common::QUEUE_ENABLE) != 0
    }

    fn set_queue_size(&mut self, queue: u16, size: u16) -> Result<(), TransportError> {
        self.select(queue);
        self.common.write16(common::QUEUE_SIZE, size);
        Ok(())
    }

    fn set_queue_addresses(
        &mut self,
        queue: u16,
        addresses: &QueueAddresses,
    ) -> Result<(), TransportError> {
        // The notify register first: a queue the driver could never notify is not set up.
        let at = self.notify_offset(queue)?;
        if let Some(slot) = self.notify_offsets.get_mut(usize::from(queue)) {
            *slot = Some(at as u32);
        }
        self.write64(common::QUEUE_DESC, addresses.desc.as_u64());
        self.write64(common::QUEUE_DRIVER, addresses.driver.as_u64());
        self.write64(common::QUEUE_DEVICE, addresses.device.as_u64());
        Ok(())
    }

    fn enable_queue(&mut self, queue: u16) {
        self.select(queue);
        self.common.write16(common::QUEUE_ENABLE, 1);
    }

    fn notify(&mut self, queue: u16) {
        let at = match self
            .notify_offsets
            .get(usize::from(queue))
            .copied()
            .flatten()
        {
            Some(at) => at as usize,
            None => match self.notify_offset(queue) {
                Ok(at) => at,
                // Outside the notify area: set_queue_addresses refused this queue already.
                Err(_) => return,
            },
        };
        // The register write is ordered after earlier stores (`Registers` contract); the fence
        // states the requirement for any implementation.
        barrier::publish();
        self.notify.write16(at, queue);
    }

    fn config_generation(&mut self) -> u32 {
        u32::from(self.common.read8(common::CONFIG_GENERATION))
    }

    config_accessors!(sized);

    fn ack_interrupt(&mut self) -> InterruptStatus {
        // Reading the ISR clears it.
        InterruptStatus(u32::from(self.isr.read8(0)))
    }
}
