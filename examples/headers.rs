//! Rate-limit headers: the IETF draft-10 `RateLimit-Policy` / `RateLimit`
//! structured fields, or the legacy `X-RateLimit-*` headers, from a route
//! layer or from a handler that counts its own hits (`hit_with_headers`).
//!
//! ```sh
//! cargo run --example headers -- --once
//! ```

mod common;

use axum::{extract::Request, routing::get, Router};
use traffik::backend::InMemoryBackend;
use traffik::{HttpThrottle, RateLimitHeaders, Strategy};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let memory = InMemoryBackend::new();
    let ietf = HttpThrottle::builder()
        .uid("ietf")
        .rate("3/min")
        .headers(RateLimitHeaders::Ietf)
        .backend(memory.clone())
        .build()?;
    let legacy = HttpThrottle::builder()
        .uid("legacy")
        .rate("3/min")
        .strategy(Strategy::FixedWindow)
        .headers(RateLimitHeaders::Legacy)
        .backend(memory.clone())
        .build()?;
    // Counted inside the handler: the report puts the same headers on its 200.
    let in_handler = HttpThrottle::builder()
        .uid("in-handler")
        .rate("3/min")
        .headers(RateLimitHeaders::Ietf)
        .backend(memory.clone())
        .build()?;

    let app = Router::new()
        .route("/ietf", get(|| async { "ok" }).route_layer(ietf.layer()))
        .route(
            "/legacy",
            get(|| async { "ok" }).route_layer(legacy.layer()),
        )
        .route(
            "/in-handler",
            get(move |req: Request| {
                let throttle = in_handler.clone();
                async move {
                    let report = throttle.hit_with_headers(&req).await?;
                    Ok::<_, traffik::Error>((report, "ok"))
                }
            }),
        );

    let server = common::serve(app, 3005).await?;
    let addr = server.addr;
    common::burst(
        addr,
        "IETF headers:",
        4,
        "GET",
        "/ietf",
        &[],
        &["ratelimit-policy", "ratelimit"],
    )
    .await?;
    common::burst(
        addr,
        "Legacy headers:",
        4,
        "GET",
        "/legacy",
        &[],
        &[
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ],
    )
    .await?;
    common::burst(
        addr,
        "IETF headers from a handler's hit_with_headers:",
        4,
        "GET",
        "/in-handler",
        &[],
        &["ratelimit-policy", "ratelimit"],
    )
    .await?;
    server.finish().await
}
