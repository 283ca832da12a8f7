//! virtio-pci against fake configuration spaces and fake BAR registers: QEMU's layout, then
//! hostile capability lists, BARs and structures.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::string::{String, ToString};
use std::vec::Vec;

use super::assign::{self, Allocator, Space, Window};
use super::caps::{self, RegionProblem};
use super::*;
use crate::dma::{DeviceAddr, Direct, DmaConstraints};
use crate::virtio::features::common as feat;
use crate::virtio::init as vinit;
use crate::virtio::transport::{DeviceStatus, LegacyLayout, QueueAddresses, TransportError};
use crate::virtio::wait::{Deadline, NoClock};

// ---------------------------------------------------------------------------------------------
// Fake configuration space.

#[derive(Clone)]
struct Function {
    cfg: [u8; 256],
    /// Per BAR register: the bits that stick when written (0: not implemented / read-only).
    bar_mask: [u32; 6],
    /// The register is the upper half of a 64-bit BAR.
    upper: [bool; 6],
    /// Every write: (offset, width, value, command register at the time).
    writes: Vec<(u16, usize, u32, u16)>,
}

impl Function {
    fn new(vendor: u16, device: u16, subsystem: u16) -> Self {
        let mut f = Function {
            cfg: [0; 256],
            bar_mask: [0; 6],
            upper: [false; 6],
            writes: Vec::new(),
        };
        f.put16(0, vendor);
        f.put16(2, device);
        f.put16(0x2c, vendor);
        f.put16(0x2e, subsystem);
        f.cfg[8] = if device >= 0x1040 { 1 } else { 0 };
        f
    }

    fn put8(&mut self, at: usize, v: u8) {
        self.cfg[at] = v;
    }
    fn put16(&mut self, at: usize, v: u16) {
        self.cfg[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn put32(&mut self, at: usize, v: u32) {
        self.cfg[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn get16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.cfg[at], self.cfg[at + 1]])
    }
    fn get32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.cfg[at..at + 4].try_into().unwrap())
    }

    /// An I/O BAR of `size` bytes at `addr`.
    fn io_bar(&mut self, i: usize, size: u32, addr: u32) {
        self.bar_mask[i] = !(size - 1);
        self.put32(0x10 + 4 * i, addr | 1);
    }
    fn mem32_bar(&mut self, i: usize, size: u32, addr: u32) {
        self.bar_mask[i] = !(size - 1);
        self.put32(0x10 + 4 * i, addr);
    }
    fn mem64_bar(&mut self, i: usize, size: u64, addr: u64, prefetch: bool) {
        let mask = !(size - 1);
        self.bar_mask[i] = mask as u32;
        self.bar_mask[i + 1] = (mask >> 32) as u32;
        self.upper[i + 1] = true;
        self.put32(0x10 + 4 * i, addr as u32 | 4 | if prefetch { 8 } else { 0 });
        self.put32(0x14 + 4 * i, (addr >> 32) as u32);
    }

    /// Appends a capability list: each entry (at, bytes), chained in order.
    fn caps(&mut self, caps: &[(u8, Vec<u8>)]) {
        self.put16(6, self.get16(6) | 0x10);
        self.put8(0x34, caps.first().map_or(0, |c| c.0));
        for (i, (at, bytes)) in caps.iter().enumerate() {
            let at = usize::from(*at);
            self.cfg[at..at + bytes.len()].copy_from_slice(bytes);
            self.cfg[at + 1] = caps.get(i + 1).map_or(0, |c| c.0);
        }
    }

    fn write(&mut self, off: u16, width: usize, value: u32) {
        let command = self.get16(4);
        self.writes.push((off, width, value, command));
        let o = usize::from(off);
        if (0x10..0x28).contains(&o) {
            assert_eq!(width, 4, "BARs are written as dwords");
            let i = (o - 0x10) / 4;
            let old = self.get32(o);
            let low_bits = if old & 1 == 1 { old & 3 } else { old & 0xf };
            // The upper half of a 64-bit BAR has no type bits.
            let is_upper = self.upper[i];
            let addr_bits = match (is_upper, old & 1) {
                (true, _) => u32::MAX,
                (false, 1) => !3,
                (false, _) => !0xf,
            };
            let keep = if is_upper { 0 } else { low_bits };
            self.put32(o, (value & self.bar_mask[i] & addr_bits) | keep);
            return;
        }
        for i in 0..width {
            self.cfg[o + i] = (value >> (8 * i)) as u8;
        }
    }
}

#[derive(Clone, Default)]
struct FakeConfig {
    functions: BTreeMap<PciAddress, Function>,
}

impl FakeConfig {
    fn one(at: PciAddress, f: Function) -> Self {
        let mut c = FakeConfig::default();
        c.functions.insert(at, f);
        c
    }
    fn f(&mut self, at: PciAddress) -> &mut Function {
        self.functions.get_mut(&at).unwrap()
    }
    fn read(&mut self, at: PciAddress, off: u16, width: usize) -> u32 {
        assert!(usize::from(off) + width <= 256 && usize::from(off) % width == 0);
        match self.functions.get(&at) {
            None => u32::MAX >> (32 - 8 * width),
            Some(f) => (0..width).fold(0, |acc, i| {
                acc | u32::from(f.cfg[usize::from(off) + i]) << (8 * i)
            }),
        }
    }
    fn write(&mut self, at: PciAddress, off: u16, width: usize, value: u32) {
        assert!(usize::from(off) + width <= 256 && usize::from(off) % width == 0);
        if let Some(f) = self.functions.get_mut(&at) {
            f.write(off, width, value);
        }
    }
}

impl PciConfigAccess for FakeConfig {
    fn read8(&mut self, at: PciAddress, offset: u16) -> u8 {
        self.read(at, offset, 1) as u8
    }
    fn read16(&mut self, at: PciAddress, offset: u16) -> u16 {
        self.read(at, offset, 2) as u16
    }
    fn read32(&mut self, at: PciAddress, offset: u16) -> u32 {
        self.read(at, offset, 4)
    }
    fn write8(&mut self, at: PciAddress, offset: u16, value: u8) {
        self.write(at, offset, 1, value.into())
    }
    fn write16(&mut self, at: PciAddress, offset: u16, value: u16) {
        self.write(at, offset, 2, value.into())
    }
    fn write32(&mut self, at: PciAddress, offset: u16, value: u32) {
        self.write(at, offset, 4, value)
    }
}

/// A virtio vendor capability.
fn vcap(cfg_type: u8, bar: u8, offset: u32, length: u32, multiplier: Option<u32>) -> Vec<u8> {
    let len = if multiplier.is_some() { 20 } else { 16 };
    let mut v = vec![0x09, 0, len, cfg_type, bar, 0, 0, 0];
    v.extend_from_slice(&offset.to_le_bytes());
    v.extend_from_slice(&length.to_le_bytes());
    if let Some(m) = multiplier {
        v.extend_from_slice(&m.to_le_bytes());
    }
    v
}

