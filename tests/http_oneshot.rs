//! The HTTP middleware driven with `tower::ServiceExt::oneshot`: rule filters
//! and ordering, per-route and shared counters, identities, the 429 and its
//! headers, client addresses, shadow/wait/dynamic modes, `hit`/`peek` in
//! handlers, and plain Tower services.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request as AxumRequest;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use common::*;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use traffik::backend::InMemoryBackend;
use traffik::clock::ManualClock;
use traffik::{
    Decision, Error, Exceeded, HttpThrottle, Identity, MiddlewareThrottle, Rate, RateLimitHeaders,
    Strategy, ThrottleLayer, Throttled, TrustedProxies,
};

const PEER: &str = "10.1.1.1:4000";

async fn ok() -> &'static str {
    "ok"
}

/// Routes for rule tests, every method on each, wrapped in `layer`.
fn rules_app(layer: ThrottleLayer) -> Router {
    let any = || get(ok).post(ok).put(ok).delete(ok);
    Router::new()
        .route("/api/x", any())
        .route("/api/y", any())
        .route("/v1/api/x", any())
        .route("/other", any())
        .layer(layer)
}

/// A throttle of `limit` per hour (no refill during a test).
fn per_hour(uid: &str, limit: u64) -> HttpThrottle {
    HttpThrottle::builder()
        .uid(uid)
        .limit(limit)
        .hours(1)
        .build()
        .unwrap()
}

// ---------------------------------------------------------------- rule filters

/// Inside `Router::nest`, axum strips the prefix before the nested router's
/// layers see the request: path rules there match the stripped path (as the
/// README says).
#[tokio::test]
async fn path_rules_inside_a_nested_router_see_the_stripped_path() {
    let memory = InMemoryBackend::new();
    let layer = ThrottleLayer::new(memory)
        .rule(MiddlewareThrottle::new(per_hour("os-nest-stripped", 3)).path("^/api/"))
        .rule(MiddlewareThrottle::new(per_hour("os-nest-full", 1)).path("^/v1/"));
    let app = Router::new().nest(
        "/v1",
        Router::new().route("/api/items", get(ok)).layer(layer),
    );
    // The rule on `/api/` counts to its 3; the one on `/v1/` (1 an hour)
    // never matches, or the second request would be refused.
    assert_eq!(
        statuses(&app, 4, || at("/v1/api/items", PEER)).await,
        [200, 200, 200, 429]
    );
}

#[tokio::test]
async fn methods_filter_is_case_insensitive() {
    let memory = InMemoryBackend::new();
    // Lowercase "post" as a string, and a Method, in two rules.
    let layer = ThrottleLayer::new(memory.clone())
        .rule(MiddlewareThrottle::new(per_hour("os-methods-str", 1)).methods(["post"]))
        .rule(MiddlewareThrottle::new(per_hour("os-methods-m", 1)).methods([Method::DELETE]));
    let app = rules_app(layer);

    // GET is not throttled by either rule.
    let gets = statuses(&app, 5, || at("/other", PEER)).await;
    assert_eq!(gets, [200; 5]);

    assert_eq!(
        send(&app, request("POST", "/other", Some(PEER), &[]))
            .await
            .status,
        200
    );
    assert_eq!(
        send(&app, request("POST", "/other", Some(PEER), &[]))
            .await
            .status,
        429
    );
    assert_eq!(
        send(&app, request("DELETE", "/other", Some(PEER), &[]))
            .await
            .status,
        200
    );
    assert_eq!(
        send(&app, request("DELETE", "/other", Some(PEER), &[]))
            .await
            .status,
        429
    );
    // PUT matches neither rule.
    let puts = statuses(&app, 3, || request("PUT", "/other", Some(PEER), &[])).await;
    assert_eq!(puts, [200; 3]);
}

#[tokio::test]
async fn lowercase_method_rule_matches_uppercase_request_and_vice_versa() {
    let memory = InMemoryBackend::new();
    let layer = ThrottleLayer::new(memory)
        .rule(MiddlewareThrottle::new(per_hour("os-methods-mixed", 1)).methods(["pAtCh"]));
    let app = Router::new()
        .route("/p", axum::routing::patch(ok))
        .layer(layer);
    let statuses = statuses(&app, 2, || request("PATCH", "/p", Some(PEER), &[])).await;
    assert_eq!(statuses, [200, 429]);
}

#[tokio::test]
async fn path_filter_is_a_prefix_regex_anchored_at_the_start() {
    let memory = InMemoryBackend::new();
    let layer = ThrottleLayer::new(memory)
        .rule(MiddlewareThrottle::new(per_hour("os-path", 1)).path("/api/"));
    let app = rules_app(layer);

    // "/v1/api/x" contains "/api/" but not at the start: never throttled.
    assert_eq!(statuses(&app, 4, || at("/v1/api/x", PEER)).await, [200; 4]);
    assert_eq!(statuses(&app, 4, || at("/other", PEER)).await, [200; 4]);
    // "/api/x" is matched as a prefix.
    assert_eq!(statuses(&app, 2, || at("/api/x", PEER)).await, [200, 429]);
}

#[tokio::test]
async fn path_filters_are_anchored_whatever_the_pattern() {
    // An alternation: each branch at the start, not "/api/" anywhere.
    let layer = ThrottleLayer::new(InMemoryBackend::new())
        .rule(MiddlewareThrottle::new(per_hour("os-path-alt", 1)).path("/other|/api/"));
    let app = rules_app(layer);
    assert_eq!(statuses(&app, 3, || at("/v1/api/x", PEER)).await, [200; 3]);
    assert_eq!(statuses(&app, 2, || at("/api/x", PEER)).await, [200, 429]);
    // Verbose mode with a comment.
    let layer = ThrottleLayer::new(InMemoryBackend::new())
        .rule(MiddlewareThrottle::new(per_hour("os-path-verbose", 1)).path("(?x) /api/ # the API"));
    let app = rules_app(layer);
    assert_eq!(statuses(&app, 3, || at("/v1/api/x", PEER)).await, [200; 3]);
    assert_eq!(statuses(&app, 2, || at("/api/x", PEER)).await, [200, 429]);
}

/// A path written another way (percent-encoded, `//`, `./`) is still the
/// path the rule names, as the handler reads it.
#[tokio::test]
async fn path_rules_see_through_encodings_and_dot_segments() {
    let t = HttpThrottle::builder()
        .uid("os-path-encoded")
        .limit(2)
        .hours(1)
        .shared_across_routes()
        .build()
        .unwrap();
    let layer = ThrottleLayer::new(InMemoryBackend::new())
        .rule(MiddlewareThrottle::new(t).path("/users/admin/login"));
    let app = Router::new()
        .route(
            "/users/{name}/login",
            axum::routing::post(
                |axum::extract::Path(name): axum::extract::Path<String>| async move { name },
            ),
        )
        .layer(layer);
    let login = |path: &str| request("POST", path, Some(PEER), &[]);
    let first = send(&app, login("/users/admin/login")).await;
    assert_eq!((first.status.as_u16(), first.body.as_str()), (200, "admin"));
    // The handler reads "admin" here too: the rule counts it.
    let encoded = send(&app, login("/users/%61dmin/login")).await;
    assert_eq!(
        (encoded.status.as_u16(), encoded.body.as_str()),
        (200, "admin")
    );
    for path in [
        "/users/ad%6Din/login",
        "/users/%61%64min/login",
        "//users/admin/login",
        "/users/./admin/login",
    ] {
        assert_eq!(send(&app, login(path)).await.status, 429, "{path}");
    }
    // Another user is not the rule's.
    assert_eq!(send(&app, login("/users/bob/login")).await.status, 200);
}

/// Paths the router routes as sent, with `..` or `%2F` kept inside a
/// segment, are counted too: a rule is matched on the path as sent as well
/// as decoded and normalized.
#[tokio::test]
async fn path_rules_count_dot_segments_the_router_routes() {
    let t = HttpThrottle::builder()
        .uid("os-path-dots")
        .limit(1)
        .hours(1)
        .shared_across_routes()
        .build()
        .unwrap();
    let layer =
        ThrottleLayer::new(InMemoryBackend::new()).rule(MiddlewareThrottle::new(t).path("/api/"));
    let app = Router::new()
        .route("/api/{id}", get(ok))
        .route("/api/{a}/{b}", get(ok))
        .layer(layer);
    assert_eq!(send(&app, at("/api/a", PEER)).await.status, 200);
    for path in [
        "/api/..",
        "/api/%2e%2e",
        "/api/x/..",
        "/api/..%2Fsecret",
        "/api/x%2F..%2F..%2Fpublic",
        "/api/.",
    ] {
        assert_eq!(send(&app, at(path, PEER)).await.status, 429, "{path}");
    }
}

#[tokio::test]
async fn path_filter_with_dollar_matches_whole_path_only() {
    let memory = InMemoryBackend::new();
    let layer = ThrottleLayer::new(memory)
        .rule(MiddlewareThrottle::new(per_hour("os-path-dollar", 1)).path(r"/api/x$"));
    let app = rules_app(layer);
    assert_eq!(statuses(&app, 3, || at("/api/y", PEER)).await, [200; 3]);
    assert_eq!(statuses(&app, 2, || at("/api/x", PEER)).await, [200, 429]);
}

#[tokio::test]
async fn hook_filter_true_and_false() {
    let memory = InMemoryBackend::new();
    let layer = ThrottleLayer::new(memory).rule(
        MiddlewareThrottle::new(per_hour("os-hook", 1)).hook(|parts: &http::request::Parts| {
            let on = parts.headers.contains_key("x-throttle-me");
            async move { on }
        }),
    );
    let app = rules_app(layer);
    // Hook false: never throttled.
    assert_eq!(statuses(&app, 4, || at("/other", PEER)).await, [200; 4]);
    // Hook true: limit 1.
    let flagged = || request("GET", "/other", Some(PEER), &[("x-throttle-me", "1")]);
    assert_eq!(statuses(&app, 2, flagged).await, [200, 429]);
    // And still false without the header.
    assert_eq!(send(&app, at("/other", PEER)).await.status, 200);
}

