//! The secure half of the boot flow, the portable part: where the shared pool and the
//! secret-marked regions go, the DMA paths the devices choose from, the release probe, and the
//! records `secure`, `swiotlb`, `secret` and `swiotlb_stats` (docs/report.md).
//!
//! The boot flow (`src/main.rs`) does, in order:
//!
//! 1. `arch::secure_facts` and [`decide`](crate::platform::decide::decide), then
//!    [`secure_record`]; a rejection ends the run before any device is touched;
//! 2. when secure: [`pool_size`] and [`place_pool`] (free RAM below 4 GiB, never the heap),
//!    `Bounce::new` (one `share` of the whole pool), then [`swiotlb_record`];
//! 3. in `emulate` mode: [`place_secret`], `secret::fill_raw` over it, then [`secret_record`];
//! 4. the devices, each with its path from [`secure_paths`] (or `DmaPaths::direct`);
//! 5. [`release_probe`], then [`swiotlb_stats_record`], then `end`.
//!
//! # What the host finds in the pool at the end
//!
//! Every driver resets its device and then gives back every mapping and region; the bounce path
//! zeroes slots on release. So after the devices, the pool holds only zeros (unless a device
//! failed to reset: its rings and buffers stay live, and `live_bytes` says so). The pool stays
//! shared until the guest powers off: unsharing it at the end (`Bounce::release`) would zero it
//! once more and so hide exactly what the host oracle is there to find (a slot released without
//! zeroing, `sg.debug.leak=1`), and there is nothing private left to protect after `end`.
//!
//! The release probe makes the leak visible even when no driver ever bounces secret-marked
//! bytes: it maps a secret-marked buffer to-device and unmaps it, without any device. With
//! zeroing (the default) it leaves nothing; with `sg.debug.leak=1` its marks stay in the pool.
//!
//! # Secret mark counters
//!
//! So that a host that finds a mark knows what leaked: `secret` regions count from 0, driver
//! buffers from [`BUFFER_MARKS_FIRST`] (`0x8000_0000`), the release probe from
//! [`PROBE_MARKS_FIRST`] (`0xc000_0000`).

use alloc::format;
use alloc::vec;
use core::fmt;
use core::ptr::NonNull;

use crate::dma::bounce::{Bounce, BounceStats};
use crate::dma::{Direction, Dma, DmaConstraints, DmaError};
use crate::memmap::{MemoryMap, RegionKind};
use crate::platform::decide::{Choice, Decision, LegacyPolicy};
use crate::platform::{Emulated, NonePlatform, Platform, secret};
use crate::report::Record;
use crate::virtio::driver::{DmaPaths, SharedPool};

pub use crate::virtio::driver::BUFFER_MARKS_FIRST;

/// The first counter of the release probe's marks.
pub const PROBE_MARKS_FIRST: u32 = 0xc000_0000;
/// Bytes the release probe bounces.
pub const PROBE_BYTES: usize = 4096;
/// The pool and the secret regions stay below this: 32-bit DMA engines and legacy virtio queue
/// PFNs reach it, and every arch maps it.
pub const LOW_LIMIT: u64 = 1 << 32;
/// The most private memory the `emulate` mode fills with secret marks: 131072 marks, plenty for
/// the host's scan to prove it finds them where they are. Filling costs 10-15 ms per MiB under
/// TCG (8 MiB: 110 ms on x86_64 microvm, 100 ms on pseries), so not more.
pub const SECRET_MAX: u64 = 2 << 20;

/// The platform of a guest that is not secure.
pub static NONE_PLATFORM: NonePlatform = NonePlatform::new();
/// The platform of `sg.secure=emulate`: secure, sharing recorded but not done, with the
/// granularity of this arch's real backend (PEF 64 KiB, SEV/TDX 2 MiB).
pub static EMULATED_PLATFORM: Emulated = Emulated::for_this_arch();

