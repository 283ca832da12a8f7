//! The device step over fake devices, and its records checked by the harness's own parser.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::cmdline;
use crate::dma::Direct;
use crate::virtio::blk::tests::{BlkConfig, BlkModel};
use crate::virtio::console::tests::ConsoleModel;
use crate::virtio::fakedev::{Bus, config_bytes};
use crate::virtio::features::{blk as bf, net as nf};
use crate::virtio::net::tests::NetModel;
use crate::virtio::rng::tests::RngModel;

fn disk(size: usize, seed: u64) -> Vec<u8> {
    let mut d = alloc::vec![0u8; size];
    crate::pattern::fill(seed, 0, &mut d);
    d
}

fn blk_bus(size: usize, seed: u64, offered: u64) -> Bus {
    let c = BlkConfig::for_disk(size);
    Bus::new(
        DeviceType::BLOCK,
        offered | bf::FLUSH | bf::BLK_SIZE | common::RING_PACKED | common::ACCESS_PLATFORM,
        &[256],
        c.bytes(),
        BlkModel::new(disk(size, seed)),
    )
}

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];

/// One of each device, plus a balloon (type 5) and an empty mmio slot (type 0).
fn machine() -> Vec<(String, Bus)> {
    vec![
        ("/virtio_mmio@1".into(), blk_bus(64 << 10, 1, 0)),
        ("/virtio_mmio@2".into(), blk_bus(128 << 10, 2, 0)),
        (
            "/virtio_mmio@3".into(),
            Bus::new(
                DeviceType::NET,
                nf::MAC | nf::CSUM | nf::MRG_RXBUF | common::RING_PACKED,
                &[256, 256],
                config_bytes(12, &[(0, &MAC)]),
                NetModel::new(),
            ),
        ),
        (
            "/virtio_mmio@4".into(),
            Bus::new(
                DeviceType::CONSOLE,
                0,
                &[64, 64],
                config_bytes(12, &[]),
                ConsoleModel::new(b"ok \"quoted\"\n"),
            ),
        ),
        (
            "/virtio_mmio@5".into(),
            Bus::new(
                DeviceType::RNG,
                0,
                &[16],
                Vec::new(),
                RngModel {
                    per_request: 16,
                    budget: 1 << 20,
                    given: 0,
                    empty_when_spent: false,
                },
            ),
        ),
        (
            "/virtio_mmio@6".into(),
            Bus::new(
                DeviceType::BALLOON,
                0,
                &[],
                Vec::new(),
                RngModel {
                    per_request: 0,
                    budget: 0,
                    given: 0,
                    empty_when_spent: false,
                },
            ),
        ),
        (
            "/virtio_mmio@7".into(),
            Bus::new(
                DeviceType::NONE,
                0,
                &[],
                Vec::new(),
                RngModel {
                    per_request: 0,
                    budget: 0,
                    given: 0,
                    empty_when_spent: false,
                },
            ),
        ),
    ]
}

/// Runs every device of `machine` and returns the reports and the console text of the records.
fn run_all(
    machine: &[(String, Bus)],
    cmdline: &str,
) -> (Vec<DeviceReport>, String, Option<String>) {
    let dma = Direct::new();
    run_all_with(machine, cmdline, DmaPaths::direct(&dma))
}

/// [`run_all`] with the DMA paths of a (secure) run.
fn run_all_with(
    machine: &[(String, Bus)],
    cmdline: &str,
    paths: DmaPaths<'_>,
) -> (Vec<DeviceReport>, String, Option<String>) {
    run_all_behind(machine, cmdline, paths, None)
}

/// [`run_all_with`], every device behind IOMMU domain `domain`.
fn run_all_behind(
    machine: &[(String, Bus)],
    cmdline: &str,
    paths: DmaPaths<'_>,
    domain: Option<usize>,
) -> (Vec<DeviceReport>, String, Option<String>) {
    let (opts, diags) = cmdline::parse(cmdline.as_bytes());
    assert!(diags.is_empty(), "{diags:?}");
    let mut reports = Vec::new();
    let mut console = String::new();
    let unmet;
    {
        // The clock of the first device steps every device: each test device only runs when
        // its own driver looks at the time, which is the one being driven.
        let clocks: Vec<_> = machine.iter().map(|(_, b)| b.clock()).collect();
        for ((loc, bus), clock) in machine.iter().zip(&clocks) {
            let mut runner = Runner::new(paths, clock, &opts);
            runner.blk_seen = reports
                .iter()
                .filter(|r: &&DeviceReport| r.device == "blk")
                .count() as u32;
            let mut t = bus.transport();
            if let Some(r) = runner.run_behind(loc, &mut t, domain) {
                let rec = Record::new(&mut console, "virtio").u64("t_us", 1);
                assert!(virtio_record(rec, &r).end());
                reports.push(r);
            }
        }
        let mut runner = Runner::new(paths, &clocks[0], &opts);
        runner.blk_seen = reports.iter().filter(|r| r.device == "blk").count() as u32;
        unmet = runner.unmet();
    }
    (reports, console, unmet)
}

