use super::*;
use crate::dma::Direct;
use crate::dma::bounce::Bounce;
use crate::platform::Emulated;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::vec;
use std::vec::Vec;

/// What the fake IOMMU holds, shared with the test so that it can look inside.
#[derive(Default)]
struct Table {
    /// IOVA page index -> (physical page, permission bits).
    entries: BTreeMap<u64, (u64, u64)>,
    map: CallCount,
    unmap: CallCount,
    /// Fail the call with this index (0-based, counting every call) with this code.
    fail_at: Option<(u64, i64)>,
    /// Fail every call from now on with this code.
    fail_all: Option<i64>,
}

impl Table {
    fn calls(&self) -> u64 {
        self.map.calls + self.unmap.calls
    }
}

/// An IOMMU with `page_shift` pages over `[base, base + size)`, strict about what it is given.
struct FakeIommu {
    table: Arc<Mutex<Table>>,
    page_shift: u32,
    base: u64,
    size: u64,
}

impl FakeIommu {
    fn new(base: u64, size: u64, page_shift: u32) -> (Box<Self>, Arc<Mutex<Table>>) {
        let table = Arc::new(Mutex::new(Table {
            map: CallCount::named("MAP"),
            unmap: CallCount::named("UNMAP"),
            ..Table::default()
        }));
        let f = FakeIommu {
            table: table.clone(),
            page_shift,
            base,
            size,
        };
        (Box::new(f), table)
    }

    fn check(&self, iova: u64, pages: u64) {
        let page = 1u64 << self.page_shift;
        assert_eq!(iova % page, 0, "unaligned IOVA {iova:#x}");
        assert!(pages > 0, "empty run");
        assert!(
            iova >= self.base && iova - self.base + pages * page <= self.size,
            "run {iova:#x}+{pages} pages outside the aperture"
        );
    }

    fn fail(t: &mut Table) -> Result<(), DmaError> {
        let index = t.calls() - 1;
        if let Some(code) = t.fail_all {
            return Err(DmaError::Platform { code });
        }
        match t.fail_at {
            Some((i, code)) if i == index => Err(DmaError::Platform { code }),
            _ => Ok(()),
        }
    }
}

impl IommuBackend for FakeIommu {
    fn page_shift(&self) -> u32 {
        self.page_shift
    }

    fn aperture(&self) -> (u64, u64) {
        (self.base, self.size)
    }

    fn map(&mut self, iova: u64, phys: u64, pages: u64, perm: Perm) -> Result<(), DmaError> {
        self.check(iova, pages);
        let page = 1u64 << self.page_shift;
        assert_eq!(phys % page, 0, "unaligned physical page {phys:#x}");
        assert_ne!(perm.bits(), 0, "a mapping nobody may use");
        let mut t = self.table.lock().unwrap();
        t.map.add(pages);
        Self::fail(&mut t)?;
        for i in 0..pages {
            let old = t.entries.insert(
                (iova >> self.page_shift) + i,
                (phys + i * page, perm.bits()),
            );
            assert!(
                old.is_none(),
                "IOVA page {:#x} mapped twice",
                iova + i * page
            );
        }
        Ok(())
    }

    fn unmap(&mut self, iova: u64, pages: u64) -> Result<(), DmaError> {
        self.check(iova, pages);
        let mut t = self.table.lock().unwrap();
        t.unmap.add(pages);
        Self::fail(&mut t)?;
        for i in 0..pages {
            let old = t.entries.remove(&((iova >> self.page_shift) + i));
            assert!(old.is_some(), "unmapping IOVA page that is not mapped");
        }
        Ok(())
    }

    fn calls(&self) -> [CallCount; MAX_CALL_KINDS] {
        let t = self.table.lock().unwrap();
        [t.map, t.unmap, CallCount::default()]
    }
}

/// Where the fake IOMMU sends a device access of `len` bytes at `addr` that needs `perm`:
/// the physical address, or `None` (a fault).
fn translate(t: &Table, shift: u32, addr: u64, len: usize, perm: u64) -> Option<u64> {
    let page = 1u64 << shift;
    let mut first = None;
    for a in (addr & !(page - 1)..addr + len as u64).step_by(page as usize) {
        let (phys, p) = *t.entries.get(&(a >> shift))?;
        if p & perm != perm {
            return None;
        }
        let want = first.map(|f: u64| f + (a - (addr & !(page - 1))));
        if want.is_some_and(|w| w != phys) {
            return None; // not contiguous: fine for an IOMMU, but these buffers are
        }
        first.get_or_insert(phys);
    }
    Some(first? + (addr & (page - 1)))
}

