//! virtio-net (virtio 1.2, 5.1): the echo test of docs/report.md ("The data the guest moves").
//!
//! Minimal features: the MAC address when the device has one, nothing else of the device's (no
//! offloads, no mergeable receive buffers), so every buffer starts with the plain
//! `virtio_net_hdr`: 12 bytes with `VERSION_1`, 10 on a legacy device. The header and the frame
//! are separate descriptors, which every device accepts (legacy devices without `ANY_LAYOUT`
//! require it). Headers live in a shared region; frames are heap buffers mapped per use.
//!
//! The guest posts receive buffers, sends `sg.net.frames` frames and counts the echoes that
//! match byte for byte. Received frames that are not a matching echo are counted and described,
//! never trusted; the wait ends when every frame is verified or nothing verifiable came for one
//! timeout.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::driver::{
    Counters, DmaPaths, DriverRun, Outcome, QueueInfo, Resources, Settings, init_device, kick,
};
use super::features::{common, net as f};
use super::init::{self, InitError};
use super::queue::{Completion, Segment, Token};
use super::transport::{Transport, read_config_bytes};
use super::wait::Clock;
use crate::dma::{Direction, DmaConstraints};
use crate::pattern;

/// The source address when the device has none (locally administered, unicast: "sg").
pub const LOCAL_MAC: [u8; 6] = [0x02, 0x73, 0x67, 0x00, 0x00, 0x01];
pub const ETHERTYPE: u16 = 0x88b5;
pub const MAGIC: &[u8; 7] = b"sg-echo";
pub const PATTERN_SEED: u64 = 0x4e4554;
pub const PATTERN_LEN: usize = 64;
/// Where the pattern bytes start in a frame.
pub const PATTERN_AT: usize = 25;
pub const FRAME_LEN: usize = PATTERN_AT + PATTERN_LEN;
/// An Ethernet frame without FCS, the most a receive buffer must hold without offloads.
const RX_FRAME: usize = 1514;
const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
const QUEUE_SIZE: u16 = 256;
/// Buffers posted / frames in flight, at most.
const MAX_SLOTS: usize = 32;
/// Problems kept for the error message.
const MAX_PROBLEMS: usize = 4;

/// The net fields of the report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetInfo {
    pub mac: Option<[u8; 6]>,
    pub frames_sent: u64,
    pub frames_received: u64,
    pub frames_verified: u64,
}

