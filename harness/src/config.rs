//! What to boot and how: [`QemuConfig`] and the QEMU command line it stands for.
//!
//! The command line is plain and reproducible: the same config gives the same arguments, with
//! no temporary paths in them. The console file and the QMP socket are relative names
//! ([`CONSOLE_FILE`], [`QMP_SOCKET`]) and QEMU runs inside a private directory (see
//! [`crate::run`]), so a printed command can be pasted into a shell anywhere and leaves its
//! console in `./console.log`.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::kvm;

/// The console capture, relative to QEMU's working directory. A file (not a pipe) because a
/// file never blocks the guest however much it prints, and is complete once QEMU has exited.
pub const CONSOLE_FILE: &str = "console.log";
/// The QMP socket, relative to QEMU's working directory, for features that stop the guest or
/// dump its memory while it runs.
pub const QMP_SOCKET: &str = "qmp.sock";

/// QEMU's trace log, relative to QEMU's working directory: `-D` sends the `log` trace backend's
/// lines there when [`QemuConfig::trace_events`] enables any (see [`crate::trace`]).
pub const TRACE_FILE: &str = "trace.log";

/// The x86 exit device: the guest writes its verdict code to port 0xf4 and QEMU exits with
/// `2 * code + 1` (docs/report.md).
pub const X86_EXIT_DEVICE: &str = "isa-debug-exit,iobase=0xf4,iosize=0x04";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    Ppc64le,
    X86_64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Ppc64le, Arch::X86_64];

    /// The name the report and the image files use.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Ppc64le => "ppc64le",
            Arch::X86_64 => "x86_64",
        }
    }

    /// The QEMU system emulator for this arch (one binary serves both ppc64 endiannesses).
    pub fn qemu_binary_name(self) -> &'static str {
        match self {
            Arch::Ppc64le => "qemu-system-ppc64",
            Arch::X86_64 => "qemu-system-x86_64",
        }
    }

    /// The machine used when none is given.
    pub fn default_machine(self) -> Machine {
        match self {
            Arch::Ppc64le => Machine::Pseries,
            Arch::X86_64 => Machine::Microvm,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Arch {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ppc64le" => Ok(Arch::Ppc64le),
            "x86_64" => Ok(Arch::X86_64),
            _ => bail!("unknown arch {s:?} (ppc64le, x86_64)"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Machine {
    Pseries,
    Microvm,
    Q35,
    Pc,
}

impl Machine {
    pub const ALL: [Machine; 4] = [
        Machine::Pseries,
        Machine::Microvm,
        Machine::Q35,
        Machine::Pc,
    ];

    /// The name for `-M` and the report's `boot.machine`.
    pub fn as_str(self) -> &'static str {
        match self {
            Machine::Pseries => "pseries",
            Machine::Microvm => "microvm",
            Machine::Q35 => "q35",
            Machine::Pc => "pc",
        }
    }

    pub fn arch(self) -> Arch {
        match self {
            Machine::Pseries => Arch::Ppc64le,
            Machine::Microvm | Machine::Q35 | Machine::Pc => Arch::X86_64,
        }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Machine {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Machine::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .with_context(|| format!("unknown machine {s:?} (pseries, microvm, q35, pc)"))
    }
}

/// pseries firmware.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Firmware {
    /// QEMU's Virtual Open Firmware (`-M pseries,x-vof=on`): fast, the default here.
    Vof,
    /// SLOF, QEMU's default pseries firmware: several seconds of TCG before the guest runs.
    Slof,
}

impl Firmware {
    /// The name the report's `boot.firmware` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Vof => "vof",
            Firmware::Slof => "slof",
        }
    }
}

impl fmt::Display for Firmware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Firmware {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "vof" => Ok(Firmware::Vof),
            "slof" => Ok(Firmware::Slof),
            _ => bail!("unknown firmware {s:?} (vof, slof)"),
        }
    }
}

