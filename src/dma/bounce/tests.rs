use super::*;
use crate::dma::Direct;
use crate::memmap::RegionKind;
use crate::platform::{
    Emulated, NonePlatform, PAGE_4K, PAGE_64K, PlatformKind, ShareLog, ShareOp, ShareRange, secret,
};
use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::vec;
use std::vec::Vec;

/// Host memory standing in for guest RAM: "physical" addresses are its pointer values.
struct Ram {
    ptr: *mut u8,
    layout: Layout,
}

impl Ram {
    fn new(size: usize, align: usize) -> Self {
        let layout = Layout::from_size_align(size, align).unwrap();
        // SAFETY: non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Ram { ptr, layout }
    }

    fn phys(&self) -> u64 {
        self.ptr.expose_provenance() as u64
    }

    fn size(&self) -> u64 {
        self.layout.size() as u64
    }

    /// Everything in it, as the host would dump it.
    fn dump(&self) -> Vec<u8> {
        // SAFETY: the allocation is live; volatile reads, as a device would.
        (0..self.layout.size())
            .map(|i| unsafe { self.ptr.add(i).read_volatile() })
            .collect()
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// A device that reaches memory at device address `phys + offset`.
struct FakeDevice {
    offset: u64,
}

impl FakeDevice {
    fn ptr(&self, addr: DeviceAddr) -> *mut u8 {
        core::ptr::with_exposed_provenance_mut((addr.as_u64() - self.offset) as usize)
    }

    fn read(&self, addr: DeviceAddr, len: usize) -> Vec<u8> {
        let p = self.ptr(addr);
        // SAFETY: tests only pass addresses the bounce path handed out, inside the pool.
        (0..len)
            .map(|i| unsafe { p.add(i).read_volatile() })
            .collect()
    }

    fn write(&self, addr: DeviceAddr, data: &[u8]) {
        let p = self.ptr(addr);
        for (i, &b) in data.iter().enumerate() {
            // SAFETY: as in `read`.
            unsafe { p.add(i).write_volatile(b) };
        }
    }
}

const DEV: FakeDevice = FakeDevice { offset: 0 };

/// A secure platform whose device addresses are an alias at `offset`, and that can refuse.
struct AliasPlatform {
    offset: u64,
    fail: bool,
    log: ShareLog,
}

impl AliasPlatform {
    fn new(offset: u64) -> Self {
        AliasPlatform {
            offset,
            fail: false,
            log: ShareLog::new(),
        }
    }
}

impl Platform for AliasPlatform {
    fn kind(&self) -> PlatformKind {
        PlatformKind::Emulated
    }

    fn is_secure(&self) -> bool {
        true
    }

    fn granularity(&self) -> u64 {
        PAGE_4K
    }

    fn device_addr(&self, phys: u64) -> u64 {
        phys + self.offset
    }

    fn log(&self) -> &ShareLog {
        &self.log
    }

    unsafe fn share_range(&self, _range: ShareRange) -> Result<(), PlatformError> {
        if self.fail {
            Err(PlatformError::Ultravisor {
                call: crate::platform::pef::UV_SHARE_PAGE,
                code: crate::platform::pef::U_P2,
            })
        } else {
            Ok(())
        }
    }

    unsafe fn unshare_range(&self, _range: ShareRange) -> Result<(), PlatformError> {
        Ok(())
    }
}

fn bounce<'p>(p: &'p dyn Platform, ram: &Ram) -> Bounce<'p> {
    // SAFETY: `ram` is ours, unused by anything else, and outlives the Bounce in every test.
    unsafe { Bounce::new(p, ram.phys(), ram.size(), PoolConfig::default()) }.unwrap()
}

