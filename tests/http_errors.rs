//! Configuration errors and the responses for requests traffik cannot
//! throttle: anonymous connections, missing backends and scopes, failing
//! backends in both failure modes.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use common::*;
use http::StatusCode;
use traffik::backend::{self, BackendScopeLayer, InMemoryBackend};
use traffik::{
    Error, FailureMode, HttpThrottle, Identity, MiddlewareThrottle, Strategy, ThrottleLayer,
    TrustedProxies,
};

const PEER: &str = "10.2.2.2:4000";

async fn ok() -> &'static str {
    "ok"
}

fn config_message(result: Result<impl std::fmt::Debug, Error>) -> String {
    match result {
        Err(Error::Configuration(message)) => message,
        other => panic!("expected Error::Configuration, got {other:?}"),
    }
}

fn valid(uid: &str) -> HttpThrottle {
    HttpThrottle::builder()
        .uid(uid)
        .limit(1)
        .hours(1)
        .build()
        .unwrap()
}

// ---------------------------------------------------------------- rule errors

#[test]
#[should_panic(expected = "invalid path pattern \"(\"")]
fn invalid_path_literal_panics_naming_the_pattern() {
    let _ = MiddlewareThrottle::new(valid("er-path-panic")).path("(");
}

#[test]
#[should_panic(expected = "invalid HTTP method \"GE T\"")]
fn a_method_name_no_method_can_have_panics_naming_it() {
    let _ = MiddlewareThrottle::new(valid("er-method-panic")).methods(["GET", "GE T"]);
}

#[test]
fn bad_path_patterns_are_reported_as_written() {
    // The caret points into the user's pattern, not the anchored one.
    let message =
        config_message(MiddlewareThrottle::new(valid("er-path-caret")).try_path("^/api/("));
    assert!(message.contains("unclosed group"), "{message}");
    assert!(!message.contains("(?:"), "{message}");
    // Invalid alone, valid once wrapped as `^(?:a)|(b)`: refused, so it
    // cannot escape the anchoring (it would match "b" anywhere).
    let message =
        config_message(MiddlewareThrottle::new(valid("er-path-escape")).try_path("/a)|(/b"));
    assert!(
        message.contains("invalid path pattern \"/a)|(/b\""),
        "{message}"
    );
    // Valid alone and not broken by anchoring: a comment in verbose mode
    // swallows nothing the crate adds.
    assert!(MiddlewareThrottle::new(valid("er-path-verbose"))
        .try_path("(?x)/api # the API")
        .is_ok());
}

#[test]
fn try_path_returns_a_configuration_error() {
    let message = config_message(MiddlewareThrottle::new(valid("er-try-path")).try_path("[a-"));
    assert!(message.contains("\"[a-\""), "{message}");
    assert!(message.contains("er-try-path"), "{message}");
    // A valid pattern is accepted.
    assert!(MiddlewareThrottle::new(valid("er-try-path-ok"))
        .try_path(r"/api/v\d+/")
        .is_ok());
}

// ------------------------------------------------------------------ uid errors

/// A throttle named `uid` (5/min) counting on `backend`.
fn named_on(uid: &str, backend: &InMemoryBackend) -> Result<HttpThrottle, Error> {
    HttpThrottle::builder()
        .uid(uid)
        .rate("5/min")
        .backend(backend.clone())
        .build()
}

#[test]
fn duplicate_uid_on_one_backend_is_an_error_and_dropping_frees_it() {
    let memory = InMemoryBackend::new();
    let first = named_on("er-dup", &memory).unwrap();
    // A clone of the backend shares its uids.
    let message = config_message(named_on("er-dup", &memory.clone()));
    assert!(message.contains("duplicate"), "{message}");
    assert!(message.contains("er-dup"), "{message}");
    // The usual cause, parallel tests building one app, is named with its fix.
    assert!(message.contains("parallel tests"), "{message}");
    assert!(message.contains("its own backend"), "{message}");

    // Uids are unique per backend: another backend takes it, and so does a
    // throttle without a backend of its own (it counts nowhere yet).
    let elsewhere = named_on("er-dup", &InMemoryBackend::new()).unwrap();
    let unbound = valid("er-dup");

    // A clone or a layer keeps the throttle (and its uid) alive.
    let clone = first.clone();
    let layer = first.layer();
    drop(first);
    assert!(named_on("er-dup", &memory).is_err());
    drop(clone);
    assert!(named_on("er-dup", &memory).is_err());
    drop(layer);
    let again = named_on("er-dup", &memory).expect("the uid is free once every copy is dropped");
    assert_eq!(again.uid(), "er-dup");
    drop((elsewhere, unbound));
}