#[tokio::test]
async fn all_filters_must_match() {
    let memory = InMemoryBackend::new();
    let hook_calls = Arc::new(AtomicUsize::new(0));
    let calls = Arc::clone(&hook_calls);
    let rule = MiddlewareThrottle::new(per_hour("os-combo", 1))
        .methods([Method::POST])
        .path("/api/")
        .hook(move |parts: &http::request::Parts| {
            calls.fetch_add(1, Ordering::SeqCst);
            let on = parts.headers.contains_key("x-on");
            async move { on }
        });
    let app = rules_app(ThrottleLayer::new(memory).rule(rule));
    let on = [("x-on", "1")];

    // Any one filter failing: no throttling.
    for _ in 0..3 {
        assert_eq!(
            send(&app, request("GET", "/api/x", Some(PEER), &on))
                .await
                .status,
            200,
            "wrong method"
        );
        assert_eq!(
            send(&app, request("POST", "/other", Some(PEER), &on))
                .await
                .status,
            200,
            "wrong path"
        );
        assert_eq!(
            send(&app, request("POST", "/api/x", Some(PEER), &[]))
                .await
                .status,
            200,
            "hook false"
        );
    }
    // The hook is checked last: only the POST /api/x requests reached it.
    assert_eq!(hook_calls.load(Ordering::SeqCst), 3);

    // All three match: limit 1.
    assert_eq!(
        send(&app, request("POST", "/api/x", Some(PEER), &on))
            .await
            .status,
        200
    );
    assert_eq!(
        send(&app, request("POST", "/api/x", Some(PEER), &on))
            .await
            .status,
        429
    );
}

// ------------------------------------------------------- ordering, short circuit

fn body_responder(
    body: &'static str,
) -> impl Fn(&Throttled) -> axum::response::Response + Send + Sync + 'static {
    move |_t: &Throttled| (StatusCode::TOO_MANY_REQUESTS, body).into_response()
}

#[tokio::test]
async fn first_throttling_rule_answers_and_later_rules_are_not_hit() {
    let memory = InMemoryBackend::new();
    let first = HttpThrottle::builder()
        .uid("os-order-first")
        .limit(2)
        .hours(1)
        .backend(memory.clone())
        .on_throttled(body_responder("first"))
        .build()
        .unwrap();
    let second = HttpThrottle::builder()
        .uid("os-order-second")
        .limit(5)
        .hours(1)
        .backend(memory.clone())
        .on_throttled(body_responder("second"))
        .build()
        .unwrap();
    let layer = ThrottleLayer::new(memory.clone())
        .rule(MiddlewareThrottle::new(first.clone()))
        .rule(MiddlewareThrottle::new(second.clone()));
    let app = rules_app(layer);

    // Two requests: both rules hit (overlapping rules are both counted).
    assert_eq!(statuses(&app, 2, || at("/other", PEER)).await, [200, 200]);
    let probe = || at("/other", PEER);
    // A peek reports what a hit would leave: limit - hits - 1.
    assert!(!first.peek(&probe()).await.unwrap().allowed);
    assert_eq!(second.peek(&probe()).await.unwrap().remaining, 2);

    // Third and fourth: the first rule answers, the second is not hit.
    for _ in 0..2 {
        let reply = send(&app, probe()).await;
        assert_eq!(reply.status, 429);
        assert_eq!(reply.body, "first");
    }
    assert_eq!(second.peek(&probe()).await.unwrap().remaining, 2);
}

#[tokio::test]
async fn a_later_rule_answers_when_only_it_throttles() {
    let memory = InMemoryBackend::new();
    let loose = HttpThrottle::builder()
        .uid("os-later-loose")
        .limit(10)
        .hours(1)
        .on_throttled(body_responder("loose"))
        .build()
        .unwrap();
    let strict = HttpThrottle::builder()
        .uid("os-later-strict")
        .limit(1)
        .hours(1)
        .on_throttled(body_responder("strict"))
        .build()
        .unwrap();
    let layer = ThrottleLayer::new(memory)
        .rule(MiddlewareThrottle::new(loose))
        .rule(MiddlewareThrottle::new(strict));
    let app = rules_app(layer);
    assert_eq!(send(&app, at("/other", PEER)).await.status, 200);
    let reply = send(&app, at("/other", PEER)).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.body, "strict");
}

#[tokio::test]
async fn hooks_of_later_rules_are_not_run_after_a_rejection() {
    let memory = InMemoryBackend::new();
    let hook_calls = Arc::new(AtomicUsize::new(0));
    let calls = Arc::clone(&hook_calls);
    let layer = ThrottleLayer::new(memory)
        .rule(MiddlewareThrottle::new(per_hour("os-sc-first", 1)))
        .rule(MiddlewareThrottle::new(per_hour("os-sc-hooked", 100)).hook(
            move |_: &http::request::Parts| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { true }
            },
        ));
    let app = rules_app(layer);
    assert_eq!(
        statuses(&app, 4, || at("/other", PEER)).await,
        [200, 429, 429, 429]
    );
    assert_eq!(hook_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn rules_after_a_hook_rule_are_still_evaluated_in_order() {
    // A hook rule first makes the rest of the chain asynchronous.
    let memory = InMemoryBackend::new();
    let second = HttpThrottle::builder()
        .uid("os-async-second")
        .limit(2)
        .hours(1)
        .backend(memory.clone())
        .build()
        .unwrap();
    let layer = ThrottleLayer::new(memory.clone())
        .rule(
            MiddlewareThrottle::new(per_hour("os-async-first", 100))
                .hook(|_: &http::request::Parts| async { true }),
        )
        .rule(MiddlewareThrottle::new(second.clone()));
    let app = rules_app(layer);
    assert_eq!(
        statuses(&app, 3, || at("/api/x", PEER)).await,
        [200, 200, 429]
    );
    assert_eq!(second.peek(&at("/api/x", PEER)).await.unwrap().remaining, 0);
}

// ------------------------------------------------------------ per-route counters

#[tokio::test]
async fn route_layers_count_each_route_separately() {
    let t = HttpThrottle::builder()
        .uid("os-per-route")
        .limit(1)
        .hours(1)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/a", get(ok).route_layer(t.layer()))
        .route("/b", get(ok).route_layer(t.layer()));
    assert_eq!(send(&app, at("/a", PEER)).await.status, 200);
    assert_eq!(send(&app, at("/b", PEER)).await.status, 200);
    assert_eq!(send(&app, at("/a", PEER)).await.status, 429);
    assert_eq!(send(&app, at("/b", PEER)).await.status, 429);
}

#[tokio::test]
async fn methods_of_one_route_count_separately() {
    let t = HttpThrottle::builder()
        .uid("os-per-method")
        .limit(1)
        .hours(1)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let app = Router::new().route("/a", get(ok).post(ok).route_layer(t.layer()));
    assert_eq!(send(&app, at("/a", PEER)).await.status, 200);
    assert_eq!(
        send(&app, request("POST", "/a", Some(PEER), &[]))
            .await
            .status,
        200
    );
    assert_eq!(send(&app, at("/a", PEER)).await.status, 429);
}

#[tokio::test]
async fn shared_across_routes_is_one_counter() {
    let t = HttpThrottle::builder()
        .uid("os-shared")
        .limit(2)
        .hours(1)
        .backend(InMemoryBackend::new())
        .shared_across_routes()
        .build()
        .unwrap();
    let app = Router::new()
        .route("/a", get(ok).post(ok).route_layer(t.layer()))
        .route("/b", get(ok).route_layer(t.layer()));
    assert_eq!(send(&app, at("/a", PEER)).await.status, 200);
    assert_eq!(send(&app, at("/b", PEER)).await.status, 200);
    assert_eq!(send(&app, at("/b", PEER)).await.status, 429);
    assert_eq!(
        send(&app, request("POST", "/a", Some(PEER), &[]))
            .await
            .status,
        429
    );
    // Another client has its own counter.
    assert_eq!(send(&app, at("/a", "10.9.9.9:1")).await.status, 200);
}

#[tokio::test]
async fn matched_path_is_the_route_key() {
    let t = HttpThrottle::builder()
        .uid("os-matched")
        .limit(1)
        .hours(1)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let app = Router::new().route(
        "/users/{id}",
        get(|| async { "user" }).route_layer(t.layer()),
    );
    assert_eq!(send(&app, at("/users/1", PEER)).await.status, 200);
    // Another concrete path of the same route shares the counter.
    assert_eq!(send(&app, at("/users/2", PEER)).await.status, 429);
}

// ------------------------------------------------------------------- identities

fn user_identifier(
    parts: &http::request::Parts,
) -> impl Future<Output = Identity> + Send + 'static {
    let user = parts
        .headers
        .get("x-user")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    async move {
        match user.as_deref() {
            Some("admin") => Identity::Unlimited,
            Some(user) => Identity::key(user),
            None => Identity::key("anonymous"),
        }
    }
}

#[tokio::test]
async fn custom_identifier_counts_per_user_and_exempts_unlimited() {
    let memory = InMemoryBackend::new();
    let t = HttpThrottle::builder()
        .uid("os-users")
        .limit(1)
        .hours(1)
        .backend(memory.clone())
        .identifier(user_identifier)
        .build()
        .unwrap();
    let app = Router::new().route("/u", get(ok).route_layer(t.layer()));
    let as_user = |user: &str| request("GET", "/u", Some(PEER), &[("x-user", user)]);

    assert_eq!(send(&app, as_user("alice")).await.status, 200);
    assert_eq!(send(&app, as_user("alice")).await.status, 429);
    // Same address, another user: another counter.
    assert_eq!(send(&app, as_user("bob")).await.status, 200);
    // The admin is exempt, forever.
    let keys_before = memory.len();
    assert_eq!(statuses(&app, 10, || as_user("admin")).await, [200; 10]);
    assert_eq!(
        memory.len(),
        keys_before,
        "exempt requests touch no storage"
    );
    // A custom identifier needs no peer address.
    assert_eq!(
        send(&app, request("GET", "/u", None, &[("x-user", "carol")]))
            .await
            .status,
        200
    );
    // `hit` on an exempt identity returns the unlimited decision.
    let decision = t.hit(&as_user("admin")).await.unwrap();
    assert_eq!(decision, Decision::unlimited());
    assert!(decision.allowed);
}

#[tokio::test]
async fn cost_zero_is_never_throttled() {
    let memory = InMemoryBackend::new();
    let t = HttpThrottle::builder()
        .uid("os-cost0")
        .limit(1)
        .hours(1)
        .cost(0)
        .backend(memory.clone())
        .build()
        .unwrap();
    let app = Router::new().route("/c", get(ok).route_layer(t.layer()));
    assert_eq!(statuses(&app, 5, || at("/c", PEER)).await, [200; 5]);
    assert!(memory.is_empty());
    assert_eq!(t.hit(&at("/c", PEER)).await.unwrap(), Decision::unlimited());
}

