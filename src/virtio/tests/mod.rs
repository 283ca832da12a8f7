//! Host tests: fake devices that implement the device side of both rings over device addresses
//! (== pointers with `Direct`), and a fake transport.

mod hostile;
mod init;
mod rings;

use alloc::vec;
use alloc::vec::Vec;
use core::cell::Cell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering, fence};

use super::features::DeviceType;
use super::queue::{QueueConfig, RingFormat, Segment, Virtqueue};
use super::transport::{
    DeviceStatus, InterruptStatus, LegacyLayout, QueueAddresses, Transport, TransportError,
};
use crate::dma::{
    DeviceAddr, Direct, Direction, Dma, DmaConstraints, DmaError, DmaStats, Mapping, SharedRegion,
};

// ---------------------------------------------------------------------------------------------
// Device-side memory access. With `Direct`, a device address is the pointer value; with
// `ArenaDma`, it is translated through the arena window of the current test thread. Every
// address the fake devices use came from a queue or buffer under test whose memory is alive.

std::thread_local! {
    /// (device address of the arena's first byte, its CPU address, its length)
    static ARENA_WINDOW: Cell<Option<(u64, usize, usize)>> = const { Cell::new(None) };
}

fn ptr<T>(addr: u64) -> *mut T {
    let cpu = match ARENA_WINDOW.get() {
        Some((base, cpu, len)) if addr >= base && addr - base < len as u64 => {
            cpu + (addr - base) as usize
        }
        _ => addr as usize,
    };
    core::ptr::with_exposed_provenance_mut(cpu)
}

fn rd16(addr: u64) -> u16 {
    // SAFETY: `addr` is inside live ring memory of the queue under test (see above).
    u16::from_le(unsafe { ptr::<u16>(addr).read_volatile() })
}
fn rd32(addr: u64) -> u32 {
    // SAFETY: as in `rd16`.
    u32::from_le(unsafe { ptr::<u32>(addr).read_volatile() })
}
fn rd64(addr: u64) -> u64 {
    // SAFETY: as in `rd16`.
    u64::from_le(unsafe { ptr::<u64>(addr).read_volatile() })
}
fn wr16(addr: u64, v: u16) {
    // SAFETY: as in `rd16`.
    unsafe { ptr::<u16>(addr).write_volatile(v.to_le()) }
}
fn wr32(addr: u64, v: u32) {
    // SAFETY: as in `rd16`.
    unsafe { ptr::<u32>(addr).write_volatile(v.to_le()) }
}

/// The device writing into a buffer the driver gave it.
fn device_write(addr: DeviceAddr, data: &[u8]) {
    for (i, &b) in data.iter().enumerate() {
        // SAFETY: `addr` is a device-writable segment of an outstanding request, at least
        // `data.len()` long (the tests size it so).
        unsafe { ptr::<u8>(addr.as_u64() + i as u64).write_volatile(b) }
    }
}

/// The device reading a buffer.
fn device_read(addr: DeviceAddr, len: usize) -> Vec<u8> {
    // SAFETY: as in `device_write`, for a device-readable segment.
    (0..len)
        .map(|i| unsafe { ptr::<u8>(addr.as_u64() + i as u64).read_volatile() })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Fake devices.

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
const F_AVAIL: u16 = 1 << 7;
const F_USED: u16 = 1 << 15;

/// A request as the device saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DeviceRequest {
    /// Split: head descriptor index. Packed: buffer id.
    id: u16,
    segments: Vec<Segment>,
    indirect: bool,
    /// Ring descriptors it occupied.
    descriptors: u16,
}

impl DeviceRequest {
    fn writable_capacity(&self) -> u32 {
        self.segments
            .iter()
            .filter(|s| s.device_writable)
            .map(|s| s.len)
            .sum()
    }
}

/// The device side of a ring.
trait FakeDevice {
    /// The next available request, if any.
    fn take(&mut self) -> Option<DeviceRequest>;
    /// Marks `req` used with `written` bytes.
    fn complete(&mut self, req: &DeviceRequest, written: u32);
    /// Whether `take` would find a request.
    fn has_available(&self) -> bool;
}

