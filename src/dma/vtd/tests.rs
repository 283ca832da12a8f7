//! The VT-d driver against a fake unit that behaves like QEMU's intel-iommu
//! (hw/i386/intel_iommu.c): the GCMD/GSTS handshakes, register-based context-cache and IOTLB
//! invalidation, and DMA translation through the guest's root, context and second-level tables
//! with QEMU's checks, faults recorded in the fault-recording register.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::dma::Direct;

/// QEMU 10's CAP with aw-bits=48: FRO 0x22, NFR 1, ND 6, MAMV 18, PSI, SLLPS, MGAW 47,
/// SAGAW 39 and 48 bits, and the drain bits.
pub(crate) const QEMU_CAP: u64 =
    (0x22 << 24) | 6 | (18 << 48) | (1 << 39) | (3 << 34) | (47 << 16) | (0x6 << 8) | (3 << 54);
/// QEMU 10's ECAP with intremap=off: QI, IRO 0xf, PT, MHMV; not coherent.
pub(crate) const QEMU_ECAP: u64 = (1 << 1) | (0xf << 8) | (1 << 6) | (15 << 20);

/// What the fake unit saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cmd {
    Gcmd(u32),
    ContextInv { cirg: u64, sid: u16, did: u16 },
    IotlbInv { iirg: u64, did: u16, iva: u64 },
}

pub(crate) struct State {
    pub regs: Vec<u8>,
    pub cap: u64,
    pub ecap: u64,
    pub gsts: u32,
    pub root: u64,
    pub log: Vec<Cmd>,
    /// Misbehaviour.
    pub never_rtps: bool,
    pub never_icc: bool,
    pub refuse_iotlb: bool,
}

/// A fake VT-d unit; clones share it (the test keeps one to translate and inspect).
#[derive(Clone)]
pub(crate) struct FakeVtd(pub Arc<spin::Mutex<State>>);

impl FakeVtd {
    pub fn new(cap: u64, ecap: u64) -> Self {
        FakeVtd(Arc::new(spin::Mutex::new(State {
            regs: vec![0; 0x1000],
            cap,
            ecap,
            gsts: 0,
            root: 0,
            log: Vec::new(),
            never_rtps: false,
            never_icc: false,
            refuse_iotlb: false,
        })))
    }

    pub fn qemu() -> Self {
        Self::new(QEMU_CAP, QEMU_ECAP)
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.0.lock())
    }

    /// A DMA by `sid` at `iova`: the physical address, or the fault reason (recorded in the
    /// fault-recording register as QEMU does).
    pub fn translate(&self, sid: u16, iova: u64, write: bool) -> Result<u64, u8> {
        let mut s = self.0.lock();
        if s.gsts & gcmd::TE == 0 {
            return Ok(iova);
        }
        let r = s.walk(sid, iova, write);
        if let Err(reason) = r {
            s.record_fault(sid, iova, write, reason);
        }
        r
    }
}

fn rd(addr: u64) -> u64 {
    // SAFETY: tests use `Direct`: table device addresses are live heap pointers.
    unsafe { core::ptr::with_exposed_provenance::<u64>(addr as usize).read_volatile() }
}

