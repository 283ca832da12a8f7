//! Reader for the secure-guest report (docs/report.md, version 1).
//!
//! The guest writes one record per console line: `@sg {json}`. Everything else on the console
//! (firmware banners, QEMU noise) is ignored. What this module promises:
//!
//! - a line that starts with `@sg ` is a record or a [`ProtocolError`], never silently dropped;
//! - a record whose `v` is newer than [`REPORT_VERSION`] is an error that says to update the
//!   harness (its fields may mean something else now), and is not used;
//! - the documented events have typed views ([`Boot`], [`Devtree`], [`End`], ...) that follow the
//!   tables in docs/report.md: every documented field must be present with its documented type,
//!   nullable fields must be present (as `null`), and unknown fields are ignored, as the
//!   compatibility rules require. A documented event that does not fit its view is an error.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The newest report version this harness understands.
pub const REPORT_VERSION: u32 = 1;

/// The marker that starts a report line.
pub const LINE_PREFIX: &str = "@sg ";

/// At most this much of an offending line is kept in an error: a runaway guest can print
/// megabytes on one line.
const MAX_LINE_EXCERPT: usize = 300;

/// One report record: the JSON object after `@sg `.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// 1-based console line the record came from.
    pub line: usize,
    pub event: String,
    pub v: u32,
    /// The whole object, `event` and `v` included, so that it can be printed or re-parsed as is.
    pub fields: Map<String, Value>,
}

impl Record {
    /// The typed view of this record, e.g. `record.view::<Boot>()`.
    pub fn view<T: Event>(&self) -> Result<T, String> {
        if self.event != T::NAME {
            return Err(format!("record is `{}`, not `{}`", self.event, T::NAME));
        }
        T::deserialize(Value::Object(self.fields.clone())).map_err(|e| e.to_string())
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.get(key)
    }

    /// The record as one JSON line, as the guest wrote it (modulo key order and spacing).
    pub fn to_json(&self) -> String {
        Value::Object(self.fields.clone()).to_string()
    }

    /// A one-line human summary: the event and its key fields.
    pub fn summary(&self) -> String {
        let keys: &[&str] = match self.event.as_str() {
            "boot" => &[
                "arch",
                "machine",
                "firmware",
                "ram_bytes",
                "cpus",
                "console",
                "cmdline",
                "entry_to_boot_us",
            ],
            "heap" => &["base", "size"],
            "option" => &["level", "option", "value", "expected", "message"],
            "devtree" => &["source", "nodes", "model", "cpus", "stdout_path"],
            "error" => &["what", "message"],
            "exception" => &["vector", "name", "pc"],
            "panic" => &["message", "file", "line"],
            "end" => &["verdict", "errors", "warnings", "entry_to_end_us"],
            "virtio" => &[
                "device",
                "transport",
                "location",
                "result",
                "error",
                "requests",
                "bytes_to_device",
                "bytes_from_device",
                "dma",
                "dma_reason",
            ],
            "secure" => &[
                "mode",
                "platform",
                "secure",
                "action",
                "reasons",
                "legacy_devices",
                "granularity",
            ],
            "swiotlb" => &["base", "device_base", "size", "slot_size", "slots", "leak"],
            "secret" => &["regions"],
            "swiotlb_stats" => &[
                "maps",
                "unmaps",
                "bounced_to_device",
                "bounced_from_device",
                "live_bytes",
                "unzeroed_releases",
            ],
            // Unknown events: every field, in the order the guest wrote them (serde_json's
            // `preserve_order`).
            _ => &[],
        };
        let mut out = format!("{:<9}", self.event);
        let mut push = |k: &str, v: &Value| {
            let shown = match v {
                Value::String(s) if !s.is_empty() && !s.contains([' ', '"', '=']) => s.clone(),
                Value::Array(a) => format!("[{} items]", a.len()),
                Value::Object(_) => "{..}".to_string(),
                v => v.to_string(),
            };
            out.push_str(&format!(" {k}={shown}"));
        };
        if keys.is_empty() {
            for (k, v) in &self.fields {
                if k != "event" && k != "v" {
                    push(k, v);
                }
            }
        } else {
            for k in keys {
                if let Some(v) = self.fields.get(*k) {
                    push(k, v);
                }
            }
            // Arch-specific exception details (msr/dar/dsisr or error_code/cr2).
            if self.event == "exception" {
                for (k, v) in &self.fields {
                    if !["event", "v", "vector", "name", "pc"].contains(&k.as_str()) {
                        push(k, v);
                    }
                }
            }
        }
        out
    }
}

/// A line that claimed to be a record but broke the contract, or records that break the rules
/// of the report as a whole (order, a second `end`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError {
    /// 1-based console line.
    pub line: usize,
    pub message: String,
    /// The start of the offending line.
    pub text: String,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "console line {}: {}", self.line, self.message)?;
        if !self.text.is_empty() {
            write!(f, ": {:?}", self.text)?;
        }
        Ok(())
    }
}

/// Everything read from one console.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub records: Vec<Record>,
    pub errors: Vec<ProtocolError>,
}

