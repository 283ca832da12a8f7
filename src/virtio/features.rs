//! Device types and feature bits, with their spec names for reports.

use core::fmt;

/// The virtio device ID (virtio 1.2, section 5). 0 means "no device" (an empty mmio slot).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceType(pub u32);

impl DeviceType {
    pub const NONE: DeviceType = DeviceType(0);
    pub const NET: DeviceType = DeviceType(1);
    pub const BLOCK: DeviceType = DeviceType(2);
    pub const CONSOLE: DeviceType = DeviceType(3);
    pub const RNG: DeviceType = DeviceType(4);
    pub const BALLOON: DeviceType = DeviceType(5);
    pub const SCSI: DeviceType = DeviceType(8);
    pub const NINEP: DeviceType = DeviceType(9);
    pub const GPU: DeviceType = DeviceType(16);
    pub const INPUT: DeviceType = DeviceType(18);
    pub const VSOCK: DeviceType = DeviceType(19);
    pub const CRYPTO: DeviceType = DeviceType(20);
    pub const IOMMU: DeviceType = DeviceType(23);
    pub const MEM: DeviceType = DeviceType(24);
    pub const FS: DeviceType = DeviceType(26);
    pub const PMEM: DeviceType = DeviceType(27);

    /// A short name for reports (`"blk"`), or `None` for a type this table does not know.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "none",
            1 => "net",
            2 => "blk",
            3 => "console",
            4 => "rng",
            5 => "balloon",
            8 => "scsi",
            9 => "9p",
            16 => "gpu",
            18 => "input",
            19 => "vsock",
            20 => "crypto",
            23 => "iommu",
            24 => "mem",
            26 => "fs",
            27 => "pmem",
            _ => return None,
        })
    }

    /// The device ID behind a modern virtio PCI device ID (0x1040 + type); legacy PCI devices
    /// (0x1000..=0x103f) carry the type in the subsystem ID instead.
    pub fn from_pci_modern_id(pci_device_id: u16) -> Option<DeviceType> {
        (0x1040..=0x107f)
            .contains(&pci_device_id)
            .then(|| DeviceType(u32::from(pci_device_id) - 0x1040))
    }
}

impl fmt::Debug for DeviceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "DeviceType({n})"),
            None => write!(f, "DeviceType({})", self.0),
        }
    }
}

/// Feature bits every device may have (virtio 1.2, section 6), as masks.
pub mod common {
    /// Legacy: notify even when notifications are suppressed and the ring is empty.
    pub const NOTIFY_ON_EMPTY: u64 = 1 << 24;
    /// Legacy: any framing of headers and data.
    pub const ANY_LAYOUT: u64 = 1 << 27;
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// Legacy: must never be accepted.
    pub const UNUSED_30: u64 = 1 << 30;
    pub const VERSION_1: u64 = 1 << 32;
    /// The device goes through the platform's DMA translation (IOMMU, secure-guest sharing).
    pub const ACCESS_PLATFORM: u64 = 1 << 33;
    pub const RING_PACKED: u64 = 1 << 34;
    pub const IN_ORDER: u64 = 1 << 35;
    pub const ORDER_PLATFORM: u64 = 1 << 36;
    pub const SR_IOV: u64 = 1 << 37;
    pub const NOTIFICATION_DATA: u64 = 1 << 38;
    pub const NOTIF_CONFIG_DATA: u64 = 1 << 39;
    pub const RING_RESET: u64 = 1 << 40;
    pub const ADMIN_VQ: u64 = 1 << 41;

    /// What the core implements itself; a driver adds its device bits (or masks some of these
    /// out to test a device without them). `VERSION_1` and `ACCESS_PLATFORM` are accepted
    /// whenever offered, whatever the driver says.
    pub const CORE_SUPPORTED: u64 =
        RING_INDIRECT_DESC | RING_EVENT_IDX | VERSION_1 | ACCESS_PLATFORM | RING_PACKED;
}

/// virtio-blk feature bits (virtio 1.2, 5.2.3).
pub mod blk {
    pub const BARRIER: u64 = 1 << 0;
    pub const SIZE_MAX: u64 = 1 << 1;
    pub const SEG_MAX: u64 = 1 << 2;
    pub const GEOMETRY: u64 = 1 << 4;
    pub const RO: u64 = 1 << 5;
    pub const BLK_SIZE: u64 = 1 << 6;
    pub const SCSI: u64 = 1 << 7;
    pub const FLUSH: u64 = 1 << 9;
    pub const TOPOLOGY: u64 = 1 << 10;
    pub const CONFIG_WCE: u64 = 1 << 11;
    pub const MQ: u64 = 1 << 12;
    pub const DISCARD: u64 = 1 << 13;
    pub const WRITE_ZEROES: u64 = 1 << 14;
    pub const LIFETIME: u64 = 1 << 15;
    pub const SECURE_ERASE: u64 = 1 << 16;
    pub const ZONED: u64 = 1 << 17;
}

