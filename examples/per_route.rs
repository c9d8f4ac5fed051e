//! Per-route throttles (FastAPI's `Depends(throttle)` / `@throttled`), and a
//! throttle called from inside a handler (Starlette's `await throttle(request)`).
//!
//! ```sh
//! cargo run --example per_route -- --once
//! ```

mod common;

use axum::{extract::Request, routing::get, Router};
use traffik::backend::InMemoryBackend;
use traffik::{HttpThrottle, Strategy};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let memory = InMemoryBackend::new();

    // Two routes, each with its own limit and strategy; counters are per route.
    let search = HttpThrottle::builder()
        .uid("search")
        .limit(2)
        .seconds(10)
        .strategy(Strategy::SlidingWindowLog)
        .backend(memory.clone())
        .build()?;
    let profile = HttpThrottle::builder()
        .uid("profile")
        .rate("3/min")
        .strategy(Strategy::FixedWindow)
        .backend(memory.clone())
        .build()?;

    // One counter for several routes: `shared_across_routes`.
    let reports = HttpThrottle::builder()
        .uid("reports")
        .rate("2/min")
        .shared_across_routes()
        .backend(memory.clone())
        .build()?;

    // Inside a handler: `hit(&req).await?` answers 429 through `traffik::Error`.
    let upload = HttpThrottle::builder()
        .uid("upload")
        .rate("1/min")
        .cost(1)
        .backend(memory.clone())
        .build()?;

    let app = Router::new()
        .route(
            "/search",
            get(|| async { "results" }).route_layer(search.layer()),
        )
        .route(
            "/users/{id}",
            get(|| async { "a profile" }).route_layer(profile.layer()),
        )
        .route(
            "/reports/daily",
            get(|| async { "daily" }).route_layer(reports.layer()),
        )
        .route(
            "/reports/weekly",
            get(|| async { "weekly" }).route_layer(reports.layer()),
        )
        .route(
            "/upload",
            get(move |req: Request| {
                let upload = upload.clone();
                async move {
                    let decision = upload.hit(&req).await?;
                    Ok::<_, traffik::Error>(format!("uploaded ({} left)", decision.remaining))
                }
            }),
        );

    let server = common::serve(app, 3001).await?;
    let addr = server.addr;
    let show = &["retry-after"][..];
    common::burst(
        addr,
        "GET /search x3 (2 per 10 s, sliding log):",
        3,
        "GET",
        "/search",
        &[],
        show,
    )
    .await?;
    common::burst(
        addr,
        "GET /users/1 x2 then /users/2 x2 share the route /users/{id} (3/min):",
        2,
        "GET",
        "/users/1",
        &[],
        show,
    )
    .await?;
    common::burst(addr, "", 2, "GET", "/users/2", &[], show).await?;
    common::burst(
        addr,
        "GET /reports/daily x1 then /reports/weekly x2 share one counter (2/min):",
        1,
        "GET",
        "/reports/daily",
        &[],
        show,
    )
    .await?;
    common::burst(addr, "", 2, "GET", "/reports/weekly", &[], show).await?;
    common::burst(
        addr,
        "GET /upload x2, throttled inside the handler (1/min):",
        2,
        "GET",
        "/upload",
        &[],
        show,
    )
    .await?;
    server.finish().await
}
