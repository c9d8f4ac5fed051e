//! WebSocket throttling: an Axum echo server whose messages are limited to 3
//! per 10 seconds per client, and whose handshakes (ordinary GET requests)
//! are limited by a `ThrottleLayer` rule. It connects to itself with a
//! tokio-tungstenite client and prints what happens.
//!
//! ```sh
//! cargo run --example websocket            # demo, then keeps serving on PORT (default 3001)
//! cargo run --example websocket -- --once  # demo on a free port, then exits
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{self, Message as ClientMessage};
use traffik::backend::InMemoryBackend;
use traffik::ws::GuardOptions;
use traffik::{HttpThrottle, Identity, MiddlewareThrottle, ThrottleLayer, WebSocketThrottle};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let once = std::env::args().any(|a| a == "--once");
    // With --once, any free port unless PORT is set.
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(if once { 0 } else { 3001 });
    let memory = InMemoryBackend::new();

    // Messages: 3 per 10 seconds per client IP. Excess messages are dropped
    // and answered with a JSON notice; the socket stays open.
    let messages = WebSocketThrottle::builder()
        .uid("ws-messages")
        .limit(3)
        .seconds(10)
        .backend(memory.clone())
        .build()?;

    // Handshakes: 4 connection attempts per minute per client IP on /ws.
    let handshakes = HttpThrottle::builder()
        .uid("ws-handshakes")
        .limit(4)
        .minutes(1)
        .build()?;
    let layer =
        ThrottleLayer::new(memory.clone()).rule(MiddlewareThrottle::new(handshakes).path("/ws$"));

    let app = Router::new()
        .route(
            "/ws",
            get(
                move |upgrade: WebSocketUpgrade, ConnectInfo(peer): ConnectInfo<SocketAddr>| {
                    let messages = messages.clone();
                    async move { upgrade.on_upgrade(move |socket| echo(socket, messages, peer)) }
                },
            ),
        )
        .layer(layer);

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    println!("traffik websocket example listening on ws://{addr}/ws");
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });

    demo(addr).await?;

    if once {
        return Ok(());
    }
    println!("\nStill serving ws://{addr}/ws (Ctrl-C to stop).");
    server.await??;
    Ok(())
}

/// The guarded echo handler: only messages within the limit arrive here.
async fn echo(socket: WebSocket, messages: WebSocketThrottle, peer: SocketAddr) {
    let mut socket = messages.guard_with(
        socket,
        Identity::client_ip(peer.ip()),
        GuardOptions::new().path("/ws"),
    );
    while let Some(Ok(message)) = socket.next().await {
        if let Message::Text(text) = message {
            let reply = format!("echo: {}", text.as_str());
            if socket.send(Message::Text(reply.into())).await.is_err() {
                break;
            }
        }
    }
}

/// Sends a burst of 5 messages on one socket, then opens connections until
/// the handshake limit refuses one.
async fn demo(addr: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let url = format!("ws://{addr}/ws");

    println!("\n1. Burst of 5 messages on one socket (limit: 3 per 10 seconds):\n");
    let (mut client, _) = tokio_tungstenite::connect_async(&url).await?;
    for i in 1..=5 {
        let text = format!("message {i}");
        println!("   -> {text}");
        client.send(ClientMessage::text(text)).await?;
    }
    for _ in 0..5 {
        match tokio::time::timeout(Duration::from_secs(5), client.next()).await {
            Ok(Some(Ok(ClientMessage::Text(text)))) => println!("   <- {}", text.as_str()),
            Ok(Some(Ok(other))) => println!("   <- {other:?}"),
            Ok(Some(Err(error))) => println!("   !! {error}"),
            Ok(None) => println!("   connection closed"),
            Err(_) => println!("   (no answer within 5 s)"),
        }
    }
    client.close(None).await?;

    println!("\n2. Connection attempts (handshake limit: 4 per minute; one was used above):\n");
    let mut open = Vec::new();
    for attempt in 2..=5 {
        match tokio_tungstenite::connect_async(&url).await {
            Ok((socket, response)) => {
                println!("   attempt {attempt}: connected ({})", response.status());
                open.push(socket);
            }
            Err(tungstenite::Error::Http(response)) => {
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                println!(
                    "   attempt {attempt}: refused with HTTP {} (Retry-After: {retry_after})",
                    response.status()
                );
            }
            Err(error) => println!("   attempt {attempt}: failed: {error}"),
        }
    }
    for mut socket in open {
        socket.close(None).await?;
    }
    Ok(())
}
