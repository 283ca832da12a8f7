//! `make bench`: boot time and virtio-blk throughput of every machine × DMA path, in one run.
//!
//! The bench is a table of *cells*: a platform (pseries under VOF, microvm, q35; the x86 ones
//! again under KVM where KVM works) × a DMA path (`direct`, `bounce`, `iommu`, `iommu+bounce`,
//! `ddw`, `iommu-static`). [`path_setup`] says how each cell is configured (guest options, device properties,
//! extra QEMU devices) or why the machine cannot have that path at all. A cell the machine could
//! have is first *probed* with a tiny run: if the guest does not know an option, rejects the
//! configuration, or puts the disk on another DMA path than asked, the cell is `n/a` with the
//! guest's own words, and the bench goes on. So a path that a guest does not implement yet shows
//! as `n/a (...)` and lights up when it does.
//!
//! What each cell measures, in rounds (every cell once per round, so that slow drift of a busy
//! host hits every cell alike, and the time budget cuts rounds, never a cell):
//! - boot: the wall time of a whole QEMU run of the guest doing nothing but init (one disk
//!   attached, `sg.blk.read=0`), then at once the same QEMU configuration with the no-op payload;
//!   the ratio of each pair, median over the rounds;
//! - six workload runs (4 KiB, 64 KiB, 1 MiB requests × queue depth 1 and full): a sequential
//!   read, then (4 KiB runs) random 4 KiB reads, then a sequential write, each timed by the guest
//!   on its calibrated clock (`read_us`, `random_us`, `write_us`, docs/report.md);
//! - from the same runs, per MiB moved: bytes bounced and zeroed, hypercalls and IOMMU commands
//!   where the guest counts them, notifications (each a VM exit under KVM), pool waits; the pool
//!   and heap high-water marks;
//! - the guest's clock against the host's: each record line is stamped when it appears in the
//!   console file, and the guest's `t_us` span from `boot` to `end` is divided by the host's.
//!
//! The disk is one raw image of [`DISK_BYTES`] holding the pattern of [`DISK_SEED`]
//! (`src/pattern.rs`), opened with `cache=unsafe` (the host page cache; flushes are no-ops), so
//! the figures are the guest's and QEMU's virtio path, not the host's disk. The guest writes the
//! same pattern over it (`sg.blk.write=0:LEN:DISK_SEED`), so the image never changes: every
//! run's read, random-read and write checksums are checked against it, and at the end the image
//! must still be what it was.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::config::{Accel, Arch, Machine, QemuConfig, absolute, default_kernel};
use crate::report::Record;
use crate::run::{Outcome, RunResult};
use secure_guest::crc32c::{Crc32c, crc32c};
use secure_guest::virtio::blk::{random_len, random_offset};

mod output;
pub use output::{csv, markdown, svg};

#[cfg(test)]
mod tests;

/// The bench disk: room for the largest read and write.
pub const DISK_BYTES: u64 = 64 << 20;
/// The pattern on the disk, and what the guest writes over it.
pub const DISK_SEED: u64 = 0x5347_4245;
/// Figures whose repeats spread more than this (max − min over the median) are marked.
pub const VARIES: f64 = 0.10;
/// How far the guest's clock may run from the host's in a run: the rate the guest's timings are
/// taken with (the timebase, a calibrated TSC) must be right to this, else the run fails.
pub const CLOCK_TOLERANCE: f64 = 0.03;
/// Host spans shorter than this are not used for the clock check (the stamps are ~2 ms apart).
const CLOCK_MIN_SPAN: Duration = Duration::from_millis(100);
/// A KVM platform whose probe reads slower than this runs its boot figures only.
const KVM_MIN_MBPS: f64 = 20.0;
/// Rounds of a boot-only (KVM) cell, with one boot pair each: each of its runs costs seconds of
/// VM creation here.
const BOOT_ONLY_ROUNDS: u32 = 2;
/// The workload the targets and the cost table use: 64 KiB sequential reads, queue depth full.
pub const HEADLINE: Workload = Workload {
    req: 64 << 10,
    qd1: false,
};

/// A DMA path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DmaPath {
    Direct,
    Bounce,
    Iommu,
    IommuBounce,
    Ddw,
    /// An x86 IOMMU domain with all RAM mapped once at IOVA = physical address
    /// (`sg.iommu.map=static`): the x86 counterpart of `ddw`.
    IommuStatic,
}

impl DmaPath {
    pub const ALL: [DmaPath; 6] = [
        DmaPath::Direct,
        DmaPath::Bounce,
        DmaPath::Iommu,
        DmaPath::IommuBounce,
        DmaPath::Ddw,
        DmaPath::IommuStatic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DmaPath::Direct => "direct",
            DmaPath::Bounce => "bounce",
            DmaPath::Iommu => "iommu",
            DmaPath::IommuBounce => "iommu+bounce",
            DmaPath::Ddw => "ddw",
            DmaPath::IommuStatic => "iommu-static",
        }
    }

    /// The `virtio.dma` value that means the guest took this path.
    pub fn expected_dma(self) -> &'static str {
        match self {
            DmaPath::Direct => "direct",
            DmaPath::Bounce => "bounce",
            DmaPath::Iommu | DmaPath::Ddw | DmaPath::IommuStatic => "iommu",
            DmaPath::IommuBounce => "iommu+bounce",
        }
    }

    /// The `virtio.iommu.mode` the path needs, when it needs one: `iommu` is the per-request
    /// mapping of a dynamic domain, `ddw` the dynamic DMA window, `iommu-static` the x86
    /// identity domain.
    pub fn expected_mode(self) -> Option<&'static str> {
        match self {
            DmaPath::Iommu => Some("dynamic"),
            DmaPath::Ddw => Some("ddw"),
            DmaPath::IommuStatic => Some("static"),
            _ => None,
        }
    }
}

/// A machine and its accelerator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Platform {
    pub machine: Machine,
    pub kvm: bool,
}

impl Platform {
    /// `pseries-vof`, `microvm`, `q35`, `microvm-kvm`, `q35-kvm`.
    pub fn name(&self) -> String {
        let m = match self.machine {
            Machine::Pseries => "pseries-vof",
            m => m.as_str(),
        };
        if self.kvm {
            format!("{m}-kvm")
        } else {
            m.to_string()
        }
    }

    pub fn accel(&self) -> Accel {
        if self.kvm { Accel::Kvm } else { Accel::Tcg }
    }
}

/// How a cell is configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathSetup {
    /// Guest options.
    pub append: Vec<String>,
    /// Appended to the blk `-device`.
    pub device_props: String,
    /// More QEMU arguments (an IOMMU device).
    pub extra_args: Vec<String>,
}

