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

/// Ticks per second of the PIT's input (1.193182 MHz, fixed by the PC design).
pub const PIT_HZ: u64 = 1_193_182;
/// PIT ticks per window: 1 ms, so the three windows cost ~3 ms of boot and the PIT's resolution
/// (one tick) is under 0.1% of a window.
pub const WINDOW_TICKS: u16 = 1193;
/// Reads of the timer per window before giving up: a timer that never moves must not hang the
/// boot.
const MAX_READS: u32 = 5_000_000;

/// TSC ticks per second, from three windows of [`WINDOW_TICKS`] of a down-counter that runs at
/// [`PIT_HZ`] and wraps every 65536 ticks (`read_timer`), measured with `read_tsc`. `None` when
/// the timer does not count.
pub fn tsc_hz_from_timer(
    mut read_timer: impl FnMut() -> u16,
    mut read_tsc: impl FnMut() -> u64,
) -> Option<u64> {
    let mut rates = [0u64; 3];
    for rate in rates.iter_mut() {
        let first = read_timer();
        let start = read_tsc();
        let mut done = None;
        for _ in 0..MAX_READS {
            // A down-counter: ticks elapsed are first - now, modulo its period.
            let elapsed = first.wrapping_sub(read_timer());
            if (WINDOW_TICKS..0x8000).contains(&elapsed) {
                let ticks = read_tsc().wrapping_sub(start);
                done = Some(ticks.saturating_mul(PIT_HZ) / u64::from(elapsed));
                break;
            }
        }
        *rate = done?;
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

    #[test]
    fn a_timer_that_never_moves_gives_no_rate() {
        assert_eq!(tsc_hz_from_timer(|| 0x1234, || 0), None);
    }
}
