//! The in-memory backend: a sharded table of per-key states, exact under
//! concurrency, that reclaims expired keys by itself and never grows past a
//! configurable number of keys.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hashbrown::HashTable;
use smallvec::SmallVec;

use super::{BackendFuture, BoxFuture, ThrottleBackend, Uids};
use crate::clock::{Clock, SystemClock};
use crate::key::{Key, KeyIdentity, ScopeKind};
use crate::strategy::{self, Decisions, Op, State, Strategy};
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
/// The wait a request refused an in-flight place is told (`Retry-After: 1`):
/// a place frees when a request ends, which no clock foretells.
pub(crate) const PLACE_RETRY: Duration = Duration::from_secs(1);

/// Counters in this process's memory.
///
/// * `new()` instances are independent; clones share state.
/// * Exact under concurrency: each decision runs under the lock of one of 64
///   shards (a `std::sync::Mutex`; no lock is held across an `.await`, no
///   user code runs under one).
/// * Each key is stored with its parts (throttle, identity, scope, and the
///   strategies it is decided with), so two different keys never share a
///   counter; short keys (a client address and a short route) are stored
///   inline, in a 48-byte table entry with their state and expiry. Keys
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

/// A shard on cache lines of its own (two, for CPUs that fetch pairs), so
/// that threads working on neighbouring shards do not slow each other.
#[repr(align(128))]
struct Shard(Mutex<ShardMap>);

struct ShardMap {
    /// One rate decided by a strategy with a two-word state (the common
    /// case): 48-byte entries.
    words: HashTable<WordEntry>,
    /// Sliding-window logs and keys with several rates.
    states: HashTable<StatesEntry>,
    /// In-flight places held, per key (removed when none is held): not
    /// swept, not evicted, not counted in `max_keys` (they are as many as
    /// the requests in progress).
    places: HashTable<PlaceEntry>,
    next_sweep: u64,
    /// The latest time a decision in this shard used: time never moves
    /// backwards for a key, even when racing threads read the clock in
    /// another order than they take the lock.
    last_now: u64,
}

/// A key as the table stores it: its parts, inline while short (see
/// [`stored_form`]).
type StoredKey = SmallVec<[u8; 16]>;

/// Room on the stack for the stored form of a key being looked up.
type KeyBuf = SmallVec<[u8; 96]>;

struct WordEntry {
    key: StoredKey,
    words: [u64; 2],
    expires: u64,
}

struct PlaceEntry {
    key: StoredKey,
    held: u64,
}

struct StatesEntry {
    key: StoredKey,
    states: Box<[State]>,
    expires: u64,
}

/// A table entry: a key, the states of its rates, and when they expire.
trait Entry: Sized {
    fn table(map: &mut ShardMap) -> &mut HashTable<Self>;
    fn new(key: &[u8], states: Vec<State>, expires: u64) -> Self;
    fn key(&self) -> &[u8];
    fn expires(&self) -> u64;
    /// Decides on the entry's states, keeping what the decision commits.
    fn decide(&mut self, quotas: &[Quota], now: u64, cost: u64, op: Op) -> Decisions;
}

impl Entry for WordEntry {
    #[inline]
    fn table(map: &mut ShardMap) -> &mut HashTable<Self> {
        &mut map.words
    }
    fn new(key: &[u8], states: Vec<State>, expires: u64) -> Self {
        WordEntry {
            key: StoredKey::from_slice(key),
            words: states[0].words().unwrap_or_default(),
            expires,
        }
    }
    #[inline]
    fn key(&self) -> &[u8] {
        &self.key
    }
    #[inline]
    fn expires(&self) -> u64 {
        self.expires
    }
    #[inline]
    fn decide(&mut self, quotas: &[Quota], now: u64, cost: u64, op: Op) -> Decisions {
        let mut states = [State::from_words(self.words)];
        let (decisions, expires) = strategy::decide_micros(quotas, &mut states, now, cost, op);
        if let (Some(expires), Some(words)) = (expires, states[0].words()) {
            self.words = words;
            self.expires = expires;
        }
        decisions
    }
}

