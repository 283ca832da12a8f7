//! virtio-console (virtio 1.2, 5.3), port 0 only: no `MULTIPORT`, so queue 0 receives and
//! queue 1 transmits for the console port.
//!
//! The guest writes the 61-byte line of docs/report.md ("The data the guest moves"), then reads
//! what the host sends until a newline (included), `sg.console.read` bytes, or one timeout,
//! whichever comes first. Receive buffers are posted before the line is written, so input the
//! host had ready is not lost. A read that ends by timeout is no error: the host may have had
//! nothing to say.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::driver::{
    Counters, DmaPaths, DriverRun, Outcome, QueueInfo, Resources, Settings, init_device, kick,
};
use super::init::{self, InitError};
use super::transport::Transport;
use super::wait::{Clock, WaitError};
use crate::crc32c::crc32c;
use crate::dma::{Direction, DmaConstraints};
use crate::pattern;

const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
const QUEUE_SIZE: u16 = 64;
/// Receive buffers posted at once.
const RX_SLOTS: usize = 4;
/// `read_text` is reported for reads up to this long.
pub const READ_TEXT_MAX: usize = 256;
/// The seed of the 16 pattern bytes in the line.
pub const LINE_SEED: u64 = 0xc0;

/// The line the guest writes: `secure-guest virtio-console `, 32 hex digits, newline.
pub fn line() -> Vec<u8> {
    let mut p = [0u8; 16];
    pattern::fill(LINE_SEED, 0, &mut p);
    let mut l = Vec::from(&b"secure-guest virtio-console "[..]);
    for b in p {
        l.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    l.push(b'\n');
    l
}

/// The console fields of the report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsoleInfo {
    pub written_bytes: u64,
    pub written_crc32c: u32,
    /// What was read.
    pub read: Vec<u8>,
}

impl ConsoleInfo {
    /// What was read as text: when it is printable ASCII (a newline allowed at the end) and at
    /// most [`READ_TEXT_MAX`] bytes.
    pub fn read_text(&self) -> Option<&str> {
        let body = self.read.strip_suffix(b"\n").unwrap_or(&self.read);
        let printable = body.iter().all(|b| (0x20..0x7f).contains(b));
        (printable && self.read.len() <= READ_TEXT_MAX)
            .then(|| core::str::from_utf8(&self.read).ok())
            .flatten()
    }
}

