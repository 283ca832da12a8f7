//! The runner against a fake QEMU: a shell script that reads its own command line, writes
//! `console.log` the way QEMU's file chardev would, and exits the way a guest would make QEMU
//! exit. This pins timeouts, exit-status checks and console capture without booting anything
//! (the real boots are in the root package's tests/boot.rs).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::report::Verdict;
use harness::{Machine, Outcome, QemuConfig};

const BOOT: &str = r#"@sg {"event":"boot","v":1,"arch":"x86_64","machine":"q35","firmware":"pvh","guest":"0.1.0","load_addr":"0x100000","image_end":"0x1a0000","ram_bytes":536346624,"ram_top":"0x1ffe0000","memory":[],"memory_dropped":0,"cpus":1,"cmdline":"","console":"com1","tick_hz":null,"tick_source":"pit","entry_to_boot_ticks":1,"entry_to_boot_us":null}"#;

fn end(verdict: &str) -> String {
    format!(
        r#"@sg {{"event":"end","v":1,"verdict":"{verdict}","errors":0,"warnings":0,"entry_to_end_us":null}}"#
    )
}

/// The fake QEMU. Its behaviour is picked by `-append`: `console <file>` copies a prepared
/// console, then `exit <n>` or `hang` (sleep for ever, as a wedged guest does).
const FAKE_QEMU: &str = r#"#!/bin/sh
# Fake QEMU for the harness's runner tests.
append=""; args="$*"
while [ $# -gt 0 ]; do
  case "$1" in -append) append="$2"; shift;; esac
  shift
done
echo "fake-qemu: args: $args" >&2
set -- $append
while [ $# -gt 0 ]; do
  case "$1" in
    console) cat "$2" > console.log; shift;;
    exit) exit "$2";;
    hang) exec sleep 1000;;
  esac
  shift
done
exit 0
"#;

struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn new() -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let qemu = dir.path().join("qemu");
        fs::write(&qemu, FAKE_QEMU).unwrap();
        fs::set_permissions(&qemu, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.path().join("kernel"), "not really a kernel").unwrap();
        Fake { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A config for `machine` whose fake QEMU prints `console` and then does `then`.
    fn config(&self, machine: Machine, console: &str, then: &str) -> QemuConfig {
        let file = self.path(&format!("console-{}", unique_name()));
        fs::write(&file, console).unwrap();
        let mut c = QemuConfig::new(machine).unwrap();
        c.qemu_binary = Some(self.path("qemu"));
        c.kernel = self.path("kernel");
        c.append = Some(format!("console {} {then}", file.display()));
        c.timeout = Duration::from_secs(20);
        c
    }
}

fn unique_name() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

fn lines(ls: &[&str]) -> String {
    ls.iter().map(|l| format!("{l}\n")).collect()
}

#[test]
fn pass_needs_the_matching_exit_status() {
    let f = Fake::new();
    let console = lines(&["SeaBIOS banner", BOOT, &end("pass")]);
    let r = harness::run(&f.config(Machine::Q35, &console, "exit 1")).unwrap();
    assert_eq!(r.verdict, Outcome::Pass, "{r}");
    assert!(r.passed());
    assert_eq!(r.records.len(), 2);
    assert_eq!(r.boot().unwrap().machine, "q35");
    assert_eq!(r.end().unwrap().verdict, Verdict::Pass);
    assert!(r.console.starts_with("SeaBIOS banner\n"));
    assert!(
        r.stderr.contains("fake-qemu: args:"),
        "stderr is captured: {}",
        r.stderr
    );
    assert!(r.diagnosis.is_none());

    // With the exit device, a pass that QEMU reports as 0 means the guest never reached it.
    let r = harness::run(&f.config(Machine::Q35, &console, "exit 0")).unwrap();
    assert_eq!(r.verdict, Outcome::Crashed, "{r}");
    assert!(
        r.diagnosis.as_deref().unwrap().contains("expected 1"),
        "{r}"
    );

    // Without it, 0 is right.
    let mut c = f.config(Machine::Q35, &console, "exit 0");
    c.exit_device = false;
    assert_eq!(harness::run(&c).unwrap().verdict, Outcome::Pass);
}

#[test]
fn fail_and_reject_map_to_their_exit_codes() {
    let f = Fake::new();
    for (verdict, code, outcome) in [("fail", 3, Outcome::Fail), ("reject", 5, Outcome::Reject)] {
        let console = lines(&[BOOT, &end(verdict)]);
        let r =
            harness::run(&f.config(Machine::Microvm, &console, &format!("exit {code}"))).unwrap();
        assert_eq!(r.verdict, outcome, "{r}");
        assert!(!r.passed());
        let r = harness::run(&f.config(Machine::Microvm, &console, "exit 1")).unwrap();
        assert_eq!(
            r.verdict,
            Outcome::Crashed,
            "{verdict} with the pass status: {r}"
        );
    }
}

#[test]
fn pseries_verdict_is_in_the_record_and_qemu_exits_0() {
    let f = Fake::new();
    let console = lines(&[BOOT, &end("fail")]);
    let r = harness::run(&f.config(Machine::Pseries, &console, "exit 0")).unwrap();
    assert_eq!(r.verdict, Outcome::Fail, "{r}");
    let r = harness::run(&f.config(Machine::Pseries, &console, "exit 1")).unwrap();
    assert_eq!(r.verdict, Outcome::Crashed, "{r}");
}

