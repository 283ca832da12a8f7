//! virtio-iommu domains as IOMMU backends ([`IommuBackend`]): one domain per endpoint (a PCI
//! function, endpoint ID = its requester ID), set up the first time the endpoint needs it
//! ([`ViommuSetup`]: PROBE for its reserved regions, a fresh domain ID, ATTACH), and torn down
//! with the device at the end of the run ([`ViommuIommu::teardown`]).
//!
//! The driver ([`crate::virtio::iommu::Viommu`]) and the list of attached endpoints live in one
//! [`ViommuIommu`] behind a lock all domains share: they send their requests through the same
//! request queue.
//!
//! | path | the domain maps | per request |
//! |---|---|---|
//! | `iommu` | each buffer, at IOVAs of the domain's aperture | one MAP on map, one UNMAP on unmap |
//! | `iommu`, `sg.iommu.map=static` | all RAM, once, at setup, IOVA = physical address (one MAP per RAM range) | nothing: the direct path serves the requests |
//! | `iommu+bounce` | the shared pool, once, at setup (one MAP) | nothing: the bounce path serves the requests |
//!
//! The aperture lies inside the device's `input_range` and clear of every reserved region the
//! endpoint's PROBE named (MSI doorbells included) and of the x86 interrupt window. A static
//! domain's RAM must too: RAM that does not fails the setup, before ATTACH.

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::dma::DmaError;
use crate::dma::aperture::{self, X86_INTERRUPT_RANGE};
use crate::dma::iommu::{
    CallCount, DomainInfo, DomainSetup, IOVA_PAGES_MAX, IommuBackend, IommuDebug, IommuDma,
    IommuMap, MAX_CALL_KINDS, Perm, ReservedIova, identity_dma, identity_runs, per_device_dma,
    x86_map_mode,
};
use crate::dma::tce::Target;
use crate::virtio::iommu::{
    Fault, MAP_F_READ, MAP_F_WRITE, Request, ResvRegion, Viommu, ViommuCounts, ViommuError,
};
use crate::virtio::transport::Transport;
use crate::virtio::wait::Clock;

/// An endpoint attached to a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub endpoint: u32,
    pub domain: u32,
    /// The static mappings made at setup, (IOVA, bytes): the pool of a pool domain (and, with
    /// `sg.debug.map_private`, test only, the private page after it), or each RAM range of a
    /// static domain. The teardown unmaps each.
    pub fixed: Vec<(u64, u64)>,
    /// What PROBE said.
    pub reserved: Vec<ResvRegion>,
}

/// The device and its endpoints.
pub struct ViommuIommu<'d, T: Transport + ?Sized, C: Clock> {
    /// `None` once torn down.
    pub driver: Option<Viommu<'d, T, C>>,
    pub attached: Vec<Attached>,
    /// After the teardown: the driver's final counts, faults and first error.
    pub finished: Option<(ViommuCounts, Vec<Fault>, Option<ViommuError>)>,
}

/// Why a request could not be sent: the device is gone.
const DOWN: DmaError = DmaError::InvalidRequest("the virtio-iommu is shut down");

impl<'d, T: Transport + ?Sized, C: Clock> ViommuIommu<'d, T, C> {
    pub fn new(driver: Viommu<'d, T, C>) -> Self {
        ViommuIommu {
            driver: Some(driver),
            attached: Vec::new(),
            finished: None,
        }
    }

    fn request(&mut self, r: &Request) -> Result<(), DmaError> {
        let d = self.driver.as_mut().ok_or(DOWN)?;
        d.request(r).map_err(Into::into)
    }

    /// At the end of the run, once every device is reset: the pool mappings removed, every
    /// endpoint detached, the device reset and its queues given back. The first error is
    /// returned (the driver is gone either way).
    pub fn teardown(&mut self) -> Result<(), ViommuError> {
        let Some(mut d) = self.driver.take() else {
            return Ok(());
        };
        let mut first = Ok(());
        for a in &self.attached {
            for &(iova, len) in &a.fixed {
                let r = d.request(&Request::Unmap {
                    domain: a.domain,
                    virt_start: iova,
                    virt_end: iova + (len - 1),
                });
                first = first.and(r);
            }
            let r = d.request(&Request::Detach {
                domain: a.domain,
                endpoint: a.endpoint,
            });
            first = first.and(r);
        }
        self.attached.clear();
        let counts = d.counts;
        let faults = core::mem::take(&mut d.faults);
        let last = d.last_error;
        match d.shutdown() {
            Ok(()) => {}
            Err(why) => {
                first = first.and(Err(ViommuError::Config(why)));
            }
        }
        self.finished = Some((counts, faults, last));
        first
    }
}

