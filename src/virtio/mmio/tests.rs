//! virtio-mmio against a fake register file that behaves like QEMU's device model (both
//! versions), and against hostile register values.

use std::cell::RefCell;
use std::rc::Rc;
use std::vec::Vec;

use super::*;
use crate::dma::{Direct, DmaConstraints};
use crate::virtio::features::common;
use crate::virtio::init::{self as vinit, InitError};
use crate::virtio::transport::read_config_u64;
use crate::virtio::wait::{Deadline, NoClock};

#[derive(Default)]
struct Device {
    magic: u32,
    version: u32,
    device_id: u32,
    features: u64,
    features_sel: u32,
    driver_features: [Option<u32>; 2],
    driver_features_sel: u32,
    page_size: u32,
    queue_sel: u32,
    queue_num_max: Vec<u32>,
    queue_num: Vec<u32>,
    queue_align: Vec<u32>,
    queue_pfn: Vec<u32>,
    queue_ready: Vec<u32>,
    queue_addr: Vec<[u32; 6]>,
    notified: Vec<u32>,
    interrupt_status: u32,
    acked: Vec<u32>,
    status: u32,
    status_writes: Vec<u32>,
    generation: u32,
    config: Vec<u8>,
    /// Every access: (write?, offset, width, value).
    log: Vec<(bool, usize, usize, u32)>,
}

impl Device {
    fn new(version: u32, device_id: u32, features: u64, queues: &[u32]) -> Self {
        Device {
            magic: MAGIC,
            version,
            device_id,
            features,
            queue_num_max: queues.to_vec(),
            queue_num: vec![0; queues.len()],
            queue_align: vec![0; queues.len()],
            queue_pfn: vec![0; queues.len()],
            queue_ready: vec![0; queues.len()],
            queue_addr: vec![[0; 6]; queues.len()],
            config: (0u8..=255).collect(),
            ..Default::default()
        }
    }

    fn q(&self) -> Option<usize> {
        let q = self.queue_sel as usize;
        (q < self.queue_num_max.len()).then_some(q)
    }

    fn read(&mut self, off: usize) -> u32 {
        let q = self.q();
        match off {
            reg::MAGIC => self.magic,
            reg::VERSION => self.version,
            reg::DEVICE_ID => self.device_id,
            reg::VENDOR_ID => 0x554d_4551,
            reg::DEVICE_FEATURES => match self.features_sel {
                0 => self.features as u32,
                1 => (self.features >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => q.map_or(0, |q| self.queue_num_max[q]),
            reg::QUEUE_PFN => q.map_or(0, |q| self.queue_pfn[q]),
            reg::QUEUE_READY => q.map_or(0, |q| self.queue_ready[q]),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.generation,
            _ => 0,
        }
    }

    fn write(&mut self, off: usize, v: u32) {
        let q = self.q();
        match off {
            reg::DEVICE_FEATURES_SEL => self.features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => {
                if let Some(slot) = self
                    .driver_features
                    .get_mut(self.driver_features_sel as usize)
                {
                    *slot = Some(v);
                }
            }
            reg::GUEST_PAGE_SIZE => self.page_size = v,
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM => q.into_iter().for_each(|q| self.queue_num[q] = v),
            reg::QUEUE_ALIGN => q.into_iter().for_each(|q| self.queue_align[q] = v),
            reg::QUEUE_PFN => q.into_iter().for_each(|q| self.queue_pfn[q] = v),
            reg::QUEUE_READY => q.into_iter().for_each(|q| self.queue_ready[q] = v),
            reg::QUEUE_NOTIFY => self.notified.push(v),
            reg::INTERRUPT_ACK => {
                self.acked.push(v);
                self.interrupt_status &= !v;
            }
            reg::STATUS => {
                self.status_writes.push(v);
                self.status = v;
                if v == 0 {
                    self.queue_pfn.iter_mut().for_each(|p| *p = 0);
                    self.queue_ready.iter_mut().for_each(|p| *p = 0);
                }
            }
            o if (reg::QUEUE_DESC_LOW..=reg::QUEUE_DEVICE_HIGH).contains(&o) => {
                let i = match o {
                    reg::QUEUE_DESC_LOW => 0,
                    reg::QUEUE_DESC_HIGH => 1,
                    reg::QUEUE_DRIVER_LOW => 2,
                    reg::QUEUE_DRIVER_HIGH => 3,
                    reg::QUEUE_DEVICE_LOW => 4,
                    reg::QUEUE_DEVICE_HIGH => 5,
                    _ => return,
                };
                if let Some(q) = q {
                    self.queue_addr[q][i] = v;
                }
            }
            _ => {}
        }
    }
}

/// The transport owns its registers; the test keeps a second handle to look at the device.
#[derive(Clone)]
struct FakeRegs {
    dev: Rc<RefCell<Device>>,
    len: usize,
}

impl FakeRegs {
    fn new(dev: Device) -> Self {
        FakeRegs {
            dev: Rc::new(RefCell::new(dev)),
            len: 0x200,
        }
    }

    fn dev(&self) -> std::cell::RefMut<'_, Device> {
        self.dev.borrow_mut()
    }

    fn access(&mut self, write: bool, off: usize, width: usize, value: u32) -> u32 {
        let mut d = self.dev.borrow_mut();
        d.log.push((write, off, width, value));
        assert!(
            in_window(off, width, self.len),
            "access outside the window at {off:#x}"
        );
        if off >= reg::CONFIG {
            let c = off - reg::CONFIG;
            if write {
                for i in 0..width {
                    d.config[c + i] = (value >> (8 * i)) as u8;
                }
                return 0;
            }
            return (0..width).fold(0, |acc, i| acc | u32::from(d.config[c + i]) << (8 * i));
        }
        assert_eq!(width, 4, "registers are 32 bits wide (offset {off:#x})");
        assert!(off.is_multiple_of(4));
        if write {
            d.write(off, value);
            0
        } else {
            d.read(off)
        }
    }
}

impl Registers for FakeRegs {
    fn len(&self) -> usize {
        self.len
    }
    fn read8(&mut self, offset: usize) -> u8 {
        self.access(false, offset, 1, 0) as u8
    }
    fn read16(&mut self, offset: usize) -> u16 {
        self.access(false, offset, 2, 0) as u16
    }
    fn read32(&mut self, offset: usize) -> u32 {
        self.access(false, offset, 4, 0)
    }
    fn write8(&mut self, offset: usize, value: u8) {
        self.access(true, offset, 1, value.into());
    }
    fn write16(&mut self, offset: usize, value: u16) {
        self.access(true, offset, 2, value.into());
    }
    fn write32(&mut self, offset: usize, value: u32) {
        self.access(true, offset, 4, value);
    }
}

fn probe(dev: Device) -> (Result<Option<VirtioMmio<FakeRegs>>, MmioError>, FakeRegs) {
    let regs = FakeRegs::new(dev);
    (VirtioMmio::probe(regs.clone()), regs)
}

fn deadline() -> Deadline<'static> {
    Deadline::new(&NoClock, u64::MAX, 1000)
}

