//! Buckets in proxy-wasm shared data, updated with compare-and-swap so that every Envoy worker sees one bucket.
//!
//! The logic talks to a [`SharedStore`]; the filter implements it over Envoy's shared data and the tests over a
//! map with Envoy's semantics, quirks included:
//! - writing a key that does not exist succeeds whatever CAS is passed. To create a key without racing another
//!   worker, we pass [`CREATE_CAS`] (1): the first write in the process gets CAS 1, and [`reserve_create_cas`]
//!   makes a throw-away write at VM start so that no bucket can ever hold CAS 1. If another worker created the
//!   key in between, its CAS differs and our write fails; we read again and retry.
//! - there is no delete: an emptied value stands for "no bucket" (Envoy keeps the key; its memory is small).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// The CAS that marks "create this key, fail if someone else just did".
pub const CREATE_CAS: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CasMismatch;

/// Shared key-value data with compare-and-swap (Envoy's proxy-wasm shared data).
pub trait SharedStore {
    /// The value (`None` when absent or emptied) and the CAS of the key (`None` when the key does not exist).
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes `value` (`None` empties the key) if the key's CAS is still `cas`.
    fn compare_and_set(&self, key: &str, value: Option<&[u8]>, cas: u32) -> Result<(), CasMismatch>;
}

/// Makes sure CAS 1 is taken by a key that is never a bucket (see the module comment). Call at VM start.
pub fn reserve_create_cas<S: SharedStore>(store: &S, prefix: &str) {
    let key = format!("{prefix}cas-reserve");
    if store.get(&key).1.is_none() {
        let _ = store.compare_and_set(&key, Some(b"reserved"), 0);
    }
}

/// Bumps a shared counter by `delta` unless that would take it above `max`; returns whether it did.
pub fn add_to_counter<S: SharedStore>(store: &S, key: &str, delta: i64, max: u64, retries: &mut u32) -> bool {
    loop {
        let (value, cas) = store.get(key);
        let current = value.as_deref().and_then(decode_u64).unwrap_or(0);
        let next = current.saturating_add_signed(delta);
        if delta > 0 && next > max {
            return false;
        }
        match store.compare_and_set(key, Some(&next.to_le_bytes()), cas.unwrap_or(CREATE_CAS)) {
            Ok(()) => return true,
            Err(CasMismatch) => *retries = retries.saturating_add(1),
        }
    }
}

/// Reads a shared counter.
pub fn read_counter<S: SharedStore>(store: &S, key: &str) -> u64 {
    store.get(key).0.as_deref().and_then(decode_u64).unwrap_or(0)
}

pub fn decode_u64(bytes: &[u8]) -> Option<u64> {
    let array: [u8; 8] = bytes.try_into().ok()?;
    Some(u64::from_le_bytes(array))
}

/// Key -> (value, CAS), and the last CAS handed out.
type Entries = (HashMap<String, (Vec<u8>, u32)>, u32);

/// An in-memory [`SharedStore`] with Envoy's semantics, shared between clones (one per simulated worker).
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Rc<RefCell<Entries>>,
}

impl MemoryStore {
    pub fn len_nonempty(&self) -> usize {
        self.inner.borrow().0.values().filter(|(v, _)| !v.is_empty()).count()
    }
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.inner.borrow().0.get(key) {
            Some((value, cas)) => ((!value.is_empty()).then(|| value.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn compare_and_set(&self, key: &str, value: Option<&[u8]>, cas: u32) -> Result<(), CasMismatch> {
        let mut inner = self.inner.borrow_mut();
        let (map, next_cas) = &mut *inner;
        if let Some((_, current)) = map.get(key) {
            if cas != 0 && cas != *current {
                return Err(CasMismatch);
            }
        }
        *next_cas += 1;
        map.insert(key.to_string(), (value.unwrap_or_default().to_vec(), *next_cas));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_has_envoys_cas_semantics() {
        let store = MemoryStore::default();
        // An absent key is written whatever CAS is passed (Envoy's quirk).
        store.compare_and_set("k", Some(b"a"), 12345).unwrap();
        let (value, cas) = store.get("k");
        assert_eq!(value.as_deref(), Some(&b"a"[..]));
        assert_eq!(store.compare_and_set("k", Some(b"b"), cas.unwrap() + 1), Err(CasMismatch));
        store.compare_and_set("k", Some(b"b"), cas.unwrap()).unwrap();
        store.compare_and_set("k", None, 0).unwrap();
        assert_eq!(store.get("k").0, None, "emptied reads as absent");
        assert!(store.get("k").1.is_some(), "but the key keeps a CAS");
    }

    #[test]
    fn create_cas_loses_to_a_concurrent_creator() {
        let store = MemoryStore::default();
        reserve_create_cas(&store, "p:");
        assert_eq!(store.get("p:cas-reserve").1, Some(1));
        // Worker A and B both saw "absent"; A creates first, B's create must fail.
        store.compare_and_set("bucket", Some(b"a"), CREATE_CAS).unwrap();
        assert_eq!(store.compare_and_set("bucket", Some(b"b"), CREATE_CAS), Err(CasMismatch));
        // Reserving twice does not consume a CAS again.
        reserve_create_cas(&store, "p:");
        assert_eq!(store.get("p:cas-reserve").1, Some(1));
    }

    #[test]
    fn counters_respect_their_maximum() {
        let store = MemoryStore::default();
        reserve_create_cas(&store, "");
        let mut retries = 0;
        assert!(add_to_counter(&store, "n", 1, 2, &mut retries));
        assert!(add_to_counter(&store, "n", 1, 2, &mut retries));
        assert!(!add_to_counter(&store, "n", 1, 2, &mut retries));
        assert_eq!(read_counter(&store, "n"), 2);
        assert!(add_to_counter(&store, "n", -1, 2, &mut retries));
        assert_eq!(read_counter(&store, "n"), 1);
        assert_eq!(retries, 0);
        assert_eq!(decode_u64(b"short"), None);
    }
}
