//! Host side of secure-guest: builds the QEMU command line for a machine, boots the guest with a
//! timeout, reads its report off the console (docs/report.md) and decides the outcome.
//!
//! ```no_run
//! use harness::{Machine, QemuConfig, Outcome};
//! let mut config = QemuConfig::new(Machine::Q35)?;
//! config.append = Some("sg.x=1".into());
//! let result = harness::run(&config)?;
//! assert_eq!(result.verdict, Outcome::Pass, "{result}");
//! assert_eq!(result.boot().unwrap().machine, "q35");
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Modules: [`config`] (what to boot, the command line), [`run`] (running it), [`report`] (the
//! record parser and typed views), [`kvm`] (whether `--accel auto` can use KVM). Matching
//! console patterns and QMP clients belong in modules of their own next to these.

pub mod config;
pub mod kvm;
pub mod report;
pub mod run;

pub use config::{Accel, Arch, Firmware, Machine, QemuConfig, default_kernel, workspace_root};
pub use report::{Record, Report};
pub use run::{Outcome, RunResult, Running, run, run_in, spawn, spawn_in};
