//! QEMU trace events for IOMMU DMA: which events to enable for each IOMMU model, and an exact
//! parser for the lines QEMU's `log` trace backend writes (the backend the installed QEMU 10.0 is
//! built with; `-trace enable=PATTERN -D FILE`, see [`crate::config::QemuConfig::trace_events`]).
//!
//! A line is `NAME ARGS`, or `PID@SECONDS.MICROS:NAME ARGS` when QEMU runs with
//! `-msg timestamp=on`; ARGS is the event's format string from QEMU's `trace-events` files
//! (hw/ppc, hw/virtio, hw/i386), printed with printf. [`FORMATS`] holds those format strings as
//! the QEMU binary has them (`PRIx64` already expanded to `lx`), one per modelled event, and
//! [`parse_line`] matches a line against them exactly: every literal character, every number in
//! its printf conversion. `tests/trace.rs` checks each of them against the strings in the
//! installed binaries.
//!
//! What [`TraceLog::parse`] makes of a line:
//! - a modelled event whose arguments match its format: an [`Event`];
//! - a modelled event whose arguments do not: *malformed*, counted and kept (line number and
//!   text). The IOMMU oracle ([`crate::iommu`]) fails on any: a model that cannot read an event
//!   cannot vouch for what came after it;
//! - any other trace event (a name, then a space or the end): *other*, counted per name
//!   (`virtio_iommu_get_config`, `vtd_reg_read`, ...);
//! - anything else (a `-d` log line, a partial last line): *unknown*, counted and kept.
//!
//! Nothing in a trace can make the parser panic; it is tested with every truncation and with
//! seeded mutations of real lines.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// The IOMMU models the harness traces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IommuKind {
    /// pseries: the PHB's TCE tables (H_PUT_TCE, H_PUT_TCE_INDIRECT, H_STUFF_TCE; DDW through
    /// RTAS).
    SpaprTce,
    /// `-device virtio-iommu-pci` (x86 q35).
    VirtioIommu,
    /// `-device intel-iommu` (x86 q35).
    IntelVtd,
}

impl IommuKind {
    pub const ALL: [IommuKind; 3] = [
        IommuKind::SpaprTce,
        IommuKind::VirtioIommu,
        IommuKind::IntelVtd,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IommuKind::SpaprTce => "spapr-tce",
            IommuKind::VirtioIommu => "virtio-iommu",
            IommuKind::IntelVtd => "intel-vtd",
        }
    }

    /// The `-trace enable=` patterns that give the oracle everything it models for this IOMMU.
    pub fn trace_patterns(self) -> &'static [&'static str] {
        match self {
            IommuKind::SpaprTce => &["spapr_iommu_*"],
            IommuKind::VirtioIommu => &["virtio_iommu_*"],
            // Not vtd_*: register reads, interrupt remapping and queued-invalidation plumbing
            // would drown the DMA events.
            IommuKind::IntelVtd => &[
                "vtd_dmar_*",
                "vtd_translate_pt",
                "vtd_switch_address_space",
                "vtd_fault_disabled",
                "vtd_inv_desc_iotlb_*",
                "vtd_iotlb_page_*",
                "vtd_reset_exit",
            ],
        }
    }
}

impl fmt::Display for IommuKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for IommuKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        IommuKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                anyhow::anyhow!("unknown IOMMU {s:?} (spapr-tce, virtio-iommu, intel-vtd)")
            })
    }
}

/// The trace patterns for a list of IOMMUs, as [`crate::QemuConfig::trace_events`] takes them.
pub fn patterns_for(kinds: &[IommuKind]) -> Vec<String> {
    kinds
        .iter()
        .flat_map(|k| k.trace_patterns())
        .map(|p| p.to_string())
        .collect()
}

/// A PCI function as QEMU's trace events print it (`00:02.0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bdf {
    pub bus: u8,
    pub slot: u8,
    pub func: u8,
}

impl Bdf {
    /// The 16-bit requester id (bus << 8 | slot << 3 | func) the IOMMUs key devices by.
    pub fn sid(self) -> u16 {
        (u16::from(self.bus) << 8) | (u16::from(self.slot & 0x1f) << 3) | u16::from(self.func & 7)
    }

    pub fn from_sid(sid: u16) -> Bdf {
        Bdf {
            bus: (sid >> 8) as u8,
            slot: ((sid >> 3) & 0x1f) as u8,
            func: (sid & 7) as u8,
        }
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{:x}", self.bus, self.slot, self.func)
    }
}