fn read_indirect_table(addr: u64, len: u32, packed: bool) -> Vec<Segment> {
    assert_eq!(
        len % 16,
        0,
        "indirect table length must be a multiple of 16"
    );
    let count = (len / 16) as u64;
    assert!(count >= 1);
    (0..count)
        .map(|i| {
            let d = addr + 16 * i;
            let flags = rd16(d + if packed { 14 } else { 12 });
            if packed {
                assert_eq!(
                    flags & !F_WRITE,
                    0,
                    "only WRITE is valid in a packed indirect table"
                );
            } else {
                let last = i + 1 == count;
                assert_eq!(flags & F_NEXT != 0, !last, "split indirect chain links");
                if !last {
                    assert_eq!(u64::from(rd16(d + 14)), i + 1);
                }
                assert_eq!(flags & F_INDIRECT, 0, "nested indirect");
            }
            Segment {
                addr: DeviceAddr::new(rd64(d)),
                len: rd32(d + 8),
                device_writable: flags & F_WRITE != 0,
            }
        })
        .collect()
}

struct SplitDevice {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    last_avail: u16,
    used_idx: u16,
    /// Publish avail_event = next avail index after each take (like QEMU with event idx).
    write_avail_event: bool,
}

impl SplitDevice {
    fn new(a: &QueueAddresses) -> Self {
        SplitDevice {
            size: a.size,
            desc: a.desc.as_u64(),
            avail: a.driver.as_u64(),
            used: a.device.as_u64(),
            last_avail: 0,
            used_idx: 0,
            write_avail_event: false,
        }
    }

    fn n(&self) -> u64 {
        u64::from(self.size)
    }

    fn avail_flags(&self) -> u16 {
        rd16(self.avail)
    }

    fn used_event(&self) -> u16 {
        rd16(self.avail + 4 + 2 * self.n())
    }

    fn set_used_flags(&self, flags: u16) {
        wr16(self.used, flags);
    }

    fn set_avail_event(&self, v: u16) {
        wr16(self.used + 4 + 8 * self.n(), v);
    }

    /// Writes a used element as given and publishes it: the hostile tests' tool.
    fn push_used_raw(&mut self, id: u32, len: u32) {
        let slot = u64::from(self.used_idx % self.size);
        wr32(self.used + 4 + 8 * slot, id);
        wr32(self.used + 8 + 8 * slot, len);
        fence(Ordering::Release);
        self.used_idx = self.used_idx.wrapping_add(1);
        wr16(self.used + 2, self.used_idx);
    }

    fn set_used_idx(&mut self, idx: u16) {
        self.used_idx = idx;
        wr16(self.used + 2, idx);
    }

    fn write_used_entry(&self, slot: u16, id: u32, len: u32) {
        let slot = u64::from(slot % self.size);
        wr32(self.used + 4 + 8 * slot, id);
        wr32(self.used + 8 + 8 * slot, len);
    }
}

impl FakeDevice for SplitDevice {
    fn take(&mut self) -> Option<DeviceRequest> {
        if rd16(self.avail + 2) == self.last_avail {
            return None;
        }
        fence(Ordering::Acquire);
        let head = rd16(self.avail + 4 + 2 * u64::from(self.last_avail % self.size));
        assert!(head < self.size, "driver made descriptor {head} available");
        let mut segments = Vec::new();
        let mut indirect = false;
        let mut descriptors = 0u16;
        let mut i = head;
        loop {
            descriptors += 1;
            assert!(descriptors <= self.size, "descriptor chain loops");
            let d = self.desc + 16 * u64::from(i);
            let flags = rd16(d + 12);
            if flags & F_INDIRECT != 0 {
                assert_eq!(
                    descriptors, 1,
                    "an indirect descriptor must be alone in its chain"
                );
                assert_eq!(flags & F_NEXT, 0);
                segments = read_indirect_table(rd64(d), rd32(d + 8), false);
                indirect = true;
                break;
            }
            segments.push(Segment {
                addr: DeviceAddr::new(rd64(d)),
                len: rd32(d + 8),
                device_writable: flags & F_WRITE != 0,
            });
            if flags & F_NEXT == 0 {
                break;
            }
            i = rd16(d + 14);
            assert!(i < self.size);
        }
        self.last_avail = self.last_avail.wrapping_add(1);
        if self.write_avail_event {
            self.set_avail_event(self.last_avail);
        }
        Some(DeviceRequest {
            id: head,
            segments,
            indirect,
            descriptors,
        })
    }

