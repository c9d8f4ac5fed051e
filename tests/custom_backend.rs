//! A backend written outside the crate: a mutex-protected
//! `HashMap<String, Vec<State>>` (one state per rate, under the key's text)
//! deciding with [`strategy::decide`]. It is used
//! through a global `ThrottleLayer`, a per-route `t.layer()`, `hit` in a
//! handler and a dynamic scope — proving `ThrottleBackend` is implementable
//! by users.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use http::{Request, StatusCode};
use tower::{service_fn, Layer, ServiceExt};
use traffik::backend::{self, BackendFuture, BoxFuture, Op, ThrottleBackend};
use traffik::key::Key;
use traffik::strategy::{self, Decisions, State};
use traffik::{Error, HttpThrottle, MiddlewareThrottle, Quota, Strategy, ThrottleLayer};

/// Every strategy (`Strategy` is `#[non_exhaustive]` and keeps no public list).
const STRATEGIES: [Strategy; 5] = [
    Strategy::TokenBucket,
    Strategy::FixedWindow,
    Strategy::SlidingWindowCounter,
    Strategy::SlidingWindowLog,
    Strategy::Gcra,
];

/// Counters in a `HashMap` behind one mutex.
#[derive(Clone)]
struct MapBackend {
    prefix: String,
    origin: Instant,
    /// Answer through a boxed future that yields first, as a network
    /// backend would, instead of `BackendFuture::ready`.
    deferred: bool,
    /// Keep the keys across `initialize`/`close`.
    persistent: bool,
    map: Arc<Mutex<HashMap<String, Vec<State>>>>,
}

impl MapBackend {
    fn new(prefix: &str) -> Self {
        MapBackend {
            prefix: prefix.to_owned(),
            origin: Instant::now(),
            deferred: false,
            persistent: false,
            map: Arc::default(),
        }
    }

    fn deferred(mut self) -> Self {
        self.deferred = true;
        self
    }

    fn persistent(mut self) -> Self {
        self.persistent = true;
        self
    }

    fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.map.lock().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    }

    /// The decision itself: read the states, decide, write them back, all
    /// under the lock (atomic). A peek stores nothing.
    fn decide_text(&self, key: &str, quotas: &[Quota], cost: u64, op: Op) -> Decisions {
        let now = self.origin.elapsed();
        let mut map = self.map.lock().unwrap();
        if op == Op::Peek {
            let mut states = map.get(key).cloned().unwrap_or_default();
            states.resize(quotas.len(), State::new());
            return strategy::decide(quotas, &mut states, now, cost, op);
        }
        let states = map.entry(key.to_owned()).or_default();
        states.resize(quotas.len(), State::new());
        strategy::decide(quotas, states, now, cost, op)
    }
}

impl ThrottleBackend for MapBackend {
    fn prefix(&self) -> &str {
        &self.prefix
    }

    fn decide(&self, key: &Key<'_>, quotas: &[Quota], cost: u64, op: Op) -> BackendFuture {
        let key = key.text(&self.prefix);
        if !self.deferred {
            return BackendFuture::ready(Ok(self.decide_text(&key, quotas, cost, op)));
        }
        let (this, quotas) = (self.clone(), quotas.to_vec());
        BackendFuture::new(async move {
            tokio::task::yield_now().await;
            Ok(this.decide_text(&key, &quotas, cost, op))
        })
    }

    fn reset(&self) -> BoxFuture<Result<(), Error>> {
        let map = Arc::clone(&self.map);
        Box::pin(async move {
            map.lock().unwrap().clear();
            Ok(())
        })
    }

    fn persistent(&self) -> bool {
        self.persistent
    }
    // `initialize` and `close` keep their default: clear when not persistent.
}

fn peer() -> SocketAddr {
    SocketAddr::from(([198, 51, 100, 9], 50_000))
}

fn get_request(path: &str) -> Request<Body> {
    Request::builder()
        .uri(path)
        .extension(ConnectInfo(peer()))
        .body(Body::empty())
        .unwrap()
}

async fn status(app: &Router, path: &str) -> StatusCode {
    app.clone()
        .oneshot(get_request(path))
        .await
        .unwrap()
        .status()
}

fn throttle(limit: u64, strategy: Strategy) -> traffik::HttpThrottleBuilder {
    HttpThrottle::builder()
        .limit(limit)
        .hours(1)
        .strategy(strategy)
}

