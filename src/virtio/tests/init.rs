//! The init sequence, feature negotiation, queue setup and config reads over a fake transport.

use super::*;
use crate::virtio::features::{self, blk, common, feature_name, feature_names, net};
use crate::virtio::init::{self as vinit, InitError, Negotiation, choose_queue_size, negotiate};
use crate::virtio::queue::QueueError;
use crate::virtio::transport::{read_config_bytes, read_config_consistent, read_config_u64};
use crate::virtio::wait::{Deadline, NoClock};

const ACK: u8 = 1;
const DRV: u8 = 2;
const DRIVER_OK: u8 = 4;
const FEAT_OK: u8 = 8;
const FAILED: u8 = 0x80;

fn deadline() -> Deadline<'static> {
    Deadline::new(&NoClock, u64::MAX, 1000)
}

fn init_no_queues(t: &mut FakeTransport, requested: u64) -> Result<Negotiation, InitError> {
    vinit::init(t, requested, &mut deadline(), |_, _| Ok(())).map(|(n, ())| n)
}

#[test]
fn modern_init_negotiates_and_walks_the_status_sequence() {
    let offered = common::VERSION_1
        | common::ACCESS_PLATFORM
        | common::RING_EVENT_IDX
        | common::RING_PACKED
        | blk::FLUSH
        | blk::BLK_SIZE
        | blk::RO;
    let mut t = FakeTransport::modern(offered, &[]);
    t.status = 0x0f; // whatever a previous user left
    // The driver knows FLUSH and BLK_SIZE and the ring features, but not VERSION_1 or
    // ACCESS_PLATFORM: those are the core's business.
    let requested = blk::FLUSH | blk::BLK_SIZE | blk::SEG_MAX | common::RING_EVENT_IDX;
    let n = init_no_queues(&mut t, requested).unwrap();
    let accepted = common::VERSION_1
        | common::ACCESS_PLATFORM
        | common::RING_EVENT_IDX
        | blk::FLUSH
        | blk::BLK_SIZE;
    assert_eq!(n.accepted, accepted);
    assert_eq!(n.offered, offered);
    assert_eq!(n.requested, requested);
    assert_eq!(n.transport, "virtio-pci-modern");
    assert_eq!(n.device_type, DeviceType::BLOCK);
    assert!(!n.legacy);
    assert_eq!(t.driver_features, Some(accepted));
    assert_eq!(
        t.status_writes,
        [
            0,
            ACK,
            ACK | DRV,
            ACK | DRV | FEAT_OK,
            ACK | DRV | FEAT_OK | DRIVER_OK
        ]
    );
    assert_eq!(
        n.ring_format(),
        RingFormat::Split,
        "packed offered but not requested"
    );
}

#[test]
fn legacy_init_has_32_feature_bits_and_no_features_ok() {
    let offered = common::VERSION_1 | common::RING_INDIRECT_DESC | net::MAC | net::STATUS;
    let mut t = FakeTransport::legacy_pci(offered, &[]);
    let n = init_no_queues(&mut t, u64::MAX).unwrap();
    assert!(n.legacy);
    assert_eq!(
        n.offered,
        common::RING_INDIRECT_DESC | net::MAC | net::STATUS
    );
    assert_eq!(n.accepted, n.offered, "no VERSION_1, no bit above 31");
    assert_eq!(t.status_writes, [0, ACK, ACK | DRV, ACK | DRV | DRIVER_OK]);
}

#[test]
fn negotiate_rules() {
    let offered = common::VERSION_1 | common::ACCESS_PLATFORM | common::RING_PACKED | 0b101;
    assert_eq!(
        negotiate(offered, 0b001, false),
        common::VERSION_1 | common::ACCESS_PLATFORM | 0b001
    );
    assert_eq!(negotiate(offered, u64::MAX, true), 0b101);
    assert_eq!(
        negotiate(0, u64::MAX, false),
        0,
        "nothing is accepted that was not offered"
    );
}

