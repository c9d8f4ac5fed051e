//! Quick start: an Axum server with an in-memory throttle, which fires a
//! burst of requests at itself and prints what came back.
//!
//! ```sh
//! cargo run --example quickstart            # demo, then keeps serving on PORT (default 3000)
//! cargo run --example quickstart -- --once  # demo, then exits
//! ```

use std::net::SocketAddr;

use axum::{routing::get, Router};
use http::Method;
use traffik::backend::InMemoryBackend;
use traffik::{HttpThrottle, MiddlewareThrottle, RateLimitHeaders, ThrottleLayer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let memory = InMemoryBackend::new();

    // 3 requests per 10 seconds per client on /hello (per-route layer).
    let hello = HttpThrottle::builder()
        .uid("hello")
        .limit(3)
        .seconds(10)
        .headers(RateLimitHeaders::Ietf)
        .backend(memory.clone())
        .build()?;

    // A global rule: at most 10 writes per minute per client, on any route.
    let writes = HttpThrottle::builder()
        .uid("writes")
        .rate("10/min")
        .build()?;
    let layer = ThrottleLayer::new(memory.clone()).rule(MiddlewareThrottle::new(writes).methods([
        Method::POST,
        Method::PUT,
        Method::DELETE,
    ]));

    let app = Router::new()
        .route(
            "/hello",
            get(|| async { "Hello, world!\n" }).route_layer(hello.layer()),
        )
        .route(
            "/items",
            get(|| async { "[]\n" }).post(|| async { "created\n" }),
        )
        .layer(layer);

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    println!("traffik quickstart listening on http://{addr}");
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });

    demo(addr).await?;

    if std::env::args().any(|a| a == "--once") {
        return Ok(());
    }
    println!("\nStill serving: try `curl -i http://{addr}/hello` (Ctrl-C to stop).");
    server.await??;
    Ok(())
}

/// Sends 5 GET /hello at the server and prints a table of the answers.
async fn demo(addr: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    println!("\nBurst of 5 requests to GET /hello (limit: 3 per 10 seconds):\n");
    println!(
        "{:<4} {:<7} {:<12} {:<28} body",
        "#", "status", "retry-after", "ratelimit"
    );
    for i in 1..=5 {
        let (status, headers, body) = get_once(addr, "/hello").await?;
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "{:<4} {:<7} {:<12} {:<28} {}",
            i,
            status,
            header("retry-after"),
            header("ratelimit"),
            body.trim()
        );
    }
    Ok(())
}

/// A minimal HTTP/1.1 GET over a plain TCP stream (keeps the example free of
/// an HTTP client dependency).
async fn get_once(
    addr: SocketAddr,
    path: &str,
) -> Result<(u16, Vec<(String, String)>, String), Box<dyn std::error::Error>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok((status, headers, body.to_owned()))
}
