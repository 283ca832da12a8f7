//! The host's trace oracle for IOMMU DMA: replays QEMU's IOMMU trace events ([`crate::trace`])
//! in log order and proves, for one run, that every device access went through the IOMMU to a
//! page the guest had mapped at that moment, with the permission it asked for, without a fault;
//! that in a secure run every mapped or translated page lies inside the shared pool; and that the
//! host's map and unmap counts equal the guest's (`docs/report.md`, "How the host checks IOMMU
//! DMA").
//!
//! The model, per IOMMU address space ([`Space`]):
//! - sPAPR TCE (pseries): one table per window (LIOBN), IOVA page → (physical page,
//!   permission). H_PUT_TCE, H_PUT_TCE_INDIRECT and H_STUFF_TCE change it; a new table
//!   (`spapr_iommu_new_table`, also at every reset), `ibm,remove-pe-dma-window` and
//!   `ibm,reset-pe-dma-windows` empty it; `ibm,create-pe-dma-window` gives a window its bus
//!   address and page size. Every `spapr_iommu_xlate` is one device access: it must hit a page
//!   the model has mapped, to the same physical page with the same permission bits.
//!   Limits of what QEMU traces: `xlate` does not say whether the access was a read or a write
//!   (so only "some permission" is checked there), and H_PUT_TCE_INDIRECT shows only its last
//!   entry: the pages before it are mapped to a page the model learns at their first access
//!   (and the call counts as all maps or all unmaps, as its last entry is).
//! - virtio-iommu: per domain, IOVA intervals → physical start and flags, from `map` and
//!   `unmap_done` (both traced once QEMU has done them); endpoints join domains with `attach`.
//!   A `translate` followed by `translate_out` is a translated access; one without
//!   `translate_out` was refused (with or without `report_fault`), or bypassed the IOMMU when the
//!   endpoint was in no domain.
//! - Intel VT-d: its mappings live in guest page tables, which the trace does not show, so only
//!   faults, pass-through accesses, (secure) the pool and (a `static` domain) that the access
//!   landed at its own address are checked for `vtd_dmar_translate`;
//!   the IOTLB invalidations (`vtd_inv_desc_iotlb_*`, traced for the register interface too)
//!   are counted against the guest's `iommu_unit` record.
//! - x86 (both): a device whose domain is `static` ([`Config::identity_devices`]: all RAM at
//!   IOVA = physical address) must have every access translated to the IOVA itself.
//! - x86 (both): a device that must be behind its IOMMU ([`Config::iommu_devices`]) must have
//!   accesses translated by it, and must not be switched to bypass between its first and its
//!   last one. The guest's teardown switches the devices back (VT-d turns translation off) after
//!   they are done, so the state at the end of the trace says nothing.
//!
//! The verdict ([`Verdict`]) lists the first violations (deduplicated per kind, space and page)
//! with the trace line, IOVA and physical address, counts them all, and gives the per-space
//! counts. [`Verdict::compare_domains`] holds those against the guest's `iommu` records
//! ([`guest_domains`]: calls and entries of each hypercall, pages still mapped), and
//! [`check_run`] does it all for a traced run.
//!
//! A firmware may use the IOMMU before the guest: SLOF drives the virtio devices it finds through
//! the TCE window (and unmaps everything before it hands over). Nothing runs after the guest, so
//! its calls are the last ones on each window it reports; [`guest_start_line`] finds the first,
//! and [`Config::start_line`] has everything before it replayed but not checked or counted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::config::{Arch, Firmware};
use crate::report::{Hex, Record, Secure, Swiotlb, Virtio};
use crate::run::RunResult;
use crate::trace::{Bdf, Event, TraceLog};

/// The first violations kept in a [`Verdict`] (all are counted).
pub const DEFAULT_REPORTED: usize = 20;

/// TCE permission bits (`SPAPR_TCE_RO`, `SPAPR_TCE_WO`).
pub const TCE_PERM_MASK: u64 = 3;
/// The page size of a PHB's default 32-bit DMA window (`SPAPR_TCE_PAGE_SHIFT`).
pub const TCE_DEFAULT_PAGE_SHIFT: u32 = 12;
/// `SPAPR_PCI_BASE_BUID`: the first PHB's BUID; PHB `i` is this plus `i`.
pub const SPAPR_PCI_BASE_BUID: u64 = 0x800_0000_2000_0000;
/// virtio-iommu MAP flags (`VIRTIO_IOMMU_MAP_F_READ`, `_WRITE`): the same bits as a translate
/// `flag` (IOMMU_RO, IOMMU_WO).
pub const VIOMMU_READ: u32 = 1;
pub const VIOMMU_WRITE: u32 = 2;
/// `xlate`'s mask for an address outside the window (`~0` printed as 32 bits).
const OUTSIDE_WINDOW_MASK: u64 = 0xffff_ffff;
/// The page the pool check uses for virtio-iommu translations (its granule in QEMU 10).
const VIOMMU_PAGE: u64 = 0x1000;
/// QEMU's limit on H_PUT_TCE_INDIRECT entries per call.
const MAX_INDIRECT: u64 = 512;
/// At most this many pages are modelled for one H_STUFF_TCE that maps (a whole 64 GiB window of
/// 4 KiB pages); more is taken as a trace the model cannot follow.
const MAX_STUFF_MAPS: u64 = 1 << 24;

/// An IOMMU address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    /// A TCE window (pseries), by LIOBN.
    Tce { liobn: u64 },
    /// A virtio-iommu domain.
    ViommuDomain { domain: u32 },
    /// A virtio-iommu endpoint that is in no domain.
    ViommuEndpoint { sid: u32 },
    /// A device behind Intel VT-d.
    Vtd { device: Bdf },
}

impl fmt::Display for Space {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Space::Tce { liobn } => write!(f, "TCE liobn {liobn:#x}"),
            Space::ViommuDomain { domain } => write!(f, "virtio-iommu domain {domain}"),
            Space::ViommuEndpoint { sid } => write!(
                f,
                "virtio-iommu endpoint {} (no domain)",
                Bdf::from_sid(*sid as u16)
            ),
            Space::Vtd { device } => write!(f, "VT-d device {device}"),
        }
    }
}

/// What went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A device access to an IOVA that was not mapped at that moment: never mapped, or unmapped
    /// before the device was done with it.
    NotMapped,
    /// Mapped, but translated to another page or with other permissions than mapped (or the
    /// host's table and the model disagree).
    WrongTranslation,
    /// An access the mapping's permissions do not allow.
    Permission,
    /// The IOMMU refused an access (a fault event, or a refusal without one).
    Fault,
    /// A device access that did not go through the IOMMU (bypass, pass-through, a device the
    /// IOMMU does not translate for).
    Untranslated,
    /// Secure: a page mapped or translated outside the shared pool.
    OutsidePool,
    /// A TCE hypercall, or an IOMMU event that says a request failed.
    RequestFailed,
    /// The host's and the guest's counts differ.
    CountMismatch,
    /// Devices moved data, but no access went through the IOMMU.
    NoTranslations,
    /// Mappings a firmware left in place when the guest began: the device can still reach them.
    Stale,
    /// The trace cannot be read, or holds a modelled event the parser cannot read.
    Unreadable,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::NotMapped => "not-mapped",
            Kind::WrongTranslation => "wrong-translation",
            Kind::Permission => "permission",
            Kind::Fault => "fault",
            Kind::Untranslated => "untranslated",
            Kind::OutsidePool => "outside-pool",
            Kind::RequestFailed => "request-failed",
            Kind::CountMismatch => "count-mismatch",
            Kind::NoTranslations => "no-translations",
            Kind::Stale => "stale",
            Kind::Unreadable => "unreadable",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One violation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// 1-based line of the trace log (0: about the run as a whole, like a count).
    pub line: usize,
    pub kind: Kind,
    pub space: Option<Space>,
    /// The bus address the device used (for TCE: the window's start plus the offset).
    pub iova: Option<u64>,
    pub phys: Option<u64>,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "trace line {}: ", self.line)?;
        }
        write!(f, "{}", self.kind)?;
        if let Some(s) = &self.space {
            write!(f, ", {s}")?;
        }
        if let Some(i) = self.iova {
            write!(f, ", IOVA {i:#x}")?;
        }
        if let Some(p) = self.phys {
            write!(f, ", phys {p:#x}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The guest's and the host's names for the calls that change an IOMMU: the TCE hypercalls, and
/// virtio-iommu's requests.
pub const H_PUT_TCE: &str = "H_PUT_TCE";
pub const H_PUT_TCE_INDIRECT: &str = "H_PUT_TCE_INDIRECT";
pub const H_STUFF_TCE: &str = "H_STUFF_TCE";
pub const H_GET_TCE: &str = "H_GET_TCE";
pub const VIOMMU_ATTACH: &str = "ATTACH";
pub const VIOMMU_MAP: &str = "MAP";
pub const VIOMMU_UNMAP: &str = "UNMAP";
pub const VIOMMU_DETACH: &str = "DETACH";
/// VT-d IOTLB invalidations, by granularity (the guest's `calls_by_kind` names; global ones only
/// in the `iommu_unit` record's `commands`).
pub const VTD_IOTLB_PSI: &str = "IOTLB_PSI";
pub const VTD_IOTLB_DSI: &str = "IOTLB_DSI";
pub const VTD_IOTLB_GLOBAL: &str = "IOTLB_GLOBAL";
/// Calls the guest counts per IOMMU unit (`iommu_unit`), not per domain: a domain's `iommu`
/// record does not list them, and they are compared in [`Verdict::compare_units`].
const UNIT_LEVEL_CALLS: [&str; 2] = [VIOMMU_ATTACH, VIOMMU_DETACH];

/// Calls of one kind and the table entries they asked to write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Calls {
    pub calls: u64,
    /// TCEs (H_PUT_TCE 1, H_PUT_TCE_INDIRECT its entries as traced, H_STUFF_TCE its pages,
    /// H_GET_TCE 1); virtio-iommu MAP and UNMAP: the 4 KiB pages of the request's range
    /// (ATTACH, DETACH: 1); VT-d page-selective invalidations: the pages of the block (1 for
    /// the others).
    pub entries: u64,
}

/// What happened in one space (or in all of them: [`Verdict::totals`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// TCE: pages mapped (an entry with a permission written); virtio-iommu: mappings added.
    pub maps: u64,
    /// TCE: pages unmapped (an empty entry written); virtio-iommu: mappings removed.
    pub unmaps: u64,
    /// Device accesses through the IOMMU.
    pub translations: u64,
    /// Accesses the IOMMU refused.
    pub faults: u64,
    /// Mappings live when the trace ended (TCE pages, virtio-iommu intervals).
    pub live_at_end: u64,
    /// Calls by name ([`H_PUT_TCE`], ... [`VIOMMU_UNMAP`]): TCE hypercalls, failed ones
    /// included; virtio-iommu ATTACH and UNMAP requests as sent, MAP requests QEMU accepted (it
    /// traces no other).
    pub calls: BTreeMap<&'static str, Calls>,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.maps += o.maps;
        self.unmaps += o.unmaps;
        self.translations += o.translations;
        self.faults += o.faults;
        self.live_at_end += o.live_at_end;
        for (name, c) in &o.calls {
            let mine = self.calls.entry(name).or_default();
            mine.calls += c.calls;
            mine.entries += c.entries;
        }
    }

    /// The calls of `name` (zero when there were none).
    pub fn calls(&self, name: &str) -> Calls {
        self.calls.get(name).copied().unwrap_or_default()
    }

    fn call(&mut self, name: &'static str, entries: u64) {
        let c = self.calls.entry(name).or_default();
        c.calls += 1;
        c.entries += entries;
    }
}

/// A guest-physical range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysRange {
    pub base: u64,
    pub size: u64,
}

impl PhysRange {
    fn contains(&self, base: u64, size: u64) -> bool {
        let end = base.checked_add(size);
        base >= self.base && end.is_some_and(|e| e <= self.base.saturating_add(self.size))
    }
}

/// What the oracle checks besides the rules every run keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Secure runs: the shared ranges (the `swiotlb` pool). Every page mapped (when the trace
    /// shows its physical address) and every page translated must lie inside one.
    pub pool: Option<Vec<PhysRange>>,
    /// Devices moved data through the IOMMU: a trace without a single translation fails.
    pub expect_translations: bool,
    /// virtio-iommu and VT-d devices whose DMA must go through the IOMMU: each must have been
    /// switched to its IOMMU address space (`*_switch_address_space ... enabled=1`) last.
    pub iommu_devices: Vec<Bdf>,
    /// x86 devices whose domain the guest reports `static` (all RAM at IOVA = physical
    /// address): each of their translations must land at the IOVA itself. For VT-d, whose
    /// mappings the trace does not show, that is the one check of where an access went.
    pub identity_devices: Vec<Bdf>,
    /// How many violations the verdict keeps.
    pub reported: usize,
    /// The trace line where the guest's own IOMMU work begins (0: the first). The events before
    /// it are a firmware's (SLOF drives its virtio devices through the TCE window before the
    /// guest runs): they are replayed, so that the model knows what they left mapped, but not
    /// checked or counted; whatever they left mapped when the guest begins is a violation
    /// ([`Kind::Stale`]). [`guest_start_line`] finds it.
    pub start_line: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            pool: None,
            expect_translations: false,
            iommu_devices: Vec::new(),
            identity_devices: Vec::new(),
            reported: DEFAULT_REPORTED,
            start_line: 0,
        }
    }
}

