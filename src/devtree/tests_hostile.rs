//! Hostile device trees: every error, every limit, every truncation of QEMU's trees and many
//! thousands of seeded mutations of them. Nothing may panic or hang. The limits (depth, nodes,
//! path length) are what bound the work, so no test here asserts a time: a loaded CI machine
//! would make such a test flaky.

use std::panic::{AssertUnwindSafe, catch_unwind};

use super::tests::{
    FIXTURES, PSERIES_VOF, be32, is_ordered_v17, set_be32, token_offsets, tree, why,
    with_nops_everywhere, with_structure,
};
use super::*;

const BEGIN: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const NOP: u32 = 4;
const END: u32 = 9;

/// A blob built token by token, for structures the writer refuses to make.
struct Raw {
    rsv: Vec<(u64, u64)>,
    structure: Vec<u8>,
    strings: Vec<u8>,
}

impl Raw {
    fn new() -> Self {
        Raw {
            rsv: vec![],
            structure: vec![],
            strings: vec![],
        }
    }

    /// Offset the next token will have in the blob.
    fn here(&self) -> usize {
        40 + (self.rsv.len() + 1) * 16 + self.structure.len()
    }

    fn word(&mut self, w: u32) -> &mut Self {
        self.structure.extend_from_slice(&w.to_be_bytes());
        self
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.structure.extend_from_slice(b);
        while !self.structure.len().is_multiple_of(4) {
            self.structure.push(0);
        }
        self
    }

    fn begin(&mut self, name: &[u8]) -> &mut Self {
        self.word(BEGIN);
        let mut n = name.to_vec();
        n.push(0);
        self.bytes(&n)
    }

    fn end(&mut self) -> &mut Self {
        self.word(END_NODE)
    }

    fn name_offset(&mut self, name: &str) -> u32 {
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        off
    }

    fn prop(&mut self, name: &str, value: &[u8]) -> &mut Self {
        let off = self.name_offset(name);
        self.word(PROP)
            .word(value.len() as u32)
            .word(off)
            .bytes(value)
    }

    fn finish(&mut self) -> &mut Self {
        self.word(END)
    }

    fn blob(&self) -> Vec<u8> {
        let rsv_off = 40;
        let struct_off = rsv_off + (self.rsv.len() + 1) * 16;
        let strings_off = struct_off + self.structure.len();
        let total = strings_off + self.strings.len();
        let mut b = vec![0u8; 40];
        for (i, v) in [
            0xd00d_feed,
            total as u32,
            struct_off as u32,
            strings_off as u32,
            rsv_off as u32,
            17,
            16,
            0,
            self.strings.len() as u32,
            self.structure.len() as u32,
        ]
        .iter()
        .enumerate()
        {
            set_be32(&mut b, i * 4, *v);
        }
        for (a, s) in self.rsv.iter().chain([(0, 0)].iter()) {
            b.extend_from_slice(&a.to_be_bytes());
            b.extend_from_slice(&s.to_be_bytes());
        }
        b.extend_from_slice(&self.structure);
        b.extend_from_slice(&self.strings);
        b
    }
}

/// A well-formed minimal tree: root with one property and one child.
fn minimal() -> Raw {
    let mut r = Raw::new();
    r.begin(b"")
        .prop("model", b"m\0")
        .begin(b"a")
        .end()
        .end()
        .finish();
    r
}

fn header(blob: &[u8], field: usize, value: u32) -> Vec<u8> {
    let mut b = blob.to_vec();
    set_be32(&mut b, field * 4, value);
    b
}

fn structure_error(r: &Raw) -> (usize, &'static str) {
    match validate(&r.blob()) {
        Err(DtError::BadStructure { offset, why }) => (offset, why),
        other => panic!("expected BadStructure, got {other:?}"),
    }
}

// ---- One case per error --------------------------------------------------------------------

#[test]
fn minimal_tree_is_valid() {
    assert_eq!(validate(&minimal().blob()), Ok(2));
}

