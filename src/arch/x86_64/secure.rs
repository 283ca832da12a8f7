//! SEV and TDX at the instruction level: `cpuid`, `rdmsr`/`wrmsr`, `vmgexit`, `pvalidate`,
//! `clflush`, `tdcall`, and the edit of this guest's 2 MiB identity map. Implements [`SevIo`] and
//! [`TdxIo`] for the portable logic in `secure_guest::platform::{sev, tdx}`.
//!
//! NOT EXECUTABLE ON THESE MACHINES: no machine here has SEV or TDX hardware, so this file is
//! only compiled; the protocol logic (GHCB MSR page-state changes, PVALIDATE fallbacks, MapGPA
//! retries, accept fallbacks, the order of the steps) is tested against fakes (`platform::sev`
//! and `platform::tdx` tests).
//!
//! What running it for real would still need, outside this file:
//! * the entry code (`entry.rs`) of an SEV guest sets the C-bit in every page-directory entry it
//!   writes (its position from CPUID 0x8000_001F, before paging is on), and QEMU must boot it
//!   through OVMF (SEV) or TDVF (TDX): PVH boots neither;
//! * SEV-ES and SNP intercept `cpuid` (and port I/O, MMIO) with a #VC exception: the exception
//!   code needs a #VC handler speaking the GHCB protocol (`platform::sev::ghcb::cpuid_request`);
//!   TDX turns MMIO and port I/O into #VE, which needs a handler too.
//!
//! The page-table edit walks from CR3: PML4, PDPT, then the page directory whose 2 MiB entries
//! `entry.rs` wrote for the first 64 GiB. Ranges are 2 MiB-aligned (the platforms' granularity).

use core::arch::asm;

use secure_guest::platform::PlatformError;
use secure_guest::platform::sev::{PvalidateResult, SevIo};
use secure_guest::platform::tdx::{
    MapGpaResult, TDG_MEM_PAGE_ACCEPT, TDG_VP_INFO, TDG_VP_VMCALL, TDVMCALL_MAP_GPA, TdxIo, VpInfo,
};

use super::MAPPED_LIMIT;
use super::io::cpuid;

const PAGE_2M: u64 = 2 << 20;
const PRESENT: u64 = 1;
const PAGE_SIZE_BIT: u64 = 1 << 7;
/// Physical-address bits 51:12 of a page-table entry.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// TDG.VP.VMCALL: expose R10-R13 to the VMM.
const VMCALL_EXPOSE_R10_R13: u64 = (1 << 10) | (1 << 11) | (1 << 12) | (1 << 13);
/// TDG.MEM.PAGE.ACCEPT: bits 2:0 of the GPA are the page level (0 = 4 KiB, 1 = 2 MiB).
const ACCEPT_LEVEL_2M: u64 = 1;

/// This CPU, as a confidential guest sees it.
pub struct Hw;

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: `rdmsr` reads an MSR; callers only name MSRs that exist (SEV_STATUS after CPUID
    // said SEV is supported, the GHCB MSR under SEV-ES/SNP). No memory effects.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi,
             options(nomem, nostack, preserves_flags))
    };
    ((hi as u64) << 32) | lo as u64
}

/// The 2 MiB page-directory entry mapping `phys`, walking from CR3 with `mask` (the C-bit or the
/// shared bit) removed from table addresses.
///
/// # Safety
/// The page tables are identity-mapped (they are, below 64 GiB) and nothing else edits them.
unsafe fn pd_entry(phys: u64, mask: u64) -> Result<*mut u64, PlatformError> {
    let fail = PlatformError::PageTable { phys };
    if phys >= MAPPED_LIMIT {
        return Err(fail);
    }
    let cr3: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags)) };
    let table = |entry: u64| (entry & ADDR_MASK & !mask) as *mut u64;
    let pml4 = table(cr3);
    // SAFETY: CR3 points to the PML4, a 4 KiB page of 512 entries, identity-mapped (caller);
    // the index is 9 bits.
    let e4 = unsafe { pml4.add(((phys >> 39) & 511) as usize).read_volatile() };
    if e4 & PRESENT == 0 {
        return Err(fail);
    }
    // SAFETY: a present PML4 entry points to a PDPT, a table like the PML4.
    let e3 = unsafe { table(e4).add(((phys >> 30) & 511) as usize).read_volatile() };
    if e3 & PRESENT == 0 || e3 & PAGE_SIZE_BIT != 0 {
        return Err(fail);
    }
    // SAFETY: a present PDPT entry without PS points to a page directory, a table likewise.
    let pde = unsafe { table(e3).add(((phys >> 21) & 511) as usize) };
    // SAFETY: `pde` is inside that page directory.
    let e2 = unsafe { pde.read_volatile() };
    if e2 & PRESENT == 0 || e2 & PAGE_SIZE_BIT == 0 {
        return Err(fail);
    }
    Ok(pde)
}

/// Sets or clears `bit` in the 2 MiB entries of `[phys, phys + len)`, flushing each from the TLB.
///
/// # Safety
/// As for `pd_entry`; nothing uses the range through a reference meanwhile.
unsafe fn set_pd_bit(phys: u64, len: u64, bit: u64, set: bool) -> Result<(), PlatformError> {
    let end = phys
        .checked_add(len)
        .ok_or(PlatformError::PageTable { phys })?;
    // Check every entry first, so that a failure changes nothing.
    for p in (phys..end).step_by(PAGE_2M as usize) {
        // SAFETY: the caller's contract.
        unsafe { pd_entry(p, bit)? };
    }
    for p in (phys..end).step_by(PAGE_2M as usize) {
        // SAFETY: checked above; identity mapping, so `p` is also the virtual address.
        unsafe {
            let pde = pd_entry(p, bit)?;
            let v = pde.read_volatile();
            pde.write_volatile(if set { v | bit } else { v & !bit });
            asm!("invlpg [{}]", in(reg) p, options(nostack, preserves_flags));
        }
    }
    Ok(())
}

