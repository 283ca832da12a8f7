//! Writes a flattened device tree (FDT v17) into caller-provided buffers, without allocating.
//!
//! Used on pseries to flatten the tree read through the Open Firmware client interface (before
//! any heap exists), and by tests to build well-formed and hostile device trees.

const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_END: u32 = 9;
const HEADER_SIZE: usize = 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteError {
    /// The structure buffer or the strings scratch is full.
    NoSpace,
    /// end_node without begin_node, or finish with nodes still open.
    Unbalanced,
}

impl WriteError {
    pub fn as_str(&self) -> &'static str {
        match self {
            WriteError::NoSpace => "no space left in the FDT buffer",
            WriteError::Unbalanced => "unbalanced nodes",
        }
    }
}

pub struct FdtWriter<'a> {
    buf: &'a mut [u8],
    strings: &'a mut [u8],
    /// Write position in `buf` (structure block starts after header and reserve map).
    pos: usize,
    strings_len: usize,
    depth: usize,
    struct_start: usize,
    nodes: u32,
    /// Open-addressed index of the strings block: offset + 1 of a name, 0 for an empty slot.
    /// A linear scan of the block for every property was quadratic, and on pseries under TCG
    /// it was half of the guest's boot time.
    names: [u32; NAME_SLOTS],
    names_used: usize,
}

/// Slots in the name index (a power of two). Real trees have a few hundred distinct names;
/// past 3/4 full, new names are appended without being indexed (duplicate strings are valid).
const NAME_SLOTS: usize = 1024;

