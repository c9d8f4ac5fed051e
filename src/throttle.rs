//! Throttles: [`HttpThrottle`] and its builder, shared by
//! [`WebSocketThrottle`](crate::WebSocketThrottle); key building; the
//! decision pipeline (backend → failure mode → shadow → wait or reject).

use std::borrow::{Borrow, Cow};
use std::collections::HashSet;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::request::Parts;
use http::{Extensions, HeaderMap, Method, Request, Uri};

use crate::backend::{self, BoxFuture, DynBackend, IntoBackend};
use crate::identity::AddressIdentity;
use crate::key::{
    escaped, put_escaped, DecisionKey, KeyBuf, KeyBytes, KeyOut, Overflow, OwnedKey, Shown,
};
use crate::rate::IntoRate;
use crate::response::{
    responder, Policy, RateLimitHeaders, RateLimitInfo, RateLimitReport, ThrottledResponder,
};
use crate::{
    BoxError, Decision, Error, Identity, Quota, Rate, Strategy, Throttled, TrustedProxies,
};

/// What happens when the backend fails (error or timeout).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FailureMode {
    /// Let the request through uncounted and log a `tracing::warn!` (default).
    #[default]
    Open,
    /// Refuse the request: 503 with `Retry-After` (HTTP), drop the message
    /// (WebSocket).
    Closed,
}

/// What happens to a hit over the limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Exceeded {
    /// Reject it: 429 for HTTP; for WebSocket, drop the message and send the
    /// client a rate-limit notice (default).
    #[default]
    Reject,
    /// Hold it until it is allowed, waiting at most `max` in all; a hit that
    /// would need longer is rejected at once, and so is one that would wait
    /// while [`max_waiting`](ThrottleBuilder::max_waiting) hits already do.
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

type IdentifierFn = Arc<dyn Fn(&Parts) -> BoxFuture<Identity> + Send + Sync>;
type RateFn = Arc<dyn Fn(&Parts) -> BoxFuture<Rate> + Send + Sync>;
type DecisionFn = Arc<dyn Fn(&Decision) + Send + Sync>;

/// Where a throttle's backend comes from.
#[derive(Clone)]
pub(crate) enum BackendChoice {
    /// `.backend(b)`.
    Fixed(DynBackend),
    /// `.dynamic_backend()`: the innermost [`backend::scope`].
    Dynamic,
    /// Nothing set: the layer's backend, else the innermost scope.
    Inherit,
}

#[derive(Clone)]
pub(crate) enum RateSource {
    /// `None` for an unlimited rate.
    Static(Option<Quota>),
    Dynamic(RateFn),
}

/// Registered uids of live throttles.
static UIDS: Mutex<Option<HashSet<Arc<str>>>> = Mutex::new(None);
static AUTO_UID: AtomicU64 = AtomicU64::new(1);

/// A uid registered while its throttle lives.
pub(crate) struct Uid(Arc<str>);

impl Uid {
    fn register(uid: Option<String>, kind: &str) -> Result<Uid, Error> {
        let mut set = UIDS.lock().unwrap_or_else(PoisonError::into_inner);
        let set = set.get_or_insert_with(HashSet::new);
        let uid: Arc<str> = match uid {
            Some(uid) => {
                if uid.is_empty() {
                    return Err(Error::configuration("a throttle uid cannot be empty"));
                }
                if set.contains(uid.as_str()) {
                    return Err(Error::configuration(format!(
                        "duplicate throttle uid {uid:?}: another live throttle already uses it; give each throttle its own .uid(..). \
                         Uids are unique in the whole process: an app built twice at once (parallel tests calling one \
                         `fn app()`) needs a uid per build (a suffix) or no .uid(..) at all (one is generated), \
                         or the first app dropped first"
                    )));
                }
                uid.into()
            }
            None => loop {
                let candidate = format!("{kind}-{}", AUTO_UID.fetch_add(1, Ordering::Relaxed));
                if !set.contains(candidate.as_str()) {
                    break candidate.into();
                }
            },
        };
        set.insert(Arc::clone(&uid));
        Ok(Uid(uid))
    }
}

impl Drop for Uid {
    fn drop(&mut self) {
        let mut set = UIDS.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(set) = set.as_mut() {
            set.remove(&self.0);
        }
    }
}

/// What HTTP and WebSocket throttles share: the limit, the backend and what to
/// do with a decision.
pub(crate) struct Core {
    pub(crate) uid: Uid,
    pub(crate) rate: RateSource,
    pub(crate) strategy: Strategy,
    pub(crate) burst: Option<u64>,
    pub(crate) cost: u64,
    pub(crate) backend: BackendChoice,
    pub(crate) failure_mode: FailureMode,
    pub(crate) shadow: bool,
    pub(crate) exceeded: Exceeded,
    /// Hits waiting now under [`Exceeded::Wait`], and the most allowed.
    pub(crate) waiting: AtomicUsize,
    pub(crate) max_waiting: usize,
    pub(crate) on_decision: Option<DecisionFn>,
    pub(crate) policy: Policy,
}

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
            .map(|_| WaitingSlot(Arc::clone(core)))
    }
}

impl Drop for WaitingSlot {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The outcome of one throttle for one request, once the failure mode,
/// shadow mode and waiting have been applied. Rejections are
/// `Err(Error::Throttled)`.
#[derive(Clone)]
pub(crate) struct Verdict {
    pub(crate) decision: Decision,
    /// Rate-limit headers to add, for throttles that have them on (boxed:
    /// verdicts are moved around on the hot path).
    pub(crate) info: Option<Box<RateLimitInfo>>,
}

impl Verdict {
    fn exempt() -> Verdict {
        Verdict {
            decision: Decision::unlimited(),
            info: None,
        }
    }
}

/// A verdict now, or later.
pub(crate) enum Check {
    Ready(Result<Verdict, Error>),
    Pending(BoxFuture<Result<Verdict, Error>>),
}

impl Check {
    pub(crate) async fn wait(self) -> Result<Verdict, Error> {
        match self {
            Check::Ready(result) => result,
            Check::Pending(future) => future.await,
        }
    }
}

/// A request read and keyed, its decision not yet asked for. The key is
/// borrowed from the stack of [`HttpInner::prepare`] ([`HttpKey`]) or owned
/// ([`OwnedKey`], for futures that outlive the request).
pub(crate) enum Prepared<'a, K, Q> {
    /// Decided without a backend (exempt, or an error).
    Done(Result<Verdict, Error>),
    /// Ask `backend` (`None`: the throttle's own `.backend(..)`) about `key`.
    Decide {
        backend: Option<Cow<'a, DynBackend>>,
        key: K,
        /// Borrowed from the throttle (`&Quota`) or owned.
        quota: Q,
    },
    /// The general path (a lazy future).
    Later(Check),
}

impl Prepared<'_, HttpKey<'_>, &Quota> {
    /// Detaches from the request and from borrowed backends (an `Arc` clone
    /// for a layer's backend; none for the throttle's own).
    pub(crate) fn into_owned(
        self,
        fixed: Option<&DynBackend>,
    ) -> Prepared<'static, OwnedKey, Quota> {
        match self {
            Prepared::Done(result) => Prepared::Done(result),
            Prepared::Decide {
                backend,
                key,
                quota,
            } => {
                let target = backend.as_deref().or(fixed);
                let key = key.to_owned_key(
                    target.map_or("", |backend| backend.prefix()),
                    target.is_some_and(|backend| backend.as_in_memory().is_some()),
                );
                Prepared::Decide {
                    key,
                    backend: backend.map(|backend| Cow::Owned(backend.into_owned())),
                    quota: *quota,
                }
            }
            Prepared::Later(check) => Prepared::Later(check),
        }
    }
}

/// Whether a check records the hit or only looks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Hit,
    Peek,
}

impl Core {
    pub(crate) fn uid(&self) -> &str {
        &self.uid.0
    }

