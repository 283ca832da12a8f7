//! The memory-dump oracle against synthetic runs: the oracle tests' model guest, made secure
//! (records of docs/report.md and the host's dumps of its pool and secret region), must pass;
//! each way private memory or payload can reach the pool, and each way the report can be wrong,
//! must fail with a sentence that says what, where and how much.

use serde_json::{Value, json};

use super::*;
use crate::devices::{Ring, Transport};
use crate::oracle::tests::{
    POOL_BASE, POOL_SIZE, SECRET_SIZE, SLOT_SIZE, assert_fails_with, expected, model,
};

fn emulate(t: Transport, iommu: bool, legacy: Option<LegacyDevices>) -> Expected {
    let mut e = expected(t, Ring::Split);
    e.iommu_platform = iommu;
    e.secure = Some(SecureExpect {
        legacy,
        ..SecureExpect::emulate()
    });
    e
}

/// The standard secure cell: pci modern with iommu_platform=on (bounce, ACCESS_PLATFORM).
fn default_e() -> Expected {
    emulate(Transport::PciModern, true, None)
}

/// Everything the harness checks on a secure run.
fn all(m: &crate::oracle::tests::Model, e: &Expected) -> Vec<String> {
    let mut f = oracle::check(e, &m.records(), &m.observed);
    f.extend(check(e, &m.records(), &m.observed, m.held.as_ref()));
    f
}

#[track_caller]
fn passes(m: &crate::oracle::tests::Model, e: &Expected) {
    assert_eq!(all(m, e), Vec::<String>::new());
}

#[test]
fn correct_secure_guests_pass() {
    for t in Transport::ALL {
        for iommu in [false, true] {
            if iommu && t == Transport::PciLegacy {
                continue; // QEMU refuses it
            }
            for legacy in [
                None,
                Some(LegacyDevices::Refuse),
                Some(LegacyDevices::Bounce),
            ] {
                let e = emulate(t, iommu, legacy);
                let m = model(&e, false);
                assert_eq!(all(&m, &e), Vec::<String>::new(), "{t} {iommu} {legacy:?}");
            }
        }
    }
    // What each configuration implies.
    assert_eq!(
        emulate(Transport::MmioV2, true, None).dma_expect(),
        DmaExpect::Bounce(DmaExpect::NEGOTIATED)
    );
    assert_eq!(
        emulate(Transport::MmioV1, true, None).dma_expect(),
        DmaExpect::Refused,
        "mmio v1 cannot offer bit 33"
    );
    assert_eq!(
        emulate(Transport::PciModern, false, Some(LegacyDevices::Bounce)).dma_expect(),
        DmaExpect::Bounce(DmaExpect::LEGACY_BOUNCE)
    );
    assert_eq!(
        emulate(Transport::PciLegacy, false, Some(LegacyDevices::Refuse)).dma_expect(),
        DmaExpect::Refused
    );
    // Behind an IOMMU (pseries TCE): iommu+bounce when secure, iommu otherwise; a device that
    // cannot offer ACCESS_PLATFORM bypasses it.
    let behind = |mut e: Expected| {
        e.iommu = Some(crate::oracle::IommuExpect {
            tce: Some("ddw"),
            no_batch: true,
        });
        e
    };
    let e = behind(default_e());
    assert_eq!(e.dma_expect(), DmaExpect::IommuBounce);
    assert_eq!(e.dma_expect().dma(), "iommu+bounce");
    assert!(
        e.cmdline().ends_with("sg.tce=ddw sg.tce.batch=0"),
        "{}",
        e.cmdline()
    );
    let mut plain = behind(default_e());
    plain.secure = None;
    assert_eq!(plain.dma_expect(), DmaExpect::Iommu);
    assert_eq!(
        plain.dma_expect().reason(),
        "ACCESS_PLATFORM negotiated behind an IOMMU"
    );
    let legacy = behind(emulate(
        Transport::PciLegacy,
        false,
        Some(LegacyDevices::Bounce),
    ));
    assert_eq!(
        legacy.dma_expect(),
        DmaExpect::Bounce(DmaExpect::LEGACY_BOUNCE)
    );
}

