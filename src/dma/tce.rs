//! pseries TCE: the IOMMU of a PAPR PCI host bridge, portable half.
//!
//! A PHB translates the DMA of devices that negotiated `VIRTIO_F_ACCESS_PLATFORM` through a TCE
//! table (QEMU hw/ppc/spapr_iommu.c). The device tree describes its default window in
//! `ibm,dma-window` ([`TceWindow`]): a LIOBN (the table's handle in hypercalls), a bus address
//! and a size, in `ibm,#dma-address-cells` / `ibm,#dma-size-cells` cells (default 2 and 2;
//! QEMU: LIOBN 0x80000000 + PHB index, bus address 0, 1 GiB, 4 KiB TCE pages). A TCE is the
//! real address of a page with the permission in its low bits: read (1, the device may read),
//! write (2).
//!
//! * [`TceTable`] is the [`IommuBackend`] of one window: `H_PUT_TCE` (0x20) for one entry,
//!   `H_PUT_TCE_INDIRECT` (0x13C) for up to 512 entries listed big-endian in a 4 KiB page,
//!   `H_STUFF_TCE` (0x138) to write one value (0: clear) into a run. With batching off
//!   (`sg.tce.batch=0`) every entry is one `H_PUT_TCE`, as Linux does without the multi-TCE
//!   hcalls. Every return code but `H_SUCCESS` is [`DmaError::Platform`] with the code.
//! * DDW (dynamic DMA windows, LoPAPR): `ibm,ddw-applicable` lists the RTAS tokens of
//!   `ibm,query-pe-dma-window`, `ibm,create-pe-dma-window` and `ibm,remove-pe-dma-window`;
//!   `ibm,ddw-extensions` (a count, then the extensions) adds `ibm,reset-pe-dma-window` and
//!   whether the query returns its largest block in 64 bits ([`DdwTokens`]). [`create_ddw`]
//!   queries, creates a window with the largest page size offered that the purpose allows, and
//!   returns its LIOBN and bus address (QEMU puts the second window at 1 << 59).
//! * [`TceSetup`] is the [`DomainSetup`] of one PHB: which window, which mapping:
//!
//! | guest | `sg.tce` | window | mapped | per request |
//! |---|---|---|---|---|
//! | not secure | `dynamic` | default (32-bit) | each request's pages | `H_PUT_TCE(_INDIRECT)` + `H_STUFF_TCE` |
//! | not secure | `ddw` (default when offered) | new, largest page | all RAM, once (IOVA = base + phys) | nothing |
//! | secure | `dynamic` | default | the shared pool, once | nothing |
//! | secure | `ddw` | new, largest page dividing the pool | the shared pool, once | nothing |
//!
//! `ddw` is the default because it is what Linux does when the PHB offers it: all of RAM mapped
//! once, so a normal guest honours `ACCESS_PLATFORM` at near-direct cost. When the PHB offers no
//! DDW, the default falls back to `dynamic` and the domain's `mode_reason` says so; an explicit
//! `sg.tce=ddw` there is an error.
//!
//! The hypercalls and RTAS calls themselves are behind [`TceCalls`] and [`Rtas`]
//! (src/arch/ppc64 in the guest, fakes in the tests).

use alloc::boxed::Box;
use core::ptr::NonNull;

use super::iommu::{
    CallCount, DomainInfo, DomainSetup, IommuBackend, IommuDebug, IommuDma, MAX_CALL_KINDS, Perm,
};
use super::{Dma, DmaConstraints, DmaError};

pub const H_PUT_TCE: u64 = 0x20;
pub const H_STUFF_TCE: u64 = 0x138;
pub const H_PUT_TCE_INDIRECT: u64 = 0x13C;
pub const H_SUCCESS: i64 = 0;
/// TCEs one `H_PUT_TCE_INDIRECT` takes: a 4 KiB page of them.
pub const TCES_PER_LIST: usize = 512;
/// The page size of the default window (PAPR; QEMU `SPAPR_TCE_PAGE_SHIFT`).
pub const DEFAULT_PAGE_SHIFT: u32 = 12;

/// The default DMA window of a PHB (`ibm,dma-window`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TceWindow {
    pub liobn: u32,
    /// Bus address of the first byte, and bytes.
    pub base: u64,
    pub size: u64,
}

