//! `redis-server` processes of a test's own, on free loopback ports, killed
//! on drop (shared by the `redis_failover` and `redis_memory` suites).
#![allow(dead_code)]

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Prints a loud `SKIPPED` line (written to the stderr handle itself:
/// libtest captures `eprintln!`), or fails under `CI=true`.
pub fn skip(what: &str) {
    if ci() {
        panic!("CI=true but {what}");
    }
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!!!! SKIPPED: {what} !!!!!!!!!!\n"
    );
}

/// Whether `redis-server` and `redis-cli` can be run; skips (or fails
/// under `CI=true`) when not.
pub fn installed() -> bool {
    for tool in ["redis-server", "redis-cli"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !found {
            skip(&format!(
                "{tool} is not installed (apt-get install redis-server)"
            ));
            return false;
        }
    }
    true
}

fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// A name no other test (or run) uses.
pub fn unique(test: &str) -> String {
    format!("traffik-test-{test}-{:016x}", random())
}

fn free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A loopback port free now, whose cluster bus port (+10000) is free too.
pub fn free_port() -> u16 {
    loop {
        let port = 20_000 + (random() % 20_000) as u16;
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
}

/// A `redis-server` child process.
pub struct Server {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
}

impl Server {
    /// Starts `redis-server` on a free port with `args` (no persistence),
    /// and waits until it answers.
    pub async fn start(args: &[&str]) -> Server {
        let port = free_port();
        let dir = std::env::temp_dir().join(unique(&format!("redis-{port}")));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let server = Server {
            port,
            child: Some(child),
            dir,
        };
        server.wait_ready().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &PathBuf {
        &self.dir
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(client) = redis::Client::open(self.url()) {
                if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                    if redis::cmd("PING")
                        .query_async::<String>(&mut conn)
                        .await
                        .is_ok()
                    {
                        return;
                    }
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of `field` in an `INFO` section's text.
pub fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}
