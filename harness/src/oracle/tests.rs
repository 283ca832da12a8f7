//! The oracles against synthetic runs: a model guest that does exactly what docs/report.md
//! says (records, disk write, frames, console line) must pass, and each way of getting it wrong
//! must fail with a message that names it.

use serde_json::{Value, json};

use super::*;
use crate::dump::{Dump, DumpRange};
use crate::echo::{EchoStats, guest_frame, parse_guest_frame};
use crate::report::Report;
use crate::run::Held;
use secure_guest::platform::secret;

const MAC: Mac = Mac([0x52, 0x54, 0x00, 0x53, 0x47, 0x01]);
const INPUT: &[u8] = b"hello from the host\n";

pub(crate) fn expected(transport: Transport, ring: Ring) -> Expected {
    Expected {
        transport,
        ring,
        disks: vec![
            DiskImage {
                id: "disk0".into(),
                file: "disk0.img".into(),
                size: 64 << 10,
                seed: 7,
                serial: "sg-disk0".into(),
            },
            DiskImage {
                id: "disk1".into(),
                file: "disk1.img".into(),
                size: (32 << 10) + 3 * 512,
                seed: 8,
                serial: "sg-disk1".into(),
            },
        ],
        blk_read: None,
        write: Some(WriteRequest {
            disk: 0,
            offset: 8192,
            len: 4096 + 512,
            seed: 0x5347,
        }),
        net: Some(NetExpect {
            mac: MAC,
            frames: 8,
        }),
        console: Some(ConsoleExpect {
            input: INPUT.to_vec(),
            read_limit: DEFAULT_CONSOLE_READ,
        }),
        rng: true,
        iommu_platform: false,
        secure: None,
        iommu: None,
    }
}

/// What a correct guest leaves behind: its records (as JSON values, to be broken by tests) and
/// the host-side evidence.
pub(crate) struct Model {
    pub(crate) records: Vec<Value>,
    pub(crate) observed: Observed,
    /// Secure runs: QEMU held at shutdown, the pool and the secret region dumped.
    pub(crate) held: Option<Held>,
}

/// Where the model's secure guest puts things.
pub(crate) const POOL_BASE: u64 = 0x1f00_0000;
pub(crate) const POOL_SIZE: u64 = 4 << 20;
pub(crate) const SLOT_SIZE: u64 = 2048;
pub(crate) const SECRET_BASE: u64 = 0x1e00_0000;
/// Not a multiple of 16: the region ends in `#` filler.
pub(crate) const SECRET_SIZE: u64 = (64 << 10) + 5;

impl Model {
    pub(crate) fn records(&self) -> Vec<Record> {
        let mut text = String::new();
        for r in &self.records {
            text.push_str("@sg ");
            text.push_str(&r.to_string());
            text.push('\n');
        }
        let report = Report::parse(text.as_bytes());
        assert_eq!(
            report.errors,
            vec![],
            "the model's records keep the contract"
        );
        report.records
    }

    pub(crate) fn check(&self, e: &Expected) -> Vec<String> {
        check(e, &self.records(), &self.observed)
    }

    /// The record of `event` (the first).
    pub(crate) fn record(&mut self, event: &str) -> &mut Value {
        self.records
            .iter_mut()
            .find(|r| r["event"] == event)
            .unwrap_or_else(|| panic!("no {event} record"))
    }

    /// The dumped pool.
    pub(crate) fn pool(&mut self) -> &mut Vec<u8> {
        &mut self
            .held
            .as_mut()
            .unwrap()
            .dumps
            .iter_mut()
            .find(|d| d.range.label == "swiotlb")
            .unwrap()
            .data
    }

    /// The virtio record of `device` (the first, or the n-th blk).
    pub(crate) fn virtio(&mut self, device: &str, n: usize) -> &mut Value {
        self.records
            .iter_mut()
            .filter(|r| r["event"] == "virtio" && r["device"] == device)
            .nth(n)
            .unwrap()
    }
}

fn hex(v: u64) -> Value {
    Value::String(format!("{v:#x}"))
}

fn names(word: u64) -> Vec<&'static str> {
    [VERSION_1, ACCESS_PLATFORM, RING_PACKED]
        .into_iter()
        .filter(|(b, _)| word & (1 << b) != 0)
        .map(|(_, n)| n)
        .collect()
}

