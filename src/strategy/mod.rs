//! The algorithms, as pure functions of (stored state, now, quota, cost) →
//! (new state, [`Decision`]).
//!
//! Every backend runs the same arithmetic: the in-memory backend calls
//! [`decide`] under a lock, the Redis backend runs the same steps in a Lua
//! script, and a custom backend can call [`decide`] (or, for one rate,
//! [`Quota::decide`]) inside its own transaction. Times are whole
//! microseconds since the backend clock's origin.
//!
//! One module per algorithm; each gives a `step` (the decision and the state
//! it would leave) and a `refund`.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use smallvec::SmallVec;

use crate::{Error, Rate};

mod fixed_window;
mod gcra;
mod sliding_window_counter;
mod sliding_window_log;
mod token_bucket;

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
#[non_exhaustive]
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
}

/// Every strategy.
#[cfg(feature = "redis")]
pub(crate) const STRATEGIES: [Strategy; 5] = [
    Strategy::TokenBucket,
    Strategy::FixedWindow,
    Strategy::SlidingWindowCounter,
    Strategy::SlidingWindowLog,
    Strategy::Gcra,
];

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

/// What a backend is asked to do with a key's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// Decide a hit and count it if every rate allows it.
    Hit,
    /// Decide a hit without counting anything.
    Peek,
    /// Give back a hit counted at `at` (the [`Decisions::at`] of that hit),
    /// as far as the state still holds it: tokens go back (up to the
    /// capacity), a window's count goes down while that window is current
    /// (or, for the sliding window counter, the previous one), log entries
    /// are removed, a GCRA arrival time moves back (not before now).
    Refund {
        /// When the hit was counted, on the backend's clock.
        at: Duration,
    },
}

/// A backend's answer for one request: the [`Decision`] of each rate, in
/// the throttle's order, and when the backend decided (on its own clock,
/// which a [`Op::Refund`] of this hit needs).
///
/// ```
/// use std::time::Duration;
/// use traffik::strategy::{decide, Op, State};
/// use traffik::{Quota, Strategy};
///
/// let quotas = [
///     Quota::new("2/s".parse().unwrap(), Strategy::FixedWindow).unwrap(),
///     Quota::new("3/min".parse().unwrap(), Strategy::FixedWindow).unwrap(),
/// ];
/// let mut states = [State::new(), State::new()];
/// let now = Duration::from_secs(10);
/// assert!(decide(&quotas, &mut states, now, 1, Op::Hit).binding().allowed);
/// let second = decide(&quotas, &mut states, now, 1, Op::Hit);
/// assert_eq!(second.binding().remaining, 0); // the per-second rate binds
/// assert_eq!(second.get(1).unwrap().remaining, 1);
/// assert!(!decide(&quotas, &mut states, now, 1, Op::Hit).binding().allowed);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decisions {
    at: Duration,
    /// The decision the request gets.
    binding: Decision,
    /// Every rate's decision when there are several (empty for one).
    each: Vec<Decision>,
}

impl Decisions {
    /// The decisions of each rate (at least one), decided at `at`.
    ///
    /// # Panics
    ///
    /// When `each` is empty.
    pub fn new(at: Duration, each: impl IntoIterator<Item = Decision>) -> Self {
        let mut each = each.into_iter();
        if each.size_hint().1 == Some(1) {
            // One rate: nothing to combine, no list to allocate.
            let one = each
                .next()
                .expect("Decisions::new needs a decision per rate");
            return Decisions::one(at, one);
        }
        let mut each: Vec<Decision> = each.collect();
        let binding = match each.as_slice() {
            [] => panic!("Decisions::new needs a decision per rate"),
            [one] => *one,
            many => combined(many),
        };
        if each.len() == 1 {
            each = Vec::new();
        }
        Decisions { at, binding, each }
    }

    /// One rate's decision.
    pub fn one(at: Duration, decision: Decision) -> Self {
        Decisions {
            at,
            binding: decision,
            each: Vec::new(),
        }
    }

