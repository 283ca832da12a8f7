//! Host tests: the device side of both virtio ring formats, the one implementation behind every
//! fake device. The driver tests reach it through [`super::fakedev`] (a device model behind a
//! fake transport); the ring tests in `virtio/tests` drive it by hand, honest or lying.
//!
//! The device works on device addresses. Under [`crate::dma::Direct`] a device address is the
//! pointer value; a translating test `Dma` (or a fake IOMMU) opens a window for each region it
//! makes visible to the device, and the device reaches the region through it.
//!
//! Taking a request checks what the driver wrote as strictly as our drivers allow (more than
//! the spec asks in places: a split indirect table must be linked `i -> i + 1`). A failed check
//! is a driver bug and panics the test.

use alloc::vec::Vec;
use core::cell::RefCell;
use core::ops::Range;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering, fence};

use super::queue::{RingFormat, Segment, Virtqueue};
use super::transport::QueueAddresses;
use crate::dma::{
    DeviceAddr, Direct, Direction, Dma, DmaConstraints, DmaError, DmaStats, Mapping, SharedRegion,
};

// ---------------------------------------------------------------------------------------------
// Device memory.

std::thread_local! {
    /// Device address windows open on this test thread: (device address, CPU address, length).
    static WINDOWS: RefCell<Vec<(u64, usize, usize)>> = const { RefCell::new(Vec::new()) };
}

/// The CPU pointer behind a device address: through an open window, else the address itself
/// ([`crate::dma::Direct`]).
pub(crate) fn ptr<T>(addr: u64) -> *mut T {
    let cpu = WINDOWS.with_borrow(|w| {
        w.iter()
            .find(|&&(dev, _, len)| addr >= dev && addr - dev < len as u64)
            .map(|&(dev, cpu, _)| cpu + (addr - dev) as usize)
    });
    core::ptr::with_exposed_provenance_mut(cpu.unwrap_or(addr as usize))
}

/// From now on the device reaches `len` bytes at CPU address `cpu` at device address `dev`
/// (what a translating `Dma` or a fake IOMMU mapped).
pub(crate) fn open_window(dev: u64, cpu: usize, len: usize) {
    WINDOWS.with_borrow_mut(|w| w.push((dev, cpu, len)));
}

/// Ends what [`open_window`] opened at `dev`.
pub(crate) fn close_window(dev: u64) {
    WINDOWS.with_borrow_mut(|w| w.retain(|&(d, _, _)| d != dev));
}

/// Ends every window that starts in `devs` (a translating `Dma` going away with regions or
/// mappings still open).
fn close_windows_in(devs: Range<u64>) {
    WINDOWS.with_borrow_mut(|w| w.retain(|&(d, _, _)| !devs.contains(&d)));
}

/// A translating [`Dma`] for tests: memory comes from the heap (through [`Direct`]), but the
/// device sees it at low addresses unrelated to the CPU's (as behind an IOMMU). Legacy queues
/// need addresses below 2^44, which a host heap does not have, and a driver that computed a
/// device address itself would hand the fake device an address that no window covers. It can
/// be told to refuse shared allocations (a DMA path out of ring memory).
pub(crate) struct LowDma {
    inner: Direct,
    next: spin::Mutex<u64>,
    refuse_shared: AtomicBool,
}

/// Where [`LowDma`] starts handing out device addresses.
const LOW_BASE: u64 = 0x1000_0000;

impl LowDma {
    pub fn new() -> Self {
        LowDma {
            inner: Direct::new(),
            next: spin::Mutex::new(LOW_BASE),
            refuse_shared: AtomicBool::new(false),
        }
    }

    /// From now on `alloc_shared` fails (`true`) or works again (`false`).
    pub fn refuse_shared(&self, refuse: bool) {
        self.refuse_shared.store(refuse, Ordering::Relaxed);
    }

    fn window(&self, cpu: NonNull<u8>, len: usize) -> DeviceAddr {
        let mut next = self.next.lock();
        let dev = *next;
        *next = (dev + len as u64).next_multiple_of(4096);
        open_window(dev, cpu.as_ptr().expose_provenance(), len);
        DeviceAddr::new(dev)
    }

    fn close(dev: DeviceAddr) {
        close_window(dev.as_u64());
    }
}

impl Drop for LowDma {
    fn drop(&mut self) {
        close_windows_in(LOW_BASE..*self.next.lock());
    }
}

