//! Redis: an Axum app whose throttle counts in Redis, one round trip per
//! decision, so that every instance of the app behind a load balancer shares
//! the same limit.
//!
//! ```sh
//! redis-server --daemonize yes --port 6379 --save "" --appendonly no   # if none is running
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example redis --features redis
//! cargo run --example redis --features redis -- --once                  # demo, then exit
//! ```
//!
//! Run two copies on different ports (`PORT=3001 cargo run ...`) and hit
//! both: the count is shared.

mod common;

use std::time::Duration;

use axum::{routing::get, Router};
use traffik::backend::{Op, RedisBackend, ThrottleBackend};
use traffik::key::{Key, Scope};
use traffik::{FailureMode, HttpThrottle, Quota, RateLimitHeaders, Strategy};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());

    // Connects now (fails within 1 s if no Redis answers). Persistent by
    // default: the counts outlive this process, as they should for a store
    // shared by several instances.
    let redis = RedisBackend::builder(&url)
        .prefix("traffik-example")
        .timeout(Duration::from_millis(250)) // bound on every decision
        .deny_cache(true) // denied clients are answered locally until retry_after
        .build()
        .await?;
    // Start the demo from a clean slate (removes traffik-example:* only).
    redis.reset().await?;

    // 5 requests per 10 seconds per client on /hello, counted in Redis.
    let hello = HttpThrottle::builder()
        .uid("hello")
        .rate("5/10s")
        .strategy(Strategy::SlidingWindowLog)
        .headers(RateLimitHeaders::Ietf)
        // If Redis is down: answer 503 rather than let everyone through.
        .failure_mode(FailureMode::Closed)
        .backend(redis.clone())
        .build()?;

    let app = Router::new().route(
        "/hello",
        get(|| async { "Hello from a Redis-throttled route!" }).route_layer(hello.layer()),
    );
    let server = common::serve(app, 3000).await?;

    common::burst(
        server.addr,
        "Burst of 7 x GET /hello (limit: 5 per 10 seconds, counted in Redis):",
        7,
        "GET",
        "/hello",
        &[],
        &["ratelimit", "retry-after"],
    )
    .await?;

    // Another instance (its own connection) sees the same count.
    let other = RedisBackend::builder(&url)
        .prefix("traffik-example")
        .build()
        .await?;
    // The key of this client on /hello: `{prefix}:hello:127.0.0.1:http:GET:/hello`.
    let key = Key::client(
        "hello",
        [127, 0, 0, 1].into(),
        64,
        Scope::http(&http::Method::GET, "/hello"),
    );
    let text = key.text(other.prefix());
    let quota = Quota::new("5/10s".parse()?, Strategy::SlidingWindowLog)?;
    // A peek: the decision a hit would get, counting nothing.
    let seen = other.decide(&key, &[quota], 1, Op::Peek).await?.binding();
    println!(
        "
Another backend peeks {text} (stored as {}): allowed={} remaining={} retry_after={:?}",
        other.storage_key(&text, Strategy::SlidingWindowLog),
        seen.allowed,
        seen.remaining,
        seen.retry_after,
    );

    server.finish().await
}