    /// The backend given with `.backend(..)`, if any.
    fn fixed_backend(&self) -> Option<&DynBackend> {
        match &self.backend {
            BackendChoice::Fixed(backend) => Some(backend),
            _ => None,
        }
    }

    pub(crate) fn resolve_backend(
        &self,
        fallback: Option<&DynBackend>,
    ) -> Result<DynBackend, Error> {
        match &self.backend {
            BackendChoice::Fixed(backend) => Ok(Arc::clone(backend)),
            BackendChoice::Dynamic => backend::current().ok_or_else(|| {
                Error::configuration(format!(
                    "throttle {:?} uses .dynamic_backend() but no backend is in scope: run the request inside \
                     traffik::backend::scope(backend, future) or add a BackendScopeLayer outside the \
                     throttle's layer (with Router::layer or ServiceBuilder, the layer added after it; \
                     a BackendScopeLayer inside the throttle's layer has not run yet when the throttle asks)",
                    self.uid()
                ))
            }),
            BackendChoice::Inherit => fallback
                .cloned()
                .or_else(backend::current)
                .ok_or_else(|| {
                    Error::configuration(format!(
                        "throttle {:?} has no backend: give it one with .backend(InMemoryBackend::new()), \
                         add it as a .rule(MiddlewareThrottle::new(..)) of a ThrottleLayer::new(backend) \
                         (a layer lends its backend to its own rules only, not to a throttle's .layer() \
                         in a route_layer under it), or run it inside traffik::backend::scope(..) \
                         or a BackendScopeLayer",
                        self.uid()
                    ))
                }),
        }
    }

    pub(crate) fn quota_for(&self, rate: Rate) -> Result<Option<Quota>, Error> {
        if rate.is_unlimited() {
            return Ok(None);
        }
        let quota = Quota::new(rate, self.strategy)?;
        match self.burst {
            Some(burst) => quota.with_burst(burst).map(Some),
            None => Ok(Some(quota)),
        }
    }

    /// Asks the backend and applies the pipeline; synchronous when the
    /// backend answers at once and no wait is needed.
    #[inline]
    pub(crate) fn decide<K: DecisionKey + ?Sized>(
        self: &Arc<Self>,
        backend: &DynBackend,
        key: &K,
        quota: &Quota,
        mode: Mode,
    ) -> Check {
        // The in-memory backend is called directly, on the key's bytes: no
        // text is written and no future made.
        if let Some(memory) = backend.as_in_memory() {
            let result =
                memory.decide_bytes(key.memory_bytes(), quota, self.cost, mode == Mode::Hit);
            return self.after(result, backend, key, quota, mode);
        }
        // A text key is passed as it is; another is written once.
        let written;
        let text = match key.as_text() {
            Some(text) => text,
            None => {
                written = key.text(backend.prefix());
                written.as_str()
            }
        };
        let answer = match mode {
            Mode::Hit => backend.hit(text, quota, self.cost),
            Mode::Peek => backend.peek(text, quota, self.cost),
        };
        match answer.into_ready() {
            Ok(result) => self.after(result, backend, key, quota, mode),
            Err(pending) => {
                let core = Arc::clone(self);
                let backend = Arc::clone(backend);
                // No other form is needed for a backend that is not in memory.
                let key = OwnedKey::Text(KeyBuf::from(text));
                let quota = *quota;
                Check::Pending(Box::pin(async move {
                    let result = pending.await;
                    core.after(result, &backend, &key, &quota, mode)
                        .wait()
                        .await
                }))
            }
        }
    }

    /// Asks the backend once, as [`decide`](Core::decide) does, for a
    /// future that owns its key.
    async fn ask(
        &self,
        backend: &DynBackend,
        key: &OwnedKey,
        quota: &Quota,
    ) -> Result<Decision, Error> {
        match backend.as_in_memory() {
            Some(memory) => memory.decide_bytes(key.memory_bytes(), quota, self.cost, true),
            None => match key.as_text() {
                Some(text) => backend.hit(text, quota, self.cost).await,
                None => {
                    let text = key.text(backend.prefix());
                    backend.hit(text.as_str(), quota, self.cost).await
                }
            },
        }
    }

    /// Applies the pipeline to a backend's answer: the common case (a hit
    /// allowed, no callback) inline, the rest in [`after_slow`](Core::after_slow).
    #[inline]
    fn after<K: DecisionKey + ?Sized>(
        self: &Arc<Self>,
        result: Result<Decision, Error>,
        backend: &DynBackend,
        key: &K,
        quota: &Quota,
        mode: Mode,
    ) -> Check {
        match result {
            Ok(decision) if decision.allowed && self.on_decision.is_none() => {
                Check::Ready(Ok(self.verdict(decision, quota)))
            }
            result => self.after_slow(result, backend, key, quota, mode),
        }
    }

    #[inline(never)]
    fn after_slow<K: DecisionKey + ?Sized>(
        self: &Arc<Self>,
        result: Result<Decision, Error>,
        backend: &DynBackend,
        key: &K,
        quota: &Quota,
        mode: Mode,
    ) -> Check {
        let decision = match result {
            Ok(decision) => decision,
            Err(error) => return Check::Ready(self.failed(error, key, backend.prefix())),
        };
        if mode == Mode::Peek {
            return Check::Ready(Ok(self.verdict(decision, quota)));
        }
        if let Some(on_decision) = &self.on_decision {
            on_decision(&decision);
        }
        if decision.allowed {
            return Check::Ready(Ok(self.verdict(decision, quota)));
        }
        if self.shadow {
            tracing::info!(
                throttle = self.uid(),
                key = %Shown(key, backend.prefix()),
                retry_after_ms = decision.retry_after.as_millis() as u64,
                "shadow mode: request would be throttled"
            );
            return Check::Ready(Ok(self.verdict(decision, quota)));
        }
        match &self.exceeded {
            // A hit that costs more than the quota holds (a dynamic rate
            // below the cost) is never admitted: no waiting for it.
            Exceeded::Wait { max }
                if decision.retry_after <= *max && self.cost <= quota.capacity() =>
            {
                // Past `max_waiting` hits already waiting: rejected at once.
                let Some(slot) = WaitingSlot::take(self) else {
                    return Check::Ready(Err(self.throttled(
                        decision,
                        quota,
                        key,
                        backend.prefix(),
                    )));
                };
                let backend = Arc::clone(backend);
                let max = *max;
                let key = key.to_owned_key(backend.prefix(), backend.as_in_memory().is_some());
                let quota = *quota;
                Check::Pending(Box::pin(async move {
                    let core = Arc::clone(&slot.0);
                    let verdict = core
                        .wait_until_allowed(decision, backend, key, quota, max)
                        .await;
                    drop(slot);
                    verdict
                }))
            }
            _ => Check::Ready(Err(self.throttled(decision, quota, key, backend.prefix()))),
        }
    }

