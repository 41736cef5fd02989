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
use std::hash::{DefaultHasher, Hash, Hasher};
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
    /// This decision wrote a slot that had never been written: one more shared-data entry (at most `max_keys`).
    pub new_slot: bool,
    /// Every slot the key may use held another key's live bucket: admitted without a bucket (fail open).
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

/// How many neighbouring slots a key may use: a key whose slots all hold other keys' live buckets is admitted
/// without a bucket (`key_overflow`). Each decision reads at most this many slots (one when the key sits in its
/// first slot, the usual case).
pub const PROBES: u64 = 4;

/// Bytes of a slot's value: the bucket key's 64-bit hash (to tell keys apart) and its TAT.
const SLOT_BYTES: usize = 16;

/// A plugin's fixed table of `count` bucket slots in shared data (`<prefix>slot:<n>`, n < count). Envoy never
/// deletes a shared-data key, so the table never uses other keys: a key is written the first time a bucket
/// lands in its slot and reused forever after. A slot whose bucket is idle (TAT not after now) is free: its
/// bucket is full again, so handing the slot to another key loses nothing and no sweep is needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotTable {
    prefix: String,
    count: u64,
    /// Shared count of slots ever written (shared-data entries this table holds), for the `slots` gauge.
    used_counter: String,
}

impl SlotTable {
    /// `prefix` namespaces the plugin's keys; `count` is `max_keys`.
    pub fn new(prefix: &str, count: u32) -> Self {
        SlotTable {
            prefix: format!("{prefix}slot:"),
            count: u64::from(count.max(1)),
            used_counter: format!("{prefix}slots"),
        }
    }

    /// The shared counter of slots written at least once.
    pub fn used_counter(&self) -> &str {
        &self.used_counter
    }

    fn slot_key(&self, hash: u64, probe: u64) -> String {
        format!("{}{}", self.prefix, hash.wrapping_add(probe) % self.count)
    }
}

/// The 64-bit identity of a bucket key. SipHash with fixed keys: the same in every worker VM (they run the
/// same binary) and in the VMs a reload creates, so buckets survive reloads.
pub fn key_hash(key: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

fn encode_slot(hash: u64, tat: u64) -> [u8; SLOT_BYTES] {
    let mut bytes = [0u8; SLOT_BYTES];
    let (h, t) = bytes.split_at_mut(8);
    h.copy_from_slice(&hash.to_le_bytes());
    t.copy_from_slice(&tat.to_le_bytes());
    bytes
}

fn decode_slot(bytes: &[u8]) -> Option<(u64, u64)> {
    let (hash, tat) = bytes.split_at_checked(8)?;
    Some((decode_u64(hash)?, decode_u64(tat)?))
}

/// governor's state store over the slot table, for one decision.
struct SharedBuckets<'a> {
    store: &'a dyn SharedStore,
    table: &'a SlotTable,
    now: u64,
    effects: &'a Cell<Effects>,
}

/// Where a key's bucket goes: its slot key, the slot's CAS and the key's TAT if the slot holds its bucket.
type Place = (String, Option<u32>, Option<u64>);

impl SharedBuckets<'_> {
    /// The slot holding `hash`'s bucket among its probes, else the first free one (never written, emptied,
    /// unreadable as a slot, or idle); `None` when every probe holds another key's live bucket.
    fn find(&self, hash: u64) -> Result<Option<Place>, HostError> {
        let mut free = None;
        for probe in 0..PROBES.min(self.table.count) {
            let slot = self.table.slot_key(hash, probe);
            let (value, cas) = self.store.get(&slot)?;
            match value.as_deref().and_then(decode_slot) {
                // The key's own bucket wins over any free slot before it, or the key could get a second bucket.
                Some((owner, tat)) if owner == hash => return Ok(Some((slot, cas, Some(tat)))),
                Some((_, tat)) if !Limiter::is_idle(tat, self.now) => {}
                _ => {
                    free.get_or_insert((slot, cas, None));
                }
            }
        }
        Ok(free)
    }
}