fn cell(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.try_into().ok()?))
}

/// A number of `n` (1 or 2) cells at `v[at..]`.
fn cells(v: &[u8], at: usize, n: usize) -> u64 {
    (0..n).fold(0, |acc, i| {
        let c = v
            .get(at + 4 * i..at + 4 * i + 4)
            .and_then(cell)
            .unwrap_or(0);
        acc << 32 | u64::from(c)
    })
}

impl TceWindow {
    /// Decodes `ibm,dma-window` with the node's `ibm,#dma-address-cells` and
    /// `ibm,#dma-size-cells` (absent: 2 and 2): LIOBN (one cell), bus address, size.
    pub fn parse(
        value: &[u8],
        address_cells: Option<&[u8]>,
        size_cells: Option<&[u8]>,
    ) -> Result<TceWindow, &'static str> {
        let n = |v: Option<&[u8]>| match v {
            None => Some(2),
            Some(v) => cell(v).filter(|c| (1..=2).contains(c)).map(|c| c as usize),
        };
        let ac = n(address_cells).ok_or("ibm,#dma-address-cells is not one cell of 1 or 2")?;
        let sc = n(size_cells).ok_or("ibm,#dma-size-cells is not one cell of 1 or 2")?;
        if value.len() != 4 * (1 + ac + sc) {
            return Err("ibm,dma-window is not one LIOBN, bus address and size");
        }
        let w = TceWindow {
            liobn: cell(&value[..4]).unwrap_or(0),
            base: cells(value, 4, ac),
            size: cells(value, 4 + 4 * ac, sc),
        };
        let page = 1u64 << DEFAULT_PAGE_SHIFT;
        if w.size == 0 {
            return Err("ibm,dma-window has size 0");
        }
        if w.base.checked_add(w.size).is_none() {
            return Err("ibm,dma-window wraps around 2^64");
        }
        if !w.base.is_multiple_of(page) || !w.size.is_multiple_of(page) {
            return Err("ibm,dma-window is not 4 KiB-aligned");
        }
        Ok(w)
    }
}

/// The DDW RTAS tokens of a PHB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DdwTokens {
    pub query: u32,
    pub create: u32,
    pub remove: u32,
    /// `ibm,reset-pe-dma-window` (extension 1).
    pub reset: Option<u32>,
    /// The query returns its largest block in two cells (extension 2 is 1).
    pub query_64bit: bool,
}

impl DdwTokens {
    /// Decodes `ibm,ddw-applicable` (three tokens) and `ibm,ddw-extensions` (a count, then that
    /// many values).
    pub fn parse(applicable: &[u8], extensions: Option<&[u8]>) -> Result<DdwTokens, &'static str> {
        if applicable.len() != 12 {
            return Err("ibm,ddw-applicable is not three tokens");
        }
        let tok = |i: usize| cell(&applicable[4 * i..4 * i + 4]).unwrap_or(0);
        let mut t = DdwTokens {
            query: tok(0),
            create: tok(1),
            remove: tok(2),
            reset: None,
            query_64bit: false,
        };
        if let Some(ext) = extensions {
            let count = ext
                .get(..4)
                .and_then(cell)
                .ok_or("ibm,ddw-extensions is empty")?;
            if ext.len() % 4 != 0 || (count as usize) > ext.len() / 4 - 1 {
                return Err("ibm,ddw-extensions lists more extensions than it holds");
            }
            let value = |i: usize| (i <= count as usize).then(|| cell(&ext[4 * i..4 * i + 4]));
            t.reset = value(1).flatten();
            t.query_64bit = value(2).flatten() == Some(1);
        }
        Ok(t)
    }
}

/// The three TCE hypercalls.
pub trait TceCalls: Send {
    fn put_tce(&mut self, liobn: u64, ioba: u64, tce: u64) -> i64;

    /// # Safety
    /// `list` is the real address of a 4 KiB-aligned page holding `count` (at most 512)
    /// big-endian TCEs, which nothing changes during the call.
    unsafe fn put_tce_indirect(&mut self, liobn: u64, ioba: u64, list: u64, count: u64) -> i64;

