//! Redis memory and the backend (`cargo test --features redis`): how many
//! bytes a counter takes per strategy, the warning at build when Redis may
//! evict counters, and a Redis whose memory is full.
//!
//! Every test starts its own `redis-server` on a free loopback port. Without
//! `redis-server` they print `SKIPPED: ...` and return, except under
//! `CI=true`, where they fail.
#![cfg(feature = "redis")]

mod event_recorder;
mod redis_servers;

use std::fmt::Write as _;

use event_recorder::Recorder;
use redis_servers::{info_field, Server};
use tracing::Level;
use traffik::backend::RedisBackend;
use traffik::{Error, FailureMode, HttpThrottle, Identity, Strategy};

/// Every strategy (`Strategy` is `#[non_exhaustive]` and keeps no public list).
const STRATEGIES: [Strategy; 5] = [
    Strategy::TokenBucket,
    Strategy::FixedWindow,
    Strategy::SlidingWindowCounter,
    Strategy::SlidingWindowLog,
    Strategy::Gcra,
];

async fn server(args: &[&str]) -> Option<Server> {
    if !redis_servers::installed() {
        return None;
    }
    Some(Server::start(args).await)
}

/// A throttle on `redis` whose identity is the `x-key` header.
fn throttle(redis: &RedisBackend, uid: &str, rate: &str, strategy: Strategy) -> HttpThrottle {
    HttpThrottle::builder()
        .uid(uid)
        .rate(rate)
        .strategy(strategy)
        .failure_mode(FailureMode::Closed)
        .shared_across_routes()
        .backend(redis.clone())
        .identifier(|parts: &http::request::Parts| {
            let key = parts
                .headers
                .get("x-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned();
            async move { Identity::key(key) }
        })
        .build()
        .unwrap()
}

/// `Ok(allowed)`, or the backend's error.
async fn hit(throttle: &HttpThrottle, identity: &str) -> Result<bool, String> {
    let request = http::Request::builder()
        .uri("/")
        .header("x-key", identity)
        .body(())
        .unwrap();
    match throttle.hit(&request).await {
        Ok(decision) => Ok(decision.allowed),
        Err(Error::Throttled(_)) => Ok(false),
        Err(error) => {
            // The error and its causes (Redis's own answer among them).
            let mut text = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                let _ = write!(text, ": {cause}");
                source = cause.source();
            }
            Err(text)
        }
    }
}

async fn used_memory(conn: &mut redis::aio::MultiplexedConnection) -> i64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(conn)
        .await
        .unwrap();
    info_field(&info, "used_memory").unwrap().parse().unwrap()
}

/// Bytes per counter: `MEMORY USAGE` of one key, and `used_memory` grown by
/// 5,000 keys (which counts Redis's own tables too), per strategy, for keys
/// of the form `traffik:{api:203.0.19.7:http:*}:tb`; the sliding window
/// log once per logged hit. Printed (`--nocapture`) for the sizing guide,
/// and bounded loosely.
#[tokio::test]
async fn bytes_per_counter_by_strategy() {
    let Some(server) = server(&[]).await else {
        return;
    };
    let mut conn = server.conn().await;
    let redis = RedisBackend::connect(server.url()).await.unwrap();
    const KEYS: usize = 5_000;
    let identity = |i: usize| format!("203.0.{}.{}", i / 256, i % 256);
    println!("strategy                 MEMORY USAGE   used_memory per key");
    for strategy in STRATEGIES {
        // A day: no key expires during the test (a key whose state is back
        // to a fresh one's expires).
        let throttle = throttle(&redis, "api", "1000/day", strategy);
        let before = used_memory(&mut conn).await;
        for i in 0..KEYS {
            assert!(hit(&throttle, &identity(i)).await.unwrap());
        }
        let per_key = (used_memory(&mut conn).await - before) / KEYS as i64;
        let key = redis.storage_key(&format!("traffik:api:{}:http:*", identity(7)), strategy);
        let usage: i64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        println!(
            "{:<24} {usage:>12} B {per_key:>17} B   ({key})",
            format!("{strategy:?}")
        );
        assert!(usage <= 200, "{strategy:?}: {usage} bytes");
        assert!(per_key <= 320, "{strategy:?}: {per_key} bytes per key");
    }
    // The sliding window log keeps one entry per hit of the period.
    for limit in [10u64, 100, 1_000] {
        let throttle = throttle(
            &redis,
            "api",
            &format!("{limit}/hour"),
            Strategy::SlidingWindowLog,
        );
        let identity = format!("log-{limit}");
        for _ in 0..limit {
            assert!(hit(&throttle, &identity).await.unwrap());
        }
        let key = redis.storage_key(
            &format!("traffik:api:{identity}:http:*"),
            Strategy::SlidingWindowLog,
        );
        let usage: i64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut conn)
            .await
            .unwrap();
        println!(
            "SlidingWindowLog, {limit:>5} hits logged: {usage:>7} B ({} B per hit)",
            usage / limit as i64
        );
        assert!(usage as u64 <= 100 + 120 * limit, "{limit}: {usage} bytes");
    }
}

// ---------------------------------------------------------------- warning