impl SevIo for Hw {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        cpuid(leaf, subleaf)
    }

    fn rdmsr(&self, msr: u32) -> u64 {
        rdmsr(msr)
    }

    unsafe fn wrmsr(&self, msr: u32, value: u64) {
        // SAFETY: only the GHCB MSR is written, with a protocol request or its old value
        // (trait contract).
        unsafe {
            asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
                 options(nostack, preserves_flags))
        };
    }

    unsafe fn vmgexit(&self) {
        // SAFETY: VMGEXIT (`rep vmmcall`, F3 0F 01 D9) hands the GHCB MSR request to the
        // hypervisor, which answers in the same MSR; memory effects are the request's (caller).
        unsafe { asm!(".byte 0xf3, 0x0f, 0x01, 0xd9", options(nostack)) };
    }

    unsafe fn pvalidate(&self, vaddr: u64, size_2m: bool, validate: bool) -> PvalidateResult {
        let rax: u64;
        let no_update: u8;
        // SAFETY: PVALIDATE (F2 0F 01 FF): RAX = virtual address, ECX = page size, EDX =
        // validate; EAX = result, CF = nothing changed. The caller owns the page.
        unsafe {
            asm!(
                ".byte 0xf2, 0x0f, 0x01, 0xff",
                "setc {cf}",
                cf = out(reg_byte) no_update,
                inlateout("rax") vaddr => rax,
                in("ecx") size_2m as u32,
                in("edx") validate as u32,
                options(nostack),
            );
        }
        PvalidateResult {
            rc: rax as u32,
            no_update: no_update != 0,
        }
    }

    unsafe fn flush_caches(&self, phys: u64, len: u64) {
        let mut p = phys & !63;
        while p < phys.saturating_add(len) {
            // SAFETY: the range is mapped (caller); CLFLUSH writes back and drops one line.
            unsafe { asm!("clflush [{}]", in(reg) p, options(nostack, preserves_flags)) };
            p += 64;
        }
        // SAFETY: a fence has no memory effects of its own.
        unsafe { asm!("mfence", options(nostack, preserves_flags)) };
    }

    unsafe fn set_encrypted(
        &self,
        phys: u64,
        len: u64,
        c_bit_mask: u64,
        encrypted: bool,
    ) -> Result<(), PlatformError> {
        // SAFETY: the caller's contract.
        unsafe { set_pd_bit(phys, len, c_bit_mask, encrypted) }
    }
}

impl TdxIo for Hw {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        cpuid(leaf, subleaf)
    }

    fn vp_info(&self) -> Result<VpInfo, u64> {
        let (status, rcx, rdx): (u64, u64, u64);
        // SAFETY: TDCALL (66 0F 01 CC) leaf TDG.VP.INFO only returns values in registers.
        unsafe {
            asm!(
                ".byte 0x66, 0x0f, 0x01, 0xcc",
                inlateout("rax") TDG_VP_INFO => status,
                lateout("rcx") rcx,
                lateout("rdx") rdx,
                lateout("r8") _, lateout("r9") _, lateout("r10") _, lateout("r11") _,
                options(nomem, nostack),
            );
        }
        if status == 0 {
            Ok(VpInfo { rcx, rdx })
        } else {
            Err(status)
        }
    }

    unsafe fn map_gpa(&self, gpa: u64, size: u64) -> MapGpaResult {
        let (tdcall, status, next): (u64, u64, u64);
        // SAFETY: TDCALL leaf TDG.VP.VMCALL with R10 = 0 (standard), R11 = MapGPA, R12 = GPA,
        // R13 = size; RCX exposes exactly R10-R13 to the VMM. Status in R10, retry GPA in R11.
        // The pages change owner (caller's contract).
        unsafe {
            asm!(
                ".byte 0x66, 0x0f, 0x01, 0xcc",
                inlateout("rax") TDG_VP_VMCALL => tdcall,
                inlateout("rcx") VMCALL_EXPOSE_R10_R13 => _,
                inlateout("r10") 0u64 => status,
                inlateout("r11") TDVMCALL_MAP_GPA => next,
                inlateout("r12") gpa => _,
                inlateout("r13") size => _,
                options(nostack),
            );
        }
        MapGpaResult {
            tdcall,
            status,
            next,
        }
    }

    unsafe fn accept(&self, gpa: u64, size_2m: bool) -> u64 {
        let status: u64;
        let level = if size_2m { ACCEPT_LEVEL_2M } else { 0 };
        // SAFETY: TDCALL leaf TDG.MEM.PAGE.ACCEPT: RCX = GPA | level; the page was just
        // converted to private by this guest (caller's contract) and comes back zeroed.
        unsafe {
            asm!(
                ".byte 0x66, 0x0f, 0x01, 0xcc",
                inlateout("rax") TDG_MEM_PAGE_ACCEPT => status,
                inlateout("rcx") gpa | level => _,
                lateout("rdx") _, lateout("r8") _, lateout("r9") _, lateout("r10") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        status
    }

    unsafe fn set_shared(
        &self,
        phys: u64,
        len: u64,
        shared_mask: u64,
        shared: bool,
    ) -> Result<(), PlatformError> {
        // SAFETY: the caller's contract.
        unsafe { set_pd_bit(phys, len, shared_mask, shared) }
    }
}
