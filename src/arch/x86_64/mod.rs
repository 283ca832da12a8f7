//! x86_64: PVH entry on QEMU `microvm`, `q35` and `pc`.

mod entry;
mod exceptions;
mod fwcfg;
mod io;
mod iommu;
mod paging;
mod pci;
mod port;
mod secure;
mod serial;
mod virtio;

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};
use secure_guest::acpi::{self, AddressSpace, PowerOff};
use secure_guest::bootinfo::{BootInfo, Firmware};
use secure_guest::clock::Overlapped;
use secure_guest::devtree::DeviceTree;
use secure_guest::memmap::{MemoryMap, RegionKind};
use secure_guest::platform::decide::{Choice, Facts};
use secure_guest::platform::{Platform, sev, tdx};
use secure_guest::report::Verdict;

pub use exceptions::trigger_fault;
pub use iommu::{iommu_domains, iommu_finish};
pub use virtio::virtio_devices;
/// For a device flow that forces legacy virtio-pci (`ProbeOptions`); unused until one does.
#[allow(unused_imports)]
pub use virtio::virtio_devices_with;

const PVH_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;
/// The boot page tables identity-map this much (entry.rs); nothing above is touched.
const MAPPED_LIMIT: u64 = 64 << 30;
const DEBUG_EXIT_PORT: u16 = 0xf4;

unsafe extern "C" {
    static __image_start: u8;
    static __image_end: u8;
}

/// Memory written once during single-threaded boot and read-only afterwards.
struct BootCell<T>(UnsafeCell<T>);
// SAFETY: only the boot CPU runs; writes happen before any shared reference is handed out.
unsafe impl<T> Sync for BootCell<T> {}

/// microvm's device tree, copied out of fw_cfg.
static FDT_BUF: BootCell<[u8; 64 * 1024]> = BootCell(UnsafeCell::new([0; 64 * 1024]));
static POWER_OFF: spin::Once<Option<PowerOff>> = spin::Once::new();
/// The RSDP's address (from the PVH start info or the BIOS area); 0: none.
static RSDP: AtomicU64 = AtomicU64::new(0);
/// The e820 ranges the firmware described (every kind): where ACPI tables may be read.
static E820: BootCell<([(u64, u64); 64], usize)> = BootCell(UnsafeCell::new(([(0, 0); 64], 0)));
/// TSC ticks per second, when calibrated.
static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static MACHINE: spin::Once<&'static str> = spin::Once::new();

pub fn console_write(bytes: &[u8]) {
    serial::write(bytes);
}

pub fn now_ticks() -> u64 {
    io::rdtsc()
}

/// Ends the run: the verdict through `isa-debug-exit` when present (QEMU exits with
/// `2*code+1`), else ACPI soft-off, else a triple fault (QEMU with `-no-reboot` exits).
pub fn power_off(verdict: Verdict) -> ! {
    io::outl(DEBUG_EXIT_PORT, verdict.exit_code() as u32);
    if let Some(Some(p)) = POWER_OFF.get() {
        match *p {
            PowerOff::Pm1a { port, .. } => io::outw(port, p.value()),
            PowerOff::SleepControl {
                space: AddressSpace::Io,
                address,
                ..
            } => io::outb(address as u16, p.value() as u8),
            PowerOff::SleepControl {
                space: AddressSpace::Memory,
                address,
                ..
            } => {
                if address < MAPPED_LIMIT {
                    // SAFETY: the FADT names this MMIO register and it is identity-mapped.
                    unsafe { core::ptr::write_volatile(address as *mut u8, p.value() as u8) }
                }
            }
        }
    }
    // QEMU carries out ACPI soft-off asynchronously: give it ~100 ms (3e8 TSC ticks is 100 ms
    // at 3 GHz, and the TSC runs at least that fast on anything that runs this) before
    // concluding that nothing above worked, so that the host sees a clean guest-shutdown.
    let start = io::rdtsc();
    while io::rdtsc().wrapping_sub(start) < 300_000_000 {
        core::hint::spin_loop();
    }
    // Still running: nothing above worked. Triple fault: an empty IDT and an interrupt.
    let empty: [u16; 5] = [0; 5];
    // SAFETY: deliberately ends execution; nothing runs after this.
    unsafe { core::arch::asm!("lidt [{}]", "int3", in(reg) &empty, options(noreturn)) }
}

/// x86 has no early errors to report late: what goes wrong before `boot_main` is fatal there
/// (`crate::early_fatal`).
pub fn report_early_errors() {}

/// Options that do nothing on this arch, for a warning each: none on x86.
pub fn option_notes(
    _opts: &secure_guest::cmdline::Options,
) -> Option<secure_guest::cmdline::Diagnostic> {
    None
}

