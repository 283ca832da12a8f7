//! The bench without QEMU: statistics, the figures of a run from its report, the probe's
//! reasons, the data checks, ratios and targets, and the outputs, against synthetic results.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use super::*;
use crate::report::Report;

#[test]
fn stat_median_min_max_and_spread() {
    assert_eq!(Stat::of(&[]), None);
    assert_eq!(Stat::of(&[f64::NAN]), None);
    let s = Stat::of(&[3.0, 1.0, 2.0]).unwrap();
    assert_eq!((s.n, s.median, s.min, s.max), (3, 2.0, 1.0, 3.0));
    assert_eq!(s.spread, 1.0);
    assert!(s.varies);
    let s = Stat::of(&[4.0, 1.0, 2.0, 3.0, f64::INFINITY]).unwrap();
    assert_eq!(
        (s.n, s.median),
        (4, 2.5),
        "even count: mean of the middle two"
    );
    // Exactly 10% is not "more than 10%".
    assert!(!Stat::of(&[100.0, 95.0, 105.0]).unwrap().varies);
    assert!(Stat::of(&[100.0, 95.0, 105.1]).unwrap().varies);
    let one = Stat::of(&[7.0]).unwrap();
    assert_eq!((one.spread, one.varies), (0.0, false));
    assert_eq!(Stat::of(&[0.0, 0.0]).unwrap().spread, 0.0);
}

#[test]
fn workloads_and_sizes() {
    let labels: Vec<String> = Workload::ALL.iter().map(|w| w.label()).collect();
    assert_eq!(
        labels,
        [
            "4K QD1",
            "4K QDfull",
            "64K QD1",
            "64K QDfull",
            "1M QD1",
            "1M QDfull"
        ]
    );
    assert_eq!(HEADLINE.key(), "64k_qdfull");
    assert!(Workload::ALL[0].random() && !HEADLINE.random());
    let s = BenchOptions::quick_profile("x".into()).sizes;
    assert_eq!(s.bytes(Workload::ALL[1]), 2 << 20);
    assert_eq!(s.bytes(HEADLINE), 8 << 20);
    // Both profiles fit the disk, and the quick one is smaller in every way.
    let d = BenchOptions::default_profile("x".into());
    let q = BenchOptions::quick_profile("x".into());
    assert!(d.sizes.large <= DISK_BYTES / 2 && d.sizes.small <= d.sizes.large);
    assert!(q.sizes.large < d.sizes.large && q.repeats < d.repeats && q.budget < d.budget);
    assert!(!q.kvm);
}

#[test]
fn every_machine_and_path_has_a_setup_or_a_reason() {
    for m in [Machine::Pseries, Machine::Microvm, Machine::Q35] {
        for p in DmaPath::ALL {
            match path_setup(m, p) {
                Ok(s) => {
                    let secure = s.append.iter().any(|w| w == "sg.secure=emulate");
                    assert_eq!(
                        secure,
                        matches!(p, DmaPath::Bounce | DmaPath::IommuBounce),
                        "{m} {p:?}"
                    );
                    // pseries bounces a device without iommu_platform (the TCE table would
                    // fail its DMA); x86 needs it to negotiate ACCESS_PLATFORM.
                    let platform = s.device_props.contains("iommu_platform=on");
                    assert_eq!(
                        platform,
                        p != DmaPath::Direct && !(m == Machine::Pseries && p == DmaPath::Bounce),
                        "{m} {p:?}"
                    );
                }
                Err(why) => {
                    assert!(
                        matches!(
                            (m, p),
                            (
                                Machine::Microvm,
                                DmaPath::Iommu
                                    | DmaPath::IommuBounce
                                    | DmaPath::Ddw
                                    | DmaPath::IommuStatic
                            ) | (Machine::Q35, DmaPath::Ddw)
                                | (Machine::Pseries, DmaPath::IommuStatic)
                        ),
                        "{m} {p:?}: {why}"
                    );
                    assert!(!why.is_empty());
                }
            }
        }
    }
    assert!(
        path_setup(Machine::Pseries, DmaPath::Bounce)
            .unwrap()
            .append
            .contains(&"sg.legacy_devices=bounce".to_string())
    );
    assert_eq!(
        path_setup(Machine::Q35, DmaPath::Iommu).unwrap().extra_args,
        ["-device", "virtio-iommu-pci"]
    );
    let s = path_setup(Machine::Q35, DmaPath::IommuStatic).unwrap();
    assert_eq!(s.append, ["sg.dma=iommu", "sg.iommu.map=static"]);
    assert_eq!(s.extra_args, ["-device", "virtio-iommu-pci"]);
    assert_eq!(DmaPath::IommuStatic.as_str(), "iommu-static");
    assert_eq!(
        (
            DmaPath::IommuStatic.expected_dma(),
            DmaPath::IommuStatic.expected_mode()
        ),
        ("iommu", Some("static"))
    );
}

