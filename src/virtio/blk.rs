//! virtio-blk (virtio 1.2, 5.2): capacity and limits from config space, the serial (get-id),
//! a checksummed read of the start of the disk with several requests in flight, the random
//! reads of `sg.blk.random`, and the pattern write and flush of `sg.blk.write` when this disk is
//! the one named. Each of the three transfers is timed on the calibrated clock, around the
//! transfer alone (the checksum and the pattern generation included: the guest does them as the
//! data moves).
//!
//! A request is three kinds of segment: the 16-byte header (device-readable) and the status byte
//! (device-writable) live in a shared region; the data is a heap buffer mapped for the request
//! and unmapped when it completes. Reads complete in any order; the checksum is taken in disk
//! order, so a completed request waits until the ones before it are in.
//!
//! The device is hostile: capacity and block size are checked before use, the status byte
//! starts as 0xff so that one the device never wrote shows, and a read that completes with
//! fewer bytes than asked is an error.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::driver::{
    Counters, DmaPaths, DriverRun, Outcome, QueueInfo, Resources, Settings, init_device, kick,
};
use super::features::blk as f;
use super::init::{self, InitError, Negotiation};
use super::queue::{AddError, Segment, Token};
use super::transport::{Transport, TransportError, read_config_consistent};
use super::wait::{Clock, WaitError};
use crate::cmdline::{BlkRead, BlkWrite};
use crate::crc32c::Crc32c;
use crate::dma::{Direction, DmaConstraints};
use crate::pattern::{self, splitmix64};

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;

const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
/// What the status byte holds until the device writes it.
const S_UNWRITTEN: u8 = 0xff;

const SECTOR: u64 = 512;
/// The get-id answer: at most 20 bytes, NUL-terminated when shorter.
const ID_BYTES: usize = 20;
/// The queue size asked for.
const QUEUE_SIZE: u16 = 256;
/// Data buffers in flight never take more than this (but at least two requests' worth, so the
/// device always has one to work on while the driver consumes the other).
///
/// More does not help and, under TCG, hurts: every buffer the CPU touches takes an entry of
/// QEMU's software TLB, and 16 MiB of buffers in flight thrashed it. 32 MiB read in 64 KiB
/// requests on q35: 16 requests in flight 137 ms, 256 requests 134-194 ms; on the bounce path,
/// which copies and zeroes every byte as well, 125-160 ms against 209-351 ms. It also keeps a
/// secure guest's requests well inside the default 4 MiB pool, without waiting for room.
const BUFFER_BUDGET: u64 = 1 << 20;
/// The largest `blk_size` accepted.
pub const MAX_BLOCK_SIZE: u32 = 64 << 10;
/// The seed of the `sg.blk.random` offsets.
pub const RANDOM_SEED: u64 = 0x7261_6e64;
/// The size of an `sg.blk.random` read, unless the block size is larger or `sg.blk.req` smaller.
pub const RANDOM_LEN: u32 = 4096;

/// The length of every `sg.blk.random` read on a disk of `block_size` whose requests carry at
/// most `req_len` bytes (whole blocks).
pub fn random_len(block_size: u32, req_len: u32) -> u32 {
    RANDOM_LEN.max(block_size).min(req_len)
}

/// The disk offset of random read `i` (from 0) of `len` bytes on a disk of `capacity` bytes:
/// block `splitmix64(RANDOM_SEED ^ i) % (capacity / len)` of `len` bytes. `None` when the disk
/// holds no whole block of `len` bytes. The harness computes the same offsets.
pub fn random_offset(i: u64, len: u64, capacity: u64) -> Option<u64> {
    let blocks = capacity.checked_div(len).filter(|&b| b > 0)?;
    Some(splitmix64(RANDOM_SEED ^ i) % blocks * len)
}

