//! The boot-time decision: run secure or not, on which platform, and how each device does DMA.
//!
//! Pure functions over what the guest was asked (`sg.secure`, `sg.legacy_devices`) and what it
//! detected, so that every combination is tested on the host.
//!
//! # `sg.secure`
//!
//! "Active" below means the guest *already* runs with private memory: `MSR[S]` set (PEF), any
//! SEV_STATUS bit (SEV, SEV-ES, SEV-SNP), or a TDX signature (a TD is private from its first
//! instruction). "Capable" adds PEF machines that are not secure *yet*: an ultravisor node
//! exists, and the guest can choose to enter secure mode with `UV_ESM` (the POWER design: the
//! guest decides after QEMU started).
//!
//! | mode | nothing detected | PEF capable, not active | active (`MSR[S]` / SEV / TDX) |
//! |---|---|---|---|
//! | `off` | `none` | `none` (ultravisor left unused) | **reject**: memory already private, a non-secure guest cannot be provided |
//! | `on` | **reject** (fail closed: no device touched) | `pef`, enter with `UV_ESM` | that platform (`pef` without ESM, `sev`/`sev-es`/`sev-snp`, `tdx`) |
//! | `auto` (default) | `none` | `pef`, enter with `UV_ESM` | that platform |
//! | `emulate` | `emulated` | `emulated` (ultravisor left unused) | **reject**: emulation would not share the pool for real, and devices would see private memory |
//!
//! Facts that contradict each other (more than one of PEF, SEV and TDX) reject in every mode: a
//! guest that cannot tell what it runs on must not guess. SEV_STATUS bits that are inconsistent
//! (SNP without ES, ES without SEV) select the most restrictive level that any bit claims, with
//! a reason saying so.
//!
//! Why `off` on an already-secure guest rejects rather than runs secure: the caller asked for the
//! `direct` path, and on private memory that path hands devices addresses of memory they cannot
//! read (SEV: ciphertext; PEF/TDX: faults or fresh pages). Running secure instead would silently
//! change what is being tested. Rejecting says exactly why, and the harness sees `reject`.
//!
//! # Per device
//!
//! [`device_dma`] chooses each device's DMA path once its features are negotiated, from
//! `sg.dma`, the secure decision, `ACCESS_PLATFORM` and whether an IOMMU translates the device's
//! DMA; its documentation has the table.

use alloc::vec::Vec;

/// `sg.secure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecureMode {
    Off,
    On,
    Auto,
    Emulate,
}

impl SecureMode {
    pub const ALL: [SecureMode; 4] = [
        SecureMode::Off,
        SecureMode::On,
        SecureMode::Auto,
        SecureMode::Emulate,
    ];
    /// The value syntax, for `option` error records.
    pub const EXPECTED: &'static str = "off|on|auto|emulate";
    /// Without `sg.secure`: secure exactly when the hardware is there.
    pub const DEFAULT: SecureMode = SecureMode::Auto;

    pub fn parse(v: &str) -> Option<Self> {
        match v {
            "off" => Some(SecureMode::Off),
            "on" => Some(SecureMode::On),
            "auto" => Some(SecureMode::Auto),
            "emulate" => Some(SecureMode::Emulate),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SecureMode::Off => "off",
            SecureMode::On => "on",
            SecureMode::Auto => "auto",
            SecureMode::Emulate => "emulate",
        }
    }
}

/// `sg.legacy_devices`: what a secure guest does with a device that did not offer
/// `VIRTIO_F_ACCESS_PLATFORM`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LegacyPolicy {
    Refuse,
    Bounce,
}

impl LegacyPolicy {
    pub const EXPECTED: &'static str = "refuse|bounce";
    pub const DEFAULT: LegacyPolicy = LegacyPolicy::Refuse;

    pub fn parse(v: &str) -> Option<Self> {
        match v {
            "refuse" => Some(LegacyPolicy::Refuse),
            "bounce" => Some(LegacyPolicy::Bounce),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LegacyPolicy::Refuse => "refuse",
            LegacyPolicy::Bounce => "bounce",
        }
    }
}

