//! A fixed-capacity memory map: RAM ranges and reserved ranges, and the free RAM that remains.
//!
//! Fixed capacity because it is built before there is a heap: the heap is carved out of it.

/// What a range of physical memory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    Ram,
    /// Inside RAM but not ours: the image, the device tree, the firmware, an initrd, page tables.
    Reserved,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub base: u64,
    pub size: u64,
    pub kind: RegionKind,
    /// Why a reserved range is reserved ("image", "fdt", "firmware", ...).
    pub label: &'static str,
}

impl Region {
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }
}

pub const MAX_REGIONS: usize = 64;

#[derive(Clone, Debug)]
pub struct MemoryMap {
    regions: [Region; MAX_REGIONS],
    len: usize,
    /// Entries that did not fit (reported, never silently dropped).
    pub dropped: usize,
}

impl Default for MemoryMap {
    fn default() -> Self {
        Self::new()
    }
}

const EMPTY: Region = Region {
    base: 0,
    size: 0,
    kind: RegionKind::Ram,
    label: "",
};

impl MemoryMap {
    pub const fn new() -> Self {
        MemoryMap {
            regions: [EMPTY; MAX_REGIONS],
            len: 0,
            dropped: 0,
        }
    }

    /// Adds a range; empty ranges are ignored, ranges that would wrap are clipped at 2^64.
    pub fn add(&mut self, base: u64, size: u64, kind: RegionKind, label: &'static str) {
        let size = size.min(u64::MAX - base);
        if size == 0 {
            return;
        }
        if self.len == MAX_REGIONS {
            self.dropped += 1;
            return;
        }
        self.regions[self.len] = Region {
            base,
            size,
            kind,
            label,
        };
        self.len += 1;
    }

    pub fn regions(&self) -> &[Region] {
        &self.regions[..self.len]
    }

    pub fn ram(&self) -> impl Iterator<Item = &Region> {
        self.regions().iter().filter(|r| r.kind == RegionKind::Ram)
    }

    pub fn reserved(&self) -> impl Iterator<Item = &Region> {
        self.regions()
            .iter()
            .filter(|r| r.kind == RegionKind::Reserved)
    }

    /// Total RAM in bytes (overlapping RAM entries are counted once).
    pub fn ram_bytes(&self) -> u64 {
        let mut total = 0u64;
        self.for_each_ram_piece(&mut |base, end| total += end - base);
        total
    }

    /// Highest RAM address + 1.
    pub fn ram_top(&self) -> u64 {
        self.ram().map(Region::end).max().unwrap_or(0)
    }

    /// Calls `f(base, end)` for each maximal piece of RAM, merged and sorted, overlaps removed.
    /// (A `dyn` callback: one copy of the walk in the guest image for all its callers.)
    pub fn for_each_ram_piece(&self, f: &mut dyn FnMut(u64, u64)) {
        let mut cursor = 0u64;
        loop {
            // Smallest RAM piece that ends after the cursor.
            let next = self
                .ram()
                .filter(|r| r.end() > cursor)
                .map(|r| (r.base.max(cursor), r.end()))
                .min_by_key(|&(b, _)| b);
            let Some((mut base, mut end)) = next else {
                return;
            };
            // Extend through touching or overlapping ranges.
            loop {
                let ext = self
                    .ram()
                    .filter(|r| r.base <= end && r.end() > end)
                    .map(Region::end)
                    .max();
                match ext {
                    Some(e) => end = e,
                    None => break,
                }
            }
            if base < cursor {
                base = cursor;
            }
            f(base, end);
            cursor = end;
        }
    }

    /// Calls `f(base, end)` for each piece of RAM not covered by a reserved range, in address
    /// order, each piece aligned to `align` (a power of two) and at least `min` bytes long.
    pub fn for_each_free(&self, align: u64, min: u64, mut f: impl FnMut(u64, u64)) {
        debug_assert!(align.is_power_of_two());
        self.for_each_ram_piece(&mut |base, end| {
            let mut cursor = base;
            while cursor < end {
                // First reserved range that overlaps [cursor, end).
                let blocker = self
                    .reserved()
                    .filter(|r| r.base < end && r.end() > cursor)
                    .min_by_key(|r| r.base);
                let piece_end = match blocker {
                    Some(r) if r.base <= cursor => {
                        cursor = r.end();
                        continue;
                    }
                    Some(r) => r.base,
                    None => end,
                };
                let start = cursor.checked_add(align - 1).map(|v| v & !(align - 1));
                let stop = piece_end & !(align - 1);
                if let Some(start) = start
                    && stop > start
                    && stop - start >= min
                {
                    f(start, stop);
                }
                cursor = piece_end;
            }
        });
    }

