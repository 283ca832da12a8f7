use super::*;
use crate::dma::bounce::Bounce;
use crate::dma::{Direct, Direction};
use crate::platform::Emulated;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::vec;
use std::vec::Vec;

const H_PARAMETER: i64 = -4;
const RTAS_PARAM_ERROR: i32 = -3;
const LIOBN: u32 = 0x8000_0000;
const LIOBN64: u32 = 0x8000_0001;
const DDW_BASE: u64 = 1 << 59;

/// One TCE table as QEMU keeps it.
struct FakeTable {
    base: u64,
    shift: u32,
    entries: Vec<u64>,
}

/// A hypervisor that behaves as QEMU's sPAPR TCE and DDW code (hw/ppc/spapr_iommu.c,
/// spapr_rtas_ddw.c), strict about what the guest passes, with failures on demand.
#[derive(Default)]
struct Hv {
    tables: BTreeMap<u64, FakeTable>,
    /// Every hypercall: (opcode, entries).
    log: Vec<(u64, u64)>,
    /// Fail the n-th hypercall (0-based) with a code.
    fail_hcall: Option<(usize, i64)>,
    // DDW state.
    page_mask: u32,
    largest_block: u32,
    ddw_created: bool,
    rtas_log: Vec<u32>,
    fail_create: Option<i32>,
    no_free_window: bool,
}

const Q: u32 = 0x2020;
const C: u32 = 0x2021;
const RM: u32 = 0x2022;
const RESET: u32 = 0x2023;

impl Hv {
    fn new() -> Arc<Mutex<Hv>> {
        let mut hv = Hv {
            page_mask: 0x1 | 0x2 | 0x100 | 0x4, // 4K, 64K, 2M, 16M: QEMU's pgsz default
            largest_block: 0x8000_0000,
            ..Hv::default()
        };
        hv.tables.insert(
            LIOBN.into(),
            FakeTable {
                base: 0,
                shift: 12,
                entries: vec![0; (1 << 30) >> 12],
            },
        );
        Arc::new(Mutex::new(hv))
    }

    fn fail(&mut self, op: u64, entries: u64) -> Option<i64> {
        self.log.push((op, entries));
        match self.fail_hcall {
            Some((n, code)) if n == self.log.len() - 1 => Some(code),
            _ => None,
        }
    }

    fn put(&mut self, liobn: u64, ioba: u64, tce: u64) -> i64 {
        let Some(t) = self.tables.get_mut(&liobn) else {
            return H_PARAMETER;
        };
        let index = (ioba.wrapping_sub(t.base) >> t.shift) as usize;
        match t.entries.get_mut(index) {
            Some(e) => {
                *e = tce;
                0
            }
            None => H_PARAMETER,
        }
    }

    /// Where a device access at `addr` in window `liobn` goes, needing `perm`.
    fn translate(&self, liobn: u32, addr: u64, perm: u64) -> Option<u64> {
        let t = self.tables.get(&u64::from(liobn))?;
        let tce = *t
            .entries
            .get((addr.checked_sub(t.base)? >> t.shift) as usize)?;
        let mask = (1u64 << t.shift) - 1;
        (tce & perm == perm && perm != 0).then_some((tce & !mask) | (addr & mask))
    }

    fn live(&self, liobn: u32) -> usize {
        self.tables[&u64::from(liobn)]
            .entries
            .iter()
            .filter(|&&e| e != 0)
            .count()
    }

    fn count(&self, op: u64) -> (u64, u64) {
        self.log
            .iter()
            .filter(|(o, _)| *o == op)
            .fold((0, 0), |(c, n), (_, e)| (c + 1, n + e))
    }
}

#[derive(Clone)]
struct Calls(Arc<Mutex<Hv>>);

impl TceCalls for Calls {
    fn put_tce(&mut self, liobn: u64, ioba: u64, tce: u64) -> i64 {
        let mut hv = self.0.lock().unwrap();
        if let Some(code) = hv.fail(H_PUT_TCE, 1) {
            return code;
        }
        hv.put(liobn, ioba, tce)
    }