impl Dma for LowDma {
    fn name(&self) -> &'static str {
        "low"
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
        let r = self
            .inner
            .alloc_shared(size, align, &DmaConstraints::NONE)?;
        let dev = self.window(r.cpu_ptr(), size);
        constraints.check(dev, size)?;
        // SAFETY: the memory of `r`, now reached by the device at `dev`.
        Ok(unsafe { SharedRegion::new(r.cpu_ptr(), dev, size, r.align(), 0) })
    }
    unsafe fn free_shared(&self, region: SharedRegion) -> Result<(), DmaError> {
        Self::close(region.device_addr());
        // SAFETY: forwarded contract; `Direct` frees by CPU pointer and layout.
        unsafe { self.inner.free_shared(region) }
    }
    unsafe fn map(
        &self,
        buffer: NonNull<[u8]>,
        direction: Direction,
        constraints: &DmaConstraints,
    ) -> Result<Mapping, DmaError> {
        // SAFETY: forwarded contract.
        let m = unsafe { self.inner.map(buffer, direction, &DmaConstraints::NONE) }?;
        let dev = self.window(m.cpu_ptr(), m.len());
        constraints.check(dev, m.len())?;
        // SAFETY: the buffer of `m`, reached by the device at `dev`.
        Ok(unsafe { Mapping::new(dev, m.cpu_ptr(), m.len(), direction, 0) })
    }
    unsafe fn unmap(&self, mapping: Mapping) -> Result<(), DmaError> {
        Self::close(mapping.device_addr());
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

pub(crate) fn rd16(addr: u64) -> u16 {
    // SAFETY: `addr` lies in ring memory of a live queue under test, or in a buffer of an
    // outstanding request: memory the driver keeps alive (and mapped) for the device until
    // the request completes or the queue is freed.
    u16::from_le(unsafe { ptr::<u16>(addr).read_volatile() })
}
pub(crate) fn rd32(addr: u64) -> u32 {
    // SAFETY: as in `rd16`.
    u32::from_le(unsafe { ptr::<u32>(addr).read_volatile() })
}
pub(crate) fn rd64(addr: u64) -> u64 {
    // SAFETY: as in `rd16`.
    u64::from_le(unsafe { ptr::<u64>(addr).read_volatile() })
}
pub(crate) fn wr16(addr: u64, v: u16) {
    // SAFETY: as in `rd16`.
    unsafe { ptr::<u16>(addr).write_volatile(v.to_le()) }
}
pub(crate) fn wr32(addr: u64, v: u32) {
    // SAFETY: as in `rd16`.
    unsafe { ptr::<u32>(addr).write_volatile(v.to_le()) }
}

/// The device reading `len` bytes of a buffer the driver gave it.
pub(crate) fn device_read(addr: DeviceAddr, len: usize) -> Vec<u8> {
    // SAFETY: a device-readable segment of an outstanding request, at least `len` long (see
    // `rd16`).
    (0..len)
        .map(|i| unsafe { ptr::<u8>(addr.as_u64() + i as u64).read_volatile() })
        .collect()
}

/// The device writing into a buffer the driver gave it.
pub(crate) fn device_write(addr: DeviceAddr, data: &[u8]) {
    for (i, &b) in data.iter().enumerate() {
        // SAFETY: a device-writable segment of an outstanding request, at least `data.len()`
        // long (see `rd16`).
        unsafe { ptr::<u8>(addr.as_u64() + i as u64).write_volatile(b) }
    }
}

// ---------------------------------------------------------------------------------------------
// Requests.

/// Descriptor flags (both formats).
pub(crate) const F_NEXT: u16 = 1;
pub(crate) const F_WRITE: u16 = 2;
pub(crate) const F_INDIRECT: u16 = 4;
/// Packed ring only.
pub(crate) const F_AVAIL: u16 = 1 << 7;
pub(crate) const F_USED: u16 = 1 << 15;

/// Packed event suppression flags (`RING_EVENT_FLAGS_*`).
const EVENT_ENABLE: u16 = 0;
const EVENT_DESC: u16 = 2;

/// A request as the device saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DeviceRequest {
    /// Split: head descriptor index. Packed: buffer id.
    pub id: u16,
    pub segments: Vec<Segment>,
    /// Its segments came from an indirect table.
    pub indirect: bool,
    /// Ring descriptors it occupied.
    pub descriptors: u16,
}

