//! virtio-iommu domains through the core's `IommuDma`, against the QEMU-like fake device of
//! `virtio::iommu::tests`.

use alloc::vec;
use core::ptr::NonNull;

use super::*;
use crate::dma::iommu::LazyDomain;
use crate::dma::{Direct, Direction, Dma, DmaConstraints};
use crate::virtio::fakedev::{Bus, FakeTransport, StepClock};
use crate::virtio::iommu::req;
use crate::virtio::iommu::tests::{MSI, QEMU_FEATURES, ViommuModel, bus, qemu_config, settings};
use crate::virtio::{DeviceStatus, DeviceType, InterruptStatus, QueueAddresses, TransportError};

/// The fake device is single-threaded (`Rc`), the backends must be `Send`: every test runs on
/// one thread, so nothing is ever sent anywhere.
struct AssertSend<T>(T);

// SAFETY: see the type's documentation: the value never leaves the test's thread.
unsafe impl<T> Send for AssertSend<T> {}

impl Clock for AssertSend<StepClock> {
    fn now_us(&self) -> u64 {
        self.0.now_us()
    }
}

impl Transport for AssertSend<FakeTransport> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn is_legacy(&self) -> bool {
        self.0.is_legacy()
    }
    fn device_type(&mut self) -> DeviceType {
        self.0.device_type()
    }
    fn device_features(&mut self) -> u64 {
        self.0.device_features()
    }
    fn set_driver_features(&mut self, f: u64) {
        self.0.set_driver_features(f)
    }
    fn status(&mut self) -> DeviceStatus {
        self.0.status()
    }
    fn set_status(&mut self, s: DeviceStatus) {
        self.0.set_status(s)
    }
    fn max_queue_size(&mut self, q: u16) -> u16 {
        self.0.max_queue_size(q)
    }
    fn queue_in_use(&mut self, q: u16) -> bool {
        self.0.queue_in_use(q)
    }
    fn set_queue_size(&mut self, q: u16, s: u16) -> Result<(), TransportError> {
        self.0.set_queue_size(q, s)
    }
    fn set_queue_addresses(&mut self, q: u16, a: &QueueAddresses) -> Result<(), TransportError> {
        self.0.set_queue_addresses(q, a)
    }
    fn enable_queue(&mut self, q: u16) {
        self.0.enable_queue(q)
    }
    fn notify(&mut self, q: u16) {
        self.0.notify(q)
    }
    fn config_generation(&mut self) -> u32 {
        self.0.config_generation()
    }
    fn read_config_u8(&mut self, o: usize) -> Result<u8, TransportError> {
        self.0.read_config_u8(o)
    }
    fn read_config_u16(&mut self, o: usize) -> Result<u16, TransportError> {
        self.0.read_config_u16(o)
    }
    fn read_config_u32(&mut self, o: usize) -> Result<u32, TransportError> {
        self.0.read_config_u32(o)
    }
    fn write_config_u8(&mut self, o: usize, v: u8) -> Result<(), TransportError> {
        self.0.write_config_u8(o, v)
    }
    fn write_config_u16(&mut self, o: usize, v: u16) -> Result<(), TransportError> {
        self.0.write_config_u16(o, v)
    }
    fn write_config_u32(&mut self, o: usize, v: u32) -> Result<(), TransportError> {
        self.0.write_config_u32(o, v)
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.0.ack_interrupt()
    }
}

type Shared =
    &'static spin::Mutex<ViommuIommu<'static, AssertSend<FakeTransport>, AssertSend<StepClock>>>;

fn start(b: &Bus, dma: &'static dyn Dma) -> Shared {
    let d = Viommu::new(
        Box::new(AssertSend(b.transport())),
        AssertSend(b.clock()),
        &settings(),
        dma,
    )
    .map_err(|(_, e, _)| e)
    .unwrap();
    Box::leak(Box::new(spin::Mutex::new(ViommuIommu::new(d))))
}

