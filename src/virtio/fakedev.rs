//! Host tests of the device drivers: a fake virtio device behind a fake [`Transport`].
//!
//! The device side of both ring formats is implemented here over device addresses (pointer
//! values under [`crate::dma::Direct`]). A [`Model`] gives the device its semantics (a disk, an
//! echoing network, a console, an entropy source) and its misbehaviour. The device runs only
//! when the driver looks at the time: [`StepClock::now_us`] advances a simulated clock and
//! steps the device, so every test is single-threaded and deterministic, and a driver that
//! waits without a deadline hangs the test instead of passing it.
//!
//! Like QEMU, a request queue is processed only after a notification, and with event index
//! the device asks to be notified again at its next available entry: a driver that forgets to
//! notify times out here too.

use alloc::boxed::Box;
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::any::Any;
use core::cell::RefCell;
use core::ptr::NonNull;
use core::sync::atomic::{Ordering, fence};

use super::features::{DeviceType, common};
use super::transport::{DeviceStatus, InterruptStatus, QueueAddresses, Transport, TransportError};
use super::wait::Clock;
use crate::dma::{
    DeviceAddr, Direct, Direction, Dma, DmaConstraints, DmaError, DmaStats, Mapping, SharedRegion,
};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
const F_AVAIL: u16 = 1 << 7;
const F_USED: u16 = 1 << 15;

std::thread_local! {
    /// Device address windows of [`LowDma`] on this test thread: (device address, CPU address,
    /// length).
    static WINDOWS: RefCell<Vec<(u64, usize, usize)>> = const { RefCell::new(Vec::new()) };
}

/// The CPU pointer behind a device address: through a [`LowDma`] window, else the address
/// itself ([`crate::dma::Direct`]).
fn ptr<T>(addr: u64) -> *mut T {
    let cpu = WINDOWS.with_borrow(|w| {
        w.iter()
            .find(|&&(dev, _, len)| addr >= dev && addr - dev < len as u64)
            .map(|&(dev, cpu, _)| cpu + (addr - dev) as usize)
    });
    core::ptr::with_exposed_provenance_mut(cpu.unwrap_or(addr as usize))
}

/// For tests of IOMMU paths: from now on the device reaches `len` bytes at CPU address `cpu`
/// at device address `dev` (what a fake IOMMU mapped).
pub(crate) fn open_window(dev: u64, cpu: usize, len: usize) {
    WINDOWS.with_borrow_mut(|w| w.push((dev, cpu, len)));
}

/// Ends what [`open_window`] opened at `dev`.
pub(crate) fn close_window(dev: u64) {
    WINDOWS.with_borrow_mut(|w| w.retain(|&(d, _, _)| d != dev));
}

/// A translating [`Dma`] for tests: memory comes from the heap (through [`Direct`]), but the
/// device sees it at low addresses unrelated to the CPU's (as behind an IOMMU). Legacy queues
/// need addresses below 2^44, which a host heap does not have, and a driver that computed a
/// device address itself would hand the fake device an address that no window covers.
pub(crate) struct LowDma {
    inner: Direct,
    next: spin::Mutex<u64>,
}

impl LowDma {
    pub fn new() -> Self {
        LowDma {
            inner: Direct::new(),
            next: spin::Mutex::new(0x1000_0000),
        }
    }

    fn window(&self, cpu: NonNull<u8>, len: usize) -> DeviceAddr {
        let mut next = self.next.lock();
        let dev = *next;
        *next = (dev + len as u64).next_multiple_of(4096);
        WINDOWS.with_borrow_mut(|w| w.push((dev, cpu.as_ptr().expose_provenance(), len)));
        DeviceAddr::new(dev)
    }

    fn close(dev: DeviceAddr) {
        WINDOWS.with_borrow_mut(|w| w.retain(|&(d, _, _)| d != dev.as_u64()));
    }
}