    async fn wait_until_allowed(
        self: Arc<Self>,
        mut decision: Decision,
        backend: DynBackend,
        key: OwnedKey,
        quota: Quota,
        max: Duration,
    ) -> Result<Verdict, Error> {
        // Durations, not instants: `Wait { max: Duration::MAX }` ("as long as
        // it takes") must not overflow.
        let start = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(decision.retry_after.max(Duration::from_micros(1))).await;
            decision = match self.ask(&backend, &key, &quota).await {
                Ok(decision) => decision,
                Err(error) => return self.failed(error, &key, backend.prefix()),
            };
            if let Some(on_decision) = &self.on_decision {
                on_decision(&decision);
            }
            if decision.allowed {
                return Ok(self.verdict(decision, &quota));
            }
            if start.elapsed().saturating_add(decision.retry_after) > max {
                return Err(self.throttled(decision, &quota, &key, backend.prefix()));
            }
        }
    }

    #[inline]
    fn verdict(&self, decision: Decision, quota: &Quota) -> Verdict {
        let info = (self.policy.headers != RateLimitHeaders::None).then(|| {
            Box::new(RateLimitInfo::new(
                &self.policy,
                decision,
                quota.rate().period(),
            ))
        });
        Verdict { decision, info }
    }

    fn throttled<K: DecisionKey + ?Sized>(
        &self,
        decision: Decision,
        quota: &Quota,
        key: &K,
        prefix: &str,
    ) -> Error {
        tracing::debug!(
            throttle = self.uid(),
            key = %Shown(key, prefix),
            retry_after_ms = decision.retry_after.as_millis() as u64,
            "request throttled"
        );
        Error::Throttled(Throttled::new(
            decision,
            quota.rate().period(),
            self.policy.clone(),
        ))
    }

    fn failed<K: DecisionKey + ?Sized>(
        &self,
        error: Error,
        key: &K,
        prefix: &str,
    ) -> Result<Verdict, Error> {
        let key = Shown(key, prefix);
        if self.shadow {
            // Shadow mode never rejects, whatever the failure mode; a quota
            // the backend cannot hold is still an error to fix before the
            // throttle leaves shadow mode.
            if let Error::Configuration(_) = error {
                tracing::error!(throttle = self.uid(), key = %key, error = %crate::error::Chain(&error), "traffik cannot decide this request; letting it through (shadow mode)");
            } else {
                tracing::warn!(throttle = self.uid(), key = %key, error = %crate::error::Chain(&error), "traffik backend failed; letting the request through (shadow mode)");
            }
            return Ok(Verdict::exempt());
        }
        if let Error::Configuration(_) = error {
            // Not an outage: a quota the backend cannot hold (e.g. too large
            // for Redis's exact arithmetic). Failing open would silently turn
            // the throttle off.
            tracing::error!(throttle = self.uid(), key = %key, error = %crate::error::Chain(&error), "traffik cannot decide this request");
            return Err(error);
        }
        if let Error::Backend(backend) = &error {
            if backend.is_known_outage() {
                // Reported once, when the outage began (a warning from the
                // backend), not once per request.
                tracing::debug!(throttle = self.uid(), key = %key, error = %crate::error::Chain(&error), "traffik backend is down; {}", match self.failure_mode {
                    FailureMode::Open => "letting the request through (FailureMode::Open)",
                    FailureMode::Closed => "refusing the request (FailureMode::Closed)",
                });
                return match self.failure_mode {
                    FailureMode::Open => Ok(Verdict::exempt()),
                    FailureMode::Closed => Err(error),
                };
            }
        }
        match self.failure_mode {
            FailureMode::Open => {
                tracing::warn!(throttle = self.uid(), key = %key, error = %crate::error::Chain(&error), "traffik backend failed; letting the request through (FailureMode::Open)");
                Ok(Verdict::exempt())
            }
            FailureMode::Closed => {
                tracing::warn!(throttle = self.uid(), key = %key, error = %crate::error::Chain(&error), "traffik backend failed; refusing the request (FailureMode::Closed)");
                Err(error)
            }
        }
    }
}

/// The parts of a request a throttle reads: implemented for
/// [`http::request::Parts`] and [`http::Request`].
pub trait RequestHead {
    /// The method.
    fn method(&self) -> &Method;
    /// The URI.
    fn uri(&self) -> &Uri;
    /// The headers.
    fn headers(&self) -> &HeaderMap;
    /// The extensions.
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
    identifier: Option<IdentifierFn>,
    address: AddressIdentity,
    shared_across_routes: bool,
    /// `":{uid}:"`, written in one piece.
    uid_infix: Box<str>,
    /// `0xFF {uid} 0xFF`: the start of the in-memory backend's form of a key.
    memory_infix: Box<[u8]>,
}

/// The key of a request identified by its client address: its parts, with
/// the in-memory backend's form already written; the text is written only
/// for other backends and for logs.
pub(crate) struct HttpKey<'a> {
    throttle: &'a HttpInner,
    ip: IpAddr,
    method: &'a Method,
    route: &'a str,
    bytes: &'a [u8],
}

impl DecisionKey for HttpKey<'_> {
    #[inline]
    fn memory_bytes(&self) -> &[u8] {
        self.bytes
    }

    fn write_text(&self, prefix: &str, out: &mut impl KeyOut) -> Result<(), Overflow> {
        self.throttle.write_key(
            out,
            prefix,
            KeyIdentity::Ip(self.ip),
            self.method,
            self.route,
        )
    }
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
        self.lazy(request, Mode::Hit)
    }

    /// The [`Decision`] a hit would get now, without counting it. A request
    /// over its limit is `Ok` with `allowed == false`.
    pub fn peek<B>(
        &self,
        request: &Request<B>,
    ) -> impl Future<Output = Result<Decision, Error>> + Send + 'static {
        self.lazy(request, Mode::Peek)
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
        self.lazy_report(request, Mode::Hit)
    }

    /// Like [`peek`](HttpThrottle::peek), with the rate-limit headers a hit
    /// would give: for an endpoint that tells clients their quota without
    /// spending it. Over the limit it is `Ok`, with `allowed == false`.
    ///
    /// Like `peek`, it reports the decision the request itself would get, so
    /// `remaining` is what one more request would leave (a fresh client of a
    /// 100/min throttle sees `r=99`), and it looks at the counter of the
    /// request's own route unless the throttle is
    /// [`.shared_across_routes()`](crate::ThrottleBuilder::shared_across_routes):
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
        self.lazy_report(request, Mode::Peek)
    }

    /// Like [`hit_with_headers`](HttpThrottle::hit_with_headers), for
    /// request parts.
    pub fn hit_parts_with_headers(
        &self,
        parts: &Parts,
    ) -> impl Future<Output = Result<RateLimitReport, Error>> + Send + 'static {
        self.lazy_report(parts, Mode::Hit)
    }

    /// [`lazy_verdict`](HttpThrottle::lazy_verdict) as a report.
    fn lazy_report<R: RequestHead>(
        &self,
        request: &R,
        mode: Mode,
    ) -> impl Future<Output = Result<RateLimitReport, Error>> + Send + 'static {
        let verdict = self.lazy_verdict(request, mode);
        async move {
            let verdict = verdict.await?;
            Ok(RateLimitReport::new(verdict.decision, verdict.info))
        }
    }

    /// Reads the request now; asks the backend only when polled.
    fn lazy<R: RequestHead>(
        &self,
        request: &R,
        mode: Mode,
    ) -> impl Future<Output = Result<Decision, Error>> + Send + 'static {
        let verdict = self.lazy_verdict(request, mode);
        async move { Ok(verdict.await?.decision) }
    }

    /// The verdict of [`lazy`](HttpThrottle::lazy), with its header values.
    fn lazy_verdict<R: RequestHead>(
        &self,
        request: &R,
        mode: Mode,
    ) -> impl Future<Output = Result<Verdict, Error>> + Send + 'static {
        let prepared = self.inner.prepare(request, None, mode, |prepared| {
            prepared.into_owned(self.inner.core.fixed_backend())
        });
        let inner = Arc::clone(&self.inner);
        async move { inner.run(prepared, mode).wait().await }
    }

    /// Like [`hit`](HttpThrottle::hit), for request parts.
    pub fn hit_parts(
        &self,
        parts: &Parts,
    ) -> impl Future<Output = Result<Decision, Error>> + Send + 'static {
        self.lazy(parts, Mode::Hit)
    }
}

impl HttpInner {
    /// Identifies the request, builds its key and asks the backend;
    /// synchronous for the default identifier, a static rate and an
    /// in-memory backend.
    #[inline]
    pub(crate) fn check<R: RequestHead>(
        self: &Arc<Self>,
        request: &R,
        fallback: Option<&DynBackend>,
        mode: Mode,
    ) -> Check {
        if mode == Mode::Hit {
            if let Some(check) = self.check_in_memory(request, fallback) {
                return check;
            }
        }
        self.prepare(request, fallback, mode, |prepared| self.run(prepared, mode))
    }

