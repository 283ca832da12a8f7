//! The one DMA interface: every byte a device may touch goes through a [`Dma`].
//!
//! A confidential guest shares only memory it chose to share. So no driver and no ring ever
//! computes a device address: they ask a [`Dma`] for one. Which DMA path is in use is then one
//! decision, made where devices are set up, and a new path plugs in without touching a driver:
//!
//! | implementation | `alloc_shared` | `map` returns | `unmap` |
//! |---|---|---|---|
//! | [`Direct`] (this issue) | heap memory | the physical address of the buffer | counts |
//! | bounce (swiotlb: [`bounce::Bounce`] over [`pool::SlotPool`]) | a slot in the shared pool | the address of a slot holding a copy (`ToDevice`) | copies back (`FromDevice`), zeroes the slot |
//! | IOMMU ([`iommu::IommuDma`] over an [`iommu::IommuBackend`]: pseries TCE; later virtio-iommu, VT-d) | memory + an IOVA mapping | an IOVA for the buffer's pages | removes the IOVA mapping |
//! | IOMMU + bounce ([`iommu::IommuDma`] as a window over the bounce pool) | pool slot, its IOVA | the IOVA of a pool slot | copies back, zeroes (the pool stays mapped) |
//!
//! # Two kinds of DMA memory
//!
//! * **Shared regions** ([`Dma::alloc_shared`]) are long-lived, zeroed, device-visible memory for
//!   rings, indirect tables and small request headers. The CPU reaches them only through the
//!   volatile accessors of [`SharedRegion`], never through references, because the device may
//!   write them at any time.
//! * **Streaming mappings** ([`Dma::map`]) make an existing buffer (a block, a packet) visible for
//!   one request. The driver maps before `add`, and unmaps only after the request completed or the
//!   device was reset. For a buffer that stays mapped across many requests (receive buffers),
//!   [`Dma::sync_for_cpu`] and [`Dma::sync_for_device`] move ownership back and forth: a bounce
//!   implementation copies, the others do nothing.
//!
//! # Constraints
//!
//! A device may only reach part of the address space (a 32-bit DMA engine, a legacy virtio queue
//! PFN register), or need alignment, or forbid crossing a boundary. Callers say so with
//! [`DmaConstraints`] on every request. An implementation that chooses addresses (bounce, IOMMU)
//! chooses ones that satisfy them; one that cannot choose ([`Direct`]) checks and refuses.
//!
//! # Errors
//!
//! Nothing here panics on a full pool or an unreachable buffer. [`DmaError::Exhausted`] is the
//! one transient error: the caller waits for outstanding requests to complete (and unmaps them)
//! and tries again. Every other error is permanent for that request.
//!
//! # Device addresses
//!
//! [`DeviceAddr`] is a newtype so that a CPU pointer can never be passed where a device address
//! is meant: only a [`Dma`] implementation creates one from a CPU address.

pub mod aperture;
pub mod bounce;
mod direct;
pub mod iommu;
pub mod pool;
pub mod tce;
pub mod viommu;
pub mod vtd;

pub use direct::Direct;

use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

/// An address as the device sees it: a physical address, an IOVA, or a bounce slot address.
/// Only a [`Dma`] implementation turns a CPU address into one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct DeviceAddr(u64);

impl DeviceAddr {
    /// For [`Dma`] implementations and fake devices in tests: everyone else gets addresses from a
    /// [`Dma`].
    pub const fn new(addr: u64) -> Self {
        DeviceAddr(addr)
    }

    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The address `offset` bytes further, if it does not overflow.
    pub const fn checked_add(self, offset: u64) -> Option<DeviceAddr> {
        match self.0.checked_add(offset) {
            Some(a) => Some(DeviceAddr(a)),
            None => None,
        }
    }
}

impl fmt::Debug for DeviceAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceAddr({:#x})", self.0)
    }
}

impl fmt::Display for DeviceAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Which way the data of a streaming mapping flows. A bounce implementation copies into the
/// shared slot at `map` when the device reads, and back out at `unmap` when the device writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The device reads the buffer (a request header, data to write to a disk, a packet to send).
    ToDevice,
    /// The device writes the buffer (a status byte, data read from a disk, a received packet).
    FromDevice,
    /// Both.
    Bidirectional,
}

impl Direction {
    pub fn device_reads(self) -> bool {
        matches!(self, Direction::ToDevice | Direction::Bidirectional)
    }

