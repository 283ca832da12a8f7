//! The packed virtqueue (virtio 1.2, 2.8; negotiated with `VIRTIO_F_RING_PACKED`): one
//! descriptor ring that both sides write, with wrap counters, plus two event suppression
//! structures.
//!
//! Buffer ids are separate from ring positions: a request takes a free id and as many ring
//! slots as it has descriptors (1 with an indirect table). The device writes one used
//! descriptor per request at its own next position and both sides skip the request's slot count.
//! The driver keeps ids, slot counts and lengths privately; from the ring it reads only the used
//! descriptor at its next position, and checks it.

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use super::barrier;
use super::queue::{
    AddError, Completion, InFlight, MAX_QUEUE_SIZE, PlannedRequest, QueueConfig, QueueError,
    RingError, Segment, Token, free_queue_memory, plan_request,
};
use super::split::need_event;
use super::transport::QueueAddresses;
use crate::dma::{DeviceAddr, Dma, DmaConstraints, DmaError, SharedRegion};

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
const DESC_F_AVAIL: u16 = 1 << 7;
const DESC_F_USED: u16 = 1 << 15;

const EVENT_FLAGS_ENABLE: u16 = 0;
const EVENT_FLAGS_DISABLE: u16 = 1;
const EVENT_FLAGS_DESC: u16 = 2;

/// Offsets in an event suppression structure.
const EVENT_OFF_WRAP: usize = 0;
const EVENT_FLAGS: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IdState {
    Free,
    /// Free, completed and not reused since: a second completion is a duplicate.
    Completed,
    InFlight,
}

/// A packed virtqueue. See [`super::Virtqueue`] for the API contract.
pub struct PackedQueue<'d> {
    dma: &'d dyn Dma,
    table_constraints: DmaConstraints,
    config: QueueConfig,
    ring: SharedRegion,
    /// Written by the driver: used-buffer notification suppression.
    driver_event: SharedRegion,
    /// Written by the device: available-buffer notification suppression.
    device_event: SharedRegion,
    ids: Vec<IdState>,
    in_flight: Vec<Option<InFlight>>,
    /// First in, first out: a completed id is reused as late as possible, so a duplicate
    /// completion is recognised as one.
    free_ids: VecDeque<u16>,
    free_descs: u16,
    next_avail: u16,
    avail_wrap: bool,
    next_used: u16,
    used_wrap: bool,
    /// Ring slots filled since `should_notify` last looked.
    added_since_check: u32,
    outstanding: u16,
    interrupts: bool,
    broken: Option<RingError>,
    dma_free_failures: u64,
}

impl<'d> PackedQueue<'d> {
    pub fn new(
        dma: &'d dyn Dma,
        config: QueueConfig,
        constraints: &DmaConstraints,
    ) -> Result<Self, QueueError> {
        let size = config.size;
        if size == 0 || size > MAX_QUEUE_SIZE {
            return Err(QueueError::SizeInvalid { size });
        }
        if config.legacy_layout {
            return Err(QueueError::PackedLegacy);
        }
        let n = usize::from(size);
        let ring = dma
            .alloc_shared(16 * n, 16, constraints)
            .map_err(QueueError::Dma)?;
        let driver_event = match dma.alloc_shared(4, 4, constraints) {
            Ok(r) => r,
            Err(e) => {
                // SAFETY: the device was never told about it.
                let _ = unsafe { dma.free_shared(ring) };
                return Err(QueueError::Dma(e));
            }
        };
        let device_event = match dma.alloc_shared(4, 4, constraints) {
            Ok(r) => r,
            Err(e) => {
                // SAFETY: as above.
                let _ = unsafe { dma.free_shared(ring) };
                // SAFETY: as above.
                let _ = unsafe { dma.free_shared(driver_event) };
                return Err(QueueError::Dma(e));
            }
        };
        Ok(PackedQueue {
            dma,
            table_constraints: *constraints,
            config,
            ring,
            driver_event,
            device_event,
            ids: vec![IdState::Free; n],
            in_flight: (0..n).map(|_| None).collect(),
            free_ids: (0..size).collect(),
            free_descs: size,
            next_avail: 0,
            avail_wrap: true,
            next_used: 0,
            used_wrap: true,
            added_since_check: 0,
            outstanding: 0,
            interrupts: true,
            broken: None,
            dma_free_failures: 0,
        })
    }

    pub fn config(&self) -> QueueConfig {
        self.config
    }

    pub fn addresses(&self) -> QueueAddresses {
        QueueAddresses {
            size: self.config.size,
            desc: self.ring.device_addr(),
            driver: self.driver_event.device_addr(),
            device: self.device_event.device_addr(),
        }
    }