    fn complete(&mut self, req: &DeviceRequest, written: u32) {
        self.push_used_raw(u32::from(req.id), written);
    }

    fn has_available(&self) -> bool {
        rd16(self.avail + 2) != self.last_avail
    }
}

struct PackedDevice {
    size: u16,
    ring: u64,
    driver_event: u64,
    device_event: u64,
    next_avail: u16,
    avail_wrap: bool,
    next_used: u16,
    used_wrap: bool,
    /// After each take, ask for a notification at the next position (DESC mode, like QEMU with
    /// event idx).
    write_device_event: bool,
}

fn packed_is_avail(flags: u16, wrap: bool) -> bool {
    (flags & F_AVAIL != 0) == wrap && (flags & F_USED != 0) != wrap
}

impl PackedDevice {
    fn new(a: &QueueAddresses) -> Self {
        PackedDevice {
            size: a.size,
            ring: a.desc.as_u64(),
            driver_event: a.driver.as_u64(),
            device_event: a.device.as_u64(),
            next_avail: 0,
            avail_wrap: true,
            next_used: 0,
            used_wrap: true,
            write_device_event: false,
        }
    }

    fn slot(&self, pos: u16) -> u64 {
        self.ring + 16 * u64::from(pos)
    }

    /// (flags, off_wrap) of the driver's event suppression structure.
    fn driver_event(&self) -> (u16, u16) {
        (rd16(self.driver_event + 2), rd16(self.driver_event))
    }

    fn set_device_event(&self, flags: u16, off_wrap: u16) {
        wr16(self.device_event, off_wrap);
        wr16(self.device_event + 2, flags);
    }

    /// Writes a used descriptor at the next used position with the given flags (the wrap bits
    /// are the caller's) and skips `skip` slots: the hostile tests' tool.
    fn push_used_raw(&mut self, id: u16, len: u32, flags: u16, skip: u16) {
        let d = self.slot(self.next_used);
        wr16(d + 12, id);
        wr32(d + 8, len);
        fence(Ordering::Release);
        wr16(d + 14, flags);
        for _ in 0..skip {
            self.next_used += 1;
            if self.next_used == self.size {
                self.next_used = 0;
                self.used_wrap = !self.used_wrap;
            }
        }
    }

    fn used_flags(&self) -> u16 {
        if self.used_wrap { F_AVAIL | F_USED } else { 0 }
    }
}

impl FakeDevice for PackedDevice {
    fn take(&mut self) -> Option<DeviceRequest> {
        if !self.has_available() {
            return None;
        }
        fence(Ordering::Acquire);
        let mut segments = Vec::new();
        let mut indirect = false;
        let mut descriptors = 0u16;
        let id;
        loop {
            descriptors += 1;
            assert!(
                descriptors <= self.size,
                "descriptor chain longer than the ring"
            );
            let d = self.slot(self.next_avail);
            let flags = rd16(d + 14);
            assert!(
                packed_is_avail(flags, self.avail_wrap),
                "chain descriptor not available"
            );
            self.next_avail += 1;
            if self.next_avail == self.size {
                self.next_avail = 0;
                self.avail_wrap = !self.avail_wrap;
            }
            if flags & F_INDIRECT != 0 {
                assert_eq!(descriptors, 1);
                assert_eq!(flags & F_NEXT, 0);
                segments = read_indirect_table(rd64(d), rd32(d + 8), true);
                indirect = true;
                id = rd16(d + 12);
                break;
            }
            segments.push(Segment {
                addr: DeviceAddr::new(rd64(d)),
                len: rd32(d + 8),
                device_writable: flags & F_WRITE != 0,
            });
            if flags & F_NEXT == 0 {
                id = rd16(d + 12);
                break;
            }
        }
        if self.write_device_event {
            self.set_device_event(
                2,
                self.next_avail | if self.avail_wrap { 0x8000 } else { 0 },
            );
        }
        Some(DeviceRequest {
            id,
            segments,
            indirect,
            descriptors,
        })
    }

