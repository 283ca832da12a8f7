//! PEF at the instruction level: `mfmsr` and the ultracall `sc 2`, implementing
//! [`UltravisorIo`] for the portable logic in `secure_guest::platform::pef`.
//!
//! NOT EXECUTABLE ON THESE MACHINES: no machine here has PEF hardware (a POWER9 DD2.3+ or POWER10
//! host with an ultravisor), and QEMU does not emulate an ultravisor. This file is only compiled;
//! the logic that decides which ucall to issue, with which arguments, and what a return code
//! means is tested against a fake ultravisor (`platform::pef` tests).
//!
//! The portable logic never calls [`UltravisorIo::ucall`] unless an ultravisor was detected (the
//! `/ibm,ultravisor` device-tree node or `MSR[S]`); without PEF, `sc 2` is redirected to the
//! hypervisor.
//!
//! Wiring (for `arch/ppc64/mod.rs`): `mod secure;`, then
//! `Pef::new(secure::Ultravisor, tree.ultravisor)`; `msr_secure()` gives `Facts::msr_s` for the
//! decision before any platform exists.

use core::arch::asm;

use secure_guest::platform::pef::{MSR_S, UltravisorIo};

/// The ultravisor of this machine, reached with `sc 2`.
pub struct Ultravisor;

/// `MSR[S]`: whether this thread runs in secure mode (readable without an ultravisor: `mfmsr` is
/// an ordinary supervisor instruction, and `MSR[S]` reads 0 on a machine without PEF).
pub fn msr_secure() -> bool {
    Ultravisor.msr() & MSR_S != 0
}

impl UltravisorIo for Ultravisor {
    fn msr(&self) -> u64 {
        let msr: u64;
        // SAFETY: `mfmsr` reads the MSR; no memory, stack or flag effects.
        unsafe { asm!("mfmsr {}", out(reg) msr, options(nomem, nostack, preserves_flags)) };
        msr
    }

    unsafe fn ucall(&self, opcode: u64, a1: u64, a2: u64) -> i64 {
        let ret: u64;
        // SAFETY: `sc 2` enters the ultravisor with the opcode in r3 and arguments in r4-r5; the
        // status comes back in r3, and r4-r12 may hold outputs (Documentation/arch/powerpc/
        // ultravisor.rst). Linux calls it as an ordinary function (`ucall_norets`, which also
        // saves CR), so every register the C ABI lets a callee change is clobbered here. The
        // memory effects (pages shared and zeroed, the guest made secure) are the caller's
        // contract; the asm is not `nomem`.
        unsafe {
            asm!(
                "sc 2",
                inlateout("r3") opcode => ret,
                inlateout("r4") a1 => _,
                inlateout("r5") a2 => _,
                clobber_abi("C"),
                options(nostack),
            );
        }
        ret as i64
    }
}
