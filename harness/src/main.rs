//! `harness`: boot secure-guest (or the noop payload) under QEMU and show its report.
//!
//! ```text
//! cargo run -p harness -- run --machine q35 --append "sg.x=1"
//! cargo run -p harness -- run --arch ppc64le --firmware slof --json
//! cargo run -p harness -- noop --machine microvm
//! cargo run -p harness -- qemu-cmdline --machine pseries -m 4G
//! ```
//! Exit status: 0 for pass (for `noop`: QEMU powered off by itself), 1 for anything else (2 when
//! the arguments do not parse).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};
use harness::{Accel, Arch, Firmware, Machine, QemuConfig, RunResult, kvm};

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
    /// Keep the run's files (console.log, qemu.log, qmp.sock) in this directory.
    #[arg(long)]
    run_dir: Option<PathBuf>,
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
        c.exit_device = !self.no_exit_device;
        c.extra_args = self.extra.clone();
        c.validate()?;
        Ok(c)
    }

    fn run(&self, config: &QemuConfig) -> Result<RunResult> {
        match &self.run_dir {
            Some(d) => harness::run_in(config, d),
            None => harness::run(config),
        }
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
            print_outcome(&r, r.verdict.as_str(), r.passed());
            Ok(r.passed())
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
