//! The matrix end to end against `harness fake-qemu`, a model of QEMU running a correct guest:
//! every cell must pass, and each way the model can be broken must fail with a reason that names
//! it. This pins the plumbing (disk images, QMP `cont` after `-S`, the echo backend, the console
//! port's files) that the real boots in tests/virtio.rs rely on.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use harness::Machine;
use harness::devices::{Ring, Transport};
use harness::matrix::{self, Cell, CellResult, CellVerdict, RunOptions};
use harness::oracle::{Expected, WriteRequest};
use harness::secure::SecureExpect;

struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn new() -> Fake {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("kernel"), "not a kernel").unwrap();
        Fake { dir }
    }

    /// A QEMU binary that runs the model, broken as `broken` says ("" for a correct one).
    fn qemu(&self, broken: &str) -> PathBuf {
        let p = self.dir.path().join(format!(
            "qemu-{}",
            if broken.is_empty() { "ok" } else { broken }
        ));
        fs::write(
            &p,
            format!(
                "#!/bin/sh\n{}={broken} exec '{}' fake-qemu \"$@\"\n",
                harness::fake::BREAK_ENV,
                env!("CARGO_BIN_EXE_harness")
            ),
        )
        .unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn opts(&self, broken: &str) -> RunOptions {
        RunOptions {
            kernel: Some(self.dir.path().join("kernel")),
            qemu: Some(self.qemu(broken)),
            timeout: Some(std::time::Duration::from_secs(30)),
            ..Default::default()
        }
    }
}

fn run(cell: &Cell, e: &Expected, opts: &RunOptions) -> CellResult {
    matrix::run_cell(cell, e, opts)
}

/// The standard workload with small disks: the same shape, a fraction of the bytes.
fn small(transport: Transport, ring: Ring) -> Expected {
    let mut e = matrix::standard_expected(transport, ring);
    e.disks[0].size = 256 << 10;
    e.disks[1].size = (128 << 10) + 3 * 512;
    e.write = Some(WriteRequest {
        disk: 0,
        offset: 64 << 10,
        len: 8 << 10,
        seed: 0x5347,
    });
    e
}

#[test]
fn a_correct_guest_passes_every_cell() {
    let fake = Fake::new();
    let opts = fake.opts("");
    let planned: Vec<_> = matrix::plan(true)
        .into_iter()
        .filter(|p| p.skip.is_none())
        .collect();
    assert_eq!(planned.len(), 20);
    let results = matrix::run_matrix(
        &planned,
        &|c: &Cell| matrix::standard_expected(c.transport, c.ring),
        &opts,
        4,
        &|_| {},
    );
    for r in &results {
        assert_eq!(r.verdict, CellVerdict::Pass, "\n{r}");
    }
}

#[test]
fn the_second_disk_and_the_limits() {
    let fake = Fake::new();
    for (machine, transport) in [
        (Machine::Microvm, Transport::MmioV1),
        (Machine::Pc, Transport::PciLegacy),
    ] {
        let cell = Cell {
            machine,
            firmware: None,
            transport,
            ring: Ring::Packed,
        };
        let mut e = small(transport, Ring::Packed);
        let size = e.disks[1].size;
        e.write = Some(WriteRequest {
            disk: 1,
            offset: size - 1024,
            len: 1024,
            seed: 3,
        });
        e.blk_read = Some(4096);
        e.net.as_mut().unwrap().frames = 2;
        e.console.as_mut().unwrap().read_limit = 5;
        let r = run(&cell, &e, &fake.opts(""));
        assert_eq!(r.verdict, CellVerdict::Pass, "\n{r}");
    }
}

#[test]
fn a_broken_guest_fails_for_the_right_reason() {
    let fake = Fake::new();
    let cell = Cell {
        machine: Machine::Q35,
        firmware: None,
        transport: Transport::PciModern,
        ring: Ring::Packed,
    };
    let e = small(cell.transport, cell.ring);
    for (broken, want) in [
        ("no-virtio", "no `virtio` records"),
        ("blk-read", "read_crc32c"),
        ("blk-write", "do not hold the pattern"),
        ("net-frame", "frames_verified 7 of frames_sent 8"),
        ("console-line", "console port received 62 bytes"),
    ] {
        let r = run(&cell, &e, &fake.opts(broken));
        assert_eq!(r.verdict, CellVerdict::Fail, "{broken}\n{r}");
        assert!(
            r.failures.iter().any(|f| f.contains(want)),
            "{broken}: want {want:?}\n{r}"
        );
    }
}