/// An MSI-X capability (enabled or not).
fn msix(enabled: bool) -> Vec<u8> {
    let control: u16 = 1 | if enabled { 0x8000 } else { 0 };
    let mut v = vec![0x11, 0];
    v.extend_from_slice(&control.to_le_bytes());
    v.extend_from_slice(&[0; 8]);
    v
}

const AT: PciAddress = PciAddress::new(0, 2, 0);

const COMMON_AT: u8 = 0x88;
const NOTIFY_AT: u8 = 0x54;

/// The capabilities QEMU gives a modern virtio device: MSI-X, then common, ISR, device,
/// notify (multiplier 4) and PCI_CFG, all in 64-bit BAR 4 of 16 KiB.
fn qemu_caps() -> Vec<(u8, Vec<u8>)> {
    vec![
        (0x98, msix(false)),
        (COMMON_AT, vcap(caps::COMMON_CFG, 4, 0x0000, 0x1000, None)),
        (0x78, vcap(caps::ISR_CFG, 4, 0x1000, 0x1000, None)),
        (0x68, vcap(caps::DEVICE_CFG, 4, 0x2000, 0x1000, None)),
        (
            NOTIFY_AT,
            vcap(caps::NOTIFY_CFG, 4, 0x3000, 0x1000, Some(4)),
        ),
        (0x40, vcap(caps::PCI_CFG, 0, 0, 0, Some(0))),
    ]
}

/// QEMU's virtio-rng-pci: transitional (I/O BAR 0 of 32 bytes, MSI-X BAR 1) unless
/// `modern_only`; modern capabilities unless `legacy_only`.
fn qemu_rng(modern_only: bool, legacy_only: bool) -> Function {
    let mut f = Function::new(0x1af4, if modern_only { 0x1044 } else { 0x1005 }, 4);
    if !modern_only {
        f.io_bar(0, 0x20, 0xc040);
    }
    f.mem32_bar(1, 0x1000, 0xfebd_1000);
    if !legacy_only {
        f.mem64_bar(4, 0x4000, 0xfe00_0000, true);
        f.caps(&qemu_caps());
    } else {
        f.caps(&[(0x98, msix(false))]);
    }
    f
}

// ---------------------------------------------------------------------------------------------
// Fake BAR registers: a modern device model and a legacy one, behind windows the mapper hands
// out.

#[derive(Default)]
struct ModernDevice {
    features: u64,
    dfselect: u32,
    gfselect: u32,
    driver_features: [u32; 2],
    status: u8,
    status_writes: Vec<u8>,
    generation: u8,
    queue_select: u16,
    queue_size: Vec<u16>,
    queue_enable: Vec<u16>,
    queue_notify_off: Vec<u16>,
    queue_addr: Vec<[u32; 6]>,
    notifies: Vec<(usize, u16)>,
    isr: u8,
    config: Vec<u8>,
}

impl ModernDevice {
    fn new(features: u64, queues: &[u16]) -> Self {
        ModernDevice {
            features,
            queue_size: queues.to_vec(),
            queue_enable: vec![0; queues.len()],
            queue_notify_off: (0..queues.len() as u16).collect(),
            queue_addr: vec![[0; 6]; queues.len()],
            config: (0..=255).collect(),
            ..Default::default()
        }
    }
    fn q(&self) -> Option<usize> {
        let q = usize::from(self.queue_select);
        (q < self.queue_size.len()).then_some(q)
    }

    /// An access at `off` in BAR 4 (QEMU's layout).
    fn access(&mut self, write: bool, off: usize, width: usize, v: u32) -> u32 {
        use super::modern::common as c;
        match off {
            0..0x1000 => {
                let q = self.q();
                if write {
                    match off {
                        c::DEVICE_FEATURE_SELECT => self.dfselect = v,
                        c::DRIVER_FEATURE_SELECT => self.gfselect = v,
                        c::DRIVER_FEATURE => {
                            if let Some(s) = self.driver_features.get_mut(self.gfselect as usize) {
                                *s = v;
                            }
                        }
                        c::DEVICE_STATUS => {
                            assert_eq!(width, 1);
                            self.status = v as u8;
                            self.status_writes.push(v as u8);
                            if v == 0 {
                                self.queue_enable.iter_mut().for_each(|e| *e = 0);
                            }
                        }
                        c::QUEUE_SELECT => self.queue_select = v as u16,
                        c::QUEUE_SIZE => q.into_iter().for_each(|q| self.queue_size[q] = v as u16),
                        c::QUEUE_ENABLE => {
                            q.into_iter().for_each(|q| self.queue_enable[q] = v as u16)
                        }
                        o @ c::QUEUE_DESC..=0x37 => {
                            assert_eq!(width, 4);
                            if let Some(q) = q {
                                self.queue_addr[q][(o - c::QUEUE_DESC) / 4] = v;
                            }
                        }
                        _ => {}
                    }
                    return 0;
                }
                match off {
                    c::DEVICE_FEATURE => match self.dfselect {
                        0 => self.features as u32,
                        1 => (self.features >> 32) as u32,
                        _ => 0,
                    },
                    c::NUM_QUEUES => self.queue_size.len() as u32,
                    c::DEVICE_STATUS => u32::from(self.status),
                    c::CONFIG_GENERATION => u32::from(self.generation),
                    c::QUEUE_SIZE => q.map_or(0, |q| u32::from(self.queue_size[q])),
                    c::QUEUE_ENABLE => q.map_or(0, |q| u32::from(self.queue_enable[q])),
                    c::QUEUE_NOTIFY_OFF => q.map_or(0, |q| u32::from(self.queue_notify_off[q])),
                    _ => 0,
                }
            }
            0x1000..0x2000 => {
                let v = u32::from(self.isr);
                if !write {
                    self.isr = 0;
                }
                v
            }
            0x2000..0x3000 => {
                let c = off - 0x2000;
                if write {
                    for i in 0..width {
                        self.config[c + i] = (v >> (8 * i)) as u8;
                    }
                    0
                } else {
                    (0..width).fold(0, |a, i| a | u32::from(self.config[c + i]) << (8 * i))
                }
            }
            _ => {
                assert!(write && width == 2, "notify area: 16-bit writes only");
                self.notifies.push((off - 0x3000, v as u16));
                0
            }
        }
    }
}

#[derive(Default)]
struct LegacyDevice {
    features: u32,
    guest_features: Option<u32>,
    pfn: Vec<u32>,
    num: Vec<u16>,
    sel: u16,
    notifies: Vec<u16>,
    status: u8,
    status_writes: Vec<u8>,
    isr: u8,
    config: Vec<u8>,
    config_widths: Vec<usize>,
}

