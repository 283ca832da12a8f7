//! The memory-dump oracle of a secure guest: proof, from the host, that the guest's private
//! memory never reached the shared swiotlb pool through which all device DMA goes.
//!
//! The guest runs with `sg.secure=emulate` ([`SecureExpect`]), QEMU is held at its power-off
//! ([`crate::QemuConfig::hold_at_shutdown`]) and the harness dumps the ranges its report names
//! ([`crate::dump`]). [`check`] then holds the report and the dumps against docs/report.md
//! (`secure`, `swiotlb`, `secret`, `swiotlb_stats`, `virtio.dma`), each failure a sentence:
//!
//! - **(a) no secret in shared memory**: the pool (and any other range left shared) holds no
//!   secret-marked record ([`secure_guest::platform::secret`]), and not even the bare
//!   `SG-SECRET` magic of a partial copy.
//! - **(b) no payload left in the pool**: with `swiotlb_stats.live_bytes` 0 every slot was
//!   released, and released slots are zeroed, so the whole pool must be zero (rings included:
//!   they are freed when each device is reset). Whatever the stats say, no run of 64 bytes (the
//!   whole payload, when shorter) of the data the harness gave or got from the devices (disk
//!   contents, the written pattern, net frames and echoes, console lines) may be in the pool;
//!   [`find_payloads`] says which payload, where, and how much.
//! - **(c) the scan works**: every `secret` region holds valid marks, back to back, as
//!   `secret::fill` writes them. A dump of private memory shows them, so a dump of the pool that
//!   shows none means something.
//! - **(d) the data still arrived**: the virtio oracles ([`crate::oracle::check`]) pass with the
//!   devices on the bounce path.
//! - **(e) the decision**: `secure` says `secure: true`, `platform: emulated`, `action:
//!   proceed`; every device's `dma`, `dma_reason` and `result` are what the configuration implies
//!   ([`crate::oracle::DmaExpect`]); the pool is page-aligned RAM, shared, nowhere else.
//! - **(f) the books balance**: `swiotlb_stats.live_bytes` 0, `unzeroed_releases` 0, as many
//!   unmaps as maps, and at least the devices' payload bytes bounced each way.
//!
//! With `sg.secure=on` (not possible on these machines) the guest must fail closed
//! ([`check_reject`]): `secure.action` `reject`, `end` right after it with verdict `reject`, no
//! device touched, nothing shared.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::str::FromStr;

use anyhow::{Result, bail};
use secure_guest::platform::secret;

use crate::dump::{self, Dump};
use crate::echo;
use crate::oracle::{self, DmaExpect, Expected, Observed};
use crate::report::{
    Boot, End, Event, Heap, MemoryKind, Record, Secret, Secure, SecureAction, Swiotlb,
    SwiotlbStats, Verdict, Virtio,
};
use crate::run::{Held, RunResult};

/// `sg.secure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecureMode {
    /// `emulate`: the guest runs the whole secure path on the `emulated` platform.
    Emulate,
    /// `on`: secure or nothing; on machines without PEF, SEV or TDX the guest rejects.
    On,
}

impl SecureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SecureMode::Emulate => "emulate",
            SecureMode::On => "on",
        }
    }
}

impl fmt::Display for SecureMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SecureMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "emulate" => Ok(SecureMode::Emulate),
            "on" => Ok(SecureMode::On),
            _ => bail!("unknown secure mode {s:?} (emulate, on)"),
        }
    }
}

/// `sg.legacy_devices`: what a secure guest does with a device that lacks `ACCESS_PLATFORM`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LegacyDevices {
    /// The default: set it to FAILED, never give it memory.
    Refuse,
    /// Put it on the bounce path anyway.
    Bounce,
}

impl LegacyDevices {
    pub fn as_str(self) -> &'static str {
        match self {
            LegacyDevices::Refuse => "refuse",
            LegacyDevices::Bounce => "bounce",
        }
    }
}

impl fmt::Display for LegacyDevices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LegacyDevices {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "refuse" => Ok(LegacyDevices::Refuse),
            "bounce" => Ok(LegacyDevices::Bounce),
            _ => bail!("unknown sg.legacy_devices value {s:?} (refuse, bounce)"),
        }
    }
}

/// The secure options of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecureExpect {
    pub mode: SecureMode,
    /// `sg.legacy_devices`; `None`: not given (the guest's default, `refuse`).
    pub legacy: Option<LegacyDevices>,
    /// `sg.debug.leak=1`: released slots are not zeroed (the negative control: the oracle must
    /// fail).
    pub leak: bool,
    /// `sg.swiotlb` (bytes); `None`: the default, 4 MiB.
    pub pool_size: Option<u64>,
}

/// The pool size when `sg.swiotlb` is not given (docs/report.md, `swiotlb.size`).
pub const DEFAULT_POOL_SIZE: u64 = 4 << 20;