/// The oracle's verdict for one trace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The first violations, one per (kind, space, page).
    pub violations: Vec<Violation>,
    /// Every violation, counted.
    pub violation_count: usize,
    pub by_kind: BTreeMap<Kind, usize>,
    pub spaces: BTreeMap<Space, Counts>,
    /// virtio-iommu and VT-d: whether each device's DMA went through the IOMMU at the end (the
    /// last `*_switch_address_space`; the guest's teardown switches them back to bypass).
    pub devices: BTreeMap<Bdf, bool>,
    /// virtio-iommu and VT-d: device accesses through the IOMMU, per device (its requester ID).
    pub device_translations: BTreeMap<Bdf, u64>,
    /// Calls that belong to no space: VT-d IOTLB invalidations ([`VTD_IOTLB_PSI`], ...).
    pub unit_calls: BTreeMap<&'static str, Calls>,
    /// The trace log's [`TraceLog::summary`].
    pub trace_summary: String,
    /// What happened before [`Config::start_line`] (a firmware's work), all spaces together.
    pub firmware: Counts,
    pub start_line: usize,
    reported: usize,
    seen: BTreeSet<(Kind, Option<Space>, Option<u64>)>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.violation_count == 0
    }

    /// The counts of every space together.
    pub fn totals(&self) -> Counts {
        let mut t = Counts::default();
        for c in self.spaces.values() {
            t.add(c);
        }
        t
    }

    /// The counts of the spaces `keep` selects, together.
    pub fn totals_where(&self, keep: impl Fn(&Space) -> bool) -> Counts {
        let mut t = Counts::default();
        for (s, c) in &self.spaces {
            if keep(s) {
                t.add(c);
            }
        }
        t
    }

    pub fn count(&self, kind: Kind) -> usize {
        self.by_kind.get(&kind).copied().unwrap_or(0)
    }

    /// Adds a violation (kept when it is among the first, per kind, space and page).
    pub fn push(&mut self, v: Violation) {
        self.violation_count += 1;
        *self.by_kind.entry(v.kind).or_default() += 1;
        // Repeats of one problem on one page (a device retrying, every access of a request) are
        // counted, and listed once; violations without an address are always listed.
        let fresh = match v.iova {
            Some(i) => self.seen.insert((v.kind, v.space, Some(i & !0xfff))),
            None => true,
        };
        if self.violations.len() < self.reported && fresh {
            self.violations.push(v);
        }
    }

    /// [`compare_counts`] of the totals against the guest's, added to the verdict.
    pub fn compare_counts(&mut self, guest: &GuestCounts) {
        for v in compare_counts(&self.totals(), guest) {
            self.push(v);
        }
    }

    /// The failures as sentences (empty for a pass), the first one a headline.
    pub fn failures(&self) -> Vec<String> {
        if self.passed() {
            return Vec::new();
        }
        let mut f = vec![format!(
            "IOMMU trace oracle: {} violation(s) ({}); trace: {}",
            self.violation_count,
            self.by_kind
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", "),
            self.trace_summary
        )];
        f.extend(self.violations.iter().map(|v| format!("IOMMU trace: {v}")));
        f
    }
}

/// `"3 H_PUT_TCE (3 entries), 1 H_STUFF_TCE (8 entries)"`.
fn calls_list(calls: &BTreeMap<&'static str, Calls>) -> String {
    calls
        .iter()
        .map(|(n, c)| format!("{} {n} ({} entries)", c.calls, c.entries))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.totals();
        writeln!(
            f,
            "IOMMU trace oracle: {} ({} violations); trace: {}",
            if self.passed() { "pass" } else { "FAIL" },
            self.violation_count,
            self.trace_summary
        )?;
        writeln!(
            f,
            "  totals: {} maps, {} unmaps, {} translations, {} faults, {} live at end; calls: {}",
            t.maps,
            t.unmaps,
            t.translations,
            t.faults,
            t.live_at_end,
            if t.calls.is_empty() {
                "none".to_string()
            } else {
                calls_list(&t.calls)
            }
        )?;
        for (s, c) in &self.spaces {
            writeln!(
                f,
                "  {s}: {} maps, {} unmaps, {} translations, {} faults, {} live at end",
                c.maps, c.unmaps, c.translations, c.faults, c.live_at_end
            )?;
        }
        if !self.unit_calls.is_empty() {
            writeln!(f, "  unit: {}", calls_list(&self.unit_calls))?;
        }
        if self.start_line > 0 {
            let fw = &self.firmware;
            writeln!(
                f,
                "  before the guest (trace lines 1..{}, not checked): {} maps, {} unmaps, {} \
                 translations, {} calls",
                self.start_line,
                fw.maps,
                fw.unmaps,
                fw.translations,
                fw.calls.values().map(|c| c.calls).sum::<u64>()
            )?;
        }
        for v in &self.violations {
            writeln!(f, "  {v}")?;
        }
        if self.violation_count > self.violations.len() {
            writeln!(
                f,
                "  ... {} more",
                self.violation_count - self.violations.len()
            )?;
        }
        Ok(())
    }
}

/// One kind of call as the guest counts it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestCalls {
    /// [`H_PUT_TCE`], ..., [`VIOMMU_UNMAP`].
    pub name: String,
    pub calls: u64,
    /// The entries the calls asked to write, when the guest says.
    pub entries: Option<u64>,
}

/// The counts the guest reports, summed over its devices. Only what it gives is compared.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestCounts {
    /// TCE pages (virtio-iommu mappings) mapped and unmapped.
    pub maps: Option<u64>,
    pub unmaps: Option<u64>,
    /// Every kind of call it made. When the list is not empty, a kind the host saw and the
    /// guest does not list counts as 0 calls for the guest.
    pub calls: Vec<GuestCalls>,
    /// IOMMU pages (mappings) still mapped when the guest reported, against the host's
    /// [`Counts::live_at_end`].
    pub live_pages: Option<u64>,
}

/// Each count the guest gives against the host's: a [`Kind::CountMismatch`] per difference.
pub fn compare_counts(host: &Counts, guest: &GuestCounts) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut differ = |what: String, guest: u64, host: u64| {
        if guest != host {
            out.push(Violation {
                line: 0,
                kind: Kind::CountMismatch,
                space: None,
                iova: None,
                phys: None,
                message: format!("the guest reports {guest} {what}, the host traced {host}"),
            });
        }
    };
    if let Some(g) = guest.maps {
        differ("pages mapped".into(), g, host.maps);
    }
    if let Some(g) = guest.unmaps {
        differ("pages unmapped".into(), g, host.unmaps);
    }
    if let Some(g) = guest.live_pages {
        differ("pages still mapped at the end".into(), g, host.live_at_end);
    }
    for g in &guest.calls {
        let h = host.calls(&g.name);
        differ(format!("{} calls", g.name), g.calls, h.calls);
        if let Some(e) = g.entries {
            differ(format!("{} entries", g.name), e, h.entries);
        }
    }
    if !guest.calls.is_empty() {
        for (name, h) in &host.calls {
            if !guest.calls.iter().any(|g| g.name == *name) && !UNIT_LEVEL_CALLS.contains(name) {
                differ(format!("{name} calls"), 0, h.calls);
            }
        }
    }
    out
}

/// Whether a `virtio.dma` path goes through an IOMMU (`iommu`, `iommu+bounce`).
pub fn is_iommu_path(dma: &str) -> bool {
    dma == "iommu" || dma.starts_with("iommu+")
}

/// `"00:02.0"` as a [`Bdf`].
pub fn parse_bdf(s: &str) -> Option<Bdf> {
    let (bus, rest) = s.split_once(':')?;
    let (slot, func) = rest.split_once('.')?;
    Some(Bdf {
        bus: u8::from_str_radix(bus, 16).ok()?,
        slot: u8::from_str_radix(slot, 16).ok().filter(|s| *s < 32)?,
        func: u8::from_str_radix(func, 16).ok().filter(|f| *f < 8)?,
    })
}

/// The oracle's configuration for a run, from its report: the pool when the guest says it is
/// secure (the `swiotlb` record), translations expected when a device on an IOMMU path moved
/// data, and on x86 those devices must be behind their IOMMU, with identity translations when
/// their domain is `static`.
pub fn config_for(records: &[Record], arch: Arch) -> Config {
    let view = |r: &Record| r.view::<Virtio>().ok();
    let devices: Vec<Virtio> = records.iter().filter_map(view).collect();
    let secure = records
        .iter()
        .find_map(|r| r.view::<Secure>().ok())
        .is_some_and(|s| s.secure);
    let pool = records.iter().find_map(|r| r.view::<Swiotlb>().ok());
    let on_iommu = |v: &&Virtio| is_iommu_path(&v.dma);
    Config {
        pool: secure.then(|| {
            pool.map(|p| PhysRange {
                base: p.base.0,
                size: p.size,
            })
            .into_iter()
            .collect()
        }),
        expect_translations: devices
            .iter()
            .filter(on_iommu)
            .any(|v| v.bytes_to_device + v.bytes_from_device > 0),
        iommu_devices: match arch {
            Arch::X86_64 => devices
                .iter()
                .filter(on_iommu)
                .filter_map(|v| parse_bdf(&v.location))
                .collect(),
            Arch::Ppc64le => Vec::new(),
        },
        identity_devices: match arch {
            Arch::X86_64 => records
                .iter()
                .filter(|r| r.event == "virtio")
                .filter(|r| {
                    r.get("iommu")
                        .and_then(|i| i.get("mode"))
                        .and_then(|m| m.as_str())
                        == Some("static")
                })
                .filter_map(|r| parse_bdf(r.get("location")?.as_str()?))
                .collect(),
            Arch::Ppc64le => Vec::new(),
        },
        reported: DEFAULT_REPORTED,
        start_line: 0,
    }
}

/// One IOMMU domain as the guest reports it: an `iommu` record (docs/report.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestDomain {
    /// The record's `location` (pseries: the PHB's device-tree path).
    pub location: String,
    /// The host's name for the domain: backend `tce` → the TCE window whose LIOBN is `domain`.
    /// `None` for a backend the oracle does not know.
    pub space: Option<Space>,
    /// Its calls by kind and the pages still mapped.
    pub counts: GuestCounts,
}

/// The fields of the guest's `iommu` object the oracle reads.
#[derive(serde::Deserialize)]
struct GuestIommu {
    backend: String,
    domain: Hex,
    pages: u64,
    #[serde(default)]
    maps: u64,
    #[serde(default)]
    unmaps: u64,
    calls_by_kind: BTreeMap<String, GuestKind>,
}

#[derive(serde::Deserialize, Default)]
struct GuestKind {
    calls: u64,
    entries: u64,
}

/// Every domain the guest reports in an `iommu` record with `result` `ok` (a domain that failed
/// to set up has no counts; its device fails).
///
/// On x86 the unit's teardown comes after the `iommu` records (`iommu_unit`, docs/report.md):
/// when it went `ok`, it removed each mapping still live, one UNMAP per run of pages. A
/// virtio-iommu domain's counts are the record's plus that: UNMAP calls `maps - unmaps` more,
/// its entries `pages` more, and nothing mapped at the end.
pub fn guest_domains(records: &[Record]) -> Vec<GuestDomain> {
    let torn_down = records.iter().any(|r| {
        r.event == "iommu_unit"
            && r.get("kind").and_then(|v| v.as_str()) == Some("virtio-iommu")
            && r.get("teardown").and_then(|v| v.as_str()) == Some("ok")
    });
    records
        .iter()
        .filter(|r| r.event == "iommu" && r.get("result").and_then(|v| v.as_str()) == Some("ok"))
        .filter_map(|r| {
            let mut io: GuestIommu = serde_json::from_value(r.get("iommu")?.clone()).ok()?;
            if io.backend == "virtio-iommu" && torn_down {
                let unmap = io.calls_by_kind.entry(VIOMMU_UNMAP.into()).or_default();
                unmap.calls += io.maps.saturating_sub(io.unmaps);
                unmap.entries += io.pages;
                io.pages = 0;
            }
            let space = match io.backend.as_str() {
                "tce" => Some(Space::Tce { liobn: io.domain.0 }),
                "virtio-iommu" => u32::try_from(io.domain.0)
                    .ok()
                    .map(|domain| Space::ViommuDomain { domain }),
                _ => None,
            };
            Some(GuestDomain {
                location: r
                    .get("location")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string(),
                space,
                counts: GuestCounts {
                    maps: None,
                    unmaps: None,
                    calls: io
                        .calls_by_kind
                        .into_iter()
                        .map(|(name, k)| GuestCalls {
                            name,
                            calls: k.calls,
                            entries: Some(k.entries),
                        })
                        .collect(),
                    live_pages: Some(io.pages),
                },
            })
        })
        .collect()
}

impl Verdict {
    /// Each domain the guest reports against the host's counts of that space, and every space
    /// where the host saw calls that no reported domain accounts for.
    pub fn compare_domains(&mut self, domains: &[GuestDomain]) {
        let mut found = Vec::new();
        for d in domains {
            let Some(space) = d.space else { continue };
            found.push(space);
            let host = self.spaces.get(&space).cloned().unwrap_or_default();
            for mut x in compare_counts(&host, &d.counts) {
                x.space = Some(space);
                x.message = format!(
                    "{} (`iommu` record of {}): {}",
                    space, d.location, x.message
                );
                self.push(x);
            }
        }
        let unaccounted: Vec<(Space, u64)> = self
            .spaces
            .iter()
            .filter(|(s, _)| !found.contains(s))
            .map(|(s, c)| (*s, c.calls.values().map(|k| k.calls).sum::<u64>()))
            .filter(|(_, n)| *n > 0)
            .collect();
        for (space, n) in unaccounted {
            self.push(Violation {
                line: 0,
                kind: Kind::CountMismatch,
                space: Some(space),
                iova: None,
                phys: None,
                message: format!(
                    "the host traced {n} calls on {space}, but the guest reports no `iommu` \
                     record for it"
                ),
            });
        }
    }
}

