//! The net driver against a fake device whose backend echoes frames as the harness does, or
//! corrupts, drops, duplicates or floods.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::any::Any;

use super::*;
use crate::dma::{Direct, Dma};
use crate::virtio::RingFormat;
use crate::virtio::fakedev::{Bus, Core, Model, config_bytes};
use crate::virtio::features::DeviceType;
use crate::virtio::ringside::LowDma;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    /// As the harness: MACs swapped, pattern inverted.
    Echo,
    /// Sends the frame back unchanged (not an echo by the contract).
    Mirror,
}

pub(crate) struct NetModel {
    backend: Backend,
    corrupt_seq: Option<u32>,
    drop_seq: Option<u32>,
    duplicate_seq: Option<u32>,
    /// Frames of another kind delivered before each echo.
    noise: usize,
    /// Transmit requests are never completed.
    tx_stuck: bool,
    /// Receive completions claim this many bytes (a lie below the header size).
    rx_len_override: Option<u32>,
    sent: Vec<Vec<u8>>,
    pending: VecDeque<Vec<u8>>,
}

impl NetModel {
    pub fn new() -> Self {
        NetModel {
            backend: Backend::Echo,
            corrupt_seq: None,
            drop_seq: None,
            duplicate_seq: None,
            noise: 0,
            tx_stuck: false,
            rx_len_override: None,
            sent: Vec::new(),
            pending: VecDeque::new(),
        }
    }
}

