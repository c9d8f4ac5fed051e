//! The `tracing` events the README promises: a rejection at DEBUG, a
//! would-be rejection in shadow mode at INFO, a backend failure at WARN in
//! either failure mode, and a request traffik cannot throttle at ERROR.
//! A small recording subscriber is installed for the test's thread only.

mod common;
mod event_recorder;

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use common::*;
use event_recorder::Recorder;
use tracing::Level;
use traffik::backend::InMemoryBackend;
use traffik::{FailureMode, HttpThrottle, MiddlewareThrottle};

const PEER: &str = "10.7.7.7:4000";

async fn ok() -> &'static str {
    "ok"
}

fn one_per_hour(uid: &str) -> traffik::HttpThrottleBuilder {
    HttpThrottle::builder()
        .uid(uid)
        .limit(1)
        .hours(1)
        .backend(InMemoryBackend::new())
}

#[tokio::test]
async fn a_rejection_is_a_debug_event_naming_the_throttle() {
    let (recorder, _guard) = Recorder::install();
    let t = one_per_hour("tr-reject").build().unwrap();
    let app = Router::new().route("/r", get(ok).route_layer(t.layer()));
    assert_eq!(statuses(&app, 3, || at("/r", PEER)).await, [200, 429, 429]);
    let events = recorder.with("message=request throttled");
    assert_eq!(events.len(), 2, "{events:?}");
    for (level, text) in &events {
        assert_eq!(*level, Level::DEBUG);
        assert!(text.contains("throttle=\"tr-reject\""), "{text}");
        assert!(text.contains("retry_after_ms="), "{text}");
    }
}

#[tokio::test]
async fn a_would_be_rejection_in_shadow_mode_is_an_info_event() {
    let (recorder, _guard) = Recorder::install();
    let t = one_per_hour("tr-shadow").shadow(true).build().unwrap();
    let app = Router::new().route("/s", get(ok).route_layer(t.layer()));
    assert_eq!(statuses(&app, 3, || at("/s", PEER)).await, [200; 3]);
    let events = recorder.with("shadow mode: request would be throttled");
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events.iter().all(|(level, _)| *level == Level::INFO));
    // No rejection was logged: nothing was rejected.
    assert!(recorder.with("message=request throttled").is_empty());
}

#[tokio::test]
async fn a_backend_failure_is_a_warning_in_either_failure_mode() {
    let (recorder, _guard) = Recorder::install();
    for (uid, mode, status, says) in [
        ("tr-fail-open", FailureMode::Open, 200, "FailureMode::Open"),
        (
            "tr-fail-closed",
            FailureMode::Closed,
            503,
            "FailureMode::Closed",
        ),
    ] {
        let t = HttpThrottle::builder()
            .uid(uid)
            .limit(1)
            .hours(1)
            .failure_mode(mode)
            .backend(FailingBackend::default())
            .build()
            .unwrap();
        let app = Router::new().route("/f", get(ok).route_layer(t.layer()));
        assert_eq!(statuses(&app, 1, || at("/f", PEER)).await, [status]);
        let events = recorder.with(says);
        assert_eq!(events.len(), 1, "{events:?}");
        let (level, text) = &events[0];
        assert_eq!(*level, Level::WARN);
        assert!(text.contains(&format!("throttle=\"{uid}\"")), "{text}");
        assert!(text.contains("down"), "the backend's error: {text}");
    }
}

#[tokio::test]
async fn a_backend_failure_in_shadow_mode_is_a_warning_and_lets_the_request_through() {
    let (recorder, _guard) = Recorder::install();
    let t = HttpThrottle::builder()
        .uid("tr-fail-shadow")
        .limit(1)
        .hours(1)
        .failure_mode(FailureMode::Closed)
        .shadow(true)
        .backend(FailingBackend::default())
        .build()
        .unwrap();
    let app = Router::new().route("/f", get(ok).route_layer(t.layer()));
    assert_eq!(statuses(&app, 1, || at("/f", PEER)).await, [200]);
    let events = recorder.with("(shadow mode)");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, Level::WARN);
    assert!(
        events[0].1.contains("throttle=\"tr-fail-shadow\""),
        "{:?}",
        events[0]
    );
}

#[tokio::test]
async fn a_request_traffik_cannot_throttle_is_an_error_event() {
    let (recorder, _guard) = Recorder::install();
    let t = one_per_hour("tr-anonymous").build().unwrap();
    let app = Router::new().route("/a", get(ok).route_layer(t.layer()));
    // No ConnectInfo: the client address is unknown.
    let reply = send(&app, request("GET", "/a", None, &[])).await;
    assert_eq!(reply.status, 500);
    let events = recorder.with("traffik cannot throttle this request");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, Level::ERROR);
    assert!(
        events[0].1.contains("into_make_service_with_connect_info"),
        "{:?}",
        events[0]
    );
}

#[test]
fn a_non_standard_method_in_a_rule_is_a_warning() {
    let (recorder, _guard) = Recorder::install();
    let t = one_per_hour("tr-method").build().unwrap();
    // Standard names, in any case, and `http::Method`s: no warning.
    let _ = MiddlewareThrottle::new(t.clone()).methods(["post", "Delete"]);
    let _ = MiddlewareThrottle::new(t.clone()).methods([http::Method::PATCH]);
    assert!(recorder.with("not a standard HTTP method").is_empty());
    // A typo (or an extension method) is accepted, with a warning naming it.
    let _ = MiddlewareThrottle::new(t).methods(["PSOT"]);
    let events = recorder.with("not a standard HTTP method");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, Level::WARN);
    assert!(events[0].1.contains("\"PSOT\""), "{events:?}");
    assert!(events[0].1.contains("throttle=\"tr-method\""), "{events:?}");
}

