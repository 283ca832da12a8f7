//! What the device drivers (blk, net, console, rng) share: the settings from the command line,
//! counters for the report, heap buffers lent to a device, and the teardown that resets a
//! device before anything it was given is taken back.
//!
//! Every driver follows the same shape:
//!
//! 1. `init::init` with its device bits plus [`Settings::core_features`]; queues are built in
//!    the setup closure and pushed into a [`Resources`] right away, so that a failure halfway
//!    still reclaims them;
//! 2. its test, with every buffer from [`DmaBuf`] / a shared region in the same [`Resources`],
//!    and every wait bounded by a [`Deadline`] from [`Settings::deadline`];
//! 3. [`Resources::release`]: reset the device (bounded), and only if the reset completed, unmap
//!    and free everything. A device that does not reset keeps its memory: leaking is safe, giving
//!    memory back that a device may still write is not.

use alloc::alloc::{alloc_zeroed, dealloc};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::ptr::NonNull;

use super::features::common;
use super::init::{self, Negotiation};
use super::queue::{RingFormat, Segment, Virtqueue};
use super::transport::Transport;
use super::wait::{Clock, Deadline};
use crate::dma::{Direction, Dma, DmaConstraints, DmaError, Mapping, SharedRegion};

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
/// [`Resources::release`], after a reset.
pub struct Resources<'d> {
    dma: &'d dyn Dma,
    pub queues: Vec<Virtqueue<'d>>,
    pub regions: Vec<SharedRegion>,
    pub bufs: Vec<DmaBuf>,
}

impl<'d> Resources<'d> {
    pub fn new(dma: &'d dyn Dma) -> Self {
        Resources {
            dma,
            queues: Vec::new(),
            regions: Vec::new(),
            bufs: Vec::new(),
        }
    }

    pub fn dma(&self) -> &'d dyn Dma {
        self.dma
    }

    /// A shared region of `size` bytes; returns its index in `regions`.
    pub fn alloc_region(&mut self, size: usize, align: usize) -> Result<usize, String> {
        let r = self
            .dma
            .alloc_shared(size, align, &DmaConstraints::NONE)
            .map_err(|e| format!("shared memory of {size} bytes: {e}"))?;
        self.regions.push(r);
        Ok(self.regions.len() - 1)
    }

    /// A heap buffer of `len` bytes; returns its index in `bufs`.
    pub fn alloc_buf(&mut self, len: usize) -> Result<usize, String> {
        let b = DmaBuf::new(len).map_err(|e| format!("buffer of {len} bytes: {e}"))?;
        self.bufs.push(b);
        Ok(self.bufs.len() - 1)
    }

    /// Resets the device (within one timeout) and, once it is reset, unmaps every buffer and
    /// frees every region and queue. If the reset does not complete, nothing is given back (the
    /// device may still use it) and the error says so.
    pub fn release<T: Transport + ?Sized>(
        self,
        t: &mut T,
        settings: &Settings,
        clock: &dyn Clock,
    ) -> Result<(), String> {
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
        let dma = self.dma;
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

/// How a device's test ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The device misbehaved or failed: what it did.
    Error(String),
    /// Nothing was asked of it.
    Skipped,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error(_) => "error",
            Outcome::Skipped => "skipped",
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
    /// The device-specific results.
    pub specific: S,
}

/// An init that failed: what the report can still say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitFailure {
    pub offered: u64,
    pub accepted: u64,
    pub message: String,
}

/// `init::init` with the driver's feature bits plus the core's, one timeout for the reset, and
/// a setup closure that puts its queues into `res` (so they are reclaimed whatever happens).
/// On failure the negotiation is still known when it got that far.
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
        setup(t, n, res)
    });
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
            message: format!("init: {e}"),
        }
    })
}
