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
//! record parser and typed views), [`kvm`] (whether `--accel auto` can use KVM). For virtio:
//! [`devices`] (device specs to QEMU arguments per machine), [`echo`] (the net echo backend),
//! [`oracle`] (host-side checks of the data the guest moved), [`qmp`] (a minimal QMP client),
//! [`matrix`] (every machine × transport × ring, with all devices, in parallel). For secure
//! guests: [`dump`] (guest memory of a run held at shutdown, over QMP `pmemsave`) and [`secure`]
//! (the memory-dump oracle: nothing private in the shared swiotlb pool). For IOMMU DMA: [`trace`]
//! (QEMU trace events: which to enable, and an exact parser for the `log` backend's lines) and
//! [`iommu`] (the trace oracle: every device access translated to a page the guest had mapped).
//! [`bench`](mod@bench) is `make bench`: boot time and virtio-blk throughput of every machine × DMA path.

pub mod bench;
pub mod bootratio;
pub mod config;
pub mod devices;
pub mod dump;
pub mod echo;
#[doc(hidden)]
pub mod fake;
pub mod iommu;
pub mod kvm;
pub mod matrix;
pub mod oracle;
pub mod qmp;
pub mod report;
pub mod run;
pub mod secure;
pub mod trace;

pub use config::{Accel, Arch, Firmware, Machine, QemuConfig, default_kernel, workspace_root};
pub use report::{Record, Report};
pub use run::{Held, Outcome, RunResult, Running, run, run_in, run_with_plan, spawn, spawn_in};