impl StateStore for SharedBuckets<'_> {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut effects = Effects::default();
        let hash = *key;
        let result = loop {
            let (slot, cas, old) = match self.find(hash) {
                Ok(Some(place)) => place,
                Ok(None) => {
                    effects.overflow = true;
                    break f(None).map(|(outcome, _)| outcome);
                }
                Err(err) => {
                    // No state to decide on: admit as a fresh bucket would, without writing (fail open).
                    effects.store_error = Some(err);
                    break f(None).map(|(outcome, _)| outcome);
                }
            };
            effects.tat = old.unwrap_or(0);
            let (outcome, new_tat) = match f(old.map(Nanos::from)) {
                Ok(ok) => ok,
                Err(limited) => break Err(limited),
            };
            // A slot that never existed is created race-free (see shared::store); any other has a CAS.
            let value = encode_slot(hash, new_tat.as_u64());
            match self.store.compare_and_set(&slot, Some(&value), cas.unwrap_or(CREATE_CAS)) {
                Ok(()) => {
                    effects.tat = new_tat.as_u64();
                    effects.new_slot = cas.is_none();
                    break Ok(outcome);
                }
                // Another worker wrote the slot since the read: look again (it may now hold this key).
                Err(HostError::CasMismatch) => {
                    effects.cas_retries = effects.cas_retries.saturating_add(1);
                    if effects.cas_retries >= MAX_CAS_ATTEMPTS {
                        effects.store_error.get_or_insert(HostError::CasMismatch);
                        break Ok(outcome);
                    }
                }
                Err(err) => {
                    effects.store_error = Some(err);
                    break Ok(outcome);
                }
            }
        };
        if effects.new_slot {
            // Only feeds the `slots` gauge: a failure leaves it one short and decides nothing.
            let mut retries = 0;
            if let Err(err) = add_to_counter(self.store, &self.table.used_counter, 1, u64::MAX, &mut retries) {
                log::debug!("ratelimit: cannot count a new slot: shared data failed ({err})");
            }
        }
        self.effects.set(effects);
        result
    }
}

/// One configured limit (`requests` per `per` with `burst`), deciding for any key.
pub struct Limiter {
    quota: Quota,
    table: SlotTable,
    emission_interval: Duration,
    burst: u32,
}

impl Limiter {
    /// Buckets live in `table`, shared by every limit of the plugin.
    pub fn new(limit: &Limit, table: &SlotTable) -> Option<Self> {
        let burst = NonZeroU32::new(limit.burst())?;
        let quota = Quota::with_period(limit.emission_interval())?.allow_burst(burst);
        Some(Limiter { quota, table: table.clone(), emission_interval: limit.emission_interval(), burst: burst.get() })
    }

    /// Decides for `key` at `now` (monotonic nanoseconds) against the buckets in `store`, consuming one request
    /// when allowed.
    pub fn check(&self, store: &dyn SharedStore, key: &str, now: u64) -> Decision {
        self.check_identity(store, key_hash(key), now)
    }