/// Payload runs at least this long count as payload left in the pool (shorter payloads: all of
/// them).
pub const PAYLOAD_WINDOW: usize = 64;
/// Payloads shorter than this are not looked for (a few bytes match by chance).
pub const MIN_PAYLOAD: usize = 16;

impl SecureExpect {
    pub fn emulate() -> SecureExpect {
        SecureExpect {
            mode: SecureMode::Emulate,
            legacy: None,
            leak: false,
            pool_size: None,
        }
    }

    pub fn on() -> SecureExpect {
        SecureExpect {
            mode: SecureMode::On,
            ..SecureExpect::emulate()
        }
    }

    /// What the guest does with devices without `ACCESS_PLATFORM`.
    pub fn legacy_devices(&self) -> LegacyDevices {
        self.legacy.unwrap_or(LegacyDevices::Refuse)
    }

    /// The guest command-line words.
    pub fn cmdline(&self) -> String {
        let mut w = vec![format!("sg.secure={}", self.mode)];
        if let Some(l) = self.legacy {
            w.push(format!("sg.legacy_devices={l}"));
        }
        if let Some(n) = self.pool_size {
            w.push(format!("sg.swiotlb={n}"));
        }
        if self.leak {
            w.push("sg.debug.leak=1".into());
        }
        w.join(" ")
    }

    /// Whether the run ends in `reject` (nothing is dumped then).
    pub fn expects_reject(&self) -> bool {
        self.mode == SecureMode::On
    }
}

/// Every failure of a secure run: the report against `expected.secure`, the host's evidence,
/// and the memory dumps of a held run. Empty when `expected.secure` is `None`. For `emulate`
/// this is in addition to [`oracle::check`] (the data); for `on` it replaces it.
pub fn check(
    expected: &Expected,
    records: &[Record],
    observed: &Observed,
    held: Option<&Held>,
) -> Vec<String> {
    match &expected.secure {
        None => Vec::new(),
        Some(s) if s.mode == SecureMode::On => check_reject(expected, records, observed),
        Some(s) => check_emulate(expected, s, records, held),
    }
}

/// [`oracle::check`] and [`check`] of a whole run: every failure of a secure run.
pub fn check_run(expected: &Expected, run: &RunResult, observed: &Observed) -> Vec<String> {
    let mut f = Vec::new();
    if expected.secure.is_none_or(|s| !s.expects_reject()) {
        f.extend(oracle::check(expected, &run.records, observed));
    }
    f.extend(check(expected, &run.records, observed, run.held.as_ref()));
    f
}

fn first<T: crate::report::Event>(records: &[Record]) -> Option<(usize, T)> {
    records
        .iter()
        .enumerate()
        .find_map(|(i, r)| r.view::<T>().ok().map(|v| (i, v)))
}

fn count(records: &[Record], event: &str) -> usize {
    records.iter().filter(|r| r.event == event).count()
}

/// `sg.secure=on` where the platform cannot be secure: the guest must fail closed.
pub fn check_reject(expected: &Expected, records: &[Record], observed: &Observed) -> Vec<String> {
    let mut f = Vec::new();
    let Some((at, s)) = first::<Secure>(records) else {
        f.push("no `secure` record: the guest did not report its decision on sg.secure=on".into());
        f.extend(nothing_moved(expected, records, observed));
        return f;
    };
    if s.mode != "on" {
        f.push(format!(
            "secure.mode {:?}, but sg.secure=on was given",
            s.mode
        ));
    }
    if s.action != SecureAction::Reject {
        f.push(format!(
            "secure.action {:?} on a machine that cannot be secure (platform {:?}): sg.secure=on \
             must reject",
            s.action.as_str(),
            s.platform
        ));
    }
    if s.secure || s.platform != "none" {
        f.push(format!(
            "secure says secure {} on platform {:?}: this machine has no PEF, SEV or TDX \
             (expected false on \"none\")",
            s.secure, s.platform
        ));
    }
    if s.reasons.is_empty() {
        f.push("secure.reasons is empty: a reject must say why".into());
    }
    match records.get(at + 1) {
        Some(r) if r.event == End::NAME => {}
        Some(r) => f.push(format!(
            "console line {}: `{}` after the rejecting `secure` record; `end` must follow it",
            r.line, r.event
        )),
        None => f.push("no record after the rejecting `secure` record".into()),
    }
    match first::<End>(records) {
        Some((_, e)) if e.verdict == Verdict::Reject => {}
        Some((_, e)) => f.push(format!(
            "end.verdict {:?}, expected \"reject\"",
            e.verdict.as_str()
        )),
        None => f.push("no `end` record".into()),
    }
    if count(records, Swiotlb::NAME) > 0 {
        f.push("a `swiotlb` record: the rejecting guest set up shared memory".into());
    }
    f.extend(nothing_moved(expected, records, observed));
    f
}