#[test]
fn truncated_and_bad_magic() {
    let b = minimal().blob();
    assert_eq!(validate(&[]), Err(DtError::Truncated { need: 40, have: 0 }));
    assert_eq!(
        validate(&b[..39]),
        Err(DtError::Truncated { need: 40, have: 39 })
    );
    assert_eq!(
        validate(&b[..b.len() - 1]),
        Err(DtError::Truncated {
            need: b.len(),
            have: b.len() - 1
        })
    );
    assert_eq!(
        validate(&header(&b, 1, u32::MAX)),
        Err(DtError::Truncated {
            need: u32::MAX as usize,
            have: b.len()
        })
    );
    assert_eq!(
        validate(&header(&b, 0, 0xedfe_0dd0)),
        Err(DtError::BadMagic(0xedfe_0dd0))
    );
    assert_eq!(validate(&[0u8; 40]), Err(DtError::BadMagic(0)));
}

#[test]
fn unsupported_versions() {
    let b = minimal().blob();
    assert_eq!(
        validate(&header(&b, 5, 15)),
        Err(DtError::UnsupportedVersion(15))
    );
    assert_eq!(
        validate(&header(&b, 5, 0)),
        Err(DtError::UnsupportedVersion(0))
    );
    assert_eq!(
        validate(&header(&b, 6, 18)),
        Err(DtError::UnsupportedVersion(18))
    );
    assert_eq!(
        validate(&header(&b, 6, u32::MAX)),
        Err(DtError::UnsupportedVersion(u32::MAX))
    );
    let v16_last17 = header(&header(&b, 5, 16), 6, 17);
    assert_eq!(
        validate(&v16_last17),
        Err(DtError::BadHeader(
            "last_comp_version is newer than version"
        ))
    );
}

#[test]
fn bad_headers() {
    let b = minimal().blob();
    let len = b.len() as u32;
    let struct_off = be32(&b, 8);
    let cases: &[(usize, u32, &str)] = &[
        (1, 39, "totalsize is smaller than the header"),
        (4, 44, "memory reserve map is not 8-byte aligned"),
        (4, 32, "memory reserve map overlaps the header"),
        (4, len & !7, "memory reserve map has no terminating entry"),
        (4, u32::MAX, "memory reserve map is not 8-byte aligned"),
        (
            4,
            0xffff_fff8,
            "memory reserve map has no terminating entry",
        ),
        (2, struct_off + 2, "structure block is not 4-byte aligned"),
        (2, 36, "structure block overlaps the header"),
        (2, 0xffff_fffc, "structure block starts past totalsize"),
        (9, 6, "structure block size is not a multiple of 4"),
        (9, 0xffff_fffc, "structure block runs past totalsize"),
        (9, len & !3, "structure block runs past totalsize"),
        (3, len, "strings block runs past totalsize"),
        (3, u32::MAX, "strings block runs past totalsize"),
        (8, u32::MAX, "strings block runs past totalsize"),
        (3, 8, "strings block overlaps the header"),
        (3, struct_off, "structure block overlaps the strings block"),
        (3, 40, "memory reserve map overlaps the strings block"),
    ];
    for &(field, value, want) in cases {
        assert_eq!(
            validate(&header(&b, field, value)),
            Err(DtError::BadHeader(want)),
            "field {field} = {value:#x}"
        );
    }
    // Structure block starting inside the reserve map (and so not after it).
    let mut r = minimal();
    r.rsv.push((0x1000, 0x1000));
    let b = r.blob();
    let moved = header(&header(&b, 2, 48), 9, be32(&b, 36) + 16);
    let want = DtError::BadHeader("memory reserve map overlaps the structure block");
    assert_eq!(validate(&moved), Err(want));
}

