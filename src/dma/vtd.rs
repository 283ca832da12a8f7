//! Intel VT-d DMA remapping (Intel VT-d specification, chapters 3, 6, 9 and 11), legacy mode:
//! root table → context table → second-level page tables, one domain (context entry, domain
//! ID, page table) per PCI function.
//!
//! Portable and tested on the host: the register sequence runs over a [`Registers`] window
//! (`src/arch/x86_64/` maps the unit's MMIO page), table pages come from a [`Dma`] (the
//! IOMMU's own DMA path: heap memory, or the shared pool of a secure guest, since the host
//! walks the tables), and the CPU caches are written back through a [`CacheFlush`] hook when
//! the unit says its page walks are not coherent (`ECAP.C = 0`, as QEMU's).
//!
//! # The sequence
//!
//! 1. [`VtdUnit::probe`]: VER, CAP, ECAP; the page-table depth ([`Agaw`]: the smallest the unit
//!    supports, 3 levels for 39 bits on QEMU); the fault-recording and IOTLB register offsets.
//! 2. [`VtdUnit::enable`]: translation and queued invalidation off if something left them on,
//!    old faults recorded and cleared, an empty root table set with `GCMD.SRTP`, global
//!    context-cache and IOTLB invalidation, then `GCMD.TE`. From here every device that goes
//!    through the unit and has no context entry faults: nothing bypasses.
//! 3. [`VtdUnit::attach`]: a context table for the bus if needed, the context entry (TT = 0,
//!    second-level translation, the domain's AW and DID). Not-present entries are not cached
//!    unless `CAP.CM` (caching mode), so only then is the context cache invalidated.
//! 4. Per request: [`SlTable::map`] writes leaf entries (and, under caching mode only, an
//!    IOTLB invalidation follows); a static domain (`sg.iommu.map=static`) maps all RAM once
//!    instead, with 2 MiB entries (level-2, PS) where `CAP.SLLPS` offers them
//!    ([`SlTable::set_large_pages`]); [`SlTable::unmap`] clears them and
//!    [`VtdUnit::flush_iotlb`] invalidates them: page-selective (`CAP.PSI`, one aligned
//!    power-of-two block up to `CAP.MAMV`) or else domain-selective.
//! 5. [`VtdUnit::collect_faults`] reads FSTS and the fault-recording registers and clears them.
//!
//! # Why register-based invalidation
//!
//! The unit offers both register-based and queued invalidation (QEMU: `ECAP.QI`). This guest
//! issues one invalidation at a time and waits for it, so the queue would only add a page of
//! descriptors, a wait descriptor with a status write and its polling for the same effect; the
//! register interface is one 64-bit write and one poll per command, and the commands are
//! exactly what the IOMMU counts (`iommu_calls`). Register-based invalidation is not allowed
//! while queued invalidation is enabled, so [`VtdUnit::enable`] turns QI off if it is on.
//!
//! # Trust
//!
//! The tables may live in shared memory the host can write. The driver never reads an entry
//! back: where tables are and which entries are present is kept in private memory, so a host
//! that scribbles over a table can make its own device fault, never make the guest write
//! elsewhere.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use super::{Dma, DmaConstraints, DmaError, SharedRegion};
use crate::virtio::regs::Registers;
use crate::virtio::wait::{Clock, Deadline};

/// Register offsets (VT-d 11.4).
pub mod reg {
    pub const VER: usize = 0x00;
    pub const CAP: usize = 0x08;
    pub const ECAP: usize = 0x10;
    pub const GCMD: usize = 0x18;
    pub const GSTS: usize = 0x1c;
    pub const RTADDR: usize = 0x20;
    pub const CCMD: usize = 0x28;
    pub const FSTS: usize = 0x34;
    pub const FECTL: usize = 0x38;
}

/// Global command / status bits (the same positions in GCMD and GSTS).
pub mod gcmd {
    pub const TE: u32 = 1 << 31;
    pub const SRTP: u32 = 1 << 30;
    pub const WBF: u32 = 1 << 27;
    pub const QIE: u32 = 1 << 26;
    /// GSTS bits that are the state of something enabled (TES, AFLS, QIES, IRES, CFIS); the
    /// rest are one-shot commands that a GCMD write must not repeat (VT-d 11.4.4).
    pub const PERSISTENT: u32 = 0x96ff_ffff;
}

/// Context-command (CCMD) bits.
mod ccmd {
    pub const ICC: u64 = 1 << 63;
    pub const GLOBAL: u64 = 1 << 61;
    pub const DEVICE: u64 = 3 << 61;
    pub const CAIG_MASK: u64 = 3 << 59;
}

/// IOTLB invalidate register bits.
mod iotlb {
    pub const IVT: u64 = 1 << 63;
    pub const GLOBAL: u64 = 1 << 60;
    pub const DOMAIN: u64 = 2 << 60;
    pub const PAGE: u64 = 3 << 60;
    pub const IAIG_MASK: u64 = 3 << 57;
    pub const DRAIN_READS: u64 = 1 << 49;
    pub const DRAIN_WRITES: u64 = 1 << 48;
}

/// FSTS bits.
mod fsts {
    pub const PFO: u32 = 1 << 0;
    pub const PPF: u32 = 1 << 1;
    /// Write-1-to-clear error bits: PFO, AFO, APF, IQE, ICE, ITE.
    pub const W1C: u32 = 0x7d;
}