    /// The same for a bucket known by its identity (`key::bucket_hash`).
    pub fn check_identity(&self, store: &dyn SharedStore, identity: u64, now: u64) -> Decision {
        let time = Cell::new(0); // at 0 while governor reads its start: the start is the monotonic epoch
        let effects = Cell::new(Effects::default());
        let buckets = SharedBuckets { store, table: &self.table, now, effects: &effects };
        let limiter =
            RateLimiter::<u64, _, _, StateInformationMiddleware>::new(self.quota, buckets, RequestClock(&time));
        time.set(now);
        let verdict = match limiter.check_key(&identity) {
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
    use std::collections::HashMap;

    const SECOND: u64 = 1_000_000_000;

    fn limit(requests: u32, per: Duration, burst: Option<u32>) -> Limit {
        Limit { requests, per: DurationStr(per), burst }
    }

    fn store() -> MemoryStore {
        let store = MemoryStore::default();
        reserve_create_cas(&store, "t:").unwrap();
        store
    }

    fn table(slots: u32) -> SlotTable {
        SlotTable::new("t:", slots)
    }

    fn allowed(decision: &Decision) -> bool {
        matches!(decision.verdict, Verdict::Allowed { .. })
    }

    #[test]
    fn admits_the_burst_then_the_rate() {
        let store = store();
        let l = Limiter::new(&limit(10, Duration::from_secs(1), Some(3)), &table(100)).unwrap();
        let key = "k".to_string();
        let start = 50 * SECOND;
        let verdicts: Vec<_> = (0..4).map(|_| l.check(&store, &key, start).verdict).collect();
        assert_eq!(verdicts[0], Verdict::Allowed { remaining: 2 });
        assert_eq!(verdicts[2], Verdict::Allowed { remaining: 0 });
        assert_eq!(verdicts[3], Verdict::Limited { retry_after: Duration::from_millis(100) });
        // One emission interval later, exactly one more.
        assert!(allowed(&l.check(&store, &key, start + SECOND / 10)));
        assert!(!allowed(&l.check(&store, &key, start + SECOND / 10)));
    }

    #[test]
    fn admitted_count_over_time_is_rate_times_time_plus_burst() {
        let store = store();
        let l = Limiter::new(&limit(100, Duration::from_secs(1), Some(20)), &table(100)).unwrap();
        let key = "k".to_string();
        let start = 7 * SECOND;
        // 10 attempts per millisecond for 3 seconds.
        let admitted = (0..30_000u64).filter(|i| allowed(&l.check(&store, &key, start + i * SECOND / 10_000))).count();
        assert!((319..=320).contains(&admitted), "admitted {admitted}, expected 100*3 + 20");
    }

    #[test]
    fn workers_share_one_bucket() {
        // Two limiters built at different times (two worker VMs) over one shared store.
        let store = store();
        let lim = limit(2, Duration::from_secs(1), None);
        let a = Limiter::new(&lim, &table(100)).unwrap();
        let b = Limiter::new(&lim, &table(100)).unwrap();
        let key = "k".to_string();
        let now = 100 * SECOND;
        assert!(allowed(&a.check(&store, &key, now)));
        assert!(allowed(&b.check(&store, &key, now)));
        assert!(!allowed(&a.check(&store, &key, now)));
        assert!(!allowed(&b.check(&store, &key, now)));
        assert_eq!(read_counter(&store, "t:slots"), Ok(1));
    }

    #[test]
    fn new_slots_and_reset_are_reported() {
        let store = store();
        let l = Limiter::new(&limit(1, Duration::from_secs(2), Some(2)), &table(100)).unwrap();
        let key = "k".to_string();
        let first = l.check(&store, &key, 10 * SECOND);
        assert!(first.effects.new_slot);
        assert_eq!(first.reset_after, Duration::from_secs(2));
        let second = l.check(&store, &key, 10 * SECOND);
        assert!(!second.effects.new_slot);
        assert_eq!(second.reset_after, Duration::from_secs(4));
        let third = l.check(&store, &key, 10 * SECOND);
        assert_eq!(third.verdict, Verdict::Limited { retry_after: Duration::from_secs(2) });
        assert_eq!(third.reset_after, Duration::from_secs(4));
    }

    #[test]
    fn keys_past_the_table_fail_open_without_a_bucket() {
        let store = store();
        let l = Limiter::new(&limit(1, Duration::from_secs(60), None), &table(2)).unwrap();
        let now = 5 * SECOND;
        for key in ["a", "b"] {
            assert!(l.check(&store, key, now).effects.new_slot);
        }
        for _ in 0..3 {
            let over = l.check(&store, "c", now);
            assert!(over.effects.overflow);
            assert!(allowed(&over));
        }
        assert_eq!(read_counter(&store, "t:slots"), Ok(2));
        // Existing keys are still limited.
        assert!(!allowed(&l.check(&store, "a", now)));
    }

    #[test]
    fn idle_slots_are_reused_so_shared_data_never_grows_past_the_table() {
        let store = store();
        let l = Limiter::new(&limit(1, Duration::from_secs(1), None), &table(50)).unwrap();
        let mut overflows = 0;
        // 100,000 distinct keys, 100 a second: at most 100 live at once, in 50 slots.
        for i in 0..100_000u64 {
            let decision = l.check(&store, &format!("client-{i}"), 10 * SECOND + i * SECOND / 100);
            assert!(allowed(&decision));
            overflows += u64::from(decision.effects.overflow);
        }
        assert!(overflows > 0 && overflows < 100_000, "{overflows}");
        assert_eq!(store.len_keys(), 52, "the CAS reserve, the slots counter and 50 slots: nothing else, ever");
        assert_eq!(read_counter(&store, "t:slots"), Ok(50));
        assert_eq!(store.get("t:slot:0").unwrap().0.map(|v| v.len()), Some(SLOT_BYTES));
    }

    #[test]
    fn a_key_keeps_its_bucket_in_a_later_probe_when_an_earlier_slot_frees_up() {
        let store = store();
        let t = table(4);
        let l = Limiter::new(&limit(1, Duration::from_secs(10), None), &t).unwrap();
        let short = Limiter::new(&limit(1, Duration::from_secs(1), None), &t).unwrap();
        let now = 100 * SECOND;
        // Fill the slots before "victim"'s with short-lived buckets, so that it lands in a later probe.
        let first = key_hash("victim") % 4;
        let mut fillers = 0;
        for i in 0.. {
            let key = format!("f{i}");
            if key_hash(&key) % 4 == first {
                short.check(&store, &key, now);
                fillers += 1;
                if fillers == 2 {
                    break;
                }
            }
        }
        assert!(allowed(&l.check(&store, "victim", now)));
        // The fillers go idle: their slots are free, but the victim's live bucket must still be found.
        let later = now + 2 * SECOND;
        assert!(!allowed(&l.check(&store, "victim", later)));
    }

    /// Makes another worker decide for another client between every read and write of this one (a lost CAS
    /// race each time), with colliding keys in a small table.
    struct Contended {
        inner: MemoryStore,
        other: Limiter,
        now: Cell<u64>,
        client: std::cell::RefCell<String>,
        turn: Cell<u64>,
        busy: Cell<bool>,
        other_admitted: std::cell::RefCell<HashMap<String, u64>>,
        other_overflow: Cell<u64>,
    }

    impl Contended {
        /// A store whose every write races with `other`, a second worker's limiter on the same table.
        fn new(lim: &Limit, t: &SlotTable) -> Self {
            Contended {
                inner: store(),
                other: Limiter::new(lim, t).unwrap(),
                now: Cell::new(0),
                client: Default::default(),
                turn: Cell::new(0),
                busy: Cell::new(false),
                other_admitted: Default::default(),
                other_overflow: Cell::new(0),
            }
        }
    }

    impl SharedStore for Contended {
        fn get(&self, key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)> {
            self.inner.get(key)
        }
        fn compare_and_set(&self, key: &str, value: Option<&[u8]>, cas: u32) -> HostResult<()> {
            if !self.busy.replace(true) {
                let turn = self.turn.get() + 1;
                self.turn.set(turn);
                // Every other time the same client as this worker (its slot), else any of them (collisions).
                let client =
                    if turn.is_multiple_of(2) { self.client.borrow().clone() } else { format!("c{}", turn % 7) };
                let decision = self.other.check(&self.inner, &client, self.now.get());
                if decision.effects.overflow {
                    self.other_overflow.set(self.other_overflow.get() + 1);
                } else if allowed(&decision) {
                    *self.other_admitted.borrow_mut().entry(client).or_default() += 1;
                }
                self.busy.set(false);
            }
            self.inner.compare_and_set(key, value, cas)
        }
    }

    #[test]
    fn contention_and_collisions_never_admit_more_than_rate_times_time_plus_burst() {
        // 7 clients in 3 slots: collisions all the time, and a worker racing every write.
        let lim = limit(10, Duration::from_secs(1), Some(5));
        let t = table(3);
        let store = Contended::new(&lim, &t);
        let this = Limiter::new(&lim, &t).unwrap();
        let mut admitted: HashMap<String, u64> = HashMap::new();
        let (mut overflow, mut retries) = (0u64, 0u64);
        let start = 20 * SECOND;
        let span = 4 * SECOND;
        for step in 0..40_000u64 {
            let now = start + step * span / 40_000;
            store.now.set(now);
            let client = format!("c{}", step % 7);
            store.client.replace(client.clone());
            let decision = this.check(&store, &client, now);
            retries += u64::from(decision.effects.cas_retries);
            assert_eq!(decision.effects.store_error, None);
            if decision.effects.overflow {
                overflow += 1;
            } else if allowed(&decision) {
                *admitted.entry(client).or_default() += 1;
            }
        }
        assert!(retries > 50, "the other worker raced: {retries}");
        assert!(overflow > 0 && store.other_overflow.get() > 0, "keys collided");
        // Decisions with a bucket, both workers together: never above R*T + B per client.
        let bound = 10 * 4 + 5;
        for i in 0..7 {
            let client = format!("c{i}");
            let total = admitted.get(&client).unwrap_or(&0) + store.other_admitted.borrow().get(&client).unwrap_or(&0);
            assert!(total <= bound, "{client}: {total} > {bound}");
        }
    }

    #[test]
    fn with_room_in_the_table_contention_admits_exactly_rate_times_time_plus_burst() {
        let lim = limit(10, Duration::from_secs(1), Some(5));
        let t = table(1000);
        let store = Contended::new(&lim, &t);
        let this = Limiter::new(&lim, &t).unwrap();
        let mut admitted: HashMap<String, u64> = HashMap::new();
        let start = 20 * SECOND;
        for step in 0..40_000u64 {
            let now = start + step * 4 * SECOND / 40_000;
            store.now.set(now);
            let client = format!("c{}", step % 7);
            store.client.replace(client.clone());
            let decision = this.check(&store, &client, now);
            assert!(!decision.effects.overflow);
            if allowed(&decision) {
                *admitted.entry(client).or_default() += 1;
            }
        }
        assert_eq!(store.other_overflow.get(), 0);
        for i in 0..7 {
            let client = format!("c{i}");
            let total = admitted.get(&client).unwrap_or(&0) + store.other_admitted.borrow().get(&client).unwrap_or(&0);
            assert!((44..=45).contains(&total), "{client}: {total}, expected 10*4 + 5");
        }
    }

    #[test]
    fn the_documented_race_costs_at_most_one_extra_burst() {
        // Worker B (clock 0.5 s) sees K's first slot held by X's live bucket and goes on to the next slot; before
        // it writes, worker A (clock 1.5 s) sees X idle and creates K in the first slot. K gets two buckets: one
        // extra burst, once (README, "Memory and reloads").
        struct Straddling {
            inner: MemoryStore,
            a: Limiter,
            gets: Cell<u32>,
            a_admitted: Cell<bool>,
        }
        impl SharedStore for Straddling {
            fn get(&self, key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)> {
                let gets = self.gets.get() + 1;
                self.gets.set(gets);
                if gets == 2 {
                    self.a_admitted.set(allowed(&self.a.check(&self.inner, "K", 3 * SECOND / 2)));
                }
                self.inner.get(key)
            }
            fn compare_and_set(&self, key: &str, value: Option<&[u8]>, cas: u32) -> HostResult<()> {
                self.inner.compare_and_set(key, value, cas)
            }
        }
        let t = table(2);
        let lim = limit(1, Duration::from_secs(10), None);
        let inner = store();
        let first = key_hash("K") % 2;
        let x = (0..).map(|i| format!("x{i}")).find(|x| key_hash(x) % 2 == first).unwrap();
        let short = Limiter::new(&limit(1, Duration::from_secs(1), None), &t).unwrap();
        assert!(allowed(&short.check(&inner, &x, 0)));
        let store =
            Straddling { inner, a: Limiter::new(&lim, &t).unwrap(), gets: Cell::new(0), a_admitted: Cell::new(false) };
        let b = Limiter::new(&lim, &t).unwrap();
        assert!(allowed(&b.check(&store, "K", SECOND / 2)));
        assert!(store.a_admitted.get(), "A created K in the first slot meanwhile");
        // Two admitted within one second for a burst of 1 (R*T + B = 1.1): the extra burst. From then on K is
        // limited to the rate, its first slot deciding.
        assert!(!allowed(&b.check(&store.inner, "K", 3 * SECOND / 2)));
        let mut admitted = 2;
        for step in 0..10_000u64 {
            let now = 3 * SECOND / 2 + step * SECOND / 100;
            admitted += u64::from(allowed(&b.check(&store.inner, "K", now)));
        }
        // 101 s from the first admission at 1 per 10 s: R*T + B = 11.1, R*T + 2B = 12.1.
        assert_eq!(admitted, 11);
    }

    #[test]
    fn shared_data_failures_admit_without_a_decision() {
        let host = FakeHost::default();
        reserve_create_cas(&host, "t:").unwrap();
        let l = Limiter::new(&limit(1, Duration::from_secs(60), None), &table(10)).unwrap();
        let key = "k".to_string();
        assert!(allowed(&l.check(&host, &key, SECOND)));
        assert!(!allowed(&l.check(&host, &key, SECOND)));
        // Reads fail: admitted (fail open), reported, nothing written.
        host.fail("shared_get", HostError::InternalFailure);
        let decision = l.check(&host, &key, SECOND);
        assert_eq!(decision.verdict, Verdict::Allowed { remaining: 0 });
        assert_eq!(decision.effects.store_error, Some(HostError::InternalFailure));
        assert_eq!(decision.reset_after, Duration::ZERO);
        // Writes fail for a new key: admitted, reported, nothing written.
        host.failures.borrow_mut().clear();
        host.fail("shared_set", HostError::BadArgument);
        let decision = l.check(&host, "new", SECOND);
        assert!(allowed(&decision));
        assert_eq!(decision.effects.store_error, Some(HostError::BadArgument));
        assert!(!decision.effects.new_slot);
        assert_eq!(read_counter(&host.store, "t:slots"), Ok(1), "only the first bucket's slot");
    }

    #[test]
    fn a_lost_creation_race_is_retried_against_the_winner() {
        // Worker B creates the bucket between worker A's read and write: A's CREATE_CAS write must fail, and A
        // must then count against B's state.
        struct Racing {
            inner: MemoryStore,
            raced: Cell<bool>,
        }
        impl SharedStore for Racing {
            fn get(&self, key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)> {
                self.inner.get(key)
            }
            fn compare_and_set(&self, key: &str, value: Option<&[u8]>, cas: u32) -> HostResult<()> {
                if key.starts_with("t:slot:") && !self.raced.replace(true) {
                    // B's write: TAT far in the future (bucket exhausted).
                    self.inner.compare_and_set(key, Some(&encode_slot(key_hash("k"), 1000 * SECOND)), 0)?;
                }
                self.inner.compare_and_set(key, value, cas)
            }
        }
        let racing = Racing { inner: store(), raced: Cell::new(false) };
        let l = Limiter::new(&limit(1, Duration::from_secs(1), None), &table(10)).unwrap();
        let decision = l.check(&racing, "k", SECOND);
        assert!(!allowed(&decision), "{decision:?}");
        assert_eq!(decision.effects.cas_retries, 1);
        assert_eq!(decision.effects.store_error, None);
        assert!(!decision.effects.new_slot, "B created the slot");
    }

    #[test]
    fn slot_values_that_are_not_buckets_count_as_free() {
        assert_eq!(decode_slot(&encode_slot(7, 9)), Some((7, 9)));
        assert_eq!(decode_slot(b"short"), None);
        assert_eq!(decode_slot(&[0u8; 17]), None);
    }
}
