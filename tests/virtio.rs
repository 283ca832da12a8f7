//! Virtio integration tests: boot the real images (`make images`) with devices on every machine,
//! transport and ring, and check on the host what the guest moved (docs/report.md, `virtio` and
//! "The data the guest moves"), through the harness's matrix and oracles.
//!
//! Each cell carries every device at once: two disks (one written with the pattern, the other
//! must stay untouched), a NIC on the harness's echo backend, a console port with a line in each
//! direction, and an entropy source. Before the verdict, each test checks that QEMU built the
//! devices and the guest's device tree / PCI scan shows them, so that a broken QEMU command line
//! is told apart from a broken driver.
//!
//! `echo_backend_speaks_qemu_stream_framing` and `console_chardev_reads_input_path` pin what the
//! harness assumes about QEMU itself, without a guest.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use harness::devices::{Mac, Ring, Transport};
use harness::echo::{EchoBackend, echo_frame, guest_frame};
use harness::matrix::{self, Cell, CellResult, CellVerdict, RunOptions};
use harness::oracle::{Expected, WriteRequest};
use harness::{Firmware, Machine, QemuConfig, RunResult};

fn image_present(cell: &Cell) {
    let path = harness::default_kernel(cell.machine.arch(), "secure-guest");
    assert!(
        path.is_file(),
        "{} is missing: run `make images` first",
        path.display()
    );
}

/// The device IDs the guest should see: virtio-pci modern (0x1040 + type) or legacy
/// (transitional IDs), or one virtio-mmio node per device.
fn check_devices_seen(cell: &Cell, e: &Expected, r: &CellResult, run: &RunResult) {
    let dt = run
        .devtree()
        .unwrap_or_else(|| panic!("no devtree record\n{r}"));
    let n_devices = e.disks.len()
        + usize::from(e.net.is_some())
        + usize::from(e.console.is_some())
        + usize::from(e.rng);
    if cell.transport.is_mmio() {
        assert_eq!(
            dt.virtio_mmio.len(),
            n_devices,
            "virtio-mmio nodes in the device tree\n{r}"
        );
        return;
    }
    let id = |modern: u64, legacy: u64| {
        if cell.transport.is_legacy() {
            legacy
        } else {
            modern
        }
    };
    let mut want: Vec<u64> = Vec::new();
    want.extend(e.disks.iter().map(|_| id(0x1042, 0x1001)));
    if e.net.is_some() {
        want.push(id(0x1041, 0x1000));
    }
    if e.console.is_some() {
        want.push(id(0x1043, 0x1003));
    }
    if e.rng {
        want.push(id(0x1044, 0x1005));
    }
    want.sort();
    let mut seen: Vec<u64> = dt
        .pci
        .iter()
        .filter(|p| p.virtio)
        .map(|p| p.device.0)
        .collect();
    seen.sort();
    assert_eq!(seen, want, "virtio PCI device IDs\n{r}");
}

/// Runs `cell` with `expected`: the devices must reach the guest, and the cell must pass.
fn check_with(cell: Cell, expected: Expected) -> CellResult {
    image_present(&cell);
    let r = matrix::run_cell(&cell, &expected, &RunOptions::default());
    assert_ne!(r.verdict, CellVerdict::Skip, "{r}");
    let run = r.contract_kept_run();
    check_devices_seen(&cell, &expected, &r, run);
    assert_eq!(r.verdict, CellVerdict::Pass, "\n{r}");
    r
}

fn check_cell(machine: Machine, firmware: Option<Firmware>, transport: Transport, ring: Ring) {
    let cell = Cell {
        machine,
        firmware,
        transport,
        ring,
    };
    check_with(cell, matrix::standard_expected(transport, ring));
}

/// One test per matrix cell that runs by default, so that a failure names its cell.
macro_rules! cells {
    ($machine:expr, $firmware:expr; $($name:ident: $t:ident $r:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                super::check_cell($machine, $firmware, Transport::$t, Ring::$r);
            }
        )*
    };
}