#[test]
fn no_end_record_is_a_crash() {
    let f = Fake::new();
    let r = harness::run(&f.config(Machine::Pc, &lines(&[BOOT]), "exit 0")).unwrap();
    assert_eq!(r.verdict, Outcome::Crashed, "{r}");
    let why = r.diagnosis.unwrap();
    assert!(why.contains("without an `end` record"), "{why}");
    // QEMU's last words are part of the diagnosis.
    assert!(why.contains("fake-qemu"), "{why}");
}

#[test]
fn timeout_kills_and_is_wedged() {
    let f = Fake::new();
    let mut c = f.config(Machine::Q35, &lines(&[BOOT]), "hang");
    c.timeout = Duration::from_millis(500);
    let r = harness::run(&c).unwrap();
    assert_eq!(r.verdict, Outcome::Wedged, "{r}");
    assert!(r.timed_out);
    assert!(r.wall_time >= Duration::from_millis(500));
    assert!(r.wall_time < Duration::from_secs(10), "{:?}", r.wall_time);
    assert!(
        r.diagnosis
            .as_deref()
            .unwrap()
            .contains("last record: `boot`"),
        "{r}"
    );
    // What the guest wrote before it hung is still there.
    assert_eq!(r.records.len(), 1);

    // An `end` record without a power-off is still wedged, and says why.
    let mut c = f.config(Machine::Pseries, &lines(&[BOOT, &end("pass")]), "hang");
    c.timeout = Duration::from_millis(300);
    let r = harness::run(&c).unwrap();
    assert_eq!(r.verdict, Outcome::Wedged);
    assert!(r.diagnosis.unwrap().contains("power-off"));
}

#[test]
fn protocol_errors_make_a_pass_not_passed() {
    let f = Fake::new();
    let console = lines(&[BOOT, "@sg {broken", &end("pass")]);
    let r = harness::run(&f.config(Machine::Q35, &console, "exit 1")).unwrap();
    assert_eq!(r.verdict, Outcome::Pass);
    assert!(!r.passed());
    assert_eq!(r.protocol_errors.len(), 1);
    assert_eq!(r.protocol_errors[0].line, 2);
}

#[test]
fn large_console_is_read_whole() {
    let f = Fake::new();
    let noise = "x".repeat(199) + "\n";
    let console = format!(
        "{}{BOOT}\n{}{}\n",
        noise.repeat(50_000),
        noise.repeat(50_000),
        end("pass")
    );
    let r = harness::run(&f.config(Machine::Q35, &console, "exit 1")).unwrap();
    assert!(r.passed(), "{r}");
    assert_eq!(r.console.len(), console.len());
    assert_eq!(r.records[0].line, 50_001);
}

#[test]
fn missing_kernel_says_make_images() {
    let f = Fake::new();
    let mut c = f.config(Machine::Q35, "", "exit 1");
    c.kernel = f.path("no-such-image");
    let e = harness::run(&c).unwrap_err().to_string();
    assert!(
        e.contains("run `make images` first") && e.contains("no-such-image"),
        "{e}"
    );
}

#[test]
fn missing_qemu_is_an_error() {
    let f = Fake::new();
    let mut c = f.config(Machine::Q35, "", "exit 1");
    c.qemu_binary = Some(f.path("no-such-qemu"));
    let e = format!("{:#}", harness::run(&c).unwrap_err());
    assert!(e.contains("no-such-qemu"), "{e}");
}

#[test]
fn run_dir_keeps_files_and_command_line_has_no_temp_paths() {
    let f = Fake::new();
    let console = lines(&[BOOT, &end("pass")]);
    let c = f.config(Machine::Q35, &console, "exit 1");
    let dir = f.path("kept");
    let r = harness::run_in(&c, &dir).unwrap();
    assert!(r.passed(), "{r}");
    assert_eq!(
        fs::read_to_string(dir.join("console.log")).unwrap(),
        console
    );
    assert!(dir.join("qemu.log").is_file());
    // The command line names the console and QMP socket relative to QEMU's directory, so the
    // same config gives the same command wherever it runs.
    assert_eq!(r.command_line, c.command_line());
    assert!(r.reproduce().contains("file,path=console.log,id=con0"));
    assert!(r.reproduce().contains("unix:qmp.sock,server=on,wait=off"));
}

#[test]
fn spawn_exposes_the_qmp_socket_path() {
    let f = Fake::new();
    let c = f.config(Machine::Microvm, &lines(&[BOOT, &end("pass")]), "exit 1");
    let running = harness::spawn(&c).unwrap();
    assert!(running.pid() > 0);
    assert_eq!(running.qmp_socket(), running.dir().join("qmp.sock"));
    assert_eq!(running.console_path(), running.dir().join("console.log"));
    let dir = running.dir().to_path_buf();
    assert!(running.wait().unwrap().passed());
    assert!(
        !Path::new(&dir).exists(),
        "the temporary run directory is removed"
    );
}
