//! The swiotlb slot allocator: one contiguous range of device addresses cut into fixed slots.
//!
//! # Design
//!
//! * **Slots** of [`SLOT_SIZE`] = 2 KiB, as Linux's `IO_TLB_SIZE`: small enough that a status
//!   byte or a 12-byte request header wastes little, large enough that the bitmap stays small
//!   (one bit per slot: 64 B of bitmap per MiB of pool, plus 4 B of length per slot).
//! * **Bounded mappings**: a streaming mapping spans at most `max_map_slots` contiguous slots
//!   ([`DEFAULT_MAX_MAP_SLOTS`] = 128, 256 KiB, Linux's `IO_TLB_SEGSIZE` and hence its
//!   `swiotlb_max_mapping_size`), so that one large request cannot monopolise the pool and drivers
//!   tuned on Linux fit. Long-lived shared regions (rings) have no such limit
//!   ([`SlotPool::alloc_region`]).
//! * **First fit** over a bitmap, honouring the requested alignment and every
//!   [`DmaConstraints`] field on the *device* address: `max_addr` (the last byte), `boundary` (the
//!   mapped bytes do not cross a multiple of it), `align`, `max_len`. The scan jumps past the last
//!   used slot of a rejected window and past a boundary, so it is O(slots) per request.
//! * **Back-pressure, not failure**: a request that fits the empty pool but not now gets
//!   [`DmaError::Exhausted`] (the caller completes outstanding requests and retries); a request
//!   that could never fit gets a permanent error. The property tests check both directions
//!   against a brute-force oracle.
//! * Addresses are device addresses: the bounce path builds the pool over the device address of
//!   its shared range, and turns a slot back into a CPU pointer by the same offset.
//!
//! Limits: the pool is at most 4 GiB (lengths are kept as `u32`), its base is slot-aligned, and
//! a size that is not a multiple of the slot size loses its tail.
//!
//! Not thread-safe by itself: the bounce path keeps it in a `spin::Mutex`.

use alloc::vec;
use alloc::vec::Vec;

use super::{DmaConstraints, DmaError};

/// 2 KiB, as Linux `IO_TLB_SIZE`.
pub const SLOT_SIZE: u64 = 2048;
/// 128 slots (256 KiB with 2 KiB slots), as Linux `IO_TLB_SEGSIZE`.
pub const DEFAULT_MAX_MAP_SLOTS: usize = 128;

/// The shape of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// A power of two, at least 64.
    pub slot_size: u64,
    /// The most slots one streaming mapping may span.
    pub max_map_slots: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            slot_size: SLOT_SIZE,
            max_map_slots: DEFAULT_MAX_MAP_SLOTS,
        }
    }
}

/// Counters for the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub slot_size: u64,
    pub slots: u64,
    /// The largest streaming mapping, in bytes.
    pub max_map_bytes: u64,
    pub allocations: u64,
    pub frees: u64,
    pub in_use_slots: u64,
    pub high_water_slots: u64,
    /// Bytes asked for by the live allocations, and the most there ever were at once.
    pub live_bytes: u64,
    pub high_water_bytes: u64,
    /// `Exhausted` answers: each one is a caller waiting for completions.
    pub exhausted: u64,
    /// Permanent failures (too large, unreachable, malformed).
    pub failures: u64,
}

/// A piece of the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// Device address of the first byte.
    pub addr: u64,
    /// Index of the first slot.
    pub slot: usize,
    /// Slots covered.
    pub slots: usize,
    /// Bytes asked for.
    pub len: usize,
}

pub struct SlotPool {
    base: u64,
    slot_size: u64,
    nslots: usize,
    max_map_slots: usize,
    /// One bit per slot, set when used.
    used: Vec<u64>,
    /// At the first slot of each live allocation: its length in bytes; 0 elsewhere.
    lens: Vec<u32>,
    stats: PoolStats,
}

impl core::fmt::Debug for SlotPool {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SlotPool")
            .field("base", &format_args!("{:#x}", self.base))
            .field("slots", &self.nslots)
            .field("stats", &self.stats)
            .finish()
    }
}

