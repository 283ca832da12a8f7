//! The IOMMU paths: device addresses are IOVAs that an IOMMU translates, and the guest decides
//! which pages a device may reach.
//!
//! Three pieces, portable and tested against fakes:
//!
//! * [`IommuBackend`]: one translation domain of one IOMMU (a pseries PHB's TCE window, a
//!   virtio-iommu domain, a VT-d context). It maps a run of pages IOVA → physical with a
//!   permission, unmaps a run, and counts the hypercalls or IOMMU commands it issued, by kind
//!   ([`CallCount`]), so that a host-side trace can be compared with them.
//! * [`IovaSpace`]: the IOVA allocator of a domain, a bounded first-fit allocator in IOMMU pages
//!   over the domain's aperture (at most [`IOVA_PAGES_MAX`] pages of it). It honours every
//!   [`DmaConstraints`] field on the *device* address and answers [`DmaError::Exhausted`] when a
//!   request would fit the empty space but not now: the drivers' back-pressure.
//! * [`IommuDma`]: the [`Dma`] over a backend, in one of two shapes:
//!   - **dynamic** (`iommu`): `map` takes IOVA pages, maps the buffer's pages there and returns
//!     the IOVA plus the buffer's offset in its first page; `unmap` removes the entries and
//!     frees the IOVA pages; `alloc_shared` is page-rounded heap memory mapped the same way;
//!   - **window** (`iommu`, `iommu+bounce`): a static mapping made once at setup
//!     ([`IommuDma::map_fixed`]: all of RAM in a DDW window or, on x86, at IOVA = physical
//!     address ([`identity_dma`], `sg.iommu.map=static`), or only the shared bounce pool),
//!     and every request goes to an inner [`Dma`] (`Direct`, or the bounce pool) whose device
//!     address is shifted by the window's offset. No IOMMU work per request.
//!
//! [`LazyDomain`] sets a domain up the first time a device needs it, so that a run whose devices
//! never use an IOMMU never touches one; a failed setup is kept and given to every device that
//! asks, as the error of its record.
//!
//! # Why the bounce pool is mapped whole, once
//!
//! `iommu+bounce` maps the whole shared pool into the domain at setup rather than slot by slot
//! per `map`. The pool is host-visible memory already (the host can read all of it), so mapping
//! it for the device adds no exposure; what the IOMMU still guarantees is that the device reaches
//! nothing *but* the pool. Slot-by-slot mapping would only keep one device from the slots of
//! another device's requests, at two hypercalls per request; whole-pool mapping costs a few
//! hypercalls per domain at setup and none per request, as Linux's swiotlb on a secure pseries
//! guest does.
//!
//! # Counting
//!
//! [`DmaStats`] gets the IOMMU counts (`iommu_maps`, `iommu_unmaps`, `iommu_calls`,
//! `iommu_pages`, `iommu_pages_peak`); [`IommuStats`] adds the backend's counts by kind,
//! failures and exhaustion. [`IommuDma::begin_epoch`] restarts the peak, so that each device's
//! record can show its own (devices run one after another).

use alloc::alloc::{alloc_zeroed, dealloc};
use alloc::boxed::Box;
use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use super::pool::{PoolConfig, SlotPool};
use super::{
    DeviceAddr, Direction, Dma, DmaConstraints, DmaCounters, DmaError, DmaStats, Mapping,
    SharedRegion, check_sync_range,
};

/// The most IOVA pages an [`IovaSpace`] manages (256 MiB of 4 KiB pages): plenty for every
/// request in flight, while its bookkeeping stays at 264 KiB of heap whatever the window claims.
pub const IOVA_PAGES_MAX: u64 = 1 << 16;

/// The most kinds of calls a backend counts separately.
pub const MAX_CALL_KINDS: usize = 3;

/// What a device may do with a mapped page. The bits are the TCE bits (read 1, write 2) and
/// virtio-iommu's `VIRTIO_IOMMU_MAP_F_READ` / `_WRITE`; VT-d's R/W bits are the same too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perm(pub u8);

impl Perm {
    /// The device reads the memory (DMA to the device).
    pub const READ: Perm = Perm(1);
    /// The device writes the memory.
    pub const WRITE: Perm = Perm(2);
    pub const RW: Perm = Perm(3);

    /// Exactly what the direction needs: a device that only reads gets no write access.
    pub fn of(direction: Direction) -> Perm {
        match direction {
            Direction::ToDevice => Perm::READ,
            Direction::FromDevice => Perm::WRITE,
            Direction::Bidirectional => Perm::RW,
        }
    }

    pub fn bits(self) -> u64 {
        u64::from(self.0 & 3)
    }
}

/// Calls of one kind (a hypercall, an IOMMU command) and the entries they asked to write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallCount {
    /// The name the host knows it by: `H_PUT_TCE`, `H_STUFF_TCE`, `MAP`, ... (`""`: unused slot).
    pub name: &'static str,
    pub calls: u64,
    /// Page-table entries the calls asked to write (TCEs, mappings).
    pub entries: u64,
}

impl CallCount {
    pub const fn named(name: &'static str) -> Self {
        CallCount {
            name,
            calls: 0,
            entries: 0,
        }
    }