/// A guest that does everything right. With `read_after_write`, it reads the disk after
/// writing it (the contract does not say which comes first). With `e.secure`, it is a secure
/// guest (docs/report.md: `secure`, `swiotlb`, `secret`, `swiotlb_stats`, `virtio.dma`) and the
/// host's dumps of its pool and secret region come with it.
pub(crate) fn model(e: &Expected, read_after_write: bool) -> Model {
    let mmio = e.transport.is_mmio();
    let locations: Vec<String> = (0..6)
        .map(|i| {
            if mmio {
                format!("/virtio_mmio@feb0{:x}00", 0x26 + 2 * i)
            } else {
                format!("00:{:02x}.0", i + 2)
            }
        })
        .collect();
    let devtree = json!({
        "event": "devtree", "v": 1, "source": if mmio { "fdt" } else { "pci-scan" }, "nodes": 1,
        "size": 1, "model": null, "cpus": 1, "timebase_hz": null, "stdout_path": null,
        "virtio_mmio": if mmio {
            locations.iter().map(|p| json!({"path": p, "base": "0xfeb02600", "size": 512, "irq": 19})).collect::<Vec<_>>()
        } else { vec![] },
        "pci_hosts": [],
        "pci": if mmio { vec![] } else {
            locations.iter().map(|b| json!({"path": format!("pci@{b}"), "bdf": b, "vendor": "0x1af4", "device": "0x1042", "class": "0x0", "virtio": true})).collect::<Vec<_>>()
        },
        "rtas": null, "ultravisor": false,
    });
    let mut records = vec![
        json!({"event": "boot", "v": 1, "arch": "x86_64", "machine": "q35", "firmware": "pvh",
               "guest": "0.1.0", "load_addr": "0x100000", "image_end": "0x1a0000",
               "ram_bytes": 536_346_624u64, "ram_top": "0x20000000",
               "memory": [{"base": "0x0", "size": 654_336, "kind": "ram", "label": "ram"},
                          {"base": "0x100000", "size": 535_822_336u64, "kind": "ram", "label": "ram"},
                          {"base": "0x0", "size": 1_048_576, "kind": "reserved", "label": "bios"},
                          {"base": "0x100000", "size": 655_360, "kind": "reserved", "label": "image"}],
               "memory_dropped": 0, "cpus": 1,
               "cmdline": e.cmdline(), "console": "com1", "tick_hz": null, "tick_source": "pit",
               "entry_to_boot_ticks": 1, "entry_to_boot_us": null}),
        json!({"event": "heap", "v": 1, "base": "0x1a0000", "size": 67_108_864}),
        devtree,
    ];
    let secure = e
        .secure
        .filter(|s| s.mode == crate::secure::SecureMode::Emulate);
    if let Some(s) = &secure {
        records.push(
            json!({"event": "secure", "v": 1, "mode": "emulate", "platform": "emulated",
            "secure": true, "action": "proceed", "reasons": ["sg.secure=emulate"],
            "facts": {"ultravisor": false, "msr_s": false, "sev_status": "0x0", "tdx": false},
            "legacy_devices": s.legacy_devices().as_str(), "granularity": 4096}),
        );
        records.push(json!({"event": "swiotlb", "v": 1, "base": hex(POOL_BASE),
            "device_base": hex(POOL_BASE), "size": POOL_SIZE, "slot_size": SLOT_SIZE,
            "slots": POOL_SIZE / SLOT_SIZE, "max_mapping": 256 << 10,
            "shares": [{"op": "share", "base": hex(POOL_BASE), "size": POOL_SIZE, "result": "ok"}],
            "leak": s.leak}));
    }
    let dma = e.dma_expect();
    let refused = dma == DmaExpect::Refused;
    let ap = e.access_platform_offered();
    let offered = if e.transport.is_legacy() {
        0x1000_0206
    } else {
        (1 << 32)
            | 0x206
            | if e.packed_offered() { 1 << 34 } else { 0 }
            | if ap { 1 << 33 } else { 0 }
    };
    let accepted = if refused { 0 } else { offered & !0x1000_0000 };
    let packed = accepted & (1 << 34) != 0;
    let mut loc = locations.iter();
    let common = |device: &str, id: u32, loc: &str| {
        let mut r = json!({"event": "virtio", "v": 1, "device": device, "device_id": id,
               "transport": e.transport.report_name(), "location": loc,
               "features_offered": hex(offered), "features_accepted": hex(accepted),
               "features_offered_names": names(offered), "features_accepted_names": names(accepted),
               "access_platform": {"offered": ap, "accepted": ap && !refused},
               "queues": [{"index": 0, "size": 256, "ring": if packed { "packed" } else { "split" },
                           "indirect": false, "event_idx": false}],
               "dma": dma.dma(), "dma_reason": dma.reason(), "requests": 3,
               "bytes_to_device": 10, "bytes_from_device": 10,
               "notifications": 3, "result": "ok"});
        if refused {
            r["queues"] = json!([]);
            r["requests"] = json!(0);
            r["bytes_to_device"] = json!(0);
            r["bytes_from_device"] = json!(0);
            r["notifications"] = json!(0);
            r["result"] = json!("refused");
        }
        r
    };
    let mut disks_after = Vec::new();
    for (n, d) in e.disks.iter().enumerate() {
        let mut r = common("blk", 2, loc.next().unwrap());
        if refused {
            records.push(r);
            disks_after.push(Some(d.content()));
            continue;
        }
        let mut content = d.content();
        let w = e.write.filter(|w| w.disk == n);
        let mut write_field = Value::Null;
        if let Some(w) = w {
            let data = pattern_bytes(w.seed, w.offset, w.len as usize);
            content[w.offset as usize..(w.offset + w.len) as usize].copy_from_slice(&data);
            write_field = json!({"offset": w.offset, "len": w.len, "seed": hex(w.seed),
                                 "crc32c": hex(crc32c(&data).into())});
        }
        let read_n = e.blk_read.unwrap_or(DEFAULT_BLK_READ).min(d.size) as usize;
        let read_from = if read_after_write {
            content.clone()
        } else {
            d.content()
        };
        let m = r.as_object_mut().unwrap();
        m.insert("capacity".into(), json!(d.size));
        m.insert("block_size".into(), json!(512));
        m.insert("serial".into(), json!(d.serial));
        m.insert("read_bytes".into(), json!(read_n));
        m.insert(
            "read_crc32c".into(),
            hex(crc32c(&read_from[..read_n]).into()),
        );
        m.insert("write".into(), write_field);
        m.insert("flushed".into(), json!(w.is_some()));
        records.push(r);
        disks_after.push(Some(content));
    }
    let mut echo = EchoStats::default();
    if e.net.is_some() && refused {
        records.push(common("net", 1, loc.next().unwrap()));
        echo.connections = 1;
    } else if let Some(n) = &e.net {
        let mut r = common("net", 1, loc.next().unwrap());
        let m = r.as_object_mut().unwrap();
        m.insert("mac".into(), json!(n.mac.to_string()));
        m.insert("frames_sent".into(), json!(n.frames));
        m.insert("frames_received".into(), json!(n.frames));
        m.insert("frames_verified".into(), json!(n.frames));
        records.push(r);
        echo.connections = 1;
        for seq in 0..n.frames {
            let g = parse_guest_frame(&guest_frame(n.mac, seq)).unwrap();
            echo.frames_seen += 1;
            echo.frames_well_formed += 1;
            echo.frames_echoed += 1;
            *echo.seqs.entry(g.seq).or_default() += 1;
            if !echo.sources.contains(&g.source) {
                echo.sources.push(g.source);
            }
        }
    }
    if e.console.is_some() && refused {
        records.push(common("console", 3, loc.next().unwrap()));
    } else if let Some(c) = &e.console {
        let mut r = common("console", 3, loc.next().unwrap());
        let line = console_line();
        let read = &c.input[..c.input.iter().position(|&b| b == b'\n').unwrap() + 1];
        let m = r.as_object_mut().unwrap();
        m.insert("written_bytes".into(), json!(line.len()));
        m.insert("written_crc32c".into(), hex(crc32c(&line).into()));
        m.insert("read_bytes".into(), json!(read.len()));
        m.insert("read_crc32c".into(), hex(crc32c(read).into()));
        m.insert("read_text".into(), json!(String::from_utf8_lossy(read)));
        records.push(r);
    }
    if e.rng {
        let mut r = common("rng", 4, loc.next().unwrap());
        if !refused {
            r.as_object_mut()
                .unwrap()
                .insert("entropy_bytes".into(), json!(64));
        }
        records.push(r);
    }
    let mut held = None;
    if let Some(s) = &secure {
        let devices = records.iter().filter(|r| r["event"] == "virtio").count() as u64;
        let maps = if refused { 0 } else { 3 * devices };
        records.push(json!({"event": "secret", "v": 1,
            "regions": [{"base": hex(SECRET_BASE), "size": SECRET_SIZE}]}));
        records.push(
            json!({"event": "swiotlb_stats", "v": 1, "maps": maps, "unmaps": maps,
            "bounced_to_device": 100 * maps, "bounced_from_device": 100 * maps,
            "high_water_bytes": 8192, "high_water_slots": 4, "exhausted": 0,
            "zeroed_bytes": if s.leak { 0 } else { 4096 * maps },
            "unzeroed_releases": if s.leak { maps } else { 0 }, "live_bytes": 0}),
        );
        let mut marked = vec![0u8; SECRET_SIZE as usize];
        secret::fill(&mut marked, 1000);
        let dump = |label: &str, base: u64, data: Vec<u8>| {
            let range = DumpRange::new(label, base, data.len() as u64);
            Dump {
                file: range.file_name(),
                range,
                data,
            }
        };
        held = Some(Held {
            paused: true,
            reason: Some("guest-shutdown".into()),
            guest: Some(true),
            dumps: vec![
                dump("swiotlb", POOL_BASE, vec![0u8; POOL_SIZE as usize]),
                dump("secret", SECRET_BASE, marked),
            ],
            ..Default::default()
        });
    }
    records.push(
        json!({"event": "end", "v": 1, "verdict": "pass", "errors": 0, "warnings": 0,
                        "entry_to_end_us": null}),
    );
    Model {
        records,
        observed: Observed {
            disks_after,
            echo: Some(echo),
            console_output: Some(if refused { Vec::new() } else { console_line() }),
        },
        held,
    }
}