/// Second-level entry bits.
pub const PTE_R: u64 = 1 << 0;
pub const PTE_W: u64 = 1 << 1;
/// Page size: a level-2 entry that maps 2 MiB itself.
pub const PTE_PS: u64 = 1 << 7;
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;
const PAGE: u64 = 4096;
const ENTRIES: usize = 512;

/// Writes the CPU caches back over `len` bytes at `ptr`, for a unit whose page walks do not
/// snoop them (`ECAP.C = 0`). The x86 guest uses `clflush`; host tests do nothing.
pub type CacheFlush = fn(*const u8, usize);

/// A [`CacheFlush`] that does nothing (coherent units, host tests).
pub fn no_flush(_: *const u8, _: usize) {}

/// CAP and ECAP, decoded (VT-d 11.4.2, 11.4.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    pub cap: u64,
    pub ecap: u64,
}

impl Caps {
    /// Domain IDs the unit supports: 2^(4 + 2·ND).
    pub fn domains(&self) -> u32 {
        1 << (4 + 2 * (self.cap & 7).min(6))
    }
    /// Required write-buffer flushing.
    pub fn rwbf(&self) -> bool {
        self.cap & (1 << 4) != 0
    }
    /// Caching mode: not-present entries may be cached (an emulated IOMMU that shadows).
    pub fn caching_mode(&self) -> bool {
        self.cap & (1 << 7) != 0
    }
    /// Supported adjusted guest address widths, bit n: AW code n.
    pub fn sagaw(&self) -> u8 {
        ((self.cap >> 8) & 0x1f) as u8
    }
    /// Maximum guest address width in bits.
    pub fn mgaw(&self) -> u32 {
        ((self.cap >> 16) & 0x3f) as u32 + 1
    }
    /// Byte offset of the first fault-recording register.
    pub fn fault_offset(&self) -> usize {
        (((self.cap >> 24) & 0x3ff) as usize) * 16
    }
    /// Page-selective IOTLB invalidation.
    pub fn psi(&self) -> bool {
        self.cap & (1 << 39) != 0
    }
    /// Fault-recording registers.
    pub fn fault_records(&self) -> usize {
        ((self.cap >> 40) & 0xff) as usize + 1
    }
    /// Largest address mask of a page-selective invalidation.
    pub fn mamv(&self) -> u32 {
        ((self.cap >> 48) & 0x3f) as u32
    }
    /// Page walks snoop the CPU caches.
    pub fn coherent(&self) -> bool {
        self.ecap & 1 != 0
    }
    pub fn queued_invalidation(&self) -> bool {
        self.ecap & (1 << 1) != 0
    }
    pub fn pass_through(&self) -> bool {
        self.ecap & (1 << 6) != 0
    }
    /// Byte offset of the IOTLB registers (IVA; the IOTLB invalidate register is 8 further).
    pub fn iotlb_offset(&self) -> usize {
        (((self.ecap >> 8) & 0x3ff) as usize) * 16
    }
}

/// The page-table shape of the domains: levels, IOVA bits, and the context entry's AW code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agaw {
    pub levels: u32,
    pub bits: u32,
    pub code: u64,
}

impl Agaw {
    /// The smallest width the unit supports among 39 (3 levels), 48 (4) and 57 bits (5): the
    /// IOVAs this guest uses fit in any, and fewer levels are fewer memory reads per walk.
    pub fn choose(caps: &Caps) -> Result<Agaw, VtdError> {
        (1..=3u64)
            .find(|&code| caps.sagaw() & (1 << code) != 0)
            .map(|code| Agaw {
                levels: code as u32 + 2,
                bits: 30 + 9 * code as u32,
                code,
            })
            .ok_or(VtdError::NoAgaw {
                sagaw: caps.sagaw(),
            })
    }

    /// The IOVAs a domain may use: below both the table's reach and MGAW.
    pub fn input_range(&self, caps: &Caps) -> (u64, u64) {
        let bits = self.bits.min(caps.mgaw()).min(63);
        (0, (1u64 << bits) - 1)
    }
}

/// A root-table entry (lo, hi) pointing at a context table.
pub fn root_entry(context_table: u64) -> (u64, u64) {
    ((context_table & PTE_ADDR) | 1, 0)
}

/// A legacy context entry (lo, hi): present, second-level translation (TT = 0) through the
/// table at `slptptr`, address width `aw_code`, domain `did`.
pub fn context_entry(slptptr: u64, did: u16, aw_code: u64) -> (u64, u64) {
    (
        (slptptr & PTE_ADDR) | 1,
        (aw_code & 7) | (u64::from(did) << 8),
    )
}

/// The index of `iova` in a table of level `level` (1: the last level, 4 KiB pages).
fn index(iova: u64, level: u32) -> usize {
    ((iova >> (12 + 9 * (level - 1))) & 511) as usize
}

