//! `Bounce`: the swiotlb path. Devices only ever see slots of one shared pool; data is copied
//! between the private buffers and the slots.
//!
//! At boot, [`Bounce::new`] takes a free physical range, aligns it inward to the platform's
//! granularity, shares it with one [`Platform::share`] call, zeroes it, and builds a
//! [`SlotPool`] over its *device* addresses ([`Platform::device_addr`], which may differ from
//! the guest-physical ones). Then:
//!
//! | call | does |
//! |---|---|
//! | `alloc_shared` | slots for a ring / header, zeroed (the device may have scribbled on free slots) |
//! | `map(ToDevice / Bidirectional)` | slots, the buffer copied in; the device gets the slot's device address |
//! | `map(FromDevice)` | slots, nothing copied: the private buffer's old contents never reach the host |
//! | `sync_for_cpu` | copies the range back (FromDevice, Bidirectional) |
//! | `sync_for_device` | copies the range in (ToDevice, Bidirectional) |
//! | `unmap` | copies back the whole mapping (FromDevice, Bidirectional), then **zeroes** the slots and frees them |
//! | `free_shared` | zeroes and frees |
//!
//! `unmap` copies back the whole mapping length, because the bounce path cannot know how much the
//! device wrote; bytes the device did not write come back as what the slot held: zeros (slots are
//! zeroed on release) or device data, never another buffer's contents. Linux instead copies the
//! buffer into the slot for `FromDevice` too, so that unwritten bytes survive; that shows the
//! buffer's old contents to the host, which a secure guest must not do. A driver that wants only
//! the written bytes calls `sync_for_cpu(0, written_len)` and then unmaps.
//!
//! Zeroing on release is what keeps private data out of shared memory once a request is done.
//! [`Bounce::set_debug_skip_zeroing`] turns it off (test only, `sg.debug.leak=1`): a host dump of
//! the pool must then find the guest's secret marks ([`crate::platform::secret`]).
//!
//! All copies to and from slots are volatile: the device may write a slot at any time, and the
//! zeroing must not be optimised away because nothing reads the slot afterwards. They are wide
//! (aligned doublewords on the slot side) and unrolled ([`CHUNK`]); zeroing covers every slot of
//! the allocation, not just the mapping length, because a hostile device may write anywhere in
//! its slots.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::pool::{PoolConfig, PoolStats, SlotPool};
use super::{
    DeviceAddr, Direction, Dma, DmaConstraints, DmaCounters, DmaError, DmaStats, Mapping,
    SharedRegion, check_sync_range,
};
use crate::memmap::MemoryMap;
use crate::platform::{Platform, PlatformError};

/// Why the pool could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BounceError {
    /// Nothing is left of the range after aligning it to the granularity.
    TooSmall {
        phys: u64,
        size: u64,
        granularity: u64,
    },
    /// The platform's device addresses are not linear over the range.
    NonLinearAlias { phys: u64, size: u64 },
    /// The platform refused to share the range (recorded in its log).
    Share(PlatformError),
    /// The pool itself (size over 4 GiB, bad slot configuration).
    Pool(DmaError),
    /// `release` while mappings or regions are still live.
    Busy { in_use_slots: u64 },
}

impl core::fmt::Display for BounceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            BounceError::TooSmall {
                phys,
                size,
                granularity,
            } => write!(
                f,
                "{size:#x} bytes at {phys:#x} hold no {granularity:#x}-aligned shared range"
            ),
            BounceError::NonLinearAlias { phys, size } => write!(
                f,
                "device addresses of {size:#x} bytes at {phys:#x} are not contiguous"
            ),
            BounceError::Share(e) => write!(f, "share failed: {e}"),
            BounceError::Pool(e) => write!(f, "pool: {e}"),
            BounceError::Busy { in_use_slots } => {
                write!(f, "{in_use_slots} slots still in use")
            }
        }
    }
}

/// Where the pool is, for the report and for a host-side memory dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolRegion {
    /// Guest-physical base (granularity-aligned).
    pub phys: u64,
    /// Its device address.
    pub device: u64,
    /// Bytes shared (the pool uses whole slots of it).
    pub size: u64,
}

/// Everything the report shows about the bounce path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BounceStats {
    pub dma: DmaStats,
    pub pool: PoolStats,
    /// Bytes zeroed on release.
    pub zeroed_bytes: u64,
    /// Releases that skipped zeroing (`sg.debug.leak`).
    pub unzeroed_releases: u64,
    pub debug_skip_zeroing: bool,
}

