//! [`Reservation`]: a hit counted now that can be given back later.

use std::sync::Arc;

use crate::backend::{DynBackend, Op};
use crate::key::OwnedKey;
use crate::{Decision, Error, Quota};

/// A hit counted by [`HttpThrottle::reserve`](crate::HttpThrottle::reserve):
/// its [`Decision`], and the means to give it back with
/// [`refund`](Reservation::refund) when the request turns out not to count
/// (a login that succeeded, a call that failed upstream). Dropping it keeps
/// the hit.
///
/// ```
/// # #[cfg(feature = "axum")] {
/// use axum::{extract::Request, routing::post, Router};
/// use traffik::{backend::InMemoryBackend, HttpThrottle};
///
/// let logins = HttpThrottle::builder()
///     .uid("login")
///     .rate("5/min")
///     .backend(InMemoryBackend::new())
///     .build()
///     .unwrap();
/// let app: Router = Router::new().route("/login", post(move |req: Request| {
///     let logins = logins.clone();
///     async move {
///         let attempt = logins.reserve(&req).await?; // a 429 past 5 a minute
///         let signed_in = true; // check the credentials here
///         if signed_in {
///             attempt.refund().await?; // only failed attempts count
///         }
///         Ok::<_, traffik::Error>("welcome")
///     }
/// }));
/// # }
/// ```
#[must_use = "dropping a Reservation keeps the hit; call .refund() to give it back"]
#[derive(Debug)]
pub struct Reservation {
    decision: Decision,
    /// `None` when nothing was counted (an exempt request, a backend that
    /// failed open, shadow mode over the limit).
    hit: Option<CountedHit>,
}

/// Where a hit was counted, and when: what a refund needs.
pub(crate) struct CountedHit {
    pub(crate) backend: DynBackend,
    pub(crate) key: OwnedKey,
    pub(crate) quotas: Arc<[Quota]>,
    pub(crate) cost: u64,
    /// The backend's time of the hit.
    pub(crate) at: std::time::Duration,
}

impl std::fmt::Debug for CountedHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountedHit")
            .field("key", &self.key.as_key().text(self.backend.prefix()))
            .field("at", &self.at)
            .finish_non_exhaustive()
    }
}

impl CountedHit {
    /// Gives the hit back (see [`Op::Refund`]).
    pub(crate) async fn refund(self) -> Result<(), Error> {
        let op = Op::Refund { at: self.at };
        self.backend
            .decide(&self.key.as_key(), &self.quotas, self.cost, op)
            .await
            .map(drop)
    }

    /// Gives the hit back without waiting: at once when the backend answers
    /// at once, else in a task on the current Tokio runtime. Failures are
    /// logged.
    pub(crate) fn refund_in_background(self) {
        let uid = self.key.as_key().throttle().to_owned();
        let log = move |error: Error| {
            tracing::warn!(throttle = uid.as_str(), error = %crate::error::Chain(&error), "traffik could not give a hit back");
        };
        let op = Op::Refund { at: self.at };
        let answer = self
            .backend
            .decide(&self.key.as_key(), &self.quotas, self.cost, op);
        match answer.into_ready() {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => log(error),
            Err(pending) => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        if let Err(error) = pending.await {
                            log(error);
                        }
                    });
                }
                Err(_) => log(Error::backend("no Tokio runtime to give the hit back on")),
            },
        }
    }
}

impl Reservation {
    pub(crate) fn new(decision: Decision, hit: Option<CountedHit>) -> Self {
        Reservation { decision, hit }
    }

    /// The decision of the hit.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// Gives the hit back, as far as the throttle's strategy still holds it
    /// (see [`Op::Refund`]): tokens return (up to the capacity), a window's
    /// count goes down while that window lasts, log entries go, a GCRA
    /// arrival time moves back (not before now). After the hit's window
    /// has passed it changes nothing. Atomic like a hit, on every backend.
    /// A request that was not counted (exempt, or let through by a failed
    /// backend) has nothing to give back: `Ok(())`.
    pub async fn refund(self) -> Result<(), Error> {
        match self.hit {
            Some(hit) => hit.refund().await,
            None => Ok(()),
        }
    }
}
