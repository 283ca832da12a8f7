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
