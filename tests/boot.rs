//! Integration tests: boot the real images (`make images`) in QEMU through the harness and check
//! that each report matches the QEMU configuration it ran under.
//!
//! Every test fails, with "run `make images` first", when an image is missing: a suite that
//! skips is a suite that silently tests nothing. Each run has the harness's timeout (60 s) and
//! cargo runs the test functions in parallel, one QEMU per test thread. TCG is the default;
//! `ACCEL=auto` boots x86 under KVM where it works.

use std::path::PathBuf;

use harness::report::{End, Error, Exception, Level, OptionRecord, Panic};
use harness::{Arch, Firmware, Machine, Outcome, QemuConfig, RunResult};

/// One machine/firmware combination.
#[derive(Clone, Copy, Debug)]
struct Setup {
    machine: Machine,
    firmware: Option<Firmware>,
}

const PSERIES_VOF: Setup = Setup {
    machine: Machine::Pseries,
    firmware: Some(Firmware::Vof),
};
const PSERIES_SLOF: Setup = Setup {
    machine: Machine::Pseries,
    firmware: Some(Firmware::Slof),
};
const MICROVM: Setup = Setup {
    machine: Machine::Microvm,
    firmware: None,
};
const Q35: Setup = Setup {
    machine: Machine::Q35,
    firmware: None,
};
const PC: Setup = Setup {
    machine: Machine::Pc,
    firmware: None,
};

/// An image from `make images`, or a test failure that says how to get it.
fn image(name: &str, arch: Arch) -> PathBuf {
    let path = harness::default_kernel(arch, name);
    assert!(
        path.is_file(),
        "{} is missing: run `make images` first",
        path.display()
    );
    path
}

fn config(s: Setup) -> QemuConfig {
    let mut c = QemuConfig::new(s.machine).expect("harness defaults (check $ACCEL)");
    c.firmware = s.firmware;
    c.kernel = image("secure-guest", c.arch);
    c
}

fn boot(c: &QemuConfig) -> RunResult {
    let r = harness::run(c).unwrap_or_else(|e| panic!("{}: {e:#}", c.reproduce()));
    // Whatever the verdict, the report itself must keep the contract, and its `end` must add
    // up: every error-level record counted in `errors`, every warning in `warnings`.
    assert!(
        r.protocol_errors.is_empty(),
        "report breaks docs/report.md:\n{r}"
    );
    if let Some(end) = r.end() {
        let options = r.all::<OptionRecord>();
        let count = |l| options.iter().filter(|o| o.level == l).count() as u64;
        let errors = count(Level::Error)
            + r.all::<Error>().len() as u64
            + r.all::<Exception>().len() as u64
            + r.all::<Panic>().len() as u64;
        assert_eq!(end.errors, errors, "end.errors\n{r}");
        assert_eq!(end.warnings, count(Level::Warning), "end.warnings\n{r}");
    }
    r
}