fn direct() -> &'static Direct {
    Box::leak(Box::new(Direct::new()))
}

fn translate(b: &Bus, ep: u32, iova: u64, write: bool) -> Result<u64, u8> {
    b.model(|m: &mut ViommuModel| m.translate(ep, iova, write, false))
}

#[test]
fn a_dynamic_domain_maps_each_buffer() {
    let b = bus(
        qemu_config(),
        QEMU_FEATURES,
        ViommuModel::new(&[0x10, 0x18]),
    );
    let direct = direct();
    let io = start(&b, direct);
    let lazy = LazyDomain::new(
        "00:02.0".into(),
        Box::new(ViommuSetup {
            iommu: io,
            debug: Default::default(),
            map: None,
            endpoint: 0x10,
            target: Target::Direct {
                ram: &[(0, 1 << 30)],
                direct,
            },
        }),
    );
    // Nothing before first use: the endpoint faults (no bypass).
    assert_eq!(translate(&b, 0x10, 0x4000_0000, false), Err(1));
    let dma = lazy.get().unwrap();
    let info = dma.info();
    assert_eq!(
        (info.backend, info.mapping, info.id),
        ("virtio-iommu", "per-map", 0)
    );
    assert_eq!(info.setup_calls, 2, "PROBE and ATTACH");
    assert_eq!((info.window_base, info.window_size), (1 << 30, 256 << 20));
    assert_eq!(info.page_size, 4096);
    let mut buf = vec![0u8; 9000];
    let p = buf.as_mut_ptr() as u64;
    // SAFETY: unmapped below; the test touches the buffer only through the device.
    let m = unsafe {
        dma.map(
            NonNull::from(&mut buf[..]),
            Direction::ToDevice,
            &DmaConstraints::NONE,
        )
    }
    .unwrap();
    let iova = m.device_addr().as_u64();
    assert_eq!(translate(&b, 0x10, iova + 8999, false), Ok(p + 8999));
    assert_eq!(translate(&b, 0x10, iova, true), Err(2), "read-only");
    assert_eq!(translate(&b, 0x18, iova, false), Err(1), "not attached");
    // The MAP carried the page-rounded run.
    let (kind, bytes) = b.model(|m: &mut ViommuModel| m.seen.last().cloned().unwrap());
    assert_eq!(kind, 3);
    let low = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    let high = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
    assert_eq!(low, iova & !0xfff);
    assert_eq!(high + 1 - low, ((p & 0xfff) + 9000).div_ceil(4096) * 4096);
    // SAFETY: the "device" is done.
    unsafe { dma.unmap(m) }.unwrap();
    assert_eq!(translate(&b, 0x10, iova, false), Err(2));
    let s = dma.iommu_stats();
    assert_eq!((s.maps, s.unmaps, s.calls, s.pages), (1, 1, 2, 0));
    assert_eq!((s.kinds[0].name, s.kinds[0].calls), ("MAP", 1));
    assert_eq!((s.kinds[1].name, s.kinds[1].calls), ("UNMAP", 1));
    // Teardown: DETACH, reset, everything given back.
    let mut g = io.lock();
    g.teardown().unwrap();
    let (counts, faults, last) = g.finished.clone().unwrap();
    assert_eq!(
        (
            counts.probe,
            counts.attach,
            counts.map,
            counts.unmap,
            counts.detach
        ),
        (1, 1, 1, 1, 1)
    );
    assert_eq!(counts.faults as usize, faults.len());
    assert!(counts.faults >= 3, "the faulting DMAs above were reported");
    assert_eq!(last, None, "every request succeeded");
    assert_eq!(b.core(|c| c.status), 0);
    let ds = direct.stats();
    assert_eq!(
        ds.shared_allocs, ds.shared_frees,
        "queues and buffers given back"
    );
    drop(g);
    // After the teardown every request is refused, never sent.
    let mut buf2 = [0u8; 8];
    // SAFETY: nothing is mapped.
    let e = unsafe {
        dma.map(
            NonNull::from(&mut buf2[..]),
            Direction::ToDevice,
            &DmaConstraints::NONE,
        )
    };
    assert!(e.is_err());
}

