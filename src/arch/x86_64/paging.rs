//! Mapping device memory above what the boot page tables cover.
//!
//! entry.rs identity-maps 0..64 GiB with 2 MiB pages (write-back; QEMU's MTRRs make the PCI hole
//! below 4 GiB uncached). Firmware may put a 64-bit BAR higher: SeaBIOS places 64-bit BARs
//! above RAM or at the top of the physical address space when they do not all fit below
//! 4 GiB. [`ensure_mapped`] extends the identity map over such a range, with uncached 2 MiB
//! pages (PCD|PWT), allocating the missing tables from the heap (identity-mapped, below 4 GiB).

use alloc::alloc::{Layout, alloc_zeroed};
use core::arch::asm;

use super::MAPPED_LIMIT;
use super::io::cpuid;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const WRITE_THROUGH: u64 = 1 << 3;
const CACHE_DISABLE: u64 = 1 << 4;
const HUGE: u64 = 1 << 7;
const ADDR: u64 = 0x000f_ffff_ffff_f000;
const PAGE_2M: u64 = 2 << 20;
/// One device range is never more than this (a virtio structure is at most 4 GiB).
const MAX_RANGE: u64 = 16 << 30;

/// The CPU's physical address width (CPUID 0x80000008), 36 bits when not reported.
fn phys_bits() -> u32 {
    if cpuid(0x8000_0000, 0)[0] >= 0x8000_0008 {
        let bits = cpuid(0x8000_0008, 0)[0] & 0xff;
        if (32..=52).contains(&bits) {
            return bits;
        }
    }
    36
}

fn cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effects (ring 0, long mode).
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// The table an entry points to, allocating (and linking) a zeroed one if the entry is empty.
/// An error when the entry maps a huge page (no table below it to extend) or no memory is left.
///
/// # Safety
/// `entry` points into a live page table of the tables CR3 reaches.
unsafe fn next_table(entry: *mut u64) -> Result<*mut u64, &'static str> {
    // SAFETY: the caller's contract: a live page-table entry, only this CPU uses it.
    let e = unsafe { entry.read_volatile() };
    if e & PRESENT != 0 {
        if e & HUGE != 0 {
            return Err("a huge page is in the way");
        }
        return Ok(core::ptr::with_exposed_provenance_mut((e & ADDR) as usize));
    }
    let layout = Layout::from_size_align(4096, 4096).map_err(|_| "layout")?;
    // SAFETY: a non-zero-sized layout. The page is never freed: it becomes a page table.
    let table = unsafe { alloc_zeroed(layout) };
    if table.is_null() {
        return Err("no memory for a page table");
    }
    let phys = table.expose_provenance() as u64; // identity-mapped heap
    if phys >= MAPPED_LIMIT {
        return Err("page table outside the identity map");
    }
    // SAFETY: as above; the new table is zeroed (no entries) before it is linked.
    unsafe { entry.write_volatile(phys | PRESENT | WRITABLE) };
    Ok(table.cast())
}

/// Makes `[base, base + len)` reachable at the same virtual address. A no-op below 64 GiB.
pub fn ensure_mapped(base: u64, len: u64) -> Result<(), &'static str> {
    let end = base.checked_add(len).ok_or("range wraps around")?;
    if end <= MAPPED_LIMIT {
        return Ok(());
    }
    if len > MAX_RANGE {
        return Err("range too large to map");
    }
    if end > 1u64 << phys_bits() {
        return Err("beyond the CPU's physical address width");
    }
    let pml4: *mut u64 = core::ptr::with_exposed_provenance_mut((cr3() & ADDR) as usize);
    let mut page = base & !(PAGE_2M - 1);
    while page < end {
        let index = |shift: u32| ((page >> shift) & 511) as usize;
        // SAFETY: CR3's tables are the boot tables (identity-mapped, in the image's BSS) or
        // tables this function linked in; indices are below 512; only the boot CPU runs and
        // nothing else edits page tables.
        unsafe {
            let pdpt = next_table(pml4.add(index(39)))?;
            let pd = next_table(pdpt.add(index(30)))?;
            let entry = pd.add(index(21));
            let e = entry.read_volatile();
            if e & PRESENT == 0 {
                entry.write_volatile(
                    page | PRESENT | WRITABLE | HUGE | CACHE_DISABLE | WRITE_THROUGH,
                );
            } else if e & HUGE == 0 || e & ADDR & !(PAGE_2M - 1) != page {
                return Err("an existing mapping is not the identity");
            }
        }
        page += PAGE_2M;
    }
    // New entries only (never a changed one), but flush anyway: reload CR3.
    // SAFETY: writing back the same CR3 only flushes the TLB.
    unsafe { asm!("mov cr3, {}", in(reg) cr3(), options(nostack, preserves_flags)) };
    Ok(())
}