/// The accelerator. TCG is the default everywhere: it is reproducible, and the KVM on the
/// development and CI machines is nested and unreliable. `ACCEL` in the environment changes
/// the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Accel {
    Tcg,
    /// KVM, whether or not it is usable: QEMU then fails loudly if it is not.
    Kvm,
    /// KVM for an x86_64 guest on an x86_64 host when `/dev/kvm` works (see [`kvm::usable`]),
    /// TCG otherwise.
    Auto,
}

impl Accel {
    /// The environment variable that sets the default accelerator.
    pub const ENV: &'static str = "ACCEL";

    /// The default: `$ACCEL` when set (an invalid value is an error, not a silent TCG), else TCG.
    pub fn from_env() -> Result<Accel> {
        match std::env::var(Self::ENV) {
            Ok(v) if !v.is_empty() => v.parse().with_context(|| format!("${}", Self::ENV)),
            _ => Ok(Accel::Tcg),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
            Accel::Auto => "auto",
        }
    }

    /// What `-accel` gets for a guest of `arch`: `Auto` is decided here (probing `/dev/kvm`
    /// once per process).
    pub fn resolve(self, arch: Arch) -> Accel {
        match self {
            Accel::Auto => {
                let host_x86 = cfg!(target_arch = "x86_64");
                if arch == Arch::X86_64 && host_x86 && kvm::usable() {
                    Accel::Kvm
                } else {
                    Accel::Tcg
                }
            }
            a => a,
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Accel {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tcg" => Ok(Accel::Tcg),
            "kvm" => Ok(Accel::Kvm),
            "auto" => Ok(Accel::Auto),
            _ => bail!("unknown accelerator {s:?} (tcg, kvm, auto)"),
        }
    }
}

/// One QEMU run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuConfig {
    pub arch: Arch,
    pub machine: Machine,
    /// pseries only; `None` means VOF.
    pub firmware: Option<Firmware>,
    pub accel: Accel,
    /// As `-m` takes it: `512M`, `4G`.
    pub memory: String,
    pub smp: u32,
    pub kernel: PathBuf,
    pub append: Option<String>,
    /// Each becomes `-device <d>`.
    pub devices: Vec<String>,
    /// Passed to QEMU as they are, last. QEMU runs in a private directory: give absolute paths.
    pub extra_args: Vec<String>,
    /// `None`: [`Arch::qemu_binary_name`] from `PATH`.
    pub qemu_binary: Option<PathBuf>,
    /// x86 only: add [`X86_EXIT_DEVICE`] so that QEMU's exit status carries the verdict. Off, the
    /// guest powers off through ACPI and QEMU exits 0.
    pub exit_device: bool,
    /// Connect the guest console (to `console.log`). Off, the machine has no console at all:
    /// the guest must still end the run, with its verdict in the exit status where it can.
    pub console: bool,
    /// QEMU is killed after this long and the run is `Wedged`.
    pub timeout: Duration,
    /// Hold QEMU at the guest's power-off instead of letting it exit (`-action shutdown=pause`),
    /// so that the harness can dump guest memory over QMP before it quits QEMU (see
    /// [`crate::run`]). x86 needs the exit device off for this: `isa-debug-exit` makes QEMU
    /// exit at once, before anything can be dumped.
    pub hold_at_shutdown: bool,
    /// QEMU trace events to enable, as `-trace enable=` takes them (a name or a pattern with `*`,
    /// e.g. `spapr_iommu_*`; [`crate::trace::IommuKind::trace_patterns`]). The installed QEMU's
    /// `log` backend then writes them to [`TRACE_FILE`] (`-D`). Empty: no `-trace`, no `-D`, and
    /// the command line is what it was without tracing.
    pub trace_events: Vec<String>,
}

impl QemuConfig {
    /// The environment variable that names the QEMU to use: a binary, or a directory holding
    /// `qemu-system-ppc64` and `qemu-system-x86_64` (handy when one suite boots both arches).
    pub const QEMU_ENV: &'static str = "QEMU";

