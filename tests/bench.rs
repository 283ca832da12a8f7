//! `make bench` in small: the bench on microvm (direct and bounce; its IOMMU paths are `n/a`),
//! two rounds of two tiny workloads, in real QEMU under TCG. Every run's data must check out
//! against the disk image, the figures must be there with their medians and ratios, and the
//! outputs must be written. (The full bench is `make bench`; it is not part of `make test`.)

use std::time::Duration;

use harness::bench::{self, BenchOptions, CellStatus, Workload};

#[test]
fn bench_smoke_microvm_direct_and_bounce() {
    for payload in ["secure-guest", "noop"] {
        let k = harness::default_kernel(harness::Arch::X86_64, payload);
        assert!(k.is_file(), "{} is missing: run `make images`", k.display());
    }
    // Kept for a look after a failure; the next run starts afresh.
    let out = harness::workspace_root().join("target").join("bench-smoke");
    let _ = std::fs::remove_dir_all(&out);
    let mut opts = BenchOptions::quick_profile(out.clone());
    opts.repeats = 2;
    opts.boot_pairs = 1;
    opts.sizes.small = 256 << 10;
    opts.sizes.large = 1 << 20;
    opts.sizes.random = 16;
    opts.budget = Duration::from_secs(120);
    opts.kvm = false;
    opts.filter = vec!["microvm/".into()];
    opts.workloads = vec![Workload::ALL[0], bench::HEADLINE];
    let mut lines = Vec::new();
    let r = bench::run(&opts, &mut |l: &str| lines.push(l.to_string())).unwrap();
    let md = bench::markdown(&r);
    assert!(r.failures().is_empty(), "{:#?}\n{md}", r.failures());
    assert_eq!(r.meta.rounds, 2, "{md}");
    assert!(
        lines.iter().any(|l| l.contains("[ 2/2")),
        "progress: {lines:?}"
    );

    let cell = |path: &str| {
        r.cells
            .iter()
            .find(|c| c.platform == "microvm" && c.path == path)
            .unwrap()
    };
    for path in ["direct", "bounce"] {
        let c = cell(path);
        assert_eq!(c.status, CellStatus::Ok, "{path}: {:?}\n{md}", c.reason);
        for key in [
            "boot_ms",
            "noop_ms",
            "boot_ratio",
            "read_4k_qd1",
            "write_4k_qd1",
            "randread_4k_qd1",
            "read_64k_qdfull",
            "write_64k_qdfull",
            "notifies_per_mib_64k_qdfull",
            "heap_high_water_64k_qdfull",
        ] {
            let m = c
                .metric(key)
                .unwrap_or_else(|| panic!("{path}: no {key}\n{md}"));
            assert_eq!(m.stat.n, 2, "{path} {key}");
            assert!(
                m.stat.min > 0.0 && m.stat.min <= m.stat.median,
                "{path} {key}: {m:?}"
            );
            assert!(m.stat.median <= m.stat.max, "{path} {key}");
            if m.section == "throughput" {
                let ratio = m.ratio.unwrap_or_else(|| panic!("{path} {key}: no ratio"));
                if path == "direct" {
                    assert_eq!(ratio, 1.0);
                }
            }
        }
        // The 4 KiB runs carried the random reads; QD1 means one request in flight.
        assert_eq!(c.median("max_in_flight_4k_qd1"), Some(1.0), "{path}");
        assert!(
            c.median("max_in_flight_64k_qdfull").unwrap() > 1.0,
            "{path}"
        );
        assert!(c.command.as_deref().unwrap().contains("sg.blk.req=65536"));
    }
    // Bounce copies every byte moved once and zeroes its slot; direct copies nothing.
    let bounce = cell("bounce");
    let copied = bounce.median("copied_per_mib_64k_qdfull").unwrap();
    assert!((0.9..1.1).contains(&(copied / 1_048_576.0)), "{copied}");
    assert!(bounce.median("pool_high_water_64k_qdfull").unwrap() > 0.0);
    assert_eq!(cell("direct").median("copied_per_mib_64k_qdfull"), None);
    // microvm has no IOMMU in QEMU 10: n/a without a run.
    for path in ["iommu", "iommu+bounce", "ddw", "iommu-static"] {
        let c = cell(path);
        assert_eq!(c.status, CellStatus::NotAvailable, "{path}");
        assert!(c.command.is_none() && c.metrics.is_empty(), "{path}");
    }
    assert!(r.cells.iter().any(|c| c.status == CellStatus::Skipped));
    let t = r
        .targets
        .iter()
        .find(|t| t.target.starts_with("bounce") && t.platform == "microvm")
        .unwrap();
    assert!(t.met.is_some() && (t.met == Some(true) || t.note.contains("dominant cost")));

    let files = bench::write_outputs(&r, &out).unwrap();
    assert_eq!(files.len(), 4);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("bench.json")).unwrap()).unwrap();
    assert_eq!(json["meta"]["rounds"], 2);
    let svg = std::fs::read_to_string(out.join("throughput.svg")).unwrap();
    assert!(svg.contains("<title>microvm bounce: "), "{svg}");
    let csv = std::fs::read_to_string(out.join("bench.csv")).unwrap();
    assert!(csv.contains("microvm,microvm,tcg,bounce,ok,throughput,read_64k_qdfull,MB/s,2,"));
}

/// `harness boot-ratio` in small: one pair on each machine that boots fast, no device. Every
/// run must end as it should (the guest passes, the no-op powers off), and the row must carry
/// the pair's ratio and the guest's own span. No figure is judged: that is `make bench`'s job.
#[test]
fn boot_ratio_smoke() {
    use harness::bootratio::{self, Options};
    let mut opts = Options::quick_profile();
    opts.pairs = 1;
    opts.slof_pairs = 0;
    opts.accel = harness::Accel::Tcg;
    opts.filter = vec!["pseries-vof".into(), "microvm".into(), "q35".into()];
    let rows = bootratio::run(&opts, &mut |_| {}).unwrap();
    let md = bootratio::markdown(&rows);
    let names: Vec<&str> = rows.iter().map(|r| r.machine.as_str()).collect();
    assert_eq!(names, ["pseries-vof", "microvm", "q35"], "{md}");
    for r in &rows {
        assert!(
            r.failures.is_empty(),
            "{}: {:?}\n{md}",
            r.machine,
            r.failures
        );
        assert_eq!(r.ratios.len(), 1, "{md}");
        assert!(r.ratios[0].is_finite() && r.ratios[0] > 0.0, "{md}");
        assert_eq!(
            r.guest_own_us.len(),
            1,
            "the guest's end record has entry_to_end_us\n{md}"
        );
        assert!(md.contains(&format!("| {} | tcg | 1 |", r.machine)), "{md}");
    }
}
