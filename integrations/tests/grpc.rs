//! gRPC: a real tonic server (tonic-health's service, no code generation)
//! on a loopback socket behind traffik's layer, called by a real tonic
//! client (`--features tonic`). The layer answers in tonic's body type, the
//! default identity reads tonic's connect info, and traffik's refusals are
//! gRPC statuses (a gRPC client would read an HTTP error's text as a
//! message frame).

#[path = "../../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;

use common::FailingBackend;
use tokio::net::TcpListener;
use tonic::service::LayerExt as _;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use traffik::backend::InMemoryBackend;
use traffik::{FailureMode, HttpThrottle, MiddlewareThrottle, RateLimitHeaders, ThrottleLayer};

async fn client(addr: SocketAddr) -> HealthClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

/// Serves tonic-health behind `$layer` (on the whole server) on a loopback
/// port; gives a client.
macro_rules! serve {
    ($layer:expr) => {{
        let (_reporter, health) = tonic_health::server::health_reporter();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let layer = $layer;
        let addr = listener.local_addr().unwrap();
        let incoming = TcpIncoming::from(listener);
        tokio::spawn(async move {
            Server::builder()
                .layer(layer)
                .add_service(health)
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
        client(addr).await
    }};
}

fn check() -> HealthCheckRequest {
    HealthCheckRequest {
        service: String::new(),
    }
}

fn one_per_minute(uid: &str) -> HttpThrottle {
    HttpThrottle::builder()
        .uid(uid)
        .rate("1/min")
        .headers(RateLimitHeaders::Ietf)
        .build()
        .unwrap()
}

/// The default identifier finds the client address under tonic, and a call
/// over the limit gets RESOURCE_EXHAUSTED with `retry-after` and the
/// rate-limit headers as metadata; through the synchronous path and through
/// the one that awaits (a hook).
#[tokio::test]
async fn throttled_calls_get_resource_exhausted() {
    for (uid, hook) in [("grpc-sync", false), ("grpc-async", true)] {
        let mut rule = MiddlewareThrottle::new(one_per_minute(uid));
        if hook {
            rule = rule.hook(|_: &http::request::Parts| async { true });
        }
        // No `.any_body()`: answers are built in `tonic::body::Body`.
        let mut client = serve!(ThrottleLayer::new(InMemoryBackend::new()).rule(rule));
        let allowed = client
            .check(check())
            .await
            .expect("the first call is allowed");
        // Allowed responses carry the headers too (as initial metadata).
        assert!(allowed.metadata().get("ratelimit").is_some(), "{uid}");
        let status = client.check(check()).await.expect_err("over the limit");
        assert_eq!(status.code(), Code::ResourceExhausted, "{uid}: {status:?}");
        assert_eq!(status.message(), "Too many requests. Retry in 60 seconds.");
        let metadata = status.metadata();
        assert_eq!(metadata.get("retry-after").unwrap(), "60");
        assert!(metadata.get("grpc-retry-pushback-ms").is_some());
        let ratelimit = metadata.get("ratelimit").unwrap().to_str().unwrap();
        assert!(
            ratelimit.starts_with(&format!("\"{uid}\";r=0;t=")),
            "{ratelimit}"
        );
        assert!(metadata.get("ratelimit-policy").is_some());
        // The client address was the key: 127.0.0.1.
    }
}

/// A backend failure under `FailureMode::Closed` is UNAVAILABLE.
#[tokio::test]
async fn a_failing_backend_is_unavailable_when_closed() {
    let throttle = HttpThrottle::builder()
        .uid("grpc-closed")
        .rate("1/min")
        .failure_mode(FailureMode::Closed)
        .backend(FailingBackend::default())
        .build()
        .unwrap();
    let mut client = serve!(throttle.layer());
    let status = client.check(check()).await.expect_err("a closed failure");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("backend"), "{status:?}");
    assert_eq!(status.metadata().get("retry-after").unwrap(), "1");
}

/// An `on_throttled` response is sent as it is, gRPC or not.
#[tokio::test]
async fn a_custom_response_wins() {
    let layer = ThrottleLayer::new(InMemoryBackend::new())
        .rule(MiddlewareThrottle::new(one_per_minute("grpc-custom")))
        .on_throttled(|throttled: &traffik::Throttled| {
            http::Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", "4")
                .header("grpc-message", format!("custom%20{}", throttled.throttle()))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap()
        });
    let mut client = serve!(layer);
    client.check(check()).await.unwrap();
    let status = client.check(check()).await.expect_err("over the limit");
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(status.message(), "custom grpc-custom");
    // traffik still adds `retry-after` when the response has none.
    assert_eq!(status.metadata().get("retry-after").unwrap(), "60");
}

/// Per service: tonic's `named_layer` keeps the service's name, and the
/// throttle's layer takes the service's `tonic::body::Body` as it is.
#[tokio::test]
async fn a_throttle_on_one_service() {
    let throttle = HttpThrottle::builder()
        .uid("grpc-per-service")
        .rate("2/min")
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = TcpIncoming::from(listener);
    let service = throttle.layer().named_layer(health);
    tokio::spawn(async move {
        Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    let mut client = client(addr).await;
    client.check(check()).await.unwrap();
    client.check(check()).await.unwrap();
    let status = client.check(check()).await.expect_err("over the limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}

/// `?` in a tonic handler: `traffik::Error` converts into `tonic::Status`.
#[tokio::test]
async fn errors_convert_into_statuses() {
    let throttle = HttpThrottle::builder()
        .uid("grpc-status-from")
        .rate("1/min")
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let request = || {
        let mut request = http::Request::new(());
        request
            .extensions_mut()
            .insert(SocketAddr::from(([127, 0, 0, 1], 1)));
        request
    };
    throttle.hit(&request()).await.unwrap();
    let error = throttle.hit(&request()).await.unwrap_err();
    let status = tonic::Status::from(error);
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.metadata().get("retry-after").unwrap(), "60");
    // A throttle's own (plain HTTP) `on_throttled` cannot be a `Status`:
    // the conversion gives gRPC's answer.
    let custom = HttpThrottle::builder()
        .uid("grpc-status-from-custom")
        .rate("1/min")
        .on_throttled(|_: &traffik::Throttled| http::Response::new("slow down".to_owned()))
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    custom.hit(&request()).await.unwrap();
    let status = tonic::Status::from(custom.hit(&request()).await.unwrap_err());
    assert_eq!(status.code(), Code::ResourceExhausted);
    let status = tonic::Status::from(traffik::Error::backend("down"));
    assert_eq!(status.code(), Code::Unavailable);
}
