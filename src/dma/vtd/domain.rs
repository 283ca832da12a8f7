//! VT-d domains as IOMMU backends ([`IommuBackend`]): one domain (DID, second-level table,
//! context entry) per PCI function, set up the first time the function needs it
//! ([`VtdSetup`], a [`DomainSetup`]), and torn down with the unit at the end of the run
//! ([`Vtd::teardown`]).
//!
//! The unit and every domain's table live in one [`Vtd`] behind a lock that all domains share:
//! they issue their invalidations through the same registers, and the teardown needs the
//! tables after the [`IommuDma`]s that use them are done.
//!
//! | path | the domain maps | per request |
//! |---|---|---|
//! | `iommu` | each buffer, at IOVAs of the domain's aperture | PTE writes on map; PTE writes and one IOTLB invalidation on unmap |
//! | `iommu`, `sg.iommu.map=static` | all RAM, once, at setup, IOVA = physical address (2 MiB entries where `CAP.SLLPS` offers them) | nothing: the direct path serves the requests |
//! | `iommu+bounce` | the shared pool, once, at setup | nothing: the bounce path serves the requests |
//!
//! Commands counted per domain (`calls_by_kind`): `IOTLB_PSI` (page-selective invalidations,
//! entries = pages covered), `IOTLB_DSI` (domain-selective), `CONTEXT` (context-cache
//! invalidations and write-buffer flushes the domain caused).

use alloc::boxed::Box;
use alloc::vec::Vec;

use super::{CacheFlush, PTE_R, PTE_W, SlTable, VtdError, VtdUnit};
use crate::dma::DmaError;
use crate::dma::aperture::{self, X86_INTERRUPT_RANGE};
use crate::dma::iommu::{
    CallCount, DomainInfo, DomainSetup, IommuBackend, IommuDebug, IommuDma, IommuMap,
    MAX_CALL_KINDS, Perm, identity_dma, identity_runs, per_device_dma, x86_map_mode,
};
use crate::dma::tce::Target;
use crate::virtio::regs::Registers;
use crate::virtio::wait::Clock;

/// The IOVA bytes a dynamic domain asks for: what the IOVA allocator manages at most.
const WANT: u64 = crate::dma::iommu::IOVA_PAGES_MAX << 12;

/// One domain's state, kept with the unit.
pub struct VtdDomainState<'d> {
    /// Requester ID (`bus << 8 | devfn`).
    pub sid: u16,
    pub did: u16,
    pub table: SlTable<'d>,
}

/// A unit and its domains.
pub struct Vtd<'d, R: Registers, C: Clock> {
    pub unit: VtdUnit<'d, R, C>,
    pub domains: Vec<VtdDomainState<'d>>,
    /// Table pages given back by the teardown.
    pub freed_pages: u64,
}

impl<'d, R: Registers, C: Clock> Vtd<'d, R, C> {
    pub fn new(unit: VtdUnit<'d, R, C>) -> Self {
        Vtd {
            unit,
            domains: Vec::new(),
            freed_pages: 0,
        }
    }

    /// At the end of the run, once every device is reset: every context entry removed and
    /// invalidated, translation off, every table given back (zeroed, when it came from the
    /// pool). The first error is returned; what could not be undone is left in place.
    pub fn teardown(&mut self) -> Result<(), VtdError> {
        let mut first = Ok(());
        for d in &self.domains {
            if let Err(e) = self.unit.detach(d.sid, d.did) {
                first = first.and(Err(e));
            }
        }
        if let Err(e) = self.unit.disable() {
            // Translation still on: the unit may still walk the tables; keep them.
            return first.and(Err(e));
        }
        for d in self.domains.drain(..) {
            // SAFETY: translation is off and every context entry is gone: the unit walks
            // nothing any more.
            self.freed_pages += unsafe { d.table.free() };
        }
        // SAFETY: as above.
        self.freed_pages += unsafe { self.unit.free_tables() };
        first
    }
}

/// The counts of one domain.
#[derive(Clone, Copy, Default)]
struct Kinds([CallCount; MAX_CALL_KINDS]);

impl Kinds {
    fn new() -> Self {
        Kinds([
            CallCount::named("IOTLB_PSI"),
            CallCount::named("IOTLB_DSI"),
            CallCount::named("CONTEXT"),
        ])
    }

