//! `FailureMode::fallback(backend)`: while the throttle's backend fails, the
//! same decisions are asked of the fallback; once it answers again, of it.
#![cfg(feature = "redis")]

mod redis_proxy;

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

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Skips (a loud line), or fails under `CI=true`.
fn skip(what: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but {what}");
    }
    eprintln!("\n!!!!!!!!!! SKIPPED: {what} !!!!!!!!!!\n");
}

/// `GET /r` from the client `ip` through `app`: its status, and how long
/// it took.
async fn timed(app: &axum::Router, ip: [u8; 4]) -> (u16, Duration) {
    use tower::ServiceExt;
    let request = http::Request::get("/r")
        .extension(axum::extract::ConnectInfo(SocketAddr::from((ip, 1))))
        .body(axum::body::Body::empty())
        .unwrap();
    let start = std::time::Instant::now();
    let response = app.clone().oneshot(request).await.unwrap();
    (response.status().as_u16(), start.elapsed())
}

/// Two rules on one Redis that stops answering (its connections stay open,
/// silent): the first rule to ask waits one timeout and opens the circuit
/// breaker; the second rule of the same request then fails at once,
/// without a round trip, instead of waiting a second timeout, and both
/// decide on the fallback. Until the breaker's pause ends, no rule of any
/// request waits. Then one test hit asks Redis (one timeout), while the
/// rules of the other requests still fail at once.
#[tokio::test]
async fn two_rules_on_a_silent_redis_wait_one_timeout_not_two() {
    use redis_proxy::SilentProxy;
    use traffik::{MiddlewareThrottle, ThrottleLayer};
    let Some(proxy) = SilentProxy::start(&redis_url()).await else {
        return skip(&format!("REDIS_URL {} names no TCP server", redis_url()));
    };
    let timeout = Duration::from_millis(500);
    let pause = Duration::from_secs(1);
    let redis = match RedisBackend::builder(proxy.url())
        .prefix(format!(
            "traffik-test-fallback-breaker-{}",
            std::process::id()
        ))
        .persistent(false)
        .timeout(timeout)
        .connect_timeout(timeout)
        .circuit_breaker(pause)
        .build()
        .await
    {
        Ok(redis) => redis,
        Err(error) => return skip(&format!("no Redis at {} ({error})", redis_url())),
    };
    let fallback = InMemoryBackend::new();
    let rule = |uid: &str, rate: &str| {
        let throttle = HttpThrottle::builder()
            .uid(uid)
            .rate(rate)
            .failure_mode(FailureMode::fallback(fallback.clone()))
            .build()
            .unwrap();
        MiddlewareThrottle::new(throttle)
    };
    let app = axum::Router::new()
        .route("/r", axum::routing::get(|| async { "ok" }))
        .layer(
            ThrottleLayer::new(redis.clone())
                .rule(rule("first", "3/min"))
                .rule(rule("second", "100/min")),
        );
    let (client, other) = ([10, 0, 0, 2], [10, 0, 0, 3]);
    // Redis answers: both rules count there.
    assert_eq!(timed(&app, client).await.0, 200);
    assert!(fallback.is_empty());

    proxy.go_silent();
    let (status, took) = timed(&app, client).await;
    assert_eq!(status, 200);
    assert!(took >= timeout, "the first rule waited for Redis: {took:?}");
    assert!(took < 2 * timeout, "the second rule waited too: {took:?}");
    assert_eq!(proxy.swallowed("EVALSHA"), 1, "one rule asked Redis");
    assert_eq!(fallback.len(), 2, "both rules decided on the fallback");
    // During the pause no rule waits; the fallback limits (the first rule's
    // 3 a minute), at once.
    for expected in [200, 200, 429] {
        let (status, took) = timed(&app, client).await;
        assert_eq!(status, expected);
        assert!(took < timeout / 2, "{took:?}");
    }
    assert_eq!(proxy.swallowed("EVALSHA"), 1, "no round trip in the pause");

    // After the pause (the breaker's clock is the system's: a real wait),
    // one of two requests at once sends the test hit and waits for it;
    // the other's rules fail at once meanwhile.
    tokio::time::sleep(pause).await;
    let ((first, first_took), (second, second_took)) =
        tokio::join!(timed(&app, other), timed(&app, other));
    assert_eq!((first, second), (200, 200));
    let (slow, fast) = if first_took > second_took {
        (first_took, second_took)
    } else {
        (second_took, first_took)
    };
    assert!(slow >= timeout, "the test hit waited for Redis: {slow:?}");
    assert!(slow < 2 * timeout, "{slow:?}");
    assert!(fast < timeout / 2, "the other request waited: {fast:?}");
    assert_eq!(proxy.swallowed("EVALSHA"), 2, "one test hit");
}
