//! What the device drivers (blk, net, console, rng) share: the settings from the command line,
//! the choice of each device's DMA path, counters for the report, heap buffers lent to a device,
//! and the teardown that resets a device before anything it was given is taken back.
//!
//! Every driver follows the same shape:
//!
//! 1. [`init_device`] with its device bits plus [`Settings::core_features`]. Once the features
//!    are negotiated, and before any queue exists, it chooses the device's DMA path from the
//!    [`DmaPaths`] of the run ([`DmaPaths::choose`]: direct, bounce, iommu, iommu+bounce,
//!    refused or invalid, the table of [`crate::platform::decide::device_dma`]; an IOMMU path
//!    sets the device's domain up the first time). A refused device gets FAILED and nothing
//!    else; so does one whose path is invalid, with an error. Otherwise the
//!    driver's setup closure builds its queues with [`Resources::dma`] (so that on the bounce
//!    path the rings live in the shared pool) and pushes them into a [`Resources`] right away,
//!    so that a failure halfway still reclaims them;
//! 2. its test, with every buffer from [`Resources::alloc_buf`] / a shared region in the same
//!    [`Resources`], and every wait bounded by a [`Deadline`] from [`Settings::deadline`]. On a
//!    secure guest `alloc_buf` fills each buffer with secret marks ([`secret`]) before a device
//!    can see any of it, so that a host dump of the shared pool shows whether private bytes
//!    leaked. A mapping that fails with [`DmaError::Exhausted`] (the pool is full) is
//!    back-pressure: the driver waits for its outstanding requests and tries again;
//! 3. [`Resources::release`]: reset the device (bounded), and only if the reset completed, unmap
//!    and free everything. A device that does not reset keeps its memory: leaking is safe, giving
//!    memory back that a device may still write is not.

use alloc::alloc::{alloc_zeroed, dealloc};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};

use super::features::common;
use super::init::{self, InitError, Negotiation};
use super::queue::{RingFormat, Segment, Virtqueue};
use super::transport::Transport;
use super::wait::{Clock, Deadline};
use crate::dma::iommu::{DomainInfo, IommuDma, IommuDomains, IommuStats, NoDomains};
use crate::dma::{Direction, Dma, DmaConstraints, DmaError, Mapping, SharedRegion};
use crate::platform::decide::{self, DeviceDma, DmaChoice, LegacyPolicy};
use crate::platform::secret;

/// The shared bounce pool of a secure guest, as the drivers use it.
#[derive(Clone, Copy)]
pub struct SharedPool<'d> {
    /// The bounce path over the pool ([`crate::dma::bounce::Bounce`]).
    pub dma: &'d dyn Dma,
    /// The largest streaming mapping (`Bounce::max_mapping_size`): drivers split larger
    /// transfers into mappings of at most this size.
    pub max_mapping: usize,
    /// Bytes in the pool. One request never takes more than a quarter of them (see
    /// [`DevicePath::max_request`]), so that it always fits next to the rings once the requests
    /// before it completed.
    pub size: u64,
}

/// How the DMA path of every device of a run is chosen, once its features are known. One value
/// for the whole run, made in the boot flow after the secure decision; [`DmaPaths::behind`]
/// adds the IOMMU domain of one device.
#[derive(Clone, Copy)]
pub struct DmaPaths<'d> {
    /// The path of a non-secure guest.
    direct: &'d dyn Dma,
    /// A secure guest's pool; `None` when the guest is not secure.
    pool: Option<SharedPool<'d>>,
    legacy: LegacyPolicy,
    /// `sg.dma`.
    choice: DmaChoice,
    /// The run's IOMMU domains (pseries: one per PHB with a TCE window), set up on first use.
    domains: &'d dyn IommuDomains,
    /// The domain (index in `domains`) of the device being set up: it sits behind an IOMMU that
    /// translates its DMA once it negotiates `ACCESS_PLATFORM`.
    domain: Option<usize>,
}

impl<'d> DmaPaths<'d> {
    /// Not secure: every device gets `dma` (direct), unless an IOMMU or `sg.dma` says otherwise.
    pub fn direct(dma: &'d dyn Dma) -> Self {
        DmaPaths {
            direct: dma,
            pool: None,
            legacy: LegacyPolicy::DEFAULT,
            choice: DmaChoice::Auto,
            domains: &NoDomains,
            domain: None,
        }
    }