impl Report {
    /// Parses a whole console capture (bytes: a guest or firmware may print anything).
    pub fn parse(console: &[u8]) -> Report {
        let mut report = Report::default();
        let mut lines = console.split(|&b| b == b'\n').peekable();
        let mut n = 0;
        while let Some(raw) = lines.next() {
            n += 1;
            // The last piece has no newline after it: a record there was cut off mid-write.
            let unterminated = lines.peek().is_none();
            if unterminated && raw.is_empty() {
                break;
            }
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            match parse_line(raw) {
                Line::Other => {}
                Line::Record(r) => {
                    if unterminated {
                        // Valid JSON but no newline: keep it, a clean power-off can race the
                        // UART; the contract's line syntax is still broken, so say so.
                        report
                            .errors
                            .push(error(n, raw, "record has no end of line"));
                    }
                    report.records.push(Record { line: n, ..r });
                }
                Line::Error(message) => {
                    let message = if unterminated {
                        format!("{message} (last console line, no end of line: cut off?)")
                    } else {
                        message
                    };
                    report.errors.push(error(n, raw, &message));
                }
            }
        }
        report.check_structure();
        report
    }

    /// The rules about records taken together: `boot` first, exactly one `end`, last; every
    /// documented event fits its typed view.
    fn check_structure(&mut self) {
        let mut errors = Vec::new();
        if let Some(first) = self.records.first()
            && first.event != "boot"
        {
            errors.push(ProtocolError {
                line: first.line,
                message: format!("first record is `{}`, not `boot`", first.event),
                text: String::new(),
            });
        }
        let mut seen_end: Option<usize> = None;
        for r in &self.records {
            if let Some(end_line) = seen_end {
                errors.push(ProtocolError {
                    line: r.line,
                    message: format!(
                        "`{}` record after the `end` record of line {end_line}",
                        r.event
                    ),
                    text: String::new(),
                });
            }
            if r.event == "end" && seen_end.is_none() {
                seen_end = Some(r.line);
            }
            if let Err(e) = check_view(r) {
                errors.push(ProtocolError {
                    line: r.line,
                    message: format!("`{}` record does not match docs/report.md: {e}", r.event),
                    text: String::new(),
                });
            }
        }
        self.errors.extend(errors);
        self.errors.sort_by_key(|e| e.line);
    }

    /// Records of one event, in console order.
    pub fn events<'a>(&'a self, event: &'a str) -> impl Iterator<Item = &'a Record> + 'a {
        self.records.iter().filter(move |r| r.event == event)
    }

    /// Typed views of every record of `T`'s event. Records that do not fit are skipped here;
    /// they are already in [`Report::errors`].
    pub fn all<T: Event>(&self) -> Vec<T> {
        self.events(T::NAME).filter_map(|r| r.view().ok()).collect()
    }

    /// The first record of `T`'s event, typed.
    pub fn first<T: Event>(&self) -> Option<T> {
        self.events(T::NAME).find_map(|r| r.view().ok())
    }

    pub fn boot(&self) -> Option<Boot> {
        self.first()
    }

    pub fn devtree(&self) -> Option<Devtree> {
        self.first()
    }

    /// The (first) `end` record.
    pub fn end(&self) -> Option<End> {
        self.first()
    }
}

enum Line {
    Other,
    Record(Record),
    Error(String),
}

fn error(line: usize, raw: &[u8], message: &str) -> ProtocolError {
    let text = String::from_utf8_lossy(raw);
    let text: String = text.chars().take(MAX_LINE_EXCERPT).collect();
    ProtocolError {
        line,
        message: message.to_string(),
        text,
    }
}