const BOOT: &str = r#"@sg {"event":"boot","v":1,"t_us":5000,"arch":"x86_64","machine":"q35","firmware":"pvh","guest":"0.1.0","load_addr":"0x100000","image_end":"0x1a0000","ram_bytes":536346624,"ram_top":"0x1ffe0000","memory":[],"memory_dropped":0,"cpus":1,"cmdline":"","console":"com1","tick_hz":1000000000,"tick_source":"pit","entry_to_boot_ticks":5000000,"entry_to_boot_us":5000}"#;
const HEAP: &str = r#"@sg {"event":"heap","v":1,"t_us":8000,"base":"0x200000","size":67108864}"#;
const SECURE_STATS: &str = r#"@sg {"event":"swiotlb_stats","v":1,"t_us":300000,"maps":100,"unmaps":100,"bounced_to_device":1048576,"bounced_from_device":3145728,"high_water_bytes":262144,"high_water_slots":128,"exhausted":3,"zeroed_bytes":4194304,"unzeroed_releases":0,"live_bytes":0,"in_use_slots":0,"map_failures":0,"probe_bytes":4096}"#;
const END: &str = r#"@sg {"event":"end","v":1,"t_us":408000,"verdict":"pass","errors":0,"warnings":0,"entry_to_end_us":408000,"heap_high_water_bytes":1234567}"#;

/// A blk record with the bench's fields.
fn blk(dma: &str, read: u64, read_us: u64, write: u64, write_us: u64) -> String {
    format!(
        r#"@sg {{"event":"virtio","v":1,"t_us":200000,"device":"blk","device_id":2,"transport":"virtio-pci-modern","location":"00:01.0","features_offered":"0x0","features_offered_names":[],"features_accepted":"0x0","features_accepted_names":[],"access_platform":{{"offered":false,"accepted":false}},"queues":[],"dma":"{dma}","dma_reason":"not secure","requests":99,"bytes_to_device":{write},"bytes_from_device":{},"notifications":7,"result":"ok","capacity":67108864,"block_size":512,"serial":null,"read_bytes":{read},"read_crc32c":"0x1234","write":{{"offset":0,"len":{write},"seed":"0x53474245","crc32c":"0x1234"}},"flushed":true,"req_bytes":65536,"max_in_flight":64,"read_us":{read_us},"random_reads":10,"random_bytes":40960,"random_crc32c":"0x99","random_us":500,"write_us":{write_us}}}"#,
        read + 20 + 40960
    )
}

/// (line, after µs, seen µs).
fn stamps_us(s: &[(usize, u64, u64)]) -> BTreeMap<usize, Stamp> {
    s.iter()
        .map(|&(l, a, b)| {
            (
                l,
                Stamp {
                    after: Duration::from_micros(a),
                    seen: Duration::from_micros(b),
                },
            )
        })
        .collect()
}

/// `rec` (a blk record) with an `iommu` object.
fn with_iommu(rec: &str, backend: &str, mode: &str, calls: u64) -> String {
    rec.replacen(
        r#""requests":"#,
        &format!(
            r#""iommu":{{"backend":"{backend}","mode":"{mode}","mode_reason":"sg.tce=x","calls":{calls}}},"requests":"#
        ),
        1,
    )
}

fn records(lines: &[&str]) -> Vec<Record> {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let r = Report::parse(text.as_bytes());
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    r.records
}

