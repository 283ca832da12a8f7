//! The machine-readable report: one console line per record, `@sg {json}`.
//!
//! The format is a contract with every tool that reads it (docs/report.md). Records are written
//! with a tiny streaming JSON writer so that no allocation is needed: a report must still come
//! out when the heap is broken or not yet set up.

use core::fmt::Write;

/// Version of the report format. Bump it on any change a reader could notice, and say what
/// changed in docs/report.md.
pub const REPORT_VERSION: u32 = 1;

/// The prefix that marks a report line on the console.
pub const LINE_PREFIX: &str = "@sg ";

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Everything asked for was done and checked.
    Pass,
    /// Something went wrong: a bad option, a panic, a device that misbehaved.
    Fail,
    /// The guest refused to run as configured (for example secure mode asked for but absent).
    Reject,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Reject => "reject",
        }
    }

    /// The code passed to `isa-debug-exit` (QEMU exits with `code * 2 + 1`).
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Pass => 0,
            Verdict::Fail => 1,
            Verdict::Reject => 2,
        }
    }
}

/// Writes one record: `@sg {"event":"…","v":1, …}` and the newline on `end`.
/// `W` is the sink itself or a `&mut` to one (`&mut String` is a `fmt::Write` too).
///
/// Every method is out of line and hands `&mut dyn Write` to the writers below, and numbers
/// are formatted without `core::fmt`. A boot writes a few hundred fields from dozens of call
/// sites: inlined, each field was several branches and calls of its own, which cost image size
/// and, under TCG, a translation of each of them the first time it runs (~10 µs each on
/// pseries). Out of line, a field is one call.
pub struct Record<W: Write> {
    out: W,
    failed: bool,
}

impl<W: Write> Record<W> {
    #[inline(never)]
    pub fn new(mut out: W, event: &str) -> Self {
        let failed = begin_record(&mut out, event);
        Record { out, failed }
    }

    /// A string field. Control characters are escaped, so a hostile string from the host cannot
    /// break the line structure of the report.
    #[inline(never)]
    pub fn str(mut self, key: &str, value: &str) -> Self {
        self.failed |= field(&mut self.out, key, Value::Str(value));
        self
    }

    /// A string made of bytes from the host: invalid UTF-8 is replaced, never trusted.
    #[inline(never)]
    pub fn bytes_lossy(mut self, key: &str, value: &[u8]) -> Self {
        self.failed |= field(&mut self.out, key, Value::Bytes(value));
        self
    }

    #[inline(never)]
    pub fn u64(mut self, key: &str, value: u64) -> Self {
        self.failed |= field(&mut self.out, key, Value::U64(value));
        self
    }

    /// A 64-bit value as a hex string (`"0x1f"`): JSON numbers lose precision above 2^53.
    #[inline(never)]
    pub fn hex(mut self, key: &str, value: u64) -> Self {
        self.failed |= field(&mut self.out, key, Value::Hex(value));
        self
    }

    #[inline(never)]
    pub fn bool(mut self, key: &str, value: bool) -> Self {
        let v = if value { "true" } else { "false" };
        self.failed |= field(&mut self.out, key, Value::Raw(v));
        self
    }

    #[inline(never)]
    pub fn null(mut self, key: &str) -> Self {
        self.failed |= field(&mut self.out, key, Value::Raw("null"));
        self
    }

    #[inline(never)]
    pub fn opt_u64(mut self, key: &str, value: Option<u64>) -> Self {
        let v = match value {
            Some(v) => Value::U64(v),
            None => Value::Raw("null"),
        };
        self.failed |= field(&mut self.out, key, v);
        self
    }

    /// `,"key":{"name":n,...}`: an object of number fields (counts by kind).
    pub fn u64_object(self, key: &str, fields: &[(&str, u64)]) -> Self {
        self.json(key, |j| {
            j.begin_object();
            j.u64_fields(fields);
            j.end_object();
        })
    }

