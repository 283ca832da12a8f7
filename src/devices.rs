//! The device step of the boot flow: every virtio device found goes through its driver (init,
//! the test of docs/report.md, reset), and comes back as a [`DeviceReport`], which
//! [`virtio_record`] writes as the `virtio` record.
//!
//! Portable: the arch layer finds the devices and provides the clock ([`TickClock`] over its
//! tick counter); everything here runs on the host against fake transports too.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::cmdline::Options;
use crate::crc32c::crc32c;
use crate::dma::iommu::{DomainInfo, IommuStats, LazyDomain};
use crate::report::Record;
use crate::virtio::blk::{self, BlkInfo, BlkParams};
use crate::virtio::console::{self, ConsoleInfo};
use crate::virtio::driver::{
    Counters, DmaPaths, DmaReport, DriverRun, Outcome, QueueInfo, Settings,
};
use crate::virtio::features::{DeviceType, common, feature_names};
use crate::virtio::net::{self, NetInfo};
use crate::virtio::rng::{self, RngInfo};
use crate::virtio::{Clock, Transport};

/// A [`Clock`] over the arch tick counter. With no tick rate (uncalibrated) time stands still
/// and only the poll ceilings end the waits.
pub struct TickClock {
    now_ticks: fn() -> u64,
    hz: u64,
}

impl TickClock {
    pub const fn new(now_ticks: fn() -> u64, hz: Option<u64>) -> Self {
        TickClock {
            now_ticks,
            hz: match hz {
                Some(h) => h,
                None => 0,
            },
        }
    }
}

impl Clock for TickClock {
    fn now_us(&self) -> u64 {
        if self.hz == 0 {
            return 0;
        }
        ((self.now_ticks)() as u128 * 1_000_000 / self.hz as u128) as u64
    }
}

/// The device-specific results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Specific {
    /// A device type the guest does not drive.
    None,
    Blk(BlkInfo),
    Net(NetInfo),
    Console(ConsoleInfo),
    Rng(RngInfo),
}

/// Everything the `virtio` record of one device says.
#[derive(Clone, Debug)]
pub struct DeviceReport {
    /// `blk`, `net`, `console`, `rng`, `type-N`.
    pub device: String,
    pub device_id: u32,
    pub transport: &'static str,
    pub location: String,
    pub features_offered: u64,
    pub features_accepted: u64,
    pub queues: Vec<QueueInfo>,
    /// `dma` and `dma_reason`.
    pub dma: DmaReport,
    pub counters: Counters,
    pub outcome: Outcome,
    pub specific: Specific,
}

impl DeviceReport {
    pub fn is_error(&self) -> bool {
        self.outcome.is_error()
    }

    /// A secure guest refused the device (not an error).
    pub fn is_refused(&self) -> bool {
        self.outcome == Outcome::Refused
    }
}

/// Runs the devices one by one, in the order found (the report order), and knows which blk
/// device `sg.blk.disk` names. Each device's DMA path is chosen from `paths` once its features
/// are negotiated (see [`crate::virtio::driver`]).
pub struct Runner<'a> {
    paths: DmaPaths<'a>,
    clock: &'a dyn Clock,
    opts: &'a Options,
    settings: Settings,
    blk_seen: u32,
}

impl<'a> Runner<'a> {
    pub fn new(paths: DmaPaths<'a>, clock: &'a dyn Clock, opts: &'a Options) -> Self {
        Runner {
            paths,
            clock,
            opts,
            settings: Settings {
                timeout_us: u64::from(opts.virtio_timeout_ms) * 1000,
                packed: opts.virtio_packed,
                indirect: opts.virtio_indirect,
                event_idx: opts.virtio_event_idx,
            },
            blk_seen: 0,
        }
    }

    /// Drives the device behind `t` at `location`. `None` for an empty slot (device type 0:
    /// a virtio-mmio window with no device behind it), which has no record.
    pub fn run<T: Transport + ?Sized>(
        &mut self,
        location: &str,
        t: &mut T,
    ) -> Option<DeviceReport> {
        self.run_behind(location, t, None)
    }

