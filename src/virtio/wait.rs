//! Bounded waiting: every loop that waits for a device ends, even if the device never answers
//! and even if the clock does not work.

use core::fmt;

use super::queue::RingError;

/// A monotonic clock supplied by the caller (the guest's timebase / TSC through its tick rate).
pub trait Clock {
    /// Microseconds since an arbitrary origin. Must not go backwards; if it does, the elapsed
    /// time reads as 0 and only the poll ceiling ends the wait.
    fn now_us(&self) -> u64;
}

/// For when no clock is calibrated yet: time stands still, so only the poll ceiling counts.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoClock;

impl Clock for NoClock {
    fn now_us(&self) -> u64 {
        0
    }
}

/// A time budget and a poll ceiling. Whichever runs out first ends the wait.
pub struct Deadline<'c> {
    clock: &'c dyn Clock,
    start_us: u64,
    timeout_us: u64,
    polls: u64,
    max_polls: u64,
}

impl<'c> Deadline<'c> {
    /// Starts now. `max_polls` guards against a clock that does not advance.
    pub fn new(clock: &'c dyn Clock, timeout_us: u64, max_polls: u64) -> Self {
        Deadline {
            clock,
            start_us: clock.now_us(),
            timeout_us,
            polls: 0,
            max_polls,
        }
    }

    /// Counts one poll; true once the budget or the poll ceiling is spent.
    pub fn expired(&mut self) -> bool {
        self.polls = self.polls.saturating_add(1);
        self.polls > self.max_polls || self.elapsed_us() >= self.timeout_us
    }

    pub fn elapsed_us(&self) -> u64 {
        self.clock.now_us().saturating_sub(self.start_us)
    }

    pub fn polls(&self) -> u64 {
        self.polls
    }
}

/// Why waiting for a completion ended without one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitError {
    /// The device broke the ring protocol (the queue is now broken).
    Ring(RingError),
    /// Nothing came in time. The device may still own the buffers: reset it before unmapping.
    TimedOut { elapsed_us: u64, polls: u64 },
}

impl From<RingError> for WaitError {
    fn from(e: RingError) -> Self {
        WaitError::Ring(e)
    }
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitError::Ring(e) => write!(f, "{e}"),
            WaitError::TimedOut { elapsed_us, polls } => {
                write!(f, "timed out after {elapsed_us} us and {polls} polls")
            }
        }
    }
}
