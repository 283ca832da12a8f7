//! secure-guest: the boot flow, top to bottom.
//!
//! The arch entry code (src/arch/) gets the machine into a state where Rust can run and hands
//! over a `BootInfo`. From there: console report, heap, command line, device tree, the secure
//! decision (and, when secure, the shared bounce pool and secret-marked memory), devices,
//! verdict.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

mod arch;
mod console;

use core::alloc::{GlobalAlloc, Layout};
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use linked_list_allocator::LockedHeap;
use secure_guest::bootinfo::BootInfo;
use secure_guest::cmdline::{self, Diagnostic, Options};
use secure_guest::devices::secure::{self as sec, PROBE_BYTES};
use secure_guest::devices::{self, TickClock};
use secure_guest::devtree::{self, DeviceTree};
use secure_guest::dma::Direct;
use secure_guest::dma::bounce::Bounce;
use secure_guest::dma::pool::PoolConfig;
use secure_guest::memmap::RegionKind;
use secure_guest::platform::decide;
use secure_guest::platform::{Platform, PlatformKind, secret};
use secure_guest::report::{Record, Verdict};
use secure_guest::virtio::driver::DmaPaths;

use console::Console;

#[global_allocator]
static HEAP: CountingHeap = CountingHeap {
    heap: LockedHeap::empty(),
    in_use: AtomicUsize::new(0),
    high_water: AtomicUsize::new(0),
};

/// The heap, counting the bytes handed out and their high-water mark (the `end` record's
/// `heap_high_water_bytes`), so that a run shows what it needed.
struct CountingHeap {
    heap: LockedHeap,
    in_use: AtomicUsize,
    high_water: AtomicUsize,
}

