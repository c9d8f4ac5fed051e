//! The Redis backend against real servers (`cargo test --features redis`).
//!
//! Tests read `REDIS_URL` (default `redis://127.0.0.1:6379`). Without a server
//! they print `SKIPPED: no Redis at ...` and return, except under `CI=true`,
//! where they fail. Every test uses its own random prefix, so the tests run in
//! parallel on one server. Tests that kill, pause or count commands on a
//! server start their own `redis-server` on a free loopback port.
#![cfg(feature = "redis")]

mod redis_common;
mod redis_proxy;
mod redis_servers;

use std::time::{Duration, Instant};

use redis_proxy::SilentProxy;
use redis_servers::{skip, unique, Server};

use traffik::backend::{InMemoryBackend, Op, RedisBackend, ThrottleBackend};
use traffik::key::{Key, Scope};
use traffik::strategy::State;
use traffik::{Decision, Error, HttpThrottle, Quota, Rate, Strategy};

/// Every strategy (`Strategy` is `#[non_exhaustive]` and keeps no public list).
const STRATEGIES: [Strategy; 5] = [
    Strategy::TokenBucket,
    Strategy::FixedWindow,
    Strategy::SlidingWindowCounter,
    Strategy::SlidingWindowLog,
    Strategy::Gcra,
];

// ---------------------------------------------------------------- helpers

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A non-persistent backend on `REDIS_URL` with a fresh prefix, or `None`
/// (skipped) when no server answers.
async fn backend(test: &str) -> Option<RedisBackend> {
    backend_with(test, |b| b).await
}

async fn backend_with(
    test: &str,
    configure: impl FnOnce(
        traffik::backend::RedisBackendBuilder,
    ) -> traffik::backend::RedisBackendBuilder,
) -> Option<RedisBackend> {
    let url = redis_url();
    let builder = RedisBackend::builder(url.clone())
        .prefix(unique(test))
        .persistent(false);
    match configure(builder).build().await {
        Ok(backend) => Some(backend),
        Err(error) => {
            skip(&format!("no Redis at {url} ({error})"));
            None
        }
    }
}

async fn client_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn quota(rate: &str, strategy: Strategy) -> Quota {
    Quota::new(rate.parse::<Rate>().unwrap(), strategy).unwrap()
}

/// The key of `identity` for the throttle `u`, counted on every route
/// (text `{prefix}:u:{identity}:http:*`).
fn key_of(identity: &str) -> Key<'_> {
    Key::new("u", identity, Scope::shared())
}

/// The decision a hit would get, through the trait (what throttles call),
/// on any backend.
async fn peek(
    backend: &dyn ThrottleBackend,
    key: &Key<'_>,
    q: &Quota,
    cost: u64,
) -> Result<Decision, Error> {
    let decisions = backend
        .decide(key, std::slice::from_ref(q), cost, Op::Peek)
        .await?;
    Ok(decisions.binding())
}

/// A hit through the trait, on any backend.
async fn hit(
    backend: &dyn ThrottleBackend,
    key: &Key<'_>,
    q: &Quota,
    cost: u64,
) -> Result<Decision, Error> {
    let decisions = backend
        .decide(key, std::slice::from_ref(q), cost, Op::Hit)
        .await?;
    Ok(decisions.binding())
}