impl SlotPool {
    /// A pool over the device addresses `[base, base + size)`.
    pub fn new(base: u64, size: u64, config: PoolConfig) -> Result<Self, DmaError> {
        let slot = config.slot_size;
        if !slot.is_power_of_two() || slot < 64 {
            return Err(DmaError::InvalidRequest(
                "slot size is not a power of two >= 64",
            ));
        }
        if !base.is_multiple_of(slot) {
            return Err(DmaError::InvalidRequest("pool base is not slot-aligned"));
        }
        if size > u32::MAX as u64 || base.checked_add(size).is_none() {
            return Err(DmaError::InvalidRequest(
                "pool larger than 4 GiB or wrapping",
            ));
        }
        let nslots = (size / slot) as usize;
        if nslots == 0 {
            return Err(DmaError::InvalidRequest("pool smaller than one slot"));
        }
        if config.max_map_slots == 0 {
            return Err(DmaError::InvalidRequest("mappings of zero slots"));
        }
        let max_map_slots = config.max_map_slots.min(nslots);
        Ok(SlotPool {
            base,
            slot_size: slot,
            nslots,
            max_map_slots,
            used: vec![0; nslots.div_ceil(64)],
            lens: vec![0; nslots],
            stats: PoolStats {
                slot_size: slot,
                slots: nslots as u64,
                max_map_bytes: max_map_slots as u64 * slot,
                ..PoolStats::default()
            },
        })
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    /// Usable bytes (whole slots).
    pub fn size(&self) -> u64 {
        self.nslots as u64 * self.slot_size
    }

    pub fn slot_size(&self) -> u64 {
        self.slot_size
    }

    pub fn slots(&self) -> usize {
        self.nslots
    }

    /// The largest streaming mapping.
    pub fn max_map_bytes(&self) -> usize {
        self.max_map_slots * self.slot_size as usize
    }

    pub fn stats(&self) -> PoolStats {
        self.stats
    }

    /// Room for a streaming mapping of `len` bytes within `constraints` (alignment:
    /// `constraints.align`), at most [`SlotPool::max_map_bytes`].
    pub fn alloc_map(
        &mut self,
        len: usize,
        constraints: &DmaConstraints,
    ) -> Result<Allocation, DmaError> {
        self.alloc(len, 1, constraints, self.max_map_slots)
    }

    /// Room for a long-lived region of `len` bytes aligned to `align` (and `constraints.align`),
    /// up to the whole pool.
    pub fn alloc_region(
        &mut self,
        len: usize,
        align: u64,
        constraints: &DmaConstraints,
    ) -> Result<Allocation, DmaError> {
        self.alloc(len, align, constraints, self.nslots)
    }

    /// Releases the allocation at `addr` of `len` bytes (as allocated). Returns what it covered,
    /// so that the caller can zero it. Anything else (not a live allocation's start, another
    /// length) is `UnknownHandle` and changes nothing.
    pub fn free(&mut self, addr: u64, len: usize) -> Result<Allocation, DmaError> {
        let a = self.lookup(addr, len)?;
        self.set_used(a.slot, a.slots, false);
        self.lens[a.slot] = 0;
        let s = &mut self.stats;
        s.frees += 1;
        s.in_use_slots -= a.slots as u64;
        s.live_bytes -= len as u64;
        Ok(a)
    }

    /// The live allocation at `addr` of `len` bytes, or `UnknownHandle`.
    pub fn lookup(&self, addr: u64, len: usize) -> Result<Allocation, DmaError> {
        let off = addr.checked_sub(self.base).ok_or(DmaError::UnknownHandle)?;
        if off % self.slot_size != 0 {
            return Err(DmaError::UnknownHandle);
        }
        let slot = usize::try_from(off / self.slot_size).map_err(|_| DmaError::UnknownHandle)?;
        if slot >= self.nslots || len == 0 || self.lens[slot] as usize != len {
            return Err(DmaError::UnknownHandle);
        }
        Ok(Allocation {
            addr,
            slot,
            slots: len.div_ceil(self.slot_size as usize),
            len,
        })
    }

    fn alloc(
        &mut self,
        len: usize,
        align: u64,
        c: &DmaConstraints,
        limit_slots: usize,
    ) -> Result<Allocation, DmaError> {
        let r = self.try_alloc(len, align, c, limit_slots);
        let s = &mut self.stats;
        match &r {
            Ok(a) => {
                s.allocations += 1;
                s.in_use_slots += a.slots as u64;
                s.high_water_slots = s.high_water_slots.max(s.in_use_slots);
                s.live_bytes += len as u64;
                s.high_water_bytes = s.high_water_bytes.max(s.live_bytes);
            }
            Err(e) if e.is_transient() => s.exhausted += 1,
            Err(_) => s.failures += 1,
        }
        r
    }

    fn try_alloc(
        &mut self,
        len: usize,
        align: u64,
        c: &DmaConstraints,
        limit_slots: usize,
    ) -> Result<Allocation, DmaError> {
        c.validate()?;
        if !align.is_power_of_two() {
            return Err(DmaError::InvalidRequest("alignment is not a power of two"));
        }
        c.check_len(len)?;
        let slots = len.div_ceil(self.slot_size as usize);
        if slots > limit_slots {
            return Err(DmaError::TooLarge {
                requested: len,
                limit: limit_slots * self.slot_size as usize,
            });
        }
        if c.boundary != 0 && len as u64 > c.boundary {
            return Err(DmaError::TooLarge {
                requested: len,
                limit: usize::try_from(c.boundary).unwrap_or(usize::MAX),
            });
        }
        let align = align.max(c.align);
        if let Some(slot) = self.search(slots, len, align, c, true) {
            self.set_used(slot, slots, true);
            self.lens[slot] = len as u32;
            return Ok(Allocation {
                addr: self.slot_addr(slot),
                slot,
                slots,
                len,
            });
        }
        if self.search(slots, len, align, c, false).is_some() {
            return Err(DmaError::Exhausted { requested: len });
        }
        if self.base.saturating_add(len as u64 - 1) > c.max_addr {
            return Err(DmaError::Unreachable {
                addr: super::DeviceAddr::new(self.base),
                len,
                max_addr: c.max_addr,
            });
        }
        Err(DmaError::InvalidRequest(
            "no address in the pool satisfies the alignment and boundary",
        ))
    }

    fn slot_addr(&self, slot: usize) -> u64 {
        self.base + slot as u64 * self.slot_size
    }

    /// The lowest slot index where `slots` slots holding `len` bytes satisfy `align` and `c`
    /// (and are free, when `respect_used`).
    fn search(
        &self,
        slots: usize,
        len: usize,
        align: u64,
        c: &DmaConstraints,
        respect_used: bool,
    ) -> Option<usize> {
        let slot = self.slot_size;
        // Slot addresses are multiples of the slot size, so a smaller alignment always holds.
        let (first, step) = if align > slot {
            let a = self.base.checked_next_multiple_of(align)?;
            (
                usize::try_from((a - self.base) / slot).ok()?,
                (align / slot) as usize,
            )
        } else {
            (0, 1)
        };
        // The smallest candidate index at or above `j`.
        let up = |j: usize| first + (j.saturating_sub(first)).div_ceil(step) * step;
        let mut i = first;
        while i.checked_add(slots)? <= self.nslots {
            let addr = self.slot_addr(i);
            let last = addr + (len as u64 - 1);
            if last > c.max_addr {
                return None; // addresses only grow from here
            }
            if c.boundary != 0 {
                let mask = !(c.boundary - 1);
                if addr & mask != last & mask {
                    // Start again at the next multiple of the boundary.
                    let next = (addr | (c.boundary - 1)).checked_add(1)?;
                    let j = (next - self.base).div_ceil(slot);
                    i = up(usize::try_from(j).ok()?);
                    continue;
                }
            }
            if respect_used && let Some(u) = self.last_used(i, slots) {
                i = up(u + 1);
                continue;
            }
            return Some(i);
        }
        None
    }

    /// The highest used slot in `[start, start + n)`.
    fn last_used(&self, start: usize, n: usize) -> Option<usize> {
        let end = start + n - 1; // inclusive
        let (w_lo, w_hi) = (start / 64, end / 64);
        for w in (w_lo..=w_hi).rev() {
            let lo = if w == w_lo { start % 64 } else { 0 };
            let hi = if w == w_hi { end % 64 } else { 63 };
            let mask = (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
            let bits = self.used[w] & mask;
            if bits != 0 {
                return Some(w * 64 + 63 - bits.leading_zeros() as usize);
            }
        }
        None
    }

    fn set_used(&mut self, start: usize, n: usize, used: bool) {
        for i in start..start + n {
            let (w, b) = (i / 64, i % 64);
            if used {
                self.used[w] |= 1 << b;
            } else {
                self.used[w] &= !(1 << b);
            }
        }
    }

    /// Whether no slot is in use (for checks after everything was released).
    pub fn is_empty(&self) -> bool {
        self.used.iter().all(|&w| w == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma::DeviceAddr;
    use alloc::collections::BTreeMap;

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn pow2_up_to(&mut self, max_shift: u32) -> u64 {
            1 << self.below(max_shift as u64 + 1)
        }
    }

    fn pool(base: u64, slots: u64) -> SlotPool {
        SlotPool::new(base, slots * SLOT_SIZE, PoolConfig::default()).unwrap()
    }

    fn c(max_addr: u64, align: u64, boundary: u64) -> DmaConstraints {
        DmaConstraints {
            max_addr,
            align,
            boundary,
            max_len: usize::MAX,
        }
    }

    #[test]
    fn construction_limits() {
        let cfg = PoolConfig::default();
        assert!(
            SlotPool::new(0x1400, 0x10_0000, cfg).is_err(),
            "base not slot-aligned"
        );
        assert!(
            SlotPool::new(0x10_0000, 100, cfg).is_err(),
            "smaller than a slot"
        );
        assert!(SlotPool::new(0, 8 << 30, cfg).is_err(), "over 4 GiB");
        assert!(
            SlotPool::new(u64::MAX - 0xfff, 0x2000, cfg).is_err(),
            "wraps"
        );
        let bad_slot = PoolConfig {
            slot_size: 3000,
            ..cfg
        };
        assert!(SlotPool::new(0, 0x10_0000, bad_slot).is_err());
        let p = SlotPool::new(0x10_0000, 0x10_0000 + 100, cfg).unwrap();
        assert_eq!((p.slots(), p.size(), p.base()), (512, 0x10_0000, 0x10_0000));
        assert_eq!(p.max_map_bytes(), 256 << 10);
        // A pool smaller than one segment caps mappings at its size.
        let p = pool(0x10_0000, 4);
        assert_eq!(p.max_map_bytes(), 4 * 2048);
        assert_eq!(p.stats().slots, 4);
    }

    #[test]
    fn first_fit_alignment_boundary_and_limits() {
        let mut p = pool(0x100_0800, 256); // base only 2 KiB aligned
        let a = p.alloc_map(100, &DmaConstraints::NONE).unwrap();
        assert_eq!((a.addr, a.slot, a.slots), (0x100_0800, 0, 1));
        // 4 KiB alignment skips slot 1 (0x...1000 is aligned: slot 1).
        let b = p.alloc_map(3000, &c(u64::MAX, 4096, 0)).unwrap();
        assert_eq!((b.addr, b.slots), (0x100_1000, 2));
        // 16 KiB of 8 KiB alignment that must not cross 16 KiB: 0x100_4000.
        let d = p.alloc_map(16 << 10, &c(u64::MAX, 8192, 16 << 10)).unwrap();
        assert_eq!(d.addr, 0x100_4000);
        // Up to the segment limit, not beyond.
        let e = p.alloc_map(256 << 10, &DmaConstraints::NONE).unwrap();
        assert_eq!(e.slots, 128);
        assert!(matches!(
            p.alloc_map((256 << 10) + 1, &DmaConstraints::NONE),
            Err(DmaError::TooLarge {
                limit: 0x4_0000,
                ..
            })
        ));
        // Regions may exceed it.
        let r = p
            .alloc_region(100 << 10, 4096, &DmaConstraints::NONE)
            .unwrap();
        assert_eq!(r.addr % 4096, 0);
        // A length beyond the boundary, max_len, a bad alignment, zero.
        assert!(matches!(
            p.alloc_map(5000, &c(u64::MAX, 1, 4096)),
            Err(DmaError::TooLarge { limit: 4096, .. })
        ));
        let short = DmaConstraints {
            max_len: 10,
            ..DmaConstraints::NONE
        };
        assert!(matches!(
            p.alloc_map(11, &short),
            Err(DmaError::TooLarge { .. })
        ));
        assert!(matches!(
            p.alloc_region(8, 3, &DmaConstraints::NONE),
            Err(DmaError::InvalidRequest(_))
        ));
        assert!(matches!(
            p.alloc_map(0, &DmaConstraints::NONE),
            Err(DmaError::InvalidRequest(_))
        ));
        // Below the pool: unreachable; an alignment no pool address has: invalid.
        assert!(matches!(
            p.alloc_map(8, &DmaConstraints::DMA32.with_align(1).clone_max(0xff_ffff)),
            Err(DmaError::Unreachable { .. })
        ));
        assert!(matches!(
            p.alloc_map(8, &c(u64::MAX, 1 << 30, 0)),
            Err(DmaError::InvalidRequest(_))
        ));
        assert_eq!(p.stats().failures, 7);
        assert_eq!(p.stats().exhausted, 0);
    }

    trait CloneMax {
        fn clone_max(self, max: u64) -> DmaConstraints;
    }

    impl CloneMax for DmaConstraints {
        fn clone_max(self, max: u64) -> DmaConstraints {
            DmaConstraints {
                max_addr: max,
                ..self
            }
        }
    }

    #[test]
    fn exhaustion_is_transient_and_free_is_checked() {
        let mut p = pool(0x20_0000, 8);
        let a = p.alloc_map(4 * 2048, &DmaConstraints::NONE).unwrap();
        let b = p.alloc_map(4 * 2048, &DmaConstraints::NONE).unwrap();
        assert_eq!(
            p.alloc_map(1, &DmaConstraints::NONE),
            Err(DmaError::Exhausted { requested: 1 })
        );
        assert_eq!(p.stats().exhausted, 1);
        // Wrong length, not a start, outside, twice: refused, nothing changes.
        assert_eq!(p.free(a.addr, 4 * 2048 - 1), Err(DmaError::UnknownHandle));
        assert_eq!(p.free(a.addr + 2048, 2048), Err(DmaError::UnknownHandle));
        assert_eq!(p.free(0x10_0000, 2048), Err(DmaError::UnknownHandle));
        assert_eq!(p.free(a.addr + 1, 2048), Err(DmaError::UnknownHandle));
        assert_eq!(p.free(a.addr, 4 * 2048).unwrap().slots, 4);
        assert_eq!(p.free(a.addr, 4 * 2048), Err(DmaError::UnknownHandle));
        assert_eq!(p.alloc_map(1, &DmaConstraints::NONE).unwrap().addr, a.addr);
        let s = p.stats();
        assert_eq!(
            (s.in_use_slots, s.high_water_slots, s.live_bytes),
            (5, 8, 8193)
        );
        assert_eq!(s.high_water_bytes, 16384);
        assert!(p.lookup(b.addr, b.len).is_ok());
    }

    /// Brute force: the lowest slot where the request fits, given occupancy (or ignoring it).
    fn oracle(
        p: &SlotPool,
        occupied: &[bool],
        len: usize,
        align: u64,
        cons: &DmaConstraints,
        limit: usize,
        respect: bool,
    ) -> Option<usize> {
        let n = len.div_ceil(SLOT_SIZE as usize);
        if len == 0 || n > limit || len > cons.max_len {
            return None;
        }
        let align = align.max(cons.align);
        // Prefix sums of occupancy for O(1) window checks.
        let mut pre = vec![0usize; occupied.len() + 1];
        for (i, &o) in occupied.iter().enumerate() {
            pre[i + 1] = pre[i] + o as usize;
        }
        (0..p.slots())
            .filter(|&i| i + n <= p.slots())
            .filter(|&i| !respect || pre[i + n] == pre[i])
            .find(|&i| {
                let addr = p.base() + i as u64 * SLOT_SIZE;
                addr.is_multiple_of(align) && cons.check(DeviceAddr::new(addr), len).is_ok()
            })
    }

    #[test]
    fn property_random_sequences() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let mut total_ops = 0;
        let (mut oks, mut waits, mut permanent) = (0, 0, 0);
        for seq in 0..1000 {
            let slots = 1 + rng.below(if seq % 10 == 0 { 1000 } else { 200 });
            let base = 0x4000_0000 + rng.below(4096) * SLOT_SIZE;
            let limit = [1, 3, 16, 128][rng.below(4) as usize];
            let cfg = PoolConfig {
                slot_size: SLOT_SIZE,
                max_map_slots: limit,
            };
            let mut p = SlotPool::new(base, slots * SLOT_SIZE, cfg).unwrap();
            let map_limit = limit.min(slots as usize);
            let size = p.size();
            let mut occupied = vec![false; p.slots()];
            let mut live: BTreeMap<u64, (usize, usize)> = BTreeMap::new(); // addr -> (len, slots)
            for _ in 0..120 {
                total_ops += 1;
                if !live.is_empty() && rng.below(10) < 3 {
                    // Free a random live allocation.
                    let k = rng.below(live.len() as u64) as usize;
                    let (&addr, &(len, n)) = live.iter().nth(k).unwrap();
                    let a = p.free(addr, len).unwrap();
                    assert_eq!((a.addr, a.slots), (addr, n));
                    for o in &mut occupied[a.slot..a.slot + n] {
                        assert!(*o);
                        *o = false;
                    }
                    live.remove(&addr);
                    continue;
                }
                let len = match rng.below(4) {
                    0 => 1 + rng.below(64),
                    1 => 1 + rng.below(4 * SLOT_SIZE),
                    2 => 1 + rng.below(128 * SLOT_SIZE + 100),
                    _ => SLOT_SIZE * (1 + rng.below(8)),
                } as usize;
                let align = rng.pow2_up_to(15);
                let cons = DmaConstraints {
                    max_addr: match rng.below(16) {
                        0 => base.saturating_sub(1 + rng.below(100)),
                        1 | 2 => base + rng.below(size),
                        _ => u64::MAX,
                    },
                    align: rng.pow2_up_to(12),
                    boundary: match rng.below(4) {
                        0 => 1 << (11 + rng.below(10)),
                        _ => 0,
                    },
                    max_len: if rng.below(16) == 0 {
                        rng.below(10_000) as usize
                    } else {
                        usize::MAX
                    },
                };
                let region = rng.below(5) == 0;
                let (r, lim, al) = if region {
                    (p.alloc_region(len, align, &cons), p.slots(), align)
                } else {
                    (p.alloc_map(len, &cons), map_limit, 1)
                };
                let now = oracle(&p, &occupied, len, al, &cons, lim, true);
                let ever = oracle(&p, &occupied, len, al, &cons, lim, false);
                match r {
                    Ok(a) => {
                        assert_eq!(Some(a.slot), now, "first fit, seq {seq}");
                        let addr = DeviceAddr::new(a.addr);
                        cons.check(addr, len).unwrap();
                        assert_eq!(a.addr % al.max(cons.align), 0);
                        assert!(a.addr >= base && a.addr + len as u64 <= base + size);
                        for o in &mut occupied[a.slot..a.slot + a.slots] {
                            assert!(!*o, "overlap, seq {seq}");
                            *o = true;
                        }
                        live.insert(a.addr, (len, a.slots));
                        oks += 1;
                    }
                    Err(DmaError::Exhausted { requested }) => {
                        assert_eq!(requested, len);
                        assert_eq!(now, None, "exhausted although it fits, seq {seq}");
                        assert!(
                            ever.is_some(),
                            "exhausted although it never fits, seq {seq}"
                        );
                        waits += 1;
                    }
                    Err(e) => {
                        assert!(!e.is_transient());
                        assert_eq!(
                            ever, None,
                            "permanent {e:?} for a request that fits, seq {seq}"
                        );
                        permanent += 1;
                    }
                }
                let s = p.stats();
                assert_eq!(
                    s.in_use_slots,
                    occupied.iter().filter(|&&o| o).count() as u64
                );
                assert_eq!(
                    s.live_bytes,
                    live.values().map(|&(l, _)| l as u64).sum::<u64>()
                );
            }
            // Free everything: accounting back to zero, no slot lost.
            for (&addr, &(len, _)) in &live {
                p.free(addr, len).unwrap();
            }
            let s = p.stats();
            assert_eq!((s.in_use_slots, s.live_bytes), (0, 0));
            assert_eq!(s.allocations, s.frees);
            assert!(s.high_water_slots <= s.slots);
            assert!(p.is_empty());
            let all = p
                .alloc_region(size as usize, 1, &DmaConstraints::NONE)
                .unwrap();
            assert_eq!((all.addr, all.slots), (base, p.slots()));
        }
        assert!(total_ops >= 100_000);
        // Every outcome was exercised, many times.
        assert!(
            oks > 20_000 && waits > 2_000 && permanent > 2_000,
            "{oks} {waits} {permanent}"
        );
    }
}