fn parse_line(raw: &[u8]) -> Line {
    let Some(body) = raw.strip_prefix(LINE_PREFIX.as_bytes()) else {
        // A record glued to the end of firmware output ("Booting from ROM..@sg {") is not a
        // record by the contract's line syntax; dropping it quietly would lose, say, `boot`.
        // Only `@sg {` counts: the bare word can appear in ordinary text.
        if let Some(pos) = find(raw, b"@sg {") {
            return Line::Error(format!(
                "report record does not start its line (column {}): the guest must begin \
                 every record on a fresh line",
                pos + 1
            ));
        }
        return Line::Other;
    };
    let Ok(body) = std::str::from_utf8(body) else {
        return Line::Error("record is not valid UTF-8".into());
    };
    let value: Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(e) => return Line::Error(format!("record is not valid JSON ({e})")),
    };
    let Value::Object(fields) = value else {
        return Line::Error("record is not a JSON object".into());
    };
    let event = match fields.get("event") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => return Line::Error("record's `event` is not a non-empty string".into()),
        None => return Line::Error("record has no `event`".into()),
    };
    let v = match fields.get("v") {
        Some(Value::Number(n)) => match n.as_u64().and_then(|v| u32::try_from(v).ok()) {
            Some(v) => v,
            None => return Line::Error(format!("record's `v` ({n}) is not a version number")),
        },
        Some(_) => return Line::Error("record's `v` is not a number".into()),
        None => return Line::Error("record has no `v`".into()),
    };
    if v > REPORT_VERSION {
        return Line::Error(format!(
            "`{event}` record is report version {v}, but this harness reads version \
             {REPORT_VERSION}: update the harness (docs/report.md, History)"
        ));
    }
    if v == 0 {
        return Line::Error(format!(
            "`{event}` record has version 0, which never existed"
        ));
    }
    Line::Record(Record {
        line: 0,
        event,
        v,
        fields,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn check_view(r: &Record) -> Result<(), String> {
    fn fits<T: Event>(r: &Record) -> Result<(), String> {
        r.view::<T>().map(drop)
    }
    match r.event.as_str() {
        Boot::NAME => fits::<Boot>(r),
        Heap::NAME => fits::<Heap>(r),
        OptionRecord::NAME => fits::<OptionRecord>(r),
        Devtree::NAME => fits::<Devtree>(r),
        Error::NAME => fits::<Error>(r),
        Exception::NAME => fits::<Exception>(r),
        Panic::NAME => fits::<Panic>(r),
        End::NAME => fits::<End>(r),
        Virtio::NAME => check_virtio(r),
        Secure::NAME => fits::<Secure>(r),
        Swiotlb::NAME => fits::<Swiotlb>(r),
        Secret::NAME => fits::<Secret>(r),
        SwiotlbStats::NAME => fits::<SwiotlbStats>(r),
        // New events are compatible: readers ignore what they do not know.
        _ => Ok(()),
    }
}

/// A typed view of one documented event.
pub trait Event: DeserializeOwned {
    /// The `event` value.
    const NAME: &'static str;
}

/// A 64-bit value written as a hex string (`"0x400000"`): JSON numbers lose precision above
/// 2^53, so the contract never uses them for addresses. A number here is a contract violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Hex(pub u64);

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let digits = s
            .strip_prefix("0x")
            .ok_or_else(|| de::Error::custom(format!("hex value {s:?} does not start with 0x")))?;
        if digits.is_empty() || digits.len() > 16 {
            return Err(de::Error::custom(format!(
                "hex value {s:?} has a bad length"
            )));
        }
        u64::from_str_radix(digits, 16)
            .map(Hex)
            .map_err(|_| de::Error::custom(format!("{s:?} is not a hex number")))
    }
}

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Deserializes a field documented as "T or null": it must be present. (`Option<T>` alone
/// would also accept a missing field, which the contract does not allow.)
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    Option::<T>::deserialize(d)
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct MemoryRegion {
    pub base: Hex,
    pub size: u64,
    pub kind: MemoryKind,
    pub label: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryKind {
    Ram,
    Reserved,
}

/// `boot`: the first record.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Boot {
    pub arch: String,
    pub machine: String,
    pub firmware: String,
    pub guest: String,
    pub load_addr: Hex,
    pub image_end: Hex,
    pub ram_bytes: u64,
    pub ram_top: Hex,
    pub memory: Vec<MemoryRegion>,
    pub memory_dropped: u64,
    #[serde(deserialize_with = "nullable")]
    pub cpus: Option<u32>,
    pub cmdline: String,
    pub console: String,
    #[serde(deserialize_with = "nullable")]
    pub tick_hz: Option<u64>,
    pub tick_source: String,
    pub entry_to_boot_ticks: u64,
    #[serde(deserialize_with = "nullable")]
    pub entry_to_boot_us: Option<u64>,
}
impl Event for Boot {
    const NAME: &'static str = "boot";
}

/// `heap`: the heap carved from free RAM.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Heap {
    pub base: Hex,
    pub size: u64,
}
impl Event for Heap {
    const NAME: &'static str = "heap";
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Unknown option, ignored.
    Warning,
    /// Malformed value: the run fails.
    Error,
}

/// `option`: one command-line problem.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct OptionRecord {
    pub level: Level,
    pub option: String,
    /// Errors only.
    #[serde(default)]
    pub value: Option<String>,
    /// Errors only.
    #[serde(default)]
    pub expected: Option<String>,
    pub message: String,
}
impl Event for OptionRecord {
    const NAME: &'static str = "option";
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct VirtioMmio {
    pub path: String,
    pub base: Hex,
    pub size: u64,
    #[serde(deserialize_with = "nullable")]
    pub irq: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct PciHost {
    pub path: String,
    #[serde(deserialize_with = "nullable")]
    pub compatible: Option<String>,
    pub dma_window: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct PciFunction {
    pub path: String,
    /// `"00:02.0"`.
    pub bdf: String,
    pub vendor: Hex,
    pub device: Hex,
    pub class: Hex,
    pub virtio: bool,
}

/// `devtree`: what the device tree (or, on q35/pc, PCI enumeration) showed.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Devtree {
    /// `fdt`, `pci-scan` or `none`.
    pub source: String,
    pub nodes: u64,
    pub size: u64,
    #[serde(deserialize_with = "nullable")]
    pub model: Option<String>,
    pub cpus: u32,
    #[serde(deserialize_with = "nullable")]
    pub timebase_hz: Option<u64>,
    #[serde(deserialize_with = "nullable")]
    pub stdout_path: Option<String>,
    pub virtio_mmio: Vec<VirtioMmio>,
    pub pci_hosts: Vec<PciHost>,
    pub pci: Vec<PciFunction>,
    /// RTAS service name → token.
    #[serde(deserialize_with = "nullable")]
    pub rtas: Option<BTreeMap<String, u64>>,
    pub ultravisor: bool,
}
impl Event for Devtree {
    const NAME: &'static str = "devtree";
}

/// `virtio.result`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceResult {
    Ok,
    /// The device misbehaved or failed; `error` says how. Counts in `end.errors`.
    Error,
    /// Nothing was asked of the device.
    Skipped,
    /// A secure guest, a device without `ACCESS_PLATFORM` and `sg.legacy_devices=refuse`: set to
    /// FAILED, never given memory. Not an error.
    Refused,
}

impl DeviceResult {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceResult::Ok => "ok",
            DeviceResult::Error => "error",
            DeviceResult::Skipped => "skipped",
            DeviceResult::Refused => "refused",
        }
    }
}

