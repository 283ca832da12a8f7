//! A model of QEMU running a correct guest, for testing the harness itself: `harness fake-qemu
//! <QEMU arguments>` reads the command line a matrix cell builds ([`crate::devices`]), serves
//! QMP until `cont` when started with `-S`, then does what docs/report.md says the guest does
//! with each device — reads and writes the disk images, sends frames to the echo backend and
//! checks the echoes, writes the console line and reads the host's input — and writes the report
//! to the console file. It exits as QEMU would (x86 with isa-debug-exit: 1; pseries: 0).
//!
//! `sg.secure=emulate` makes it a secure guest: the records `secure`, `swiotlb`, `secret` and
//! `swiotlb_stats`, every device on the path docs/report.md gives it (`iommu_platform=on` on a
//! modern transport: `bounce`; otherwise refused unless `sg.legacy_devices=bounce`), and a
//! refused device moves nothing. `sg.secure=on` is rejected. With `-action shutdown=pause` it
//! holds at the end like QEMU: a `SHUTDOWN` event, status `shutdown`, `pmemsave` of a model of
//! guest memory (the secret region full of marks, the pool zero; with `sg.debug.leak=1` the
//! release probe's marks and disk data left in it), until `quit`.
//!
//! `SG_FAKE_QEMU_BREAK=<what>` makes it wrong on purpose (`blk-read`, `blk-write`,
//! `net-frame`, `console-line`, `no-virtio`; `refuse`: exit at once as QEMU does on a bad
//! argument; `no-hold`: exit instead of holding at shutdown; `reset`: hold with reason
//! `guest-reset`; `secret-in-pool`: a secret mark in the pool; `no-marks`: the secret region
//! without its marks), so that tests can see the oracles catch it.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use secure_guest::crc32c::crc32c;
use secure_guest::pattern;
use serde_json::{Value, json};

use crate::devices::Mac;
use crate::echo;
use crate::oracle::{self, ACCESS_PLATFORM, DmaExpect, RING_PACKED, VERSION_1};
use secure_guest::platform::secret;

/// Where the model's secure guest keeps its pool and its secret region.
const POOL_BASE: u64 = 0x1fa0_0000;
const POOL_SIZE: u64 = 4 << 20;
const SECRET_BASE: u64 = 0x0400_0000;
const SECRET_SIZE: u64 = 64 << 10;

/// The variable that breaks the model on purpose.
pub const BREAK_ENV: &str = "SG_FAKE_QEMU_BREAK";

/// `key=value,...` of one QEMU option (`,,` is a literal comma).
fn props(s: &str) -> BTreeMap<String, String> {
    let s = s.replace(",,", "\u{0}");
    s.split(',')
        .map(|kv| {
            let kv = kv.replace('\u{0}', ",");
            match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.clone(), String::new()),
            }
        })
        .collect()
}

fn first(s: &str) -> &str {
    s.split(',').next().unwrap_or("")
}

