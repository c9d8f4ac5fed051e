//! [`HttpThrottle`]: throttles HTTP requests, per route, as a
//! [`ThrottleLayer`](crate::ThrottleLayer) rule, or in a handler. Its
//! builder is in [`builder`].

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;

use http::request::Parts;
use http::{Extensions, HeaderMap, Method, Request, Uri};

use crate::backend::DynBackend;
use crate::identity::AddressIdentity;
use crate::key::{KeyIdentity, Scope};
use crate::permit::Permit;
use crate::pipeline::{no_quotas, Admitted, Answer, Ask, Core, IdentifierFn, Input, Limit, Soon};
use crate::reservation::Reservation;
use crate::response::RateLimitReport;
use crate::{Decision, Error};

pub(crate) mod builder;

pub use builder::{HttpOptions, HttpThrottleBuilder, ThrottleBuilder};

/// The parts of a request a throttle reads: implemented for
/// [`http::request::Parts`] and [`http::Request`].
pub(crate) trait RequestHead {
    fn method(&self) -> &Method;
    fn uri(&self) -> &Uri;
    fn headers(&self) -> &HeaderMap;
    fn extensions(&self) -> &Extensions;
    /// The head as `Parts` (cloned for a `Request`; only needed by closures
    /// over `&Parts`).
    fn to_parts(&self) -> Cow<'_, Parts>;
}

impl RequestHead for Parts {
    fn method(&self) -> &Method {
        &self.method
    }
    fn uri(&self) -> &Uri {
        &self.uri
    }
    fn headers(&self) -> &HeaderMap {
        &self.headers
    }
    fn extensions(&self) -> &Extensions {
        &self.extensions
    }
    fn to_parts(&self) -> Cow<'_, Parts> {
        Cow::Borrowed(self)
    }
}

impl<B> RequestHead for Request<B> {
    fn method(&self) -> &Method {
        self.method()
    }
    fn uri(&self) -> &Uri {
        self.uri()
    }
    fn headers(&self) -> &HeaderMap {
        self.headers()
    }
    fn extensions(&self) -> &Extensions {
        self.extensions()
    }
    fn to_parts(&self) -> Cow<'_, Parts> {
        let mut head = Request::new(());
        *head.method_mut() = self.method().clone();
        *head.uri_mut() = self.uri().clone();
        *head.version_mut() = self.version();
        *head.headers_mut() = self.headers().clone();
        *head.extensions_mut() = self.extensions().clone();
        Cow::Owned(head.into_parts().0)
    }
}

/// The route a request counts under: axum's `MatchedPath` when present, else
/// the URI path.
#[inline]
pub(crate) fn route_of<'a>(extensions: &'a Extensions, uri: &'a Uri) -> &'a str {
    #[cfg(feature = "axum")]
    if let Some(matched) = extensions.get::<axum::extract::MatchedPath>() {
        return matched.as_str();
    }
    let _ = extensions;
    uri.path()
}

/// Throttles HTTP requests: per route with [`layer`](HttpThrottle::layer),
/// in a [`ThrottleLayer`](crate::ThrottleLayer) rule, or inside a handler with
/// [`hit`](HttpThrottle::hit). Cheap to clone; clones share everything.
///
/// By default a request is identified by its client IP address (IPv6 masked
/// to its /64) and counted per method and route:
/// `{prefix}:{uid}:{ip}:http:{METHOD}:{route}` (`HEAD` counts as `GET`;
/// `route` is Axum's `MatchedPath` when present, else the URI path, so a
/// global rule over unrouted paths counts each path apart — use
/// `.shared_across_routes()` for a throttle meant to stop path scans; `%`
/// and `:` in the uid and the route are written `%25` and `%3A`, so
/// different keys never share a text).
///
/// ```
/// use traffik::{backend::InMemoryBackend, HttpThrottle, Strategy};
///
/// let memory = InMemoryBackend::new();
/// let throttle = HttpThrottle::builder()
///     .uid("api")
///     .limit(5)
///     .seconds(10)
///     .strategy(Strategy::TokenBucket)
///     .backend(memory.clone())
///     .build()
///     .unwrap();
/// assert_eq!(throttle.uid(), "api");
/// ```
#[derive(Clone)]
pub struct HttpThrottle {
    pub(crate) inner: Arc<HttpInner>,
}