    /// Secure: every device goes through `pool` (or its IOMMU's window onto it), or is refused
    /// without ACCESS_PLATFORM when `legacy` says so. `direct` is kept only for completeness:
    /// the secure table never gives a device the direct path.
    pub fn secure(direct: &'d dyn Dma, pool: SharedPool<'d>, legacy: LegacyPolicy) -> Self {
        DmaPaths {
            pool: Some(pool),
            legacy,
            ..Self::direct(direct)
        }
    }

    /// With `sg.dma` and the run's IOMMU domains.
    pub fn with(self, choice: DmaChoice, domains: &'d dyn IommuDomains) -> Self {
        DmaPaths {
            choice,
            domains,
            ..self
        }
    }

    /// For a device behind IOMMU domain `domain` (an index in the run's domains), or none.
    pub fn behind(self, domain: Option<usize>) -> Self {
        DmaPaths { domain, ..self }
    }

    pub fn is_secure(&self) -> bool {
        self.pool.is_some()
    }

    pub fn legacy(&self) -> LegacyPolicy {
        self.legacy
    }

    fn table(&self, access_platform: bool) -> (DeviceDma, &'static str) {
        let translated = self.domain.is_some_and(|i| self.domains.has(i));
        let secure = self.is_secure();
        decide::device_dma(
            self.choice,
            secure,
            access_platform,
            translated,
            self.legacy,
        )
    }

    /// `dma` and `dma_reason` the device would get, without setting anything up (for a device
    /// whose init failed before its features were known, and for devices not driven).
    pub fn would_choose(&self, access_platform: bool) -> DmaReport {
        let (kind, reason) = self.table(access_platform);
        DmaReport {
            name: match kind {
                DeviceDma::Refuse | DeviceDma::Invalid => "none",
                k => k.as_str(),
            },
            reason,
            iommu: None,
        }
    }

    /// The path of a device that negotiated `VIRTIO_F_ACCESS_PLATFORM` or not, by the table of
    /// [`decide::device_dma`]; the reason is the one of docs/report.md (`dma_reason`). An IOMMU
    /// path sets the device's domain up if nobody did yet; a setup that fails makes the path
    /// invalid, with the error.
    pub fn choose(&self, access_platform: bool) -> DevicePath<'d> {
        let (kind, reason) = self.table(access_platform);
        let none = DevicePath {
            dma: None,
            kind,
            reason,
            max_mapping: 0,
            max_request: 0,
            iommu: None,
            error: None,
        };
        let unlimited = DevicePath {
            max_mapping: usize::MAX,
            max_request: usize::MAX,
            ..none
        };
        let quarter = |bytes: u64| usize::try_from(bytes / 4).unwrap_or(usize::MAX);
        // Only an IOMMU path sets the domain up.
        let iommu = matches!(kind, DeviceDma::Iommu | DeviceDma::IommuBounce);
        let domain = self
            .domain
            .filter(|_| iommu)
            .and_then(|i| self.domains.domain(i));
        match (kind, self.pool, domain) {
            (DeviceDma::Direct, _, _) => DevicePath {
                dma: Some(self.direct),
                ..unlimited
            },
            (DeviceDma::Bounce, Some(pool), _) => DevicePath {
                dma: Some(pool.dma),
                max_mapping: pool.max_mapping,
                max_request: quarter(pool.size),
                ..none
            },
            (DeviceDma::Iommu | DeviceDma::IommuBounce, _, Some(domain)) => match domain {
                Ok(d) if d.name() == kind.as_str() => {
                    let (max_mapping, max_request) = match (kind, self.pool) {
                        (DeviceDma::IommuBounce, Some(pool)) => {
                            (pool.max_mapping, quarter(pool.size))
                        }
                        // A dynamic domain: no request takes more than a quarter of the IOVA
                        // space, so that it fits once the requests before it completed.
                        _ => match d.iova_capacity() {
                            0 => (usize::MAX, usize::MAX),
                            cap => (quarter(cap), quarter(cap)),
                        },
                    };
                    DevicePath {
                        dma: Some(d),
                        max_mapping,
                        max_request,
                        iommu: Some(d),
                        ..none
                    }
                }
                Ok(_) => DevicePath {
                    kind: DeviceDma::Invalid,
                    reason: "the IOMMU domain was set up for another DMA path",
                    ..none
                },
                Err(e) => DevicePath {
                    kind: DeviceDma::Invalid,
                    reason: "the IOMMU could not be set up",
                    error: Some(e),
                    ..none
                },
            },
            (DeviceDma::Refuse | DeviceDma::Invalid, _, _) => none,
            // The table gives bounce only with a pool and an IOMMU path only with a domain.
            _ => DevicePath {
                kind: DeviceDma::Invalid,
                reason: "no such DMA path on this guest",
                ..none
            },
        }
    }
}