#[test]
fn qemu_refusing_its_arguments_is_quick_and_says_why() {
    let fake = Fake::new();
    let cell = Cell {
        machine: Machine::Q35,
        firmware: None,
        transport: Transport::PciLegacy,
        ring: Ring::Split,
    };
    let r = run(
        &cell,
        &small(cell.transport, cell.ring),
        &fake.opts("refuse"),
    );
    assert_eq!(r.verdict, CellVerdict::Crashed, "\n{r}");
    assert!(r.reason.contains("No 'PCI' bus found"), "\n{r}");
    assert!(r.wall_time < std::time::Duration::from_secs(5), "\n{r}");
}

#[test]
fn kept_files_and_reproduce() {
    let fake = Fake::new();
    let out = tempfile::tempdir().unwrap();
    let mut opts = fake.opts("");
    opts.out_dir = Some(out.path().to_path_buf());
    let cell = Cell {
        machine: Machine::Microvm,
        firmware: None,
        transport: Transport::MmioV2,
        ring: Ring::Split,
    };
    let r = run(
        &cell,
        &matrix::standard_expected(cell.transport, cell.ring),
        &opts,
    );
    assert_eq!(r.verdict, CellVerdict::Pass, "\n{r}");
    let dir = out.path().join("microvm-mmio-v2-split");
    assert_eq!(r.dir.as_deref(), Some(dir.as_path()));
    assert!(dir.join("console.log").is_file());
    assert!(
        !dir.join("disk0.img").exists(),
        "images of a passing cell are removed"
    );
    let cmd = fs::read_to_string(dir.join(matrix::COMMAND_FILE)).unwrap();
    assert!(cmd.contains("echo-server --port"), "{cmd}");
    assert!(!cmd.contains(" -S"), "{cmd}");
    assert!(r.qemu_command.ends_with(" -S"), "{}", r.qemu_command);
    assert_eq!(
        r.reproduce,
        "cargo run -p harness -- matrix --filter microvm/mmio-v2/split"
    );

    // A failing cell keeps its images.
    let mut opts = fake.opts("blk-write");
    opts.out_dir = Some(out.path().to_path_buf());
    let r = run(&cell, &small(cell.transport, cell.ring), &opts);
    assert_eq!(r.verdict, CellVerdict::Fail, "\n{r}");
    assert!(dir.join("disk0.img").is_file());
}

fn secure_opts(fake: &Fake, broken: &str, s: SecureExpect) -> RunOptions {
    RunOptions {
        secure: Some(s),
        ..fake.opts(broken)
    }
}

/// `--secure emulate` end to end against the model: held at shutdown, pool and secret region
/// dumped over QMP, every oracle passes, on every cell (x86 legacy cells refuse their devices,
/// pseries bounces them with sg.legacy_devices=bounce).
#[test]
fn secure_emulate_passes_every_cell() {
    let fake = Fake::new();
    let opts = secure_opts(&fake, "", SecureExpect::emulate());
    let planned: Vec<_> = matrix::plan(true)
        .into_iter()
        .filter(|p| p.skip.is_none())
        .collect();
    let results = matrix::run_matrix(&planned, &|c: &Cell| small_for(c, &opts), &opts, 4, &|_| {});
    for r in &results {
        assert_eq!(r.verdict, CellVerdict::Pass, "\n{r}");
        let held = r.run.as_ref().unwrap().held.as_ref().unwrap();
        assert!(held.paused && held.dumps.len() == 2, "\n{r}");
        assert!(r.reproduce.contains(" --secure emulate"), "{}", r.reproduce);
    }
}

/// The standard secure workload with small disks.
fn small_for(c: &Cell, opts: &RunOptions) -> Expected {
    matrix::secure_expected(c, small(c.transport, c.ring), opts.secure.unwrap())
}

#[test]
fn secure_on_is_rejected_and_that_passes() {
    let fake = Fake::new();
    let opts = secure_opts(&fake, "", SecureExpect::on());
    for c in [
        Cell {
            machine: Machine::Q35,
            firmware: None,
            transport: Transport::PciModern,
            ring: Ring::Split,
        },
        Cell {
            machine: Machine::Pseries,
            firmware: Some(harness::Firmware::Vof),
            transport: Transport::PciLegacy,
            ring: Ring::Split,
        },
    ] {
        let r = run(&c, &small_for(&c, &opts), &opts);
        assert_eq!(r.verdict, CellVerdict::Pass, "\n{r}");
        assert_eq!(r.run.as_ref().unwrap().verdict, harness::Outcome::Reject);
    }
}