    /// The hit of a request whose throttle counts client addresses at a
    /// static rate in an in-memory backend known now, all inline; `None`
    /// for any other throttle (see [`prepare`](HttpInner::prepare)).
    #[inline]
    fn check_in_memory<R: RequestHead>(
        self: &Arc<Self>,
        request: &R,
        fallback: Option<&DynBackend>,
    ) -> Option<Check> {
        let core = &self.core;
        if core.cost == 0 || self.identifier.is_some() {
            return None;
        }
        let RateSource::Static(Some(quota)) = &core.rate else {
            return None;
        };
        let backend = match (&core.backend, fallback) {
            (BackendChoice::Fixed(backend), _) | (BackendChoice::Inherit, Some(backend)) => backend,
            _ => return None,
        };
        let memory = backend.as_in_memory()?;
        let ip = match self.address.client(request.extensions(), request.headers()) {
            Ok(ip) => ip,
            Err(error) => return Some(Check::Ready(Err(error))),
        };
        let route = self.route_in_key(request);
        let mut bytes = KeyBytes::new();
        let key = self.client_key(&mut bytes, ip, request.method(), route);
        let result = memory.decide_bytes(key.memory_bytes(), quota, core.cost, true);
        Some(core.after(result, backend, &key, quota, Mode::Hit))
    }

    /// Asks the backend for a prepared request.
    #[inline]
    pub(crate) fn run<K: DecisionKey, Q: Borrow<Quota>>(
        &self,
        prepared: Prepared<'_, K, Q>,
        mode: Mode,
    ) -> Check {
        match prepared {
            Prepared::Done(result) => Check::Ready(result),
            Prepared::Decide {
                backend,
                key,
                quota,
            } => match backend.as_deref().or(self.core.fixed_backend()) {
                Some(backend) => self.core.decide(backend, &key, quota.borrow(), mode),
                None => Check::Ready(Err(Error::configuration(format!(
                    "throttle {:?} lost its backend",
                    self.core.uid()
                )))),
            },
            Prepared::Later(check) => check,
        }
    }

    /// Reads what the decision needs from the request (identity, key,
    /// backend, quota) without touching the backend, and hands it to `then`
    /// (the key is built on this function's stack when it fits).
    pub(crate) fn prepare<'a, R: RequestHead, T>(
        self: &'a Arc<Self>,
        request: &R,
        fallback: Option<&'a DynBackend>,
        mode: Mode,
        then: impl FnOnce(Prepared<'a, HttpKey<'_>, &'a Quota>) -> T,
    ) -> T {
        let core = &self.core;
        if core.cost == 0 {
            return then(Prepared::Done(Ok(Verdict::exempt())));
        }
        // The layer's `check_in_memory` repeats this branch for in-memory
        // backends: keep the two alike (tests check they share counters).
        if self.identifier.is_none() {
            if let RateSource::Static(quota) = &core.rate {
                let Some(quota) = quota else {
                    return then(Prepared::Done(Ok(Verdict::exempt())));
                };
                let ip = match self.address.client(request.extensions(), request.headers()) {
                    Ok(ip) => ip,
                    Err(error) => return then(Prepared::Done(Err(error))),
                };
                // Borrowed when possible: no Arc count traffic per request.
                let backend: Option<Cow<'a, DynBackend>> = match (&core.backend, fallback) {
                    (BackendChoice::Fixed(_), _) => None,
                    (BackendChoice::Inherit, Some(backend)) => Some(Cow::Borrowed(backend)),
                    _ => match core.resolve_backend(fallback) {
                        Ok(backend) => Some(Cow::Owned(backend)),
                        // No scope now: look again when the future is first
                        // polled, which may happen inside a scope.
                        Err(_) => {
                            return then(Prepared::Later(self.check_async(request, fallback, mode)))
                        }
                    },
                };
                let route = self.route_in_key(request);
                let mut bytes = KeyBytes::new();
                let key = self.client_key(&mut bytes, ip, request.method(), route);
                return then(Prepared::Decide {
                    backend,
                    key,
                    quota,
                });
            }
        }
        then(Prepared::Later(self.check_async(request, fallback, mode)))
    }

    /// The general path: closures to await, a backend to find.
    fn check_async<R: RequestHead>(
        self: &Arc<Self>,
        request: &R,
        fallback: Option<&DynBackend>,
        mode: Mode,
    ) -> Check {
        let core = &self.core;
        let parts = request.to_parts();
        let identity = match &self.identifier {
            Some(identifier) => IdentityStep::Future(identifier(&parts)),
            None => IdentityStep::Ip(self.address.client(&parts.extensions, &parts.headers)),
        };
        let rate = match &core.rate {
            RateSource::Static(quota) => RateStep::Ready(*quota),
            RateSource::Dynamic(rate) => RateStep::Future(rate(&parts)),
        };
        let method = parts.method.clone();
        let route = route_of(&parts.extensions, &parts.uri).to_owned();
        // Resolve scoped backends at call time; failing that, when the future
        // is first polled (`scope(b, t.hit(&req))` works too).
        let backend = core.resolve_backend(fallback);
        let fallback = fallback.cloned();
        let this = Arc::clone(self);
        Check::Pending(Box::pin(async move {
            let identity = match identity {
                IdentityStep::Future(future) => match future.await {
                    Identity::Unlimited => return Ok(Verdict::exempt()),
                    Identity::Key(key) => KeyIdentityOwned::Key(key),
                },
                IdentityStep::Ip(ip) => KeyIdentityOwned::Ip(ip?),
            };
            let quota = match rate {
                RateStep::Ready(quota) => quota,
                RateStep::Future(future) => this.core.quota_for(future.await)?,
            };
            let Some(quota) = quota else {
                return Ok(Verdict::exempt());
            };
            let backend = match backend {
                Ok(backend) => backend,
                Err(_) => this.core.resolve_backend(fallback.as_ref())?,
            };
            match identity {
                KeyIdentityOwned::Ip(ip) => {
                    let mut bytes = KeyBytes::new();
                    let key = this.client_key(&mut bytes, ip, &method, &route);
                    this.core.decide(&backend, &key, &quota, mode).wait().await
                }
                KeyIdentityOwned::Key(identity) => {
                    let key = this.key(
                        backend.prefix(),
                        KeyIdentity::Key(&identity),
                        &method,
                        &route,
                    );
                    this.core
                        .decide(&backend, key.as_str(), &quota, mode)
                        .wait()
                        .await
                }
            }
        }))
    }

    /// `{prefix}:{uid}:{identity}:http:{METHOD}:{route}`.
    fn key(&self, prefix: &str, identity: KeyIdentity<'_>, method: &Method, route: &str) -> String {
        let mut key = String::with_capacity(prefix.len() + route.len() + 64);
        // A `String` never overflows.
        let _ = self.write_key(&mut key, prefix, identity, method, route);
        key
    }

    /// The route part of a request's key: none for a counter shared across
    /// routes (no lookup), else the matched route or the path.
    #[inline]
    fn route_in_key<'r, R: RequestHead>(&self, request: &'r R) -> &'r str {
        if self.shared_across_routes {
            ""
        } else {
            route_of(request.extensions(), request.uri())
        }
    }

    /// The key of a client address, its in-memory form written in `bytes`.
    #[inline]
    fn client_key<'k>(
        &'k self,
        bytes: &'k mut KeyBytes,
        ip: IpAddr,
        method: &'k Method,
        route: &'k str,
    ) -> HttpKey<'k> {
        self.write_memory_key(bytes, ip, method, route);
        HttpKey {
            throttle: self,
            ip,
            method,
            route,
            bytes: bytes.as_slice(),
        }
    }

    /// The in-memory backend's form of a client-address key (see
    /// [`DecisionKey`]): `0xFF {uid} 0xFF`, the address (`4` and its 4
    /// bytes, or `6`, the IPv6 prefix length and the 16 bytes of the masked
    /// address, as the text has `/{bits}`), then `*` for a counter shared across
    /// routes, or the method (one digit, see [`method_index`]) and the route.
    #[inline]
    fn write_memory_key(&self, out: &mut KeyBytes, ip: IpAddr, method: &Method, route: &str) {
        out.put(&self.memory_infix);
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, c, d] = v4.octets();
                out.put(&[4, a, b, c, d]);
            }
            IpAddr::V6(v6) => {
                out.put(&[6, self.address.ipv6_prefix]);
                out.put(&v6.octets());
            }
        }
        if self.shared_across_routes {
            return out.put(b"*");
        }
        out.put(&[b'0' + method_index(method) as u8]);
        out.put(route.as_bytes());
    }

    #[inline]
    fn write_key(
        &self,
        out: &mut impl KeyOut,
        prefix: &str,
        identity: KeyIdentity<'_>,
        method: &Method,
        route: &str,
    ) -> Result<(), Overflow> {
        out.put(prefix)?;
        out.put(&self.uid_infix)?;
        match identity {
            KeyIdentity::Ip(ip) => self.address.write(ip, out)?,
            KeyIdentity::Key(k) => out.put(k)?,
        }
        if self.shared_across_routes {
            return out.put(":http:*");
        }
        let (infix, len) = method_infix(method);
        out.put_first(infix, len)?;
        put_escaped(out, route)
    }
}