    /// Adds what the unit's counters moved by since `before`.
    fn add<R: Registers, C: Clock>(&mut self, unit: &VtdUnit<'_, R, C>, before: super::VtdCounts) {
        let now = unit.counts;
        let psi = now.iotlb_page - before.iotlb_page;
        if psi > 0 {
            self.0[0].calls += psi;
            self.0[0].entries += now.iotlb_page_pages - before.iotlb_page_pages;
        }
        let dsi = now.iotlb_domain + now.iotlb_global - before.iotlb_domain - before.iotlb_global;
        self.0[1].calls += dsi;
        let ctx = now.context_invalidations + now.write_buffer_flushes
            - before.context_invalidations
            - before.write_buffer_flushes;
        self.0[2].calls += ctx;
    }
}

/// A VT-d domain as [`IommuDma`] drives it.
pub struct VtdDomain<R: Registers + 'static, C: Clock + 'static> {
    vtd: &'static spin::Mutex<Vtd<'static, R, C>>,
    /// Index in `Vtd::domains`.
    slot: usize,
    did: u16,
    aperture: (u64, u64),
    page_sizes: u64,
    kinds: Kinds,
}

impl<R: Registers + Send + 'static, C: Clock + Send + 'static> IommuBackend for VtdDomain<R, C> {
    fn page_shift(&self) -> u32 {
        12
    }

    fn page_sizes(&self) -> u64 {
        self.page_sizes
    }

    fn aperture(&self) -> (u64, u64) {
        self.aperture
    }

    fn map(&mut self, iova: u64, phys: u64, pages: u64, perm: Perm) -> Result<(), DmaError> {
        // The table checks the run against its reach; static mappings (the pool, RMRRs) may lie
        // outside the aperture the IOVA allocator hands out.
        let mut v = self.vtd.lock();
        let bits = (if perm.bits() & 1 != 0 { PTE_R } else { 0 })
            | (if perm.bits() & 2 != 0 { PTE_W } else { 0 });
        v.domains[self.slot].table.map(iova, phys, pages, bits)?;
        let before = v.unit.counts;
        let r = v.unit.after_map(self.did, iova, pages);
        self.kinds.add(&v.unit, before);
        if let Err(e) = r {
            // All or nothing: take the entries out again (the unit may have cached nothing
            // of them: the invalidation that failed was the only way it could).
            let _ = v.domains[self.slot].table.unmap(iova, pages);
            return Err(e.into());
        }
        Ok(())
    }

    fn unmap(&mut self, iova: u64, pages: u64) -> Result<(), DmaError> {
        let mut v = self.vtd.lock();
        v.domains[self.slot].table.unmap(iova, pages)?;
        let before = v.unit.counts;
        let r = v.unit.flush_iotlb(self.did, iova, pages);
        self.kinds.add(&v.unit, before);
        r.map_err(Into::into)
    }

    fn calls(&self) -> [CallCount; MAX_CALL_KINDS] {
        self.kinds.0
    }
}

/// The [`DomainSetup`] of one PCI function behind a VT-d unit.
pub struct VtdSetup<R: Registers + 'static, C: Clock + 'static> {
    pub vtd: &'static spin::Mutex<Vtd<'static, R, C>>,
    /// Requester ID (`bus << 8 | devfn`).
    pub sid: u16,
    pub target: Target<'static>,
    /// RMRR ranges (base, inclusive limit) of this function: identity-mapped, never handed out.
    pub rmrrs: Vec<(u64, u64)>,
    /// `sg.iommu.map`; `None`: the default (dynamic).
    pub map: Option<IommuMap>,
    /// `sg.debug.unmap_early` (per-map domains), `sg.debug.map_private` (pool domains): test
    /// only.
    pub debug: IommuDebug,
}