/// `calls` of `cmdstat_evalsha` in `INFO commandstats`.
async fn evalsha_calls(url: &str) -> u64 {
    let mut conn = client_conn(url).await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// Hits `key` until Redis answers again (an allowed decision), within
/// `within` (a liveness bound); `on_error` sees each failure on the way.
async fn until_answered(
    redis: &RedisBackend,
    key: &Key<'_>,
    q: &Quota,
    within: Duration,
    on_error: impl Fn(&Error),
) {
    let deadline = Instant::now() + within;
    loop {
        match redis.hit(key, q, 1).await {
            Ok(decision) => {
                assert!(decision.allowed);
                return;
            }
            Err(error) => {
                on_error(&error);
                assert!(Instant::now() < deadline, "no recovery: {error}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

// ---------------------------------------------------------------- connecting

#[tokio::test]
async fn connect_to_a_closed_port_fails_within_the_connect_timeout() {
    let port = redis_servers::free_port();
    let started = Instant::now();
    let result = RedisBackend::connect(format!("redis://127.0.0.1:{port}")).await;
    let elapsed = started.elapsed();
    let error = result.expect_err("nothing listens there");
    assert!(matches!(error, Error::Backend(_)), "{error}");
    assert!(error.to_string().contains("Redis"), "{error}");
    // A liveness bound with a generous margin (never a performance figure):
    // without the connect timeout this would hang.
    assert!(elapsed < Duration::from_millis(3000), "took {elapsed:?}");
}

#[tokio::test]
async fn connect_to_a_silent_server_fails_within_the_connect_timeout() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accept = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let started = Instant::now();
    let result = RedisBackend::builder(format!("redis://127.0.0.1:{port}"))
        .connect_timeout(Duration::from_millis(300))
        .build()
        .await;
    let elapsed = started.elapsed();
    let error = result.expect_err("the server never answers");
    assert!(matches!(error, Error::Backend(_)), "{error}");
    assert!(error.to_string().contains("Redis"), "{error}");
    assert!(elapsed < Duration::from_millis(2000), "took {elapsed:?}");
    accept.abort();
}

#[tokio::test]
async fn bad_configuration_is_refused() {
    for prefix in ["", "a{b", "a}b"] {
        let error = RedisBackend::builder(redis_url())
            .prefix(prefix)
            .build()
            .await
            .expect_err("invalid prefix");
        assert!(matches!(error, Error::Configuration(_)), "{error}");
    }
    let error = RedisBackend::connect("not a url").await.unwrap_err();
    assert!(matches!(error, Error::Configuration(_)), "{error}");
}

#[tokio::test]
async fn defaults() {
    let Some(probe) = backend("defaults").await else {
        return;
    };
    drop(probe);
    let redis = RedisBackend::connect(redis_url()).await.unwrap();
    assert_eq!(redis.prefix(), "traffik");
    assert!(redis.persistent());
    assert!(ThrottleBackend::persistent(&redis));
    assert_eq!(redis.timeout(), Duration::from_secs(1));
    assert_eq!(redis.circuit_breaker(), Duration::from_millis(500));
    assert!(!redis.is_cluster());
    // The builder is a template: clones connect on their own.
    let template = RedisBackend::builder(redis_url()).prefix(unique("template"));
    let copy = template.clone().persistent(false).build().await.unwrap();
    assert!(!copy.persistent());
    assert!(template.build().await.unwrap().persistent());
}

#[tokio::test]
async fn from_an_existing_client() {
    let Some(probe) = backend("from-client").await else {
        return;
    };
    drop(probe);
    let client = redis::Client::open(redis_url()).unwrap();
    let redis = RedisBackend::builder_with_client(client)
        .prefix(unique("from-client"))
        .build()
        .await
        .unwrap();
    let key = key_of("k");
    let q = quota("2/min", Strategy::TokenBucket);
    assert!(redis.hit(&key, &q, 1).await.unwrap().allowed);
    redis.reset().await.unwrap();
}

#[tokio::test]
async fn quotas_too_large_for_lua_doubles_are_configuration_errors() {
    let Some(redis) = backend("too-large").await else {
        return;
    };
    let key = key_of("k");
    // A period past 2^50 µs (40 years): refused where the scripts decide on
    // doubles only; the token bucket and the sliding window counter switch
    // to exact integers and decide.
    let rate = Rate::new(1000, Duration::from_secs(86_400 * 365 * 40)).unwrap();
    for strategy in STRATEGIES {
        let q = Quota::new(rate, strategy).unwrap();
        let result = redis.hit(&key, &q, 1).await;
        if matches!(
            strategy,
            Strategy::TokenBucket | Strategy::SlidingWindowCounter
        ) {
            let decision = result.unwrap();
            assert!(decision.allowed, "{strategy}");
            assert_eq!(decision.remaining, 999, "{strategy}");
        } else {
            let error = result.unwrap_err();
            assert!(matches!(error, Error::Configuration(_)), "{error}");
            let message = error.to_string();
            assert!(
                message.contains("too large for the Redis backend") && message.contains("2^50"),
                "{message}"
            );
        }
    }
    redis.close().await.unwrap();
}

#[tokio::test]
async fn a_throttle_with_a_quota_too_large_for_redis_fails_to_build() {
    let Some(redis) = backend("too-large-build").await else {
        return;
    };
    // At startup, not as a 500 on every request: a fixed window of 41
    // years (a period past 2^50 µs).
    let too_long = "10/15000d";
    let error = HttpThrottle::builder()
        .rate(too_long)
        .strategy(Strategy::FixedWindow)
        .backend(redis.clone())
        .build()
        .unwrap_err();
    assert!(matches!(error, Error::Configuration(_)), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("too large for the Redis backend"),
        "{message}"
    );
    assert!(message.contains("2^50"), "{message}");
    // Past the new bound of the token bucket and the sliding window counter,
    // the in-memory one (× period ≤ 2^62): refused as well, naming it.
    for strategy in [Strategy::TokenBucket, Strategy::SlidingWindowCounter] {
        let error = HttpThrottle::builder()
            .rate("53375996/day")
            .strategy(strategy)
            .backend(redis.clone())
            .build()
            .unwrap_err();
        assert!(matches!(error, Error::Configuration(_)), "{error}");
        let message = error.to_string();
        assert!(
            message.contains("too large for exact arithmetic") && message.contains("2^62"),
            "{message}"
        );
    }
    // Large daily quotas build and decide: GCRA's, and the token bucket's
    // and the sliding window counter's up to that bound (1,000,000 a day
    // was refused when their scripts used doubles only).
    for (rate, strategy) in [
        ("200000/day", Strategy::Gcra),
        ("1000000/day", Strategy::TokenBucket),
        ("53375995/day", Strategy::TokenBucket),
        ("1000000/day", Strategy::SlidingWindowCounter),
        ("53375995/day", Strategy::SlidingWindowCounter),
    ] {
        let t = HttpThrottle::builder()
            .rate(rate)
            .strategy(strategy)
            .backend(redis.clone())
            .build()
            .unwrap();
        let req = http::Request::get("/big")
            .extension(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                [10, 0, 0, 9],
                1,
            ))))
            .body(())
            .unwrap();
        let decision = t.hit(&req).await.unwrap();
        assert!(decision.allowed, "{rate} {strategy}");
        assert_eq!(decision.remaining, decision.limit - 1, "{rate} {strategy}");
    }
    // In shadow mode too (a configuration error, not an outage); a cost of
    // 0 never asks the backend, so it builds.
    let shadow = HttpThrottle::builder()
        .rate(too_long)
        .strategy(Strategy::FixedWindow)
        .shadow(true)
        .backend(redis.clone())
        .build();
    assert!(matches!(shadow, Err(Error::Configuration(_))));
    assert!(HttpThrottle::builder()
        .rate(too_long)
        .strategy(Strategy::FixedWindow)
        .cost(0)
        .backend(redis.clone())
        .build()
        .is_ok());
    // Without a backend of its own (a layer's, a scope's), the hit refuses it.
    let t = HttpThrottle::builder()
        .rate(too_long)
        .strategy(Strategy::FixedWindow)
        .build()
        .unwrap();
    let req = http::Request::get("/big")
        .extension(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [10, 0, 0, 9],
            1,
        ))))
        .body(())
        .unwrap();
    let error = traffik::backend::scope(redis.clone(), t.hit(&req))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Configuration(_)), "{error}");
    redis.reset().await.unwrap();
}

// ---------------------------------------------------------------- exactness

#[tokio::test]
async fn concurrent_hits_admit_exactly_the_limit_for_every_strategy() {
    let Some(redis) = backend("concurrent").await else {
        return;
    };
    const LIMIT: u64 = 25;
    const CALLERS: usize = 100;
    for strategy in STRATEGIES {
        let q = quota(&format!("{LIMIT}/day"), strategy);
        let key = Key::new("one-key", strategy.name(), Scope::shared());
        let tasks: Vec<_> = (0..CALLERS)
            .map(|_| {
                let redis = redis.clone();
                tokio::spawn(async move { redis.hit(&key, &q, 1).await.unwrap() })
            })
            .collect();
        let mut allowed = 0;
        for task in tasks {
            allowed += u64::from(task.await.unwrap().allowed);
        }
        assert_eq!(allowed, LIMIT, "{strategy}: {CALLERS} concurrent hits");
    }
    redis.close().await.unwrap();
}

#[tokio::test]
async fn two_backends_with_one_prefix_share_the_count() {
    let Some(first) = backend("shared").await else {
        return;
    };
    let second = RedisBackend::builder(redis_url())
        .prefix(first.prefix())
        .build()
        .await
        .unwrap();
    const LIMIT: u64 = 10;
    for strategy in STRATEGIES {
        let q = quota(&format!("{LIMIT}/day"), strategy);
        let key = Key::new("shared", strategy.name(), Scope::shared());
        let mut allowed = 0;
        for i in 0..(3 * LIMIT) {
            let backend = if i % 2 == 0 { &first } else { &second };
            allowed += u64::from(backend.hit(&key, &q, 1).await.unwrap().allowed);
        }
        assert_eq!(allowed, LIMIT, "{strategy}");
        // Concurrently, from both.
        let key = Key::new("shared-concurrent", strategy.name(), Scope::shared());
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let backend = if i % 2 == 0 {
                    first.clone()
                } else {
                    second.clone()
                };
                tokio::spawn(async move { backend.hit(&key, &q, 1).await.unwrap().allowed })
            })
            .collect();
        let mut allowed = 0;
        for task in tasks {
            allowed += u64::from(task.await.unwrap());
        }
        assert_eq!(allowed, LIMIT, "{strategy} concurrent");
    }
    first.close().await.unwrap();
}

