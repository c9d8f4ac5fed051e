//! Every strategy against a naive reference model written independently here,
//! driven by random sequences of clock advances, hits of random cost and
//! refunds of earlier admitted hits through `Quota::decide` and
//! `Quota::refund`, and, for several rates, through `strategy::decide`.
//!
//! The models keep the obvious state (tokens as exact fractions, counts per
//! window, a list of timestamps, a theoretical arrival time) and find
//! `retry_after` by searching for the first microsecond at which the model
//! would admit the same hit, so they share no formula with the
//! implementation. A refund undoes a hit as far as the model's state still
//! holds it: tokens go back (capped at the capacity), a window's count goes
//! down while that window is current (for the sliding window counter, the
//! current or the previous window), log entries are removed, the
//! theoretical arrival time moves back (not before now); a refund after the
//! hit's window has passed changes nothing. Several rates are one model per
//! rate, decided all or nothing.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::Strategy as _;
use traffik::clock::{Clock, ManualClock};
use traffik::strategy::{self, State};
use traffik::{Decision, Quota, Rate, Strategy};

/// Every strategy (`Strategy` is `#[non_exhaustive]` and keeps no public list).
const STRATEGIES: [Strategy; 5] = [
    Strategy::TokenBucket,
    Strategy::FixedWindow,
    Strategy::SlidingWindowCounter,
    Strategy::SlidingWindowLog,
    Strategy::Gcra,
];

// ---------------------------------------------------------------------------
// Exact fractions.

#[derive(Clone, Copy, Debug)]
struct Ratio {
    num: u128,
    den: u128,
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Ratio {
    fn new(num: u128, den: u128) -> Ratio {
        assert!(den > 0);
        let g = gcd(num, den).max(1);
        Ratio {
            num: num / g,
            den: den / g,
        }
    }
    fn int(n: u64) -> Ratio {
        Ratio::new(u128::from(n), 1)
    }
    fn add(self, o: Ratio) -> Ratio {
        Ratio::new(self.num * o.den + o.num * self.den, self.den * o.den)
    }
    /// `self - o`, which must not be negative.
    fn sub(self, o: Ratio) -> Ratio {
        let (a, b) = (self.num * o.den, o.num * self.den);
        assert!(a >= b, "negative fraction");
        Ratio::new(a - b, self.den * o.den)
    }
    fn min(self, o: Ratio) -> Ratio {
        if self.cmp(&o) == Ordering::Greater {
            o
        } else {
            self
        }
    }
    fn floor(self) -> u64 {
        (self.num / self.den) as u64
    }
}

impl PartialEq for Ratio {
    fn eq(&self, o: &Ratio) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Ratio {}
impl PartialOrd for Ratio {
    fn partial_cmp(&self, o: &Ratio) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ratio {
    fn cmp(&self, o: &Ratio) -> Ordering {
        (self.num * o.den).cmp(&(o.num * self.den))
    }
}

// ---------------------------------------------------------------------------
// Reference models.

/// What a model expects of one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Expected {
    allowed: bool,
    remaining: u64,
    /// `None` where the model does not define it.
    reset_after: Option<u64>,
}

trait Model {
    /// Would a hit of `cost` at `t` be admitted (no change)?
    fn allows(&self, t: u64, cost: u64) -> bool;
    /// Hits at `t`: the decision, with the state updated.
    fn hit(&mut self, t: u64, cost: u64) -> Expected;
    /// Gives back, at `t`, a hit of `cost` admitted at `at`: the decision
    /// (always allowed), with the state updated.
    fn refund(&mut self, t: u64, cost: u64, at: u64) -> Expected;
    /// A copy (to decide a hit without counting it).
    fn boxed(&self) -> Box<dyn Model>;
    /// Whether a refund at `t` finds no current window (only a fixed
    /// window has one): the case of the known bug
    /// `fixed_window_refund_after_its_window_changes_nothing`.
    fn refund_finds_no_window(&self, _t: u64) -> bool {
        false
    }
}

/// Tokens as exact fractions, refilled continuously at `limit / period`.
#[derive(Clone)]
struct BucketModel {
    limit: u64,
    period: u64,
    capacity: u64,
    tokens: Ratio,
    last: Option<u64>,
}

impl BucketModel {
    fn tokens_at(&self, t: u64) -> Ratio {
        let cap = Ratio::int(self.capacity);
        match self.last {
            None => cap,
            Some(last) => {
                let refill = Ratio::new(
                    u128::from(t - last) * u128::from(self.limit),
                    u128::from(self.period),
                );
                self.tokens.add(refill).min(cap)
            }
        }
    }