    /// [`Runner::run`] for a device behind IOMMU domain `domain` of the run's [`DmaPaths`].
    pub fn run_behind<T: Transport + ?Sized>(
        &mut self,
        location: &str,
        t: &mut T,
        domain: Option<usize>,
    ) -> Option<DeviceReport> {
        let paths = self.paths.behind(domain);
        let ty = t.device_type();
        if ty == DeviceType::NONE {
            return None;
        }
        let transport = t.name();
        let s = &self.settings;
        let (device, r) = match ty {
            DeviceType::BLOCK => {
                let index = self.blk_seen;
                self.blk_seen += 1;
                let params = BlkParams {
                    read: self.opts.blk_read,
                    // Only the disk that sg.blk.disk names is ever written.
                    write: self.opts.blk_write.filter(|_| index == self.opts.blk_disk),
                    req_bytes: self.opts.blk_req,
                    qd: self.opts.blk_qd,
                    random: self.opts.blk_random,
                };
                let r = blk::run(t, &paths, self.clock, s, &params);
                ("blk".to_string(), erase(r, Specific::Blk))
            }
            DeviceType::NET => {
                let r = net::run(t, &paths, self.clock, s, self.opts.net_frames);
                ("net".to_string(), erase(r, Specific::Net))
            }
            DeviceType::CONSOLE => {
                let r = console::run(t, &paths, self.clock, s, self.opts.console_read);
                ("console".to_string(), erase(r, Specific::Console))
            }
            DeviceType::RNG => {
                let r = rng::run(t, &paths, self.clock, s, self.opts.rng_bytes);
                ("rng".to_string(), erase(r, Specific::Rng))
            }
            DeviceType(n) => {
                // Not driven, not touched: only the offer is read, for the report.
                let mut offered = t.device_features();
                if t.is_legacy() {
                    offered &= u64::from(u32::MAX);
                }
                let r = DriverRun {
                    offered,
                    accepted: 0,
                    queues: Vec::new(),
                    counters: Counters::default(),
                    outcome: Outcome::Skipped,
                    // The path it would have had.
                    dma: paths.would_choose(offered & common::ACCESS_PLATFORM != 0),
                    specific: Specific::None,
                };
                (format!("type-{n}"), r)
            }
        };
        Some(DeviceReport {
            device,
            device_id: ty.0,
            transport,
            location: location.into(),
            features_offered: r.offered,
            features_accepted: r.accepted,
            queues: r.queues,
            dma: r.dma,
            counters: r.counters,
            outcome: r.outcome,
            specific: r.specific,
        })
    }

    /// After every device ran: what `sg.blk.write` asked for and could not be done because the
    /// disk it names does not exist.
    pub fn unmet(&self) -> Option<String> {
        let w = self.opts.blk_write?;
        (self.opts.blk_disk >= self.blk_seen).then(|| {
            format!(
                "sg.blk.write={}:{}:{:#x} names blk device {} (sg.blk.disk), but {} blk \
                 device(s) were found: nothing was written",
                w.offset, w.len, w.seed, self.opts.blk_disk, self.blk_seen
            )
        })
    }
}

fn erase<S>(r: DriverRun<S>, wrap: fn(S) -> Specific) -> DriverRun<Specific> {
    DriverRun {
        offered: r.offered,
        accepted: r.accepted,
        queues: r.queues,
        counters: r.counters,
        outcome: r.outcome,
        dma: r.dma,
        specific: wrap(r.specific),
    }
}

/// The fields of an IOMMU domain and its counts, inside an object (the `iommu` object of a
/// `virtio` record, and the `iommu` record): docs/report.md.
pub fn iommu_fields(j: &mut crate::report::Json<'_>, info: &DomainInfo, s: &IommuStats) {
    for (k, v) in [
        ("backend", info.backend),
        ("mode", info.mode),
        ("mode_reason", info.mode_reason),
        ("mapping", info.mapping),
    ] {
        j.key(k);
        j.str(v);
    }
    for (k, v) in [("domain", info.id), ("window_base", info.window_base)] {
        j.key(k);
        j.hex(v);
    }
    j.u64_fields(&[
        ("window_size", info.window_size),
        ("page_size", info.page_size),
        ("setup_calls", info.setup_calls),
        ("dma_maps", s.dma_maps),
        ("dma_unmaps", s.dma_unmaps),
        ("maps", s.maps),
        ("unmaps", s.unmaps),
        ("calls", s.calls),
        ("failures", s.failures),
        ("exhausted", s.exhausted),
        ("pages", s.pages),
        ("pages_peak", s.pages_peak),
    ]);
    j.key("calls_by_kind");
    j.begin_object();
    for k in s.kinds.iter().filter(|k| !k.name.is_empty()) {
        j.key(k.name);
        j.begin_object();
        j.key("calls");
        j.u64(k.calls);
        j.key("entries");
        j.u64(k.entries);
        j.end_object();
    }
    j.end_object();
}

/// The `iommu` record of a domain: where it is, whether its setup worked, and its totals
/// (setup included; `pages_peak` over the whole run). Only for a domain some device asked for
/// (`LazyDomain::state` is `Some`; a record is written as soon as it is started).
pub fn iommu_record<W: fmt::Write>(r: Record<W>, lazy: &LazyDomain<'_>) -> Record<W> {
    let r = r.str("location", &lazy.location);
    match lazy.state() {
        None => r.str("result", "unused"),
        Some(Ok(d)) => {
            let mut s = d.iommu_stats();
            s.pages_peak = crate::dma::Dma::stats(d).iommu_pages_peak;
            r.str("result", "ok").json("iommu", |j| {
                j.begin_object();
                iommu_fields(j, &d.info(), &s);
                j.end_object();
            })
        }
        Some(Err(e)) => r.str("result", "error").str("error", &format!("{e}")),
    }
}

