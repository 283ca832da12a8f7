//! The virtio-iommu driver against a fake IOMMU that behaves like QEMU's
//! (hw/virtio/virtio-iommu.c): domains created on ATTACH, MAP refused over an existing
//! mapping, UNMAP refused when it splits one, PROBE answering reserved regions, and fault
//! reports on the event queue.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::any::Any;

use super::*;
use crate::dma::Direct;
use crate::virtio::fakedev::{Bus, Core, Model, config_bytes};
use crate::virtio::features::DeviceType;

/// QEMU's MSI window on x86.
pub(crate) const MSI: (u64, u64) = (0xfee0_0000, 0xfeef_ffff);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FakeMapping {
    pub low: u64,
    pub high: u64,
    pub phys: u64,
    pub flags: u32,
}

/// A virtio-iommu that acts like QEMU's.
pub(crate) struct ViommuModel {
    /// Endpoints that exist (PCI functions behind the IOMMU).
    pub endpoints: Vec<u32>,
    /// endpoint -> domain
    pub attached: BTreeMap<u32, u32>,
    pub domains: BTreeMap<u32, Vec<FakeMapping>>,
    pub reserved: Vec<(u8, u64, u64)>,
    /// Every request seen: (type, readable bytes).
    pub seen: Vec<(u8, Vec<u8>)>,
    /// Faults to report once the driver posts event buffers.
    pub pending_faults: Vec<[u8; 24]>,
    /// Fault reports delivered.
    pub delivered: u32,
    /// Misbehaviour.
    pub mute: bool,
    pub short_tail: bool,
    pub force_status: Option<u8>,
}

impl ViommuModel {
    pub fn new(endpoints: &[u32]) -> Self {
        ViommuModel {
            endpoints: endpoints.to_vec(),
            attached: BTreeMap::new(),
            domains: BTreeMap::new(),
            reserved: vec![(RESV_MEM_T_MSI, MSI.0, MSI.1)],
            seen: Vec::new(),
            pending_faults: Vec::new(),
            delivered: 0,
            mute: false,
            short_tail: false,
            force_status: None,
        }
    }

    /// What a DMA by `endpoint` at `iova` reaches: `Ok(phys)`, or `Err(fault reason)` (and
    /// then a fault report is queued, as QEMU does). `bypass`: the config byte.
    pub fn translate(
        &mut self,
        endpoint: u32,
        iova: u64,
        write: bool,
        bypass: bool,
    ) -> Result<u64, u8> {
        let fault = |m: &mut Self, reason: u8| {
            let mut f = [0u8; 24];
            f[0] = reason;
            f[4..8].copy_from_slice(&(0x100u32 | if write { 2 } else { 1 }).to_le_bytes());
            f[8..12].copy_from_slice(&endpoint.to_le_bytes());
            f[16..24].copy_from_slice(&iova.to_le_bytes());
            m.pending_faults.push(f);
            Err(reason)
        };
        let Some(&domain) = self.attached.get(&endpoint) else {
            return if bypass { Ok(iova) } else { fault(self, 1) };
        };
        let hit = self.domains[&domain]
            .iter()
            .find(|m| (m.low..=m.high).contains(&iova))
            .copied();
        match hit {
            Some(m) if m.flags & if write { MAP_F_WRITE } else { MAP_F_READ } != 0 => {
                Ok(m.phys + (iova - m.low))
            }
            _ => fault(self, 2),
        }
    }

