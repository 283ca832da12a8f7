use super::*;

fn header(sig: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 36];
    t[..4].copy_from_slice(sig);
    t.extend_from_slice(body);
    let len = t.len() as u32;
    t[4..8].copy_from_slice(&len.to_le_bytes());
    t
}

fn scope_bytes(kind: u8, bus: u8, path: &[(u8, u8)]) -> Vec<u8> {
    let mut s = vec![kind, (6 + 2 * path.len()) as u8, 0, 0, 0, bus];
    for &(d, f) in path {
        s.extend_from_slice(&[d, f]);
    }
    s
}

fn drhd(flags: u8, base: u64, scopes: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = scopes.concat();
    let mut s = vec![0u8, 0];
    s.extend_from_slice(&((16 + body.len()) as u16).to_le_bytes());
    s.extend_from_slice(&[flags, 0, 0, 0]);
    s.extend_from_slice(&base.to_le_bytes());
    s.extend_from_slice(&body);
    s
}

/// What QEMU 10 builds on q35 with intel-iommu and devices at 00:01.0, 00:02.0 and a bridge at
/// 00:03.0 (plus the host bridge, LPC, SATA and SMBus functions).
fn qemu_like() -> Vec<u8> {
    let mut body = vec![47u8, 0];
    body.extend_from_slice(&[0; 10]);
    body.extend(drhd(
        0,
        0xfed9_0000,
        &[
            scope_bytes(scope::IOAPIC, 0xff, &[(0, 0)]),
            scope_bytes(scope::ENDPOINT, 0, &[(0, 0)]),
            scope_bytes(scope::ENDPOINT, 0, &[(1, 0)]),
            scope_bytes(scope::ENDPOINT, 0, &[(2, 0)]),
            scope_bytes(scope::BRIDGE, 0, &[(3, 0)]),
            scope_bytes(scope::ENDPOINT, 0, &[(0x1f, 0)]),
        ],
    ));
    header(b"DMAR", &body)
}

struct OneBridge;
impl BusTopology for OneBridge {
    fn bridge_buses(&mut self, bus: u8, device: u8, function: u8) -> Option<(u8, u8)> {
        ((bus, device, function) == (0, 3, 0)).then_some((1, 2))
    }
}

#[test]
fn qemu_table() {
    let d = parse(&qemu_like()).unwrap();
    assert_eq!(d.host_address_width, 47);
    assert_eq!(d.units.len(), 1);
    let u = &d.units[0];
    assert_eq!(u.register_base, 0xfed9_0000);
    assert_eq!(u.flags & INCLUDE_PCI_ALL, 0);
    assert_eq!(u.scopes.len(), 6);
    assert_eq!(u.scopes[0].kind, scope::IOAPIC);
    assert_eq!(d.unit_for(&mut OneBridge, 0, 1, 0), Some(0));
    assert_eq!(d.unit_for(&mut OneBridge, 0, 2, 0), Some(0));
    // Not listed: no unit.
    assert_eq!(d.unit_for(&mut OneBridge, 0, 4, 0), None);
    assert_eq!(d.unit_for(&mut OneBridge, 0, 1, 1), None);
    // Behind the bridge, and the bridge itself.
    assert_eq!(d.unit_for(&mut OneBridge, 1, 0, 0), Some(0));
    assert_eq!(d.unit_for(&mut OneBridge, 2, 5, 3), Some(0));
    assert_eq!(d.unit_for(&mut OneBridge, 0, 3, 0), Some(0));
    assert_eq!(d.unit_for(&mut OneBridge, 3, 0, 0), None);
    // Without topology the bridge covers only itself.
    assert_eq!(d.unit_for(&mut (), 1, 0, 0), None);
    assert_eq!(d.unit_for(&mut (), 0, 3, 0), Some(0));
    assert!(d.rmrrs.is_empty());
}