#[tokio::test]
async fn cost_above_one_consumes_more() {
    let t = HttpThrottle::builder()
        .uid("os-cost2")
        .limit(5)
        .hours(1)
        .cost(2)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let app = Router::new().route("/c", get(ok).route_layer(t.layer()));
    assert_eq!(statuses(&app, 3, || at("/c", PEER)).await, [200, 200, 429]);
}

#[tokio::test]
async fn unlimited_rate_is_never_throttled() {
    let memory = InMemoryBackend::new();
    let t = HttpThrottle::builder()
        .uid("os-unlimited")
        .rate(Rate::unlimited())
        .headers(RateLimitHeaders::Ietf)
        .backend(memory.clone())
        .build()
        .unwrap();
    let app = Router::new().route("/u", get(ok).route_layer(t.layer()));
    let replies = statuses(&app, 20, || at("/u", PEER)).await;
    assert_eq!(replies, [200; 20]);
    assert!(memory.is_empty());
    // An unlimited throttle sends no rate-limit headers.
    assert!(send(&app, at("/u", PEER))
        .await
        .header("ratelimit")
        .is_none());
    assert_eq!(t.hit(&at("/u", PEER)).await.unwrap(), Decision::unlimited());
}

// -------------------------------------------------------------------- the 429

#[tokio::test]
async fn default_429_status_headers_and_body() {
    let t = HttpThrottle::builder()
        .uid("os-default-429")
        .limit(2)
        .seconds(30)
        .backend(InMemoryBackend::builder().clock(ManualClock::new()).build())
        .build()
        .unwrap();
    let app = Router::new().route("/d", get(ok).route_layer(t.layer()));
    assert_eq!(statuses(&app, 2, || at("/d", PEER)).await, [200, 200]);
    let reply = send(&app, at("/d", PEER)).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    let secs = reply.retry_after();
    // Token bucket, 2 per 30 s, the clock standing still: one token in 15 s.
    assert_eq!(secs, 15);
    assert_eq!(
        reply.body,
        format!("Too many requests. Retry in {secs} seconds.")
    );
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("text/plain"),
        "{:?}",
        reply.header("content-type")
    );
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    // No rate-limit headers unless asked for.
    for name in [
        "ratelimit",
        "ratelimit-policy",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ] {
        assert!(reply.header(name).is_none(), "{name} on a default 429");
    }
}

#[tokio::test(start_paused = true)]
async fn sub_second_retry_after_rounds_up_to_one() {
    // Paused time: the window cannot end between the two requests.
    let t = HttpThrottle::builder()
        .uid("os-subsecond")
        .limit(1)
        .milliseconds(300)
        .strategy(Strategy::FixedWindow)
        .backend(InMemoryBackend::builder().clock(TokioClock::new()).build())
        .build()
        .unwrap();
    let app = Router::new().route("/d", get(ok).route_layer(t.layer()));
    assert_eq!(send(&app, at("/d", PEER)).await.status, 200);
    let reply = send(&app, at("/d", PEER)).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.retry_after(), 1);
    assert_eq!(reply.body, "Too many requests. Retry in 1 seconds.");
}

#[tokio::test]
async fn custom_429_on_throttle_and_on_layer_throttle_wins() {
    let memory = InMemoryBackend::new();
    let own = HttpThrottle::builder()
        .uid("os-custom-own")
        .limit(1)
        .hours(1)
        .on_throttled(|t: &Throttled| {
            (
                StatusCode::TOO_MANY_REQUESTS,
                format!("own: {} after {}s", t.throttle(), t.retry_after_secs()),
            )
                .into_response()
        })
        .build()
        .unwrap();
    let plain = HttpThrottle::builder()
        .uid("os-custom-plain")
        .limit(1)
        .hours(1)
        .build()
        .unwrap();
    let layer = ThrottleLayer::new(memory)
        .on_throttled(|_t: &Throttled| {
            Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .header("x-from", "layer")
                .body(Full::new(Bytes::from_static(b"layer says no")))
                .unwrap()
        })
        .rule(MiddlewareThrottle::new(own).methods(["GET"]))
        .rule(MiddlewareThrottle::new(plain).methods(["POST"]));
    let app = rules_app(layer);

    assert_eq!(send(&app, at("/other", PEER)).await.status, 200);
    let reply = send(&app, at("/other", PEER)).await;
    assert_eq!(reply.status, 429);
    assert!(
        reply.body.starts_with("own: os-custom-own after "),
        "{}",
        reply.body
    );
    // The crate adds Retry-After and no-store to custom responses.
    assert!(reply.retry_after() >= 1);
    assert_eq!(reply.header("cache-control"), Some("no-store"));

    let post = || request("POST", "/other", Some(PEER), &[]);
    assert_eq!(send(&app, post()).await.status, 200);
    let reply = send(&app, post()).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body, "layer says no");
    assert_eq!(reply.header("x-from"), Some("layer"));
    assert!(reply.retry_after() >= 1);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn custom_retry_after_is_kept_and_cache_control_is_always_no_store() {
    let t = HttpThrottle::builder()
        .uid("os-custom-retry")
        .limit(1)
        .hours(1)
        .backend(InMemoryBackend::new())
        .on_throttled(|_: &Throttled| {
            (
                StatusCode::TOO_MANY_REQUESTS,
                [
                    (http::header::RETRY_AFTER, "42"),
                    // A 429 is never cacheable, whatever the responder says.
                    (http::header::CACHE_CONTROL, "public, max-age=60"),
                ],
                "custom",
            )
                .into_response()
        })
        .build()
        .unwrap();
    let app = Router::new().route("/r", get(ok).route_layer(t.layer()));
    send(&app, at("/r", PEER)).await;
    let reply = send(&app, at("/r", PEER)).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.retry_after(), 42);
    assert_eq!(reply.body, "custom");
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(reply.headers.get_all("cache-control").iter().count(), 1);
}

// ------------------------------------------------------------ rate-limit headers

fn header_app(uid: &str, strategy: Strategy, headers: RateLimitHeaders) -> Router {
    let t = HttpThrottle::builder()
        .uid(uid)
        .limit(3)
        .seconds(60)
        .strategy(strategy)
        .headers(headers)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    Router::new().route("/h", get(ok).route_layer(t.layer()))
}

/// The longest time until a key is back to its full quota (60 s period): a
/// sliding window counter's hits still weigh on the next window, so up to two
/// periods there.
fn max_reset(strategy: Strategy) -> u64 {
    match strategy {
        Strategy::SlidingWindowCounter => 120,
        _ => 60,
    }
}

#[tokio::test]
async fn ietf_headers_for_every_strategy() {
    for strategy in STRATEGIES {
        let uid = format!("os-ietf-{}", strategy.name());
        let app = header_app(&uid, strategy, RateLimitHeaders::Ietf);
        for expected_remaining in [2u64, 1, 0] {
            let reply = send(&app, at("/h", PEER)).await;
            assert_eq!(reply.status, 200, "{strategy}");
            assert_eq!(
                reply.header("ratelimit-policy"),
                Some(format!("\"{uid}\";q=3;w=60").as_str()),
                "{strategy}"
            );
            let (name, params) = sf_item(reply.header("ratelimit").expect("RateLimit header"));
            assert_eq!(name, format!("\"{uid}\""));
            assert_eq!(
                sf_param(&params, "r"),
                expected_remaining,
                "{strategy}: {params:?}"
            );
            let t = sf_param(&params, "t");
            assert!((1..=max_reset(strategy)).contains(&t), "{strategy}: t={t}");
        }
        let reply = send(&app, at("/h", PEER)).await;
        assert_eq!(reply.status, 429, "{strategy}");
        assert_eq!(
            reply.header("ratelimit-policy"),
            Some(format!("\"{uid}\";q=3;w=60").as_str())
        );
        let (_, params) = sf_item(reply.header("ratelimit").expect("RateLimit on the 429"));
        assert_eq!(sf_param(&params, "r"), 0, "{strategy}");
        let retry = reply.retry_after();
        assert!((1..=60).contains(&retry), "{strategy}: Retry-After {retry}");
    }
}

#[tokio::test]
async fn legacy_headers_for_every_strategy() {
    for strategy in STRATEGIES {
        let uid = format!("os-legacy-{}", strategy.name());
        let app = header_app(&uid, strategy, RateLimitHeaders::Legacy);
        for expected_remaining in ["2", "1", "0"] {
            let reply = send(&app, at("/h", PEER)).await;
            assert_eq!(reply.status, 200, "{strategy}");
            assert_eq!(reply.header("x-ratelimit-limit"), Some("3"), "{strategy}");
            assert_eq!(
                reply.header("x-ratelimit-remaining"),
                Some(expected_remaining),
                "{strategy}"
            );
            let reset: u64 = reply.header("x-ratelimit-reset").unwrap().parse().unwrap();
            assert!(
                (1..=max_reset(strategy)).contains(&reset),
                "{strategy}: reset {reset}"
            );
            assert!(reply.header("ratelimit").is_none());
        }
        let reply = send(&app, at("/h", PEER)).await;
        assert_eq!(reply.status, 429, "{strategy}");
        assert_eq!(reply.header("x-ratelimit-remaining"), Some("0"));
        assert_eq!(reply.header("x-ratelimit-limit"), Some("3"));
    }
}

#[tokio::test]
async fn no_rate_limit_headers_by_default() {
    for strategy in STRATEGIES {
        let uid = format!("os-noheaders-{}", strategy.name());
        let app = header_app(&uid, strategy, RateLimitHeaders::None);
        let reply = send(&app, at("/h", PEER)).await;
        assert_eq!(reply.status, 200);
        for name in [
            "ratelimit",
            "ratelimit-policy",
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ] {
            assert!(reply.header(name).is_none(), "{strategy}: {name}");
        }
    }
}