/// Hit sequences within a short window at long periods (where the clock does
/// not matter) give the in-memory backend's answers.
#[tokio::test]
async fn burst_sequences_match_the_in_memory_backend() {
    let Some(redis) = backend("burst").await else {
        return;
    };
    let memory = InMemoryBackend::builder().prefix(redis.prefix()).build();
    let cases: Vec<Quota> = vec![
        quota("5/hour", Strategy::TokenBucket),
        quota("5/hour", Strategy::TokenBucket)
            .with_burst(8)
            .unwrap(),
        quota("5/hour", Strategy::FixedWindow),
        quota("5/day", Strategy::SlidingWindowCounter),
        quota("5/hour", Strategy::SlidingWindowLog),
        quota("5/hour", Strategy::Gcra),
        quota("5/hour", Strategy::Gcra).with_burst(3).unwrap(),
    ];
    let costs = [1, 2, 1, 9, 1, 3, 1, 1, 1, 2, 1];
    for (n, q) in cases.iter().enumerate() {
        let identity = format!("burst-{n}");
        let key = key_of(&identity);
        for (i, &cost) in costs.iter().enumerate() {
            let peeked = i % 4 == 3;
            let (from_redis, from_memory) = if peeked {
                (
                    peek(&redis, &key, q, cost).await.unwrap(),
                    peek(&memory, &key, q, cost).await.unwrap(),
                )
            } else {
                (
                    hit(&redis, &key, q, cost).await.unwrap(),
                    hit(&memory, &key, q, cost).await.unwrap(),
                )
            };
            let what = format!(
                "{:?} {} step {i} cost {cost} peek {peeked}",
                q.strategy(),
                q.rate()
            );
            assert_eq!(from_redis.allowed, from_memory.allowed, "{what}");
            assert_eq!(from_redis.remaining, from_memory.remaining, "{what}");
            assert_eq!(from_redis.limit, from_memory.limit, "{what}");
            // The two clocks differ by the time the steps take (and the
            // sliding window counter's windows are aligned differently).
            let close = |a: Duration, b: Duration| {
                let d = a.abs_diff(b);
                d < Duration::from_millis(500)
                    || q.strategy() == Strategy::SlidingWindowCounter && d <= q.rate().period()
            };
            assert!(
                close(from_redis.retry_after, from_memory.retry_after),
                "{what}: {from_redis:?} vs {from_memory:?}"
            );
            assert!(
                close(from_redis.reset_after, from_memory.reset_after),
                "{what}: {from_redis:?} vs {from_memory:?}"
            );
        }
    }
    redis.close().await.unwrap();
}

/// Rates of several strategies in one decision (only a direct call to the
/// backend can ask it: a throttle has one strategy) are refused with a
/// configuration error, not decided by the first rate's script.
#[tokio::test]
async fn rates_of_several_strategies_are_a_configuration_error() {
    let Some(redis) = backend("mixed").await else {
        return;
    };
    let quotas = [
        quota("2/hour", Strategy::TokenBucket),
        quota("3/day", Strategy::FixedWindow),
    ];
    let error = redis
        .decide(&key_of("mixed"), &quotas, 1, Op::Hit)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Configuration(_)), "{error:?}");
    assert!(error.to_string().contains("same Strategy"), "{error}");
    redis.close().await.unwrap();
}

/// Several rates (`.rates([..])`), all or nothing, give the in-memory
/// backend's answers: each rate's decision, in order, and a hit refused by
/// one rate counted on none.
#[tokio::test]
async fn several_rates_match_the_in_memory_backend() {
    let Some(redis) = backend("rates").await else {
        return;
    };
    let memory = InMemoryBackend::builder().prefix(redis.prefix()).build();
    for strategy in STRATEGIES {
        let quotas = [quota("2/hour", strategy), quota("3/day", strategy)];
        let key = Key::new("rates", strategy.name(), Scope::shared());
        for (step, cost) in [1, 1, 1, 2, 1].into_iter().enumerate() {
            let from_redis = redis
                .decide(&key, &quotas, cost, Op::Hit)
                .await
                .unwrap_or_else(|error| panic!("{strategy} step {step}: {error}"));
            let from_memory = memory.decide(&key, &quotas, cost, Op::Hit).unwrap();
            let summary = |decisions: &traffik::strategy::Decisions| {
                decisions
                    .iter()
                    .map(|d| (d.allowed, d.remaining, d.limit))
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                summary(&from_redis),
                summary(&from_memory),
                "{strategy} step {step}"
            );
        }
    }
    // Through a throttle: it builds, and its hits are decided.
    let t = HttpThrottle::builder()
        .uid("rates-throttle")
        .rates(["2/min", "3/hour"])
        .backend(redis.clone())
        .build()
        .unwrap();
    let req = http::Request::get("/r")
        .extension(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [10, 0, 0, 7],
            1,
        ))))
        .body(())
        .unwrap();
    assert_eq!(t.hit(&req).await.unwrap().remaining, 1);
    redis.close().await.unwrap();
}

