//! The confidential-computing platform: whether this guest runs *secure* (its memory private to
//! it), and how it makes memory visible to the host again for DMA.
//!
//! A secure guest shares nothing by default. A device (emulated by the host) can only reach pages
//! the guest explicitly *shares*, so every DMA goes through a pool of shared memory
//! ([`crate::dma::bounce`]). One trait covers every technology, and the rest of the guest never
//! knows which one it runs on:
//!
//! | implementation | `name` | secure | `share` does |
//! |---|---|---|---|
//! | [`NonePlatform`] | `none` | no | nothing (all memory is host-visible anyway) |
//! | [`Emulated`] | `emulated` | yes | records the call, touches nothing: the whole secure path runs on any machine (this is what runs in QEMU here) |
//! | [`pef::Pef`] | `pef` | yes (after `UV_ESM`) | `UV_SHARE_PAGE` ultracall, 64 KiB pages |
//! | [`sev::Sev`] | `sev`, `sev-es`, `sev-snp` | yes | clears the C-bit in the page tables; SNP: rescinds validation and asks for a page-state change (GHCB MSR protocol) first |
//! | [`tdx::Tdx`] | `tdx` | yes | sets the shared GPA bit in the page tables, then `TDG.VP.VMCALL<MapGPA>` |
//!
//! The real backends are logic over a narrow low-level interface ([`pef::UltravisorIo`],
//! [`sev::SevIo`], [`tdx::TdxIo`]). The instruction-level halves (`sc 2`, `cpuid`, `rdmsr`,
//! `vmgexit`, `pvalidate`, `tdcall`) live in the binary's `arch/{ppc64,x86_64}/secure.rs`; no
//! machine here has PEF, SEV or TDX hardware, so those are only compiled, and the logic is tested
//! against fakes of that interface.
//!
//! Which platform runs is decided once at boot, in [`decide`]; [`secret`] marks private memory so
//! that a host-side memory dump can prove that nothing private leaked into shared memory.
//!
//! # Sharing
//!
//! [`Platform::share`] and [`Platform::unshare`] take a guest-physical range aligned to
//! [`Platform::granularity`]. They validate it, call the backend, and record the call and its
//! result in the platform's [`ShareLog`] (counts, and the first [`LOG_CAPACITY`] calls with their
//! ranges), so that the report can show exactly what was made host-visible.
//!
//! # Device addresses
//!
//! The device reaches shared memory at [`Platform::device_addr`]`(phys)`. On every backend here
//! that is the guest-physical address itself: the SEV C-bit and the TDX shared bit live in the
//! guest's *page tables* (the CPU's view), never in an address the host sees, and QEMU's device
//! models DMA to plain guest-physical addresses. The transform exists because other platforms
//! give shared memory a different device address (an Arm CCA realm's shared alias sets the top
//! IPA bit), and so that the pool and the bounce path are tested with an alias (a fake platform
//! with an offset). The only requirement: the transform is linear over a shared range.

pub mod decide;
pub mod pef;
pub mod secret;
pub mod sev;
pub mod tdx;

#[cfg(test)]
mod tests;

use core::fmt;

/// 4 KiB: the smallest page on both guest arches.
pub const PAGE_4K: u64 = 4096;
/// 2 MiB: the page size of this guest's x86_64 identity map, hence the sharing granularity of
/// SEV and TDX here (the C-bit / shared bit is a page-table attribute).
pub const PAGE_2M: u64 = 2 << 20;
/// 64 KiB: the page size the POWER ultravisor shares in (`UV_SHARE_PAGE` counts these).
pub const PAGE_64K: u64 = 64 << 10;

/// Which platform this is; [`PlatformKind::as_str`] is the name in the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlatformKind {
    None,
    Emulated,
    Pef,
    Sev,
    SevEs,
    SevSnp,
    Tdx,
}