    fn complete(&mut self, req: &DeviceRequest, written: u32) {
        let flags = self.used_flags() | if written > 0 { F_WRITE } else { 0 };
        self.push_used_raw(req.id, written, flags, req.descriptors);
    }

    fn has_available(&self) -> bool {
        packed_is_avail(rd16(self.slot(self.next_avail) + 14), self.avail_wrap)
    }
}

/// Either fake device, matching a queue's format.
enum AnyDevice {
    Split(SplitDevice),
    Packed(PackedDevice),
}

impl AnyDevice {
    /// The device for `q`; with event idx it publishes its event index after every take.
    fn for_queue(q: &Virtqueue<'_>) -> Self {
        let event_idx = q.config().event_idx;
        match q.format() {
            RingFormat::Split => AnyDevice::Split(SplitDevice {
                write_avail_event: event_idx,
                ..SplitDevice::new(&q.addresses())
            }),
            RingFormat::Packed => {
                let dev = PackedDevice {
                    write_device_event: event_idx,
                    ..PackedDevice::new(&q.addresses())
                };
                if event_idx {
                    // Like the split ring's avail_event of 0: notify at position 0 of lap 1.
                    dev.set_device_event(2, 0x8000);
                }
                AnyDevice::Packed(dev)
            }
        }
    }
}

impl FakeDevice for AnyDevice {
    fn take(&mut self) -> Option<DeviceRequest> {
        match self {
            AnyDevice::Split(d) => d.take(),
            AnyDevice::Packed(d) => d.take(),
        }
    }
    fn complete(&mut self, req: &DeviceRequest, written: u32) {
        match self {
            AnyDevice::Split(d) => d.complete(req, written),
            AnyDevice::Packed(d) => d.complete(req, written),
        }
    }
    fn has_available(&self) -> bool {
        match self {
            AnyDevice::Split(d) => d.has_available(),
            AnyDevice::Packed(d) => d.has_available(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Queue and buffer helpers.

fn config(size: u16) -> QueueConfig {
    QueueConfig {
        index: 0,
        size,
        event_idx: false,
        indirect: false,
        legacy_layout: false,
    }
}

fn new_queue<'d>(dma: &'d dyn Dma, format: RingFormat, config: QueueConfig) -> Virtqueue<'d> {
    Virtqueue::new(dma, format, config, &DmaConstraints::NONE).unwrap()
}

const FORMATS: [RingFormat; 2] = [RingFormat::Split, RingFormat::Packed];

/// A buffer in a shared region, and segments into it.
struct Buffers {
    region: SharedRegion,
}

impl Buffers {
    fn new(dma: &dyn Dma, len: usize) -> Self {
        Buffers {
            region: dma.alloc_shared(len, 8, &DmaConstraints::NONE).unwrap(),
        }
    }
    fn seg(&self, offset: usize, len: u32, writable: bool) -> Segment {
        Segment::in_region(&self.region, offset, len, writable)
    }
    fn free(self, dma: &dyn Dma) {
        // SAFETY: the test's device is done with it.
        unsafe { dma.free_shared(self.region) }.unwrap();
    }
}

/// Deterministic pseudo-random numbers (xorshift64*).
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

/// Queues must be able to live in a `static` lock.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Virtqueue<'static>>();
    assert_send::<SharedRegion>();
    assert_send::<Mapping>();
};

/// A `Dma` that wraps `Direct` and can be told to refuse shared allocations.
struct FlakyDma {
    inner: Direct,
    refuse_shared: AtomicBool,
}

impl FlakyDma {
    fn new() -> Self {
        FlakyDma {
            inner: Direct::new(),
            refuse_shared: AtomicBool::new(false),
        }
    }

