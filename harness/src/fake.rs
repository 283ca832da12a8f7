//! A model of QEMU running a correct guest, for testing the harness itself: `harness fake-qemu
//! <QEMU arguments>` reads the command line a matrix cell builds ([`crate::devices`]), serves
//! QMP until `cont` when started with `-S`, then does what docs/report.md says the guest does
//! with each device — reads and writes the disk images, sends frames to the echo backend and
//! checks the echoes, writes the console line and reads the host's input — and writes the report
//! to the console file. It exits as QEMU would (x86 with isa-debug-exit: 1; pseries: 0).
//!
//! `SG_FAKE_QEMU_BREAK=<what>` makes it wrong on purpose (`blk-read`, `blk-write`,
//! `net-frame`, `console-line`, `no-virtio`; `refuse`: exit at once as QEMU does on a bad
//! argument), so that tests can see the oracles catch it.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use secure_guest::crc32c::crc32c;
use secure_guest::pattern;
use serde_json::{Value, json};

use crate::devices::Mac;
use crate::echo;
use crate::oracle::{self, ACCESS_PLATFORM, RING_PACKED, VERSION_1};

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

    // QEMU connects its stream netdevs at startup, before the guest runs.
    let mut sockets: BTreeMap<String, TcpStream> = BTreeMap::new();
    for (id, port) in &netdevs {
        let s = TcpStream::connect((Ipv4Addr::LOCALHOST, *port))
            .with_context(|| format!("connecting netdev {id} to port {port}"))?;
        sockets.insert(id.clone(), s);
    }
    if paused {
        let sock = get("-qmp")
            .next()
            .and_then(|q| q.strip_prefix("unix:"))
            .map(first)
            .context("-S without -qmp")?;
        wait_for_cont(sock)?;
    }

    let packed_asked = get("-device").any(|d| d.contains("packed=on"));
    let offered = if legacy {
        0x1000_0206u64
    } else {
        (1u64 << VERSION_1.0) | 0x206 | if packed_asked { 1 << RING_PACKED.0 } else { 0 }
    };
    let accepted = offered & !0x1000_0000;
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
    let ring = if accepted & (1 << RING_PACKED.0) != 0 {
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
        let mut r = json!({"event": "virtio", "v": 1, "t_us": null, "device": dev,
            "device_id": id, "transport": transport, "location": location,
            "features_offered": format!("{offered:#x}"), "features_accepted": format!("{accepted:#x}"),
            "features_offered_names": names(offered), "features_accepted_names": names(accepted),
            "access_platform": {"offered": false, "accepted": false},
            "queues": [{"index": 0, "size": 128, "ring": ring, "indirect": false, "event_idx": false}],
            "dma": "direct", "requests": 1, "bytes_to_device": 0, "bytes_from_device": 0,
            "notifications": 1, "result": "ok"});
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
    let boot = json!({"event": "boot", "v": 1, "t_us": null, "arch": if machine.starts_with("pseries") { "ppc64le" } else { "x86_64" },
        "machine": machine, "firmware": "fake", "guest": "fake", "load_addr": "0x100000",
        "image_end": "0x200000", "ram_bytes": 1, "ram_top": "0x1", "memory": [],
        "memory_dropped": 0, "cpus": 1, "cmdline": append, "console": "fake", "tick_hz": null,
        "tick_source": "fake", "entry_to_boot_ticks": 0, "entry_to_boot_us": null});
    let end = json!({"event": "end", "v": 1, "t_us": null, "verdict": "pass", "errors": 0,
        "warnings": 0, "entry_to_end_us": null});
    let mut out = String::from("fake firmware banner\r\n");
    for r in [boot, devtree].iter().chain(&records).chain([&end]) {
        out.push_str(&format!("@sg {r}\n"));
    }
    fs::write(&console_file, out)?;
    Ok(if x86_exit { 1 } else { 0 })
}

/// Serves QMP until `cont`.
fn wait_for_cont(sock: &str) -> Result<()> {
    let listener = UnixListener::bind(sock).with_context(|| format!("binding {sock}"))?;
    let (s, _) = listener.accept()?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = s.try_clone()?;
    w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")?;
    let mut r = BufReader::new(s);
    for _ in 0..100 {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            bail!("QMP client left before cont");
        }
        let v: Value = serde_json::from_str(&line)?;
        w.write_all(b"{\"return\": {}}\r\n")?;
        if v["execute"] == "cont" {
            return Ok(());
        }
    }
    bail!("no cont")
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
