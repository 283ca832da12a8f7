//! AMD SEV, SEV-ES and SEV-SNP: guest memory is encrypted with the guest's key wherever the page
//! tables set the C-bit; a page becomes host-visible when the guest clears it.
//!
//! Detection: CPUID 0x8000_001F EAX bit 1 (SEV supported), `EBX[5:0]` the C-bit position; then
//! SEV_STATUS (MSR 0xC001_0131): bit 0 SEV, bit 1 SEV-ES, bit 2 SEV-SNP active. The MSR is only
//! read when CPUID says SEV exists (on other CPUs it does not, and reading it faults).
//!
//! Sharing a range (what Linux `__set_memory_enc_pgtable` does, in that order):
//! 1. flush the range from the caches (lines tagged with the private key must not be written
//!    back over the shared contents);
//! 2. SNP only: rescind validation (`PVALIDATE` with validate = 0, 2 MiB where the RMP entry is
//!    2 MiB, else per 4 KiB page), then ask the hypervisor for a page-state change to *shared* for
//!    every 4 KiB page, with the GHCB MSR protocol (request 0x014, response 0x015, see [`ghcb`]);
//! 3. clear the C-bit in the guest page tables and flush the TLB.
//!
//! Unsharing: flush, set the C-bit, then (SNP) page-state change to *private* and `PVALIDATE`.
//!
//! Granularity: 2 MiB, because this guest identity-maps with 2 MiB pages and the C-bit is a
//! page-table attribute. Only the logic is here; `cpuid`, `rdmsr`/`wrmsr`, `vmgexit`,
//! `pvalidate`, `clflush` and the page-table walk are in the binary's `arch/x86_64/secure.rs`.
//!
//! Trust: under plain SEV the hypervisor controls CPUID and may intercept the SEV_STATUS read, as
//! for every SEV guest; the C-bit position is range-checked. Under SNP a hypervisor that lies
//! about a page-state change to *private* is caught by `PVALIDATE`; one that lies about *shared*
//! only keeps the page private (the device then sees ciphertext, nothing leaks). Under SEV-ES and
//! SNP, `cpuid` itself raises #VC: the arch layer needs a #VC handler that answers it with the
//! GHCB MSR CPUID protocol ([`ghcb::cpuid_request`]) before this code can run.

use super::decide::SevLevel;
use super::{PAGE_2M, PAGE_4K, Platform, PlatformError, PlatformKind, ShareLog, ShareRange};

/// Highest extended CPUID leaf, in EAX.
pub const CPUID_EXT_MAX: u32 = 0x8000_0000;
/// The SME/SEV leaf.
pub const CPUID_SEV: u32 = 0x8000_001F;
pub const MSR_SEV_STATUS: u32 = 0xC001_0131;
/// The GHCB MSR: the GHCB's address, or a request/response of the MSR protocol.
pub const MSR_GHCB: u32 = 0xC001_0130;

/// PVALIDATE return codes.
pub const PVALIDATE_FAIL_INPUT: u32 = 1;
pub const PVALIDATE_FAIL_SIZEMISMATCH: u32 = 6;
/// Reported when PVALIDATE returned 0 with CF set: the page already was in that state
/// (software-defined, as Linux `PVALIDATE_FAIL_NOUPDATE`).
pub const PVALIDATE_FAIL_NOUPDATE: u32 = 255;

/// What CPUID 0x8000_001F says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SevFeatures {
    pub sev: bool,
    pub sev_es: bool,
    pub sev_snp: bool,
    /// `EBX[5:0]`.
    pub c_bit: u32,
    /// `EBX[11:6]`: physical address bits lost to encryption.
    pub phys_reduction: u32,
}

impl SevFeatures {
    pub fn from_cpuid(eax: u32, ebx: u32) -> Self {
        SevFeatures {
            sev: eax & (1 << 1) != 0,
            sev_es: eax & (1 << 3) != 0,
            sev_snp: eax & (1 << 4) != 0,
            c_bit: ebx & 0x3f,
            phys_reduction: (ebx >> 6) & 0x3f,
        }
    }
}

/// SEV_STATUS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SevStatus(pub u64);

impl SevStatus {
    pub fn sev(self) -> bool {
        self.0 & 1 != 0
    }

    pub fn es(self) -> bool {
        self.0 & 2 != 0
    }

