//! virtio-iommu (virtio 1.2, 5.13; device ID 23, PCI 1af4:1057): the driver of the IOMMU
//! itself, over the ordinary transport and ring code. [`crate::dma::viommu`] turns one of its
//! domains into an IOMMU backend for the devices it translates.
//!
//! * Features: `MAP_UNMAP` (required), `INPUT_RANGE`, `DOMAIN_RANGE`, `PROBE`,
//!   `BYPASS_CONFIG`; never `MMIO` nor the legacy `BYPASS`. With `BYPASS_CONFIG` the driver
//!   writes `bypass = 0` before DRIVER_OK and reads it back: an endpoint that is not attached
//!   to a domain then faults instead of reaching all of memory ("no bypass"). QEMU keeps
//!   `bypass` across a device reset (only a system reset restores `boot-bypass`).
//! * Config: `page_size_mask`, `input_range`, `domain_range`, `probe_size`, each checked
//!   ([`Config::check`]): an empty mask or range is an error, never a division or a loop.
//! * Requests go one at a time through the request queue: the device-readable part (head and
//!   body) and the device-writable part (probe properties, then the 4-byte tail) live in one
//!   shared region. A request that completes without the whole tail written, or with a status
//!   other than OK, is an error naming the request and the status.
//! * PROBE gives an endpoint's reserved regions; the IOVA space of its domain avoids every one
//!   of them (MSI doorbells are not translated, reserved ones fault).
//! * The event queue always has [`EVENT_BUFFERS`] buffers posted. A fault report (reason,
//!   endpoint, address, flags) is recorded; [`Viommu::poll_events`] collects them, and runs
//!   after every request.
//!
//! The device is the host's: every completion is checked (token, written length), and a fault
//! report is data, never something the driver acts on beyond recording it.

use alloc::vec::Vec;
use core::fmt;

use super::driver::{Settings, max_polls};
use super::features::common;
use super::init::{self, InitError, Negotiation};
use super::queue::{AddError, Segment, Virtqueue};
use super::transport::{Transport, TransportError, read_config_consistent};
use super::wait::{Clock, Deadline, WaitError};
use crate::dma::{Dma, DmaConstraints, DmaError, SharedRegion};

/// Feature bits (virtio 1.2, 5.13.3).
pub mod feature {
    pub const INPUT_RANGE: u64 = 1 << 0;
    pub const DOMAIN_RANGE: u64 = 1 << 1;
    pub const MAP_UNMAP: u64 = 1 << 2;
    pub const BYPASS: u64 = 1 << 3;
    pub const PROBE: u64 = 1 << 4;
    pub const MMIO: u64 = 1 << 5;
    pub const BYPASS_CONFIG: u64 = 1 << 6;

    /// What this driver asks for.
    pub const WANTED: u64 = INPUT_RANGE | DOMAIN_RANGE | MAP_UNMAP | PROBE | BYPASS_CONFIG;
}

/// Config space offsets.
mod cfg {
    pub const PAGE_SIZE_MASK: usize = 0;
    pub const INPUT_START: usize = 8;
    pub const INPUT_END: usize = 16;
    pub const DOMAIN_START: usize = 24;
    pub const DOMAIN_END: usize = 28;
    pub const PROBE_SIZE: usize = 32;
    pub const BYPASS: usize = 36;
}

/// Request types.
pub mod req {
    pub const ATTACH: u8 = 1;
    pub const DETACH: u8 = 2;
    pub const MAP: u8 = 3;
    pub const UNMAP: u8 = 4;
    pub const PROBE: u8 = 5;
}

/// MAP flags.
pub const MAP_F_READ: u32 = 1;
pub const MAP_F_WRITE: u32 = 2;

/// PROBE property types and reserved-memory subtypes.
const PROBE_T_NONE: u16 = 0;
const PROBE_T_RESV_MEM: u16 = 1;
pub const RESV_MEM_T_RESERVED: u8 = 0;
pub const RESV_MEM_T_MSI: u8 = 1;