/// Makes the model's `end` record count `errors` errors and fail.
fn fail_the_end(m: &mut Model, errors: u64) {
    let end = m.records.last_mut().unwrap();
    end["errors"] = json!(errors);
    end["verdict"] = json!("fail");
}

/// Asserts that `failures` has one that contains every word of `want`.
#[track_caller]
pub(crate) fn assert_fails_with(failures: &[String], want: &[&str]) {
    assert!(
        failures.iter().any(|f| want.iter().all(|w| f.contains(w))),
        "no failure mentions {want:?}: {failures:#?}"
    );
}

fn default_e() -> Expected {
    expected(Transport::PciModern, Ring::Packed)
}

#[test]
fn a_correct_guest_passes_everywhere() {
    for t in Transport::ALL {
        for r in Ring::ALL {
            let e = expected(t, r);
            for read_after_write in [false, true] {
                let m = model(&e, read_after_write);
                assert_eq!(m.check(&e), Vec::<String>::new(), "{t} {r}");
            }
        }
    }
}

#[test]
fn fast_fill_is_the_pattern() {
    for seed in [0, 7, 0xfeed_f00d_dead_beef] {
        for offset in [0u64, 1, 7, 8, 9, 1 << 20, (1 << 20) + 4093] {
            for len in [0usize, 1, 7, 8, 9, 15, 16, 17, 100, 4096] {
                let mut a = vec![0u8; len];
                let mut b = vec![0u8; len];
                pattern::fill(seed, offset, &mut a);
                fill_pattern(seed, offset, &mut b);
                assert_eq!(a, b, "seed {seed} offset {offset} len {len}");
                assert_eq!(first_pattern_mismatch(seed, offset, &a), None);
                if len > 0 {
                    a[len - 1] ^= 1;
                    assert_eq!(
                        first_pattern_mismatch(seed, offset, &a),
                        pattern::first_mismatch(seed, offset, &a)
                    );
                    assert_eq!(
                        first_pattern_mismatch(seed, offset, &a),
                        Some(offset + len as u64 - 1)
                    );
                }
            }
        }
    }
}