    unsafe fn put_tce_indirect(&mut self, liobn: u64, ioba: u64, list: u64, count: u64) -> i64 {
        let mut hv = self.0.lock().unwrap();
        if let Some(code) = hv.fail(H_PUT_TCE_INDIRECT, count) {
            return code;
        }
        if count > 512 || !list.is_multiple_of(4096) {
            return H_PARAMETER;
        }
        let shift = match hv.tables.get(&liobn) {
            Some(t) => t.shift,
            None => return H_PARAMETER,
        };
        for i in 0..count {
            // SAFETY: the caller's contract: a list page of `count` big-endian TCEs.
            let tce = u64::from_be(unsafe {
                core::ptr::with_exposed_provenance::<u64>(list as usize)
                    .add(i as usize)
                    .read_volatile()
            });
            let rc = hv.put(liobn, ioba + (i << shift), tce);
            if rc != 0 {
                return rc;
            }
        }
        0
    }

    fn stuff_tce(&mut self, liobn: u64, ioba: u64, value: u64, count: u64) -> i64 {
        let mut hv = self.0.lock().unwrap();
        if let Some(code) = hv.fail(H_STUFF_TCE, count) {
            return code;
        }
        let shift = match hv.tables.get(&liobn) {
            Some(t) if count as usize <= t.entries.len() => t.shift,
            _ => return H_PARAMETER,
        };
        for i in 0..count {
            let rc = hv.put(liobn, ioba + (i << shift), value);
            if rc != 0 {
                return rc;
            }
        }
        0
    }
}

struct FakeRtas(Arc<Mutex<Hv>>);

impl Rtas for FakeRtas {
    fn call(&mut self, token: u32, args: &[u32], rets: &mut [u32]) -> i32 {
        let mut hv = self.0.lock().unwrap();
        hv.rtas_log.push(token);
        let status: i32 = match (token, args.len(), rets.len()) {
            (Q, 3, 5) | (Q, 3, 6) => {
                let avail = u32::from(!hv.ddw_created && !hv.no_free_window);
                rets[1] = avail;
                if rets.len() == 6 {
                    rets[2] = 0;
                    rets[3] = hv.largest_block;
                    rets[4] = hv.page_mask;
                } else {
                    rets[2] = hv.largest_block;
                    rets[3] = hv.page_mask;
                }
                0
            }
            (C, 5, 4) => {
                let (page_shift, window_shift) = (args[3], args[4]);
                let offered = ddw_page_sizes(hv.page_mask);
                if let Some(code) = hv.fail_create {
                    code
                } else if offered & (1 << page_shift) == 0 || window_shift < page_shift {
                    RTAS_PARAM_ERROR
                } else if hv.ddw_created || hv.no_free_window {
                    -1
                } else {
                    hv.ddw_created = true;
                    let n = 1usize << (window_shift - page_shift);
                    hv.tables.insert(
                        LIOBN64.into(),
                        FakeTable {
                            base: DDW_BASE,
                            shift: page_shift,
                            entries: vec![0; n],
                        },
                    );
                    rets[1] = LIOBN64;
                    rets[2] = (DDW_BASE >> 32) as u32;
                    rets[3] = DDW_BASE as u32;
                    0
                }
            }
            (RESET, 3, 1) => {
                hv.ddw_created = false;
                hv.no_free_window = false;
                hv.tables.remove(&u64::from(LIOBN64));
                0
            }
            _ => RTAS_PARAM_ERROR,
        };
        rets[0] = status as u32;
        status
    }
}

fn be(cells: &[u32]) -> Vec<u8> {
    cells.iter().flat_map(|c| c.to_be_bytes()).collect()
}

