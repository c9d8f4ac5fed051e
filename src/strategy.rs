//! The algorithms, as pure functions of (stored state, now, quota, cost) →
//! (new state, [`Decision`]).
//!
//! Every backend runs the same arithmetic: the in-memory backend calls
//! [`Quota::decide`] under a lock, the Redis backend runs the same steps in a
//! Lua script, and a custom backend can call [`Quota::decide`] inside its own
//! transaction. Times are whole microseconds since the backend clock's origin.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use crate::divisor::Divisor;
use crate::{Error, Rate};

/// A rate-limiting algorithm. All are exact under concurrency on every backend.
///
/// | strategy | state per key | admits |
/// |---|---|---|
/// | [`TokenBucket`](Strategy::TokenBucket) | 2 words | up to `capacity` at once (default `limit`, or `burst`), refilled continuously at `limit/period` |
/// | [`FixedWindow`](Strategy::FixedWindow) | 2 words | `limit` per window; the window starts at the key's first hit; rejected hits are not counted |
/// | [`SlidingWindowCounter`](Strategy::SlidingWindowCounter) | 2 words | previous window's count weighted by its remaining overlap plus the current count ≤ `limit`; windows aligned to multiples of the period |
/// | [`SlidingWindowLog`](Strategy::SlidingWindowLog) | one timestamp per admitted unit of cost | at most `limit` in any `period`-long interval |
/// | [`Gcra`](Strategy::Gcra) | 1 word | generic cell rate algorithm: one hit every `period/limit`, with bursts up to `limit` (or `burst`) |
///
/// `retry_after` is the exact wait until the same hit would be allowed, with
/// one exception: a [`SlidingWindowCounter`](Strategy::SlidingWindowCounter)
/// can keep a hit out for longer than one period (a full previous window
/// still weighs in after the current one ends); its `retry_after` is then
/// capped at the period, the earliest moment worth retrying. A cost above the
/// capacity is never admitted; its `retry_after` is one period.
///
/// [`Gcra`](Strategy::Gcra) spaces hits by `period / limit` rounded down to
/// whole microseconds, so above about 1,000 hits per second its rate is a
/// little higher than asked (by less than one part in `period/limit` µs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Token bucket (the default).
    #[default]
    TokenBucket,
    /// Fixed window starting at the key's first hit.
    FixedWindow,
    /// Sliding window approximated from two aligned fixed windows.
    SlidingWindowCounter,
    /// Exact sliding window keeping a log of hit timestamps.
    SlidingWindowLog,
    /// Generic cell rate algorithm (virtual scheduling).
    Gcra,
}

impl Strategy {
    /// A short, stable name (used in Redis script names and logs).
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::TokenBucket => "token_bucket",
            Strategy::FixedWindow => "fixed_window",
            Strategy::SlidingWindowCounter => "sliding_window_counter",
            Strategy::SlidingWindowLog => "sliding_window_log",
            Strategy::Gcra => "gcra",
        }
    }

    /// Every strategy, for tests and benchmarks.
    pub const ALL: [Strategy; 5] = [
        Strategy::TokenBucket,
        Strategy::FixedWindow,
        Strategy::SlidingWindowCounter,
        Strategy::SlidingWindowLog,
        Strategy::Gcra,
    ];
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The outcome of one hit (or peek).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the hit is admitted.
    pub allowed: bool,
    /// The limit (the bucket capacity for token bucket and GCRA).
    pub limit: u64,
    /// Hits of cost 1 still allowed right now after this decision.
    pub remaining: u64,
    /// Time until the key is back to its full quota.
    pub reset_after: Duration,
    /// Zero when allowed; otherwise the exact wait until the same hit would be
    /// allowed (see [`Strategy`] for the one capped case).
    pub retry_after: Duration,
}

impl Decision {
    /// The decision for exempt identities, unlimited rates and cost 0: allowed,
    /// with `u64::MAX` remaining.
    pub const fn unlimited() -> Decision {
        Decision {
            allowed: true,
            limit: u64::MAX,
            remaining: u64::MAX,
            reset_after: Duration::ZERO,
            retry_after: Duration::ZERO,
        }
    }

