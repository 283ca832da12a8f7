//! Extraction of what the guest needs from a tree `check` accepted, using the `fdt` crate to
//! iterate nodes and properties.
//!
//! # Why the `fdt` calls here cannot panic
//!
//! `fdt` 0.1.5 trusts its input: it has `unwrap`/`expect`/`assert_eq!`/`panic!` and unchecked
//! slicing on malformed blobs. Only these entry points are used, on a blob `check` accepted and
//! without NOP tokens (`parse` hands over a NOP-free copy otherwise):
//!
//! - `Fdt::new`: checks magic and `totalsize <= len` itself, returns a `Result`.
//! - `Fdt::find_node("/")`: reads the first token (FDT_BEGIN_NODE of the root, whose name `check`
//!   required to be empty, NUL-terminated inside the block), then returns the root. Its
//!   `expect("unit name C str")` needs that NUL; its alias fallback is never reached.
//! - `FdtNode::properties()`: `peek_u32().unwrap()` needs a token after the NOP skip (every
//!   property is followed by a token, `check` walked them); `NodeProperty::parse` indexes the
//!   value with the property length (`check`: inside the block), `expect`s the name NUL inside
//!   the strings block and valid UTF-8 (`check`: printable ASCII, terminated in the block).
//! - `FdtNode::children()`: `peek_u32().unwrap()` after the node name and after each property
//!   (a token always follows), `expect("unit name")` and `as_str()` on child names (`check`:
//!   NUL-terminated printable ASCII), and `skip_current_node`, which recurses into each child and
//!   `assert_eq!`s FDT_BEGIN_NODE / FDT_END_NODE around "props, then children": exactly the
//!   grammar `check` enforces (properties before child nodes, balanced nesting, no NOPs left).
//!   Its recursion depth is the subtree depth, at most `MAX_DEPTH`.
//!
//! No other accessor is used: `root()`, `chosen()`, `cpus()`, `memory()` `expect` their node;
//! `Root::model()`, `Compatible::first()`, `Cpu::timebase_frequency()` (`unreachable!()` on a
//! 3-byte value), `CpuIds::first()`, `Memory::regions()`, `cell_sizes()` (`expect` on a short
//! `#address-cells`) and `Chosen::bootargs()` (`value.len() - 1` on an empty value) all panic on
//! data `check` does not look at. Every value is decoded here from the raw property bytes.
//!
//! `children()` re-walks each child's subtree to skip it, so the walk costs
//! O(nodes x depth), bounded by `MAX_NODES x MAX_DEPTH`. The walk itself keeps an explicit stack
//! (no recursion of ours), and stops with an error on the first malformed value it uses.

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec::Vec;

use fdt::node::FdtNode;

use crate::dma::tce::{DdwTokens, TceWindow};

use super::{DeviceTree, DtError, HvTerm, PciFunction, PciHostNode, RtasTokens, VirtioMmioNode};

/// Most entries in each device list (virtio-mmio, PCI hosts, PCI functions, hvterm nodes).
/// Each entry keeps a path of up to `MAX_PATH_LEN` bytes; without a cap a 1 MiB hostile tree
/// of tiny nodes with long paths could ask for ~100 MiB.
pub const MAX_DEVICES: usize = 1024;

/// The most cells `#address-cells` / `#size-cells` may hold (PCI uses 3 address cells).
const MAX_CELLS: u32 = 4;

/// The properties of one node the guest looks at (first occurrence of each name).
#[derive(Default, Clone, Copy)]
struct Props<'a> {
    address_cells: Option<&'a [u8]>,
    size_cells: Option<&'a [u8]>,
    device_type: Option<&'a [u8]>,
    compatible: Option<&'a [u8]>,
    model: Option<&'a [u8]>,
    reg: Option<&'a [u8]>,
    ranges: Option<&'a [u8]>,
    interrupts: Option<&'a [u8]>,
    timebase: Option<&'a [u8]>,
    servers: Option<&'a [u8]>,
    bus_range: Option<&'a [u8]>,
    dma_window: Option<&'a [u8]>,
    dma_address_cells: Option<&'a [u8]>,
    dma_size_cells: Option<&'a [u8]>,
    ddw_applicable: Option<&'a [u8]>,
    ddw_extensions: Option<&'a [u8]>,
    vendor_id: Option<&'a [u8]>,
    device_id: Option<&'a [u8]>,
    class_code: Option<&'a [u8]>,
    bootargs: Option<&'a [u8]>,
    stdout_path: Option<&'a [u8]>,
    linux_stdout_path: Option<&'a [u8]>,
    rtas: [Option<&'a [u8]>; 5],
}