/// A layer lends its backend to the rules whose throttle has none: a rule
/// whose uid another live throttle holds there is a setup mistake, a panic
/// at `.rule(..)` (like an invalid axum route).
#[test]
#[should_panic(expected = "duplicate throttle uid \"er-dup-layer\"")]
fn a_layer_lending_its_backend_to_a_duplicate_uid_panics() {
    let memory = InMemoryBackend::new();
    let _counting = named_on("er-dup-layer", &memory).unwrap();
    let _ = ThrottleLayer::new(memory).rule(MiddlewareThrottle::new(valid("er-dup-layer")));
}

#[test]
fn a_layer_holds_the_uids_it_lends_its_backend_to() {
    let memory = InMemoryBackend::new();
    let rule = valid("er-layer-uid");
    // One throttle in two layers on one backend: the same throttle, not a
    // duplicate.
    let layer = ThrottleLayer::new(memory.clone()).rule(MiddlewareThrottle::new(rule.clone()));
    let other = ThrottleLayer::new(memory.clone()).rule(MiddlewareThrottle::new(rule.clone()));
    drop(rule);
    let message = config_message(named_on("er-layer-uid", &memory));
    assert!(message.contains("duplicate"), "{message}");
    // A clone of a layer shares its rules.
    let copy = layer.clone();
    drop((layer, other));
    assert!(named_on("er-layer-uid", &memory).is_err());
    drop(copy);
    assert!(named_on("er-layer-uid", &memory).is_ok());
}

/// A persistent backend keeps counters across restarts: a generated uid
/// (which shifts when throttles are added) would move them, so it is
/// refused, naming the fix; a transient backend takes it.
#[test]
fn a_generated_uid_on_a_persistent_backend_is_an_error() {
    let persistent = InMemoryBackend::builder().persistent(true).build();
    let generated = || HttpThrottle::builder().rate("5/min");
    let message = config_message(generated().backend(persistent.clone()).build());
    assert!(message.contains("generated uid"), "{message}");
    assert!(message.contains(".uid("), "{message}");
    assert!(generated()
        .uid("er-named")
        .backend(persistent.clone())
        .build()
        .is_ok());
    assert!(generated().backend(InMemoryBackend::new()).build().is_ok());
    // Lent by a layer: a panic at `.rule(..)`, naming the fix.
    let throttle = generated().build().unwrap();
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ThrottleLayer::new(persistent.clone()).rule(MiddlewareThrottle::new(throttle))
    }))
    .expect_err("a panic");
    let message = panic.downcast_ref::<String>().expect("a formatted message");
    assert!(
        message.contains("generated uid") && message.contains(".uid("),
        "{message}"
    );
}

#[test]
fn a_failed_build_does_not_take_the_uid() {
    let memory = InMemoryBackend::new();
    assert!(HttpThrottle::builder()
        .uid("er-failed-build")
        .limit(0)
        .seconds(1)
        .backend(memory.clone())
        .build()
        .is_err());
    // Refused by the backend: the quota is checked before the uid is taken.
    assert!(HttpThrottle::builder()
        .uid("er-failed-build")
        .rate("5/min")
        .cost(6)
        .backend(memory.clone())
        .build()
        .is_err());
    assert!(HttpThrottle::builder()
        .uid("er-failed-build")
        .limit(1)
        .seconds(1)
        .backend(memory)
        .build()
        .is_ok());
}

#[test]
fn empty_uid_is_an_error() {
    let message = config_message(HttpThrottle::builder().uid("").rate("1/s").build());
    assert!(message.contains("empty"), "{message}");
}

