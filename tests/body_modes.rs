//! The body types a `ThrottleService` answers in: by default the inner
//! service's own (axum's `Body`, `UnsyncBoxBody`, `ResponseBody`, or a type of
//! the user's implementing `FromBoxBody`), or, after `.any_body()`,
//! `ResponseBody<B>` for any inner body. Both answer the same statuses,
//! headers and bodies.

mod common;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use traffik::backend::InMemoryBackend;
use traffik::body::{FromBoxBody, InnerBody, ResponseBody};
use traffik::response::BoxBody;
use traffik::{
    BoxError, FailureMode, HttpThrottle, MiddlewareThrottle, RateLimitHeaders, ThrottleLayer,
};

fn throttle(uid: &str, limit: u64) -> HttpThrottle {
    HttpThrottle::builder()
        .uid(uid)
        .limit(limit)
        .hours(1)
        .headers(RateLimitHeaders::Legacy)
        .build()
        .unwrap()
}

fn layer(uid: &str, limit: u64) -> ThrottleLayer {
    ThrottleLayer::new(InMemoryBackend::new()).rule(MiddlewareThrottle::new(throttle(uid, limit)))
}

/// Status, `X-RateLimit-Remaining`, `Retry-After` and body of a response.
async fn read<B>(response: Response<B>) -> (u16, Option<String>, Option<String>, String)
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (remaining, retry) = (header("x-ratelimit-remaining"), header("retry-after"));
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        remaining,
        retry,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

/// Sends three requests from one client through `service` at limit 2 and
/// checks what comes back: two passes with remaining 1 then 0, then the 429.
async fn two_then_429<S, B>(service: S, inner_text: &str)
where
    S: Service<Request<Body>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let send = || async {
        read(
            service
                .clone()
                .oneshot(at("/b", "192.0.2.1:1"))
                .await
                .unwrap(),
        )
        .await
    };
    let (status, remaining, retry, body) = send().await;
    assert_eq!(
        (status, remaining.as_deref(), retry, body.as_str()),
        (200, Some("1"), None, inner_text)
    );
    assert_eq!(send().await.1.as_deref(), Some("0"));
    let (status, remaining, retry, body) = send().await;
    assert_eq!((status, remaining.as_deref()), (429, Some("0")));
    let retry: u64 = retry.expect("Retry-After on the 429").parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
    assert_eq!(
        body,
        format!("Too many requests. Retry in {retry} seconds.")
    );
}

/// Compiles only when `service` answers in `Response<B>`.
fn answers_in<B, S: Service<Request<Body>, Response = Response<B>>>(service: S) -> S {
    service
}

#[tokio::test]
async fn under_a_router_responses_keep_axums_body_type() {
    // `Router::layer` and `route_layer` wrap services answering in axum's
    // `Body`; the throttle answers in it too, so axum passes its responses on
    // without boxing them again.
    let route = Router::new()
        .route("/b", get(|| async { "routed" }))
        .into_service::<Body>();
    let service = answers_in::<Body, _>(layer("bm-router", 2).layer(route));
    two_then_429(service, "routed").await;

    let app = Router::new()
        .route("/b", get(|| async { "routed" }))
        .layer(layer("bm-router-layer", 2));
    let statuses = statuses(&app, 3, || at("/b", "192.0.2.1:1")).await;
    assert_eq!(statuses, [200, 200, 429]);
}

#[tokio::test]
async fn a_service_fn_answering_in_axum_body_keeps_it() {
    let inner = tower::service_fn(|_: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::from("plain axum body")))
    });
    let service = answers_in::<Body, _>(layer("bm-service-fn", 2).layer(inner));
    two_then_429(service, "plain axum body").await;
}

/// Two passes then the 429 through a service answering in
/// `UnsyncBoxBody<Bytes, E>`, whose type the layer keeps.
async fn unsync_box_body_is_kept_with<E>(uid: &str, text: &'static str)
where
    E: From<BoxError> + Into<BoxError> + std::fmt::Debug + Send + 'static,
{
    let inner = tower::service_fn(move |_: Request<Body>| async move {
        let body: UnsyncBoxBody<Bytes, E> = Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed_unsync();
        Ok::<_, Infallible>(Response::new(body))
    });
    let service = answers_in::<UnsyncBoxBody<Bytes, E>, _>(layer(uid, 2).layer(inner));
    two_then_429(service, text).await;
}

#[tokio::test]
async fn unsync_box_body_is_kept() {
    unsync_box_body_is_kept_with::<BoxError>("bm-unsync", "boxed").await;
}

#[tokio::test]
async fn any_body_wraps_a_full_body() {
    let inner = tower::service_fn(|_: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("full"))))
    });
    let service =
        answers_in::<ResponseBody<Full<Bytes>>, _>(layer("bm-any", 2).any_body().layer(inner));
    two_then_429(service, "full").await;
}