#[test]
fn probe_checks_magic_version_and_device_id() {
    let (t, _) = probe(Device::new(2, 4, 0, &[]));
    let t = t.unwrap().unwrap();
    assert_eq!(t.name(), "virtio-mmio-v2");
    assert!(!t.is_legacy());
    assert_eq!(t.vendor_id(), 0x554d_4551);
    assert_eq!(t.config_len(), 0x100);
    let (t, _) = probe(Device::new(1, 2, 0, &[]));
    let mut t = t.unwrap().unwrap();
    assert_eq!(t.name(), "virtio-mmio-v1");
    assert!(t.is_legacy());
    assert_eq!(t.device_type(), DeviceType::BLOCK);

    for version in [0, 3, 0x100, u32::MAX] {
        let (t, _) = probe(Device::new(version, 4, 0, &[]));
        assert_eq!(t.err(), Some(MmioError::UnsupportedVersion { version }));
    }
    let mut d = Device::new(2, 4, 0, &[]);
    d.magic = 0x7472_6975;
    assert_eq!(
        probe(d).0.err(),
        Some(MmioError::BadMagic { value: 0x7472_6975 })
    );
    let mut d = Device::new(2, 4, 0, &[]);
    d.magic = u32::MAX; // nothing decodes the address
    assert_eq!(
        probe(d).0.err(),
        Some(MmioError::BadMagic { value: u32::MAX })
    );
}

#[test]
fn empty_slot_is_skipped_after_reading_only_the_id_registers() {
    let (t, regs) = probe(Device::new(2, 0, 0, &[]));
    assert!(matches!(t, Ok(None)));
    let d = regs.dev();
    assert!(
        d.log
            .iter()
            .all(|&(w, off, _, _)| !w && off <= reg::DEVICE_ID)
    );
}

#[test]
fn window_too_small() {
    let mut regs = FakeRegs::new(Device::new(2, 4, 0, &[]));
    regs.len = 0xfc;
    assert_eq!(
        VirtioMmio::probe(regs.clone()).err(),
        Some(MmioError::WindowTooSmall { len: 0xfc })
    );
    assert!(
        regs.dev().log.is_empty(),
        "nothing read from a window that small"
    );
}

