//! A minimal Axum server for load tests (`scripts/load.sh`): `GET /hello`,
//! with or without a traffik `ThrottleLayer` (in-memory, per client IP, a
//! limit no load test reaches), so that a load generator measures the
//! layer's overhead rather than 429s. `--layer governor` serves the same app
//! behind tower_governor's `GovernorLayer` instead, for comparison.
//!
//! ```sh
//! cargo run -p traffik-benches --release --example load_server -- --layer traffik   # or: none, governor
//! PORT=3001 cargo run -p traffik-benches --release --example load_server -- --layer none
//! ```
//!
//! `--threads N` sets the Tokio worker threads (default: the number of CPUs).

use std::net::SocketAddr;

use axum::{routing::get, Router};
use traffik::backend::InMemoryBackend;
use traffik::{HttpThrottle, MiddlewareThrottle, ThrottleLayer};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let layer = arg("--layer").unwrap_or_else(|| "traffik".to_owned());
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = arg("--threads").and_then(|t| t.parse().ok()) {
        runtime.worker_threads(threads);
    }
    let runtime = runtime.enable_all().build()?;

    let app = Router::new().route("/hello", get(|| async { "Hello, world!\n" }));
    let app = match layer.as_str() {
        "none" => app,
        "traffik" => {
            let throttle = HttpThrottle::builder()
                .uid("load")
                .rate("1000000000/s")
                .build()?;
            app.layer(
                ThrottleLayer::new(InMemoryBackend::new()).rule(MiddlewareThrottle::new(throttle)),
            )
        }
        // The peer, for scripts/load.sh PEER=governor: a per-IP limit never
        // reached (1 per ns, burst 2^32 - 1).
        "governor" => {
            let config = tower_governor::governor::GovernorConfigBuilder::default()
                .per_nanosecond(1)
                .burst_size(u32::MAX)
                .finish()
                .ok_or("tower_governor rejected its configuration")?;
            app.layer(tower_governor::GovernorLayer::new(config))
        }
        other => {
            return Err(format!("--layer {other:?}: expected traffik, governor or none").into())
        }
    };

    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!(
            "load_server (layer: {layer}) listening on http://{}",
            listener.local_addr()?
        );
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await?;
        Ok(())
    })
}