#[tokio::test]
async fn ietf_headers_of_two_rules_are_listed_once_each() {
    let memory = InMemoryBackend::new();
    let ietf = |uid: &str, limit| {
        HttpThrottle::builder()
            .uid(uid)
            .limit(limit)
            .minutes(1)
            .headers(RateLimitHeaders::Ietf)
            .build()
            .unwrap()
    };
    let layer = ThrottleLayer::new(memory)
        .rule(MiddlewareThrottle::new(ietf("os-two-a", 5)))
        .rule(MiddlewareThrottle::new(ietf("os-two-b", 2)));
    let app = rules_app(layer);
    let reply = send(&app, at("/other", PEER)).await;
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some("\"os-two-a\";q=5;w=60, \"os-two-b\";q=2;w=60")
    );
    let items: Vec<_> = reply
        .header("ratelimit")
        .unwrap()
        .split(',')
        .map(sf_item)
        .collect();
    assert_eq!(items.len(), 2);
    assert_eq!(sf_param(&items[0].1, "r"), 4);
    assert_eq!(sf_param(&items[1].1, "r"), 1);
}

// ----------------------------------------------------------- client addresses

fn ip_app(uid: &str, proxies: Option<TrustedProxies>) -> Router {
    let mut builder = HttpThrottle::builder()
        .uid(uid)
        .limit(1)
        .hours(1)
        .backend(InMemoryBackend::new());
    if let Some(proxies) = proxies {
        builder = builder.trusted_proxies(proxies);
    }
    let t = builder.build().unwrap();
    Router::new().route("/ip", get(ok).route_layer(t.layer()))
}

#[tokio::test]
async fn forwarding_headers_are_ignored_without_trusted_proxies() {
    let app = ip_app("os-xff-untrusted", None);
    let peer = "127.0.0.1:5000";
    let with = |name: &'static str, value: &'static str| {
        move || request("GET", "/ip", Some(peer), &[(name, value)])
    };
    assert_eq!(
        send(&app, with("x-forwarded-for", "1.1.1.1")())
            .await
            .status,
        200
    );
    // A different spoofed address from the same peer is still the same client.
    assert_eq!(
        send(&app, with("x-forwarded-for", "2.2.2.2")())
            .await
            .status,
        429
    );
    assert_eq!(
        send(&app, with("forwarded", "for=3.3.3.3")()).await.status,
        429
    );
    assert_eq!(send(&app, with("x-real-ip", "4.4.4.4")()).await.status, 429);
}

#[tokio::test]
async fn forwarding_headers_are_honoured_from_trusted_proxies() {
    let proxies = TrustedProxies::new(["127.0.0.0/8"]).unwrap();
    let app = ip_app("os-xff-trusted", Some(proxies));
    let proxy = "127.0.0.1:5000";
    let via = |headers: &[(&str, &str)]| request("GET", "/ip", Some(proxy), headers);

    assert_eq!(
        send(&app, via(&[("x-forwarded-for", "1.1.1.1")]))
            .await
            .status,
        200
    );
    assert_eq!(
        send(&app, via(&[("x-forwarded-for", "2.2.2.2")]))
            .await
            .status,
        200
    );
    // Right-most untrusted wins: 1.1.1.1 (the left-most entry is spoofable,
    // 127.0.0.5 is another trusted proxy).
    assert_eq!(
        send(
            &app,
            via(&[("x-forwarded-for", "9.9.9.9, 1.1.1.1, 127.0.0.5")])
        )
        .await
        .status,
        429
    );
    assert_eq!(
        send(&app, via(&[("x-forwarded-for", "9.9.9.9")]))
            .await
            .status,
        200
    );
    // `Forwarded` (RFC 7239), IPv4 and quoted IPv6 with a port, when the
    // proxies are said to write it.
    let proxies = TrustedProxies::new(["127.0.0.0/8"])
        .unwrap()
        .header(traffik::identity::ForwardedHeader::Forwarded);
    let app = ip_app("os-forwarded-trusted", Some(proxies));
    assert_eq!(
        send(&app, via(&[("forwarded", "for=2.2.2.2;proto=https")]))
            .await
            .status,
        200
    );
    assert_eq!(
        send(&app, via(&[("forwarded", "for=2.2.2.2;proto=https")]))
            .await
            .status,
        429
    );
    assert_eq!(
        send(&app, via(&[("forwarded", "for=\"[2001:db8:5::1]:4711\"")]))
            .await
            .status,
        200
    );
    assert_eq!(
        send(&app, via(&[("forwarded", "for=\"[2001:db8:5::2]\"")]))
            .await
            .status,
        429,
        "same /64"
    );
    // X-Real-IP, when the proxies are said to write it.
    let proxies = TrustedProxies::new(["127.0.0.0/8"])
        .unwrap()
        .header(traffik::identity::ForwardedHeader::XRealIp);
    let app = ip_app("os-real-ip-trusted", Some(proxies));
    assert_eq!(
        send(&app, via(&[("x-real-ip", "5.5.5.5")])).await.status,
        200
    );
    assert_eq!(
        send(&app, via(&[("x-real-ip", "5.5.5.5")])).await.status,
        429
    );
    // A proxy that appends its line: the client's own lines before it are
    // not believed (the first line used to win, so any forged one passed).
    for forged in ["6.6.6.1", "6.6.6.2"] {
        let lines = [("x-real-ip", forged), ("x-real-ip", "5.5.5.5")];
        assert_eq!(send(&app, via(&lines)).await.status, 429, "{forged}");
        // Lines a proxy or CDN folded into one.
        let folded = format!("{forged}, 5.5.5.5");
        let folded = [("x-real-ip", folded.as_str())];
        assert_eq!(send(&app, via(&folded)).await.status, 429, "{forged}");
    }
    // No header (or only one the proxies do not write): the proxy itself is
    // the client.
    assert_eq!(
        send(&app, via(&[("x-forwarded-for", "3.3.3.3")]))
            .await
            .status,
        200
    );
    assert_eq!(send(&app, via(&[])).await.status, 429);

    // An untrusted peer's headers are ignored.
    let direct = |xff: &str| request("GET", "/ip", Some("8.8.8.8:1"), &[("x-forwarded-for", xff)]);
    assert_eq!(send(&app, direct("6.6.6.6")).await.status, 200);
    assert_eq!(send(&app, direct("7.7.7.7")).await.status, 429);
}

/// Made-up method names cannot multiply a per-route quota on a route that
/// answers any method: another case of a standard method is that method,
/// and every other name shares one counter.
#[tokio::test]
async fn made_up_methods_share_one_counter() {
    let t = HttpThrottle::builder()
        .uid("os-methods-made-up")
        .limit(3)
        .hours(1)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let app = Router::new().route("/any", axum::routing::any(ok).layer(t.layer()));
    let with = |method: &str| request(method, "/any", Some(PEER), &[]);
    for _ in 0..3 {
        assert_eq!(send(&app, with("GET")).await.status, 200);
    }
    for method in ["get", "Get", "HEAD", "head"] {
        assert_eq!(send(&app, with(method)).await.status, 429, "{method}");
    }
    let made_up: Vec<u16> = {
        let mut statuses = Vec::new();
        for i in 0..6 {
            statuses.push(send(&app, with(&format!("M{i}"))).await.status.as_u16());
        }
        statuses
    };
    assert_eq!(made_up, [200, 200, 200, 429, 429, 429]);
    assert_eq!(send(&app, with("PURGE")).await.status, 429);
    // The standard methods keep their own counters.
    assert_eq!(send(&app, with("POST")).await.status, 200);
}

/// NAT64 (`64:ff9b::/96`) carries IPv4 clients: each is its own client, not
/// one /64 for all of them.
#[tokio::test]
async fn nat64_clients_are_their_ipv4_address() {
    let app = ip_app("os-nat64", None);
    let from = |peer: &str| at("/ip", peer);
    assert_eq!(send(&app, from("[64:ff9b::102:304]:1")).await.status, 200);
    assert_eq!(
        send(&app, from("[64:ff9b::506:708]:1")).await.status,
        200,
        "another client"
    );
    // The same IPv4 client, directly or through NAT64: one counter.
    assert_eq!(send(&app, from("1.2.3.4:1")).await.status, 429);

    // A proxy reached through NAT64 is the IPv4 proxy it carries: trusted
    // by an IPv4 range, so its X-Forwarded-For is read.
    let proxies = TrustedProxies::new(["10.0.0.0/8"]).unwrap();
    let app = ip_app("os-nat64-proxy", Some(proxies));
    let via = |client: &str| {
        request(
            "GET",
            "/ip",
            Some("[64:ff9b::a00:1]:1"),
            &[("x-forwarded-for", client)],
        )
    };
    assert_eq!(send(&app, via("7.7.7.7")).await.status, 200);
    assert_eq!(
        send(&app, via("8.8.8.8")).await.status,
        200,
        "another client"
    );
    assert_eq!(send(&app, via("7.7.7.7")).await.status, 429);
}

#[tokio::test]
async fn ipv6_clients_are_grouped_by_64() {
    let app = ip_app("os-ipv6-64", None);
    assert_eq!(
        send(&app, at("/ip", "[2001:db8:1:2::1]:1000")).await.status,
        200
    );
    assert_eq!(
        send(&app, at("/ip", "[2001:db8:1:2:ffff:ffff:ffff:ffff]:1001"))
            .await
            .status,
        429,
        "same /64, same client"
    );
    assert_eq!(
        send(&app, at("/ip", "[2001:db8:1:3::1]:1000")).await.status,
        200,
        "another /64"
    );
}

#[tokio::test]
async fn ipv6_prefix_128_separates_addresses() {
    let t = HttpThrottle::builder()
        .uid("os-ipv6-128")
        .limit(1)
        .hours(1)
        .ipv6_prefix(128)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let app = Router::new().route("/ip", get(ok).route_layer(t.layer()));
    assert_eq!(
        send(&app, at("/ip", "[2001:db8:1:2::1]:1000")).await.status,
        200
    );
    assert_eq!(
        send(&app, at("/ip", "[2001:db8:1:2::2]:1000")).await.status,
        200
    );
    assert_eq!(
        send(&app, at("/ip", "[2001:db8:1:2::1]:1000")).await.status,
        429
    );
}

#[tokio::test]
async fn ipv4_mapped_ipv6_peer_is_its_ipv4_address() {
    let app = ip_app("os-mapped", None);
    assert_eq!(send(&app, at("/ip", "10.7.7.7:1")).await.status, 200);
    assert_eq!(
        send(&app, at("/ip", "[::ffff:10.7.7.7]:2")).await.status,
        429
    );
}

// --------------------------------------------- shadow, wait, callbacks, dynamic

