//! Per-request cost of the middleware, never throttled (and, in the
//! `rejected_` groups, always throttled): traffik's
//! `ThrottleService` (in-memory backend) beside the bare service and
//! tower_governor's `GovernorLayer` (peer-IP key), in one harness and one run.
//! traffik is measured twice: with its default key (client, method and route)
//! and with `.shared_across_routes()` (client only, tower_governor's key).
//!
//! ```sh
//! cargo bench -p traffik-benches --bench layer
//! cargo bench -p traffik-benches --bench layer -- --warm-up-time 1 --measurement-time 3   # quicker
//! ```
//!
//! Each iteration sends one request, built outside the timed section, with a
//! `ConnectInfo<SocketAddr>` extension (the same for both layers), to a
//! service polled on a current-thread Tokio runtime: a trivial
//! `tower::service_fn`, and an axum `Router` with one route, prepared as
//! `axum::serve` prepares it (`with_state(())`). The limits are
//! far above what a benchmark can reach (traffik: 1,000,000,000/s token
//! bucket; governor: 1 per ns with a burst of 2^32 - 1), so nothing is ever
//! throttled: this measures the overhead of an allowed request. The
//! `rejected_` groups time the opposite: every request over its limit,
//! answered 429.

use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use governor::clock::QuantaInstant;
use governor::middleware::NoOpMiddleware;
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::PeerIpKeyExtractor;
use tower_governor::GovernorLayer;
use traffik::backend::InMemoryBackend;
use traffik::{HttpThrottle, MiddlewareThrottle, ThrottleLayer};

fn request() -> Request<Body> {
    let mut request = Request::get("/hello").body(Body::empty()).unwrap();
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 1], 40_000))));
    request
}

/// traffik's default: one counter per client, method and route.
fn traffik_layer() -> ThrottleLayer {
    let throttle = HttpThrottle::builder()
        .rate("1000000000/s")
        .build()
        .unwrap();
    ThrottleLayer::new(InMemoryBackend::new()).rule(MiddlewareThrottle::new(throttle))
}

/// One counter per client IP for every route and method: what
/// tower_governor's `PeerIpKeyExtractor` counts.
fn traffik_per_ip_layer() -> ThrottleLayer {
    let throttle = HttpThrottle::builder()
        .rate("1000000000/s")
        .shared_across_routes()
        .build()
        .unwrap();
    ThrottleLayer::new(InMemoryBackend::new()).rule(MiddlewareThrottle::new(throttle))
}

fn governor_layer() -> GovernorLayer<PeerIpKeyExtractor, NoOpMiddleware<QuantaInstant>, Body> {
    let config = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .finish()
        .unwrap();
    GovernorLayer::new(config)
}

async fn hello(_request: Request<Body>) -> Result<Response<Body>, Infallible> {
    Ok(Response::new(Body::from("Hello, world!")))
}

/// Times `service.ready().await?.call(request).await` and the drop of the
/// response, per request. Requests are made outside the timed sections
/// (chunks of 128, small enough to stay in cache).
fn bench_service<S, B>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    service: S,
) where
    S: Service<Request<Body>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
{
    bench_answer(group, rt, name, service, http::StatusCode::OK)
}

/// Times requests to `service`, first checking that it answers `expected`.
fn bench_answer<S, B>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    service: S,
    expected: http::StatusCode,
) where
    S: Service<Request<Body>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
{
    // Check once what the request is answered (the first request of a
    // throttled case spends its one allowed hit here).
    let response = rt.block_on(service.clone().oneshot(request())).unwrap();
    let response = if expected == http::StatusCode::OK {
        response
    } else {
        rt.block_on(service.clone().oneshot(request())).unwrap()
    };
    assert_eq!(response.status(), expected, "{name}");
    group.bench_function(name, |b| {
        b.to_async(rt).iter_custom(|iters| {
            let mut service = service.clone();
            async move {
                let mut total = Duration::ZERO;
                let mut left = iters;
                let mut requests = Vec::with_capacity(CHUNK);
                while left > 0 {
                    let n = left.min(CHUNK as u64) as usize;
                    left -= n as u64;
                    requests.extend((0..n).map(|_| request()));
                    let start = Instant::now();
                    for request in requests.drain(..) {
                        let ready = service.ready().await.unwrap();
                        black_box(ready.call(request).await.unwrap());
                    }
                    total += start.elapsed();
                }
                total
            }
        })
    });
}

const CHUNK: usize = 128;

fn layers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();

    let mut group = c.benchmark_group("layer_service_fn");
    let bare = tower::service_fn(hello);
    bench_service(&mut group, &rt, "bare", bare);
    bench_service(&mut group, &rt, "traffik", traffik_layer().layer(bare));
    bench_service(
        &mut group,
        &rt,
        "traffik_per_ip",
        traffik_per_ip_layer().layer(bare),
    );
    bench_service(
        &mut group,
        &rt,
        "tower_governor",
        governor_layer().layer(bare),
    );
    group.finish();

    let mut group = c.benchmark_group("layer_axum_router");
    let router = || Router::new().route("/hello", get(|| async { "Hello, world!" }));
    // Prepared as `axum::serve` prepares an app (`into_make_service` calls
    // `with_state(())`): routes and their layers become services once.
    // Called without it, axum would re-apply every layer on each request.
    let served = |router: Router| router.with_state::<()>(());
    bench_service(&mut group, &rt, "bare", served(router()));
    bench_service(
        &mut group,
        &rt,
        "traffik",
        served(router().layer(traffik_layer())),
    );
    bench_service(
        &mut group,
        &rt,
        "traffik_per_ip",
        served(router().layer(traffik_per_ip_layer())),
    );
    bench_service(
        &mut group,
        &rt,
        "tower_governor",
        served(router().layer(governor_layer())),
    );
    group.finish();
}