    /// Defaults for `machine` (its arch follows from it): 512M, one CPU, the accelerator from
    /// `$ACCEL` (else TCG), QEMU from `$QEMU` (else `PATH`), a 60 s timeout, and the default
    /// image `build/secure-guest-<arch>` of this workspace.
    pub fn new(machine: Machine) -> Result<QemuConfig> {
        let arch = machine.arch();
        Ok(QemuConfig {
            arch,
            machine,
            firmware: None,
            accel: Accel::from_env()?,
            memory: "512M".into(),
            smp: 1,
            kernel: default_kernel(arch, "secure-guest"),
            append: None,
            devices: Vec::new(),
            extra_args: Vec::new(),
            qemu_binary: qemu_from_env(arch),
            exit_device: true,
            console: true,
            timeout: Duration::from_secs(60),
            hold_at_shutdown: false,
            trace_events: Vec::new(),
        })
    }

    /// The firmware actually used: pseries defaults to VOF, x86 has none to choose.
    pub fn effective_firmware(&self) -> Option<Firmware> {
        match self.machine {
            Machine::Pseries => Some(self.firmware.unwrap_or(Firmware::Vof)),
            _ => None,
        }
    }

    /// Whether QEMU's exit status carries the verdict.
    pub fn has_exit_device(&self) -> bool {
        self.arch == Arch::X86_64 && self.exit_device
    }

    /// `memory` in bytes, as QEMU reads it (a bare number is MiB).
    pub fn memory_bytes(&self) -> Result<u64> {
        parse_qemu_size(&self.memory)
            .with_context(|| format!("memory size {:?} (e.g. 512M, 4G)", self.memory))
    }

    /// The program to run.
    pub fn qemu_program(&self) -> PathBuf {
        self.qemu_binary
            .clone()
            .unwrap_or_else(|| PathBuf::from(self.arch.qemu_binary_name()))
    }

    /// Checks what QEMU would reject late or, worse, accept with a different meaning.
    pub fn validate(&self) -> Result<()> {
        if self.machine.arch() != self.arch {
            bail!(
                "machine {} is {}, not {}",
                self.machine,
                self.machine.arch(),
                self.arch
            );
        }
        if self.firmware.is_some() && self.machine != Machine::Pseries {
            bail!("--firmware is for pseries only (x86 machines use their own BIOS)");
        }
        if self.smp == 0 {
            bail!("smp must be at least 1");
        }
        self.memory_bytes()?;
        if self.timeout.is_zero() {
            bail!("timeout must be more than 0");
        }
        if self.accel == Accel::Kvm && self.arch == Arch::Ppc64le {
            // Not impossible on a POWER host, but there the harness has never been tried.
            bail!("--accel kvm is for x86_64 guests (ppc64le runs under TCG)");
        }
        if let Some(a) = &self.append
            && a.contains('\0')
        {
            bail!("the command line cannot contain NUL");
        }
        if let Some(bad) = self.trace_events.iter().find(|e| !valid_trace_pattern(e)) {
            bail!(
                "trace event {bad:?}: expected a QEMU trace event name or pattern (letters, \
                 digits, `_`, `*`, `?`)"
            );
        }
        if self.hold_at_shutdown && self.has_exit_device() {
            bail!(
                "holding QEMU at shutdown needs the x86 exit device off (isa-debug-exit makes \
                 QEMU exit before memory can be dumped): set exit_device = false"
            );
        }
        Ok(())
    }

