//! IOMMU integration tests: pseries devices with `iommu_platform=on,disable-legacy=on` sit behind
//! the PHB's sPAPR TCE IOMMU, which translates every DMA they make. The guest must map what
//! they use (docs/report.md: `virtio.iommu`, the `iommu` record): per request in the default
//! window (`sg.tce=dynamic`, batched or not), all RAM once in a DDW window (`sg.tce=ddw`, the
//! default), or only the shared pool once on a secure guest (`iommu+bounce`).
//!
//! Each run carries the matrix's standard workload behind the IOMMU (two disks, one written with
//! the pattern, a NIC on the echo backend, a console port, an entropy source), so the data
//! oracles check everything the devices moved through it; then the counts of every record must
//! be non-zero where they should be and consistent: every mapping undone, the devices' shares
//! adding up to the domain's totals. An impossible `sg.dma` must fail the device it cannot serve.

use std::path::PathBuf;

use harness::devices::{Ring, Transport};
use harness::matrix::{self, Cell, CellResult, CellVerdict, RunOptions};
use harness::oracle::IommuExpect;
use harness::report::{DeviceResult, Record};
use harness::secure::SecureExpect;
use harness::{Firmware, Machine, QemuConfig, RunResult};
use serde_json::Value;

fn pseries(firmware: Firmware) -> Cell {
    Cell {
        machine: Machine::Pseries,
        firmware: Some(firmware),
        transport: Transport::PciModern,
        ring: Ring::Split,
    }
}

fn image() -> PathBuf {
    let path = harness::default_kernel(Machine::Pseries.arch(), "secure-guest");
    assert!(
        path.is_file(),
        "{} is missing: run `make images` first",
        path.display()
    );
    path
}

/// Runs the standard cell behind the TCE IOMMU with `iommu` options (and `secure`), which must
/// pass every data oracle (and, secure, the memory oracle).
fn run(cell: Cell, iommu: IommuExpect, secure: Option<SecureExpect>) -> CellResult {
    image();
    let opts = RunOptions {
        secure,
        ..Default::default()
    };
    let mut e = matrix::expected_for(&cell, &opts);
    e.iommu_platform = true;
    e.iommu = Some(iommu);
    let r = matrix::run_cell(&cell, &e, &opts);
    r.contract_kept_run();
    assert_eq!(r.verdict, CellVerdict::Pass, "\n{r}");
    r
}