fn parsed(console: &str) -> harness::Report {
    let report = harness::Report::parse(console.as_bytes());
    let errors: Vec<_> = report
        .errors
        .iter()
        .filter(|e| !e.message.contains("not `boot`"))
        .collect();
    assert!(errors.is_empty(), "{errors:?}\n{console}");
    report
}

#[test]
fn every_device_gets_a_record_the_harness_accepts() {
    let m = machine();
    let (reports, console, unmet) = run_all(&m, "sg.blk.write=4096:8192:0x77 sg.blk.disk=1");
    assert_eq!(unmet, None);
    let devices: Vec<&str> = reports.iter().map(|r| r.device.as_str()).collect();
    assert_eq!(
        devices,
        ["blk", "blk", "net", "console", "rng", "type-5"],
        "type 0 has no record"
    );
    for r in &reports[..5] {
        assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    }
    assert_eq!(reports[5].outcome, Outcome::Skipped);

    let report = parsed(&console);
    use harness::report::{Virtio, VirtioBlk, VirtioConsole, VirtioNet, VirtioRng};
    let recs: Vec<_> = report.events("virtio").collect();
    assert_eq!(recs.len(), 6);
    let v: Virtio = recs[0].view().unwrap();
    assert_eq!(v.device, "blk");
    assert_eq!(v.device_id, 2);
    assert_eq!(v.transport, "virtio-mmio-v2");
    assert_eq!(v.location, "/virtio_mmio@1");
    assert_eq!(v.dma, "direct");
    assert_eq!(recs[0].fields["dma_reason"], "not secure");
    assert!(v.features_offered_names.contains(&"VERSION_1".to_string()));
    assert!(
        v.features_offered_names
            .contains(&"RING_PACKED".to_string())
    );
    assert!(
        v.features_offered_names
            .contains(&"ACCESS_PLATFORM".to_string())
    );
    assert!(
        v.features_accepted_names
            .contains(&"BLK_F_FLUSH".to_string())
    );
    assert!(v.access_platform.offered && v.access_platform.accepted);
    assert_eq!(v.queues.len(), 1);
    assert_eq!(v.queues[0].ring, harness::report::RingKind::Packed);
    assert_eq!(v.error, None);

    // Disk 0 is read only; disk 1 gets the write.
    let b0: VirtioBlk = recs[0].view().unwrap();
    assert_eq!(b0.capacity, 64 << 10);
    assert_eq!(b0.block_size, 512);
    assert_eq!(b0.serial.as_deref(), Some("sg-disk-0"));
    assert_eq!(b0.read_bytes, 64 << 10);
    assert_eq!(b0.read_crc32c.0, u64::from(crc32c(&disk(64 << 10, 1))));
    assert_eq!(b0.write, None);
    assert!(!b0.flushed);
    m[0].1
        .model(|b: &mut BlkModel| assert!(b.writes.is_empty()));
    let b1: VirtioBlk = recs[1].view().unwrap();
    let w = b1.write.expect("the write of disk 1");
    assert_eq!((w.offset, w.len, w.seed.0), (4096, 8192, 0x77));
    let mut pat = alloc::vec![0u8; 8192];
    crate::pattern::fill(0x77, 4096, &mut pat);
    assert_eq!(w.crc32c.0, u64::from(crc32c(&pat)));
    assert!(b1.flushed);
    m[1].1
        .model(|b: &mut BlkModel| assert_eq!(&b.disk[4096..12288], &pat[..]));

    let v: Virtio = recs[2].view().unwrap();
    assert!(
        v.features_offered_names
            .contains(&"NET_F_MRG_RXBUF".to_string())
    );
    assert_eq!(
        v.features_accepted_names,
        ["NET_F_MAC", "VERSION_1", "RING_PACKED"],
        "no offloads, no mergeable buffers"
    );
    let n: VirtioNet = recs[2].view().unwrap();
    assert_eq!(n.mac, "52:54:00:ab:cd:ef");
    assert_eq!((n.frames_sent, n.frames_verified), (8, 8));

    let c: VirtioConsole = recs[3].view().unwrap();
    assert_eq!(c.written_bytes, 61);
    assert_eq!(c.read_bytes, 12);
    assert_eq!(c.read_text.as_deref(), Some("ok \"quoted\"\n"));
    assert_eq!(c.read_crc32c.0, u64::from(crc32c(b"ok \"quoted\"\n")));

    let x: VirtioRng = recs[4].view().unwrap();
    assert_eq!(x.entropy_bytes, 64);

    let v: Virtio = recs[5].view().unwrap();
    assert_eq!(v.device, "type-5");
    assert_eq!(v.result, harness::report::DeviceResult::Skipped);
    assert!(v.queues.is_empty());
    assert_eq!(v.features_accepted.0, 0);
    assert_eq!(
        m[5].1.core(|c| c.status),
        0,
        "an undriven device is not touched"
    );
    assert_eq!(m[5].1.core(|c| c.resets), 0);
}