impl Entry for StatesEntry {
    fn table(map: &mut ShardMap) -> &mut HashTable<Self> {
        &mut map.states
    }
    fn new(key: &[u8], states: Vec<State>, expires: u64) -> Self {
        StatesEntry {
            key: StoredKey::from_slice(key),
            states: states.into(),
            expires,
        }
    }
    fn key(&self) -> &[u8] {
        &self.key
    }
    fn expires(&self) -> u64 {
        self.expires
    }
    fn decide(&mut self, quotas: &[Quota], now: u64, cost: u64, op: Op) -> Decisions {
        if self.states.len() != quotas.len() {
            // The same key with another number of rates (a dynamic rate):
            // it starts afresh.
            self.states = vec![State::new(); quotas.len()].into();
        }
        let (decisions, expires) = strategy::decide_micros(quotas, &mut self.states, now, cost, op);
        if let Some(expires) = expires {
            self.expires = expires;
        }
        decisions
    }
}

/// Writes the form a key is stored under: the strategies it is decided
/// with (a throttle rebuilt with another strategy must not read the old
/// state), the uid, the identity (a client address as its bytes), the
/// scope. Each part ends where the next can be told to start (`0xFF`, a
/// byte no text holds, after each text but the last), so different keys
/// never share a stored form.
#[inline]
fn stored_form(key: &Key<'_>, quotas: &[Quota], out: &mut KeyBuf) {
    if quotas.len() > 1 {
        out.push(quotas.len() as u8);
    }
    out.extend(quotas.iter().map(|quota| quota.strategy() as u8));
    stored_parts(key, out);
}

/// The tag that starts the stored form of an in-flight key (no strategy is
/// numbered this high).
const PLACES: u8 = 0xFE;

/// [`stored_form`]'s parts of the key itself.
#[inline]
fn stored_parts(key: &Key<'_>, out: &mut KeyBuf) {
    out.extend_from_slice(key.throttle.as_bytes());
    out.push(0xFF);
    match key.identity {
        KeyIdentity::Address {
            ip: std::net::IpAddr::V4(ip),
            ..
        } => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        KeyIdentity::Address {
            ip: std::net::IpAddr::V6(ip),
            prefix,
        } => {
            out.push(6);
            out.push(prefix);
            out.extend_from_slice(&ip.octets());
        }
        KeyIdentity::Text(text) => {
            out.push(b'T');
            out.extend_from_slice(text.as_bytes());
            out.push(0xFF);
        }
    }
    match key.scope.0 {
        ScopeKind::Shared => out.push(b'*'),
        ScopeKind::Http { method, route } => {
            out.push(b'H');
            out.push(method as u8);
            out.extend_from_slice(route.as_bytes());
        }
        ScopeKind::WebSocket { path, context } => {
            out.push(b'W');
            out.extend_from_slice(path.as_bytes());
            out.push(0xFF);
            out.extend_from_slice(context.as_bytes());
        }
    }
}