#[test]
fn device_that_refuses_features_ok_is_failed() {
    let mut t = FakeTransport::modern(common::VERSION_1 | blk::FLUSH, &[]);
    t.refuse_features_ok = true;
    let e = init_no_queues(&mut t, blk::FLUSH).unwrap_err();
    assert_eq!(
        e,
        InitError::FeaturesNotAccepted {
            offered: common::VERSION_1 | blk::FLUSH,
            accepted: common::VERSION_1 | blk::FLUSH,
            status: ACK | DRV,
        }
    );
    assert_eq!(t.status & FAILED, FAILED);
    assert_eq!(*t.status_writes.last().unwrap(), ACK | DRV | FAILED);
    assert!(
        t.status_writes.iter().all(|s| s & DRIVER_OK == 0),
        "never DRIVER_OK"
    );
}

#[test]
fn modern_device_without_version_1_is_failed() {
    let mut t = FakeTransport::modern(blk::FLUSH, &[]);
    assert_eq!(
        init_no_queues(&mut t, u64::MAX),
        Err(InitError::NoVersion1 {
            offered: blk::FLUSH
        })
    );
    assert_eq!(t.status & FAILED, FAILED);
    assert_eq!(t.driver_features, None, "no features written");
}

#[test]
fn reset_that_never_finishes_is_bounded() {
    let mut t = FakeTransport::modern(common::VERSION_1, &[]);
    t.stuck_in_reset = true;
    let mut d = Deadline::new(&NoClock, u64::MAX, 50);
    let e = vinit::init(&mut t, 0, &mut d, |_, _| Ok(())).unwrap_err();
    assert_eq!(
        e,
        InitError::ResetTimeout {
            status: ACK,
            elapsed_us: 0,
            polls: 51
        }
    );
    assert_eq!(t.status_writes, [0]);
}

#[test]
fn device_failing_at_driver_ok_is_reported() {
    let mut t = FakeTransport::modern(common::VERSION_1, &[]);
    t.fail_at_driver_ok = true;
    let e = init_no_queues(&mut t, 0).unwrap_err();
    assert_eq!(
        e,
        InitError::DeviceFailed {
            status: ACK | DRV | FEAT_OK | DRIVER_OK | 0x40
        }
    );
    assert_eq!(t.status & FAILED, FAILED);
}

#[test]
fn setup_failure_marks_the_device_failed() {
    let mut t = FakeTransport::modern(common::VERSION_1, &[]);
    let e = vinit::init(&mut t, 0, &mut deadline(), |_, _| {
        Err::<(), _>(InitError::Driver {
            what: "no capacity",
        })
    })
    .unwrap_err();
    assert_eq!(
        e,
        InitError::Driver {
            what: "no capacity"
        }
    );
    assert_eq!(t.status, ACK | DRV | FEAT_OK | FAILED);
}

