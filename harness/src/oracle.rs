//! Host oracles for the virtio records: what the host set up ([`Expected`]) and what it found
//! after the run ([`Observed`]: the disk images, the echo backend's counts, the console port's
//! output) against what the guest reported (docs/report.md, `virtio` and "The data the guest
//! moves"). [`check`] returns every failure as a sentence that names the device, the field, what
//! it was and what it should have been; an empty list is a pass.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use secure_guest::{crc32c::crc32c, pattern};

use crate::devices::{Mac, Ring, Transport};
use crate::echo::{self, EchoStats};
use crate::report::{
    DeviceResult, Devtree, End, Event, Record, RingKind, Verdict, Virtio, VirtioBlk, VirtioConsole,
    VirtioNet, VirtioRng,
};
use crate::secure::{LegacyDevices, SecureExpect, SecureMode};

/// The contract's names for the transport feature bits an oracle looks at.
pub const VERSION_1: (u32, &str) = (32, "VERSION_1");
pub const ACCESS_PLATFORM: (u32, &str) = (33, "ACCESS_PLATFORM");
pub const RING_PACKED: (u32, &str) = (34, "RING_PACKED");

/// The guest reads at most this much of a disk when `sg.blk.read` is not given.
pub const DEFAULT_BLK_READ: u64 = 64 << 20;
/// The guest reads at most this much from the console when `sg.console.read` is not given.
pub const DEFAULT_CONSOLE_READ: u64 = 64;
/// QEMU's default logical block size.
pub const BLOCK_SIZE: u32 = 512;

/// The seed of the 16 pattern bytes in the console line.
pub const CONSOLE_SEED: u64 = 0xc0;

/// The line the guest writes to console port 0: 61 bytes.
pub fn console_line() -> Vec<u8> {
    let mut p = [0u8; 16];
    pattern::fill(CONSOLE_SEED, 0, &mut p);
    let mut line = b"secure-guest virtio-console ".to_vec();
    for b in p {
        line.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    line.push(b'\n');
    line
}

/// The pattern bytes of `seed` for `len` bytes at absolute offset `offset`.
pub fn pattern_bytes(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_pattern(seed, offset, &mut v);
    v
}

/// [`pattern::fill`], one splitmix64 per 8 bytes instead of per byte: the harness makes and
/// checks megabytes per run, in debug builds too. Pinned to `pattern::fill` by a test.
pub fn fill_pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    let head = ((8 - offset % 8) % 8).min(buf.len() as u64) as usize;
    let (head_buf, rest) = buf.split_at_mut(head);
    pattern::fill(seed, offset, head_buf);
    let mut word = (offset + head as u64) / 8;
    let mut words = rest.chunks_exact_mut(8);
    for w in &mut words {
        w.copy_from_slice(&pattern::splitmix64(seed ^ word).to_le_bytes());
        word += 1;
    }
    pattern::fill(seed, word * 8, words.into_remainder());
}

/// [`pattern::first_mismatch`] over [`fill_pattern`]: the first offset of `buf` (at absolute
/// offset `offset`) that does not hold the pattern.
pub fn first_pattern_mismatch(seed: u64, offset: u64, buf: &[u8]) -> Option<u64> {
    let mut want = vec![0u8; buf.len().min(1 << 16)];
    let mut at = 0usize;
    for chunk in buf.chunks(want.len().max(1)) {
        let w = &mut want[..chunk.len()];
        fill_pattern(seed, offset + at as u64, w);
        if chunk != w {
            let i = chunk.iter().zip(w.iter()).position(|(a, b)| a != b)?;
            return Some(offset + (at + i) as u64);
        }
        at += chunk.len();
    }
    None
}

/// A raw disk image the harness creates: the pattern of `seed` from offset 0, `size` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskImage {
    /// QEMU id of the drive.
    pub id: String,
    /// File name in the run directory.
    pub file: String,
    pub size: u64,
    pub seed: u64,
    /// What the device's get-id returns.
    pub serial: String,
}

impl DiskImage {
    /// The content before the run.
    pub fn content(&self) -> Vec<u8> {
        pattern_bytes(self.seed, 0, self.size as usize)
    }

    /// Writes the image into `dir`.
    pub fn create(&self, dir: &Path) -> Result<()> {
        let path = dir.join(&self.file);
        fs::write(&path, self.content()).with_context(|| format!("writing {}", path.display()))
    }
}

/// `sg.blk.write=OFFSET:LEN:SEED` (and `sg.blk.disk=N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteRequest {
    /// The N-th blk device in report order.
    pub disk: usize,
    pub offset: u64,
    pub len: u64,
    pub seed: u64,
}

impl WriteRequest {
    /// The guest command-line words.
    pub fn cmdline(&self) -> String {
        format!(
            "sg.blk.write={}:{}:{} sg.blk.disk={}",
            self.offset, self.len, self.seed, self.disk
        )
    }