/// The scripts with the server's clock replaced by a time passed in: every
/// decision (all five fields) equals `Quota::decide_micros`, over random
/// sequences of gaps, costs, hits and peeks.
#[tokio::test]
async fn scripts_mirror_the_reference_arithmetic_exactly() {
    let Some(redis) = backend("mirror").await else {
        return;
    };
    let prelude = include_str!("../src/backend/redis/prelude.lua")
        .replace("redis.call('TIME')", "{ARGV[#ARGV - 1], ARGV[#ARGV]}")
        // The test's clock runs faster than the server's: keep keys alive
        // (a state past its expiry is equivalent to a fresh one anyway).
        .replace(
            "return int(cdiv(us, 1000) + 1)",
            "return int(cdiv(us, 1000) + 600000)",
        );
    assert!(prelude.contains("ARGV[#ARGV]") && prelude.contains("600000"));
    let body = |strategy| match strategy {
        Strategy::TokenBucket => include_str!("../src/backend/redis/token_bucket.lua"),
        Strategy::FixedWindow => include_str!("../src/backend/redis/fixed_window.lua"),
        Strategy::SlidingWindowCounter => {
            include_str!("../src/backend/redis/sliding_window_counter.lua")
        }
        Strategy::SlidingWindowLog => include_str!("../src/backend/redis/sliding_window_log.lua"),
        Strategy::Gcra => include_str!("../src/backend/redis/gcra.lua"),
        other => panic!("no script for {other:?}"),
    };
    let mut conn = client_conn(&redis_url()).await;
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let rates = ["3/s", "5/2s", "10/min", "7/300ms", "1/s", "4/1500ms"];
    let mut steps = 0;
    for strategy in STRATEGIES {
        let driver = include_str!("../src/backend/redis/driver.lua");
        let script = redis::Script::new(&format!("{prelude}\n{}\n{driver}", body(strategy)));
        // Each strategy's largest quotas (see RedisBackend's docs), where the
        // scripts' numbers come closest to 2^53 or pass it. Odd limits (and
        // an odd period): round ones keep every number a multiple of a power
        // of two, exact in a double past 2^53 too, and would prove nothing.
        // The token bucket and the sliding window counter switch to exact
        // integers past 2^53 (2^51 for the counter): a daily quota just
        // under that, then quotas up to the in-memory bound (× period ≤
        // 2^62), an odd period, a period past 2^50 µs, and for the token
        // bucket a bucket of 2^62 - 1 tokens (remaining past 2^53) and a
        // burst far above the rate (reset and retry past 2^53).
        let edge: &[&str] = match strategy {
            Strategy::TokenBucket => &[
                "104003/day",
                "1000003/day",
                "1000003/86399999us",
                "53375993/day",
                "3643/14610d",
                "4611686018427387903/us",
            ],
            Strategy::SlidingWindowCounter => &[
                "26003/day",
                "1000003/day",
                "1000003/86399999us",
                "53375993/day",
                "3643/14610d",
                "3/14610d",
            ],
            Strategy::Gcra | Strategy::FixedWindow => &["10000019/day"],
            Strategy::SlidingWindowLog => &[],
            other => panic!("no edge cases for {other:?}"),
        };
        for (r, rate) in rates.iter().chain(edge).copied().enumerate() {
            let mut quotas = vec![quota(rate, strategy)];
            if matches!(strategy, Strategy::TokenBucket | Strategy::Gcra) {
                quotas.push(quota(rate, strategy).with_burst(2 + r as u64).unwrap());
            }
            if strategy == Strategy::TokenBucket && rate == "1000003/day" {
                quotas.push(quota("7/day", strategy).with_burst(53_375_993).unwrap());
            }
            for (b, q) in quotas.iter().enumerate() {
                let key = format!("{}:{{mirror-{strategy}-{r}-{b}}}", redis.prefix());
                let mut state = State::new();
                // A realistic Unix time in microseconds, with a random offset.
                let mut now: u64 = 1_700_000_000_000_000 + next(1 << 40);
                let period = q.period_micros();
                let micros = |d: Duration| d.as_micros() as u64;
                let (mut last, mut last_cost) = (Decision::unlimited(), 1);
                for step in 0..150 {
                    // Small costs, costs near the remaining tokens, any cost.
                    let mut cost = match next(4) {
                        0 => 1 + next(3),
                        1 => last.remaining.min(q.capacity()) + next(3),
                        _ => 1 + next(q.capacity() + 1),
                    }
                    .max(1);
                    let gap = match next(10) {
                        0 => 0,
                        1 => next(50),
                        2 => next(period / q.limit() + 1),
                        3 => next(period),
                        4 => period + next(period),
                        // The last cost again exactly when the last decision
                        // said to retry, and a microsecond early; the whole
                        // capacity when the key would be back to its full
                        // quota, and a microsecond early: where a rounded
                        // number shows.
                        5 | 6 => {
                            cost = last_cost;
                            micros(last.retry_after).saturating_sub(next(2))
                        }
                        7 | 8 => {
                            cost = q.capacity();
                            micros(last.reset_after).saturating_sub(next(2))
                        }
                        _ => next(period / 4 + 1),
                    };
                    // The server's clock stays realistic (Unix µs, under 2^52).
                    now += if gap > 1 << 44 { next(1 << 44) } else { gap };
                    last_cost = cost;
                    let record = next(5) != 0;
                    let expected = if record {
                        q.decide_micros(&mut state, now, cost).0
                    } else {
                        q.decide_micros(&mut state.clone(), now, cost).0
                    };
                    last = expected;
                    let mut invocation = script.key(&key);
                    invocation
                        .arg(if record { "hit" } else { "peek" })
                        .arg(cost)
                        .arg(0);
                    match strategy {
                        Strategy::TokenBucket => {
                            invocation.arg(q.limit()).arg(period).arg(q.capacity());
                        }
                        Strategy::Gcra => {
                            invocation
                                .arg(q.emission_interval())
                                .arg(q.capacity())
                                .arg(period);
                        }
                        _ => {
                            invocation.arg(q.limit()).arg(period);
                        }
                    }
                    invocation.arg(now / 1_000_000).arg(now % 1_000_000);
                    let [at, allowed, remaining, reset, retry]: [i64; 5] =
                        invocation.invoke_async(&mut conn).await.unwrap();
                    let got = Decision {
                        allowed: allowed == 1,
                        limit: q.capacity(),
                        remaining: remaining as u64,
                        reset_after: Duration::from_micros(reset as u64),
                        retry_after: if allowed == 1 {
                            Duration::ZERO
                        } else {
                            Duration::from_micros(retry as u64)
                        },
                    };
                    let what = format!(
                        "{strategy} {} burst {} step {step} now {now} cost {cost} record {record}",
                        q.rate(),
                        q.capacity()
                    );
                    assert_eq!(got, expected, "{what}");
                    // The decision's time, for a refund of the hit.
                    assert_eq!(at as u64, now, "{what}");
                    // The stored state too, digit for digit, where the two
                    // words are stored as numbers.
                    let words = matches!(
                        strategy,
                        Strategy::TokenBucket | Strategy::SlidingWindowCounter
                    );
                    if words && record && !expected.reset_after.is_zero() {
                        let stored: String = redis::cmd("GET")
                            .arg(&key)
                            .query_async(&mut conn)
                            .await
                            .unwrap();
                        let [a, b] = state.words().unwrap_or_default();
                        match strategy {
                            Strategy::TokenBucket => {
                                assert_eq!(stored, format!("{a} {b}"), "{what}")
                            }
                            Strategy::SlidingWindowCounter => assert_eq!(
                                stored,
                                format!("{a} {} {}", b >> 32, b & u64::from(u32::MAX)),
                                "{what}"
                            ),
                            _ => {}
                        }
                    }
                    steps += 1;
                }
            }
        }
    }
    assert!(steps > 4000);
    redis.close().await.unwrap();
}