impl State {
    fn u32_at(&self, o: usize) -> u32 {
        u32::from_le_bytes(self.regs[o..o + 4].try_into().unwrap())
    }
    fn u64_at(&self, o: usize) -> u64 {
        u64::from(self.u32_at(o)) | u64::from(self.u32_at(o + 4)) << 32
    }
    fn set32(&mut self, o: usize, v: u32) {
        self.regs[o..o + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn set64(&mut self, o: usize, v: u64) {
        self.set32(o, v as u32);
        self.set32(o + 4, (v >> 32) as u32);
    }

    fn walk(&self, sid: u16, iova: u64, write: bool) -> Result<u64, u8> {
        let bus = u64::from(sid >> 8);
        let devfn = u64::from(sid & 0xff);
        let root_lo = rd(self.root + 16 * bus);
        if root_lo & 1 == 0 {
            return Err(1);
        }
        if root_lo & 0xffe != 0 {
            return Err(0xa);
        }
        let ce = (root_lo & PTE_ADDR) + 16 * devfn;
        let (lo, hi) = (rd(ce), rd(ce + 8));
        if lo & 1 == 0 {
            return Err(2);
        }
        // QEMU's reserved-bit checks of a legacy context entry.
        if lo & 0xff0 != 0 || hi & 0xffff_ffff_ff00_0080 != 0 {
            return Err(0xb);
        }
        if (lo >> 2) & 3 != 0 {
            return Err(0xd);
        }
        let aw = hi & 7;
        let caps = Caps {
            cap: self.cap,
            ecap: self.ecap,
        };
        if caps.sagaw() & (1 << aw) == 0 {
            return Err(3);
        }
        let levels = aw as u32 + 2;
        let bits = (30 + 9 * aw as u32).min(caps.mgaw());
        if iova >> bits != 0 {
            return Err(4);
        }
        let mut table = lo & PTE_ADDR;
        for level in (1..=levels).rev() {
            let e = rd(table + 8 * index(iova, level) as u64);
            if e & (PTE_R | PTE_W) == 0 {
                return Err(7);
            }
            // Bit 7 is reserved at the top level; bits above 48 outside the ignored ones.
            if (level == 4 && e & 0x80 != 0) || e & 0x800 != 0 || e & 0x000f_0000_0000_0000 != 0 {
                return Err(0xc);
            }
            let need = if write { PTE_W } else { PTE_R };
            if e & need == 0 {
                return Err(if write { 5 } else { 6 });
            }
            if level == 1 {
                return Ok((e & PTE_ADDR) | (iova & 0xfff));
            }
            if e & PTE_PS != 0 {
                // A 2 MiB page at level 2, when SLLPS offers them (bits 20:12 reserved); 1 GiB
                // pages are not modelled (the driver never writes them).
                if level != 2 || self.cap & (1 << 34) == 0 || e & 0x1f_f000 != 0 {
                    return Err(0xc);
                }
                return Ok((e & PTE_ADDR & !0x1f_ffff) | (iova & 0x1f_ffff));
            }
            table = e & PTE_ADDR;
        }
        unreachable!()
    }

    fn record_fault(&mut self, sid: u16, iova: u64, write: bool, reason: u8) {
        let off = Caps {
            cap: self.cap,
            ecap: self.ecap,
        }
        .fault_offset();
        let fsts = self.u32_at(reg::FSTS);
        if self.u64_at(off + 8) & (1 << 63) != 0 {
            self.set32(reg::FSTS, fsts | fsts::PFO);
            return;
        }
        let mut hi = (1u64 << 63) | u64::from(reason) << 32 | u64::from(sid);
        if !write {
            hi |= 1 << 62;
        }
        self.set64(off, iova & !0xfff);
        self.set64(off + 8, hi);
        self.set32(reg::FSTS, fsts | fsts::PPF);
    }

    fn write32(&mut self, off: usize, v: u32) {
        let caps = Caps {
            cap: self.cap,
            ecap: self.ecap,
        };
        let iotlb = caps.iotlb_offset() + 8;
        let fro = caps.fault_offset();
        match off {
            reg::GCMD => {
                self.log.push(Cmd::Gcmd(v));
                let mut gsts = self.gsts & !(gcmd::SRTP | gcmd::WBF);
                for bit in [gcmd::TE, gcmd::QIE] {
                    gsts = (gsts & !bit) | (v & bit);
                }
                if v & gcmd::SRTP != 0 && !self.never_rtps {
                    self.root = self.u64_at(reg::RTADDR) & PTE_ADDR;
                    gsts |= gcmd::SRTP;
                }
                self.gsts = gsts;
                let g = self.gsts;
                self.set32(reg::GSTS, g);
            }
            o if o == reg::CCMD + 4 => {
                self.set32(o, v);
                let c = self.u64_at(reg::CCMD);
                if c & ccmd::ICC != 0 && !self.never_icc {
                    let cirg = (c >> 61) & 3;
                    self.log.push(Cmd::ContextInv {
                        cirg,
                        sid: (c >> 16) as u16,
                        did: c as u16,
                    });
                    let done = (c & !ccmd::ICC & !ccmd::CAIG_MASK) | cirg << 59;
                    self.set64(reg::CCMD, done);
                }
            }
            o if o == iotlb + 4 => {
                self.set32(o, v);
                let c = self.u64_at(iotlb);
                if c & iotlb::IVT != 0 {
                    let iirg = (c >> 60) & 3;
                    let iva = self.u64_at(iotlb - 8);
                    self.log.push(Cmd::IotlbInv {
                        iirg,
                        did: (c >> 32) as u16,
                        iva,
                    });
                    let am_ok = iirg != 3 || (iva & 0x3f) as u32 <= caps.mamv();
                    let iaig = if self.refuse_iotlb || !am_ok { 0 } else { iirg };
                    self.set64(iotlb, (c & !iotlb::IVT & !iotlb::IAIG_MASK) | iaig << 57);
                }
            }
            reg::FSTS => {
                let s = self.u32_at(reg::FSTS) & !(v & fsts::W1C);
                self.set32(reg::FSTS, s);
            }
            o if o == fro + 12 => {
                if v & (1 << 31) != 0 {
                    let hi = self.u32_at(o) & !(1 << 31);
                    self.set32(o, hi);
                    let s = self.u32_at(reg::FSTS) & !fsts::PPF;
                    self.set32(reg::FSTS, s);
                }
            }
            o if o == reg::GSTS || (reg::VER..reg::GCMD).contains(&o) => {}
            o => self.set32(o, v),
        }
    }

    fn read32(&self, off: usize) -> u32 {
        match off {
            reg::VER => 0x10,
            reg::CAP => self.cap as u32,
            o if o == reg::CAP + 4 => (self.cap >> 32) as u32,
            reg::ECAP => self.ecap as u32,
            o if o == reg::ECAP + 4 => (self.ecap >> 32) as u32,
            reg::GSTS => self.gsts,
            o => self.u32_at(o),
        }
    }
}

impl Registers for FakeVtd {
    fn len(&self) -> usize {
        0x1000
    }
    fn read8(&mut self, _: usize) -> u8 {
        panic!("VT-d registers are accessed as dwords")
    }
    fn read16(&mut self, _: usize) -> u16 {
        panic!("VT-d registers are accessed as dwords")
    }
    fn read32(&mut self, offset: usize) -> u32 {
        self.0.lock().read32(offset)
    }
    fn write8(&mut self, _: usize, _: u8) {
        panic!("VT-d registers are accessed as dwords")
    }
    fn write16(&mut self, _: usize, _: u16) {
        panic!("VT-d registers are accessed as dwords")
    }
    fn write32(&mut self, offset: usize, value: u32) {
        self.0.lock().write32(offset, value)
    }
}

/// A clock that advances 10 us per look (Send, unlike the fake virtio device's).
#[derive(Default)]
pub(crate) struct TestClock(AtomicU64);

impl Clock for TestClock {
    fn now_us(&self) -> u64 {
        self.0.fetch_add(10, Ordering::Relaxed)
    }
}

pub(crate) fn direct() -> &'static Direct {
    Box::leak(Box::new(Direct::new()))
}

pub(crate) fn unit(fake: &FakeVtd) -> VtdUnit<'static, FakeVtd, TestClock> {
    VtdUnit::probe(
        fake.clone(),
        TestClock::default(),
        10_000,
        direct(),
        no_flush,
    )
    .unwrap()
}

