//! Walks the Open Firmware device tree and flattens it into an FDT, without a heap.
//!
//! The tree comes from the firmware and the host behind it: every loop is bounded (nodes,
//! depth, properties per node, property size) and anything that does not fit is counted and
//! skipped, never a panic or a hang. While walking, the few facts the boot needs are picked
//! up on the way: memory ranges (`reg`, `available`), CPUs and the timebase frequency.

use secure_guest::devtree::writer::{FdtWriter, WriteError};

use super::of::{Of, Phandle};

/// Nodes flattened at most (a pseries tree has a few dozen; SLOF adds its packages).
const MAX_NODES: u32 = 4096;
const MAX_DEPTH: usize = 32;
const MAX_PROPS_PER_NODE: u32 = 1024;
/// Memory nodes and `available` ranges kept (more are counted in `dropped_ranges`).
pub const MAX_MEM: usize = 16;
pub const MAX_AVAIL: usize = 48;

/// What the walk found besides the blob.
pub struct Found {
    pub nodes: u32,
    pub props: u32,
    /// Properties not copied: larger than the scratch buffer or unreadable.
    pub skipped_props: u32,
    /// Nodes whose path was too long or unreadable (named from `name` or "unknown").
    pub bad_names: u32,
    /// The walk stopped early at a limit (nodes, depth or properties per node).
    pub truncated: bool,
    /// `reg` of every memory node (children of the root with device_type "memory").
    pub memory: [(u64, u64); MAX_MEM],
    /// Whether the node a `memory` entry came from had an `available` property.
    pub memory_has_avail: [bool; MAX_MEM],
    pub n_memory: usize,
    /// `available` ranges of those nodes, and whether any memory node had the property.
    pub avail: [(u64, u64); MAX_AVAIL],
    pub n_avail: usize,
    pub has_available: bool,
    pub dropped_ranges: u32,
    /// Hardware threads: per CPU node, `ibm,ppc-interrupt-server#s` entries (or 1).
    pub cpus: u32,
    pub timebase_hz: Option<u64>,
}

impl Found {
    pub const fn new() -> Self {
        Found {
            nodes: 0,
            props: 0,
            skipped_props: 0,
            bad_names: 0,
            truncated: false,
            memory: [(0, 0); MAX_MEM],
            memory_has_avail: [false; MAX_MEM],
            n_memory: 0,
            avail: [(0, 0); MAX_AVAIL],
            n_avail: 0,
            has_available: false,
            dropped_ranges: 0,
            cpus: 0,
            timebase_hz: None,
        }
    }
}

/// Why flattening failed as a whole (a partial walk is not a failure: see `Found`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlattenError {
    NoRoot,
    Writer(WriteError),
}

impl FlattenError {
    pub fn as_str(&self) -> &'static str {
        match self {
            FlattenError::NoRoot => "no root node",
            FlattenError::Writer(e) => e.as_str(),
        }
    }
}

impl From<WriteError> for FlattenError {
    fn from(e: WriteError) -> Self {
        FlattenError::Writer(e)
    }
}

/// Per-node facts collected from its properties.
struct NodeFacts {
    device_type: [u8; 32],
    device_type_len: usize,
    reg: [u8; 256],
    reg_len: usize,
    available: [u8; 1024],
    available_len: usize,
    timebase: Option<u64>,
    servers: Option<usize>,
    has_phandle: bool,
}

impl NodeFacts {
    const fn new() -> Self {
        NodeFacts {
            device_type: [0; 32],
            device_type_len: 0,
            reg: [0; 256],
            reg_len: 0,
            available: [0; 1024],
            available_len: 0,
            timebase: None,
            servers: None,
            has_phandle: false,
        }
    }

    fn device_type(&self) -> &[u8] {
        let v = &self.device_type[..self.device_type_len];
        // Strings carry their NUL.
        v.strip_suffix(&[0]).unwrap_or(v)
    }
}

fn copy_into(dst: &mut [u8], src: &[u8]) -> usize {
    let n = dst.len().min(src.len());
    dst[..n].copy_from_slice(&src[..n]);
    n
}

fn be_uint(b: &[u8]) -> Option<u64> {
    match b.len() {
        4 => Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64),
        8 => Some(u64::from_be_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ])),
        _ => None,
    }
}