/// Event buffers kept posted on the event queue.
pub const EVENT_BUFFERS: usize = 8;
/// Bytes of one fault report.
const EVENT_LEN: usize = 24;
/// Faults kept for the report (more are counted, not kept).
pub const FAULTS_KEPT: usize = 16;
/// Reserved regions kept per endpoint.
pub const RESV_KEPT: usize = 16;
/// The largest `probe_size` used (QEMU: 512); a larger one is clamped, which is allowed: the
/// device stops writing properties where the buffer ends.
const PROBE_MAX: usize = 4096;
/// The device-readable part of the largest request (PROBE: head, endpoint, 64 reserved).
const READABLE_MAX: usize = 72;
/// Requests the queue is asked to hold (one is in flight at a time).
const QUEUE_SIZE: u16 = 16;

/// A request status (the tail's first byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u8);

impl Status {
    pub const OK: Status = Status(0);

    /// The spec's name without `VIRTIO_IOMMU_S_`.
    pub fn as_str(self) -> &'static str {
        match self.0 {
            0 => "OK",
            1 => "IOERR",
            2 => "UNSUPP",
            3 => "DEVERR",
            4 => "INVAL",
            5 => "RANGE",
            6 => "NOENT",
            7 => "FAULT",
            8 => "NOMEM",
            _ => "unknown status",
        }
    }
}

/// One request, as the driver builds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Attach {
        domain: u32,
        endpoint: u32,
    },
    Detach {
        domain: u32,
        endpoint: u32,
    },
    /// `[virt_start, virt_end]` (inclusive) to `phys_start..`, with `MAP_F_*` flags.
    Map {
        domain: u32,
        virt_start: u64,
        virt_end: u64,
        phys_start: u64,
        flags: u32,
    },
    Unmap {
        domain: u32,
        virt_start: u64,
        virt_end: u64,
    },
    Probe {
        endpoint: u32,
    },
}

impl Request {
    pub fn kind(&self) -> u8 {
        match self {
            Request::Attach { .. } => req::ATTACH,
            Request::Detach { .. } => req::DETACH,
            Request::Map { .. } => req::MAP,
            Request::Unmap { .. } => req::UNMAP,
            Request::Probe { .. } => req::PROBE,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Request::Attach { .. } => "ATTACH",
            Request::Detach { .. } => "DETACH",
            Request::Map { .. } => "MAP",
            Request::Unmap { .. } => "UNMAP",
            Request::Probe { .. } => "PROBE",
        }
    }

    /// Writes the device-readable part (head and body, little-endian) into `out` and returns
    /// its length: ATTACH/DETACH 20, MAP 36, UNMAP 28, PROBE 72 bytes.
    pub fn encode(&self, out: &mut [u8; READABLE_MAX]) -> usize {
        out.fill(0);
        out[0] = self.kind();
        let mut put = |at: usize, bytes: &[u8]| out[at..at + bytes.len()].copy_from_slice(bytes);
        match *self {
            Request::Attach { domain, endpoint } | Request::Detach { domain, endpoint } => {
                put(4, &domain.to_le_bytes());
                put(8, &endpoint.to_le_bytes());
                // flags 0 (translated, never ATTACH_F_BYPASS) and 4 reserved bytes.
                20
            }
            Request::Map {
                domain,
                virt_start,
                virt_end,
                phys_start,
                flags,
            } => {
                put(4, &domain.to_le_bytes());
                put(8, &virt_start.to_le_bytes());
                put(16, &virt_end.to_le_bytes());
                put(24, &phys_start.to_le_bytes());
                put(32, &flags.to_le_bytes());
                36
            }
            Request::Unmap {
                domain,
                virt_start,
                virt_end,
            } => {
                put(4, &domain.to_le_bytes());
                put(8, &virt_start.to_le_bytes());
                put(16, &virt_end.to_le_bytes());
                28
            }
            Request::Probe { endpoint } => {
                put(4, &endpoint.to_le_bytes());
                72
            }
        }
    }
}

