//! PAPR hypervisor calls (`sc 1`): the console, little-endian interrupts, RTAS and the TCE
//! calls of the PHB IOMMU.

use core::arch::asm;

pub const H_SUCCESS: i64 = 0;
/// Try again: the call did nothing (PAPR allows it for H_PUT_TERM_CHAR).
pub const H_BUSY: i64 = 1;
const H_PUT_TERM_CHAR: u64 = 0x58;
const H_SET_MODE: u64 = 0x31c;
/// QEMU/KVM's private hypercall that runs an RTAS call in the hypervisor (KVMPPC_H_RTAS):
/// no RTAS blob has to be instantiated in guest memory.
const H_RTAS: u64 = 0xf000;
/// H_SET_MODE resource 4 (interrupt endianness), mflags 1 = little-endian.
const H_SET_MODE_RESOURCE_LE: u64 = 4;
const H_SET_MODE_ENDIAN_LITTLE: u64 = 1;

/// One hypercall with up to four arguments; returns the status in r3.
///
/// # Safety
/// The hypercall must not write guest memory other than what its arguments describe, and what
/// it describes must be valid for it (H_RTAS writes its return cells).
unsafe fn hcall(op: u64, a1: u64, a2: u64, a3: u64, a4: u64) -> i64 {
    let ret: u64;
    // SAFETY: `sc 1` enters the hypervisor, which follows the PAPR hcall convention: opcode
    // and arguments in r3-r12, status in r3, r4-r12 and r0 may change, nothing else does.
    // Memory effects are the caller's contract (see above); the asm is not `nomem`.
    unsafe {
        asm!(
            "sc 1",
            inlateout("r3") op => ret,
            inlateout("r4") a1 => _,
            inlateout("r5") a2 => _,
            inlateout("r6") a3 => _,
            inlateout("r7") a4 => _,
            out("r0") _, out("r8") _, out("r9") _, out("r10") _, out("r11") _, out("r12") _,
            options(nostack),
        );
    }
    ret as i64
}

/// Writes up to 16 bytes to the virtual terminal `termno`. The bytes travel in r6/r7, first
/// byte in the most significant position.
pub fn put_term_chars(termno: u32, bytes: &[u8]) -> i64 {
    let n = bytes.len().min(16);
    let mut buf = [0u8; 16];
    buf[..n].copy_from_slice(&bytes[..n]);
    let hi = u64::from_be_bytes([
        buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], buf[6], buf[7],
    ]);
    let lo = u64::from_be_bytes([
        buf[8], buf[9], buf[10], buf[11], buf[12], buf[13], buf[14], buf[15],
    ]);
    // SAFETY: H_PUT_TERM_CHAR only reads its register arguments.
    unsafe { hcall(H_PUT_TERM_CHAR, termno as u64, n as u64, hi, lo) }
}

/// Asks for interrupts to be delivered little-endian (LPCR[ILE]).
pub fn set_interrupts_little_endian() -> i64 {
    // SAFETY: H_SET_MODE with these arguments only changes LPCR[ILE] of every vCPU.
    unsafe {
        hcall(
            H_SET_MODE,
            H_SET_MODE_ENDIAN_LITTLE,
            H_SET_MODE_RESOURCE_LE,
            0,
            0,
        )
    }
}

/// Runs an RTAS call. `args` is the RTAS argument block (big-endian cells: token, nargs, nret,
/// args..., rets...), below 4 GiB.
///
/// # Safety
/// `args` must point to a writable block of 3 + nargs + nret cells that nothing else uses.
pub unsafe fn rtas(args: *mut u32) -> i64 {
    // SAFETY: H_RTAS reads the block and writes only its return cells; the caller vouches
    // for the block.
    unsafe { hcall(H_RTAS, args as u64, 0, 0, 0) }
}

/// `H_PUT_TCE`: one TCE of window `liobn`.
pub fn put_tce(liobn: u64, ioba: u64, tce: u64) -> i64 {
    // SAFETY: H_PUT_TCE only reads its register arguments (guest memory is reached only later,
    // by devices, through the TCE it writes: the caller's business, see `dma::iommu`).
    unsafe { hcall(secure_guest::dma::tce::H_PUT_TCE, liobn, ioba, tce, 0) }
}

/// `H_PUT_TCE_INDIRECT`: `count` TCEs listed at real address `list`.
///
/// # Safety
/// `list` is a 4 KiB-aligned page of at least `count` big-endian TCEs (the hypervisor reads it).
pub unsafe fn put_tce_indirect(liobn: u64, ioba: u64, list: u64, count: u64) -> i64 {
    // SAFETY: the hypervisor reads the list page the caller vouches for, and writes nothing.
    unsafe {
        hcall(
            secure_guest::dma::tce::H_PUT_TCE_INDIRECT,
            liobn,
            ioba,
            list,
            count,
        )
    }
}

/// `H_STUFF_TCE`: `value` into `count` TCEs from `ioba`.
pub fn stuff_tce(liobn: u64, ioba: u64, value: u64, count: u64) -> i64 {
    // SAFETY: H_STUFF_TCE only reads its register arguments.
    unsafe {
        hcall(
            secure_guest::dma::tce::H_STUFF_TCE,
            liobn,
            ioba,
            value,
            count,
        )
    }
}
