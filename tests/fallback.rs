//! `FailureMode::fallback(backend)`: while the throttle's backend fails, the
//! same decisions are asked of the fallback; once it answers again, of it.
#![cfg(feature = "redis")]

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use traffik::backend::{
    BackendFuture, BoxFuture, InMemoryBackend, Op, RedisBackend, ThrottleBackend,
};
use traffik::key::Key;
use traffik::{Error, FailureMode, HttpThrottle, Quota};

fn request() -> http::Request<()> {
    http::Request::builder()
        .extension(SocketAddr::from(([10, 0, 0, 1], 1)))
        .body(())
        .unwrap()
}

/// A backend that always fails.
struct Down;

impl ThrottleBackend for Down {
    fn prefix(&self) -> &str {
        "down"
    }
    fn decide(&self, _: &Key<'_>, _: &[Quota], _: u64, _: Op) -> BackendFuture {
        BackendFuture::ready(Err(Error::backend("down")))
    }
    fn acquire(&self, _: &Key<'_>, _: u64, _: u64, _: Duration) -> BackendFuture {
        BackendFuture::ready(Err(Error::backend("down")))
    }
    fn reset(&self) -> BoxFuture<Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
}

/// The fallback limits: neither Open (everything through) nor Closed
/// (everything refused).
#[tokio::test]
async fn a_failing_backend_falls_back_to_limits_per_instance() {
    let fallback = InMemoryBackend::new();
    let throttle = HttpThrottle::builder()
        .uid("api")
        .rate("3/min")
        .backend(Down)
        .failure_mode(FailureMode::fallback(fallback.clone()))
        .build()
        .unwrap();
    let mut allowed = 0;
    for _ in 0..10 {
        allowed += usize::from(throttle.hit(&request()).await.is_ok());
    }
    assert_eq!(allowed, 3);
    assert_eq!(fallback.len(), 1);
    // A fallback that fails too lets requests through.
    let both_down = HttpThrottle::builder()
        .uid("both")
        .rate("1/min")
        .backend(Down)
        .failure_mode(FailureMode::fallback(Down))
        .build()
        .unwrap();
    for _ in 0..3 {
        assert!(both_down.hit(&request()).await.unwrap().allowed);
    }
    // In-flight places too.
    let places = HttpThrottle::builder()
        .uid("places")
        .max_in_flight(1)
        .backend(Arc::new(Down) as Arc<dyn ThrottleBackend>)
        .failure_mode(FailureMode::fallback(InMemoryBackend::new()))
        .build()
        .unwrap();
    let held = places.acquire(&request()).await.unwrap();
    assert!(places.acquire(&request()).await.is_err());
    drop(held);
    assert!(places.acquire(&request()).await.is_ok());
}

struct Server {
    port: u16,
    child: Child,
}

impl Server {
    fn start(port: u16) -> Option<Server> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        Some(Server { port, child })
    }

    async fn ready(&self) {
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis-server did not start on {}", self.port);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kill the Redis server mid-run: the fallback limits; restart it: back to
/// Redis.
#[tokio::test]
async fn a_killed_redis_falls_back_and_comes_back() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Some(server) = Server::start(port) else {
        let what = "redis-server is not installed";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but {what}");
        }
        eprintln!("\n!!!!!!!!!! SKIPPED: {what} !!!!!!!!!!\n");
        return;
    };
    server.ready().await;
    let redis = RedisBackend::builder(format!("redis://127.0.0.1:{port}"))
        .timeout(Duration::from_millis(200))
        .circuit_breaker(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let fallback = InMemoryBackend::new();
    let throttle = HttpThrottle::builder()
        .uid("api")
        .rate("3/min")
        .backend(redis.clone())
        .failure_mode(FailureMode::fallback(fallback.clone()))
        .build()
        .unwrap();
    // On Redis: 2 of 3.
    assert!(throttle.hit(&request()).await.is_ok());
    assert!(throttle.hit(&request()).await.is_ok());
    assert!(fallback.is_empty());
    drop(server);
    // On the fallback: a fresh 3 of 3 for this instance, then refusals.
    let mut allowed = 0;
    for _ in 0..10 {
        allowed += usize::from(throttle.hit(&request()).await.is_ok());
    }
    assert_eq!(allowed, 3);
    assert_eq!(fallback.len(), 1);
    // Back on Redis (empty again: a new server), once it answers.
    let server = Server::start(port).unwrap();
    server.ready().await;
    let mut on_redis = false;
    for _ in 0..100 {
        // The fallback's quota is spent: an admission is Redis's.
        if throttle.hit(&request()).await.is_ok() {
            on_redis = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(on_redis, "Redis answers again");
    // Redis counts from scratch: 3 of 3 there (one was just counted).
    let mut allowed = 1;
    for _ in 0..10 {
        allowed += usize::from(throttle.hit(&request()).await.is_ok());
    }
    assert_eq!(allowed, 3);
    drop(server);
}