/// The device's config, as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub page_size_mask: u64,
    /// Inclusive range of IOVAs the device translates.
    pub input_start: u64,
    pub input_end: u64,
    /// Inclusive range of domain IDs.
    pub domain_start: u32,
    pub domain_end: u32,
    pub probe_size: u32,
    /// `bypass` now: after [`Viommu::new`], what it read back after writing 0.
    pub bypass: u8,
    /// `bypass` as the device had it before the driver wrote it (QEMU: `boot-bypass`, 1).
    pub bypass_found: u8,
}

impl Config {
    /// Reads what the negotiated features make valid; the rest gets the spec's defaults (every
    /// IOVA, every 32-bit domain, no probe).
    pub fn read<T: Transport + ?Sized>(t: &mut T, accepted: u64) -> Result<Self, TransportError> {
        read_config_consistent(t, |t| {
            let u64_at = |t: &mut T, o: usize| -> Result<u64, TransportError> {
                Ok(u64::from(t.read_config_u32(o)?) | u64::from(t.read_config_u32(o + 4)?) << 32)
            };
            let page_size_mask = u64_at(t, cfg::PAGE_SIZE_MASK)?;
            let (input_start, input_end) = if accepted & feature::INPUT_RANGE != 0 {
                (u64_at(t, cfg::INPUT_START)?, u64_at(t, cfg::INPUT_END)?)
            } else {
                (0, u64::MAX)
            };
            let (domain_start, domain_end) = if accepted & feature::DOMAIN_RANGE != 0 {
                (
                    t.read_config_u32(cfg::DOMAIN_START)?,
                    t.read_config_u32(cfg::DOMAIN_END)?,
                )
            } else {
                (0, u32::MAX)
            };
            let probe_size = if accepted & feature::PROBE != 0 {
                t.read_config_u32(cfg::PROBE_SIZE)?
            } else {
                0
            };
            let bypass = if accepted & feature::BYPASS_CONFIG != 0 {
                t.read_config_u8(cfg::BYPASS)?
            } else {
                0
            };
            Ok(Config {
                page_size_mask,
                input_start,
                input_end,
                domain_start,
                domain_end,
                probe_size,
                bypass,
                bypass_found: bypass,
            })
        })
    }

    /// Checks the values a driver depends on; the page granule (the smallest page size) as a
    /// shift on success.
    pub fn check(&self) -> Result<u32, &'static str> {
        if self.page_size_mask == 0 {
            return Err("page_size_mask is 0: the device offers no page size");
        }
        let granule = self.page_size_mask.trailing_zeros();
        if granule > 30 {
            return Err("page_size_mask: smallest page larger than 1 GiB");
        }
        if self.input_end < self.input_start {
            return Err("input_range is empty (end below start)");
        }
        if self.input_end - self.input_start < (1u64 << granule) - 1 {
            return Err("input_range holds less than one page");
        }
        if self.domain_end < self.domain_start {
            return Err("domain_range is empty (end below start)");
        }
        Ok(granule)
    }
}

/// A reserved region an endpoint must never have an IOVA mapped in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResvRegion {
    /// `RESV_MEM_T_RESERVED` (accesses fault) or `RESV_MEM_T_MSI` (an untranslated doorbell).
    pub subtype: u8,
    pub start: u64,
    /// Inclusive.
    pub end: u64,
}

/// Parses PROBE properties: reserved-memory ones are kept (at most [`RESV_KEPT`]), others
/// skipped, `NONE` ends the list. A property running past the buffer, or a reserved region
/// whose end is below its start, is an error.
pub fn parse_probe(props: &[u8]) -> Result<Vec<ResvRegion>, &'static str> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= props.len() {
        let ty = u16::from_le_bytes([props[at], props[at + 1]]) & 0xfff;
        let len = usize::from(u16::from_le_bytes([props[at + 2], props[at + 3]]));
        if ty == PROBE_T_NONE {
            break;
        }
        let body = props
            .get(at + 4..at + 4 + len)
            .ok_or("a PROBE property runs past the buffer")?;
        if ty == PROBE_T_RESV_MEM {
            if len < 20 {
                return Err("a RESV_MEM property shorter than 20 bytes");
            }
            let u64_at = |o: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&body[o..o + 8]);
                u64::from_le_bytes(b)
            };
            let r = ResvRegion {
                subtype: body[0],
                start: u64_at(4),
                end: u64_at(12),
            };
            if r.end < r.start {
                return Err("a reserved region ends below its start");
            }
            if out.len() < RESV_KEPT {
                out.push(r);
            }
        }
        at += 4 + len;
    }
    Ok(out)
}

