//! Claims of the README and the guide (docs/guide) that no other suite
//! checks, driven through an axum `Router` with `tower::ServiceExt::oneshot`
//! (the `common` helpers) and, where time matters, a `ManualClock` (never the wall clock):
//!
//! * legacy `X-RateLimit-*` headers: the most restrictive (lowest remaining)
//!   of several throttles on one request wins, whatever their order;
//! * the route of a key is Axum's `MatchedPath` when present, else the URI
//!   path (requests that match no route count per path);
//! * the in-memory `max_keys` cap: a new key at the cap is counted, and the
//!   key closest to its reset makes room for it, whatever the failure mode,
//!   end to end;
//! * "Testing your own limits": a `ManualClock` makes the 6th request in a
//!   minute a 429 and a minute later a 200; under Tokio's paused clock a
//!   `TokioClock` lets a waiting request through where a `ManualClock`
//!   gives it its 429.

mod common;

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use common::*;
use traffik::backend::InMemoryBackend;
use traffik::clock::ManualClock;
use traffik::{
    FailureMode, HttpThrottle, HttpThrottleBuilder, MiddlewareThrottle, RateLimitHeaders, Strategy,
    ThrottleLayer,
};

const PEER: &str = "10.20.30.40:5000";

async fn ok() -> &'static str {
    "ok"
}

// ------------------------------------------------------------ legacy headers

/// `(X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset)` of a reply.
fn legacy(reply: &Reply) -> (u64, u64, u64) {
    let number = |name: &str| -> u64 {
        reply
            .header(name)
            .unwrap_or_else(|| panic!("{name} missing on a {} reply", reply.status))
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not an integer"))
    };
    (
        number("x-ratelimit-limit"),
        number("x-ratelimit-remaining"),
        number("x-ratelimit-reset"),
    )
}

/// A fixed-window throttle with legacy headers on `memory` (so that its
/// resets are exact under a `ManualClock`).
fn legacy_throttle(uid: &str, memory: &InMemoryBackend) -> HttpThrottleBuilder {
    HttpThrottle::builder()
        .uid(uid)
        .strategy(Strategy::FixedWindow)
        .headers(RateLimitHeaders::Legacy)
        .backend(memory.clone())
}

/// "hourly": 10 per hour, one counter per client for every route.
fn hourly(uid: &str, memory: &InMemoryBackend) -> HttpThrottle {
    legacy_throttle(uid, memory)
        .limit(10)
        .hours(1)
        .shared_across_routes()
        .build()
        .unwrap()
}

/// "minutely": 2 per minute (only ever applied to `/h`).
fn minutely(uid: &str, memory: &InMemoryBackend) -> HttpThrottle {
    legacy_throttle(uid, memory)
        .limit(2)
        .minutes(1)
        .build()
        .unwrap()
}

/// How the two throttles are put on the app.
#[derive(Clone, Copy, Debug)]
enum Placement {
    /// One `ThrottleLayer`: rules `[hourly, minutely /h]`.
    RulesHourlyFirst,
    /// One `ThrottleLayer`: rules `[minutely /h, hourly]`.
    RulesMinutelyFirst,
    /// `Router::layer` rule hourly, `route_layer` minutely on `/h`.
    LayerHourlyRouteMinutely,
    /// `Router::layer` rule minutely on `/h`, `route_layer` hourly on both routes.
    LayerMinutelyRouteHourly,
}

impl Placement {
    const ALL: [Placement; 4] = [
        Placement::RulesHourlyFirst,
        Placement::RulesMinutelyFirst,
        Placement::LayerHourlyRouteMinutely,
        Placement::LayerMinutelyRouteHourly,
    ];

    /// Whether the hourly throttle is hit before the minutely one (when the
    /// minutely one throttles, the hourly one was counted too).
    fn hourly_first(self) -> bool {
        matches!(
            self,
            Placement::RulesHourlyFirst | Placement::LayerHourlyRouteMinutely
        )
    }

    /// `/h` (both throttles) and `/other` (hourly only) on a fresh backend
    /// driven by `clock`.
    fn app(self, clock: &ManualClock) -> Router {
        let memory = InMemoryBackend::builder().clock(clock.clone()).build();
        let uid = |name: &str| format!("rc-legacy-{name}-{self:?}");
        let hourly = hourly(&uid("hourly"), &memory);
        let minutely = minutely(&uid("minutely"), &memory);
        match self {
            Placement::RulesHourlyFirst | Placement::RulesMinutelyFirst => {
                let hourly = MiddlewareThrottle::new(hourly);
                let minutely = MiddlewareThrottle::new(minutely).path("^/h$");
                let rules = if self.hourly_first() {
                    [hourly, minutely]
                } else {
                    [minutely, hourly]
                };
                Router::new()
                    .route("/h", get(ok))
                    .route("/other", get(ok))
                    .layer(ThrottleLayer::new(memory).rules(rules))
            }
            Placement::LayerHourlyRouteMinutely => Router::new()
                .route("/h", get(ok).route_layer(minutely.layer()))
                .route("/other", get(ok))
                .layer(ThrottleLayer::new(memory).rule(MiddlewareThrottle::new(hourly))),
            Placement::LayerMinutelyRouteHourly => Router::new()
                .route("/h", get(ok).route_layer(hourly.layer()))
                .route("/other", get(ok).route_layer(hourly.layer()))
                .layer(
                    ThrottleLayer::new(memory).rule(MiddlewareThrottle::new(minutely).path("^/h$")),
                ),
        }
    }
}