#[test]
fn qemu_capabilities() {
    let c = Caps {
        cap: QEMU_CAP,
        ecap: QEMU_ECAP,
    };
    assert_eq!(c.domains(), 65536);
    assert_eq!(c.mgaw(), 48);
    assert_eq!(c.sagaw(), 0x6);
    assert_eq!(c.fault_offset(), 0x220);
    assert_eq!(c.fault_records(), 1);
    assert!(c.psi() && !c.caching_mode() && !c.rwbf());
    assert_eq!(c.mamv(), 18);
    assert_eq!(c.iotlb_offset(), 0xf0);
    assert!(c.queued_invalidation() && c.pass_through() && !c.coherent());
    assert_eq!(
        Agaw::choose(&c).unwrap(),
        Agaw {
            levels: 3,
            bits: 39,
            code: 1
        }
    );
    assert_eq!(
        Agaw::choose(&c).unwrap().input_range(&c),
        (0, (1 << 39) - 1)
    );
    let four = Caps {
        cap: QEMU_CAP & !(0x1f << 8) | (0x4 << 8),
        ..c
    };
    assert_eq!(Agaw::choose(&four).unwrap().levels, 4);
    let none = Caps {
        cap: QEMU_CAP & !(0x1f << 8) | (0x1 << 8),
        ..c
    };
    assert_eq!(Agaw::choose(&none), Err(VtdError::NoAgaw { sagaw: 1 }));
    // A 39-bit MGAW clamps a 48-bit table.
    let narrow = Caps {
        cap: (QEMU_CAP & !(0x3f << 16)) | (38 << 16),
        ..four
    };
    assert_eq!(
        Agaw::choose(&narrow).unwrap().input_range(&narrow),
        (0, (1 << 39) - 1)
    );
}

#[test]
fn entry_encoding() {
    assert_eq!(root_entry(0x12_3456_7000), (0x12_3456_7001, 0));
    assert_eq!(
        root_entry(0x12_3456_7fff),
        (0x12_3456_7001, 0),
        "low bits dropped"
    );
    assert_eq!(context_entry(0xabc_d000, 5, 1), (0xabc_d001, 1 | 5 << 8));
    assert_eq!(context_entry(0xabc_d000, 0xffff, 2).1, 2 | 0xff_ff00);
    assert_eq!(index(0x4000_3000, 1), 3);
    assert_eq!(index(0x4000_3000, 3), 1);
    assert_eq!(index(0x7f_ffff_ffff, 3), 511);
}

#[test]
fn registers_all_ones_is_no_unit() {
    struct Dead;
    impl Registers for Dead {
        fn len(&self) -> usize {
            0x1000
        }
        fn read8(&mut self, _: usize) -> u8 {
            0xff
        }
        fn read16(&mut self, _: usize) -> u16 {
            0xffff
        }
        fn read32(&mut self, _: usize) -> u32 {
            u32::MAX
        }
        fn write8(&mut self, _: usize, _: u8) {}
        fn write16(&mut self, _: usize, _: u16) {}
        fn write32(&mut self, _: usize, _: u32) {}
    }
    let r = VtdUnit::probe(Dead, TestClock::default(), 1000, direct(), no_flush);
    assert_eq!(r.err(), Some(VtdError::NoUnit));
}

#[test]
fn enable_sets_the_root_then_invalidates_then_translates() {
    let fake = FakeVtd::qemu();
    let mut u = unit(&fake);
    u.enable().unwrap();
    assert!(u.translating());
    let log = fake.with(|s| s.log.clone());
    assert_eq!(
        log,
        [
            Cmd::Gcmd(gcmd::SRTP),
            Cmd::ContextInv {
                cirg: 1,
                sid: 0,
                did: 0
            },
            Cmd::IotlbInv {
                iirg: 1,
                did: 0,
                iva: 0
            },
            Cmd::Gcmd(gcmd::TE),
        ]
    );
    assert_ne!(fake.with(|s| s.root), 0);
    // Nothing is attached: every device faults, none bypasses.
    assert_eq!(fake.translate(0x0010, 0x4000_0000, false), Err(1));
    u.collect_faults();
    assert_eq!(
        u.faults,
        [VtdFault {
            sid: 0x10,
            reason: 1,
            address: 0x4000_0000,
            read: true
        }]
    );
    assert_eq!(u.faults[0].reason_str(), "root entry not present");
    assert_eq!(fake.with(|s| s.u32_at(reg::FSTS)), 0, "faults cleared");
    assert_eq!(u.counts.commands(), 2);
}

#[test]
fn attach_map_translate_unmap() {
    let fake = FakeVtd::qemu();
    let mut u = unit(&fake);
    u.enable().unwrap();
    let did = u.new_domain_id().unwrap();
    assert_eq!(did, 1);
    let mut t = SlTable::new(u.dma(), u.agaw.levels, no_flush).unwrap();
    u.attach(0x0010, did, &t).unwrap();
    assert_eq!(
        u.attach(0x0010, did, &t),
        Err(VtdError::AlreadyAttached { sid: 0x10 })
    );
    // Not caching mode: attaching needs no invalidation.
    assert_eq!(u.counts.commands(), 2);
    // Attached but nothing mapped: a page-table fault.
    assert_eq!(fake.translate(0x0010, 0x4000_0000, false), Err(7));
    t.map(0x4000_0000, 0x20_0000, 16, PTE_R).unwrap();
    t.map(0x4001_0000, 0x30_0000, 1, PTE_W).unwrap();
    u.after_map(did, 0x4000_0000, 16).unwrap();
    assert_eq!(
        u.counts.commands(),
        2,
        "no invalidation after a map without CM"
    );
    assert_eq!(fake.translate(0x0010, 0x4000_5123, false), Ok(0x20_5123));
    assert_eq!(
        fake.translate(0x0010, 0x4000_5123, true),
        Err(5),
        "read-only"
    );
    assert_eq!(fake.translate(0x0010, 0x4001_0008, true), Ok(0x30_0008));
    assert_eq!(
        fake.translate(0x0010, 0x4001_0008, false),
        Err(6),
        "write-only"
    );
    assert_eq!(
        fake.translate(0x0018, 0x4000_5123, false),
        Err(2),
        "other function"
    );
    assert_eq!(t.mapped_pages, 17);
    assert_eq!(t.table_pages, 3, "root, one PD, one PT");
    // Mapping over a mapped page changes nothing.
    assert!(t.map(0x4000_f000, 0x50_0000, 2, PTE_R).is_err());
    assert_eq!(fake.translate(0x0010, 0x4000_f000, false), Ok(0x20_f000));
    t.unmap(0x4000_0000, 16).unwrap();
    u.flush_iotlb(did, 0x4000_0000, 16).unwrap();
    assert_eq!(
        fake.with(|s| *s.log.last().unwrap()),
        Cmd::IotlbInv {
            iirg: 3,
            did: 1,
            iva: 0x4000_0000 | 4
        }
    );
    assert_eq!(fake.translate(0x0010, 0x4000_5123, false), Err(7));
    assert!(t.unmap(0x4000_0000, 1).is_err(), "not mapped any more");
    assert_eq!(t.mapped_pages, 1);
    u.detach(0x0010, did).unwrap();
    assert_eq!(fake.translate(0x0010, 0x4001_0008, true), Err(2));
    // SAFETY: detached and invalidated.
    assert_eq!(unsafe { t.free() }, 3);
}