    fn refuse(&self, refuse: bool) {
        self.refuse_shared.store(refuse, Ordering::Relaxed);
    }
}

impl Dma for FlakyDma {
    fn name(&self) -> &'static str {
        "flaky"
    }
    fn alloc_shared(
        &self,
        size: usize,
        align: usize,
        constraints: &DmaConstraints,
    ) -> Result<SharedRegion, DmaError> {
        if self.refuse_shared.load(Ordering::Relaxed) {
            return Err(DmaError::Exhausted { requested: size });
        }
        self.inner.alloc_shared(size, align, constraints)
    }
    unsafe fn free_shared(&self, region: SharedRegion) -> Result<(), DmaError> {
        // SAFETY: forwarded contract.
        unsafe { self.inner.free_shared(region) }
    }
    unsafe fn map(
        &self,
        buffer: NonNull<[u8]>,
        direction: Direction,
        constraints: &DmaConstraints,
    ) -> Result<Mapping, DmaError> {
        // SAFETY: forwarded contract.
        unsafe { self.inner.map(buffer, direction, constraints) }
    }
    unsafe fn unmap(&self, mapping: Mapping) -> Result<(), DmaError> {
        // SAFETY: forwarded contract.
        unsafe { self.inner.unmap(mapping) }
    }
    unsafe fn sync_for_cpu(&self, m: &Mapping, offset: usize, len: usize) -> Result<(), DmaError> {
        // SAFETY: forwarded contract.
        unsafe { self.inner.sync_for_cpu(m, offset, len) }
    }
    unsafe fn sync_for_device(
        &self,
        m: &Mapping,
        offset: usize,
        len: usize,
    ) -> Result<(), DmaError> {
        // SAFETY: forwarded contract.
        unsafe { self.inner.sync_for_device(m, offset, len) }
    }
    fn stats(&self) -> DmaStats {
        self.inner.stats()
    }
}

/// A translating `Dma` for tests: shared regions are carved from one page-aligned arena whose
/// device addresses start at `ARENA_BASE`, unrelated to its CPU addresses (as behind an IOMMU).
/// It gives the legacy layout the low addresses (< 2^44) that a host heap cannot, and proves that
/// rings and devices use device addresses only. Bump allocation: freed space is not reused, so
/// every region is still zeroed when handed out.
struct ArenaDma {
    /// Kept alive (and never touched directly) while regions point into it.
    _backing: Vec<u8>,
    /// The arena's first byte, as an address (keeps the type `Sync`).
    cpu: usize,
    len: usize,
    next: spin::Mutex<usize>,
    stats: spin::Mutex<DmaStats>,
}

const ARENA_BASE: u64 = 0x4000_0000;

impl ArenaDma {
    fn new(len: usize) -> Self {
        let mut backing = vec![0u8; len + 4096];
        let start = backing.as_mut_ptr();
        let pad = start.align_offset(4096);
        // SAFETY: `pad < 4096`, inside the allocation.
        let cpu = unsafe { start.add(pad) }.expose_provenance();
        ARENA_WINDOW.set(Some((ARENA_BASE, cpu, len)));
        ArenaDma {
            _backing: backing,
            cpu,
            len,
            next: spin::Mutex::new(0),
            stats: spin::Mutex::new(DmaStats::default()),
        }
    }

    fn update(&self, f: impl FnOnce(&mut DmaStats)) {
        f(&mut self.stats.lock());
    }
}

impl Drop for ArenaDma {
    fn drop(&mut self) {
        ARENA_WINDOW.set(None);
    }
}

