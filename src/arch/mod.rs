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
//! - `virtio_devices(&DeviceTree) -> (Vec<FoundDevice>, Vec<(String, String)>)`: every virtio
//!   device with its transport ready for `virtio::init::init`
//!   ([`secure_guest::virtio::FoundDevice`]: `location` is the device-tree path of a
//!   virtio-mmio node or the PCI address `bb:dd.f`, on pseries prefixed by the PHB node name
//!   for any PHB but the first), and a (location, reason) line for each device found that
//!   cannot be set up. Never panics on what firmware or devices say. virtio-mmio nodes come
//!   first, then PCI functions in tree / enumeration order. `virtio_devices_with(tree,
//!   &ProbeOptions)` is the same with options (`pci_force_legacy`: drive transitional
//!   virtio-pci devices through their legacy interface).
//!   - x86_64: microvm's virtio-mmio nodes; q35/pc PCI through ports 0xcf8/0xcfc with the BARs
//!     SeaBIOS assigned (a BAR above the 64 GiB boot map is mapped on demand, uncached), legacy
//!     registers through port I/O.
//!   - ppc64: PCI config through RTAS `ibm,read/write-pci-config`, BARs from the PHB windows
//!     (`ranges`); BARs firmware left unassigned (VOF) are assigned from those windows first.
//!     Device registers are reached in real mode at their guest physical address, which works
//!     under QEMU's pseries (TCG) but not on hardware or KVM-HV (see `ppc64/pci.rs`).
//!
//! - `secure_facts(&DeviceTree) -> platform::decide::Facts`: what the secure decision needs,
//!   detected without side effects (`secure.rs` of each arch holds the instructions):
//!   - ppc64: the device tree's ultravisor node, and `MSR[S]` (`mfmsr`);
//!   - x86_64: SEV_STATUS (MSR 0xC001_0131), read only when CPUID 0x8000_001F says SEV exists,
//!     and the TDX signature of CPUID 0x21 (only when the maximum basic leaf reaches it).
//!
//!   `sev_status() -> u64` is the raw SEV_STATUS it read (0 when not read; always 0 on ppc64),
//!   for the `secure` record.
//! - `secure_platform(Choice, &DeviceTree) -> Result<&'static dyn Platform, String>`: the real
//!   backend the decision chose (ppc64: PEF; x86_64: SEV, TDX), leaked for the rest of the run.
//!   Never reached on the machines here (none has PEF, SEV or TDX; the boot flow uses static
//!   `none` and `emulated` platforms), but compiled and kept: it fails cleanly where the backend
//!   cannot run (PEF without an ESM blob, a backend that does not probe).
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
