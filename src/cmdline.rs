//! `sg.*` options from the kernel command line.
//!
//! Tokens are separated by ASCII white space; a value may be double-quoted to hold spaces
//! (`sg.x="a b"`). Tokens that do not start with `sg.` belong to someone else and are ignored.
//! An unknown `sg.` option is a warning (a newer harness may pass options an older guest does not
//! know); a known option with a malformed value is an error: the run fails and names it.

use alloc::string::String;
use alloc::vec::Vec;

use crate::dma::iommu::{IommuDebug, IommuMap};
use crate::dma::tce::TceMode;
use crate::platform::decide::{DmaChoice, LegacyPolicy, SecureMode};

/// Every option the guest understands. `name`, the value syntax and what it does; the README
/// table is generated from the same words by hand, keep them in step.
pub const OPTIONS: &[(&str, &str, &str)] = &[
    (
        "sg.debug.panic",
        "0|1",
        "test only: panic after the devtree record, to exercise the panic path",
    ),
    (
        "sg.debug.fault",
        "0|1",
        "test only: take an unexpected interrupt, to exercise the exception vectors",
    ),
    (
        "sg.debug.leak",
        "0|1",
        "test only: do not zero swiotlb slots on release, so that private data stays in shared memory (the host oracle must fail)",
    ),
    (
        "sg.debug.unmap_early",
        "0|1",
        "test only: a dynamic IOMMU domain removes each data buffer's mapping right after making it, before the device uses it (the host's IOMMU trace oracle must fail)",
    ),
    (
        "sg.debug.map_private",
        "0|1",
        "test only: an iommu+bounce domain also maps one private page (guest-physical 0) after the pool (the host's IOMMU trace oracle must fail)",
    ),
    (
        "sg.secure",
        "off|on|auto|emulate",
        "run as a secure guest: off, on (reject without secure hardware), auto (default: secure when the hardware is), emulate (the whole secure path with recorded sharing)",
    ),
    (
        "sg.swiotlb",
        "SIZE",
        "bytes of the shared bounce pool of a secure guest (64K..1G, default 4M), rounded up to the platform's sharing granularity",
    ),
    (
        "sg.legacy_devices",
        "refuse|bounce",
        "secure guest, device without ACCESS_PLATFORM: refuse it (default) or bounce through the pool anyway",
    ),
    (
        "sg.dma",
        "auto|direct|bounce|iommu|iommu+bounce",
        "the DMA path of every device: auto (default: iommu behind a translating IOMMU, iommu+bounce when also secure, else direct or bounce), or that path, an error for a device that cannot have it",
    ),
    (
        "sg.tce",
        "dynamic|ddw",
        "pseries IOMMU: map each request in the default TCE window (dynamic), or create a DDW window mapping all RAM once (ddw, the default when the PHB offers DDW)",
    ),
    (
        "sg.iommu.map",
        "dynamic|static",
        "x86 IOMMU (virtio-iommu, VT-d), normal guest: map each request (dynamic, the default) or all RAM once at IOVA = physical address (static); no effect on a secure guest (only the pool is mapped) nor on pseries (sg.tce)",
    ),
    (
        "sg.tce.batch",
        "0|1",
        "pseries dynamic TCE: write runs with H_PUT_TCE_INDIRECT and clear with H_STUFF_TCE (1, default), or one H_PUT_TCE per page (0)",
    ),
    (
        "sg.blk.read",
        "SIZE|all",
        "bytes to read from the start of each blk device and checksum; all (default): the whole disk, at most 64 MiB",
    ),
    (
        "sg.blk.write",
        "OFFSET:LEN:SEED",
        "write the pattern of SEED to LEN bytes at OFFSET (multiples of 512) of the disk sg.blk.disk names, then flush",
    ),
    (
        "sg.blk.disk",
        "N",
        "the blk device (N-th in report order, default 0) that sg.blk.write writes to",
    ),
    (
        "sg.blk.req",
        "SIZE",
        "data bytes per blk request (multiple of 512, at most 4 MiB; default 64K)",
    ),
    (
        "sg.blk.qd",
        "N",
        "blk requests in flight (default: the queue size)",
    ),
    (
        "sg.blk.random",
        "N",
        "4 KiB reads at pseudo-random offsets of each blk device after the sequential read, checksummed in issue order (default 0)",
    ),
    (
        "sg.net.frames",
        "N",
        "echo frames to send on each net device (default 8)",
    ),
    (
        "sg.console.read",
        "N",
        "bytes to read at most from console port 0 (default 64)",
    ),
    (
        "sg.rng.bytes",
        "N",
        "entropy bytes to read from each rng device (default 64)",
    ),
    (
        "sg.virtio.packed",
        "on|off",
        "accept VIRTIO_F_RING_PACKED when offered (default on)",
    ),
    (
        "sg.virtio.indirect",
        "on|off",
        "accept VIRTIO_F_INDIRECT_DESC when offered (default on)",
    ),
    (
        "sg.virtio.event_idx",
        "on|off",
        "accept VIRTIO_F_EVENT_IDX when offered (default on)",
    ),
    (
        "sg.virtio.timeout_ms",
        "N",
        "how long a device may take for one request before it is failed (default 5000)",
    ),
];

