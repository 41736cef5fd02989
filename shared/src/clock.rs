//! Time: Envoy's monotonic clock (shared by all workers, so usable as a common epoch in shared data) and the wall
//! clock, as the host layer gives them to the filters ([`crate::host::Host::monotonic_nanos`], `unix_nanos`).

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_read() {
        let a = monotonic_nanos();
        assert!(monotonic_nanos() >= a);
        assert!(unix_nanos() > 1_600_000_000_000_000_000);
    }
}
