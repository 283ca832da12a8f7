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
//! - q35 with virtio-iommu, and with intel-iommu: the guest does not program either, so every
//!   event QEMU traces must parse, and an oracle that requires the device behind its IOMMU must
//!   FAIL (the device's DMA bypasses it).

use std::collections::HashSet;
use std::path::PathBuf;

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

/// The rng's PCI address on q35 when an IOMMU device comes first.
fn rng_bdf(r: &RunResult) -> Bdf {
    let v = r
        .all::<harness::report::Virtio>()
        .into_iter()
        .find(|v| v.device == "rng")
        .unwrap_or_else(|| panic!("no rng record\n{r}"));
    iommu::parse_bdf(&v.location).unwrap_or_else(|| panic!("location {:?}", v.location))
}

/// The oracle that requires the rng's DMA to go through the IOMMU.
fn require_iommu(r: &RunResult, rng: Bdf) -> iommu::Verdict {
    let cfg = iommu::Config {
        iommu_devices: vec![rng],
        expect_translations: true,
        ..Default::default()
    };
    iommu::check(r.trace.as_ref().unwrap(), &cfg)
}

#[test]
fn q35_virtio_iommu_events_parse_and_bypass_is_caught() {
    let c = traced(
        Machine::Q35,
        &[IommuKind::VirtioIommu],
        &[
            "virtio-iommu-pci",
            "virtio-rng-pci,disable-legacy=on,iommu_platform=on",
        ],
        "",
    );
    let r = run(&c);
    // The guest does not drive the virtio-iommu: the rng works through QEMU's boot bypass.
    assert_eq!(r.verdict, Outcome::Pass, "{r}");
    let t = clean_trace(&r);
    let rng = rng_bdf(&r);
    let switched: Vec<bool> = t
        .events
        .iter()
        .filter_map(|e| match e.event {
            Event::ViommuSwitch { device, enabled } if device == rng => Some(enabled),
            _ => None,
        })
        .collect();
    assert_eq!(switched.last(), Some(&false), "{r}");
    assert_eq!(t.count("virtio_iommu_translate"), 0, "{r}");
    // The guest says `direct`: nothing is required of the IOMMU, and nothing is wrong.
    let v = iommu::check_run(&r);
    assert!(v.passed(), "{v}");
    assert_eq!(v.devices.get(&rng), Some(&false), "{v}");
    let v = require_iommu(&r, rng);
    assert_eq!(v.count(Kind::Untranslated), 1, "{v}");
    assert_eq!(v.count(Kind::NoTranslations), 1, "{v}");
    assert!(
        v.violations[0].message.contains("bypasses the IOMMU"),
        "{v}"
    );
}

#[test]
fn q35_intel_iommu_events_parse_and_an_unenabled_iommu_is_caught() {
    let c = traced(
        Machine::Q35,
        &[IommuKind::IntelVtd],
        &[
            "intel-iommu",
            "virtio-rng-pci,disable-legacy=on,iommu_platform=on",
        ],
        "",
    );
    let r = run(&c);
    assert_eq!(r.verdict, Outcome::Pass, "{r}");
    let t = clean_trace(&r);
    assert!(t.count("vtd_switch_address_space") > 0, "{r}");
    assert_eq!(t.count("vtd_dmar_translate"), 0, "{r}");
    let rng = rng_bdf(&r);
    let v = iommu::check_run(&r);
    assert!(v.passed(), "{v}");
    let v = require_iommu(&r, rng);
    assert!(!v.passed(), "{v}");
    assert_eq!(v.count(Kind::Untranslated), 1, "{v}");
}