/// The bounce path over one shared pool.
pub struct Bounce<'p> {
    platform: &'p dyn Platform,
    region: PoolRegion,
    /// CPU pointer of `region.phys` (identity-mapped).
    cpu: NonNull<u8>,
    pool: spin::Mutex<SlotPool>,
    skip_zeroing: AtomicBool,
    counters: DmaCounters,
    zeroed_bytes: AtomicU64,
    unzeroed_releases: AtomicU64,
}

// SAFETY: `cpu` points to the shared range this `Bounce` owns for good (constructor contract).
// The allocator state is behind a mutex; the bytes of an allocation are touched only through the
// mapping or region that owns it (whose caller has exclusive use of it, per the `Dma` contracts),
// and free slots only by the constructor and by `release`, which take `self` exclusively.
unsafe impl Send for Bounce<'_> {}
// SAFETY: as above; every `&self` method either locks the pool or works on slots its caller owns.
unsafe impl Sync for Bounce<'_> {}

impl core::fmt::Debug for Bounce<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Bounce")
            .field("platform", &self.platform.name())
            .field("region", &self.region)
            .field("pool", &*self.pool.lock())
            .finish()
    }
}

/// Bytes per unrolled step of the slot copies and the zeroing: eight doublewords.
///
/// Every access to a slot stays volatile (see the module documentation), but wide and unrolled:
/// the old loops tested alignment and the remaining length before every doubleword, which under
/// TCG cost about as much as the access itself. `core::ptr::copy_nonoverlapping` /
/// `write_bytes` would let the compiler call `memcpy` / `memset`, and on the guest targets those
/// are slower than this: `rep movsq` / `rep stosq` from compiler_builtins (x86_64), and
/// boot/ppc64/mem.S (ppc64), which falls back to a byte loop whenever the two pointers are not
/// equally 8-aligned. Volatile accesses also keep both guarantees without further argument:
/// the zeroing cannot be elided, and no access to a slot is merged with, moved across or
/// repeated around the drivers' barriers (`crate::virtio::barrier`) that hand the slot to and
/// from the device.
const CHUNK: usize = 64;

/// The loop shape the three slot operations share: single bytes until `aligned` (the slot side)
/// is 8-aligned, then [`CHUNK`] bytes as eight doublewords, then doublewords, then single bytes.
/// `byte(i)` moves the byte at offset `i`, `word(i)` the 8 bytes at offset `i` (8-aligned on the
/// slot side). Always inlined, so each caller compiles to its own straight loops.
///
/// # Safety
/// `byte` and `word` must be sound for every offset they are called with: all of them are below
/// `len` (`word`: `i + 8 <= len`).
#[inline(always)]
unsafe fn for_each_block(
    aligned: *const u8,
    len: usize,
    mut byte: impl FnMut(usize),
    mut word: impl FnMut(usize),
) {
    let head = aligned.align_offset(8).min(len);
    let mut i = 0;
    while i < head {
        byte(i);
        i += 1;
    }
    while len - i >= CHUNK {
        word(i);
        word(i + 8);
        word(i + 16);
        word(i + 24);
        word(i + 32);
        word(i + 40);
        word(i + 48);
        word(i + 56);
        i += CHUNK;
    }
    while len - i >= 8 {
        word(i);
        i += 8;
    }
    while i < len {
        byte(i);
        i += 1;
    }
}

/// Volatile copy from private memory into a slot (slot side aligned and volatile, private reads
/// possibly unaligned).
///
/// # Safety
/// `dst` is valid for `len` bytes of writes, `src` for `len` bytes of reads, not overlapping.
unsafe fn copy_to_shared(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: every offset `for_each_block` passes lies inside both ranges (caller contract),
    // and `dst + i` is 8-aligned whenever `word` is called.
    unsafe {
        for_each_block(
            dst,
            len,
            |i| dst.add(i).write_volatile(src.add(i).read()),
            |i| {
                let v = src.add(i).cast::<u64>().read_unaligned();
                dst.add(i).cast::<u64>().write_volatile(v)
            },
        )
    }
}

/// Volatile copy from a slot into private memory, as [`copy_to_shared`] the other way.
///
/// # Safety
/// As for [`copy_to_shared`].
unsafe fn copy_from_shared(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: as in `copy_to_shared`, with `src + i` the aligned side.
    unsafe {
        for_each_block(
            src,
            len,
            |i| dst.add(i).write(src.add(i).read_volatile()),
            |i| {
                let v = src.add(i).cast::<u64>().read_volatile();
                dst.add(i).cast::<u64>().write_unaligned(v)
            },
        )
    }
}

