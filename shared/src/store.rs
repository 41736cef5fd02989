//! Envoy's shared data as the filters see it: one key-value store per `vm_id`, shared by every worker, with
//! compare-and-swap. [`crate::host::WasmHost`] implements it over proxy-wasm; [`MemoryStore`] reproduces Envoy's
//! semantics in memory for unit tests, and the dynamic-module build keeps one [`CasMap`] per process with the same
//! semantics, quirks included:
//! - writing a key that does not exist succeeds whatever CAS is passed. To create a key without racing another
//!   worker, pass [`CREATE_CAS`] (1): the first write in the process gets CAS 1, and [`reserve_create_cas`]
//!   makes a throw-away write at VM start so that no other key can ever hold CAS 1. If another worker created the
//!   key in between, its CAS differs and the write fails.
//! - there is no delete: an emptied value reads as absent, but Envoy keeps the key (and ~155 bytes) forever, so
//!   keys derived from request data leak memory.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::host::{HostError, HostResult};

/// The CAS that marks "create this key, fail if someone else just did".
pub const CREATE_CAS: u32 = 1;

/// Shared key-value data with compare-and-swap (Envoy's proxy-wasm shared data).
pub trait SharedStore {
    /// The value (`None` when absent or emptied) and the key's CAS (`None` when the key does not exist).
    fn get(&self, key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)>;
    /// Writes `value` (`None` empties the key) if the key's CAS is still `cas` (0: whatever it is).
    /// A lost race is [`HostError::CasMismatch`].
    fn compare_and_set(&self, key: &str, value: Option<&[u8]>, cas: u32) -> HostResult<()>;
}

/// Makes sure CAS 1 is taken by a key that is never used for anything else (see the module comment). Call at
/// VM start, before any key is created with [`CREATE_CAS`].
pub fn reserve_create_cas(store: &(impl SharedStore + ?Sized), prefix: &str) -> HostResult<()> {
    let key = format!("{prefix}cas-reserve");
    if store.get(&key)?.1.is_none() {
        match store.compare_and_set(&key, Some(b"reserved"), 0) {
            Ok(()) | Err(HostError::CasMismatch) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Key -> (value, CAS) and the last CAS handed out: Envoy's shared-data semantics in memory, for
/// [`MemoryStore`] and for the dynamic-module build's process-wide store.
#[derive(Debug, Default)]
pub struct CasMap {
    entries: HashMap<String, (Vec<u8>, u32)>,
    last_cas: u32,
}

impl CasMap {
    pub fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.entries.get(key) {
            Some((value, cas)) => ((!value.is_empty()).then(|| value.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    pub fn compare_and_set(&mut self, key: &str, value: Option<&[u8]>, cas: u32) -> HostResult<()> {
        if let Some((_, current)) = self.entries.get(key) {
            if cas != 0 && cas != *current {
                return Err(HostError::CasMismatch);
            }
        }
        // After a wrap, 0 ("any") and CREATE_CAS stay unused.
        self.last_cas = self.last_cas.wrapping_add(1);
        if self.last_cas == 0 {
            self.last_cas = CREATE_CAS + 1;
        }
        self.entries.insert(key.to_string(), (value.unwrap_or_default().to_vec(), self.last_cas));
        Ok(())
    }

    fn len_nonempty(&self) -> usize {
        self.entries.values().filter(|(v, _)| !v.is_empty()).count()
    }

    fn len_keys(&self) -> usize {
        self.entries.len()
    }
}

/// An in-memory [`SharedStore`] with Envoy's semantics, shared between clones (one per simulated worker).
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Rc<RefCell<CasMap>>,
}

impl MemoryStore {
    /// Keys that hold a value (emptied keys excluded).
    pub fn len_nonempty(&self) -> usize {
        self.inner.borrow().len_nonempty()
    }

    /// Every key ever written (Envoy never deletes one): what shared data costs in memory.
    pub fn len_keys(&self) -> usize {
        self.inner.borrow().len_keys()
    }
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)> {
        Ok(self.inner.borrow().get(key))
    }

    fn compare_and_set(&self, key: &str, value: Option<&[u8]>, cas: u32) -> HostResult<()> {
        self.inner.borrow_mut().compare_and_set(key, value, cas)
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
        let (value, cas) = store.get("k").unwrap();
        assert_eq!(value.as_deref(), Some(&b"a"[..]));
        let cas = cas.unwrap();
        assert_eq!(store.compare_and_set("k", Some(b"b"), cas + 1), Err(HostError::CasMismatch));
        store.compare_and_set("k", Some(b"b"), cas).unwrap();
        store.compare_and_set("k", None, 0).unwrap();
        assert_eq!(store.get("k").unwrap().0, None, "emptied reads as absent");
        assert!(store.get("k").unwrap().1.is_some(), "but the key keeps a CAS");
        assert_eq!((store.len_nonempty(), store.len_keys()), (0, 1));
    }

    #[test]
    fn after_a_wrap_cas_skips_any_and_create() {
        let mut map = CasMap { last_cas: u32::MAX - 1, ..CasMap::default() };
        map.compare_and_set("a", Some(b"1"), 0).unwrap();
        map.compare_and_set("b", Some(b"1"), 0).unwrap();
        assert_eq!((map.get("a").1, map.get("b").1), (Some(u32::MAX), Some(CREATE_CAS + 1)));
    }

    #[test]
    fn create_cas_loses_to_a_concurrent_creator() {
        let store = MemoryStore::default();
        reserve_create_cas(&store, "p:").unwrap();
        assert_eq!(store.get("p:cas-reserve").unwrap().1, Some(1));
        // Worker A and B both saw "absent"; A creates first, B's create must fail.
        store.compare_and_set("bucket", Some(b"a"), CREATE_CAS).unwrap();
        assert_eq!(store.compare_and_set("bucket", Some(b"b"), CREATE_CAS), Err(HostError::CasMismatch));
        // Reserving twice does not consume a CAS again.
        reserve_create_cas(&store, "p:").unwrap();
        assert_eq!(store.get("p:cas-reserve").unwrap().1, Some(1));
    }
}
