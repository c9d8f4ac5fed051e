//! [`ThrottleService`]: runs the rules, then calls the inner service or
//! answers in its place.

use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::request::Parts;
use http::{Request, Response};
use tower_service::Service;

use super::body::{BodyMode, InnerBody, Places};
use super::future::{Checking, ResponseFuture, State};
use super::{LayerConfig, MiddlewareThrottle};
use crate::backend::BoxFuture;
use crate::pipeline::{Admitted, Answer};
use crate::reservation::CountedHit;
use crate::response::{error_response, is_grpc, BoxBody, RateLimitInfo};
use crate::throttle::{RefundWhen, RequestHead};
use crate::Error;

/// A rule's decision still to be awaited.
type PendingCheck = BoxFuture<Result<Admitted, Error>>;

/// The service of [`ThrottleLayer`](crate::ThrottleLayer). `M` is its [body mode](crate::body).
///
/// A request whose check takes time (a hook, a backend that answers later,
/// [`Exceeded::Wait`](crate::Exceeded::Wait)) holds the inner service that
/// `poll_ready` made ready until its check ends, as any Tower middleware
/// that awaits before calling does. Behind a concurrency limit inside the
/// throttle, waiting requests hold its permits: put such limits outside
/// (before) the throttle. An axum `Router` is always ready.
pub struct ThrottleService<S, M = InnerBody> {
    pub(crate) inner: S,
    pub(crate) config: Arc<LayerConfig>,
    pub(crate) mode: PhantomData<fn() -> M>,
}

impl<S: Clone, M> Clone for ThrottleService<S, M> {
    fn clone(&self) -> Self {
        ThrottleService {
            inner: self.inner.clone(),
            config: Arc::clone(&self.config),
            mode: PhantomData,
        }
    }
}

impl<S, M> std::fmt::Debug for ThrottleService<S, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThrottleService")
            .field("rules", &self.config.rules)
            .finish_non_exhaustive()
    }
}

/// What the rules decided: the headers of the throttles that admitted the
/// request, and the error of the one that refused it, if one did.
pub(crate) struct Outcome {
    pub(crate) admissions: Admissions,
    pub(crate) error: Option<Refusal>,
}

/// A rule's error that stops the request: a throttled request, or a
/// backend or configuration error.
pub(crate) struct Refusal {
    /// The rule's index.
    pub(crate) rule: usize,
    pub(crate) error: Error,
}

/// What the rules that let a request through leave for its response: their
/// rate-limit headers, and the hits to give back if its status says so
/// (`.refund_when(..)`).
#[derive(Default)]
pub(crate) struct Admissions(Option<Box<Kept>>);

/// What [`Admissions`] holds, once a rule leaves something (most requests
/// keep nothing, and move no more than a word).
#[derive(Default)]
struct Kept {
    headers: Vec<RateLimitInfo>,
    refunds: Vec<(Box<CountedHit>, RefundWhen)>,
    /// In-flight places, held until the response body is sent.
    places: Places,
}

impl Admissions {
    #[inline]
    fn record(&mut self, admitted: Admitted, rule: &MiddlewareThrottle) {
        // Taken apart: an admission that keeps nothing leaves nothing to
        // drop (19 instructions per request, scripts/callgrind-layer.sh,
        // mode ip).
        let Admitted {
            headers,
            hit,
            permit,
            ..
        } = admitted;
        if headers.is_none() && permit.is_none() && hit.is_none() {
            return;
        }
        let refund_when = &rule.throttle.inner.refund_when;
        let kept = self.0.get_or_insert_with(Box::default);
        if let Some(info) = headers {
            kept.headers.push(*info);
        }
        if let (Some(hit), Some(refund_when)) = (hit, refund_when) {
            kept.refunds.push((hit, Arc::clone(refund_when)));
        }
        if let Some(permit) = permit {
            kept.places.push(*permit);
        }
    }

    /// Adds the headers to the response, gives back the hits whose
    /// `.refund_when(..)` its status matches, and returns the in-flight
    /// places the response body is to hold.
    #[inline]
    pub(crate) fn apply<B>(&mut self, response: &mut Response<B>) -> Places {
        let Some(kept) = self.0.take() else {
            return Places::new();
        };
        for info in &kept.headers {
            info.apply(response.headers_mut());
        }
        for (hit, refund_when) in kept.refunds {
            if refund_when(response.status()) {
                hit.refund_in_background();
            }
        }
        kept.places
    }
}