/// Why the unit or a domain failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VtdError {
    /// The registers read all ones: nothing answers at the DMAR's address.
    NoUnit,
    /// SAGAW names no width this driver builds tables for.
    NoAgaw { sagaw: u8 },
    /// A status bit did not change within the timeout.
    Timeout { what: &'static str },
    /// An invalidation completed with IAIG/CAIG 0: the unit did not do it.
    InvalidationRefused { what: &'static str },
    /// Table memory could not be had.
    Dma(DmaError),
    /// No domain ID left.
    NoDomainId,
    /// The function already has a context entry.
    AlreadyAttached { sid: u16 },
    /// CAP/ECAP place the IOTLB or fault-recording registers outside the register window.
    BadLayout { offset: usize },
}

impl VtdError {
    /// The code of [`DmaError::Platform`] (negative: no status register to quote).
    pub fn code(&self) -> i64 {
        match self {
            VtdError::NoUnit => -10,
            VtdError::NoAgaw { .. } => -11,
            VtdError::Timeout { .. } => -12,
            VtdError::InvalidationRefused { .. } => -13,
            VtdError::Dma(_) => -14,
            VtdError::NoDomainId => -15,
            VtdError::AlreadyAttached { .. } => -16,
            VtdError::BadLayout { .. } => -17,
        }
    }
}

impl From<VtdError> for DmaError {
    fn from(e: VtdError) -> Self {
        match e {
            VtdError::Dma(d) => d,
            e => DmaError::Platform { code: e.code() },
        }
    }
}

impl fmt::Display for VtdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            VtdError::NoUnit => f.write_str("VT-d registers read all ones"),
            VtdError::NoAgaw { sagaw } => {
                write!(f, "SAGAW {sagaw:#x}: no 39-, 48- or 57-bit page tables")
            }
            VtdError::Timeout { what } => write!(f, "{what} did not complete"),
            VtdError::InvalidationRefused { what } => write!(f, "{what}: the unit did not do it"),
            VtdError::Dma(e) => write!(f, "table memory: {e}"),
            VtdError::NoDomainId => f.write_str("no domain ID left"),
            VtdError::AlreadyAttached { sid } => {
                write!(f, "{sid:#06x} already has a context entry")
            }
            VtdError::BadLayout { offset } => {
                write!(
                    f,
                    "CAP/ECAP put registers at {offset:#x}, outside the unit's window"
                )
            }
        }
    }
}

/// One table page and, in private memory, what is below it.
struct Table {
    region: SharedRegion,
    /// Non-leaf: the next-level tables by index. Leaf: empty.
    next: Vec<Option<Box<Table>>>,
    /// Leaf: which entries map a page.
    present: [u64; ENTRIES / 64],
}

impl Table {
    fn new(dma: &dyn Dma, leaf: bool) -> Result<Box<Table>, DmaError> {
        let region = dma.alloc_shared(PAGE as usize, PAGE as usize, &DmaConstraints::NONE)?;
        let next = if leaf {
            Vec::new()
        } else {
            (0..ENTRIES).map(|_| None).collect()
        };
        Ok(Box::new(Table {
            region,
            next,
            present: [0; ENTRIES / 64],
        }))
    }

    fn write(&self, i: usize, value: u64, flush: CacheFlush) {
        self.region.write_u64(8 * i, value);
        // SAFETY: `i < 512`, inside the 4 KiB region; only the address is formed.
        flush(unsafe { self.region.cpu_ptr().as_ptr().add(8 * i) }, 8);
    }

    fn is_present(&self, i: usize) -> bool {
        self.present[i / 64] & (1 << (i % 64)) != 0
    }

    fn set_present(&mut self, i: usize, on: bool) {
        if on {
            self.present[i / 64] |= 1 << (i % 64);
        } else {
            self.present[i / 64] &= !(1 << (i % 64));
        }
    }

    /// Gives every page of this subtree back.
    ///
    /// # Safety
    /// The unit no longer walks the tables.
    unsafe fn free(self, dma: &dyn Dma) -> u64 {
        let mut n = 1;
        let Table { region, next, .. } = self;
        for t in next.into_iter().flatten() {
            // SAFETY: forwarded.
            n += unsafe { (*t).free(dma) };
        }
        // SAFETY: forwarded; the region came from `dma`.
        let _ = unsafe { dma.free_shared(region) };
        n
    }
}

/// The level-2 table of `iova` in the `levels`-deep table at `root`, creating the tables that
/// are missing (from `dma`, counted in `made`).
fn directory_in<'t>(
    root: &'t mut Table,
    levels: u32,
    iova: u64,
    dma: &dyn Dma,
    flush: CacheFlush,
    made: &mut u64,
) -> Result<&'t mut Table, DmaError> {
    let mut t = root;
    for level in (3..=levels).rev() {
        let i = index(iova, level);
        if t.next[i].is_none() {
            let child = Table::new(dma, false)?;
            let addr = child.region.device_addr().as_u64();
            // Non-leaf entries grant both: the leaf decides (access needs every level).
            t.write(i, (addr & PTE_ADDR) | PTE_R | PTE_W, flush);
            t.next[i] = Some(child);
            *made += 1;
        }
        t = t.next[i].as_deref_mut().expect("just made");
    }
    Ok(t)
}

/// A domain's second-level page table, `levels` deep: 4 KiB pages, and 2 MiB pages (level-2
/// entries with PS set) where [`SlTable::set_large_pages`] allows them.
pub struct SlTable<'d> {
    dma: &'d dyn Dma,
    flush: CacheFlush,
    levels: u32,
    root: Box<Table>,
    /// Maps use 2 MiB entries wherever an aligned 2 MiB of the run fits one.
    large_pages: bool,
    /// Table pages allocated (the root included).
    pub table_pages: u64,
    /// 4 KiB pages mapped (a 2 MiB entry counts 512).
    pub mapped_pages: u64,
    /// 2 MiB entries present.
    pub large_entries: u64,
}