/// How `machine` runs `path`, or why it cannot. The guest options are those of README.md:
/// `sg.secure=emulate` for the bounce paths; `sg.dma` and `sg.tce` for the IOMMU paths (a guest
/// that does not know them says so, and the probe makes the cell `n/a`).
/// - bounce: x86 devices offer `ACCESS_PLATFORM` with `iommu_platform=on` and, with no IOMMU,
///   DMA to guest-physical addresses; a pseries device with `iommu_platform=on` sits behind the
///   PHB's TCE table instead, so pseries bounces a device without it (`sg.legacy_devices=bounce`).
/// - iommu: pseries maps each request in the PHB's default TCE window (`sg.tce=dynamic`); q35
///   goes through a virtio-iommu (one MAP and one UNMAP request per request); microvm has no
///   IOMMU for virtio-mmio in QEMU 10.
/// - iommu+bounce: the shared pool mapped once, in the pseries default (DDW when the PHB offers
///   it) or in the virtio-iommu.
/// - ddw: all RAM mapped once in a dynamic DMA window (`sg.tce=ddw`), a pseries PHB feature.
/// - iommu-static: all RAM mapped once at IOVA = physical address in the x86 IOMMU's domain
///   (`sg.iommu.map=static`; q35 through a virtio-iommu), the x86 counterpart of `ddw`.
pub fn path_setup(machine: Machine, path: DmaPath) -> Result<PathSetup, String> {
    let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let iommu_props = ",iommu_platform=on".to_string();
    let iommu_device = |m: Machine| -> Result<Vec<String>, String> {
        match m {
            Machine::Pseries => Ok(Vec::new()),
            Machine::Q35 => Ok(words(&["-device", "virtio-iommu-pci"])),
            m => Err(format!(
                "{m} has no IOMMU for its virtio devices in QEMU 10"
            )),
        }
    };
    Ok(match path {
        DmaPath::Direct => PathSetup {
            append: Vec::new(),
            device_props: String::new(),
            extra_args: Vec::new(),
        },
        DmaPath::Bounce if machine == Machine::Pseries => PathSetup {
            append: words(&["sg.secure=emulate", "sg.legacy_devices=bounce"]),
            device_props: String::new(),
            extra_args: Vec::new(),
        },
        DmaPath::Bounce => PathSetup {
            append: words(&["sg.secure=emulate"]),
            device_props: iommu_props,
            extra_args: Vec::new(),
        },
        DmaPath::Iommu => PathSetup {
            append: if machine == Machine::Pseries {
                words(&["sg.dma=iommu", "sg.tce=dynamic"])
            } else {
                words(&["sg.dma=iommu"])
            },
            device_props: iommu_props,
            extra_args: iommu_device(machine)?,
        },
        DmaPath::IommuBounce => PathSetup {
            append: words(&["sg.secure=emulate", "sg.dma=iommu+bounce"]),
            device_props: iommu_props,
            extra_args: iommu_device(machine)?,
        },
        DmaPath::Ddw if machine == Machine::Pseries => PathSetup {
            append: words(&["sg.dma=iommu", "sg.tce=ddw"]),
            device_props: iommu_props,
            extra_args: Vec::new(),
        },
        DmaPath::Ddw => {
            return Err("DDW (dynamic DMA windows) is a pseries PHB feature".into());
        }
        DmaPath::IommuStatic if machine == Machine::Pseries => {
            return Err(
                "sg.iommu.map=static is the x86 IOMMUs' mode: pseries maps all RAM with ddw".into(),
            );
        }
        DmaPath::IommuStatic => PathSetup {
            append: words(&["sg.dma=iommu", "sg.iommu.map=static"]),
            device_props: iommu_props,
            extra_args: iommu_device(machine)?,
        },
    })
}

/// One workload run: requests of `req` bytes, queue depth 1 or full (the guest's default: the
/// queue size, within its 1 MiB buffer budget: 16 requests of 64 KiB, 2 of 1 MiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Workload {
    pub req: u32,
    pub qd1: bool,
}

impl Workload {
    pub const ALL: [Workload; 6] = [
        Workload {
            req: 4 << 10,
            qd1: true,
        },
        Workload {
            req: 4 << 10,
            qd1: false,
        },
        Workload {
            req: 64 << 10,
            qd1: true,
        },
        Workload {
            req: 64 << 10,
            qd1: false,
        },
        Workload {
            req: 1 << 20,
            qd1: true,
        },
        Workload {
            req: 1 << 20,
            qd1: false,
        },
    ];

    /// `4K QD1`, `1M QDfull`.
    pub fn label(&self) -> String {
        let size = if self.req >= 1 << 20 {
            format!("{}M", self.req >> 20)
        } else {
            format!("{}K", self.req >> 10)
        };
        format!("{size} QD{}", if self.qd1 { "1" } else { "full" })
    }

    /// `4k_qd1`, `1m_qdfull`: for metric keys.
    pub fn key(&self) -> String {
        self.label().to_lowercase().replace(' ', "_")
    }

    /// Only the 4 KiB runs do random reads.
    pub fn random(&self) -> bool {
        self.req == 4 << 10
    }
}

/// How much each run moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Sizes {
    /// Bytes read, then written, by the 4 KiB runs.
    pub small: u64,
    /// Bytes read, then written, by the 64 KiB and 1 MiB runs.
    pub large: u64,
    /// Random 4 KiB reads in each 4 KiB run.
    pub random: u32,
}

impl Sizes {
    pub fn bytes(&self, w: Workload) -> u64 {
        if w.req <= 4 << 10 {
            self.small
        } else {
            self.large
        }
    }
}

/// What a bench run does.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// `default` or `quick`, for the record.
    pub profile: &'static str,
    /// Rounds (each cell's figures are medians over them).
    pub repeats: u32,
    /// Boot/no-op pairs per round (KVM: 1).
    pub boot_pairs: u32,
    pub sizes: Sizes,
    /// No new round of a cell starts when it would end after this.
    pub budget: Duration,
    /// Add the KVM platforms when KVM works.
    pub kvm: bool,
    /// Run only cells whose `platform/path` contains each of these.
    pub filter: Vec<String>,
    /// Output directory (target/bench); the disk image goes in `work/` under it.
    pub out_dir: PathBuf,
    /// Workloads to run (default: all six).
    pub workloads: Vec<Workload>,
    /// Guest images (default: `build/secure-guest-<arch>`, `build/noop-<arch>`).
    pub kernel_dir: Option<PathBuf>,
}

impl BenchOptions {
    /// `make bench`: 7 rounds, under 10 minutes.
    pub fn default_profile(out_dir: PathBuf) -> BenchOptions {
        BenchOptions {
            profile: "default",
            repeats: 7,
            boot_pairs: 3,
            sizes: Sizes {
                small: 8 << 20,
                large: 32 << 20,
                random: 2048,
            },
            budget: Duration::from_secs(540),
            kvm: true,
            filter: Vec::new(),
            out_dir,
            workloads: Workload::ALL.to_vec(),
            kernel_dir: None,
        }
    }

    /// `make bench QUICK=1`: 3 rounds of smaller runs, no KVM rows, under 2 minutes.
    pub fn quick_profile(out_dir: PathBuf) -> BenchOptions {
        BenchOptions {
            profile: "quick",
            repeats: 3,
            boot_pairs: 2,
            sizes: Sizes {
                small: 2 << 20,
                large: 8 << 20,
                random: 512,
            },
            budget: Duration::from_secs(100),
            kvm: false,
            ..Self::default_profile(out_dir)
        }
    }

    fn kernel(&self, arch: Arch, payload: &str) -> PathBuf {
        match &self.kernel_dir {
            Some(d) => d.join(format!("{payload}-{arch}")),
            None => default_kernel(arch, payload),
        }
    }
}

/// Median, min, max of repeats.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stat {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// (max − min) / median.
    pub spread: f64,
    /// `spread` is more than [`VARIES`].
    pub varies: bool,
}

impl Stat {
    /// `None` for no samples.
    pub fn of(samples: &[f64]) -> Option<Stat> {
        let mut s: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if s.is_empty() {
            return None;
        }
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        let (min, max) = (s[0], s[n - 1]);
        let spread = if median != 0.0 {
            (max - min) / median.abs()
        } else if max == min {
            0.0
        } else {
            f64::INFINITY
        };
        Some(Stat {
            n,
            median,
            min,
            max,
            spread,
            varies: spread > VARIES,
        })
    }
}

/// One number of a cell, with its repeats.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Metric {
    /// `throughput`, `boot`, `cost`, `memory`, `clock`.
    pub section: &'static str,
    /// Unique in the cell: `read_64k_qdfull`, `boot_ratio`, `copied_per_mib_64k_qdfull`.
    pub key: String,
    /// For tables: `read 64K QDfull`.
    pub label: String,
    /// `MB/s` (10^6 bytes per second), `IOPS`, `ms`, `x`, `B/MiB`, `1/MiB`, `B`.
    pub unit: &'static str,
    pub stat: Stat,
    pub samples: Vec<f64>,
    /// Median over the `direct` cell's median on the same platform (throughput only).
    pub ratio: Option<f64>,
}