    fn range(&self) -> std::ops::Range<u64> {
        self.offset..self.offset + self.len
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetExpect {
    pub mac: Mac,
    /// `sg.net.frames` (default 8).
    pub frames: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleExpect {
    /// What the host gave the guest to read.
    pub input: Vec<u8>,
    /// `sg.console.read` (default 64).
    pub read_limit: u64,
}

/// What the host set up for one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub transport: Transport,
    pub ring: Ring,
    /// In any order: the oracle finds each disk's record by its capacity, so sizes must differ.
    pub disks: Vec<DiskImage>,
    /// `sg.blk.read`, when given.
    pub blk_read: Option<u64>,
    pub write: Option<WriteRequest>,
    pub net: Option<NetExpect>,
    pub console: Option<ConsoleExpect>,
    pub rng: bool,
    /// Every device has `iommu_platform=on`: QEMU offers `ACCESS_PLATFORM` where the transport
    /// can (mmio v2, pci modern).
    pub iommu_platform: bool,
    /// `sg.secure` and friends; `None`: not given (the guest is not secure on these machines).
    pub secure: Option<SecureExpect>,
    /// The devices sit behind an IOMMU that translates their DMA once they negotiate
    /// `ACCESS_PLATFORM` (pseries: the PHB's TCE window), with these IOMMU options; `None`: no
    /// IOMMU in their way (or none that the host set up to translate).
    pub iommu: Option<IommuExpect>,
}

/// The IOMMU options of a run whose devices sit behind one (`sg.tce`, `sg.tce.batch`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IommuExpect {
    /// `sg.tce` (`dynamic`, `ddw`), when given.
    pub tce: Option<&'static str>,
    /// `sg.tce.batch=0`.
    pub no_batch: bool,
}

/// The DMA path a device should report (`virtio.dma`, `dma_reason`, `result`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaExpect {
    /// Not secure: `direct`, `not secure`.
    Direct,
    /// Secure: `bounce`, with the reason.
    Bounce(&'static str),
    /// Secure, no `ACCESS_PLATFORM`, `sg.legacy_devices=refuse`: result `refused`, dma `none`.
    Refused,
    /// Not secure, `ACCESS_PLATFORM` behind an IOMMU: `iommu`.
    Iommu,
    /// Secure, `ACCESS_PLATFORM` behind an IOMMU: `iommu+bounce`.
    IommuBounce,
}

impl DmaExpect {
    pub const NOT_SECURE: &'static str = "not secure";
    pub const NEGOTIATED: &'static str = "secure, ACCESS_PLATFORM negotiated";
    pub const LEGACY_BOUNCE: &'static str = "secure, no ACCESS_PLATFORM: sg.legacy_devices=bounce";
    pub const LEGACY_REFUSED: &'static str =
        "secure, no ACCESS_PLATFORM: refused (sg.legacy_devices=refuse)";
    pub const BEHIND_IOMMU: &'static str = "ACCESS_PLATFORM negotiated behind an IOMMU";
    pub const SECURE_BEHIND_IOMMU: &'static str =
        "secure, ACCESS_PLATFORM negotiated behind an IOMMU";

    /// `virtio.dma`.
    pub fn dma(self) -> &'static str {
        match self {
            DmaExpect::Direct => "direct",
            DmaExpect::Bounce(_) => "bounce",
            DmaExpect::Refused => "none",
            DmaExpect::Iommu => "iommu",
            DmaExpect::IommuBounce => "iommu+bounce",
        }
    }

    /// `virtio.dma_reason`.
    pub fn reason(self) -> &'static str {
        match self {
            DmaExpect::Direct => Self::NOT_SECURE,
            DmaExpect::Bounce(r) => r,
            DmaExpect::Refused => Self::LEGACY_REFUSED,
            DmaExpect::Iommu => Self::BEHIND_IOMMU,
            DmaExpect::IommuBounce => Self::SECURE_BEHIND_IOMMU,
        }
    }

    /// `virtio.result` of a device that works.
    pub fn result(self) -> DeviceResult {
        match self {
            DmaExpect::Refused => DeviceResult::Refused,
            _ => DeviceResult::Ok,
        }
    }
}

impl Expected {
    /// Whether QEMU offers `ACCESS_PLATFORM` to the guest: `iommu_platform=on` on a transport
    /// that has feature bits above 31.
    pub fn access_platform_offered(&self) -> bool {
        self.iommu_platform && !self.transport.is_legacy()
    }

    /// The DMA path every device should take (docs/report.md, `virtio.dma_reason`).
    pub fn dma_expect(&self) -> DmaExpect {
        let behind_iommu = self.iommu.is_some() && self.access_platform_offered();
        match &self.secure {
            Some(s) if s.mode == SecureMode::Emulate && behind_iommu => DmaExpect::IommuBounce,
            None if behind_iommu => DmaExpect::Iommu,
            Some(s) if s.mode == SecureMode::Emulate => {
                if self.access_platform_offered() {
                    DmaExpect::Bounce(DmaExpect::NEGOTIATED)
                } else if s.legacy_devices() == LegacyDevices::Bounce {
                    DmaExpect::Bounce(DmaExpect::LEGACY_BOUNCE)
                } else {
                    DmaExpect::Refused
                }
            }
            // `on` is rejected on these machines: no device is touched at all.
            _ => DmaExpect::Direct,
        }
    }

    /// Whether the device should offer and the driver accept `RING_PACKED`.
    pub fn packed_offered(&self) -> bool {
        self.ring == Ring::Packed && !self.transport.is_legacy()
    }