/// Runs the driver over `t`: init, write the line, read, reset and cleanup.
pub fn run<T: Transport + ?Sized>(
    t: &mut T,
    paths: &DmaPaths<'_>,
    clock: &dyn Clock,
    settings: &Settings,
    read_limit: u32,
) -> DriverRun<ConsoleInfo> {
    let mut res = Resources::new(paths);
    let mut info = ConsoleInfo::default();
    let init = init_device(t, 0, settings, clock, &mut res, |t, n, res| {
        for q in [RX_QUEUE, TX_QUEUE] {
            let vq = init::setup_queue(t, res.dma(), n, q, QUEUE_SIZE, &DmaConstraints::NONE)?;
            res.queues.push(vq);
        }
        Ok::<_, InitError>(())
    });
    let negotiation = match init {
        Ok((n, ())) => n,
        Err(fail) => return res.init_failed(t, settings, clock, fail, info),
    };
    let queues: Vec<QueueInfo> = res.queues.iter().map(QueueInfo::of).collect();
    for q in &mut res.queues {
        q.set_interrupts(false);
    }
    let mut counters = Counters::default();
    let result = test(
        t,
        &mut res,
        clock,
        settings,
        &mut counters,
        read_limit,
        &mut info,
    );
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

fn test<T: Transport + ?Sized>(
    t: &mut T,
    res: &mut Resources<'_>,
    clock: &dyn Clock,
    settings: &Settings,
    counters: &mut Counters,
    read_limit: u32,
    info: &mut ConsoleInfo,
) -> Result<(), String> {
    let dma = res.dma();
    let limit = read_limit as usize;

    // Receive buffers first: the host may have input waiting.
    let rx_slots = if limit == 0 {
        0
    } else {
        RX_SLOTS.min(usize::from(res.queues[usize::from(RX_QUEUE)].size()))
    };
    let mut rx_by_token: Vec<Option<usize>> =
        vec![None; usize::from(res.queues[usize::from(RX_QUEUE)].size())];
    let mut rx_bufs = Vec::new();
    for slot in 0..rx_slots {
        let b = res.alloc_buf(limit)?;
        rx_bufs.push(b);
        if !post_rx(res, b, slot, limit, &mut rx_by_token)? {
            // The shared pool is full: fewer receive buffers will do, but not none.
            if slot == 0 {
                return Err("receive buffer: the shared pool has no room for one".into());
            }
            break;
        }
    }
    if rx_slots > 0 {
        kick(t, &mut res.queues[usize::from(RX_QUEUE)], counters);
    }

    // The line.
    let line = line();
    let tx = res.alloc_buf(line.len())?;
    res.bufs[tx].bytes_mut().copy_from_slice(&line);
    let piece = line.len().min(res.limits().0);
    let data = res.bufs[tx]
        .map(
            dma,
            line.len(),
            piece,
            Direction::ToDevice,
            &DmaConstraints::NONE,
        )
        .map_err(|e| format!("line buffer: {e}"))?;
    if let Err(e) = res.queues[usize::from(TX_QUEUE)].add(&data) {
        // SAFETY: `add` failed: the device never saw the buffer.
        let _ = unsafe { res.bufs[tx].unmap(dma) };
        return Err(format!("write: the ring refused it: {e}"));
    }
    kick(t, &mut res.queues[usize::from(TX_QUEUE)], counters);
    let mut deadline = settings.deadline(clock);
    match res.queues[usize::from(TX_QUEUE)].wait_used(&mut deadline) {
        Ok(_) => {}
        Err(WaitError::TimedOut { .. }) => {
            return Err(format!(
                "write of the {}-byte line: no completion, timeout after {} ms",
                line.len(),
                settings.timeout_ms()
            ));
        }
        Err(WaitError::Ring(e)) => return Err(format!("transmit queue: {e}")),
    }
    // SAFETY: the device completed the request.
    let _ = unsafe { res.bufs[tx].unmap(dma) };
    counters.requests += 1;
    counters.bytes_to_device += line.len() as u64;
    info.written_bytes = line.len() as u64;
    info.written_crc32c = crc32c(&line);

    // Read until a newline, the limit, or the timeout.
    let mut deadline = settings.deadline(clock);
    while info.read.len() < limit && info.read.last() != Some(&b'\n') {
        let c = match res.queues[usize::from(RX_QUEUE)].pop_used() {
            Ok(Some(c)) => c,
            Ok(None) => {
                if deadline.expired() {
                    break;
                }
                core::hint::spin_loop();
                continue;
            }
            Err(e) => return Err(format!("receive queue: {e}")),
        };
        let slot = rx_by_token
            .get_mut(c.token.index())
            .and_then(Option::take)
            .ok_or_else(|| {
                format!(
                    "receive queue: completion of token {} that names no request",
                    c.token.index()
                )
            })?;
        let b = rx_bufs[slot];
        // SAFETY: the device completed the request.
        let _ = unsafe { res.bufs[b].unmap(dma) };
        counters.requests += 1;
        let got = &res.bufs[b].bytes()[..c.written_len as usize];
        counters.bytes_from_device += got.len() as u64;
        let room = limit - info.read.len();
        let upto = got
            .iter()
            .position(|&x| x == b'\n')
            .map_or(got.len(), |i| i + 1)
            .min(room);
        info.read.extend_from_slice(&got[..upto]);
        if info.read.len() < limit && info.read.last() != Some(&b'\n') {
            // The buffer was just unmapped, so its room in the pool is free again.
            if !post_rx(res, b, slot, limit, &mut rx_by_token)? {
                return Err("receive buffer: the shared pool has no room for it again".into());
            }
            kick(t, &mut res.queues[usize::from(RX_QUEUE)], counters);
        }
    }
    Ok(())
}

/// Posts receive buffer `buf`; `false` when the DMA path has no room for it now.
fn post_rx(
    res: &mut Resources<'_>,
    buf: usize,
    slot: usize,
    len: usize,
    by_token: &mut [Option<usize>],
) -> Result<bool, String> {
    let dma = res.dma();
    let piece = len.min(res.limits().0);
    let data = match res.bufs[buf].map(
        dma,
        len,
        piece,
        Direction::FromDevice,
        &DmaConstraints::NONE,
    ) {
        Ok(data) => data,
        Err(e) if e.is_transient() => return Ok(false),
        Err(e) => return Err(format!("receive buffer: {e}")),
    };
    match res.queues[usize::from(RX_QUEUE)].add(&data) {
        Ok(token) => {
            by_token[token.index()] = Some(slot);
            Ok(true)
        }
        Err(e) => {
            // SAFETY: `add` failed: the device never saw the buffer.
            let _ = unsafe { res.bufs[buf].unmap(dma) };
            Err(format!("receive buffer: the ring refused it: {e}"))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