    pub fn device_writes(self) -> bool {
        matches!(self, Direction::FromDevice | Direction::Bidirectional)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ToDevice => "to-device",
            Direction::FromDevice => "from-device",
            Direction::Bidirectional => "bidirectional",
        }
    }
}

/// What the device can reach. Passed with every request, because one [`Dma`] (a shared bounce
/// pool, [`Direct`]) serves devices with different limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaConstraints {
    /// The highest device address any byte of the memory may have (inclusive).
    pub max_addr: u64,
    /// The device address must be a multiple of this (a power of two, at least 1).
    pub align: u64,
    /// The memory must not cross a multiple of this (a power of two), or 0 for no such limit.
    pub boundary: u64,
    /// The most bytes one mapping or region may have.
    pub max_len: usize,
}

impl DmaConstraints {
    /// No limit at all.
    pub const NONE: DmaConstraints = DmaConstraints {
        max_addr: u64::MAX,
        align: 1,
        boundary: 0,
        max_len: usize::MAX,
    };

    /// A device that drives only 32 address bits.
    pub const DMA32: DmaConstraints = DmaConstraints {
        max_addr: u32::MAX as u64,
        ..Self::NONE
    };

    /// The same limits, with at least `align` alignment.
    pub const fn with_align(self, align: u64) -> Self {
        DmaConstraints {
            align: if align > self.align {
                align
            } else {
                self.align
            },
            ..self
        }
    }

    /// Whether the constraints themselves make sense (powers of two).
    pub fn validate(&self) -> Result<(), DmaError> {
        if !self.align.is_power_of_two() {
            return Err(DmaError::InvalidRequest("alignment is not a power of two"));
        }
        if self.boundary != 0 && !self.boundary.is_power_of_two() {
            return Err(DmaError::InvalidRequest("boundary is not a power of two"));
        }
        Ok(())
    }

    /// Whether a request of `len` bytes may be made at all: not empty, not above `max_len`.
    /// The first check of [`DmaConstraints::check`], and of the allocators that choose the
    /// addresses themselves.
    pub fn check_len(&self, len: usize) -> Result<(), DmaError> {
        if len == 0 {
            return Err(DmaError::InvalidRequest("zero length"));
        }
        if len > self.max_len {
            return Err(DmaError::TooLarge {
                requested: len,
                limit: self.max_len,
            });
        }
        Ok(())
    }

    /// Whether `len` bytes at device address `addr` satisfy the constraints. For implementations
    /// that cannot choose addresses ([`Direct`]) and for checking the ones that can.
    pub fn check(&self, addr: DeviceAddr, len: usize) -> Result<(), DmaError> {
        self.validate()?;
        self.check_len(len)?;
        let last = addr.as_u64().checked_add(len as u64 - 1);
        if last.is_none_or(|last| last > self.max_addr) {
            return Err(DmaError::Unreachable {
                addr,
                len,
                max_addr: self.max_addr,
            });
        }
        if addr.as_u64() & (self.align - 1) != 0 {
            return Err(DmaError::Misaligned {
                addr,
                align: self.align,
            });
        }
        if self.boundary != 0 {
            let mask = !(self.boundary - 1);
            // Both ends in the same boundary-sized block (`last` exists: checked above).
            let last = addr.as_u64() + (len as u64 - 1);
            if addr.as_u64() & mask != last & mask {
                return Err(DmaError::CrossesBoundary {
                    addr,
                    len,
                    boundary: self.boundary,
                });
            }
        }
        Ok(())
    }
}

impl Default for DmaConstraints {
    fn default() -> Self {
        Self::NONE
    }
}

/// Why a DMA request failed. Only [`DmaError::Exhausted`] is worth retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaError {
    /// No room right now (pool slots, IOVA space, TCE entries). Complete and unmap outstanding
    /// requests, then retry.
    Exhausted { requested: usize },
    /// Larger than this implementation or the constraints can ever provide.
    TooLarge { requested: usize, limit: usize },
    /// The memory lies beyond what the device can reach, and this implementation cannot move it.
    Unreachable {
        addr: DeviceAddr,
        len: usize,
        max_addr: u64,
    },
    /// The device address does not have the required alignment.
    Misaligned { addr: DeviceAddr, align: u64 },
    /// The memory crosses a boundary the device cannot cross.
    CrossesBoundary {
        addr: DeviceAddr,
        len: usize,
        boundary: u64,
    },
    /// The request itself is malformed (zero length, alignment not a power of two, ...).
    InvalidRequest(&'static str),
    /// The guest heap could not provide the memory.
    OutOfMemory { size: usize },
    /// The mapping or region was not made by this implementation, or was already released.
    UnknownHandle,
    /// The hypervisor or IOMMU refused (an hcall return code, a virtio-iommu status).
    Platform { code: i64 },
}

