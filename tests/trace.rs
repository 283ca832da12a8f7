//! IOMMU trace integration tests: the trace plumbing, the parser and the IOMMU trace oracle
//! (`harness::trace`, `harness::iommu`; docs/report.md, "How the host checks IOMMU DMA") against
//! the installed QEMU.
//!
//! - The parser's format strings are the installed binaries' own, character for character.
//! - pseries: QEMU creates the PHB's TCE table (traced), and a device without `iommu_platform`
//!   never goes through it.
//! - pseries matrix cells behind the TCE IOMMU (`matrix --tce`): dynamic TCE, secure DDW
//!   (iommu+bounce), and SLOF, whose own TCE work before the guest is set apart, all pass the
//!   oracle with counts equal to the guest's.
//! - Negative controls: `sg.debug.unmap_early=1` (the device finds its buffer unmapped) and
//!   `sg.debug.map_private=1` (a secure guest maps a private page) must make the oracle FAIL,
//!   naming the trace line, the IOVA and the physical page.
//! - q35 with virtio-iommu, and with intel-iommu, which the guest drives: a device behind the
//!   IOMMU passes the oracle with translations and the guest's counts (VT-d: no fault, inside
//!   the pool when secure); a device without `iommu_platform` on the same machine bypasses the
//!   IOMMU, and an oracle that requires it behind the IOMMU must FAIL. The negative controls
//!   `sg.debug.unmap_early` (both) and `sg.debug.map_private` (virtio-iommu) must fail it too.
//! - x86 matrix cells behind an IOMMU (`matrix --x86-iommu`): every device of the matrix (two
//!   disks, a NIC, a console, an entropy source) behind virtio-iommu, and a secure cell behind
//!   VT-d, pass the data oracles and the IOMMU trace oracle.

use std::collections::HashSet;
use std::path::PathBuf;

use harness::devices::Iommu;
use harness::devices::{Ring, Transport};
use harness::iommu::{self, Kind, Space};
use harness::matrix::{self, Cell, CellResult, CellVerdict, RunOptions, TceMode};
use harness::report::Swiotlb;
use harness::secure::SecureExpect;
use harness::trace::{self, Bdf, Event, IommuKind, TraceLog};
use harness::{Arch, Firmware, Machine, Outcome, QemuConfig, RunResult};

