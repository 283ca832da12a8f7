//! The deterministic data pattern the guest writes (`sg.blk.write=OFFSET:LEN:SEED`) and the
//! harness regenerates (`cargo run -p harness -- pattern ...`) to check a disk image after a run.
//!
//! The byte at absolute disk offset `o` is byte `o % 8` (little-endian) of
//! `splitmix64(seed ^ (o / 8))`. It depends only on the seed and the absolute offset, so any
//! part of a written range can be checked on its own, and a write at the wrong offset shows.

/// splitmix64's output function (Steele, Lea, Flood 2014): a good 64-bit mix.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `buf` with the pattern for the disk bytes starting at absolute offset `offset`.
///
/// One `splitmix64` per 8-byte word, not per byte: the guest generates every byte it writes,
/// and under TCG that cost is in every write figure `make bench` measures.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let word = |o: u64| splitmix64(seed ^ (o / 8)).to_le_bytes();
    // The head, up to the next 8-byte boundary of the disk.
    let skip = (offset % 8) as usize;
    let head = ((8 - skip) % 8).min(buf.len());
    let (first, rest) = buf.split_at_mut(head);
    if head > 0 {
        first.copy_from_slice(&word(offset)[skip..skip + head]);
    }
    let mut o = offset + head as u64;
    let mut words = rest.chunks_exact_mut(8);
    for w in &mut words {
        w.copy_from_slice(&word(o));
        o += 8;
    }
    let tail = words.into_remainder();
    let n = tail.len();
    tail.copy_from_slice(&word(o)[..n]);
}

/// The first offset in `buf` (at disk offset `offset`) that does not hold the pattern.
pub fn first_mismatch(seed: u64, offset: u64, buf: &[u8]) -> Option<u64> {
    let mut expect = [0u8; 512];
    for (n, chunk) in buf.chunks(expect.len()).enumerate() {
        let at = offset + (n * expect.len()) as u64;
        fill(seed, at, &mut expect[..chunk.len()]);
        if let Some(i) = chunk.iter().zip(&expect).position(|(a, b)| a != b) {
            return Some(at + i as u64);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_only_on_seed_and_absolute_offset() {
        let mut whole = vec![0u8; 4096];
        fill(42, 1 << 20, &mut whole);
        let mut part = vec![0u8; 100];
        fill(42, (1 << 20) + 1003, &mut part);
        assert_eq!(&whole[1003..1103], &part[..]);
        assert_eq!(first_mismatch(42, 1 << 20, &whole), None);
        whole[777] ^= 1;
        assert_eq!(first_mismatch(42, 1 << 20, &whole), Some((1 << 20) + 777));
        let mut other = vec![0u8; 16];
        fill(43, 1 << 20, &mut other);
        assert_ne!(&other[..], &whole[..16]);
    }

    /// The word-at-a-time fill is the byte-at-a-time definition, at every alignment.
    #[test]
    fn fill_matches_the_definition_at_every_alignment() {
        let byte = |seed: u64, o: u64| (splitmix64(seed ^ (o / 8)) >> (8 * (o % 8))) as u8;
        for offset in 0..24u64 {
            for len in 0..40usize {
                let mut b = vec![0xaau8; len];
                fill(0x5eed, (1 << 30) + offset, &mut b);
                for (i, &x) in b.iter().enumerate() {
                    assert_eq!(
                        x,
                        byte(0x5eed, (1 << 30) + offset + i as u64),
                        "{offset} {len}"
                    );
                }
            }
        }
    }

    #[test]
    fn pinned_values() {
        // Pinned so that the guest, the harness and the docs cannot drift apart.
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        let mut b = [0u8; 8];
        fill(1, 0, &mut b);
        assert_eq!(u64::from_le_bytes(b), splitmix64(1));
    }
}