impl LayerConfig {
    /// Runs the rules in order, synchronously, recording their admissions.
    /// `Ok(None)`: every matching rule allowed the request; `Ok(Some(error))`:
    /// one refused it; `Err((index, pending))`: continue asynchronously at
    /// rule `index` (a hook to await), after awaiting `pending` (the check of
    /// rule `index - 1` that a backend answers later), if any.
    pub(crate) fn run_sync(
        &self,
        request: &impl RequestHead,
        admissions: &mut Admissions,
    ) -> Result<Option<Refusal>, (usize, Option<PendingCheck>)> {
        for (index, rule) in self.rules.iter().enumerate() {
            if !rule.matches(request) {
                continue;
            }
            if rule.hook.is_some() {
                return Err((index, None));
            }
            match rule
                .throttle
                .inner
                .answer(request, self.backend.as_ref(), rule.ask())
            {
                Answer::Now(Ok(admitted)) => admissions.record(admitted, rule),
                Answer::Now(Err(error)) => return Ok(Some(Refusal { rule: index, error })),
                Answer::Later(pending) => return Err((index + 1, Some(pending))),
            }
        }
        Ok(None)
    }

    pub(crate) async fn run_async(
        self: Arc<Self>,
        parts: Parts,
        start: usize,
        pending: Option<PendingCheck>,
        mut admissions: Admissions,
    ) -> (Parts, Outcome) {
        if let Some(pending) = pending {
            match pending.await {
                // The check of the rule before `start`.
                Ok(admitted) => admissions.record(admitted, &self.rules[start - 1]),
                Err(error) => {
                    let error = Some(Refusal {
                        rule: start - 1,
                        error,
                    });
                    return (parts, Outcome { admissions, error });
                }
            }
        }
        for (index, rule) in self.rules.iter().enumerate().skip(start) {
            if !rule.matches(&parts) {
                continue;
            }
            if let Some(hook) = &rule.hook {
                if !hook(&parts).await {
                    continue;
                }
            }
            let answer = rule
                .throttle
                .inner
                .answer(&parts, self.backend.as_ref(), rule.ask());
            match answer.finish().await {
                Ok(admitted) => admissions.record(admitted, rule),
                Err(error) => {
                    let error = Some(Refusal { rule: index, error });
                    return (parts, Outcome { admissions, error });
                }
            }
        }
        (
            parts,
            Outcome {
                admissions,
                error: None,
            },
        )
    }
}

impl<S, ReqBody, ResBody, M> Service<Request<ReqBody>> for ThrottleService<S, M>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    M: BodyMode<ResBody>,
{
    type Response = Response<M::Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, M>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let mut admissions = Admissions::default();
        match self.config.run_sync(&request, &mut admissions) {
            Ok(None) => {
                let future = self.inner.call(request);
                ResponseFuture {
                    state: State::Calling { future },
                    admissions,
                    mode: PhantomData,
                }
            }
            Ok(Some(refusal)) => ResponseFuture {
                state: State::Done {
                    response: Some(Box::new(
                        self.config.reject(&refusal, is_grpc(request.headers())),
                    )),
                },
                admissions,
                mode: PhantomData,
            },
            Err((start, pending)) => {
                // Hooks and backends that answer later need the head owned.
                let (parts, body) = request.into_parts();
                let clone = self.inner.clone();
                let service = std::mem::replace(&mut self.inner, clone);
                let config = Arc::clone(&self.config);
                let check = Box::pin(config.run_async(parts, start, pending, admissions));
                ResponseFuture {
                    state: State::Checking {
                        checking: Box::new(Checking {
                            check,
                            body: Some(body),
                            service: Some(service),
                            config: Arc::clone(&self.config),
                        }),
                    },
                    admissions: Admissions::default(),
                    mode: PhantomData,
                }
            }
        }
    }
}

impl LayerConfig {
    /// The answer to a refusal: the rule's throttle's own responses, else
    /// the layer's, else traffik's (gRPC statuses for a gRPC request).
    pub(crate) fn reject(&self, refusal: &Refusal, grpc: bool) -> Response<BoxBody> {
        let error = &refusal.error;
        match error {
            Error::Configuration(_) | Error::AnonymousConnection => {
                tracing::error!(error = %crate::error::Chain(error), "traffik cannot throttle this request")
            }
            _ => {}
        }
        let policy = &self.rules[refusal.rule].throttle.inner.core.policy;
        let on_error = policy.on_error.as_ref().or(self.on_error.as_ref());
        error_response(error, self.on_throttled.as_ref(), on_error, grpc)
    }
}
