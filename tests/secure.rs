//! Secure-guest integration tests: boot the real images (`make images`) with `sg.secure=emulate`
//! on every machine, hold QEMU at the guest's power-off, dump guest memory over QMP and prove
//! from the host that private memory never reached the shared swiotlb pool (docs/report.md:
//! `secure`, `swiotlb`, `secret`, `swiotlb_stats`, `virtio.dma`; the oracle is
//! `harness::secure`).
//!
//! Each emulate cell carries the matrix's standard workload (two disks, one written with the
//! pattern, a NIC on the echo backend, a console port, an entropy source), so the data oracles
//! must pass through the bounce path too. Then:
//! - `sg.secure=on` on machines that cannot be secure must be rejected with nothing touched;
//! - devices that cannot offer `ACCESS_PLATFORM` are refused, or bounced with
//!   `sg.legacy_devices=bounce`;
//! - the negative control, `sg.debug.leak=1`, must make the memory oracle FAIL: those tests pass
//!   when the oracle catches the leak.

use harness::devices::{Ring, Transport};
use harness::matrix::{self, Cell, CellResult, CellVerdict, RunOptions};
use harness::report::{DeviceResult, Secret, Swiotlb, Virtio};
use harness::secure::{LegacyDevices, SecureExpect, SecureMode};
use harness::{Firmware, Machine};
use secure_guest::platform::secret;

fn cell(machine: Machine, firmware: Option<Firmware>, transport: Transport, ring: Ring) -> Cell {
    Cell {
        machine,
        firmware,
        transport,
        ring,
    }
}

/// Runs `cell` as `matrix --secure` would, with `s`.
fn run(cell: Cell, s: SecureExpect) -> CellResult {
    let path = harness::default_kernel(cell.machine.arch(), "secure-guest");
    assert!(
        path.is_file(),
        "{} is missing: run `make images` first",
        path.display()
    );
    let opts = RunOptions {
        secure: Some(s),
        ..Default::default()
    };
    let r = matrix::run_cell(&cell, &matrix::expected_for(&cell, &opts), &opts);
    assert_ne!(r.verdict, CellVerdict::Skip, "{r}");
    r.contract_kept_run();
    r
}

/// An emulate cell must pass every oracle, and the evidence must be really there: QEMU held,
/// the pool dumped and all zero, every secret region dumped and full of marks, every device on
/// the bounce path.
fn emulate_passes(cell: Cell, legacy: Option<LegacyDevices>) -> CellResult {
    let r = run(
        cell,
        SecureExpect {
            legacy,
            ..SecureExpect::emulate()
        },
    );
    assert_eq!(r.verdict, CellVerdict::Pass, "\n{r}");
    let run = r.run.as_ref().unwrap();
    let held = run.held.as_ref().unwrap_or_else(|| panic!("not held\n{r}"));
    assert!(held.paused, "\n{r}");
    let pool: Swiotlb = run.first().expect("a swiotlb record");
    let dump = held
        .dump("swiotlb", pool.base.0)
        .unwrap_or_else(|| panic!("no pool dump\n{r}"));
    assert_eq!(dump.data.len() as u64, pool.size);
    assert!(dump.data.iter().all(|&b| b == 0), "\n{r}");
    let secrets: Secret = run.first().expect("a secret record");
    for region in &secrets.regions {
        let d = held
            .dump("secret", region.base.0)
            .unwrap_or_else(|| panic!("secret region {} not dumped\n{r}", region.base));
        assert_eq!(
            secret::find_marks(&d.data).count() as u64,
            region.size / secret::RECORD_LEN as u64,
            "\n{r}"
        );
    }
    r
}

fn all_devices(r: &CellResult) -> Vec<Virtio> {
    r.run.as_ref().unwrap().all::<Virtio>()
}

mod emulate {
    use super::*;

    #[test]
    fn microvm_mmio_v2() {
        let r = emulate_passes(
            cell(Machine::Microvm, None, Transport::MmioV2, Ring::Split),
            None,
        );
        for v in all_devices(&r) {
            assert_eq!(
                (v.dma.as_str(), v.access_platform.accepted),
                ("bounce", true),
                "{v:?}"
            );
        }
    }

    #[test]
    fn q35_pci_modern_packed() {
        emulate_passes(
            cell(Machine::Q35, None, Transport::PciModern, Ring::Packed),
            None,
        );
    }

    #[test]
    fn pc_pci_modern() {
        emulate_passes(
            cell(Machine::Pc, None, Transport::PciModern, Ring::Split),
            None,
        );
    }

    /// pseries: no `iommu_platform` (the TCE IOMMU would fail every DMA), so the devices bounce
    /// because of `sg.legacy_devices=bounce`.
    #[test]
    fn pseries_vof_pci_modern() {
        let r = emulate_passes(
            cell(
                Machine::Pseries,
                Some(Firmware::Vof),
                Transport::PciModern,
                Ring::Split,
            ),
            None,
        );
        for v in all_devices(&r) {
            assert_eq!(v.dma, "bounce", "{v:?}");
            assert!(!v.access_platform.offered, "{v:?}");
        }
    }

    /// SLOF probes the devices before the guest runs (~5 s of TCG): one cell.
    #[test]
    fn pseries_slof_pci_modern_packed() {
        emulate_passes(
            cell(
                Machine::Pseries,
                Some(Firmware::Slof),
                Transport::PciModern,
                Ring::Packed,
            ),
            None,
        );
    }
}

mod legacy_devices {
    use super::*;