/// The DMA path one device got.
#[derive(Clone, Copy)]
pub struct DevicePath<'d> {
    /// `None`: refused or invalid (the device is failed and never given memory).
    pub dma: Option<&'d dyn Dma>,
    pub kind: DeviceDma,
    /// `dma_reason` of the record.
    pub reason: &'static str,
    /// The largest streaming mapping: larger buffers are mapped in pieces.
    pub max_mapping: usize,
    /// The most data bytes one request should carry (bounce: a quarter of the pool).
    pub max_request: usize,
    /// The IOMMU domain the device's DMA goes through, for its counts.
    pub iommu: Option<&'d IommuDma<'d>>,
    /// Why an IOMMU path is invalid: its setup failed with this.
    pub error: Option<DmaError>,
}

impl DevicePath<'_> {
    /// `dma` of the record: the path's name, `none` when refused or invalid.
    pub fn name(&self) -> &'static str {
        self.dma.map_or("none", |d| d.name())
    }

    pub fn report(&self) -> DmaReport {
        DmaReport {
            name: self.name(),
            reason: self.reason,
            iommu: None,
        }
    }

    /// The init error of a device this path fails: its reason, and the setup error.
    fn failure(&self) -> String {
        match self.error {
            Some(e) => format!("dma: {}: {e}", self.reason),
            None => format!("dma: {}", self.reason),
        }
    }
}

/// An IOMMU domain, and what one device did in it (`virtio.iommu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IommuReport {
    pub info: DomainInfo,
    /// The device's share: counts from its path's choice to its teardown, the peak of pages in
    /// that time.
    pub stats: IommuStats,
}

/// `dma` and `dma_reason` of a `virtio` record, and `iommu` on an IOMMU path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaReport {
    pub name: &'static str,
    pub reason: &'static str,
    pub iommu: Option<IommuReport>,
}

/// The counter of the first secret mark written into a driver buffer. Marks of the boot flow's
/// `secret` regions count from 0, marks of driver buffers from here, so that a host that finds
/// one knows which kind of memory leaked.
pub const BUFFER_MARKS_FIRST: u32 = 0x8000_0000;
static NEXT_BUFFER_MARK: AtomicU32 = AtomicU32::new(BUFFER_MARKS_FIRST);

/// The virtio options of the command line, as the drivers use them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// How long one request (or one step of a device's test) may take.
    pub timeout_us: u64,
    /// Accept `RING_PACKED` when offered.
    pub packed: bool,
    /// Accept `INDIRECT_DESC` when offered.
    pub indirect: bool,
    /// Accept `EVENT_IDX` when offered.
    pub event_idx: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            timeout_us: 5_000_000,
            packed: true,
            indirect: true,
            event_idx: true,
        }
    }
}

/// The poll ceiling of a wait of `timeout_us`: one poll (a ring read and a pause) costs at least
/// 10 ns on anything this guest runs on, so a working clock always ends the wait first, and a
/// clock that does not advance still ends it.
pub fn max_polls(timeout_us: u64) -> u64 {
    timeout_us.saturating_mul(100).max(1000)
}

impl Settings {
    /// The core feature bits the driver asks for: [`common::CORE_SUPPORTED`] minus what the
    /// command line turned off.
    pub fn core_features(&self) -> u64 {
        let mut f = common::CORE_SUPPORTED;
        if !self.packed {
            f &= !common::RING_PACKED;
        }
        if !self.indirect {
            f &= !common::RING_INDIRECT_DESC;
        }
        if !self.event_idx {
            f &= !common::RING_EVENT_IDX;
        }
        f
    }

    /// A fresh budget of one timeout.
    pub fn deadline<'c>(&self, clock: &'c dyn Clock) -> Deadline<'c> {
        Deadline::new(clock, self.timeout_us, max_polls(self.timeout_us))
    }

    pub fn timeout_ms(&self) -> u64 {
        self.timeout_us / 1000
    }
}