#[test]
fn command_lines() {
    let e = default_e();
    assert!(
        e.cmdline().ends_with(" sg.secure=emulate"),
        "{}",
        e.cmdline()
    );
    let s = SecureExpect {
        legacy: Some(LegacyDevices::Bounce),
        leak: true,
        pool_size: Some(1 << 20),
        ..SecureExpect::emulate()
    };
    assert_eq!(
        s.cmdline(),
        "sg.secure=emulate sg.legacy_devices=bounce sg.swiotlb=1048576 sg.debug.leak=1"
    );
    assert_eq!(SecureExpect::on().cmdline(), "sg.secure=on");
    assert!(SecureExpect::on().expects_reject());
    assert_eq!(
        "emulate".parse::<SecureMode>().unwrap(),
        SecureMode::Emulate
    );
    assert_eq!(
        "bounce".parse::<LegacyDevices>().unwrap(),
        LegacyDevices::Bounce
    );
    assert!("off".parse::<SecureMode>().is_err());
}

// (a) Private memory in the pool.

#[test]
fn a_secret_mark_in_the_pool_fails() {
    let e = default_e();
    let mut m = model(&e, false);
    // At an odd offset, as a misaligned copy would leave it.
    m.pool()[0x1233..0x1243].copy_from_slice(&secret::record(42));
    let f = all(&m, &e);
    assert_fails_with(
        &f,
        &[
            "the swiotlb pool 0x1f000000..0x1f400000",
            "1 secret-marked records",
            "offset 0x1233 (guest-physical 0x1f001233), counter 0x2a (a secret region's mark)",
        ],
    );
    // The pool is not zero either.
    assert_fails_with(&f, &["is not zero", "First at offset 0x1233"]);
    assert!(headline(&f).unwrap().contains("secret-marked"), "{f:#?}");
}

#[test]
fn marks_say_where_they_come_from() {
    assert_eq!(mark_origin(0), "a secret region's mark");
    assert_eq!(mark_origin(0x7fff_ffff), "a secret region's mark");
    assert_eq!(mark_origin(0x8000_0000), "a driver buffer's mark");
    assert_eq!(mark_origin(0xc000_0000), "the release probe's mark");
    assert_eq!(mark_origin(u32::MAX), "the release probe's mark");
    assert_eq!(first_nonzero(&[]), None);
    assert_eq!(first_nonzero(&[0; 10000]), None);
    let mut v = vec![0u8; 10000];
    v[9999] = 1;
    assert_eq!(first_nonzero(&v), Some(9999));
    v[4096] = 1;
    assert_eq!(first_nonzero(&v), Some(4096));
    v[1] = 1;
    assert_eq!(first_nonzero(&v), Some(1));
}

#[test]
fn a_partial_secret_in_the_pool_fails() {
    let e = default_e();
    let mut m = model(&e, false);
    let mut forged = secret::record(7);
    forged[15] ^= 0xff;
    m.pool()[0x800..0x810].copy_from_slice(&forged);
    m.pool()[0x2000..0x2009].copy_from_slice(secret::MAGIC);
    let f = all(&m, &e);
    assert!(!f.iter().any(|x| x.contains("secret-marked")), "{f:#?}");
    assert_fails_with(
        &f,
        &[
            "\"SG-SECRET\" magic 2 times outside a valid record",
            "first at offset 0x800",
        ],
    );
}

#[test]
fn secrets_in_other_shared_ranges_fail() {
    let e = default_e();
    let mut m = model(&e, false);
    let mut shared = vec![0u8; 8192];
    shared[100..116].copy_from_slice(&secret::record(5));
    let range = crate::dump::DumpRange::new("shared", 0x100_0000, 8192);
    m.held.as_mut().unwrap().dumps.push(Dump {
        file: range.file_name(),
        range,
        data: shared,
    });
    assert_fails_with(
        &all(&m, &e),
        &["shared memory 0x1000000..0x1002000", "1 secret-marked"],
    );
}