impl PlatformKind {
    pub const ALL: [PlatformKind; 7] = [
        PlatformKind::None,
        PlatformKind::Emulated,
        PlatformKind::Pef,
        PlatformKind::Sev,
        PlatformKind::SevEs,
        PlatformKind::SevSnp,
        PlatformKind::Tdx,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PlatformKind::None => "none",
            PlatformKind::Emulated => "emulated",
            PlatformKind::Pef => "pef",
            PlatformKind::Sev => "sev",
            PlatformKind::SevEs => "sev-es",
            PlatformKind::SevSnp => "sev-snp",
            PlatformKind::Tdx => "tdx",
        }
    }
}

/// Why a platform operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformError {
    /// The range is empty, wraps, or is not aligned to the sharing granularity.
    BadRange {
        phys: u64,
        len: u64,
        granularity: u64,
    },
    /// A ucall was needed but no ultravisor was detected (no device-tree node, `MSR[S]` clear):
    /// the call was not issued.
    NoUltravisor,
    /// The guest is not (yet) secure, so there is nothing to share with (PEF before `UV_ESM`,
    /// SEV/TDX not active). No call was issued.
    NotSecure,
    /// An ultracall returned an error: `call` is the opcode (`UV_SHARE_PAGE`, ...), `code` the
    /// return value (`U_PARAMETER` = -4, `U_P2` = -55, ...).
    Ultravisor { call: u64, code: i64 },
    /// `UV_ESM` reported success but `MSR[S]` is still clear.
    EsmNotSecure,
    /// The SEV C-bit position CPUID reports is implausible (outside 32..=51).
    BadCbit { position: u32 },
    /// SNP page-state change: the hypervisor answered with something other than a PSC response
    /// (`response` is the whole GHCB MSR value), or with a non-zero error code.
    PageStateChange { gfn: u64, response: u64 },
    /// `PVALIDATE` failed: `code` is its return code (255: the page was already in that state).
    Pvalidate { phys: u64, code: u32 },
    /// The guest page tables do not map `phys` the way the arch code can change (not a 2 MiB
    /// page, beyond the identity map).
    PageTable { phys: u64 },
    /// TDX: `TDG.VP.INFO` failed (`status` is the TDCALL status), or its GPA width is not 48 or 52.
    TdInfo { status: u64, gpa_width: u32 },
    /// TDX `MapGPA` failed: `status` is the TDVMCALL status, `gpa` where it stopped.
    MapGpa { gpa: u64, status: u64 },
    /// TDX `TDG.MEM.PAGE.ACCEPT` failed.
    Accept { gpa: u64, status: u64 },
    /// The operation does not exist on this platform.
    Unsupported(&'static str),
}

impl PlatformError {
    /// A stable name for reports.
    pub fn as_str(&self) -> &'static str {
        match self {
            PlatformError::BadRange { .. } => "bad-range",
            PlatformError::NoUltravisor => "no-ultravisor",
            PlatformError::NotSecure => "not-secure",
            PlatformError::Ultravisor { .. } => "ultravisor",
            PlatformError::EsmNotSecure => "esm-not-secure",
            PlatformError::BadCbit { .. } => "bad-c-bit",
            PlatformError::PageStateChange { .. } => "page-state-change",
            PlatformError::Pvalidate { .. } => "pvalidate",
            PlatformError::PageTable { .. } => "page-table",
            PlatformError::TdInfo { .. } => "td-info",
            PlatformError::MapGpa { .. } => "map-gpa",
            PlatformError::Accept { .. } => "accept",
            PlatformError::Unsupported(_) => "unsupported",
        }
    }
}

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PlatformError::BadRange {
                phys,
                len,
                granularity,
            } => write!(
                f,
                "range {phys:#x}+{len:#x} is empty, wraps or is not aligned to {granularity:#x}"
            ),
            PlatformError::NoUltravisor => f.write_str("no ultravisor detected: no ucall issued"),
            PlatformError::NotSecure => f.write_str("the guest is not secure: nothing to share"),
            PlatformError::Ultravisor { call, code } => {
                write!(f, "ultracall {call:#x} returned {code}")
            }
            PlatformError::EsmNotSecure => f.write_str("UV_ESM succeeded but MSR[S] is clear"),
            PlatformError::BadCbit { position } => {
                write!(f, "implausible SEV C-bit position {position}")
            }
            PlatformError::PageStateChange { gfn, response } => {
                write!(
                    f,
                    "page-state change of gfn {gfn:#x} failed (GHCB MSR {response:#x})"
                )
            }
            PlatformError::Pvalidate { phys, code } => {
                write!(f, "PVALIDATE of {phys:#x} failed with {code}")
            }
            PlatformError::PageTable { phys } => {
                write!(
                    f,
                    "{phys:#x} is not mapped by a 2 MiB page the guest can change"
                )
            }
            PlatformError::TdInfo { status, gpa_width } => {
                write!(f, "TDG.VP.INFO: status {status:#x}, GPA width {gpa_width}")
            }
            PlatformError::MapGpa { gpa, status } => {
                write!(f, "MapGPA failed at {gpa:#x} (status {status:#x})")
            }
            PlatformError::Accept { gpa, status } => {
                write!(
                    f,
                    "TDG.MEM.PAGE.ACCEPT of {gpa:#x} failed (status {status:#x})"
                )
            }
            PlatformError::Unsupported(what) => write!(f, "unsupported: {what}"),
        }
    }
}

