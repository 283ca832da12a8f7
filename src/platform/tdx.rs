//! Intel TDX: a trust domain is private from its first instruction. A page becomes host-visible
//! when the guest maps it with the *shared* GPA bit (bit GPAW-1, from `TDG.VP.INFO`) and tells
//! the VMM with `TDG.VP.VMCALL<MapGPA>`.
//!
//! Detection: CPUID leaf 0x21 (subleaf 0) returns "IntelTDX    " in EBX, EDX, ECX (that order).
//!
//! Sharing (Linux `tdx_enc_status_changed`, private to shared): set the shared bit in the page
//! tables (flushing the TLB), then MapGPA of the range with the shared bit set. The VMM may answer
//! "retry from GPA x" (status 1, x in R11): x must lie inside the range (it comes from the
//! untrusted VMM); a retry that makes no progress is allowed three times.
//!
//! Unsharing: MapGPA of the range without the shared bit, accept every page
//! (`TDG.MEM.PAGE.ACCEPT`, 2 MiB where possible, else per 4 KiB page), then clear the shared bit
//! in the page tables.
//!
//! Device address: the guest-physical address without the shared bit. The bit selects the
//! shared EPT for the *CPU*; the VMM strips it, and QEMU's devices DMA to plain guest-physical
//! addresses.
//!
//! Granularity: 2 MiB, because this guest identity-maps with 2 MiB pages. Only the logic is
//! here; `cpuid`, `tdcall` and the page-table walk are in the binary's `arch/x86_64/secure.rs`.

use super::{PAGE_2M, PAGE_4K, Platform, PlatformError, PlatformKind, ShareLog, ShareRange};

pub const CPUID_TDX: u32 = 0x21;
/// EBX, EDX, ECX of CPUID 0x21.
pub const TDX_SIGNATURE: &[u8; 12] = b"IntelTDX    ";

/// TDCALL leaves (RAX).
pub const TDG_VP_VMCALL: u64 = 0;
pub const TDG_VP_INFO: u64 = 1;
pub const TDG_MEM_PAGE_ACCEPT: u64 = 6;
/// TDG.VP.VMCALL sub-function (R11) with R10 = 0 (standard): R12 = start GPA, R13 = size.
pub const TDVMCALL_MAP_GPA: u64 = 0x10001;
pub const TDVMCALL_STATUS_SUCCESS: u64 = 0;
/// R11 holds the GPA to retry from.
pub const TDVMCALL_STATUS_RETRY: u64 = 1;
/// Retries without progress allowed per MapGPA (as Linux).
pub const MAP_GPA_MAX_RETRIES: u32 = 3;

/// The registers of `TDG.VP.INFO` this code reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VpInfo {
    /// RCX: bits 5:0 are the GPA width (48 or 52).
    pub rcx: u64,
    /// RDX: the TD attributes.
    pub rdx: u64,
}

/// The outcome of one MapGPA TDVMCALL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapGpaResult {
    /// RAX: the TDCALL itself (0 = the VMM was called).
    pub tdcall: u64,
    /// R10: the TDVMCALL status.
    pub status: u64,
    /// R11: where to retry from, with `TDVMCALL_STATUS_RETRY`.
    pub next: u64,
}

