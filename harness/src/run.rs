//! Running QEMU: spawn, enforce the timeout, read the console, decide the outcome.
//!
//! Every run gets a private directory that is QEMU's working directory: the console file and the
//! QMP socket of the command line ([`crate::config::CONSOLE_FILE`], [`crate::config::QMP_SOCKET`])
//! land there, so parallel runs never share a path and the command line has no temporary names
//! in it. QEMU's own stdout and stderr go to `qemu.log` next to them (a file, so that a chatty
//! QEMU can never fill a pipe and stall). A run with trace events enabled
//! ([`QemuConfig::trace_events`]) has QEMU's trace log there too
//! ([`crate::config::TRACE_FILE`]); it is parsed into [`RunResult::trace`] once QEMU has exited.
//!
//! A run *held at shutdown* ([`QemuConfig::hold_at_shutdown`]) ends differently. QEMU starts
//! paused (`-S`, added here), the harness connects to QMP and lets the guest go (`cont`), then
//! polls `query-status` until QEMU is held at the guest's power-off (status `shutdown`, after a
//! `SHUTDOWN` event), all within the config's timeout. It reads the report so far, dumps the
//! memory it names ([`crate::dump`]) and sends `quit`. The verdict is the `end` record's: QEMU's
//! exit status after `quit` says nothing, so the cross-check is that QEMU was held at a shutdown
//! the guest asked for (the event's `reason`, see [`Held`]).

use std::fmt;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::config::{Arch, CONSOLE_FILE, QMP_SOCKET, QemuConfig, TRACE_FILE, absolute, shell_join};
use crate::dump::{self, Dump, DumpPlan};
use crate::qmp::Qmp;
use crate::report::{self, Event, ProtocolError, Record, Report, Verdict};
use crate::trace::TraceLog;

/// QEMU's stdout and stderr, in the run directory.
pub const QEMU_LOG: &str = "qemu.log";

/// How a run ended, all things considered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The `end` record says `pass` and QEMU's exit agrees.
    Pass,
    /// The `end` record says `fail` and QEMU's exit agrees.
    Fail,
    /// The `end` record says `reject` and QEMU's exit agrees.
    Reject,
    /// The timeout passed and QEMU was killed.
    Wedged,
    /// QEMU exited without an `end` record, or its exit status contradicts the `end` record.
    Crashed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Reject => "reject",
            Outcome::Wedged => "wedged",
            Outcome::Crashed => "crashed",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Verdict> for Outcome {
    fn from(v: Verdict) -> Outcome {
        match v {
            Verdict::Pass => Outcome::Pass,
            Verdict::Fail => Outcome::Fail,
            Verdict::Reject => Outcome::Reject,
        }
    }
}

/// Everything about one finished run.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub config: QemuConfig,
    /// Exactly what ran, program first.
    pub command_line: Vec<String>,
    pub exit_status: ExitStatus,
    /// The harness killed QEMU at the timeout.
    pub timed_out: bool,
    /// The whole console (invalid UTF-8 replaced).
    pub console: String,
    /// The report records, in console order.
    pub records: Vec<Record>,
    /// `@sg ` lines that broke the contract, and broken record order. Never empty for a run
    /// whose report cannot be trusted.
    pub protocol_errors: Vec<ProtocolError>,
    pub verdict: Outcome,
    /// Why the verdict is what it is, when the report alone does not say (wedged, crashed).
    pub diagnosis: Option<String>,
    /// From spawning QEMU to its exit.
    pub wall_time: Duration,
    /// QEMU's own output (stderr and stdout).
    pub stderr: String,
    /// Runs held at shutdown: how QEMU was held and what was dumped.
    pub held: Option<Held>,
    /// Runs with [`QemuConfig::trace_events`]: QEMU's trace log ([`TRACE_FILE`]), parsed. The
    /// IOMMU oracle ([`crate::iommu::check_run`]) reads it.
    pub trace: Option<TraceLog>,
}