const RTAS_NAMES: [&str; 5] = [
    "power-off",
    "read-pci-config",
    "write-pci-config",
    "ibm,read-pci-config",
    "ibm,write-pci-config",
];

/// The property names [`Props::gather`] keeps, in the order of its slots; the RTAS token names
/// follow them.
const PROP_NAMES: [&str; 22] = [
    "#address-cells",
    "#size-cells",
    "device_type",
    "compatible",
    "model",
    "reg",
    "ranges",
    "interrupts",
    "timebase-frequency",
    "ibm,ppc-interrupt-server#s",
    "bus-range",
    "vendor-id",
    "device-id",
    "class-code",
    "bootargs",
    "stdout-path",
    "linux,stdout-path",
    "ibm,dma-window",
    "ibm,#dma-address-cells",
    "ibm,#dma-size-cells",
    "ibm,ddw-applicable",
    "ibm,ddw-extensions",
];

impl<'a> Props<'a> {
    /// A lookup loop over a table rather than a `match` on the name: a `match` on strings
    /// becomes a tree of length and byte comparisons, and under TCG every distinct branch taken
    /// the first time costs a translation (~10 µs on pseries); the loop is translated once.
    fn gather(node: FdtNode<'_, 'a>) -> Self {
        let mut v: [Option<&'a [u8]>; PROP_NAMES.len() + RTAS_NAMES.len()] = Default::default();
        for prop in node.properties() {
            let Some(i) = PROP_NAMES
                .iter()
                .chain(RTAS_NAMES.iter())
                .position(|n| *n == prop.name)
            else {
                continue;
            };
            // A duplicated property (forbidden by DTSpec): the first one counts, consistently.
            v[i].get_or_insert(prop.value);
        }
        let [
            address_cells,
            size_cells,
            device_type,
            compatible,
            model,
            reg,
            ranges,
            interrupts,
            timebase,
            servers,
            bus_range,
            vendor_id,
            device_id,
            class_code,
            bootargs,
            stdout_path,
            linux_stdout_path,
            dma_window,
            dma_address_cells,
            dma_size_cells,
            ddw_applicable,
            ddw_extensions,
            rtas @ ..,
        ] = v;
        Props {
            address_cells,
            size_cells,
            device_type,
            compatible,
            model,
            reg,
            ranges,
            interrupts,
            timebase,
            servers,
            bus_range,
            dma_window,
            dma_address_cells,
            dma_size_cells,
            ddw_applicable,
            ddw_extensions,
            vendor_id,
            device_id,
            class_code,
            bootargs,
            stdout_path,
            linux_stdout_path,
            rtas,
        }
    }

    fn device_type_is(&self, what: &str) -> bool {
        self.device_type
            .is_some_and(|v| first_str(v) == what.as_bytes())
    }

    fn compatible_with(&self, what: &str) -> bool {
        self.compatible
            .is_some_and(|v| strings(v).any(|s| s == what.as_bytes()))
    }
}

/// The bytes of a string property up to its first NUL (or all of it without one).
fn first_str(v: &[u8]) -> &[u8] {
    v.split(|&b| b == 0).next().unwrap_or_default()
}

/// The strings of a string-list property; empty strings (trailing NULs) are skipped.
fn strings(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == 0).filter(|s| !s.is_empty())
}

fn to_string(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// One big-endian cell, when `v` is exactly one cell.
fn one_cell(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.try_into().ok()?))
}

/// A number of 0, 1 or 2 cells (0 cells is the value 0).
fn cells_u64(v: &[u8], cells: u32) -> Option<u64> {
    match cells {
        0 => v.is_empty().then_some(0),
        1 => one_cell(v).map(u64::from),
        2 => Some(u64::from_be_bytes(v.try_into().ok()?)),
        _ => None,
    }
}

fn first_cell(v: &[u8]) -> Option<u32> {
    one_cell(v.get(..4)?)
}

/// Splits `n` cells off the front of `v` and decodes them (0, 1 or 2 cells).
fn take_cells(v: &mut &[u8], n: u32) -> Option<u64> {
    let len = n as usize * 4;
    let head = v.get(..len)?;
    *v = v.get(len..)?;
    cells_u64(head, n)
}