#[test]
fn errors_are_records_with_an_error_string() {
    let mut m = machine();
    m.truncate(1);
    m[0].1.model(|b: &mut BlkModel| b.ioerr_sector = Some(3));
    let (reports, console, _) = run_all(&m, "");
    assert!(reports[0].is_error());
    let report = parsed(&console);
    let v: harness::report::Virtio = report.events("virtio").next().unwrap().view().unwrap();
    assert_eq!(v.result, harness::report::DeviceResult::Error);
    let e = v.error.unwrap();
    assert!(e.contains("VIRTIO_BLK_S_IOERR"), "{e}");
}

#[test]
fn a_write_for_a_disk_that_does_not_exist_is_reported_and_nothing_is_written() {
    let m = machine();
    let (reports, _, unmet) = run_all(&m, "sg.blk.write=0:512:1 sg.blk.disk=2");
    assert!(reports.iter().all(|r| !r.is_error()));
    let e = unmet.expect("unmet write");
    assert!(e.contains("names blk device 2"), "{e}");
    assert!(e.contains("2 blk device(s) were found"), "{e}");
    for d in &m[..2] {
        d.1.model(|b: &mut BlkModel| assert!(b.writes.is_empty()));
    }
}

#[test]
fn options_reach_the_drivers() {
    let m = machine();
    let (reports, _, _) = run_all(
        &m,
        "sg.virtio.packed=off sg.virtio.indirect=off sg.virtio.event_idx=off sg.net.frames=3 \
         sg.rng.bytes=20 sg.blk.read=1000 sg.console.read=2",
    );
    for r in &reports[..5] {
        assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
        assert_eq!(r.features_accepted & common::RING_PACKED, 0);
        for q in &r.queues {
            assert_eq!(q.ring, crate::virtio::RingFormat::Split);
            assert!(!q.indirect && !q.event_idx);
        }
    }
    let Specific::Blk(b) = &reports[0].specific else {
        panic!()
    };
    assert_eq!(b.read_bytes, 1000);
    let Specific::Net(n) = &reports[2].specific else {
        panic!()
    };
    assert_eq!(n.frames_sent, 3);
    let Specific::Console(c) = &reports[3].specific else {
        panic!()
    };
    assert_eq!(c.read, b"ok");
    let Specific::Rng(x) = &reports[4].specific else {
        panic!()
    };
    assert_eq!(x.entropy_bytes, 20);
}

#[test]
fn report_names_of_feature_bits() {
    assert_eq!(report_feature_name("VIRTIO_F_VERSION_1"), "VERSION_1");
    assert_eq!(report_feature_name("VIRTIO_BLK_F_FLUSH"), "BLK_F_FLUSH");
    assert_eq!(report_feature_name("bit3"), "bit3");
}

#[test]
fn tick_clock() {
    fn ticks() -> u64 {
        3_000_000
    }
    assert_eq!(TickClock::new(ticks, Some(1_000_000)).now_us(), 3_000_000);
    assert_eq!(TickClock::new(ticks, Some(3_000_000_000)).now_us(), 1000);
    assert_eq!(TickClock::new(ticks, None).now_us(), 0);
}

// ---------------------------------------------------------------------------------------------
// A secure guest: every device through the shared pool, or refused.

use crate::devices::secure::tests::Ram;
use crate::devices::secure::{release_probe, secure_paths};
use crate::dma::Dma;
use crate::platform::decide::LegacyPolicy;
use crate::platform::{Emulated, PAGE_4K, secret};
use crate::virtio::transport::DeviceStatus;

