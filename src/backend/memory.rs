//! The in-memory backend: a sharded map of per-key states, exact under
//! concurrency, that reclaims expired keys by itself and never grows past a
//! configurable number of keys.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{BackendFuture, BoxFuture, ThrottleBackend};
use crate::clock::{Clock, SystemClock};
use crate::strategy::{State, Strategy};
use crate::{Decision, Error, Quota};

/// Default cap on live keys.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;
const DEFAULT_SHARDS: usize = 64;
const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// At the cap, a shard drops this fraction of its keys at once (1/8), so
/// that the scan for the earliest expiries is shared by many new keys.
const EVICTED_FRACTION: usize = 8;
/// How often a hit that finds every shard empty at the cap (a `reset()`
/// under way) looks again before giving up.
const MAX_EMPTY_EVICTIONS: u32 = 8;

/// Counters in this process's memory.
///
/// * `new()` instances are independent; clones share state.
/// * Exact under concurrency: each decision runs under the lock of one of 64
///   shards, a spin lock that yields to the scheduler after a short spin (no
///   lock is held across an `.await`; a decision takes well under a
///   microsecond, except on a sliding-window log of many entries).
/// * Keys are stored as 64-bit SipHash-1-3 digests under random secrets of
///   each backend (one per strategy), so a key costs the same few bytes
///   whatever its length: a 32-byte table entry (digest, two words of state,
///   expiry) for every strategy but the sliding-window log, whose log is
///   boxed. An HTTP throttle's client-address keys are hashed in a binary
///   form of their parts (the uid, the address as 4 or 16 bytes, one byte
///   for a standard method, the route), so the layer writes no key text for
///   them. That form never equals the bytes of a text key: the text of such
///   a key given to [`decide`](InMemoryBackend::decide) or `hit` counts
///   apart from the throttle's counter.
///   Two of a million live keys share a digest with a probability
///   below 1 in 30 million, and a client cannot aim for a collision without
///   the secret.
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
///   reached.
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
    /// One SipHash secret per strategy: the strategy is part of the
    /// identity of a state (a throttle rebuilt with another strategy must not
    /// read the old layout), at no cost per hit.
    hashers: [RandomState; Strategy::ALL.len()],
    shards: Box<[Shard]>,
    shard_mask: usize,
    live_keys: AtomicUsize,
    max_keys: usize,
    sweep_interval: u64,
    /// When the backend may next sweep every shard to make room at the cap.
    next_full_sweep: AtomicU64,
}

#[repr(align(128))]
struct Shard {
    map: ShardLock,
}

/// A shard's lock: a spin lock that yields to the scheduler when it spins
/// for long.
///
/// A decision on a two-word state holds it for a few tens of nanoseconds (a
/// table lookup and a little arithmetic), so a waiter is usually served
/// within a few spins. Unlocking is a plain store, where a parking mutex
/// must swap to learn about sleepers: one atomic read-modify-write less per
/// decision (about 5 ns in a bare lock/unlock loop on the project's machine,
/// 10 ns in a decision loop). The longer holds (a shard's sweep, a table
/// growing, a long sliding-window log, making room at the cap) make waiters
/// yield rather than spin.
/// Nothing runs under the lock but the map's own work: no user code, no
/// `.await` (the guard is not `Send`), no second lock.
type ShardLock = spin::mutex::SpinMutex<ShardMap>;

/// A held shard lock. Not `Send` (unlike the spin crate's guard), so that
/// holding it across an `.await` in a `Send` future does not compile.
struct ShardGuard<'a> {
    guard: spin::mutex::SpinMutexGuard<'a, ShardMap>,
    _not_send: PhantomData<*const ()>,
}

impl Deref for ShardGuard<'_> {
    type Target = ShardMap;
    #[inline]
    fn deref(&self) -> &ShardMap {
        &self.guard
    }
}

impl DerefMut for ShardGuard<'_> {
    #[inline]
    fn deref_mut(&mut self) -> &mut ShardMap {
        &mut self.guard
    }
}