/// What became of a cell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CellStatus {
    /// Measured.
    Ok,
    /// The machine or the guest cannot run this path (see `reason`).
    NotAvailable,
    /// Only the boot figures (see `reason`).
    BootOnly,
    /// Filtered out.
    Skipped,
}

/// Everything measured on one cell.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CellReport {
    pub platform: String,
    pub machine: String,
    pub accel: String,
    pub path: String,
    pub status: CellStatus,
    pub reason: Option<String>,
    /// The QEMU command of its 64 KiB QDfull run (or its probe).
    pub command: Option<String>,
    pub metrics: Vec<Metric>,
    /// Median ms each record took to come after the one before, in the boot runs (the first:
    /// `boot`, from the guest's first instruction).
    pub boot_phases_ms: Vec<(String, f64)>,
    /// Runs that failed, data that did not check out, clock checks out of tolerance.
    pub failures: Vec<String>,
    /// Where the guest's clock came from (`boot.tick_source`, `tick_hz`): `timebase-frequency
    /// 512000000 Hz` (pseries), `pit 2600000000 Hz` (the TSC counted against the PIT).
    pub clock_source: Option<String>,
}

impl CellReport {
    pub fn metric(&self, key: &str) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.key == key)
    }

    pub fn median(&self, key: &str) -> Option<f64> {
        self.metric(key).map(|m| m.stat.median)
    }

    pub fn is_measured(&self) -> bool {
        matches!(self.status, CellStatus::Ok | CellStatus::BootOnly)
    }
}

/// A target of the issue, checked.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TargetCheck {
    /// `boot <= 1.2x no-op`, `bounce >= 0.9x direct at read 64K QDfull`.
    pub target: String,
    pub platform: String,
    pub path: String,
    /// The measured value, when measured.
    pub value: Option<f64>,
    pub limit: f64,
    /// `None`: not measured (see `note`).
    pub met: Option<bool>,
    /// What dominates the cost when missed, or why it was not measured.
    pub note: String,
}

/// An image and its size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Image {
    pub name: String,
    pub bytes: u64,
}

/// Where and how the bench ran.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Meta {
    /// UTC, `2025-06-01 12:34`.
    pub date: String,
    /// One line: CPUs, model, VM or not.
    pub host: String,
    pub qemu: String,
    pub profile: String,
    pub repeats: u32,
    /// Rounds every measured cell completed (fewer than `repeats` when the budget ran out).
    pub rounds: u32,
    pub wall_s: f64,
    pub budget_s: f64,
    /// The host's 1-minute load average when the bench started and when it ended (other work
    /// on the machine shows here, and in the spread of the figures).
    pub load: (f64, f64),
    pub sizes: Sizes,
    pub notes: Vec<String>,
}

/// The whole result: what `bench.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchReport {
    pub meta: Meta,
    pub images: Vec<Image>,
    pub cells: Vec<CellReport>,
    pub targets: Vec<TargetCheck>,
}