    /// `retry_after` in whole seconds, rounded up, at least 1 (the
    /// `Retry-After` header value).
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.retry_after).max(1)
    }

    /// `reset_after` in whole seconds, rounded up.
    pub fn reset_after_secs(&self) -> u64 {
        ceil_secs(self.reset_after)
    }
}

pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// What deciding on a two-word state gives: the new words, the decision and
/// the time (microseconds) from which the key can be deleted.
pub(crate) type Outcome = ([u64; 2], Decision, u64);

/// Stored state of one key. Opaque, but convertible to and from plain
/// numbers so that custom backends can persist it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State(Repr);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Repr {
    #[default]
    Fresh,
    Words([u64; 2]),
    // Boxed on purpose: keeps `State` at three words for the common strategies.
    #[allow(clippy::box_collection)]
    Log(Box<VecDeque<u64>>),
}

impl State {
    /// A key never seen (or expired).
    pub const fn new() -> State {
        State(Repr::Fresh)
    }

    /// `true` for a key never seen.
    pub fn is_fresh(&self) -> bool {
        matches!(self.0, Repr::Fresh)
    }

    /// The two words of a token bucket, fixed window, sliding window counter
    /// or GCRA state.
    pub fn words(&self) -> Option<[u64; 2]> {
        match &self.0 {
            Repr::Words(words) => Some(*words),
            _ => None,
        }
    }

    /// Rebuilds a state saved with [`State::words`].
    pub fn from_words(words: [u64; 2]) -> State {
        State(Repr::Words(words))
    }

    /// The timestamps (microseconds) of a sliding window log, oldest first.
    pub fn log(&self) -> Option<&VecDeque<u64>> {
        match &self.0 {
            Repr::Log(log) => Some(log),
            _ => None,
        }
    }

    /// Rebuilds a state saved with [`State::log`].
    pub fn from_log(log: impl IntoIterator<Item = u64>) -> State {
        State(Repr::Log(Box::new(log.into_iter().collect())))
    }

    fn stored_words(&self) -> Option<[u64; 2]> {
        match &self.0 {
            Repr::Words(words) => Some(*words),
            _ => None,
        }
    }
}

/// A compiled limit: a [`Rate`], a [`Strategy`] and a capacity, checked once
/// so that deciding never fails.
///
/// ```
/// use std::time::Duration;
/// use traffik::{Quota, Rate, Strategy, strategy::State};
///
/// let quota = Quota::new("2/s".parse().unwrap(), Strategy::FixedWindow).unwrap();
/// let mut state = State::new();
/// let now = Duration::from_secs(10);
/// assert!(quota.decide(&mut state, now, 1).allowed);
/// assert!(quota.decide(&mut state, now, 1).allowed);
/// let third = quota.decide(&mut state, now, 1);
/// assert!(!third.allowed);
/// assert_eq!(third.retry_after, Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    rate: Rate,
    strategy: Strategy,
    capacity: u64,
    /// Hits per period; divides the token bucket's refill times.
    limit: Divisor,
    /// The period in microseconds; divides the token bucket's remaining
    /// tokens and the sliding window counter's windows.
    period: Divisor,
    /// `period / limit`, at least 1 (GCRA's emission interval).
    interval: Divisor,
}

/// Largest product of numbers the strategies multiply (kept well inside u64).
const MAX_PRODUCT: u128 = 1 << 62;

impl Quota {
    /// A quota of `rate` enforced by `strategy`.
    ///
    /// Errors: an unlimited rate (there is nothing to decide), or numbers too
    /// large for exact integer arithmetic (named in the message).
    pub fn new(rate: Rate, strategy: Strategy) -> Result<Quota, Error> {
        if rate.is_unlimited() {
            return Err(Error::configuration(
                "an unlimited rate has no quota: unlimited throttles never reach a backend",
            ));
        }
        let quota = Quota {
            rate,
            strategy,
            capacity: rate.limit(),
            limit: Divisor::new(rate.limit()),
            period: Divisor::new(rate.period_micros()),
            interval: Divisor::new((rate.period_micros() / rate.limit()).max(1)),
        };
        quota.check()?;
        Ok(quota)
    }