impl LegacyDevice {
    fn access(&mut self, write: bool, off: usize, width: usize, v: u32) -> u32 {
        use super::legacy::reg as r;
        let q = usize::from(self.sel);
        let q = (q < self.num.len()).then_some(q);
        if off >= r::CONFIG {
            self.config_widths.push(width);
            let c = off - r::CONFIG;
            if write {
                for i in 0..width {
                    self.config[c + i] = (v >> (8 * i)) as u8;
                }
                return 0;
            }
            return (0..width).fold(0, |a, i| a | u32::from(self.config[c + i]) << (8 * i));
        }
        if write {
            match (off, width) {
                (r::GUEST_FEATURES, 4) => self.guest_features = Some(v),
                (r::QUEUE_PFN, 4) => q.into_iter().for_each(|q| self.pfn[q] = v),
                (r::QUEUE_SEL, 2) => self.sel = v as u16,
                (r::QUEUE_NOTIFY, 2) => self.notifies.push(v as u16),
                (r::STATUS, 1) => {
                    self.status = v as u8;
                    self.status_writes.push(v as u8);
                    if v == 0 {
                        self.pfn.iter_mut().for_each(|p| *p = 0);
                    }
                }
                _ => panic!("legacy write of {width} bytes at {off:#x}"),
            }
            return 0;
        }
        match (off, width) {
            (r::HOST_FEATURES, 4) => self.features,
            (r::QUEUE_PFN, 4) => q.map_or(0, |q| self.pfn[q]),
            (r::QUEUE_NUM, 2) => q.map_or(0, |q| u32::from(self.num[q])),
            (r::STATUS, 1) => u32::from(self.status),
            (r::ISR, 1) => std::mem::take(&mut self.isr).into(),
            _ => panic!("legacy read of {width} bytes at {off:#x}"),
        }
    }
}

enum Model {
    Modern(ModernDevice),
    Legacy(LegacyDevice),
}

/// A window over part of a BAR of the fake device.
struct Win {
    model: Rc<RefCell<Model>>,
    /// Offset of the window in its BAR.
    base: usize,
    len: usize,
}

impl Win {
    fn access(&mut self, write: bool, off: usize, width: usize, v: u32) -> u32 {
        if !crate::virtio::regs::in_window(off, width, self.len) {
            return if write {
                0
            } else {
                u32::MAX >> (32 - 8 * width)
            };
        }
        match &mut *self.model.borrow_mut() {
            Model::Modern(d) => d.access(write, self.base + off, width, v),
            Model::Legacy(d) => d.access(write, self.base + off, width, v),
        }
    }
}

impl Registers for Win {
    fn len(&self) -> usize {
        self.len
    }
    fn read8(&mut self, o: usize) -> u8 {
        self.access(false, o, 1, 0) as u8
    }
    fn read16(&mut self, o: usize) -> u16 {
        self.access(false, o, 2, 0) as u16
    }
    fn read32(&mut self, o: usize) -> u32 {
        self.access(false, o, 4, 0)
    }
    fn write8(&mut self, o: usize, v: u8) {
        self.access(true, o, 1, v.into());
    }
    fn write16(&mut self, o: usize, v: u16) {
        self.access(true, o, 2, v.into());
    }
    fn write32(&mut self, o: usize, v: u32) {
        self.access(true, o, 4, v);
    }
}

struct Mapper {
    model: Rc<RefCell<Model>>,
    maps: Vec<(u8, u64, u64)>,
    refuse: Option<&'static str>,
}

impl Mapper {
    fn new(model: Model) -> Self {
        Mapper {
            model: Rc::new(RefCell::new(model)),
            maps: Vec::new(),
            refuse: None,
        }
    }
    fn modern(&self) -> std::cell::RefMut<'_, ModernDevice> {
        std::cell::RefMut::map(self.model.borrow_mut(), |m| match m {
            Model::Modern(d) => d,
            Model::Legacy(_) => panic!("not modern"),
        })
    }
    fn legacy(&self) -> std::cell::RefMut<'_, LegacyDevice> {
        std::cell::RefMut::map(self.model.borrow_mut(), |m| match m {
            Model::Legacy(d) => d,
            Model::Modern(_) => panic!("not legacy"),
        })
    }
}

impl BarMapper for Mapper {
    type Regs = Win;
    fn map(&mut self, _at: PciAddress, bar: &Bar, offset: u64, len: u64) -> Result<Win, String> {
        if let Some(why) = self.refuse {
            return Err(why.to_string());
        }
        assert!(
            offset + len <= bar.size,
            "the core checks ranges before mapping"
        );
        self.maps.push((bar.index, offset, len));
        Ok(Win {
            model: self.model.clone(),
            base: offset as usize,
            len: len as usize,
        })
    }
}

fn deadline() -> Deadline<'static> {
    Deadline::new(&NoClock, u64::MAX, 1000)
}

fn probe_with(
    cfg: &mut FakeConfig,
    mapper: &mut Mapper,
    force_legacy: bool,
) -> Result<VirtioPci<Win>, ProbeError> {
    let options = ProbeOptions {
        pci_force_legacy: force_legacy,
    };
    probe(cfg, mapper, AT, &options)
}

fn modern_mapper(features: u64, queues: &[u16]) -> Mapper {
    Mapper::new(Model::Modern(ModernDevice::new(features, queues)))
}

fn legacy_mapper(features: u32, queues: &[u16]) -> Mapper {
    Mapper::new(Model::Legacy(LegacyDevice {
        features,
        pfn: vec![0; queues.len()],
        num: queues.to_vec(),
        config: (0..=255).collect(),
        ..Default::default()
    }))
}

// ---------------------------------------------------------------------------------------------
// Identity and BARs.

#[test]
fn identify_device_types() {
    let id = |device: u16, subsystem: u16| {
        let mut c = FakeConfig::one(AT, Function::new(0x1af4, device, subsystem));
        identify(&mut c, AT)
    };
    let rng = id(0x1044, 0).unwrap();
    assert_eq!(rng.device_type, DeviceType::RNG);
    assert!(!rng.transitional);
    let blk = id(0x1001, 2).unwrap();
    assert_eq!(blk.device_type, DeviceType::BLOCK);
    assert!(blk.transitional);
    assert_eq!(id(0x107f, 0).unwrap().device_type, DeviceType(0x3f));
    assert_eq!(
        id(0x1005, 0),
        Err(ProbeError::NoDeviceType {
            device_id: 0x1005,
            subsystem_id: 0
        })
    );
    assert!(matches!(
        id(0x1040, 9),
        Err(ProbeError::NoDeviceType { .. })
    ));
    assert!(matches!(id(0x1080, 1), Err(ProbeError::NotVirtio { .. })));
    assert!(matches!(id(0x0fff, 1), Err(ProbeError::NotVirtio { .. })));
    let mut c = FakeConfig::default();
    assert_eq!(
        identify(&mut c, AT),
        Err(ProbeError::NotVirtio {
            vendor_id: 0xffff,
            device_id: 0xffff
        })
    );
}