/// The cost of a rejection: every timed request is over its limit (1 a day,
/// spent by the first request) and answered 429 by the layer, with its
/// `Retry-After` and body, the inner service never called. Under a flood
/// this is most of what a rate limiter does.
fn rejections(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let traffik = || {
        let throttle = HttpThrottle::builder()
            .rate("1/day")
            .shared_across_routes()
            .build()
            .unwrap();
        ThrottleLayer::new(InMemoryBackend::new()).rule(MiddlewareThrottle::new(throttle))
    };
    let governor = || {
        let config = GovernorConfigBuilder::default()
            .per_second(86_400)
            .burst_size(1)
            .finish()
            .unwrap();
        GovernorLayer::<PeerIpKeyExtractor, NoOpMiddleware<QuantaInstant>, Body>::new(config)
    };
    let too_many = http::StatusCode::TOO_MANY_REQUESTS;
    let mut group = c.benchmark_group("rejected_service_fn");
    let bare = tower::service_fn(hello);
    bench_answer(&mut group, &rt, "traffik", traffik().layer(bare), too_many);
    bench_answer(
        &mut group,
        &rt,
        "tower_governor",
        governor().layer(bare),
        too_many,
    );
    group.finish();
    let mut group = c.benchmark_group("rejected_axum_router");
    let router = || Router::new().route("/hello", get(|| async { "Hello, world!" }));
    let served = |router: Router| router.with_state::<()>(());
    bench_answer(
        &mut group,
        &rt,
        "traffik",
        served(router().layer(traffik())),
        too_many,
    );
    bench_answer(
        &mut group,
        &rt,
        "tower_governor",
        served(router().layer(governor())),
        too_many,
    );
    group.finish();
}

/// Where traffik's per-request time goes (same request, same throttle
/// settings as above): the whole check, then its parts done by hand.
fn anatomy(c: &mut Criterion) {
    use futures_util::FutureExt as _;
    use std::fmt::Write as _;
    use std::hash::BuildHasher as _;
    use traffik::key::{Key, Scope};
    use traffik::{Quota, Rate, Strategy};

    let mut group = c.benchmark_group("anatomy");
    let memory = InMemoryBackend::new();
    let throttle = HttpThrottle::builder()
        .uid("api")
        .rate("1000000000/s")
        .backend(memory.clone())
        .build()
        .unwrap();
    let req = request();
    group.bench_function("throttle_hit", |b| {
        b.iter(|| black_box(throttle.hit(&req).now_or_never().unwrap().unwrap()))
    });
    let ip = std::net::IpAddr::from([10, 0, 0, 1]);
    let method = http::Method::GET;
    group.bench_function("key_with_fmt", |b| {
        b.iter(|| {
            let (prefix, uid, route) = ("traffik", "api", "/hello");
            let mut key = String::with_capacity(prefix.len() + uid.len() + route.len() + 48);
            key.push_str(prefix);
            key.push(':');
            key.push_str(uid);
            key.push(':');
            let _ = write!(key, "{}", black_box(ip));
            let _ = write!(key, ":http:{}:{}", method.as_str(), route);
            black_box(key)
        })
    });
    group.bench_function("key_without_fmt", |b| {
        b.iter(|| {
            let (prefix, uid, route) = ("traffik", "api", "/hello");
            let mut key = String::with_capacity(prefix.len() + uid.len() + route.len() + 48);
            key.push_str(prefix);
            key.push(':');
            key.push_str(uid);
            key.push(':');
            if let std::net::IpAddr::V4(v4) = black_box(ip) {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        key.push('.');
                    }
                    let mut digits = [0u8; 3];
                    let mut n = octet;
                    let mut len = 0;
                    loop {
                        digits[2 - len] = b'0' + n % 10;
                        len += 1;
                        n /= 10;
                        if n == 0 {
                            break;
                        }
                    }
                    key.push_str(std::str::from_utf8(&digits[3 - len..]).unwrap());
                }
            }
            key.push_str(":http:");
            key.push_str(method.as_str());
            key.push(':');
            key.push_str(route);
            black_box(key)
        })
    });
    let key = "traffik:api:10.0.0.1:http:GET:/hello".to_owned();
    let quota = Quota::new(
        Rate::per_second(1_000_000_000).unwrap(),
        Strategy::TokenBucket,
    )
    .unwrap();
    // The same key, typed (its text is `key`).
    let typed = Key::client("api", ip, 64, Scope::http(&method, "/hello"));
    assert_eq!(typed.text("traffik"), key);
    group.bench_function("memory_decide", |b| {
        b.iter(|| black_box(memory.hit(black_box(&typed), &quota, 1).unwrap()))
    });
    let sip = std::hash::RandomState::new();
    group.bench_function("siphash13_key", |b| {
        b.iter(|| black_box(sip.hash_one(black_box(key.as_str()))))
    });
    let fold = foldhash::quality::RandomState::default();
    group.bench_function("foldhash_key", |b| {
        b.iter(|| black_box(fold.hash_one(black_box(key.as_str()))))
    });
    let arc: std::sync::Arc<dyn Send + Sync> = std::sync::Arc::new(0u64);
    group.bench_function("arc_clone_drop", |b| {
        b.iter(|| black_box(std::sync::Arc::clone(black_box(&arc))))
    });
    group.finish();
}

criterion_group!(benches, layers, rejections, anatomy);
criterion_main!(benches);
