//! Sliding window log: exact, at most `limit` hits in any `period`-long
//! interval, keeping one timestamp per admitted unit of cost.

use std::collections::VecDeque;

use super::{Quota, Step};

/// Decides on `log` without changing it; `Step::words` holds the time the
/// hit is logged at (see [`record`]).
pub(super) fn step(quota: &Quota, log: &VecDeque<u64>, now: u64, cost: u64) -> Step {
    let p = quota.period_micros();
    let limit = quota.limit();
    // A clock that stepped back decides at the newest entry, keeping the log sorted.
    let now = log.back().map_or(now, |&newest| now.max(newest));
    let first = first_live(log, now, p);
    let count = (log.len() - first) as u64;
    let allowed = cost <= limit && count + cost <= limit;
    let retry = if allowed {
        0
    } else if cost > limit {
        p
    } else {
        let must_expire = (count + cost - limit) as usize;
        (log[first + must_expire - 1] + p).saturating_sub(now)
    };
    // Cost 0 (what a rate holds while another refuses): the log as it is.
    let (count, newest) = if allowed && cost > 0 {
        (count + cost, Some(now))
    } else {
        (count, log.back().copied().filter(|_| count > 0))
    };
    settled(quota, now, count, newest, allowed, retry)
}

/// Drops the expired entries and logs `cost` hits at `now` (the time
/// [`step`] put in its `words`).
pub(super) fn record(quota: &Quota, log: &mut VecDeque<u64>, now: u64, cost: u64) {
    log.drain(..first_live(log, now, quota.period_micros()));
    log.extend(std::iter::repeat_n(now, cost as usize));
}

/// Removes the entries of the hit logged at `at` (as many as its cost)
/// that are still in the log.
pub(super) fn refund(quota: &Quota, log: &mut VecDeque<u64>, now: u64, cost: u64, at: u64) -> Step {
    let p = quota.period_micros();
    let now = log.back().map_or(now, |&newest| now.max(newest));
    log.drain(..first_live(log, now, p));
    let mut left = cost;
    log.retain(|&t| {
        let refunded = t == at && left > 0;
        left -= u64::from(refunded);
        !refunded
    });
    settled(quota, now, log.len() as u64, log.back().copied(), true, 0)
}

/// The index of the first entry still inside the window that ends at `now`
/// (the log is sorted).
fn first_live(log: &VecDeque<u64>, now: u64, period: u64) -> usize {
    log.partition_point(|&t| t.saturating_add(period) <= now)
}

fn settled(
    quota: &Quota,
    now: u64,
    count: u64,
    newest: Option<u64>,
    allowed: bool,
    retry: u64,
) -> Step {
    let expires = newest.map_or(now, |t| t + quota.period_micros());
    Step {
        // Saturating: the log may come from a quota with a higher limit.
        decision: quota.decision(
            allowed,
            quota.limit().saturating_sub(count),
            expires.saturating_sub(now),
            retry,
        ),
        words: [now, 0],
        expires,
        keep: false,
    }
}