#[test]
fn bars_are_sized_with_decoding_off_and_restored() {
    let mut f = qemu_rng(false, false);
    f.put16(4, 0x0007);
    let mut c = FakeConfig::one(AT, f);
    let b = bars::read_bars(&mut c, AT).unwrap();
    assert_eq!(
        b[0],
        Some(Bar {
            index: 0,
            kind: BarKind::Io,
            prefetchable: false,
            addr: 0xc040,
            size: 0x20
        })
    );
    assert_eq!(
        b[1],
        Some(Bar {
            index: 1,
            kind: BarKind::Mem32,
            prefetchable: false,
            addr: 0xfebd_1000,
            size: 0x1000
        })
    );
    assert_eq!(b[2], None);
    assert_eq!(b[3], None);
    assert_eq!(
        b[4],
        Some(Bar {
            index: 4,
            kind: BarKind::Mem64,
            prefetchable: true,
            addr: 0xfe00_0000,
            size: 0x4000
        })
    );
    assert_eq!(b[5], None, "the upper half of BAR 4");
    let f = c.f(AT);
    assert_eq!(f.get16(4), 0x0007, "command restored");
    assert_eq!(f.get32(0x10), 0xc041, "BAR values restored");
    assert_eq!(f.get32(0x20), 0xfe00_000c);
    assert!(
        f.writes
            .iter()
            .filter(|w| (0x10..0x28).contains(&w.0))
            .all(|w| w.3 & 3 == 0),
        "no BAR write while decoding is on"
    );
}

#[test]
fn big_64_bit_bar_above_4g() {
    let mut f = Function::new(0x1af4, 0x1041, 0);
    f.mem64_bar(2, 1 << 33, 0x80_0000_0000, true);
    let mut c = FakeConfig::one(AT, f);
    let b = bars::read_bars(&mut c, AT).unwrap();
    let bar = b[2].unwrap();
    assert_eq!((bar.addr, bar.size), (0x80_0000_0000, 1 << 33));
}

#[test]
fn hostile_bars() {
    let mut f = Function::new(0x1af4, 0x1041, 0);
    f.bar_mask[5] = 0xffff_f000;
    f.put32(0x24, 4); // 64-bit in the last slot
    let mut c = FakeConfig::one(AT, f);
    assert_eq!(bars::read_bars(&mut c, AT), Err(BarError::Mem64InLastSlot));
    let mut f = Function::new(0x1af4, 0x1041, 0);
    f.bar_mask[1] = 0xffff_f000;
    f.put32(0x14, 6); // reserved type 3
    let mut c = FakeConfig::one(AT, f);
    assert_eq!(
        bars::read_bars(&mut c, AT),
        Err(BarError::ReservedType { index: 1, value: 6 })
    );
    assert_eq!(c.f(AT).get16(4), 0, "command restored after an error too");
}

// ---------------------------------------------------------------------------------------------
// Capabilities.

fn parse(f: Function) -> Result<Option<VirtioCaps>, CapError> {
    let mut c = FakeConfig::one(AT, f);
    let b = bars::read_bars(&mut c, AT).unwrap();
    let list = caps::walk(&mut c, AT)?;
    caps::virtio_caps(&mut c, AT, &list, &b)
}

fn with_caps(list: &[(u8, Vec<u8>)]) -> Function {
    let mut f = Function::new(0x1af4, 0x1041, 0);
    f.mem64_bar(4, 0x4000, 0xfe00_0000, true);
    f.caps(list);
    f
}

#[test]
fn qemu_capabilities() {
    let c = parse(qemu_rng(true, false)).unwrap().unwrap();
    assert_eq!(
        c.common,
        Region {
            bar: 4,
            offset: 0,
            length: 0x1000
        }
    );
    assert_eq!(
        c.isr,
        Region {
            bar: 4,
            offset: 0x1000,
            length: 0x1000
        }
    );
    assert_eq!(
        c.device,
        Some(Region {
            bar: 4,
            offset: 0x2000,
            length: 0x1000
        })
    );
    assert_eq!(
        c.notify,
        Region {
            bar: 4,
            offset: 0x3000,
            length: 0x1000
        }
    );
    assert_eq!(c.notify_multiplier, 4);
    assert_eq!(parse(qemu_rng(false, true)).unwrap(), None, "legacy only");
    assert_eq!(
        parse(Function::new(0x1af4, 0x1041, 0)).unwrap(),
        None,
        "no list at all"
    );
}

#[test]
fn capability_loops_are_caught() {
    // 0x40 -> 0x50 -> 0x40
    let mut f = with_caps(&[(0x40, msix(false)), (0x50, msix(false))]);
    f.cfg[0x51] = 0x40;
    assert_eq!(parse(f), Err(CapError::Loop { at: 0x40 }));
    // A capability pointing at itself.
    let mut f = with_caps(&[(0x40, msix(false))]);
    f.cfg[0x41] = 0x40;
    assert_eq!(parse(f), Err(CapError::Loop { at: 0x40 }));
    // The reserved low bits of a pointer are ignored, so 0x43 is 0x40 again.
    let mut f = with_caps(&[(0x40, msix(false))]);
    f.cfg[0x41] = 0x43;
    assert_eq!(parse(f), Err(CapError::Loop { at: 0x40 }));
}

#[test]
fn capability_pointers_into_the_header_are_refused() {
    let mut f = with_caps(&[(0x40, msix(false))]);
    f.cfg[0x41] = 0x10; // into the BARs
    assert_eq!(
        parse(f),
        Err(CapError::PointerIntoHeader {
            from: 0x41,
            ptr: 0x10
        })
    );
    let mut f = with_caps(&[]);
    f.cfg[0x34] = 0x3c;
    assert_eq!(
        parse(f),
        Err(CapError::PointerIntoHeader {
            from: 0x34,
            ptr: 0x3c
        })
    );
}

#[test]
fn the_longest_possible_list_is_walked() {
    // Every dword from 0x40 to 0xfc is a capability (48), in reverse order.
    let list: Vec<(u8, Vec<u8>)> = (0x40..=0xfcu8)
        .rev()
        .step_by(4)
        .map(|at| (at, vec![0x05, 0]))
        .collect();
    let f = with_caps(&list);
    let mut c = FakeConfig::one(AT, f);
    let walked = caps::walk(&mut c, AT).unwrap();
    assert_eq!(walked.len(), caps::MAX_CAPS);
    assert_eq!(walked[0].at, 0xfc);
}

