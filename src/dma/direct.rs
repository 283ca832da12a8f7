//! `Direct`: the device address is the physical address.
//!
//! This guest runs identity-mapped (physical == virtual), so the physical address of a buffer is
//! its pointer value. That is the path of an ordinary guest without an IOMMU, and of a secure
//! guest before it goes secure. A device can then reach all of guest memory, so nothing is
//! copied and nothing is protected: `Direct` only translates, checks constraints and counts.
//!
//! Shared regions come from the global heap.

use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use super::{
    DeviceAddr, Direction, Dma, DmaConstraints, DmaCounters, DmaError, DmaStats, Mapping,
    SharedRegion, check_sync_range,
};

/// The direct path. `const`-constructible so that it can be a `static`.
#[derive(Debug, Default)]
pub struct Direct {
    counters: DmaCounters,
}

impl Direct {
    pub const fn new() -> Self {
        Direct {
            counters: DmaCounters::new(),
        }
    }

    /// The device address of a CPU pointer on this identity-mapped guest. The provenance is
    /// exposed because the device (or a fake one in tests) turns the address back into memory.
    fn device_addr_of(ptr: *const u8) -> DeviceAddr {
        DeviceAddr::new(ptr.expose_provenance() as u64)
    }

    fn try_alloc_shared(
        size: usize,
        align: usize,
        constraints: &DmaConstraints,
    ) -> Result<SharedRegion, DmaError> {
        constraints.validate()?;
        if size == 0 {
            return Err(DmaError::InvalidRequest("zero length"));
        }
        if !align.is_power_of_two() {
            return Err(DmaError::InvalidRequest("alignment is not a power of two"));
        }
        // The heap cannot be asked for an address range, so the constraint alignment is folded
        // into the layout and the rest is checked afterwards.
        let align = align.max(usize::try_from(constraints.align).unwrap_or(usize::MAX));
        let layout = Layout::from_size_align(size, align).map_err(|_| DmaError::TooLarge {
            requested: size,
            limit: isize::MAX as usize,
        })?;
        // SAFETY: the layout has a non-zero size (checked above).
        let ptr = unsafe { alloc::alloc::alloc_zeroed(layout) };
        let Some(cpu) = NonNull::new(ptr) else {
            return Err(DmaError::OutOfMemory { size });
        };
        let device_addr = Self::device_addr_of(cpu.as_ptr());
        if let Err(e) = constraints.check(device_addr, size) {
            // SAFETY: allocated just above with this layout, never handed out.
            unsafe { alloc::alloc::dealloc(cpu.as_ptr(), layout) };
            return Err(e);
        }
        // SAFETY: fresh heap memory of `size` bytes aligned to `align`, owned by the region until
        // `free_shared`; the device reaches it at its physical (= virtual) address.
        Ok(unsafe { SharedRegion::new(cpu, device_addr, size, align, 0) })
    }
}

impl Dma for Direct {
    fn name(&self) -> &'static str {
        "direct"
    }

    fn alloc_shared(
        &self,
        size: usize,
        align: usize,
        constraints: &DmaConstraints,
    ) -> Result<SharedRegion, DmaError> {
        let r = Self::try_alloc_shared(size, align, constraints);
        self.counters.count_alloc_shared(size, &r);
        r
    }

    unsafe fn free_shared(&self, region: SharedRegion) -> Result<(), DmaError> {
        let layout = Layout::from_size_align(region.len(), region.align())
            .map_err(|_| DmaError::UnknownHandle)?;
        // SAFETY: the region came from `alloc_shared` with exactly this layout (caller contract)
        // and the device no longer uses it.
        unsafe { alloc::alloc::dealloc(region.cpu_ptr().as_ptr(), layout) };
        self.counters.count_free_shared(region.len());
        Ok(())
    }

    unsafe fn map(
        &self,
        buffer: NonNull<[u8]>,
        direction: Direction,
        constraints: &DmaConstraints,
    ) -> Result<Mapping, DmaError> {
        let cpu = buffer.cast::<u8>();
        let len = buffer.len();
        let device_addr = Self::device_addr_of(cpu.as_ptr());
        if let Err(e) = constraints.check(device_addr, len) {
            self.counters.map_failures.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        self.counters.count_map(len);
        // SAFETY: the buffer and its contract are the caller's; the device reaches it at its
        // physical address.
        Ok(unsafe { Mapping::new(device_addr, cpu, len, direction, 0) })
    }

    unsafe fn unmap(&self, _mapping: Mapping) -> Result<(), DmaError> {
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
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn stats(&self) -> DmaStats {
        self.counters.snapshot()
    }
}