    /// The decision the request gets: allowed only if every rate allows it,
    /// with the smallest `remaining` and the wait until every rate allows
    /// it (`retry_after`); `limit` and `reset_after` are those of the rate
    /// that binds (the one that refused with the longest wait, else the one
    /// with the least left).
    #[inline]
    pub fn binding(&self) -> Decision {
        self.binding
    }

    /// The index of the rate that binds (see [`binding`](Decisions::binding)).
    pub(crate) fn binding_index(&self) -> usize {
        binding_index(&self.each)
    }

    /// The decision of the rate at `index`, in the throttle's order.
    pub fn get(&self, index: usize) -> Option<&Decision> {
        self.as_slice().get(index)
    }

    /// Every rate's decision, in the throttle's order.
    pub fn iter(&self) -> impl Iterator<Item = &Decision> {
        self.as_slice().iter()
    }

    fn as_slice(&self) -> &[Decision] {
        if self.each.is_empty() {
            std::slice::from_ref(&self.binding)
        } else {
            &self.each
        }
    }

    /// When the backend decided, on its own clock.
    pub fn at(&self) -> Duration {
        self.at
    }

    /// The same decisions `elapsed` later, with no hit in between: the
    /// waits and resets shortened by it.
    #[cfg(feature = "redis")]
    pub(crate) fn later_by(&self, elapsed: Duration) -> Decisions {
        let later = |mut decision: Decision| {
            decision.retry_after = decision.retry_after.saturating_sub(elapsed);
            decision.reset_after = decision.reset_after.saturating_sub(elapsed);
            decision
        };
        Decisions {
            at: self.at + elapsed,
            binding: later(self.binding),
            each: self.each.iter().copied().map(later).collect(),
        }
    }
}

/// The rate that binds among `each`: the one that refused with the longest
/// wait, else the one with the least left (0 when `each` is empty).
fn binding_index(each: &[Decision]) -> usize {
    let binds =
        |(_, d): &(usize, &Decision)| (d.allowed, std::cmp::Reverse(d.retry_after), d.remaining);
    each.iter()
        .enumerate()
        .min_by_key(binds)
        .map_or(0, |(index, _)| index)
}

/// The binding decision of several rates' (see [`Decisions::binding`]).
fn combined(each: &[Decision]) -> Decision {
    let mut decision = each[binding_index(each)];
    decision.allowed = each.iter().all(|d| d.allowed);
    decision.remaining = each.iter().map(|d| d.remaining).min().unwrap_or(0);
    decision.retry_after = each.iter().map(|d| d.retry_after).max().unwrap_or_default();
    decision
}

/// Decides `op` for a key holding `states`, one per quota (a fresh key:
/// [`State::new`] each), at `now`, for a hit of `cost` (at least 1), **all
/// or nothing**: a hit is counted on every rate or, when one refuses it, on
/// none (the states are then left as they were).
///
/// This is what every backend decides: a custom backend loads the states,
/// calls this, and saves them in one transaction. A key can be deleted once
/// every rate's `reset_after` has passed.
///
/// # Panics
///
/// When `quotas` and `states` differ in length, or `quotas` is empty.
pub fn decide(
    quotas: &[Quota],
    states: &mut [State],
    now: Duration,
    cost: u64,
    op: Op,
) -> Decisions {
    decide_micros(quotas, states, now.as_micros() as u64, cost, op).0
}