#[test]
fn reserve_map_entries() {
    let mut r = minimal();
    r.rsv = vec![(0x1000, 0x2000), (0x8000, 0), (u64::MAX - 0x1fff, 0x1000)];
    assert_eq!(
        parse(&r.blob()).unwrap().reserved,
        [(0x1000, 0x2000), (u64::MAX - 0x1fff, 0x1000)]
    );
    // Ending at 2^64 is not representable as an end address either.
    r.rsv.push((u64::MAX - 0xfff, 0x1000));
    assert_eq!(
        validate(&r.blob()),
        Err(DtError::BadHeader(
            "memory reserve map entry wraps around 2^64"
        ))
    );
    // An entry of address 0 and a non-zero size does not end the map.
    r.rsv = vec![(0, 0x1000)];
    assert_eq!(parse(&r.blob()).unwrap().reserved, [(0, 0x1000)]);
}

#[test]
fn bad_structures() {
    let mut cases: Vec<(Raw, &str)> = vec![];
    let mut add = |f: &dyn Fn(&mut Raw), why| {
        let mut r = Raw::new();
        f(&mut r);
        cases.push((r, why));
    };
    add(
        &|r| {
            r.word(77);
        },
        "unknown token",
    );
    add(
        &|r| {
            r.word(5);
        },
        "unknown token",
    ); // `fdt` 0.1.5's own (wrong) FDT_END value
    add(
        &|r| {
            r.begin(b"").end();
        },
        "structure block ends without FDT_END",
    );
    add(
        &|r| {
            r.begin(b"").finish();
        },
        "FDT_END inside a node",
    );
    add(
        &|r| {
            r.finish();
        },
        "no root node",
    );
    add(
        &|r| {
            r.word(NOP).finish();
        },
        "no root node",
    );
    add(
        &|r| {
            r.end().finish();
        },
        "FDT_END_NODE outside any node",
    );
    add(
        &|r| {
            r.begin(b"").end().end().finish();
        },
        "FDT_END_NODE outside any node",
    );
    add(
        &|r| {
            r.prop("x", b"").begin(b"").end().finish();
        },
        "property outside any node",
    );
    add(
        &|r| {
            r.begin(b"").end().prop("x", b"").finish();
        },
        "property outside any node",
    );
    add(
        &|r| {
            r.begin(b"").begin(b"a").end().prop("x", b"").end().finish();
        },
        "property after a child node",
    );
    add(
        &|r| {
            r.begin(b"").end().begin(b"").end().finish();
        },
        "more than one root node",
    );
    add(
        &|r| {
            r.begin(b"root").end().finish();
        },
        "root node name is not empty",
    );
    add(
        &|r| {
            r.begin(b"").begin(b"").end().end().finish();
        },
        "empty node name",
    );
    add(
        &|r| {
            r.begin(b"").begin(b"a/b").end().end().finish();
        },
        "node name is not printable ASCII without '/'",
    );
    add(
        &|r| {
            r.begin(b"").begin(b"a b").end().end().finish();
        },
        "node name is not printable ASCII without '/'",
    );
    add(
        &|r| {
            r.begin(b"").begin("é".as_bytes()).end().end().finish();
        },
        "node name is not printable ASCII without '/'",
    );
    add(
        &|r| {
            r.begin(b"").begin(&[b'a'; 256]).end().end().finish();
        },
        "node name longer than 255 bytes",
    );
    add(
        &|r| {
            r.begin(b"").word(BEGIN).word(0x6161_6161);
        },
        "node name runs past the structure block",
    );
    add(
        &|r| {
            r.begin(b"").word(PROP).word(0);
        },
        "property header runs past the structure block",
    );
    add(
        &|r| {
            r.begin(b"")
                .word(PROP)
                .word(100)
                .word(0)
                .end()
                .end()
                .finish();
        },
        "property value runs past the structure block",
    );
    add(
        &|r| {
            r.begin(b"")
                .word(PROP)
                .word(u32::MAX)
                .word(0)
                .end()
                .end()
                .finish();
        },
        "property value runs past the structure block",
    );
    add(
        &|r| {
            r.begin(b"").word(PROP).word(0).word(1000).end().finish();
        },
        "property name offset outside the strings block",
    );
    add(
        &|r| {
            r.begin(b"")
                .word(PROP)
                .word(0)
                .word(u32::MAX)
                .end()
                .finish();
        },
        "property name offset outside the strings block",
    );
    add(
        &|r| {
            r.strings.extend_from_slice(b"abc");
            r.begin(b"").word(PROP).word(0).word(1).end().finish();
        },
        "property name not terminated inside the strings block",
    );
    add(
        &|r| {
            r.begin(b"").prop("", b"").end().finish();
        },
        "property name is empty or not printable ASCII",
    );
    add(
        &|r| {
            r.begin(b"").prop("a\u{7f}", b"").end().finish();
        },
        "property name is empty or not printable ASCII",
    );
    add(
        &|r| {
            r.begin(b"").prop("né", b"").end().finish();
        },
        "property name is empty or not printable ASCII",
    );
    add(
        &|r| {
            r.begin(b"").end().finish().word(NOP);
        },
        "data after FDT_END inside the structure block",
    );
    for (r, want) in &cases {
        assert_eq!(structure_error(r).1, *want);
    }
    // The offset is the offending token.
    let mut r = Raw::new();
    r.begin(b"").prop("a", b"1234");
    let at = r.here();
    r.word(42).end().finish();
    assert_eq!(structure_error(&r), (at, "unknown token"));
}

