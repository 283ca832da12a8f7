//! Counting the TSC against a timer of known rate (x86's PIT), in a way a busy host cannot
//! fool.
//!
//! The guest times everything on the TSC, so its rate has to be right. QEMU may deschedule the
//! vCPU at any moment, for tens of milliseconds when the host is busy, and a pause inside a
//! calibration window skews that window: a pause between reading the timer and reading the TSC
//! counts timer ticks the TSC did not see (too low a rate), and a pause longer than the timer's
//! period wraps its count (far too high a rate). So the rate is taken over three windows and the
//! median is kept: one bad window cannot move it. `make bench` checks the result against the
//! host's clock.
//!
//! Those three windows are ~3 ms of busy-waiting, a fifth of an x86 boot under TCG. So the
//! guest first tries a window that costs under 1 ms: [`Overlapped`] samples the timer and
//! the TSC when the arch code starts, lets the boot work run, and samples them again when the
//! rate is needed. Pauses inside that window do not matter (both counters keep running); what could
//! fool it is checked instead of voted away:
//! - a pause between the timer read and the TSC read of a sample: each sample is the tightest
//!   of three (TSC, timer, TSC) brackets, and the brackets must be under 1% of the window;
//! - a window longer than the timer's period (a pause of 55 ms or more), whose count wrapped:
//!   that makes the rate at least twice too high, so a short [`CHECK_TICKS`] window must agree
//!   with it within 25%. That is loose on purpose: the check only has to tell 2x from 1x, and
//!   its own window is rough (under TCG the first run of its code delays its first TSC read by
//!   the translation, a few % of 0.25 ms).
//!
//! When either check fails, the three windows run as before.

/// Ticks per second of the PIT's input (1.193182 MHz, fixed by the PC design).
pub const PIT_HZ: u64 = 1_193_182;
/// PIT ticks per window: 1 ms, so the three windows cost ~3 ms of boot and the PIT's resolution
/// (one tick) is under 0.1% of a window.
pub const WINDOW_TICKS: u16 = 1193;
/// Reads of the timer per window before giving up: a timer that never moves must not hang the
/// boot.
const MAX_READS: u32 = 5_000_000;

/// PIT ticks the overlapped window spans at least (2 ms, 0.04% per tick of resolution). Under
/// TCG the boot work before the rate is needed takes about that long, so the wait is short or
/// nothing.
pub const OVERLAP_MIN_TICKS: u16 = 2386;
/// The longest an overlapped window waits for its brackets to become small against it
/// (13.7 ms, a quarter of the timer's period).
pub const OVERLAP_MAX_TICKS: u16 = 0x4000;
/// PIT ticks of the window that checks an overlapped rate (0.25 ms): enough to tell a wrapped
/// count (a rate off by 2x or more) from a good one.
pub const CHECK_TICKS: u16 = 298;

/// One reading of the timer and the TSC at (about) the same moment.
#[derive(Clone, Copy, Debug)]
struct Sample {
    timer: u16,
    /// The TSC halfway between the reads around the timer read.
    tsc: u64,
    /// TSC ticks between those reads: how far `tsc` may be from the timer read.
    width: u64,
}

/// The tightest of three (TSC, timer, TSC) brackets: a pause falls in one of them at most.
fn sample(read_timer: &mut impl FnMut() -> u16, read_tsc: &mut impl FnMut() -> u64) -> Sample {
    let mut best: Option<Sample> = None;
    for _ in 0..3 {
        let before = read_tsc();
        let timer = read_timer();
        let after = read_tsc();
        let width = after.wrapping_sub(before);
        if best.is_none_or(|b| width < b.width) {
            best = Some(Sample {
                timer,
                tsc: before.wrapping_add(width / 2),
                width,
            });
        }
    }
    // Three iterations always ran.
    best.unwrap_or(Sample {
        timer: 0,
        tsc: 0,
        width: u64::MAX,
    })
}

/// A calibration window opened early in boot and closed when the rate is needed, so that the
/// boot work in between is the wait (see the module comment).
#[derive(Clone, Copy, Debug)]
pub struct Overlapped {
    start: Sample,
}

impl Overlapped {
    /// Opens the window: `read_timer` must already be counting.
    pub fn start(mut read_timer: impl FnMut() -> u16, mut read_tsc: impl FnMut() -> u64) -> Self {
        Overlapped {
            start: sample(&mut read_timer, &mut read_tsc),
        }
    }