    /// Raw JSON produced by the caller (an array or object built with [`Json`]).
    pub fn json(mut self, key: &str, f: impl FnOnce(&mut Json<'_>)) -> Self {
        self.failed |= field(&mut self.out, key, Value::Raw(""));
        let mut j = Json {
            out: &mut self.out,
            failed: false,
            first: true,
        };
        f(&mut j);
        self.failed |= j.failed;
        self
    }

    /// Finishes the line. Returns whether everything was written.
    #[inline(never)]
    pub fn end(mut self) -> bool {
        self.failed |= self.out.write_str("}\n").is_err();
        !self.failed
    }
}

/// One JSON value, for the out-of-line writers.
#[derive(Clone, Copy)]
enum Value<'a> {
    Str(&'a str),
    Bytes(&'a [u8]),
    U64(u64),
    Hex(u64),
    /// Written as is: `true`, `null`, or nothing (the caller writes the value).
    Raw(&'a str),
}

/// `@sg {"event":…,"v":N`. Returns whether anything failed.
fn begin_record(out: &mut dyn Write, event: &str) -> bool {
    let mut failed = out.write_str(LINE_PREFIX).is_err();
    failed |= out.write_str("{\"event\":").is_err();
    failed |= value(out, Value::Str(event));
    failed |= out.write_str(",\"v\":").is_err();
    failed | value(out, Value::U64(REPORT_VERSION.into()))
}

/// `,"key":value`. Returns whether anything failed.
#[inline(never)]
fn field(out: &mut dyn Write, key: &str, v: Value<'_>) -> bool {
    let mut failed = out.write_str(",").is_err();
    failed |= value(out, Value::Str(key));
    failed |= out.write_str(":").is_err();
    failed | value(out, v)
}

/// Writes one value. Returns whether anything failed.
#[inline(never)]
fn value(out: &mut dyn Write, v: Value<'_>) -> bool {
    match v {
        Value::Str(s) => {
            let mut failed = out.write_str("\"").is_err();
            failed |= escaped(out, s);
            failed | out.write_str("\"").is_err()
        }
        Value::Bytes(b) => {
            let mut failed = out.write_str("\"").is_err();
            for chunk in b.utf8_chunks() {
                failed |= escaped(out, chunk.valid());
                if !chunk.invalid().is_empty() {
                    failed |= out.write_str("\u{fffd}").is_err();
                }
            }
            failed | out.write_str("\"").is_err()
        }
        Value::U64(n) => out.write_str(digits(&mut [0; 20], n, 10)).is_err(),
        Value::Hex(n) => {
            let mut failed = out.write_str("\"0x").is_err();
            failed |= out.write_str(digits(&mut [0; 20], n, 16)).is_err();
            failed | out.write_str("\"").is_err()
        }
        Value::Raw(s) => out.write_str(s).is_err(),
    }
}

/// Appends `value` in lower-case hex, zero-padded to at least `width` digits: `{:0width$x}`
/// without `core::fmt`, whose first use at boot costs ~40 translated blocks (half a
/// millisecond under TCG) for a PCI address.
pub fn push_hex(out: &mut alloc::string::String, value: u64, width: usize) {
    let mut buf = [0u8; 20];
    let hex = digits(&mut buf, value, 16);
    for _ in hex.len()..width {
        out.push('0');
    }
    out.push_str(hex);
}

/// `n` in base 10 or 16 (lower case), without `core::fmt`.
fn digits(buf: &mut [u8; 20], mut n: u64, base: u64) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[(n % base) as usize];
        n /= base;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    core::str::from_utf8(&buf[i..]).unwrap_or("")
}

/// Writes `s` escaped for a JSON string, without quotes. Returns whether anything failed.
fn escaped(out: &mut dyn Write, s: &str) -> bool {
    let mut failed = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let escaped = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if (c as u32) < 0x20 || c == '\u{7f}' => "",
            _ => continue,
        };
        failed |= out.write_str(&s[start..i]).is_err();
        if escaped.is_empty() {
            // \u00XX: one or two hex digits after the zeros.
            let mut hex = [0; 20];
            let h = digits(&mut hex, c as u64, 16);
            failed |= out.write_str(["\\u00", "\\u000"][h.len() % 2]).is_err();
            failed |= out.write_str(h).is_err();
        } else {
            failed |= out.write_str(escaped).is_err();
        }
        start = i + c.len_utf8();
    }
    failed | out.write_str(&s[start..]).is_err()
}

/// Writer for nested JSON arrays and objects inside a record.
pub struct Json<'w> {
    out: &'w mut dyn Write,
    failed: bool,
    first: bool,
}