/// One modelled trace event. Field names follow QEMU's; numbers are as printed (a `%d` of a
/// `uint32_t` that printed negative is taken back modulo 2^32).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `spapr_iommu_put` / `spapr_iommu_pci_put`: H_PUT_TCE. `ioba` is the bus address, already
    /// masked to the table's page size; `ret` the hcall status (0 = H_SUCCESS).
    TcePut {
        liobn: u64,
        ioba: u64,
        tce: u64,
        ret: i64,
    },
    /// `spapr_iommu_get` / `spapr_iommu_pci_get`: H_GET_TCE.
    TceGet {
        liobn: u64,
        ioba: u64,
        ret: i64,
        tce: u64,
    },
    /// `spapr_iommu_indirect` / `spapr_iommu_pci_indirect`: H_PUT_TCE_INDIRECT. QEMU traces only
    /// the last entry it wrote (or the one that failed): `last_index` (printed as `iobaN`, an
    /// index, not an address) and its TCE `last_tce`; the entries before it are in guest memory
    /// at `tce_list`, which the trace does not show.
    TceIndirect {
        liobn: u64,
        ioba: u64,
        tce_list: u64,
        last_index: u64,
        last_tce: u64,
        ret: i64,
    },
    /// `spapr_iommu_stuff` / `spapr_iommu_pci_stuff`: H_STUFF_TCE. QEMU traces `ioba` *after*
    /// its loop: the first page past the range on success (start = `ioba_end - npages * page`).
    TceStuff {
        liobn: u64,
        ioba_end: u64,
        tce_value: u64,
        npages: i64,
        ret: i64,
    },
    /// `spapr_iommu_xlate`: one device access through a TCE table. `addr` is relative to the
    /// window (bus address minus the window's start), `phys` the page the entry points to, `perm`
    /// the entry's access bits (0 none, 1 read, 2 write, 3 both), `mask` the page mask
    /// (`0xffffffff` when `addr` is outside the window).
    TceXlate {
        liobn: u64,
        addr: u64,
        phys: u64,
        perm: u64,
        mask: u64,
    },
    /// `spapr_iommu_new_table`: a window's table was (re)allocated, empty.
    TceNewTable { liobn: u64, fd: i64 },
    /// `spapr_iommu_pre_save` / `spapr_iommu_post_load`: migration, not modelled.
    TceMigration,
    /// `spapr_iommu_ddw_query`: ibm,query-pe-dma-window.
    DdwQuery {
        buid: u64,
        config_addr: u64,
        windows_available: u64,
        max_window_size: u64,
        page_size_mask: u64,
    },
    /// `spapr_iommu_ddw_create`: ibm,create-pe-dma-window made window `liobn` at bus address
    /// `start` with pages of `page_size`.
    DdwCreate {
        buid: u64,
        config_addr: u64,
        page_size: u64,
        window_size: u64,
        start: u64,
        liobn: u64,
    },
    /// `spapr_iommu_ddw_remove`: ibm,remove-pe-dma-window.
    DdwRemove { liobn: u64 },
    /// `spapr_iommu_ddw_reset`: ibm,reset-pe-dma-windows (the PHB is back to its default window).
    DdwReset { buid: u64, config_addr: u64 },

    /// `virtio_iommu_attach`: an ATTACH request (traced before it is checked).
    ViommuAttach { domain: u32, endpoint: u32 },
    /// `virtio_iommu_detach`: a DETACH request (traced before it is checked).
    ViommuDetach { domain: u32, endpoint: u32 },
    /// `virtio_iommu_detach_endpoint_from_domain`: the endpoint left the domain (done).
    ViommuEndpointDetached { domain: u32, endpoint: u32 },
    /// `virtio_iommu_map`: a mapping was added (traced after QEMU accepted it). `virt_end` is
    /// inclusive.
    ViommuMap {
        domain: u32,
        virt_start: u64,
        virt_end: u64,
        phys_start: u64,
        flags: u32,
    },
    /// `virtio_iommu_unmap`: an UNMAP request (before it is checked).
    ViommuUnmap {
        domain: u32,
        virt_start: u64,
        virt_end: u64,
    },
    /// `virtio_iommu_unmap_done`: one mapping was removed.
    ViommuUnmapDone {
        domain: u32,
        virt_start: u64,
        virt_end: u64,
    },
    /// `virtio_iommu_translate`: a device access to `addr` through endpoint `sid` (`flag`: 1 read,
    /// 2 write). Followed by `virtio_iommu_translate_out` when it was translated.
    ViommuTranslate {
        mr: String,
        sid: u32,
        addr: u64,
        flag: u32,
    },
    /// `virtio_iommu_translate_out`: the access to `addr` went to `phys`.
    ViommuTranslateOut { addr: u64, phys: u64, sid: u32 },
    /// `virtio_iommu_report_fault`: a fault the device put on its event queue.
    ViommuFault {
        reason: u32,
        flags: u32,
        endpoint: u32,
        address: u64,
    },
    /// `virtio_iommu_get_domain`.
    ViommuDomainAlloc { domain: u32 },
    /// `virtio_iommu_put_domain`: the domain and its mappings are gone.
    ViommuDomainFree { domain: u32 },
    /// `virtio_iommu_switch_address_space`: the device's DMA goes through the IOMMU (`enabled`) or
    /// bypasses it.
    ViommuSwitch { device: Bdf, enabled: bool },
    /// `virtio_iommu_set_config`: the driver set the global `bypass`.
    ViommuSetBypass { bypass: u64 },
    /// `virtio_iommu_device_reset_exit` / `virtio_iommu_system_reset`.
    ViommuReset,

    /// `vtd_dmar_translate`: a device access through the remapping tables (`iova` page-aligned).
    VtdTranslate {
        device: Bdf,
        iova: u64,
        gpa: u64,
        mask: u64,
    },
    /// `vtd_dmar_fault`: a recorded DMA remapping fault.
    VtdFault {
        sid: u64,
        fault: i64,
        addr: u64,
        write: bool,
    },
    /// `vtd_translate_pt`: a pass-through access (not translated).
    VtdPassthrough { sid: u64, iova: u64 },
    /// `vtd_dmar_enable`: the guest turned DMA remapping on or off.
    VtdEnable { enabled: bool },
    /// `vtd_switch_address_space`.
    VtdSwitch { device: Bdf, enabled: bool },
    /// `vtd_fault_disabled`: a fault not recorded (the context entry's FPD bit).
    VtdFaultDisabled,
    /// `vtd_inv_desc_iotlb_pages` / `_domain` / `_global`: IOTLB invalidations (`domain` and
    /// `addr` `None` for wider ones).
    VtdInvalidate {
        domain: Option<u64>,
        addr: Option<u64>,
        mask: Option<u64>,
    },
    /// `vtd_iotlb_page_update` (a page walk cached) / `vtd_iotlb_page_hit`.
    VtdIotlb {
        hit: bool,
        sid: u64,
        iova: u64,
        slpte: u64,
        domain: u64,
    },
    /// `vtd_reset_exit`.
    VtdReset,
}

/// A printf conversion's value.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Val {
    U(u64),
    I(i64),
    S(String),
}

impl Val {
    fn u(&self) -> u64 {
        match self {
            Val::U(v) => *v,
            Val::I(v) => *v as u64,
            Val::S(_) => 0,
        }
    }

    fn i(&self) -> i64 {
        match self {
            Val::I(v) => *v,
            Val::U(v) => *v as i64,
            Val::S(_) => 0,
        }
    }

    /// A `uint32_t` printed with `%d`: negative values are its top half.
    fn u32(&self) -> u32 {
        self.i() as u32
    }

    fn s(&self) -> String {
        match self {
            Val::S(s) => s.clone(),
            v => v.u().to_string(),
        }
    }
}

/// One modelled event: its name, the argument format the QEMU binary prints, and how the values
/// make the [`Event`].
pub struct Format {
    pub name: &'static str,
    pub format: &'static str,
    build: fn(&[Val]) -> Event,
}

