//! Decisions, waiting requests, in-flight places and backend latency
//! through the `metrics` facade, read back with `metrics-util`'s debugging
//! recorder (`--features metrics`).
//!
//! The recorder is installed per test thread (`set_default_local_recorder`)
//! rather than globally: tests run in parallel in one process, and each
//! `#[tokio::test]` runs on one thread (current-thread runtime). Handles are
//! registered at a throttle's first decision, so the throttle's first hit
//! must happen while the guard is alive.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/redis_servers/mod.rs"]
mod redis_servers;

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use common::{at, send, FailingBackend, HangingBackend, TokioClock};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};
use traffik::backend::InMemoryBackend;
use traffik::{Exceeded, HttpThrottle, Identity};

const PEER: &str = "10.9.9.9:1000";

/// What the recorder holds now. The debugging recorder *drains* what it
/// shows: counters and gauges read 0 and histograms empty after each
/// snapshot (gauges then move from 0), so take one snapshot per check.
type Snapshot = Vec<(CompositeKey, DebugValue)>;

fn snapshot(snapshotter: &Snapshotter) -> Snapshot {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _unit, _description, value)| (key, value))
        .collect()
}

/// The value of one metric with exactly these labels (any order).
fn value<'s>(
    snapshot: &'s Snapshot,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'s DebugValue> {
    snapshot
        .iter()
        .find(|(key, _)| {
            let key = key.key();
            key.name() == name
                && key.labels().count() == labels.len()
                && labels.iter().all(|(k, v)| {
                    key.labels()
                        .any(|label| label.key() == *k && label.value() == *v)
                })
        })
        .map(|(_, value)| value)
}

fn decisions(snapshot: &Snapshot, throttle: &str, outcome: &str) -> u64 {
    match value(
        snapshot,
        traffik::metrics::DECISIONS,
        &[("throttle", throttle), ("outcome", outcome)],
    ) {
        Some(DebugValue::Counter(n)) => *n,
        None => 0,
        other => panic!("not a counter: {other:?}"),
    }
}

async fn ok() -> &'static str {
    "ok"
}

fn app(throttle: &HttpThrottle) -> Router {
    Router::new().route("/m", get(ok).route_layer(throttle.layer()))
}

#[tokio::test]
async fn decisions_are_counted_by_throttle_and_outcome() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let limited = HttpThrottle::builder()
        .uid("m-limited")
        .rate("2/min")
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let exempt = HttpThrottle::builder()
        .uid("m-exempt")
        .rate("1/min")
        .identifier(|_: &http::request::Parts| async { Identity::Unlimited })
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let failing = HttpThrottle::builder()
        .uid("m-failing")
        .rate("1/min")
        .backend(FailingBackend::default())
        .build()
        .unwrap();
    let shadow = HttpThrottle::builder()
        .uid("m-shadow")
        .rate("1/min")
        .shadow(true)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    for throttle in [&limited, &exempt, &failing, &shadow] {
        let app = app(throttle);
        for _ in 0..3 {
            send(&app, at("/m", PEER)).await;
        }
    }
    let snapshot = snapshot(&snapshotter);
    assert_eq!(decisions(&snapshot, "m-limited", "allowed"), 2);
    assert_eq!(decisions(&snapshot, "m-limited", "throttled"), 1);
    assert_eq!(decisions(&snapshot, "m-exempt", "exempt"), 3);
    assert_eq!(decisions(&snapshot, "m-failing", "error"), 3);
    assert_eq!(decisions(&snapshot, "m-shadow", "allowed"), 1);
    assert_eq!(decisions(&snapshot, "m-shadow", "shadow_throttled"), 2);
    // Every outcome has its series from the first decision on (zeros
    // included), so dashboards see them before they first happen.
    assert_eq!(
        value(
            &snapshot,
            traffik::metrics::DECISIONS,
            &[("throttle", "m-limited"), ("outcome", "error")]
        ),
        Some(&DebugValue::Counter(0))
    );
    // Bounded: 5 series per throttle, none per client or key.
    let series = snapshot
        .iter()
        .filter(|(key, _)| key.kind() == MetricKind::Counter)
        .count();
    assert_eq!(series, 4 * 5);
}

/// Peeks are not decisions; a request decided on a fallback backend counts
/// once, with the fallback's outcome; in-flight places are a gauge.
#[tokio::test]
async fn peeks_fallbacks_and_places() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let peeked = HttpThrottle::builder()
        .uid("m-peek")
        .rate("2/min")
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let request = http::Request::builder()
        .extension(std::net::SocketAddr::from(([10, 0, 0, 1], 1)))
        .body(())
        .unwrap();
    peeked.hit(&request).await.unwrap();
    for _ in 0..3 {
        peeked.peek(&request).await.unwrap();
    }
    let fallback = HttpThrottle::builder()
        .uid("m-fallback")
        .rate("1/min")
        .backend(FailingBackend::default())
        .failure_mode(traffik::FailureMode::fallback(InMemoryBackend::new()))
        .build()
        .unwrap();
    let _ = fallback.hit(&request).await;
    let _ = fallback.hit(&request).await;
    let places = HttpThrottle::builder()
        .uid("m-places")
        .max_in_flight(3)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let held = [
        places.acquire(&request).await.unwrap(),
        places.acquire(&request).await.unwrap(),
    ];
    let snapshot = snapshot(&snapshotter);
    assert_eq!(decisions(&snapshot, "m-peek", "allowed"), 1);
    assert_eq!(decisions(&snapshot, "m-fallback", "allowed"), 1);
    assert_eq!(decisions(&snapshot, "m-fallback", "throttled"), 1);
    assert_eq!(decisions(&snapshot, "m-fallback", "error"), 0);
    assert_eq!(
        value(
            &snapshot,
            traffik::metrics::IN_FLIGHT,
            &[("throttle", "m-places")]
        ),
        Some(&DebugValue::Gauge(2.0.into()))
    );
    drop(held);
    let after = self::snapshot(&snapshotter);
    // The debugging recorder drains on each snapshot: the drop shows as -2.
    assert_eq!(
        value(
            &after,
            traffik::metrics::IN_FLIGHT,
            &[("throttle", "m-places")]
        ),
        Some(&DebugValue::Gauge((-2.0).into()))
    );
}