impl Dma for ArenaDma {
    fn name(&self) -> &'static str {
        "arena"
    }
    fn alloc_shared(
        &self,
        size: usize,
        align: usize,
        constraints: &DmaConstraints,
    ) -> Result<SharedRegion, DmaError> {
        let align = align.max(constraints.align as usize);
        let mut next = self.next.lock();
        let offset = next.next_multiple_of(align);
        if offset + size > self.len {
            return Err(DmaError::Exhausted { requested: size });
        }
        let device_addr = DeviceAddr::new(ARENA_BASE + offset as u64);
        constraints.check(device_addr, size)?;
        *next = offset + size;
        self.update(|s| {
            s.shared_allocs += 1;
            s.shared_bytes += size as u64;
        });
        // SAFETY: `offset + size <= len`, never handed out before, zeroed at creation, aligned
        // like its device address because both bases are page-aligned.
        let cpu = unsafe {
            NonNull::new_unchecked(core::ptr::with_exposed_provenance_mut::<u8>(
                self.cpu + offset,
            ))
        };
        // SAFETY: as above; the arena outlives the test's regions.
        Ok(unsafe { SharedRegion::new(cpu, device_addr, size, align, offset) })
    }
    unsafe fn free_shared(&self, region: SharedRegion) -> Result<(), DmaError> {
        self.update(|s| {
            s.shared_frees += 1;
            s.shared_bytes -= region.len() as u64;
        });
        Ok(())
    }
    unsafe fn map(
        &self,
        _: NonNull<[u8]>,
        _: Direction,
        _: &DmaConstraints,
    ) -> Result<Mapping, DmaError> {
        Err(DmaError::InvalidRequest(
            "the test arena only has shared regions",
        ))
    }
    unsafe fn unmap(&self, _: Mapping) -> Result<(), DmaError> {
        Err(DmaError::UnknownHandle)
    }
    unsafe fn sync_for_cpu(&self, _: &Mapping, _: usize, _: usize) -> Result<(), DmaError> {
        Err(DmaError::UnknownHandle)
    }
    unsafe fn sync_for_device(&self, _: &Mapping, _: usize, _: usize) -> Result<(), DmaError> {
        Err(DmaError::UnknownHandle)
    }
    fn stats(&self) -> DmaStats {
        *self.stats.lock()
    }
}

// ---------------------------------------------------------------------------------------------
// Fake transport.

struct FakeTransport {
    name: &'static str,
    legacy: bool,
    device_type: DeviceType,
    offered: u64,
    driver_features: Option<u64>,
    status: u8,
    status_writes: Vec<u8>,
    /// The device clears FEATURES_OK when it is written (refuses the features).
    refuse_features_ok: bool,
    /// The status never reads 0 after a reset.
    stuck_in_reset: bool,
    /// The device sets DEVICE_NEEDS_RESET when DRIVER_OK is written.
    fail_at_driver_ok: bool,
    queue_max: Vec<u16>,
    queue_fixed: bool,
    queue_size: Vec<u16>,
    queue_addresses: Vec<Option<QueueAddresses>>,
    queue_enabled: Vec<bool>,
    queue_live_after_reset: bool,
    legacy_pfn: Vec<Option<u32>>,
    notifications: Vec<u16>,
    config: Vec<u8>,
    generation: Cell<u32>,
    /// The generation changes on this many more generation reads.
    unstable_generation_reads: Cell<u32>,
    isr: u32,
}

impl FakeTransport {
    fn modern(offered: u64, queue_max: &[u16]) -> Self {
        FakeTransport {
            name: "virtio-pci-modern",
            legacy: false,
            device_type: DeviceType::BLOCK,
            offered,
            driver_features: None,
            status: 0,
            status_writes: Vec::new(),
            refuse_features_ok: false,
            stuck_in_reset: false,
            fail_at_driver_ok: false,
            queue_max: queue_max.to_vec(),
            queue_fixed: false,
            queue_size: vec![0; queue_max.len()],
            queue_addresses: vec![None; queue_max.len()],
            queue_enabled: vec![false; queue_max.len()],
            queue_live_after_reset: false,
            legacy_pfn: vec![None; queue_max.len()],
            notifications: Vec::new(),
            config: (0..64).collect(),
            generation: Cell::new(0),
            unstable_generation_reads: Cell::new(0),
            isr: 0,
        }
    }

    fn legacy_pci(offered: u64, queue_max: &[u16]) -> Self {
        FakeTransport {
            name: "virtio-pci-legacy",
            legacy: true,
            queue_fixed: true,
            ..Self::modern(offered, queue_max)
        }
    }

    fn q(&self, queue: u16) -> usize {
        usize::from(queue)
    }

    fn config_range(&self, offset: usize, width: usize) -> Result<(), TransportError> {
        if offset
            .checked_add(width)
            .is_none_or(|end| end > self.config.len())
        {
            return Err(TransportError::ConfigOutOfRange { offset, width });
        }
        Ok(())
    }
}