mod pseries_vof {
    use super::*;
    cells!(Machine::Pseries, Some(Firmware::Vof);
        pci_modern_split: PciModern Split,
        pci_modern_packed: PciModern Packed,
        pci_legacy_split: PciLegacy Split,
        pci_legacy_packed: PciLegacy Packed,
    );
}

/// SLOF costs ~5 s of TCG per boot: two cells that between them cover both PCI interfaces and
/// both rings after SLOF has probed (and left behind) the devices.
mod pseries_slof {
    use super::*;
    cells!(Machine::Pseries, Some(Firmware::Slof);
        pci_modern_packed: PciModern Packed,
        pci_legacy_split: PciLegacy Split,
    );
}

mod microvm {
    use super::*;
    cells!(Machine::Microvm, None;
        mmio_v1_split: MmioV1 Split,
        mmio_v1_packed: MmioV1 Packed,
        mmio_v2_split: MmioV2 Split,
        mmio_v2_packed: MmioV2 Packed,
    );
}

mod q35 {
    use super::*;
    cells!(Machine::Q35, None;
        pci_modern_split: PciModern Split,
        pci_modern_packed: PciModern Packed,
        pci_legacy_split: PciLegacy Split,
        pci_legacy_packed: PciLegacy Packed,
    );
}

mod pc {
    use super::*;
    cells!(Machine::Pc, None;
        pci_modern_split: PciModern Split,
        pci_modern_packed: PciModern Packed,
        pci_legacy_split: PciLegacy Split,
        pci_legacy_packed: PciLegacy Packed,
    );
}

/// The tests above are the matrix's default cells, no more, no less.
#[test]
fn tests_cover_the_matrix() {
    let mut run: Vec<String> = matrix::plan(false)
        .into_iter()
        .filter(|p| p.skip.is_none())
        .map(|p| p.cell.name())
        .collect();
    run.sort();
    let mut here: Vec<String> = Vec::new();
    for (platform, cells) in [
        (
            "pseries-vof",
            &[
                "pci-modern/split",
                "pci-modern/packed",
                "pci-legacy/split",
                "pci-legacy/packed",
            ][..],
        ),
        (
            "pseries-slof",
            &["pci-modern/packed", "pci-legacy/split"][..],
        ),
        (
            "microvm",
            &[
                "mmio-v1/split",
                "mmio-v1/packed",
                "mmio-v2/split",
                "mmio-v2/packed",
            ][..],
        ),
        (
            "q35",
            &[
                "pci-modern/split",
                "pci-modern/packed",
                "pci-legacy/split",
                "pci-legacy/packed",
            ][..],
        ),
        (
            "pc",
            &[
                "pci-modern/split",
                "pci-modern/packed",
                "pci-legacy/split",
                "pci-legacy/packed",
            ][..],
        ),
    ] {
        here.extend(cells.iter().map(|c| format!("{platform}/{c}")));
    }
    here.sort();
    assert_eq!(run, here);
}

/// `sg.blk.disk=1`: the second blk device in report order gets the write (the oracle finds its
/// image by capacity; when that is the odd-sized disk, the write ends on its last sector), the
/// other image must stay untouched. Also the limits: `sg.blk.read`, `sg.net.frames`,
/// `sg.console.read`.
#[test]
fn blk_write_to_the_second_disk_and_limits() {
    for (machine, transport) in [
        (Machine::Microvm, Transport::MmioV2),
        (Machine::Q35, Transport::PciModern),
    ] {
        let mut e = matrix::standard_expected(transport, Ring::Split);
        let odd = e.disks[1].size;
        e.write = Some(WriteRequest {
            disk: 1,
            offset: odd - 8192 - 512,
            len: 8192 + 512,
            seed: 0xfeed_f00d_dead_beef,
        });
        e.blk_read = Some(64 << 10);
        e.net.as_mut().unwrap().frames = 3;
        e.console.as_mut().unwrap().read_limit = 5;
        let cell = Cell {
            machine,
            firmware: None,
            transport,
            ring: Ring::Split,
        };
        check_with(cell, e);
    }
}