/// A range validated against a platform's granularity: non-empty, aligned, not wrapping.
/// Only [`Platform::share`] / [`Platform::unshare`] make one, so a backend hook never sees an
/// unchecked range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShareRange {
    phys: u64,
    len: u64,
}

impl ShareRange {
    fn new(phys: u64, len: u64, granularity: u64) -> Result<Self, PlatformError> {
        let bad = PlatformError::BadRange {
            phys,
            len,
            granularity,
        };
        if len == 0 || !granularity.is_power_of_two() {
            return Err(bad);
        }
        let mask = granularity - 1;
        if phys & mask != 0 || len & mask != 0 || phys.checked_add(len).is_none() {
            return Err(bad);
        }
        Ok(ShareRange { phys, len })
    }

    pub fn phys(&self) -> u64 {
        self.phys
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.phys + self.len
    }

    /// The start of each `step`-sized piece (`step` divides the range's alignment).
    pub fn chunks(&self, step: u64) -> impl Iterator<Item = u64> + use<> {
        let (start, end) = (self.phys, self.end());
        (0..)
            .map(move |i| start + i * step)
            .take_while(move |&a| a < end)
    }
}

/// What a recorded call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShareOp {
    Share,
    Unshare,
}

impl ShareOp {
    pub fn as_str(self) -> &'static str {
        match self {
            ShareOp::Share => "share",
            ShareOp::Unshare => "unshare",
        }
    }
}

/// One recorded `share` / `unshare` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShareEvent {
    pub op: ShareOp,
    pub phys: u64,
    pub len: u64,
    pub result: Result<(), PlatformError>,
}

/// Counters over every call, including the ones the bounded list dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShareCounts {
    pub shares: u64,
    pub share_failures: u64,
    /// Bytes of successful `share` calls.
    pub bytes_shared: u64,
    pub unshares: u64,
    pub unshare_failures: u64,
    /// Bytes of successful `unshare` calls.
    pub bytes_unshared: u64,
    /// Calls beyond [`LOG_CAPACITY`]: counted above, but their ranges were not kept.
    pub events_dropped: u64,
}

/// How many calls a [`ShareLog`] keeps with their ranges. A guest shares its pool once at boot,
/// so the first calls are the ones that matter.
pub const LOG_CAPACITY: usize = 16;

const NO_EVENT: ShareEvent = ShareEvent {
    op: ShareOp::Share,
    phys: 0,
    len: 0,
    result: Ok(()),
};

struct LogInner {
    counts: ShareCounts,
    events: [ShareEvent; LOG_CAPACITY],
    len: usize,
}

/// The record of every `share` / `unshare` call of a platform, with its result.
pub struct ShareLog {
    inner: spin::Mutex<LogInner>,
}

