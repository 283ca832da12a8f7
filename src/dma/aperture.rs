//! Where a translated domain puts its IOVAs: inside what the IOMMU translates, clear of every
//! range it must never map (virtio-iommu reserved regions, VT-d's interrupt window, RMRRs).
//!
//! [`choose`] takes the first gap at or above a preferred base that holds the wanted size, or
//! else the largest gap, aligned to the page size. IOVA 0 is never handed out (a zero device
//! address is the classic sign of a missing mapping), and the preferred base keeps IOVAs
//! visibly different from the guest-physical addresses of a small guest, so that a device that
//! bypassed translation would hit nothing of the data it was given.

/// Where IOVA domains start when they can: 1 GiB, below 4 GiB for 32-bit devices and above the
/// RAM of the small guests the tests boot.
pub const PREFERRED_BASE: u64 = 1 << 30;

/// The x86 interrupt address range: DMA writes there are MSIs, never translated (VT-d 3.15,
/// and QEMU's virtio-iommu MSI reserved region on x86).
pub const X86_INTERRUPT_RANGE: (u64, u64) = (0xfee0_0000, 0xfeef_ffff);

/// An IOVA range `[base, base + size)` inside `input` (inclusive bounds), disjoint from every
/// `reserved` range (inclusive bounds), page-aligned, of at most `want` bytes and at least one
/// page: the first gap at or above `preferred` that holds `want`, else the largest gap.
/// `None` when no page fits. `page` is a power of two.
pub fn choose(
    input: (u64, u64),
    reserved: &[(u64, u64)],
    page: u64,
    preferred: u64,
    want: u64,
) -> Option<(u64, u64)> {
    debug_assert!(page.is_power_of_two());
    // Work with exclusive ends in u128: `input.1` may be u64::MAX.
    let (lo, hi) = (u128::from(input.0.max(page)), u128::from(input.1) + 1);
    if lo >= hi {
        return None;
    }
    // Gaps between the reserved ranges, in address order: a selection over the (few) ranges,
    // rather than a sort, which would cost the guest image a generic sort routine.
    let page = u128::from(page);
    let mut gaps = alloc::vec::Vec::new();
    let mut at = lo;
    while at < hi {
        // The reserved range that starts first among those ending after `at`.
        let next = reserved
            .iter()
            .filter(|r| r.0 <= r.1 && u128::from(r.1) + 1 > at)
            .map(|&(s, e)| (u128::from(s), u128::from(e) + 1))
            .min_by_key(|&(s, _)| s);
        let (s, e) = next.unwrap_or((hi, hi));
        let (gs, ge) = (at.next_multiple_of(page), s.min(hi) & !(page - 1));
        if ge > gs {
            gaps.push((gs, ge));
        }
        at = at.max(e);
        if s >= hi {
            break;
        }
    }
    let want = u128::from(want.max(1)).next_multiple_of(page);
    let preferred = u128::from(preferred).next_multiple_of(page);
    let fit = gaps.iter().find_map(|&(s, e)| {
        let s = s.max(preferred);
        (e > s && e - s >= want).then_some((s, want))
    });
    let (base, size) = fit.or_else(|| {
        gaps.iter()
            .max_by_key(|&&(s, e)| e - s)
            .map(|&(s, e)| (s, (e - s).min(want)))
    })?;
    Some((u64::try_from(base).ok()?, u64::try_from(size).ok()?))
}

