//! [`InMemoryBackendBuilder`]: the backend's options.

use std::hash::RandomState;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hashbrown::HashTable;

use super::table::{Shard, ShardMap};
use super::{ClockSource, InMemoryBackend, Shared, DEFAULT_MAX_KEYS};
use crate::backend::Uids;
use crate::clock::{Clock, SystemClock};

const DEFAULT_SHARDS: usize = 64;
const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

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
    use crate::backend::{InMemoryBackend, ThrottleBackend};

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
