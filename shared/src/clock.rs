//! Time: Envoy's monotonic clock (shared by all workers, so usable as a common epoch in shared data) and a
//! manual clock for tests.

use std::cell::Cell;

/// A source of monotonic time in nanoseconds.
pub trait Clock {
    fn now_nanos(&self) -> u64;
}

/// The host's monotonic clock. In Envoy this is WASI's `clock_time_get(MONOTONIC)`, answered from Envoy's own
/// monotonic time source: the same epoch in every worker VM.
#[derive(Debug, Clone, Copy, Default)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now_nanos(&self) -> u64 {
        monotonic_nanos()
    }
}

/// The host's monotonic clock in nanoseconds (in Envoy: one epoch for every worker VM).
#[cfg(target_os = "wasi")]
pub fn monotonic_nanos() -> u64 {
    #[allow(unsafe_code)] // a plain WASI call with no pointers from us; it cannot fail for the monotonic clock
    // SAFETY: clock_time_get only writes its own return value.
    let now = unsafe { wasi::clock_time_get(wasi::CLOCKID_MONOTONIC, 1) };
    now.unwrap_or(0)
}

/// The host's monotonic clock in nanoseconds (in Envoy: one epoch for every worker VM).
#[cfg(not(target_os = "wasi"))]
pub fn monotonic_nanos() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Wall-clock time in nanoseconds since the Unix epoch (0 if the host cannot tell: std's `SystemTime::now`
/// would panic there).
#[cfg(target_os = "wasi")]
pub fn unix_nanos() -> u64 {
    #[allow(unsafe_code)] // a plain WASI call with no pointers from us
    // SAFETY: clock_time_get only writes its own return value.
    let now = unsafe { wasi::clock_time_get(wasi::CLOCKID_REALTIME, 1) };
    now.unwrap_or(0)
}

/// Wall-clock time in nanoseconds since the Unix epoch.
#[cfg(not(target_os = "wasi"))]
pub fn unix_nanos() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// A clock that moves only when told to: for unit tests of time-dependent logic.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: Cell<u64>,
}

impl ManualClock {
    pub fn new(start_nanos: u64) -> Self {
        ManualClock { now: Cell::new(start_nanos) }
    }

    pub fn advance(&self, nanos: u64) {
        self.now.set(self.now.get().saturating_add(nanos));
    }

    pub fn set(&self, nanos: u64) {
        self.now.set(nanos);
    }
}

impl Clock for ManualClock {
    fn now_nanos(&self) -> u64 {
        self.now.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_clock_does_not_go_back() {
        let clock = MonotonicClock;
        let a = clock.now_nanos();
        let b = clock.now_nanos();
        assert!(b >= a);
    }

    #[test]
    fn manual_clock_moves_when_told() {
        let clock = ManualClock::new(5);
        assert_eq!(clock.now_nanos(), 5);
        clock.advance(10);
        assert_eq!(clock.now_nanos(), 15);
        clock.set(3);
        assert_eq!(clock.now_nanos(), 3);
        clock.advance(u64::MAX);
        assert_eq!(clock.now_nanos(), u64::MAX);
    }
}