/// Formats a MAC address as `52:54:00:12:34:56`.
pub fn mac_string(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Frame `seq` as the guest sends it from `mac`.
pub fn frame(mac: &[u8; 6], seq: u32) -> [u8; FRAME_LEN] {
    let mut fr = [0u8; FRAME_LEN];
    fr[0..6].fill(0xff);
    fr[6..12].copy_from_slice(mac);
    fr[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    fr[14..21].copy_from_slice(MAGIC);
    fr[21..25].copy_from_slice(&seq.to_be_bytes());
    pattern::fill(
        PATTERN_SEED,
        u64::from(seq) * PATTERN_LEN as u64,
        &mut fr[PATTERN_AT..],
    );
    fr
}

/// The echo the backend sends for frame `seq`: MACs swapped, pattern bytes inverted.
pub fn echo(mac: &[u8; 6], seq: u32) -> [u8; FRAME_LEN] {
    let sent = frame(mac, seq);
    let mut e = sent;
    e[0..6].copy_from_slice(&sent[6..12]);
    e[6..12].copy_from_slice(&sent[0..6]);
    for b in &mut e[PATTERN_AT..] {
        *b ^= 0xff;
    }
    e
}

/// What a received frame is: the echo of `seq`, or why not.
fn classify(mac: &[u8; 6], frames: u32, f: &[u8]) -> Result<u32, String> {
    if f.len() < PATTERN_AT || f[12..14] != ETHERTYPE.to_be_bytes() || &f[14..21] != MAGIC {
        return Err(format!(
            "a {}-byte frame that is no echo (ethertype {})",
            f.len(),
            f.get(12..14).map_or(String::from("none"), |e| format!(
                "{:#06x}",
                u16::from_be_bytes([e[0], e[1]])
            ))
        ));
    }
    let seq = u32::from_be_bytes([f[21], f[22], f[23], f[24]]);
    if seq >= frames {
        return Err(format!("an echo of seq {seq}, which was never sent"));
    }
    if f.len() != FRAME_LEN {
        return Err(format!(
            "the echo of seq {seq} is {} bytes, not {FRAME_LEN}",
            f.len()
        ));
    }
    let want = echo(mac, seq);
    if let Some(i) = f.iter().zip(&want).position(|(a, b)| a != b) {
        return Err(format!(
            "the echo of seq {seq} differs at byte {i} ({:#04x}, expected {:#04x})",
            f[i], want[i]
        ));
    }
    Ok(seq)
}

/// Runs the driver over `t`: init, the echo test, reset and cleanup.
pub fn run<T: Transport + ?Sized>(
    t: &mut T,
    paths: &DmaPaths<'_>,
    clock: &dyn Clock,
    settings: &Settings,
    frames: u32,
) -> DriverRun<NetInfo> {
    let mut res = Resources::new(paths);
    let mut info = NetInfo::default();
    let init = init_device(t, f::MAC, settings, clock, &mut res, |t, n, res| {
        let mut mac = LOCAL_MAC;
        if n.has(f::MAC) {
            read_config_bytes(t, 0, &mut mac)?;
        }
        for q in [RX_QUEUE, TX_QUEUE] {
            let vq = init::setup_queue(t, res.dma(), n, q, QUEUE_SIZE, &DmaConstraints::NONE)?;
            res.queues.push(vq);
        }
        Ok::<_, InitError>(mac)
    });
    let (negotiation, mac) = match init {
        Ok(v) => v,
        Err(fail) => return res.init_failed(t, settings, clock, fail, info),
    };
    info.mac = Some(mac);
    let queues: Vec<QueueInfo> = res.queues.iter().map(QueueInfo::of).collect();
    for q in &mut res.queues {
        q.set_interrupts(false);
    }
    let hdr_len = if negotiation.has(common::VERSION_1) || negotiation.has(f::MRG_RXBUF) {
        12
    } else {
        10
    };
    let mut counters = Counters::default();
    let result = if frames == 0 {
        Ok(false)
    } else {
        let mut e = Echo {
            t: &mut *t,
            res: &mut res,
            clock,
            settings,
            counters: &mut counters,
            mac,
            hdr_len,
            frames,
        };
        e.test(&mut info).map(|()| true)
    };
    let outcome = match result {
        Ok(true) => Outcome::Ok,
        Ok(false) => Outcome::Skipped,
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

struct Echo<'a, 'd, T: ?Sized> {
    t: &'a mut T,
    res: &'a mut Resources<'d>,
    clock: &'a dyn Clock,
    settings: &'a Settings,
    counters: &'a mut Counters,
    mac: [u8; 6],
    hdr_len: usize,
    frames: u32,
}

impl<T: Transport + ?Sized> Echo<'_, '_, T> {
    fn test(&mut self, info: &mut NetInfo) -> Result<(), String> {
        let dma = self.res.dma();
        let per_request = |size: u16, indirect: bool| {
            let descriptors = if indirect { 1 } else { 2 };
            (usize::from(size) / descriptors).clamp(1, MAX_SLOTS)
        };
        let rxq = &self.res.queues[usize::from(RX_QUEUE)];
        // Buffers in flight take at most what one request may (bounce: a quarter of the pool
        // each way), so that the pool always has room for the other direction.
        let (_, max_request) = self.res.limits();
        let rx_slots =
            per_request(rxq.size(), rxq.config().indirect).min((max_request / RX_FRAME).max(1));
        let txq = &self.res.queues[usize::from(TX_QUEUE)];
        let tx_slots = per_request(txq.size(), txq.config().indirect)
            .min(self.frames as usize)
            .min((max_request / FRAME_LEN).max(1));

        // Headers: one per slot, receive first.
        let hdr = self.hdr_len;
        let region = self.res.alloc_region(hdr * (rx_slots + tx_slots), 16)?;
        let rx_bufs: Vec<usize> = (0..rx_slots)
            .map(|_| self.res.alloc_buf(RX_FRAME))
            .collect::<Result<_, _>>()?;
        let tx_bufs: Vec<usize> = (0..tx_slots)
            .map(|_| self.res.alloc_buf(FRAME_LEN))
            .collect::<Result<_, _>>()?;

        let mut rx_by_token: Vec<Option<usize>> = vec![None; usize::from(rxq_size(self))];
        let mut tx_by_token: Vec<Option<(usize, u32)>> = vec![None; usize::from(txq_size(self))];
        // Receive slots the pool had no room for (back-pressure): posted again as soon as
        // completions free it.
        let mut unposted: Vec<usize> = Vec::new();
        for (slot, &buf) in rx_bufs.iter().enumerate() {
            if !self.post_rx(region, buf, slot, &mut rx_by_token)? {
                unposted.push(slot);
            }
        }
        if unposted.len() == rx_slots {
            return Err("receive buffer: the shared pool has no room for a single one".into());
        }
        kick(
            &mut *self.t,
            &mut self.res.queues[usize::from(RX_QUEUE)],
            self.counters,
        );

        let mut free_tx: Vec<usize> = (0..tx_slots).rev().collect();
        let mut verified = vec![false; self.frames as usize];
        let mut problems: Vec<String> = Vec::new();
        let mut other_frames = 0u64;
        let mut next_seq = 0u32;
        let mut deadline = self.settings.deadline(self.clock);
        loop {
            // Send what the free slots allow.
            let mut sent_any = false;
            while next_seq < self.frames {
                let Some(slot) = free_tx.pop() else { break };
                let b = &mut self.res.bufs[tx_bufs[slot]];
                b.bytes_mut().copy_from_slice(&frame(&self.mac, next_seq));
                let mapped = b.map(
                    dma,
                    FRAME_LEN,
                    FRAME_LEN,
                    Direction::ToDevice,
                    &DmaConstraints::NONE,
                );
                let data = match mapped {
                    Ok(data) => data,
                    // The shared pool is full: wait for a transmit completion, then again.
                    Err(e) if e.is_transient() && free_tx.len() + 1 < tx_slots => {
                        free_tx.push(slot);
                        break;
                    }
                    Err(e) => return Err(format!("frame buffer: {e}")),
                };
                let r = &self.res.regions[region];
                let h = hdr * (rx_slots + slot);
                r.fill(h, hdr, 0);
                let mut segments = vec![Segment::in_region(r, h, hdr as u32, false)];
                segments.extend(data);
                match self.res.queues[usize::from(TX_QUEUE)].add(&segments) {
                    Ok(token) => {
                        tx_by_token[token.index()] = Some((slot, next_seq));
                        next_seq += 1;
                        sent_any = true;
                    }
                    Err(e) => {
                        let b = &mut self.res.bufs[tx_bufs[slot]];
                        // SAFETY: `add` failed: the device never saw the buffer.
                        let _ = unsafe { b.unmap(dma) };
                        free_tx.push(slot);
                        if e.is_transient() && free_tx.len() < tx_slots {
                            break;
                        }
                        return Err(format!(
                            "transmit of seq {next_seq}: the ring refused it: {e}"
                        ));
                    }
                }
            }
            if sent_any {
                kick(
                    &mut *self.t,
                    &mut self.res.queues[usize::from(TX_QUEUE)],
                    self.counters,
                );
            }

            let mut progress = false;
            // Transmit completions.
            while let Some(c) = self.pop(TX_QUEUE, "transmit")? {
                let (slot, _) = tx_by_token
                    .get_mut(c.token.index())
                    .and_then(Option::take)
                    .ok_or_else(|| stray(TX_QUEUE, c.token))?;
                let b = &mut self.res.bufs[tx_bufs[slot]];
                // SAFETY: the device completed the request.
                let _ = unsafe { b.unmap(dma) };
                free_tx.push(slot);
                self.counters.requests += 1;
                self.counters.bytes_to_device += FRAME_LEN as u64;
                info.frames_sent += 1;
                progress = true;
            }

            // Receive completions.
            let mut reposted = false;
            while let Some(c) = self.pop(RX_QUEUE, "receive")? {
                let slot = rx_by_token
                    .get_mut(c.token.index())
                    .and_then(Option::take)
                    .ok_or_else(|| stray(RX_QUEUE, c.token))?;
                let b = &mut self.res.bufs[rx_bufs[slot]];
                // SAFETY: the device completed the request.
                let _ = unsafe { b.unmap(dma) };
                self.counters.requests += 1;
                let written = c.written_len as usize;
                if written < hdr {
                    return Err(format!(
                        "a receive buffer completed with {written} bytes, less than the \
                         {hdr}-byte virtio_net_hdr"
                    ));
                }
                let len = written - hdr;
                self.counters.bytes_from_device += len as u64;
                info.frames_received += 1;
                match classify(
                    &self.mac,
                    self.frames,
                    &self.res.bufs[rx_bufs[slot]].bytes()[..len],
                ) {
                    Ok(seq) if !verified[seq as usize] => {
                        verified[seq as usize] = true;
                        info.frames_verified += 1;
                        progress = true;
                    }
                    Ok(seq) => note(&mut problems, format!("the echo of seq {seq} came twice")),
                    Err(p) => {
                        other_frames += 1;
                        note(&mut problems, p);
                    }
                }
                unposted.push(slot);
            }
            // Every receive slot that is free again (just completed, or left out for want of
            // room in the pool) goes back to the device.
            let mut waiting = Vec::new();
            for slot in unposted.drain(..) {
                if self.post_rx(region, rx_bufs[slot], slot, &mut rx_by_token)? {
                    reposted = true;
                } else {
                    waiting.push(slot);
                }
            }
            unposted = waiting;
            if reposted {
                kick(
                    &mut *self.t,
                    &mut self.res.queues[usize::from(RX_QUEUE)],
                    self.counters,
                );
            }

            let all_sent = next_seq == self.frames && free_tx.len() == tx_slots;
            if all_sent && info.frames_verified == u64::from(self.frames) {
                return Ok(());
            }
            if progress {
                deadline = self.settings.deadline(self.clock);
            } else if deadline.expired() {
                let missing: Vec<String> = verified
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| !**v)
                    .take(8)
                    .map(|(i, _)| format!("{i}"))
                    .collect();
                let what = if !all_sent {
                    let oldest = tx_by_token.iter().flatten().map(|&(_, seq)| seq).min();
                    format!(
                        "{} of {} frames transmitted{}",
                        info.frames_sent,
                        self.frames,
                        oldest.map_or(String::new(), |s| format!(" (seq {s} was never completed)"))
                    )
                } else {
                    format!(
                        "{} of {} echoes verified (missing seq {}{})",
                        info.frames_verified,
                        self.frames,
                        missing.join(", "),
                        if u64::from(self.frames) - info.frames_verified > 8 {
                            ", ..."
                        } else {
                            ""
                        }
                    )
                };
                return Err(format!(
                    "timeout after {} ms: {what}; {} frames received, {other_frames} of them no \
                     echo{}{}",
                    self.settings.timeout_ms(),
                    info.frames_received,
                    if problems.is_empty() { "" } else { ": " },
                    problems.join("; ")
                ));
            }
            core::hint::spin_loop();
        }
    }

    fn pop(&mut self, q: u16, what: &str) -> Result<Option<Completion>, String> {
        self.res.queues[usize::from(q)]
            .pop_used()
            .map_err(|e| format!("{what} queue: {e}"))
    }

    /// Makes receive slot `slot` (header `slot` of the region, buffer `buf`) available. `false`
    /// when the DMA path has no room for it now (back-pressure: try again after completions).
    fn post_rx(
        &mut self,
        region: usize,
        buf: usize,
        slot: usize,
        by_token: &mut [Option<usize>],
    ) -> Result<bool, String> {
        let dma = self.res.dma();
        let hdr = self.hdr_len;
        let r = &self.res.regions[region];
        r.fill(hdr * slot, hdr, 0);
        let mut segments = vec![Segment::in_region(r, hdr * slot, hdr as u32, true)];
        let b = &mut self.res.bufs[buf];
        let mapped = b.map(
            dma,
            RX_FRAME,
            RX_FRAME,
            Direction::FromDevice,
            &DmaConstraints::NONE,
        );
        match mapped {
            Ok(data) => segments.extend(data),
            Err(e) if e.is_transient() => return Ok(false),
            Err(e) => return Err(format!("receive buffer: {e}")),
        }
        match self.res.queues[usize::from(RX_QUEUE)].add(&segments) {
            Ok(token) => {
                by_token[token.index()] = Some(slot);
                Ok(true)
            }
            Err(e) => {
                let b = &mut self.res.bufs[buf];
                // SAFETY: `add` failed: the device never saw the buffer.
                let _ = unsafe { b.unmap(dma) };
                Err(format!("receive buffer: the ring refused it: {e}"))
            }
        }
    }
}

fn rxq_size<T: ?Sized>(e: &Echo<'_, '_, T>) -> u16 {
    e.res.queues[usize::from(RX_QUEUE)].size()
}

fn txq_size<T: ?Sized>(e: &Echo<'_, '_, T>) -> u16 {
    e.res.queues[usize::from(TX_QUEUE)].size()
}

fn stray(q: u16, token: Token) -> String {
    format!(
        "queue {q}: completion of token {} that names no request",
        token.index()
    )
}

fn note(problems: &mut Vec<String>, p: String) {
    if problems.len() < MAX_PROBLEMS {
        problems.push(p);
    }
}

#[cfg(test)]
pub(crate) mod tests;