#[test]
fn iotlb_invalidation_granularity() {
    let fake = FakeVtd::qemu();
    let mut u = unit(&fake);
    u.enable().unwrap();
    let last = |f: &FakeVtd| f.with(|s| *s.log.last().unwrap());
    // A run that straddles a block boundary: the aligned block that holds it.
    u.flush_iotlb(1, 0x3000, 2).unwrap();
    assert_eq!(
        last(&fake),
        Cmd::IotlbInv {
            iirg: 3,
            did: 1,
            iva: 0x3
        }
    );
    assert_eq!(u.counts.iotlb_page_pages, 8);
    u.flush_iotlb(1, 0x5000, 1).unwrap();
    assert_eq!(
        last(&fake),
        Cmd::IotlbInv {
            iirg: 3,
            did: 1,
            iva: 0x5000
        }
    );
    // Beyond MAMV (2^18 pages): domain-selective.
    u.flush_iotlb(1, 0, (1 << 18) + 1).unwrap();
    assert_eq!(
        last(&fake),
        Cmd::IotlbInv {
            iirg: 2,
            did: 1,
            iva: 0x5000
        }
    );
    // Without PSI: always domain-selective.
    let fake = FakeVtd::new(QEMU_CAP & !(1 << 39), QEMU_ECAP);
    let mut u = unit(&fake);
    u.enable().unwrap();
    u.flush_iotlb(7, 0x5000, 1).unwrap();
    assert!(matches!(
        last(&fake),
        Cmd::IotlbInv {
            iirg: 2,
            did: 7,
            ..
        }
    ));
    assert_eq!(u.counts.iotlb_domain, 1);
    assert_eq!(u.counts.iotlb_page, 0);
}

#[test]
fn caching_mode_invalidates_after_attach_and_map() {
    let fake = FakeVtd::new(QEMU_CAP | (1 << 7), QEMU_ECAP);
    let mut u = unit(&fake);
    u.enable().unwrap();
    let t = {
        let mut t = SlTable::new(u.dma(), u.agaw.levels, no_flush).unwrap();
        t.map(0x4000_0000, 0x20_0000, 1, PTE_R | PTE_W).unwrap();
        t
    };
    u.attach(0x0108, 3, &t).unwrap();
    let log = fake.with(|s| s.log.clone());
    assert_eq!(
        &log[log.len() - 2..],
        &[
            Cmd::ContextInv {
                cirg: 3,
                sid: 0x0108,
                did: 3
            },
            Cmd::IotlbInv {
                iirg: 2,
                did: 3,
                iva: 0
            }
        ]
    );
    u.after_map(3, 0x4000_0000, 1).unwrap();
    assert!(matches!(
        fake.with(|s| *s.log.last().unwrap()),
        Cmd::IotlbInv {
            iirg: 3,
            did: 3,
            ..
        }
    ));
    assert_eq!(fake.translate(0x0108, 0x4000_0010, true), Ok(0x20_0010));
}

#[test]
fn firmware_state_is_turned_off_first() {
    let fake = FakeVtd::qemu();
    fake.with(|s| {
        s.gsts = gcmd::TE | gcmd::QIE;
        s.set32(reg::FSTS, fsts::PFO);
    });
    let mut u = unit(&fake);
    u.enable().unwrap();
    let log = fake.with(|s| s.log.clone());
    assert_eq!(log[0], Cmd::Gcmd(gcmd::QIE), "TE off, QIE kept");
    assert_eq!(log[1], Cmd::Gcmd(0), "then QIE off");
    assert!(u.translating());
    assert_eq!(fake.with(|s| s.u32_at(reg::FSTS)), 0);
}

#[test]
fn a_unit_that_does_not_answer_times_out() {
    let fake = FakeVtd::qemu();
    fake.with(|s| s.never_rtps = true);
    let mut u = unit(&fake);
    assert_eq!(
        u.enable(),
        Err(VtdError::Timeout {
            what: "root table pointer"
        })
    );
    let fake = FakeVtd::qemu();
    fake.with(|s| s.never_icc = true);
    let mut u = unit(&fake);
    assert_eq!(
        u.enable(),
        Err(VtdError::Timeout {
            what: "context-cache invalidation"
        })
    );
    let fake = FakeVtd::qemu();
    fake.with(|s| s.refuse_iotlb = true);
    let mut u = unit(&fake);
    let e = u.enable().unwrap_err();
    assert_eq!(
        e,
        VtdError::InvalidationRefused {
            what: "IOTLB invalidation"
        }
    );
    assert_eq!(DmaError::from(e), DmaError::Platform { code: -13 });
    assert!(!u.translating(), "translation never turned on");
}