/// What the arch code detected. Fields of the other arch stay `false`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Facts {
    /// ppc64: `/ibm,ultravisor` (or a node compatible with it) exists in the device tree.
    pub ultravisor: bool,
    /// ppc64: `MSR[S]` is set: the guest already runs secure.
    pub msr_s: bool,
    /// x86_64: SEV_STATUS (MSR 0xC001_0131) bit 0: SEV active.
    pub sev: bool,
    /// SEV_STATUS bit 1: SEV-ES active.
    pub sev_es: bool,
    /// SEV_STATUS bit 2: SEV-SNP active.
    pub sev_snp: bool,
    /// x86_64: CPUID leaf 0x21 carries the "IntelTDX    " signature.
    pub tdx: bool,
}

impl Facts {
    /// The SEV bits of a SEV_STATUS value (0 when the MSR was not read).
    pub fn with_sev_status(self, status: u64) -> Self {
        Facts {
            sev: status & 1 != 0,
            sev_es: status & 2 != 0,
            sev_snp: status & 4 != 0,
            ..self
        }
    }

    fn any_sev(&self) -> bool {
        self.sev || self.sev_es || self.sev_snp
    }

    fn any_pef(&self) -> bool {
        self.ultravisor || self.msr_s
    }

    /// Memory is already private.
    pub fn active(&self) -> bool {
        self.msr_s || self.any_sev() || self.tdx
    }

    /// More than one technology claims this machine.
    pub fn contradictory(&self) -> bool {
        [self.any_pef(), self.any_sev(), self.tdx]
            .iter()
            .filter(|&&b| b)
            .count()
            > 1
    }
}

/// The SEV flavour, from SEV_STATUS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SevLevel {
    Sev,
    SevEs,
    SevSnp,
}

impl SevLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            SevLevel::Sev => "sev",
            SevLevel::SevEs => "sev-es",
            SevLevel::SevSnp => "sev-snp",
        }
    }
}

/// Which platform to construct.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Choice {
    None,
    Emulated,
    /// PEF; `enter`: call `UV_ESM` first (false when `MSR[S]` is already set).
    Pef {
        enter: bool,
    },
    Sev(SevLevel),
    Tdx,
}

impl Choice {
    /// The platform name it leads to (as [`super::PlatformKind::as_str`]).
    pub fn name(self) -> &'static str {
        match self {
            Choice::None => "none",
            Choice::Emulated => "emulated",
            Choice::Pef { .. } => "pef",
            Choice::Sev(level) => level.as_str(),
            Choice::Tdx => "tdx",
        }
    }

    pub fn is_secure(self) -> bool {
        !matches!(self, Choice::None)
    }
}

/// Go on, or end the run with verdict `reject` before any device is touched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Proceed,
    Reject,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Proceed => "proceed",
            Action::Reject => "reject",
        }
    }
}

/// The decision with its reasons, for the `secure` record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub mode: SecureMode,
    pub facts: Facts,
    /// `Choice::None` whenever `action` is `Reject`.
    pub choice: Choice,
    pub action: Action,
    /// Human-readable, in the order they were found; never empty.
    pub reasons: Vec<&'static str>,
}

impl Decision {
    pub fn rejected(&self) -> bool {
        self.action == Action::Reject
    }
}

/// The secure platform the facts describe, if any (assumes they are not contradictory).
fn hardware(facts: &Facts, reasons: &mut Vec<&'static str>) -> Option<Choice> {
    if facts.msr_s {
        reasons.push("MSR[S] is set: already running as a PEF secure guest");
        if !facts.ultravisor {
            reasons.push("no ultravisor node in the device tree, but MSR[S] proves there is one");
        }
        return Some(Choice::Pef { enter: false });
    }
    if facts.ultravisor {
        reasons.push("ultravisor node present: the guest can enter secure mode (UV_ESM)");
        return Some(Choice::Pef { enter: true });
    }
    if facts.any_sev() {
        let level = if facts.sev_snp {
            reasons.push("SEV_STATUS: SEV-SNP active");
            SevLevel::SevSnp
        } else if facts.sev_es {
            reasons.push("SEV_STATUS: SEV-ES active");
            SevLevel::SevEs
        } else {
            reasons.push("SEV_STATUS: SEV active");
            SevLevel::Sev
        };
        let consistent = (!facts.sev_snp || facts.sev_es) && (!facts.sev_es || facts.sev);
        if !consistent {
            reasons.push("SEV_STATUS bits are inconsistent: assuming the most restrictive level");
        }
        return Some(Choice::Sev(level));
    }
    if facts.tdx {
        reasons.push("CPUID 0x21: running as a TDX trust domain");
        return Some(Choice::Tdx);
    }
    None
}