/// One domain as [`IommuDma`] drives it.
pub struct ViommuDomain<T: Transport + ?Sized + 'static, C: Clock + 'static> {
    iommu: &'static spin::Mutex<ViommuIommu<'static, T, C>>,
    domain: u32,
    page_shift: u32,
    page_sizes: u64,
    aperture: (u64, u64),
    kinds: [CallCount; MAX_CALL_KINDS],
}

fn flags(perm: Perm) -> u32 {
    (if perm.bits() & 1 != 0 { MAP_F_READ } else { 0 })
        | (if perm.bits() & 2 != 0 { MAP_F_WRITE } else { 0 })
}

impl<T: Transport + ?Sized + Send + 'static, C: Clock + Send + 'static> IommuBackend
    for ViommuDomain<T, C>
{
    fn page_shift(&self) -> u32 {
        self.page_shift
    }

    fn page_sizes(&self) -> u64 {
        self.page_sizes
    }

    fn aperture(&self) -> (u64, u64) {
        self.aperture
    }

    fn map(&mut self, iova: u64, phys: u64, pages: u64, perm: Perm) -> Result<(), DmaError> {
        let last = pages
            .checked_shl(self.page_shift)
            .and_then(|len| iova.checked_add(len.checked_sub(1)?))
            .ok_or(DmaError::InvalidRequest(
                "virtio-iommu map of no pages or past 2^64",
            ))?;
        self.kinds[0].add(pages);
        self.iommu.lock().request(&Request::Map {
            domain: self.domain,
            virt_start: iova,
            virt_end: last,
            phys_start: phys,
            flags: flags(perm),
        })
    }

    fn unmap(&mut self, iova: u64, pages: u64) -> Result<(), DmaError> {
        let last = pages
            .checked_shl(self.page_shift)
            .and_then(|len| iova.checked_add(len.checked_sub(1)?))
            .ok_or(DmaError::InvalidRequest(
                "virtio-iommu unmap of no pages or past 2^64",
            ))?;
        self.kinds[1].add(pages);
        self.iommu.lock().request(&Request::Unmap {
            domain: self.domain,
            virt_start: iova,
            virt_end: last,
        })
    }

    fn calls(&self) -> [CallCount; MAX_CALL_KINDS] {
        self.kinds
    }
}

/// The [`DomainSetup`] of one endpoint behind a virtio-iommu.
pub struct ViommuSetup<T: Transport + ?Sized + 'static, C: Clock + 'static> {
    pub iommu: &'static spin::Mutex<ViommuIommu<'static, T, C>>,
    pub endpoint: u32,
    pub target: Target<'static>,
    /// `sg.iommu.map`; `None`: the default (dynamic).
    pub map: Option<IommuMap>,
    /// `sg.debug.unmap_early` (per-map domains), `sg.debug.map_private` (pool domains): test
    /// only.
    pub debug: IommuDebug,
}