/// virtio-net feature bits (virtio 1.2, 5.1.3).
pub mod net {
    pub const CSUM: u64 = 1 << 0;
    pub const GUEST_CSUM: u64 = 1 << 1;
    pub const CTRL_GUEST_OFFLOADS: u64 = 1 << 2;
    pub const MTU: u64 = 1 << 3;
    pub const MAC: u64 = 1 << 5;
    pub const GSO: u64 = 1 << 6;
    pub const GUEST_TSO4: u64 = 1 << 7;
    pub const GUEST_TSO6: u64 = 1 << 8;
    pub const GUEST_ECN: u64 = 1 << 9;
    pub const GUEST_UFO: u64 = 1 << 10;
    pub const HOST_TSO4: u64 = 1 << 11;
    pub const HOST_TSO6: u64 = 1 << 12;
    pub const HOST_ECN: u64 = 1 << 13;
    pub const HOST_UFO: u64 = 1 << 14;
    pub const MRG_RXBUF: u64 = 1 << 15;
    pub const STATUS: u64 = 1 << 16;
    pub const CTRL_VQ: u64 = 1 << 17;
    pub const CTRL_RX: u64 = 1 << 18;
    pub const CTRL_VLAN: u64 = 1 << 19;
    pub const CTRL_RX_EXTRA: u64 = 1 << 20;
    pub const GUEST_ANNOUNCE: u64 = 1 << 21;
    pub const MQ: u64 = 1 << 22;
    pub const CTRL_MAC_ADDR: u64 = 1 << 23;
    pub const HASH_TUNNEL: u64 = 1 << 51;
    pub const VQ_NOTF_COAL: u64 = 1 << 52;
    pub const NOTF_COAL: u64 = 1 << 53;
    pub const GUEST_USO4: u64 = 1 << 54;
    pub const GUEST_USO6: u64 = 1 << 55;
    pub const HOST_USO: u64 = 1 << 56;
    pub const HASH_REPORT: u64 = 1 << 57;
    pub const GUEST_HDRLEN: u64 = 1 << 59;
    pub const RSS: u64 = 1 << 60;
    pub const RSC_EXT: u64 = 1 << 61;
    pub const STANDBY: u64 = 1 << 62;
    pub const SPEED_DUPLEX: u64 = 1 << 63;
}

/// virtio-console feature bits (virtio 1.2, 5.3.3).
pub mod console {
    pub const SIZE: u64 = 1 << 0;
    pub const MULTIPORT: u64 = 1 << 1;
    pub const EMERG_WRITE: u64 = 1 << 2;
}

// virtio-rng has no device feature bits.

const COMMON_NAMES: &[(u32, &str)] = &[
    (24, "VIRTIO_F_NOTIFY_ON_EMPTY"),
    (27, "VIRTIO_F_ANY_LAYOUT"),
    (28, "VIRTIO_F_INDIRECT_DESC"),
    (29, "VIRTIO_F_EVENT_IDX"),
    (30, "VIRTIO_F_UNUSED_30"),
    (32, "VIRTIO_F_VERSION_1"),
    (33, "VIRTIO_F_ACCESS_PLATFORM"),
    (34, "VIRTIO_F_RING_PACKED"),
    (35, "VIRTIO_F_IN_ORDER"),
    (36, "VIRTIO_F_ORDER_PLATFORM"),
    (37, "VIRTIO_F_SR_IOV"),
    (38, "VIRTIO_F_NOTIFICATION_DATA"),
    (39, "VIRTIO_F_NOTIF_CONFIG_DATA"),
    (40, "VIRTIO_F_RING_RESET"),
    (41, "VIRTIO_F_ADMIN_VQ"),
];

const BLK_NAMES: &[(u32, &str)] = &[
    (0, "VIRTIO_BLK_F_BARRIER"),
    (1, "VIRTIO_BLK_F_SIZE_MAX"),
    (2, "VIRTIO_BLK_F_SEG_MAX"),
    (4, "VIRTIO_BLK_F_GEOMETRY"),
    (5, "VIRTIO_BLK_F_RO"),
    (6, "VIRTIO_BLK_F_BLK_SIZE"),
    (7, "VIRTIO_BLK_F_SCSI"),
    (9, "VIRTIO_BLK_F_FLUSH"),
    (10, "VIRTIO_BLK_F_TOPOLOGY"),
    (11, "VIRTIO_BLK_F_CONFIG_WCE"),
    (12, "VIRTIO_BLK_F_MQ"),
    (13, "VIRTIO_BLK_F_DISCARD"),
    (14, "VIRTIO_BLK_F_WRITE_ZEROES"),
    (15, "VIRTIO_BLK_F_LIFETIME"),
    (16, "VIRTIO_BLK_F_SECURE_ERASE"),
    (17, "VIRTIO_BLK_F_ZONED"),
];

