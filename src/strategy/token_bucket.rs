//! Token bucket: capacity `capacity`, refilled continuously at
//! `limit / period`; a fresh bucket is full.
//!
//! State `[units, last]`: the tokens in units of 1/period (refilling `limit`
//! units per microsecond makes the refill exact) and the time of the last
//! decision.

use super::{Quota, Step};

#[inline]
pub(super) fn step(quota: &Quota, stored: Option<[u64; 2]>, now: u64, cost: u64) -> Step {
    // Plain u64 arithmetic: `Quota::new` keeps capacity × period ≤ 2^62, and
    // sums that could pass it saturate before being capped at `full`.
    let (period, limit) = (quota.period_micros(), quota.limit());
    let full = quota.capacity() * period;
    let (units, last) = refilled(quota, stored, now);
    let (allowed, units, retry) = if cost > quota.capacity() {
        (false, units, period)
    } else if cost * period <= units {
        (true, units - cost * period, 0)
    } else {
        (false, units, (cost * period - units).div_ceil(limit))
    };
    let reset = (full - units).div_ceil(limit);
    Step {
        decision: quota.decision(allowed, units / period, reset, retry),
        words: [units, now.max(last)],
        expires: now + reset,
        keep: false,
    }
}

/// Gives `cost` tokens back, up to the capacity.
pub(super) fn refund(quota: &Quota, stored: Option<[u64; 2]>, now: u64, cost: u64) -> Step {
    let full = quota.capacity() * quota.period_micros();
    let (units, last) = refilled(quota, stored, now);
    let units = units
        .saturating_add(cost.saturating_mul(quota.period_micros()))
        .min(full);
    let reset = (full - units).div_ceil(quota.limit());
    Step {
        decision: quota.decision(true, units / quota.period_micros(), reset, 0),
        words: [units, now.max(last)],
        expires: now + reset,
        keep: false,
    }
}

/// The tokens at `now` (a fresh bucket is full) and the last decision's time.
fn refilled(quota: &Quota, stored: Option<[u64; 2]>, now: u64) -> (u64, u64) {
    let full = quota.capacity() * quota.period_micros();
    let Some([units, last]) = stored else {
        return (full, now);
    };
    let elapsed = now.saturating_sub(last);
    let units = units
        .saturating_add(elapsed.saturating_mul(quota.limit()))
        .min(full);
    (units, last)
}