#[test]
fn four_level_tables() {
    // A unit that offers 48-bit tables only.
    let fake = FakeVtd::new(QEMU_CAP & !(0x1f << 8) | (0x4 << 8), QEMU_ECAP);
    let mut u = unit(&fake);
    assert_eq!(u.agaw.levels, 4);
    u.enable().unwrap();
    let mut t = SlTable::new(u.dma(), u.agaw.levels, no_flush).unwrap();
    u.attach(0x0100, 1, &t).unwrap();
    let high = 0x7f_8000_0000; // beyond 39 bits: needs the 4th level
    t.map(high, 0x20_0000, 2, PTE_R | PTE_W).unwrap();
    t.map(0x4000_0000, 0x30_0000, 1, PTE_R).unwrap();
    assert_eq!(fake.translate(0x0100, high + 0x1008, true), Ok(0x20_1008));
    assert_eq!(fake.translate(0x0100, 0x4000_0010, false), Ok(0x30_0010));
    assert_eq!(
        t.table_pages, 6,
        "root (PML4) + two PDPT/PD/PT paths sharing it"
    );
    assert!(
        t.map(1 << 48, 0, 1, PTE_R).is_err(),
        "beyond a 4-level table"
    );
}

#[test]
fn registers_outside_the_window_are_refused() {
    // IRO at 0x1000 (past the 4 KiB window); FRO at 0x3ff * 16; IRO 0 (over VER and CAP).
    for (cap, ecap) in [
        (QEMU_CAP, QEMU_ECAP & !(0x3ff << 8) | (0x100 << 8)),
        (QEMU_CAP & !(0x3ff << 24) | (0x3ff << 24), QEMU_ECAP),
        (QEMU_CAP, QEMU_ECAP & !(0x3ff << 8)),
    ] {
        let fake = FakeVtd::new(cap, ecap);
        let r = VtdUnit::probe(fake.clone(), TestClock::default(), 1000, direct(), no_flush);
        assert!(
            matches!(r.err(), Some(VtdError::BadLayout { .. })),
            "{cap:#x} {ecap:#x}"
        );
    }
}

#[test]
fn domain_ids_run_out() {
    let fake = FakeVtd::new(QEMU_CAP & !7, QEMU_ECAP); // ND 0: 16 domains
    let mut u = unit(&fake);
    for want in 1..16 {
        assert_eq!(u.new_domain_id(), Ok(want));
    }
    assert_eq!(u.new_domain_id(), Err(VtdError::NoDomainId));
}

/// A `Dma` that allows `budget` allocations, then fails.
struct Budget {
    inner: Direct,
    left: spin::Mutex<u32>,
}

impl Dma for Budget {
    fn name(&self) -> &'static str {
        "budget"
    }
    fn alloc_shared(
        &self,
        size: usize,
        align: usize,
        c: &DmaConstraints,
    ) -> Result<SharedRegion, DmaError> {
        let mut l = self.left.lock();
        if *l == 0 {
            return Err(DmaError::OutOfMemory { size });
        }
        *l -= 1;
        self.inner.alloc_shared(size, align, c)
    }
    unsafe fn free_shared(&self, r: SharedRegion) -> Result<(), DmaError> {
        // SAFETY: forwarded.
        unsafe { self.inner.free_shared(r) }
    }
    unsafe fn map(
        &self,
        b: core::ptr::NonNull<[u8]>,
        d: crate::dma::Direction,
        c: &DmaConstraints,
    ) -> Result<crate::dma::Mapping, DmaError> {
        // SAFETY: forwarded.
        unsafe { self.inner.map(b, d, c) }
    }
    unsafe fn unmap(&self, m: crate::dma::Mapping) -> Result<(), DmaError> {
        // SAFETY: forwarded.
        unsafe { self.inner.unmap(m) }
    }
    unsafe fn sync_for_cpu(
        &self,
        m: &crate::dma::Mapping,
        o: usize,
        l: usize,
    ) -> Result<(), DmaError> {
        // SAFETY: forwarded.
        unsafe { self.inner.sync_for_cpu(m, o, l) }
    }
    unsafe fn sync_for_device(
        &self,
        m: &crate::dma::Mapping,
        o: usize,
        l: usize,
    ) -> Result<(), DmaError> {
        // SAFETY: forwarded.
        unsafe { self.inner.sync_for_device(m, o, l) }
    }
    fn stats(&self) -> crate::dma::DmaStats {
        self.inner.stats()
    }
}

#[test]
fn a_failed_table_allocation_undoes_the_map() {
    let dma = Budget {
        inner: Direct::new(),
        left: spin::Mutex::new(3),
    };
    let mut t = SlTable::new(&dma, 3, no_flush).unwrap();
    // Root + PD + PT for the first 2 MiB; the next 2 MiB need a PT that cannot be had.
    let start = 0x4000_0000 + 0x1f_e000;
    let e = t.map(start, 0x10_0000, 4, PTE_R).unwrap_err();
    assert_eq!(e, DmaError::OutOfMemory { size: 4096 });
    assert_eq!(
        t.mapped_pages, 0,
        "the two pages mapped before the failure are undone"
    );
    assert!(!t.any_mapped(start, 4));
    // What fits still maps.
    t.map(start, 0x10_0000, 2, PTE_R).unwrap();
    // SAFETY: no unit ever saw this table.
    assert_eq!(unsafe { t.free() }, 3);
}

#[test]
fn bad_runs_are_refused() {
    let mut t = SlTable::new(direct(), 3, no_flush).unwrap();
    assert!(t.map(0x1001, 0, 1, PTE_R).is_err());
    assert!(t.map(0x1000, 0x11, 1, PTE_R).is_err());
    assert!(t.map(0x1000, 0, 0, PTE_R).is_err());
    assert!(
        t.map(1 << 39, 0, 1, PTE_R).is_err(),
        "beyond a 3-level table"
    );
    assert!(t.map((1 << 39) - 0x1000, 0, 2, PTE_R).is_err());
    assert!(t.map(0x1000, !0xfffu64, 1, PTE_R).is_err());
    assert!(t.unmap(0x1000, 0).is_err());
    assert!(t.unmap(!0xfffu64, 2).is_err());
    assert_eq!(t.mapped_pages, 0);
    t.map((1 << 39) - 0x1000, 0x1000, 1, PTE_R | PTE_W).unwrap();
    assert_eq!(t.table_pages, 3);
}