#[test]
fn a_run_gives_its_figures() {
    let b = blk("bounce", 4 << 20, 20_000, 4 << 20, 10_000);
    let recs = records(&[BOOT, HEAP, &b, SECURE_STATS, END]);
    // The host saw `heap` (line 2) at 100 ms and `end` (line 5) at 500 ms: 400 ms, as the guest.
    let stamps = stamps_us(&[(2, 98_000, 100_000), (5, 498_000, 500_000)]);
    let s = parse_sample(&recs, Duration::from_millis(600), &stamps).unwrap();
    assert_eq!(s.wall_ms, 600.0);
    assert_eq!((s.read_bytes, s.read_us), (4 << 20, 20_000));
    assert_eq!((s.write_bytes, s.write_us), (4 << 20, 10_000));
    assert_eq!(
        (s.random_reads, s.random_us, s.random_crc32c),
        (10, 500, 0x99)
    );
    assert_eq!((s.read_crc32c, s.write_crc32c), (0x1234, Some(0x1234)));
    assert_eq!(s.moved, (8 << 20) + 20 + 40960);
    assert_eq!((s.requests, s.notifications), (99, 7));
    assert_eq!(s.bounced, Some(4 << 20));
    assert_eq!((s.zeroed, s.pool_waits), (Some(4 << 20), Some(3)));
    assert_eq!(s.pool_high_water, Some(262_144));
    assert_eq!(s.heap_high_water, Some(1_234_567));
    assert_eq!((s.hypercalls, s.iommu_commands), (None, None));
    assert_eq!((s.max_in_flight, s.req_bytes), (64, 65536));
    assert_eq!((s.clock_ratio, s.clock_ok), (Some(1.0), Some(true)));
    assert_eq!(mbps(s.read_bytes, s.read_us), 209.7152);
    let names: Vec<&str> = s.phases.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(names, ["boot", "heap", "virtio", "swiotlb_stats", "end"]);
    assert_eq!(s.phases[0].1, 5000, "the first phase counts from entry");
    assert_eq!(s.phases[2].1, 192_000);

    // A guest clock running 10% fast; too short a host span is not used.
    let fast = stamps_us(&[(2, 99_000, 100_000), (5, 462_636, 463_636)]);
    let s = parse_sample(&recs, Duration::ZERO, &fast).unwrap();
    assert!((s.clock_ratio.unwrap() - 1.1).abs() < 0.01, "{s:?}");
    assert_eq!(s.clock_ok, Some(false));
    // A harness paused for 300 ms knows the span only to [100, 450] ms: no verdict against the
    // guest from that.
    let paused = stamps_us(&[(2, 50_000, 100_000), (5, 200_000, 500_000)]);
    let s = parse_sample(&recs, Duration::ZERO, &paused).unwrap();
    assert_eq!(s.clock_ok, Some(true));
    let short = stamps_us(&[(2, 0, 1000), (5, 49_000, 50_000)]);
    let s = parse_sample(&recs, Duration::ZERO, &short).unwrap();
    assert_eq!((s.clock_ratio, s.clock_ok), (None, None));

    // The disk's share of its IOMMU domain: TCE calls are hypercalls, the others commands.
    let tce = with_iommu(&b, "tce", "dynamic", 40);
    let s = parse_sample(&records(&[BOOT, HEAP, &tce, END]), Duration::ZERO, &stamps).unwrap();
    assert_eq!(
        (s.hypercalls, s.iommu_commands, s.bounced),
        (Some(40), None, None)
    );
    let viommu = with_iommu(&b, "virtio-iommu", "dynamic", 12);
    let s = parse_sample(
        &records(&[BOOT, HEAP, &viommu, END]),
        Duration::ZERO,
        &stamps,
    )
    .unwrap();
    assert_eq!((s.hypercalls, s.iommu_commands), (None, Some(12)));

    // Not exactly one disk.
    let e = parse_sample(&records(&[BOOT, END]), Duration::ZERO, &stamps).unwrap_err();
    assert!(e.contains("0 blk records"), "{e}");
    let e = parse_sample(&records(&[BOOT, &b, &b, END]), Duration::ZERO, &stamps).unwrap_err();
    assert!(e.contains("2 blk records"), "{e}");
    // A guest without the bench's fields.
    let old = b.replace(",\"read_us\":20000", "");
    let e = parse_sample(&records(&[BOOT, &old, END]), Duration::ZERO, &stamps).unwrap_err();
    assert!(e.contains("read_us"), "{e}");
}