impl DmaError {
    /// Whether waiting for completions may make a retry succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, DmaError::Exhausted { .. })
    }

    /// A stable name for reports.
    pub fn as_str(&self) -> &'static str {
        match self {
            DmaError::Exhausted { .. } => "exhausted",
            DmaError::TooLarge { .. } => "too-large",
            DmaError::Unreachable { .. } => "unreachable",
            DmaError::Misaligned { .. } => "misaligned",
            DmaError::CrossesBoundary { .. } => "crosses-boundary",
            DmaError::InvalidRequest(_) => "invalid-request",
            DmaError::OutOfMemory { .. } => "out-of-memory",
            DmaError::UnknownHandle => "unknown-handle",
            DmaError::Platform { .. } => "platform",
        }
    }
}

impl fmt::Display for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DmaError::Exhausted { requested } => write!(f, "exhausted ({requested} bytes asked)"),
            DmaError::TooLarge { requested, limit } => {
                write!(f, "{requested} bytes asked, at most {limit} possible")
            }
            DmaError::Unreachable {
                addr,
                len,
                max_addr,
            } => {
                write!(
                    f,
                    "{len} bytes at {addr} beyond the device limit {max_addr:#x}"
                )
            }
            DmaError::Misaligned { addr, align } => write!(f, "{addr} not aligned to {align}"),
            DmaError::CrossesBoundary {
                addr,
                len,
                boundary,
            } => {
                write!(f, "{len} bytes at {addr} cross a {boundary:#x} boundary")
            }
            DmaError::InvalidRequest(why) => write!(f, "invalid request: {why}"),
            DmaError::OutOfMemory { size } => write!(f, "heap exhausted ({size} bytes)"),
            DmaError::UnknownHandle => f.write_str("unknown mapping or region"),
            DmaError::Platform { code } => write!(f, "platform refused (code {code})"),
        }
    }
}

/// Counters for the report. Implementations fill what applies to them and leave the rest 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DmaStats {
    /// Streaming mappings made and released.
    pub maps: u64,
    pub unmaps: u64,
    /// Bytes covered by all mappings made.
    pub mapped_bytes: u64,
    /// `map` calls that failed (any error).
    pub map_failures: u64,
    /// Bytes copied into shared memory for the device (bounce implementations).
    pub bounced_to_device: u64,
    /// Bytes copied out of shared memory for the CPU (bounce implementations).
    pub bounced_from_device: u64,
    /// `sync_for_cpu` + `sync_for_device` calls.
    pub syncs: u64,
    /// Shared regions allocated and freed, and the bytes now allocated.
    pub shared_allocs: u64,
    pub shared_frees: u64,
    pub shared_bytes: u64,
    /// `alloc_shared` calls that failed (any error).
    pub shared_failures: u64,
    /// IOMMU paths ([`iommu::IommuDma`]): mapping runs made and removed in the IOMMU (one per
    /// `map` / `alloc_shared`, plus the static mappings made at setup), the hypercalls or IOMMU
    /// commands issued for them, and the IOMMU pages mapped now and at most at once.
    pub iommu_maps: u64,
    pub iommu_unmaps: u64,
    pub iommu_calls: u64,
    pub iommu_pages: u64,
    pub iommu_pages_peak: u64,
}

/// Defines [`DmaCounters`] with one atomic per [`DmaStats`] field, so the two cannot drift apart.
macro_rules! dma_counters {
    ($($field:ident),* $(,)?) => {
        /// [`DmaStats`] as atomics, so that a [`Dma`] implementation counts through `&self`
        /// (a `Dma` is shared by every driver). Relaxed ordering: these are statistics.
        #[derive(Debug, Default)]
        pub(crate) struct DmaCounters {
            $(pub $field: AtomicU64,)*
        }

        impl DmaCounters {
            pub const fn new() -> Self {
                DmaCounters { $($field: AtomicU64::new(0),)* }
            }

            pub fn snapshot(&self) -> DmaStats {
                DmaStats { $($field: self.$field.load(Ordering::Relaxed),)* }
            }
        }
    };
}