pub fn arch_devices(tree: &mut DeviceTree) {
    let machine = MACHINE.get().copied().unwrap_or("unknown");
    if machine == "q35" || machine == "pc" {
        pci::enumerate(
            tree,
            if machine == "q35" {
                "q35 (ich9)"
            } else {
                "i440fx"
            },
        );
    }
    if tree.cpus == 0
        && let Some(f) = fwcfg::FwCfg::probe()
    {
        tree.cpus = f.cpus();
    }
}

// ---------------------------------------------------------------------------------------------
// Secure guest (SEV, TDX).

/// SEV_STATUS as read by `secure_facts` (0: not read, because CPUID does not offer SEV).
static SEV_STATUS: AtomicU64 = AtomicU64::new(0);

/// What the secure decision needs to know on x86: SEV_STATUS, read only when CPUID
/// 0x8000_001F says SEV exists (the MSR faults elsewhere), and the TDX signature of CPUID 0x21
/// (looked at only when the maximum basic leaf reaches it).
pub fn secure_facts(_tree: &DeviceTree) -> Facts {
    let mut facts = Facts::default();
    if let Some((_, status)) = sev::probe(&secure::Hw) {
        SEV_STATUS.store(status.0, Ordering::Relaxed);
        facts = facts.with_sev_status(status.0);
    }
    facts.tdx = tdx::detect(&secure::Hw);
    facts
}

/// SEV_STATUS as `secure_facts` read it (0 when it was not read).
pub fn sev_status() -> u64 {
    SEV_STATUS.load(Ordering::Relaxed)
}

/// The real backend of `choice` (SEV or TDX on this arch), for the rest of the run.
///
/// NEVER REACHED ON THESE MACHINES: the decision only chooses SEV or TDX when CPUID and
/// SEV_STATUS say the guest runs as one, which no machine here does (and PVH boots neither: see
/// `secure.rs` for what running one for real would still need). The path is kept and compiled:
/// the backend probes again and fails cleanly (`NotSecure`, a bad C-bit, a TDINFO error), and a
/// failure ends the run before any device is touched.
pub fn secure_platform(
    choice: Choice,
    _tree: &DeviceTree,
) -> Result<&'static dyn Platform, String> {
    match choice {
        Choice::Sev(_) => match sev::Sev::new(secure::Hw) {
            Ok(p) => Ok(Box::leak(Box::new(p))),
            Err(e) => Err(format!("SEV: {e}")),
        },
        Choice::Tdx => match tdx::Tdx::new(secure::Hw) {
            Ok(p) => Ok(Box::leak(Box::new(p))),
            Err(e) => Err(format!("TDX: {e}")),
        },
        other => Err(format!("no {} backend on x86_64", other.name())),
    }
}

fn read_u32(p: u64) -> u32 {
    // SAFETY: callers pass addresses inside the PVH start info or memory map, which QEMU placed
    // in low RAM; everything below MAPPED_LIMIT is identity-mapped.
    unsafe { core::ptr::read_unaligned(p as *const u32) }
}

fn read_u64(p: u64) -> u64 {
    // SAFETY: as in `read_u32`.
    unsafe { core::ptr::read_unaligned(p as *const u64) }
}

/// TSC ticks per second from CPUID, when it says: leaf 0x15 (crystal ratio) is exact where
/// offered, and so is the hypervisor timing leaf 0x40000010 (KVM with invtsc, VMware).
fn tsc_hz_from_cpuid() -> Option<(u64, &'static str)> {
    let max = io::cpuid(0, 0)[0];
    if max >= 0x15 {
        let [den, num, crystal, _] = io::cpuid(0x15, 0);
        if den != 0 && num != 0 && crystal != 0 {
            return Some((crystal as u64 * num as u64 / den as u64, "cpuid-15h"));
        }
    }
    let hv_max = io::cpuid(0x4000_0000, 0)[0];
    if (0x4000_0010..0x4001_0000).contains(&hv_max) {
        let khz = io::cpuid(0x4000_0010, 0)[0];
        if khz != 0 {
            return Some((khz as u64 * 1000, "hypervisor-cpuid"));
        }
    }
    None
}

/// PIT channel 0, latched and read back (its gate is always on, unlike channel 2 whose gate is
/// port 0x61, which microvm does not have).
fn read_pit() -> u16 {
    io::outb(0x43, 0x00); // latch channel 0
    let lo = io::inb(0x40) as u16;
    let hi = io::inb(0x40) as u16;
    hi << 8 | lo
}