#[test]
fn name_length_limit() {
    let mut r = Raw::new();
    r.begin(b"")
        .begin(&[b'n'; MAX_NAME_LEN])
        .end()
        .end()
        .finish();
    assert_eq!(validate(&r.blob()), Ok(2));
}

#[test]
fn property_value_exactly_filling_the_block_is_fine() {
    let mut r = Raw::new();
    r.begin(b"").prop("x", &[1, 2, 3, 4, 5]).end().finish();
    let t = parse(&r.blob()).unwrap();
    assert_eq!(t.nodes, 1);
}

#[test]
fn nops_are_allowed_anywhere_between_tokens() {
    let mut r = Raw::new();
    r.word(NOP)
        .begin(b"")
        .word(NOP)
        .prop("model", b"m\0")
        .word(NOP)
        .prop("compatible", b"c\0");
    r.word(NOP)
        .begin(b"cpus")
        .word(NOP)
        .end()
        .word(NOP)
        .begin(b"x")
        .end()
        .word(NOP)
        .end();
    r.word(NOP).word(NOP).finish();
    let t = parse(&r.blob()).unwrap();
    assert_eq!((t.nodes, t.model.as_deref()), (3, Some("m")));
    // The `fdt` crate alone silently loses the children after a NOP between properties...
    let blob = r.blob();
    let fdt = fdt::Fdt::new(&blob).unwrap();
    assert_eq!(fdt.find_node("/").unwrap().children().count(), 0);
    // ... and panics on a NOP between the properties of a child node (an `assert_eq!` in
    // `skip_current_node`). That is why `parse` hands it a NOP-free copy.
    let mut r = Raw::new();
    r.begin(b"")
        .begin(b"a")
        .word(NOP)
        .prop("x", b"")
        .end()
        .end()
        .finish();
    let blob = r.blob();
    assert_eq!(parse(&blob).unwrap().nodes, 2);
    let raw = catch_unwind(|| {
        fdt::Fdt::new(&blob)
            .unwrap()
            .find_node("/")
            .unwrap()
            .children()
            .count()
    });
    assert!(raw.is_err(), "fdt 0.1.5 was expected to panic here");
}

// ---- Limits ----------------------------------------------------------------------------------

fn nested(levels: usize, name: &[u8]) -> Vec<u8> {
    let mut r = Raw::new();
    r.begin(b"");
    for _ in 1..levels {
        r.begin(name);
    }
    for _ in 0..levels {
        r.end();
    }
    r.finish();
    r.blob()
}

