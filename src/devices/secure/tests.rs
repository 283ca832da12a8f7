//! Placement of the pool and the secret regions, the records of the secure boot step, the
//! release probe.

use alloc::string::String;
use alloc::vec::Vec;

use super::*;
use crate::dma::pool::PoolConfig;
use crate::platform::decide::{Facts, SecureMode, decide};
use crate::platform::{PAGE_2M, PAGE_4K, PAGE_64K, PlatformKind};

/// Host memory standing in for guest RAM: "physical" addresses are its pointer values.
pub(crate) struct Ram {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Ram {
    pub(crate) fn new(size: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(size, 4096).unwrap();
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Ram { ptr, layout }
    }

    pub(crate) fn phys(&self) -> u64 {
        self.ptr.expose_provenance() as u64
    }

    pub(crate) fn size(&self) -> u64 {
        self.layout.size() as u64
    }

    /// Everything in it, as a host dump would see it.
    pub(crate) fn dump(&self) -> Vec<u8> {
        // SAFETY: the allocation is live; volatile reads, as a device would.
        (0..self.layout.size())
            .map(|i| unsafe { self.ptr.add(i).read_volatile() })
            .collect()
    }

    /// A bounce pool over all of it.
    pub(crate) fn bounce<'p>(&self, platform: &'p dyn Platform) -> Bounce<'p> {
        // SAFETY: the memory is ours, used by nothing else, and outlives the pool in every test.
        unsafe { Bounce::new(platform, self.phys(), self.size(), PoolConfig::default()) }.unwrap()
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// A q35-like map: 640 KiB and 1 MiB..512 MiB of RAM, the BIOS and the image reserved.
fn q35() -> MemoryMap {
    let mut m = MemoryMap::new();
    m.add(0, 0x9_fc00, RegionKind::Ram, "ram");
    m.add(0x10_0000, 0x1ff0_0000, RegionKind::Ram, "ram");
    m.add(0, 0x10_0000, RegionKind::Reserved, "bios");
    m.add(0x20_0000, 0xa_4000, RegionKind::Reserved, "image");
    m
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0 + b.1 && b.0 < a.0 + a.1
}

#[test]
fn pool_size_is_rounded_up_to_the_granularity() {
    assert_eq!(pool_size(4 << 20, PAGE_2M), 4 << 20);
    assert_eq!(pool_size(64 << 10, PAGE_2M), 2 << 20);
    assert_eq!(pool_size((4 << 20) + 1, PAGE_64K), (4 << 20) + (64 << 10));
    assert_eq!(pool_size(0x10001, PAGE_4K), 0x11000);
    assert_eq!(pool_size(u64::MAX, PAGE_2M), u64::MAX, "no overflow");
}

#[test]
fn the_pool_is_free_ram_below_4g_and_never_the_heap() {
    let m = q35();
    let heap = (0x2a_4000, 64 << 20);
    for g in [PAGE_4K, PAGE_64K, PAGE_2M] {
        let size = pool_size(4 << 20, g);
        let base = place_pool(&m, heap, size, g).unwrap();
        assert_eq!(base % g, 0);
        assert!(base + size <= 0x2000_0000, "inside RAM");
        assert!(!overlaps((base, size), heap));
        assert!(!overlaps((base, size), (0, 0x10_0000)));
        assert!(!overlaps((base, size), (0x20_0000, 0xa_4000)));
        assert_eq!(base, 0x2000_0000 - size, "the highest free place");
    }
    // A heap that takes the top: the pool goes below it.
    let heap = (0x1c00_0000, 0x400_0000);
    let base = place_pool(&m, heap, 4 << 20, PAGE_2M).unwrap();
    assert_eq!(base, 0x1c00_0000 - (4 << 20));
    // RAM above 4 GiB is never used.
    let mut m = MemoryMap::new();
    m.add(0x1_0000_0000, 1 << 30, RegionKind::Ram, "ram");
    m.add(0x10_0000, 0x30_0000, RegionKind::Ram, "ram");
    assert_eq!(
        place_pool(&m, (0x10_0000, 0x10_0000), 4 << 20, PAGE_4K),
        None
    );
    assert_eq!(
        place_pool(&m, (0x10_0000, 0x10_0000), 1 << 20, PAGE_4K),
        Some(0x30_0000)
    );
}

#[test]
fn a_full_memory_map_places_nothing_rather_than_forget_the_heap() {
    let mut m = MemoryMap::new();
    m.add(0, 1 << 30, RegionKind::Ram, "ram");
    for i in 0..crate::memmap::MAX_REGIONS as u64 - 2 {
        m.add(i * 0x1000, 0x1000, RegionKind::Reserved, "x");
    }
    assert_eq!(m.dropped, 0);
    // One more entry (the heap) fits, the second (the pool) does not.
    assert!(place_pool(&m, (0x100_0000, 0x100_0000), 1 << 20, PAGE_4K).is_some());
    assert_eq!(
        place_secret(
            &m,
            (0x100_0000, 0x100_0000),
            (0x3000_0000, 1 << 20),
            1 << 20
        ),
        None
    );
}

#[test]
fn the_secret_region_is_private_free_ram_and_bounded() {
    let m = q35();
    let heap = (0x2a_4000, 64 << 20);
    let pool = (0x1fc0_0000, 4 << 20);
    let (base, size) = place_secret(&m, heap, pool, SECRET_MAX).unwrap();
    assert_eq!(size, SECRET_MAX);
    assert_eq!(base % 4096, 0);
    assert_eq!(base, heap.0 + heap.1, "the start of the largest free piece");
    for taken in [heap, pool, (0, 0x10_0000), (0x20_0000, 0xa_4000)] {
        assert!(!overlaps((base, size), taken), "{taken:x?}");
    }
    // Less free RAM than the maximum: all of it, page-aligned.
    let mut m = MemoryMap::new();
    m.add(0x10_0000, 0x10_0000 + 0x1800, RegionKind::Ram, "ram");
    assert_eq!(
        place_secret(&m, (0x10_0000, 0x8_0000), (0x18_0000, 0x4_0000), SECRET_MAX),
        Some((0x1c_0000, 0x4_0000 + 0x1000))
    );
    // Nothing free: nothing.
    assert_eq!(
        place_secret(&m, (0x10_0000, 0x10_1800), (0, 0), SECRET_MAX),
        None
    );
}

#[test]
fn static_platforms() {
    let p = static_platform(Choice::None).unwrap();
    assert_eq!((p.kind(), p.is_secure()), (PlatformKind::None, false));
    let p = static_platform(Choice::Emulated).unwrap();
    assert_eq!((p.kind(), p.is_secure()), (PlatformKind::Emulated, true));
    assert!(p.granularity() == PAGE_2M || p.granularity() == PAGE_64K);
    for real in [
        Choice::Pef { enter: true },
        Choice::Pef { enter: false },
        Choice::Sev(crate::platform::decide::SevLevel::SevSnp),
        Choice::Tdx,
    ] {
        assert!(
            static_platform(real).is_none(),
            "{real:?}: the arch builds it"
        );
    }
}

fn json(line: &str) -> serde_json::Value {
    let body = line.strip_prefix("@sg ").expect("record prefix");
    serde_json::from_str(body.trim_end()).expect("one JSON object")
}

/// The `secure` record of every mode on a machine without secure hardware (all of them here):
/// what the boot flow writes before any device is touched.
#[test]
fn the_secure_record_of_every_mode() {
    let nothing = Facts::default();
    for (mode, platform, secure, action) in [
        (SecureMode::Off, "none", false, "proceed"),
        (SecureMode::Auto, "none", false, "proceed"),
        (SecureMode::Emulate, "emulated", true, "proceed"),
        (SecureMode::On, "none", false, "reject"),
    ] {
        let d = decide(mode, &nothing);
        let p = if d.rejected() {
            &NONE_PLATFORM as &dyn Platform
        } else {
            static_platform(d.choice).expect("no hardware backend without hardware")
        };
        let mut out = String::new();
        assert!(
            secure_record(
                Record::new(&mut out, "secure"),
                &d,
                0,
                p,
                LegacyPolicy::Refuse
            )
            .end()
        );
        let v = json(&out);
        assert_eq!(v["event"], "secure");
        assert_eq!(v["mode"], mode.as_str());
        assert_eq!(v["platform"], platform, "{mode:?}");
        assert_eq!(v["secure"], secure, "{mode:?}");
        assert_eq!(v["action"], action, "{mode:?}");
        let reasons = v["reasons"].as_array().unwrap();
        assert!(!reasons.is_empty());
        assert!(reasons.iter().all(|r| r.is_string()));
        assert_eq!(
            v["facts"],
            serde_json::json!({"ultravisor": false, "msr_s": false, "sev_status": "0x0", "tdx": false})
        );
        assert_eq!(v["legacy_devices"], "refuse");
        assert_eq!(v["granularity"], p.granularity());
    }
    // An already-secure machine asked for emulation: rejected, and the record says why.
    let snp = Facts::default().with_sev_status(7);
    let d = decide(SecureMode::Emulate, &snp);
    let mut out = String::new();
    secure_record(
        Record::new(&mut out, "secure"),
        &d,
        0x7,
        &NONE_PLATFORM,
        LegacyPolicy::Bounce,
    )
    .end();
    let v = json(&out);
    assert_eq!(v["action"], "reject");
    assert_eq!(v["secure"], false);
    assert_eq!(v["facts"]["sev_status"], "0x7");
    assert_eq!(v["legacy_devices"], "bounce");
    assert!(
        v["reasons"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .as_str()
            .unwrap()
            .contains("already private")
    );
}

#[test]
fn pool_records() {
    let ram = Ram::new(1 << 20);
    let platform = Emulated::new(PAGE_64K);
    let b = ram.bounce(&platform);
    b.set_debug_skip_zeroing(true);
    let mut out = String::new();
    assert!(swiotlb_record(Record::new(&mut out, "swiotlb"), &b).end());
    let v = json(&out);
    let r = b.region();
    assert_eq!(v["base"], alloc::format!("{:#x}", r.phys));
    assert_eq!(v["device_base"], alloc::format!("{:#x}", r.device));
    assert_eq!(v["size"], r.size);
    assert_eq!(v["slot_size"], 2048);
    assert_eq!(v["slots"], r.size / 2048);
    assert_eq!(v["max_mapping"], 256 << 10);
    assert_eq!(
        v["shares"],
        serde_json::json!([{"op": "share", "base": alloc::format!("{:#x}", r.phys), "size": r.size, "result": "ok"}])
    );
    assert_eq!(v["leak"], true);

    let mut out = String::new();
    assert!(secret_record(Record::new(&mut out, "secret"), &[(0x42_0000, 8192)]).end());
    assert_eq!(
        json(&out)["regions"],
        serde_json::json!([{"base": "0x420000", "size": 8192}])
    );

    let mut out = String::new();
    assert!(
        swiotlb_stats_record(
            Record::new(&mut out, "swiotlb_stats"),
            &b.bounce_stats(),
            4096
        )
        .end()
    );
    let v = json(&out);
    for k in [
        "maps",
        "unmaps",
        "bounced_to_device",
        "bounced_from_device",
        "high_water_bytes",
        "high_water_slots",
        "exhausted",
        "zeroed_bytes",
        "unzeroed_releases",
        "live_bytes",
    ] {
        assert!(v[k].is_u64(), "{k}: {v}");
    }
    assert_eq!(v["probe_bytes"], 4096);
}

/// The probe leaves nothing behind with zeroing, and its marks (and only its) without.
#[test]
fn the_release_probe_shows_whether_slots_are_zeroed() {
    for leak in [false, true] {
        let ram = Ram::new(256 << 10);
        let platform = Emulated::new(PAGE_4K);
        let b = ram.bounce(&platform);
        b.set_debug_skip_zeroing(leak);
        assert_eq!(release_probe(&b), Ok(PROBE_BYTES));
        let s = b.bounce_stats();
        assert_eq!((s.dma.maps, s.dma.unmaps, s.pool.live_bytes), (1, 1, 0));
        let dump = ram.dump();
        let marks: Vec<_> = secret::marks(&dump).collect();
        if leak {
            assert_eq!(marks.len(), PROBE_BYTES / secret::RECORD_LEN);
            assert!(marks.iter().all(|m| m.counter >= PROBE_MARKS_FIRST));
            assert_eq!(s.unzeroed_releases, 1);
        } else {
            assert!(marks.is_empty());
            assert!(dump.iter().all(|&x| x == 0), "the pool is all zeros");
        }
    }
}
