//! In-flight limits: at most 2 uploads at once per client (a place is held
//! until the response body has been sent), and at most 2 open WebSockets
//! per client (the handshake's `Permit` moved into `on_upgrade` holds a
//! place while the socket lives).
//!
//! ```sh
//! cargo run --example in_flight -- --once
//! ```

mod common;

use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::Request;
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use traffik::backend::InMemoryBackend;
use traffik::HttpThrottle;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let memory = InMemoryBackend::new();
    let uploads = HttpThrottle::builder()
        .uid("uploads")
        .max_in_flight(2)
        .backend(memory.clone())
        .build()?;
    let sockets = HttpThrottle::builder()
        .uid("sockets")
        .max_in_flight(2)
        .backend(memory)
        .build()?;

    let app = Router::new()
        .route(
            "/upload",
            post(|| async {
                // A slow upload.
                tokio::time::sleep(Duration::from_millis(300)).await;
                "stored"
            })
            .route_layer(uploads.layer()),
        )
        .route(
            "/ws",
            get(move |upgrade: WebSocketUpgrade, request: Request| {
                let sockets = sockets.clone();
                async move {
                    let permit = sockets.acquire(&request).await?;
                    Ok::<_, traffik::Error>(upgrade.on_upgrade(move |mut socket| async move {
                        let _permit = permit; // one place while the socket is open
                        while let Some(Ok(_)) = socket.next().await {}
                    }))
                }
            }),
        );

    let server = common::serve(app, 3004).await?;
    let addr = server.addr;

    println!("\n3 uploads at once from one client (at most 2 in progress):");
    let uploads: Vec<_> = (0..3)
        .map(|i| {
            tokio::spawn(async move {
                // Staggered a little, so that the third comes last.
                tokio::time::sleep(Duration::from_millis(20 * i)).await;
                common::request(addr, "POST", "/upload", &[])
                    .await
                    .map(|reply| reply.status)
                    .map_err(|error| error.to_string())
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for upload in uploads {
        statuses.push(upload.await??);
    }
    println!("statuses: {statuses:?}");
    common::expect_statuses("uploads", &statuses, &[200, 200, 429])?;
    let after = common::request(addr, "POST", "/upload", &[]).await?.status;
    println!("once they are done, another: {after}");
    common::expect_statuses("upload after", &[after], &[200])?;

    println!("\n3 WebSockets from one client (at most 2 open):");
    let url = format!("ws://{addr}/ws");
    let first = tokio_tungstenite::connect_async(&url).await?;
    let second = tokio_tungstenite::connect_async(&url).await?;
    let third = tokio_tungstenite::connect_async(&url).await;
    let refused = match &third {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        other => return Err(format!("the third socket should be refused: {other:?}").into()),
    };
    println!("the third handshake: {refused}");
    common::expect_statuses("third socket", &[refused], &[429])?;
    drop(first);
    let mut reopened = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Ok(socket) = tokio_tungstenite::connect_async(&url).await {
            reopened = 101;
            drop(socket);
            break;
        }
    }
    println!("after closing one, a new one opens: {}", reopened == 101);
    common::expect_statuses("reopened", &[reopened], &[101])?;
    drop(second);
    server.finish().await
}
