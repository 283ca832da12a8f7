//! The machine-readable report: one console line per record, `@sg {json}`.
//!
//! The format is a contract with every tool that reads it (docs/report.md). Records are written
//! with a tiny streaming JSON writer so that no allocation is needed: a report must still come
//! out when the heap is broken or not yet set up.

use core::fmt::{self, Write};

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
pub struct Record<W: Write> {
    out: W,
    failed: bool,
}

impl<W: Write> Record<W> {
    pub fn new(out: W, event: &str) -> Self {
        let mut r = Record { out, failed: false };
        r.raw(LINE_PREFIX);
        r.raw("{\"event\":");
        r.string_value(event);
        r.raw(",\"v\":");
        r.display(REPORT_VERSION);
        r
    }

    fn raw(&mut self, s: &str) {
        if self.out.write_str(s).is_err() {
            self.failed = true;
        }
    }

    fn display(&mut self, v: impl fmt::Display) {
        if write!(self.out, "{v}").is_err() {
            self.failed = true;
        }
    }

    fn key(&mut self, key: &str) {
        self.raw(",");
        self.string_value(key);
        self.raw(":");
    }

    fn string_value(&mut self, s: &str) {
        self.raw("\"");
        self.escaped(s);
        self.raw("\"");
    }

    /// Writes `s` escaped for a JSON string, without quotes.
    fn escaped(&mut self, s: &str) {
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
            self.raw(&s[start..i]);
            if escaped.is_empty() {
                if write!(self.out, "\\u{:04x}", c as u32).is_err() {
                    self.failed = true;
                }
            } else {
                self.raw(escaped);
            }
            start = i + c.len_utf8();
        }
        self.raw(&s[start..]);
    }

    /// A string field. Control characters are escaped, so a hostile string from the host cannot
    /// break the line structure of the report.
    pub fn str(mut self, key: &str, value: &str) -> Self {
        self.key(key);
        self.string_value(value);
        self
    }

    /// A string made of bytes from the host: invalid UTF-8 is replaced, never trusted.
    pub fn bytes_lossy(mut self, key: &str, value: &[u8]) -> Self {
        self.key(key);
        self.raw("\"");
        for chunk in value.utf8_chunks() {
            self.escaped(chunk.valid());
            if !chunk.invalid().is_empty() {
                self.raw("\u{fffd}");
            }
        }
        self.raw("\"");
        self
    }

    pub fn u64(mut self, key: &str, value: u64) -> Self {
        self.key(key);
        self.display(value);
        self
    }

    /// A 64-bit value as a hex string (`"0x1f"`): JSON numbers lose precision above 2^53.
    pub fn hex(mut self, key: &str, value: u64) -> Self {
        self.key(key);
        if write!(self.out, "\"{value:#x}\"").is_err() {
            self.failed = true;
        }
        self
    }

    pub fn bool(mut self, key: &str, value: bool) -> Self {
        self.key(key);
        self.raw(if value { "true" } else { "false" });
        self
    }

    pub fn null(mut self, key: &str) -> Self {
        self.key(key);
        self.raw("null");
        self
    }

    pub fn opt_u64(self, key: &str, value: Option<u64>) -> Self {
        match value {
            Some(v) => self.u64(key, v),
            None => self.null(key),
        }
    }

    /// Raw JSON produced by the caller (an array or object built with [`Json`]).
    pub fn json(mut self, key: &str, f: impl FnOnce(&mut Json<'_, W>)) -> Self {
        self.key(key);
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
    pub fn end(mut self) -> bool {
        self.raw("}\n");
        !self.failed
    }
}

/// Writer for nested JSON arrays and objects inside a record.
pub struct Json<'w, W: Write> {
    out: &'w mut W,
    failed: bool,
    first: bool,
}

impl<W: Write> Json<'_, W> {
    fn raw(&mut self, s: &str) {
        if self.out.write_str(s).is_err() {
            self.failed = true;
        }
    }
    fn sep(&mut self) {
        if !self.first {
            self.raw(",");
        }
        self.first = false;
    }
    fn string(&mut self, s: &str) {
        let mut r = Record {
            out: &mut *self.out,
            failed: false,
        };
        r.string_value(s);
        self.failed |= r.failed;
    }
    pub fn begin_array(&mut self) {
        self.sep();
        self.raw("[");
        self.first = true;
    }
    pub fn end_array(&mut self) {
        self.raw("]");
        self.first = false;
    }
    pub fn begin_object(&mut self) {
        self.sep();
        self.raw("{");
        self.first = true;
    }
    pub fn end_object(&mut self) {
        self.raw("}");
        self.first = false;
    }
    /// A key inside an object; the value follows with one of the value methods.
    pub fn key(&mut self, k: &str) {
        self.sep();
        self.string(k);
        self.raw(":");
        self.first = true;
    }
    pub fn str(&mut self, s: &str) {
        self.sep();
        self.string(s);
    }
    pub fn u64(&mut self, v: u64) {
        self.sep();
        if write!(self.out, "{v}").is_err() {
            self.failed = true;
        }
    }
    pub fn hex(&mut self, v: u64) {
        self.sep();
        if write!(self.out, "\"{v:#x}\"").is_err() {
            self.failed = true;
        }
    }
    pub fn null(&mut self) {
        self.sep();
        self.raw("null");
    }
    pub fn bool(&mut self, v: bool) {
        self.sep();
        self.raw(if v { "true" } else { "false" });
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