/// A fault the device reported on the event queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// 0 unknown, 1 domain (endpoint not attached), 2 mapping (no mapping or no permission).
    pub reason: u8,
    /// Bit 0 read, 1 write, 2 exec, 8 `address` valid.
    pub flags: u32,
    pub endpoint: u32,
    pub address: u64,
}

impl Fault {
    pub fn parse(b: &[u8; EVENT_LEN]) -> Fault {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[16..24]);
        Fault {
            reason: b[0],
            flags: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            endpoint: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            address: u64::from_le_bytes(a),
        }
    }

    pub fn reason_str(&self) -> &'static str {
        match self.reason {
            0 => "unknown",
            1 => "domain",
            2 => "mapping",
            _ => "other",
        }
    }
}

/// Why the IOMMU failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViommuError {
    Init(InitError),
    /// MAP_UNMAP was not offered: the IOMMU cannot translate anything for us.
    NoMapUnmap,
    Config(&'static str),
    /// `bypass` still reads 1 after the driver wrote 0.
    BypassStuck,
    /// The ring refused a request (a broken queue).
    Add(AddError),
    Wait(WaitError),
    /// The completion's token is not the request's.
    WrongToken {
        expected: u16,
        got: u16,
    },
    /// The device wrote fewer bytes than the request's tail needs.
    ShortWrite {
        request: &'static str,
        written: u32,
        needed: u32,
    },
    /// The request completed with a status other than OK.
    Status {
        request: &'static str,
        status: Status,
    },
    /// A PROBE answer that does not parse.
    Probe(&'static str),
    /// No domain ID left in `domain_range`.
    NoDomain,
}

impl ViommuError {
    /// The code of [`DmaError::Platform`]: the virtio-iommu status when the device answered,
    /// negative for what happened before an answer (-1 ring, -2 timeout, -3 bad answer).
    pub fn code(&self) -> i64 {
        match self {
            ViommuError::Status { status, .. } => i64::from(status.0),
            ViommuError::Add(_) => -1,
            ViommuError::Wait(WaitError::TimedOut { .. }) => -2,
            _ => -3,
        }
    }
}

impl From<ViommuError> for DmaError {
    fn from(e: ViommuError) -> Self {
        DmaError::Platform { code: e.code() }
    }
}

impl fmt::Display for ViommuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ViommuError::Init(e) => write!(f, "init: {e}"),
            ViommuError::NoMapUnmap => f.write_str("the device does not offer MAP_UNMAP"),
            ViommuError::Config(why) => write!(f, "config: {why}"),
            ViommuError::BypassStuck => {
                f.write_str("config.bypass still reads 1 after writing 0: endpoints bypass")
            }
            ViommuError::Add(e) => write!(f, "request queue: {e}"),
            ViommuError::Wait(e) => write!(f, "request queue: {e}"),
            ViommuError::WrongToken { expected, got } => {
                write!(f, "completion of request {got}, {expected} was outstanding")
            }
            ViommuError::ShortWrite {
                request,
                written,
                needed,
            } => write!(
                f,
                "{request}: the device wrote {written} bytes, {needed} needed"
            ),
            ViommuError::Status { request, status } => {
                write!(f, "{request}: status {} ({})", status.0, status.as_str())
            }
            ViommuError::Probe(why) => write!(f, "PROBE: {why}"),
            ViommuError::NoDomain => f.write_str("domain_range exhausted"),
        }
    }
}

