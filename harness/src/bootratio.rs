//! `harness boot-ratio` (part of `make bench`): how long QEMU takes to boot the guest to its
//! `end` record and power off, against the no-op payload on the same machine, with no device
//! attached. That is the boot target of the project (the guest within 1.2× of what QEMU itself
//! needs to start and stop the machine); the bench's own boot figures have a disk attached and
//! include its virtio init.
//!
//! Each machine gets `pairs` pairs of runs, the two payloads one right after the other and the
//! order swapped from pair to pair, so that a machine that slows down or speeds up during the
//! run weighs on both alike. A pair's ratio is guest / no-op; the figure is the median of the
//! pairs' ratios, with their spread. The guest's own span (`end.entry_to_end_us`, its first
//! instruction to its last record, on its own clock) says how much of the difference it spent.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::bench::Stat;
use crate::{Accel, Firmware, Machine, Outcome, QemuConfig};

/// The target: guest / no-op at most this.
pub const TARGET: f64 = 1.2;

/// One machine (and firmware) to boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub machine: Machine,
    pub firmware: Option<Firmware>,
}

impl Target {
    pub fn name(&self) -> String {
        match self.firmware {
            Some(f) => format!("{}-{}", self.machine.as_str(), f.as_str()),
            None => self.machine.as_str().to_string(),
        }
    }
}

/// Every machine the guest boots on: pseries under VOF and SLOF, microvm, q35, pc.
pub const TARGETS: [Target; 5] = [
    Target {
        machine: Machine::Pseries,
        firmware: Some(Firmware::Vof),
    },
    Target {
        machine: Machine::Pseries,
        firmware: Some(Firmware::Slof),
    },
    Target {
        machine: Machine::Microvm,
        firmware: None,
    },
    Target {
        machine: Machine::Q35,
        firmware: None,
    },
    Target {
        machine: Machine::Pc,
        firmware: None,
    },
];

#[derive(Clone, Debug)]
pub struct Options {
    /// Pairs per machine.
    pub pairs: u32,
    /// Pairs for pseries under SLOF, whose every boot costs seconds of TCG.
    pub slof_pairs: u32,
    pub accel: Accel,
    /// Only machines whose name (`pseries-vof`, `q35`) contains one of these; empty: all.
    pub filter: Vec<String>,
    /// The images: `<dir>/secure-guest-<arch>` and `<dir>/noop-<arch>`.
    pub images: std::path::PathBuf,
}

impl Options {
    pub fn default_profile() -> Options {
        Options {
            pairs: 11,
            slof_pairs: 3,
            accel: Accel::Tcg,
            filter: Vec::new(),
            images: crate::workspace_root().join("build"),
        }
    }

    pub fn quick_profile() -> Options {
        Options {
            pairs: 5,
            slof_pairs: 1,
            ..Options::default_profile()
        }
    }
}

/// What one machine measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Row {
    pub machine: String,
    pub accel: String,
    /// Wall time of each run, ms, in pair order.
    pub noop_ms: Vec<f64>,
    pub guest_ms: Vec<f64>,
    /// guest / no-op of each pair.
    pub ratios: Vec<f64>,
    /// The guest's `end.entry_to_end_us` of each run.
    pub guest_own_us: Vec<f64>,
    /// Runs that did not end as they should (the pair is then left out).
    pub failures: Vec<String>,
}

impl Row {
    pub fn ratio(&self) -> Option<Stat> {
        Stat::of(&self.ratios)
    }

    pub fn met(&self) -> Option<bool> {
        self.ratio().map(|s| s.median <= TARGET)
    }

    /// 1 + (the guest's own time) / (the no-op's wall time), medians: the ratio again, with the
    /// guest's part taken on its own clock, which a busy host disturbs far less than two wall
    /// times (the no-op payload spends next to nothing after its entry, and both runs pay the
    /// same QEMU start, firmware and power-off).
    pub fn own_ratio(&self) -> Option<f64> {
        let own_ms = median(&self.guest_own_us)? / 1e3;
        let noop = median(&self.noop_ms)?;
        (noop > 0.0).then(|| 1.0 + own_ms / noop)
    }
}

