//! virtio-rng / entropy device (virtio 1.2, 5.4): one request queue; the driver offers
//! device-writable buffers and the device fills what it can. A completion may carry fewer bytes
//! than asked (even none): the driver asks again for the rest until `sg.rng.bytes` arrived or
//! the device made no progress for one timeout.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::driver::{
    Counters, DmaPaths, DriverRun, Outcome, QueueInfo, Resources, Settings, init_device, kick,
};
use super::init::{self, InitError};
use super::transport::Transport;
use super::wait::{Clock, WaitError};
use crate::dma::{Direction, DmaConstraints};

const QUEUE_SIZE: u16 = 16;
/// The largest single request.
const CHUNK: usize = 64 << 10;

/// The rng fields of the report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RngInfo {
    pub entropy_bytes: u64,
}

/// Runs the driver over `t`: init, read `bytes` of entropy, reset and cleanup.
pub fn run<T: Transport + ?Sized>(
    t: &mut T,
    paths: &DmaPaths<'_>,
    clock: &dyn Clock,
    settings: &Settings,
    bytes: u32,
) -> DriverRun<RngInfo> {
    let mut res = Resources::new(paths);
    let mut info = RngInfo::default();
    let init = init_device(t, 0, settings, clock, &mut res, |t, n, res| {
        let vq = init::setup_queue(t, res.dma(), n, 0, QUEUE_SIZE, &DmaConstraints::NONE)?;
        res.queues.push(vq);
        Ok::<_, InitError>(())
    });
    let negotiation = match init {
        Ok((n, ())) => n,
        Err(fail) => return res.init_failed(t, settings, clock, fail, info),
    };
    let queues: Vec<QueueInfo> = res.queues.iter().map(QueueInfo::of).collect();
    res.queues[0].set_interrupts(false);
    let mut counters = Counters::default();
    let result = if bytes == 0 {
        Ok(false)
    } else {
        read(
            t,
            &mut res,
            clock,
            settings,
            &mut counters,
            bytes as usize,
            &mut info,
        )
        .map(|()| true)
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

fn read<T: Transport + ?Sized>(
    t: &mut T,
    res: &mut Resources<'_>,
    clock: &dyn Clock,
    settings: &Settings,
    counters: &mut Counters,
    want: usize,
    info: &mut RngInfo,
) -> Result<(), String> {
    let dma = res.dma();
    let buf = res.alloc_buf(want.min(CHUNK))?;
    let mut got = 0usize;
    let mut deadline = settings.deadline(clock);
    while got < want {
        let n = (want - got).min(CHUNK);
        let piece = n.min(res.limits().0);
        let segments = res.bufs[buf]
            .map(dma, n, piece, Direction::FromDevice, &DmaConstraints::NONE)
            .map_err(|e| format!("entropy buffer: {e}"))?;
        if let Err(e) = res.queues[0].add(&segments) {
            // SAFETY: `add` failed: the device never saw the buffer.
            let _ = unsafe { res.bufs[buf].unmap(dma) };
            return Err(format!("request of {n} bytes: the ring refused it: {e}"));
        }
        kick(t, &mut res.queues[0], counters);
        let c = match res.queues[0].wait_used(&mut deadline) {
            Ok(c) => c,
            Err(WaitError::TimedOut { .. }) => {
                return Err(format!(
                    "timeout after {} ms: {got} of {want} entropy bytes arrived (a request for \
                     {n} bytes is outstanding)",
                    settings.timeout_ms()
                ));
            }
            Err(WaitError::Ring(e)) => return Err(format!("request queue: {e}")),
        };
        // SAFETY: the device completed the request.
        let _ = unsafe { res.bufs[buf].unmap(dma) };
        counters.requests += 1;
        let written = c.written_len as usize;
        counters.bytes_from_device += written as u64;
        got += written;
        info.entropy_bytes = got as u64;
        if written > 0 {
            deadline = settings.deadline(clock);
        } else if deadline.expired() {
            return Err(format!(
                "timeout after {} ms: {got} of {want} entropy bytes arrived (the last request \
                 completed empty)",
                settings.timeout_ms()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