    fn stuff_tce(&mut self, liobn: u64, ioba: u64, value: u64, count: u64) -> i64;
}

/// The page `H_PUT_TCE_INDIRECT` reads its TCEs from.
#[repr(C, align(4096))]
pub struct TceList(pub [u64; TCES_PER_LIST]);

/// Where a table's list page is.
enum ListPage {
    /// No batching possible (batching off, or the borrowed page was given back).
    None,
    Owned(Box<TceList>),
    /// A page of the shared pool (a secure guest's hypervisor can only read shared memory).
    Borrowed(NonNull<TceList>),
}

// SAFETY: the list page is owned, or borrowed for the table's exclusive use (see `new`); only
// the table writes it, through `&mut self`.
unsafe impl Send for ListPage {}

/// One TCE window as an [`IommuBackend`].
pub struct TceTable<C> {
    calls: C,
    liobn: u64,
    base: u64,
    size: u64,
    page_shift: u32,
    page_sizes: u64,
    list: ListPage,
    put: CallCount,
    indirect: CallCount,
    stuff: CallCount,
}

impl<C: TceCalls> TceTable<C> {
    /// The window `[base, base + size)` of `liobn` in pages of `1 << page_shift`; `batch`: use
    /// `H_PUT_TCE_INDIRECT` and `H_STUFF_TCE` (with a list page of its own).
    pub fn new(calls: C, liobn: u32, base: u64, size: u64, page_shift: u32, batch: bool) -> Self {
        TceTable {
            calls,
            liobn: u64::from(liobn),
            base,
            size,
            page_shift,
            page_sizes: 1 << page_shift,
            list: if batch {
                ListPage::Owned(Box::new(TceList([0; TCES_PER_LIST])))
            } else {
                ListPage::None
            },
            put: CallCount::named("H_PUT_TCE"),
            indirect: CallCount::named("H_PUT_TCE_INDIRECT"),
            stuff: CallCount::named("H_STUFF_TCE"),
        }
    }

    /// Uses `page` as the list page instead of one of its own, until [`TceTable::drop_list`].
    ///
    /// # Safety
    /// `page` is valid for writes and reads, 4 KiB-aligned, identity-mapped, and nothing else
    /// uses it until `drop_list` (or the table's end).
    pub unsafe fn borrow_list(&mut self, page: NonNull<TceList>) {
        if !matches!(self.list, ListPage::None) {
            self.list = ListPage::Borrowed(page);
        }
    }

    /// No more batched writes: forgets the list page (a borrowed one can be given back now).
    pub fn drop_list(&mut self) {
        self.list = ListPage::None;
    }

    /// The offered page sizes to report (a DDW window's query mask).
    pub fn set_page_sizes(&mut self, sizes: u64) {
        self.page_sizes = sizes | 1 << self.page_shift;
    }

    fn list_ptr(&mut self) -> Option<*mut TceList> {
        match &mut self.list {
            ListPage::None => None,
            ListPage::Owned(b) => Some(&mut **b as *mut TceList),
            ListPage::Borrowed(p) => Some(p.as_ptr()),
        }
    }

    fn batched(&self) -> bool {
        !matches!(self.list, ListPage::None)
    }

    fn check(&self, iova: u64, pages: u64) -> Result<(), DmaError> {
        let page = 1u64 << self.page_shift;
        let off = iova.wrapping_sub(self.base);
        let inside = iova >= self.base
            && off < self.size
            && off.is_multiple_of(page)
            && pages
                .checked_mul(page)
                .is_some_and(|len| len <= self.size - off);
        if pages == 0 || !inside {
            return Err(DmaError::InvalidRequest("TCE run outside the window"));
        }
        Ok(())
    }

    fn result(rc: i64) -> Result<(), DmaError> {
        if rc == H_SUCCESS {
            Ok(())
        } else {
            Err(DmaError::Platform { code: rc })
        }
    }

    /// Writes `value` into `pages` entries from `iova` (0: clear), without checks.
    fn fill(&mut self, iova: u64, pages: u64, value: u64) -> Result<(), DmaError> {
        if self.batched() {
            self.stuff.add(pages);
            return Self::result(self.calls.stuff_tce(self.liobn, iova, value, pages));
        }
        for i in 0..pages {
            self.put.add(1);
            let ioba = iova + (i << self.page_shift);
            Self::result(self.calls.put_tce(self.liobn, ioba, value))?;
        }
        Ok(())
    }