impl<R: Registers + Send + 'static, C: Clock + Send + 'static> VtdSetup<R, C> {
    fn go(self) -> Result<IommuDma<'static>, DmaError> {
        let mut v = self.vtd.lock();
        let input = v.unit.agaw.input_range(&v.unit.caps);
        let sllps = (v.unit.caps.cap >> 34) & 3;
        let (map, mode_reason) = x86_map_mode(self.map, matches!(self.target, Target::Pool { .. }));
        // Where the domain's IOVAs go: all RAM at its own address (static), or an aperture
        // clear of the RMRRs and the interrupt window. Chosen before anything is made, so that
        // a domain that cannot be made leaves nothing behind.
        let mut reserved = self.rmrrs.clone();
        reserved.push(X86_INTERRUPT_RANGE);
        // sg.debug.map_private maps one more page after the pool: room for it.
        let private_len = if self.debug.map_private { 4096 } else { 0 };
        let plan = match (map, self.target) {
            (IommuMap::Static, Target::Direct { ram, direct }) => {
                // RMRRs are identity-mapped too: they cannot collide with identity RAM.
                let cuts = [(
                    X86_INTERRUPT_RANGE.0,
                    X86_INTERRUPT_RANGE.1,
                    "sg.iommu.map=static: RAM overlaps the x86 interrupt window \
                     0xfee00000-0xfeefffff",
                )];
                Plan::Identity(identity_runs(ram, 4096, input, &cuts)?, direct)
            }
            (_, target) => {
                let want = match target {
                    Target::Pool { size, .. } => size + private_len,
                    Target::Direct { .. } => WANT,
                };
                let chosen =
                    aperture::choose(input, &reserved, 4096, aperture::PREFERRED_BASE, want);
                Plan::Aperture(chosen.ok_or(DmaError::InvalidRequest(
                    "no IOVA range clear of reserved ones",
                ))?)
            }
        };
        let did = v.unit.new_domain_id()?;
        let (levels, flush): (u32, CacheFlush) = (v.unit.agaw.levels, v.unit.flush_fn());
        let mut table = SlTable::new(v.unit.dma(), levels, flush)?;
        // 2 MiB entries for the static mapping, when the unit offers them.
        table.set_large_pages(matches!(plan, Plan::Identity(..)) && sllps & 1 != 0);
        let before = v.unit.counts;
        if let Err(e) = v.unit.attach(self.sid, did, &table) {
            if v.unit.is_attached(self.sid) {
                // The entry was written and its invalidation failed: the unit may walk the
                // table, so it stays (the teardown tries again).
                v.domains.push(VtdDomainState {
                    sid: self.sid,
                    did,
                    table,
                });
            } else {
                // SAFETY: no context entry points at the table.
                unsafe { table.free() };
            }
            return Err(e.into());
        }
        let mut kinds = Kinds::new();
        kinds.add(&v.unit, before);
        let slot = v.domains.len();
        v.domains.push(VtdDomainState {
            sid: self.sid,
            did,
            table,
        });
        let page_sizes = 1 << 12 | (sllps & 1) << 21 | (sllps & 2) << 29;
        drop(v);
        let backend = |aperture: (u64, u64)| {
            Box::new(VtdDomain {
                vtd: self.vtd,
                slot,
                did,
                aperture,
                page_sizes,
                kinds,
            })
        };
        let info = DomainInfo {
            backend: "vt-d",
            mode: IommuMap::Dynamic.as_str(),
            mode_reason,
            id: u64::from(did),
            ..DomainInfo::default()
        };
        let (dma, identity) = match plan {
            Plan::Identity(runs, direct) => {
                let top = runs.last().map_or(0, |&(b, l)| b + l);
                let dma = identity_dma(backend((runs[0].0, top - runs[0].0)), info, direct, &runs)?;
                (dma, runs)
            }
            Plan::Aperture((base, size)) => {
                let info = DomainInfo {
                    window_base: base,
                    window_size: size,
                    ..info
                };
                // A private page after the pool (test only, sg.debug.map_private): the trace
                // shows it only when the device reaches it.
                let dma = per_device_dma(
                    backend((base, size)),
                    info,
                    &self.target,
                    base,
                    private_len,
                    self.debug.unmap_early,
                )?;
                (dma, Vec::new())
            }
        };
        // The RMRRs, identity-mapped (what static RAM already maps, it maps the same way).
        for &(lo, hi) in &self.rmrrs {
            let (start, end) = (lo & !0xfff, (hi | 0xfff).saturating_add(1));
            for (s, e) in aperture::uncovered((start, end), &identity) {
                dma.map_fixed(s, s, e - s, Perm::RW)?;
            }
        }
        Ok(dma)
    }
}

/// Where a domain's IOVAs go.
enum Plan {
    /// All RAM at its own address: the runs of [`identity_runs`], served by the direct path.
    Identity(Vec<(u64, u64)>, &'static dyn crate::dma::Dma),
    /// An aperture (base, bytes) for per-request mappings or the pool.
    Aperture((u64, u64)),
}

impl<R: Registers + Send + 'static, C: Clock + Send + 'static> DomainSetup<'static>
    for VtdSetup<R, C>
{
    fn setup(self: Box<Self>) -> Result<IommuDma<'static>, DmaError> {
        self.go()
    }
}