// SAFETY: every call goes to the locked heap with the caller's arguments unchanged; the counters
// only watch.
unsafe impl GlobalAlloc for CountingHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller keeps `GlobalAlloc::alloc`'s contract, which is passed on as is.
        let p = unsafe { self.heap.alloc(layout) };
        if !p.is_null() {
            let now = self.in_use.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            self.high_water.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this `layout` (the caller's contract).
        unsafe { self.heap.dealloc(ptr, layout) };
        self.in_use.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

/// The heap never takes more than this: the rest of RAM stays free for later users (the shared
/// pool, secret-marked private memory) and a huge heap would only slow down its first use.
const HEAP_MAX: u64 = 64 << 20;

/// The DMA path of every device of a non-secure guest: direct (device address = physical
/// address). The platforms (`none`, `emulated`) are statics of `devices::secure`.
static DIRECT: Direct = Direct::new();

static ERRORS: AtomicU32 = AtomicU32::new(0);
static WARNINGS: AtomicU32 = AtomicU32::new(0);
static ENTRY_TICKS: AtomicU64 = AtomicU64::new(0);
static TICK_HZ: AtomicU64 = AtomicU64::new(0);
/// Set once `end` is being written: a fault while ending must not recurse.
static ENDING: AtomicBool = AtomicBool::new(false);

fn elapsed_us(now: u64) -> Option<u64> {
    let hz = TICK_HZ.load(Ordering::Relaxed);
    let ticks = now.wrapping_sub(ENTRY_TICKS.load(Ordering::Relaxed));
    (hz != 0).then(|| (ticks as u128 * 1_000_000 / hz as u128) as u64)
}

/// Starts a record on the console, stamped with the time since entry (`t_us`, null while the
/// clock is uncalibrated) so that a host can see what each phase cost. Out of line: it is
/// called from dozens of places.
#[inline(never)]
fn record(event: &str) -> Record<Console> {
    Record::new(Console, event).opt_u64("t_us", elapsed_us(arch::now_ticks()))
}

/// Reports an error record; the verdict becomes `fail`.
#[inline(never)]
fn report_error(what: &str, message: &str) {
    ERRORS.fetch_add(1, Ordering::Relaxed);
    record("error")
        .str("what", what)
        .str("message", message)
        .end();
}

/// For the arch entry code: a failure before `boot_main` could run. Reports and ends the run.
pub fn early_fatal(what: &str, message: &str) -> ! {
    arch::console_write(b"\n");
    report_error(what, message);
    end(Verdict::Fail)
}

/// Writes the `end` record and powers off. Never returns.
fn end(verdict: Verdict) -> ! {
    ENDING.store(true, Ordering::SeqCst);
    let verdict = if verdict == Verdict::Pass && ERRORS.load(Ordering::Relaxed) > 0 {
        Verdict::Fail
    } else {
        verdict
    };
    record("end")
        .str("verdict", verdict.as_str())
        .u64("errors", ERRORS.load(Ordering::Relaxed) as u64)
        .u64("warnings", WARNINGS.load(Ordering::Relaxed) as u64)
        .opt_u64("entry_to_end_us", elapsed_us(arch::now_ticks()))
        .u64(
            "heap_high_water_bytes",
            HEAP.high_water.load(Ordering::Relaxed) as u64,
        )
        .end();
    arch::power_off(verdict)
}

/// Called by the arch entry code. `info` describes the machine as the firmware left it.
pub fn boot_main(info: BootInfo) -> ! {
    ENTRY_TICKS.store(info.entry_ticks, Ordering::Relaxed);
    TICK_HZ.store(info.tick_hz.unwrap_or(0), Ordering::Relaxed);

    // 1. Tell the host who we are and what we were given. Firmware may leave a partial line
    //    (SeaBIOS: "Booting from ROM.."), and a record must start its line.
    arch::console_write(b"\n");
    report_boot(&info);
    arch::report_early_errors();

    // 2. Heap over free RAM: never over the image, the device tree or firmware areas, which the
    //    arch code listed as reserved.
    let heap = init_heap(&info);

    // 3. Command line.
    let (opts, diags) = cmdline::parse(info.cmdline);
    for d in diags.iter().chain(arch::option_notes(&opts).as_ref()) {
        report_option(d);
    }

    // 4. Devices: the device tree, and what the arch finds without one.
    let mut tree = match info.fdt {
        Some(blob) => match devtree::parse(blob) {
            Ok(t) => Some(t),
            Err(e) => {
                report_error("devtree", &alloc::format!("{e}"));
                None
            }
        },
        None => Some(DeviceTree::default()),
    };
    if let Some(t) = tree.as_mut() {
        arch::arch_devices(t);
        report_devtree(
            t,
            if info.fdt.is_some() {
                "fdt"
            } else {
                "pci-scan"
            },
        );
    }

    // 5. Secure or not, before any device is touched: a rejection ends the run here.
    let no_tree = DeviceTree::default();
    let platform = choose_platform(&opts, tree.as_ref().unwrap_or(&no_tree));

    // 6. When secure: the shared bounce pool, and (emulate) private memory full of secret marks
    //    for the host's memory-dump oracle. Every device then goes through the pool or is
    //    refused; otherwise every device is direct.
    //    The pool lives for the rest of the run (it is never unshared): it is leaked, so
    //    that IOMMU units, whose own tables and queues must be shared too, can keep it.
    let pool: Option<&'static Bounce<'static>> = platform.is_secure().then(|| {
        &*alloc::boxed::Box::leak(alloc::boxed::Box::new(setup_pool(
            &info, heap, platform, &opts,
        )))
    });
    if platform.kind() == PlatformKind::Emulated {
        mark_private_memory(&info, heap, pool);
    }
    let paths = match pool {
        Some(b) => sec::secure_paths(&DIRECT, b, opts.legacy_devices),
        None => DmaPaths::direct(&DIRECT),
    };
    // The IOMMU domains devices sit behind (pseries: each PHB's TCE window; x86: one per PCI
    // function behind VT-d or virtio-iommu), set up when a device first needs one: over the
    // pool on a secure guest, over private memory otherwise.
    let pool_range = pool.map(|b| {
        let r = b.region();
        (b as &dyn secure_guest::dma::Dma, r.phys, r.size)
    });
    // RAM as the IOMMU domains see it: merged, sorted ranges (a static domain maps each).
    let mut ram = alloc::vec::Vec::new();
    info.memory
        .for_each_ram_piece(&mut |base, end| ram.push((base, end)));
    let ram: &'static [(u64, u64)] = alloc::boxed::Box::leak(ram.into_boxed_slice());
    let domains = match tree.as_ref() {
        Some(t) => arch::iommu_domains(t, &opts, ram, &DIRECT, pool_range),
        None => alloc::vec::Vec::new(),
    };
    let paths = paths.with(opts.dma, &domains);

    // 7. virtio devices: each through its driver, one `virtio` record per device; then each
    //    IOMMU domain they used.
    if let Some(t) = tree.as_ref() {
        run_virtio_devices(t, &opts, info.tick_hz, paths);
    }
    // A record starts on the console as soon as it is made: only for domains that were used.
    for d in domains.iter().filter(|d| d.state().is_some()) {
        devices::iommu_record(record("iommu"), d).end();
    }
    // Every device is reset: the IOMMU units the arch set up report and give their tables
    // and queues back (to the pool, on a secure guest).
    arch::iommu_finish();

    // 8. What the pool went through. It stays shared (and, with every device reset and every
    //    mapping released, all zeros) until power-off: see `devices::secure`.
    if let Some(b) = pool {
        report_pool_stats(b);
    }

    // 9. Test-only failure injections, after everything above has been reported.
    if opts.debug_fault {
        arch::trigger_fault();
        report_error("debug", "sg.debug.fault: the fault did not happen");
    }
    if opts.debug_panic {
        panic!("sg.debug.panic: deliberate panic");
    }

    end(Verdict::Pass)
}

/// Decides (`sg.secure` against what the arch detected), writes the `secure` record and returns
/// the platform for the rest of the run. Ends the run with `reject` when the decision says so,
/// and with `fail` when a real backend cannot be set up.
fn choose_platform(opts: &Options, tree: &DeviceTree) -> &'static dyn Platform {
    let facts = arch::secure_facts(tree);
    let decision = decide::decide(opts.secure, &facts);
    let write = |p: &dyn Platform| {
        sec::secure_record(
            record("secure"),
            &decision,
            arch::sev_status(),
            p,
            opts.legacy_devices,
        )
        .end();
    };
    if decision.rejected() {
        write(&sec::NONE_PLATFORM);
        end(Verdict::Reject);
    }
    // `none` and `emulated` are statics; a real backend (PEF, SEV, TDX) is built by the arch
    // code only when detected, which never happens on the machines here.
    let platform = match sec::static_platform(decision.choice) {
        Some(p) => p,
        None => match arch::secure_platform(decision.choice, tree) {
            Ok(p) => p,
            Err(e) => {
                write(&sec::NONE_PLATFORM);
                report_error("secure", &e);
                end(Verdict::Fail);
            }
        },
    };
    write(platform);
    platform
}

/// The shared pool of `sg.swiotlb` bytes (rounded up to the platform's granularity) in free
/// RAM below 4 GiB that is not the heap, shared with one call, and its `swiotlb` record. Any
/// failure ends the run (`fail`) before a device is touched.
fn setup_pool(
    info: &BootInfo,
    heap: (u64, u64),
    platform: &'static dyn Platform,
    opts: &Options,
) -> Bounce<'static> {
    let granularity = platform.granularity();
    let size = sec::pool_size(opts.swiotlb, granularity);
    let Some(base) = sec::place_pool(&info.memory, heap, size, granularity) else {
        report_error(
            "swiotlb",
            &alloc::format!(
                "no free RAM below 4 GiB for a pool of {size} bytes aligned to {granularity:#x}"
            ),
        );
        end(Verdict::Fail);
    };
    // SAFETY: [base, base + size) is free RAM (the arch layer reserved the image, device tree
    // and firmware; `place_pool` also kept it off the heap), identity-mapped below 4 GiB, never
    // referenced by Rust, and given to the pool for the rest of the run.
    match unsafe { Bounce::new(platform, base, size, PoolConfig::default()) } {
        Ok(b) => {
            b.set_debug_skip_zeroing(opts.debug_leak);
            sec::swiotlb_record(record("swiotlb"), &b).end();
            b
        }
        Err(e) => {
            report_error("swiotlb", &alloc::format!("{e}"));
            end(Verdict::Fail);
        }
    }
}