#[test]
fn nesting_depth_limit() {
    let t = parse(&nested(MAX_DEPTH, b"n")).unwrap();
    assert_eq!(t.nodes, MAX_DEPTH as u32);
    assert_eq!(
        why(parse(&nested(MAX_DEPTH + 1, b"n"))),
        "nodes nested deeper than 32 levels"
    );
    // Very deep: rejected at level 33, without recursion.
    assert_eq!(
        why(parse(&nested(200_000, b"n"))),
        "nodes nested deeper than 32 levels"
    );
}

#[test]
fn path_length_limit() {
    // "/" + 4 x (255 + 1) = 1024 bytes: the longest path accepted.
    let name = [b'p'; MAX_NAME_LEN];
    assert!(parse(&nested(5, &name)).is_ok());
    let mut r = Raw::new();
    r.begin(b"");
    for _ in 0..4 {
        r.begin(&name);
    }
    r.begin(b"x");
    for _ in 0..6 {
        r.end();
    }
    r.finish();
    assert_eq!(why(parse(&r.blob())), "node path longer than 1024 bytes");
}

#[test]
fn node_count_limit() {
    let flat = |n: u32| {
        let mut r = Raw::new();
        r.begin(b"");
        for _ in 1..n {
            r.begin(b"n").end();
        }
        r.end().finish();
        r.blob()
    };
    assert_eq!(parse(&flat(MAX_NODES)).unwrap().nodes, MAX_NODES);
    assert_eq!(why(parse(&flat(MAX_NODES + 1))), "more than 100000 nodes");
}

#[test]
fn deep_and_wide_is_bounded() {
    // The worst shape for `fdt`'s `children()`, which re-skips every subtree once per
    // ancestor: MAX_DEPTH - 1 nested nodes, then leaves up to MAX_NODES at the bottom.
    let mut r = Raw::new();
    r.begin(b"");
    for _ in 1..MAX_DEPTH - 1 {
        r.begin(b"d");
    }
    let off = r.name_offset("compatible");
    for _ in 0..MAX_NODES as usize - (MAX_DEPTH - 1) {
        r.begin(b"v")
            .word(PROP)
            .word(2)
            .word(off)
            .word(0x7800_0000)
            .end();
    }
    for _ in 1..MAX_DEPTH {
        r.end();
    }
    r.finish();
    assert_eq!(parse(&r.blob()).unwrap().nodes, MAX_NODES);
}

#[test]
fn huge_property_counts_are_linear() {
    // 200k properties on one node, 4 MiB of blob: work stays proportional to the size.
    let mut r = Raw::new();
    r.begin(b"");
    let off = r.name_offset("p");
    for _ in 0..200_000 {
        r.word(PROP).word(4).word(off).word(0);
    }
    r.begin(b"memory")
        .prop("device_type", b"memory\0")
        .prop("reg", &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0]);
    r.end().end().finish();
    assert_eq!(parse(&r.blob()).unwrap().nodes, 2);
}

// ---- Real trees, cut and mutated ---------------------------------------------------------------

/// Runs `parse` and `validate`, turning a panic into a test failure that names the case, and
/// checks they agree.
fn survive(blob: &[u8], case: &dyn Fn() -> String) -> Result<DeviceTree, DtError> {
    let (p, v) = match catch_unwind(AssertUnwindSafe(|| (parse(blob), validate(blob)))) {
        Ok(r) => r,
        Err(_) => panic!("panicked on {}", case()),
    };
    match (&p, &v) {
        (Ok(t), Ok(n)) => assert_eq!(t.nodes, *n, "{}", case()),
        (Ok(_), Err(e)) => panic!("parse accepted what validate rejects ({e:?}) on {}", case()),
        // parse may reject values validate does not look at.
        (Err(_), _) => {}
    }
    p
}

