//! In-flight limits (`.max_in_flight(n)`): at most `n` requests of one
//! client in progress at once, in memory and on Redis; places given back
//! when the response body ends or is dropped; leases on Redis; waiting in
//! line under `Exceeded::Wait`; WebSocket sockets held open per client
//! (a permit moved into `on_upgrade`).

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
use traffik::{Error, Exceeded, HttpThrottle, MiddlewareThrottle, Quota, ThrottleLayer};

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
    use traffik::backend::RedisBackend;

    fn redis_url() -> String {
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
    }

    async fn backend(test: &str) -> Option<RedisBackend> {
        backend_with(test, false).await
    }

    /// A backend on `REDIS_URL` with this process's prefix for `test`;
    /// `persistent`: a second one keeps the first one's keys.
    async fn backend_with(test: &str, persistent: bool) -> Option<RedisBackend> {
        let prefix = format!("traffik-test-inflight-{test}-{}", std::process::id());
        match RedisBackend::builder(redis_url())
            .prefix(prefix)
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
