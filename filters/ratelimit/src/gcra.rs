//! GCRA decisions with `governor`, its state kept in shared data so that all workers share one bucket.
//!
//! governor stores a bucket's theoretical arrival time (TAT) relative to the limiter's start instant, which
//! would differ per worker VM. Our clock reads Envoy's monotonic clock (one epoch for all workers) and is at 0
//! when the limiter is built, so the limiter's start is that epoch and the stored TAT is absolute: every worker
//! reads and writes the same numbers.
//!
//! The store comes with each decision (the host is only lent to a callback), so governor's `RateLimiter` is put
//! together per decision around it: that costs a few integer operations and no allocation.

use std::cell::Cell;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use shared::store::{SharedStore, CREATE_CAS};
use shared::HostError;

use crate::config::Limit;
use crate::store::{add_to_counter, decode_u64, MAX_CAS_ATTEMPTS};

/// What one decision found out, besides the verdict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Effects {
    pub cas_retries: u32,
    /// This decision created the bucket (the caller tracks it, to remove it once idle).
    pub created: bool,
    /// The bucket did not exist and `max_keys` was reached: admitted without a bucket.
    pub overflow: bool,
    /// Shared data failed (or a bucket stayed contended past every retry): admitted without a decision, like an
    /// overflow (fail open).
    pub store_error: Option<HostError>,
    /// The bucket's TAT after the decision (absolute monotonic nanoseconds).
    pub tat: u64,
}

/// The verdict of one limit for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed { remaining: u32 },
    Limited { retry_after: Duration },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// Until the bucket is full again.
    pub reset_after: Duration,
    pub effects: Effects,
}

/// The request's time, set before each decision.
#[derive(Debug, Clone, Copy)]
struct RequestClock<'a>(&'a Cell<u64>);

impl Clock for RequestClock<'_> {
    type Instant = Nanos;
    fn now(&self) -> Nanos {
        Nanos::from(self.0.get())
    }
}

/// governor's state store over shared data, for one decision.
struct SharedBuckets<'a> {
    store: &'a dyn SharedStore,
    keys_counter: &'a str,
    max_keys: u64,
    effects: &'a Cell<Effects>,
}

impl SharedBuckets<'_> {
    /// Takes back a key slot reserved for a bucket that was not written after all. A failure leaves the count
    /// one too high until the next reload; it is reported like any store error.
    fn release_slot(&self, effects: &mut Effects) {
        if let Err(err) = add_to_counter(self.store, self.keys_counter, -1, self.max_keys, &mut effects.cas_retries) {
            effects.store_error.get_or_insert(err);
        }
    }
}

impl StateStore for SharedBuckets<'_> {
    type Key = String;

    fn measure_and_replace<T, F, E>(&self, key: &String, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut effects = Effects::default();
        let result = loop {
            let (value, cas) = match self.store.get(key) {
                Ok(found) => found,
                Err(err) => {
                    // No state to decide on: admit as a fresh bucket would, without writing (fail open).
                    effects.store_error = Some(err);
                    break f(None).map(|(outcome, _)| outcome);
                }
            };
            let old = value.as_deref().and_then(decode_u64);
            effects.tat = old.unwrap_or(0);
            let (outcome, new_tat) = match f(old.map(Nanos::from)) {
                Ok(ok) => ok,
                Err(limited) => break Err(limited),
            };
            let creating = old.is_none();
            if creating {
                match add_to_counter(self.store, self.keys_counter, 1, self.max_keys, &mut effects.cas_retries) {
                    Ok(true) => {}
                    Ok(false) => {
                        effects.overflow = true;
                        break Ok(outcome);
                    }
                    Err(err) => {
                        effects.store_error = Some(err);
                        break Ok(outcome);
                    }
                }
            }
            // A key that never existed is created race-free (see shared::store); an emptied one has a CAS.
            let write_cas = cas.unwrap_or(CREATE_CAS);
            match self.store.compare_and_set(key, Some(&new_tat.as_u64().to_le_bytes()), write_cas) {
                Ok(()) => {
                    effects.created = creating;
                    effects.tat = new_tat.as_u64();
                    break Ok(outcome);
                }
                Err(HostError::CasMismatch) => {
                    if creating {
                        self.release_slot(&mut effects);
                    }
                    effects.cas_retries = effects.cas_retries.saturating_add(1);
                    if effects.cas_retries >= MAX_CAS_ATTEMPTS {
                        effects.store_error.get_or_insert(HostError::CasMismatch);
                        break Ok(outcome);
                    }
                    if effects.store_error.is_some() {
                        break Ok(outcome);
                    }
                }
                Err(err) => {
                    if creating {
                        self.release_slot(&mut effects);
                    }
                    effects.store_error = Some(err);
                    break Ok(outcome);
                }
            }
        };
        self.effects.set(effects);
        result
    }
}

