//! The VIOT table (ACPI 6.5, 5.2.32 "Virtual I/O Translation Table"): which virtio-iommu
//! translates which endpoints, and the endpoint ID each PCI function has on it.
//!
//! QEMU 10 builds it on q35 and pc with `-device virtio-iommu-pci` (hw/acpi/viot.c): one
//! virtio-pci IOMMU node (type 3, at offset 48) and one PCI range node (type 1) per root bus
//! range that does not bypass the IOMMU, covering BDFs `bus:00.0` to `max_bus:1f.7` with
//! endpoint IDs equal to the BDF. The range includes the virtio-iommu's own function, which
//! the guest never attaches (its own DMA does not go through itself).
//!
//! Parsed defensively like [`super::dmar`]: a node whose length cannot hold its header, or
//! that runs past the table, ends the parse with an error.

use alloc::vec::Vec;

/// Why the VIOT could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViotError {
    /// Shorter than the fixed part (48 bytes).
    Truncated,
    /// `node_offset` points before the nodes or beyond the table.
    BadNodeOffset { offset: usize },
    /// A node whose length is below its type's size or beyond the table.
    BadNode { offset: usize, length: usize },
}

impl core::fmt::Display for ViotError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            ViotError::Truncated => f.write_str("VIOT shorter than its 48-byte header"),
            ViotError::BadNodeOffset { offset } => write!(f, "VIOT node offset {offset} is bad"),
            ViotError::BadNode { offset, length } => {
                write!(f, "VIOT node at {offset} has bad length {length}")
            }
        }
    }
}

/// Where a virtio-iommu is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IommuNode {
    /// A virtio-pci device: segment and BDF (`bus << 8 | devfn`).
    Pci { segment: u16, bdf: u16 },
    /// A virtio-mmio device at this base address.
    Mmio { base: u64 },
}

/// Endpoints on PCI that an IOMMU node translates: BDFs `bdf_start..=bdf_end` on segments
/// `segment_start..=segment_end` get endpoint IDs from `endpoint_start` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciRange {
    pub endpoint_start: u32,
    pub segment_start: u16,
    pub segment_end: u16,
    pub bdf_start: u16,
    pub bdf_end: u16,
    /// Table offset of the IOMMU node.
    pub output_node: u16,
}

/// The parsed table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Viot {
    /// Every IOMMU node with its table offset (what `output_node` refers to).
    pub iommus: Vec<(u16, IommuNode)>,
    pub pci_ranges: Vec<PciRange>,
    /// Single MMIO endpoints and unknown nodes, skipped.
    pub other: u32,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Parses a whole VIOT (header included).
pub fn parse(table: &[u8]) -> Result<Viot, ViotError> {
    if table.len() < 48 {
        return Err(ViotError::Truncated);
    }
    let count = u16_at(table, 36);
    let first = usize::from(u16_at(table, 38));
    if first < 48 || (count > 0 && first >= table.len()) {
        return Err(ViotError::BadNodeOffset { offset: first });
    }
    let mut viot = Viot::default();
    let mut at = first;
    for _ in 0..count {
        let rest = table.get(at..).unwrap_or(&[]);
        let length = if rest.len() >= 4 {
            usize::from(u16_at(rest, 2))
        } else {
            0
        };
        let bad = ViotError::BadNode { offset: at, length };
        if length < 4 || length > rest.len() {
            return Err(bad);
        }
        let n = &rest[..length];
        let need = |min: usize| if length < min { Err(bad) } else { Ok(()) };
        // Offsets fit in u16: the table length is checked against `at` above, and a table
        // larger than 64 KiB cannot name its nodes anyway.
        let offset = u16::try_from(at).map_err(|_| bad)?;
        match n[0] {
            1 => {
                need(24)?;
                viot.pci_ranges.push(PciRange {
                    endpoint_start: u32_at(n, 4),
                    segment_start: u16_at(n, 8),
                    segment_end: u16_at(n, 10),
                    bdf_start: u16_at(n, 12),
                    bdf_end: u16_at(n, 14),
                    output_node: u16_at(n, 16),
                });
            }
            3 => {
                need(16)?;
                viot.iommus.push((
                    offset,
                    IommuNode::Pci {
                        segment: u16_at(n, 4),
                        bdf: u16_at(n, 6),
                    },
                ));
            }
            4 => {
                need(16)?;
                let mut b = [0u8; 8];
                b.copy_from_slice(&n[8..16]);
                viot.iommus.push((
                    offset,
                    IommuNode::Mmio {
                        base: u64::from_le_bytes(b),
                    },
                ));
            }
            _ => viot.other += 1,
        }
        at += length;
    }
    Ok(viot)
}

impl Viot {
    /// The table offset of the virtio-pci IOMMU at `bdf` on segment 0.
    pub fn pci_iommu(&self, bdf: u16) -> Option<u16> {
        self.iommus
            .iter()
            .find_map(|&(o, n)| (n == IommuNode::Pci { segment: 0, bdf }).then_some(o))
    }

    /// The endpoint ID of PCI function `bdf` (segment 0) on the IOMMU node at `iommu`, if a
    /// range of that IOMMU covers it.
    pub fn endpoint_id(&self, iommu: u16, bdf: u16) -> Option<u32> {
        self.pci_ranges
            .iter()
            .filter(|r| r.output_node == iommu && r.segment_start == 0)
            .find(|r| (r.bdf_start..=r.bdf_end).contains(&bdf))
            .and_then(|r| r.endpoint_start.checked_add(u32::from(bdf - r.bdf_start)))
    }
}

#[cfg(test)]
mod tests;
