//! Running QEMU: spawn, enforce the timeout, read the console, decide the outcome.
//!
//! Every run gets a private directory that is QEMU's working directory: the console file and the
//! QMP socket of the command line ([`crate::config::CONSOLE_FILE`], [`crate::config::QMP_SOCKET`])
//! land there, so parallel runs never share a path and the command line has no temporary names
//! in it. QEMU's own stdout and stderr go to `qemu.log` next to them (a file, so that a chatty
//! QEMU can never fill a pipe and stall).

use std::fmt;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::config::{CONSOLE_FILE, QMP_SOCKET, QemuConfig, absolute, shell_join};
use crate::report::{self, Event, ProtocolError, Record, Report, Verdict};

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

    /// Waits for QEMU to exit, killing it at the config's timeout (counted from the spawn), then
    /// reads the console and decides the outcome.
    pub fn wait(mut self) -> Result<RunResult> {
        let mut child = self
            .child
            .take()
            .expect("a Running always has its child until waited");
        let deadline = self.started + self.config.timeout;
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
        let wall_time = self.started.elapsed();
        let dir = self.dir.path();
        let console_bytes = read_if_exists(&dir.join(CONSOLE_FILE))?;
        let stderr = String::from_utf8_lossy(&read_if_exists(&dir.join(QEMU_LOG))?).into_owned();
        let report = Report::parse(&console_bytes);
        let (verdict, diagnosis) = decide(&self.config, &report, status, timed_out, &stderr);
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
    for f in [CONSOLE_FILE, QEMU_LOG, QMP_SOCKET] {
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
    let command_line = config.command_line();
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

/// Boots `config` and waits for the result: spawn, timeout, console, outcome.
pub fn run(config: &QemuConfig) -> Result<RunResult> {
    spawn(config)?.wait()
}

/// Like [`run`], keeping the run's files in `dir`.
pub fn run_in(config: &QemuConfig, dir: &Path) -> Result<RunResult> {
    spawn_in(config, dir)?.wait()
}