    /// One more call asking for `entries` entries.
    pub fn add(&mut self, entries: u64) {
        self.calls += 1;
        self.entries += entries;
    }
}

/// One translation domain of an IOMMU, as [`IommuDma`] drives it.
///
/// Every IOVA and physical address given to it is aligned to its page size, and every run lies
/// inside its aperture (callers check; implementations check again, and refuse with
/// [`DmaError::InvalidRequest`] rather than misbehave). An error from the IOMMU (a hypercall's
/// return code, a command status) is [`DmaError::Platform`] with that code.
pub trait IommuBackend: Send {
    /// The page size mappings are made in, as a shift (12: 4 KiB).
    fn page_shift(&self) -> u32;

    /// Every page size the IOMMU offers (bit `n` set: 2^n bytes), for the report.
    fn page_sizes(&self) -> u64 {
        1 << self.page_shift()
    }

    /// The IOVA range the domain translates: (base, size in bytes).
    fn aperture(&self) -> (u64, u64);

    /// Maps `pages` pages at `iova` to the physical pages at `phys`. All or nothing: on an
    /// error, nothing of the run stays mapped (as far as the IOMMU lets the guest undo it).
    fn map(&mut self, iova: u64, phys: u64, pages: u64, perm: Perm) -> Result<(), DmaError>;

    /// Removes the mappings of `pages` pages at `iova`.
    fn unmap(&mut self, iova: u64, pages: u64) -> Result<(), DmaError>;

    /// Calls issued so far, by kind; their sum is every call.
    fn calls(&self) -> [CallCount; MAX_CALL_KINDS];

    /// A window domain's static mappings are made: whatever only setup needed can go.
    fn end_setup(&mut self) {}
}

/// What the report says about a domain: which IOMMU, which window, which page size, and how it
/// was set up. Fixed once the domain is set up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DomainInfo {
    /// `tce` (pseries), later `virtio-iommu`, `vt-d`.
    pub backend: &'static str,
    /// How the domain was made: `dynamic` (the pseries default window; an x86 domain that maps
    /// per request or the pool), `ddw` (a dynamic DMA window the guest created), `static` (an
    /// x86 domain with all RAM mapped at IOVA = physical address, `sg.iommu.map=static`).
    pub mode: &'static str,
    /// What is mapped: `per-map` (each request), `ram` (all RAM at setup), `pool` (the shared
    /// bounce pool at setup).
    pub mapping: &'static str,
    /// Why this mode (a default that fell back says so).
    pub mode_reason: &'static str,
    /// The domain's identifier on the host: the pseries LIOBN.
    pub id: u64,
    pub window_base: u64,
    pub window_size: u64,
    pub page_size: u64,
    /// Page sizes offered (bit n: 2^n bytes).
    pub page_sizes: u64,
    /// Firmware calls made to set the domain up (pseries: RTAS DDW calls).
    pub setup_calls: u64,
}

/// The IOMMU counts of a domain, or of one device's share of them ([`IommuStats::since`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IommuStats {
    /// Streaming mappings of the DMA interface (`Dma::map`, `Dma::unmap`) through the domain;
    /// on a window domain they cost the IOMMU nothing.
    pub dma_maps: u64,
    pub dma_unmaps: u64,
    /// Mapping runs made and removed in the IOMMU (static setup mappings included).
    pub maps: u64,
    pub unmaps: u64,
    /// Hypercalls / IOMMU commands: the sum of `kinds`.
    pub calls: u64,
    /// Backend calls that failed.
    pub failures: u64,
    /// Requests told to wait for IOVA space ([`DmaError::Exhausted`]).
    pub exhausted: u64,
    /// IOMMU pages mapped now, and the most at once (since the last [`IommuDma::begin_epoch`]).
    pub pages: u64,
    pub pages_peak: u64,
    pub kinds: [CallCount; MAX_CALL_KINDS],
}

impl IommuStats {
    /// What happened between `start` and `self` (the peak is `self`'s: epochs restart it).
    pub fn since(&self, start: &IommuStats) -> IommuStats {
        let mut kinds = self.kinds;
        for (k, s) in kinds.iter_mut().zip(start.kinds.iter()) {
            k.calls -= s.calls.min(k.calls);
            k.entries -= s.entries.min(k.entries);
        }
        let d = |now: u64, then: u64| now - then.min(now);
        IommuStats {
            dma_maps: d(self.dma_maps, start.dma_maps),
            dma_unmaps: d(self.dma_unmaps, start.dma_unmaps),
            maps: self.maps - start.maps.min(self.maps),
            unmaps: self.unmaps - start.unmaps.min(self.unmaps),
            calls: self.calls - start.calls.min(self.calls),
            failures: self.failures - start.failures.min(self.failures),
            exhausted: self.exhausted - start.exhausted.min(self.exhausted),
            pages: self.pages,
            pages_peak: self.pages_peak,
            kinds,
        }
    }
}

/// The IOVA allocator of a domain: pages of its aperture, first fit.
///
/// Built on the swiotlb slot allocator ([`SlotPool`], one slot per IOMMU page), which already
/// honours alignment, `max_addr`, `boundary` and `max_len` on device addresses and tells
/// transient exhaustion from requests that can never fit; its property tests cover both.
pub struct IovaSpace {
    pool: SlotPool,
    page: u64,
}

