//! The raw properties of one device-tree node, for what [`crate::devtree::DeviceTree`] does not
//! carry yet: a PHB's `reg` (its BUID) and `ranges` (its windows), a PCI function's
//! `assigned-addresses`, the root's `#address-cells`.
//!
//! A self-contained, bounds-checked walk of the structure block (no `fdt` crate): every read is
//! checked, the walk ends after at most one pass over the block, and a malformed blob gives
//! `None`. Callers still run [`crate::devtree::validate`] first where they can.

use alloc::vec::Vec;

const FDT_MAGIC: u32 = 0xd00d_feed;
const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const NOP: u32 = 4;
const END: u32 = 9;
const MAX_DEPTH: usize = 64;

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// The bytes up to (not including) the first NUL at or after `at`.
fn c_str(b: &[u8], at: usize) -> Option<&[u8]> {
    let rest = b.get(at..)?;
    let n = rest.iter().position(|&c| c == 0)?;
    Some(&rest[..n])
}

/// The properties (name, value) of the node at `path` ("/" or "/a@1/b"), in blob order.
/// `None` when the blob is malformed or there is no such node.
pub fn node_properties<'a>(blob: &'a [u8], path: &str) -> Option<Vec<(&'a str, &'a [u8])>> {
    if be32(blob, 0)? != FDT_MAGIC {
        return None;
    }
    let total = (be32(blob, 4)? as usize).min(blob.len());
    let blob = &blob[..total];
    let off_struct = be32(blob, 8)? as usize;
    let off_strings = be32(blob, 12)? as usize;
    let size_strings = be32(blob, 32)? as usize;
    let size_struct = be32(blob, 36)? as usize;
    let structs = blob.get(off_struct..off_struct.checked_add(size_struct)?)?;
    let strings = blob.get(off_strings..off_strings.checked_add(size_strings)?)?;

    let want: Vec<&[u8]> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::as_bytes)
        .collect();
    // How many leading components of `want` the current node path matches, per depth.
    let mut depth = 0usize;
    let mut matched = 0usize;
    let mut in_target = false;
    let mut props = Vec::new();
    let mut pos = 0usize;
    while pos < structs.len() {
        let token = be32(structs, pos)?;
        pos += 4;
        match token {
            BEGIN_NODE => {
                let name = c_str(structs, pos)?;
                pos = (pos + name.len() + 1).next_multiple_of(4);
                if in_target {
                    return Some(props); // its first child: the properties are done
                }
                if depth >= MAX_DEPTH {
                    return None;
                }
                // Depth 0 is the root (empty name); depth d >= 1 matches component d - 1.
                if depth == 0 {
                    matched = 0;
                } else if matched == depth - 1 && want.get(depth - 1) == Some(&name) {
                    matched = depth;
                }
                depth += 1;
                in_target = matched == want.len() && depth == want.len() + 1;
            }
            END_NODE => {
                if in_target {
                    return Some(props);
                }
                depth = depth.checked_sub(1)?;
                matched = matched.min(depth.saturating_sub(1));
            }
            PROP => {
                let len = be32(structs, pos)? as usize;
                let name_off = be32(structs, pos + 4)? as usize;
                let value = structs.get(pos + 8..(pos + 8).checked_add(len)?)?;
                pos = (pos + 8 + len).next_multiple_of(4);
                if in_target {
                    let name = core::str::from_utf8(c_str(strings, name_off)?).ok()?;
                    props.push((name, value));
                }
            }
            NOP => {}
            END => return None,
            _ => return None,
        }
    }
    None
}

/// One property of the node at `path`.
pub fn property<'a>(blob: &'a [u8], path: &str, name: &str) -> Option<&'a [u8]> {
    node_properties(blob, path)?
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// A one-cell property as a number.
pub fn property_u32(blob: &[u8], path: &str, name: &str) -> Option<u32> {
    let v = property(blob, path, name)?;
    (v.len() == 4).then(|| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
}