fn bdf(v: &[Val]) -> Bdf {
    Bdf {
        bus: v[0].u() as u8,
        slot: v[1].u() as u8,
        func: v[2].u() as u8,
    }
}

const PUT: &str = "liobn=0x%lx ioba=0x%lx tce=0x%lx ret=%ld";
const GET: &str = "liobn=0x%lx ioba=0x%lx ret=%ld tce=0x%lx";
const INDIRECT: &str = "liobn=0x%lx ioba=0x%lx tcelist=0x%lx iobaN=0x%lx tceN=0x%lx ret=%ld";
const STUFF: &str = "liobn=0x%lx ioba=0x%lx tcevalue=0x%lx npages=%ld ret=%ld";
const SWITCH: &str = "Device %02x:%02x.%x switching address space (iommu enabled=%d)";
const VIOMMU_EP: &str = "domain=%d endpoint=%d";
const VIOMMU_RANGE: &str = "domain=%d virt_start=0x%lx virt_end=0x%lx";

fn put(v: &[Val]) -> Event {
    Event::TcePut {
        liobn: v[0].u(),
        ioba: v[1].u(),
        tce: v[2].u(),
        ret: v[3].i(),
    }
}

fn get(v: &[Val]) -> Event {
    Event::TceGet {
        liobn: v[0].u(),
        ioba: v[1].u(),
        ret: v[2].i(),
        tce: v[3].u(),
    }
}

fn indirect(v: &[Val]) -> Event {
    Event::TceIndirect {
        liobn: v[0].u(),
        ioba: v[1].u(),
        tce_list: v[2].u(),
        last_index: v[3].u(),
        last_tce: v[4].u(),
        ret: v[5].i(),
    }
}

fn stuff(v: &[Val]) -> Event {
    Event::TceStuff {
        liobn: v[0].u(),
        ioba_end: v[1].u(),
        tce_value: v[2].u(),
        npages: v[3].i(),
        ret: v[4].i(),
    }
}

fn viommu_switch(v: &[Val]) -> Event {
    Event::ViommuSwitch {
        device: bdf(v),
        enabled: v[3].i() != 0,
    }
}

fn vtd_switch(v: &[Val]) -> Event {
    Event::VtdSwitch {
        device: bdf(v),
        enabled: v[3].i() != 0,
    }
}

fn iotlb(hit: bool, v: &[Val]) -> Event {
    Event::VtdIotlb {
        hit,
        sid: v[0].u(),
        iova: v[1].u(),
        slpte: v[2].u(),
        domain: v[3].u(),
    }
}