/// A run of IOVA pages from [`IovaSpace::alloc`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IovaRun {
    /// The IOVA of the first page.
    pub iova: u64,
    pub pages: u64,
    /// The allocator's handle (its first slot).
    pub handle: usize,
}

impl IovaSpace {
    /// The first [`IOVA_PAGES_MAX`] pages (at most) of the aperture `[base, base + size)`, in
    /// pages of `1 << page_shift` bytes. `base` must be page-aligned. IOVA 0 is never handed
    /// out: virtio (and many drivers) take address 0 for "no ring", so an aperture that starts
    /// at 0 loses its first page, as Linux's IOMMU tables do.
    pub fn new(mut base: u64, mut size: u64, page_shift: u32) -> Result<Self, DmaError> {
        if !(6..=40).contains(&page_shift) {
            return Err(DmaError::InvalidRequest("IOMMU page size out of range"));
        }
        let page = 1u64 << page_shift;
        if base == 0 {
            base = page;
            size = size.saturating_sub(page);
        }
        let pages = (size / page).min(IOVA_PAGES_MAX);
        if pages == 0 {
            return Err(DmaError::InvalidRequest(
                "IOMMU aperture smaller than one page",
            ));
        }
        let config = PoolConfig {
            slot_size: page,
            max_map_slots: pages as usize,
        };
        let pool = SlotPool::new(base, pages * page, config)?;
        Ok(IovaSpace { pool, page })
    }

    /// Bytes managed.
    pub fn size(&self) -> u64 {
        self.pool.size()
    }

    /// IOVA pages for `len` bytes that start `offset` bytes into their first page, so that the
    /// device addresses `iova + offset .. + len` satisfy `c` (`c.align` up to the page size
    /// must already hold for `offset`: an IOMMU moves pages, not bytes).
    pub fn alloc(
        &mut self,
        offset: u64,
        len: usize,
        c: &DmaConstraints,
    ) -> Result<IovaRun, DmaError> {
        c.validate()?;
        c.check_len(len)?;
        if offset >= self.page {
            return Err(DmaError::InvalidRequest("offset beyond the first page"));
        }
        if !offset.is_multiple_of(c.align.min(self.page)) {
            return Err(DmaError::Misaligned {
                addr: DeviceAddr::new(offset),
                align: c.align,
            });
        }
        // The allocation covers [iova, iova + offset + len): its last byte is the device's.
        let span = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(len))
            .ok_or(DmaError::TooLarge {
                requested: len,
                limit: usize::MAX,
            })?;
        let inner = DmaConstraints {
            max_addr: c.max_addr,
            align: 1,
            boundary: c.boundary,
            max_len: usize::MAX,
        };
        let a = self
            .pool
            .alloc_region(span, c.align.max(self.page), &inner)?;
        Ok(IovaRun {
            iova: a.addr,
            pages: a.slots as u64,
            handle: a.slot,
        })
    }

    /// The live run at `iova` allocated for `offset + len` bytes (as allocated).
    pub fn lookup(&self, iova: u64, offset: u64, len: usize) -> Result<IovaRun, DmaError> {
        let span = (offset as usize)
            .checked_add(len)
            .ok_or(DmaError::UnknownHandle)?;
        let a = self.pool.lookup(iova, span)?;
        Ok(IovaRun {
            iova,
            pages: a.slots as u64,
            handle: a.slot,
        })
    }

    /// Gives a run back.
    pub fn free(&mut self, iova: u64, offset: u64, len: usize) -> Result<(), DmaError> {
        let span = (offset as usize)
            .checked_add(len)
            .ok_or(DmaError::UnknownHandle)?;
        self.pool.free(iova, span).map(|_| ())
    }

    /// Requests told to wait so far.
    pub fn exhausted(&self) -> u64 {
        self.pool.stats().exhausted
    }

    pub fn is_empty(&self) -> bool {
        self.pool.is_empty()
    }
}

/// The mutable half of a domain, behind one lock.
struct State {
    backend: Box<dyn IommuBackend>,
    /// Dynamic domains only.
    iova: Option<IovaSpace>,
    failures: u64,
    pages: u64,
    /// The most pages at once since the last epoch.
    epoch_peak: u64,
}

impl State {
    fn mapped(&mut self, counters: &DmaCounters, pages: u64) {
        self.pages += pages;
        self.epoch_peak = self.epoch_peak.max(self.pages);
        counters.iommu_maps.fetch_add(1, Ordering::Relaxed);
        counters.iommu_pages.store(self.pages, Ordering::Relaxed);
        counters
            .iommu_pages_peak
            .fetch_max(self.pages, Ordering::Relaxed);
    }

    fn unmapped(&mut self, counters: &DmaCounters, pages: u64) {
        self.pages -= pages.min(self.pages);
        counters.iommu_unmaps.fetch_add(1, Ordering::Relaxed);
        counters.iommu_pages.store(self.pages, Ordering::Relaxed);
    }

    /// Removes `pages` entries at `iova` from the IOMMU (counted).
    fn unmap_run(&mut self, counters: &DmaCounters, iova: u64, pages: u64) -> Result<(), DmaError> {
        self.call(counters, |b| b.unmap(iova, pages))
    }