/// An x86 IOMMU unit as the guest reports it (`iommu_unit`, after its teardown): the calls it
/// counts for the whole unit, by the host's names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestUnit {
    /// `virtio-iommu` or `vt-d`.
    pub kind: String,
    pub location: String,
    pub calls: Vec<GuestCalls>,
    /// The unit's teardown went `ok`: nothing is left mapped.
    pub torn_down: bool,
}

/// Every `iommu_unit` record with `result` `ok`: virtio-iommu `requests` (attach, detach, map,
/// unmap), VT-d IOTLB `commands` (page-selective with their pages, domain, global).
pub fn guest_units(records: &[Record]) -> Vec<GuestUnit> {
    let n = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_u64());
    let calls = |name: &str, calls: Option<u64>, entries: Option<u64>| {
        calls.map(|calls| GuestCalls {
            name: name.into(),
            calls,
            entries,
        })
    };
    records
        .iter()
        .filter(|r| {
            r.event == "iommu_unit" && r.get("result").and_then(|v| v.as_str()) == Some("ok")
        })
        .filter_map(|r| {
            let kind = r.get("kind")?.as_str()?.to_string();
            let list: Vec<Option<GuestCalls>> = match kind.as_str() {
                "virtio-iommu" => {
                    let q = r.get("requests")?;
                    vec![
                        calls(VIOMMU_ATTACH, n(q, "attach"), None),
                        calls(VIOMMU_DETACH, n(q, "detach"), None),
                        calls(VIOMMU_MAP, n(q, "map"), None),
                        calls(VIOMMU_UNMAP, n(q, "unmap"), None),
                    ]
                }
                "vt-d" => {
                    let c = r.get("commands")?;
                    vec![
                        calls(
                            VTD_IOTLB_PSI,
                            n(c, "iotlb_page"),
                            Some(n(c, "iotlb_page_pages")?),
                        ),
                        calls(VTD_IOTLB_DSI, n(c, "iotlb_domain"), None),
                        calls(VTD_IOTLB_GLOBAL, n(c, "iotlb_global"), None),
                    ]
                }
                _ => return None,
            };
            Some(GuestUnit {
                kind,
                location: r
                    .get("location")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string(),
                calls: list.into_iter().collect::<Option<Vec<_>>>()?,
                torn_down: r.get("teardown").and_then(|v| v.as_str()) == Some("ok"),
            })
        })
        .collect()
}

impl Verdict {
    /// Each x86 unit's counts against the host's: virtio-iommu requests over all its domains
    /// (with nothing left mapped after a clean teardown), VT-d IOTLB invalidations.
    pub fn compare_units(&mut self, units: &[GuestUnit]) {
        for u in units {
            let host = match u.kind.as_str() {
                "virtio-iommu" => self.totals_where(|s| matches!(s, Space::ViommuDomain { .. })),
                _ => Counts {
                    calls: self.unit_calls.clone(),
                    ..Default::default()
                },
            };
            let guest = GuestCounts {
                calls: u.calls.clone(),
                live_pages: (u.kind == "virtio-iommu" && u.torn_down).then_some(0),
                ..Default::default()
            };
            for mut x in compare_counts(&host, &guest) {
                x.message = format!(
                    "{} unit at {} (`iommu_unit` record): {}",
                    u.kind, u.location, x.message
                );
                self.push(x);
            }
        }
    }
}

/// The oracle over a traced run: [`check`] of its trace with [`config_for`] its report, and the
/// host's counts against the guest's `iommu` records ([`Verdict::compare_domains`]). Under SLOF
/// the firmware's own TCE work is set apart ([`guest_start_line`]). A run without a trace fails.
pub fn check_run(run: &RunResult) -> Verdict {
    let cfg = config_for(&run.records, run.config.arch);
    let Some(log) = &run.trace else {
        let mut v = Verdict {
            reported: cfg.reported,
            trace_summary: "no trace".into(),
            ..Default::default()
        };
        v.push(Violation {
            line: 0,
            kind: Kind::Unreadable,
            space: None,
            iova: None,
            phys: None,
            message: "the run has no trace: enable the IOMMU's trace events \
                      (QemuConfig::trace_events)"
                .into(),
        });
        return v;
    };
    let domains = guest_domains(&run.records);
    // SLOF drives the virtio devices it finds through the TCE window before the guest runs.
    let mut cfg = cfg;
    if run.config.effective_firmware() == Some(Firmware::Slof) {
        cfg.start_line = guest_start_line(log, &domains);
    }
    let mut v = check(log, &cfg);
    v.compare_domains(&domains);
    v.compare_units(&guest_units(&run.records));
    v
}

/// A TCE entry the model holds.
#[derive(Clone, Copy, Debug)]
struct TcePage {
    /// `None`: written by H_PUT_TCE_INDIRECT before its last entry (the trace does not show it);
    /// learnt at the first access.
    phys: Option<u64>,
    perm: Option<u64>,
    line: usize,
}

#[derive(Clone, Debug)]
struct Window {
    bus_offset: u64,
    page_shift: u32,
    pages: BTreeMap<u64, TcePage>,
    /// Page index → the line that last emptied it.
    unmapped: BTreeMap<u64, usize>,
    /// H_STUFF_TCE ranges that emptied pages: (first index, last index, line).
    stuffed: Vec<(u64, u64, usize)>,
}

impl Window {
    fn new() -> Window {
        Window {
            bus_offset: 0,
            page_shift: TCE_DEFAULT_PAGE_SHIFT,
            pages: BTreeMap::new(),
            unmapped: BTreeMap::new(),
            stuffed: Vec::new(),
        }
    }

    fn page_size(&self) -> u64 {
        1u64 << self.page_shift
    }

    /// The line that last emptied page `idx`, if any.
    fn unmapped_at(&self, idx: u64) -> Option<usize> {
        let single = self.unmapped.get(&idx).copied();
        let stuffed = self
            .stuffed
            .iter()
            .filter(|(a, b, _)| (*a..=*b).contains(&idx))
            .map(|(_, _, l)| *l)
            .max();
        single.max(stuffed)
    }
}

#[derive(Clone, Copy, Debug)]
struct ViommuMapping {
    end: u64,
    phys: u64,
    flags: u32,
    line: usize,
}

/// A `virtio_iommu_translate` waiting for its `translate_out`.
#[derive(Clone, Debug)]
struct Pending {
    sid: u32,
    addr: u64,
    flag: u32,
    line: usize,
    domain: Option<u32>,
}

struct Replay<'a> {
    cfg: &'a Config,
    v: Verdict,
    windows: BTreeMap<u64, Window>,
    domains: BTreeMap<u32, BTreeMap<u64, ViommuMapping>>,
    /// (domain, start) → (end, line) of mappings removed.
    viommu_unmapped: BTreeMap<(u32, u64), (u64, usize)>,
    endpoints: BTreeMap<u32, u32>,
    pending: Vec<Pending>,
    /// x86: per device, the lines of its first and last access through the IOMMU.
    accesses: BTreeMap<Bdf, (usize, usize)>,
    /// x86: per device, the lines where it was switched to bypass.
    bypassed: BTreeMap<Bdf, Vec<usize>>,
    /// Past [`Config::start_line`]: events are checked and counted.
    checking: bool,
}

/// 4 KiB pages of the inclusive IOVA range of a virtio-iommu request.
fn viommu_pages(start: u64, end: u64) -> u64 {
    end.saturating_sub(start) / VIOMMU_PAGE + 1
}

/// Replays `log` and checks it (see the module doc).
pub fn check(log: &TraceLog, cfg: &Config) -> Verdict {
    let mut r = Replay {
        cfg,
        v: Verdict {
            reported: cfg.reported,
            trace_summary: log.summary(),
            start_line: cfg.start_line,
            ..Default::default()
        },
        windows: BTreeMap::new(),
        domains: BTreeMap::new(),
        viommu_unmapped: BTreeMap::new(),
        endpoints: BTreeMap::new(),
        pending: Vec::new(),
        accesses: BTreeMap::new(),
        bypassed: BTreeMap::new(),
        checking: true,
    };
    if let Some(p) = &log.problem {
        r.violation(0, Kind::Unreadable, None, None, None, p.clone());
    }
    for (line, text) in &log.malformed_lines {
        r.violation(
            *line,
            Kind::Unreadable,
            None,
            None,
            None,
            format!("a modelled event the parser cannot read: {text:?}"),
        );
    }
    // The ones not kept still count.
    for _ in log.malformed_lines.len()..log.malformed {
        r.violation(
            0,
            Kind::Unreadable,
            None,
            None,
            None,
            "a modelled event the parser cannot read".into(),
        );
    }
    r.checking = cfg.start_line == 0;
    for t in &log.events {
        if !r.checking && t.line >= cfg.start_line {
            r.checking = true;
            r.guest_begins(t.line);
        }
        r.event(t.line, &t.event);
    }
    r.finish()
}

/// Where the guest's own IOMMU work begins in `log`, when a firmware may have used the IOMMU
/// first: the guest's calls are the last ones on each TCE window it reports (nothing runs after
/// the guest), as many as its `iommu` record counts, so its first call on a window is the host's
/// call number `host - guest` there; the guest begins at the earliest of those. A window the
/// guest reports no calls on gives nothing; when no window does, the guest begins after the last
/// TCE call. The counts themselves are compared afterwards ([`Verdict::compare_domains`]): a
/// guest that under-reports moves its start later, and what it then seems to leave unaccounted
/// shows as a count mismatch, or as firmware mappings left live ([`Kind::Stale`]).
pub fn guest_start_line(log: &TraceLog, domains: &[GuestDomain]) -> usize {
    let mut calls: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for t in &log.events {
        let liobn = match &t.event {
            Event::TcePut { liobn, .. }
            | Event::TceIndirect { liobn, .. }
            | Event::TceStuff { liobn, .. }
            | Event::TceGet { liobn, .. } => *liobn,
            _ => continue,
        };
        calls.entry(liobn).or_default().push(t.line);
    }
    let mut start: Option<usize> = None;
    for d in domains {
        let Some(Space::Tce { liobn }) = d.space else {
            continue;
        };
        let guest: u64 = d.counts.calls.iter().map(|c| c.calls).sum();
        let host = calls.get(&liobn).map_or(&[][..], Vec::as_slice);
        if guest == 0 || host.is_empty() {
            continue;
        }
        let first = host
            .len()
            .saturating_sub(usize::try_from(guest).unwrap_or(usize::MAX));
        let line = host[first];
        start = Some(start.map_or(line, |s| s.min(line)));
    }
    start.unwrap_or_else(|| calls.values().flatten().max().map_or(0, |l| l + 1))
}

