//! What the arch-specific entry code hands to the common boot flow.

use crate::memmap::MemoryMap;

/// Which firmware (or loader) started the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// QEMU's Virtual Open Firmware on pseries (`-M pseries,x-vof=on`).
    Vof,
    /// SLOF, the default pseries firmware.
    Slof,
    /// x86: PVH entry (SeaBIOS + pvh.bin option ROM on pc/q35, qboot on microvm, or direct).
    Pvh,
    /// Something we could not identify.
    Unknown,
}

impl Firmware {
    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Vof => "vof",
            Firmware::Slof => "slof",
            Firmware::Pvh => "pvh",
            Firmware::Unknown => "unknown",
        }
    }
}

/// Everything the arch layer learned before the common code runs. Borrowed data (`cmdline`,
/// `fdt`) points into memory that stays reserved in `memory` for the whole run.
pub struct BootInfo<'a> {
    /// "ppc64le" or "x86_64".
    pub arch: &'static str,
    /// QEMU machine model as the guest sees it: "pseries", "microvm", "q35", "pc".
    pub machine: &'static str,
    pub firmware: Firmware,
    /// Physical address the image runs at, and where it ends (including BSS and stack).
    pub image_start: u64,
    pub image_end: u64,
    /// Clock: ticks at entry (first instruction) and ticks per second when known.
    pub entry_ticks: u64,
    pub tick_hz: Option<u64>,
    /// Where the tick frequency comes from ("timebase-frequency", "cpuid-15h", "pit", ...).
    pub tick_source: &'static str,
    /// The kernel command line (`/chosen/bootargs` or the PVH command line).
    pub cmdline: &'a [u8],
    /// The flattened device tree, when the machine has one.
    pub fdt: Option<&'a [u8]>,
    /// RAM and the ranges inside it that are not ours to use.
    pub memory: MemoryMap,
    /// Number of CPUs, when the arch layer can tell without the device tree.
    pub cpus: Option<u32>,
    /// Console the report goes to, e.g. "/vdevice/vty@71000000" or "com1".
    pub console: &'a str,
}
