//! Custom 429 responses: a JSON body for one throttle, and a layer-wide
//! fallback for the others.
//!
//! ```sh
//! cargo run --example custom_response -- --once
//! ```

mod common;

use axum::{response::IntoResponse, routing::get, Json, Router};
use http::StatusCode;
use traffik::backend::InMemoryBackend;
use traffik::{HttpThrottle, MiddlewareThrottle, ThrottleLayer, Throttled};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let memory = InMemoryBackend::new();

    // This throttle answers with JSON; traffik adds Retry-After and
    // Cache-Control: no-store if the response lacks them.
    let json = HttpThrottle::builder()
        .uid("json")
        .rate("1/min")
        .on_throttled(|t: &Throttled| {
            (StatusCode::TOO_MANY_REQUESTS, Json(serde_json_like(t))).into_response()
        })
        .build()?;

    // This one has no response of its own: the layer's fallback applies.
    let plain = HttpThrottle::builder().uid("plain").rate("1/min").build()?;

    let layer = ThrottleLayer::new(memory.clone())
        .rule(MiddlewareThrottle::new(json).path("/json"))
        .rule(MiddlewareThrottle::new(plain).path("/plain"))
        .on_throttled(|t: &Throttled| {
            (
                StatusCode::TOO_MANY_REQUESTS,
                format!("Easy there! Come back in {}s.", t.retry_after_secs()),
            )
                .into_response()
        });

    let app = Router::new()
        .route("/json", get(|| async { "json ok" }))
        .route("/plain", get(|| async { "plain ok" }))
        .layer(layer);

    let server = common::serve(app, 3004).await?;
    let addr = server.addr;
    let show = &["content-type", "retry-after"][..];
    common::burst(addr, "GET /json x2:", 2, "GET", "/json", &[], show).await?;
    common::burst(
        addr,
        "GET /plain x2 (layer fallback):",
        2,
        "GET",
        "/plain",
        &[],
        show,
    )
    .await?;
    server.finish().await
}

/// The JSON body, built with axum's `Json` over a map (no serde derive needed).
fn serde_json_like(t: &Throttled) -> std::collections::BTreeMap<&'static str, String> {
    std::collections::BTreeMap::from([
        ("error", "rate_limited".to_owned()),
        ("throttle", t.throttle().to_owned()),
        ("retry_after", t.retry_after_secs().to_string()),
    ])
}