impl BenchReport {
    /// Anything that should make `make bench` fail: failed runs, bad data, a bad clock.
    pub fn failures(&self) -> Vec<String> {
        self.cells
            .iter()
            .flat_map(|c| {
                c.failures
                    .iter()
                    .map(move |f| format!("{}/{}: {f}", c.platform, c.path))
            })
            .chain(
                self.meta
                    .notes
                    .iter()
                    .filter(|n| n.starts_with("FAIL"))
                    .cloned(),
            )
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// One run's figures.

/// What one workload or boot run measured, from its report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    pub wall_ms: f64,
    pub read_bytes: u64,
    pub read_us: u64,
    pub read_crc32c: u64,
    pub random_reads: u64,
    pub random_us: u64,
    pub random_crc32c: u64,
    pub write_bytes: u64,
    pub write_us: u64,
    pub write_crc32c: Option<u64>,
    /// Payload bytes the disk moved (both directions, get-id included).
    pub moved: u64,
    pub requests: u64,
    pub notifications: u64,
    pub bounced: Option<u64>,
    pub zeroed: Option<u64>,
    pub pool_waits: Option<u64>,
    pub pool_high_water: Option<u64>,
    /// The disk's IOMMU calls: hypercalls (pseries TCE), or commands (virtio-iommu requests,
    /// VT-d invalidations).
    pub hypercalls: Option<u64>,
    pub iommu_commands: Option<u64>,
    pub heap_high_water: Option<u64>,
    pub max_in_flight: u64,
    pub req_bytes: u64,
    /// `t_us` of `end` − `t_us` of `heap` over the middle of the host's interval for the time
    /// between the same two lines (see [`Stamp`]).
    pub clock_ratio: Option<f64>,
    /// Whether the guest's span fits the host's interval within [`CLOCK_TOLERANCE`]: `None`
    /// when the span is too short to tell.
    pub clock_ok: Option<bool>,
    /// (event, µs since the record before), in report order.
    pub phases: Vec<(String, u64)>,
}

impl Sample {
    /// MiB the disk moved.
    pub fn mib(&self) -> f64 {
        self.moved as f64 / (1u64 << 20) as f64
    }
}

fn field_u64(r: &Record, key: &str) -> Option<u64> {
    r.get(key).and_then(Value::as_u64)
}

fn hex_field(r: &Record, key: &str) -> Option<u64> {
    let s = r.get(key)?.as_str()?;
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

/// The figures of a run that passed: its blk record (exactly one), `swiotlb_stats`, `end`, and
/// the host's stamps of its record lines (console line → when it was written).
pub fn parse_sample(
    records: &[Record],
    wall: Duration,
    stamps: &BTreeMap<usize, Stamp>,
) -> Result<Sample, String> {
    let blks: Vec<&Record> = records
        .iter()
        .filter(|r| r.event == "virtio" && r.get("device").and_then(Value::as_str) == Some("blk"))
        .collect();
    let [blk] = blks[..] else {
        return Err(format!("{} blk records, expected 1", blks.len()));
    };
    let need = |k: &str| field_u64(blk, k).ok_or_else(|| format!("blk record has no {k}"));
    let mut s = Sample {
        wall_ms: wall.as_secs_f64() * 1e3,
        read_bytes: need("read_bytes")?,
        read_us: need("read_us")?,
        read_crc32c: hex_field(blk, "read_crc32c").ok_or("blk record has no read_crc32c")?,
        random_reads: need("random_reads")?,
        random_us: need("random_us")?,
        random_crc32c: hex_field(blk, "random_crc32c").unwrap_or(0),
        write_us: need("write_us")?,
        moved: need("bytes_to_device")? + need("bytes_from_device")?,
        requests: need("requests")?,
        notifications: need("notifications")?,
        max_in_flight: need("max_in_flight")?,
        req_bytes: need("req_bytes")?,
        ..Sample::default()
    };
    if let Some(Value::Object(w)) = blk.get("write") {
        s.write_bytes = w.get("len").and_then(Value::as_u64).unwrap_or(0);
        s.write_crc32c = w
            .get("crc32c")
            .and_then(Value::as_str)
            .and_then(|h| u64::from_str_radix(h.trim_start_matches("0x"), 16).ok());
    }
    if let Some(st) = records.iter().find(|r| r.event == "swiotlb_stats") {
        s.bounced = Some(
            field_u64(st, "bounced_to_device").unwrap_or(0)
                + field_u64(st, "bounced_from_device").unwrap_or(0),
        );
        s.zeroed = field_u64(st, "zeroed_bytes");
        s.pool_waits = field_u64(st, "exhausted");
        s.pool_high_water = field_u64(st, "high_water_bytes");
    }
    // The disk's share of its IOMMU domain's work (docs/report.md, `virtio.iommu`): the TCE
    // backend's calls are hypercalls; a virtio-iommu's requests and VT-d's invalidations are
    // IOMMU commands.
    if let Some(Value::Object(i)) = blk.get("iommu") {
        let calls = i.get("calls").and_then(Value::as_u64);
        match i.get("backend").and_then(Value::as_str) {
            Some("tce") => s.hypercalls = calls,
            _ => s.iommu_commands = calls,
        }
    }
    let end = records.iter().find(|r| r.event == "end");
    s.heap_high_water = end.and_then(|e| field_u64(e, "heap_high_water_bytes"));
    s.phases = phases(records);
    // From `heap`, not `boot`: a line is stamped when it is complete, and `boot` takes ~1 ms
    // of console output after its `t_us` (`heap` and `end` are short).
    let start = records.iter().find(|r| r.event == "heap");
    if let (Some(b), Some(e)) = (start, end)
        && let (Some(gb), Some(ge)) = (field_u64(b, "t_us"), field_u64(e, "t_us"))
        && let (Some(hb), Some(he)) = (stamps.get(&b.line), stamps.get(&e.line))
    {
        // The real time between the two lines lies in [shortest, longest].
        let us = |d: Duration| d.as_micros() as f64;
        let shortest = us(he.after.saturating_sub(hb.seen));
        let longest = us(he.seen.saturating_sub(hb.after));
        let middle = (shortest + longest) / 2.0;
        let guest = ge.saturating_sub(gb) as f64;
        if middle >= us(CLOCK_MIN_SPAN) {
            s.clock_ratio = Some(guest / middle);
            s.clock_ok = Some(
                guest <= longest * (1.0 + CLOCK_TOLERANCE)
                    && guest >= shortest * (1.0 - CLOCK_TOLERANCE),
            );
        }
    }
    Ok(s)
}

/// (event, µs since the record before) for every record with a `t_us`; the first counts from
/// the guest's first instruction.
pub fn phases(records: &[Record]) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut last = 0u64;
    for r in records {
        if let Some(t) = field_u64(r, "t_us") {
            out.push((r.event.clone(), t.saturating_sub(last)));
            last = t;
        }
    }
    out
}

/// Why a probe run says the cell cannot be measured, or `Ok` when the guest took `path`.
pub fn probe_verdict(run: &RunResult, path: DmaPath) -> Result<(), String> {
    if let Some(r) = run.events("option").next() {
        let option = r.get("option").and_then(Value::as_str).unwrap_or("?");
        return Err(match r.get("level").and_then(Value::as_str) {
            Some("warning") => format!("the guest does not know {option}"),
            _ => format!(
                "the guest rejects {option}={} (expected {})",
                r.get("value").and_then(Value::as_str).unwrap_or(""),
                r.get("expected").and_then(Value::as_str).unwrap_or("?")
            ),
        });
    }
    if let Some(e) = run.events("error").next() {
        return Err(format!(
            "guest error ({}): {}",
            e.get("what").and_then(Value::as_str).unwrap_or("?"),
            e.get("message").and_then(Value::as_str).unwrap_or("?")
        ));
    }
    let blk = run
        .events("virtio")
        .find(|r| r.get("device").and_then(Value::as_str) == Some("blk"));
    if let Some(b) = blk {
        let dma = b.get("dma").and_then(Value::as_str).unwrap_or("?");
        if let Some(err) = b.get("error").and_then(Value::as_str) {
            return Err(format!("the disk failed on the {dma} path: {err}"));
        }
        if dma != path.expected_dma() {
            return Err(format!(
                "the guest put the disk on the {dma} path ({})",
                b.get("dma_reason")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given")
            ));
        }
        let iommu = b.get("iommu");
        let mode = iommu.and_then(|i| i.get("mode")).and_then(Value::as_str);
        if let Some(want) = path.expected_mode()
            && mode != Some(want)
        {
            return Err(format!(
                "the guest's IOMMU domain is {} ({}), not {want}",
                mode.unwrap_or("missing"),
                iommu
                    .and_then(|i| i.get("mode_reason"))
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given")
            ));
        }
    }
    match run.verdict {
        Outcome::Pass if !run.protocol_errors.is_empty() => Err(format!(
            "the report breaks docs/report.md: {}",
            run.protocol_errors[0]
        )),
        Outcome::Pass if blk.is_none() => Err("the guest found no disk".into()),
        Outcome::Pass => Ok(()),
        Outcome::Reject => Err(format!(
            "the guest rejects the configuration ({})",
            run.events("secure")
                .next()
                .and_then(|s| s.get("reasons"))
                .map_or("no reason given".into(), Value::to_string)
        )),
        o => Err(format!(
            "{o}: {}",
            run.diagnosis
                .clone()
                .unwrap_or_else(|| "the guest's verdict".into())
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Running.

/// When the host saw a report line complete: after `after` (the start of the previous look at
/// the console, which did not have it yet) and by `seen` (the end of the look that had it). On a
/// busy host the harness can be paused between looks; the interval says how well it knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub after: Duration,
    pub seen: Duration,
}

/// A run and the host's stamps of its record lines.
struct Timed {
    run: RunResult,
    stamps: BTreeMap<usize, Stamp>,
}

/// Follows the console file while QEMU runs and stamps each complete `@sg ` line.
#[derive(Default)]
struct LineWatcher {
    file: Option<File>,
    pending: Vec<u8>,
    /// 1-based number of the line `pending` belongs to.
    line: usize,
    /// When the previous look started.
    last_look: Duration,
}

impl LineWatcher {
    /// One look at the console; `now` gives the time since the run started.
    fn poll(
        &mut self,
        path: &Path,
        now: &mut dyn FnMut() -> Duration,
        stamps: &mut BTreeMap<usize, Stamp>,
    ) {
        let before = now();
        let after = std::mem::replace(&mut self.last_look, before);
        if self.file.is_none() {
            self.file = File::open(path).ok();
            self.line = 1;
        }
        let Some(f) = self.file.as_mut() else { return };
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return;
        }
        let seen = now();
        for &b in &buf {
            if b == b'\n' {
                if self
                    .pending
                    .starts_with(crate::report::LINE_PREFIX.as_bytes())
                {
                    stamps.entry(self.line).or_insert(Stamp { after, seen });
                }
                self.pending.clear();
                self.line += 1;
            } else if self.pending.len() < 8 {
                // Only the start of a line matters.
                self.pending.push(b);
            }
        }
    }
}

fn run_timed(config: &QemuConfig) -> Result<Timed> {
    let mut running = crate::run::spawn(config)?;
    let console = running.console_path();
    let start = Instant::now();
    let deadline = running.deadline();
    let mut stamps = BTreeMap::new();
    let mut watcher = LineWatcher::default();
    loop {
        let exited = running.exited();
        watcher.poll(&console, &mut || start.elapsed(), &mut stamps);
        if exited || Instant::now() >= deadline {
            break;
        }
        // 2 ms: precise enough for spans of 100 ms and more, and light on 2 busy cores.
        std::thread::sleep(Duration::from_millis(2));
    }
    // Either exited (wait returns at once) or past the deadline (wait kills it).
    let run = running.wait()?;
    Ok(Timed { run, stamps })
}

/// The disk's expected checksums: prefixes (sequential reads, writes) and random reads.
#[derive(Clone, Debug, Default)]
pub struct DiskExpect {
    pub prefix: BTreeMap<u64, u32>,
    pub random: BTreeMap<u64, u32>,
    /// Of the whole image, to check at the end that no write changed it.
    pub whole: u32,
}

impl DiskExpect {
    /// For an image holding `content`: prefixes of `lengths` bytes, and `counts` random reads.
    pub fn of(content: &[u8], lengths: &[u64], counts: &[u64]) -> DiskExpect {
        let mut e = DiskExpect {
            whole: crc32c(content),
            ..DiskExpect::default()
        };
        for &l in lengths {
            e.prefix
                .entry(l)
                .or_insert_with(|| crc32c(&content[..l as usize]));
        }
        let len = u64::from(random_len(512, 4096));
        for &n in counts {
            let mut c = Crc32c::new();
            for i in 0..n {
                let o =
                    random_offset(i, len, content.len() as u64).expect("disk >= 4 KiB") as usize;
                c.update(&content[o..o + len as usize]);
            }
            e.random.insert(n, c.finish());
        }
        e
    }

    /// What does not check out in a workload run of `bytes` (and `random` reads).
    pub fn check(&self, s: &Sample, bytes: u64, random: u64) -> Vec<String> {
        let mut bad = Vec::new();
        if s.read_bytes != bytes {
            bad.push(format!("read {} bytes, asked {bytes}", s.read_bytes));
        } else if Some(&(s.read_crc32c as u32)) != self.prefix.get(&bytes) {
            bad.push(format!(
                "read_crc32c {:#x} is not the image's {:#x}",
                s.read_crc32c,
                self.prefix.get(&bytes).copied().unwrap_or(0)
            ));
        }
        if s.random_reads != random {
            bad.push(format!("{} random reads, asked {random}", s.random_reads));
        } else if random > 0 && Some(&(s.random_crc32c as u32)) != self.random.get(&random) {
            bad.push(format!(
                "random_crc32c {:#x} is not the image's {:#x}",
                s.random_crc32c,
                self.random.get(&random).copied().unwrap_or(0)
            ));
        }
        if s.write_bytes != bytes {
            bad.push(format!("wrote {} bytes, asked {bytes}", s.write_bytes));
        } else if s.write_crc32c.map(|c| c as u32) != self.prefix.get(&bytes).copied() {
            bad.push("the written data's crc32c is not the pattern's".into());
        }
        bad
    }
}

/// A cell while it is being measured.
struct Cell {
    platform: Platform,
    path: DmaPath,
    setup: Option<PathSetup>,
    status: CellStatus,
    reason: Option<String>,
    command: Option<String>,
    boot_ms: Vec<f64>,
    noop_ms: Vec<f64>,
    boot_samples: Vec<Sample>,
    runs: BTreeMap<Workload, Vec<Sample>>,
    failures: Vec<String>,
    last_round: Option<Duration>,
    rounds: u32,
    /// KVM probes: MB/s of their read.
    probe_mbps: Option<f64>,
    /// The guest's clock, from the probe's `boot` record.
    clock_source: Option<String>,
}

impl Cell {
    fn name(&self) -> String {
        format!("{}/{}", self.platform.name(), self.path.as_str())
    }
}

/// The platforms of a bench: pseries (VOF), microvm, q35 under TCG; microvm and q35 under KVM
/// when `kvm` and KVM works here.
pub fn platforms(kvm: bool) -> Vec<Platform> {
    let mut out: Vec<Platform> = [Machine::Pseries, Machine::Microvm, Machine::Q35]
        .into_iter()
        .map(|machine| Platform {
            machine,
            kvm: false,
        })
        .collect();
    if kvm && crate::kvm::usable() {
        for machine in [Machine::Microvm, Machine::Q35] {
            out.push(Platform { machine, kvm: true });
        }
    }
    out
}

struct Runner<'a> {
    opts: &'a BenchOptions,
    disk: PathBuf,
    expect: DiskExpect,
    progress: &'a mut dyn FnMut(&str),
}

impl Runner<'_> {
    fn config(
        &self,
        p: Platform,
        setup: &PathSetup,
        payload: &str,
        words: &[String],
    ) -> Result<QemuConfig> {
        let mut c = QemuConfig::new(p.machine)?;
        c.accel = p.accel();
        c.kernel = self.opts.kernel(p.machine.arch(), payload);
        let append: Vec<String> = setup.append.iter().chain(words).cloned().collect();
        c.append = (!append.is_empty()).then(|| append.join(" "));
        c.timeout = Duration::from_secs(if p.kvm { 90 } else { 30 });
        let drive = format!(
            "file={},if=none,id=d0,format=raw,cache=unsafe",
            self.disk.display()
        );
        let device = if p.machine == Machine::Microvm {
            c.extra_args
                .extend(["-global".into(), "virtio-mmio.force-legacy=off".into()]);
            format!("virtio-blk-device,drive=d0{}", setup.device_props)
        } else {
            format!(
                "virtio-blk-pci,drive=d0,disable-legacy=on,disable-modern=off{}",
                setup.device_props
            )
        };
        c.extra_args
            .extend(["-drive".into(), drive, "-device".into(), device]);
        c.extra_args.extend(setup.extra_args.iter().cloned());
        Ok(c)
    }

    fn workload_words(&self, w: Workload) -> Vec<String> {
        let bytes = self.opts.sizes.bytes(w);
        let mut v = vec![
            format!("sg.blk.read={bytes}"),
            format!("sg.blk.req={}", w.req),
            format!("sg.blk.write=0:{bytes}:{DISK_SEED:#x}"),
        ];
        if w.qd1 {
            v.push("sg.blk.qd=1".into());
        }
        if w.random() {
            v.push(format!("sg.blk.random={}", self.opts.sizes.random));
        }
        v
    }

    /// The probe: a tiny run that shows whether the guest takes the path. KVM platforms read
    /// 256 KiB and must reach [`KVM_MIN_MBPS`] for their throughput to be measured.
    fn probe(&mut self, cell: &mut Cell) {
        let setup = cell.setup.clone().expect("probed cells have a setup");
        let read = if cell.platform.kvm {
            256 << 10
        } else {
            64 << 10
        };
        let words = vec![
            format!("sg.blk.read={read}"),
            "sg.blk.random=4".into(),
            "sg.virtio.timeout_ms=2000".into(),
        ];
        let config = match self.config(cell.platform, &setup, "secure-guest", &words) {
            Ok(c) => c,
            Err(e) => {
                cell.status = CellStatus::NotAvailable;
                cell.reason = Some(format!("{e:#}"));
                return;
            }
        };
        cell.command = Some(config.reproduce());
        let r = match run_timed(&config) {
            Ok(t) => t.run,
            Err(e) => {
                cell.status = CellStatus::NotAvailable;
                cell.reason = Some(format!("{e:#}"));
                return;
            }
        };
        cell.clock_source = r.events("boot").next().map(|b| {
            format!(
                "{} {} Hz",
                b.get("tick_source").and_then(Value::as_str).unwrap_or("?"),
                b.get("tick_hz").map_or("?".into(), Value::to_string)
            )
        });
        if let Err(why) = probe_verdict(&r, cell.path) {
            cell.status = CellStatus::NotAvailable;
            cell.reason = Some(why);
            return;
        }
        if cell.platform.kvm {
            let mbps = r
                .events("virtio")
                .find_map(|b| {
                    let us = field_u64(b, "read_us")?;
                    Some(field_u64(b, "read_bytes")? as f64 / us.max(1) as f64)
                })
                .unwrap_or(0.0);
            cell.probe_mbps = Some(mbps);
            if mbps < KVM_MIN_MBPS {
                cell.status = CellStatus::BootOnly;
                cell.reason = Some(format!(
                    "KVM here read {mbps:.2} MB/s in the probe (256 KiB; nested KVM): too slow \
                     to measure within the budget, boot figures only ({BOOT_ONLY_ROUNDS} rounds)"
                ));
            }
        }
    }

    /// Boots the guest and then the no-op payload, `n` times.
    fn boot_pairs(&mut self, cell: &mut Cell, n: u32) {
        for _ in 0..n {
            let before = cell.failures.len();
            self.boot_pair(cell);
            if cell.failures.len() > before {
                return;
            }
        }
    }

    fn boot_pair(&mut self, cell: &mut Cell) {
        let setup = cell.setup.clone().expect("measured cells have a setup");
        let words = vec!["sg.blk.read=0".to_string()];
        for payload in ["secure-guest", "noop"] {
            let config = match self.config(cell.platform, &setup, payload, &words) {
                Ok(c) => c,
                Err(e) => {
                    cell.failures.push(format!("boot ({payload}): {e:#}"));
                    return;
                }
            };
            match run_timed(&config) {
                Ok(t) if payload == "noop" => {
                    if t.run.exited_cleanly() {
                        cell.noop_ms.push(t.run.wall_time.as_secs_f64() * 1e3);
                    } else {
                        cell.failures.push(format!(
                            "the no-op payload did not power off cleanly: {}",
                            t.run.diagnosis.as_deref().unwrap_or("exit status")
                        ));
                    }
                }
                Ok(t) => match t.run.verdict {
                    Outcome::Pass => {
                        cell.boot_ms.push(t.run.wall_time.as_secs_f64() * 1e3);
                        cell.boot_samples.push(Sample {
                            phases: phases(&t.run.records),
                            ..Sample::default()
                        });
                    }
                    o => {
                        cell.failures.push(format!(
                            "boot run: {o}: {}",
                            t.run.diagnosis.as_deref().unwrap_or("see the report")
                        ));
                        return;
                    }
                },
                Err(e) => {
                    cell.failures.push(format!("boot ({payload}): {e:#}"));
                    return;
                }
            }
        }
    }

    fn workload(&mut self, cell: &mut Cell, w: Workload) -> Option<Sample> {
        let setup = cell.setup.clone().expect("measured cells have a setup");
        let words = self.workload_words(w);
        let config = match self.config(cell.platform, &setup, "secure-guest", &words) {
            Ok(c) => c,
            Err(e) => {
                cell.failures.push(format!("{}: {e:#}", w.label()));
                return None;
            }
        };
        if w == HEADLINE {
            cell.command = Some(config.reproduce());
        }
        let t = match run_timed(&config) {
            Ok(t) => t,
            Err(e) => {
                cell.failures.push(format!("{}: {e:#}", w.label()));
                return None;
            }
        };
        if !t.run.passed() {
            let why = t
                .run
                .diagnosis
                .clone()
                .or_else(|| probe_verdict(&t.run, cell.path).err())
                .unwrap_or_else(|| format!("verdict {}", t.run.verdict));
            cell.failures.push(format!("{}: {why}", w.label()));
            return None;
        }
        let s = match parse_sample(&t.run.records, t.run.wall_time, &t.stamps) {
            Ok(s) => s,
            Err(e) => {
                cell.failures.push(format!("{}: {e}", w.label()));
                return None;
            }
        };
        let random = if w.random() {
            u64::from(self.opts.sizes.random)
        } else {
            0
        };
        for bad in self.expect.check(&s, self.opts.sizes.bytes(w), random) {
            cell.failures.push(format!("{}: {bad}", w.label()));
        }
        // A run whose clock is this far off has wrong timings: they stay out of the figures.
        if s.clock_ok == Some(false) {
            cell.failures.push(format!(
                "{}: the guest's clock ran {:.3}x the host's in this run (tick_hz {}): its \
                 figures are left out",
                w.label(),
                s.clock_ratio.unwrap_or(f64::NAN),
                t.run
                    .events("boot")
                    .next()
                    .and_then(|b| b.get("tick_hz"))
                    .map_or("?".into(), Value::to_string)
            ));
            return None;
        }
        Some(s)
    }
}

/// Runs the bench. `progress` gets one line per cell and round.
pub fn run(opts: &BenchOptions, progress: &mut dyn FnMut(&str)) -> Result<BenchReport> {
    let started = Instant::now();
    let load_before = load_average();
    let work = opts.out_dir.join("work");
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let disk = absolute(&work.join("disk.img"));
    let content = crate::oracle::pattern_bytes(DISK_SEED, 0, DISK_BYTES as usize);
    fs::write(&disk, &content).with_context(|| format!("writing {}", disk.display()))?;
    let lengths: Vec<u64> = opts
        .workloads
        .iter()
        .map(|w| opts.sizes.bytes(*w))
        .collect();
    let counts = [u64::from(opts.sizes.random)];
    let expect = DiskExpect::of(&content, &lengths, &counts);
    drop(content);

    let mut cells: Vec<Cell> = Vec::new();
    for platform in platforms(opts.kvm) {
        for path in DmaPath::ALL {
            let mut c = Cell {
                platform,
                path,
                setup: None,
                status: CellStatus::Ok,
                reason: None,
                command: None,
                boot_ms: Vec::new(),
                noop_ms: Vec::new(),
                boot_samples: Vec::new(),
                runs: BTreeMap::new(),
                failures: Vec::new(),
                last_round: None,
                rounds: 0,
                probe_mbps: None,
                clock_source: None,
            };
            if !opts.filter.iter().all(|f| c.name().contains(f.as_str())) {
                c.status = CellStatus::Skipped;
                c.reason = Some("filtered out".into());
            } else {
                match path_setup(platform.machine, path) {
                    Ok(s) => c.setup = Some(s),
                    Err(why) => {
                        c.status = CellStatus::NotAvailable;
                        c.reason = Some(why);
                    }
                }
            }
            cells.push(c);
        }
    }
    let mut runner = Runner {
        opts,
        disk: disk.clone(),
        expect,
        progress,
    };
    let live = cells.iter().filter(|c| c.status == CellStatus::Ok).count();
    (runner.progress)(&format!(
        "bench ({} profile): {live} cells to probe, {} rounds, budget {} s; files in {}",
        opts.profile,
        opts.repeats,
        opts.budget.as_secs(),
        opts.out_dir.display()
    ));
    let mut notes = Vec::new();
    let mut slow_kvm: BTreeMap<String, String> = BTreeMap::new();
    'rounds: for round in 0..opts.repeats {
        for cell in cells.iter_mut() {
            if round == 0 && cell.status == CellStatus::Ok {
                match slow_kvm.get(&cell.platform.name()) {
                    // Every run of a path that bounces or maps would cost tens of seconds.
                    Some(why) => {
                        cell.status = CellStatus::NotAvailable;
                        cell.reason =
                            Some(format!("{why}: only `direct` is booted on this platform"));
                    }
                    None => runner.probe(cell),
                }
                if cell.platform.kvm
                    && cell.path == DmaPath::Direct
                    && cell.status == CellStatus::BootOnly
                {
                    slow_kvm.insert(
                        cell.platform.name(),
                        format!(
                            "KVM here read {:.2} MB/s in the probe of {} (nested KVM)",
                            cell.probe_mbps.unwrap_or(0.0),
                            cell.name()
                        ),
                    );
                }
                if cell.status == CellStatus::NotAvailable {
                    (runner.progress)(&format!(
                        "  {:<26} n/a: {}",
                        cell.name(),
                        cell.reason.as_deref().unwrap_or("")
                    ));
                }
            }
            let done = match cell.status {
                CellStatus::Ok => false,
                CellStatus::BootOnly => cell.rounds >= BOOT_ONLY_ROUNDS,
                _ => true,
            };
            if done {
                continue;
            }
            let est = cell.last_round.unwrap_or_default();
            if round > 0 && started.elapsed() + est > opts.budget {
                notes.push(format!(
                    "the time budget ({} s) ended the bench in round {} of {}",
                    opts.budget.as_secs(),
                    round + 1,
                    opts.repeats
                ));
                break 'rounds;
            }
            let t0 = Instant::now();
            let pairs = if cell.platform.kvm {
                1
            } else {
                opts.boot_pairs
            };
            runner.boot_pairs(cell, pairs);
            let mut line = format!(
                "[{:>2}/{} {:>4.0} s] {:<26} boot {}",
                round + 1,
                opts.repeats,
                started.elapsed().as_secs_f64(),
                cell.name(),
                match (cell.boot_ms.last(), cell.noop_ms.last()) {
                    (Some(b), Some(n)) => format!("{b:.0}/{n:.0} ms"),
                    _ => "failed".into(),
                }
            );
            if cell.status == CellStatus::Ok {
                for &w in &opts.workloads {
                    if let Some(s) = runner.workload(cell, w) {
                        if w == HEADLINE || w.req == 1 << 20 && !w.qd1 {
                            line.push_str(&format!(
                                ", {} r/w {:.0}/{:.0} MB/s",
                                w.label(),
                                mbps(s.read_bytes, s.read_us),
                                mbps(s.write_bytes, s.write_us)
                            ));
                        }
                        cell.runs.entry(w).or_default().push(s);
                    }
                }
            }
            cell.rounds += 1;
            cell.last_round = Some(t0.elapsed());
            if !cell.failures.is_empty() {
                line.push_str(&format!(" ({} failures)", cell.failures.len()));
            }
            (runner.progress)(&line);
        }
    }
    // No write may have changed the image.
    match fs::read(&disk) {
        Ok(b) if crc32c(&b) == runner.expect.whole => {}
        Ok(_) => notes.push(
            "FAIL: the disk image changed: a write put other data than the pattern on it".into(),
        ),
        Err(e) => notes.push(format!("FAIL: reading {} back: {e}", disk.display())),
    }

