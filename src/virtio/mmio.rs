//! virtio-mmio (virtio 1.2, 4.2): version 1 (legacy) and version 2 (modern), over any
//! [`Registers`] window.
//!
//! [`VirtioMmio::probe`] checks the magic value, the version and the device ID before anything
//! else is touched. Everything the device says afterwards passes through unchanged to
//! [`crate::virtio::init`], which checks it; this file only keeps every access inside the
//! window (config space: the window beyond 0x100).
//!
//! Legacy (version 1) differences handled here: features are 32 bits (selector 0 only), the
//! queue is given as a PFN of 4096-byte pages after `GuestPageSize` and `QueueAlign` (see
//! [`LegacyLayout`]), there is no `QueueReady` (a non-zero PFN means the queue is live) and no
//! config generation; device config is read a byte at a time, as Linux does.

use super::barrier;
use super::features::DeviceType;
use super::regs::{Registers, in_window, read_bytewise, read_sized, write_bytewise, write_sized};
use super::transport::{
    DeviceStatus, InterruptStatus, LegacyLayout, QueueAddresses, Transport, TransportError,
};

/// "virt", little-endian.
pub const MAGIC: u32 = 0x7472_6976;

/// Register offsets (virtio 1.2, 4.2.2; legacy 4.2.4).
pub mod reg {
    pub const MAGIC: usize = 0x000;
    pub const VERSION: usize = 0x004;
    pub const DEVICE_ID: usize = 0x008;
    pub const VENDOR_ID: usize = 0x00c;
    pub const DEVICE_FEATURES: usize = 0x010;
    pub const DEVICE_FEATURES_SEL: usize = 0x014;
    pub const DRIVER_FEATURES: usize = 0x020;
    pub const DRIVER_FEATURES_SEL: usize = 0x024;
    /// Legacy only.
    pub const GUEST_PAGE_SIZE: usize = 0x028;
    pub const QUEUE_SEL: usize = 0x030;
    pub const QUEUE_NUM_MAX: usize = 0x034;
    pub const QUEUE_NUM: usize = 0x038;
    /// Legacy only.
    pub const QUEUE_ALIGN: usize = 0x03c;
    /// Legacy only.
    pub const QUEUE_PFN: usize = 0x040;
    /// Modern only.
    pub const QUEUE_READY: usize = 0x044;
    pub const QUEUE_NOTIFY: usize = 0x050;
    pub const INTERRUPT_STATUS: usize = 0x060;
    pub const INTERRUPT_ACK: usize = 0x064;
    pub const STATUS: usize = 0x070;
    pub const QUEUE_DESC_LOW: usize = 0x080;
    pub const QUEUE_DESC_HIGH: usize = 0x084;
    pub const QUEUE_DRIVER_LOW: usize = 0x090;
    pub const QUEUE_DRIVER_HIGH: usize = 0x094;
    pub const QUEUE_DEVICE_LOW: usize = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: usize = 0x0a4;
    pub const CONFIG_GENERATION: usize = 0x0fc;
    /// Device-specific configuration starts here.
    pub const CONFIG: usize = 0x100;
}

/// Why a virtio-mmio window is not a usable transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioError {
    /// The window cannot even hold the registers (0x100 bytes).
    WindowTooSmall {
        len: usize,
    },
    BadMagic {
        value: u32,
    },
    /// A version other than 1 (legacy) or 2 (modern).
    UnsupportedVersion {
        version: u32,
    },
}

impl core::fmt::Display for MmioError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MmioError::WindowTooSmall { len } => {
                write!(f, "virtio-mmio window of {len} bytes, registers need 256")
            }
            MmioError::BadMagic { value } => {
                write!(
                    f,
                    "virtio-mmio magic {value:#010x}, expected {MAGIC:#010x} (\"virt\")"
                )
            }
            MmioError::UnsupportedVersion { version } => {
                write!(
                    f,
                    "virtio-mmio version {version}, only 1 (legacy) and 2 are supported"
                )
            }
        }
    }
}