/// 4 KiB pages in a 2 MiB page.
const LARGE_PAGES: u64 = ENTRIES as u64;
const LARGE: u64 = LARGE_PAGES * PAGE;

impl<'d> SlTable<'d> {
    pub fn new(dma: &'d dyn Dma, levels: u32, flush: CacheFlush) -> Result<Self, DmaError> {
        assert!((2..=5).contains(&levels), "page tables of {levels} levels");
        Ok(SlTable {
            dma,
            flush,
            levels,
            root: Table::new(dma, false)?,
            large_pages: false,
            table_pages: 1,
            mapped_pages: 0,
            large_entries: 0,
        })
    }

    /// Lets maps use 2 MiB entries (the unit must offer them: `CAP.SLLPS` bit 0). For static
    /// mappings: a 2 MiB entry can only be unmapped whole, by a run that covers it.
    pub fn set_large_pages(&mut self, on: bool) {
        self.large_pages = on;
    }

    /// The device address of the top-level table (for the context entry).
    pub fn root_addr(&self) -> u64 {
        self.root.region.device_addr().as_u64()
    }

    pub fn levels(&self) -> u32 {
        self.levels
    }

    /// The level-2 table (its entries map 2 MiB each) of `iova`, if every table on the way
    /// exists. Its `present` bits are its 2 MiB entries; `next` its leaf tables.
    fn directory(&self, iova: u64) -> Option<&Table> {
        let mut t = &*self.root;
        for level in (3..=self.levels).rev() {
            t = t.next[index(iova, level)].as_deref()?;
        }
        Some(t)
    }

    /// The level-2 table of `iova`, creating what is missing.
    fn directory_mut(&mut self, iova: u64) -> Result<&mut Table, DmaError> {
        let made = &mut self.table_pages;
        directory_in(
            &mut self.root,
            self.levels,
            iova,
            self.dma,
            self.flush,
            made,
        )
    }

    /// The leaf table of `iova`, creating what is missing. Never under a 2 MiB entry (callers
    /// check that none covers `iova`).
    fn leaf_mut(&mut self, iova: u64) -> Result<&mut Table, DmaError> {
        let (dma, flush) = (self.dma, self.flush);
        let made = &mut self.table_pages;
        let d = directory_in(&mut self.root, self.levels, iova, dma, flush, made)?;
        let i = index(iova, 2);
        debug_assert!(!d.is_present(i), "a leaf table under a 2 MiB entry");
        if d.next[i].is_none() {
            let child = Table::new(dma, true)?;
            let addr = child.region.device_addr().as_u64();
            // Non-leaf entries grant both: the leaf decides (access needs every level).
            d.write(i, (addr & PTE_ADDR) | PTE_R | PTE_W, flush);
            d.next[i] = Some(child);
            *made += 1;
        }
        Ok(d.next[i].as_deref_mut().expect("just made"))
    }

    /// Calls `f(first, pages, covered)` for each piece of the run `pages` pages at `iova` that
    /// lies in one 2 MiB region, with how the table covers it: `Some(true)` a 2 MiB entry,
    /// `Some(false)` a leaf table, `None` nothing. Stops when `f` returns false; returns
    /// whether every call returned true.
    fn each_region(
        &self,
        iova: u64,
        pages: u64,
        mut f: impl FnMut(u64, u64, Option<(bool, &Table)>) -> bool,
    ) -> bool {
        let end = iova + pages * PAGE;
        let mut at = iova;
        while at < end {
            let stop = ((at / LARGE) + 1).saturating_mul(LARGE).min(end);
            let n = (stop - at) / PAGE;
            let cover = self.directory(at).and_then(|d| {
                let i = index(at, 2);
                if d.is_present(i) {
                    Some((true, d))
                } else {
                    d.next[i].as_deref().map(|l| (false, l))
                }
            });
            if !f(at, n, cover) {
                return false;
            }
            at = stop;
        }
        true
    }

    /// Whether any page of the run is mapped.
    fn any_mapped(&self, iova: u64, pages: u64) -> bool {
        !self.each_region(iova, pages, |at, n, cover| match cover {
            None => true,
            Some((true, _)) => false,
            Some((false, leaf)) => (0..n).all(|p| !leaf.is_present(index(at + p * PAGE, 1))),
        })
    }

    /// Whether every page of the run is mapped, and every 2 MiB entry it touches it covers
    /// whole.
    fn all_mapped(&self, iova: u64, pages: u64) -> bool {
        self.each_region(iova, pages, |at, n, cover| match cover {
            None => false,
            Some((true, _)) => n == LARGE_PAGES,
            Some((false, leaf)) => (0..n).all(|p| leaf.is_present(index(at + p * PAGE, 1))),
        })
    }