    /// The QEMU command line, program first. Deterministic except that `Accel::Auto` probes
    /// `/dev/kvm` (once per process).
    pub fn command_line(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |args: &[&str]| a.extend(args.iter().map(|s| s.to_string()));
        push(&[&self.qemu_program().to_string_lossy()]);
        // No default devices (NICs, VGA, a serial on stdio, the monitor) and no windows: the
        // machine has exactly what is listed here, so a report can be checked against it.
        push(&[
            "-nodefaults",
            "-nographic",
            "-display",
            "none",
            "-monitor",
            "none",
        ]);
        // A guest that resets (triple fault, firmware reboot) ends the run instead of booting
        // again; QEMU exits 0 and the missing `end` record makes it `crashed`.
        push(&["-no-reboot"]);
        // Held runs: the guest's power-off (RTAS power-off, ACPI soft-off) pauses QEMU, with a
        // QMP `SHUTDOWN` event and status `shutdown`, instead of ending it. `-no-reboot` above
        // already makes a reset a shutdown (`-action reboot=shutdown`), hence a pause too.
        if self.hold_at_shutdown {
            push(&["-action", "shutdown=pause"]);
        }
        let machine = match self.effective_firmware() {
            Some(Firmware::Vof) => "pseries,x-vof=on".to_string(),
            // SLOF is what pseries loads when VOF is not asked for.
            Some(Firmware::Slof) | None => self.machine.as_str().to_string(),
        };
        push(&["-M", &machine]);
        push(&["-accel", self.accel.resolve(self.arch).as_str()]);
        push(&["-m", &self.memory, "-smp", &self.smp.to_string()]);
        push(&["-kernel", &absolute(&self.kernel).to_string_lossy()]);
        if let Some(append) = &self.append {
            push(&["-append", append]);
        }
        if self.console {
            push(&["-chardev", &format!("file,path={CONSOLE_FILE},id=con0")]);
        }
        // `-serial` on every machine. pseries turns serial ports into spapr-vty devices, and
        // creates them before its always-present NVRAM, so the console is
        // /vdevice/vty@71000000; an explicit `-device spapr-vty` comes after the NVRAM and would
        // be vty@71000001. On x86 it is COM1 (0x3f8); microvm already has its ISA serial port
        // (isa-serial=on by default), this only connects it.
        if self.console {
            push(&["-serial", "chardev:con0"]);
        }
        if self.has_exit_device() {
            push(&["-device", X86_EXIT_DEVICE]);
        }
        push(&["-qmp", &format!("unix:{QMP_SOCKET},server=on,wait=off")]);
        // Trace events go through the `log` backend (the one Debian's QEMU is built with) to a
        // file of their own, not QEMU's stderr.
        for e in &self.trace_events {
            push(&["-trace", &format!("enable={e}")]);
        }
        if !self.trace_events.is_empty() {
            push(&["-D", TRACE_FILE]);
        }
        for d in &self.devices {
            push(&["-device", d]);
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }

    /// The command line as one string a POSIX shell runs as is.
    pub fn reproduce(&self) -> String {
        shell_join(&self.command_line())
    }
}

/// A QEMU trace event name or `-trace enable=` pattern: nothing that could end the option or
/// add another (`,`), or be read as a file name.
fn valid_trace_pattern(p: &str) -> bool {
    !p.is_empty()
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'*' || b == b'?')
}

/// The workspace root: where `build/` and `Cargo.toml` live. Taken from where this crate was
/// compiled (it sits in `<root>/harness`), falling back to the current directory when the
/// binary runs somewhere else.
pub fn workspace_root() -> PathBuf {
    let compiled = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if compiled.join("Cargo.toml").is_file() {
        compiled.canonicalize().unwrap_or(compiled)
    } else {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
    }
}

/// `build/<name>-<arch>` in the workspace, e.g. `build/secure-guest-x86_64`, `build/noop-ppc64le`
/// (what `make images` writes).
pub fn default_kernel(arch: Arch, name: &str) -> PathBuf {
    workspace_root()
        .join("build")
        .join(format!("{name}-{arch}"))
}

fn qemu_from_env(arch: Arch) -> Option<PathBuf> {
    let v: OsString = std::env::var_os(QemuConfig::QEMU_ENV).filter(|v| !v.is_empty())?;
    let p = PathBuf::from(v);
    Some(if p.is_dir() {
        p.join(arch.qemu_binary_name())
    } else {
        p
    })
}