/// [`decide`] at `now` microseconds; also returns when the states become
/// equivalent to fresh ones and can be deleted (`None`: unchanged).
pub(crate) fn decide_micros(
    quotas: &[Quota],
    states: &mut [State],
    now: u64,
    cost: u64,
    op: Op,
) -> (Decisions, Option<u64>) {
    assert_eq!(quotas.len(), states.len(), "one state per quota");
    let cost = cost.max(1);
    let at = Duration::from_micros(now);
    // A fast exit for one rate (the common case): its step stays in
    // registers, and no list of decisions is allocated: 404 fewer
    // instructions a request (`scripts/callgrind-layer.sh`, mode ip: +1,365
    // with it, +1,769 without).
    if let ([quota], [state]) = (quotas, &mut *states) {
        let step = op_step(quota, state, now, cost, op);
        let commit = commits(op, step.decision.allowed);
        if commit {
            quota.commit(state, &step, cost, op);
        }
        let expires = (commit && !step.keep).then_some(step.expires);
        return (Decisions::one(at, step.decision), expires);
    }
    let steps: SmallVec<[Step; 2]> = quotas
        .iter()
        .zip(states.iter_mut())
        .map(|(quota, state)| op_step(quota, state, now, cost, op))
        .collect();
    let all_allowed = steps.iter().all(|step| step.decision.allowed);
    let mut expires = None;
    if commits(op, all_allowed) {
        for ((quota, state), step) in quotas.iter().zip(states.iter_mut()).zip(&steps) {
            quota.commit(state, step, cost, op);
            if !step.keep {
                expires = expires.max(Some(step.expires));
            }
        }
    }
    if op == Op::Hit && !all_allowed {
        // A refused hit counts on no rate: the rates that would have
        // allowed it report what they still hold (their step at cost 0),
        // not what counting it would have left.
        let each = quotas.iter().zip(states.iter()).zip(&steps);
        let decisions = each.map(|((quota, state), step)| {
            if step.decision.allowed {
                quota.step(state, now, 0).decision
            } else {
                step.decision
            }
        });
        return (Decisions::new(at, decisions), expires);
    }
    let decisions = Decisions::new(at, steps.iter().map(|step| step.decision));
    (decisions, expires)
}

/// One rate's step for `op`: what a hit or a peek would count, or what a
/// refund would give back.
#[inline(always)]
fn op_step(quota: &Quota, state: &mut State, now: u64, cost: u64, op: Op) -> Step {
    match op {
        Op::Hit | Op::Peek => quota.step(state, now, cost),
        Op::Refund { at } => quota.refund_state(state, now, cost, at.as_micros() as u64),
    }
}

/// Whether `op` keeps its steps: a hit when every rate allows it, a refund
/// always, a peek never.
#[inline(always)]
fn commits(op: Op, all_allowed: bool) -> bool {
    match op {
        Op::Hit => all_allowed,
        Op::Peek => false,
        Op::Refund { .. } => true,
    }
}