/// FNV-1a: short, and good enough to spread property names.
fn name_hash(name: &[u8]) -> usize {
    let mut h: u32 = 0x811c_9dc5;
    for &b in name {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    h as usize
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

impl<'a> FdtWriter<'a> {
    /// `reservations` go into the memory reserve map. `buf` receives the whole blob;
    /// `strings` is scratch for the strings block until `finish`.
    pub fn new(
        buf: &'a mut [u8],
        strings: &'a mut [u8],
        reservations: &[(u64, u64)],
    ) -> Result<Self, WriteError> {
        let rsv_len = (reservations.len() + 1) * 16;
        let struct_start = HEADER_SIZE + rsv_len;
        if buf.len() < struct_start {
            return Err(WriteError::NoSpace);
        }
        buf[..struct_start].fill(0);
        for (i, &(a, s)) in reservations.iter().enumerate() {
            let o = HEADER_SIZE + i * 16;
            buf[o..o + 8].copy_from_slice(&a.to_be_bytes());
            buf[o + 8..o + 16].copy_from_slice(&s.to_be_bytes());
        }
        Ok(FdtWriter {
            buf,
            strings,
            pos: struct_start,
            strings_len: 0,
            depth: 0,
            struct_start,
            nodes: 0,
            names: [0; NAME_SLOTS],
            names_used: 0,
        })
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        let end = self
            .pos
            .checked_add(bytes.len())
            .ok_or(WriteError::NoSpace)?;
        let padded = align4(end);
        if padded > self.buf.len() {
            return Err(WriteError::NoSpace);
        }
        self.buf[self.pos..end].copy_from_slice(bytes);
        self.buf[end..padded].fill(0);
        self.pos = padded;
        Ok(())
    }

    fn token(&mut self, t: u32) -> Result<(), WriteError> {
        self.put(&t.to_be_bytes())
    }

    /// Offset of `name` in the strings block, adding it when new.
    fn string_offset(&mut self, name: &[u8]) -> Result<u32, WriteError> {
        let mut slot = name_hash(name) & (NAME_SLOTS - 1);
        loop {
            let entry = self.names[slot] as usize;
            if entry == 0 {
                break;
            }
            let off = entry - 1;
            let end = off + name.len();
            if self.strings.get(off..end) == Some(name) && self.strings.get(end) == Some(&0) {
                return Ok(off as u32);
            }
            slot = (slot + 1) & (NAME_SLOTS - 1);
        }
        let need = self.strings_len + name.len() + 1;
        if need > self.strings.len() {
            return Err(WriteError::NoSpace);
        }
        self.strings[self.strings_len..self.strings_len + name.len()].copy_from_slice(name);
        self.strings[self.strings_len + name.len()] = 0;
        let off = self.strings_len;
        self.strings_len = need;
        if self.names_used < NAME_SLOTS * 3 / 4 {
            self.names[slot] = off as u32 + 1;
            self.names_used += 1;
        }
        Ok(off as u32)
    }

    /// Opens a node; `name` is the unit name without path ("" for the root, "cpu@0", ...).
    pub fn begin_node(&mut self, name: &[u8]) -> Result<(), WriteError> {
        self.token(FDT_BEGIN_NODE)?;
        // Name and its NUL terminator, then padding.
        let end = self.pos + name.len() + 1;
        if align4(end) > self.buf.len() {
            return Err(WriteError::NoSpace);
        }
        self.buf[self.pos..self.pos + name.len()].copy_from_slice(name);
        self.buf[self.pos + name.len()..align4(end)].fill(0);
        self.pos = align4(end);
        self.depth += 1;
        self.nodes += 1;
        Ok(())
    }

    pub fn end_node(&mut self) -> Result<(), WriteError> {
        if self.depth == 0 {
            return Err(WriteError::Unbalanced);
        }
        self.depth -= 1;
        self.token(FDT_END_NODE)
    }

    pub fn property(&mut self, name: &[u8], value: &[u8]) -> Result<(), WriteError> {
        if self.depth == 0 {
            return Err(WriteError::Unbalanced);
        }
        let nameoff = self.string_offset(name)?;
        self.token(FDT_PROP)?;
        self.put(&(value.len() as u32).to_be_bytes())?;
        self.put(&nameoff.to_be_bytes())?;
        self.put(value)
    }

    pub fn property_u32(&mut self, name: &[u8], v: u32) -> Result<(), WriteError> {
        self.property(name, &v.to_be_bytes())
    }

    /// A property made of big-endian cells.
    pub fn property_cells(&mut self, name: &[u8], cells: &[u32]) -> Result<(), WriteError> {
        let mut tmp = [0u8; 64];
        if cells.len() * 4 > tmp.len() {
            return Err(WriteError::NoSpace);
        }
        for (i, c) in cells.iter().enumerate() {
            tmp[i * 4..i * 4 + 4].copy_from_slice(&c.to_be_bytes());
        }
        self.property(name, &tmp[..cells.len() * 4])
    }

    /// A string property (NUL added).
    pub fn property_str(&mut self, name: &[u8], s: &str) -> Result<(), WriteError> {
        let mut tmp = [0u8; 256];
        if s.len() + 1 > tmp.len() {
            return Err(WriteError::NoSpace);
        }
        tmp[..s.len()].copy_from_slice(s.as_bytes());
        self.property(name, &tmp[..s.len() + 1])
    }

    /// Nodes begun so far.
    pub fn node_count(&self) -> u32 {
        self.nodes
    }

    /// Closes the structure block, appends the strings and fills in the header.
    /// Returns the blob, which starts at the beginning of `buf`.
    pub fn finish(mut self, boot_cpuid: u32) -> Result<&'a [u8], WriteError> {
        if self.depth != 0 {
            return Err(WriteError::Unbalanced);
        }
        self.token(FDT_END)?;
        let struct_size = self.pos - self.struct_start;
        let strings_off = self.pos;
        let total = strings_off + self.strings_len;
        if total > self.buf.len() {
            return Err(WriteError::NoSpace);
        }
        self.buf[strings_off..total].copy_from_slice(&self.strings[..self.strings_len]);
        let header = [
            FDT_MAGIC,
            total as u32,
            self.struct_start as u32,
            strings_off as u32,
            HEADER_SIZE as u32, // memory reserve map offset
            17,                 // version
            16,                 // last compatible version
            boot_cpuid,
            self.strings_len as u32,
            struct_size as u32,
        ];
        for (i, v) in header.iter().enumerate() {
            self.buf[i * 4..i * 4 + 4].copy_from_slice(&v.to_be_bytes());
        }
        Ok(&self.buf[..total])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_tree_the_fdt_crate_reads() {
        let mut buf = vec![0u8; 4096];
        let mut strings = vec![0u8; 512];
        let mut w = FdtWriter::new(&mut buf, &mut strings, &[(0x1000, 0x2000)]).unwrap();
        w.begin_node(b"").unwrap();
        w.property_u32(b"#address-cells", 2).unwrap();
        w.property_u32(b"#size-cells", 2).unwrap();
        w.property_str(b"model", "test,board").unwrap();
        w.begin_node(b"memory@0").unwrap();
        w.property_str(b"device_type", "memory").unwrap();
        w.property_cells(b"reg", &[0, 0, 0, 0x1000_0000]).unwrap();
        w.end_node().unwrap();
        w.begin_node(b"chosen").unwrap();
        w.property_str(b"bootargs", "sg.debug.panic=0").unwrap();
        w.end_node().unwrap();
        w.end_node().unwrap();
        assert_eq!(w.node_count(), 3);
        let blob = w.finish(0).unwrap();
        let fdt = fdt::Fdt::new(blob).unwrap();
        assert_eq!(fdt.root().model(), "test,board");
        assert_eq!(fdt.chosen().bootargs(), Some("sg.debug.panic=0"));
        let mem: Vec<_> = fdt.memory().regions().collect();
        assert_eq!(mem.len(), 1);
        assert_eq!(mem[0].size, Some(0x1000_0000));
        let rsv: Vec<_> = fdt.memory_reservations().collect();
        assert_eq!(rsv.len(), 1);
        assert_eq!(rsv[0].address() as usize, 0x1000);
        // Property names are stored once.
        assert_eq!(fdt.strings().filter(|s| *s == "device_type").count(), 1);
    }

    #[test]
    fn runs_out_of_space_cleanly() {
        let mut buf = vec![0u8; 80];
        let mut strings = vec![0u8; 8];
        let mut w = FdtWriter::new(&mut buf, &mut strings, &[]).unwrap();
        w.begin_node(b"").unwrap();
        assert_eq!(
            w.property_u32(b"a-very-long-name", 1),
            Err(WriteError::NoSpace)
        );
        let mut r = Ok(());
        for _ in 0..10 {
            r = r.and(w.begin_node(b"node"));
        }
        assert_eq!(r, Err(WriteError::NoSpace));
        let mut buf = vec![0u8; 100];
        let mut strings = vec![0u8; 8];
        let mut w = FdtWriter::new(&mut buf, &mut strings, &[]).unwrap();
        assert_eq!(w.end_node(), Err(WriteError::Unbalanced));
        w.begin_node(b"").unwrap();
        assert_eq!(w.finish(0).unwrap_err(), WriteError::Unbalanced);
    }

    /// Names are stored once each while the index has room, prefixes are not mistaken for
    /// whole names, and past the index's capacity new names are still written correctly.
    #[test]
    fn indexes_names_and_overflows_into_plain_appends() {
        let mut buf = vec![0u8; 64 * 1024];
        let mut strings = vec![0u8; 32 * 1024];
        let mut w = FdtWriter::new(&mut buf, &mut strings, &[]).unwrap();
        w.begin_node(b"").unwrap();
        w.property_u32(b"reg-names", 1).unwrap();
        w.property_u32(b"reg", 2).unwrap();
        let distinct = NAME_SLOTS; // more than the index holds
        for round in 0..2u32 {
            w.begin_node(format!("n{round}").as_bytes()).unwrap();
            for i in 0..distinct {
                w.property_u32(format!("p{i}").as_bytes(), i as u32 + round)
                    .unwrap();
            }
            w.property_u32(b"reg", 3).unwrap();
            w.end_node().unwrap();
        }
        w.end_node().unwrap();
        let blob = w.finish(0).unwrap();
        let fdt = fdt::Fdt::new(blob).unwrap();
        let root = fdt.find_node("/").unwrap();
        assert_eq!(root.property("reg").unwrap().as_usize(), Some(2));
        assert_eq!(root.property("reg-names").unwrap().as_usize(), Some(1));
        for round in 0..2usize {
            let node = fdt.find_node(&format!("/n{round}")).unwrap();
            for i in (0..distinct).step_by(97) {
                let p = node.property(&format!("p{i}")).unwrap();
                assert_eq!(p.as_usize(), Some(i + round));
            }
        }
        let count = |name: &str| fdt.strings().filter(|s| *s == name).count();
        assert_eq!(count("reg"), 1);
        assert_eq!(count("p0"), 1, "indexed names are stored once");
        assert_eq!(
            count(&format!("p{}", distinct - 1)),
            2,
            "unindexed names are appended again"
        );
    }
}