type Table<S> = HashMap<u64, S, BuildHasherDefault<DigestHasher>>;

struct ShardMap {
    /// Every strategy but the sliding-window log: 32-byte buckets (digest,
    /// two words, expiry), so that a bucket never straddles two cache lines.
    words: Table<WordSlot>,
    /// Sliding-window logs.
    logs: Table<LogSlot>,
    next_sweep: u64,
    /// The latest time a decision in this shard used: time never moves
    /// backwards for a key, even when racing threads read the clock in
    /// another order than they take the lock.
    last_now: u64,
}

/// A state of two words.
struct WordSlot {
    words: [u64; 2],
    expires: u64,
}

/// A sliding-window log (boxed inside the state).
struct LogSlot {
    state: State,
    expires: u64,
}

/// A stored state: how to decide on it and when it expires.
trait Slot: Sized {
    fn table(map: &mut ShardMap) -> &mut Table<Self>;
    fn new(state: State, expires: u64) -> Self;
    fn expires(&self) -> u64;
    fn decide(&mut self, quota: &Quota, now: u64, cost: u64, record: bool) -> Decision;
}

impl Slot for WordSlot {
    #[inline]
    fn table(map: &mut ShardMap) -> &mut Table<Self> {
        &mut map.words
    }
    #[inline]
    fn new(state: State, expires: u64) -> Self {
        WordSlot {
            words: state.words().unwrap_or_default(),
            expires,
        }
    }
    #[inline]
    fn expires(&self) -> u64 {
        self.expires
    }
    #[inline]
    fn decide(&mut self, quota: &Quota, now: u64, cost: u64, record: bool) -> Decision {
        let (words, decision, expires) = quota.decide_words(Some(self.words), now, cost);
        if record {
            self.words = words;
            self.expires = expires;
        }
        decision
    }
}

impl Slot for LogSlot {
    fn table(map: &mut ShardMap) -> &mut Table<Self> {
        &mut map.logs
    }
    fn new(state: State, expires: u64) -> Self {
        LogSlot { state, expires }
    }
    fn expires(&self) -> u64 {
        self.expires
    }
    fn decide(&mut self, quota: &Quota, now: u64, cost: u64, record: bool) -> Decision {
        if record {
            let (decision, expires) = quota.decide_micros(&mut self.state, now, cost);
            self.expires = expires;
            return decision;
        }
        let mut state = self.state.clone();
        quota.decide_micros(&mut state, now, cost).0
    }
}

/// Gives memory back after a sweep that left a table less than a quarter
/// full (keeping room to double): a flood of keys that expired does not
/// keep its peak memory. Small tables are left as they are.
fn shrink<S>(table: &mut Table<S>) {
    const SMALL: usize = 1024;
    if table.capacity() > SMALL && table.len() < table.capacity() / 4 {
        table.shrink_to((table.len() * 2).max(SMALL));
    }
}

/// The map keys are already uniform digests: hash them as they are.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
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

    /// Decides synchronously (the in-memory backend never waits).
    pub fn decide(&self, key: &str, quota: &Quota, cost: u64) -> Result<Decision, Error> {
        self.inner.decide(key.as_bytes(), quota, cost, true)
    }

    /// Decides on the bytes of a key: a text key's, or the shorter binary
    /// form HTTP throttles use for client-address keys (see
    /// [`DecisionKey`](crate::key::DecisionKey)).
    #[inline]
    pub(crate) fn decide_bytes(
        &self,
        key: &[u8],
        quota: &Quota,
        cost: u64,
        record: bool,
    ) -> Result<Decision, Error> {
        self.inner.decide(key, quota, cost, record)
    }
}

/// The system clock called directly (inlined on the hot path), or any other.
#[derive(Clone)]
enum ClockSource {
    System(SystemClock),
    Other(Arc<dyn Clock>),
}

/// Spins before yielding, when the lock is taken.
const SPINS_BEFORE_YIELD: u32 = 64;

