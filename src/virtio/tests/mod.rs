//! Host tests of both ring formats and of device initialization: the device side of the rings
//! is [`super::ringside`]'s, driven by hand (honestly in `rings`, lying in `hostile`), plus a
//! fake transport.

mod hostile;
mod init;
mod rings;

use alloc::vec;
use alloc::vec::Vec;
use core::cell::Cell;
use core::ptr::NonNull;

use super::features::DeviceType;
use super::queue::{QueueConfig, RingFormat, Segment, Virtqueue};
use super::ringside::{
    DeviceRequest, F_AVAIL, F_USED, F_WRITE, LowDma, PackedSide, RingSide, SplitSide, close_window,
    device_read, device_write, open_window, rd16, wr16, wr32,
};
use super::transport::{
    DeviceStatus, InterruptStatus, LegacyLayout, QueueAddresses, Transport, TransportError,
};
use crate::dma::{
    DeviceAddr, Direct, Direction, Dma, DmaConstraints, DmaError, DmaStats, Mapping, SharedRegion,
};

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
        open_window(ARENA_BASE, cpu, len);
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
        close_window(ARENA_BASE);
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
