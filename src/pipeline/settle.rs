//! Settling a backend's answer: the failure mode, shadow mode, waiting,
//! and what an admitted or refused request gets.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{Admitted, Answer, Ask, Asked, AskedOwned, Core, Exceeded, FailureMode, Limit};
use crate::metrics::Outcome;
use crate::permit::Permit;
use crate::reservation::CountedHit;
use crate::response::RateLimitInfo;
use crate::strategy::Decisions;
use crate::{Decision, Error, Quota, Throttled};

/// A hit's place among those waiting under [`Exceeded::Wait`], given back
/// when the wait ends or the request is dropped.
struct WaitingSlot(Arc<Core>);

impl WaitingSlot {
    /// A place, unless `max_waiting` hits wait already.
    fn take(core: &Arc<Core>) -> Option<WaitingSlot> {
        core.waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < core.max_waiting).then_some(n + 1)
            })
            .ok()
            .map(|_| {
                core.metrics.waiting(1.0);
                WaitingSlot(Arc::clone(core))
            })
    }
}

impl Drop for WaitingSlot {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.waiting(-1.0);
    }
}

impl Core {
    /// Applies the failure mode, shadow mode and waiting to the backend's
    /// answer: the common case (a hit allowed, no callback, nothing to
    /// keep) inline, the rest in [`settle_rest`](Core::settle_rest).
    /// Always inlined, and the decisions borrowed, so that the backend's
    /// answer is not copied on its way here (43 instructions per request,
    /// `scripts/callgrind-layer.sh`, mode ip).
    #[inline(always)]
    pub(super) fn settle(
        self: &Arc<Self>,
        result: Result<Decisions, Error>,
        asked: &Asked<'_>,
    ) -> Answer {
        if let FailureMode::Fallback(_) = self.failure_mode {
            self.note_recovery(&result, asked);
        }
        match result {
            Ok(ref decisions)
                if self.on_decision.is_none()
                    && asked.ask == Ask::Hit
                    && asked.place == 0
                    && decisions.binding().allowed =>
            {
                self.metrics.decision(Outcome::Allowed);
                Answer::Now(Ok(self.admitted(decisions, asked.quotas)))
            }
            result => self.settle_rest(result, asked),
        }
    }

    #[inline(never)]
    fn settle_rest(
        self: &Arc<Self>,
        result: Result<Decisions, Error>,
        asked: &Asked<'_>,
    ) -> Answer {
        let decisions = match result {
            Ok(decisions) => decisions,
            Err(error) => return self.failed(error, asked),
        };
        if asked.ask == Ask::Peek {
            return Answer::Now(Ok(self.admitted(&decisions, asked.quotas)));
        }
        let decision = decisions.binding();
        if let Some(on_decision) = &self.on_decision {
            on_decision(&decision);
        }
        if decision.allowed {
            self.metrics.decision(Outcome::Allowed);
            return Answer::Now(Ok(self.admit(&decisions, asked)));
        }
        if self.shadow {
            self.metrics.decision(Outcome::ShadowThrottled);
            tracing::info!(
                throttle = self.uid(),
                key = %asked.key.shown(asked.backend.prefix()),
                retry_after_ms = decision.retry_after.as_millis() as u64,
                "shadow mode: request would be throttled"
            );
            return Answer::Now(Ok(self.admitted(&decisions, asked.quotas)));
        }
        let capacity = match self.limit {
            Limit::InFlight { max, .. } => max,
            _ => asked.quotas.iter().map(Quota::capacity).min().unwrap_or(0),
        };
        match &self.exceeded {
            // A hit that costs more than a rate holds (a dynamic rate below
            // the cost) is never admitted: no waiting for it.
            Exceeded::Wait { max } if decision.retry_after <= *max && self.cost <= capacity => {
                // Past `max_waiting` hits already waiting: rejected at once.
                let Some(slot) = WaitingSlot::take(self) else {
                    return Answer::Now(Err(self.throttled(&decisions, asked)));
                };
                let (asked, max) = (asked.owned(&self.uid), *max);
                Answer::Later(Box::pin(async move {
                    let core = Arc::clone(&slot.0);
                    let admitted = core.wait_in_line(decision, &asked, max).await;
                    drop(slot);
                    admitted
                }))
            }
            _ => Answer::Now(Err(self.throttled(&decisions, asked))),
        }
    }

