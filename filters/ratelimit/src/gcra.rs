//! GCRA decisions with `governor`, its state kept in shared data so that all workers share one bucket.
//!
//! governor stores a bucket's theoretical arrival time (TAT) relative to the limiter's start instant, which
//! would differ per worker VM. Our clock reads Envoy's monotonic clock (one epoch for all workers) and is at 0
//! when the limiter is built, so the limiter's start is that epoch and the stored TAT is absolute: every worker
//! reads and writes the same numbers.

use std::cell::Cell;
use std::num::NonZeroU32;
use std::rc::Rc;
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::{NoOpMiddleware, StateInformationMiddleware};
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

use crate::config::Limit;
use crate::store::{add_to_counter, decode_u64, CasMismatch, SharedStore, CREATE_CAS};

/// Gives up on a contended bucket after this many CAS failures in one decision (and admits: fail open).
const MAX_CAS_ATTEMPTS: u32 = 1000;

/// What one decision found out, besides the verdict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Effects {
    pub cas_retries: u32,
    /// This decision created the bucket (the caller tracks it, to remove it once idle).
    pub created: bool,
    /// The bucket did not exist and `max_keys` was reached: admitted without a bucket.
    pub overflow: bool,
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
#[derive(Debug, Clone, Default)]
struct RequestClock(Rc<Cell<u64>>);

impl Clock for RequestClock {
    type Instant = Nanos;
    fn now(&self) -> Nanos {
        Nanos::from(self.0.get())
    }
}

/// governor's state store over shared data.
struct SharedBuckets<S> {
    store: S,
    keys_counter: String,
    max_keys: u64,
    /// Shared with the [`Limiter`]: governor gives no access to its state store after construction.
    effects: Rc<Cell<Effects>>,
}

impl<S: SharedStore> StateStore for SharedBuckets<S> {
    type Key = String;

    fn measure_and_replace<T, F, E>(&self, key: &String, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut effects = Effects::default();
        let result = loop {
            let (value, cas) = self.store.get(key);
            let old = value.as_deref().and_then(decode_u64);
            effects.tat = old.unwrap_or(0);
            let (outcome, new_tat) = match f(old.map(Nanos::from)) {
                Ok(ok) => ok,
                Err(limited) => break Err(limited),
            };
            let creating = old.is_none();
            if creating && !add_to_counter(&self.store, &self.keys_counter, 1, self.max_keys, &mut effects.cas_retries)
            {
                effects.overflow = true;
                break Ok(outcome);
            }
            let write_cas = match (creating, cas) {
                (true, None) => CREATE_CAS,
                (_, Some(cas)) => cas,
                (false, None) => CREATE_CAS,
            };
            match self.store.compare_and_set(key, Some(&new_tat.as_u64().to_le_bytes()), write_cas) {
                Ok(()) => {
                    effects.created = creating;
                    effects.tat = new_tat.as_u64();
                    break Ok(outcome);
                }
                Err(CasMismatch) => {
                    if creating {
                        add_to_counter(&self.store, &self.keys_counter, -1, self.max_keys, &mut effects.cas_retries);
                    }
                    effects.cas_retries = effects.cas_retries.saturating_add(1);
                    if effects.cas_retries >= MAX_CAS_ATTEMPTS {
                        break Ok(outcome);
                    }
                }
            }
        };
        self.effects.set(effects);
        result
    }
}

/// One configured limit (`requests` per `per` with `burst`), deciding for any key.
pub struct Limiter<S: SharedStore> {
    limiter: RateLimiter<String, SharedBuckets<S>, RequestClock, StateInformationMiddleware>,
    clock: RequestClock,
    effects: Rc<Cell<Effects>>,
    emission_interval: Duration,
    burst: u32,
}