/// The default and the cap of `sg.blk.read=all`.
pub const BLK_READ_ALL_MAX: u64 = 64 << 20;
/// The largest `sg.blk.random`.
pub const BLK_RANDOM_MAX: u64 = 1 << 20;
/// The largest `sg.blk.req`.
pub const BLK_REQ_MAX: u64 = 4 << 20;
/// The default `sg.swiotlb`.
pub const SWIOTLB_DEFAULT: u64 = 4 << 20;
/// The range of `sg.swiotlb` (before rounding up to the sharing granularity).
pub const SWIOTLB_MIN: u64 = 64 << 10;
pub const SWIOTLB_MAX: u64 = 1 << 30;

/// How much of each disk to read (`sg.blk.read`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkRead {
    /// The whole disk, at most [`BLK_READ_ALL_MAX`] bytes.
    All,
    /// The first this many bytes (at most the disk).
    Bytes(u64),
}

impl BlkRead {
    /// The number of bytes to read from a disk of `capacity` bytes.
    pub fn bytes_of(self, capacity: u64) -> u64 {
        match self {
            BlkRead::All => capacity.min(BLK_READ_ALL_MAX),
            BlkRead::Bytes(n) => capacity.min(n),
        }
    }
}

/// `sg.blk.write=OFFSET:LEN:SEED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkWrite {
    pub offset: u64,
    pub len: u64,
    pub seed: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub debug_panic: bool,
    pub debug_fault: bool,
    /// `sg.debug.leak`: swiotlb slots are not zeroed on release (test only).
    pub debug_leak: bool,
    /// `sg.debug.unmap_early`, `sg.debug.map_private`: IOMMU misbehaviour (test only).
    pub debug_iommu: IommuDebug,
    /// `sg.secure`.
    pub secure: SecureMode,
    /// `sg.swiotlb`: bytes asked for the shared pool, [`SWIOTLB_MIN`]..=[`SWIOTLB_MAX`]; the
    /// boot flow rounds it up to the platform's granularity.
    pub swiotlb: u64,
    /// `sg.legacy_devices`.
    pub legacy_devices: LegacyPolicy,
    /// `sg.dma`.
    pub dma: DmaChoice,
    /// `sg.tce`; `None`: the default (DDW when offered).
    pub tce: Option<TceMode>,
    /// `sg.tce.batch`.
    pub tce_batch: bool,
    /// `sg.iommu.map`; `None`: the default (dynamic).
    pub iommu_map: Option<IommuMap>,
    pub blk_read: BlkRead,
    pub blk_write: Option<BlkWrite>,
    pub blk_disk: u32,
    /// Data bytes per request: a multiple of 512, 512..=[`BLK_REQ_MAX`].
    pub blk_req: u32,
    /// Requests in flight; `None`: the queue size.
    pub blk_qd: Option<u16>,
    /// `sg.blk.random`: random 4 KiB reads after the sequential read.
    pub blk_random: u32,
    pub net_frames: u32,
    pub console_read: u32,
    pub rng_bytes: u32,
    pub virtio_packed: bool,
    pub virtio_indirect: bool,
    pub virtio_event_idx: bool,
    pub virtio_timeout_ms: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            debug_panic: false,
            debug_fault: false,
            debug_leak: false,
            debug_iommu: IommuDebug {
                unmap_early: false,
                map_private: false,
            },
            secure: SecureMode::DEFAULT,
            swiotlb: SWIOTLB_DEFAULT,
            legacy_devices: LegacyPolicy::DEFAULT,
            dma: DmaChoice::Auto,
            tce: None,
            tce_batch: true,
            iommu_map: None,
            blk_read: BlkRead::All,
            blk_write: None,
            blk_disk: 0,
            blk_req: 64 << 10,
            blk_qd: None,
            blk_random: 0,
            net_frames: 8,
            console_read: 64,
            rng_bytes: 64,
            virtio_packed: true,
            virtio_indirect: true,
            virtio_event_idx: true,
            virtio_timeout_ms: 5000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Diagnostic {
    /// `sg.something` that this guest does not know.
    Unknown { option: String },
    /// A known option whose value does not parse.
    Malformed {
        option: String,
        value: String,
        expected: &'static str,
    },
    /// A token that is not valid UTF-8 or has an unterminated quote.
    BadToken { token: String, why: &'static str },
    /// A valid option that does nothing on this platform (`sg.iommu.map` on pseries): a
    /// warning, the run goes on.
    NoEffect {
        option: &'static str,
        value: &'static str,
        why: &'static str,
    },
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        !matches!(
            self,
            Diagnostic::Unknown { .. } | Diagnostic::NoEffect { .. }
        )
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
    let n = if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        u64::from_str_radix(hex, 16).ok()?
    } else {
        digits.parse::<u64>().ok()?
    };
    n.checked_mul(1u64 << shift)
}