fn in_pool(b: &Bounce, addr: DeviceAddr, len: usize) -> bool {
    let r = b.region();
    addr.as_u64() >= r.device && addr.as_u64() + len as u64 <= r.device + r.size
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn to_device_the_device_sees_a_copy_in_the_slot() {
    let ram = Ram::new(256 << 10, 4096);
    let p = Emulated::new(PAGE_4K);
    let b = bounce(&p, &ram);
    let mut buf = pattern(3000, 1);
    let expected = buf.clone();
    // SAFETY: `buf` outlives the mapping; the CPU only touches it as noted below.
    let m = unsafe {
        b.map(
            NonNull::from(&mut buf[..]),
            Direction::ToDevice,
            &DmaConstraints::NONE,
        )
    }
    .unwrap();
    assert_ne!(m.device_addr().as_u64(), buf.as_ptr() as u64);
    assert!(in_pool(&b, m.device_addr(), 3000));
    assert_eq!(DEV.read(m.device_addr(), 3000), expected);
    // A copy: what the CPU does to its buffer afterwards is not seen (the test breaks the
    // contract on purpose, to show the device never looks at private memory).
    buf[0] = 0xee;
    assert_eq!(DEV.read(m.device_addr(), 1), [expected[0]]);
    let addr = m.device_addr();
    // SAFETY: no device request is outstanding.
    unsafe { b.unmap(m) }.unwrap();
    assert!(
        DEV.read(addr, 4096).iter().all(|&x| x == 0),
        "zeroed on release"
    );
    let s = b.stats();
    assert_eq!((s.maps, s.unmaps, s.mapped_bytes), (1, 1, 3000));
    assert_eq!((s.bounced_to_device, s.bounced_from_device), (3000, 0));
    assert_eq!(b.bounce_stats().zeroed_bytes, 4096);
    assert_eq!(b.name(), "bounce");
}

#[test]
fn from_device_data_reaches_the_buffer_only_at_sync_or_unmap() {
    let ram = Ram::new(256 << 10, 4096);
    let p = Emulated::new(PAGE_4K);
    let b = bounce(&p, &ram);
    let mut buf = vec![0xaau8; 100];
    let ptr = NonNull::from(&mut buf[..]);
    // SAFETY: `buf` outlives the mapping and is read only through `ptr` after sync/unmap.
    let m = unsafe { b.map(ptr, Direction::FromDevice, &DmaConstraints::NONE) }.unwrap();
    // The private contents never reach shared memory.
    assert!(DEV.read(m.device_addr(), 100).iter().all(|&x| x == 0));
    let data = pattern(100, 7);
    DEV.write(m.device_addr(), &data);
    // SAFETY: reading our own buffer through the raw pointer; no copy has happened yet.
    let before: Vec<u8> = (0..100)
        .map(|i| unsafe { ptr.cast::<u8>().add(i).read() })
        .collect();
    assert!(before.iter().all(|&x| x == 0xaa), "not visible before sync");
    // The driver learns the device wrote 10 bytes: sync just those.
    // SAFETY: the device is done with that range.
    unsafe { b.sync_for_cpu(&m, 0, 10) }.unwrap();
    // SAFETY: as above.
    let mid: Vec<u8> = (0..100)
        .map(|i| unsafe { ptr.cast::<u8>().add(i).read() })
        .collect();
    assert_eq!(&mid[..10], &data[..10]);
    assert!(mid[10..].iter().all(|&x| x == 0xaa));
    // sync_for_device of a FromDevice mapping copies nothing in.
    // SAFETY: the CPU hands the range back.
    unsafe { b.sync_for_device(&m, 0, 100) }.unwrap();
    assert_eq!(DEV.read(m.device_addr(), 100), data);
    let addr = m.device_addr();
    // SAFETY: the device is done.
    unsafe { b.unmap(m) }.unwrap();
    assert_eq!(buf, data, "the whole mapping comes back at unmap");
    assert!(DEV.read(addr, 2048).iter().all(|&x| x == 0));
    let s = b.stats();
    assert_eq!((s.bounced_to_device, s.bounced_from_device), (0, 110));
    assert_eq!(s.syncs, 2);
}

#[test]
fn bidirectional_round_trip() {
    let ram = Ram::new(256 << 10, 4096);
    let p = Emulated::new(PAGE_4K);
    let b = bounce(&p, &ram);
    let mut buf = pattern(5000, 3);
    let orig = buf.clone();
    // SAFETY: `buf` outlives the mapping and is untouched until unmap.
    let m = unsafe {
        b.map(
            NonNull::from(&mut buf[..]),
            Direction::Bidirectional,
            &DmaConstraints::NONE,
        )
    }
    .unwrap();
    assert_eq!(DEV.read(m.device_addr(), 5000), orig);
    // The device changes the middle only.
    let addr = m.device_addr().checked_add(1000).unwrap();
    DEV.write(addr, &[0x55; 100]);
    // SAFETY: the device is done.
    unsafe { b.unmap(m) }.unwrap();
    let mut expected = orig.clone();
    expected[1000..1100].fill(0x55);
    assert_eq!(buf, expected);
    let s = b.stats();
    assert_eq!((s.bounced_to_device, s.bounced_from_device), (5000, 5000));
}

#[test]
fn secrets_stay_out_of_shared_memory_unless_zeroing_is_skipped() {
    for skip in [false, true] {
        let ram = Ram::new(256 << 10, 4096);
        let p = Emulated::new(PAGE_4K);
        let b = bounce(&p, &ram);
        b.set_debug_skip_zeroing(skip);
        // A ring region (slot 0), and a secret buffer that the device legitimately reads for
        // one request (slots 1 and 2).
        let r = b.alloc_shared(64, 64, &DmaConstraints::NONE).unwrap();
        let mut secret_buf = vec![0u8; 4096];
        secret::fill(&mut secret_buf, 0);
        // SAFETY: the buffer outlives the mapping.
        let m = unsafe {
            b.map(
                NonNull::from(&mut secret_buf[..]),
                Direction::ToDevice,
                &DmaConstraints::NONE,
            )
        }
        .unwrap();
        assert_eq!(
            secret::marks(&ram.dump()).count(),
            256,
            "in flight: in the slots"
        );
        // SAFETY: the device is done.
        unsafe { b.unmap(m) }.unwrap();
        // The ring held secret-marked data too.
        r.write_bytes(0, &secret::record(999));
        r.write_bytes(16, &secret::record(1000));
        // SAFETY: no device ever saw it.
        unsafe { b.free_shared(r) }.unwrap();
        // The host dumps the pool.
        let found = secret::marks(&ram.dump()).count();
        if skip {
            assert_eq!(
                found, 258,
                "the leak knob must leave the marks for the oracle"
            );
            assert_eq!(b.bounce_stats().unzeroed_releases, 2);
            assert!(b.bounce_stats().debug_skip_zeroing);
        } else {
            assert_eq!(found, 0, "zeroed on release");
            assert_eq!(b.bounce_stats().zeroed_bytes, 4096 + 2048);
        }
    }
}

#[test]
fn exhaustion_is_back_pressure() {
    let ram = Ram::new(16 << 10, 4096); // 8 slots
    let p = Emulated::new(PAGE_4K);
    let b = bounce(&p, &ram);
    let mut bufs: Vec<Vec<u8>> = (0..9).map(|i| pattern(2048, i)).collect();
    let mut maps = Vec::new();
    for buf in bufs.iter_mut().take(8) {
        // SAFETY: the buffers outlive their mappings.
        maps.push(
            unsafe {
                b.map(
                    NonNull::from(&mut buf[..]),
                    Direction::ToDevice,
                    &DmaConstraints::NONE,
                )
            }
            .unwrap(),
        );
    }
    let last = NonNull::from(&mut bufs[8][..]);
    // SAFETY: as above.
    let e = unsafe { b.map(last, Direction::ToDevice, &DmaConstraints::NONE) }.unwrap_err();
    assert_eq!(e, DmaError::Exhausted { requested: 2048 });
    assert!(e.is_transient());
    // A completion frees a slot; the retry succeeds.
    // SAFETY: that request completed.
    unsafe { b.unmap(maps.remove(3)) }.unwrap();
    // SAFETY: as above.
    let m = unsafe { b.map(last, Direction::ToDevice, &DmaConstraints::NONE) }.unwrap();
    assert_eq!(DEV.read(m.device_addr(), 2048), pattern(2048, 8));
    maps.push(m);
    // Beyond the largest mapping: permanent.
    let mut big = vec![0u8; b.max_mapping_size() + 1];
    // SAFETY: fails; nothing kept.
    let e = unsafe {
        b.map(
            NonNull::from(&mut big[..]),
            Direction::ToDevice,
            &DmaConstraints::NONE,
        )
    }
    .unwrap_err();
    assert!(matches!(e, DmaError::TooLarge { .. }));
    for m in maps {
        // SAFETY: all done.
        unsafe { b.unmap(m) }.unwrap();
    }
    let s = b.bounce_stats();
    assert_eq!((s.pool.exhausted, s.pool.failures), (1, 1));
    assert_eq!(s.pool.high_water_slots, 8);
    assert_eq!(s.pool.in_use_slots, 0);
    assert_eq!(s.dma.map_failures, 2);
    assert!(ram.dump().iter().all(|&x| x == 0));
}

#[test]
fn alignment_and_constraints_are_honoured() {
    let ram = Ram::new(1 << 20, 64 << 10);
    let p = Emulated::new(PAGE_64K);
    let b = bounce(&p, &ram);
    let mut small = [1u8; 10];
    // SAFETY: `small` outlives the mapping.
    let m1 = unsafe {
        b.map(
            NonNull::from(&mut small[..]),
            Direction::ToDevice,
            &DmaConstraints::NONE,
        )
    }
    .unwrap();
    let c = DmaConstraints {
        align: 16 << 10,
        boundary: 32 << 10,
        ..DmaConstraints::NONE
    };
    let mut buf = vec![2u8; 20 << 10];
    // SAFETY: `buf` outlives the mapping.
    let m2 = unsafe { b.map(NonNull::from(&mut buf[..]), Direction::ToDevice, &c) }.unwrap();
    c.check(m2.device_addr(), buf.len()).unwrap();
    assert_eq!(
        m2.device_addr().as_u64() % (32 << 10),
        0,
        "16K aligned, 20K within 32K"
    );
    // A ring: page-aligned, zeroed, within a 32-bit limit (the pool is wherever the host heap
    // put it, so the limit is the pool's own end).
    let r = b
        .alloc_shared(
            10 << 10,
            4096,
            &DmaConstraints {
                max_addr: b.region().device + b.region().size - 1,
                ..DmaConstraints::NONE
            },
        )
        .unwrap();
    assert_eq!(r.device_addr().as_u64() % 4096, 0);
    assert!(in_pool(&b, r.device_addr(), r.len()));
    assert_eq!(r.align(), 4096);
    assert!((0..r.len()).all(|i| r.read_u8(i) == 0));
    // Device limit below the pool: the pool cannot help, a permanent error.
    let low = DmaConstraints {
        max_addr: b.region().device - 1,
        ..DmaConstraints::NONE
    };
    // SAFETY: fails; nothing kept.
    let e = unsafe { b.map(NonNull::from(&mut small[..]), Direction::ToDevice, &low) };
    assert!(matches!(e, Err(DmaError::Unreachable { .. })));
    assert!(matches!(
        b.alloc_shared(64, 3, &DmaConstraints::NONE),
        Err(DmaError::InvalidRequest(_))
    ));
    assert_eq!(b.stats().shared_failures, 1);
    // SAFETY: no device ever saw them.
    unsafe {
        b.unmap(m1).unwrap();
        b.unmap(m2).unwrap();
        b.free_shared(r).unwrap();
    }
    assert_eq!(b.stats().shared_bytes, 0);
}

#[test]
fn alloc_shared_zeroes_what_a_device_scribbled() {
    let ram = Ram::new(64 << 10, 4096);
    let p = Emulated::new(PAGE_4K);
    let b = bounce(&p, &ram);
    // A hostile device writes all over the free pool.
    DEV.write(DeviceAddr::new(b.region().device), &vec![0x77; 64 << 10]);
    let r = b.alloc_shared(3000, 8, &DmaConstraints::NONE).unwrap();
    assert!((0..3000).all(|i| r.read_u8(i) == 0));
    // SAFETY: no device uses it.
    unsafe { b.free_shared(r) }.unwrap();
}

/// A device that writes a whole slot where it was given a short from-device mapping: the
/// payload comes back, and on release the whole slot is zero, not just the mapped bytes.
#[test]
fn a_short_from_device_mapping_leaves_its_whole_slot_zero() {
    let ram = Ram::new(64 << 10, 4096);
    let p = Emulated::new(PAGE_4K);
    let b = bounce(&p, &ram);
    let mut buf = vec![0u8; 100];
    // SAFETY: the buffer outlives the mapping.
    let m = unsafe {
        b.map(
            NonNull::from(&mut buf[..]),
            Direction::FromDevice,
            &DmaConstraints::NONE,
        )
    }
    .unwrap();
    DEV.write(m.device_addr(), &vec![0x77; 2048]);
    // SAFETY: the device is done.
    unsafe { b.unmap(m) }.unwrap();
    assert_eq!(buf, vec![0x77; 100]);
    assert!(ram.dump().iter().all(|&x| x == 0), "the slot is zero again");
    assert_eq!(b.bounce_stats().zeroed_bytes, 2048);
}

#[test]
fn foreign_and_forged_handles_are_refused() {
    let ram = Ram::new(64 << 10, 4096);
    let p = Emulated::new(PAGE_4K);
    let b = bounce(&p, &ram);
    let direct = Direct::new();
    let foreign = direct.alloc_shared(64, 8, &DmaConstraints::NONE).unwrap();
    let cpu = foreign.cpu_ptr();
    let dev = foreign.device_addr();
    // SAFETY: refused before anything is touched.
    assert_eq!(
        unsafe { b.free_shared(foreign) },
        Err(DmaError::UnknownHandle)
    );
    // SAFETY: the region was handed back unchanged; free it where it came from.
    unsafe { direct.free_shared(SharedRegion::new(cpu, dev, 64, 8, 0)) }.unwrap();

    let mut buf = [0u8; 16];
    // SAFETY: `buf` outlives the mapping.
    let m = unsafe {
        b.map(
            NonNull::from(&mut buf[..]),
            Direction::FromDevice,
            &DmaConstraints::NONE,
        )
    }
    .unwrap();
    let forged = |len, cookie| {
        // SAFETY: a handle that is never used to touch memory (every call refuses it).
        unsafe { Mapping::new(m.device_addr(), m.cpu_ptr(), len, m.direction(), cookie) }
    };
    // SAFETY: refused before any copy.
    unsafe {
        assert_eq!(
            b.unmap(forged(15, m.cookie())),
            Err(DmaError::UnknownHandle)
        );
        assert_eq!(
            b.unmap(forged(16, m.cookie() + 1)),
            Err(DmaError::UnknownHandle)
        );
        assert_eq!(
            b.sync_for_cpu(&forged(15, 0), 0, 1),
            Err(DmaError::UnknownHandle)
        );
        assert!(matches!(
            b.sync_for_cpu(&m, 10, 7),
            Err(DmaError::InvalidRequest(_))
        ));
        b.unmap(m).unwrap();
    }
    assert_eq!(b.stats().unmaps, 1);
}

#[test]
fn the_pool_is_shared_once_and_recorded() {
    let ram = Ram::new(512 << 10, 64 << 10);
    let p = Emulated::new(PAGE_64K);
    // An unaligned range is aligned inward.
    // SAFETY: `ram` is ours and outlives the Bounce.
    let b = unsafe {
        Bounce::new(
            &p,
            ram.phys() + 100,
            ram.size() - 100,
            PoolConfig::default(),
        )
    }
    .unwrap();
    let r = b.region();
    assert_eq!((r.phys, r.size), (ram.phys() + (64 << 10), 448 << 10));
    assert_eq!(r.device, r.phys);
    let ev = p.log().events();
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].op, ev[0].phys, ev[0].len, ev[0].result),
        (ShareOp::Share, r.phys, r.size, Ok(()))
    );
    assert_eq!(b.pool_stats().slots, (448 << 10) / 2048);
    assert_eq!(b.platform().name(), "emulated");
    // Released: zeroed, unshared with one call.
    // SAFETY: no device uses it.
    unsafe { b.release() }.unwrap();
    let ev = p.log().events();
    assert_eq!(
        (ev[1].op, ev[1].phys, ev[1].len),
        (ShareOp::Unshare, r.phys, r.size)
    );
    assert_eq!(p.log().bytes_shared_now(), 0);

    // Not while something is mapped.
    let b = bounce(&p, &ram);
    let mut buf = [0u8; 8];
    // SAFETY: `buf` outlives the mapping.
    let m = unsafe {
        b.map(
            NonNull::from(&mut buf[..]),
            Direction::ToDevice,
            &DmaConstraints::NONE,
        )
    }
    .unwrap();
    let _leaked = m; // never unmapped: the slot stays in use
    // SAFETY: refused.
    assert_eq!(
        unsafe { b.release() },
        Err(BounceError::Busy { in_use_slots: 1 })
    );
}