    /// Closes the window (waiting until it spans [`OVERLAP_MIN_TICKS`]) and returns TSC ticks
    /// per second. Falls back to [`tsc_hz_from_timer`] when a check fails; `None` when the
    /// timer does not count.
    pub fn finish(
        self,
        mut read_timer: impl FnMut() -> u16,
        mut read_tsc: impl FnMut() -> u64,
    ) -> Option<u64> {
        match self.rate(&mut read_timer, &mut read_tsc) {
            // A timer that never moves (no PIT behind the ports) gives no rate: the fallback's
            // windows would only wait for it again, up to three times.
            Overlap::Stuck => None,
            Overlap::Unsure => tsc_hz_from_timer(read_timer, read_tsc),
            Overlap::Rate(r) => match window_rate(&mut read_timer, &mut read_tsc, CHECK_TICKS) {
                Some(c) if r.abs_diff(c).saturating_mul(4) <= c => Some(r),
                _ => tsc_hz_from_timer(read_timer, read_tsc),
            },
        }
    }

    /// The rate over the whole window, when both of its samples are tight: their brackets
    /// together under 1% of it (each sample's error is under half its bracket, and the part of
    /// it that is the same at both ends cancels). A slow timer read (a port-I/O exit costs
    /// tens of microseconds under nested KVM) makes the window longer, up to
    /// [`OVERLAP_MAX_TICKS`].
    fn rate(
        &self,
        read_timer: &mut impl FnMut() -> u16,
        read_tsc: &mut impl FnMut() -> u64,
    ) -> Overlap {
        let want_tsc = self.start.width.saturating_mul(200);
        let mut reads = 0;
        loop {
            let elapsed = self.start.timer.wrapping_sub(read_timer());
            if elapsed >= OVERLAP_MIN_TICKS
                && (elapsed >= OVERLAP_MAX_TICKS
                    || read_tsc().wrapping_sub(self.start.tsc) >= want_tsc)
            {
                break;
            }
            reads += 1;
            if reads == MAX_READS {
                return Overlap::Stuck;
            }
        }
        let end = sample(read_timer, read_tsc);
        let elapsed = self.start.timer.wrapping_sub(end.timer);
        let ticks = end.tsc.wrapping_sub(self.start.tsc);
        let slack = self.start.width.saturating_add(end.width);
        // A wrapped count can pass both tests; the check window catches it.
        if elapsed >= OVERLAP_MIN_TICKS && slack.saturating_mul(100) <= ticks {
            Overlap::Rate((u128::from(ticks) * u128::from(PIT_HZ) / u128::from(elapsed)) as u64)
        } else {
            Overlap::Unsure
        }
    }
}

/// What an overlapped window measured.
#[derive(Debug, PartialEq, Eq)]
enum Overlap {
    /// A rate, to be checked against a short window.
    Rate(u64),
    /// The samples were not tight enough to trust.
    Unsure,
    /// The timer did not reach the window's minimum in [`MAX_READS`] reads.
    Stuck,
}

/// TSC ticks per second over one window of `window` timer ticks; `None` when the timer does
/// not move.
fn window_rate(
    read_timer: &mut impl FnMut() -> u16,
    read_tsc: &mut impl FnMut() -> u64,
    window: u16,
) -> Option<u64> {
    let first = read_timer();
    let start = read_tsc();
    for _ in 0..MAX_READS {
        // A down-counter: ticks elapsed are first - now, modulo its period.
        let elapsed = first.wrapping_sub(read_timer());
        if (window..0x8000).contains(&elapsed) {
            let ticks = read_tsc().wrapping_sub(start);
            return Some(ticks.saturating_mul(PIT_HZ) / u64::from(elapsed));
        }
    }
    None
}

