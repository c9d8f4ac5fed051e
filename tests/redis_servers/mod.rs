//! `redis-server` processes of a test's own, on free loopback ports, killed
//! on drop (shared by the `redis`, `redis_failover` and `redis_memory`
//! suites, and by `integrations/tests/metrics.rs`).
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
    args: Vec<String>,
}

impl Server {
    /// Starts `redis-server` on a free port with `args` (no persistence),
    /// and waits until it answers.
    pub async fn start(args: &[&str]) -> Server {
        let port = free_port();
        let dir = std::env::temp_dir().join(unique(&format!("redis-{port}")));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Server {
            port,
            child: None,
            dir,
            args: args.iter().map(|arg| arg.to_string()).collect(),
        };
        server.spawn();
        server.wait_ready().await;
        server
    }

    /// [`start`](Server::start), or `None` (skipped, or failed under
    /// `CI=true`) when `redis-server` is not installed.
    pub async fn start_or_skip(args: &[&str]) -> Option<Server> {
        if !installed() {
            return None;
        }
        Some(Server::start(args).await)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
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

    /// Starts it again on the same port, after a [`kill`](Server::kill)
    /// (or kills it first), and waits until it answers.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready().await;
    }

    /// Sends `signal` (`-STOP`, `-CONT`) through the shell's own `kill`: a
    /// minimal system may have no kill binary.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("sh")
            .args(["-c", &format!("kill {signal} {pid}")])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A stopped server (`-STOP`) would not die of SIGKILL's wait
            // otherwise.
            let _ = Command::new("sh")
                .args(["-c", &format!("kill -CONT {}", child.id())])
                .status();
        }
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