    /// Runs a backend call and counts its outcome.
    fn call(
        &mut self,
        counters: &DmaCounters,
        f: impl FnOnce(&mut dyn IommuBackend) -> Result<(), DmaError>,
    ) -> Result<(), DmaError> {
        let before = calls_total(&self.backend.calls());
        let r = f(&mut *self.backend);
        let after = calls_total(&self.backend.calls());
        counters
            .iommu_calls
            .fetch_add(after - before.min(after), Ordering::Relaxed);
        if r.is_err() {
            self.failures += 1;
        }
        r
    }
}

fn calls_total(kinds: &[CallCount]) -> u64 {
    kinds.iter().map(|k| k.calls).sum()
}

/// Test-only misbehaviour of an IOMMU domain, for the host's IOMMU trace oracle to catch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IommuDebug {
    /// `sg.debug.unmap_early`: a dynamic domain removes each streaming mapping from the IOMMU
    /// right after making it, so the device finds the buffer unmapped.
    pub unmap_early: bool,
    /// `sg.debug.map_private`: a pool domain also maps a private page for the device.
    pub map_private: bool,
}

/// The [`Dma`] of an IOMMU domain: see the module documentation.
pub struct IommuDma<'a> {
    name: &'static str,
    info: DomainInfo,
    /// `sg.debug.unmap_early` (test only).
    unmap_early: bool,
    /// Window shape: the inner path and the offset from its device addresses to IOVAs.
    window: Option<(&'a dyn Dma, u64)>,
    state: spin::Mutex<State>,
    counters: DmaCounters,
}

impl core::fmt::Debug for IommuDma<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IommuDma")
            .field("name", &self.name)
            .field("info", &self.info)
            .finish()
    }
}

impl<'a> IommuDma<'a> {
    /// A dynamic domain (`iommu`): every request is mapped in `backend` on its own, at IOVAs
    /// taken from the backend's aperture.
    pub fn dynamic(backend: Box<dyn IommuBackend>, info: DomainInfo) -> Result<Self, DmaError> {
        let (base, size) = backend.aperture();
        let iova = IovaSpace::new(base, size, backend.page_shift())?;
        Ok(Self::build("iommu", info, None, backend, Some(iova)))
    }

    /// A window domain named `name` (`iommu`, `iommu+bounce`): requests go to `inner`, and the
    /// device reaches what `inner` gives it at its device address plus `offset` (wrapping), which
    /// the static mappings made with [`IommuDma::map_fixed`] must cover.
    pub fn window(
        name: &'static str,
        backend: Box<dyn IommuBackend>,
        inner: &'a dyn Dma,
        offset: u64,
        info: DomainInfo,
    ) -> Self {
        Self::build(name, info, Some((inner, offset)), backend, None)
    }