const REFUSED_REASON: &str = "secure, no ACCESS_PLATFORM: refused (sg.legacy_devices=refuse)";

/// The record of every device as JSON (the harness's typed views are checked separately).
fn records(console: &str) -> Vec<serde_json::Value> {
    console
        .lines()
        .map(|l| serde_json::from_str(l.strip_prefix("@sg ").unwrap()).unwrap())
        .collect()
}

/// Runs `machine` as a secure guest over a pool of `pool_bytes` in host memory. Checks what
/// must hold whatever the devices did: the direct path was never used, every mapping and
/// region went back to the pool, and the pool holds nothing but zeros.
fn run_secure(
    machine: &[(String, Bus)],
    cmdline: &str,
    pool_bytes: usize,
) -> (Vec<DeviceReport>, String, crate::dma::bounce::BounceStats) {
    let (opts, _) = cmdline::parse(cmdline.as_bytes());
    let ram = Ram::new(pool_bytes);
    let platform = Emulated::new(PAGE_4K);
    let bounce = ram.bounce(&platform);
    let direct = Direct::new();
    let paths = secure_paths(&direct, &bounce, opts.legacy_devices);
    let (reports, console, _) = run_all_with(machine, cmdline, paths);
    let d = direct.stats();
    assert_eq!(
        (d.maps, d.shared_allocs),
        (0, 0),
        "a secure guest never uses the direct path"
    );
    let s = bounce.bounce_stats();
    assert_eq!(s.dma.maps, s.dma.unmaps, "{s:?}");
    assert_eq!(s.dma.shared_allocs, s.dma.shared_frees, "{s:?}");
    assert_eq!((s.pool.live_bytes, s.pool.in_use_slots), (0, 0), "{s:?}");
    let dump = ram.dump();
    assert_eq!(
        secret::marks(&dump).count(),
        0,
        "no secret mark in shared memory"
    );
    assert!(
        dump.iter().all(|&b| b == 0),
        "the pool is all zeros after the devices"
    );
    (reports, console, s)
}

#[test]
fn a_secure_guest_refuses_devices_without_access_platform() {
    let m = machine();
    let (reports, console, s) = run_secure(&m, "sg.secure=emulate", 4 << 20);
    let recs = records(&console);
    let devices: Vec<&str> = reports.iter().map(|r| r.device.as_str()).collect();
    assert_eq!(devices, ["blk", "blk", "net", "console", "rng", "type-5"]);
    // The disks offer ACCESS_PLATFORM: bounced, and their data is right.
    for (i, size) in [(0, 64 << 10), (1, 128 << 10)] {
        assert_eq!(reports[i].outcome, Outcome::Ok, "{:?}", reports[i]);
        assert_eq!(recs[i]["dma"], "bounce");
        assert_eq!(recs[i]["dma_reason"], "secure, ACCESS_PLATFORM negotiated");
        let Specific::Blk(b) = &reports[i].specific else {
            panic!()
        };
        assert_eq!(b.read_crc32c, crc32c(&disk(size, i as u64 + 1)));
    }
    // The others do not: refused, FAILED, never given memory, not an error.
    for i in 2..5 {
        let r = &reports[i];
        assert!(r.is_refused() && !r.is_error(), "{r:?}");
        assert!(r.queues.is_empty());
        assert_eq!(r.counters, Counters::default());
        assert_eq!(recs[i]["result"], "refused");
        assert_eq!(recs[i]["dma"], "none");
        assert_eq!(recs[i]["dma_reason"], REFUSED_REASON);
        assert_eq!(recs[i]["queues"], serde_json::json!([]));
        assert!(recs[i].get("error").is_none());
        assert_eq!(recs[i]["access_platform"]["offered"], false);
        let (status, resets, notified) =
            m[i].1.core(|c| (c.status, c.resets, c.notifications.len()));
        assert_ne!(status & DeviceStatus::FAILED.bits(), 0, "{status:#x}");
        assert_eq!(status & DeviceStatus::DRIVER_OK.bits(), 0, "{status:#x}");
        assert_eq!(
            (resets, notified),
            (1, 0),
            "reset once at init, never notified"
        );
    }
    // The undriven device is left alone, and says which path it would have had.
    assert_eq!(reports[5].outcome, Outcome::Skipped);
    assert_eq!(recs[5]["dma"], "none");
    assert_eq!(m[5].1.core(|c| c.status), 0);
    // Rings, headers and data all went through the pool.
    assert!(s.dma.shared_allocs >= 2 && s.dma.maps >= 2, "{s:?}");
    assert!(s.dma.bounced_from_device >= (192 << 10), "{s:?}");
    // The harness reads every record.
    parsed(&console);
}