/// A path made absolute against the current directory, without touching the file system:
/// QEMU runs in another directory, and a missing kernel should be reported by name.
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// QEMU's size syntax for `-m`: a number with an optional `K`/`M`/`G`/`T` suffix (binary units,
/// optional trailing `B`); a bare number is MiB.
pub fn parse_qemu_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = s.strip_suffix(['b', 'B']).unwrap_or(s);
    let (num, shift) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 10),
        (i, 'm' | 'M') => (&s[..i], 20),
        (i, 'g' | 'G') => (&s[..i], 30),
        (i, 't' | 'T') => (&s[..i], 40),
        _ => (s, 20),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    num.parse::<u64>()
        .ok()?
        .checked_mul(1 << shift)
        .filter(|&n| n > 0)
}

/// Quotes one argument for a POSIX shell, only when it needs it.
pub fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

pub fn shell_join(args: &[String]) -> String {
    args.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(machine: Machine) -> QemuConfig {
        QemuConfig {
            accel: Accel::Tcg,
            qemu_binary: None,
            kernel: PathBuf::from("/images/sg"),
            ..QemuConfig::new(machine).unwrap()
        }
    }

    fn joined(c: &QemuConfig) -> String {
        c.command_line().join(" ")
    }

    #[test]
    fn pseries_vof_and_slof() {
        let mut c = config(Machine::Pseries);
        c.append = Some("sg.x=1 hello".into());
        assert_eq!(
            joined(&c),
            "qemu-system-ppc64 -nodefaults -nographic -display none -monitor none -no-reboot \
             -M pseries,x-vof=on -accel tcg -m 512M -smp 1 -kernel /images/sg \
             -append sg.x=1 hello -chardev file,path=console.log,id=con0 -serial chardev:con0 \
             -qmp unix:qmp.sock,server=on,wait=off"
        );
        c.firmware = Some(Firmware::Slof);
        assert!(joined(&c).contains(" -M pseries -accel tcg "));
        assert!(!joined(&c).contains("isa-debug-exit"));
        assert_eq!(c.effective_firmware(), Some(Firmware::Slof));
    }

    #[test]
    fn x86_machines() {
        for m in [Machine::Microvm, Machine::Q35, Machine::Pc] {
            let mut c = config(m);
            c.devices.push("virtio-rng-device".into());
            c.extra_args = vec!["-d".into(), "guest_errors".into()];
            assert_eq!(
                joined(&c),
                format!(
                    "qemu-system-x86_64 -nodefaults -nographic -display none -monitor none \
                     -no-reboot -M {m} -accel tcg -m 512M -smp 1 -kernel /images/sg \
                     -chardev file,path=console.log,id=con0 -serial chardev:con0 \
                     -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
                     -qmp unix:qmp.sock,server=on,wait=off -device virtio-rng-device \
                     -d guest_errors"
                )
            );
            assert_eq!(c.effective_firmware(), None);
            c.exit_device = false;
            assert!(!joined(&c).contains("isa-debug-exit"));
        }
    }

    #[test]
    fn hold_at_shutdown() {
        for m in Machine::ALL {
            let mut c = config(m);
            assert!(!joined(&c).contains("-action"));
            c.hold_at_shutdown = true;
            c.exit_device = false;
            c.validate().unwrap();
            assert!(
                joined(&c).contains(" -no-reboot -action shutdown=pause -M "),
                "{}",
                joined(&c)
            );
            c.exit_device = true;
            // pseries has no exit device to be in the way.
            assert_eq!(c.validate().is_ok(), m == Machine::Pseries, "{m}");
        }
    }

    #[test]
    fn trace_events() {
        for m in Machine::ALL {
            let mut c = config(m);
            let plain = c.command_line();
            assert!(!plain.iter().any(|a| a == "-trace" || a == "-D"));
            c.trace_events = vec!["spapr_iommu_*".into(), "vtd_dmar_fault".into()];
            c.validate().unwrap();
            let traced = c.command_line();
            // Tracing adds its arguments after -qmp and changes nothing else.
            let qmp = traced.iter().position(|a| a == "-qmp").unwrap() + 2;
            assert_eq!(
                traced[qmp..qmp + 6].join(" "),
                "-trace enable=spapr_iommu_* -trace enable=vtd_dmar_fault -D trace.log"
            );
            let mut without = traced.clone();
            without.drain(qmp..qmp + 6);
            assert_eq!(without, plain, "{m}");
            assert!(c.reproduce().contains(" -trace 'enable=spapr_iommu_*' "));
            for bad in ["", "a,b", "x y", "../f", "events=/tmp/f"] {
                c.trace_events = vec![bad.into()];
                assert!(c.validate().is_err(), "{bad:?}");
            }
        }
    }

    #[test]
    fn relative_kernel_becomes_absolute() {
        let mut c = config(Machine::Q35);
        c.kernel = PathBuf::from("build/x");
        let line = c.command_line();
        let k = &line[line.iter().position(|a| a == "-kernel").unwrap() + 1];
        assert!(Path::new(k).is_absolute() && k.ends_with("build/x"), "{k}");
    }

    #[test]
    fn validation() {
        let ok = config(Machine::Q35);
        ok.validate().unwrap();
        let bad = [
            QemuConfig {
                arch: Arch::Ppc64le,
                ..ok.clone()
            },
            QemuConfig {
                firmware: Some(Firmware::Vof),
                ..ok.clone()
            },
            QemuConfig {
                smp: 0,
                ..ok.clone()
            },
            QemuConfig {
                memory: "lots".into(),
                ..ok.clone()
            },
            QemuConfig {
                timeout: Duration::ZERO,
                ..ok.clone()
            },
            QemuConfig {
                append: Some("a\0b".into()),
                ..ok.clone()
            },
            QemuConfig {
                accel: Accel::Kvm,
                ..config(Machine::Pseries)
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
        QemuConfig {
            firmware: Some(Firmware::Slof),
            ..config(Machine::Pseries)
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn names_round_trip() {
        for m in Machine::ALL {
            assert_eq!(m.as_str().parse::<Machine>().unwrap(), m);
        }
        for a in Arch::ALL {
            assert_eq!(a.as_str().parse::<Arch>().unwrap(), a);
            assert_eq!(a.default_machine().arch(), a);
        }
        for f in [Firmware::Vof, Firmware::Slof] {
            assert_eq!(f.as_str().parse::<Firmware>().unwrap(), f);
        }
        for a in [Accel::Tcg, Accel::Kvm, Accel::Auto] {
            assert_eq!(a.as_str().parse::<Accel>().unwrap(), a);
        }
        assert!("PSERIES".parse::<Machine>().is_err());
        assert!("x86".parse::<Arch>().is_err());
    }

    #[test]
    fn auto_accel_never_picks_kvm_for_ppc() {
        assert_eq!(Accel::Auto.resolve(Arch::Ppc64le), Accel::Tcg);
        assert_eq!(Accel::Tcg.resolve(Arch::X86_64), Accel::Tcg);
        assert_eq!(Accel::Kvm.resolve(Arch::X86_64), Accel::Kvm);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_qemu_size("512M"), Some(512 << 20));
        assert_eq!(parse_qemu_size("512"), Some(512 << 20));
        assert_eq!(parse_qemu_size("4G"), Some(4 << 30));
        assert_eq!(parse_qemu_size("5g"), Some(5 << 30));
        assert_eq!(parse_qemu_size("1GB"), Some(1 << 30));
        assert_eq!(parse_qemu_size("65536K"), Some(64 << 20));
        for bad in ["", "G", "-1G", "1.5G", "0", "1X", "99999999999T"] {
            assert_eq!(parse_qemu_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("-M"), "-M");
        assert_eq!(
            shell_quote("file,path=console.log,id=con0"),
            "file,path=console.log,id=con0"
        );
        assert_eq!(shell_quote("sg.x=1 hello"), "'sg.x=1 hello'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
        let mut c = config(Machine::Microvm);
        c.append = Some("sg.x=1 hello".into());
        assert!(c.reproduce().contains(" -append 'sg.x=1 hello' "));
    }
}
