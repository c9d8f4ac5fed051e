//! `.on_error(..)` on a throttle and on a `ThrottleLayer`: the custom answer
//! replaces the 500 (configuration error, anonymous connection) and the 503
//! (backend failure under `FailureMode::Closed`), through `oneshot` and
//! through a real axum server; the 429 and `FailureMode::Open` are left alone.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use common::*;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use traffik::backend::InMemoryBackend;
use traffik::{Error, FailureMode, HttpThrottle, MiddlewareThrottle, ThrottleLayer};

const PEER: &str = "10.7.7.7:4000";

async fn ok() -> &'static str {
    "ok"
}

/// A JSON answer naming who answered (`by`) and which error it saw.
fn json_error(by: &'static str) -> impl Fn(&Error) -> Response<String> + Send + Sync + 'static {
    move |error: &Error| {
        let (status, kind) = match error {
            Error::Backend(_) => (StatusCode::SERVICE_UNAVAILABLE, "backend"),
            Error::AnonymousConnection => (StatusCode::INTERNAL_SERVER_ERROR, "anonymous"),
            Error::Configuration(_) => (StatusCode::INTERNAL_SERVER_ERROR, "configuration"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "other"),
        };
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("x-answered-by", by)
            .body(format!(r#"{{"by":"{by}","error":"{kind}"}}"#))
            .unwrap()
    }
}

/// A 1/min throttle failing closed on a dead backend, answering with `json_error("throttle")`.
fn closed_with_on_error(uid: &str) -> HttpThrottle {
    HttpThrottle::builder()
        .uid(uid)
        .rate("1/min")
        .failure_mode(FailureMode::Closed)
        .backend(FailingBackend::default())
        .on_error(json_error("throttle"))
        .build()
        .unwrap()
}

// ------------------------------------------------------------- on a throttle

/// A backend failure under `Closed` gets the custom answer, not the default
/// 503 text; `Cache-Control: no-store` and `Retry-After: 1` are added.
#[tokio::test]
async fn a_throttle_on_error_replaces_the_503_of_a_failing_backend() {
    let t = closed_with_on_error("oe-503");
    let app = Router::new().route("/f", get(ok).route_layer(t.layer()));
    let reply = send(&app, at("/f", PEER)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body, r#"{"by":"throttle","error":"backend"}"#);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("x-answered-by"), Some("throttle"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(reply.header("retry-after"), Some("1"));
}

/// A `Retry-After` the custom answer sets itself is kept.
#[tokio::test]
async fn an_on_error_retry_after_is_kept() {
    let t = HttpThrottle::builder()
        .uid("oe-retry")
        .rate("1/min")
        .failure_mode(FailureMode::Closed)
        .backend(FailingBackend::default())
        .on_error(|_: &Error| {
            Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .header("retry-after", "30")
                .body(String::from("back in half a minute"))
                .unwrap()
        })
        .build()
        .unwrap();
    let app = Router::new().route("/f", get(ok).route_layer(t.layer()));
    let reply = send(&app, at("/f", PEER)).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body, "back in half a minute");
    assert_eq!(reply.header("retry-after"), Some("30"));
}

/// The 500s (an anonymous connection, a throttle with no backend) get the
/// custom answer, without a `Retry-After` (no backend failed).
#[tokio::test]
async fn a_throttle_on_error_replaces_the_500s_of_configuration_errors() {
    let anonymous = HttpThrottle::builder()
        .uid("oe-anon")
        .rate("5/min")
        .backend(InMemoryBackend::new())
        .on_error(json_error("throttle"))
        .build()
        .unwrap();
    let no_backend = HttpThrottle::builder()
        .uid("oe-nobackend")
        .rate("5/min")
        .on_error(json_error("throttle"))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/a", get(ok).route_layer(anonymous.layer()))
        .route("/n", get(ok).route_layer(no_backend.layer()));

    let reply = send(&app, request("GET", "/a", None, &[])).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.body, r#"{"by":"throttle","error":"anonymous"}"#);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(reply.header("retry-after"), None);

    let reply = send(&app, at("/n", PEER)).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.body, r#"{"by":"throttle","error":"configuration"}"#);
    assert_eq!(reply.header("retry-after"), None);
}

/// `on_error` is not asked about a 429 (that is `on_throttled`'s), nor about
/// a backend failure under `FailureMode::Open` (the request goes through).
#[tokio::test]
async fn on_error_leaves_the_429_and_failing_open_alone() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counting = {
        let calls = Arc::clone(&calls);
        move |_: &Error| {
            calls.fetch_add(1, Ordering::SeqCst);
            Response::new(String::from("custom"))
        }
    };
    let limited = HttpThrottle::builder()
        .uid("oe-429")
        .rate("1/min")
        .backend(InMemoryBackend::new())
        .on_error(counting.clone())
        .build()
        .unwrap();
    let open = HttpThrottle::builder()
        .uid("oe-open")
        .rate("1/min")
        .backend(FailingBackend::default())
        .on_error(counting)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/l", get(ok).route_layer(limited.layer()))
        .route("/o", get(ok).route_layer(open.layer()));

    assert_eq!(send(&app, at("/l", PEER)).await.status, 200);
    let refused = send(&app, at("/l", PEER)).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        refused.body,
        format!(
            "Too many requests. Retry in {} seconds.",
            refused.retry_after()
        )
    );
    assert_eq!(statuses(&app, 3, || at("/o", PEER)).await, [200; 3]);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------- on a layer

/// The layer's `on_error` answers for its rules whose throttle has none; a
/// throttle's own `on_error` wins over the layer's.
#[tokio::test]
async fn a_layer_on_error_answers_for_rules_without_their_own() {
    let plain = HttpThrottle::builder()
        .uid("oe-layer-plain")
        .rate("1/min")
        .failure_mode(FailureMode::Closed)
        .build()
        .unwrap();
    let own = HttpThrottle::builder()
        .uid("oe-layer-own")
        .rate("1/min")
        .failure_mode(FailureMode::Closed)
        .on_error(json_error("throttle"))
        .build()
        .unwrap();
    let layer = ThrottleLayer::new(FailingBackend::default())
        .on_error(json_error("layer"))
        .rule(MiddlewareThrottle::new(plain).methods([Method::GET]))
        .rule(MiddlewareThrottle::new(own).methods([Method::POST]));
    let app = Router::new().route("/f", get(ok).post(ok)).layer(layer);

    let reply = send(&app, at("/f", PEER)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body, r#"{"by":"layer","error":"backend"}"#);
    assert_eq!(reply.header("x-answered-by"), Some("layer"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(reply.header("retry-after"), Some("1"));

    let reply = send(&app, request("POST", "/f", Some(PEER), &[])).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body, r#"{"by":"throttle","error":"backend"}"#);

    // An anonymous connection is answered by the layer's too.
    let reply = send(&app, request("GET", "/f", None, &[])).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.body, r#"{"by":"layer","error":"anonymous"}"#);
    assert_eq!(reply.header("retry-after"), None);
}

// ------------------------------------------------------- over a real server

async fn serve(app: Router, connect_info: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        if connect_info {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        } else {
            axum::serve(listener, app).await.unwrap();
        }
    });
    addr
}

/// `GET http://{addr}{path}` over TCP.
async fn fetch(addr: SocketAddr, path: &str) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = http::Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(request).await.expect("the server answers");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

/// Over TCP: the throttle's and the layer's answers to a failing backend, and
/// to a server started without connect info (the common mistake).
#[tokio::test]
async fn on_error_answers_over_a_real_server() {
    let route = closed_with_on_error("oe-server-route");
    let rule = HttpThrottle::builder()
        .uid("oe-server-rule")
        .rate("1/min")
        .failure_mode(FailureMode::Closed)
        .build()
        .unwrap();
    let layer = ThrottleLayer::new(FailingBackend::default())
        .on_error(json_error("layer"))
        .rule(MiddlewareThrottle::new(rule).path("/l"));
    let app = Router::new()
        .route("/t", get(ok).route_layer(route.layer()))
        .route("/l", get(ok))
        .layer(layer);

    let addr = serve(app.clone(), true).await;
    let reply = fetch(addr, "/t").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body, r#"{"by":"throttle","error":"backend"}"#);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(reply.header("retry-after"), Some("1"));
    let reply = fetch(addr, "/l").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body, r#"{"by":"layer","error":"backend"}"#);
    assert_eq!(reply.header("x-answered-by"), Some("layer"));

    let anonymous = serve(app, false).await;
    let reply = fetch(anonymous, "/t").await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.body, r#"{"by":"throttle","error":"anonymous"}"#);
    let reply = fetch(anonymous, "/l").await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.body, r#"{"by":"layer","error":"anonymous"}"#);
}