/// A private directory, removed at the end (the root package has no `tempfile`).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A QEMU that this test owns: killed when the test ends, however it ends.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// QEMU's `-netdev stream` frames each packet with a 4-byte big-endian length, both ways, and
/// the echo backend speaks it: two stream netdevs on one QEMU hub, one to the backend, one to
/// this test (standing in for the guest's NIC). A frame sent here comes back echoed.
#[test]
fn echo_backend_speaks_qemu_stream_framing() {
    let backend = EchoBackend::start().unwrap();
    let guest_side = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let guest_port = guest_side.local_addr().unwrap().port();
    let qemu = QemuConfig::new(Machine::Pc).unwrap().qemu_program();
    let stream = |id: &str, port: u16| {
        format!("stream,id={id},server=off,addr.type=inet,addr.host=127.0.0.1,addr.port={port}")
    };
    // A running machine (hubs only forward while the VM runs); it has nothing to boot and sits
    // in its BIOS until it is killed, or until SeaBIOS retries the boot after 20 s and
    // `-no-reboot` ends it (should this test process die without killing it).
    let _qemu = Qemu(
        Command::new(&qemu)
            .args(["-M", "pc", "-nodefaults", "-display", "none"])
            .args([
                "-monitor",
                "none",
                "-no-reboot",
                "-boot",
                "reboot-timeout=20000",
            ])
            .args(["-netdev", &stream("toguest", guest_port)])
            .args(["-netdev", &stream("toecho", backend.port())])
            .args(["-netdev", "hubport,id=h0,hubid=0,netdev=toguest"])
            .args(["-netdev", "hubport,id=h1,hubid=0,netdev=toecho"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", qemu.display())),
    );
    guest_side.set_nonblocking(false).unwrap();
    let (mut conn, _) = {
        // Bounded: accept in a thread and wait for it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(guest_side.accept());
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("QEMU did not connect within 10 s")
            .unwrap()
    };
    assert!(
        backend.wait_connected(Duration::from_secs(10)),
        "QEMU did not connect to the echo backend"
    );
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mac = Mac([0x52, 0x54, 0x00, 0x53, 0x47, 0x09]);
    for seq in 0..3 {
        let f = guest_frame(mac, seq);
        let mut framed = (f.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&f);
        conn.write_all(&framed).unwrap();
        let mut len = [0u8; 4];
        conn.read_exact(&mut len).unwrap();
        let mut echo = vec![0u8; u32::from_be_bytes(len) as usize];
        conn.read_exact(&mut echo).unwrap();
        assert_eq!(echo, echo_frame(&f).unwrap(), "seq {seq}");
    }
    let s = backend.stop();
    assert_eq!(
        (s.frames_seen, s.frames_well_formed, s.frames_echoed),
        (3, 3, 3),
        "{s:?}"
    );
    assert_eq!(s.sources, vec![mac]);
    assert!(s.problems.is_empty(), "{:?}", s.problems);
}

/// The console port's chardev: `file` with `input-path` reads the input file and writes the
/// output file (here QEMU's monitor is the frontend: it reads two commands and quits).
#[test]
fn console_chardev_reads_input_path() {
    let dir = TempDir::new("sg-virtio-chardev");
    std::fs::write(dir.path().join("in"), "info version\nquit\n").unwrap();
    let qemu = QemuConfig::new(Machine::Pc).unwrap().qemu_program();
    let mut child = Qemu(
        Command::new(&qemu)
            .current_dir(dir.path())
            .args(["-M", "none", "-nodefaults", "-display", "none"])
            .args(["-chardev", "file,id=m,path=out,input-path=in"])
            .args(["-mon", "chardev=m,mode=readline"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", qemu.display())),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "QEMU did not read `quit` from the input file"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status}");
    let out = std::fs::read_to_string(dir.path().join("out")).unwrap();
    let version = out
        .lines()
        .any(|l| l.starts_with(|c: char| c.is_ascii_digit()) && l.contains('.'));
    assert!(
        out.contains("(qemu)") && version,
        "the monitor's prompt and its answer to `info version` are in the output file: {out:?}"
    );
}