#[inline]
fn lock(map: &ShardLock) -> ShardGuard<'_> {
    let guard = match map.try_lock() {
        Some(guard) => guard,
        None => lock_contended(map),
    };
    ShardGuard {
        guard,
        _not_send: PhantomData,
    }
}

#[cold]
fn lock_contended(map: &ShardLock) -> spin::mutex::SpinMutexGuard<'_, ShardMap> {
    let mut spins = 0;
    loop {
        // Read-only waiting: the lock's cache line is not bounced between
        // waiters while it is held.
        while map.is_locked() {
            if spins < SPINS_BEFORE_YIELD {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if let Some(guard) = map.try_lock() {
            return guard;
        }
    }
}

impl Shared {
    #[inline]
    fn now(&self) -> u64 {
        match &self.clock {
            ClockSource::System(clock) => clock.now_micros(),
            ClockSource::Other(clock) => clock.now().as_micros() as u64,
        }
    }

    fn clear(&self) {
        for shard in self.shards.iter() {
            let mut map = lock(&shard.map);
            let removed = map.words.len() + map.logs.len();
            // New tables: the memory of the old ones is given back.
            map.words = Table::default();
            map.logs = Table::default();
            self.live_keys.fetch_sub(removed, Ordering::Relaxed);
        }
    }

    fn sweep(&self, map: &mut ShardMap, now: u64) {
        let before = map.words.len() + map.logs.len();
        map.words.retain(|_, slot| slot.expires() > now);
        map.logs.retain(|_, slot| slot.expires() > now);
        shrink(&mut map.words);
        shrink(&mut map.logs);
        self.live_keys
            .fetch_sub(before - map.words.len() - map.logs.len(), Ordering::Relaxed);
        map.next_sweep = now.saturating_add(self.sweep_interval);
    }

    /// Counts one more live key, unless the cap is reached (atomically, so
    /// that racing threads never push the count past the cap).
    fn reserve_key(&self) -> bool {
        self.live_keys
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_keys).then_some(n + 1)
            })
            .is_ok()
    }

    /// Whether this caller may sweep every shard now (at most once per sweep
    /// interval, so that a full backend does not scan all keys on every hit).
    fn claim_full_sweep(&self, now: u64) -> bool {
        let next = self.next_full_sweep.load(Ordering::Relaxed);
        now >= next
            && self
                .next_full_sweep
                .compare_exchange(
                    next,
                    now.saturating_add(self.sweep_interval),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    #[inline]
    fn decide(
        &self,
        key: &[u8],
        quota: &Quota,
        cost: u64,
        record: bool,
    ) -> Result<Decision, Error> {
        // The clock is read first: the counter's latency overlaps the hashing
        // (and the lock is not held while it runs).
        let read = self.now();
        let mut hasher = self.hashers[quota.strategy() as usize].build_hasher();
        hasher.write(key);
        let digest = hasher.finish();
        match quota.strategy() {
            Strategy::SlidingWindowLog => {
                self.decide_in::<LogSlot>(digest, read, quota, cost, record)
            }
            _ => self.decide_in::<WordSlot>(digest, read, quota, cost, record),
        }
    }

    #[inline]
    fn decide_in<S: Slot>(
        &self,
        digest: u64,
        mut read: u64,
        quota: &Quota,
        cost: u64,
        record: bool,
    ) -> Result<Decision, Error> {
        let shard_index = (digest >> 32) as usize & self.shard_mask;
        let shard = &self.shards[shard_index];
        let mut swept_all = false;
        // A key's room, counted in `live_keys`, kept by an eviction in
        // another shard for this hit until it is stored (or given back).
        let mut reserved = false;
        let mut attempts = 0;
        loop {
            // The clock was read before the lock (shorter critical section);
            // the shard's latest time keeps it monotonic per key.
            let mut map = lock(&shard.map);
            let now = read.max(map.last_now);
            map.last_now = now;
            if now >= map.next_sweep {
                self.sweep(&mut map, now);
            }
            if let Some(slot) = S::table(&mut map).get_mut(&digest) {
                self.give_back(reserved);
                return Ok(slot.decide(quota, now, cost, record));
            }
            let mut state = State::new();
            let (decision, expires) = quota.decide_micros(&mut state, now, cost);
            if !record || expires <= now {
                self.give_back(reserved);
                return Ok(decision);
            }
            if !reserved && !self.reserve_key() {
                self.sweep(&mut map, now);
                if !self.reserve_key() {
                    if !swept_all && self.claim_full_sweep(now) {
                        // Expired keys may sit in other shards: sweep them
                        // all (without holding this shard's lock), then try
                        // again.
                        drop(map);
                        self.purge_all();
                        swept_all = true;
                        read = self.now();
                        continue;
                    }
                    // Full of live keys: make room by dropping those closest
                    // to their reset, in this shard (keeping one of the
                    // freed rooms for this key: no racing hit can take it),
                    // else in another shard, one lock at a time.
                    if self.evict(&mut map, true) == 0 {
                        drop(map);
                        attempts += 1;
                        // Every shard empty while the count says full: a
                        // `reset()` is under way. Look again, a few times.
                        reserved = self.evict_elsewhere(shard_index);
                        if !reserved && attempts > MAX_EMPTY_EVICTIONS {
                            return Err(Error::backend(format!(
                                "the in-memory backend {:?} could not make room for a new key \
                                 ({} live keys, the max_keys cap); raise \
                                 InMemoryBackend::builder().max_keys(..)",
                                self.prefix, self.max_keys
                            )));
                        }
                        read = self.now();
                        continue;
                    }
                }
            }
            S::table(&mut map).insert(digest, S::new(state, expires));
            return Ok(decision);
        }
    }

    /// Returns a room kept for a key that was not stored after all.
    #[inline]
    fn give_back(&self, reserved: bool) {
        if reserved {
            self.live_keys.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Drops the keys of `map` closest to their reset (the earliest
    /// expiries): an eighth of them, at least one. A key is dropped only
    /// when the backend is full of live keys; its client then starts afresh.
    /// With `keep_one`, one of the freed rooms stays counted in `live_keys`
    /// for the caller's new key. Returns how many keys went.
    fn evict(&self, map: &mut ShardMap, keep_one: bool) -> usize {
        let len = map.words.len() + map.logs.len();
        if len == 0 {
            return 0;
        }
        let count = len.div_ceil(EVICTED_FRACTION);
        let mut expiries: Vec<u64> = map
            .words
            .values()
            .map(Slot::expires)
            .chain(map.logs.values().map(Slot::expires))
            .collect();
        let threshold = *expiries.select_nth_unstable(count - 1).1;
        // Every key expiring before the threshold goes, and as many of
        // those expiring at it as make up the count.
        let mut ties = count - expiries.iter().filter(|&&e| e < threshold).count();
        let mut keep = |expires: u64| {
            if expires < threshold {
                false
            } else if expires == threshold && ties > 0 {
                ties -= 1;
                false
            } else {
                true
            }
        };
        map.words.retain(|_, slot| keep(slot.expires));
        map.logs.retain(|_, slot| keep(slot.expires));
        self.live_keys
            .fetch_sub(count - usize::from(keep_one), Ordering::Relaxed);
        count
    }

    /// [`evict`](Shared::evict) in the first shard after `from` that holds
    /// keys (one lock at a time), keeping one room for the caller. Whether
    /// it found keys to drop (and so kept the room).
    fn evict_elsewhere(&self, from: usize) -> bool {
        (1..self.shards.len()).any(|step| {
            let shard = &self.shards[(from + step) & self.shard_mask];
            self.evict(&mut lock(&shard.map), true) > 0
        })
    }

    fn purge_all(&self) {
        // Read once, outside the locks: a user's clock never runs under one.
        let now = self.now();
        for shard in self.shards.iter() {
            let mut map = lock(&shard.map);
            self.sweep(&mut map, now);
        }
    }
}

impl ThrottleBackend for InMemoryBackend {
    fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    #[inline]
    fn hit(&self, key: &str, quota: &Quota, cost: u64) -> BackendFuture {
        BackendFuture::ready(self.inner.decide(key.as_bytes(), quota, cost, true))
    }

    fn peek(&self, key: &str, quota: &Quota, cost: u64) -> BackendFuture {
        BackendFuture::ready(self.inner.decide(key.as_bytes(), quota, cost, false))
    }

    fn reset(&self) -> BoxFuture<Result<(), Error>> {
        self.inner.clear();
        Box::pin(async { Ok(()) })
    }

    fn persistent(&self) -> bool {
        self.inner.persistent
    }

    fn as_in_memory(&self) -> Option<&InMemoryBackend> {
        Some(self)
    }
}

/// Builder for [`InMemoryBackend`].
#[derive(Clone)]
pub struct InMemoryBackendBuilder {
    prefix: String,
    persistent: bool,
    clock: ClockSource,
    max_keys: usize,
    shards: usize,
    sweep_interval: Duration,
}

impl std::fmt::Debug for InMemoryBackendBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryBackendBuilder")
            .field("prefix", &self.prefix)
            .field("persistent", &self.persistent)
            .field(
                "clock",
                &match self.clock {
                    ClockSource::System(_) => "system",
                    ClockSource::Other(_) => "custom",
                },
            )
            .field("max_keys", &self.max_keys)
            .field("shards", &self.shards)
            .field("sweep_interval", &self.sweep_interval)
            .finish()
    }
}

impl Default for InMemoryBackendBuilder {
    fn default() -> Self {
        InMemoryBackendBuilder {
            prefix: "traffik".to_owned(),
            persistent: false,
            clock: ClockSource::System(SystemClock::new()),
            max_keys: DEFAULT_MAX_KEYS,
            shards: DEFAULT_SHARDS,
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
        }
    }
}

impl InMemoryBackendBuilder {
    /// The key prefix (default `"traffik"`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Keep keys across `initialize()`/`close()` (default `false`).
    pub fn persistent(mut self, persistent: bool) -> Self {
        self.persistent = persistent;
        self
    }

    /// The time source (default [`SystemClock`]); pass a
    /// [`ManualClock`](crate::clock::ManualClock) in tests.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = ClockSource::Other(Arc::new(clock));
        self
    }

    /// The most live keys held at once (default 1,000,000; at least 1).
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.max(1);
        self
    }

    /// Number of lock shards, rounded up to a power of two (default 64),
    /// and at most one per 16 keys of [`max_keys`](Self::max_keys) (rounded
    /// up to a power of two), so that each shard holds enough keys for its
    /// eviction order at the cap to mean something.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards.clamp(1, 4096).next_power_of_two();
        self
    }

    /// How often each shard sweeps its expired keys (default 1 s).
    pub fn sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// Builds the backend.
    pub fn build(self) -> InMemoryBackend {
        let shard_count = self
            .shards
            .min((self.max_keys / 16).max(1).next_power_of_two());
        let shards = (0..shard_count)
            .map(|_| Shard {
                map: ShardLock::new(ShardMap {
                    words: HashMap::default(),
                    logs: HashMap::default(),
                    next_sweep: 0,
                    last_now: 0,
                }),
            })
            .collect();
        InMemoryBackend {
            inner: Arc::new(Shared {
                prefix: self.prefix,
                persistent: self.persistent,
                clock: self.clock,
                hashers: std::array::from_fn(|_| RandomState::new()),
                shards,
                shard_mask: shard_count - 1,
                live_keys: AtomicUsize::new(0),
                max_keys: self.max_keys,
                sweep_interval: self.sweep_interval.as_micros() as u64,
                next_full_sweep: AtomicU64::new(0),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn empty_map() -> ShardMap {
        ShardMap {
            words: HashMap::default(),
            logs: HashMap::default(),
            next_sweep: 0,
            last_now: 0,
        }
    }

    /// The shard a text key of `quota`'s strategy lands in (as `decide`).
    fn shard_of(backend: &InMemoryBackend, key: &str, quota: &Quota) -> usize {
        let mut hasher = backend.inner.hashers[quota.strategy() as usize].build_hasher();
        hasher.write(key.as_bytes());
        let digest = hasher.finish();
        (digest >> 32) as usize & backend.inner.shard_mask
    }

    /// Keys that live in shard `shard`, `n` of them.
    fn keys_in(backend: &InMemoryBackend, quota: &Quota, shard: usize, n: usize) -> Vec<String> {
        (0..)
            .map(|i| format!("k{i}"))
            .filter(|key| shard_of(backend, key, quota) == shard)
            .take(n)
            .collect()
    }

    /// `count` of every shard's tables, summed.
    fn over_shards(backend: &InMemoryBackend, count: impl Fn(&ShardMap) -> usize) -> usize {
        backend
            .inner
            .shards
            .iter()
            .map(|shard| count(&lock(&shard.map)))
            .sum()
    }

    /// The keys the shards really hold, against the count.
    fn stored(backend: &InMemoryBackend) -> usize {
        over_shards(backend, |map| map.words.len() + map.logs.len())
    }

    /// The tables' room, over every shard.
    fn capacity(backend: &InMemoryBackend) -> usize {
        over_shards(backend, |map| map.words.capacity() + map.logs.capacity())
    }

    /// A flood of keys that expired, or a reset, gives its memory back.
    #[test]
    fn sweeps_and_resets_give_memory_back() {
        let clock = crate::clock::ManualClock::new();
        let backend = InMemoryBackend::builder().clock(clock.clone()).build();
        let quota = Quota::new("5/s".parse().unwrap(), Strategy::FixedWindow).unwrap();
        let flood = |prefix: &str| {
            for i in 0..200_000 {
                backend.decide(&format!("{prefix}{i}"), &quota, 1).unwrap();
            }
        };
        let shards = backend.inner.shards.len();
        flood("a");
        let peak = capacity(&backend);
        assert!(peak >= 200_000, "{peak}");
        clock.advance(Duration::from_secs(5));
        backend.purge_expired();
        assert_eq!(backend.len(), 0);
        // Small tables are kept (up to 1024 places a table).
        assert!(
            capacity(&backend) <= shards * 2 * 1024 * 2,
            "{} of {peak}",
            capacity(&backend)
        );
        flood("b");
        futures_util::FutureExt::now_or_never(backend.reset())
            .unwrap()
            .unwrap();
        assert_eq!(capacity(&backend), 0);
    }

    /// At the cap, a new key whose shard is empty makes room in another
    /// shard and keeps one freed place for itself.
    #[test]
    fn a_new_key_in_an_empty_shard_makes_room_in_another() {
        let backend = InMemoryBackend::builder()
            .clock(crate::clock::ManualClock::new())
            .max_keys(32)
            .build();
        assert_eq!(backend.inner.shards.len(), 2);
        let quota = Quota::new("1/min".parse().unwrap(), Strategy::TokenBucket).unwrap();
        for key in keys_in(&backend, &quota, 0, 32) {
            assert!(backend.decide(&key, &quota, 1).unwrap().allowed);
        }
        assert_eq!(backend.len(), 32);
        let newcomer = &keys_in(&backend, &quota, 1, 1)[0];
        assert!(backend.decide(newcomer, &quota, 1).unwrap().allowed);
        // Shard 0 dropped its earliest eighth (4), one of whose places the
        // newcomer took.
        assert_eq!(backend.len(), 29);
        assert_eq!(stored(&backend), 29);
        let in_shard = |i: usize| {
            let map = lock(&backend.inner.shards[i].map);
            map.words.len()
        };
        assert_eq!((in_shard(0), in_shard(1)), (28, 1));
        // The newcomer is counted.
        assert!(!backend.decide(newcomer, &quota, 1).unwrap().allowed);
    }

    /// Shard 0 full at the cap, shard 1 empty: threads race to store the
    /// same new keys of shard 1 (each making room in shard 0 and holding a
    /// place, the losers giving theirs back when they find the key stored),
    /// then random keys with a reset running: the count always equals the
    /// keys stored, and never passes the cap.
    #[test]
    fn the_count_matches_the_stored_keys_under_contention_at_the_cap() {
        let clock = crate::clock::ManualClock::new();
        let backend = InMemoryBackend::builder()
            .clock(clock.clone())
            .max_keys(32)
            .build();
        let quota = Quota::new("1/min".parse().unwrap(), Strategy::TokenBucket).unwrap();
        let full = keys_in(&backend, &quota, 0, 32);
        let newcomers = keys_in(&backend, &quota, 1, 6);
        for round in 0..30 {
            for key in &full {
                backend.decide(key, &quota, 1).unwrap();
            }
            assert_eq!(backend.len(), 32);
            std::thread::scope(|s| {
                for t in 0..4 {
                    let (backend, quota, newcomers) = (&backend, &quota, &newcomers);
                    s.spawn(move || {
                        // All in the same order: races on one key.
                        for key in newcomers {
                            assert!(backend.decide(key, quota, 1).is_ok());
                            assert!(backend.len() <= 32);
                        }
                        for i in 0..100 {
                            let key = format!("r{round}:{t}:{i}");
                            assert!(backend.decide(&key, quota, 1).is_ok());
                            assert!(backend.len() <= 32);
                        }
                    });
                }
                if round % 5 == 4 {
                    s.spawn(|| {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .build()
                            .unwrap();
                        rt.block_on(backend.reset()).unwrap();
                    });
                }
            });
            assert_eq!(backend.len(), stored(&backend), "round {round}");
            clock.advance(std::time::Duration::from_secs(61));
            backend.purge_expired();
            assert_eq!(backend.len(), 0, "round {round}");
            assert_eq!(stored(&backend), 0);
        }
    }

    /// The defaults the README and the docs give.
    #[test]
    fn defaults_are_as_documented() {
        let backend = InMemoryBackend::new();
        assert_eq!(backend.prefix(), "traffik");
        assert!(!ThrottleBackend::persistent(&backend));
        assert_eq!(backend.inner.max_keys, 1_000_000);
        assert_eq!(backend.inner.shards.len(), 64);
        assert_eq!(backend.inner.sweep_interval, 1_000_000, "1 s in µs");
        // At most one shard per 16 keys of the cap, a power of two.
        let small = InMemoryBackend::builder().max_keys(100).build();
        assert_eq!(small.inner.shards.len(), 8);
        let one = InMemoryBackend::builder().max_keys(1).build();
        assert_eq!(one.inner.shards.len(), 1);
        let asked = InMemoryBackend::builder().shards(4).build();
        assert_eq!(asked.inner.shards.len(), 4);
    }

    /// A waiter that finds the lock taken spins, then yields, and gets the
    /// lock only once the holder lets go, seeing everything it wrote.
    #[test]
    fn a_long_hold_makes_waiters_wait_then_serves_them() {
        let shard = ShardLock::new(empty_map());
        let waiting = AtomicBool::new(false);
        std::thread::scope(|s| {
            let mut held = lock(&shard);
            let waiter = s.spawn(|| {
                waiting.store(true, Ordering::SeqCst);
                let map = lock(&shard);
                (map.last_now, map.next_sweep)
            });
            while !waiting.load(Ordering::SeqCst) {
                std::hint::spin_loop();
            }
            // Long enough for the waiter to exhaust its spins and yield.
            for step in 0..10_000 {
                held.last_now = step;
                std::thread::yield_now();
            }
            held.next_sweep = 42;
            drop(held);
            assert_eq!(waiter.join().unwrap(), (9_999, 42));
        });
    }

    /// Threads that contend for one shard each count under the lock:
    /// nothing is lost.
    #[test]
    fn contended_increments_are_all_kept() {
        let shard = ShardLock::new(empty_map());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        lock(&shard).last_now += 1;
                    }
                });
            }
        });
        assert_eq!(lock(&shard).last_now, 80_000);
    }
}