#[test]
fn setup_failures_are_reported() {
    let ram = Ram::new(64 << 10, 4096);
    // Smaller than one granule once aligned.
    let p = Emulated::new(PAGE_64K);
    // SAFETY: fails before touching anything.
    let e = unsafe { Bounce::new(&p, ram.phys() + 4096, 60 << 10, PoolConfig::default()) };
    assert!(matches!(e, Err(BounceError::TooSmall { .. })));
    assert!(p.log().events().is_empty(), "nothing shared");
    // The platform refuses: reported, recorded, no pool.
    let mut a = AliasPlatform::new(0);
    a.fail = true;
    // SAFETY: as above.
    let e = unsafe { Bounce::new(&a, ram.phys(), ram.size(), PoolConfig::default()) };
    assert_eq!(
        e.unwrap_err(),
        BounceError::Share(PlatformError::Ultravisor {
            call: 0xF130,
            code: -55
        })
    );
    assert_eq!(a.log().counts().share_failures, 1);
    // A bad pool configuration is refused before anything is shared.
    let bad = PoolConfig {
        slot_size: 100,
        ..PoolConfig::default()
    };
    let p = Emulated::new(PAGE_4K);
    // SAFETY: as above.
    let e = unsafe { Bounce::new(&p, ram.phys(), ram.size(), bad) };
    assert!(matches!(e, Err(BounceError::Pool(_))));
    assert!(p.log().events().is_empty());
    assert!(!alloc::format!("{}", BounceError::Busy { in_use_slots: 1 }).is_empty());
}