/// Decides the platform. See the module documentation for the table.
pub fn decide(mode: SecureMode, facts: &Facts) -> Decision {
    let mut reasons = Vec::new();
    let reject = |mut reasons: Vec<&'static str>, why: &'static str| {
        reasons.push(why);
        Decision {
            mode,
            facts: *facts,
            choice: Choice::None,
            action: Action::Reject,
            reasons,
        }
    };
    let proceed = |reasons: Vec<&'static str>, choice: Choice| Decision {
        mode,
        facts: *facts,
        choice,
        action: Action::Proceed,
        reasons,
    };

    if facts.contradictory() {
        return reject(
            reasons,
            "contradictory detection: more than one of PEF, SEV and TDX claims this machine",
        );
    }
    let hw = hardware(facts, &mut reasons);
    let active = facts.active();
    match mode {
        SecureMode::Off if active => reject(
            reasons,
            "sg.secure=off, but memory is already private: a non-secure guest cannot be provided",
        ),
        SecureMode::Off => {
            if hw.is_some() {
                reasons.push("sg.secure=off: secure mode not entered");
            } else {
                reasons.push("sg.secure=off");
            }
            proceed(reasons, Choice::None)
        }
        SecureMode::On | SecureMode::Auto => match hw {
            Some(choice) => {
                reasons.push(if mode == SecureMode::On {
                    "sg.secure=on: secure hardware present"
                } else {
                    "sg.secure=auto: secure hardware present"
                });
                proceed(reasons, choice)
            }
            None if mode == SecureMode::On => reject(
                reasons,
                "sg.secure=on, but no secure hardware: no ultravisor, MSR[S] clear, SEV inactive, \
                 no TDX (fail closed: no device touched)",
            ),
            None => {
                reasons.push("sg.secure=auto: no secure hardware, running non-secure");
                proceed(reasons, Choice::None)
            }
        },
        SecureMode::Emulate if active => reject(
            reasons,
            "sg.secure=emulate, but memory is already private: emulation would not share the pool \
             for real",
        ),
        SecureMode::Emulate => {
            if hw.is_some() {
                reasons.push("sg.secure=emulate: secure mode not entered");
            }
            reasons.push("sg.secure=emulate: secure path with recorded, not real, sharing");
            proceed(reasons, Choice::Emulated)
        }
    }
}

/// `sg.dma`: the DMA path every device should take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DmaChoice {
    /// The table below: what the guest and the device allow.
    Auto,
    Direct,
    Bounce,
    Iommu,
    IommuBounce,
}

impl DmaChoice {
    pub const ALL: [DmaChoice; 5] = [
        DmaChoice::Auto,
        DmaChoice::Direct,
        DmaChoice::Bounce,
        DmaChoice::Iommu,
        DmaChoice::IommuBounce,
    ];
    pub const EXPECTED: &'static str = "auto|direct|bounce|iommu|iommu+bounce";

    pub fn parse(v: &str) -> Option<Self> {
        DmaChoice::ALL.into_iter().find(|c| c.as_str() == v)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DmaChoice::Auto => "auto",
            DmaChoice::Direct => "direct",
            DmaChoice::Bounce => "bounce",
            DmaChoice::Iommu => "iommu",
            DmaChoice::IommuBounce => "iommu+bounce",
        }
    }
}

/// The DMA path of one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceDma {
    Direct,
    Bounce,
    /// Through the IOMMU the device sits behind, reaching private memory (a normal guest).
    Iommu,
    /// Through the IOMMU, reaching only the shared pool (a secure guest).
    IommuBounce,
    /// Fail the device (FAILED status, no DRIVER_OK) and report why.
    Refuse,
    /// `sg.dma` asked for a path this device cannot have: the device is failed with an error.
    Invalid,
}

