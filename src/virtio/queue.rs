//! What both ring formats share: segments, tokens, completions, errors, and [`Virtqueue`], the
//! one type drivers use whichever format was negotiated.

use alloc::vec::Vec;
use core::fmt;

use super::packed::PackedQueue;
use super::split::SplitQueue;
use super::transport::QueueAddresses;
use super::wait::{Deadline, WaitError};
use crate::dma::{DeviceAddr, Direction, Dma, DmaConstraints, DmaError, Mapping, SharedRegion};

/// Largest queue either format allows (virtio 1.2: 2^15 entries).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// One device-contiguous piece of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: DeviceAddr,
    pub len: u32,
    /// The device writes it (otherwise it only reads it).
    pub device_writable: bool,
}

impl Segment {
    pub const fn readable(addr: DeviceAddr, len: u32) -> Self {
        Segment {
            addr,
            len,
            device_writable: false,
        }
    }

    pub const fn writable(addr: DeviceAddr, len: u32) -> Self {
        Segment {
            addr,
            len,
            device_writable: true,
        }
    }

    /// The segment for a whole streaming mapping: writable when the device writes it. `None`
    /// when the mapping is longer than a descriptor can describe (4 GiB). A `Bidirectional`
    /// mapping becomes one writable descriptor (virtio has no read-write descriptors).
    pub fn from_mapping(mapping: &Mapping) -> Option<Self> {
        let len = u32::try_from(mapping.len()).ok()?;
        Some(Segment {
            addr: mapping.device_addr(),
            len,
            device_writable: mapping.direction() != Direction::ToDevice,
        })
    }

    /// The segment for `len` bytes at `offset` of a shared region.
    pub fn in_region(
        region: &SharedRegion,
        offset: usize,
        len: u32,
        device_writable: bool,
    ) -> Self {
        Segment {
            addr: region.device_addr_at(offset),
            len,
            device_writable,
        }
    }
}

/// Names an outstanding request. `index() < queue size`, unique among outstanding requests: a
/// driver may index its per-request state with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub(crate) u16);

impl Token {
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// A request the device has finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub token: Token,
    /// Bytes the device says it wrote, already checked against the request's writable capacity.
    pub written_len: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingFormat {
    Split,
    Packed,
}

impl RingFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            RingFormat::Split => "split",
            RingFormat::Packed => "packed",
        }
    }
}

/// How to build a queue; [`crate::virtio::init::setup_queue`] derives it from the negotiation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// The queue's index on its device (for `Transport::notify`).
    pub index: u16,
    pub size: u16,
    /// `VIRTIO_F_EVENT_IDX` was negotiated.
    pub event_idx: bool,
    /// `VIRTIO_F_INDIRECT_DESC` was negotiated: requests of more than one segment use an
    /// indirect table.
    pub indirect: bool,
    /// Split only: the legacy layout (one page-aligned block, used ring on the next page).
    pub legacy_layout: bool,
}

/// Why a queue could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// The size is 0, too large, or not a power of two for a split ring.
    SizeInvalid { size: u16 },
    /// The packed ring has no legacy layout.
    PackedLegacy,
    /// The ring memory could not be had.
    Dma(DmaError),
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::SizeInvalid { size } => write!(f, "invalid queue size {size}"),
            QueueError::PackedLegacy => f.write_str("packed ring with the legacy layout"),
            QueueError::Dma(e) => write!(f, "ring memory: {e}"),
        }
    }
}

/// Why `add` refused a request. Nothing was made available to the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddError {
    /// No segments.
    Empty,
    /// More segments than the queue size (the spec's limit on any chain).
    TooManySegments { count: usize, max: u16 },
    /// A zero-length segment (QEMU marks the device broken on one).
    ZeroLength { index: usize },
    /// A device-readable segment after a device-writable one (the spec forbids it).
    ReadableAfterWritable { index: usize },
    /// Not enough free descriptors right now: pop completions and retry.
    Full { needed: u16, free: u16 },
    /// The indirect table could not be allocated and the chain does not fit without one.
    Dma(DmaError),
    /// The device broke this queue earlier; reset the device.
    Broken(RingError),
}