/// Boots `s` with `-m memory -smp smp` and checks what the report says about the machine.
fn check_machine(s: Setup, memory: &str, smp: u32) {
    let mut c = config(s);
    c.memory = memory.into();
    c.smp = smp;
    c.append = Some("sg.x=1 hello".into());
    let r = boot(&c);
    assert!(r.passed(), "{r}");

    let boot = r.boot().expect("a boot record");
    assert_eq!(boot.arch, c.arch.as_str(), "{r}");
    assert_eq!(boot.machine, c.machine.as_str(), "{r}");
    let firmware = c.effective_firmware().map_or("pvh", |f| f.as_str());
    assert_eq!(boot.firmware, firmware, "{r}");

    let ram = c.memory_bytes().unwrap();
    match c.arch {
        // The device tree's /memory nodes cover all of -m.
        Arch::Ppc64le => assert_eq!(boot.ram_bytes, ram, "ram_bytes vs -m {memory}\n{r}"),
        // The e820 map leaves out the legacy hole (640K-1M) and what SeaBIOS or qboot keep at
        // the top of low memory: a few hundred KiB, never megabytes.
        Arch::X86_64 => assert!(
            boot.ram_bytes <= ram && boot.ram_bytes > ram - (4 << 20),
            "ram_bytes {} vs -m {memory} ({ram})\n{r}",
            boot.ram_bytes
        ),
    }
    if ram > 4 << 30 {
        assert!(
            boot.ram_top.0 > 4 << 30,
            "RAM above 4 GiB is in the map\n{r}"
        );
    }
    assert_eq!(boot.cpus, Some(smp), "boot.cpus vs -smp {smp}\n{r}");
    let devtree = r.devtree().expect("a devtree record");
    assert_eq!(devtree.cpus, smp, "devtree.cpus vs -smp {smp}\n{r}");
    // pseries and microvm hand over a device tree (microvm's through fw_cfg); q35 and pc are
    // enumerated.
    let source = match c.machine {
        Machine::Pseries | Machine::Microvm => "fdt",
        Machine::Q35 | Machine::Pc => "pci-scan",
    };
    assert_eq!(devtree.source, source, "{r}");

    assert_eq!(boot.cmdline, "sg.x=1 hello", "{r}");
    let console = if c.arch == Arch::Ppc64le {
        "/vdevice/vty@71000000"
    } else {
        "com1"
    };
    assert_eq!(boot.console, console, "{r}");

    // `sg.x` is unknown: one warning, and still a pass. `hello` is not ours: ignored.
    let options = r.all::<OptionRecord>();
    assert_eq!(options.len(), 1, "{r}");
    assert_eq!(
        (options[0].level, options[0].option.as_str()),
        (Level::Warning, "sg.x"),
        "{r}"
    );
    let end = r.end().unwrap();
    assert_eq!((end.errors, end.warnings), (0, 1), "{r}");
}

/// The last two records: `what` and then `end` with verdict fail.
fn check_fails_with(s: Setup, append: &str, what: &str) -> RunResult {
    let mut c = config(s);
    c.append = Some(append.into());
    let r = boot(&c);
    assert_eq!(r.verdict, Outcome::Fail, "{r}");
    let events: Vec<&str> = r.records.iter().map(|r| r.event.as_str()).collect();
    assert!(events.len() >= 3 && events[0] == "boot", "{r}");
    assert_eq!(&events[events.len() - 2..], [what, "end"], "{r}");
    r
}

fn check_panic(s: Setup) {
    let r = check_fails_with(s, "sg.debug.panic=1", "panic");
    let p: Panic = r.first().unwrap();
    assert!(p.message.contains("sg.debug.panic"), "{r}");
    assert!(!p.file.is_empty() && p.line > 0, "{r}");
}

fn check_fault(s: Setup) {
    let r = check_fails_with(s, "sg.debug.fault=1", "exception");
    let e: Exception = r.first().unwrap();
    assert!(!e.name.is_empty() && e.pc.0 != 0, "{r}");
    match r.config.arch {
        Arch::Ppc64le => assert!(e.msr.is_some(), "ppc64le details\n{r}"),
        Arch::X86_64 => assert!(e.error_code.is_some(), "x86_64 details\n{r}"),
    }
}

/// A malformed value is an error record that names the option, and the run fails; the option
/// is not applied (no panic).
fn check_malformed(s: Setup) {
    let mut c = config(s);
    c.append = Some("sg.debug.panic=maybe".into());
    let r = boot(&c);
    assert_eq!(r.verdict, Outcome::Fail, "{r}");
    let options = r.all::<OptionRecord>();
    assert_eq!(options.len(), 1, "{r}");
    let o = &options[0];
    assert_eq!(o.level, Level::Error, "{r}");
    assert_eq!(o.option, "sg.debug.panic", "{r}");
    assert_eq!(o.value.as_deref(), Some("maybe"), "{r}");
    assert_eq!(o.expected.as_deref(), Some("0|1"), "{r}");
    assert!(r.all::<Panic>().is_empty(), "{r}");
    let end: End = r.end().unwrap();
    assert!(end.errors >= 1, "{r}");
}

/// The noop payload powers off at once, writing no report.
fn check_noop(s: Setup) {
    let mut c = config(s);
    c.kernel = image("noop", c.arch);
    let r = harness::run(&c).unwrap_or_else(|e| panic!("{}: {e:#}", c.reproduce()));
    assert!(r.exited_cleanly(), "{r}");
    assert!(r.records.is_empty() && r.protocol_errors.is_empty(), "{r}");
}