/// `virtio.queues[].ring`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RingKind {
    Split,
    Packed,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct AccessPlatform {
    pub offered: bool,
    pub accepted: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct VirtQueue {
    pub index: u32,
    pub size: u32,
    pub ring: RingKind,
    pub indirect: bool,
    pub event_idx: bool,
}

/// `virtio`: one per virtio device found, the fields every device has. The device-specific
/// fields have views of their own over the same record: [`VirtioBlk`], [`VirtioNet`],
/// [`VirtioConsole`], [`VirtioRng`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Virtio {
    /// `blk`, `net`, `console`, `rng`, or `type-N`.
    pub device: String,
    pub device_id: u32,
    /// `virtio-mmio-v1`, `virtio-mmio-v2`, `virtio-pci-modern`, `virtio-pci-legacy`.
    pub transport: String,
    /// Device-tree path or PCI address.
    pub location: String,
    pub features_offered: Hex,
    pub features_accepted: Hex,
    pub features_offered_names: Vec<String>,
    pub features_accepted_names: Vec<String>,
    pub access_platform: AccessPlatform,
    pub queues: Vec<VirtQueue>,
    /// `direct`, `bounce` (later `iommu`, `iommu+bounce`); `none` when refused.
    pub dma: String,
    /// Why that path (`not secure`, `secure, ACCESS_PLATFORM negotiated`, ...). Optional here so
    /// that reports of guests older than the field still parse; [`crate::secure`] requires it.
    #[serde(default)]
    pub dma_reason: Option<String>,
    pub requests: u64,
    pub bytes_to_device: u64,
    pub bytes_from_device: u64,
    pub notifications: u64,
    pub result: DeviceResult,
    /// Present when `result` is `error` (checked by the report parser).
    #[serde(default)]
    pub error: Option<String>,
}
impl Event for Virtio {
    const NAME: &'static str = "virtio";
}

/// `virtio.write` of a blk device: what `sg.blk.write` asked for and the CRC32C of the data.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct BlkWrite {
    pub offset: u64,
    pub len: u64,
    pub seed: Hex,
    pub crc32c: Hex,
}

/// The blk fields of a `virtio` record (`device` = `blk`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct VirtioBlk {
    pub capacity: u64,
    pub block_size: u32,
    #[serde(deserialize_with = "nullable")]
    pub serial: Option<String>,
    pub read_bytes: u64,
    pub read_crc32c: Hex,
    #[serde(deserialize_with = "nullable")]
    pub write: Option<BlkWrite>,
    pub flushed: bool,
}
impl Event for VirtioBlk {
    const NAME: &'static str = "virtio";
}

/// The net fields of a `virtio` record (`device` = `net`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct VirtioNet {
    pub mac: String,
    pub frames_sent: u64,
    pub frames_received: u64,
    pub frames_verified: u64,
}
impl Event for VirtioNet {
    const NAME: &'static str = "virtio";
}

/// The console fields of a `virtio` record (`device` = `console`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct VirtioConsole {
    pub written_bytes: u64,
    pub written_crc32c: Hex,
    pub read_bytes: u64,
    pub read_crc32c: Hex,
    /// Only when what was read is printable and at most 256 bytes; absent or `null` otherwise.
    #[serde(default)]
    pub read_text: Option<String>,
}
impl Event for VirtioConsole {
    const NAME: &'static str = "virtio";
}

/// The rng fields of a `virtio` record (`device` = `rng`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct VirtioRng {
    pub entropy_bytes: u64,
}
impl Event for VirtioRng {
    const NAME: &'static str = "virtio";
}

/// A `virtio` record's common fields plus, when `result` is `ok`, its device's own: a device
/// that failed may not know its capacity or MAC, so only a working one must report them. A
/// `type-N` device has no fields of its own.
fn check_virtio(r: &Record) -> Result<(), String> {
    fn fits<T: Event>(r: &Record) -> Result<(), String> {
        r.view::<T>().map(drop)
    }
    let v: Virtio = r.view()?;
    if v.result == DeviceResult::Error && v.error.is_none() {
        return Err("`result` is `error` but there is no `error` string".into());
    }
    if v.result != DeviceResult::Ok {
        return Ok(());
    }
    let specific = match v.device.as_str() {
        "blk" => fits::<VirtioBlk>(r),
        "net" => fits::<VirtioNet>(r),
        "console" => fits::<VirtioConsole>(r),
        "rng" => fits::<VirtioRng>(r),
        d if d
            .strip_prefix("type-")
            .is_some_and(|n| n.parse::<u32>().is_ok()) =>
        {
            Ok(())
        }
        d => Err(format!(
            "unknown `device` {d:?} (blk, net, console, rng, type-N)"
        )),
    };
    specific.map_err(|e| format!("{} fields: {e}", v.device))
}

/// `secure.action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SecureAction {
    Proceed,
    /// `end` follows with verdict `reject`; no device was touched.
    Reject,
}

impl SecureAction {
    pub fn as_str(self) -> &'static str {
        match self {
            SecureAction::Proceed => "proceed",
            SecureAction::Reject => "reject",
        }
    }
}

/// `secure.facts`: what the guest detected.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct SecureFacts {
    pub ultravisor: bool,
    pub msr_s: bool,
    pub sev_status: Hex,
    pub tdx: bool,
}