#[tokio::test]
async fn legacy_headers_show_the_throttle_with_the_lowest_remaining_in_any_order() {
    for placement in Placement::ALL {
        let clock = ManualClock::starting_at(Duration::from_secs(1_000));
        let app = placement.app(&clock);
        let ctx = format!("{placement:?}");

        // Phase 1: the minutely throttle (lower limit) is the most restrictive.
        // t=0: hourly 9 left (reset 3600), minutely 1 left (reset 60).
        let reply = send(&app, at("/h", PEER)).await;
        assert_eq!(reply.status, 200, "{ctx}");
        assert_eq!(legacy(&reply), (2, 1, 60), "{ctx}");

        // t=20: hourly 8 left (reset 3580), minutely 0 left (reset 40).
        clock.advance(Duration::from_secs(20));
        let reply = send(&app, at("/h", PEER)).await;
        assert_eq!(reply.status, 200, "{ctx}");
        assert_eq!(legacy(&reply), (2, 0, 40), "{ctx}");

        // t=40: the minutely throttle answers 429 (hourly, if hit first, has
        // 7 left): its values, 20 s to its window's end.
        clock.advance(Duration::from_secs(20));
        let reply = send(&app, at("/h", PEER)).await;
        assert_eq!(reply.status, 429, "{ctx}");
        assert_eq!(reply.retry_after(), 20, "{ctx}");
        assert_eq!(legacy(&reply), (2, 0, 20), "{ctx}");

        // Phase 2: drain the hourly throttle on `/other` (only it applies
        // there) down to 1 left; its own headers are on those replies.
        let used = if placement.hourly_first() { 3 } else { 2 };
        for n in used..9 {
            let reply = send(&app, at("/other", PEER)).await;
            assert_eq!(reply.status, 200, "{ctx}");
            assert_eq!(legacy(&reply), (10, 9 - n, 3560), "{ctx}");
        }

        // t=80: the minutely window (from t=0) is over: minutely 1 left
        // (reset 60), hourly 0 left (reset 3520). The hourly throttle, with
        // the higher limit, is now the most restrictive and wins.
        clock.advance(Duration::from_secs(40));
        let reply = send(&app, at("/h", PEER)).await;
        assert_eq!(reply.status, 200, "{ctx}");
        assert_eq!(legacy(&reply), (10, 0, 3520), "{ctx}");

        // The hourly throttle now answers 429 for its whole window.
        let reply = send(&app, at("/h", PEER)).await;
        assert_eq!(reply.status, 429, "{ctx}");
        assert_eq!(reply.retry_after(), 3520, "{ctx}");
        // Both throttles may be at 0 here (a tie when minutely ran first), so
        // only the remaining count is certain.
        assert_eq!(legacy(&reply).1, 0, "{ctx}");
    }
}

// ------------------------------------------- route: MatchedPath, else the URI

#[tokio::test]
async fn unmatched_paths_count_per_uri_path_and_matched_routes_per_route() {
    let t = HttpThrottle::builder()
        .uid("rc-route-key")
        .limit(1)
        .hours(1)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/users/{id}", get(ok))
        .layer(ThrottleLayer::new(InMemoryBackend::new()).rule(MiddlewareThrottle::new(t)));

    // No route matches: no MatchedPath, so each URI path has its own counter.
    assert_eq!(statuses(&app, 2, || at("/nope/a", PEER)).await, [404, 429]);
    assert_eq!(statuses(&app, 2, || at("/nope/b", PEER)).await, [404, 429]);
    // A third unmatched path is still fresh.
    assert_eq!(send(&app, at("/nope/c", PEER)).await.status, 404);

    // One matched route, two path parameters: the route `/users/{id}` is the
    // key, so the second user's request shares the first one's counter.
    assert_eq!(send(&app, at("/users/1", PEER)).await.status, 200);
    assert_eq!(send(&app, at("/users/2", PEER)).await.status, 429);
    assert_eq!(send(&app, at("/users/1", PEER)).await.status, 429);
    // An unmatched path that looks like the route's text is its own key.
    assert_eq!(send(&app, at("/users/1/extra", PEER)).await.status, 404);
}