const NET_NAMES: &[(u32, &str)] = &[
    (0, "VIRTIO_NET_F_CSUM"),
    (1, "VIRTIO_NET_F_GUEST_CSUM"),
    (2, "VIRTIO_NET_F_CTRL_GUEST_OFFLOADS"),
    (3, "VIRTIO_NET_F_MTU"),
    (5, "VIRTIO_NET_F_MAC"),
    (6, "VIRTIO_NET_F_GSO"),
    (7, "VIRTIO_NET_F_GUEST_TSO4"),
    (8, "VIRTIO_NET_F_GUEST_TSO6"),
    (9, "VIRTIO_NET_F_GUEST_ECN"),
    (10, "VIRTIO_NET_F_GUEST_UFO"),
    (11, "VIRTIO_NET_F_HOST_TSO4"),
    (12, "VIRTIO_NET_F_HOST_TSO6"),
    (13, "VIRTIO_NET_F_HOST_ECN"),
    (14, "VIRTIO_NET_F_HOST_UFO"),
    (15, "VIRTIO_NET_F_MRG_RXBUF"),
    (16, "VIRTIO_NET_F_STATUS"),
    (17, "VIRTIO_NET_F_CTRL_VQ"),
    (18, "VIRTIO_NET_F_CTRL_RX"),
    (19, "VIRTIO_NET_F_CTRL_VLAN"),
    (20, "VIRTIO_NET_F_CTRL_RX_EXTRA"),
    (21, "VIRTIO_NET_F_GUEST_ANNOUNCE"),
    (22, "VIRTIO_NET_F_MQ"),
    (23, "VIRTIO_NET_F_CTRL_MAC_ADDR"),
    (51, "VIRTIO_NET_F_HASH_TUNNEL"),
    (52, "VIRTIO_NET_F_VQ_NOTF_COAL"),
    (53, "VIRTIO_NET_F_NOTF_COAL"),
    (54, "VIRTIO_NET_F_GUEST_USO4"),
    (55, "VIRTIO_NET_F_GUEST_USO6"),
    (56, "VIRTIO_NET_F_HOST_USO"),
    (57, "VIRTIO_NET_F_HASH_REPORT"),
    (59, "VIRTIO_NET_F_GUEST_HDRLEN"),
    (60, "VIRTIO_NET_F_RSS"),
    (61, "VIRTIO_NET_F_RSC_EXT"),
    (62, "VIRTIO_NET_F_STANDBY"),
    (63, "VIRTIO_NET_F_SPEED_DUPLEX"),
];

const CONSOLE_NAMES: &[(u32, &str)] = &[
    (0, "VIRTIO_CONSOLE_F_SIZE"),
    (1, "VIRTIO_CONSOLE_F_MULTIPORT"),
    (2, "VIRTIO_CONSOLE_F_EMERG_WRITE"),
];

/// Names for bits no table knows, so that a report still shows every bit the device offered.
const UNKNOWN_NAMES: [&str; 64] = [
    "bit0", "bit1", "bit2", "bit3", "bit4", "bit5", "bit6", "bit7", "bit8", "bit9", "bit10",
    "bit11", "bit12", "bit13", "bit14", "bit15", "bit16", "bit17", "bit18", "bit19", "bit20",
    "bit21", "bit22", "bit23", "bit24", "bit25", "bit26", "bit27", "bit28", "bit29", "bit30",
    "bit31", "bit32", "bit33", "bit34", "bit35", "bit36", "bit37", "bit38", "bit39", "bit40",
    "bit41", "bit42", "bit43", "bit44", "bit45", "bit46", "bit47", "bit48", "bit49", "bit50",
    "bit51", "bit52", "bit53", "bit54", "bit55", "bit56", "bit57", "bit58", "bit59", "bit60",
    "bit61", "bit62", "bit63",
];

/// The spec name of one feature bit of a device of type `device`, or `"bitN"`.
pub fn feature_name(device: DeviceType, bit: u32) -> &'static str {
    let device_table = match device {
        DeviceType::BLOCK => BLK_NAMES,
        DeviceType::NET => NET_NAMES,
        DeviceType::CONSOLE => CONSOLE_NAMES,
        _ => &[],
    };
    // Device-specific bits are 0..=23 and 50..=63 (virtio 1.2, 6); the rest are common.
    let table = if bit <= 23 || bit >= 50 {
        device_table
    } else {
        COMMON_NAMES
    };
    table
        .iter()
        .find(|&&(b, _)| b == bit)
        .map_or(UNKNOWN_NAMES[(bit & 63) as usize], |&(_, name)| name)
}

/// The names of the set bits of `bits`, lowest first: for the feature lists of a report.
pub fn feature_names(device: DeviceType, bits: u64) -> impl Iterator<Item = &'static str> {
    (0..64u32)
        .filter(move |b| bits & (1 << b) != 0)
        .map(move |b| feature_name(device, b))
}