impl Replay<'_> {
    fn counts(&mut self, s: Space) -> &mut Counts {
        if self.checking {
            self.v.spaces.entry(s).or_default()
        } else {
            &mut self.v.firmware
        }
    }

    /// The guest's first event: every TCE page still mapped now is the firmware's.
    fn guest_begins(&mut self, line: usize) {
        let stale: Vec<(u64, usize, u64, Option<u64>)> = self
            .windows
            .iter()
            .filter_map(|(liobn, w)| {
                let (idx, p) = w.pages.iter().next()?;
                Some((
                    *liobn,
                    w.pages.len(),
                    idx * w.page_size() + w.bus_offset,
                    p.phys,
                ))
            })
            .collect();
        for (liobn, n, iova, phys) in stale {
            self.violation(
                line,
                Kind::Stale,
                Some(Space::Tce { liobn }),
                Some(iova),
                phys,
                format!(
                    "{n} page(s) the firmware mapped are still mapped when the guest begins \
                     (the first is shown): the device can reach them"
                ),
            );
        }
    }

    fn violation(
        &mut self,
        line: usize,
        kind: Kind,
        space: Option<Space>,
        iova: Option<u64>,
        phys: Option<u64>,
        message: String,
    ) {
        if !self.checking {
            return;
        }
        self.v.push(Violation {
            line,
            kind,
            space,
            iova,
            phys,
            message,
        });
    }

    /// Secure runs: whether `[base, base + size)` lies inside the pool (always true otherwise).
    fn in_pool(&self, base: u64, size: u64) -> bool {
        match &self.cfg.pool {
            None => true,
            Some(ranges) => ranges.iter().any(|r| r.contains(base, size.max(1))),
        }
    }

    fn pool_text(&self) -> String {
        match &self.cfg.pool {
            Some(ranges) => ranges
                .iter()
                .map(|r| format!("[{:#x}, {:#x})", r.base, r.base.saturating_add(r.size)))
                .collect::<Vec<_>>()
                .join(", "),
            None => String::new(),
        }
    }

    fn window(&mut self, liobn: u64) -> &mut Window {
        self.windows.entry(liobn).or_insert_with(Window::new)
    }

    fn event(&mut self, line: usize, e: &Event) {
        match e {
            Event::TcePut {
                liobn,
                ioba,
                tce,
                ret,
            } => {
                if self.tce_hcall(line, *liobn, H_PUT_TCE, 1, *ioba, *ret) {
                    self.tce_write(line, *liobn, *ioba, Some(*tce));
                }
            }
            Event::TceIndirect {
                liobn,
                ioba,
                last_index,
                last_tce,
                ret,
                ..
            } => {
                let entries = last_index.saturating_add(1);
                if !self.tce_hcall(line, *liobn, H_PUT_TCE_INDIRECT, entries, *ioba, *ret) {
                    return;
                }
                let s = Space::Tce { liobn: *liobn };
                if *last_index >= MAX_INDIRECT {
                    return self.violation(
                        line,
                        Kind::Unreadable,
                        Some(s),
                        Some(*ioba),
                        None,
                        format!(
                            "H_PUT_TCE_INDIRECT succeeded with entry {last_index}; QEMU takes at \
                             most {MAX_INDIRECT}"
                        ),
                    );
                }
                let page = self.window(*liobn).page_size();
                let base = ioba & !(page - 1);
                // The untraced entries are taken to be of the last one's kind.
                let unmap = last_tce & TCE_PERM_MASK == 0;
                for k in 0..=*last_index {
                    let known = (k == *last_index).then_some(*last_tce);
                    let Some(at) = base.checked_add(k * page) else {
                        break;
                    };
                    self.tce_write(line, *liobn, at, if unmap { Some(0) } else { known });
                }
            }
            Event::TceStuff {
                liobn,
                ioba_end,
                tce_value,
                npages,
                ret,
            } => {
                let entries = u64::try_from(*npages).unwrap_or(0);
                if self.tce_hcall(line, *liobn, H_STUFF_TCE, entries, *ioba_end, *ret) {
                    self.tce_stuff(line, *liobn, *ioba_end, *tce_value, *npages);
                }
            }
            Event::TceGet {
                liobn,
                ioba,
                ret,
                tce,
            } => {
                if self.tce_hcall(line, *liobn, H_GET_TCE, 1, *ioba, *ret) {
                    self.tce_get(line, *liobn, *ioba, *tce);
                }
            }
            Event::TceXlate {
                liobn,
                addr,
                phys,
                perm,
                mask,
            } => self.tce_xlate(line, *liobn, *addr, *phys, *perm, *mask),
            Event::TceNewTable { liobn, .. } => {
                // A fresh, empty table (allocation at reset or for a new window): the bus offset
                // is the default window's until ibm,create-pe-dma-window says otherwise.
                self.windows.insert(*liobn, Window::new());
            }
            Event::TceMigration | Event::DdwQuery { .. } => {}
            Event::DdwCreate {
                page_size,
                start,
                liobn,
                ..
            } => {
                if !page_size.is_power_of_two() {
                    return self.violation(
                        line,
                        Kind::Unreadable,
                        Some(Space::Tce { liobn: *liobn }),
                        None,
                        None,
                        format!("a DMA window with page size {page_size:#x}, not a power of 2"),
                    );
                }
                let w = self.window(*liobn);
                w.bus_offset = *start;
                w.page_shift = page_size.trailing_zeros();
            }
            Event::DdwRemove { liobn } => {
                self.windows.remove(liobn);
            }
            Event::DdwReset { buid, .. } => {
                // The PHB is back to its default window, whose new table came just before; every
                // other window of the PHB is gone.
                let phb = buid.wrapping_sub(SPAPR_PCI_BASE_BUID);
                self.windows.retain(|liobn, _| {
                    let of_phb = liobn & 0x8000_0000 != 0 && (liobn >> 8) & 0x7f_ffff == phb;
                    !of_phb || liobn & 0xff == 0
                });
            }

            Event::ViommuAttach { domain, endpoint } => {
                self.counts(Space::ViommuDomain { domain: *domain })
                    .call(VIOMMU_ATTACH, 1);
                self.endpoints.insert(*endpoint, *domain);
            }
            Event::ViommuDetach { domain, .. } => {
                self.counts(Space::ViommuDomain { domain: *domain })
                    .call(VIOMMU_DETACH, 1);
            }
            Event::ViommuEndpointDetached { domain, endpoint } => {
                if self.endpoints.get(endpoint) == Some(domain) {
                    self.endpoints.remove(endpoint);
                }
            }
            Event::ViommuMap {
                domain,
                virt_start,
                virt_end,
                phys_start,
                flags,
            } => self.viommu_map(line, *domain, *virt_start, *virt_end, *phys_start, *flags),
            Event::ViommuUnmap {
                domain,
                virt_start,
                virt_end,
            } => {
                self.counts(Space::ViommuDomain { domain: *domain })
                    .call(VIOMMU_UNMAP, viommu_pages(*virt_start, *virt_end));
            }
            Event::ViommuUnmapDone {
                domain,
                virt_start,
                virt_end,
            } => {
                let s = Space::ViommuDomain { domain: *domain };
                self.counts(s).unmaps += 1;
                let removed = self
                    .domains
                    .get_mut(domain)
                    .and_then(|m| m.remove(virt_start));
                if removed.is_none() {
                    self.violation(
                        line,
                        Kind::WrongTranslation,
                        Some(s),
                        Some(*virt_start),
                        None,
                        format!(
                            "QEMU removed mapping [{virt_start:#x}, {virt_end:#x}], which the \
                             trace never added"
                        ),
                    );
                }
                self.viommu_unmapped
                    .insert((*domain, *virt_start), (*virt_end, line));
            }
            Event::ViommuTranslate {
                sid, addr, flag, ..
            } => {
                self.device_access(line, Bdf::from_sid(*sid as u16));
                let domain = self.endpoints.get(sid).copied();
                let s = match domain {
                    Some(d) => Space::ViommuDomain { domain: d },
                    None => Space::ViommuEndpoint { sid: *sid },
                };
                self.counts(s).translations += 1;
                self.pending.push(Pending {
                    sid: *sid,
                    addr: *addr,
                    flag: *flag,
                    line,
                    domain,
                });
            }
            Event::ViommuTranslateOut { addr, phys, sid } => {
                self.viommu_out(line, *addr, *phys, *sid)
            }
            Event::ViommuFault {
                reason,
                endpoint,
                address,
                ..
            } => self.viommu_fault(line, *reason, *endpoint, *address),
            Event::ViommuDomainAlloc { .. } => {}
            Event::ViommuDomainFree { domain } => {
                self.domains.remove(domain);
                self.endpoints.retain(|_, d| d != domain);
            }
            Event::ViommuSwitch { device, enabled } => self.switch(line, *device, *enabled),
            Event::ViommuSetBypass { .. } => {}
            Event::ViommuReset => {
                self.domains.clear();
                self.endpoints.clear();
            }

            Event::VtdTranslate {
                device,
                iova,
                gpa,
                mask,
            } => {
                let s = Space::Vtd { device: *device };
                self.counts(s).translations += 1;
                self.device_access(line, *device);
                let size = mask.saturating_add(1);
                if self.cfg.identity_devices.contains(device) && gpa != iova {
                    self.violation(
                        line,
                        Kind::WrongTranslation,
                        Some(s),
                        Some(*iova),
                        Some(*gpa),
                        "the device's domain is static (IOVA = physical address), but the \
                         access was translated elsewhere"
                            .into(),
                    );
                }
                if !self.in_pool(*gpa & !mask, size) {
                    let pool = self.pool_text();
                    self.violation(
                        line,
                        Kind::OutsidePool,
                        Some(s),
                        Some(*iova),
                        Some(*gpa),
                        format!(
                            "a device access translated to a page outside the shared pool {pool}"
                        ),
                    );
                }
            }
            Event::VtdFault {
                sid,
                fault,
                addr,
                write,
            } => {
                let s = Space::Vtd {
                    device: Bdf::from_sid(*sid as u16),
                };
                self.counts(s).faults += 1;
                self.violation(
                    line,
                    Kind::Fault,
                    Some(s),
                    Some(*addr),
                    None,
                    format!(
                        "VT-d fault reason {fault} on a {}",
                        if *write { "write" } else { "read" }
                    ),
                );
            }
            Event::VtdPassthrough { sid, iova } => {
                let s = Space::Vtd {
                    device: Bdf::from_sid(*sid as u16),
                };
                self.violation(
                    line,
                    Kind::Untranslated,
                    Some(s),
                    Some(*iova),
                    None,
                    "a pass-through access: the device's DMA is not translated".into(),
                );
            }
            Event::VtdFaultDisabled => {
                self.violation(
                    line,
                    Kind::Fault,
                    None,
                    None,
                    None,
                    "a VT-d fault that was not recorded (fault processing disabled)".into(),
                );
            }
            Event::VtdSwitch { device, enabled } => self.switch(line, *device, *enabled),
            Event::VtdInvalidate { domain, addr, mask } => {
                let (name, entries) = match (domain, addr, mask) {
                    (Some(_), Some(_), Some(am)) => (VTD_IOTLB_PSI, 1u64 << (*am).min(63)),
                    (Some(_), _, _) => (VTD_IOTLB_DSI, 1),
                    _ => (VTD_IOTLB_GLOBAL, 1),
                };
                if self.checking {
                    let c = self.v.unit_calls.entry(name).or_default();
                    c.calls += 1;
                    c.entries += entries;
                }
            }
            Event::VtdEnable { .. } | Event::VtdIotlb { .. } | Event::VtdReset => {}
        }
    }

    /// A device access through an x86 IOMMU (translated or not).
    fn device_access(&mut self, line: usize, device: Bdf) {
        if !self.checking {
            return;
        }
        *self.v.device_translations.entry(device).or_default() += 1;
        let span = self.accesses.entry(device).or_insert((line, line));
        span.1 = line;
    }

    fn switch(&mut self, line: usize, device: Bdf, enabled: bool) {
        self.v.devices.insert(device, enabled);
        if !enabled {
            self.bypassed.entry(device).or_default().push(line);
        }
    }

    /// Counts TCE hypercall `call` (`entries` TCEs) on window `liobn`; false, with a violation,
    /// when it failed (`ret` not 0): there is then nothing of it to replay.
    fn tce_hcall(
        &mut self,
        line: usize,
        liobn: u64,
        call: &'static str,
        entries: u64,
        ioba: u64,
        ret: i64,
    ) -> bool {
        let s = Space::Tce { liobn };
        self.counts(s).call(call, entries);
        if ret != 0 {
            self.violation(
                line,
                Kind::RequestFailed,
                Some(s),
                Some(ioba),
                None,
                format!("{call} returned {ret} (a correct guest never gets an error)"),
            );
        }
        ret == 0
    }

    /// One TCE written at bus address `ioba`: `tce` is its value (`None`: not in the trace, a
    /// map).
    fn tce_write(&mut self, line: usize, liobn: u64, ioba: u64, tce: Option<u64>) {
        let s = Space::Tce { liobn };
        let w = self.window(liobn);
        let (page, bus_offset) = (w.page_size(), w.bus_offset);
        let Some(rel) = ioba.checked_sub(bus_offset) else {
            return self.violation(
                line,
                Kind::WrongTranslation,
                Some(s),
                Some(ioba),
                None,
                format!(
                    "QEMU accepted a TCE below the window's start {bus_offset:#x} (the model's \
                     window is wrong)"
                ),
            );
        };
        let idx = rel / page;
        match tce {
            Some(t) if t & TCE_PERM_MASK == 0 => {
                let w = self.window(liobn);
                w.pages.remove(&idx);
                w.unmapped.insert(idx, line);
                self.counts(s).unmaps += 1;
            }
            _ => {
                let phys = tce.map(|t| t & !(page - 1));
                self.window(liobn).pages.insert(
                    idx,
                    TcePage {
                        phys,
                        perm: tce.map(|t| t & TCE_PERM_MASK),
                        line,
                    },
                );
                self.counts(s).maps += 1;
                if let Some(p) = phys
                    && !self.in_pool(p, page)
                {
                    let pool = self.pool_text();
                    self.violation(
                        line,
                        Kind::OutsidePool,
                        Some(s),
                        Some(ioba),
                        Some(p),
                        format!("mapped a page outside the shared pool {pool}"),
                    );
                }
            }
        }
    }

    fn tce_stuff(&mut self, line: usize, liobn: u64, ioba_end: u64, tce: u64, npages: i64) {
        let s = Space::Tce { liobn };
        let w = self.window(liobn);
        let (page, bus_offset) = (w.page_size(), w.bus_offset);
        let n = u64::try_from(npages).unwrap_or(0);
        // QEMU traces the address after its loop.
        let start = n
            .checked_mul(page)
            .and_then(|len| ioba_end.checked_sub(len))
            .and_then(|a| a.checked_sub(bus_offset));
        let Some(start) = start else {
            return self.violation(
                line,
                Kind::WrongTranslation,
                Some(s),
                Some(ioba_end),
                None,
                format!(
                    "H_STUFF_TCE of {npages} pages ending at {ioba_end:#x} starts below the \
                     window's start {bus_offset:#x} (the model's window is wrong)"
                ),
            );
        };
        if n == 0 {
            return;
        }
        let first = start / page;
        let last = first + n - 1;
        if tce & TCE_PERM_MASK == 0 {
            let w = self.window(liobn);
            let gone: Vec<u64> = w.pages.range(first..=last).map(|(k, _)| *k).collect();
            for k in gone {
                w.pages.remove(&k);
            }
            w.stuffed.push((first, last, line));
            self.counts(s).unmaps += n;
        } else {
            if n > MAX_STUFF_MAPS {
                return self.violation(
                    line,
                    Kind::Unreadable,
                    Some(s),
                    Some(start + bus_offset),
                    None,
                    format!("H_STUFF_TCE mapped {n} pages, more than the model follows"),
                );
            }
            let phys = tce & !(page - 1);
            let perm = tce & TCE_PERM_MASK;
            let w = self.window(liobn);
            for idx in first..=last {
                w.pages.insert(
                    idx,
                    TcePage {
                        phys: Some(phys),
                        perm: Some(perm),
                        line,
                    },
                );
            }
            self.counts(s).maps += n;
            if !self.in_pool(phys, page) {
                let pool = self.pool_text();
                self.violation(
                    line,
                    Kind::OutsidePool,
                    Some(s),
                    Some(start + bus_offset),
                    Some(phys),
                    format!(
                        "H_STUFF_TCE mapped {n} pages to a page outside the shared pool {pool}"
                    ),
                );
            }
        }
    }

    /// H_GET_TCE read an entry: it must be what the model holds.
    fn tce_get(&mut self, line: usize, liobn: u64, ioba: u64, tce: u64) {
        let s = Space::Tce { liobn };
        let w = self.window(liobn);
        let page = w.page_size();
        let Some(rel) = ioba.checked_sub(w.bus_offset) else {
            return;
        };
        let idx = rel / page;
        let (phys, perm) = (tce & !(page - 1), tce & TCE_PERM_MASK);
        let model = w.pages.get_mut(&idx);
        let disagree = match model {
            Some(p) if p.phys.is_none() => {
                if perm != 0 {
                    p.phys = Some(phys);
                    p.perm = Some(perm);
                }
                perm == 0
            }
            Some(p) => p.phys != Some(phys) || p.perm != Some(perm),
            None => perm != 0,
        };
        if disagree {
            self.violation(
                line,
                Kind::WrongTranslation,
                Some(s),
                Some(ioba),
                Some(phys),
                format!("H_GET_TCE returned {tce:#x}, which is not what the trace wrote there"),
            );
        }
    }

    fn tce_xlate(&mut self, line: usize, liobn: u64, addr: u64, phys: u64, perm: u64, mask: u64) {
        let s = Space::Tce { liobn };
        self.counts(s).translations += 1;
        let w = self.window(liobn);
        let page = w.page_size();
        let iova = addr.wrapping_add(w.bus_offset);
        if mask != OUTSIDE_WINDOW_MASK && mask.wrapping_add(1) != page {
            return self.violation(
                line,
                Kind::WrongTranslation,
                Some(s),
                Some(iova),
                Some(phys),
                format!(
                    "QEMU translated with {:#x}-byte pages, the model's window has {page:#x}",
                    mask.wrapping_add(1)
                ),
            );
        }
        let idx = addr / page;
        let model = w.pages.get(&idx).copied();
        let unmapped_at = w.unmapped_at(idx);
        if perm == 0 {
            self.counts(s).faults += 1;
            let (kind, why) = match (model, unmapped_at) {
                (Some(p), _) if p.phys.is_some() => (
                    Kind::WrongTranslation,
                    format!(
                        "the device was refused (empty TCE), but the trace mapped the page at \
                         line {}",
                        p.line
                    ),
                ),
                (Some(p), _) => (
                    Kind::NotMapped,
                    format!(
                        "the device was refused (empty TCE); H_PUT_TCE_INDIRECT at line {} \
                         wrote this entry, so it held no mapping",
                        p.line
                    ),
                ),
                _ if mask == OUTSIDE_WINDOW_MASK => (
                    Kind::NotMapped,
                    "the device accessed an address outside the DMA window".to_string(),
                ),
                (None, Some(l)) => (
                    Kind::NotMapped,
                    format!("the device accessed the page after it was unmapped at line {l}"),
                ),
                (None, None) => (
                    Kind::NotMapped,
                    "the device accessed a page that was never mapped".to_string(),
                ),
            };
            return self.violation(line, kind, Some(s), Some(iova), None, why);
        }
        match model {
            None => self.violation(
                line,
                Kind::NotMapped,
                Some(s),
                Some(iova),
                Some(phys),
                match unmapped_at {
                    Some(l) => format!(
                        "QEMU translated a page the trace unmapped at line {l} and never mapped \
                         again"
                    ),
                    None => "QEMU translated a page the trace never mapped (mapped before the \
                             trace started?)"
                        .to_string(),
                },
            ),
            Some(p) if p.phys.is_none() => {
                // Learnt now: an entry of H_PUT_TCE_INDIRECT the trace did not show.
                if let Some(e) = self.window(liobn).pages.get_mut(&idx) {
                    e.phys = Some(phys);
                    e.perm = Some(perm);
                }
            }
            Some(p) if p.phys != Some(phys) || p.perm != Some(perm) => self.violation(
                line,
                Kind::WrongTranslation,
                Some(s),
                Some(iova),
                Some(phys),
                format!(
                    "translated with permission {perm}, but mapped at line {} to {:#x} with \
                     permission {}",
                    p.line,
                    p.phys.unwrap_or(0),
                    p.perm.unwrap_or(0)
                ),
            ),
            Some(_) => {}
        }
        if !self.in_pool(phys, page) {
            let pool = self.pool_text();
            self.violation(
                line,
                Kind::OutsidePool,
                Some(s),
                Some(iova),
                Some(phys),
                format!("a device access translated to a page outside the shared pool {pool}"),
            );
        }
    }

    fn viommu_map(
        &mut self,
        line: usize,
        domain: u32,
        start: u64,
        end: u64,
        phys: u64,
        flags: u32,
    ) {
        let s = Space::ViommuDomain { domain };
        self.counts(s).maps += 1;
        self.counts(s).call(VIOMMU_MAP, viommu_pages(start, end));
        self.domains.entry(domain).or_default().insert(
            start,
            ViommuMapping {
                end,
                phys,
                flags,
                line,
            },
        );
        let len = end.wrapping_sub(start).wrapping_add(1);
        if !self.in_pool(phys, len) {
            let pool = self.pool_text();
            self.violation(
                line,
                Kind::OutsidePool,
                Some(s),
                Some(start),
                Some(phys),
                format!("mapped {len:#x} bytes outside the shared pool {pool}"),
            );
        }
    }

    /// The mapping of `domain` that holds `addr`.
    fn viommu_lookup(&self, domain: u32, addr: u64) -> Option<(u64, ViommuMapping)> {
        let m = self.domains.get(&domain)?;
        let (start, map) = m.range(..=addr).next_back()?;
        (addr <= map.end).then_some((*start, *map))
    }

    /// The line that last removed a mapping of `domain` holding `addr`.
    fn viommu_unmapped_at(&self, domain: u32, addr: u64) -> Option<usize> {
        self.viommu_unmapped
            .range((domain, 0)..=(domain, addr))
            .filter(|(_, (end, _))| addr <= *end)
            .map(|(_, (_, l))| *l)
            .max()
    }

    fn viommu_take_pending(&mut self, sid: u32, addr: u64) -> Option<Pending> {
        let i = self
            .pending
            .iter()
            .rposition(|p| p.sid == sid && p.addr == addr)?;
        Some(self.pending.remove(i))
    }

    fn viommu_out(&mut self, line: usize, addr: u64, phys: u64, sid: u32) {
        let Some(p) = self.viommu_take_pending(sid, addr) else {
            return self.violation(
                line,
                Kind::Unreadable,
                Some(Space::ViommuEndpoint { sid }),
                Some(addr),
                Some(phys),
                "translate_out without its translate".into(),
            );
        };
        let Some(domain) = p.domain else {
            return self.violation(
                line,
                Kind::WrongTranslation,
                Some(Space::ViommuEndpoint { sid }),
                Some(addr),
                Some(phys),
                "QEMU translated for an endpoint the trace attached to no domain".into(),
            );
        };
        let s = Space::ViommuDomain { domain };
        if self
            .cfg
            .identity_devices
            .contains(&Bdf::from_sid(sid as u16))
            && phys != addr
        {
            self.violation(
                line,
                Kind::WrongTranslation,
                Some(s),
                Some(addr),
                Some(phys),
                "the device's domain is static (IOVA = physical address), but the access was \
                 translated elsewhere"
                    .into(),
            );
        }
        match self.viommu_lookup(domain, addr) {
            None => {
                let why = match self.viommu_unmapped_at(domain, addr) {
                    Some(l) => format!("QEMU translated an address unmapped at line {l}"),
                    None => "QEMU translated an address the trace never mapped".into(),
                };
                self.violation(line, Kind::NotMapped, Some(s), Some(addr), Some(phys), why);
            }
            Some((start, m)) => {
                let want = m.phys.wrapping_add(addr - start);
                if want != phys {
                    self.violation(
                        line,
                        Kind::WrongTranslation,
                        Some(s),
                        Some(addr),
                        Some(phys),
                        format!("mapped at line {} to {want:#x}", m.line),
                    );
                }
                if p.flag & !m.flags & (VIOMMU_READ | VIOMMU_WRITE) != 0 {
                    self.violation(
                        line,
                        Kind::Permission,
                        Some(s),
                        Some(addr),
                        Some(phys),
                        format!(
                            "access flag {} through a mapping with flags {} (line {})",
                            p.flag, m.flags, m.line
                        ),
                    );
                }
            }
        }
        if !self.in_pool(phys & !(VIOMMU_PAGE - 1), VIOMMU_PAGE) {
            let pool = self.pool_text();
            self.violation(
                line,
                Kind::OutsidePool,
                Some(s),
                Some(addr),
                Some(phys),
                format!("a device access translated to a page outside the shared pool {pool}"),
            );
        }
    }

    /// Why an access to `addr` of `domain` was refused, as the model sees it.
    fn viommu_refusal(&self, domain: Option<u32>, addr: u64, flag: u32) -> (Kind, String) {
        let Some(d) = domain else {
            return (Kind::Fault, "the endpoint is in no domain".into());
        };
        match self.viommu_lookup(d, addr) {
            None => match self.viommu_unmapped_at(d, addr) {
                Some(l) => (
                    Kind::NotMapped,
                    format!("the device accessed the address after it was unmapped at line {l}"),
                ),
                None => (
                    Kind::NotMapped,
                    "the device accessed an address that was never mapped".into(),
                ),
            },
            Some((_, m)) if flag & !m.flags & (VIOMMU_READ | VIOMMU_WRITE) != 0 => (
                Kind::Permission,
                format!(
                    "access flag {flag} through a mapping with flags {} (line {})",
                    m.flags, m.line
                ),
            ),
            Some((_, m)) => (
                Kind::Fault,
                format!("refused although mapped at line {}", m.line),
            ),
        }
    }

    fn viommu_fault(&mut self, line: usize, reason: u32, endpoint: u32, address: u64) {
        let p = self.viommu_take_pending(endpoint, address);
        let domain = p
            .as_ref()
            .map_or(self.endpoints.get(&endpoint).copied(), |p| p.domain);
        let flag = p.as_ref().map_or(0, |p| p.flag);
        let s = match domain {
            Some(d) => Space::ViommuDomain { domain: d },
            None => Space::ViommuEndpoint { sid: endpoint },
        };
        self.counts(s).faults += 1;
        let (kind, why) = self.viommu_refusal(domain, address, flag);
        self.violation(
            line,
            kind,
            Some(s),
            Some(address),
            None,
            format!("virtio-iommu fault (reason {reason}): {why}"),
        );
    }

    fn finish(mut self) -> Verdict {
        self.checking = true;
        // Translations that never got their translate_out nor a fault report.
        for p in std::mem::take(&mut self.pending) {
            match p.domain {
                None => self.violation(
                    p.line,
                    Kind::Untranslated,
                    Some(Space::ViommuEndpoint { sid: p.sid }),
                    Some(p.addr),
                    None,
                    "the endpoint is in no domain: the access bypassed the IOMMU".into(),
                ),
                Some(d) => {
                    self.counts(Space::ViommuDomain { domain: d }).faults += 1;
                    let (kind, why) = self.viommu_refusal(Some(d), p.addr, p.flag);
                    self.violation(
                        p.line,
                        kind,
                        Some(Space::ViommuDomain { domain: d }),
                        Some(p.addr),
                        None,
                        format!("refused without a fault report: {why}"),
                    );
                }
            }
        }
        for (liobn, w) in &self.windows {
            self.v
                .spaces
                .entry(Space::Tce { liobn: *liobn })
                .or_default()
                .live_at_end = w.pages.len() as u64;
        }
        for (domain, m) in &self.domains {
            self.v
                .spaces
                .entry(Space::ViommuDomain { domain: *domain })
                .or_default()
                .live_at_end = m.len() as u64;
        }
        for d in &self.cfg.iommu_devices {
            let Some(&(first, last)) = self.accesses.get(d) else {
                let why = match self.v.devices.get(d) {
                    Some(true) => "its address space is the IOMMU's, but its DMA does not use it",
                    Some(false) => "its address space was switched to bypass",
                    None => "the trace never switched its address space",
                };
                self.violation(
                    0,
                    Kind::Untranslated,
                    None,
                    None,
                    None,
                    format!(
                        "device {d}: no access of it went through the IOMMU, so its DMA bypasses \
                         the IOMMU ({why})"
                    ),
                );
                continue;
            };
            let off = self
                .bypassed
                .get(d)
                .and_then(|l| l.iter().find(|&&l| l > first && l < last).copied());
            if let Some(l) = off {
                self.violation(
                    l,
                    Kind::Untranslated,
                    None,
                    None,
                    None,
                    format!(
                        "device {d} was switched to bypass the IOMMU while in use (its accesses \
                         through the IOMMU span lines {first} to {last})"
                    ),
                );
            }
        }
        if self.cfg.expect_translations && self.v.totals().translations == 0 {
            self.violation(
                0,
                Kind::NoTranslations,
                None,
                None,
                None,
                "devices moved data, but no access went through the IOMMU".into(),
            );
        }
        self.v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: u64 = 0x8000_0000;

    fn run(trace: &str, cfg: &Config) -> Verdict {
        let log = TraceLog::parse(trace.as_bytes());
        assert_eq!(log.malformed, 0, "{:?}", log.malformed_lines);
        check(&log, cfg)
    }

    fn plain(trace: &str) -> Verdict {
        run(trace, &Config::default())
    }

    fn secure(trace: &str) -> Verdict {
        run(
            trace,
            &Config {
                pool: Some(vec![PhysRange {
                    base: 0x100_0000,
                    size: 0x40_0000,
                }]),
                ..Default::default()
            },
        )
    }

    fn kinds(v: &Verdict) -> Vec<Kind> {
        v.violations.iter().map(|x| x.kind).collect()
    }

    /// A pseries run as the iommu path does it: clear the window, map the ring and a buffer, the
    /// device reads and writes them, unmap.
    const TCE_GOOD: &str = "\
spapr_iommu_new_table liobn=0x80000000 table=0x7f0e68232010 fd=-1
spapr_iommu_pci_stuff liobn=0x80000000 ioba=0x40000000 tcevalue=0x0 npages=262144 ret=0
spapr_iommu_pci_put liobn=0x80000000 ioba=0x0 tce=0x1000003 ret=0
spapr_iommu_pci_put liobn=0x80000000 ioba=0x1000 tce=0x1001001 ret=0
spapr_iommu_xlate liobn=0x80000000 0x0 -> 0x1000000 perm=3 mask=0xfff
spapr_iommu_xlate liobn=0x80000000 0x1010 -> 0x1001000 perm=1 mask=0xfff
spapr_iommu_pci_indirect liobn=0x80000000 ioba=0x10000 tcelist=0x7f000 iobaN=0x3 tceN=0x1013003 ret=0
spapr_iommu_xlate liobn=0x80000000 0x10000 -> 0x1010000 perm=3 mask=0xfff
spapr_iommu_xlate liobn=0x80000000 0x13ff8 -> 0x1013000 perm=3 mask=0xfff
spapr_iommu_xlate liobn=0x80000000 0x10008 -> 0x1010000 perm=3 mask=0xfff
spapr_iommu_pci_get liobn=0x80000000 ioba=0x1000 ret=0 tce=0x1001001
spapr_iommu_pci_put liobn=0x80000000 ioba=0x1000 tce=0x0 ret=0
spapr_iommu_pci_stuff liobn=0x80000000 ioba=0x14000 tcevalue=0x0 npages=4 ret=0
";

    fn guest_calls(name: &str, calls: u64, entries: Option<u64>) -> GuestCalls {
        GuestCalls {
            name: name.into(),
            calls,
            entries,
        }
    }

    #[test]
    fn a_good_tce_trace_passes_and_counts() {
        let v = secure(TCE_GOOD);
        assert!(v.passed(), "{v}");
        let c = &v.spaces[&Space::Tce { liobn: L }];
        assert_eq!(
            (c.maps, c.unmaps, c.translations, c.faults, c.live_at_end),
            (6, 262_144 + 1 + 4, 5, 0, 1)
        );
        let calls = |n| {
            let x = c.calls(n);
            (x.calls, x.entries)
        };
        assert_eq!(
            [H_PUT_TCE, H_PUT_TCE_INDIRECT, H_STUFF_TCE, H_GET_TCE].map(calls),
            [(3, 3), (1, 4), (2, 262_148), (1, 1)]
        );
        assert_eq!(&v.totals(), c);
        let guest = GuestCounts {
            maps: Some(6),
            unmaps: Some(262_149),
            calls: vec![
                guest_calls(H_PUT_TCE, 3, Some(3)),
                guest_calls(H_PUT_TCE_INDIRECT, 1, None),
                guest_calls(H_STUFF_TCE, 2, Some(262_148)),
                guest_calls(H_GET_TCE, 1, Some(1)),
            ],
            live_pages: Some(1),
        };
        let mut v2 = v.clone();
        v2.compare_counts(&guest);
        assert!(v2.passed(), "{v2}");
        assert!(
            v.to_string()
                .starts_with("IOMMU trace oracle: pass (0 violations)")
        );
    }

    /// Negative control: the guest unmaps a page while the device still uses it.
    #[test]
    fn translation_after_unmap_fails() {
        let trace = "\
spapr_iommu_pci_put liobn=0x80000000 ioba=0x1000 tce=0x1001003 ret=0
spapr_iommu_xlate liobn=0x80000000 0x1000 -> 0x1001000 perm=3 mask=0xfff
spapr_iommu_pci_put liobn=0x80000000 ioba=0x1000 tce=0x0 ret=0
spapr_iommu_xlate liobn=0x80000000 0x1040 -> 0x0 perm=0 mask=0xfff
spapr_iommu_xlate liobn=0x80000000 0x1080 -> 0x0 perm=0 mask=0xfff
";
        let v = plain(trace);
        assert_eq!(v.violation_count, 2, "{v}");
        // One per page in the list, both counted.
        assert_eq!(kinds(&v), vec![Kind::NotMapped]);
        let x = &v.violations[0];
        assert_eq!(
            (x.line, x.iova, x.space),
            (4, Some(0x1040), Some(Space::Tce { liobn: L }))
        );
        assert!(x.message.contains("after it was unmapped at line 3"), "{x}");
        assert_eq!(v.spaces[&Space::Tce { liobn: L }].faults, 2);
        let f = v.failures();
        assert!(f[0].contains("2 violation(s) (2 not-mapped)"), "{f:?}");
        assert!(f[1].contains("trace line 4: not-mapped, TCE liobn 0x80000000, IOVA 0x1040"));
    }

    /// Negative control: the device touches a page that was never mapped (or after a stuff).
    #[test]
    fn translation_of_an_unmapped_page_fails() {
        let v = plain(
            "spapr_iommu_xlate liobn=0x80000000 0x4fd022 -> 0x0 perm=0 mask=0xfff\n\
             spapr_iommu_pci_stuff liobn=0x80000000 ioba=0x40000000 tcevalue=0x0 npages=262144 ret=0\n\
             spapr_iommu_xlate liobn=0x80000000 0x2000 -> 0x0 perm=0 mask=0xfff\n\
             spapr_iommu_xlate liobn=0x80000000 0x7fffffff -> 0x0 perm=0 mask=0xffffffff\n",
        );
        assert_eq!(kinds(&v), vec![Kind::NotMapped; 3], "{v}");
        assert!(v.violations[0].message.contains("never mapped"));
        assert!(v.violations[1].message.contains("unmapped at line 2"));
        assert!(v.violations[2].message.contains("outside the DMA window"));
        // QEMU translating what the trace never mapped is caught too.
        let v = plain("spapr_iommu_xlate liobn=0x80000000 0x2000 -> 0x5000 perm=3 mask=0xfff\n");
        assert_eq!(kinds(&v), vec![Kind::NotMapped]);
        assert!(v.violations[0].message.contains("never mapped"), "{v}");
    }

    /// Negative control: a secure guest maps a private page (the device never touches it).
    #[test]
    fn a_mapped_page_outside_the_pool_fails_in_secure_mode() {
        let trace = "\
spapr_iommu_pci_put liobn=0x80000000 ioba=0x0 tce=0x1000003 ret=0
spapr_iommu_pci_put liobn=0x80000000 ioba=0x1000 tce=0x20000003 ret=0
spapr_iommu_pci_put liobn=0x80000000 ioba=0x2000 tce=0x13ff003 ret=0
spapr_iommu_pci_put liobn=0x80000000 ioba=0x3000 tce=0x1400003 ret=0
";
        assert!(plain(trace).passed());
        let v = secure(trace);
        assert_eq!(kinds(&v), vec![Kind::OutsidePool; 2], "{v}");
        assert_eq!(v.violations[0].phys, Some(0x2000_0000));
        assert_eq!(v.violations[1].phys, Some(0x140_0000));
        assert!(v.violations[0].message.contains("[0x1000000, 0x1400000)"));
        // Stuffing a private page everywhere, and a translation (of an indirect entry) outside.
        let v = secure(
            "spapr_iommu_pci_stuff liobn=0x80000000 ioba=0x4000 tcevalue=0x7003 npages=4 ret=0\n\
             spapr_iommu_pci_indirect liobn=0x80000000 ioba=0x10000 tcelist=0x7f000 iobaN=0x1 tceN=0x1001003 ret=0\n\
             spapr_iommu_xlate liobn=0x80000000 0x10000 -> 0x9000 perm=3 mask=0xfff\n",
        );
        assert_eq!(kinds(&v), vec![Kind::OutsidePool; 2], "{v}");
        assert_eq!(v.violations[0].iova, Some(0));
        assert_eq!(v.violations[1].line, 3);
    }

    #[test]
    fn fault_events_fail() {
        let v = plain(
            "vtd_dmar_fault sid 0x18 fault 6 addr 0x3000 write 1\n\
             vtd_fault_disabled Fault processing disabled for context entry\n\
             virtio_iommu_report_fault FAULT reason=2 flags=1 endpoint=16 address =0x5000\n",
        );
        assert_eq!(v.count(Kind::Fault), 3, "{v}");
        assert_eq!(
            v.violations[0].space,
            Some(Space::Vtd {
                device: Bdf {
                    bus: 0,
                    slot: 3,
                    func: 0
                }
            })
        );
        assert!(
            v.violations[0]
                .message
                .contains("fault reason 6 on a write")
        );
        assert!(
            v.violations[2]
                .message
                .contains("virtio-iommu fault (reason 2)"),
            "{v}"
        );
    }

    #[test]
    fn count_mismatch_fails() {
        let mut v = plain(TCE_GOOD);
        v.compare_counts(&GuestCounts {
            maps: Some(5),
            unmaps: None,
            calls: vec![
                guest_calls(H_PUT_TCE, 3, Some(4)),
                guest_calls(H_STUFF_TCE, 1, None),
                guest_calls(H_PUT_TCE_INDIRECT, 1, None),
            ],
            live_pages: Some(2),
        });
        assert_eq!(kinds(&v), vec![Kind::CountMismatch; 5], "{v}");
        let m: Vec<String> = v.violations.iter().map(|x| x.to_string()).collect();
        assert_eq!(
            m[0],
            "count-mismatch: the guest reports 5 pages mapped, the host traced 6"
        );
        assert!(
            m[1].contains("2 pages still mapped at the end, the host traced 1"),
            "{v}"
        );
        assert!(
            m[2].contains("4 H_PUT_TCE entries, the host traced 3"),
            "{v}"
        );
        assert!(
            m[3].contains("1 H_STUFF_TCE calls, the host traced 2"),
            "{v}"
        );
        // A kind the guest leaves out is a kind it says it never used.
        assert!(m[4].contains("0 H_GET_TCE calls, the host traced 1"), "{v}");
        // Only what the guest reports is compared.
        assert!(compare_counts(&Counts::default(), &GuestCounts::default()).is_empty());
    }

    /// x86: a virtio-iommu domain's `iommu` record comes before the unit's teardown, which
    /// unmaps the pool; the `iommu_unit` record counts the whole unit. VT-d: the unit's IOTLB
    /// commands against the traced invalidations.
    #[test]
    fn x86_units_against_the_host() {
        let records = |unmap: u64, vtd_pages: u64| {
            let text = format!(
                "{}\n{}\n{}\n",
                r#"@sg {"event":"iommu","v":1,"location":"00:02.0","result":"ok","iommu":{"backend":"virtio-iommu","mode":"dynamic","mode_reason":"x","mapping":"pool","domain":"0x0","window_base":"0x40000000","window_size":8192,"page_size":4096,"setup_calls":2,"dma_maps":1,"dma_unmaps":1,"maps":1,"unmaps":0,"calls":1,"failures":0,"exhausted":0,"pages":2,"pages_peak":2,"calls_by_kind":{"MAP":{"calls":1,"entries":2},"UNMAP":{"calls":0,"entries":0}}}}"#,
                format_args!(
                    r#"@sg {{"event":"iommu_unit","v":1,"kind":"virtio-iommu","location":"00:01.0","result":"ok","requests":{{"attach":1,"detach":1,"map":1,"unmap":{unmap},"probe":1,"failed":0}},"teardown":"ok"}}"#
                ),
                format_args!(
                    r#"@sg {{"event":"iommu_unit","v":1,"kind":"vt-d","location":"0xfed90000","result":"ok","commands":{{"context":2,"iotlb_global":1,"iotlb_domain":1,"iotlb_page":1,"iotlb_page_pages":{vtd_pages},"write_buffer":0}},"teardown":"ok"}}"#
                ),
            );
            crate::report::Report::parse(text.as_bytes()).records
        };
        let trace = "\
virtio_iommu_attach domain=0 endpoint=16
virtio_iommu_map domain=0 virt_start=0x40000000 virt_end=0x40001fff phys_start=0x1000000 flags=3
virtio_iommu_unmap domain=0 virt_start=0x40000000 virt_end=0x40001fff
virtio_iommu_unmap_done domain=0 virt_start=0x40000000 virt_end=0x40001fff
virtio_iommu_detach domain=0 endpoint=16
vtd_inv_desc_iotlb_global iotlb invalidate global
vtd_inv_desc_iotlb_pages iotlb invalidate domain 0x1 addr 0x40000000 mask 0x2
vtd_inv_desc_iotlb_domain iotlb invalidate whole domain 0x1
";
        let good = records(1, 4);
        let domains = guest_domains(&good);
        assert_eq!(domains[0].space, Some(Space::ViommuDomain { domain: 0 }));
        assert_eq!(domains[0].counts.live_pages, Some(0), "torn down");
        let mut v = plain(trace);
        assert_eq!(v.unit_calls[VTD_IOTLB_PSI].entries, 4);
        v.compare_domains(&domains);
        v.compare_units(&guest_units(&good));
        assert!(v.passed(), "{v}");
        let bad = records(2, 8);
        let mut v = plain(trace);
        v.compare_units(&guest_units(&bad));
        assert_eq!(kinds(&v), vec![Kind::CountMismatch; 2], "{v}");
        assert!(
            v.violations[0]
                .message
                .starts_with("virtio-iommu unit at 00:01.0 (`iommu_unit` record): the guest reports 2 UNMAP calls"),
            "{v}"
        );
    }

    /// The guest's `iommu` record (as the pseries guest writes it) against the host's counts of
    /// its TCE window.
    #[test]
    fn guest_domains_against_the_host() {
        let record = |calls_put: u64, pages: u64| {
            format!(
                r#"@sg {{"event":"iommu","v":1,"location":"/pci@800000020000000","result":"ok","iommu":{{"backend":"tce","mode":"dynamic","mode_reason":"sg.tce=dynamic","mapping":"per-map","domain":"0x80000000","window_base":"0x0","window_size":1073741824,"page_size":4096,"dma_maps":1,"dma_unmaps":1,"maps":4,"unmaps":4,"calls":8,"failures":0,"exhausted":0,"pages":{pages},"pages_peak":4,"calls_by_kind":{{"H_PUT_TCE":{{"calls":{calls_put},"entries":{calls_put}}},"H_PUT_TCE_INDIRECT":{{"calls":0,"entries":0}},"H_STUFF_TCE":{{"calls":4,"entries":4}}}}}}}}"#
            )
        };
        let trace = "\
spapr_iommu_pci_put liobn=0x80000000 ioba=0x1000 tce=0x548003 ret=0
spapr_iommu_pci_put liobn=0x80000000 ioba=0x2000 tce=0x549003 ret=0
spapr_iommu_pci_put liobn=0x80000000 ioba=0x3000 tce=0x54a003 ret=0
spapr_iommu_pci_put liobn=0x80000000 ioba=0x4000 tce=0x503002 ret=0
spapr_iommu_pci_stuff liobn=0x80000000 ioba=0x2000 tcevalue=0x0 npages=1 ret=0
spapr_iommu_pci_stuff liobn=0x80000000 ioba=0x3000 tcevalue=0x0 npages=1 ret=0
spapr_iommu_pci_stuff liobn=0x80000000 ioba=0x4000 tcevalue=0x0 npages=1 ret=0
spapr_iommu_pci_stuff liobn=0x80000000 ioba=0x5000 tcevalue=0x0 npages=1 ret=0
";
        let domains = |line: String| {
            // One record alone: only "the first record is not `boot`" may be wrong with it.
            let report = crate::report::Report::parse(format!("{line}\n").as_bytes());
            assert_eq!(report.records.len(), 1, "{:?}", report.errors);
            guest_domains(&report.records)
        };
        let good = domains(record(4, 0));
        assert_eq!(good.len(), 1);
        assert_eq!(good[0].space, Some(Space::Tce { liobn: L }));
        assert_eq!(good[0].location, "/pci@800000020000000");
        let mut v = plain(trace);
        v.compare_domains(&good);
        assert!(v.passed(), "{v}");
        // The guest under-reports its H_PUT_TCE calls and a page it left mapped.
        let mut v = plain(trace);
        v.compare_domains(&domains(record(3, 1)));
        assert_eq!(kinds(&v), vec![Kind::CountMismatch; 3], "{v}");
        assert!(
            v.violations[0].message.starts_with(
                "TCE liobn 0x80000000 (`iommu` record of /pci@800000020000000): the guest reports \
                 1 pages still mapped"
            ),
            "{v}"
        );
        // Calls on a window no record accounts for.
        let mut v = plain(&format!(
            "{trace}spapr_iommu_pci_put liobn=0x80000001 ioba=0x0 tce=0x0 ret=0\n"
        ));
        v.compare_domains(&good);
        assert_eq!(kinds(&v), vec![Kind::CountMismatch], "{v}");
        assert!(v.violations[0].message.contains("no `iommu` record"), "{v}");
        let mut v = plain(trace);
        v.compare_domains(&[]);
        assert_eq!(kinds(&v), vec![Kind::CountMismatch], "{v}");
        // A failed domain has no counts.
        assert!(
            domains(
                r#"@sg {"event":"iommu","v":1,"location":"/pci@1","result":"error","error":"x"}"#
                    .into()
            )
            .is_empty()
        );
    }

    /// A firmware (SLOF) maps and unmaps in the window before the guest: the guest's calls are
    /// the last ones, as many as it reports, and only they are checked and counted.
    #[test]
    fn firmware_work_before_the_guest_is_set_apart() {
        let firmware = "\
spapr_iommu_new_table liobn=0x80000000 table=0x1 fd=-1
spapr_iommu_pci_put liobn=0x80000000 ioba=0x1000 tce=0x1e370003 ret=0
spapr_iommu_xlate liobn=0x80000000 0x1000 -> 0x1e370000 perm=3 mask=0xfff
spapr_iommu_pci_put liobn=0x80000000 ioba=0x2000 tce=0x1e371003 ret=0
spapr_iommu_pci_put liobn=0x80000000 ioba=0x1000 tce=0x0 ret=0
";
        let guest = "\
spapr_iommu_pci_indirect liobn=0x80000000 ioba=0x1000000 tcelist=0x1000000 iobaN=0x1 tceN=0x1001003 ret=0
spapr_iommu_xlate liobn=0x80000000 0x1000010 -> 0x1000000 perm=3 mask=0xfff
";
        let domain = |indirect: u64| GuestDomain {
            location: "/pci@800000020000000".into(),
            space: Some(Space::Tce { liobn: L }),
            counts: GuestCounts {
                maps: None,
                unmaps: None,
                calls: vec![
                    guest_calls(H_PUT_TCE, 0, Some(0)),
                    guest_calls(H_PUT_TCE_INDIRECT, indirect, Some(2 * indirect)),
                    guest_calls(H_STUFF_TCE, 0, Some(0)),
                ],
                live_pages: Some(2),
            },
        };
        let cfg_for = |trace: &str, d: &[GuestDomain]| Config {
            pool: Some(vec![PhysRange {
                base: 0x100_0000,
                size: 0x40_0000,
            }]),
            expect_translations: true,
            start_line: guest_start_line(&TraceLog::parse(trace.as_bytes()), d),
            ..Default::default()
        };
        // The firmware left page 0x2000 mapped: the guest begins at its indirect (line 6).
        let trace = format!("{firmware}{guest}");
        let d = [domain(1)];
        let cfg = cfg_for(&trace, &d);
        assert_eq!(cfg.start_line, 6);
        let mut v = run(&trace, &cfg);
        v.compare_domains(&d);
        assert_eq!(kinds(&v), vec![Kind::Stale, Kind::CountMismatch], "{v}");
        assert_eq!(v.violations[0].iova, Some(0x2000));
        assert_eq!(v.violations[0].phys, Some(0x1e37_1000));
        assert!(
            v.violations[1]
                .message
                .contains("2 pages still mapped at the end, the host traced 3")
        );
        assert_eq!(v.firmware.calls(H_PUT_TCE).calls, 3);
        assert_eq!(v.firmware.translations, 1);
        assert!(
            v.to_string()
                .contains("before the guest (trace lines 1..6, not checked)"),
            "{v}"
        );
        // The firmware cleans up: the guest's part passes, outside-pool firmware pages and all.
        let tidy = format!(
            "{firmware}spapr_iommu_pci_put liobn=0x80000000 ioba=0x2000 tce=0x0 ret=0\n{guest}"
        );
        let cfg = cfg_for(&tidy, &d);
        assert_eq!(cfg.start_line, 7);
        let mut v = run(&tidy, &cfg);
        v.compare_domains(&d);
        assert!(v.passed(), "{v}");
        assert_eq!(v.spaces[&Space::Tce { liobn: L }].calls(H_PUT_TCE).calls, 0);
        // Without the split, the firmware's pages outside the pool and its calls fail the run.
        let mut v = run(
            &tidy,
            &Config {
                start_line: 0,
                ..cfg
            },
        );
        v.compare_domains(&d);
        assert_eq!(v.count(Kind::OutsidePool), 3, "{v}");
        assert!(v.count(Kind::CountMismatch) > 0, "{v}");
        // A guest that reports nothing begins after the last TCE call; no calls at all: at 0.
        let log = TraceLog::parse(tidy.as_bytes());
        assert_eq!(guest_start_line(&log, &[]), 8);
        assert_eq!(guest_start_line(&TraceLog::default(), &d), 0);
        // More calls reported than traced: the guest began with the first one.
        assert_eq!(guest_start_line(&log, &[domain(9)]), 2);
    }

    #[test]
    fn wrong_translations_and_failed_hcalls() {
        let v = plain(
            "spapr_iommu_pci_put liobn=0x80000000 ioba=0x1000 tce=0x1001001 ret=0\n\
             spapr_iommu_pci_put liobn=0x80000000 ioba=0x2000 tce=0x1002001 ret=0\n\
             spapr_iommu_xlate liobn=0x80000000 0x1000 -> 0x2002000 perm=1 mask=0xfff\n\
             spapr_iommu_xlate liobn=0x80000000 0x2000 -> 0x1002000 perm=3 mask=0xfff\n\
             spapr_iommu_pci_put liobn=0x80000000 ioba=0x40000000 tce=0x1001001 ret=-4\n\
             spapr_iommu_pci_get liobn=0x80000000 ioba=0x3000 ret=0 tce=0x3003\n\
             spapr_iommu_xlate liobn=0x80000000 0x4000 -> 0x0 perm=1 mask=0xffff\n\
             spapr_iommu_pci_indirect liobn=0x80000000 ioba=0x0 tcelist=0x0 iobaN=0x200 tceN=0x3 ret=0\n",
        );
        assert_eq!(
            kinds(&v),
            vec![
                Kind::WrongTranslation,
                Kind::WrongTranslation,
                Kind::RequestFailed,
                Kind::WrongTranslation,
                Kind::WrongTranslation,
                Kind::Unreadable,
            ],
            "{v}"
        );
        let m: Vec<&str> = v.violations.iter().map(|x| x.message.as_str()).collect();
        assert!(
            m[0].contains("mapped at line 1 to 0x1001000 with permission 1"),
            "{v}"
        );
        assert!(m[1].contains("translated with permission 3"), "{v}");
        assert!(m[2].contains("H_PUT_TCE returned -4"), "{v}");
        assert!(m[3].contains("H_GET_TCE returned 0x3003"), "{v}");
        assert!(m[4].contains("0x10000-byte pages"), "{v}");
        assert!(m[5].contains("at most 512"), "{v}");
    }

    #[test]
    fn ddw_windows_have_their_own_offset_and_page_size() {
        let trace = "\
spapr_iommu_ddw_query buid=0x800000020000000 addr=0x800, 1 windows available, max window size=0x20000000, mask=0x3
spapr_iommu_new_table liobn=0x80000001 table=0x7f0000001000 fd=-1
spapr_iommu_ddw_create buid=0x800000020000000 addr=0x800, page size=0x10000, requested=0x20000000, start addr=0x800000000000000, liobn=0x80000001
spapr_iommu_pci_put liobn=0x80000001 ioba=0x800000000010000 tce=0x1010003 ret=0
spapr_iommu_xlate liobn=0x80000001 0x10010 -> 0x1010000 perm=3 mask=0xffff
spapr_iommu_pci_stuff liobn=0x80000001 ioba=0x800000000030000 tcevalue=0x1020003 npages=2 ret=0
spapr_iommu_xlate liobn=0x80000001 0x2fff0 -> 0x1020000 perm=3 mask=0xffff
spapr_iommu_ddw_remove liobn=0x80000001
spapr_iommu_xlate liobn=0x80000001 0x10010 -> 0x0 perm=0 mask=0xffffffff
";
        let v = secure(trace);
        assert_eq!(kinds(&v), vec![Kind::NotMapped], "{v}");
        assert_eq!(v.violations[0].line, 9);
        let c = &v.spaces[&Space::Tce { liobn: 0x8000_0001 }];
        assert_eq!((c.maps, c.translations, c.live_at_end), (3, 3, 0));
        // A reset drops the PHB's extra windows and keeps the default one (recreated empty).
        let v = plain(
            "spapr_iommu_new_table liobn=0x80000001 table=0x1 fd=-1\n\
             spapr_iommu_ddw_create buid=0x800000020000000 addr=0x800, page size=0x10000, requested=0x20000000, start addr=0x800000000000000, liobn=0x80000001\n\
             spapr_iommu_pci_put liobn=0x80000001 ioba=0x800000000010000 tce=0x1010003 ret=0\n\
             spapr_iommu_new_table liobn=0x80000000 table=0x2 fd=-1\n\
             spapr_iommu_ddw_reset buid=0x800000020000000 addr=0x800\n",
        );
        assert!(v.passed(), "{v}");
        assert_eq!(v.spaces[&Space::Tce { liobn: 0x8000_0001 }].maps, 1);
        assert_eq!(v.totals().live_at_end, 0, "the reset removed the mapping");
    }

    const VIOMMU_GOOD: &str = "\
virtio_iommu_switch_address_space Device 00:02.0 switching address space (iommu enabled=1)
virtio_iommu_get_domain Alloc domain=1
virtio_iommu_attach domain=1 endpoint=16
virtio_iommu_map domain=1 virt_start=0x1000 virt_end=0x2fff phys_start=0x1004000 flags=1
virtio_iommu_translate mr=virtio-iommu-memory-region-2-16 rid=16 addr=0x1010 flag=1
virtio_iommu_translate_out 0x1010 -> 0x1004010 for sid=16
virtio_iommu_translate mr=virtio-iommu-memory-region-2-16 rid=16 addr=0x2ff0 flag=1
virtio_iommu_translate_out 0x2ff0 -> 0x1005ff0 for sid=16
virtio_iommu_unmap domain=1 virt_start=0x0 virt_end=0xffffffff
virtio_iommu_unmap_done domain=1 virt_start=0x1000 virt_end=0x2fff
";

    #[test]
    fn virtio_iommu_replay() {
        let cfg = Config {
            pool: Some(vec![PhysRange {
                base: 0x100_0000,
                size: 0x40_0000,
            }]),
            iommu_devices: vec![Bdf {
                bus: 0,
                slot: 2,
                func: 0,
            }],
            expect_translations: true,
            ..Default::default()
        };
        let v = run(VIOMMU_GOOD, &cfg);
        assert!(v.passed(), "{v}");
        let c = &v.spaces[&Space::ViommuDomain { domain: 1 }];
        assert_eq!((c.maps, c.unmaps, c.translations), (1, 1, 2));
        assert_eq!(
            [VIOMMU_ATTACH, VIOMMU_MAP, VIOMMU_UNMAP].map(|n| c.calls(n).calls),
            [1, 1, 1]
        );
        // Entries are the pages of the request's range.
        assert_eq!(c.calls(VIOMMU_MAP).entries, 2);
        assert_eq!(c.calls(VIOMMU_UNMAP).entries, 0x10_0000);
        assert_eq!(v.device_translations[&cfg.iommu_devices[0]], 2);
        // A second device that must be behind the IOMMU, with no access through it: bypass.
        let rng = Bdf {
            bus: 0,
            slot: 3,
            func: 0,
        };
        let both = Config {
            iommu_devices: vec![cfg.iommu_devices[0], rng],
            ..cfg.clone()
        };
        let v = run(
            &format!(
                "virtio_iommu_switch_address_space Device 00:03.0 switching address space \
                 (iommu enabled=1)\n{VIOMMU_GOOD}"
            ),
            &both,
        );
        assert_eq!(kinds(&v), vec![Kind::Untranslated], "{v}");
        assert!(
            v.violations[0]
                .message
                .starts_with("device 00:03.0: no access")
                && v.violations[0].message.contains("bypasses the IOMMU"),
            "{v}"
        );
        // Switched to bypass between two accesses; switched back at the end is fine (the
        // guest's teardown).
        let lines: Vec<&str> = VIOMMU_GOOD.lines().collect();
        let off = "virtio_iommu_switch_address_space Device 00:02.0 switching address space \
                   (iommu enabled=0)";
        let mut mid = lines.clone();
        mid.insert(6, off);
        let v = run(&(mid.join("\n") + "\n"), &cfg);
        assert_eq!(kinds(&v), vec![Kind::Untranslated], "{v}");
        assert_eq!(v.violations[0].line, 7, "{v}");
        assert!(v.violations[0].message.contains("while in use"), "{v}");
        let v = run(&format!("{VIOMMU_GOOD}{off}\n"), &cfg);
        assert!(v.passed(), "{v}");
        assert!(!v.devices[&cfg.iommu_devices[0]]);
        // Unmapped too early: refused without a fault report (no event buffers), then with one.
        let early = format!(
            "{VIOMMU_GOOD}virtio_iommu_translate mr=m rid=16 addr=0x1800 flag=1\n\
             virtio_iommu_translate mr=m rid=16 addr=0x1900 flag=1\n\
             virtio_iommu_report_fault FAULT reason=2 flags=1 endpoint=16 address =0x1900\n"
        );
        let v = run(&early, &cfg);
        assert_eq!(kinds(&v), vec![Kind::NotMapped], "{v}");
        assert_eq!(v.violation_count, 2);
        assert!(
            v.violations[0].message.contains("unmapped at line 10"),
            "{v}"
        );
        // Wrong permission, wrong phys, private page, bypass.
        let bad = "\
virtio_iommu_attach domain=1 endpoint=16
virtio_iommu_map domain=1 virt_start=0x1000 virt_end=0x1fff phys_start=0x1004000 flags=1
virtio_iommu_map domain=1 virt_start=0x8000 virt_end=0x8fff phys_start=0x5000 flags=3
virtio_iommu_translate mr=m rid=16 addr=0x1010 flag=2
virtio_iommu_translate_out 0x1010 -> 0x1004010 for sid=16
virtio_iommu_translate mr=m rid=16 addr=0x1020 flag=1
virtio_iommu_translate_out 0x1020 -> 0x1009020 for sid=16
virtio_iommu_translate mr=m rid=24 addr=0x3000 flag=1
";
        let v = run(bad, &cfg);
        assert_eq!(
            kinds(&v),
            vec![
                Kind::OutsidePool,
                Kind::Permission,
                Kind::WrongTranslation,
                Kind::Untranslated
            ],
            "{v}"
        );
        // A domain freed takes its mappings with it.
        let v = plain(
            "virtio_iommu_attach domain=1 endpoint=16\n\
             virtio_iommu_map domain=1 virt_start=0x1000 virt_end=0x1fff phys_start=0x4000 flags=3\n\
             virtio_iommu_put_domain Free domain=1\n\
             virtio_iommu_translate mr=m rid=16 addr=0x1010 flag=1\n",
        );
        assert_eq!(kinds(&v), vec![Kind::Untranslated], "{v}");
    }

    #[test]
    fn vtd_translations_and_pool() {
        let cfg = Config {
            pool: Some(vec![PhysRange {
                base: 0x100_0000,
                size: 0x40_0000,
            }]),
            expect_translations: true,
            ..Default::default()
        };
        let v = run(
            "vtd_dmar_enable enable 1\n\
             vtd_dmar_translate dev 00:03.00 iova 0x2000 -> gpa 0x1002000 mask 0xfff\n\
             vtd_dmar_translate dev 00:03.00 iova 0x3000 -> gpa 0x7000 mask 0xfff\n\
             vtd_translate_pt source id 0x18, iova 0x3000\n",
            &cfg,
        );
        assert_eq!(
            kinds(&v),
            vec![Kind::OutsidePool, Kind::Untranslated],
            "{v}"
        );
        // Nothing translated at all.
        let v = run("vtd_reset_exit \n", &cfg);
        assert_eq!(kinds(&v), vec![Kind::NoTranslations]);
    }

    /// `sg.iommu.map=static`: all RAM mapped once at its own address (q35, 512 MiB).
    const VIOMMU_STATIC: &str = "\
virtio_iommu_switch_address_space Device 00:02.0 switching address space (iommu enabled=1)
virtio_iommu_get_domain Alloc domain=0
virtio_iommu_attach domain=0 endpoint=16
virtio_iommu_map domain=0 virt_start=0x1000 virt_end=0x9efff phys_start=0x1000 flags=3
virtio_iommu_map domain=0 virt_start=0x100000 virt_end=0x1ffdffff phys_start=0x100000 flags=3
virtio_iommu_translate mr=virtio-iommu-memory-region-2-16 rid=16 addr=0x1234560 flag=1
virtio_iommu_translate_out 0x1234560 -> 0x1234560 for sid=16
virtio_iommu_translate mr=virtio-iommu-memory-region-2-16 rid=16 addr=0x1ffdfff0 flag=2
virtio_iommu_translate_out 0x1ffdfff0 -> 0x1ffdfff0 for sid=16
virtio_iommu_unmap domain=0 virt_start=0x1000 virt_end=0x9efff
virtio_iommu_unmap_done domain=0 virt_start=0x1000 virt_end=0x9efff
virtio_iommu_unmap domain=0 virt_start=0x100000 virt_end=0x1ffdffff
virtio_iommu_unmap_done domain=0 virt_start=0x100000 virt_end=0x1ffdffff
";

    #[test]
    fn static_domains_map_all_ram_once_and_translate_to_the_iova() {
        let blk = parse_bdf("00:02.0").unwrap();
        let cfg = Config {
            iommu_devices: vec![blk],
            identity_devices: vec![blk],
            expect_translations: true,
            ..Default::default()
        };
        // virtio-iommu: two MAPs of hundreds of MiB, followed as two intervals.
        let v = run(VIOMMU_STATIC, &cfg);
        assert!(v.passed(), "{v}");
        let c = &v.spaces[&Space::ViommuDomain { domain: 0 }];
        assert_eq!(
            (c.maps, c.unmaps, c.translations, c.live_at_end),
            (2, 2, 2, 0)
        );
        let pages = 0x9e + 0x1fee0;
        assert_eq!(
            c.calls(VIOMMU_MAP),
            Calls {
                calls: 2,
                entries: pages
            }
        );
        assert_eq!(
            c.calls(VIOMMU_UNMAP),
            Calls {
                calls: 2,
                entries: pages
            }
        );
        // A mapping that is not the identity: the translation follows it, and is wrong for a
        // static domain (and only for one).
        let shifted = VIOMMU_STATIC
            .replace("phys_start=0x100000", "phys_start=0x200000")
            .replace("0x1234560 -> 0x1234560", "0x1234560 -> 0x1334560")
            .replace("0x1ffdfff0 -> 0x1ffdfff0", "0x1ffdfff0 -> 0x200dfff0");
        let v = run(&shifted, &cfg);
        assert_eq!(kinds(&v), vec![Kind::WrongTranslation; 2], "{v}");
        let dynamic = Config {
            identity_devices: Vec::new(),
            ..cfg.clone()
        };
        assert!(run(&shifted, &dynamic).passed());
        // VT-d: 2 MiB and 4 KiB pages, each access at its own address.
        let vtd = "vtd_dmar_enable enable 1\n\
                   vtd_switch_address_space Device 00:02.0 switching address space (iommu enabled=1)\n\
                   vtd_dmar_translate dev 00:02.00 iova 0x1234560 -> gpa 0x1234560 mask 0x1fffff\n\
                   vtd_dmar_translate dev 00:02.00 iova 0x1ff000 -> gpa 0x1ff000 mask 0xfff\n";
        let v = run(vtd, &cfg);
        assert!(v.passed(), "{v}");
        assert_eq!(v.spaces[&Space::Vtd { device: blk }].translations, 2);
        let elsewhere = vtd.replace("-> gpa 0x1ff000", "-> gpa 0x3ff000");
        let v = run(&elsewhere, &cfg);
        assert_eq!(kinds(&v), vec![Kind::WrongTranslation], "{v}");
        assert!(v.violations[0].message.contains("static"), "{v}");
        assert!(run(&elsewhere, &dynamic).passed());
    }

    #[test]
    fn an_unreadable_trace_fails() {
        let log = TraceLog::parse(
            b"spapr_iommu_xlate liobn=0x80000000 0x0 -> 0x0 perm=0\nrandom noise\nvtd_reg_read x\n",
        );
        let v = check(&log, &Config::default());
        assert_eq!(kinds(&v), vec![Kind::Unreadable], "{v}");
        let v = check(
            &TraceLog::read(std::path::Path::new("/nonexistent")),
            &Config::default(),
        );
        assert_eq!(kinds(&v), vec![Kind::Unreadable]);
        // Unknown lines and other events alone are fine.
        assert!(
            check(
                &TraceLog::parse(b"noise\nvtd_reg_read x\n"),
                &Config::default()
            )
            .passed()
        );
    }

    #[test]
    fn config_from_the_report() {
        let lines = [
            r#"@sg {"event":"secure","v":1,"mode":"emulate","platform":"emulated","secure":true,"action":"proceed","reasons":[],"facts":{"ultravisor":false,"msr_s":false,"sev_status":"0x0","tdx":false},"legacy_devices":"refuse","granularity":65536}"#,
            r#"@sg {"event":"swiotlb","v":1,"base":"0x1000000","device_base":"0x1000000","size":4194304,"slot_size":2048,"slots":2048,"max_mapping":262144,"shares":[],"leak":false}"#,
            r#"@sg {"event":"virtio","v":1,"device":"rng","device_id":4,"transport":"virtio-pci-modern","location":"00:02.0","features_offered":"0x0","features_accepted":"0x0","features_offered_names":[],"features_accepted_names":[],"access_platform":{"offered":true,"accepted":true},"queues":[],"dma":"iommu+bounce","requests":1,"bytes_to_device":0,"bytes_from_device":64,"notifications":1,"result":"ok","entropy_bytes":64}"#,
            r#"@sg {"event":"virtio","v":1,"device":"rng","device_id":4,"transport":"virtio-pci-modern","location":"00:03.0","features_offered":"0x0","features_accepted":"0x0","features_offered_names":[],"features_accepted_names":[],"access_platform":{"offered":false,"accepted":false},"queues":[],"dma":"direct","requests":1,"bytes_to_device":0,"bytes_from_device":64,"notifications":1,"result":"ok","entropy_bytes":64}"#,
        ];
        let report = crate::report::Report::parse(lines.join("\n").as_bytes());
        let c = config_for(&report.records, Arch::X86_64);
        assert_eq!(
            c.pool,
            Some(vec![PhysRange {
                base: 0x100_0000,
                size: 4 << 20
            }])
        );
        assert!(c.expect_translations);
        assert_eq!(c.iommu_devices, vec![parse_bdf("00:02.0").unwrap()]);
        assert!(
            config_for(&report.records, Arch::Ppc64le)
                .iommu_devices
                .is_empty()
        );
        assert!(c.identity_devices.is_empty());
        let plain = crate::report::Report::parse(lines[3].as_bytes());
        assert_eq!(config_for(&plain.records, Arch::X86_64), Config::default());
        // A device whose domain is static: its translations must be the identity.
        let fixed = lines[2]
            .replace(r#""dma":"iommu+bounce""#, r#""dma":"iommu""#)
            .replace(
                r#""result":"ok""#,
                r#""iommu":{"backend":"vt-d","mode":"static"},"result":"ok""#,
            );
        let r = crate::report::Report::parse(fixed.as_bytes());
        assert_eq!(
            config_for(&r.records, Arch::X86_64).identity_devices,
            vec![parse_bdf("00:02.0").unwrap()]
        );
        assert!(
            config_for(&r.records, Arch::Ppc64le)
                .identity_devices
                .is_empty()
        );
        for bad in ["", "00:02", "00:20.0", "00:02.8", "g0:02.0"] {
            assert_eq!(parse_bdf(bad), None, "{bad}");
        }
        assert!(is_iommu_path("iommu") && is_iommu_path("iommu+bounce"));
        assert!(!is_iommu_path("bounce") && !is_iommu_path("iommux"));
    }

    #[test]
    fn reported_violations_are_capped_and_deduplicated() {
        let mut t = String::new();
        for i in 0..100u64 {
            t.push_str(&format!(
                "spapr_iommu_xlate liobn=0x80000000 {:#x} -> 0x0 perm=0 mask=0xfff\n",
                i * 0x800
            ));
        }
        let v = plain(&t);
        assert_eq!(v.violation_count, 100);
        assert_eq!(v.violations.len(), DEFAULT_REPORTED);
        assert_eq!(v.violations[1].iova, Some(0x1000));
        assert!(v.to_string().contains("... 80 more"));
    }
}