impl DeviceDma {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceDma::Direct => "direct",
            DeviceDma::Bounce => "bounce",
            DeviceDma::Iommu => "iommu",
            DeviceDma::IommuBounce => "iommu+bounce",
            DeviceDma::Refuse => "refused",
            DeviceDma::Invalid => "invalid",
        }
    }
}

/// The `dma_reason` of a device refused for want of `ACCESS_PLATFORM`.
const LEGACY_REFUSED: &str = "secure, no ACCESS_PLATFORM: refused (sg.legacy_devices=refuse)";

/// The DMA path of a device, with its record's `dma_reason`.
///
/// `secure`: [`super::Platform::is_secure`]; `access_platform`: whether
/// `VIRTIO_F_ACCESS_PLATFORM` was negotiated (the driver accepts it whenever offered);
/// `translated`: the device sits behind an IOMMU that translates the DMA of devices that
/// negotiated it (pseries: its PHB has `ibm,dma-window`). A device that did not negotiate it
/// bypasses the IOMMU (QEMU gives it guest-physical addresses).
///
/// With `sg.dma=auto`:
///
/// | secure | ACCESS_PLATFORM | behind an IOMMU | `sg.legacy_devices` | DMA |
/// |---|---|---|---|---|
/// | no | no | either | either | `direct` |
/// | no | yes | no | either | `direct` |
/// | no | yes | yes | either | `iommu` |
/// | yes | yes | no | either | `bounce` |
/// | yes | yes | yes | either | `iommu+bounce` |
/// | yes | no | either | `refuse` (default) | refused: failed before DRIVER_OK |
/// | yes | no | either | `bounce` | `bounce` |
///
/// `refuse` is what Linux does on every confidential platform (virtio insists on
/// `VIRTIO_F_ACCESS_PLATFORM` when the platform restricts memory access). `bounce` is what the
/// 2019 pseries design argued for: a device without ACCESS_PLATFORM uses guest-physical
/// addresses, and bounce slots *are* guest-physical addresses of shared memory, so it works.
///
/// Any other `sg.dma` is that path or, when it cannot work for the device, [`DeviceDma::Invalid`]
/// with the reason (never a silent fallback): `direct` on a secure guest, or for a device whose
/// physical addresses the IOMMU would translate; `bounce` without a secure guest's pool, or
/// behind a translating IOMMU; `iommu` without one, without ACCESS_PLATFORM, or on a secure guest
/// (it would map private memory); `iommu+bounce` without a pool, an IOMMU or ACCESS_PLATFORM.
/// A forced `bounce` still refuses a device without ACCESS_PLATFORM under
/// `sg.legacy_devices=refuse`.
pub fn device_dma(
    choice: DmaChoice,
    secure: bool,
    access_platform: bool,
    translated: bool,
    legacy: LegacyPolicy,
) -> (DeviceDma, &'static str) {
    use DeviceDma::*;
    let behind = access_platform && translated;
    match choice {
        DmaChoice::Auto => match (secure, access_platform, behind, legacy) {
            (false, _, false, _) => (Direct, "not secure"),
            (false, _, true, _) => (Iommu, "ACCESS_PLATFORM negotiated behind an IOMMU"),
            (true, _, true, _) => (
                IommuBounce,
                "secure, ACCESS_PLATFORM negotiated behind an IOMMU",
            ),
            (true, true, false, _) => (Bounce, "secure, ACCESS_PLATFORM negotiated"),
            (true, false, _, LegacyPolicy::Refuse) => (Refuse, LEGACY_REFUSED),
            (true, false, _, LegacyPolicy::Bounce) => (
                Bounce,
                "secure, no ACCESS_PLATFORM: sg.legacy_devices=bounce",
            ),
        },
        DmaChoice::Direct if secure => (
            Invalid,
            "sg.dma=direct on a secure guest: a device cannot reach private memory",
        ),
        DmaChoice::Direct if behind => (
            Invalid,
            "sg.dma=direct, but ACCESS_PLATFORM was negotiated behind an IOMMU, which would \
             translate physical addresses",
        ),
        DmaChoice::Direct => (Direct, "sg.dma=direct"),
        DmaChoice::Bounce if !secure => (
            Invalid,
            "sg.dma=bounce needs the shared pool of a secure guest (sg.secure)",
        ),
        DmaChoice::Bounce if behind => (
            Invalid,
            "sg.dma=bounce, but ACCESS_PLATFORM was negotiated behind an IOMMU, which does not \
             map the pool (sg.dma=iommu+bounce does)",
        ),
        DmaChoice::Bounce if !access_platform && legacy == LegacyPolicy::Refuse => {
            (Refuse, LEGACY_REFUSED)
        }
        DmaChoice::Bounce => (Bounce, "sg.dma=bounce"),
        DmaChoice::IommuBounce if !secure => (
            Invalid,
            "sg.dma=iommu+bounce needs the shared pool of a secure guest (sg.secure)",
        ),
        DmaChoice::Iommu | DmaChoice::IommuBounce if !translated => (
            Invalid,
            "sg.dma asks for an IOMMU, but the device is behind none",
        ),
        DmaChoice::Iommu | DmaChoice::IommuBounce if !access_platform => (
            Invalid,
            "sg.dma asks for an IOMMU, but the device did not negotiate ACCESS_PLATFORM and \
             bypasses it",
        ),
        DmaChoice::Iommu if secure => (
            Invalid,
            "sg.dma=iommu on a secure guest: the IOMMU would map private memory (use \
             iommu+bounce)",
        ),
        DmaChoice::Iommu => (Iommu, "sg.dma=iommu"),
        DmaChoice::IommuBounce => (IommuBounce, "sg.dma=iommu+bounce"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_facts() -> impl Iterator<Item = Facts> {
        (0u32..64).map(|b| Facts {
            ultravisor: b & 1 != 0,
            msr_s: b & 2 != 0,
            sev: b & 4 != 0,
            sev_es: b & 8 != 0,
            sev_snp: b & 16 != 0,
            tdx: b & 32 != 0,
        })
    }

    const NOTHING: Facts = Facts {
        ultravisor: false,
        msr_s: false,
        sev: false,
        sev_es: false,
        sev_snp: false,
        tdx: false,
    };

    #[test]
    fn the_table() {
        use Action::*;
        use SecureMode::*;
        let uv = Facts {
            ultravisor: true,
            ..NOTHING
        };
        let pef = Facts {
            ultravisor: true,
            msr_s: true,
            ..NOTHING
        };
        let snp = NOTHING.with_sev_status(7);
        let sev = NOTHING.with_sev_status(1);
        let es = NOTHING.with_sev_status(3);
        let tdx = Facts {
            tdx: true,
            ..NOTHING
        };
        let rows: &[(SecureMode, Facts, Choice, Action)] = &[
            (Off, NOTHING, Choice::None, Proceed),
            (Off, uv, Choice::None, Proceed),
            (Off, pef, Choice::None, Reject),
            (Off, snp, Choice::None, Reject),
            (Off, tdx, Choice::None, Reject),
            (On, NOTHING, Choice::None, Reject),
            (On, uv, Choice::Pef { enter: true }, Proceed),
            (On, pef, Choice::Pef { enter: false }, Proceed),
            (On, sev, Choice::Sev(SevLevel::Sev), Proceed),
            (On, es, Choice::Sev(SevLevel::SevEs), Proceed),
            (On, snp, Choice::Sev(SevLevel::SevSnp), Proceed),
            (On, tdx, Choice::Tdx, Proceed),
            (Auto, NOTHING, Choice::None, Proceed),
            (Auto, uv, Choice::Pef { enter: true }, Proceed),
            (Auto, pef, Choice::Pef { enter: false }, Proceed),
            (Auto, snp, Choice::Sev(SevLevel::SevSnp), Proceed),
            (Auto, tdx, Choice::Tdx, Proceed),
            (Emulate, NOTHING, Choice::Emulated, Proceed),
            (Emulate, uv, Choice::Emulated, Proceed),
            (Emulate, pef, Choice::None, Reject),
            (Emulate, sev, Choice::None, Reject),
            (Emulate, tdx, Choice::None, Reject),
        ];
        for &(mode, facts, choice, action) in rows {
            let d = decide(mode, &facts);
            assert_eq!(
                (d.choice, d.action),
                (choice, action),
                "{mode:?} {facts:?}: {:?}",
                d.reasons
            );
        }
    }

    /// Every mode against every combination of facts (4 x 64), checked against the rules the
    /// table is built from.
    #[test]
    fn exhaustive_invariants() {
        for mode in SecureMode::ALL {
            for f in all_facts() {
                let d = decide(mode, &f);
                let ctx = alloc::format!("{mode:?} {f:?} -> {d:?}");
                assert!(!d.reasons.is_empty(), "{ctx}");
                assert_eq!((d.mode, d.facts), (mode, f), "{ctx}");
                if d.rejected() {
                    assert_eq!(d.choice, Choice::None, "a rejection sets nothing up: {ctx}");
                }
                if f.contradictory() {
                    assert!(d.rejected(), "{ctx}");
                    continue;
                }
                let capable = f.active() || f.ultravisor;
                match mode {
                    SecureMode::Off => {
                        assert_eq!(d.rejected(), f.active(), "{ctx}");
                        assert_eq!(d.choice, Choice::None, "{ctx}");
                    }
                    SecureMode::On => assert_eq!(d.rejected(), !capable, "{ctx}"),
                    SecureMode::Auto => {
                        assert!(!d.rejected(), "auto never rejects consistent facts: {ctx}");
                        assert_eq!(d.choice.is_secure(), capable, "{ctx}");
                    }
                    SecureMode::Emulate => {
                        assert_eq!(d.rejected(), f.active(), "{ctx}");
                        if !d.rejected() {
                            assert_eq!(d.choice, Choice::Emulated, "{ctx}");
                        }
                    }
                }
                // A real backend only where its hardware is.
                match d.choice {
                    Choice::Pef { enter } => {
                        assert!(f.ultravisor || f.msr_s, "{ctx}");
                        assert_eq!(enter, !f.msr_s, "ESM exactly when not yet secure: {ctx}");
                    }
                    Choice::Sev(level) => {
                        assert!(f.sev || f.sev_es || f.sev_snp, "{ctx}");
                        assert_eq!(level == SevLevel::SevSnp, f.sev_snp, "{ctx}");
                    }
                    Choice::Tdx => assert!(f.tdx, "{ctx}"),
                    Choice::Emulated => assert_eq!(mode, SecureMode::Emulate, "{ctx}"),
                    Choice::None => {}
                }
                // Already-private memory is never treated as non-secure.
                if f.active() && !d.rejected() {
                    assert!(
                        d.choice.is_secure() && d.choice != Choice::Emulated,
                        "{ctx}"
                    );
                }
            }
        }
    }

    #[test]
    fn reasons_say_why() {
        let d = decide(SecureMode::On, &NOTHING);
        assert!(d.reasons.last().unwrap().contains("fail closed"));
        let d = decide(SecureMode::On, &NOTHING.with_sev_status(4));
        assert_eq!(d.choice, Choice::Sev(SevLevel::SevSnp));
        assert!(d.reasons.iter().any(|r| r.contains("inconsistent")));
        let d = decide(
            SecureMode::Auto,
            &Facts {
                msr_s: true,
                ..NOTHING
            },
        );
        assert_eq!(d.choice, Choice::Pef { enter: false });
        assert!(d.reasons.iter().any(|r| r.contains("MSR[S] proves")));
        let d = decide(
            SecureMode::Auto,
            &Facts {
                tdx: true,
                sev: true,
                ..NOTHING
            },
        );
        assert!(d.rejected());
        assert!(d.reasons.last().unwrap().contains("contradictory"));
        assert_eq!(d.action.as_str(), "reject");
    }

    #[test]
    fn device_table_is_complete() {
        use DeviceDma::*;
        let legacies = [LegacyPolicy::Refuse, LegacyPolicy::Bounce];
        // sg.dma=auto: the table of the documentation, row by row.
        for secure in [false, true] {
            for ap in [false, true] {
                for tr in [false, true] {
                    for legacy in legacies {
                        let (dma, why) = device_dma(DmaChoice::Auto, secure, ap, tr, legacy);
                        assert!(!why.is_empty());
                        let expected = match (secure, ap, ap && tr, legacy) {
                            (false, _, false, _) => Direct,
                            (false, _, true, _) => Iommu,
                            (true, _, true, _) => IommuBounce,
                            (true, true, false, _) => Bounce,
                            (true, false, _, LegacyPolicy::Refuse) => Refuse,
                            (true, false, _, LegacyPolicy::Bounce) => Bounce,
                        };
                        assert_eq!(dma, expected, "{secure} {ap} {tr} {legacy:?}");
                    }
                }
            }
        }
        // Every choice, every case: the invariants the table is built from.
        for choice in DmaChoice::ALL {
            for secure in [false, true] {
                for ap in [false, true] {
                    for tr in [false, true] {
                        for legacy in legacies {
                            let (dma, why) = device_dma(choice, secure, ap, tr, legacy);
                            let ctx = alloc::format!("{choice:?} {secure} {ap} {tr} {legacy:?}");
                            assert!(!why.is_empty(), "{ctx}");
                            // A secure guest never gives a device private memory.
                            assert!(!(secure && matches!(dma, Direct | Iommu)), "{ctx}");
                            // Physical addresses only where nothing translates them.
                            if ap && tr {
                                assert!(!matches!(dma, Direct | Bounce), "{ctx}");
                            }
                            // An IOMMU path only behind an IOMMU, with ACCESS_PLATFORM.
                            if matches!(dma, Iommu | IommuBounce) {
                                assert!(ap && tr, "{ctx}");
                            }
                            if !secure {
                                assert!(!matches!(dma, Bounce | IommuBounce | Refuse), "{ctx}");
                            }
                            match choice {
                                DmaChoice::Auto => assert_ne!(dma, Invalid, "{ctx}"),
                                DmaChoice::Direct => assert!(matches!(dma, Direct | Invalid)),
                                DmaChoice::Bounce => {
                                    assert!(matches!(dma, Bounce | Refuse | Invalid), "{ctx}")
                                }
                                DmaChoice::Iommu => assert!(matches!(dma, Iommu | Invalid)),
                                DmaChoice::IommuBounce => {
                                    assert!(matches!(dma, IommuBounce | Invalid))
                                }
                            }
                            if dma == Invalid {
                                assert!(why.starts_with("sg.dma"), "{ctx}: {why}");
                            }
                        }
                    }
                }
            }
        }
        // The forced paths where they work.
        let f = |c, s, ap, tr| device_dma(c, s, ap, tr, LegacyPolicy::Refuse).0;
        assert_eq!(f(DmaChoice::Direct, false, true, false), Direct);
        assert_eq!(
            f(DmaChoice::Direct, false, false, true),
            Direct,
            "it bypasses the IOMMU"
        );
        assert_eq!(f(DmaChoice::Bounce, true, true, false), Bounce);
        assert_eq!(f(DmaChoice::Bounce, true, false, true), Refuse);
        assert_eq!(f(DmaChoice::Iommu, false, true, true), Iommu);
        assert_eq!(f(DmaChoice::IommuBounce, true, true, true), IommuBounce);
        assert_eq!(DeviceDma::Refuse.as_str(), "refused");
        assert_eq!(DeviceDma::IommuBounce.as_str(), "iommu+bounce");
    }

    #[test]
    fn option_values() {
        for m in SecureMode::ALL {
            assert_eq!(SecureMode::parse(m.as_str()), Some(m));
            assert!(SecureMode::EXPECTED.split('|').any(|s| s == m.as_str()));
        }
        assert_eq!(SecureMode::parse("yes"), None);
        assert_eq!(SecureMode::DEFAULT, SecureMode::Auto);
        for l in [LegacyPolicy::Refuse, LegacyPolicy::Bounce] {
            assert_eq!(LegacyPolicy::parse(l.as_str()), Some(l));
        }
        assert_eq!(LegacyPolicy::parse(""), None);
        assert_eq!(LegacyPolicy::DEFAULT, LegacyPolicy::Refuse);
        let f = Facts::default().with_sev_status(0x6);
        assert!(!f.sev && f.sev_es && f.sev_snp);
        assert_eq!(Choice::Sev(SevLevel::SevEs).name(), "sev-es");
        assert_eq!(Choice::Pef { enter: true }.name(), "pef");
        for c in DmaChoice::ALL {
            assert_eq!(DmaChoice::parse(c.as_str()), Some(c));
            assert!(DmaChoice::EXPECTED.split('|').any(|s| s == c.as_str()));
        }
        assert_eq!(DmaChoice::parse("iommu-bounce"), None);
    }
}