#[test]
fn every_truncation_of_every_fixture() {
    for (name, blob) in FIXTURES {
        for n in 0..blob.len() {
            let cut = &blob[..n];
            assert!(survive(cut, &|| format!("{name} cut to {n}")).is_err());
            // Also with totalsize claiming the cut is the whole tree.
            if n >= 8 {
                let mut claimed = cut.to_vec();
                set_be32(&mut claimed, 4, n as u32);
                assert!(
                    survive(&claimed, &|| format!("{name} cut to {n}, totalsize fixed")).is_err()
                );
            }
        }
    }
}

#[test]
fn every_structure_truncation_with_consistent_header() {
    // Cut the structure block at every 4-byte boundary and keep the header consistent: the
    // walk itself must find the end missing.
    for (name, blob) in FIXTURES {
        let start = be32(blob, 8) as usize;
        let end = start + be32(blob, 36) as usize;
        for cut in (start..end - 4).step_by(4) {
            let b = with_structure(blob, &blob[start..cut]);
            assert!(survive(&b, &|| format!("{name} structure cut at {cut}")).is_err());
        }
    }
}

/// xorshift64*: deterministic, seedable, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// A word likely to matter: token values, small counts, boundaries, sizes of this blob.
    fn interesting(&mut self, len: usize) -> u32 {
        const W: &[u32] = &[
            0,
            1,
            2,
            3,
            4,
            5,
            8,
            9,
            16,
            17,
            31,
            32,
            33,
            0xff,
            0x100,
            0x7fff_ffff,
            0x8000_0000,
            0xffff_fff0,
            0xffff_fffc,
            0xffff_ffff,
        ];
        match self.below(4) {
            0 => W[self.below(W.len())],
            1 => self.below(len + 64) as u32,
            2 => (self.below(len / 4 + 16) * 4) as u32,
            _ => self.next() as u32,
        }
    }
}

fn seeded(seed: u64) -> Rng {
    Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
}

/// Byte and word mutations anywhere in the blob (header included).
fn mutate_bytes(rng: &mut Rng, blob: &[u8]) -> Vec<u8> {
    let mut b = blob.to_vec();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(b.len());
        match rng.below(5) {
            0 => b[at] = rng.next() as u8,
            1 => b[at] ^= 1 << rng.below(8),
            2 => {
                let w = rng.interesting(blob.len());
                let at = at & !3;
                if at + 4 <= b.len() {
                    set_be32(&mut b, at, w);
                }
            }
            3 => {
                let field = rng.below(10);
                let w = rng.interesting(blob.len());
                set_be32(&mut b, field * 4, w);
            }
            _ => {
                // A run of bytes set to one value (0, 0xff or random).
                let v = [0, 0xff, rng.next() as u8][rng.below(3)];
                let end = (at + 1 + rng.below(32)).min(b.len());
                b[at..end].fill(v);
            }
        }
    }
    b
}