/// Gives memory back after a sweep that left a table less than a quarter
/// full (keeping room to double): a flood of keys that expired does not
/// keep its peak memory. Small tables are left as they are.
fn shrink<E: Entry>(table: &mut HashTable<E>, hash: impl Fn(&[u8]) -> u64) {
    const SMALL: usize = 1024;
    if table.capacity() > SMALL && table.len() < table.capacity() / 4 {
        table.shrink_to((table.len() * 2).max(SMALL), |entry| hash(entry.key()));
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

    /// The hash of a key's stored form (SipHash-1-3 under the backend's
    /// secret).
    #[inline]
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

    fn clear(&self) {
        for shard in 0..self.shards.len() {
            let mut map = self.lock(shard);
            let removed = map.words.len() + map.states.len();
            // New tables: the memory of the old ones is given back.
            map.words = HashTable::new();
            map.states = HashTable::new();
            map.places = HashTable::new();
            self.live_keys.fetch_sub(removed, Ordering::Relaxed);
        }
    }

    fn sweep(&self, map: &mut ShardMap, now: u64) {
        let before = map.words.len() + map.states.len();
        map.words.retain(|entry| entry.expires > now);
        map.states.retain(|entry| entry.expires > now);
        shrink(&mut map.words, |key| self.hash(key));
        shrink(&mut map.states, |key| self.hash(key));
        self.live_keys.fetch_sub(
            before - map.words.len() - map.states.len(),
            Ordering::Relaxed,
        );
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
        key: &Key<'_>,
        quotas: &[Quota],
        cost: u64,
        op: Op,
    ) -> Result<Decisions, Error> {
        // The clock is read first: the counter's latency overlaps the hashing
        // (and the lock is not held while it runs).
        let read = self.now();
        let mut stored = KeyBuf::new();
        stored_form(key, quotas, &mut stored);
        let hash = self.hash(&stored);
        match quotas {
            [quota] if quota.strategy() != Strategy::SlidingWindowLog => {
                self.decide_in::<WordEntry>(&stored, hash, read, quotas, cost, op)
            }
            _ => self.decide_in::<StatesEntry>(&stored, hash, read, quotas, cost, op),
        }
    }

    #[inline]
    fn decide_in<E: Entry>(
        &self,
        stored: &[u8],
        hash: u64,
        mut read: u64,
        quotas: &[Quota],
        cost: u64,
        op: Op,
    ) -> Result<Decisions, Error> {
        let shard = (hash >> 32) as usize & self.shard_mask;
        let mut swept_all = false;
        // A key's room, counted in `live_keys`, kept by an eviction in
        // another shard for this hit until it is stored (or given back).
        let mut reserved = false;
        let mut attempts = 0;
        loop {
            // The clock was read before the lock (shorter critical section);
            // the shard's latest time keeps it monotonic per key.
            let mut map = self.lock(shard);
            let now = read.max(map.last_now);
            map.last_now = now;
            if now >= map.next_sweep {
                self.sweep(&mut map, now);
            }
            if let Some(entry) = E::table(&mut map).find_mut(hash, |entry| entry.key() == stored) {
                self.give_back(reserved);
                return Ok(entry.decide(quotas, now, cost, op));
            }
            let mut states = vec![State::new(); quotas.len()];
            let (decisions, expires) = strategy::decide_micros(quotas, &mut states, now, cost, op);
            let Some(expires) = expires.filter(|&expires| expires > now && op == Op::Hit) else {
                self.give_back(reserved);
                return Ok(decisions);
            };
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
                        reserved = self.evict_elsewhere(shard);
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
            let entry = E::new(stored, states, expires);
            E::table(&mut map).insert_unique(hash, entry, |entry| self.hash(entry.key()));
            return Ok(decisions);
        }
    }

    /// Takes one of `max` places of `key`.
    fn acquire(&self, key: &Key<'_>, max: u64) -> Decisions {
        let now = self.now();
        let mut stored = KeyBuf::new();
        stored.push(PLACES);
        stored_parts(key, &mut stored);
        let hash = self.hash(&stored);
        let mut map = self.lock((hash >> 32) as usize & self.shard_mask);
        let held = match map
            .places
            .find_mut(hash, |entry| entry.key[..] == stored[..])
        {
            Some(entry) if entry.held < max => {
                entry.held += 1;
                Some(entry.held)
            }
            Some(_) => None,
            None if max > 0 => {
                let entry = PlaceEntry {
                    key: StoredKey::from_slice(&stored),
                    held: 1,
                };
                map.places
                    .insert_unique(hash, entry, |entry| self.hash(&entry.key));
                Some(1)
            }
            None => None,
        };
        let decision = Decision {
            allowed: held.is_some(),
            limit: max,
            remaining: held.map_or(0, |held| max - held),
            reset_after: Duration::ZERO,
            retry_after: if held.is_some() {
                Duration::ZERO
            } else {
                PLACE_RETRY
            },
        };
        Decisions::one(Duration::from_micros(now), decision)
    }

    /// Gives back a place of `key`.
    fn release(&self, key: &Key<'_>) {
        let mut stored = KeyBuf::new();
        stored.push(PLACES);
        stored_parts(key, &mut stored);
        let hash = self.hash(&stored);
        let mut map = self.lock((hash >> 32) as usize & self.shard_mask);
        if let Ok(mut entry) = map
            .places
            .find_entry(hash, |entry| entry.key[..] == stored[..])
        {
            entry.get_mut().held -= 1;
            if entry.get().held == 0 {
                entry.remove();
            }
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
        let len = map.words.len() + map.states.len();
        if len == 0 {
            return 0;
        }
        let count = len.div_ceil(EVICTED_FRACTION);
        let mut expiries: Vec<u64> = map
            .words
            .iter()
            .map(Entry::expires)
            .chain(map.states.iter().map(Entry::expires))
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
        map.words.retain(|entry| keep(entry.expires));
        map.states.retain(|entry| keep(entry.expires));
        self.live_keys
            .fetch_sub(count - usize::from(keep_one), Ordering::Relaxed);
        count
    }

    /// [`evict`](Shared::evict) in the first shard after `from` that holds
    /// keys (one lock at a time), keeping one room for the caller. Whether
    /// it found keys to drop (and so kept the room).
    fn evict_elsewhere(&self, from: usize) -> bool {
        (1..self.shards.len())
            .any(|step| self.evict(&mut self.lock((from + step) & self.shard_mask), true) > 0)
    }

    fn purge_all(&self) {
        // Read once, outside the locks: a user's clock never runs under one.
        let now = self.now();
        for shard in 0..self.shards.len() {
            self.sweep(&mut self.lock(shard), now);
        }
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
            .map(|_| {
                Shard(Mutex::new(ShardMap {
                    words: HashTable::new(),
                    states: HashTable::new(),
                    places: HashTable::new(),
                    next_sweep: 0,
                    last_now: 0,
                }))
            })
            .collect();
        InMemoryBackend {
            inner: Arc::new(Shared {
                prefix: self.prefix,
                persistent: self.persistent,
                clock: self.clock,
                hasher: RandomState::new(),
                shards,
                shard_mask: shard_count - 1,
                live_keys: AtomicUsize::new(0),
                max_keys: self.max_keys,
                sweep_interval: self.sweep_interval.as_micros() as u64,
                next_full_sweep: AtomicU64::new(0),
                uids: Uids::default(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shard a client-only key of `quota`'s strategy lands in (as `decide`).
    fn shard_of(backend: &InMemoryBackend, key: &Key<'_>, quota: &Quota) -> usize {
        let mut stored = KeyBuf::new();
        stored_form(key, std::slice::from_ref(quota), &mut stored);
        (backend.inner.hash(&stored) >> 32) as usize & backend.inner.shard_mask
    }

    /// Identities whose keys live in shard `shard`, `n` of them.
    fn keys_in(backend: &InMemoryBackend, quota: &Quota, shard: usize, n: usize) -> Vec<String> {
        (0..)
            .map(|i| format!("k{i}"))
            .filter(|id| shard_of(backend, &key(id), quota) == shard)
            .take(n)
            .collect()
    }

    fn key(identity: &str) -> Key<'_> {
        Key::new("t", identity, crate::key::Scope::shared())
    }

    /// `count` of every shard's tables, summed.
    fn over_shards(backend: &InMemoryBackend, count: impl Fn(&ShardMap) -> usize) -> usize {
        (0..backend.inner.shards.len())
            .map(|shard| count(&backend.inner.lock(shard)))
            .sum()
    }

    /// The keys the shards really hold, against the count.
    fn stored(backend: &InMemoryBackend) -> usize {
        over_shards(backend, |map| map.words.len() + map.states.len())
    }

    /// The tables' room, over every shard.
    fn capacity(backend: &InMemoryBackend) -> usize {
        over_shards(backend, |map| map.words.capacity() + map.states.capacity())
    }

    #[test]
    fn entries_are_small() {
        assert_eq!(std::mem::size_of::<WordEntry>(), 48);
    }

    #[test]
    fn stored_forms_tell_keys_apart() {
        let quota = Quota::new("1/s".parse().unwrap(), Strategy::TokenBucket).unwrap();
        let gcra = Quota::new("1/s".parse().unwrap(), Strategy::Gcra).unwrap();
        let get = http::Method::GET;
        let keys = [
            Key::new("a", "x", crate::key::Scope::shared()),
            Key::new("a", "x", crate::key::Scope::http(&get, "/")),
            Key::new("a", "x\u{1}", crate::key::Scope::shared()),
            Key::new("ax", "", crate::key::Scope::shared()),
            Key::new("a", "x", crate::key::Scope::websocket("/", "")),
            Key::new("a", "x", crate::key::Scope::websocket("", "/")),
            Key::client(
                "a",
                "10.0.0.1".parse().unwrap(),
                64,
                crate::key::Scope::shared(),
            ),
            Key::client(
                "a",
                "::a00:1".parse().unwrap(),
                64,
                crate::key::Scope::shared(),
            ),
            Key::client(
                "a",
                "::a00:1".parse().unwrap(),
                48,
                crate::key::Scope::shared(),
            ),
        ];
        let mut forms = Vec::new();
        for key in &keys {
            for quotas in [&[quota][..], &[gcra], &[quota, gcra], &[gcra, quota]] {
                let mut out = KeyBuf::new();
                stored_form(key, quotas, &mut out);
                forms.push(out.to_vec());
            }
        }
        let len = forms.len();
        forms.sort();
        forms.dedup();
        assert_eq!(forms.len(), len);
    }

    /// A flood of keys that expired, or a reset, gives its memory back.
    #[test]
    fn sweeps_and_resets_give_memory_back() {
        let clock = crate::clock::ManualClock::new();
        let backend = InMemoryBackend::builder().clock(clock.clone()).build();
        let quota = Quota::new("5/s".parse().unwrap(), Strategy::FixedWindow).unwrap();
        let flood = |prefix: &str| {
            for i in 0..200_000 {
                backend
                    .hit(&key(&format!("{prefix}{i}")), &quota, 1)
                    .unwrap();
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
        for id in keys_in(&backend, &quota, 0, 32) {
            assert!(backend.hit(&key(&id), &quota, 1).unwrap().allowed);
        }
        assert_eq!(backend.len(), 32);
        let newcomer = &keys_in(&backend, &quota, 1, 1)[0];
        assert!(backend.hit(&key(newcomer), &quota, 1).unwrap().allowed);
        // Shard 0 dropped its earliest eighth (4), one of whose places the
        // newcomer took.
        assert_eq!(backend.len(), 29);
        assert_eq!(stored(&backend), 29);
        let in_shard = |i: usize| backend.inner.lock(i).words.len();
        assert_eq!((in_shard(0), in_shard(1)), (28, 1));
        // The newcomer is counted.
        assert!(!backend.hit(&key(newcomer), &quota, 1).unwrap().allowed);
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
            for id in &full {
                backend.hit(&key(id), &quota, 1).unwrap();
            }
            assert_eq!(backend.len(), 32);
            std::thread::scope(|s| {
                for t in 0..4 {
                    let (backend, quota, newcomers) = (&backend, &quota, &newcomers);
                    s.spawn(move || {
                        // All in the same order: races on one key.
                        for id in newcomers {
                            assert!(backend.hit(&key(id), quota, 1).is_ok());
                            assert!(backend.len() <= 32);
                        }
                        for i in 0..100 {
                            let id = format!("r{round}:{t}:{i}");
                            assert!(backend.hit(&key(&id), quota, 1).is_ok());
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
}