    let rounds = cells
        .iter()
        .filter(|c| c.status == CellStatus::Ok)
        .map(|c| c.rounds)
        .min()
        .unwrap_or(0);
    let mut reports: Vec<CellReport> = cells.iter().map(summarize).collect();
    fill_ratios(&mut reports);
    let targets = check_targets(&reports);
    Ok(BenchReport {
        meta: Meta {
            date: utc_now(),
            host: host_description(),
            qemu: qemu_version(),
            profile: opts.profile.into(),
            repeats: opts.repeats,
            rounds,
            wall_s: started.elapsed().as_secs_f64(),
            budget_s: opts.budget.as_secs_f64(),
            load: (load_before, load_average()),
            sizes: opts.sizes,
            notes,
        },
        images: images(opts),
        cells: reports,
        targets,
    })
}

/// MB/s (10^6 bytes per second) from bytes and microseconds.
pub fn mbps(bytes: u64, us: u64) -> f64 {
    if us == 0 {
        f64::NAN
    } else {
        bytes as f64 / us as f64
    }
}

fn metric(
    section: &'static str,
    key: String,
    label: String,
    unit: &'static str,
    samples: Vec<f64>,
) -> Option<Metric> {
    let stat = Stat::of(&samples)?;
    Some(Metric {
        section,
        key,
        label,
        unit,
        stat,
        samples,
        ratio: None,
    })
}