#[test]
fn full_init_with_queues_and_traffic() {
    for (packed, legacy) in [(false, false), (true, false), (false, true)] {
        let offered = common::VERSION_1
            | common::RING_INDIRECT_DESC
            | common::RING_EVENT_IDX
            | if packed { common::RING_PACKED } else { 0 };
        let mut t = if legacy {
            FakeTransport::legacy_pci(offered, &[128, 64])
        } else {
            FakeTransport::modern(offered, &[256, 64])
        };
        // Rings from a translating arena (legacy needs addresses below 2^44), the payload
        // mapped directly.
        let rings = ArenaDma::new(1 << 20);
        let dma = Direct::new();
        let (n, mut queues) =
            vinit::init(&mut t, common::CORE_SUPPORTED, &mut deadline(), |t, n| {
                let rx = vinit::setup_queue(t, &rings, n, 0, 128, &DmaConstraints::NONE)?;
                let tx = vinit::setup_queue(t, &rings, n, 1, 16, &DmaConstraints::NONE)?;
                Ok(vec![rx, tx])
            })
            .unwrap();
        assert_eq!(n.ring_format() == RingFormat::Packed, packed);
        let (rx, tx) = (&queues[0], &queues[1]);
        // Both are below bit 32, so legacy devices have them too.
        assert!(rx.config().event_idx);
        assert!(rx.config().indirect);
        assert_eq!(rx.config().legacy_layout, legacy);
        assert_eq!((rx.index(), tx.index()), (0, 1));
        if legacy {
            assert_eq!(
                (rx.size(), tx.size()),
                (128, 64),
                "legacy PCI: the fixed size"
            );
            let pfn = t.legacy_pfn[0].unwrap();
            assert_eq!(u64::from(pfn) * 4096, rx.addresses().desc.as_u64());
        } else {
            assert_eq!((rx.size(), tx.size()), (128, 16));
            assert_eq!(t.queue_size[..2], [128, 16]);
        }
        assert_eq!(t.queue_addresses[0], Some(rx.addresses()));
        assert_eq!(t.queue_addresses[1], Some(tx.addresses()));
        assert!(t.queue_enabled[0] && t.queue_enabled[1]);
        assert_eq!(t.status & DRIVER_OK, DRIVER_OK);

        // One request through the transmit queue, as a driver would do it.
        let tx = &mut queues[1];
        let mut dev = RingSide::for_queue(tx);
        let mut payload = *b"ping";
        // SAFETY: `payload` outlives the mapping and is not touched until unmap.
        let m = unsafe {
            dma.map(
                NonNull::from(&mut payload[..]),
                Direction::ToDevice,
                &DmaConstraints::NONE,
            )
        }
        .unwrap();
        let token = tx.add(&[Segment::from_mapping(&m).unwrap()]).unwrap();
        if tx.should_notify() {
            t.notify(tx.index());
        }
        assert_eq!(t.notifications, [1]);
        let req = dev.take().unwrap();
        assert_eq!(device_read(req.segments[0].addr, 4), b"ping");
        dev.complete(&req, 0);
        let mut d = deadline();
        assert_eq!(tx.wait_used(&mut d).unwrap().token, token);
        // SAFETY: the request completed.
        unsafe { dma.unmap(m) }.unwrap();
        assert_eq!(dma.stats().maps, 1);
        assert_eq!(dma.stats().unmaps, 1);

        t.set_status(DeviceStatus::RESET);
        for q in queues {
            // SAFETY: the device was reset.
            unsafe { q.free() }.unwrap();
        }
        assert_eq!(rings.stats().shared_bytes, 0);
    }
}