/// The pieces `[start, end)` of `range` (`[start, end)`) that no run of `covered` (`(base,
/// bytes)`, sorted, disjoint) covers, in address order.
pub fn uncovered(range: (u64, u64), covered: &[(u64, u64)]) -> alloc::vec::Vec<(u64, u64)> {
    let (mut at, end) = range;
    let mut out = alloc::vec::Vec::new();
    for &(base, len) in covered {
        let stop = base.saturating_add(len);
        if stop <= at {
            continue;
        }
        if base >= end {
            break;
        }
        if base > at {
            out.push((at, base));
        }
        at = stop;
        if at >= end {
            break;
        }
    }
    if at < end {
        out.push((at, end));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn qemu_defaults() {
        // virtio-iommu on x86: every IOVA, the MSI window reserved.
        assert_eq!(
            choose(
                (0, u64::MAX),
                &[X86_INTERRUPT_RANGE],
                4096,
                PREFERRED_BASE,
                256 * MIB
            ),
            Some((PREFERRED_BASE, 256 * MIB))
        );
        // VT-d, 39-bit: the same.
        assert_eq!(
            choose(
                (0, (1 << 39) - 1),
                &[X86_INTERRUPT_RANGE],
                4096,
                PREFERRED_BASE,
                256 * MIB
            ),
            Some((PREFERRED_BASE, 256 * MIB))
        );
    }

    #[test]
    fn reserved_ranges_are_avoided() {
        // A reserved range right at the preferred base pushes the domain past it.
        let r = [(PREFERRED_BASE, PREFERRED_BASE + 5 * MIB - 1)];
        assert_eq!(
            choose((0, u64::MAX), &r, 4096, PREFERRED_BASE, 16 * MIB),
            Some((PREFERRED_BASE + 5 * MIB, 16 * MIB))
        );
        // A small input range: the largest gap, page-aligned, never page 0.
        let r = [(0x3000, 0x3fff)];
        assert_eq!(
            choose((0, 0xffff), &r, 4096, PREFERRED_BASE, 256 * MIB),
            Some((0x4000, 0xc000))
        );
        assert_eq!(
            choose((0, 0x2fff), &r, 4096, PREFERRED_BASE, 1),
            Some((0x1000, 0x1000))
        );
        // Unaligned reserved bounds shrink the gaps to whole pages.
        let r = [(0x1800, 0x1800)];
        assert_eq!(
            choose((0, 0x3fff), &r, 4096, 0, 4096),
            Some((0x2000, 0x1000))
        );
        // An inverted reserved range is ignored.
        assert_eq!(
            choose((0, 0xffff), &[(0x9000, 0x1000)], 4096, 0, 4096),
            Some((0x1000, 0x1000))
        );
    }

    #[test]
    fn uncovered_pieces() {
        let runs = [(0x1000, 0x1000), (0x4000, 0x2000)];
        assert_eq!(
            uncovered((0, 0x8000), &runs),
            [(0, 0x1000), (0x2000, 0x4000), (0x6000, 0x8000)]
        );
        assert_eq!(uncovered((0x4800, 0x5000), &runs), []);
        assert_eq!(uncovered((0x1800, 0x4800), &runs), [(0x2000, 0x4000)]);
        assert_eq!(uncovered((0x9000, 0xa000), &runs), [(0x9000, 0xa000)]);
        assert_eq!(uncovered((0x9000, 0xa000), &[]), [(0x9000, 0xa000)]);
    }

    #[test]
    fn nothing_fits() {
        assert_eq!(choose((0, 0xfff), &[], 4096, 0, 4096), None, "only page 0");
        assert_eq!(
            choose((0x1000, 0x1fff), &[(0, u64::MAX)], 4096, 0, 4096),
            None
        );
        assert_eq!(
            choose((0x1800, 0x27ff), &[], 4096, 0, 4096),
            None,
            "no whole page"
        );
        assert_eq!(choose((5, 4), &[], 4096, 0, 4096), None, "empty input");
    }

    #[test]
    fn random_inputs_keep_the_invariants() {
        let mut seed = 0x1234_5678_9abc_def1u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..5000 {
            let page = 1u64 << (12 + next() % 10);
            let a = next() >> (next() % 64);
            let b = next() >> (next() % 64);
            let input = (a.min(b), a.max(b));
            let reserved: alloc::vec::Vec<(u64, u64)> = (0..next() % 4)
                .map(|_| {
                    let s = next() >> (next() % 64);
                    (s, s.saturating_add(next() >> (next() % 63 + 1)))
                })
                .collect();
            let want = (next() >> (next() % 64)).max(1);
            if let Some((base, size)) = choose(input, &reserved, page, next() >> 20, want) {
                let last = base + (size - 1);
                assert!(base >= input.0 && last <= input.1 && base >= page);
                assert!(base % page == 0 && size % page == 0 && size > 0);
                assert!(size <= want.next_multiple_of(page));
                for &(s, e) in &reserved {
                    assert!(
                        e < s || last < s || base > e,
                        "{base:#x}+{size:#x} hits {s:#x}..{e:#x}"
                    );
                }
            }
        }
    }
}
