//! In-flight places (`.max_in_flight(n)`): how many requests of a key are
//! in progress, in each shard beside its counters.

use super::stored::{is_stored_form, stored_copy, Counts, StoredKey};
use super::Shared;
use crate::key::Key;
use crate::strategy::Decisions;

/// The places of one key held now.
pub(super) struct PlaceEntry {
    key: StoredKey,
    held: u64,
}

impl Shared {
    /// Takes one of `max` places of `key`.
    pub(super) fn acquire(&self, key: &Key<'_>, max: u64) -> Decisions {
        let now = self.now();
        let hash = self.hash_key(key, Counts::Places);
        let mut map = self.lock((hash >> 32) as usize & self.shard_mask);
        let held = match map.places.find_mut(hash, |entry| {
            is_stored_form(&entry.key, key, Counts::Places)
        }) {
            Some(entry) if entry.held < max => {
                entry.held += 1;
                Some(entry.held)
            }
            Some(_) => None,
            None if max > 0 => {
                let entry = PlaceEntry {
                    key: stored_copy(key, Counts::Places),
                    held: 1,
                };
                map.places
                    .insert_unique(hash, entry, |entry| self.hash(&entry.key));
                Some(1)
            }
            None => None,
        };
        let remaining = held.map_or(0, |held| max - held);
        crate::backend::place_decision(now, held.is_some(), max, remaining)
    }

    /// Gives back a place of `key`.
    pub(super) fn release(&self, key: &Key<'_>) {
        let hash = self.hash_key(key, Counts::Places);
        let mut map = self.lock((hash >> 32) as usize & self.shard_mask);
        if let Ok(mut entry) = map.places.find_entry(hash, |entry| {
            is_stored_form(&entry.key, key, Counts::Places)
        }) {
            entry.get_mut().held -= 1;
            if entry.get().held == 0 {
                entry.remove();
            }
        }
    }
}
