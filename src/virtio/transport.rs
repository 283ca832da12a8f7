//! The transport interface: how a driver reaches a device's registers, whatever the bus.
//!
//! Implementations (next issue): virtio-mmio v1 (legacy) and v2, virtio-pci modern and legacy.
//! See the module docs of [`crate::virtio`] for the rules a transport follows.

use core::fmt;

use super::features::DeviceType;
use crate::dma::{DeviceAddr, DmaConstraints};

/// The device status register (virtio 1.2, 2.1).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceStatus(pub u8);

impl DeviceStatus {
    pub const RESET: DeviceStatus = DeviceStatus(0);
    pub const ACKNOWLEDGE: DeviceStatus = DeviceStatus(1);
    pub const DRIVER: DeviceStatus = DeviceStatus(2);
    pub const DRIVER_OK: DeviceStatus = DeviceStatus(4);
    pub const FEATURES_OK: DeviceStatus = DeviceStatus(8);
    pub const DEVICE_NEEDS_RESET: DeviceStatus = DeviceStatus(0x40);
    pub const FAILED: DeviceStatus = DeviceStatus(0x80);

    pub const fn bits(self) -> u8 {
        self.0
    }

    pub const fn contains(self, other: DeviceStatus) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn union(self, other: DeviceStatus) -> DeviceStatus {
        DeviceStatus(self.0 | other.0)
    }
}

impl fmt::Debug for DeviceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceStatus({:#04x})", self.0)
    }
}

/// What an interrupt status read returned (virtio-mmio InterruptStatus, virtio-pci ISR).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct InterruptStatus(pub u32);

impl InterruptStatus {
    pub const USED_BUFFER: u32 = 1;
    pub const CONFIG_CHANGE: u32 = 2;

    pub fn used_buffer(self) -> bool {
        self.0 & Self::USED_BUFFER != 0
    }

    pub fn config_change(self) -> bool {
        self.0 & Self::CONFIG_CHANGE != 0
    }
}

/// Where a queue's three areas are, as the device sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueAddresses {
    pub size: u16,
    /// Descriptor table (split) / descriptor ring (packed).
    pub desc: DeviceAddr,
    /// Available ring (split) / driver event suppression (packed).
    pub driver: DeviceAddr,
    /// Used ring (split) / device event suppression (packed).
    pub device: DeviceAddr,
}

/// A transport-level failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportError {
    /// A config access outside the device's config space.
    ConfigOutOfRange { offset: usize, width: usize },
    /// The config generation kept changing while reading.
    ConfigUnstable { attempts: u32 },
    /// Legacy: the three areas are not one page-aligned block in the legacy layout.
    LegacyLayout { what: &'static str },
    /// The register cannot hold this address (legacy 32-bit PFN, a 32-bit register).
    AddressTooHigh { addr: DeviceAddr },
    /// The transport cannot set this queue size (legacy PCI: fixed at the maximum).
    QueueSizeFixed { queue: u16, size: u16 },
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::ConfigOutOfRange { offset, width } => {
                write!(f, "config access of {width} bytes at {offset} out of range")
            }
            TransportError::ConfigUnstable { attempts } => {
                write!(f, "config generation changed on each of {attempts} reads")
            }
            TransportError::LegacyLayout { what } => write!(f, "legacy queue layout: {what}"),
            TransportError::AddressTooHigh { addr } => write!(f, "address {addr} too high"),
            TransportError::QueueSizeFixed { queue, size } => {
                write!(f, "queue {queue}: size {size} cannot be set")
            }
        }
    }
}

/// A virtio transport. Register accessors take `&mut self` so a transport may track its queue
/// selection. Values are passed through as the device gave them; checking them is the caller's
/// job (see [`crate::virtio::init`]).
pub trait Transport {
    /// For reports: `virtio-mmio-v1`, `virtio-mmio-v2`, `virtio-pci-modern`, `virtio-pci-legacy`.
    fn name(&self) -> &'static str;

    /// A legacy (pre-1.0) interface: 32-bit features, no FEATURES_OK, split ring in the legacy
    /// layout only, guest-endian config space.
    fn is_legacy(&self) -> bool;

    fn device_type(&mut self) -> DeviceType;

    /// All 64 feature bits the device offers (legacy: the low 32).
    fn device_features(&mut self) -> u64;

    /// Writes the accepted features (legacy: the low 32 bits).
    fn set_driver_features(&mut self, features: u64);

    fn status(&mut self) -> DeviceStatus;

    /// Writes the whole status register. Writing [`DeviceStatus::RESET`] starts a reset;
    /// [`crate::virtio::init::reset`] then waits for it.
    fn set_status(&mut self, status: DeviceStatus);

    /// The largest size the device allows for `queue`; 0 when the queue does not exist.
    fn max_queue_size(&mut self, queue: u16) -> u16;

    /// Whether the device says the queue is already live (modern: ready/enable; legacy: a PFN
    /// is set). After a reset it must not be.
    fn queue_in_use(&mut self, queue: u16) -> bool;

    /// Legacy PCI cannot change a queue's size: it is always `max_queue_size`.
    fn queue_size_fixed(&self) -> bool {
        false
    }

    fn set_queue_size(&mut self, queue: u16, size: u16) -> Result<(), TransportError>;

    /// Tells the device where the queue's areas are. Legacy transports check the layout with
    /// [`LegacyLayout::check`] and write the PFN.
    fn set_queue_addresses(
        &mut self,
        queue: u16,
        addresses: &QueueAddresses,
    ) -> Result<(), TransportError>;

