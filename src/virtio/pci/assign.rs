//! PCI host bridge windows and BAR assignment, for firmware that leaves BARs unassigned (VOF on
//! pseries) and for translating bus addresses into CPU addresses (any PHB with `ranges`).
//!
//! A host bridge's `ranges` (IEEE 1275 PCI binding) lists its windows: I/O, 32-bit memory and
//! 64-bit memory, each a bus address range and the CPU address it appears at. [`assign_bars`]
//! keeps every BAR firmware already placed inside a window (and every range the caller
//! reserves, e.g. from `assigned-addresses`), then gives each unassigned BAR the lowest free,
//! naturally aligned place in a window of its kind: a bump allocator per window. 64-bit BARs go
//! to the 64-bit window when there is one, else to the 32-bit one; 32-bit BARs only below
//! 4 GiB; I/O BARs to the I/O window, never at bus address 0 (which reads as unassigned).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::bars::{self, Bar, BarKind, Bars};
use super::{PciAddress, PciConfigAccess, cfg};

/// The kind of a host bridge window (phys.hi space code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Io,
    Mem32,
    Mem64,
}

/// One window of a host bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub space: Space,
    pub prefetchable: bool,
    pub bus_base: u64,
    pub cpu_base: u64,
    pub size: u64,
}

impl Window {
    /// Whether `[bus, bus + len)` lies inside the window.
    pub fn contains(&self, bus: u64, len: u64) -> bool {
        bus >= self.bus_base
            && bus
                .checked_add(len)
                .is_some_and(|end| end <= self.bus_base + self.size)
    }

    fn serves(&self, kind: BarKind) -> bool {
        match kind {
            BarKind::Io => self.space == Space::Io,
            BarKind::Mem32 | BarKind::Mem64 => self.space != Space::Io,
        }
    }
}

fn cells(bytes: &[u8], n: usize) -> Option<(u64, &[u8])> {
    let (head, rest) = bytes.split_at_checked(4 * n)?;
    let mut v = 0u64;
    for c in head.chunks_exact(4) {
        v = v.checked_shl(32)? | u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    Some((v, rest))
}

/// Decodes a PCI host bridge's `ranges`: each entry is the child PCI address (3 cells:
/// phys.hi, phys.mid, phys.lo), the parent address (`parent_address_cells`, 1 or 2) and the
/// size (`size_cells`, 1 or 2). Configuration-space entries are ignored; windows that wrap
/// around 2^64, or are empty, are refused.
pub fn parse_ranges(
    ranges: &[u8],
    parent_address_cells: u32,
    size_cells: u32,
) -> Result<Vec<Window>, &'static str> {
    if !(1..=2).contains(&parent_address_cells) || !(1..=2).contains(&size_cells) {
        return Err("ranges: parent #address-cells or #size-cells is not 1 or 2");
    }
    let entry = 4 * (3 + parent_address_cells + size_cells) as usize;
    if !ranges.len().is_multiple_of(entry) {
        return Err("ranges: length is not a multiple of the entry size");
    }
    let mut windows = Vec::new();
    for e in ranges.chunks_exact(entry) {
        let (hi, rest) = cells(e, 1).ok_or("ranges")?;
        let (bus_base, rest) = cells(rest, 2).ok_or("ranges")?;
        let (cpu_base, rest) = cells(rest, parent_address_cells as usize).ok_or("ranges")?;
        let (size, _) = cells(rest, size_cells as usize).ok_or("ranges")?;
        let space = match (hi >> 24) & 3 {
            0 => continue,
            1 => Space::Io,
            2 => Space::Mem32,
            _ => Space::Mem64,
        };
        if size == 0 {
            continue;
        }
        if bus_base.checked_add(size).is_none() || cpu_base.checked_add(size).is_none() {
            return Err("ranges: a window wraps around 2^64");
        }
        windows.push(Window {
            space,
            prefetchable: hi & (1 << 30) != 0,
            bus_base,
            cpu_base,
            size,
        });
    }
    Ok(windows)
}

/// The CPU address of a BAR's bus address range, when it lies in a window of its kind.
/// A BAR at bus address 0 counts as unassigned.
pub fn bar_cpu_address(windows: &[Window], bar: &Bar) -> Option<u64> {
    if bar.addr == 0 {
        return None;
    }
    windows
        .iter()
        .find(|w| w.serves(bar.kind) && w.contains(bar.addr, bar.size))
        .map(|w| w.cpu_base + (bar.addr - w.bus_base))
}

/// A bump allocator over a host bridge's windows.
#[derive(Clone, Debug)]
pub struct Allocator {
    /// (window, next free bus address)
    windows: Vec<(Window, u64)>,
}