/// Runs the model with QEMU's arguments (without the program name); returns the exit status.
pub fn run(args: &[String]) -> Result<i32> {
    let broken = std::env::var(BREAK_ENV).unwrap_or_default();
    if broken == "refuse" {
        eprintln!("qemu-system-x86_64: -device virtio-rng-pci: No 'PCI' bus found for device");
        return Ok(1);
    }
    let mut opts: Vec<(String, String)> = Vec::new();
    let mut paused = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-S" => paused = true,
            "-nodefaults" | "-nographic" | "-no-reboot" => {}
            o if o.starts_with('-') => {
                let v = it.next().with_context(|| format!("{o} needs a value"))?;
                opts.push((o.to_string(), v.clone()));
            }
            o => bail!("unexpected argument {o:?}"),
        }
    }
    let get = |o: &'static str| {
        opts.iter()
            .filter(move |(k, _)| k == o)
            .map(|(_, v)| v.as_str())
    };
    let machine = first(get("-M").next().context("no -M")?).to_string();
    let append = get("-append").next().unwrap_or("").to_string();
    let x86_exit = get("-device").any(|d| d.starts_with("isa-debug-exit"));
    let hold = get("-action").any(|a| a == "shutdown=pause");
    let legacy = get("-global").any(|g| g == "virtio-mmio.force-legacy=on")
        || get("-device").any(|d| d.contains("disable-modern=on"));
    let mmio = get("-device").any(|d| first(d).ends_with("-device"));
    let chardevs: BTreeMap<String, BTreeMap<String, String>> = get("-chardev")
        .map(|c| {
            let p = props(c);
            (p.get("id").cloned().unwrap_or_default(), p)
        })
        .collect();
    let drives: BTreeMap<String, String> = get("-drive")
        .map(|d| {
            let p = props(d);
            (
                p.get("id").cloned().unwrap_or_default(),
                p.get("file").cloned().unwrap_or_default(),
            )
        })
        .collect();
    let netdevs: BTreeMap<String, u16> = get("-netdev")
        .map(|n| {
            let p = props(n);
            let port = p.get("addr.port").and_then(|p| p.parse().ok()).unwrap_or(0);
            (p.get("id").cloned().unwrap_or_default(), port)
        })
        .collect();
    let console_file = chardevs
        .get("con0")
        .and_then(|c| c.get("path"))
        .cloned()
        .context("no console chardev con0")?;

    // The guest options the model understands.
    let mut words: BTreeMap<&str, &str> = BTreeMap::new();
    for w in append.split_whitespace() {
        if let Some((k, v)) = w.split_once('=') {
            words.insert(k, v);
        }
    }
    let num = |k: &str| words.get(k).and_then(|v| v.parse::<u64>().ok());
    let write = words.get("sg.blk.write").map(|v| {
        let p: Vec<u64> = v.split(':').filter_map(|x| x.parse().ok()).collect();
        (p[0], p[1], p[2])
    });
    let write_disk = num("sg.blk.disk").unwrap_or(0) as usize;
    let blk_read = num("sg.blk.read").unwrap_or(oracle::DEFAULT_BLK_READ);
    let frames = num("sg.net.frames").unwrap_or(u64::from(echo::DEFAULT_FRAMES)) as u32;
    let console_read = num("sg.console.read").unwrap_or(oracle::DEFAULT_CONSOLE_READ);
    let secure_mode = words.get("sg.secure").copied().unwrap_or("auto");
    let emulate = secure_mode == "emulate";
    let legacy_bounce = words.get("sg.legacy_devices") == Some(&"bounce");
    let leak = words.get("sg.debug.leak") == Some(&"1");

    // QEMU connects its stream netdevs at startup, before the guest runs.
    let mut sockets: BTreeMap<String, TcpStream> = BTreeMap::new();
    for (id, port) in &netdevs {
        let s = TcpStream::connect((Ipv4Addr::LOCALHOST, *port))
            .with_context(|| format!("connecting netdev {id} to port {port}"))?;
        sockets.insert(id.clone(), s);
    }
    let mut qmp = None;
    if paused {
        let sock = get("-qmp")
            .next()
            .and_then(|q| q.strip_prefix("unix:"))
            .map(first)
            .context("-S without -qmp")?;
        let mut q = FakeQmp::accept(sock)?;
        q.serve("prelaunch", "cont", &|_, _| Vec::new())?;
        qmp = Some(q);
    }
    let boot = json!({"event": "boot", "v": 1, "t_us": null, "arch": if machine.starts_with("pseries") { "ppc64le" } else { "x86_64" },
        "machine": machine, "firmware": "fake", "guest": "fake", "load_addr": "0x100000",
        "image_end": "0x200000", "ram_bytes": 536_870_912u64, "ram_top": "0x20000000",
        "memory": [{"base": "0x0", "size": 536_870_912u64, "kind": "ram", "label": "ram"}],
        "memory_dropped": 0, "cpus": 1, "cmdline": append, "console": "fake", "tick_hz": null,
        "tick_source": "fake", "entry_to_boot_ticks": 0, "entry_to_boot_us": null});
    let secure_record = |action: &str| {
        json!({"event": "secure", "v": 1, "t_us": null, "mode": secure_mode,
            "platform": if emulate { "emulated" } else { "none" }, "secure": emulate,
            "action": action, "reasons": [format!("sg.secure={secure_mode}")],
            "facts": {"ultravisor": false, "msr_s": false, "sev_status": "0x0", "tdx": false},
            "legacy_devices": if legacy_bounce { "bounce" } else { "refuse" },
            "granularity": 4096})
    };
    if secure_mode == "on" {
        // No PEF, SEV or TDX here: reject before any device is touched.
        let end = json!({"event": "end", "v": 1, "t_us": null, "verdict": "reject",
            "errors": 0, "warnings": 0, "entry_to_end_us": null});
        let mut out = String::new();
        for r in [boot, secure_record("reject"), end] {
            out.push_str(&format!("@sg {r}\n"));
        }
        fs::write(&console_file, out)?;
        return finish(qmp, hold, &broken, x86_exit, 5, &|_, _| Vec::new());
    }

    let packed_asked = get("-device").any(|d| d.contains("packed=on"));
    let offered = if legacy {
        0x1000_0206u64
    } else {
        (1u64 << VERSION_1.0) | 0x206 | if packed_asked { 1 << RING_PACKED.0 } else { 0 }
    };
    let accepted_all = offered & !0x1000_0000;
    let names = |w: u64| -> Vec<&str> {
        [VERSION_1, ACCESS_PLATFORM, RING_PACKED]
            .into_iter()
            .filter(|(b, _)| w & (1 << b) != 0)
            .map(|(_, n)| n)
            .collect()
    };
    let transport = match (mmio, legacy) {
        (true, true) => "virtio-mmio-v1",
        (true, false) => "virtio-mmio-v2",
        (false, true) => "virtio-pci-legacy",
        (false, false) => "virtio-pci-modern",
    };
    let ring = if accepted_all & (1 << RING_PACKED.0) != 0 {
        "packed"
    } else {
        "split"
    };
    let mut locations = Vec::new();
    let mut records = Vec::new();
    let mut n_blk = 0;
    for d in get("-device") {
        let kind = first(d);
        let p = props(d);
        let dev = match kind.rsplit_once('-').map(|(a, _)| a) {
            Some("virtio-blk") => "blk",
            Some("virtio-net") => "net",
            Some("virtio-serial") => "console",
            Some("virtio-rng") => "rng",
            _ => continue,
        };
        let location = if mmio {
            format!("/virtio_mmio@feb{:05x}", 0x2e00 - 0x200 * locations.len())
        } else {
            format!("00:{:02x}.0", locations.len() + 1)
        };
        locations.push(location.clone());
        let id = match dev {
            "net" => 1,
            "blk" => 2,
            "console" => 3,
            _ => 4,
        };
        // iommu_platform=on offers ACCESS_PLATFORM where the transport has bit 33.
        let ap = !legacy && p.get("iommu_platform").map(String::as_str) == Some("on");
        let dma = match (emulate, ap, legacy_bounce) {
            (false, _, _) => DmaExpect::Direct,
            (true, true, _) => DmaExpect::Bounce(DmaExpect::NEGOTIATED),
            (true, false, true) => DmaExpect::Bounce(DmaExpect::LEGACY_BOUNCE),
            (true, false, false) => DmaExpect::Refused,
        };
        let refused = dma == DmaExpect::Refused;
        let offered = offered | if ap { 1 << ACCESS_PLATFORM.0 } else { 0 };
        let accepted = if refused {
            0
        } else {
            accepted_all | if ap { 1 << ACCESS_PLATFORM.0 } else { 0 }
        };
        let mut r = json!({"event": "virtio", "v": 1, "t_us": null, "device": dev,
            "device_id": id, "transport": transport, "location": location,
            "features_offered": format!("{offered:#x}"), "features_accepted": format!("{accepted:#x}"),
            "features_offered_names": names(offered), "features_accepted_names": names(accepted),
            "access_platform": {"offered": ap, "accepted": ap && !refused},
            "queues": [{"index": 0, "size": 128, "ring": ring, "indirect": false, "event_idx": false}],
            "dma": dma.dma(), "dma_reason": dma.reason(), "requests": 1, "bytes_to_device": 0,
            "bytes_from_device": 0, "notifications": 1, "result": "ok"});
        if refused {
            // Set to FAILED, never given memory: nothing moves.
            r["queues"] = json!([]);
            r["requests"] = json!(0);
            r["notifications"] = json!(0);
            r["result"] = json!("refused");
            if dev == "blk" {
                n_blk += 1;
            }
            records.push(r);
            continue;
        }
        let m = r.as_object_mut().expect("an object");
        match dev {
            "blk" => {
                let file = &drives[p.get("drive").context("blk without drive")?];
                let mut disk = fs::read(file).with_context(|| format!("reading {file}"))?;
                let n = (blk_read as usize).min(disk.len());
                let mut read_crc = crc32c(&disk[..n]);
                if broken == "blk-read" {
                    read_crc ^= 1;
                }
                let mut wf = Value::Null;
                if let Some((off, len, seed)) = write.filter(|_| n_blk == write_disk) {
                    let mut data = vec![0u8; len as usize];
                    pattern::fill(seed, off, &mut data);
                    let crc = crc32c(&data);
                    if broken == "blk-write" {
                        data[0] ^= 1;
                    }
                    disk[off as usize..(off + len) as usize].copy_from_slice(&data);
                    fs::write(file, &disk)?;
                    wf = json!({"offset": off, "len": len, "seed": format!("{seed:#x}"),
                                "crc32c": format!("{crc:#x}")});
                }
                m.insert("capacity".into(), json!(disk.len()));
                m.insert("block_size".into(), json!(512));
                m.insert("serial".into(), json!(p.get("serial")));
                m.insert("read_bytes".into(), json!(n));
                m.insert("read_crc32c".into(), json!(format!("{read_crc:#x}")));
                m.insert("write".into(), wf);
                m.insert("flushed".into(), json!(write.is_some()));
                n_blk += 1;
            }
            "net" => {
                let mac: Mac = p.get("mac").context("no mac")?.parse()?;
                let sock = sockets
                    .get_mut(p.get("netdev").context("no netdev")?)
                    .context("unknown netdev")?;
                let (sent, received, verified) = net(sock, mac, frames, broken == "net-frame")?;
                m.insert("mac".into(), json!(mac.to_string()));
                m.insert("frames_sent".into(), json!(sent));
                m.insert("frames_received".into(), json!(received));
                m.insert("frames_verified".into(), json!(verified));
            }
            "console" => {
                let id = p.get("id").cloned().unwrap_or_default();
                let port = get("-device")
                    .map(props)
                    .find(|q| {
                        q.contains_key("virtconsole") && q.get("bus") == Some(&format!("{id}.0"))
                    })
                    .context("no virtconsole on the serial bus")?;
                let chardev = &chardevs[port.get("chardev").context("no chardev")?];
                let mut line = oracle::console_line();
                if broken == "console-line" {
                    line.insert(0, b'!');
                }
                fs::write(&chardev["path"], &line)?;
                let input = chardev
                    .get("input-path")
                    .map(fs::read)
                    .transpose()?
                    .unwrap_or_default();
                let upto = input
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(input.len(), |i| i + 1)
                    .min(console_read as usize);
                let read = &input[..upto];
                m.insert("written_bytes".into(), json!(line.len()));
                m.insert(
                    "written_crc32c".into(),
                    json!(format!("{:#x}", crc32c(&line))),
                );
                m.insert("read_bytes".into(), json!(read.len()));
                m.insert("read_crc32c".into(), json!(format!("{:#x}", crc32c(read))));
                m.insert("read_text".into(), json!(String::from_utf8_lossy(read)));
            }
            _ => {
                m.insert("entropy_bytes".into(), json!(64));
            }
        }
        if broken != "no-virtio" {
            records.push(r);
        }
    }

    let devtree = json!({"event": "devtree", "v": 1, "t_us": null,
        "source": if machine == "q35" || machine == "pc" { "pci-scan" } else { "fdt" },
        "nodes": 1, "size": 1, "model": null, "cpus": 1, "timebase_hz": null, "stdout_path": null,
        "virtio_mmio": if mmio { locations.iter().map(|l| json!({"path": l, "base": "0xfeb02e00", "size": 512, "irq": 23})).collect::<Vec<_>>() } else { vec![] },
        "pci_hosts": [],
        "pci": if mmio { vec![] } else { locations.iter().map(|l| json!({"path": format!("pci@{l}"), "bdf": l, "vendor": "0x1af4", "device": "0x1040", "class": "0x0", "virtio": true})).collect::<Vec<_>>() },
        "rtas": null, "ultravisor": false});
    let end = json!({"event": "end", "v": 1, "t_us": null, "verdict": "pass", "errors": 0,
        "warnings": 0, "entry_to_end_us": null});
    let mut head = vec![boot, devtree];
    let mut tail = Vec::new();
    if emulate {
        head.push(secure_record("proceed"));
        head.push(json!({"event": "swiotlb", "v": 1, "t_us": null,
            "base": format!("{POOL_BASE:#x}"), "device_base": format!("{POOL_BASE:#x}"),
            "size": POOL_SIZE, "slot_size": 2048, "slots": POOL_SIZE / 2048,
            "max_mapping": 256 << 10,
            "shares": [{"op": "share", "base": format!("{POOL_BASE:#x}"), "size": POOL_SIZE,
                        "result": "ok"}],
            "leak": leak}));
        tail.push(json!({"event": "secret", "v": 1, "t_us": null,
            "regions": [{"base": format!("{SECRET_BASE:#x}"), "size": SECRET_SIZE}]}));
        let maps = 1 + 2 * records.iter().filter(|r| r["dma"] == "bounce").count() as u64;
        tail.push(
            json!({"event": "swiotlb_stats", "v": 1, "t_us": null, "maps": maps,
            "unmaps": maps, "bounced_to_device": 1u64 << 30, "bounced_from_device": 1u64 << 30,
            "high_water_bytes": 1 << 20, "high_water_slots": 512, "exhausted": 0,
            "zeroed_bytes": if leak { 0 } else { maps * 4096 },
            "unzeroed_releases": if leak { maps } else { 0 }, "live_bytes": 0}),
        );
    }
    let mut out = String::from("fake firmware banner\r\n");
    for r in head.iter().chain(&records).chain(&tail).chain([&end]) {
        out.push_str(&format!("@sg {r}\n"));
    }
    fs::write(&console_file, out)?;
    // Guest memory as a dump sees it.
    let disk0 = drives
        .values()
        .next()
        .and_then(|f| fs::read(f).ok())
        .unwrap_or_default();
    let memory = |base: u64, size: u64| -> Vec<u8> {
        let mut m = vec![0u8; size as usize];
        let mut put = |at: u64, bytes: &[u8]| {
            // `bytes` at guest-physical `at`, as far as it overlaps [base, base + size).
            let (lo, hi) = (at.max(base), (at + bytes.len() as u64).min(base + size));
            if lo < hi {
                m[(lo - base) as usize..(hi - base) as usize]
                    .copy_from_slice(&bytes[(lo - at) as usize..(hi - at) as usize]);
            }
        };
        if emulate {
            let mut marks = vec![0u8; SECRET_SIZE as usize];
            if broken != "no-marks" {
                secret::fill(&mut marks, 0);
            }
            put(SECRET_BASE, &marks);
            if leak {
                // The release probe's marks, then what the disk reads left.
                let mut probe = vec![0u8; 4096];
                secret::fill(&mut probe, 0xc000_0000);
                put(POOL_BASE, &probe);
                put(POOL_BASE + 4096, &disk0[..disk0.len().min(64 << 10)]);
            }
            if broken == "secret-in-pool" {
                put(POOL_BASE + 0x1234, &secret::record(7));
            }
        }
        m
    };
    finish(qmp, hold, &broken, x86_exit, 1, &memory)
}

