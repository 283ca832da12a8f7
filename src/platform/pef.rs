//! POWER Protected Execution Facility: a guest starts normal, enters secure mode with the
//! `UV_ESM` ultracall, and from then on shares pages with `UV_SHARE_PAGE`.
//!
//! Ultracalls are `sc 2` with the opcode in r3 and arguments in r4.., the status back in r3
//! (Linux `Documentation/arch/powerpc/ultravisor.rst`). Opcodes and return codes are those of
//! Linux `arch/powerpc/include/asm/ultravisor-api.h`; the return codes reuse the PAPR hcall
//! values. The ultravisor shares and unshares in pages of 64 KiB and zeroes them before
//! returning.
//!
//! The logic here runs over [`UltravisorIo`], which the binary implements with real `sc 2` in
//! `arch/ppc64/secure.rs` and tests implement with a fake ultravisor. It never issues a ucall
//! unless an ultravisor was detected (the device-tree node, or `MSR[S]` already set): without PEF,
//! `sc 2` is redirected to the hypervisor, which is not the party to ask.
//!
//! Not covered (no PEF hardware to check it against): `UV_ESM` needs an *ESM blob* in the image
//! (the encrypted verification data made by IBM's tooling); on success the ultravisor resumes the
//! guest at the address the blob names, in secure mode. After that, any hcall that passes guest
//! memory (the `H_RTAS` argument block of the power-off path) needs that memory shared.

use super::{PAGE_64K, Platform, PlatformError, PlatformKind, ShareLog, ShareRange};

/// Enter secure mode: r4 = address of the ESM blob, r5 = the flattened device tree.
pub const UV_ESM: u64 = 0xF110;
/// r4 = guest page frame number (64 KiB pages), r5 = number of pages.
pub const UV_SHARE_PAGE: u64 = 0xF130;
/// r4 = guest page frame number, r5 = number of pages.
pub const UV_UNSHARE_PAGE: u64 = 0xF134;
/// No arguments.
pub const UV_UNSHARE_ALL_PAGES: u64 = 0xF140;

pub const U_SUCCESS: i64 = 0;
pub const U_BUSY: i64 = 1;
pub const U_FUNCTION: i64 = -2;
pub const U_PARAMETER: i64 = -4;
pub const U_PERMISSION: i64 = -11;
pub const U_NOT_AVAILABLE: i64 = -54;
pub const U_P2: i64 = -55;
pub const U_P3: i64 = -56;
pub const U_P4: i64 = -57;
pub const U_P5: i64 = -58;

/// `MSR[S]` (bit 41 in the ISA's big-endian numbering): the thread runs in secure mode.
pub const MSR_S: u64 = 1 << 22;

/// The ultravisor's page: 64 KiB.
pub const UV_PAGE_SIZE: u64 = PAGE_64K;
const UV_PAGE_SHIFT: u32 = 16;

/// A name for a ucall return code, for reports.
pub fn ucall_code_name(code: i64) -> &'static str {
    match code {
        U_SUCCESS => "U_SUCCESS",
        U_BUSY => "U_BUSY",
        U_FUNCTION => "U_FUNCTION",
        U_PARAMETER => "U_PARAMETER",
        U_PERMISSION => "U_PERMISSION",
        U_NOT_AVAILABLE => "U_NOT_AVAILABLE",
        U_P2 => "U_P2",
        U_P3 => "U_P3",
        U_P4 => "U_P4",
        U_P5 => "U_P5",
        _ => "unknown",
    }
}

/// The instruction-level interface: the MSR and `sc 2`.
pub trait UltravisorIo: Sync {
    /// The machine state register (`mfmsr`).
    fn msr(&self) -> u64;