pub(crate) struct HttpInner {
    pub(crate) core: Arc<Core>,
    pub(crate) identifier: Identifier,
    pub(crate) shared_across_routes: bool,
    /// `.refund_when(..)`: the response statuses whose hit is given back.
    pub(crate) refund_when: Option<RefundWhen>,
}

/// A predicate over response statuses (see `.refund_when(..)`).
pub(crate) type RefundWhen = Arc<dyn Fn(http::StatusCode) -> bool + Send + Sync>;

/// How an HTTP throttle tells clients apart.
pub(crate) enum Identifier {
    /// The client address (the default).
    Client(AddressIdentity),
    /// The user's `.identifier(..)`.
    Custom(IdentifierFn),
}

impl std::fmt::Debug for HttpThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpThrottle")
            .field("uid", &self.uid())
            .field("strategy", &self.inner.core.strategy)
            .finish_non_exhaustive()
    }
}

impl HttpThrottle {
    /// Starts a builder.
    pub fn builder() -> HttpThrottleBuilder {
        ThrottleBuilder::new(HttpOptions::default())
    }

    /// The throttle's uid.
    pub fn uid(&self) -> &str {
        self.inner.core.uid()
    }

    /// Counts one hit (of the throttle's cost) for `request`.
    ///
    /// Returns the [`Decision`], or `Err(Error::Throttled(_))` when the
    /// request is over its limit — which, with the `axum` feature, turns into
    /// the 429 response when returned from a handler with `?`. Other errors:
    /// `Error::Backend` when the backend fails under `FailureMode::Closed`
    /// (a 503), `Error::AnonymousConnection` and `Error::Configuration` (a
    /// 500). An exempt request, or a backend failure under
    /// `FailureMode::Open`, is `Ok(Decision::unlimited())`: allowed, with
    /// `limit` and `remaining` at `u64::MAX` (count failures with the
    /// `tracing` warning, not from this decision). The future is
    /// `Send + 'static`: everything it needs is read from the request first;
    /// like any future it does nothing until polled (a dropped, never-awaited
    /// `hit` counts nothing).
    ///
    /// ```
    /// # #[cfg(feature = "axum")] {
    /// use axum::{extract::Request, routing::get, Router};
    /// use traffik::{backend::InMemoryBackend, HttpThrottle};
    ///
    /// let throttle = HttpThrottle::builder()
    ///     .rate("5/10s")
    ///     .backend(InMemoryBackend::new())
    ///     .build()
    ///     .unwrap();
    /// let app: Router = Router::new().route("/", get(move |req: Request| {
    ///     let throttle = throttle.clone();
    ///     async move {
    ///         throttle.hit(&req).await?;
    ///         Ok::<_, traffik::Error>("hello")
    ///     }
    /// }));
    /// # }
    /// ```
    pub fn hit<B>(
        &self,
        request: &Request<B>,
    ) -> impl Future<Output = Result<Decision, Error>> + Send + 'static {
        self.later_decision(request, Ask::Hit)
    }

    /// The [`Decision`] a hit would get now, without counting it. A request
    /// over its limit is `Ok` with `allowed == false`.
    pub fn peek<B>(
        &self,
        request: &Request<B>,
    ) -> impl Future<Output = Result<Decision, Error>> + Send + 'static {
        self.later_decision(request, Ask::Peek)
    }

    /// Like [`hit`](HttpThrottle::hit), with the throttle's rate-limit
    /// headers for the handler's response: a [`RateLimitReport`], which
    /// with the `axum` feature goes in a response tuple, `(report, body)`.
    /// Over the limit it is `Err(Error::Throttled(_))`, whose 429 carries
    /// the headers already.
    ///
    /// ```
    /// # #[cfg(feature = "axum")] {
    /// use axum::{extract::Request, routing::get, Router};
    /// use traffik::{backend::InMemoryBackend, HttpThrottle, RateLimitHeaders};
    ///
    /// let throttle = HttpThrottle::builder()
    ///     .rate("100/min")
    ///     .headers(RateLimitHeaders::Legacy)
    ///     .backend(InMemoryBackend::new())
    ///     .build()
    ///     .unwrap();
    /// let app: Router = Router::new().route("/", get(move |req: Request| {
    ///     let throttle = throttle.clone();
    ///     async move {
    ///         let report = throttle.hit_with_headers(&req).await?;
    ///         // `X-RateLimit-Limit: 100`, `X-RateLimit-Remaining: 99`, ...
    ///         Ok::<_, traffik::Error>((report, "hello"))
    ///     }
    /// }));
    /// # }
    /// ```
    pub fn hit_with_headers<B>(
        &self,
        request: &Request<B>,
    ) -> impl Future<Output = Result<RateLimitReport, Error>> + Send + 'static {
        self.later_report(request, Ask::Hit)
    }

    /// Like [`peek`](HttpThrottle::peek), with the rate-limit headers a hit
    /// would give: for an endpoint that tells clients their quota without
    /// spending it. Over the limit it is `Ok`, with `allowed == false`.
    ///
    /// Like `peek`, it reports the decision the request itself would get, so
    /// `remaining` is what one more request would leave (a fresh client of a
    /// 100/min throttle sees `r=99`), and it looks at the counter of the
    /// request's own route unless the throttle is
    /// [`.shared_across_routes()`](crate::HttpThrottleBuilder::shared_across_routes):
    /// a `/quota` endpoint that reports on the other routes needs a shared
    /// throttle, as below.
    ///
    /// ```
    /// # #[cfg(feature = "axum")] {
    /// use axum::{extract::Request, routing::get, Router};
    /// use traffik::{backend::InMemoryBackend, HttpThrottle, RateLimitHeaders};
    ///
    /// let api = HttpThrottle::builder()
    ///     .uid("api")
    ///     .rate("100/min")
    ///     .shared_across_routes()
    ///     .headers(RateLimitHeaders::Ietf)
    ///     .backend(InMemoryBackend::new())
    ///     .build()
    ///     .unwrap();
    /// // `GET /quota`: the `RateLimit` headers of `api` (one counter per
    /// // client for every route), nothing spent.
    /// let app: Router = Router::new().route("/quota", get(move |req: Request| {
    ///     let api = api.clone();
    ///     async move { api.peek_with_headers(&req).await }
    /// }));
    /// # }
    /// ```
    pub fn peek_with_headers<B>(
        &self,
        request: &Request<B>,
    ) -> impl Future<Output = Result<RateLimitReport, Error>> + Send + 'static {
        self.later_report(request, Ask::Peek)
    }

    /// Like [`hit_with_headers`](HttpThrottle::hit_with_headers), for
    /// request parts.
    pub fn hit_parts_with_headers(
        &self,
        parts: &Parts,
    ) -> impl Future<Output = Result<RateLimitReport, Error>> + Send + 'static {
        self.later_report(parts, Ask::Hit)
    }

    /// [`later`](HttpThrottle::later) as a report.
    fn later_report<R: RequestHead>(
        &self,
        request: &R,
        ask: Ask,
    ) -> impl Future<Output = Result<RateLimitReport, Error>> + Send + 'static {
        let admitted = self.later(request, ask);
        async move {
            let admitted = admitted.await?;
            Ok(RateLimitReport::new(admitted.decision, admitted.headers))
        }
    }

    /// [`later`](HttpThrottle::later)'s decision.
    fn later_decision<R: RequestHead>(
        &self,
        request: &R,
        ask: Ask,
    ) -> impl Future<Output = Result<Decision, Error>> + Send + 'static {
        let admitted = self.later(request, ask);
        async move { Ok(admitted.await?.decision) }
    }

    /// Reads the request now; asks the backend only when polled.
    fn later<R: RequestHead>(
        &self,
        request: &R,
        ask: Ask,
    ) -> impl Future<Output = Result<Admitted, Error>> + Send + 'static {
        let core = Arc::clone(&self.inner.core);
        let in_flight = matches!(core.limit, Limit::InFlight { .. });
        let input = if in_flight != (ask == Ask::Acquire) {
            Err(Error::configuration(if in_flight {
                format!(
                    "throttle {:?} limits requests in progress (.max_in_flight): take a place \
                     with acquire(&request); its Permit gives the place back when dropped",
                    core.uid()
                )
            } else {
                format!(
                    "throttle {:?} limits hits per period: count one with hit(&request) or \
                     reserve(&request); acquire(&request) is for .max_in_flight(n) throttles",
                    core.uid()
                )
            }))
        } else {
            self.inner.input(request)
        }
        .map(|input| input.map(|input| core.owned(input, None)));
        async move {
            match input? {
                Some(input) => core.decide_later(input, ask).await,
                None => Ok(core.exempt(ask)),
            }
        }
    }

    /// Counts one hit, exactly like [`hit`](HttpThrottle::hit) (a request
    /// over its limit is `Err(Error::Throttled(_))`), and returns a
    /// [`Reservation`] that can give the hit back with
    /// [`refund`](Reservation::refund) once the request turns out not to
    /// count. For a throttle used as a layer or a rule,
    /// [`.refund_when(..)`](crate::HttpThrottleBuilder::refund_when) does
    /// this from the response status.
    pub fn reserve<B>(
        &self,
        request: &Request<B>,
    ) -> impl Future<Output = Result<Reservation, Error>> + Send + 'static {
        let admitted = self.later(request, Ask::Reserve);
        async move {
            let admitted = admitted.await?;
            Ok(Reservation::new(
                admitted.decision,
                admitted.hit.map(|hit| *hit),
            ))
        }
    }

    /// Takes a place of a
    /// [`.max_in_flight(n)`](crate::HttpThrottleBuilder::max_in_flight)
    /// throttle for `request` (`Err(Error::Throttled(_))` when none is
    /// free); dropping the [`Permit`] gives it back. See [`Permit`] for
    /// holding a place while a WebSocket is open.
    pub fn acquire<B>(
        &self,
        request: &Request<B>,
    ) -> impl Future<Output = Result<Permit, Error>> + Send + 'static {
        let admitted = self.later(request, Ask::Acquire);
        async move {
            let admitted = admitted.await?;
            let decision = admitted.decision;
            Ok(admitted
                .permit
                .map_or_else(|| Permit::empty(decision), |permit| *permit))
        }
    }

    /// Like [`hit`](HttpThrottle::hit), for request parts.
    pub fn hit_parts(
        &self,
        parts: &Parts,
    ) -> impl Future<Output = Result<Decision, Error>> + Send + 'static {
        self.later_decision(parts, Ask::Hit)
    }
}