#[test]
fn include_all_and_explicit_scopes() {
    let mut body = vec![38u8, 1];
    body.extend_from_slice(&[0; 10]);
    body.extend(drhd(
        0,
        0x1000,
        &[scope_bytes(scope::ENDPOINT, 0, &[(5, 0)])],
    ));
    body.extend(drhd(INCLUDE_PCI_ALL, 0x2000, &[]));
    // An RMRR for 00:05.0.
    let mut rmrr = vec![1u8, 0];
    let sc = scope_bytes(scope::ENDPOINT, 0, &[(5, 0)]);
    rmrr.extend_from_slice(&((24 + sc.len()) as u16).to_le_bytes());
    rmrr.extend_from_slice(&[0; 4]);
    rmrr.extend_from_slice(&0xe_0000u64.to_le_bytes());
    rmrr.extend_from_slice(&0xf_ffffu64.to_le_bytes());
    rmrr.extend(sc);
    body.extend(rmrr);
    // An ATSR, skipped.
    body.extend_from_slice(&[2, 0, 8, 0, 1, 0, 0, 0]);
    let d = parse(&header(b"DMAR", &body)).unwrap();
    assert_eq!(d.units.len(), 2);
    assert_eq!(d.other, 1);
    assert_eq!(d.unit_for(&mut (), 0, 5, 0), Some(0));
    assert_eq!(d.unit_for(&mut (), 0, 6, 0), Some(1));
    assert_eq!(d.rmrrs_for(&mut (), 0, 5, 0), vec![(0xe_0000, 0xf_ffff)]);
    assert!(d.rmrrs_for(&mut (), 0, 6, 0).is_empty());
}

#[test]
fn multi_hop_paths() {
    let s = DeviceScope {
        kind: scope::ENDPOINT,
        enumeration_id: 0,
        start_bus: 0,
        path: vec![(3, 0), (0, 0)],
    };
    assert!(s.covers(&mut OneBridge, 1, 0, 0));
    assert!(!s.covers(&mut OneBridge, 0, 0, 0));
    assert!(
        !s.covers(&mut (), 1, 0, 0),
        "a hop without a bridge leads nowhere"
    );
    let empty = DeviceScope { path: vec![], ..s };
    assert!(!empty.covers(&mut OneBridge, 0, 0, 0));
}

#[test]
fn truncated_and_bad_lengths_are_errors() {
    let t = qemu_like();
    // Every truncation (with the header's length left as it was: parse looks only at bytes).
    for n in 0..t.len() {
        let r = parse(&t[..n]);
        if n < 48 {
            assert_eq!(r, Err(DmarError::Truncated), "{n}");
        } else if n > 48 {
            assert!(r.is_err(), "cut at {n} must not parse: {r:?}");
        }
    }
    // A zero-length structure would loop forever: it is an error.
    let mut z = t.clone();
    z[48 + 2] = 0;
    z[48 + 3] = 0;
    assert!(matches!(
        parse(&z),
        Err(DmarError::BadStructure {
            offset: 48,
            length: 0
        })
    ));
    // A scope of length 0 and one of odd path length.
    let mut s = t.clone();
    s[48 + 16 + 1] = 0;
    assert!(matches!(parse(&s), Err(DmarError::BadScope { .. })));
    let mut s = t.clone();
    s[48 + 16 + 1] = 7;
    assert!(matches!(parse(&s), Err(DmarError::BadScope { .. })));
}

#[test]
fn mutations_never_panic() {
    crate::acpi::for_each_mutation(&qemu_like(), 0x2545_f491_4f6c_dd1d, 20_000, |m, next| {
        let cut = (next() as usize) % (m.len() + 1);
        if let Ok(d) = parse(&m[..cut.max(48)]) {
            for bus in [0u8, 1, 0xff] {
                let _ = d.unit_for(&mut OneBridge, bus, 1, 0);
                let _ = d.rmrrs_for(&mut OneBridge, bus, 1, 0);
            }
        }
    });
}