    pub fn snp(self) -> bool {
        self.0 & 4 != 0
    }

    /// The most restrictive level any bit claims, `None` when SEV is off.
    pub fn level(self) -> Option<SevLevel> {
        if self.snp() {
            Some(SevLevel::SevSnp)
        } else if self.es() {
            Some(SevLevel::SevEs)
        } else if self.sev() {
            Some(SevLevel::Sev)
        } else {
            None
        }
    }
}

/// The result of a `PVALIDATE`: EAX and the carry flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PvalidateResult {
    pub rc: u32,
    /// CF: nothing changed (the page already was (in)valid).
    pub no_update: bool,
}

/// The instruction-level interface, implemented by `arch/x86_64/secure.rs` and by fakes.
pub trait SevIo: Sync {
    /// `cpuid` with EAX = `leaf`, ECX = `subleaf`: `[eax, ebx, ecx, edx]`.
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4];

    /// `rdmsr`. Only called for MSRs that exist once CPUID said SEV is supported.
    fn rdmsr(&self, msr: u32) -> u64;

    /// `wrmsr`.
    ///
    /// # Safety
    /// Only the GHCB MSR is written, with a protocol request or the value it had.
    unsafe fn wrmsr(&self, msr: u32, value: u64);

    /// `vmgexit` (`rep vmmcall`): hands the GHCB MSR request to the hypervisor.
    ///
    /// # Safety
    /// The GHCB MSR holds a request whose effect the caller intends.
    unsafe fn vmgexit(&self);

    /// `PVALIDATE` of the page at (identity-mapped) `vaddr`, 2 MiB when `size_2m`.
    ///
    /// # Safety
    /// Rescinding makes the page inaccessible through private mappings until validated again;
    /// validating a page the hypervisor could have swapped must be followed by initialising it.
    unsafe fn pvalidate(&self, vaddr: u64, size_2m: bool, validate: bool) -> PvalidateResult;

    /// Writes back and invalidates the cache lines of the range (`clflush` per line, then a fence).
    ///
    /// # Safety
    /// The range is mapped.
    unsafe fn flush_caches(&self, phys: u64, len: u64);

    /// Sets (`encrypted`) or clears `c_bit_mask` in the 2 MiB page-table entries mapping the
    /// 2 MiB-aligned range, then flushes those TLB entries.
    ///
    /// # Safety
    /// Nothing accesses the range through a reference while its mapping changes.
    unsafe fn set_encrypted(
        &self,
        phys: u64,
        len: u64,
        c_bit_mask: u64,
        encrypted: bool,
    ) -> Result<(), PlatformError>;
}

impl<T: SevIo + ?Sized> SevIo for &T {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        (**self).cpuid(leaf, subleaf)
    }

    fn rdmsr(&self, msr: u32) -> u64 {
        (**self).rdmsr(msr)
    }

    unsafe fn wrmsr(&self, msr: u32, value: u64) {
        // SAFETY: the caller's contract, passed on.
        unsafe { (**self).wrmsr(msr, value) }
    }

    unsafe fn vmgexit(&self) {
        // SAFETY: the caller's contract, passed on.
        unsafe { (**self).vmgexit() }
    }

    unsafe fn pvalidate(&self, vaddr: u64, size_2m: bool, validate: bool) -> PvalidateResult {
        // SAFETY: the caller's contract, passed on.
        unsafe { (**self).pvalidate(vaddr, size_2m, validate) }
    }

    unsafe fn flush_caches(&self, phys: u64, len: u64) {
        // SAFETY: the caller's contract, passed on.
        unsafe { (**self).flush_caches(phys, len) }
    }

    unsafe fn set_encrypted(
        &self,
        phys: u64,
        len: u64,
        c_bit_mask: u64,
        encrypted: bool,
    ) -> Result<(), PlatformError> {
        // SAFETY: the caller's contract, passed on.
        unsafe { (**self).set_encrypted(phys, len, c_bit_mask, encrypted) }
    }
}

/// SEV as detected: `None` when CPUID has no SEV leaf or does not offer SEV (SEV_STATUS is then
/// not read).
pub fn probe<I: SevIo + ?Sized>(io: &I) -> Option<(SevFeatures, SevStatus)> {
    let [max, ..] = io.cpuid(CPUID_EXT_MAX, 0);
    if max < CPUID_SEV {
        return None;
    }
    let [eax, ebx, ..] = io.cpuid(CPUID_SEV, 0);
    let features = SevFeatures::from_cpuid(eax, ebx);
    if !features.sev {
        return None;
    }
    Some((features, SevStatus(io.rdmsr(MSR_SEV_STATUS))))
}

