//! Instructions per request through the middleware, for `valgrind
//! --tool=callgrind`: the repeatable counterpart of `benches/layer.rs`
//! (wall-clock figures on a shared VM move by ±20% between runs; instruction
//! counts do not move at all). Run it through `scripts/callgrind-layer.sh`,
//! which prints the table the README quotes.
//!
//! ```sh
//! cargo run -p traffik-benches --release --example callgrind_layer -- MODE N
//! ```
//!
//! sends `N` requests (after 10 unmeasured ones, which pay one-time costs
//! such as clock calibration) to the service `MODE` names, one after another
//! on a current-thread runtime, as `benches/layer.rs` does. Callgrind counts
//! only inside `callgrind_layer::measured` (`--toggle-collect`), so building
//! the service is left out. Modes, each around a `tower::service_fn`, or,
//! with an `r` in front, around an axum `Router` with one route prepared as
//! `axum::serve` prepares it:
//!
//! - `bare`: no layer;
//! - `pass`: a layer that does nothing (the cost of being a layer at all);
//! - `none`: traffik's `ThrottleLayer` with no rule;
//! - `ip`: one rule, `.shared_across_routes()` (one counter per client,
//!   tower_governor's key);
//! - `default`: one rule, traffik's default key (client, method, route);
//! - `governor`: tower_governor's `GovernorLayer`, `PeerIpKeyExtractor`;
//! - `two`: as `ip`, with two rates decided all or nothing;
//! - `ip429`, `governor429`: every request over its limit, answered 429.
//!
//! Limits are never reached except in the `429` modes.

use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
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

/// A layer that does nothing: the floor any middleware starts from.
#[derive(Clone)]
struct PassLayer;

#[derive(Clone)]
struct Pass<S>(S);

impl<S> Layer<S> for PassLayer {
    type Service = Pass<S>;
    fn layer(&self, inner: S) -> Pass<S> {
        Pass(inner)
    }
}

impl<S: Service<R>, R> Service<R> for Pass<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }
    fn call(&mut self, request: R) -> S::Future {
        self.0.call(request)
    }
}

/// traffik's layer: no rule (no rates), or one rule with `rates`.
fn traffik(rates: &[&str], per_ip: bool) -> ThrottleLayer {
    let layer = ThrottleLayer::new(InMemoryBackend::new());
    if rates.is_empty() {
        return layer;
    }
    let mut builder = match rates {
        [rate] => HttpThrottle::builder().rate(*rate),
        rates => HttpThrottle::builder().rates(rates.iter().copied()),
    };
    if per_ip {
        builder = builder.shared_across_routes();
    }
    layer.rule(MiddlewareThrottle::new(builder.build().unwrap()))
}

fn governor(
    reject: bool,
) -> GovernorLayer<PeerIpKeyExtractor, NoOpMiddleware<QuantaInstant>, Body> {
    let mut config = GovernorConfigBuilder::default();
    if reject {
        config.per_second(100_000).burst_size(1);
    } else {
        config.per_nanosecond(1).burst_size(u32::MAX);
    }
    GovernorLayer::new(config.finish().unwrap())
}

async fn hello(_request: Request<Body>) -> Result<Response<Body>, Infallible> {
    Ok(Response::new(Body::from("Hello, world!")))
}

async fn send<S, B>(mut service: S, n: usize)
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    for _ in 0..n {
        let request = request();
        let ready = service.ready().await.unwrap();
        black_box(ready.call(request).await.unwrap());
    }
}

fn run<S, B>(rt: &tokio::runtime::Runtime, service: S, n: usize)
where
    S: Service<Request<Body>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
{
    rt.block_on(send(service.clone(), 10));
    measured(rt, service, n)
}

/// The only function callgrind counts in.
#[inline(never)]
fn measured<S, B>(rt: &tokio::runtime::Runtime, service: S, n: usize)
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    rt.block_on(send(service, n))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(mode), Some(n)) = (args.next(), args.next()) else {
        eprintln!("usage: callgrind_layer MODE N (see the example's docs for modes)");
        std::process::exit(2);
    };
    let n: usize = n.parse().expect("N: a number of requests");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let (router, mode) = match mode.strip_prefix('r') {
        Some(rest) => (true, rest.to_string()),
        None => (false, mode),
    };
    let never: &[&str] = &["1000000000/s"];
    let never_two: &[&str] = &["1000000000/s", "60000000000/min"];
    let spent: &[&str] = &["1/day"];
    macro_rules! go {
        ($layer:expr) => {
            if router {
                let app = Router::new().route("/hello", get(|| async { "Hello, world!" }));
                run(&rt, app.layer($layer).with_state::<()>(()), n)
            } else {
                run(&rt, $layer.layer(tower::service_fn(hello)), n)
            }
        };
    }
    match mode.as_str() {
        "bare" if router => run(
            &rt,
            Router::new()
                .route("/hello", get(|| async { "Hello, world!" }))
                .with_state::<()>(()),
            n,
        ),
        "bare" => run(&rt, tower::service_fn(hello), n),
        "pass" => go!(PassLayer),
        "none" => go!(traffik(&[], true)),
        "ip" => go!(traffik(never, true)),
        "default" => go!(traffik(never, false)),
        "two" => go!(traffik(never_two, true)),
        "governor" => go!(governor(false)),
        "ip429" => go!(traffik(spent, true)),
        "governor429" => go!(governor(true)),
        other => {
            eprintln!("unknown mode {other:?}");
            std::process::exit(2);
        }
    }
}