/// `secure`: the boot-time decision, after `devtree`, before any device is touched.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Secure {
    /// `sg.secure` as asked: `off`, `on`, `auto`, `emulate`.
    pub mode: String,
    /// `none`, `emulated`, `pef`, `sev`, `sev-es`, `sev-snp`, `tdx`.
    pub platform: String,
    pub secure: bool,
    pub action: SecureAction,
    pub reasons: Vec<String>,
    pub facts: SecureFacts,
    /// `refuse` or `bounce`.
    pub legacy_devices: String,
    pub granularity: u64,
}
impl Event for Secure {
    const NAME: &'static str = "secure";
}

/// One entry of `swiotlb.shares`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ShareCall {
    /// `share` or `unshare`.
    pub op: String,
    pub base: Hex,
    pub size: u64,
    /// `ok` or why not.
    pub result: String,
}

/// `swiotlb`: the shared bounce pool of a secure guest.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Swiotlb {
    /// Guest-physical address of the pool (what a memory dump reads).
    pub base: Hex,
    /// The address devices use for it.
    pub device_base: Hex,
    pub size: u64,
    pub slot_size: u64,
    pub slots: u64,
    pub max_mapping: u64,
    pub shares: Vec<ShareCall>,
    /// `sg.debug.leak=1`: released slots are not zeroed.
    pub leak: bool,
}
impl Event for Swiotlb {
    const NAME: &'static str = "swiotlb";
}

/// A guest-physical range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct PhysRange {
    pub base: Hex,
    pub size: u64,
}

/// `secret`: private memory the guest filled with secret-marked records (emulate mode).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Secret {
    pub regions: Vec<PhysRange>,
}
impl Event for Secret {
    const NAME: &'static str = "secret";
}

/// `swiotlb_stats`: the bounce path's counts, just before `end`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct SwiotlbStats {
    pub maps: u64,
    pub unmaps: u64,
    pub bounced_to_device: u64,
    pub bounced_from_device: u64,
    pub high_water_bytes: u64,
    pub high_water_slots: u64,
    pub exhausted: u64,
    pub zeroed_bytes: u64,
    pub unzeroed_releases: u64,
    pub live_bytes: u64,
}
impl Event for SwiotlbStats {
    const NAME: &'static str = "swiotlb_stats";
}

/// `error`: something went wrong but the guest could say so; the verdict is `fail`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Error {
    pub what: String,
    pub message: String,
}
impl Event for Error {
    const NAME: &'static str = "error";
}

/// `exception`: an unexpected interrupt or CPU exception. The arch details are present only on
/// their arch.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Exception {
    pub vector: Hex,
    pub name: String,
    pub pc: Hex,
    /// ppc64le.
    #[serde(default)]
    pub msr: Option<Hex>,
    #[serde(default)]
    pub dar: Option<Hex>,
    #[serde(default)]
    pub dsisr: Option<Hex>,
    /// x86_64.
    #[serde(default)]
    pub error_code: Option<Hex>,
    #[serde(default)]
    pub cr2: Option<Hex>,
}
impl Event for Exception {
    const NAME: &'static str = "exception";
}

/// `panic`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Panic {
    pub message: String,
    pub file: String,
    pub line: u32,
}
impl Event for Panic {
    const NAME: &'static str = "panic";
}

/// The guest's own verdict, from the `end` record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    Reject,
}

impl Verdict {
    /// What QEMU exits with when the guest reports this verdict through
    /// `isa-debug-exit,iobase=0xf4,iosize=0x04` (`2 * code + 1`).
    pub fn debug_exit_status(self) -> i32 {
        match self {
            Verdict::Pass => 1,
            Verdict::Fail => 3,
            Verdict::Reject => 5,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Reject => "reject",
        }
    }
}

/// `end`: always the last record.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct End {
    pub verdict: Verdict,
    pub errors: u64,
    pub warnings: u64,
    #[serde(deserialize_with = "nullable")]
    pub entry_to_end_us: Option<u64>,
}
impl Event for End {
    const NAME: &'static str = "end";
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as the guest writes them (src/main.rs), one per documented event.
    const BOOT: &str = r#"@sg {"event":"boot","v":1,"arch":"x86_64","machine":"q35","firmware":"pvh","guest":"0.1.0","load_addr":"0x100000","image_end":"0x1a0000","ram_bytes":536346624,"ram_top":"0x1ffe0000","memory":[{"base":"0x0","size":654336,"kind":"ram","label":"e820"},{"base":"0x100000","size":655360,"kind":"reserved","label":"image"}],"memory_dropped":0,"cpus":2,"cmdline":"sg.x=1 hello","console":"com1","tick_hz":null,"tick_source":"pit","entry_to_boot_ticks":12345,"entry_to_boot_us":null}"#;
    const HEAP: &str = r#"@sg {"event":"heap","v":1,"base":"0x200000","size":67108864}"#;
    const WARN: &str = r#"@sg {"event":"option","v":1,"level":"warning","option":"sg.x","message":"unknown option, ignored"}"#;
    const MALFORMED: &str = r#"@sg {"event":"option","v":1,"level":"error","option":"sg.debug.panic","value":"maybe","expected":"0|1","message":"malformed value"}"#;
    const DEVTREE: &str = r#"@sg {"event":"devtree","v":1,"source":"fdt","nodes":23,"size":4096,"model":"IBM pSeries (emulated by qemu)","cpus":2,"timebase_hz":512000000,"stdout_path":"/vdevice/vty@71000000","virtio_mmio":[{"path":"/virtio_mmio@d0000000","base":"0xd0000000","size":512,"irq":null}],"pci_hosts":[{"path":"/pci@800000020000000","compatible":"IBM,Logical_PHB","dma_window":true}],"pci":[{"path":"/pci@800000020000000","bdf":"00:02.0","vendor":"0x1af4","device":"0x1042","class":"0x010000","virtio":true}],"rtas":{"power-off":8195,"ibm,read-pci-config":8216},"ultravisor":false}"#;
    const ERROR: &str = r#"@sg {"event":"error","v":1,"what":"devtree","message":"bad magic"}"#;
    const EXC_PPC: &str = r#"@sg {"event":"exception","v":1,"vector":"0x300","name":"data storage","pc":"0x400120","msr":"0x8000000000001001","dar":"0xdead0000","dsisr":"0x40000000"}"#;
    const EXC_X86: &str = r#"@sg {"event":"exception","v":1,"vector":"0xe","name":"page fault","pc":"0x101234","error_code":"0x2","cr2":"0xffff800000000000"}"#;
    const PANIC: &str = r#"@sg {"event":"panic","v":1,"message":"sg.debug.panic: deliberate panic","file":"src/main.rs","line":112}"#;
    const END_PASS: &str = r#"@sg {"event":"end","v":1,"verdict":"pass","errors":0,"warnings":1,"entry_to_end_us":1234}"#;
    const END_FAIL: &str = r#"@sg {"event":"end","v":1,"verdict":"fail","errors":1,"warnings":0,"entry_to_end_us":null}"#;