    fn build(
        name: &'static str,
        mut info: DomainInfo,
        window: Option<(&'a dyn Dma, u64)>,
        backend: Box<dyn IommuBackend>,
        iova: Option<IovaSpace>,
    ) -> Self {
        info.page_size = 1 << backend.page_shift();
        info.page_sizes = backend.page_sizes();
        IommuDma {
            name,
            info,
            unmap_early: false,
            window,
            state: spin::Mutex::new(State {
                backend,
                iova,
                failures: 0,
                pages: 0,
                epoch_peak: 0,
            }),
            counters: DmaCounters::new(),
        }
    }

    pub fn info(&self) -> DomainInfo {
        self.info
    }

    /// Test only (`sg.debug.unmap_early=1`): every streaming mapping of this dynamic domain is
    /// removed from the IOMMU as soon as it is made (its IOVA stays allocated until the real
    /// unmap), so that the device reaches an unmapped page and the host's IOMMU trace oracle
    /// fails. Rings and other shared regions stay mapped.
    pub fn set_debug_unmap_early(&mut self, on: bool) {
        self.unmap_early = on;
    }

    fn page(&self) -> u64 {
        self.info.page_size
    }

    /// The IOVA bytes a dynamic domain hands out (0 for a window).
    pub fn iova_capacity(&self) -> u64 {
        self.state.lock().iova.as_ref().map_or(0, IovaSpace::size)
    }

    /// A static mapping for the life of the domain: `len` bytes at `phys` reach the device at
    /// `iova` (both aligned to the page size; `len` is rounded up to whole pages). For setup.
    pub fn map_fixed(&self, iova: u64, phys: u64, len: u64, perm: Perm) -> Result<(), DmaError> {
        let page = self.page();
        if !iova.is_multiple_of(page) || !phys.is_multiple_of(page) || len == 0 {
            return Err(DmaError::InvalidRequest(
                "static IOMMU mapping not page-aligned",
            ));
        }
        let pages = len.div_ceil(page);
        let mut s = self.state.lock();
        s.call(&self.counters, |b| b.map(iova, phys, pages, perm))?;
        s.mapped(&self.counters, pages);
        Ok(())
    }

    /// The static mappings are made ([`IommuBackend::end_setup`]).
    pub fn end_setup(&self) {
        self.state.lock().backend.end_setup();
    }

    /// Restarts the peak of [`IommuStats::pages_peak`] at the pages mapped now.
    pub fn begin_epoch(&self) {
        let mut s = self.state.lock();
        s.epoch_peak = s.pages;
    }

    pub fn iommu_stats(&self) -> IommuStats {
        let s = self.state.lock();
        let kinds = s.backend.calls();
        IommuStats {
            dma_maps: self.counters.maps.load(Ordering::Relaxed),
            dma_unmaps: self.counters.unmaps.load(Ordering::Relaxed),
            maps: self.counters.iommu_maps.load(Ordering::Relaxed),
            unmaps: self.counters.iommu_unmaps.load(Ordering::Relaxed),
            calls: calls_total(&kinds),
            failures: s.failures,
            exhausted: s.iova.as_ref().map_or(0, IovaSpace::exhausted),
            pages: s.pages,
            pages_peak: s.epoch_peak,
            kinds,
        }
    }

    /// Physical address and in-page offset of a CPU pointer (identity-mapped guest).
    fn split(&self, ptr: *const u8) -> (u64, u64) {
        let phys = ptr.expose_provenance() as u64;
        let offset = phys & (self.page() - 1);
        (phys - offset, offset)
    }

    /// Maps `len` bytes at `ptr` in a dynamic domain; returns the device address and the IOVA
    /// run's handle.
    fn map_dynamic(
        &self,
        ptr: *const u8,
        len: usize,
        perm: Perm,
        c: &DmaConstraints,
    ) -> Result<(DeviceAddr, usize), DmaError> {
        let (phys, offset) = self.split(ptr);
        let mut s = self.state.lock();
        let run = s
            .iova
            .as_mut()
            .ok_or(DmaError::InvalidRequest("not a dynamic IOMMU domain"))?
            .alloc(offset, len, c)?;
        let mapped = s.call(&self.counters, |b| b.map(run.iova, phys, run.pages, perm));
        if let Err(e) = mapped {
            if let Some(space) = s.iova.as_mut() {
                let _ = space.free(run.iova, offset, len);
            }
            return Err(e);
        }
        s.mapped(&self.counters, run.pages);
        Ok((DeviceAddr::new(run.iova + offset), run.handle))
    }

    /// Removes a dynamic mapping of `len` bytes at device address `addr` made with `handle`.
    /// If the IOMMU refuses, the IOVA pages stay allocated: they may still be mapped.
    fn unmap_dynamic(&self, addr: DeviceAddr, len: usize, handle: usize) -> Result<(), DmaError> {
        let offset = addr.as_u64() & (self.page() - 1);
        let iova = addr.as_u64() - offset;
        let mut s = self.state.lock();
        let space = s
            .iova
            .as_mut()
            .ok_or(DmaError::InvalidRequest("not a dynamic IOMMU domain"))?;
        let run = space.lookup(iova, offset, len)?;
        if run.handle != handle {
            return Err(DmaError::UnknownHandle);
        }
        s.unmap_run(&self.counters, run.iova, run.pages)?;
        if let Some(space) = s.iova.as_mut() {
            space.free(iova, offset, len)?;
        }
        s.unmapped(&self.counters, run.pages);
        Ok(())
    }

    /// Checks that a window's device address satisfies `c`; the inner path chose it without
    /// knowing the offset.
    fn shifted(
        &self,
        inner: DeviceAddr,
        len: usize,
        c: &DmaConstraints,
    ) -> Result<DeviceAddr, DmaError> {
        let offset = self.window.map_or(0, |(_, o)| o);
        let addr = DeviceAddr::new(inner.as_u64().wrapping_add(offset));
        c.check(addr, len)?;
        Ok(addr)
    }

    fn unshifted(&self, addr: DeviceAddr) -> DeviceAddr {
        let offset = self.window.map_or(0, |(_, o)| o);
        DeviceAddr::new(addr.as_u64().wrapping_sub(offset))
    }

    /// The inner path's mapping behind a window mapping.
    ///
    /// # Safety
    /// `m` came from this window's `map`.
    unsafe fn inner_mapping(&self, m: &Mapping) -> Mapping {
        // SAFETY: the same buffer with the same contract, at the inner path's device address.
        unsafe {
            Mapping::new(
                self.unshifted(m.device_addr()),
                m.cpu_ptr(),
                m.len(),
                m.direction(),
                m.cookie(),
            )
        }
    }

    fn try_alloc_shared(
        &self,
        size: usize,
        align: usize,
        c: &DmaConstraints,
    ) -> Result<SharedRegion, DmaError> {
        if let Some((inner, _)) = self.window {
            let loose = DmaConstraints {
                max_addr: u64::MAX,
                ..*c
            };
            let r = inner.alloc_shared(size, align, &loose)?;
            let addr = match self.shifted(r.device_addr(), size, c) {
                Ok(a) => a,
                Err(e) => {
                    // SAFETY: just allocated, never given to a device.
                    let _ = unsafe { inner.free_shared(r) };
                    return Err(e);
                }
            };
            // SAFETY: the inner region's memory and contract, reached by the device through
            // the window at `addr`.
            return Ok(unsafe {
                SharedRegion::new(r.cpu_ptr(), addr, r.len(), r.align(), r.cookie())
            });
        }
        if size == 0 {
            return Err(DmaError::InvalidRequest("zero length"));
        }
        if !align.is_power_of_two() {
            return Err(DmaError::InvalidRequest("alignment is not a power of two"));
        }
        // Whole pages, so that the device reaches nothing but the region.
        let page = self.page() as usize;
        let layout = size
            .checked_next_multiple_of(page)
            .and_then(|n| Layout::from_size_align(n, align.max(page)).ok())
            .ok_or(DmaError::TooLarge {
                requested: size,
                limit: isize::MAX as usize,
            })?;
        // SAFETY: the layout has a non-zero size.
        let cpu =
            NonNull::new(unsafe { alloc_zeroed(layout) }).ok_or(DmaError::OutOfMemory { size })?;
        let c = c.with_align(layout.align() as u64);
        match self.map_dynamic(cpu.as_ptr(), size, Perm::RW, &c) {
            // SAFETY: fresh heap memory owned by the region until `free_shared`, mapped for the
            // device at `addr`.
            Ok((addr, handle)) => {
                Ok(unsafe { SharedRegion::new(cpu, addr, size, layout.align(), handle) })
            }
            Err(e) => {
                // SAFETY: allocated above with this layout, never given to a device.
                unsafe { dealloc(cpu.as_ptr(), layout) };
                Err(e)
            }
        }
    }

    fn try_map(
        &self,
        buffer: NonNull<[u8]>,
        direction: Direction,
        c: &DmaConstraints,
    ) -> Result<Mapping, DmaError> {
        let cpu = buffer.cast::<u8>();
        let len = buffer.len();
        if let Some((inner, _)) = self.window {
            let loose = DmaConstraints {
                max_addr: u64::MAX,
                ..*c
            };
            // SAFETY: forwarded contract.
            let m = unsafe { inner.map(buffer, direction, &loose) }?;
            return match self.shifted(m.device_addr(), len, c) {
                // SAFETY: the inner mapping's buffer and contract, reached through the window.
                Ok(addr) => Ok(unsafe { Mapping::new(addr, cpu, len, direction, m.cookie()) }),
                Err(e) => {
                    // SAFETY: never given to a device.
                    let _ = unsafe { inner.unmap(m) };
                    Err(e)
                }
            };
        }
        let (addr, handle) = self.map_dynamic(cpu.as_ptr(), len, Perm::of(direction), c)?;
        if self.unmap_early {
            // Test only: the entries go, the IOVA run stays ours until `unmap`.
            let page = self.page();
            let iova = addr.as_u64() & !(page - 1);
            let pages = (addr.as_u64() - iova + len as u64).div_ceil(page);
            let _ = self.state.lock().unmap_run(&self.counters, iova, pages);
        }
        // SAFETY: the caller's buffer and contract, mapped for the device at `addr`.
        Ok(unsafe { Mapping::new(addr, cpu, len, direction, handle) })
    }
}

impl Dma for IommuDma<'_> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn alloc_shared(
        &self,
        size: usize,
        align: usize,
        constraints: &DmaConstraints,
    ) -> Result<SharedRegion, DmaError> {
        let r = self.try_alloc_shared(size, align, constraints);
        self.counters.count_alloc_shared(size, &r);
        r
    }

    unsafe fn free_shared(&self, region: SharedRegion) -> Result<(), DmaError> {
        let len = region.len();
        if let Some((inner, _)) = self.window {
            // SAFETY: the inner region behind this one, with the caller's guarantee.
            let r = unsafe {
                SharedRegion::new(
                    region.cpu_ptr(),
                    self.unshifted(region.device_addr()),
                    len,
                    region.align(),
                    region.cookie(),
                )
            };
            // SAFETY: forwarded contract.
            unsafe { inner.free_shared(r) }?;
        } else {
            self.unmap_dynamic(region.device_addr(), len, region.cookie())?;
            let page = self.page() as usize;
            let size = len.next_multiple_of(page);
            // SAFETY: allocated in `try_alloc_shared` with this layout (accepted there), no
            // longer mapped, and the device is done with it (caller contract).
            unsafe {
                dealloc(
                    region.cpu_ptr().as_ptr(),
                    Layout::from_size_align_unchecked(size, region.align()),
                )
            };
        }
        self.counters.count_free_shared(len);
        Ok(())
    }

    unsafe fn map(
        &self,
        buffer: NonNull<[u8]>,
        direction: Direction,
        constraints: &DmaConstraints,
    ) -> Result<Mapping, DmaError> {
        let r = self.try_map(buffer, direction, constraints);
        self.counters.count_map_result(&r);
        r
    }

    unsafe fn unmap(&self, mapping: Mapping) -> Result<(), DmaError> {
        match self.window {
            // SAFETY: the mapping came from this window (caller contract); forwarded contract.
            Some((inner, _)) => unsafe { inner.unmap(self.inner_mapping(&mapping)) }?,
            None => self.unmap_dynamic(mapping.device_addr(), mapping.len(), mapping.cookie())?,
        }
        self.counters.unmaps.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    unsafe fn sync_for_cpu(
        &self,
        mapping: &Mapping,
        offset: usize,
        len: usize,
    ) -> Result<(), DmaError> {
        check_sync_range(mapping, offset, len)?;
        if let Some((inner, _)) = self.window {
            // SAFETY: as in `unmap`.
            unsafe { inner.sync_for_cpu(&self.inner_mapping(mapping), offset, len) }?;
        }
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    unsafe fn sync_for_device(
        &self,
        mapping: &Mapping,
        offset: usize,
        len: usize,
    ) -> Result<(), DmaError> {
        check_sync_range(mapping, offset, len)?;
        if let Some((inner, _)) = self.window {
            // SAFETY: as in `unmap`.
            unsafe { inner.sync_for_device(&self.inner_mapping(mapping), offset, len) }?;
        }
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn stats(&self) -> DmaStats {
        let mut s = self.counters.snapshot();
        s.iommu_pages_peak = s.iommu_pages_peak.max(s.iommu_pages);
        s
    }
}

/// Builds a domain the first time it is needed ([`LazyDomain`]).
pub trait DomainSetup<'a>: Send {
    /// Sets the domain up: whatever the IOMMU needs first (a window, a context), and the static
    /// mappings of a window domain.
    fn setup(self: Box<Self>) -> Result<IommuDma<'a>, DmaError>;
}

/// A domain that is set up on first use, once; a failed setup is remembered.
pub struct LazyDomain<'a> {
    /// Where it is, for the report (pseries: the PHB's device-tree path).
    pub location: alloc::string::String,
    setup: spin::Mutex<Option<Box<dyn DomainSetup<'a> + 'a>>>,
    ready: spin::Once<Result<IommuDma<'a>, DmaError>>,
}