#[test]
fn reserved_regions_stay_out_of_the_aperture() {
    let mut m = ViommuModel::new(&[0x10]);
    m.reserved.push((0, 1 << 30, (1 << 30) + (3 << 20) - 1));
    let b = bus(qemu_config(), QEMU_FEATURES, m);
    let direct = direct();
    let io = start(&b, direct);
    let dma = setup_on(
        io,
        None,
        Target::Direct {
            ram: &[(0, 1 << 30)],
            direct,
        },
    )
    .unwrap();
    assert_eq!(dma.info().window_base, (1 << 30) + (3 << 20));
    let a = &io.lock().attached[0];
    assert_eq!(a.reserved.len(), 2);
    assert_eq!((a.reserved[0].start, a.reserved[0].end), MSI);
}

#[test]
fn setup_errors_reach_the_device() {
    let b = bus(qemu_config(), QEMU_FEATURES, ViommuModel::new(&[0x10]));
    let direct = direct();
    let io = start(&b, direct);
    let lazy = LazyDomain::new(
        "00:07.0".into(),
        Box::new(ViommuSetup {
            iommu: io,
            debug: Default::default(),
            map: None,
            endpoint: 0x38,
            target: Target::Direct {
                ram: &[(0, 1 << 30)],
                direct,
            },
        }),
    );
    // The PROBE of an endpoint the device does not know: NOENT.
    assert_eq!(lazy.get().err(), Some(DmaError::Platform { code: 6 }));
    assert!(io.lock().attached.is_empty());
}

#[test]
fn the_pool_behind_virtio_iommu() {
    let (bounce, phys) = crate::dma::testutil::leaked_pool();
    let b = bus(qemu_config(), QEMU_FEATURES, ViommuModel::new(&[0x10]));
    // The IOMMU's own queues in the pool too: the host reads them.
    let io = start(&b, bounce);
    let dma = setup_on(
        io,
        None,
        Target::Pool {
            bounce,
            phys,
            size: 1 << 20,
        },
    )
    .unwrap();
    assert_eq!((dma.name(), dma.info().mapping), ("iommu+bounce", "pool"));
    let base = dma.info().window_base;
    assert_eq!(translate(&b, 0x10, base + 0x2345, true), Ok(phys + 0x2345));
    let mut buf = vec![0u8; 3000];
    // SAFETY: unmapped below; touched only through the device.
    let m = unsafe {
        dma.map(
            NonNull::from(&mut buf[..]),
            Direction::FromDevice,
            &DmaConstraints::NONE,
        )
    }
    .unwrap();
    let target = translate(&b, 0x10, m.device_addr().as_u64(), true).unwrap();
    for i in 0..3000u64 {
        // SAFETY: inside the pool slots of this mapping.
        unsafe { (target as *mut u8).add(i as usize).write_volatile(i as u8) };
    }
    // SAFETY: the "device" is done.
    unsafe { dma.unmap(m) }.unwrap();
    assert!(buf.iter().enumerate().all(|(i, &b)| b == i as u8));
    let s = dma.iommu_stats();
    assert_eq!(
        (s.maps, s.unmaps, s.calls),
        (1, 0, 1),
        "one MAP at setup, nothing per request"
    );
    let mut g = io.lock();
    g.teardown().unwrap();
    let (counts, _, _) = g.finished.clone().unwrap();
    assert_eq!((counts.map, counts.unmap, counts.detach), (1, 1, 1));
    assert_eq!(
        bounce.pool_stats().live_bytes,
        0,
        "queues and buffers back in the pool"
    );
}

