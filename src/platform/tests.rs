use super::*;

#[test]
fn names_are_stable() {
    let names: alloc::vec::Vec<&str> = PlatformKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(
        names,
        ["none", "emulated", "pef", "sev", "sev-es", "sev-snp", "tdx"]
    );
    assert_eq!(NonePlatform::new().name(), "none");
    assert_eq!(Emulated::new(PAGE_64K).name(), "emulated");
    assert_eq!(PlatformError::NotSecure.as_str(), "not-secure");
}

#[test]
fn none_is_not_secure_and_records_no_op_shares() {
    let p = NonePlatform::new();
    assert!(!p.is_secure());
    assert_eq!(p.device_addr(0x1234_5000), 0x1234_5000);
    // SAFETY: a no-op platform touches nothing.
    unsafe { p.share(0x10_0000, 0x2000) }.unwrap();
    let c = p.log().counts();
    assert_eq!((c.shares, c.bytes_shared), (1, 0x2000));
}

#[test]
fn emulated_validates_and_records() {
    let p = Emulated::new(PAGE_64K);
    assert!(p.is_secure());
    assert_eq!(p.granularity(), PAGE_64K);
    // SAFETY: the emulated platform only records.
    unsafe {
        p.share(0x100_0000, 0x40_0000).unwrap();
        p.unshare(0x100_0000, 0x1_0000).unwrap();
        assert!(p.share(0x100_8000, 0x1_0000).is_err());
        assert!(p.share(0x100_0000, 0).is_err());
        assert!(p.share(u64::MAX - 0xffff, 0x2_0000).is_err());
    }
    let ev = p.log().events();
    assert_eq!(ev.len(), 5);
    assert_eq!(
        ev[0],
        ShareEvent {
            op: ShareOp::Share,
            phys: 0x100_0000,
            len: 0x40_0000,
            result: Ok(())
        }
    );
    assert_eq!(ev[1].op.as_str(), "unshare");
    assert_eq!(
        ev[2].result,
        Err(PlatformError::BadRange {
            phys: 0x100_8000,
            len: 0x1_0000,
            granularity: PAGE_64K
        })
    );
    let c = p.log().counts();
    assert_eq!(
        (c.shares, c.share_failures, c.unshares, c.unshare_failures),
        (4, 3, 1, 0)
    );
    assert_eq!(p.log().bytes_shared_now(), 0x40_0000 - 0x1_0000);
    // A nonsensical granularity falls back to 4 KiB.
    assert_eq!(Emulated::new(3).granularity(), PAGE_4K);
    assert_eq!(Emulated::new(512).granularity(), PAGE_4K);
    let native = if cfg!(target_arch = "powerpc64") {
        PAGE_64K
    } else if cfg!(target_arch = "x86_64") {
        PAGE_2M
    } else {
        PAGE_4K
    };
    assert_eq!(Emulated::for_this_arch().granularity(), native);
}

#[test]
fn the_log_is_bounded_but_counts_everything() {
    let p = Emulated::new(PAGE_4K);
    for i in 0..(LOG_CAPACITY as u64 + 10) {
        // SAFETY: the emulated platform only records.
        unsafe { p.share(i * PAGE_4K, PAGE_4K) }.unwrap();
    }
    assert_eq!(p.log().events().len(), LOG_CAPACITY);
    assert_eq!(
        p.log().events()[LOG_CAPACITY - 1].phys,
        (LOG_CAPACITY as u64 - 1) * PAGE_4K
    );
    let c = p.log().counts();
    assert_eq!(c.shares, LOG_CAPACITY as u64 + 10);
    assert_eq!(c.events_dropped, 10);
    assert!(alloc::format!("{:?}", p.log()).contains("events"));
}

#[test]
fn share_range_chunks() {
    let r = ShareRange::new(0x20_0000, 0x60_0000, PAGE_2M).unwrap();
    assert_eq!(
        r.chunks(PAGE_2M).collect::<alloc::vec::Vec<_>>(),
        [0x20_0000, 0x40_0000, 0x60_0000]
    );
    assert_eq!(
        (r.phys(), r.len(), r.end(), r.is_empty()),
        (0x20_0000, 0x60_0000, 0x80_0000, false)
    );
    assert!(ShareRange::new(0, 0x1000, 3).is_err());
    // A range whose end does not fit in 64 bits is refused.
    assert!(ShareRange::new(u64::MAX - 0xfff, 0x1000, PAGE_4K).is_err());
    assert!(ShareRange::new(u64::MAX - 0x1fff, 0x1000, PAGE_4K).is_ok());
}

#[test]
fn errors_display() {
    let all = [
        PlatformError::BadRange {
            phys: 1,
            len: 2,
            granularity: 4096,
        },
        PlatformError::NoUltravisor,
        PlatformError::NotSecure,
        PlatformError::Ultravisor {
            call: 0xf130,
            code: -4,
        },
        PlatformError::EsmNotSecure,
        PlatformError::BadCbit { position: 3 },
        PlatformError::PageStateChange {
            gfn: 1,
            response: 2,
        },
        PlatformError::Pvalidate { phys: 1, code: 6 },
        PlatformError::PageTable { phys: 1 },
        PlatformError::TdInfo {
            status: 1,
            gpa_width: 0,
        },
        PlatformError::MapGpa { gpa: 1, status: 1 },
        PlatformError::Accept { gpa: 1, status: 1 },
        PlatformError::Unsupported("x"),
    ];
    let mut names = alloc::collections::BTreeSet::new();
    for e in all {
        assert!(!alloc::format!("{e}").is_empty());
        assert!(names.insert(e.as_str()), "duplicate name {}", e.as_str());
    }
}