/// A failure the backend marks as a known outage (a circuit breaker's
/// refusal) is logged at DEBUG, not once per request at WARN, and still
/// follows the failure mode.
#[tokio::test]
async fn a_known_outage_is_a_debug_event_per_request() {
    use traffik::backend::{BackendFuture, BoxFuture, Op, ThrottleBackend};
    use traffik::key::Key;
    use traffik::{BackendError, Error, Quota};

    #[derive(Clone)]
    struct Down;
    impl ThrottleBackend for Down {
        fn prefix(&self) -> &str {
            "down"
        }
        fn decide(&self, _: &Key<'_>, _: &[Quota], _: u64, _: Op) -> BackendFuture {
            BackendFuture::ready(Err(Error::Backend(BackendError::known_outage(
                "the store is down",
            ))))
        }
        fn reset(&self) -> BoxFuture<Result<(), Error>> {
            Box::pin(async { Ok(()) })
        }
    }

    let (recorder, _guard) = Recorder::install();
    for (uid, mode, status) in [
        ("tr-outage-open", FailureMode::Open, 200),
        ("tr-outage-closed", FailureMode::Closed, 503),
    ] {
        let t = HttpThrottle::builder()
            .uid(uid)
            .limit(1)
            .hours(1)
            .failure_mode(mode)
            .backend(Down)
            .build()
            .unwrap();
        let app = Router::new().route("/o", get(ok).route_layer(t.layer()));
        assert_eq!(statuses(&app, 2, || at("/o", PEER)).await, [status; 2]);
        let events = recorder.with(&format!("throttle=\"{uid}\""));
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(
            events.iter().all(|(level, _)| *level == Level::DEBUG),
            "{events:?}"
        );
        assert!(events
            .iter()
            .all(|(_, text)| text.contains("the store is down")));
    }
}

/// A backend that fails while `down` is set (`"primary down"`), and
/// otherwise decides in memory.
#[derive(Clone)]
struct Switchable {
    down: Arc<std::sync::atomic::AtomicBool>,
    memory: InMemoryBackend,
}

impl traffik::backend::ThrottleBackend for Switchable {
    fn prefix(&self) -> &str {
        "switchable"
    }
    fn decide(
        &self,
        key: &traffik::key::Key<'_>,
        quotas: &[traffik::Quota],
        cost: u64,
        op: traffik::backend::Op,
    ) -> traffik::backend::BackendFuture {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return traffik::backend::BackendFuture::ready(Err(traffik::Error::backend(
                "primary down",
            )));
        }
        traffik::backend::ThrottleBackend::decide(&self.memory, key, quotas, cost, op)
    }
    fn reset(&self) -> traffik::backend::BoxFuture<Result<(), traffik::Error>> {
        Box::pin(async { Ok(()) })
    }
}

/// `FailureMode::fallback`: one warning when the fallback starts deciding
/// (naming the throttle and the backend's error), none for the requests it
/// decides after, one when the backend answers again, and the same pair for
/// the next outage; meanwhile the fallback's own limits apply.
#[tokio::test]
async fn the_fallback_warns_once_when_it_starts_and_once_when_the_backend_answers_again() {
    const STARTS: &str = "deciding on the fallback backend until it answers again";
    const ENDS: &str = "traffik backend answers again; no longer deciding on the fallback backend";
    let (recorder, _guard) = Recorder::install();
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let set_down = |value: bool| down.store(value, std::sync::atomic::Ordering::SeqCst);
    let t = HttpThrottle::builder()
        .uid("tr-fallback")
        .limit(2)
        .hours(1)
        .backend(Switchable {
            down: Arc::clone(&down),
            memory: InMemoryBackend::new(),
        })
        .failure_mode(FailureMode::fallback(InMemoryBackend::new()))
        .build()
        .unwrap();
    let app = Router::new().route("/f", get(ok).route_layer(t.layer()));
    let warnings = || {
        recorder
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|(level, _)| *level == Level::WARN)
            .map(|(_, text)| text.clone())
            .collect::<Vec<_>>()
    };

    // The backend answers: one of its two hits used, no warning.
    assert_eq!(statuses(&app, 1, || at("/f", PEER)).await, [200]);
    assert!(warnings().is_empty(), "{:?}", warnings());

    // It fails: the fallback's own 2 an hour, one warning for them all.
    set_down(true);
    assert_eq!(
        statuses(&app, 4, || at("/f", PEER)).await,
        [200, 200, 429, 429]
    );
    let logged = warnings();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(logged[0].contains(STARTS), "{logged:?}");
    assert!(logged[0].contains("throttle=\"tr-fallback\""), "{logged:?}");
    assert!(logged[0].contains("primary down"), "{logged:?}");

    // It answers again: its own count (one more hit left), one warning.
    set_down(false);
    assert_eq!(statuses(&app, 3, || at("/f", PEER)).await, [200, 429, 429]);
    let logged = warnings();
    assert_eq!(logged.len(), 2, "{logged:?}");
    assert!(logged[1].contains(ENDS), "{logged:?}");
    assert!(logged[1].contains("throttle=\"tr-fallback\""), "{logged:?}");

    // The next outage warns again (the fallback's hits are still spent).
    set_down(true);
    assert_eq!(statuses(&app, 2, || at("/f", PEER)).await, [429, 429]);
    set_down(false);
    assert_eq!(statuses(&app, 1, || at("/f", PEER)).await, [429]);
    let logged = warnings();
    assert_eq!(logged.len(), 4, "{logged:?}");
    assert!(logged[2].contains(STARTS), "{logged:?}");
    assert!(logged[3].contains(ENDS), "{logged:?}");
}