impl<'a> LazyDomain<'a> {
    pub fn new(location: alloc::string::String, setup: Box<dyn DomainSetup<'a> + 'a>) -> Self {
        LazyDomain {
            location,
            setup: spin::Mutex::new(Some(setup)),
            ready: spin::Once::new(),
        }
    }

    /// A domain that exists but cannot be used (a malformed window description): every device
    /// behind it gets `error`.
    pub fn failed(location: alloc::string::String, error: DmaError) -> Self {
        LazyDomain {
            location,
            setup: spin::Mutex::new(None),
            ready: spin::Once::initialized(Err(error)),
        }
    }

    /// The domain, set up now if this is the first call.
    pub fn get(&self) -> Result<&IommuDma<'a>, DmaError> {
        self.ready
            .call_once(|| match self.setup.lock().take() {
                Some(s) => s.setup(),
                None => Err(DmaError::InvalidRequest("IOMMU domain setup lost")),
            })
            .as_ref()
            .map_err(|e| *e)
    }

    /// What setting it up gave, if anyone asked for it.
    pub fn state(&self) -> Option<Result<&IommuDma<'a>, DmaError>> {
        self.ready.get().map(|r| r.as_ref().map_err(|e| *e))
    }
}

/// The IOMMU domains of a run, by index (`FoundDevice::iommu`). A trait object, so that the
/// DMA paths that hold it stay covariant in their lifetime.
pub trait IommuDomains: Sync {
    /// Whether domain `index` exists (the device sits behind an IOMMU).
    fn has(&self, index: usize) -> bool;

