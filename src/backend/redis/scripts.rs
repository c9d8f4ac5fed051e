//! The Lua scripts: each strategy's script assembled from the shared
//! prelude, the strategy's functions and the driver, the in-flight script,
//! the bounds within which the scripts' double arithmetic stays exact, and
//! the decisions read from a script's reply.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use crate::strategy::Decisions;
use crate::{Decision, Error, Quota, Strategy};

/// Bounds for the scripts that decide on plain Lua numbers (doubles, exact
/// up to 2^53) at every quota: GCRA, the fixed window and the sliding window
/// log. They keep every intermediate under 2^53 with the server's clock
/// (Unix microseconds, about 2^50.6) added. The token bucket and the sliding
/// window counter need none: past 2^53 their scripts switch to exact
/// integers of any size, so they take every quota [`Quota::new`] takes.
const LUA_MAX_PRODUCT: u128 = 1 << 51;
const LUA_MAX_PERIOD: u64 = 1 << 50;

const PRELUDE: &str = include_str!("prelude.lua");
const DRIVER: &str = include_str!("driver.lua");

/// A strategy's script: the shared helpers, the strategy's functions, the
/// driver that runs them for every rate.
fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}\n{DRIVER}"))
}

static TOKEN_BUCKET: LazyLock<Script> = LazyLock::new(|| script(include_str!("token_bucket.lua")));
static FIXED_WINDOW: LazyLock<Script> = LazyLock::new(|| script(include_str!("fixed_window.lua")));
static SLIDING_WINDOW_COUNTER: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("sliding_window_counter.lua")));
static SLIDING_WINDOW_LOG: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("sliding_window_log.lua")));
static GCRA: LazyLock<Script> = LazyLock::new(|| script(include_str!("gcra.lua")));
pub(super) static IN_FLIGHT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("in_flight.lua")));

pub(super) fn script_for(strategy: Strategy) -> &'static Script {
    match strategy {
        Strategy::TokenBucket => &TOKEN_BUCKET,
        Strategy::FixedWindow => &FIXED_WINDOW,
        Strategy::SlidingWindowCounter => &SLIDING_WINDOW_COUNTER,
        Strategy::SlidingWindowLog => &SLIDING_WINDOW_LOG,
        Strategy::Gcra => &GCRA,
    }
}

/// Builds the [`Decisions`] from a script's `{at, then allowed, remaining,
/// reset_after_us, retry_after_us per rate}`.
pub(super) fn decisions_from_reply(quotas: &[Quota], reply: &[i64]) -> Result<Decisions, Error> {
    let micros = |n: i64| Duration::from_micros(n.max(0) as u64);
    let (Some(&at), rest) = (reply.first(), reply.get(1..).unwrap_or_default()) else {
        return Err(Error::backend(
            "Redis answered a decision with an empty reply",
        ));
    };
    if rest.len() != quotas.len() * 4 {
        return Err(Error::backend(format!(
            "Redis answered a decision on {} rates with {} numbers",
            quotas.len(),
            reply.len()
        )));
    }
    let each = rest.chunks(4).zip(quotas).map(|(numbers, quota)| {
        let allowed = numbers[0] == 1;
        Decision {
            allowed,
            limit: quota.capacity(),
            remaining: numbers[1].max(0) as u64,
            reset_after: micros(numbers[2]),
            retry_after: if allowed {
                Duration::ZERO
            } else {
                micros(numbers[3])
            },
        }
    });
    Ok(Decisions::new(micros(at), each))
}

/// Refuses quotas whose numbers could take a Lua (double) intermediate past
/// 2^53, where the scripts would no longer be exact. The token bucket and the
/// sliding window counter take any quota (their scripts switch to exact
/// integers past 2^53); [`Quota::new`] bounds them (products ≤ 2^62).
pub(super) fn check_quota(quota: &Quota) -> Result<(), Error> {
    let period = quota.period_micros();
    let too_big = |what: &str| {
        Err(Error::configuration(format!(
            "rate {} with {:?} is too large for the Redis backend's exact arithmetic \
             (Lua numbers are doubles, exact below 2^53): {what}; \
             use a shorter period or a smaller limit",
            quota.rate(),
            quota.strategy()
        )))
    };
    let product = |a: u64, b: u64| u128::from(a) * u128::from(b);
    match quota.strategy() {
        Strategy::TokenBucket | Strategy::SlidingWindowCounter => {}
        Strategy::Gcra => {
            if period > LUA_MAX_PERIOD {
                return too_big("the period exceeds 2^50 microseconds (about 35 years)");
            }
            if product(quota.capacity(), quota.emission_interval()) > u128::from(LUA_MAX_PERIOD) {
                return too_big("burst × emission interval in microseconds exceeds 2^50");
            }
        }
        Strategy::FixedWindow | Strategy::SlidingWindowLog => {
            if period > LUA_MAX_PERIOD {
                return too_big("the period exceeds 2^50 microseconds (about 35 years)");
            }
            if u128::from(quota.limit()) > LUA_MAX_PRODUCT {
                return too_big("the limit exceeds 2^51");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::STRATEGIES;

    #[test]
    fn lua_bounds_are_checked() {
        let quota = Quota::new("100/min".parse().unwrap(), Strategy::TokenBucket).unwrap();
        assert!(check_quota(&quota).is_ok());
        // A period past 2^50 µs (40 years): refused where the scripts use
        // doubles only, taken by the token bucket and the sliding window
        // counter, whose scripts switch to exact integers.
        let rate = crate::Rate::new(1000, Duration::from_secs(86_400 * 365 * 40)).unwrap();
        for strategy in STRATEGIES {
            let quota = Quota::new(rate, strategy).unwrap();
            let exact = matches!(
                strategy,
                Strategy::TokenBucket | Strategy::SlidingWindowCounter
            );
            match check_quota(&quota) {
                Ok(()) => assert!(exact, "{strategy}"),
                Err(Error::Configuration(message)) => {
                    assert!(!exact, "{strategy}: {message}");
                    assert!(message.contains("2^50"), "{message}");
                }
                Err(other) => panic!("{other}"),
            }
        }
        // The documented daily bounds: the token bucket and the sliding
        // window counter take what Quota::new takes (× period ≤ 2^62).
        let daily = |limit: u64, strategy| {
            let rate = crate::Rate::new(limit, Duration::from_secs(86_400)).unwrap();
            Quota::new(rate, strategy).map(|quota| check_quota(&quota).is_ok())
        };
        for strategy in [Strategy::TokenBucket, Strategy::SlidingWindowCounter] {
            assert!(daily(1_000_000, strategy).unwrap());
            assert!(daily(53_375_995, strategy).unwrap());
            assert!(daily(53_375_996, strategy).is_err());
        }
        assert!(daily(10_000_000, Strategy::Gcra).unwrap());
        assert!(daily(10_000_000, Strategy::FixedWindow).unwrap());
        // GCRA's burst × emission interval past 2^50.
        let gcra = Quota::new("1000/day".parse().unwrap(), Strategy::Gcra).unwrap();
        assert!(check_quota(&gcra.with_burst(13_031_248).unwrap()).is_ok());
        assert!(check_quota(&gcra.with_burst(13_031_249).unwrap()).is_err());
    }
}
