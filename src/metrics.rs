//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`): any exporter works, Prometheus included.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `traffik_decisions_total` | counter | `throttle` (uid), `outcome` | each request or message a throttle decided, once: `allowed`, `throttled`, `exempt` (no limit applied: an unlimited identity or rate, cost 0), `error` (the backend failed; the failure mode answered), `shadow_throttled` (over the limit, let through in shadow mode). Peeks are not counted |
//! | `traffik_waiting_requests` | gauge | `throttle` | requests held now under [`Exceeded::Wait`](crate::Exceeded::Wait) |
//! | `traffik_in_flight_requests` | gauge | `throttle` | in-flight places this app instance holds now (`.max_in_flight(n)`) |
//! | `traffik_backend_seconds` | histogram | `backend` ([`ThrottleBackend::kind`](crate::backend::ThrottleBackend::kind): `redis`, `custom`…) | time to the answer of a backend that answers later (the in-memory backend, which answers at once, is not timed) |
//! | `traffik_redis_breaker_open` | gauge | `prefix` (the Redis backend's key prefix) | 1 while a Redis backend's circuit breaker is open (Redis unreachable: hits fail at once), else 0; registered at `build()` when the breaker is on |
//!
//! Cardinality is bounded: a series per throttle and outcome, one per
//! backend kind and per Redis backend; no key, client address or route is a
//! label. A throttle
//! registers its series with the recorder installed at its first decision:
//! install the recorder at startup, before serving.

#[cfg(feature = "metrics")]
mod enabled {
    use std::sync::{Arc, OnceLock};

    use ::metrics::{Counter, Gauge, Unit};

    /// `traffik_decisions_total`.
    pub const DECISIONS: &str = "traffik_decisions_total";
    /// `traffik_waiting_requests`.
    pub const WAITING: &str = "traffik_waiting_requests";
    /// `traffik_in_flight_requests`.
    pub const IN_FLIGHT: &str = "traffik_in_flight_requests";
    /// `traffik_backend_seconds`.
    pub const BACKEND_SECONDS: &str = "traffik_backend_seconds";
    /// `traffik_redis_breaker_open`.
    pub const BREAKER_OPEN: &str = "traffik_redis_breaker_open";

    /// How a throttle decided one request.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Outcome {
        Allowed = 0,
        Throttled = 1,
        Exempt = 2,
        Error = 3,
        ShadowThrottled = 4,
    }

    const OUTCOMES: [&str; 5] = [
        "allowed",
        "throttled",
        "exempt",
        "error",
        "shadow_throttled",
    ];

    struct Handles {
        decisions: [Counter; 5],
        waiting: Gauge,
        in_flight: Gauge,
    }

    /// One throttle's series, registered at its first use.
    pub(crate) struct ThrottleMetrics {
        uid: Arc<str>,
        handles: OnceLock<Handles>,
    }

    impl ThrottleMetrics {
        pub(crate) fn new(uid: &Arc<str>) -> Self {
            ThrottleMetrics {
                uid: Arc::clone(uid),
                handles: OnceLock::new(),
            }
        }

        #[inline]
        fn handles(&self) -> &Handles {
            self.handles.get_or_init(|| {
                describe();
                let uid = ::metrics::SharedString::from(Arc::clone(&self.uid));
                let counter = |outcome: &'static str| {
                    ::metrics::counter!(DECISIONS, "throttle" => uid.clone(), "outcome" => outcome)
                };
                Handles {
                    decisions: OUTCOMES.map(counter),
                    waiting: ::metrics::gauge!(WAITING, "throttle" => uid.clone()),
                    in_flight: ::metrics::gauge!(IN_FLIGHT, "throttle" => uid.clone()),
                }
            })
        }

        #[inline]
        pub(crate) fn decision(&self, outcome: Outcome) {
            self.handles().decisions[outcome as usize].increment(1);
        }

        pub(crate) fn waiting(&self, delta: f64) {
            self.handles().waiting.increment(delta);
        }

        pub(crate) fn in_flight(&self, delta: f64) {
            self.handles().in_flight.increment(delta);
        }
    }

    /// Records the time one backend call took to answer.
    pub(crate) fn backend_seconds(kind: &'static str, seconds: f64) {
        ::metrics::histogram!(BACKEND_SECONDS, "backend" => kind).record(seconds);
    }

    /// Sets whether the circuit breaker of the Redis backend of `prefix`
    /// is open.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn breaker_open(prefix: &str, open: bool) {
        describe();
        ::metrics::gauge!(BREAKER_OPEN, "prefix" => prefix.to_owned()).set(if open {
            1.0
        } else {
            0.0
        });
    }

    /// Descriptions, for exporters that show them (Prometheus' `# HELP`).
    fn describe() {
        ::metrics::describe_counter!(
            DECISIONS,
            Unit::Count,
            "Decisions of traffik throttles, by throttle and outcome."
        );
        ::metrics::describe_gauge!(
            WAITING,
            Unit::Count,
            "Requests waiting under Exceeded::Wait, by throttle."
        );
        ::metrics::describe_gauge!(
            IN_FLIGHT,
            Unit::Count,
            "In-flight places held by this app instance, by throttle."
        );
        ::metrics::describe_histogram!(
            BACKEND_SECONDS,
            Unit::Seconds,
            "Time to a backend's answer, by backend kind (backends that answer later)."
        );
        ::metrics::describe_gauge!(
            BREAKER_OPEN,
            Unit::Count,
            "1 while a Redis backend's circuit breaker is open, by key prefix."
        );
    }
}

#[cfg(feature = "metrics")]
#[cfg_attr(not(feature = "redis"), allow(unused_imports))]
pub(crate) use enabled::{backend_seconds, breaker_open, Outcome, ThrottleMetrics};
#[cfg(feature = "metrics")]
pub use enabled::{BACKEND_SECONDS, BREAKER_OPEN, DECISIONS, IN_FLIGHT, WAITING};

/// Without the feature: the same calls, doing nothing.
#[cfg(not(feature = "metrics"))]
mod disabled {
    use std::sync::Arc;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Outcome {
        Allowed,
        Throttled,
        Exempt,
        Error,
        ShadowThrottled,
    }

    pub(crate) struct ThrottleMetrics;

    impl ThrottleMetrics {
        #[inline(always)]
        pub(crate) fn new(_: &Arc<str>) -> Self {
            ThrottleMetrics
        }
        #[inline(always)]
        pub(crate) fn decision(&self, _: Outcome) {}
        #[inline(always)]
        pub(crate) fn waiting(&self, _: f64) {}
        #[inline(always)]
        pub(crate) fn in_flight(&self, _: f64) {}
    }

    #[inline(always)]
    pub(crate) fn backend_seconds(_: &'static str, _: f64) {}

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    #[inline(always)]
    pub(crate) fn breaker_open(_: &str, _: bool) {}
}

#[cfg(not(feature = "metrics"))]
#[cfg_attr(not(feature = "redis"), allow(unused_imports))]
pub(crate) use disabled::{backend_seconds, breaker_open, Outcome, ThrottleMetrics};