/// The prelude's exact integers (the token bucket's and the sliding window
/// counter's path past 2^53) against `u128`: parsing and formatting,
/// comparison, sum, difference, product and division, at random sizes up
/// to 64 bits and at the limb and digit-group boundaries.
#[tokio::test]
async fn the_scripts_exact_integers_match_u128() {
    let Some(redis) = backend("bignum").await else {
        return;
    };
    let script = redis::Script::new(&format!(
        "{}\n{}",
        include_str!("../src/backend/redis/prelude.lua"),
        "local N = bignum()
         local a, b = N.parse(ARGV[2]), N.parse(ARGV[3])
         local q, r = N.divmod(a, b)
         local d = '-'
         if N.cmp(a, b) >= 0 then
           d = N.str(N.sub(a, b))
         end
         return {N.cmp(a, b), N.str(a), N.str(N.add(a, b)), d, N.str(N.mul(a, b)),
                 N.str(q), N.str(r), N.str(N.cdiv(a, b)), N.str(N.of(tonumber(ARGV[4])))}"
    ));
    let mut conn = client_conn(&redis_url()).await;
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let special = [
        0,
        1,
        2,
        (1 << 24) - 1,
        1 << 24,
        (1 << 48) - 1,
        1 << 48,
        9_999_999,
        10_000_000,
        99_999_999_999_999,
        100_000_000_000_000,
        (1 << 53) - 1,
        1 << 53,
        (1 << 53) + 1,
        (1 << 62) - 1,
        1 << 62,
        u64::MAX - 1,
        u64::MAX,
    ];
    let mut cases = Vec::new();
    for &a in &special {
        for &b in &special {
            cases.push((a, b));
        }
    }
    for _ in 0..1500 {
        let (x, y) = (next(), next());
        let (a, b) = (x >> (x % 64), y >> (y % 64));
        cases.push((a, b));
        // Near multiples: a quotient estimate off by one shows here.
        if b > 0 {
            let k = next() >> (next() % 64);
            if let Some(m) = k.checked_mul(b) {
                for a in [m.wrapping_sub(1), m, m.wrapping_add(1)] {
                    cases.push((a, b));
                }
            }
        }
    }
    for (a, b) in cases {
        let b = b.max(1);
        let small = a >> 11; // under 2^53: exact as a Lua number
        let got: Vec<String> = script
            .key("unused")
            .arg("0")
            .arg(a)
            .arg(b)
            .arg(small)
            .invoke_async(&mut conn)
            .await
            .unwrap();
        let (a, b) = (u128::from(a), u128::from(b));
        let expected = vec![
            match a.cmp(&b) {
                std::cmp::Ordering::Less => "-1".to_owned(),
                std::cmp::Ordering::Equal => "0".to_owned(),
                std::cmp::Ordering::Greater => "1".to_owned(),
            },
            a.to_string(),
            (a + b).to_string(),
            a.checked_sub(b).map_or("-".to_owned(), |d| d.to_string()),
            (a * b).to_string(),
            (a / b).to_string(),
            (a % b).to_string(),
            a.div_ceil(b).to_string(),
            small.to_string(),
        ];
        assert_eq!(got, expected, "a {a} b {b}");
    }
    redis.close().await.unwrap();
}

/// A short period, waiting for the refill: `retry_after` is exact enough to
/// wait on, and keys expire once their state is fresh again.
#[tokio::test]
async fn short_periods_refill_after_retry_after() {
    let Some(redis) = backend("refill").await else {
        return;
    };
    let mut conn = client_conn(&redis_url()).await;
    for strategy in STRATEGIES {
        let q = quota("3/300ms", strategy);
        let key = Key::new("refill", strategy.name(), Scope::shared());
        let mut last = None;
        for _ in 0..3 {
            let d = redis.hit(&key, &q, 1).await.unwrap();
            assert!(d.allowed, "{strategy}");
            last = Some(d);
        }
        let denied = redis.hit(&key, &q, 1).await.unwrap();
        assert!(!denied.allowed, "{strategy}");
        assert_eq!(denied.remaining, 0, "{strategy}");
        assert!(denied.retry_after > Duration::ZERO, "{strategy}");
        assert!(
            denied.retry_after <= Duration::from_millis(600),
            "{strategy}: {denied:?}"
        );
        // Redis keeps the key, expiring when the state is fresh again.
        let stored = redis.storage_key(&key.text(redis.prefix()), strategy);
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&stored)
            .query_async(&mut conn)
            .await
            .unwrap();
        let reset_ms = last.unwrap().reset_after.as_millis() as i64;
        assert!(
            pttl > 0 && pttl <= reset_ms + 2,
            "{strategy}: pttl {pttl} reset {reset_ms}"
        );
        tokio::time::sleep(denied.retry_after + Duration::from_millis(15)).await;
        if strategy == Strategy::SlidingWindowCounter && denied.retry_after == q.rate().period() {
            // The one capped case (see `Strategy`): a full previous window
            // can still weigh in after one period; wait out the rest.
            let again = peek(&redis, &key, &q, 1).await.unwrap();
            tokio::time::sleep(again.retry_after + Duration::from_millis(15)).await;
        }
        assert!(
            redis.hit(&key, &q, 1).await.unwrap().allowed,
            "{strategy} after retry_after"
        );
        let reset = peek(&redis, &key, &q, 1).await.unwrap().reset_after;
        tokio::time::sleep(reset + Duration::from_millis(20)).await;
        let exists: i64 = redis::cmd("EXISTS")
            .arg(&stored)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(exists, 0, "{strategy}: the key expired after reset_after");
        let fresh = peek(&redis, &key, &q, 1).await.unwrap();
        assert_eq!(
            fresh.remaining, 2,
            "{strategy}: full again (peek of cost 1)"
        );
    }
    redis.close().await.unwrap();
}

#[tokio::test]
async fn peek_never_writes() {
    let Some(redis) = backend("peek").await else {
        return;
    };
    let mut conn = client_conn(&redis_url()).await;
    for strategy in STRATEGIES {
        let q = quota("4/min", strategy);
        let key = Key::new("peek", strategy.name(), Scope::shared());
        let stored = redis.storage_key(&key.text(redis.prefix()), strategy);
        let first = peek(&redis, &key, &q, 1).await.unwrap();
        assert!(first.allowed, "{strategy}");
        assert_eq!(first.remaining, 3, "{strategy}");
        let exists: i64 = redis::cmd("EXISTS")
            .arg(&stored)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(exists, 0, "{strategy}: peek created no key");
        redis.hit(&key, &q, 2).await.unwrap();
        for _ in 0..3 {
            let peeked = peek(&redis, &key, &q, 1).await.unwrap();
            assert!(peeked.allowed, "{strategy}");
            assert_eq!(peeked.remaining, 1, "{strategy}");
        }
        assert_eq!(
            redis.hit(&key, &q, 1).await.unwrap().remaining,
            1,
            "{strategy}"
        );
    }
    redis.close().await.unwrap();
}

// ---------------------------------------------------------------- lifecycle