#[tokio::test]
async fn shadow_mode_counts_but_never_rejects() {
    let t = HttpThrottle::builder()
        .uid("os-shadow")
        .limit(2)
        .hours(1)
        .shadow(true)
        .headers(RateLimitHeaders::Legacy)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let app = Router::new().route("/s", get(ok).route_layer(t.layer()));
    let replies = statuses(&app, 6, || at("/s", PEER)).await;
    assert_eq!(replies, [200; 6]);
    let peek = t.peek(&at("/s", PEER)).await.unwrap();
    assert_eq!(peek.remaining, 0);
    assert!(!peek.allowed);
    // The headers tell the truth.
    let reply = send(&app, at("/s", PEER)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-ratelimit-remaining"), Some("0"));
    // `hit` in shadow mode is Ok with allowed == false.
    let decision = t.hit(&at("/s", PEER)).await.unwrap();
    assert!(!decision.allowed);
}

/// `/w` behind a throttle of 1 per `seconds` that waits up to `max`, on an
/// in-memory backend with Tokio's (pausable) clock, and that backend.
fn waiting_app(uid: &str, seconds: u64, max: Duration) -> (Router, InMemoryBackend) {
    let memory = InMemoryBackend::builder().clock(TokioClock::new()).build();
    let t = HttpThrottle::builder()
        .uid(uid)
        .limit(1)
        .seconds(seconds)
        .on_exceeded(Exceeded::Wait { max })
        .backend(memory.clone())
        .build()
        .unwrap();
    let app = Router::new().route("/w", get(ok).route_layer(t.layer()));
    (app, memory)
}

#[tokio::test(start_paused = true)]
async fn wait_admits_late_instead_of_rejecting() {
    let (app, _) = waiting_app("os-wait", 2, Duration::from_secs(5));
    assert_eq!(send(&app, at("/w", PEER)).await.status, 200);
    let start = tokio::time::Instant::now();
    assert_eq!(send(&app, at("/w", PEER)).await.status, 200);
    assert!(
        start.elapsed() >= Duration::from_millis(1_900),
        "admitted after {:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn wait_past_max_is_rejected() {
    let (app, _) = waiting_app("os-wait-max", 10, Duration::from_millis(500));
    assert_eq!(send(&app, at("/w", PEER)).await.status, 200);
    let start = tokio::time::Instant::now();
    let reply = send(&app, at("/w", PEER)).await;
    assert_eq!(reply.status, 429);
    assert!((1..=10).contains(&reply.retry_after()));
    // Rejected at once (Tokio's paused clock: no time passed).
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn wait_without_an_upper_bound_admits_late() {
    // `Duration::MAX` is "as long as it takes", not an overflow.
    let (app, _) = waiting_app("os-wait-forever", 2, Duration::MAX);
    assert_eq!(send(&app, at("/w", PEER)).await.status, 200);
    let start = tokio::time::Instant::now();
    assert_eq!(send(&app, at("/w", PEER)).await.status, 200);
    assert!(start.elapsed() >= Duration::from_millis(1_900));
}

/// Spawns `n` requests to `/w` at once; returns each one's status and how
/// long it took (Tokio's paused clock), in the order they came back.
async fn concurrent_waits(app: &Router, n: usize) -> Vec<(u16, Duration)> {
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let app = app.clone();
        tasks.spawn(async move { send(&app, at("/w", PEER)).await.status.as_u16() });
    }
    let mut out = Vec::new();
    while let Some(status) = tasks.join_next().await {
        out.push((status.unwrap(), start.elapsed()));
    }
    out
}

#[tokio::test(start_paused = true)]
async fn max_waiting_bounds_the_requests_held_at_once() {
    let memory = InMemoryBackend::builder().clock(TokioClock::new()).build();
    let t = HttpThrottle::builder()
        .uid("os-max-waiting")
        .limit(1)
        .seconds(10)
        .on_exceeded(Exceeded::Wait {
            max: Duration::from_secs(60),
        })
        .max_waiting(2)
        .backend(memory)
        .build()
        .unwrap();
    let app = Router::new().route("/w", get(ok).route_layer(t.layer()));
    assert_eq!(send(&app, at("/w", PEER)).await.status, 200);

    // Four at once: two are refused at once, two wait their turn (1 per 10 s).
    let secs = |d: Duration| d.as_secs();
    let replies = concurrent_waits(&app, 4).await;
    let got: Vec<(u16, u64)> = replies.iter().map(|&(s, d)| (s, secs(d))).collect();
    assert_eq!(got, [(429, 0), (429, 0), (200, 10), (200, 20)]);

    // Their places are given back: two can wait again.
    let got: Vec<u16> = concurrent_waits(&app, 2)
        .await
        .iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(got, [200, 200]);

    // A waiting request that is dropped gives its place back too.
    let waiting = {
        let app = app.clone();
        tokio::spawn(async move { send(&app, at("/w", PEER)).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "it waits");
    waiting.abort();
    let _ = waiting.await;
    let replies = concurrent_waits(&app, 3).await;
    let got: Vec<u16> = replies.iter().map(|r| r.0).collect();
    assert_eq!(got, [429, 200, 200], "{replies:?}");
}

/// The README's Wait caveat: the estimate is for one request alone, so of
/// six at once on 1/s with `max` 2.5 s, three are admitted a slot apart and
/// three, which each expected to be in time, get their 429 as soon as the
/// next slot (3 s) would come after `max`: at 2 s, not at once.
#[tokio::test(start_paused = true)]
async fn waiters_that_lose_their_turn_are_rejected_when_max_runs_out() {
    let decisions = Arc::new(AtomicUsize::new(0));
    let t = HttpThrottle::builder()
        .uid("os-wait-turns")
        .limit(1)
        .seconds(1)
        .on_decision({
            let decisions = Arc::clone(&decisions);
            move |_: &traffik::Decision| {
                decisions.fetch_add(1, Ordering::SeqCst);
            }
        })
        .on_exceeded(Exceeded::Wait {
            max: Duration::from_millis(2_500),
        })
        .backend(InMemoryBackend::builder().clock(TokioClock::new()).build())
        .build()
        .unwrap();
    let app = Router::new().route("/w", get(ok).route_layer(t.layer()));
    let replies = concurrent_waits(&app, 6).await;
    let ms = |d: Duration| d.as_millis();
    let got: Vec<(u16, u128)> = replies.iter().map(|&(s, d)| (s, ms(d))).collect();
    assert_eq!(
        got,
        [
            (200, 0),
            (200, 1_000),
            (200, 2_000),
            (429, 2_000),
            (429, 2_000),
            (429, 2_000)
        ],
        "{replies:?}"
    );
    // Waiters take turns: the six first asks; the second waiter asks at
    // its slot; each later one asks when its turn comes (the third twice,
    // its first answer being the second's slot). 6 + 1 + 2 + 3.
    assert_eq!(decisions.load(Ordering::SeqCst), 12);
}

/// A dynamic rate below the throttle's cost can never admit the hit:
/// under Wait it is refused at once, not held until `max` (here forever).
#[tokio::test(start_paused = true)]
async fn wait_refuses_at_once_a_hit_costing_more_than_a_dynamic_rate_holds() {
    let t = HttpThrottle::builder()
        .uid("os-wait-cost")
        .dynamic_rate(|_parts: &http::request::Parts| async { Rate::per_minute(1).unwrap() })
        .cost(5)
        .on_exceeded(Exceeded::Wait { max: Duration::MAX })
        .max_waiting(1)
        .backend(InMemoryBackend::builder().clock(TokioClock::new()).build())
        .build()
        .unwrap();
    let app = Router::new().route("/w", get(ok).route_layer(t.layer()));
    let start = tokio::time::Instant::now();
    for _ in 0..2 {
        // Bounded: held forever, it would hang the test instead of failing.
        let reply = tokio::time::timeout(Duration::from_secs(3600), send(&app, at("/w", PEER)))
            .await
            .expect("refused at once, not held");
        assert_eq!(reply.status, 429);
        assert_eq!(reply.retry_after(), 60);
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test]
async fn wait_with_a_short_real_period() {
    let t = HttpThrottle::builder()
        .uid("os-wait-real")
        .limit(1)
        .milliseconds(200)
        .on_exceeded(Exceeded::Wait {
            max: Duration::from_secs(5),
        })
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let app = Router::new().route("/w", get(ok).route_layer(t.layer()));
    let start = std::time::Instant::now();
    assert_eq!(statuses(&app, 3, || at("/w", PEER)).await, [200; 3]);
    assert!(start.elapsed() >= Duration::from_millis(350));
}

#[tokio::test]
async fn on_decision_is_called_per_decision() {
    let allowed = Arc::new(AtomicUsize::new(0));
    let denied = Arc::new(AtomicUsize::new(0));
    let (a, d) = (Arc::clone(&allowed), Arc::clone(&denied));
    let t = HttpThrottle::builder()
        .uid("os-on-decision")
        .limit(2)
        .hours(1)
        .backend(InMemoryBackend::new())
        .on_decision(move |decision: &Decision| {
            if decision.allowed {
                a.fetch_add(1, Ordering::SeqCst);
            } else {
                d.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build()
        .unwrap();
    let app = Router::new().route("/d", get(ok).route_layer(t.layer()));
    assert_eq!(
        statuses(&app, 5, || at("/d", PEER)).await,
        [200, 200, 429, 429, 429]
    );
    assert_eq!(allowed.load(Ordering::SeqCst), 2);
    assert_eq!(denied.load(Ordering::SeqCst), 3);
    // A peek is not a decision that counted.
    t.peek(&at("/d", PEER)).await.unwrap();
    assert_eq!(
        allowed.load(Ordering::SeqCst) + denied.load(Ordering::SeqCst),
        5
    );
}

#[tokio::test]
async fn dynamic_rate_per_request() {
    let t = HttpThrottle::builder()
        .uid("os-dynamic-rate")
        .dynamic_rate(|parts: &http::request::Parts| {
            let tier = parts
                .headers
                .get("x-tier")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            async move {
                match tier.as_deref() {
                    Some("gold") => Rate::per_hour(3).unwrap(),
                    Some("staff") => Rate::unlimited(),
                    _ => "1/hour".parse().unwrap(),
                }
            }
        })
        .headers(RateLimitHeaders::Legacy)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let app = Router::new().route("/t", get(ok).route_layer(t.layer()));
    let tier = |peer: &'static str, tier: &'static str| {
        move || request("GET", "/t", Some(peer), &[("x-tier", tier)])
    };
    assert_eq!(
        statuses(&app, 2, tier("10.0.0.1:1", "free")).await,
        [200, 429]
    );
    let gold = statuses(&app, 4, tier("10.0.0.2:1", "gold")).await;
    assert_eq!(gold, [200, 200, 200, 429]);
    let reply = send(&app, tier("10.0.0.3:1", "gold")()).await;
    assert_eq!(reply.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(
        statuses(&app, 10, tier("10.0.0.4:1", "staff")).await,
        [200; 10]
    );
}

/// The README's caveat: the rate is not part of the key, so a client moved
/// from free (2/min) to pro (5/min) keeps its spent counter and gets the pro
/// quota as it refills (one hit per 12 s), not at once.
#[tokio::test]
async fn a_client_moved_to_a_higher_tier_keeps_its_counter() {
    let t = HttpThrottle::builder()
        .uid("os-tier-upgrade")
        .dynamic_rate(|parts: &http::request::Parts| {
            let pro = parts.headers.contains_key("x-pro");
            async move {
                if pro {
                    Rate::per_minute(5).unwrap()
                } else {
                    Rate::per_minute(2).unwrap()
                }
            }
        })
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let app = Router::new().route("/t", get(ok).route_layer(t.layer()));
    let free = || request("GET", "/t", Some("10.0.0.9:1"), &[]);
    let pro = || request("GET", "/t", Some("10.0.0.9:1"), &[("x-pro", "1")]);
    assert_eq!(statuses(&app, 3, free).await, [200, 200, 429]);
    let reply = send(&app, pro()).await;
    assert_eq!(reply.status, 429);
    // The next pro token: 60 s / 5, less the moment since the free hits.
    assert!(
        (11..=12).contains(&reply.retry_after()),
        "{}",
        reply.retry_after()
    );
}

// --------------------------------------------------------- hit / peek in handlers

#[tokio::test]
async fn hit_in_a_handler_turns_into_the_429() {
    let t = HttpThrottle::builder()
        .uid("os-handler")
        .limit(2)
        .minutes(1)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let handler_t = t.clone();
    let app = Router::new().route(
        "/h",
        get(move |req: AxumRequest| {
            let t = handler_t.clone();
            async move {
                let decision = t.hit(&req).await?;
                Ok::<_, Error>(format!("remaining {}", decision.remaining))
            }
        }),
    );
    let first = send(&app, at("/h", PEER)).await;
    assert_eq!(
        (first.status.as_u16(), first.body.as_str()),
        (200, "remaining 1")
    );
    let second = send(&app, at("/h", PEER)).await;
    assert_eq!(second.body, "remaining 0");
    let third = send(&app, at("/h", PEER)).await;
    assert_eq!(third.status, 429);
    let secs = third.retry_after();
    assert!((1..=60).contains(&secs));
    assert_eq!(
        third.body,
        format!("Too many requests. Retry in {secs} seconds.")
    );
    assert_eq!(third.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn hit_returns_throttled_error_with_the_decision() {
    let t = HttpThrottle::builder()
        .uid("os-hit-err")
        .limit(1)
        .minutes(1)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let req = at("/x", PEER);
    let first = t.hit(&req).await.unwrap();
    assert!(first.allowed);
    assert_eq!((first.limit, first.remaining), (1, 0));
    match t.hit(&req).await {
        Err(Error::Throttled(throttled)) => {
            assert_eq!(throttled.throttle(), "os-hit-err");
            assert!(!throttled.decision().allowed);
            assert!(throttled.retry_after() > Duration::ZERO);
            assert!(throttled.retry_after() <= Duration::from_secs(60));
            assert_eq!(throttled.window(), Duration::from_secs(60));
        }
        other => panic!("expected Throttled, got {other:?}"),
    }
}

#[tokio::test]
async fn peek_does_not_consume() {
    let t = HttpThrottle::builder()
        .uid("os-peek")
        .limit(2)
        .hours(1)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let req = at("/p", PEER);
    for _ in 0..5 {
        let peek = t.peek(&req).await.unwrap();
        assert!(peek.allowed);
        assert_eq!(peek.remaining, 1, "remaining after the hit it would make");
    }
    t.hit(&req).await.unwrap();
    t.hit(&req).await.unwrap();
    let peek = t.peek(&req).await.unwrap();
    assert!(!peek.allowed);
    assert!(peek.retry_after > Duration::ZERO);
    assert!(t.hit(&req).await.unwrap_err().is_throttled());
}

/// A route whose handler counts its own hits with `hit_with_headers` and
/// returns the report with its body.
fn reporting_app(t: HttpThrottle) -> Router {
    Router::new().route(
        "/r",
        get(move |req: AxumRequest| {
            let t = t.clone();
            async move {
                let report = t.hit_with_headers(&req).await?;
                let body = format!("remaining {}", report.decision().remaining);
                Ok::<_, Error>((report, body))
            }
        }),
    )
}

#[tokio::test]
async fn hit_with_headers_gives_allowed_responses_the_layers_headers() {
    for strategy in STRATEGIES {
        for mode in [RateLimitHeaders::Ietf, RateLimitHeaders::Legacy] {
            // One frozen clock for both sides: the same instant, so the same
            // rounded seconds (aligned windows make them depend on it).
            let clock = ManualClock::starting_at(Duration::from_millis(1_000_500));
            let throttle = |uid: String| {
                HttpThrottle::builder()
                    .uid(uid)
                    .limit(3)
                    .seconds(60)
                    .strategy(strategy)
                    .headers(mode)
                    .backend(InMemoryBackend::builder().clock(clock.clone()).build())
                    .build()
                    .unwrap()
            };
            let uid = format!("os-report-{}-{mode:?}", strategy.name());
            let handler = reporting_app(throttle(uid.clone()));
            // The same throttle as a route layer: the reference.
            let layered = Router::new().route(
                "/r",
                get(ok).route_layer(throttle(format!("{uid}-layer")).layer()),
            );
            for remaining in [2u64, 1, 0] {
                let reply = send(&handler, at("/r", PEER)).await;
                let reference = send(&layered, at("/r", PEER)).await;
                assert_eq!(reply.status, 200, "{strategy} {mode:?}");
                assert_eq!(reply.body, format!("remaining {remaining}"));
                for name in [
                    "ratelimit-policy",
                    "ratelimit",
                    "x-ratelimit-limit",
                    "x-ratelimit-remaining",
                    "x-ratelimit-reset",
                ] {
                    let strip = |v: Option<&str>| v.map(|v| v.replace("-layer", ""));
                    assert_eq!(
                        strip(reply.header(name)),
                        strip(reference.header(name)),
                        "{strategy} {mode:?} {name}"
                    );
                }
                match mode {
                    RateLimitHeaders::Ietf => {
                        assert_eq!(
                            reply.header("ratelimit-policy"),
                            Some(format!("\"{uid}\";q=3;w=60").as_str())
                        );
                        let (_, params) = sf_item(reply.header("ratelimit").unwrap());
                        assert_eq!(sf_param(&params, "r"), remaining, "{strategy}");
                        let t = sf_param(&params, "t");
                        assert!((1..=max_reset(strategy)).contains(&t), "{strategy}: t={t}");
                    }
                    _ => {
                        assert_eq!(reply.header("x-ratelimit-limit"), Some("3"));
                        let expected = remaining.to_string();
                        assert_eq!(reply.header("x-ratelimit-remaining"), Some(&*expected));
                    }
                }
            }
            // Over the limit: the error's 429 carries them too.
            let reply = send(&handler, at("/r", PEER)).await;
            assert_eq!(reply.status, 429, "{strategy} {mode:?}");
            assert!((1..=60).contains(&reply.retry_after()));
            let remaining = match mode {
                RateLimitHeaders::Ietf => {
                    sf_param(&sf_item(reply.header("ratelimit").unwrap()).1, "r")
                }
                _ => reply
                    .header("x-ratelimit-remaining")
                    .unwrap()
                    .parse()
                    .unwrap(),
            };
            assert_eq!(remaining, 0, "{strategy} {mode:?}");
        }
    }
}

#[tokio::test]
async fn hit_with_headers_adds_nothing_when_the_throttle_has_no_headers_or_is_exempt() {
    let plain = HttpThrottle::builder()
        .uid("os-report-none")
        .limit(2)
        .minutes(1)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let reply = send(&reporting_app(plain.clone()), at("/r", PEER)).await;
    assert_eq!(
        (reply.status.as_u16(), reply.body.as_str()),
        (200, "remaining 1")
    );
    let report = plain.hit_with_headers(&at("/r", PEER)).await.unwrap();
    assert_eq!(
        (report.decision().limit, report.decision().remaining),
        (2, 0)
    );
    assert!(report.headers().is_empty());

    // An exempt identity: unlimited decision, no headers even when asked for.
    let exempt = HttpThrottle::builder()
        .uid("os-report-exempt")
        .limit(1)
        .minutes(1)
        .headers(RateLimitHeaders::Ietf)
        .identifier(user_identifier)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    for _ in 0..3 {
        let admin = request("GET", "/r", None, &[("x-user", "admin")]);
        let report = exempt.hit_with_headers(&admin).await.unwrap();
        assert_eq!(*report.decision(), Decision::unlimited());
        assert!(report.headers().is_empty());
    }
    // A counted user gets them.
    let user = request("GET", "/r", None, &[("x-user", "ann")]);
    let report = exempt.hit_with_headers(&user).await.unwrap();
    assert_eq!(
        report.headers()["ratelimit-policy"],
        "\"os-report-exempt\";q=1;w=60"
    );
}

#[tokio::test]
async fn hit_with_headers_joins_a_layers_headers_on_one_response() {
    let memory = InMemoryBackend::new();
    let throttle = |uid: &str, limit, mode| {
        HttpThrottle::builder()
            .uid(uid)
            .limit(limit)
            .minutes(1)
            .headers(mode)
            .build()
            .unwrap()
    };
    let handler_t = throttle("os-join-handler", 2, RateLimitHeaders::Ietf);
    let memory_for_handler = memory.clone();
    let app = Router::new()
        .route(
            "/r",
            get(move |req: AxumRequest| {
                let t = handler_t.clone();
                let memory = memory_for_handler.clone();
                async move {
                    let report = traffik::backend::scope(memory, t.hit_with_headers(&req)).await?;
                    Ok::<_, Error>((report, "ok"))
                }
            }),
        )
        .layer(
            ThrottleLayer::new(memory.clone()).rule(MiddlewareThrottle::new(throttle(
                "os-join-layer",
                5,
                RateLimitHeaders::Ietf,
            ))),
        );
    let reply = send(&app, at("/r", PEER)).await;
    assert_eq!(reply.status, 200);
    let policies = reply.header("ratelimit-policy").unwrap();
    assert_eq!(
        policies,
        "\"os-join-handler\";q=2;w=60, \"os-join-layer\";q=5;w=60"
    );
    let items: Vec<_> = reply
        .header("ratelimit")
        .unwrap()
        .split(", ")
        .map(sf_item)
        .collect();
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(items[0].0, "\"os-join-handler\"");
    assert_eq!(sf_param(&items[0].1, "r"), 1);
    assert_eq!(items[1].0, "\"os-join-layer\"");
    assert_eq!(sf_param(&items[1].1, "r"), 4);
}

#[tokio::test]
async fn peek_with_headers_reports_the_quota_without_spending_it() {
    let t = HttpThrottle::builder()
        .uid("os-report-peek")
        .limit(2)
        .minutes(1)
        .headers(RateLimitHeaders::Ietf)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let handler_t = t.clone();
    // The report alone is the response: an empty 200 with the headers.
    let app = Router::new().route(
        "/quota",
        get(move |req: AxumRequest| {
            let t = handler_t.clone();
            async move { t.peek_with_headers(&req).await }
        }),
    );
    let remaining_of = |reply: &Reply| {
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "");
        assert_eq!(
            reply.header("ratelimit-policy"),
            Some("\"os-report-peek\";q=2;w=60")
        );
        sf_param(&sf_item(reply.header("ratelimit").unwrap()).1, "r")
    };
    // What a hit would leave, however often asked.
    for _ in 0..3 {
        assert_eq!(remaining_of(&send(&app, at("/quota", PEER)).await), 1);
    }
    // Hits through request parts count on the same key (same path).
    let (parts, _) = at("/quota", PEER).into_parts();
    let first = t.hit_parts_with_headers(&parts).await.unwrap();
    assert_eq!(first.decision().remaining, 1);
    assert!(first.headers()["ratelimit"]
        .to_str()
        .unwrap()
        .contains("r=1"));
    assert_eq!(remaining_of(&send(&app, at("/quota", PEER)).await), 0);
    t.hit_parts_with_headers(&parts).await.unwrap();
    assert!(t
        .hit_parts_with_headers(&parts)
        .await
        .unwrap_err()
        .is_throttled());
    // Over the limit a peek is still Ok, not allowed, and still reports.
    let peek = t.peek_with_headers(&at("/quota", PEER)).await.unwrap();
    assert!(!peek.decision().allowed);
    assert!(peek.decision().retry_after > Duration::ZERO);
    assert_eq!(remaining_of(&send(&app, at("/quota", PEER)).await), 0);
}

/// The README's `/quota` recipe: a peek looks at the request's own route
/// unless the throttle counts across routes.
#[tokio::test]
async fn a_quota_endpoint_reports_other_routes_only_with_a_shared_throttle() {
    for shared in [false, true] {
        let mut builder = HttpThrottle::builder()
            .uid(format!("os-quota-endpoint-{shared}"))
            .limit(100)
            .minutes(1)
            .headers(RateLimitHeaders::Ietf)
            .backend(InMemoryBackend::new());
        if shared {
            builder = builder.shared_across_routes();
        }
        let t = builder.build().unwrap();
        let peek_t = t.clone();
        let app = Router::new()
            .route("/items", get(|| async { "items" }).route_layer(t.layer()))
            .route(
                "/quota",
                get(move |req: AxumRequest| {
                    let t = peek_t.clone();
                    async move { t.peek_with_headers(&req).await }
                }),
            );
        let remaining =
            |reply: Reply| sf_param(&sf_item(reply.header("ratelimit").unwrap()).1, "r");
        // A fresh client: the peek counts the request itself.
        assert_eq!(remaining(send(&app, at("/quota", PEER)).await), 99);
        for _ in 0..2 {
            assert_eq!(send(&app, at("/items", PEER)).await.status, 200);
        }
        let expected = if shared { 97 } else { 99 };
        assert_eq!(
            remaining(send(&app, at("/quota", PEER)).await),
            expected,
            "shared: {shared}"
        );
    }
}

#[tokio::test]
async fn hit_with_headers_on_a_failed_backend_under_open_reports_nothing() {
    let t = HttpThrottle::builder()
        .uid("os-report-failed")
        .limit(2)
        .minutes(1)
        .headers(RateLimitHeaders::Legacy)
        .backend(FailingBackend::default())
        .build()
        .unwrap();
    let report = t.hit_with_headers(&at("/f", PEER)).await.unwrap();
    assert_eq!(*report.decision(), Decision::unlimited());
    assert!(report.headers().is_empty());
}

/// Outside axum: `apply` onto any response's headers.
#[tokio::test]
async fn hit_with_headers_applies_to_a_plain_response() {
    let t = HttpThrottle::builder()
        .uid("os-report-plain")
        .limit(5)
        .seconds(10)
        .headers(RateLimitHeaders::Legacy)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let report = t.hit_with_headers(&at("/p", PEER)).await.unwrap();
    let mut response = Response::new(Full::new(Bytes::from("hi")));
    response
        .headers_mut()
        .insert("x-ratelimit-remaining", "9".parse().unwrap());
    report.apply(response.headers_mut());
    // The lower remaining (this throttle's 4) wins over the 9 already there.
    assert_eq!(response.headers()["x-ratelimit-remaining"], "4");
    assert_eq!(response.headers()["x-ratelimit-limit"], "5");
    assert_eq!(response.headers()["x-ratelimit-reset"], "2");
}

#[tokio::test]
async fn hit_and_peek_futures_are_send_and_static() {
    let t = HttpThrottle::builder()
        .uid("os-spawn")
        .limit(3)
        .hours(1)
        .identifier(user_identifier)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let req = request("GET", "/s", None, &[("x-user", "spawned")]);
    let hit = t.hit(&req);
    let peek = t.peek(&req);
    let parts_hit = {
        let (parts, _) = request("GET", "/s", None, &[("x-user", "spawned")]).into_parts();
        t.hit_parts(&parts)
    };
    drop(req);
    let first = tokio::spawn(hit).await.unwrap().unwrap();
    assert_eq!(first.remaining, 2);
    let second = tokio::spawn(parts_hit).await.unwrap().unwrap();
    assert_eq!(second.remaining, 1);
    // The peek was created before the hits but looks when polled.
    let peeked = tokio::spawn(peek).await.unwrap().unwrap();
    assert!(peeked.allowed);

    // Spawned from many tasks at once: exactly 3 admitted.
    let t2 = HttpThrottle::builder()
        .uid("os-spawn-many")
        .limit(3)
        .hours(1)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        tasks.spawn(t2.hit(&at("/s", PEER)));
    }
    let mut admitted = 0;
    while let Some(result) = tasks.join_next().await {
        if result.unwrap().is_ok() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 3);
}

// ------------------------------------------------------- plain Tower services

type PlainRequest = Request<Full<Bytes>>;

fn plain_request(peer: Option<&str>) -> PlainRequest {
    let mut req = Request::builder()
        .uri("/plain")
        .body(Full::new(Bytes::new()))
        .unwrap();
    if let Some(peer) = peer {
        req.extensions_mut().insert(addr(peer));
    }
    req
}

async fn plain_status<S, B>(svc: S, req: PlainRequest) -> (u16, String)
where
    S: Service<PlainRequest, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let response = svc.oneshot(req).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn plain_tower_service_with_socket_addr_extension() {
    // `Full<Bytes>` cannot hold traffik's answers: `.any_body()` wraps it.
    let layer = ThrottleLayer::new(InMemoryBackend::new())
        .rule(MiddlewareThrottle::new(per_hour("os-plain", 2)))
        .any_body();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_req: PlainRequest| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"plain"))))
        });
    let peer = Some("192.0.2.1:9");
    assert_eq!(
        plain_status(svc.clone(), plain_request(peer)).await,
        (200, "plain".into())
    );
    assert_eq!(plain_status(svc.clone(), plain_request(peer)).await.0, 200);
    let (status, body) = plain_status(svc.clone(), plain_request(peer)).await;
    assert_eq!(status, 429);
    assert!(body.starts_with("Too many requests. Retry in "));
    // Without an address: the 500 that explains the fix.
    let (status, body) = plain_status(svc.clone(), plain_request(None)).await;
    assert_eq!(status, 500);
    assert!(body.contains("SocketAddr"), "{body}");
}

/// An inner service that is not ready until polled, and refuses calls that
/// were not preceded by a successful `poll_ready` (as Tower requires). Clones
/// start not ready.
struct NeedsPolling {
    ready: bool,
    pending_once: bool,
    calls: Arc<AtomicUsize>,
}

impl Clone for NeedsPolling {
    fn clone(&self) -> Self {
        NeedsPolling {
            ready: false,
            pending_once: false,
            calls: Arc::clone(&self.calls),
        }
    }
}

impl<B> Service<Request<B>> for NeedsPolling {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.ready {
            return Poll::Ready(Ok(()));
        }
        if !self.pending_once {
            // Not ready the first time: wake and say so.
            self.pending_once = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        assert!(self.ready, "inner service called without poll_ready");
        self.ready = false;
        self.pending_once = false;
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(Response::new(Full::new(Bytes::from_static(b"inner")))) })
    }
}

async fn drive_same_service<S>(svc: &mut S, n: usize) -> Vec<u16>
where
    S: Service<PlainRequest, Response = Response<traffik::body::ResponseBody<Full<Bytes>>>>,
    S::Error: std::fmt::Debug,
{
    let mut out = Vec::new();
    for _ in 0..n {
        let ready = svc.ready().await.unwrap();
        let response = ready
            .call(plain_request(Some("192.0.2.7:1")))
            .await
            .unwrap();
        out.push(response.status().as_u16());
    }
    out
}

#[tokio::test]
async fn inner_poll_ready_is_respected_on_the_synchronous_path() {
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = NeedsPolling {
        ready: false,
        pending_once: false,
        calls: Arc::clone(&calls),
    };
    let layer = ThrottleLayer::new(InMemoryBackend::new())
        .rule(MiddlewareThrottle::new(per_hour("os-ready-sync", 3)))
        .any_body();
    let mut svc = ServiceBuilder::new().layer(layer).service(inner);
    assert_eq!(
        drive_same_service(&mut svc, 5).await,
        [200, 200, 200, 429, 429]
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn inner_poll_ready_is_respected_on_the_asynchronous_path() {
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = NeedsPolling {
        ready: false,
        pending_once: false,
        calls: Arc::clone(&calls),
    };
    // A hook makes the check asynchronous: the ready service must be the one
    // that is called later.
    let layer = ThrottleLayer::new(InMemoryBackend::new()).rule(
        MiddlewareThrottle::new(per_hour("os-ready-async", 3)).hook(
            |_: &http::request::Parts| async {
                tokio::task::yield_now().await;
                true
            },
        ),
    );
    let mut svc = ServiceBuilder::new().layer(layer.any_body()).service(inner);
    assert_eq!(
        drive_same_service(&mut svc, 5).await,
        [200, 200, 200, 429, 429]
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn socket_addr_peer_for_a_throttle_hit() {
    let t = HttpThrottle::builder()
        .uid("os-sockaddr-hit")
        .limit(1)
        .hours(1)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let req = plain_request(Some("192.0.2.9:1"));
    assert!(t.hit(&req).await.is_ok());
    assert!(t.hit(&req).await.unwrap_err().is_throttled());
    let other: SocketAddr = addr("192.0.2.10:1");
    let mut req = plain_request(None);
    req.extensions_mut().insert(other);
    assert!(t.hit(&req).await.is_ok());
}

#[tokio::test]
async fn hit_in_a_handler_uses_the_throttles_custom_response() {
    let t = HttpThrottle::builder()
        .uid("os-handler-custom")
        .limit(1)
        .minutes(1)
        .headers(RateLimitHeaders::Legacy)
        .on_throttled(body_responder("custom from handler"))
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let app = Router::new().route(
        "/h",
        get(move |req: AxumRequest| {
            let t = t.clone();
            async move {
                t.hit(&req).await?;
                Ok::<_, Error>("ok")
            }
        }),
    );
    assert_eq!(send(&app, at("/h", PEER)).await.status, 200);
    let reply = send(&app, at("/h", PEER)).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.body, "custom from handler");
    assert!(reply.retry_after() >= 1);
    assert_eq!(reply.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
}

/// A rule on GET covers HEAD too: axum answers HEAD with the GET handler,
/// and HEAD counts on GET's counter.
#[tokio::test]
async fn a_get_rule_covers_head() {
    let layer = ThrottleLayer::new(InMemoryBackend::new())
        .rule(MiddlewareThrottle::new(per_hour("os-rule-head", 1)).methods([Method::GET]));
    let app = rules_app(layer);
    let head = |peer: &'static str| move || request("HEAD", "/other", Some(peer), &[]);
    let get = |peer: &'static str| move || request("GET", "/other", Some(peer), &[]);
    assert_eq!(statuses(&app, 2, head("10.7.0.1:1")).await, [200, 429]);
    assert_eq!(statuses(&app, 1, get("10.7.0.1:1")).await, [429]);
    assert_eq!(statuses(&app, 1, get("10.7.0.2:1")).await, [200]);
    assert_eq!(statuses(&app, 1, head("10.7.0.2:1")).await, [429]);
    // A rule on HEAD alone does not cover GET.
    let layer = ThrottleLayer::new(InMemoryBackend::new())
        .rule(MiddlewareThrottle::new(per_hour("os-rule-head-only", 1)).methods(["HEAD"]));
    let app = rules_app(layer);
    assert_eq!(statuses(&app, 3, get("10.7.0.3:1")).await, [200, 200, 200]);
}

#[tokio::test]
async fn head_counts_as_get() {
    let t = HttpThrottle::builder()
        .uid("head-as-get")
        .limit(2)
        .hours(1)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let app = Router::new().route("/page", get(ok).route_layer(t.layer()));
    let head = || request("HEAD", "/page", Some(PEER), &[]);
    let get_req = || request("GET", "/page", Some(PEER), &[]);
    assert_eq!(send(&app, head()).await.status, 200);
    assert_eq!(send(&app, get_req()).await.status, 200);
    assert_eq!(send(&app, head()).await.status, 429);
    assert_eq!(send(&app, get_req()).await.status, 429);
}

#[tokio::test]
async fn only_the_header_the_proxy_writes_is_read() {
    use traffik::identity::ForwardedHeader;
    let via = |headers: &[(&str, &str)]| request("GET", "/api/x", Some("127.0.0.1:5000"), headers);
    let proxies = TrustedProxies::new(["127.0.0.0/8"]).unwrap();
    // Default: X-Forwarded-For. A proxy appending to it passes a client's
    // Forwarded or X-Real-IP through untouched: forging them changes nothing.
    let t = HttpThrottle::builder()
        .uid("fwd-default")
        .limit(1)
        .hours(1)
        .trusted_proxies(proxies.clone())
        .build()
        .unwrap();
    let app =
        rules_app(ThrottleLayer::new(InMemoryBackend::new()).rule(MiddlewareThrottle::new(t)));
    let forged = |n: u8| {
        let forged = format!("203.0.113.{n}");
        let forwarded = format!("for={forged}");
        via(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("forwarded", &forwarded),
            ("x-real-ip", &forged),
        ])
    };
    assert_eq!(send(&app, forged(1)).await.status, 200);
    assert_eq!(send(&app, forged(2)).await.status, 429);
    // Forwarded only: X-Forwarded-For is ignored.
    let t = HttpThrottle::builder()
        .uid("fwd-only")
        .limit(1)
        .hours(1)
        .trusted_proxies(proxies.header(ForwardedHeader::Forwarded))
        .build()
        .unwrap();
    let app =
        rules_app(ThrottleLayer::new(InMemoryBackend::new()).rule(MiddlewareThrottle::new(t)));
    let spoof = |n: u8| {
        let xff = format!("203.0.113.{n}");
        via(&[("x-forwarded-for", &xff), ("forwarded", "for=198.51.100.1")])
    };
    assert_eq!(send(&app, spoof(1)).await.status, 200);
    assert_eq!(send(&app, spoof(2)).await.status, 429);
}

#[tokio::test]
async fn hit_and_peek_futures_do_nothing_until_polled() {
    let t = HttpThrottle::builder()
        .uid("lazy-futures")
        .rate("2/min")
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let req = at("/lazy", PEER);
    // Created and dropped without being awaited: nothing is counted.
    drop((t.hit(&req), t.hit(&req), t.hit(&req)));
    let first = t.peek(&req);
    assert_eq!(t.hit(&req).await.unwrap().remaining, 1);
    // The peek created before that hit sees the state when it is awaited.
    assert_eq!(first.await.unwrap().remaining, 0);
    assert!(t.hit(&req).await.unwrap().allowed);
    assert!(matches!(t.hit(&req).await, Err(Error::Throttled(_))));
}

// ------------------------------------------- keys past the inline key buffer

/// Keys longer than the 120 bytes built on the stack move to the heap whole:
/// two routes that differ only past that point keep separate counters, in the
/// layer and in a handler's `hit()`.
#[tokio::test]
async fn long_keys_are_counted_whole() {
    let long = format!("/{}", "segment".repeat(25));
    let (route_a, route_b) = (format!("{long}/a"), format!("{long}/b"));
    let memory = InMemoryBackend::new();
    let throttle = HttpThrottle::builder()
        .uid("long-keys")
        .limit(1)
        .hours(1)
        .backend(memory.clone())
        .build()
        .unwrap();
    let app = Router::new()
        .route(&route_a, get(ok))
        .route(&route_b, get(ok))
        .layer(throttle.layer());
    let peer = "[2001:db8:aaaa:bbbb::1]:4000";
    assert_eq!(statuses(&app, 2, || at(&route_a, peer)).await, [200, 429]);
    assert_eq!(statuses(&app, 2, || at(&route_b, peer)).await, [200, 429]);
    assert_eq!(memory.len(), 2);

    let direct = HttpThrottle::builder()
        .uid("long-keys-direct")
        .limit(1)
        .hours(1)
        .backend(memory.clone())
        .build()
        .unwrap();
    let first = direct.hit(&at(&route_a, peer)).await.unwrap();
    assert!(first.allowed);
    assert!(matches!(
        direct.hit(&at(&route_a, peer)).await,
        Err(Error::Throttled(_))
    ));
    assert!(direct.hit(&at(&route_b, peer)).await.unwrap().allowed);
    assert_eq!(memory.len(), 4);
}

/// The layer decides on the direct in-memory path, a handler's `hit` on a
/// future that owns its key: both count on the same key of the client.
#[tokio::test]
async fn the_layer_and_a_handlers_hit_share_a_clients_counter() {
    let memory = InMemoryBackend::new();
    let t = HttpThrottle::builder()
        .uid("os-layer-and-hit")
        .limit(3)
        .hours(1)
        .strategy(Strategy::FixedWindow)
        .backend(memory.clone())
        .build()
        .unwrap();
    let app = Router::new().route("/w", get(ok).route_layer(t.layer()));
    assert_eq!(send(&app, at("/w", PEER)).await.status, 200);
    assert!(t.hit(&at("/w", PEER)).await.unwrap().allowed);
    assert_eq!(send(&app, at("/w", PEER)).await.status, 200);
    let fourth = t.hit(&at("/w", PEER)).await;
    assert!(matches!(fourth, Err(Error::Throttled(_))), "{fourth:?}");
    assert_eq!(send(&app, at("/w", PEER)).await.status, 429);
    assert_eq!(memory.len(), 1, "one key for one client");
}

/// A request held by `Exceeded::Wait` re-hits the same in-memory key: the
/// next request waits again instead of finding a fresh counter.
#[tokio::test(start_paused = true)]
async fn wait_re_hits_the_same_in_memory_key() {
    let (app, memory) = waiting_app("os-wait-same-key", 2, Duration::from_secs(5));
    assert_eq!(send(&app, at("/w", PEER)).await.status, 200);
    let start = tokio::time::Instant::now();
    assert_eq!(send(&app, at("/w", PEER)).await.status, 200);
    assert_eq!(send(&app, at("/w", PEER)).await.status, 200);
    assert!(
        start.elapsed() >= Duration::from_millis(3_900),
        "two waits of a period each, got {:?}",
        start.elapsed()
    );
    assert_eq!(memory.len(), 1, "one key for one client");
}