/// The warnings about eviction logged while a backend is built on a server
/// started with `args` (the current-thread runtime of `#[tokio::test]`
/// polls the build on this thread).
async fn eviction_warnings(args: &[&str]) -> Option<Vec<String>> {
    let server = server(args).await?;
    let (recorder, guard) = Recorder::install();
    let redis = RedisBackend::connect(server.url()).await.unwrap();
    // A hit after the build: the warning is not repeated.
    let throttle = throttle(
        &redis,
        &redis_servers::unique("warn"),
        "5/min",
        Strategy::Gcra,
    );
    assert!(hit(&throttle, "a").await.unwrap());
    drop(guard);
    Some(
        recorder
            .with("evict")
            .into_iter()
            .map(|(level, text)| {
                assert_eq!(level, Level::WARN, "{text}");
                text
            })
            .collect(),
    )
}

#[tokio::test]
async fn an_evicting_memory_policy_is_warned_about_once_at_build() {
    for policy in [
        "allkeys-lru",
        "allkeys-lfu",
        "allkeys-random",
        "volatile-lru",
        "volatile-ttl",
    ] {
        let Some(warnings) =
            eviction_warnings(&["--maxmemory", "64mb", "--maxmemory-policy", policy]).await
        else {
            return;
        };
        assert_eq!(warnings.len(), 1, "{policy}: {warnings:?}");
        assert!(warnings[0].contains(policy), "{}", warnings[0]);
        assert!(warnings[0].contains("noeviction"), "{}", warnings[0]);
    }
    // No warning: no eviction (noeviction, or no maxmemory).
    for args in [
        &["--maxmemory", "64mb", "--maxmemory-policy", "noeviction"][..],
        &["--maxmemory", "0", "--maxmemory-policy", "allkeys-lru"][..],
    ] {
        let Some(warnings) = eviction_warnings(args).await else {
            return;
        };
        assert!(warnings.is_empty(), "{args:?}: {warnings:?}");
    }
}

#[tokio::test]
async fn a_refused_config_get_is_ignored() {
    let Some(server) = server(&["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]).await
    else {
        return;
    };
    let mut conn = server.conn().await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("no-config")
        .arg("on")
        .arg(">secret")
        .arg("~*")
        .arg("+@all")
        .arg("-config")
        .query_async(&mut conn)
        .await
        .unwrap();
    let url = server
        .url()
        .replacen("redis://", "redis://no-config:secret@", 1);
    let redis = RedisBackend::connect(url).await.unwrap();
    let throttle = throttle(&redis, "no-config", "5/min", Strategy::TokenBucket);
    assert!(hit(&throttle, "a").await.unwrap());
}

// ---------------------------------------------------------------- full

/// A Redis past its `maxmemory` with `noeviction` refuses a script's writes
/// that may grow memory (OOM): a hit on a new key fails (the failure mode
/// decides), for every strategy, but a key at its limit keeps being denied,
/// because a denial writes nothing.
#[tokio::test]
async fn a_full_redis_without_eviction_keeps_denying_keys_at_their_limit() {
    let Some(server) = server(&["--maxmemory-policy", "noeviction"]).await else {
        return;
    };
    let mut conn = server.conn().await;
    let redis = RedisBackend::connect(server.url()).await.unwrap();
    const LIMIT: usize = 3;
    let throttles: Vec<(Strategy, HttpThrottle)> = STRATEGIES
        .into_iter()
        .map(|strategy| {
            let uid = format!("full-{strategy:?}");
            (strategy, throttle(&redis, &uid, "3/hour", strategy))
        })
        .collect();
    for (strategy, throttle) in &throttles {
        for i in 0..10 {
            let identity = format!("full-{i}");
            for n in 0..=LIMIT {
                let allowed = hit(throttle, &identity).await.unwrap();
                assert_eq!(allowed, n < LIMIT, "{strategy:?}");
            }
        }
    }
    // Other keys, then a maxmemory below what is used: full.
    let filler = "x".repeat(10_000);
    for i in 0..200 {
        let _: () = redis::cmd("SET")
            .arg(format!("filler:{i}"))
            .arg(&filler)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let used = used_memory(&mut conn).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used - 1_000_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let refused: redis::RedisResult<()> = redis::cmd("SET")
        .arg("one-more")
        .arg("x")
        .query_async(&mut conn)
        .await;
    assert!(
        refused.is_err_and(|e| e.to_string().contains("OOM")),
        "the memory is full"
    );

    let mut failures = Vec::new();
    for (strategy, throttle) in &throttles {
        // A new key needs room: Redis refuses the script's first write.
        match hit(throttle, "fresh").await {
            Err(error) if error.to_string().contains("OOM") => {}
            other => failures.push(format!("{strategy:?}, a new key: {other:?}")),
        }
        // Keys at their limit are still denied, not failed.
        for i in 0..10 {
            match hit(throttle, &format!("full-{i}")).await {
                Ok(false) => {}
                other => {
                    failures.push(format!("{strategy:?}: {other:?}"));
                    break;
                }
            }
        }
        println!(
            "{strategy:?}: keys at their limit on a full Redis: {}",
            if failures
                .last()
                .is_some_and(|f| f.starts_with(&format!("{strategy:?}:")))
            {
                "FAILED"
            } else {
                "denied"
            }
        );
    }
    assert!(failures.is_empty(), "on a full Redis: {failures:#?}");
}
