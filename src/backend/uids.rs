//! The uids of the live throttles counting on one backend.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::Error;

/// The registry that keeps throttle uids unique on one backend: two live
/// throttles with one uid counting on one backend would share counters.
/// Throttles on different backends may share a uid (a test suite can build
/// the same app many times in one process, each with its own backend), and
/// dropping a throttle frees its uid. Clones share the registry.
///
/// A backend keeps one where its clones share their state, and returns it
/// from [`ThrottleBackend::uids`](super::ThrottleBackend::uids).
#[derive(Clone, Default)]
pub struct Uids(Arc<Mutex<HashMap<Arc<str>, Owner>>>);

/// Which throttle holds a uid, and how many of its registrations are live
/// (a throttle counts once per layer that lends it this backend).
struct Owner {
    throttle: usize,
    count: usize,
}

impl std::fmt::Debug for Uids {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uids")
            .field("live", &self.lock().len())
            .finish()
    }
}

impl Uids {
    /// An empty registry.
    pub fn new() -> Self {
        Uids::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Owner>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `uid` for the throttle `throttle` (an address that tells
    /// throttles apart while they live), until the lease is dropped.
    pub(crate) fn register(&self, uid: &Arc<str>, throttle: usize) -> Result<UidLease, Error> {
        let mut uids = self.lock();
        let owner = uids
            .entry(Arc::clone(uid))
            .or_insert(Owner { throttle, count: 0 });
        if owner.throttle != throttle {
            return Err(Error::configuration(format!(
                "duplicate throttle uid {uid:?}: another live throttle already counts under it on the \
                 same backend, so the two would share counters; give each throttle its own .uid(..). \
                 Uids are unique per backend: an app built twice (parallel tests calling one \
                 `fn app()`) is fine when each build has its own backend"
            )));
        }
        owner.count += 1;
        Ok(UidLease {
            uids: self.clone(),
            uid: Arc::clone(uid),
        })
    }
}

/// A uid registered on a backend while its throttle lives there.
pub(crate) struct UidLease {
    uids: Uids,
    uid: Arc<str>,
}

/// Another registration of the same uid for the same throttle (a layer's
/// configuration cloned when a rule is added to a shared one).
impl Clone for UidLease {
    fn clone(&self) -> Self {
        let mut uids = self.uids.lock();
        if let Some(owner) = uids.get_mut(&self.uid) {
            owner.count += 1;
        }
        UidLease {
            uids: self.uids.clone(),
            uid: Arc::clone(&self.uid),
        }
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        let mut uids = self.uids.lock();
        if let Some(owner) = uids.get_mut(&self.uid) {
            owner.count -= 1;
            if owner.count == 0 {
                uids.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_uid_one_throttle_per_registry() {
        let uids = Uids::new();
        let api: Arc<str> = "api".into();
        let first = uids.register(&api, 1).unwrap();
        let again = uids.register(&api, 1).unwrap();
        let error = uids.register(&api, 2).err().unwrap();
        assert!(
            error.to_string().contains("duplicate throttle uid \"api\""),
            "{error}"
        );
        // Another registry (another backend) takes it.
        assert!(Uids::new().register(&api, 2).is_ok());
        drop(first);
        assert!(uids.register(&api, 2).is_err());
        drop(again);
        assert!(uids.register(&api, 2).is_ok());
    }
}