/// Mutations that keep the header consistent with the structure block: whole tokens
/// inserted, removed, duplicated, swapped, and property lengths, name offsets and values
/// rewritten. These reach deep into the walk and into the value decoding.
fn mutate_tokens(rng: &mut Rng, blob: &[u8]) -> Vec<u8> {
    let start = be32(blob, 8) as usize;
    let end = start + be32(blob, 36) as usize;
    let strings = &blob[be32(blob, 12) as usize..][..be32(blob, 32) as usize];
    // String starts, so renamed properties get real names ("reg", "device_type", ...).
    let names: Vec<u32> = (0..strings.len())
        .filter(|&i| i == 0 || strings[i - 1] == 0)
        .map(|i| i as u32)
        .collect();
    let offsets = token_offsets(blob);
    let mut chunks: Vec<Vec<u8>> = offsets
        .iter()
        .enumerate()
        .map(|(i, &t)| blob[t..offsets.get(i + 1).copied().unwrap_or(end)].to_vec())
        .collect();
    for _ in 0..1 + rng.below(4) {
        let i = rng.below(chunks.len());
        let is_prop = chunks[i].len() >= 12 && be32(&chunks[i], 0) == PROP;
        match rng.below(9) {
            0 => chunks.insert(i, NOP.to_be_bytes().to_vec()),
            1 => {
                chunks.remove(i);
                if chunks.is_empty() {
                    break;
                }
            }
            2 => {
                let c = chunks[i].clone();
                chunks.insert(i, c);
            }
            3 => {
                let j = rng.below(chunks.len());
                chunks.swap(i, j);
            }
            4 | 5 if is_prop => {
                // New value: a few cells of interesting numbers, or strings that matter.
                const STRS: &[&[u8]] = &[
                    b"memory\0",
                    b"cpu\0",
                    b"pci\0",
                    b"virtio,mmio\0",
                    b"hvterm1\0",
                    b"ibm,ultravisor\0",
                    b"x\0hvterm1\0",
                    b"/vdevice/vty@71000000\0",
                    b"serial0:1\0",
                    b"",
                    b"\0",
                ];
                let value: Vec<u8> = if rng.below(3) == 0 {
                    STRS[rng.below(STRS.len())].to_vec()
                } else {
                    // Whole cells, sometimes with a few stray bytes after them.
                    let cells = rng.below(7);
                    let stray = rng.below(2) * rng.below(4);
                    let mut v: Vec<u8> = (0..cells)
                        .flat_map(|_| rng.interesting(blob.len()).to_be_bytes())
                        .collect();
                    v.extend(std::iter::repeat_n(0xab, stray));
                    v
                };
                let nameoff = be32(&chunks[i], 8);
                let mut c = Vec::new();
                for w in [PROP, value.len() as u32, nameoff] {
                    c.extend_from_slice(&w.to_be_bytes());
                }
                c.extend_from_slice(&value);
                c.resize((c.len() + 3) & !3, 0);
                chunks[i] = c;
            }
            6 if is_prop => {
                let n = names[rng.below(names.len())];
                set_be32(&mut chunks[i], 8, n);
            }
            7 if is_prop => {
                // A length that no longer matches the value (the rest is misread).
                let w = rng.interesting(blob.len());
                set_be32(&mut chunks[i], 4, w);
            }
            _ => {
                // Flip a byte inside the chunk (names, values, token words).
                let at = rng.below(chunks[i].len());
                chunks[i][at] ^= 1 << rng.below(8);
            }
        }
    }
    with_structure(blob, &chunks.concat())
}

fn fuzz(name: &str, iterations: u64, mutate: fn(&mut Rng, &[u8]) -> Vec<u8>) -> (u64, u64) {
    let mut accepted = 0;
    for (fixture, blob) in FIXTURES {
        for seed in 0..iterations {
            let mut rng = seeded(seed);
            let mutated = mutate(&mut rng, blob);
            let case = || format!("{name} seed {seed} of {fixture}");
            if survive(&mutated, &case).is_ok() {
                accepted += 1;
            }
            // The same mutation behind NOPs goes through the copying path.
            if seed % 8 == 0 && validate(&mutated).is_ok() && is_ordered_v17(&mutated) {
                let nopped = with_nops_everywhere(&mutated);
                let (a, b) = (
                    survive(&mutated, &case),
                    survive(&nopped, &|| format!("{} with NOPs", case())),
                );
                match (a, b) {
                    (Ok(mut a), Ok(b)) => {
                        a.total_size = b.total_size;
                        assert_eq!(a, b, "{} with NOPs", case());
                    }
                    (
                        Err(DtError::BadStructure { why: w1, .. }),
                        Err(DtError::BadStructure { why: w2, .. }),
                    ) => {
                        assert_eq!(w1, w2, "{} with NOPs", case())
                    }
                    (a, b) => panic!("{} differs with NOPs: {a:?} / {b:?}", case()),
                }
            }
        }
    }
    (accepted, iterations * FIXTURES.len() as u64)
}