/// What the report counts for every device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests the device completed.
    pub requests: u64,
    /// Payload bytes the device read (data written to a disk, frames sent, console output).
    pub bytes_to_device: u64,
    /// Payload bytes the device wrote (data read from a disk, frames received, entropy).
    pub bytes_from_device: u64,
    /// Queue notifications the driver sent.
    pub notifications: u64,
}

/// Notifies the device of new requests on `q` if it wants to be, and counts it.
pub fn kick<T: Transport + ?Sized>(t: &mut T, q: &mut Virtqueue<'_>, counters: &mut Counters) {
    if q.should_notify() {
        t.notify(q.index());
        counters.notifications += 1;
    }
}

/// One queue as the report shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueInfo {
    pub index: u16,
    pub size: u16,
    pub ring: RingFormat,
    pub indirect: bool,
    pub event_idx: bool,
}

impl QueueInfo {
    pub fn of(q: &Virtqueue<'_>) -> Self {
        let c = q.config();
        QueueInfo {
            index: c.index,
            size: c.size,
            ring: q.format(),
            indirect: c.indirect,
            event_idx: c.event_idx,
        }
    }
}

/// A heap buffer that is lent to a device with [`Dma::map`], possibly in several pieces (a
/// device with a segment size limit). While it is mapped the CPU does not touch it: the
/// accessors panic, which would be a driver bug, never something a device can cause. Dropping a
/// mapped buffer leaks it (the device may still own it); dropping an unmapped one frees it.
pub struct DmaBuf {
    ptr: NonNull<u8>,
    len: usize,
    mappings: Vec<Mapping>,
}

// SAFETY: the buffer is owned heap memory, like a `Box<[u8]>`; the mappings are handles on it.
unsafe impl Send for DmaBuf {}

impl DmaBuf {
    const ALIGN: usize = 64;

    /// `len` zeroed bytes (`len > 0`).
    pub fn new(len: usize) -> Result<Self, DmaError> {
        if len == 0 {
            return Err(DmaError::InvalidRequest("zero length"));
        }
        let layout = Layout::from_size_align(len, Self::ALIGN).map_err(|_| DmaError::TooLarge {
            requested: len,
            limit: isize::MAX as usize,
        })?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or(DmaError::OutOfMemory { size: len })?;
        Ok(DmaBuf {
            ptr,
            len,
            mappings: Vec::new(),
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_mapped(&self) -> bool {
        !self.mappings.is_empty()
    }

    /// Maps the first `len` bytes for the device, in pieces of at most `piece` bytes, and
    /// returns one segment per piece (writable when the device writes). All or nothing: on an
    /// error the pieces mapped so far are unmapped again (the device never saw them).
    pub fn map(
        &mut self,
        dma: &dyn Dma,
        len: usize,
        piece: usize,
        direction: Direction,
        constraints: &DmaConstraints,
    ) -> Result<Vec<Segment>, DmaError> {
        assert!(!self.is_mapped(), "buffer mapped twice");
        assert!(len <= self.len && len > 0 && piece > 0, "bad map request");
        let mut segments = Vec::new();
        let mut offset = 0;
        while offset < len {
            let n = piece.min(len - offset);
            // SAFETY: `offset + n <= len <= self.len`: inside the allocation.
            let start = unsafe { self.ptr.add(offset) };
            let slice = NonNull::slice_from_raw_parts(start, n);
            // SAFETY: the buffer is owned by `self` and stays allocated at least until the
            // mapping is released with `unmap` (a mapped buffer is leaked, never freed, on
            // drop); the CPU does not access it while mapped (`bytes`/`bytes_mut` refuse).
            let m = match unsafe { dma.map(slice, direction, constraints) } {
                Ok(m) => m,
                Err(e) => {
                    // SAFETY: these pieces were never made available to the device.
                    let _ = unsafe { self.unmap(dma) };
                    return Err(e);
                }
            };
            let Some(seg) = Segment::from_mapping(&m) else {
                self.mappings.push(m);
                // SAFETY: as above.
                let _ = unsafe { self.unmap(dma) };
                return Err(DmaError::TooLarge {
                    requested: n,
                    limit: u32::MAX as usize,
                });
            };
            segments.push(seg);
            self.mappings.push(m);
            offset += n;
        }
        Ok(segments)
    }

    /// Ends the mappings. Returns the first error of the [`Dma`] (all are tried).
    ///
    /// # Safety
    /// The device no longer accesses the buffer: its request completed, or it was reset.
    pub unsafe fn unmap(&mut self, dma: &dyn Dma) -> Result<(), DmaError> {
        let mut result = Ok(());
        for m in self.mappings.drain(..) {
            // SAFETY: forwarded contract; the buffer is still allocated.
            if let Err(e) = unsafe { dma.unmap(m) } {
                result = result.and(Err(e));
            }
        }
        result
    }

    /// The bytes, for the CPU. Panics while mapped.
    pub fn bytes(&self) -> &[u8] {
        assert!(!self.is_mapped(), "CPU access to a mapped buffer");
        // SAFETY: owned, initialised (zeroed) memory of `len` bytes that no device accesses.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, for the CPU to fill. Panics while mapped.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        assert!(!self.is_mapped(), "CPU access to a mapped buffer");
        // SAFETY: as in `bytes`, and `&mut self` makes it exclusive.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        if self.is_mapped() {
            // The device may still own it: leak it.
            return;
        }
        // SAFETY: allocated in `new` with this layout (the size and alignment were accepted
        // there), not mapped, and freed exactly once.
        unsafe {
            dealloc(
                self.ptr.as_ptr(),
                Layout::from_size_align_unchecked(self.len, Self::ALIGN),
            )
        };
    }
}

/// Everything a driver gave a device: queues, shared regions, buffers. Handed back only by
/// [`Resources::release`], after a reset. Also the device's DMA path, once [`init_device`]
/// chose it.
pub struct Resources<'d> {
    paths: DmaPaths<'d>,
    path: Option<DevicePath<'d>>,
    /// The IOMMU counts when the path was chosen.
    iommu_start: Option<IommuStats>,
    pub queues: Vec<Virtqueue<'d>>,
    pub regions: Vec<SharedRegion>,
    pub bufs: Vec<DmaBuf>,
}

impl<'d> Resources<'d> {
    pub fn new(paths: &DmaPaths<'d>) -> Self {
        Resources {
            paths: *paths,
            path: None,
            iommu_start: None,
            queues: Vec::new(),
            regions: Vec::new(),
            bufs: Vec::new(),
        }
    }