    fn break_with(&mut self, e: RingError) -> RingError {
        self.broken = Some(e);
        e
    }

    /// AVAIL = wrap counter, USED = its inverse: "available" in the current lap.
    fn avail_flags(&self) -> u16 {
        if self.avail_wrap {
            DESC_F_AVAIL
        } else {
            DESC_F_USED
        }
    }

    /// Fills one ring slot except its flags, returns the flags it must get, and moves on.
    fn fill_slot(&mut self, addr: DeviceAddr, len: u32, id: u16, flags: u16) -> (usize, u16) {
        let off = 16 * usize::from(self.next_avail);
        self.ring.write_u64(off, addr.as_u64());
        self.ring.write_u32(off + 8, len);
        self.ring.write_u16(off + 12, id);
        let flags = flags | self.avail_flags();
        self.next_avail += 1;
        if self.next_avail == self.config.size {
            self.next_avail = 0;
            self.avail_wrap = !self.avail_wrap;
        }
        (off, flags)
    }

    pub fn add(&mut self, segments: &[Segment]) -> Result<Token, AddError> {
        let PlannedRequest {
            capacity,
            table,
            needed,
        } = plan_request(
            self.broken,
            self.dma,
            &self.table_constraints,
            segments,
            self.config.size,
            self.config.indirect,
            self.free_descs,
            write_indirect,
        )?;
        // Each outstanding request holds at least one slot, so a free slot means a free id.
        let Some(id) = self.free_ids.pop_front() else {
            return Err(AddError::Full { needed, free: 0 });
        };

        // The first slot's flags are written last: they hand the whole request to the device.
        let first = if let Some(t) = &table {
            self.fill_slot(
                t.device_addr(),
                16 * segments.len() as u32,
                id,
                DESC_F_INDIRECT,
            )
        } else {
            let mut first = None;
            for (i, s) in segments.iter().enumerate() {
                let last = i + 1 == segments.len();
                let flags = if s.device_writable { DESC_F_WRITE } else { 0 }
                    | if last { 0 } else { DESC_F_NEXT };
                // The id belongs in the last descriptor; it goes in all of them, harmlessly.
                let (off, flags) = self.fill_slot(s.addr, s.len, id, flags);
                if first.is_none() {
                    first = Some((off, flags));
                } else {
                    self.ring.write_u16(off + 14, flags);
                }
            }
            // `check_segments` refused an empty request.
            first.unwrap_or((0, 0))
        };
        barrier::publish();
        self.ring.write_u16(first.0 + 14, first.1);

        self.ids[usize::from(id)] = IdState::InFlight;
        self.in_flight[usize::from(id)] = Some(InFlight {
            descriptors: needed,
            capacity,
            indirect: table,
        });
        self.free_descs -= needed;
        self.added_since_check = self.added_since_check.saturating_add(u32::from(needed));
        self.outstanding += 1;
        Ok(Token(id))
    }

    pub fn should_notify(&mut self) -> bool {
        // The new flags must be visible before we read what the device asked for.
        barrier::full();
        let added = core::mem::take(&mut self.added_since_check);
        if added == 0 {
            return false;
        }
        match self.device_event.read_u16(EVENT_FLAGS) & 3 {
            EVENT_FLAGS_DISABLE => false,
            EVENT_FLAGS_DESC if self.config.event_idx => {
                if added >= u32::from(self.config.size) {
                    // Every slot was filled since the last look: any event offset was crossed.
                    return true;
                }
                let off_wrap = self.device_event.read_u16(EVENT_OFF_WRAP);
                let event_wrap = off_wrap & 0x8000 != 0;
                let mut event = off_wrap & 0x7fff;
                // Positions of the previous lap count as negative ones of this lap.
                if event_wrap != self.avail_wrap {
                    event = event.wrapping_sub(self.config.size);
                }
                let new = self.next_avail;
                let old = new.wrapping_sub(added as u16);
                need_event(event, new, old)
            }
            // ENABLE, the reserved value 3, or DESC without event index: notify, to be safe.
            _ => true,
        }
    }