/// How a run held at shutdown ended ([`QemuConfig::hold_at_shutdown`]).
#[derive(Clone, Debug, Default)]
pub struct Held {
    /// QEMU was held (QMP status `shutdown`) before the timeout.
    pub paused: bool,
    /// The `SHUTDOWN` event's `reason`: `guest-shutdown` for a power-off (RTAS, ACPI),
    /// `guest-reset` for a reset that `-no-reboot` turned into a shutdown, `host-*` otherwise.
    pub reason: Option<String>,
    /// The event's `guest`: whether the guest asked.
    pub guest: Option<bool>,
    /// From the spawn to the moment the harness saw QEMU held.
    pub paused_after: Option<Duration>,
    /// The ranges dumped, with their bytes (files `dump-*.bin` in the run directory).
    pub dumps: Vec<Dump>,
    /// `dump-guest-memory`'s file, when the plan asked for it.
    pub full_dump: Option<PathBuf>,
    /// What could not be dumped, and QMP trouble on the way.
    pub problems: Vec<String>,
    /// What dumping took.
    pub dump_time: Duration,
}

impl Held {
    /// The dump of the range labelled `label` that starts at `base`.
    pub fn dump(&self, label: &str, base: u64) -> Option<&Dump> {
        self.dumps
            .iter()
            .find(|d| d.range.label == label && d.range.base == base)
    }
}

/// The `SHUTDOWN` reasons that mean the guest ended the run itself. On x86 the guest's ACPI
/// soft-off is asynchronous: the vCPU runs on until QEMU's main loop acts on it, and the guest's
/// fallback (a triple fault, which `-no-reboot` makes a shutdown with reason `guest-reset`) can
/// get there first. So x86 also accepts `guest-reset`, which is no weaker than the exit status 0
/// an unheld run without the exit device accepts. pseries stops the CPU in RTAS power-off.
pub fn accepted_shutdown_reasons(arch: Arch) -> &'static [&'static str] {
    match arch {
        Arch::Ppc64le => &["guest-shutdown"],
        Arch::X86_64 => &["guest-shutdown", "guest-reset"],
    }
}

impl RunResult {
    /// The command line for a POSIX shell; run anywhere, it leaves the console in
    /// `./console.log`.
    pub fn reproduce(&self) -> String {
        shell_join(&self.command_line)
    }

    /// Pass, with a report that keeps the contract.
    pub fn passed(&self) -> bool {
        self.verdict == Outcome::Pass && self.protocol_errors.is_empty()
    }

    /// QEMU exited by itself as a powered-off guest makes it: status 0, or with the x86 exit
    /// device the pass status 1. (For payloads without a report, like `noop`.)
    pub fn exited_cleanly(&self) -> bool {
        let code = self.exit_status.code();
        !self.timed_out && (code == Some(0) || (self.config.has_exit_device() && code == Some(1)))
    }

    /// Records of one event.
    pub fn events<'a>(&'a self, event: &'a str) -> impl Iterator<Item = &'a Record> + 'a {
        self.records.iter().filter(move |r| r.event == event)
    }

    /// Typed views of every record of `T`'s event.
    pub fn all<T: Event>(&self) -> Vec<T> {
        self.events(T::NAME).filter_map(|r| r.view().ok()).collect()
    }

    pub fn first<T: Event>(&self) -> Option<T> {
        self.events(T::NAME).find_map(|r| r.view().ok())
    }

    pub fn boot(&self) -> Option<report::Boot> {
        self.first()
    }

    pub fn devtree(&self) -> Option<report::Devtree> {
        self.first()
    }

    pub fn end(&self) -> Option<report::End> {
        self.first()
    }
}