// (b) Payload left in the pool.

#[test]
fn leftover_payload_fails_and_is_named() {
    let e = default_e();
    let p = payloads(&e);
    let disk0 = &p
        .iter()
        .find(|x| x.name.starts_with("disk0.img"))
        .unwrap()
        .bytes;
    let mut m = model(&e, false);
    // A 4 KiB read of disk0 at 0x3000 left in slot 10; a net frame after a 12-byte header in
    // slot 40; the console line in slot 41; the written pattern in slot 50.
    let s = SLOT_SIZE as usize;
    let frame = echo::guest_frame(e.net.as_ref().unwrap().mac, 3);
    let line = oracle::console_line();
    let w = e.write.unwrap();
    let pattern = oracle::pattern_bytes(w.seed, w.offset, 2048);
    let pool = m.pool();
    pool[10 * s..10 * s + 4096].copy_from_slice(&disk0[0x3000..0x4000]);
    pool[40 * s + 12..40 * s + 12 + frame.len()].copy_from_slice(&frame);
    pool[41 * s..41 * s + line.len()].copy_from_slice(&line);
    pool[50 * s..51 * s].copy_from_slice(&pattern);
    let f = all(&m, &e);
    assert_fails_with(
        &f,
        &[
            "is not zero although swiotlb_stats.live_bytes is 0",
            "in 5 of 2048 slots",
            "First at offset 0x5000 (guest-physical 0x1f005000)",
            "0x5000..0x6000, 0x14000..0x15000, 0x19000..0x19800",
        ],
    );
    assert_fails_with(
        &f,
        &[
            "still holds data the devices moved",
            "disk0.img (blk read data): 4096 bytes in 1 run, e.g. its bytes 0x3000..0x4000 at \
             offset 0x5000 (guest-physical 0x1f005000)",
            "net frame seq 3: 89 bytes in 1 run",
            "the console line: 61 bytes",
            "the sg.blk.write pattern (seed 0x5347): 2048 bytes",
        ],
    );
}

#[test]
fn payload_is_found_even_when_allocations_are_live() {
    let e = default_e();
    let mut m = model(&e, false);
    m.record("swiotlb_stats")["live_bytes"] = json!(4096);
    let frame = echo::echo_frame(&echo::guest_frame(e.net.as_ref().unwrap().mac, 0)).unwrap();
    m.pool()[0x777..0x777 + frame.len()].copy_from_slice(&frame);
    let f = all(&m, &e);
    assert_fails_with(&f, &["live_bytes is 4096"]);
    assert!(!f.iter().any(|x| x.contains("is not zero")), "{f:#?}");
    assert_fails_with(&f, &["net echo seq 0: 89 bytes", "offset 0x777"]);
}

#[test]
fn unknown_bytes_in_a_released_pool_fail() {
    // Ring descriptors, say: no payload the harness knows, but with live_bytes 0 nothing may be
    // left.
    let e = default_e();
    let mut m = model(&e, false);
    m.pool()[POOL_SIZE as usize - 8..].copy_from_slice(&0x1f00_2000u64.to_le_bytes());
    let f = all(&m, &e);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_fails_with(
        &f,
        &[
            "2 non-zero bytes in 1 of 2048 slots",
            "First at offset 0x3ffff9 (guest-physical 0x1f3ffff9): 20 00 1f 00 00 00 00",
            "0x3ff800..0x400000",
        ],
    );
}