/// How the TSC rate will be known: from CPUID at once, or by counting the TSC against the PIT
/// over a window that opens here and closes in [`TscRate::finish`], so that the boot work in
/// between is the wait (`secure_guest::clock::Overlapped`, with its checks and its fallback to
/// three 1 ms windows).
enum TscRate {
    Known(u64, &'static str),
    Counting(Overlapped),
}

impl TscRate {
    fn start() -> Self {
        if let Some((hz, source)) = tsc_hz_from_cpuid() {
            return TscRate::Known(hz, source);
        }
        // Mode 2, count 0 (65536: the count wraps as a u16 does). Interrupts are off, so IRQ0
        // goes nowhere.
        io::outb(0x43, 0x34); // channel 0, lobyte/hibyte, mode 2
        io::outb(0x40, 0x00);
        io::outb(0x40, 0x00);
        TscRate::Counting(Overlapped::start(read_pit, io::rdtsc))
    }

    fn finish(self) -> (Option<u64>, &'static str) {
        match self {
            TscRate::Known(hz, source) => (Some(hz), source),
            TscRate::Counting(w) => match w.finish(read_pit, io::rdtsc) {
                Some(hz) => (Some(hz), "pit"),
                None => (None, "none"),
            },
        }
    }
}

/// Physical reads for the ACPI parser: only inside the ranges the firmware described (the e820
/// map and the BIOS area), never at an address a hostile table invents.
fn acpi_read(map: &[(u64, u64)], phys: u64, buf: &mut [u8]) -> bool {
    let Some(end) = phys.checked_add(buf.len() as u64) else {
        return false;
    };
    let inside = map
        .iter()
        .any(|&(b, s)| phys >= b && end <= b.saturating_add(s))
        || (phys >= 0xe0000 && end <= 0x10_0000);
    if !inside || end > MAPPED_LIMIT {
        return false;
    }
    // SAFETY: the range lies inside firmware-described memory, identity-mapped.
    unsafe { core::ptr::copy_nonoverlapping(phys as *const u8, buf.as_mut_ptr(), buf.len()) };
    true
}

fn find_rsdp(rsdp_hint: u64, e820: &[(u64, u64)]) -> Option<u64> {
    if rsdp_hint != 0 {
        return Some(rsdp_hint);
    }
    let mut area = [0u8; 0x2_0000];
    if !acpi_read(e820, 0xe0000, &mut area) {
        return None;
    }
    Some(0xe0000 + acpi::find_rsdp(&area)? as u64)
}

fn find_power_off(rsdp: Option<u64>, e820: &[(u64, u64)]) -> Option<PowerOff> {
    let mut scratch = [0u8; 16 * 1024];
    acpi::power_off_method(rsdp?, |a, b| acpi_read(e820, a, b), &mut scratch).ok()
}

/// The RSDP, for later ACPI lookups (the IOMMU tables).
pub fn rsdp() -> Option<u64> {
    Some(RSDP.load(Ordering::Relaxed)).filter(|&a| a != 0)
}

/// [`acpi_read`] over the e820 ranges the boot recorded.
pub fn acpi_read_boot(phys: u64, buf: &mut [u8]) -> bool {
    // SAFETY: written once by the entry code before `boot_main`, only read afterwards.
    let (map, n) = unsafe { &*E820.0.get() };
    acpi_read(&map[..*n], phys, buf)
}

/// The TSC rate the boot calibrated, if it did.
pub fn tick_hz() -> Option<u64> {
    Some(TSC_HZ.load(Ordering::Relaxed)).filter(|&hz| hz != 0)
}

/// microvm's device tree from fw_cfg `etc/fdt`, copied into `FDT_BUF`.
fn read_fdt(f: &fwcfg::FwCfg) -> Option<&'static [u8]> {
    let (sel, file_size) = f.find_file("etc/fdt")?;
    // SAFETY: called once during single-threaded boot; nothing else references FDT_BUF.
    let buf = unsafe { &mut *FDT_BUF.0.get() };
    // QEMU's fw_cfg file is the whole 1 MiB buffer the tree was built in, unpacked (totalsize
    // says 1 MiB too). Read the header, then only up to the end of the structure and strings
    // blocks, and make our copy's totalsize say so.
    let mut header = [0u8; 40];
    f.read(sel, &mut header);
    let be =
        |o: usize| u32::from_be_bytes([header[o], header[o + 1], header[o + 2], header[o + 3]]);
    let used = (be(8) as u64 + be(36) as u64)
        .max(be(12) as u64 + be(32) as u64)
        .max(40);
    if used > file_size as u64 || used as usize > buf.len() {
        let mut m = crate::console::FixedBuf::<128>::new();
        let _ = core::fmt::write(
            &mut m,
            format_args!(
                "etc/fdt: blocks end at {used}, the file has {file_size} bytes, the buffer 64 KiB"
            ),
        );
        crate::early_fatal("devtree", m.as_str());
    }
    let blob = &mut buf[..used as usize];
    f.read(sel, blob);
    blob[4..8].copy_from_slice(&(used as u32).to_be_bytes());
    Some(blob)
}

