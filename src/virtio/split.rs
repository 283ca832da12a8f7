//! The split virtqueue (virtio 1.2, 2.7): descriptor table, available ring, used ring.
//!
//! Modern transports get three separate allocations with the spec alignments (16, 2, 4), which
//! also catches a device that assumes the legacy layout. Legacy transports get one page-aligned
//! block in [`LegacyLayout`].
//!
//! The driver's bookkeeping (free list, chain links, lengths, which descriptor heads which
//! chain) lives in private memory and is never read back from the table, so a device that
//! scribbles over the descriptor table cannot corrupt it. What is read from the device (used
//! index, used id, used length) is validated before use.

use alloc::vec;
use alloc::vec::Vec;

use super::barrier;
use super::queue::{
    AddError, Completion, InFlight, MAX_QUEUE_SIZE, PlannedRequest, QueueConfig, QueueError,
    RingError, Segment, Token, free_queue_memory, plan_request,
};
use super::transport::{LegacyLayout, QueueAddresses};
use crate::dma::{DeviceAddr, Dma, DmaConstraints, DmaError, SharedRegion};

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const USED_F_NO_NOTIFY: u16 = 1;

/// End of the free list. Queue sizes are at most 32768, so this is never an index.
const NIL: u16 = u16::MAX;

/// What a descriptor index is to the driver right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DescState {
    Free,
    /// Free, and was the head of a chain that completed and was not reused since: a second
    /// completion of it is a duplicate.
    Completed,
    /// Heads an outstanding chain.
    Head,
    /// Inside the outstanding chain headed by `head`.
    Body {
        head: u16,
    },
}

enum Areas {
    Modern {
        desc: SharedRegion,
        avail: SharedRegion,
        used: SharedRegion,
    },
    Legacy {
        block: SharedRegion,
        layout: LegacyLayout,
    },
}

/// A split virtqueue. See [`super::Virtqueue`] for the API contract.
pub struct SplitQueue<'d> {
    dma: &'d dyn Dma,
    /// For indirect tables: the device's limits, without the ring's own.
    table_constraints: DmaConstraints,
    config: QueueConfig,
    areas: Areas,
    state: Vec<DescState>,
    /// Chain links of outstanding chains, and the free list's links.
    next: Vec<u16>,
    /// Indexed by head descriptor.
    in_flight: Vec<Option<InFlight>>,
    free_head: u16,
    free_tail: u16,
    free_count: u16,
    /// Our copy of avail.idx: the next slot to fill.
    avail_idx: u16,
    /// Requests added since `should_notify` last looked.
    added_since_check: u32,
    /// The used index up to which completions were returned.
    last_used_idx: u16,
    /// The last used.idx read and accepted; entries up to it are ready.
    used_idx_seen: u16,
    outstanding: u16,
    interrupts: bool,
    broken: Option<RingError>,
    dma_free_failures: u64,
}