/// Reads `cells` big-endian cells (1 or 2) as one number.
fn cells_value(b: &[u8], cells: usize) -> u64 {
    b.chunks_exact(4).take(cells).fold(0u64, |acc, c| {
        (acc << 32) | u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as u64
    })
}

/// Calls `f(base, size)` for each (address, size) pair of a `reg`-style property.
fn for_each_range(b: &[u8], ac: usize, sc: usize, mut f: impl FnMut(u64, u64)) {
    let entry = (ac + sc) * 4;
    if entry == 0 || ac > 2 || sc > 2 {
        return;
    }
    for e in b.chunks_exact(entry) {
        f(cells_value(e, ac), cells_value(&e[ac * 4..], sc));
    }
}

/// The walker's state: the firmware, the writer, and its scratch space.
pub struct Walker<'w, 'b> {
    of: Of,
    w: &'w mut FdtWriter<'b>,
    /// Holds one property value at a time.
    scratch: &'w mut [u8],
    pub found: Found,
    /// Root `#address-cells` / `#size-cells` (IEEE 1275 defaults until the root says).
    root_ac: usize,
    root_sc: usize,
}

impl<'w, 'b> Walker<'w, 'b> {
    pub fn new(of: Of, w: &'w mut FdtWriter<'b>, scratch: &'w mut [u8]) -> Self {
        Walker {
            of,
            w,
            scratch,
            found: Found::new(),
            root_ac: 2,
            root_sc: 1,
        }
    }

    /// Flattens the whole tree, depth first, without recursion.
    pub fn run(&mut self) -> Result<(), FlattenError> {
        let root = self.of.root().ok_or(FlattenError::NoRoot)?;
        // stack[d] = the open node at depth d (0 = root); `depth` = how many are open.
        let mut stack = [0 as Phandle; MAX_DEPTH];
        self.visit(root, 0)?;
        stack[0] = root;
        let mut depth = 1;
        loop {
            if self.found.nodes >= MAX_NODES {
                self.found.truncated = true;
            } else if let Some(c) = self.of.child(stack[depth - 1]) {
                if depth < MAX_DEPTH {
                    self.visit(c, depth)?;
                    stack[depth] = c;
                    depth += 1;
                    continue;
                }
                self.found.truncated = true;
            }
            // A leaf (or too deep, or out of budget): close nodes until one has a next
            // sibling. Out of budget, siblings are not looked for and everything closes.
            loop {
                self.w.end_node()?;
                depth -= 1;
                if depth == 0 {
                    return Ok(());
                }
                if self.found.nodes >= MAX_NODES {
                    self.found.truncated = true;
                    continue;
                }
                if let Some(p) = self.of.peer(stack[depth]) {
                    self.visit(p, depth)?;
                    stack[depth] = p;
                    depth += 1;
                    break;
                }
            }
        }
    }

    /// Opens the node `ph` (at `depth`, 0 = root) and copies its properties.
    fn visit(&mut self, ph: Phandle, depth: usize) -> Result<(), FlattenError> {
        self.found.nodes += 1;
        let mut path = [0u8; 256];
        let mut name_buf = [0u8; 64];
        let name: &[u8] = if depth == 0 {
            b""
        } else {
            match self.of.package_to_path(ph, &mut path[..255]) {
                Some(n) if n > 0 && n < 255 => {
                    let p = &path[..n];
                    let p = p.iter().position(|&b| b == 0).map_or(p, |z| &p[..z]);
                    let last = p.rsplit(|&b| b == b'/').next().unwrap_or(b"");
                    if last.is_empty() {
                        self.found.bad_names += 1;
                        b"unknown"
                    } else {
                        last
                    }
                }
                _ => {
                    // Too long or unreadable: fall back to the `name` property.
                    self.found.bad_names += 1;
                    match self.of.getprop(ph, b"name\0", &mut name_buf[..63]) {
                        Some(n) if n > 1 && n < 63 => {
                            let v = &name_buf[..n];
                            v.iter().position(|&b| b == 0).map_or(v, |z| &v[..z])
                        }
                        _ => b"unknown",
                    }
                }
            }
        };
        self.w.begin_node(name)?;

        let mut facts = NodeFacts::new();
        // Two name buffers: the previous name must stay intact while the next one is read.
        let mut names = [[0u8; 64]; 2];
        let mut cur = 0;
        let mut count = 0;
        loop {
            if count == MAX_PROPS_PER_NODE {
                self.found.truncated = true;
                break;
            }
            count += 1;
            let (a, b) = names.split_at_mut(1);
            let (prev, next) = if cur == 0 {
                (&b[0], &mut a[0])
            } else {
                (&a[0], &mut b[0])
            };
            let prev_len = prev.iter().position(|&c| c == 0).unwrap_or(0);
            match self.of.nextprop(ph, &prev[..=prev_len], next) {
                Ok(true) => {}
                Ok(false) => break,
                Err(_) => {
                    self.found.skipped_props += 1;
                    break;
                }
            }
            // IEEE 1275 names are at most 31 characters; anything without a NUL in the
            // buffer is garbage and ends this node's properties.
            let Some(len) = next[..63].iter().position(|&c| c == 0) else {
                self.found.skipped_props += 1;
                break;
            };
            if len == 0 {
                break;
            }
            let pname_z: [u8; 64] = *next;
            cur ^= 1;
            let pname = &pname_z[..len];
            // The FDT node name already says what `name` would.
            if pname == b"name" {
                continue;
            }
            self.copy_property(ph, depth, &pname_z[..=len], &mut facts)?;
        }
        if !facts.has_phandle {
            // Nodes refer to each other by phandle (interrupt-parent, ...): give each node
            // the firmware's handle, as Linux does when it flattens an OF tree.
            self.w.property_u32(b"phandle", ph)?;
        }
        self.conclude(depth, &facts);
        Ok(())
    }