// ---------------------------------------------------------------------------------------------
// Domains as IOMMU backends, through the core's `IommuDma`.

use crate::dma::Direction;
use crate::dma::iommu::{IommuDma, LazyDomain};
use crate::dma::tce::Target;
use core::ptr::NonNull;

type Shared = &'static spin::Mutex<Vtd<'static, FakeVtd, TestClock>>;

fn vtd_on(fake: &FakeVtd, dma: &'static dyn Dma) -> Shared {
    let mut u = VtdUnit::probe(fake.clone(), TestClock::default(), 10_000, dma, no_flush).unwrap();
    u.enable().unwrap();
    Box::leak(Box::new(spin::Mutex::new(Vtd::new(u))))
}

fn setup(vtd: Shared, sid: u16, target: Target<'static>) -> Result<IommuDma<'static>, DmaError> {
    Box::new(VtdSetup {
        vtd,
        sid,
        target,
        rmrrs: Vec::new(),
        debug: Default::default(),
        map: None,
    })
    .go_for_test()
}

impl<R: Registers + Send + 'static, C: Clock + Send + 'static> VtdSetup<R, C> {
    fn go_for_test(self: Box<Self>) -> Result<IommuDma<'static>, DmaError> {
        use crate::dma::iommu::DomainSetup;
        self.setup()
    }
}

#[test]
fn a_dynamic_domain_maps_each_buffer() {
    let fake = FakeVtd::qemu();
    let direct = direct();
    let vtd = vtd_on(&fake, direct);
    let dma = setup(
        vtd,
        0x0010,
        Target::Direct {
            ram: &[(0, 1 << 30)],
            direct,
        },
    )
    .unwrap();
    let info = dma.info();
    assert_eq!(
        (info.backend, info.mode, info.mapping, info.id),
        ("vt-d", "dynamic", "per-map", 1)
    );
    assert_eq!((info.window_base, info.window_size), (1 << 30, 256 << 20));
    assert_eq!(info.page_sizes, 0x4020_1000, "4 KiB, 2 MiB, 1 GiB (SLLPS)");
    let mut buf = vec![0u8; 10_000];
    let p = buf.as_mut_ptr() as u64;
    // SAFETY: unmapped below; the test touches the buffer only through the device.
    let m = unsafe {
        dma.map(
            NonNull::from(&mut buf[..]),
            Direction::FromDevice,
            &DmaConstraints::NONE,
        )
    }
    .unwrap();
    let iova = m.device_addr().as_u64();
    assert!((1u64 << 30..(1 << 30) + (256 << 20)).contains(&iova));
    assert_eq!(iova & 0xfff, p & 0xfff, "the offset in the page is kept");
    for off in [0u64, 4095, 9999] {
        assert_eq!(fake.translate(0x10, iova + off, true), Ok(p + off));
    }
    assert_eq!(
        fake.translate(0x10, iova, false),
        Err(6),
        "FromDevice: write-only"
    );
    assert_eq!(fake.translate(0x18, iova, true), Err(2), "another function");
    // A ring: read-write.
    let r = dma.alloc_shared(100, 4096, &DmaConstraints::NONE).unwrap();
    let ra = r.device_addr().as_u64();
    assert_eq!(
        fake.translate(0x10, ra, false),
        Ok(r.cpu_ptr().as_ptr() as u64)
    );
    assert!(fake.translate(0x10, ra, true).is_ok());
    // SAFETY: the "device" is done.
    unsafe { dma.unmap(m) }.unwrap();
    assert_eq!(fake.translate(0x10, iova, true), Err(7));
    // SAFETY: as above.
    unsafe { dma.free_shared(r) }.unwrap();
    let s = dma.iommu_stats();
    assert_eq!((s.maps, s.unmaps, s.pages), (2, 2, 0));
    let buf_pages = ((p & 0xfff) + 10_000).div_ceil(4096);
    assert_eq!(
        s.pages_peak,
        buf_pages + 1,
        "the buffer's pages and a ring page"
    );
    assert_eq!(dma.stats().iommu_pages_peak, buf_pages + 1);
    // One page-selective invalidation per unmap, nothing for the maps.
    assert_eq!(s.kinds[0].name, "IOTLB_PSI");
    assert_eq!(
        (s.kinds[0].calls, s.kinds[1].calls, s.kinds[2].calls),
        (2, 0, 0)
    );
    assert_eq!(s.calls, 2);
    // Teardown: the context entry goes, translation goes off, every table is given back.
    drop(dma);
    let mut v = vtd.lock();
    v.teardown().unwrap();
    assert!(!v.unit.translating());
    assert_eq!(
        v.freed_pages, 5,
        "root, context, and the domain's three levels"
    );
    let ds = direct.stats();
    assert_eq!(ds.shared_allocs, ds.shared_frees);
}

#[test]
fn two_functions_two_domains() {
    let fake = FakeVtd::qemu();
    let direct = direct();
    let vtd = vtd_on(&fake, direct);
    let t = || Target::Direct {
        ram: &[(0, 1 << 30)],
        direct,
    };
    let a = setup(vtd, 0x0010, t()).unwrap();
    let b = setup(vtd, 0x0018, t()).unwrap();
    assert_eq!((a.info().id, b.info().id), (1, 2));
    let mut buf = [7u8; 64];
    // SAFETY: unmapped below.
    let m = unsafe {
        a.map(
            NonNull::from(&mut buf[..]),
            Direction::ToDevice,
            &DmaConstraints::NONE,
        )
    }
    .unwrap();
    let iova = m.device_addr().as_u64();
    assert!(fake.translate(0x10, iova, false).is_ok());
    assert_eq!(
        fake.translate(0x18, iova, false),
        Err(7),
        "b's domain has no such mapping"
    );
    // SAFETY: done.
    unsafe { a.unmap(m) }.unwrap();
    // The same function twice is refused, and says why.
    assert_eq!(
        setup(vtd, 0x0010, t()).err(),
        Some(DmaError::Platform { code: -16 })
    );
}

