//! The virtio matrix: every machine × firmware × transport × ring, each run carrying every device
//! at once (two disks, a NIC, a console, an entropy source), checked by the host oracles
//! ([`crate::oracle`]).
//!
//! A cell is one QEMU run: [`run_cell`] makes the disk images and the console input in the run
//! directory, starts the net echo backend, boots QEMU held at `-S`, lets the guest go (QMP
//! `cont`) once QEMU is connected to the backend (a frame sent before that would be lost), waits,
//! and hands the report, the images, the backend's counts and the console port's output to the
//! oracles. [`run_matrix`] runs many cells on N threads, longest first.
//!
//! What is in the matrix ([`plan`]): microvm with mmio v1 and v2; q35, pc and pseries (VOF) with
//! pci modern and legacy; each with split and packed rings asked for. SLOF costs ~5 s of TCG per
//! boot, so only two of its four cells run by default (modern+packed, legacy+split: between them
//! every transport feature SLOF could leave behind); `all_slof` runs the other two. Combinations
//! QEMU cannot build are listed as `skip` with QEMU's reason.
//!
//! Secure cells ([`RunOptions::secure`], `--secure emulate`): the same cells with
//! `sg.secure=emulate` ([`secure_expected`]). On x86 every device gets `iommu_platform=on`, so
//! mmio v2 and pci modern devices offer `ACCESS_PLATFORM` and go on the bounce path, while mmio v1
//! and pci legacy devices cannot offer it and are refused (unless `--legacy-devices bounce`); a
//! refused cell asks for no write. Plain pseries cells have no `iommu_platform` and
//! `sg.legacy_devices=bounce` (the bounce path without an IOMMU). Each emulate cell is held at
//! shutdown, its pool and secret regions are dumped, and [`crate::secure::check`] adds the memory
//! oracle to the data oracles. `--secure on` expects every cell to be rejected, with nothing
//! touched.
//!
//! IOMMU cells ([`RunOptions::tce`], `--tce dynamic|ddw`): the pseries pci-modern cells with
//! their devices behind the PHB's TCE IOMMU ([`iommu_expected`]: `iommu_platform=on`, `sg.tce`),
//! on `iommu`, or `iommu+bounce` with `--secure emulate`. QEMU traces the IOMMU
//! ([`traced_iommu`]) and the IOMMU trace oracle ([`crate::iommu::check_run`]) joins the others.
//! `--x86-iommu virtio-iommu|vt-d` ([`RunOptions::x86_iommu`]) does the same for the x86 cells
//! that can have that IOMMU (q35, and pc for virtio-iommu; pci modern): QEMU gets the IOMMU
//! device, the devices `iommu_platform=on`. Cells without the IOMMU asked for are skipped
//! ([`option_skip`]); both options together give every machine its own.
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::config::{Accel, Firmware, Machine, QemuConfig, shell_join};
use crate::devices::{Device, Iommu, Mac, Ring, Transport, VirtioSetup};
use crate::dump;
use crate::echo::{self, EchoBackend};
use crate::iommu;
use crate::oracle::{
    self, ConsoleExpect, DiskImage, Expected, IommuExpect, NetExpect, Observed, WriteRequest,
};
use crate::report::{DeviceResult, Error, Virtio};
use crate::run::{Outcome, RunResult};
use crate::secure::{self, LegacyDevices, SecureExpect, SecureMode};
use crate::trace::{self, IommuKind};

/// The console port's capture and input, in the run directory.
pub const CONSOLE_OUT: &str = "virtcon.out";
pub const CONSOLE_IN: &str = "virtcon.in";
/// The QEMU command of a cell, for running it by hand, in the run directory.
pub const COMMAND_FILE: &str = "command.sh";

/// The MAC every matrix NIC gets.
pub const MAC: Mac = Mac([0x52, 0x54, 0x00, 0x53, 0x47, 0x01]);
/// What the host sends on the console port.
pub const CONSOLE_INPUT: &[u8] = b"hello secure-guest, this is the host\n";

/// One combination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cell {
    pub machine: Machine,
    /// pseries only.
    pub firmware: Option<Firmware>,
    pub transport: Transport,
    pub ring: Ring,
}

impl Cell {
    /// `microvm`, `q35`, `pc`, `pseries-vof`, `pseries-slof`.
    pub fn platform(&self) -> String {
        match (self.machine, self.firmware) {
            (Machine::Pseries, f) => format!("pseries-{}", f.unwrap_or(Firmware::Vof)),
            (m, _) => m.to_string(),
        }
    }

    /// `q35/pci-modern/packed`: unique, and a `--filter` that selects only this cell.
    pub fn name(&self) -> String {
        format!("{}/{}/{}", self.platform(), self.transport, self.ring)
    }

    /// A directory name for the cell's files.
    pub fn dir_name(&self) -> String {
        self.name().replace('/', "-")
    }

    fn is_slof(&self) -> bool {
        self.machine == Machine::Pseries && self.firmware == Some(Firmware::Slof)
    }