impl Json<'_> {
    #[inline(never)]
    fn put(&mut self, v: Value<'_>) {
        if !self.first {
            self.failed |= self.out.write_str(",").is_err();
        }
        self.first = false;
        self.failed |= value(self.out, v);
    }
    #[inline(never)]
    fn close(&mut self, s: &str) {
        self.failed |= self.out.write_str(s).is_err();
        self.first = false;
    }
    #[inline(never)]
    pub fn begin_array(&mut self) {
        self.put(Value::Raw("["));
        self.first = true;
    }
    #[inline(never)]
    pub fn end_array(&mut self) {
        self.close("]");
    }
    #[inline(never)]
    pub fn begin_object(&mut self) {
        self.put(Value::Raw("{"));
        self.first = true;
    }
    #[inline(never)]
    pub fn end_object(&mut self) {
        self.close("}");
    }
    /// A key inside an object; the value follows with one of the value methods.
    #[inline(never)]
    pub fn key(&mut self, k: &str) {
        self.put(Value::Str(k));
        self.close(":");
        self.first = true;
    }
    #[inline(never)]
    pub fn str(&mut self, s: &str) {
        self.put(Value::Str(s));
    }
    #[inline(never)]
    pub fn u64(&mut self, v: u64) {
        self.put(Value::U64(v));
    }
    /// `"key":number` pairs inside the current object.
    #[inline(never)]
    pub fn u64_fields(&mut self, fields: &[(&str, u64)]) {
        for &(k, v) in fields {
            self.key(k);
            self.u64(v);
        }
    }
    #[inline(never)]
    pub fn hex(&mut self, v: u64) {
        self.put(Value::Hex(v));
    }
    #[inline(never)]
    pub fn null(&mut self) {
        self.put(Value::Raw("null"));
    }
    #[inline(never)]
    pub fn bool(&mut self, v: bool) {
        self.put(Value::Raw(if v { "true" } else { "false" }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(f: impl FnOnce(&mut String)) -> String {
        let mut s = String::new();
        f(&mut s);
        s
    }

    /// `push_hex` and `PciAddress::bdf` write what `format!` would.
    #[test]
    fn hex_without_fmt_matches_format() {
        for (v, w) in [
            (0u64, 1),
            (0, 6),
            (0x8086, 2),
            (0x60400, 6),
            (u64::MAX, 4),
            (5, 0),
        ] {
            let mut s = String::new();
            push_hex(&mut s, v, w);
            assert_eq!(s, format!("{v:0w$x}"));
        }
        for (b, d, f) in [(0u8, 0u8, 0u8), (0xff, 0x1f, 7), (0x10, 0x02, 3)] {
            let at = crate::virtio::pci::PciAddress::new(b, d, f);
            assert_eq!(at.bdf(), format!("{b:02x}:{d:02x}.{f}"));
            assert_eq!(at.to_string(), at.bdf());
        }
    }

    #[test]
    fn u64_object_writes_an_object_of_numbers() {
        let s = line(|s| {
            assert!(
                Record::new(s, "x")
                    .u64_object("counts", &[("a", 1), ("b", 22)])
                    .end()
            )
        });
        assert!(s.contains(r#","v":1,"counts":{"a":1,"b":22}}"#), "{s}");
    }

    #[test]
    fn record_is_one_json_line() {
        let s = line(|s| {
            assert!(
                Record::new(s, "boot")
                    .str("arch", "ppc64le")
                    .u64("mem", 512)
                    .hex("load", 0x40_0000)
                    .bool("ok", true)
                    .null("x")
                    .end()
            );
        });
        assert!(s.starts_with("@sg "));
        assert!(s.ends_with("}\n"));
        assert_eq!(s.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(&s[4..]).unwrap();
        assert_eq!(v["event"], "boot");
        assert_eq!(v["v"], REPORT_VERSION);
        assert_eq!(v["arch"], "ppc64le");
        assert_eq!(v["mem"], 512);
        assert_eq!(v["load"], "0x400000");
        assert_eq!(v["ok"], true);
        assert!(v["x"].is_null());
    }

    #[test]
    fn hostile_strings_cannot_break_the_line() {
        let evil = "a\"b\\c\nd\r\u{1}\u{7f}é@sg {\"event\":\"end\"}";
        let s = line(|s| {
            Record::new(s, "x")
                .str("s", evil)
                .bytes_lossy("b", b"ok\xff\n\"z")
                .end();
        });
        assert_eq!(s.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(&s[4..]).unwrap();
        assert_eq!(v["s"], evil);
        assert_eq!(v["b"], "ok\u{fffd}\n\"z");
    }

    #[test]
    fn nested_json() {
        let s = line(|s| {
            Record::new(s, "devtree")
                .json("regions", |j| {
                    j.begin_array();
                    for (a, b) in [(0u64, 10u64), (20, 30)] {
                        j.begin_object();
                        j.key("base");
                        j.hex(a);
                        j.key("size");
                        j.u64(b);
                        j.end_object();
                    }
                    j.end_array();
                })
                .json("names", |j| {
                    j.begin_array();
                    j.str("a");
                    j.str("b\"");
                    j.end_array();
                })
                .end();
        });
        let v: serde_json::Value = serde_json::from_str(&s[4..]).unwrap();
        assert_eq!(v["regions"][1]["base"], "0x14");
        assert_eq!(v["regions"][1]["size"], 30);
        assert_eq!(v["names"][1], "b\"");
    }

    #[test]
    fn verdict_codes() {
        assert_eq!(Verdict::Pass.as_str(), "pass");
        assert_eq!(Verdict::Fail.exit_code(), 1);
        assert_eq!(Verdict::Reject.exit_code(), 2);
    }
}
