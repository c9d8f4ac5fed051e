//! The in-memory backend: a sharded table of per-key states, exact under
//! concurrency, that reclaims expired keys by itself and never grows past a
//! configurable number of keys.
//!
//! The backend and its shared state are here; the parts each have a file:
//! `table` (the shards, their entries, and a decision under a shard's
//! lock), `stored` (the form a key is stored under), `reclaim` (sweeps of
//! expired keys, and the cap on live keys), `places` (in-flight places),
//! `builder`.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::Duration;

use super::{BackendFuture, BoxFuture, ThrottleBackend, Uids};
use crate::clock::{Clock, SystemClock};
use crate::key::Key;
use crate::strategy::{Decisions, Op};
use crate::{Decision, Error, Quota};

mod builder;
mod places;
mod reclaim;
mod stored;
mod table;

pub use builder::InMemoryBackendBuilder;
use stored::Counts;
use table::{Shard, ShardMap};

/// Default cap on live keys.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// Counters in this process's memory.
///
/// * `new()` instances are independent; clones share state.
/// * Exact under concurrency: each decision runs under the lock of one of 64
///   shards (a `std::sync::Mutex`; no lock is held across an `.await`, no
///   user code runs under one).
/// * Each key is stored with its parts (throttle, identity, scope, and the
///   strategies it is decided with), so two different keys never share a
///   counter; short keys (a client address and a short route) are stored
///   inline, in a 56-byte table entry with their state and expiry. Keys
///   are hashed with SipHash-1-3 under a random secret of each backend, so
///   a client cannot aim many keys at one place of the table.
/// * Expired keys are reclaimed by the backend itself: each shard sweeps its
///   expired keys at most once per sweep interval (default 1 s), during a hit,
///   and before making room for a new key at the cap (then every shard, at
///   most once per sweep interval).
/// * At most `max_keys` live keys (default 1,000,000). A hit on a *new* key
///   when the cap is reached is counted like any other: to make room, the
///   key's shard drops an eighth of its keys, those closest to their reset
///   (the earliest expiries; shards hold keys evenly, so this is close to
///   the whole backend's order), under its lock. Their clients start
///   afresh. Under the token bucket (default) and GCRA a key expires when
///   its quota is full again, so a spent quota is among the latest expiries
///   and the clients that spent theirs stay counted. Under the fixed and
///   sliding windows and the sliding-window log a key expires a period after
///   its window or its last counted hit, so the oldest go first, spent or
///   not. A flood of new keys that holds the backend at its cap gives every
///   key a life of about `max_keys` / (new keys per second): with those
///   three strategies, limits then weaken to a limit per that life when it
///   is shorter than the period. Size the cap for your live keys so that it
///   is a safety net, and prefer the token bucket or GCRA where it may be
///   reached. With the token bucket, a client that wants its own spent
///   counter pushed out needs about ⅞ × `max_keys` × the limit hits on
///   keys spent as fully as its own.
/// * `persistent(false)` (default): [`initialize`](InMemoryBackend::initialize)
///   and [`close`](InMemoryBackend::close) clear every key.
///
/// ```
/// use traffik::backend::InMemoryBackend;
///
/// let memory = InMemoryBackend::new();
/// let custom = InMemoryBackend::builder().prefix("myapp").max_keys(10_000).build();
/// assert_eq!(custom.prefix(), "myapp");
/// # let _ = memory;
/// ```
#[derive(Clone)]
pub struct InMemoryBackend {
    inner: Arc<Shared>,
}

struct Shared {
    prefix: String,
    persistent: bool,
    clock: ClockSource,
    hasher: RandomState,
    shards: Box<[Shard]>,
    shard_mask: usize,
    live_keys: AtomicUsize,
    max_keys: usize,
    sweep_interval: u64,
    /// When the backend may next sweep every shard to make room at the cap.
    next_full_sweep: AtomicU64,
    uids: Uids,
}

impl Default for InMemoryBackend {
    fn default() -> Self {
        InMemoryBackend::new()
    }
}

impl std::fmt::Debug for InMemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryBackend")
            .field("prefix", &self.inner.prefix)
            .field("persistent", &self.inner.persistent)
            .field("keys", &self.len())
            .field("max_keys", &self.inner.max_keys)
            .finish()
    }
}