#[test]
fn queue_setup_errors() {
    let dma = Direct::new();
    let run = |t: &mut FakeTransport, preferred: u16| {
        let r = vinit::init(t, common::CORE_SUPPORTED, &mut deadline(), |t, n| {
            vinit::setup_queue(t, &dma, n, 0, preferred, &DmaConstraints::NONE)
        });
        r.map(|(_, q)| {
            // SAFETY: test device, never used.
            unsafe { q.free() }.unwrap();
        })
    };
    let v1 = common::VERSION_1;

    let mut t = FakeTransport::modern(v1, &[0]);
    assert_eq!(
        run(&mut t, 8),
        Err(InitError::QueueUnavailable { queue: 0 })
    );
    assert_eq!(t.status & FAILED, FAILED);
    let mut t = FakeTransport::modern(v1, &[]);
    assert_eq!(
        run(&mut t, 8),
        Err(InitError::QueueUnavailable { queue: 0 })
    );
    let mut t = FakeTransport::modern(v1, &[100]);
    assert_eq!(
        run(&mut t, 64),
        Err(InitError::QueueSizeInvalid {
            queue: 0,
            max: 100,
            size: 64
        })
    );
    let mut t = FakeTransport::modern(v1, &[256]);
    assert_eq!(
        run(&mut t, 100),
        Err(InitError::QueueSizeInvalid {
            queue: 0,
            max: 256,
            size: 100
        })
    );
    assert_eq!(
        run(&mut t, 0),
        Err(InitError::QueueSizeInvalid {
            queue: 0,
            max: 256,
            size: 0
        })
    );
    let mut t = FakeTransport::legacy_pci(0, &[96]);
    assert_eq!(
        run(&mut t, 64),
        Err(InitError::QueueSizeInvalid {
            queue: 0,
            max: 96,
            size: 96
        })
    );
    // Packed rings take any size up to 32768.
    let mut t = FakeTransport::modern(v1 | common::RING_PACKED, &[100]);
    assert_eq!(run(&mut t, 128), Ok(()));
    assert_eq!(t.queue_size[0], 100);
    // A queue that is live right after a reset.
    let mut t = FakeTransport::modern(v1, &[8]);
    t.queue_live_after_reset = true;
    assert_eq!(run(&mut t, 8), Err(InitError::QueueInUse { queue: 0 }));
    // The DMA path cannot provide ring memory.
    let out_of_memory = LowDma::new();
    out_of_memory.refuse_shared(true);
    let mut t = FakeTransport::modern(v1, &[8]);
    let r = vinit::init(&mut t, 0, &mut deadline(), |t, n| {
        vinit::setup_queue(t, &out_of_memory, n, 0, 8, &DmaConstraints::NONE).map(|_| ())
    });
    assert_eq!(
        r.unwrap_err(),
        InitError::Queue {
            queue: 0,
            error: QueueError::Dma(DmaError::Exhausted { requested: 128 })
        }
    );
}

#[test]
fn choose_queue_size_rules() {
    use RingFormat::{Packed, Split};
    assert_eq!(choose_queue_size(0, 256, 64, false, Split), Ok(64));
    assert_eq!(choose_queue_size(0, 32, 64, false, Split), Ok(32));
    assert_eq!(choose_queue_size(0, 256, 64, true, Split), Ok(256));
    assert_eq!(choose_queue_size(0, 65535, 1024, false, Packed), Ok(1024));
    assert!(choose_queue_size(0, 65535, 1024, true, Packed).is_err());
    assert!(
        choose_queue_size(0, 65535, 1024, false, Split).is_err(),
        "max not a power of two"
    );
    assert_eq!(
        choose_queue_size(3, 0, 8, false, Packed),
        Err(InitError::QueueUnavailable { queue: 3 })
    );
}

#[test]
fn legacy_layout_check_refuses_other_layouts() {
    let l = LegacyLayout::new(64);
    assert_eq!(l.avail_offset, 1024);
    assert_eq!(l.used_offset, 4096);
    assert_eq!(l.total, 8192);
    let a = |desc: u64, driver: u64, device: u64| QueueAddresses {
        size: 64,
        desc: DeviceAddr::new(desc),
        driver: DeviceAddr::new(driver),
        device: DeviceAddr::new(device),
    };
    assert_eq!(LegacyLayout::check(&a(0x10000, 0x10400, 0x11000)), Ok(0x10));
    assert!(matches!(
        LegacyLayout::check(&a(0x10010, 0x10410, 0x11010)),
        Err(TransportError::LegacyLayout { .. })
    ));
    assert!(matches!(
        LegacyLayout::check(&a(0x10000, 0x20000, 0x11000)),
        Err(TransportError::LegacyLayout { .. })
    ));
    assert!(matches!(
        LegacyLayout::check(&a(0x10000, 0x10400, 0x30000)),
        Err(TransportError::LegacyLayout { .. })
    ));
    let high = 1u64 << 44;
    assert_eq!(
        LegacyLayout::check(&a(high, high + 0x400, high + 0x1000)),
        Err(TransportError::AddressTooHigh {
            addr: DeviceAddr::new(high)
        })
    );
    // A modern (separate areas) queue handed to a legacy transport is refused.
    let dma = Direct::new();
    let q = new_queue(&dma, RingFormat::Split, config(64));
    assert!(LegacyLayout::check(&q.addresses()).is_err());
}