    fn write(&mut self, iova: u64, phys: u64, pages: u64, perm: u64) -> Result<(), DmaError> {
        let shift = self.page_shift;
        let list = match self.list_ptr() {
            Some(list) if pages > 1 => list,
            _ => {
                for i in 0..pages {
                    self.put.add(1);
                    let rc = self.calls.put_tce(
                        self.liobn,
                        iova + (i << shift),
                        (phys + (i << shift)) | perm,
                    );
                    if let Err(e) = Self::result(rc) {
                        return Err(self.rollback(iova, i, e));
                    }
                }
                return Ok(());
            }
        };
        let mut done = 0;
        while done < pages {
            let n = (pages - done).min(TCES_PER_LIST as u64);
            for i in 0..n {
                let tce = (phys + ((done + i) << shift)) | perm;
                // SAFETY: the list page is the table's (owned or borrowed for it, see
                // `borrow_list`); `i < 512`. Volatile: the hypervisor reads it.
                unsafe {
                    (*list)
                        .0
                        .as_mut_ptr()
                        .add(i as usize)
                        .write_volatile(tce.to_be())
                };
            }
            self.indirect.add(n);
            let at = list.expose_provenance() as u64;
            // SAFETY: `at` is the real address (identity-mapped) of the 4 KiB-aligned list page
            // holding `n` <= 512 big-endian TCEs; nothing else writes it during the call.
            let rc = unsafe {
                self.calls
                    .put_tce_indirect(self.liobn, iova + (done << shift), at, n)
            };
            if let Err(e) = Self::result(rc) {
                return Err(self.rollback(iova, done, e));
            }
            done += n;
        }
        Ok(())
    }

    /// Clears the `done` entries a failed map wrote; the map's error stays the error.
    fn rollback(&mut self, iova: u64, done: u64, e: DmaError) -> DmaError {
        if done > 0 {
            let _ = self.fill(iova, done, 0);
        }
        e
    }
}

impl<C: TceCalls> IommuBackend for TceTable<C> {
    fn page_shift(&self) -> u32 {
        self.page_shift
    }

    fn page_sizes(&self) -> u64 {
        self.page_sizes
    }

    fn aperture(&self) -> (u64, u64) {
        (self.base, self.size)
    }

    fn map(&mut self, iova: u64, phys: u64, pages: u64, perm: Perm) -> Result<(), DmaError> {
        self.check(iova, pages)?;
        let page = 1u64 << self.page_shift;
        if !phys.is_multiple_of(page)
            || phys.checked_add(pages * page).is_none()
            || perm.bits() == 0
        {
            return Err(DmaError::InvalidRequest(
                "TCE of an unaligned page or no access",
            ));
        }
        self.write(iova, phys, pages, perm.bits())
    }

    fn unmap(&mut self, iova: u64, pages: u64) -> Result<(), DmaError> {
        self.check(iova, pages)?;
        self.fill(iova, pages, 0)
    }

    fn calls(&self) -> [CallCount; MAX_CALL_KINDS] {
        [self.put, self.indirect, self.stuff]
    }

    fn end_setup(&mut self) {
        self.drop_list();
    }
}

/// RTAS, as DDW uses it.
pub trait Rtas: Send {
    /// Runs the call of `token` with `args`; fills `rets` (status first) and returns the status.
    fn call(&mut self, token: u32, args: &[u32], rets: &mut [u32]) -> i32;
}

/// DDW page sizes: the bit of the query's page-size mask and the page shift (LoPAPR).
const DDW_PAGE_SIZES: [(u32, u32); 9] = [
    (0x1, 12),
    (0x2, 16),
    (0x100, 21),
    (0x4, 24),
    (0x8, 25),
    (0x10, 26),
    (0x20, 27),
    (0x40, 28),
    (0x80, 34),
];

/// The mask of page sizes (bit n: 2^n bytes) of a query's page-size mask.
pub fn ddw_page_sizes(query_mask: u32) -> u64 {
    DDW_PAGE_SIZES
        .iter()
        .filter(|(bit, _)| query_mask & bit != 0)
        .fold(0, |m, (_, shift)| m | 1 << shift)
}