fn fake_run(lines: &[&str], verdict: Outcome) -> RunResult {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let report = Report::parse(text.as_bytes());
    RunResult {
        config: QemuConfig::new(Machine::Q35).unwrap(),
        command_line: vec!["qemu".into()],
        exit_status: ExitStatus::from_raw(0),
        timed_out: false,
        console: text,
        records: report.records,
        protocol_errors: report.errors,
        verdict,
        diagnosis: None,
        wall_time: Duration::from_millis(100),
        stderr: String::new(),
        held: None,
        trace: None,
    }
}

#[test]
fn the_probe_says_why_a_path_is_not_available() {
    let b = blk("direct", 65536, 100, 0, 0);
    assert_eq!(
        probe_verdict(&fake_run(&[BOOT, &b, END], Outcome::Pass), DmaPath::Direct),
        Ok(())
    );
    // A guest that does not know the IOMMU options runs direct: the cell is n/a, not wrong.
    let warn = r#"@sg {"event":"option","v":1,"t_us":1,"level":"warning","option":"sg.dma","message":"unknown option, ignored"}"#;
    let e = probe_verdict(
        &fake_run(&[BOOT, warn, &b, END], Outcome::Pass),
        DmaPath::Iommu,
    );
    assert_eq!(e, Err("the guest does not know sg.dma".into()));
    let bad = r#"@sg {"event":"option","v":1,"t_us":1,"level":"error","option":"sg.tce","value":"ddw","expected":"dynamic","message":"malformed value"}"#;
    let e = probe_verdict(
        &fake_run(&[BOOT, bad, &b, END], Outcome::Fail),
        DmaPath::Ddw,
    );
    assert_eq!(
        e,
        Err("the guest rejects sg.tce=ddw (expected dynamic)".into())
    );
    let e = probe_verdict(&fake_run(&[BOOT, &b, END], Outcome::Pass), DmaPath::Bounce).unwrap_err();
    assert!(
        e.contains("put the disk on the direct path (not secure)"),
        "{e}"
    );
    let err = r#"@sg {"event":"error","v":1,"t_us":1,"what":"iommu","message":"no TCE window"}"#;
    let e = probe_verdict(&fake_run(&[BOOT, err, END], Outcome::Fail), DmaPath::Iommu);
    assert_eq!(e, Err("guest error (iommu): no TCE window".into()));
    let timeout = b.replace(
        r#""result":"ok""#,
        r#""result":"error","error":"timeout after 2000 ms""#,
    );
    let e = probe_verdict(
        &fake_run(&[BOOT, &timeout, END], Outcome::Fail),
        DmaPath::Direct,
    )
    .unwrap_err();
    assert!(
        e.contains("failed on the direct path: timeout after 2000 ms"),
        "{e}"
    );
    let e = probe_verdict(&fake_run(&[BOOT, END], Outcome::Pass), DmaPath::Direct);
    assert_eq!(e, Err("the guest found no disk".into()));
    let mut wedged = fake_run(&[BOOT], Outcome::Wedged);
    wedged.diagnosis = Some("no `end` record within 30 s".into());
    assert_eq!(
        probe_verdict(&wedged, DmaPath::Direct),
        Err("wedged: no `end` record within 30 s".into())
    );
    // `iommu` and `ddw` are both the iommu path; the domain's mode tells them apart.
    let ddw = with_iommu(&blk("iommu", 65536, 100, 0, 0), "tce", "ddw", 0);
    assert_eq!(
        probe_verdict(&fake_run(&[BOOT, &ddw, END], Outcome::Pass), DmaPath::Ddw),
        Ok(())
    );
    let e = probe_verdict(&fake_run(&[BOOT, &ddw, END], Outcome::Pass), DmaPath::Iommu);
    assert_eq!(
        e,
        Err("the guest's IOMMU domain is ddw (sg.tce=x), not dynamic".into())
    );
    let bare = blk("iommu", 65536, 100, 0, 0);
    let e = probe_verdict(&fake_run(&[BOOT, &bare, END], Outcome::Pass), DmaPath::Ddw);
    assert!(
        e.unwrap_err()
            .contains("is missing (no reason given), not ddw")
    );
    // `iommu-static` too: a guest that runs its virtio-iommu domain dynamic is not the cell.
    let fixed = with_iommu(&blk("iommu", 65536, 100, 0, 0), "virtio-iommu", "static", 0);
    let run = fake_run(&[BOOT, &fixed, END], Outcome::Pass);
    assert_eq!(probe_verdict(&run, DmaPath::IommuStatic), Ok(()));
    let e = probe_verdict(&run, DmaPath::Iommu).unwrap_err();
    assert!(e.contains("is static"), "{e}");
    let dynamic = with_iommu(
        &blk("iommu", 65536, 100, 0, 0),
        "virtio-iommu",
        "dynamic",
        64,
    );
    let e = probe_verdict(
        &fake_run(&[BOOT, &dynamic, END], Outcome::Pass),
        DmaPath::IommuStatic,
    );
    assert!(e.unwrap_err().contains("not static"));
}