#[test]
fn config_reads_retry_on_generation_change() {
    let mut t = FakeTransport::modern(common::VERSION_1, &[]);
    assert_eq!(read_config_u64(&mut t, 8), Ok(0x0f0e_0d0c_0b0a_0908));
    let mut mac = [0u8; 6];
    read_config_bytes(&mut t, 2, &mut mac).unwrap();
    assert_eq!(mac, [2, 3, 4, 5, 6, 7]);

    // The generation changes during the first two attempts (each reads it twice), then holds.
    t.unstable_generation_reads.set(4);
    let mut attempts = 0;
    let v = read_config_consistent(&mut t, |t| {
        attempts += 1;
        t.read_config_u16(0)
    });
    assert_eq!(v, Ok(0x0100));
    assert_eq!(attempts, 3);

    // It never holds.
    t.unstable_generation_reads.set(u32::MAX);
    assert_eq!(
        read_config_u64(&mut t, 0),
        Err(TransportError::ConfigUnstable { attempts: 8 })
    );
    t.unstable_generation_reads.set(0);

    assert_eq!(
        read_config_u64(&mut t, 60),
        Err(TransportError::ConfigOutOfRange {
            offset: 64,
            width: 4
        })
    );
    t.write_config_u8(1, 0xaa).unwrap();
    assert_eq!(t.read_config_u16(0), Ok(0xaa00));
}

#[test]
fn interrupt_status_is_read_and_acknowledged() {
    let mut t = FakeTransport::modern(common::VERSION_1, &[]);
    t.isr = InterruptStatus::USED_BUFFER | InterruptStatus::CONFIG_CHANGE;
    let s = t.ack_interrupt();
    assert!(s.used_buffer() && s.config_change());
    assert_eq!(t.ack_interrupt(), InterruptStatus(0));
}

#[test]
fn feature_names_for_reports() {
    let bits = common::VERSION_1 | common::ACCESS_PLATFORM | blk::FLUSH | blk::RO | (1 << 45);
    let names: Vec<&str> = feature_names(DeviceType::BLOCK, bits).collect();
    assert_eq!(
        names,
        [
            "VIRTIO_BLK_F_RO",
            "VIRTIO_BLK_F_FLUSH",
            "VIRTIO_F_VERSION_1",
            "VIRTIO_F_ACCESS_PLATFORM",
            "bit45"
        ]
    );
    assert_eq!(feature_name(DeviceType::NET, 5), "VIRTIO_NET_F_MAC");
    assert_eq!(
        feature_name(DeviceType::NET, 63),
        "VIRTIO_NET_F_SPEED_DUPLEX"
    );
    assert_eq!(
        feature_name(DeviceType::CONSOLE, 2),
        "VIRTIO_CONSOLE_F_EMERG_WRITE"
    );
    assert_eq!(
        feature_name(DeviceType::RNG, 0),
        "bit0",
        "rng has no device bits"
    );
    assert_eq!(feature_name(DeviceType::RNG, 28), "VIRTIO_F_INDIRECT_DESC");
    assert_eq!(feature_name(DeviceType(999), 29), "VIRTIO_F_EVENT_IDX");
    assert_eq!(feature_names(DeviceType::NET, 0).count(), 0);
    assert_eq!(feature_names(DeviceType::NET, u64::MAX).count(), 64);
    assert_eq!(DeviceType::BLOCK.name(), Some("blk"));
    assert_eq!(DeviceType(1234).name(), None);
    assert_eq!(
        features::DeviceType::from_pci_modern_id(0x1042),
        Some(DeviceType::BLOCK)
    );
    assert_eq!(DeviceType::from_pci_modern_id(0x1001), None);
}