#[test]
fn lazy_domain_sets_up_on_first_use_only() {
    let fake = FakeVtd::qemu();
    let direct = direct();
    let vtd = vtd_on(&fake, direct);
    let lazy = LazyDomain::new(
        "00:02.0".into(),
        Box::new(VtdSetup {
            vtd,
            sid: 0x0010,
            target: Target::Direct {
                ram: &[(0, 1 << 30)],
                direct,
            },
            rmrrs: vec![(0xe_0000, 0xf_ffff)],
            debug: Default::default(),
            map: None,
        }),
    );
    assert!(lazy.state().is_none());
    assert!(!vtd.lock().unit.is_attached(0x10));
    let d = lazy.get().unwrap();
    assert!(vtd.lock().unit.is_attached(0x10));
    // The RMRR is identity-mapped.
    assert_eq!(fake.translate(0x10, 0xe_1234, true), Ok(0xe_1234));
    assert_eq!(d.iommu_stats().maps, 1);
    assert!(lazy.get().is_ok());
    assert_eq!(vtd.lock().domains.len(), 1, "set up once");
}

#[test]
fn the_pool_behind_vtd() {
    let (bounce, phys) = crate::dma::testutil::leaked_pool();
    let fake = FakeVtd::qemu();
    // The unit's tables come from the pool too: the host walks them.
    let vtd = vtd_on(&fake, bounce);
    let dma = setup(
        vtd,
        0x0010,
        Target::Pool {
            bounce,
            phys,
            size: 1 << 20,
        },
    )
    .unwrap();
    assert_eq!(dma.name(), "iommu+bounce");
    assert_eq!(dma.info().mapping, "pool");
    let base = dma.info().window_base;
    assert_eq!(base, 1 << 30);
    // The whole pool is mapped once, read-write.
    assert_eq!(fake.translate(0x10, base + 0x1234, true), Ok(phys + 0x1234));
    assert_eq!(fake.translate(0x10, base + (1 << 20), true), Err(7));
    let mut buf = vec![0u8; 3000];
    // SAFETY: unmapped below; touched only through the device.
    let m = unsafe {
        dma.map(
            NonNull::from(&mut buf[..]),
            Direction::FromDevice,
            &DmaConstraints::NONE,
        )
    }
    .unwrap();
    let target = fake
        .translate(0x10, m.device_addr().as_u64(), true)
        .unwrap();
    for i in 0..3000u64 {
        // SAFETY: inside the pool slots of this mapping.
        unsafe { (target as *mut u8).add(i as usize).write_volatile(i as u8) };
    }
    // SAFETY: the "device" is done.
    unsafe { dma.unmap(m) }.unwrap();
    assert!(buf.iter().enumerate().all(|(i, &b)| b == i as u8));
    let s = dma.iommu_stats();
    assert_eq!(
        (s.maps, s.unmaps, s.calls),
        (1, 0, 0),
        "no IOMMU work per request"
    );
    drop(dma);
    vtd.lock().teardown().unwrap();
    assert_eq!(
        bounce.pool_stats().live_bytes,
        0,
        "every table page back in the pool"
    );
}

/// q35's RAM below 4 GiB with 512 MiB: the low 639 KiB, then from 1 MiB on.
const Q35_RAM: &[(u64, u64)] = &[(0, 0x9_fc00), (0x10_0000, 0x2000_0000)];

fn static_setup(
    vtd: Shared,
    ram: &'static [(u64, u64)],
    rmrrs: Vec<(u64, u64)>,
) -> Result<IommuDma<'static>, DmaError> {
    let direct = direct();
    Box::new(VtdSetup {
        vtd,
        sid: 0x0010,
        target: Target::Direct { ram, direct },
        rmrrs,
        map: Some(crate::dma::iommu::IommuMap::Static),
        debug: Default::default(),
    })
    .go_for_test()
}

/// The IOTLB and context commands the fake unit saw.
fn commands(fake: &FakeVtd) -> usize {
    fake.with(|s| s.log.iter().filter(|c| !matches!(c, Cmd::Gcmd(_))).count())
}

#[test]
fn a_static_domain_maps_all_ram_with_2m_pages() {
    let fake = FakeVtd::qemu();
    let vtd = vtd_on(&fake, direct());
    let dma = static_setup(vtd, Q35_RAM, Vec::new()).unwrap();
    let info = dma.info();
    assert_eq!(
        (info.backend, info.mode, info.mapping, info.mode_reason),
        ("vt-d", "static", "ram", "sg.iommu.map=static")
    );
    assert_eq!((info.window_base, info.window_size), (0, 0x2000_0000));
    {
        let v = vtd.lock();
        let t = &v.domains[0].table;
        // 2 MiB pages from 2 MiB on; 4 KiB pages below (0x1000..0x9f000, 1 MiB..2 MiB).
        assert_eq!(t.large_entries, 255, "(512 MiB - 2 MiB) / 2 MiB");
        assert_eq!(t.mapped_pages, 0x9e + 0x1ff00);
        assert_eq!(
            t.table_pages, 3,
            "the top level, one directory, one leaf table"
        );
    }
    for (iova, write) in [
        (0x1000, true),
        (0x9_e123, false),
        (0x10_0000, true),
        (0x1f_ffff, true),
        (0x20_0000, true),
        (0x1234_5678, false),
        (0x1fff_ffff, true),
    ] {
        assert_eq!(fake.translate(0x10, iova, write), Ok(iova), "{iova:#x}");
    }
    for iova in [0, 0x9_f000, 0xa_0000, 0xf_f000, 0x2000_0000] {
        assert_eq!(fake.translate(0x10, iova, false), Err(7), "{iova:#x}");
    }
    // The identity map cost no command (no caching mode); requests cost none either.
    let before = commands(&fake);
    let s = dma.iommu_stats();
    assert_eq!((s.maps, s.calls, s.pages), (2, 0, 0x9e + 0x1ff00));
    crate::dma::testutil::assert_maps_at_its_address(&dma, 10_000, Direction::FromDevice);
    let s = dma.iommu_stats();
    assert_eq!(
        (s.dma_maps, s.dma_unmaps, s.maps, s.unmaps, s.calls),
        (1, 1, 2, 0, 0)
    );
    assert_eq!(commands(&fake), before);
    // Teardown: the tables go with the domain.
    drop(dma);
    let mut v = vtd.lock();
    v.teardown().unwrap();
    assert_eq!(
        v.freed_pages, 5,
        "root, context, and the domain's three tables"
    );
}