#[test]
fn the_negative_control_is_caught() {
    // sg.debug.leak=1 as the guest reports it: slots released without zeroing still hold what
    // the devices moved. The oracle must say so (the test of the negative control passes when
    // the oracle fails the run).
    let mut e = default_e();
    e.secure.as_mut().unwrap().leak = true;
    assert!(e.cmdline().contains("sg.debug.leak=1"));
    let p = payloads(&e);
    let mut m = model(&e, false);
    let disk1 = &p
        .iter()
        .find(|x| x.name.starts_with("disk1.img"))
        .unwrap()
        .bytes;
    let n = disk1.len().min(POOL_SIZE as usize);
    m.pool()[..n].copy_from_slice(&disk1[..n]);
    let f = all(&m, &e);
    assert_fails_with(&f, &["still holds data", "disk1.img"]);
    assert_fails_with(&f, &["is not zero"]);
    // The report itself is consistent with the leak: only the memory says it.
    assert!(
        f.iter()
            .all(|x| x.contains("still holds") || x.contains("is not zero")),
        "{f:#?}"
    );
    // A leak run whose pool is clean anyway (the guest zeroed elsewhere) is not a leak the
    // oracle can see: that is what the negative-control test catches.
    let clean = model(&e, false);
    passes(&clean, &e);
    // A leak asked for that never happened is reported.
    let mut m = model(&e, false);
    m.record("swiotlb_stats")["unzeroed_releases"] = json!(0);
    assert_fails_with(&all(&m, &e), &["the leak did not happen"]);
    // And the record must say it.
    let mut m = model(&e, false);
    m.record("swiotlb")["leak"] = json!(false);
    assert_fails_with(
        &all(&m, &e),
        &["swiotlb.leak is false, but sg.debug.leak is 1"],
    );
}

// (c) The scan works.

#[test]
fn secret_regions_must_show_their_marks() {
    let e = default_e();
    let mut m = model(&e, false);
    let d = m
        .held
        .as_mut()
        .unwrap()
        .dumps
        .iter_mut()
        .find(|d| d.range.label == "secret")
        .unwrap();
    d.data[0x100..0x200].fill(0);
    let f = all(&m, &e);
    assert_fails_with(
        &f,
        &[
            "secret region 0x1e000000..0x1e010005",
            "4080 of 4096 records are valid secret marks",
            "First bad record at offset 0x100",
        ],
    );
    let mut m = model(&e, false);
    let d = m.held.as_mut().unwrap().dumps.iter_mut().last().unwrap();
    let n = d.data.len();
    d.data[n - 1] = 0;
    assert_fails_with(&all(&m, &e), &["the 5-byte tail is not '#' filler"]);
    // Not dumped at all.
    let mut m = model(&e, false);
    m.held
        .as_mut()
        .unwrap()
        .dumps
        .retain(|d| d.range.label != "secret");
    assert_fails_with(
        &all(&m, &e),
        &["secret region 0x1e000000+65541: not dumped"],
    );
    // No secret record.
    let mut m = model(&e, false);
    m.records.retain(|r| r["event"] != "secret");
    assert_fails_with(&all(&m, &e), &["no `secret` record"]);
    let mut m = model(&e, false);
    m.record("secret")["regions"] = json!([]);
    assert_fails_with(&all(&m, &e), &["secret.regions is empty"]);
    let _ = SECRET_SIZE;
}

#[test]
fn no_dump_no_proof() {
    let e = default_e();
    let mut m = model(&e, false);
    m.held = None;
    assert_fails_with(&all(&m, &e), &["no memory dump: the run was not held"]);
    let mut m = model(&e, false);
    m.held.as_mut().unwrap().paused = false;
    assert_fails_with(&all(&m, &e), &["QEMU was not held"]);
    let mut m = model(&e, false);
    let h = m.held.as_mut().unwrap();
    h.dumps.retain(|d| d.range.label != "swiotlb");
    h.problems
        .push("swiotlb 0x1f000000..: QMP pmemsave failed".into());
    let f = all(&m, &e);
    assert_fails_with(&f, &["no dump of the swiotlb pool at 0x1f000000"]);
    assert_fails_with(
        &f,
        &["memory dump: swiotlb 0x1f000000..: QMP pmemsave failed"],
    );
}