#[test]
fn generated_uids_are_distinct_and_in_creation_order() {
    let a = HttpThrottle::builder().rate("1/s").build().unwrap();
    let b = HttpThrottle::builder().rate("1/s").build().unwrap();
    assert_ne!(a.uid(), b.uid());
    // `{kind}-{n}`, n counting up (other tests' throttles may come between).
    let number = |uid: &str| -> u64 {
        let (kind, n) = uid.rsplit_once('-').expect("kind-n");
        assert_eq!(kind, "http", "{uid}");
        n.parse().expect("a number")
    };
    assert!(
        number(a.uid()) < number(b.uid()),
        "{} then {}",
        a.uid(),
        b.uid()
    );
}

// ----------------------------------------------------------------- rate errors

#[test]
fn limit_without_period() {
    let message = config_message(HttpThrottle::builder().uid("er-noperiod").limit(5).build());
    assert!(message.contains("limit(5) needs a period"), "{message}");
}

#[test]
fn period_without_limit() {
    let message = config_message(HttpThrottle::builder().uid("er-nolimit").seconds(5).build());
    assert!(message.contains("needs a limit"), "{message}");
}

#[test]
fn no_rate_at_all() {
    let message = config_message(HttpThrottle::builder().uid("er-norate").build());
    assert!(message.contains("no rate"), "{message}");
}

#[test]
fn zero_limit() {
    let message = config_message(
        HttpThrottle::builder()
            .uid("er-zero")
            .limit(0)
            .seconds(10)
            .build(),
    );
    assert!(message.contains("at least 1"), "{message}");
    assert!(message.contains("Rate::unlimited()"), "{message}");
    let message = config_message(HttpThrottle::builder().uid("er-zero-s").rate("0/s").build());
    assert!(message.contains("0/s"), "{message}");
}

#[test]
fn bad_rate_string() {
    let message = config_message(
        HttpThrottle::builder()
            .uid("er-badrate")
            .rate("five per fortnight")
            .build(),
    );
    assert!(message.contains("invalid rate"), "{message}");
    assert!(message.contains("five per fortnight"), "{message}");
}

#[test]
fn rate_and_limit_together() {
    let message = config_message(
        HttpThrottle::builder()
            .uid("er-both")
            .rate("5/min")
            .limit(5)
            .seconds(1)
            .build(),
    );
    assert!(message.contains("not both"), "{message}");
}

#[test]
fn burst_on_fixed_window() {
    let message = config_message(
        HttpThrottle::builder()
            .uid("er-burst")
            .limit(5)
            .seconds(10)
            .strategy(Strategy::FixedWindow)
            .burst(10)
            .build(),
    );
    assert!(message.contains("burst(10)"), "{message}");
    assert!(message.contains("FixedWindow"), "{message}");
    // Fine on a token bucket.
    assert!(HttpThrottle::builder()
        .uid("er-burst-ok")
        .limit(5)
        .seconds(10)
        .burst(10)
        .build()
        .is_ok());
}

#[test]
fn cost_above_limit() {
    let message = config_message(
        HttpThrottle::builder()
            .uid("er-cost")
            .limit(3)
            .seconds(10)
            .cost(5)
            .build(),
    );
    assert!(message.contains("cost 5"), "{message}");
    assert!(message.contains("capacity 3"), "{message}");
}

#[test]
fn ipv6_prefix_above_128() {
    let message = config_message(
        HttpThrottle::builder()
            .uid("er-v6")
            .rate("1/s")
            .ipv6_prefix(129)
            .build(),
    );
    assert!(message.contains("ipv6_prefix(129)"), "{message}");
}

#[test]
fn invalid_trusted_proxy() {
    let message = config_message(TrustedProxies::new(["10.0.0.0/8", "not-an-ip"]));
    assert!(message.contains("not-an-ip"), "{message}");
    let message = config_message(TrustedProxies::new(["10.0.0.0/33"]));
    assert!(message.contains("10.0.0.0/33"), "{message}");
}