/// [`copy_from_shared`] and [`zero_shared`] of the same bytes in one pass: each doubleword of
/// the slot is read once, written to private memory, then zeroed. Half the loop work of the two
/// passes, and the slot is walked once.
///
/// # Safety
/// As for [`copy_from_shared`], with `src` also valid for `len` bytes of writes.
unsafe fn move_from_shared(dst: *mut u8, src: *mut u8, len: usize) {
    // SAFETY: as in `copy_from_shared` and `zero_shared`, with `src + i` the aligned side.
    unsafe {
        for_each_block(
            src,
            len,
            |i| {
                dst.add(i).write(src.add(i).read_volatile());
                src.add(i).write_volatile(0);
            },
            |i| {
                let at = src.add(i).cast::<u64>();
                let v = at.read_volatile();
                at.write_volatile(0);
                dst.add(i).cast::<u64>().write_unaligned(v)
            },
        )
    }
}

/// Volatile zeroing, which the compiler cannot elide.
///
/// # Safety
/// `dst` is valid for `len` bytes of writes.
unsafe fn zero_shared(dst: *mut u8, len: usize) {
    // SAFETY: every offset lies inside the range (caller contract); `dst + i` is 8-aligned
    // whenever `word` is called.
    unsafe {
        for_each_block(
            dst,
            len,
            |i| dst.add(i).write_volatile(0),
            |i| dst.add(i).cast::<u64>().write_volatile(0),
        )
    }
}

impl<'p> Bounce<'p> {
    /// Sets up the pool in `[phys, phys + size)`, aligned inward to the platform's granularity:
    /// one `share` call for the whole range, then zeroing.
    ///
    /// # Safety
    /// The range is RAM that nothing else uses, now or later (the pool owns it for good, and it
    /// becomes host-visible); it is identity-mapped (the CPU reaches physical address `p` at
    /// pointer value `p`); no Rust reference points into it.
    pub unsafe fn new(
        platform: &'p dyn Platform,
        phys: u64,
        size: u64,
        config: PoolConfig,
    ) -> Result<Self, BounceError> {
        let g = platform.granularity();
        let too_small = BounceError::TooSmall {
            phys,
            size,
            granularity: g,
        };
        let base = phys.checked_next_multiple_of(g).ok_or(too_small)?;
        let end = phys.checked_add(size).ok_or(too_small)? & !(g - 1);
        if end <= base {
            return Err(too_small);
        }
        let len = end - base;
        let device = platform.device_addr(base);
        if platform.device_addr(end - 1).checked_sub(device) != Some(len - 1) {
            return Err(BounceError::NonLinearAlias {
                phys: base,
                size: len,
            });
        }
        let pool = SlotPool::new(device, len, config).map_err(BounceError::Pool)?;
        let cpu = NonNull::new(core::ptr::with_exposed_provenance_mut::<u8>(base as usize)).ok_or(
            BounceError::Pool(DmaError::InvalidRequest("pool at address 0")),
        )?;
        // SAFETY: the caller gives us the range; it is aligned to the granularity.
        unsafe { platform.share(base, len) }.map_err(BounceError::Share)?;
        // SAFETY: the range is ours and mapped; from now on the host may read it, so it starts
        // out as zeros (a platform may leave whatever the memory held, or new pages).
        unsafe { zero_shared(cpu.as_ptr(), len as usize) };
        Ok(Bounce {
            platform,
            region: PoolRegion {
                phys: base,
                device,
                size: len,
            },
            cpu,
            pool: spin::Mutex::new(pool),
            skip_zeroing: AtomicBool::new(false),
            counters: DmaCounters::new(),
            zeroed_bytes: AtomicU64::new(0),
            unzeroed_releases: AtomicU64::new(0),
        })
    }

    /// Makes the range private again (one `unshare` call) after zeroing it. Only when nothing is
    /// allocated.
    ///
    /// # Safety
    /// No device uses the pool any more (every device that was given its addresses was reset).
    pub unsafe fn release(self) -> Result<(), BounceError> {
        let in_use = self.pool.lock().stats().in_use_slots;
        if in_use != 0 {
            return Err(BounceError::Busy {
                in_use_slots: in_use,
            });
        }
        let r = self.region;
        // SAFETY: the range is ours, nothing is allocated in it and no device uses it.
        unsafe {
            zero_shared(self.cpu.as_ptr(), r.size as usize);
            self.platform.unshare(r.phys, r.size)
        }
        .map_err(BounceError::Share)
    }

    pub fn region(&self) -> PoolRegion {
        self.region
    }