impl Model for NetModel {
    fn step(&mut self, core: &mut Core) {
        let hdr = if core.accepted() & common::VERSION_1 != 0 {
            12
        } else {
            10
        };
        if !self.tx_stuck {
            for r in core.take_notified(TX_QUEUE) {
                let bytes = r.readable();
                assert!(bytes[..hdr].iter().all(|&b| b == 0), "header not zeroed");
                let f = bytes[hdr..].to_vec();
                self.sent.push(f.clone());
                core.complete(&r, 0);
                let seq = u32::from_be_bytes([f[21], f[22], f[23], f[24]]);
                if self.drop_seq == Some(seq) {
                    continue;
                }
                let mut e = f.clone();
                if self.backend == Backend::Echo {
                    e[0..6].copy_from_slice(&f[6..12]);
                    e[6..12].copy_from_slice(&f[0..6]);
                    for b in &mut e[PATTERN_AT..] {
                        *b ^= 0xff;
                    }
                }
                if self.corrupt_seq == Some(seq) {
                    e[40] ^= 1;
                }
                for _ in 0..self.noise {
                    let mut n = vec![0u8; 60];
                    n[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
                    self.pending.push_back(n);
                }
                if self.duplicate_seq == Some(seq) {
                    self.pending.push_back(e.clone());
                }
                self.pending.push_back(e);
            }
        }
        while !self.pending.is_empty() {
            let Some(r) = core.take(RX_QUEUE) else { break };
            let f = self.pending.pop_front().unwrap();
            r.write_at(0, &vec![0u8; hdr]);
            r.write_at(hdr, &f);
            let len = self.rx_len_override.unwrap_or((hdr + f.len()) as u32);
            core.complete(&r, len);
        }
    }
    fn reset(&mut self) {
        self.pending.clear();
    }
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

fn bus(model: NetModel, offered: u64) -> Bus {
    Bus::new(
        DeviceType::NET,
        offered,
        &[256, 256],
        config_bytes(12, &[(0, &MAC)]),
        model,
    )
}

fn settings() -> Settings {
    Settings {
        timeout_us: 10_000,
        ..Settings::default()
    }
}

fn run_on(dma: &dyn Dma, bus: &Bus, settings: &Settings, frames: u32) -> DriverRun<NetInfo> {
    let mut t = bus.transport();
    let clock = bus.clock();
    let r = run(&mut t, &DmaPaths::direct(dma), &clock, settings, frames);
    assert_eq!(bus.core(|c| c.status), 0, "device left unreset");
    let s = dma.stats();
    assert_eq!(s.maps, s.unmaps, "{s:?}");
    assert_eq!(s.shared_allocs, s.shared_frees, "{s:?}");
    r
}

fn error_of(r: &DriverRun<NetInfo>) -> &str {
    match &r.outcome {
        Outcome::Error(e) => e,
        o => panic!("expected an error, got {o:?}: {r:?}"),
    }
}

#[test]
fn frame_layout_matches_the_contract() {
    let f = frame(&MAC, 3);
    assert_eq!(f.len(), 89);
    assert_eq!(&f[0..6], &[0xff; 6]);
    assert_eq!(&f[6..12], &MAC);
    assert_eq!(&f[12..14], &[0x88, 0xb5]);
    assert_eq!(&f[14..21], b"sg-echo");
    assert_eq!(&f[21..25], &[0, 0, 0, 3]);
    let mut p = [0u8; 64];
    pattern::fill(0x4e4554, 3 * 64, &mut p);
    assert_eq!(&f[25..], &p);
    let e = echo(&MAC, 3);
    assert_eq!(&e[0..6], &MAC);
    assert_eq!(&e[6..12], &[0xff; 6]);
    assert!(e[25..].iter().zip(&p).all(|(a, b)| *a == !*b));
    assert_eq!(mac_string(&MAC), "52:54:00:12:34:56");
    // The harness builds the same frame.
    assert_eq!(
        harness::echo::guest_frame(harness::devices::Mac(MAC), 3),
        f.to_vec()
    );
    assert_eq!(harness::echo::echo_frame(&f).unwrap(), e.to_vec());
}

#[test]
fn echoes_are_verified_in_every_ring_mode() {
    for packed in [false, true] {
        for indirect in [false, true] {
            for event_idx in [false, true] {
                let b = bus(
                    NetModel::new(),
                    f::MAC
                        | common::RING_PACKED
                        | common::RING_INDIRECT_DESC
                        | common::RING_EVENT_IDX,
                );
                let s = Settings {
                    packed,
                    indirect,
                    event_idx,
                    ..settings()
                };
                let r = run_on(&Direct::new(), &b, &s, 8);
                let what = format!("packed {packed} indirect {indirect} event_idx {event_idx}");
                assert_eq!(r.outcome, Outcome::Ok, "{what}: {r:?}");
                assert_eq!(r.specific.mac, Some(MAC));
                assert_eq!(
                    (
                        r.specific.frames_sent,
                        r.specific.frames_received,
                        r.specific.frames_verified
                    ),
                    (8, 8, 8)
                );
                assert_eq!(r.counters.bytes_to_device, 8 * 89);
                assert_eq!(r.counters.bytes_from_device, 8 * 89);
                assert_eq!(r.counters.requests, 16);
                assert_eq!(r.queues.len(), 2);
                let ring = if packed {
                    RingFormat::Packed
                } else {
                    RingFormat::Split
                };
                assert!(r.queues.iter().all(|q| q.ring == ring));
                b.model(|m: &mut NetModel| {
                    assert_eq!(m.sent.len(), 8);
                    for (i, f) in m.sent.iter().enumerate() {
                        assert_eq!(f[..], frame(&MAC, i as u32)[..], "{what}");
                    }
                });
            }
        }
    }
}

#[test]
fn many_frames_reuse_slots_and_noise_is_counted_not_verified() {
    let mut m = NetModel::new();
    m.noise = 1;
    let b = bus(m, f::MAC);
    let r = run_on(&Direct::new(), &b, &settings(), 300);
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert_eq!(r.specific.frames_sent, 300);
    assert_eq!(r.specific.frames_verified, 300);
    assert_eq!(r.specific.frames_received, 600);
}

#[test]
fn without_a_mac_the_local_one_is_used_and_legacy_has_a_10_byte_header() {
    let b = bus(NetModel::new(), 0).legacy();
    let r = run_on(&LowDma::new(), &b, &settings(), 4);
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert_eq!(r.specific.mac, Some(LOCAL_MAC));
    b.model(|m: &mut NetModel| assert_eq!(&m.sent[0][6..12], &LOCAL_MAC));
}

#[test]
fn corrupted_echo_is_not_verified() {
    let mut m = NetModel::new();
    m.corrupt_seq = Some(5);
    let b = bus(m, f::MAC);
    let r = run_on(&Direct::new(), &b, &settings(), 8);
    let e = error_of(&r);
    assert!(e.contains("timeout after 10 ms"), "{e}");
    assert!(e.contains("7 of 8 echoes verified (missing seq 5)"), "{e}");
    assert!(e.contains("the echo of seq 5 differs at byte 40"), "{e}");
    assert_eq!(r.specific.frames_received, 8);
    assert_eq!(r.specific.frames_verified, 7);
}

#[test]
fn missing_echo_is_a_timeout() {
    let mut m = NetModel::new();
    m.drop_seq = Some(0);
    let b = bus(m, f::MAC);
    let r = run_on(&Direct::new(), &b, &settings(), 3);
    let e = error_of(&r);
    assert!(e.contains("2 of 3 echoes verified (missing seq 0)"), "{e}");
    assert_eq!(r.specific.frames_sent, 3);
}

#[test]
fn a_mirror_is_no_echo() {
    let mut m = NetModel::new();
    m.backend = Backend::Mirror;
    let b = bus(m, f::MAC);
    let r = run_on(&Direct::new(), &b, &settings(), 2);
    let e = error_of(&r);
    assert!(e.contains("0 of 2 echoes verified"), "{e}");
    assert!(e.contains("differs at byte 0"), "{e}");
    assert_eq!(r.specific.frames_received, 2);
}

#[test]
fn duplicate_echo_is_counted_once() {
    let mut m = NetModel::new();
    m.duplicate_seq = Some(1);
    let b = bus(m, f::MAC);
    let r = run_on(&Direct::new(), &b, &settings(), 3);
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert_eq!(r.specific.frames_verified, 3);
    assert!(r.specific.frames_received >= 3);
}

#[test]
fn stuck_transmit_is_a_timeout() {
    let mut m = NetModel::new();
    m.tx_stuck = true;
    let b = bus(m, f::MAC);
    let r = run_on(&Direct::new(), &b, &settings(), 3);
    let e = error_of(&r);
    assert!(
        e.contains("0 of 3 frames transmitted (seq 0 was never completed)"),
        "{e}"
    );
}

#[test]
fn receive_shorter_than_the_header_is_an_error() {
    let mut m = NetModel::new();
    m.rx_len_override = Some(4);
    let b = bus(m, f::MAC);
    let r = run_on(&Direct::new(), &b, &settings(), 1);
    let e = error_of(&r);
    assert!(
        e.contains("4 bytes, less than the 12-byte virtio_net_hdr"),
        "{e}"
    );
}

#[test]
fn zero_frames_is_skipped() {
    let b = bus(NetModel::new(), f::MAC);
    let r = run_on(&Direct::new(), &b, &settings(), 0);
    assert_eq!(r.outcome, Outcome::Skipped);
    assert_eq!(r.queues.len(), 2);
}

#[test]
fn missing_transmit_queue_fails_init() {
    let b = Bus::new(
        DeviceType::NET,
        f::MAC,
        &[256],
        config_bytes(12, &[]),
        NetModel::new(),
    );
    let r = run_on(&Direct::new(), &b, &settings(), 1);
    let e = error_of(&r);
    assert!(e.contains("init: queue 1 does not exist"), "{e}");
}
