//! Guest memory dumps of a run held at shutdown ([`crate::QemuConfig::hold_at_shutdown`]).
//!
//! When the guest has powered off and QEMU is paused (QMP status `shutdown`), the harness reads
//! the report so far, decides what to dump ([`plan_from_records`]: the shared swiotlb pool, any
//! other range the guest shared, the private ranges it filled with secret marks) and has QEMU
//! write each range to a file in the run directory with QMP `pmemsave` (guest-physical
//! addresses, QEMU's system address space: no IOMMU in the way). Then it quits QEMU. The files
//! stay in the run directory and their bytes come back in [`Dump`]s, for
//! [`crate::secure`]'s oracle.
//!
//! Cost: `pmemsave` of the default 4 MiB pool takes ~6 ms under TCG; `dump-guest-memory` of all
//! of a 512 MiB guest (an ELF core, [`DumpPlan::full`]) ~0.65 s and 512 MiB of disk, so it is off
//! unless asked for (`harness run --hold --dump-all`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::qmp::Qmp;
use crate::report::{Record, Secret, Swiotlb};

/// The largest single range the harness dumps (a guest could claim any size).
pub const MAX_RANGE: u64 = 256 << 20;
/// The most bytes the harness dumps in one run.
pub const MAX_TOTAL: u64 = 512 << 20;
/// The file `dump-guest-memory` writes in the run directory when [`DumpPlan::full`] asks.
pub const FULL_DUMP_FILE: &str = "memory.elf";

/// A guest-physical range to dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpRange {
    /// What it is: `swiotlb`, `shared`, `secret`.
    pub label: String,
    pub base: u64,
    pub size: u64,
}

impl DumpRange {
    pub fn new(label: &str, base: u64, size: u64) -> DumpRange {
        DumpRange {
            label: label.to_string(),
            base,
            size,
        }
    }

    /// The file in the run directory: `dump-swiotlb-0x1f800000.bin`.
    pub fn file_name(&self) -> String {
        format!("dump-{}-{:#x}.bin", self.label, self.base)
    }

    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }
}

impl std::fmt::Display for DumpRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:#x}..{:#x} ({} bytes)",
            self.label,
            self.base,
            self.end(),
            self.size
        )
    }
}

/// One dumped range and its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dump {
    pub range: DumpRange,
    /// The file's name in the run directory.
    pub file: String,
    pub data: Vec<u8>,
}

/// What to dump.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DumpPlan {
    pub ranges: Vec<DumpRange>,
    /// Also all of guest memory, as an ELF core ([`FULL_DUMP_FILE`]).
    pub full: bool,
    /// Ranges the report asked for that the harness will not dump, and why.
    pub problems: Vec<String>,
}

/// What dumping gave.
#[derive(Clone, Debug, Default)]
pub struct DumpOutcome {
    pub dumps: Vec<Dump>,
    pub full: Option<PathBuf>,
    /// Ranges that could not be dumped or read back, with why.
    pub problems: Vec<String>,
    pub time: Duration,
}

/// The ranges a secure guest's report names: the `swiotlb` pool, every other range its
/// `shares` left shared, and the `secret` regions. Each is capped ([`MAX_RANGE`], [`MAX_TOTAL`]);
/// what is left out is in [`DumpPlan::problems`], which the oracle reports.
pub fn plan_from_records(records: &[Record]) -> DumpPlan {
    let mut plan = DumpPlan::default();
    let mut wanted = Vec::new();
    if let Some(s) = records.iter().find_map(|r| r.view::<Swiotlb>().ok()) {
        let pool = DumpRange::new("swiotlb", s.base.0, s.size);
        for (base, end) in shared_ranges(&s) {
            // Parts of shared memory outside the pool (there should be none) are dumped too.
            for (b, e) in subtract((base, end), (pool.base, pool.end())) {
                wanted.push(DumpRange::new("shared", b, e - b));
            }
        }
        wanted.insert(0, pool);
    }
    for secret in records.iter().filter_map(|r| r.view::<Secret>().ok()) {
        for r in secret.regions {
            wanted.push(DumpRange::new("secret", r.base.0, r.size));
        }
    }
    let mut total = 0u64;
    for r in wanted {
        if r.size == 0 {
            continue;
        }
        if r.base.checked_add(r.size).is_none() {
            plan.problems.push(format!("{r}: the range wraps around"));
        } else if r.size > MAX_RANGE {
            plan.problems.push(format!(
                "{r}: larger than the harness dumps ({MAX_RANGE} bytes)"
            ));
        } else if total + r.size > MAX_TOTAL {
            plan.problems.push(format!(
                "{r}: not dumped, the run's dumps would exceed {MAX_TOTAL} bytes"
            ));
        } else {
            total += r.size;
            plan.ranges.push(r);
        }
    }
    plan
}