/// One figure of a run, when the run has it.
type Figure = dyn Fn(&Sample) -> Option<f64>;

/// A cell's figures from its runs.
fn summarize(c: &Cell) -> CellReport {
    let mut m = Vec::new();
    let pairs: Vec<f64> = c
        .boot_ms
        .iter()
        .zip(&c.noop_ms)
        .map(|(b, n)| b / n)
        .collect();
    m.extend(metric(
        "boot",
        "boot_ms".into(),
        "boot".into(),
        "ms",
        c.boot_ms.clone(),
    ));
    m.extend(metric(
        "boot",
        "noop_ms".into(),
        "no-op".into(),
        "ms",
        c.noop_ms.clone(),
    ));
    m.extend(metric(
        "boot",
        "boot_ratio".into(),
        "boot / no-op".into(),
        "x",
        pairs,
    ));
    for (w, runs) in &c.runs {
        let k = w.key();
        let l = w.label();
        let per = |f: &dyn Fn(&Sample) -> Option<f64>| -> Vec<f64> {
            runs.iter().filter_map(f).collect()
        };
        m.extend(metric(
            "throughput",
            format!("read_{k}"),
            format!("read {l}"),
            "MB/s",
            per(&|s| Some(mbps(s.read_bytes, s.read_us))),
        ));
        m.extend(metric(
            "throughput",
            format!("write_{k}"),
            format!("write {l}"),
            "MB/s",
            per(&|s| Some(mbps(s.write_bytes, s.write_us))),
        ));
        if w.random() {
            m.extend(metric(
                "throughput",
                format!("randread_{k}"),
                format!("random read {l}"),
                "IOPS",
                per(&|s| {
                    (s.random_us > 0).then(|| s.random_reads as f64 * 1e6 / s.random_us as f64)
                }),
            ));
        }
        let costs: [(&str, &str, &'static str, &Figure); 6] = [
            ("copied_per_mib", "copied", "B/MiB", &|s| {
                Some(s.bounced? as f64 / s.mib())
            }),
            ("zeroed_per_mib", "zeroed", "B/MiB", &|s| {
                Some(s.zeroed? as f64 / s.mib())
            }),
            ("hypercalls_per_mib", "hypercalls", "1/MiB", &|s| {
                Some(s.hypercalls? as f64 / s.mib())
            }),
            ("iommu_commands_per_mib", "IOMMU commands", "1/MiB", &|s| {
                Some(s.iommu_commands? as f64 / s.mib())
            }),
            ("notifies_per_mib", "notifies", "1/MiB", &|s| {
                Some(s.notifications as f64 / s.mib())
            }),
            ("pool_waits_per_mib", "pool waits", "1/MiB", &|s| {
                Some(s.pool_waits? as f64 / s.mib())
            }),
        ];
        for (key, label, unit, f) in costs {
            m.extend(metric(
                "cost",
                format!("{key}_{k}"),
                format!("{label} {l}"),
                unit,
                per(f),
            ));
        }
        m.extend(metric(
            "cost",
            format!("requests_per_mib_{k}"),
            format!("requests {l}"),
            "1/MiB",
            per(&|s| Some(s.requests as f64 / s.mib())),
        ));
        m.extend(metric(
            "memory",
            format!("pool_high_water_{k}"),
            format!("pool high-water {l}"),
            "B",
            per(&|s| s.pool_high_water.map(|b| b as f64)),
        ));
        m.extend(metric(
            "memory",
            format!("heap_high_water_{k}"),
            format!("heap high-water {l}"),
            "B",
            per(&|s| s.heap_high_water.map(|b| b as f64)),
        ));
        m.extend(metric(
            "memory",
            format!("max_in_flight_{k}"),
            format!("in flight {l}"),
            "1",
            per(&|s| Some(s.max_in_flight as f64)),
        ));
        m.extend(metric(
            "clock",
            format!("clock_ratio_{k}"),
            format!("guest/host clock {l}"),
            "x",
            per(&|s| s.clock_ratio),
        ));
    }
    let all_clock: Vec<f64> = c
        .runs
        .values()
        .flatten()
        .filter_map(|s| s.clock_ratio)
        .collect();
    m.extend(metric(
        "clock",
        "clock_ratio".into(),
        "guest/host clock".into(),
        "x",
        all_clock,
    ));
    // Median per phase (by position and event: the boot runs all write the same records).
    let mut boot_phases: Vec<(String, f64)> = Vec::new();
    if let Some(first) = c.boot_samples.first() {
        for (i, (event, _)) in first.phases.iter().enumerate() {
            let v: Vec<f64> = c
                .boot_samples
                .iter()
                .filter_map(|s| s.phases.get(i).filter(|p| &p.0 == event))
                .map(|p| p.1 as f64 / 1e3)
                .collect();
            if let Some(st) = Stat::of(&v) {
                boot_phases.push((event.clone(), st.median));
            }
        }
    }
    CellReport {
        platform: c.platform.name(),
        machine: c.platform.machine.as_str().into(),
        accel: c.platform.accel().as_str().into(),
        path: c.path.as_str().into(),
        status: c.status.clone(),
        reason: c.reason.clone(),
        command: c.command.clone(),
        metrics: m,
        boot_phases_ms: boot_phases,
        failures: c.failures.clone(),
        clock_source: c.clock_source.clone(),
    }
}

/// Every throughput metric's ratio to the `direct` cell of its platform.
pub fn fill_ratios(cells: &mut [CellReport]) {
    let direct: BTreeMap<String, BTreeMap<String, f64>> = cells
        .iter()
        .filter(|c| c.path == "direct")
        .map(|c| {
            (
                c.platform.clone(),
                c.metrics
                    .iter()
                    .filter(|m| m.section == "throughput")
                    .map(|m| (m.key.clone(), m.stat.median))
                    .collect(),
            )
        })
        .collect();
    for c in cells.iter_mut() {
        let Some(d) = direct.get(&c.platform) else {
            continue;
        };
        for m in c.metrics.iter_mut().filter(|m| m.section == "throughput") {
            m.ratio = d
                .get(&m.key)
                .filter(|&&v| v > 0.0)
                .map(|v| m.stat.median / v);
        }
    }
}

/// The targets of the issue, on every measured cell: boot ≤ 1.2× the no-op floor; `bounce`
/// ≥ 0.9× and `ddw` ≥ 0.95× `direct` at 64 KiB sequential reads. A miss names its dominant cost.
pub fn check_targets(cells: &[CellReport]) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    for c in cells.iter().filter(|c| c.is_measured()) {
        let value = c.median("boot_ratio");
        let met = value.map(|v| v <= 1.2);
        out.push(TargetCheck {
            target: "boot <= 1.2x no-op".into(),
            platform: c.platform.clone(),
            path: c.path.clone(),
            value,
            limit: 1.2,
            met,
            note: match met {
                Some(false) => boot_cost(c),
                None => "not measured (boot runs failed)".into(),
                Some(true) => String::new(),
            },
        });
    }
    let key = format!("read_{}", HEADLINE.key());
    for (path, limit) in [("bounce", 0.9), ("ddw", 0.95)] {
        // Cells that ran or were probed: not those the machine cannot have at all (the
        // footnotes say why), nor the other paths of a KVM platform too slow for I/O.
        for c in cells
            .iter()
            .filter(|c| c.path == path && c.command.is_some())
        {
            let value = c.metric(&key).and_then(|m| m.ratio);
            let met = value.map(|v| v >= limit);
            let direct = cells
                .iter()
                .find(|d| d.platform == c.platform && d.path == "direct");
            out.push(TargetCheck {
                target: format!("{path} >= {limit}x direct at read {}", HEADLINE.label()),
                platform: c.platform.clone(),
                path: c.path.clone(),
                value,
                limit,
                met,
                note: match (met, direct) {
                    (Some(false), Some(d)) => path_cost(c, d),
                    (None, _) => format!(
                        "not measured: {}",
                        c.reason.as_deref().unwrap_or("no figures")
                    ),
                    _ => String::new(),
                },
            });
        }
    }
    out
}