#[test]
fn fuzz_byte_mutations() {
    let (ok, total) = fuzz("bytes", 3000, mutate_bytes);
    // Some mutations hit bytes nobody reads (property values, padding): those still parse.
    assert!(ok > 0 && ok < total, "{ok} of {total} accepted");
}

#[test]
fn fuzz_token_mutations() {
    let (ok, total) = fuzz("tokens", 3000, mutate_tokens);
    assert!(ok > total / 20 && ok < total, "{ok} of {total} accepted");
}

#[test]
fn mutations_of_a_writer_tree_with_every_feature() {
    // The crafted fixture covers most features; this adds what only the writer builds here.
    let blob = tree(|w| {
        w.begin_node(b"reserved-memory")?;
        w.property_u32(b"#address-cells", 2)?;
        w.property_u32(b"#size-cells", 2)?;
        w.begin_node(b"r@0")?;
        w.property_cells(b"reg", &[0, 0x1000, 0, 0x1000])?;
        w.end_node()?;
        w.end_node()
    });
    for seed in 0..2000 {
        let mut rng = seeded(seed);
        let m = mutate_tokens(&mut rng, &blob);
        survive(&m, &|| format!("writer tree seed {seed}")).ok();
    }
}

// ---- What the `fdt` crate alone would do -------------------------------------------------------

#[test]
fn fdt_crate_panics_that_validation_prevents() {
    // Each blob makes fdt 0.1.5 panic through an accessor; `parse` returns an error (or, for
    // legal NOPs, the right tree) instead. Documents why nothing reaches `fdt` unchecked.
    let mut r = Raw::new();
    r.begin(b"").word(PROP).word(0).word(0x1000).end().finish(); // name offset out of range
    let bad_name = r.blob();
    let mut r = Raw::new();
    r.begin(b"").begin(&[0xff, 0xfe]).end().end().finish(); // non-UTF-8 node name
    let bad_node = r.blob();
    let mut r = Raw::new();
    r.begin(b"").prop("x", &[0; 64]); // property running past the block
    set_be32(&mut r.structure, 16, 0x1000);
    r.end().finish();
    let long_prop = r.blob();
    for (what, blob) in [
        ("name offset", &bad_name),
        ("node name", &bad_node),
        ("prop length", &long_prop),
    ] {
        let raw = catch_unwind(|| {
            fdt::Fdt::new(blob).map(|f| f.all_nodes().flat_map(|n| n.properties()).count())
        });
        assert!(raw.is_err(), "{what}: fdt 0.1.5 was expected to panic");
        assert!(
            matches!(parse(blob), Err(DtError::BadStructure { .. })),
            "{what}"
        );
    }
    // Accessors that panic on values: a 3-byte timebase, a missing /memory.
    let blob = tree(|w| {
        w.begin_node(b"cpus")?;
        w.begin_node(b"cpu@0")?;
        w.property_str(b"device_type", "cpu")?;
        w.property(b"timebase-frequency", &[1, 2, 3])?;
        w.end_node()?;
        w.end_node()
    });
    let raw = catch_unwind(|| {
        fdt::Fdt::new(&blob)
            .unwrap()
            .cpus()
            .map(|c| c.timebase_frequency())
            .sum::<usize>()
    });
    assert!(raw.is_err());
    assert_eq!(
        why(parse(&blob)),
        "timebase-frequency is neither 32 nor 64 bits"
    );
    assert!(catch_unwind(|| fdt::Fdt::new(&blob).unwrap().memory().regions().count()).is_err());
    // ... and on QEMU's own microvm tree, which has no /cpus and no /memory.
    let microvm = super::tests::MICROVM;
    assert!(catch_unwind(|| fdt::Fdt::new(microvm).unwrap().cpus().count()).is_err());
    assert!(parse(microvm).is_ok());
    assert_eq!(validate(PSERIES_VOF), Ok(17));
}