#[test]
fn dma_window_as_qemu_writes_it_and_hostile_ones() {
    let qemu = be(&[LIOBN, 0, 0, 0, 0x4000_0000]);
    let w = TceWindow::parse(&qemu, Some(&be(&[2])), Some(&be(&[2]))).unwrap();
    assert_eq!(
        w,
        TceWindow {
            liobn: LIOBN,
            base: 0,
            size: 1 << 30
        }
    );
    assert_eq!(
        TceWindow::parse(&qemu, None, None),
        Ok(w),
        "2 and 2 by default"
    );
    let one = be(&[7, 0x1000, 0x10_0000]);
    assert_eq!(
        TceWindow::parse(&one, Some(&be(&[1])), Some(&be(&[1]))).unwrap(),
        TceWindow {
            liobn: 7,
            base: 0x1000,
            size: 0x10_0000
        }
    );
    // Huge is allowed (the IOVA allocator only manages a bounded part of it).
    let huge = be(&[1, 0, 0, 0x4000_0000, 0]);
    assert_eq!(TceWindow::parse(&huge, None, None).unwrap().size, 1 << 62);
    type Case = (Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>, &'static str);
    let bad: &[Case] = &[
        (be(&[LIOBN, 0, 0, 0, 0]), None, None, "size 0"),
        (be(&[LIOBN, 0, 0x800, 0, 0x1000]), None, None, "4 KiB"),
        (be(&[LIOBN, 0, 0, 0, 0x1800]), None, None, "4 KiB"),
        (
            be(&[LIOBN, 0xffff_ffff, 0xffff_f000, 0, 0x2000]),
            None,
            None,
            "wraps",
        ),
        (
            be(&[LIOBN, 0, 0, 0]),
            None,
            None,
            "LIOBN, bus address and size",
        ),
        (
            be(&[LIOBN, 0, 0, 0, 0x1000, 0]),
            None,
            None,
            "LIOBN, bus address and size",
        ),
        (vec![], None, None, "LIOBN, bus address and size"),
        (qemu.clone(), Some(be(&[3])), None, "ibm,#dma-address-cells"),
        (qemu.clone(), Some(be(&[0])), None, "ibm,#dma-address-cells"),
        (
            qemu.clone(),
            Some(vec![0, 2]),
            None,
            "ibm,#dma-address-cells",
        ),
        (qemu.clone(), None, Some(be(&[2, 2])), "ibm,#dma-size-cells"),
    ];
    for (v, ac, sc, why) in bad {
        let e = TceWindow::parse(v, ac.as_deref(), sc.as_deref()).unwrap_err();
        assert!(e.contains(why), "{v:?}: {e}");
    }
    // Arbitrary bytes never panic.
    let mut x = 0x9e37_79b9u32;
    for len in 0..64 {
        let v: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let _ = TceWindow::parse(&v, v.get(..4), v.get(4..8));
        let _ = DdwTokens::parse(&v, v.get(8..));
    }
}

#[test]
fn ddw_tokens() {
    let app = be(&[Q, C, RM]);
    let t = DdwTokens::parse(&app, Some(&be(&[1, RESET]))).unwrap();
    assert_eq!(
        t,
        DdwTokens {
            query: Q,
            create: C,
            remove: RM,
            reset: Some(RESET),
            query_64bit: false
        }
    );
    assert_eq!(DdwTokens::parse(&app, None).unwrap().reset, None);
    let t = DdwTokens::parse(&app, Some(&be(&[2, RESET, 1]))).unwrap();
    assert!(t.query_64bit);
    assert!(DdwTokens::parse(&be(&[Q, C]), None).is_err());
    assert!(DdwTokens::parse(&app, Some(&be(&[2, RESET]))).is_err());
    assert!(DdwTokens::parse(&app, Some(&[])).is_err());
    assert!(DdwTokens::parse(&app, Some(&[0, 0, 0, 1, 0])).is_err());
}

fn table(hv: &Arc<Mutex<Hv>>, batch: bool) -> TceTable<Calls> {
    TceTable::new(Calls(hv.clone()), LIOBN, 0, 1 << 30, 12, batch)
}

#[test]
fn batched_maps_use_one_indirect_call_per_512_tces_and_one_stuff_to_clear() {
    let hv = Hv::new();
    let mut t = table(&hv, true);
    t.map(0x10_0000, 0x4000_0000, 1, Perm::READ).unwrap();
    t.map(0x20_0000, 0x5000_0000, 600, Perm::RW).unwrap();
    {
        let h = hv.lock().unwrap();
        assert_eq!(h.count(H_PUT_TCE), (1, 1));
        assert_eq!(h.count(H_PUT_TCE_INDIRECT), (2, 600));
        assert_eq!(h.translate(LIOBN, 0x10_0123, 1), Some(0x4000_0123));
        assert_eq!(h.translate(LIOBN, 0x10_0123, 2), None, "read only");
        assert_eq!(
            h.translate(LIOBN, 0x20_0000 + 599 * 4096 + 5, 3),
            Some(0x5000_0000 + 599 * 4096 + 5)
        );
        assert_eq!(h.live(LIOBN), 601);
    }
    t.unmap(0x20_0000, 600).unwrap();
    t.unmap(0x10_0000, 1).unwrap();
    let h = hv.lock().unwrap();
    assert_eq!(h.count(H_STUFF_TCE), (2, 601));
    assert_eq!(h.live(LIOBN), 0);
    let k = t.calls();
    assert_eq!((k[0].name, k[0].calls, k[0].entries), ("H_PUT_TCE", 1, 1));
    assert_eq!(
        (k[1].name, k[1].calls, k[1].entries),
        ("H_PUT_TCE_INDIRECT", 2, 600)
    );
    assert_eq!(
        (k[2].name, k[2].calls, k[2].entries),
        ("H_STUFF_TCE", 2, 601)
    );
}

#[test]
fn unbatched_maps_use_one_put_per_tce() {
    let hv = Hv::new();
    let mut t = table(&hv, false);
    t.map(0x1000, 0x7000_0000, 16, Perm::WRITE).unwrap();
    t.unmap(0x1000, 16).unwrap();
    let h = hv.lock().unwrap();
    assert_eq!(h.count(H_PUT_TCE), (32, 32));
    assert_eq!(h.count(H_PUT_TCE_INDIRECT), (0, 0));
    assert_eq!(h.count(H_STUFF_TCE), (0, 0));
    assert_eq!(h.live(LIOBN), 0);
}

#[test]
fn hcall_errors_are_platform_errors_and_roll_back() {
    for batch in [true, false] {
        let hv = Hv::new();
        let mut t = table(&hv, batch);
        // The second call fails: what the first wrote is cleared again.
        hv.lock().unwrap().fail_hcall = Some((1, -4));
        let e = t.map(0x10_0000, 0x4000_0000, 1000, Perm::RW).unwrap_err();
        assert_eq!(e, DmaError::Platform { code: -4 }, "batch {batch}");
        assert_eq!(hv.lock().unwrap().live(LIOBN), 0, "batch {batch}");
        hv.lock().unwrap().fail_hcall = None;
        let n = hv.lock().unwrap().log.len();
        hv.lock().unwrap().fail_hcall = Some((n, -1));
        t.map(0x10_0000, 0x4000_0000, 3, Perm::RW).unwrap_err();
        t.map(0x10_0000, 0x4000_0000, 3, Perm::RW).unwrap();
        let n = hv.lock().unwrap().log.len();
        hv.lock().unwrap().fail_hcall = Some((n, -2));
        assert_eq!(t.unmap(0x10_0000, 3), Err(DmaError::Platform { code: -2 }));
    }
}

#[test]
fn runs_outside_the_window_never_reach_the_hypervisor() {
    let hv = Hv::new();
    let mut t = table(&hv, true);
    for (iova, pages) in [
        (1 << 30, 1),
        ((1 << 30) - 4096, 2),
        (0x800, 1),
        (0, 0),
        (u64::MAX - 4095, 1),
        (0, u64::MAX),
    ] {
        assert!(matches!(
            t.map(iova, 0x1000, pages, Perm::RW),
            Err(DmaError::InvalidRequest(_))
        ));
        assert!(matches!(
            t.unmap(iova, pages),
            Err(DmaError::InvalidRequest(_))
        ));
    }
    assert!(t.map(0, 0x1001, 1, Perm::RW).is_err(), "unaligned page");
    assert!(t.map(0, 0x1000, 1, Perm(0)).is_err(), "no access");
    assert!(hv.lock().unwrap().log.is_empty());
}

#[test]
fn dynamic_iommu_over_tce_translates_what_the_driver_mapped() {
    let hv = Hv::new();
    let dma = IommuDma::dynamic(Box::new(table(&hv, true)), DomainInfo::default()).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let slice = NonNull::from(&mut buf[..]);
    // SAFETY: unmapped below.
    let m = unsafe { dma.map(slice, Direction::FromDevice, &DmaConstraints::NONE) }.unwrap();
    let addr = m.device_addr().as_u64();
    let phys = buf.as_ptr() as u64;
    {
        let h = hv.lock().unwrap();
        for off in (0..64 << 10).step_by(4096) {
            assert_eq!(h.translate(LIOBN, addr + off, 2), Some(phys + off));
        }
        assert_eq!(h.count(H_PUT_TCE_INDIRECT).0, 1, "17 TCEs, one call");
    }
    // SAFETY: no device used it.
    unsafe { dma.unmap(m) }.unwrap();
    let s = dma.iommu_stats();
    assert_eq!((s.maps, s.unmaps, s.calls, s.pages), (1, 1, 2, 0));
    assert_eq!(hv.lock().unwrap().live(LIOBN), 0);
}

fn rtas_setup(hv: &Arc<Mutex<Hv>>) -> (FakeRtas, DdwTokens) {
    let t = DdwTokens::parse(&be(&[Q, C, RM]), Some(&be(&[1, RESET]))).unwrap();
    (FakeRtas(hv.clone()), t)
}

#[test]
fn ddw_creates_the_largest_page_window_that_covers_what_is_asked() {
    let hv = Hv::new();
    let (mut rtas, t) = rtas_setup(&hv);
    let d = create_ddw(
        &mut rtas,
        &t,
        0x800,
        0x8000_0002_0000_0000,
        512 << 20,
        u64::MAX,
    )
    .unwrap();
    assert_eq!(
        (d.liobn, d.base, d.page_shift, d.window_shift, d.calls),
        (LIOBN64, DDW_BASE, 24, 29, 2)
    );
    assert_eq!(d.page_sizes, 1 << 12 | 1 << 16 | 1 << 21 | 1 << 24);
    // A small pool aligned to 64 KiB: 64 KiB pages, a window of its size; the first window is
    // taken, so the reset extension frees it first.
    let d = create_ddw(&mut rtas, &t, 0, 0, 4 << 20, 64 << 10).unwrap();
    assert_eq!((d.page_shift, d.window_shift, d.calls), (16, 22, 4));
    assert_eq!(hv.lock().unwrap().rtas_log, vec![Q, C, Q, RESET, Q, C]);
    // Without the reset extension: a clear error.
    let no_reset = DdwTokens { reset: None, ..t };
    assert_eq!(
        create_ddw(&mut rtas, &no_reset, 0, 0, 1 << 20, u64::MAX),
        Err(DmaError::InvalidRequest("the PHB has no free DMA window"))
    );
    // The hypervisor refuses: its status.
    let hv = Hv::new();
    hv.lock().unwrap().fail_create = Some(-3);
    let (mut rtas, t) = rtas_setup(&hv);
    assert_eq!(
        create_ddw(&mut rtas, &t, 0, 0, 1 << 20, u64::MAX),
        Err(DmaError::Platform { code: -3 })
    );
    // Not enough TCEs for the window; no page size small enough.
    let hv = Hv::new();
    hv.lock().unwrap().largest_block = 8;
    let (mut rtas, t) = rtas_setup(&hv);
    assert!(matches!(
        create_ddw(&mut rtas, &t, 0, 0, 1 << 30, u64::MAX),
        Err(DmaError::TooLarge { .. })
    ));
    assert_eq!(
        create_ddw(&mut rtas, &t, 0, 0, 1 << 20, 2048),
        Err(DmaError::InvalidRequest("no DDW page size fits"))
    );
    // The 64-bit query extension: six return cells.
    let hv = Hv::new();
    let (mut rtas, t) = rtas_setup(&hv);
    let t64 = DdwTokens {
        query_64bit: true,
        ..t
    };
    assert!(create_ddw(&mut rtas, &t64, 0, 0, 1 << 24, u64::MAX).is_ok());
    // A query the hypervisor rejects (wrong token): its status.
    let bad = DdwTokens { query: 0x999, ..t };
    assert_eq!(
        create_ddw(&mut rtas, &bad, 0, 0, 1 << 24, u64::MAX),
        Err(DmaError::Platform {
            code: RTAS_PARAM_ERROR.into()
        })
    );
}

fn phb(ddw: Option<Result<DdwTokens, &'static str>>) -> PhbTce {
    PhbTce {
        window: TceWindow {
            liobn: LIOBN,
            base: 0,
            size: 1 << 30,
        },
        ddw,
        buid: 0x8000_0002_0000_0000,
        config_addr: 0x800,
    }
}

fn tokens() -> Option<Result<DdwTokens, &'static str>> {
    Some(DdwTokens::parse(&be(&[Q, C, RM]), Some(&be(&[1, RESET]))))
}