    /// Keeps `tokens` at `t`: the decision.
    fn settle(&mut self, t: u64, tokens: Ratio, allowed: bool) -> Expected {
        self.tokens = tokens;
        self.last = Some(t);
        // Smallest whole number of microseconds after which the bucket is full.
        let missing = Ratio::int(self.capacity).sub(tokens);
        let reset = (missing.num * u128::from(self.period))
            .div_ceil(missing.den * u128::from(self.limit)) as u64;
        Expected {
            allowed,
            remaining: tokens.floor(),
            reset_after: Some(reset),
        }
    }
}

impl Model for BucketModel {
    fn allows(&self, t: u64, cost: u64) -> bool {
        cost <= self.capacity && self.tokens_at(t) >= Ratio::int(cost)
    }
    fn hit(&mut self, t: u64, cost: u64) -> Expected {
        let allowed = self.allows(t, cost);
        let mut tokens = self.tokens_at(t);
        if allowed {
            tokens = tokens.sub(Ratio::int(cost));
        }
        self.settle(t, tokens, allowed)
    }
    fn refund(&mut self, t: u64, cost: u64, _at: u64) -> Expected {
        let tokens = self
            .tokens_at(t)
            .add(Ratio::int(cost))
            .min(Ratio::int(self.capacity));
        self.settle(t, tokens, true)
    }
    fn boxed(&self) -> Box<dyn Model> {
        Box::new(self.clone())
    }
}

/// A counter per window; a window opens at the first counted hit after the
/// previous one ended (a refused hit changes nothing).
#[derive(Clone)]
struct FixedWindowModel {
    limit: u64,
    period: u64,
    window: Option<(u64, u64)>,
}

impl FixedWindowModel {
    fn count_at(&self, t: u64) -> u64 {
        match self.window {
            Some((start, count)) if t < start + self.period => count,
            _ => 0,
        }
    }
}

impl Model for FixedWindowModel {
    fn allows(&self, t: u64, cost: u64) -> bool {
        self.count_at(t) + cost <= self.limit
    }
    fn hit(&mut self, t: u64, cost: u64) -> Expected {
        let allowed = self.allows(t, cost);
        let (start, mut count) = match self.window {
            Some((start, count)) if t < start + self.period => (start, count),
            _ => (t, 0),
        };
        if allowed {
            count += cost;
            self.window = Some((start, count));
        }
        Expected {
            allowed,
            remaining: self.limit - count,
            reset_after: Some(start + self.period - t),
        }
    }
    fn refund(&mut self, t: u64, cost: u64, at: u64) -> Expected {
        match &mut self.window {
            // The hit counts in the current window: it goes.
            Some((start, count)) if t < *start + self.period && at >= *start => {
                *count = count.checked_sub(cost).expect("refunded more than counted");
            }
            // Its window has passed: nothing is held.
            _ => {}
        }
        // With no current window, the one a hit now would open.
        let (start, count) = match self.window {
            Some((start, count)) if t < start + self.period => (start, count),
            _ => (t, 0),
        };
        Expected {
            allowed: true,
            remaining: self.limit - count,
            reset_after: Some(start + self.period - t),
        }
    }
    fn boxed(&self) -> Box<dyn Model> {
        Box::new(self.clone())
    }
    fn refund_finds_no_window(&self, t: u64) -> bool {
        !matches!(self.window, Some((start, _)) if t < start + self.period)
    }
}

/// Counts per aligned window `[k·P, (k+1)·P)`; the previous window weighs
/// `(P - elapsed) / P`, exactly.
#[derive(Clone)]
struct CounterModel {
    limit: u64,
    period: u64,
    counts: BTreeMap<u64, u64>,
}

impl CounterModel {
    fn weighted(&self, t: u64) -> Ratio {
        let w = t / self.period;
        let elapsed = t % self.period;
        let count = |k: Option<u64>| k.and_then(|k| self.counts.get(&k)).copied().unwrap_or(0);
        let prev = count(w.checked_sub(1));
        let curr = count(Some(w));
        Ratio::new(
            u128::from(prev) * u128::from(self.period - elapsed),
            u128::from(self.period),
        )
        .add(Ratio::int(curr))
    }
}

impl Model for CounterModel {
    fn allows(&self, t: u64, cost: u64) -> bool {
        cost <= self.limit && self.weighted(t).add(Ratio::int(cost)) <= Ratio::int(self.limit)
    }
    fn hit(&mut self, t: u64, cost: u64) -> Expected {
        let allowed = self.allows(t, cost);
        let w = t / self.period;
        if allowed {
            *self.counts.entry(w).or_default() += cost;
        }
        self.expected(t, allowed)
    }
    fn refund(&mut self, t: u64, cost: u64, at: u64) -> Expected {
        let (w, hit) = (t / self.period, at / self.period);
        // Counted in the current window or the previous one: it goes.
        if hit == w || hit + 1 == w {
            let count = self.counts.get_mut(&hit).expect("the hit's window");
            *count = count.checked_sub(cost).expect("refunded more than counted");
        }
        self.expected(t, true)
    }
    fn boxed(&self) -> Box<dyn Model> {
        Box::new(self.clone())
    }
}

impl CounterModel {
    fn expected(&self, t: u64, allowed: bool) -> Expected {
        let w = t / self.period;
        let weighted = self.weighted(t);
        let limit = Ratio::int(self.limit);
        let remaining = if weighted <= limit {
            limit.sub(weighted).floor()
        } else {
            0
        };
        let curr = self.counts.get(&w).copied().unwrap_or(0);
        let prev = w
            .checked_sub(1)
            .and_then(|k| self.counts.get(&k))
            .copied()
            .unwrap_or(0);
        // Back to full quota when no counted window overlaps any more.
        let reset = if curr > 0 {
            (w + 2) * self.period - t
        } else if prev > 0 {
            (w + 1) * self.period - t
        } else {
            0
        };
        Expected {
            allowed,
            remaining,
            reset_after: Some(reset),
        }
    }
}

/// Every admitted unit of cost, with its time; counts those in `(t - P, t]`.
#[derive(Clone)]
struct LogModel {
    limit: u64,
    period: u64,
    times: Vec<u64>,
}

impl LogModel {
    fn live(&self, t: u64) -> impl Iterator<Item = u64> + '_ {
        let period = self.period;
        self.times.iter().copied().filter(move |&x| x + period > t)
    }
}

impl Model for LogModel {
    fn allows(&self, t: u64, cost: u64) -> bool {
        self.live(t).count() as u64 + cost <= self.limit
    }
    fn hit(&mut self, t: u64, cost: u64) -> Expected {
        let allowed = self.allows(t, cost);
        let period = self.period;
        self.times.retain(|&x| x + period > t);
        if allowed {
            self.times.extend(std::iter::repeat_n(t, cost as usize));
        }
        self.expected(t, allowed)
    }
    fn refund(&mut self, t: u64, cost: u64, at: u64) -> Expected {
        let period = self.period;
        self.times.retain(|&x| x + period > t);
        // Its units still in the log go (all of them were logged at `at`).
        for _ in 0..cost {
            if let Some(i) = self.times.iter().position(|&x| x == at) {
                self.times.remove(i);
            }
        }
        self.expected(t, true)
    }
    fn boxed(&self) -> Box<dyn Model> {
        Box::new(self.clone())
    }
}

impl LogModel {
    /// The decision once the log holds only live entries.
    fn expected(&self, t: u64, allowed: bool) -> Expected {
        let reset = self
            .times
            .iter()
            .max()
            .map_or(0, |&newest| newest + self.period - t);
        Expected {
            allowed,
            remaining: self.limit - self.times.len() as u64,
            reset_after: Some(reset),
        }
    }
}

/// Virtual scheduling: a theoretical arrival time advanced by one emission
/// interval `T = floor(P / L)` per cell; `c` cells at `t` conform when the
/// last of them is due no later than `(capacity - 1)·T` ahead of `t`.
#[derive(Clone)]
struct GcraModel {
    interval: u64,
    capacity: u64,
    tat: Option<u64>,
}

impl Model for GcraModel {
    fn allows(&self, t: u64, cost: u64) -> bool {
        let tat = self.tat.unwrap_or(t).max(t);
        // No cell (cost 0: what a rate holds while another refuses) conforms.
        let Some(cells_after_first) = cost.checked_sub(1) else {
            return true;
        };
        let last_cell_due = tat + cells_after_first * self.interval;
        cost <= self.capacity && last_cell_due <= t + (self.capacity - 1) * self.interval
    }
    fn hit(&mut self, t: u64, cost: u64) -> Expected {
        let allowed = self.allows(t, cost);
        let mut tat = self.tat.unwrap_or(t).max(t);
        if allowed {
            tat += cost * self.interval;
        }
        self.expected(t, tat, allowed)
    }
    fn refund(&mut self, t: u64, cost: u64, _at: u64) -> Expected {
        // The arrival time moves back by the hit's cells, not before now.
        let tat = self
            .tat
            .map_or(t, |tat| tat.saturating_sub(cost * self.interval).max(t));
        self.expected(t, tat, true)
    }
    fn boxed(&self) -> Box<dyn Model> {
        Box::new(self.clone())
    }
}

impl GcraModel {
    /// Keeps `tat` (not before `t`): the decision.
    fn expected(&mut self, t: u64, tat: u64, allowed: bool) -> Expected {
        self.tat = Some(tat);
        // Cells of cost 1 that would still conform now, one after the other.
        let mut remaining = 0;
        while tat + (remaining + 1) * self.interval <= t + self.capacity * self.interval {
            remaining += 1;
        }
        Expected {
            allowed,
            remaining,
            reset_after: Some(tat - t),
        }
    }
}

fn model_for(quota: &Quota) -> Box<dyn Model> {
    let limit = quota.limit();
    let period = quota.period_micros();
    match quota.strategy() {
        Strategy::TokenBucket => Box::new(BucketModel {
            limit,
            period,
            capacity: quota.capacity(),
            tokens: Ratio::int(quota.capacity()),
            last: None,
        }),
        Strategy::FixedWindow => Box::new(FixedWindowModel {
            limit,
            period,
            window: None,
        }),
        Strategy::SlidingWindowCounter => Box::new(CounterModel {
            limit,
            period,
            counts: BTreeMap::new(),
        }),
        Strategy::SlidingWindowLog => Box::new(LogModel {
            limit,
            period,
            times: Vec::new(),
        }),
        Strategy::Gcra => Box::new(GcraModel {
            interval: period / limit,
            capacity: quota.capacity(),
            tat: None,
        }),
        other => panic!("no model for {other:?}"),
    }
}

/// The first microsecond after `t` (at least 1) at which the model admits
/// `cost`, by binary search (every model only gets more permissive as time
/// passes without hits).
fn model_wait(model: &dyn Model, t: u64, cost: u64, capacity: u64, period: u64) -> u64 {
    let mut hi = (capacity + cost + 2) * period;
    assert!(model.allows(t + hi, cost), "model never admits cost {cost}");
    let mut lo = 1;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if model.allows(t + mid, cost) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

// ---------------------------------------------------------------------------
// The driver.

#[derive(Debug, Clone, Copy)]
struct Op {
    advance: u8,
    raw: u64,
    cost: u8,
    cost_raw: u64,
    /// 0-1: refund an earlier admitted hit (if any), 2: peek (several
    /// rates), else hit.
    action: u8,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    (0u8..10, any::<u64>(), 0u8..10, any::<u64>(), 0u8..8).prop_map(
        |(advance, raw, cost, cost_raw, action)| Op {
            advance,
            raw,
            cost,
            cost_raw,
            action,
        },
    )
}

impl Op {
    fn refunds(&self) -> bool {
        self.action < 2
    }

    /// How far the clock moves before this op.
    fn advance(&self, period: u64, last_retry: u64) -> u64 {
        match self.advance {
            0 => 0,
            1 => self.raw % 3,
            2 => self.raw % (period + 1),
            3 => self.raw % (3 * period + 1),
            4 => period,
            5 => period - 1,
            6 => last_retry,
            7 => last_retry.saturating_sub(1),
            8 => (self.raw % 2_000) * 1_000,
            _ => self.raw % 100,
        }
    }

    fn cost(&self, limit: u64, capacity: u64) -> u64 {
        match self.cost {
            0..=4 => 1,
            5..=7 => 1 + self.cost_raw % (limit + 1),
            8 => limit + 1,
            _ => 1 + self.cost_raw % (capacity + 1),
        }
    }

    /// Which of `held` hits to refund.
    fn pick(&self, held: usize) -> usize {
        (self.cost_raw % held as u64) as usize
    }
}

fn micros(t: u64) -> Duration {
    Duration::from_micros(t)
}

/// Which refunds the driver makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refunds {
    /// Every refund drawn.
    All,
    /// Not a fixed window's refund made when its window has ended: the
    /// known bug shown by `fixed_window_refund_after_its_window_changes_nothing`.
    AvoidingTheFixedWindowBug,
}

/// Runs `ops` through the quota and the model side by side: hits, and
/// refunds of hits admitted earlier (with the time they were decided).
fn check(quota: Quota, start: u64, ops: &[Op], refunds: Refunds) {
    let limit = quota.limit();
    let capacity = quota.capacity();
    let period = quota.period_micros();
    let strategy = quota.strategy();
    let mut model = model_for(&quota);
    let clock = ManualClock::starting_at(micros(start));
    let mut state = State::new();
    let mut last_retry = 0u64;
    // Admitted hits not refunded yet: (when, cost).
    let mut held: Vec<(u64, u64)> = Vec::new();

    for (i, op) in ops.iter().enumerate() {
        clock.advance(micros(op.advance(period, last_retry)));
        let now = clock.now();
        let t = now.as_micros() as u64;

        if op.refunds() && !held.is_empty() {
            let (at, cost) = held.remove(op.pick(held.len()));
            if refunds == Refunds::AvoidingTheFixedWindowBug && model.refund_finds_no_window(t) {
                continue;
            }
            let got = quota.refund(&mut state, now, cost, micros(at));
            let want = model.refund(t, cost, at);
            let ctx = format!(
                "{strategy} {} (capacity {capacity}), op {i}: refund at t={t}µs of the hit at {at}µs of cost {cost}: got {got:?}, model {want:?}",
                quota.rate()
            );
            assert!(got.allowed, "refund allowed: {ctx}");
            assert_eq!(got.remaining, want.remaining, "remaining: {ctx}");
            assert_eq!(got.limit, capacity, "limit: {ctx}");
            if let Some(reset) = want.reset_after {
                assert_eq!(got.reset_after, micros(reset), "reset_after: {ctx}");
            }
            assert_eq!(got.retry_after, Duration::ZERO, "retry_after: {ctx}");
            continue;
        }

        let cost = op.cost(limit, capacity);
        let before = state.clone();
        let peeked = quota.peek(&state, now, cost);
        assert_eq!(state, before, "peek changed the state");
        let got = quota.decide(&mut state, now, cost);
        assert_eq!(peeked, got, "peek and decide disagree");

        let wait = if model.allows(t, cost) || cost > capacity {
            None
        } else {
            Some(model_wait(&*model, t, cost, capacity, period))
        };
        let want = model.hit(t, cost);
        let ctx = format!(
            "{strategy} {} (capacity {capacity}), op {i}: t={t}µs cost={cost}: got {got:?}, model {want:?}",
            quota.rate()
        );

        assert_eq!(got.allowed, want.allowed, "allowed: {ctx}");
        assert_eq!(got.remaining, want.remaining, "remaining: {ctx}");
        assert_eq!(got.limit, capacity, "limit: {ctx}");
        if let Some(reset) = want.reset_after {
            assert_eq!(got.reset_after, micros(reset), "reset_after: {ctx}");
        }
        let want_retry = if got.allowed {
            0
        } else if cost > capacity {
            period
        } else {
            let wait = wait.expect("denied by the model");
            if strategy == Strategy::SlidingWindowCounter {
                wait.min(period)
            } else {
                wait
            }
        };
        assert_eq!(got.retry_after, micros(want_retry), "retry_after: {ctx}");

        // The generic contract, checked on the implementation alone.
        if !got.allowed && cost <= capacity {
            let retry = got.retry_after.as_micros() as u64;
            assert!(retry >= 1, "denied with no wait: {ctx}");
            if cost <= limit {
                assert!(retry <= period, "retry_after longer than the period: {ctx}");
            }
            let capped = strategy == Strategy::SlidingWindowCounter && wait > Some(period);
            if !capped {
                assert!(
                    quota.peek(&state, micros(t + retry), cost).allowed,
                    "not allowed at now + retry_after: {ctx}"
                );
            }
            assert!(
                !quota.peek(&state, micros(t + retry - 1), cost).allowed,
                "already allowed 1µs before now + retry_after: {ctx}"
            );
        }
        if got.allowed {
            assert_eq!(got.retry_after, Duration::ZERO, "{ctx}");
            held.push((t, cost));
        }
        last_retry = got.retry_after.as_micros() as u64;
    }
}

/// The expected `retry_after` of one rate for a hit of `cost` at `t`
/// (`None`: allowed), with the exact wait it stands for (`None` when the
/// hit never fits).
fn rate_retry(model: &dyn Model, quota: &Quota, t: u64, cost: u64) -> Option<(u64, Option<u64>)> {
    let (capacity, period) = (quota.capacity(), quota.period_micros());
    if cost > capacity {
        return Some((period, None));
    }
    if model.allows(t, cost) {
        return None;
    }
    let wait = model_wait(model, t, cost, capacity, period);
    let retry = if quota.strategy() == Strategy::SlidingWindowCounter {
        wait.min(period)
    } else {
        wait
    };
    Some((retry, Some(wait)))
}

/// The first microsecond after `t` (at least 1) at which every model
/// admits `cost`, by binary search.
fn models_wait(models: &[Box<dyn Model>], quotas: &[Quota], t: u64, cost: u64) -> u64 {
    let all = |dt: u64| models.iter().all(|m| m.allows(t + dt, cost));
    let mut hi = quotas
        .iter()
        .map(|q| (q.capacity() + cost + 2) * q.period_micros())
        .max()
        .unwrap();
    assert!(all(hi), "the models never admit cost {cost} together");
    let mut lo = 1;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if all(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// Several rates through `strategy::decide` against one model per rate,
/// decided all or nothing: a hit counts on every rate or on none; the
/// binding decision is allowed only if every rate allows, with the
/// smallest `remaining` and the largest `retry_after`. Peeks count
/// nothing; refunds give back every rate's share of an admitted hit.
fn check_rates(quotas: &[Quota], start: u64, ops: &[Op], refunds: Refunds) {
    let mut models: Vec<Box<dyn Model>> = quotas.iter().map(model_for).collect();
    let mut states = vec![State::new(); quotas.len()];
    let clock = ManualClock::starting_at(micros(start));
    let mut last_retry = 0u64;
    let mut held: Vec<(Duration, u64)> = Vec::new();
    let names: Vec<String> = quotas
        .iter()
        .map(|q| format!("{} {} (capacity {})", q.strategy(), q.rate(), q.capacity()))
        .collect();

    for (i, op) in ops.iter().enumerate() {
        let q = &quotas[(op.raw % quotas.len() as u64) as usize];
        clock.advance(micros(op.advance(q.period_micros(), last_retry)));
        let now = clock.now();
        let t = now.as_micros() as u64;

        if op.refunds() && !held.is_empty() {
            let (at, cost) = held.remove(op.pick(held.len()));
            if refunds == Refunds::AvoidingTheFixedWindowBug
                && models.iter().any(|m| m.refund_finds_no_window(t))
            {
                continue;
            }
            let got = strategy::decide(quotas, &mut states, now, cost, strategy::Op::Refund { at });
            let ctx = format!(
                "{names:?}, op {i}: refund at t={t}µs of the hit at {at:?} of cost {cost}: got {got:?}"
            );
            assert_eq!(got.at(), now, "{ctx}");
            let at = at.as_micros() as u64;
            for (r, model) in models.iter_mut().enumerate() {
                let want = model.refund(t, cost, at);
                let each = got.get(r).unwrap();
                assert!(each.allowed, "rate {r}: {ctx}");
                assert_eq!(each.remaining, want.remaining, "rate {r} remaining: {ctx}");
                assert_eq!(each.limit, quotas[r].capacity(), "rate {r} limit: {ctx}");
                if let Some(reset) = want.reset_after {
                    assert_eq!(
                        each.reset_after,
                        micros(reset),
                        "rate {r} reset_after: {ctx}"
                    );
                }
                assert_eq!(each.retry_after, Duration::ZERO, "rate {r}: {ctx}");
            }
            let binding = got.binding();
            assert!(binding.allowed, "{ctx}");
            let least = got.iter().map(|d| d.remaining).min().unwrap();
            assert_eq!(binding.remaining, least, "{ctx}");
            continue;
        }

        let cost = match op.cost {
            // Above the smallest capacity (maybe within the others).
            8 => quotas.iter().map(Quota::capacity).min().unwrap() + 1,
            9 => 1 + op.cost_raw % (quotas.iter().map(Quota::capacity).max().unwrap() + 1),
            _ => op.cost(q.limit(), q.capacity()),
        };
        let peek = op.action == 2;
        let all_allow = models.iter().all(|m| m.allows(t, cost));
        let retries: Vec<Option<(u64, Option<u64>)>> = models
            .iter()
            .zip(quotas)
            .map(|(m, q)| rate_retry(&**m, q, t, cost))
            .collect();
        let before = states.clone();
        let op_ = if peek {
            strategy::Op::Peek
        } else {
            strategy::Op::Hit
        };
        let got = strategy::decide(quotas, &mut states, now, cost, op_);
        let ctx = format!(
            "{names:?}, op {i}: {} at t={t}µs cost={cost}: got {got:?}",
            if peek { "peek" } else { "hit" }
        );
        assert_eq!(got.at(), now, "{ctx}");
        // Counted on every rate, or on none; on a refused hit, a rate that
        // would have allowed it says what it still holds (a hit of cost 0).
        let wants: Vec<Expected> = models
            .iter_mut()
            .map(|m| {
                if all_allow && !peek {
                    m.hit(t, cost)
                } else if !peek && m.allows(t, cost) {
                    m.boxed().hit(t, 0)
                } else {
                    m.boxed().hit(t, cost)
                }
            })
            .collect();
        if peek || !all_allow {
            assert_eq!(
                states, before,
                "a peek or a refused hit changed a state: {ctx}"
            );
        }
        for (r, want) in wants.iter().enumerate() {
            let each = got.get(r).unwrap();
            assert_eq!(each.allowed, want.allowed, "rate {r} allowed: {ctx}");
            assert_eq!(each.remaining, want.remaining, "rate {r} remaining: {ctx}");
            assert_eq!(each.limit, quotas[r].capacity(), "rate {r} limit: {ctx}");
            if let Some(reset) = want.reset_after {
                assert_eq!(
                    each.reset_after,
                    micros(reset),
                    "rate {r} reset_after: {ctx}"
                );
            }
            let retry = retries[r].map_or(0, |(retry, _)| retry);
            assert_eq!(
                each.retry_after,
                micros(retry),
                "rate {r} retry_after: {ctx}"
            );
        }
        assert!(got.get(quotas.len()).is_none(), "{ctx}");

        // The binding decision.
        let binding = got.binding();
        assert_eq!(binding.allowed, all_allow, "binding allowed: {ctx}");
        let least = wants.iter().map(|w| w.remaining).min().unwrap();
        assert_eq!(binding.remaining, least, "binding remaining: {ctx}");
        let longest = retries
            .iter()
            .map(|r| r.map_or(0, |(retry, _)| retry))
            .max()
            .unwrap();
        assert_eq!(
            binding.retry_after,
            micros(longest),
            "binding retry_after: {ctx}"
        );
        // Its limit and reset are those of the rate that binds: the one that
        // refused with the longest wait, else the one with the least left.
        let binds = |d: &Decision| (d.allowed, std::cmp::Reverse(d.retry_after), d.remaining);
        let key = got.iter().map(binds).min().unwrap();
        assert!(
            got.iter().any(|d| binds(d) == key
                && (d.limit, d.reset_after) == (binding.limit, binding.reset_after)),
            "binding limit and reset_after of no binding rate: {ctx}"
        );
        // The wait is exact when no rate's wait is capped: the first moment
        // every rate admits the hit (each only gets more permissive).
        let exact = retries
            .iter()
            .all(|r| r.is_none_or(|(retry, wait)| wait == Some(retry)));
        if !all_allow && exact {
            assert_eq!(
                longest,
                models_wait(&models, quotas, t, cost),
                "binding retry_after is not the first moment every rate admits: {ctx}"
            );
        }
        if !peek && all_allow {
            held.push((now, cost));
        }
        last_retry = longest;
    }
}

const PERIODS: [u64; 10] = [
    1,
    2,
    3,
    7,
    10,
    60,
    1_000,
    999_999,
    1_000_000,
    86_400_000_000,
];

fn quota(limit: u64, period: u64, strategy: Strategy, burst: Option<u64>) -> Quota {
    let rate = Rate::new(limit, micros(period)).unwrap();
    let quota = Quota::new(rate, strategy).unwrap();
    match burst {
        Some(burst) => quota.with_burst(burst).unwrap(),
        None => quota,
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 400,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn token_bucket_matches_model(
        limit in 1u64..=12,
        period in proptest::sample::select(PERIODS.to_vec()),
        burst in proptest::option::of(1u64..=20),
        start in 0u64..3_000_000,
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        check(quota(limit, period, Strategy::TokenBucket, burst), start, &ops, Refunds::All);
    }

    #[test]
    fn fixed_window_matches_model(
        limit in 1u64..=12,
        period in proptest::sample::select(PERIODS.to_vec()),
        start in 0u64..3_000_000,
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        check(quota(limit, period, Strategy::FixedWindow, None), start, &ops, Refunds::AvoidingTheFixedWindowBug);
    }

    #[test]
    fn sliding_window_counter_matches_model(
        limit in 1u64..=12,
        period in proptest::sample::select(PERIODS.to_vec()),
        start in 0u64..3_000_000,
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        check(quota(limit, period, Strategy::SlidingWindowCounter, None), start, &ops, Refunds::All);
    }

    #[test]
    fn sliding_window_log_matches_model(
        limit in 1u64..=12,
        period in proptest::sample::select(PERIODS.to_vec()),
        start in 0u64..3_000_000,
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        check(quota(limit, period, Strategy::SlidingWindowLog, None), start, &ops, Refunds::All);
    }

    #[test]
    fn gcra_matches_model(
        limit in 1u64..=12,
        period in proptest::sample::select(PERIODS.to_vec()),
        burst in proptest::option::of(1u64..=20),
        start in 0u64..3_000_000,
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        // GCRA admits at most one hit per microsecond.
        let period = period.max(limit);
        check(quota(limit, period, Strategy::Gcra, burst), start, &ops, Refunds::All);
    }

    /// The same, for every strategy, with larger limits.
    #[test]
    fn all_strategies_match_models_at_larger_limits(
        strategy in proptest::sample::select(STRATEGIES.to_vec()),
        limit in 13u64..=200,
        period in proptest::sample::select(vec![200u64, 1_000, 60_000_000]),
        start in 0u64..3_000_000,
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        check(quota(limit, period, strategy, None), start, &ops, Refunds::AvoidingTheFixedWindowBug);
    }
}

/// A rate for the several-rates tests: GCRA admits at most one hit per
/// microsecond.
fn rate_quota(strategy: Strategy, limit: u64, period: u64) -> Quota {
    let period = if strategy == Strategy::Gcra {
        period.max(limit)
    } else {
        period
    };
    quota(limit, period, strategy, None)
}

fn rates() -> impl proptest::strategy::Strategy<Value = Vec<(u64, u64)>> {
    proptest::collection::vec(
        (1u64..=12, proptest::sample::select(PERIODS.to_vec())),
        2..=3,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(250))]

    /// Two or three rates of one strategy (as a throttle's `.rates([..])`)
    /// against one model per rate, decided all or nothing.
    #[test]
    fn several_rates_match_one_model_per_rate(
        strategy in proptest::sample::select(STRATEGIES.to_vec()),
        rates in rates(),
        start in 0u64..3_000_000,
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let quotas: Vec<Quota> = rates
            .iter()
            .map(|&(limit, period)| rate_quota(strategy, limit, period))
            .collect();
        check_rates(&quotas, start, &ops, Refunds::AvoidingTheFixedWindowBug);
    }

    /// The same with a strategy per rate (what a custom backend may pass
    /// to `strategy::decide`).
    #[test]
    fn rates_of_mixed_strategies_match_one_model_per_rate(
        rates in proptest::collection::vec(
            (proptest::sample::select(STRATEGIES.to_vec()), 1u64..=12, proptest::sample::select(PERIODS.to_vec())),
            2..=3,
        ),
        start in 0u64..3_000_000,
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let quotas: Vec<Quota> = rates
            .iter()
            .map(|&(strategy, limit, period)| rate_quota(strategy, limit, period))
            .collect();
        check_rates(&quotas, start, &ops, Refunds::AvoidingTheFixedWindowBug);
    }

    /// Refunds of a fixed window's hits after their window has ended, which
    /// the tests above leave out: they must change nothing.
    #[test]

    fn fixed_window_refunds_after_the_window_match_model(
        limit in 1u64..=12,
        period in proptest::sample::select(PERIODS.to_vec()),
        start in 0u64..3_000_000,
        ops in proptest::collection::vec(op(), 1..60),
        rates in rates(),
    ) {
        check(quota(limit, period, Strategy::FixedWindow, None), start, &ops, Refunds::All);
        let quotas: Vec<Quota> = rates
            .iter()
            .map(|&(limit, period)| rate_quota(Strategy::FixedWindow, limit, period))
            .collect();
        check_rates(&quotas, start, &ops, Refunds::All);
    }
}

/// A refund after the hit's window has ended must change nothing (the
/// documented contract of `Op::Refund` and `Reservation::refund`), and a
/// fixed window starts at the first hit counted after the previous one
/// ended. `fixed_window::refund` instead saves the window `(now, 0)` it
/// finds for a key whose window has ended: the refund opens an empty window
/// starting at the refund, so the next window ends a period after the
/// refund, not after the next hit, and two hits that a 1/s window keeps a
/// second apart get in 100 ms apart. The Redis script
/// (`fixed_window.lua`) saves the same window, even for a key that has
/// expired; the in-memory backend does so only while the expired key has
/// not been swept yet.
#[test]

fn fixed_window_refund_after_its_window_changes_nothing() {
    let quota = q("1/s", Strategy::FixedWindow);
    let mut state = State::new();
    assert!(at(&quota, &mut state, 0, 1).allowed);
    let before = state.clone();
    // The hit's window [0, 1 s) has ended.
    quota.refund(&mut state, micros(1_500_000), 1, micros(0));
    let (mut refunded, mut untouched) = (state.clone(), before);
    // Without the refund, the hit at 2.4 s opens [2.4 s, 3.4 s).
    let first = at(&quota, &mut untouched, 2_400_000, 1);
    assert!(first.allowed);
    assert_eq!(first.reset_after, micros(S));
    assert!(!at(&quota, &mut untouched, 2_500_000, 1).allowed);
    // With it, the same.
    let first = at(&quota, &mut refunded, 2_400_000, 1);
    assert!(first.allowed);
    assert_eq!(first.reset_after, micros(S), "the window starts at the hit");
    assert!(
        !at(&quota, &mut refunded, 2_500_000, 1).allowed,
        "a second hit 100 ms after the first, on 1/s"
    );
}

/// The same bug on a fresh key: a refund of nothing (a key whose state has
/// expired and been deleted) opens an empty window too.
#[test]

fn fixed_window_refund_on_a_fresh_key_changes_nothing() {
    let quota = q("1/s", Strategy::FixedWindow);
    let mut state = State::new();
    quota.refund(&mut state, micros(1_500_000), 1, micros(0));
    assert!(at(&quota, &mut state, 2_400_000, 1).allowed);
    assert!(!at(&quota, &mut state, 2_500_000, 1).allowed);
}

/// Refunds by hand, one per strategy: a hit refunded at once leaves the
/// key as if it had not been made.
#[test]
fn a_refund_at_once_undoes_the_hit() {
    for strategy in STRATEGIES {
        let quota = q("3/s", strategy);
        let mut state = State::new();
        assert!(at(&quota, &mut state, 10, 1).allowed);
        let before = quota.peek(&state, micros(20), 1);
        let hit = at(&quota, &mut state, 20, 2);
        assert!(hit.allowed, "{strategy}");
        assert_eq!(hit.remaining, 0, "{strategy}");
        let refunded = quota.refund(&mut state, micros(20), 2, micros(20));
        assert!(refunded.allowed, "{strategy}");
        assert_eq!(
            refunded.remaining, 2,
            "{strategy}: the two of 3 left before"
        );
        assert_eq!(quota.peek(&state, micros(20), 1), before, "{strategy}");
        assert!(at(&quota, &mut state, 20, 2).allowed, "{strategy}");
    }
}

// ---------------------------------------------------------------------------
// Edge cases, by hand.

const S: u64 = 1_000_000;

fn q(text: &str, strategy: Strategy) -> Quota {
    Quota::new(text.parse().unwrap(), strategy).unwrap()
}

fn at(quota: &Quota, state: &mut State, t: u64, cost: u64) -> Decision {
    quota.decide(state, micros(t), cost)
}

#[test]
fn fixed_window_boundaries() {
    let quota = q("2/s", Strategy::FixedWindow);
    let mut s = State::new();
    // The window starts at the first hit, not at a multiple of the period.
    let start = 300_000;
    assert!(at(&quota, &mut s, start, 1).allowed);
    assert!(at(&quota, &mut s, start + 10, 1).allowed);
    let denied = at(&quota, &mut s, start + 500_000, 1);
    assert!(!denied.allowed);
    assert_eq!(denied.remaining, 0);
    assert_eq!(denied.retry_after, micros(500_000));
    assert_eq!(denied.reset_after, micros(500_000));
    // One µs before the end: still the same window; rejected hits are not counted.
    assert!(!at(&quota, &mut s, start + S - 1, 1).allowed);
    let d = at(&quota, &mut s, start + S, 1);
    assert!(d.allowed, "a new window opens exactly at start + period");
    assert_eq!(d.remaining, 1);
    assert_eq!(d.reset_after, micros(S));
    // Cost 2 does not fit in the one left; cost 1 does.
    let d = at(&quota, &mut s, start + S + 1, 2);
    assert!(!d.allowed);
    assert_eq!(d.retry_after, micros(S - 1));
    assert!(at(&quota, &mut s, start + S + 1, 1).allowed);
}

#[test]
fn fixed_window_cost_above_limit() {
    let quota = q("3/s", Strategy::FixedWindow);
    let mut s = State::new();
    let d = at(&quota, &mut s, 123, 4);
    assert!(!d.allowed);
    assert_eq!(d.retry_after, micros(S), "never admitted: one period");
    assert_eq!(d.remaining, 3);
    let d = at(&quota, &mut s, 200, 3);
    assert!(d.allowed, "a denied hit is not counted");
    let d = at(&quota, &mut s, 300, 4);
    assert!(!d.allowed);
    assert_eq!(d.retry_after, micros(S));
}

#[test]
fn sliding_window_log_boundaries() {
    let quota = q("3/s", Strategy::SlidingWindowLog);
    let mut s = State::new();
    assert!(at(&quota, &mut s, 100, 1).allowed);
    assert!(at(&quota, &mut s, 200, 2).allowed);
    let d = at(&quota, &mut s, 150_000, 1);
    assert!(!d.allowed);
    assert_eq!(d.retry_after, micros(100 + S - 150_000));
    // At 100 + P - 1 the first hit still counts; at 100 + P it does not.
    assert!(!at(&quota, &mut s, 100 + S - 1, 1).allowed);
    assert!(at(&quota, &mut s, 100 + S, 1).allowed);
    // Cost 2 needs both units of the hit at 200 gone.
    let d = at(&quota, &mut s, 100 + S, 2);
    assert!(!d.allowed);
    assert_eq!(d.retry_after, micros(100));
    assert!(!at(&quota, &mut s, 200 + S - 1, 2).allowed);
    assert!(at(&quota, &mut s, 200 + S, 2).allowed);
    assert_eq!(at(&quota, &mut s, 200 + S, 5).retry_after, micros(S));
}

#[test]
fn sliding_window_counter_weighs_the_previous_window_exactly() {
    let quota = q("10/s", Strategy::SlidingWindowCounter);
    let mut s = State::new();
    // 10 hits in window [0, 1s).
    for _ in 0..10 {
        assert!(at(&quota, &mut s, 999_999, 1).allowed);
    }
    assert!(!at(&quota, &mut s, 999_999, 1).allowed);
    // At 1s the previous window weighs fully: 10 · 1 = 10.
    let d = at(&quota, &mut s, S, 1);
    assert!(!d.allowed);
    // 10 · (P - e) / P + 1 ≤ 10 ⇔ e ≥ P / 10: exactly at 1.1 s.
    assert_eq!(d.retry_after, micros(100_000));
    assert!(
        !at(&quota, &mut s, S + 99_999, 1).allowed,
        "9.00001 + 1 > 10: no rounding down"
    );
    let d = at(&quota, &mut s, S + 100_000, 1);
    assert!(d.allowed);
    assert_eq!(d.remaining, 0);
    // A cost of 3 at 1.35 s: 10 · 0.65 + 1 + 3 = 10.5 > 10; at 1.4 s: 6 + 4 = 10.
    let d = at(&quota, &mut s, S + 350_000, 3);
    assert!(!d.allowed);
    assert_eq!(d.retry_after, micros(50_000));
    assert!(at(&quota, &mut s, S + 400_000, 3).allowed);
    // Cost above the limit: one period.
    assert_eq!(at(&quota, &mut s, S + 400_000, 11).retry_after, micros(S));
}

#[test]
fn sliding_window_counter_retry_is_capped_at_the_period() {
    let quota = q("4/s", Strategy::SlidingWindowCounter);
    let mut s = State::new();
    assert!(at(&quota, &mut s, 0, 4).allowed);
    // Cost 4 again: the current window is full, and in the next one this
    // window weighs 4 · (P - e) / P > 0 until its end: the true wait is 2 s.
    let d = at(&quota, &mut s, 0, 4);
    assert!(!d.allowed);
    assert_eq!(d.retry_after, micros(S), "capped at one period");
    assert!(!at(&quota, &mut s, 2 * S - 1, 4).allowed);
    assert!(at(&quota, &mut s, 2 * S, 4).allowed);
}

#[test]
fn token_bucket_refills_continuously() {
    let quota = q("4/s", Strategy::TokenBucket);
    let mut s = State::new();
    let d = at(&quota, &mut s, 10, 4);
    assert!(d.allowed);
    assert_eq!(d.remaining, 0);
    assert_eq!(d.reset_after, micros(S));
    let d = at(&quota, &mut s, 10, 1);
    assert!(!d.allowed);
    assert_eq!(d.retry_after, micros(250_000));
    assert!(!at(&quota, &mut s, 10 + 249_999, 1).allowed);
    assert!(at(&quota, &mut s, 10 + 250_000, 1).allowed);
    // Cost 3 from an empty bucket: 750 ms.
    let d = at(&quota, &mut s, 10 + 250_000, 3);
    assert_eq!(d.retry_after, micros(750_000));
    assert_eq!(at(&quota, &mut s, 10 + 250_000, 5).retry_after, micros(S));
}

#[test]
fn token_bucket_burst() {
    let quota = q("1/s", Strategy::TokenBucket).with_burst(5).unwrap();
    let mut s = State::new();
    for i in 0..5 {
        let d = at(&quota, &mut s, 0, 1);
        assert!(d.allowed, "burst hit {i}");
        assert_eq!(d.limit, 5);
        assert_eq!(d.remaining, 4 - i);
    }
    let d = at(&quota, &mut s, 0, 1);
    assert!(!d.allowed);
    assert_eq!(d.retry_after, micros(S));
    assert_eq!(d.reset_after, micros(5 * S));
    // A cost within the burst but above the limit waits longer than a period.
    let d = at(&quota, &mut s, 0, 3);
    assert_eq!(d.retry_after, micros(3 * S));
    assert!(at(&quota, &mut s, 3 * S, 3).allowed);
    // Above the burst: never.
    assert_eq!(at(&quota, &mut s, 3 * S, 6).retry_after, micros(S));
    // A burst below the limit caps the bucket.
    let small = q("10/s", Strategy::TokenBucket).with_burst(2).unwrap();
    let mut s = State::new();
    assert!(at(&small, &mut s, 0, 2).allowed);
    assert!(!at(&small, &mut s, 0, 1).allowed);
    assert!(!at(&small, &mut s, 50 * S, 3).allowed);
}

#[test]
fn gcra_spacing_and_burst() {
    let quota = q("4/s", Strategy::Gcra);
    assert_eq!(quota.emission_interval(), 250_000);
    let mut s = State::new();
    for _ in 0..4 {
        assert!(at(&quota, &mut s, 0, 1).allowed);
    }
    let d = at(&quota, &mut s, 0, 1);
    assert!(!d.allowed);
    assert_eq!(d.retry_after, micros(250_000));
    assert_eq!(d.reset_after, micros(S));
    assert!(!at(&quota, &mut s, 249_999, 1).allowed);
    assert!(at(&quota, &mut s, 250_000, 1).allowed);

    let burst = quota.with_burst(8).unwrap();
    let mut s = State::new();
    let d = at(&burst, &mut s, 0, 8);
    assert!(d.allowed);
    assert_eq!(d.remaining, 0);
    assert_eq!(d.reset_after, micros(2 * S));
    assert_eq!(at(&burst, &mut s, 0, 2).retry_after, micros(500_000));
    assert_eq!(at(&burst, &mut s, 0, 9).retry_after, micros(S));
}

#[test]
fn gcra_huge_cost_is_denied_without_overflow() {
    let quota = q("3/10s", Strategy::Gcra);
    let mut s = State::new();
    for cost in [4, u64::MAX / 2, u64::MAX] {
        let d = at(&quota, &mut s, 5, cost);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, micros(10 * S));
        assert_eq!(d.remaining, 3);
    }
}

#[test]
fn huge_costs_never_admitted() {
    for strategy in STRATEGIES {
        let quota = q("5/s", strategy);
        let mut s = State::new();
        for cost in [6, 1 << 40, u64::MAX] {
            let d = at(&quota, &mut s, 1_000, cost);
            assert!(!d.allowed, "{strategy} cost {cost}");
            assert_eq!(d.retry_after, micros(S), "{strategy} cost {cost}");
        }
        assert!(at(&quota, &mut s, 1_000, 5).allowed, "{strategy}");
    }
}

#[test]
fn cost_zero_counts_as_one() {
    for strategy in STRATEGIES {
        let quota = q("1/s", strategy);
        let mut s = State::new();
        assert!(at(&quota, &mut s, 0, 0).allowed, "{strategy}");
        assert!(!at(&quota, &mut s, 0, 0).allowed, "{strategy}");
    }
}

#[test]
fn state_round_trips_through_plain_numbers() {
    for strategy in STRATEGIES {
        let quota = q("3/s", strategy);
        let mut s = State::new();
        assert!(s.is_fresh());
        at(&quota, &mut s, 10, 2);
        assert!(!s.is_fresh());
        let mut copy = match (s.words(), s.log()) {
            (Some(words), _) => State::from_words(words),
            (None, Some(log)) => State::from_log(log.iter().copied()),
            _ => panic!("{strategy}: state is neither words nor a log"),
        };
        assert_eq!(copy, s);
        assert_eq!(
            at(&quota, &mut copy, 20, 1),
            at(&quota, &mut s, 20, 1),
            "{strategy}"
        );
    }
}

/// A backend whose clock steps back (several app servers, a clock read
/// before taking a lock) must not make a strategy panic or admit more.
#[test]
fn a_clock_stepping_back_does_not_panic() {
    for strategy in STRATEGIES {
        let quota = q("3/s", strategy);
        let mut s = State::new();
        let mut admitted = 0;
        for t in [
            5 * S,
            5 * S + 10,
            5 * S - 1_000,
            5 * S + 5,
            4 * S,
            5 * S + 20,
        ] {
            if at(&quota, &mut s, t, 1).allowed {
                admitted += 1;
            }
        }
        assert!(
            admitted <= 3,
            "{strategy}: {admitted} admitted within ~1 ms"
        );
    }
}

/// A dynamic rate may lower the limit of a key that already has a state.
#[test]
fn a_lower_limit_on_an_existing_state_does_not_panic() {
    for strategy in STRATEGIES {
        let high = q("10/s", strategy);
        let low = q("2/s", strategy);
        let mut s = State::new();
        for _ in 0..8 {
            assert!(at(&high, &mut s, 100, 1).allowed, "{strategy}");
        }
        // The token bucket clamps its tokens to the new capacity; the others
        // still count the 8 hits.
        let d = at(&low, &mut s, 200, 1);
        assert_eq!(d.allowed, strategy == Strategy::TokenBucket, "{strategy}");
        assert!(d.remaining <= 1, "{strategy}: {d:?}");
        assert!(d.retry_after <= micros(S), "{strategy}: {d:?}");
    }
}

/// A fixed window with a limit near `u64::MAX` and a huge cost: the count
/// never wraps (which would reopen the window).
#[test]
fn fixed_window_count_never_wraps() {
    let q = Quota::new(
        Rate::new(u64::MAX, Duration::from_secs(1)).unwrap(),
        Strategy::FixedWindow,
    )
    .unwrap();
    let mut state = State::new();
    let now = 1_000_000;
    assert!(q.decide_micros(&mut state, now, 1 << 63).0.allowed);
    assert!(!q.decide_micros(&mut state, now + 1, 1 << 63).0.allowed);
    assert!(
        q.decide_micros(&mut state, now + 2, (1 << 63) - 1)
            .0
            .allowed
    );
    assert!(!q.decide_micros(&mut state, now + 3, 1).0.allowed);
    // The next window starts afresh.
    assert!(
        q.decide_micros(&mut state, now + 1_000_000, 1 << 63)
            .0
            .allowed
    );
}