#[tokio::test]
async fn non_persistent_reset_removes_only_its_own_prefix() {
    let Some(redis) = backend("reset").await else {
        return;
    };
    let url = redis_url();
    let mut conn = client_conn(&url).await;
    let prefix = redis.prefix().to_owned();
    // Foreign keys: another prefix, a prefix that starts like ours, no colon.
    // And a backend whose prefix extends ours ("{prefix}:t1").
    let foreign = [
        format!("{prefix}x:{{u:k:s}}:tb"),
        format!("{prefix}:t1:{{u:k:s}}:tb"),
        format!("other-{prefix}:k"),
        prefix.clone(),
    ];
    for key in &foreign {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg("1")
            .arg("EX")
            .arg(60)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let q = quota("5/min", Strategy::TokenBucket);
    for i in 0..2500 {
        // Enough keys for several SCAN batches.
        let identity = i.to_string();
        redis.hit(&key_of(&identity), &q, 1).await.unwrap();
    }
    // Counts this backend's own keys (`{prefix}:{...}`).
    let count = |conn: &mut redis::aio::MultiplexedConnection, pattern: String| {
        let mut conn = conn.clone();
        async move {
            let mut n = 0;
            let mut cursor = 0u64;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                n += keys.len();
                cursor = next;
                if cursor == 0 {
                    return n;
                }
            }
        }
    };
    assert_eq!(count(&mut conn, format!("{prefix}:{{*")).await, 2500);
    // A second non-persistent backend on the same prefix clears it on build.
    let again = RedisBackend::builder(url.clone())
        .prefix(prefix.clone())
        .persistent(false)
        .build()
        .await
        .unwrap();
    assert_eq!(count(&mut conn, format!("{prefix}:{{*")).await, 0);
    for key in &foreign {
        let exists: i64 = redis::cmd("EXISTS")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(exists, 1, "{key} survives");
    }
    // reset() and close() clear too.
    redis.hit(&key_of("a"), &q, 1).await.unwrap();
    again.reset().await.unwrap();
    assert_eq!(count(&mut conn, format!("{prefix}:{{*")).await, 0);
    redis.hit(&key_of("a"), &q, 1).await.unwrap();
    again.close().await.unwrap();
    assert_eq!(count(&mut conn, format!("{prefix}:{{*")).await, 0);
    // A persistent backend keeps its keys on build and close.
    redis.hit(&key_of("a"), &q, 1).await.unwrap();
    let persistent = RedisBackend::builder(url.clone())
        .prefix(prefix.clone())
        .build()
        .await
        .unwrap();
    persistent.close().await.unwrap();
    assert_eq!(count(&mut conn, format!("{prefix}:{{*")).await, 1);
    persistent.reset().await.unwrap();
    assert_eq!(count(&mut conn, format!("{prefix}:{{*")).await, 0);
    for key in &foreign {
        let _: i64 = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn glob_characters_in_the_prefix_match_only_themselves() {
    let Some(probe) = backend("glob").await else {
        return;
    };
    let base = probe.prefix().to_owned();
    let url = redis_url();
    let star = RedisBackend::builder(url.clone())
        .prefix(format!("{base}*"))
        .build()
        .await
        .unwrap();
    let plain = RedisBackend::builder(url.clone())
        .prefix(format!("{base}-plain"))
        .build()
        .await
        .unwrap();
    let q = quota("5/min", Strategy::FixedWindow);
    let key = key_of("k");
    star.hit(&key, &q, 1).await.unwrap();
    plain.hit(&key, &q, 1).await.unwrap();
    star.reset().await.unwrap();
    assert_eq!(peek(&plain, &key, &q, 1).await.unwrap().remaining, 3);
    assert_eq!(peek(&star, &key, &q, 1).await.unwrap().remaining, 4);
    plain.reset().await.unwrap();
}

#[tokio::test]
async fn script_flush_is_recovered_from() {
    let Some(redis) = backend("noscript").await else {
        return;
    };
    let mut conn = client_conn(&redis_url()).await;
    let key = |strategy: Strategy| Key::new("flush", strategy.name(), Scope::shared());
    for strategy in STRATEGIES {
        let q = quota("5/min", strategy);
        assert!(redis.hit(&key(strategy), &q, 1).await.unwrap().allowed);
    }
    // One flush (tests share the server: a flush per strategy would race
    // with the other tests' own recovery).
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    for strategy in STRATEGIES {
        let q = quota("5/min", strategy);
        let d = redis.hit(&key(strategy), &q, 1).await.unwrap();
        assert!(d.allowed, "{strategy}");
        assert_eq!(d.remaining, 3, "{strategy}");
    }
    redis.close().await.unwrap();
}

// ---------------------------------------------------------------- outages

#[tokio::test]
async fn an_outage_fails_fast_and_the_backend_recovers_by_itself() {
    let Some(mut server) = Server::start_or_skip(&[]).await else {
        return;
    };
    let timeout = Duration::from_millis(300);
    let redis = RedisBackend::builder(server.url())
        .prefix(unique("outage"))
        .timeout(timeout)
        .build()
        .await
        .unwrap();
    let q = quota("1000000/min", Strategy::TokenBucket);
    let key = key_of("k");
    // Load from 8 callers while the server dies.
    let load: Vec<_> = (0..8)
        .map(|_| {
            let redis = redis.clone();
            tokio::spawn(async move {
                let mut errors = 0;
                let deadline = Instant::now() + Duration::from_millis(600);
                while Instant::now() < deadline {
                    let started = Instant::now();
                    let result = redis.hit(&key, &q, 1).await;
                    let elapsed = started.elapsed();
                    assert!(
                        elapsed < timeout + Duration::from_millis(1500),
                        "a hit took {elapsed:?}"
                    );
                    if result.is_err() {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                errors
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.kill();
    let mut errors = 0;
    for task in load {
        errors += task.await.unwrap();
    }
    assert!(errors > 0, "hits failed while the server was down");
    // Down: every hit is an Err within the timeout.
    for _ in 0..5 {
        let started = Instant::now();
        let error = redis.hit(&key, &q, 1).await.unwrap_err();
        let elapsed = started.elapsed();
        assert!(matches!(error, Error::Backend(_)), "{error}");
        assert!(error.to_string().contains("Redis"), "{error}");
        assert!(
            elapsed < timeout + Duration::from_millis(1500),
            "took {elapsed:?}"
        );
    }
    // Back on the same port: the same backend recovers by itself.
    server.restart().await;
    until_answered(&redis, &key, &q, Duration::from_secs(5), |_| {}).await;
    // The scripts were lost with the server: NOSCRIPT is recovered from.
    for strategy in STRATEGIES {
        let q = quota("5/min", strategy);
        assert!(redis.hit(&key, &q, 1).await.unwrap().allowed, "{strategy}");
    }
}

#[tokio::test]
async fn a_server_that_stops_answering_times_out() {
    let Some(server) = Server::start_or_skip(&[]).await else {
        return;
    };
    let timeout = Duration::from_millis(250);
    let redis = RedisBackend::builder(server.url())
        .prefix(unique("paused"))
        .timeout(timeout)
        .build()
        .await
        .unwrap();
    let q = quota("100/min", Strategy::Gcra);
    let key = key_of("k");
    assert!(redis.hit(&key, &q, 1).await.unwrap().allowed);
    server.signal("-STOP");
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let redis = redis.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let result = redis.hit(&key, &q, 1).await;
                (result, started.elapsed())
            })
        })
        .collect();
    for task in tasks {
        let (result, elapsed) = task.await.unwrap();
        let error = result.unwrap_err();
        assert!(matches!(error, Error::Backend(_)), "{error}");
        assert!(error.to_string().contains("Redis"), "{error}");
        assert!(
            elapsed < timeout + Duration::from_millis(1500),
            "took {elapsed:?}"
        );
    }
    server.signal("-CONT");
    until_answered(&redis, &key, &q, Duration::from_secs(5), |_| {}).await;
}

/// A server of its own behind a [`SilentProxy`], and a backend through the proxy
/// with `timeout` and no circuit breaker unless `breaker`; its key has had
/// one hit. `None` (skipped) without `redis-server`.
async fn proxied(
    test: &str,
    timeout: Duration,
    breaker: Duration,
) -> Option<(Server, SilentProxy, RedisBackend, Key<'static>, Quota)> {
    let server = Server::start_or_skip(&[]).await?;
    let proxy = SilentProxy::start(&server.url()).await.unwrap();
    let redis = RedisBackend::builder(proxy.url())
        .prefix(unique(test))
        .timeout(timeout)
        .connect_timeout(Duration::from_millis(500))
        .circuit_breaker(breaker)
        .build()
        .await
        .unwrap();
    let q = quota("1000000/min", Strategy::TokenBucket);
    let key = key_of("k");
    assert!(redis.hit(&key, &q, 1).await.unwrap().allowed);
    Some((server, proxy, redis, key, q))
}

/// A connection that stays open but silent is never dropped by the Redis
/// client: before, the backend timed out on it forever, though the path to
/// Redis had healed. A command that times out now has it replaced.
#[tokio::test]
async fn a_connection_that_goes_silent_is_replaced() {
    let Some((_server, proxy, redis, key, q)) = proxied(
        "silent",
        Duration::from_millis(200),
        Duration::from_millis(100),
    )
    .await
    else {
        return;
    };
    let connections = proxy.accepted();

    proxy.black_hole_open_connections();
    let error = redis.hit(&key, &q, 1).await.unwrap_err();
    let message = error.to_string();
    // The client's own response timeout or the backend's, whichever first.
    assert!(
        message.contains("EVALSHA timed out") || message.contains("did not answer EVALSHA"),
        "{message}"
    );
    // Nothing else changes: the backend gets through again on its own.
    until_answered(&redis, &key, &q, Duration::from_secs(5), |_| {}).await;
    assert!(
        proxy.accepted() > connections,
        "a new connection was opened"
    );
}

/// Hits in flight on a silent connection all time out; only the first
/// replaces it: the others, on a connection already replaced, neither
/// replace its successor nor reopen the breaker.
#[tokio::test]
async fn timeouts_in_flight_on_a_silent_connection_replace_it_once() {
    let Some((_server, proxy, redis, key, q)) =
        proxied("storm", Duration::from_millis(300), Duration::ZERO).await
    else {
        return;
    };
    let connections = proxy.accepted();
    proxy.black_hole_open_connections();
    // Spread over the timeout, so that they time out one after another,
    // long after the first replacement is done.
    let in_flight: Vec<_> = (0..60u64)
        .map(|i| {
            let redis = redis.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(5 * i)).await;
                redis.hit(&key, &q, 1).await
            })
        })
        .collect();
    for task in in_flight {
        // Those sent after the replacement get through.
        let _ = task.await.unwrap();
    }
    until_answered(&redis, &key, &q, Duration::from_secs(5), |_| {}).await;
    for _ in 0..20 {
        assert!(redis.hit(&key, &q, 1).await.unwrap().allowed);
    }
    // One replacement opens two connections (a first attempt, then the
    // client's own); the timeouts that follow it must not open more pairs.
    let opened = proxy.accepted() - connections;
    assert!((1..=4).contains(&opened), "{opened} connections opened");
}

/// The task opening a new connection can be dropped unfinished (its
/// runtime shut down): the next timeout may open one again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_dropped_with_its_runtime_does_not_block_the_next() {
    let Some((_server, proxy, redis, key, q)) =
        proxied("dropped-task", Duration::from_millis(200), Duration::ZERO).await
    else {
        return;
    };
    proxy.black_hole_open_connections();
    // A hit times out on a short-lived runtime, which starts the
    // replacement there and is shut down at once.
    std::thread::spawn({
        let redis = redis.clone();
        move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            assert!(runtime.block_on(redis.hit(&key, &q, 1)).is_err());
            drop(runtime);
        }
    })
    .join()
    .unwrap();
    until_answered(&redis, &key, &q, Duration::from_secs(5), |_| {}).await;
}