    fn console(lines: &[&str]) -> Vec<u8> {
        let mut s = String::new();
        for l in lines {
            s.push_str(l);
            s.push('\n');
        }
        s.into_bytes()
    }

    fn parse(lines: &[&str]) -> Report {
        Report::parse(&console(lines))
    }

    #[test]
    fn full_run_with_firmware_noise() {
        let r = Report::parse(
            &[
                b"\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.3)\r\n".as_slice(),
                b"Booting from ROM..\r\n",
                &console(&[BOOT, HEAP, WARN, DEVTREE, END_PASS]),
            ]
            .concat(),
        );
        assert_eq!(r.errors, vec![], "{:?}", r.errors);
        let events: Vec<_> = r.records.iter().map(|r| r.event.as_str()).collect();
        assert_eq!(events, ["boot", "heap", "option", "devtree", "end"]);
        assert_eq!(r.records[0].line, 3);
        let boot = r.boot().unwrap();
        assert_eq!(boot.arch, "x86_64");
        assert_eq!(boot.machine, "q35");
        assert_eq!(boot.load_addr, Hex(0x10_0000));
        assert_eq!(boot.cpus, Some(2));
        assert_eq!(boot.tick_hz, None);
        assert_eq!(boot.cmdline, "sg.x=1 hello");
        assert_eq!(boot.memory[1].kind, MemoryKind::Reserved);
        let heap: Heap = r.first().unwrap();
        assert_eq!(heap.size, 64 << 20);
        let opt: OptionRecord = r.first().unwrap();
        assert_eq!(
            (opt.level, opt.option.as_str(), opt.value),
            (Level::Warning, "sg.x", None)
        );
        let dt = r.devtree().unwrap();
        assert_eq!(dt.cpus, 2);
        assert_eq!(dt.pci[0].vendor, Hex(0x1af4));
        assert_eq!(dt.pci[0].class, Hex(0x01_0000));
        assert_eq!(dt.rtas.unwrap()["power-off"], 8195);
        assert_eq!(dt.virtio_mmio[0].irq, None);
        let end = r.end().unwrap();
        assert_eq!(end.verdict, Verdict::Pass);
        assert_eq!(end.warnings, 1);
        assert_eq!(end.entry_to_end_us, Some(1234));
    }

    #[test]
    fn failure_records() {
        let r = parse(&[BOOT, MALFORMED, ERROR, EXC_PPC, PANIC, END_FAIL]);
        assert_eq!(r.errors, vec![]);
        let opt: OptionRecord = r.first().unwrap();
        assert_eq!(opt.level, Level::Error);
        assert_eq!(opt.value.as_deref(), Some("maybe"));
        assert_eq!(opt.expected.as_deref(), Some("0|1"));
        let err: Error = r.first().unwrap();
        assert_eq!(err.what, "devtree");
        let exc: Exception = r.first().unwrap();
        assert_eq!(exc.vector, Hex(0x300));
        assert_eq!(exc.msr, Some(Hex(0x8000_0000_0000_1001)));
        assert_eq!(exc.cr2, None);
        let p: Panic = r.first().unwrap();
        assert_eq!(p.line, 112);
        assert_eq!(r.end().unwrap().verdict, Verdict::Fail);
        assert_eq!(r.end().unwrap().entry_to_end_us, None);

        let r = parse(&[BOOT, EXC_X86, END_FAIL]);
        let exc: Exception = r.first().unwrap();
        assert_eq!(exc.error_code, Some(Hex(2)));
        assert_eq!(exc.cr2, Some(Hex(0xffff_8000_0000_0000)));
    }

    #[test]
    fn other_lines_are_ignored() {
        let r = parse(&[
            "",
            "hello",
            "@sg",
            "@sgx {}",
            " @sg {\"event\":\"x\"}",
            "sg {}",
            BOOT,
        ]);
        // " @sg {" is a glued record (see below); the rest is plain text.
        assert_eq!(r.records.len(), 1);
        assert_eq!(r.errors.len(), 1);
        assert_eq!(r.errors[0].line, 5);
    }