#[test]
fn device_addresses_go_through_the_platform_alias() {
    const ALIAS: u64 = 1 << 52;
    let ram = Ram::new(128 << 10, 4096);
    let p = AliasPlatform::new(ALIAS);
    let b = bounce(&p, &ram);
    assert_eq!(b.region().device, ram.phys() + ALIAS);
    let dev = FakeDevice { offset: ALIAS };
    let mut buf = pattern(700, 9);
    // SAFETY: `buf` outlives the mapping.
    let m = unsafe {
        b.map(
            NonNull::from(&mut buf[..]),
            Direction::Bidirectional,
            &DmaConstraints::NONE,
        )
    }
    .unwrap();
    assert!(
        m.device_addr().as_u64() >= ALIAS,
        "the device gets the alias"
    );
    assert_eq!(dev.read(m.device_addr(), 700), pattern(700, 9));
    dev.write(m.device_addr(), b"through the alias");
    let r = b.alloc_shared(256, 256, &DmaConstraints::NONE).unwrap();
    assert!(r.device_addr().as_u64() >= ALIAS);
    r.write_u32(0, 0xfeed_f00d);
    assert_eq!(dev.read(r.device_addr(), 4), 0xfeed_f00du32.to_le_bytes());
    // A 32-bit device cannot reach an alias above 4 GiB: a permanent error.
    // SAFETY: fails; nothing kept.
    let e = unsafe {
        b.map(
            NonNull::from(&mut buf[..]),
            Direction::ToDevice,
            &DmaConstraints::DMA32,
        )
    };
    assert!(matches!(e, Err(DmaError::Unreachable { .. })));
    // SAFETY: the device is done.
    unsafe {
        b.unmap(m).unwrap();
        b.free_shared(r).unwrap();
    }
    assert_eq!(&buf[..17], b"through the alias");
}