/// The GHCB MSR protocol (GHCB specification, section "MSR protocol"): GHCBInfo in bits 11:0,
/// GHCBData above. Pure encoding and decoding, shared by the guest logic and the fakes.
pub mod ghcb {
    use super::PlatformError;

    pub const INFO_MASK: u64 = 0xfff;
    pub const CPUID_REQ: u64 = 0x004;
    pub const CPUID_RESP: u64 = 0x005;
    pub const PSC_REQ: u64 = 0x014;
    pub const PSC_RESP: u64 = 0x015;
    /// `GHCBData[51:12]` of a PSC request: 40 bits of GFN.
    pub const PSC_GFN_MASK: u64 = (1 << 40) - 1;

    /// SNP page-state change operation, `GHCBData[55:52]`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum PscOp {
        Private = 1,
        Shared = 2,
    }

    /// A page-state change request for one 4 KiB page; `None` if the GFN does not fit 40 bits.
    pub fn psc_request(gfn: u64, op: PscOp) -> Option<u64> {
        (gfn <= PSC_GFN_MASK).then_some(((op as u64) << 52) | (gfn << 12) | PSC_REQ)
    }

    /// Checks the response to the request for `gfn`: GHCBInfo 0x015 and error `GHCBData[63:32]`
    /// zero.
    pub fn psc_check(gfn: u64, response: u64) -> Result<(), PlatformError> {
        if response & INFO_MASK == PSC_RESP && response >> 32 == 0 {
            Ok(())
        } else {
            Err(PlatformError::PageStateChange { gfn, response })
        }
    }

    /// A CPUID request for one register (0 EAX, 1 EBX, 2 ECX, 3 EDX) of `leaf` (subleaf 0): what
    /// a #VC handler sends when SEV-ES intercepts `cpuid`.
    pub fn cpuid_request(leaf: u32, reg: u32) -> u64 {
        ((leaf as u64) << 32) | (((reg & 3) as u64) << 30) | CPUID_REQ
    }

    /// The register value of a CPUID response, `None` if it is not one.
    pub fn cpuid_response(response: u64) -> Option<u32> {
        (response & INFO_MASK == CPUID_RESP).then_some((response >> 32) as u32)
    }

    /// A request as the hypervisor sees it (for fakes and for reports).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Request {
        Psc { gfn: u64, op: u64 },
        Cpuid { leaf: u32, reg: u32 },
        Other(u64),
    }

    pub fn decode_request(v: u64) -> Request {
        match v & INFO_MASK {
            PSC_REQ => Request::Psc {
                gfn: (v >> 12) & PSC_GFN_MASK,
                op: (v >> 52) & 0xf,
            },
            CPUID_REQ => Request::Cpuid {
                leaf: (v >> 32) as u32,
                reg: ((v >> 30) & 3) as u32,
            },
            _ => Request::Other(v),
        }
    }
}

/// The SEV platform.
pub struct Sev<I> {
    io: I,
    features: SevFeatures,
    status: SevStatus,
    level: SevLevel,
    log: ShareLog,
}

impl<I: SevIo> Sev<I> {
    /// Probes; fails with `NotSecure` when SEV is not active, `BadCbit` when the C-bit position is
    /// implausible.
    pub fn new(io: I) -> Result<Self, PlatformError> {
        let (features, status) = probe(&io).ok_or(PlatformError::NotSecure)?;
        let level = status.level().ok_or(PlatformError::NotSecure)?;
        if !(32..=51).contains(&features.c_bit) {
            return Err(PlatformError::BadCbit {
                position: features.c_bit,
            });
        }
        Ok(Sev {
            io,
            features,
            status,
            level,
            log: ShareLog::new(),
        })
    }

    pub fn io(&self) -> &I {
        &self.io
    }

    pub fn level(&self) -> SevLevel {
        self.level
    }

    pub fn features(&self) -> SevFeatures {
        self.features
    }

    pub fn status(&self) -> SevStatus {
        self.status
    }

    pub fn c_bit_mask(&self) -> u64 {
        1 << self.features.c_bit
    }

