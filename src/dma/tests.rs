use super::*;

fn ptr_addr(p: *const u8) -> u64 {
    p as usize as u64
}

#[test]
fn direct_map_returns_the_pointer_and_counts() {
    let dma = Direct::new();
    let mut buf = [7u8; 100];
    let expected = ptr_addr(buf.as_ptr());
    // SAFETY: `buf` outlives the mapping and is not touched until unmap.
    let m = unsafe {
        dma.map(
            NonNull::from(&mut buf[..]),
            Direction::FromDevice,
            &DmaConstraints::NONE,
        )
    }
    .unwrap();
    assert_eq!(m.device_addr().as_u64(), expected);
    assert_eq!(m.len(), 100);
    assert_eq!(m.direction(), Direction::FromDevice);
    // SAFETY: no device ever saw it.
    unsafe { dma.unmap(m) }.unwrap();
    let s = dma.stats();
    assert_eq!(
        (s.maps, s.unmaps, s.mapped_bytes, s.map_failures),
        (1, 1, 100, 0)
    );
    assert_eq!(dma.name(), "direct");
}

#[test]
fn direct_alloc_shared_is_zeroed_aligned_and_freed() {
    let dma = Direct::new();
    for &(size, align) in &[(1usize, 1usize), (6, 2), (100, 16), (5000, 4096)] {
        let r = dma
            .alloc_shared(size, align, &DmaConstraints::NONE)
            .unwrap();
        assert_eq!(r.len(), size);
        assert_eq!(r.device_addr().as_u64() % align as u64, 0);
        assert_eq!(r.device_addr().as_u64(), ptr_addr(r.cpu_ptr().as_ptr()));
        assert!((0..size).all(|i| r.read_u8(i) == 0));
        // SAFETY: no device ever saw it.
        unsafe { dma.free_shared(r) }.unwrap();
    }
    let s = dma.stats();
    assert_eq!((s.shared_allocs, s.shared_frees, s.shared_bytes), (4, 4, 0));
}

#[test]
fn shared_region_accessors_are_little_endian_and_bounded() {
    let dma = Direct::new();
    let r = dma.alloc_shared(32, 8, &DmaConstraints::NONE).unwrap();
    r.write_u64(8, 0x0102_0304_0506_0708);
    assert_eq!(r.read_u8(8), 0x08);
    assert_eq!(r.read_u16(8), 0x0708);
    assert_eq!(r.read_u32(12), 0x0102_0304);
    r.write_bytes(20, b"abc");
    let mut out = [0u8; 3];
    r.read_bytes(20, &mut out);
    assert_eq!(&out, b"abc");
    r.fill(0, 32, 0xff);
    assert_eq!(r.read_u64(24), u64::MAX);
    assert_eq!(r.device_addr_at(32).as_u64(), r.device_addr().as_u64() + 32);
    let outside = std::panic::catch_unwind(|| r.read_u32(30));
    assert!(outside.is_err(), "an access past the end must be refused");
    let misaligned = std::panic::catch_unwind(|| r.read_u32(2));
    assert!(misaligned.is_err(), "a misaligned access must be refused");
    // SAFETY: no device ever saw it.
    unsafe { dma.free_shared(r) }.unwrap();
}