/// The platform whose device addresses wrap around a 4 GiB window: not linear.
struct Folding(ShareLog);

impl Platform for Folding {
    fn kind(&self) -> PlatformKind {
        PlatformKind::Emulated
    }
    fn is_secure(&self) -> bool {
        true
    }
    fn granularity(&self) -> u64 {
        PAGE_4K
    }
    fn device_addr(&self, phys: u64) -> u64 {
        phys & 0xfff // every page folds onto the first one
    }
    fn log(&self) -> &ShareLog {
        &self.0
    }
    unsafe fn share_range(&self, _range: ShareRange) -> Result<(), PlatformError> {
        Ok(())
    }
    unsafe fn unshare_range(&self, _range: ShareRange) -> Result<(), PlatformError> {
        Ok(())
    }
}

#[test]
fn a_non_linear_alias_is_refused_before_sharing() {
    let ram = Ram::new(64 << 10, 4096);
    let p = Folding(ShareLog::new());
    // SAFETY: fails before touching anything.
    let e = unsafe { Bounce::new(&p, ram.phys(), ram.size(), PoolConfig::default()) };
    assert!(matches!(e, Err(BounceError::NonLinearAlias { .. })));
    assert_eq!(p.log().counts().shares, 0);
}

#[test]
fn works_on_a_non_secure_platform_too() {
    // A forced bounce path on an ordinary guest: sharing is a recorded no-op.
    let ram = Ram::new(64 << 10, 4096);
    let p = NonePlatform::new();
    let b = bounce(&p, &ram);
    let mut buf = pattern(64, 4);
    // SAFETY: `buf` outlives the mapping.
    let m = unsafe {
        b.map(
            NonNull::from(&mut buf[..]),
            Direction::ToDevice,
            &DmaConstraints::NONE,
        )
    }
    .unwrap();
    assert_eq!(DEV.read(m.device_addr(), 64), pattern(64, 4));
    // SAFETY: done.
    unsafe { b.unmap(m) }.unwrap();
    assert_eq!(p.log().counts().shares, 1);
}