/// What the command line asks of this disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkParams {
    pub read: BlkRead,
    /// Only when `sg.blk.disk` names this disk.
    pub write: Option<BlkWrite>,
    /// Data bytes per request (a multiple of 512).
    pub req_bytes: u32,
    /// Requests in flight; `None`: the queue size.
    pub qd: Option<u16>,
    /// Random reads after the sequential read (`sg.blk.random`).
    pub random: u32,
}

impl Default for BlkParams {
    fn default() -> Self {
        BlkParams {
            read: BlkRead::All,
            write: None,
            req_bytes: 64 << 10,
            qd: None,
            random: 0,
        }
    }
}

/// The blk fields of the report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlkInfo {
    /// Bytes (config `capacity` × 512), once read and checked.
    pub capacity: Option<u64>,
    pub block_size: Option<u32>,
    /// What get-id returned, up to its first NUL; `None` when the device has no serial.
    pub serial: Option<String>,
    /// Bytes read and checksummed, in disk order.
    pub read_bytes: u64,
    pub read_crc32c: u32,
    /// Microseconds the read took, from its first request to its last completion (0 when the
    /// clock is not calibrated, or nothing was read): throughput without the init and teardown
    /// around it.
    pub read_us: u64,
    /// The write that `sg.blk.write` asked of this disk, and the CRC32C of the data written.
    pub write: Option<(BlkWrite, u32)>,
    /// A flush completed after the write.
    pub flushed: bool,
    /// Data bytes per read or write request, as the device's limits and the DMA path allowed.
    pub req_bytes: u32,
    /// The most read or write requests that were in flight at once.
    pub max_in_flight: u32,
    /// Microseconds the random reads and the write took, as `read_us` for the read.
    pub random_us: u64,
    pub write_us: u64,
    /// Random reads done, their bytes, and the CRC32C of their data in issue order.
    pub random_reads: u64,
    pub random_bytes: u64,
    pub random_crc32c: u32,
}

/// Config space as read (virtio 1.2, 5.2.4), before any check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RawConfig {
    capacity: u64,
    size_max: Option<u32>,
    seg_max: Option<u32>,
    blk_size: Option<u32>,
}

fn read_config<T: Transport + ?Sized>(
    t: &mut T,
    n: &Negotiation,
) -> Result<RawConfig, TransportError> {
    read_config_consistent(t, |t| {
        let lo = t.read_config_u32(0)?;
        let hi = t.read_config_u32(4)?;
        let opt = |t: &mut T, bit: u64, off: usize| -> Result<Option<u32>, TransportError> {
            if n.has(bit) {
                t.read_config_u32(off).map(Some)
            } else {
                Ok(None)
            }
        };
        Ok(RawConfig {
            capacity: u64::from(lo) | (u64::from(hi) << 32),
            size_max: opt(t, f::SIZE_MAX, 8)?,
            seg_max: opt(t, f::SEG_MAX, 12)?,
            blk_size: opt(t, f::BLK_SIZE, 20)?,
        })
    })
}

/// The checked geometry of the disk and of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geometry {
    capacity: u64,
    block_size: u32,
    /// The largest data segment (`size_max`).
    piece: usize,
    /// Data bytes per request: `sg.blk.req` within `seg_max` × `size_max`, whole blocks.
    req_len: u32,
}

