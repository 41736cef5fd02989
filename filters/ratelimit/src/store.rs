//! Shared counters over Envoy's shared data (see [`shared::store`] for the store itself, its CAS semantics and
//! the in-memory [`shared::store::MemoryStore`] the tests use).

use shared::store::{SharedStore, CREATE_CAS};
use shared::{HostError, HostResult};

/// Gives up on a contended key after this many lost CAS races in one update. Another worker winning every race
/// is progress, so this is never reached in practice; the bound only keeps a broken host from looping forever.
pub const MAX_CAS_ATTEMPTS: u32 = 1000;

/// Bumps a shared counter by `delta` unless that would take it above `max`; returns whether it did. Lost races
/// are retried (and counted in `retries`); any other host error, or [`MAX_CAS_ATTEMPTS`] lost races, is returned.
pub fn add_to_counter(store: &dyn SharedStore, key: &str, delta: i64, max: u64, retries: &mut u32) -> HostResult<bool> {
    let mut attempts = 0u32;
    loop {
        let (value, cas) = store.get(key)?;
        let current = value.as_deref().and_then(decode_u64).unwrap_or(0);
        let next = current.saturating_add_signed(delta);
        if delta > 0 && next > max {
            return Ok(false);
        }
        match store.compare_and_set(key, Some(&next.to_le_bytes()), cas.unwrap_or(CREATE_CAS)) {
            Ok(()) => return Ok(true),
            Err(HostError::CasMismatch) => {
                *retries = retries.saturating_add(1);
                attempts = attempts.saturating_add(1);
                if attempts >= MAX_CAS_ATTEMPTS {
                    return Err(HostError::CasMismatch);
                }
            }
            Err(err) => return Err(err),
        }
    }
}

/// Reads a shared counter (absent: 0).
pub fn read_counter(store: &dyn SharedStore, key: &str) -> HostResult<u64> {
    Ok(store.get(key)?.0.as_deref().and_then(decode_u64).unwrap_or(0))
}

pub fn decode_u64(bytes: &[u8]) -> Option<u64> {
    let array: [u8; 8] = bytes.try_into().ok()?;
    Some(u64::from_le_bytes(array))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::host::FakeHost;
    use shared::store::{reserve_create_cas, MemoryStore};

    #[test]
    fn counters_respect_their_maximum() {
        let store = MemoryStore::default();
        reserve_create_cas(&store, "").unwrap();
        let mut retries = 0;
        assert_eq!(add_to_counter(&store, "n", 1, 2, &mut retries), Ok(true));
        assert_eq!(add_to_counter(&store, "n", 1, 2, &mut retries), Ok(true));
        assert_eq!(add_to_counter(&store, "n", 1, 2, &mut retries), Ok(false));
        assert_eq!(read_counter(&store, "n"), Ok(2));
        assert_eq!(add_to_counter(&store, "n", -1, 2, &mut retries), Ok(true));
        assert_eq!(read_counter(&store, "n"), Ok(1));
        assert_eq!(retries, 0);
        assert_eq!(decode_u64(b"short"), None);
    }

    #[test]
    fn host_errors_are_returned_not_retried() {
        let host = FakeHost::default();
        host.fail("shared_set", HostError::InternalFailure);
        let mut retries = 0;
        assert_eq!(add_to_counter(&host, "n", 1, 2, &mut retries), Err(HostError::InternalFailure));
        assert_eq!(retries, 0);
        host.fail("shared_get", HostError::BadArgument);
        assert_eq!(read_counter(&host, "n"), Err(HostError::BadArgument));
    }

    #[test]
    fn a_key_that_always_loses_its_race_gives_up() {
        /// Every write loses a race.
        struct Contended;
        impl SharedStore for Contended {
            fn get(&self, _key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)> {
                Ok((Some(1u64.to_le_bytes().to_vec()), Some(7)))
            }
            fn compare_and_set(&self, _key: &str, _value: Option<&[u8]>, _cas: u32) -> HostResult<()> {
                Err(HostError::CasMismatch)
            }
        }
        let mut retries = 0;
        assert_eq!(add_to_counter(&Contended, "n", 1, 10, &mut retries), Err(HostError::CasMismatch));
        assert_eq!(retries, MAX_CAS_ATTEMPTS);
    }
}