/// The guest's largest phases in the boot runs.
fn boot_cost(c: &CellReport) -> String {
    let mut p = c.boot_phases_ms.clone();
    p.sort_by(|a, b| b.1.total_cmp(&a.1));
    let guest: f64 = c.boot_phases_ms.iter().map(|x| x.1).sum();
    let extra = c
        .median("boot_ms")
        .zip(c.median("noop_ms"))
        .map(|(b, n)| b - n);
    let top: Vec<String> = p
        .iter()
        .take(3)
        .map(|(e, ms)| format!("`{e}` {ms:.1} ms"))
        .collect();
    format!(
        "{}the guest ran {guest:.1} ms; dominant phases (time up to each record): {}",
        extra.map_or(String::new(), |x| format!(
            "{x:+.1} ms over the no-op (medians); "
        )),
        top.join(", ")
    )
}

/// The kinds of cost the counters show, their names, and the nominal cost of one unit in µs
/// (a byte copied or zeroed: ~4 GB/s; a hypercall or IOMMU command: ~2 µs; an exit: ~5 µs).
/// The nominal model only ranks the kinds a cell adds over `direct`; the measured time is
/// printed next to it.
pub const COST_KINDS: [(&str, &str, f64); 4] = [
    ("copies", "bytes copied or zeroed", 1.0 / 4096.0),
    ("hypercalls", "hypercalls", 2.0),
    ("IOMMU commands", "IOMMU commands", 2.0),
    ("exits", "notifications (VM exits under KVM)", 5.0),
];