impl Default for ShareLog {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ShareLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.lock();
        f.debug_struct("ShareLog")
            .field("counts", &inner.counts)
            .field("events", &&inner.events[..inner.len])
            .finish()
    }
}

impl ShareLog {
    pub const fn new() -> Self {
        ShareLog {
            inner: spin::Mutex::new(LogInner {
                counts: ShareCounts {
                    shares: 0,
                    share_failures: 0,
                    bytes_shared: 0,
                    unshares: 0,
                    unshare_failures: 0,
                    bytes_unshared: 0,
                    events_dropped: 0,
                },
                events: [NO_EVENT; LOG_CAPACITY],
                len: 0,
            }),
        }
    }

    fn record(&self, op: ShareOp, phys: u64, len: u64, result: Result<(), PlatformError>) {
        let mut inner = self.inner.lock();
        let c = &mut inner.counts;
        match (op, result.is_ok()) {
            (ShareOp::Share, true) => {
                c.shares += 1;
                c.bytes_shared += len;
            }
            (ShareOp::Share, false) => {
                c.shares += 1;
                c.share_failures += 1;
            }
            (ShareOp::Unshare, true) => {
                c.unshares += 1;
                c.bytes_unshared += len;
            }
            (ShareOp::Unshare, false) => {
                c.unshares += 1;
                c.unshare_failures += 1;
            }
        }
        if inner.len < LOG_CAPACITY {
            let i = inner.len;
            inner.events[i] = ShareEvent {
                op,
                phys,
                len,
                result,
            };
            inner.len += 1;
        } else {
            inner.counts.events_dropped += 1;
        }
    }

    pub fn counts(&self) -> ShareCounts {
        self.inner.lock().counts
    }

    /// The first [`LOG_CAPACITY`] calls, in order.
    pub fn events(&self) -> alloc::vec::Vec<ShareEvent> {
        let inner = self.inner.lock();
        inner.events[..inner.len].to_vec()
    }

    /// Bytes shared now: successful shares minus successful unshares (a range shared twice
    /// counts twice, as it was asked twice).
    pub fn bytes_shared_now(&self) -> u64 {
        let c = self.counts();
        c.bytes_shared.saturating_sub(c.bytes_unshared)
    }
}

/// A confidential-computing platform. Object-safe; `Sync` because the bounce path (a `Dma`, which
/// is `Sync`) holds a `&dyn Platform`.
///
/// Callers use [`Platform::share`] and [`Platform::unshare`]; implementations provide the hooks
/// [`Platform::share_range`] and [`Platform::unshare_range`], which only ever receive a validated
/// [`ShareRange`], and a [`ShareLog`] that the provided methods fill.
pub trait Platform: Sync {
    fn kind(&self) -> PlatformKind;

    /// The report name: `none`, `emulated`, `pef`, `sev`, `sev-es`, `sev-snp`, `tdx`.
    fn name(&self) -> &'static str {
        self.kind().as_str()
    }

    /// Whether memory is private, so that devices only reach what was shared.
    fn is_secure(&self) -> bool;

    /// The sharing granularity (a power of two): ranges passed to `share` / `unshare` are
    /// aligned to it.
    fn granularity(&self) -> u64;

    /// Where a device reaches shared memory at guest-physical `phys`. Linear over a shared range.
    fn device_addr(&self, phys: u64) -> u64 {
        phys
    }

    /// The record of `share` / `unshare` calls.
    fn log(&self) -> &ShareLog;

    /// Backend hook for `share`: make the range host-visible.
    ///
    /// # Safety
    /// As for [`Platform::share`].
    unsafe fn share_range(&self, range: ShareRange) -> Result<(), PlatformError>;

    /// Backend hook for `unshare`: make the range private again.
    ///
    /// # Safety
    /// As for [`Platform::unshare`].
    unsafe fn unshare_range(&self, range: ShareRange) -> Result<(), PlatformError>;

    /// Makes `[phys, phys + len)` visible to the host (devices), and records the call.
    ///
    /// On a failure the range is in an unknown state (part of it may be shared, part may be
    /// neither): the caller must not use it for anything again.
    ///
    /// # Safety
    /// The caller owns the range: no Rust reference points into it and nothing else uses it
    /// during the call. Its contents are not preserved (the ultravisor zeroes shared pages; on
    /// SEV/TDX the CPU sees new contents through the new mapping): the caller initialises it
    /// afterwards. It is identity-mapped guest RAM.
    unsafe fn share(&self, phys: u64, len: u64) -> Result<(), PlatformError> {
        let result = ShareRange::new(phys, len, self.granularity()).and_then(|range| {
            // SAFETY: the caller's contract is the hook's contract.
            unsafe { self.share_range(range) }
        });
        self.log().record(ShareOp::Share, phys, len, result);
        result
    }

    /// Makes `[phys, phys + len)` private again, and records the call.
    ///
    /// # Safety
    /// No device uses the range any more (its devices were reset or never given its addresses),
    /// and the caller owns it as for [`Platform::share`]; its contents are lost.
    unsafe fn unshare(&self, phys: u64, len: u64) -> Result<(), PlatformError> {
        let result = ShareRange::new(phys, len, self.granularity()).and_then(|range| {
            // SAFETY: the caller's contract is the hook's contract.
            unsafe { self.unshare_range(range) }
        });
        self.log().record(ShareOp::Unshare, phys, len, result);
        result
    }
}

