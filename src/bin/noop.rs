//! The no-op payload: enters like secure-guest, then powers the machine off at once.
//! Booting it measures what QEMU and the firmware cost by themselves, the floor that
//! secure-guest's boot time is compared against (`make bench`, issue: boot ≤ 1.2× this).
#![no_std]
#![no_main]

#[cfg(target_arch = "x86_64")]
#[path = "../arch/x86_64/noop.rs"]
mod noop;

#[cfg(target_arch = "powerpc64")]
#[path = "../arch/ppc64/noop.rs"]
mod noop;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