fn config(opts: &Options, t: Target, payload: &str) -> Result<QemuConfig> {
    let mut c = QemuConfig::new(t.machine)?;
    c.firmware = t.firmware;
    c.accel = opts.accel;
    c.kernel = opts
        .images
        .join(format!("{payload}-{}", t.machine.arch().as_str()));
    anyhow::ensure!(
        c.kernel.is_file(),
        "{} is missing: run `make images` first",
        c.kernel.display()
    );
    if t.firmware == Some(Firmware::Slof) {
        c.timeout = std::time::Duration::from_secs(120);
    }
    Ok(c)
}

/// One run of `payload`: its wall time (ms) and, for the guest, its own span (µs), or why it
/// does not count.
fn run_one(c: &QemuConfig, guest: bool) -> Result<(f64, Option<f64>), String> {
    let r = crate::run(c).map_err(|e| format!("{e:#}"))?;
    let ms = r.wall_time.as_secs_f64() * 1e3;
    if !guest {
        return if r.exited_cleanly() {
            Ok((ms, None))
        } else {
            Err(format!(
                "the no-op payload did not power off cleanly: {}",
                r.diagnosis.as_deref().unwrap_or("exit status")
            ))
        };
    }
    if r.verdict != Outcome::Pass {
        return Err(format!(
            "guest: {}: {}",
            r.verdict,
            r.diagnosis.as_deref().unwrap_or("see its report")
        ));
    }
    let own = r.end().and_then(|e| e.entry_to_end_us).map(|us| us as f64);
    Ok((ms, own))
}

/// Boots every machine of `opts`; `progress` gets a line per machine.
pub fn run(opts: &Options, progress: &mut dyn FnMut(&str)) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for t in TARGETS {
        let name = t.name();
        if !opts.filter.is_empty() && !opts.filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let guest = config(opts, t, "secure-guest")?;
        let noop = config(opts, t, "noop")?;
        let mut row = Row {
            machine: name.clone(),
            accel: guest.accel.resolve(t.machine.arch()).as_str().to_string(),
            ..Row::default()
        };
        let pairs = if t.firmware == Some(Firmware::Slof) {
            opts.slof_pairs
        } else {
            opts.pairs
        };
        for pair in 0..pairs {
            // Swap the order every other pair.
            let guest_first = pair % 2 == 1;
            let mut got = [None, None];
            for first in [true, false] {
                let is_guest = first == guest_first;
                let c = if is_guest { &guest } else { &noop };
                got[usize::from(is_guest)] = Some(run_one(c, is_guest));
            }
            match (got[0].take(), got[1].take()) {
                (Some(Ok((n, _))), Some(Ok((g, own)))) => {
                    row.noop_ms.push(n);
                    row.guest_ms.push(g);
                    row.ratios.push(g / n);
                    if let Some(us) = own {
                        row.guest_own_us.push(us);
                    }
                }
                (n, g) => {
                    for e in [n, g].into_iter().flatten().filter_map(|r| r.err()) {
                        row.failures.push(e);
                    }
                }
            }
        }
        progress(&format!(
            "boot-ratio {name}: {}",
            match row.ratio() {
                Some(s) => format!("{:.3} (median of {} pairs)", s.median, s.n),
                None => "no pair completed".into(),
            }
        ));
        rows.push(row);
    }
    Ok(rows)
}

fn median(v: &[f64]) -> Option<f64> {
    Stat::of(v).map(|s| s.median)
}

