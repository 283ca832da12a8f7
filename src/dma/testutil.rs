//! Host-test helpers the DMA backends' tests share.

use alloc::boxed::Box;
use alloc::vec;
use core::ptr::NonNull;

use super::bounce::Bounce;
use super::{Direction, Dma, DmaConstraints};
use crate::platform::Emulated;

/// A 1 MiB shared pool on the emulated platform (64 KiB granularity) over leaked, zeroed heap
/// memory, for the test's whole life: (the pool, its physical address).
pub(crate) fn leaked_pool() -> (&'static Bounce<'static>, u64) {
    let layout = std::alloc::Layout::from_size_align(1 << 20, 1 << 16).unwrap();
    // SAFETY: non-zero size; leaked (the bounce path keeps it for the test's life).
    let ram = unsafe { std::alloc::alloc_zeroed(layout) };
    let phys = ram as u64;
    let platform: &'static Emulated = Box::leak(Box::new(Emulated::new(1 << 16)));
    // SAFETY: the memory is ours for the test, identity "mapped".
    let pool = unsafe { Bounce::new(platform, phys, 1 << 20, Default::default()) }.unwrap();
    (Box::leak(Box::new(pool)), phys)
}

/// Maps a `len`-byte heap buffer through `dma` in `direction`, checks the device address is the
/// buffer's own (an identity-mapped domain), and unmaps it. No device ever sees it.
pub(crate) fn assert_maps_at_its_address(dma: &dyn Dma, len: usize, direction: Direction) {
    let mut buf = vec![1u8; len];
    // SAFETY: unmapped below; no device touches it.
    let m = unsafe {
        dma.map(
            NonNull::from(&mut buf[..]),
            direction,
            &DmaConstraints::NONE,
        )
    }
    .unwrap();
    assert_eq!(m.device_addr().as_u64(), buf.as_ptr() as u64, "IOVA = phys");
    // SAFETY: no device used it.
    unsafe { dma.unmap(m) }.unwrap();
}
