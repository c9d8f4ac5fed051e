//! What a throttle does when its backend fails ([`FailureMode`]) and with
//! a hit over its limit ([`Exceeded`]).

use std::sync::Arc;
use std::time::Duration;

use crate::backend::{DynBackend, IntoBackend};

/// What happens when the backend fails (an error, a timeout, or its
/// circuit breaker open while it cannot be reached).
///
/// ```
/// use traffik::backend::InMemoryBackend;
/// use traffik::{FailureMode, HttpThrottle};
/// // While Redis is down, limit per app instance.
/// let api = HttpThrottle::builder()
///     .uid("api")
///     .rate("100/min")
///     .failure_mode(FailureMode::fallback(InMemoryBackend::new()))
///     .build()
///     .unwrap();
/// # drop(api);
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum FailureMode {
    /// Let the request through uncounted and log a `tracing::warn!` (default).
    #[default]
    Open,
    /// Refuse the request: 503 with `Retry-After` (HTTP), drop the message
    /// (WebSocket).
    Closed,
    /// Ask the same decision of another backend (see
    /// [`FailureMode::fallback`]).
    Fallback(DynBackend),
}

impl FailureMode {
    /// On a failure, the same decision is asked of `backend`, typically an
    /// [`InMemoryBackend`](crate::backend::InMemoryBackend): limits per app
    /// instance during an outage of a shared store. If the fallback fails
    /// too, the request is let through as under [`Open`](FailureMode::Open).
    /// One `tracing::warn!` when the throttle starts falling back, one when
    /// its backend answers again.
    pub fn fallback(backend: impl IntoBackend) -> FailureMode {
        FailureMode::Fallback(backend.into_backend())
    }
}

impl std::fmt::Debug for FailureMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailureMode::Open => f.write_str("Open"),
            FailureMode::Closed => f.write_str("Closed"),
            FailureMode::Fallback(backend) => {
                f.debug_tuple("Fallback").field(&backend.prefix()).finish()
            }
        }
    }
}

/// Two fallbacks are equal when they are the same backend object.
impl PartialEq for FailureMode {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (FailureMode::Fallback(a), FailureMode::Fallback(b)) => Arc::ptr_eq(a, b),
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
        }
    }
}

/// What happens to a hit over the limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exceeded {
    /// Reject it: 429 for HTTP; for WebSocket, drop the message and send the
    /// client a rate-limit notice (default).
    #[default]
    Reject,
    /// Hold it until it is allowed, waiting at most `max` in all; a hit that
    /// would need longer is rejected at once, and so is one that would wait
    /// while [`max_waiting`](crate::ThrottleBuilder::max_waiting) hits
    /// already do.
    Wait {
        /// The longest wait (`Duration::MAX`: as long as it takes).
        max: Duration,
    },
    /// WebSocket: close the connection with code 1008 (policy violation) and
    /// this reason. For HTTP it is the same as `Reject`.
    Close {
        /// The close reason sent to the client.
        reason: String,
    },
}