/// Every modelled event, with its format exactly as QEMU 10.0's binary prints it.
pub const FORMATS: &[Format] = &[
    Format {
        name: "spapr_iommu_put",
        format: PUT,
        build: put,
    },
    Format {
        name: "spapr_iommu_pci_put",
        format: PUT,
        build: put,
    },
    Format {
        name: "spapr_iommu_get",
        format: GET,
        build: get,
    },
    Format {
        name: "spapr_iommu_pci_get",
        format: GET,
        build: get,
    },
    Format {
        name: "spapr_iommu_indirect",
        format: INDIRECT,
        build: indirect,
    },
    Format {
        name: "spapr_iommu_pci_indirect",
        format: INDIRECT,
        build: indirect,
    },
    Format {
        name: "spapr_iommu_stuff",
        format: STUFF,
        build: stuff,
    },
    Format {
        name: "spapr_iommu_pci_stuff",
        format: STUFF,
        build: stuff,
    },
    Format {
        name: "spapr_iommu_xlate",
        format: "liobn=0x%lx 0x%lx -> 0x%lx perm=%u mask=0x%x",
        build: |v| Event::TceXlate {
            liobn: v[0].u(),
            addr: v[1].u(),
            phys: v[2].u(),
            perm: v[3].u(),
            mask: v[4].u(),
        },
    },
    Format {
        name: "spapr_iommu_new_table",
        format: "liobn=0x%lx table=%p fd=%d",
        build: |v| Event::TceNewTable {
            liobn: v[0].u(),
            fd: v[2].i(),
        },
    },
    Format {
        name: "spapr_iommu_pre_save",
        format: "liobn=%lx %x bus_offset=0x%lx ps=%u",
        build: |_| Event::TceMigration,
    },
    Format {
        name: "spapr_iommu_post_load",
        format: "liobn=%lx %x => 0x%x bus_offset=0x%lx ps=%u",
        build: |_| Event::TceMigration,
    },
    Format {
        name: "spapr_iommu_ddw_query",
        format: "buid=0x%lx addr=0x%x, %u windows available, max window size=0x%lx, mask=0x%x",
        build: |v| Event::DdwQuery {
            buid: v[0].u(),
            config_addr: v[1].u(),
            windows_available: v[2].u(),
            max_window_size: v[3].u(),
            page_size_mask: v[4].u(),
        },
    },
    Format {
        name: "spapr_iommu_ddw_create",
        format: "buid=0x%lx addr=0x%x, page size=0x%lx, requested=0x%lx, start addr=0x%lx, \
                 liobn=0x%x",
        build: |v| Event::DdwCreate {
            buid: v[0].u(),
            config_addr: v[1].u(),
            page_size: v[2].u(),
            window_size: v[3].u(),
            start: v[4].u(),
            liobn: v[5].u(),
        },
    },
    Format {
        name: "spapr_iommu_ddw_remove",
        format: "liobn=0x%x",
        build: |v| Event::DdwRemove { liobn: v[0].u() },
    },
    Format {
        name: "spapr_iommu_ddw_reset",
        format: "buid=0x%lx addr=0x%x",
        build: |v| Event::DdwReset {
            buid: v[0].u(),
            config_addr: v[1].u(),
        },
    },
    Format {
        name: "virtio_iommu_attach",
        format: VIOMMU_EP,
        build: |v| Event::ViommuAttach {
            domain: v[0].u32(),
            endpoint: v[1].u32(),
        },
    },
    Format {
        name: "virtio_iommu_detach",
        format: VIOMMU_EP,
        build: |v| Event::ViommuDetach {
            domain: v[0].u32(),
            endpoint: v[1].u32(),
        },
    },
    Format {
        name: "virtio_iommu_detach_endpoint_from_domain",
        format: VIOMMU_EP,
        build: |v| Event::ViommuEndpointDetached {
            domain: v[0].u32(),
            endpoint: v[1].u32(),
        },
    },
    Format {
        name: "virtio_iommu_map",
        format: "domain=%d virt_start=0x%lx virt_end=0x%lx phys_start=0x%lx flags=%d",
        build: |v| Event::ViommuMap {
            domain: v[0].u32(),
            virt_start: v[1].u(),
            virt_end: v[2].u(),
            phys_start: v[3].u(),
            flags: v[4].u32(),
        },
    },
    Format {
        name: "virtio_iommu_unmap",
        format: VIOMMU_RANGE,
        build: |v| Event::ViommuUnmap {
            domain: v[0].u32(),
            virt_start: v[1].u(),
            virt_end: v[2].u(),
        },
    },
    Format {
        name: "virtio_iommu_unmap_done",
        format: VIOMMU_RANGE,
        build: |v| Event::ViommuUnmapDone {
            domain: v[0].u32(),
            virt_start: v[1].u(),
            virt_end: v[2].u(),
        },
    },
    Format {
        name: "virtio_iommu_translate",
        format: "mr=%s rid=%d addr=0x%lx flag=%d",
        build: |v| Event::ViommuTranslate {
            mr: v[0].s(),
            sid: v[1].u32(),
            addr: v[2].u(),
            flag: v[3].u32(),
        },
    },
    Format {
        name: "virtio_iommu_translate_out",
        format: "0x%lx -> 0x%lx for sid=%d",
        build: |v| Event::ViommuTranslateOut {
            addr: v[0].u(),
            phys: v[1].u(),
            sid: v[2].u32(),
        },
    },
    Format {
        name: "virtio_iommu_report_fault",
        format: "FAULT reason=%d flags=%d endpoint=%d address =0x%lx",
        build: |v| Event::ViommuFault {
            reason: v[0].u32(),
            flags: v[1].u32(),
            endpoint: v[2].u32(),
            address: v[3].u(),
        },
    },
    Format {
        name: "virtio_iommu_get_domain",
        format: "Alloc domain=%d",
        build: |v| Event::ViommuDomainAlloc { domain: v[0].u32() },
    },
    Format {
        name: "virtio_iommu_put_domain",
        format: "Free domain=%d",
        build: |v| Event::ViommuDomainFree { domain: v[0].u32() },
    },
    Format {
        name: "virtio_iommu_switch_address_space",
        format: SWITCH,
        build: viommu_switch,
    },
    Format {
        name: "virtio_iommu_set_config",
        format: "bypass=0x%x",
        build: |v| Event::ViommuSetBypass { bypass: v[0].u() },
    },
    Format {
        name: "virtio_iommu_device_reset_exit",
        format: "reset!",
        build: |_| Event::ViommuReset,
    },
    Format {
        name: "virtio_iommu_system_reset",
        format: "system reset!",
        build: |_| Event::ViommuReset,
    },
    Format {
        name: "vtd_dmar_translate",
        format: "dev %02x:%02x.%02x iova 0x%lx -> gpa 0x%lx mask 0x%lx",
        build: |v| Event::VtdTranslate {
            device: bdf(v),
            iova: v[3].u(),
            gpa: v[4].u(),
            mask: v[5].u(),
        },
    },
    Format {
        name: "vtd_dmar_fault",
        format: "sid 0x%x fault %d addr 0x%lx write %d",
        build: |v| Event::VtdFault {
            sid: v[0].u(),
            fault: v[1].i(),
            addr: v[2].u(),
            write: v[3].i() != 0,
        },
    },
    Format {
        name: "vtd_translate_pt",
        format: "source id 0x%x, iova 0x%lx",
        build: |v| Event::VtdPassthrough {
            sid: v[0].u(),
            iova: v[1].u(),
        },
    },
    Format {
        name: "vtd_dmar_enable",
        format: "enable %d",
        build: |v| Event::VtdEnable {
            enabled: v[0].i() != 0,
        },
    },
    Format {
        name: "vtd_switch_address_space",
        format: SWITCH,
        build: vtd_switch,
    },
    Format {
        name: "vtd_fault_disabled",
        format: "Fault processing disabled for context entry",
        build: |_| Event::VtdFaultDisabled,
    },
    Format {
        name: "vtd_inv_desc_iotlb_pages",
        format: "iotlb invalidate domain 0x%x addr 0x%lx mask 0x%x",
        build: |v| Event::VtdInvalidate {
            domain: Some(v[0].u()),
            addr: Some(v[1].u()),
            mask: Some(v[2].u()),
        },
    },
    Format {
        name: "vtd_inv_desc_iotlb_domain",
        format: "iotlb invalidate whole domain 0x%x",
        build: |v| Event::VtdInvalidate {
            domain: Some(v[0].u()),
            addr: None,
            mask: None,
        },
    },
    Format {
        name: "vtd_inv_desc_iotlb_global",
        format: "iotlb invalidate global",
        build: |_| Event::VtdInvalidate {
            domain: None,
            addr: None,
            mask: None,
        },
    },
    Format {
        name: "vtd_iotlb_page_update",
        format: "IOTLB page update sid 0x%x iova 0x%lx slpte 0x%lx domain 0x%x",
        build: |v| iotlb(false, v),
    },
    Format {
        name: "vtd_iotlb_page_hit",
        format: "IOTLB page hit sid 0x%x iova 0x%lx slpte 0x%lx domain 0x%x",
        build: |v| iotlb(true, v),
    },
    Format {
        name: "vtd_reset_exit",
        format: "",
        build: |_| Event::VtdReset,
    },
];

/// The modelled event of `name`, if any.
pub fn format_of(name: &str) -> Option<&'static Format> {
    FORMATS.iter().find(|f| f.name == name)
}