#[test]
fn legacy_devices_bounce_and_their_data_is_right() {
    let m = machine();
    let (reports, console, s) = run_secure(
        &m,
        "sg.secure=emulate sg.legacy_devices=bounce sg.blk.write=4096:8192:0x77 sg.blk.disk=1",
        4 << 20,
    );
    let recs = records(&console);
    for (i, r) in reports[..5].iter().enumerate() {
        assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
        assert_eq!(recs[i]["dma"], "bounce");
    }
    assert_eq!(recs[0]["dma_reason"], "secure, ACCESS_PLATFORM negotiated");
    for rec in &recs[2..5] {
        assert_eq!(
            rec["dma_reason"],
            "secure, no ACCESS_PLATFORM: sg.legacy_devices=bounce"
        );
    }
    // The same data as on the direct path.
    let mut pat = alloc::vec![0u8; 8192];
    crate::pattern::fill(0x77, 4096, &mut pat);
    m[1].1
        .model(|b: &mut BlkModel| assert_eq!(&b.disk[4096..12288], &pat[..]));
    let Specific::Blk(b) = &reports[1].specific else {
        panic!()
    };
    assert_eq!(b.write.unwrap().1, crc32c(&pat));
    assert!(b.flushed);
    let Specific::Net(n) = &reports[2].specific else {
        panic!()
    };
    assert_eq!(n.frames_verified, 8);
    let Specific::Console(c) = &reports[3].specific else {
        panic!()
    };
    assert_eq!(c.read, b"ok \"quoted\"\n");
    let Specific::Rng(x) = &reports[4].specific else {
        panic!()
    };
    assert_eq!(x.entropy_bytes, 64);
    assert!(s.dma.bounced_to_device >= 8192 + 8 * 89 + 61, "{s:?}");
    parsed(&console);
}

/// A pool far smaller than what the disk test keeps in flight, and requests larger than one
/// mapping: the requests are split and clamped, exhaustion is waited out, nothing fails.
#[test]
fn a_small_pool_is_back_pressure_not_failure() {
    let m = vec![
        ("/virtio_mmio@1".to_string(), blk_bus(1 << 20, 5, 0)),
        ("/virtio_mmio@2".to_string(), blk_bus(512 << 10, 6, 0)),
    ];
    let (reports, _, s) = run_secure(
        &m,
        "sg.secure=emulate sg.blk.req=4M sg.blk.write=0:512K:0x99 sg.blk.disk=1",
        128 << 10,
    );
    for r in &reports {
        assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    }
    let Specific::Blk(b) = &reports[0].specific else {
        panic!()
    };
    assert_eq!(b.read_crc32c, crc32c(&disk(1 << 20, 5)));
    // 128 KiB of pool: at most 32 KiB per request.
    assert!(
        reports[0].counters.requests > 32,
        "{:?}",
        reports[0].counters
    );
    let mut pat = alloc::vec![0u8; 512 << 10];
    crate::pattern::fill(0x99, 0, &mut pat);
    m[1].1
        .model(|b: &mut BlkModel| assert_eq!(&b.disk[..], &pat[..]));
    let Specific::Blk(b) = &reports[1].specific else {
        panic!()
    };
    assert_eq!(
        b.write.unwrap().1,
        crc32c(&pat),
        "every block filled once, in order"
    );
    assert!(
        s.pool.exhausted > 0,
        "the pool ran full and was waited out: {s:?}"
    );
    assert!(s.pool.high_water_bytes <= 128 << 10);
}