#[test]
fn placement() {
    let mut m = MemoryMap::new();
    m.add(0, 512 << 20, RegionKind::Ram, "ram");
    m.add(0, 0x10_0000, RegionKind::Reserved, "low");
    m.add(0x20_0000, 64 << 20, RegionKind::Reserved, "heap");
    m.add((512 << 20) - 0x1000, 0x1000, RegionKind::Reserved, "fdt");
    m.add(0x1_0000_0000, 1 << 30, RegionKind::Ram, "high");
    // Highest 2 MiB-aligned fit below 4 GiB, clear of the fdt at the top.
    assert_eq!(
        place(&m, 4 << 20, 2 << 20, 1 << 32),
        Some((512 << 20) - (6 << 20))
    );
    // Without a limit, high memory wins.
    assert_eq!(
        place(&m, 4 << 20, 2 << 20, u64::MAX),
        Some(0x1_0000_0000 + (1 << 30) - (4 << 20))
    );
    // Too big for any piece below the limit.
    assert_eq!(place(&m, 600 << 20, 2 << 20, 1 << 32), None);
    // A small limit: the piece between "low" and "heap".
    assert_eq!(place(&m, 0x10_0000, 64 << 10, 0x20_0000), Some(0x10_0000));
    assert_eq!(place(&m, 0, 4096, 1 << 32), None);
    assert_eq!(place(&m, 4096, 3, 1 << 32), None);
}