/// No device moved anything: no `virtio` record with requests or bytes, disk images unchanged,
/// no frame at the echo backend, nothing on the console port.
fn nothing_moved(expected: &Expected, records: &[Record], observed: &Observed) -> Vec<String> {
    let mut f = Vec::new();
    for r in records.iter().filter(|r| r.event == Virtio::NAME) {
        if let Ok(v) = r.view::<Virtio>()
            && (v.requests > 0 || v.bytes_to_device > 0 || v.bytes_from_device > 0)
        {
            f.push(format!(
                "console line {}: {} at {} completed {} requests ({} bytes to, {} from the \
                 device) although the guest must not touch devices",
                r.line, v.device, v.location, v.requests, v.bytes_to_device, v.bytes_from_device
            ));
        }
    }
    for (i, d) in expected.disks.iter().enumerate() {
        match observed.disks_after.get(i) {
            Some(Some(after)) if *after == d.content() => {}
            Some(Some(_)) => f.push(format!("{} was changed", d.file)),
            _ => f.push(format!("{} could not be read after the run", d.file)),
        }
    }
    if let Some(s) = &observed.echo
        && s.frames_seen > 0
    {
        f.push(format!(
            "the echo backend received {} frames",
            s.frames_seen
        ));
    }
    if let Some(out) = &observed.console_output
        && !out.is_empty()
    {
        f.push(format!("the console port received {} bytes", out.len()));
    }
    f
}

/// `sg.secure=emulate`: (a)-(c), (e), (f) of the module doc.
fn check_emulate(
    expected: &Expected,
    s: &SecureExpect,
    records: &[Record],
    held: Option<&Held>,
) -> Vec<String> {
    let mut f = Vec::new();
    let virtio_at: Vec<usize> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.event == Virtio::NAME)
        .map(|(i, _)| i)
        .collect();
    let devtree_at = records.iter().position(|r| r.event == "devtree");
    let end_at = records.iter().position(|r| r.event == End::NAME);
    let order = |f: &mut Vec<String>, name: &str, at: usize, before_devices: bool| {
        if let Some(d) = devtree_at
            && at < d
        {
            f.push(format!("`{name}` comes before `devtree`"));
        }
        if before_devices
            && let Some(&v) = virtio_at.first()
            && at > v
        {
            f.push(format!(
                "`{name}` comes after the first `virtio` record (console line {}): it must \
                 come before any device is touched",
                records[v].line
            ));
        }
        if let Some(e) = end_at
            && at > e
        {
            f.push(format!("`{name}` comes after `end`"));
        }
    };
    for name in [
        Secure::NAME,
        Swiotlb::NAME,
        Secret::NAME,
        SwiotlbStats::NAME,
    ] {
        let n = count(records, name);
        if n > 1 {
            f.push(format!("{n} `{name}` records, expected one"));
        }
    }

    // (e) The decision.
    let secure = first::<Secure>(records);
    let Some((secure_at, sec)) = secure else {
        f.push(format!(
            "no `secure` record: the guest did not report its decision on {}",
            s.cmdline()
        ));
        return f;
    };
    order(&mut f, Secure::NAME, secure_at, true);
    let want = [
        ("mode", sec.mode.as_str(), "emulate"),
        ("platform", sec.platform.as_str(), "emulated"),
        ("action", sec.action.as_str(), "proceed"),
        (
            "legacy_devices",
            sec.legacy_devices.as_str(),
            s.legacy_devices().as_str(),
        ),
    ];
    for (field, got, want) in want {
        if got != want {
            f.push(format!("secure.{field} {got:?}, expected {want:?}"));
        }
    }
    if !sec.secure {
        f.push("secure.secure is false: sg.secure=emulate must make the guest secure".into());
    }
    if sec.action != SecureAction::Proceed {
        return f;
    }
    let g = sec.granularity;
    if g == 0 || !g.is_power_of_two() || g < 4096 {
        f.push(format!(
            "secure.granularity {g} is not a power of two of at least 4096"
        ));
    }

    // The pool.
    let Some((pool_at, pool)) = first::<Swiotlb>(records) else {
        f.push("no `swiotlb` record: a secure guest has no shared pool to report".into());
        return f;
    };
    order(&mut f, Swiotlb::NAME, pool_at, true);
    if pool_at < secure_at {
        f.push("`swiotlb` comes before `secure`".into());
    }
    f.extend(check_pool_geometry(s, &pool, g, records));

    // (f) The books.
    let stats = first::<SwiotlbStats>(records);
    match &stats {
        None => f.push("no `swiotlb_stats` record".into()),
        Some((at, st)) => {
            if let Some(&v) = virtio_at.last()
                && *at < v
            {
                f.push(format!(
                    "`swiotlb_stats` comes before the last `virtio` record (console line {}): \
                     it must come after every device is done",
                    records[v].line
                ));
            }
            order(&mut f, SwiotlbStats::NAME, *at, false);
            f.extend(check_stats(expected, s, st, records));
        }
    }

    // (c) The secret regions, (a) and (b) the pool: the dumps.
    let secret = first::<Secret>(records);
    match &secret {
        None => f.push(
            "no `secret` record: without marked private memory the dump proves nothing".into(),
        ),
        Some((at, sr)) => {
            order(&mut f, Secret::NAME, *at, false);
            if sr.regions.is_empty() {
                f.push("secret.regions is empty: nothing private was marked".into());
            }
        }
    }
    let Some(held) = held else {
        f.push(
            "no memory dump: the run was not held at shutdown (hold_at_shutdown), so nothing \
             proves that private memory stayed out of the pool"
                .into(),
        );
        return f;
    };
    if !held.paused {
        f.push("no memory dump: QEMU was not held at the guest's power-off".into());
        return f;
    }
    for p in &held.problems {
        f.push(format!("memory dump: {p}"));
    }
    let Some(pool_dump) = held.dump("swiotlb", pool.base.0) else {
        f.push(format!(
            "no dump of the swiotlb pool at {} ({} bytes)",
            pool.base, pool.size
        ));
        return f;
    };
    f.extend(check_no_secrets(pool_dump));
    for d in held.dumps.iter().filter(|d| d.range.label == "shared") {
        f.extend(check_no_secrets(d));
    }
    let live = stats.as_ref().map(|(_, st)| st.live_bytes);
    f.extend(check_pool_zero(pool_dump, &pool, live));
    let payloads = payloads(expected);
    f.extend(check_no_payload(pool_dump, &payloads));
    if let Some((_, sr)) = &secret {
        for r in &sr.regions {
            match held.dump("secret", r.base.0) {
                Some(d) => f.extend(check_secret_region(d)),
                None if r.size == 0 => {}
                None => f.push(format!(
                    "secret region {}+{}: not dumped, so the scan is not shown to work",
                    r.base, r.size
                )),
            }
        }
    }
    f
}

