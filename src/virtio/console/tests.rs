//! The console driver against a fake virtio-console port 0.

use alloc::vec::Vec;
use core::any::Any;

use super::*;
use crate::dma::{Direct, Dma};
use crate::virtio::fakedev::{Bus, Core, Model, config_bytes};
use crate::virtio::features::{DeviceType, common, console as cf};

pub(crate) struct ConsoleModel {
    /// What the host sends, in chunks of at most `chunk` bytes.
    input: Vec<u8>,
    chunk: usize,
    /// The host sends nothing until the guest wrote its line.
    after_write: bool,
    output: Vec<u8>,
    tx_stuck: bool,
}

impl ConsoleModel {
    pub fn new(input: &[u8]) -> Self {
        ConsoleModel {
            input: input.to_vec(),
            chunk: usize::MAX,
            after_write: false,
            output: Vec::new(),
            tx_stuck: false,
        }
    }
}

impl Model for ConsoleModel {
    fn step(&mut self, core: &mut Core) {
        if !self.tx_stuck {
            for r in core.take_notified(TX_QUEUE) {
                self.output.extend(r.readable());
                core.complete(&r, 0);
            }
        }
        if self.after_write && self.output.is_empty() {
            return;
        }
        while !self.input.is_empty() {
            let Some(r) = core.take(RX_QUEUE) else { break };
            let n = r.writable_len().min(self.chunk).min(self.input.len());
            let data: Vec<u8> = self.input.drain(..n).collect();
            r.write_at(0, &data);
            core.complete(&r, n as u32);
        }
    }
    fn reset(&mut self) {}
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

fn bus(model: ConsoleModel, offered: u64) -> Bus {
    Bus::new(
        DeviceType::CONSOLE,
        offered,
        &[64, 64],
        config_bytes(12, &[]),
        model,
    )
}

fn settings() -> Settings {
    Settings {
        timeout_us: 10_000,
        ..Settings::default()
    }
}

fn run_on(bus: &Bus, limit: u32) -> DriverRun<ConsoleInfo> {
    let dma = Direct::new();
    let mut t = bus.transport();
    let clock = bus.clock();
    let r = run(&mut t, &DmaPaths::direct(&dma), &clock, &settings(), limit);
    assert_eq!(bus.core(|c| c.status), 0);
    let s = dma.stats();
    assert_eq!(s.maps, s.unmaps, "{s:?}");
    assert_eq!(s.shared_allocs, s.shared_frees, "{s:?}");
    r
}

#[test]
fn the_line_is_61_bytes_as_the_harness_expects() {
    let l = line();
    assert_eq!(l.len(), 61);
    assert!(l.starts_with(b"secure-guest virtio-console "));
    assert_eq!(l, harness::oracle::console_line());
}

#[test]
fn writes_the_line_and_reads_up_to_a_newline() {
    for packed in [false, true] {
        let b = bus(
            ConsoleModel::new(b"hello from the host\nand more"),
            cf::MULTIPORT | common::RING_PACKED,
        );
        let dma = Direct::new();
        let mut t = b.transport();
        let clock = b.clock();
        let s = Settings {
            packed,
            ..settings()
        };
        let r = run(&mut t, &DmaPaths::direct(&dma), &clock, &s, 64);
        assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
        assert_eq!(r.accepted & cf::MULTIPORT, 0, "port 0 only");
        let i = &r.specific;
        assert_eq!(i.written_bytes, 61);
        assert_eq!(i.written_crc32c, crc32c(&line()));
        assert_eq!(i.read, b"hello from the host\n");
        assert_eq!(i.read_text(), Some("hello from the host\n"));
        b.model(|m: &mut ConsoleModel| assert_eq!(m.output, line()));
        assert_eq!(r.counters.bytes_to_device, 61);
    }
}

#[test]
fn reads_in_pieces_up_to_the_limit() {
    let mut m = ConsoleModel::new(b"0123456789abcdefghij\n");
    m.chunk = 3;
    m.after_write = true;
    let b = bus(m, 0);
    let r = run_on(&b, 10);
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert_eq!(r.specific.read, b"0123456789");
    assert_eq!(r.specific.read_text(), Some("0123456789"));
}

#[test]
fn silence_ends_the_read_without_an_error() {
    let b = bus(ConsoleModel::new(b""), 0);
    let r = run_on(&b, 64);
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert!(r.specific.read.is_empty());
    assert_eq!(r.specific.read_text(), Some(""));
    // A partial line, then silence.
    let b = bus(ConsoleModel::new(b"abc"), 0);
    let r = run_on(&b, 64);
    assert_eq!(r.specific.read, b"abc");
}

#[test]
fn binary_input_has_no_text() {
    let b = bus(ConsoleModel::new(b"\x01\x02\xff\n"), 0);
    let r = run_on(&b, 64);
    assert_eq!(r.specific.read, b"\x01\x02\xff\n");
    assert_eq!(r.specific.read_text(), None);
}

#[test]
fn read_limit_zero_only_writes() {
    let b = bus(ConsoleModel::new(b"ignored\n"), 0);
    let r = run_on(&b, 0);
    assert_eq!(r.outcome, Outcome::Ok);
    assert!(r.specific.read.is_empty());
    assert_eq!(r.specific.written_bytes, 61);
}

#[test]
fn stuck_write_is_a_timeout() {
    let mut m = ConsoleModel::new(b"");
    m.tx_stuck = true;
    let b = bus(m, 0);
    let r = run_on(&b, 64);
    let Outcome::Error(e) = &r.outcome else {
        panic!("{r:?}")
    };
    assert!(
        e.contains("write of the 61-byte line: no completion, timeout after 10 ms"),
        "{e}"
    );
    assert_eq!(r.specific.written_bytes, 0);
}