impl AddError {
    /// Whether completing outstanding requests may make a retry succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            AddError::Full { .. } => true,
            AddError::Dma(e) => e.is_transient(),
            _ => false,
        }
    }
}

impl fmt::Display for AddError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddError::Empty => f.write_str("request without segments"),
            AddError::TooManySegments { count, max } => {
                write!(f, "{count} segments, queue size {max}")
            }
            AddError::ZeroLength { index } => write!(f, "segment {index} has length 0"),
            AddError::ReadableAfterWritable { index } => {
                write!(
                    f,
                    "device-readable segment {index} after a device-writable one"
                )
            }
            AddError::Full { needed, free } => {
                write!(f, "queue full: {needed} needed, {free} free")
            }
            AddError::Dma(e) => write!(f, "indirect table: {e}"),
            AddError::Broken(e) => write!(f, "queue broken: {e}"),
        }
    }
}

/// The device broke the ring protocol. Carries what was seen, for the report. After one of
/// these the queue refuses all work until the device is reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// Split: the used index moved further than the number of outstanding requests (or back).
    UsedIdxJump {
        last_seen: u16,
        now: u16,
        outstanding: u16,
    },
    /// A used id beyond the queue (split: descriptor index; packed: buffer id).
    IdOutOfRange { id: u32, size: u16 },
    /// Split: the used id is a descriptor inside a chain, not its head.
    NotAHead { id: u16, head: u16 },
    /// The used id was completed before and not reused since.
    DuplicateCompletion { id: u16 },
    /// The used id names nothing outstanding.
    NotOutstanding { id: u16 },
    /// The device claims to have written more than the request's device-writable bytes.
    WrittenTooLong {
        id: u16,
        written: u32,
        capacity: u64,
    },
    /// Packed: the flags of the descriptor at the next used position are not a state the ring
    /// can be in (AVAIL and USED disagree with the wrap counter).
    UsedFlagsInconsistent {
        position: u16,
        flags: u16,
        used_wrap: bool,
    },
}

impl RingError {
    /// A stable name for reports.
    pub fn as_str(&self) -> &'static str {
        match self {
            RingError::UsedIdxJump { .. } => "used-idx-jump",
            RingError::IdOutOfRange { .. } => "id-out-of-range",
            RingError::NotAHead { .. } => "not-a-head",
            RingError::DuplicateCompletion { .. } => "duplicate-completion",
            RingError::NotOutstanding { .. } => "not-outstanding",
            RingError::WrittenTooLong { .. } => "written-too-long",
            RingError::UsedFlagsInconsistent { .. } => "used-flags-inconsistent",
        }
    }
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RingError::UsedIdxJump {
                last_seen,
                now,
                outstanding,
            } => write!(
                f,
                "used idx went from {last_seen} to {now} with {outstanding} requests outstanding"
            ),
            RingError::IdOutOfRange { id, size } => write!(f, "used id {id} >= queue size {size}"),
            RingError::NotAHead { id, head } => {
                write!(f, "used id {id} is inside the chain headed by {head}")
            }
            RingError::DuplicateCompletion { id } => write!(f, "used id {id} completed twice"),
            RingError::NotOutstanding { id } => write!(f, "used id {id} is not outstanding"),
            RingError::WrittenTooLong {
                id,
                written,
                capacity,
            } => {
                write!(
                    f,
                    "used id {id}: {written} bytes written, {capacity} writable"
                )
            }
            RingError::UsedFlagsInconsistent {
                position,
                flags,
                used_wrap,
            } => write!(
                f,
                "descriptor {position} has flags {flags:#06x} with used wrap counter {}",
                u8::from(used_wrap)
            ),
        }
    }
}

/// Checks a request and returns its device-writable capacity in bytes.
pub(crate) fn check_segments(segments: &[Segment], size: u16) -> Result<u64, AddError> {
    if segments.is_empty() {
        return Err(AddError::Empty);
    }
    if segments.len() > usize::from(size) {
        return Err(AddError::TooManySegments {
            count: segments.len(),
            max: size,
        });
    }
    let mut seen_writable = false;
    let mut capacity = 0u64;
    for (index, s) in segments.iter().enumerate() {
        if s.len == 0 {
            return Err(AddError::ZeroLength { index });
        }
        if s.device_writable {
            seen_writable = true;
            capacity += u64::from(s.len);
        } else if seen_writable {
            return Err(AddError::ReadableAfterWritable { index });
        }
    }
    Ok(capacity)
}