    /// pci legacy cannot offer `ACCESS_PLATFORM`: every device is refused, never given memory,
    /// and the run still passes (a refusal is not an error).
    #[test]
    fn q35_pci_legacy_is_refused() {
        let r = emulate_passes(
            cell(Machine::Q35, None, Transport::PciLegacy, Ring::Split),
            None,
        );
        let devices = all_devices(&r);
        assert_eq!(devices.len(), 5, "\n{r}");
        for v in devices {
            assert_eq!((v.result, v.dma.as_str()), (DeviceResult::Refused, "none"));
        }
    }

    #[test]
    fn microvm_mmio_v1_is_refused() {
        let r = emulate_passes(
            cell(Machine::Microvm, None, Transport::MmioV1, Ring::Split),
            None,
        );
        assert!(
            all_devices(&r)
                .iter()
                .all(|v| v.result == DeviceResult::Refused)
        );
    }

    /// `sg.legacy_devices=bounce`: the same devices work, through the pool.
    #[test]
    fn q35_pci_legacy_bounced() {
        let r = emulate_passes(
            cell(Machine::Q35, None, Transport::PciLegacy, Ring::Split),
            Some(LegacyDevices::Bounce),
        );
        for v in all_devices(&r) {
            assert_eq!(
                (v.result, v.dma.as_str()),
                (DeviceResult::Ok, "bounce"),
                "{v:?}"
            );
        }
    }
}

/// `sg.secure=on` where there is no PEF, SEV or TDX: reject, touch nothing.
mod secure_on {
    use super::*;

    fn rejects(c: Cell) {
        let r = run(c, SecureExpect::on());
        assert_eq!(r.verdict, CellVerdict::Pass, "\n{r}");
        let run = r.run.as_ref().unwrap();
        assert_eq!(run.verdict, harness::Outcome::Reject, "\n{r}");
        assert!(run.all::<Virtio>().iter().all(|v| v.requests == 0), "\n{r}");
    }

    #[test]
    fn microvm() {
        rejects(cell(Machine::Microvm, None, Transport::MmioV2, Ring::Split));
    }

    #[test]
    fn q35() {
        rejects(cell(Machine::Q35, None, Transport::PciModern, Ring::Split));
    }

    #[test]
    fn pseries_vof() {
        rejects(cell(
            Machine::Pseries,
            Some(Firmware::Vof),
            Transport::PciModern,
            Ring::Split,
        ));
    }
}

/// `sg.debug.leak=1`: released slots keep what they held. The memory oracle must fail the run,
/// for private memory (secret marks) or payload left in the pool; these tests pass when it does.
mod negative_control {
    use super::*;

    fn leak_is_caught(c: Cell) {
        let r = run(
            c,
            SecureExpect {
                leak: true,
                ..SecureExpect::emulate()
            },
        );
        assert_eq!(r.verdict, CellVerdict::Fail, "the leak went unnoticed\n{r}");
        let memory = |f: &String| {
            f.contains("secret-marked") || f.contains("still holds") || f.contains("is not zero")
        };
        assert!(
            r.failures.iter().any(memory),
            "the oracle did not blame the pool\n{r}"
        );
        // It is the memory that fails, not the guest or its data: the leak is invisible to
        // everything but a dump.
        let run = r.run.as_ref().unwrap();
        assert_eq!(run.verdict, harness::Outcome::Pass, "\n{r}");
        let others: Vec<&String> = r.failures.iter().filter(|f| !memory(f)).collect();
        assert!(others.is_empty(), "{others:#?}\n{r}");
        assert!(
            run.first::<Swiotlb>().is_some_and(|s| s.leak),
            "the swiotlb record says leak\n{r}"
        );
    }

    #[test]
    fn microvm() {
        leak_is_caught(cell(
            Machine::Microvm,
            None,
            Transport::MmioV2,
            Ring::Packed,
        ));
    }

    #[test]
    fn pseries_vof() {
        leak_is_caught(cell(
            Machine::Pseries,
            Some(Firmware::Vof),
            Transport::PciModern,
            Ring::Split,
        ));
    }
}

/// What the secure modes mean for the cells (no QEMU).
#[test]
fn secure_cells_are_configured_as_documented() {
    let opts = |s| RunOptions {
        secure: Some(s),
        ..Default::default()
    };
    let emulate = opts(SecureExpect::emulate());
    let x86 = matrix::expected_for(
        &cell(Machine::Q35, None, Transport::PciModern, Ring::Split),
        &emulate,
    );
    assert!(x86.iommu_platform && x86.access_platform_offered());
    assert!(x86.cmdline().contains("sg.secure=emulate"));
    let legacy = matrix::expected_for(
        &cell(Machine::Pc, None, Transport::PciLegacy, Ring::Split),
        &emulate,
    );
    assert!(!legacy.iommu_platform, "QEMU refuses it on legacy pci");
    assert!(legacy.write.is_none(), "refused disks are not written");
    let ppc = matrix::expected_for(
        &cell(
            Machine::Pseries,
            Some(Firmware::Vof),
            Transport::PciModern,
            Ring::Split,
        ),
        &emulate,
    );
    assert!(!ppc.iommu_platform);
    assert!(
        ppc.cmdline()
            .contains("sg.secure=emulate sg.legacy_devices=bounce"),
        "{}",
        ppc.cmdline()
    );
    assert_eq!(ppc.secure.unwrap().legacy, Some(LegacyDevices::Bounce));
    let on = matrix::expected_for(
        &cell(Machine::Microvm, None, Transport::MmioV2, Ring::Split),
        &opts(SecureExpect::on()),
    );
    assert_eq!(on.secure.unwrap().mode, SecureMode::On);
    assert!(on.cmdline().ends_with("sg.secure=on"));
}