/// Matches `args` against a printf `format` (the conversions QEMU's trace formats use: `%lx`,
/// `%x`, `%02x`, `%ld`, `%d`, `%lu`, `%u`, `%p`, `%s`, `%%`), all of `args` and nothing else.
fn scan(format: &str, args: &str) -> Option<Vec<Val>> {
    let f = format.as_bytes();
    let a = args.as_bytes();
    let (mut i, mut j) = (0usize, 0usize);
    let mut out = Vec::new();
    while i < f.len() {
        if f[i] != b'%' {
            if a.get(j) != Some(&f[i]) {
                return None;
            }
            i += 1;
            j += 1;
            continue;
        }
        // A conversion: flags and width digits, length modifiers, then the conversion letter.
        let mut k = i + 1;
        let mut min_width = 0usize;
        while k < f.len() && f[k].is_ascii_digit() {
            min_width = min_width * 10 + usize::from(f[k] - b'0');
            k += 1;
        }
        while k < f.len() && matches!(f[k], b'l' | b'z' | b'h') {
            k += 1;
        }
        let conv = *f.get(k)?;
        i = k + 1;
        let rest = &a[j..];
        let (val, used) = match conv {
            b'%' => {
                if rest.first() != Some(&b'%') {
                    return None;
                }
                j += 1;
                continue;
            }
            b'x' => {
                let n = rest.iter().take_while(|b| b.is_ascii_hexdigit()).count();
                let digits = std::str::from_utf8(&rest[..n]).ok()?;
                if n == 0
                    || n < min_width
                    || n > 16
                    || digits.bytes().any(|b| b.is_ascii_uppercase())
                {
                    return None;
                }
                (Val::U(u64::from_str_radix(digits, 16).ok()?), n)
            }
            b'u' => {
                let n = rest.iter().take_while(|b| b.is_ascii_digit()).count();
                let digits = std::str::from_utf8(&rest[..n]).ok()?;
                (Val::U(digits.parse().ok()?), n)
            }
            b'd' => {
                let sign = usize::from(rest.first() == Some(&b'-'));
                let n = sign
                    + rest[sign..]
                        .iter()
                        .take_while(|b| b.is_ascii_digit())
                        .count();
                let digits = std::str::from_utf8(&rest[..n]).ok()?;
                (Val::I(digits.parse().ok()?), n)
            }
            b'p' => {
                if rest.starts_with(b"(nil)") {
                    (Val::U(0), 5)
                } else {
                    let hex = rest.strip_prefix(b"0x")?;
                    let n = hex.iter().take_while(|b| b.is_ascii_hexdigit()).count();
                    let digits = std::str::from_utf8(&hex[..n]).ok()?;
                    if n == 0 || n > 16 {
                        return None;
                    }
                    (Val::U(u64::from_str_radix(digits, 16).ok()?), n + 2)
                }
            }
            b's' => {
                // Up to the next literal text of the format (to the end when there is none).
                let lit_end = f[i..]
                    .iter()
                    .position(|&b| b == b'%')
                    .map_or(f.len(), |p| i + p);
                let lit = &f[i..lit_end];
                let n = if lit.is_empty() {
                    rest.len()
                } else {
                    rest.windows(lit.len()).position(|w| w == lit)?
                };
                let s = std::str::from_utf8(&rest[..n]).ok()?;
                (Val::S(s.to_string()), n)
            }
            _ => return None,
        };
        out.push(val);
        j += used;
    }
    (j == a.len()).then_some(out)
}

/// Where and when a line was written, when QEMU prefixes it (`-msg timestamp=on`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// QEMU's thread id.
    pub thread: u64,
    /// Wall-clock microseconds since the epoch.
    pub micros: u64,
}

/// What one line is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    Event {
        name: &'static str,
        stamp: Option<Stamp>,
        event: Event,
    },
    /// A modelled event whose arguments do not match its format.
    Malformed { name: &'static str },
    /// Another trace event (not modelled).
    Other { name: String },
    /// Not a trace event line.
    Unknown,
}

/// Splits the `log` backend's optional `PID@SECONDS.MICROS:` prefix off.
fn split_stamp(line: &str) -> (Option<Stamp>, &str) {
    let parse = || -> Option<(Stamp, &str)> {
        let (pid, rest) = line.split_once('@')?;
        let (time, rest) = rest.split_once(':')?;
        let (secs, micros) = time.split_once('.')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(pid) || !digits(secs) || micros.len() != 6 || !digits(micros) {
            return None;
        }
        let micros = secs
            .parse::<u64>()
            .ok()?
            .checked_mul(1_000_000)?
            .checked_add(micros.parse::<u64>().ok()?)?;
        Some((
            Stamp {
                thread: pid.parse().ok()?,
                micros,
            },
            rest,
        ))
    };
    match parse() {
        Some((s, rest)) => (Some(s), rest),
        None => (None, line),
    }
}

/// Classifies one line of the trace log (without its line break).
pub fn parse_line(line: &str) -> Line {
    let (stamp, body) = split_stamp(line);
    let (name, args) = match body.split_once(' ') {
        Some((n, a)) => (n, Some(a)),
        None => (body, None),
    };
    // QEMU's trace event names are lowercase identifiers with at least one `_` (subsystem
    // prefix); that keeps ordinary words of other log lines out.
    let is_name = name.contains('_')
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !is_name {
        return Line::Unknown;
    }
    let Some(format) = format_of(name) else {
        return Line::Other {
            name: name.to_string(),
        };
    };
    // QEMU writes "NAME " and then the arguments, even when they are empty.
    match args.and_then(|a| scan(format.format, a)) {
        Some(vals) => Line::Event {
            name: format.name,
            stamp,
            event: (format.build)(&vals),
        },
        None => Line::Malformed { name: format.name },
    }
}

/// An event and the 1-based line of the trace log it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Traced {
    pub line: usize,
    pub name: &'static str,
    pub event: Event,
}

/// At most this many malformed and unknown lines are kept (all are counted).
pub const KEPT_LINES: usize = 20;
/// At most this much of a kept line.
const MAX_EXCERPT: usize = 200;