/// A window [`create_ddw`] made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ddw {
    pub liobn: u32,
    pub base: u64,
    pub page_shift: u32,
    pub window_shift: u32,
    /// Offered page sizes (bit n: 2^n bytes).
    pub page_sizes: u64,
    /// RTAS calls made.
    pub calls: u64,
}

/// What the query says.
struct Query {
    windows: u32,
    largest_block: u64,
    page_mask: u32,
}

fn query(rtas: &mut dyn Rtas, t: &DdwTokens, args: &[u32; 3]) -> Result<Query, DmaError> {
    let mut rets = [0u32; 6];
    let n = if t.query_64bit { 6 } else { 5 };
    let status = rtas.call(t.query, args, &mut rets[..n]);
    if status != 0 {
        return Err(DmaError::Platform {
            code: status.into(),
        });
    }
    Ok(if t.query_64bit {
        Query {
            windows: rets[1],
            largest_block: u64::from(rets[2]) << 32 | u64::from(rets[3]),
            page_mask: rets[4],
        }
    } else {
        Query {
            windows: rets[1],
            largest_block: rets[2].into(),
            page_mask: rets[3],
        }
    })
}

/// Creates a DMA window of at least `need` bytes (a power of two at least one page) on the PE at
/// `config_addr` of PHB `buid`, in the largest page size offered that is at most `max_page`.
/// When no window is free and the PHB can reset its windows, it resets them first.
pub fn create_ddw(
    rtas: &mut dyn Rtas,
    t: &DdwTokens,
    config_addr: u32,
    buid: u64,
    need: u64,
    max_page: u64,
) -> Result<Ddw, DmaError> {
    let args = [config_addr, (buid >> 32) as u32, buid as u32];
    let mut calls = 1;
    let mut q = query(rtas, t, &args)?;
    if q.windows == 0
        && let Some(reset) = t.reset
    {
        let mut rets = [0u32; 1];
        calls += 2;
        let status = rtas.call(reset, &args, &mut rets);
        if status != 0 {
            return Err(DmaError::Platform {
                code: status.into(),
            });
        }
        q = query(rtas, t, &args)?;
    }
    if q.windows == 0 {
        return Err(DmaError::InvalidRequest("the PHB has no free DMA window"));
    }
    let page_shift = DDW_PAGE_SIZES
        .iter()
        .filter(|&&(bit, shift)| q.page_mask & bit != 0 && 1u64 << shift <= max_page)
        .map(|&(_, shift)| shift)
        .max()
        .ok_or(DmaError::InvalidRequest("no DDW page size fits"))?;
    let window_shift = need
        .max(1)
        .next_power_of_two()
        .trailing_zeros()
        .max(page_shift);
    if window_shift >= 60 || (1u64 << (window_shift - page_shift)) > q.largest_block {
        return Err(DmaError::TooLarge {
            requested: usize::try_from(need).unwrap_or(usize::MAX),
            limit: usize::try_from(q.largest_block << page_shift).unwrap_or(usize::MAX),
        });
    }
    let mut rets = [0u32; 4];
    calls += 1;
    let create = [args[0], args[1], args[2], page_shift, window_shift];
    let status = rtas.call(t.create, &create, &mut rets);
    if status != 0 {
        return Err(DmaError::Platform {
            code: status.into(),
        });
    }
    Ok(Ddw {
        liobn: rets[1],
        base: u64::from(rets[2]) << 32 | u64::from(rets[3]),
        page_shift,
        window_shift,
        page_sizes: ddw_page_sizes(q.page_mask),
        calls,
    })
}

/// `sg.tce`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TceMode {
    Dynamic,
    Ddw,
}

impl TceMode {
    pub const EXPECTED: &'static str = "dynamic|ddw";

    pub fn parse(v: &str) -> Option<Self> {
        match v {
            "dynamic" => Some(TceMode::Dynamic),
            "ddw" => Some(TceMode::Ddw),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TceMode::Dynamic => "dynamic",
            TceMode::Ddw => "ddw",
        }
    }
}