/// "cpu" for "cpu@0".
fn base_name(name: &str) -> &str {
    name.split_once('@').map_or(name, |(base, _)| base)
}

/// Whether the node at `node_path` is the one `wanted` names: components compare in full when
/// `wanted` gives a unit address, else by name only ("/vdevice/vty" matches "vty@71000000").
fn path_matches(node_path: &str, wanted: &str) -> bool {
    let mut have = node_path.split('/').filter(|c| !c.is_empty());
    let mut want = wanted.split('/').filter(|c| !c.is_empty());
    loop {
        match (have.next(), want.next()) {
            (None, None) => return true,
            (Some(h), Some(w)) if w.contains('@') && h == w => {}
            (Some(h), Some(w)) if !w.contains('@') && base_name(h) == w => {}
            _ => return false,
        }
    }
}

/// `#address-cells` and `#size-cells` a node gives its children (DTSpec defaults: 2 and 1).
fn node_cells(p: &Props<'_>) -> Result<(u32, u32), &'static str> {
    let cells = |v: Option<&[u8]>, default| match v {
        None => Some(default),
        Some(v) => one_cell(v).filter(|&n| n <= MAX_CELLS),
    };
    Ok((
        cells(p.address_cells, 2).ok_or("#address-cells is not one cell of at most 4")?,
        cells(p.size_cells, 1).ok_or("#size-cells is not one cell of at most 4")?,
    ))
}

/// The (address, size) entries of a `reg` (or similar) property in a bus with the given cells;
/// only 1 or 2 cells of each fit the 64-bit values the guest uses.
fn reg_entries(reg: &[u8], ac: u32, sc: u32) -> Result<Vec<(u64, u64)>, &'static str> {
    if !(1..=2).contains(&ac) || !(1..=2).contains(&sc) {
        return Err("reg needs 1 or 2 address cells and 1 or 2 size cells in its bus");
    }
    let entry = (ac + sc) as usize * 4;
    if !reg.len().is_multiple_of(entry) {
        return Err("reg length is not a multiple of its bus's entry size");
    }
    let mut out = Vec::with_capacity(reg.len() / entry);
    let mut rest = reg;
    while !rest.is_empty() {
        let base = take_cells(&mut rest, ac).ok_or("reg")?;
        let size = take_cells(&mut rest, sc).ok_or("reg")?;
        out.push((base, size));
    }
    Ok(out)
}

/// Appends the non-empty ranges of `reg` to `to`, refusing ranges that wrap around 2^64.
fn push_ranges(to: &mut Vec<(u64, u64)>, reg: &[u8], ac: u32, sc: u32) -> Result<(), &'static str> {
    for (base, size) in reg_entries(reg, ac, sc)? {
        if size == 0 {
            continue;
        }
        base.checked_add(size)
            .ok_or("memory range wraps around 2^64")?;
        to.push((base, size));
    }
    Ok(())
}

fn push_capped<T>(to: &mut Vec<T>, item: T, why: &'static str) -> Result<(), &'static str> {
    if to.len() >= MAX_DEVICES {
        return Err(why);
    }
    to.push(item);
    Ok(())
}

/// A node during the walk, as its children see it.
struct Frame<'a, I> {
    children: I,
    props: Props<'a>,
    /// Length of the node's path in the shared path buffer ("" for the root).
    path_len: usize,
    /// `#address-cells` / `#size-cells` for the node's children.
    address_cells: u32,
    size_cells: u32,
    is_pci: bool,
    is_reserved_memory: bool,
}