#[test]
fn constraints_checks() {
    let c = DmaConstraints {
        max_addr: 0xffff,
        align: 16,
        boundary: 0x1000,
        max_len: 0x800,
    };
    let a = |x| DeviceAddr::new(x);
    assert_eq!(c.check(a(0x1000), 0x800), Ok(()));
    assert_eq!(
        c.check(a(0x1000), 0),
        Err(DmaError::InvalidRequest("zero length"))
    );
    assert!(matches!(
        c.check(a(0x1000), 0x801),
        Err(DmaError::TooLarge { .. })
    ));
    assert!(matches!(
        c.check(a(0xfff0), 0x20),
        Err(DmaError::Unreachable { .. })
    ));
    assert!(matches!(
        c.check(a(u64::MAX), 2),
        Err(DmaError::Unreachable { .. })
    ));
    assert!(matches!(
        c.check(a(0x1008), 8),
        Err(DmaError::Misaligned { align: 16, .. })
    ));
    assert!(matches!(
        c.check(a(0x1f00), 0x200),
        Err(DmaError::CrossesBoundary { .. })
    ));
    assert_eq!(c.check(a(0x1f00), 0x100), Ok(()));
    let bad = DmaConstraints {
        align: 3,
        ..DmaConstraints::NONE
    };
    assert!(matches!(bad.validate(), Err(DmaError::InvalidRequest(_))));
    assert_eq!(DmaConstraints::DMA32.max_addr, 0xffff_ffff);
    assert_eq!(DmaConstraints::NONE.with_align(64).align, 64);
}

#[test]
fn direct_refuses_what_the_device_cannot_reach() {
    let dma = Direct::new();
    let mut buf = [0u8; 64];
    let addr = ptr_addr(buf.as_ptr());
    // A limit just below the buffer: Direct cannot move it, so it must say so.
    let c = DmaConstraints {
        max_addr: addr,
        ..DmaConstraints::NONE
    };
    // SAFETY: the mapping fails; nothing is kept.
    let r = unsafe { dma.map(NonNull::from(&mut buf[..]), Direction::ToDevice, &c) };
    assert!(matches!(r, Err(DmaError::Unreachable { .. })));
    // SAFETY: as above.
    let empty = unsafe { dma.map(NonNull::from(&mut buf[..0]), Direction::ToDevice, &c) };
    assert_eq!(empty.unwrap_err(), DmaError::InvalidRequest("zero length"));
    assert_eq!(dma.stats().map_failures, 2);
    assert!(matches!(
        dma.alloc_shared(
            64,
            64,
            &DmaConstraints {
                max_addr: 0,
                ..DmaConstraints::NONE
            }
        ),
        Err(DmaError::Unreachable { .. })
    ));
    assert!(matches!(
        dma.alloc_shared(0, 8, &DmaConstraints::NONE),
        Err(DmaError::InvalidRequest(_))
    ));
    assert!(matches!(
        dma.alloc_shared(8, 3, &DmaConstraints::NONE),
        Err(DmaError::InvalidRequest(_))
    ));
    assert_eq!(dma.stats().shared_failures, 3);
    assert_eq!(dma.stats().shared_bytes, 0);
}

#[test]
fn direct_sync_checks_the_range() {
    let dma = Direct::new();
    let mut buf = [0u8; 16];
    // SAFETY: `buf` outlives the mapping.
    let m = unsafe {
        dma.map(
            NonNull::from(&mut buf[..]),
            Direction::Bidirectional,
            &DmaConstraints::NONE,
        )
    }
    .unwrap();
    // SAFETY: no device ever saw it.
    unsafe {
        assert_eq!(dma.sync_for_cpu(&m, 0, 16), Ok(()));
        assert_eq!(dma.sync_for_device(&m, 8, 8), Ok(()));
        assert!(dma.sync_for_cpu(&m, 8, 9).is_err());
        assert!(dma.sync_for_device(&m, usize::MAX, 2).is_err());
        dma.unmap(m).unwrap();
    }
    assert_eq!(dma.stats().syncs, 2);
}

#[test]
fn errors_name_themselves() {
    assert!(DmaError::Exhausted { requested: 1 }.is_transient());
    assert!(!DmaError::UnknownHandle.is_transient());
    assert_eq!(DmaError::Platform { code: -4 }.as_str(), "platform");
    assert_eq!(
        alloc::format!(
            "{}",
            DmaError::Misaligned {
                addr: DeviceAddr::new(0x11),
                align: 16
            }
        ),
        "0x11 not aligned to 16"
    );
    assert!(Direction::Bidirectional.device_reads() && Direction::Bidirectional.device_writes());
    assert!(!Direction::ToDevice.device_writes());
}