#[test]
fn the_data_of_every_run_is_checked_against_the_image() {
    let content = crate::oracle::pattern_bytes(DISK_SEED, 0, 1 << 20);
    let e = DiskExpect::of(&content, &[65536, 65536, 8192], &[10]);
    assert_eq!(e.prefix.len(), 2);
    assert_eq!(e.whole, crc32c(&content));
    // The random reads' checksum, computed as the guest does.
    let mut c = Crc32c::new();
    for i in 0..10 {
        let o = random_offset(i, 4096, 1 << 20).unwrap() as usize;
        c.update(&content[o..o + 4096]);
    }
    assert_eq!(e.random[&10], c.finish());
    let good = Sample {
        read_bytes: 65536,
        read_crc32c: u64::from(e.prefix[&65536]),
        random_reads: 10,
        random_crc32c: u64::from(e.random[&10]),
        write_bytes: 65536,
        write_crc32c: Some(u64::from(e.prefix[&65536])),
        ..Sample::default()
    };
    assert!(e.check(&good, 65536, 10).is_empty());
    let bad = Sample {
        read_crc32c: 1,
        random_crc32c: 2,
        write_crc32c: None,
        ..good.clone()
    };
    let f = e.check(&bad, 65536, 10);
    assert_eq!(f.len(), 3, "{f:?}");
    assert!(f[0].contains("read_crc32c 0x1 is not the image's"));
    assert!(f[1].contains("random_crc32c 0x2"));
    let short = Sample {
        read_bytes: 512,
        random_reads: 9,
        ..good
    };
    let f = e.check(&short, 65536, 10);
    assert!(f[0].contains("read 512 bytes, asked 65536") && f[1].contains("9 random reads"));
}

#[test]
fn the_watcher_stamps_complete_report_lines_by_number() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.log");
    let mut w = LineWatcher::default();
    let mut stamps = BTreeMap::new();
    // Every look at the clock is 1 ms later.
    let mut t = 0;
    let mut now = || {
        t += 1000;
        Duration::from_micros(t)
    };
    w.poll(&path, &mut now, &mut stamps); // 1..
    assert!(stamps.is_empty(), "no file yet");
    let mut f = File::create(&path).unwrap();
    f.write_all(b"SeaBIOS\n@sg {\"event\":\"boot\"}\n@sg {\"ev")
        .unwrap();
    w.poll(&path, &mut now, &mut stamps); // 2..3
    f.write_all(b"ent\":\"end\"}\nnoise @sg\n").unwrap();
    w.poll(&path, &mut now, &mut stamps); // 4..5
    w.poll(&path, &mut now, &mut stamps); // 6..7
    assert_eq!(
        stamps,
        stamps_us(&[(2, 1000, 3000), (3, 2000, 5000)]),
        "a line is stamped between the look before and the look that saw it end"
    );
}

