//! Structural validation of an untrusted flattened device tree (DTSpec v0.4, chapter 5).
//!
//! Everything is read through bounds-checked accessors (`get`, `checked_add`): a hostile header
//! can make an offset or a length anything, and no arithmetic on it may wrap or index out of
//! bounds. The structure-block walk advances by at least 4 bytes per token and stops at the
//! block end, so it finishes in `size_dt_struct / 4` steps whatever the blob says.

use alloc::vec::Vec;
use core::ops::Range;

use super::DtError;

const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;

/// Header of version 17 and later (with `size_dt_struct`).
const HEADER_V17: usize = 40;
/// Header of version 16 (ends after `size_dt_strings`).
const HEADER_V16: usize = 36;
const RSV_ENTRY: usize = 16;

/// Deepest nesting accepted, the root counting as level 1. Real trees are under 10 levels; Linux
/// stops unflattening at 64. 32 keeps the `fdt` crate's recursive subtree skipping shallow (its
/// `all_nodes` even indexes a 64-entry array by depth) and bounds the walk's per-level state.
pub const MAX_DEPTH: usize = 32;
/// Most nodes accepted: bounds the work of the `fdt` walk (which re-skips subtrees) and memory.
pub const MAX_NODES: u32 = 100_000;
/// Longest node name, in bytes without the NUL (DTSpec: 31 for the name, plus `@unit-address`).
pub const MAX_NAME_LEN: usize = 255;
/// Longest full path ("/a/b@1/c"): paths are kept in the parsed tree, so they must be bounded.
pub const MAX_PATH_LEN: usize = 1024;

/// Where the blocks of a validated blob are, and what the structure walk found.
#[derive(Clone, Debug)]
pub(super) struct Layout {
    /// `totalsize`: the blob is `blob[..total]`.
    pub total: usize,
    pub version: u32,
    pub boot_cpuid: u32,
    /// The memory reserve map, terminating entry included.
    pub rsvmap: Range<usize>,
    /// The structure block, from the first token to the end of FDT_END.
    pub structure: Range<usize>,
    pub strings: Range<usize>,
    pub nodes: u32,
    /// FDT_NOP tokens in the structure block.
    pub nops: usize,
}

impl Layout {
    /// Whether the `fdt` crate must get a rewritten copy rather than the blob itself:
    /// - NOPs: `fdt` 0.1.5 skips them only in some places. `skip_current_node` (used by
    ///   `children()`) does not skip a NOP after a node name or between properties or child
    ///   nodes and then fails `assert_eq!(.., FDT_END_NODE, "bad node")`: a panic on a blob the
    ///   specification allows. `all_nodes()` and `children()` silently stop at such NOPs.
    /// - version 16: its header has no `size_dt_struct`, but `fdt` reads that field anyway.
    pub fn needs_copy(&self) -> bool {
        self.nops > 0 || self.version < 17
    }
}