/// What the driver knows of a request in flight (kept in private memory, never in the ring).
#[derive(Debug)]
pub(crate) struct InFlight {
    /// Ring descriptors the request occupies (1 with an indirect table).
    pub descriptors: u16,
    /// Device-writable bytes.
    pub capacity: u64,
    pub indirect: Option<SharedRegion>,
}

/// Gives back the indirect tables of the requests still in flight, then the ring's own areas.
/// Every region is tried; the first error is returned.
///
/// # Safety
/// The device no longer uses any of them (it was reset).
pub(crate) unsafe fn free_queue_memory(
    dma: &dyn Dma,
    in_flight: &mut [Option<InFlight>],
    areas: impl IntoIterator<Item = SharedRegion>,
) -> Result<(), DmaError> {
    let mut result = Ok(());
    let tables = in_flight
        .iter_mut()
        .filter_map(Option::take)
        .filter_map(|f| f.indirect);
    for region in tables.chain(areas) {
        // SAFETY: the device no longer uses anything of this queue (caller contract).
        let r = unsafe { dma.free_shared(region) };
        if result.is_ok() {
            result = r;
        }
    }
    result
}

/// What a new request needs, decided the same way for both ring formats: the chain's
/// device-writable capacity, the indirect table it goes through (when indirect descriptors were
/// negotiated, the chain is longer than one, and a table could be allocated), and how many ring
/// slots it takes. Fails when the queue is broken, the segments are malformed, or the ring has
/// fewer than `needed` free slots (`AddError::Full`, transient).
pub(crate) struct PlannedRequest {
    pub capacity: u64,
    pub table: Option<SharedRegion>,
    pub needed: u16,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn plan_request(
    broken: Option<RingError>,
    dma: &dyn Dma,
    table_constraints: &DmaConstraints,
    segments: &[Segment],
    size: u16,
    indirect: bool,
    free: u16,
    write_entry: impl Fn(&SharedRegion, usize, &Segment),
) -> Result<PlannedRequest, AddError> {
    if let Some(e) = broken {
        return Err(AddError::Broken(e));
    }
    let capacity = check_segments(segments, size)?;
    let mut table = None;
    if indirect && segments.len() > 1 {
        if free == 0 {
            return Err(AddError::Full { needed: 1, free: 0 });
        }
        match build_indirect_table(dma, table_constraints, segments, write_entry) {
            Ok(t) => table = Some(t),
            // Without a table the request may still fit as a plain chain.
            Err(e) if segments.len() > usize::from(free) => return Err(AddError::Dma(e)),
            Err(_) => {}
        }
    }
    // `check_segments` bounded the count by the queue size, which fits in u16.
    let needed = if table.is_some() {
        1
    } else {
        segments.len() as u16
    };
    // With a table `needed` is 1 and `free` was checked above, so only a plain chain can fail
    // here, and no table is lost.
    if needed > free {
        return Err(AddError::Full { needed, free });
    }
    Ok(PlannedRequest {
        capacity,
        table,
        needed,
    })
}

/// Allocates and fills an indirect table; `write` stores descriptor `i` at byte offset `16 * i`.
pub(crate) fn build_indirect_table(
    dma: &dyn Dma,
    constraints: &DmaConstraints,
    segments: &[Segment],
    write: impl Fn(&SharedRegion, usize, &Segment),
) -> Result<SharedRegion, DmaError> {
    let table = dma.alloc_shared(16 * segments.len(), 16, constraints)?;
    for (i, s) in segments.iter().enumerate() {
        write(&table, i, s);
    }
    Ok(table)
}

/// A virtqueue of either format.
pub enum Virtqueue<'d> {
    Split(SplitQueue<'d>),
    Packed(PackedQueue<'d>),
}

/// Forwards a method to whichever ring this is.
macro_rules! both {
    ($self:expr, $q:ident => $e:expr) => {
        match $self {
            Virtqueue::Split($q) => $e,
            Virtqueue::Packed($q) => $e,
        }
    };
}

impl<'d> Virtqueue<'d> {
    /// Builds a queue of `format` in memory from `dma` within `constraints`. Drivers normally use
    /// [`crate::virtio::init::setup_queue`], which also tells the transport.
    pub fn new(
        dma: &'d dyn Dma,
        format: RingFormat,
        config: QueueConfig,
        constraints: &DmaConstraints,
    ) -> Result<Self, QueueError> {
        Ok(match format {
            RingFormat::Split => Virtqueue::Split(SplitQueue::new(dma, config, constraints)?),
            RingFormat::Packed => Virtqueue::Packed(PackedQueue::new(dma, config, constraints)?),
        })
    }

    pub fn format(&self) -> RingFormat {
        match self {
            Virtqueue::Split(_) => RingFormat::Split,
            Virtqueue::Packed(_) => RingFormat::Packed,
        }
    }

    /// The queue's index on its device: what to pass to `Transport::notify`.
    pub fn index(&self) -> u16 {
        both!(self, q => q.config().index)
    }

    pub fn size(&self) -> u16 {
        both!(self, q => q.config().size)
    }

    pub fn config(&self) -> QueueConfig {
        both!(self, q => q.config())
    }

    /// Where the device finds the three areas.
    pub fn addresses(&self) -> QueueAddresses {
        both!(self, q => q.addresses())
    }

    /// Makes a request available. The segments are device addresses from [`Dma`]; the
    /// buffers behind them must stay mapped until the token comes back from `pop_used` (or the
    /// device is reset). Returns the token that `pop_used` will report.
    pub fn add(&mut self, segments: &[Segment]) -> Result<Token, AddError> {
        both!(self, q => q.add(segments))
    }

    /// Whether the device must be notified of the requests added since the last call (event
    /// index or NO_NOTIFY flag, read after a full barrier). False when nothing was added.
    pub fn should_notify(&mut self) -> bool {
        both!(self, q => q.should_notify())
    }

    /// The next completion, if any. A [`RingError`] breaks the queue.
    pub fn pop_used(&mut self) -> Result<Option<Completion>, RingError> {
        both!(self, q => q.pop_used())
    }

    /// Polls `pop_used` until a completion arrives or `deadline` runs out.
    pub fn wait_used(&mut self, deadline: &mut Deadline<'_>) -> Result<Completion, WaitError> {
        loop {
            if let Some(c) = self.pop_used()? {
                return Ok(c);
            }
            if deadline.expired() {
                return Err(WaitError::TimedOut {
                    elapsed_us: deadline.elapsed_us(),
                    polls: deadline.polls(),
                });
            }
            core::hint::spin_loop();
        }
    }

    /// Asks the device for used-buffer interrupts, or not. This guest polls, so drivers usually
    /// turn them off; with event index, "on" means "for the next completion".
    pub fn set_interrupts(&mut self, enabled: bool) {
        both!(self, q => q.set_interrupts(enabled))
    }

    /// Requests made available and not completed yet.
    pub fn outstanding_count(&self) -> u16 {
        both!(self, q => q.outstanding_count())
    }

    /// Their tokens, for cleaning up after a reset.
    pub fn outstanding(&self) -> Vec<Token> {
        both!(self, q => q.outstanding())
    }

    /// Free ring descriptors: a request of `n` segments fits without indirect if `n <=` this.
    pub fn free_descriptors(&self) -> u16 {
        both!(self, q => q.free_descriptors())
    }

    /// The protocol violation that broke the queue, if one did.
    pub fn broken(&self) -> Option<RingError> {
        both!(self, q => q.broken())
    }

    /// Indirect tables that could not be given back (the [`Dma`] refused); for the report.
    pub fn dma_free_failures(&self) -> u64 {
        both!(self, q => q.dma_free_failures())
    }

    /// Gives the ring memory and every indirect table back.
    ///
    /// # Safety
    /// The device no longer uses the queue: it was reset (or the queue reset) since the queue's
    /// addresses were given to it.
    pub unsafe fn free(self) -> Result<(), DmaError> {
        // SAFETY: forwarded contract.
        both!(self, q => unsafe { q.free() })
    }
}
