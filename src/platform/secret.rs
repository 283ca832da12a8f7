//! Secret marking: fill private memory with records a host can recognise, so that a dump of the
//! guest's *shared* memory proves that nothing private leaked into it.
//!
//! A record is 16 bytes: `"SG-SECRET"` (9 bytes), a little-endian `u32` counter, and the low three
//! bytes (little-endian) of the CRC32C of the first 13. The check keeps random data and partial
//! copies from looking like a record; the counter says which record leaked (hence which buffer and
//! offset). Records are written back to back from the start of the range; a tail shorter than a
//! record is filled with `#`.
//!
//! The guest marks a buffer or a range ([`fill`], [`fill_raw`]); the host scans a dump
//! ([`find_marks`], [`marks`]). Both sides use this module (the harness depends on this crate), so
//! the format cannot drift.

use crate::crc32c::crc32c;

pub const MAGIC: &[u8; 9] = b"SG-SECRET";
pub const RECORD_LEN: usize = 16;
/// The filler of a tail shorter than a record.
pub const TAIL: u8 = b'#';

/// The record with counter `counter`.
pub fn record(counter: u32) -> [u8; RECORD_LEN] {
    let mut r = [0u8; RECORD_LEN];
    r[..9].copy_from_slice(MAGIC);
    r[9..13].copy_from_slice(&counter.to_le_bytes());
    let check = crc32c(&r[..13]).to_le_bytes();
    r[13..16].copy_from_slice(&check[..3]);
    r
}

/// Fills `buf` with records counting from `first`; returns the next unused counter.
pub fn fill(buf: &mut [u8], first: u32) -> u32 {
    let mut counter = first;
    let mut chunks = buf.chunks_exact_mut(RECORD_LEN);
    for c in &mut chunks {
        c.copy_from_slice(&record(counter));
        counter = counter.wrapping_add(1);
    }
    chunks.into_remainder().fill(TAIL);
    counter
}

/// Fills `len` bytes at `ptr` with records, with volatile writes: the marks must really be in
/// memory even though the guest never reads them back. Returns the next unused counter.
///
/// # Safety
/// `ptr` is valid for writes of `len` bytes, and no Rust reference to that memory is alive.
pub unsafe fn fill_raw(ptr: *mut u8, len: usize, first: u32) -> u32 {
    let mut counter = first;
    let mut off = 0;
    while off + RECORD_LEN <= len {
        for (i, &b) in record(counter).iter().enumerate() {
            // SAFETY: off + i < len, within the caller's range.
            unsafe { ptr.add(off + i).write_volatile(b) };
        }
        counter = counter.wrapping_add(1);
        off += RECORD_LEN;
    }
    while off < len {
        // SAFETY: as above.
        unsafe { ptr.add(off).write_volatile(TAIL) };
        off += 1;
    }
    counter
}

/// A record found in a dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    /// Offset of its first byte in the scanned bytes.
    pub offset: usize,
    pub counter: u32,
}

/// The valid record starting at `offset`, if there is one.
fn at(hay: &[u8], offset: usize) -> Option<Mark> {
    let r = hay.get(offset..offset.checked_add(RECORD_LEN)?)?;
    if &r[..9] != MAGIC {
        return None;
    }
    let counter = u32::from_le_bytes([r[9], r[10], r[11], r[12]]);
    (record(counter)[13..] == r[13..]).then_some(Mark { offset, counter })
}

/// Every valid record in `hay`, at any offset (a leak need not keep the 16-byte alignment), in
/// increasing offset order.
pub fn marks(hay: &[u8]) -> impl Iterator<Item = Mark> + '_ {
    let mut pos = 0;
    core::iter::from_fn(move || {
        while pos + RECORD_LEN <= hay.len() {
            // The first byte of the magic, then the rest.
            let i = pos
                + hay[pos..=hay.len() - RECORD_LEN]
                    .iter()
                    .position(|&b| b == MAGIC[0])?;
            pos = i + 1;
            if let Some(m) = at(hay, i) {
                pos = i + RECORD_LEN;
                return Some(m);
            }
        }
        None
    })
}

/// The offsets of every valid record in `hay`.
pub fn find_marks(hay: &[u8]) -> impl Iterator<Item = usize> + '_ {
    marks(hay).map(|m| m.offset)
}

/// Offsets of the 9-byte magic alone, valid record or not: evidence of a partial leak, which
/// [`find_marks`] does not count.
pub fn find_magic(hay: &[u8]) -> impl Iterator<Item = usize> + '_ {
    hay.windows(MAGIC.len())
        .enumerate()
        .filter(|(_, w)| w == MAGIC)
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    #[test]
    fn records_round_trip() {
        let mut buf = vec![0u8; 16 * 10 + 5];
        assert_eq!(fill(&mut buf, 7), 17);
        assert_eq!(&buf[..9], MAGIC);
        assert_eq!(&buf[160..], b"#####");
        let m: Vec<Mark> = marks(&buf).collect();
        assert_eq!(m.len(), 10);
        for (i, mark) in m.iter().enumerate() {
            assert_eq!(
                *mark,
                Mark {
                    offset: i * 16,
                    counter: 7 + i as u32
                }
            );
        }
        assert_eq!(
            find_marks(&buf).collect::<Vec<_>>(),
            (0..10).map(|i| i * 16).collect::<Vec<_>>()
        );
        let mut raw = vec![0u8; 40];
        // SAFETY: `raw` is a live, exclusively borrowed buffer of 40 bytes.
        let next = unsafe { fill_raw(raw.as_mut_ptr(), raw.len(), u32::MAX) };
        assert_eq!(next, 1, "the counter wraps");
        assert_eq!(&raw[..16], &record(u32::MAX));
        assert_eq!(&raw[16..32], &record(0));
        assert_eq!(&raw[32..], b"########");
    }

    #[test]
    fn found_anywhere_and_not_forged() {
        // A record at an odd offset inside noise.
        let mut hay = vec![0x53u8; 1000]; // 'S' everywhere: many false starts
        hay[333..349].copy_from_slice(&record(42));
        hay[900..916].copy_from_slice(&record(43));
        let m: Vec<Mark> = marks(&hay).collect();
        assert_eq!(
            m,
            vec![
                Mark {
                    offset: 333,
                    counter: 42
                },
                Mark {
                    offset: 900,
                    counter: 43
                }
            ]
        );
        // A record with a bad check, or cut short, is not a mark (but the magic is seen).
        let mut forged = record(5);
        forged[15] ^= 1;
        hay[500..516].copy_from_slice(&forged);
        hay[984..993].copy_from_slice(MAGIC); // 7 bytes short of a record at the end
        assert_eq!(marks(&hay).count(), 2);
        assert_eq!(
            find_magic(&hay).collect::<Vec<_>>(),
            vec![333, 500, 900, 984]
        );
        // Nothing in zeros or in short inputs.
        assert_eq!(marks(&[0u8; 4096]).count(), 0);
        assert_eq!(marks(&record(1)[..15]).count(), 0);
        assert_eq!(marks(&[]).count(), 0);
        assert_eq!(marks(&record(1)).count(), 1);
    }

    #[test]
    fn random_data_has_no_marks() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut hay = vec![0u8; 1 << 16];
        for b in hay.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        assert_eq!(marks(&hay).count(), 0);
        // Overlapping magic prefixes ("SG-SG-SECRET...") are still found.
        let mut hay = b"SG-SG-".to_vec();
        hay.extend_from_slice(&record(9));
        assert_eq!(
            marks(&hay).collect::<Vec<_>>(),
            vec![Mark {
                offset: 6,
                counter: 9
            }]
        );
    }
}
