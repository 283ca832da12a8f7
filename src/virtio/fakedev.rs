//! Host tests of the device drivers: a fake virtio device behind a fake [`Transport`].
//!
//! The device side of both ring formats is [`super::ringside`]'s, over device addresses (pointer
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
use core::ops::Deref;

use super::features::{DeviceType, common};
use super::queue::RingFormat;
use super::ringside::{DeviceRequest, F_WRITE, RingSide};
use super::transport::{DeviceStatus, InterruptStatus, QueueAddresses, Transport, TransportError};
use super::wait::Clock;

/// A request taken from queue `queue` of the fake device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Req {
    pub queue: u16,
    /// The device reset count when it was taken: a request does not survive a reset.
    epoch: u32,
    request: DeviceRequest,
}

impl Deref for Req {
    type Target = DeviceRequest;
    fn deref(&self) -> &DeviceRequest {
        &self.request
    }
}

#[derive(Default)]
struct Queue {
    max: u16,
    size: u16,
    addrs: Option<QueueAddresses>,
    enabled: bool,
    ring: Option<RingSide>,
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
    /// Config bytes the device ignores the driver's writes to (a field it does not honour).
    pub ignored_config_writes: Vec<usize>,
    /// The generation changes on this many more generation reads.
    pub unstable_generation_reads: u32,
    queues: Vec<Queue>,
    /// Queue indexes the driver notified, in order.
    pub notifications: Vec<u16>,
    /// Resets the driver asked for.
    pub resets: u32,
    /// The status never returns to 0 after a reset.
    pub stuck_in_reset: bool,
    /// [`super::ringside::PackedSide::used_write_flag`] of every packed queue (QEMU 10.0 behaves
    /// as with `false`).
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

    fn ring(&mut self, q: u16) -> Option<&mut RingSide> {
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
            let format = if accepted & common::RING_PACKED != 0 {
                RingFormat::Packed
            } else {
                RingFormat::Split
            };
            queue.ring = Some(RingSide::new(format, &a, event_idx));
        }
        queue.ring.as_mut()
    }

    /// The next available request of queue `q`, whether or not the driver notified.
    pub fn take(&mut self, q: u16) -> Option<Req> {
        let epoch = self.epoch;
        let request = self.ring(q)?.take()?;
        Some(Req {
            queue: q,
            epoch,
            request,
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
            ring.publish_event();
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
        let ring = self.ring(req.queue).expect("queue gone");
        if let RingSide::Packed(p) = ring {
            p.used_write_flag = write_flag;
        }
        ring.complete(req, written);
    }

    /// Publishes a used entry with an arbitrary id and length (one descriptor long in a packed
    /// ring): for tests of devices that lie.
    pub fn complete_raw(&mut self, q: u16, id: u16, written: u32) {
        match self.ring(q).expect("queue gone") {
            RingSide::Split(s) => s.push_used_raw(u32::from(id), written),
            RingSide::Packed(p) => {
                let write = if written > 0 { F_WRITE } else { 0 };
                p.push_used_raw(id, written, p.used_flags() | write, 1);
            }
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
                ignored_config_writes: Vec::new(),
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
            for i in (0..width).filter(|i| !c.ignored_config_writes.contains(&(offset + i))) {
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
