//! The deny cache (off by default): a denied key answered locally, without
//! a round trip, until its `retry_after` has passed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::strategy::Decisions;
use crate::Quota;

/// Denied keys answered locally until their `retry_after`.
pub(super) struct DenyCache {
    capacity: usize,
    /// Keys are held as keyed digests: a key's text can be as long as a
    /// client makes it (an identity from a header, an unrouted path), and a
    /// cache of texts would hold the bytes of every denied one.
    hasher: std::hash::RandomState,
    state: Mutex<DenyState>,
    /// Bumped by every `clear()` (under the state's lock): a denial decided
    /// before a reset must not be cached after it. Read without the lock
    /// when a request is sent.
    generation: AtomicU64,
}

/// A full cache is swept at most this often (a sweep reads every entry);
/// meanwhile new denials are not cached (the cache only spares round trips).
const DENY_SWEEP_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Default)]
struct DenyState {
    /// Denials by key digest; a key rarely has more than one quota and
    /// cost.
    map: HashMap<u64, Vec<CachedDeny>>,
    /// Entries in `map`.
    len: usize,
    /// A full cache is not swept before this.
    next_sweep: Option<Instant>,
    /// Sweeps so far (for tests).
    sweeps: u64,
}

struct CachedDeny {
    quotas: Box<[Quota]>,
    cost: u64,
    /// When the request that got the denial was sent: the server decided
    /// later, so `sent + retry_after` is never later than the real time the
    /// same hit is allowed.
    sent: Instant,
    decisions: Decisions,
}

impl CachedDeny {
    fn live_at(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.sent) < self.decisions.binding().retry_after
    }
}