impl InMemoryBackend {
    /// A backend with prefix `"traffik"`, not persistent, the system clock.
    pub fn new() -> Self {
        InMemoryBackend::builder().build()
    }

    /// Configures a backend.
    pub fn builder() -> InMemoryBackendBuilder {
        InMemoryBackendBuilder::default()
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Keys stored right now, including expired keys not yet reclaimed.
    pub fn len(&self) -> usize {
        self.inner.live_keys.load(Ordering::Relaxed)
    }

    /// `true` when no key is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes expired keys from every shard now. This also happens by itself
    /// as the backend is used.
    pub fn purge_expired(&self) {
        self.inner.purge_all();
    }

    /// Clears the keys when not persistent.
    pub async fn initialize(&self) -> Result<(), Error> {
        if !self.inner.persistent {
            self.inner.clear();
        }
        Ok(())
    }

    /// Removes every key.
    pub async fn reset(&self) -> Result<(), Error> {
        self.inner.clear();
        Ok(())
    }

    /// Clears the keys when not persistent.
    pub async fn close(&self) -> Result<(), Error> {
        self.initialize().await
    }

    /// Counts a hit of `cost` on `key` for one rate, at once (the in-memory
    /// backend never waits): [`ThrottleBackend::decide`] with
    /// [`Op::Hit`], for code that calls the backend itself.
    pub fn hit(&self, key: &Key<'_>, quota: &Quota, cost: u64) -> Result<Decision, Error> {
        let decisions = self
            .inner
            .decide(key, std::slice::from_ref(quota), cost, Op::Hit)?;
        Ok(decisions.binding())
    }

    /// Decides `op` on `key` for every rate of `quotas` (all or nothing), at once.
    pub fn decide(
        &self,
        key: &Key<'_>,
        quotas: &[Quota],
        cost: u64,
        op: Op,
    ) -> Result<Decisions, Error> {
        self.inner.decide(key, quotas, cost, op)
    }
}

/// The system clock called directly (inlined on the hot path), or any other.
#[derive(Clone)]
enum ClockSource {
    System(SystemClock),
    Other(Arc<dyn Clock>),
}

impl Shared {
    #[inline]
    fn now(&self) -> u64 {
        match &self.clock {
            ClockSource::System(clock) => clock.now_micros(),
            ClockSource::Other(clock) => clock.now().as_micros() as u64,
        }
    }

    /// The hash of `key`'s stored form for `counts` (SipHash-1-3 under the
    /// backend's secret), written part by part: no copy of the key is made.
    #[inline]
    fn hash_key(&self, key: &Key<'_>, counts: Counts<'_>) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        stored::write_stored(key, counts, &mut hasher);
        hasher.finish()
    }

    /// The hash of a stored copy of a key: the same as
    /// [`hash_key`](Shared::hash_key) on its key.
    fn hash(&self, stored: &[u8]) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        hasher.write(stored);
        hasher.finish()
    }

    /// A shard's lock. Nothing under it panics (no user code runs there), so
    /// a poisoned lock holds consistent tables.
    #[inline]
    fn lock(&self, shard: usize) -> MutexGuard<'_, ShardMap> {
        self.shards[shard]
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl ThrottleBackend for InMemoryBackend {
    fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    #[inline]
    fn decide(&self, key: &Key<'_>, quotas: &[Quota], cost: u64, op: Op) -> BackendFuture {
        BackendFuture::ready(self.inner.decide(key, quotas, cost, op))
    }

    fn reset(&self) -> BoxFuture<Result<(), Error>> {
        self.inner.clear();
        Box::pin(async { Ok(()) })
    }

    fn persistent(&self) -> bool {
        self.inner.persistent
    }

    fn acquire(&self, key: &Key<'_>, _place: u64, max: u64, _lease: Duration) -> BackendFuture {
        BackendFuture::ready(Ok(self.inner.acquire(key, max)))
    }

    fn release(&self, key: &Key<'_>, _place: u64) -> BackendFuture<()> {
        self.inner.release(key);
        BackendFuture::ready(Ok(()))
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn uids(&self) -> Option<&Uids> {
        Some(&self.inner.uids)
    }
}