/// The ranges left shared by `swiotlb.shares`, in order: each `share` that succeeded adds its
/// range, each `unshare` that succeeded removes it.
pub fn shared_ranges(s: &Swiotlb) -> Vec<(u64, u64)> {
    // start -> end, disjoint.
    let mut set: BTreeMap<u64, u64> = BTreeMap::new();
    for c in &s.shares {
        if c.result != "ok" || c.size == 0 {
            continue;
        }
        let (b, e) = (c.base.0, c.base.0.saturating_add(c.size));
        let overlapping: Vec<(u64, u64)> = set
            .range(..e)
            .filter(|&(_, &end)| end > b)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s0, _) in &overlapping {
            set.remove(s0);
        }
        match c.op.as_str() {
            "share" => {
                // Merge with whatever it touches.
                let lo = overlapping.iter().map(|r| r.0).fold(b, u64::min);
                let hi = overlapping.iter().map(|r| r.1).fold(e, u64::max);
                set.insert(lo, hi);
            }
            _ => {
                for r in overlapping {
                    for (x, y) in subtract(r, (b, e)) {
                        set.insert(x, y);
                    }
                }
            }
        }
    }
    set.into_iter().collect()
}

/// `a` minus `b`, as up to two ranges (half-open).
fn subtract(a: (u64, u64), b: (u64, u64)) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    if a.0 < b.0.min(a.1) {
        out.push((a.0, b.0.min(a.1)));
    }
    if a.1 > b.1.max(a.0) {
        out.push((b.1.max(a.0), a.1));
    }
    out
}

/// Has QEMU (paused, its working directory `dir`) write every planned range with `pmemsave`,
/// and the whole memory with `dump-guest-memory` when asked; reads the ranges back.
pub fn save(qmp: &mut Qmp, dir: &Path, plan: &DumpPlan) -> DumpOutcome {
    let started = Instant::now();
    let mut out = DumpOutcome {
        problems: plan.problems.clone(),
        ..Default::default()
    };
    for r in &plan.ranges {
        match pmemsave(qmp, dir, r) {
            Ok(d) => out.dumps.push(d),
            Err(e) => out.problems.push(format!("{r}: {e:#}")),
        }
    }
    if plan.full {
        let path = dir.join(FULL_DUMP_FILE);
        let r = qmp.execute(
            "dump-guest-memory",
            Some(json!({"paging": false, "protocol": format!("file:{FULL_DUMP_FILE}")})),
        );
        match r {
            Ok(_) if path.is_file() => out.full = Some(path),
            Ok(_) => out
                .problems
                .push(format!("dump-guest-memory wrote no {FULL_DUMP_FILE}")),
            Err(e) => out.problems.push(format!("dump-guest-memory: {e:#}")),
        }
    }
    out.time = started.elapsed();
    out
}