/// The negative control against the model: sg.debug.leak=1 leaves the release probe's marks and
/// disk data in the pool; the memory oracle must fail the cell.
#[test]
fn the_leak_is_caught() {
    let fake = Fake::new();
    let opts = secure_opts(
        &fake,
        "",
        SecureExpect {
            leak: true,
            ..SecureExpect::emulate()
        },
    );
    let c = Cell {
        machine: Machine::Microvm,
        firmware: None,
        transport: Transport::MmioV2,
        ring: Ring::Packed,
    };
    let r = run(&c, &small_for(&c, &opts), &opts);
    assert_eq!(r.verdict, CellVerdict::Fail, "\n{r}");
    assert!(r.reason.contains("256 secret-marked records"), "\n{r}");
    assert!(r.reason.contains("the release probe's mark"), "\n{r}");
    assert!(
        r.failures
            .iter()
            .any(|f| f.contains("still holds") && f.contains("disk0.img (blk read data)")),
        "\n{r}"
    );
    assert!(
        r.reproduce.ends_with("--secure emulate --leak"),
        "{}",
        r.reproduce
    );
}

#[test]
fn broken_secure_guests_and_hosts_fail_for_the_right_reason() {
    let fake = Fake::new();
    let c = Cell {
        machine: Machine::Q35,
        firmware: None,
        transport: Transport::PciModern,
        ring: Ring::Split,
    };
    let e = |o: &RunOptions| small_for(&c, o);
    for (broken, verdict, want) in [
        (
            "secret-in-pool",
            CellVerdict::Fail,
            "1 secret-marked records",
        ),
        (
            "no-marks",
            CellVerdict::Fail,
            "0 of 4096 records are valid secret marks",
        ),
        (
            "no-hold",
            CellVerdict::Crashed,
            "instead of holding at the guest's power-off",
        ),
        (
            "net-frame",
            CellVerdict::Fail,
            "frames_verified 7 of frames_sent 8",
        ),
    ] {
        let o = secure_opts(&fake, broken, SecureExpect::emulate());
        let r = run(&c, &e(&o), &o);
        assert_eq!(r.verdict, verdict, "{broken}\n{r}");
        assert!(
            r.reason.contains(want) || r.failures.iter().any(|f| f.contains(want)),
            "{broken}: want {want:?}\n{r}"
        );
    }
    // A held reset: x86's ACPI off may lose that race, pseries' RTAS power-off may not.
    let o = secure_opts(&fake, "reset", SecureExpect::emulate());
    assert_eq!(run(&c, &e(&o), &o).verdict, CellVerdict::Pass);
    let ppc = Cell {
        machine: Machine::Pseries,
        firmware: Some(harness::Firmware::Vof),
        transport: Transport::PciModern,
        ring: Ring::Split,
    };
    let r = run(&ppc, &small_for(&ppc, &o), &o);
    assert_eq!(r.verdict, CellVerdict::Crashed, "\n{r}");
    assert!(r.reason.contains("reason guest-reset"), "\n{r}");
}

/// `harness::run` of a held config: QEMU started at -S, let go over QMP, held, the report's
/// ranges dumped, quit; the verdict is the `end` record's.
#[test]
fn run_holds_and_dumps() {
    let fake = Fake::new();
    let mut config = harness::QemuConfig::new(Machine::Pc).unwrap();
    config.qemu_binary = Some(fake.qemu(""));
    config.kernel = fake.dir.path().join("kernel");
    config.hold_at_shutdown = true;
    assert!(config.validate().is_err(), "the exit device is in the way");
    config.exit_device = false;
    config.append = Some("sg.secure=emulate".into());
    let dir = fake.dir.path().join("held");
    let r = harness::run_in(&config, &dir).unwrap();
    assert_eq!(r.verdict, harness::Outcome::Pass, "{r}");
    assert!(r.command_line.ends_with(&["-S".to_string()]), "{r}");
    assert!(r.reproduce().contains(" -action shutdown=pause "), "{r}");
    let held = r.held.as_ref().unwrap();
    assert_eq!(held.reason.as_deref(), Some("guest-shutdown"));
    let files: Vec<&str> = held.dumps.iter().map(|d| d.file.as_str()).collect();
    assert_eq!(
        files,
        ["dump-swiotlb-0x1fa00000.bin", "dump-secret-0x4000000.bin"]
    );
    for d in &held.dumps {
        assert_eq!(fs::read(dir.join(&d.file)).unwrap(), d.data);
    }
    assert_eq!(
        secure_guest::platform::secret::find_marks(&held.dumps[1].data).count(),
        4096
    );
    // Not secure: held all the same, nothing to dump.
    config.append = None;
    let r = harness::run(&config).unwrap();
    assert_eq!(r.verdict, harness::Outcome::Pass, "{r}");
    assert!(r.held.as_ref().unwrap().dumps.is_empty());
    // A QEMU that exits instead of holding.
    config.qemu_binary = Some(fake.qemu("no-hold"));
    let r = harness::run(&config).unwrap();
    assert_eq!(r.verdict, harness::Outcome::Crashed, "{r}");
}