/// `.trusted_proxies(..)` and `.ipv6_prefix(..)` shape the default identity:
/// with a custom identifier they would do nothing, so `build()` refuses
/// them, in either order, naming the fix.
#[test]
fn trusted_proxies_or_ipv6_prefix_with_an_identifier_is_refused_at_build() {
    let proxies = || TrustedProxies::new(["10.0.0.0/8"]).unwrap();
    let identifier = |_: &http::request::Parts| async { Identity::key("user") };
    let expected = ".trusted_proxies(..) and .ipv6_prefix(..) shape the default identity, which a \
                    custom .identifier(..) replaces: call proxies.client_identity(parts) (or \
                    Identity::client(parts)) inside the identifier instead";
    let builds = [
        HttpThrottle::builder()
            .uid("er-proxies-id")
            .rate("1/s")
            .trusted_proxies(proxies())
            .identifier(identifier)
            .build(),
        HttpThrottle::builder()
            .uid("er-id-proxies")
            .rate("1/s")
            .identifier(identifier)
            .trusted_proxies(proxies())
            .build(),
        HttpThrottle::builder()
            .uid("er-id-v6")
            .rate("1/s")
            .identifier(identifier)
            .ipv6_prefix(48)
            .build(),
    ];
    for result in builds {
        assert_eq!(config_message(result), expected);
    }
    // Each alone is fine.
    assert!(HttpThrottle::builder()
        .uid("er-proxies-alone")
        .rate("1/s")
        .trusted_proxies(proxies())
        .build()
        .is_ok());
    assert!(HttpThrottle::builder()
        .uid("er-id-alone")
        .rate("1/s")
        .identifier(identifier)
        .build()
        .is_ok());
}

// ------------------------------------------------ Identity::client as fallback

/// An identifier keying on an API key, else on the client address through
/// `Identity::client(parts)`: each address counts on its own (ports and
/// addresses inside one IPv6 /64 are one client), apart from the API keys,
/// and a request with neither is the anonymous-connection 500.
#[tokio::test]
async fn identity_client_as_a_fallback_counts_per_client_address() {
    let memory = InMemoryBackend::new();
    let t = HttpThrottle::builder()
        .uid("er-fallback")
        .limit(2)
        .minutes(1)
        .identifier(|parts: &http::request::Parts| {
            let key = parts
                .headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let client = Identity::client(parts);
            async move { key.map(|key| Ok(Identity::key(key))).unwrap_or(client) }
        })
        .shared_across_routes()
        .backend(memory.clone())
        .build()
        .unwrap();
    let app = Router::new().route("/c", get(ok).route_layer(t.layer()));
    let from = |peer: &str| at("/c", peer);

    // The identity is the client's address, as the default one keys it.
    let parts = |peer: &str| from(peer).into_parts().0;
    assert_eq!(
        Identity::client(&parts("10.0.0.1:1")).unwrap(),
        Identity::key("10.0.0.1")
    );
    assert_eq!(
        Identity::client(&parts("[2001:db8:1:2::a]:1")).unwrap(),
        Identity::key("2001:db8:1:2::/64")
    );

    // One client, two ports: one counter.
    assert_eq!(send(&app, from("10.0.0.1:1000")).await.status, 200);
    assert_eq!(send(&app, from("10.0.0.1:2000")).await.status, 200);
    assert_eq!(send(&app, from("10.0.0.1:3000")).await.status, 429);
    // Another client has its own.
    assert_eq!(
        statuses(&app, 3, || from("10.0.0.2:1000")).await,
        [200, 200, 429]
    );
    // Two addresses in one IPv6 /64 are one client.
    assert_eq!(send(&app, from("[2001:db8:1:2::a]:1")).await.status, 200);
    assert_eq!(send(&app, from("[2001:db8:1:2::b]:1")).await.status, 200);
    assert_eq!(send(&app, from("[2001:db8:1:2::c]:1")).await.status, 429);
    // An API key counts apart from the address it comes from.
    let keyed = || request("GET", "/c", Some("10.0.0.1:1"), &[("x-api-key", "k1")]);
    assert_eq!(statuses(&app, 3, keyed).await, [200, 200, 429]);
    assert_eq!(memory.len(), 4);

    // `hit` sees the same identities.
    assert!(t.hit(&from("10.0.0.3:1")).await.unwrap().allowed);
    assert_eq!(t.hit(&from("10.0.0.3:2")).await.unwrap().remaining, 0);

    // No key and no address: the fallback's error answers the request.
    let reply = send(&app, request("GET", "/c", None, &[])).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        reply.body.contains("into_make_service_with_connect_info"),
        "{}",
        reply.body
    );
    let anonymous = t.hit(&request("GET", "/c", None, &[])).await;
    assert!(
        matches!(anonymous, Err(Error::AnonymousConnection)),
        "{anonymous:?}"
    );
}

