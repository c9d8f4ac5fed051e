//! In-flight limits (`.max_in_flight(n)`): at most `n` requests of one
//! client in progress at once, in memory and on Redis; places given back
//! when the response body ends or is dropped; leases on Redis; waiting in
//! line under `Exceeded::Wait`; WebSocket sockets held open per client
//! (a permit moved into `on_upgrade`).

#[cfg(feature = "redis")]
mod redis_proxy;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;
use traffik::backend::{BackendFuture, BoxFuture, InMemoryBackend, Op, ThrottleBackend, Uids};
use traffik::key::Key;
use traffik::{
    Error, Exceeded, HttpThrottle, HttpThrottleBuilder, MiddlewareThrottle, Quota,
    RateLimitHeaders, ThrottleLayer, Throttled,
};

/// A handler that counts the requests inside it and holds each until told.
#[derive(Clone, Default)]
struct Inside {
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    open: Arc<tokio::sync::Notify>,
}

impl Inside {
    async fn enter(&self) -> &'static str {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        self.open.notified().await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        "done"
    }
}

fn request(ip: [u8; 4]) -> Request<Body> {
    Request::get("/work")
        .extension(ConnectInfo(SocketAddr::from((ip, 1))))
        .body(Body::empty())
        .unwrap()
}

fn uploads(backend: impl traffik::backend::IntoBackend, max: u64) -> HttpThrottle {
    HttpThrottle::builder()
        .uid("uploads")
        .max_in_flight(max)
        .backend(backend)
        .build()
        .unwrap()
}

/// `n` concurrent requests from one client through `apps` (round robin):
/// exactly `max` inside at once, the rest 429 with `Retry-After: 1`.
async fn exactly_max_inside(apps: Vec<Router>, inside: Inside, n: usize, max: usize) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let app = apps[i % apps.len()].clone();
        tasks.push(tokio::spawn(async move {
            app.oneshot(request([10, 0, 0, 1])).await.unwrap()
        }));
    }
    // Let every request reach its decision.
    for _ in 0..200 {
        if inside.now.load(Ordering::SeqCst) == max {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(inside.now.load(Ordering::SeqCst), max);
    let mut refused = 0;
    let mut pending = Vec::new();
    for task in tasks {
        if task.is_finished() {
            let response = task.await.unwrap();
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(response.headers()["retry-after"], "1");
            refused += 1;
        } else {
            pending.push(task);
        }
    }
    assert_eq!(refused, n - max);
    inside.open.notify_waiters();
    for task in pending {
        let response = task.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        // The place is given back once the body has been read.
        axum::body::to_bytes(response.into_body(), 100)
            .await
            .unwrap();
    }
    assert_eq!(inside.most.load(Ordering::SeqCst), max);
}

fn app(throttle: &HttpThrottle, inside: &Inside) -> Router {
    let inside = inside.clone();
    Router::new()
        .route("/work", get(move || async move { inside.enter().await }))
        .route_layer(throttle.layer())
}

#[tokio::test]
async fn concurrent_requests_get_exactly_max_places_in_memory() {
    let inside = Inside::default();
    let throttle = uploads(InMemoryBackend::new(), 3);
    exactly_max_inside(vec![app(&throttle, &inside)], inside.clone(), 20, 3).await;
    // Every place came back: three more fit.
    exactly_max_inside(
        vec![app(&throttle, &inside)],
        Inside::default_like(&inside),
        5,
        3,
    )
    .await;
}

impl Inside {
    fn default_like(inside: &Inside) -> Inside {
        inside.most.store(0, Ordering::SeqCst);
        inside.clone()
    }
}

/// As a `ThrottleLayer` rule, another client has places of its own.
#[tokio::test]
async fn a_rule_counts_each_client_apart() {
    let memory = InMemoryBackend::new();
    let inside = Inside::default();
    let rule = HttpThrottle::builder()
        .uid("slow")
        .max_in_flight(1)
        .shared_across_routes()
        .build()
        .unwrap();
    let held = inside.clone();
    let app = Router::new()
        .route("/work", get(move || async move { held.enter().await }))
        .layer(ThrottleLayer::new(memory.clone()).rule(MiddlewareThrottle::new(rule)));
    let first = tokio::spawn(app.clone().oneshot(request([10, 0, 0, 1])));
    while inside.now.load(Ordering::SeqCst) < 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let second = app.clone().oneshot(request([10, 0, 0, 1])).await.unwrap();
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    let other = tokio::spawn(app.clone().oneshot(request([10, 0, 0, 2])));
    while inside.now.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    inside.open.notify_waiters();
    for task in [first, other] {
        let response = task.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        axum::body::to_bytes(response.into_body(), 100)
            .await
            .unwrap();
    }
    // Both places came back: the first client gets in again.
    let again = tokio::spawn(app.oneshot(request([10, 0, 0, 1])));
    while inside.now.load(Ordering::SeqCst) < 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    inside.open.notify_waiters();
    assert_eq!(again.await.unwrap().unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn acquire_takes_a_place_until_the_permit_is_dropped() {
    let throttle = uploads(InMemoryBackend::new(), 2);
    let request = request([10, 0, 0, 3]);
    let a = throttle.acquire(&request).await.unwrap();
    assert_eq!(a.decision().remaining, 1);
    let b = throttle.acquire(&request).await.unwrap();
    let refused = throttle.acquire(&request).await.unwrap_err();
    let Error::Throttled(throttled) = refused else {
        panic!("{refused:?}")
    };
    assert_eq!(throttled.retry_after_secs(), 1);
    drop(a);
    let c = throttle.acquire(&request).await.unwrap();
    drop((b, c));
    // hit() is for rates, acquire() for places: each says so.
    let hit = throttle.hit(&request).await.unwrap_err();
    assert!(hit.to_string().contains("acquire(&request)"), "{hit}");
    let rates = HttpThrottle::builder()
        .rate("1/s")
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let acquire = rates.acquire(&request).await.unwrap_err();
    assert!(acquire.to_string().contains("hit(&request)"), "{acquire}");
}

#[test]
fn a_rate_with_max_in_flight_or_zero_places_is_a_configuration_error() {
    let both = HttpThrottle::builder()
        .rate("1/s")
        .max_in_flight(2)
        .build()
        .unwrap_err();
    assert!(both.to_string().contains("instead of a rate"), "{both}");
    let zero = HttpThrottle::builder()
        .max_in_flight(0)
        .build()
        .unwrap_err();
    assert!(zero.to_string().contains("max_in_flight(0)"), "{zero}");
}

/// Through a real server: a client that closes its connection in the middle
/// of a response gives its place back.
#[tokio::test]
async fn a_client_that_disconnects_mid_response_gives_its_place_back() {
    let throttle = uploads(InMemoryBackend::new(), 1);
    let app = Router::new()
        .route(
            "/work",
            get(|| async {
                // A body that never ends.
                let stream = futures_util::stream::unfold((), |()| async {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Some((Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"x")), ()))
                });
                Body::from_stream(stream)
            }),
        )
        .route_layer(throttle.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    let get = || async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /work HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = vec![0; 64];
        let n = stream.read(&mut head).await.unwrap();
        (String::from_utf8_lossy(&head[..n]).into_owned(), stream)
    };
    let (first, stream) = get().await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let (second, _) = get().await;
    assert!(second.starts_with("HTTP/1.1 429"), "{second}");
    drop(stream);
    let mut third = String::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        third = get().await.0;
        if third.starts_with("HTTP/1.1 200") {
            break;
        }
    }
    assert!(third.starts_with("HTTP/1.1 200"), "{third}");
}

