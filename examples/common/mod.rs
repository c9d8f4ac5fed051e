//! Helpers shared by the examples: serve an app on loopback, send requests to
//! it with a tiny HTTP/1.1 client, print the answers.
#![allow(dead_code)]

use std::net::SocketAddr;

use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

/// A server started by [`serve`].
pub struct Server {
    pub addr: SocketAddr,
    handle: JoinHandle<std::io::Result<()>>,
}

/// Serves `app` on 127.0.0.1 (port from `PORT`, default `default_port`) with
/// connect info, so the default identifier sees client addresses.
pub async fn serve(app: Router, default_port: u16) -> std::io::Result<Server> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(default_port);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    let handle = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    Ok(Server { addr, handle })
}

impl Server {
    /// Keeps serving unless `--once` was given.
    pub async fn finish(self) -> Result<(), Box<dyn std::error::Error>> {
        if std::env::args().any(|a| a == "--once") {
            return Ok(());
        }
        println!(
            "\nStill serving on http://{} (Ctrl-C to stop; pass --once to exit after the demo).",
            self.addr
        );
        self.handle.await??;
        Ok(())
    }
}

/// One HTTP answer.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// A header's value, or `-`.
    pub fn header(&self, name: &str) -> String {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "-".into())
    }
}

/// Sends one request with `Connection: close` and reads the whole answer.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, Box<dyn std::error::Error>> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("Content-Length: 0\r\n\r\n");
    stream.write_all(text.as_bytes()).await?;
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
    Ok(Reply {
        status,
        headers,
        body: body.trim().to_owned(),
    })
}

/// Sends `count` requests and prints one line each: status, the named
/// headers, and the body.
pub async fn burst(
    addr: SocketAddr,
    label: &str,
    count: usize,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    show: &[&str],
) -> Result<Vec<u16>, Box<dyn std::error::Error>> {
    println!("\n{label}");
    let mut columns = format!("{:<4} {:<7}", "#", "status");
    for name in show {
        columns.push_str(&format!(" {name:<30}"));
    }
    println!("{columns} body");
    let mut statuses = Vec::new();
    for i in 1..=count {
        let reply = request(addr, method, path, headers).await?;
        let mut line = format!("{:<4} {:<7}", i, reply.status);
        for name in show {
            line.push_str(&format!(" {:<30}", reply.header(name)));
        }
        println!("{line} {}", reply.body);
        statuses.push(reply.status);
    }
    Ok(statuses)
}

/// Fails the demo when a burst was not answered as its table says it is
/// (`.ci/run` runs every demo with `--once`, so this checks them).
#[allow(dead_code)]
pub fn expect_statuses(
    label: &str,
    got: &[u16],
    expected: &[u16],
) -> Result<(), Box<dyn std::error::Error>> {
    if got == expected {
        Ok(())
    } else {
        Err(format!("{label}: expected statuses {expected:?}, got {got:?}").into())
    }
}