#[tokio::test]
async fn custom_backend_behind_a_global_layer_and_a_route_layer() {
    for deferred in [false, true] {
        let mut custom = MapBackend::new("custom");
        if deferred {
            custom = custom.deferred();
        }
        // Global rule: uses the layer's backend (the custom one).
        let global = throttle(5, Strategy::FixedWindow)
            .uid(format!("global-{deferred}"))
            .shared_across_routes()
            .build()
            .unwrap();
        // Per route: the throttle's own backend.
        let per_route = throttle(2, Strategy::TokenBucket)
            .uid(format!("route-{deferred}"))
            .backend(custom.clone())
            .build()
            .unwrap();
        let app = Router::new()
            .route(
                "/limited",
                get(|| async { "limited" }).route_layer(per_route.layer()),
            )
            .route("/open", get(|| async { "open" }))
            .layer(ThrottleLayer::new(custom.clone()).rule(MiddlewareThrottle::new(global)));

        assert_eq!(status(&app, "/limited").await, StatusCode::OK);
        assert_eq!(status(&app, "/limited").await, StatusCode::OK);
        assert_eq!(
            status(&app, "/limited").await,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(status(&app, "/open").await, StatusCode::OK);
        assert_eq!(status(&app, "/open").await, StatusCode::OK);
        assert_eq!(status(&app, "/open").await, StatusCode::TOO_MANY_REQUESTS);

        // Keys are `{prefix}:{uid}:{identity}:{scope}`.
        let keys = custom.keys();
        assert_eq!(
            keys,
            [
                format!("custom:global-{deferred}:198.51.100.9:http:*"),
                format!("custom:route-{deferred}:198.51.100.9:http:GET:/limited"),
            ]
        );

        // reset() clears everything: both limits start over.
        custom.reset().await.unwrap();
        assert!(custom.keys().is_empty());
        assert_eq!(status(&app, "/limited").await, StatusCode::OK);
        assert_eq!(status(&app, "/open").await, StatusCode::OK);
    }
}

#[tokio::test]
async fn custom_backend_on_a_plain_tower_service() {
    let custom = MapBackend::new("plain").deferred();
    let t = throttle(1, Strategy::Gcra).backend(custom).build().unwrap();
    let svc = t.layer().layer(service_fn(|_: Request<Body>| async {
        Ok::<_, Infallible>(http::Response::new(Body::from("ok")))
    }));
    let req = || {
        Request::builder()
            .uri("/")
            .extension(peer())
            .body(Body::empty())
            .unwrap()
    };
    let first = svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let second = svc.oneshot(req()).await.unwrap();
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(second.headers().contains_key(http::header::RETRY_AFTER));
}

#[tokio::test]
async fn hit_and_peek_in_code_for_every_strategy() {
    for strategy in STRATEGIES {
        for deferred in [false, true] {
            let mut custom = MapBackend::new("code");
            if deferred {
                custom = custom.deferred();
            }
            let t = throttle(3, strategy)
                .backend(custom.clone())
                .build()
                .unwrap();
            let req = Request::builder()
                .uri("/x")
                .extension(peer())
                .body(())
                .unwrap();
            let peeked = t.peek(&req).await.unwrap();
            // The decision a hit would get: one unit fewer remaining.
            assert!(
                peeked.allowed && peeked.remaining == 2,
                "{strategy}: {peeked:?}"
            );
            assert!(custom.keys().is_empty(), "{strategy}: peek stores nothing");
            for n in 1..=3u64 {
                let decision = t.hit(&req).await.unwrap();
                assert_eq!(decision.remaining, 3 - n, "{strategy}");
            }
            let error = t.hit(&req).await.unwrap_err();
            let Error::Throttled(throttled) = error else {
                panic!("{strategy}: expected Throttled, got {error:?}");
            };
            assert!(throttled.retry_after_secs() >= 1, "{strategy}");
            let peeked = t.peek(&req).await.unwrap();
            assert!(!peeked.allowed, "{strategy}");
            assert_eq!(custom.keys().len(), 1, "{strategy}");
            custom.reset().await.unwrap();
            assert!(t.hit(&req).await.unwrap().allowed, "{strategy}: reset");
        }
    }
}

/// Key parts that hold `:` cannot make two keys equal: the uid and the
/// route are escaped, and the identity is told apart by what surrounds it.
/// (WebSocket paths and contexts: `tests/websocket.rs`.)
#[tokio::test]
async fn keys_with_colons_in_their_parts_never_collide() {
    use traffik::Identity;

    let custom = MapBackend::new("esc");
    let keyed = |uid: &str, identity: &'static str| {
        throttle(1, Strategy::FixedWindow)
            .uid(uid)
            .shared_across_routes()
            .backend(custom.clone())
            .identifier(move |_: &http::request::Parts| async move { Identity::key(identity) })
            .build()
            .unwrap()
    };
    let req = get_request("/");
    // The uid "esc-a" with the identity "b:x" against the uid "esc-a:b" with
    // the identity "x": both would be `esc:esc-a:b:x:http:*` unescaped.
    let a = keyed("esc-a", "b:x");
    let b = keyed("esc-a:b", "x");
    assert!(a.hit(&req).await.is_ok());
    assert!(b.hit(&req).await.is_ok(), "a's hit spent b's quota");
    assert!(a.hit(&req).await.unwrap_err().is_throttled());
    assert_eq!(
        custom.keys(),
        ["esc:esc-a%3Ab:x:http:*", "esc:esc-a:b:x:http:*"]
    );

    // One throttle, per route: the identity "u:http:GET:/x" on the route
    // "/y" against the identity "u" on the unrouted path "/x:http:GET:/y".
    custom.reset().await.unwrap();
    let per_user = throttle(1, Strategy::FixedWindow)
        .uid("esc-route")
        .identifier(|parts: &http::request::Parts| {
            let user = parts.headers["x-user"].to_str().unwrap().to_owned();
            async move { Identity::key(user) }
        })
        .build()
        .unwrap();
    let app = Router::new()
        .route("/y", get(|| async { "y" }))
        .fallback(|| async { "fallback" })
        .layer(ThrottleLayer::new(custom.clone()).rule(MiddlewareThrottle::new(per_user)));
    let send = |user: &str, path: &str| {
        let mut request = get_request(path);
        request
            .headers_mut()
            .insert("x-user", user.parse().unwrap());
        let app = app.clone();
        async move { app.oneshot(request).await.unwrap().status() }
    };
    assert_eq!(send("u:http:GET:/x", "/y").await, StatusCode::OK);
    assert_eq!(
        send("u", "/x:http:GET:/y").await,
        StatusCode::OK,
        "shared a counter"
    );
    assert_eq!(
        send("u", "/x:http:GET:/y").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        custom.keys(),
        [
            "esc:esc-route:u:http:GET:/x%3Ahttp%3AGET%3A/y",
            "esc:esc-route:u:http:GET:/x:http:GET:/y",
        ]
    );
}