    pub fn platform(&self) -> &'p dyn Platform {
        self.platform
    }

    /// The largest streaming mapping (drivers split larger transfers).
    pub fn max_mapping_size(&self) -> usize {
        self.pool.lock().max_map_bytes()
    }

    /// Test only (`sg.debug.leak=1`): leave released slots as they are, so that private data
    /// stays in shared memory. The host memory-dump oracle must catch it.
    pub fn set_debug_skip_zeroing(&self, skip: bool) {
        self.skip_zeroing.store(skip, Ordering::Relaxed);
    }

    pub fn debug_skip_zeroing(&self) -> bool {
        self.skip_zeroing.load(Ordering::Relaxed)
    }

    pub fn pool_stats(&self) -> PoolStats {
        self.pool.lock().stats()
    }

    pub fn bounce_stats(&self) -> BounceStats {
        BounceStats {
            dma: self.stats(),
            pool: self.pool_stats(),
            zeroed_bytes: self.zeroed_bytes.load(Ordering::Relaxed),
            unzeroed_releases: self.unzeroed_releases.load(Ordering::Relaxed),
            debug_skip_zeroing: self.debug_skip_zeroing(),
        }
    }

    /// The CPU pointer of device address `addr` inside the pool.
    fn cpu_at(&self, addr: u64) -> *mut u8 {
        let off = addr - self.region.device;
        debug_assert!(off < self.region.size);
        // SAFETY: `off` is below the region's size (addresses come from the pool).
        unsafe { self.cpu.as_ptr().add(off as usize) }
    }

    /// Zeroes (unless skipped) and frees an allocation the caller owns. The first `zeroed`
    /// bytes were zeroed already (by [`move_from_shared`]).
    fn release_slots(&self, addr: u64, len: usize, zeroed: usize) -> Result<(), DmaError> {
        let a = self.pool.lock().lookup(addr, len)?;
        let bytes = a.slots * self.pool.lock().slot_size() as usize;
        if self.debug_skip_zeroing() {
            self.unzeroed_releases.fetch_add(1, Ordering::Relaxed);
        } else {
            let zeroed = zeroed.min(bytes);
            // SAFETY: the slots are a live allocation of the caller's, inside the pool, and
            // `zeroed` lies within them.
            unsafe { zero_shared(self.cpu_at(addr).add(zeroed), bytes - zeroed) };
            self.zeroed_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        }
        self.pool.lock().free(addr, len).map(|_| ())
    }

    fn try_map(
        &self,
        buffer: NonNull<[u8]>,
        direction: Direction,
        constraints: &DmaConstraints,
    ) -> Result<Mapping, DmaError> {
        let len = buffer.len();
        let a = self.pool.lock().alloc_map(len, constraints)?;
        let slot = self.cpu_at(a.addr);
        let cpu = buffer.cast::<u8>();
        if direction.device_reads() {
            // SAFETY: the buffer is readable for `len` bytes (map's contract); the slots are ours.
            unsafe { copy_to_shared(slot, cpu.as_ptr(), len) };
            self.counters
                .bounced_to_device
                .fetch_add(len as u64, Ordering::Relaxed);
        }
        // SAFETY: the buffer and its contract are the caller's; the device reaches the copy at
        // the slot's device address.
        Ok(unsafe { Mapping::new(DeviceAddr::new(a.addr), cpu, len, direction, a.slot) })
    }

    /// The live allocation of a mapping made here.
    fn check_mapping(&self, mapping: &Mapping) -> Result<(), DmaError> {
        let a = self
            .pool
            .lock()
            .lookup(mapping.device_addr().as_u64(), mapping.len())?;
        if a.slot != mapping.cookie() {
            return Err(DmaError::UnknownHandle);
        }
        Ok(())
    }
}