impl DenyCache {
    pub(super) fn new(capacity: usize) -> Self {
        DenyCache {
            capacity: capacity.max(1),
            hasher: std::hash::RandomState::new(),
            state: Mutex::new(DenyState::default()),
            generation: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DenyState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The digest a key is cached under (SipHash with this cache's own
    /// random key: clients cannot make two keys collide on purpose).
    pub(super) fn digest(&self, key: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key)
    }

    /// A live denial of the key whose [`digest`](DenyCache::digest) is `key`.
    pub(super) fn get(
        &self,
        key: u64,
        quotas: &[Quota],
        cost: u64,
        now: Instant,
    ) -> Option<Decisions> {
        let mut state = self.lock();
        let entries = state.map.get_mut(&key)?;
        let index = entries
            .iter()
            .position(|e| *e.quotas == *quotas && e.cost == cost)?;
        let entry = &entries[index];
        let elapsed = now.saturating_duration_since(entry.sent);
        if elapsed >= entry.decisions.binding().retry_after {
            entries.swap_remove(index);
            if entries.is_empty() {
                state.map.remove(&key);
            }
            state.len -= 1;
            return None;
        }
        Some(entry.decisions.later_by(elapsed))
    }

    /// The current generation, to pass to [`insert_at`](DenyCache::insert_at) for a
    /// request about to be sent.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Caches a denial; `now` is the current time, `generation` the cache's
    /// when the request was sent (a `clear()` since then drops the denial:
    /// the server state it came from is gone). A full cache drops its
    /// expired entries, at most once per [`DENY_SWEEP_INTERVAL`], and skips
    /// the denial when no room is left.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn insert_at(
        &self,
        key: u64,
        quotas: &[Quota],
        cost: u64,
        sent: Instant,
        decisions: Decisions,
        now: Instant,
        generation: u64,
    ) {
        if decisions.binding().retry_after.is_zero() {
            return;
        }
        let entry = CachedDeny {
            quotas: quotas.into(),
            cost,
            sent,
            decisions,
        };
        let mut state = self.lock();
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if let Some(entries) = state.map.get_mut(&key) {
            if let Some(old) = entries
                .iter_mut()
                .find(|e| *e.quotas == *quotas && e.cost == cost)
            {
                *old = entry;
                return;
            }
        }
        if state.len >= self.capacity {
            if state.next_sweep.is_some_and(|next| now < next) {
                return;
            }
            let state = &mut *state;
            state.map.retain(|_, entries| {
                entries.retain(|e| e.live_at(now));
                !entries.is_empty()
            });
            state.len = state.map.values().map(Vec::len).sum();
            state.next_sweep = Some(now + DENY_SWEEP_INTERVAL);
            state.sweeps += 1;
            if state.len >= self.capacity {
                return;
            }
        }
        state.map.entry(key).or_default().push(entry);
        state.len += 1;
    }

    /// Drops the denials of the key whose digest is `key`.
    pub(super) fn forget(&self, key: u64) {
        let mut state = self.lock();
        if let Some(entries) = state.map.remove(&key) {
            state.len -= entries.len();
        }
    }

    pub(super) fn clear(&self) {
        let mut state = self.lock();
        state.map.clear();
        state.len = 0;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Decision, Rate, Strategy};

    fn denied(retry_after_ms: u64) -> Decisions {
        Decisions::one(
            Duration::ZERO,
            Decision {
                allowed: false,
                limit: 1,
                remaining: 0,
                reset_after: Duration::from_millis(retry_after_ms),
                retry_after: Duration::from_millis(retry_after_ms),
            },
        )
    }

    fn per_minute(limit: u64) -> Quota {
        Quota::new(
            Rate::new(limit, Duration::from_secs(60)).unwrap(),
            Strategy::TokenBucket,
        )
        .unwrap()
    }

    /// A key of any length is held as a digest (the map's key type), and is
    /// found again by its text, and only by it.
    #[test]
    fn long_keys_are_cached_by_digest() {
        let cache = DenyCache::new(10);
        let quota = Quota::new("1/min".parse().unwrap(), Strategy::TokenBucket).unwrap();
        let key = "x".repeat(300_000);
        let t0 = Instant::now();
        cache.insert_at(cache.digest(&key), &[quota], 1, t0, denied(10_000), t0, 0);
        assert!(cache.get(cache.digest(&key), &[quota], 1, t0).is_some());
        assert!(cache
            .get(cache.digest(&key[1..]), &[quota], 1, t0)
            .is_none());
    }

    #[test]
    fn a_full_deny_cache_is_swept_at_most_once_per_interval() {
        let cache = DenyCache::new(100);
        let quota = per_minute(1);
        let t0 = Instant::now();
        for i in 0..100 {
            cache.insert_at(
                cache.digest(&format!("k{i}")),
                &[quota],
                1,
                t0,
                denied(10_000),
                t0,
                0,
            );
        }
        assert_eq!(cache.lock().len, 100);
        // Full of live entries: one sweep finds nothing to drop; the next
        // thousand denials are not cached and sweep nothing.
        for i in 100..1100 {
            cache.insert_at(
                cache.digest(&format!("k{i}")),
                &[quota],
                1,
                t0,
                denied(10_000),
                t0,
                0,
            );
        }
        assert_eq!(cache.lock().sweeps, 1);
        assert_eq!(cache.lock().len, 100);
        assert!(cache.get(cache.digest("k1000"), &[quota], 1, t0).is_none());
        assert!(cache.get(cache.digest("k5"), &[quota], 1, t0).is_some());
        // Once the entries expire and the interval passes, a sweep makes room.
        let later = t0 + Duration::from_secs(11);
        cache.insert_at(
            cache.digest("fresh"),
            &[quota],
            1,
            later,
            denied(10_000),
            later,
            0,
        );
        assert_eq!(cache.lock().sweeps, 2);
        assert_eq!(cache.lock().len, 1);
        assert!(cache
            .get(cache.digest("fresh"), &[quota], 1, later)
            .is_some());
    }

    /// A denial decided before a `clear()` (a reset) but inserted after it
    /// is dropped: the server state it came from is gone.
    #[test]
    fn the_deny_cache_drops_denials_from_before_a_clear() {
        let cache = DenyCache::new(10);
        let quota = per_minute(1);
        let t0 = Instant::now();
        let before = cache.generation();
        cache.clear();
        cache.insert_at(
            cache.digest("k"),
            &[quota],
            1,
            t0,
            denied(1_000),
            t0,
            before,
        );
        assert_eq!(cache.get(cache.digest("k"), &[quota], 1, t0), None);
        assert_eq!(cache.lock().len, 0);
        // One sent after the clear is cached.
        let after = cache.generation();
        assert_ne!(after, before);
        cache.insert_at(cache.digest("k"), &[quota], 1, t0, denied(1_000), t0, after);
        assert!(cache.get(cache.digest("k"), &[quota], 1, t0).is_some());
    }

    #[test]
    fn the_deny_cache_keeps_one_entry_per_key_quota_and_cost() {
        let cache = DenyCache::new(10);
        let quota = per_minute(1);
        let other = per_minute(2);
        let t0 = Instant::now();
        cache.insert_at(cache.digest("k"), &[quota], 1, t0, denied(1_000), t0, 0);
        cache.insert_at(cache.digest("k"), &[quota], 1, t0, denied(2_000), t0, 0);
        cache.insert_at(cache.digest("k"), &[other], 1, t0, denied(3_000), t0, 0);
        cache.insert_at(cache.digest("k"), &[quota], 2, t0, denied(4_000), t0, 0);
        assert_eq!(cache.lock().len, 3);
        let at = |q: &Quota, cost| {
            cache
                .get(cache.digest("k"), &[*q], cost, t0)
                .map(|d| d.binding().retry_after.as_millis())
        };
        assert_eq!(at(&quota, 1), Some(2_000));
        assert_eq!(at(&other, 1), Some(3_000));
        assert_eq!(at(&quota, 2), Some(4_000));
        assert_eq!(at(&other, 2), None);
        // An expired entry is dropped when looked up.
        let later = t0 + Duration::from_millis(2_500);
        assert_eq!(cache.get(cache.digest("k"), &[quota], 1, later), None);
        assert_eq!(cache.lock().len, 2);
        cache.clear();
        assert_eq!(cache.lock().len, 0);
        assert_eq!(cache.get(cache.digest("k"), &[other], 1, t0), None);
    }
}
