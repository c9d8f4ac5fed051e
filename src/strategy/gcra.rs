//! Generic cell rate algorithm (virtual scheduling): one hit every
//! `period / limit` (the emission interval), with bursts up to `capacity`.
//!
//! State `[tat, 0]`: the theoretical arrival time of the next hit.

use super::{Quota, Step};

#[inline]
pub(super) fn step(quota: &Quota, stored: Option<[u64; 2]>, now: u64, cost: u64) -> Step {
    let interval = quota.emission_interval();
    let tolerance = quota.capacity() * interval;
    let tat = stored.map_or(now, |[tat, _]| tat);
    // Saturating: a cost far above the capacity must not overflow (it is denied below).
    let new_tat = tat.max(now).saturating_add(cost.saturating_mul(interval));
    let (allowed, tat, retry) = if cost > quota.capacity() {
        (false, tat, quota.period_micros())
    } else if new_tat <= now + tolerance {
        (true, new_tat, 0)
    } else {
        (false, tat, new_tat - tolerance - now)
    };
    settled(quota, tat, now, allowed, retry)
}

/// Moves the arrival time back by the hit's cost, not before `now`.
pub(super) fn refund(quota: &Quota, stored: Option<[u64; 2]>, now: u64, cost: u64) -> Step {
    let tat = stored.map_or(now, |[tat, _]| tat);
    let tat = tat
        .saturating_sub(cost.saturating_mul(quota.emission_interval()))
        .max(now);
    settled(quota, tat, now, true, 0)
}

fn settled(quota: &Quota, tat: u64, now: u64, allowed: bool, retry: u64) -> Step {
    let tolerance = quota.capacity() * quota.emission_interval();
    let busy_until = tat.max(now);
    // Saturating: a backend whose clock stepped back may pass a `now`
    // earlier than the one that set `tat`.
    let remaining = (now + tolerance).saturating_sub(busy_until) / quota.emission_interval();
    Step {
        decision: quota.decision(allowed, remaining, busy_until - now, retry),
        words: [tat, 0],
        expires: busy_until,
        keep: false,
    }
}