/// A report of two platforms: q35 with direct, bounce (slower, copies) and an n/a iommu cell,
/// pseries with direct only and ddw n/a.
fn synthetic() -> BenchReport {
    let m = |section, key: &str, unit, samples: &[f64]| Metric {
        section,
        key: key.into(),
        label: key.replace('_', " "),
        unit,
        stat: Stat::of(samples).unwrap(),
        samples: samples.to_vec(),
        ratio: None,
    };
    let measured = |platform: &str, path: &str, read: f64, copied: f64, boot: f64| CellReport {
        platform: platform.into(),
        machine: platform.split('-').next().unwrap().into(),
        accel: "tcg".into(),
        path: path.into(),
        status: CellStatus::Ok,
        reason: None,
        command: Some("qemu-system-x86_64 ...".into()),
        metrics: vec![
            m("boot", "boot_ms", "ms", &[boot, boot]),
            m("boot", "noop_ms", "ms", &[100.0, 100.0]),
            m("boot", "boot_ratio", "x", &[boot / 100.0, boot / 100.0]),
            m(
                "throughput",
                "read_64k_qdfull",
                "MB/s",
                &[read, read * 1.2, read * 0.9],
            ),
            m(
                "throughput",
                "write_64k_qdfull",
                "MB/s",
                &[read, read, read],
            ),
            m("throughput", "randread_4k_qd1", "IOPS", &[5000.0]),
            m("cost", "copied_per_mib_64k_qdfull", "B/MiB", &[copied]),
            m("cost", "zeroed_per_mib_64k_qdfull", "B/MiB", &[copied]),
            m(
                "cost",
                "notifies_per_mib_64k_qdfull",
                "1/MiB",
                &[0.25 + copied / 1e6],
            ),
            m("memory", "heap_high_water_64k_qdfull", "B", &[16e6]),
            m("clock", "clock_ratio", "x", &[0.998, 1.001]),
        ],
        boot_phases_ms: vec![
            ("boot".into(), 5.0),
            ("secret".into(), 25.0),
            ("virtio".into(), 10.0),
            ("end".into(), 0.1),
        ],
        failures: Vec::new(),
        clock_source: Some("pit 2600000000 Hz".into()),
    };
    let na = |platform: &str, path: &str, why: &str| CellReport {
        platform: platform.into(),
        machine: platform.split('-').next().unwrap().into(),
        accel: "tcg".into(),
        path: path.into(),
        status: CellStatus::NotAvailable,
        reason: Some(why.into()),
        // Probed (the guest said why), unlike a path the machine cannot have.
        command: Some("qemu-system-ppc64 ...".into()),
        metrics: Vec::new(),
        boot_phases_ms: Vec::new(),
        failures: Vec::new(),
        clock_source: None,
    };
    let mut cells = vec![
        measured("q35", "direct", 250.0, 0.0, 110.0),
        measured("q35", "bounce", 125.0, 1_048_576.0, 150.0),
        na("q35", "iommu", "the guest does not know sg.dma, ok"),
        measured("pseries-vof", "direct", 300.0, 0.0, 115.0),
        na("pseries-vof", "ddw", "the guest does not know sg.dma"),
        CellReport {
            command: None,
            ..na(
                "q35",
                "ddw",
                "DDW (dynamic DMA windows) is a pseries PHB feature",
            )
        },
    ];
    fill_ratios(&mut cells);
    let targets = check_targets(&cells);
    BenchReport {
        meta: Meta {
            date: "2025-06-01 12:00 UTC".into(),
            host: "2 CPUs (Test CPU), a virtual machine, Linux 6.1".into(),
            qemu: "QEMU 10.0.2".into(),
            profile: "quick".into(),
            repeats: 3,
            rounds: 3,
            wall_s: 42.0,
            budget_s: 100.0,
            load: (1.5, 2.25),
            sizes: BenchOptions::quick_profile("x".into()).sizes,
            notes: Vec::new(),
        },
        images: vec![Image {
            name: "secure-guest-x86_64".into(),
            bytes: 238_136,
        }],
        cells,
        targets,
    }
}

