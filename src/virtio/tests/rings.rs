//! Both ring formats against the fake devices: the protocol as an honest device sees it.

use std::collections::HashMap;

use super::*;
use crate::virtio::queue::{AddError, Completion};
use crate::virtio::wait::{Clock, Deadline, NoClock, WaitError};

fn take_one(dev: &mut RingSide) -> DeviceRequest {
    dev.take().expect("the device should see a request")
}

#[test]
fn single_segment_requests_round_trip() {
    for format in FORMATS {
        let dma = Direct::new();
        let mut q = new_queue(&dma, format, config(8));
        let mut dev = RingSide::for_queue(&q);
        let bufs = Buffers::new(&dma, 64);
        bufs.region.write_bytes(0, b"hello");

        assert_eq!(q.pop_used(), Ok(None));
        let out = q.add(&[bufs.seg(0, 5, false)]).unwrap();
        assert!(q.should_notify());
        let req = take_one(&mut dev);
        assert!(dev.take().is_none());
        assert_eq!(req.id as usize, out.index());
        assert_eq!(req.segments, vec![bufs.seg(0, 5, false)]);
        assert_eq!(device_read(req.segments[0].addr, 5), b"hello");
        dev.complete(&req, 0);
        assert_eq!(
            q.pop_used(),
            Ok(Some(Completion {
                token: out,
                written_len: 0
            }))
        );
        assert_eq!(q.pop_used(), Ok(None));

        let input = q.add(&[bufs.seg(32, 16, true)]).unwrap();
        let req = take_one(&mut dev);
        device_write(req.segments[0].addr, b"world");
        dev.complete(&req, 5);
        assert_eq!(
            q.pop_used(),
            Ok(Some(Completion {
                token: input,
                written_len: 5
            }))
        );
        let mut got = [0u8; 5];
        bufs.region.read_bytes(32, &mut got);
        assert_eq!(&got, b"world");
        assert_eq!(q.outstanding_count(), 0);
        assert_eq!(q.free_descriptors(), 8);
        bufs.free(&dma);
        // SAFETY: the fake device is done with the queue.
        unsafe { q.free() }.unwrap();
        assert_eq!(
            dma.stats().shared_bytes,
            0,
            "{format:?}: everything given back"
        );
    }
}

#[test]
fn chained_request_uses_one_descriptor_per_segment() {
    for format in FORMATS {
        let dma = Direct::new();
        let mut q = new_queue(&dma, format, config(8));
        let mut dev = RingSide::for_queue(&q);
        let bufs = Buffers::new(&dma, 256);
        let segs = [
            bufs.seg(0, 16, false),
            bufs.seg(16, 100, false),
            bufs.seg(128, 1, true),
        ];
        let t = q.add(&segs).unwrap();
        assert_eq!(q.free_descriptors(), 5);
        let req = take_one(&mut dev);
        assert_eq!(req.segments, segs);
        assert!(!req.indirect);
        assert_eq!(req.descriptors, 3);
        dev.complete(&req, 1);
        assert_eq!(
            q.pop_used().unwrap().unwrap(),
            Completion {
                token: t,
                written_len: 1
            }
        );
        assert_eq!(q.free_descriptors(), 8);
        bufs.free(&dma);
    }
}

#[test]
fn indirect_request_takes_one_ring_descriptor() {
    for format in FORMATS {
        let dma = Direct::new();
        let mut q = new_queue(
            &dma,
            format,
            QueueConfig {
                indirect: true,
                ..config(4)
            },
        );
        let mut dev = RingSide::for_queue(&q);
        let bufs = Buffers::new(&dma, 256);
        let segs = [
            bufs.seg(0, 16, false),
            bufs.seg(16, 16, false),
            bufs.seg(32, 64, true),
            bufs.seg(96, 1, true),
        ];
        let allocs_before = dma.stats().shared_allocs;
        let t = q.add(&segs).unwrap();
        assert_eq!(
            dma.stats().shared_allocs,
            allocs_before + 1,
            "one indirect table"
        );
        assert_eq!(q.free_descriptors(), 3);
        // A single segment never needs a table.
        let single = q.add(&[bufs.seg(100, 4, false)]).unwrap();
        assert_eq!(dma.stats().shared_allocs, allocs_before + 1);
        let req = take_one(&mut dev);
        assert!(req.indirect);
        assert_eq!(req.descriptors, 1);
        assert_eq!(req.segments, segs);
        let req2 = take_one(&mut dev);
        assert!(!req2.indirect);
        dev.complete(&req, 65);
        dev.complete(&req2, 0);
        assert_eq!(
            q.pop_used().unwrap().unwrap(),
            Completion {
                token: t,
                written_len: 65
            }
        );
        assert_eq!(
            q.pop_used().unwrap().unwrap(),
            Completion {
                token: single,
                written_len: 0
            }
        );
        assert_eq!(
            dma.stats().shared_frees,
            1,
            "the table is freed at completion"
        );
        bufs.free(&dma);
    }
}

