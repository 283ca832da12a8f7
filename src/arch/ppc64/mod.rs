//! ppc64le on QEMU `pseries`, started by SLOF or by VOF (`-M pseries,x-vof=on`).
//!
//! Boot, in order:
//! 1. boot/ppc64/entry.S: the firmware enters the first byte of the image big-endian (VOF
//!    also in 32-bit mode) with r5 = the Open Firmware client interface. The endian trampoline
//!    switches to little-endian 64-bit mode with FP/VMX/VSX on and EE off, the image relocates
//!    itself (.relr.dyn, and any R_PPC64_RELATIVE left in .rela.dyn), clears BSS, takes its stack and calls [`sg_ppc64_start`].
//! 2. Through the client interface (of.rs): the console (/chosen stdout-path, an hvterm),
//!    the command line, the RTAS power-off token, which firmware this is, and the whole tree
//!    flattened into an FDT in BSS (flatten.rs), picking up memory, CPUs and the timebase.
//! 3. Done with the firmware: H_SET_MODE for little-endian interrupts, exception vectors at
//!    0x100.. (vectors.rs), then `crate::boot_main`.
//!
//! Afterwards the console is H_PUT_TERM_CHAR and power-off is RTAS through H_RTAS
//! (hcall.rs). Until the console is known, `console_write` drops bytes. Problems found before
//! `boot_main` are kept and reported as `error` records right after the `boot` record, which
//! the report format requires to come first.

mod flatten;
mod hcall;
mod iommu;
mod of;
mod pci;
mod secure;
mod vectors;
mod virtio;

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use secure_guest::bootinfo::{BootInfo, Firmware};
use secure_guest::devtree::DeviceTree;
use secure_guest::devtree::writer::FdtWriter;
use secure_guest::memmap::{MemoryMap, RegionKind};
use secure_guest::platform::Platform;
use secure_guest::platform::decide::{Choice, Facts};
use secure_guest::platform::pef::Pef;
use secure_guest::report::Verdict;

use crate::console::FixedBuf;
use flatten::{Found, Walker};
use of::Of;

pub use iommu::iommu_domains;
pub use virtio::virtio_devices;
/// For a device flow that forces legacy virtio-pci (`ProbeOptions`); unused until one does.
#[allow(unused_imports)]
pub use virtio::virtio_devices_with;

/// The TCE domains need nothing at the end of the run: the hypervisor owns the tables.
pub fn iommu_finish() {}

/// Options that do nothing on pseries, for a warning each: `sg.iommu.map` is the x86 IOMMUs'
/// mode; a PHB's TCE mode is `sg.tce`.
pub fn option_notes(
    opts: &secure_guest::cmdline::Options,
) -> Option<secure_guest::cmdline::Diagnostic> {
    opts.iommu_map
        .map(|m| secure_guest::cmdline::Diagnostic::NoEffect {
            option: "sg.iommu.map",
            value: m.as_str(),
            why: "no effect on pseries: sg.tce selects the TCE mode",
        })
}

global_asm!(
    concat!(
        include_str!("../../../boot/ppc64/be.S"),
        include_str!("../../../boot/ppc64/trampoline.S"),
        include_str!("../../../boot/ppc64/entry.S"),
        include_str!("../../../boot/ppc64/ofcall.S"),
        include_str!("../../../boot/ppc64/vectors.S"),
        include_str!("../../../boot/ppc64/mem.S"),
    ),
    options(raw)
);

unsafe extern "C" {
    /// Linker script: the end of the image including BSS and stacks.
    static __sg_image_end: u8;
}

/// A static that only the boot CPU touches, with interrupts off: the secondary CPUs stay
/// stopped (nothing starts them) and nothing is shared, so no lock is needed.
struct BootCell<T>(UnsafeCell<T>);

// SAFETY: one CPU runs and no interrupt handler returns into interrupted code, so accesses
// never overlap; each user says why its access is exclusive.
unsafe impl<T> Sync for BootCell<T> {}

impl<T> BootCell<T> {
    const fn new(v: T) -> Self {
        BootCell(UnsafeCell::new(v))
    }
    fn get(&self) -> *mut T {
        self.0.get()
    }
}

#[repr(C, align(8))]
struct Buf<const N: usize>([u8; N]);

