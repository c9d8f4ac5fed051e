//! Global rules with `ThrottleLayer` (Traffik's `ThrottleMiddleware`): by
//! method, by path, by an async hook, and combined. Every matching rule is
//! hit in order; the first that throttles answers.
//!
//! ```sh
//! cargo run --example middleware_rules -- --once
//! ```

mod common;

use axum::{routing::get, Router};
use http::Method;
use traffik::backend::InMemoryBackend;
use traffik::{HttpThrottle, MiddlewareThrottle, ThrottleLayer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let memory = InMemoryBackend::new();

    let writes = HttpThrottle::builder()
        .uid("writes")
        .rate("2/min")
        .build()?;
    let api = HttpThrottle::builder().uid("api").rate("4/min").build()?;
    let anonymous = HttpThrottle::builder()
        .uid("anonymous")
        .rate("1/min")
        .build()?;
    let admin_writes = HttpThrottle::builder()
        .uid("admin-writes")
        .rate("1/min")
        .build()?;

    let layer = ThrottleLayer::new(memory.clone())
        // By method: every write, on any path.
        .rule(MiddlewareThrottle::new(writes).methods([Method::POST, Method::PUT, Method::DELETE]))
        // By path: a regex matched at the start of the path.
        .rule(MiddlewareThrottle::new(api).path(r"/api/"))
        // By hook: an async predicate over the request head, checked last.
        .rule(MiddlewareThrottle::new(anonymous).path(r"/api/").hook(
            |parts: &http::request::Parts| {
                let authed = parts.headers.contains_key(http::header::AUTHORIZATION);
                async move { !authed }
            },
        ))
        // Combined: DELETE under /api/admin/ only.
        .rule(
            MiddlewareThrottle::new(admin_writes)
                .methods(["delete"])
                .path(r"/api/admin/"),
        );

    let app = Router::new()
        .route(
            "/api/items",
            get(|| async { "items" }).post(|| async { "created" }),
        )
        .route(
            "/api/admin/users",
            get(|| async { "users" }).delete(|| async { "deleted" }),
        )
        .route("/health", get(|| async { "ok" }))
        .layer(layer);

    let server = common::serve(app, 3002).await?;
    let addr = server.addr;
    let show = &["retry-after"][..];
    let auth = &[("authorization", "Bearer demo")][..];
    common::burst(
        addr,
        "GET /health x3: no rule matches",
        3,
        "GET",
        "/health",
        &[],
        show,
    )
    .await?;
    common::burst(
        addr,
        "GET /api/items x2 without Authorization: the hook rule allows 1/min",
        2,
        "GET",
        "/api/items",
        &[],
        show,
    )
    .await?;
    common::burst(
        addr,
        "GET /api/items x4 with Authorization: the path rule allows 4/min (1 already used)",
        4,
        "GET",
        "/api/items",
        auth,
        show,
    )
    .await?;
    common::burst(addr, "POST /api/items x3: the writes rule allows 2/min (the /api/ counter is per method and route, so POST has its own)", 3, "POST", "/api/items", auth, show).await?;
    server.finish().await
}