impl<'d> SplitQueue<'d> {
    /// Builds the queue in zeroed memory from `dma`. `constraints` are the device's; the legacy
    /// layout adds its own (page alignment, 44-bit addresses).
    pub fn new(
        dma: &'d dyn Dma,
        config: QueueConfig,
        constraints: &DmaConstraints,
    ) -> Result<Self, QueueError> {
        let size = config.size;
        if size == 0 || size > MAX_QUEUE_SIZE || !size.is_power_of_two() {
            return Err(QueueError::SizeInvalid { size });
        }
        let n = usize::from(size);
        let areas = if config.legacy_layout {
            let layout = LegacyLayout::new(size);
            let ring_constraints = DmaConstraints {
                max_addr: constraints.max_addr.min(LegacyLayout::CONSTRAINTS.max_addr),
                ..constraints.with_align(LegacyLayout::PAGE as u64)
            };
            let block = dma
                .alloc_shared(layout.total, LegacyLayout::PAGE, &ring_constraints)
                .map_err(QueueError::Dma)?;
            Areas::Legacy { block, layout }
        } else {
            let desc = dma
                .alloc_shared(16 * n, 16, constraints)
                .map_err(QueueError::Dma)?;
            let avail = match dma.alloc_shared(6 + 2 * n, 2, constraints) {
                Ok(r) => r,
                Err(e) => {
                    // SAFETY: the device was never told about it.
                    let _ = unsafe { dma.free_shared(desc) };
                    return Err(QueueError::Dma(e));
                }
            };
            let used = match dma.alloc_shared(6 + 8 * n, 4, constraints) {
                Ok(r) => r,
                Err(e) => {
                    // SAFETY: as above.
                    let _ = unsafe { dma.free_shared(desc) };
                    // SAFETY: as above.
                    let _ = unsafe { dma.free_shared(avail) };
                    return Err(QueueError::Dma(e));
                }
            };
            Areas::Modern { desc, avail, used }
        };
        let mut next: Vec<u16> = (1..=size).collect();
        next[n - 1] = NIL;
        Ok(SplitQueue {
            dma,
            table_constraints: *constraints,
            config,
            areas,
            state: vec![DescState::Free; n],
            next,
            in_flight: (0..n).map(|_| None).collect(),
            free_head: 0,
            free_tail: size - 1,
            free_count: size,
            avail_idx: 0,
            added_since_check: 0,
            last_used_idx: 0,
            used_idx_seen: 0,
            outstanding: 0,
            // Zeroed memory means "interrupts wanted" in both suppression schemes.
            interrupts: true,
            broken: None,
            dma_free_failures: 0,
        })
    }

    pub fn config(&self) -> QueueConfig {
        self.config
    }

    pub fn addresses(&self) -> QueueAddresses {
        let (desc, driver, device) = match &self.areas {
            Areas::Modern { desc, avail, used } => {
                (desc.device_addr(), avail.device_addr(), used.device_addr())
            }
            Areas::Legacy { block, layout } => (
                block.device_addr(),
                block.device_addr_at(layout.avail_offset),
                block.device_addr_at(layout.used_offset),
            ),
        };
        QueueAddresses {
            size: self.config.size,
            desc,
            driver,
            device,
        }
    }

    fn desc_area(&self) -> (&SharedRegion, usize) {
        match &self.areas {
            Areas::Modern { desc, .. } => (desc, 0),
            Areas::Legacy { block, .. } => (block, 0),
        }
    }

    fn avail_area(&self) -> (&SharedRegion, usize) {
        match &self.areas {
            Areas::Modern { avail, .. } => (avail, 0),
            Areas::Legacy { block, layout } => (block, layout.avail_offset),
        }
    }

    fn used_area(&self) -> (&SharedRegion, usize) {
        match &self.areas {
            Areas::Modern { used, .. } => (used, 0),
            Areas::Legacy { block, layout } => (block, layout.used_offset),
        }
    }

    fn n(&self) -> usize {
        usize::from(self.config.size)
    }

    fn write_desc(&self, index: u16, addr: DeviceAddr, len: u32, flags: u16, next: u16) {
        let (r, base) = self.desc_area();
        let off = base + 16 * usize::from(index);
        r.write_u64(off, addr.as_u64());
        r.write_u32(off + 8, len);
        r.write_u16(off + 12, flags);
        r.write_u16(off + 14, next);
    }

    fn write_used_event(&self, value: u16) {
        let (r, base) = self.avail_area();
        r.write_u16(base + 4 + 2 * self.n(), value);
    }

    fn break_with(&mut self, e: RingError) -> RingError {
        self.broken = Some(e);
        e
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
            self.free_count,
            write_indirect,
        )?;