    #[test]
    fn bad_records_are_protocol_errors() {
        let cases: &[(&str, &str)] = &[
            ("@sg not json", "not valid JSON"),
            ("@sg {\"event\":\"boot\",\"v\":1", "not valid JSON"),
            ("@sg [1,2]", "not a JSON object"),
            ("@sg {\"v\":1}", "no `event`"),
            ("@sg {\"event\":\"x\"}", "no `v`"),
            ("@sg {\"event\":3,\"v\":1}", "`event` is not"),
            ("@sg {\"event\":\"\",\"v\":1}", "`event` is not"),
            ("@sg {\"event\":\"x\",\"v\":\"1\"}", "`v` is not a number"),
            ("@sg {\"event\":\"x\",\"v\":-1}", "not a version number"),
            ("@sg {\"event\":\"x\",\"v\":1.5}", "not a version number"),
            ("@sg {\"event\":\"x\",\"v\":0}", "version 0"),
            ("@sg {\"event\":\"x\",\"v\":2}", "update the harness"),
            ("@sg {\"event\":\"x\",\"v\":1} trailing", "not valid JSON"),
            ("@sg ", "not valid JSON"),
            (
                "Booting from ROM..@sg {\"event\":\"boot\",\"v\":1}",
                "does not start its line",
            ),
        ];
        for (line, want) in cases {
            let r = parse(&[line]);
            assert!(r.records.is_empty(), "{line}: {:?}", r.records);
            assert_eq!(r.errors.len(), 1, "{line}");
            assert!(
                r.errors[0].message.contains(want),
                "{line}: {}",
                r.errors[0]
            );
            assert_eq!(r.errors[0].line, 1);
        }
        let r = Report::parse(b"@sg {\"event\":\"x\",\"v\":1,\"s\":\"\xff\"}\n");
        assert!(r.errors[0].message.contains("UTF-8"));
    }

