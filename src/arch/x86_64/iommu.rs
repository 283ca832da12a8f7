//! The IOMMUs of q35 and pc: Intel VT-d, found in the ACPI DMAR, or a virtio-iommu PCI
//! function (1af4:1057), whose endpoints the ACPI VIOT names. The logic is portable
//! (`secure_guest::dma::{vtd, viommu}`, `secure_guest::virtio::iommu`,
//! `secure_guest::acpi::{dmar, viot}`); here are the register window, `clflush`, the PCI
//! topology and the records.
//!
//! The unit is set up before any device runs (translation on, or `bypass` off: from then on a
//! device whose DMA goes through the IOMMU faults unless its endpoint has a domain). Each
//! virtio PCI function behind it gets a domain of its own, set up the first time the device's
//! DMA path needs it. After every device ran, [`iommu_finish`] writes the `iommu_unit` record
//! and tears the unit down.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use secure_guest::acpi::{self, dmar, viot};
use secure_guest::cmdline::Options;
use secure_guest::devices::TickClock;
use secure_guest::devtree::{DeviceTree, PciFunction};
use secure_guest::dma::iommu::LazyDomain;
use secure_guest::dma::tce::Target;
use secure_guest::dma::viommu::{ViommuIommu, ViommuSetup};
use secure_guest::dma::vtd::{Vtd, VtdSetup, VtdUnit};
use secure_guest::dma::{Dma, DmaError};
use secure_guest::virtio::driver::Settings;
use secure_guest::virtio::found::ProbeOptions;
use secure_guest::virtio::iommu::{Config, Viommu};
use secure_guest::virtio::pci::{self, PciAddress};
use secure_guest::virtio::regs::MmioWindow;
use secure_guest::virtio::{Negotiation, Transport};

use super::paging;
use super::pci::{PortConfig, read32};
use super::virtio::X86Bars;

/// The virtio-iommu's PCI device ID (modern: 0x1040 + 23).
const VIRTIO_IOMMU_ID: u16 = 0x1057;
/// Bytes of the VT-d register window mapped (QEMU uses 0x230 of it).
const VTD_REGS: u64 = 0x1000;

type Clock = TickClock;
type VtdShared = spin::Mutex<Vtd<'static, MmioWindow, Clock>>;
type ViommuShared = spin::Mutex<ViommuIommu<'static, dyn Transport + Send, Clock>>;

/// The unit, as set up.
enum Unit {
    Vtd {
        vtd: &'static VtdShared,
        base: u64,
    },
    Viommu {
        io: &'static ViommuShared,
        at: PciAddress,
        negotiation: Negotiation,
        config: Config,
    },
    /// Found but not usable: why.
    Failed {
        kind: &'static str,
        location: String,
        error: String,
    },
}

/// What [`iommu_domains`] found, for the device discovery and the end of the run.
struct State {
    unit: Unit,
    /// Where the list of translated functions came from: `dmar`, `viot`, `all-pci`.
    source: &'static str,
    /// The requester IDs that have a domain, in domain order, with their endpoint IDs.
    endpoints: Vec<(u16, u32)>,
    /// The virtio-iommu's own function: driven as the IOMMU, not as a device.
    own: Option<u16>,
}

static STATE: spin::Once<State> = spin::Once::new();

fn bdf(f: &PciFunction) -> u16 {
    u16::from(f.bus) << 8 | u16::from(f.device) << 3 | u16::from(f.function)
}

fn bdf_str(b: u16) -> String {
    PciAddress::new((b >> 8) as u8, (b >> 3) as u8, b as u8).bdf()
}

/// The domain index of PCI function (bus, device, function), if it sits behind the IOMMU.
pub fn domain_index(bus: u8, device: u8, function: u8) -> Option<usize> {
    let b = u16::from(bus) << 8 | u16::from(device) << 3 | u16::from(function);
    STATE.get()?.endpoints.iter().position(|&(e, _)| e == b)
}