    /// Sets the bucket capacity (`burst`) of a [`Strategy::TokenBucket`] or
    /// [`Strategy::Gcra`] quota; other strategies reject it.
    pub fn with_burst(mut self, burst: u64) -> Result<Quota, Error> {
        if !matches!(self.strategy, Strategy::TokenBucket | Strategy::Gcra) {
            return Err(Error::configuration(format!(
                "burst({burst}) applies to Strategy::TokenBucket and Strategy::Gcra only, not {:?}",
                self.strategy
            )));
        }
        if burst == 0 {
            return Err(Error::configuration(
                "burst must be at least 1 (it is the bucket capacity)",
            ));
        }
        self.capacity = burst;
        self.check()?;
        Ok(self)
    }

    fn check(&self) -> Result<(), Error> {
        let too_big_for = |what: &str, fix: &str| {
            Err(Error::configuration(format!(
                "rate {} with {:?} is too large for exact arithmetic ({what}); {fix}",
                self.rate, self.strategy
            )))
        };
        let too_big = |what: &str| too_big_for(what, "use a shorter period or a smaller limit");
        match self.strategy {
            Strategy::TokenBucket => {
                if u128::from(self.capacity) * u128::from(self.period.get()) > MAX_PRODUCT {
                    return too_big("capacity × period in microseconds exceeds 2^62");
                }
            }
            Strategy::Gcra => {
                if self.period.get() < self.limit.get() {
                    return Err(Error::configuration(format!(
                        "rate {} is too fast for Strategy::Gcra (at most one hit per microsecond); use Strategy::TokenBucket",
                        self.rate
                    )));
                }
                if u128::from(self.capacity) * u128::from(self.emission_interval()) > MAX_PRODUCT {
                    return too_big("burst × emission interval exceeds 2^62");
                }
            }
            Strategy::SlidingWindowCounter => {
                if self.limit.get() > u64::from(u32::MAX) {
                    return too_big_for("the limit exceeds 2^32 - 1", "use a smaller limit");
                }
                if u128::from(self.limit.get()) * u128::from(self.period.get()) > MAX_PRODUCT {
                    return too_big("limit × period in microseconds exceeds 2^62");
                }
            }
            Strategy::SlidingWindowLog => {
                if self.limit.get() > 1_000_000 {
                    return too_big_for(
                        "a sliding window log keeps one entry per hit, at most 1,000,000 per period",
                        "use a smaller limit, or Strategy::SlidingWindowCounter",
                    );
                }
            }
            Strategy::FixedWindow => {}
        }
        Ok(())
    }

    /// The rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// The strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Hits allowed per period.
    pub fn limit(&self) -> u64 {
        self.limit.get()
    }

    /// The bucket capacity: `burst` if set, else the limit.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The period in microseconds.
    pub fn period_micros(&self) -> u64 {
        self.period.get()
    }

    /// GCRA's emission interval in whole microseconds: `period / limit`,
    /// rounded down.
    pub fn emission_interval(&self) -> u64 {
        self.interval.get()
    }

    /// Decides a hit of `cost` at `now` (time since the clock's origin) and
    /// updates `state`. `cost` is at least 1; a cost above the capacity is
    /// never admitted (its `retry_after` is one period).
    pub fn decide(&self, state: &mut State, now: Duration, cost: u64) -> Decision {
        self.decide_micros(state, now.as_micros() as u64, cost).0
    }

    /// Like [`decide`](Quota::decide) without changing anything.
    pub fn peek(&self, state: &State, now: Duration, cost: u64) -> Decision {
        let mut copy = state.clone();
        self.decide(&mut copy, now, cost)
    }