    fn snp(&self) -> bool {
        self.level == SevLevel::SevSnp
    }

    /// One page-state change through the GHCB MSR protocol; the MSR gets its old value back.
    ///
    /// # Safety
    /// The page is not in use (it changes owner).
    unsafe fn page_state_change(&self, gfn: u64, op: ghcb::PscOp) -> Result<(), PlatformError> {
        let request = ghcb::psc_request(gfn, op)
            .ok_or(PlatformError::PageStateChange { gfn, response: 0 })?;
        let saved = self.io.rdmsr(MSR_GHCB);
        // SAFETY: only the GHCB MSR is written, with a PSC request and then its old value; the
        // caller owns the page whose state changes.
        let response = unsafe {
            self.io.wrmsr(MSR_GHCB, request);
            self.io.vmgexit();
            let response = self.io.rdmsr(MSR_GHCB);
            self.io.wrmsr(MSR_GHCB, saved);
            response
        };
        ghcb::psc_check(gfn, response)
    }

    /// PVALIDATE of one 2 MiB chunk, falling back to 4 KiB pages when the RMP entry is not 2 MiB.
    ///
    /// # Safety
    /// The chunk is not in use.
    unsafe fn pvalidate_chunk(&self, chunk: u64, validate: bool) -> Result<(), PlatformError> {
        let check = |phys: u64, r: PvalidateResult| match r {
            PvalidateResult {
                rc: 0,
                no_update: false,
            } => Ok(()),
            PvalidateResult { rc: 0, .. } => Err(PlatformError::Pvalidate {
                phys,
                code: PVALIDATE_FAIL_NOUPDATE,
            }),
            PvalidateResult { rc, .. } => Err(PlatformError::Pvalidate { phys, code: rc }),
        };
        // SAFETY: the caller's contract.
        let big = unsafe { self.io.pvalidate(chunk, true, validate) };
        if big.rc != PVALIDATE_FAIL_SIZEMISMATCH {
            return check(chunk, big);
        }
        for page in (chunk..chunk + PAGE_2M).step_by(PAGE_4K as usize) {
            // SAFETY: as above.
            check(page, unsafe { self.io.pvalidate(page, false, validate) })?;
        }
        Ok(())
    }

    /// # Safety
    /// As for [`Platform::share`].
    unsafe fn psc_chunk(&self, chunk: u64, op: ghcb::PscOp) -> Result<(), PlatformError> {
        for page in (chunk..chunk + PAGE_2M).step_by(PAGE_4K as usize) {
            // SAFETY: the caller owns the range.
            unsafe { self.page_state_change(page / PAGE_4K, op)? };
        }
        Ok(())
    }
}

impl<I: SevIo> Platform for Sev<I> {
    fn kind(&self) -> PlatformKind {
        match self.level {
            SevLevel::Sev => PlatformKind::Sev,
            SevLevel::SevEs => PlatformKind::SevEs,
            SevLevel::SevSnp => PlatformKind::SevSnp,
        }
    }

    fn is_secure(&self) -> bool {
        true
    }

    fn granularity(&self) -> u64 {
        PAGE_2M
    }

    /// Guest-physical: the C-bit is never part of an address a device sees.
    fn device_addr(&self, phys: u64) -> u64 {
        phys & !self.c_bit_mask()
    }

    fn log(&self) -> &ShareLog {
        &self.log
    }

    unsafe fn share_range(&self, range: ShareRange) -> Result<(), PlatformError> {
        // The Linux order (module docs): flush, SNP invalidate + page-state change, C-bit.
        // SAFETY: the caller owns the identity-mapped range (Platform::share).
        unsafe { self.io.flush_caches(range.phys(), range.len()) };
        if self.snp() {
            for chunk in range.chunks(PAGE_2M) {
                // SAFETY: as above; nothing accesses the chunk until it is mapped shared.
                unsafe { self.pvalidate_chunk(chunk, false)? };
                // SAFETY: as above; the chunk is invalidated, so it may change owner.
                unsafe { self.psc_chunk(chunk, ghcb::PscOp::Shared)? };
            }
        }
        // SAFETY: as above; no reference into the range exists while its mapping changes.
        unsafe {
            self.io
                .set_encrypted(range.phys(), range.len(), self.c_bit_mask(), false)
        }
    }