/// What a PHB's domain is for.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    /// A normal guest: devices use private memory directly (`iommu`). `ram`: the RAM ranges
    /// `[base, end)`, sorted and disjoint. With DDW all memory below the end of the last one
    /// (`ram_top`) is mapped once, with x86's `sg.iommu.map=static` each range at its own
    /// address, and `direct` serves the requests.
    Direct {
        ram: &'a [(u64, u64)],
        direct: &'a dyn Dma,
    },
    /// A secure guest (`iommu+bounce`): only the shared pool `[phys, phys + size)` is ever
    /// mapped, once; `bounce` serves the requests. `phys` is also the pool's device address on
    /// the bounce path (`Platform::device_addr` is the identity on every platform here), from
    /// which the window's offset is taken.
    Pool {
        bounce: &'a dyn Dma,
        phys: u64,
        size: u64,
    },
}

impl Target<'_> {
    /// The end of the highest RAM range (0 for the pool).
    pub fn ram_top(&self) -> u64 {
        match self {
            Target::Direct { ram, .. } => ram.last().map_or(0, |r| r.1),
            Target::Pool { .. } => 0,
        }
    }
}

/// What the device tree says about a PHB's TCE IOMMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhbTce {
    pub window: TceWindow,
    /// `None`: no `ibm,ddw-applicable`.
    pub ddw: Option<Result<DdwTokens, &'static str>>,
    pub buid: u64,
    /// A PE's config address (bus << 16 | devfn << 8) for the DDW calls.
    pub config_addr: u32,
}

/// The [`DomainSetup`] of one PHB (see the module documentation for the table).
pub struct TceSetup<'a, C, R> {
    pub phb: PhbTce,
    /// `sg.tce`; `None`: the default.
    pub mode: Option<TceMode>,
    /// `sg.tce.batch`.
    pub batch: bool,
    /// `sg.debug.unmap_early`, `sg.debug.map_private` (test only).
    pub debug: IommuDebug,
    pub target: Target<'a>,
    pub calls: C,
    pub rtas: R,
}

