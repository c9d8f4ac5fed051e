//! Quick start: an Axum server with in-memory throttles, which fires a burst
//! of requests at itself and prints what came back.
//!
//! ```sh
//! cargo run --example quickstart            # demo, then keeps serving on PORT (default 3000)
//! cargo run --example quickstart -- --once  # demo, then exits
//! ```

mod common;

use axum::{routing::get, Router};
use http::Method;
use traffik::backend::InMemoryBackend;
use traffik::{HttpThrottle, MiddlewareThrottle, RateLimitHeaders, ThrottleLayer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let memory = InMemoryBackend::new();

    // 3 requests per 10 seconds per client on /hello (a per-route layer).
    let hello = HttpThrottle::builder()
        .uid("hello")
        .limit(3)
        .seconds(10)
        .headers(RateLimitHeaders::Ietf)
        .backend(memory.clone())
        .build()?;

    // A global rule: at most 2 writes per minute per client, on any route
    // (without .shared_across_routes(), per route and method).
    let writes = HttpThrottle::builder()
        .uid("writes")
        .rate("2/min")
        .shared_across_routes()
        .build()?;
    let layer = ThrottleLayer::new(memory.clone()).rule(MiddlewareThrottle::new(writes).methods([
        Method::POST,
        Method::PUT,
        Method::DELETE,
    ]));

    let app = Router::new()
        .route(
            "/hello",
            get(|| async { "Hello, world!" }).route_layer(hello.layer()),
        )
        .route(
            "/items",
            get(|| async { "[]" }).post(|| async { "created" }),
        )
        .layer(layer);

    let server = common::serve(app, 3000).await?;
    let hello = common::burst(
        server.addr,
        "Burst of 5 x GET /hello (limit: 3 per 10 seconds):",
        5,
        "GET",
        "/hello",
        &[],
        &["retry-after", "ratelimit"],
    )
    .await?;
    common::expect_statuses("GET /hello", &hello, &[200, 200, 200, 429, 429])?;
    let writes = common::burst(
        server.addr,
        "Burst of 3 x POST /items (rule: 2 writes per minute):",
        3,
        "POST",
        "/items",
        &[],
        &["retry-after"],
    )
    .await?;
    common::expect_statuses("POST /items", &writes, &[200, 200, 429])?;
    server.finish().await
}
