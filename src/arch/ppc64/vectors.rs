//! Exception vectors: every interrupt the guest can take ends in `crate::fatal_exception`.
//!
//! Installed once Open Firmware is no longer needed (the vectors overwrite the firmware's low
//! memory). Interrupts are taken in real mode at the architected offsets from address 0 with
//! MSR[LE] = LPCR[ILE], which H_SET_MODE sets to little-endian. External interrupts and the
//! decrementer stay masked (MSR[EE] = 0), so only faults arrive.

use core::arch::asm;

unsafe extern "C" {
    /// boot/ppc64/vectors.S: the per-vector template and the common handler.
    static sg_vec_stub: u32;
    static sg_vec_stub_end: u32;
    fn sg_vec_common();
}

/// Where the stubs find the address of `sg_vec_common` (`ld r12,0x60(0)`).
const HANDLER_SLOT: usize = 0x60;
/// Low memory the vectors occupy (and the whole range the flush covers).
pub const VECTORS_END: u64 = 0x1000;
/// Index of `li r13,0` in the stub, and its encoding without the immediate.
const PATCH_WORD: usize = 2;
const LI_R13: u32 = 0x39a0_0000;

/// Every vector the architecture defines below 0x1000 for a partition (some are delivered
/// only to a hypervisor; a stub there costs nothing).
const VECTORS: &[(u64, &str)] = &[
    (0x100, "system reset"),
    (0x200, "machine check"),
    (0x300, "data storage"),
    (0x380, "data segment"),
    (0x400, "instruction storage"),
    (0x480, "instruction segment"),
    (0x500, "external"),
    (0x600, "alignment"),
    (0x700, "program check"),
    (0x800, "floating-point unavailable"),
    (0x900, "decrementer"),
    (0x980, "hypervisor decrementer"),
    (0xa00, "directed privileged doorbell"),
    (0xb00, "reserved 0xb00"),
    (0xc00, "system call"),
    (0xd00, "trace"),
    (0xe00, "hypervisor data storage"),
    (0xe20, "hypervisor instruction storage"),
    (0xe40, "hypervisor emulation assistance"),
    (0xe60, "hypervisor maintenance"),
    (0xe80, "directed hypervisor doorbell"),
    (0xea0, "hypervisor virtualization"),
    (0xf00, "performance monitor"),
    (0xf20, "vector unavailable"),
    (0xf40, "vsx unavailable"),
    (0xf60, "facility unavailable"),
    (0xf80, "hypervisor facility unavailable"),
];

/// Why installing failed.
#[derive(Clone, Copy, Debug)]
pub enum InstallError {
    /// The assembled stub is not what this code patches (would be a build bug).
    UnexpectedStub,
}

impl InstallError {
    pub fn as_str(&self) -> &'static str {
        match self {
            InstallError::UnexpectedStub => "the assembled stub is not the expected one",
        }
    }
}

/// Copies the stub to every vector and points the stubs at the common handler.
///
/// # Safety
/// Nothing may use low memory (0..VECTORS_END) any more: the firmware is done with, and the
/// image does not overlap it.
pub unsafe fn install() -> Result<(), InstallError> {
    let stub = &raw const sg_vec_stub;
    let end = &raw const sg_vec_stub_end;
    let words = (end as usize - stub as usize) / 4;
    // Each stub must fit the 0x20 bytes between the most closely packed vectors.
    if words > 8 || words <= PATCH_WORD {
        return Err(InstallError::UnexpectedStub);
    }
    // SAFETY: [stub, end) is the template's code in the image, readable.
    let template = |i: usize| unsafe { stub.add(i).read() };
    if template(PATCH_WORD) != LI_R13 {
        return Err(InstallError::UnexpectedStub);
    }
    for &(vector, _) in VECTORS {
        for i in 0..words {
            let mut w = template(i);
            if i == PATCH_WORD {
                w |= vector as u32;
            }
            let at = core::ptr::with_exposed_provenance_mut::<u32>(vector as usize + 4 * i);
            // SAFETY: low memory is RAM the caller handed over; real mode, no translation.
            unsafe { at.write_volatile(w) };
        }
    }
    let slot = core::ptr::with_exposed_provenance_mut::<u64>(HANDLER_SLOT);
    // SAFETY: as above; 0x60 is below the first vector and 8-byte aligned.
    unsafe { slot.write_volatile(sg_vec_common as *const () as u64) };
    sync_icache(0, VECTORS_END);
    Ok(())
}

/// Makes freshly written code visible to instruction fetch.
fn sync_icache(start: u64, end: u64) {
    // 32 bytes: no larger than any Power cache block, so no line is skipped.
    const STEP: usize = 32;
    for a in (start..end).step_by(STEP) {
        // SAFETY: dcbst writes a cache block back to memory; no architectural state changes.
        unsafe { asm!("dcbst 0, {0}", in(reg) a, options(nostack, preserves_flags)) };
    }
    // SAFETY: a barrier.
    unsafe { asm!("sync", options(nostack, preserves_flags)) };
    for a in (start..end).step_by(STEP) {
        // SAFETY: icbi drops a block from the instruction cache.
        unsafe { asm!("icbi 0, {0}", in(reg) a, options(nostack, preserves_flags)) };
    }
    // SAFETY: barriers; isync discards prefetched instructions.
    unsafe { asm!("sync", "isync", options(nostack, preserves_flags)) };
}

/// The program check's reason, from SRR1 (ISA: bits 43-46).
fn program_check_name(srr1: u64) -> &'static str {
    if srr1 & (1 << 17) != 0 {
        "program check (trap)"
    } else if srr1 & (1 << 18) != 0 {
        "program check (privileged instruction)"
    } else if srr1 & (1 << 19) != 0 {
        "program check (illegal instruction)"
    } else if srr1 & (1 << 20) != 0 {
        "program check (floating-point)"
    } else {
        "program check"
    }
}

/// Called by `sg_vec_common` on the exception stack, with FP/VMX/VSX re-enabled.
#[unsafe(no_mangle)]
extern "C" fn sg_ppc64_exception(vector: u64, srr0: u64, srr1: u64, dar: u64, dsisr: u64) -> ! {
    let name = match vector {
        0x700 => program_check_name(srr1),
        v => VECTORS
            .iter()
            .find(|&&(x, _)| x == v)
            .map_or("unknown", |&(_, n)| n),
    };
    crate::fatal_exception(
        vector,
        name,
        srr0,
        &[("msr", srr1), ("dar", dar), ("dsisr", dsisr)],
    )
}