    /// The device's DMA path. Only after [`init_device`] chose it and did not refuse the device:
    /// asking earlier is a driver bug and panics.
    pub fn dma(&self) -> &'d dyn Dma {
        self.path
            .and_then(|p| p.dma)
            .expect("the DMA path is chosen (and not refused) before it is used")
    }

    /// The device's path, once chosen.
    pub fn path(&self) -> Option<DevicePath<'d>> {
        self.path
    }

    /// The largest streaming mapping and the most data bytes per request of the chosen path
    /// (no limit before a path is chosen).
    pub fn limits(&self) -> (usize, usize) {
        self.path
            .map_or((usize::MAX, usize::MAX), |p| (p.max_mapping, p.max_request))
    }

    /// `dma` and `dma_reason` of the record: the chosen path, or, when init failed before the
    /// path was chosen, the one the device would have had with the features `accepted`.
    pub fn dma_report(&self, accepted: u64) -> DmaReport {
        match self.path {
            Some(p) => p.report(),
            None => self
                .paths
                .would_choose(accepted & common::ACCESS_PLATFORM != 0),
        }
    }

    /// The IOMMU domain and the counts at the choice, to report the device's share after its
    /// teardown.
    fn iommu_probe(&self) -> Option<(&'d IommuDma<'d>, IommuStats)> {
        self.path.and_then(|p| p.iommu).zip(self.iommu_start)
    }

    /// A shared region of `size` bytes; returns its index in `regions`.
    pub fn alloc_region(&mut self, size: usize, align: usize) -> Result<usize, String> {
        let r = self
            .dma()
            .alloc_shared(size, align, &DmaConstraints::NONE)
            .map_err(|e| format!("shared memory of {size} bytes: {e}"))?;
        self.regions.push(r);
        Ok(self.regions.len() - 1)
    }

    /// A heap buffer of `len` bytes; returns its index in `bufs`. Zeroed, except on a secure
    /// guest: there every byte is a secret mark ([`secret::fill`], counters from
    /// [`BUFFER_MARKS_FIRST`] on), so that whatever part of it the device is not meant to see
    /// (the slack after the data, a receive buffer's old contents) is recognisable if it ever
    /// shows up in shared memory. The one place every driver buffer comes from.
    pub fn alloc_buf(&mut self, len: usize) -> Result<usize, String> {
        let mut b = DmaBuf::new(len).map_err(|e| format!("buffer of {len} bytes: {e}"))?;
        if self.paths.is_secure() {
            let records = u32::try_from(len.div_ceil(secret::RECORD_LEN)).unwrap_or(u32::MAX);
            let first = NEXT_BUFFER_MARK.fetch_add(records, Ordering::Relaxed);
            secret::fill(b.bytes_mut(), first);
        }
        self.bufs.push(b);
        Ok(self.bufs.len() - 1)
    }

    /// Resets the device (within one timeout) and, once it is reset, unmaps every buffer and
    /// frees every region and queue. If the reset does not complete, nothing is given back (the
    /// device may still use it) and the error says so. A refused device was given nothing and
    /// is left as it is: FAILED, which tells the host the driver gave up on it.
    /// Ends a run whose init failed: the DMA path the device would have had, then reset and
    /// give everything back ([`Resources::release`]), with a teardown failure folded in.
    pub fn init_failed<T: Transport + ?Sized, S>(
        self,
        t: &mut T,
        settings: &Settings,
        clock: &dyn Clock,
        fail: InitFailure,
        specific: S,
    ) -> DriverRun<S> {
        let mut dma = self.dma_report(fail.accepted);
        let outcome = fail.outcome();
        let probe = self.iommu_probe();
        let teardown = self.release(t, settings, clock);
        dma.iommu = probe.map(iommu_report);
        DriverRun {
            offered: fail.offered,
            accepted: fail.accepted,
            queues: Vec::new(),
            counters: Counters::default(),
            outcome: outcome.with_teardown(teardown),
            dma,
            specific,
        }
    }

    /// Ends a run after the driver's test: the DMA path, then reset and give everything back
    /// ([`Resources::release`]), with a teardown failure folded into `outcome`.
    #[allow(clippy::too_many_arguments)]
    pub fn finish<T: Transport + ?Sized, S>(
        self,
        t: &mut T,
        settings: &Settings,
        clock: &dyn Clock,
        negotiation: &Negotiation,
        queues: Vec<QueueInfo>,
        counters: Counters,
        outcome: Outcome,
        specific: S,
    ) -> DriverRun<S> {
        let mut dma = self.dma_report(negotiation.accepted);
        let probe = self.iommu_probe();
        let teardown = self.release(t, settings, clock);
        dma.iommu = probe.map(iommu_report);
        DriverRun {
            offered: negotiation.offered,
            accepted: negotiation.accepted,
            queues,
            counters,
            outcome: outcome.with_teardown(teardown),
            dma,
            specific,
        }
    }

    pub fn release<T: Transport + ?Sized>(
        self,
        t: &mut T,
        settings: &Settings,
        clock: &dyn Clock,
    ) -> Result<(), String> {
        let refused = self.path.is_some_and(|p| p.dma.is_none());
        if refused && self.queues.is_empty() && self.regions.is_empty() && self.bufs.is_empty() {
            return Ok(());
        }
        let mut deadline = settings.deadline(clock);
        if let Err(e) = init::reset(t, &mut deadline) {
            let held = self.bufs.iter().filter(|b| b.is_mapped()).count();
            // Forgetting is what dropping does for mapped buffers, regions and queues anyway;
            // unmapped buffers are freed, as the device never had them.
            return Err(format!(
                "reset failed ({e}): {} queues, {} shared regions and {held} buffers left to the \
                 device",
                self.queues.len(),
                self.regions.len()
            ));
        }
        let Some(dma) = self.path.and_then(|p| p.dma) else {
            // No path: nothing was allocated through one (queues, regions and buffers all come
            // after the choice).
            return Ok(());
        };
        let mut failures = 0u32;
        for mut b in self.bufs {
            // SAFETY: the device is reset, so it no longer accesses any buffer it was given.
            if unsafe { b.unmap(dma) }.is_err() {
                failures += 1;
            }
        }
        for r in self.regions {
            // SAFETY: as above; the regions came from `dma.alloc_shared`.
            if unsafe { dma.free_shared(r) }.is_err() {
                failures += 1;
            }
        }
        for q in self.queues {
            // SAFETY: the device was reset after it was given the queue.
            if unsafe { q.free() }.is_err() {
                failures += 1;
            }
        }
        if failures > 0 {
            return Err(format!(
                "the DMA path refused to take back {failures} buffers after the reset"
            ));
        }
        Ok(())
    }
}