    /// Seconds a run usually takes under TCG, for scheduling and the default timeout.
    fn cost(&self) -> u32 {
        if self.is_slof() { 6 } else { 1 }
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// A cell and, when it is not run, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub cell: Cell,
    pub skip: Option<String>,
}

/// Every combination, in table order; `all_slof` runs every SLOF cell instead of two.
pub fn plan(all_slof: bool) -> Vec<Planned> {
    let platforms = [
        (Machine::Pseries, Some(Firmware::Vof)),
        (Machine::Pseries, Some(Firmware::Slof)),
        (Machine::Microvm, None),
        (Machine::Q35, None),
        (Machine::Pc, None),
    ];
    let mut out = Vec::new();
    for (machine, firmware) in platforms {
        for transport in Transport::ALL {
            for ring in Ring::ALL {
                let cell = Cell {
                    machine,
                    firmware,
                    transport,
                    ring,
                };
                let mut skip = transport.supported_on(machine).err();
                let representative = matches!(
                    (transport, ring),
                    (Transport::PciModern, Ring::Packed) | (Transport::PciLegacy, Ring::Split)
                );
                if skip.is_none() && cell.is_slof() && !all_slof && !representative {
                    skip = Some(
                        "SLOF: ~5 s per boot, only pci-modern/packed and pci-legacy/split run \
                         by default (--all-slof runs it)"
                            .into(),
                    );
                }
                out.push(Planned { cell, skip });
            }
        }
    }
    out
}

/// Keeps the cells whose name contains every filter.
pub fn filter(plan: Vec<Planned>, filters: &[String]) -> Vec<Planned> {
    plan.into_iter()
        .filter(|p| filters.iter().all(|f| p.cell.name().contains(f.as_str())))
        .collect()
}

/// What every matrix cell does: two disks (4 MiB, and 2 MiB + 3 sectors: an odd number of
/// sectors), a 68 KiB pattern write at 1 MiB + 4 KiB to the first blk device in report order,
/// 8 echoed frames, the console line out and one line in, and entropy.
pub fn standard_expected(transport: Transport, ring: Ring) -> Expected {
    Expected {
        transport,
        ring,
        disks: vec![
            DiskImage {
                id: "disk0".into(),
                file: "disk0.img".into(),
                size: 4 << 20,
                seed: 7,
                serial: "sg-disk0".into(),
            },
            DiskImage {
                id: "disk1".into(),
                file: "disk1.img".into(),
                size: (2 << 20) + 3 * 512,
                seed: 8,
                serial: "sg-disk1".into(),
            },
        ],
        blk_read: None,
        write: Some(WriteRequest {
            disk: 0,
            offset: (1 << 20) + 4096,
            len: 68 << 10,
            seed: 0x5347,
        }),
        net: Some(NetExpect {
            mac: MAC,
            frames: echo::DEFAULT_FRAMES,
        }),
        console: Some(ConsoleExpect {
            input: CONSOLE_INPUT.to_vec(),
            read_limit: oracle::DEFAULT_CONSOLE_READ,
        }),
        rng: true,
        iommu_platform: false,
        secure: None,
        iommu: None,
    }
}

/// How cells run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Default: `$ACCEL`, else TCG.
    pub accel: Option<Accel>,
    /// Default: 60 s for SLOF, 30 s otherwise.
    pub timeout: Option<Duration>,
    /// Keep each cell's files in `<out_dir>/<cell>` (disk images only when it did not pass).
    /// `None`: a temporary directory, removed afterwards.
    pub out_dir: Option<PathBuf>,
    /// Default: `build/secure-guest-<arch>`.
    pub kernel: Option<PathBuf>,
    /// Default: `$QEMU`, else `PATH`.
    pub qemu: Option<PathBuf>,
    /// Secure cells: `sg.secure` and friends for every cell (see [`secure_expected`]).
    pub secure: Option<SecureExpect>,
    /// IOMMU cells (`matrix --tce`): pseries pci-modern devices behind the PHB's TCE IOMMU with
    /// this `sg.tce`, traced and checked by the IOMMU trace oracle (see [`iommu_expected`]).
    pub tce: Option<TceMode>,
    /// IOMMU cells (`matrix --x86-iommu`): x86 pci-modern devices behind this IOMMU, traced and
    /// checked by the IOMMU trace oracle (see [`x86_iommu_expected`]).
    pub x86_iommu: Option<Iommu>,
}

/// `sg.tce` of IOMMU cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TceMode {
    /// Each request mapped in the default 32-bit window.
    Dynamic,
    /// All RAM (secure: the pool) mapped once in a DDW window.
    Ddw,
}

impl TceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TceMode::Dynamic => "dynamic",
            TceMode::Ddw => "ddw",
        }
    }
}

impl fmt::Display for TceMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TceMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "dynamic" => Ok(TceMode::Dynamic),
            "ddw" => Ok(TceMode::Ddw),
            _ => anyhow::bail!("unknown sg.tce mode {s:?} (dynamic, ddw)"),
        }
    }
}

/// Why `cell` does not run under `opts`, when an option narrows the matrix: `--tce` needs a
/// pseries PHB, `--x86-iommu` an x86 machine that can have that IOMMU, and both a transport that
/// can offer `ACCESS_PLATFORM`. With both options, each machine takes the one that fits it.
pub fn option_skip(cell: &Cell, opts: &RunOptions) -> Option<String> {
    if opts.tce.is_none() && opts.x86_iommu.is_none() {
        return None;
    }
    let flag = match (cell.machine, opts.tce, opts.x86_iommu) {
        (Machine::Pseries, Some(_), _) => "--tce",
        (Machine::Pseries, None, _) => {
            return Some(
                "--x86-iommu: pseries has its own IOMMU, the PHB's TCE tables (--tce)".into(),
            );
        }
        (m, _, None) => {
            return Some(format!(
                "--tce: {m} has no TCE IOMMU (--x86-iommu puts x86 devices behind one)"
            ));
        }
        (m, _, Some(i)) => {
            if let Err(e) = i.qemu_args(m) {
                return Some(format!("--x86-iommu {i}: {e}"));
            }
            "--x86-iommu"
        }
    };
    cell.transport.is_legacy().then(|| {
        format!(
            "{flag}: a legacy device cannot offer ACCESS_PLATFORM, so it never sits behind the \
             IOMMU (QEMU refuses iommu_platform=on on it)"
        )
    })
}

/// `plan` with the cells `opts` rules out marked as skipped ([`option_skip`]).
pub fn apply_options(plan: Vec<Planned>, opts: &RunOptions) -> Vec<Planned> {
    plan.into_iter()
        .map(|mut p| {
            if p.skip.is_none() {
                p.skip = option_skip(&p.cell, opts);
            }
            p
        })
        .collect()
}