#[test]
fn ratios_and_targets() {
    let r = synthetic();
    let bounce = &r.cells[1];
    let read = bounce.metric("read_64k_qdfull").unwrap();
    assert_eq!(read.ratio, Some(0.5));
    assert_eq!(
        r.cells[0].metric("read_64k_qdfull").unwrap().ratio,
        Some(1.0)
    );
    assert_eq!(
        bounce.metric("boot_ratio").unwrap().ratio,
        None,
        "boot has no ratio"
    );
    let t = |target: &str, cell: &str| {
        r.targets
            .iter()
            .find(|t| t.target.starts_with(target) && format!("{}/{}", t.platform, t.path) == cell)
            .unwrap_or_else(|| panic!("{target} {cell}: {:#?}", r.targets))
    };
    assert_eq!(t("boot", "q35/direct").met, Some(true));
    let boot = t("boot", "q35/bounce");
    assert_eq!((boot.met, boot.value), (Some(false), Some(1.5)));
    assert!(
        boot.note.contains("+50.0 ms over the no-op") && boot.note.contains("`secret` 25.0 ms"),
        "{}",
        boot.note
    );
    let b = t("bounce", "q35/bounce");
    assert_eq!((b.met, b.value), (Some(false), Some(0.5)));
    assert!(
        b.note.contains("+2.00 MiB bytes copied or zeroed")
            && b.note.contains("dominant cost: copies")
            && b.note.contains("+4194 us measured"),
        "{}",
        b.note
    );
    let d = t("ddw", "pseries-vof/ddw");
    assert_eq!(d.met, None);
    assert!(d.note.contains("does not know sg.dma"));
    // n/a cells have no boot target, and a path the machine cannot have no target at all.
    assert!(!r.targets.iter().any(|t| t.path == "iommu"));
    assert!(
        !r.targets
            .iter()
            .any(|t| t.platform == "q35" && t.path == "ddw")
    );
}

#[test]
fn markdown_csv_and_svg() {
    let r = synthetic();
    let md = markdown(&r);
    assert!(
        md.starts_with(
            "secure-guest bench, 2025-06-01 12:00 UTC: 2 CPUs (Test CPU), a virtual machine, \
         Linux 6.1 (load average 1.5 at the start, 2.2 at the end); QEMU 10.0.2, TCG; quick \
         profile, 3 rounds, 42 s."
        ),
        "{md}"
    );
    assert!(
        md.contains("| machine | path | read 64k qdfull | write 64k qdfull | rand 4K QD1 IOPS |"),
        "{md}"
    );
    assert!(md.contains("| q35 | bounce | 125† (0.50×) |"), "{md}");
    assert!(md.contains("| q35 | iommu | n/a [1] |"), "{md}");
    assert!(
        md.contains("[1] the guest does not know sg.dma, ok (q35/iommu)"),
        "{md}"
    );
    assert!(md.contains("| pseries-vof | ddw | n/a [2] |"), "{md}");
    assert!(
        md.contains("| 1.50× |") && md.contains("**missed**"),
        "{md}"
    );
    assert!(
        md.contains("| q35 | direct | 110 | 100 | 1.10× | 0 | 0 | – | – | 0.25 |"),
        "{md}"
    );
    assert!(md.contains("`secure-guest-x86_64` 232.6 KiB"), "{md}");
    assert!(!md.contains("NaN"));
    // Every table row has as many cells as its header.
    for table in md.split("\n\n").filter(|t| t.starts_with('|')) {
        let widths: Vec<usize> = table.lines().map(|l| l.matches('|').count()).collect();
        assert!(widths.iter().all(|&w| w == widths[0]), "{table}");
    }

    let csv = csv(&r);
    let lines: Vec<&str> = csv.lines().collect();
    let columns = lines[0].split(',').count();
    assert_eq!(columns, 17);
    let metrics: usize = r.cells.iter().map(|c| c.metrics.len().max(1)).sum();
    assert_eq!(lines.len(), 1 + metrics);
    assert!(
        csv.contains("q35,q35,tcg,iommu,n/a,,,,,,,,,,,,\"the guest does not know sg.dma, ok\"")
    );
    assert!(csv.contains("q35,q35,tcg,bounce,ok,throughput,read_64k_qdfull,MB/s,3,125,112.5,150,0.3000,true,0.5000,125 150 112.5,"));

    let svg = svg(&r);
    assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<svg").count(), 1);
    // Two panels × (three measured bars) with a whisker each; n/a for the other paths.
    assert_eq!(svg.matches("<rect x=").count(), 6 + 2 * 3, "legend + bars");
    assert_eq!(
        svg.matches("stroke=\"black\"/>").count(),
        2 * 3 + 2,
        "whiskers + axes"
    );
    assert_eq!(svg.matches(">n/a</text>").count(), 2 * (2 * 6 - 3));
    assert!(
        svg.contains("<title>q35 bounce: 125 MB/s (min 112, max 150)</title>"),
        "{svg}"
    );
    assert!(!svg.contains("NaN") && !svg.contains("inf"));
}

#[test]
fn dates() {
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    assert_eq!(civil_from_days(-1), (1969, 12, 31));
}