/// The pool's place and shape: granularity, size, slots, RAM it may use, shares.
fn check_pool_geometry(s: &SecureExpect, p: &Swiotlb, g: u64, records: &[Record]) -> Vec<String> {
    let mut f = Vec::new();
    let (base, size) = (p.base.0, p.size);
    let end = base.saturating_add(size);
    if g.is_power_of_two() && (base % g != 0 || size % g != 0) {
        f.push(format!(
            "swiotlb {}+{size} is not aligned to the granularity {g}",
            p.base
        ));
    }
    let want = s
        .pool_size
        .unwrap_or(DEFAULT_POOL_SIZE)
        .next_multiple_of(g.max(1));
    if size != want {
        f.push(format!(
            "swiotlb.size {size}, expected {want} (sg.swiotlb {}, rounded up to the granularity \
             {g})",
            s.pool_size
                .map_or("not given: 4 MiB".to_string(), |n| n.to_string())
        ));
    }
    if p.device_base != p.base {
        f.push(format!(
            "swiotlb.device_base {} differs from base {}: the emulated platform gives devices \
             guest-physical addresses",
            p.device_base, p.base
        ));
    }
    if p.slot_size == 0 || p.slots == 0 || p.slots.saturating_mul(p.slot_size) > size {
        f.push(format!(
            "swiotlb has {} slots of {} bytes: that does not fit its {size} bytes",
            p.slots, p.slot_size
        ));
    }
    if p.max_mapping == 0 || p.max_mapping > size {
        f.push(format!(
            "swiotlb.max_mapping {} is not within the pool's {size} bytes",
            p.max_mapping
        ));
    }
    if p.leak != s.leak {
        f.push(format!(
            "swiotlb.leak is {}, but sg.debug.leak is {}",
            p.leak,
            if s.leak { "1" } else { "not given" }
        ));
    }
    // Shared: the whole pool, and (checked on the dumps) nothing else private.
    let shared = dump::shared_ranges(p);
    if !shared.iter().any(|&(b, e)| b <= base && end <= e) {
        f.push(format!(
            "swiotlb.shares do not leave the pool {:#x}..{end:#x} shared (shared: {})",
            base,
            ranges_text(&shared)
        ));
    }
    // Free RAM: inside a RAM entry of the boot map, clear of every reserved entry and the heap.
    if let Some((_, boot)) = first::<Boot>(records) {
        let in_ram = boot
            .memory
            .iter()
            .filter(|m| m.kind == MemoryKind::Ram)
            .any(|m| m.base.0 <= base && end <= m.base.0.saturating_add(m.size));
        if !in_ram {
            f.push(format!(
                "swiotlb {:#x}..{end:#x} is not inside one RAM range of the boot memory map",
                base
            ));
        }
        for m in boot
            .memory
            .iter()
            .filter(|m| m.kind == MemoryKind::Reserved)
        {
            if overlaps((base, end), (m.base.0, m.base.0.saturating_add(m.size))) {
                f.push(format!(
                    "swiotlb {:#x}..{end:#x} overlaps reserved memory {:?} at {}+{}",
                    base, m.label, m.base, m.size
                ));
            }
        }
    }
    if let Some((_, h)) = first::<Heap>(records)
        && overlaps((base, end), (h.base.0, h.base.0.saturating_add(h.size)))
    {
        f.push(format!(
            "swiotlb {:#x}..{end:#x} overlaps the heap {}+{}",
            base, h.base, h.size
        ));
    }
    if let Some((_, sr)) = first::<Secret>(records) {
        for r in &sr.regions {
            if overlaps((base, end), (r.base.0, r.base.0.saturating_add(r.size))) {
                f.push(format!(
                    "secret region {}+{} overlaps the swiotlb pool: private memory inside \
                     shared memory",
                    r.base, r.size
                ));
            }
        }
    }
    f
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

fn ranges_text(r: &[(u64, u64)]) -> String {
    if r.is_empty() {
        return "none".into();
    }
    r.iter()
        .map(|(b, e)| format!("{b:#x}..{e:#x}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// (f): every mapping released, every release zeroed, the devices' payload through the pool.
fn check_stats(
    expected: &Expected,
    s: &SecureExpect,
    st: &SwiotlbStats,
    records: &[Record],
) -> Vec<String> {
    let mut f = Vec::new();
    if st.live_bytes != 0 {
        f.push(format!(
            "swiotlb_stats.live_bytes is {}: not every mapping and shared region was released \
             before the end",
            st.live_bytes
        ));
    }
    if st.maps != st.unmaps {
        f.push(format!(
            "swiotlb_stats: {} maps but {} unmaps",
            st.maps, st.unmaps
        ));
    }
    if s.leak {
        if st.maps > 0 && st.unzeroed_releases == 0 {
            f.push(
                "sg.debug.leak=1, but swiotlb_stats.unzeroed_releases is 0: the leak did not \
                 happen, so the negative control tests nothing"
                    .into(),
            );
        }
    } else {
        if st.unzeroed_releases != 0 {
            f.push(format!(
                "swiotlb_stats.unzeroed_releases is {}: released slots were not zeroed \
                 (sg.debug.leak is not given)",
                st.unzeroed_releases
            ));
        }
        if st.maps > 0 && st.zeroed_bytes == 0 {
            f.push(format!(
                "swiotlb_stats: {} maps released but zeroed_bytes is 0",
                st.maps
            ));
        }
    }
    // What the bounce devices say they moved went through the pool.
    let bounce = matches!(
        expected.dma_expect(),
        DmaExpect::Bounce(_) | DmaExpect::IommuBounce
    );
    let (mut to, mut from, mut requests) = (0u64, 0u64, 0u64);
    for v in records.iter().filter_map(|r| r.view::<Virtio>().ok()) {
        if v.dma == "bounce" || v.dma == "iommu+bounce" {
            to += v.bytes_to_device;
            from += v.bytes_from_device;
            requests += v.requests;
        }
    }
    if st.bounced_to_device < to {
        f.push(format!(
            "swiotlb_stats.bounced_to_device {} < {to}, the bytes the bounce devices say they \
             sent: some data reached a device without going through the pool",
            st.bounced_to_device
        ));
    }
    if st.bounced_from_device < from {
        f.push(format!(
            "swiotlb_stats.bounced_from_device {} < {from}, the bytes the bounce devices say \
             they received: some data came from a device without going through the pool",
            st.bounced_from_device
        ));
    }
    if bounce && requests > 0 && st.maps == 0 {
        f.push(format!(
            "swiotlb_stats.maps is 0, but the bounce devices completed {requests} requests"
        ));
    }
    f
}

/// (a): no valid secret mark, and no bare magic, in a shared range.
pub fn check_no_secrets(d: &Dump) -> Vec<String> {
    let mut f = Vec::new();
    // Every record and every magic starts with 'S': no 'S', nothing to scan (a clean pool is
    // all zeros, and `contains` is a memchr).
    if !d.data.contains(&secret::MAGIC[0]) {
        return f;
    }
    let what = range_name(d);
    let marks: Vec<secret::Mark> = secret::marks(&d.data).collect();
    if let Some(m) = marks.first() {
        f.push(format!(
            "{what} holds {} secret-marked records: private memory reached shared memory. \
             First at offset {:#x} (guest-physical {:#x}), counter {:#x} ({}){}",
            marks.len(),
            m.offset,
            d.range.base + m.offset as u64,
            m.counter,
            mark_origin(m.counter),
            if marks.len() > 1 {
                format!(
                    "; more at offsets {}",
                    marks[1..]
                        .iter()
                        .take(4)
                        .map(|m| format!("{:#x}", m.offset))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                String::new()
            }
        ));
    }
    let partial: Vec<usize> = secret::find_magic(&d.data)
        .filter(|o| !marks.iter().any(|m| m.offset == *o))
        .collect();
    if let Some(&o) = partial.first() {
        f.push(format!(
            "{what} holds the {:?} magic {} times outside a valid record (a partial or altered \
             copy of private memory): first at offset {o:#x} (guest-physical {:#x}): {}",
            String::from_utf8_lossy(secret::MAGIC),
            partial.len(),
            d.range.base + o as u64,
            hex_excerpt(&d.data, o, 16)
        ));
    }
    f
}

/// Where a mark comes from, by the guest's numbering of its counters (src/devices/secure.rs):
/// `secret` regions count from 0, driver buffers from `0x8000_0000`, the release probe (a
/// secret-marked buffer bounced and released without a device) from `0xc000_0000`.
pub fn mark_origin(counter: u32) -> &'static str {
    match counter {
        0..0x8000_0000 => "a secret region's mark",
        0x8000_0000..0xc000_0000 => "a driver buffer's mark",
        _ => "the release probe's mark",
    }
}

fn range_name(d: &Dump) -> String {
    let label = match d.range.label.as_str() {
        "swiotlb" => "the swiotlb pool",
        "shared" => "shared memory",
        other => other,
    };
    format!(
        "{label} {:#x}..{:#x} ({})",
        d.range.base,
        d.range.end(),
        d.file
    )
}

fn hex_excerpt(data: &[u8], at: usize, n: usize) -> String {
    data[at.min(data.len())..(at + n).min(data.len())]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// (b), by the stats: with `live_bytes` 0 nothing is allocated, and everything released was
/// zeroed, so every byte of the pool is zero.
pub fn check_pool_zero(d: &Dump, p: &Swiotlb, live_bytes: Option<u64>) -> Vec<String> {
    if live_bytes != Some(0) {
        // Live allocations may hold anything; (f) has already failed the run, and the payload
        // search still runs.
        return Vec::new();
    }
    let Some(first) = first_nonzero(&d.data) else {
        return Vec::new();
    };
    let slot = (p.slot_size as usize).max(1);
    let nonzero = d.data.iter().filter(|&&b| b != 0).count();
    let slots: Vec<bool> = d
        .data
        .chunks(slot)
        .map(|c| c.iter().any(|&b| b != 0))
        .collect();
    let dirty = slots.iter().filter(|&&x| x).count();
    // Runs of dirty slots, as pool offsets.
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, &x) in slots.iter().enumerate() {
        if !x {
            continue;
        }
        match runs.last_mut() {
            Some(r) if r.1 == i * slot => r.1 = (i + 1) * slot,
            _ => runs.push((i * slot, (i + 1) * slot)),
        }
    }
    let shown: Vec<String> = runs
        .iter()
        .take(6)
        .map(|(a, b)| format!("{a:#x}..{b:#x}"))
        .collect();
    vec![format!(
        "{} is not zero although swiotlb_stats.live_bytes is 0 (every slot was released, and \
         a released slot must be zeroed): {nonzero} non-zero bytes in {dirty} of {} slots of \
         {slot} bytes. First at offset {first:#x} (guest-physical {:#x}): {}. Dirty slots at \
         offsets {}{}",
        range_name(d),
        slots.len(),
        d.range.base + first as u64,
        hex_excerpt(&d.data, first, 16),
        shown.join(", "),
        if runs.len() > shown.len() {
            format!(" and {} more runs", runs.len() - shown.len())
        } else {
            String::new()
        }
    )]
}

/// The offset of the first non-zero byte: whole pages compared with `==` (a memcmp, fast in
/// debug builds too), then the page that differs.
pub fn first_nonzero(data: &[u8]) -> Option<usize> {
    const ZERO: [u8; 4096] = [0; 4096];
    let (i, page) = data
        .chunks(ZERO.len())
        .enumerate()
        .find(|(_, c)| *c != &ZERO[..c.len()])?;
    page.iter()
        .position(|&b| b != 0)
        .map(|o| i * ZERO.len() + o)
}

/// Data the harness gave a device or got from one, to look for in the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// What it is: `disk0.img (blk read data)`, `net frame seq 3`.
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Everything the devices of `expected` move that the host knows byte for byte: what the guest
/// reads from each disk, the pattern it writes, every frame and echo, the console line and the
/// host's input. (Entropy is not known to the host.)
pub fn payloads(e: &Expected) -> Vec<Payload> {
    let mut p = Vec::new();
    for d in &e.disks {
        let n = e.blk_read.unwrap_or(oracle::DEFAULT_BLK_READ).min(d.size) as usize;
        let mut bytes = vec![0u8; n];
        oracle::fill_pattern(d.seed, 0, &mut bytes);
        p.push(Payload {
            name: format!("{} (blk read data)", d.file),
            bytes,
        });
    }
    if let Some(w) = &e.write {
        p.push(Payload {
            name: format!("the sg.blk.write pattern (seed {:#x})", w.seed),
            bytes: oracle::pattern_bytes(w.seed, w.offset, w.len as usize),
        });
    }
    if let Some(n) = &e.net {
        for seq in 0..n.frames {
            let frame = echo::guest_frame(n.mac, seq);
            if let Ok(echoed) = echo::echo_frame(&frame) {
                p.push(Payload {
                    name: format!("net echo seq {seq}"),
                    bytes: echoed,
                });
            }
            p.push(Payload {
                name: format!("net frame seq {seq}"),
                bytes: frame,
            });
        }
    }
    if let Some(c) = &e.console {
        p.push(Payload {
            name: "the console line".into(),
            bytes: oracle::console_line(),
        });
        let upto = c
            .input
            .iter()
            .position(|&b| b == b'\n')
            .map_or(c.input.len(), |i| i + 1)
            .min(c.read_limit as usize);
        p.push(Payload {
            name: "the console input".into(),
            bytes: c.input[..upto].to_vec(),
        });
    }
    p.retain(|x| x.bytes.len() >= MIN_PAYLOAD);
    p
}

/// A run of a payload found in a dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadHit {
    /// Index into the payloads.
    pub payload: usize,
    pub payload_offset: usize,
    /// Offset in the dump.
    pub offset: usize,
    pub len: usize,
}

/// Hits kept at most.
pub const MAX_HITS: usize = 10_000;

/// A multiplicative hasher for `u64` keys: the index holds up to half a million words per MiB
/// dumped, and the search looks up every byte offset of several MiB of payload, in debug
/// builds too.
#[derive(Default)]
struct WordHasher(u64);

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (x ^ (x >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type WordMap<V> = HashMap<u64, V, BuildHasherDefault<WordHasher>>;

/// Every maximal run, at least `window` bytes long (the whole payload when shorter), of any
/// payload in `hay`, at any offset of either. Bounded: `hay`'s 8-aligned words are indexed
/// (zero and one-byte-repeated words, and words found more than 8 times, are not: they are
/// structure, not data), every byte offset of each payload is looked up once, and each match is
/// extended once. An all-zero `hay` costs one pass over it. Returns the runs (a part of `hay`
/// told once, by the longest run over it), by payload and offset, and how many there are.
pub fn find_payloads(hay: &[u8], payloads: &[Payload], window: usize) -> (Vec<PayloadHit>, usize) {
    if first_nonzero(hay).is_none() {
        return (Vec::new(), 0);
    }
    let mut index: WordMap<Vec<u32>> =
        WordMap::with_capacity_and_hasher(hay.len() / 8, Default::default());
    for (i, w) in hay.chunks_exact(8).enumerate() {
        let word = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        if word == 0 || w.iter().all(|&b| b == w[0]) {
            continue;
        }
        let v = index.entry(word).or_default();
        if v.len() <= 8 {
            v.push((i * 8) as u32);
        }
    }
    index.retain(|_, v| v.len() <= 8);
    let mut hits = Vec::new();
    if index.is_empty() {
        return (hits, 0);
    }
    for (pi, p) in payloads.iter().enumerate() {
        let data = &p.bytes;
        if data.len() < 8 {
            continue;
        }
        let need = window.min(data.len());
        // A run of `need` bytes covers at least `k` whole 8-aligned words of `hay`, at payload
        // offsets 8 apart, so in `k` consecutive 8-byte blocks of the payload: looking up every
        // offset of one block in `k` finds every such run.
        let k = (need.saturating_sub(15) / 8 + 1).max(1);
        // Per alignment (hay offset - payload offset): the payload ranges already extended.
        let mut covered: WordMap<Vec<(usize, usize)>> = WordMap::default();
        for j in 0..=data.len() - 8 {
            if (j / 8) % k != 0 {
                continue;
            }
            let key = u64::from_le_bytes(data[j..j + 8].try_into().expect("8 bytes"));
            let Some(at) = index.get(&key) else { continue };
            for &pos in at {
                let pos = pos as usize;
                let delta = (pos as u64).wrapping_sub(j as u64);
                let runs = covered.entry(delta).or_default();
                if runs.iter().any(|&(a, b)| a <= j && j < b) {
                    continue;
                }
                let (mut a, mut h) = (j, pos);
                while a > 0 && h > 0 && data[a - 1] == hay[h - 1] {
                    a -= 1;
                    h -= 1;
                }
                let mut b = j;
                while b < data.len() && h + (b - a) < hay.len() && data[b] == hay[h + (b - a)] {
                    b += 1;
                }
                runs.push((a, b));
                if b - a >= need && hits.len() < MAX_HITS {
                    hits.push(PayloadHit {
                        payload: pi,
                        payload_offset: a,
                        offset: h,
                        len: b - a,
                    });
                }
            }
        }
    }
    // Payloads can share runs (the pattern of one seed holds another seed's words, in blocks:
    // src/pattern.rs XORs the seed into the word index). Each part of `hay` is told once, by
    // the longest run over it.
    hits.sort_by_key(|h| (std::cmp::Reverse(h.len), h.payload, h.offset));
    let mut taken: std::collections::BTreeMap<usize, usize> = std::collections::BTreeMap::new();
    // The first (longest) run is the longest kept: nothing that starts further back than that
    // can reach a later run.
    let longest = hits.first().map_or(0, |h| h.len);
    hits.retain(|h| {
        let (a, b) = (h.offset, h.offset + h.len);
        // Bytes of this run already told by a longer one (runs that merely touch, extended by a
        // byte that matched by chance, are kept).
        let told: usize = taken
            .range(a.saturating_sub(longest)..b)
            .map(|(&s, &e)| e.min(b).saturating_sub(s.max(a)))
            .sum();
        let keep = told * 2 < h.len;
        if keep {
            taken.insert(a, b);
        }
        keep
    });
    hits.sort_by_key(|h| (h.payload, h.payload_offset, h.offset));
    let total = hits.len();
    (hits, total)
}

/// (b), by content: no known payload in the pool, whatever the stats say.
pub fn check_no_payload(d: &Dump, payloads: &[Payload]) -> Vec<String> {
    let (hits, total) = find_payloads(&d.data, payloads, PAYLOAD_WINDOW);
    if hits.is_empty() {
        return Vec::new();
    }
    // Per payload: runs, bytes, the first run.
    let mut per: Vec<(usize, usize, usize, PayloadHit)> = Vec::new(); // payload, runs, bytes, first
    for h in &hits {
        match per.iter_mut().find(|x| x.0 == h.payload) {
            Some(x) => {
                x.1 += 1;
                x.2 += h.len;
            }
            None => per.push((h.payload, 1, h.len, *h)),
        }
    }
    let bytes: usize = hits.iter().map(|h| h.len).sum();
    let shown: Vec<String> = per
        .iter()
        .take(6)
        .map(|(p, runs, n, h)| {
            format!(
                "{}: {n} bytes in {runs} run{}, e.g. its bytes {:#x}..{:#x} at offset {:#x} \
                 (guest-physical {:#x})",
                payloads[*p].name,
                if *runs == 1 { "" } else { "s" },
                h.payload_offset,
                h.payload_offset + h.len,
                h.offset,
                d.range.base + h.offset as u64
            )
        })
        .collect();
    vec![format!(
        "{} still holds data the devices moved (a released slot was not zeroed, or a buffer was \
         copied in that should not have been): {bytes} bytes in {total} runs of {} payloads. \
         {}{}",
        range_name(d),
        per.len(),
        shown.join("; "),
        if per.len() > shown.len() {
            format!("; and {} more payloads", per.len() - shown.len())
        } else {
            String::new()
        }
    )]
}

/// (c): a secret region holds what `secret::fill` writes: valid records back to back from its
/// start, a tail of `#`.
pub fn check_secret_region(d: &Dump) -> Vec<String> {
    let records = d.data.len() / secret::RECORD_LEN;
    let mut valid = 0usize;
    let mut first_bad: Option<usize> = None;
    let marks: std::collections::BTreeSet<usize> = secret::find_marks(&d.data).collect();
    for k in 0..records {
        if marks.contains(&(k * secret::RECORD_LEN)) {
            valid += 1;
        } else if first_bad.is_none() {
            first_bad = Some(k * secret::RECORD_LEN);
        }
    }
    let tail_at = records * secret::RECORD_LEN;
    let tail_ok = d.data[tail_at..].iter().all(|&b| b == secret::TAIL);
    let mut f = Vec::new();
    let what = format!(
        "secret region {:#x}..{:#x} ({})",
        d.range.base,
        d.range.end(),
        d.file
    );
    if records == 0 {
        f.push(format!(
            "{what}: {} bytes hold no whole 16-byte record",
            d.data.len()
        ));
    } else if let Some(o) = first_bad {
        f.push(format!(
            "{what}: {valid} of {records} records are valid secret marks; the guest said it \
             filled the region, and a dump of private memory that does not show its marks \
             proves nothing about the pool. First bad record at offset {o:#x}: {}",
            hex_excerpt(&d.data, o, secret::RECORD_LEN)
        ));
    }
    if !tail_ok {
        f.push(format!(
            "{what}: the {}-byte tail is not {:?} filler: {}",
            d.data.len() - tail_at,
            secret::TAIL as char,
            hex_excerpt(&d.data, tail_at, 16)
        ));
    }
    f
}

/// The one-line reason a secure run failed, for the matrix table: the first failure that is
/// about memory, else the first one.
pub fn headline(failures: &[String]) -> Option<&String> {
    failures
        .iter()
        .find(|f| {
            f.contains("secret-marked") || f.contains("still holds") || f.contains("is not zero")
        })
        .or(failures.first())
}

#[cfg(test)]
mod tests;