/// Sets up the domain of endpoint 0x10 on `io`: `map` (`sg.iommu.map`) over `target`.
fn setup_on(
    io: Shared,
    map: Option<IommuMap>,
    target: Target<'static>,
) -> Result<IommuDma<'static>, DmaError> {
    Box::new(ViommuSetup {
        iommu: io,
        debug: Default::default(),
        map,
        endpoint: 0x10,
        target,
    })
    .setup()
}

/// q35's RAM below 4 GiB with 512 MiB: the low 639 KiB, then from 1 MiB on.
const Q35_RAM: &[(u64, u64)] = &[(0, 0x9_fc00), (0x10_0000, 0x2000_0000)];

fn static_setup(
    b: &Bus,
    io: Shared,
    direct: &'static Direct,
) -> Result<IommuDma<'static>, DmaError> {
    let _ = b;
    setup_on(
        io,
        Some(IommuMap::Static),
        Target::Direct {
            ram: Q35_RAM,
            direct,
        },
    )
}

#[test]
fn a_static_domain_maps_all_ram_once_and_nothing_per_request() {
    let b = bus(qemu_config(), QEMU_FEATURES, ViommuModel::new(&[0x10]));
    let direct = direct();
    let io = start(&b, direct);
    let dma = static_setup(&b, io, direct).unwrap();
    let info = dma.info();
    assert_eq!(
        (info.mode, info.mapping, info.mode_reason),
        ("static", "ram", "sg.iommu.map=static")
    );
    assert_eq!((info.window_base, info.window_size), (0, 0x2000_0000));
    assert_eq!(info.setup_calls, 2, "PROBE and ATTACH");
    // Exactly the RAM ranges, whole pages, page 0 left out: one MAP each, read-write.
    let runs = [(0x1000, 0x9_efff), (0x10_0000, 0x1fff_ffff)];
    let maps: Vec<(u64, u64, u64, u32)> = b.model(|m: &mut ViommuModel| {
        m.domains[&0]
            .iter()
            .map(|f| (f.low, f.high, f.phys, f.flags))
            .collect()
    });
    assert_eq!(
        maps,
        runs.map(|(lo, hi)| (lo, hi, lo, MAP_F_READ | MAP_F_WRITE))
    );
    assert_eq!(translate(&b, 0x10, 0x1234_5678, true), Ok(0x1234_5678));
    assert_eq!(
        translate(&b, 0x10, 0x9_f000, false),
        Err(2),
        "a partial page"
    );
    assert_eq!(translate(&b, 0x10, 0, false), Err(2), "page 0");
    assert_eq!(translate(&b, 0x10, 0x2000_0000, false), Err(2), "above RAM");
    let s = dma.iommu_stats();
    assert_eq!((s.maps, s.calls, s.kinds[0].calls), (2, 2, 2));
    assert_eq!(s.pages, 0x9e + 0x1ff00, "every page of both runs");
    // Requests: the direct path's addresses, no request to the device.
    let seen = b.model(|m: &mut ViommuModel| m.seen.len());
    crate::dma::testutil::assert_maps_at_its_address(&dma, 9000, Direction::ToDevice);
    let r = dma.alloc_shared(100, 64, &DmaConstraints::NONE).unwrap();
    assert_eq!(r.device_addr().as_u64(), r.cpu_ptr().as_ptr() as u64);
    // SAFETY: never given to a device.
    unsafe { dma.free_shared(r) }.unwrap();
    assert_eq!(b.model(|m: &mut ViommuModel| m.seen.len()), seen);
    let after = dma.iommu_stats();
    assert_eq!((after.dma_maps, after.dma_unmaps), (1, 1));
    assert_eq!((after.maps, after.unmaps, after.calls), (2, 0, 2));
    // The teardown removes what the setup mapped: one UNMAP per run, then DETACH.
    let mut g = io.lock();
    assert_eq!(
        g.attached[0].fixed,
        [(0x1000, 0x9_e000), (0x10_0000, 0x1ff0_0000)]
    );
    g.teardown().unwrap();
    let (counts, faults, last) = g.finished.clone().unwrap();
    assert_eq!(
        (counts.map, counts.unmap, counts.detach, last),
        (2, 2, 1, None)
    );
    assert_eq!(faults.len() as u64, counts.faults);
    let unmaps: Vec<(u64, u64)> = b.model(|m: &mut ViommuModel| {
        m.seen
            .iter()
            .filter(|(k, _)| *k == 4)
            .map(|(_, r)| {
                let at = |o: usize| u64::from_le_bytes(r[o..o + 8].try_into().unwrap());
                (at(8), at(16))
            })
            .collect()
    });
    assert_eq!(unmaps, runs);
}