impl DeviceRequest {
    /// All device-readable bytes, in order.
    pub fn readable(&self) -> Vec<u8> {
        self.segments
            .iter()
            .filter(|s| !s.device_writable)
            .flat_map(|s| device_read(s.addr, s.len as usize))
            .collect()
    }

    /// How many bytes the device may write.
    pub fn writable_len(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| s.device_writable)
            .map(|s| s.len as usize)
            .sum()
    }

    /// Adds ring descriptor `d` (with `flags`) to the request being taken from a ring of `size`
    /// entries; whether the chain goes on.
    fn gather(&mut self, d: u64, flags: u16, size: u16, packed: bool) -> bool {
        self.descriptors += 1;
        assert!(
            self.descriptors <= size,
            "descriptor chain loops or is longer than the ring"
        );
        if flags & F_INDIRECT != 0 {
            assert_eq!(
                self.descriptors, 1,
                "an indirect descriptor must be alone in its chain"
            );
            assert_eq!(flags & F_NEXT, 0, "an indirect descriptor has no next");
            self.segments = read_indirect_table(rd64(d), rd32(d + 8), packed);
            self.indirect = true;
            return false;
        }
        self.segments.push(segment_at(d, flags));
        flags & F_NEXT != 0
    }

    /// Writes `data` into the writable segments, starting `offset` bytes into them.
    pub fn write_at(&self, mut offset: usize, mut data: &[u8]) {
        for s in self.segments.iter().filter(|s| s.device_writable) {
            let len = s.len as usize;
            if offset >= len {
                offset -= len;
                continue;
            }
            let n = (len - offset).min(data.len());
            device_write(DeviceAddr::new(s.addr.as_u64() + offset as u64), &data[..n]);
            data = &data[n..];
            offset = 0;
            if data.is_empty() {
                return;
            }
        }
        assert!(data.is_empty(), "fake device wrote beyond the request");
    }
}

/// The descriptor at `d` (address and length in the same place in both formats).
fn segment_at(d: u64, flags: u16) -> Segment {
    Segment {
        addr: DeviceAddr::new(rd64(d)),
        len: rd32(d + 8),
        device_writable: flags & F_WRITE != 0,
    }
}

/// The segments of an indirect table: `len` bytes at `addr`, every entry used, in order.
pub(crate) fn read_indirect_table(addr: u64, len: u32, packed: bool) -> Vec<Segment> {
    assert_eq!(
        len % 16,
        0,
        "indirect table length must be a multiple of 16"
    );
    let count = u64::from(len / 16);
    assert!(count >= 1, "empty indirect table");
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
                    assert_eq!(u64::from(rd16(d + 14)), i + 1, "split indirect chain order");
                }
                assert_eq!(flags & F_INDIRECT, 0, "nested indirect");
            }
            segment_at(d, flags)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Split ring.

/// The device side of a split ring.
pub(crate) struct SplitSide {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    last_avail: u16,
    used_idx: u16,
    /// `VIRTIO_F_EVENT_IDX`: [`SplitSide::publish_event`] writes avail_event.
    event_idx: bool,
    /// Publish the event index after every take (as QEMU does), not only when asked.
    publish_on_take: bool,
}

impl SplitSide {
    pub fn new(a: &QueueAddresses, event_idx: bool) -> Self {
        SplitSide {
            size: a.size,
            desc: a.desc.as_u64(),
            avail: a.driver.as_u64(),
            used: a.device.as_u64(),
            last_avail: 0,
            used_idx: 0,
            event_idx,
            publish_on_take: false,
        }
    }

    fn n(&self) -> u64 {
        u64::from(self.size)
    }

    pub fn has_available(&self) -> bool {
        rd16(self.avail + 2) != self.last_avail
    }

    /// The next available request, if any.
    pub fn take(&mut self) -> Option<DeviceRequest> {
        if !self.has_available() {
            return None;
        }
        fence(Ordering::Acquire);
        let head = rd16(self.avail + 4 + 2 * u64::from(self.last_avail % self.size));
        assert!(head < self.size, "driver made descriptor {head} available");
        let mut req = DeviceRequest {
            id: head,
            ..DeviceRequest::default()
        };
        let mut i = head;
        loop {
            let d = self.desc + 16 * u64::from(i);
            if !req.gather(d, rd16(d + 12), self.size, false) {
                break;
            }
            i = rd16(d + 14);
            assert!(i < self.size, "next descriptor {i} out of the table");
        }
        self.last_avail = self.last_avail.wrapping_add(1);
        if self.publish_on_take {
            self.publish_event();
        }
        Some(req)
    }