/// Writes the text of a key from its in-memory form, with a backend's
/// `prefix` (for logs of futures that own only that form): the inverse of
/// [`HttpInner::write_memory_key`], giving what
/// [`HttpInner::write_key`] writes for the same parts.
pub(crate) fn write_memory_key_text(
    bytes: &[u8],
    prefix: &str,
    out: &mut impl KeyOut,
) -> Result<(), Overflow> {
    // Every piece was a `str` or a digit: never lossy for a key this crate wrote.
    let text = String::from_utf8_lossy;
    let unreadable = |out: &mut _| KeyOut::put(out, "(unreadable key)");
    let Some(rest) = bytes.strip_prefix(&[0xFF]) else {
        return out.put(&text(bytes));
    };
    let Some(end) = rest.iter().position(|&byte| byte == 0xFF) else {
        return unreadable(out);
    };
    out.put(prefix)?;
    out.put(":")?;
    put_escaped(out, &text(&rest[..end]))?;
    out.put(":")?;
    let rest = match &rest[end + 1..] {
        [4, a, b, c, d, rest @ ..] => {
            crate::key::put_ipv4(out, std::net::Ipv4Addr::new(*a, *b, *c, *d))?;
            rest
        }
        [6, bits, rest @ ..] => {
            let Some((octets, rest)) = rest.split_first_chunk::<16>() else {
                return unreadable(out);
            };
            let ip = std::net::Ipv6Addr::from(*octets);
            if *bits < 128 {
                write!(out, "{ip}/{bits}").map_err(|_| Overflow)?;
            } else {
                write!(out, "{ip}").map_err(|_| Overflow)?;
            }
            rest
        }
        _ => return unreadable(out),
    };
    match rest {
        [b'*'] => out.put(":http:*"),
        [digit @ b'0'..=b'8', route @ ..] => {
            let index = usize::from(digit - b'0');
            let at = index * 16;
            out.put_first(&METHOD_INFIX_TEXT[at..at + 16], METHOD_INFIX_LENS[index])?;
            put_escaped(out, &text(route))
        }
        _ => unreadable(out),
    }
}

/// `":http:{METHOD}:"` for the standard methods, in one piece. HEAD counts
/// as GET: Axum answers HEAD with the GET handler, and a separate HEAD
/// counter would double a client's quota.
#[inline]
fn method_infix(method: &Method) -> (&'static str, usize) {
    let index = method_index(method);
    let at = index * 16;
    (&METHOD_INFIX_TEXT[at..at + 16], METHOD_INFIX_LENS[index])
}

/// The method's index in [`METHOD_INFIX_TEXT`]: HEAD is GET's, a standard
/// method in another case (`get`) is that method's, and every other method
/// shares `OTHER`'s. Methods are case-sensitive and any token is one, so
/// keying them as sent would give a client one more quota per name it
/// makes up on a route that answers any method (`any(..)`, a fallback).
#[inline]
fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET | Method::HEAD => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::PATCH => 4,
        Method::OPTIONS => 5,
        Method::CONNECT => 6,
        Method::TRACE => 7,
        _ => other_method_index(method.as_str()),
    }
}

/// The index of the methods that share the `OTHER` counter.
const OTHER_METHOD: usize = 8;

/// One of the nine methods of RFC 9110 and RFC 5789, in any case.
pub(crate) fn is_standard_method(method: &Method) -> bool {
    method_index(method) != OTHER_METHOD
}

#[cold]
fn other_method_index(name: &str) -> usize {
    const STANDARD: [(&str, usize); 9] = [
        ("GET", 0),
        ("HEAD", 0),
        ("POST", 1),
        ("PUT", 2),
        ("DELETE", 3),
        ("PATCH", 4),
        ("OPTIONS", 5),
        ("CONNECT", 6),
        ("TRACE", 7),
    ];
    STANDARD
        .iter()
        .find(|(standard, _)| standard.eq_ignore_ascii_case(name))
        .map_or(OTHER_METHOD, |&(_, index)| index)
}

/// `":http:{METHOD}:"` of the standard methods, 16 bytes each (NUL-padded):
/// appended with one fixed-size copy.
const METHOD_INFIX_TEXT: &str = concat!(
    ":http:GET:\0\0\0\0\0\0",
    ":http:POST:\0\0\0\0\0",
    ":http:PUT:\0\0\0\0\0\0",
    ":http:DELETE:\0\0\0",
    ":http:PATCH:\0\0\0\0",
    ":http:OPTIONS:\0\0",
    ":http:CONNECT:\0\0",
    ":http:TRACE:\0\0\0\0",
    ":http:OTHER:\0\0\0\0",
);

const _: () = assert!(METHOD_INFIX_TEXT.len() == 9 * 16);

/// The length of each infix of [`METHOD_INFIX_TEXT`] without its padding.
const METHOD_INFIX_LENS: [usize; 9] = [10, 11, 10, 13, 12, 14, 14, 12, 12];

enum IdentityStep {
    Future(BoxFuture<Identity>),
    Ip(Result<IpAddr, Error>),
}

enum RateStep {
    Ready(Option<Quota>),
    Future(BoxFuture<Rate>),
}

#[derive(Clone, Copy)]
enum KeyIdentity<'a> {
    Ip(IpAddr),
    Key(&'a str),
}

enum KeyIdentityOwned {
    Ip(IpAddr),
    Key(String),
}

/// Options only HTTP throttles have.
#[derive(Clone, Default)]
pub struct HttpOptions {
    identifier: Option<IdentifierFn>,
    address: AddressIdentity,
    shared_across_routes: bool,
}

impl std::fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpOptions")
            .field("identifier", &self.identifier.is_some())
            .field("ipv6_prefix", &self.address.ipv6_prefix)
            .field("trusted_proxies", &!self.address.proxies.is_empty())
            .field("shared_across_routes", &self.shared_across_routes)
            .finish()
    }
}