fn setup<'a>(
    hv: &Arc<Mutex<Hv>>,
    phb: PhbTce,
    mode: Option<TceMode>,
    target: Target<'a>,
) -> Result<IommuDma<'a>, DmaError> {
    Box::new(TceSetup {
        phb,
        mode,
        batch: true,
        debug: Default::default(),
        target,
        calls: Calls(hv.clone()),
        rtas: FakeRtas(hv.clone()),
    })
    .setup()
}

#[test]
fn normal_guest_dynamic_and_ddw() {
    let direct = Direct::new();
    let ram = || Target::Direct {
        ram: &[(0, 512 << 20)],
        direct: &direct,
    };
    // Explicit dynamic: nothing mapped at setup, per-map afterwards.
    let hv = Hv::new();
    let d = setup(&hv, phb(tokens()), Some(TceMode::Dynamic), ram()).unwrap();
    let i = d.info();
    assert_eq!(
        (i.mode, i.mapping, i.id, i.page_size),
        ("dynamic", "per-map", LIOBN.into(), 4096)
    );
    assert_eq!(i.mode_reason, "sg.tce=dynamic");
    assert!(hv.lock().unwrap().log.is_empty() && hv.lock().unwrap().rtas_log.is_empty());
    // Default with DDW offered: all of RAM once, 32 TCEs of 16 MiB in one call.
    let hv = Hv::new();
    let d = setup(&hv, phb(tokens()), None, ram()).unwrap();
    let i = d.info();
    assert_eq!((i.mode, i.mapping, i.page_size), ("ddw", "ram", 16 << 20));
    assert_eq!(
        (i.window_base, i.window_size, i.setup_calls),
        (DDW_BASE, 512 << 20, 2)
    );
    assert_eq!(i.mode_reason, "default: the PHB offers DDW");
    {
        let h = hv.lock().unwrap();
        assert_eq!(h.count(H_PUT_TCE_INDIRECT), (1, 32));
        assert_eq!(h.live(LIOBN64), 32);
        assert_eq!(
            h.translate(LIOBN64, DDW_BASE + 0x1234_5678, 3),
            Some(0x1234_5678)
        );
    }
    let mut buf = vec![0u8; 1000];
    let slice = NonNull::from(&mut buf[..]);
    // SAFETY: unmapped below.
    let m = unsafe { d.map(slice, Direction::ToDevice, &DmaConstraints::NONE) }.unwrap();
    assert_eq!(m.device_addr().as_u64(), DDW_BASE + buf.as_ptr() as u64);
    // SAFETY: no device used it.
    unsafe { d.unmap(m) }.unwrap();
    assert_eq!(hv.lock().unwrap().log.len(), 1, "no hypercall per request");
    assert_eq!(d.iommu_stats().pages, 32);
    // Default without DDW: dynamic, and it says why.
    let hv = Hv::new();
    let d = setup(&hv, phb(None), None, ram()).unwrap();
    assert_eq!(d.info().mode_reason, "default: the PHB offers no DDW");
    let d = setup(&hv, phb(Some(Err("bad"))), None, ram()).unwrap();
    assert_eq!(d.info().mode, "dynamic");
    // Explicit DDW without it: an error, not a fallback.
    assert_eq!(
        setup(&hv, phb(None), Some(TceMode::Ddw), ram()).unwrap_err(),
        DmaError::InvalidRequest("sg.tce=ddw, but the PHB has no ibm,ddw-applicable")
    );
    assert_eq!(
        setup(&hv, phb(Some(Err("bad"))), Some(TceMode::Ddw), ram()).unwrap_err(),
        DmaError::InvalidRequest("bad")
    );
    // DDW refused by the hypervisor: the status.
    let hv = Hv::new();
    hv.lock().unwrap().fail_create = Some(-1);
    assert_eq!(
        setup(&hv, phb(tokens()), None, ram()).unwrap_err(),
        DmaError::Platform { code: -1 }
    );
    // The RAM mapping fails: the hcall's code.
    let hv = Hv::new();
    hv.lock().unwrap().fail_hcall = Some((0, -4));
    assert_eq!(
        setup(&hv, phb(tokens()), None, ram()).unwrap_err(),
        DmaError::Platform { code: -4 }
    );
}