    /// Marks `req` used with `written` bytes.
    pub fn complete(&mut self, req: &DeviceRequest, written: u32) {
        self.push_used_raw(u32::from(req.id), written);
    }

    /// With event index, asks to be notified at the next available entry.
    pub fn publish_event(&self) {
        if self.event_idx {
            self.set_avail_event(self.last_avail);
        }
    }

    pub fn avail_flags(&self) -> u16 {
        rd16(self.avail)
    }

    pub fn used_event(&self) -> u16 {
        rd16(self.avail + 4 + 2 * self.n())
    }

    pub fn set_used_flags(&self, flags: u16) {
        wr16(self.used, flags);
    }

    pub fn set_avail_event(&self, v: u16) {
        wr16(self.used + 4 + 8 * self.n(), v);
    }

    /// Writes a used element as given and publishes it: also the hostile tests' tool.
    pub fn push_used_raw(&mut self, id: u32, len: u32) {
        self.write_used_entry(self.used_idx, id, len);
        fence(Ordering::Release);
        self.set_used_idx(self.used_idx.wrapping_add(1));
    }

    pub fn set_used_idx(&mut self, idx: u16) {
        self.used_idx = idx;
        wr16(self.used + 2, idx);
    }

    pub fn write_used_entry(&self, slot: u16, id: u32, len: u32) {
        let slot = u64::from(slot % self.size);
        wr32(self.used + 4 + 8 * slot, id);
        wr32(self.used + 8 + 8 * slot, len);
    }
}

// ---------------------------------------------------------------------------------------------
// Packed ring.

/// The device side of a packed ring.
pub(crate) struct PackedSide {
    size: u16,
    ring: u64,
    driver_event: u64,
    device_event: u64,
    next_avail: u16,
    avail_wrap: bool,
    next_used: u16,
    used_wrap: bool,
    /// `VIRTIO_F_EVENT_IDX`: [`PackedSide::publish_event`] asks for a descriptor (DESC mode).
    event_idx: bool,
    /// Publish the event after every take (as QEMU does), not only when asked.
    publish_on_take: bool,
    /// Set `VIRTQ_DESC_F_WRITE` in a used descriptor whose length is not 0. QEMU (10.0) never
    /// does: with `false` the device behaves like it.
    pub used_write_flag: bool,
}

fn packed_is_avail(flags: u16, wrap: bool) -> bool {
    (flags & F_AVAIL != 0) == wrap && (flags & F_USED != 0) != wrap
}

impl PackedSide {
    pub fn new(a: &QueueAddresses, event_idx: bool) -> Self {
        PackedSide {
            size: a.size,
            ring: a.desc.as_u64(),
            driver_event: a.driver.as_u64(),
            device_event: a.device.as_u64(),
            next_avail: 0,
            avail_wrap: true,
            next_used: 0,
            used_wrap: true,
            event_idx,
            publish_on_take: false,
            used_write_flag: true,
        }
    }

    fn slot(&self, pos: u16) -> u64 {
        self.ring + 16 * u64::from(pos)
    }

    pub fn has_available(&self) -> bool {
        packed_is_avail(rd16(self.slot(self.next_avail) + 14), self.avail_wrap)
    }

    /// The next available request, if any.
    pub fn take(&mut self) -> Option<DeviceRequest> {
        if !self.has_available() {
            return None;
        }
        fence(Ordering::Acquire);
        let mut req = DeviceRequest::default();
        loop {
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
            if !req.gather(d, flags, self.size, true) {
                // The buffer id is in the last descriptor.
                req.id = rd16(d + 12);
                break;
            }
        }
        if self.publish_on_take {
            self.publish_event();
        }
        Some(req)
    }

    /// Marks `req` used with `written` bytes.
    pub fn complete(&mut self, req: &DeviceRequest, written: u32) {
        let write = written > 0 && self.used_write_flag;
        let flags = self.used_flags() | if write { F_WRITE } else { 0 };
        self.push_used_raw(req.id, written, flags, req.descriptors);
    }