        let head = self.free_head;
        let mut index = head;
        if let Some(t) = &table {
            self.write_desc(
                head,
                t.device_addr(),
                16 * segments.len() as u32,
                DESC_F_INDIRECT,
                0,
            );
            self.state[usize::from(head)] = DescState::Head;
        } else {
            // The chain follows the free list, so the links already in `next` are the chain.
            for (i, s) in segments.iter().enumerate() {
                let last = i + 1 == segments.len();
                let link = self.next[usize::from(index)];
                let flags = if s.device_writable { DESC_F_WRITE } else { 0 }
                    | if last { 0 } else { DESC_F_NEXT };
                self.write_desc(index, s.addr, s.len, flags, if last { 0 } else { link });
                self.state[usize::from(index)] = if i == 0 {
                    DescState::Head
                } else {
                    DescState::Body { head }
                };
                if !last {
                    index = link;
                }
            }
        }
        // `index` is the chain's last descriptor; the free list resumes after it.
        self.free_head = self.next[usize::from(index)];
        self.free_count -= needed;
        if self.free_count == 0 {
            self.free_head = NIL;
            self.free_tail = NIL;
        }
        self.in_flight[usize::from(head)] = Some(InFlight {
            descriptors: needed,
            capacity,
            indirect: table,
        });