// ------------------------------------------------------------------------
// WebSocket sockets: the handshake's permit lives as long as the socket.

type ClientSocket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A real server whose `/ws` handler takes a place of `sockets` for the
/// handshake and moves the permit into `on_upgrade`: held while the socket
/// is open (an echo of text messages until the client closes).
async fn sockets_server(sockets: HttpThrottle) -> SocketAddr {
    use axum::extract::ws::{Message, WebSocketUpgrade};
    let handler = move |upgrade: WebSocketUpgrade, request: Request<Body>| {
        let sockets = sockets.clone();
        async move {
            let permit = sockets.acquire(&request).await?;
            Ok::<_, Error>(upgrade.on_upgrade(move |mut socket| async move {
                let _permit = permit;
                while let Some(Ok(message)) = socket.recv().await {
                    if let Message::Text(text) = message {
                        if socket.send(Message::Text(text)).await.is_err() {
                            break;
                        }
                    }
                }
            }))
        }
    };
    let app = Router::new().route("/ws", get(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// Opens a socket to `addr` from the loopback address `from` (each
/// `127.x.y.z` is a client of its own): the socket, or the handshake's
/// HTTP answer when it was refused.
async fn open_socket(
    addr: SocketAddr,
    from: [u8; 4],
) -> Result<ClientSocket, http::Response<Option<Vec<u8>>>> {
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.bind(SocketAddr::from((from, 0))).unwrap();
    let tcp = tcp.connect(addr).await.unwrap();
    let handshake = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp);
    match tokio::time::timeout(Duration::from_secs(10), handshake)
        .await
        .expect("the handshake timed out")
    {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(*response),
        Err(other) => panic!("handshake failed: {other}"),
    }
}

/// The socket answers (it is really open).
async fn echoes(socket: &mut ClientSocket, text: &str) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    socket.send(Message::text(text)).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .expect("no echo")
        .expect("the socket ended")
        .unwrap();
    assert_eq!(answer, Message::text(text));
}

/// Closes a socket the proper way: a close frame, then the server's.
async fn close(mut socket: ClientSocket) {
    use futures_util::StreamExt;
    socket.close(None).await.unwrap();
    while let Some(Ok(_)) = socket.next().await {}
}

/// Two sockets of one client open, a third one's handshake is a 429; other
/// clients have places of their own; closing a socket lets a new one in
/// (once the server has seen the close, which it does asynchronously).
async fn sockets_are_limited_per_client(backend: impl traffik::backend::IntoBackend) {
    let sockets = HttpThrottle::builder()
        .uid("sockets")
        .max_in_flight(2)
        .shared_across_routes()
        .backend(backend)
        .build()
        .unwrap();
    let addr = sockets_server(sockets).await;
    let client = [127, 0, 0, 1];
    let mut first = open_socket(addr, client).await.expect("first socket");
    let mut second = open_socket(addr, client).await.expect("second socket");
    echoes(&mut first, "one").await;
    echoes(&mut second, "two").await;
    let refused = open_socket(addr, client)
        .await
        .expect_err("a third socket of the same client");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "1");
    // Another client is not held back by the first one's sockets.
    let other = open_socket(addr, [127, 0, 0, 2])
        .await
        .expect("another client's socket");
    // The refusal took no place: the two open sockets still work.
    echoes(&mut first, "still").await;
    echoes(&mut second, "open").await;

    close(first).await;
    let mut third = None;
    for _ in 0..200 {
        match open_socket(addr, client).await {
            Ok(socket) => {
                third = Some(socket);
                break;
            }
            Err(refused) => {
                assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    let mut third = third.expect("a closed socket gives its place back");
    echoes(&mut third, "three").await;
    // Two open again: the next one is refused.
    let refused = open_socket(addr, client)
        .await
        .expect_err("two sockets open again");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // A socket dropped without a close frame gives its place back too.
    drop(second);
    let mut fourth = None;
    for _ in 0..200 {
        if let Ok(socket) = open_socket(addr, client).await {
            fourth = Some(socket);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    echoes(
        fourth
            .as_mut()
            .expect("a dropped socket gives its place back"),
        "four",
    )
    .await;
    drop((third, fourth, other));
}

#[tokio::test]
async fn websocket_sockets_are_limited_per_client_in_memory() {
    sockets_are_limited_per_client(InMemoryBackend::new()).await;
}

// ------------------------------------------------------------------------
// Waiting in line.

/// Counts the decisions asked of the in-memory backend.
#[derive(Clone)]
struct Counting {
    inner: InMemoryBackend,
    asked: Arc<AtomicUsize>,
}

impl ThrottleBackend for Counting {
    fn prefix(&self) -> &str {
        self.inner.prefix()
    }
    fn decide(&self, key: &Key<'_>, quotas: &[Quota], cost: u64, op: Op) -> BackendFuture {
        self.asked.fetch_add(1, Ordering::SeqCst);
        ThrottleBackend::decide(&self.inner, key, quotas, cost, op)
    }
    fn acquire(&self, key: &Key<'_>, place: u64, max: u64, lease: Duration) -> BackendFuture {
        self.asked.fetch_add(1, Ordering::SeqCst);
        self.inner.acquire(key, place, max, lease)
    }
    fn release(&self, key: &Key<'_>, place: u64) -> BackendFuture<()> {
        self.inner.release(key, place)
    }
    fn reset(&self) -> BoxFuture<Result<(), Error>> {
        ThrottleBackend::reset(&self.inner)
    }
    fn uids(&self) -> Option<&Uids> {
        self.inner.uids()
    }
}

/// Waiters of one key are admitted in arrival order, and n waiters cost
/// O(n) decisions (each asks about once when its turn comes).
#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_arrival_order_with_linear_decisions() {
    for n in [10usize, 40] {
        let asked = Arc::new(AtomicUsize::new(0));
        let backend = Counting {
            inner: InMemoryBackend::builder()
                .clock(traffik::clock::TokioClock::new())
                .build(),
            asked: Arc::clone(&asked),
        };
        let throttle = HttpThrottle::builder()
            .uid("line")
            .rate("10/s")
            .burst(1)
            .on_exceeded(Exceeded::Wait {
                max: Duration::from_secs(60),
            })
            .backend(backend)
            .build()
            .unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..n {
            let (throttle, order) = (throttle.clone(), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                let request = Request::get("/")
                    .extension(SocketAddr::from(([10, 0, 0, 9], 1)))
                    .body(())
                    .unwrap();
                throttle.hit(&request).await.unwrap();
                order.lock().unwrap().push(i);
            }));
            // Arrivals a microsecond apart.
            tokio::time::sleep(Duration::from_micros(1)).await;
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), (0..n).collect::<Vec<_>>());
        let asked = asked.load(Ordering::SeqCst);
        // One refused first ask each, then one or two asks at its turn.
        assert!(asked <= 3 * n, "{n} waiters asked {asked} times");
    }
}

/// A waiting request for an in-flight place gets it as soon as one is
/// given back in this instance.
#[tokio::test]
async fn an_in_flight_waiter_gets_the_next_place() {
    let throttle = HttpThrottle::builder()
        .uid("queue")
        .max_in_flight(1)
        .on_exceeded(Exceeded::Wait {
            max: Duration::from_secs(5),
        })
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let request = request([10, 0, 0, 4]);
    let held = throttle.acquire(&request).await.unwrap();
    let waiting = tokio::spawn({
        let (throttle, request) = (throttle.clone(), self::request([10, 0, 0, 4]));
        async move {
            let start = std::time::Instant::now();
            let permit = throttle.acquire(&request).await.unwrap();
            (start.elapsed(), permit)
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(held);
    let (waited, _permit) = waiting.await.unwrap();
    assert!(waited < Duration::from_millis(500), "{waited:?}");
    let _ = request;
}

// ------------------------------------------------------------------------
// Redis: places are leases.

#[cfg(feature = "redis")]
mod redis_backend {
    use super::*;
    use crate::redis_proxy::SilentProxy;
    use traffik::backend::RedisBackend;

    fn redis_url() -> String {
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
    }

    async fn backend(test: &str) -> Option<RedisBackend> {
        backend_with(test, false).await
    }

    /// This process's prefix for `test`.
    fn prefix(test: &str) -> String {
        format!("traffik-test-inflight-{test}-{}", std::process::id())
    }

    /// A backend on `REDIS_URL` with this process's prefix for `test`;
    /// `persistent`: a second one keeps the first one's keys.
    async fn backend_with(test: &str, persistent: bool) -> Option<RedisBackend> {
        match RedisBackend::builder(redis_url())
            .prefix(prefix(test))
            .persistent(persistent)
            .build()
            .await
        {
            Ok(redis) => Some(redis),
            Err(error) => {
                let what = format!("no Redis at {} ({error})", redis_url());
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("CI=true but {what}");
                }
                eprintln!("\n!!!!!!!!!! SKIPPED: {what} !!!!!!!!!!\n");
                None
            }
        }
    }

    async fn redis_reset(_: &HttpThrottle) {
        backend_with("crash", true)
            .await
            .unwrap()
            .reset()
            .await
            .unwrap();
    }

    /// Two app instances (two backends on one server): exactly `max` inside.
    #[tokio::test]
    async fn two_app_instances_share_exactly_max_places() {
        let (Some(a), Some(b)) = (backend("two").await, backend("two").await) else {
            return;
        };
        let inside = Inside::default();
        let apps = vec![app(&uploads(a, 3), &inside), app(&uploads(b, 3), &inside)];
        exactly_max_inside(apps, inside, 24, 3).await;
    }

    /// The sockets of one client, with the places on Redis.
    #[tokio::test]
    async fn websocket_sockets_are_limited_per_client_on_redis() {
        let Some(redis) = backend("sockets").await else {
            return;
        };
        sockets_are_limited_per_client(redis.clone()).await;
        redis.reset().await.unwrap();
    }

    /// A request held past one lease keeps its place (the lease is renewed).
    #[tokio::test]
    async fn a_long_request_keeps_its_place_past_its_lease() {
        let Some(redis) = backend("renew").await else {
            return;
        };
        let throttle = HttpThrottle::builder()
            .uid("long")
            .max_in_flight(1)
            .lease(Duration::from_millis(300))
            .backend(redis)
            .build()
            .unwrap();
        let request = request([10, 0, 0, 5]);
        let permit = throttle.acquire(&request).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert!(throttle.acquire(&request).await.is_err());
        drop(permit);
        for _ in 0..50 {
            if throttle.acquire(&request).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the place was not given back");
    }

    /// The place of a holder that crashed (no renewal, no release) comes
    /// back after its lease.
    #[test]
    fn the_place_of_a_crashed_holder_comes_back_after_its_lease() {
        let crashed = tokio::runtime::Runtime::new().unwrap();
        let Some(throttle) = crashed.block_on(async {
            let redis = backend_with("crash", true).await?;
            Some(
                HttpThrottle::builder()
                    .uid("crash")
                    .max_in_flight(1)
                    .lease(Duration::from_millis(400))
                    .backend(redis)
                    .build()
                    .unwrap(),
            )
        }) else {
            return;
        };
        let request = request([10, 0, 0, 6]);
        let permit = crashed.block_on(throttle.acquire(&request)).unwrap();
        // The instance dies: its renewal task with its runtime, the permit
        // never dropped.
        std::mem::forget(permit);
        drop(crashed);
        let fresh = tokio::runtime::Runtime::new().unwrap();
        fresh.block_on(async {
            let redis = backend_with("crash", true).await.unwrap();
            let throttle = HttpThrottle::builder()
                .uid("crash")
                .max_in_flight(1)
                .lease(Duration::from_millis(400))
                .backend(redis)
                .build()
                .unwrap();
            assert!(
                throttle.acquire(&request).await.is_err(),
                "held until the lease ends"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(
                throttle.acquire(&request).await.is_ok(),
                "back after the lease"
            );
            redis_reset(&throttle).await;
        });
    }

    // Leases through real servers on loopback sockets. A lease ends by
    // Redis's clock (its `TIME`), which no paused Tokio clock moves: these
    // wait in real time, a few short leases.

    /// Serves `app` with connect info on a loopback port, on the current
    /// runtime.
    async fn serve(app: Router) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        addr
    }

    /// Sends `GET path` over a connection of its own; the response is left
    /// to read.
    async fn send_get(addr: SocketAddr, path: &str) -> tokio::net::TcpStream {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        stream
    }

    /// The whole response (the server closes the connection after it).
    async fn response(mut stream: tokio::net::TcpStream) -> String {
        let mut text = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut text))
            .await
            .expect("a response within 10 s")
            .unwrap();
        text
    }

    /// `GET path`: the response's status.
    async fn status_of(addr: SocketAddr, path: &str) -> u16 {
        let text = response(send_get(addr, path).await).await;
        let status = text.get(9..12).and_then(|code| code.parse().ok());
        let status = status.unwrap_or_else(|| panic!("a status line: {text:?}"));
        if status == 429 {
            assert!(
                text.to_ascii_lowercase().contains("\r\nretry-after: 1\r\n"),
                "{text}"
            );
        }
        status
    }

    fn one_place(backend: RedisBackend, lease: Duration) -> HttpThrottle {
        HttpThrottle::builder()
            .uid("server")
            .max_in_flight(1)
            .lease(lease)
            .shared_across_routes()
            .backend(backend)
            .build()
            .unwrap()
    }

    /// Through a real server: a request in progress for several leases keeps
    /// its place (renewed while the request runs), and gives it back as
    /// soon as its response has been sent, long before its lease would end.
    #[tokio::test]
    async fn through_a_server_a_long_request_keeps_its_place_past_its_lease() {
        let Some(redis) = backend("server-renew").await else {
            return;
        };
        let lease = Duration::from_millis(600);
        let gate = Gate::new();
        let addr = serve(gated_app(&one_place(redis.clone(), lease), &gate)).await;
        let long = send_get(addr, "/hold").await;
        gate.inside().await;
        tokio::time::sleep(lease * 5 / 2).await;
        assert_eq!(status_of(addr, "/work").await, 429, "still held");
        gate.let_out(1);
        let done = response(long).await;
        assert!(done.starts_with("HTTP/1.1 200"), "{done}");
        assert!(done.ends_with("done"), "{done}");
        // Renewed every 200 ms, the lease has 400 ms or more to run: a
        // place free within 300 ms was given back.
        let ended = std::time::Instant::now();
        while status_of(addr, "/work").await != 200 {
            assert!(ended.elapsed() < lease / 2, "the place was not given back");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        redis.reset().await.unwrap();
    }

    /// Through real servers: an app instance that crashes while one of its
    /// requests holds a place (its Redis connection goes dead, then the
    /// instance with its tasks: no renewal, no release reaches Redis) loses
    /// the place within one lease. Another instance refuses the client
    /// until then, and lets it in after.
    #[tokio::test]
    async fn through_a_server_the_place_of_a_crashed_instance_comes_back_after_its_lease() {
        let test = "server-crash";
        let Some(redis) = backend_with(test, true).await else {
            return;
        };
        let proxy = SilentProxy::start(&redis_url())
            .await
            .expect("REDIS_URL names a TCP server");
        let lease = Duration::from_millis(600);
        let survivor = serve(gated_app(&one_place(redis.clone(), lease), &Gate::new())).await;

        let crashing = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let gate = Gate::new();
        let doomed = {
            let (url, gate) = (proxy.url().to_owned(), gate.clone());
            crashing.spawn(async move {
                let redis = RedisBackend::builder(url)
                    .prefix(prefix(test))
                    .build()
                    .await
                    .unwrap();
                serve(gated_app(&one_place(redis, lease), &gate)).await
            })
        };
        let doomed = doomed.await.unwrap();
        let _held = send_get(doomed, "/hang").await;
        gate.inside().await;
        assert_eq!(status_of(survivor, "/work").await, 429);

        proxy.go_silent();
        crashing.shutdown_background();
        let crash = std::time::Instant::now();
        // Its last renewal was 200 ms ago at most: held 400 ms more.
        assert_eq!(
            status_of(survivor, "/work").await,
            429,
            "held until its lease ends"
        );
        while status_of(survivor, "/work").await != 200 {
            assert!(
                crash.elapsed() < lease + Duration::from_millis(1_500),
                "the place never came back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        redis.reset().await.unwrap();
    }
}

/// The default `max_waiting` bounds what a flood can make a throttle hold:
/// past 1,024 waiting requests, the next ones are refused at once.
#[tokio::test(start_paused = true)]
async fn waiting_requests_are_bounded_by_default() {
    let throttle = HttpThrottle::builder()
        .uid("bounded")
        .rate("1/h")
        .on_exceeded(Exceeded::Wait {
            max: Duration::from_secs(24 * 3600),
        })
        .backend(
            InMemoryBackend::builder()
                .clock(traffik::clock::TokioClock::new())
                .build(),
        )
        .build()
        .unwrap();
    let request = || {
        Request::get("/")
            .extension(SocketAddr::from(([10, 0, 0, 7], 1)))
            .body(())
            .unwrap()
    };
    assert!(throttle.hit(&request()).await.is_ok());
    let waiting: Vec<_> = (0..1_024)
        .map(|_| {
            let (throttle, request) = (throttle.clone(), request());
            tokio::spawn(async move { throttle.hit(&request).await })
        })
        .collect();
    // Let them all join the line.
    tokio::task::yield_now().await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let refused = tokio::time::timeout(Duration::from_secs(1), throttle.hit(&request()))
        .await
        .expect("refused at once, not held");
    assert!(matches!(refused, Err(Error::Throttled(_))));
    assert!(waiting.iter().all(|task| !task.is_finished()));
    for task in waiting {
        task.abort();
    }
}

// ------------------------------------------------------------------------
// Places given back by cancelled requests and failed inner services.

/// Handlers that say when a request is inside (`entered`) and hold it until
/// the gate lets it out (`open`, in arrival order), or forever (`/hang`).
#[derive(Clone)]
struct Gate {
    entered: Arc<tokio::sync::Semaphore>,
    open: Arc<tokio::sync::Semaphore>,
}

impl Gate {
    fn new() -> Gate {
        Gate {
            entered: Arc::new(tokio::sync::Semaphore::new(0)),
            open: Arc::new(tokio::sync::Semaphore::new(0)),
        }
    }

    /// A handler: inside until the gate opens.
    async fn hold(&self) -> &'static str {
        self.entered.add_permits(1);
        self.open.acquire().await.unwrap().forget();
        "done"
    }

    /// A handler that never answers.
    async fn hang(&self) -> &'static str {
        self.entered.add_permits(1);
        std::future::pending().await
    }

    /// Waits until one more request is inside a handler.
    async fn inside(&self) {
        self.entered.acquire().await.unwrap().forget();
    }

    /// Lets the first `n` held requests out.
    fn let_out(&self, n: usize) {
        self.open.add_permits(n);
    }
}

/// A throttle of `max` places per client, shared by every route.
fn places(uid: &str, max: u64) -> HttpThrottleBuilder {
    HttpThrottle::builder()
        .uid(uid)
        .max_in_flight(max)
        .shared_across_routes()
        .backend(InMemoryBackend::new())
}

/// `/hold` (held until the gate opens), `/hang` (never answers) and
/// `/work` (answers at once) behind `throttle.layer()`.
fn gated_app(throttle: &HttpThrottle, gate: &Gate) -> Router {
    let (hold, hang) = (gate.clone(), gate.clone());
    Router::new()
        .route("/hold", get(move || async move { hold.hold().await }))
        .route("/hang", get(move || async move { hang.hang().await }))
        .route("/work", get(|| async { "done" }))
        .route_layer(throttle.layer())
}

/// `GET path` from 10.0.0.8 through `app`.
async fn call(app: Router, path: &str) -> http::Response<Body> {
    let request = Request::get(path)
        .extension(ConnectInfo(SocketAddr::from(([10, 0, 0, 8], 1))))
        .body(Body::empty())
        .unwrap();
    app.oneshot(request).await.unwrap()
}

/// The status and the whole body (which gives the place back).
async fn read(response: http::Response<Body>) -> (StatusCode, String) {
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// A request whose task is aborted while its handler works (the client
/// gave up, the server shut the connection) gives its place back.
#[tokio::test]
async fn a_request_cancelled_in_progress_gives_its_place_back() {
    let gate = Gate::new();
    let app = gated_app(&places("cancel", 1).build().unwrap(), &gate);
    let cancelled = tokio::spawn(call(app.clone(), "/hang"));
    gate.inside().await;
    let (status, _) = read(call(app.clone(), "/work").await).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "the place is held");
    cancelled.abort();
    assert!(cancelled.await.unwrap_err().is_cancelled());
    assert_eq!(
        read(call(app, "/work").await).await,
        (StatusCode::OK, "done".to_owned())
    );
}

/// A request dropped by a timeout around the service (the future dropped
/// unfinished, as `tower::timeout` does) gives its place back.
#[tokio::test(start_paused = true)]
async fn a_request_dropped_by_a_timeout_gives_its_place_back() {
    let gate = Gate::new();
    let app = gated_app(&places("timeout", 1).build().unwrap(), &gate);
    let (timed_out, while_held) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(30), call(app.clone(), "/hang")),
        async {
            gate.inside().await;
            read(call(app.clone(), "/work").await).await.0
        }
    );
    assert!(timed_out.is_err(), "the request never answers");
    assert_eq!(while_held, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(read(call(app, "/work").await).await.0, StatusCode::OK);
}

/// A request cancelled while a later rule of the layer still decides (an
/// async hook) gives back the place an earlier rule gave it.
#[tokio::test]
async fn a_request_cancelled_while_a_later_rule_decides_gives_its_place_back() {
    let stalled = Arc::new(tokio::sync::Semaphore::new(0));
    let hook_entered = Arc::clone(&stalled);
    let later = HttpThrottle::builder()
        .uid("later")
        .rate("1000/s")
        .build()
        .unwrap();
    let app = Router::new()
        .route("/work", get(|| async { "done" }))
        .layer(
            ThrottleLayer::new(InMemoryBackend::new())
                .rule(MiddlewareThrottle::new(places("first", 1).build().unwrap()))
                .rule(MiddlewareThrottle::new(later).hook(move |parts| {
                    let stall = parts.headers.contains_key("x-stall");
                    let entered = Arc::clone(&hook_entered);
                    async move {
                        if stall {
                            entered.add_permits(1);
                            std::future::pending::<()>().await;
                        }
                        true
                    }
                })),
        );
    let stalled_request = Request::get("/work")
        .header("x-stall", "1")
        .extension(ConnectInfo(SocketAddr::from(([10, 0, 0, 8], 1))))
        .body(Body::empty())
        .unwrap();
    let cancelled = tokio::spawn(app.clone().oneshot(stalled_request));
    stalled.acquire().await.unwrap().forget();
    assert_eq!(
        read(call(app.clone(), "/work").await).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    cancelled.abort();
    assert!(cancelled.await.unwrap_err().is_cancelled());
    assert_eq!(read(call(app, "/work").await).await.0, StatusCode::OK);
}

/// An inner service that fails (its `Err` reaches the caller unchanged)
/// gives the request's place back.
#[tokio::test]
async fn an_inner_service_error_gives_its_place_back() {
    use tower::Layer;
    let gate = Gate::new();
    let inner = {
        let gate = gate.clone();
        tower::service_fn(move |request: Request<Body>| {
            let gate = gate.clone();
            async move {
                if request.uri().path() == "/fail" {
                    gate.hold().await;
                    return Err(std::io::Error::other("the inner service failed"));
                }
                Ok(http::Response::new(Body::from("done")))
            }
        })
    };
    let service = places("inner-error", 1)
        .build()
        .unwrap()
        .layer()
        .layer(inner);
    let send = |path: &str| {
        let request = Request::get(path)
            .extension(ConnectInfo(SocketAddr::from(([10, 0, 0, 8], 1))))
            .body(Body::empty())
            .unwrap();
        service.clone().oneshot(request)
    };
    let failing = tokio::spawn(send("/fail"));
    gate.inside().await;
    let refused = send("/ok").await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    gate.let_out(1);
    let error = failing.await.unwrap().unwrap_err();
    assert_eq!(error.to_string(), "the inner service failed");
    let admitted = send("/ok").await.unwrap();
    assert_eq!(read(admitted).await, (StatusCode::OK, "done".to_owned()));
}

/// An error response (a handler's 500) holds its place like any response,
/// until its body has been read or dropped, then gives it back.
#[tokio::test]
async fn an_error_response_gives_its_place_back_with_its_body() {
    let app = Router::new()
        .route(
            "/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .route("/work", get(|| async { "done" }))
        .route_layer(places("error-response", 1).build().unwrap().layer());
    let failed = call(app.clone(), "/fail").await;
    assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    // Its body not read yet: the request is still in progress.
    assert_eq!(
        read(call(app.clone(), "/work").await).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        read(failed).await,
        (StatusCode::INTERNAL_SERVER_ERROR, "boom".to_owned())
    );
    assert_eq!(
        read(call(app.clone(), "/work").await).await.0,
        StatusCode::OK
    );
    // Dropped unread, too.
    drop(call(app.clone(), "/fail").await);
    assert_eq!(read(call(app, "/work").await).await.0, StatusCode::OK);
}

// ------------------------------------------------------------------------
// The in-flight 429: custom response, rate-limit headers, shadow mode.

/// Over the limit, the throttle's `on_throttled` answers, told of the
/// in-flight decision (limit, nothing remaining, no window, retry in 1 s),
/// with `Retry-After: 1` and `Cache-Control: no-store` added, and the
/// rate-limit headers of an in-flight limit (no window, no reset) on the
/// 429 and on admitted responses, in either header format.
#[tokio::test]
async fn an_in_flight_429_has_the_custom_response_and_the_rate_limit_headers() {
    for mode in [RateLimitHeaders::Ietf, RateLimitHeaders::Legacy] {
        let gate = Gate::new();
        let throttle = places("busy", 2)
            .headers(mode)
            .on_throttled(|t: &Throttled| {
                let body = format!(
                    "{}: {} of {} places free, window {:?}, retry in {}s",
                    t.throttle(),
                    t.decision().remaining,
                    t.decision().limit,
                    t.window(),
                    t.retry_after_secs()
                );
                http::Response::builder()
                    .status(StatusCode::TOO_MANY_REQUESTS)
                    .header("x-busy", "yes")
                    .body(body)
                    .unwrap()
            })
            .build()
            .unwrap();
        let app = gated_app(&throttle, &gate);
        let first = tokio::spawn(call(app.clone(), "/hold"));
        gate.inside().await;
        let second = tokio::spawn(call(app.clone(), "/hold"));
        gate.inside().await;

        let refused = call(app.clone(), "/work").await;
        let headers = refused.headers().clone();
        let (status, body) = read(refused).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{mode:?}");
        assert_eq!(body, "busy: 0 of 2 places free, window 0ns, retry in 1s");
        assert_eq!(headers["x-busy"], "yes");
        assert_eq!(headers["retry-after"], "1");
        assert_eq!(headers["cache-control"], "no-store");
        let limit_headers = |headers: &http::HeaderMap| -> Vec<(String, String)> {
            let names: &[&str] = match mode {
                RateLimitHeaders::Ietf => &["ratelimit-policy", "ratelimit"],
                _ => &[
                    "x-ratelimit-limit",
                    "x-ratelimit-remaining",
                    "x-ratelimit-reset",
                ],
            };
            names
                .iter()
                .map(|name| {
                    let value = headers
                        .get(*name)
                        .unwrap_or_else(|| panic!("{name} in {headers:?}"));
                    (name.to_string(), value.to_str().unwrap().to_owned())
                })
                .collect()
        };
        let expected = |remaining: u64| -> Vec<(String, String)> {
            let pairs = match mode {
                RateLimitHeaders::Ietf => vec![
                    ("ratelimit-policy", "\"busy\";q=2".to_owned()),
                    ("ratelimit", format!("\"busy\";r={remaining}")),
                ],
                _ => vec![
                    ("x-ratelimit-limit", "2".to_owned()),
                    ("x-ratelimit-remaining", remaining.to_string()),
                    ("x-ratelimit-reset", "0".to_owned()),
                ],
            };
            pairs
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value))
                .collect()
        };
        assert_eq!(limit_headers(&headers), expected(0), "{mode:?}");

        gate.let_out(2);
        let first = first.await.unwrap();
        assert_eq!(limit_headers(first.headers()), expected(1), "{mode:?}");
        assert_eq!(read(first).await.0, StatusCode::OK);
        let second = second.await.unwrap();
        assert_eq!(limit_headers(second.headers()), expected(0), "{mode:?}");
        assert_eq!(read(second).await.0, StatusCode::OK);
        // Both places back: the next request has one left after its own.
        let next = call(app, "/work").await;
        assert_eq!(limit_headers(next.headers()), expected(1), "{mode:?}");
        assert_eq!(read(next).await.0, StatusCode::OK);
    }
}

/// Shadow mode: a request over the in-flight limit is let through (the
/// decision, not allowed, only reported) and holds no place: the place it
/// did not take is free for the next request once the one inside ends,
/// and its own end gives back nobody's place.
#[tokio::test]
async fn in_shadow_mode_a_request_over_the_in_flight_limit_is_let_through_without_a_place() {
    let decisions = Arc::new(std::sync::Mutex::new(Vec::new()));
    let throttle = places("shadow", 1)
        .shadow(true)
        .on_decision({
            let decisions = Arc::clone(&decisions);
            move |decision| decisions.lock().unwrap().push(decision.allowed)
        })
        .build()
        .unwrap();
    let (a, b) = (Gate::new(), Gate::new());
    let (hold_a, hold_b) = (a.clone(), b.clone());
    let app = Router::new()
        .route("/a", get(move || async move { hold_a.hold().await }))
        .route("/b", get(move || async move { hold_b.hold().await }))
        .route("/work", get(|| async { "done" }))
        .route_layer(throttle.layer());
    let allowed = || decisions.lock().unwrap().clone();

    let first = tokio::spawn(call(app.clone(), "/a"));
    a.inside().await;
    // Over the limit, let in all the same.
    let over = tokio::spawn(call(app.clone(), "/b"));
    b.inside().await;
    assert_eq!(allowed(), [true, false]);

    a.let_out(1);
    assert_eq!(read(first.await.unwrap()).await.0, StatusCode::OK);
    // The request over the limit, still inside, holds no place.
    let third = tokio::spawn(call(app.clone(), "/a"));
    a.inside().await;
    assert_eq!(allowed(), [true, false, true]);

    // Its end gives back no place: the third still holds the only one.
    b.let_out(1);
    assert_eq!(read(over.await.unwrap()).await.0, StatusCode::OK);
    assert_eq!(
        read(call(app.clone(), "/work").await).await.0,
        StatusCode::OK
    );
    assert_eq!(allowed(), [true, false, true, false]);

    a.let_out(1);
    assert_eq!(read(third.await.unwrap()).await.0, StatusCode::OK);
    assert_eq!(read(call(app, "/work").await).await.0, StatusCode::OK);
    assert_eq!(allowed(), [true, false, true, false, true]);
}

/// In a handler, `acquire` in shadow mode over the limit returns a permit
/// whose decision says "not allowed" and that gives back no place.
#[tokio::test]
async fn in_shadow_mode_acquire_over_the_limit_returns_a_permit_that_holds_no_place() {
    let throttle = places("shadow-acquire", 1).shadow(true).build().unwrap();
    let request = request([10, 0, 0, 8]);
    let held = throttle.acquire(&request).await.unwrap();
    assert!(held.decision().allowed);
    let over = throttle.acquire(&request).await.unwrap();
    assert!(!over.decision().allowed);
    assert_eq!(over.decision().remaining, 0);
    drop(over);
    // Still full: dropping the shadow permit freed nothing.
    assert!(!throttle.acquire(&request).await.unwrap().decision().allowed);
    drop(held);
    assert!(throttle.acquire(&request).await.unwrap().decision().allowed);
}

// ------------------------------------------------------------------------
// In memory, a key's place entry goes when its last place is given back.

/// Bytes allocated and not yet freed, per thread: the in-memory backend
/// keeps no public count of its place entries (`len()` counts rate keys
/// only), so their memory is what shows whether they are removed.
struct CountingAllocator;

thread_local! {
    static LIVE_BYTES: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
}

fn count(delta: isize) {
    let _ = LIVE_BYTES.try_with(|live| live.set(live.get() + delta));
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let pointer = unsafe { std::alloc::System.alloc(layout) };
        if !pointer.is_null() {
            count(layout.size() as isize);
        }
        pointer
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        let pointer = unsafe { std::alloc::System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            count(layout.size() as isize);
        }
        pointer
    }
    unsafe fn dealloc(&self, pointer: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(pointer, layout) };
        count(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, pointer: *mut u8, layout: std::alloc::Layout, size: usize) -> *mut u8 {
        let moved = unsafe { std::alloc::System.realloc(pointer, layout, size) };
        if !moved.is_null() {
            count(size as isize - layout.size() as isize);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn live_bytes() -> isize {
    LIVE_BYTES.with(std::cell::Cell::get)
}

/// Clients that come and go leave nothing behind in memory: once a key's
/// last place is given back its entry is removed, so 20,000 clients that
/// each took and gave back a place (through the layer, one after another)
/// cost no more memory than the first few. Kept at zero, their entries
/// would hold at least 40 bytes each (800 kB).
#[tokio::test]
async fn in_memory_a_key_without_places_held_takes_no_memory() {
    let memory = InMemoryBackend::new();
    let throttle = HttpThrottle::builder()
        .uid("come-and-go")
        .max_in_flight(2)
        .backend(memory.clone())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/work", get(|| async { "done" }))
        .route_layer(throttle.layer());
    let client = |i: u32| {
        let request = Request::get("/work")
            .extension(ConnectInfo(SocketAddr::from((i.to_be_bytes(), 1))))
            .body(Body::empty())
            .unwrap();
        let app = app.clone();
        async move {
            let (status, _) = read(app.oneshot(request).await.unwrap()).await;
            assert_eq!(status, StatusCode::OK);
        }
    };
    // Every shard's table and whatever the first requests set up.
    for i in 0..2_000 {
        client(0x0a00_0000 + i).await;
    }
    let before = live_bytes();
    for i in 0..20_000 {
        client(0x0b00_0000 + i).await;
    }
    let grown = live_bytes() - before;
    assert!(
        grown < 16 * 1024,
        "20,000 clients gone left {grown} bytes behind"
    );
    // The one public count, of rate keys, never sees place entries.
    assert!(memory.is_empty());
}