/// The platform a decision leads to when it needs no hardware: `none` and `emulated`, as
/// statics. `None` for PEF, SEV and TDX, whose backends only the arch code can build
/// (`arch::secure_platform`, when detected).
pub fn static_platform(choice: Choice) -> Option<&'static dyn Platform> {
    match choice {
        Choice::None => Some(&NONE_PLATFORM),
        Choice::Emulated => Some(&EMULATED_PLATFORM),
        Choice::Pef { .. } | Choice::Sev(_) | Choice::Tdx => None,
    }
}

/// `sg.swiotlb` rounded up to the platform's sharing granularity (a power of two).
pub fn pool_size(requested: u64, granularity: u64) -> u64 {
    requested
        .checked_next_multiple_of(granularity.max(1))
        .unwrap_or(requested)
}

/// `map` with `ranges` marked reserved, or `None` when the map has no room for them (an entry
/// that did not fit would leave that range looking free).
fn with_reserved(map: &MemoryMap, ranges: &[(u64, u64, &'static str)]) -> Option<MemoryMap> {
    let mut m = map.clone();
    let dropped = m.dropped;
    for &(base, size, label) in ranges {
        m.add(base, size, RegionKind::Reserved, label);
    }
    (m.dropped == dropped).then_some(m)
}

/// Where the pool of `size` bytes goes: the highest `granularity`-aligned free range below
/// [`LOW_LIMIT`] that is not the heap (`heap` = base, size).
pub fn place_pool(map: &MemoryMap, heap: (u64, u64), size: u64, granularity: u64) -> Option<u64> {
    let m = with_reserved(map, &[(heap.0, heap.1, "heap")])?;
    crate::dma::bounce::place(&m, size, granularity, LOW_LIMIT)
}

/// The private memory the `emulate` mode marks: the start of the largest free piece below
/// [`LOW_LIMIT`] that is neither the heap nor the pool, at most `max` bytes (page-aligned).
pub fn place_secret(
    map: &MemoryMap,
    heap: (u64, u64),
    pool: (u64, u64),
    max: u64,
) -> Option<(u64, u64)> {
    let m = with_reserved(
        map,
        &[(heap.0, heap.1, "heap"), (pool.0, pool.1, "swiotlb")],
    )?;
    let mut best: Option<(u64, u64)> = None;
    m.for_each_free(4096, 4096, |b, e| {
        let e = e.min(LOW_LIMIT);
        if b < e && best.is_none_or(|(bb, be)| e - b > be - bb) {
            best = Some((b, e));
        }
    });
    let (base, end) = best?;
    let size = (end - base).min(max) & !4095;
    (size > 0).then_some((base, size))
}

/// The DMA paths of a secure guest's devices: through `bounce`, or refused (`legacy`).
pub fn secure_paths<'d>(
    direct: &'d dyn Dma,
    bounce: &'d Bounce<'_>,
    legacy: LegacyPolicy,
) -> DmaPaths<'d> {
    let pool = SharedPool {
        dma: bounce,
        max_mapping: bounce.max_mapping_size(),
        size: bounce.region().size,
    };
    DmaPaths::secure(direct, pool, legacy)
}

/// Maps a [`PROBE_BYTES`] buffer of secret marks to-device through `dma` and unmaps it, with no
/// device involved: a legitimate use of the DMA interface whose only trace is what the release
/// leaves in the slots (nothing, unless `sg.debug.leak=1`). Returns the bytes bounced.
pub fn release_probe(dma: &dyn Dma) -> Result<usize, DmaError> {
    let mut buf = vec![0u8; PROBE_BYTES];
    secret::fill(&mut buf, PROBE_MARKS_FIRST);
    let ptr = NonNull::from(&mut buf[..]);
    // SAFETY: `buf` outlives the mapping (unmapped below, before it is dropped) and the CPU does
    // not touch it meanwhile; no device is ever given the mapping's address.
    let m = unsafe { dma.map(ptr, Direction::ToDevice, &DmaConstraints::NONE) }?;
    // SAFETY: no device was given the mapping, so none uses it; `buf` is still alive.
    unsafe { dma.unmap(m) }?;
    Ok(PROBE_BYTES)
}