/// The flattened tree, its strings scratch and one property value: BSS, below 4 GiB, reserved
/// as part of the image.
const FDT_SIZE: usize = 512 << 10;
const STRINGS_SIZE: usize = 64 << 10;
const SCRATCH_SIZE: usize = 64 << 10;
static FDT_BUF: BootCell<Buf<FDT_SIZE>> = BootCell::new(Buf([0; FDT_SIZE]));
static STRINGS_BUF: BootCell<Buf<STRINGS_SIZE>> = BootCell::new(Buf([0; STRINGS_SIZE]));
static SCRATCH_BUF: BootCell<Buf<SCRATCH_SIZE>> = BootCell::new(Buf([0; SCRATCH_SIZE]));
static CMDLINE_BUF: BootCell<Buf<4096>> = BootCell::new(Buf([0; 4096]));
static CONSOLE_PATH: BootCell<Buf<256>> = BootCell::new(Buf([0; 256]));

/// Timebase frequency QEMU gives pseries under TCG, used only when the tree has none.
const DEFAULT_TIMEBASE_HZ: u64 = 512_000_000;
/// Low memory kept from the heap: exception vectors and the firmware's scratch below them.
const LOW_RESERVED: u64 = 0x4000;
/// QEMU budgets the top 40 MiB of the real-mode area for SLOF's code, data, ROM copy and the
/// device tree it is given (hw/ppc/spapr.c FW_OVERHEAD); reserved only if SLOF's memory node
/// has no `available` property to say exactly what it uses.
const SLOF_OVERHEAD: u64 = 0x280_0000;
const SLOF_CEILING: u64 = 0x8000_0000;

// ---------------------------------------------------------------------------------------------
// Console: H_PUT_TERM_CHAR on the vty named by /chosen stdout-path.

static CONSOLE_UP: AtomicBool = AtomicBool::new(false);
static TERMNO: AtomicU32 = AtomicU32::new(0);

/// Bytes written but not yet sent: one H_PUT_TERM_CHAR carries up to 16, and a record arrives in
/// many small pieces (a key, a quote, a number). Sending each piece on its own cost one hcall, a
/// QEMU exit and a host write per piece, several milliseconds of boot time per run under TCG.
struct PendingTerm {
    bytes: [u8; 16],
    len: usize,
}
static PENDING_TERM: BootCell<PendingTerm> = BootCell::new(PendingTerm {
    bytes: [0; 16],
    len: 0,
});

/// Writes to the hypervisor terminal; drops the bytes while none is known. Bytes are sent in
/// full 16-byte hcalls, and at every newline, so a report line is on the host when its `\n`
/// has been written (and [`console_flush`] sends the rest before power-off).
pub fn console_write(bytes: &[u8]) {
    if !CONSOLE_UP.load(Ordering::Relaxed) {
        return;
    }
    // SAFETY: only the boot CPU writes the console, and an interrupt handler that writes while
    // a write was interrupted never returns into it (BootCell); at worst it sends stale bytes.
    let pending = unsafe { &mut *PENDING_TERM.get() };
    for &b in bytes {
        pending.bytes[pending.len] = b;
        pending.len += 1;
        if pending.len == pending.bytes.len() || b == b'\n' {
            send_pending(pending);
        }
    }
}

/// Sends what [`console_write`] still holds.
pub fn console_flush() {
    if CONSOLE_UP.load(Ordering::Relaxed) {
        // SAFETY: as in console_write.
        send_pending(unsafe { &mut *PENDING_TERM.get() });
    }
}

