//! Device-tree parsing into plain typed structs, and the writer used to flatten one.
//!
//! A device tree comes from the host and is not trusted: [`validate`] walks the whole blob with
//! bounds checks before the `fdt` crate ever sees it, so a truncated, corrupted or hostile blob
//! is an error, never a panic or a hang. Only the accessors of `fdt` that cannot panic are used.
//!
//! - `check`: the header, the memory reserve map and every token of the structure block
//!   ([`validate`]), plus a NOP-free copy of the blob for the `fdt` crate when needed.
//! - `extract`: walks the validated tree with `fdt` and decodes the properties the guest uses
//!   ([`parse`]); a malformed value in one of those is an error too, never a guess.
//!
//! Limits: at most [`MAX_DEPTH`] nested nodes, [`MAX_NODES`] nodes, node names of at most
//! [`MAX_NAME_LEN`] bytes, paths of at most [`MAX_PATH_LEN`] bytes and [`MAX_DEVICES`] entries
//! in each device list. Real trees are far below all of them (QEMU's pseries tree: 17 nodes,
//! 3 levels); the limits bound the work and the memory a hostile tree can cost.
//!
//! Fixtures (QEMU's own trees) and how they were made: `src/devtree/testdata/README.md`.

mod check;
mod extract;
pub mod writer;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_hostile;

pub use check::{MAX_DEPTH, MAX_NAME_LEN, MAX_NODES, MAX_PATH_LEN};
pub use extract::MAX_DEVICES;

use crate::dma::tce::{DdwTokens, TceWindow};
use alloc::string::String;
use alloc::vec::Vec;

/// Why a device tree was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DtError {
    /// Fewer bytes than a header, or than the header's `totalsize`.
    Truncated {
        need: usize,
        have: usize,
    },
    BadMagic(u32),
    /// `version` below 16, or `last_comp_version` above 17 (the offending value).
    UnsupportedVersion(u32),
    /// An offset or size in the header points outside the blob or overlaps another block.
    BadHeader(&'static str),
    /// The structure block is malformed at byte `offset` (relative to the blob), or a node
    /// there carries a malformed value the guest uses (`offset` is then the node's
    /// FDT_BEGIN_NODE token), or a limit was exceeded there.
    BadStructure {
        offset: usize,
        why: &'static str,
    },
}

/// A virtio-mmio transport described by the tree (`compatible = "virtio,mmio"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtioMmioNode {
    pub path: String,
    pub base: u64,
    pub size: u64,
    /// First interrupt specifier cell, when present.
    pub irq: Option<u32>,
}

/// A PCI host bridge (`device_type = "pci"` on a node whose parent is not a PCI bus).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciHostNode {
    pub path: String,
    pub compatible: Option<String>,
    /// `bus-range`, when present.
    pub bus_range: Option<(u32, u32)>,
    /// pseries: `ibm,dma-window` present (a TCE IOMMU sits in front of this PHB).
    pub has_dma_window: bool,
    /// pseries: the default TCE window `ibm,dma-window` describes, or why it cannot be used
    /// (the tree still parses: only devices behind this PHB that need its IOMMU fail).
    pub tce_window: Option<Result<TceWindow, &'static str>>,
    /// pseries: the DDW RTAS tokens (`ibm,ddw-applicable`, `ibm,ddw-extensions`).
    pub ddw: Option<Result<DdwTokens, &'static str>>,
}

/// A PCI function, from a device-tree node under a host bridge or from enumeration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciFunction {
    /// Device-tree path, or `pci@bus:dev.fn` for an enumerated function.
    pub path: String,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
    pub vendor_id: u16,
    pub device_id: u16,
    /// Class code (base, sub, prog-if) as 0xBBSSPP.
    pub class: u32,
}

impl PciFunction {
    /// Red Hat/Qumranet vendor id with a virtio device id (0x1000..=0x107f).
    pub fn is_virtio(&self) -> bool {
        self.vendor_id == 0x1af4 && (0x1000..=0x107f).contains(&self.device_id)
    }
}

/// The hypervisor virtual terminal (pseries `vty`, `compatible = "hvterm1"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HvTerm {
    pub path: String,
    /// Terminal number for H_PUT_TERM_CHAR (its `reg`).
    pub termno: u32,
}

/// RTAS services the guest uses (tokens from `/rtas`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RtasTokens {
    pub power_off: Option<u32>,
    pub read_pci_config: Option<u32>,
    pub write_pci_config: Option<u32>,
    pub ibm_read_pci_config: Option<u32>,
    pub ibm_write_pci_config: Option<u32>,
}

/// Everything the guest takes from a device tree, as plain data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceTree {
    /// Nodes in the tree (including the root).
    pub nodes: u32,
    /// Size of the blob in bytes.
    pub total_size: u32,
    /// Root `model`, or else the first root `compatible`.
    pub model: Option<String>,
    /// `reg` of every `device_type = "memory"` node: (base, size).
    pub memory: Vec<(u64, u64)>,
    /// Memory reserve map entries and `/reserved-memory` children: (base, size).
    pub reserved: Vec<(u64, u64)>,
    /// CPU nodes (`device_type = "cpu"`); threads per core are counted from
    /// `ibm,ppc-interrupt-server#s` where present.
    pub cpus: u32,
    /// `/cpus/*/timebase-frequency` of the first CPU (or of `/cpus`), 32 or 64 bits.
    pub timebase_hz: Option<u64>,
    pub bootargs: Option<Vec<u8>>,
    /// `/chosen/stdout-path` (or `linux,stdout-path`), options after ':' removed; a leading
    /// alias is replaced by its `/aliases` path (kept as given when there is none).
    pub stdout_path: Option<String>,
    pub hvterm: Option<HvTerm>,
    pub rtas: Option<RtasTokens>,
    /// pseries: `/ibm,ultravisor` or a node compatible with "ibm,ultravisor" exists.
    pub ultravisor: bool,
    pub virtio_mmio: Vec<VirtioMmioNode>,
    pub pci_hosts: Vec<PciHostNode>,
    pub pci_functions: Vec<PciFunction>,
}

/// Checks a blob completely: header, reserve map, every token of the structure block, every
/// property name offset. Returns the number of nodes. Never panics, never loops forever.
pub fn validate(blob: &[u8]) -> Result<u32, DtError> {
    check::check(blob).map(|layout| layout.nodes)
}

/// Validates and parses a blob into a [`DeviceTree`].
pub fn parse(blob: &[u8]) -> Result<DeviceTree, DtError> {
    let layout = check::check(blob)?;
    let mut tree = if layout.needs_copy() {
        // NOP tokens (or a v16 header) are legal but the `fdt` crate mishandles them (see
        // `check::Layout::needs_copy`): it gets an equivalent NOP-free v17 copy instead.
        let canon = check::canonical(blob, &layout)?;
        extract::extract(&canon.blob, &|off| canon.original_offset(off))?
    } else {
        extract::extract(blob.get(..layout.total).unwrap_or(blob), &|off| off)?
    };
    tree.nodes = layout.nodes;
    // `check` accepted totalsize, a header field: it fits in a u32.
    tree.total_size = layout.total as u32;
    // The reserve map first, then the /reserved-memory children the walk found.
    let mut reserved = check::reservations(blob, &layout);
    reserved.append(&mut tree.reserved);
    tree.reserved = reserved;
    Ok(tree)
}