// (e) The decision and the devices.

#[test]
fn the_decision_is_checked() {
    let e = default_e();
    for (field, value, want) in [
        ("secure", json!(false), "secure.secure is false"),
        (
            "platform",
            json!("none"),
            "secure.platform \"none\", expected \"emulated\"",
        ),
        (
            "mode",
            json!("auto"),
            "secure.mode \"auto\", expected \"emulate\"",
        ),
        (
            "legacy_devices",
            json!("bounce"),
            "secure.legacy_devices \"bounce\", expected \"refuse\"",
        ),
        (
            "granularity",
            json!(3000),
            "granularity 3000 is not a power of two",
        ),
    ] {
        let mut m = model(&e, false);
        m.record("secure")[field] = value;
        assert_fails_with(&all(&m, &e), &[want]);
    }
    let mut m = model(&e, false);
    m.record("secure")["action"] = json!("reject");
    assert_fails_with(
        &all(&m, &e),
        &["secure.action \"reject\", expected \"proceed\""],
    );
    let mut m = model(&e, false);
    m.records.retain(|r| r["event"] != "secure");
    assert_fails_with(&all(&m, &e), &["no `secure` record"]);
    // The decision comes before any device is touched.
    let mut m = model(&e, false);
    let at = m
        .records
        .iter()
        .position(|r| r["event"] == "secure")
        .unwrap();
    let rec = m.records.remove(at);
    let last_virtio = m
        .records
        .iter()
        .rposition(|r| r["event"] == "virtio")
        .unwrap();
    m.records.insert(last_virtio + 1, rec);
    assert_fails_with(
        &all(&m, &e),
        &["`secure` comes after the first `virtio` record"],
    );
    // Stats come after the devices.
    let mut m = model(&e, false);
    let at = m
        .records
        .iter()
        .position(|r| r["event"] == "swiotlb_stats")
        .unwrap();
    let rec = m.records.remove(at);
    let first_virtio = m
        .records
        .iter()
        .position(|r| r["event"] == "virtio")
        .unwrap();
    m.records.insert(first_virtio, rec);
    assert_fails_with(
        &all(&m, &e),
        &["`swiotlb_stats` comes before the last `virtio`"],
    );
}

