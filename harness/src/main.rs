//! `harness`: boot secure-guest (or the noop payload) under QEMU and show its report.
//!
//! ```text
//! cargo run -p harness -- run --machine q35 --append "sg.x=1"
//! cargo run -p harness -- run --arch ppc64le --firmware slof --json
//! cargo run -p harness -- noop --machine microvm
//! cargo run -p harness -- qemu-cmdline --machine pseries -m 4G
//! cargo run -p harness -- matrix --filter q35 --jobs 2 --junit matrix.xml
//! cargo run -p harness -- matrix --secure emulate
//! cargo run -p harness -- run --machine q35 --hold --dump 0x1000000:4M --run-dir sg-run
//! cargo run -p harness -- pattern --seed 0x5347 --offset 1052672 --len 69632 --check disk0.img
//! cargo run -p harness -- echo-server --port 5555
//! cargo run -p harness -- run --machine pseries --check-iommu spapr-tce --run-dir sg-run -- \
//!     -device virtio-rng-pci,disable-legacy=on,iommu_platform=on
//! cargo run -p harness -- trace-check sg-run/trace.log --pool 0x1000000:4M
//! cargo run -p harness -- bench --quick --filter q35
//! ```
//! Exit status: 0 for pass (for `noop`: QEMU powered off by itself; for `matrix`: nothing
//! failed; for `pattern --check`: the region holds the pattern; for `bench`: every run passed and
//! its data checked out), 1 for anything else (2 when the
//! arguments do not parse).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use harness::{Accel, Arch, Firmware, Machine, QemuConfig, RunResult, kvm, matrix};