/// The report's name of a feature bit: the spec's name without `VIRTIO_F_` for the transport
/// bits (`VERSION_1`, `RING_PACKED`, `ACCESS_PLATFORM`) and without `VIRTIO_` for the device's
/// (`BLK_F_FLUSH`, `NET_F_MAC`); `bitN` for a bit no table knows.
pub fn report_feature_name(name: &'static str) -> &'static str {
    name.strip_prefix("VIRTIO_F_")
        .or_else(|| name.strip_prefix("VIRTIO_"))
        .unwrap_or(name)
}

/// Adds the fields of the `virtio` record of `d` to `r` (a record started as `virtio`).
pub fn virtio_record<W: fmt::Write>(r: Record<W>, d: &DeviceReport) -> Record<W> {
    let ty = DeviceType(d.device_id);
    let names = |word: u64| {
        move |j: &mut crate::report::Json<'_>| {
            j.begin_array();
            for n in feature_names(ty, word) {
                j.str(report_feature_name(n));
            }
            j.end_array();
        }
    };
    let mut r = r
        .str("device", &d.device)
        .u64("device_id", d.device_id.into())
        .str("transport", d.transport)
        .str("location", &d.location)
        .hex("features_offered", d.features_offered)
        .json("features_offered_names", names(d.features_offered))
        .hex("features_accepted", d.features_accepted)
        .json("features_accepted_names", names(d.features_accepted))
        .json("access_platform", |j| {
            j.begin_object();
            j.key("offered");
            j.bool(d.features_offered & common::ACCESS_PLATFORM != 0);
            j.key("accepted");
            j.bool(d.features_accepted & common::ACCESS_PLATFORM != 0);
            j.end_object();
        })
        .json("queues", |j| {
            j.begin_array();
            for q in &d.queues {
                j.begin_object();
                j.key("index");
                j.u64(q.index.into());
                j.key("size");
                j.u64(q.size.into());
                j.key("ring");
                j.str(q.ring.as_str());
                j.key("indirect");
                j.bool(q.indirect);
                j.key("event_idx");
                j.bool(q.event_idx);
                j.end_object();
            }
            j.end_array();
        })
        .str("dma", d.dma.name)
        .str("dma_reason", d.dma.reason);
    if let Some(io) = &d.dma.iommu {
        r = r.json("iommu", |j| {
            j.begin_object();
            iommu_fields(j, &io.info, &io.stats);
            j.end_object();
        });
    }
    r = r
        .u64("requests", d.counters.requests)
        .u64("bytes_to_device", d.counters.bytes_to_device)
        .u64("bytes_from_device", d.counters.bytes_from_device)
        .u64("notifications", d.counters.notifications)
        .str("result", d.outcome.as_str());
    if let Outcome::Error(e) = &d.outcome {
        r = r.str("error", e);
    }
    match &d.specific {
        Specific::None => r,
        Specific::Blk(b) => r
            .opt_u64("capacity", b.capacity)
            .opt_u64("block_size", b.block_size.map(u64::from))
            .json("serial", |j| match &b.serial {
                Some(s) => j.str(s),
                None => j.null(),
            })
            .u64("read_bytes", b.read_bytes)
            .hex("read_crc32c", b.read_crc32c.into())
            .u64("read_us", b.read_us)
            .json("write", |j| match &b.write {
                Some((w, crc)) => {
                    j.begin_object();
                    j.key("offset");
                    j.u64(w.offset);
                    j.key("len");
                    j.u64(w.len);
                    j.key("seed");
                    j.hex(w.seed);
                    j.key("crc32c");
                    j.hex((*crc).into());
                    j.end_object();
                }
                None => j.null(),
            })
            .bool("flushed", b.flushed)
            .u64("req_bytes", b.req_bytes.into())
            .u64("max_in_flight", b.max_in_flight.into())
            .u64("random_reads", b.random_reads)
            .u64("random_bytes", b.random_bytes)
            .hex("random_crc32c", b.random_crc32c.into())
            .u64("random_us", b.random_us)
            .u64("write_us", b.write_us),
        Specific::Net(n) => r
            .json("mac", |j| match &n.mac {
                Some(m) => j.str(&net::mac_string(m)),
                None => j.null(),
            })
            .u64("frames_sent", n.frames_sent)
            .u64("frames_received", n.frames_received)
            .u64("frames_verified", n.frames_verified),
        Specific::Console(c) => r
            .u64("written_bytes", c.written_bytes)
            .hex("written_crc32c", c.written_crc32c.into())
            .u64("read_bytes", c.read.len() as u64)
            .hex("read_crc32c", crc32c(&c.read).into())
            .json("read_text", |j| match c.read_text() {
                Some(t) => j.str(t),
                None => j.null(),
            }),
        Specific::Rng(x) => r.u64("entropy_bytes", x.entropy_bytes),
    }
}

pub mod secure;

#[cfg(test)]
mod tests;