/// What the IOMMU did, for its record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ViommuCounts {
    pub attach: u64,
    pub detach: u64,
    pub map: u64,
    pub unmap: u64,
    pub probe: u64,
    /// Requests that failed (any error, status or not).
    pub failed: u64,
    /// Notifications sent on the request queue.
    pub notifications: u64,
    /// Fault reports received (also those not kept).
    pub faults: u64,
}

impl ViommuCounts {
    pub fn requests(&self) -> u64 {
        self.attach + self.detach + self.map + self.unmap + self.probe
    }
}

/// The driven virtio-iommu: transport, queues and state. `T` is the transport (a boxed
/// `dyn Transport` in the guest), `C` the clock every wait is bounded by.
pub struct Viommu<'d, T: Transport + ?Sized, C: Clock> {
    transport: alloc::boxed::Box<T>,
    clock: C,
    timeout_us: u64,
    dma: &'d dyn Dma,
    negotiation: Negotiation,
    pub config: Config,
    /// The smallest page size, as a shift.
    pub granule: u32,
    requestq: Virtqueue<'d>,
    eventq: Virtqueue<'d>,
    /// Request buffer: readable part at 0, writable part (properties + tail) at `READABLE_MAX`.
    buf: SharedRegion,
    /// Event buffers, `EVENT_LEN` each; `posted[token]` is the slot a posted token uses.
    events: SharedRegion,
    posted: Vec<Option<usize>>,
    /// The next domain ID to hand out (u64: one past `u32::MAX` is "exhausted").
    next_domain: u64,
    pub counts: ViommuCounts,
    pub faults: Vec<Fault>,
    /// The first error after init, for the record.
    pub last_error: Option<ViommuError>,
}

impl<'d, T: Transport + ?Sized, C: Clock> Viommu<'d, T, C> {
    /// Initialises the device: features, config checks, `bypass = 0`, both queues (with
    /// `dma`: the IOMMU's own DMA path, never translated by itself), event buffers posted,
    /// DRIVER_OK. On failure the device is left FAILED (or as the reset left it) and the
    /// transport is given back with the error.
    pub fn new(
        mut transport: alloc::boxed::Box<T>,
        clock: C,
        settings: &Settings,
        dma: &'d dyn Dma,
    ) -> Result<Self, (alloc::boxed::Box<T>, ViommuError, Option<Negotiation>)> {
        let timeout_us = settings.timeout_us;
        let mut deadline = Deadline::new(&clock, timeout_us, max_polls(timeout_us));
        let mut seen = None;
        let requested = feature::WANTED | settings.core_features();
        let r = init::init(&mut *transport, requested, &mut deadline, |t, n| {
            seen = Some(*n);
            if !n.has(feature::MAP_UNMAP) {
                return Err(InitError::Driver {
                    what: "MAP_UNMAP not offered",
                });
            }
            let mut config = Config::read(t, n.accepted)?;
            let granule = config.check().map_err(|what| InitError::Driver { what })?;
            if n.has(feature::BYPASS_CONFIG) {
                t.write_config_u8(cfg::BYPASS, 0)?;
                config.bypass = t.read_config_u8(cfg::BYPASS)?;
                if config.bypass != 0 {
                    return Err(InitError::Driver {
                        what: "config.bypass stays 1",
                    });
                }
            }
            let c = &DmaConstraints::NONE;
            let requestq = init::setup_queue(t, dma, n, 0, QUEUE_SIZE, c)?;
            let eventq = match init::setup_queue(t, dma, n, 1, EVENT_BUFFERS as u16, c) {
                Ok(q) => q,
                Err(e) => {
                    // SAFETY: DRIVER_OK was never set; the device has not used the queue.
                    let _ = unsafe { requestq.free() };
                    return Err(e);
                }
            };
            Ok((config, granule, requestq, eventq))
        });
        let (negotiation, (config, granule, mut requestq, mut eventq)) = match r {
            Ok(v) => v,
            Err(e) => {
                let err = match e {
                    InitError::Driver {
                        what: "MAP_UNMAP not offered",
                    } => ViommuError::NoMapUnmap,
                    InitError::Driver {
                        what: "config.bypass stays 1",
                    } => ViommuError::BypassStuck,
                    InitError::Driver { what } => ViommuError::Config(what),
                    e => ViommuError::Init(e),
                };
                return Err((transport, err, seen));
            }
        };
        let probe_len = (config.probe_size as usize).min(PROBE_MAX);
        let alloc = |size| dma.alloc_shared(size, 64, &DmaConstraints::NONE);
        let regions = alloc(READABLE_MAX + probe_len + 4).and_then(|b| {
            match alloc(EVENT_BUFFERS * EVENT_LEN) {
                Ok(e) => Ok((b, e)),
                Err(err) => {
                    // SAFETY: never given to the device.
                    let _ = unsafe { dma.free_shared(b) };
                    Err(err)
                }
            }
        });
        let (buf, events) = match regions {
            Ok(r) => r,
            Err(_) => {
                let mut d = Deadline::new(&clock, timeout_us, max_polls(timeout_us));
                if init::reset(&mut *transport, &mut d).is_ok() {
                    // SAFETY: the device is reset.
                    let _ = unsafe { requestq.free() };
                    // SAFETY: as above.
                    let _ = unsafe { eventq.free() };
                }
                return Err((
                    transport,
                    ViommuError::Config("no memory for the request buffers"),
                    Some(negotiation),
                ));
            }
        };
        requestq.set_interrupts(false);
        let mut posted = alloc::vec![None; usize::from(eventq.size())];
        for slot in 0..EVENT_BUFFERS.min(usize::from(eventq.size())) {
            let seg = Segment::in_region(&events, slot * EVENT_LEN, EVENT_LEN as u32, true);
            if let Ok(tok) = eventq.add(&[seg]) {
                posted[tok.index()] = Some(slot);
            }
        }
        eventq.set_interrupts(false);
        if eventq.should_notify() {
            transport.notify(eventq.index());
        }
        Ok(Viommu {
            transport,
            clock,
            timeout_us,
            dma,
            negotiation,
            config,
            granule,
            requestq,
            eventq,
            buf,
            events,
            posted,
            next_domain: u64::from(config.domain_start),
            counts: ViommuCounts::default(),
            faults: Vec::new(),
            last_error: None,
        })
    }