/// A secure guest's pool in host memory.
/// `size` bytes aligned to exactly 64 KiB (never to 128 KiB): the largest DDW page that covers
/// only pool pages is then 64 KiB whatever address the host allocator returns. (With the
/// allocator's own 64 KiB alignment the pool was now and then 2 MiB-aligned, and the test
/// expecting 64 KiB pages failed.)
struct Pool {
    base: *mut u8,
    layout: std::alloc::Layout,
}

impl Pool {
    fn new(size: usize) -> Pool {
        let layout = std::alloc::Layout::from_size_align(size + (1 << 16), 1 << 17).unwrap();
        // SAFETY: non-zero size; freed in drop.
        let base = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!base.is_null());
        Pool { base, layout }
    }

    fn phys(&self) -> u64 {
        self.base as u64 + (1 << 16)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.base, self.layout) }
    }
}

#[test]
fn secure_guest_maps_only_the_pool_once() {
    let mem = Pool::new(4 << 20);
    let platform = Emulated::new(1 << 16);
    // SAFETY: the memory is the test's, identity "mapped", unused otherwise.
    let bounce =
        unsafe { Bounce::new(&platform, mem.phys(), 4 << 20, Default::default()) }.unwrap();
    let target = || Target::Pool {
        bounce: &bounce,
        phys: mem.phys(),
        size: 4 << 20,
    };
    for mode in [TceMode::Dynamic, TceMode::Ddw] {
        let hv = Hv::new();
        let d = setup(&hv, phb(tokens()), Some(mode), target()).unwrap();
        assert_eq!(d.name(), "iommu+bounce");
        let i = d.info();
        assert_eq!(i.mapping, "pool");
        let (liobn, pages, page) = match mode {
            TceMode::Dynamic => (LIOBN, 1024, 4096),
            TceMode::Ddw => (LIOBN64, 64, 64 << 10),
        };
        assert_eq!(i.page_size, page, "{mode:?}");
        {
            let h = hv.lock().unwrap();
            assert_eq!(h.live(liobn), pages, "{mode:?}");
            assert_eq!(h.count(H_PUT_TCE_INDIRECT).1, pages as u64);
            assert_eq!(h.count(H_PUT_TCE).0, 0);
        }
        assert_eq!(bounce.pool_stats().live_bytes, 0, "the list page went back");
        // A request: a pool slot, reachable through the window, nothing else is.
        let calls = hv.lock().unwrap().log.len();
        let mut buf = vec![0u8; 3000];
        let slice = NonNull::from(&mut buf[..]);
        // SAFETY: unmapped below.
        let m = unsafe { d.map(slice, Direction::FromDevice, &DmaConstraints::NONE) }.unwrap();
        let addr = m.device_addr().as_u64();
        assert_ne!(addr, 0);
        let target = hv.lock().unwrap().translate(liobn, addr, 2).unwrap();
        assert!(
            (mem.phys()..mem.phys() + (4 << 20)).contains(&target),
            "{mode:?}"
        );
        assert_ne!(
            target,
            buf.as_ptr() as u64,
            "the private buffer is never mapped"
        );
        // SAFETY: the "device" is done.
        unsafe { d.unmap(m) }.unwrap();
        assert_eq!(
            hv.lock().unwrap().log.len(),
            calls,
            "{mode:?}: no hypercall per request"
        );
        if mode == TceMode::Dynamic {
            // At the pool's own address when the 1 GiB window holds it (device addresses are
            // then physical ones), else from 64 KiB on (never IOVA 0).
            let at = if mem.phys() + (4 << 20) <= 1 << 30 {
                mem.phys()
            } else {
                1 << 16
            };
            assert!((at..at + (4 << 20)).contains(&addr));
        }
    }
    // A pool larger than the default window: refused.
    let hv = Hv::new();
    let small = PhbTce {
        window: TceWindow {
            liobn: LIOBN,
            base: 0,
            size: 1 << 20,
        },
        ..phb(None)
    };
    assert!(matches!(
        setup(&hv, small, None, target()),
        Err(DmaError::TooLarge { .. })
    ));
    assert_eq!(TceMode::parse("ddw"), Some(TceMode::Ddw));
    assert_eq!(TceMode::parse("DDW"), None);
    assert_eq!(TceMode::Dynamic.as_str(), "dynamic");
}

