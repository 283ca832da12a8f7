//! IOMMU trace integration tests: the trace plumbing, the parser and the IOMMU trace oracle
//! (`harness::trace`, `harness::iommu`; docs/report.md, "How the host checks IOMMU DMA") against
//! the installed QEMU.
//!
//! - The parser's format strings are the installed binaries' own, character for character.
//! - pseries: QEMU creates the PHB's TCE table (traced), and a device without `iommu_platform`
//!   never goes through it.
//! - pseries: a device behind the TCE table whose DMA the guest did not map is refused by QEMU,
//!   and the oracle must FAIL, naming the trace line and the IOVA (a negative control that needs
//!   no test option: the guest does not map for the `direct` path).
//! - q35 with virtio-iommu, and with intel-iommu: the guest does not program either, so every
//!   event QEMU traces must parse, and an oracle that requires the device behind its IOMMU must
//!   FAIL (the device's DMA bypasses it).

use std::collections::HashSet;
use std::path::PathBuf;

use harness::iommu::{self, Kind, Space};
use harness::trace::{self, Bdf, Event, IommuKind, TraceLog};
use harness::{Arch, Machine, Outcome, QemuConfig, RunResult};

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

/// Negative control: QEMU puts the device behind the PHB's TCE table (`iommu_platform=on`), the
/// guest hands it buffers on the `direct` path without mapping them, QEMU refuses every access
/// (`xlate ... perm=0`), and the oracle must fail on exactly that.
#[test]
fn pseries_unmapped_dma_fails_the_oracle() {
    let c = traced(
        Machine::Pseries,
        &[IommuKind::SpaprTce],
        &["virtio-rng-pci,disable-legacy=on,iommu_platform=on"],
        "sg.virtio.timeout_ms=300",
    );
    let r = run(&c);
    // The device never gets its buffer: the guest times it out.
    assert_eq!(r.verdict, Outcome::Fail, "{r}");
    let t = clean_trace(&r);
    let xlates: Vec<(usize, u64)> = t
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
    assert!(!xlates.is_empty(), "no refused access in the trace\n{r}");
    let v = iommu::check_run(&r);
    assert!(!v.passed(), "the oracle passed unmapped DMA\n{r}");
    assert_eq!(v.count(Kind::NotMapped), xlates.len(), "{v}");
    assert_eq!(v.violation_count, xlates.len(), "{v}");
    let first = &v.violations[0];
    assert_eq!(
        (first.line, first.iova, first.space),
        (
            xlates[0].0,
            Some(xlates[0].1),
            Some(Space::Tce {
                liobn: PSERIES_LIOBN
            })
        ),
        "{v}"
    );
    assert!(first.message.contains("never mapped"), "{v}");
    let c = &v.spaces[&Space::Tce {
        liobn: PSERIES_LIOBN,
    }];
    assert_eq!(
        (c.translations, c.faults, c.maps),
        (xlates.len() as u64, xlates.len() as u64, 0)
    );
    assert!(v.failures()[0].starts_with("IOMMU trace oracle:"), "{v}");
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