// ------------------------------------------------------- anonymous connections

#[tokio::test]
async fn anonymous_connection_is_a_500_explaining_the_fix() {
    let t = HttpThrottle::builder()
        .uid("er-anon")
        .limit(5)
        .minutes(1)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let app = Router::new().route("/a", get(ok).route_layer(t.layer()));
    let reply = send(&app, request("GET", "/a", None, &[])).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        reply.body.contains("into_make_service_with_connect_info"),
        "{}",
        reply.body
    );
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));

    let result = t.hit(&request("GET", "/a", None, &[])).await;
    assert!(
        matches!(result, Err(Error::AnonymousConnection)),
        "{result:?}"
    );
    let result = t.peek(&request("GET", "/a", None, &[])).await;
    assert!(matches!(result, Err(Error::AnonymousConnection)));
}

#[tokio::test]
async fn anonymous_connection_through_a_global_layer() {
    let layer = ThrottleLayer::new(InMemoryBackend::new()).rule(
        MiddlewareThrottle::new(valid("er-anon-layer"))
            .hook(|_: &http::request::Parts| async { true }),
    );
    let app = Router::new().route("/a", get(ok)).layer(layer);
    let reply = send(&app, request("GET", "/a", None, &[])).await;
    assert_eq!(reply.status, 500);
    assert!(reply.body.contains("into_make_service_with_connect_info"));
}

#[tokio::test]
async fn anonymous_connection_in_a_handler_is_a_500() {
    let t = HttpThrottle::builder()
        .uid("er-anon-handler")
        .limit(5)
        .minutes(1)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let app = Router::new().route(
        "/h",
        get(move |req: axum::extract::Request| {
            let t = t.clone();
            async move {
                t.hit(&req).await?;
                Ok::<_, Error>("ok")
            }
        }),
    );
    let reply = send(&app, request("GET", "/h", None, &[])).await;
    assert_eq!(reply.status, 500);
    assert!(reply.body.contains("into_make_service_with_connect_info"));
}

// ------------------------------------------------------ missing backend/scope

#[tokio::test]
async fn dynamic_backend_without_scope_is_a_500_naming_scope() {
    let t = HttpThrottle::builder()
        .uid("er-noscope")
        .limit(1)
        .minutes(1)
        .dynamic_backend()
        .build()
        .unwrap();
    let app = Router::new().route("/d", get(ok).route_layer(t.layer()));
    let reply = send(&app, at("/d", PEER)).await;
    assert_eq!(reply.status, 500);
    assert!(
        reply.body.contains("traffik::backend::scope"),
        "{}",
        reply.body
    );
    assert!(reply.body.contains("er-noscope"), "{}", reply.body);
    let message = config_message(t.hit(&at("/d", PEER)).await);
    assert!(message.contains("traffik::backend::scope"), "{message}");
}

#[tokio::test]
async fn dynamic_backend_inside_a_scope_works() {
    let t = HttpThrottle::builder()
        .uid("er-scoped")
        .limit(1)
        .minutes(1)
        .dynamic_backend()
        .build()
        .unwrap();
    let tenant_a = InMemoryBackend::builder().prefix("tenant-a").build();
    let tenant_b = InMemoryBackend::builder().prefix("tenant-b").build();
    let app = Router::new()
        .route("/d", get(ok).route_layer(t.layer()))
        .layer(BackendScopeLayer::new(
            move |parts: &http::request::Parts| {
                if parts.headers.contains_key("x-tenant-b") {
                    tenant_b.clone()
                } else {
                    tenant_a.clone()
                }
            },
        ));
    assert_eq!(send(&app, at("/d", PEER)).await.status, 200);
    assert_eq!(send(&app, at("/d", PEER)).await.status, 429);
    // Another tenant's backend has its own counters.
    let b = || request("GET", "/d", Some(PEER), &[("x-tenant-b", "1")]);
    assert_eq!(send(&app, b()).await.status, 200);
    assert_eq!(send(&app, b()).await.status, 429);

    // `hit` uses the innermost scope.
    let outer = InMemoryBackend::new();
    let inner = InMemoryBackend::new();
    let req = at("/x", PEER);
    backend::scope(outer.clone(), async {
        t.hit(&req).await.unwrap();
        backend::scope(inner.clone(), async {
            t.hit(&req).await.unwrap();
        })
        .await;
        assert!(t.hit(&req).await.unwrap_err().is_throttled());
    })
    .await;
    assert_eq!(outer.len(), 1);
    assert_eq!(inner.len(), 1);
}