/// Whether (bus, device, function) is the virtio-iommu itself.
pub fn is_iommu_function(bus: u8, device: u8, function: u8) -> bool {
    let b = u16::from(bus) << 8 | u16::from(device) << 3 | u16::from(function);
    STATE.get().is_some_and(|s| s.own == Some(b))
}

/// PCI-to-PCI bridges through configuration space, for DMAR device scopes.
struct ConfigTopology;

impl dmar::BusTopology for ConfigTopology {
    fn bridge_buses(&mut self, bus: u8, device: u8, function: u8) -> Option<(u8, u8)> {
        let id = read32(bus, device, function, 0);
        if id as u16 == 0xffff || (read32(bus, device, function, 0x0c) >> 16) & 0x7f != 1 {
            return None;
        }
        let buses = read32(bus, device, function, 0x18);
        Some(((buses >> 8) as u8, (buses >> 16) as u8))
    }
}

/// Writes the CPU caches back over `[p, p + len)` for a VT-d unit that does not snoop them.
fn clflush_range(p: *const u8, len: usize) {
    let start = p.expose_provenance() & !63;
    let end = p.expose_provenance() + len;
    let mut a = start;
    while a < end {
        // SAFETY: `clflush` of an address of memory this guest owns (a table page, identity
        // mapped); it writes the line back and has no other effect.
        unsafe { core::arch::asm!("clflush [{}]", in(reg) a, options(nostack, preserves_flags)) };
        a += 64;
    }
    // SAFETY: a fence; orders the flushes before the register write that follows.
    unsafe { core::arch::asm!("mfence", options(nostack, preserves_flags)) };
}

/// A whole ACPI table by signature, read through the firmware-described ranges.
fn acpi_table(sig: &'static [u8; 4]) -> Result<Vec<u8>, acpi::AcpiError> {
    let rsdp = super::rsdp().ok_or(acpi::AcpiError::NoRsdp)?;
    let mut buf = alloc::vec![0u8; 64 << 10];
    let n = acpi::find_table(rsdp, super::acpi_read_boot, sig, &mut buf)?.len();
    buf.truncate(n);
    Ok(buf)
}

fn settings(opts: &Options) -> Settings {
    Settings {
        timeout_us: u64::from(opts.virtio_timeout_ms) * 1000,
        packed: opts.virtio_packed,
        indirect: opts.virtio_indirect,
        event_idx: opts.virtio_event_idx,
    }
}