/// A connection closed under the backend (an idle timeout, `CLIENT KILL`)
/// is reopened by the client at once: it does not open the breaker.
#[tokio::test]
async fn one_lost_connection_does_not_open_the_breaker() {
    let Some(server) = Server::start_or_skip(&[]).await else {
        return;
    };
    let redis = RedisBackend::builder(server.url())
        .prefix(unique("killed"))
        .circuit_breaker(Duration::from_secs(30))
        .build()
        .await
        .unwrap();
    let q = quota("1000000/min", Strategy::Gcra);
    let key = key_of("k");
    assert!(redis.hit(&key, &q, 1).await.unwrap().allowed);
    let mut admin = client_conn(&server.url()).await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"][..])
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(killed >= 1);
    // The hit on the killed connection may fail; the breaker stays closed,
    // so the next ones reach Redis (a 30 s pause would refuse them all).
    until_answered(&redis, &key, &q, Duration::from_secs(5), |error| {
        let message = error.to_string();
        assert!(!message.contains("without a round trip"), "{message}");
    })
    .await;
}

/// While Redis cannot be reached, hits fail at once with the circuit
/// breaker's error (no round trip, no timeout to wait for), and after its
/// pause a test hit finds the server back.
#[tokio::test]
async fn hits_fail_at_once_while_redis_is_unreachable() {
    let Some(mut server) = Server::start_or_skip(&[]).await else {
        return;
    };
    let redis = RedisBackend::builder(server.url())
        .prefix(unique("breaker"))
        .timeout(Duration::from_millis(300))
        .circuit_breaker(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let q = quota("1000000/min", Strategy::Gcra);
    let key = key_of("k");
    assert!(redis.hit(&key, &q, 1).await.unwrap().allowed);
    server.kill();
    // The first hits find out (a lost connection, then a refusal or a
    // timeout while the client reconnects)...
    let mut found_out = 0;
    loop {
        let error = redis.hit(&key, &q, 1).await.unwrap_err();
        if error.to_string().contains("without a round trip") {
            break;
        }
        found_out += 1;
        assert!(found_out <= 3, "the breaker never opened: {error}");
    }
    // ...and then they fail at once, naming the cause and the setting.
    for _ in 0..3 {
        let error = redis.hit(&key, &q, 1).await.unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(&error, Error::Backend(backend) if backend.is_known_outage()),
            "{message}"
        );
        assert!(message.contains("without a round trip"), "{message}");
        assert!(message.contains("circuit_breaker"), "{message}");
        assert!(
            !message.contains("(traffik backend error"),
            "nested: {message}"
        );
    }
    // Back: after the pause a test hit gets through, and so do the others.
    server.restart().await;
    until_answered(&redis, &key, &q, Duration::from_secs(10), |_| {}).await;
    assert!(redis.hit(&key, &q, 1).await.unwrap().allowed);
}

/// `circuit_breaker(Duration::ZERO)`: every hit asks Redis, as before.
#[tokio::test]
async fn a_zero_circuit_breaker_sends_every_hit_to_redis() {
    let Some(mut server) = Server::start_or_skip(&[]).await else {
        return;
    };
    let redis = RedisBackend::builder(server.url())
        .prefix(unique("no-breaker"))
        .timeout(Duration::from_millis(300))
        .circuit_breaker(Duration::ZERO)
        .build()
        .await
        .unwrap();
    let q = quota("1000000/min", Strategy::Gcra);
    let key = key_of("k");
    assert!(redis.hit(&key, &q, 1).await.unwrap().allowed);
    server.kill();
    for _ in 0..3 {
        let error = redis.hit(&key, &q, 1).await.unwrap_err();
        assert!(
            !error.to_string().contains("without a round trip"),
            "{error}"
        );
    }
}

