//! `sg.*` options from the kernel command line.
//!
//! Tokens are separated by ASCII white space; a value may be double-quoted to hold spaces
//! (`sg.x="a b"`). Tokens that do not start with `sg.` belong to someone else and are ignored.
//! An unknown `sg.` option is a warning (a newer harness may pass options an older guest does not
//! know); a known option with a malformed value is an error: the run fails and names it.

use alloc::string::String;
use alloc::vec::Vec;

/// Every option the guest understands. `name`, the value syntax and what it does; the README
/// table is generated from the same words by hand, keep them in step.
pub const OPTIONS: &[(&str, &str, &str)] = &[
    ("sg.debug.panic", "0|1", "test only: panic after the devtree record, to exercise the panic path"),
    ("sg.debug.fault", "0|1", "test only: take an unexpected interrupt, to exercise the exception vectors"),
];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub debug_panic: bool,
    pub debug_fault: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Diagnostic {
    /// `sg.something` that this guest does not know.
    Unknown { option: String },
    /// A known option whose value does not parse.
    Malformed { option: String, value: String, expected: &'static str },
    /// A token that is not valid UTF-8 or has an unterminated quote.
    BadToken { token: String, why: &'static str },
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        !matches!(self, Diagnostic::Unknown { .. })
    }
}

/// Splits a command line into tokens, honouring double quotes. Returns the raw bytes of each
/// token with the quotes removed, and whether its quote was closed.
fn tokens(line: &[u8]) -> Vec<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut in_quote = false;
    let mut have = false;
    for &b in line {
        match b {
            b'"' => {
                in_quote = !in_quote;
                have = true;
            }
            b if b.is_ascii_whitespace() && !in_quote => {
                if have {
                    out.push((core::mem::take(&mut cur), true));
                    have = false;
                }
            }
            0 if !in_quote => break, // a NUL ends a C string: anything after it is not ours
            b => {
                cur.push(b);
                have = true;
            }
        }
    }
    if have {
        out.push((cur, !in_quote));
    }
    out
}

pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "on" | "yes" | "true" => Some(true),
        "0" | "off" | "no" | "false" => Some(false),
        _ => None,
    }
}

/// Parses `4096`, `0x1000`, `64K`, `16M`, `1G` (binary units, optional `iB`/`B`).
pub fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim_end_matches("iB").trim_end_matches('B');
    let (digits, shift) = match v.as_bytes().last()? {
        b'k' | b'K' => (&v[..v.len() - 1], 10),
        b'm' | b'M' => (&v[..v.len() - 1], 20),
        b'g' | b'G' => (&v[..v.len() - 1], 30),
        b't' | b'T' => (&v[..v.len() - 1], 40),
        _ => (v, 0),
    };
    let n = if let Some(hex) = digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()?
    } else {
        digits.parse::<u64>().ok()?
    };
    n.checked_mul(1u64 << shift)
}

/// Parses the command line into options and diagnostics (in the order they appear).
pub fn parse(line: &[u8]) -> (Options, Vec<Diagnostic>) {
    let mut opts = Options::default();
    let mut diags = Vec::new();
    for (tok, closed) in tokens(line) {
        if !tok.starts_with(b"sg.") {
            continue;
        }
        let Ok(tok) = core::str::from_utf8(&tok) else {
            diags.push(Diagnostic::BadToken {
                token: String::from_utf8_lossy(&tok).into_owned(),
                why: "not valid UTF-8",
            });
            continue;
        };
        if !closed {
            diags.push(Diagnostic::BadToken { token: tok.into(), why: "unterminated quote" });
            continue;
        }
        let (name, value) = match tok.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (tok, None),
        };
        let mut malformed = |expected: &'static str| {
            diags.push(Diagnostic::Malformed {
                option: name.into(),
                value: value.unwrap_or("").into(),
                expected,
            })
        };
        // A bare boolean option (`sg.debug.panic`) means "on".
        let boolean = |v: Option<&str>| v.map_or(Some(true), parse_bool);
        match name {
            "sg.debug.panic" => match boolean(value) {
                Some(b) => opts.debug_panic = b,
                None => malformed("0|1"),
            },
            "sg.debug.fault" => match boolean(value) {
                Some(b) => opts.debug_fault = b,
                None => malformed("0|1"),
            },
            _ => diags.push(Diagnostic::Unknown { option: name.into() }),
        }
    }
    (opts, diags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_unknown_and_foreign_tokens() {
        let (o, d) = parse(b"console=hvc0 sg.debug.panic=1 sg.nope=3 quiet sg.debug.fault");
        assert!(o.debug_panic);
        assert!(o.debug_fault);
        assert_eq!(d, vec![Diagnostic::Unknown { option: "sg.nope".into() }]);
        assert!(!d[0].is_error());
    }

    #[test]
    fn malformed_value_names_the_option() {
        let (o, d) = parse(b"sg.debug.panic=maybe");
        assert!(!o.debug_panic);
        assert_eq!(
            d,
            vec![Diagnostic::Malformed {
                option: "sg.debug.panic".into(),
                value: "maybe".into(),
                expected: "0|1"
            }]
        );
        assert!(d[0].is_error());
    }

    #[test]
    fn quotes_nul_and_garbage() {
        assert_eq!(tokens(b"a \"b c\" d=\"e f\""), vec![
            (b"a".to_vec(), true),
            (b"b c".to_vec(), true),
            (b"d=e f".to_vec(), true)
        ]);
        let (_, d) = parse(b"sg.debug.panic=\"1");
        assert!(matches!(d[0], Diagnostic::BadToken { why: "unterminated quote", .. }));
        let (_, d) = parse(b"sg.\xff\xfe=1");
        assert!(matches!(d[0], Diagnostic::BadToken { why: "not valid UTF-8", .. }));
        let (o, d) = parse(b"sg.debug.panic\0sg.debug.fault garbage");
        assert!(o.debug_panic && !o.debug_fault && d.is_empty());
        let (o, d) = parse(b"");
        assert_eq!(o, Options::default());
        assert!(d.is_empty());
        // Arbitrary bytes never panic.
        let mut x = 0x1234_5678u32;
        for _ in 0..2000 {
            let line: Vec<u8> = (0..64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    let alphabet = b"sg.=\" \x00\xffdebugpanic1";
                    alphabet[x as usize % alphabet.len()]
                })
                .collect();
            let _ = parse(&line);
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("0x1000"), Some(4096));
        assert_eq!(parse_size("64K"), Some(65536));
        assert_eq!(parse_size("16M"), Some(16 << 20));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("1T"), Some(1 << 40));
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("99999999999999999999G"), None);
        assert_eq!(parse_size("16777216T"), None);
    }
}