    pub fn pop_used(&mut self) -> Result<Option<Completion>, RingError> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        let position = self.next_used;
        let off = 16 * usize::from(position);
        let flags = self.ring.read_u16(off + 14);
        let avail = flags & DESC_F_AVAIL != 0;
        let used = flags & DESC_F_USED != 0;
        let w = self.used_wrap;
        if !(avail == w && used == w) {
            // Not used in this lap. With requests outstanding, the slot was made available in
            // this lap (AVAIL = w); without, it still holds the previous lap (AVAIL = !w). Any
            // other combination is the device rewriting flags it must not touch.
            let pending_or_old = if self.outstanding > 0 {
                avail == w
            } else {
                avail != w
            };
            if pending_or_old {
                return Ok(None);
            }
            let e = RingError::UsedFlagsInconsistent {
                position,
                flags,
                used_wrap: w,
            };
            return Err(self.break_with(e));
        }
        // The id and length are read only after the flags that published them.
        barrier::consume();
        let raw_id = self.ring.read_u16(off + 12);
        let len = self.ring.read_u32(off + 8);
        let id = match self.check_used_id(raw_id) {
            Ok(id) => id,
            Err(e) => return Err(self.break_with(e)),
        };
        // The spec makes the length valid only with VIRTQ_DESC_F_WRITE in the used descriptor,
        // but QEMU (10.0) never sets that flag there and Linux reads the length regardless. So
        // the length counts whenever the request had device-writable buffers (and is checked
        // against their capacity below); for a read-only request it is reserved and ignored.
        let capacity = self.in_flight[usize::from(id)]
            .as_ref()
            .map_or(0, |f| f.capacity);
        let written = if capacity > 0 || flags & DESC_F_WRITE != 0 {
            len
        } else {
            0
        };
        if u64::from(written) > capacity {
            return Err(self.break_with(RingError::WrittenTooLong {
                id,
                written,
                capacity,
            }));
        }
        let Some(flight) = self.in_flight[usize::from(id)].take() else {
            return Err(self.break_with(RingError::NotOutstanding { id }));
        };
        self.next_used += flight.descriptors;
        if self.next_used >= self.config.size {
            self.next_used -= self.config.size;
            self.used_wrap = !self.used_wrap;
        }
        self.free_descs += flight.descriptors;
        self.ids[usize::from(id)] = IdState::Completed;
        self.free_ids.push_back(id);
        self.outstanding -= 1;
        if let Some(t) = flight.indirect {
            // SAFETY: the device returned the request, so it is done with its table.
            if unsafe { self.dma.free_shared(t) }.is_err() {
                self.dma_free_failures += 1;
            }
        }
        if self.interrupts && self.config.event_idx {
            self.write_used_event();
        }
        Ok(Some(Completion {
            token: Token(id),
            written_len: written,
        }))
    }

    fn check_used_id(&self, id: u16) -> Result<u16, RingError> {
        if id >= self.config.size {
            return Err(RingError::IdOutOfRange {
                id: u32::from(id),
                size: self.config.size,
            });
        }
        match self.ids[usize::from(id)] {
            IdState::InFlight => Ok(id),
            IdState::Completed => Err(RingError::DuplicateCompletion { id }),
            IdState::Free => Err(RingError::NotOutstanding { id }),
        }
    }

    /// Asks for an interrupt when the device uses the slot at our next used position.
    fn write_used_event(&self) {
        let off_wrap = self.next_used | if self.used_wrap { 0x8000 } else { 0 };
        self.driver_event.write_u16(EVENT_OFF_WRAP, off_wrap);
    }

    pub fn set_interrupts(&mut self, enabled: bool) {
        self.interrupts = enabled;
        let flags = if !enabled {
            EVENT_FLAGS_DISABLE
        } else if self.config.event_idx {
            self.write_used_event();
            // The offset must be visible before the flags that make the device read it.
            barrier::publish();
            EVENT_FLAGS_DESC
        } else {
            EVENT_FLAGS_ENABLE
        };
        self.driver_event.write_u16(EVENT_FLAGS, flags);
    }

    pub fn outstanding_count(&self) -> u16 {
        self.outstanding
    }

    pub fn outstanding(&self) -> Vec<Token> {
        (0..self.config.size)
            .filter(|&i| self.ids[usize::from(i)] == IdState::InFlight)
            .map(Token)
            .collect()
    }

    pub fn free_descriptors(&self) -> u16 {
        self.free_descs
    }

    pub fn broken(&self) -> Option<RingError> {
        self.broken
    }

    pub fn dma_free_failures(&self) -> u64 {
        self.dma_free_failures
    }

    /// # Safety
    /// The device no longer uses the queue (it was reset).
    pub unsafe fn free(mut self) -> Result<(), DmaError> {
        let areas = [self.ring, self.driver_event, self.device_event];
        // SAFETY: the device no longer uses the queue (caller contract).
        unsafe { free_queue_memory(self.dma, &mut self.in_flight, areas) }
    }
}

/// A packed indirect table entry: only the WRITE flag is valid there (no chaining, no id).
fn write_indirect(table: &SharedRegion, i: usize, s: &Segment) {
    let off = 16 * i;
    table.write_u64(off, s.addr.as_u64());
    table.write_u32(off + 8, s.len);
    table.write_u16(off + 12, 0);
    table.write_u16(off + 14, if s.device_writable { DESC_F_WRITE } else { 0 });
}