/// One domain per virtio PCI function behind the machine's IOMMU (VT-d when the DMAR names a
/// unit, else a virtio-iommu), in PCI order. `pool` (its path, phys, size) on a secure guest:
/// the domains map only the pool, and the IOMMU's own tables and queues live in it. `ram`: the
/// RAM ranges, which a static domain (`sg.iommu.map=static`) maps at their own addresses.
#[inline(never)]
pub fn iommu_domains(
    tree: &DeviceTree,
    opts: &Options,
    ram: &'static [(u64, u64)],
    direct: &'static dyn Dma,
    pool: Option<(&'static dyn Dma, u64, u64)>,
) -> Vec<LazyDomain<'static>> {
    let own_dma = pool.map_or(direct, |p| p.0);
    let target = || match pool {
        Some((bounce, phys, size)) => Target::Pool { bounce, phys, size },
        None => Target::Direct { ram, direct },
    };
    let clock = TickClock::new(super::now_ticks, super::tick_hz());
    let virtio: Vec<&PciFunction> = tree
        .pci_functions
        .iter()
        .filter(|f| f.is_virtio())
        .collect();
    let mut domains = Vec::new();

    let dmar_table = acpi_table(b"DMAR");
    if let Ok(table) = dmar_table {
        let parsed = dmar::parse(&table);
        let (unit, units) = match parsed {
            Ok(d) => {
                let first = d.units.iter().position(|u| u.segment == 0);
                (first.map(|i| (i, d.units[i].register_base)), Some(d))
            }
            Err(e) => {
                crate::report_error("iommu", &format!("DMAR: {e}"));
                (None, None)
            }
        };
        let (Some((index, base)), Some(d)) = (unit, units) else {
            return domains;
        };
        // Functions behind the unit, with their RMRRs.
        let behind: Vec<(u16, Vec<(u64, u64)>)> = virtio
            .iter()
            .filter(|f| d.unit_for(&mut ConfigTopology, f.bus, f.device, f.function) == Some(index))
            .map(|f| {
                (
                    bdf(f),
                    d.rmrrs_for(&mut ConfigTopology, f.bus, f.device, f.function),
                )
            })
            .collect();
        let unit = vtd_unit(base, clock, opts, own_dma);
        let state_unit = match unit {
            Ok(vtd) => {
                for (sid, rmrrs) in &behind {
                    let setup = VtdSetup {
                        vtd,
                        sid: *sid,
                        target: target(),
                        rmrrs: rmrrs.clone(),
                        map: opts.iommu_map,
                        debug: opts.debug_iommu,
                    };
                    domains.push(LazyDomain::new(bdf_str(*sid), Box::new(setup)));
                }
                Unit::Vtd { vtd, base }
            }
            Err((e, text)) => {
                for (sid, _) in &behind {
                    domains.push(LazyDomain::failed(bdf_str(*sid), e));
                }
                crate::report_error("iommu", &format!("VT-d at {base:#x}: {text}"));
                Unit::Failed {
                    kind: "vt-d",
                    location: format!("{base:#x}"),
                    error: text,
                }
            }
        };
        STATE.call_once(|| State {
            unit: state_unit,
            source: "dmar",
            endpoints: behind.iter().map(|(s, _)| (*s, u32::from(*s))).collect(),
            own: None,
        });
        return domains;
    }

    // No VT-d: a virtio-iommu on PCI?
    let Some(me) = virtio
        .iter()
        .find(|f| f.device_id == VIRTIO_IOMMU_ID)
        .copied()
    else {
        return domains;
    };
    let own = bdf(me);
    let at = PciAddress::new(me.bus, me.device, me.function);
    // Which endpoints it translates: the VIOT when it names this IOMMU, else every other PCI
    // function, with its requester ID as endpoint ID (what QEMU uses).
    let viot = acpi_table(b"VIOT").ok().and_then(|t| viot::parse(&t).ok());
    let node = viot.as_ref().and_then(|v| Some((v, v.pci_iommu(own)?)));
    let (source, endpoints): (&'static str, Vec<(u16, u32)>) = match node {
        Some((v, n)) => (
            "viot",
            virtio
                .iter()
                .filter(|f| bdf(f) != own)
                .filter_map(|f| Some((bdf(f), v.endpoint_id(n, bdf(f))?)))
                .collect(),
        ),
        None => (
            "all-pci",
            virtio
                .iter()
                .filter(|f| bdf(f) != own)
                .map(|f| (bdf(f), u32::from(bdf(f))))
                .collect(),
        ),
    };
    let s = settings(opts);
    let probed = pci::probe(&mut PortConfig, &mut X86Bars, at, &ProbeOptions::default())
        .map_err(|e| format!("{e}"))
        .and_then(|t| {
            Viommu::new(t.into_transport(), clock, &s, own_dma).map_err(|(_, e, _)| format!("{e}"))
        });
    let unit = match probed {
        Ok(driver) => {
            let negotiation = *driver.negotiation();
            let config = driver.config;
            let io: &'static ViommuShared =
                Box::leak(Box::new(spin::Mutex::new(ViommuIommu::new(driver))));
            for &(b, endpoint) in &endpoints {
                let setup = ViommuSetup {
                    iommu: io,
                    endpoint,
                    target: target(),
                    map: opts.iommu_map,
                    debug: opts.debug_iommu,
                };
                domains.push(LazyDomain::new(bdf_str(b), Box::new(setup)));
            }
            Unit::Viommu {
                io,
                at,
                negotiation,
                config,
            }
        }
        Err(text) => {
            for &(b, _) in &endpoints {
                domains.push(LazyDomain::failed(
                    bdf_str(b),
                    DmaError::InvalidRequest("the virtio-iommu could not be set up"),
                ));
            }
            crate::report_error("iommu", &format!("virtio-iommu at {at}: {text}"));
            Unit::Failed {
                kind: "virtio-iommu",
                location: format!("{at}"),
                error: text,
            }
        }
    };
    STATE.call_once(|| State {
        unit,
        source,
        endpoints,
        own: Some(own),
    });
    domains
}