#[test]
fn capabilities_beyond_config_space() {
    // A notify capability needs 20 bytes: at 0xf0 it would end at 0x104.
    let mut f = with_caps(&[(0x40, vcap(caps::COMMON_CFG, 4, 0, 0x1000, None))]);
    f.cfg[0x41] = 0xf0;
    f.cfg[0xf0..0xf4].copy_from_slice(&[0x09, 0, 20, caps::NOTIFY_CFG]);
    assert_eq!(
        parse(f),
        Err(CapError::BeyondConfigSpace { at: 0xf0, len: 20 })
    );
    // A 16-byte one fits exactly at 0xf0.
    let mut list = qemu_caps();
    list[2].0 = 0xf0;
    let f = with_caps(&list);
    assert_eq!(parse(f).unwrap().unwrap().isr.offset, 0x1000);
}

#[test]
fn short_capability() {
    let mut list = qemu_caps();
    list[4].1[2] = 16; // notify with cap_len 16: no multiplier
    assert_eq!(
        parse(with_caps(&list)),
        Err(CapError::ShortCapability {
            at: NOTIFY_AT,
            cfg_type: caps::NOTIFY_CFG,
            cap_len: 16
        })
    );
}

#[test]
fn bar_index_6_and_up_or_unimplemented() {
    for bar in [5u8, 6, 7, 0xff, 0] {
        let mut list = qemu_caps();
        list[1].1 = vcap(caps::COMMON_CFG, bar, 0, 0x1000, None);
        assert_eq!(
            parse(with_caps(&list)),
            Err(CapError::Unusable {
                cfg_type: caps::COMMON_CFG,
                at: COMMON_AT,
                why: RegionProblem::NoSuchBar { bar }
            }),
            "bar {bar}"
        );
    }
    // A usable common config later in the list is taken instead.
    let mut list = qemu_caps();
    list[1].1 = vcap(caps::COMMON_CFG, 9, 0, 0x1000, None);
    list.push((0xb0, vcap(caps::COMMON_CFG, 4, 0x0, 0x800, None)));
    let c = parse(with_caps(&list)).unwrap().unwrap();
    assert_eq!(
        c.common,
        Region {
            bar: 4,
            offset: 0,
            length: 0x800
        }
    );
}

#[test]
fn structures_beyond_their_bar() {
    for (offset, length) in [
        (0x3000u32, 0x1001u32),
        (0x4000, 2),
        (0xffff_fffe, 4),
        (0, u32::MAX),
    ] {
        let mut list = qemu_caps();
        list[4].1 = vcap(caps::NOTIFY_CFG, 4, offset, length, Some(4));
        assert_eq!(
            parse(with_caps(&list)),
            Err(CapError::Unusable {
                cfg_type: caps::NOTIFY_CFG,
                at: NOTIFY_AT,
                why: RegionProblem::BeyondBar {
                    bar: 4,
                    offset,
                    length,
                    bar_size: 0x4000
                }
            })
        );
    }
}

#[test]
fn misaligned_short_and_bad_multiplier() {
    let mut list = qemu_caps();
    list[1].1 = vcap(caps::COMMON_CFG, 4, 2, 0x100, None);
    assert!(matches!(
        parse(with_caps(&list)),
        Err(CapError::Unusable {
            why: RegionProblem::Misaligned {
                offset: 2,
                align: 4
            },
            ..
        })
    ));
    let mut list = qemu_caps();
    list[1].1 = vcap(caps::COMMON_CFG, 4, 0, 0x37, None);
    assert!(matches!(
        parse(with_caps(&list)),
        Err(CapError::Unusable {
            why: RegionProblem::TooShort { length: 0x37, .. },
            ..
        })
    ));
    for m in [1u32, 3, 6, 0x8000_0001] {
        let mut list = qemu_caps();
        list[4].1 = vcap(caps::NOTIFY_CFG, 4, 0x3000, 0x1000, Some(m));
        assert!(matches!(
            parse(with_caps(&list)),
            Err(CapError::Unusable {
                why: RegionProblem::BadMultiplier { .. },
                ..
            })
        ));
    }
    let mut list = qemu_caps();
    list[4].1 = vcap(caps::NOTIFY_CFG, 4, 0x3000, 2, Some(0));
    assert_eq!(
        parse(with_caps(&list)).unwrap().unwrap().notify_multiplier,
        0
    );
}

#[test]
fn missing_structures() {
    let mut list = qemu_caps();
    list.remove(2); // ISR
    assert_eq!(
        parse(with_caps(&list)),
        Err(CapError::Missing {
            cfg_type: caps::ISR_CFG
        })
    );
    let mut list = qemu_caps();
    list.remove(3); // device config is optional
    assert_eq!(parse(with_caps(&list)).unwrap().unwrap().device, None);
}