/// A readable account of the run, for test failures and the CLI's verbose output.
impl fmt::Display for RunResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "command: {}", self.reproduce())?;
        writeln!(
            f,
            "outcome: {} (QEMU {}, {:.2} s)",
            self.verdict,
            describe_status(self.exit_status, self.timed_out),
            self.wall_time.as_secs_f64()
        )?;
        if let Some(d) = &self.diagnosis {
            writeln!(f, "why: {d}")?;
        }
        if let Some(h) = &self.held {
            writeln!(
                f,
                "held: {} (SHUTDOWN reason {}), {} ranges dumped in {:.3} s{}",
                if h.paused { "yes" } else { "no" },
                h.reason.as_deref().unwrap_or("unknown"),
                h.dumps.len(),
                h.dump_time.as_secs_f64(),
                h.full_dump
                    .as_ref()
                    .map_or(String::new(), |p| format!(", full dump {}", p.display()))
            )?;
            for d in &h.dumps {
                writeln!(f, "  dumped {} -> {}", d.range, d.file)?;
            }
            for p in &h.problems {
                writeln!(f, "  dump problem: {p}")?;
            }
        }
        if let Some(t) = &self.trace {
            writeln!(f, "trace: {}", t.summary())?;
        }
        for e in &self.protocol_errors {
            writeln!(f, "protocol error: {e}")?;
        }
        writeln!(
            f,
            "--- console ({} bytes, last 60 lines) ---",
            self.console.len()
        )?;
        for l in tail_lines(&self.console, 60) {
            writeln!(f, "{l}")?;
        }
        if !self.stderr.trim().is_empty() {
            writeln!(f, "--- QEMU stderr (last 30 lines) ---")?;
            for l in tail_lines(&self.stderr, 30) {
                writeln!(f, "{l}")?;
            }
        }
        Ok(())
    }
}

fn tail_lines(s: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

fn describe_status(status: ExitStatus, timed_out: bool) -> String {
    use std::os::unix::process::ExitStatusExt;
    if timed_out {
        return "killed at the timeout".into();
    }
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => format!("{status}"),
    }
}

/// Where a run's files go.
enum RunDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl RunDir {
    fn path(&self) -> &Path {
        match self {
            RunDir::Temp(t) => t.path(),
            RunDir::Kept(p) => p,
        }
    }
}

/// A QEMU that is running. Dropping it kills QEMU.
pub struct Running {
    config: QemuConfig,
    command_line: Vec<String>,
    child: Option<Child>,
    dir: RunDir,
    started: Instant,
}

impl Running {
    /// The run directory (QEMU's working directory).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The QMP socket, to stop the guest or dump its memory while it runs.
    pub fn qmp_socket(&self) -> PathBuf {
        self.dir().join(QMP_SOCKET)
    }

    pub fn console_path(&self) -> PathBuf {
        self.dir().join(CONSOLE_FILE)
    }

