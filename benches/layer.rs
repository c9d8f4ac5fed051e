//! Per-request cost of the middleware, never throttled: traffik's
//! `ThrottleService` (in-memory backend) beside the bare service and
//! tower_governor's `GovernorLayer` (peer-IP key), in one harness and one run.
//!
//! ```sh
//! cargo bench --bench layer
//! cargo bench --bench layer -- --warm-up-time 1 --measurement-time 3   # quicker
//! ```
//!
//! Each iteration sends one request, built outside the timed section, with a
//! `ConnectInfo<SocketAddr>` extension (the same for both layers), to a
//! service polled on a current-thread Tokio runtime: a trivial
//! `tower::service_fn`, and an axum `Router` with one route. The limits are
//! far above what a benchmark can reach (traffik: 1,000,000,000/s token
//! bucket; governor: 1 per ns with a burst of 2^32 - 1), so nothing is ever
//! throttled: this measures the overhead of an allowed request.

use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::PeerIpKeyExtractor;
use tower_governor::GovernorLayer;
use governor::clock::QuantaInstant;
use governor::middleware::NoOpMiddleware;
use traffik::backend::InMemoryBackend;
use traffik::{HttpThrottle, MiddlewareThrottle, ThrottleLayer};

fn request() -> Request<Body> {
    let mut request = Request::get("/hello").body(Body::empty()).unwrap();
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 1], 40_000))));
    request
}

fn traffik_layer() -> ThrottleLayer {
    let throttle = HttpThrottle::builder()
        .rate("1000000000/s")
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

/// Times `service.ready().await?.call(request).await` per request. Requests
/// are made, and responses dropped, outside the timed sections (chunks of
/// 1024).
fn bench_service<S, B>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    service: S,
) where
    S: Service<Request<Body>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
{
    // Check once that the request is answered 200, not throttled.
    let response = rt.block_on(service.clone().oneshot(request())).unwrap();
    assert_eq!(response.status(), http::StatusCode::OK, "{name}");
    group.bench_function(name, |b| {
        b.to_async(rt).iter_custom(|iters| {
            let mut service = service.clone();
            async move {
                let mut total = Duration::ZERO;
                let mut left = iters;
                let mut responses = Vec::with_capacity(CHUNK);
                while left > 0 {
                    let n = left.min(CHUNK as u64) as usize;
                    left -= n as u64;
                    let mut requests: Vec<_> = (0..n).map(|_| request()).collect();
                    let start = Instant::now();
                    for request in requests.drain(..) {
                        let ready = service.ready().await.unwrap();
                        responses.push(ready.call(request).await.unwrap());
                    }
                    total += start.elapsed();
                    black_box(&responses);
                    responses.clear();
                }
                total
            }
        })
    });
}

const CHUNK: usize = 1024;

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
    bench_service(&mut group, &rt, "tower_governor", governor_layer().layer(bare));
    group.finish();

    let mut group = c.benchmark_group("layer_axum_router");
    let router = || Router::new().route("/hello", get(|| async { "Hello, world!" }));
    bench_service(&mut group, &rt, "bare", router());
    bench_service(&mut group, &rt, "traffik", router().layer(traffik_layer()));
    bench_service(&mut group, &rt, "tower_governor", router().layer(governor_layer()));
    group.finish();
}

criterion_group!(benches, layers);
criterion_main!(benches);