#[test]
fn console_line_is_pinned() {
    let l = console_line();
    assert_eq!(l.len(), 61);
    assert!(l.starts_with(b"secure-guest virtio-console "));
    assert!(
        l[28..60]
            .iter()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_eq!(l[60], b'\n');
    let mut p = [0u8; 16];
    pattern::fill(0xc0, 0, &mut p);
    assert_eq!(l[28..30], format!("{:02x}", p[0]).into_bytes()[..]);
}

#[test]
fn no_records_is_the_first_thing_said() {
    let e = default_e();
    let mut m = model(&e, false);
    m.records.retain(|r| r["event"] != "virtio");
    // A guest without drivers wrote nothing.
    m.observed.disks_after = e.disks.iter().map(|d| Some(d.content())).collect();
    let f = m.check(&e);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert!(f[0].starts_with("no `virtio` records"), "{f:?}");
    assert!(
        f[0].contains("2x blk, net, console, rng over virtio-pci-modern"),
        "{f:?}"
    );
    // ...and if it changed a disk anyway, that is said too.
    m.observed.disks_after[1].as_mut().unwrap()[100] ^= 1;
    assert_fails_with(&m.check(&e), &["disk1.img", "changed at offset 100"]);
}

#[test]
fn device_set_and_common_fields() {
    let e = default_e();
    let mut m = model(&e, false);
    let rng = m.virtio("rng", 0).clone();
    m.records.insert(3, rng);
    assert_fails_with(&m.check(&e), &["2 `rng` record(s)", "1 rng device"]);

    let mut m = model(&e, false);
    m.virtio("rng", 0)["result"] = json!("error");
    m.virtio("rng", 0)["error"] = json!("timeout after 5000 ms");
    let f = m.check(&e);
    assert_fails_with(&f, &["rng at", "result error: timeout after 5000 ms"]);
    // ...and the model's `end` did not count it.
    assert_fails_with(
        &f,
        &["end.errors is 0, but the report shows 1 errors (1 of them failed virtio devices)"],
    );
    assert_fails_with(&f, &["end.verdict is pass despite 1 errors"]);
    fail_the_end(&mut m, 1);
    let f = m.check(&e);
    assert!(!f.iter().any(|x| x.contains("end.")), "{f:#?}");

    let mut m = model(&e, false);
    m.virtio("net", 0)["dma"] = json!("bounce");
    assert_fails_with(&m.check(&e), &["net at", "dma \"bounce\""]);

    let mut m = model(&e, false);
    m.virtio("console", 0)["transport"] = json!("virtio-pci-legacy");
    assert_fails_with(&m.check(&e), &["transport \"virtio-pci-legacy\""]);

    let mut m = model(&e, false);
    m.virtio("console", 0)["device_id"] = json!(7);
    assert_fails_with(&m.check(&e), &["device_id 7, expected 3"]);

    let mut m = model(&e, false);
    m.virtio("rng", 0)["location"] = json!("00:1f.0");
    assert_fails_with(&m.check(&e), &["location \"00:1f.0\" is not among"]);

    let mut m = model(&e, false);
    let loc = m.virtio("blk", 0)["location"].clone();
    m.virtio("rng", 0)["location"] = loc;
    assert_fails_with(&m.check(&e), &["reported twice"]);

    let mut m = model(&e, false);
    m.virtio("rng", 0)["device"] = json!("type-9");
    let f = m.check(&e);
    assert_fails_with(&f, &["0 `rng` record(s)"]);
    assert_fails_with(&f, &["a `type-9` device"]);
}

#[test]
fn feature_rules() {
    let e = default_e();
    // Packed offered but the driver stayed on split.
    let mut m = model(&e, false);
    let v = m.virtio("blk", 0);
    v["features_accepted"] = hex(0x1_0000_0206);
    v["features_accepted_names"] = json!(["VERSION_1"]);
    v["queues"][0]["ring"] = json!("split");
    assert_fails_with(
        &m.check(&e),
        &[
            "blk at",
            "RING_PACKED is not accepted although it was offered",
        ],
    );

    // The name the contract uses, not the spec's.
    let mut m = model(&e, false);
    m.virtio("net", 0)["features_accepted_names"] =
        json!(["VIRTIO_F_VERSION_1", "VIRTIO_F_RING_PACKED"]);
    assert_fails_with(
        &m.check(&e),
        &["features_accepted has bit 34", "lacks \"RING_PACKED\""],
    );

    // A queue on the wrong layout.
    let mut m = model(&e, false);
    m.virtio("rng", 0)["queues"][0]["ring"] = json!("split");
    assert_fails_with(&m.check(&e), &["queue 0 is Split"]);

    // Accepting what was not offered.
    let mut m = model(&e, false);
    m.virtio("rng", 0)["features_accepted"] = hex(0x5_0000_0207);
    assert_fails_with(&m.check(&e), &["not offered"]);

    // Split asked: packed must not even be offered.
    let e2 = expected(Transport::PciModern, Ring::Split);
    let mut m = model(&e2, false);
    let v = m.virtio("rng", 0);
    v["features_offered"] = hex(0x5_0000_0206);
    v["features_offered_names"] = json!(["VERSION_1", "RING_PACKED"]);
    assert_fails_with(
        &m.check(&e2),
        &["RING_PACKED is offered, but the host asked for split"],
    );

    // Modern without VERSION_1.
    let mut m = model(&e2, false);
    let v = m.virtio("rng", 0);
    v["features_accepted"] = hex(0x206);
    v["features_accepted_names"] = json!([]);
    assert_fails_with(
        &m.check(&e2),
        &["VERSION_1 not accepted on a modern transport"],
    );

    // Legacy with high bits.
    let e3 = expected(Transport::MmioV1, Ring::Packed);
    let mut m = model(&e3, false);
    let v = m.virtio("rng", 0);
    v["features_offered"] = hex(0x1_1000_0206);
    v["features_offered_names"] = json!(["VERSION_1"]);
    assert_fails_with(&m.check(&e3), &["legacy transport offers only bits 0..31"]);

    // access_platform must agree with bit 33.
    let mut m = model(&e, false);
    m.virtio("rng", 0)["access_platform"]["offered"] = json!(true);
    assert_fails_with(&m.check(&e), &["access_platform"]);
}

#[test]
fn blk_read_oracle() {
    let e = default_e();
    let mut m = model(&e, false);
    m.virtio("blk", 1)["read_crc32c"] = json!("0x12345678");
    assert_fails_with(
        &m.check(&e),
        &["blk #1", "disk1.img", "read_crc32c 0x12345678"],
    );

    let mut m = model(&e, false);
    m.virtio("blk", 0)["capacity"] = json!(4096);
    assert_fails_with(
        &m.check(&e),
        &["blk #0", "capacity 4096 is the size of no disk"],
    );

    let mut m = model(&e, false);
    m.virtio("blk", 0)["read_bytes"] = json!(512);
    assert_fails_with(&m.check(&e), &["read_bytes 512, expected 65536"]);

    let mut m = model(&e, false);
    m.virtio("blk", 1)["serial"] = json!("other");
    assert_fails_with(&m.check(&e), &["serial \"other\""]);
    m.virtio("blk", 1)["serial"] = Value::Null;
    assert_eq!(m.check(&e), Vec::<String>::new(), "get-id is optional");

    let mut m = model(&e, false);
    m.virtio("blk", 1)["block_size"] = json!(4096);
    assert_fails_with(&m.check(&e), &["block_size 4096"]);

    // sg.blk.read limits what is read.
    let mut e2 = default_e();
    e2.blk_read = Some(4096);
    let m = model(&e2, false);
    assert_eq!(m.check(&e2), Vec::<String>::new());
    assert!(
        e2.cmdline()
            .starts_with("sg.blk.read=4096 sg.blk.write=8192:4608:21319 sg.blk.disk=0")
    );
    assert_fails_with(&m.check(&default_e()), &["read_bytes 4096, expected 65536"]);

    // The disks in report order need not be the harness's order.
    let mut m = model(&e, false);
    let a = m.records.iter().position(|r| r["device"] == "blk").unwrap();
    let b = a + 1;
    m.records.swap(a, b);
    // Now disk1 is blk #0 and sg.blk.disk=0 names it, but the write went to disk0.
    let f = m.check(&e);
    assert_fails_with(&f, &["blk #0", "disk1.img", "write is null"]);
    assert_fails_with(&f, &["blk #1", "disk0.img", "reports a write"]);
}

#[test]
fn a_failed_blk_device_is_reported_once() {
    let e = default_e();
    let mut m = model(&e, false);
    let v = m.virtio("blk", 0);
    v["result"] = json!("error");
    v["error"] = json!("read of 65536 bytes at offset 0 completed with 0 bytes written");
    fail_the_end(&mut m, 1);
    // It wrote half of the range before it failed: not held against it, and not checked.
    let w = e.write.unwrap();
    let img = m.observed.disks_after[0].as_mut().unwrap();
    img[(w.offset + w.len / 2) as usize..(w.offset + w.len) as usize].copy_from_slice(
        &e.disks[0].content()[(w.offset + w.len / 2) as usize..(w.offset + w.len) as usize],
    );
    let f = m.check(&e);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert!(
        f[0].contains("blk at") && f[0].contains("result error: read of 65536"),
        "{f:?}"
    );
    // The other disk is still checked.
    m.observed.disks_after[1].as_mut().unwrap()[0] ^= 1;
    assert_fails_with(&m.check(&e), &["disk1.img", "no write was asked"]);
    // A failed device that does not even say its capacity: nothing to tell the images apart.
    let mut m = model(&e, false);
    let v = m.virtio("blk", 0);
    v["result"] = json!("error");
    v["error"] = json!("blk_size 131072 is not a power of two");
    v.as_object_mut().unwrap().remove("capacity");
    fail_the_end(&mut m, 1);
    let f = m.check(&e);
    assert_eq!(f.len(), 1, "{f:#?}");
}

#[test]
fn blk_write_oracle() {
    let e = default_e();
    let w = e.write.unwrap();
    // Nothing written.
    let mut m = model(&e, false);
    m.observed.disks_after[0] = Some(e.disks[0].content());
    assert_fails_with(
        &m.check(&e),
        &[
            "disk0.img after the run",
            "do not hold the pattern",
            "nothing was written",
        ],
    );

    // Written one sector too far.
    let mut m = model(&e, false);
    let mut img = e.disks[0].content();
    let (s, n) = (w.offset as usize + 512, w.len as usize);
    img[s..s + n].copy_from_slice(&pattern_bytes(w.seed, w.offset + 512, n));
    m.observed.disks_after[0] = Some(img);
    let f = m.check(&e);
    assert_fails_with(
        &f,
        &["do not hold the pattern", "first wrong byte at offset 8192"],
    );
    assert_fails_with(&f, &["changed at offset", "after the written range"]);

    // A stray byte before the range.
    let mut m = model(&e, false);
    m.observed.disks_after[0].as_mut().unwrap()[0] ^= 0x80;
    assert_fails_with(
        &m.check(&e),
        &["changed at offset 0, before the written range 8192..12800"],
    );

    // The other disk touched.
    let mut m = model(&e, false);
    m.observed.disks_after[1].as_mut().unwrap()[30000] ^= 1;
    assert_fails_with(
        &m.check(&e),
        &[
            "disk1.img",
            "changed at offset 30000, but no write was asked",
        ],
    );

    // The image grew.
    let mut m = model(&e, false);
    m.observed.disks_after[1].as_mut().unwrap().push(0);
    assert_fails_with(&m.check(&e), &["disk1.img", "bytes, was"]);

    // Unreadable.
    let mut m = model(&e, false);
    m.observed.disks_after[0] = None;
    assert_fails_with(&m.check(&e), &["disk0.img", "could not be read"]);

    // The record's write object.
    let mut m = model(&e, false);
    m.virtio("blk", 0)["write"]["crc32c"] = json!("0x1");
    assert_fails_with(&m.check(&e), &["write.crc32c 0x1"]);
    let mut m = model(&e, false);
    m.virtio("blk", 0)["write"]["seed"] = json!("0x5348");
    assert_fails_with(
        &m.check(&e),
        &["write {offset 8192, len 4608, seed 0x5348}"],
    );

    // Writing the second disk (sg.blk.disk=1).
    let mut e2 = default_e();
    e2.write = Some(WriteRequest {
        disk: 1,
        offset: 0,
        len: 512,
        seed: 99,
    });
    assert_eq!(model(&e2, false).check(&e2), Vec::<String>::new());
    assert_eq!(model(&e2, true).check(&e2), Vec::<String>::new());
    assert_fails_with(
        &model(&e, false).check(&e2),
        &["disk0.img", "no write was asked"],
    );
}

#[test]
fn net_oracle() {
    let e = default_e();
    let mut m = model(&e, false);
    m.virtio("net", 0)["frames_verified"] = json!(7);
    assert_fails_with(&m.check(&e), &["frames_verified 7 of frames_sent 8"]);

    let mut m = model(&e, false);
    m.virtio("net", 0)["mac"] = json!("52:54:00:53:47:02");
    assert_fails_with(
        &m.check(&e),
        &["mac \"52:54:00:53:47:02\", the device's is 52:54:00:53:47:01"],
    );
    m.virtio("net", 0)["mac"] = json!("52:54:00:53:47:01".to_uppercase());
    assert_eq!(m.check(&e), Vec::<String>::new());

    let mut m = model(&e, false);
    let echo = m.observed.echo.as_mut().unwrap();
    echo.frames_well_formed = 7;
    echo.frames_echoed = 7;
    echo.seqs.remove(&7);
    let f = m.check(&e);
    assert_fails_with(
        &f,
        &["the backend saw 7 well-formed frames", "says it sent 8"],
    );
    assert_fails_with(&f, &["seq numbers"]);

    let mut m = model(&e, false);
    m.observed
        .echo
        .as_mut()
        .unwrap()
        .problems
        .push("frame 3: 60 bytes, not 89".into());
    assert_fails_with(&m.check(&e), &["echo backend: frame 3: 60 bytes"]);

    let mut m = model(&e, false);
    m.observed.echo = Some(EchoStats::default());
    assert_fails_with(&m.check(&e), &["QEMU never connected to the echo backend"]);

    let mut m = model(&e, false);
    m.observed
        .echo
        .as_mut()
        .unwrap()
        .sources
        .push(Mac([2, 0, 0, 0, 0, 1]));
    assert_fails_with(&m.check(&e), &["frames came from"]);

    let mut e2 = default_e();
    e2.net.as_mut().unwrap().frames = 3;
    assert!(e2.cmdline().ends_with("sg.net.frames=3"));
    assert_fails_with(&model(&e, false).check(&e2), &["frames_sent 8, expected 3"]);
}

#[test]
fn console_oracle() {
    let e = default_e();
    let mut m = model(&e, false);
    m.observed.console_output = Some(b"secure-guest virtio-console 00\n".to_vec());
    assert_fails_with(&m.check(&e), &["received 31 bytes", "61-byte line"]);

    let mut m = model(&e, false);
    let mut twice = console_line();
    twice.extend(console_line());
    m.observed.console_output = Some(twice);
    assert_fails_with(&m.check(&e), &["received 122 bytes"]);

    let mut m = model(&e, false);
    m.virtio("console", 0)["written_crc32c"] = json!("0x0");
    assert_fails_with(&m.check(&e), &["written_crc32c 0x0"]);

    // The newline may or may not be counted, as long as the CRC and text agree.
    let mut m = model(&e, false);
    let without = &INPUT[..INPUT.len() - 1];
    let v = m.virtio("console", 0);
    v["read_bytes"] = json!(without.len());
    v["read_crc32c"] = hex(crc32c(without).into());
    v["read_text"] = json!("hello from the host");
    assert_eq!(m.check(&e), Vec::<String>::new());
    m.virtio("console", 0)["read_text"] = json!("hello from the hos");
    assert_fails_with(&m.check(&e), &["read_text \"hello from the hos\""]);
    m.virtio("console", 0)["read_text"] = Value::Null;
    assert_fails_with(&m.check(&e), &["read_text is missing"]);

    let mut m = model(&e, false);
    m.virtio("console", 0)["read_text"] = Value::Null;
    assert_eq!(
        m.check(&e),
        Vec::<String>::new(),
        "with a newline read, null is allowed"
    );
    m.virtio("console", 0)["read_crc32c"] = json!("0x1");
    assert_fails_with(&m.check(&e), &["read_crc32c 0x1", "20 bytes the host sent"]);

    let mut m = model(&e, false);
    m.virtio("console", 0)["read_bytes"] = json!(5);
    assert_fails_with(&m.check(&e), &["read_bytes 5, expected 20 or 19"]);

    // sg.console.read cuts the read short.
    let mut e2 = default_e();
    e2.console.as_mut().unwrap().read_limit = 5;
    let mut m = model(&e2, false);
    let v = m.virtio("console", 0);
    v["read_bytes"] = json!(5);
    v["read_crc32c"] = hex(crc32c(b"hello").into());
    v["read_text"] = json!("hello");
    assert_eq!(m.check(&e2), Vec::<String>::new());
    assert!(e2.cmdline().ends_with("sg.console.read=5"));
}

#[test]
fn rng_oracle() {
    let e = default_e();
    let mut m = model(&e, false);
    m.virtio("rng", 0)["entropy_bytes"] = json!(0);
    assert_fails_with(&m.check(&e), &["rng at", "entropy_bytes is 0"]);
}

#[test]
fn records_that_break_the_contract() {
    let e = default_e();
    // Parsed leniently here (the report parser flags them too): the oracle names them.
    let mut m = model(&e, false);
    m.virtio("rng", 0)
        .as_object_mut()
        .unwrap()
        .remove("entropy_bytes");
    let mut text = String::new();
    for r in &m.records {
        text.push_str(&format!("@sg {r}\n"));
    }
    let report = Report::parse(text.as_bytes());
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.message.contains("rng fields") && e.message.contains("entropy_bytes")),
        "{:?}",
        report.errors
    );
    assert_fails_with(
        &check(&e, &report.records, &m.observed),
        &["rng at", "device fields do not match"],
    );

    let mut m = model(&e, false);
    m.virtio("net", 0).as_object_mut().unwrap().remove("queues");
    let mut text = String::new();
    for r in &m.records {
        text.push_str(&format!("@sg {r}\n"));
    }
    let report = Report::parse(text.as_bytes());
    assert_fails_with(
        &check(&e, &report.records, &m.observed),
        &["`virtio` record does not match", "queues"],
    );
}