impl Allocator {
    pub fn new(windows: &[Window]) -> Self {
        Allocator {
            windows: windows
                .iter()
                .map(|w| {
                    // Bus address 0 means "unassigned"; the first 4 KiB of I/O space are the
                    // legacy ISA ports.
                    let floor = if w.space == Space::Io { 0x1000 } else { 1 };
                    (*w, w.bus_base.max(floor))
                })
                .collect(),
        }
    }

    /// Nothing below the end of `[bus, bus + len)` is handed out from the window holding it.
    pub fn reserve(&mut self, bus: u64, len: u64) {
        for (w, next) in &mut self.windows {
            if w.contains(bus, len) {
                *next = (*next).max(bus + len);
            }
        }
    }

    /// A naturally aligned bus address for `bar`, or `None` when no window has room.
    pub fn alloc(&mut self, bar: &Bar) -> Option<u64> {
        let order: &[Space] = match bar.kind {
            BarKind::Io => &[Space::Io],
            BarKind::Mem32 => &[Space::Mem32],
            BarKind::Mem64 => &[Space::Mem64, Space::Mem32],
        };
        for space in order {
            for (w, next) in self.windows.iter_mut().filter(|(w, _)| w.space == *space) {
                let Some(start) = next.checked_next_multiple_of(bar.size) else {
                    continue;
                };
                let Some(end) = start.checked_add(bar.size) else {
                    continue;
                };
                if !w.contains(start, bar.size) {
                    continue;
                }
                if bar.kind == BarKind::Mem32 && end > 1 << 32 {
                    continue;
                }
                *next = end;
                return Some(start);
            }
        }
        None
    }
}

/// What [`assign_bars`] did to one function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assigned {
    pub at: PciAddress,
    /// BARs after assignment (addresses as now programmed).
    pub bars: Bars,
    /// (BAR index, new bus address) for each BAR this call programmed.
    pub programmed: Vec<(u8, u64)>,
    /// BARs left without an address, and why.
    pub problems: Vec<String>,
}

/// Gives every BAR of `functions` (type 0 headers) an address inside `windows`: see the module
/// docs. `reserved` are bus ranges in use that no BAR shows (firmware's `assigned-addresses`).
/// Returns what happened per function; a function whose BARs cannot be read is reported with
/// empty `bars`. Decoding is left as it was (probing turns it on).
pub fn assign_bars<C: PciConfigAccess + ?Sized>(
    cfg: &mut C,
    functions: &[PciAddress],
    windows: &[Window],
    reserved: &[(u64, u64)],
) -> Vec<Assigned> {
    let mut alloc = Allocator::new(windows);
    for &(bus, len) in reserved {
        alloc.reserve(bus, len);
    }
    let mut out: Vec<Assigned> = functions
        .iter()
        .map(|&at| {
            let mut a = Assigned {
                at,
                bars: [None; 6],
                programmed: Vec::new(),
                problems: Vec::new(),
            };
            if cfg.read8(at, cfg::HEADER_TYPE) & 0x7f != 0 {
                a.problems
                    .push(String::from("not a type 0 header: BARs left alone"));
                return a;
            }
            match bars::read_bars(cfg, at) {
                Ok(b) => a.bars = b,
                Err(e) => a.problems.push(format!("{e}")),
            }
            a
        })
        .collect();
    // Everything firmware placed stays where it is.
    for a in &out {
        for bar in a.bars.iter().flatten() {
            if bar_cpu_address(windows, bar).is_some() {
                alloc.reserve(bar.addr, bar.size);
            }
        }
    }
    // Largest BARs first: with natural alignment that packs the windows without holes.
    let mut todo: Vec<(usize, Bar)> = out
        .iter()
        .enumerate()
        .flat_map(|(i, a)| a.bars.iter().flatten().map(move |b| (i, *b)))
        .filter(|(_, b)| bar_cpu_address(windows, b).is_none())
        .collect();
    // Stable: equal sizes stay in function order.
    crate::small_sort::sort_by(&mut todo, |x, y| x.1.size > y.1.size);
    for (i, bar) in todo {
        let a = &mut out[i];
        match alloc.alloc(&bar) {
            Some(addr) => {
                let command = cfg.read16(a.at, cfg::COMMAND);
                cfg.write16(
                    a.at,
                    cfg::COMMAND,
                    command & !(cfg::COMMAND_IO | cfg::COMMAND_MEMORY),
                );
                bars::write_bar(cfg, a.at, &bar, addr);
                cfg.write16(a.at, cfg::COMMAND, command);
                a.programmed.push((bar.index, addr));
                if let Some(b) = &mut a.bars[usize::from(bar.index)] {
                    b.addr = addr;
                }
            }
            None => a.problems.push(format!(
                "BAR {} ({}, {:#x} bytes) does not fit any host bridge window",
                bar.index,
                bar.kind.as_str(),
                bar.size
            )),
        }
    }
    for a in &mut out {
        crate::small_sort::sort_by(&mut a.programmed, |x, y| x < y);
    }
    out
}