/// The instruction-level interface, implemented by `arch/x86_64/secure.rs` and by fakes.
pub trait TdxIo: Sync {
    /// `cpuid`: `[eax, ebx, ecx, edx]`.
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4];

    /// `TDG.VP.INFO`; `Err` carries a non-zero TDCALL status.
    fn vp_info(&self) -> Result<VpInfo, u64>;

    /// `TDG.VP.VMCALL<MapGPA>(gpa, size)`.
    ///
    /// # Safety
    /// The pages change owner: the caller owns them and does not use them meanwhile.
    unsafe fn map_gpa(&self, gpa: u64, size: u64) -> MapGpaResult;

    /// `TDG.MEM.PAGE.ACCEPT` of the page at `gpa` (2 MiB when `size_2m`); the TDCALL status.
    ///
    /// # Safety
    /// The page was just converted to private by this guest (accepting gives it zeroed contents).
    unsafe fn accept(&self, gpa: u64, size_2m: bool) -> u64;

    /// Sets (`shared`) or clears `shared_mask` in the 2 MiB page-table entries mapping the
    /// 2 MiB-aligned range, then flushes those TLB entries.
    ///
    /// # Safety
    /// Nothing accesses the range through a reference while its mapping changes.
    unsafe fn set_shared(
        &self,
        phys: u64,
        len: u64,
        shared_mask: u64,
        shared: bool,
    ) -> Result<(), PlatformError>;
}

impl<T: TdxIo + ?Sized> TdxIo for &T {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        (**self).cpuid(leaf, subleaf)
    }

    fn vp_info(&self) -> Result<VpInfo, u64> {
        (**self).vp_info()
    }

    unsafe fn map_gpa(&self, gpa: u64, size: u64) -> MapGpaResult {
        // SAFETY: the caller's contract, passed on.
        unsafe { (**self).map_gpa(gpa, size) }
    }

    unsafe fn accept(&self, gpa: u64, size_2m: bool) -> u64 {
        // SAFETY: the caller's contract, passed on.
        unsafe { (**self).accept(gpa, size_2m) }
    }

    unsafe fn set_shared(
        &self,
        phys: u64,
        len: u64,
        shared_mask: u64,
        shared: bool,
    ) -> Result<(), PlatformError> {
        // SAFETY: the caller's contract, passed on.
        unsafe { (**self).set_shared(phys, len, shared_mask, shared) }
    }
}

/// Whether this is a TD: CPUID has leaf 0x21 and it carries the signature.
pub fn detect<I: TdxIo + ?Sized>(io: &I) -> bool {
    let [max, ..] = io.cpuid(0, 0);
    if max < CPUID_TDX {
        return false;
    }
    let [_, ebx, ecx, edx] = io.cpuid(CPUID_TDX, 0);
    let mut sig = [0u8; 12];
    sig[0..4].copy_from_slice(&ebx.to_le_bytes());
    sig[4..8].copy_from_slice(&edx.to_le_bytes());
    sig[8..12].copy_from_slice(&ecx.to_le_bytes());
    &sig == TDX_SIGNATURE
}

/// The TDX platform.
pub struct Tdx<I> {
    io: I,
    gpa_width: u32,
    attributes: u64,
    log: ShareLog,
}

impl<I: TdxIo> Tdx<I> {
    /// Detects and reads the GPA width; `NotSecure` when this is not a TD.
    pub fn new(io: I) -> Result<Self, PlatformError> {
        if !detect(&io) {
            return Err(PlatformError::NotSecure);
        }
        let info = io.vp_info().map_err(|status| PlatformError::TdInfo {
            status,
            gpa_width: 0,
        })?;
        let gpa_width = (info.rcx & 0x3f) as u32;
        if gpa_width != 48 && gpa_width != 52 {
            return Err(PlatformError::TdInfo {
                status: 0,
                gpa_width,
            });
        }
        Ok(Tdx {
            io,
            gpa_width,
            attributes: info.rdx,
            log: ShareLog::new(),
        })
    }

    pub fn io(&self) -> &I {
        &self.io
    }

    pub fn gpa_width(&self) -> u32 {
        self.gpa_width
    }

    pub fn attributes(&self) -> u64 {
        self.attributes
    }

    /// The shared GPA bit: bit GPAW-1.
    pub fn shared_mask(&self) -> u64 {
        1 << (self.gpa_width - 1)
    }