    /// Maps `pages` pages at `iova` to `phys..` with `perm` (`PTE_R` / `PTE_W` bits), with a
    /// 2 MiB entry for every aligned 2 MiB of the run that fits one when large pages are on.
    /// All or nothing: a page already mapped refuses the whole run, and a table that cannot be
    /// allocated undoes what this call mapped (empty tables stay for later use).
    pub fn map(&mut self, iova: u64, phys: u64, pages: u64, perm: u64) -> Result<(), DmaError> {
        let len = pages.checked_mul(PAGE);
        let end = len.and_then(|l| iova.checked_add(l));
        let top = 1u64.checked_shl(12 + 9 * self.levels).unwrap_or(u64::MAX);
        if pages == 0
            || !iova.is_multiple_of(PAGE)
            || !phys.is_multiple_of(PAGE)
            || end.is_none_or(|e| e > top)
        {
            return Err(DmaError::InvalidRequest(
                "VT-d map outside the table or unaligned",
            ));
        }
        if phys
            .checked_add(len.unwrap_or(0))
            .is_none_or(|e| e > PTE_ADDR + PAGE)
        {
            return Err(DmaError::InvalidRequest(
                "VT-d map of an address beyond 52 bits",
            ));
        }
        if self.any_mapped(iova, pages) {
            return Err(DmaError::InvalidRequest("IOVA already mapped"));
        }
        let flush = self.flush;
        let bits = perm & (PTE_R | PTE_W);
        let mut p = 0;
        while p < pages {
            let (at, to) = (iova + p * PAGE, phys + p * PAGE);
            let large = self.large_pages
                && at.is_multiple_of(LARGE)
                && to.is_multiple_of(LARGE)
                && pages - p >= LARGE_PAGES;
            let done = if large {
                self.map_large(at, to, bits)
            } else {
                self.leaf_mut(at).map(|leaf| {
                    let i = index(at, 1);
                    leaf.write(i, (to & PTE_ADDR) | bits, flush);
                    leaf.set_present(i, true);
                    1
                })
            };
            match done {
                Ok(n) => {
                    p += n;
                    self.mapped_pages += n;
                }
                Err(e) => {
                    if p > 0 {
                        let _ = self.unmap(iova, p);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// One 2 MiB entry at `iova` (aligned, nothing mapped there); returns the pages mapped. A
    /// leaf table left there by earlier 4 KiB mappings stays, and the 2 MiB become 512 entries
    /// of it instead.
    fn map_large(&mut self, iova: u64, phys: u64, bits: u64) -> Result<u64, DmaError> {
        let flush = self.flush;
        let d = self.directory_mut(iova)?;
        let i = index(iova, 2);
        if let Some(leaf) = d.next[i].as_deref_mut() {
            for p in 0..LARGE_PAGES {
                let j = index(iova + p * PAGE, 1);
                leaf.write(j, ((phys + p * PAGE) & PTE_ADDR) | bits, flush);
                leaf.set_present(j, true);
            }
            return Ok(LARGE_PAGES);
        }
        d.write(i, (phys & PTE_ADDR) | bits | PTE_PS, flush);
        d.set_present(i, true);
        self.large_entries += 1;
        Ok(LARGE_PAGES)
    }

    /// Clears the entries of `pages` pages at `iova`; every one must be mapped, and a 2 MiB
    /// entry covered whole (else nothing changes). The IOTLB still holds them until
    /// invalidated.
    pub fn unmap(&mut self, iova: u64, pages: u64) -> Result<(), DmaError> {
        if pages == 0
            || !iova.is_multiple_of(PAGE)
            || iova.checked_add(pages.saturating_mul(PAGE)).is_none()
        {
            return Err(DmaError::InvalidRequest("VT-d unmap unaligned or empty"));
        }
        if !self.all_mapped(iova, pages) {
            return Err(DmaError::InvalidRequest(
                "IOVA not mapped, or part of a 2 MiB page",
            ));
        }
        let flush = self.flush;
        let mut p = 0;
        while p < pages {
            let at = iova + p * PAGE;
            let d = self.directory_mut(at)?;
            let i = index(at, 2);
            if d.is_present(i) {
                d.write(i, 0, flush);
                d.set_present(i, false);
                self.large_entries -= 1;
                self.mapped_pages -= LARGE_PAGES;
                p += LARGE_PAGES;
                continue;
            }
            let leaf = self.leaf_mut(at)?;
            let j = index(at, 1);
            leaf.write(j, 0, flush);
            leaf.set_present(j, false);
            self.mapped_pages -= 1;
            p += 1;
        }
        Ok(())
    }

    /// Gives every table page back; returns how many.
    ///
    /// # Safety
    /// The unit no longer walks the table: its context entry is gone and invalidated, or
    /// translation is off.
    pub unsafe fn free(self) -> u64 {
        // SAFETY: forwarded.
        unsafe { (*self.root).free(self.dma) }
    }
}

/// A fault the unit recorded (VT-d 11.4.14).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdFault {
    /// Requester ID (`bus << 8 | devfn`).
    pub sid: u16,
    /// Fault reason (VT-d 7.1.3): 2 context entry not present, 5/6 no write/read permission,
    /// 7 a page-table entry not present, ...
    pub reason: u8,
    /// The page address of the faulting request.
    pub address: u64,
    /// A read (else a write).
    pub read: bool,
}

impl VtdFault {
    pub fn reason_str(&self) -> &'static str {
        match self.reason {
            1 => "root entry not present",
            2 => "context entry not present",
            3 => "context entry invalid",
            4 => "address beyond MGAW",
            5 => "write not permitted",
            6 => "read not permitted",
            7 => "page-table entry not present",
            8 => "root table unreadable",
            9 => "context table unreadable",
            0xa => "root entry reserved bits",
            0xb => "context entry reserved bits",
            0xc => "page-table entry reserved bits",
            0xd => "translation type blocked",
            _ => "other",
        }
    }
}

/// The commands the unit was given, for the record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VtdCounts {
    pub context_invalidations: u64,
    pub iotlb_global: u64,
    pub iotlb_domain: u64,
    pub iotlb_page: u64,
    /// Pages covered by page-selective invalidations.
    pub iotlb_page_pages: u64,
    pub write_buffer_flushes: u64,
    pub faults: u64,
}

impl VtdCounts {
    /// Every invalidation and flush command.
    pub fn commands(&self) -> u64 {
        self.context_invalidations
            + self.iotlb_global
            + self.iotlb_domain
            + self.iotlb_page
            + self.write_buffer_flushes
    }
}

/// Faults kept for the record.
pub const FAULTS_KEPT: usize = 16;

/// One DMA-remapping unit.
pub struct VtdUnit<'d, R: Registers, C: Clock> {
    regs: R,
    clock: C,
    timeout_us: u64,
    dma: &'d dyn Dma,
    flush: CacheFlush,
    pub version: u32,
    pub caps: Caps,
    pub agaw: Agaw,
    root: Option<SharedRegion>,
    /// Context tables by bus (private record of where they are).
    contexts: Vec<Option<SharedRegion>>,
    /// Context entries present, by `bus << 8 | devfn`.
    attached: Vec<u64>,
    next_did: u32,
    pub counts: VtdCounts,
    pub faults: Vec<VtdFault>,
    /// Faults found by `enable`, left from before this guest.
    pub faults_before: u64,
}

impl<'d, R: Registers, C: Clock> VtdUnit<'d, R, C> {
    fn read64(&mut self, off: usize) -> u64 {
        u64::from(self.regs.read32(off)) | u64::from(self.regs.read32(off + 4)) << 32
    }