    /// Decides at `now` microseconds; also returns the time (microseconds)
    /// from which the new state is equivalent to a fresh one and can be
    /// deleted.
    #[inline]
    pub fn decide_micros(&self, state: &mut State, now: u64, cost: u64) -> (Decision, u64) {
        if self.strategy == Strategy::SlidingWindowLog {
            return self.sliding_window_log(state, now, cost.max(1));
        }
        let (words, decision, expires) = self.decide_words(state.stored_words(), now, cost);
        *state = State::from_words(words);
        (decision, expires)
    }

    /// [`decide_micros`](Quota::decide_micros) for the strategies whose state
    /// is two words (every one but the sliding-window log), on the words
    /// themselves: `stored` is `None` for a fresh key; returns the new words,
    /// the decision and the expiry. The in-memory backend's hot path.
    #[inline]
    pub(crate) fn decide_words(&self, stored: Option<[u64; 2]>, now: u64, cost: u64) -> Outcome {
        let cost = cost.max(1);
        match self.strategy {
            Strategy::TokenBucket => self.token_bucket(stored, now, cost),
            Strategy::FixedWindow => self.fixed_window(stored, now, cost),
            Strategy::SlidingWindowCounter => self.sliding_window_counter(stored, now, cost),
            Strategy::Gcra => self.gcra(stored, now, cost),
            // Never stored as words (backends keep logs apart): decided on a
            // fresh log, whose words are meaningless.
            Strategy::SlidingWindowLog => {
                let (decision, expires) = self.sliding_window_log(&mut State::new(), now, cost);
                ([0, 0], decision, expires)
            }
        }
    }

    #[inline]
    fn decision(
        &self,
        allowed: bool,
        remaining: u64,
        reset_after: u64,
        retry_after: u64,
    ) -> Decision {
        Decision {
            allowed,
            limit: self.capacity,
            remaining,
            reset_after: Duration::from_micros(reset_after),
            retry_after: Duration::from_micros(if allowed { 0 } else { retry_after }),
        }
    }

    /// Tokens are counted in units of 1/period so that refilling `limit`
    /// tokens per period adds exactly `limit` units per microsecond.
    #[inline]
    fn token_bucket(&self, stored: Option<[u64; 2]>, now: u64, cost: u64) -> Outcome {
        // Plain u64 arithmetic: `check` keeps capacity × period ≤ 2^62, and
        // sums that could go past it saturate before being capped at `full`.
        let (period, limit) = (self.period.get(), self.limit.get());
        let full = self.capacity * period;
        let (mut units, last) = match stored {
            Some([units, last]) => (units, last),
            None => (full, now),
        };
        let elapsed = now.saturating_sub(last);
        units = units
            .saturating_add(elapsed.saturating_mul(limit))
            .min(full);
        let (allowed, retry) = if cost > self.capacity {
            (false, self.period.get())
        } else {
            let need = cost * period;
            if need <= units {
                units -= need;
                (true, 0)
            } else {
                (false, self.limit.div_ceil(need - units))
            }
        };
        let words = [units, now.max(last)];
        let reset = self.limit.div_ceil(full - units);
        let remaining = self.period.div(units);
        (
            words,
            self.decision(allowed, remaining, reset, retry),
            now + reset,
        )
    }

    #[inline]
    fn gcra(&self, stored: Option<[u64; 2]>, now: u64, cost: u64) -> Outcome {
        let interval = self.emission_interval();
        let tolerance = self.capacity * interval;
        let tat = match stored {
            Some([tat, _]) => tat,
            None => now,
        };
        let base = tat.max(now);
        // Saturating: a cost far above the capacity must not overflow (it is denied below).
        let new_tat = base.saturating_add(cost.saturating_mul(interval));
        let (allowed, tat, retry) = if cost > self.capacity {
            (false, tat, self.period.get())
        } else if new_tat <= now + tolerance {
            (true, new_tat, 0)
        } else {
            (false, tat, new_tat - tolerance - now)
        };
        let words = [tat, 0];
        let busy_until = tat.max(now);
        // Saturating: a backend whose clock stepped back may pass a `now`
        // earlier than the one that set `tat`.
        let remaining = self
            .interval
            .div((now + tolerance).saturating_sub(busy_until));
        let reset = busy_until - now;
        (
            words,
            self.decision(allowed, remaining, reset, retry),
            busy_until,
        )
    }

