//! Everything instruction-set or firmware specific. Each arch module provides the same API:
//!
//! - its entry code sets up a stack, clears BSS, relocates itself if it must, brings up the
//!   console and then calls [`crate::boot_main`] with a [`secure_guest::bootinfo::BootInfo`];
//! - `console_write(&[u8])`: best effort, never blocks forever, callable at any time after entry
//!   (before the console is known it drops the bytes);
//! - `now_ticks() -> u64`: the clock `BootInfo::tick_hz` describes;
//! - `power_off(Verdict) -> !`: ends the run so that QEMU exits;
//! - `trigger_fault()`: takes an unexpected interrupt on purpose (`sg.debug.fault`);
//! - `report_early_errors()`: reports problems found before `boot_main` (the `boot` record must
//!   come first, so they wait until it is written);
//! - `arch_devices(&mut DeviceTree)`: adds what the arch finds without a device tree (x86 PCI
//!   enumeration); a no-op where the device tree says everything.
//!
//! Unexpected interrupts end in [`crate::fatal_exception`].

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use x86_64::*;

#[cfg(target_arch = "powerpc64")]
mod ppc64;
#[cfg(target_arch = "powerpc64")]
pub use ppc64::*;