fn records<'a>(run: &'a RunResult, event: &'a str) -> Vec<&'a Record> {
    run.events(event).collect()
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

/// Calls and entries of one hypercall in an `iommu` object.
fn hcall(v: &Value, name: &str) -> (u64, u64) {
    let k = &v["calls_by_kind"][name];
    (u(k, "calls"), u(k, "entries"))
}

/// The checks every IOMMU run shares: each device took `dma`, its share of the domain is
/// consistent (every streaming mapping and every IOMMU mapping undone, calls adding up), and
/// the one `iommu` record holds the totals. Returns (device shares, the domain totals).
fn check_counts(r: &CellResult, dma: &str, mode: &str, mapping: &str) -> (Vec<Value>, Value) {
    let run = r.run.as_ref().unwrap();
    let devices = records(run, "virtio");
    assert_eq!(devices.len(), 5, "\n{r}");
    let mut shares = Vec::new();
    for v in &devices {
        assert_eq!(v.fields["dma"], dma, "{}", v.to_json());
        assert_eq!(v.fields["result"], "ok", "{}", v.to_json());
        let io = v.fields["iommu"].clone();
        assert_eq!(
            (
                io["backend"].as_str(),
                io["mode"].as_str(),
                io["mapping"].as_str()
            ),
            (Some("tce"), Some(mode), Some(mapping)),
            "{io}"
        );
        assert!(u(&io, "dma_maps") > 0, "{io}");
        assert_eq!(u(&io, "dma_maps"), u(&io, "dma_unmaps"), "{io}");
        assert_eq!(u(&io, "maps"), u(&io, "unmaps"), "{io}");
        assert_eq!(u(&io, "failures"), 0, "{io}");
        let kinds: u64 = ["H_PUT_TCE", "H_PUT_TCE_INDIRECT", "H_STUFF_TCE"]
            .iter()
            .map(|k| hcall(&io, k).0)
            .sum();
        assert_eq!(kinds, u(&io, "calls"), "{io}");
        shares.push(io);
    }
    let domains = records(run, "iommu");
    assert_eq!(domains.len(), 1, "one PHB, one domain\n{r}");
    let d = &domains[0].fields;
    assert_eq!(d["result"], "ok");
    assert_eq!(d["location"], "/pci@800000020000000");
    let total = d["iommu"].clone();
    for k in ["maps", "unmaps", "calls", "dma_maps", "dma_unmaps"] {
        let share: u64 = shares.iter().map(|s| u(s, k)).sum();
        // The domain's totals add what the setup did (static mappings) to the devices' shares.
        assert!(u(&total, k) >= share, "{k}: {total}");
    }
    (shares, total)
}

/// Dynamic TCE, batched: every request mapped with H_PUT_TCE_INDIRECT (or H_PUT_TCE for a
/// single page) and cleared with one H_STUFF_TCE; all of it undone at the end.
#[test]
fn vof_dynamic_batched() {
    let r = run(
        pseries(Firmware::Vof),
        IommuExpect {
            tce: Some("dynamic"),
            no_batch: false,
            x86: None,
        },
        None,
    );
    let (shares, total) = check_counts(&r, "iommu", "dynamic", "per-map");
    for s in &shares {
        assert!(u(s, "maps") > 0 && u(s, "pages_peak") > 0, "{s}");
        assert_eq!(u(s, "pages"), 0, "{s}");
        // One H_STUFF_TCE per unmap.
        assert_eq!(hcall(s, "H_STUFF_TCE").0, u(s, "unmaps"), "{s}");
        assert_eq!(
            hcall(s, "H_PUT_TCE").0 + hcall(s, "H_PUT_TCE_INDIRECT").0,
            u(s, "maps"),
            "one call per map: {s}"
        );
    }
    // The disks' 64 KiB requests span 16 or 17 pages: batched.
    assert!(hcall(&shares[0], "H_PUT_TCE_INDIRECT").1 > 16 * 32);
    assert_eq!(
        (total["domain"].as_str(), total["window_base"].as_str()),
        (Some("0x80000000"), Some("0x0"))
    );
    assert_eq!(
        (u(&total, "window_size"), u(&total, "page_size")),
        (1 << 30, 4096)
    );
    assert_eq!(u(&total, "pages"), 0, "nothing left mapped: {total}");
    assert_eq!(u(&total, "maps"), u(&total, "unmaps"));
    let calls: u64 = shares.iter().map(|s| u(s, "calls")).sum();
    assert_eq!(u(&total, "calls"), calls, "no setup calls: {total}");
    assert_eq!(u(&total, "setup_calls"), 0);
}

/// Dynamic TCE without batching: one H_PUT_TCE per page, both ways.
#[test]
fn vof_dynamic_unbatched() {
    let r = run(
        pseries(Firmware::Vof),
        IommuExpect {
            tce: Some("dynamic"),
            no_batch: true,
            x86: None,
        },
        None,
    );
    let (shares, total) = check_counts(&r, "iommu", "dynamic", "per-map");
    for s in &shares {
        let (calls, entries) = hcall(s, "H_PUT_TCE");
        assert_eq!(calls, entries, "{s}");
        assert_eq!(calls, u(s, "calls"), "{s}");
        assert_eq!(hcall(s, "H_PUT_TCE_INDIRECT"), (0, 0), "{s}");
        assert_eq!(hcall(s, "H_STUFF_TCE"), (0, 0), "{s}");
    }
    assert_eq!(u(&total, "pages"), 0);
}

/// The default: a DDW window with the largest page size, all of RAM mapped once at setup, no
/// hypercall per request.
#[test]
fn vof_ddw_by_default() {
    let r = run(pseries(Firmware::Vof), IommuExpect::default(), None);
    let (shares, total) = check_counts(&r, "iommu", "ddw", "ram");
    for s in &shares {
        assert_eq!(u(s, "calls"), 0, "no IOMMU work per request: {s}");
        assert_eq!(u(s, "maps"), 0, "{s}");
    }
    assert_eq!(total["mode_reason"], "default: the PHB offers DDW");
    assert_eq!(total["window_base"], "0x800000000000000");
    // 512 MiB of RAM in 16 MiB TCEs (QEMU's largest page by default): one indirect call.
    let page = u(&total, "page_size");
    assert_eq!(page, 16 << 20, "{total}");
    assert_eq!(u(&total, "window_size"), 512 << 20);
    assert_eq!(u(&total, "pages"), (512 << 20) / page);
    assert_eq!(hcall(&total, "H_PUT_TCE_INDIRECT"), (1, 32));
    assert_eq!((u(&total, "maps"), u(&total, "unmaps")), (1, 0));
    assert_eq!(u(&total, "setup_calls"), 2, "query and create: {total}");
}

/// A secure guest maps only the shared pool, once: the memory oracle (nothing private in the
/// pool, all zeros at the end) holds, and the devices' requests cost no hypercall.
fn secure_pool(mode: Option<&'static str>, firmware: Firmware) -> (Vec<Value>, Value) {
    let r = run(
        pseries(firmware),
        IommuExpect {
            tce: mode,
            no_batch: false,
            x86: None,
        },
        Some(SecureExpect::emulate()),
    );
    let run = r.run.as_ref().unwrap();
    assert!(run.held.as_ref().is_some_and(|h| h.paused), "held\n{r}");
    let (shares, total) = check_counts(&r, "iommu+bounce", mode.unwrap_or("ddw"), "pool");
    for s in &shares {
        assert_eq!(u(s, "calls"), 0, "{s}");
    }
    let pool = &records(run, "swiotlb")[0].fields;
    let size = pool["size"].as_u64().unwrap();
    assert_eq!(u(&total, "pages") * u(&total, "page_size"), size, "{total}");
    let stats = &records(run, "swiotlb_stats")[0].fields;
    assert!(stats["maps"].as_u64().unwrap() > 0);
    assert_eq!(stats["maps"], stats["unmaps"]);
    (shares, total)
}

#[test]
fn vof_secure_iommu_bounce_dynamic() {
    let (_, total) = secure_pool(Some("dynamic"), Firmware::Vof);
    // 4 MiB of pool in 4 KiB TCEs: two indirect calls of 512.
    assert_eq!(hcall(&total, "H_PUT_TCE_INDIRECT"), (2, 1024));
}

#[test]
fn vof_secure_iommu_bounce_ddw() {
    let (_, total) = secure_pool(None, Firmware::Vof);
    assert_eq!(total["window_base"], "0x800000000000000");
    assert_eq!(u(&total, "window_size"), 4 << 20);
}

/// SLOF costs ~5 s of TCG: one run, the default window after SLOF has probed the devices.
#[test]
fn slof_dynamic() {
    let r = run(
        pseries(Firmware::Slof),
        IommuExpect {
            tce: Some("dynamic"),
            no_batch: false,
            x86: None,
        },
        None,
    );
    let (_, total) = check_counts(&r, "iommu", "dynamic", "per-map");
    assert_eq!(u(&total, "pages"), 0);
}

/// A VOF boot of small disks (`iommu_platform` on or off each), with `append`.
fn disks(dir: &TempDir, append: &str, iommu: &[&str], extra: &[&str]) -> RunResult {
    let mut config = QemuConfig::new(Machine::Pseries).unwrap();
    config.kernel = image();
    config.firmware = Some(Firmware::Vof);
    config.append = Some(append.into());
    for (i, on) in iommu.iter().enumerate() {
        let file = dir.0.join(format!("d{i}.img"));
        std::fs::write(&file, vec![0x5a; 64 << 10]).unwrap();
        config.extra_args.extend([
            "-drive".into(),
            format!("file={},if=none,id=d{i},format=raw", file.display()),
            "-device".into(),
            format!("virtio-blk-pci,drive=d{i},disable-legacy=on,iommu_platform={on}"),
        ]);
    }
    config
        .extra_args
        .extend(extra.iter().map(|s| s.to_string()));
    let run = harness::run_in(&config, &dir.0).unwrap();
    assert!(run.protocol_errors.is_empty(), "{run}");
    run
}

/// `sg.dma=iommu` with one disk behind the IOMMU and one without `iommu_platform` (which
/// bypasses it): the first works, the second is an error record, and the run fails.
#[test]
fn an_impossible_sg_dma_fails_the_device() {
    let dir = tempdir("dma");
    let run = disks(&dir, "sg.dma=iommu sg.tce=dynamic", &["on", "off"], &[]);
    assert_eq!(run.verdict, harness::Outcome::Fail, "{run}");
    let v: Vec<harness::report::Virtio> = run.all();
    assert_eq!(v.len(), 2, "{run}");
    let (ok, bad) = if v[0].access_platform.offered {
        (&v[0], &v[1])
    } else {
        (&v[1], &v[0])
    };
    assert_eq!(
        (ok.result, ok.dma.as_str()),
        (DeviceResult::Ok, "iommu"),
        "{run}"
    );
    assert_eq!(
        (bad.result, bad.dma.as_str()),
        (DeviceResult::Error, "none")
    );
    let why = "sg.dma asks for an IOMMU, but the device did not negotiate ACCESS_PLATFORM";
    assert!(
        bad.error.as_deref().is_some_and(|e| e.contains(why)),
        "{bad:?}"
    );
    assert!(
        bad.dma_reason
            .as_deref()
            .is_some_and(|r| r.starts_with(why))
    );
    assert_eq!(bad.requests, 0);
    assert!(bad.queues.is_empty());
    assert_eq!(run.end().unwrap().errors, 1);
}

/// A PHB without DDW (QEMU `ddw=off`): the default falls back to dynamic TCE and says so; an
/// explicit `sg.tce=ddw` is a failed setup, the error of the device and of the `iommu` record.
#[test]
fn a_phb_without_ddw() {
    let no_ddw = ["-global", "spapr-pci-host-bridge.ddw=off"];
    let dir = tempdir("noddw");
    let run = disks(&dir, "", &["on"], &no_ddw);
    assert_eq!(run.verdict, harness::Outcome::Pass, "{run}");
    let v = &records(&run, "virtio")[0].fields;
    assert_eq!(v["iommu"]["mode"], "dynamic", "{run}");
    assert_eq!(v["iommu"]["mode_reason"], "default: the PHB offers no DDW");
    let run = disks(&dir, "sg.tce=ddw", &["on"], &no_ddw);
    assert_eq!(run.verdict, harness::Outcome::Fail, "{run}");
    let why = "the IOMMU could not be set up: invalid request: sg.tce=ddw, but the PHB has no \
               ibm,ddw-applicable";
    let v = &records(&run, "virtio")[0].fields;
    assert_eq!(v["error"], format!("dma: {why}"), "{run}");
    let d = &records(&run, "iommu")[0].fields;
    assert_eq!(d["result"], "error");
    assert!(why.ends_with(d["error"].as_str().unwrap()), "{run}");
}

/// `sg.iommu.map` is the x86 IOMMUs' mode: on pseries it changes nothing (the PHB's domain is
/// DDW by default, as without it) and says so in a warning record; the run passes.
#[test]
fn sg_iommu_map_has_no_effect_on_pseries() {
    let dir = tempdir("iommumap");
    let run = disks(&dir, "sg.iommu.map=static", &["on"], &[]);
    assert_eq!(run.verdict, harness::Outcome::Pass, "{run}");
    let o = records(&run, "option");
    assert_eq!(o.len(), 1, "{run}");
    let o = &o[0].fields;
    assert_eq!(
        (&o["level"], &o["option"], &o["value"]),
        (&"warning".into(), &"sg.iommu.map".into(), &"static".into()),
        "{run}"
    );
    assert!(o["message"].as_str().unwrap().contains("sg.tce"), "{run}");
    assert_eq!(run.end().unwrap().warnings, 1);
    let v = &records(&run, "virtio")[0].fields;
    assert_eq!(
        (&v["iommu"]["mode"], &v["iommu"]["mapping"]),
        (&"ddw".into(), &"ram".into()),
        "{run}"
    );
}

/// A private directory, removed at the end.
struct TempDir(PathBuf);

fn tempdir(what: &str) -> TempDir {
    let p = std::env::temp_dir().join(format!("sg-iommu-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&p).unwrap();
    TempDir(p)
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