/// The wide copy and zeroing helpers, at every slot-side and private-side misalignment and at
/// lengths around the unrolled step: exactly `len` bytes are copied or zeroed, nothing around
/// them is touched.
#[test]
fn copy_and_zero_helpers_are_exact_at_any_alignment() {
    const GUARD: usize = 16;
    let lens = [0, 1, 7, 8, 9, 63, 64, 65, 127, 128, 129, 200, 2048, 2049];
    for &len in &lens {
        for so in 0..8 {
            for po in 0..8 {
                let src = pattern(len + 2 * GUARD, (len + so * 8 + po) as u8);
                let mut slot = vec![0xa5u8; len + 2 * GUARD];
                let mut back = vec![0x5au8; len + 2 * GUARD];
                // SAFETY: every range lies inside its vector (offsets < GUARD).
                unsafe {
                    copy_to_shared(slot.as_mut_ptr().add(so), src.as_ptr().add(po), len);
                    copy_from_shared(back.as_mut_ptr().add(po), slot.as_ptr().add(so), len);
                }
                assert_eq!(
                    &slot[so..so + len],
                    &src[po..po + len],
                    "to {len} {so} {po}"
                );
                assert!(
                    slot[..so]
                        .iter()
                        .chain(&slot[so + len..])
                        .all(|&b| b == 0xa5)
                );
                assert_eq!(
                    &back[po..po + len],
                    &src[po..po + len],
                    "from {len} {so} {po}"
                );
                assert!(
                    back[..po]
                        .iter()
                        .chain(&back[po + len..])
                        .all(|&b| b == 0x5a)
                );
                // The fused copy out and zeroing: the same bytes back, the slot range zero.
                let mut moved = vec![0x5au8; len + 2 * GUARD];
                let mut slot2 = slot.clone();
                // SAFETY: inside the vectors.
                unsafe {
                    move_from_shared(moved.as_mut_ptr().add(po), slot2.as_mut_ptr().add(so), len)
                };
                assert_eq!(moved, back, "move {len} {so} {po}");
                assert!(
                    slot2[so..so + len].iter().all(|&b| b == 0),
                    "move zero {len} {so}"
                );
                assert!(
                    slot2[..so]
                        .iter()
                        .chain(&slot2[so + len..])
                        .all(|&b| b == 0xa5)
                );
                // SAFETY: inside the vector.
                unsafe { zero_shared(slot.as_mut_ptr().add(so), len) };
                assert!(
                    slot[so..so + len].iter().all(|&b| b == 0),
                    "zero {len} {so}"
                );
                assert!(
                    slot[..so]
                        .iter()
                        .chain(&slot[so + len..])
                        .all(|&b| b == 0xa5)
                );
            }
        }
    }
}
