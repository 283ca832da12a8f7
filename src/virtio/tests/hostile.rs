//! Devices that lie. Each lie must give its specific `RingError`, break the queue for good, and
//! never panic; the fuzzer throws random used-ring contents at both formats.

use std::collections::HashMap;

use super::*;
use crate::virtio::queue::{AddError, RingError};

fn assert_broken(q: &mut Virtqueue<'_>, e: RingError, seg: Segment) {
    assert_eq!(q.broken(), Some(e));
    assert_eq!(q.pop_used(), Err(e), "the error sticks");
    assert_eq!(q.add(&[seg]), Err(AddError::Broken(e)));
}

/// Runs `lie` against a fresh split queue (size 8) holding a 1-segment request (head 0) and a
/// 3-segment chain (head 1, body 2 and 3), each 16 writable bytes per segment.
fn split_lie(lie: impl FnOnce(&mut SplitSide, &mut Virtqueue<'_>)) -> RingError {
    let dma = Direct::new();
    let mut q = new_queue(&dma, RingFormat::Split, config(8));
    let RingSide::Split(mut dev) = RingSide::for_queue(&q) else {
        unreachable!()
    };
    let bufs = Buffers::new(&dma, 256);
    assert_eq!(q.add(&[bufs.seg(0, 16, true)]).unwrap().index(), 0);
    let chain = [
        bufs.seg(16, 16, true),
        bufs.seg(32, 16, true),
        bufs.seg(48, 16, true),
    ];
    assert_eq!(q.add(&chain).unwrap().index(), 1);
    lie(&mut dev, &mut q);
    let e = q.pop_used().expect_err("the lie must be caught");
    assert_broken(&mut q, e, bufs.seg(0, 1, true));
    bufs.free(&dma);
    e
}

#[test]
fn split_used_id_out_of_range() {
    let e = split_lie(|dev, _| dev.push_used_raw(8, 0));
    assert_eq!(e, RingError::IdOutOfRange { id: 8, size: 8 });
    let e = split_lie(|dev, _| dev.push_used_raw(u32::MAX, 0));
    assert_eq!(
        e,
        RingError::IdOutOfRange {
            id: u32::MAX,
            size: 8
        }
    );
}

#[test]
fn split_used_id_inside_a_chain() {
    let e = split_lie(|dev, _| dev.push_used_raw(2, 0));
    assert_eq!(e, RingError::NotAHead { id: 2, head: 1 });
}

#[test]
fn split_used_id_never_made_available() {
    let e = split_lie(|dev, _| dev.push_used_raw(6, 0));
    assert_eq!(e, RingError::NotOutstanding { id: 6 });
}

#[test]
fn split_duplicate_completion() {
    let e = split_lie(|dev, q| {
        dev.push_used_raw(0, 4);
        assert_eq!(q.pop_used().unwrap().unwrap().token.index(), 0);
        dev.push_used_raw(0, 4);
    });
    assert_eq!(e, RingError::DuplicateCompletion { id: 0 });
}

#[test]
fn split_written_length_beyond_the_writable_bytes() {
    let e = split_lie(|dev, _| dev.push_used_raw(1, 49));
    assert_eq!(
        e,
        RingError::WrittenTooLong {
            id: 1,
            written: 49,
            capacity: 48
        }
    );
    let e = split_lie(|dev, _| dev.push_used_raw(0, u32::MAX));
    assert_eq!(
        e,
        RingError::WrittenTooLong {
            id: 0,
            written: u32::MAX,
            capacity: 16
        }
    );
}

#[test]
fn split_readable_only_request_cannot_have_written_bytes() {
    let dma = Direct::new();
    let mut q = new_queue(&dma, RingFormat::Split, config(4));
    let RingSide::Split(mut dev) = RingSide::for_queue(&q) else {
        unreachable!()
    };
    let bufs = Buffers::new(&dma, 64);
    q.add(&[bufs.seg(0, 16, false)]).unwrap();
    dev.push_used_raw(0, 1);
    assert_eq!(
        q.pop_used(),
        Err(RingError::WrittenTooLong {
            id: 0,
            written: 1,
            capacity: 0
        })
    );
    bufs.free(&dma);
}

#[test]
fn split_used_idx_jumps() {
    // 1000 ahead with 2 outstanding.
    let e = split_lie(|dev, _| dev.set_used_idx(1000));
    assert_eq!(
        e,
        RingError::UsedIdxJump {
            last_seen: 0,
            now: 1000,
            outstanding: 2
        }
    );
    // Three completions for two requests, even if the entries look right.
    let e = split_lie(|dev, _| {
        dev.write_used_entry(0, 0, 0);
        dev.write_used_entry(1, 1, 0);
        dev.write_used_entry(2, 0, 0);
        dev.set_used_idx(3);
    });
    assert_eq!(
        e,
        RingError::UsedIdxJump {
            last_seen: 0,
            now: 3,
            outstanding: 2
        }
    );
    // Backwards: after one honest completion, the index returns to 0.
    let e = split_lie(|dev, q| {
        dev.push_used_raw(0, 0);
        q.pop_used().unwrap().unwrap();
        dev.set_used_idx(0);
    });
    assert_eq!(
        e,
        RingError::UsedIdxJump {
            last_seen: 1,
            now: 0,
            outstanding: 1
        }
    );
}

#[test]
fn split_entry_rewritten_after_the_index_was_read() {
    // The device publishes two good entries, then overwrites the second before the driver
    // reads it. The driver reads each entry once and checks it.
    let e = split_lie(|dev, q| {
        dev.write_used_entry(0, 0, 0);
        dev.write_used_entry(1, 1, 0);
        dev.set_used_idx(2);
        q.pop_used().unwrap().unwrap();
        dev.write_used_entry(1, 0, 0);
    });
    assert_eq!(e, RingError::DuplicateCompletion { id: 0 });
}

/// Runs `lie` against a fresh packed queue (size 4) holding a 1-segment request (id 0, slot 0)
/// and a 2-segment chain (id 1, slots 1 and 2), 16 writable bytes per segment.
fn packed_lie(lie: impl FnOnce(&mut PackedSide, &mut Virtqueue<'_>)) -> RingError {
    let dma = Direct::new();
    let mut q = new_queue(&dma, RingFormat::Packed, config(4));
    let RingSide::Packed(mut dev) = RingSide::for_queue(&q) else {
        unreachable!()
    };
    let bufs = Buffers::new(&dma, 256);
    assert_eq!(q.add(&[bufs.seg(0, 16, true)]).unwrap().index(), 0);
    assert_eq!(
        q.add(&[bufs.seg(16, 16, true), bufs.seg(32, 16, true)])
            .unwrap()
            .index(),
        1
    );
    lie(&mut dev, &mut q);
    let e = q.pop_used().expect_err("the lie must be caught");
    assert_broken(&mut q, e, bufs.seg(0, 1, true));
    bufs.free(&dma);
    e
}

const USED_W1: u16 = F_AVAIL | F_USED;

#[test]
fn packed_buffer_id_out_of_range() {
    let e = packed_lie(|dev, _| dev.push_used_raw(4, 0, USED_W1, 1));
    assert_eq!(e, RingError::IdOutOfRange { id: 4, size: 4 });
    let e = packed_lie(|dev, _| dev.push_used_raw(u16::MAX, 0, USED_W1, 1));
    assert_eq!(e, RingError::IdOutOfRange { id: 65535, size: 4 });
}

#[test]
fn packed_buffer_id_not_outstanding() {
    let e = packed_lie(|dev, _| dev.push_used_raw(3, 0, USED_W1, 1));
    assert_eq!(e, RingError::NotOutstanding { id: 3 });
}

#[test]
fn packed_duplicate_completion() {
    let e = packed_lie(|dev, q| {
        dev.push_used_raw(0, 0, USED_W1, 1);
        assert_eq!(q.pop_used().unwrap().unwrap().token.index(), 0);
        dev.push_used_raw(0, 0, USED_W1, 1);
    });
    assert_eq!(e, RingError::DuplicateCompletion { id: 0 });
}

#[test]
fn packed_written_length_beyond_the_writable_bytes() {
    let e = packed_lie(|dev, _| dev.push_used_raw(1, 33, USED_W1 | F_WRITE, 2));
    assert_eq!(
        e,
        RingError::WrittenTooLong {
            id: 1,
            written: 33,
            capacity: 32
        }
    );
}

#[test]
fn packed_length_without_write_flag_is_ignored() {
    // The spec says the length of a used descriptor without WRITE is reserved: it counts as 0.
    let dma = Direct::new();
    let mut q = new_queue(&dma, RingFormat::Packed, config(4));
    let RingSide::Packed(mut dev) = RingSide::for_queue(&q) else {
        unreachable!()
    };
    let bufs = Buffers::new(&dma, 64);
    q.add(&[bufs.seg(0, 16, false)]).unwrap();
    dev.push_used_raw(0, u32::MAX, USED_W1, 1);
    assert_eq!(q.pop_used().unwrap().unwrap().written_len, 0);
    bufs.free(&dma);
}

#[test]
fn packed_flags_that_disagree_with_the_wrap_counter() {
    // USED set but AVAIL not, on a slot holding an outstanding request.
    let e = packed_lie(|dev, _| dev.push_used_raw(0, 0, F_USED, 1));
    assert_eq!(
        e,
        RingError::UsedFlagsInconsistent {
            position: 0,
            flags: F_USED,
            used_wrap: true
        }
    );
    // Both clear: "used in the previous lap", for a slot made available in this one.
    let e = packed_lie(|dev, _| dev.push_used_raw(0, 0, 0, 1));
    assert_eq!(
        e,
        RingError::UsedFlagsInconsistent {
            position: 0,
            flags: 0,
            used_wrap: true
        }
    );
}

#[test]
fn packed_flags_forged_with_nothing_outstanding() {
    let dma = Direct::new();
    let mut q = new_queue(&dma, RingFormat::Packed, config(2));
    let RingSide::Packed(mut dev) = RingSide::for_queue(&q) else {
        unreachable!()
    };
    let bufs = Buffers::new(&dma, 64);
    // One full lap so that the wrap counter is 0, then nothing outstanding.
    for _ in 0..2 {
        q.add(&[bufs.seg(0, 8, true)]).unwrap();
        let r = dev.take().unwrap();
        dev.complete(&r, 8);
        q.pop_used().unwrap().unwrap();
    }
    assert_eq!(q.pop_used(), Ok(None), "old-lap flags read as nothing new");
    // An "available in this lap" pattern the driver never wrote (wrap 0: AVAIL 0, USED 1).
    dev.push_used_raw(0, 0, F_USED, 0);
    assert_eq!(
        q.pop_used(),
        Err(RingError::UsedFlagsInconsistent {
            position: 0,
            flags: F_USED,
            used_wrap: false
        })
    );
    bufs.free(&dma);

    // A "used in this lap" pattern with nothing outstanding names an id that is not.
    let dma = Direct::new();
    let mut q = new_queue(&dma, RingFormat::Packed, config(2));
    let RingSide::Packed(mut dev) = RingSide::for_queue(&q) else {
        unreachable!()
    };
    dev.push_used_raw(1, 0, USED_W1, 0);
    assert_eq!(q.pop_used(), Err(RingError::NotOutstanding { id: 1 }));
}

/// What the fuzzer's driver side expects of each outstanding token.
struct Expect {
    capacity: u64,
}

/// Random traffic where the device sometimes tells the truth and sometimes writes random bytes
/// into whatever it may write. The ring must never panic, and every completion it accepts must
/// name an outstanding token with a length within that request's writable bytes.
fn fuzz(format: RingFormat, seed: u64, rounds: usize) {
    let mut rng = XorShift::new(seed);
    let mut broken_seen = 0;
    let mut completions_seen = 0;
    for _ in 0..rounds {
        // The arena gives legacy rings their low addresses.
        let dma = ArenaDma::new(1 << 20);
        let sizes: &[u16] = match format {
            RingFormat::Split => &[1, 2, 4, 8, 16],
            RingFormat::Packed => &[1, 2, 3, 5, 8, 16],
        };
        let size = sizes[rng.below(sizes.len() as u64) as usize];
        let cfg = QueueConfig {
            index: 0,
            size,
            event_idx: rng.chance(2),
            indirect: rng.chance(2),
            legacy_layout: format == RingFormat::Split && rng.chance(4),
        };
        let mut q = new_queue(&dma, format, cfg);
        let addrs = q.addresses();
        let mut dev = RingSide::for_queue(&q);
        // Once the device lied about ring state, its own bookkeeping is meaningless.
        let mut honest = true;
        let bufs = Buffers::new(&dma, 1024);
        let mut expect: HashMap<u16, Expect> = HashMap::new();
        for _ in 0..200 {
            match rng.below(5) {
                0 | 1 => {
                    let count = 1 + rng.below(u64::from(size.min(4))) as usize;
                    let segs: Vec<Segment> = (0..count)
                        .map(|i| bufs.seg(8 * i, 1 + rng.below(64) as u32, i + 1 == count))
                        .collect();
                    match q.add(&segs) {
                        Ok(t) => {
                            let capacity = u64::from(segs[count - 1].len);
                            assert!(expect.insert(t.0, Expect { capacity }).is_none());
                        }
                        Err(AddError::Full { .. } | AddError::Broken(_)) => {}
                        Err(e) => panic!("unexpected {e:?}"),
                    }
                    let _ = q.should_notify();
                }
                2 if honest => {
                    if let Some(r) = dev.take() {
                        let cap = r.writable_len() as u64;
                        dev.complete(&r, rng.below(cap + 1) as u32);
                    }
                }
                2 | 3 => {
                    honest = false;
                    scribble(&mut rng, format, &addrs);
                }
                _ => match q.pop_used() {
                    Ok(Some(c)) => {
                        let e = expect
                            .remove(&c.token.0)
                            .expect("completion of an outstanding token");
                        assert!(u64::from(c.written_len) <= e.capacity);
                        completions_seen += 1;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        assert_eq!(q.broken(), Some(e));
                        assert_eq!(q.pop_used(), Err(e));
                        broken_seen += 1;
                        break;
                    }
                },
            }
            assert_eq!(usize::from(q.outstanding_count()), expect.len());
        }
        bufs.free(&dma);
        // SAFETY: the fake device is gone ("reset").
        unsafe { q.free() }.unwrap();
        assert_eq!(dma.stats().shared_bytes, 0);
    }
    assert!(
        broken_seen > rounds / 4,
        "the fuzzer should break many queues ({broken_seen})"
    );
    assert!(
        completions_seen > rounds / 4,
        "and complete many requests ({completions_seen})"
    );
}

/// Writes random values into what the device may write.
fn scribble(rng: &mut XorShift, format: RingFormat, a: &QueueAddresses) {
    let n = u64::from(a.size);
    match format {
        RingFormat::Split => {
            let used = a.device.as_u64();
            match rng.below(4) {
                0 => wr16(used + 2, rng.next() as u16),
                1 => wr16(
                    used + 2,
                    rd16(used + 2).wrapping_add(1 + rng.below(3) as u16),
                ),
                2 => {
                    let slot = rng.below(n);
                    let id = if rng.chance(2) {
                        rng.below(n + 2) as u32
                    } else {
                        rng.next() as u32
                    };
                    wr32(used + 4 + 8 * slot, id);
                }
                _ => {
                    let slot = rng.below(n);
                    let len = if rng.chance(2) {
                        rng.below(80) as u32
                    } else {
                        rng.next() as u32
                    };
                    wr32(used + 8 + 8 * slot, len);
                }
            }
            if rng.chance(3) {
                wr16(used, rng.next() as u16);
                wr16(used + 4 + 8 * n, rng.next() as u16);
            }
        }
        RingFormat::Packed => {
            let d = a.desc.as_u64() + 16 * rng.below(n);
            match rng.below(3) {
                0 => wr16(d + 14, rng.next() as u16),
                1 => wr16(
                    d + 12,
                    if rng.chance(2) {
                        rng.below(n + 2) as u16
                    } else {
                        rng.next() as u16
                    },
                ),
                _ => wr32(
                    d + 8,
                    if rng.chance(2) {
                        rng.below(80) as u32
                    } else {
                        rng.next() as u32
                    },
                ),
            }
            if rng.chance(3) {
                wr16(a.device.as_u64(), rng.next() as u16);
                wr16(a.device.as_u64() + 2, rng.next() as u16);
            }
        }
    }
}

#[test]
fn fuzz_split_used_ring_never_panics() {
    for seed in 0..4 {
        fuzz(RingFormat::Split, 100 + seed, 300);
    }
}

#[test]
fn fuzz_packed_ring_never_panics() {
    for seed in 0..4 {
        fuzz(RingFormat::Packed, 200 + seed, 300);
    }
}