    /// Low dword first: QEMU acts on a command register when its high dword is written.
    fn write64(&mut self, off: usize, v: u64) {
        self.regs.write32(off, v as u32);
        self.regs.write32(off + 4, (v >> 32) as u32);
    }

    /// Reads VER, CAP and ECAP and chooses the table depth. Touches nothing.
    pub fn probe(
        mut regs: R,
        clock: C,
        timeout_us: u64,
        dma: &'d dyn Dma,
        flush: CacheFlush,
    ) -> Result<Self, VtdError> {
        let version = regs.read32(reg::VER);
        let cap = u64::from(regs.read32(reg::CAP)) | u64::from(regs.read32(reg::CAP + 4)) << 32;
        let ecap = u64::from(regs.read32(reg::ECAP)) | u64::from(regs.read32(reg::ECAP + 4)) << 32;
        if version == u32::MAX || cap == u64::MAX {
            return Err(VtdError::NoUnit);
        }
        let caps = Caps { cap, ecap };
        // The IOTLB registers (16 bytes) and the fault-recording registers (16 each) must lie
        // in the window: a hostile CAP/ECAP must not send the driver elsewhere.
        let iotlb_end = caps.iotlb_offset() + 16;
        let faults_end = caps.fault_offset() + 16 * caps.fault_records();
        for (offset, end) in [
            (caps.iotlb_offset(), iotlb_end),
            (caps.fault_offset(), faults_end),
        ] {
            if offset < reg::FECTL + 4 || end > regs.len() {
                return Err(VtdError::BadLayout { offset });
            }
        }
        let agaw = Agaw::choose(&caps)?;
        Ok(VtdUnit {
            regs,
            clock,
            timeout_us,
            dma,
            flush,
            version,
            caps,
            agaw,
            root: None,
            contexts: (0..256).map(|_| None).collect(),
            attached: vec![0; 65536 / 64],
            next_did: 1,
            counts: VtdCounts::default(),
            faults: Vec::new(),
            faults_before: 0,
        })
    }

    /// Sets or clears one persistent GCMD bit, or issues a one-shot command, and waits until
    /// GSTS shows `want` for `bit`.
    fn global_command(&mut self, bit: u32, on: bool, what: &'static str) -> Result<(), VtdError> {
        let status = self.regs.read32(reg::GSTS) & gcmd::PERSISTENT;
        let cmd = if on { status | bit } else { status & !bit };
        self.regs.write32(reg::GCMD, cmd);
        // SRTP and WBF complete when RTPS is set / WBFS is clear; the others mirror the bit.
        let want_set = match bit {
            gcmd::WBF => false,
            _ => on,
        };
        let mut d = Deadline::new(
            &self.clock,
            self.timeout_us,
            crate::virtio::driver::max_polls(self.timeout_us),
        );
        loop {
            let s = self.regs.read32(reg::GSTS);
            if (s & bit != 0) == want_set {
                return Ok(());
            }
            if d.expired() {
                return Err(VtdError::Timeout { what });
            }
            core::hint::spin_loop();
        }
    }

    /// Waits until bit 63 of a 64-bit command register clears; returns the register.
    fn wait_clear(&mut self, off: usize, what: &'static str) -> Result<u64, VtdError> {
        let mut d = Deadline::new(
            &self.clock,
            self.timeout_us,
            crate::virtio::driver::max_polls(self.timeout_us),
        );
        loop {
            let hi = self.regs.read32(off + 4);
            if hi & (1 << 31) == 0 {
                return Ok(u64::from(self.regs.read32(off)) | u64::from(hi) << 32);
            }
            if d.expired() {
                return Err(VtdError::Timeout { what });
            }
            core::hint::spin_loop();
        }
    }

