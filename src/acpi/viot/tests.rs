use super::*;

fn table(body: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 36];
    t[..4].copy_from_slice(b"VIOT");
    t.extend_from_slice(body);
    let len = t.len() as u32;
    t[4..8].copy_from_slice(&len.to_le_bytes());
    t
}

fn range(ep: u32, bdf_start: u16, bdf_end: u16, out: u16) -> Vec<u8> {
    let mut n = vec![1u8, 0, 24, 0];
    n.extend_from_slice(&ep.to_le_bytes());
    n.extend_from_slice(&[0, 0, 0, 0]);
    n.extend_from_slice(&bdf_start.to_le_bytes());
    n.extend_from_slice(&bdf_end.to_le_bytes());
    n.extend_from_slice(&out.to_le_bytes());
    n.extend_from_slice(&[0; 6]);
    n
}

/// QEMU 10 on q35 with virtio-iommu-pci at 00:01.0 and one root bus 0..=0.
fn qemu_like() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&2u16.to_le_bytes());
    body.extend_from_slice(&48u16.to_le_bytes());
    body.extend_from_slice(&[0; 8]);
    body.extend_from_slice(&[3, 0, 16, 0, 0, 0, 0x08, 0x00]);
    body.extend_from_slice(&[0; 8]);
    body.extend(range(0, 0x0000, 0x00ff, 48));
    table(&body)
}

#[test]
fn qemu_table() {
    let v = parse(&qemu_like()).unwrap();
    assert_eq!(v.iommus, vec![(48, IommuNode::Pci { segment: 0, bdf: 8 })]);
    assert_eq!(v.pci_ranges.len(), 1);
    let node = v.pci_iommu(0x0008).unwrap();
    assert_eq!(v.endpoint_id(node, 0x0010), Some(0x10));
    assert_eq!(v.endpoint_id(node, 0x00ff), Some(0xff));
    assert_eq!(
        v.endpoint_id(node, 0x0100),
        None,
        "bus 1 is not in the range"
    );
    assert_eq!(v.endpoint_id(99, 0x0010), None, "another node");
    assert_eq!(v.pci_iommu(0x0010), None);
}

#[test]
fn offset_endpoint_ids() {
    let mut body = Vec::new();
    body.extend_from_slice(&2u16.to_le_bytes());
    body.extend_from_slice(&48u16.to_le_bytes());
    body.extend_from_slice(&[0; 8]);
    body.extend(range(0x1000, 0x0100, 0x01ff, 72));
    body.extend_from_slice(&[3, 0, 16, 0, 0, 0, 0x10, 0x00]);
    body.extend_from_slice(&[0; 8]);
    let v = parse(&table(&body)).unwrap();
    assert_eq!(v.pci_iommu(0x10), Some(72));
    assert_eq!(v.endpoint_id(72, 0x0105), Some(0x1005));
    assert_eq!(v.endpoint_id(72, 0x0005), None);
    // u32 overflow of endpoint_start + offset is no endpoint, not a panic.
    let mut body2 = body.clone();
    body2[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    let v = parse(&table(&body2)).unwrap();
    assert_eq!(v.endpoint_id(72, 0x0105), None);
}

#[test]
fn truncated_and_bad_lengths_are_errors() {
    let t = qemu_like();
    for n in 0..t.len() {
        let r = parse(&t[..n]);
        if n < 48 {
            assert_eq!(r, Err(ViotError::Truncated), "{n}");
        } else {
            assert!(r.is_err(), "cut at {n}: {r:?}");
        }
    }
    let mut z = t.clone();
    z[48 + 2] = 0; // a node of length 0
    assert!(matches!(
        parse(&z),
        Err(ViotError::BadNode {
            offset: 48,
            length: 0
        })
    ));
    let mut o = t.clone();
    o[38] = 10; // node offset inside the header
    assert!(matches!(
        parse(&o),
        Err(ViotError::BadNodeOffset { offset: 10 })
    ));
    let mut short = t.clone();
    short[64 + 2] = 8; // a PCI range node of 8 bytes
    assert!(matches!(parse(&short), Err(ViotError::BadNode { .. })));
    // No nodes at all is a valid, empty table.
    let mut empty = t[..48].to_vec();
    empty[36] = 0;
    assert_eq!(parse(&empty).unwrap(), Viot::default());
}

#[test]
fn mutations_never_panic() {
    crate::acpi::for_each_mutation(&qemu_like(), 0x9e37_79b9_7f4a_7c15, 20_000, |m, _| {
        if let Ok(v) = parse(m) {
            for &(o, _) in &v.iommus {
                let _ = v.endpoint_id(o, 0x10);
            }
        }
    });
}