    #[test]
    fn newer_version_says_update_the_harness() {
        let r = parse(&[BOOT, r#"@sg {"event":"end","v":2,"verdict":"pass"}"#]);
        assert_eq!(r.records.len(), 1, "a v2 record is not used");
        assert!(r.end().is_none());
        let e = r.errors[0].to_string();
        assert!(
            e.contains("version 2") && e.contains("reads version 1"),
            "{e}"
        );
    }

    #[test]
    fn documented_events_must_fit_the_contract() {
        let cases = [
            // Missing field.
            r#"@sg {"event":"end","v":1,"verdict":"pass","errors":0,"warnings":0}"#,
            // Unknown verdict.
            r#"@sg {"event":"end","v":1,"verdict":"maybe","errors":0,"warnings":0,"entry_to_end_us":null}"#,
            // An address as a JSON number.
            r#"@sg {"event":"heap","v":1,"base":4096,"size":1}"#,
            // Hex without 0x.
            r#"@sg {"event":"heap","v":1,"base":"1000","size":1}"#,
            // Wrong type.
            r#"@sg {"event":"panic","v":1,"message":"m","file":"f","line":"12"}"#,
            r#"@sg {"event":"option","v":1,"level":"fatal","option":"sg.x","message":"m"}"#,
        ];
        for c in cases {
            let r = parse(&[c]);
            assert_eq!(r.records.len(), 1, "{c}: kept, so it can be shown");
            assert!(
                r.errors
                    .iter()
                    .any(|e| e.message.contains("does not match docs/report.md")),
                "{c}: {:?}",
                r.errors
            );
        }
        // Unknown fields and unknown events are compatible additions.
        let r = parse(&[
            BOOT,
            r#"@sg {"event":"heap","v":1,"base":"0x1000","size":1,"new_field":[1]}"#,
            r#"@sg {"event":"brand-new","v":1,"x":1}"#,
            END_PASS,
        ]);
        assert_eq!(r.errors, vec![]);
        assert_eq!(r.first::<Heap>().unwrap().base, Hex(0x1000));
    }

    #[test]
    fn order_rules() {
        let r = parse(&[HEAP, BOOT, END_PASS]);
        assert_eq!(r.errors.len(), 1);
        assert!(r.errors[0].message.contains("not `boot`"));

        let r = parse(&[BOOT, END_PASS, HEAP, END_FAIL]);
        assert_eq!(r.errors.len(), 2, "{:?}", r.errors);
        assert!(r.errors[0].message.contains("after the `end`"));
        assert_eq!(
            r.end().unwrap().verdict,
            Verdict::Pass,
            "the first end counts"
        );

        // No end at all is not a protocol error: the run is wedged or crashed.
        assert_eq!(parse(&[BOOT, HEAP]).errors, vec![]);
        assert_eq!(parse(&[]).errors, vec![]);
    }

    #[test]
    fn line_endings_and_truncation() {
        // CRLF is fine.
        let r = Report::parse(format!("{BOOT}\r\n{END_PASS}\r\n").as_bytes());
        assert_eq!(r.errors, vec![]);
        assert_eq!(r.records.len(), 2);
        // Cut off mid-record: an error that says so.
        let r = Report::parse(format!("{BOOT}\n@sg {{\"event\":\"end\",\"v\":1,\"ver").as_bytes());
        assert_eq!(r.records.len(), 1);
        assert!(r.errors[0].message.contains("cut off"), "{}", r.errors[0]);
        assert_eq!(r.errors[0].line, 2);
        // A complete last record without its newline is kept but flagged.
        let r = Report::parse(format!("{BOOT}\n{END_PASS}").as_bytes());
        assert_eq!(r.records.len(), 2);
        assert!(r.errors[0].message.contains("no end of line"));
    }

    #[test]
    fn hostile_strings_stay_inside_their_record() {
        // What src/report escapes: a command line that looks like a record.
        let line = r#"@sg {"event":"option","v":1,"level":"warning","option":"sg.@sg {\"event\":\"end\",\"v\":1}","message":"unknown option, ignored\n@sg {}"}"#;
        let r = parse(&[line]);
        assert_eq!(r.records.len(), 1);
        let o: OptionRecord = r.first().unwrap();
        assert!(o.option.starts_with("sg.@sg {"));
        assert!(r.end().is_none());
        // Long garbage is cut in the error.
        let long = format!("@sg {}", "x".repeat(100_000));
        let r = parse(&[&long]);
        assert!(r.errors[0].text.len() <= MAX_LINE_EXCERPT);
    }

    #[test]
    fn summaries() {
        let r = parse(&[
            BOOT,
            WARN,
            EXC_X86,
            r#"@sg {"event":"brand-new","v":1,"x":1,"s":"a b"}"#,
        ]);
        let s = r.records[0].summary();
        assert!(s.starts_with("boot "), "{s}");
        assert!(
            s.contains("machine=q35") && s.contains("cmdline=\"sg.x=1 hello\""),
            "{s}"
        );
        assert!(r.records[1].summary().contains("option=sg.x"));
        assert!(r.records[2].summary().contains("cr2=0xffff800000000000"));
        assert!(r.records[3].summary().contains("x=1 s=\"a b\""));
        assert!(r.records[0].to_json().starts_with('{'));
    }

    #[test]
    fn verdict_exit_codes_match_the_guest() {
        // docs/report.md: pass → 1, fail → 3, reject → 5.
        assert_eq!(Verdict::Pass.debug_exit_status(), 1);
        assert_eq!(Verdict::Fail.debug_exit_status(), 3);
        assert_eq!(Verdict::Reject.debug_exit_status(), 5);
    }

    const VIRTIO_RNG: &str = r#"@sg {"event":"virtio","v":1,"t_us":5,"device":"rng","device_id":4,"transport":"virtio-pci-modern","location":"00:05.0","features_offered":"0x100000000","features_accepted":"0x100000000","features_offered_names":["VERSION_1"],"features_accepted_names":["VERSION_1"],"access_platform":{"offered":false,"accepted":false},"queues":[{"index":0,"size":256,"ring":"split","indirect":false,"event_idx":false}],"dma":"direct","requests":1,"bytes_to_device":0,"bytes_from_device":64,"notifications":1,"result":"ok","entropy_bytes":64}"#;

    #[test]
    fn virtio_records() {
        let r = parse(&[BOOT, VIRTIO_RNG, END_PASS]);
        assert_eq!(r.errors, vec![]);
        let v: Virtio = r.first().unwrap();
        assert_eq!(v.device, "rng");
        assert_eq!(v.features_offered, Hex(1 << 32));
        assert_eq!(v.queues[0].ring, RingKind::Split);
        assert_eq!(v.result, DeviceResult::Ok);
        let rng: VirtioRng = r.first().unwrap();
        assert_eq!(rng.entropy_bytes, 64);
        assert!(r.records[1].summary().contains("device=rng"));

        let bad = |from: &str, to: &str| {
            let line = VIRTIO_RNG.replace(from, to);
            assert_ne!(line, VIRTIO_RNG, "{from}");
            parse(&[BOOT, &line, END_PASS]).errors
        };
        // A working device must report its own fields; the common ones always.
        let e = bad(r#","entropy_bytes":64"#, "");
        assert!(e[0].message.contains("rng fields"), "{e:?}");
        let e = bad(r#""dma":"direct","#, "");
        assert!(e[0].message.contains("dma"), "{e:?}");
        let e = bad(r#""ring":"split""#, r#""ring":"ring""#);
        assert_eq!(e.len(), 1, "{e:?}");
        let e = bad(r#""device":"rng""#, r#""device":"gpu""#);
        assert!(e[0].message.contains("unknown `device`"), "{e:?}");
        // An error needs its `error`; a failed or skipped device need not know its own fields.
        let e = bad(r#""result":"ok","entropy_bytes":64"#, r#""result":"error""#);
        assert!(e[0].message.contains("no `error` string"), "{e:?}");
        assert_eq!(
            bad(
                r#""result":"ok","entropy_bytes":64"#,
                r#""result":"error","error":"timeout after 5000 ms""#
            ),
            vec![]
        );
        assert_eq!(
            bad(
                r#""result":"ok","entropy_bytes":64"#,
                r#""result":"skipped""#
            ),
            vec![]
        );
        // A device the guest does not drive.
        assert_eq!(
            bad(
                r#""device":"rng","device_id":4"#,
                r#""device":"type-9","device_id":9"#
            ),
            vec![]
        );
    }

    #[test]
    fn view_checks_the_event_name() {
        let r = parse(&[BOOT]);
        assert!(
            r.records[0]
                .view::<End>()
                .unwrap_err()
                .contains("not `end`")
        );
    }
}