/// A client-made long identity (300 KB) is counted exactly, under a short
/// stored key: Redis holds a digest, not the client's bytes.
#[tokio::test]
async fn long_identities_are_counted_under_short_keys() {
    let Some(redis) = backend("long-keys").await else {
        return;
    };
    let q = quota("2/min", Strategy::FixedWindow);
    let identities = ['a', 'b'].map(|fill| fill.to_string().repeat(300_000));
    let key = |identity| Key::new("api", identity, Scope::http(&http::Method::GET, "/"));
    for identity in &identities {
        assert!(redis.hit(&key(identity), &q, 1).await.unwrap().allowed);
        assert!(redis.hit(&key(identity), &q, 1).await.unwrap().allowed);
        assert!(
            !redis.hit(&key(identity), &q, 1).await.unwrap().allowed,
            "{}",
            &identity[..1]
        );
    }
    let stored = redis.storage_key(
        &key(&identities[0]).text(redis.prefix()),
        Strategy::FixedWindow,
    );
    assert!(stored.len() < 300, "{}", stored.len());
    let mut conn = client_conn(&redis_url()).await;
    let exists: bool = redis::cmd("EXISTS")
        .arg(&stored)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(exists, "{stored}");
    redis.reset().await.unwrap();
}

// ---------------------------------------------------------------- deny cache

#[tokio::test]
async fn the_deny_cache_spares_round_trips_until_retry_after() {
    let Some(server) = Server::start_or_skip(&[]).await else {
        return;
    };
    let url = server.url();
    let cached = RedisBackend::builder(url.clone())
        .prefix(unique("deny"))
        .deny_cache(true)
        .build()
        .await
        .unwrap();
    let q = quota("2/500ms", Strategy::FixedWindow);
    let key = key_of("k");
    let before = evalsha_calls(&url).await;
    assert!(cached.hit(&key, &q, 1).await.unwrap().allowed);
    assert!(cached.hit(&key, &q, 1).await.unwrap().allowed);
    let denied = cached.hit(&key, &q, 1).await.unwrap();
    assert!(!denied.allowed);
    assert_eq!(evalsha_calls(&url).await - before, 3);
    // Denied locally, with retry_after counting down.
    let mut previous = denied.retry_after;
    for _ in 0..50 {
        let again = cached.hit(&key, &q, 1).await.unwrap();
        assert!(!again.allowed);
        assert!(again.retry_after <= previous);
        previous = again.retry_after;
    }
    assert_eq!(evalsha_calls(&url).await - before, 3, "answered locally");
    // Another cost or another key still asks Redis.
    assert!(!cached.hit(&key, &q, 2).await.unwrap().allowed);
    assert!(cached.hit(&key_of("k2"), &q, 1).await.unwrap().allowed);
    assert_eq!(evalsha_calls(&url).await - before, 5);
    // After retry_after, the key is allowed again (asked to Redis).
    tokio::time::sleep(denied.retry_after + Duration::from_millis(10)).await;
    assert!(cached.hit(&key, &q, 1).await.unwrap().allowed);
    assert_eq!(evalsha_calls(&url).await - before, 6);
    // reset() forgets cached denials.
    cached.hit(&key, &q, 1).await.unwrap();
    assert!(!cached.hit(&key, &q, 1).await.unwrap().allowed);
    cached.reset().await.unwrap();
    assert!(cached.hit(&key, &q, 1).await.unwrap().allowed);

    // Without the cache (the default), every denial is a round trip.
    let plain = RedisBackend::builder(url.clone())
        .prefix(unique("deny-off"))
        .build()
        .await
        .unwrap();
    let key = key_of("k");
    let before = evalsha_calls(&url).await;
    for _ in 0..10 {
        plain.hit(&key, &q, 1).await.unwrap();
    }
    assert_eq!(evalsha_calls(&url).await - before, 10);
}

// ---------------------------------------------------------------- ACL

#[tokio::test]
async fn the_documented_acl_is_enough() {
    let Some(server) = Server::start_or_skip(&[]).await else {
        return;
    };
    let mut admin = client_conn(&server.url()).await;
    let prefix = unique("acl");
    let mut setuser = redis::cmd("ACL");
    setuser
        .arg("SETUSER")
        .arg("traffik")
        .arg("on")
        .arg(">secret")
        .arg("resetkeys")
        .arg(format!("~{prefix}:*"))
        .arg("resetchannels")
        .arg("-@all");
    for command in redis_common::readme_acl().0 {
        setuser.arg(command);
    }
    let _: () = setuser.query_async(&mut admin).await.unwrap();
    // SCRIPT LOAD needs the script flushed to prove NOSCRIPT recovery too.
    let url = format!("redis://traffik:secret@127.0.0.1:{}", server.port);
    let redis = RedisBackend::builder(url.clone())
        .prefix(prefix.clone())
        .persistent(false)
        .build()
        .await
        .unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut admin)
        .await
        .unwrap();
    for strategy in STRATEGIES {
        let q = quota("2/min", strategy);
        let key = Key::new("u", strategy.name(), Scope::shared());
        assert!(redis.hit(&key, &q, 1).await.unwrap().allowed, "{strategy}");
        assert!(redis.hit(&key, &q, 1).await.unwrap().allowed, "{strategy}");
        assert!(!redis.hit(&key, &q, 1).await.unwrap().allowed, "{strategy}");
        assert!(
            !peek(&redis, &key, &q, 1).await.unwrap().allowed,
            "{strategy}"
        );
        // Several rates, and a refund.
        let quotas = [quota("2/min", strategy), quota("5/h", strategy)];
        let key = Key::new("several", strategy.name(), Scope::shared());
        let hit = ThrottleBackend::decide(&redis, &key, &quotas, 1, Op::Hit)
            .await
            .unwrap();
        assert!(hit.binding().allowed, "{strategy}");
        let refund = Op::Refund { at: hit.at() };
        ThrottleBackend::decide(&redis, &key, &quotas, 1, refund)
            .await
            .unwrap();
    }
    // In-flight places: taken, renewed, given back.
    let key = Key::new("places", "client", Scope::shared());
    let lease = Duration::from_secs(30);
    let taken = redis.acquire(&key, 7, 1, lease).await.unwrap();
    assert!(taken.binding().allowed);
    redis.renew(&key, 7, lease).await.unwrap();
    redis.release(&key, 7).await.unwrap();
    redis.reset().await.unwrap();
    redis.close().await.unwrap();
    // Nothing outside the prefix is reachable for this user.
    let outside = RedisBackend::builder(url)
        .prefix(format!("{prefix}-other"))
        .build()
        .await
        .unwrap();
    let error = outside
        .hit(&key_of("k"), &quota("2/min", Strategy::Gcra), 1)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Backend(_)), "{error}");
}
