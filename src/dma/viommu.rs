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
//! | `iommu+bounce` | the shared pool, once, at setup (one MAP) | nothing: the bounce path serves the requests |
//!
//! The aperture lies inside the device's `input_range` and clear of every reserved region the
//! endpoint's PROBE named (MSI doorbells included) and of the x86 interrupt window.

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::dma::DmaError;
use crate::dma::aperture::{self, X86_INTERRUPT_RANGE};
use crate::dma::iommu::{
    CallCount, DomainInfo, DomainSetup, IOVA_PAGES_MAX, IommuBackend, IommuDebug, IommuDma,
    MAX_CALL_KINDS, Perm, per_device_dma,
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
    /// The static mapping of a pool domain: (IOVA, bytes).
    pub fixed: Option<(u64, u64)>,
    /// `sg.debug.map_private` (test only): the private page mapped after the pool (IOVA, bytes).
    pub private: Option<(u64, u64)>,
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
            for (iova, len) in a.fixed.into_iter().chain(a.private) {
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
        let domain = d.new_domain()?;
        d.request(&Request::Attach {
            domain,
            endpoint: self.endpoint,
        })?;
        // 4 KiB pages where the device's granule is smaller (any multiple of it is a valid
        // mapping); its granule where larger.
        let page_shift = d.granule.max(12);
        let page = 1u64 << page_shift;
        let page_sizes = d.config.page_size_mask & !(page - 1);
        let input = (d.config.input_start, d.config.input_end);
        let setup_calls = d.counts.requests() - requests_before;
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
            (Some(size), Some((base, got))) if got >= size + private_len => Some((base, size)),
            (Some(size), _) => {
                io.attached.push(Attached {
                    endpoint: self.endpoint,
                    domain,
                    fixed: None,
                    private: None,
                    reserved,
                });
                return Err(DmaError::TooLarge {
                    requested: usize::try_from(size).unwrap_or(usize::MAX),
                    limit: chosen.map_or(0, |(_, s)| usize::try_from(s).unwrap_or(usize::MAX)),
                });
            }
            _ => None,
        };
        io.attached.push(Attached {
            endpoint: self.endpoint,
            domain,
            fixed,
            private: fixed
                .filter(|_| private_len > 0)
                .map(|(b, s)| (b + s, private_len)),
            reserved,
        });
        drop(io);
        let (base, size) = chosen.ok_or(DmaError::InvalidRequest(
            "no IOVA range clear of reserved ones",
        ))?;
        let backend = Box::new(ViommuDomain {
            iommu: self.iommu,
            domain,
            page_shift,
            page_sizes,
            aperture: (base, size),
            kinds: [
                CallCount::named("MAP"),
                CallCount::named("UNMAP"),
                CallCount::default(),
            ],
        });
        let info = DomainInfo {
            backend: "virtio-iommu",
            mode: "dynamic",
            mode_reason: "one domain per endpoint, attached on first use",
            id: u64::from(domain),
            window_base: base,
            window_size: size,
            setup_calls,
            ..DomainInfo::default()
        };
        // A private page after the pool (test only, sg.debug.map_private): the host's IOMMU
        // trace oracle must fail.
        per_device_dma(
            backend,
            info,
            &self.target,
            base,
            private_len,
            self.debug.unmap_early,
        )
    }
}

impl<T: Transport + ?Sized + Send + 'static, C: Clock + Send + 'static> DomainSetup<'static>
    for ViommuSetup<T, C>
{
    fn setup(self: Box<Self>) -> Result<IommuDma<'static>, DmaError> {
        self.go()
    }
}

#[cfg(test)]
mod tests;
