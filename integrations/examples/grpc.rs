//! A throttled tonic service: tonic-health's `Health` service (no code
//! generation) behind a `ThrottleLayer` on the whole server, 2 calls a
//! minute per client. It calls itself three times with a real tonic client:
//! the third call is RESOURCE_EXHAUSTED, with `retry-after` in its metadata.
//!
//! ```sh
//! cargo run -p traffik-integrations --example grpc            # demo, then keeps serving on PORT (default 50051)
//! cargo run -p traffik-integrations --example grpc -- --once  # demo on a free port, then exits
//! ```

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use traffik::backend::InMemoryBackend;
use traffik::{HttpThrottle, MiddlewareThrottle, RateLimitHeaders, ThrottleLayer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let once = std::env::args().any(|a| a == "--once");
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(if once { 0 } else { 50051 });

    // Every call counts per client and RPC (the route is the RPC's path,
    // `/grpc.health.v1.Health/Check`); the client address comes from
    // tonic's own connect info.
    let calls = HttpThrottle::builder()
        .uid("grpc-calls")
        .rate("2/min")
        .headers(RateLimitHeaders::Ietf)
        .build()?;
    let layer = ThrottleLayer::new(InMemoryBackend::new()).rule(MiddlewareThrottle::new(calls));

    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    println!("traffik gRPC example serving grpc.health.v1.Health on http://{addr}");
    let server = tokio::spawn(async move {
        Server::builder()
            .layer(layer)
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
    });

    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = HealthClient::new(channel);
    println!("\n3 x Health/Check (limit: 2 per minute):");
    for i in 1..=3 {
        let request = HealthCheckRequest {
            service: String::new(),
        };
        match client.check(request).await {
            Ok(response) => println!(
                "{i}  OK      ratelimit: {:?}",
                response.metadata().get("ratelimit")
            ),
            Err(status) => println!(
                "{i}  {:?}  {:?}  retry-after: {:?}",
                status.code(),
                status.message(),
                status.metadata().get("retry-after")
            ),
        }
    }
    if once {
        return Ok(());
    }
    println!("\nStill serving on http://{addr} (Ctrl-C to stop).");
    server.await??;
    Ok(())
}