    /// Asks to be notified: with event index at the next available position, else of every
    /// request.
    pub fn publish_event(&self) {
        if self.event_idx {
            self.set_device_event(
                EVENT_DESC,
                self.next_avail | if self.avail_wrap { 0x8000 } else { 0 },
            );
        } else {
            wr16(self.device_event + 2, EVENT_ENABLE);
        }
    }

    /// (flags, off_wrap) of the driver's event suppression structure.
    pub fn driver_event(&self) -> (u16, u16) {
        (rd16(self.driver_event + 2), rd16(self.driver_event))
    }

    pub fn set_device_event(&self, flags: u16, off_wrap: u16) {
        wr16(self.device_event, off_wrap);
        wr16(self.device_event + 2, flags);
    }

    /// Writes a used descriptor at the next used position with the given flags (the wrap bits
    /// are the caller's) and skips `skip` slots: also the hostile tests' tool.
    pub fn push_used_raw(&mut self, id: u16, len: u32, flags: u16, skip: u16) {
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

    /// The AVAIL and USED bits of a used descriptor in the current lap.
    pub fn used_flags(&self) -> u16 {
        if self.used_wrap { F_AVAIL | F_USED } else { 0 }
    }
}

// ---------------------------------------------------------------------------------------------
// Either format.

/// The device side of a ring of either format.
pub(crate) enum RingSide {
    Split(SplitSide),
    Packed(PackedSide),
}

impl RingSide {
    /// The device side of the ring at `a`. It publishes its event index only when asked
    /// ([`RingSide::publish_event`]).
    pub fn new(format: RingFormat, a: &QueueAddresses, event_idx: bool) -> Self {
        match format {
            RingFormat::Split => RingSide::Split(SplitSide::new(a, event_idx)),
            RingFormat::Packed => RingSide::Packed(PackedSide::new(a, event_idx)),
        }
    }

    /// The device side of `q`. With event index it asks for the first request and publishes
    /// its event index after every take.
    pub fn for_queue(q: &Virtqueue<'_>) -> Self {
        let event_idx = q.config().event_idx;
        let mut side = RingSide::new(q.format(), &q.addresses(), event_idx);
        match &mut side {
            RingSide::Split(s) => s.publish_on_take = event_idx,
            RingSide::Packed(p) => p.publish_on_take = event_idx,
        }
        if event_idx {
            // Split: avail_event 0 (as in the zeroed ring). Packed: DESC at position 0 of lap 1.
            side.publish_event();
        }
        side
    }

    /// The next available request, if any.
    pub fn take(&mut self) -> Option<DeviceRequest> {
        match self {
            RingSide::Split(s) => s.take(),
            RingSide::Packed(p) => p.take(),
        }
    }

    /// Marks `req` used with `written` bytes.
    pub fn complete(&mut self, req: &DeviceRequest, written: u32) {
        match self {
            RingSide::Split(s) => s.complete(req, written),
            RingSide::Packed(p) => p.complete(req, written),
        }
    }

    /// Whether `take` would find a request.
    pub fn has_available(&self) -> bool {
        match self {
            RingSide::Split(s) => s.has_available(),
            RingSide::Packed(p) => p.has_available(),
        }
    }

    /// Asks to be notified of the next request.
    pub fn publish_event(&self) {
        match self {
            RingSide::Split(s) => s.publish_event(),
            RingSide::Packed(p) => p.publish_event(),
        }
    }
}

/// The checks on what the driver wrote must fire: rings written by hand, as a broken driver
/// would write them.
mod checks {
    use super::*;

    /// A descriptor as (offset into the test memory, length, flags, next).
    type Desc = (u64, u32, u16, u16);

    const TABLE: u64 = 1024;
    const DATA: u64 = 2048;

