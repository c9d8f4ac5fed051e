//! [`ThrottleService`]: runs the rules, then calls the inner service or
//! answers in its place.

use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::request::Parts;
use http::{Request, Response};
use tower_service::Service;

use super::body::{BodyMode, InnerBody};
use super::future::{Checking, ResponseFuture, State};
use super::LayerConfig;
use crate::backend::BoxFuture;
use crate::pipeline::{Admitted, Answer};
use crate::response::{error_response, BoxBody, RateLimitInfo};
use crate::strategy::Op;
use crate::throttle::RequestHead;
use crate::Error;

/// A rule's decision still to be awaited.
type PendingCheck = BoxFuture<Result<Admitted, Error>>;

/// The service of [`ThrottleLayer`]. `M` is its [body mode](crate::body).
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
    pub(crate) headers: Vec<RateLimitInfo>,
    pub(crate) error: Option<Error>,
}

#[inline]
fn record(headers: &mut Vec<RateLimitInfo>, admitted: Admitted) {
    if let Some(info) = admitted.headers {
        headers.push(*info);
    }
}

impl LayerConfig {
    /// Runs the rules in order, synchronously, recording header infos.
    /// `Ok(None)`: every matching rule allowed the request; `Ok(Some(error))`:
    /// one refused it; `Err((index, pending))`: continue asynchronously at
    /// rule `index` (a hook to await), after awaiting `pending` (the check of
    /// rule `index - 1` that a backend answers later), if any.
    pub(crate) fn run_sync(
        &self,
        request: &impl RequestHead,
        infos: &mut Vec<RateLimitInfo>,
    ) -> Result<Option<Error>, (usize, Option<PendingCheck>)> {
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
                .answer(request, self.backend.as_ref(), Op::Hit)
            {
                Answer::Now(Ok(admitted)) => record(infos, admitted),
                Answer::Now(Err(error)) => return Ok(Some(error)),
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
        mut infos: Vec<RateLimitInfo>,
    ) -> (Parts, Outcome) {
        if let Some(pending) = pending {
            match pending.await {
                Ok(admitted) => record(&mut infos, admitted),
                Err(error) => {
                    let error = Some(error);
                    return (
                        parts,
                        Outcome {
                            headers: infos,
                            error,
                        },
                    );
                }
            }
        }
        for rule in &self.rules[start..] {
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
                .answer(&parts, self.backend.as_ref(), Op::Hit);
            match answer.finish().await {
                Ok(admitted) => record(&mut infos, admitted),
                Err(error) => {
                    let error = Some(error);
                    return (
                        parts,
                        Outcome {
                            headers: infos,
                            error,
                        },
                    );
                }
            }
        }
        (
            parts,
            Outcome {
                headers: infos,
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
        let mut infos = Vec::new();
        match self.config.run_sync(&request, &mut infos) {
            Ok(None) => {
                let future = self.inner.call(request);
                ResponseFuture {
                    state: State::Calling { future },
                    infos,
                    mode: PhantomData,
                }
            }
            Ok(Some(error)) => ResponseFuture {
                state: State::Done {
                    response: Some(Box::new(self.config.reject(&error))),
                },
                infos,
                mode: PhantomData,
            },
            Err((start, pending)) => {
                // Hooks and backends that answer later need the head owned.
                let (parts, body) = request.into_parts();
                let clone = self.inner.clone();
                let service = std::mem::replace(&mut self.inner, clone);
                let config = Arc::clone(&self.config);
                let check = Box::pin(config.run_async(parts, start, pending, infos));
                ResponseFuture {
                    state: State::Checking {
                        checking: Box::new(Checking {
                            check,
                            body: Some(body),
                            service: Some(service),
                            config: Arc::clone(&self.config),
                        }),
                    },
                    infos: Vec::new(),
                    mode: PhantomData,
                }
            }
        }
    }
}

impl LayerConfig {
    pub(crate) fn reject(&self, error: &Error) -> Response<BoxBody> {
        match error {
            Error::Configuration(_) | Error::AnonymousConnection => {
                tracing::error!(error = %crate::error::Chain(error), "traffik cannot throttle this request")
            }
            _ => {}
        }
        error_response(error, self.on_throttled.as_ref())
    }
}