/// Parses a plain number: decimal or `0x` hex, no unit.
pub fn parse_number(v: &str) -> Option<u64> {
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if hex.is_empty() || hex.starts_with('+') {
            return None;
        }
        u64::from_str_radix(hex, 16).ok()
    } else if v.starts_with('+') {
        None
    } else {
        v.parse::<u64>().ok()
    }
}

/// A number within `min..=max`.
fn number_in(v: Option<&str>, min: u64, max: u64) -> Option<u64> {
    parse_number(v?).filter(|n| (min..=max).contains(n))
}

fn parse_blk_read(v: &str) -> Option<BlkRead> {
    if v == "all" {
        return Some(BlkRead::All);
    }
    parse_size(v).map(BlkRead::Bytes)
}

fn parse_blk_write(v: &str) -> Option<BlkWrite> {
    let mut parts = v.split(':');
    let offset = parse_size(parts.next()?)?;
    let len = parse_size(parts.next()?)?;
    let seed = parse_number(parts.next()?)?;
    let sector_multiple = |n: u64| n.is_multiple_of(512);
    let fits = offset.checked_add(len).is_some();
    (parts.next().is_none() && len > 0 && sector_multiple(offset) && sector_multiple(len) && fits)
        .then_some(BlkWrite { offset, len, seed })
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
            diags.push(Diagnostic::BadToken {
                token: tok.into(),
                why: "unterminated quote",
            });
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
            "sg.debug.leak" => match boolean(value) {
                Some(b) => opts.debug_leak = b,
                None => malformed("0|1"),
            },
            "sg.debug.unmap_early" => match boolean(value) {
                Some(b) => opts.debug_iommu.unmap_early = b,
                None => malformed("0|1"),
            },
            "sg.debug.map_private" => match boolean(value) {
                Some(b) => opts.debug_iommu.map_private = b,
                None => malformed("0|1"),
            },
            "sg.secure" => match value.and_then(SecureMode::parse) {
                Some(m) => opts.secure = m,
                None => malformed(SecureMode::EXPECTED),
            },
            "sg.swiotlb" => match value.and_then(parse_size) {
                Some(n) if (SWIOTLB_MIN..=SWIOTLB_MAX).contains(&n) => opts.swiotlb = n,
                _ => malformed("SIZE (64K..1G, K/M/G allowed)"),
            },
            "sg.legacy_devices" => match value.and_then(LegacyPolicy::parse) {
                Some(p) => opts.legacy_devices = p,
                None => malformed(LegacyPolicy::EXPECTED),
            },
            "sg.dma" => match value.and_then(DmaChoice::parse) {
                Some(c) => opts.dma = c,
                None => malformed(DmaChoice::EXPECTED),
            },
            "sg.tce" => match value.and_then(TceMode::parse) {
                Some(m) => opts.tce = Some(m),
                None => malformed(TceMode::EXPECTED),
            },
            "sg.iommu.map" => match value.and_then(IommuMap::parse) {
                Some(m) => opts.iommu_map = Some(m),
                None => malformed(IommuMap::EXPECTED),
            },
            "sg.tce.batch" => match boolean(value) {
                Some(b) => opts.tce_batch = b,
                None => malformed("0|1"),
            },
            "sg.blk.read" => match value.and_then(parse_blk_read) {
                Some(r) => opts.blk_read = r,
                None => malformed("SIZE|all (bytes, K/M/G)"),
            },
            "sg.blk.write" => match value.and_then(parse_blk_write) {
                Some(w) => opts.blk_write = Some(w),
                None => malformed(
                    "OFFSET:LEN:SEED (OFFSET and LEN in bytes with K/M/G, multiples of 512, \
                     LEN > 0; SEED decimal or 0x hex)",
                ),
            },
            "sg.blk.disk" => match number_in(value, 0, u32::MAX.into()) {
                Some(n) => opts.blk_disk = n as u32,
                None => malformed("N (a number)"),
            },
            "sg.blk.req" => match value.and_then(parse_size) {
                Some(n) if (512..=BLK_REQ_MAX).contains(&n) && n.is_multiple_of(512) => {
                    opts.blk_req = n as u32
                }
                _ => malformed("SIZE (a multiple of 512, at most 4M)"),
            },
            "sg.blk.qd" => match number_in(value, 1, 32768) {
                Some(n) => opts.blk_qd = Some(n as u16),
                None => malformed("N (1..32768)"),
            },
            "sg.blk.random" => match number_in(value, 0, BLK_RANDOM_MAX) {
                Some(n) => opts.blk_random = n as u32,
                None => malformed("N (0..1048576)"),
            },
            "sg.net.frames" => match number_in(value, 0, 65536) {
                Some(n) => opts.net_frames = n as u32,
                None => malformed("N (0..65536)"),
            },
            "sg.console.read" => match number_in(value, 0, 65536) {
                Some(n) => opts.console_read = n as u32,
                None => malformed("N (0..65536)"),
            },
            "sg.rng.bytes" => match number_in(value, 0, 16 << 20) {
                Some(n) => opts.rng_bytes = n as u32,
                None => malformed("N (0..16777216)"),
            },
            "sg.virtio.packed" => match boolean(value) {
                Some(b) => opts.virtio_packed = b,
                None => malformed("on|off"),
            },
            "sg.virtio.indirect" => match boolean(value) {
                Some(b) => opts.virtio_indirect = b,
                None => malformed("on|off"),
            },
            "sg.virtio.event_idx" => match boolean(value) {
                Some(b) => opts.virtio_event_idx = b,
                None => malformed("on|off"),
            },
            "sg.virtio.timeout_ms" => match number_in(value, 1, 3_600_000) {
                Some(n) => opts.virtio_timeout_ms = n as u32,
                None => malformed("N (milliseconds, 1..3600000)"),
            },
            _ => diags.push(Diagnostic::Unknown {
                option: name.into(),
            }),
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
        assert_eq!(
            d,
            vec![Diagnostic::Unknown {
                option: "sg.nope".into()
            }]
        );
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
        assert_eq!(
            tokens(b"a \"b c\" d=\"e f\""),
            vec![
                (b"a".to_vec(), true),
                (b"b c".to_vec(), true),
                (b"d=e f".to_vec(), true)
            ]
        );
        let (_, d) = parse(b"sg.debug.panic=\"1");
        assert!(matches!(
            d[0],
            Diagnostic::BadToken {
                why: "unterminated quote",
                ..
            }
        ));
        let (_, d) = parse(b"sg.\xff\xfe=1");
        assert!(matches!(
            d[0],
            Diagnostic::BadToken {
                why: "not valid UTF-8",
                ..
            }
        ));
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
    fn virtio_defaults() {
        let (o, d) = parse(b"");
        assert!(d.is_empty());
        assert_eq!(o.blk_read, BlkRead::All);
        assert_eq!(o.blk_read.bytes_of(1 << 40), 64 << 20);
        assert_eq!(o.blk_read.bytes_of(4096), 4096);
        assert_eq!(o.blk_write, None);
        assert_eq!(o.blk_disk, 0);
        assert_eq!(o.blk_req, 65536);
        assert_eq!(o.blk_qd, None);
        assert_eq!(o.blk_random, 0);
        assert_eq!(o.net_frames, 8);
        assert_eq!(o.console_read, 64);
        assert_eq!(o.rng_bytes, 64);
        assert!(o.virtio_packed && o.virtio_indirect && o.virtio_event_idx);
        assert_eq!(o.virtio_timeout_ms, 5000);
    }

    #[test]
    fn virtio_options() {
        let (o, d) = parse(
            b"sg.blk.read=1M sg.blk.write=64K:8K:0x5eed sg.blk.disk=1 sg.blk.req=4K sg.blk.qd=3 \
              sg.blk.random=0x100 sg.net.frames=2 sg.console.read=10 sg.rng.bytes=0x20 sg.virtio.packed=off \
              sg.virtio.indirect=0 sg.virtio.event_idx=off sg.virtio.timeout_ms=100",
        );
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(o.blk_read, BlkRead::Bytes(1 << 20));
        assert_eq!(o.blk_read.bytes_of(4096), 4096);
        assert_eq!(
            o.blk_write,
            Some(BlkWrite {
                offset: 65536,
                len: 8192,
                seed: 0x5eed
            })
        );
        assert_eq!(o.blk_disk, 1);
        assert_eq!(o.blk_req, 4096);
        assert_eq!(o.blk_qd, Some(3));
        assert_eq!(o.blk_random, 256);
        assert_eq!(o.net_frames, 2);
        assert_eq!(o.console_read, 10);
        assert_eq!(o.rng_bytes, 32);
        assert!(!o.virtio_packed && !o.virtio_indirect && !o.virtio_event_idx);
        assert_eq!(o.virtio_timeout_ms, 100);
        let (o, d) = parse(b"sg.blk.read=all sg.blk.write=0:512:42 sg.virtio.packed");
        assert!(d.is_empty());
        assert_eq!(o.blk_read, BlkRead::All);
        assert_eq!(
            o.blk_write,
            Some(BlkWrite {
                offset: 0,
                len: 512,
                seed: 42
            })
        );
        assert!(o.virtio_packed);
    }

    #[test]
    fn secure_options() {
        let (o, d) = parse(b"");
        assert!(d.is_empty());
        assert_eq!(o.secure, SecureMode::Auto);
        assert_eq!(o.swiotlb, 4 << 20);
        assert_eq!(o.legacy_devices, LegacyPolicy::Refuse);
        assert!(!o.debug_leak);
        for (line, mode) in [
            ("sg.secure=off", SecureMode::Off),
            ("sg.secure=on", SecureMode::On),
            ("sg.secure=auto", SecureMode::Auto),
            ("sg.secure=emulate", SecureMode::Emulate),
            ("sg.secure=\"emulate\"", SecureMode::Emulate),
        ] {
            let (o, d) = parse(line.as_bytes());
            assert!(d.is_empty(), "{line}: {d:?}");
            assert_eq!(o.secure, mode, "{line}");
        }
        let (o, d) = parse(b"sg.swiotlb=64K sg.legacy_devices=bounce sg.debug.leak");
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(o.swiotlb, 64 << 10);
        assert_eq!(o.legacy_devices, LegacyPolicy::Bounce);
        assert!(o.debug_leak);
        let (o, d) = parse(b"sg.swiotlb=1G sg.legacy_devices=refuse sg.debug.leak=0");
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(o.swiotlb, 1 << 30);
        assert_eq!(o.legacy_devices, LegacyPolicy::Refuse);
        assert!(!o.debug_leak);
        // Not rounded here: the granularity is the platform's, known at boot.
        let (o, _) = parse(b"sg.swiotlb=0x10001");
        assert_eq!(o.swiotlb, 0x10001);
        // The last one wins, as for every option.
        let (o, _) = parse(b"sg.secure=on sg.secure=off");
        assert_eq!(o.secure, SecureMode::Off);
        // The IOMMU negative controls are off unless asked for.
        assert_eq!(o.debug_iommu, IommuDebug::default());
        let (o, d) = parse(b"sg.debug.unmap_early sg.debug.map_private=1");
        assert!(d.is_empty(), "{d:?}");
        assert!(o.debug_iommu.unmap_early && o.debug_iommu.map_private);
        let (o, _) = parse(b"sg.debug.unmap_early=1 sg.debug.unmap_early=0");
        assert!(!o.debug_iommu.unmap_early);
        // Every option is in the table the README is written from.
        for name in [
            "sg.secure",
            "sg.swiotlb",
            "sg.legacy_devices",
            "sg.debug.leak",
            "sg.debug.unmap_early",
            "sg.debug.map_private",
        ] {
            assert!(OPTIONS.iter().any(|(n, _, _)| *n == name), "{name}");
        }
    }

    #[test]
    fn malformed_secure_options_name_the_option() {
        for (bad, expected) in [
            ("sg.secure=yes", "off|on|auto|emulate"),
            ("sg.secure", "off|on|auto|emulate"),
            ("sg.secure=", "off|on|auto|emulate"),
            ("sg.secure=EMULATE", "off|on|auto|emulate"),
            ("sg.swiotlb=32K", "SIZE (64K..1G, K/M/G allowed)"),
            ("sg.swiotlb=2G", "SIZE (64K..1G, K/M/G allowed)"),
            ("sg.swiotlb=lots", "SIZE (64K..1G, K/M/G allowed)"),
            ("sg.swiotlb", "SIZE (64K..1G, K/M/G allowed)"),
            ("sg.legacy_devices=allow", "refuse|bounce"),
            ("sg.legacy_devices", "refuse|bounce"),
            ("sg.debug.leak=2", "0|1"),
            ("sg.debug.unmap_early=maybe", "0|1"),
            ("sg.debug.map_private=2", "0|1"),
        ] {
            let (o, d) = parse(bad.as_bytes());
            let name = bad.split('=').next().unwrap();
            assert_eq!(d.len(), 1, "{bad}");
            match &d[0] {
                Diagnostic::Malformed {
                    option,
                    expected: e,
                    ..
                } => {
                    assert_eq!(option, name, "{bad}");
                    assert_eq!(*e, expected, "{bad}");
                }
                other => panic!("{bad}: {other:?}"),
            }
            assert_eq!(
                o,
                Options::default(),
                "{bad}: a malformed value changes nothing"
            );
        }
    }

    #[test]
    fn iommu_options() {
        let (o, d) = parse(b"");
        assert!(d.is_empty());
        assert_eq!((o.dma, o.tce, o.tce_batch), (DmaChoice::Auto, None, true));
        let (o, d) = parse(b"sg.dma=iommu+bounce sg.tce=dynamic sg.tce.batch=0");
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(o.dma, DmaChoice::IommuBounce);
        assert_eq!(o.tce, Some(TceMode::Dynamic));
        assert!(!o.tce_batch);
        let (o, _) = parse(b"sg.dma=direct sg.tce=ddw sg.tce.batch");
        assert_eq!(
            (o.dma, o.tce, o.tce_batch),
            (DmaChoice::Direct, Some(TceMode::Ddw), true)
        );
        assert_eq!(o.iommu_map, None, "dynamic by default");
        let (o, d) = parse(b"sg.iommu.map=static");
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(o.iommu_map, Some(IommuMap::Static));
        let (o, _) = parse(b"sg.iommu.map=static sg.iommu.map=dynamic");
        assert_eq!(o.iommu_map, Some(IommuMap::Dynamic), "the last one counts");
        let note = Diagnostic::NoEffect {
            option: "sg.iommu.map",
            value: "static",
            why: "no effect here",
        };
        assert!(!note.is_error(), "a warning: the run goes on");
        for (bad, expected) in [
            ("sg.dma=iommu-bounce", DmaChoice::EXPECTED),
            ("sg.dma", DmaChoice::EXPECTED),
            ("sg.tce=static", TceMode::EXPECTED),
            ("sg.tce", TceMode::EXPECTED),
            ("sg.tce.batch=2", "0|1"),
            ("sg.iommu.map=identity", IommuMap::EXPECTED),
            ("sg.iommu.map", IommuMap::EXPECTED),
        ] {
            let (o, d) = parse(bad.as_bytes());
            assert_eq!(o, Options::default(), "{bad}");
            match &d[..] {
                [
                    Diagnostic::Malformed {
                        option,
                        expected: e,
                        ..
                    },
                ] => {
                    assert_eq!(option, bad.split('=').next().unwrap());
                    assert_eq!(*e, expected);
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        for name in ["sg.dma", "sg.tce", "sg.tce.batch", "sg.iommu.map"] {
            assert!(OPTIONS.iter().any(|(n, _, _)| *n == name), "{name}");
        }
    }

    #[test]
    fn malformed_virtio_options_name_the_option() {
        for bad in [
            "sg.blk.read=lots",
            "sg.blk.read",
            "sg.blk.write=1:512:1",
            "sg.blk.write=512:100:1",
            "sg.blk.write=0:0:1",
            "sg.blk.write=0:512",
            "sg.blk.write=0:512:1:2",
            "sg.blk.write=0:512:seed",
            "sg.blk.write=0:512:1K",
            "sg.blk.write=18446744073709551104:512:1",
            "sg.blk.disk=-1",
            "sg.blk.disk",
            "sg.blk.req=1000",
            "sg.blk.req=0",
            "sg.blk.req=8M",
            "sg.blk.qd=0",
            "sg.blk.qd=40000",
            "sg.blk.random=1048577",
            "sg.blk.random=many",
            "sg.blk.random",
            "sg.net.frames=many",
            "sg.net.frames=+3",
            "sg.console.read=70000",
            "sg.rng.bytes=0x",
            "sg.virtio.packed=maybe",
            "sg.virtio.indirect=2",
            "sg.virtio.event_idx=",
            "sg.virtio.timeout_ms=0",
            "sg.virtio.timeout_ms=1s",
        ] {
            let (o, d) = parse(bad.as_bytes());
            let name = bad.split('=').next().unwrap();
            assert_eq!(d.len(), 1, "{bad}");
            match &d[0] {
                Diagnostic::Malformed { option, .. } => assert_eq!(option, name, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
            assert!(d[0].is_error());
            assert_eq!(
                o,
                Options::default(),
                "{bad}: a malformed value changes nothing"
            );
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("0"), Some(0));
        assert_eq!(parse_number("0x1F"), Some(31));
        assert_eq!(parse_number("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_number("18446744073709551616"), None);
        assert_eq!(parse_number("0x"), None);
        assert_eq!(parse_number("0x+1"), None);
        assert_eq!(parse_number("+1"), None);
        assert_eq!(parse_number("1K"), None);
        assert_eq!(parse_number(""), None);
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