impl HttpInner {
    /// Decides `op` for `request`, at once when every part of the decision
    /// is known and the backend answers at once; `lent` is the layer's
    /// backend.
    #[inline]
    pub(crate) fn answer<R: RequestHead>(
        &self,
        request: &R,
        lent: Option<&DynBackend>,
        ask: Ask,
    ) -> Answer {
        match self.input(request) {
            Ok(Some(input)) => self.core.run(input, lent, ask),
            Ok(None) => Answer::Now(Ok(self.core.exempt(ask))),
            Err(error) => Answer::Now(Err(error)),
        }
    }

    /// What the decision needs from `request`: its identity, scope and
    /// rates, or `None` when the request is exempt (cost 0, an unlimited
    /// rate). Closures over `&Parts` are called now; their futures are
    /// awaited later.
    #[inline]
    fn input<'r, R: RequestHead>(&'r self, request: &'r R) -> Result<Option<Input<'r>>, Error> {
        let core = &self.core;
        if core.cost == 0 {
            return Ok(None);
        }
        // The head as `Parts`, for the closures over it (a copy of a
        // `Request`'s head, made once, and only for them).
        let needs_parts = matches!(core.limit, Limit::Dynamic(_))
            || matches!(self.identifier, Identifier::Custom(_));
        let parts = needs_parts.then(|| request.to_parts());
        let parts = || parts.as_deref().expect("made for the closures");
        let quotas = match &core.limit {
            Limit::Unlimited => return Ok(None),
            Limit::Static(quotas) => Soon::Now(quotas),
            Limit::Dynamic(rate) => Soon::Later(rate(parts())),
            Limit::InFlight { .. } => Soon::Now(no_quotas()),
        };
        let identity = match &self.identifier {
            Identifier::Client(address) => {
                let ip = address.client(request.extensions(), request.headers())?;
                Soon::Now(KeyIdentity::address(ip, address.ipv6_prefix))
            }
            Identifier::Custom(identifier) => Soon::Later(identifier(parts())),
        };
        let scope = if self.shared_across_routes {
            Scope::shared()
        } else {
            Scope::http(
                request.method(),
                route_of(request.extensions(), request.uri()),
            )
        };
        Ok(Some(Input {
            identity,
            scope,
            quotas,
        }))
    }
}