    fn count(&self, kind: &str) -> usize {
        match kind {
            "blk" => self.disks.len(),
            "net" => usize::from(self.net.is_some()),
            "console" => usize::from(self.console.is_some()),
            "rng" => usize::from(self.rng),
            _ => 0,
        }
    }

    /// The guest command line the expectations stand for (empty words left out).
    pub fn cmdline(&self) -> String {
        let mut words = Vec::new();
        if let Some(n) = self.blk_read {
            words.push(format!("sg.blk.read={n}"));
        }
        if let Some(w) = &self.write {
            words.push(w.cmdline());
        }
        if let Some(n) = &self.net
            && n.frames != echo::DEFAULT_FRAMES
        {
            words.push(format!("sg.net.frames={}", n.frames));
        }
        if let Some(c) = &self.console
            && c.read_limit != DEFAULT_CONSOLE_READ
        {
            words.push(format!("sg.console.read={}", c.read_limit));
        }
        if let Some(s) = &self.secure {
            words.push(s.cmdline());
        }
        if let Some(i) = &self.iommu {
            if let Some(t) = i.tce {
                words.push(format!("sg.tce={t}"));
            }
            if i.no_batch {
                words.push("sg.tce.batch=0".into());
            }
        }
        words.join(" ")
    }
}

/// What the host found after QEMU exited, besides the report.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Each of [`Expected::disks`] as it is now (`None`: could not be read).
    pub disks_after: Vec<Option<Vec<u8>>>,
    pub echo: Option<EchoStats>,
    /// What the console port's chardev holds.
    pub console_output: Option<Vec<u8>>,
}

