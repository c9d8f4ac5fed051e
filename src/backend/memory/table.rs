//! The table: shards of per-key states, each under its lock, and a
//! decision on one key.

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use hashbrown::HashTable;
use smallvec::{smallvec, SmallVec};

use super::places::PlaceEntry;
use super::stored::{is_stored_form, stored_copy, Counts, StoredKey};
use super::Shared;
use crate::key::Key;
use crate::strategy::{self, Decisions, Op, State, Strategy};
use crate::{Error, Quota};

/// How often a hit that finds every shard empty at the cap (a `reset()`
/// under way) looks again before giving up.
const MAX_EMPTY_EVICTIONS: u32 = 8;

/// A shard on cache lines of its own (two, for CPUs that fetch pairs), so
/// that threads working on neighbouring shards do not slow each other.
#[repr(align(128))]
pub(super) struct Shard(pub(super) Mutex<ShardMap>);

/// A shard's tables.
pub(super) struct ShardMap {
    /// One rate decided by a strategy with a two-word state (the common
    /// case): 56-byte entries.
    pub(super) words: HashTable<WordEntry>,
    /// Sliding-window logs and keys with several rates.
    pub(super) states: HashTable<StatesEntry>,
    /// In-flight places held, per key (removed when none is held): not
    /// swept, not evicted, not counted in `max_keys` (they are as many as
    /// the requests in progress).
    pub(super) places: HashTable<PlaceEntry>,
    pub(super) next_sweep: u64,
    /// The latest time a decision in this shard used: time never moves
    /// backwards for a key, even when racing threads read the clock in
    /// another order than they take the lock.
    pub(super) last_now: u64,
}

pub(super) struct WordEntry {
    key: StoredKey,
    words: [u64; 2],
    expires: u64,
}

pub(super) struct StatesEntry {
    key: StoredKey,
    states: Box<[State]>,
    expires: u64,
}

/// The states of a key new to the table, decided before it is stored: on
/// the stack for one rate (the common case), so that a hit or a peek on a
/// new key allocates nothing but its entry (about 190 fewer instructions a
/// new key: callgrind of `memory_per_key 20000 --strategy=gcra`, 83.1M →
/// 79.3M).
type NewStates = SmallVec<[State; 1]>;

/// A table entry: a key, the states of its rates, and when they expire.
pub(super) trait Entry: Sized {
    fn table(map: &mut ShardMap) -> &mut HashTable<Self>;
    fn new(key: StoredKey, states: NewStates, expires: u64) -> Self;
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
    fn new(key: StoredKey, states: NewStates, expires: u64) -> Self {
        WordEntry {
            key,
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
    fn new(key: StoredKey, states: NewStates, expires: u64) -> Self {
        StatesEntry {
            key,
            states: states.into_vec().into_boxed_slice(),
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

impl Shared {
    #[inline]
    pub(super) fn decide(
        &self,
        key: &Key<'_>,
        quotas: &[Quota],
        cost: u64,
        op: Op,
    ) -> Result<Decisions, Error> {
        // The clock is read first: the counter's latency overlaps the hashing
        // (and the lock is not held while it runs).
        let read = self.now();
        let hash = self.hash_key(key, Counts::Rates(quotas));
        match quotas {
            [quota] if quota.strategy() != Strategy::SlidingWindowLog => {
                self.decide_in::<WordEntry>(key, hash, read, quotas, cost, op)
            }
            _ => self.decide_in::<StatesEntry>(key, hash, read, quotas, cost, op),
        }
    }

    #[inline]
    fn decide_in<E: Entry>(
        &self,
        key: &Key<'_>,
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
            let counts = Counts::Rates(quotas);
            if let Some(entry) =
                E::table(&mut map).find_mut(hash, |entry| is_stored_form(entry.key(), key, counts))
            {
                self.give_back(reserved);
                return Ok(entry.decide(quotas, now, cost, op));
            }
            let mut states: NewStates = smallvec![State::new(); quotas.len()];
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
            let entry = E::new(stored_copy(key, counts), states, expires);
            E::table(&mut map).insert_unique(hash, entry, |entry| self.hash(entry.key()));
            return Ok(decisions);
        }
    }

    /// Returns a room kept for a key that was not stored after all.
    #[inline]
    fn give_back(&self, reserved: bool) {
        if reserved {
            self.live_keys.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_small() {
        assert_eq!(std::mem::size_of::<WordEntry>(), 56);
    }
}