/// One configured limit (`requests` per `per` with `burst`), deciding for any key.
pub struct Limiter {
    quota: Quota,
    keys_counter: String,
    max_keys: u64,
    emission_interval: Duration,
    burst: u32,
}

impl Limiter {
    /// `keys_counter` is the shared counter of live buckets, capped at `max_keys`.
    pub fn new(limit: &Limit, keys_counter: &str, max_keys: u32) -> Option<Self> {
        let burst = NonZeroU32::new(limit.burst())?;
        let quota = Quota::with_period(limit.emission_interval())?.allow_burst(burst);
        Some(Limiter {
            quota,
            keys_counter: keys_counter.to_string(),
            max_keys: u64::from(max_keys),
            emission_interval: limit.emission_interval(),
            burst: burst.get(),
        })
    }

    /// Decides for `key` at `now` (monotonic nanoseconds) against the buckets in `store`, consuming one request
    /// when allowed.
    pub fn check(&self, store: &dyn SharedStore, key: &String, now: u64) -> Decision {
        let time = Cell::new(0); // at 0 while governor reads its start: the start is the monotonic epoch
        let effects = Cell::new(Effects::default());
        let buckets =
            SharedBuckets { store, keys_counter: &self.keys_counter, max_keys: self.max_keys, effects: &effects };
        let limiter =
            RateLimiter::<String, _, _, StateInformationMiddleware>::new(self.quota, buckets, RequestClock(&time));
        time.set(now);
        let verdict = match limiter.check_key(key) {
            Ok(snapshot) => Verdict::Allowed { remaining: snapshot.remaining_burst_capacity() },
            Err(not_until) => Verdict::Limited { retry_after: not_until.wait_time_from(Nanos::from(now)) },
        };
        let effects = effects.get();
        let reset_after = if effects.overflow || effects.store_error.is_some() {
            Duration::ZERO
        } else {
            Duration::from_nanos(effects.tat.saturating_sub(now))
        };
        Decision { verdict, reset_after, effects }
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// `true` when a bucket's stored TAT says it is full again: removing it changes nothing.
    pub fn is_idle(tat: u64, now: u64) -> bool {
        Nanos::from(tat) <= Nanos::from(now)
    }

    pub fn emission_interval(&self) -> Duration {
        self.emission_interval
    }
}

/// What a sweep left: the buckets still live, and the first shared-data error (the sweep stops there and keeps
/// the rest for the next tick).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    pub live: Vec<String>,
    pub error: Option<HostError>,
}

/// Removes the buckets among `keys` that are idle at `now`.
pub fn sweep(store: &dyn SharedStore, keys_counter: &str, keys: Vec<String>, now: u64) -> Sweep {
    let mut outcome = Sweep { live: Vec::with_capacity(keys.len()), error: None };
    let mut retries = 0;
    for key in keys {
        if outcome.error.is_some() {
            outcome.live.push(key);
            continue;
        }
        let (value, cas) = match store.get(&key) {
            Ok(found) => found,
            Err(err) => {
                outcome.error = Some(err);
                outcome.live.push(key);
                continue;
            }
        };
        let Some(tat) = value.as_deref().and_then(decode_u64) else { continue };
        let Some(cas) = cas.filter(|_| Limiter::is_idle(tat, now)) else {
            outcome.live.push(key);
            continue;
        };
        match store.compare_and_set(&key, None, cas) {
            // Used again since the read: still live.
            Err(HostError::CasMismatch) => outcome.live.push(key),
            Err(err) => {
                outcome.error = Some(err);
                outcome.live.push(key);
            }
            // Emptied: the key is gone whatever happens to the count.
            Ok(()) => {
                if let Err(err) = add_to_counter(store, keys_counter, -1, u64::MAX, &mut retries) {
                    outcome.error = Some(err);
                }
            }
        }
    }
    outcome
}