    fn write_buffer_flush(&mut self) -> Result<(), VtdError> {
        if self.caps.rwbf() {
            self.counts.write_buffer_flushes += 1;
            self.global_command(gcmd::WBF, true, "write-buffer flush")?;
        }
        Ok(())
    }

    fn context_invalidate(&mut self, cirg: u64, sid: u16, did: u16) -> Result<(), VtdError> {
        self.write_buffer_flush()?;
        self.counts.context_invalidations += 1;
        let v = ccmd::ICC | cirg | u64::from(sid) << 16 | u64::from(did);
        self.write64(reg::CCMD, v);
        let done = self.wait_clear(reg::CCMD, "context-cache invalidation")?;
        if done & ccmd::CAIG_MASK == 0 {
            return Err(VtdError::InvalidationRefused {
                what: "context-cache invalidation",
            });
        }
        Ok(())
    }

    fn iotlb_invalidate(&mut self, granularity: u64, did: u16, iva: u64) -> Result<(), VtdError> {
        let off = self.caps.iotlb_offset();
        match granularity {
            iotlb::PAGE => {
                self.counts.iotlb_page += 1;
                self.write64(off, iva);
            }
            iotlb::DOMAIN => self.counts.iotlb_domain += 1,
            _ => self.counts.iotlb_global += 1,
        }
        let v = iotlb::IVT
            | granularity
            | iotlb::DRAIN_READS
            | iotlb::DRAIN_WRITES
            | u64::from(did) << 32;
        self.write64(off + 8, v);
        let done = self.wait_clear(off + 8, "IOTLB invalidation")?;
        if done & iotlb::IAIG_MASK == 0 {
            return Err(VtdError::InvalidationRefused {
                what: "IOTLB invalidation",
            });
        }
        Ok(())
    }

    /// Turns translation on with an empty root table: see the module documentation.
    pub fn enable(&mut self) -> Result<(), VtdError> {
        let status = self.regs.read32(reg::GSTS);
        if status & gcmd::TE != 0 {
            self.global_command(gcmd::TE, false, "translation disable")?;
        }
        if status & gcmd::QIE != 0 {
            self.global_command(gcmd::QIE, false, "queued invalidation disable")?;
        }
        self.collect_faults();
        self.faults_before = self.counts.faults;
        // Fault events are recorded, never signalled: this guest polls.
        self.regs.write32(reg::FECTL, 1 << 31);
        let root = self
            .dma
            .alloc_shared(PAGE as usize, PAGE as usize, &DmaConstraints::NONE)
            .map_err(VtdError::Dma)?;
        let addr = root.device_addr().as_u64();
        (self.flush)(root.cpu_ptr().as_ptr(), PAGE as usize);
        self.root = Some(root);
        // TTM = 00: legacy root and context entries.
        self.write64(reg::RTADDR, addr & PTE_ADDR);
        self.global_command(gcmd::SRTP, true, "root table pointer")?;
        self.context_invalidate(ccmd::GLOBAL, 0, 0)?;
        self.iotlb_invalidate(iotlb::GLOBAL, 0, 0)?;
        self.global_command(gcmd::TE, true, "translation enable")?;
        Ok(())
    }

    /// A fresh domain ID (1..; 0 stays unused, as caching mode reserves it).
    pub fn new_domain_id(&mut self) -> Result<u16, VtdError> {
        let did = self.next_did;
        if did >= self.caps.domains() || did > u32::from(u16::MAX) {
            return Err(VtdError::NoDomainId);
        }
        self.next_did += 1;
        Ok(did as u16)
    }

    /// Whether function `sid` has a context entry.
    pub fn is_attached(&self, sid: u16) -> bool {
        self.attached[usize::from(sid) / 64] & (1 << (sid % 64)) != 0
    }

    /// Points function `sid` (`bus << 8 | devfn`) at `table` in domain `did`.
    pub fn attach(&mut self, sid: u16, did: u16, table: &SlTable<'_>) -> Result<(), VtdError> {
        if self.is_attached(sid) {
            return Err(VtdError::AlreadyAttached { sid });
        }
        let bus = usize::from(sid >> 8);
        let devfn = usize::from(sid & 0xff);
        if self.contexts[bus].is_none() {
            let ctx = self
                .dma
                .alloc_shared(PAGE as usize, PAGE as usize, &DmaConstraints::NONE)
                .map_err(VtdError::Dma)?;
            (self.flush)(ctx.cpu_ptr().as_ptr(), PAGE as usize);
            let (lo, hi) = root_entry(ctx.device_addr().as_u64());
            let root = self.root.as_ref().expect("enable() before attach()");
            root.write_u64(16 * bus + 8, hi);
            root.write_u64(16 * bus, lo);
            // SAFETY: inside the 4 KiB root table; only the address is formed.
            (self.flush)(unsafe { root.cpu_ptr().as_ptr().add(16 * bus) }, 16);
            self.contexts[bus] = Some(ctx);
        }
        let ctx = self.contexts[bus].as_ref().expect("just made");
        let (lo, hi) = context_entry(table.root_addr(), did, self.agaw.code);
        // The high half first: the entry becomes present with the low half's P bit.
        ctx.write_u64(16 * devfn + 8, hi);
        ctx.write_u64(16 * devfn, lo);
        // SAFETY: inside the 4 KiB context table; only the address is formed.
        (self.flush)(unsafe { ctx.cpu_ptr().as_ptr().add(16 * devfn) }, 16);
        self.attached[usize::from(sid) / 64] |= 1 << (sid % 64);
        if self.caps.caching_mode() {
            self.context_invalidate(ccmd::DEVICE, sid, did)?;
            self.iotlb_invalidate(iotlb::DOMAIN, did, 0)?;
        } else {
            self.write_buffer_flush()?;
        }
        Ok(())
    }

