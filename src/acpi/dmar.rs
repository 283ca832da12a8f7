//! The DMAR table (Intel VT-d specification, chapter 8 "BIOS Considerations"): where the
//! DMA-remapping units (DRHD) are, which PCI devices each one translates, and the memory the
//! firmware says devices keep using (RMRR, which must then stay identity-mapped for them).
//!
//! The table comes from the host and is parsed defensively: every structure length is checked
//! against what is left of the table, a length that cannot hold its own header ends the parse
//! with an error (never a loop), and anything unknown is skipped by its length.
//!
//! What QEMU 10 builds on q35 with `-device intel-iommu` (hw/i386/acpi-build.c): one DRHD at
//! 0xfed90000 on segment 0 *without* `INCLUDE_PCI_ALL`, with an IOAPIC scope and one scope per
//! device on each root bus that does not bypass the IOMMU (type 1 for an endpoint, type 2 for a
//! bridge and everything behind it), and an ATSR when device IOTLBs are on. No RMRR.

use alloc::vec::Vec;

/// Why the DMAR could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmarError {
    /// Shorter than the fixed part (48 bytes).
    Truncated,
    /// A remapping structure whose length is below its header or beyond the table.
    BadStructure { offset: usize, length: usize },
    /// A device scope whose length is below its header, odd, or beyond its structure.
    BadScope { offset: usize, length: usize },
}

impl core::fmt::Display for DmarError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            DmarError::Truncated => f.write_str("DMAR shorter than its 48-byte header"),
            DmarError::BadStructure { offset, length } => {
                write!(f, "DMAR structure at {offset} has bad length {length}")
            }
            DmarError::BadScope { offset, length } => {
                write!(f, "DMAR device scope at {offset} has bad length {length}")
            }
        }
    }
}

/// Device scope types (VT-d 8.3.1).
pub mod scope {
    pub const ENDPOINT: u8 = 1;
    pub const BRIDGE: u8 = 2;
    pub const IOAPIC: u8 = 3;
    pub const HPET: u8 = 4;
    pub const NAMESPACE: u8 = 5;
}

/// One device scope: a PCI path from `start_bus`, or a platform device (IOAPIC, HPET).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceScope {
    pub kind: u8,
    pub enumeration_id: u8,
    pub start_bus: u8,
    /// (device, function) hops: every hop but the last is a PCI-to-PCI bridge.
    pub path: Vec<(u8, u8)>,
}

/// A DMA-remapping hardware unit (DRHD).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drhd {
    /// Bit 0 `INCLUDE_PCI_ALL`: every PCI device of the segment not claimed by another unit.
    pub flags: u8,
    pub segment: u16,
    /// Physical address of the unit's registers.
    pub register_base: u64,
    pub scopes: Vec<DeviceScope>,
}

/// A reserved memory region (RMRR): DMA the firmware says `scopes` keep doing to
/// `[base, limit]`, which must stay mapped 1:1 for them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rmrr {
    pub segment: u16,
    pub base: u64,
    /// Inclusive.
    pub limit: u64,
    pub scopes: Vec<DeviceScope>,
}

/// The parsed table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dmar {
    /// The DMA physical address width minus one, as the table says it.
    pub host_address_width: u8,
    /// Bit 0 INTR_REMAP, bit 1 X2APIC_OPT_OUT, bit 2 DMA_CTRL_PLATFORM_OPT_IN.
    pub flags: u8,
    pub units: Vec<Drhd>,
    pub rmrrs: Vec<Rmrr>,
    /// Structures of other types (ATSR, RHSA, ANDD, ...), skipped.
    pub other: u32,
}

/// How a device scope's bridges lead on: the (secondary, subordinate) bus range behind the
/// bridge at (bus, device, function), `None` when there is no bridge there. On a live machine
/// this reads configuration space.
pub trait BusTopology {
    fn bridge_buses(&mut self, bus: u8, device: u8, function: u8) -> Option<(u8, u8)>;
}

/// Flat topology: no bridges anywhere (every multi-hop path leads nowhere).
impl BusTopology for () {
    fn bridge_buses(&mut self, _: u8, _: u8, _: u8) -> Option<(u8, u8)> {
        None
    }
}

pub const INCLUDE_PCI_ALL: u8 = 1;

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(v)
}

/// The device scopes in `bytes` (the tail of a structure that starts at table offset `base`).
fn parse_scopes(bytes: &[u8], base: usize) -> Result<Vec<DeviceScope>, DmarError> {
    let mut scopes = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let length = rest.get(1).copied().map_or(0, usize::from);
        if rest.len() < 6 || length < 6 || length > rest.len() || (length - 6) % 2 != 0 {
            return Err(DmarError::BadScope {
                offset: base + at,
                length,
            });
        }
        let path = rest[6..length]
            .chunks_exact(2)
            .map(|p| (p[0], p[1]))
            .collect();
        scopes.push(DeviceScope {
            kind: rest[0],
            enumeration_id: rest[4],
            start_bus: rest[5],
            path,
        });
        at += length;
    }
    Ok(scopes)
}

