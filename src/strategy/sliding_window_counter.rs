//! Sliding window counter: the previous window's count weighted by the part
//! of it the sliding window still covers, plus the current window's count;
//! windows are aligned to multiples of the period. The weighted count is
//! never rounded down.
//!
//! State `[start, prev << 32 | curr]`: the start of the current window and
//! both windows' counts (the limit is below 2^32).

use super::{Quota, Step};

#[inline]
pub(super) fn step(quota: &Quota, stored: Option<[u64; 2]>, now: u64, cost: u64) -> Step {
    let p = quota.period_micros();
    let limit = quota.limit();
    let (now, current, prev, curr) = windows(quota, stored, now);
    let elapsed = now - current;
    let (l, pp, c) = (u128::from(limit), u128::from(p), u128::from(cost));
    let used = u128::from(prev) * u128::from(p - elapsed) + u128::from(curr) * pp;
    let allowed = cost <= limit && used + c * pp <= l * pp;
    let retry = if allowed {
        0
    } else if cost > limit {
        p
    } else if u128::from(curr) + c <= l {
        // Wait inside this window until the previous window weighs little enough.
        let room = (l - u128::from(curr) - c) * pp / u128::from(prev);
        (p - elapsed) - room.min(u128::from(p - elapsed)) as u64
    } else {
        // Wait for the next window, where this window's count weighs in.
        let room = (l - c) * pp / u128::from(curr);
        let extra = p - room.min(pp) as u64;
        ((p - elapsed) + extra).min(p)
    };
    let curr = if allowed { curr + cost } else { curr };
    settled(quota, now, current, prev, curr, allowed, retry)
}

/// Takes the hit made at `at` out of its window's count while that window
/// is the current or the previous one.
pub(super) fn refund(
    quota: &Quota,
    stored: Option<[u64; 2]>,
    now: u64,
    cost: u64,
    at: u64,
) -> Step {
    let p = quota.period_micros();
    let (now, current, mut prev, mut curr) = windows(quota, stored, now);
    let window = at - at % p;
    if window == current {
        curr = curr.saturating_sub(cost);
    } else if window + p == current {
        prev = prev.saturating_sub(cost);
    }
    settled(quota, now, current, prev, curr, true, 0)
}

/// `now` (not before the stored window), the start of its window and the
/// counts of the previous and current windows.
fn windows(quota: &Quota, stored: Option<[u64; 2]>, now: u64) -> (u64, u64, u64, u64) {
    let p = quota.period_micros();
    // A clock that stepped back into an earlier window decides at the
    // start of the stored one (going back would shift and lose counts).
    let now = stored.map_or(now, |[start, _]| now.max(start));
    let current = now - now % p;
    let (prev, curr) = match stored {
        Some([start, packed]) => {
            let (prev, curr) = (packed >> 32, packed & u64::from(u32::MAX));
            if start >= current {
                (prev, curr)
            } else if start + p == current {
                (curr, 0)
            } else {
                (0, 0)
            }
        }
        None => (0, 0),
    };
    (now, current, prev, curr)
}

fn settled(
    quota: &Quota,
    now: u64,
    current: u64,
    prev: u64,
    curr: u64,
    allowed: bool,
    retry: u64,
) -> Step {
    let p = quota.period_micros();
    let (l, pp) = (u128::from(quota.limit()), u128::from(p));
    let used = u128::from(prev) * u128::from(p - (now - current)) + u128::from(curr) * pp;
    // At most limit × period ≤ 2^62 (checked when the quota is built).
    let remaining = (l * pp).saturating_sub(used) as u64 / p;
    let reset = if curr > 0 {
        current + 2 * p - now
    } else if prev > 0 {
        current + p - now
    } else {
        0
    };
    Step {
        decision: quota.decision(allowed, remaining, reset, retry),
        words: [current, (prev << 32) | curr],
        expires: now + reset,
        keep: false,
    }
}