#[test]
fn many_in_flight_complete_out_of_order() {
    for format in FORMATS {
        let dma = Direct::new();
        let mut q = new_queue(&dma, format, config(8));
        let mut dev = RingSide::for_queue(&q);
        let bufs = Buffers::new(&dma, 1024);
        // Chains of 1, 2, 1, 3, 1 descriptors: 8 in all, the ring is full.
        let shapes: [&[u32]; 5] = [&[8], &[8, 8], &[8], &[8, 8, 8], &[8]];
        let mut tokens = Vec::new();
        let mut offset = 0;
        for shape in shapes {
            let segs: Vec<Segment> = shape
                .iter()
                .map(|&len| {
                    offset += 64;
                    bufs.seg(offset, len, true)
                })
                .collect();
            tokens.push(q.add(&segs).unwrap());
        }
        assert_eq!(q.free_descriptors(), 0);
        assert_eq!(q.outstanding_count(), 5);
        let mut outstanding = q.outstanding();
        outstanding.sort();
        let mut sorted = tokens.clone();
        sorted.sort();
        assert_eq!(outstanding, sorted);
        let reqs: Vec<DeviceRequest> = (0..5).map(|_| take_one(&mut dev)).collect();
        for (r, t) in reqs.iter().zip(&tokens) {
            assert_eq!(r.id as usize, t.index());
        }
        for &i in &[3usize, 0, 4, 1, 2] {
            dev.complete(&reqs[i], 8);
            let c = q.pop_used().unwrap().unwrap();
            assert_eq!(c.token, tokens[i]);
            assert_eq!(c.written_len, 8);
        }
        assert_eq!(q.pop_used(), Ok(None));
        assert_eq!(q.free_descriptors(), 8);
        bufs.free(&dma);
    }
}

#[test]
fn full_queue_pushes_back_instead_of_panicking() {
    for format in FORMATS {
        let dma = Direct::new();
        let mut q = new_queue(&dma, format, config(4));
        let mut dev = RingSide::for_queue(&q);
        let bufs = Buffers::new(&dma, 256);
        let t0 = q
            .add(&[bufs.seg(0, 8, false), bufs.seg(8, 8, false)])
            .unwrap();
        q.add(&[bufs.seg(16, 8, false)]).unwrap();
        let err = q
            .add(&[bufs.seg(24, 8, false), bufs.seg(32, 8, false)])
            .unwrap_err();
        assert_eq!(err, AddError::Full { needed: 2, free: 1 });
        assert!(err.is_transient());
        q.add(&[bufs.seg(40, 8, false)]).unwrap();
        assert_eq!(
            q.add(&[bufs.seg(48, 8, false)]),
            Err(AddError::Full { needed: 1, free: 0 })
        );
        // Completing the first request makes room for exactly its two descriptors.
        let r0 = take_one(&mut dev);
        dev.complete(&r0, 0);
        assert_eq!(q.pop_used().unwrap().unwrap().token, t0);
        q.add(&[bufs.seg(24, 8, false), bufs.seg(32, 8, false)])
            .unwrap();
        assert!(matches!(
            q.add(&[bufs.seg(0, 1, false)]),
            Err(AddError::Full { .. })
        ));
        bufs.free(&dma);
    }
}