#[test]
fn modern_init_and_queue_setup() {
    let offered = common::VERSION_1 | common::RING_EVENT_IDX | common::ACCESS_PLATFORM | 1;
    let (t, regs) = probe(Device::new(2, 4, offered, &[256]));
    let mut t = t.unwrap().unwrap();
    let dma = Direct::new();
    let (n, q) = vinit::init(&mut t, common::CORE_SUPPORTED, &mut deadline(), |t, n| {
        vinit::setup_queue(t, &dma, n, 0, 64, &DmaConstraints::NONE)
    })
    .unwrap();
    assert_eq!(n.offered, offered);
    assert_eq!(n.accepted, offered & !1);
    {
        let d = regs.dev();
        assert_eq!(
            d.driver_features,
            [Some(common::RING_EVENT_IDX as u32), Some(3)],
            "VERSION_1 and ACCESS_PLATFORM in the high word"
        );
        assert_eq!(d.status_writes, [0, 1, 3, 11, 15]);
        assert_eq!(d.queue_num[0], 64);
        assert_eq!(d.queue_ready[0], 1);
        let a = q.addresses();
        let w = d.queue_addr[0];
        let join = |lo: u32, hi: u32| u64::from(lo) | u64::from(hi) << 32;
        assert_eq!(join(w[0], w[1]), a.desc.as_u64());
        assert_eq!(join(w[2], w[3]), a.driver.as_u64());
        assert_eq!(join(w[4], w[5]), a.device.as_u64());
        assert_eq!(d.page_size, 0, "no legacy registers on a modern device");
        assert_eq!(d.queue_pfn[0], 0);
    }
    t.notify(0);
    assert_eq!(regs.dev().notified, [0]);
    // A reset makes the queue not live again; then it can be freed.
    t.set_status(DeviceStatus::RESET);
    assert!(!t.queue_in_use(0));
    // SAFETY: the device was reset, it no longer uses the queue.
    unsafe { q.free() }.unwrap();
}

#[test]
fn legacy_init_and_queue_setup() {
    let offered = common::VERSION_1 | common::RING_INDIRECT_DESC | 0x20;
    let (t, regs) = probe(Device::new(1, 1, offered, &[256]));
    let mut t = t.unwrap().unwrap();
    // Host heap addresses are above what a legacy PFN reaches, so the queue is placed by hand
    // (the rings' own legacy layout is tested in the core).
    let layout = LegacyLayout::new(128);
    let base = 0x1234_5000u64;
    let addresses = QueueAddresses {
        size: 128,
        desc: crate::dma::DeviceAddr::new(base),
        driver: crate::dma::DeviceAddr::new(base + layout.avail_offset as u64),
        device: crate::dma::DeviceAddr::new(base + layout.used_offset as u64),
    };
    let (n, ()) = vinit::init(&mut t, u64::MAX, &mut deadline(), |t, _| {
        assert_eq!(t.max_queue_size(0), 256);
        assert!(!t.queue_in_use(0));
        t.set_queue_size(0, 128)?;
        t.set_queue_addresses(0, &addresses)?;
        t.enable_queue(0);
        Ok(())
    })
    .unwrap();
    assert!(n.legacy);
    assert_eq!(n.offered, common::RING_INDIRECT_DESC | 0x20, "32 bits only");
    {
        let d = regs.dev();
        assert_eq!(d.driver_features, [Some(n.accepted as u32), None]);
        assert_eq!(d.status_writes, [0, 1, 3, 7], "no FEATURES_OK");
        assert_eq!(d.page_size, 4096);
        assert_eq!(d.queue_align[0], 4096);
        assert_eq!(d.queue_num[0], 128);
        assert_eq!(d.queue_pfn[0], 0x12345);
        assert_eq!(d.queue_ready[0], 0, "no QueueReady in version 1");
        assert!(
            d.log
                .iter()
                .all(|&(_, off, _, _)| off != reg::CONFIG_GENERATION)
        );
        assert!(
            d.log
                .iter()
                .all(|&(_, off, _, _)| off < reg::QUEUE_DESC_LOW)
        );
        // GuestPageSize is written before the PFN.
        let pos = |r| {
            d.log
                .iter()
                .position(|&(w, off, _, _)| w && off == r)
                .unwrap()
        };
        assert!(pos(reg::GUEST_PAGE_SIZE) < pos(reg::QUEUE_PFN));
    }
    assert!(t.queue_in_use(0), "a PFN makes a legacy queue live");
    assert_eq!(t.config_generation(), 0);
    t.set_status(DeviceStatus::RESET);
    assert!(!t.queue_in_use(0));
}

