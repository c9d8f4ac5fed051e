//! Reclaiming keys: each shard sweeps its expired keys, and at the cap on
//! live keys a new key makes room by evicting those closest to their
//! reset.

use std::sync::atomic::Ordering;

use hashbrown::HashTable;

use super::table::{Entry, ShardMap};
use super::Shared;

/// At the cap, a shard drops this fraction of its keys at once (1/8), so
/// that the scan for the earliest expiries is shared by many new keys.
const EVICTED_FRACTION: usize = 8;

/// Gives memory back after a sweep that left a table less than a quarter
/// full (keeping room to double): a flood of keys that expired does not
/// keep its peak memory. Small tables are left as they are.
fn shrink<E: Entry>(table: &mut HashTable<E>, hash: impl Fn(&[u8]) -> u64) {
    const SMALL: usize = 1024;
    if table.capacity() > SMALL && table.len() < table.capacity() / 4 {
        table.shrink_to((table.len() * 2).max(SMALL), |entry| hash(entry.key()));
    }
}

impl Shared {
    pub(super) fn clear(&self) {
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

    pub(super) fn sweep(&self, map: &mut ShardMap, now: u64) {
        let before = map.words.len() + map.states.len();
        map.words.retain(|entry| entry.expires() > now);
        map.states.retain(|entry| entry.expires() > now);
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
    pub(super) fn reserve_key(&self) -> bool {
        self.live_keys
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_keys).then_some(n + 1)
            })
            .is_ok()
    }

    /// Whether this caller may sweep every shard now (at most once per sweep
    /// interval, so that a full backend does not scan all keys on every hit).
    pub(super) fn claim_full_sweep(&self, now: u64) -> bool {
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

    /// Drops the keys of `map` closest to their reset (the earliest
    /// expiries): an eighth of them, at least one. A key is dropped only
    /// when the backend is full of live keys; its client then starts afresh.
    /// With `keep_one`, one of the freed rooms stays counted in `live_keys`
    /// for the caller's new key. Returns how many keys went.
    pub(super) fn evict(&self, map: &mut ShardMap, keep_one: bool) -> usize {
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
        map.words.retain(|entry| keep(entry.expires()));
        map.states.retain(|entry| keep(entry.expires()));
        self.live_keys
            .fetch_sub(count - usize::from(keep_one), Ordering::Relaxed);
        count
    }

    /// [`evict`](Shared::evict) in the first shard after `from` that holds
    /// keys (one lock at a time), keeping one room for the caller. Whether
    /// it found keys to drop (and so kept the room).
    pub(super) fn evict_elsewhere(&self, from: usize) -> bool {
        (1..self.shards.len())
            .any(|step| self.evict(&mut self.lock((from + step) & self.shard_mask), true) > 0)
    }

    pub(super) fn purge_all(&self) {
        // Read once, outside the locks: a user's clock never runs under one.
        let now = self.now();
        for shard in 0..self.shards.len() {
            self.sweep(&mut self.lock(shard), now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::stored::Counts;
    use super::*;
    use crate::backend::InMemoryBackend;
    use crate::key::Key;
    use crate::{Quota, Strategy};

    /// The shard a client-only key of `quota`'s strategy lands in (as `decide`).
    fn shard_of(backend: &InMemoryBackend, key: &Key<'_>, quota: &Quota) -> usize {
        let hash = backend
            .inner
            .hash_key(key, Counts::Rates(std::slice::from_ref(quota)));
        (hash >> 32) as usize & backend.inner.shard_mask
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
}