    pub fn command_line(&self) -> &[String] {
        &self.command_line
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether QEMU has exited already (its status is kept for [`Running::wait`]).
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_)) | Err(_)))
    }

    /// The deadline: the spawn plus the config's timeout.
    pub fn deadline(&self) -> Instant {
        self.started + self.config.timeout
    }

    /// Connects to QEMU's QMP socket (until QEMU exits, 10 s, or the deadline).
    pub fn connect_qmp(&mut self) -> Result<Qmp> {
        let socket = self.qmp_socket();
        let timeout = self
            .deadline()
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(10));
        Qmp::connect_while(&socket, timeout, || !self.exited())
    }

    /// Waits for QEMU to exit, killing it at the config's timeout (counted from the spawn), then
    /// reads the console and decides the outcome. For a run held at shutdown this kills QEMU at
    /// the timeout too (nothing is dumped): use [`Running::finish_held`].
    pub fn wait(mut self) -> Result<RunResult> {
        let (status, timed_out) = self.wait_for_exit(self.deadline())?;
        self.into_result(status, timed_out, None)
    }

    /// Waits for QEMU to exit until `deadline`, then kills it.
    fn wait_for_exit(&mut self, deadline: Instant) -> Result<(ExitStatus, bool)> {
        let child = self
            .child
            .as_mut()
            .expect("a Running always has its child until waited");
        let mut timed_out = false;
        let status = loop {
            if let Some(status) = child.try_wait().context("waiting for QEMU")? {
                break status;
            }
            let now = Instant::now();
            if now >= deadline {
                timed_out = true;
                // SIGKILL: a wedged guest has nothing left to flush that matters, and QEMU
                // ignores nothing of it. The console file holds all that was written so far.
                let _ = child.kill();
                break child.wait().context("waiting for the killed QEMU")?;
            }
            // Polling keeps this portable and race-free (no signal handlers, no pid reuse); a
            // few milliseconds of latency do not matter against boots of 50 ms and more.
            let since = now - self.started;
            let nap = if since < Duration::from_millis(200) {
                1
            } else {
                5
            };
            std::thread::sleep(Duration::from_millis(nap).min(deadline - now));
        };
        Ok((status, timed_out))
    }

    /// A run held at shutdown ([`QemuConfig::hold_at_shutdown`]), with `qmp` connected and the
    /// guest let go (`cont`): waits until QEMU is held at the guest's power-off (or exits, or the
    /// timeout passes), reads the report, dumps what `plan` makes of it, quits QEMU, and decides
    /// the outcome from the `end` record and the `SHUTDOWN` reason.
    pub fn finish_held(
        mut self,
        mut qmp: Qmp,
        plan: &dyn Fn(&[Record]) -> DumpPlan,
    ) -> Result<RunResult> {
        let deadline = self.deadline();
        let mut held = Held::default();
        loop {
            if self.exited() {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            // A QEMU that stops answering must not hold the harness past the deadline.
            let _ = qmp.set_timeout((deadline - now).max(Duration::from_millis(50)));
            match qmp.query_status() {
                Ok(s) if s == "shutdown" => {
                    held.paused = true;
                    held.paused_after = Some(self.started.elapsed());
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    if !self.exited() {
                        held.problems.push(format!("QMP: {e:#}"));
                    }
                    break;
                }
            }
            let now = Instant::now();
            let since = now - self.started;
            let nap = if since < Duration::from_millis(200) {
                2
            } else {
                10
            };
            std::thread::sleep(
                Duration::from_millis(nap).min(deadline.saturating_duration_since(now)),
            );
        }
        if let Some(e) = qmp.event("SHUTDOWN") {
            held.reason = e["data"]["reason"].as_str().map(str::to_string);
            held.guest = e["data"]["guest"].as_bool();
        }
        let mut quit_deadline = deadline;
        if held.paused {
            let _ = qmp.set_timeout(Duration::from_secs(30));
            let console = read_if_exists(&self.console_path())?;
            let report = Report::parse(&console);
            let out = dump::save(&mut qmp, self.dir(), &plan(&report.records));
            held.dumps = out.dumps;
            held.full_dump = out.full;
            held.problems.extend(out.problems);
            held.dump_time = out.time;
            let _ = qmp.set_timeout(Duration::from_secs(5));
            if let Err(e) = qmp.execute("quit", None)
                && !self.exited()
            {
                held.problems.push(format!("QMP quit: {e:#}"));
            }
            // QEMU exits at once after `quit`; the dumps are done, so the timeout is past.
            quit_deadline = Instant::now() + Duration::from_secs(10);
        }
        drop(qmp);
        let (status, timed_out) = self.wait_for_exit(quit_deadline)?;
        // Killed after being held is not a wedged guest: the guest had ended.
        let timed_out = timed_out && !held.paused;
        self.into_result(status, timed_out, Some(held))
    }

    fn into_result(
        mut self,
        status: ExitStatus,
        timed_out: bool,
        held: Option<Held>,
    ) -> Result<RunResult> {
        self.child = None;
        let wall_time = self.started.elapsed();
        let dir = self.dir.path();
        let console_bytes = read_if_exists(&dir.join(CONSOLE_FILE))?;
        let stderr = String::from_utf8_lossy(&read_if_exists(&dir.join(QEMU_LOG))?).into_owned();
        let report = Report::parse(&console_bytes);
        // QEMU has exited, so the log backend has flushed the whole trace.
        let trace =
            (!self.config.trace_events.is_empty()).then(|| TraceLog::read(&dir.join(TRACE_FILE)));
        let (verdict, diagnosis) = match &held {
            Some(h) if !timed_out => decide_held(&self.config, &report, status, h, &stderr),
            _ => decide(&self.config, &report, status, timed_out, &stderr),
        };
        Ok(RunResult {
            config: self.config.clone(),
            command_line: std::mem::take(&mut self.command_line),
            exit_status: status,
            timed_out,
            console: String::from_utf8_lossy(&console_bytes).into_owned(),
            records: report.records,
            protocol_errors: report.errors,
            verdict,
            diagnosis,
            wall_time,
            stderr,
            held,
            trace,
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn read_if_exists(p: &Path) -> Result<Vec<u8>> {
    match fs::read(p) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// The outcome of a held run that did not time out: the `end` record's verdict, when QEMU was
/// held at a shutdown the guest asked for.
fn decide_held(
    config: &QemuConfig,
    report: &Report,
    status: ExitStatus,
    held: &Held,
    stderr: &str,
) -> (Outcome, Option<String>) {
    let has_end_record = report.records.iter().any(|r| r.event == "end");
    let qemu_said = || {
        stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map_or(String::new(), |l| format!(" (QEMU said: {})", l.trim()))
    };
    if !held.paused {
        return (
            Outcome::Crashed,
            Some(format!(
                "QEMU {} instead of holding at the guest's power-off (-action shutdown=pause): \
                 nothing was dumped{}{}",
                describe_status(status, false),
                if has_end_record {
                    ""
                } else {
                    ", and there is no `end` record"
                },
                qemu_said()
            )),
        );
    }
    let Some(end) = report.end() else {
        return (
            Outcome::Crashed,
            Some(format!(
                "QEMU was held at a shutdown (reason {}), but {}",
                held.reason.as_deref().unwrap_or("unknown"),
                if has_end_record {
                    "the `end` record is malformed"
                } else {
                    "the console has no `end` record"
                }
            )),
        );
    };
    let accepted = accepted_shutdown_reasons(config.arch);
    match held.reason.as_deref() {
        Some(r) if accepted.contains(&r) => (end.verdict.into(), None),
        other => (
            Outcome::Crashed,
            Some(format!(
                "QEMU was held at a shutdown with reason {}, not one the guest's power-off gives \
                 ({}); the `end` record says `{}`",
                other.unwrap_or("unknown (no SHUTDOWN event)"),
                accepted.join(", "),
                end.verdict.as_str()
            )),
        ),
    }
}

/// The outcome from the report and from how QEMU ended.
fn decide(
    config: &QemuConfig,
    report: &Report,
    status: ExitStatus,
    timed_out: bool,
    stderr: &str,
) -> (Outcome, Option<String>) {
    let end = report.end();
    let has_end_record = report.records.iter().any(|r| r.event == "end");
    if timed_out {
        let why = if has_end_record {
            "the guest wrote its `end` record but QEMU did not exit: power-off failed?".to_string()
        } else {
            let last = report
                .records
                .last()
                .map_or("none".to_string(), |r| format!("`{}`", r.event));
            format!(
                "no `end` record within {:.0} s (last record: {last})",
                config.timeout.as_secs_f64()
            )
        };
        return (Outcome::Wedged, Some(why));
    }
    let status_text = describe_status(status, false);
    let Some(end) = end else {
        let mut why = if has_end_record {
            format!("the `end` record is malformed; QEMU {status_text}")
        } else {
            format!("QEMU {status_text} without an `end` record")
        };
        if let Some(last) = stderr.lines().rev().find(|l| !l.trim().is_empty()) {
            why.push_str(&format!(" (QEMU said: {})", last.trim()));
        }
        return (Outcome::Crashed, Some(why));
    };
    let (expected, how) = if config.has_exit_device() {
        (
            end.verdict.debug_exit_status(),
            "the isa-debug-exit status for",
        )
    } else {
        (0, "a powered-off guest's status; the `end` record says")
    };
    if status.code() != Some(expected) {
        return (
            Outcome::Crashed,
            Some(format!(
                "QEMU {status_text}, but expected {expected} ({how} `{}`)",
                end.verdict.as_str()
            )),
        );
    }
    (end.verdict.into(), None)
}

/// Starts QEMU in a fresh temporary run directory, removed after [`Running::wait`].
pub fn spawn(config: &QemuConfig) -> Result<Running> {
    let dir = tempfile::Builder::new()
        .prefix("sg-run-")
        .tempdir()
        .context("creating the run directory")?;
    spawn_with(config, RunDir::Temp(dir))
}

/// Starts QEMU with `dir` as its run directory, which is created if needed and kept, with the
/// console, QEMU's log and (while it runs) the QMP socket in it.
pub fn spawn_in(config: &QemuConfig, dir: &Path) -> Result<Running> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for f in [CONSOLE_FILE, QEMU_LOG, QMP_SOCKET, TRACE_FILE] {
        let _ = fs::remove_file(dir.join(f));
    }
    spawn_with(config, RunDir::Kept(absolute(dir)))
}

fn spawn_with(config: &QemuConfig, dir: RunDir) -> Result<Running> {
    config.validate()?;
    let kernel = absolute(&config.kernel);
    if !kernel.is_file() {
        bail!(
            "kernel image {} does not exist: run `make images` first",
            kernel.display()
        );
    }
    let mut command_line = config.command_line();
    // A held run is started by the harness once QMP is connected, so that the `SHUTDOWN` event
    // cannot come before anyone listens.
    if config.hold_at_shutdown && !command_line.iter().any(|a| a == "-S") {
        command_line.push("-S".into());
    }
    let log = File::create(dir.path().join(QEMU_LOG)).context("creating the QEMU log")?;
    let mut program = PathBuf::from(&command_line[0]);
    if program.components().count() > 1 {
        // A relative path with a directory in it would be looked up from the run directory.
        program = absolute(&program);
    }
    let mut cmd = Command::new(&program);
    cmd.args(&command_line[1..])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the QEMU log handle")?)
        .stderr(log);
    kill_with_parent(&mut cmd);
    let started = Instant::now();
    let child = cmd.spawn().with_context(|| {
        format!(
            "starting {} (install QEMU 10, or set ${} to a binary or a directory)",
            program.display(),
            QemuConfig::QEMU_ENV
        )
    })?;
    Ok(Running {
        config: config.clone(),
        command_line,
        child: Some(child),
        dir,
        started,
    })
}

/// A harness killed mid-run (Ctrl-C on `cargo test`, a CI timeout) must not leave a TCG guest
/// spinning a core for ever: QEMU gets SIGKILL when the thread that started it dies. So wait
/// for a run from the thread that spawned it, as [`run`] does.
#[cfg(target_os = "linux")]
fn kill_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl, which is
    // async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn kill_with_parent(_: &mut Command) {}

/// Boots `config` and waits for the result: spawn, timeout, console, outcome. A run held at
/// shutdown dumps what its report names ([`dump::plan_from_records`]) into the run directory,
/// which is removed afterwards: the bytes are in [`Held::dumps`].
pub fn run(config: &QemuConfig) -> Result<RunResult> {
    finish(spawn(config)?, &dump::plan_from_records)
}

/// Like [`run`], keeping the run's files in `dir`.
pub fn run_in(config: &QemuConfig, dir: &Path) -> Result<RunResult> {
    finish(spawn_in(config, dir)?, &dump::plan_from_records)
}

/// Like [`run_in`] (`dir` `None`: a temporary directory), with the dump plan of a held run
/// chosen by `plan`.
pub fn run_with_plan(
    config: &QemuConfig,
    dir: Option<&Path>,
    plan: &dyn Fn(&[Record]) -> DumpPlan,
) -> Result<RunResult> {
    let running = match dir {
        Some(d) => spawn_in(config, d)?,
        None => spawn(config)?,
    };
    finish(running, plan)
}

fn finish(mut running: Running, plan: &dyn Fn(&[Record]) -> DumpPlan) -> Result<RunResult> {
    if !running.config.hold_at_shutdown {
        return running.wait();
    }
    let started = running
        .connect_qmp()
        .and_then(|mut q| q.execute("cont", None).map(|_| q));
    match started {
        Ok(qmp) => running.finish_held(qmp, plan),
        Err(e) => {
            // The guest never ran: say why, after QEMU is gone.
            let mut r = running.wait()?;
            if r.verdict == Outcome::Wedged || r.diagnosis.is_none() {
                r.verdict = Outcome::Crashed;
            }
            r.diagnosis = Some(format!(
                "could not start the held guest over QMP: {e:#}{}",
                r.diagnosis
                    .as_deref()
                    .map_or(String::new(), |d| format!("; {d}"))
            ));
            Ok(r)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Machine;
    use std::os::unix::process::ExitStatusExt;

    fn held_config(m: Machine) -> QemuConfig {
        let mut c = QemuConfig::new(m).unwrap();
        c.hold_at_shutdown = true;
        c.exit_device = false;
        c
    }

    fn report(verdict: Option<&str>) -> Report {
        let mut s = String::from("@sg {\"event\":\"boot\",\"v\":1}\n");
        if let Some(v) = verdict {
            s.push_str(&format!(
                "@sg {{\"event\":\"end\",\"v\":1,\"verdict\":\"{v}\",\"errors\":0,\"warnings\":0,\"entry_to_end_us\":null}}\n"
            ));
        }
        Report::parse(s.as_bytes())
    }

    fn held(reason: Option<&str>) -> Held {
        Held {
            paused: true,
            reason: reason.map(str::to_string),
            guest: Some(true),
            ..Default::default()
        }
    }

    /// `quit` makes QEMU exit 0 whatever the guest did: the verdict is the `end` record's.
    #[test]
    fn held_runs_take_the_verdict_from_the_end_record() {
        let zero = ExitStatus::from_raw(0);
        for m in Machine::ALL {
            let c = held_config(m);
            for (v, o) in [
                ("pass", Outcome::Pass),
                ("fail", Outcome::Fail),
                ("reject", Outcome::Reject),
            ] {
                let (got, why) = decide_held(
                    &c,
                    &report(Some(v)),
                    zero,
                    &held(Some("guest-shutdown")),
                    "",
                );
                assert_eq!((got, why), (o, None), "{m} {v}");
            }
        }
    }

    #[test]
    fn held_runs_need_a_shutdown_the_guest_asked_for() {
        let zero = ExitStatus::from_raw(0);
        let pass = report(Some("pass"));
        // x86's ACPI off can lose the race to its triple-fault fallback.
        let (o, _) = decide_held(
            &held_config(Machine::Q35),
            &pass,
            zero,
            &held(Some("guest-reset")),
            "",
        );
        assert_eq!(o, Outcome::Pass);
        // pseries stops the CPU in RTAS power-off: a reset is a crash.
        let (o, why) = decide_held(
            &held_config(Machine::Pseries),
            &pass,
            zero,
            &held(Some("guest-reset")),
            "",
        );
        assert_eq!(o, Outcome::Crashed);
        assert!(
            why.as_deref().unwrap().contains("reason guest-reset")
                && why.as_deref().unwrap().contains("(guest-shutdown)"),
            "{why:?}"
        );
        for reason in [Some("host-signal"), Some("guest-panic"), None] {
            let (o, why) = decide_held(
                &held_config(Machine::Microvm),
                &pass,
                zero,
                &held(reason),
                "",
            );
            assert_eq!(o, Outcome::Crashed, "{reason:?}");
            assert!(why.unwrap().contains("not one the guest's power-off gives"));
        }
    }

    #[test]
    fn held_runs_that_did_not_hold_or_did_not_end() {
        let c = held_config(Machine::Microvm);
        // QEMU exited by itself: -action ignored, or isa-debug-exit after all.
        let not_held = Held::default();
        let (o, why) = decide_held(
            &c,
            &report(Some("pass")),
            ExitStatus::from_raw(1 << 8),
            &not_held,
            "qemu: something\n",
        );
        assert_eq!(o, Outcome::Crashed);
        let why = why.unwrap();
        assert!(
            why.contains("exit status 1 instead of holding")
                && why.contains("nothing was dumped")
                && why.contains("QEMU said: qemu: something"),
            "{why}"
        );
        let (o, why) = decide_held(
            &c,
            &report(None),
            ExitStatus::from_raw(0),
            &held(Some("guest-shutdown")),
            "",
        );
        assert_eq!(o, Outcome::Crashed);
        assert!(why.unwrap().contains("no `end` record"));
    }
}
