//! Counting only failed logins: `refund_when(|status| status.is_success())`
//! gives the hit of every successful login back, so a user who signs in
//! often is never throttled, while 3 failed attempts a minute are allowed.
//!
//! ```sh
//! cargo run --example login -- --once
//! ```

mod common;

use axum::http::{HeaderMap, StatusCode};
use axum::{routing::post, Router};
use traffik::backend::InMemoryBackend;
use traffik::HttpThrottle;

async fn login(headers: HeaderMap) -> (StatusCode, &'static str) {
    match headers.get("x-password").map(|v| v.as_bytes()) {
        Some(b"secret") => (StatusCode::OK, "welcome"),
        _ => (StatusCode::UNAUTHORIZED, "wrong password"),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let failed_logins = HttpThrottle::builder()
        .uid("login")
        .rate("3/min")
        .refund_when(|status| status.is_success())
        .backend(InMemoryBackend::new())
        .build()?;
    let app = Router::new().route("/login", post(login).route_layer(failed_logins.layer()));

    let server = common::serve(app, 3003).await?;
    let good = &[("x-password", "secret")][..];
    let bad = &[("x-password", "guess")][..];
    let show = &["retry-after"][..];
    let ok = common::burst(
        server.addr,
        "5 good logins (never counted):",
        5,
        "POST",
        "/login",
        good,
        show,
    )
    .await?;
    common::expect_statuses("good logins", &ok, &[200; 5])?;
    let failed = common::burst(
        server.addr,
        "4 bad logins (3 failed attempts a minute):",
        4,
        "POST",
        "/login",
        bad,
        show,
    )
    .await?;
    common::expect_statuses("bad logins", &failed, &[401, 401, 401, 429])?;
    server.finish().await
}
