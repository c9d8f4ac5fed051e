//! The HTTP middleware behind a real server: `axum::serve` with connect info
//! on 127.0.0.1:0, concurrent clients over TCP (hyper-util's legacy client),
//! and a plain Hyper server around a Tower service.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use common::{sf_item, sf_param, STRATEGIES};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use traffik::backend::InMemoryBackend;
use traffik::{
    Error, HttpThrottle, MiddlewareThrottle, RateLimitHeaders, ThrottleLayer, TrustedProxies,
};

async fn ok() -> &'static str {
    "ok"
}

/// Serves `app` with connect info on an ephemeral port.
async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
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

/// Serves `app` WITHOUT connect info (a common mistake).
async fn serve_anonymous(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

async fn fetch(
    client: &HttpClient,
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = client
        .request(builder.body(Full::new(Bytes::new())).unwrap())
        .await
        .expect("the server answers");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

/// Fires `n` concurrent requests; returns (number of 200s, number of 429s, the
/// 429 replies).
async fn burst(
    client: &HttpClient,
    addr: SocketAddr,
    method: Method,
    path: &str,
    n: usize,
) -> (usize, usize, Vec<Reply>) {
    let mut tasks = JoinSet::new();
    for _ in 0..n {
        let client = client.clone();
        let method = method.clone();
        let path = path.to_owned();
        tasks.spawn(async move { fetch(&client, addr, method, &path, &[]).await });
    }
    let (mut ok, mut throttled, mut rejected) = (0, 0, Vec::new());
    while let Some(reply) = tasks.join_next().await {
        let reply = reply.unwrap();
        match reply.status.as_u16() {
            200 => ok += 1,
            429 => {
                throttled += 1;
                rejected.push(reply);
            }
            other => panic!("unexpected status {other}: {reply:?}"),
        }
    }
    (ok, throttled, rejected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_concurrent_requests_at_limit_three() {
    let t = HttpThrottle::builder()
        .uid("sv-five")
        .limit(3)
        .minutes(1)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let app = Router::new().route("/hello", get(ok).route_layer(t.layer()));
    let addr = serve(app).await;
    let (ok, throttled, rejected) = burst(&client(), addr, Method::GET, "/hello", 5).await;
    assert_eq!((ok, throttled), (3, 2));
    for reply in rejected {
        let secs: u64 = reply.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&secs));
        assert_eq!(
            reply.body,
            format!("Too many requests. Retry in {secs} seconds.")
        );
        assert_eq!(reply.header("cache-control"), Some("no-store"));
        assert!(reply
            .header("content-type")
            .unwrap()
            .starts_with("text/plain"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_at_limit_twenty_for_every_strategy() {
    // One route per strategy; 20 per hour so that nothing refills during the test.
    let memory = InMemoryBackend::new();
    let mut app = Router::new();
    let mut throttles = Vec::new();
    for strategy in STRATEGIES {
        let t = HttpThrottle::builder()
            .uid(format!("sv-fifty-{}", strategy.name()))
            .limit(20)
            .hours(1)
            .strategy(strategy)
            .backend(memory.clone())
            .build()
            .unwrap();
        app = app.route(
            &format!("/{}", strategy.name()),
            get(ok).route_layer(t.layer()),
        );
        throttles.push(t);
    }
    let addr = serve(app).await;
    let client = client();
    // All strategies at once: 250 requests in flight.
    let mut runs = JoinSet::new();
    for strategy in STRATEGIES {
        let client = client.clone();
        runs.spawn(async move {
            let path = format!("/{}", strategy.name());
            let (ok, throttled, _) = burst(&client, addr, Method::GET, &path, 50).await;
            (strategy, ok, throttled)
        });
    }
    while let Some(run) = runs.join_next().await {
        let (strategy, ok, throttled) = run.unwrap();
        assert_eq!((ok, throttled), (20, 30), "{strategy}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_rules_through_a_real_server() {
    let memory = InMemoryBackend::new();
    let writes = HttpThrottle::builder()
        .uid("sv-writes")
        .limit(2)
        .hours(1)
        .headers(RateLimitHeaders::Ietf)
        .build()
        .unwrap();
    let api = HttpThrottle::builder()
        .uid("sv-api")
        .limit(4)
        .hours(1)
        .build()
        .unwrap();
    let layer = ThrottleLayer::new(memory)
        .rule(MiddlewareThrottle::new(writes).methods(["post", "put"]))
        .rule(MiddlewareThrottle::new(api).path("/api/"));
    let app = Router::new()
        .route("/items", get(ok).post(ok))
        .route("/api/items", get(ok))
        .layer(layer);
    let addr = serve(app).await;
    let client = client();

    let (ok, throttled, rejected) = burst(&client, addr, Method::POST, "/items", 5).await;
    assert_eq!((ok, throttled), (2, 3));
    for reply in &rejected {
        let (name, params) = sf_item(reply.header("ratelimit").unwrap());
        assert_eq!(name, "\"sv-writes\"");
        assert_eq!(sf_param(&params, "r"), 0);
    }
    // Reads of /items are not throttled.
    let (ok, throttled, _) = burst(&client, addr, Method::GET, "/items", 10).await;
    assert_eq!((ok, throttled), (10, 0));
    // /api/ has its own limit.
    let (ok, throttled, _) = burst(&client, addr, Method::GET, "/api/items", 6).await;
    assert_eq!((ok, throttled), (4, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ietf_headers_count_down_over_the_wire() {
    let t = HttpThrottle::builder()
        .uid("sv-ietf")
        .limit(3)
        .seconds(60)
        .headers(RateLimitHeaders::Ietf)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let app = Router::new().route("/h", get(ok).route_layer(t.layer()));
    let addr = serve(app).await;
    let client = client();
    for remaining in [2, 1, 0] {
        let reply = fetch(&client, addr, Method::GET, "/h", &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("ratelimit-policy"),
            Some("\"sv-ietf\";q=3;w=60")
        );
        let (_, params) = sf_item(reply.header("ratelimit").unwrap());
        assert_eq!(sf_param(&params, "r"), remaining);
        assert!((1..=60).contains(&sf_param(&params, "t")));
    }
    let reply = fetch(&client, addr, Method::GET, "/h", &[]).await;
    assert_eq!(reply.status, 429);
    let secs: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&secs));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_forwarding_headers_through_a_real_server() {
    let spoofable = HttpThrottle::builder()
        .uid("sv-xff-ignored")
        .limit(2)
        .hours(1)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let behind_proxy = HttpThrottle::builder()
        .uid("sv-xff-trusted")
        .limit(2)
        .hours(1)
        .trusted_proxies(TrustedProxies::new(["127.0.0.0/8"]).unwrap())
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/direct", get(ok).route_layer(spoofable.layer()))
        .route("/proxied", get(ok).route_layer(behind_proxy.layer()));
    let addr = serve(app).await;
    let client = client();

    // Without trusted proxies every spoofed address is the same peer.
    let mut statuses = Vec::new();
    for spoof in ["1.1.1.1", "2.2.2.2", "3.3.3.3"] {
        let reply = fetch(
            &client,
            addr,
            Method::GET,
            "/direct",
            &[("x-forwarded-for", spoof)],
        )
        .await;
        statuses.push(reply.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 429]);

    // The peer 127.0.0.1 is trusted: each forwarded client has its own count.
    let mut statuses = Vec::new();
    for client_ip in ["1.1.1.1", "2.2.2.2", "3.3.3.3", "1.1.1.1", "1.1.1.1"] {
        let chain = format!("6.6.6.6, {client_ip}, 127.0.0.9");
        let reply = fetch(
            &client,
            addr,
            Method::GET,
            "/proxied",
            &[("x-forwarded-for", chain.as_str())],
        )
        .await;
        statuses.push(reply.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_without_connect_info_answers_500_with_the_fix() {
    let t = HttpThrottle::builder()
        .uid("sv-anon")
        .limit(3)
        .minutes(1)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let app = Router::new().route("/a", get(ok).route_layer(t.layer()));
    let addr = serve_anonymous(app).await;
    let reply = fetch(&client(), addr, Method::GET, "/a", &[]).await;
    assert_eq!(reply.status, 500);
    assert!(
        reply.body.contains("into_make_service_with_connect_info"),
        "{}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hit_in_handlers_under_concurrency() {
    let t = HttpThrottle::builder()
        .uid("sv-handler")
        .limit(3)
        .minutes(1)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let app = Router::new().route(
        "/h",
        get(move |req: axum::extract::Request| {
            let t = t.clone();
            async move {
                // Spawned: the future owns everything it needs.
                let decision = tokio::spawn(t.hit(&req)).await.unwrap()?;
                Ok::<_, Error>(format!("remaining {}", decision.remaining))
            }
        }),
    );
    let addr = serve(app).await;
    let (ok, throttled, rejected) = burst(&client(), addr, Method::GET, "/h", 5).await;
    assert_eq!((ok, throttled), (3, 2));
    for reply in rejected {
        assert!(reply.body.starts_with("Too many requests. Retry in "));
        assert!(reply.header("retry-after").is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hit_with_headers_in_handlers_under_concurrency() {
    let t = HttpThrottle::builder()
        .uid("sv-report")
        .limit(3)
        .minutes(1)
        .headers(RateLimitHeaders::Legacy)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let app = Router::new().route(
        "/h",
        get(move |req: axum::extract::Request| {
            let t = t.clone();
            async move {
                let report = t.hit_with_headers(&req).await?;
                Ok::<_, Error>((report, "ok"))
            }
        }),
    );
    let addr = serve(app).await;
    let client = client();
    let mut tasks = JoinSet::new();
    for _ in 0..5 {
        let client = client.clone();
        tasks.spawn(async move { fetch(&client, addr, Method::GET, "/h", &[]).await });
    }
    let (mut remaining, mut throttled) = (Vec::new(), 0);
    while let Some(reply) = tasks.join_next().await {
        let reply = reply.unwrap();
        assert_eq!(reply.header("x-ratelimit-limit"), Some("3"), "{reply:?}");
        match reply.status.as_u16() {
            200 => remaining.push(reply.header("x-ratelimit-remaining").unwrap().to_owned()),
            429 => {
                throttled += 1;
                assert_eq!(reply.header("x-ratelimit-remaining"), Some("0"));
                assert!(reply.header("retry-after").is_some());
            }
            other => panic!("unexpected status {other}: {reply:?}"),
        }
    }
    // Each admitted request saw its own count: 2, 1 and 0 left.
    remaining.sort();
    assert_eq!(
        (remaining, throttled),
        (vec!["0".to_owned(), "1".into(), "2".into()], 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connection_is_one_client() {
    // Sequential requests on one pooled connection: same peer, same counter.
    let t = HttpThrottle::builder()
        .uid("sv-keepalive")
        .limit(2)
        .minutes(1)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let app = Router::new().route("/k", get(ok).route_layer(t.layer()));
    let addr = serve(app).await;
    let client = client();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            fetch(&client, addr, Method::GET, "/k", &[])
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_hyper_server_around_a_tower_service() {
    use hyper::server::conn::http1;
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceBuilder;

    let layer = ThrottleLayer::new(InMemoryBackend::new())
        .rule(MiddlewareThrottle::new(
            HttpThrottle::builder()
                .uid("sv-hyper")
                .limit(3)
                .hours(1)
                // No `MatchedPath` outside axum: one counter for every path.
                .shared_across_routes()
                .build()
                .unwrap(),
        ))
        // The service answers in `Full<Bytes>`: responses use `ResponseBody`.
        .any_body();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let service = ServiceBuilder::new()
                // The peer address as a plain `SocketAddr` extension, inserted
                // before the throttle layer runs.
                .map_request(move |mut req: Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer);
                    req
                })
                .layer(layer.clone())
                .service_fn(|_req: Request<hyper::body::Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hyper"))))
                });
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                    .await;
            });
        }
    });
    let (ok, throttled, rejected) = burst(&client(), addr, Method::GET, "/", 5).await;
    assert_eq!((ok, throttled), (3, 2));
    assert!(rejected[0].body.starts_with("Too many requests."));
    // Another path does not get around the limit.
    let reply = fetch(&client(), addr, Method::GET, "/made-up", &[]).await;
    assert_eq!(reply.status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handlers_do_not_block_the_throttle() {
    // Requests held by a handler still count at once: the handler waits for
    // a gate that opens only after both 429s have come back, so a throttle
    // that decided after handlers finish would never answer them.
    let t = HttpThrottle::builder()
        .uid("sv-slow")
        .limit(2)
        .minutes(1)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let held = Arc::clone(&gate);
    let app = Router::new().route(
        "/slow",
        get(move || {
            let held = Arc::clone(&held);
            async move {
                held.acquire().await.unwrap().forget();
                "slow"
            }
        })
        .route_layer(t.layer()),
    );
    let addr = serve(app).await;
    let client = client();
    let mut tasks = JoinSet::new();
    for _ in 0..4 {
        let client = client.clone();
        tasks.spawn(async move { fetch(&client, addr, Method::GET, "/slow", &[]).await });
    }
    let mut next_status = async || {
        // A liveness bound (never a performance figure): a deadlock fails here.
        let reply = tokio::time::timeout(Duration::from_secs(10), tasks.join_next())
            .await
            .expect("a reply while the handlers are held")
            .unwrap()
            .unwrap();
        reply.status.as_u16()
    };
    assert_eq!([next_status().await, next_status().await], [429, 429]);
    gate.add_permits(2);
    assert_eq!([next_status().await, next_status().await], [200, 200]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_requests_are_throttled_like_any_request() {
    use axum::extract::ws::WebSocketUpgrade;

    let t = HttpThrottle::builder()
        .uid("sv-ws-upgrade")
        .limit(1)
        .hours(1)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let app = Router::new().route(
        "/ws",
        get(|ws: WebSocketUpgrade| async move {
            ws.on_upgrade(|mut socket| async move {
                let _ = socket
                    .send(axum::extract::ws::Message::Text("hi".into()))
                    .await;
            })
        })
        .route_layer(t.layer()),
    );
    let addr = serve(app).await;
    let url = format!("ws://{addr}/ws");
    let (mut socket, response) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("the first handshake is allowed");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    use futures_util::StreamExt;
    let first = socket.next().await.unwrap().unwrap();
    assert_eq!(first.into_text().unwrap().as_str(), "hi");

    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            assert!(response.headers().contains_key("retry-after"));
        }
        Err(other) => panic!("expected an HTTP 429, got {other:?}"),
        Ok(_) => panic!("the second handshake must be throttled"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_requests_are_all_admitted_in_turn() {
    use traffik::Exceeded;

    let t = HttpThrottle::builder()
        .uid("sv-wait")
        .limit(1)
        .milliseconds(300)
        .on_exceeded(Exceeded::Wait {
            max: Duration::from_secs(10),
        })
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let app = Router::new().route("/w", get(ok).route_layer(t.layer()));
    let addr = serve(app).await;
    let start = std::time::Instant::now();
    let (ok, throttled, _) = burst(&client(), addr, Method::GET, "/w", 3).await;
    assert_eq!((ok, throttled), (3, 0));
    // One admitted at once, then one per 300 ms.
    assert!(
        start.elapsed() >= Duration::from_millis(550),
        "{:?}",
        start.elapsed()
    );
}