/// A virtio-mmio device.
pub struct VirtioMmio<R> {
    regs: R,
    legacy: bool,
    device_type: DeviceType,
    vendor_id: u32,
}

impl<R: Registers> VirtioMmio<R> {
    /// Checks magic, version and device ID. `Ok(None)`: device ID 0, an empty slot (QEMU
    /// creates more slots than devices), to be skipped without a word.
    pub fn probe(mut regs: R) -> Result<Option<Self>, MmioError> {
        if regs.len() < reg::CONFIG {
            return Err(MmioError::WindowTooSmall { len: regs.len() });
        }
        let magic = regs.read32(reg::MAGIC);
        if magic != MAGIC {
            return Err(MmioError::BadMagic { value: magic });
        }
        let legacy = match regs.read32(reg::VERSION) {
            1 => true,
            2 => false,
            version => return Err(MmioError::UnsupportedVersion { version }),
        };
        let device_id = regs.read32(reg::DEVICE_ID);
        if device_id == 0 {
            return Ok(None);
        }
        let vendor_id = regs.read32(reg::VENDOR_ID);
        Ok(Some(VirtioMmio {
            regs,
            legacy,
            device_type: DeviceType(device_id),
            vendor_id,
        }))
    }

    /// The `VendorID` register (QEMU: 0x554d4551, "QEMU").
    pub fn vendor_id(&self) -> u32 {
        self.vendor_id
    }

    /// Bytes of device-specific configuration the window holds.
    pub fn config_len(&self) -> usize {
        self.regs.len() - reg::CONFIG
    }

    fn select(&mut self, queue: u16) {
        self.regs.write32(reg::QUEUE_SEL, u32::from(queue));
    }

    fn write64(&mut self, low: usize, value: u64) {
        self.regs.write32(low, value as u32);
        self.regs.write32(low + 4, (value >> 32) as u32);
    }

    /// The register offset of `width` config bytes at `offset`, if inside the window.
    fn config_at(&self, offset: usize, width: usize) -> Result<usize, TransportError> {
        if !in_window(offset, width, self.config_len()) {
            return Err(TransportError::ConfigOutOfRange { offset, width });
        }
        Ok(reg::CONFIG + offset)
    }

    /// Modern: one access of the field's width. Legacy: bytewise, as Linux does (legacy config
    /// is guest-endian; see `regs::config_accessors` for what QEMU does with wider accesses on
    /// big-endian targets).
    fn config_read(&mut self, offset: usize, width: usize) -> Result<u32, TransportError> {
        let at = self.config_at(offset, width)?;
        Ok(if self.legacy {
            read_bytewise(&mut self.regs, at, width)
        } else {
            read_sized(&mut self.regs, at, width)
        })
    }

    fn config_write(
        &mut self,
        offset: usize,
        width: usize,
        value: u32,
    ) -> Result<(), TransportError> {
        let at = self.config_at(offset, width)?;
        if self.legacy {
            write_bytewise(&mut self.regs, at, width, value);
        } else {
            write_sized(&mut self.regs, at, width, value);
        }
        Ok(())
    }
}