/// What a device did in its IOMMU domain, from the counts at its choice (`start`) to now.
fn iommu_report((d, start): (&IommuDma<'_>, IommuStats)) -> IommuReport {
    IommuReport {
        info: d.info(),
        stats: d.iommu_stats().since(&start),
    }
}

/// How a device's test ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The device misbehaved or failed: what it did.
    Error(String),
    /// Nothing was asked of it.
    Skipped,
    /// A secure guest refused it (no ACCESS_PLATFORM, `sg.legacy_devices=refuse`): FAILED,
    /// never given memory. Not an error.
    Refused,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error(_) => "error",
            Outcome::Skipped => "skipped",
            Outcome::Refused => "refused",
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Outcome::Error(_))
    }

    /// Adds what the teardown found: an error stays the first error, with the teardown's
    /// appended; a teardown failure turns success into an error.
    pub fn with_teardown(self, teardown: Result<(), String>) -> Outcome {
        match (self, teardown) {
            (o, Ok(())) => o,
            (Outcome::Error(e), Err(t)) => Outcome::Error(format!("{e}; then {t}")),
            (_, Err(t)) => Outcome::Error(t),
        }
    }
}

/// What every driver hands back to [`crate::devices`].
#[derive(Clone, Debug)]
pub struct DriverRun<S> {
    /// The feature words (offered / accepted), as far as init got.
    pub offered: u64,
    pub accepted: u64,
    pub queues: Vec<QueueInfo>,
    pub counters: Counters,
    pub outcome: Outcome,
    /// The DMA path the device got (or would have got, when init failed before the choice).
    pub dma: DmaReport,
    /// The device-specific results.
    pub specific: S,
}