/// `sg.secure=emulate`: fills private free RAM (not the heap, not the pool) with secret marks
/// and lists it in the `secret` record, so that the host's scan of a memory dump proves it finds
/// marks where they are, and then must find none in the pool.
fn mark_private_memory(info: &BootInfo, heap: (u64, u64), pool: Option<&Bounce<'_>>) {
    let pool = pool.map_or((0, 0), |b| (b.region().phys, b.region().size));
    let regions: alloc::vec::Vec<(u64, u64)> =
        sec::place_secret(&info.memory, heap, pool, sec::SECRET_MAX)
            .into_iter()
            .collect();
    for &(base, size) in &regions {
        // SAFETY: free RAM that is neither the heap nor the pool (`place_secret`), below 4 GiB
        // and identity-mapped; nothing in the guest uses or references it.
        unsafe { secret::fill_raw(base as *mut u8, size as usize, 0) };
    }
    sec::secret_record(record("secret"), &regions).end();
}

/// The release probe, then the `swiotlb_stats` record.
fn report_pool_stats(b: &Bounce<'_>) {
    let probe = match sec::release_probe(b) {
        Ok(n) => n as u64,
        Err(e) => {
            report_error(
                "swiotlb",
                &alloc::format!("release probe of {PROBE_BYTES} bytes: {e}"),
            );
            0
        }
    };
    sec::swiotlb_stats_record(record("swiotlb_stats"), &b.bounce_stats(), probe).end();
}

