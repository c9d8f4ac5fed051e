//! Fixed window: at most `limit` per window; a window starts at the first
//! hit counted after the previous one ended.
//!
//! State `[start, count]`.

use super::{Quota, Step};

#[inline]
pub(super) fn step(quota: &Quota, stored: Option<[u64; 2]>, now: u64, cost: u64) -> Step {
    let period = quota.period_micros();
    let (start, count) = current(quota, stored, now);
    // A clock that stepped back stays in the stored window (moving its
    // start back would end it early and admit more than the limit).
    let now = now.max(start);
    let end = start.saturating_add(period);
    // Checked: a limit near u64::MAX with a huge cost must not wrap.
    let allowed = count
        .checked_add(cost)
        .is_some_and(|total| total <= quota.limit());
    let count = if allowed { count + cost } else { count };
    // A cost above the limit never fits in a window: one period, as documented.
    let retry = if cost > quota.limit() {
        period
    } else {
        end - now
    };
    Step {
        // Saturating: the state may come from a quota with a higher limit.
        decision: quota.decision(
            allowed,
            quota.limit().saturating_sub(count),
            end - now,
            retry,
        ),
        words: [start, count],
        expires: end,
        keep: false,
    }
}

/// Takes the hit made at `at` out of the count, if its window is still the
/// current one; with no current window, changes nothing (a refund does not
/// start a window).
pub(super) fn refund(
    quota: &Quota,
    stored: Option<[u64; 2]>,
    now: u64,
    cost: u64,
    at: u64,
) -> Step {
    let (start, count) = current(quota, stored, now);
    let now = now.max(start);
    let end = start.saturating_add(quota.period_micros());
    let held = stored.is_some_and(|[stored_start, _]| stored_start == start);
    let count = if held && at >= start {
        count.saturating_sub(cost)
    } else {
        count
    };
    Step {
        decision: quota.decision(true, quota.limit().saturating_sub(count), end - now, 0),
        words: [start, count],
        expires: end,
        keep: !held,
    }
}

/// The window `now` falls in: the stored one while it lasts, else a new one
/// starting now.
fn current(quota: &Quota, stored: Option<[u64; 2]>, now: u64) -> (u64, u64) {
    match stored {
        Some([start, count]) if now < start.saturating_add(quota.period_micros()) => (start, count),
        _ => (now, 0),
    }
}