#[tokio::test]
async fn custom_backend_lifecycle_uses_the_trait_defaults() {
    let t = throttle(1, Strategy::FixedWindow)
        .dynamic_backend()
        .build()
        .unwrap();
    let transient = MapBackend::new("transient");
    let persistent = MapBackend::new("persistent").persistent();
    let req = Request::builder()
        .uri("/x")
        .extension(peer())
        .body(())
        .unwrap();
    for backend in [&transient, &persistent] {
        // Also usable as a dynamic (scoped) backend.
        let decision = backend::scope(backend.clone(), async { t.hit(&req).await }).await;
        assert!(decision.unwrap().allowed);
        ThrottleBackend::initialize(backend).await.unwrap();
    }
    assert!(
        transient.keys().is_empty(),
        "initialize clears a non-persistent backend"
    );
    assert_eq!(
        persistent.keys().len(),
        1,
        "a persistent backend keeps its keys"
    );
    ThrottleBackend::close(&persistent).await.unwrap();
    assert_eq!(persistent.keys().len(), 1);
    ThrottleBackend::reset(&persistent).await.unwrap();
    assert!(persistent.keys().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn custom_backend_is_exact_under_concurrency() {
    let custom = MapBackend::new("race").deferred();
    let t = throttle(25, Strategy::SlidingWindowLog)
        .backend(custom.clone())
        .build()
        .unwrap();
    let app = Router::new().route("/", get(|| async { "ok" }).route_layer(t.layer()));
    let handles: Vec<_> = (0..200)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { status(&app, "/").await })
        })
        .collect();
    let mut ok = 0;
    for handle in handles {
        ok += usize::from(handle.await.unwrap() == StatusCode::OK);
    }
    assert_eq!(ok, 25);
}

#[test]
fn state_round_trips_through_plain_numbers() {
    // What a storage-backed custom backend persists: `words()` or `log()`.
    let origin = Duration::from_secs(1_000);
    for strategy in STRATEGIES {
        let quota = Quota::new("3/min".parse().unwrap(), strategy).unwrap();
        let mut state = State::new();
        quota.decide(&mut state, origin, 1);
        let mut restored = match (state.words(), state.log()) {
            (Some(words), _) => State::from_words(words),
            (None, Some(log)) => State::from_log(log.iter().copied()),
            (None, None) => panic!("{strategy}: a used state has words or a log"),
        };
        assert_eq!(restored, state, "{strategy}");
        let later = origin + Duration::from_secs(1);
        assert_eq!(
            quota.decide(&mut restored, later, 1),
            quota.decide(&mut state, later, 1),
            "{strategy}"
        );
    }
}