/// What a cell does: [`standard_expected`], behind the IOMMU `opts.tce` or `opts.x86_iommu`
/// asks for, made secure as `opts.secure` asks.
pub fn expected_for(cell: &Cell, opts: &RunOptions) -> Expected {
    let mut e = standard_expected(cell.transport, cell.ring);
    if option_skip(cell, opts).is_none() {
        match (cell.machine, opts.tce, opts.x86_iommu) {
            (Machine::Pseries, Some(t), _) => e = iommu_expected(e, t),
            (Machine::Pseries, None, _) => {}
            (_, _, Some(i)) => e = x86_iommu_expected(e, i),
            (_, _, None) => {}
        }
    }
    match &opts.secure {
        Some(s) => secure_expected(cell, e, *s),
        None => e,
    }
}

/// `e` with its devices behind the PHB's TCE IOMMU: `iommu_platform=on` (modern devices offer
/// `ACCESS_PLATFORM`) and `sg.tce=MODE`. The devices take `iommu` (`iommu+bounce` when secure),
/// and the run is traced and checked by the IOMMU trace oracle ([`crate::iommu`]).
pub fn iommu_expected(mut e: Expected, mode: TceMode) -> Expected {
    e.iommu_platform = true;
    e.iommu = Some(IommuExpect {
        tce: Some(mode.as_str()),
        no_batch: false,
        x86: None,
    });
    e
}

/// `e` with its devices behind the x86 IOMMU `iommu`, which QEMU gets as a device:
/// `iommu_platform=on`, so the devices take `iommu` (`iommu+bounce` when secure), traced and
/// checked by the IOMMU trace oracle.
pub fn x86_iommu_expected(mut e: Expected, iommu: Iommu) -> Expected {
    e.iommu_platform = true;
    e.iommu = Some(IommuExpect {
        tce: None,
        no_batch: false,
        x86: Some(iommu),
    });
    e
}

/// The IOMMU whose trace events a cell's run enables: the pseries TCE IOMMU or the x86 IOMMU
/// when the devices sit behind it.
pub fn traced_iommu(cell: &Cell, e: &Expected) -> Option<IommuKind> {
    let i = e.iommu.as_ref().filter(|_| e.access_platform_offered())?;
    match (cell.machine, i.x86) {
        (Machine::Pseries, _) => Some(IommuKind::SpaprTce),
        (_, Some(Iommu::VirtioIommu)) => Some(IommuKind::VirtioIommu),
        (_, Some(Iommu::Vtd)) => Some(IommuKind::IntelVtd),
        (_, None) => None,
    }
}

/// `e` with the secure options `s`, adapted to the cell: x86 devices get `iommu_platform=on`
/// where the transport can offer `ACCESS_PLATFORM`; pseries devices do only in IOMMU cells
/// (`iommu+bounce`), and otherwise run without it and default to `sg.legacy_devices=bounce`. A
/// cell whose devices will all be refused asks for no write.
pub fn secure_expected(cell: &Cell, mut e: Expected, mut s: SecureExpect) -> Expected {
    if s.mode == SecureMode::Emulate {
        if e.iommu.is_some() {
            // Behind an IOMMU: `iommu+bounce`, the IOMMU maps only the pool.
        } else if cell.machine == Machine::Pseries {
            e.iommu_platform = false;
            s.legacy.get_or_insert(LegacyDevices::Bounce);
        } else {
            e.iommu_platform = !cell.transport.is_legacy();
        }
    }
    e.secure = Some(s);
    if e.dma_expect() == crate::oracle::DmaExpect::Refused {
        e.write = None;
    }
    e
}

/// A cell's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CellVerdict {
    /// The guest passed and every oracle agrees.
    Pass,
    /// The guest failed, the report broke the contract, or an oracle disagrees.
    Fail,
    /// The guest refused the configuration.
    Reject,
    /// QEMU was killed at the timeout.
    Wedged,
    /// QEMU ended without a report, or did not start.
    Crashed,
    Skip,
}

impl CellVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            CellVerdict::Pass => "pass",
            CellVerdict::Fail => "fail",
            CellVerdict::Reject => "reject",
            CellVerdict::Wedged => "wedged",
            CellVerdict::Crashed => "crashed",
            CellVerdict::Skip => "skip",
        }
    }

    /// Everything but pass and skip makes the matrix fail.
    pub fn is_failure(self) -> bool {
        !matches!(self, CellVerdict::Pass | CellVerdict::Skip)
    }
}

impl fmt::Display for CellVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one cell.
#[derive(Clone, Debug)]
pub struct CellResult {
    pub cell: Cell,
    pub verdict: CellVerdict,
    /// One line: why (empty for a pass).
    pub reason: String,
    /// Every oracle failure and guest error, in full.
    pub failures: Vec<String>,
    pub wall_time: Duration,
    /// The command that runs this cell again, with its backends.
    pub reproduce: String,
    /// The QEMU command (held at `-S` by the harness; the copy in `command.sh` is not).
    pub qemu_command: String,
    /// Where the files were kept.
    pub dir: Option<PathBuf>,
    pub run: Option<RunResult>,
}

impl CellResult {
    /// For tests: the run, which must have happened and kept the report contract
    /// (docs/report.md); panics with the whole result otherwise.
    pub fn contract_kept_run(&self) -> &RunResult {
        let run = self
            .run
            .as_ref()
            .unwrap_or_else(|| panic!("QEMU did not run\n{self}"));
        assert!(
            run.protocol_errors.is_empty(),
            "report breaks docs/report.md\n{self}"
        );
        run
    }

    fn skipped(cell: Cell, reason: String, reproduce: String) -> CellResult {
        CellResult {
            cell,
            verdict: CellVerdict::Skip,
            reason,
            failures: Vec::new(),
            wall_time: Duration::ZERO,
            reproduce,
            qemu_command: String::new(),
            dir: None,
            run: None,
        }
    }
}