    /// One ultracall: `sc 2` with r3 = `opcode`, r4 = `a1`, r5 = `a2`; returns r3.
    ///
    /// # Safety
    /// An ultravisor is present, and the call's effect on memory is what the caller intends:
    /// `UV_SHARE_PAGE` / `UV_UNSHARE_PAGE` zero the pages, `UV_ESM` moves the whole guest into
    /// secure memory (and resumes it elsewhere on success).
    unsafe fn ucall(&self, opcode: u64, a1: u64, a2: u64) -> i64;
}

impl<T: UltravisorIo + ?Sized> UltravisorIo for &T {
    fn msr(&self) -> u64 {
        (**self).msr()
    }

    unsafe fn ucall(&self, opcode: u64, a1: u64, a2: u64) -> i64 {
        // SAFETY: the caller's contract, passed on.
        unsafe { (**self).ucall(opcode, a1, a2) }
    }
}

/// What `UV_ESM` led to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EsmOutcome {
    /// `MSR[S]` was already set: no ucall issued.
    AlreadySecure,
    /// The ultravisor returned success and `MSR[S]` is now set.
    Entered,
}

/// The PEF platform.
pub struct Pef<U> {
    io: U,
    ultravisor_node: bool,
    log: ShareLog,
}

impl<U: UltravisorIo> Pef<U> {
    /// `ultravisor_node`: the device tree has `/ibm,ultravisor` (or a node compatible with it).
    pub fn new(io: U, ultravisor_node: bool) -> Self {
        Pef {
            io,
            ultravisor_node,
            log: ShareLog::new(),
        }
    }

    pub fn io(&self) -> &U {
        &self.io
    }

    /// `MSR[S]`: running secure now.
    pub fn msr_secure(&self) -> bool {
        self.io.msr() & MSR_S != 0
    }

    /// Whether an ultravisor exists: the device-tree node, or `MSR[S]` (only it can set that bit).
    pub fn ultravisor_detected(&self) -> bool {
        self.ultravisor_node || self.msr_secure()
    }

    /// Enters secure mode with `UV_ESM`, unless already secure.
    ///
    /// # Safety
    /// `esm_blob` and `fdt` are the addresses of the image's ESM blob and of the flattened device
    /// tree, and the guest is ready for all its memory to become private: nothing is shared yet
    /// (no device has been given an address), and no other CPU runs.
    pub unsafe fn enter_secure_mode(
        &self,
        esm_blob: u64,
        fdt: u64,
    ) -> Result<EsmOutcome, PlatformError> {
        if self.msr_secure() {
            return Ok(EsmOutcome::AlreadySecure);
        }
        if !self.ultravisor_node {
            return Err(PlatformError::NoUltravisor);
        }
        // SAFETY: an ultravisor node exists, and the caller vouches for the arguments and for
        // the guest being ready to go secure.
        let code = unsafe { self.io.ucall(UV_ESM, esm_blob, fdt) };
        if code != U_SUCCESS {
            return Err(PlatformError::Ultravisor { call: UV_ESM, code });
        }
        if !self.msr_secure() {
            return Err(PlatformError::EsmNotSecure);
        }
        Ok(EsmOutcome::Entered)
    }

    /// Checks that a ucall may be issued for sharing: an ultravisor, and secure mode (the
    /// ultravisor answers U_INVALID for a guest that is not secure).
    fn ready(&self) -> Result<(), PlatformError> {
        if !self.ultravisor_detected() {
            return Err(PlatformError::NoUltravisor);
        }
        if !self.msr_secure() {
            return Err(PlatformError::NotSecure);
        }
        Ok(())
    }

    /// # Safety
    /// As for [`Platform::share`].
    unsafe fn page_call(&self, call: u64, range: ShareRange) -> Result<(), PlatformError> {
        self.ready()?;
        let gfn = range.phys() >> UV_PAGE_SHIFT;
        let pages = range.len() >> UV_PAGE_SHIFT;
        // SAFETY: an ultravisor was detected and the guest is secure (checked above); the range
        // is 64 KiB-aligned (validated against `granularity`) and the caller owns it.
        let code = unsafe { self.io.ucall(call, gfn, pages) };
        if code == U_SUCCESS {
            Ok(())
        } else {
            Err(PlatformError::Ultravisor { call, code })
        }
    }
}