impl Dma for Bounce<'_> {
    fn name(&self) -> &'static str {
        "bounce"
    }

    fn alloc_shared(
        &self,
        size: usize,
        align: usize,
        constraints: &DmaConstraints,
    ) -> Result<SharedRegion, DmaError> {
        let r = (|| {
            let align = u64::try_from(align).map_err(|_| DmaError::InvalidRequest("alignment"))?;
            let (a, slot_size) = {
                let mut pool = self.pool.lock();
                (
                    pool.alloc_region(size, align, constraints)?,
                    pool.slot_size(),
                )
            };
            let cpu = self.cpu_at(a.addr);
            // SAFETY: fresh slots of ours; a device may have written free slots, so zero them.
            unsafe { zero_shared(cpu, a.slots * slot_size as usize) };
            let region_align = align.max(constraints.align) as usize;
            // SAFETY: the slots stay ours until `free_shared`; volatile access only (SharedRegion);
            // the device reaches them at `a.addr`.
            Ok(unsafe {
                SharedRegion::new(
                    NonNull::new(cpu).ok_or(DmaError::UnknownHandle)?,
                    DeviceAddr::new(a.addr),
                    size,
                    region_align,
                    a.slot,
                )
            })
        })();
        self.counters.count_alloc_shared(size, &r);
        r
    }

    unsafe fn free_shared(&self, region: SharedRegion) -> Result<(), DmaError> {
        let addr = region.device_addr().as_u64();
        let a = self.pool.lock().lookup(addr, region.len())?;
        if a.slot != region.cookie() || region.cpu_ptr().as_ptr() != self.cpu_at(addr) {
            return Err(DmaError::UnknownHandle);
        }
        self.release_slots(addr, region.len(), 0)?;
        self.counters.count_free_shared(region.len());
        Ok(())
    }

    unsafe fn map(
        &self,
        buffer: NonNull<[u8]>,
        direction: Direction,
        constraints: &DmaConstraints,
    ) -> Result<Mapping, DmaError> {
        match self.try_map(buffer, direction, constraints) {
            Ok(m) => {
                self.counters.count_map(m.len());
                Ok(m)
            }
            Err(e) => {
                self.counters.map_failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    unsafe fn unmap(&self, mapping: Mapping) -> Result<(), DmaError> {
        self.check_mapping(&mapping)?;
        let addr = mapping.device_addr().as_u64();
        let len = mapping.len();
        let mut zeroed = 0;
        if mapping.direction().device_writes() {
            let (dst, slot) = (mapping.cpu_ptr().as_ptr(), self.cpu_at(addr));
            if self.debug_skip_zeroing() {
                // SAFETY: the buffer is writable for `len` bytes until unmap returns (map's
                // contract); the slots are this mapping's.
                unsafe { copy_from_shared(dst, slot, len) };
            } else {
                // SAFETY: as above; the slots stay the pool's (writable) until released.
                unsafe { move_from_shared(dst, slot, len) };
                zeroed = len;
            }
            self.counters
                .bounced_from_device
                .fetch_add(len as u64, Ordering::Relaxed);
        }
        self.release_slots(addr, len, zeroed)?;
        self.counters.unmaps.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    unsafe fn sync_for_cpu(
        &self,
        mapping: &Mapping,
        offset: usize,
        len: usize,
    ) -> Result<(), DmaError> {
        check_sync_range(mapping, offset, len)?;
        self.check_mapping(mapping)?;
        if mapping.direction().device_writes() {
            let slot = self.cpu_at(mapping.device_addr().as_u64());
            // SAFETY: in range (checked); the buffer range is the CPU's again (sync contract).
            unsafe {
                copy_from_shared(
                    mapping.cpu_ptr().as_ptr().add(offset),
                    slot.add(offset),
                    len,
                )
            };
            self.counters
                .bounced_from_device
                .fetch_add(len as u64, Ordering::Relaxed);
        }
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    unsafe fn sync_for_device(
        &self,
        mapping: &Mapping,
        offset: usize,
        len: usize,
    ) -> Result<(), DmaError> {
        check_sync_range(mapping, offset, len)?;
        self.check_mapping(mapping)?;
        if mapping.direction().device_reads() {
            let slot = self.cpu_at(mapping.device_addr().as_u64());
            // SAFETY: in range (checked); the CPU hands the range back (sync contract).
            unsafe {
                copy_to_shared(
                    slot.add(offset),
                    mapping.cpu_ptr().as_ptr().add(offset),
                    len,
                )
            };
            self.counters
                .bounced_to_device
                .fetch_add(len as u64, Ordering::Relaxed);
        }
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn stats(&self) -> DmaStats {
        self.counters.snapshot()
    }
}

/// Where to put a pool of `size` bytes: the highest `granularity`-aligned base such that the
/// whole pool is free RAM in `map` and ends at or below `limit` (4 GiB keeps it reachable by
/// 32-bit DMA engines and legacy queue PFNs). Mark the heap and everything else in use as
/// reserved in `map` first.
pub fn place(map: &MemoryMap, size: u64, granularity: u64, limit: u64) -> Option<u64> {
    if size == 0 || !granularity.is_power_of_two() {
        return None;
    }
    let mut best: Option<u64> = None;
    map.for_each_free(granularity, size, |start, stop| {
        let end = stop.min(limit);
        if let Some(base) = end.checked_sub(size).map(|b| b & !(granularity - 1))
            && base >= start
            && best.is_none_or(|b| base > b)
        {
            best = Some(base);
        }
    });
    best
}

#[cfg(test)]
mod tests;
