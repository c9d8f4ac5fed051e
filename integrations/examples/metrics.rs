//! Metrics (feature `metrics`): traffik's decisions through the `metrics`
//! facade, served as Prometheus text on `/metrics` by
//! `metrics-exporter-prometheus` (without its own HTTP listener: the app
//! serves the text itself).
//!
//! ```sh
//! cargo run -p traffik-integrations --example metrics            # demo, then keeps serving on PORT (default 3000)
//! cargo run -p traffik-integrations --example metrics -- --once  # demo, then exits
//! ```

#[path = "../../examples/common/mod.rs"]
mod common;

use std::time::Duration;

use axum::{routing::get, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use traffik::backend::InMemoryBackend;
use traffik::HttpThrottle;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Install the recorder first: a throttle registers its metrics with the
    // recorder in place at its first decision.
    let prometheus = PrometheusBuilder::new()
        // Buckets make `traffik_backend_seconds` a Prometheus histogram
        // (else it is rendered as a summary).
        .set_buckets_for_metric(
            Matcher::Full(traffik::metrics::BACKEND_SECONDS.to_owned()),
            &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25],
        )?
        .install_recorder()?;
    // Without its HTTP listener the exporter needs its upkeep run by hand.
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });

    let hello = HttpThrottle::builder()
        .uid("hello")
        .rate("3/10s")
        .backend(InMemoryBackend::new())
        .build()?;
    let app = Router::new()
        .route(
            "/hello",
            get(|| async { "Hello, world!" }).route_layer(hello.layer()),
        )
        .route(
            "/metrics",
            get(move || std::future::ready(prometheus.render())),
        );

    let server = common::serve(app, 3000).await?;
    let statuses = common::burst(
        server.addr,
        "Burst of 5 x GET /hello (limit: 3 per 10 seconds):",
        5,
        "GET",
        "/hello",
        &[],
        &[],
    )
    .await?;
    common::expect_statuses("GET /hello", &statuses, &[200, 200, 200, 429, 429])?;
    let scrape = common::request(server.addr, "GET", "/metrics", &[]).await?;
    println!("\nGET /metrics (traffik's lines):");
    for line in scrape.body.lines().filter(|l| l.contains("traffik_")) {
        println!("  {line}");
    }
    if !scrape
        .body
        .contains(r#"traffik_decisions_total{throttle="hello",outcome="throttled"} 2"#)
    {
        return Err("the scrape does not count the 2 throttled requests".into());
    }
    server.finish().await
}