    /// Holds a refused hit in its key's line (see [`crate::line`]) until it
    /// is allowed, at most `max` in all. At its turn it waits until the
    /// refusal said to retry (or, for an in-flight place, until a place of
    /// the key is given back in this instance, or a second), and asks again.
    async fn wait_in_line(
        self: Arc<Self>,
        refused: Decision,
        owned: &AskedOwned,
        max: Duration,
    ) -> Result<Admitted, Error> {
        let asked = owned.borrowed();
        // Durations, not instants: `Wait { max: Duration::MAX }` ("as long as
        // it takes") must not overflow.
        let start = tokio::time::Instant::now();
        let left = || max.saturating_sub(start.elapsed());
        let refuse = |decision: Decision| {
            let decisions = Decisions::one(Duration::ZERO, decision);
            Err(self.throttled(&decisions, &asked))
        };
        let turn = match tokio::time::timeout(left(), self.lines.turn(&owned.key)).await {
            Ok(turn) => turn,
            Err(_) => return refuse(refused),
        };
        // A request that waited behind others asks afresh: the slot it was
        // told of went to them.
        let mut decision = refused;
        let mut ask_now = turn.waited;
        loop {
            if !ask_now {
                if decision.retry_after > left() {
                    return refuse(decision);
                }
                let wait = decision.retry_after.max(Duration::from_micros(1));
                match self.limit {
                    Limit::InFlight { .. } => {
                        let _ = tokio::time::timeout(wait, turn.freed.notified()).await;
                    }
                    _ => tokio::time::sleep(wait).await,
                }
            }
            ask_now = false;
            let decisions = match self.ask_backend(&asked).await {
                Ok(decisions) => decisions,
                Err(error) => return self.failed(error, &asked).finish().await,
            };
            decision = decisions.binding();
            if let Some(on_decision) = &self.on_decision {
                on_decision(&decision);
            }
            if decision.allowed {
                self.metrics.decision(Outcome::Allowed);
                return Ok(self.admit(&decisions, &asked));
            }
        }
    }

    /// What an allowed hit gets: its headers, and what it keeps (the hit,
    /// for a refund; the place, for an in-flight limit).
    fn admit(self: &Arc<Self>, decisions: &Decisions, asked: &Asked<'_>) -> Admitted {
        let mut admitted = self.admitted(decisions, asked.quotas);
        if asked.ask == Ask::Reserve {
            admitted.hit = Some(Box::new(CountedHit {
                backend: Arc::clone(asked.backend),
                key: asked.key.owned(&self.uid),
                quotas: Arc::clone(asked.quotas),
                cost: self.cost,
                at: decisions.at(),
            }));
        }
        if let Limit::InFlight { lease, .. } = self.limit {
            admitted.permit = Some(Box::new(Permit::new(
                admitted.decision,
                self,
                asked.backend,
                asked.key.owned(&self.uid),
                asked.place,
                lease,
            )));
        }
        admitted
    }

    #[inline]
    fn admitted(&self, decisions: &Decisions, quotas: &[Quota]) -> Admitted {
        Admitted {
            decision: decisions.binding(),
            headers: (self.policy.headers != crate::RateLimitHeaders::None)
                .then(|| Box::new(RateLimitInfo::new(&self.policy, decisions, quotas))),
            hit: None,
            permit: None,
        }
    }