/// Translates a bus address of a child of `stack.last()` up to a CPU physical address through
/// the `ranges` of every ancestor bus. An absent or empty `ranges` is taken as identity (Linux
/// refuses to translate through an absent one; hand-written trees often omit it).
fn translate<I>(stack: &[Frame<'_, I>], mut addr: u64, size: u64) -> Result<u64, &'static str> {
    // stack[k] is a bus whose children's addresses are in its space; stack[0] is the root.
    for k in (1..stack.len()).rev() {
        let (Some(bus), Some(up)) = (stack.get(k), stack.get(k - 1)) else {
            break;
        };
        let ranges = match bus.props.ranges {
            Some(r) if !r.is_empty() => r,
            _ => continue,
        };
        let (cac, pac, sc) = (bus.address_cells, up.address_cells, bus.size_cells);
        if ![cac, pac, sc].iter().all(|c| (1..=2).contains(c)) {
            return Err("cannot translate through a bus whose ranges cells are not 1 or 2");
        }
        let entry = (cac + pac + sc) as usize * 4;
        if ranges.len() % entry != 0 {
            return Err("ranges length is not a multiple of its entry size");
        }
        let mut rest = ranges;
        let mut mapped = None;
        while !rest.is_empty() {
            let child = take_cells(&mut rest, cac).ok_or("ranges")?;
            let parent = take_cells(&mut rest, pac).ok_or("ranges")?;
            let len = take_cells(&mut rest, sc).ok_or("ranges")?;
            let Some(off) = addr.checked_sub(child) else {
                continue;
            };
            if off < len && size <= len - off {
                mapped = Some(
                    parent
                        .checked_add(off)
                        .ok_or("translated address wraps around 2^64")?,
                );
                break;
            }
        }
        addr = mapped.ok_or("reg outside its bus's ranges")?;
    }
    Ok(addr)
}

/// What the walk gathers that is only finished at the end.
#[derive(Default)]
struct Found<'a> {
    tree: DeviceTree,
    stdout: Option<&'a [u8]>,
    aliases: Vec<(&'a str, &'a [u8])>,
    hvterms: Vec<HvTerm>,
    seen_chosen: bool,
    seen_aliases: bool,
    seen_cpu: bool,
}

/// Walks a blob `check` accepted, without NOP tokens. `original_offset` maps an offset in `data`
/// back to the blob the host gave, for errors.
pub(super) fn extract(
    data: &[u8],
    original_offset: &dyn Fn(usize) -> usize,
) -> Result<DeviceTree, DtError> {
    let internal = DtError::BadHeader("validated blob rejected by the fdt crate");
    let fdt = fdt::Fdt::new(data).map_err(|_| internal.clone())?;
    let root = fdt.find_node("/").ok_or(internal)?;
    let mut walker = Walker {
        data,
        original_offset,
        found: Found::default(),
        path: String::new(),
    };
    walker.walk(root)?;
    Ok(walker.finish())
}

struct Walker<'d, 'f> {
    data: &'d [u8],
    original_offset: &'f dyn Fn(usize) -> usize,
    found: Found<'d>,
    /// Path of the node being handled; each frame remembers its own length in it.
    path: String,
}

impl<'d> Walker<'d, '_> {
    /// Offset of `node`'s FDT_BEGIN_NODE token in the original blob: `fdt` hands out the name
    /// as a subslice of `data`, right after the 4-byte token.
    fn offset_of(&self, node: &FdtNode<'_, 'd>) -> usize {
        let name = node.name.as_ptr() as usize;
        let off = name
            .wrapping_sub(self.data.as_ptr() as usize)
            .saturating_sub(4);
        (self.original_offset)(off)
    }

    fn walk(&mut self, root: FdtNode<'_, 'd>) -> Result<(), DtError> {
        let offset = self.offset_of(&root);
        let props = Props::gather(root);
        self.found.tree.model = props
            .model
            .map(first_str)
            .filter(|m| !m.is_empty())
            .or_else(|| props.compatible.and_then(|c| strings(c).next()))
            .map(to_string);
        let (address_cells, size_cells) =
            node_cells(&props).map_err(|why| DtError::BadStructure { offset, why })?;
        // An explicit stack, not recursion: its depth is bounded by MAX_DEPTH anyway, but the
        // guest's stack is small and this keeps it flat.
        let mut stack = Vec::with_capacity(8);
        stack.push(Frame {
            children: root.children(),
            props,
            path_len: 0,
            address_cells,
            size_cells,
            is_pci: props.device_type_is("pci"),
            is_reserved_memory: false,
        });
        while let Some(top) = stack.last_mut() {
            let Some(child) = top.children.next() else {
                stack.pop();
                continue;
            };
            self.path.truncate(top.path_len);
            self.path.push('/');
            self.path.push_str(child.name);
            let offset = self.offset_of(&child);
            let props = Props::gather(child);
            let err = |why| DtError::BadStructure { offset, why };
            self.node(child, &props, &stack).map_err(err)?;
            let (address_cells, size_cells) = node_cells(&props).map_err(err)?;
            let is_reserved_memory = stack.len() == 1 && base_name(child.name) == "reserved-memory";
            stack.push(Frame {
                children: child.children(),
                props,
                path_len: self.path.len(),
                address_cells,
                size_cells,
                is_pci: props.device_type_is("pci"),
                is_reserved_memory,
            });
        }
        Ok(())
    }

    /// Handles one non-root node; `stack` holds its ancestors, its parent last.
    fn node<I>(
        &mut self,
        node: FdtNode<'_, 'd>,
        p: &Props<'d>,
        stack: &[Frame<'d, I>],
    ) -> Result<(), &'static str> {
        let Some(parent) = stack.last() else {
            return Ok(());
        };
        let (ac, sc) = (parent.address_cells, parent.size_cells);
        let name = base_name(node.name);
        let f = &mut self.found;

        if stack.len() == 1 {
            match name {
                "chosen" if !f.seen_chosen => {
                    f.seen_chosen = true;
                    f.tree.bootargs = p.bootargs.map(|v| first_str(v).to_vec());
                    let non_empty = |v: &&[u8]| !first_str(v).is_empty();
                    f.stdout = p
                        .stdout_path
                        .filter(non_empty)
                        .or(p.linux_stdout_path.filter(non_empty));
                }
                "aliases" if !f.seen_aliases => {
                    f.seen_aliases = true;
                    f.aliases = node.properties().map(|a| (a.name, a.value)).collect();
                }
                "rtas" if f.tree.rtas.is_none() => {
                    let mut t = [None; 5];
                    for (slot, value) in t.iter_mut().zip(p.rtas) {
                        if let Some(v) = value {
                            *slot = Some(one_cell(v).ok_or("RTAS token is not one cell")?);
                        }
                    }
                    let [
                        power_off,
                        read_pci_config,
                        write_pci_config,
                        ibm_read,
                        ibm_write,
                    ] = t;
                    f.tree.rtas = Some(RtasTokens {
                        power_off,
                        read_pci_config,
                        write_pci_config,
                        ibm_read_pci_config: ibm_read,
                        ibm_write_pci_config: ibm_write,
                    });
                }
                _ => {}
            }
        }

        if name == "ibm,ultravisor" || p.compatible_with("ibm,ultravisor") {
            f.tree.ultravisor = true;
        }

        if p.device_type_is("cpu") {
            // pseries: a cpu node is a core listing one interrupt server per thread.
            let threads = match p.servers {
                None => 1,
                Some(v) if !v.is_empty() && v.len() % 4 == 0 => v.len() / 4,
                Some(_) => return Err("ibm,ppc-interrupt-server#s is not a list of cells"),
            };
            let threads = u32::try_from(threads).map_err(|_| "too many CPU threads")?;
            f.tree.cpus = f
                .tree
                .cpus
                .checked_add(threads)
                .ok_or("too many CPU threads")?;
            if !f.seen_cpu {
                f.seen_cpu = true;
                // DTSpec allows the frequency on /cpus instead, for all CPUs.
                f.tree.timebase_hz = match p.timebase.or(parent.props.timebase) {
                    None => None,
                    Some(v) => Some(
                        match v.len() {
                            4 => cells_u64(v, 1),
                            8 => cells_u64(v, 2),
                            _ => None,
                        }
                        .ok_or("timebase-frequency is neither 32 nor 64 bits")?,
                    ),
                };
            }
        }

        if p.device_type_is("memory")
            && let Some(reg) = p.reg
        {
            push_ranges(&mut f.tree.memory, reg, ac, sc)?;
        }

        // Children of /reserved-memory without `reg` are allocated dynamically: nothing fixed.
        if parent.is_reserved_memory
            && let Some(reg) = p.reg
        {
            push_ranges(&mut f.tree.reserved, reg, ac, sc)?;
        }

        if p.compatible_with("hvterm1") {
            let termno = p
                .reg
                .filter(|r| r.len() % 4 == 0)
                .and_then(first_cell)
                .ok_or("hvterm1 node without a reg cell")?;
            let term = HvTerm {
                path: self.path.clone(),
                termno,
            };
            push_capped(&mut f.hvterms, term, "more than 1024 hvterm1 nodes")?;
        }

        if p.compatible_with("virtio,mmio") {
            let reg = p.reg.ok_or("virtio,mmio node without reg")?;
            let &(addr, size) = reg_entries(reg, ac, sc)?
                .first()
                .ok_or("virtio,mmio node with an empty reg")?;
            if size == 0 {
                return Err("virtio,mmio reg has size 0");
            }
            let base = translate(stack, addr, size)?;
            base.checked_add(size)
                .ok_or("memory range wraps around 2^64")?;
            let irq = match p.interrupts {
                None => None,
                Some(v) if v.len() % 4 == 0 => first_cell(v),
                Some(_) => return Err("interrupts is not a list of cells"),
            };
            let dev = VirtioMmioNode {
                path: self.path.clone(),
                base,
                size,
                irq,
            };
            push_capped(
                &mut f.tree.virtio_mmio,
                dev,
                "more than 1024 virtio,mmio nodes",
            )?;
        }

        let is_pci = p.device_type_is("pci");
        if is_pci && !parent.is_pci {
            let bus_range = match p.bus_range {
                None => None,
                Some(v) => {
                    let (Some(a), Some(b)) =
                        (v.get(..4).and_then(one_cell), v.get(4..).and_then(one_cell))
                    else {
                        return Err("bus-range is not two cells");
                    };
                    if a > b || b > 0xff {
                        return Err("bus-range is not start <= end <= 255");
                    }
                    Some((a, b))
                }
            };
            let host = PciHostNode {
                path: self.path.clone(),
                compatible: p.compatible.and_then(|c| strings(c).next()).map(to_string),
                bus_range,
                has_dma_window: p.dma_window.is_some(),
                tce_window: p
                    .dma_window
                    .map(|w| TceWindow::parse(w, p.dma_address_cells, p.dma_size_cells)),
                ddw: p
                    .ddw_applicable
                    .map(|a| DdwTokens::parse(a, p.ddw_extensions)),
            };
            push_capped(
                &mut f.tree.pci_hosts,
                host,
                "more than 1024 PCI host bridges",
            )?;
        }

        // A function: a child of a PCI bus (host or bridge) with vendor-id/device-id. The first
        // reg entry is its config space: phys.hi = npt000ss bbbbbbbb dddddfff rrrrrrrr.
        if parent.is_pci && (p.vendor_id.is_some() || p.device_id.is_some()) {
            if ac != 3 {
                return Err("PCI bus #address-cells is not 3");
            }
            let entry = (ac + sc) as usize * 4;
            let hi = p
                .reg
                .filter(|r| !r.is_empty() && r.len() % entry == 0)
                .and_then(first_cell)
                .ok_or("PCI function reg is not a list of PCI addresses")?;
            let id = |v: Option<&[u8]>| v.and_then(one_cell).and_then(|n| u16::try_from(n).ok());
            let class = match p.class_code {
                None => 0,
                Some(v) => one_cell(v)
                    .filter(|&c| c <= 0xff_ffff)
                    .ok_or("class-code is not 24 bits")?,
            };
            let function = PciFunction {
                path: self.path.clone(),
                bus: (hi >> 16) as u8,
                device: ((hi >> 11) & 0x1f) as u8,
                function: ((hi >> 8) & 0x7) as u8,
                vendor_id: id(p.vendor_id).ok_or("vendor-id is not one 16-bit cell")?,
                device_id: id(p.device_id).ok_or("device-id is not one 16-bit cell")?,
                class,
            };
            push_capped(
                &mut f.tree.pci_functions,
                function,
                "more than 1024 PCI functions",
            )?;
        }
        Ok(())
    }

    /// Resolves `/chosen/stdout-path` and picks the hvterm.
    fn finish(self) -> DeviceTree {
        let Found {
            mut tree,
            stdout,
            aliases,
            hvterms,
            ..
        } = self.found;
        tree.stdout_path = stdout.map(|raw| to_string(&resolve_stdout(first_str(raw), &aliases)));
        let preferred = tree
            .stdout_path
            .as_deref()
            .and_then(|s| hvterms.iter().position(|h| path_matches(&h.path, s)))
            .unwrap_or(0);
        tree.hvterm = hvterms.into_iter().nth(preferred);
        tree
    }
}

/// `stdout-path` without the options after ':', with a leading alias ("serial0" or
/// "serial0/sub") replaced by its path when `/aliases` has it.
fn resolve_stdout(raw: &[u8], aliases: &[(&str, &[u8])]) -> Vec<u8> {
    let path = raw.split(|&b| b == b':').next().unwrap_or_default();
    if path.starts_with(b"/") {
        return path.to_vec();
    }
    let split = path.iter().position(|&b| b == b'/').unwrap_or(path.len());
    let (alias, rest) = path.split_at(split);
    match aliases.iter().find(|(name, _)| name.as_bytes() == alias) {
        Some((_, target)) if first_str(target).starts_with(b"/") => {
            let mut resolved = first_str(target).to_owned();
            resolved.extend_from_slice(rest);
            resolved
        }
        _ => path.to_vec(),
    }
}