/// Ends the model as QEMU ends: held at shutdown (`-action shutdown=pause`) until `quit`, or
/// exiting with the isa-debug-exit status `debug_exit` (x86 with the device) or 0.
fn finish(
    qmp: Option<FakeQmp>,
    hold: bool,
    broken: &str,
    x86_exit: bool,
    debug_exit: i32,
    memory: &dyn Fn(u64, u64) -> Vec<u8>,
) -> Result<i32> {
    if x86_exit {
        return Ok(debug_exit);
    }
    match qmp {
        Some(mut q) if hold && broken != "no-hold" => {
            let reason = if broken == "reset" {
                "guest-reset"
            } else {
                "guest-shutdown"
            };
            q.event("SHUTDOWN", json!({"guest": true, "reason": reason}))?;
            q.event("STOP", json!({}))?;
            q.serve("shutdown", "quit", memory)?;
            Ok(0)
        }
        _ => Ok(0),
    }
}

/// The model's QMP server: one client.
struct FakeQmp {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl FakeQmp {
    fn accept(sock: &str) -> Result<FakeQmp> {
        let listener = UnixListener::bind(sock).with_context(|| format!("binding {sock}"))?;
        let (s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut w = s.try_clone()?;
        w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")?;
        Ok(FakeQmp {
            r: BufReader::new(s),
            w,
        })
    }

    fn event(&mut self, name: &str, data: Value) -> Result<()> {
        let e =
            json!({"event": name, "data": data, "timestamp": {"seconds": 0, "microseconds": 0}});
        self.w.write_all(format!("{e}\r\n").as_bytes())?;
        Ok(())
    }

    /// Answers commands in run state `status` until `until` (answered too); `pmemsave` writes
    /// `memory(val, size)` to its file.
    fn serve(
        &mut self,
        status: &str,
        until: &str,
        memory: &dyn Fn(u64, u64) -> Vec<u8>,
    ) -> Result<()> {
        for _ in 0..10_000 {
            let mut line = String::new();
            if self.r.read_line(&mut line)? == 0 {
                bail!("QMP client left before {until}");
            }
            let v: Value = serde_json::from_str(&line)?;
            let cmd = v["execute"].as_str().unwrap_or("");
            let answer = match cmd {
                "query-status" => json!({"status": status, "running": status == "running"}),
                "pmemsave" => {
                    let a = &v["arguments"];
                    let (val, size) = (
                        a["val"].as_u64().context("pmemsave val")?,
                        a["size"].as_u64().context("pmemsave size")?,
                    );
                    let file = a["filename"].as_str().context("pmemsave filename")?;
                    fs::write(file, memory(val, size))?;
                    json!({})
                }
                _ => json!({}),
            };
            self.w
                .write_all(format!("{}\r\n", json!({ "return": answer })).as_bytes())?;
            if cmd == until {
                return Ok(());
            }
        }
        bail!("no {until}")
    }
}

/// Sends `frames` guest frames and checks the echoes: (sent, received, verified).
fn net(s: &mut TcpStream, mac: Mac, frames: u32, break_one: bool) -> Result<(u32, u32, u32)> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let (mut received, mut verified) = (0, 0);
    for seq in 0..frames {
        let mut f = echo::guest_frame(mac, seq);
        if break_one && seq == 0 {
            f[30] ^= 1;
        }
        let mut framed = (f.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&f);
        s.write_all(&framed)?;
        if break_one && seq == 0 {
            continue; // not echoed
        }
        let mut len = [0u8; 4];
        s.read_exact(&mut len)?;
        let mut e = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut e)?;
        received += 1;
        if echo::echo_frame(&f).ok() == Some(e) {
            verified += 1;
        }
    }
    Ok((frames, received, verified))
}