#[test]
fn device_paths_are_checked() {
    let e = default_e();
    let mut m = model(&e, false);
    m.virtio("blk", 0)["dma"] = json!("direct");
    assert_fails_with(
        &all(&m, &e),
        &["blk at 00:02.0", "dma \"direct\", expected \"bounce\""],
    );
    let mut m = model(&e, false);
    m.virtio("net", 0)["dma_reason"] = json!("not secure");
    assert_fails_with(
        &all(&m, &e),
        &["dma_reason \"not secure\", expected \"secure, ACCESS_PLATFORM negotiated\""],
    );
    let mut m = model(&e, false);
    m.virtio("rng", 0)
        .as_object_mut()
        .unwrap()
        .remove("dma_reason");
    assert_fails_with(&all(&m, &e), &["rng", "no dma_reason"]);
    // ACCESS_PLATFORM offered, but the guest bounced without accepting it.
    let mut m = model(&e, false);
    let v = m.virtio("console", 0);
    let acc = u64::from_str_radix(
        v["features_accepted"]
            .as_str()
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();
    let acc = acc & !(1 << 33);
    v["features_accepted"] = json!(format!("{acc:#x}"));
    v["features_accepted_names"] = json!(["VERSION_1"]);
    v["access_platform"]["accepted"] = json!(false);
    assert_fails_with(&all(&m, &e), &["console", "features_accepted lacks it"]);
    // The host set iommu_platform=on: ACCESS_PLATFORM must be offered.
    let mut m = model(
        &emulate(Transport::PciModern, false, Some(LegacyDevices::Bounce)),
        false,
    );
    assert_fails_with(
        &all(&m, &e),
        &["ACCESS_PLATFORM is not offered, but the host set iommu_platform=on"],
    );
    // A device the configuration refuses that the guest drove anyway.
    let er = emulate(Transport::PciLegacy, false, None);
    m = model(
        &emulate(Transport::PciLegacy, false, Some(LegacyDevices::Bounce)),
        false,
    );
    let f = all(&m, &er);
    assert_fails_with(&f, &["result ok, expected refused"]);
    assert_fails_with(&f, &["dma \"bounce\", expected \"none\""]);
}

#[test]
fn refused_devices_move_nothing() {
    let e = emulate(Transport::MmioV1, false, None);
    passes(&model(&e, false), &e);
    let mut m = model(&e, false);
    m.virtio("rng", 0)["requests"] = json!(1);
    assert_fails_with(
        &all(&m, &e),
        &["rng", "refused, so never given memory", "1 requests"],
    );
    let mut m = model(&e, false);
    m.virtio("blk", 0)["queues"] =
        json!([{"index": 0, "size": 8, "ring": "split", "indirect": false, "event_idx": false}]);
    assert_fails_with(&all(&m, &e), &["1 queues"]);
    let mut m = model(&e, false);
    m.observed.disks_after[0].as_mut().unwrap()[0] ^= 1;
    assert_fails_with(
        &all(&m, &e),
        &["disk0.img after the run: changed at offset 0"],
    );
    let mut m = model(&e, false);
    m.observed.echo.as_mut().unwrap().frames_seen = 2;
    assert_fails_with(
        &all(&m, &e),
        &["net", "refused, but the echo backend received 2 frames"],
    );
    let mut m = model(&e, false);
    m.observed.console_output = Some(b"x".to_vec());
    assert_fails_with(
        &all(&m, &e),
        &["refused, but the console port received 1 bytes"],
    );
}

#[test]
fn pool_geometry_is_checked() {
    let e = default_e();
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "base",
            json!("0x1f000800"),
            "not aligned to the granularity 4096",
        ),
        (
            "size",
            json!(2 << 20),
            "swiotlb.size 2097152, expected 4194304",
        ),
        (
            "device_base",
            json!("0x9f000000"),
            "device_base 0x9f000000 differs",
        ),
        ("slots", json!(4096), "4096 slots of 2048 bytes"),
        ("max_mapping", json!(0), "max_mapping 0"),
        (
            "shares",
            json!([]),
            "do not leave the pool 0x1f000000..0x1f400000 shared (shared: none)",
        ),
        ("base", json!("0x1a0000"), "overlaps the heap"),
        ("base", json!("0x30000000"), "is not inside one RAM range"),
        (
            "base",
            json!("0x100000"),
            "overlaps reserved memory \"image\"",
        ),
        (
            "base",
            json!("0x1e000000"),
            "secret region 0x1e000000+65541 overlaps the swiotlb pool",
        ),
    ];
    for (field, value, want) in cases {
        let mut m = model(&e, false);
        m.record("swiotlb")[field] = value.clone();
        if field == "base" {
            // The share and the dump follow the pool.
            let b = value.clone();
            m.record("swiotlb")["shares"][0]["base"] = b.clone();
            m.record("swiotlb")["device_base"] = b;
        }
        assert_fails_with(&all(&m, &e), &[want]);
    }
    // sg.swiotlb sets the size, rounded up to the granularity.
    let mut e2 = default_e();
    e2.secure.as_mut().unwrap().pool_size = Some(4 << 20);
    passes(&model(&e2, false), &e2);
    e2.secure.as_mut().unwrap().pool_size = Some((4 << 20) - 100);
    passes(&model(&e2, false), &e2);
    let mut m = model(&e, false);
    m.records.retain(|r| r["event"] != "swiotlb");
    assert_fails_with(&all(&m, &e), &["no `swiotlb` record"]);
    let _ = POOL_BASE;
}