    /// Takes the one request of a ring of 4 entries whose descriptors are `ring`, with an
    /// indirect table `table` at offset `TABLE`.
    fn take(format: RingFormat, ring: &[Desc], table: &[Desc]) -> DeviceRequest {
        let mut mem = vec![0u64; 512];
        let base = mem.as_mut_ptr().expose_provenance() as u64;
        let flags_at = if format == RingFormat::Packed { 14 } else { 12 };
        let write = |at: u64, (offset, len, flags, next): Desc| {
            let addr = base + offset;
            wr32(at, addr as u32);
            wr32(at + 4, (addr >> 32) as u32);
            wr32(at + 8, len);
            wr16(at + flags_at, flags);
            if format == RingFormat::Split {
                wr16(at + 14, next);
            }
        };
        for (i, &d) in ring.iter().enumerate() {
            write(base + 16 * i as u64, d);
        }
        for (i, &d) in table.iter().enumerate() {
            write(base + TABLE + 16 * i as u64, d);
        }
        // Split: avail.idx 1, avail.ring[0] = 0.
        if format == RingFormat::Split {
            wr16(base + 64 + 2, 1);
        }
        let a = QueueAddresses {
            size: 4,
            desc: DeviceAddr::new(base),
            driver: DeviceAddr::new(base + 64),
            device: DeviceAddr::new(base + 128),
        };
        let req = RingSide::new(format, &a, false).take().expect("a request");
        // The ring memory lives until the device has read it.
        drop(mem);
        req
    }

    #[test]
    fn a_well_formed_indirect_request_is_read() {
        let table = [(DATA, 8, F_NEXT, 1), (DATA + 8, 4, F_WRITE, 0)];
        let r = take(RingFormat::Split, &[(TABLE, 32, F_INDIRECT, 0)], &table);
        assert!(r.indirect);
        assert_eq!(
            (r.descriptors, r.segments.len(), r.writable_len()),
            (1, 2, 4)
        );
        let table = [(DATA, 8, 0, 0), (DATA + 8, 4, F_WRITE, 0)];
        let r = take(
            RingFormat::Packed,
            &[(TABLE, 32, F_INDIRECT | F_AVAIL, 0)],
            &table,
        );
        assert!(r.indirect);
        assert_eq!(
            (r.descriptors, r.segments.len(), r.writable_len()),
            (1, 2, 4)
        );
    }

    #[test]
    #[should_panic(expected = "an indirect descriptor has no next")]
    fn split_indirect_descriptor_with_next() {
        let ring = [(TABLE, 16, F_INDIRECT | F_NEXT, 1), (DATA, 8, 0, 0)];
        take(RingFormat::Split, &ring, &[(DATA, 8, 0, 0)]);
    }

    #[test]
    #[should_panic(expected = "an indirect descriptor must be alone in its chain")]
    fn split_indirect_descriptor_after_a_plain_one() {
        let ring = [(DATA, 8, F_NEXT, 1), (TABLE, 16, F_INDIRECT, 0)];
        take(RingFormat::Split, &ring, &[(DATA, 8, 0, 0)]);
    }

    #[test]
    #[should_panic(expected = "split indirect chain order")]
    fn split_indirect_table_out_of_order() {
        let table = [(DATA, 8, F_NEXT, 0), (DATA + 8, 8, 0, 0)];
        take(RingFormat::Split, &[(TABLE, 32, F_INDIRECT, 0)], &table);
    }

    #[test]
    #[should_panic(expected = "nested indirect")]
    fn split_nested_indirect() {
        let table = [(DATA, 8, F_NEXT, 1), (TABLE, 32, F_INDIRECT, 0)];
        take(RingFormat::Split, &[(TABLE, 32, F_INDIRECT, 0)], &table);
    }

    #[test]
    #[should_panic(expected = "descriptor chain loops")]
    fn split_chain_loops() {
        let ring = [(DATA, 8, F_NEXT, 1), (DATA + 8, 8, F_NEXT, 0)];
        take(RingFormat::Split, &ring, &[]);
    }

    #[test]
    #[should_panic(expected = "an indirect descriptor has no next")]
    fn packed_indirect_descriptor_with_next() {
        let ring = [
            (TABLE, 16, F_INDIRECT | F_NEXT | F_AVAIL, 0),
            (DATA, 8, F_AVAIL, 0),
        ];
        take(RingFormat::Packed, &ring, &[(DATA, 8, 0, 0)]);
    }

    #[test]
    #[should_panic(expected = "only WRITE is valid in a packed indirect table")]
    fn packed_indirect_table_with_next() {
        let table = [(DATA, 8, F_NEXT, 0), (DATA + 8, 8, 0, 0)];
        take(
            RingFormat::Packed,
            &[(TABLE, 32, F_INDIRECT | F_AVAIL, 0)],
            &table,
        );
    }
}