/// TSC ticks per second, from three windows of [`WINDOW_TICKS`] of a down-counter that runs at
/// [`PIT_HZ`] and wraps every 65536 ticks (`read_timer`), measured with `read_tsc`. `None` when
/// the timer does not count.
pub fn tsc_hz_from_timer(
    mut read_timer: impl FnMut() -> u16,
    mut read_tsc: impl FnMut() -> u64,
) -> Option<u64> {
    let mut rates = [0u64; 3];
    for rate in rates.iter_mut() {
        *rate = window_rate(&mut read_timer, &mut read_tsc, WINDOW_TICKS)?;
    }
    crate::small_sort::sort_by(&mut rates, |a, b| a < b);
    Some(rates[1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::Cell;

    const TSC_HZ: u64 = 2_600_000_000;

    /// A PIT and a TSC over one simulated clock (ns) that advances `step` ns per read, and
    /// jumps by `pause` ns right after read number `pause_at`.
    struct Machine {
        now_ns: Cell<u64>,
        reads: Cell<u32>,
        step: u64,
        pause_at: u32,
        pause: u64,
    }

    impl Machine {
        fn tick(&self) -> u64 {
            let n = self.reads.get() + 1;
            self.reads.set(n);
            let mut t = self.now_ns.get() + self.step;
            if n == self.pause_at {
                t += self.pause;
            }
            self.now_ns.set(t);
            t
        }
        fn pit(&self) -> u16 {
            let t = self.tick();
            // Counting down from 0 (65536) at PIT_HZ.
            0u16.wrapping_sub((u128::from(t) * u128::from(PIT_HZ) / 1_000_000_000) as u16)
        }
        fn tsc(&self) -> u64 {
            (u128::from(self.tick()) * u128::from(TSC_HZ) / 1_000_000_000) as u64
        }
    }

    fn calibrate(m: &Machine) -> Option<u64> {
        tsc_hz_from_timer(|| m.pit(), || m.tsc())
    }

    fn machine(pause_at: u32, pause: u64) -> Machine {
        Machine {
            now_ns: Cell::new(123_456_789),
            reads: Cell::new(0),
            step: 700,
            pause_at,
            pause,
        }
    }

    fn close(hz: u64) -> bool {
        hz.abs_diff(TSC_HZ) * 1000 < TSC_HZ // within 0.1%
    }

    #[test]
    fn an_undisturbed_calibration_is_exact() {
        let hz = calibrate(&machine(0, 0)).unwrap();
        assert!(close(hz), "{hz}");
    }

    #[test]
    fn a_pause_in_one_window_does_not_move_the_median() {
        // Pauses that wrap the PIT (60 ms), that fall between the timer and the TSC read at a
        // window's start (read 2, 10 ms), and that fall inside a later window.
        for (at, pause) in [
            (2, 10_000_000),
            (50, 60_000_000),
            (1, 60_000_000),
            (4000, 200_000_000),
            (3000, 30_000_000),
        ] {
            let hz = calibrate(&machine(at, pause)).unwrap();
            assert!(close(hz), "pause of {pause} ns at read {at}: {hz}");
        }
    }

    /// Opens an overlapped window, lets `work_reads` TSC reads of boot work pass, closes it.
    /// Returns the rate and the simulated ns `finish` itself took.
    fn overlapped(m: &Machine, work_reads: u32) -> (Option<u64>, u64) {
        let w = Overlapped::start(|| m.pit(), || m.tsc());
        for _ in 0..work_reads {
            m.tsc();
        }
        let before = m.now_ns.get();
        let hz = w.finish(|| m.pit(), || m.tsc());
        (hz, m.now_ns.get() - before)
    }

    #[test]
    fn an_overlapped_window_costs_only_its_check() {
        // 3 ms of boot work: no wait, then the 0.25 ms check window.
        let (hz, cost) = overlapped(&machine(0, 0), 4300);
        assert!(close(hz.unwrap()), "{hz:?}");
        assert!(cost < 700_000, "finish took {cost} ns");
        // 0.2 ms of work: it waits for the rest of the 2 ms, still far under three windows.
        let (hz, cost) = overlapped(&machine(0, 0), 300);
        assert!(close(hz.unwrap()), "{hz:?}");
        assert!(cost < 2_600_000, "finish took {cost} ns");
    }

    #[test]
    fn an_overlapped_window_is_not_fooled_by_pauses() {
        for (at, pause, what) in [
            (2, 10_000_000, "between the reads of the start sample"),
            (
                3,
                40_000_000,
                "between the reads of the start sample, within the period",
            ),
            (
                1000,
                30_000_000,
                "inside the window, within the timer's period",
            ),
            (
                1000,
                60_000_000,
                "inside the window, wrapping the timer once",
            ),
            (1000, 100_000_000, "inside the window, 1.8 periods"),
            (1000, 300_000_000, "inside the window, several periods"),
            (4302, 60_000_000, "between the reads of the end sample"),
            (4310, 60_000_000, "inside the check window"),
        ] {
            let (hz, _) = overlapped(&machine(at, pause), 4300);
            let hz = hz.unwrap_or_else(|| panic!("{what}: no rate"));
            assert!(close(hz), "pause of {pause} ns {what} (read {at}): {hz}");
        }
    }

    /// Without the check window, a pause of one timer period inside the window would pass:
    /// the count wrapped, the brackets are tight, and the rate is far too high.
    #[test]
    fn a_wrapped_window_needs_the_check() {
        let m = machine(1000, 60_000_000);
        let w = Overlapped::start(|| m.pit(), || m.tsc());
        for _ in 0..4300 {
            m.tsc();
        }
        let Overlap::Rate(unchecked) = w.rate(&mut || m.pit(), &mut || m.tsc()) else {
            panic!("the brackets are tight: a rate");
        };
        assert!(unchecked > 2 * TSC_HZ, "{unchecked}");
    }

    #[test]
    fn an_overlapped_window_over_a_dead_timer_gives_no_rate() {
        let w = Overlapped::start(|| 0x1234, || 0);
        let reads = Cell::new(0u32);
        let dead = || {
            reads.set(reads.get() + 1);
            0x1234
        };
        assert_eq!(w.finish(dead, || 0), None);
        // One wait for the timer, not one per fallback window as well.
        assert!(reads.get() <= MAX_READS + 1, "{} reads", reads.get());
    }

    #[test]
    fn a_timer_that_never_moves_gives_no_rate() {
        assert_eq!(tsc_hz_from_timer(|| 0x1234, || 0), None);
    }
}