/// A parsed trace log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceLog {
    /// The modelled events, in log order.
    pub events: Vec<Traced>,
    pub lines: usize,
    /// Modelled events whose arguments did not match, and the first [`KEPT_LINES`] of them.
    pub malformed: usize,
    pub malformed_lines: Vec<(usize, String)>,
    /// Lines that are not trace events, and the first [`KEPT_LINES`] of them.
    pub unknown: usize,
    pub unknown_lines: Vec<(usize, String)>,
    /// Trace events that are not modelled, by name.
    pub other: BTreeMap<String, usize>,
    /// Events per name (modelled ones).
    pub counts: BTreeMap<&'static str, usize>,
    /// Why the log could not be read, if it could not.
    pub problem: Option<String>,
}

fn excerpt(s: &str) -> String {
    if s.len() <= MAX_EXCERPT {
        return s.to_string();
    }
    let mut end = MAX_EXCERPT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

impl TraceLog {
    /// Parses a whole log (invalid UTF-8 replaced, both `\n` and `\r\n` ends).
    pub fn parse(bytes: &[u8]) -> TraceLog {
        let text = String::from_utf8_lossy(bytes);
        let mut log = TraceLog::default();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            log.lines = n;
            match parse_line(raw) {
                Line::Event { name, event, .. } => {
                    *log.counts.entry(name).or_default() += 1;
                    log.events.push(Traced {
                        line: n,
                        name,
                        event,
                    });
                }
                Line::Malformed { .. } => {
                    log.malformed += 1;
                    if log.malformed_lines.len() < KEPT_LINES {
                        log.malformed_lines.push((n, excerpt(raw)));
                    }
                }
                Line::Other { name } => *log.other.entry(name).or_default() += 1,
                Line::Unknown => {
                    log.unknown += 1;
                    if log.unknown_lines.len() < KEPT_LINES {
                        log.unknown_lines.push((n, excerpt(raw)));
                    }
                }
            }
        }
        log
    }

    /// Reads and parses `path`. A missing or unreadable file gives an empty log with
    /// [`TraceLog::problem`] set.
    pub fn read(path: &Path) -> TraceLog {
        match std::fs::read(path) {
            Ok(b) => TraceLog::parse(&b),
            Err(e) => TraceLog {
                problem: Some(format!("reading {}: {e}", path.display())),
                ..Default::default()
            },
        }
    }

    /// How many events of `name` the log holds.
    pub fn count(&self, name: &str) -> usize {
        self.counts.get(name).copied().unwrap_or(0) + self.other.get(name).copied().unwrap_or(0)
    }

    /// One line: lines, events, and what could not be read.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} lines, {} modelled events, {} other events, {} malformed, {} unknown",
            self.lines,
            self.events.len(),
            self.other.values().sum::<usize>(),
            self.malformed,
            self.unknown
        );
        if let Some(p) = &self.problem {
            s.push_str(&format!(" ({p})"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as the installed QEMU 10.0.2 writes them (from real runs, and from the formats for
    /// events the current guest does not cause).
    fn samples() -> Vec<(&'static str, Option<Event>)> {
        vec![
            (
                "spapr_iommu_new_table liobn=0x80000000 table=0x7f0e68232010 fd=-1",
                Some(Event::TceNewTable {
                    liobn: 0x8000_0000,
                    fd: -1,
                }),
            ),
            (
                "spapr_iommu_xlate liobn=0x80000000 0x4fd022 -> 0x0 perm=0 mask=0xfff",
                Some(Event::TceXlate {
                    liobn: 0x8000_0000,
                    addr: 0x4fd022,
                    phys: 0,
                    perm: 0,
                    mask: 0xfff,
                }),
            ),
            (
                "spapr_iommu_pci_put liobn=0x80000000 ioba=0x1000 tce=0x2345003 ret=0",
                Some(Event::TcePut {
                    liobn: 0x8000_0000,
                    ioba: 0x1000,
                    tce: 0x234_5003,
                    ret: 0,
                }),
            ),
            (
                "spapr_iommu_put liobn=0x1 ioba=0x0 tce=0x0 ret=-4",
                Some(Event::TcePut {
                    liobn: 1,
                    ioba: 0,
                    tce: 0,
                    ret: -4,
                }),
            ),
            (
                "spapr_iommu_pci_get liobn=0x80000000 ioba=0x1000 ret=0 tce=0x2345003",
                Some(Event::TceGet {
                    liobn: 0x8000_0000,
                    ioba: 0x1000,
                    ret: 0,
                    tce: 0x234_5003,
                }),
            ),
            (
                "spapr_iommu_pci_indirect liobn=0x80000000 ioba=0x10000 tcelist=0x7f000 iobaN=0xf \
             tceN=0x40f003 ret=0",
                Some(Event::TceIndirect {
                    liobn: 0x8000_0000,
                    ioba: 0x10000,
                    tce_list: 0x7f000,
                    last_index: 15,
                    last_tce: 0x40f003,
                    ret: 0,
                }),
            ),
            (
                "spapr_iommu_pci_stuff liobn=0x80000000 ioba=0x40000000 tcevalue=0x0 npages=262144 \
             ret=0",
                Some(Event::TceStuff {
                    liobn: 0x8000_0000,
                    ioba_end: 0x4000_0000,
                    tce_value: 0,
                    npages: 262_144,
                    ret: 0,
                }),
            ),
            (
                "spapr_iommu_ddw_query buid=0x800000020000000 addr=0x0, 1 windows available, max \
             window size=0x20000000, mask=0x3",
                Some(Event::DdwQuery {
                    buid: 0x800_0000_2000_0000,
                    config_addr: 0,
                    windows_available: 1,
                    max_window_size: 0x2000_0000,
                    page_size_mask: 3,
                }),
            ),
            (
                "spapr_iommu_ddw_create buid=0x800000020000000 addr=0x800, page size=0x10000, \
             requested=0x20000000, start addr=0x800000000000000, liobn=0x80000001",
                Some(Event::DdwCreate {
                    buid: 0x800_0000_2000_0000,
                    config_addr: 0x800,
                    page_size: 0x10000,
                    window_size: 0x2000_0000,
                    start: 0x800_0000_0000_0000,
                    liobn: 0x8000_0001,
                }),
            ),
            (
                "spapr_iommu_ddw_remove liobn=0x80000001",
                Some(Event::DdwRemove { liobn: 0x8000_0001 }),
            ),
            (
                "spapr_iommu_ddw_reset buid=0x800000020000000 addr=0x800",
                Some(Event::DdwReset {
                    buid: 0x800_0000_2000_0000,
                    config_addr: 0x800,
                }),
            ),
            (
                "spapr_iommu_pre_save liobn=80000000 40000 bus_offset=0x0 ps=12",
                Some(Event::TceMigration),
            ),
            (
                "spapr_iommu_post_load liobn=80000000 40000 => 0x40000 bus_offset=0x0 ps=12",
                Some(Event::TceMigration),
            ),
            (
                "virtio_iommu_attach domain=1 endpoint=16",
                Some(Event::ViommuAttach {
                    domain: 1,
                    endpoint: 16,
                }),
            ),
            (
                "virtio_iommu_map domain=1 virt_start=0x1000 virt_end=0x1fff phys_start=0x7e000 \
             flags=3",
                Some(Event::ViommuMap {
                    domain: 1,
                    virt_start: 0x1000,
                    virt_end: 0x1fff,
                    phys_start: 0x7e000,
                    flags: 3,
                }),
            ),
            (
                "virtio_iommu_unmap_done domain=-1 virt_start=0x1000 virt_end=0x1fff",
                Some(Event::ViommuUnmapDone {
                    domain: u32::MAX,
                    virt_start: 0x1000,
                    virt_end: 0x1fff,
                }),
            ),
            (
                "virtio_iommu_translate mr=virtio-iommu-memory-region-2-16 rid=16 addr=0x1010 flag=1",
                Some(Event::ViommuTranslate {
                    mr: "virtio-iommu-memory-region-2-16".into(),
                    sid: 16,
                    addr: 0x1010,
                    flag: 1,
                }),
            ),
            (
                "virtio_iommu_translate_out 0x1010 -> 0x7e010 for sid=16",
                Some(Event::ViommuTranslateOut {
                    addr: 0x1010,
                    phys: 0x7e010,
                    sid: 16,
                }),
            ),
            (
                "virtio_iommu_report_fault FAULT reason=2 flags=1 endpoint=16 address =0x5000",
                Some(Event::ViommuFault {
                    reason: 2,
                    flags: 1,
                    endpoint: 16,
                    address: 0x5000,
                }),
            ),
            (
                "virtio_iommu_switch_address_space Device 00:02.0 switching address space (iommu \
             enabled=0)",
                Some(Event::ViommuSwitch {
                    device: Bdf {
                        bus: 0,
                        slot: 2,
                        func: 0,
                    },
                    enabled: false,
                }),
            ),
            (
                "virtio_iommu_system_reset system reset!",
                Some(Event::ViommuReset),
            ),
            (
                "virtio_iommu_device_reset_exit reset!",
                Some(Event::ViommuReset),
            ),
            (
                "vtd_dmar_translate dev 00:03.00 iova 0x2000 -> gpa 0x7f000 mask 0xfff",
                Some(Event::VtdTranslate {
                    device: Bdf {
                        bus: 0,
                        slot: 3,
                        func: 0,
                    },
                    iova: 0x2000,
                    gpa: 0x7f000,
                    mask: 0xfff,
                }),
            ),
            (
                "vtd_dmar_fault sid 0x18 fault 6 addr 0x3000 write 1",
                Some(Event::VtdFault {
                    sid: 0x18,
                    fault: 6,
                    addr: 0x3000,
                    write: true,
                }),
            ),
            (
                "vtd_translate_pt source id 0x18, iova 0x3000",
                Some(Event::VtdPassthrough {
                    sid: 0x18,
                    iova: 0x3000,
                }),
            ),
            ("vtd_reset_exit ", Some(Event::VtdReset)),
            (
                "vtd_switch_address_space Device 00:1f.3 switching address space (iommu enabled=1)",
                Some(Event::VtdSwitch {
                    device: Bdf {
                        bus: 0,
                        slot: 0x1f,
                        func: 3,
                    },
                    enabled: true,
                }),
            ),
            (
                "vtd_inv_desc_iotlb_pages iotlb invalidate domain 0x1 addr 0x2000 mask 0x0",
                Some(Event::VtdInvalidate {
                    domain: Some(1),
                    addr: Some(0x2000),
                    mask: Some(0),
                }),
            ),
        ]
    }

    #[test]
    fn every_sample_parses_exactly() {
        for (line, want) in &samples() {
            let got = parse_line(line);
            match (want, &got) {
                (Some(w), Line::Event { event, stamp, .. }) => {
                    assert_eq!(event, w, "{line}");
                    assert_eq!(*stamp, None);
                }
                _ => panic!("{line}: {got:?}"),
            }
        }
    }

    #[test]
    fn timestamp_prefix() {
        let l = "18708@1795625143.645879:spapr_iommu_new_table liobn=0x80000000 \
                 table=0x7f70398b1010 fd=-1";
        match parse_line(l) {
            Line::Event { stamp, event, .. } => {
                assert_eq!(
                    stamp,
                    Some(Stamp {
                        thread: 18708,
                        micros: 1_795_625_143_645_879
                    })
                );
                assert_eq!(
                    event,
                    Event::TceNewTable {
                        liobn: 0x8000_0000,
                        fd: -1
                    }
                );
            }
            x => panic!("{x:?}"),
        }
        // A prefix that is not one stays part of the line: then it is no event name.
        assert_eq!(
            parse_line("12@34.5:spapr_iommu_ddw_remove liobn=0x1"),
            Line::Unknown
        );
    }

    #[test]
    fn malformed_other_and_unknown() {
        for bad in [
            // Missing, extra, mistyped or mis-cased arguments of modelled events.
            "spapr_iommu_xlate liobn=0x80000000 0x4fd022 -> 0x0 perm=0",
            "spapr_iommu_xlate liobn=0x80000000 0x4fd022 -> 0x0 perm=0 mask=0xfff extra",
            "spapr_iommu_xlate liobn=0x80000000 0x4FD022 -> 0x0 perm=0 mask=0xfff",
            "spapr_iommu_xlate liobn=0x80000000 0x4fd022 -> 0x0 perm=-1 mask=0xfff",
            "spapr_iommu_put liobn=0x1 ioba=0x10000000000000000 tce=0x0 ret=0",
            "spapr_iommu_put",
            "virtio_iommu_translate_out 0x10 -> 0x20 for sid=",
            "vtd_dmar_translate dev 0:03.00 iova 0x2000 -> gpa 0x7f000 mask 0xfff",
            "virtio_iommu_attach domain=99999999999999999999 endpoint=1",
        ] {
            assert!(
                matches!(parse_line(bad), Line::Malformed { .. }),
                "{bad}: {:?}",
                parse_line(bad)
            );
        }
        assert_eq!(
            parse_line("virtio_iommu_get_config page_size_mask=0x1000 whatever"),
            Line::Other {
                name: "virtio_iommu_get_config".into()
            }
        );
        assert_eq!(
            parse_line("vtd_context_cache_reset "),
            Line::Other {
                name: "vtd_context_cache_reset".into()
            }
        );
        for unknown in [
            "",
            " ",
            "IN: 0x1234",
            "Invalid read at addr 0x0",
            "qemu-system-ppc64: warning: x",
            "\u{fffd}\u{fffd}",
        ] {
            assert_eq!(parse_line(unknown), Line::Unknown, "{unknown:?}");
        }
    }

    #[test]
    fn log_counts_and_keeps_what_it_cannot_read() {
        let text = "spapr_iommu_new_table liobn=0x80000000 table=(nil) fd=-1\n\
                    spapr_iommu_xlate liobn=0x80000000 0x0 -> 0x0 perm=0 mask=0xfff\r\n\
                    spapr_iommu_xlate garbage\n\
                    random text\n\
                    vtd_reg_read addr 0x0 size 0x4\n\
                    vtd_reg_read addr 0x4 size 0x4\n\
                    spapr_iommu_xlate liobn=0x80000000 0x0 -> 0x0 per";
        let log = TraceLog::parse(text.as_bytes());
        assert_eq!(log.lines, 7);
        assert_eq!(log.events.len(), 2);
        assert_eq!(log.events[1].line, 2);
        assert_eq!(log.malformed, 2);
        assert_eq!(
            log.malformed_lines[0],
            (3, "spapr_iommu_xlate garbage".into())
        );
        assert_eq!(log.malformed_lines[1].0, 7);
        assert_eq!(log.unknown, 1);
        assert_eq!(log.unknown_lines, vec![(4, "random text".into())]);
        assert_eq!(log.other.get("vtd_reg_read"), Some(&2));
        assert_eq!(log.count("spapr_iommu_xlate"), 1);
        assert_eq!(log.count("vtd_reg_read"), 2);
        assert_eq!(
            log.summary(),
            "7 lines, 2 modelled events, 2 other events, 2 malformed, 1 unknown"
        );
        let missing = TraceLog::read(Path::new("/nonexistent/trace.log"));
        assert!(missing.problem.is_some() && missing.events.is_empty());
        let long = "x".repeat(1000);
        let log = TraceLog::parse(long.as_bytes());
        assert!(log.unknown_lines[0].1.len() < 210);
    }

    /// Every truncation and seeded byte mutations of every sample: a result, never a panic.
    #[test]
    fn hostile_lines_never_panic() {
        let mut seed = 0x5eed_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"0123456789abcdefx -=>:@.%()\xff\xfe,";
        for (line, _) in samples() {
            for cut in 0..=line.len() {
                let _ = parse_line(&String::from_utf8_lossy(&line.as_bytes()[..cut]));
            }
            for _ in 0..400 {
                let mut b = line.as_bytes().to_vec();
                for _ in 0..1 + next() % 4 {
                    let at = (next() as usize) % b.len();
                    match next() % 3 {
                        0 => b[at] = alphabet[(next() as usize) % alphabet.len()],
                        1 => {
                            b.remove(at);
                        }
                        _ => b.insert(at, alphabet[(next() as usize) % alphabet.len()]),
                    }
                    if b.is_empty() {
                        break;
                    }
                }
                let _ = TraceLog::parse(&b);
            }
        }
    }

    #[test]
    fn formats_are_unique_and_scan_themselves() {
        let mut names: Vec<&str> = FORMATS.iter().map(|f| f.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), FORMATS.len());
        // Every modelled event has a sample, so every format is exercised.
        for f in FORMATS {
            let sampled = samples()
                .iter()
                .any(|(l, _)| l.split(' ').next() == Some(f.name));
            if !sampled {
                // Build a line from the format with small values.
                let line = format!("{} {}", f.name, fill(f.format));
                assert!(matches!(parse_line(&line), Line::Event { .. }), "{line}");
            }
        }
        assert_eq!(scan("a%%b", "a%b"), Some(vec![]));
        assert_eq!(scan("%02x", "7"), None);
        assert_eq!(scan("%02x", "07"), Some(vec![Val::U(7)]));
        assert_eq!(
            scan("%s", "any thing"),
            Some(vec![Val::S("any thing".into())])
        );
        assert_eq!(scan("%q", "1"), None);
    }

    /// The format with every conversion replaced by a value it prints.
    fn fill(format: &str) -> String {
        let mut out = String::new();
        let mut chars = format.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let mut spec = String::new();
            while let Some(&d) = chars.peek() {
                chars.next();
                spec.push(d);
                if d == '%' || (d.is_ascii_alphabetic() && !matches!(d, 'l' | 'z' | 'h')) {
                    break;
                }
            }
            out.push_str(match spec.chars().last() {
                Some('x') => "12",
                Some('d') => "-3",
                Some('u') => "4",
                Some('p') => "0x5",
                Some('s') => "str",
                _ => "%",
            });
        }
        out
    }

    #[test]
    fn names_and_patterns() {
        for k in IommuKind::ALL {
            assert_eq!(k.as_str().parse::<IommuKind>().unwrap(), k);
            assert!(!k.trace_patterns().is_empty());
        }
        assert_eq!(
            patterns_for(&[IommuKind::SpaprTce, IommuKind::VirtioIommu]),
            vec!["spapr_iommu_*", "virtio_iommu_*"]
        );
        let b = Bdf {
            bus: 1,
            slot: 2,
            func: 3,
        };
        assert_eq!(b.sid(), 0x113);
        assert_eq!(Bdf::from_sid(0x113), b);
        assert_eq!(b.to_string(), "01:02.3");
    }
}