/// One `pmemsave`, read back.
pub fn pmemsave(qmp: &mut Qmp, dir: &Path, r: &DumpRange) -> Result<Dump> {
    let file = r.file_name();
    let _ = fs::remove_file(dir.join(&file));
    // The file name is relative: QEMU's working directory is the run directory.
    qmp.execute(
        "pmemsave",
        Some(json!({"val": r.base, "size": r.size, "filename": file})),
    )?;
    let data = fs::read(dir.join(&file)).with_context(|| format!("reading {file}"))?;
    if data.len() as u64 != r.size {
        bail!(
            "{file} holds {} bytes, {} were asked for",
            data.len(),
            r.size
        );
    }
    Ok(Dump {
        range: r.clone(),
        file,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Report;

    fn records(lines: &[String]) -> Vec<Record> {
        let mut s = String::new();
        for l in lines {
            s.push_str("@sg ");
            s.push_str(l);
            s.push('\n');
        }
        Report::parse(s.as_bytes()).records
    }

    fn swiotlb(base: u64, size: u64, shares: &str) -> String {
        format!(
            r#"{{"event":"swiotlb","v":1,"base":"{base:#x}","device_base":"{base:#x}","size":{size},"slot_size":2048,"slots":{},"max_mapping":262144,"shares":[{shares}],"leak":false}}"#,
            size / 2048
        )
    }

    fn share(op: &str, base: u64, size: u64, result: &str) -> String {
        format!(r#"{{"op":"{op}","base":"{base:#x}","size":{size},"result":"{result}"}}"#)
    }

    #[test]
    fn plan_names_the_pool_other_shares_and_secrets() {
        let shares = [
            share("share", 0x1f00_0000, 4 << 20, "ok"),
            share("share", 0x100_0000, 0x2000, "ok"),
            share("share", 0x200_0000, 0x1000, "refused"),
        ]
        .join(",");
        let recs = records(&[
            swiotlb(0x1f00_0000, 4 << 20, &shares),
            r#"{"event":"secret","v":1,"regions":[{"base":"0x800000","size":65536},{"base":"0x900000","size":0}]}"#.into(),
        ]);
        let p = plan_from_records(&recs);
        assert_eq!(
            p.ranges,
            vec![
                DumpRange::new("swiotlb", 0x1f00_0000, 4 << 20),
                DumpRange::new("shared", 0x100_0000, 0x2000),
                DumpRange::new("secret", 0x80_0000, 65536),
            ]
        );
        assert!(p.problems.is_empty());
        assert_eq!(p.ranges[0].file_name(), "dump-swiotlb-0x1f000000.bin");
        // Nothing secure in the report: nothing to dump.
        assert_eq!(plan_from_records(&[]), DumpPlan::default());
    }

    #[test]
    fn plan_caps_what_it_dumps() {
        let recs = records(&[
            swiotlb(0x1000_0000, 1 << 30, ""),
            r#"{"event":"secret","v":1,"regions":[{"base":"0xfffffffffffff000","size":8192},{"base":"0x0","size":268435456},{"base":"0x20000000","size":268435456},{"base":"0x40000000","size":4096}]}"#.into(),
        ]);
        let p = plan_from_records(&recs);
        assert_eq!(p.ranges.len(), 2, "{p:?}");
        assert_eq!(p.problems.len(), 3, "{p:?}");
        assert!(p.problems[0].contains("larger than"), "{p:?}");
        assert!(p.problems[1].contains("wraps"), "{p:?}");
        assert!(p.problems[2].contains("exceed"), "{p:?}");
    }

    #[test]
    fn shares_and_unshares() {
        let recs = records(&[swiotlb(
            0x10000,
            0x10000,
            &[
                share("share", 0x10000, 0x10000, "ok"),
                share("share", 0x30000, 0x1000, "ok"),
                share("share", 0x31000, 0x1000, "ok"),
                share("unshare", 0x18000, 0x1000, "ok"),
                share("unshare", 0x30000, 0x2000, "failed: busy"),
                share("unshare", 0x30800, 0x800, "ok"),
            ]
            .join(","),
        )]);
        let s: Swiotlb = recs[0].view().unwrap();
        assert_eq!(
            shared_ranges(&s),
            vec![
                (0x10000, 0x18000),
                (0x19000, 0x20000),
                (0x30000, 0x30800),
                (0x31000, 0x32000)
            ]
        );
        assert_eq!(subtract((0, 10), (3, 5)), vec![(0, 3), (5, 10)]);
        assert_eq!(subtract((0, 10), (0, 10)), vec![]);
        assert_eq!(subtract((0, 10), (20, 30)), vec![(0, 10)]);
        assert_eq!(subtract((20, 30), (0, 25)), vec![(25, 30)]);
    }
}