impl<K: std::fmt::Debug> std::fmt::Debug for ThrottleBuilder<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThrottleBuilder")
            .field("uid", &self.uid)
            .field("limit", &self.limit)
            .field("period", &self.period)
            .field("rate", &self.rate)
            .field("dynamic_rate", &self.dynamic_rate.is_some())
            .field("strategy", &self.strategy)
            .field("burst", &self.burst)
            .field("cost", &self.cost)
            .field("failure_mode", &self.failure_mode)
            .field("shadow", &self.shadow)
            .field("exceeded", &self.exceeded)
            .field("max_waiting", &self.max_waiting)
            .field("on_decision", &self.on_decision.is_some())
            .field("headers", &self.headers)
            .field("on_throttled", &self.on_throttled.is_some())
            .field("errors", &self.errors)
            .field("options", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Builder of an [`HttpThrottle`].
pub type HttpThrottleBuilder = ThrottleBuilder<HttpOptions>;

/// Builder shared by [`HttpThrottle`] and
/// [`WebSocketThrottle`](crate::WebSocketThrottle); `K` holds the options of
/// one kind.
#[must_use = "call .build() to get the throttle"]
#[derive(Clone)]
pub struct ThrottleBuilder<K> {
    uid: Option<String>,
    limit: Option<u64>,
    period: Duration,
    rate: Option<Result<Rate, Error>>,
    dynamic_rate: Option<RateFn>,
    strategy: Strategy,
    burst: Option<u64>,
    cost: u64,
    backend: BackendChoice,
    failure_mode: FailureMode,
    shadow: bool,
    exceeded: Exceeded,
    max_waiting: usize,
    on_decision: Option<DecisionFn>,
    headers: RateLimitHeaders,
    on_throttled: Option<ThrottledResponder>,
    errors: Vec<Error>,
    pub(crate) kind: K,
}

impl<K> ThrottleBuilder<K> {
    pub(crate) fn new(kind: K) -> Self {
        ThrottleBuilder {
            uid: None,
            limit: None,
            period: Duration::ZERO,
            rate: None,
            dynamic_rate: None,
            strategy: Strategy::default(),
            burst: None,
            cost: 1,
            backend: BackendChoice::Inherit,
            failure_mode: FailureMode::default(),
            shadow: false,
            exceeded: Exceeded::default(),
            max_waiting: usize::MAX,
            on_decision: None,
            headers: RateLimitHeaders::None,
            on_throttled: None,
            errors: Vec::new(),
            kind,
        }
    }

    /// A unique id among live throttles (default: an id generated in creation
    /// order). Set it explicitly when several app instances share a Redis
    /// backend, so that their keys match.
    pub fn uid(mut self, uid: impl Into<String>) -> Self {
        self.uid = Some(uid.into());
        self
    }

    /// Hits allowed per period; add the period with the unit methods.
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    fn add_period(mut self, unit: Duration, n: u64) -> Self {
        const NANOS_PER_SEC: u128 = 1_000_000_000;
        let add = unit
            .as_nanos()
            .checked_mul(u128::from(n))
            .and_then(|nanos| {
                let secs = u64::try_from(nanos / NANOS_PER_SEC).ok()?;
                Some(Duration::new(secs, (nanos % NANOS_PER_SEC) as u32))
            })
            .and_then(|d| self.period.checked_add(d));
        match add {
            Some(period) => self.period = period,
            None => self.errors.push(Error::configuration(format!(
                "the period is too long (adding {n} × {unit:?})"
            ))),
        }
        self
    }

    /// Adds `n` milliseconds to the period.
    pub fn milliseconds(self, n: u64) -> Self {
        self.add_period(Duration::from_millis(1), n)
    }

    /// Adds `n` seconds to the period.
    pub fn seconds(self, n: u64) -> Self {
        self.add_period(Duration::from_secs(1), n)
    }

    /// Adds `n` minutes to the period.
    pub fn minutes(self, n: u64) -> Self {
        self.add_period(Duration::from_secs(60), n)
    }

    /// Adds `n` hours to the period.
    pub fn hours(self, n: u64) -> Self {
        self.add_period(Duration::from_secs(3600), n)
    }

    /// Adds `n` days to the period.
    pub fn days(self, n: u64) -> Self {
        self.add_period(Duration::from_secs(86_400), n)
    }

    /// The rate as a [`Rate`] or a string: `"100/min"`, `"2/5s"`,
    /// `"10 per second"`, `Rate::unlimited()`.
    pub fn rate(mut self, rate: impl IntoRate) -> Self {
        self.rate = Some(rate.into_rate());
        self
    }

    /// A rate computed per request (tenant tiers, plans...). The closure gets
    /// the request head and returns a `Send + 'static` future: clone what you
    /// need before `async move`. An unlimited rate exempts the request.
    ///
    /// ```
    /// use traffik::{HttpThrottle, Rate};
    /// let throttle = HttpThrottle::builder()
    ///     .dynamic_rate(|parts: &http::request::Parts| {
    ///         let premium = parts.headers.contains_key("x-premium");
    ///         async move { if premium { "1000/min".parse().unwrap() } else { Rate::per_minute(10).unwrap() } }
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # drop(throttle);
    /// ```
    pub fn dynamic_rate<F, Fut>(mut self, rate: F) -> Self
    where
        F: Fn(&Parts) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Rate> + Send + 'static,
    {
        self.dynamic_rate = Some(Arc::new(move |parts: &Parts| -> BoxFuture<Rate> {
            Box::pin(rate(parts))
        }));
        self
    }

    /// The algorithm (default [`Strategy::TokenBucket`]).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// The bucket capacity for [`Strategy::TokenBucket`] and
    /// [`Strategy::Gcra`] (default: the limit).
    pub fn burst(mut self, burst: u64) -> Self {
        self.burst = Some(burst);
        self
    }

    /// What one hit costs (default 1). Cost 0 never touches the backend.
    pub fn cost(mut self, cost: u64) -> Self {
        self.cost = cost;
        self
    }

    /// The backend holding the counters (any backend; clones share state).
    pub fn backend(mut self, backend: impl IntoBackend) -> Self {
        self.backend = BackendChoice::Fixed(backend.into_backend());
        self
    }

    /// Use the innermost [`traffik::backend::scope`](crate::backend::scope)
    /// at each call; no scope is [`Error::Configuration`].
    pub fn dynamic_backend(mut self) -> Self {
        self.backend = BackendChoice::Dynamic;
        self
    }

    /// What happens when the backend fails (default [`FailureMode::Open`]).
    pub fn failure_mode(mut self, mode: FailureMode) -> Self {
        self.failure_mode = mode;
        self
    }

    /// Shadow mode: decide, count, log with `tracing::info!`, never reject.
    /// `hit()` then returns `Ok` with `allowed == false` for a request over
    /// its limit. A backend that fails is logged (`tracing::warn!`, or
    /// `tracing::error!` for a quota it cannot hold) and the request let
    /// through, whatever the [`FailureMode`].
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// What happens to a hit over the limit (default [`Exceeded::Reject`]).
    pub fn on_exceeded(mut self, exceeded: Exceeded) -> Self {
        self.exceeded = exceeded;
        self
    }

    /// Under [`Exceeded::Wait`], the most hits this throttle holds at once,
    /// over all keys (default: no bound). A hit that would wait while `n`
    /// already do is rejected at once, as under [`Exceeded::Reject`]. Every
    /// held request keeps its connection and its future: bound them so
    /// that a flood cannot hold more than you can afford. Without
    /// `Exceeded::Wait` it has no effect; `max_waiting(0)` rejects like
    /// `Reject`. A WebSocket message holds its place until the guard is
    /// polled again after its wait (or dropped).
    ///
    /// ```
    /// use std::time::Duration;
    /// use traffik::{Exceeded, HttpThrottle};
    ///
    /// let shaped = HttpThrottle::builder()
    ///     .rate("10/s")
    ///     .on_exceeded(Exceeded::Wait { max: Duration::from_secs(2) })
    ///     .max_waiting(1_000)
    ///     .build()
    ///     .unwrap();
    /// # let _ = shaped;
    /// ```
    pub fn max_waiting(mut self, n: usize) -> Self {
        self.max_waiting = n;
        self
    }

    /// Called with every decision that counted a hit (metrics).
    pub fn on_decision<F>(mut self, f: F) -> Self
    where
        F: Fn(&Decision) + Send + Sync + 'static,
    {
        self.on_decision = Some(Arc::new(f));
        self
    }

    /// Rate-limit headers on every response this throttle saw (default none).
    /// HTTP only: a WebSocket throttle refuses it at build.
    pub fn headers(mut self, headers: RateLimitHeaders) -> Self {
        self.headers = headers;
        self
    }

    /// Replaces the 429 response. `Retry-After` is added when the response
    /// lacks it, and `Cache-Control: no-store` is always set (a 429 is never
    /// cacheable). HTTP only: a WebSocket throttle refuses it at build (its
    /// clients get `.notice(..)` texts).
    ///
    /// ```
    /// use axum::response::IntoResponse;
    /// use traffik::{HttpThrottle, Throttled};
    /// let throttle = HttpThrottle::builder()
    ///     .rate("1/s")
    ///     .on_throttled(|t: &Throttled| {
    ///         (http::StatusCode::TOO_MANY_REQUESTS, format!("slow down for {}s", t.retry_after_secs()))
    ///             .into_response()
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # drop(throttle);
    /// ```
    pub fn on_throttled<F, B>(mut self, f: F) -> Self
    where
        F: Fn(&Throttled) -> http::Response<B> + Send + Sync + 'static,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.on_throttled = Some(responder(f));
        self
    }

    /// Validates everything and registers the uid.
    pub(crate) fn build_core(self, kind: &str) -> Result<(Arc<Core>, K), Error> {
        if let Some(error) = self.errors.into_iter().next() {
            return Err(error);
        }
        let rate = match (self.rate, self.limit, self.period.is_zero(), &self.dynamic_rate) {
            (Some(_), _, _, Some(_)) => {
                return Err(Error::configuration(
                    "set either .rate(..) or .dynamic_rate(..), not both",
                ))
            }
            (Some(_), Some(_), _, _) | (Some(_), _, false, _) => {
                return Err(Error::configuration(
                    "set either .rate(..) or .limit(n) with time units, not both",
                ))
            }
            (Some(rate), None, true, None) => Some(rate?),
            (None, Some(limit), false, None) => Some(Rate::new(limit, self.period)?),
            (None, Some(limit), true, None) => {
                return Err(Error::configuration(format!(
                    "limit({limit}) needs a period: add .seconds(n), .minutes(n), ... (or use .rate(\"{limit}/min\"))"
                )))
            }
            (None, None, false, None) => {
                return Err(Error::configuration(format!(
                    "a period of {:?} needs a limit: add .limit(n)",
                    self.period
                )))
            }
            (None, None, true, None) => {
                return Err(Error::configuration(
                    "no rate: set .limit(n).seconds(n), .rate(\"5/10s\"), .rate(Rate::unlimited()) or .dynamic_rate(..)",
                ))
            }
            (None, _, _, Some(_)) if self.limit.is_some() || !self.period.is_zero() => {
                return Err(Error::configuration(
                    "set either .dynamic_rate(..) or .limit(n) with time units, not both",
                ))
            }
            (None, _, _, Some(_)) => None,
        };
        if let Some(burst) = self.burst {
            if !matches!(self.strategy, Strategy::TokenBucket | Strategy::Gcra) {
                return Err(Error::configuration(format!(
                    "burst({burst}) applies to Strategy::TokenBucket and Strategy::Gcra only, not {:?}",
                    self.strategy
                )));
            }
        }
        let source = match (rate, self.dynamic_rate) {
            (Some(rate), _) if rate.is_unlimited() => RateSource::Static(None),
            (Some(rate), _) => {
                let mut quota = Quota::new(rate, self.strategy)?;
                if let Some(burst) = self.burst {
                    quota = quota.with_burst(burst)?;
                }
                if self.cost > quota.capacity() {
                    return Err(Error::configuration(format!(
                        "cost {} exceeds the capacity {} of rate {rate}: such a hit could never be admitted",
                        self.cost,
                        quota.capacity()
                    )));
                }
                // A quota the throttle's own backend cannot hold fails now,
                // not on every request (in shadow mode too: it is a
                // configuration error, not an outage). Cost 0 never asks.
                if let BackendChoice::Fixed(backend) = &self.backend {
                    if self.cost > 0 {
                        backend.check_quota(&quota)?;
                    }
                }
                RateSource::Static(Some(quota))
            }
            (None, Some(dynamic)) => RateSource::Dynamic(dynamic),
            (None, None) => unreachable!("checked above"),
        };
        let uid = Uid::register(self.uid, kind)?;
        let policy = Policy {
            name: Arc::clone(&uid.0),
            headers: self.headers,
            responder: self.on_throttled,
        };
        let core = Core {
            uid,
            rate: source,
            strategy: self.strategy,
            burst: self.burst,
            cost: self.cost,
            backend: self.backend,
            failure_mode: self.failure_mode,
            shadow: self.shadow,
            exceeded: self.exceeded,
            waiting: AtomicUsize::new(0),
            max_waiting: self.max_waiting,
            on_decision: self.on_decision,
            policy,
        };
        Ok((Arc::new(core), self.kind))
    }
}