/// On a secure guest every driver buffer starts as secret marks, so that whatever part of it
/// the device is not meant to see is recognisable; elsewhere it starts as zeros.
#[test]
fn driver_buffers_are_secret_marked_only_on_a_secure_guest() {
    use crate::virtio::driver::{BUFFER_MARKS_FIRST, Resources};
    let ram = Ram::new(64 << 10);
    let platform = Emulated::new(PAGE_4K);
    let bounce = ram.bounce(&platform);
    let direct = Direct::new();
    let secure = secure_paths(&direct, &bounce, LegacyPolicy::Refuse);
    let mut res = Resources::new(&secure);
    let b = res.alloc_buf(100).unwrap();
    let bytes = res.bufs[b].bytes();
    let marks: Vec<_> = secret::marks(bytes).collect();
    assert_eq!(marks.len(), 6);
    assert!(marks.iter().all(|m| m.counter >= BUFFER_MARKS_FIRST));
    assert!(
        marks.windows(2).all(|w| w[1].counter == w[0].counter + 1),
        "consecutive counters"
    );
    assert_eq!(&bytes[96..], b"####");
    let plain = DmaPaths::direct(&direct);
    let mut res = Resources::new(&plain);
    let b = res.alloc_buf(100).unwrap();
    assert!(res.bufs[b].bytes().iter().all(|&x| x == 0));
}

/// The path table, with the reasons of docs/report.md.
#[test]
fn each_device_path_and_its_reason() {
    let ram = Ram::new(64 << 10);
    let platform = Emulated::new(PAGE_4K);
    let bounce = ram.bounce(&platform);
    let direct = Direct::new();
    let plain = DmaPaths::direct(&direct);
    for ap in [false, true] {
        let p = plain.choose(ap);
        assert_eq!((p.name(), p.reason), ("direct", "not secure"));
        assert_eq!((p.max_mapping, p.max_request), (usize::MAX, usize::MAX));
    }
    let refuse = secure_paths(&direct, &bounce, LegacyPolicy::Refuse);
    let p = refuse.choose(true);
    assert_eq!(
        (p.name(), p.reason),
        ("bounce", "secure, ACCESS_PLATFORM negotiated")
    );
    assert_eq!(p.max_mapping, bounce.max_mapping_size());
    assert_eq!(p.max_request, (64 << 10) / 4);
    let p = refuse.choose(false);
    assert_eq!((p.name(), p.reason), ("none", REFUSED_REASON));
    assert!(p.dma.is_none());
    let bounce_legacy = secure_paths(&direct, &bounce, LegacyPolicy::Bounce);
    let p = bounce_legacy.choose(false);
    assert_eq!(
        (p.name(), p.reason),
        (
            "bounce",
            "secure, no ACCESS_PLATFORM: sg.legacy_devices=bounce"
        )
    );
    // And the probe the boot flow runs at the end goes through the same pool.
    assert_eq!(
        release_probe(&bounce),
        Ok(crate::devices::secure::PROBE_BYTES)
    );
}

/// A device that fails mid-test (an I/O error with requests in flight, a completion that names
/// no request) is reset and everything it was given goes back to the pool, zeroed.
#[test]
fn failing_devices_give_everything_back_to_the_pool() {
    let ioerr = blk_bus(1 << 20, 7, 0);
    ioerr.model(|b: &mut BlkModel| b.ioerr_sector = Some(700));
    let liar = blk_bus(1 << 20, 8, 0);
    liar.model(|b: &mut BlkModel| b.bad_used_id = Some(200));
    let m = vec![
        ("/virtio_mmio@1".to_string(), ioerr),
        ("/virtio_mmio@2".to_string(), liar),
    ];
    // `run_secure` checks that nothing is left mapped and the pool is all zeros.
    let (reports, _, s) = run_secure(&m, "sg.secure=emulate sg.blk.qd=16", 1 << 20);
    for r in &reports {
        assert!(r.is_error(), "{r:?}");
        assert_eq!(r.dma.name, "bounce");
    }
    assert!(s.dma.maps > 2, "{s:?}");
}

// ---------------------------------------------------------------------------------------------
// IOMMU paths.

mod iommu {
    use super::*;
    use crate::dma::DmaError;
    use crate::dma::iommu::{
        CallCount, DomainInfo, DomainSetup, IommuBackend, IommuDma, LazyDomain, MAX_CALL_KINDS,
        Perm,
    };
    use crate::platform::decide::DmaChoice;
    use crate::virtio::ringside::{close_window, open_window};
    use std::sync::{Arc, Mutex};

    /// An IOMMU whose mappings the fake devices see (and nothing else).
    struct FakeIommu {
        calls: [CallCount; MAX_CALL_KINDS],
        /// Fail every map with this code.
        fail: Option<i64>,
    }

    impl IommuBackend for FakeIommu {
        fn page_shift(&self) -> u32 {
            12
        }

        fn aperture(&self) -> (u64, u64) {
            (0x4000_0000, 1 << 30)
        }