// ------------------------------------------------------- the in-memory key cap

const CLIENT_A: &str = "10.9.0.1:1000";
const CLIENT_B: &str = "10.9.0.2:1000";
const CLIENT_C: &str = "10.9.0.3:1000";

/// `/k` behind a layer rule of 1 per day under `mode`, on an in-memory
/// backend of one shard holding at most 2 keys, with its manual clock.
fn capped_app(uid: &str, mode: FailureMode) -> (Router, InMemoryBackend, ManualClock) {
    let clock = ManualClock::starting_at(Duration::from_secs(1_000));
    let memory = InMemoryBackend::builder()
        .clock(clock.clone())
        .shards(1)
        .max_keys(2)
        .build();
    let t = HttpThrottle::builder()
        .uid(uid)
        .limit(1)
        .days(1)
        .failure_mode(mode)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/k", get(ok))
        .layer(ThrottleLayer::new(memory.clone()).rule(MiddlewareThrottle::new(t)));
    (app, memory, clock)
}

#[tokio::test]
async fn key_cap_counts_new_clients_in_the_place_of_the_oldest_key() {
    for mode in [FailureMode::Open, FailureMode::Closed] {
        let (app, memory, clock) = capped_app(&format!("rc-cap-{mode:?}"), mode.clone());
        assert_eq!(send(&app, at("/k", CLIENT_A)).await.status, 200);
        clock.advance(Duration::from_secs(1));
        assert_eq!(send(&app, at("/k", CLIENT_B)).await.status, 200);
        assert_eq!(memory.len(), 2);

        // A third client at the cap is counted (never let through uncounted,
        // never a 503): A's key, the closest to its reset, makes room.
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            statuses(&app, 3, || at("/k", CLIENT_C)).await,
            [200, 429, 429],
            "{mode:?}"
        );
        assert_eq!(memory.len(), 2);

        // B is still counted; A starts afresh (its key went), in B's place.
        let reply = send(&app, at("/k", CLIENT_B)).await;
        assert_eq!(reply.status, 429, "{mode:?}");
        assert!(reply.retry_after() >= 86_000);
        assert_eq!(send(&app, at("/k", CLIENT_A)).await.status, 200);
        assert_eq!(send(&app, at("/k", CLIENT_A)).await.status, 429);
        assert_eq!(send(&app, at("/k", CLIENT_C)).await.status, 429);
        assert_eq!(memory.len(), 2);
    }
}

// --------------------------------------------------- testing your own limits

fn five_a_minute(uid: &str, memory: InMemoryBackend) -> Router {
    let t = HttpThrottle::builder()
        .uid(uid)
        .rate("5/min")
        .backend(memory)
        .build()
        .unwrap();
    Router::new().route("/api/items", get(ok).route_layer(t.layer()))
}

#[tokio::test]
async fn a_manual_clock_tests_a_limit_without_sleeping() {
    let clock = ManualClock::new();
    let memory = InMemoryBackend::builder().clock(clock.clone()).build();
    let app = five_a_minute("rc-testing-manual", memory);
    let req = || at("/api/items", PEER);
    assert_eq!(statuses(&app, 6, req).await, [200, 200, 200, 200, 200, 429]);
    clock.advance(Duration::from_secs(60));
    assert_eq!(send(&app, req()).await.status, 200);
}

#[tokio::test(start_paused = true)]
async fn waiting_requests_need_tokio_s_clock_under_a_paused_runtime() {
    use traffik::clock::TokioClock;
    use traffik::Exceeded;

    let wait = |uid: &str, memory: InMemoryBackend| {
        let t = HttpThrottle::builder()
            .uid(uid)
            .rate("5/min")
            .on_exceeded(Exceeded::Wait {
                max: Duration::from_secs(30),
            })
            .backend(memory)
            .build()
            .unwrap();
        Router::new().route("/api/items", get(ok).route_layer(t.layer()))
    };
    let req = || at("/api/items", PEER);
    // TokioClock: the 6th waits 12 s of Tokio's paused time, then passes.
    let app = wait(
        "rc-testing-tokio",
        InMemoryBackend::builder().clock(TokioClock::new()).build(),
    );
    assert_eq!(statuses(&app, 5, req).await, [200; 5]);
    let start = tokio::time::Instant::now();
    assert_eq!(send(&app, req()).await.status, 200);
    assert!(
        start.elapsed() >= Duration::from_secs(11),
        "{:?}",
        start.elapsed()
    );
    // ManualClock: the backend never sees the wait; the 6th gets its 429.
    let app = wait(
        "rc-testing-stuck",
        InMemoryBackend::builder().clock(ManualClock::new()).build(),
    );
    assert_eq!(statuses(&app, 5, req).await, [200; 5]);
    assert_eq!(send(&app, req()).await.status, 429);
}