#[tokio::test]
async fn throttle_without_backend_in_its_own_layer_is_a_500_naming_the_fix() {
    let t = valid("er-nobackend");
    let app = Router::new().route("/n", get(ok).route_layer(t.layer()));
    let reply = send(&app, at("/n", PEER)).await;
    assert_eq!(reply.status, 500);
    assert!(reply.body.contains("has no backend"), "{}", reply.body);
    assert!(reply.body.contains(".backend("), "{}", reply.body);
    assert!(reply.body.contains("er-nobackend"), "{}", reply.body);
    // The common mistake: a route layer under a ThrottleLayer with a backend.
    assert!(
        reply.body.contains("to its own rules only"),
        "{}",
        reply.body
    );

    // The same throttle as a rule of a layer with a backend uses the layer's.
    let layer = ThrottleLayer::new(InMemoryBackend::new()).rule(MiddlewareThrottle::new(t));
    let app = Router::new().route("/n", get(ok)).layer(layer);
    assert_eq!(send(&app, at("/n", PEER)).await.status, 200);
    assert_eq!(send(&app, at("/n", PEER)).await.status, 429);
}

// ------------------------------------------------------------ failing backends

fn failing_app(
    uid: &str,
    mode: FailureMode,
    backend: impl traffik::backend::IntoBackend,
) -> (HttpThrottle, Router) {
    let t = HttpThrottle::builder()
        .uid(uid)
        .limit(1)
        .minutes(1)
        .failure_mode(mode)
        .backend(backend)
        .build()
        .unwrap();
    let app = Router::new().route("/f", get(ok).route_layer(t.layer()));
    (t, app)
}

#[tokio::test]
async fn failing_backend_open_lets_requests_through() {
    let backend = FailingBackend::default();
    let (t, app) = failing_app("er-fail-open", FailureMode::Open, backend.clone());
    assert_eq!(statuses(&app, 5, || at("/f", PEER)).await, [200; 5]);
    assert_eq!(backend.calls.load(Ordering::SeqCst), 5);
    // `hit` is Ok too (uncounted): the unlimited decision, as documented.
    assert_eq!(
        t.hit(&at("/f", PEER)).await.unwrap(),
        traffik::Decision::unlimited()
    );
}

#[tokio::test]
async fn failing_backend_open_is_the_default() {
    let t = HttpThrottle::builder()
        .uid("er-fail-default")
        .limit(1)
        .minutes(1)
        .backend(FailingBackend::default())
        .build()
        .unwrap();
    let app = Router::new().route("/f", get(ok).route_layer(t.layer()));
    assert_eq!(statuses(&app, 3, || at("/f", PEER)).await, [200; 3]);
}

#[tokio::test]
async fn failing_backend_closed_is_a_503_with_retry_after() {
    let (t, app) = failing_app(
        "er-fail-closed",
        FailureMode::Closed,
        FailingBackend::default(),
    );
    let reply = send(&app, at("/f", PEER)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.retry_after() >= 1);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(
        reply.body,
        "Service temporarily unavailable: the rate limiter's backend is not answering. Retry in 1 second."
    );
    match t.hit(&at("/f", PEER)).await {
        Err(Error::Backend(error)) => assert!(error.to_string().contains("down"), "{error}"),
        other => panic!("expected Error::Backend, got {other:?}"),
    }
    // In a handler, `?` gives the same 503.
    let app = Router::new().route(
        "/h",
        get(move |req: axum::extract::Request| {
            let t = t.clone();
            async move {
                t.hit(&req).await?;
                Ok::<_, Error>("ok")
            }
        }),
    );
    let reply = send(&app, at("/h", PEER)).await;
    assert_eq!(reply.status, 503);
    assert!(reply.retry_after() >= 1);
}