fn send_pending(pending: &mut PendingTerm) {
    let len = core::mem::replace(&mut pending.len, 0);
    if len == 0 {
        return;
    }
    let termno = TERMNO.load(Ordering::Relaxed);
    for _ in 0..10_000 {
        match hcall::put_term_chars(termno, &pending.bytes[..len]) {
            // A terminal that refuses bytes (anything but busy): give up on them, never hang.
            hcall::H_BUSY => continue,
            _ => return,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors found before boot_main, reported after the `boot` record.

const MAX_DEFERRED: usize = 8;
struct Deferred {
    n: usize,
    lost: usize,
    /// (what, message). `what` is an Option only so that the empty table is all zeroes (BSS).
    items: [(Option<&'static str>, FixedBuf<160>); MAX_DEFERRED],
}
static DEFERRED: BootCell<Deferred> = BootCell::new(Deferred {
    n: 0,
    lost: 0,
    items: [const { (None, FixedBuf::new()) }; MAX_DEFERRED],
});

fn defer_error(what: &'static str, message: fmt::Arguments<'_>) {
    // SAFETY: BootCell: only the boot CPU, and never while report_early_errors runs (boot_main
    // calls it after sg_ppc64_start has stopped deferring).
    let d = unsafe { &mut *DEFERRED.get() };
    if d.n == MAX_DEFERRED {
        d.lost += 1;
        return;
    }
    d.items[d.n].0 = Some(what);
    let _ = d.items[d.n].1.write_fmt(message);
    d.n += 1;
}

/// Reports the problems found before `boot_main` (which must come after the `boot` record).
pub fn report_early_errors() {
    // SAFETY: BootCell; called once by boot_main, after every defer_error call.
    let d = unsafe { &*DEFERRED.get() };
    for (what, msg) in &d.items[..d.n] {
        crate::report_error(what.unwrap_or("boot"), msg.as_str());
    }
    if d.lost > 0 {
        let mut m = FixedBuf::<64>::new();
        let _ = write!(m, "{} more early errors were not kept", d.lost);
        crate::report_error("boot", m.as_str());
    }
}

// ---------------------------------------------------------------------------------------------
// The rest of the arch API.

/// The timebase.
pub fn now_ticks() -> u64 {
    let tb: u64;
    // SAFETY: mftb reads the timebase register, nothing else.
    unsafe { asm!("mftb {0}", out(reg) tb, options(nomem, nostack, preserves_flags)) };
    tb
}

/// RTAS `power-off` token from /rtas; u32::MAX while unknown.
static RTAS_POWER_OFF: AtomicU32 = AtomicU32::new(u32::MAX);
static RTAS_ARGS: BootCell<[u32; 8]> = BootCell::new([0; 8]);

/// RTAS power-off through H_RTAS: QEMU then exits with status 0. The verdict travels in the
/// `end` record only.
pub fn power_off(_verdict: Verdict) -> ! {
    console_flush();
    let token = RTAS_POWER_OFF.load(Ordering::Relaxed);
    if token != u32::MAX {
        let args = RTAS_ARGS.get();
        // SAFETY: BootCell, and power_off never returns so nothing else uses the block. The
        // block (token, nargs 2, nret 1, two zero args, one return cell) lies in the image,
        // below 4 GiB.
        unsafe {
            args.write([
                token.to_be(),
                2u32.to_be(),
                1u32.to_be(),
                0,
                0,
                u32::MAX,
                0,
                0,
            ]);
            hcall::rtas(args.cast());
        }
    }
    // Without a token (no /rtas node) there is no way off: wait for the host's timeout.
    loop {
        core::hint::spin_loop();
    }
}

/// `sg.debug.fault`: a trap instruction raises a program check (vector 0x700).
pub fn trigger_fault() {
    // SAFETY: `trap` raises a program interrupt, which the vectors turn into an exception
    // record and the end of the run; it does not come back.
    unsafe { asm!("trap", options(nomem, nostack)) };
}

/// Everything on pseries is in the device tree.
pub fn arch_devices(_tree: &mut DeviceTree) {}

// ---------------------------------------------------------------------------------------------
// Secure guest (PEF).

/// What the secure decision needs to know on POWER: whether the device tree has an ultravisor
/// node, and `MSR[S]` (read with `mfmsr`, which needs no ultravisor: it reads 0 without PEF).
pub fn secure_facts(tree: &DeviceTree) -> Facts {
    Facts {
        ultravisor: tree.ultravisor,
        msr_s: secure::msr_secure(),
        ..Facts::default()
    }
}

/// SEV_STATUS does not exist here.
pub fn sev_status() -> u64 {
    0
}

/// The real backend of `choice` (PEF on this arch), for the rest of the run.
///
/// NEVER REACHED ON THESE MACHINES: the decision only chooses PEF when an ultravisor node exists
/// or `MSR[S]` is set, and QEMU's pseries has neither (the `secure` record's `facts` show it).
/// The path is kept, compiled and clear about its limits: entering secure mode (`UV_ESM`) needs
/// an ESM blob that this image does not carry, so only a guest that is already secure (`MSR[S]`)
/// gets a platform; anything else is an error and the run fails before any device is touched.
pub fn secure_platform(
    choice: Choice,
    tree: &DeviceTree,
) -> Result<&'static dyn Platform, alloc::string::String> {
    match choice {
        Choice::Pef { enter } => {
            let pef = Pef::new(secure::Ultravisor, tree.ultravisor);
            if enter || !pef.msr_secure() {
                return Err(alloc::string::String::from(
                    "PEF: entering secure mode (UV_ESM) needs an ESM blob, which this image does \
                     not carry; UV_ESM not issued",
                ));
            }
            Ok(alloc::boxed::Box::leak(alloc::boxed::Box::new(pef)))
        }
        other => Err(alloc::format!("no {} backend on ppc64", other.name())),
    }
}

// ---------------------------------------------------------------------------------------------
// Boot.

/// What the firmware phase learned.
struct Learned {
    firmware: Firmware,
    cmdline: &'static [u8],
    console: &'static str,
    fdt: Option<&'static [u8]>,
    found: Found,
}

/// Strips a trailing NUL and anything after the first NUL.
fn c_str(b: &[u8]) -> &[u8] {
    b.iter().position(|&c| c == 0).map_or(b, |z| &b[..z])
}

/// Whether a node is a PAPR virtual terminal (`compatible` lists "hvterm1" or
/// "hvterm-protocol").
fn is_hvterm(of: &Of, node: u32) -> bool {
    let mut compat = [0u8; 128];
    let Some(n) = of.getprop(node, b"compatible\0", &mut compat) else {
        return false;
    };
    compat[..n.min(compat.len())]
        .split(|&c| c == 0)
        .any(|s| s == b"hvterm1" || s == b"hvterm-protocol")
}

/// Finds the console: the node named by /chosen stdout-path (or linux,stdout-path, or the
/// path of the `stdout` instance), options after ':' dropped; its `reg` is the terminal
/// number. If that is not a virtual terminal (SLOF points stdout at the screen when QEMU has
/// a VGA), the first hvterm under /vdevice: the report must reach the host's console.
fn find_console(of: &Of, chosen: u32, path: &'static mut [u8; 256]) -> Option<(&'static str, u32)> {
    let mut len = 0;
    for prop in [&b"stdout-path\0"[..], b"linux,stdout-path\0"] {
        if let Some(n) = of.getprop(chosen, prop, &mut path[..255]) {
            len = c_str(&path[..n.min(255)]).len();
            if len > 0 {
                break;
            }
        }
    }
    if len == 0
        && let Some(n) = of
            .getprop_u32(chosen, b"stdout\0")
            .and_then(|ih| of.instance_to_path(ih, &mut path[..255]))
    {
        len = c_str(&path[..n.min(255)]).len();
    }
    if let Some(colon) = path[..len].iter().position(|&c| c == b':') {
        len = colon;
    }
    path[len] = 0;
    let named = if len > 0 {
        of.finddevice(&path[..=len]).filter(|&n| is_hvterm(of, n))
    } else {
        None
    };
    let node = match named {
        Some(n) => n,
        None => {
            let vdevice = of.finddevice(b"/vdevice\0")?;
            let mut child = of.child(vdevice);
            let mut found = None;
            for _ in 0..256 {
                let Some(c) = child else { break };
                if is_hvterm(of, c) {
                    found = Some(c);
                    break;
                }
                child = of.peer(c);
            }
            let node = found?;
            let n = of.package_to_path(node, &mut path[..255])?;
            len = c_str(&path[..n.min(255)]).len();
            node
        }
    };
    let termno = of.getprop_u32(node, b"reg\0")?;
    let s = core::str::from_utf8(&path[..len]).ok()?;
    Some((s, termno))
}

/// Tells SLOF from VOF. SLOF describes itself in /openprom (`model` "SLOF, ..."), as
/// IEEE 1275 firmware does; VOF has no /openprom node at all.
fn identify_firmware(of: &Of) -> Firmware {
    let mut model = [0u8; 64];
    match of.finddevice(b"/openprom\0") {
        None => Firmware::Vof,
        Some(op) => match of.getprop(op, b"model\0", &mut model) {
            Some(n) if c_str(&model[..n.min(64)]).starts_with(b"SLOF") => Firmware::Slof,
            _ => Firmware::Unknown,
        },
    }
}

/// Everything done through the client interface.
///
/// # Safety
/// `of_entry` is what the firmware passed in r5, the firmware is still intact, and the image
/// lies below 4 GiB.
unsafe fn firmware_phase(of_entry: u64, image: (u64, u64)) -> Learned {
    // SAFETY: the caller's contract.
    let of = unsafe { Of::new(of_entry) };
    let mut learned = Learned {
        firmware: Firmware::Unknown,
        cmdline: b"",
        console: "",
        fdt: None,
        found: Found::new(),
    };

    // Console first, so that whatever happens next can be told.
    let chosen = of.finddevice(b"/chosen\0");
    if let Some(chosen) = chosen {
        // SAFETY: BootCell, taken once here.
        let path = unsafe { &mut (*CONSOLE_PATH.get()).0 };
        match find_console(&of, chosen, path) {
            Some((p, termno)) => {
                learned.console = p;
                TERMNO.store(termno, Ordering::Relaxed);
                CONSOLE_UP.store(true, Ordering::Relaxed);
            }
            None => defer_error("console", format_args!("no usable /chosen stdout-path")),
        }
        // SAFETY: BootCell, taken once here; the command line stays for the whole run.
        let buf = unsafe { &mut (*CMDLINE_BUF.get()).0 };
        if let Some(n) = of.getprop(chosen, b"bootargs\0", &mut buf[..]) {
            if n > buf.len() {
                defer_error(
                    "cmdline",
                    format_args!("bootargs is {n} bytes, only 4096 kept"),
                );
            }
            learned.cmdline = c_str(&buf[..n.min(buf.len())]);
        }
    } else {
        defer_error("devtree", format_args!("Open Firmware has no /chosen"));
    }

    match of
        .finddevice(b"/rtas\0")
        .and_then(|r| of.getprop_u32(r, b"power-off\0"))
    {
        Some(t) => RTAS_POWER_OFF.store(t, Ordering::Relaxed),
        None => defer_error(
            "rtas",
            format_args!("no /rtas power-off token: cannot power off"),
        ),
    }
    learned.firmware = identify_firmware(&of);

    // SAFETY: BootCell, each taken once here; the blob stays for the whole run.
    let (fdt, strings, scratch) = unsafe {
        (
            &mut (*FDT_BUF.get()).0,
            &mut (*STRINGS_BUF.get()).0,
            &mut (*SCRATCH_BUF.get()).0,
        )
    };
    let reservations = [(0, LOW_RESERVED), (image.0, image.1 - image.0)];
    match FdtWriter::new(fdt, strings, &reservations) {
        Ok(mut w) => {
            let result = {
                let mut walker = Walker::new(of, &mut w, scratch);
                let r = walker.run();
                learned.found = walker.found;
                r
            };
            match result {
                Ok(()) => match w.finish(0) {
                    Ok(blob) => learned.fdt = Some(blob),
                    Err(e) => defer_error("devtree", format_args!("flattening: {}", e.as_str())),
                },
                Err(e) => defer_error("devtree", format_args!("flattening: {}", e.as_str())),
            }
            let f = &learned.found;
            if f.truncated || f.skipped_props > 0 || f.bad_names > 0 {
                defer_error(
                    "devtree",
                    format_args!(
                        "tree flattened partly: {} nodes, {} properties skipped, {} bad names{}",
                        f.nodes,
                        f.skipped_props,
                        f.bad_names,
                        if f.truncated { ", limits reached" } else { "" }
                    ),
                );
            }
        }
        Err(e) => defer_error("devtree", format_args!("FDT buffer: {}", e.as_str())),
    }
    learned
}

/// RAM from the memory nodes; reserved: low memory, the image (BSS, stacks and the FDT
/// included), the FDT again under its own label, an initrd, what the firmware claimed
/// (RAM minus `available`) and, under SLOF, the area QEMU puts SLOF in.
fn memory_map(
    found: &Found,
    image: (u64, u64),
    fdt: Option<&[u8]>,
    initrd: (u64, u64),
    firmware: Firmware,
) -> MemoryMap {
    let mut m = MemoryMap::new();
    for &(base, size) in &found.memory[..found.n_memory] {
        m.add(base, size, RegionKind::Ram, "ram");
    }
    m.add(0, LOW_RESERVED, RegionKind::Reserved, "vectors");
    m.add(image.0, image.1 - image.0, RegionKind::Reserved, "image");
    if let Some(blob) = fdt {
        m.add(
            blob.as_ptr() as u64,
            blob.len() as u64,
            RegionKind::Reserved,
            "fdt",
        );
    }
    if initrd.1 != 0 {
        m.add(initrd.0, initrd.1, RegionKind::Reserved, "initrd");
    }
    let avail = &found.avail[..found.n_avail];
    for (i, &(base, size)) in found.memory[..found.n_memory].iter().enumerate() {
        if !found.memory_has_avail[i] {
            continue;
        }
        // The complement of `available` inside [base, end): bounded, the cursor only grows.
        let end = base.saturating_add(size);
        let mut cursor = base;
        while cursor < end {
            let next = avail
                .iter()
                .filter(|&&(b, s)| b.saturating_add(s) > cursor && b < end && s > 0)
                .min_by_key(|&&(b, _)| b.max(cursor));
            match next {
                None => {
                    m.add(cursor, end - cursor, RegionKind::Reserved, "firmware");
                    break;
                }
                Some(&(b, s)) => {
                    if b > cursor {
                        m.add(cursor, b - cursor, RegionKind::Reserved, "firmware");
                    }
                    cursor = b.saturating_add(s);
                }
            }
        }
    }
    if firmware == Firmware::Slof && !found.has_available {
        // SLOF puts itself right below the device tree QEMU hands it, which QEMU places at the
        // top of the real-mode area and below 2 GiB (hw/ppc/spapr.c FDT_MAX_ADDR): the first
        // memory node, capped there. Its `available` normally says exactly where (35 MiB
        // below that top); without it, assume QEMU's whole budget.
        if let Some(&(base, size)) = found.memory[..found.n_memory].iter().find(|r| r.0 == 0) {
            let top = base.saturating_add(size).min(SLOF_CEILING);
            let from = top.saturating_sub(SLOF_OVERHEAD);
            m.add(from, top - from, RegionKind::Reserved, "slof");
        }
    }
    m
}

/// Called by boot/ppc64/entry.S, little-endian, relocated, on the boot stack.
#[unsafe(no_mangle)]
extern "C" fn sg_ppc64_start(
    of_entry: u64,
    base: u64,
    entry_tb: u64,
    initrd: u64,
    initrd_size: u64,
    bad_relocs: u64,
) -> ! {
    let image_end = &raw const __sg_image_end as u64;
    let image = (base, image_end);
    if bad_relocs != 0 {
        defer_error(
            "relocation",
            format_args!("{bad_relocs} relocations of unknown type skipped"),
        );
    }
    let learned = if image_end > 1 << 32 {
        defer_error(
            "boot",
            format_args!("image above 4 GiB: Open Firmware cannot be used"),
        );
        None
    } else if of_entry == 0 || of_entry >= 1 << 32 {
        defer_error(
            "boot",
            format_args!("no Open Firmware entry point in r5 ({of_entry:#x})"),
        );
        None
    } else {
        // SAFETY: r5 from the firmware, nothing of the firmware's touched yet (the image is
        // where it put us, BSS was claimed with it), image below 4 GiB (checked above).
        Some(unsafe { firmware_phase(of_entry, image) })
    };
    let learned = learned.unwrap_or(Learned {
        firmware: Firmware::Unknown,
        cmdline: b"",
        console: "",
        fdt: None,
        found: Found::new(),
    });

    // Done with the firmware: little-endian interrupts, then the vectors over its low memory.
    let rc = hcall::set_interrupts_little_endian();
    if rc != hcall::H_SUCCESS {
        defer_error(
            "interrupts",
            format_args!("H_SET_MODE(little-endian) failed: {rc}"),
        );
    }
    if base >= vectors::VECTORS_END {
        // SAFETY: the firmware is never called again, and the image (QEMU's kernel-addr is
        // 4 MiB by default) starts above the vectors, as just checked.
        if let Err(e) = unsafe { vectors::install() } {
            defer_error(
                "interrupts",
                format_args!("vectors not installed: {}", e.as_str()),
            );
        }
    } else {
        defer_error(
            "interrupts",
            format_args!("image at {base:#x} overlaps the vectors"),
        );
    }

    let f = &learned.found;
    let memory = memory_map(
        f,
        image,
        learned.fdt,
        (initrd, initrd_size),
        learned.firmware,
    );
    let (tick_hz, tick_source) = match f.timebase_hz {
        Some(hz) => (hz, "timebase-frequency"),
        None => (DEFAULT_TIMEBASE_HZ, "assumed-512mhz"),
    };
    crate::boot_main(BootInfo {
        arch: "ppc64le",
        machine: "pseries",
        firmware: learned.firmware,
        image_start: base,
        image_end,
        entry_ticks: entry_tb,
        tick_hz: Some(tick_hz),
        tick_source,
        cmdline: learned.cmdline,
        fdt: learned.fdt,
        memory,
        cpus: (f.cpus > 0).then_some(f.cpus),
        console: learned.console,
    })
}