    /// MapGPA of `[start, end)` (GPAs, with or without the shared bit), following retries.
    ///
    /// # Safety
    /// The caller owns the pages.
    unsafe fn map_gpa_range(&self, mut start: u64, end: u64) -> Result<(), PlatformError> {
        let mut retries = 0;
        while retries < MAP_GPA_MAX_RETRIES {
            // SAFETY: the caller owns the pages.
            let r = unsafe { self.io.map_gpa(start, end - start) };
            if r.tdcall != 0 {
                return Err(PlatformError::MapGpa {
                    gpa: start,
                    status: r.tdcall,
                });
            }
            match r.status {
                TDVMCALL_STATUS_SUCCESS => return Ok(()),
                TDVMCALL_STATUS_RETRY => {}
                status => return Err(PlatformError::MapGpa { gpa: start, status }),
            }
            // R11 comes from the untrusted VMM.
            if r.next < start || r.next >= end {
                return Err(PlatformError::MapGpa {
                    gpa: r.next,
                    status: TDVMCALL_STATUS_RETRY,
                });
            }
            if r.next == start {
                retries += 1;
            } else {
                start = r.next;
                retries = 0;
            }
        }
        Err(PlatformError::MapGpa {
            gpa: start,
            status: TDVMCALL_STATUS_RETRY,
        })
    }

    /// Accepts one 2 MiB chunk, falling back to 4 KiB pages.
    ///
    /// # Safety
    /// The chunk was just converted to private.
    unsafe fn accept_chunk(&self, chunk: u64) -> Result<(), PlatformError> {
        // SAFETY: the caller's contract.
        if unsafe { self.io.accept(chunk, true) } == 0 {
            return Ok(());
        }
        for page in (chunk..chunk + PAGE_2M).step_by(PAGE_4K as usize) {
            // SAFETY: as above.
            let status = unsafe { self.io.accept(page, false) };
            if status != 0 {
                return Err(PlatformError::Accept { gpa: page, status });
            }
        }
        Ok(())
    }
}

impl<I: TdxIo> Platform for Tdx<I> {
    fn kind(&self) -> PlatformKind {
        PlatformKind::Tdx
    }

    fn is_secure(&self) -> bool {
        true
    }

    fn granularity(&self) -> u64 {
        PAGE_2M
    }

    /// The plain guest-physical address (see the module docs).
    fn device_addr(&self, phys: u64) -> u64 {
        phys & !self.shared_mask()
    }

    fn log(&self) -> &ShareLog {
        &self.log
    }

    unsafe fn share_range(&self, range: ShareRange) -> Result<(), PlatformError> {
        let mask = self.shared_mask();
        // The Linux order: page tables first, then MapGPA.
        // SAFETY: the caller owns the range (Platform::share); no reference into it exists
        // while its mapping changes.
        unsafe { self.io.set_shared(range.phys(), range.len(), mask, true)? };
        // SAFETY: as above; the pages change owner.
        unsafe { self.map_gpa_range(range.phys() | mask, range.end() | mask) }
    }

