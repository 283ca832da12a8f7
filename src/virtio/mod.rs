//! The portable virtio core: transports are a trait, rings are data structures over [`Dma`]
//! memory, and the device initialisation sequence is one function over any transport.
//!
//! ```text
//!   driver (blk, net, console, rng)           -- knows its device, nothing about DMA paths
//!     |  init::init / init::setup_queue        -- status handshake, features, queues
//!     |  Virtqueue::add / should_notify / pop_used
//!     v
//!   Transport (mmio v1/v2, pci modern/legacy)  -- registers only
//!   Dma (direct, later bounce / iommu)         -- every device address comes from here
//! ```
//!
//! # For transport authors ([`Transport`])
//!
//! * A transport only moves values between the driver and registers. It never allocates, never
//!   translates addresses (it receives [`DeviceAddr`]s), and never decides policy.
//! * Methods take a queue index and select the queue themselves (cache the selection if you
//!   like). `max_queue_size` returns 0 for a queue the device does not have.
//! * Legacy transports (`is_legacy`): features are 32 bits (return the low word; ignore the high
//!   word on write), there is no FEATURES_OK step (init skips it) and no packed ring. The split
//!   ring must be one page-aligned block; [`transport::LegacyLayout::check`] validates the three
//!   addresses passed to `set_queue_addresses` and gives the PFN to write (mmio v1: write
//!   `GuestPageSize` = 4096 first, and `QueueAlign` = 4096). Legacy PCI cannot resize queues:
//!   return `true` from `queue_size_fixed`.
//! * `notify` must order every earlier store to memory before its MMIO / port write (ppc64:
//!   `sync` before a cache-inhibited store, as Linux `writel` does). The rings issue a full fence
//!   before deciding to notify, but a transport must not count on that.
//! * Config space: `read_config_*` are single accesses of that width; multi-field reads go through
//!   [`transport::read_config_consistent`], which retries on a generation change (legacy: the
//!   generation is always 0).
//! * `ack_interrupt` reads and acknowledges in one step (PCI ISR is read-to-clear; mmio writes
//!   `InterruptACK`).
//!
//! # For driver authors
//!
//! 1. `init::init(transport, features, &mut deadline, |t, negotiation| { ...setup queues... })`
//!    resets the device and negotiates `offered ∩ supported`, plus `VERSION_1` on modern
//!    transports and `ACCESS_PLATFORM` whenever offered (every buffer goes through [`Dma`]
//!    anyway). Pass your device bits together with [`features::common::CORE_SUPPORTED`] (or a
//!    subset of it, to test a device without packed rings, say). DRIVER_OK is set after the
//!    closure succeeded; on any error the device is left with FAILED set. [`Negotiation`] keeps
//!    `offered`, `requested` and `accepted` for the report; [`features::feature_names`] names
//!    the bits.
//! 2. In the closure, `init::setup_queue(t, dma, negotiation, index, preferred_size, limits)`
//!    builds a
//!    split or packed [`Virtqueue`] (packed when `RING_PACKED` was accepted), with the legacy
//!    layout on legacy transports, and hands its addresses to the transport.
//! 3. Per request: map every buffer with [`Dma::map`] (or use a [`crate::dma::SharedRegion`] for
//!    small headers), build [`Segment`]s (device-readable ones first), `queue.add(&segments)`
//!    gives a [`Token`], then `if queue.should_notify() { transport.notify(queue.index()) }`.
//!    Several `add`s may share one `should_notify`.
//! 4. Completion: `queue.pop_used()` gives `Ok(Some(Completion { token, written_len }))`, or use
//!    [`Virtqueue::wait_used`] with a [`Deadline`] (a caller-supplied [`Clock`] plus a poll
//!    ceiling, so a dead clock cannot hang the guest). Only then unmap the buffers of that token.
//!    `written_len` is checked against the device-writable bytes of the request, but its
//!    *content* is still host data: validate it.
//! 5. Errors. [`AddError::Full`] (and `AddError::Dma` with a transient [`crate::dma::DmaError`])
//!    means: pop completions, then retry. A [`RingError`] means the device broke the ring
//!    protocol; the queue stays broken (every later call returns the error), and the driver must
//!    reset the device before it unmaps outstanding buffers or frees the queue
//!    ([`Virtqueue::outstanding`] lists them). The same holds after a wait timed out: the device
//!    may still own the buffers until it is reset.
//! 6. Tokens: `token.index() < queue.size()`, unique among outstanding requests, so a driver can
//!    keep per-request state in a `Vec` indexed by it.
//!
//! # Trust
//!
//! The device is treated as hostile. The rings keep their own copy of everything the driver
//! wrote (free lists, chains, lengths) and never read it back from shared memory; what they read
//! from the device (used index, ids, lengths, flags) is checked before use, and a violation is a
//! [`RingError`] carrying the values seen, never a panic and never an out-of-bounds access.

pub mod blk;
pub mod console;
pub mod driver;
pub mod features;
pub mod found;
pub mod init;
pub mod iommu;
pub mod mmio;
pub mod net;
pub mod packed;
pub mod pci;
pub mod queue;
pub mod regs;
pub mod rng;
pub mod split;
pub mod transport;
pub mod wait;

#[cfg(test)]
pub(crate) mod fakedev;
#[cfg(test)]
pub(crate) mod ringside;
#[cfg(test)]
mod tests;

pub use features::{DeviceType, feature_names};
pub use found::FoundDevice;
pub use init::{InitError, Negotiation};
pub use queue::{
    AddError, Completion, QueueConfig, RingError, RingFormat, Segment, Token, Virtqueue,
};
pub use transport::{DeviceStatus, InterruptStatus, QueueAddresses, Transport, TransportError};
pub use wait::{Clock, Deadline, NoClock, WaitError};

#[cfg(doc)]
use crate::dma::{DeviceAddr, Dma};

/// Memory barriers between the CPU and a device sharing ring memory.
///
/// The rings access shared memory with volatile loads and stores; these fences keep the compiler
/// from moving them across and emit the instruction the hardware needs. `fence` with these
/// orderings compiles to exactly what Linux uses for virtio with weak barriers:
///
/// | function | ordering | x86_64 | ppc64 |
/// |---|---|---|---|
/// | [`barrier::publish`] (wmb: earlier stores before later stores) | `Release` | none (TSO) | `lwsync` |
/// | [`barrier::consume`] (rmb: earlier loads before later loads) | `Acquire` | none (TSO) | `lwsync` |
/// | [`barrier::full`] (mb: earlier stores before later loads) | `SeqCst` | `lock or` (as Linux `smp_mb`) | `sync` |
///
/// (Checked in the release assembly of both guest targets. Ring memory is ordinary cacheable
/// memory, so a locked instruction is a full barrier on x86_64; MMIO ordering is the
/// transport's business.)
pub mod barrier {
    use core::sync::atomic::{Ordering, fence};

    /// Stores before this (descriptors) become visible before stores after it (an index, flags).
    #[inline]
    pub fn publish() {
        fence(Ordering::Release);
    }

    /// Loads after this (used entries) happen after loads before it (the used index, flags).
    #[inline]
    pub fn consume() {
        fence(Ordering::Acquire);
    }

    /// Stores before this are visible before loads after it: publishing an index and then
    /// reading whether the device wants a notification.
    #[inline]
    pub fn full() {
        fence(Ordering::SeqCst);
    }
}