#[test]
fn static_ram_over_a_reserved_region_fails_before_attach() {
    // A PROBE reserved region inside RAM (a host that reserves guest RAM).
    let mut m = ViommuModel::new(&[0x10]);
    m.reserved.push((0, 0x800_0000, 0x80f_ffff));
    let b = bus(qemu_config(), QEMU_FEATURES, m);
    let direct = direct();
    let io = start(&b, direct);
    let e = static_setup(&b, io, direct).unwrap_err();
    assert_eq!(
        e,
        DmaError::InvalidRequest(
            "sg.iommu.map=static: RAM overlaps a reserved region the virtio-iommu's PROBE named"
        )
    );
    assert!(format!("{e}").contains("PROBE"), "{e}");
    assert!(io.lock().attached.is_empty(), "nothing attached");
    let kinds: Vec<u8> = b.model(|m: &mut ViommuModel| m.seen.iter().map(|(k, _)| *k).collect());
    assert_eq!(kinds, [req::PROBE], "PROBE only: no ATTACH, no MAP");
    // RAM over the interrupt window: the same, with its own reason.
    let b = bus(qemu_config(), QEMU_FEATURES, ViommuModel::new(&[0x10]));
    let io = start(&b, direct);
    static HIGH: &[(u64, u64)] = &[(0x10_0000, 0x1_0000_0000)];
    let e = setup_on(
        io,
        Some(IommuMap::Static),
        Target::Direct { ram: HIGH, direct },
    )
    .unwrap_err();
    assert_eq!(
        e,
        DmaError::InvalidRequest(
            "sg.iommu.map=static: RAM overlaps the x86 interrupt window 0xfee00000-0xfeefffff"
        )
    );
}

#[test]
fn static_ram_beyond_the_input_range_fails() {
    // A device that translates only the low 256 MiB.
    let mut config = qemu_config();
    config[16..24].copy_from_slice(&0x0fff_ffffu64.to_le_bytes());
    let b = bus(config, QEMU_FEATURES, ViommuModel::new(&[0x10]));
    let direct = direct();
    let io = start(&b, direct);
    let e = static_setup(&b, io, direct).unwrap_err();
    assert_eq!(
        e,
        DmaError::InvalidRequest(crate::dma::iommu::STATIC_BEYOND_INPUT)
    );
    assert!(io.lock().attached.is_empty(), "nothing attached");
}

#[test]
fn static_on_a_secure_guest_maps_the_pool_and_says_so() {
    let (bounce, phys) = crate::dma::testutil::leaked_pool();
    let b = bus(qemu_config(), QEMU_FEATURES, ViommuModel::new(&[0x10]));
    let io = start(&b, bounce);
    let dma = setup_on(
        io,
        Some(IommuMap::Static),
        Target::Pool {
            bounce,
            phys,
            size: 1 << 20,
        },
    )
    .unwrap();
    let info = dma.info();
    assert_eq!(
        (dma.name(), info.mode, info.mapping),
        ("iommu+bounce", "dynamic", "pool")
    );
    assert_eq!(
        info.mode_reason,
        "secure: only the shared pool is mapped (sg.iommu.map=static has no effect)"
    );
    assert_eq!(info.window_size, 1 << 20);
    assert_eq!(dma.iommu_stats().maps, 1, "the pool, nothing else");
}