    unsafe fn unshare_range(&self, range: ShareRange) -> Result<(), PlatformError> {
        // The Linux order: MapGPA, accept, then page tables.
        // SAFETY: the caller owns the range and no device uses it (Platform::unshare).
        unsafe { self.map_gpa_range(range.phys(), range.end())? };
        for chunk in range.chunks(PAGE_2M) {
            // SAFETY: as above; the chunk was just converted to private.
            unsafe { self.accept_chunk(chunk)? };
        }
        // SAFETY: as above; no reference into the range exists while its mapping changes.
        unsafe {
            self.io
                .set_shared(range.phys(), range.len(), self.shared_mask(), false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use alloc::vec::Vec;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Page {
        Private,
        /// Converted to private by MapGPA, not accepted yet.
        Pending,
        Shared,
    }

    struct State {
        max_leaf: u32,
        sig: [u32; 3], // ebx, ecx, edx
        vp_info: Result<VpInfo, u64>,
        pages: BTreeMap<u64, Page>,
        /// 2 MiB chunk -> shared bit set in its page-table entry.
        pte_shared: BTreeMap<u64, bool>,
        map_calls: Vec<(u64, u64)>,
        /// Scripted MapGPA answers, used first; then the fake converts the whole request.
        script: Vec<MapGpaResult>,
        accepts: Vec<(u64, bool)>,
    }

    struct FakeTd {
        s: spin::Mutex<State>,
    }

    const GPAW: u64 = 52;
    const SHARED: u64 = 1 << 51;
    const RAM: u64 = 16 << 20;

    impl FakeTd {
        fn new() -> Self {
            let words = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let s = TDX_SIGNATURE;
            FakeTd {
                s: spin::Mutex::new(State {
                    max_leaf: 0x23,
                    sig: [words(&s[0..4]), words(&s[8..12]), words(&s[4..8])],
                    vp_info: Ok(VpInfo {
                        rcx: GPAW | (7 << 8),
                        rdx: 0x1000_0000,
                    }),
                    pages: (0..RAM / PAGE_4K).map(|g| (g, Page::Private)).collect(),
                    pte_shared: (0..RAM)
                        .step_by(PAGE_2M as usize)
                        .map(|c| (c, false))
                        .collect(),
                    map_calls: Vec::new(),
                    script: Vec::new(),
                    accepts: Vec::new(),
                }),
            }
        }

        fn page(&self, phys: u64) -> Page {
            self.s.lock().pages[&(phys / PAGE_4K)]
        }
    }

    impl TdxIo for FakeTd {
        fn cpuid(&self, leaf: u32, _subleaf: u32) -> [u32; 4] {
            let s = self.s.lock();
            match leaf {
                0 => [s.max_leaf, 0x756e_6547, 0x6c65_746e, 0x4965_6e69],
                CPUID_TDX if s.max_leaf >= CPUID_TDX => [0, s.sig[0], s.sig[1], s.sig[2]],
                _ => [0; 4],
            }
        }

        fn vp_info(&self) -> Result<VpInfo, u64> {
            self.s.lock().vp_info
        }

        unsafe fn map_gpa(&self, gpa: u64, size: u64) -> MapGpaResult {
            let mut s = self.s.lock();
            s.map_calls.push((gpa, size));
            if !s.script.is_empty() {
                let r = s.script.remove(0);
                if r.status == TDVMCALL_STATUS_RETRY && r.next > gpa {
                    // Partial progress: the part before `next` is converted.
                    convert(&mut s, gpa, r.next);
                }
                return r;
            }
            convert(&mut s, gpa, gpa + size);
            MapGpaResult::default()
        }

        unsafe fn accept(&self, gpa: u64, size_2m: bool) -> u64 {
            let mut s = self.s.lock();
            s.accepts.push((gpa, size_2m));
            assert_eq!(gpa & SHARED, 0, "accept takes a private GPA");
            let n = if size_2m { 512 } else { 1 };
            let gfns = gpa / PAGE_4K..gpa / PAGE_4K + n;
            if size_2m && !gpa.is_multiple_of(PAGE_2M) {
                return 0xC000_0100_0000_0000; // operand invalid
            }
            if gfns.clone().any(|g| s.pages[&g] != Page::Pending) {
                return 0xC000_0B0B_0000_0001; // not pending (or size mismatch)
            }
            for g in gfns {
                s.pages.insert(g, Page::Private);
            }
            0
        }

        unsafe fn set_shared(
            &self,
            phys: u64,
            len: u64,
            shared_mask: u64,
            shared: bool,
        ) -> Result<(), PlatformError> {
            assert_eq!(shared_mask, SHARED);
            let mut s = self.s.lock();
            for chunk in (phys..phys + len).step_by(PAGE_2M as usize) {
                if !s.pte_shared.contains_key(&chunk) {
                    return Err(PlatformError::PageTable { phys: chunk });
                }
                if !shared {
                    let all_private = (chunk / PAGE_4K..(chunk + PAGE_2M) / PAGE_4K)
                        .all(|g| s.pages[&g] == Page::Private);
                    assert!(all_private, "shared bit cleared before MapGPA + accept");
                }
                s.pte_shared.insert(chunk, shared);
            }
            Ok(())
        }
    }

    fn convert(s: &mut State, start: u64, end: u64) {
        let shared = start & SHARED != 0;
        let (a, b) = (start & !SHARED, end & !SHARED);
        for g in a / PAGE_4K..b / PAGE_4K {
            if shared {
                let chunk = (g * PAGE_4K) & !(PAGE_2M - 1);
                assert!(
                    s.pte_shared[&chunk],
                    "MapGPA(shared) before the page tables"
                );
            }
            s.pages
                .insert(g, if shared { Page::Shared } else { Page::Pending });
        }
    }

    #[test]
    fn detection_and_gpa_width() {
        let td = FakeTd::new();
        assert!(detect(&td));
        let tdx = Tdx::new(&td).unwrap();
        assert_eq!(tdx.gpa_width(), 52);
        assert_eq!(tdx.shared_mask(), 1 << 51);
        assert_eq!(tdx.attributes(), 0x1000_0000);
        assert_eq!(tdx.name(), "tdx");
        assert_eq!(tdx.device_addr(0x40_0000 | SHARED), 0x40_0000);

        td.s.lock().sig[1] = u32::from_le_bytes(*b"TDX!");
        assert!(!detect(&td));
        assert!(matches!(Tdx::new(&td), Err(PlatformError::NotSecure)));
        let td = FakeTd::new();
        td.s.lock().max_leaf = 0x20;
        assert!(!detect(&td), "leaf 0x21 beyond the maximum is not read");
        let td = FakeTd::new();
        td.s.lock().vp_info = Ok(VpInfo { rcx: 40, rdx: 0 });
        assert!(matches!(
            Tdx::new(&td),
            Err(PlatformError::TdInfo { gpa_width: 40, .. })
        ));
        td.s.lock().vp_info = Err(0x8000_0000_0000_0000);
        assert!(matches!(Tdx::new(&td), Err(PlatformError::TdInfo { .. })));
        td.s.lock().vp_info = Ok(VpInfo { rcx: 48, rdx: 0 });
        assert_eq!(Tdx::new(&td).unwrap().shared_mask(), 1 << 47);
    }

    #[test]
    fn share_then_unshare() {
        let td = FakeTd::new();
        let tdx = Tdx::new(&td).unwrap();
        // SAFETY: a fake machine.
        unsafe { tdx.share(0x20_0000, 0x40_0000) }.unwrap();
        assert_eq!(td.s.lock().map_calls, vec![(0x20_0000 | SHARED, 0x40_0000)]);
        assert_eq!(td.page(0x20_0000), Page::Shared);
        assert_eq!(td.page(0x5f_f000), Page::Shared);
        assert_eq!(td.page(0x60_0000), Page::Private);
        // SAFETY: as above.
        unsafe { tdx.unshare(0x20_0000, 0x20_0000) }.unwrap();
        let s = td.s.lock();
        assert_eq!(s.map_calls[1], (0x20_0000, 0x20_0000));
        assert_eq!(s.accepts, vec![(0x20_0000, true)]);
        assert!(!s.pte_shared[&0x20_0000] && s.pte_shared[&0x40_0000]);
        drop(s);
        assert_eq!(td.page(0x20_0000), Page::Private);
    }

    #[test]
    fn accept_falls_back_to_4k() {
        let td = FakeTd::new();
        let tdx = Tdx::new(&td).unwrap();
        // SAFETY: a fake machine.
        unsafe { tdx.share(0x20_0000, PAGE_2M) }.unwrap();
        // One page of the chunk is already private: the 2 MiB accept fails, 4 KiB ones follow
        // and fail on that page.
        td.s.lock().script.push(MapGpaResult {
            tdcall: 0,
            status: TDVMCALL_STATUS_SUCCESS,
            next: 0,
        });
        for g in 0x200..0x400 {
            td.s.lock().pages.insert(g, Page::Pending);
        }
        td.s.lock().pages.insert(0x3ff, Page::Private);
        // SAFETY: as above.
        let r = unsafe { tdx.unshare(0x20_0000, PAGE_2M) };
        assert_eq!(
            r,
            Err(PlatformError::Accept {
                gpa: 0x3f_f000,
                status: 0xC000_0B0B_0000_0001
            })
        );
        let s = td.s.lock();
        assert_eq!(s.accepts[0], (0x20_0000, true));
        assert_eq!(s.accepts.len(), 1 + 512);
    }

    #[test]
    fn map_gpa_retries_and_hostile_answers() {
        let retry = |next| MapGpaResult {
            tdcall: 0,
            status: TDVMCALL_STATUS_RETRY,
            next,
        };
        // Progress, then no progress twice, then success.
        let td = FakeTd::new();
        let tdx = Tdx::new(&td).unwrap();
        let base = 0x20_0000 | SHARED;
        td.s.lock().script = vec![
            retry(base + 0x1000),
            retry(base + 0x1000),
            retry(base + 0x1000),
        ];
        // SAFETY: a fake machine.
        unsafe { tdx.share(0x20_0000, PAGE_2M) }.unwrap();
        let calls = td.s.lock().map_calls.clone();
        assert_eq!(
            calls,
            vec![
                (base, PAGE_2M),
                (base + 0x1000, PAGE_2M - 0x1000),
                (base + 0x1000, PAGE_2M - 0x1000),
                (base + 0x1000, PAGE_2M - 0x1000),
            ]
        );
        assert_eq!(td.page(0x3f_f000), Page::Shared);

        // Three retries without progress: give up.
        let td = FakeTd::new();
        let tdx = Tdx::new(&td).unwrap();
        td.s.lock().script = vec![retry(base), retry(base), retry(base)];
        // SAFETY: as above.
        let r = unsafe { tdx.share(0x20_0000, PAGE_2M) };
        assert_eq!(
            r,
            Err(PlatformError::MapGpa {
                gpa: base,
                status: TDVMCALL_STATUS_RETRY
            })
        );
        assert_eq!(td.s.lock().map_calls.len(), 3);

        // A retry address outside the range is a hostile VMM.
        for bad in [base - 0x1000, base + PAGE_2M, 0x20_0000] {
            let td = FakeTd::new();
            let tdx = Tdx::new(&td).unwrap();
            td.s.lock().script = vec![retry(bad)];
            // SAFETY: as above.
            let r = unsafe { tdx.share(0x20_0000, PAGE_2M) };
            assert_eq!(
                r,
                Err(PlatformError::MapGpa {
                    gpa: bad,
                    status: TDVMCALL_STATUS_RETRY
                })
            );
            assert_eq!(td.s.lock().map_calls.len(), 1);
        }

        // Any other status, and a failing TDCALL.
        let td = FakeTd::new();
        let tdx = Tdx::new(&td).unwrap();
        td.s.lock().script = vec![
            MapGpaResult {
                tdcall: 0,
                status: 0x8000_0000_0000_0000,
                next: 0,
            },
            MapGpaResult {
                tdcall: 5,
                status: 0,
                next: 0,
            },
        ];
        // SAFETY: as above.
        let r = unsafe { tdx.share(0x20_0000, PAGE_2M) };
        assert!(matches!(
            r,
            Err(PlatformError::MapGpa {
                status: 0x8000_0000_0000_0000,
                ..
            })
        ));
        // SAFETY: as above.
        let r = unsafe { tdx.share(0x40_0000, PAGE_2M) };
        assert!(matches!(r, Err(PlatformError::MapGpa { status: 5, .. })));
        assert_eq!(tdx.log().counts().share_failures, 2);
    }
}