    fn copy_property(
        &mut self,
        ph: Phandle,
        depth: usize,
        name_z: &[u8],
        facts: &mut NodeFacts,
    ) -> Result<(), FlattenError> {
        let name = &name_z[..name_z.len() - 1];
        // One getprop into the whole scratch buffer: it returns the property's full length,
        // so a separate getproplen would only double the (slow, under SLOF) calls.
        let value_len = match self.of.getprop(ph, name_z, self.scratch) {
            Some(n) if n <= self.scratch.len() => n,
            _ => {
                // Absent, unreadable, or larger than the scratch buffer: not copied.
                self.found.skipped_props += 1;
                return Ok(());
            }
        };
        let value = &self.scratch[..value_len];
        self.w.property(name, value)?;
        self.found.props += 1;

        match name {
            b"phandle" | b"linux,phandle" => facts.has_phandle = true,
            b"device_type" => facts.device_type_len = copy_into(&mut facts.device_type, value),
            b"reg" => facts.reg_len = copy_into(&mut facts.reg, value),
            b"available" => facts.available_len = copy_into(&mut facts.available, value),
            b"timebase-frequency" => facts.timebase = be_uint(value),
            b"ibm,ppc-interrupt-server#s" => facts.servers = Some(value.len() / 4),
            b"#address-cells" if depth == 0 => {
                if let Some(v) = be_uint(value) {
                    self.root_ac = v as usize;
                }
            }
            b"#size-cells" if depth == 0 => {
                if let Some(v) = be_uint(value) {
                    self.root_sc = v as usize;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Records what a finished node tells the boot.
    fn conclude(&mut self, depth: usize, facts: &NodeFacts) {
        let f = &mut self.found;
        match facts.device_type() {
            b"memory" if depth == 1 => {
                let (ac, sc) = (self.root_ac, self.root_sc);
                let has_avail = facts.available_len > 0;
                for_each_range(&facts.reg[..facts.reg_len], ac, sc, |base, size| {
                    if f.n_memory < MAX_MEM {
                        f.memory[f.n_memory] = (base, size);
                        f.memory_has_avail[f.n_memory] = has_avail;
                        f.n_memory += 1;
                    } else {
                        f.dropped_ranges += 1;
                    }
                });
                if facts.available_len > 0 {
                    f.has_available = true;
                }
                for_each_range(
                    &facts.available[..facts.available_len],
                    ac,
                    sc,
                    |base, size| {
                        if f.n_avail < MAX_AVAIL {
                            f.avail[f.n_avail] = (base, size);
                            f.n_avail += 1;
                        } else {
                            f.dropped_ranges += 1;
                        }
                    },
                );
            }
            b"cpu" => {
                f.cpus += facts.servers.filter(|&n| n > 0).unwrap_or(1) as u32;
                if f.timebase_hz.is_none() {
                    f.timebase_hz = facts.timebase.filter(|&hz| hz > 0);
                }
            }
            _ => {}
        }
    }
}