fn info() -> DomainInfo {
    DomainInfo {
        backend: "fake",
        mode: "dynamic",
        mapping: "per-map",
        ..DomainInfo::default()
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn dynamic_map_translates_with_exact_permissions() {
    let (b, table) = FakeIommu::new(0x1000_0000, 1 << 30, 12);
    let dma = IommuDma::dynamic(b, info()).unwrap();
    assert_eq!(dma.name(), "iommu");
    assert_eq!(dma.info().page_size, 4096);
    let mut buf = vec![0u8; 10_000];
    let off = 100;
    let slice = NonNull::from(&mut buf[off..off + 5000]);
    // SAFETY: `buf` outlives the mapping and is not touched until unmap.
    let m = unsafe { dma.map(slice, Direction::FromDevice, &DmaConstraints::NONE) }.unwrap();
    let phys = buf[off..].as_ptr() as u64;
    let addr = m.device_addr().as_u64();
    assert_eq!(addr & 0xfff, phys & 0xfff, "the offset in the page is kept");
    assert!(addr >= 0x1000_0000);
    {
        let t = table.lock().unwrap();
        assert_eq!(translate(&t, 12, addr, 5000, 2), Some(phys));
        assert_eq!(translate(&t, 12, addr, 5000, 1), None, "write-only");
        let pages = ((phys & 0xfff) + 5000).div_ceil(4096);
        assert_eq!(t.entries.len() as u64, pages);
    }
    let s = dma.iommu_stats();
    assert_eq!(
        (s.maps, s.unmaps, s.calls, s.pages_peak),
        (1, 0, 1, s.pages)
    );
    // SAFETY: no device ever used it.
    unsafe { dma.unmap(m) }.unwrap();
    assert!(table.lock().unwrap().entries.is_empty());
    let s = dma.stats();
    assert_eq!(
        (
            s.maps,
            s.unmaps,
            s.iommu_maps,
            s.iommu_unmaps,
            s.iommu_calls,
            s.iommu_pages
        ),
        (1, 1, 1, 1, 2, 0)
    );
    assert!(s.iommu_pages_peak >= 2);
    let k = dma.iommu_stats().kinds;
    assert_eq!(
        (k[0].name, k[0].calls, k[1].name, k[1].calls),
        ("MAP", 1, "UNMAP", 1)
    );
}

#[test]
fn shared_regions_are_whole_zeroed_pages_mapped_read_write() {
    let (b, table) = FakeIommu::new(0, 1 << 24, 12);
    let dma = IommuDma::dynamic(b, info()).unwrap();
    for &(size, align) in &[
        (1usize, 1usize),
        (6, 2),
        (5000, 64),
        (4096, 4096),
        (100, 16384),
    ] {
        let r = dma
            .alloc_shared(size, align, &DmaConstraints::NONE)
            .unwrap();
        assert_eq!(r.len(), size);
        assert_eq!(r.device_addr().as_u64() % align.max(4096) as u64, 0);
        assert!(
            r.device_addr().as_u64() >= 4096,
            "IOVA 0 is never handed out"
        );
        assert!((0..size).all(|i| r.read_u8(i) == 0));
        let phys = r.cpu_ptr().as_ptr() as u64;
        assert_eq!(phys % 4096, 0, "whole pages");
        let t = table.lock().unwrap();
        assert_eq!(
            translate(&t, 12, r.device_addr().as_u64(), size, 3),
            Some(phys)
        );
        drop(t);
        // SAFETY: no device ever used it.
        unsafe { dma.free_shared(r) }.unwrap();
    }
    assert!(table.lock().unwrap().entries.is_empty());
    let s = dma.stats();
    assert_eq!((s.shared_allocs, s.shared_frees, s.shared_bytes), (5, 5, 0));
    assert_eq!((s.iommu_maps, s.iommu_unmaps, s.iommu_pages), (5, 5, 0));
}

/// Random map/unmap sequences with random constraints: device addresses always satisfy them,
/// translate to the buffer, never overlap (the fake panics on a page mapped twice), exhaustion
/// is transient, and everything goes back to zero.
#[test]
fn random_sequences_keep_the_books() {
    let mut rng = Rng(0x10_3e55_1234_5678);
    let mut oks = 0;
    let mut waits = 0;
    let mut permanent = 0;
    for seq in 0..60 {
        let shift = [12, 12, 16][seq % 3];
        let page = 1u64 << shift;
        // A small aperture so that exhaustion happens.
        let pages = 8 + rng.below(120);
        let base = rng.below(1 << 20) * page;
        let (b, table) = FakeIommu::new(base, pages * page, shift);
        let dma = IommuDma::dynamic(b, info()).unwrap();
        let mut mem = vec![0u8; 1 << 20];
        let mut live: Vec<(Mapping, usize)> = Vec::new();
        for _ in 0..200 {
            if !live.is_empty() && rng.below(10) < 4 {
                let (m, _) = live.swap_remove(rng.below(live.len() as u64) as usize);
                // SAFETY: no device used it.
                unsafe { dma.unmap(m) }.unwrap();
                continue;
            }
            let max = if rng.below(4) == 0 { 100_000 } else { 3000 };
            let len = 1 + rng.below(max) as usize;
            let start = rng.below((mem.len() - len) as u64) as usize;
            let align = if rng.below(4) == 0 {
                1u64 << rng.below(14)
            } else {
                1
            };
            let c = DmaConstraints {
                max_addr: if rng.below(8) == 0 {
                    base + rng.below(pages * page)
                } else {
                    u64::MAX
                },
                align,
                boundary: if rng.below(6) == 0 {
                    1 << (12 + rng.below(8))
                } else {
                    0
                },
                max_len: usize::MAX,
            };
            let dir = [
                Direction::ToDevice,
                Direction::FromDevice,
                Direction::Bidirectional,
            ][rng.below(3) as usize];
            let slice = NonNull::from(&mut mem[start..start + len]);
            // SAFETY: `mem` outlives every mapping (all unmapped below); the test never touches
            // it while mapped.
            match unsafe { dma.map(slice, dir, &c) } {
                Ok(m) => {
                    let addr = m.device_addr();
                    c.check(addr, len).unwrap();
                    let t = table.lock().unwrap();
                    let phys = mem[start..].as_ptr() as u64;
                    let need = Perm::of(dir).bits();
                    assert_eq!(translate(&t, shift, addr.as_u64(), len, need), Some(phys));
                    drop(t);
                    live.push((m, len));
                    oks += 1;
                }
                Err(DmaError::Exhausted { .. }) => {
                    assert!(!live.is_empty(), "exhausted with nothing mapped, seq {seq}");
                    waits += 1;
                }
                Err(e) => {
                    assert!(
                        matches!(
                            e,
                            DmaError::Misaligned { .. }
                                | DmaError::Unreachable { .. }
                                | DmaError::TooLarge { .. }
                                | DmaError::InvalidRequest(_)
                        ),
                        "{e:?}"
                    );
                    permanent += 1;
                }
            }
            let s = dma.iommu_stats();
            assert_eq!(s.pages, table.lock().unwrap().entries.len() as u64);
        }
        for (m, _) in live.drain(..) {
            // SAFETY: no device used them.
            unsafe { dma.unmap(m) }.unwrap();
        }
        let s = dma.stats();
        assert_eq!(s.maps, s.unmaps, "seq {seq}");
        assert_eq!(s.iommu_maps, s.iommu_unmaps);
        assert_eq!(s.iommu_pages, 0);
        assert!(table.lock().unwrap().entries.is_empty());
        assert!(dma.state.lock().iova.as_ref().unwrap().is_empty());
        let t = table.lock().unwrap();
        assert_eq!(s.iommu_calls, t.calls());
    }
    assert!(
        oks > 3000 && waits > 100 && permanent > 200,
        "{oks} {waits} {permanent}"
    );
}

#[test]
fn backend_errors_are_platform_errors_and_leave_nothing_behind() {
    let (b, table) = FakeIommu::new(0, 1 << 20, 12);
    let dma = IommuDma::dynamic(b, info()).unwrap();
    let mut buf = vec![0u8; 8192];
    table.lock().unwrap().fail_at = Some((0, -4));
    let slice = NonNull::from(&mut buf[..]);
    // SAFETY: the mapping fails; nothing is kept.
    let r = unsafe { dma.map(slice, Direction::ToDevice, &DmaConstraints::NONE) };
    assert_eq!(r.unwrap_err(), DmaError::Platform { code: -4 });
    assert_eq!(dma.stats().map_failures, 1);
    assert_eq!(dma.iommu_stats().failures, 1);
    // The IOVA pages came back: the whole aperture maps again.
    let mut big = vec![0u8; (1 << 20) - 4096];
    let page_start = (4096 - (big.as_ptr() as usize % 4096)) % 4096;
    let slice = NonNull::from(&mut big[page_start..page_start + (1 << 20) - 8192]);
    // SAFETY: unmapped right below.
    let m = unsafe { dma.map(slice, Direction::ToDevice, &DmaConstraints::NONE) }.unwrap();
    // An unmap the IOMMU refuses: an error, the mapping's pages stay accounted for.
    table.lock().unwrap().fail_all = Some(-1);
    // SAFETY: no device used it.
    let e = unsafe { dma.unmap(m) }.unwrap_err();
    assert_eq!(e, DmaError::Platform { code: -1 });
    assert!(dma.iommu_stats().pages > 0);
    assert!(!e.is_transient());
    // alloc_shared too: an error, no leak of the heap or of IOVA.
    let r = dma.alloc_shared(64, 8, &DmaConstraints::NONE);
    assert!(matches!(
        r,
        Err(DmaError::Platform { code: -1 }) | Err(DmaError::Exhausted { .. })
    ));
    assert_eq!(dma.stats().shared_failures, 1);
}

#[test]
fn foreign_and_double_releases_are_refused() {
    let (b, _table) = FakeIommu::new(0, 1 << 20, 12);
    let dma = IommuDma::dynamic(b, info()).unwrap();
    let mut buf = [0u8; 64];
    let slice = NonNull::from(&mut buf[..]);
    // SAFETY: unmapped below.
    let m = unsafe { dma.map(slice, Direction::ToDevice, &DmaConstraints::NONE) }.unwrap();
    // SAFETY: a forged handle: same buffer, another address; nothing is unmapped.
    let forged = unsafe {
        Mapping::new(
            DeviceAddr::new(m.device_addr().as_u64() + 4096),
            m.cpu_ptr(),
            m.len(),
            m.direction(),
            m.cookie(),
        )
    };
    // SAFETY: as above.
    assert_eq!(unsafe { dma.unmap(forged) }, Err(DmaError::UnknownHandle));
    // SAFETY: a copy of the real handle, released once.
    let copy = unsafe {
        Mapping::new(
            m.device_addr(),
            m.cpu_ptr(),
            m.len(),
            m.direction(),
            m.cookie(),
        )
    };
    // SAFETY: no device used it.
    unsafe { dma.unmap(m) }.unwrap();
    // SAFETY: the same mapping a second time: refused.
    assert_eq!(unsafe { dma.unmap(copy) }, Err(DmaError::UnknownHandle));
}

#[test]
fn alignment_beyond_the_page_offset_is_refused() {
    let (b, _t) = FakeIommu::new(0, 1 << 20, 12);
    let dma = IommuDma::dynamic(b, info()).unwrap();
    let mut buf = vec![0u8; 8192];
    let odd = (buf.as_ptr() as usize % 16 + 1) % 16 + 16; // an address that is not 16-aligned
    let slice = NonNull::from(&mut buf[odd..odd + 100]);
    let c = DmaConstraints::NONE.with_align(16);
    if !(buf[odd..].as_ptr() as usize).is_multiple_of(16) {
        // SAFETY: fails; nothing kept.
        let r = unsafe { dma.map(slice, Direction::ToDevice, &c) };
        assert!(matches!(r, Err(DmaError::Misaligned { align: 16, .. })));
    }
    // Larger than a page: the IOVA gets the alignment, a page-aligned buffer keeps it.
    let start = (4096 - buf.as_ptr() as usize % 4096) % 4096;
    let slice = NonNull::from(&mut buf[start..start + 100]);
    let c = DmaConstraints::NONE.with_align(1 << 16);
    // SAFETY: unmapped below.
    let m = unsafe { dma.map(slice, Direction::ToDevice, &c) }.unwrap();
    assert_eq!(m.device_addr().as_u64() % (1 << 16), 0);
    // SAFETY: no device used it.
    unsafe { dma.unmap(m) }.unwrap();
}

#[test]
fn iova_space_is_bounded() {
    // A window claiming 2^60 bytes: only IOVA_PAGES_MAX pages of it are managed.
    let (b, _t) = FakeIommu::new(1 << 59, 1 << 60, 12);
    let dma = IommuDma::dynamic(b, info()).unwrap();
    assert_eq!(dma.iova_capacity(), IOVA_PAGES_MAX << 12);
    assert!(IovaSpace::new(0, 100, 12).is_err(), "smaller than a page");
    assert!(
        IovaSpace::new(0x800, 1 << 20, 12).is_err(),
        "unaligned base"
    );
    assert!(IovaSpace::new(0, 1 << 20, 3).is_err(), "silly page size");
    let mut s = IovaSpace::new(0, 1 << 20, 12).unwrap();
    assert!(matches!(
        s.alloc(4096, 10, &DmaConstraints::NONE),
        Err(DmaError::InvalidRequest(_))
    ));
    assert!(matches!(
        s.alloc(0, 0, &DmaConstraints::NONE),
        Err(DmaError::InvalidRequest(_))
    ));
    let short = DmaConstraints {
        max_len: 8,
        ..DmaConstraints::NONE
    };
    assert!(matches!(
        s.alloc(0, 9, &short),
        Err(DmaError::TooLarge { .. })
    ));
    assert!(matches!(
        s.alloc(0, 2 << 20, &DmaConstraints::NONE),
        Err(DmaError::TooLarge { .. })
    ));
}

#[test]
fn window_over_direct_shifts_addresses_and_maps_nothing_per_request() {
    let (b, table) = FakeIommu::new(1 << 59, 1 << 30, 24);
    let direct = Direct::new();
    let dma = IommuDma::window(
        "iommu",
        b,
        &direct,
        1 << 59,
        DomainInfo {
            mode: "ddw",
            mapping: "ram",
            ..info()
        },
    );
    dma.map_fixed(1 << 59, 0, 1 << 30, Perm::RW).unwrap();
    assert_eq!(table.lock().unwrap().entries.len(), 64);
    assert!(
        dma.map_fixed(1 << 59, 4096, 1 << 24, Perm::RW).is_err(),
        "unaligned"
    );
    let calls = dma.iommu_stats().calls;
    let mut buf = vec![5u8; 300];
    let slice = NonNull::from(&mut buf[..]);
    // SAFETY: unmapped below.
    let m = unsafe { dma.map(slice, Direction::Bidirectional, &DmaConstraints::NONE) }.unwrap();
    assert_eq!(m.device_addr().as_u64(), (1 << 59) + buf.as_ptr() as u64);
    // SAFETY: no device used it.
    unsafe {
        dma.sync_for_cpu(&m, 0, 300).unwrap();
        dma.sync_for_device(&m, 10, 20).unwrap();
        assert!(dma.sync_for_cpu(&m, 290, 20).is_err());
        dma.unmap(m).unwrap();
    }
    let r = dma.alloc_shared(100, 64, &DmaConstraints::NONE).unwrap();
    assert_eq!(
        r.device_addr().as_u64(),
        (1 << 59) + r.cpu_ptr().as_ptr() as u64
    );
    // SAFETY: no device used it.
    unsafe { dma.free_shared(r) }.unwrap();
    let s = dma.stats();
    assert_eq!(
        (s.maps, s.unmaps, s.shared_allocs, s.shared_frees),
        (1, 1, 1, 1)
    );
    assert_eq!(dma.iommu_stats().calls, calls, "no IOMMU work per request");
    assert_eq!((s.iommu_maps, s.iommu_pages), (1, 64));
    // A constraint the shifted address cannot meet: refused, nothing kept.
    let c = DmaConstraints::DMA32;
    let slice = NonNull::from(&mut buf[..]);
    // SAFETY: fails.
    let r = unsafe { dma.map(slice, Direction::ToDevice, &c) };
    assert!(matches!(r, Err(DmaError::Unreachable { .. })));
    assert_eq!(direct.stats().maps, direct.stats().unmaps);
    assert!(matches!(
        dma.alloc_shared(64, 8, &c),
        Err(DmaError::Unreachable { .. })
    ));
    assert_eq!(direct.stats().shared_bytes, 0);
}

/// `iommu+bounce`: the pool is mapped once; a device that goes through the fake IOMMU reaches
/// the bounce slots at their IOVAs, and the data comes back to the private buffer.
#[test]
fn window_over_the_bounce_pool() {
    let layout = std::alloc::Layout::from_size_align(1 << 20, 1 << 16).unwrap();
    // SAFETY: non-zero size; freed at the end.
    let ram = unsafe { std::alloc::alloc_zeroed(layout) };
    let phys = ram as u64;
    let platform = Emulated::new(1 << 16);
    // SAFETY: the memory is ours for the test, identity "mapped".
    let bounce = unsafe { Bounce::new(&platform, phys, 1 << 20, Default::default()) }.unwrap();
    let window_base = 0x1_0000_0000;
    let (b, table) = FakeIommu::new(window_base, 1 << 20, 16);
    let offset = window_base.wrapping_sub(phys);
    let dma = IommuDma::window("iommu+bounce", b, &bounce, offset, info());
    dma.map_fixed(window_base, phys, 1 << 20, Perm::RW).unwrap();
    assert_eq!(dma.name(), "iommu+bounce");
    let mut buf = vec![0u8; 5000];
    let slice = NonNull::from(&mut buf[..]);
    // SAFETY: unmapped below; the test touches the buffer only through the device.
    let m = unsafe { dma.map(slice, Direction::FromDevice, &DmaConstraints::NONE) }.unwrap();
    let addr = m.device_addr().as_u64();
    assert!((window_base..window_base + (1 << 20)).contains(&addr));
    let target = translate(&table.lock().unwrap(), 16, addr, 5000, 2).unwrap();
    assert!(
        (phys..phys + (1 << 20)).contains(&target),
        "the device lands in the pool"
    );
    // The device writes through the IOMMU.
    for i in 0..5000u64 {
        // SAFETY: inside the pool slots of this mapping.
        unsafe { (target as *mut u8).add(i as usize).write_volatile(i as u8) };
    }
    // SAFETY: the "device" is done.
    unsafe { dma.unmap(m) }.unwrap();
    assert!(buf.iter().enumerate().all(|(i, &b)| b == i as u8));
    let s = bounce.bounce_stats();
    assert_eq!((s.dma.maps, s.dma.unmaps, s.pool.live_bytes), (1, 1, 0));
    // Rings in the pool too.
    let r = dma.alloc_shared(256, 4096, &DmaConstraints::NONE).unwrap();
    assert!((window_base..window_base + (1 << 20)).contains(&r.device_addr().as_u64()));
    // SAFETY: no device used it.
    unsafe { dma.free_shared(r) }.unwrap();
    assert_eq!(bounce.pool_stats().live_bytes, 0);
    drop(dma);
    drop(bounce);
    // SAFETY: allocated above with this layout; nothing refers to it any more.
    unsafe { std::alloc::dealloc(ram, layout) };
}

struct Setup {
    runs: Arc<Mutex<u32>>,
    fail: Option<DmaError>,
}

impl<'a> DomainSetup<'a> for Setup {
    fn setup(self: Box<Self>) -> Result<IommuDma<'a>, DmaError> {
        *self.runs.lock().unwrap() += 1;
        if let Some(e) = self.fail {
            return Err(e);
        }
        let (b, _) = FakeIommu::new(0, 1 << 20, 12);
        IommuDma::dynamic(b, info())
    }
}

#[test]
fn lazy_domains_set_up_once_and_remember_failure() {
    let runs = Arc::new(Mutex::new(0));
    let d = LazyDomain::new(
        "/pci@0".into(),
        Box::new(Setup {
            runs: runs.clone(),
            fail: None,
        }),
    );
    assert!(d.state().is_none(), "nothing happens until a device asks");
    assert_eq!(*runs.lock().unwrap(), 0);
    assert!(d.get().is_ok());
    assert!(d.get().is_ok());
    assert_eq!(*runs.lock().unwrap(), 1);
    assert!(d.state().unwrap().is_ok());
    let bad = LazyDomain::new(
        "/pci@1".into(),
        Box::new(Setup {
            runs: runs.clone(),
            fail: Some(DmaError::Platform { code: -3 }),
        }),
    );
    assert_eq!(bad.get().unwrap_err(), DmaError::Platform { code: -3 });
    assert_eq!(bad.get().unwrap_err(), DmaError::Platform { code: -3 });
    assert_eq!(*runs.lock().unwrap(), 2, "a failed setup is not retried");
    let never = LazyDomain::failed(
        "/pci@2".into(),
        DmaError::InvalidRequest("window of size 0"),
    );
    assert_eq!(
        never.state().unwrap().unwrap_err(),
        DmaError::InvalidRequest("window of size 0")
    );
}

#[test]
fn epochs_and_deltas() {
    let (b, _t) = FakeIommu::new(0, 1 << 20, 12);
    let dma = IommuDma::dynamic(b, info()).unwrap();
    let mut a = vec![0u8; 40_000];
    let slice = NonNull::from(&mut a[..]);
    // SAFETY: unmapped below.
    let m = unsafe { dma.map(slice, Direction::ToDevice, &DmaConstraints::NONE) }.unwrap();
    // SAFETY: no device used it.
    unsafe { dma.unmap(m) }.unwrap();
    let big_peak = dma.iommu_stats().pages_peak;
    assert!(big_peak >= 10);
    dma.begin_epoch();
    let start = dma.iommu_stats();
    assert_eq!(start.pages_peak, 0);
    let mut b2 = [0u8; 100];
    let slice = NonNull::from(&mut b2[..]);
    // SAFETY: unmapped below.
    let m = unsafe { dma.map(slice, Direction::ToDevice, &DmaConstraints::NONE) }.unwrap();
    // SAFETY: no device used it.
    unsafe { dma.unmap(m) }.unwrap();
    let d = dma.iommu_stats().since(&start);
    assert_eq!((d.maps, d.unmaps, d.calls, d.pages), (1, 1, 2, 0));
    assert!(d.pages_peak <= 2);
    assert_eq!((d.kinds[0].calls, d.kinds[1].calls), (1, 1));
    assert_eq!(
        dma.stats().iommu_pages_peak,
        big_peak,
        "the run's peak stays"
    );
    assert_eq!(Perm::of(Direction::Bidirectional), Perm::RW);
}

/// `sg.debug.unmap_early=1` (test only): a streaming mapping is gone from the IOMMU as soon as
/// it is made, with the call counted; shared regions stay mapped.
#[test]
fn debug_unmap_early_removes_streaming_mappings_at_once() {
    let (b, table) = FakeIommu::new(0x1000_0000, 1 << 30, 12);
    let mut dma = IommuDma::dynamic(b, info()).unwrap();
    dma.set_debug_unmap_early(true);
    let r = dma.alloc_shared(100, 16, &DmaConstraints::NONE).unwrap();
    let mut buf = vec![0u8; 5000];
    let slice = NonNull::from(&mut buf[..]);
    // SAFETY: `buf` outlives the mapping; the mapping is never released (the fake IOMMU refuses
    // to unmap twice; a real one does not mind).
    let m = unsafe { dma.map(slice, Direction::ToDevice, &DmaConstraints::NONE) }.unwrap();
    let t = table.lock().unwrap();
    assert_eq!(
        translate(&t, 12, m.device_addr().as_u64(), 5000, 1),
        None,
        "the device finds the buffer unmapped"
    );
    assert!(translate(&t, 12, r.device_addr().as_u64(), 100, 3).is_some());
    assert_eq!((t.map.calls, t.unmap.calls), (2, 1));
    drop(t);
    assert_eq!(dma.iommu_stats().calls, 3);
    // `m` is never unmapped: its IOVA run stays allocated.
    let _ = m;
}

#[test]
fn identity_runs_are_whole_pages_of_ram_clear_of_reserved_ranges() {
    const MSI: ReservedIova = (0xfee0_0000, 0xfeef_ffff, "msi");
    let q35 = [(0, 0x9_fc00), (0x10_0000, 0x2000_0000)];
    let all = (0, u64::MAX);
    // Page 0 and the partial page at 0x9f000 left out.
    assert_eq!(
        identity_runs(&q35, 4096, all, &[MSI]),
        Ok(vec![(0x1000, 0x9_e000), (0x10_0000, 0x1ff0_0000)])
    );
    // 64 KiB pages: only whole ones.
    assert_eq!(
        identity_runs(&q35, 1 << 16, all, &[MSI]),
        Ok(vec![(0x1_0000, 0x8_0000), (0x10_0000, 0x1ff0_0000)])
    );
    // RAM that meets a reserved range fails with its reason, never quietly shrinks.
    let e = identity_runs(&[(0x10_0000, 0x1_0000_0000)], 4096, all, &[MSI]);
    assert_eq!(e, Err(DmaError::InvalidRequest("msi")));
    let e = identity_runs(&q35, 4096, all, &[MSI, (0x9_e000, 0x9_efff, "last page")]);
    assert_eq!(e, Err(DmaError::InvalidRequest("last page")));
    // ... unless it only meets the part of a page that is not RAM anyway, or is inverted.
    assert!(identity_runs(&q35, 4096, all, &[(0x9_f000, 0x9_ffff, "x"), (9, 1, "y")]).is_ok());
    // Beyond what the IOMMU translates.
    let beyond = Err(DmaError::InvalidRequest(STATIC_BEYOND_INPUT));
    assert_eq!(identity_runs(&q35, 4096, (0, 0xfff_ffff), &[]), beyond);
    assert_eq!(identity_runs(&q35, 4096, (0x2000, u64::MAX), &[]), beyond);
    assert!(
        identity_runs(&q35, 4096, (0, 0x1fff_ffff), &[]).is_ok(),
        "the last byte fits"
    );
    // Nothing to map.
    assert!(identity_runs(&[(0, 0x1800)], 4096, all, &[]).is_err());
    assert!(identity_runs(&[], 4096, all, &[]).is_err());
    assert!(identity_runs(&[(u64::MAX - 10, u64::MAX)], 4096, all, &[]).is_err());
}

#[test]
fn x86_map_modes_and_their_reasons() {
    use IommuMap::{Dynamic, Static};
    assert_eq!(x86_map_mode(None, false).0, Dynamic, "dynamic by default");
    assert!(x86_map_mode(None, false).1.starts_with("default"));
    assert_eq!(
        x86_map_mode(Some(Dynamic), false),
        (Dynamic, "sg.iommu.map=dynamic")
    );
    assert_eq!(
        x86_map_mode(Some(Static), false),
        (Static, "sg.iommu.map=static")
    );
    // A secure guest maps the pool whatever the option says, and says so.
    for m in [None, Some(Dynamic), Some(Static)] {
        assert_eq!(x86_map_mode(m, true).0, Dynamic);
    }
    assert!(x86_map_mode(Some(Static), true).1.contains("no effect"));
    assert_eq!(IommuMap::parse("static"), Some(Static));
    assert_eq!(IommuMap::parse("ddw"), None);
    assert_eq!(Static.as_str(), "static");
}

#[test]
fn identity_dma_maps_each_run_once_and_nothing_per_request() {
    let (b, table) = FakeIommu::new(0, 1 << 40, 12);
    let direct = Direct::new();
    let runs = [(0x1000, 0x9_e000), (0x10_0000, 0x100_0000)];
    let dma = identity_dma(b, info(), &direct, &runs).unwrap();
    let i = dma.info();
    assert_eq!(
        (i.mode, i.mapping, i.window_base, i.window_size),
        ("static", "ram", 0, 0x110_0000)
    );
    {
        let t = table.lock().unwrap();
        assert_eq!((t.map.calls, t.map.entries), (2, 0x9e + 0x1000));
        assert_eq!(
            t.entries.get(&1),
            Some(&(0x1000, 3)),
            "identity, read-write"
        );
        assert_eq!(t.entries.get(&0x10ff), Some(&(0x10f_f000, 3)));
        assert!(!t.entries.contains_key(&0) && !t.entries.contains_key(&0x9f));
    }
    let calls = dma.iommu_stats().calls;
    crate::dma::testutil::assert_maps_at_its_address(&dma, 5000, Direction::ToDevice);
    assert_eq!(dma.iommu_stats().calls, calls, "no IOMMU work per request");
    // A run the IOMMU refuses fails the setup.
    let (b, table) = FakeIommu::new(0, 1 << 40, 12);
    table.lock().unwrap().fail_at = Some((1, -4));
    assert_eq!(
        identity_dma(b, info(), &direct, &runs).err(),
        Some(DmaError::Platform { code: -4 })
    );
}
