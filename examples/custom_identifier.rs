//! Custom identifiers: throttle per user (from a header) instead of per IP,
//! and exempt some callers with `Identity::Unlimited`.
//!
//! ```sh
//! cargo run --example custom_identifier -- --once
//! ```

mod common;

use axum::{routing::get, Router};
use traffik::backend::InMemoryBackend;
use traffik::{HttpThrottle, Identity};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let memory = InMemoryBackend::new();

    let per_user = HttpThrottle::builder()
        .uid("per-user")
        .rate("2/min")
        .backend(memory.clone())
        .identifier(|parts: &http::request::Parts| {
            // Read what you need before `async move`: the future is 'static.
            let user = parts
                .headers
                .get("x-user")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            async move {
                match user.as_deref() {
                    // Internal callers are never throttled and touch no storage.
                    Some("internal-service") => Identity::Unlimited,
                    Some(user) => Identity::key(format!("user:{user}")),
                    None => Identity::key("anonymous"),
                }
            }
        })
        .build()?;

    let app = Router::new().route(
        "/data",
        get(|| async { "data" }).route_layer(per_user.layer()),
    );

    let server = common::serve(app, 3003).await?;
    let addr = server.addr;
    let show = &["retry-after"][..];
    common::burst(
        addr,
        "alice x3 (2/min per user):",
        3,
        "GET",
        "/data",
        &[("x-user", "alice")],
        show,
    )
    .await?;
    common::burst(
        addr,
        "bob x2: his own counter",
        2,
        "GET",
        "/data",
        &[("x-user", "bob")],
        show,
    )
    .await?;
    common::burst(
        addr,
        "internal-service x5: exempt",
        5,
        "GET",
        "/data",
        &[("x-user", "internal-service")],
        show,
    )
    .await?;
    server.finish().await
}