#[tokio::test]
async fn shadow_mode_lets_requests_through_a_failing_backend_even_when_closed() {
    let backend = FailingBackend::default();
    let t = HttpThrottle::builder()
        .uid("er-fail-shadow")
        .limit(1)
        .minutes(1)
        .failure_mode(FailureMode::Closed)
        .shadow(true)
        .backend(backend.clone())
        .build()
        .unwrap();
    let app = Router::new().route("/f", get(ok).route_layer(t.layer()));
    assert_eq!(statuses(&app, 3, || at("/f", PEER)).await, [200; 3]);
    assert_eq!(backend.calls.load(Ordering::SeqCst), 3);
    // `hit` is Ok too: shadow mode never rejects.
    assert!(t.hit(&at("/f", PEER)).await.unwrap().allowed);
}

#[tokio::test]
async fn failing_backend_in_a_global_rule_follows_its_mode() {
    let open = HttpThrottle::builder()
        .uid("er-rule-open")
        .limit(1)
        .minutes(1)
        .build()
        .unwrap();
    let closed = HttpThrottle::builder()
        .uid("er-rule-closed")
        .limit(1)
        .minutes(1)
        .failure_mode(FailureMode::Closed)
        .build()
        .unwrap();
    let layer = ThrottleLayer::new(FailingBackend::default())
        .rule(MiddlewareThrottle::new(open).methods(["GET"]))
        .rule(MiddlewareThrottle::new(closed).methods(["POST"]));
    let app = Router::new().route("/f", get(ok).post(ok)).layer(layer);
    assert_eq!(statuses(&app, 3, || at("/f", PEER)).await, [200; 3]);
    let reply = send(&app, request("POST", "/f", Some(PEER), &[])).await;
    assert_eq!(reply.status, 503);
}

#[tokio::test]
async fn a_backend_that_never_answers_does_not_hang_requests() {
    let hanging = HangingBackend {
        timeout: Duration::from_millis(100),
    };
    let (_open, app) = failing_app("er-hang-open", FailureMode::Open, hanging.clone());
    let reply = tokio::time::timeout(Duration::from_secs(30), send(&app, at("/f", PEER)))
        .await
        .expect("the request finishes");
    assert_eq!(reply.status, 200);

    let (_closed, app) = failing_app("er-hang-closed", FailureMode::Closed, hanging);
    let reply = tokio::time::timeout(Duration::from_secs(30), send(&app, at("/f", PEER)))
        .await
        .expect("the request finishes");
    assert_eq!(reply.status, 503);
    assert!(reply.retry_after() >= 1);
}

#[tokio::test]
async fn exempt_identities_never_reach_a_failing_backend() {
    let backend = FailingBackend::default();
    let t = HttpThrottle::builder()
        .uid("er-fail-exempt")
        .limit(1)
        .minutes(1)
        .failure_mode(FailureMode::Closed)
        .identifier(|_: &http::request::Parts| async { Identity::Unlimited })
        .backend(backend.clone())
        .build()
        .unwrap();
    let app = Router::new().route("/f", get(ok).route_layer(t.layer()));
    assert_eq!(statuses(&app, 3, || at("/f", PEER)).await, [200; 3]);
    assert_eq!(backend.calls.load(Ordering::SeqCst), 0);
}

/// A backend that cannot hold the quota it is asked about.
#[derive(Clone)]
struct RefusingBackend;