    fn throttled(&self, decisions: &Decisions, asked: &Asked<'_>) -> Error {
        self.metrics.decision(Outcome::Throttled);
        let decision = decisions.binding();
        tracing::debug!(
            throttle = self.uid(),
            key = %asked.key.shown(asked.backend.prefix()),
            retry_after_ms = decision.retry_after.as_millis() as u64,
            "request throttled"
        );
        Error::Throttled(Throttled::new(
            RateLimitInfo::new(&self.policy, decisions, asked.quotas),
            self.policy.clone(),
        ))
    }

    /// What a request gets when the backend failed: its failure mode, or
    /// the same decision asked of the fallback backend.
    fn failed(self: &Arc<Self>, error: Error, asked: &Asked<'_>) -> Answer {
        let fallback_next =
            matches!(self.failure_mode, FailureMode::Fallback(_)) && !asked.fallback;
        if asked.ask != Ask::Peek
            && !(fallback_next && !self.shadow && !matches!(error, Error::Configuration(_)))
        {
            self.metrics.decision(Outcome::Error);
        }
        let key = asked.key.shown(asked.backend.prefix());
        let chain = crate::error::Chain(&error);
        if self.shadow {
            // Shadow mode never rejects, whatever the failure mode; a quota
            // the backend cannot hold is still an error to fix before the
            // throttle leaves shadow mode.
            if let Error::Configuration(_) = error {
                tracing::error!(throttle = self.uid(), key = %key, error = %chain, "traffik cannot decide this request; letting it through (shadow mode)");
            } else {
                tracing::warn!(throttle = self.uid(), key = %key, error = %chain, "traffik backend failed; letting the request through (shadow mode)");
            }
            return Answer::Now(Ok(Admitted::exempt()));
        }
        if let Error::Configuration(_) = error {
            // Not an outage: a quota the backend cannot hold (e.g. too large
            // for Redis's exact arithmetic). Failing open would silently turn
            // the throttle off.
            tracing::error!(throttle = self.uid(), key = %key, error = %chain, "traffik cannot decide this request");
            return Answer::Now(Err(error));
        }
        let known = matches!(&error, Error::Backend(backend) if backend.is_known_outage());
        match (&self.failure_mode, asked.fallback) {
            (FailureMode::Fallback(fallback), false) => {
                if !self.falling_back.swap(true, Ordering::Relaxed) {
                    tracing::warn!(throttle = self.uid(), key = %key, error = %chain, "traffik backend failed; deciding on the fallback backend until it answers again");
                }
                let asked = Asked {
                    backend: fallback,
                    fallback: true,
                    ..*asked
                };
                return self.ask_and_settle(&asked);
            }
            (FailureMode::Fallback(_), true) => {
                tracing::warn!(throttle = self.uid(), key = %key, error = %chain, "traffik fallback backend failed too; letting the request through");
                return Answer::Now(Ok(Admitted::exempt()));
            }
            _ => {}
        }
        let what = match self.failure_mode {
            FailureMode::Closed => "refusing the request (FailureMode::Closed)",
            _ => "letting the request through (FailureMode::Open)",
        };
        if known {
            // Reported once, when the outage began (a warning from the
            // backend), not once per request.
            tracing::debug!(throttle = self.uid(), key = %key, error = %chain, "traffik backend is down; {what}");
        } else {
            tracing::warn!(throttle = self.uid(), key = %key, error = %chain, "traffik backend failed; {what}");
        }
        match self.failure_mode {
            FailureMode::Closed => Answer::Now(Err(error)),
            _ => Answer::Now(Ok(Admitted::exempt())),
        }
    }

    /// Notes that the throttle's own backend answered again after it fell
    /// back (once, with a `tracing::warn!`).
    fn note_recovery(&self, result: &Result<Decisions, Error>, asked: &Asked<'_>) {
        if result.is_ok()
            && !asked.fallback
            && self.falling_back.load(Ordering::Relaxed)
            && self.falling_back.swap(false, Ordering::Relaxed)
        {
            tracing::warn!(
                throttle = self.uid(),
                "traffik backend answers again; no longer deciding on the fallback backend"
            );
        }
    }
}