#[derive(Parser)]
#[command(
    name = "harness",
    about = "Boot secure-guest under QEMU and read its report"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot the guest, print its report and the outcome.
    Run {
        #[command(flatten)]
        boot: BootArgs,
        /// Print every record as its full JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Boot the noop payload (build/noop-<arch>), which powers off at once: the floor boot times
    /// are compared against.
    Noop {
        #[command(flatten)]
        boot: BootArgs,
    },
    /// Print the QEMU command line only.
    QemuCmdline {
        #[command(flatten)]
        boot: BootArgs,
    },
    /// Say whether KVM is usable here (what `--accel auto` decides on).
    Kvm,
    /// Boot every machine x firmware x transport x ring with all virtio devices and check the
    /// data on the host; one verdict line per combination.
    Matrix(MatrixArgs),
    /// Measure boot time and virtio-blk throughput on every machine x DMA path: a markdown table
    /// on stdout, JSON, CSV and an SVG chart under --out (see README, Performance).
    Bench(BenchArgs),
    /// Boot every machine without devices, the guest against the no-op payload in alternating
    /// pairs: the boot target (guest <= 1.2x no-op). A markdown table on stdout, boot-bare.json
    /// and boot-bare.md under --out (`make bench` runs it after the bench).
    BootRatio(BootRatioArgs),
    /// Write the data pattern of docs/report.md (raw bytes), or check a file region holds it.
    Pattern {
        /// Seed (decimal or 0x hex).
        #[arg(long, value_parser = parse_number)]
        seed: u64,
        /// Absolute (disk) offset of the first byte.
        #[arg(long, value_parser = parse_number, default_value = "0")]
        offset: u64,
        /// Number of bytes (suffixes K, M, G: binary units).
        #[arg(long, value_parser = parse_number)]
        len: u64,
        /// Write the bytes to this file instead of stdout (the file holds only them).
        #[arg(long, conflicts_with = "check")]
        out: Option<PathBuf>,
        /// Check that bytes OFFSET..OFFSET+LEN of this file (a disk image) hold the pattern.
        #[arg(long)]
        check: Option<PathBuf>,
    },
    /// Run the IOMMU trace oracle over a QEMU trace log (trace.log of a run with --check-iommu or
    /// --trace) and print its verdict.
    TraceCheck {
        /// The trace log.
        file: PathBuf,
        /// Secure run: the shared pool, BASE:SIZE; every mapped or translated page must be in it.
        #[arg(long, value_parser = parse_range)]
        pool: Vec<(u64, u64)>,
        /// Fail when no device access went through an IOMMU.
        #[arg(long)]
        expect_translations: bool,
    },
    /// A model of QEMU running a correct guest, for the harness's own tests.
    #[command(hide = true)]
    FakeQemu {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the net echo backend on 127.0.0.1 in the foreground (for a matrix cell's command.sh).
    EchoServer {
        /// TCP port (0: any; the port is printed).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 600.0)]
        timeout: f64,
    },
}

#[derive(Args)]
struct MatrixArgs {
    /// Run only cells whose name (`q35/pci-modern/packed`) contains this; repeat to narrow.
    #[arg(long)]
    filter: Vec<String>,
    /// Also write the results as JUnit XML here.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// QEMUs at once [default: the number of CPUs].
    #[arg(long)]
    jobs: Option<usize>,
    /// tcg, kvm or auto [default: $ACCEL, else tcg].
    #[arg(long)]
    accel: Option<Accel>,
    /// Run all four SLOF cells (~5 s each), not only two.
    #[arg(long)]
    all_slof: bool,
    /// Per-run timeout in seconds [default: 60 for SLOF, 30 otherwise].
    #[arg(long)]
    timeout: Option<f64>,
    /// Keep each cell's files here, in a directory per cell (disk images only when it failed)
    /// [default: target/sg-matrix in the workspace].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Use temporary directories instead of --out.
    #[arg(long)]
    no_keep: bool,
    /// Guest image [default: build/secure-guest-<arch>].
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Print the cells and exit.
    #[arg(long)]
    list: bool,
    /// After the table, print everything about each cell that did not pass.
    #[arg(long, short)]
    verbose: bool,
    /// Secure cells: `emulate` runs every cell with sg.secure=emulate (x86 devices with
    /// iommu_platform=on; pseries devices without it and sg.legacy_devices=bounce), holds QEMU at
    /// the guest's power-off, dumps the swiotlb pool and the secret regions and checks them;
    /// `on` expects every cell to be rejected with nothing touched.
    #[arg(long)]
    secure: Option<harness::secure::SecureMode>,
    /// With --secure: sg.legacy_devices for devices without ACCESS_PLATFORM (default: refuse on
    /// x86, bounce on pseries).
    #[arg(long, requires = "secure")]
    legacy_devices: Option<harness::secure::LegacyDevices>,
    /// With --secure emulate: sg.debug.leak=1, the negative control (slots are not zeroed on
    /// release): every cell that bounces data must FAIL the memory oracle.
    #[arg(long, requires = "secure")]
    leak: bool,
    /// IOMMU cells: pseries pci-modern devices get iommu_platform=on and sit behind the PHB's
    /// TCE IOMMU with sg.tce=MODE (dynamic: each request mapped in the default window; ddw: all
    /// RAM, or with --secure emulate the pool, mapped once in a DDW window). QEMU traces the TCE
    /// hypercalls and every device access, and the IOMMU trace oracle checks them. Cells without
    /// a TCE IOMMU are skipped.
    #[arg(long)]
    tce: Option<matrix::TceMode>,
    /// IOMMU cells on x86: q35 (and pc, for virtio-iommu) pci-modern devices get
    /// iommu_platform=on behind this IOMMU (virtio-iommu or vt-d), on `iommu`, or with --secure
    /// emulate `iommu+bounce`. QEMU traces the IOMMU, and the IOMMU trace oracle checks it.
    /// Other x86 cells are skipped; with --tce too, pseries cells take the TCE IOMMU.
    #[arg(long)]
    x86_iommu: Option<harness::devices::Iommu>,
}

#[derive(Args)]
struct BenchArgs {
    /// The quick profile: 3 rounds of smaller runs, no KVM rows (under 2 minutes).
    #[arg(long)]
    quick: bool,
    /// Rounds [default: 7, quick: 3].
    #[arg(long)]
    repeats: Option<u32>,
    /// Run only cells whose `platform/path` (`q35/bounce`, `pseries-vof/direct`) contains this;
    /// repeat to narrow.
    #[arg(long)]
    filter: Vec<String>,
    /// Seconds after which no new round of a cell starts [default: 540, quick: 100].
    #[arg(long)]
    budget: Option<u64>,
    /// Leave out the KVM rows even where KVM works.
    #[arg(long)]
    no_kvm: bool,
    /// Bytes each 4 KiB run reads and writes [default: 8M, quick: 2M].
    #[arg(long, value_parser = parse_number)]
    small: Option<u64>,
    /// Bytes each 64 KiB and 1 MiB run reads and writes [default: 32M, quick: 8M].
    #[arg(long, value_parser = parse_number)]
    large: Option<u64>,
    /// Random 4 KiB reads in each 4 KiB run [default: 2048, quick: 512].
    #[arg(long)]
    random: Option<u32>,
    /// Where bench.json, bench.csv, throughput.svg, bench.md and the disk image go
    /// [default: target/bench in the workspace].
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `4096`, `0x1000`, `64K`, `4M`, `1G`.
fn parse_number(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 10),
        Some((i, 'm' | 'M')) => (&t[..i], 20),
        Some((i, 'g' | 'G')) if !t.starts_with("0x") => (&t[..i], 30),
        _ => (t, 0),
    };
    let n = match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(h) => u64::from_str_radix(h, 16),
        None => digits.parse::<u64>(),
    }
    .map_err(|_| format!("{s:?} is not a number (decimal, 0x hex, optional K/M/G)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// `BASE:SIZE` for `--dump`.
fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (b, n) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not BASE:SIZE"))?;
    Ok((parse_number(b)?, parse_number(n)?))
}

#[derive(Args)]
struct BootArgs {
    /// Guest arch; follows from --machine when omitted.
    #[arg(long)]
    arch: Option<Arch>,
    /// QEMU machine; defaults to pseries (ppc64le) or microvm (x86_64).
    #[arg(long)]
    machine: Option<Machine>,
    /// pseries firmware [default: vof].
    #[arg(long)]
    firmware: Option<Firmware>,
    /// tcg, kvm or auto (KVM for x86_64 when /dev/kvm works) [default: $ACCEL, else tcg].
    #[arg(long)]
    accel: Option<Accel>,
    /// Guest RAM, as -m takes it.
    #[arg(long, short = 'm', default_value = "512M")]
    memory: String,
    #[arg(long, default_value_t = 1)]
    smp: u32,
    /// Kernel command line.
    #[arg(long)]
    append: Option<String>,
    /// Guest image [default: build/secure-guest-<arch> (noop: build/noop-<arch>) in the
    /// workspace].
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// QEMU binary [default: $QEMU (a binary or a directory), else qemu-system-<arch> on PATH].
    #[arg(long)]
    qemu: Option<PathBuf>,
    /// Seconds before QEMU is killed and the run is `wedged`.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// x86: leave out isa-debug-exit (the guest then powers off through ACPI, QEMU exits 0).
    #[arg(long)]
    no_exit_device: bool,
    /// Keep the run's files (console.log, qemu.log, qmp.sock, dumps) in this directory.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Hold QEMU at the guest's power-off (-action shutdown=pause; x86: no exit device), dump
    /// the memory the report names (swiotlb pool, shared ranges, secret regions) into the run
    /// directory with QMP pmemsave, then quit QEMU.
    #[arg(long)]
    hold: bool,
    /// With --hold: also dump this guest-physical range, BASE:SIZE (e.g. 0x1000000:4M).
    #[arg(long, value_parser = parse_range, requires = "hold")]
    dump: Vec<(u64, u64)>,
    /// With --hold: also dump all guest memory as an ELF core (memory.elf, ~0.65 s per 512 MiB).
    #[arg(long, requires = "hold")]
    dump_all: bool,
    /// An IOMMU on q35/pc: virtio-iommu or vt-d (QEMU's intel-iommu, interrupt remapping
    /// off). Give the devices `iommu_platform=on` (after `--`) to put their DMA behind it.
    #[arg(long)]
    iommu: Option<harness::devices::Iommu>,
    /// Enable this QEMU trace event (a name or a pattern such as `spapr_iommu_*`); repeat for
    /// more. QEMU writes them to trace.log in the run directory (see --run-dir).
    #[arg(long)]
    trace: Vec<String>,
    /// Trace this IOMMU's events (spapr-tce, virtio-iommu, intel-vtd) and run the IOMMU trace
    /// oracle after the run: the run passes only if the oracle does. Repeat for more.
    #[arg(long)]
    check_iommu: Vec<harness::trace::IommuKind>,
    /// Extra QEMU arguments, after `--`. QEMU runs in its own directory: use absolute paths.
    #[arg(last = true)]
    extra: Vec<String>,
}

impl BootArgs {
    fn config(&self, payload: &str) -> Result<QemuConfig> {
        let machine = match (self.arch, self.machine) {
            (_, Some(m)) => m,
            (Some(a), None) => a.default_machine(),
            (None, None) => bail!("give --arch or --machine"),
        };
        if let Some(a) = self.arch
            && a != machine.arch()
        {
            bail!("machine {machine} is {}, not {a}", machine.arch());
        }
        if !(self.timeout.is_finite() && self.timeout > 0.0) {
            bail!("--timeout must be a positive number of seconds");
        }
        let mut c = QemuConfig::new(machine)?;
        c.firmware = self.firmware;
        if let Some(a) = self.accel {
            c.accel = a;
        }
        c.memory = self.memory.clone();
        c.smp = self.smp;
        // `make run` passes `--append "$(CMDLINE)"`, empty by default: no `-append ''` then.
        c.append = self.append.clone().filter(|a| !a.is_empty());
        c.kernel = match &self.kernel {
            Some(k) => k.clone(),
            None => harness::default_kernel(c.arch, payload),
        };
        if let Some(q) = &self.qemu {
            c.qemu_binary = Some(q.clone());
        }
        c.timeout = Duration::from_secs_f64(self.timeout);
        c.exit_device = !self.no_exit_device && !self.hold;
        c.hold_at_shutdown = self.hold;
        c.extra_args = match self.iommu {
            Some(i) => i
                .qemu_args(machine)
                .map_err(|e| anyhow::anyhow!("--iommu {i}: {e}"))?,
            None => Vec::new(),
        };
        c.extra_args.extend(self.extra.iter().cloned());
        c.trace_events = self.trace.clone();
        for p in harness::trace::patterns_for(&self.check_iommu) {
            if !c.trace_events.contains(&p) {
                c.trace_events.push(p);
            }
        }
        c.validate()?;
        Ok(c)
    }

    fn run(&self, config: &QemuConfig) -> Result<RunResult> {
        let plan = |records: &[harness::Record]| {
            let mut p = harness::dump::plan_from_records(records);
            for &(base, size) in &self.dump {
                p.ranges
                    .push(harness::dump::DumpRange::new("manual", base, size));
            }
            p.full = self.dump_all;
            p
        };
        harness::run_with_plan(config, self.run_dir.as_deref(), &plan)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("harness: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn real_main(cli: Cli) -> Result<bool> {
    match cli.command {
        Cmd::Run { boot, json } => {
            let config = boot.config("secure-guest")?;
            println!("$ {}", config.reproduce());
            let r = boot.run(&config)?;
            for rec in &r.records {
                if json {
                    println!("{}", rec.to_json());
                } else {
                    println!("{}", rec.summary());
                }
            }
            print_held(&r, boot.run_dir.is_some());
            if let Some(t) = &r.trace {
                println!("trace: {}", t.summary());
            }
            let mut passed = r.passed();
            if !boot.check_iommu.is_empty() {
                let v = harness::iommu::check_run(&r);
                print!("{v}");
                passed &= v.passed();
            }
            print_outcome(&r, r.verdict.as_str(), passed);
            Ok(passed)
        }
        Cmd::Noop { boot } => {
            let config = boot.config("noop")?;
            println!("$ {}", config.reproduce());
            let r = boot.run(&config)?;
            let ok = r.exited_cleanly();
            print_outcome(
                &r,
                if ok {
                    "powered off"
                } else {
                    "did not power off cleanly"
                },
                ok,
            );
            Ok(ok)
        }
        Cmd::QemuCmdline { boot } => {
            println!("{}", boot.config("secure-guest")?.reproduce());
            Ok(true)
        }
        Cmd::Matrix(m) => run_matrix(m),
        Cmd::Bench(b) => run_bench(b),
        Cmd::BootRatio(b) => run_boot_ratio(b),
        Cmd::Pattern {
            seed,
            offset,
            len,
            out,
            check,
        } => pattern(seed, offset, len, out, check),
        Cmd::EchoServer { port, timeout } => echo_server(port, timeout),
        Cmd::TraceCheck {
            file,
            pool,
            expect_translations,
        } => {
            let log = harness::trace::TraceLog::read(&file);
            let cfg = harness::iommu::Config {
                pool: (!pool.is_empty()).then(|| {
                    pool.iter()
                        .map(|&(base, size)| harness::iommu::PhysRange { base, size })
                        .collect()
                }),
                expect_translations,
                ..Default::default()
            };
            let v = harness::iommu::check(&log, &cfg);
            print!("{v}");
            Ok(v.passed())
        }
        Cmd::FakeQemu { args } => std::process::exit(harness::fake::run(&args)?),
        Cmd::Kvm => match kvm::probe() {
            kvm::Probe::Usable => {
                println!("kvm: usable");
                Ok(true)
            }
            kvm::Probe::Unusable(why) => {
                println!("kvm: not usable: {why}");
                Ok(false)
            }
        },
    }
}

/// A held run: the pause, the dumps (and, for a run without a kept directory, that the files
/// are gone), and the secret-mark counts of each dump.
fn print_held(r: &RunResult, kept: bool) {
    let Some(h) = &r.held else { return };
    println!(
        "held: {}{}",
        if h.paused {
            format!(
                "QEMU held at shutdown (reason {}) after {:.3} s",
                h.reason.as_deref().unwrap_or("unknown"),
                h.paused_after.unwrap_or_default().as_secs_f64()
            )
        } else {
            "QEMU was not held".to_string()
        },
        if h.dumps.is_empty() {
            String::new()
        } else {
            format!(
                "; {} ranges dumped in {:.3} s{}",
                h.dumps.len(),
                h.dump_time.as_secs_f64(),
                if kept {
                    ""
                } else {
                    " (not kept: give --run-dir)"
                }
            )
        }
    );
    for d in &h.dumps {
        let marks = secure_guest::platform::secret::find_marks(&d.data).count();
        let nonzero = d.data.iter().filter(|&&b| b != 0).count();
        println!(
            "  {} -> {}: {marks} secret marks, {nonzero} non-zero bytes",
            d.range, d.file
        );
    }
    if let Some(f) = &h.full_dump {
        println!("  all memory -> {}", f.display());
    }
    for p in &h.problems {
        println!("  problem: {p}");
    }
}

/// The protocol errors, the outcome line and, when the run is not `good`, what helps debug it.
fn print_outcome(r: &RunResult, what: &str, good: bool) {
    for e in &r.protocol_errors {
        println!("protocol error: {e}");
    }
    println!(
        "outcome: {what} (QEMU {}, {:.3} s)",
        match (r.timed_out, r.exit_status.code()) {
            (true, _) => "killed at the timeout".to_string(),
            (false, Some(c)) => format!("exit status {c}"),
            (false, None) => format!("{}", r.exit_status),
        },
        r.wall_time.as_secs_f64()
    );
    // A run that went wrong is debugged from the console's end and QEMU's complaints.
    if !good {
        if let Some(d) = &r.diagnosis {
            println!("why: {d}");
        }
        let tail: Vec<&str> = r.console.lines().collect();
        println!("--- console, last lines ---");
        for l in &tail[tail.len().saturating_sub(20)..] {
            println!("{l}");
        }
        if !r.stderr.trim().is_empty() {
            println!("--- QEMU stderr ---");
            print!("{}", r.stderr);
        }
    }
}

fn run_matrix(m: MatrixArgs) -> Result<bool> {
    if let Some(t) = m.timeout
        && !(t.is_finite() && t > 0.0)
    {
        bail!("--timeout must be a positive number of seconds");
    }
    let opts = matrix::RunOptions {
        accel: m.accel,
        timeout: m.timeout.map(Duration::from_secs_f64),
        out_dir: (!m.no_keep).then(|| match &m.out {
            Some(o) => harness::config::absolute(o),
            None => harness::workspace_root().join("target").join("sg-matrix"),
        }),
        kernel: m.kernel.clone(),
        qemu: None,
        secure: m.secure.map(|mode| harness::secure::SecureExpect {
            mode,
            legacy: m.legacy_devices,
            leak: m.leak,
            pool_size: None,
        }),
        tce: m.tce,
        x86_iommu: m.x86_iommu,
    };
    let planned = matrix::filter(matrix::plan(m.all_slof), &m.filter);
    if planned.is_empty() {
        bail!("no cell matches {:?} (see --list)", m.filter);
    }
    let planned = matrix::apply_options(planned, &opts);
    if m.list {
        for p in &planned {
            match &p.skip {
                None => println!("{}", p.cell),
                Some(why) => println!("{}  (skip: {why})", p.cell),
            }
        }
        return Ok(true);
    }
    let jobs = m
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let width = planned
        .iter()
        .map(|p| p.cell.name().len())
        .max()
        .unwrap_or(0);
    let running = planned.iter().filter(|p| p.skip.is_none()).count();
    eprintln!(
        "matrix: {running} runs ({} skipped), {jobs} at a time{}",
        planned.len() - running,
        opts.out_dir
            .as_ref()
            .map_or(String::new(), |d| format!(", files in {}", d.display()))
    );
    let started = Instant::now();
    // Progress on stderr as cells finish; the table in plan order on stdout at the end.
    let progress = |r: &matrix::CellResult| {
        if r.verdict != matrix::CellVerdict::Skip {
            eprintln!("{}", matrix::table_line(r, width));
        }
    };
    let results = matrix::run_matrix(
        &planned,
        &|c: &matrix::Cell| matrix::expected_for(c, &opts),
        &opts,
        jobs,
        &progress,
    );
    let total = started.elapsed();
    print!("{}", matrix::table(&results));
    if m.verbose {
        for r in results.iter().filter(|r| r.verdict.is_failure()) {
            println!("\n{r}");
        }
    }
    println!("{}", matrix::summary(&results, total, jobs));
    if let Some(j) = &m.junit {
        matrix::write_junit(j, &results, total)?;
    }
    Ok(!results.iter().any(|r| r.verdict.is_failure()))
}

#[derive(Args)]
struct BootRatioArgs {
    /// The quick profile: 5 pairs per machine, 1 under SLOF.
    #[arg(long)]
    quick: bool,
    /// Pairs per machine [default: 11, quick: 5].
    #[arg(long)]
    pairs: Option<u32>,
    /// Pairs under SLOF, whose boots take seconds [default: 3, quick: 1].
    #[arg(long)]
    slof_pairs: Option<u32>,
    /// tcg, kvm or auto [default: $ACCEL, else tcg].
    #[arg(long)]
    accel: Option<Accel>,
    /// Only machines whose name (`pseries-vof`, `pseries-slof`, `microvm`, `q35`, `pc`)
    /// contains this; repeat for more.
    #[arg(long)]
    filter: Vec<String>,
    /// Where boot-bare.json and boot-bare.md go [default: target/bench in the workspace].
    #[arg(long)]
    out: Option<PathBuf>,
}

fn run_boot_ratio(b: BootRatioArgs) -> Result<bool> {
    use harness::bootratio;
    let mut opts = if b.quick {
        bootratio::Options::quick_profile()
    } else {
        bootratio::Options::default_profile()
    };
    opts.pairs = b.pairs.unwrap_or(opts.pairs).max(1);
    opts.slof_pairs = b.slof_pairs.unwrap_or(opts.slof_pairs);
    opts.accel = match b.accel {
        Some(a) => a,
        None => Accel::from_env()?,
    };
    opts.filter = b.filter;
    let out = match &b.out {
        Some(o) => harness::config::absolute(o),
        None => harness::workspace_root().join("target").join("bench"),
    };
    let rows = bootratio::run(&opts, &mut |line: &str| eprintln!("{line}"))?;
    print!("{}", bootratio::markdown(&rows));
    let files = bootratio::write_outputs(&rows, &out)?;
    eprintln!(
        "boot-ratio: wrote {}",
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    // A missed target is a figure, not a failure; a run that did not end as it should is.
    Ok(rows.iter().all(|r| r.failures.is_empty()))
}

fn run_bench(b: BenchArgs) -> Result<bool> {
    use harness::bench;
    let out = match &b.out {
        Some(o) => harness::config::absolute(o),
        None => harness::workspace_root().join("target").join("bench"),
    };
    let mut opts = if b.quick {
        bench::BenchOptions::quick_profile(out.clone())
    } else {
        bench::BenchOptions::default_profile(out.clone())
    };
    if let Some(r) = b.repeats {
        opts.repeats = r.max(1);
    }
    if let Some(s) = b.budget {
        opts.budget = Duration::from_secs(s);
    }
    opts.kvm &= !b.no_kvm;
    opts.filter = b.filter.clone();
    if let Some(n) = b.small {
        opts.sizes.small = n;
    }
    if let Some(n) = b.large {
        opts.sizes.large = n;
    }
    if let Some(n) = b.random {
        opts.sizes.random = n;
    }
    for n in [opts.sizes.small, opts.sizes.large] {
        if n == 0 || n % 512 != 0 || n > bench::DISK_BYTES / 2 {
            bail!(
                "--small and --large must be multiples of 512 up to {} bytes",
                bench::DISK_BYTES / 2
            );
        }
    }
    let report = bench::run(&opts, &mut |line: &str| eprintln!("{line}"))?;
    print!("{}", bench::markdown(&report));
    let files = bench::write_outputs(&report, &out)?;
    eprintln!(
        "bench: {:.0} s; wrote {}",
        report.meta.wall_s,
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let failures = report.failures();
    for f in &failures {
        eprintln!("bench failure: {f}");
    }
    Ok(failures.is_empty())
}

fn pattern(
    seed: u64,
    offset: u64,
    len: u64,
    out: Option<PathBuf>,
    check: Option<PathBuf>,
) -> Result<bool> {
    offset
        .checked_add(len)
        .context("--offset + --len overflows")?;
    if let Some(file) = check {
        return match harness::oracle::check_file_region(&file, seed, offset, len) {
            Ok(()) => {
                println!(
                    "{}: bytes {offset}..{} hold the pattern of seed {seed:#x}",
                    file.display(),
                    offset + len
                );
                Ok(true)
            }
            Err(e) => {
                println!("{e:#}");
                Ok(false)
            }
        };
    }
    let mut sink: Box<dyn Write> = match &out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut buf = vec![0u8; 1 << 16];
    let mut at = offset;
    while at < offset + len {
        let n = ((offset + len - at) as usize).min(buf.len());
        harness::oracle::fill_pattern(seed, at, &mut buf[..n]);
        sink.write_all(&buf[..n]).context("writing the pattern")?;
        at += n as u64;
    }
    sink.flush().context("writing the pattern")?;
    Ok(true)
}

fn echo_server(port: u16, timeout: f64) -> Result<bool> {
    if !(timeout.is_finite() && timeout > 0.0) {
        bail!("--timeout must be a positive number of seconds");
    }
    let b = harness::echo::EchoBackend::start_on(port).context("starting the echo backend")?;
    println!("echo backend on 127.0.0.1:{}", b.port());
    let deadline = Instant::now() + Duration::from_secs_f64(timeout);
    let mut last = b.stats();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let s = b.stats();
        if s != last {
            println!(
                "connections {} frames {} well-formed {} echoed {}{}",
                s.connections,
                s.frames_seen,
                s.frames_well_formed,
                s.frames_echoed,
                s.problems
                    .last()
                    .map_or(String::new(), |p| format!(" (last problem: {p})"))
            );
            last = s;
        }
    }
    let s = b.stop();
    Ok(s.problems.is_empty())
}

#[cfg(test)]
mod tests {
    use super::parse_number;

    #[test]
    fn numbers() {
        assert_eq!(parse_number("4096"), Ok(4096));
        assert_eq!(parse_number("0x5347"), Ok(0x5347));
        assert_eq!(parse_number("0xff"), Ok(255));
        assert_eq!(parse_number("64K"), Ok(65536));
        assert_eq!(parse_number("4M"), Ok(4 << 20));
        assert_eq!(parse_number("1G"), Ok(1 << 30));
        for bad in ["", "x", "-1", "1.5", "0xg", "99999999999999G"] {
            assert!(parse_number(bad).is_err(), "{bad}");
        }
    }
}