impl DmaCounters {
    /// The outcome of an `alloc_shared` of `size` bytes.
    pub fn count_alloc_shared<T>(&self, size: usize, r: &Result<T, DmaError>) {
        if r.is_ok() {
            self.shared_allocs.fetch_add(1, Ordering::Relaxed);
            self.shared_bytes.fetch_add(size as u64, Ordering::Relaxed);
        } else {
            self.shared_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A shared region of `len` bytes given back.
    pub fn count_free_shared(&self, len: usize) {
        self.shared_frees.fetch_add(1, Ordering::Relaxed);
        self.shared_bytes.fetch_sub(len as u64, Ordering::Relaxed);
    }

    /// A successful `map` of `len` bytes.
    pub fn count_map(&self, len: usize) {
        self.maps.fetch_add(1, Ordering::Relaxed);
        self.mapped_bytes.fetch_add(len as u64, Ordering::Relaxed);
    }

    /// The outcome of a `map`: counted as made, or as failed.
    pub fn count_map_result(&self, r: &Result<Mapping, DmaError>) {
        match r {
            Ok(m) => self.count_map(m.len()),
            Err(_) => {
                self.map_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

dma_counters!(
    maps,
    unmaps,
    mapped_bytes,
    map_failures,
    bounced_to_device,
    bounced_from_device,
    syncs,
    shared_allocs,
    shared_frees,
    shared_bytes,
    shared_failures,
    iommu_maps,
    iommu_unmaps,
    iommu_calls,
    iommu_pages,
    iommu_pages_peak,
);

/// Zeroed, device-visible memory from [`Dma::alloc_shared`]: rings, indirect tables, headers.
///
/// The device may write it at any moment, so the CPU reaches it only through the volatile
/// accessors below, never through a reference. Multi-byte values are little-endian (the virtio
/// byte order; legacy virtio uses the guest's, which is little-endian on both guest arches).
/// Offsets are checked: an access outside the region or misaligned for its width is a bug in the
/// caller (never something a device can cause) and panics.
///
/// Dropping a region leaks it; that is deliberate, because only the owner knows when the device
/// has stopped using it. Give it back with [`Dma::free_shared`].
#[derive(Debug)]
pub struct SharedRegion {
    cpu: NonNull<u8>,
    device_addr: DeviceAddr,
    len: usize,
    align: usize,
    cookie: usize,
}

// SAFETY: a region owns its memory on the CPU side, like a `Box<[u8]>`; moving it to another
// CPU moves that ownership. It is not `Sync`: its accessors write through `&self`, and two CPUs
// writing the same region at once would race.
unsafe impl Send for SharedRegion {}

impl SharedRegion {
    /// For [`Dma`] implementations. `cookie` is theirs to find their bookkeeping again.
    ///
    /// # Safety
    /// `cpu` is valid for volatile reads and writes of `len` bytes, aligned to `align`, until the
    /// region is passed to `free_shared` of the implementation that made it, and no Rust reference
    /// to that memory exists meanwhile. The device reaches the same bytes at `device_addr`.
    pub unsafe fn new(
        cpu: NonNull<u8>,
        device_addr: DeviceAddr,
        len: usize,
        align: usize,
        cookie: usize,
    ) -> Self {
        SharedRegion {
            cpu,
            device_addr,
            len,
            align,
            cookie,
        }
    }

    /// The device address of the first byte.
    pub fn device_addr(&self) -> DeviceAddr {
        self.device_addr
    }

    /// The device address of the byte at `offset` (which may be `len`, one past the end).
    pub fn device_addr_at(&self, offset: usize) -> DeviceAddr {
        assert!(
            offset <= self.len,
            "offset {offset} beyond shared region of {} bytes",
            self.len
        );
        DeviceAddr(self.device_addr.0 + offset as u64)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn align(&self) -> usize {
        self.align
    }

    /// For the implementation that made it.
    pub fn cookie(&self) -> usize {
        self.cookie
    }

    /// For the implementation that made it (to copy or free).
    pub fn cpu_ptr(&self) -> NonNull<u8> {
        self.cpu
    }

    /// A pointer to a `T` at `offset`, after checking bounds and alignment.
    fn at<T>(&self, offset: usize) -> *mut T {
        let size = core::mem::size_of::<T>();
        assert!(
            offset.checked_add(size).is_some_and(|end| end <= self.len),
            "access of {size} bytes at {offset} beyond shared region of {} bytes",
            self.len
        );
        // SAFETY: offset + size <= len, so the result stays inside the region.
        let p = unsafe { self.cpu.as_ptr().add(offset) };
        assert!(
            p.cast::<T>().is_aligned(),
            "misaligned {size}-byte access at offset {offset}"
        );
        p.cast()
    }

    pub fn read_u8(&self, offset: usize) -> u8 {
        // SAFETY: `at` checked bounds and alignment; the region is valid for volatile access
        // (constructor contract).
        unsafe { self.at::<u8>(offset).read_volatile() }
    }

    pub fn read_u16(&self, offset: usize) -> u16 {
        // SAFETY: as in `read_u8`.
        u16::from_le(unsafe { self.at::<u16>(offset).read_volatile() })
    }

    pub fn read_u32(&self, offset: usize) -> u32 {
        // SAFETY: as in `read_u8`.
        u32::from_le(unsafe { self.at::<u32>(offset).read_volatile() })
    }

    /// One 64-bit access: both guest arches do it atomically when aligned.
    pub fn read_u64(&self, offset: usize) -> u64 {
        // SAFETY: as in `read_u8`.
        u64::from_le(unsafe { self.at::<u64>(offset).read_volatile() })
    }

    pub fn write_u8(&self, offset: usize, value: u8) {
        // SAFETY: as in `read_u8`.
        unsafe { self.at::<u8>(offset).write_volatile(value) }
    }

    pub fn write_u16(&self, offset: usize, value: u16) {
        // SAFETY: as in `read_u8`.
        unsafe { self.at::<u16>(offset).write_volatile(value.to_le()) }
    }

    pub fn write_u32(&self, offset: usize, value: u32) {
        // SAFETY: as in `read_u8`.
        unsafe { self.at::<u32>(offset).write_volatile(value.to_le()) }
    }

    pub fn write_u64(&self, offset: usize, value: u64) {
        // SAFETY: as in `read_u8`.
        unsafe { self.at::<u64>(offset).write_volatile(value.to_le()) }
    }

    /// Copies `dst.len()` bytes at `offset` out of the region, byte by byte (volatile: the
    /// device may be writing, and what it wrote is untrusted data, never a Rust value).
    pub fn read_bytes(&self, offset: usize, dst: &mut [u8]) {
        self.check_range(offset, dst.len());
        for (i, b) in dst.iter_mut().enumerate() {
            *b = self.read_u8(offset + i);
        }
    }

    /// Copies `src` into the region at `offset`.
    pub fn write_bytes(&self, offset: usize, src: &[u8]) {
        self.check_range(offset, src.len());
        for (i, &b) in src.iter().enumerate() {
            self.write_u8(offset + i, b);
        }
    }

    /// Sets `len` bytes at `offset` to `value`.
    pub fn fill(&self, offset: usize, len: usize, value: u8) {
        self.check_range(offset, len);
        for i in 0..len {
            self.write_u8(offset + i, value);
        }
    }

    fn check_range(&self, offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "range of {len} bytes at {offset} beyond shared region of {} bytes",
            self.len
        );
    }
}

/// A streaming mapping from [`Dma::map`]: an existing buffer made visible to the device.
///
/// Not `Clone`: it is released exactly once, with [`Dma::unmap`]. Dropping it instead leaks the
/// resources behind it (a bounce slot, an IOVA range); that is safe, unlike releasing it while
/// the device still uses it.
#[must_use = "a mapping must be released with Dma::unmap once the device is done with it"]
#[derive(Debug)]
pub struct Mapping {
    device_addr: DeviceAddr,
    cpu: NonNull<u8>,
    len: usize,
    direction: Direction,
    cookie: usize,
}

// SAFETY: a mapping is a handle on a buffer the caller lent to the device (see `Dma::map`); the
// handle gives no access to the buffer by itself, so moving it to another CPU is harmless.
unsafe impl Send for Mapping {}

impl Mapping {
    /// For [`Dma`] implementations. `cookie` is theirs (a slot index, an IOVA allocation).
    ///
    /// # Safety
    /// `cpu` and `len` are the buffer that was passed to `map`, with its contract; the device
    /// reaches the mapping at `device_addr`.
    pub unsafe fn new(
        device_addr: DeviceAddr,
        cpu: NonNull<u8>,
        len: usize,
        direction: Direction,
        cookie: usize,
    ) -> Self {
        Mapping {
            device_addr,
            cpu,
            len,
            direction,
            cookie,
        }
    }

    /// What to put in a descriptor.
    pub fn device_addr(&self) -> DeviceAddr {
        self.device_addr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// The CPU buffer behind the mapping, for the implementation (to copy back).
    pub fn cpu_ptr(&self) -> NonNull<u8> {
        self.cpu
    }

    pub fn cookie(&self) -> usize {
        self.cookie
    }
}

/// A DMA path: how memory becomes visible to a device and at which device address.
///
/// Implementations: [`Direct`], [`bounce::Bounce`], [`iommu::IommuDma`]. Object-safe, so drivers
/// and rings hold a `&dyn Dma` and never know which path they use. `Sync`, so that a queue holding
/// one can live in a `static` lock (a console driver used from the panic path).
/// Implementations keep their state in atomics or a `spin::Mutex`.
///
/// Memory shared with a device is coherent on every machine this guest runs on (virtio devices
/// are emulated in the host's coherent memory); `sync_*` exist for copies, not for caches.
pub trait Dma: Sync {
    /// A stable name for reports: `direct`, `bounce`, `iommu`, `iommu+bounce`.
    fn name(&self) -> &'static str;

    /// Zeroed memory the device can reach, of at least `size` bytes, at a device address aligned
    /// to `align` (a power of two) and within `constraints`.
    fn alloc_shared(
        &self,
        size: usize,
        align: usize,
        constraints: &DmaConstraints,
    ) -> Result<SharedRegion, DmaError>;

    /// Gives a region back.
    ///
    /// # Safety
    /// The device no longer accesses the region: it was reset, or the structure in the region was
    /// retired by the device (an indirect table whose request completed). `region` came from this
    /// implementation's `alloc_shared`.
    unsafe fn free_shared(&self, region: SharedRegion) -> Result<(), DmaError>;

    /// Makes `buffer` visible to the device for one or more requests and returns where the device
    /// finds it. A bounce implementation copies the buffer into a shared slot now when the device
    /// reads it (`ToDevice`, `Bidirectional`).
    ///
    /// # Safety
    /// `buffer` stays valid for reads (device reads) and writes (device writes) from now until
    /// `unmap` returns, and the CPU neither reads nor writes it meanwhile, except within a
    /// `sync_for_cpu` .. `sync_for_device` window.
    unsafe fn map(
        &self,
        buffer: NonNull<[u8]>,
        direction: Direction,
        constraints: &DmaConstraints,
    ) -> Result<Mapping, DmaError>;

    /// Ends a mapping. A bounce implementation copies the slot back into the buffer when the
    /// device wrote it (`FromDevice`, `Bidirectional`) and zeroes the slot, so that nothing of
    /// the guest stays visible to the host.
    ///
    /// # Safety
    /// The device no longer accesses the mapping: its request completed, or the device was reset.
    /// The buffer contract of `map` still holds during this call.
    unsafe fn unmap(&self, mapping: Mapping) -> Result<(), DmaError>;

    /// For a long-lived mapping: makes what the device wrote in `offset..offset + len` visible to
    /// the CPU (bounce: copies from the slot). The CPU may then read the buffer.
    ///
    /// # Safety
    /// As for `unmap`, but only the device's use of that range has to be over; no reference into
    /// that range of the buffer is alive during the call.
    unsafe fn sync_for_cpu(
        &self,
        mapping: &Mapping,
        offset: usize,
        len: usize,
    ) -> Result<(), DmaError>;

    /// For a long-lived mapping: makes what the CPU wrote in `offset..offset + len` visible to the
    /// device (bounce: copies into the slot). From then on the CPU leaves the range alone again.
    ///
    /// # Safety
    /// The contract of `map`, resumed: no reference into the buffer outlives this call.
    unsafe fn sync_for_device(
        &self,
        mapping: &Mapping,
        offset: usize,
        len: usize,
    ) -> Result<(), DmaError>;

    /// What this path has done so far.
    fn stats(&self) -> DmaStats;
}

/// Checks that `offset..offset + len` lies inside `mapping`; for `sync_*` implementations.
pub fn check_sync_range(mapping: &Mapping, offset: usize, len: usize) -> Result<(), DmaError> {
    if offset
        .checked_add(len)
        .is_none_or(|end| end > mapping.len())
    {
        return Err(DmaError::InvalidRequest("sync range outside the mapping"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;