    /// Removes function `sid`'s context entry and invalidates what the unit cached of it.
    pub fn detach(&mut self, sid: u16, did: u16) -> Result<(), VtdError> {
        if !self.is_attached(sid) {
            return Ok(());
        }
        let bus = usize::from(sid >> 8);
        let devfn = usize::from(sid & 0xff);
        if let Some(ctx) = self.contexts[bus].as_ref() {
            ctx.write_u64(16 * devfn, 0);
            ctx.write_u64(16 * devfn + 8, 0);
            // SAFETY: inside the context table.
            (self.flush)(unsafe { ctx.cpu_ptr().as_ptr().add(16 * devfn) }, 16);
        }
        self.attached[usize::from(sid) / 64] &= !(1 << (sid % 64));
        self.context_invalidate(ccmd::DEVICE, sid, did)?;
        self.iotlb_invalidate(iotlb::DOMAIN, did, 0)
    }

    /// Invalidates the IOTLB entries of `pages` pages at `iova` in domain `did`: one
    /// page-selective command when the unit has PSI and the run fits one aligned block of at
    /// most 2^MAMV pages, else one domain-selective command.
    pub fn flush_iotlb(&mut self, did: u16, iova: u64, pages: u64) -> Result<(), VtdError> {
        self.write_buffer_flush()?;
        if self.caps.psi() && pages > 0 {
            let first = iova / PAGE;
            let last = first + (pages - 1);
            // The smallest aligned block [first & !mask, ...] that holds the run.
            let am = 64 - (first ^ last).leading_zeros();
            if am <= self.caps.mamv() {
                self.counts.iotlb_page_pages += 1 << am;
                let base = (first >> am << am) * PAGE;
                return self.iotlb_invalidate(iotlb::PAGE, did, base | u64::from(am));
            }
        }
        self.iotlb_invalidate(iotlb::DOMAIN, did, 0)
    }

    /// After mapping: only a caching-mode unit may have cached the not-present entries.
    pub fn after_map(&mut self, did: u16, iova: u64, pages: u64) -> Result<(), VtdError> {
        if self.caps.caching_mode() {
            self.flush_iotlb(did, iova, pages)
        } else {
            self.write_buffer_flush()
        }
    }

    /// Reads and clears the fault-recording registers and FSTS; keeps the first
    /// [`FAULTS_KEPT`] faults.
    pub fn collect_faults(&mut self) {
        let status = self.regs.read32(reg::FSTS);
        if status & (fsts::PPF | fsts::PFO) != 0 {
            let base = self.caps.fault_offset();
            for i in 0..self.caps.fault_records().min(256) {
                let off = base + 16 * i;
                let hi = self.read64(off + 8);
                if hi & (1 << 63) == 0 {
                    continue;
                }
                let lo = self.read64(off);
                self.counts.faults += 1;
                if self.faults.len() < FAULTS_KEPT {
                    self.faults.push(VtdFault {
                        sid: hi as u16,
                        reason: (hi >> 32) as u8,
                        address: lo & !0xfff,
                        read: hi & (1 << 62) != 0,
                    });
                }
                // F is write-1-to-clear, in the top dword.
                self.regs.write32(off + 12, 1 << 31);
            }
        }
        if status & fsts::W1C != 0 {
            self.regs.write32(reg::FSTS, status & fsts::W1C);
        }
    }

    /// Whether translation is on (GSTS.TES).
    pub fn translating(&mut self) -> bool {
        self.regs.read32(reg::GSTS) & gcmd::TE != 0
    }

    pub fn dma(&self) -> &'d dyn Dma {
        self.dma
    }

    /// Turns translation off (devices reach guest-physical memory again), and queued
    /// invalidation stays off.
    pub fn disable(&mut self) -> Result<(), VtdError> {
        if self.translating() {
            self.global_command(gcmd::TE, false, "translation disable")?;
        }
        Ok(())
    }

    /// Gives the root and context tables back; returns how many pages.
    ///
    /// # Safety
    /// Translation is off ([`Self::disable`]): the unit walks nothing.
    pub unsafe fn free_tables(&mut self) -> u64 {
        let mut n = 0;
        for t in self
            .contexts
            .iter_mut()
            .filter_map(Option::take)
            .chain(self.root.take())
        {
            // SAFETY: the caller's contract; the regions came from `self.dma`.
            let _ = unsafe { self.dma.free_shared(t) };
            n += 1;
        }
        n
    }

    pub fn flush_fn(&self) -> CacheFlush {
        self.flush
    }

    /// Replaces the cache flush (a coherent unit needs none).
    pub fn set_flush(&mut self, flush: CacheFlush) {
        self.flush = flush;
    }
}

mod domain;
pub use domain::{Vtd, VtdDomain, VtdDomainState, VtdSetup};

#[cfg(test)]
mod tests;