impl<S: SharedStore> Limiter<S> {
    /// `keys_counter` is the shared counter of live buckets, capped at `max_keys`.
    pub fn new(limit: &Limit, store: S, keys_counter: &str, max_keys: u32) -> Option<Self> {
        let burst = NonZeroU32::new(limit.burst())?;
        let quota = Quota::with_period(limit.emission_interval())?.allow_burst(burst);
        let clock = RequestClock::default(); // at 0: the limiter's start is the monotonic epoch
        let effects = Rc::new(Cell::new(Effects::default()));
        let buckets = SharedBuckets {
            store,
            keys_counter: keys_counter.to_string(),
            max_keys: u64::from(max_keys),
            effects: effects.clone(),
        };
        let limiter = RateLimiter::<String, _, _, NoOpMiddleware<Nanos>>::new(quota, buckets, clock.clone())
            .with_middleware::<StateInformationMiddleware>();
        Some(Limiter { limiter, clock, effects, emission_interval: limit.emission_interval(), burst: burst.get() })
    }

    /// Decides for `key` at `now` (monotonic nanoseconds), consuming one request when allowed.
    pub fn check(&self, key: &String, now: u64) -> Decision {
        self.clock.0.set(now);
        let verdict = match self.limiter.check_key(key) {
            Ok(snapshot) => Verdict::Allowed { remaining: snapshot.remaining_burst_capacity() },
            Err(not_until) => Verdict::Limited { retry_after: not_until.wait_time_from(Nanos::from(now)) },
        };
        let effects = self.effects.get();
        let reset_after = match verdict {
            _ if effects.overflow => Duration::ZERO,
            _ => Duration::from_nanos(effects.tat.saturating_sub(now)),
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

/// Removes the buckets among `keys` that are idle at `now`; returns the keys that are still live.
pub fn sweep<S: SharedStore>(store: &S, keys_counter: &str, keys: Vec<String>, now: u64) -> Vec<String> {
    let mut live = Vec::with_capacity(keys.len());
    let mut retries = 0;
    for key in keys {
        let (value, cas) = store.get(&key);
        let Some(tat) = value.as_deref().and_then(decode_u64) else { continue };
        let removed = Limiter::<S>::is_idle(tat, now)
            && cas.is_some_and(|cas| store.compare_and_set(&key, None, cas).is_ok())
            && add_to_counter(store, keys_counter, -1, u64::MAX, &mut retries);
        if !removed {
            live.push(key);
        }
    }
    live
}

// governor's Reference trait is what makes Nanos usable as the clock's instant.
const _: fn() = || {
    fn is_reference<T: Reference>() {}
    is_reference::<Nanos>();
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{read_counter, reserve_create_cas, MemoryStore};
    use shared::DurationStr;

    const SECOND: u64 = 1_000_000_000;

    fn limit(requests: u32, per: Duration, burst: Option<u32>) -> Limit {
        Limit { requests, per: DurationStr(per), burst }
    }

    fn store() -> MemoryStore {
        let store = MemoryStore::default();
        reserve_create_cas(&store, "t:");
        store
    }

    #[test]
    fn admits_the_burst_then_the_rate() {
        let store = store();
        let l = Limiter::new(&limit(10, Duration::from_secs(1), Some(3)), store, "t:keys", 100).unwrap();
        let key = "k".to_string();
        let start = 50 * SECOND;
        let verdicts: Vec<_> = (0..4).map(|_| l.check(&key, start).verdict).collect();
        assert_eq!(verdicts[0], Verdict::Allowed { remaining: 2 });
        assert_eq!(verdicts[2], Verdict::Allowed { remaining: 0 });
        assert_eq!(verdicts[3], Verdict::Limited { retry_after: Duration::from_millis(100) });
        // One emission interval later, exactly one more.
        assert!(matches!(l.check(&key, start + SECOND / 10).verdict, Verdict::Allowed { .. }));
        assert!(matches!(l.check(&key, start + SECOND / 10).verdict, Verdict::Limited { .. }));
    }

    #[test]
    fn admitted_count_over_time_is_rate_times_time_plus_burst() {
        let store = store();
        let l = Limiter::new(&limit(100, Duration::from_secs(1), Some(20)), store, "t:keys", 100).unwrap();
        let key = "k".to_string();
        let start = 7 * SECOND;
        // 10 attempts per millisecond for 3 seconds.
        let admitted = (0..30_000u64)
            .filter(|i| matches!(l.check(&key, start + i * SECOND / 10_000).verdict, Verdict::Allowed { .. }))
            .count();
        assert!((319..=320).contains(&admitted), "admitted {admitted}, expected 100*3 + 20");
    }

    #[test]
    fn workers_share_one_bucket() {
        // Two limiters built at different times (two worker VMs) over one shared store.
        let store = store();
        let lim = limit(2, Duration::from_secs(1), None);
        let a = Limiter::new(&lim, store.clone(), "t:keys", 100).unwrap();
        let b = Limiter::new(&lim, store.clone(), "t:keys", 100).unwrap();
        let key = "k".to_string();
        let now = 100 * SECOND;
        assert!(matches!(a.check(&key, now).verdict, Verdict::Allowed { .. }));
        assert!(matches!(b.check(&key, now).verdict, Verdict::Allowed { .. }));
        assert!(matches!(a.check(&key, now).verdict, Verdict::Limited { .. }));
        assert!(matches!(b.check(&key, now).verdict, Verdict::Limited { .. }));
        assert_eq!(read_counter(&store, "t:keys"), 1);
    }

    #[test]
    fn creation_and_reset_are_reported() {
        let store = store();
        let l = Limiter::new(&limit(1, Duration::from_secs(2), Some(2)), store, "t:keys", 100).unwrap();
        let key = "k".to_string();
        let first = l.check(&key, 10 * SECOND);
        assert!(first.effects.created);
        assert_eq!(first.reset_after, Duration::from_secs(2));
        let second = l.check(&key, 10 * SECOND);
        assert!(!second.effects.created);
        assert_eq!(second.reset_after, Duration::from_secs(4));
        let third = l.check(&key, 10 * SECOND);
        assert_eq!(third.verdict, Verdict::Limited { retry_after: Duration::from_secs(2) });
        assert_eq!(third.reset_after, Duration::from_secs(4));
    }

    #[test]
    fn keys_past_the_cap_fail_open_without_a_bucket() {
        let store = store();
        let l = Limiter::new(&limit(1, Duration::from_secs(60), None), store.clone(), "t:keys", 2).unwrap();
        let now = 5 * SECOND;
        for key in ["a", "b"] {
            assert!(l.check(&key.to_string(), now).effects.created);
        }
        for _ in 0..3 {
            let over = l.check(&"c".to_string(), now);
            assert!(over.effects.overflow);
            assert!(matches!(over.verdict, Verdict::Allowed { .. }));
        }
        assert_eq!(read_counter(&store, "t:keys"), 2);
        // Existing keys are still limited.
        assert!(matches!(l.check(&"a".to_string(), now).verdict, Verdict::Limited { .. }));
    }

    #[test]
    fn idle_buckets_are_swept_and_live_ones_kept() {
        let store = store();
        let l = Limiter::new(&limit(1, Duration::from_secs(1), None), store.clone(), "t:keys", 10).unwrap();
        let now = 3 * SECOND;
        l.check(&"old".to_string(), now);
        l.check(&"new".to_string(), now + SECOND / 2);
        assert_eq!(read_counter(&store, "t:keys"), 2);
        let live = sweep(&store, "t:keys", vec!["old".into(), "new".into(), "gone".into()], now + SECOND);
        assert_eq!(live, vec!["new".to_string()]);
        assert_eq!(read_counter(&store, "t:keys"), 1);
        assert_eq!(store.len_nonempty(), 3, "reserve, counter and the live bucket");
        // A swept key starts fresh.
        assert!(l.check(&"old".to_string(), now + SECOND).effects.created);
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
            fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
                self.inner.get(key)
            }
            fn compare_and_set(&self, key: &str, value: Option<&[u8]>, cas: u32) -> Result<(), CasMismatch> {
                if key == "k" && !self.raced.replace(true) {
                    // B's write: TAT far in the future (bucket exhausted).
                    self.inner.compare_and_set("k", Some(&(1000 * SECOND).to_le_bytes()), 0).unwrap();
                }
                self.inner.compare_and_set(key, value, cas)
            }
        }
        let racing = Racing { inner: store(), raced: Cell::new(false) };
        let l = Limiter::new(&limit(1, Duration::from_secs(1), None), racing, "t:keys", 10).unwrap();
        let decision = l.check(&"k".to_string(), SECOND);
        assert!(matches!(decision.verdict, Verdict::Limited { .. }), "{decision:?}");
        assert_eq!(decision.effects.cas_retries, 1);
    }
}