// (f) The books.

#[test]
fn stats_are_checked() {
    let e = default_e();
    let cases: Vec<(&str, Value, &str)> = vec![
        ("live_bytes", json!(100), "live_bytes is 100"),
        ("unmaps", json!(1), "maps but 1 unmaps"),
        ("unzeroed_releases", json!(2), "unzeroed_releases is 2"),
        ("zeroed_bytes", json!(0), "zeroed_bytes is 0"),
        ("bounced_to_device", json!(5), "bounced_to_device 5 < 50"),
        (
            "bounced_from_device",
            json!(0),
            "bounced_from_device 0 < 50",
        ),
    ];
    for (field, value, want) in cases {
        let mut m = model(&e, false);
        m.record("swiotlb_stats")[field] = value;
        assert_fails_with(&all(&m, &e), &[want]);
    }
    let mut m = model(&e, false);
    m.record("swiotlb_stats")["maps"] = json!(0);
    m.record("swiotlb_stats")["unmaps"] = json!(0);
    assert_fails_with(
        &all(&m, &e),
        &["maps is 0, but the bounce devices completed"],
    );
    let mut m = model(&e, false);
    m.records.retain(|r| r["event"] != "swiotlb_stats");
    assert_fails_with(&all(&m, &e), &["no `swiotlb_stats` record"]);
}

// sg.secure=on: fail closed.

fn reject_model(e: &Expected) -> crate::oracle::tests::Model {
    let mut m = model(&expected(e.transport, e.ring), false);
    m.records
        .retain(|r| ["boot", "heap", "devtree"].contains(&r["event"].as_str().unwrap()));
    m.records.push(
        json!({"event": "secure", "v": 1, "mode": "on", "platform": "none",
        "secure": false, "action": "reject", "reasons": ["no PEF, SEV or TDX"],
        "facts": {"ultravisor": false, "msr_s": false, "sev_status": "0x0", "tdx": false},
        "legacy_devices": "refuse", "granularity": 4096}),
    );
    m.records.push(
        json!({"event": "end", "v": 1, "verdict": "reject", "errors": 0,
        "warnings": 0, "entry_to_end_us": null}),
    );
    m.observed.disks_after = e.disks.iter().map(|d| Some(d.content())).collect();
    m.observed.echo.as_mut().unwrap().frames_seen = 0;
    m.observed.console_output = Some(Vec::new());
    m.held = None;
    m
}

#[test]
fn secure_on_must_fail_closed() {
    let mut e = expected(Transport::PciModern, Ring::Split);
    e.secure = Some(SecureExpect::on());
    let ok = reject_model(&e);
    assert_eq!(
        check(&e, &ok.records(), &ok.observed, None),
        Vec::<String>::new()
    );

    let mut m = reject_model(&e);
    m.record("secure")["action"] = json!("proceed");
    let f = check(&e, &m.records(), &m.observed, None);
    assert_fails_with(&f, &["secure.action \"proceed\"", "must reject"]);
    let mut m = reject_model(&e);
    m.record("end")["verdict"] = json!("pass");
    assert_fails_with(
        &check(&e, &m.records(), &m.observed, None),
        &["end.verdict \"pass\", expected \"reject\""],
    );
    // A device touched after the decision, or before it.
    let full = model(&expected(e.transport, e.ring), false);
    let blk = full
        .records
        .iter()
        .find(|r| r["device"] == "blk")
        .unwrap()
        .clone();
    let mut m = reject_model(&e);
    let at = m.records.len() - 1;
    m.records.insert(at, blk.clone());
    let f = check(&e, &m.records(), &m.observed, None);
    assert_fails_with(&f, &["`virtio` after the rejecting `secure` record"]);
    assert_fails_with(&f, &["completed 3 requests", "must not touch devices"]);
    let mut m = reject_model(&e);
    m.records.insert(3, blk);
    assert_fails_with(
        &check(&e, &m.records(), &m.observed, None),
        &["completed 3 requests"],
    );
    let mut m = reject_model(&e);
    m.observed.disks_after[1].as_mut().unwrap()[7] ^= 1;
    m.observed.echo.as_mut().unwrap().frames_seen = 1;
    let f = check(&e, &m.records(), &m.observed, None);
    assert_fails_with(&f, &["disk1.img was changed"]);
    assert_fails_with(&f, &["the echo backend received 1 frames"]);
    let mut m = reject_model(&e);
    m.record("secure")["secure"] = json!(true);
    assert_fails_with(
        &check(&e, &m.records(), &m.observed, None),
        &["secure true"],
    );
    let mut m = reject_model(&e);
    m.records.retain(|r| r["event"] != "secure");
    assert_fails_with(
        &check(&e, &m.records(), &m.observed, None),
        &["no `secure` record"],
    );
}