#[test]
fn malformed_requests_are_refused() {
    for format in FORMATS {
        let dma = Direct::new();
        let mut q = new_queue(&dma, format, config(4));
        let bufs = Buffers::new(&dma, 64);
        assert_eq!(q.add(&[]), Err(AddError::Empty));
        assert_eq!(
            q.add(&[bufs.seg(0, 8, false), bufs.seg(8, 0, true)]),
            Err(AddError::ZeroLength { index: 1 })
        );
        assert_eq!(
            q.add(&[bufs.seg(0, 8, true), bufs.seg(8, 8, false)]),
            Err(AddError::ReadableAfterWritable { index: 1 })
        );
        let five = [bufs.seg(0, 1, false); 5];
        assert_eq!(
            q.add(&five),
            Err(AddError::TooManySegments { count: 5, max: 4 })
        );
        assert_eq!(q.outstanding_count(), 0);
        assert_eq!(q.free_descriptors(), 4);
        assert!(!q.should_notify(), "nothing was added");
        bufs.free(&dma);
    }
}

#[test]
fn indirect_table_failure_falls_back_to_a_chain_or_says_so() {
    for format in FORMATS {
        let dma = LowDma::new();
        let mut q = new_queue(
            &dma,
            format,
            QueueConfig {
                indirect: true,
                ..config(4)
            },
        );
        let mut dev = RingSide::for_queue(&q);
        let bufs = Buffers::new(&dma, 64);
        dma.refuse_shared(true);
        let segs = [
            bufs.seg(0, 8, false),
            bufs.seg(8, 8, false),
            bufs.seg(16, 8, true),
        ];
        q.add(&segs).unwrap();
        let req = take_one(&mut dev);
        assert!(!req.indirect, "no table could be had: a plain chain");
        assert_eq!(req.descriptors, 3);
        let err = q.add(&segs).unwrap_err();
        assert_eq!(err, AddError::Dma(DmaError::Exhausted { requested: 48 }));
        assert!(err.is_transient());
        dma.refuse_shared(false);
        q.add(&segs).unwrap();
        let req = take_one(&mut dev);
        assert!(req.indirect);
        bufs.free(&dma);
    }
}

/// Adds batches of random requests, lets the device complete them in random order with random
/// lengths, and checks everything the driver gets back. `event_idx` also checks the notification
/// decisions against a device that publishes its event index after every take.
fn run_random_traffic(format: RingFormat, cfg: QueueConfig, requests: usize, seed: u64) {
    run_random_traffic_with(&Direct::new(), format, cfg, requests, seed);
}