impl traffik::backend::ThrottleBackend for RefusingBackend {
    fn prefix(&self) -> &str {
        "refusing"
    }
    fn decide(
        &self,
        _key: &traffik::key::Key<'_>,
        _quotas: &[traffik::Quota],
        _cost: u64,
        _op: traffik::backend::Op,
    ) -> traffik::backend::BackendFuture {
        traffik::backend::BackendFuture::ready(Err(Error::configuration(
            "quota too large for this backend",
        )))
    }
    fn reset(&self) -> traffik::backend::BoxFuture<Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn a_configuration_error_from_the_backend_is_not_failed_open() {
    // FailureMode::Open lets requests through on outages, but a quota the
    // backend cannot hold is a configuration error: a 500, not a silently
    // disabled throttle.
    let t = HttpThrottle::builder()
        .uid("refused-quota")
        .rate("5/min")
        .backend(RefusingBackend)
        .build()
        .unwrap();
    let app = Router::new().route("/r", get(|| async { "ok" }).route_layer(t.layer()));
    let reply = send(&app, at("/r", "10.0.0.1:1")).await;
    assert_eq!(reply.status, 500);
    assert!(reply.body.contains("quota too large"), "{}", reply.body);
    let error = t.hit(&at("/r", "10.0.0.1:1")).await.unwrap_err();
    assert!(matches!(error, Error::Configuration(_)), "{error:?}");
}

/// The contract's four variants can be matched by name; `Error` is
/// `#[non_exhaustive]`, so a match outside the crate needs a catch-all arm.
#[test]
fn errors_can_be_matched_by_variant() {
    fn status(error: &Error) -> u16 {
        match error {
            Error::Configuration(_) => 500,
            Error::AnonymousConnection => 500,
            Error::Throttled(_) => 429,
            Error::Backend(_) => 503,
            _ => 500,
        }
    }
    assert_eq!(status(&Error::configuration("x")), 500);
    assert_eq!(status(&Error::backend("down")), 503);
    assert_eq!(status(&Error::AnonymousConnection), 500);
}

/// Error reporters that walk `source()` print each cause once: `Display`
/// shows the message, `source()` the backend's cause.
#[test]
fn backend_errors_give_their_cause_once() {
    use std::error::Error as _;

    let cause = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "store down");
    let error = Error::backend_with_source("map store failed", cause);
    assert_eq!(error.to_string(), "traffik backend error: map store failed");
    let source = error.source().expect("the cause");
    assert_eq!(source.to_string(), "store down");
    assert!(source.source().is_none());
    let mut chain = vec![error.to_string()];
    let mut next = error.source();
    while let Some(cause) = next {
        chain.push(cause.to_string());
        next = cause.source();
    }
    assert_eq!(
        chain,
        ["traffik backend error: map store failed", "store down"]
    );
    // A BackendError is an error of its own, and converts.
    let backend = traffik::BackendError::with_source("failed", std::io::Error::other("why"));
    assert_eq!(backend.to_string(), "failed");
    assert_eq!(backend.source().unwrap().to_string(), "why");
    assert!(matches!(Error::from(backend), Error::Backend(_)));
}

/// Builders, options, response futures and bodies are `Debug` (C-DEBUG), and
/// show what was configured; builders are `Clone`, for templates.
#[test]
fn public_types_are_debug() {
    fn debug<T: std::fmt::Debug>(value: &T) -> String {
        format!("{value:?}")
    }
    let http = debug(&HttpThrottle::builder().uid("er-debug").rate("5/min"));
    assert!(
        http.contains("\"er-debug\"") && http.contains("HttpOptions"),
        "{http}"
    );
    let ws = debug(&traffik::WebSocketThrottle::builder().context("room"));
    assert!(ws.contains("\"room\""), "{ws}");
    let memory = debug(&InMemoryBackend::builder().max_keys(10));
    assert!(memory.contains("max_keys: 10"), "{memory}");
    let body = debug(&traffik::body::ResponseBody::new(String::from("hi")));
    assert!(body.contains("\"hi\""), "{body}");
    type Future = traffik::ResponseFuture<
        tower::util::ServiceFn<
            fn(
                http::Request<()>,
            )
                -> std::future::Ready<Result<http::Response<()>, std::convert::Infallible>>,
        >,
        (),
    >;
    fn future_is_debug<T: std::fmt::Debug>() {}
    future_is_debug::<Future>();

    // A builder as a template: each clone builds its own throttle.
    let template = HttpThrottle::builder().rate("5/min").shared_across_routes();
    let a = template.clone().uid("er-template-a").build().unwrap();
    let b = template.uid("er-template-b").build().unwrap();
    assert_eq!((a.uid(), b.uid()), ("er-template-a", "er-template-b"));
    let _ = (
        traffik::WebSocketThrottle::builder().clone(),
        InMemoryBackend::builder().clone(),
    );
}