    unsafe fn unshare_range(&self, range: ShareRange) -> Result<(), PlatformError> {
        // The Linux order: flush, C-bit, then SNP page-state change + validate.
        // SAFETY: the caller owns the range and no device uses it (Platform::unshare).
        unsafe { self.io.flush_caches(range.phys(), range.len()) };
        // SAFETY: as above; no reference into the range exists while its mapping changes.
        unsafe {
            self.io
                .set_encrypted(range.phys(), range.len(), self.c_bit_mask(), true)?
        };
        if self.snp() {
            for chunk in range.chunks(PAGE_2M) {
                // SAFETY: as above; the chunk changes owner back to the guest.
                unsafe { self.psc_chunk(chunk, ghcb::PscOp::Private)? };
                // SAFETY: as above; it is validated before anything reads it (its contents
                // are undefined; the owner initialises it).
                unsafe { self.pvalidate_chunk(chunk, true)? };
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A fake SEV machine: CPUID, SEV_STATUS, a GHCB MSR with a hypervisor behind `vmgexit`, an
    //! RMP (per 4 KiB page: assigned to the guest, validated; per 2 MiB chunk: a 2 MiB entry or
    //! not), and the C-bit of each 2 MiB page-table entry. It checks the order of the steps.
    use super::*;
    use alloc::collections::{BTreeMap, BTreeSet};
    use alloc::vec::Vec;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Page {
        pub private: bool,
        pub validated: bool,
    }

    pub struct State {
        pub max_ext: u32,
        pub sev_eax: u32,
        pub sev_ebx: u32,
        pub status: u64,
        pub ghcb_msr: u64,
        pub rdmsrs: Vec<u32>,
        pub requests: Vec<u64>,
        /// Answer the PSC for this GFN with this error code.
        pub psc_error: Option<(u64, u32)>,
        /// Answer every request with a non-PSC response.
        pub garbage_response: bool,
        pub rmp: BTreeMap<u64, Page>,
        /// GFNs of 2 MiB chunks with a 2 MiB RMP entry.
        pub rmp_2m: BTreeSet<u64>,
        /// 2 MiB chunk -> C-bit set in its page-table entry.
        pub encrypted: BTreeMap<u64, bool>,
        pub flushed: Vec<(u64, u64)>,
        pub pvalidates: Vec<(u64, bool, bool)>,
    }

    pub struct FakeSev {
        pub s: spin::Mutex<State>,
    }

    pub const C_BIT: u32 = 51;

    impl FakeSev {
        /// A guest with SEV_STATUS `status` whose RAM `[0, ram)` is private, validated, encrypted,
        /// with 2 MiB RMP entries.
        pub fn new(status: u64, ram: u64) -> Self {
            let mut rmp = BTreeMap::new();
            let mut rmp_2m = BTreeSet::new();
            let mut encrypted = BTreeMap::new();
            for gfn in 0..ram / PAGE_4K {
                rmp.insert(
                    gfn,
                    Page {
                        private: true,
                        validated: true,
                    },
                );
            }
            for chunk in (0..ram).step_by(PAGE_2M as usize) {
                rmp_2m.insert(chunk / PAGE_4K);
                encrypted.insert(chunk, true);
            }
            FakeSev {
                s: spin::Mutex::new(State {
                    max_ext: 0x8000_0021,
                    sev_eax: 0b1_1011,
                    sev_ebx: C_BIT | (5 << 6),
                    status,
                    ghcb_msr: 0xfee0_0000_1000, // a registered GHCB's GPA
                    rdmsrs: Vec::new(),
                    requests: Vec::new(),
                    psc_error: None,
                    garbage_response: false,
                    rmp,
                    rmp_2m,
                    encrypted,
                    flushed: Vec::new(),
                    pvalidates: Vec::new(),
                }),
            }
        }

        pub fn page(&self, phys: u64) -> Page {
            self.s.lock().rmp[&(phys / PAGE_4K)]
        }
    }

    impl SevIo for FakeSev {
        fn cpuid(&self, leaf: u32, _subleaf: u32) -> [u32; 4] {
            let s = self.s.lock();
            match leaf {
                CPUID_EXT_MAX => [s.max_ext, 0, 0, 0],
                CPUID_SEV if s.max_ext >= CPUID_SEV => [s.sev_eax, s.sev_ebx, 0, 0],
                _ => [0; 4],
            }
        }

        fn rdmsr(&self, msr: u32) -> u64 {
            let mut s = self.s.lock();
            s.rdmsrs.push(msr);
            match msr {
                MSR_SEV_STATUS => s.status,
                MSR_GHCB => s.ghcb_msr,
                _ => panic!("rdmsr of {msr:#x}"),
            }
        }

        unsafe fn wrmsr(&self, msr: u32, value: u64) {
            assert_eq!(msr, MSR_GHCB, "only the GHCB MSR is written");
            self.s.lock().ghcb_msr = value;
        }

        unsafe fn vmgexit(&self) {
            let mut s = self.s.lock();
            let req = s.ghcb_msr;
            s.requests.push(req);
            if s.garbage_response {
                s.ghcb_msr = 0xdead_0000_0000_0fff;
                return;
            }
            let ghcb::Request::Psc { gfn, op } = ghcb::decode_request(req) else {
                s.ghcb_msr = 0; // not a response to anything
                return;
            };
            if let Some((bad, code)) = s.psc_error
                && bad == gfn
            {
                s.ghcb_msr = ((code as u64) << 32) | ghcb::PSC_RESP;
                return;
            }
            // The hypervisor splits a 2 MiB RMP entry before changing one page of it.
            let chunk_gfn = gfn & !511;
            s.rmp_2m.remove(&chunk_gfn);
            let page = s.rmp.get_mut(&gfn).expect("PSC of a page outside RAM");
            assert!(
                !(op == 2 && page.validated),
                "SNP: a page must be invalidated before it is made shared (gfn {gfn:#x})"
            );
            page.private = op == 1;
            page.validated = false;
            s.ghcb_msr = ghcb::PSC_RESP;
        }

        unsafe fn pvalidate(&self, vaddr: u64, size_2m: bool, validate: bool) -> PvalidateResult {
            let mut s = self.s.lock();
            s.pvalidates.push((vaddr, size_2m, validate));
            let gfn = vaddr / PAGE_4K;
            let gfns = if size_2m {
                if !s.rmp_2m.contains(&gfn) {
                    return PvalidateResult {
                        rc: PVALIDATE_FAIL_SIZEMISMATCH,
                        no_update: false,
                    };
                }
                gfn..gfn + 512
            } else {
                gfn..gfn + 1
            };
            let chunk = vaddr & !(PAGE_2M - 1);
            if validate {
                assert!(
                    s.encrypted[&chunk],
                    "validate only after the C-bit is set again (Linux order)"
                );
            }
            let mut changed = false;
            for g in gfns {
                let p = s.rmp.get_mut(&g).unwrap();
                if !p.private {
                    return PvalidateResult {
                        rc: PVALIDATE_FAIL_INPUT,
                        no_update: false,
                    };
                }
                changed |= p.validated != validate;
                p.validated = validate;
            }
            PvalidateResult {
                rc: 0,
                no_update: !changed,
            }
        }

        unsafe fn flush_caches(&self, phys: u64, len: u64) {
            self.s.lock().flushed.push((phys, len));
        }

        unsafe fn set_encrypted(
            &self,
            phys: u64,
            len: u64,
            c_bit_mask: u64,
            encrypted: bool,
        ) -> Result<(), PlatformError> {
            assert_eq!(c_bit_mask, 1 << C_BIT);
            let mut s = self.s.lock();
            let snp = s.status & 4 != 0;
            for chunk in (phys..phys + len).step_by(PAGE_2M as usize) {
                if !s.encrypted.contains_key(&chunk) {
                    return Err(PlatformError::PageTable { phys: chunk });
                }
                if snp && !encrypted {
                    let all_shared =
                        (chunk / PAGE_4K..(chunk + PAGE_2M) / PAGE_4K).all(|g| !s.rmp[&g].private);
                    assert!(
                        all_shared,
                        "SNP: C-bit cleared before the page-state change"
                    );
                }
                s.encrypted.insert(chunk, encrypted);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{C_BIT, FakeSev};
    use super::*;

    const RAM: u64 = 16 << 20;

    #[test]
    fn probe_reads_sev_status_only_when_cpuid_offers_sev() {
        let f = FakeSev::new(1, RAM);
        f.s.lock().max_ext = 0x8000_0008;
        assert_eq!(probe(&f), None);
        f.s.lock().max_ext = 0x8000_001f;
        f.s.lock().sev_eax = 0;
        assert_eq!(probe(&f), None);
        assert!(f.s.lock().rdmsrs.is_empty(), "SEV_STATUS must not be read");
        assert!(matches!(Sev::new(&f), Err(PlatformError::NotSecure)));
        f.s.lock().sev_eax = 0b1_1010;
        let (feat, status) = probe(&f).unwrap();
        assert!(feat.sev && feat.sev_es && feat.sev_snp);
        assert_eq!((feat.c_bit, feat.phys_reduction), (C_BIT, 5));
        assert!(status.sev() && !status.es());
        assert_eq!(f.s.lock().rdmsrs, vec![MSR_SEV_STATUS]);
    }

    #[test]
    fn levels_and_c_bit_checks() {
        for (status, kind) in [
            (1, PlatformKind::Sev),
            (3, PlatformKind::SevEs),
            (7, PlatformKind::SevSnp),
            (4, PlatformKind::SevSnp),
        ] {
            let sev = Sev::new(FakeSev::new(status, RAM)).unwrap();
            assert_eq!(sev.kind(), kind);
            assert!(sev.is_secure());
            assert_eq!(sev.granularity(), PAGE_2M);
        }
        assert!(matches!(
            Sev::new(FakeSev::new(0, RAM)),
            Err(PlatformError::NotSecure)
        ));
        let f = FakeSev::new(1, RAM);
        f.s.lock().sev_ebx = 20;
        assert!(matches!(
            Sev::new(f),
            Err(PlatformError::BadCbit { position: 20 })
        ));
        let sev = Sev::new(FakeSev::new(1, RAM)).unwrap();
        assert_eq!(sev.c_bit_mask(), 1 << 51);
        assert_eq!(sev.device_addr(0x20_0000 | (1 << 51)), 0x20_0000);
        assert_eq!(sev.device_addr(0x20_0000), 0x20_0000);
    }

    #[test]
    fn ghcb_msr_encoding() {
        use ghcb::*;
        // GHCBData[55:52] op, [51:12] gfn, [11:0] 0x014.
        assert_eq!(
            psc_request(0x12345, PscOp::Shared),
            Some(0x0020_0000_1234_5014)
        );
        assert_eq!(
            psc_request(0x12345, PscOp::Private),
            Some(0x0010_0000_1234_5014)
        );
        assert_eq!(psc_request(1 << 40, PscOp::Shared), None);
        assert_eq!(
            decode_request(psc_request(PSC_GFN_MASK, PscOp::Private).unwrap()),
            Request::Psc {
                gfn: PSC_GFN_MASK,
                op: 1
            }
        );
        assert_eq!(psc_check(7, 0x015), Ok(()));
        assert!(psc_check(7, 0x0000_0001_0000_0015).is_err(), "error code");
        assert!(psc_check(7, 0x014).is_err(), "not a response");
        assert!(psc_check(7, 0x115).is_err(), "not a response");
        let r = cpuid_request(0x8000_001f, 1);
        assert_eq!(r, 0x8000_001f_4000_0004);
        assert_eq!(
            decode_request(r),
            Request::Cpuid {
                leaf: 0x8000_001f,
                reg: 1
            }
        );
        assert_eq!(cpuid_response(0x0000_0033_0000_0005), Some(0x33));
        assert_eq!(cpuid_response(0x0000_0033_0000_0004), None);
        assert_eq!(decode_request(0x100), Request::Other(0x100));
    }

    #[test]
    fn plain_sev_shares_by_clearing_the_c_bit() {
        let sev = Sev::new(FakeSev::new(1, RAM)).unwrap();
        // SAFETY: a fake machine; no real memory changes.
        unsafe { sev.share(0x40_0000, 0x40_0000) }.unwrap();
        {
            let s = sev.io().s.lock();
            assert_eq!(s.flushed, vec![(0x40_0000, 0x40_0000)]);
            assert!(!s.encrypted[&0x40_0000] && !s.encrypted[&0x60_0000]);
            assert!(s.encrypted[&0x20_0000] && s.encrypted[&0x80_0000]);
            assert!(
                s.requests.is_empty() && s.pvalidates.is_empty(),
                "no SNP steps"
            );
        }
        // SAFETY: as above.
        unsafe { sev.unshare(0x40_0000, 0x20_0000) }.unwrap();
        assert!(sev.io().s.lock().encrypted[&0x40_0000]);
        // 2 MiB granularity, and the page-table walk's failures come through.
        // SAFETY: as above.
        let r = unsafe { sev.share(0x41_0000, 0x20_0000) };
        assert!(matches!(r, Err(PlatformError::BadRange { .. })));
        // SAFETY: as above.
        let r = unsafe { sev.share(RAM, PAGE_2M) };
        assert_eq!(r, Err(PlatformError::PageTable { phys: RAM }));
        let c = sev.log().counts();
        assert_eq!((c.shares, c.share_failures, c.unshares), (3, 2, 1));
    }

    #[test]
    fn snp_share_and_unshare_follow_the_protocol() {
        let sev = Sev::new(FakeSev::new(7, RAM)).unwrap();
        let saved = sev.io().s.lock().ghcb_msr;
        // SAFETY: a fake machine.
        unsafe { sev.share(0x20_0000, 0x40_0000) }.unwrap();
        {
            let s = sev.io().s.lock();
            // One PSC per 4 KiB page, in order, each a "shared" request.
            assert_eq!(s.requests.len(), 1024);
            for (i, &r) in s.requests.iter().enumerate() {
                assert_eq!(
                    ghcb::decode_request(r),
                    ghcb::Request::Psc {
                        gfn: 0x200 + i as u64,
                        op: 2
                    }
                );
            }
            assert_eq!(s.ghcb_msr, saved, "the GHCB MSR gets its old value back");
            // The 2 MiB RMP entries were rescinded whole.
            assert_eq!(
                s.pvalidates,
                vec![(0x20_0000, true, false), (0x40_0000, true, false)]
            );
            assert!(!s.encrypted[&0x20_0000] && !s.encrypted[&0x40_0000]);
        }
        assert_eq!(
            sev.io().page(0x30_0000),
            fake::Page {
                private: false,
                validated: false
            }
        );
        // Back to private: the RMP entries are 4 KiB now, so validation falls back to 4 KiB.
        // SAFETY: as above.
        unsafe { sev.unshare(0x20_0000, 0x20_0000) }.unwrap();
        {
            let s = sev.io().s.lock();
            assert_eq!(s.requests.len(), 1024 + 512);
            let v = &s.pvalidates[2..];
            assert_eq!(v[0], (0x20_0000, true, true), "2 MiB tried first");
            assert_eq!(v.len(), 1 + 512);
            assert!(v[1..].iter().all(|&(_, big, val)| !big && val));
            assert!(s.encrypted[&0x20_0000]);
        }
        assert_eq!(
            sev.io().page(0x20_1000),
            fake::Page {
                private: true,
                validated: true
            }
        );
    }

    #[test]
    fn snp_failures_are_reported() {
        let sev = Sev::new(FakeSev::new(7, RAM)).unwrap();
        sev.io().s.lock().psc_error = Some((0x205, 3));
        // SAFETY: a fake machine.
        let r = unsafe { sev.share(0x20_0000, PAGE_2M) };
        assert_eq!(
            r,
            Err(PlatformError::PageStateChange {
                gfn: 0x205,
                response: (3 << 32) | 0x15
            })
        );
        // The C-bit stays set when the hypervisor refused.
        assert!(sev.io().s.lock().encrypted[&0x20_0000]);

        let sev = Sev::new(FakeSev::new(7, RAM)).unwrap();
        sev.io().s.lock().garbage_response = true;
        // SAFETY: as above.
        let r = unsafe { sev.share(0x40_0000, PAGE_2M) };
        assert!(matches!(
            r,
            Err(PlatformError::PageStateChange { gfn: 0x400, .. })
        ));

        // Rescinding a chunk that is not validated: PVALIDATE changes nothing, an error.
        let sev = Sev::new(FakeSev::new(7, RAM)).unwrap();
        for p in sev.io().s.lock().rmp.values_mut() {
            p.validated = false;
        }
        // SAFETY: as above.
        let r = unsafe { sev.share(0x60_0000, PAGE_2M) };
        assert_eq!(
            r,
            Err(PlatformError::Pvalidate {
                phys: 0x60_0000,
                code: PVALIDATE_FAIL_NOUPDATE
            })
        );
        assert_eq!(sev.log().counts().share_failures, 1);
    }
}