/// No console at all: nothing to write the report to, yet the run must end by itself (power-off),
/// and on x86 the verdict still reaches the host through the exit device (pass → 1).
fn check_no_console(s: Setup) {
    let mut c = config(s);
    c.console = false;
    c.timeout = std::time::Duration::from_secs(30);
    let r = harness::run(&c).unwrap_or_else(|e| panic!("{}: {e:#}", c.reproduce()));
    assert!(!r.timed_out, "a guest without a console hung\n{r}");
    assert!(r.exited_cleanly(), "{r}");
    if c.has_exit_device() {
        assert_eq!(
            r.exit_status.code(),
            Some(1),
            "verdict pass in the exit status\n{r}"
        );
    }
}

/// What every machine and firmware must do: boot and report its configuration, with one CPU
/// and two, end by itself without a console, and turn a CPU fault into a report.
macro_rules! core_tests {
    ($setup:expr) => {
        #[test]
        fn report_matches_machine() {
            check_machine($setup, "512M", 1);
        }
        #[test]
        fn smp_2() {
            check_machine($setup, "512M", 2);
        }
        #[test]
        fn no_console_still_ends() {
            check_no_console($setup);
        }
        #[test]
        fn debug_fault() {
            check_fault($setup);
        }
    };
}

/// Paths that do not depend on the firmware: run where boots are cheap (not SLOF).
macro_rules! option_and_panic_tests {
    ($setup:expr) => {
        #[test]
        fn malformed_option_fails() {
            check_malformed($setup);
        }
        #[test]
        fn debug_panic() {
            check_panic($setup);
        }
        #[test]
        fn noop_powers_off() {
            check_noop($setup);
        }
    };
}

mod pseries_vof {
    use super::*;
    core_tests!(PSERIES_VOF);
    option_and_panic_tests!(PSERIES_VOF);
    #[test]
    fn memory_4g() {
        check_machine(PSERIES_VOF, "4G", 1);
    }
    /// Loaded somewhere other than QEMU's default 4 MiB (an address no linker would pick): the
    /// self-relocation (packed .relr.dyn) must fix every pointer, or the trait objects and
    /// tables of the whole run would point into the void.
    #[test]
    fn runs_where_it_is_loaded() {
        let mut c = config(PSERIES_VOF);
        c.extra_args = vec!["-machine".into(), "kernel-addr=0x2340000".into()];
        let r = boot(&c);
        assert!(r.passed(), "{r}");
        assert_eq!(
            r.boot().expect("a boot record").load_addr.0,
            0x234_0000,
            "{r}"
        );
    }
}

/// SLOF costs seconds of TCG per boot: only what depends on the firmware (the device tree it
/// builds, CPUs it starts, the vectors it leaves behind).
mod pseries_slof {
    use super::*;
    core_tests!(PSERIES_SLOF);
}

mod microvm {
    use super::*;
    core_tests!(MICROVM);
    option_and_panic_tests!(MICROVM);
    /// No PIT (`pit=off`) and no CPUID frequency leaf under TCG: the TSC cannot be counted
    /// against anything. The boot goes on without a clock (`tick_hz` null, `tick_source`
    /// `none`, no `t_us`) and passes, after one bounded wait for the timer, not a hang.
    #[test]
    fn no_pit_no_clock_still_passes() {
        let mut c = config(MICROVM);
        c.extra_args = vec!["-machine".into(), "pit=off".into()];
        let r = boot(&c);
        assert!(r.passed(), "{r}");
        let b = r.boot().expect("a boot record");
        assert_eq!((b.tick_hz, b.tick_source.as_str()), (None, "none"), "{r}");
    }
}

mod q35 {
    use super::*;
    core_tests!(Q35);
    option_and_panic_tests!(Q35);
    /// RAM above 4 GiB: q35 keeps 2 GiB below the PCI hole and maps the rest from 4 GiB up.
    #[test]
    fn memory_5g() {
        check_machine(Q35, "5G", 1);
    }
}

mod pc {
    use super::*;
    core_tests!(PC);
    option_and_panic_tests!(PC);
}