/// The fields of the `secure` record. `platform` is the one that runs (`NonePlatform` for a
/// rejection); `sev_status` is the raw SEV_STATUS value (0 when not read).
pub fn secure_record<W: fmt::Write>(
    r: Record<W>,
    d: &Decision,
    sev_status: u64,
    platform: &dyn Platform,
    legacy: LegacyPolicy,
) -> Record<W> {
    r.str("mode", d.mode.as_str())
        .str("platform", platform.name())
        .bool("secure", platform.is_secure() && !d.rejected())
        .str("action", d.action.as_str())
        .json("reasons", |j| {
            j.begin_array();
            for reason in &d.reasons {
                j.str(reason);
            }
            j.end_array();
        })
        .json("facts", |j| {
            j.begin_object();
            j.key("ultravisor");
            j.bool(d.facts.ultravisor);
            j.key("msr_s");
            j.bool(d.facts.msr_s);
            j.key("sev_status");
            j.hex(sev_status);
            j.key("tdx");
            j.bool(d.facts.tdx);
            j.end_object();
        })
        .str("legacy_devices", legacy.as_str())
        .u64("granularity", platform.granularity())
}

/// The fields of the `swiotlb` record.
pub fn swiotlb_record<W: fmt::Write>(r: Record<W>, bounce: &Bounce<'_>) -> Record<W> {
    let region = bounce.region();
    let pool = bounce.pool_stats();
    let events = bounce.platform().log().events();
    r.hex("base", region.phys)
        .hex("device_base", region.device)
        .u64("size", region.size)
        .u64("slot_size", pool.slot_size)
        .u64("slots", pool.slots)
        .u64("max_mapping", pool.max_map_bytes)
        .json("shares", |j| {
            j.begin_array();
            for e in &events {
                j.begin_object();
                j.key("op");
                j.str(e.op.as_str());
                j.key("base");
                j.hex(e.phys);
                j.key("size");
                j.u64(e.len);
                j.key("result");
                match e.result {
                    Ok(()) => j.str("ok"),
                    Err(err) => j.str(&format!("{err}")),
                }
                j.end_object();
            }
            j.end_array();
        })
        .bool("leak", bounce.debug_skip_zeroing())
}

/// The fields of the `secret` record: the regions filled with marks.
pub fn secret_record<W: fmt::Write>(r: Record<W>, regions: &[(u64, u64)]) -> Record<W> {
    r.json("regions", |j| {
        j.begin_array();
        for &(base, size) in regions {
            j.begin_object();
            j.key("base");
            j.hex(base);
            j.key("size");
            j.u64(size);
            j.end_object();
        }
        j.end_array();
    })
}

/// The fields of the `swiotlb_stats` record; `probe_bytes`: what [`release_probe`] bounced.
pub fn swiotlb_stats_record<W: fmt::Write>(
    r: Record<W>,
    s: &BounceStats,
    probe_bytes: u64,
) -> Record<W> {
    r.u64("maps", s.dma.maps)
        .u64("unmaps", s.dma.unmaps)
        .u64("bounced_to_device", s.dma.bounced_to_device)
        .u64("bounced_from_device", s.dma.bounced_from_device)
        .u64("high_water_bytes", s.pool.high_water_bytes)
        .u64("high_water_slots", s.pool.high_water_slots)
        .u64("exhausted", s.pool.exhausted)
        .u64("zeroed_bytes", s.zeroed_bytes)
        .u64("unzeroed_releases", s.unzeroed_releases)
        .u64("live_bytes", s.pool.live_bytes)
        .u64("in_use_slots", s.pool.in_use_slots)
        .u64("map_failures", s.dma.map_failures)
        .u64("probe_bytes", probe_bytes)
}

#[cfg(test)]
pub(crate) mod tests;