    #[inline]
    fn fixed_window(&self, stored: Option<[u64; 2]>, now: u64, cost: u64) -> Outcome {
        let (start, mut count) = match stored {
            Some([start, count]) if now < start.saturating_add(self.period.get()) => (start, count),
            _ => (now, 0),
        };
        // A clock that stepped back stays in the stored window (moving its
        // start back would end it early and admit more than the limit).
        let now = now.max(start);
        let end = start.saturating_add(self.period.get());
        // Checked: a limit near u64::MAX with a huge cost must not wrap.
        let allowed = count
            .checked_add(cost)
            .is_some_and(|total| total <= self.limit.get());
        if allowed {
            count += cost;
        }
        let words = [start, count];
        let reset = end - now;
        // A cost above the limit never fits in a window: one period, as documented.
        let retry = if cost > self.limit.get() {
            self.period.get()
        } else {
            reset
        };
        (
            words,
            // Saturating: the state may come from a quota with a higher limit.
            self.decision(
                allowed,
                self.limit.get().saturating_sub(count),
                reset,
                retry,
            ),
            end,
        )
    }

    fn sliding_window_counter(&self, stored: Option<[u64; 2]>, now: u64, cost: u64) -> Outcome {
        let p = self.period.get();
        // A clock that stepped back into an earlier window decides at the
        // start of the stored one (going back would shift and lose counts).
        let now = match stored {
            Some([start, _]) => now.max(start),
            None => now,
        };
        let current = now - self.period.rem(now);
        let (prev, mut curr) = match stored {
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
        let elapsed = now - current;
        let (l, pp, c) = (
            u128::from(self.limit.get()),
            u128::from(p),
            u128::from(cost),
        );
        let weight = u128::from(p - elapsed);
        let used = u128::from(prev) * weight + u128::from(curr) * pp;
        let allowed = cost <= self.limit.get() && used + c * pp <= l * pp;
        let retry = if allowed {
            0
        } else if cost > self.limit.get() {
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
        if allowed {
            curr += cost;
        }
        let words = [current, (prev << 32) | curr];
        let used = u128::from(prev) * weight + u128::from(curr) * pp;
        // At most limit × period ≤ 2^62 (checked when the quota is built).
        let remaining = self.period.div((l * pp).saturating_sub(used) as u64);
        let reset = if curr > 0 {
            current + 2 * p - now
        } else if prev > 0 {
            current + p - now
        } else {
            0
        };
        (
            words,
            self.decision(allowed, remaining, reset, retry),
            now + reset,
        )
    }

    fn sliding_window_log(&self, state: &mut State, now: u64, cost: u64) -> (Decision, u64) {
        let p = self.period.get();
        let mut log = match std::mem::take(&mut state.0) {
            Repr::Log(log) => log,
            _ => Box::default(),
        };
        // A clock that stepped back decides at the newest entry, keeping the log sorted.
        let now = log.back().map_or(now, |&newest| now.max(newest));
        while log.front().is_some_and(|&t| t.saturating_add(p) <= now) {
            log.pop_front();
        }
        let count = log.len() as u64;
        let allowed = cost <= self.limit.get() && count + cost <= self.limit.get();
        let retry = if allowed {
            0
        } else if cost > self.limit.get() {
            p
        } else {
            let must_expire = (count + cost - self.limit.get()) as usize;
            let oldest_needed = log[must_expire - 1];
            (oldest_needed + p).saturating_sub(now)
        };
        if allowed {
            for _ in 0..cost {
                log.push_back(now);
            }
        }
        let newest = log.back().copied();
        // Saturating: the log may come from a quota with a higher limit.
        let remaining = self.limit.get().saturating_sub(log.len() as u64);
        state.0 = Repr::Log(log);
        let expires = newest.map_or(now, |t| t + p);
        let reset = expires.saturating_sub(now);
        (self.decision(allowed, remaining, reset, retry), expires)
    }
}