    fn handle(&mut self, r: &[u8], probe_size: usize, out: &mut Vec<u8>) -> u8 {
        let u32_at = |o: usize| u32::from_le_bytes(r[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(r[o..o + 8].try_into().unwrap());
        match r[0] {
            req::ATTACH if r.len() >= 20 => {
                let (domain, ep) = (u32_at(4), u32_at(8));
                if u32_at(12) != 0 {
                    return 4;
                }
                if !self.endpoints.contains(&ep) {
                    return 6;
                }
                self.attached.insert(ep, domain);
                self.domains.entry(domain).or_default();
                0
            }
            req::DETACH if r.len() >= 20 => {
                let (domain, ep) = (u32_at(4), u32_at(8));
                match self.attached.get(&ep) {
                    None => 6,
                    Some(&d) if d != domain => 4,
                    Some(_) => {
                        self.attached.remove(&ep);
                        0
                    }
                }
            }
            req::MAP if r.len() >= 36 => {
                let (domain, low, high, phys, flags) =
                    (u32_at(4), u64_at(8), u64_at(16), u64_at(24), u32_at(32));
                if flags & !7 != 0 {
                    return 4;
                }
                let Some(maps) = self.domains.get_mut(&domain) else {
                    return 6;
                };
                if maps.iter().any(|m| m.low <= high && low <= m.high) {
                    return 4;
                }
                maps.push(FakeMapping {
                    low,
                    high,
                    phys,
                    flags,
                });
                0
            }
            req::UNMAP if r.len() >= 28 => {
                let (domain, low, high) = (u32_at(4), u64_at(8), u64_at(16));
                let Some(maps) = self.domains.get_mut(&domain) else {
                    return 6;
                };
                if maps
                    .iter()
                    .any(|m| m.low <= high && low <= m.high && !(low <= m.low && m.high <= high))
                {
                    return 5;
                }
                maps.retain(|m| !(low <= m.low && m.high <= high));
                0
            }
            req::PROBE if r.len() >= 72 => {
                let ep = u32_at(4);
                if !self.endpoints.contains(&ep) {
                    return 6;
                }
                let mut props = Vec::new();
                for &(sub, start, end) in &self.reserved {
                    props.extend_from_slice(&1u16.to_le_bytes());
                    props.extend_from_slice(&20u16.to_le_bytes());
                    props.extend_from_slice(&[sub, 0, 0, 0]);
                    props.extend_from_slice(&start.to_le_bytes());
                    props.extend_from_slice(&end.to_le_bytes());
                }
                if props.len() > probe_size {
                    return 4;
                }
                props.resize(probe_size, 0);
                *out = props;
                0
            }
            _ => 2,
        }
    }
}

impl Model for ViommuModel {
    fn step(&mut self, core: &mut Core) {
        let probe_size = u32::from_le_bytes(core.config[32..36].try_into().unwrap()) as usize;
        for r in core.take_notified(0) {
            if self.mute {
                continue;
            }
            let bytes = r.readable();
            self.seen.push((bytes[0], bytes.clone()));
            let mut props = Vec::new();
            let status = self.handle(&bytes, probe_size, &mut props);
            let status = self.force_status.unwrap_or(status);
            if self.short_tail {
                core.complete(&r, 0);
                continue;
            }
            let written = if bytes[0] == req::PROBE {
                props.resize(probe_size, 0);
                props
            } else {
                Vec::new()
            };
            r.write_at(0, &written);
            r.write_at(written.len(), &[status, 0, 0, 0]);
            core.complete(&r, written.len() as u32 + 4);
        }
        while !self.pending_faults.is_empty() {
            let Some(e) = core.take(1) else { break };
            let f = self.pending_faults.remove(0);
            e.write_at(0, &f);
            core.complete(&e, 24);
            self.delivered += 1;
        }
    }
    fn reset(&mut self) {
        self.attached.clear();
        self.domains.clear();
    }
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

/// QEMU's config on x86: 4 KiB pages, every IOVA, every domain, probe_size 512, bypass 1.
pub(crate) fn qemu_config() -> Vec<u8> {
    config_bytes(
        40,
        &[
            (0, &0xffff_ffff_ffff_f000u64.to_le_bytes()),
            (16, &u64::MAX.to_le_bytes()),
            (28, &u32::MAX.to_le_bytes()),
            (32, &512u32.to_le_bytes()),
            (36, &[1]),
        ],
    )
}

/// QEMU's offer: INPUT_RANGE, DOMAIN_RANGE, MAP_UNMAP, PROBE, MMIO, BYPASS_CONFIG, and the ring
/// features.
pub(crate) const QEMU_FEATURES: u64 = 0x77 | common::RING_INDIRECT_DESC | common::RING_EVENT_IDX;

pub(crate) fn bus(config: Vec<u8>, offered: u64, model: ViommuModel) -> Bus {
    Bus::new(DeviceType::IOMMU, offered, &[256, 256], config, model)
}

pub(crate) fn settings() -> Settings {
    Settings {
        timeout_us: 10_000,
        ..Settings::default()
    }
}

type Driver<'d> =
    Viommu<'d, crate::virtio::fakedev::FakeTransport, crate::virtio::fakedev::StepClock>;

fn start(b: &Bus, dma: &'static Direct) -> Result<Driver<'static>, ViommuError> {
    Viommu::new(
        alloc::boxed::Box::new(b.transport()),
        b.clock(),
        &settings(),
        dma,
    )
    .map_err(|(_, e, _)| e)
}

fn direct() -> &'static Direct {
    alloc::boxed::Box::leak(alloc::boxed::Box::new(Direct::new()))
}

#[test]
fn init_negotiates_and_turns_bypass_off() {
    let b = bus(qemu_config(), QEMU_FEATURES, ViommuModel::new(&[0x10]));
    let v = start(&b, direct()).unwrap();
    let accepted = b.core(|c| c.accepted());
    assert_eq!(accepted & 0x7f, feature::WANTED, "MMIO is never accepted");
    assert_eq!(b.core(|c| c.config[36]), 0, "bypass written 0");
    assert_eq!((v.config.bypass_found, v.config.bypass), (1, 0));
    assert!(b.core(|c| c.driver_ok()));
    assert_eq!(v.granule, 12);
    assert_eq!(v.config.probe_size, 512);
    assert_eq!((v.config.input_start, v.config.input_end), (0, u64::MAX));
    v.shutdown().unwrap();
    assert_eq!(b.core(|c| c.status), 0);
}

#[test]
fn requests_are_encoded_as_the_spec_says() {
    let mut out = [0u8; 72];
    let n = Request::Map {
        domain: 7,
        virt_start: 0x4000_0000,
        virt_end: 0x4000_ffff,
        phys_start: 0x12_3000,
        flags: MAP_F_READ | MAP_F_WRITE,
    }
    .encode(&mut out);
    assert_eq!(n, 36);
    assert_eq!(out[0], 3);
    assert_eq!(&out[4..8], &7u32.to_le_bytes());
    assert_eq!(&out[8..16], &0x4000_0000u64.to_le_bytes());
    assert_eq!(&out[16..24], &0x4000_ffffu64.to_le_bytes());
    assert_eq!(&out[24..32], &0x12_3000u64.to_le_bytes());
    assert_eq!(&out[32..36], &3u32.to_le_bytes());
    assert!(out[36..].iter().all(|&b| b == 0));
    assert_eq!(
        Request::Attach {
            domain: 1,
            endpoint: 0x10
        }
        .encode(&mut out),
        20
    );
    assert_eq!(&out[..12], &[1, 0, 0, 0, 1, 0, 0, 0, 0x10, 0, 0, 0]);
    assert_eq!(
        Request::Unmap {
            domain: 1,
            virt_start: 0,
            virt_end: 0xfff
        }
        .encode(&mut out),
        28
    );
    assert_eq!(Request::Probe { endpoint: 9 }.encode(&mut out), 72);
    assert_eq!(&out[..8], &[5, 0, 0, 0, 9, 0, 0, 0]);
}

#[test]
fn attach_map_unmap_and_statuses() {
    let b = bus(qemu_config(), QEMU_FEATURES, ViommuModel::new(&[0x10]));
    let mut v = start(&b, direct()).unwrap();
    let d = v.new_domain().unwrap();
    v.request(&Request::Attach {
        domain: d,
        endpoint: 0x10,
    })
    .unwrap();
    let map = Request::Map {
        domain: d,
        virt_start: 0x4000_0000,
        virt_end: 0x4000_1fff,
        phys_start: 0x10_0000,
        flags: MAP_F_READ,
    };
    v.request(&map).unwrap();
    assert_eq!(
        b.model(|m: &mut ViommuModel| m.translate(0x10, 0x4000_1004, false, false)),
        Ok(0x10_1004)
    );
    // Mapping over it again: INVAL, named.
    let e = v.request(&map).unwrap_err();
    assert_eq!(
        e,
        ViommuError::Status {
            request: "MAP",
            status: Status(4)
        }
    );
    assert_eq!(e.to_string(), "MAP: status 4 (INVAL)");
    assert_eq!(DmaError::from(e), DmaError::Platform { code: 4 });
    // Unmapping half of it: RANGE.
    let e = v
        .request(&Request::Unmap {
            domain: d,
            virt_start: 0x4000_0000,
            virt_end: 0x4000_0fff,
        })
        .unwrap_err();
    assert_eq!(e.to_string(), "UNMAP: status 5 (RANGE)");
    v.request(&Request::Unmap {
        domain: d,
        virt_start: 0x4000_0000,
        virt_end: 0x4000_1fff,
    })
    .unwrap();
    assert!(b.model(|m: &mut ViommuModel| m.domains[&d].is_empty()));
    // An endpoint the IOMMU does not know: NOENT.
    let e = v
        .request(&Request::Attach {
            domain: d,
            endpoint: 0x99,
        })
        .unwrap_err();
    assert_eq!(e.to_string(), "ATTACH: status 6 (NOENT)");
    assert_eq!(v.counts.attach, 2);
    assert_eq!(v.counts.map, 2);
    assert_eq!(v.counts.unmap, 2);
    assert_eq!(v.counts.failed, 3);
    assert_eq!(v.last_error.map(|e| e.code()), Some(4));
    for s in 0..=9 {
        assert!(!Status(s).as_str().is_empty());
    }
    assert_eq!(Status(200).as_str(), "unknown status");
}

#[test]
fn probe_gives_reserved_regions() {
    let mut m = ViommuModel::new(&[0x10]);
    m.reserved.push((RESV_MEM_T_RESERVED, 0x1000, 0x1fff));
    let b = bus(qemu_config(), QEMU_FEATURES, m);
    let mut v = start(&b, direct()).unwrap();
    let r = v.probe(0x10).unwrap();
    assert_eq!(
        r,
        vec![
            ResvRegion {
                subtype: RESV_MEM_T_MSI,
                start: MSI.0,
                end: MSI.1
            },
            ResvRegion {
                subtype: RESV_MEM_T_RESERVED,
                start: 0x1000,
                end: 0x1fff
            }
        ]
    );
    assert_eq!(v.counts.probe, 1);
    // Without PROBE negotiated: no request, no regions.
    let b = bus(
        qemu_config(),
        QEMU_FEATURES & !feature::PROBE,
        ViommuModel::new(&[0x10]),
    );
    let mut v = start(&b, direct()).unwrap();
    assert!(v.probe(0x10).unwrap().is_empty());
    assert_eq!(v.counts.probe, 0);
}

#[test]
fn probe_properties_hostile() {
    let resv = |sub: u8, start: u64, end: u64, len: u16| {
        let mut p = Vec::new();
        p.extend_from_slice(&1u16.to_le_bytes());
        p.extend_from_slice(&len.to_le_bytes());
        p.extend_from_slice(&[sub, 0, 0, 0]);
        p.extend_from_slice(&start.to_le_bytes());
        p.extend_from_slice(&end.to_le_bytes());
        p
    };
    // An unknown property is skipped; NONE ends the list.
    let mut p = vec![0x34, 0x02, 4, 0, 1, 2, 3, 4];
    p.extend(resv(1, 0x10, 0x20, 20));
    p.extend_from_slice(&[0, 0, 0, 0]);
    p.extend(resv(0, 0x30, 0x40, 20));
    assert_eq!(parse_probe(&p).unwrap().len(), 1);
    // Running past the buffer.
    let p = resv(1, 0, 1, 20);
    assert!(parse_probe(&p[..20]).is_err());
    // Too short for a reserved region, or inverted.
    assert!(parse_probe(&resv(1, 0, 1, 8)[..12]).is_err());
    assert!(parse_probe(&resv(1, 0x20, 0x10, 20)).is_err());
    // A flood is capped.
    let flood: Vec<u8> = (0..100)
        .flat_map(|i| resv(0, i * 16, i * 16 + 15, 20))
        .collect();
    assert_eq!(parse_probe(&flood).unwrap().len(), RESV_KEPT);
    // Every truncation and every byte mutation of a real answer: no panic.
    let mut real = resv(1, MSI.0, MSI.1, 20);
    real.extend(resv(0, 0, 0xfff, 20));
    for n in 0..=real.len() {
        let _ = parse_probe(&real[..n]);
    }
    for i in 0..real.len() {
        for v in [0u8, 1, 0x7f, 0xff] {
            let mut m = real.clone();
            m[i] = v;
            let _ = parse_probe(&m);
        }
    }
}

#[test]
fn hostile_config_is_refused() {
    type Fields<'a> = &'a [(usize, &'a [u8])];
    let cases: &[(Fields, &str)] = &[
        (&[(0, &[0; 8])], "page_size_mask is 0"),
        (&[(16, &[0; 8])], "input_range holds less than one page"),
        (
            &[(8, &[0, 0x10, 0, 0, 0, 0, 0, 0]), (16, &[0; 8])],
            "input_range is empty",
        ),
        (
            &[(24, &[5, 0, 0, 0]), (28, &[4, 0, 0, 0])],
            "domain_range is empty",
        ),
    ];
    for &(fields, want) in cases {
        let mut config = qemu_config();
        for &(at, bytes) in fields {
            config[at..at + bytes.len()].copy_from_slice(bytes);
        }
        let b = bus(config, QEMU_FEATURES, ViommuModel::new(&[0x10]));
        let e = start(&b, direct()).err().expect("refused");
        let text = e.to_string();
        assert!(text.contains(want), "{text}");
        assert!(
            b.core(|c| c.status) & 0x80 != 0,
            "the device is failed: {text}"
        );
    }
    // A page size above 1 GiB.
    let mut config = qemu_config();
    config[0..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let b = bus(config, QEMU_FEATURES, ViommuModel::new(&[0x10]));
    assert!(start(&b, direct()).is_err());
    // Without INPUT_RANGE the defaults hold whatever the config bytes say.
    let mut config = qemu_config();
    config[16..24].copy_from_slice(&0u64.to_le_bytes());
    let b = bus(
        config,
        QEMU_FEATURES & !feature::INPUT_RANGE,
        ViommuModel::new(&[0x10]),
    );
    let v = start(&b, direct()).unwrap();
    assert_eq!(v.config.input_end, u64::MAX);
}

#[test]
fn no_map_unmap_no_iommu() {
    let b = bus(
        qemu_config(),
        QEMU_FEATURES & !feature::MAP_UNMAP,
        ViommuModel::new(&[0x10]),
    );
    let e = start(&b, direct()).err().unwrap();
    assert_eq!(e, ViommuError::NoMapUnmap);
}

/// A device that ignores writes to the bypass byte (it stays 1).
#[test]
fn bypass_that_does_not_turn_off_is_an_error() {
    let b = bus(qemu_config(), QEMU_FEATURES, ViommuModel::new(&[0x10]));
    b.core(|c| c.ignored_config_writes.push(36));
    let r = Viommu::new(
        alloc::boxed::Box::new(b.transport()),
        b.clock(),
        &settings(),
        direct(),
    );
    assert_eq!(r.err().map(|(_, e, _)| e), Some(ViommuError::BypassStuck));
}

#[test]
fn a_device_that_never_answers_times_out() {
    let mut m = ViommuModel::new(&[0x10]);
    m.mute = true;
    let b = bus(qemu_config(), QEMU_FEATURES, m);
    let mut v = start(&b, direct()).unwrap();
    let e = v
        .request(&Request::Attach {
            domain: 1,
            endpoint: 0x10,
        })
        .unwrap_err();
    assert!(
        matches!(e, ViommuError::Wait(WaitError::TimedOut { .. })),
        "{e}"
    );
    assert_eq!(e.code(), -2);
    // The request is still outstanding: the queue refuses nothing, but shutdown resets first.
    v.shutdown().unwrap();
}

#[test]
fn a_short_tail_is_an_error() {
    let mut m = ViommuModel::new(&[0x10]);
    m.short_tail = true;
    let b = bus(qemu_config(), QEMU_FEATURES, m);
    let mut v = start(&b, direct()).unwrap();
    let e = v.request(&Request::Probe { endpoint: 0x10 }).unwrap_err();
    assert_eq!(
        e,
        ViommuError::ShortWrite {
            request: "PROBE",
            written: 0,
            needed: 516
        }
    );
}

#[test]
fn faults_are_recorded_and_buffers_reposted() {
    let b = bus(qemu_config(), QEMU_FEATURES, ViommuModel::new(&[0x10]));
    let mut v = start(&b, direct()).unwrap();
    // An unattached endpoint with bypass off: a domain fault, reported.
    assert_eq!(
        b.model(|m: &mut ViommuModel| m.translate(0x10, 0x1234, true, false)),
        Err(1)
    );
    // The device delivers it at its next step (any look at the clock).
    v.request(&Request::Probe { endpoint: 0x10 }).unwrap();
    assert_eq!(v.counts.faults, 1);
    assert_eq!(
        v.faults[0],
        Fault {
            reason: 1,
            flags: 0x102,
            endpoint: 0x10,
            address: 0x1234
        }
    );
    assert_eq!(v.faults[0].reason_str(), "domain");
    // More faults than buffers: each is reposted, all are counted, the first few kept.
    for i in 0..40u64 {
        let _ = b.model(|m: &mut ViommuModel| m.translate(0x10, i << 12, false, false));
        v.request(&Request::Probe { endpoint: 0x10 }).unwrap();
    }
    assert_eq!(v.counts.faults, 41);
    assert_eq!(v.faults.len(), FAULTS_KEPT);
}

#[test]
fn domains_come_from_the_range() {
    let mut config = qemu_config();
    config[24..28].copy_from_slice(&(u32::MAX - 1).to_le_bytes());
    let b = bus(config, QEMU_FEATURES, ViommuModel::new(&[0x10]));
    let mut v = start(&b, direct()).unwrap();
    assert_eq!(v.new_domain(), Ok(u32::MAX - 1));
    assert_eq!(v.new_domain(), Ok(u32::MAX));
    assert_eq!(v.new_domain(), Err(ViommuError::NoDomain));
}