/// Every failure, as sentences; empty means the records and the host agree.
pub fn check(expected: &Expected, records: &[Record], observed: &Observed) -> Vec<String> {
    let mut f = Vec::new();
    let mut sizes = BTreeSet::new();
    for d in &expected.disks {
        if !sizes.insert(d.size) {
            f.push(format!(
                "harness setup: two disks are {} bytes; the oracle tells disks apart by size",
                d.size
            ));
            return f;
        }
    }
    let originals: Vec<Vec<u8>> = expected.disks.iter().map(DiskImage::content).collect();

    let mut views = Vec::new();
    for r in records.iter().filter(|r| r.event == Virtio::NAME) {
        match r.view::<Virtio>() {
            Ok(v) => views.push((r, v)),
            Err(e) => f.push(format!(
                "console line {}: `virtio` record does not match docs/report.md: {e}",
                r.line
            )),
        }
    }
    if views.is_empty() && f.is_empty() {
        f.push(format!(
            "no `virtio` records: the guest reported no virtio device (expected {})",
            expected_devices(expected)
        ));
        // A guest that did nothing must not have changed anything either.
        for (i, d) in expected.disks.iter().enumerate() {
            if let Some(e) = untouched(d, &originals[i], observed.disks_after.get(i)) {
                f.push(e);
            }
        }
        return f;
    }

    f.extend(check_end(records));

    // The set of devices.
    for kind in ["blk", "net", "console", "rng"] {
        let n = views.iter().filter(|(_, v)| v.device == kind).count();
        let want = expected.count(kind);
        if n != want {
            f.push(format!(
                "{n} `{kind}` record(s), but the machine has {want} {kind} device(s)"
            ));
        }
    }
    for (r, v) in &views {
        if !["blk", "net", "console", "rng"].contains(&v.device.as_str()) {
            f.push(format!(
                "console line {}: a `{}` device (id {}) that the harness did not add",
                r.line, v.device, v.device_id
            ));
        }
    }

    // What every record must say.
    let devtree: Option<Devtree> = records.iter().find_map(|r| r.view().ok());
    let mut locations = BTreeSet::new();
    for (r, v) in &views {
        let who = who(r, v);
        f.extend(check_common(expected, v, &who));
        if !locations.insert(v.location.clone()) {
            f.push(format!(
                "{who}: location {:?} is reported twice",
                v.location
            ));
        }
        if let Some(dt) = &devtree {
            f.extend(check_location(expected.transport, v, dt, &who));
        }
    }

    // blk: each record is one of the disks, told apart by capacity (a failed device may still
    // say its capacity; its data is not checked).
    let blks: Vec<_> = views.iter().filter(|(_, v)| v.device == "blk").collect();
    let mut matched: Vec<Option<(usize, bool)>> = Vec::new();
    let mut disk_taken = vec![false; expected.disks.len()];
    // Images whose device was refused: never given memory, so never written.
    let mut refused_image = vec![false; expected.disks.len()];
    for (n, (r, v)) in blks.iter().enumerate() {
        let who = format!("blk #{n} ({})", who(r, v));
        let ok = v.result == DeviceResult::Ok;
        let blk = match r.view::<VirtioBlk>() {
            Ok(b) => b,
            Err(e) => {
                if ok {
                    f.push(format!(
                        "{who}: device fields do not match docs/report.md: {e}"
                    ));
                }
                matched.push(None);
                continue;
            }
        };
        let Some(i) = expected.disks.iter().position(|d| d.size == blk.capacity) else {
            if ok {
                f.push(format!(
                    "{who}: capacity {} is the size of no disk ({})",
                    blk.capacity,
                    expected
                        .disks
                        .iter()
                        .map(|d| format!("{} {} bytes", d.file, d.size))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            matched.push(None);
            continue;
        };
        if disk_taken[i] {
            f.push(format!(
                "{who}: {} is reported twice",
                expected.disks[i].file
            ));
        }
        disk_taken[i] = true;
        if v.result == DeviceResult::Refused {
            refused_image[i] = true;
        }
        matched.push(Some((i, ok)));
        if ok {
            let named = expected.write.filter(|w| w.disk == n);
            f.extend(check_blk(
                &expected.disks[i],
                &originals[i],
                &blk,
                expected.blk_read,
                named.as_ref(),
                &who,
            ));
        }
    }
    // The images themselves: the named one holds the write, every other one is unchanged. When
    // the named device failed, its image is not checked (it may hold part of the write).
    let named = expected
        .write
        .map(|w| (w, matched.get(w.disk).copied().flatten()));
    let failed_device = blks.iter().any(|(_, v)| v.result != DeviceResult::Ok);
    // Only refused blk devices: none was given memory, so no image may change.
    let all_refused = blks.iter().all(|(_, v)| v.result == DeviceResult::Refused);
    match named {
        Some((w, None)) if !failed_device => f.push(format!(
            "sg.blk.disk={} names no blk record that matches a disk image: cannot tell which \
             image the guest should have written",
            w.disk
        )),
        _ => {}
    }
    for (i, d) in expected.disks.iter().enumerate() {
        let after = observed.disks_after.get(i);
        if refused_image[i] || all_refused {
            f.extend(untouched(d, &originals[i], after));
            continue;
        }
        match named {
            Some((w, Some((wi, true)))) if wi == i => {
                f.extend(check_write_applied(d, &originals[i], after, &w))
            }
            Some((_, Some((wi, false)))) if wi == i => {}
            // A failed blk device that cannot be told apart could be the named one.
            Some((_, None)) if failed_device => {}
            _ => f.extend(untouched(d, &originals[i], after)),
        }
    }

    // net, console, rng.
    for (r, v) in &views {
        let who = who(r, v);
        if v.result == DeviceResult::Refused {
            f.extend(check_refused_data(v, observed, &who));
            continue;
        }
        let found = match v.device.as_str() {
            "net" => specific::<VirtioNet>(r, v, &who).map(|n| match &expected.net {
                Some(e) => check_net(e, &n, observed.echo.as_ref(), &who),
                None => Vec::new(),
            }),
            "console" => specific::<VirtioConsole>(r, v, &who).map(|c| match &expected.console {
                Some(e) => check_console(e, &c, observed.console_output.as_deref(), &who),
                None => Vec::new(),
            }),
            "rng" => specific::<VirtioRng>(r, v, &who).map(|x| {
                if x.entropy_bytes == 0 {
                    vec![format!("{who}: entropy_bytes is 0")]
                } else {
                    Vec::new()
                }
            }),
            _ => Ok(Vec::new()),
        };
        match found {
            Ok(x) | Err(x) => f.extend(x),
        }
    }
    f
}

/// A refused device moved nothing: no frames reached the echo backend, nothing reached the
/// console port. (A refused disk's image is checked with the others: unchanged.)
fn check_refused_data(v: &Virtio, observed: &Observed, who: &str) -> Vec<String> {
    let mut f = Vec::new();
    match v.device.as_str() {
        "net" => {
            if let Some(s) = &observed.echo
                && s.frames_seen > 0
            {
                f.push(format!(
                    "{who}: refused, but the echo backend received {} frames",
                    s.frames_seen
                ));
            }
        }
        "console" => {
            if let Some(out) = &observed.console_output
                && !out.is_empty()
            {
                f.push(format!(
                    "{who}: refused, but the console port received {} bytes",
                    out.len()
                ));
            }
        }
        _ => {}
    }
    f
}

/// `end.errors` counts every error the report shows, a failed device's included, and a run
/// with errors does not pass.
fn check_end(records: &[Record]) -> Vec<String> {
    let Some(end) = records.iter().find_map(|r| r.view::<End>().ok()) else {
        return Vec::new();
    };
    let count = |event: &str, pred: &dyn Fn(&Record) -> bool| {
        records
            .iter()
            .filter(|r| r.event == event && pred(r))
            .count() as u64
    };
    let field_is = |k: &'static str, v: &'static str| {
        move |r: &Record| r.get(k).and_then(|x| x.as_str()) == Some(v)
    };
    let devices = count("virtio", &field_is("result", "error"));
    let errors = count("option", &field_is("level", "error"))
        + count("error", &|_| true)
        + count("exception", &|_| true)
        + count("panic", &|_| true)
        + devices;
    let mut f = Vec::new();
    if end.errors != errors {
        f.push(format!(
            "end.errors is {}, but the report shows {errors} errors ({devices} of them failed \
             virtio devices)",
            end.errors
        ));
    }
    if errors > 0 && end.verdict == Verdict::Pass {
        f.push(format!("end.verdict is pass despite {errors} errors"));
    }
    f
}

fn expected_devices(e: &Expected) -> String {
    let mut v = Vec::new();
    for kind in ["blk", "net", "console", "rng"] {
        match e.count(kind) {
            0 => {}
            1 => v.push(kind.to_string()),
            n => v.push(format!("{n}x {kind}")),
        }
    }
    format!("{} over {}", v.join(", "), e.transport.report_name())
}

fn who(r: &Record, v: &Virtio) -> String {
    format!("{} at {} (console line {})", v.device, v.location, r.line)
}

/// The device-specific view of a record, when its result is `ok` (otherwise the common check
/// has already failed it).
fn specific<T: Event>(r: &Record, v: &Virtio, who: &str) -> Result<T, Vec<String>> {
    if v.result != DeviceResult::Ok {
        return Err(Vec::new());
    }
    r.view::<T>().map_err(|e| {
        vec![format!(
            "{who}: device fields do not match docs/report.md: {e}"
        )]
    })
}

fn has_bit(word: u64, bit: u32) -> bool {
    word & (1u64 << bit) != 0
}

/// `result`, `dma`, `transport`, `device_id`, features and queues.
pub fn check_common(e: &Expected, v: &Virtio, who: &str) -> Vec<String> {
    let mut f = Vec::new();
    let dma = e.dma_expect();
    if v.result != dma.result() {
        f.push(format!(
            "{who}: result {}{}, expected {}{}",
            v.result.as_str(),
            v.error
                .as_deref()
                .map_or(String::new(), |e| format!(": {e}")),
            dma.result().as_str(),
            if dma == DmaExpect::Refused {
                " (secure, no ACCESS_PLATFORM, sg.legacy_devices=refuse)"
            } else {
                ""
            }
        ));
    }
    if v.dma != dma.dma() {
        f.push(format!(
            "{who}: dma {:?}, expected {:?} ({})",
            v.dma,
            dma.dma(),
            dma.reason()
        ));
    }
    match (&v.dma_reason, e.secure.is_some()) {
        (Some(r), _) if r != dma.reason() => f.push(format!(
            "{who}: dma_reason {r:?}, expected {:?}",
            dma.reason()
        )),
        (None, true) => f.push(format!(
            "{who}: no dma_reason (docs/report.md: every virtio record says why its DMA path), \
             expected {:?}",
            dma.reason()
        )),
        _ => {}
    }
    let refused = v.result == DeviceResult::Refused;
    if refused
        && (v.requests != 0
            || v.bytes_to_device != 0
            || v.bytes_from_device != 0
            || !v.queues.is_empty())
    {
        f.push(format!(
            "{who}: refused, so never given memory, but it reports {} requests, {} bytes to and \
             {} bytes from the device, {} queues",
            v.requests,
            v.bytes_to_device,
            v.bytes_from_device,
            v.queues.len()
        ));
    }
    let ap_offered = has_bit(v.features_offered.0, ACCESS_PLATFORM.0);
    if ap_offered != e.access_platform_offered() {
        f.push(format!(
            "{who}: ACCESS_PLATFORM {} offered, but the host set iommu_platform={} on {}",
            if ap_offered { "is" } else { "is not" },
            if e.iommu_platform { "on" } else { "off" },
            e.transport.report_name()
        ));
    }
    if matches!(
        dma,
        DmaExpect::Bounce(DmaExpect::NEGOTIATED) | DmaExpect::Iommu | DmaExpect::IommuBounce
    ) && !refused
        && !has_bit(v.features_accepted.0, ACCESS_PLATFORM.0)
    {
        f.push(format!(
            "{who}: dma {} because ACCESS_PLATFORM was negotiated, but features_accepted \
             lacks it",
            dma.dma()
        ));
    }
    if v.transport != e.transport.report_name() {
        f.push(format!(
            "{who}: transport {:?}, but the host set up {:?}",
            v.transport,
            e.transport.report_name()
        ));
    }
    let id = match v.device.as_str() {
        "net" => Some(1),
        "blk" => Some(2),
        "console" => Some(3),
        "rng" => Some(4),
        _ => None,
    };
    if let Some(id) = id
        && v.device_id != id
    {
        f.push(format!("{who}: device_id {}, expected {id}", v.device_id));
    }
    let (offered, accepted) = (v.features_offered.0, v.features_accepted.0);
    if accepted & !offered != 0 {
        f.push(format!(
            "{who}: features_accepted {:#x} has bits that were not offered ({:#x})",
            accepted, offered
        ));
    }
    for (bit, name) in [VERSION_1, ACCESS_PLATFORM, RING_PACKED] {
        for (word, names, what) in [
            (offered, &v.features_offered_names, "offered"),
            (accepted, &v.features_accepted_names, "accepted"),
        ] {
            let named = names.iter().any(|n| n == name);
            if named != has_bit(word, bit) {
                f.push(format!(
                    "{who}: features_{what} {} bit {bit} but features_{what}_names {} \
                     {name:?} ({names:?})",
                    if has_bit(word, bit) { "has" } else { "lacks" },
                    if named { "has" } else { "lacks" },
                ));
            }
        }
    }
    if v.access_platform.offered != has_bit(offered, ACCESS_PLATFORM.0)
        || v.access_platform.accepted != has_bit(accepted, ACCESS_PLATFORM.0)
    {
        f.push(format!(
            "{who}: access_platform {:?} does not match the feature words",
            v.access_platform
        ));
    }
    if e.transport.is_legacy() {
        if offered >> 32 != 0 {
            f.push(format!(
                "{who}: a legacy transport offers only bits 0..31, but features_offered is {offered:#x}"
            ));
        }
    } else {
        // A refused device was set to FAILED: what it accepted (if anything) is not checked.
        let words: &[(u64, &str)] = if refused {
            &[(offered, "offered")]
        } else {
            &[(offered, "offered"), (accepted, "accepted")]
        };
        for &(word, what) in words {
            if !has_bit(word, VERSION_1.0) {
                f.push(format!("{who}: VERSION_1 not {what} on a modern transport"));
            }
        }
    }
    let packed_asked = e.ring == Ring::Packed;
    if has_bit(offered, RING_PACKED.0) != e.packed_offered() {
        f.push(format!(
            "{who}: RING_PACKED {} offered, but the host asked for {} on {}",
            if has_bit(offered, RING_PACKED.0) {
                "is"
            } else {
                "is not"
            },
            e.ring,
            e.transport.report_name()
        ));
    }
    let packed_accepted = has_bit(accepted, RING_PACKED.0);
    if !refused && packed_accepted != (packed_asked && has_bit(offered, RING_PACKED.0)) {
        f.push(format!(
            "{who}: RING_PACKED {} accepted although it {} offered",
            if packed_accepted { "is" } else { "is not" },
            if has_bit(offered, RING_PACKED.0) {
                "was"
            } else {
                "was not"
            },
        ));
    }
    if v.result == DeviceResult::Ok {
        if v.queues.is_empty() {
            f.push(format!("{who}: no queues"));
        }
        let want = if packed_accepted {
            RingKind::Packed
        } else {
            RingKind::Split
        };
        for q in &v.queues {
            if q.ring != want {
                f.push(format!(
                    "{who}: queue {} is {:?}, but RING_PACKED is {}accepted",
                    q.index,
                    q.ring,
                    if packed_accepted { "" } else { "not " }
                ));
            }
            if q.size == 0 {
                f.push(format!("{who}: queue {} has size 0", q.index));
            }
        }
    }
    f
}

/// The location is one the device tree or PCI scan showed: a virtio-mmio node or a virtio PCI
/// function.
fn check_location(t: Transport, v: &Virtio, dt: &Devtree, who: &str) -> Vec<String> {
    let known: Vec<&str> = if t.is_mmio() {
        dt.virtio_mmio.iter().map(|m| m.path.as_str()).collect()
    } else {
        dt.pci
            .iter()
            .filter(|p| p.virtio)
            .map(|p| p.bdf.as_str())
            .collect()
    };
    if known.contains(&v.location.as_str()) {
        Vec::new()
    } else {
        vec![format!(
            "{who}: location {:?} is not among the devtree record's {} ({known:?})",
            v.location,
            if t.is_mmio() {
                "virtio_mmio paths"
            } else {
                "virtio PCI functions"
            }
        )]
    }
}

/// One blk record against its disk image.
pub fn check_blk(
    disk: &DiskImage,
    original: &[u8],
    blk: &VirtioBlk,
    read_limit: Option<u64>,
    write: Option<&WriteRequest>,
    who: &str,
) -> Vec<String> {
    let mut f = Vec::new();
    let who = format!("{who} = {}", disk.file);
    if blk.capacity != disk.size {
        f.push(format!(
            "{who}: capacity {}, image is {} bytes",
            blk.capacity, disk.size
        ));
    }
    if blk.block_size != BLOCK_SIZE {
        f.push(format!(
            "{who}: block_size {}, QEMU's is {BLOCK_SIZE}",
            blk.block_size
        ));
    }
    if let Some(s) = &blk.serial
        && *s != disk.serial
    {
        f.push(format!(
            "{who}: serial {s:?}, the drive's is {:?}",
            disk.serial
        ));
    }
    let want_read = read_limit.unwrap_or(DEFAULT_BLK_READ).min(disk.size);
    if blk.read_bytes != want_read {
        f.push(format!(
            "{who}: read_bytes {}, expected {want_read} (the first {} bytes, at most the disk)",
            blk.read_bytes,
            read_limit.map_or("64 MiB".to_string(), |n| n.to_string())
        ));
    }
    let n = (blk.read_bytes.min(disk.size)) as usize;
    let before = crc32c(&original[..n]);
    // Whether the guest read before or after it wrote is not in the contract: when the write
    // overlaps what was read, either content is right.
    let mut accepted = vec![before];
    if let Some(w) = write
        && w.offset < n as u64
    {
        let mut written = original[..n].to_vec();
        let end = (w.offset + w.len).min(n as u64);
        fill_pattern(
            w.seed,
            w.offset,
            &mut written[w.offset as usize..end as usize],
        );
        accepted.push(crc32c(&written));
    }
    if !accepted.contains(&(blk.read_crc32c.0 as u32)) || blk.read_crc32c.0 > u32::MAX.into() {
        f.push(format!(
            "{who}: read_crc32c {}, but the image's first {n} bytes give {:#010x}{}",
            blk.read_crc32c,
            before,
            if accepted.len() > 1 {
                format!(" ({:#010x} with the write applied)", accepted[1])
            } else {
                String::new()
            }
        ));
    }
    match (write, &blk.write) {
        (None, None) => {}
        (None, Some(w)) => f.push(format!(
            "{who}: reports a write ({w:?}) but sg.blk.disk names another disk"
        )),
        (Some(_), None) => f.push(format!(
            "{who}: write is null, but sg.blk.write asked this disk for one"
        )),
        (Some(want), Some(got)) => {
            if (got.offset, got.len, got.seed.0) != (want.offset, want.len, want.seed) {
                f.push(format!(
                    "{who}: write {{offset {}, len {}, seed {}}}, asked {{offset {}, len {}, seed {:#x}}}",
                    got.offset, got.len, got.seed, want.offset, want.len, want.seed
                ));
            }
            let crc = crc32c(&pattern_bytes(want.seed, want.offset, want.len as usize));
            if got.crc32c.0 != u64::from(crc) {
                f.push(format!(
                    "{who}: write.crc32c {}, the pattern's is {crc:#010x}",
                    got.crc32c
                ));
            }
        }
    }
    f
}

/// The image holds the pattern in the written range and its old content everywhere else.
pub fn check_write_applied(
    disk: &DiskImage,
    original: &[u8],
    after: Option<&Option<Vec<u8>>>,
    w: &WriteRequest,
) -> Vec<String> {
    let who = format!("{} after the run", disk.file);
    let Some(Some(after)) = after else {
        return vec![format!("{who}: could not be read")];
    };
    if after.len() != original.len() {
        return vec![format!(
            "{who}: is {} bytes, was {}",
            after.len(),
            original.len()
        )];
    }
    let r = w.range();
    if r.end > after.len() as u64 {
        return vec![format!(
            "{who}: the write {}..{} does not fit the {}-byte image",
            r.start,
            r.end,
            after.len()
        )];
    }
    let (s, e) = (r.start as usize, r.end as usize);
    let mut f = Vec::new();
    if first_pattern_mismatch(w.seed, w.offset, &original[s..e]).is_none() {
        f.push(format!(
            "harness setup: {} already held the pattern of seed {:#x} at {s}..{e}",
            disk.file, w.seed
        ));
    }
    if let Some(o) = first_pattern_mismatch(w.seed, w.offset, &after[s..e]) {
        let untouched = after[s..e] == original[s..e];
        f.push(format!(
            "{who}: bytes {s}..{e} do not hold the pattern of seed {:#x}: first wrong byte at \
             offset {o}{}",
            w.seed,
            if untouched {
                " (the range is unchanged: nothing was written)"
            } else {
                ""
            }
        ));
    }
    if let Some(o) = first_difference(&original[..s], &after[..s]) {
        f.push(format!(
            "{who}: changed at offset {o}, before the written range {s}..{e}"
        ));
    }
    if let Some(o) = first_difference(&original[e..], &after[e..]) {
        f.push(format!(
            "{who}: changed at offset {}, after the written range {s}..{e}",
            e + o
        ));
    }
    f
}

/// The image is exactly as it was.
fn untouched(disk: &DiskImage, original: &[u8], after: Option<&Option<Vec<u8>>>) -> Option<String> {
    let who = format!("{} after the run", disk.file);
    match after {
        Some(Some(a)) if a.len() != original.len() => Some(format!(
            "{who}: is {} bytes, was {} (not named by sg.blk.disk)",
            a.len(),
            original.len()
        )),
        Some(Some(a)) => first_difference(original, a)
            .map(|o| format!("{who}: changed at offset {o}, but no write was asked of it")),
        _ => Some(format!("{who}: could not be read")),
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    let n = a.len().min(b.len());
    if a[..n] == b[..n] {
        return None;
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// The net record against the echo backend.
pub fn check_net(e: &NetExpect, n: &VirtioNet, echo: Option<&EchoStats>, who: &str) -> Vec<String> {
    let mut f = Vec::new();
    match n.mac.parse::<Mac>() {
        Ok(m) if m == e.mac => {}
        _ => f.push(format!("{who}: mac {:?}, the device's is {}", n.mac, e.mac)),
    }
    let want = u64::from(e.frames);
    if n.frames_sent != want {
        f.push(format!(
            "{who}: frames_sent {}, expected {want} (sg.net.frames)",
            n.frames_sent
        ));
    }
    if n.frames_verified != n.frames_sent {
        f.push(format!(
            "{who}: frames_verified {} of frames_sent {}",
            n.frames_verified, n.frames_sent
        ));
    }
    if n.frames_received < n.frames_verified {
        f.push(format!(
            "{who}: frames_received {} < frames_verified {}",
            n.frames_received, n.frames_verified
        ));
    }
    let Some(s) = echo else {
        f.push(format!("{who}: no echo backend ran"));
        return f;
    };
    if s.connections == 0 {
        f.push(format!("{who}: QEMU never connected to the echo backend"));
        return f;
    }
    if s.frames_well_formed != n.frames_sent {
        f.push(format!(
            "{who}: the backend saw {} well-formed frames (of {}), the guest says it sent {}",
            s.frames_well_formed, s.frames_seen, n.frames_sent
        ));
    }
    if s.frames_echoed != s.frames_well_formed {
        f.push(format!(
            "{who}: the backend echoed {} of {} frames",
            s.frames_echoed, s.frames_well_formed
        ));
    }
    let seqs: Vec<u32> = s.seqs.keys().copied().collect();
    let want_seqs: Vec<u32> = (0..n.frames_sent.min(1 << 20) as u32).collect();
    if seqs != want_seqs || s.seqs.values().any(|&c| c != 1) {
        f.push(format!(
            "{who}: frame seq numbers seen {:?}, expected each of 0..{} once",
            s.seqs, n.frames_sent
        ));
    }
    if s.sources.iter().any(|m| *m != e.mac) {
        f.push(format!(
            "{who}: frames came from {:?}, not the device MAC {}",
            s.sources.iter().map(Mac::to_string).collect::<Vec<_>>(),
            e.mac
        ));
    }
    for p in &s.problems {
        f.push(format!("{who}: echo backend: {p}"));
    }
    f
}

/// The console record against the port's output and what the host sent.
pub fn check_console(
    e: &ConsoleExpect,
    c: &VirtioConsole,
    output: Option<&[u8]>,
    who: &str,
) -> Vec<String> {
    let mut f = Vec::new();
    let line = console_line();
    match output {
        None => f.push(format!(
            "{who}: the console port's output file could not be read"
        )),
        Some(out) if out != line.as_slice() => f.push(format!(
            "{who}: the console port received {} bytes {:?}, expected the {}-byte line {:?}",
            out.len(),
            String::from_utf8_lossy(&out[..out.len().min(200)]),
            line.len(),
            String::from_utf8_lossy(&line)
        )),
        Some(_) => {}
    }
    if c.written_bytes != line.len() as u64 {
        f.push(format!(
            "{who}: written_bytes {}, expected {}",
            c.written_bytes,
            line.len()
        ));
    }
    let crc = crc32c(&line);
    if c.written_crc32c.0 != u64::from(crc) {
        f.push(format!(
            "{who}: written_crc32c {}, the line's is {crc:#010x}",
            c.written_crc32c
        ));
    }
    // The guest reads until a newline or read_limit bytes. Whether the newline is counted is
    // not pinned by the contract: both are accepted, and the CRC must fit the count.
    let upto = e
        .input
        .iter()
        .position(|&b| b == b'\n')
        .map_or(e.input.len(), |i| i + 1);
    let full = (upto as u64).min(e.read_limit);
    let newline_read = full > 0 && e.input.get(full as usize - 1) == Some(&b'\n');
    let ok_counts: Vec<u64> = if newline_read {
        vec![full, full - 1]
    } else {
        vec![full]
    };
    if !ok_counts.contains(&c.read_bytes) {
        f.push(format!(
            "{who}: read_bytes {}, expected {} (the host sent {:?})",
            c.read_bytes,
            ok_counts
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" or "),
            String::from_utf8_lossy(&e.input)
        ));
        return f;
    }
    let read = &e.input[..c.read_bytes as usize];
    let crc = crc32c(read);
    if c.read_crc32c.0 != u64::from(crc) {
        f.push(format!(
            "{who}: read_crc32c {}, but the {} bytes the host sent give {crc:#010x}",
            c.read_crc32c,
            read.len()
        ));
    }
    let text = String::from_utf8_lossy(read);
    let printable = read
        .strip_suffix(b"\n")
        .unwrap_or(read)
        .iter()
        .all(|b| (0x20..0x7f).contains(b));
    match &c.read_text {
        Some(t) if *t == text || Some(t.as_str()) == text.strip_suffix('\n') => {}
        Some(t) => f.push(format!("{who}: read_text {t:?}, the host sent {text:?}")),
        // Is a newline "printable"? Not pinned either: null is fine when one was read.
        None if printable && read.len() <= 256 && !read.contains(&b'\n') => f.push(format!(
            "{who}: read_text is missing, but what was read is printable: {text:?}"
        )),
        None => {}
    }
    f
}

/// Reads the images back after a run.
pub fn read_disks(dir: &Path, disks: &[DiskImage]) -> Vec<Option<Vec<u8>>> {
    disks
        .iter()
        .map(|d| fs::read(dir.join(&d.file)).ok())
        .collect()
}

/// `pattern --check`: whether `len` bytes of `file` at `offset` hold the pattern of `seed`.
pub fn check_file_region(file: &Path, seed: u64, offset: u64, len: u64) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut fh = fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let size = fh.metadata()?.len();
    let end = offset.checked_add(len).context("offset + len overflows")?;
    if end > size {
        bail!(
            "{} is {size} bytes: it has no bytes {offset}..{end}",
            file.display()
        );
    }
    fh.seek(SeekFrom::Start(offset))?;
    let mut at = offset;
    let mut buf = vec![0u8; 1 << 20];
    while at < end {
        let n = ((end - at) as usize).min(buf.len());
        fh.read_exact(&mut buf[..n])?;
        if let Some(o) = first_pattern_mismatch(seed, at, &buf[..n]) {
            let mut want = [0u8; 1];
            pattern::fill(seed, o, &mut want);
            bail!(
                "{}: offset {o} holds {:#04x}, the pattern of seed {seed:#x} has {:#04x} there",
                file.display(),
                buf[(o - at) as usize],
                want[0]
            );
        }
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