#[tokio::test]
async fn an_outer_throttle_answers_in_an_inner_throttles_response_body() {
    // The inner layer wraps `Full<Bytes>`; the outer one keeps that
    // `ResponseBody` and builds its own 429 in it. Each counts on its own.
    let service = ServiceBuilder::new()
        .layer(layer("bm-outer", 3))
        .layer(layer("bm-inner", 2).any_body())
        .service_fn(|_: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("nested"))))
        });
    let service = answers_in::<ResponseBody<Full<Bytes>>, _>(service);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let response = service
            .clone()
            .oneshot(at("/b", "192.0.2.1:1"))
            .await
            .unwrap();
        let (status, _, _, body) = read(response).await;
        seen.push((status, body.starts_with("Too many requests.")));
    }
    // Outer admits 3 (the third is refused by the inner one), refuses the 4th.
    assert_eq!(seen, [(200, false), (200, false), (429, true), (429, true)]);
}

#[tokio::test]
async fn errors_are_answered_in_the_inner_body_type_too() {
    let inner = || {
        tower::service_fn(|_: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::from("inner")))
        })
    };
    // No client address: the 500 that names the fix.
    let service = answers_in::<Body, _>(layer("bm-anonymous", 2).layer(inner()));
    let anonymous = request("GET", "/b", None, &[]);
    let (status, _, _, body) = read(service.oneshot(anonymous).await.unwrap()).await;
    assert_eq!(status, 500);
    assert!(
        body.contains("into_make_service_with_connect_info"),
        "{body}"
    );

    // A dead backend with FailureMode::Closed: 503 with Retry-After.
    let closed = HttpThrottle::builder()
        .uid("bm-closed")
        .limit(2)
        .hours(1)
        .failure_mode(FailureMode::Closed)
        .build()
        .unwrap();
    let service = answers_in::<Body, _>(
        ThrottleLayer::new(FailingBackend::default())
            .rule(MiddlewareThrottle::new(closed))
            .layer(inner()),
    );
    let (status, _, retry, _) = read(service.oneshot(at("/b", "192.0.2.1:1")).await.unwrap()).await;
    assert_eq!(status, 503);
    assert!(retry.is_some());

    // A custom 429 is carried in the inner body type as well.
    let service = answers_in::<Body, _>(
        layer("bm-custom", 1)
            .on_throttled(|_| {
                Response::builder()
                    .status(StatusCode::TOO_MANY_REQUESTS)
                    .body(Full::new(Bytes::from("slow down")))
                    .unwrap()
            })
            .layer(inner()),
    );
    assert_eq!(
        read(
            service
                .clone()
                .oneshot(at("/b", "192.0.2.1:1"))
                .await
                .unwrap()
        )
        .await
        .0,
        200
    );
    let (status, _, _, body) = read(service.oneshot(at("/b", "192.0.2.1:1")).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (429, "slow down"));
}

/// A body type of the user's own, holding either its text or traffik's
/// answer.
enum MyBody {
    Text(Option<Bytes>),
    Traffik(BoxBody),
}

impl FromBoxBody for MyBody {
    fn from_box_body(body: BoxBody) -> Self {
        MyBody::Traffik(body)
    }
}

impl http_body::Body for MyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            MyBody::Text(text) => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
            MyBody::Traffik(body) => Pin::new(body).poll_frame(cx),
        }
    }
}

#[tokio::test]
async fn a_users_body_type_implementing_from_box_body_is_kept() {
    let inner = tower::service_fn(|_: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(MyBody::Text(Some(Bytes::from("mine")))))
    });
    let service = answers_in::<MyBody, _>(layer("bm-mine", 2).layer(inner));
    two_then_429(service, "mine").await;
}

#[tokio::test]
async fn a_per_route_layer_can_wrap_any_body_too() {
    let t = HttpThrottle::builder()
        .uid("bm-route-any")
        .limit(1)
        .hours(1)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let inner = tower::service_fn(|_: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("route"))))
    });
    let service = answers_in::<ResponseBody<Full<Bytes>>, _>(t.layer().any_body().layer(inner));
    let first = read(
        service
            .clone()
            .oneshot(at("/b", "192.0.2.1:1"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((first.0, first.3.as_str()), (200, "route"));
    let second = read(service.oneshot(at("/b", "192.0.2.1:1")).await.unwrap()).await;
    assert_eq!(second.0, 429);
}

/// An error type of the user's own, for an `UnsyncBoxBody` whose error is
/// not `BoxError`.
#[derive(Debug)]
struct AppError(String);

impl From<BoxError> for AppError {
    fn from(error: BoxError) -> Self {
        AppError(error.to_string())
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AppError {}

#[tokio::test]
async fn unsync_box_body_with_its_own_error_type_is_kept() {
    unsync_box_body_is_kept_with::<AppError>("bm-unsync-own", "own error").await;
}

#[tokio::test]
async fn a_method_router_layer_throttles() {
    let app = Router::new().route(
        "/b",
        get(|| async { "method router" }).layer(layer("bm-method-router", 2)),
    );
    let statuses = statuses(&app, 3, || at("/b", "192.0.2.1:1")).await;
    assert_eq!(statuses, [200, 200, 429]);
}

#[test]
fn default_and_scoped_layers_answer_in_the_inner_body() {
    // `ThrottleLayer::default()` and `scoped()` need no annotation and use
    // the default body mode.
    let _: ThrottleLayer<InnerBody> = ThrottleLayer::default();
    let _: ThrottleLayer<InnerBody> = ThrottleLayer::scoped();
    let layer = ThrottleLayer::default();
    let _service: traffik::ThrottleService<_, InnerBody> =
        layer.layer(tower::service_fn(|_: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }));
}