/// What `c` adds over `direct` per MiB in the headline workload, by kind, and the dominant kind
/// by [`COST_KINDS`]' nominal costs. Pool waits (back-pressure from a full shared pool) are
/// listed but are not a cost of their own: the time shows in the others.
fn path_cost(c: &CellReport, direct: &CellReport) -> String {
    let k = HEADLINE.key();
    let extra = |name: &str| -> f64 {
        let key = format!("{name}_{k}");
        c.median(&key).unwrap_or(0.0) - direct.median(&key).unwrap_or(0.0)
    };
    // 1 MiB at v MB/s takes 1.048576 / v s.
    let us_per_mib = |cell: &CellReport| cell.median(&format!("read_{k}")).map(|v| 1_048_576.0 / v);
    let extra_us = us_per_mib(c).zip(us_per_mib(direct)).map(|(a, b)| a - b);
    let counts = [
        extra("copied_per_mib") + extra("zeroed_per_mib"),
        extra("hypercalls_per_mib"),
        extra("iommu_commands_per_mib"),
        extra("notifies_per_mib"),
    ];
    let mut parts: Vec<String> = Vec::new();
    let mut ranked: Vec<(f64, usize)> = Vec::new();
    for (i, &n) in counts.iter().enumerate() {
        if n <= 0.05 {
            continue;
        }
        parts.push(if i == 0 {
            format!("+{:.2} MiB {}", n / 1_048_576.0, COST_KINDS[i].1)
        } else {
            format!("+{n:.1} {}", COST_KINDS[i].1)
        });
        ranked.push((n * COST_KINDS[i].2, i));
    }
    let waits = extra("pool_waits_per_mib");
    if waits > 0.05 {
        parts.push(format!("+{waits:.1} waits for a full shared pool"));
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let head = format!(
        "per MiB read over direct: {}{}",
        if parts.is_empty() {
            "nothing counted".to_string()
        } else {
            parts.join(", ")
        },
        extra_us.map_or(String::new(), |us| format!("; +{us:.0} us measured"))
    );
    let dominant = match ranked.first() {
        None => "none of the counted ones".to_string(),
        Some(&(_, i)) => format!(
            "{} (nominal: {})",
            COST_KINDS[i].0,
            ranked
                .iter()
                .map(|&(us, j)| format!("{} {us:.0} us", COST_KINDS[j].0))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!("{head}; dominant cost: {dominant}")
}

fn images(opts: &BenchOptions) -> Vec<Image> {
    let mut out = Vec::new();
    for arch in Arch::ALL {
        for payload in ["secure-guest", "noop"] {
            let p = opts.kernel(arch, payload);
            if let Ok(m) = fs::metadata(&p) {
                out.push(Image {
                    name: format!("{payload}-{arch}"),
                    bytes: m.len(),
                });
            }
        }
    }
    out
}

/// The 1-minute load average (0 when unknown).
fn load_average() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn first_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::to_string)
}

fn qemu_version() -> String {
    let q = QemuConfig::new(Machine::Q35)
        .map(|c| c.qemu_program())
        .unwrap_or_else(|_| "qemu-system-x86_64".into());
    first_line(&q.to_string_lossy(), &["--version"])
        .and_then(|l| {
            l.split_whitespace()
                .skip_while(|w| *w != "version")
                .nth(1)
                .map(|v| format!("QEMU {v}"))
        })
        .unwrap_or_else(|| "QEMU (version unknown)".into())
}

/// `2 CPUs (AMD EPYC 7B13), a virtual machine, Linux 6.1`.
fn host_description() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']))
        })
        .unwrap_or("unknown CPU")
        .to_string();
    let vm = cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor"));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpus} CPUs ({model}){}, Linux {}",
        if vm { ", a virtual machine" } else { "" },
        kernel.trim()
    )
}

/// `2025-06-01 12:34 UTC`.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Writes `bench.json`, `bench.csv`, `throughput.svg` and `bench.md` into `dir`.
pub fn write_outputs(report: &BenchReport, dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = [
        ("bench.json", serde_json::to_string_pretty(report)? + "\n"),
        ("bench.csv", csv(report)),
        ("throughput.svg", svg(report)),
        ("bench.md", markdown(report)),
    ];
    let mut out = Vec::new();
    for (name, text) in files {
        let p = dir.join(name);
        fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        out.push(p);
    }
    Ok(out)
}