impl<R: Registers> Transport for VirtioMmio<R> {
    fn name(&self) -> &'static str {
        if self.legacy {
            "virtio-mmio-v1"
        } else {
            "virtio-mmio-v2"
        }
    }

    fn is_legacy(&self) -> bool {
        self.legacy
    }

    fn device_type(&mut self) -> DeviceType {
        self.device_type
    }

    fn device_features(&mut self) -> u64 {
        self.regs.write32(reg::DEVICE_FEATURES_SEL, 0);
        let low = u64::from(self.regs.read32(reg::DEVICE_FEATURES));
        if self.legacy {
            return low;
        }
        self.regs.write32(reg::DEVICE_FEATURES_SEL, 1);
        low | u64::from(self.regs.read32(reg::DEVICE_FEATURES)) << 32
    }

    fn set_driver_features(&mut self, features: u64) {
        self.regs.write32(reg::DRIVER_FEATURES_SEL, 0);
        self.regs.write32(reg::DRIVER_FEATURES, features as u32);
        if !self.legacy {
            self.regs.write32(reg::DRIVER_FEATURES_SEL, 1);
            self.regs
                .write32(reg::DRIVER_FEATURES, (features >> 32) as u32);
        }
    }

    fn status(&mut self) -> DeviceStatus {
        DeviceStatus(self.regs.read32(reg::STATUS) as u8)
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.regs.write32(reg::STATUS, u32::from(status.bits()));
    }

    fn max_queue_size(&mut self, queue: u16) -> u16 {
        self.select(queue);
        // A maximum above 65535 cannot be a queue size; saturating keeps it unusable (not a
        // power of two) instead of wrapping it into something plausible.
        u16::try_from(self.regs.read32(reg::QUEUE_NUM_MAX)).unwrap_or(u16::MAX)
    }

    fn queue_in_use(&mut self, queue: u16) -> bool {
        self.select(queue);
        if self.legacy {
            self.regs.read32(reg::QUEUE_PFN) != 0
        } else {
            self.regs.read32(reg::QUEUE_READY) != 0
        }
    }

    fn set_queue_size(&mut self, queue: u16, size: u16) -> Result<(), TransportError> {
        self.select(queue);
        self.regs.write32(reg::QUEUE_NUM, u32::from(size));
        Ok(())
    }

    fn set_queue_addresses(
        &mut self,
        queue: u16,
        addresses: &QueueAddresses,
    ) -> Result<(), TransportError> {
        if self.legacy {
            let pfn = LegacyLayout::check(addresses)?;
            // The page size first: the device multiplies the PFN by it.
            self.regs
                .write32(reg::GUEST_PAGE_SIZE, LegacyLayout::PAGE as u32);
            self.select(queue);
            self.regs
                .write32(reg::QUEUE_ALIGN, LegacyLayout::PAGE as u32);
            self.regs.write32(reg::QUEUE_PFN, pfn);
        } else {
            self.select(queue);
            self.write64(reg::QUEUE_DESC_LOW, addresses.desc.as_u64());
            self.write64(reg::QUEUE_DRIVER_LOW, addresses.driver.as_u64());
            self.write64(reg::QUEUE_DEVICE_LOW, addresses.device.as_u64());
        }
        Ok(())
    }

    fn enable_queue(&mut self, queue: u16) {
        if !self.legacy {
            self.select(queue);
            self.regs.write32(reg::QUEUE_READY, 1);
        }
    }

    fn notify(&mut self, queue: u16) {
        // The register write itself is ordered after earlier stores (`Registers` contract);
        // the fence states the requirement for any implementation.
        barrier::publish();
        self.regs.write32(reg::QUEUE_NOTIFY, u32::from(queue));
    }

    fn config_generation(&mut self) -> u32 {
        if self.legacy {
            0
        } else {
            self.regs.read32(reg::CONFIG_GENERATION)
        }
    }

    fn read_config_u8(&mut self, offset: usize) -> Result<u8, TransportError> {
        self.config_read(offset, 1).map(|v| v as u8)
    }
    fn read_config_u16(&mut self, offset: usize) -> Result<u16, TransportError> {
        self.config_read(offset, 2).map(|v| v as u16)
    }
    fn read_config_u32(&mut self, offset: usize) -> Result<u32, TransportError> {
        self.config_read(offset, 4)
    }
    fn write_config_u8(&mut self, offset: usize, value: u8) -> Result<(), TransportError> {
        self.config_write(offset, 1, value.into())
    }
    fn write_config_u16(&mut self, offset: usize, value: u16) -> Result<(), TransportError> {
        self.config_write(offset, 2, value.into())
    }
    fn write_config_u32(&mut self, offset: usize, value: u32) -> Result<(), TransportError> {
        self.config_write(offset, 4, value)
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        let pending = self.regs.read32(reg::INTERRUPT_STATUS);
        if pending != 0 {
            self.regs.write32(reg::INTERRUPT_ACK, pending);
        }
        InterruptStatus(pending)
    }
}

#[cfg(test)]
mod tests;