/// Not a secure guest: every page is host-visible already, so `share` does nothing (but is still
/// recorded). The platform of an ordinary guest.
#[derive(Debug, Default)]
pub struct NonePlatform {
    log: ShareLog,
}

impl NonePlatform {
    pub const fn new() -> Self {
        NonePlatform {
            log: ShareLog::new(),
        }
    }
}

impl Platform for NonePlatform {
    fn kind(&self) -> PlatformKind {
        PlatformKind::None
    }

    fn is_secure(&self) -> bool {
        false
    }

    fn granularity(&self) -> u64 {
        PAGE_4K
    }

    fn log(&self) -> &ShareLog {
        &self.log
    }

    unsafe fn share_range(&self, _range: ShareRange) -> Result<(), PlatformError> {
        Ok(())
    }

    unsafe fn unshare_range(&self, _range: ShareRange) -> Result<(), PlatformError> {
        Ok(())
    }
}

/// A secure platform in everything but the hardware: [`Platform::is_secure`] is true, so the whole
/// secure path (shared pool, bounce buffers, ACCESS_PLATFORM policy, zeroing) runs, and every
/// share / unshare is validated and recorded, but memory stays as it is. What runs in QEMU here.
///
/// The granularity is the one of the backend being stood in for (64 KiB for PEF, 2 MiB for
/// SEV/TDX on this guest), so that the same ranges are shared.
#[derive(Debug)]
pub struct Emulated {
    granularity: u64,
    log: ShareLog,
}

impl Emulated {
    /// `granularity` must be a power of two of at least 4 KiB (else 4 KiB is used).
    pub const fn new(granularity: u64) -> Self {
        let granularity = if granularity.is_power_of_two() && granularity >= PAGE_4K {
            granularity
        } else {
            PAGE_4K
        };
        Emulated {
            granularity,
            log: ShareLog::new(),
        }
    }

    /// The granularity of the real backend of the arch this guest was built for.
    pub const fn for_this_arch() -> Self {
        Self::new(if cfg!(target_arch = "powerpc64") {
            PAGE_64K
        } else if cfg!(target_arch = "x86_64") {
            PAGE_2M
        } else {
            PAGE_4K
        })
    }
}

impl Platform for Emulated {
    fn kind(&self) -> PlatformKind {
        PlatformKind::Emulated
    }

    fn is_secure(&self) -> bool {
        true
    }

    fn granularity(&self) -> u64 {
        self.granularity
    }

    fn log(&self) -> &ShareLog {
        &self.log
    }

    unsafe fn share_range(&self, _range: ShareRange) -> Result<(), PlatformError> {
        Ok(())
    }

    unsafe fn unshare_range(&self, _range: ShareRange) -> Result<(), PlatformError> {
        Ok(())
    }
}