/// Everything about the cell, for a test failure or `--verbose`.
impl fmt::Display for CellResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "cell: {} -> {}", self.cell, self.verdict)?;
        if !self.reason.is_empty() {
            writeln!(f, "why: {}", self.reason)?;
        }
        for x in &self.failures {
            writeln!(f, "  - {x}")?;
        }
        writeln!(f, "reproduce: {}", self.reproduce)?;
        if let Some(d) = &self.dir {
            writeln!(f, "files: {}", d.display())?;
        }
        if let Some(r) = &self.run {
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// The reproduce command for a cell.
pub fn reproduce_command(cell: &Cell, opts: &RunOptions) -> String {
    let mut c = format!("cargo run -p harness -- matrix --filter {}", cell.name());
    if let Some(a) = opts.accel {
        c.push_str(&format!(" --accel {a}"));
    }
    if let Some(s) = &opts.secure {
        c.push_str(&format!(" --secure {}", s.mode));
        if let Some(l) = s.legacy {
            c.push_str(&format!(" --legacy-devices {l}"));
        }
        if s.leak {
            c.push_str(" --leak");
        }
    }
    if let Some(t) = opts.tce {
        c.push_str(&format!(" --tce {t}"));
    }
    if let Some(i) = opts.x86_iommu {
        c.push_str(&format!(" --x86-iommu {i}"));
    }
    if cell.is_slof() {
        c.push_str(" --all-slof");
    }
    c
}

/// Runs one cell with `expected` (see [`standard_expected`]).
pub fn run_cell(cell: &Cell, expected: &Expected, opts: &RunOptions) -> CellResult {
    let reproduce = reproduce_command(cell, opts);
    if let Err(why) = cell.transport.supported_on(cell.machine) {
        return CellResult::skipped(*cell, why, reproduce);
    }
    if let Some(why) = option_skip(cell, opts) {
        return CellResult::skipped(*cell, why, reproduce);
    }
    let started = Instant::now();
    match run_cell_inner(cell, expected, opts, &reproduce) {
        Ok(r) => r,
        Err(e) => CellResult {
            cell: *cell,
            verdict: CellVerdict::Crashed,
            reason: format!("{e:#}"),
            failures: Vec::new(),
            wall_time: started.elapsed(),
            reproduce,
            qemu_command: String::new(),
            dir: None,
            run: None,
        },
    }
}

fn run_cell_inner(
    cell: &Cell,
    expected: &Expected,
    opts: &RunOptions,
    reproduce: &str,
) -> Result<CellResult> {
    let started = Instant::now();
    // The run directory: kept, or temporary (removed when `_temp` drops).
    let (_temp, dir) = match &opts.out_dir {
        Some(out) => {
            let d = out.join(cell.dir_name());
            if d.exists() {
                fs::remove_dir_all(&d).with_context(|| format!("clearing {}", d.display()))?;
            }
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            (None, crate::config::absolute(&d))
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("sg-cell-")
                .tempdir()
                .context("creating the run directory")?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    for d in &expected.disks {
        d.create(&dir)?;
    }
    if let Some(c) = &expected.console {
        fs::write(dir.join(CONSOLE_IN), &c.input).context("writing the console input")?;
    }
    let backend = match &expected.net {
        Some(_) => Some(EchoBackend::start().context("starting the echo backend")?),
        None => None,
    };

    let mut devices = Vec::new();
    for d in &expected.disks {
        devices.push(Device::Blk {
            id: d.id.clone(),
            file: d.file.clone(),
            serial: Some(d.serial.clone()),
        });
    }
    if let (Some(n), Some(b)) = (&expected.net, &backend) {
        devices.push(Device::Net {
            id: "net0".into(),
            mac: n.mac,
            port: b.port(),
        });
    }
    if expected.console.is_some() {
        devices.push(Device::Console {
            id: "vser0".into(),
            output: CONSOLE_OUT.into(),
            input: Some(CONSOLE_IN.into()),
        });
    }
    if expected.rng {
        devices.push(Device::Rng { id: "rng0".into() });
    }
    let setup = VirtioSetup {
        transport: cell.transport,
        ring: cell.ring,
        devices,
        iommu_platform: expected.iommu_platform,
    };
    let args = setup
        .qemu_args(cell.machine)
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    let mut config = QemuConfig::new(cell.machine)?;
    config.firmware = cell.firmware;
    if let Some(a) = opts.accel {
        config.accel = a;
    }
    if let Some(k) = &opts.kernel {
        config.kernel = k.clone();
    }
    if let Some(q) = &opts.qemu {
        config.qemu_binary = Some(q.clone());
    }
    let cmdline = expected.cmdline();
    config.append = (!cmdline.is_empty()).then_some(cmdline);
    config.timeout = opts
        .timeout
        .unwrap_or(Duration::from_secs(if cell.is_slof() { 60 } else { 30 }));
    // An x86 IOMMU is a device of its own, before the ones behind it.
    config.extra_args = match expected.iommu.as_ref().and_then(|i| i.x86) {
        Some(i) => i
            .qemu_args(cell.machine)
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        None => Vec::new(),
    };
    config.extra_args.extend(args);
    // Devices behind an IOMMU: QEMU traces what the IOMMU does, for the IOMMU trace oracle.
    if let Some(k) = traced_iommu(cell, expected) {
        config.trace_events = trace::patterns_for(&[k]);
    }
    // Emulate cells end held at the guest's power-off, so that the memory can be dumped; x86
    // then needs the exit device off (its verdict is the `end` record's).
    let held = expected
        .secure
        .is_some_and(|s| s.mode == SecureMode::Emulate);
    if held {
        config.hold_at_shutdown = true;
        config.exit_device = false;
    }
    let by_hand = config.reproduce();
    config.extra_args.push("-S".into());
    fs::write(
        dir.join(COMMAND_FILE),
        format!(
            "#!/bin/sh\n# {cell}: run in this directory.{}\n{by_hand}\n",
            match &backend {
                Some(b) => format!(
                    " The NIC needs an echo backend on port {}:\n#   cargo run -p harness -- echo-server --port {}",
                    b.port(),
                    b.port()
                ),
                None => String::new(),
            }
        ),
    )
    .context("writing command.sh")?;

    let mut running = crate::run::spawn_in(&config, &dir)?;
    let qemu_command = shell_join(running.command_line());
    // QEMU holds the guest at -S: let it go once QEMU's netdev is connected to the backend.
    let mut start_problem = None;
    let qmp_socket = running.qmp_socket();
    let cont =
        crate::qmp::Qmp::connect_while(&qmp_socket, Duration::from_secs(10), || !running.exited())
            .and_then(|mut q| {
                if let Some(b) = &backend
                    && !b.wait_connected(Duration::from_secs(10))
                {
                    // Let the guest run anyway: the net oracle says what happened.
                    start_problem =
                        Some("QEMU did not connect to the echo backend within 10 s".to_string());
                }
                q.execute("cont", None).map(|_| q)
            });
    let (run, cont_error) = match cont {
        Ok(q) if held => (running.finish_held(q, &dump::plan_from_records)?, None),
        Ok(_) => (running.wait()?, None),
        Err(e) => (
            running.wait()?,
            Some(format!("could not start the guest over QMP: {e:#}")),
        ),
    };
    let echo = backend.map(EchoBackend::stop);
    let console_output = expected
        .console
        .as_ref()
        .and_then(|_| fs::read(dir.join(CONSOLE_OUT)).ok());
    let observed = Observed {
        disks_after: oracle::read_disks(&dir, &expected.disks),
        echo,
        console_output,
    };
    let mut failures = Vec::new();
    if let Some(e) = cont_error.clone() {
        failures.push(e);
    }
    if let Some(p) = start_problem {
        failures.push(p);
    }
    for e in &run.protocol_errors {
        failures.push(format!("report breaks docs/report.md: {e}"));
    }
    for e in run.all::<Error>() {
        failures.push(format!("guest error ({}): {}", e.what, e.message));
    }
    let oracle_failures = if run.records.is_empty() {
        Vec::new()
    } else {
        secure::check_run(expected, &run, &observed)
    };
    failures.extend(oracle_failures);
    if run.trace.is_some() && !run.records.is_empty() {
        failures.extend(iommu::check_run(&run).failures());
    }

    let wants_reject = expected.secure.is_some_and(|s| s.expects_reject());
    let headline = |f: &[String]| secure::headline(f).cloned().unwrap_or_default();
    let (verdict, reason) = match run.verdict {
        Outcome::Reject if wants_reject && failures.is_empty() => {
            (CellVerdict::Pass, String::new())
        }
        Outcome::Reject if wants_reject => (CellVerdict::Fail, headline(&failures)),
        Outcome::Pass if wants_reject => {
            failures.insert(
                0,
                "the guest passed, but sg.secure=on cannot be met here: it must reject".into(),
            );
            (CellVerdict::Fail, failures[0].clone())
        }
        Outcome::Pass if failures.is_empty() => (CellVerdict::Pass, String::new()),
        Outcome::Pass => (CellVerdict::Fail, headline(&failures)),
        Outcome::Fail => (
            CellVerdict::Fail,
            guest_failure(&run).unwrap_or_else(|| {
                failures
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "the guest's verdict is fail".into())
            }),
        ),
        Outcome::Reject => (CellVerdict::Reject, "the guest's verdict is reject".into()),
        Outcome::Wedged => (
            CellVerdict::Wedged,
            cont_error
                .or(run.diagnosis.clone())
                .unwrap_or_else(|| "killed at the timeout".into()),
        ),
        Outcome::Crashed => (
            CellVerdict::Crashed,
            run.diagnosis
                .clone()
                .or(cont_error)
                .unwrap_or_else(|| "no end record".into()),
        ),
    };
    let kept = opts.out_dir.as_ref().map(|_| dir.clone());
    if verdict == CellVerdict::Pass && kept.is_some() {
        for d in &expected.disks {
            let _ = fs::remove_file(dir.join(&d.file));
        }
        for d in run.held.iter().flat_map(|h| &h.dumps) {
            let _ = fs::remove_file(dir.join(&d.file));
        }
    }
    Ok(CellResult {
        cell: *cell,
        verdict,
        reason,
        failures,
        wall_time: started.elapsed(),
        reproduce: reproduce.to_string(),
        qemu_command,
        dir: kept,
        run: Some(run),
    })
}

/// The first thing the guest itself said went wrong.
fn guest_failure(run: &RunResult) -> Option<String> {
    if let Some(v) = run
        .all::<Virtio>()
        .into_iter()
        .find(|v| v.result == DeviceResult::Error)
    {
        return Some(format!(
            "{} at {}: {}",
            v.device,
            v.location,
            v.error.unwrap_or_default()
        ));
    }
    if let Some(e) = run.first::<Error>() {
        return Some(format!("guest error ({}): {}", e.what, e.message));
    }
    for event in ["panic", "exception", "option"] {
        if let Some(r) = run.events(event).next() {
            return Some(r.summary());
        }
    }
    None
}

/// Runs every planned cell, `jobs` at a time (longest first), calling `done` as each finishes;
/// the results come back in plan order.
pub fn run_matrix(
    planned: &[Planned],
    expected_for: &(dyn Fn(&Cell) -> Expected + Sync),
    opts: &RunOptions,
    jobs: usize,
    done: &(dyn Fn(&CellResult) + Sync),
) -> Vec<CellResult> {
    let mut order: Vec<usize> = (0..planned.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(planned[i].cell.cost()));
    let results: Mutex<Vec<Option<CellResult>>> = Mutex::new(vec![None; planned.len()]);
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&i) = order.get(k) else { break };
                    let p = &planned[i];
                    let r = match &p.skip {
                        Some(why) => CellResult::skipped(
                            p.cell,
                            why.clone(),
                            reproduce_command(&p.cell, opts),
                        ),
                        None => run_cell(&p.cell, &expected_for(&p.cell), opts),
                    };
                    done(&r);
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .flatten()
        .collect()
}

/// The verdict table: one line per cell.
pub fn table(results: &[CellResult]) -> String {
    let width = results
        .iter()
        .map(|r| r.cell.name().len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for r in results {
        out.push_str(&table_line(r, width));
        out.push('\n');
    }
    out
}

/// One line of the table.
pub fn table_line(r: &CellResult, width: usize) -> String {
    let time = if r.verdict == CellVerdict::Skip {
        String::from("       ")
    } else {
        format!("{:>5.2} s", r.wall_time.as_secs_f64())
    };
    let mut line = format!(
        "{:<7} {:<width$}  {time}",
        r.verdict.as_str(),
        r.cell.name()
    );
    if !r.reason.is_empty() {
        let mut reason = r.reason.replace('\n', " ");
        if reason.chars().count() > 200 {
            reason = reason.chars().take(197).collect::<String>() + "...";
        }
        line.push_str("  ");
        line.push_str(&reason);
        if r.failures.len() > 1 {
            line.push_str(&format!(" (+{} more)", r.failures.len() - 1));
        }
    }
    if r.verdict.is_failure() {
        line.push_str(&format!("  $ {}", r.reproduce));
    }
    line
}

/// Counts per verdict, and the total wall time.
pub fn summary(results: &[CellResult], total: Duration, jobs: usize) -> String {
    let mut parts = Vec::new();
    for v in [
        CellVerdict::Pass,
        CellVerdict::Fail,
        CellVerdict::Reject,
        CellVerdict::Wedged,
        CellVerdict::Crashed,
        CellVerdict::Skip,
    ] {
        let n = results.iter().filter(|r| r.verdict == v).count();
        if n > 0 {
            parts.push(format!("{n} {v}"));
        }
    }
    format!(
        "{} cells: {} in {:.1} s ({jobs} jobs)",
        results.len(),
        if parts.is_empty() {
            "none".to_string()
        } else {
            parts.join(", ")
        },
        total.as_secs_f64()
    )
}

/// JUnit XML: one testsuite, one testcase per cell.
pub fn junit(results: &[CellResult], total: Duration) -> String {
    let count = |f: &dyn Fn(CellVerdict) -> bool| results.iter().filter(|r| f(r.verdict)).count();
    let failures = count(&|v| matches!(v, CellVerdict::Fail | CellVerdict::Reject));
    let errors = count(&|v| matches!(v, CellVerdict::Wedged | CellVerdict::Crashed));
    let skipped = count(&|v| v == CellVerdict::Skip);
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.push_str(&format!(
        "<testsuites name=\"secure-guest virtio matrix\" tests=\"{}\" failures=\"{failures}\" \
         errors=\"{errors}\" skipped=\"{skipped}\" time=\"{:.3}\">\n",
        results.len(),
        total.as_secs_f64()
    ));
    x.push_str(&format!(
        "  <testsuite name=\"virtio-matrix\" tests=\"{}\" failures=\"{failures}\" \
         errors=\"{errors}\" skipped=\"{skipped}\" time=\"{:.3}\">\n",
        results.len(),
        total.as_secs_f64()
    ));
    for r in results {
        x.push_str(&format!(
            "    <testcase classname=\"virtio.{}\" name=\"{}\" time=\"{:.3}\"",
            xml_escape(&r.cell.platform()),
            xml_escape(&r.cell.name()),
            r.wall_time.as_secs_f64()
        ));
        let body = match r.verdict {
            CellVerdict::Pass => None,
            CellVerdict::Skip => Some(format!(
                "      <skipped message=\"{}\"/>\n",
                xml_escape(&r.reason)
            )),
            v => {
                let tag = if matches!(v, CellVerdict::Fail | CellVerdict::Reject) {
                    "failure"
                } else {
                    "error"
                };
                Some(format!(
                    "      <{tag} message=\"{}\" type=\"{v}\">{}</{tag}>\n      <system-out>{}</system-out>\n",
                    xml_escape(&r.reason),
                    xml_escape(&r.failures.join("\n")),
                    xml_escape(&r.to_string())
                ))
            }
        };
        match body {
            None => x.push_str("/>\n"),
            Some(b) => {
                x.push_str(">\n");
                x.push_str(&b);
                x.push_str("    </testcase>\n");
            }
        }
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

/// Text for XML attributes and content; characters XML 1.0 cannot hold become U+FFFD.
pub fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            '\t' | '\n' | '\r' => o.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => o.push('\u{fffd}'),
            c => o.push(c),
        }
    }
    o
}

/// Writes the JUnit file.
pub fn write_junit(path: &Path, results: &[CellResult], total: Duration) -> Result<()> {
    fs::write(path, junit(results, total)).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan() {
        let p = plan(false);
        assert_eq!(p.len(), 5 * 4 * 2);
        let run: Vec<String> = p
            .iter()
            .filter(|p| p.skip.is_none())
            .map(|p| p.cell.name())
            .collect();
        assert_eq!(run.len(), 18, "{run:?}");
        for name in [
            "pseries-vof/pci-modern/split",
            "pseries-vof/pci-legacy/packed",
            "pseries-slof/pci-modern/packed",
            "pseries-slof/pci-legacy/split",
            "microvm/mmio-v1/split",
            "microvm/mmio-v2/packed",
            "q35/pci-legacy/split",
            "pc/pci-modern/packed",
        ] {
            assert!(run.contains(&name.to_string()), "{name}");
        }
        assert!(!run.iter().any(|n| n.starts_with("microvm/pci")));
        assert!(
            !run.iter()
                .any(|n| n.contains("mmio") && !n.starts_with("microvm"))
        );
        assert_eq!(plan(true).iter().filter(|p| p.skip.is_none()).count(), 20);
        // Names are unique and each selects exactly its own cell.
        for p in &plan(true) {
            let n = p.cell.name();
            assert_eq!(filter(plan(true), std::slice::from_ref(&n)).len(), 1, "{n}");
        }
        assert_eq!(
            filter(plan(false), &["q35".into(), "packed".into()]).len(),
            4
        );
        assert_eq!(filter(plan(false), &["nothing".into()]).len(), 0);
    }

    #[test]
    fn tce_cells() {
        let opts = RunOptions {
            tce: Some(TceMode::Ddw),
            ..Default::default()
        };
        let cell = |machine, firmware, transport| Cell {
            machine,
            firmware,
            transport,
            ring: Ring::Split,
        };
        let vof = cell(Machine::Pseries, Some(Firmware::Vof), Transport::PciModern);
        assert_eq!(option_skip(&vof, &opts), None);
        assert_eq!(option_skip(&vof, &RunOptions::default()), None);
        let e = expected_for(&vof, &opts);
        assert!(e.iommu_platform);
        assert_eq!(e.iommu.as_ref().and_then(|i| i.tce), Some("ddw"));
        assert!(e.cmdline().contains("sg.tce=ddw"), "{}", e.cmdline());
        assert_eq!(e.dma_expect(), oracle::DmaExpect::Iommu);
        assert_eq!(traced_iommu(&vof, &e), Some(IommuKind::SpaprTce));
        assert_eq!(
            traced_iommu(&vof, &expected_for(&vof, &RunOptions::default())),
            None
        );
        // Secure: iommu+bounce, the devices keep iommu_platform.
        let secure = RunOptions {
            secure: Some(SecureExpect::emulate()),
            ..opts.clone()
        };
        let e = expected_for(&vof, &secure);
        assert!(e.iommu_platform);
        assert_eq!(e.dma_expect(), oracle::DmaExpect::IommuBounce);
        assert!(
            reproduce_command(&vof, &secure).ends_with("--secure emulate --tce ddw"),
            "{}",
            reproduce_command(&vof, &secure)
        );
        // Without --tce, secure pseries cells stay off the IOMMU.
        let e = expected_for(
            &vof,
            &RunOptions {
                secure: Some(SecureExpect::emulate()),
                ..Default::default()
            },
        );
        assert!(!e.iommu_platform && e.iommu.is_none());
        for c in [
            cell(Machine::Pseries, Some(Firmware::Vof), Transport::PciLegacy),
            cell(Machine::Q35, None, Transport::PciModern),
            cell(Machine::Microvm, None, Transport::MmioV2),
        ] {
            let why = option_skip(&c, &opts).expect("skipped");
            assert!(why.starts_with("--tce: "), "{why}");
            assert!(expected_for(&c, &opts).iommu.is_none());
            assert_eq!(
                run_cell(&c, &expected_for(&c, &opts), &opts).verdict,
                CellVerdict::Skip
            );
        }
        let planned = apply_options(plan(false), &opts);
        let running: Vec<String> = planned
            .iter()
            .filter(|p| p.skip.is_none())
            .map(|p| p.cell.name())
            .collect();
        assert_eq!(
            running,
            [
                "pseries-vof/pci-modern/split",
                "pseries-vof/pci-modern/packed",
                "pseries-slof/pci-modern/packed"
            ]
        );
        assert_eq!("dynamic".parse::<TceMode>().unwrap(), TceMode::Dynamic);
        assert!("static".parse::<TceMode>().is_err());
    }

    #[test]
    fn x86_iommu_cells() {
        let cell = |machine, transport| Cell {
            machine,
            firmware: None,
            transport,
            ring: Ring::Packed,
        };
        let q35 = cell(Machine::Q35, Transport::PciModern);
        let viommu = RunOptions {
            x86_iommu: Some(Iommu::VirtioIommu),
            ..Default::default()
        };
        let e = expected_for(&q35, &viommu);
        assert!(e.iommu_platform);
        assert_eq!(
            e.iommu.as_ref().and_then(|i| i.x86),
            Some(Iommu::VirtioIommu)
        );
        assert_eq!(e.dma_expect(), oracle::DmaExpect::Iommu);
        assert_eq!(traced_iommu(&q35, &e), Some(IommuKind::VirtioIommu));
        assert!(!e.cmdline().contains("sg.tce"), "{}", e.cmdline());
        let secure = RunOptions {
            secure: Some(SecureExpect::emulate()),
            ..viommu.clone()
        };
        let e = expected_for(&q35, &secure);
        assert!(e.iommu_platform);
        assert_eq!(e.dma_expect(), oracle::DmaExpect::IommuBounce);
        assert!(
            reproduce_command(&q35, &secure).ends_with("--secure emulate --x86-iommu virtio-iommu"),
            "{}",
            reproduce_command(&q35, &secure)
        );
        let vtd = RunOptions {
            x86_iommu: Some(Iommu::Vtd),
            ..Default::default()
        };
        assert_eq!(
            traced_iommu(&q35, &expected_for(&q35, &vtd)),
            Some(IommuKind::IntelVtd)
        );
        // VT-d is q35's only; virtio-iommu needs PCI; legacy devices cannot be behind either.
        let pc = cell(Machine::Pc, Transport::PciModern);
        assert_eq!(option_skip(&pc, &viommu), None);
        for (c, o, start) in [
            (pc, &vtd, "--x86-iommu vt-d: "),
            (
                cell(Machine::Microvm, Transport::MmioV2),
                &viommu,
                "--x86-iommu virtio-iommu: ",
            ),
            (
                cell(Machine::Q35, Transport::PciLegacy),
                &viommu,
                "--x86-iommu: ",
            ),
            (
                cell(Machine::Pseries, Transport::PciModern),
                &viommu,
                "--x86-iommu: ",
            ),
        ] {
            let why = option_skip(&c, o).expect("skipped");
            assert!(why.starts_with(start), "{why}");
            assert!(expected_for(&c, o).iommu.is_none());
        }
        // Both options: every machine takes its own IOMMU.
        let both = RunOptions {
            tce: Some(TceMode::Dynamic),
            ..vtd.clone()
        };
        let running: Vec<String> = apply_options(plan(false), &both)
            .iter()
            .filter(|p| p.skip.is_none())
            .map(|p| p.cell.name())
            .collect();
        assert_eq!(
            running,
            [
                "pseries-vof/pci-modern/split",
                "pseries-vof/pci-modern/packed",
                "pseries-slof/pci-modern/packed",
                "q35/pci-modern/split",
                "q35/pci-modern/packed"
            ]
        );
    }

    #[test]
    fn standard_workload() {
        let e = standard_expected(Transport::MmioV2, Ring::Packed);
        assert_eq!(
            e.cmdline(),
            "sg.blk.write=1052672:69632:21319 sg.blk.disk=0"
        );
        assert!(e.disks.iter().all(|d| d.size % 512 == 0));
        assert!((e.disks[1].size / 512) % 2 == 1, "an odd sector count");
        assert!(CONSOLE_INPUT.len() as u64 <= oracle::DEFAULT_CONSOLE_READ);
        assert!(CONSOLE_INPUT.ends_with(b"\n"));
        let w = e.write.unwrap();
        assert!(w.offset + w.len <= e.disks[0].size);
    }

    #[test]
    fn skipped_cells_need_no_qemu() {
        let cell = Cell {
            machine: Machine::Q35,
            firmware: None,
            transport: Transport::MmioV1,
            ring: Ring::Split,
        };
        let r = run_cell(
            &cell,
            &standard_expected(cell.transport, cell.ring),
            &RunOptions::default(),
        );
        assert_eq!(r.verdict, CellVerdict::Skip);
        assert!(r.reason.contains("virtio-bus"), "{}", r.reason);
    }

    fn fake(cell: Cell, verdict: CellVerdict, reason: &str) -> CellResult {
        CellResult {
            cell,
            verdict,
            reason: reason.into(),
            failures: if reason.is_empty() || verdict == CellVerdict::Skip {
                vec![]
            } else {
                vec![reason.into(), "two".into()]
            },
            wall_time: Duration::from_millis(420),
            reproduce: reproduce_command(&cell, &RunOptions::default()),
            qemu_command: "qemu".into(),
            dir: None,
            run: None,
        }
    }

    #[test]
    fn table_summary_and_junit() {
        let c = |t, r| Cell {
            machine: Machine::Q35,
            firmware: None,
            transport: t,
            ring: r,
        };
        let results = vec![
            fake(c(Transport::PciModern, Ring::Split), CellVerdict::Pass, ""),
            fake(
                c(Transport::PciModern, Ring::Packed),
                CellVerdict::Fail,
                "no `virtio` records <&>",
            ),
            fake(
                c(Transport::MmioV1, Ring::Split),
                CellVerdict::Skip,
                "q35 has no virtio-mmio",
            ),
            fake(
                c(Transport::PciLegacy, Ring::Split),
                CellVerdict::Wedged,
                "no end record",
            ),
        ];
        let t = table(&results);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(
            lines[0].starts_with("pass    q35/pci-modern/split    0.42 s"),
            "{t}"
        );
        assert!(lines[1].contains("fail    q35/pci-modern/packed   0.42 s  no `virtio` records <&> (+1 more)  $ cargo run -p harness -- matrix --filter q35/pci-modern/packed"), "{t}");
        assert_eq!(
            lines[2], "skip    q35/mmio-v1/split               q35 has no virtio-mmio",
            "{t}"
        );
        assert!(!lines[2].contains('$'));
        assert!(lines[3].starts_with("wedged "));
        let s = summary(&results, Duration::from_secs(3), 2);
        assert_eq!(
            s,
            "4 cells: 1 pass, 1 fail, 1 wedged, 1 skip in 3.0 s (2 jobs)"
        );

        let x = junit(&results, Duration::from_secs(3));
        assert!(x.starts_with("<?xml"));
        assert!(
            x.contains("tests=\"4\" failures=\"1\" errors=\"1\" skipped=\"1\""),
            "{x}"
        );
        assert!(
            x.contains(
                "<testcase classname=\"virtio.q35\" name=\"q35/pci-modern/split\" time=\"0.420\"/>"
            ),
            "{x}"
        );
        assert!(
            x.contains("<failure message=\"no `virtio` records &lt;&amp;&gt;\" type=\"fail\">"),
            "{x}"
        );
        assert!(
            x.contains("<skipped message=\"q35 has no virtio-mmio\"/>"),
            "{x}"
        );
        assert!(
            x.contains("<error message=\"no end record\" type=\"wedged\">"),
            "{x}"
        );
        assert_eq!(x.matches("<testcase").count(), 4);
        assert_eq!(x.matches("</testcase>").count(), 3);
        assert_eq!(xml_escape("a\u{1}b\"'"), "a\u{fffd}b&quot;&apos;");
        let slof = Cell {
            machine: Machine::Pseries,
            firmware: Some(Firmware::Slof),
            transport: Transport::PciModern,
            ring: Ring::Split,
        };
        let r = reproduce_command(
            &slof,
            &RunOptions {
                accel: Some(Accel::Tcg),
                ..Default::default()
            },
        );
        assert_eq!(
            r,
            "cargo run -p harness -- matrix --filter pseries-slof/pci-modern/split --accel tcg --all-slof"
        );
    }
}