    /// Modern: sets queue ready / enable. Legacy: nothing (the PFN write enabled it).
    fn enable_queue(&mut self, queue: u16);

    /// Tells the device that `queue` has new buffers. Orders all earlier memory stores first.
    fn notify(&mut self, queue: u16);

    /// Modern: the config generation counter. Legacy: 0.
    fn config_generation(&mut self) -> u32;

    fn read_config_u8(&mut self, offset: usize) -> Result<u8, TransportError>;
    fn read_config_u16(&mut self, offset: usize) -> Result<u16, TransportError>;
    fn read_config_u32(&mut self, offset: usize) -> Result<u32, TransportError>;
    fn write_config_u8(&mut self, offset: usize, value: u8) -> Result<(), TransportError>;
    fn write_config_u16(&mut self, offset: usize, value: u16) -> Result<(), TransportError>;
    fn write_config_u32(&mut self, offset: usize, value: u32) -> Result<(), TransportError>;

    /// Reads the pending interrupt causes and acknowledges them.
    fn ack_interrupt(&mut self) -> InterruptStatus;
}

/// How often a config read is retried when the generation changes under it.
pub const CONFIG_READ_ATTEMPTS: u32 = 8;

/// Runs `read` (any number of config accesses) until the config generation is the same before
/// and after it, so that multi-field values are consistent (virtio 1.2, 4.x "Device
/// Configuration Structure"). Gives up after [`CONFIG_READ_ATTEMPTS`].
pub fn read_config_consistent<T: Transport + ?Sized, R>(
    t: &mut T,
    mut read: impl FnMut(&mut T) -> Result<R, TransportError>,
) -> Result<R, TransportError> {
    for _ in 0..CONFIG_READ_ATTEMPTS {
        let before = t.config_generation();
        let value = read(t)?;
        if t.config_generation() == before {
            return Ok(value);
        }
    }
    Err(TransportError::ConfigUnstable {
        attempts: CONFIG_READ_ATTEMPTS,
    })
}

/// A 64-bit config field: two 32-bit reads (low word first) under one generation.
pub fn read_config_u64<T: Transport + ?Sized>(
    t: &mut T,
    offset: usize,
) -> Result<u64, TransportError> {
    read_config_consistent(t, |t| {
        let low = t.read_config_u32(offset)?;
        let high = t.read_config_u32(offset + 4)?;
        Ok(u64::from(low) | (u64::from(high) << 32))
    })
}

/// `buf.len()` config bytes (a MAC address, a serial) under one generation.
pub fn read_config_bytes<T: Transport + ?Sized>(
    t: &mut T,
    offset: usize,
    buf: &mut [u8],
) -> Result<(), TransportError> {
    read_config_consistent(t, |t| {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = t.read_config_u8(offset + i)?;
        }
        Ok(())
    })
}

/// The legacy split-ring layout (virtio 0.9.5 / virtio 1.2, 2.7.2 "Legacy Interfaces"): one
/// block aligned to 4096, descriptor table at 0, available ring right after it, used ring at the
/// next 4096 boundary. The device is told only the block's page number (PFN), 32 bits wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LegacyLayout {
    pub size: u16,
    pub avail_offset: usize,
    pub used_offset: usize,
    pub total: usize,
}

impl LegacyLayout {
    /// The page size and queue alignment this guest uses for legacy queues (mmio v1: write it
    /// to `GuestPageSize` and `QueueAlign`; PCI legacy: fixed).
    pub const PAGE: usize = 4096;

    /// Where the ring may be: a 32-bit PFN of 4 KiB pages reaches 2^44 bytes.
    pub const CONSTRAINTS: DmaConstraints = DmaConstraints {
        max_addr: (1 << 44) - 1,
        align: Self::PAGE as u64,
        boundary: 0,
        max_len: usize::MAX,
    };

    pub const fn new(size: u16) -> Self {
        let n = size as usize;
        let avail_offset = 16 * n;
        // flags, idx, ring[n], used_event
        let avail_end = avail_offset + 6 + 2 * n;
        let used_offset = avail_end.next_multiple_of(Self::PAGE);
        // flags, idx, ring[n] of 8 bytes, avail_event
        let total = used_offset + (6 + 8 * n).next_multiple_of(Self::PAGE);
        LegacyLayout {
            size,
            avail_offset,
            used_offset,
            total,
        }
    }

    /// Checks that `addresses` are one block in this layout and returns the PFN to write.
    pub fn check(addresses: &QueueAddresses) -> Result<u32, TransportError> {
        let layout = Self::new(addresses.size);
        let desc = addresses.desc.as_u64();
        if !desc.is_multiple_of(Self::PAGE as u64) {
            return Err(TransportError::LegacyLayout {
                what: "descriptor table not page-aligned",
            });
        }
        if addresses.driver.as_u64() != desc + layout.avail_offset as u64 {
            return Err(TransportError::LegacyLayout {
                what: "available ring not right after the descriptor table",
            });
        }
        if addresses.device.as_u64() != desc + layout.used_offset as u64 {
            return Err(TransportError::LegacyLayout {
                what: "used ring not on the next page",
            });
        }
        u32::try_from(desc / Self::PAGE as u64).map_err(|_| TransportError::AddressTooHigh {
            addr: addresses.desc,
        })
    }
}