/// `sg.debug.map_private=1` (test only): the pool domain also maps guest-physical page 0, right
/// after the pool, in both modes (a DDW window gets room for it), and the guest still works.
#[test]
fn debug_map_private_maps_page_zero_after_the_pool() {
    let mem = Pool::new(4 << 20);
    let platform = Emulated::new(1 << 16);
    // SAFETY: the memory is the test's, identity "mapped", unused otherwise.
    let bounce =
        unsafe { Bounce::new(&platform, mem.phys(), 4 << 20, Default::default()) }.unwrap();
    for mode in [TceMode::Dynamic, TceMode::Ddw] {
        let hv = Hv::new();
        let d = Box::new(TceSetup {
            phb: phb(tokens()),
            mode: Some(mode),
            batch: true,
            debug: IommuDebug {
                unmap_early: false,
                map_private: true,
            },
            target: Target::Pool {
                bounce: &bounce,
                phys: mem.phys(),
                size: 4 << 20,
            },
            calls: Calls(hv.clone()),
            rtas: FakeRtas(hv.clone()),
        })
        .setup()
        .unwrap();
        let i = d.info();
        let liobn = if mode == TceMode::Ddw { LIOBN64 } else { LIOBN };
        let pool_iova = match mode {
            TceMode::Ddw => i.window_base,
            TceMode::Dynamic if mem.phys() + (4 << 20) <= 1 << 30 => mem.phys(),
            TceMode::Dynamic => 1 << 16,
        };
        let h = hv.lock().unwrap();
        let pool_pages = (4 << 20) / i.page_size as usize;
        assert_eq!(h.live(liobn), pool_pages + 1, "{mode:?}");
        assert_eq!(
            h.translate(liobn, pool_iova + (4 << 20), 1),
            Some(0),
            "{mode:?}: page 0 readable right after the pool"
        );
        assert_eq!(
            h.translate(liobn, pool_iova + (4 << 20), 2),
            None,
            "read only"
        );
        assert_eq!(d.iommu_stats().pages, pool_pages as u64 + 1);
    }
}