impl Drop for LowDma {
    fn drop(&mut self) {
        WINDOWS.with_borrow_mut(|w| w.clear());
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
fn rd16(addr: u64) -> u16 {
    // SAFETY: `addr` lies in ring memory of a live queue of the driver under test (`Direct`
    // device addresses are pointer values with exposed provenance).
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

/// One descriptor as the device saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Seg {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

/// A request taken from a queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Req {
    pub queue: u16,
    /// Split: head index; packed: buffer id.
    pub id: u16,
    pub segs: Vec<Seg>,
    ndesc: u16,
    /// The device reset count when it was taken: a request does not survive a reset.
    epoch: u32,
}

impl Req {
    /// All device-readable bytes, in order.
    pub fn readable(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for s in self.segs.iter().filter(|s| !s.writable) {
            for i in 0..u64::from(s.len) {
                // SAFETY: a readable segment of an outstanding request: the driver keeps the
                // memory mapped until the request completes or the device is reset.
                v.push(unsafe { ptr::<u8>(s.addr + i).read_volatile() });
            }
        }
        v
    }

    pub fn writable_len(&self) -> usize {
        self.segs
            .iter()
            .filter(|s| s.writable)
            .map(|s| s.len as usize)
            .sum()
    }

    /// Writes `data` into the writable segments, starting `offset` bytes into them.
    pub fn write_at(&self, mut offset: usize, data: &[u8]) {
        let mut data = data;
        for s in self.segs.iter().filter(|s| s.writable) {
            let len = s.len as usize;
            if offset >= len {
                offset -= len;
                continue;
            }
            let n = (len - offset).min(data.len());
            for (i, &b) in data[..n].iter().enumerate() {
                // SAFETY: inside a writable segment of an outstanding request (see `readable`).
                unsafe { ptr::<u8>(s.addr + (offset + i) as u64).write_volatile(b) }
            }
            data = &data[n..];
            offset = 0;
            if data.is_empty() {
                return;
            }
        }
        assert!(data.is_empty(), "fake device wrote beyond the request");
    }
}

fn read_table(addr: u64, len: u32, packed: bool) -> Vec<Seg> {
    assert!(
        len.is_multiple_of(16) && len > 0,
        "indirect table length {len}"
    );
    let n = u64::from(len / 16);
    let mut segs = Vec::new();
    let mut i = 0u64;
    loop {
        let d = addr + 16 * i;
        let flags = rd16(d + if packed { 14 } else { 12 });
        segs.push(Seg {
            addr: rd64(d),
            len: rd32(d + 8),
            writable: flags & F_WRITE != 0,
        });
        if packed {
            i += 1;
            if i == n {
                break;
            }
        } else {
            if flags & F_NEXT == 0 {
                break;
            }
            i = u64::from(rd16(d + 14));
            assert!(i < n && segs.len() as u64 <= n, "indirect chain");
        }
    }
    segs
}

struct SplitSide {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    last_avail: u16,
    used_idx: u16,
    event_idx: bool,
}

impl SplitSide {
    fn take(&mut self) -> Option<(u16, Vec<Seg>, u16)> {
        if rd16(self.avail + 2) == self.last_avail {
            return None;
        }
        fence(Ordering::Acquire);
        let n = u64::from(self.size);
        let head = rd16(self.avail + 4 + 2 * u64::from(self.last_avail % self.size));
        assert!(head < self.size, "head {head}");
        let mut segs = Vec::new();
        let mut ndesc = 0u16;
        let mut i = head;
        loop {
            ndesc += 1;
            assert!(ndesc <= self.size, "chain loops");
            let d = self.desc + 16 * u64::from(i);
            let flags = rd16(d + 12);
            if flags & F_INDIRECT != 0 {
                segs = read_table(rd64(d), rd32(d + 8), false);
                break;
            }
            segs.push(Seg {
                addr: rd64(d),
                len: rd32(d + 8),
                writable: flags & F_WRITE != 0,
            });
            if flags & F_NEXT == 0 {
                break;
            }
            i = rd16(d + 14);
            assert!(u64::from(i) < n);
        }
        self.last_avail = self.last_avail.wrapping_add(1);
        Some((head, segs, ndesc))
    }

    fn complete(&mut self, id: u16, written: u32) {
        let slot = u64::from(self.used_idx % self.size);
        wr32(self.used + 4 + 8 * slot, u32::from(id));
        wr32(self.used + 8 + 8 * slot, written);
        fence(Ordering::Release);
        self.used_idx = self.used_idx.wrapping_add(1);
        wr16(self.used + 2, self.used_idx);
    }

    fn rearm(&mut self) {
        if self.event_idx {
            wr16(self.used + 4 + 8 * u64::from(self.size), self.last_avail);
        }
    }
}

struct PackedSide {
    size: u16,
    ring: u64,
    device_event: u64,
    next_avail: u16,
    avail_wrap: bool,
    next_used: u16,
    used_wrap: bool,
    event_idx: bool,
}

impl PackedSide {
    fn is_avail(&self, flags: u16) -> bool {
        (flags & F_AVAIL != 0) == self.avail_wrap && (flags & F_USED != 0) != self.avail_wrap
    }

    fn take(&mut self) -> Option<(u16, Vec<Seg>, u16)> {
        if !self.is_avail(rd16(self.ring + 16 * u64::from(self.next_avail) + 14)) {
            return None;
        }
        fence(Ordering::Acquire);
        let mut segs = Vec::new();
        let mut ndesc = 0u16;
        loop {
            ndesc += 1;
            assert!(ndesc <= self.size, "chain longer than the ring");
            let d = self.ring + 16 * u64::from(self.next_avail);
            let flags = rd16(d + 14);
            assert!(self.is_avail(flags), "chain descriptor not available");
            self.next_avail += 1;
            if self.next_avail == self.size {
                self.next_avail = 0;
                self.avail_wrap = !self.avail_wrap;
            }
            if flags & F_INDIRECT != 0 {
                segs = read_table(rd64(d), rd32(d + 8), true);
                return Some((rd16(d + 12), segs, ndesc));
            }
            segs.push(Seg {
                addr: rd64(d),
                len: rd32(d + 8),
                writable: flags & F_WRITE != 0,
            });
            if flags & F_NEXT == 0 {
                return Some((rd16(d + 12), segs, ndesc));
            }
        }
    }

    fn complete(&mut self, id: u16, written: u32, ndesc: u16, write_flag: bool) {
        let d = self.ring + 16 * u64::from(self.next_used);
        wr16(d + 12, id);
        wr32(d + 8, written);
        fence(Ordering::Release);
        let flags = if self.used_wrap { F_AVAIL | F_USED } else { 0 }
            | if written > 0 && write_flag {
                F_WRITE
            } else {
                0
            };
        wr16(d + 14, flags);
        for _ in 0..ndesc {
            self.next_used += 1;
            if self.next_used == self.size {
                self.next_used = 0;
                self.used_wrap = !self.used_wrap;
            }
        }
    }

    fn rearm(&mut self) {
        if self.event_idx {
            wr16(
                self.device_event,
                self.next_avail | if self.avail_wrap { 0x8000 } else { 0 },
            );
            wr16(self.device_event + 2, 2);
        } else {
            wr16(self.device_event + 2, 0);
        }
    }
}

enum Ring {
    Split(SplitSide),
    Packed(PackedSide),
}

#[derive(Default)]
struct Queue {
    max: u16,
    size: u16,
    addrs: Option<QueueAddresses>,
    enabled: bool,
    ring: Option<Ring>,
    kicked: bool,
}

/// The device state models work on.
pub(crate) struct Core {
    pub device_type: DeviceType,
    pub legacy: bool,
    pub offered: u64,
    pub accepted: Option<u64>,
    pub status: u8,
    pub config: Vec<u8>,
    pub config_generation: u32,
    /// The generation changes on this many more generation reads.
    pub unstable_generation_reads: u32,
    queues: Vec<Queue>,
    /// Queue indexes the driver notified, in order.
    pub notifications: Vec<u16>,
    /// Resets the driver asked for.
    pub resets: u32,
    /// The status never returns to 0 after a reset.
    pub stuck_in_reset: bool,
    /// Packed rings: set `VIRTQ_DESC_F_WRITE` in a used descriptor whose length is not 0.
    /// QEMU (10.0) never does: with `false` the fake behaves like it.
    pub packed_used_write_flag: bool,
    pub now_us: u64,
    epoch: u32,
}

impl Core {
    pub fn driver_ok(&self) -> bool {
        self.status & DeviceStatus::DRIVER_OK.bits() != 0
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.unwrap_or(0)
    }

    fn ring(&mut self, q: u16) -> Option<&mut Ring> {
        if !self.driver_ok() {
            return None;
        }
        let accepted = self.accepted();
        let queue = self.queues.get_mut(usize::from(q))?;
        if !queue.enabled {
            return None;
        }
        if queue.ring.is_none() {
            let a = queue.addrs?;
            let event_idx = accepted & common::RING_EVENT_IDX != 0;
            queue.ring = Some(if accepted & common::RING_PACKED != 0 {
                Ring::Packed(PackedSide {
                    size: a.size,
                    ring: a.desc.as_u64(),
                    device_event: a.device.as_u64(),
                    next_avail: 0,
                    avail_wrap: true,
                    next_used: 0,
                    used_wrap: true,
                    event_idx,
                })
            } else {
                Ring::Split(SplitSide {
                    size: a.size,
                    desc: a.desc.as_u64(),
                    avail: a.driver.as_u64(),
                    used: a.device.as_u64(),
                    last_avail: 0,
                    used_idx: 0,
                    event_idx,
                })
            });
        }
        queue.ring.as_mut()
    }

    /// The next available request of queue `q`, whether or not the driver notified.
    pub fn take(&mut self, q: u16) -> Option<Req> {
        let epoch = self.epoch;
        let (id, segs, ndesc) = match self.ring(q)? {
            Ring::Split(s) => s.take()?,
            Ring::Packed(p) => p.take()?,
        };
        Some(Req {
            queue: q,
            id,
            segs,
            ndesc,
            epoch,
        })
    }

    /// Everything available on `q` if the driver notified it since the last call (then asks
    /// for the next notification, like QEMU). Nothing otherwise.
    pub fn take_notified(&mut self, q: u16) -> Vec<Req> {
        let Some(queue) = self.queues.get_mut(usize::from(q)) else {
            return Vec::new();
        };
        if !core::mem::take(&mut queue.kicked) {
            return Vec::new();
        }
        let mut v = Vec::new();
        while let Some(r) = self.take(q) {
            v.push(r);
        }
        if let Some(ring) = self.ring(q) {
            match ring {
                Ring::Split(s) => s.rearm(),
                Ring::Packed(p) => p.rearm(),
            }
        }
        v
    }

    /// Marks `req` used with `written` bytes.
    pub fn complete(&mut self, req: &Req, written: u32) {
        assert_eq!(
            req.epoch, self.epoch,
            "fake device used a request after a reset"
        );
        let write_flag = self.packed_used_write_flag;
        match self.ring(req.queue).expect("queue gone") {
            Ring::Split(s) => s.complete(req.id, written),
            Ring::Packed(p) => p.complete(req.id, written, req.ndesc, write_flag),
        }
    }

    /// Publishes a used entry with an arbitrary id and length (split rings only): for tests of
    /// devices that lie.
    pub fn complete_raw(&mut self, q: u16, id: u16, written: u32) {
        match self.ring(q).expect("queue gone") {
            Ring::Split(s) => s.complete(id, written),
            Ring::Packed(p) => p.complete(id, written, 1, true),
        }
    }
}

/// A device's behaviour.
pub(crate) trait Model: Any {
    /// Called whenever the driver looks at the clock (and after notifications).
    fn step(&mut self, core: &mut Core);
    /// The device was reset: forget every request held.
    fn reset(&mut self);
    fn as_any(&mut self) -> &mut dyn Any;
}

pub(crate) struct State {
    pub core: Core,
    model: Option<Box<dyn Model>>,
}

impl State {
    fn step(&mut self) {
        if let Some(mut m) = self.model.take() {
            m.step(&mut self.core);
            self.model = Some(m);
        }
    }
}

/// The shared device: the transport and the clock both reach it.
#[derive(Clone)]
pub(crate) struct Bus(pub Rc<RefCell<State>>);

impl Bus {
    /// A modern device of `device_type` offering `offered` (plus VERSION_1) with queues of
    /// `queue_max` entries each and `config` as its config space.
    pub fn new(
        device_type: DeviceType,
        offered: u64,
        queue_max: &[u16],
        config: Vec<u8>,
        model: impl Model,
    ) -> Self {
        Bus(Rc::new(RefCell::new(State {
            core: Core {
                device_type,
                legacy: false,
                offered: offered | common::VERSION_1,
                accepted: None,
                status: 0,
                config,
                config_generation: 0,
                unstable_generation_reads: 0,
                queues: queue_max
                    .iter()
                    .map(|&max| Queue {
                        max,
                        ..Queue::default()
                    })
                    .collect(),
                notifications: Vec::new(),
                resets: 0,
                stuck_in_reset: false,
                packed_used_write_flag: true,
                now_us: 0,
                epoch: 0,
            },
            model: Some(Box::new(model)),
        })))
    }

    /// The same device behind a legacy interface: 32 feature bits, no VERSION_1.
    pub fn legacy(self) -> Self {
        {
            let mut s = self.0.borrow_mut();
            s.core.legacy = true;
            s.core.offered &= u64::from(u32::MAX);
        }
        self
    }

    pub fn transport(&self) -> FakeTransport {
        FakeTransport { bus: self.clone() }
    }

    pub fn clock(&self) -> StepClock {
        StepClock { bus: self.clone() }
    }

    pub fn core<R>(&self, f: impl FnOnce(&mut Core) -> R) -> R {
        f(&mut self.0.borrow_mut().core)
    }

    /// Runs `f` on the model, as its concrete type.
    pub fn model<M: Model, R>(&self, f: impl FnOnce(&mut M) -> R) -> R {
        let mut s = self.0.borrow_mut();
        let m = s.model.as_mut().expect("model in use");
        f(m.as_any().downcast_mut::<M>().expect("model type"))
    }
}

/// Simulated time: 10 us per look, and the device runs at each look.
pub(crate) struct StepClock {
    bus: Bus,
}

impl Clock for StepClock {
    fn now_us(&self) -> u64 {
        let mut s = self.bus.0.borrow_mut();
        s.core.now_us += 10;
        s.step();
        s.core.now_us
    }
}

pub(crate) struct FakeTransport {
    bus: Bus,
}

impl FakeTransport {
    fn with<R>(&self, f: impl FnOnce(&mut Core) -> R) -> R {
        f(&mut self.bus.0.borrow_mut().core)
    }

    fn check_config(core: &Core, offset: usize, width: usize) -> Result<(), TransportError> {
        if offset
            .checked_add(width)
            .is_none_or(|end| end > core.config.len())
        {
            return Err(TransportError::ConfigOutOfRange { offset, width });
        }
        Ok(())
    }

    fn read_config(&self, offset: usize, width: usize) -> Result<u64, TransportError> {
        self.with(|c| {
            Self::check_config(c, offset, width)?;
            let mut v = 0u64;
            for i in (0..width).rev() {
                v = (v << 8) | u64::from(c.config[offset + i]);
            }
            Ok(v)
        })
    }

    fn write_config(&self, offset: usize, width: usize, value: u64) -> Result<(), TransportError> {
        self.with(|c| {
            Self::check_config(c, offset, width)?;
            for i in 0..width {
                c.config[offset + i] = (value >> (8 * i)) as u8;
            }
            Ok(())
        })
    }
}

impl Transport for FakeTransport {
    fn name(&self) -> &'static str {
        if self.with(|c| c.legacy) {
            "virtio-mmio-v1"
        } else {
            "virtio-mmio-v2"
        }
    }
    fn is_legacy(&self) -> bool {
        self.with(|c| c.legacy)
    }
    fn device_type(&mut self) -> DeviceType {
        self.with(|c| c.device_type)
    }
    fn device_features(&mut self) -> u64 {
        self.with(|c| c.offered)
    }
    fn set_driver_features(&mut self, features: u64) {
        self.with(|c| {
            assert_eq!(
                features & !c.offered,
                0,
                "driver accepted what was not offered"
            );
            c.accepted = Some(features);
        });
    }
    fn status(&mut self) -> DeviceStatus {
        DeviceStatus(self.with(|c| c.status))
    }
    fn set_status(&mut self, status: DeviceStatus) {
        let mut s = self.bus.0.borrow_mut();
        if status.bits() == 0 {
            let c = &mut s.core;
            c.resets += 1;
            c.epoch += 1;
            c.status = if c.stuck_in_reset { c.status } else { 0 };
            if !c.stuck_in_reset {
                c.accepted = None;
                for q in &mut c.queues {
                    let max = q.max;
                    *q = Queue {
                        max,
                        ..Queue::default()
                    };
                }
                if let Some(m) = s.model.as_mut() {
                    m.reset();
                }
            }
        } else {
            s.core.status = status.bits();
        }
    }
    fn max_queue_size(&mut self, queue: u16) -> u16 {
        self.with(|c| c.queues.get(usize::from(queue)).map_or(0, |q| q.max))
    }
    fn queue_in_use(&mut self, queue: u16) -> bool {
        self.with(|c| c.queues.get(usize::from(queue)).is_some_and(|q| q.enabled))
    }
    fn set_queue_size(&mut self, queue: u16, size: u16) -> Result<(), TransportError> {
        self.with(|c| c.queues[usize::from(queue)].size = size);
        Ok(())
    }
    fn set_queue_addresses(
        &mut self,
        queue: u16,
        addresses: &QueueAddresses,
    ) -> Result<(), TransportError> {
        self.with(|c| {
            let legacy = c.legacy;
            let q = &mut c.queues[usize::from(queue)];
            q.addrs = Some(*addresses);
            q.size = addresses.size;
            if legacy {
                q.enabled = true;
            }
        });
        Ok(())
    }
    fn enable_queue(&mut self, queue: u16) {
        self.with(|c| c.queues[usize::from(queue)].enabled = true);
    }
    fn notify(&mut self, queue: u16) {
        let mut s = self.bus.0.borrow_mut();
        s.core.notifications.push(queue);
        if let Some(q) = s.core.queues.get_mut(usize::from(queue)) {
            q.kicked = true;
        }
    }
    fn config_generation(&mut self) -> u32 {
        self.with(|c| {
            if c.unstable_generation_reads > 0 {
                c.unstable_generation_reads -= 1;
                c.config_generation += 1;
            }
            c.config_generation
        })
    }
    fn read_config_u8(&mut self, offset: usize) -> Result<u8, TransportError> {
        self.read_config(offset, 1).map(|v| v as u8)
    }
    fn read_config_u16(&mut self, offset: usize) -> Result<u16, TransportError> {
        self.read_config(offset, 2).map(|v| v as u16)
    }
    fn read_config_u32(&mut self, offset: usize) -> Result<u32, TransportError> {
        self.read_config(offset, 4).map(|v| v as u32)
    }
    fn write_config_u8(&mut self, offset: usize, value: u8) -> Result<(), TransportError> {
        self.write_config(offset, 1, value.into())
    }
    fn write_config_u16(&mut self, offset: usize, value: u16) -> Result<(), TransportError> {
        self.write_config(offset, 2, value.into())
    }
    fn write_config_u32(&mut self, offset: usize, value: u32) -> Result<(), TransportError> {
        self.write_config(offset, 4, value.into())
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus(0)
    }
}

/// Config bytes: `len` zeroes with `fields` (offset, little-endian bytes) written in.
pub(crate) fn config_bytes(len: usize, fields: &[(usize, &[u8])]) -> Vec<u8> {
    let mut v = vec![0u8; len];
    for (off, bytes) in fields {
        v[*off..*off + bytes.len()].copy_from_slice(bytes);
    }
    v
}