/// Random capability lists never panic, never loop and never access outside config space
/// (the fake config asserts that).
#[test]
fn random_capability_lists() {
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..3000 {
        let mut f = qemu_rng(next() % 2 == 0, false);
        for _ in 0..(next() % 12) {
            let at = 0x34 + (next() % (256 - 0x34)) as usize;
            f.cfg[at] = next() as u8;
        }
        if next() % 3 == 0 {
            f.put16(6, 0x10);
        }
        let mut c = FakeConfig::one(AT, f);
        let mut m = modern_mapper(feat::VERSION_1, &[8]);
        let _ = probe_with(&mut c, &mut m, next() % 4 == 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Choosing and setting up the interface.

#[test]
fn modern_device_gets_the_modern_interface() {
    let mut c = FakeConfig::one(AT, qemu_rng(true, false));
    let mut m = modern_mapper(feat::VERSION_1, &[8]);
    let t = probe_with(&mut c, &mut m, true).unwrap();
    assert!(
        matches!(t, VirtioPci::Modern(_)),
        "force-legacy does not apply to modern-only"
    );
    assert_eq!(
        c.f(AT).get16(4),
        cfg::COMMAND_MEMORY | cfg::COMMAND_BUS_MASTER
    );
    assert_eq!(
        m.maps,
        [
            (4, 0, 0x1000),
            (4, 0x3000, 0x1000),
            (4, 0x1000, 0x1000),
            (4, 0x2000, 0x1000)
        ]
    );
}

#[test]
fn transitional_device_prefers_modern_unless_forced() {
    let mut c = FakeConfig::one(AT, qemu_rng(false, false));
    let mut m = modern_mapper(feat::VERSION_1, &[8]);
    assert!(matches!(
        probe_with(&mut c, &mut m, false).unwrap(),
        VirtioPci::Modern(_)
    ));

    let mut c = FakeConfig::one(AT, qemu_rng(false, false));
    let mut m = legacy_mapper(0, &[8]);
    assert!(matches!(
        probe_with(&mut c, &mut m, true).unwrap(),
        VirtioPci::Legacy(_)
    ));
    assert_eq!(c.f(AT).get16(4), cfg::COMMAND_IO | cfg::COMMAND_BUS_MASTER);
    assert_eq!(m.maps, [(0, 0, 0x20)]);
}

#[test]
fn legacy_only_device_gets_the_legacy_interface() {
    let mut c = FakeConfig::one(AT, qemu_rng(false, true));
    let mut m = legacy_mapper(0, &[8]);
    let t = probe_with(&mut c, &mut m, false).unwrap();
    assert!(matches!(t, VirtioPci::Legacy(_)));
}

#[test]
fn legacy_turns_msix_off() {
    let mut f = qemu_rng(false, true);
    f.cfg[0x98 + 3] |= 0x80;
    let mut c = FakeConfig::one(AT, f);
    let mut m = legacy_mapper(0, &[8]);
    probe_with(&mut c, &mut m, false).unwrap();
    assert_eq!(c.f(AT).get16(0x9a) & 0x8000, 0);
}

#[test]
fn unusable_interfaces() {
    // Modern-only without capabilities.
    let mut f = qemu_rng(true, false);
    f.put16(6, 0);
    let mut c = FakeConfig::one(AT, f);
    let mut m = modern_mapper(0, &[]);
    assert_eq!(
        probe_with(&mut c, &mut m, false).err(),
        Some(ProbeError::NoModernInterface)
    );
    assert_eq!(c.f(AT).get16(4), 0, "nothing enabled");
    // Legacy needed, but BAR 0 is memory / too small / absent.
    for (setup, why) in [
        (0u8, "BAR 0 is a memory BAR, the legacy registers need I/O"),
        (1, "I/O BAR 0 is smaller than the legacy registers"),
        (2, "BAR 0 is not implemented"),
    ] {
        let mut f = qemu_rng(false, true);
        match setup {
            0 => f.mem32_bar(0, 0x1000, 0xfeb0_0000),
            1 => f.io_bar(0, 0x10, 0xc000),
            _ => {
                f.bar_mask[0] = 0;
                f.put32(0x10, 0);
            }
        }
        let mut c = FakeConfig::one(AT, f);
        let mut m = legacy_mapper(0, &[]);
        assert_eq!(
            probe_with(&mut c, &mut m, false).err(),
            Some(ProbeError::NoLegacyInterface { why })
        );
    }
    // Broken modern capabilities are an error even when legacy would be possible.
    let mut f = qemu_rng(false, false);
    f.cfg[usize::from(COMMON_AT) + 4] = 6;
    let mut c = FakeConfig::one(AT, f);
    let mut m = modern_mapper(0, &[]);
    assert!(matches!(
        probe_with(&mut c, &mut m, false),
        Err(ProbeError::Caps(_))
    ));
    // Not a type 0 header.
    let mut f = qemu_rng(true, false);
    f.cfg[0x0e] = 0x81;
    let mut c = FakeConfig::one(AT, f);
    assert_eq!(
        probe_with(&mut c, &mut m, false).err(),
        Some(ProbeError::HeaderType { header_type: 1 })
    );
    // The platform cannot reach the BAR.
    let mut c = FakeConfig::one(AT, qemu_rng(true, false));
    let mut m = modern_mapper(0, &[]);
    m.refuse = Some("above the mapped range");
    let e = probe_with(&mut c, &mut m, false).err().unwrap();
    assert_eq!(
        e.to_string(),
        "common config (BAR 4): above the mapped range"
    );
    assert_eq!(c.f(AT).get16(4), 0);
}

#[test]
fn modern_init_queue_and_notify() {
    let offered = feat::VERSION_1 | feat::ACCESS_PLATFORM | feat::RING_PACKED | (1 << 5);
    let mut c = FakeConfig::one(AT, qemu_rng(true, false));
    let mut m = modern_mapper(offered, &[256, 64]);
    let VirtioPci::Modern(mut t) = probe_with(&mut c, &mut m, false).unwrap() else {
        panic!("modern expected")
    };
    assert_eq!(t.name(), "virtio-pci-modern");
    assert_eq!(t.device_type(), DeviceType::RNG);
    assert_eq!(t.max_queue_size(2), 0, "beyond num_queues");
    let dma = Direct::new();
    let (n, queues) = vinit::init(&mut t, feat::CORE_SUPPORTED, &mut deadline(), |t, n| {
        let q0 = vinit::setup_queue(t, &dma, n, 0, 128, &DmaConstraints::NONE)?;
        let q1 = vinit::setup_queue(t, &dma, n, 1, 128, &DmaConstraints::NONE)?;
        Ok([q0, q1])
    })
    .unwrap();
    assert_eq!(n.offered, offered);
    assert_eq!(
        n.accepted,
        feat::VERSION_1 | feat::ACCESS_PLATFORM | feat::RING_PACKED
    );
    {
        let d = m.modern();
        assert_eq!(d.driver_features, [0, 0b111]);
        assert_eq!(d.status_writes, [0, 1, 3, 11, 15]);
        assert_eq!(d.queue_size, [128, 64]);
        assert_eq!(d.queue_enable, [1, 1]);
        for (q, queue) in queues.iter().enumerate() {
            let a = queue.addresses();
            let w = d.queue_addr[q];
            let join = |lo: u32, hi: u32| u64::from(lo) | u64::from(hi) << 32;
            assert_eq!(join(w[0], w[1]), a.desc.as_u64());
            assert_eq!(join(w[2], w[3]), a.driver.as_u64());
            assert_eq!(join(w[4], w[5]), a.device.as_u64());
        }
    }
    t.notify(1);
    t.notify(0);
    assert_eq!(
        m.modern().notifies,
        [(4, 1), (0, 0)],
        "notify_off * multiplier"
    );
    m.modern().isr = 1;
    assert!(t.ack_interrupt().used_buffer());
    assert_eq!(
        t.ack_interrupt(),
        crate::virtio::InterruptStatus(0),
        "read to clear"
    );
    assert_eq!(t.read_config_u32(4).unwrap(), 0x0706_0504);
    assert!(t.read_config_u8(0x1000).is_err());
    t.set_status(DeviceStatus::RESET);
    for q in queues {
        // SAFETY: the device was reset.
        unsafe { q.free() }.unwrap();
    }
}

#[test]
fn notify_offset_outside_the_notify_area_refuses_the_queue() {
    let mut c = FakeConfig::one(AT, qemu_rng(true, false));
    let mut m = modern_mapper(feat::VERSION_1, &[8]);
    m.modern().queue_notify_off[0] = 0x400; // * 4 = 0x1000: the area is 0x1000 long
    let VirtioPci::Modern(mut t) = probe_with(&mut c, &mut m, false).unwrap() else {
        panic!()
    };
    let a = QueueAddresses {
        size: 8,
        desc: DeviceAddr::new(0x1000),
        driver: DeviceAddr::new(0x2000),
        device: DeviceAddr::new(0x3000),
    };
    assert_eq!(
        t.set_queue_addresses(0, &a),
        Err(TransportError::ConfigOutOfRange {
            offset: 0x1000,
            width: 2
        })
    );
    t.notify(0);
    assert!(m.modern().notifies.is_empty(), "no write outside the area");
    m.modern().queue_notify_off[0] = 0x3ff;
    assert_eq!(t.set_queue_addresses(0, &a), Ok(()));
    t.notify(0);
    assert_eq!(m.modern().notifies, [(0xffc, 0)]);
}

#[test]
fn modern_without_device_config() {
    let mut list = qemu_caps();
    list.remove(3);
    let mut f = qemu_rng(true, false);
    f.caps(&list);
    let mut c = FakeConfig::one(AT, f);
    let mut m = modern_mapper(feat::VERSION_1, &[8]);
    let mut t = probe_with(&mut c, &mut m, false)
        .unwrap()
        .into_transport_for_test();
    assert_eq!(
        t.read_config_u8(0),
        Err(TransportError::ConfigOutOfRange {
            offset: 0,
            width: 1
        })
    );
}

#[test]
fn legacy_init_and_queue() {
    let mut c = FakeConfig::one(AT, qemu_rng(false, true));
    let mut m = legacy_mapper(0x1000_0020 | 1 << 30, &[256]);
    let VirtioPci::Legacy(mut t) = probe_with(&mut c, &mut m, false).unwrap() else {
        panic!()
    };
    assert!(t.is_legacy());
    assert!(t.queue_size_fixed());
    assert_eq!(t.name(), "virtio-pci-legacy");
    let layout = LegacyLayout::new(256);
    let base = 0x40_0000u64;
    let a = QueueAddresses {
        size: 256,
        desc: DeviceAddr::new(base),
        driver: DeviceAddr::new(base + layout.avail_offset as u64),
        device: DeviceAddr::new(base + layout.used_offset as u64),
    };
    let (n, ()) = vinit::init(&mut t, 0x1000_0020, &mut deadline(), |t, _| {
        assert_eq!(t.max_queue_size(0), 256);
        assert_eq!(
            t.set_queue_size(0, 128),
            Err(TransportError::QueueSizeFixed {
                queue: 0,
                size: 128
            })
        );
        assert!(!t.queue_in_use(0));
        t.set_queue_addresses(0, &a)?;
        t.enable_queue(0);
        Ok(())
    })
    .unwrap();
    assert_eq!(n.accepted, 0x1000_0020);
    {
        let d = m.legacy();
        assert_eq!(d.guest_features, Some(0x1000_0020));
        assert_eq!(d.status_writes, [0, 1, 3, 7]);
        assert_eq!(d.pfn, [0x400]);
    }
    assert!(t.queue_in_use(0));
    t.notify(0);
    assert_eq!(m.legacy().notifies, [0]);
    // Device config follows the registers: 0x20 - 0x14 = 12 bytes.
    assert_eq!(t.read_config_u8(0).unwrap(), 0);
    assert_eq!(t.read_config_u32(8).unwrap(), 0x0b0a_0908);
    assert!(t.read_config_u32(9).is_err());
    assert_eq!(t.read_config_u16(3).unwrap(), 0x0403);
    t.write_config_u16(4, 0xbeef).unwrap();
    assert_eq!(t.read_config_u16(4).unwrap(), 0xbeef);
    assert!(
        m.legacy().config_widths.iter().all(|&w| w == 1),
        "legacy config is bytewise"
    );
    assert_eq!(t.config_generation(), 0);
    m.legacy().isr = 3;
    assert_eq!(t.ack_interrupt(), crate::virtio::InterruptStatus(3));
}

impl VirtioPci<Win> {
    /// The tests' windows are not `Send`; this boxes without that bound.
    fn into_transport_for_test(self) -> Box<dyn Transport> {
        match self {
            VirtioPci::Modern(t) => Box::new(t),
            VirtioPci::Legacy(t) => Box::new(t),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Host bridge windows and BAR assignment (pseries under VOF).

/// `ranges` of QEMU's first pseries PHB (see src/devtree/testdata/pseries-vof.dtb).
const SPAPR_RANGES: [u32; 21] = [
    0x0100_0000,
    0,
    0,
    0x2000,
    0,
    0,
    0x1_0000, //
    0x0200_0000,
    0,
    0x8000_0000,
    0x2000,
    0x8000_0000,
    0,
    0x8000_0000, //
    0x0300_0000,
    0x2100,
    0,
    0x2100,
    0,
    0x100,
    0,
];

fn spapr_windows() -> Vec<Window> {
    let bytes: Vec<u8> = SPAPR_RANGES.iter().flat_map(|c| c.to_be_bytes()).collect();
    assign::parse_ranges(&bytes, 2, 2).unwrap()
}

#[test]
fn spapr_ranges() {
    let w = spapr_windows();
    assert_eq!(
        w,
        [
            Window {
                space: Space::Io,
                prefetchable: false,
                bus_base: 0,
                cpu_base: 0x2000_0000_0000,
                size: 0x1_0000
            },
            Window {
                space: Space::Mem32,
                prefetchable: false,
                bus_base: 0x8000_0000,
                cpu_base: 0x2000_8000_0000,
                size: 0x8000_0000
            },
            Window {
                space: Space::Mem64,
                prefetchable: false,
                bus_base: 0x2100_0000_0000,
                cpu_base: 0x2100_0000_0000,
                size: 0x100_0000_0000
            },
        ]
    );
    let bar = |kind, addr, size| Bar {
        index: 0,
        kind,
        prefetchable: false,
        addr,
        size,
    };
    assert_eq!(
        assign::bar_cpu_address(&w, &bar(BarKind::Io, 0x1000, 0x20)),
        Some(0x2000_0000_1000)
    );
    assert_eq!(
        assign::bar_cpu_address(&w, &bar(BarKind::Io, 0, 0x20)),
        None,
        "0 = unassigned"
    );
    assert_eq!(
        assign::bar_cpu_address(&w, &bar(BarKind::Mem32, 0x8000_1000, 0x1000)),
        Some(0x2000_8000_1000)
    );
    assert_eq!(
        assign::bar_cpu_address(&w, &bar(BarKind::Mem32, 0x7fff_f000, 0x2000)),
        None
    );
    assert_eq!(
        assign::bar_cpu_address(&w, &bar(BarKind::Mem64, 0xffff_c000, 0x4000)),
        Some(0x2000_ffff_c000),
        "a 64-bit BAR in the 32-bit window"
    );
    assert_eq!(
        assign::bar_cpu_address(&w, &bar(BarKind::Mem64, 0xffff_c000, 0x8000)),
        None
    );
    // Malformed ranges.
    assert!(assign::parse_ranges(&[0; 27], 2, 2).is_err());
    assert!(assign::parse_ranges(&[0; 28], 3, 2).is_err());
    let wrap: Vec<u8> = [0x0200_0000u32, 0, 0, 0xffff_ffff, 0xffff_0000, 0, 0x1_0000]
        .iter()
        .flat_map(|c| c.to_be_bytes())
        .collect();
    assert!(assign::parse_ranges(&wrap, 2, 2).is_err());
}

#[test]
fn allocator_aligns_and_bumps() {
    let w = spapr_windows();
    let mut a = Allocator::new(&w);
    let bar = |kind, size| Bar {
        index: 0,
        kind,
        prefetchable: false,
        addr: 0,
        size,
    };
    assert_eq!(
        a.alloc(&bar(BarKind::Io, 0x20)),
        Some(0x1000),
        "never below 0x1000 for I/O"
    );
    assert_eq!(a.alloc(&bar(BarKind::Io, 0x100)), Some(0x1100));
    assert_eq!(a.alloc(&bar(BarKind::Mem32, 0x1000)), Some(0x8000_0000));
    assert_eq!(a.alloc(&bar(BarKind::Mem32, 0x4000)), Some(0x8000_4000));
    assert_eq!(
        a.alloc(&bar(BarKind::Mem64, 0x4000)),
        Some(0x2100_0000_0000)
    );
    assert_eq!(a.alloc(&bar(BarKind::Mem32, 1 << 32)), None, "does not fit");
    assert_eq!(a.alloc(&bar(BarKind::Io, 0x1_0000)), None);
    a.reserve(0x8000_8000, 0x1000);
    assert_eq!(a.alloc(&bar(BarKind::Mem32, 0x100)), Some(0x8000_9000));
    // Without a 64-bit window, 64-bit BARs go below 4 GiB.
    let mut a = Allocator::new(&w[..2]);
    assert_eq!(a.alloc(&bar(BarKind::Mem64, 0x4000)), Some(0x8000_0000));
    // A 32-bit BAR never lands above 4 GiB even in a window that crosses it.
    let mut a = Allocator::new(&[Window {
        space: Space::Mem32,
        prefetchable: false,
        bus_base: 0xffff_f000,
        cpu_base: 0xffff_f000,
        size: 0x10_0000,
    }]);
    assert_eq!(a.alloc(&bar(BarKind::Mem32, 0x1000)), Some(0xffff_f000));
    assert_eq!(a.alloc(&bar(BarKind::Mem32, 0x1000)), None);
}

#[test]
fn assign_bars_like_vof_needs() {
    // Two functions with nothing assigned (VOF), one with a BAR firmware placed.
    let unassigned = || {
        let mut f = qemu_rng(false, false);
        f.put32(0x10, 1);
        f.put32(0x14, 0);
        f.put32(0x20, 0xc);
        f.put32(0x24, 0);
        f
    };
    let a0 = PciAddress::new(0, 0, 0);
    let a1 = PciAddress::new(0, 1, 0);
    let a2 = PciAddress::new(0, 2, 0);
    let mut c = FakeConfig::default();
    c.functions.insert(a0, unassigned());
    c.functions.insert(a1, unassigned());
    let mut placed = unassigned();
    placed.put32(0x14, 0x8000_0000);
    c.functions.insert(a2, placed);
    let w = spapr_windows();
    let out = assign::assign_bars(&mut c, &[a0, a1, a2], &w, &[(0x8000_1000, 0x1000)]);
    assert!(out.iter().all(|a| a.problems.is_empty()), "{out:?}");
    assert_eq!(
        out[0].programmed,
        [(0, 0x1000), (1, 0x8000_2000), (4, 0x2100_0000_0000)]
    );
    assert_eq!(
        out[1].programmed,
        [(0, 0x1020), (1, 0x8000_3000), (4, 0x2100_0000_4000)]
    );
    assert_eq!(
        out[2].programmed,
        [(0, 0x1040), (4, 0x2100_0000_8000)],
        "BAR 1 kept"
    );
    assert_eq!(out[2].bars[1].unwrap().addr, 0x8000_0000);
    assert_eq!(c.f(a0).get32(0x10), 0x1001);
    assert_eq!(c.f(a0).get32(0x20), 0x0000_000c);
    assert_eq!(c.f(a0).get32(0x24), 0x2100);
    assert_eq!(c.f(a1).get32(0x14), 0x8000_3000);
    // Reading the BARs back gives the same picture.
    assert_eq!(bars::read_bars(&mut c, a1).unwrap(), out[1].bars);
    // Nothing left for a huge BAR.
    let mut big = Function::new(0x1af4, 0x1041, 0);
    big.mem32_bar(0, 0x8000_0000, 0);
    let mut c = FakeConfig::one(a0, big);
    let out = assign::assign_bars(&mut c, &[a0], &w, &[(0x8000_0000, 0x10)]);
    assert_eq!(out[0].problems.len(), 1, "{out:?}");
    assert!(out[0].programmed.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Device-tree properties.

const VOF_DTB: &[u8] = include_bytes!("../../devtree/testdata/pseries-vof.dtb");

#[test]
fn properties_from_the_pseries_tree() {
    let phb = "/pci@800000020000000";
    let reg = fdt::property(VOF_DTB, phb, "reg").unwrap();
    assert_eq!(reg, [0x08, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let ranges = fdt::property(VOF_DTB, phb, "ranges").unwrap();
    assert_eq!(assign::parse_ranges(ranges, 2, 2).unwrap(), spapr_windows());
    assert_eq!(fdt::property_u32(VOF_DTB, "/", "#address-cells"), Some(2));
    assert_eq!(fdt::property_u32(VOF_DTB, phb, "#size-cells"), Some(2));
    let dev = "/pci@800000020000000/legacy-device@0";
    assert_eq!(fdt::property_u32(VOF_DTB, dev, "device-id"), Some(0x1005));
    assert_eq!(
        fdt::property(VOF_DTB, dev, "assigned-addresses"),
        None,
        "VOF assigns nothing"
    );
    assert!(fdt::node_properties(VOF_DTB, dev).unwrap().len() > 10);
    assert!(fdt::node_properties(VOF_DTB, "/pci@800000020000000/nothing").is_none());
    assert!(
        fdt::node_properties(VOF_DTB, "/legacy-device@0").is_none(),
        "not at the root"
    );
    assert!(fdt::property(VOF_DTB, "/", "nothing").is_none());
}

#[test]
fn mangled_trees_never_panic() {
    let phb = "/pci@800000020000000";
    for cut in (0..VOF_DTB.len()).step_by(97) {
        let _ = fdt::node_properties(&VOF_DTB[..cut], phb);
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..500 {
        let mut blob = VOF_DTB.to_vec();
        for _ in 0..8 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed % blob.len() as u64) as usize;
            blob[at] = (seed >> 32) as u8;
        }
        let _ = fdt::node_properties(&blob, phb);
        let _ = fdt::node_properties(&blob, "/");
    }
}
