//! The rng driver against a fake entropy device that gives short answers, or none.

use core::any::Any;

use super::*;
use crate::dma::Direct;
use crate::virtio::fakedev::{Bus, Core, Model};
use crate::virtio::features::DeviceType;

pub(crate) struct RngModel {
    /// The most bytes one request gets.
    pub per_request: usize,
    /// Stops answering after this many bytes.
    pub budget: usize,
    pub given: usize,
    /// Answers empty (0 bytes) instead of not at all once the budget is spent.
    pub empty_when_spent: bool,
}

impl Model for RngModel {
    fn step(&mut self, core: &mut Core) {
        for r in core.take_notified(0) {
            let n = r
                .writable_len()
                .min(self.per_request)
                .min(self.budget - self.given);
            if n == 0 && !self.empty_when_spent {
                continue;
            }
            let data: alloc::vec::Vec<u8> = (0..n).map(|i| (self.given + i) as u8 ^ 0x5a).collect();
            r.write_at(0, &data);
            self.given += n;
            core.complete(&r, n as u32);
        }
    }
    fn reset(&mut self) {}
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

fn run_model(m: RngModel, bytes: u32) -> DriverRun<RngInfo> {
    let b = Bus::new(DeviceType::RNG, 0, &[16], alloc::vec::Vec::new(), m);
    let dma = Direct::new();
    let mut t = b.transport();
    let clock = b.clock();
    let s = Settings {
        timeout_us: 10_000,
        ..Settings::default()
    };
    let r = run(&mut t, &DmaPaths::direct(&dma), &clock, &s, bytes);
    assert_eq!(b.core(|c| c.status), 0);
    r
}

#[test]
fn full_answer() {
    let r = run_model(
        RngModel {
            per_request: 4096,
            budget: 1 << 20,
            given: 0,
            empty_when_spent: false,
        },
        64,
    );
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert_eq!(r.specific.entropy_bytes, 64);
    assert_eq!(r.counters.requests, 1);
    assert_eq!(r.counters.bytes_from_device, 64);
    assert_eq!(r.queues.len(), 1);
}

#[test]
fn short_reads_are_asked_again() {
    let r = run_model(
        RngModel {
            per_request: 7,
            budget: 1 << 20,
            given: 0,
            empty_when_spent: false,
        },
        64,
    );
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert_eq!(r.specific.entropy_bytes, 64);
    assert_eq!(r.counters.requests, 10);
}

#[test]
fn large_reads_go_in_chunks() {
    let r = run_model(
        RngModel {
            per_request: usize::MAX,
            budget: 1 << 20,
            given: 0,
            empty_when_spent: false,
        },
        200_000,
    );
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert_eq!(r.specific.entropy_bytes, 200_000);
    assert_eq!(r.counters.requests, 4);
}

#[test]
fn a_device_that_runs_dry_times_out_with_the_count() {
    let r = run_model(
        RngModel {
            per_request: 16,
            budget: 40,
            given: 0,
            empty_when_spent: false,
        },
        64,
    );
    let Outcome::Error(e) = &r.outcome else {
        panic!("{r:?}")
    };
    assert!(
        e.contains("timeout after 10 ms: 40 of 64 entropy bytes arrived"),
        "{e}"
    );
    assert_eq!(r.specific.entropy_bytes, 40);
    let r = run_model(
        RngModel {
            per_request: 16,
            budget: 40,
            given: 0,
            empty_when_spent: true,
        },
        64,
    );
    let Outcome::Error(e) = &r.outcome else {
        panic!("{r:?}")
    };
    assert!(e.contains("40 of 64 entropy bytes arrived"), "{e}");
}

#[test]
fn zero_bytes_is_skipped() {
    let r = run_model(
        RngModel {
            per_request: 16,
            budget: 40,
            given: 0,
            empty_when_spent: false,
        },
        0,
    );
    assert_eq!(r.outcome, Outcome::Skipped);
}