/// One rate's decision at a time, and the state it leaves when committed:
/// `words` for the two-word strategies, the time the hit is logged at for
/// the sliding window log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Step {
    pub(crate) decision: Decision,
    pub(crate) words: [u64; 2],
    /// When the state left becomes equivalent to a fresh one (microseconds).
    pub(crate) expires: u64,
    /// Committing changes nothing (a refund the state no longer holds).
    pub(crate) keep: bool,
}

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
                if u128::from(self.capacity) * u128::from(self.period_micros()) > MAX_PRODUCT {
                    return too_big("capacity × period in microseconds exceeds 2^62");
                }
            }
            Strategy::Gcra => {
                if self.period_micros() < self.limit() {
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
                if self.limit() > u64::from(u32::MAX) {
                    return too_big_for("the limit exceeds 2^32 - 1", "use a smaller limit");
                }
                if u128::from(self.limit()) * u128::from(self.period_micros()) > MAX_PRODUCT {
                    return too_big("limit × period in microseconds exceeds 2^62");
                }
            }
            Strategy::SlidingWindowLog => {
                if self.limit() > 1_000_000 {
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
        self.rate.limit()
    }

    /// The bucket capacity: `burst` if set, else the limit.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The period in microseconds.
    pub fn period_micros(&self) -> u64 {
        self.rate.period_micros()
    }

    /// GCRA's emission interval in whole microseconds: `period / limit`,
    /// rounded down, at least 1.
    pub fn emission_interval(&self) -> u64 {
        (self.period_micros() / self.limit()).max(1)
    }

    /// Decides a hit of `cost` at `now` (time since the clock's origin) and
    /// updates `state`. `cost` is at least 1; a cost above the capacity is
    /// never admitted (its `retry_after` is one period).
    pub fn decide(&self, state: &mut State, now: Duration, cost: u64) -> Decision {
        self.decide_micros(state, now.as_micros() as u64, cost).0
    }

    /// Like [`decide`](Quota::decide) without changing anything.
    pub fn peek(&self, state: &State, now: Duration, cost: u64) -> Decision {
        self.step(state, now.as_micros() as u64, cost.max(1))
            .decision
    }

    /// Decides at `now` microseconds; also returns the time (microseconds)
    /// from which the new state is equivalent to a fresh one and can be
    /// deleted. A refused hit leaves the state as it was.
    pub fn decide_micros(&self, state: &mut State, now: u64, cost: u64) -> (Decision, u64) {
        let cost = cost.max(1);
        let step = self.step(state, now, cost);
        if step.decision.allowed {
            self.commit(state, &step, cost, Op::Hit);
        }
        (step.decision, step.expires)
    }

    /// Gives back a hit of `cost` counted at `at` (see [`Op::Refund`]).
    pub fn refund(&self, state: &mut State, now: Duration, cost: u64, at: Duration) -> Decision {
        let (now, at) = (now.as_micros() as u64, at.as_micros() as u64);
        let step = self.refund_state(state, now, cost.max(1), at);
        self.commit(
            state,
            &step,
            cost,
            Op::Refund {
                at: Duration::from_micros(at),
            },
        );
        step.decision
    }

    /// This quota's decision on `state`, and what counting it would leave.
    /// Always inlined with [`commit`](Quota::commit): the step is not built
    /// in memory and copied out (30 instructions per request with the
    /// strategies' own steps inlined, `scripts/callgrind-layer.sh`, mode ip).
    #[inline(always)]
    pub(crate) fn step(&self, state: &State, now: u64, cost: u64) -> Step {
        let words = match &state.0 {
            Repr::Words(words) => Some(*words),
            Repr::Log(log) if self.strategy == Strategy::SlidingWindowLog => {
                return sliding_window_log::step(self, log, now, cost);
            }
            // A fresh key, or a log under another strategy: a quota
            // rebuilt with another strategy starts afresh.
            Repr::Fresh | Repr::Log(_) => None,
        };
        match self.strategy {
            Strategy::TokenBucket => token_bucket::step(self, words, now, cost),
            Strategy::FixedWindow => fixed_window::step(self, words, now, cost),
            Strategy::SlidingWindowCounter => sliding_window_counter::step(self, words, now, cost),
            Strategy::Gcra => gcra::step(self, words, now, cost),
            Strategy::SlidingWindowLog => {
                sliding_window_log::step(self, &VecDeque::new(), now, cost)
            }
        }
    }

    /// Refunds on `state`: the log in place, the words in the step.
    fn refund_state(&self, state: &mut State, now: u64, cost: u64, at: u64) -> Step {
        if self.strategy == Strategy::SlidingWindowLog {
            let Repr::Log(log) = &mut state.0 else {
                return sliding_window_log::refund(self, &mut VecDeque::new(), now, cost, at);
            };
            return sliding_window_log::refund(self, log, now, cost, at);
        }
        let words = state.words();
        match self.strategy {
            Strategy::TokenBucket => token_bucket::refund(self, words, now, cost),
            Strategy::FixedWindow => fixed_window::refund(self, words, now, cost, at),
            Strategy::SlidingWindowCounter => {
                sliding_window_counter::refund(self, words, now, cost, at)
            }
            _ => gcra::refund(self, words, now, cost),
        }
    }

    /// Writes what `step` leaves into `state`.
    #[inline(always)]
    fn commit(&self, state: &mut State, step: &Step, cost: u64, op: Op) {
        if step.keep {
            return;
        }
        if self.strategy != Strategy::SlidingWindowLog {
            state.0 = Repr::Words(step.words);
            return;
        }
        if !matches!(state.0, Repr::Log(_)) {
            state.0 = Repr::Log(Box::default());
        }
        if let (Repr::Log(log), Op::Hit) = (&mut state.0, op) {
            sliding_window_log::record(self, log, step.words[0], cost);
        }
    }

    #[inline]
    pub(crate) fn decision(
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
}