/// Parses a whole DMAR (header included, as [`crate::acpi::find_table`] returns it; the
/// checksum was checked there).
pub fn parse(table: &[u8]) -> Result<Dmar, DmarError> {
    if table.len() < 48 {
        return Err(DmarError::Truncated);
    }
    let mut dmar = Dmar {
        host_address_width: table[36],
        flags: table[37],
        ..Dmar::default()
    };
    let mut at = 48;
    while at < table.len() {
        let rest = &table[at..];
        let length = if rest.len() >= 4 {
            usize::from(u16_at(rest, 2))
        } else {
            0
        };
        if length < 4 || length > rest.len() {
            return Err(DmarError::BadStructure { offset: at, length });
        }
        let s = &rest[..length];
        match u16_at(s, 0) {
            0 => {
                if length < 16 {
                    return Err(DmarError::BadStructure { offset: at, length });
                }
                dmar.units.push(Drhd {
                    flags: s[4],
                    segment: u16_at(s, 6),
                    register_base: u64_at(s, 8),
                    scopes: parse_scopes(&s[16..], at + 16)?,
                });
            }
            1 => {
                if length < 24 {
                    return Err(DmarError::BadStructure { offset: at, length });
                }
                dmar.rmrrs.push(Rmrr {
                    segment: u16_at(s, 6),
                    base: u64_at(s, 8),
                    limit: u64_at(s, 16),
                    scopes: parse_scopes(&s[24..], at + 24)?,
                });
            }
            _ => dmar.other += 1,
        }
        at += length;
    }
    Ok(dmar)
}

impl DeviceScope {
    /// Whether the PCI function (bus, device, function) is in this scope: the endpoint itself,
    /// or (bridge scope) the bridge or anything on the buses behind it. Paths through bridges
    /// are followed with `topology`; a path that leads nowhere covers nothing.
    pub fn covers(
        &self,
        topology: &mut dyn BusTopology,
        bus: u8,
        device: u8,
        function: u8,
    ) -> bool {
        if self.kind != scope::ENDPOINT && self.kind != scope::BRIDGE {
            return false;
        }
        let Some((&(last_dev, last_fn), hops)) = self.path.split_last() else {
            return false;
        };
        let mut b = self.start_bus;
        for &(d, f) in hops {
            match topology.bridge_buses(b, d, f) {
                Some((secondary, _)) => b = secondary,
                None => return false,
            }
        }
        if (b, last_dev, last_fn) == (bus, device, function) {
            return true;
        }
        if self.kind == scope::BRIDGE
            && let Some((secondary, subordinate)) = topology.bridge_buses(b, last_dev, last_fn)
        {
            return (secondary..=subordinate).contains(&bus);
        }
        false
    }
}

impl Dmar {
    /// The unit that translates PCI function (bus, device, function) on segment 0: one whose
    /// scopes name it, else one with `INCLUDE_PCI_ALL` (VT-d 8.3: explicit scopes win).
    pub fn unit_for(
        &self,
        topology: &mut dyn BusTopology,
        bus: u8,
        device: u8,
        function: u8,
    ) -> Option<usize> {
        let on_segment = |u: &&Drhd| u.segment == 0;
        let explicit = self
            .units
            .iter()
            .enumerate()
            .filter(|(_, u)| on_segment(u))
            .find(|(_, u)| {
                u.scopes
                    .iter()
                    .any(|s| s.covers(topology, bus, device, function))
            });
        explicit
            .or_else(|| {
                self.units
                    .iter()
                    .enumerate()
                    .filter(|(_, u)| on_segment(u))
                    .find(|(_, u)| u.flags & INCLUDE_PCI_ALL != 0)
            })
            .map(|(i, _)| i)
    }

    /// The RMRR ranges (base, inclusive limit) that name PCI function (bus, device, function).
    pub fn rmrrs_for(
        &self,
        topology: &mut dyn BusTopology,
        bus: u8,
        device: u8,
        function: u8,
    ) -> Vec<(u64, u64)> {
        self.rmrrs
            .iter()
            .filter(|r| r.segment == 0)
            .filter(|r| {
                r.scopes
                    .iter()
                    .any(|s| s.covers(topology, bus, device, function))
            })
            .map(|r| (r.base, r.limit))
            .collect()
    }
}

#[cfg(test)]
mod tests;