/// The QEMU the harness would run for `arch`, resolved on `PATH`.
fn qemu_binary(arch: Arch) -> PathBuf {
    let machine = match arch {
        Arch::Ppc64le => Machine::Pseries,
        Arch::X86_64 => Machine::Q35,
    };
    let program = QemuConfig::new(machine).unwrap().qemu_program();
    if program.components().count() > 1 {
        return program;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(&program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{} is not on PATH", program.display()))
}

/// The log backend's format strings in a QEMU binary: what follows each occurrence of the
/// timestamped prefix the backend prints with, up to the string's NUL. (Strings are aligned in
/// the binary, so one need not start right after the previous one's NUL.)
fn log_formats(binary: &PathBuf) -> HashSet<String> {
    let bytes = std::fs::read(binary).unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
    const PREFIX: &[u8] = b"%d@%zu.%06zu:";
    let mut out = HashSet::new();
    let mut at = 0;
    while let Some(p) = bytes[at..].iter().position(|&b| b == b'%') {
        let start = at + p;
        at = start + 1;
        if bytes[start..].starts_with(PREFIX) {
            let rest = &bytes[start + PREFIX.len()..];
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            out.insert(String::from_utf8_lossy(&rest[..end]).into_owned());
        }
    }
    out
}

#[test]
fn formats_match_the_installed_qemu() {
    let mut all = HashSet::new();
    for arch in Arch::ALL {
        let f = log_formats(&qemu_binary(arch));
        assert!(
            f.len() > 1000,
            "{arch}: only {} trace formats found: is QEMU built with the log trace backend?",
            f.len()
        );
        all.extend(f);
    }
    let mut missing = Vec::new();
    for f in trace::FORMATS {
        let want = format!("{} {}\n", f.name, f.format);
        if !all.contains(&want) {
            let theirs = all
                .iter()
                .find(|s| s.split(' ').next() == Some(f.name))
                .map_or("no such event".to_string(), |s| format!("{s:?}"));
            missing.push(format!("{want:?}: QEMU has {theirs}"));
        }
    }
    assert!(
        missing.is_empty(),
        "the parser's formats differ from the installed QEMU's:\n{}",
        missing.join("\n")
    );
}

fn image(arch: Arch) -> PathBuf {
    let path = harness::default_kernel(arch, "secure-guest");
    assert!(
        path.is_file(),
        "{} is missing: run `make images` first",
        path.display()
    );
    path
}

fn traced(machine: Machine, iommus: &[IommuKind], devices: &[&str], append: &str) -> QemuConfig {
    let mut c = QemuConfig::new(machine).expect("harness defaults (check $ACCEL)");
    c.kernel = image(c.arch);
    c.trace_events = trace::patterns_for(iommus);
    c.devices = devices.iter().map(|d| d.to_string()).collect();
    c.append = (!append.is_empty()).then(|| append.to_string());
    c
}

fn run(c: &QemuConfig) -> RunResult {
    let r = harness::run(c).unwrap_or_else(|e| panic!("{}: {e:#}", c.reproduce()));
    assert!(
        r.protocol_errors.is_empty(),
        "report breaks docs/report.md:\n{r}"
    );
    r
}

/// Every line QEMU wrote is an event the parser knows, or another trace event: nothing
/// malformed, nothing unknown.
fn clean_trace(r: &RunResult) -> &TraceLog {
    let t = r
        .trace
        .as_ref()
        .unwrap_or_else(|| panic!("a traced run without a trace\n{r}"));
    assert!(t.problem.is_none(), "{t:?}");
    assert_eq!(
        (t.malformed, t.unknown),
        (0, 0),
        "malformed {:?}, unknown {:?}\n{r}",
        t.malformed_lines,
        t.unknown_lines
    );
    assert!(!t.events.is_empty(), "no modelled event at all\n{r}");
    t
}

const PSERIES_LIOBN: u64 = 0x8000_0000;

#[test]
fn pseries_direct_run_traces_the_tce_table_and_no_access() {
    let c = traced(
        Machine::Pseries,
        &[IommuKind::SpaprTce],
        &["virtio-rng-pci,disable-legacy=on"],
        "",
    );
    let r = run(&c);
    assert_eq!(r.verdict, Outcome::Pass, "{r}");
    assert!(
        r.command_line
            .windows(4)
            .any(|w| w == ["-trace", "enable=spapr_iommu_*", "-D", "trace.log"]),
        "{r}"
    );
    let t = clean_trace(&r);
    assert!(
        t.events.iter().any(|e| e.event
            == Event::TceNewTable {
                liobn: PSERIES_LIOBN,
                fd: -1
            }),
        "no TCE table for the PHB's default window\n{r}"
    );
    assert_eq!(t.count("spapr_iommu_xlate"), 0, "{r}");
    let v = iommu::check_run(&r);
    assert!(v.passed(), "{v}\n{r}");
    assert_eq!(v.totals().translations, 0);
}

/// A matrix cell behind the TCE IOMMU (`matrix --tce MODE`, with `secure`): the whole workload
/// (two disks, a NIC, a console port, an rng) must pass every oracle, the IOMMU trace oracle
/// among them; returns the run and the oracle's verdict, with the evidence checked here: a clean
/// trace, translations on the guest's window, and its counts equal to the guest's.
fn tce_cell(
    firmware: Firmware,
    ring: Ring,
    tce: TceMode,
    secure: Option<SecureExpect>,
) -> (CellResult, iommu::Verdict) {
    image(Arch::Ppc64le);
    let cell = Cell {
        machine: Machine::Pseries,
        firmware: Some(firmware),
        transport: Transport::PciModern,
        ring,
    };
    let opts = RunOptions {
        tce: Some(tce),
        secure,
        ..Default::default()
    };
    let e = matrix::expected_for(&cell, &opts);
    assert_eq!(matrix::traced_iommu(&cell, &e), Some(IommuKind::SpaprTce));
    let r = matrix::run_cell(&cell, &e, &opts);
    assert_eq!(r.verdict, CellVerdict::Pass, "\n{r}");
    let run = r.run.as_ref().unwrap();
    clean_trace(run);
    let v = iommu::check_run(run);
    assert!(v.passed(), "{v}\n{r}");
    let domains = iommu::guest_domains(&run.records);
    assert_eq!(domains.len(), 1, "one PHB, one domain\n{r}");
    let space = domains[0].space.expect("a TCE domain");
    let host = &v.spaces[&space];
    assert!(host.translations > 100, "{v}");
    assert!(host.maps > 0, "{v}");
    let guest: u64 = domains[0].counts.calls.iter().map(|c| c.calls).sum();
    assert_eq!(
        host.calls.values().map(|c| c.calls).sum::<u64>(),
        guest,
        "{v}"
    );
    (r, v)
}

#[test]
fn pseries_dynamic_tce_cell_passes_the_oracle() {
    let (_, v) = tce_cell(Firmware::Vof, Ring::Split, TceMode::Dynamic, None);
    let t = v.totals();
    // Every request mapped and unmapped: nothing is left in the window.
    assert_eq!(t.live_at_end, 0, "{v}");
    assert!(t.calls(iommu::H_PUT_TCE_INDIRECT).calls > 0, "{v}");
    assert!(t.calls(iommu::H_STUFF_TCE).calls > 0, "{v}");
}

#[test]
fn pseries_secure_ddw_cell_passes_the_oracle_inside_the_pool() {
    let (r, v) = tce_cell(
        Firmware::Vof,
        Ring::Packed,
        TceMode::Ddw,
        Some(SecureExpect::emulate()),
    );
    let run = r.run.as_ref().unwrap();
    let cfg = iommu::config_for(&run.records, Arch::Ppc64le);
    let pool: Swiotlb = run.first().expect("a swiotlb record");
    assert_eq!(
        cfg.pool,
        Some(vec![iommu::PhysRange {
            base: pool.base.0,
            size: pool.size
        }]),
        "the oracle checked every page against the pool"
    );
    assert!(cfg.expect_translations);
    // The pool stays mapped, as a whole, for the whole run: a DDW window of its own.
    let (space, c) = v
        .spaces
        .iter()
        .find(|(_, c)| c.translations > 0)
        .expect("a window with translations");
    assert_ne!(
        *space,
        Space::Tce {
            liobn: PSERIES_LIOBN
        },
        "{v}"
    );
    assert_eq!(c.unmaps, 0, "{v}");
    assert!(c.live_at_end > 0, "{v}");
}

/// SLOF drives the virtio devices through the TCE window before the guest runs: its work comes
/// first in the trace, is set apart, and left nothing mapped.
#[test]
fn pseries_slof_firmware_tce_work_is_set_apart() {
    let (_, v) = tce_cell(Firmware::Slof, Ring::Packed, TceMode::Dynamic, None);
    assert!(v.start_line > 1, "{v}");
    assert!(v.firmware.calls(iommu::H_PUT_TCE).calls > 0, "{v}");
    assert!(v.firmware.translations > 0, "{v}");
    assert_eq!(v.count(Kind::Stale), 0, "{v}");
}

/// A small traced pseries run: one rng behind the TCE IOMMU, with guest options `append`.
fn rng_behind_tce(append: &str) -> (RunResult, iommu::Verdict) {
    let c = traced(
        Machine::Pseries,
        &[IommuKind::SpaprTce],
        &["virtio-rng-pci,disable-legacy=on,iommu_platform=on"],
        append,
    );
    let r = run(&c);
    clean_trace(&r);
    let v = iommu::check_run(&r);
    (r, v)
}

/// Negative control, "unmap too early": `sg.debug.unmap_early=1` removes each data buffer's
/// TCEs right after mapping them. QEMU refuses the device's accesses (`xlate ... perm=0`), and
/// the oracle must fail on exactly those, naming the trace line that unmapped the page.
#[test]
fn unmap_too_early_fails_the_oracle() {
    let (ok, v) = rng_behind_tce("sg.tce=dynamic");
    assert_eq!(ok.verdict, Outcome::Pass, "{ok}");
    assert!(v.passed(), "{v}");
    let (r, v) = rng_behind_tce("sg.tce=dynamic sg.debug.unmap_early=1 sg.virtio.timeout_ms=300");
    let t = r.trace.as_ref().unwrap();
    let refused: Vec<(usize, u64)> = t
        .events
        .iter()
        .filter_map(|e| match e.event {
            Event::TceXlate {
                liobn: PSERIES_LIOBN,
                addr,
                perm: 0,
                ..
            } => Some((e.line, addr)),
            _ => None,
        })
        .collect();
    assert!(!refused.is_empty(), "QEMU refused nothing\n{r}");
    assert!(!v.passed(), "the oracle passed an early unmap\n{r}");
    assert_eq!(v.count(Kind::NotMapped), refused.len(), "{v}");
    let first = &v.violations[0];
    assert_eq!(
        (first.line, first.iova),
        (refused[0].0, Some(refused[0].1)),
        "{v}"
    );
    assert_eq!(
        first.space,
        Some(Space::Tce {
            liobn: PSERIES_LIOBN
        })
    );
    // The line it names emptied that very page.
    let unmapped_at: usize = first
        .message
        .rsplit("unmapped at line ")
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no unmapping line in {first}"));
    let page = refused[0].1 & !0xfff;
    let emptied = t.events.iter().any(|e| {
        e.line == unmapped_at
            && match e.event {
                Event::TcePut { ioba, tce, .. } => ioba == page && tce & 3 == 0,
                Event::TceStuff {
                    ioba_end,
                    tce_value,
                    npages,
                    ..
                } => {
                    tce_value & 3 == 0
                        && (ioba_end - 0x1000 * npages as u64..ioba_end).contains(&page)
                }
                _ => false,
            }
    });
    assert!(
        emptied,
        "line {unmapped_at} did not unmap page {page:#x}\n{v}"
    );
}

/// Negative control, "map a private page": `sg.debug.map_private=1` makes a secure guest's
/// iommu+bounce domain map guest-physical page 0 next to the pool. The device never touches
/// it, and the oracle must still fail: the mapping alone lets the device reach private memory.
#[test]
fn a_private_page_mapped_fails_the_oracle() {
    for tce in ["dynamic", "ddw"] {
        let (ok, v) = rng_behind_tce(&format!("sg.secure=emulate sg.tce={tce}"));
        assert_eq!(ok.verdict, Outcome::Pass, "{ok}");
        assert!(v.passed(), "{tce}: {v}");
        let (r, v) = rng_behind_tce(&format!(
            "sg.secure=emulate sg.tce={tce} sg.debug.map_private=1"
        ));
        assert_eq!(r.verdict, Outcome::Pass, "the guest does not notice\n{r}");
        assert_eq!(v.count(Kind::OutsidePool), 1, "{tce}: {v}");
        assert_eq!(v.violation_count, 1, "{tce}: {v}");
        let x = &v.violations[0];
        assert_eq!(x.phys, Some(0), "{v}");
        assert!(
            x.message
                .starts_with("mapped a page outside the shared pool"),
            "{v}"
        );
    }
}

/// The PCI address of the rng whose `dma` is `dma`.
fn rng_bdf(r: &RunResult, dma: &str) -> Bdf {
    let v = r
        .all::<harness::report::Virtio>()
        .into_iter()
        .find(|v| v.device == "rng" && v.dma == dma)
        .unwrap_or_else(|| panic!("no rng on {dma}\n{r}"));
    iommu::parse_bdf(&v.location).unwrap_or_else(|| panic!("location {:?}", v.location))
}

/// The oracle that requires `device`'s DMA to go through the IOMMU.
fn require_iommu(r: &RunResult, device: Bdf) -> iommu::Verdict {
    let cfg = iommu::Config {
        iommu_devices: vec![device],
        expect_translations: true,
        ..Default::default()
    };
    iommu::check(r.trace.as_ref().unwrap(), &cfg)
}

/// q35 with `kind`'s IOMMU (which the guest drives) and two entropy devices: one behind it
/// (`iommu_platform=on`), one not, with guest options `append`.
fn q35_two_rngs(kind: IommuKind, append: &str) -> RunResult {
    let unit = match kind {
        IommuKind::VirtioIommu => "virtio-iommu-pci",
        _ => "intel-iommu,intremap=off",
    };
    let c = traced(
        Machine::Q35,
        &[kind],
        &[
            unit,
            "virtio-rng-pci,disable-legacy=on,iommu_platform=on",
            "virtio-rng-pci,disable-legacy=on",
        ],
        append,
    );
    let r = run(&c);
    clean_trace(&r);
    r
}

/// The device's IOMMU share as the guest reports it: (calls, entries) of `kind`.
fn guest_calls(r: &RunResult, dma: &str, kind: &str) -> (u64, u64) {
    let rec = r
        .events("virtio")
        .find(|v| {
            v.get("device").and_then(|d| d.as_str()) == Some("rng")
                && v.get("dma").and_then(|d| d.as_str()) == Some(dma)
        })
        .unwrap_or_else(|| panic!("no rng on {dma}\n{r}"));
    let k = &rec.fields["iommu"]["calls_by_kind"][kind];
    (k["calls"].as_u64().unwrap(), k["entries"].as_u64().unwrap())
}

/// virtio-iommu: the rng behind it passes the oracle (every access translated to a page mapped
/// at that moment, the host's MAP/UNMAP counts the guest's); the rng without `iommu_platform`
/// bypasses it, and an oracle that requires it behind the IOMMU must say so.
#[test]
fn q35_virtio_iommu_passes_the_oracle_and_bypass_is_caught() {
    let r = q35_two_rngs(IommuKind::VirtioIommu, "");
    assert_eq!(r.verdict, Outcome::Pass, "{r}");
    let behind = rng_bdf(&r, "iommu");
    let bypass = rng_bdf(&r, "direct");
    let v = iommu::check_run(&r);
    assert!(v.passed(), "{v}\n{r}");
    assert_eq!(
        iommu::config_for(&r.records, Arch::X86_64).iommu_devices,
        vec![behind]
    );
    assert!(v.device_translations[&behind] > 0, "{v}");
    assert!(!v.device_translations.contains_key(&bypass), "{v}");
    let domains = iommu::guest_domains(&r.records);
    assert_eq!(domains.len(), 1, "{r}");
    let host = &v.spaces[&domains[0].space.expect("a virtio-iommu domain")];
    assert!(host.translations > 0 && host.maps > 0, "{v}");
    assert_eq!((host.faults, host.live_at_end), (0, 0), "{v}");
    // The device's share (its record) is all the MAP and UNMAP work of the domain.
    for kind in [iommu::VIOMMU_MAP, iommu::VIOMMU_UNMAP] {
        let h = host.calls(kind);
        assert_eq!(
            guest_calls(&r, "iommu", kind),
            (h.calls, h.entries),
            "{kind}: {v}"
        );
    }
    assert_eq!(host.calls(iommu::VIOMMU_ATTACH).calls, 1, "{v}");
    let v = require_iommu(&r, bypass);
    assert_eq!(v.count(Kind::Untranslated), 1, "{v}");
    assert_eq!(v.violation_count, 1, "{v}");
    assert!(
        v.violations[0].message.contains("bypasses the IOMMU"),
        "{v}"
    );
}

/// intel-iommu (VT-d): the trace shows translations and faults, not the page tables. The rng
/// behind it has translations and no fault (secure: every one inside the pool), the guest's
/// IOTLB commands are the traced invalidations; the other rng bypasses it.
#[test]
fn q35_intel_iommu_passes_the_oracle_and_bypass_is_caught() {
    for append in ["", "sg.secure=emulate sg.legacy_devices=bounce"] {
        let r = q35_two_rngs(IommuKind::IntelVtd, append);
        assert_eq!(r.verdict, Outcome::Pass, "{r}");
        let secure = !append.is_empty();
        let dma = if secure { "iommu+bounce" } else { "iommu" };
        let behind = rng_bdf(&r, dma);
        let bypass = rng_bdf(&r, if secure { "bounce" } else { "direct" });
        let t = r.trace.as_ref().unwrap();
        assert_eq!(t.count("vtd_dmar_fault"), 0, "{r}");
        let v = iommu::check_run(&r);
        assert!(v.passed(), "{append}: {v}\n{r}");
        let cfg = iommu::config_for(&r.records, Arch::X86_64);
        assert_eq!(cfg.pool.is_some(), secure);
        let host = &v.spaces[&Space::Vtd { device: behind }];
        assert!(host.translations > 0, "{v}");
        assert_eq!(host.faults, 0, "{v}");
        assert!(v.unit_calls.contains_key(iommu::VTD_IOTLB_GLOBAL), "{v}");
        let v = require_iommu(&r, bypass);
        assert_eq!(v.count(Kind::Untranslated), 1, "{v}");
        assert!(
            v.violations[0].message.contains("bypasses the IOMMU"),
            "{v}"
        );
    }
}

/// Negative control on x86, "unmap too early": the device finds its buffers unmapped. The
/// virtio-iommu refuses (a fault on its event queue, or none), VT-d records faults: the oracle
/// must fail on exactly those.
#[test]
fn q35_unmap_too_early_fails_the_oracle() {
    let append = "sg.debug.unmap_early=1 sg.virtio.timeout_ms=300";
    let r = q35_two_rngs(IommuKind::VirtioIommu, append);
    let v = iommu::check_run(&r);
    assert!(!v.passed(), "the oracle passed an early unmap\n{r}");
    assert!(v.count(Kind::NotMapped) > 0, "{v}");
    assert!(
        v.violations.iter().all(|x| x.kind == Kind::NotMapped),
        "{v}"
    );
    assert!(
        v.violations[0]
            .message
            .contains("after it was unmapped at line"),
        "{v}"
    );
    let r = q35_two_rngs(IommuKind::IntelVtd, append);
    let t = r.trace.as_ref().unwrap();
    let faults = t.count("vtd_dmar_fault");
    assert!(faults > 0, "VT-d recorded no fault\n{r}");
    let v = iommu::check_run(&r);
    assert_eq!(v.count(Kind::Fault), faults, "{v}");
}

/// Negative control on x86, "map a private page": `sg.debug.map_private=1` makes a secure
/// guest's virtio-iommu pool domain map guest-physical page 0 after the pool. The device never
/// touches it; the MAP request alone must fail the oracle. (VT-d's page tables are not in the
/// trace: there the oracle sees a private page only when the device reaches it.)
#[test]
fn q35_a_private_page_mapped_fails_the_oracle() {
    let r = q35_two_rngs(
        IommuKind::VirtioIommu,
        "sg.secure=emulate sg.legacy_devices=bounce sg.debug.map_private=1",
    );
    assert_eq!(r.verdict, Outcome::Pass, "the guest does not notice\n{r}");
    let v = iommu::check_run(&r);
    assert_eq!(v.count(Kind::OutsidePool), 1, "{v}");
    assert_eq!(v.violation_count, 1, "{v}");
    let x = &v.violations[0];
    assert_eq!(x.phys, Some(0), "{v}");
    assert!(
        x.message
            .starts_with("mapped 0x1000 bytes outside the shared pool"),
        "{v}"
    );
}

/// A q35 pci-modern matrix cell with every device behind `iommu`, run and checked by the data
/// oracles and the IOMMU trace oracle.
fn x86_iommu_cell(iommu: Iommu, ring: Ring, secure: Option<SecureExpect>) -> iommu::Verdict {
    image(Arch::X86_64);
    let cell = Cell {
        machine: Machine::Q35,
        firmware: None,
        transport: Transport::PciModern,
        ring,
    };
    let opts = RunOptions {
        x86_iommu: Some(iommu),
        secure,
        ..Default::default()
    };
    let e = matrix::expected_for(&cell, &opts);
    assert!(e.iommu_platform);
    let r = matrix::run_cell(&cell, &e, &opts);
    assert_eq!(r.verdict, CellVerdict::Pass, "\n{r}");
    let run = r.run.as_ref().unwrap();
    clean_trace(run);
    let v = iommu::check_run(run);
    assert!(v.passed(), "{v}\n{r}");
    assert!(v.totals().translations > 100, "{v}");
    v
}

#[test]
fn q35_virtio_iommu_matrix_cell_passes_the_oracle() {
    let v = x86_iommu_cell(Iommu::VirtioIommu, Ring::Packed, None);
    assert_eq!(v.totals().live_at_end, 0, "{v}");
}

#[test]
fn q35_secure_vtd_matrix_cell_passes_the_oracle() {
    x86_iommu_cell(Iommu::Vtd, Ring::Split, Some(SecureExpect::emulate()));
}
