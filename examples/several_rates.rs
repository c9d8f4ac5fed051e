//! Several rates on one throttle, decided all or nothing: bursts of at most
//! 3 a second and 5 a minute in all. A request refused by either rate is
//! counted by neither, so a client that keeps hitting the per-minute limit
//! does not also drain its per-second quota.
//!
//! ```sh
//! cargo run --example several_rates -- --once
//! ```

mod common;

use std::time::Duration;

use axum::{routing::get, Router};
use traffik::backend::InMemoryBackend;
use traffik::{HttpThrottle, RateLimitHeaders};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let api = HttpThrottle::builder()
        .uid("api")
        .rates(["3/s", "5/min"])
        .headers(RateLimitHeaders::Ietf)
        .backend(InMemoryBackend::new())
        .build()?;
    let app = Router::new().route("/api", get(|| async { "ok" }).route_layer(api.layer()));

    let server = common::serve(app, 3002).await?;
    let show = &["retry-after", "ratelimit"][..];
    let first = common::burst(
        server.addr,
        "Burst of 4 x GET /api (3/s and 5/min): the per-second rate binds",
        4,
        "GET",
        "/api",
        &[],
        show,
    )
    .await?;
    common::expect_statuses("first burst", &first, &[200, 200, 200, 429])?;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let second = common::burst(
        server.addr,
        "A second later, 4 more: the per-minute rate binds (the refused hit above took no place)",
        4,
        "GET",
        "/api",
        &[],
        show,
    )
    .await?;
    common::expect_statuses("second burst", &second, &[200, 200, 429, 429])?;
    server.finish().await
}
