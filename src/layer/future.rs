//! [`ResponseFuture`]: a request's way through [`ThrottleService`](crate::ThrottleService):
//! awaiting its check (when it takes time), then the inner service's
//! response or traffik's own answer, with the throttles' headers added.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::request::Parts;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::body::{BodyMode, InnerBody};
use super::service::{Admissions, Outcome};
use super::LayerConfig;
use crate::response::{is_grpc, BoxBody};

pin_project! {
    /// Response future of [`ThrottleService`](crate::ThrottleService).
    pub struct ResponseFuture<S, ReqBody, M = InnerBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        pub(crate) state: State<S, ReqBody>,
        pub(crate) admissions: Admissions,
        pub(crate) mode: PhantomData<fn() -> M>,
    }
}

impl<S, ReqBody, M> std::fmt::Debug for ResponseFuture<S, ReqBody, M>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Checking { .. } => "checking",
            State::Calling { .. } => "calling the inner service",
            State::Done { .. } => "answered by traffik",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

/// What a request that awaits its check holds: the check, then what calling
/// the inner service takes.
pub(crate) struct Checking<S, ReqBody> {
    pub(crate) check: Pin<Box<dyn Future<Output = (Parts, Outcome)> + Send>>,
    pub(crate) body: Option<ReqBody>,
    pub(crate) service: Option<S>,
    pub(crate) config: Arc<LayerConfig>,
}

pin_project! {
    #[project = StateProj]
    pub(crate) enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        // Boxed: only hooks and backends that answer later need it, and
        // the future of every request would carry its size.
        Checking {
            checking: Box<Checking<S, ReqBody>>,
        },
        Calling {
            #[pin]
            future: S::Future,
        },
        // Boxed: a response is large, and would make every future larger.
        Done {
            response: Option<Box<Response<BoxBody>>>,
        },
    }
}

impl<S, ReqBody, ResBody, M> Future for ResponseFuture<S, ReqBody, M>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    M: BodyMode<ResBody>,
{
    type Output = Result<Response<M::Body>, S::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Checking { checking } => {
                    let Checking {
                        check,
                        body,
                        service,
                        config,
                    } = &mut **checking;
                    let (parts, outcome) = ready!(check.as_mut().poll(cx));
                    *this.admissions = outcome.admissions;
                    let next = match outcome.error {
                        Some(refusal) => State::Done {
                            response: Some(Box::new(
                                config.reject(&refusal, is_grpc(&parts.headers)),
                            )),
                        },
                        None => {
                            let body = body.take().expect("request body taken once");
                            let mut service = service.take().expect("service taken once");
                            State::Calling {
                                future: service.call(Request::from_parts(parts, body)),
                            }
                        }
                    };
                    this.state.set(next);
                }
                StateProj::Calling { future } => {
                    let mut response = ready!(future.poll(cx))?;
                    let places = this.admissions.apply(&mut response);
                    if places.is_empty() {
                        return Poll::Ready(Ok(response.map(M::inner)));
                    }
                    return Poll::Ready(Ok(response.map(|body| M::holding(body, places))));
                }
                StateProj::Done { response } => {
                    let mut response = *response.take().expect("polled after completion");
                    // Traffik answered: the request is over, and so are its places.
                    drop(this.admissions.apply(&mut response));
                    return Poll::Ready(Ok(response.map(M::made)));
                }
            }
        }
    }
}