impl<T: Transport + ?Sized + Send + 'static, C: Clock + Send + 'static> ViommuSetup<T, C> {
    fn go(self) -> Result<IommuDma<'static>, DmaError> {
        let mut io = self.iommu.lock();
        let d = io.driver.as_mut().ok_or(DOWN)?;
        let requests_before = d.counts.requests();
        let reserved = d.probe(self.endpoint)?;
        // 4 KiB pages where the device's granule is smaller (any multiple of it is a valid
        // mapping); its granule where larger.
        let page_shift = d.granule.max(12);
        let page = 1u64 << page_shift;
        let page_sizes = d.config.page_size_mask & !(page - 1);
        let input = (d.config.input_start, d.config.input_end);
        let (map, mode_reason) = x86_map_mode(self.map, matches!(self.target, Target::Pool { .. }));
        // A static domain's RAM must fit what the device translates: checked before ATTACH,
        // so that a domain that cannot be made leaves nothing behind.
        let identity = match (map, self.target) {
            (IommuMap::Static, Target::Direct { ram, direct }) => {
                // The interrupt window first: QEMU's PROBE names it too (as an MSI region).
                let mut cuts: Vec<ReservedIova> = alloc::vec![(
                    X86_INTERRUPT_RANGE.0,
                    X86_INTERRUPT_RANGE.1,
                    STATIC_OVER_INTERRUPTS,
                )];
                cuts.extend(
                    reserved
                        .iter()
                        .map(|r| (r.start, r.end, STATIC_OVER_PROBED)),
                );
                Some((identity_runs(ram, page, input, &cuts)?, direct))
            }
            _ => None,
        };
        let domain = d.new_domain()?;
        d.request(&Request::Attach {
            domain,
            endpoint: self.endpoint,
        })?;
        let setup_calls = d.counts.requests() - requests_before;
        let backend = |aperture: (u64, u64)| {
            Box::new(ViommuDomain {
                iommu: self.iommu,
                domain,
                page_shift,
                page_sizes,
                aperture,
                kinds: [
                    CallCount::named("MAP"),
                    CallCount::named("UNMAP"),
                    CallCount::default(),
                ],
            })
        };
        let info = DomainInfo {
            backend: "virtio-iommu",
            mode: IommuMap::Dynamic.as_str(),
            mode_reason,
            id: u64::from(domain),
            setup_calls,
            ..DomainInfo::default()
        };
        if let Some((runs, direct)) = identity {
            io.attached.push(Attached {
                endpoint: self.endpoint,
                domain,
                fixed: runs.clone(),
                reserved,
            });
            drop(io);
            let top = runs.last().map_or(0, |&(b, l)| b + l);
            // One MAP per RAM range.
            return identity_dma(backend((runs[0].0, top - runs[0].0)), info, direct, &runs);
        }
        let mut cuts: Vec<(u64, u64)> = reserved.iter().map(|r| (r.start, r.end)).collect();
        cuts.push(X86_INTERRUPT_RANGE);
        let pool = match &self.target {
            Target::Pool { size, .. } => Some(*size),
            Target::Direct { .. } => None,
        };
        // sg.debug.map_private maps one more page after the pool: room for it.
        let private_len = if self.debug.map_private { page } else { 0 };
        let want = pool.map_or(IOVA_PAGES_MAX << page_shift, |s| s + private_len);
        let chosen = aperture::choose(input, &cuts, page, aperture::PREFERRED_BASE, want);
        let fixed = match (pool, chosen) {
            (Some(size), Some((base, got))) if got >= size + private_len => {
                let mut f = alloc::vec![(base, size)];
                if private_len > 0 {
                    f.push((base + size, private_len));
                }
                f
            }
            (Some(size), _) => {
                io.attached.push(Attached {
                    endpoint: self.endpoint,
                    domain,
                    fixed: Vec::new(),
                    reserved,
                });
                return Err(DmaError::TooLarge {
                    requested: usize::try_from(size).unwrap_or(usize::MAX),
                    limit: chosen.map_or(0, |(_, s)| usize::try_from(s).unwrap_or(usize::MAX)),
                });
            }
            _ => Vec::new(),
        };
        io.attached.push(Attached {
            endpoint: self.endpoint,
            domain,
            fixed,
            reserved,
        });
        drop(io);
        let (base, size) = chosen.ok_or(DmaError::InvalidRequest(
            "no IOVA range clear of reserved ones",
        ))?;
        let info = DomainInfo {
            window_base: base,
            window_size: size,
            ..info
        };
        // A private page after the pool (test only, sg.debug.map_private): the host's IOMMU
        // trace oracle must fail.
        per_device_dma(
            backend((base, size)),
            info,
            &self.target,
            base,
            private_len,
            self.debug.unmap_early,
        )
    }
}

/// Why a static domain cannot be made: its RAM covers a reserved region.
const STATIC_OVER_PROBED: &str =
    "sg.iommu.map=static: RAM overlaps a reserved region the virtio-iommu's PROBE named";
const STATIC_OVER_INTERRUPTS: &str =
    "sg.iommu.map=static: RAM overlaps the x86 interrupt window 0xfee00000-0xfeefffff";

impl<T: Transport + ?Sized + Send + 'static, C: Clock + Send + 'static> DomainSetup<'static>
    for ViommuSetup<T, C>
{
    fn setup(self: Box<Self>) -> Result<IommuDma<'static>, DmaError> {
        self.go()
    }
}

#[cfg(test)]
mod tests;