impl<'a, C: TceCalls + 'static, R: Rtas> TceSetup<'a, C, R> {
    fn mode(&self) -> Result<(TceMode, &'static str), DmaError> {
        match (self.mode, self.phb.ddw) {
            (Some(TceMode::Dynamic), _) => Ok((TceMode::Dynamic, "sg.tce=dynamic")),
            (Some(TceMode::Ddw), Some(Ok(_))) => Ok((TceMode::Ddw, "sg.tce=ddw")),
            (Some(TceMode::Ddw), None) => Err(DmaError::InvalidRequest(
                "sg.tce=ddw, but the PHB has no ibm,ddw-applicable",
            )),
            (Some(TceMode::Ddw), Some(Err(why))) => Err(DmaError::InvalidRequest(why)),
            (None, Some(Ok(_))) => Ok((TceMode::Ddw, "default: the PHB offers DDW")),
            (None, None) => Ok((TceMode::Dynamic, "default: the PHB offers no DDW")),
            (None, Some(Err(_))) => Ok((
                TceMode::Dynamic,
                "default: the PHB's ibm,ddw-applicable is malformed",
            )),
        }
    }

    fn go(mut self) -> Result<IommuDma<'a>, DmaError> {
        let (mode, mode_reason) = self.mode()?;
        let mut info = DomainInfo {
            backend: "tce",
            mode: mode.as_str(),
            mode_reason,
            ..DomainInfo::default()
        };
        let (pool, max_page, need) = match self.target {
            Target::Direct { .. } => (None, u64::MAX, self.target.ram_top()),
            Target::Pool { phys, size, .. } => {
                // The largest page that covers nothing but pool pages.
                let align = 1u64 << (phys | size).trailing_zeros().min(63);
                // sg.debug.map_private maps one more page after the pool: room for it.
                let need = if self.debug.map_private {
                    size * 2
                } else {
                    size
                };
                (Some((phys, size)), align, need)
            }
        };
        let w = self.phb.window;
        // Where the pool goes in the window: at its own address when the window holds it there
        // (device addresses are then physical ones, as on the bounce path), else at the window's
        // start; never at IOVA 0, which virtio takes for "no ring".
        let mut pool_iova = 0;
        let mut table = match mode {
            TceMode::Dynamic => {
                info.id = w.liobn.into();
                info.window_base = w.base;
                info.window_size = w.size;
                if let Some((phys, size)) = pool {
                    let start = w.base.max(1 << 16);
                    let end = w.base + w.size;
                    pool_iova = if phys >= start && size <= end - phys.min(end) {
                        phys
                    } else {
                        start
                    };
                    if start >= end || size > end - pool_iova {
                        return Err(DmaError::TooLarge {
                            requested: usize::try_from(size).unwrap_or(usize::MAX),
                            limit: usize::try_from(end - start.min(end)).unwrap_or(usize::MAX),
                        });
                    }
                }
                TceTable::new(
                    self.calls,
                    w.liobn,
                    w.base,
                    w.size,
                    DEFAULT_PAGE_SHIFT,
                    self.batch,
                )
            }
            TceMode::Ddw => {
                let Some(Ok(tokens)) = self.phb.ddw else {
                    return Err(DmaError::InvalidRequest("no DDW tokens"));
                };
                let p = &self.phb;
                let ddw = create_ddw(
                    &mut self.rtas,
                    &tokens,
                    p.config_addr,
                    p.buid,
                    need,
                    max_page,
                )?;
                info.id = ddw.liobn.into();
                info.window_base = ddw.base;
                info.window_size = 1 << ddw.window_shift;
                info.setup_calls = ddw.calls;
                pool_iova = ddw.base;
                let mut t = TceTable::new(
                    self.calls,
                    ddw.liobn,
                    ddw.base,
                    1 << ddw.window_shift,
                    ddw.page_shift,
                    self.batch,
                );
                t.set_page_sizes(ddw.page_sizes);
                t
            }
        };
        match self.target {
            Target::Direct { direct, .. } => {
                let ram_top = self.target.ram_top();
                if mode == TceMode::Dynamic {
                    info.mapping = "per-map";
                    let mut dma = IommuDma::dynamic(Box::new(table), info)?;
                    dma.set_debug_unmap_early(self.debug.unmap_early);
                    return Ok(dma);
                }
                info.mapping = "ram";
                let base = info.window_base;
                let dma = IommuDma::window("iommu", Box::new(table), direct, base, info);
                let page = dma.info().page_size;
                dma.map_fixed(base, 0, ram_top.next_multiple_of(page), Perm::RW)?;
                dma.end_setup();
                Ok(dma)
            }
            Target::Pool { bounce, phys, size } => {
                info.mapping = "pool";
                // The hypervisor reads the TCE list, so it must be shared memory: a page of the
                // pool, given back once the pool is mapped (no TCE is written after setup).
                let list = bounce.alloc_shared(4096, 4096, &DmaConstraints::NONE).ok();
                match &list {
                    // SAFETY: a 4 KiB-aligned region of the pool, ours until freed below.
                    Some(r) => unsafe { table.borrow_list(r.cpu_ptr().cast()) },
                    None => table.drop_list(),
                }
                let offset = pool_iova.wrapping_sub(phys);
                let dma = IommuDma::window("iommu+bounce", Box::new(table), bounce, offset, info);
                let mut mapped = dma.map_fixed(pool_iova, phys, size, Perm::RW);
                if self.debug.map_private && mapped.is_ok() {
                    // Test only: a private page (guest-physical 0, the exception vectors) for
                    // the device, right after the pool; the host's IOMMU trace oracle must fail.
                    let page = dma.info().page_size;
                    let after = pool_iova + size.next_multiple_of(page);
                    mapped = dma.map_fixed(after, 0, page, Perm::READ);
                }
                dma.end_setup();
                if let Some(r) = list {
                    // SAFETY: only the TCE list was in it, and the table forgot the list.
                    let _ = unsafe { bounce.free_shared(r) };
                }
                mapped.map(|()| dma)
            }
        }
    }
}

impl<'a, C: TceCalls + 'static, R: Rtas + 'a> DomainSetup<'a> for TceSetup<'a, C, R> {
    fn setup(self: Box<Self>) -> Result<IommuDma<'a>, DmaError> {
        self.go()
    }
}

#[cfg(test)]
mod tests;