#[test]
fn legacy_rejects_a_layout_it_cannot_express() {
    let (t, _) = probe(Device::new(1, 1, 0, &[8]));
    let mut t = t.unwrap().unwrap();
    let bad = QueueAddresses {
        size: 8,
        desc: crate::dma::DeviceAddr::new(0x1000),
        driver: crate::dma::DeviceAddr::new(0x1080),
        device: crate::dma::DeviceAddr::new(0x3000),
    };
    assert!(matches!(
        t.set_queue_addresses(0, &bad),
        Err(TransportError::LegacyLayout { .. })
    ));
    let high = QueueAddresses {
        size: 8,
        desc: crate::dma::DeviceAddr::new(1 << 44),
        driver: crate::dma::DeviceAddr::new((1 << 44) + 128),
        device: crate::dma::DeviceAddr::new((1 << 44) + 4096),
    };
    assert!(matches!(
        t.set_queue_addresses(0, &high),
        Err(TransportError::AddressTooHigh { .. })
    ));
}

#[test]
fn hostile_queue_sizes() {
    let (t, _) = probe(Device::new(2, 4, common::VERSION_1, &[0x1_0000, 0, 100]));
    let mut t = t.unwrap().unwrap();
    assert_eq!(t.max_queue_size(0), u16::MAX, "saturated, not wrapped to 0");
    assert_eq!(t.max_queue_size(1), 0);
    assert_eq!(t.max_queue_size(7), 0, "a queue the device does not have");
    let dma = Direct::new();
    let e = vinit::init(&mut t, u64::MAX, &mut deadline(), |t, n| {
        vinit::setup_queue(t, &dma, n, 0, 64, &DmaConstraints::NONE).map(|_| ())
    })
    .unwrap_err();
    assert!(
        matches!(e, InitError::QueueSizeInvalid { queue: 0, .. }),
        "{e:?}"
    );
}

#[test]
fn config_space_is_bounded_by_the_window() {
    let (t, regs) = probe(Device::new(2, 1, common::VERSION_1, &[]));
    let mut t = t.unwrap().unwrap();
    assert_eq!(t.read_config_u8(0).unwrap(), 0);
    assert_eq!(t.read_config_u16(2).unwrap(), 0x0302);
    assert_eq!(t.read_config_u32(4).unwrap(), 0x0706_0504);
    assert_eq!(t.read_config_u32(0xfc).unwrap(), 0xfffe_fdfc);
    // Misaligned fields are read bytewise, never as a misaligned access.
    assert_eq!(t.read_config_u32(1).unwrap(), 0x0403_0201);
    assert_eq!(t.read_config_u16(0xfd).unwrap(), 0xfefd);
    assert!(regs.dev().log.iter().all(|&(_, off, w, _)| off % w == 0));
    assert_eq!(read_config_u64(&mut t, 8).unwrap(), 0x0f0e_0d0c_0b0a_0908);
    for (offset, width) in [(0xfd, 4), (0x100, 1), (usize::MAX, 2), (usize::MAX - 1, 4)] {
        let r = match width {
            1 => t.read_config_u8(offset).map(u32::from),
            2 => t.read_config_u16(offset).map(u32::from),
            _ => t.read_config_u32(offset),
        };
        assert_eq!(r, Err(TransportError::ConfigOutOfRange { offset, width }));
    }
    t.write_config_u16(0x10, 0xabcd).unwrap();
    t.write_config_u32(0x21, 0x1122_3344).unwrap();
    assert_eq!(t.read_config_u16(0x10).unwrap(), 0xabcd);
    assert_eq!(t.read_config_u32(0x21).unwrap(), 0x1122_3344);
    assert!(t.write_config_u8(0x100, 0).is_err());
}

#[test]
fn interrupts_are_acknowledged() {
    let (t, regs) = probe(Device::new(2, 1, 0, &[]));
    let mut t = t.unwrap().unwrap();
    assert_eq!(t.ack_interrupt(), InterruptStatus(0));
    regs.dev().interrupt_status = 3;
    let s = t.ack_interrupt();
    assert!(s.used_buffer() && s.config_change());
    assert_eq!(regs.dev().acked, [3]);
    assert_eq!(regs.dev().interrupt_status, 0);
}

#[test]
fn generation_is_read_on_modern_only() {
    let (t, regs) = probe(Device::new(2, 1, 0, &[]));
    let mut t = t.unwrap().unwrap();
    regs.dev().generation = 7;
    assert_eq!(t.config_generation(), 7);
}

#[test]
fn legacy_config_is_read_bytewise() {
    let (t, regs) = probe(Device::new(1, 1, 0, &[]));
    let mut t = t.unwrap().unwrap();
    regs.dev().log.clear();
    assert_eq!(t.read_config_u32(4).unwrap(), 0x0706_0504);
    assert_eq!(t.read_config_u16(2).unwrap(), 0x0302);
    t.write_config_u32(8, 0xaabb_ccdd).unwrap();
    assert_eq!(t.read_config_u32(8).unwrap(), 0xaabb_ccdd);
    let d = regs.dev();
    assert!(d.log.iter().all(|&(_, _, w, _)| w == 1), "{:?}", d.log);
    assert_eq!(d.log.len(), 4 + 2 + 4 + 4);
}