    /// Domain `index`, set up now if nobody asked for it before.
    fn domain(&self, index: usize) -> Option<Result<&IommuDma<'_>, DmaError>>;
}

impl IommuDomains for alloc::vec::Vec<LazyDomain<'_>> {
    fn has(&self, index: usize) -> bool {
        index < self.len()
    }

    fn domain(&self, index: usize) -> Option<Result<&IommuDma<'_>, DmaError>> {
        self.get(index).map(|d| d.get().map(|d| d as &IommuDma<'_>))
    }
}

/// A run without IOMMU domains.
pub struct NoDomains;

impl IommuDomains for NoDomains {
    fn has(&self, _index: usize) -> bool {
        false
    }

    fn domain(&self, _index: usize) -> Option<Result<&IommuDma<'_>, DmaError>> {
        None
    }
}

/// The [`IommuDma`] of a domain that serves one device from IOVA `base` (an x86 IOMMU domain:
/// virtio-iommu, VT-d): every request mapped on its own when the device uses private memory
/// (`iommu`), or the whole shared pool mapped once at `base` (`iommu+bounce`). `private_len`
/// and `unmap_early` are the test-only negative controls for the host's IOMMU trace oracle
/// (`sg.debug.map_private`: a private page, guest-physical 0, mapped right after the pool;
/// `sg.debug.unmap_early`).
pub fn per_device_dma(
    backend: Box<dyn IommuBackend>,
    mut info: DomainInfo,
    target: &super::tce::Target<'static>,
    base: u64,
    private_len: u64,
    unmap_early: bool,
) -> Result<IommuDma<'static>, DmaError> {
    match *target {
        super::tce::Target::Direct { .. } => {
            info.mapping = "per-map";
            let mut dma = IommuDma::dynamic(backend, info)?;
            dma.set_debug_unmap_early(unmap_early);
            Ok(dma)
        }
        super::tce::Target::Pool { bounce, phys, size } => {
            info.mapping = "pool";
            let dma = IommuDma::window(
                "iommu+bounce",
                backend,
                bounce,
                base.wrapping_sub(phys),
                info,
            );
            dma.map_fixed(base, phys, size, Perm::RW)?;
            if private_len > 0 {
                dma.map_fixed(base + size, 0, private_len, Perm::READ)?;
            }
            dma.end_setup();
            Ok(dma)
        }
    }
}