/// Finds the virtio devices, runs each through its driver and reports it. A device that was
/// found but cannot be used, or a write asked of a disk that does not exist, is an `error`
/// record; a device whose test failed is a `virtio` record with `result: error`, which counts
/// as an error too.
fn run_virtio_devices(
    tree: &DeviceTree,
    opts: &Options,
    tick_hz: Option<u64>,
    paths: DmaPaths<'_>,
) {
    let (found, unusable) = arch::virtio_devices(tree);
    for (location, why) in &unusable {
        report_error("virtio", &alloc::format!("{location}: {why}"));
    }
    let clock = TickClock::new(arch::now_ticks, tick_hz);
    let mut runner = devices::Runner::new(paths, &clock, opts);
    for mut d in found {
        let Some(report) = runner.run_behind(&d.location, &mut *d.transport, d.iommu) else {
            continue;
        };
        if report.is_error() {
            ERRORS.fetch_add(1, Ordering::Relaxed);
        }
        devices::virtio_record(record("virtio"), &report).end();
    }
    if let Some(e) = runner.unmet() {
        report_error("virtio", &e);
    }
}

fn report_boot(info: &BootInfo) {
    let now = arch::now_ticks();
    let ticks = now.wrapping_sub(info.entry_ticks);
    record("boot")
        .str("arch", info.arch)
        .str("machine", info.machine)
        .str("firmware", info.firmware.as_str())
        .str("guest", env!("CARGO_PKG_VERSION"))
        .hex("load_addr", info.image_start)
        .hex("image_end", info.image_end)
        .u64("ram_bytes", info.memory.ram_bytes())
        .hex("ram_top", info.memory.ram_top())
        .json("memory", |j| {
            j.begin_array();
            for r in info.memory.regions() {
                j.begin_object();
                j.key("base");
                j.hex(r.base);
                j.key("size");
                j.u64(r.size);
                j.key("kind");
                j.str(match r.kind {
                    RegionKind::Ram => "ram",
                    RegionKind::Reserved => "reserved",
                });
                j.key("label");
                j.str(r.label);
                j.end_object();
            }
            j.end_array();
        })
        .u64("memory_dropped", info.memory.dropped as u64)
        .opt_u64("cpus", info.cpus.map(u64::from))
        .bytes_lossy("cmdline", info.cmdline)
        .str("console", info.console)
        .opt_u64("tick_hz", info.tick_hz)
        .str("tick_source", info.tick_source)
        .u64("entry_to_boot_ticks", ticks)
        .opt_u64("entry_to_boot_us", elapsed_us(now))
        .end();
}

/// Returns the heap's (base, size).
fn init_heap(info: &BootInfo) -> (u64, u64) {
    // Below 4 GiB: every arch maps that at entry, and 32-bit DMA engines can reach it later.
    let mut best: Option<(u64, u64)> = None;
    info.memory.for_each_free(0x1000, 1 << 20, |b, e| {
        let e = e.min(1 << 32);
        if b < e && best.is_none_or(|(bb, be)| e - b > be - bb) {
            best = Some((b, e));
        }
    });
    match best {
        Some((base, end)) => {
            let size = (end - base).min(HEAP_MAX);
            // SAFETY: [base, base+size) is RAM that no reserved range covers (the arch layer
            // reserved the image, stack, device tree and firmware), identity-mapped, and handed
            // to the allocator exactly once.
            unsafe { HEAP.heap.lock().init(base as *mut u8, size as usize) };
            record("heap").hex("base", base).u64("size", size).end();
            (base, size)
        }
        None => {
            report_error("heap", "no free RAM of at least 1 MiB below 4 GiB");
            end(Verdict::Fail);
        }
    }
}

fn report_option(d: &Diagnostic) {
    let level = if d.is_error() { "error" } else { "warning" };
    if d.is_error() {
        ERRORS.fetch_add(1, Ordering::Relaxed);
    } else {
        WARNINGS.fetch_add(1, Ordering::Relaxed);
    }
    let r = record("option").str("level", level);
    match d {
        Diagnostic::Unknown { option } => r
            .str("option", option)
            .str("message", "unknown option, ignored"),
        Diagnostic::Malformed {
            option,
            value,
            expected,
        } => r
            .str("option", option)
            .str("value", value)
            .str("expected", expected)
            .str("message", "malformed value"),
        Diagnostic::BadToken { token, why } => r.str("option", token).str("message", why),
        Diagnostic::NoEffect { option, value, why } => r
            .str("option", option)
            .str("value", value)
            .str("message", why),
    }
    .end();
}

