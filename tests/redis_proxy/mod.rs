//! A TCP proxy to the Redis server of a URL (`REDIS_URL` in the suites)
//! that can go silent: from then on every connection through it, open or
//! new, stays open but nothing passes any more, as when the server hangs. It
//! can also black-hole only the connections open now, as when a NAT entry
//! dies: new ones pass. What the clients sent into silence is kept, to count
//! the commands that reached the "dead" server. Shared by the `redis`,
//! `in_flight` and `fallback` suites.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct SilentProxy {
    url: String,
    silent: Arc<AtomicBool>,
    /// Connections opened before the current epoch pass nothing.
    epoch: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
    swallowed: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SilentProxy {
    /// A proxy to the server of `url` (`redis://[user:password@]host:port[/db]`),
    /// whose own URL keeps `url`'s credentials and database. `None` when
    /// `url` names no TCP server.
    pub async fn start(url: &str) -> Option<SilentProxy> {
        let client = redis::Client::open(url).ok()?;
        let redis::ConnectionAddr::Tcp(host, port) = client.get_connection_info().addr() else {
            return None;
        };
        let target = format!("{host}:{port}");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        let (scheme, rest) = url.split_once("://")?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let credentials = authority
            .rsplit_once('@')
            .map(|(credentials, _)| format!("{credentials}@"))
            .unwrap_or_default();
        let silent = Arc::new(AtomicBool::new(false));
        let epoch = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let swallowed = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (silent, epoch) = (Arc::clone(&silent), Arc::clone(&epoch));
            let (accepted, swallowed) = (Arc::clone(&accepted), Arc::clone(&swallowed));
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let mine = epoch.load(Ordering::SeqCst);
                    let (silent, epoch) = (Arc::clone(&silent), Arc::clone(&epoch));
                    let passing = move || {
                        !silent.load(Ordering::SeqCst) && epoch.load(Ordering::SeqCst) == mine
                    };
                    let swallowed = Arc::clone(&swallowed);
                    let target = target.clone();
                    tokio::spawn(async move {
                        let (client_read, client_write) = client.into_split();
                        if !passing() {
                            // A dead server: the connection opens, nothing answers.
                            pump(client_read, None, passing, swallowed).await;
                            drop(client_write);
                            return;
                        }
                        let Ok(server) = TcpStream::connect(target).await else {
                            return;
                        };
                        let (server_read, server_write) = server.into_split();
                        let dropped = Arc::new(Mutex::new(Vec::new()));
                        tokio::spawn(pump(
                            server_read,
                            Some(client_write),
                            passing.clone(),
                            dropped,
                        ));
                        pump(client_read, Some(server_write), passing, swallowed).await;
                    });
                }
            }
        });
        Some(SilentProxy {
            url: format!("{scheme}://{credentials}{local}{path}"),
            silent,
            epoch,
            accepted,
            swallowed,
            task,
        })
    }

    /// The URL to connect through the proxy.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Nothing passes any more, on open connections and new ones.
    pub fn go_silent(&self) {
        self.silent.store(true, Ordering::SeqCst);
    }

    /// Nothing passes any more on the connections open now; new ones pass.
    pub fn black_hole_open_connections(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// How many `command`s (e.g. `"EVALSHA"`) clients sent since the proxy
    /// went silent: the commands that reached the dead server.
    pub fn swallowed(&self, command: &str) -> usize {
        let needle = format!("${}\r\n{command}\r\n", command.len()).into_bytes();
        let swallowed = self.swallowed.lock().unwrap();
        swallowed
            .windows(needle.len())
            .filter(|window| window.eq_ignore_ascii_case(&needle))
            .count()
    }
}

impl Drop for SilentProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` while the connection is `passing`; from then on
/// keeps what it reads in `swallowed` and passes nothing, keeping both open.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: Option<tokio::net::tcp::OwnedWriteHalf>,
    passing: impl Fn() -> bool,
    swallowed: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match &mut to {
            Some(to) if passing() => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            _ => swallowed.lock().unwrap().extend_from_slice(&buf[..n]),
        }
    }
}