/// `limits`: the DMA path's largest mapping and most data bytes per request
/// ([`Resources::limits`]): on the bounce path a request of `sg.blk.req` bytes becomes several
/// data segments of at most one mapping each, and never more than a quarter of the pool.
fn check_config(
    c: &RawConfig,
    queue_size: u16,
    req_bytes: u32,
    limits: (usize, usize),
) -> Result<Geometry, String> {
    let capacity = c.capacity.checked_mul(SECTOR).ok_or_else(|| {
        format!(
            "capacity of {} sectors overflows 64 bits of bytes",
            c.capacity
        )
    })?;
    let block_size = c.blk_size.unwrap_or(SECTOR as u32);
    if !block_size.is_power_of_two() || !(SECTOR as u32..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(format!(
            "blk_size {block_size} is not a power of two in 512..={MAX_BLOCK_SIZE}"
        ));
    }
    let piece = match c.size_max {
        None => u32::MAX,
        Some(s) if s < SECTOR as u32 => {
            return Err(format!("size_max {s} is below one sector"));
        }
        Some(s) => s,
    };
    let (max_mapping, max_request) = limits;
    // A mapping of whole sectors (a piece boundary inside a block is fine for the device, and
    // whole sectors keep every piece's length a multiple of 512).
    let map_limit = u32::try_from(max_mapping).unwrap_or(u32::MAX) & !(SECTOR as u32 - 1);
    if map_limit == 0 {
        return Err(format!(
            "the DMA path maps at most {max_mapping} bytes at once, less than one sector"
        ));
    }
    let piece = piece.min(map_limit);
    let req_bytes = req_bytes.min(u32::try_from(max_request).unwrap_or(u32::MAX));
    // Header and status take two descriptors of a chain no longer than the queue.
    let max_segments = u64::from(queue_size.saturating_sub(2).max(1));
    let segments = match c.seg_max {
        None => max_segments,
        Some(0) => return Err("seg_max is 0".into()),
        Some(s) => u64::from(s).min(max_segments),
    };
    let limit = (segments * u64::from(piece)).min(u64::from(req_bytes));
    let req_len = limit - limit % u64::from(block_size);
    if req_len == 0 {
        return Err(format!(
            "seg_max {} x size_max {} cannot carry one block of {block_size} bytes",
            segments, piece
        ));
    }
    Ok(Geometry {
        capacity,
        block_size,
        piece: piece as usize,
        req_len: req_len as u32,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Flush,
    GetId,
}

impl Kind {
    fn code(self) -> u32 {
        match self {
            Kind::Read => T_IN,
            Kind::Write => T_OUT,
            Kind::Flush => T_FLUSH,
            Kind::GetId => T_GET_ID,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Read => "read",
            Kind::Write => "write",
            Kind::Flush => "flush",
            Kind::GetId => "get-id",
        }
    }

    fn device_writes_data(self) -> bool {
        matches!(self, Kind::Read | Kind::GetId)
    }
}

/// Where the requests of a transfer go.
#[derive(Clone, Copy, Debug)]
enum Span {
    /// `total` bytes from disk offset `start`, in requests of at most `req_len` bytes (a
    /// request without data, a flush, is one request of length 0).
    Sequential {
        start: u64,
        total: u64,
        req_len: u64,
    },
    /// `count` requests of `len` bytes at [`random_offset`]s of a disk of `capacity` bytes.
    Random { count: u64, len: u64, capacity: u64 },
}

impl Span {
    fn requests(&self) -> u64 {
        match *self {
            Span::Sequential { total: 0, .. } => 1,
            Span::Sequential { total, req_len, .. } => total.div_ceil(req_len),
            Span::Random { count, .. } => count,
        }
    }

    fn max_len(&self) -> u64 {
        match *self {
            Span::Sequential { req_len, .. } => req_len,
            Span::Random { len, .. } => len,
        }
    }

    /// Disk offset and length of request `seq`.
    fn request(&self, seq: u64) -> (u64, u32) {
        match *self {
            Span::Sequential {
                start,
                total,
                req_len,
            } => (
                start + seq * req_len,
                (total - seq * req_len).min(req_len) as u32,
            ),
            Span::Random { len, capacity, .. } => {
                (random_offset(seq, len, capacity).unwrap_or(0), len as u32)
            }
        }
    }
}

/// One request in flight.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// Index into the request's pool buffer list.
    buf: usize,
    seq: u64,
    offset: u64,
    len: u32,
}

/// Runs the driver over `t`: init, the test, reset and cleanup.
pub fn run<T: Transport + ?Sized>(
    t: &mut T,
    paths: &DmaPaths<'_>,
    clock: &dyn Clock,
    settings: &Settings,
    params: &BlkParams,
) -> DriverRun<BlkInfo> {
    let mut res = Resources::new(paths);
    let mut info = BlkInfo::default();
    let features = f::SIZE_MAX | f::SEG_MAX | f::BLK_SIZE | f::RO | f::FLUSH;
    let init = init_device(t, features, settings, clock, &mut res, |t, n, res| {
        let config = read_config(t, n)?;
        let q = init::setup_queue(t, res.dma(), n, 0, QUEUE_SIZE, &DmaConstraints::NONE)?;
        res.queues.push(q);
        Ok::<_, InitError>(config)
    });
    let (negotiation, config) = match init {
        Ok(v) => v,
        Err(fail) => return res.init_failed(t, settings, clock, fail, info),
    };
    let queues: Vec<QueueInfo> = res.queues.iter().map(QueueInfo::of).collect();
    res.queues[0].set_interrupts(false);
    let mut blk = Blk {
        t: &mut *t,
        res: &mut res,
        clock,
        settings,
        counters: Counters::default(),
        pool: Vec::new(),
        geometry: None,
        max_in_flight: 0,
    };
    let result = blk.test(&negotiation, &config, params, &mut info);
    let counters = blk.counters;
    let outcome = match result {
        Ok(()) => Outcome::Ok,
        Err(e) => Outcome::Error(e),
    };
    res.finish(
        t,
        settings,
        clock,
        &negotiation,
        queues,
        counters,
        outcome,
        info,
    )
}

struct Blk<'a, 'd, T: ?Sized> {
    t: &'a mut T,
    res: &'a mut Resources<'d>,
    clock: &'a dyn Clock,
    settings: &'a Settings,
    counters: Counters,
    /// Indexes into `res.bufs` of the data buffers, reused from one transfer to the next.
    pool: Vec<usize>,
    geometry: Option<Geometry>,
    /// The most read or write requests in flight at once so far.
    max_in_flight: u32,
}

impl<T: Transport + ?Sized> Blk<'_, '_, T> {
    fn test(
        &mut self,
        n: &Negotiation,
        config: &RawConfig,
        params: &BlkParams,
        info: &mut BlkInfo,
    ) -> Result<(), String> {
        let queue_size = self.res.queues[0].size();
        let g = check_config(config, queue_size, params.req_bytes, self.res.limits())?;
        self.geometry = Some(g);
        info.capacity = Some(g.capacity);
        info.block_size = Some(g.block_size);
        info.req_bytes = g.req_len;
        let req_len = u64::from(g.req_len);

        info.serial = self.get_id()?;

        // The read: whole blocks, but the checksum covers exactly the bytes asked for.
        let read = params.read.bytes_of(g.capacity);
        let span = read
            .next_multiple_of(u64::from(g.block_size))
            .min(g.capacity);
        let mut crc = Crc32c::new();
        let mut done = 0u64;
        let qd = params.qd.unwrap_or(queue_size);
        let r = if span == 0 {
            Ok(())
        } else {
            let started = self.clock.now_us();
            let r = self.transfer(
                Kind::Read,
                Span::Sequential {
                    start: 0,
                    total: span,
                    req_len,
                },
                qd,
                &mut |_, _| {},
                &mut |_, data| {
                    let take = (read - done).min(data.len() as u64) as usize;
                    crc.update(&data[..take]);
                    done += take as u64;
                },
            );
            info.read_us = self.clock.now_us().saturating_sub(started);
            r
        };
        info.read_bytes = done;
        info.read_crc32c = crc.finish();
        info.max_in_flight = self.max_in_flight;
        r?;

        // Random reads, checksummed in issue order (the order `consume` sees them in).
        let len = u64::from(random_len(g.block_size, g.req_len));
        if params.random > 0 && random_offset(0, len, g.capacity).is_some() {
            let (mut crc, mut reads, mut bytes) = (Crc32c::new(), 0u64, 0u64);
            let started = self.clock.now_us();
            let r = self.transfer(
                Kind::Read,
                Span::Random {
                    count: params.random.into(),
                    len,
                    capacity: g.capacity,
                },
                qd,
                &mut |_, _| {},
                &mut |_, data| {
                    crc.update(data);
                    reads += 1;
                    bytes += data.len() as u64;
                },
            );
            info.random_us = self.clock.now_us().saturating_sub(started);
            (info.random_reads, info.random_bytes) = (reads, bytes);
            info.random_crc32c = crc.finish();
            info.max_in_flight = self.max_in_flight;
            r?;
        }

        let Some(w) = params.write else {
            return Ok(());
        };
        if n.has(f::RO) {
            return Err(format!(
                "sg.blk.write refused: the device is read-only (VIRTIO_BLK_F_RO); nothing was \
                 written at {}",
                w.offset
            ));
        }
        let bs = u64::from(g.block_size);
        if !w.offset.is_multiple_of(bs) || !w.len.is_multiple_of(bs) {
            return Err(format!(
                "sg.blk.write {}:{} is not in whole blocks of the device's {bs} bytes; nothing \
                 was written",
                w.offset, w.len
            ));
        }
        if w.offset
            .checked_add(w.len)
            .is_none_or(|end| end > g.capacity)
        {
            return Err(format!(
                "sg.blk.write {}:{} ends beyond the capacity of {} bytes; nothing was written",
                w.offset, w.len, g.capacity
            ));
        }
        let mut wcrc = Crc32c::new();
        let started = self.clock.now_us();
        let r = self.transfer(
            Kind::Write,
            Span::Sequential {
                start: w.offset,
                total: w.len,
                req_len,
            },
            qd,
            &mut |offset, buf| {
                pattern::fill(w.seed, offset, buf);
                wcrc.update(buf);
            },
            &mut |_, _| {},
        );
        info.write_us = self.clock.now_us().saturating_sub(started);
        info.max_in_flight = self.max_in_flight;
        r?;
        info.write = Some((w, wcrc.finish()));
        if n.has(f::FLUSH) {
            self.single(Kind::Flush)?;
            info.flushed = true;
        }
        Ok(())
    }

    /// get-id: the serial, or `None` when the device does not support it.
    fn get_id(&mut self) -> Result<Option<String>, String> {
        let (status, data) = self.single(Kind::GetId)?;
        if status != S_OK {
            return Ok(None);
        }
        let data = &data[..ID_BYTES];
        let end = data.iter().position(|&b| b == 0).unwrap_or(ID_BYTES);
        Ok(Some(String::from_utf8_lossy(&data[..end]).into_owned()))
    }

    /// A request without data to stream (get-id, flush). Returns its status (for get-id also
    /// `S_IOERR` / `S_UNSUPP`; for flush only `S_OK`, anything else is an error) and the data.
    fn single(&mut self, kind: Kind) -> Result<(u8, Vec<u8>), String> {
        let mut out = (S_OK, Vec::new());
        let len = if kind == Kind::GetId {
            ID_BYTES as u64
        } else {
            0
        };
        self.transfer(
            kind,
            Span::Sequential {
                start: 0,
                total: len,
                req_len: len.max(1),
            },
            1,
            &mut |_, _| {},
            &mut |status, data| {
                out = (status, data.to_vec());
            },
        )?;
        Ok(out)
    }

    /// Moves the requests of `span` with up to `qd` in flight. `fill(offset, buf)` provides
    /// write data; `consume(status, data)` sees each request's data in issue order (for a
    /// sequential span, disk order). One instance for every kind of transfer (the callbacks are
    /// `dyn`, called once per request): each generic copy would cost kilobytes of image.
    #[inline(never)]
    fn transfer(
        &mut self,
        kind: Kind,
        span: Span,
        qd: u16,
        fill: &mut dyn FnMut(u64, &mut [u8]),
        consume: &mut dyn FnMut(u8, &[u8]),
    ) -> Result<(), String> {
        let g = self.geometry.expect("geometry is known before any request");
        let dma = self.res.dma();
        let nreq = span.requests();
        let has_data = !matches!(span, Span::Sequential { total: 0, .. });
        let budget = (BUFFER_BUDGET / span.max_len().max(1)).max(2);
        let slots = u64::from(qd.max(1))
            .min(u64::from(self.res.queues[0].size()))
            .min(nreq)
            .min(budget) as usize;

        // Header (16 bytes) and status (1 byte) of every slot in one shared region.
        let region = self.res.alloc_region(17 * slots, 16)?;
        let status_at = |slot: usize| 16 * slots + slot;
        while self.pool.len() < slots && has_data {
            let b = self
                .res
                .alloc_buf(g.req_len.max(ID_BYTES as u32) as usize)?;
            self.pool.push(b);
        }

        let mut free: VecDeque<usize> = (0..slots).collect();
        let mut by_token: Vec<Option<Slot>> = vec![None; usize::from(self.res.queues[0].size())];
        let mut done: Vec<Option<(Slot, u8)>> = vec![None; slots];
        let mut filled: Vec<Option<u64>> = vec![None; slots];
        let (mut issued, mut consumed, mut outstanding) = (0u64, 0u64, 0u32);
        let mut deadline = self.settings.deadline(self.clock);
        let direction = if kind.device_writes_data() {
            Direction::FromDevice
        } else {
            Direction::ToDevice
        };

        while consumed < nreq {
            // Issue as much as the slots and the ring allow.
            while issued < nreq {
                let Some(slot_index) = free.pop_front() else {
                    break;
                };
                let (offset, len) = span.request(issued);
                let slot = Slot {
                    buf: slot_index,
                    seq: issued,
                    offset,
                    len,
                };
                let r = &self.res.regions[region];
                let h = 16 * slot_index;
                r.write_u32(h, kind.code());
                r.write_u32(h + 4, 0);
                r.write_u64(
                    h + 8,
                    if kind == Kind::Flush {
                        0
                    } else {
                        offset / SECTOR
                    },
                );
                r.write_u8(status_at(slot_index), S_UNWRITTEN);
                let mut segments = vec![Segment::in_region(r, h, 16, false)];
                if len > 0 {
                    let buf = &mut self.res.bufs[self.pool[slot_index]];
                    // Filled once per request: a request retried after back-pressure keeps
                    // its data (and `fill` sees every offset once, in disk order).
                    if kind == Kind::Write && filled[slot_index] != Some(offset) {
                        fill(offset, &mut buf.bytes_mut()[..len as usize]);
                        filled[slot_index] = Some(offset);
                    }
                    match buf.map(dma, len as usize, g.piece, direction, &DmaConstraints::NONE) {
                        Ok(data) => segments.extend(data),
                        // The shared pool is full: back-pressure, not failure. Wait for a
                        // completion (which unmaps and so frees slots) and issue this one again.
                        Err(e) if e.is_transient() && outstanding > 0 => {
                            free.push_front(slot_index);
                            break;
                        }
                        Err(e) => {
                            return Err(format!("{} buffer of {len} bytes: {e}", kind.name()));
                        }
                    }
                }
                segments.push(Segment::in_region(r, status_at(slot_index), 1, true));
                match self.res.queues[0].add(&segments) {
                    Ok(token) => {
                        by_token[token.index()] = Some(slot);
                        issued += 1;
                        outstanding += 1;
                        if matches!(kind, Kind::Read | Kind::Write) {
                            self.max_in_flight = self.max_in_flight.max(outstanding);
                        }
                    }
                    Err(e) => {
                        let buf = &mut self.res.bufs[self.pool[slot_index]];
                        // SAFETY: `add` failed, so the device never saw the buffer.
                        let _ = unsafe { buf.unmap(dma) };
                        if e.is_transient() && outstanding > 0 {
                            free.push_front(slot_index);
                            break;
                        }
                        return Err(add_error(kind, &slot, e));
                    }
                }
            }
            kick(&mut *self.t, &mut self.res.queues[0], &mut self.counters);

            // One completion.
            let c = match self.res.queues[0].wait_used(&mut deadline) {
                Ok(c) => c,
                Err(WaitError::TimedOut { elapsed_us, polls }) => {
                    let oldest = by_token.iter().flatten().min_by_key(|s| s.seq);
                    return Err(format!(
                        "timeout after {} ms: {outstanding} {} request(s) outstanding{} \
                         ({elapsed_us} us, {polls} polls)",
                        self.settings.timeout_ms(),
                        kind.name(),
                        oldest.map_or(String::new(), |s| format!(
                            ", the oldest of {} bytes at offset {}",
                            s.len, s.offset
                        )),
                    ));
                }
                Err(WaitError::Ring(e)) => return Err(format!("{} queue: {e}", kind.name())),
            };
            deadline = self.settings.deadline(self.clock);
            let slot = take_slot(&mut by_token, c.token).ok_or_else(|| {
                format!(
                    "completion of token {} that names no request",
                    c.token.index()
                )
            })?;
            outstanding -= 1;
            let buf = &mut self.res.bufs[self.pool[slot.buf]];
            // SAFETY: the device completed the request, so it is done with its buffer.
            let _ = unsafe { buf.unmap(dma) };
            let status = self.res.regions[region].read_u8(status_at(slot.buf));
            check_status(kind, &slot, status)?;
            if kind == Kind::Read
                && status == S_OK
                && u64::from(c.written_len) < u64::from(slot.len) + 1
            {
                return Err(format!(
                    "read of {} bytes at offset {} completed with {} bytes written (data and \
                     status need {})",
                    slot.len,
                    slot.offset,
                    c.written_len,
                    slot.len + 1
                ));
            }
            self.counters.requests += 1;
            if status == S_OK {
                if kind.device_writes_data() {
                    self.counters.bytes_from_device += u64::from(slot.len);
                } else {
                    self.counters.bytes_to_device += u64::from(slot.len);
                }
            }
            done[slot.buf] = Some((slot, status));

            // Hand over, in issue order, whatever is complete.
            loop {
                let next = done
                    .iter()
                    .position(|d| d.is_some_and(|(s, _)| s.seq == consumed));
                let Some(i) = next else { break };
                let (s, status) = done[i].take().expect("found above");
                let data = if s.len > 0 {
                    &self.res.bufs[self.pool[s.buf]].bytes()[..s.len as usize]
                } else {
                    &[][..]
                };
                consume(status, data);
                free.push_back(i);
                consumed += 1;
            }
        }
        Ok(())
    }
}

fn take_slot(by_token: &mut [Option<Slot>], token: Token) -> Option<Slot> {
    by_token.get_mut(token.index())?.take()
}

fn add_error(kind: Kind, slot: &Slot, e: AddError) -> String {
    format!(
        "{} of {} bytes at offset {}: the ring refused it: {e}",
        kind.name(),
        slot.len,
        slot.offset
    )
}

/// The status byte: OK goes on; IOERR and UNSUPP are device errors (get-id: no serial); anything
/// else breaks the protocol.
fn check_status(kind: Kind, slot: &Slot, status: u8) -> Result<(), String> {
    let what = match kind {
        Kind::Read | Kind::Write => format!(
            "{} of {} bytes at offset {} (sector {})",
            kind.name(),
            slot.len,
            slot.offset,
            slot.offset / SECTOR
        ),
        _ => String::from(kind.name()),
    };
    match status {
        S_OK => Ok(()),
        S_IOERR | S_UNSUPP if kind == Kind::GetId => Ok(()),
        S_IOERR => Err(format!("{what}: device returned VIRTIO_BLK_S_IOERR")),
        S_UNSUPP => Err(format!("{what}: device returned VIRTIO_BLK_S_UNSUPP")),
        S_UNWRITTEN => Err(format!("{what}: completed without writing the status byte")),
        s => Err(format!("{what}: invalid status byte {s:#04x}")),
    }
}

#[cfg(test)]
pub(crate) mod tests;