// The payload search itself.

fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn payload_runs_are_found_at_any_offset() {
    let payloads = vec![
        Payload {
            name: "a".into(),
            bytes: noise(10_000, 1),
        },
        Payload {
            name: "short".into(),
            bytes: noise(40, 2),
        },
    ];
    let mut hay = vec![0u8; 1 << 16];
    // 100 bytes of `a` from its offset 5001 at hay offset 333; 63 bytes (too short) at 9000; all
    // of `short` at 20001; 64 bytes of `a` at the very end.
    hay[333..433].copy_from_slice(&payloads[0].bytes[5001..5101]);
    hay[9000..9063].copy_from_slice(&payloads[0].bytes[100..163]);
    hay[20001..20041].copy_from_slice(&payloads[1].bytes);
    let n = hay.len();
    hay[n - 64..].copy_from_slice(&payloads[0].bytes[..64]);
    let (hits, total) = find_payloads(&hay, &payloads, 64);
    assert_eq!(total, 3);
    assert_eq!(
        hits,
        vec![
            PayloadHit {
                payload: 0,
                payload_offset: 0,
                offset: n - 64,
                len: 64
            },
            PayloadHit {
                payload: 0,
                payload_offset: 5001,
                offset: 333,
                len: 100
            },
            PayloadHit {
                payload: 1,
                payload_offset: 0,
                offset: 20001,
                len: 40
            },
        ]
    );
    // Zeros and noise hold nothing.
    assert_eq!(
        find_payloads(&vec![0u8; 1 << 20], &payloads, 64),
        (vec![], 0)
    );
    assert_eq!(find_payloads(&noise(1 << 20, 9), &payloads, 64).1, 0);
}

#[test]
fn a_full_pool_of_disk_data_is_searched_in_bounded_time() {
    // The worst case of the negative control: the whole default pool holds disk data, the
    // payloads are the standard cell's (6 MiB of disks). One pass over each, in a debug build.
    let mut e = default_e();
    e.disks[0].size = 4 << 20;
    e.disks[1].size = (2 << 20) + 3 * 512;
    let p = payloads(&e);
    let mut pool = vec![0u8; POOL_SIZE as usize];
    // 64 KiB chunks of disk0 in reverse order, as slots get reused.
    let d0 = &p[0].bytes;
    for (i, c) in pool.chunks_mut(64 << 10).enumerate() {
        let from = (63 - i) * (64 << 10);
        c.copy_from_slice(&d0[from..from + (64 << 10)]);
    }
    let t = std::time::Instant::now();
    let (hits, total) = find_payloads(&pool, &p, PAYLOAD_WINDOW);
    // The written pattern's 512-byte blocks that equal disk0's (seed 7 ^ 0x5347 leaves the low
    // six bits of the word index alone) lie inside disk0's runs: each byte is told once.
    assert_eq!(total, 64, "{hits:?}");
    assert!(
        hits.iter().all(|h| h.len >= 64 << 10 && h.payload == 0),
        "{hits:?}"
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        t.elapsed()
    );
}