#[test]
fn a_static_domain_without_sllps_uses_4k_pages() {
    let fake = FakeVtd::new(QEMU_CAP & !(3 << 34), QEMU_ECAP);
    let vtd = vtd_on(&fake, direct());
    let dma = static_setup(vtd, Q35_RAM, Vec::new()).unwrap();
    assert_eq!(dma.info().page_sizes, 0x1000);
    {
        let v = vtd.lock();
        let t = &v.domains[0].table;
        assert_eq!(t.large_entries, 0);
        assert_eq!(t.mapped_pages, 0x9e + 0x1ff00);
        assert_eq!(t.table_pages, 2 + 256, "a leaf table per 2 MiB of 512 MiB");
    }
    assert_eq!(fake.translate(0x10, 0x1234_5678, true), Ok(0x1234_5678));
    assert_eq!(fake.translate(0x10, 0x2000_0000, true), Err(7));
    drop(dma);
    vtd.lock().teardown().unwrap();
    assert_eq!(vtd.lock().freed_pages, 2 + 258);
}

#[test]
fn static_ram_that_does_not_fit_fails_before_anything_is_made() {
    let fake = FakeVtd::qemu();
    let vtd = vtd_on(&fake, direct());
    // RAM over the interrupt window.
    static OVER_MSI: &[(u64, u64)] = &[(0x10_0000, 0x1_0000_0000)];
    let e = static_setup(vtd, OVER_MSI, Vec::new()).unwrap_err();
    assert_eq!(
        e,
        DmaError::InvalidRequest(
            "sg.iommu.map=static: RAM overlaps the x86 interrupt window 0xfee00000-0xfeefffff"
        )
    );
    // RAM above what 3-level tables (39 bits) reach.
    static HIGH: &[(u64, u64)] = &[(0x10_0000, 0x2000_0000), (1 << 39, (1 << 39) + (1 << 30))];
    let e = static_setup(vtd, HIGH, Vec::new()).unwrap_err();
    assert_eq!(
        e,
        DmaError::InvalidRequest(crate::dma::iommu::STATIC_BEYOND_INPUT)
    );
    let v = vtd.lock();
    assert!(
        v.domains.is_empty() && !v.unit.is_attached(0x10),
        "nothing made"
    );
}

#[test]
fn rmrrs_beside_static_ram_stay_identity_mapped() {
    let fake = FakeVtd::qemu();
    let vtd = vtd_on(&fake, direct());
    // One RMRR outside RAM (mapped on its own), one inside (RAM maps it already).
    let rmrrs = vec![(0xe_0000, 0xf_ffff), (0x300_0000, 0x300_ffff)];
    let dma = static_setup(vtd, Q35_RAM, rmrrs).unwrap();
    assert_eq!(dma.iommu_stats().maps, 3, "two RAM runs and the first RMRR");
    assert_eq!(fake.translate(0x10, 0xe_1234, true), Ok(0xe_1234));
    assert_eq!(fake.translate(0x10, 0x300_1234, true), Ok(0x300_1234));
}

#[test]
fn two_megabyte_entries_unmap_whole() {
    let mut t = SlTable::new(direct(), 3, no_flush).unwrap();
    t.set_large_pages(true);
    // 4 KiB up to the 2 MiB boundary, then 2 MiB pages, then 4 KiB again.
    t.map(0x1f_e000, 0x1f_e000, 2 + 1024 + 3, PTE_R | PTE_W)
        .unwrap();
    assert_eq!((t.large_entries, t.mapped_pages), (2, 1029));
    assert!(
        t.map(0x30_0000, 0, 1, PTE_R).is_err(),
        "inside a 2 MiB page"
    );
    assert!(t.unmap(0x20_0000, 1).is_err(), "part of a 2 MiB page");
    assert!(t.unmap(0x20_0000, 513).is_err(), "part of the second one");
    t.unmap(0x20_0000, 512).unwrap();
    assert_eq!((t.large_entries, t.mapped_pages), (1, 517));
    // Mapped again where the 2 MiB page was: aligned, so a 2 MiB page again.
    t.map(0x20_0000, 0x4000_0000, 512, PTE_R).unwrap();
    assert_eq!(t.large_entries, 2);
    t.unmap(0x1f_e000, 1029).unwrap();
    assert_eq!((t.large_entries, t.mapped_pages), (0, 0));
    // Misaligned physical pages never make a 2 MiB entry.
    t.map(0x20_0000, 0x1000, 512, PTE_R).unwrap();
    assert_eq!((t.large_entries, t.mapped_pages), (0, 512));
    // A leaf table left at a 2 MiB slot takes the 512 entries instead.
    t.unmap(0x20_0000, 512).unwrap();
    t.map(0x20_0000, 0x20_0000, 512, PTE_R).unwrap();
    assert_eq!((t.large_entries, t.mapped_pages), (0, 512));
    // SAFETY: no unit ever saw this table.
    unsafe { t.free() };
}