impl ThrottleBuilder<HttpOptions> {
    /// How requests are identified (default: the client IP). The closure gets
    /// the request head and returns a `Send + 'static` future of an
    /// [`Identity`]; [`Identity::Unlimited`] exempts the request.
    ///
    /// ```
    /// use traffik::{HttpThrottle, Identity};
    /// let throttle = HttpThrottle::builder()
    ///     .rate("100/min")
    ///     .identifier(|parts: &http::request::Parts| {
    ///         let user = parts.headers.get("x-user").and_then(|v| v.to_str().ok()).map(str::to_owned);
    ///         async move {
    ///             match user.as_deref() {
    ///                 Some("admin") => Identity::Unlimited,
    ///                 Some(user) => Identity::key(user),
    ///                 None => Identity::key("anonymous"),
    ///             }
    ///         }
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # drop(throttle);
    /// ```
    pub fn identifier<F, Fut>(mut self, identifier: F) -> Self
    where
        F: Fn(&Parts) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Identity> + Send + 'static,
    {
        self.kind.identifier = Some(Arc::new(move |parts: &Parts| -> BoxFuture<Identity> {
            Box::pin(identifier(parts))
        }));
        self
    }

    /// Proxies whose forwarding headers are believed (default: none).
    pub fn trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.kind.address.proxies = proxies;
        self
    }

    /// The prefix length IPv6 client addresses are masked to (default 64;
    /// 128 keeps whole addresses).
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        if bits > 128 {
            self.errors.push(Error::configuration(format!(
                "ipv6_prefix({bits}) must be between 0 and 128"
            )));
        }
        self.kind.address.ipv6_prefix = bits.min(128);
        self
    }

    /// One counter per identity for every route this throttle covers
    /// (default: one counter per method and route).
    pub fn shared_across_routes(mut self) -> Self {
        self.kind.shared_across_routes = true;
        self
    }

    /// Builds the throttle; [`Error::Configuration`] names any bad input.
    pub fn build(self) -> Result<HttpThrottle, Error> {
        let (core, options) = self.build_core("http")?;
        Ok(HttpThrottle {
            inner: Arc::new(HttpInner {
                identifier: options.identifier,
                address: options.address,
                shared_across_routes: options.shared_across_routes,
                uid_infix: format!(":{}:", escaped(core.uid())).into_boxed_str(),
                memory_infix: [&[0xFF][..], core.uid().as_bytes(), &[0xFF]]
                    .concat()
                    .into(),
                core,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::INLINE as INLINE_FOR_TESTS;

    #[test]
    fn period_units_take_any_u64_and_refuse_overflow_with_a_message() {
        // 5,000,000,000 ms (about 58 days): above u32::MAX, as "5000000000ms" is.
        let builder = HttpThrottle::builder().milliseconds(5_000_000_000);
        assert_eq!(builder.period, Duration::from_secs(5_000_000));
        assert!(builder.errors.is_empty());
        let builder = HttpThrottle::builder().hours(u64::MAX);
        assert_eq!(builder.errors.len(), 1);
        assert!(builder.errors[0]
            .to_string()
            .contains("the period is too long"));
        let sum = HttpThrottle::builder().seconds(1).milliseconds(500);
        assert_eq!(sum.period, Duration::from_millis(1_500));
    }

    #[test]
    fn keys_name_every_method_and_count_head_as_get() {
        let throttle = HttpThrottle::builder()
            .uid("key-text-per-method")
            .rate("1/s")
            .build()
            .unwrap();
        let ip = KeyIdentity::Ip(IpAddr::from([10, 0, 0, 1]));
        let purge = Method::from_bytes(b"PURGE").unwrap();
        let cases = [
            (Method::GET, "GET"),
            (Method::HEAD, "GET"),
            (Method::POST, "POST"),
            (Method::PUT, "PUT"),
            (Method::DELETE, "DELETE"),
            (Method::PATCH, "PATCH"),
            (Method::OPTIONS, "OPTIONS"),
            (Method::CONNECT, "CONNECT"),
            (Method::TRACE, "TRACE"),
            // Another case is the standard method; made-up names share one.
            (Method::from_bytes(b"get").unwrap(), "GET"),
            (Method::from_bytes(b"Post").unwrap(), "POST"),
            (Method::from_bytes(b"head").unwrap(), "GET"),
            (purge, "OTHER"),
            (Method::from_bytes(b"M1").unwrap(), "OTHER"),
        ];
        for (method, name) in cases {
            assert_eq!(
                throttle.inner.key("traffik", ip, &method, "/items/{id}"),
                format!("traffik:key-text-per-method:10.0.0.1:http:{name}:/items/{{id}}")
            );
        }
    }

    fn memory_key(throttle: &HttpThrottle, ip: &str, method: &Method, route: &str) -> Vec<u8> {
        let mut out = KeyBytes::new();
        let ip: IpAddr = ip.parse().unwrap();
        throttle.inner.write_memory_key(&mut out, ip, method, route);
        out.as_slice().to_vec()
    }

    #[test]
    fn memory_keys_tell_apart_what_text_keys_tell_apart() {
        let a = HttpThrottle::builder()
            .uid("mk-a")
            .rate("1/s")
            .build()
            .unwrap();
        let ab = HttpThrottle::builder()
            .uid("mk-ab")
            .rate("1/s")
            .build()
            .unwrap();
        let shared = HttpThrottle::builder()
            .uid("mk-shared")
            .rate("1/s")
            .shared_across_routes()
            .build()
            .unwrap();
        let purge = Method::from_bytes(b"PURGE").unwrap();
        let get = Method::GET;
        let keys = [
            memory_key(&a, "10.0.0.1", &get, "/"),
            memory_key(&a, "10.0.0.1", &get, "/x"),
            memory_key(&a, "10.0.0.1", &Method::POST, "/"),
            memory_key(&a, "10.0.0.1", &purge, "/"),
            memory_key(&a, "10.0.0.2", &get, "/"),
            memory_key(&a, "::ffff:10.0.0.1", &get, "/"),
            memory_key(&a, "2001:db8::", &get, "/"),
            memory_key(&ab, "10.0.0.1", &get, "/"),
            memory_key(&shared, "10.0.0.1", &get, "/"),
        ];
        for (i, key) in keys.iter().enumerate() {
            // Never the bytes of a text key: 0xFF is in no UTF-8 text.
            assert_eq!(key[0], 0xFF);
            assert!(std::str::from_utf8(key).is_err());
            for other in &keys[i + 1..] {
                assert_ne!(key, other);
            }
        }
        // A made-up method shares one counter with every other; a standard
        // one in another case is that method.
        assert_eq!(
            memory_key(&a, "10.0.0.1", &purge, "/"),
            memory_key(&a, "10.0.0.1", &Method::from_bytes(b"M1").unwrap(), "/")
        );
        assert_eq!(
            memory_key(&a, "10.0.0.1", &Method::from_bytes(b"gEt").unwrap(), "/"),
            memory_key(&a, "10.0.0.1", &get, "/")
        );
        // HEAD counts as GET; a shared counter ignores method and route.
        assert_eq!(
            memory_key(&a, "10.0.0.1", &Method::HEAD, "/"),
            memory_key(&a, "10.0.0.1", &get, "/")
        );
        assert_eq!(
            memory_key(&shared, "10.0.0.1", &Method::POST, "/other"),
            memory_key(&shared, "10.0.0.1", &get, "/")
        );
        assert_eq!(
            memory_key(&a, "10.0.0.1", &get, "/"),
            [&[0xFF][..], b"mk-a", &[0xFF, 4, 10, 0, 0, 1, b'0', b'/']].concat()
        );
    }

    #[test]
    fn the_text_read_back_from_a_memory_key_is_the_key_text() {
        let purge = Method::from_bytes(b"PURGE").unwrap();
        let long = format!("/{}", "long".repeat(40));
        for (uid, bits, shared) in [
            ("mk-read-64", 64, false),
            ("mk-read-48", 48, false),
            ("mk-read-128", 128, false),
            ("mk:read:shared", 64, true),
        ] {
            let mut builder = HttpThrottle::builder()
                .uid(uid)
                .rate("1/s")
                .ipv6_prefix(bits);
            if shared {
                builder = builder.shared_across_routes();
            }
            let throttle = builder.build().unwrap();
            for ip in ["10.0.0.1", "255.1.0.99", "2001:db8::", "2001:db8:1:2::7"] {
                for method in [Method::GET, Method::HEAD, Method::DELETE, purge.clone()] {
                    for route in ["/", "/items/{id}", "/é", "/a:b%c", long.as_str()] {
                        let bytes = memory_key(&throttle, ip, &method, route);
                        let expected = throttle.inner.key(
                            "myapp",
                            KeyIdentity::Ip(ip.parse().unwrap()),
                            &method,
                            route,
                        );
                        let mut read = String::new();
                        assert!(write_memory_key_text(&bytes, "myapp", &mut read).is_ok());
                        assert_eq!(read, expected);
                    }
                }
            }
        }
        let mut read = String::new();
        assert!(write_memory_key_text(&[0xFF, b'u', 0xFF, 9], "p", &mut read).is_ok());
        assert!(read.ends_with("(unreadable key)"), "{read}");
    }

    #[test]
    fn memory_keys_hold_the_ipv6_prefix_length_as_the_text_does() {
        let key = |bits: u8| {
            let throttle = HttpThrottle::builder()
                .uid("mk-v6-bits")
                .rate("1/s")
                .ipv6_prefix(bits)
                .build()
                .unwrap();
            // 2001:db8:: is the same address masked to /48 and to /64.
            let bytes = memory_key(&throttle, "2001:db8::", &Method::GET, "/");
            let text = throttle.inner.key(
                "traffik",
                KeyIdentity::Ip("2001:db8::".parse().unwrap()),
                &Method::GET,
                "/",
            );
            (bytes, text)
        };
        let (bytes_48, text_48) = key(48);
        let (bytes_64, text_64) = key(64);
        assert_ne!(text_48, text_64);
        assert_ne!(bytes_48, bytes_64);
    }

    #[test]
    fn a_memory_key_shows_its_text_and_spills_long_routes_to_the_heap() {
        let throttle = HttpThrottle::builder()
            .uid("mk-text")
            .rate("1/s")
            .build()
            .unwrap();
        let route = format!("/{}", "r".repeat(3 * INLINE_FOR_TESTS));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut bytes = KeyBytes::new();
        let key = throttle
            .inner
            .client_key(&mut bytes, ip, &Method::GET, &route);
        assert!(key.memory_bytes().ends_with(route.as_bytes()));
        let text = format!("myapp:mk-text:10.0.0.1:http:GET:{route}");
        assert_eq!(key.text("myapp").as_str(), text);
        // Logs show it cut (it is longer than 256 bytes).
        let shown = Shown(&key, "myapp").to_string();
        assert!(
            shown.starts_with(&text[..200]) && shown.ends_with(" bytes)"),
            "{shown}"
        );
        let owned = key.to_owned_key("myapp", true);
        assert!(matches!(owned, OwnedKey::Memory(_)));
        assert_eq!(owned.memory_bytes(), key.memory_bytes());
        assert_eq!(owned.text("myapp").as_str(), text);
        let owned = key.to_owned_key("myapp", false);
        assert!(matches!(owned, OwnedKey::Text(_)));
        assert_eq!(owned.text("ignored").as_str(), text);
    }
}