/// An init that failed: what the report can still say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitFailure {
    pub offered: u64,
    pub accepted: u64,
    pub message: String,
    /// The device was refused by the DMA policy, not failed by itself.
    pub refused: bool,
}

impl InitFailure {
    /// `Refused`, or the error.
    pub fn outcome(&self) -> Outcome {
        if self.refused {
            Outcome::Refused
        } else {
            Outcome::Error(self.message.clone())
        }
    }
}

/// `init::init` with the driver's feature bits plus the core's, one timeout for the reset, and
/// a setup closure that puts its queues into `res` (so they are reclaimed whatever happens).
/// Before the closure runs, the device's DMA path is chosen from what was negotiated
/// (`ACCESS_PLATFORM`, which the core accepts whenever offered) and kept in `res`; a refused
/// device gets FAILED (by `init::init`) without the closure ever running, and the failure says
/// `refused`. On failure the negotiation is still known when it got that far.
pub fn init_device<'d, T: Transport + ?Sized, R>(
    t: &mut T,
    device_features: u64,
    settings: &Settings,
    clock: &dyn Clock,
    res: &mut Resources<'d>,
    setup: impl FnOnce(&mut T, &Negotiation, &mut Resources<'d>) -> Result<R, init::InitError>,
) -> Result<(Negotiation, R), InitFailure> {
    let mut deadline = settings.deadline(clock);
    let mut seen: Option<Negotiation> = None;
    let requested = device_features | settings.core_features();
    let r = init::init(t, requested, &mut deadline, |t, n| {
        seen = Some(*n);
        let path = res.paths.choose(n.has(common::ACCESS_PLATFORM));
        res.path = Some(path);
        if let Some(d) = path.iommu {
            d.begin_epoch();
            res.iommu_start = Some(d.iommu_stats());
        }
        if path.dma.is_none() {
            return Err(InitError::Driver { what: path.reason });
        }
        setup(t, n, res)
    });
    let refused = res.path.is_some_and(|p| p.kind == DeviceDma::Refuse);
    let invalid = res.path.filter(|p| p.kind == DeviceDma::Invalid);
    r.map_err(|e| {
        let (offered, accepted) = match (seen, e) {
            (Some(n), _) => (n.offered, n.accepted),
            (
                None,
                init::InitError::FeaturesNotAccepted {
                    offered, accepted, ..
                },
            ) => (offered, accepted),
            (None, _) => {
                let mut offered = t.device_features();
                if t.is_legacy() {
                    offered &= u64::from(u32::MAX);
                }
                (offered, 0)
            }
        };
        InitFailure {
            offered,
            accepted,
            message: invalid.map_or_else(|| format!("init: {e}"), |p| p.failure()),
            refused,
        }
    })
}