fn be32(b: &[u8], off: usize) -> Option<u32> {
    let bytes = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

fn be64(b: &[u8], off: usize) -> Option<u64> {
    let bytes = b.get(off..off.checked_add(8)?)?;
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

fn align4(n: usize) -> Option<usize> {
    Some(n.checked_add(3)? & !3)
}

/// Node names: printable ASCII without '/' (DTSpec allows a subset of that). ASCII also makes
/// them valid UTF-8, which `fdt` unwraps (`as_str().unwrap()` in `all_nodes`/`skip_current_node`).
fn is_node_name_byte(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b'/'
}

/// Property names: printable ASCII (DTSpec allows a subset); `fdt` `expect`s them to be UTF-8.
fn is_prop_name_byte(b: u8) -> bool {
    (0x21..=0x7e).contains(&b)
}

fn header_field(blob: &[u8], index: usize) -> u32 {
    // Only called once the blob is known to hold a whole header.
    be32(blob, index * 4).unwrap_or(0)
}

/// Validates the whole blob; see [`super::validate`].
pub(super) fn check(blob: &[u8]) -> Result<Layout, DtError> {
    if blob.len() < HEADER_V17 {
        // A v16 header is 36 bytes, but no v16 blob is shorter than 40 (the reserve map's
        // terminating entry alone is 16 bytes).
        return Err(DtError::Truncated {
            need: HEADER_V17,
            have: blob.len(),
        });
    }
    let magic = header_field(blob, 0);
    if magic != FDT_MAGIC {
        return Err(DtError::BadMagic(magic));
    }
    let total = header_field(blob, 1) as usize;
    if total > blob.len() {
        return Err(DtError::Truncated {
            need: total,
            have: blob.len(),
        });
    }
    let version = header_field(blob, 5);
    let last_comp = header_field(blob, 6);
    if version < 16 {
        return Err(DtError::UnsupportedVersion(version));
    }
    if last_comp > 17 {
        return Err(DtError::UnsupportedVersion(last_comp));
    }
    if last_comp > version {
        return Err(DtError::BadHeader(
            "last_comp_version is newer than version",
        ));
    }
    let header_len = if version >= 17 {
        HEADER_V17
    } else {
        HEADER_V16
    };
    if total < header_len {
        return Err(DtError::BadHeader("totalsize is smaller than the header"));
    }
    // From here on everything is read from `blob[..total]`: bytes past totalsize are not ours.
    let blob = blob.get(..total).ok_or(DtError::BadHeader("totalsize"))?;

    let rsvmap = check_rsvmap(blob, header_field(blob, 4) as usize, header_len)?;

    let struct_off = header_field(blob, 2) as usize;
    if !struct_off.is_multiple_of(4) {
        return Err(DtError::BadHeader("structure block is not 4-byte aligned"));
    }
    if struct_off < header_len {
        return Err(DtError::BadHeader("structure block overlaps the header"));
    }
    if struct_off > total {
        return Err(DtError::BadHeader("structure block starts past totalsize"));
    }
    // v17 gives the block size and FDT_END must end it exactly; v16 does not, and the walk
    // ends where FDT_END is (then checked against the other blocks below).
    let (struct_limit, exact_end) = if version >= 17 {
        let size = header_field(blob, 9) as usize;
        if !size.is_multiple_of(4) {
            return Err(DtError::BadHeader(
                "structure block size is not a multiple of 4",
            ));
        }
        match struct_off.checked_add(size) {
            Some(end) if end <= total => (end, true),
            _ => return Err(DtError::BadHeader("structure block runs past totalsize")),
        }
    } else {
        (struct_off + (total - struct_off) / 4 * 4, false)
    };

    let strings_off = header_field(blob, 3) as usize;
    let strings_size = header_field(blob, 8) as usize;
    let strings = match strings_off.checked_add(strings_size) {
        Some(end) if end <= total => strings_off..end,
        _ => return Err(DtError::BadHeader("strings block runs past totalsize")),
    };
    if !strings.is_empty() && strings.start < header_len {
        return Err(DtError::BadHeader("strings block overlaps the header"));
    }

    // With v17 the blocks are known before the walk: an overlap is reported as such rather
    // than as whatever the walk trips over first. v16 is checked once the walk found the end.
    if exact_end {
        check_overlaps(&rsvmap, &(struct_off..struct_limit), &strings)?;
    }
    let walk = walk(
        blob,
        struct_off,
        struct_limit,
        exact_end,
        strings.clone(),
        None,
    )?;
    let structure = struct_off..walk.end;
    check_overlaps(&rsvmap, &structure, &strings)?;

    Ok(Layout {
        total,
        version,
        boot_cpuid: header_field(blob, 7),
        rsvmap,
        structure,
        strings,
        nodes: walk.nodes,
        nops: walk.nops,
    })
}

fn check_overlaps(
    rsvmap: &Range<usize>,
    structure: &Range<usize>,
    strings: &Range<usize>,
) -> Result<(), DtError> {
    let overlap = |a: &Range<usize>, b: &Range<usize>| {
        !a.is_empty() && !b.is_empty() && a.start < b.end && b.start < a.end
    };
    if overlap(rsvmap, structure) {
        return Err(DtError::BadHeader(
            "memory reserve map overlaps the structure block",
        ));
    }
    if overlap(rsvmap, strings) {
        return Err(DtError::BadHeader(
            "memory reserve map overlaps the strings block",
        ));
    }
    if overlap(structure, strings) {
        return Err(DtError::BadHeader(
            "structure block overlaps the strings block",
        ));
    }
    Ok(())
}

/// The reserve map: 16-byte (address, size) entries up to a (0, 0) one, all inside `blob`.
fn check_rsvmap(blob: &[u8], off: usize, header_len: usize) -> Result<Range<usize>, DtError> {
    if !off.is_multiple_of(8) {
        return Err(DtError::BadHeader(
            "memory reserve map is not 8-byte aligned",
        ));
    }
    if off < header_len {
        return Err(DtError::BadHeader("memory reserve map overlaps the header"));
    }
    let mut pos = off;
    loop {
        // Each step consumes 16 bytes of a bounded blob: at most len/16 iterations.
        let (Some(addr), Some(size)) = (be64(blob, pos), be64(blob, pos.saturating_add(8))) else {
            return Err(DtError::BadHeader(
                "memory reserve map has no terminating entry",
            ));
        };
        pos += RSV_ENTRY;
        if addr == 0 && size == 0 {
            return Ok(off..pos);
        }
        if addr.checked_add(size).is_none() {
            return Err(DtError::BadHeader(
                "memory reserve map entry wraps around 2^64",
            ));
        }
    }
}

/// The reserve-map entries of a validated blob, zero-sized ones left out.
pub(super) fn reservations(blob: &[u8], layout: &Layout) -> Vec<(u64, u64)> {
    let map = blob.get(layout.rsvmap.clone()).unwrap_or_default();
    map.chunks_exact(RSV_ENTRY)
        .filter_map(|e| Some((be64(e, 0)?, be64(e, 8)?)))
        .filter(|&(_, size)| size != 0)
        .collect()
}

struct Walk {
    /// Offset just past FDT_END.
    end: usize,
    nodes: u32,
    nops: usize,
}

/// Where the NOP-free copy goes, and which NOPs were left out.
struct Sink<'o> {
    out: &'o mut Vec<u8>,
    /// Offsets (in the original blob) of the NOP tokens left out.
    nops: &'o mut Vec<usize>,
}

/// Walks the structure block `[start, limit)`. With `sink`, also copies every token but FDT_NOP.
fn walk(
    blob: &[u8],
    start: usize,
    limit: usize,
    exact_end: bool,
    strings: Range<usize>,
    mut sink: Option<Sink<'_>>,
) -> Result<Walk, DtError> {
    let bad = |offset, why| Err(DtError::BadStructure { offset, why });
    let strings = blob.get(strings).unwrap_or_default();
    // Per open node (index = level - 1): length of its path, and whether a child was seen
    // (properties must come before child nodes).
    let mut path_len = [0usize; MAX_DEPTH];
    let mut has_child = [false; MAX_DEPTH];
    let mut depth = 0usize;
    let mut nodes = 0u32;
    let mut nops = 0usize;
    let mut root_done = false;
    let mut pos = start;
    loop {
        let token = match pos.checked_add(4) {
            Some(e) if e <= limit => be32(blob, pos),
            _ => None,
        };
        let Some(token) = token else {
            return bad(pos, "structure block ends without FDT_END");
        };
        let next = match token {
            FDT_BEGIN_NODE => {
                if root_done {
                    return bad(pos, "more than one root node");
                }
                let name_start = pos + 4;
                let window = blob.get(name_start..limit.min(name_start + MAX_NAME_LEN + 1));
                let window = window.unwrap_or_default();
                let Some(name_len) = window.iter().position(|&b| b == 0) else {
                    if name_start + MAX_NAME_LEN < limit {
                        return bad(pos, "node name longer than 255 bytes");
                    }
                    return bad(pos, "node name runs past the structure block");
                };
                let name = &window[..name_len];
                if depth == 0 {
                    if !name.is_empty() {
                        return bad(pos, "root node name is not empty");
                    }
                } else if name.is_empty() {
                    return bad(pos, "empty node name");
                } else if !name.iter().all(|&b| is_node_name_byte(b)) {
                    return bad(pos, "node name is not printable ASCII without '/'");
                }
                if depth == MAX_DEPTH {
                    return bad(pos, "nodes nested deeper than 32 levels");
                }
                nodes += 1;
                if nodes > MAX_NODES {
                    return bad(pos, "more than 100000 nodes");
                }
                // "/" for the root, "/name" below it, "/parent/name" further down.
                let len = match depth {
                    0 => 1,
                    1 => 1 + name_len,
                    _ => path_len[depth - 1] + 1 + name_len,
                };
                if len > MAX_PATH_LEN {
                    return bad(pos, "node path longer than 1024 bytes");
                }
                if depth > 0 {
                    has_child[depth - 1] = true;
                }
                path_len[depth] = len;
                has_child[depth] = false;
                depth += 1;
                match align4(name_start + name_len + 1) {
                    Some(n) if n <= limit => n,
                    _ => return bad(pos, "node name padding runs past the structure block"),
                }
            }
            FDT_END_NODE => {
                if depth == 0 {
                    return bad(pos, "FDT_END_NODE outside any node");
                }
                depth -= 1;
                root_done = depth == 0;
                pos + 4
            }
            FDT_PROP => {
                if depth == 0 {
                    return bad(pos, "property outside any node");
                }
                if has_child[depth - 1] {
                    return bad(pos, "property after a child node");
                }
                let (Some(len), Some(nameoff)) = (be32(blob, pos + 4), be32(blob, pos + 8)) else {
                    return bad(pos, "property header runs past the structure block");
                };
                if pos + 12 > limit {
                    return bad(pos, "property header runs past the structure block");
                }
                let value_end = match (pos + 12).checked_add(len as usize) {
                    Some(e) if e <= limit => e,
                    _ => return bad(pos, "property value runs past the structure block"),
                };
                let Some(name) = strings.get(nameoff as usize..) else {
                    return bad(pos, "property name offset outside the strings block");
                };
                if name.is_empty() {
                    return bad(pos, "property name offset outside the strings block");
                }
                let Some(name_len) = name.iter().position(|&b| b == 0) else {
                    return bad(pos, "property name not terminated inside the strings block");
                };
                if name_len == 0 || !name[..name_len].iter().all(|&b| is_prop_name_byte(b)) {
                    return bad(pos, "property name is empty or not printable ASCII");
                }
                match align4(value_end) {
                    Some(n) if n <= limit => n,
                    _ => return bad(pos, "property padding runs past the structure block"),
                }
            }
            FDT_NOP => {
                nops += 1;
                if let Some(s) = sink.as_mut() {
                    s.nops.push(pos);
                }
                pos += 4;
                continue;
            }
            FDT_END => {
                if depth != 0 {
                    return bad(pos, "FDT_END inside a node");
                }
                if !root_done {
                    return bad(pos, "no root node");
                }
                let end = pos + 4;
                if exact_end && end != limit {
                    return bad(end, "data after FDT_END inside the structure block");
                }
                if let Some(s) = sink.as_mut() {
                    s.out
                        .extend_from_slice(blob.get(pos..end).unwrap_or_default());
                }
                return Ok(Walk { end, nodes, nops });
            }
            _ => return bad(pos, "unknown token"),
        };
        if let Some(s) = sink.as_mut() {
            s.out
                .extend_from_slice(blob.get(pos..next).unwrap_or_default());
        }
        pos = next;
    }
}

/// A NOP-free version-17 copy of a validated blob, laid out header, reserve map, structure
/// block, strings block: exactly what `fdt` handles without surprises.
pub(super) struct Canonical {
    pub blob: Vec<u8>,
    /// Offset of the structure block in the original blob and in the copy.
    struct_orig: usize,
    struct_copy: usize,
    /// Offsets of the NOPs left out, in the original blob, ascending.
    nops: Vec<usize>,
}

impl Canonical {
    /// Maps an offset inside the copy's structure block back to the original blob, so errors
    /// found while extracting point into the blob the host gave.
    pub fn original_offset(&self, copy_offset: usize) -> usize {
        let mut off = (copy_offset.saturating_sub(self.struct_copy)) + self.struct_orig;
        for &nop in &self.nops {
            if nop <= off {
                off += 4;
            } else {
                break;
            }
        }
        off
    }
}

pub(super) fn canonical(blob: &[u8], layout: &Layout) -> Result<Canonical, DtError> {
    let rsvmap = blob.get(layout.rsvmap.clone()).unwrap_or_default();
    let strings = blob.get(layout.strings.clone()).unwrap_or_default();
    let struct_copy = HEADER_V17 + rsvmap.len();
    let mut out = Vec::with_capacity(layout.total + HEADER_V17);
    out.resize(HEADER_V17, 0);
    out.extend_from_slice(rsvmap);
    let mut nops = Vec::new();
    let limit = layout.structure.end;
    // The same walk that accepted the blob, now copying: it cannot fail differently.
    walk(
        blob,
        layout.structure.start,
        limit,
        false,
        layout.strings.clone(),
        Some(Sink {
            out: &mut out,
            nops: &mut nops,
        }),
    )?;
    let struct_size = out.len() - struct_copy;
    let strings_off = out.len();
    out.extend_from_slice(strings);
    let too_big = DtError::BadHeader("blob too large to rewrite");
    let header = [
        FDT_MAGIC,
        u32::try_from(out.len()).map_err(|_| too_big.clone())?,
        u32::try_from(struct_copy).map_err(|_| too_big.clone())?,
        u32::try_from(strings_off).map_err(|_| too_big.clone())?,
        HEADER_V17 as u32,
        17,
        16,
        layout.boot_cpuid,
        u32::try_from(strings.len()).map_err(|_| too_big.clone())?,
        u32::try_from(struct_size).map_err(|_| too_big)?,
    ];
    // `out` starts with HEADER_V17 zero bytes (resized above): ten fields fit exactly.
    for (i, v) in header.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&v.to_be_bytes());
    }
    Ok(Canonical {
        blob: out,
        struct_orig: layout.structure.start,
        struct_copy,
        nops,
    })
}