/// The VT-d unit at `base`, translating with an empty root table.
#[inline(never)]
fn vtd_unit(
    base: u64,
    clock: Clock,
    opts: &Options,
    dma: &'static dyn Dma,
) -> Result<&'static VtdShared, (DmaError, String)> {
    let fail = |e: secure_guest::dma::vtd::VtdError| (DmaError::from(e), format!("{e}"));
    paging::ensure_mapped(base, VTD_REGS)
        .map_err(|why| (DmaError::InvalidRequest(why), String::from(why)))?;
    let (b, len) = (usize::try_from(base), usize::try_from(VTD_REGS));
    let (Ok(b), Ok(len)) = (b, len) else {
        let why = "register base beyond the address space";
        return Err((DmaError::InvalidRequest(why), String::from(why)));
    };
    // SAFETY: the DMAR names these 4 KiB as the unit's registers; identity-mapped (just
    // checked), uncached (the PCI hole, by the firmware's MTRRs), and nothing else maps them.
    let regs = unsafe { MmioWindow::new(b, len) };
    let timeout = u64::from(opts.virtio_timeout_ms) * 1000;
    let mut unit = VtdUnit::probe(regs, clock, timeout, dma, clflush_range).map_err(fail)?;
    // The flush is only needed when the unit's walks do not snoop (QEMU: ECAP.C = 0).
    if unit.caps.coherent() {
        unit.set_flush(secure_guest::dma::vtd::no_flush);
    }
    unit.enable().map_err(fail)?;
    Ok(Box::leak(Box::new(spin::Mutex::new(Vtd::new(unit)))))
}