    /// The largest free piece, aligned; `None` when nothing is free.
    pub fn largest_free(&self, align: u64) -> Option<(u64, u64)> {
        let mut best: Option<(u64, u64)> = None;
        self.for_each_free(align, 1, |b, e| {
            if best.is_none_or(|(bb, be)| e - b > be - bb) {
                best = Some((b, e));
            }
        });
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frees(m: &MemoryMap, align: u64) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        m.for_each_free(align, 1, |b, e| v.push((b, e)));
        v
    }

    #[test]
    fn free_ram_skips_reserved_ranges() {
        let mut m = MemoryMap::new();
        m.add(0, 0x1000_0000, RegionKind::Ram, "ram");
        m.add(0x40_0000, 0x10_0000, RegionKind::Reserved, "image");
        m.add(0, 0x4000, RegionKind::Reserved, "vectors");
        m.add(0x0f00_0000, 0x200_0000, RegionKind::Reserved, "firmware"); // beyond the end too
        assert_eq!(
            frees(&m, 0x1000),
            vec![(0x4000, 0x40_0000), (0x50_0000, 0x0f00_0000)]
        );
        assert_eq!(m.largest_free(0x1000), Some((0x50_0000, 0x0f00_0000)));
        assert_eq!(m.ram_bytes(), 0x1000_0000);
    }

    #[test]
    fn overlapping_ram_is_counted_once_and_holes_stay_holes() {
        let mut m = MemoryMap::new();
        m.add(0x10_0000, 0x7ff0_0000, RegionKind::Ram, "ram");
        m.add(0x0, 0x9_f000, RegionKind::Ram, "ram");
        m.add(0x10_0000, 0x1000, RegionKind::Ram, "ram"); // duplicate
        m.add(0x1_0000_0000, 0x4000_0000, RegionKind::Ram, "ram");
        assert_eq!(m.ram_bytes(), 0x9_f000 + 0x7ff0_0000 + 0x4000_0000);
        assert_eq!(m.ram_top(), 0x1_4000_0000);
        let f = frees(&m, 0x1000);
        assert_eq!(
            f,
            vec![
                (0, 0x9f000),
                (0x10_0000, 0x8000_0000),
                (0x1_0000_0000, 0x1_4000_0000)
            ]
        );
    }

    #[test]
    fn alignment_and_tiny_pieces() {
        let mut m = MemoryMap::new();
        m.add(0x1234, 0x10_0000, RegionKind::Ram, "ram");
        m.add(0x2000, 0x100, RegionKind::Reserved, "x");
        let f = frees(&m, 0x1000);
        assert_eq!(f, vec![(0x3000, 0x10_1000)]);
        let mut m = MemoryMap::new();
        m.add(0x1, 0x10, RegionKind::Ram, "ram");
        assert!(frees(&m, 0x1000).is_empty());
        assert_eq!(m.largest_free(0x1000), None);
    }

    #[test]
    fn hostile_sizes_do_not_wrap_or_overflow() {
        let mut m = MemoryMap::new();
        m.add(u64::MAX - 10, u64::MAX, RegionKind::Ram, "ram");
        m.add(0, 0, RegionKind::Ram, "ram");
        m.add(0, u64::MAX, RegionKind::Reserved, "all");
        assert!(frees(&m, 0x1000).is_empty());
        let mut m = MemoryMap::new();
        for i in 0..100 {
            m.add(i * 0x1000, 0x1000, RegionKind::Ram, "ram");
        }
        assert_eq!(m.regions().len(), MAX_REGIONS);
        assert_eq!(m.dropped, 100 - MAX_REGIONS);
        assert_eq!(frees(&m, 0x1000), vec![(0, MAX_REGIONS as u64 * 0x1000)]);
    }
}
