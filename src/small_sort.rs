//! An insertion sort for the few short lists the guest sorts (BARs to place, three clock
//! readings).
//!
//! `core`'s sorts are built for any length: each instantiation pulls in a few KiB of
//! introsort/driftsort and small-sort networks, about 8 KiB of each image for three call
//! sites. These lists hold a handful to a few hundred entries, where insertion sort is as
//! fast and a few dozen instructions.

/// Sorts `v` so that no element is `less` than the one before it. Stable: equal elements keep
/// their order.
pub fn sort_by<T>(v: &mut [T], mut less: impl FnMut(&T, &T) -> bool) {
    for i in 1..v.len() {
        let mut j = i;
        while j > 0 && less(&v[j], &v[j - 1]) {
            v.swap(j, j - 1);
            j -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Agrees with `core`'s stable sort on random lists with many equal keys, ties included.
    #[test]
    fn matches_the_stable_sort() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..64 {
            let mut v: Vec<(u8, usize)> = (0..len)
                .map(|i| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    ((seed % 5) as u8, i)
                })
                .collect();
            let mut want = v.clone();
            want.sort_by_key(|e| e.0);
            sort_by(&mut v, |a, b| a.0 < b.0);
            assert_eq!(v, want, "len {len}");
        }
    }
}