        let slot = usize::from(self.avail_idx & (self.config.size - 1));
        let (r, base) = self.avail_area();
        r.write_u16(base + 4 + 2 * slot, head);
        // The descriptors and the ring entry must be visible before the index that publishes
        // them.
        barrier::publish();
        let idx = self.avail_idx.wrapping_add(1);
        r.write_u16(base + 2, idx);
        self.avail_idx = idx;
        self.added_since_check = self.added_since_check.saturating_add(1);
        self.outstanding += 1;
        Ok(Token(head))
    }

    pub fn should_notify(&mut self) -> bool {
        // The new avail.idx must be visible before we read what the device asked for, or both
        // sides may decide the other one will act.
        barrier::full();
        let added = core::mem::take(&mut self.added_since_check);
        if added == 0 {
            return false;
        }
        let (r, base) = self.used_area();
        if self.config.event_idx {
            if added > u32::from(u16::MAX) {
                return true;
            }
            let avail_event = r.read_u16(base + 4 + 8 * self.n());
            let new = self.avail_idx;
            let old = new.wrapping_sub(added as u16);
            need_event(avail_event, new, old)
        } else {
            r.read_u16(base) & USED_F_NO_NOTIFY == 0
        }
    }

    pub fn pop_used(&mut self) -> Result<Option<Completion>, RingError> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        if self.last_used_idx == self.used_idx_seen {
            let (r, base) = self.used_area();
            let now = r.read_u16(base + 2);
            let ready = now.wrapping_sub(self.last_used_idx);
            if ready == 0 {
                return Ok(None);
            }
            // The device can only return what it was given; more (or an index that went back,
            // which reads as a huge step) is a lie.
            if ready > self.outstanding {
                let e = RingError::UsedIdxJump {
                    last_seen: self.last_used_idx,
                    now,
                    outstanding: self.outstanding,
                };
                return Err(self.break_with(e));
            }
            // Entries are read only after the index that published them.
            barrier::consume();
            self.used_idx_seen = now;
        }

        let slot = usize::from(self.last_used_idx & (self.config.size - 1));
        let (r, base) = self.used_area();
        let id = r.read_u32(base + 4 + 8 * slot);
        let written = r.read_u32(base + 8 + 8 * slot);
        let head = match self.check_used_id(id) {
            Ok(h) => h,
            Err(e) => return Err(self.break_with(e)),
        };
        let capacity = self.in_flight[usize::from(head)]
            .as_ref()
            .map_or(0, |f| f.capacity);
        if u64::from(written) > capacity {
            return Err(self.break_with(RingError::WrittenTooLong {
                id: head,
                written,
                capacity,
            }));
        }
        let Some(flight) = self.in_flight[usize::from(head)].take() else {
            // `check_used_id` saw a head, and every head has its record; keep going without it
            // rather than trusting the invariant with a panic.
            return Err(self.break_with(RingError::NotOutstanding { id: head }));
        };
        self.release_chain(head, flight.descriptors);
        if let Some(t) = flight.indirect {
            // SAFETY: the device returned the request, so it is done with its table.
            if unsafe { self.dma.free_shared(t) }.is_err() {
                self.dma_free_failures += 1;
            }
        }
        self.last_used_idx = self.last_used_idx.wrapping_add(1);
        self.outstanding -= 1;
        if self.interrupts && self.config.event_idx {
            // Interrupt at the next completion.
            self.write_used_event(self.last_used_idx);
        }
        Ok(Some(Completion {
            token: Token(head),
            written_len: written,
        }))
    }

    fn check_used_id(&self, id: u32) -> Result<u16, RingError> {
        if id >= u32::from(self.config.size) {
            return Err(RingError::IdOutOfRange {
                id,
                size: self.config.size,
            });
        }
        let id = id as u16;
        match self.state[usize::from(id)] {
            DescState::Head => Ok(id),
            DescState::Body { head } => Err(RingError::NotAHead { id, head }),
            DescState::Completed => Err(RingError::DuplicateCompletion { id }),
            DescState::Free => Err(RingError::NotOutstanding { id }),
        }
    }

    /// Returns a completed chain to the tail of the free list. The tail, so that a completed
    /// head is reused as late as possible and a duplicate completion is recognised as one.
    fn release_chain(&mut self, head: u16, descriptors: u16) {
        let mut last = head;
        for i in 0..descriptors {
            self.state[usize::from(last)] = DescState::Free;
            if i + 1 < descriptors {
                last = self.next[usize::from(last)];
            }
        }
        self.state[usize::from(head)] = DescState::Completed;
        if self.free_tail == NIL {
            self.free_head = head;
        } else {
            self.next[usize::from(self.free_tail)] = head;
        }
        self.next[usize::from(last)] = NIL;
        self.free_tail = last;
        self.free_count += descriptors;
    }

    pub fn set_interrupts(&mut self, enabled: bool) {
        self.interrupts = enabled;
        if self.config.event_idx {
            // With event index the flags must stay 0; "off" is an event the device would need
            // 65535 completions to reach.
            let event = if enabled {
                self.last_used_idx
            } else {
                self.last_used_idx.wrapping_sub(1)
            };
            self.write_used_event(event);
        } else {
            let (r, base) = self.avail_area();
            r.write_u16(base, if enabled { 0 } else { AVAIL_F_NO_INTERRUPT });
        }
    }

    pub fn outstanding_count(&self) -> u16 {
        self.outstanding
    }

    pub fn outstanding(&self) -> Vec<super::Token> {
        (0..self.config.size)
            .filter(|&i| self.state[usize::from(i)] == DescState::Head)
            .map(Token)
            .collect()
    }

    pub fn free_descriptors(&self) -> u16 {
        self.free_count
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
        let areas = match self.areas {
            Areas::Modern { desc, avail, used } => alloc::vec![desc, avail, used],
            Areas::Legacy { block, .. } => alloc::vec![block],
        };
        // SAFETY: the device no longer uses the queue (caller contract).
        unsafe { free_queue_memory(self.dma, &mut self.in_flight, areas) }
    }
}

/// A split indirect table entry: the chain links entry `i` to `i + 1`.
fn write_indirect(table: &SharedRegion, i: usize, s: &Segment) {
    let count = table.len() / 16;
    let last = i + 1 == count;
    let off = 16 * i;
    table.write_u64(off, s.addr.as_u64());
    table.write_u32(off + 8, s.len);
    table.write_u16(
        off + 12,
        if s.device_writable { DESC_F_WRITE } else { 0 } | if last { 0 } else { DESC_F_NEXT },
    );
    table.write_u16(off + 14, if last { 0 } else { (i + 1) as u16 });
}

/// virtio's `vring_need_event`: whether index `event` lies in `[old, new)`, modulo 2^16.
pub(crate) fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}