// governor's Reference trait is what makes Nanos usable as the clock's instant.
const _: fn() = || {
    fn is_reference<T: Reference>() {}
    is_reference::<Nanos>();
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::read_counter;
    use shared::host::FakeHost;
    use shared::store::{reserve_create_cas, MemoryStore};
    use shared::{DurationStr, HostResult};

    const SECOND: u64 = 1_000_000_000;

    fn limit(requests: u32, per: Duration, burst: Option<u32>) -> Limit {
        Limit { requests, per: DurationStr(per), burst }
    }

    fn store() -> MemoryStore {
        let store = MemoryStore::default();
        reserve_create_cas(&store, "t:").unwrap();
        store
    }

    #[test]
    fn admits_the_burst_then_the_rate() {
        let store = store();
        let l = Limiter::new(&limit(10, Duration::from_secs(1), Some(3)), "t:keys", 100).unwrap();
        let key = "k".to_string();
        let start = 50 * SECOND;
        let verdicts: Vec<_> = (0..4).map(|_| l.check(&store, &key, start).verdict).collect();
        assert_eq!(verdicts[0], Verdict::Allowed { remaining: 2 });
        assert_eq!(verdicts[2], Verdict::Allowed { remaining: 0 });
        assert_eq!(verdicts[3], Verdict::Limited { retry_after: Duration::from_millis(100) });
        // One emission interval later, exactly one more.
        assert!(matches!(l.check(&store, &key, start + SECOND / 10).verdict, Verdict::Allowed { .. }));
        assert!(matches!(l.check(&store, &key, start + SECOND / 10).verdict, Verdict::Limited { .. }));
    }

    #[test]
    fn admitted_count_over_time_is_rate_times_time_plus_burst() {
        let store = store();
        let l = Limiter::new(&limit(100, Duration::from_secs(1), Some(20)), "t:keys", 100).unwrap();
        let key = "k".to_string();
        let start = 7 * SECOND;
        // 10 attempts per millisecond for 3 seconds.
        let admitted = (0..30_000u64)
            .filter(|i| matches!(l.check(&store, &key, start + i * SECOND / 10_000).verdict, Verdict::Allowed { .. }))
            .count();
        assert!((319..=320).contains(&admitted), "admitted {admitted}, expected 100*3 + 20");
    }

    #[test]
    fn workers_share_one_bucket() {
        // Two limiters built at different times (two worker VMs) over one shared store.
        let store = store();
        let lim = limit(2, Duration::from_secs(1), None);
        let a = Limiter::new(&lim, "t:keys", 100).unwrap();
        let b = Limiter::new(&lim, "t:keys", 100).unwrap();
        let key = "k".to_string();
        let now = 100 * SECOND;
        assert!(matches!(a.check(&store, &key, now).verdict, Verdict::Allowed { .. }));
        assert!(matches!(b.check(&store, &key, now).verdict, Verdict::Allowed { .. }));
        assert!(matches!(a.check(&store, &key, now).verdict, Verdict::Limited { .. }));
        assert!(matches!(b.check(&store, &key, now).verdict, Verdict::Limited { .. }));
        assert_eq!(read_counter(&store, "t:keys"), Ok(1));
    }

    #[test]
    fn creation_and_reset_are_reported() {
        let store = store();
        let l = Limiter::new(&limit(1, Duration::from_secs(2), Some(2)), "t:keys", 100).unwrap();
        let key = "k".to_string();
        let first = l.check(&store, &key, 10 * SECOND);
        assert!(first.effects.created);
        assert_eq!(first.reset_after, Duration::from_secs(2));
        let second = l.check(&store, &key, 10 * SECOND);
        assert!(!second.effects.created);
        assert_eq!(second.reset_after, Duration::from_secs(4));
        let third = l.check(&store, &key, 10 * SECOND);
        assert_eq!(third.verdict, Verdict::Limited { retry_after: Duration::from_secs(2) });
        assert_eq!(third.reset_after, Duration::from_secs(4));
    }

    #[test]
    fn keys_past_the_cap_fail_open_without_a_bucket() {
        let store = store();
        let l = Limiter::new(&limit(1, Duration::from_secs(60), None), "t:keys", 2).unwrap();
        let now = 5 * SECOND;
        for key in ["a", "b"] {
            assert!(l.check(&store, &key.to_string(), now).effects.created);
        }
        for _ in 0..3 {
            let over = l.check(&store, &"c".to_string(), now);
            assert!(over.effects.overflow);
            assert!(matches!(over.verdict, Verdict::Allowed { .. }));
        }
        assert_eq!(read_counter(&store, "t:keys"), Ok(2));
        // Existing keys are still limited.
        assert!(matches!(l.check(&store, &"a".to_string(), now).verdict, Verdict::Limited { .. }));
    }

    #[test]
    fn idle_buckets_are_swept_and_live_ones_kept() {
        let store = store();
        let l = Limiter::new(&limit(1, Duration::from_secs(1), None), "t:keys", 10).unwrap();
        let now = 3 * SECOND;
        l.check(&store, &"old".to_string(), now);
        l.check(&store, &"new".to_string(), now + SECOND / 2);
        assert_eq!(read_counter(&store, "t:keys"), Ok(2));
        let swept = sweep(&store, "t:keys", vec!["old".into(), "new".into(), "gone".into()], now + SECOND);
        assert_eq!(swept, Sweep { live: vec!["new".to_string()], error: None });
        assert_eq!(read_counter(&store, "t:keys"), Ok(1));
        assert_eq!(store.len_nonempty(), 3, "reserve, counter and the live bucket");
        // A swept key starts fresh.
        assert!(l.check(&store, &"old".to_string(), now + SECOND).effects.created);
    }

    #[test]
    fn a_sweep_that_cannot_read_keeps_every_key_for_the_next_tick() {
        let host = FakeHost::default();
        reserve_create_cas(&host, "t:").unwrap();
        let l = Limiter::new(&limit(1, Duration::from_secs(1), None), "t:keys", 10).unwrap();
        l.check(&host, &"a".to_string(), SECOND);
        host.fail("shared_get", HostError::InternalFailure);
        let swept = sweep(&host, "t:keys", vec!["a".into(), "b".into()], 10 * SECOND);
        assert_eq!(
            swept,
            Sweep { live: vec!["a".to_string(), "b".to_string()], error: Some(HostError::InternalFailure) }
        );
        assert_eq!(read_counter(&host.store, "t:keys"), Ok(1));
    }

    #[test]
    fn shared_data_failures_admit_without_a_decision() {
        let host = FakeHost::default();
        reserve_create_cas(&host, "t:").unwrap();
        let l = Limiter::new(&limit(1, Duration::from_secs(60), None), "t:keys", 10).unwrap();
        let key = "k".to_string();
        assert!(matches!(l.check(&host, &key, SECOND).verdict, Verdict::Allowed { .. }));
        assert!(matches!(l.check(&host, &key, SECOND).verdict, Verdict::Limited { .. }));
        // Reads fail: admitted (fail open), reported, nothing written.
        host.fail("shared_get", HostError::InternalFailure);
        let decision = l.check(&host, &key, SECOND);
        assert_eq!(decision.verdict, Verdict::Allowed { remaining: 0 });
        assert_eq!(decision.effects.store_error, Some(HostError::InternalFailure));
        assert_eq!(decision.reset_after, Duration::ZERO);
        // Writes fail for a new key: admitted, reported, nothing written (not even its key slot).
        host.failures.borrow_mut().clear();
        host.fail("shared_set", HostError::BadArgument);
        let decision = l.check(&host, &"new".to_string(), SECOND);
        assert!(matches!(decision.verdict, Verdict::Allowed { .. }));
        assert_eq!(decision.effects.store_error, Some(HostError::BadArgument));
        assert!(!decision.effects.created);
        assert_eq!(read_counter(&host.store, "t:keys"), Ok(1), "only the first bucket counts");
        assert_eq!(host.store.get("new"), Ok((None, None)));
    }

    #[test]
    fn a_lost_creation_race_is_retried_against_the_winner() {
        // Simulate worker B creating the bucket between worker A's read and write: A's CREATE_CAS write must
        // fail, and A must then count against B's state.
        struct Racing {
            inner: MemoryStore,
            raced: Cell<bool>,
        }
        impl SharedStore for Racing {
            fn get(&self, key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)> {
                self.inner.get(key)
            }
            fn compare_and_set(&self, key: &str, value: Option<&[u8]>, cas: u32) -> HostResult<()> {
                if key == "k" && !self.raced.replace(true) {
                    // B's write: TAT far in the future (bucket exhausted).
                    self.inner.compare_and_set("k", Some(&(1000 * SECOND).to_le_bytes()), 0)?;
                }
                self.inner.compare_and_set(key, value, cas)
            }
        }
        let racing = Racing { inner: store(), raced: Cell::new(false) };
        let l = Limiter::new(&limit(1, Duration::from_secs(1), None), "t:keys", 10).unwrap();
        let decision = l.check(&racing, &"k".to_string(), SECOND);
        assert!(matches!(decision.verdict, Verdict::Limited { .. }), "{decision:?}");
        assert_eq!(decision.effects.cas_retries, 1);
        assert_eq!(decision.effects.store_error, None);
        assert_eq!(read_counter(&racing.inner, "t:keys"), Ok(0), "the lost creation gave its key slot back");
    }
}