fn report_devtree(t: &DeviceTree, source: &str) {
    record("devtree")
        .str("source", source)
        .u64("nodes", t.nodes as u64)
        .u64("size", t.total_size as u64)
        .json("model", |j| match &t.model {
            Some(m) => j.str(m),
            None => j.null(),
        })
        .u64("cpus", t.cpus as u64)
        .opt_u64("timebase_hz", t.timebase_hz)
        .json("stdout_path", |j| match &t.stdout_path {
            Some(p) => j.str(p),
            None => j.null(),
        })
        .json("virtio_mmio", |j| {
            j.begin_array();
            for v in &t.virtio_mmio {
                j.begin_object();
                j.key("path");
                j.str(&v.path);
                j.key("base");
                j.hex(v.base);
                j.key("size");
                j.u64(v.size);
                j.key("irq");
                match v.irq {
                    Some(i) => j.u64(i as u64),
                    None => j.null(),
                }
                j.end_object();
            }
            j.end_array();
        })
        .json("pci_hosts", |j| {
            j.begin_array();
            for h in &t.pci_hosts {
                j.begin_object();
                j.key("path");
                j.str(&h.path);
                j.key("compatible");
                match &h.compatible {
                    Some(c) => j.str(c),
                    None => j.null(),
                }
                j.key("dma_window");
                j.bool(h.has_dma_window);
                j.end_object();
            }
            j.end_array();
        })
        .json("pci", |j| {
            j.begin_array();
            for f in &t.pci_functions {
                j.begin_object();
                j.key("path");
                j.str(&f.path);
                j.key("bdf");
                j.str(
                    &secure_guest::virtio::pci::PciAddress::new(f.bus, f.device, f.function).bdf(),
                );
                j.key("vendor");
                j.hex(f.vendor_id as u64);
                j.key("device");
                j.hex(f.device_id as u64);
                j.key("class");
                let mut class = alloc::string::String::from("0x");
                secure_guest::report::push_hex(&mut class, f.class.into(), 6);
                j.str(&class);
                j.key("virtio");
                j.bool(f.is_virtio());
                j.end_object();
            }
            j.end_array();
        })
        .json("rtas", |j| match &t.rtas {
            Some(r) => {
                j.begin_object();
                for (name, tok) in [
                    ("power-off", r.power_off),
                    ("read-pci-config", r.read_pci_config),
                    ("write-pci-config", r.write_pci_config),
                    ("ibm,read-pci-config", r.ibm_read_pci_config),
                    ("ibm,write-pci-config", r.ibm_write_pci_config),
                ] {
                    if let Some(tok) = tok {
                        j.key(name);
                        j.u64(tok as u64);
                    }
                }
                j.end_object();
            }
            None => j.null(),
        })
        .bool("ultravisor", t.ultravisor)
        .end();
}

/// Called by the arch exception handlers for any interrupt the guest did not expect.
/// `details` are arch-specific (name, value) pairs.
pub fn fatal_exception(vector: u64, name: &str, pc: u64, details: &[(&str, u64)]) -> ! {
    if ENDING.swap(true, Ordering::SeqCst) {
        // Faulted while ending: the report is already as complete as it can be.
        arch::power_off(Verdict::Fail);
    }
    ERRORS.fetch_add(1, Ordering::Relaxed);
    let mut r = record("exception")
        .hex("vector", vector)
        .str("name", name)
        .hex("pc", pc);
    for &(k, v) in details {
        r = r.hex(k, v);
    }
    r.end();
    ENDING.store(false, Ordering::SeqCst);
    end(Verdict::Fail)
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    if ENDING.swap(true, Ordering::SeqCst) {
        arch::power_off(Verdict::Fail);
    }
    ERRORS.fetch_add(1, Ordering::Relaxed);
    let (file, line) = info.location().map_or(("?", 0), |l| (l.file(), l.line()));
    // The message is formatted into a fixed buffer: the heap may be what failed.
    let mut buf = console::FixedBuf::<256>::new();
    let _ = core::fmt::write(&mut buf, format_args!("{}", info.message()));
    record("panic")
        .str("message", buf.as_str())
        .str("file", file)
        .u64("line", line as u64)
        .end();
    ENDING.store(false, Ordering::SeqCst);
    end(Verdict::Fail)
}