fn run_random_traffic_with(
    dma: &dyn Dma,
    format: RingFormat,
    cfg: QueueConfig,
    requests: usize,
    seed: u64,
) {
    let mut q = new_queue(dma, format, cfg);
    let mut dev = RingSide::for_queue(&q);
    let bufs = Buffers::new(dma, 4096);
    let mut rng = XorShift::new(seed);
    let mut expected: HashMap<u16, (Vec<Segment>, u32)> = HashMap::new();
    let mut done = 0;
    let mut pending: Vec<DeviceRequest> = Vec::new();
    let mut device_saw_everything = true;
    while done < requests {
        // A batch of adds.
        let batch = 1 + rng.below(u64::from(cfg.size));
        let mut added = 0;
        for _ in 0..batch {
            let count = 1 + rng.below(3.min(u64::from(cfg.size))) as usize;
            let writable_from = rng.below(count as u64 + 1) as usize;
            let segs: Vec<Segment> = (0..count)
                .map(|i| {
                    let off = rng.below(4000) as usize;
                    bufs.seg(off, 1 + rng.below(90) as u32, i >= writable_from)
                })
                .collect();
            match q.add(&segs) {
                Ok(t) => {
                    let cap = segs
                        .iter()
                        .filter(|s| s.device_writable)
                        .map(|s| s.len)
                        .sum();
                    assert!(expected.insert(t.0, (segs, cap)).is_none(), "token reused");
                    added += 1;
                }
                Err(AddError::Full { .. }) => break,
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        if cfg.event_idx && added > 0 {
            // The device's event index sits at the first request of this batch exactly when it
            // had taken everything before: then a notification is due, otherwise it is not.
            assert_eq!(
                q.should_notify(),
                device_saw_everything,
                "after {done} requests"
            );
        } else if added > 0 {
            assert!(q.should_notify());
        }
        // The device takes some or all of what is available.
        while !rng.chance(4) {
            let Some(req) = dev.take() else { break };
            let (segs, _) = &expected[&req.id];
            assert_eq!(&req.segments, segs);
            pending.push(req);
        }
        device_saw_everything = !dev.has_available();
        // ...and completes a random subset in random order.
        let complete = rng.below(pending.len() as u64 + 1) as usize;
        for _ in 0..complete {
            let req = pending.swap_remove(rng.below(pending.len() as u64) as usize);
            let cap = req.writable_len() as u64;
            let written = rng.below(cap + 1) as u32;
            dev.complete(&req, written);
            let c = q.pop_used().unwrap().expect("a completion");
            assert_eq!(c.token.0, req.id);
            assert_eq!(c.written_len, written);
            expected.remove(&req.id).unwrap();
            done += 1;
        }
        assert_eq!(q.pop_used(), Ok(None));
        assert_eq!(usize::from(q.outstanding_count()), expected.len());
    }
    bufs.free(dma);
    // SAFETY: the fake device is done with the queue.
    unsafe { q.free() }.unwrap();
    assert_eq!(
        dma.stats().shared_bytes,
        0,
        "every table and ring given back"
    );
}

/// Behind a translating DMA path (device addresses unrelated to pointers, as with an IOMMU)
/// everything works the same: rings never compute a device address themselves.
#[test]
fn rings_work_behind_a_translating_dma() {
    for format in FORMATS {
        for (cfg, seed) in [
            (config(8), 20u64),
            (
                QueueConfig {
                    event_idx: true,
                    indirect: true,
                    ..config(16)
                },
                21,
            ),
        ] {
            let arena = ArenaDma::new(1 << 20);
            run_random_traffic_with(&arena, format, cfg, 2_000, seed);
            assert!(arena.stats().shared_allocs > 0);
        }
    }
    let arena = ArenaDma::new(1 << 20);
    run_random_traffic_with(
        &arena,
        RingFormat::Split,
        QueueConfig {
            legacy_layout: true,
            event_idx: true,
            ..config(64)
        },
        2_000,
        22,
    );
}

/// Split indices wrap at 65536: more than 65536 requests go through a small queue.
#[test]
fn split_wraps_its_indices_many_times() {
    run_random_traffic(RingFormat::Split, config(8), 70_000, 1);
    run_random_traffic(
        RingFormat::Split,
        QueueConfig {
            indirect: true,
            ..config(4)
        },
        5_000,
        2,
    );
}

#[test]
fn split_event_idx_across_index_wrap() {
    run_random_traffic(
        RingFormat::Split,
        QueueConfig {
            event_idx: true,
            ..config(8)
        },
        70_000,
        3,
    );
}

/// Packed wrap counters flip every `size` descriptors; odd sizes and chains straddle the end.
#[test]
fn packed_wraps_its_counters_many_times() {
    for (size, seed) in [(8u16, 4u64), (5, 5), (3, 6), (1, 7)] {
        run_random_traffic(
            RingFormat::Packed,
            config(size),
            20 * usize::from(size) + 500,
            seed,
        );
    }
    run_random_traffic(
        RingFormat::Packed,
        QueueConfig {
            indirect: true,
            ..config(4)
        },
        5_000,
        8,
    );
}

#[test]
fn packed_event_idx_across_wraps() {
    for (size, seed) in [(8u16, 9u64), (7, 10), (2, 11)] {
        run_random_traffic(
            RingFormat::Packed,
            QueueConfig {
                event_idx: true,
                ..config(size)
            },
            20_000,
            seed,
        );
    }
}

#[test]
fn legacy_layout_is_one_page_aligned_block() {
    let dma = ArenaDma::new(1 << 20);
    let mut q = new_queue(
        &dma,
        RingFormat::Split,
        QueueConfig {
            legacy_layout: true,
            ..config(256)
        },
    );
    let a = q.addresses();
    let pfn = LegacyLayout::check(&a).expect("legacy layout");
    assert_eq!(u64::from(pfn) * 4096, a.desc.as_u64());
    assert_eq!(a.driver.as_u64() - a.desc.as_u64(), 16 * 256);
    assert_eq!(
        a.device.as_u64() - a.desc.as_u64(),
        8192,
        "used ring on the next page"
    );
    assert_eq!(LegacyLayout::new(256).total, 8192 + 4096);
    let mut dev = RingSide::for_queue(&q);
    let bufs = Buffers::new(&dma, 64);
    let t = q
        .add(&[bufs.seg(0, 8, false), bufs.seg(8, 8, true)])
        .unwrap();
    let req = take_one(&mut dev);
    dev.complete(&req, 8);
    assert_eq!(
        q.pop_used().unwrap().unwrap(),
        Completion {
            token: t,
            written_len: 8
        }
    );
    bufs.free(&dma);
    // A packed ring has no legacy layout.
    assert_eq!(
        Virtqueue::new(
            &dma,
            RingFormat::Packed,
            QueueConfig {
                legacy_layout: true,
                ..config(8)
            },
            &DmaConstraints::NONE
        )
        .err(),
        Some(crate::virtio::queue::QueueError::PackedLegacy)
    );
}

#[test]
fn queue_sizes_are_checked() {
    use crate::virtio::queue::QueueError;
    let dma = Direct::new();
    for (format, size, ok) in [
        (RingFormat::Split, 0u16, false),
        (RingFormat::Split, 6, false),
        (RingFormat::Split, 32768, true),
        (RingFormat::Split, 1, true),
        (RingFormat::Packed, 0, false),
        (RingFormat::Packed, 6, true),
        (RingFormat::Packed, 32769, false),
    ] {
        let r = Virtqueue::new(&dma, format, config(size), &DmaConstraints::NONE);
        match r {
            Ok(q) => {
                assert!(ok, "{format:?} {size}");
                // SAFETY: no device saw it.
                unsafe { q.free() }.unwrap();
            }
            Err(e) => {
                assert!(!ok, "{format:?} {size}");
                assert_eq!(e, QueueError::SizeInvalid { size });
            }
        }
    }
}

#[test]
fn split_notification_follows_no_notify_flag() {
    let dma = Direct::new();
    let mut q = new_queue(&dma, RingFormat::Split, config(8));
    let RingSide::Split(dev) = RingSide::for_queue(&q) else {
        unreachable!()
    };
    let bufs = Buffers::new(&dma, 64);
    assert!(!q.should_notify());
    q.add(&[bufs.seg(0, 8, false)]).unwrap();
    assert!(q.should_notify());
    assert!(!q.should_notify(), "already decided for that request");
    dev.set_used_flags(1);
    q.add(&[bufs.seg(0, 8, false)]).unwrap();
    assert!(!q.should_notify());
    dev.set_used_flags(0);
    q.add(&[bufs.seg(0, 8, false)]).unwrap();
    q.add(&[bufs.seg(0, 8, false)]).unwrap();
    assert!(q.should_notify());
    bufs.free(&dma);
}

#[test]
fn split_event_idx_notification_decisions() {
    let dma = Direct::new();
    let mut q = new_queue(
        &dma,
        RingFormat::Split,
        QueueConfig {
            event_idx: true,
            ..config(8)
        },
    );
    let RingSide::Split(dev) = RingSide::for_queue(&q) else {
        unreachable!()
    };
    let bufs = Buffers::new(&dma, 64);
    let seg = [bufs.seg(0, 8, false)];
    // avail_event 0: the first request (index 0) crosses it.
    q.add(&seg).unwrap();
    assert!(q.should_notify());
    // Batch [1, 4): an event at 2 is inside, at 4 is ahead, at 0 is behind.
    for (event, expected) in [(2u16, true), (4, false), (0, false), (1, true), (3, true)] {
        dev.set_avail_event(event);
        let mut probe = new_queue(
            &dma,
            RingFormat::Split,
            QueueConfig {
                event_idx: true,
                ..config(8)
            },
        );
        let RingSide::Split(probe_dev) = RingSide::for_queue(&probe) else {
            unreachable!()
        };
        probe.add(&seg).unwrap();
        probe.should_notify();
        probe_dev.set_avail_event(event);
        for _ in 0..3 {
            probe.add(&seg).unwrap();
        }
        assert_eq!(
            probe.should_notify(),
            expected,
            "event {event} for batch [1, 4)"
        );
        // SAFETY: no device uses it.
        unsafe { probe.free() }.unwrap();
    }
    // The device ignores the NO_NOTIFY flag under event idx; only the index counts.
    dev.set_used_flags(1);
    dev.set_avail_event(1);
    q.add(&seg).unwrap();
    assert!(q.should_notify());
    bufs.free(&dma);
}

#[test]
fn packed_notification_decisions() {
    let dma = Direct::new();
    let bufs = Buffers::new(&dma, 64);
    let seg = [bufs.seg(0, 8, false)];
    // Without event idx: ENABLE and DISABLE; DESC is not valid then, so it notifies.
    let mut q = new_queue(&dma, RingFormat::Packed, config(4));
    let RingSide::Packed(dev) = RingSide::for_queue(&q) else {
        unreachable!()
    };
    q.add(&seg).unwrap();
    assert!(q.should_notify());
    dev.set_device_event(1, 0);
    q.add(&seg).unwrap();
    assert!(!q.should_notify());
    dev.set_device_event(2, 0x8000 | 3);
    q.add(&seg).unwrap();
    assert!(q.should_notify());

    // With event idx, size 4: fill positions 0..3 (wrap 1), then 3, 0 (wrap flips to 0).
    let cases: [(u16, bool); 6] = [
        (0x8000 | 3, true),  // position 3 of the first lap: in the batch
        (0, true),           // position 0 of the second lap: in the batch
        (1, false),          // position 1 of the second lap: not yet
        (0x8000 | 2, false), // position 2 of the first lap: before the batch
        (0x8000 | 1, false),
        (3, false), // position 3 of the second lap: far ahead
    ];
    for (off_wrap, expected) in cases {
        let mut q = new_queue(
            &dma,
            RingFormat::Packed,
            QueueConfig {
                event_idx: true,
                ..config(4)
            },
        );
        let mut dev = RingSide::for_queue(&q);
        for _ in 0..3 {
            q.add(&seg).unwrap();
        }
        assert!(q.should_notify(), "the device asked for position 0");
        // The device consumes and returns the first two, so that there is room to wrap.
        for _ in 0..2 {
            let r = take_one(&mut dev);
            dev.complete(&r, 0);
            q.pop_used().unwrap().unwrap();
        }
        let RingSide::Packed(pdev) = &dev else {
            unreachable!()
        };
        pdev.set_device_event(2, off_wrap);
        q.add(&seg).unwrap(); // position 3, wrap 1
        q.add(&seg).unwrap(); // position 0, wrap 0
        assert_eq!(q.should_notify(), expected, "off_wrap {off_wrap:#x}");
        // SAFETY: the fake device is done with it.
        unsafe { q.free() }.unwrap();
    }
    bufs.free(&dma);
}

#[test]
fn interrupt_suppression_is_written_where_the_device_looks() {
    let dma = Direct::new();
    let bufs = Buffers::new(&dma, 64);
    let seg = [bufs.seg(0, 8, true)];

    let mut q = new_queue(&dma, RingFormat::Split, config(4));
    let RingSide::Split(dev) = RingSide::for_queue(&q) else {
        unreachable!()
    };
    q.set_interrupts(false);
    assert_eq!(dev.avail_flags(), 1);
    q.set_interrupts(true);
    assert_eq!(dev.avail_flags(), 0);

    let mut q = new_queue(
        &dma,
        RingFormat::Split,
        QueueConfig {
            event_idx: true,
            ..config(4)
        },
    );
    let mut dev = RingSide::for_queue(&q);
    q.add(&seg).unwrap();
    let r = take_one(&mut dev);
    dev.complete(&r, 1);
    q.pop_used().unwrap().unwrap();
    let RingSide::Split(sdev) = &dev else {
        unreachable!()
    };
    assert_eq!(
        sdev.used_event(),
        1,
        "interrupt wanted for the next completion"
    );
    q.set_interrupts(false);
    assert_eq!(sdev.used_event(), 0, "as far away as possible");
    assert_eq!(sdev.avail_flags(), 0, "flags stay 0 under event idx");
    q.set_interrupts(true);
    assert_eq!(sdev.used_event(), 1);

    let mut q = new_queue(&dma, RingFormat::Packed, config(4));
    let RingSide::Packed(dev) = RingSide::for_queue(&q) else {
        unreachable!()
    };
    q.set_interrupts(false);
    assert_eq!(dev.driver_event().0, 1);
    q.set_interrupts(true);
    assert_eq!(dev.driver_event().0, 0);

    let mut q = new_queue(
        &dma,
        RingFormat::Packed,
        QueueConfig {
            event_idx: true,
            ..config(2)
        },
    );
    let mut dev = RingSide::for_queue(&q);
    for _ in 0..2 {
        q.add(&seg).unwrap();
        let r = take_one(&mut dev);
        dev.complete(&r, 1);
        q.pop_used().unwrap().unwrap();
    }
    q.set_interrupts(true);
    let RingSide::Packed(pdev) = &dev else {
        unreachable!()
    };
    assert_eq!(
        pdev.driver_event(),
        (2, 0),
        "DESC at position 0 of the second lap (wrap 0)"
    );
    bufs.free(&dma);
}

struct StepClock(Cell<u64>);

impl Clock for StepClock {
    fn now_us(&self) -> u64 {
        let t = self.0.get();
        self.0.set(t + 100);
        t
    }
}

#[test]
fn waiting_is_bounded_by_polls_or_time() {
    let dma = Direct::new();
    let mut q = new_queue(&dma, RingFormat::Split, config(4));
    let mut dev = RingSide::for_queue(&q);
    let bufs = Buffers::new(&dma, 64);
    q.add(&[bufs.seg(0, 8, true)]).unwrap();

    let mut d = Deadline::new(&NoClock, 1_000_000, 10);
    assert_eq!(
        q.wait_used(&mut d),
        Err(WaitError::TimedOut {
            elapsed_us: 0,
            polls: 11
        })
    );

    let clock = StepClock(Cell::new(0));
    let mut d = Deadline::new(&clock, 1_000, u64::MAX);
    match q.wait_used(&mut d) {
        Err(WaitError::TimedOut { elapsed_us, polls }) => {
            assert!(
                elapsed_us >= 1_000 && polls < 20,
                "{elapsed_us} us, {polls} polls"
            );
        }
        other => panic!("{other:?}"),
    }

    let r = take_one(&mut dev);
    dev.complete(&r, 3);
    let mut d = Deadline::new(&NoClock, 0, 0);
    assert_eq!(
        q.wait_used(&mut d).unwrap().written_len,
        3,
        "a completion beats the deadline"
    );
    bufs.free(&dma);
}

#[test]
fn free_gives_back_rings_and_outstanding_tables() {
    for format in FORMATS {
        let dma = Direct::new();
        let mut q = new_queue(
            &dma,
            format,
            QueueConfig {
                indirect: true,
                ..config(16)
            },
        );
        let bufs = Buffers::new(&dma, 64);
        for _ in 0..3 {
            q.add(&[bufs.seg(0, 8, false), bufs.seg(8, 8, true)])
                .unwrap();
        }
        bufs.free(&dma);
        // SAFETY: no device ever saw it.
        unsafe { q.free() }.unwrap();
        let s = dma.stats();
        assert_eq!(s.shared_bytes, 0);
        assert_eq!(s.shared_allocs, s.shared_frees);
    }
}

#[test]
fn segments_from_mappings() {
    let dma = Direct::new();
    let mut buf = [0u8; 32];
    for (dir, writable) in [
        (Direction::ToDevice, false),
        (Direction::FromDevice, true),
        (Direction::Bidirectional, true),
    ] {
        // SAFETY: `buf` outlives the mapping and is left alone meanwhile.
        let m =
            unsafe { dma.map(NonNull::from(&mut buf[..]), dir, &DmaConstraints::NONE) }.unwrap();
        let s = Segment::from_mapping(&m).unwrap();
        assert_eq!(
            s,
            Segment {
                addr: m.device_addr(),
                len: 32,
                device_writable: writable
            }
        );
        // SAFETY: no device saw it.
        unsafe { dma.unmap(m) }.unwrap();
    }
}