        fn map(&mut self, iova: u64, phys: u64, pages: u64, _perm: Perm) -> Result<(), DmaError> {
            self.calls[0].add(pages);
            if let Some(code) = self.fail {
                return Err(DmaError::Platform { code });
            }
            open_window(iova, phys as usize, (pages << 12) as usize);
            Ok(())
        }

        fn unmap(&mut self, iova: u64, pages: u64) -> Result<(), DmaError> {
            self.calls[1].add(pages);
            close_window(iova);
            Ok(())
        }

        fn calls(&self) -> [CallCount; MAX_CALL_KINDS] {
            self.calls
        }
    }

    struct Setup {
        runs: Arc<Mutex<u32>>,
        fail: Option<i64>,
    }

    impl<'a> DomainSetup<'a> for Setup {
        fn setup(self: Box<Self>) -> Result<IommuDma<'a>, DmaError> {
            *self.runs.lock().unwrap() += 1;
            let backend = FakeIommu {
                calls: [
                    CallCount::named("MAP"),
                    CallCount::named("UNMAP"),
                    CallCount::default(),
                ],
                fail: self.fail,
            };
            let info = DomainInfo {
                backend: "fake",
                mode: "dynamic",
                mapping: "per-map",
                ..DomainInfo::default()
            };
            IommuDma::dynamic(Box::new(backend), info)
        }
    }

    fn domains(fail: Option<i64>) -> (Vec<LazyDomain<'static>>, Arc<Mutex<u32>>) {
        let runs = Arc::new(Mutex::new(0));
        let setup = Setup {
            runs: runs.clone(),
            fail,
        };
        (
            vec![LazyDomain::new("/pci@0".into(), Box::new(setup))],
            runs,
        )
    }

    fn disks() -> Vec<(String, Bus)> {
        vec![
            ("00:01.0".into(), blk_bus(256 << 10, 11, 0)),
            ("00:02.0".into(), blk_bus(128 << 10, 12, 0)),
        ]
    }

    /// Both disks read through a dynamic IOMMU domain: the data arrives (the fake device only
    /// reaches what the IOMMU mapped), and each record counts its own share.
    #[test]
    fn devices_behind_an_iommu_move_their_data_through_it() {
        let m = disks();
        let direct = Direct::new();
        let (doms, runs) = domains(None);
        let paths = DmaPaths::direct(&direct).with(DmaChoice::Auto, &doms);
        let (reports, console, _) = run_all_behind(&m, "sg.blk.req=16K", paths, Some(0));
        assert_eq!(*runs.lock().unwrap(), 1, "one setup for both devices");
        for (r, (size, seed)) in reports.iter().zip([(256 << 10, 11), (128 << 10, 12)]) {
            assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
            assert_eq!(
                (r.dma.name, r.dma.reason),
                ("iommu", "ACCESS_PLATFORM negotiated behind an IOMMU")
            );
            let Specific::Blk(b) = &r.specific else {
                panic!()
            };
            assert_eq!(b.read_crc32c, crc32c(&disk(size, seed)));
            let io = r.dma.iommu.expect("an iommu report");
            let s = io.stats;
            assert!(s.maps > 0 && s.maps == s.unmaps, "{s:?}");
            assert!(s.dma_maps > 0 && s.dma_maps == s.dma_unmaps, "{s:?}");
            assert_eq!(s.calls, s.maps + s.unmaps);
            assert_eq!(s.pages, 0, "everything unmapped after the reset");
            assert!(s.pages_peak > 0);
            assert_eq!((s.kinds[0].name, s.kinds[0].calls), ("MAP", s.maps));
            assert_eq!(io.info.backend, "fake");
        }
        assert_eq!(direct.stats().maps, 0, "nothing went around the IOMMU");
        let d = doms[0].state().unwrap().unwrap();
        let total = d.iommu_stats();
        let share: u64 = reports
            .iter()
            .map(|r| r.dma.iommu.unwrap().stats.calls)
            .sum();
        assert_eq!(
            total.calls, share,
            "the devices' shares add up to the domain's"
        );
        // The records and the `iommu` record parse.
        let mut text = console.clone();
        assert!(iommu_record(Record::new(&mut text, "iommu").u64("t_us", 2), &doms[0]).end());
        let report = parsed(&text);
        let rec = report.events("virtio").next().unwrap();
        let first = reports[0].dma.iommu.unwrap().stats;
        assert_eq!(
            rec.fields["iommu"]["calls_by_kind"]["MAP"]["calls"],
            first.maps
        );
        assert_eq!(rec.fields["iommu"]["dma_maps"], first.dma_maps);
        let last = report.events("iommu").next().unwrap();
        assert_eq!(last.fields["result"], "ok");
        assert_eq!(last.fields["iommu"]["maps"], total.maps);
    }

    /// An impossible `sg.dma` is an error record for the device, and no IOMMU is touched.
    #[test]
    fn impossible_choices_fail_the_device_and_set_nothing_up() {
        let m = disks();
        let direct = Direct::new();
        let (doms, runs) = domains(None);
        for (choice, domain, why) in [
            (
                DmaChoice::Direct,
                Some(0),
                "dma: sg.dma=direct, but ACCESS_PLATFORM",
            ),
            (
                DmaChoice::Bounce,
                Some(0),
                "dma: sg.dma=bounce needs the shared pool",
            ),
            (
                DmaChoice::IommuBounce,
                Some(0),
                "dma: sg.dma=iommu+bounce needs",
            ),
            (
                DmaChoice::Iommu,
                None,
                "dma: sg.dma asks for an IOMMU, but the device is behind none",
            ),
        ] {
            let paths = DmaPaths::direct(&direct).with(choice, &doms);
            let (reports, console, _) = run_all_behind(&m, "", paths, domain);
            for r in &reports {
                match &r.outcome {
                    Outcome::Error(e) => assert!(e.starts_with(why), "{choice:?}: {e}"),
                    o => panic!("{choice:?}: {o:?}"),
                }
                assert_eq!(r.dma.name, "none");
                assert!(r.dma.iommu.is_none());
                assert_eq!(r.counters.requests, 0);
            }
            parsed(&console);
        }
        assert_eq!(*runs.lock().unwrap(), 0, "no device needed the IOMMU");
        assert!(doms[0].state().is_none());
        let mut unused = String::new();
        assert!(iommu_record(Record::new(&mut unused, "iommu"), &doms[0]).end());
        assert!(unused.contains(r#""result":"unused""#), "{unused}");
        // Forced, and possible: direct for a device without ACCESS_PLATFORM behind the IOMMU.
        let legacy = vec![("00:03.0".to_string(), {
            let c = BlkConfig::for_disk(64 << 10);
            Bus::new(
                DeviceType::BLOCK,
                bf::FLUSH,
                &[64],
                c.bytes(),
                BlkModel::new(disk(64 << 10, 3)),
            )
        })];
        let paths = DmaPaths::direct(&direct).with(DmaChoice::Direct, &doms);
        let (reports, _, _) = run_all_behind(&legacy, "", paths, Some(0));
        assert_eq!(
            (reports[0].outcome.clone(), reports[0].dma.name),
            (Outcome::Ok, "direct")
        );
        assert_eq!(reports[0].dma.reason, "sg.dma=direct");
    }

    /// A domain whose setup fails (a hypercall error, a malformed window): every device behind
    /// it gets the error, with the code, and the `iommu` record says so.
    #[test]
    fn a_failed_setup_is_every_device_error() {
        let m = disks();
        let direct = Direct::new();
        let (doms, runs) = domains(Some(-4));
        // The setup itself works; the first mapping fails with the hypercall's code.
        let paths = DmaPaths::direct(&direct).with(DmaChoice::Auto, &doms);
        let (reports, _, _) = run_all_behind(&m, "", paths, Some(0));
        assert_eq!(*runs.lock().unwrap(), 1);
        for r in &reports {
            let Outcome::Error(e) = &r.outcome else {
                panic!("{r:?}")
            };
            assert!(e.contains("platform refused (code -4)"), "{e}");
            assert_eq!(r.dma.name, "iommu");
            assert!(r.dma.iommu.unwrap().stats.failures > 0);
        }
        let failed = vec![LazyDomain::failed(
            "/pci@1".into(),
            DmaError::InvalidRequest("ibm,dma-window has size 0"),
        )];
        let paths = DmaPaths::direct(&direct).with(DmaChoice::Auto, &failed);
        let (reports, _, _) = run_all_behind(&m, "", paths, Some(0));
        for r in &reports {
            assert_eq!(
                r.outcome,
                Outcome::Error("dma: the IOMMU could not be set up: invalid request: ibm,dma-window has size 0".into())
            );
            assert_eq!(r.dma.name, "none");
        }
        let mut text = String::new();
        assert!(iommu_record(Record::new(&mut text, "iommu"), &failed[0]).end());
        assert!(
            text.contains(
                r#""result":"error","error":"invalid request: ibm,dma-window has size 0""#
            ),
            "{text}"
        );
    }
}