impl Transport for FakeTransport {
    fn name(&self) -> &'static str {
        self.name
    }
    fn is_legacy(&self) -> bool {
        self.legacy
    }
    fn device_type(&mut self) -> DeviceType {
        self.device_type
    }
    fn device_features(&mut self) -> u64 {
        if self.legacy {
            self.offered & 0xffff_ffff
        } else {
            self.offered
        }
    }
    fn set_driver_features(&mut self, features: u64) {
        self.driver_features = Some(features);
    }
    fn status(&mut self) -> DeviceStatus {
        DeviceStatus(self.status)
    }
    fn set_status(&mut self, status: DeviceStatus) {
        self.status_writes.push(status.bits());
        let mut v = status.bits();
        if v == 0 {
            for q in 0..self.queue_max.len() {
                self.queue_enabled[q] = self.queue_live_after_reset;
                self.queue_addresses[q] = None;
            }
            if self.stuck_in_reset {
                v = DeviceStatus::ACKNOWLEDGE.bits();
            }
        }
        if self.refuse_features_ok {
            v &= !DeviceStatus::FEATURES_OK.bits();
        }
        if self.fail_at_driver_ok && v & DeviceStatus::DRIVER_OK.bits() != 0 {
            v |= DeviceStatus::DEVICE_NEEDS_RESET.bits();
        }
        self.status = v;
    }
    fn max_queue_size(&mut self, queue: u16) -> u16 {
        self.queue_max.get(self.q(queue)).copied().unwrap_or(0)
    }
    fn queue_in_use(&mut self, queue: u16) -> bool {
        self.queue_enabled
            .get(self.q(queue))
            .copied()
            .unwrap_or(false)
    }
    fn queue_size_fixed(&self) -> bool {
        self.queue_fixed
    }
    fn set_queue_size(&mut self, queue: u16, size: u16) -> Result<(), TransportError> {
        if self.queue_fixed && size != self.queue_max[self.q(queue)] {
            return Err(TransportError::QueueSizeFixed { queue, size });
        }
        let q = self.q(queue);
        self.queue_size[q] = size;
        Ok(())
    }
    fn set_queue_addresses(
        &mut self,
        queue: u16,
        addresses: &QueueAddresses,
    ) -> Result<(), TransportError> {
        let q = self.q(queue);
        if self.legacy {
            self.legacy_pfn[q] = Some(LegacyLayout::check(addresses)?);
            self.queue_enabled[q] = true;
        }
        self.queue_addresses[q] = Some(*addresses);
        Ok(())
    }
    fn enable_queue(&mut self, queue: u16) {
        let q = self.q(queue);
        self.queue_enabled[q] = true;
    }
    fn notify(&mut self, queue: u16) {
        self.notifications.push(queue);
    }
    fn config_generation(&mut self) -> u32 {
        let left = self.unstable_generation_reads.get();
        if left > 0 {
            self.unstable_generation_reads.set(left - 1);
            self.generation.set(self.generation.get().wrapping_add(1));
        }
        self.generation.get()
    }
    fn read_config_u8(&mut self, offset: usize) -> Result<u8, TransportError> {
        self.config_range(offset, 1)?;
        Ok(self.config[offset])
    }
    fn read_config_u16(&mut self, offset: usize) -> Result<u16, TransportError> {
        self.config_range(offset, 2)?;
        Ok(u16::from_le_bytes([
            self.config[offset],
            self.config[offset + 1],
        ]))
    }
    fn read_config_u32(&mut self, offset: usize) -> Result<u32, TransportError> {
        self.config_range(offset, 4)?;
        let b = &self.config[offset..offset + 4];
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn write_config_u8(&mut self, offset: usize, value: u8) -> Result<(), TransportError> {
        self.config_range(offset, 1)?;
        self.config[offset] = value;
        Ok(())
    }
    fn write_config_u16(&mut self, offset: usize, value: u16) -> Result<(), TransportError> {
        self.config_range(offset, 2)?;
        self.config[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
        Ok(())
    }
    fn write_config_u32(&mut self, offset: usize, value: u32) -> Result<(), TransportError> {
        self.config_range(offset, 4)?;
        self.config[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
        Ok(())
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus(core::mem::take(&mut self.isr))
    }
}