    pub fn negotiation(&self) -> &Negotiation {
        &self.negotiation
    }

    /// A fresh domain ID from `domain_range`.
    pub fn new_domain(&mut self) -> Result<u32, ViommuError> {
        let d = self.next_domain;
        if d > u64::from(self.config.domain_end) {
            return Err(ViommuError::NoDomain);
        }
        self.next_domain = d + 1;
        Ok(d as u32)
    }

    /// Sends one request and waits for its answer. `Ok` only for status OK; PROBE properties
    /// are left in the buffer for [`Self::probe`].
    pub fn request(&mut self, r: &Request) -> Result<(), ViommuError> {
        let result = self.send(r);
        match r {
            Request::Attach { .. } => self.counts.attach += 1,
            Request::Detach { .. } => self.counts.detach += 1,
            Request::Map { .. } => self.counts.map += 1,
            Request::Unmap { .. } => self.counts.unmap += 1,
            Request::Probe { .. } => self.counts.probe += 1,
        }
        if let Err(e) = result {
            self.counts.failed += 1;
            self.last_error.get_or_insert(e);
        }
        self.poll_events();
        result
    }

    fn send(&mut self, r: &Request) -> Result<(), ViommuError> {
        let mut bytes = [0u8; READABLE_MAX];
        let readable = r.encode(&mut bytes);
        let props = if r.kind() == req::PROBE {
            (self.config.probe_size as usize).min(PROBE_MAX)
        } else {
            0
        };
        let writable = props + 4;
        self.buf.write_bytes(0, &bytes[..readable]);
        // The tail starts as an impossible status, so that one the device never wrote shows.
        self.buf.fill(READABLE_MAX, writable, 0);
        self.buf.write_u8(READABLE_MAX + props, 0xff);
        let segments = [
            Segment::in_region(&self.buf, 0, readable as u32, false),
            Segment::in_region(&self.buf, READABLE_MAX, writable as u32, true),
        ];
        let token = self.requestq.add(&segments).map_err(ViommuError::Add)?;
        if self.requestq.should_notify() {
            self.transport.notify(self.requestq.index());
            self.counts.notifications += 1;
        }
        let mut deadline = Deadline::new(&self.clock, self.timeout_us, max_polls(self.timeout_us));
        let c = self
            .requestq
            .wait_used(&mut deadline)
            .map_err(ViommuError::Wait)?;
        if c.token != token {
            return Err(ViommuError::WrongToken {
                expected: token.0,
                got: c.token.0,
            });
        }
        if (c.written_len as usize) < writable {
            return Err(ViommuError::ShortWrite {
                request: r.name(),
                written: c.written_len,
                needed: writable as u32,
            });
        }
        let status = Status(self.buf.read_u8(READABLE_MAX + props));
        if status != Status::OK {
            return Err(ViommuError::Status {
                request: r.name(),
                status,
            });
        }
        Ok(())
    }