#[test]
fn disks_of_the_same_size_are_a_setup_error() {
    let mut e = default_e();
    e.disks[1].size = e.disks[0].size;
    let m = model(&default_e(), false);
    assert_fails_with(
        &m.check(&e),
        &["harness setup", "tells disks apart by size"],
    );
}

#[test]
fn file_regions() {
    let dir = tempfile::tempdir().unwrap();
    let d = DiskImage {
        id: "d".into(),
        file: "d.img".into(),
        size: 3 << 20,
        seed: 7,
        serial: "s".into(),
    };
    d.create(dir.path()).unwrap();
    let p = dir.path().join("d.img");
    check_file_region(&p, 7, 0, 3 << 20).unwrap();
    check_file_region(&p, 7, 12345, 99).unwrap();
    let e = check_file_region(&p, 8, 16, 16).unwrap_err().to_string();
    assert!(e.contains("offset 16 holds"), "{e}");
    let e = check_file_region(&p, 7, 3 << 20, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("has no bytes"), "{e}");
    let mut b = std::fs::read(&p).unwrap();
    b[(2 << 20) + 5] ^= 1;
    std::fs::write(&p, b).unwrap();
    let e = check_file_region(&p, 7, 0, 3 << 20)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("offset {} holds", (2 << 20) + 5)),
        "{e}"
    );
}