/// `sg.iommu.map`: how an x86 IOMMU domain of a normal guest maps the device's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IommuMap {
    /// Each request's pages while it is in flight (the default, as Linux's DMA API does).
    Dynamic,
    /// All RAM once at setup at IOVA = physical address; nothing per request (the x86
    /// counterpart of a pseries DDW window).
    Static,
}

impl IommuMap {
    pub const EXPECTED: &'static str = "dynamic|static";

    pub fn parse(v: &str) -> Option<Self> {
        match v {
            "dynamic" => Some(IommuMap::Dynamic),
            "static" => Some(IommuMap::Static),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IommuMap::Dynamic => "dynamic",
            IommuMap::Static => "static",
        }
    }
}

/// The mapping an x86 domain uses and why (its `mode_reason`), from `sg.iommu.map` (`None`:
/// not given) and whether the guest is secure (`pool`): a secure guest's domain maps the shared
/// pool and nothing else, whatever `sg.iommu.map` says.
pub fn x86_map_mode(map: Option<IommuMap>, pool: bool) -> (IommuMap, &'static str) {
    match (map, pool) {
        (Some(IommuMap::Static), true) => (
            IommuMap::Dynamic,
            "secure: only the shared pool is mapped (sg.iommu.map=static has no effect)",
        ),
        (_, true) => (IommuMap::Dynamic, "secure: only the shared pool is mapped"),
        (None, false) => (
            IommuMap::Dynamic,
            "default (sg.iommu.map=dynamic): each request mapped, as Linux's DMA API does",
        ),
        (Some(IommuMap::Dynamic), false) => (IommuMap::Dynamic, "sg.iommu.map=dynamic"),
        (Some(IommuMap::Static), false) => (IommuMap::Static, "sg.iommu.map=static"),
    }
}

/// Why a static domain cannot be made: RAM lies outside what the IOMMU translates.
pub const STATIC_BEYOND_INPUT: &str = "sg.iommu.map=static: RAM beyond the IOVAs the IOMMU \
     translates (virtio-iommu: its input_range; VT-d: its address width)";

/// An IOVA range a domain must never map (inclusive bounds), and the error of a static domain
/// whose RAM would cover part of it.
pub type ReservedIova = (u64, u64, &'static str);

/// The runs `(IOVA = physical address, bytes)` of a static (identity) domain: the whole
/// `page`-sized pages of each RAM range (`ram`: `[base, end)`, sorted, disjoint). A partial
/// page at either end of a range is left out (it is not all RAM), and so is page 0, so that a
/// zero device address still faults; this guest never gives a device either. Every run must lie
/// inside `input` (inclusive: what the IOMMU translates) and clear of every `reserved` range:
/// RAM that does not fit fails the setup (with the reserved range's error, or
/// [`STATIC_BEYOND_INPUT`]) rather than being left out quietly.
pub fn identity_runs(
    ram: &[(u64, u64)],
    page: u64,
    input: (u64, u64),
    reserved: &[ReservedIova],
) -> Result<alloc::vec::Vec<(u64, u64)>, DmaError> {
    let mut runs = alloc::vec::Vec::new();
    for &(base, end) in ram {
        let stop = end & !(page - 1);
        let Some(start) = base.max(page).checked_next_multiple_of(page) else {
            continue;
        };
        if stop <= start {
            continue;
        }
        let len = stop - start;
        if start < input.0 || stop - 1 > input.1 {
            return Err(DmaError::InvalidRequest(STATIC_BEYOND_INPUT));
        }
        if let Some(&(_, _, why)) = reserved
            .iter()
            .find(|&&(lo, hi, _)| lo <= hi && lo < stop && start <= hi)
        {
            return Err(DmaError::InvalidRequest(why));
        }
        runs.push((start, len));
    }
    if runs.is_empty() {
        return Err(DmaError::InvalidRequest(
            "sg.iommu.map=static: no whole page of RAM to map",
        ));
    }
    Ok(runs)
}

/// A static (identity) domain over `backend`: every run of [`identity_runs`] mapped read-write
/// at its own address, once; requests go to `direct` unchanged (device address = physical
/// address) and cost the IOMMU nothing. The domain reports mode `static`, mapping `ram`, and
/// the window `[0, end of the last run)`.
pub fn identity_dma<'a>(
    backend: Box<dyn IommuBackend>,
    mut info: DomainInfo,
    direct: &'a dyn Dma,
    runs: &[(u64, u64)],
) -> Result<IommuDma<'a>, DmaError> {
    info.mode = IommuMap::Static.as_str();
    info.mapping = "ram";
    info.window_base = 0;
    info.window_size = runs.last().map_or(0, |&(b, l)| b + l);
    let dma = IommuDma::window("iommu", backend, direct, 0, info);
    for &(base, len) in runs {
        dma.map_fixed(base, base, len, Perm::RW)?;
    }
    dma.end_setup();
    Ok(dma)
}

#[cfg(test)]
mod tests;