    /// The reserved regions of `endpoint` (none without `PROBE`).
    pub fn probe(&mut self, endpoint: u32) -> Result<Vec<ResvRegion>, ViommuError> {
        if !self.negotiation.has(feature::PROBE) || self.config.probe_size == 0 {
            return Ok(Vec::new());
        }
        self.request(&Request::Probe { endpoint })?;
        let n = (self.config.probe_size as usize).min(PROBE_MAX);
        let mut props = alloc::vec![0u8; n];
        self.buf.read_bytes(READABLE_MAX, &mut props);
        parse_probe(&props).map_err(|why| {
            let e = ViommuError::Probe(why);
            self.last_error.get_or_insert(e);
            e
        })
    }

    /// Collects the fault reports the device posted, and posts their buffers again.
    pub fn poll_events(&mut self) {
        // A broken event queue stops reporting; the request path still works.
        while let Ok(Some(c)) = self.eventq.pop_used() {
            let Some(slot) = self.posted.get_mut(c.token.index()).and_then(Option::take) else {
                continue;
            };
            self.counts.faults += 1;
            if c.written_len as usize >= EVENT_LEN {
                let mut b = [0u8; EVENT_LEN];
                self.events.read_bytes(slot * EVENT_LEN, &mut b);
                if self.faults.len() < FAULTS_KEPT {
                    self.faults.push(Fault::parse(&b));
                }
            }
            let seg = Segment::in_region(&self.events, slot * EVENT_LEN, EVENT_LEN as u32, true);
            if let Ok(tok) = self.eventq.add(&[seg]) {
                self.posted[tok.index()] = Some(slot);
            }
        }
        if self.eventq.should_notify() {
            self.transport.notify(self.eventq.index());
        }
    }

    /// Resets the device (every domain and mapping goes; `bypass` stays 0 in QEMU) and gives
    /// the queues and buffers back. If the reset does not complete, nothing is given back.
    pub fn shutdown(mut self) -> Result<(), &'static str> {
        self.poll_events();
        let mut d = Deadline::new(&self.clock, self.timeout_us, max_polls(self.timeout_us));
        if init::reset(&mut *self.transport, &mut d).is_err() {
            return Err("the IOMMU did not reset: its queues are left to it");
        }
        // SAFETY: the device is reset: it no longer uses its queues or buffers.
        unsafe {
            let _ = self.requestq.free();
            let _ = self.eventq.free();
            let _ = self.dma.free_shared(self.buf);
            let _ = self.dma.free_shared(self.events);
        }
        Ok(())
    }

    /// Whether the device accepted a feature.
    pub fn has(&self, f: u64) -> bool {
        self.negotiation.has(f)
    }

    /// Whether `ACCESS_PLATFORM` was negotiated for the IOMMU's own queues.
    pub fn own_access_platform(&self) -> bool {
        self.negotiation.has(common::ACCESS_PLATFORM)
    }
}

#[cfg(test)]
pub(crate) mod tests;