#[tokio::test(start_paused = true)]
async fn waiting_hits_are_a_gauge() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let throttle = HttpThrottle::builder()
        .uid("m-wait")
        .rate("1/s")
        .on_exceeded(Exceeded::Wait {
            max: Duration::from_secs(5),
        })
        // Tokio's (paused) clock, so that the wait ends.
        .backend(InMemoryBackend::builder().clock(TokioClock::new()).build())
        .build()
        .unwrap();
    let app = app(&throttle);
    assert_eq!(send(&app, at("/m", PEER)).await.status, 200);
    let waiting = tokio::spawn({
        let app = app.clone();
        async move { send(&app, at("/m", PEER)).await.status }
    });
    // Let the second hit start waiting (time is paused: it cannot end).
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    fn gauge(s: &Snapshot) -> Option<&DebugValue> {
        value(s, traffik::metrics::WAITING, &[("throttle", "m-wait")])
    }
    let during = snapshot(&snapshotter);
    assert_eq!(gauge(&during), Some(&DebugValue::Gauge(1.0.into())));
    assert_eq!(decisions(&during, "m-wait", "allowed"), 1);
    assert_eq!(waiting.await.unwrap(), 200);
    // -1 since the last snapshot (which reset the gauge to 0): 0 waiting.
    let after = snapshot(&snapshotter);
    assert_eq!(gauge(&after), Some(&DebugValue::Gauge((-1.0).into())));
    assert_eq!(decisions(&after, "m-wait", "allowed"), 1);
}

#[tokio::test(start_paused = true)]
async fn backends_that_answer_later_are_timed_by_kind() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let throttle = HttpThrottle::builder()
        .uid("m-slow")
        .rate("1/min")
        .backend(HangingBackend {
            timeout: Duration::from_millis(10),
        })
        .build()
        .unwrap();
    let app = app(&throttle);
    for _ in 0..2 {
        send(&app, at("/m", PEER)).await;
    }
    let snapshot = snapshot(&snapshotter);
    match value(
        &snapshot,
        traffik::metrics::BACKEND_SECONDS,
        &[("backend", "custom")],
    ) {
        Some(DebugValue::Histogram(samples)) => assert_eq!(samples.len(), 2),
        other => panic!("expected a histogram, got {other:?}"),
    }
    assert_eq!(decisions(&snapshot, "m-slow", "error"), 2);
}

/// Without a recorder, the facade's no-op recorder: nothing to see, nothing
/// to fail.
#[tokio::test]
async fn no_recorder_no_problem() {
    let throttle = HttpThrottle::builder()
        .uid("m-none")
        .rate("1/min")
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let app = app(&throttle);
    assert_eq!(send(&app, at("/m", PEER)).await.status, 200);
    assert_eq!(send(&app, at("/m", PEER)).await.status, 429);
}

/// Decides until `done` says the answer is the awaited one (5 s at most).
async fn decide_until(
    redis: &traffik::backend::RedisBackend,
    done: impl Fn(&Result<traffik::strategy::Decisions, traffik::Error>) -> bool,
) {
    use traffik::backend::{Op, ThrottleBackend};
    use traffik::key::{Key, Scope};
    let quota =
        traffik::Quota::new("100/s".parse().unwrap(), traffik::Strategy::TokenBucket).unwrap();
    let key = Key::new("breaker", "client", Scope::shared());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let answer = redis.decide(&key, &[quota], 1, Op::Hit).await;
        if done(&answer) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "still {answer:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Redis backend's circuit breaker is a gauge: 0 from `build()`, 1 while
/// Redis cannot be reached (its server stopped: hits fail at once), 0 again
/// once a test hit reaches the restarted server.
#[tokio::test]
async fn the_redis_circuit_breaker_is_a_gauge() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let Some(mut server) = redis_servers::Server::start_or_skip(&[]).await else {
        return;
    };
    let prefix = format!("traffik-test-metrics-breaker-{}", std::process::id());
    let redis = traffik::backend::RedisBackend::builder(server.url())
        .prefix(prefix.clone())
        .persistent(false)
        .timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
        .circuit_breaker(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let breaker = |open: f64| {
        let snapshot = snapshot(&snapshotter);
        let labels = [("prefix", prefix.as_str())];
        let gauge = value(&snapshot, traffik::metrics::BREAKER_OPEN, &labels);
        assert_eq!(gauge, Some(&DebugValue::Gauge(open.into())));
    };
    breaker(0.0);

    server.kill();
    decide_until(
        &redis,
        |answer| matches!(answer, Err(traffik::Error::Backend(e)) if e.is_known_outage()),
    )
    .await;
    breaker(1.0);

    server.restart().await;
    decide_until(&redis, |answer| answer.is_ok()).await;
    breaker(0.0);
}