/// Called by entry.rs in long mode with the PVH start info and the TSC at entry.
#[unsafe(no_mangle)]
extern "C" fn x86_64_rust_entry(start_info: u64, entry_tsc: u64) -> ! {
    let console_ok = serial::init();
    exceptions::init();
    let tsc_rate = TscRate::start();

    // SAFETY: linker-defined symbols; only their addresses are used.
    let (image_start, image_end) = unsafe {
        (
            &__image_start as *const u8 as u64,
            &__image_end as *const u8 as u64,
        )
    };

    if start_info == 0 || read_u32(start_info) != PVH_MAGIC {
        crate::early_fatal(
            "pvh",
            "no PVH start info (bad magic): not booted through PVH",
        );
    }
    let version = read_u32(start_info + 4);
    let nr_modules = read_u32(start_info + 12);
    let modlist = read_u64(start_info + 16);
    let cmdline_paddr = read_u64(start_info + 24);
    let rsdp_paddr = read_u64(start_info + 32);
    let (memmap_paddr, memmap_entries) = if version >= 1 {
        (read_u64(start_info + 40), read_u32(start_info + 48))
    } else {
        (0, 0)
    };

    // Memory map: e820 RAM, minus what is not ours.
    let mut memory = MemoryMap::new();
    let mut e820 = [(0u64, 0u64); 64];
    let mut e820_len = 0;
    for i in 0..memmap_entries.min(128) as u64 {
        let e = memmap_paddr + i * 24;
        let (base, size, kind) = (read_u64(e), read_u64(e + 8), read_u32(e + 16));
        if e820_len < e820.len() {
            e820[e820_len] = (base, size);
            e820_len += 1;
        }
        if kind == E820_RAM {
            // RAM above what the boot page tables map is not usable (and not counted).
            let size = size.min(MAPPED_LIMIT.saturating_sub(base));
            memory.add(base, size, RegionKind::Ram, "ram");
        }
    }
    if memmap_entries == 0 {
        crate::early_fatal("pvh", "the PVH start info has no memory map");
    }
    memory.add(0, 0x10_0000, RegionKind::Reserved, "bios");
    memory.add(
        image_start,
        image_end - image_start,
        RegionKind::Reserved,
        "image",
    );
    memory.add(
        start_info & !0xfff,
        0x1000,
        RegionKind::Reserved,
        "pvh-start-info",
    );
    for i in 0..nr_modules.min(16) as u64 {
        let m = modlist + i * 32;
        memory.add(read_u64(m), read_u64(m + 8), RegionKind::Reserved, "module");
    }

    // Command line: a NUL-terminated string QEMU placed in low memory; bounded.
    let cmdline: &'static [u8] = if cmdline_paddr != 0 && cmdline_paddr < MAPPED_LIMIT {
        // SAFETY: QEMU wrote the string there; we read at most 4 KiB of identity-mapped memory.
        let raw = unsafe { core::slice::from_raw_parts(cmdline_paddr as *const u8, 4096) };
        let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        memory.add(
            cmdline_paddr,
            len as u64 + 1,
            RegionKind::Reserved,
            "cmdline",
        );
        &raw[..len]
    } else {
        &[]
    };

    // The machine: microvm hands its device tree through fw_cfg; q35 and pc have no tree, and
    // their host bridge says which chipset it is.
    let fw = fwcfg::FwCfg::probe();
    let fdt = fw.as_ref().and_then(read_fdt);
    let machine = if fdt.is_some() {
        "microvm"
    } else {
        match pci::host_bridge() {
            Some((0x8086, 0x29c0)) => "q35",
            Some((0x8086, 0x1237)) => "pc",
            _ => "unknown",
        }
    };
    MACHINE.call_once(|| machine);
    let rsdp = find_rsdp(rsdp_paddr, &e820[..e820_len]);
    RSDP.store(rsdp.unwrap_or(0), Ordering::Relaxed);
    // SAFETY: single-threaded boot, before anything reads it (see `acpi_read_boot`).
    unsafe { *E820.0.get() = (e820, e820_len) };
    POWER_OFF.call_once(|| find_power_off(rsdp, &e820[..e820_len]));
    let (tick_hz, tick_source) = tsc_rate.finish();
    TSC_HZ.store(tick_hz.unwrap_or(0), Ordering::Relaxed);

    crate::boot_main(BootInfo {
        arch: "x86_64",
        machine,
        firmware: Firmware::Pvh,
        image_start,
        image_end,
        entry_ticks: entry_tsc,
        tick_hz,
        tick_source,
        cmdline,
        fdt,
        memory,
        cpus: fw.as_ref().map(|f| f.cpus()),
        console: if console_ok { "com1" } else { "none" },
    })
}