impl<U: UltravisorIo> Platform for Pef<U> {
    fn kind(&self) -> PlatformKind {
        PlatformKind::Pef
    }

    /// Secure once `MSR[S]` is set (after `UV_ESM`).
    fn is_secure(&self) -> bool {
        self.msr_secure()
    }

    fn granularity(&self) -> u64 {
        UV_PAGE_SIZE
    }

    fn log(&self) -> &ShareLog {
        &self.log
    }

    unsafe fn share_range(&self, range: ShareRange) -> Result<(), PlatformError> {
        // SAFETY: the caller's contract (Platform::share).
        unsafe { self.page_call(UV_SHARE_PAGE, range) }
    }

    unsafe fn unshare_range(&self, range: ShareRange) -> Result<(), PlatformError> {
        // SAFETY: the caller's contract (Platform::unshare).
        unsafe { self.page_call(UV_UNSHARE_PAGE, range) }
    }
}

#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use alloc::vec::Vec;

    /// A fake ultravisor: records every ucall, sets `MSR[S]` on a successful `UV_ESM`, and answers
    /// with scripted codes.
    pub struct FakeUv {
        pub state: spin::Mutex<FakeUvState>,
    }

    pub struct FakeUvState {
        pub msr: u64,
        pub calls: Vec<(u64, u64, u64)>,
        /// Return code for the next calls (default U_SUCCESS).
        pub code: i64,
        /// UV_ESM succeeds but "forgets" to set `MSR[S]`.
        pub esm_leaves_msr_clear: bool,
    }

    impl FakeUv {
        pub fn new(secure: bool) -> Self {
            FakeUv {
                state: spin::Mutex::new(FakeUvState {
                    msr: 0x8000_0000_0000_1033 | if secure { MSR_S } else { 0 },
                    calls: Vec::new(),
                    code: U_SUCCESS,
                    esm_leaves_msr_clear: false,
                }),
            }
        }

        pub fn calls(&self) -> Vec<(u64, u64, u64)> {
            self.state.lock().calls.clone()
        }
    }

    impl UltravisorIo for FakeUv {
        fn msr(&self) -> u64 {
            self.state.lock().msr
        }

        unsafe fn ucall(&self, opcode: u64, a1: u64, a2: u64) -> i64 {
            let mut s = self.state.lock();
            s.calls.push((opcode, a1, a2));
            if opcode == UV_ESM && s.code == U_SUCCESS && !s.esm_leaves_msr_clear {
                s.msr |= MSR_S;
            }
            s.code
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeUv;
    use super::*;

    #[test]
    fn opcodes_are_linux_values() {
        // arch/powerpc/include/asm/ultravisor-api.h
        assert_eq!(
            (UV_ESM, UV_SHARE_PAGE, UV_UNSHARE_PAGE, UV_UNSHARE_ALL_PAGES),
            (0xF110, 0xF130, 0xF134, 0xF140)
        );
        assert_eq!(MSR_S, 1 << (63 - 41));
        assert_eq!(ucall_code_name(-55), "U_P2");
        assert_eq!(ucall_code_name(12345), "unknown");
    }

    #[test]
    fn no_ucall_without_an_ultravisor() {
        let pef = Pef::new(FakeUv::new(false), false);
        assert!(!pef.ultravisor_detected());
        // SAFETY: a fake; nothing is touched.
        let esm = unsafe { pef.enter_secure_mode(0x400_0000, 0x500_0000) };
        assert_eq!(esm, Err(PlatformError::NoUltravisor));
        // SAFETY: as above.
        let share = unsafe { pef.share(0x100_0000, 0x2_0000) };
        assert_eq!(share, Err(PlatformError::NoUltravisor));
        // SAFETY: as above.
        let unshare = unsafe { pef.unshare(0x100_0000, 0x1_0000) };
        assert_eq!(unshare, Err(PlatformError::NoUltravisor));
        assert!(pef.io().calls().is_empty(), "no ucall may be issued");
        let c = pef.log().counts();
        assert_eq!((c.shares, c.share_failures, c.unshares), (1, 1, 1));
    }

    #[test]
    fn esm_then_share_in_64k_pages() {
        let pef = Pef::new(FakeUv::new(false), true);
        assert!(!pef.is_secure());
        // Sharing before ESM would get U_INVALID: refused without a call.
        // SAFETY: a fake; nothing is touched.
        assert_eq!(
            unsafe { pef.share(0x100_0000, 0x1_0000) },
            Err(PlatformError::NotSecure)
        );
        assert!(pef.io().calls().is_empty());
        // SAFETY: as above.
        assert_eq!(
            unsafe { pef.enter_secure_mode(0x40_0000, 0x80_0000) },
            Ok(EsmOutcome::Entered)
        );
        assert!(pef.is_secure());
        // SAFETY: as above.
        assert_eq!(
            unsafe { pef.enter_secure_mode(0x40_0000, 0x80_0000) },
            Ok(EsmOutcome::AlreadySecure)
        );
        // SAFETY: as above.
        unsafe { pef.share(0x100_0000, 0x40_0000) }.unwrap();
        // SAFETY: as above.
        unsafe { pef.unshare(0x110_0000, 0x2_0000) }.unwrap();
        assert_eq!(
            pef.io().calls(),
            vec![
                (UV_ESM, 0x40_0000, 0x80_0000),
                (UV_SHARE_PAGE, 0x100, 64),
                (UV_UNSHARE_PAGE, 0x110, 2),
            ]
        );
        // Not 64 KiB aligned: refused before any call, and recorded.
        // SAFETY: as above.
        let bad = unsafe { pef.share(0x100_1000, 0x1_0000) };
        assert!(matches!(
            bad,
            Err(PlatformError::BadRange {
                granularity: 0x1_0000,
                ..
            })
        ));
        assert_eq!(pef.io().calls().len(), 3);
        let c = pef.log().counts();
        assert_eq!(
            (c.shares, c.share_failures, c.bytes_shared),
            (3, 2, 0x40_0000)
        );
        assert_eq!(pef.log().bytes_shared_now(), 0x40_0000 - 0x2_0000);
        assert_eq!(pef.name(), "pef");
    }

    #[test]
    fn ultravisor_errors_are_reported() {
        let pef = Pef::new(FakeUv::new(true), false);
        // MSR[S] proves an ultravisor even without the node.
        assert!(pef.ultravisor_detected());
        pef.io().state.lock().code = U_P2;
        // SAFETY: a fake; nothing is touched.
        let r = unsafe { pef.share(0, 0x1_0000) };
        assert_eq!(
            r,
            Err(PlatformError::Ultravisor {
                call: UV_SHARE_PAGE,
                code: U_P2
            })
        );
        let ev = pef.log().events();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].result, r);
        assert_eq!(r.unwrap_err().as_str(), "ultravisor");
    }

    #[test]
    fn esm_failures() {
        let pef = Pef::new(FakeUv::new(false), true);
        pef.io().state.lock().code = U_PERMISSION;
        // SAFETY: a fake; nothing is touched.
        assert_eq!(
            unsafe { pef.enter_secure_mode(1, 2) },
            Err(PlatformError::Ultravisor {
                call: UV_ESM,
                code: U_PERMISSION
            })
        );
        assert!(!pef.is_secure());
        let pef = Pef::new(FakeUv::new(false), true);
        pef.io().state.lock().esm_leaves_msr_clear = true;
        // SAFETY: as above.
        assert_eq!(
            unsafe { pef.enter_secure_mode(1, 2) },
            Err(PlatformError::EsmNotSecure)
        );
    }
}