/// The table: one row per machine.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "Boot without devices (wall time of a whole QEMU run to power-off; ratio: median of the \
         alternating pairs' ratios):\n\n\
         | machine | accel | pairs | no-op ms | guest ms | guest/no-op | spread | guest's own ms | \
         1 + own/no-op | ≤ 1.2× |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let ms = |v: Option<f64>| v.map_or("–".into(), |x| format!("{x:.1}"));
    for r in rows {
        let (ratio, spread) = match r.ratio() {
            Some(st) => (
                format!("{:.3}", st.median),
                format!("{:.3}–{:.3}", st.min, st.max),
            ),
            None => ("–".into(), "–".into()),
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.machine,
            r.accel,
            r.ratios.len(),
            ms(median(&r.noop_ms)),
            ms(median(&r.guest_ms)),
            ratio,
            spread,
            ms(median(&r.guest_own_us).map(|us| us / 1e3)),
            r.own_ratio().map_or("–".into(), |x| format!("{x:.3}")),
            match r.met() {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "–",
            }
        ));
    }
    for r in rows {
        for f in &r.failures {
            s.push_str(&format!("\n- {}: {f}", r.machine));
        }
    }
    s.push('\n');
    s
}

/// Writes `boot-bare.json` and `boot-bare.md` into `dir`.
pub fn write_outputs(rows: &[Row], dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let json = dir.join("boot-bare.json");
    let rows_json: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            if let (Some(o), Some(st)) = (v.as_object_mut(), r.ratio()) {
                o.insert("ratio_median".into(), st.median.into());
                o.insert("target".into(), TARGET.into());
                o.insert("met".into(), (st.median <= TARGET).into());
            }
            if let (Some(o), Some(x)) = (v.as_object_mut(), r.own_ratio()) {
                o.insert("own_ratio".into(), x.into());
            }
            v
        })
        .collect();
    std::fs::write(&json, serde_json::to_string_pretty(&rows_json)? + "\n")?;
    let md = dir.join("boot-bare.md");
    std::fs::write(&md, markdown(rows))?;
    Ok(vec![json, md])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ratios: &[f64], failures: &[&str]) -> Row {
        Row {
            machine: "q35".into(),
            accel: "tcg".into(),
            noop_ms: ratios.iter().map(|_| 100.0).collect(),
            guest_ms: ratios.iter().map(|r| 100.0 * r).collect(),
            ratios: ratios.to_vec(),
            guest_own_us: vec![12_345.0],
            failures: failures.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_table_gives_the_median_ratio_and_the_verdict() {
        let md = markdown(&[
            row(&[1.10, 1.30, 1.15], &[]),
            row(&[1.25], &["guest: fail: x"]),
        ]);
        assert!(
            md.contains(
                "| q35 | tcg | 3 | 100.0 | 115.0 | 1.150 | 1.100–1.300 | 12.3 | 1.123 | met |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| 1.250 | 1.250–1.250 | 12.3 | 1.123 | **missed** |"),
            "{md}"
        );
        assert!(md.contains("- q35: guest: fail: x"), "{md}");
        let none = markdown(&[row(&[], &[])]);
        assert!(
            none.contains("| q35 | tcg | 0 | – | – | – | – | 12.3 | – | – |"),
            "{none}"
        );
    }

    #[test]
    fn the_outputs_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_outputs(&[row(&[1.1, 1.2], &[])], dir.path()).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
        assert_eq!(v[0]["machine"], "q35");
        assert!(
            (v[0]["ratio_median"].as_f64().unwrap() - 1.15).abs() < 1e-9,
            "{v}"
        );
        assert_eq!(v[0]["met"], true);
        assert!(
            std::fs::read_to_string(&files[1])
                .unwrap()
                .contains("| q35 |")
        );
    }

    #[test]
    fn names_say_the_firmware() {
        let names: Vec<String> = TARGETS.iter().map(Target::name).collect();
        assert_eq!(
            names,
            ["pseries-vof", "pseries-slof", "microvm", "q35", "pc"]
        );
    }
}