/// After every device ran: the `iommu_unit` record, then the teardown (tables and queues given
/// back; on a secure guest, to the pool).
#[inline(never)]
pub fn iommu_finish() {
    let Some(state) = STATE.get() else {
        return;
    };
    let endpoints = |j: &mut secure_guest::report::Json<'_>| {
        j.begin_array();
        for &(b, id) in &state.endpoints {
            j.begin_object();
            j.key("bdf");
            j.str(&bdf_str(b));
            j.key("endpoint");
            j.u64(id.into());
            j.end_object();
        }
        j.end_array();
    };
    let r = crate::record("iommu_unit");
    match &state.unit {
        Unit::Failed {
            kind,
            location,
            error,
        } => {
            r.str("kind", kind)
                .str("location", location)
                .str("source", state.source)
                .json("endpoints", endpoints)
                .str("result", "error")
                .str("error", error)
                .end();
        }
        Unit::Vtd { vtd, base } => {
            let mut v = vtd.lock();
            v.unit.collect_faults();
            let domains = v.domains.len() as u64;
            let teardown = v.teardown();
            let u = &v.unit;
            let c = u.counts;
            let mut rec = r
                .str("kind", "vt-d")
                .str("location", &format!("{base:#x}"))
                .str("source", state.source)
                .json("endpoints", endpoints)
                .str("result", "ok")
                .hex("version", u.version.into())
                .hex("cap", u.caps.cap)
                .hex("ecap", u.caps.ecap)
                .u64("levels", u.agaw.levels.into())
                .u64("aw_bits", u.agaw.bits.into())
                .str("invalidation", "register")
                .u64_object(
                    "commands",
                    &[
                        ("context", c.context_invalidations),
                        ("iotlb_global", c.iotlb_global),
                        ("iotlb_domain", c.iotlb_domain),
                        ("iotlb_page", c.iotlb_page),
                        ("iotlb_page_pages", c.iotlb_page_pages),
                        ("write_buffer", c.write_buffer_flushes),
                    ],
                )
                .u64("commands_total", c.commands())
                .u64("domains", domains)
                .u64("tables_freed", v.freed_pages)
                .u64("faults", c.faults - u.faults_before)
                .u64("faults_before", u.faults_before)
                .json("fault_list", |j| {
                    j.begin_array();
                    for f in &u.faults {
                        j.begin_object();
                        j.key("sid");
                        j.str(&bdf_str(f.sid));
                        j.key("reason");
                        j.u64(f.reason.into());
                        j.key("reason_text");
                        j.str(f.reason_str());
                        j.key("address");
                        j.hex(f.address);
                        j.key("access");
                        j.str(if f.read { "read" } else { "write" });
                        j.end_object();
                    }
                    j.end_array();
                });
            rec = match &teardown {
                Ok(()) => rec.str("teardown", "ok"),
                Err(e) => rec.str("teardown", &format!("{e}")),
            };
            rec.end();
            drop(v);
            if let Err(e) = teardown {
                crate::report_error("iommu", &format!("VT-d teardown: {e}"));
            }
        }
        Unit::Viommu {
            io,
            at,
            negotiation,
            config,
        } => {
            let mut g = io.lock();
            if let Some(d) = g.driver.as_mut() {
                d.poll_events();
            }
            let domains = g.attached.len() as u64;
            let teardown = g.teardown();
            let (counts, faults, last) = g.finished.clone().unwrap_or_default();
            drop(g);
            let mut rec = r
                .str("kind", "virtio-iommu")
                .str("location", &format!("{at}"))
                .str("source", state.source)
                .json("endpoints", endpoints)
                .str("result", "ok")
                .hex("features_offered", negotiation.offered)
                .hex("features_accepted", negotiation.accepted)
                .hex("page_size_mask", config.page_size_mask)
                .json("input_range", |j| {
                    j.begin_array();
                    j.hex(config.input_start);
                    j.hex(config.input_end);
                    j.end_array();
                })
                .json("domain_range", |j| {
                    j.begin_array();
                    j.u64(config.domain_start.into());
                    j.u64(config.domain_end.into());
                    j.end_array();
                })
                .u64("probe_size", config.probe_size.into())
                .u64("bypass_found", config.bypass_found.into())
                .u64("bypass", config.bypass.into())
                .u64_object(
                    "requests",
                    &[
                        ("attach", counts.attach),
                        ("detach", counts.detach),
                        ("map", counts.map),
                        ("unmap", counts.unmap),
                        ("probe", counts.probe),
                        ("failed", counts.failed),
                    ],
                )
                .u64("requests_total", counts.requests())
                .u64("notifications", counts.notifications)
                .u64("domains", domains)
                .u64("faults", counts.faults)
                .json("fault_list", |j| {
                    j.begin_array();
                    for f in &faults {
                        j.begin_object();
                        j.key("endpoint");
                        j.u64(f.endpoint.into());
                        j.key("reason");
                        j.u64(f.reason.into());
                        j.key("reason_text");
                        j.str(f.reason_str());
                        j.key("address");
                        j.hex(f.address);
                        j.key("flags");
                        j.hex(f.flags.into());
                        j.end_object();
                    }
                    j.end_array();
                });
            if let Some(e) = last {
                rec = rec.str("first_error", &format!("{e}"));
            }
            rec = match &teardown {
                Ok(()) => rec.str("teardown", "ok"),
                Err(e) => rec.str("teardown", &format!("{e}")),
            };
            rec.end();
            if let Err(e) = teardown {
                crate::report_error("iommu", &format!("virtio-iommu teardown: {e}"));
            }
        }
    }
}
