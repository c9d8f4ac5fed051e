//! [`ThrottleLayer`]: Tower middleware that runs an ordered list of
//! [`MiddlewareThrottle`] rules before the inner service.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use regex::Regex;
use tower_layer::Layer;
use tower_service::Service;

use crate::backend::{BoxFuture, DynBackend, IntoBackend};
use crate::body::{AnyBody, BodyMode, InnerBody};
use crate::response::{error_response, responder, BoxBody, RateLimitInfo, ThrottledResponder};
use crate::throttle::{Check, Mode, RequestHead, Verdict};
use crate::{BoxError, Error, HttpThrottle, Throttled};

type HookFn = Arc<dyn Fn(&Parts) -> BoxFuture<bool> + Send + Sync>;

/// A rule's check still to be awaited.
type PendingCheck = BoxFuture<Result<Verdict, Error>>;

/// A throttle with filters, for [`ThrottleLayer`]: it applies to a request
/// when all its filters match — `methods` (case-insensitive), `path` (a regex
/// matched at the start of the path), and `hook` (an async predicate, checked
/// last).
///
/// ```
/// use http::Method;
/// use traffik::{HttpThrottle, MiddlewareThrottle};
///
/// let writes = HttpThrottle::builder().rate("10/min").build().unwrap();
/// let rule = MiddlewareThrottle::new(writes)
///     .methods([Method::POST, Method::PUT, Method::DELETE])
///     .path(r"/api/")
///     .hook(|parts: &http::request::Parts| {
///         let authed = parts.headers.contains_key(http::header::AUTHORIZATION);
///         async move { !authed }
///     });
/// # drop(rule);
/// ```
#[derive(Clone)]
pub struct MiddlewareThrottle {
    throttle: HttpThrottle,
    methods: Option<Arc<[String]>>,
    path: Option<Regex>,
    hook: Option<HookFn>,
}

impl std::fmt::Debug for MiddlewareThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiddlewareThrottle")
            .field("throttle", &self.throttle.uid())
            .field("methods", &self.methods)
            .field("path", &self.path.as_ref().map(Regex::as_str))
            .field("hook", &self.hook.is_some())
            .finish()
    }
}

impl MiddlewareThrottle {
    /// A rule applying `throttle` to every request (until filters are added).
    pub fn new(throttle: impl Into<HttpThrottle>) -> Self {
        MiddlewareThrottle {
            throttle: throttle.into(),
            methods: None,
            path: None,
            hook: None,
        }
    }

    /// Only requests with one of these methods (case-insensitive). `GET`
    /// also covers `HEAD`, which axum answers with the GET handler.
    ///
    /// A name outside the nine standard methods (`PROPFIND`, say) is
    /// accepted with a `tracing::warn!`, in case it is a typo: a rule on
    /// `"PSOT"` would never match.
    ///
    /// # Panics
    ///
    /// On a name that is no HTTP method at all (empty, or with a space or
    /// another character a method cannot hold), with a message naming it.
    #[track_caller]
    pub fn methods<I, M>(mut self, methods: I) -> Self
    where
        I: IntoIterator<Item = M>,
        M: AsRef<str>,
    {
        let methods: Arc<[String]> = methods
            .into_iter()
            .map(|m| m.as_ref().to_ascii_uppercase())
            .collect();
        for name in methods.iter() {
            match http::Method::from_bytes(name.as_bytes()) {
                Err(_) => panic!(
                    "invalid HTTP method {name:?} in MiddlewareThrottle::methods for throttle {:?}: \
                     use names such as \"POST\", or http::Method::POST",
                    self.throttle.uid()
                ),
                Ok(method) if !crate::throttle::is_standard_method(&method) => tracing::warn!(
                    throttle = self.throttle.uid(),
                    method = name.as_str(),
                    "MiddlewareThrottle::methods: {name:?} is not a standard HTTP method; \
                     the rule matches only requests with this method (in any case)"
                ),
                Ok(_) => {}
            }
        }
        self.methods = Some(methods);
        self
    }

    /// Only requests whose path matches `pattern` at its start (`"/api/"` is a
    /// prefix; add `$` to match the whole path). The rule matches the path as
    /// sent, percent-decoded, or decoded with its empty, `.` and `..`
    /// segments resolved, any of them (`/users/%61dmin` and
    /// `//users/./admin` count under `/users/admin`; `/api/..` under
    /// `/api/`), so that writing it another way does not step around it.
    ///
    /// # Panics
    ///
    /// On an invalid regex, with a message naming it — like Axum's router
    /// with an invalid route. Use [`try_path`](Self::try_path) for patterns
    /// known only at run time.
    #[track_caller]
    pub fn path(self, pattern: &str) -> Self {
        match self.try_path(pattern) {
            Ok(rule) => rule,
            Err(error) => panic!("{error}"),
        }
    }

    /// Like [`path`](Self::path), returning [`Error::Configuration`] for an
    /// invalid regex.
    pub fn try_path(mut self, pattern: &str) -> Result<Self, Error> {
        let invalid = |error: regex::Error| {
            Error::configuration(format!(
                "invalid path pattern {pattern:?} for throttle {:?}: {error}",
                self.throttle.uid()
            ))
        };
        // Compiled as written (errors point into what the user wrote) and
        // anchored when matching (see `matches`): wrapping it in `^(?:..)`
        // would let `a)|(b` escape the group, or `(?x)/a # note` comment the
        // group's end out.
        let regex = Regex::new(pattern).map_err(invalid)?;
        self.path = Some(regex);
        Ok(self)
    }

    /// Only requests for which `hook` resolves to `true`; checked after the
    /// other filters. The closure returns a `Send + 'static` future: clone
    /// what you need before `async move`.
    pub fn hook<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(&Parts) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        self.hook = Some(Arc::new(move |parts: &Parts| -> BoxFuture<bool> {
            Box::pin(hook(parts))
        }));
        self
    }

    /// The throttle.
    pub fn throttle(&self) -> &HttpThrottle {
        &self.throttle
    }

    /// The method and path filters. HEAD counts as GET (axum answers it
    /// with the GET handler), so a rule on GET covers HEAD too.
    fn matches(&self, request: &impl RequestHead) -> bool {
        if let Some(methods) = &self.methods {
            let listed = |name: &str| methods.iter().any(|m| m.eq_ignore_ascii_case(name));
            let method = request.method();
            let head_as_get = method == http::Method::HEAD && listed("GET");
            if !(listed(method.as_str()) || head_as_get) {
                return false;
            }
        }
        match &self.path {
            Some(path) => path_matches(path, request.uri().path()),
            None => true,
        }
    }
}

/// Whether `regex` matches `path` at its start (the leftmost match starts
/// at 0 exactly when some match does), as sent or as a handler may read it:
/// percent-decoded (`/users/%61dmin` is `/users/admin` to axum's `Path`
/// extractor), or decoded with its empty, `.` and `..` segments resolved
/// (`//files/./x` is `/files/x` to a static-file handler). Any of them
/// counts: the router itself routes the path as sent (`/api/..` and
/// `/api/a%2Fb` reach `/api/{id}`), so no single form is the one a handler
/// sees, and writing the path another way must not step around a rule. A
/// path with no `%` and no such segment is matched once, without a copy.
fn path_matches(regex: &Regex, path: &str) -> bool {
    let at_start = |path: &str| regex.find(path).is_some_and(|found| found.start() == 0);
    if at_start(path) {
        return true;
    }
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    if matches!(decoded, std::borrow::Cow::Owned(_)) && at_start(&decoded) {
        return true;
    }
    normalized(&decoded).is_some_and(|normal| at_start(&normal))
}

/// `path` with its empty and `.` segments dropped and `..` resolved, or
/// `None` when it has none.
fn normalized(path: &str) -> Option<String> {
    let needs_normalizing = path.contains("//")
        || path.contains("/./")
        || path.contains("/../")
        || path.ends_with("/.")
        || path.ends_with("/..");
    if !needs_normalizing {
        return None;
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            segment => segments.push(segment),
        }
    }
    let trailing = path.ends_with('/') && !segments.is_empty();
    let mut normal = String::with_capacity(path.len());
    for segment in &segments {
        normal.push('/');
        normal.push_str(segment);
    }
    if trailing || normal.is_empty() {
        normal.push('/');
    }
    Some(normal)
}

/// Tower middleware evaluating [`MiddlewareThrottle`] rules in order: every
/// matching rule is hit; the first that throttles answers (429 by default)
/// and the inner service is not called.
///
/// Rules whose throttle has no backend of its own use the layer's backend
/// (or, for [`ThrottleLayer::scoped`], the innermost
/// [`backend::scope`](crate::backend::scope)).
///
/// ```
/// # #[cfg(feature = "axum")] {
/// use axum::{routing::get, Router};
/// use http::Method;
/// use traffik::{backend::InMemoryBackend, HttpThrottle, MiddlewareThrottle, ThrottleLayer};
///
/// let memory = InMemoryBackend::new();
/// let writes = HttpThrottle::builder().uid("writes").rate("10/min").build().unwrap();
/// let api = HttpThrottle::builder().uid("api").rate("100/min").build().unwrap();
/// let layer = ThrottleLayer::new(memory)
///     .rule(MiddlewareThrottle::new(writes).methods([Method::POST, Method::PUT, Method::DELETE]))
///     .rule(MiddlewareThrottle::new(api).path(r"/api/"));
/// let app: Router = Router::new().route("/api/items", get(|| async { "items" })).layer(layer);
/// # }
/// ```
///
/// Responses keep the inner service's body type (axum's `Body` under a
/// `Router`), so axum does not box them again. For an inner service whose
/// body traffik cannot build its answers in (a plain Hyper service's
/// `Full<Bytes>`, say), call [`.any_body()`](ThrottleLayer::any_body); see
/// [`body`](crate::body).
pub struct ThrottleLayer<M = InnerBody> {
    config: Arc<LayerConfig>,
    mode: PhantomData<fn() -> M>,
}

impl<M> Clone for ThrottleLayer<M> {
    fn clone(&self) -> Self {
        ThrottleLayer {
            config: Arc::clone(&self.config),
            mode: PhantomData,
        }
    }
}

impl Default for ThrottleLayer {
    fn default() -> Self {
        ThrottleLayer::scoped()
    }
}

#[derive(Clone, Default)]
struct LayerConfig {
    backend: Option<DynBackend>,
    rules: Vec<MiddlewareThrottle>,
    on_throttled: Option<ThrottledResponder>,
}

impl<M> std::fmt::Debug for ThrottleLayer<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThrottleLayer")
            .field("rules", &self.config.rules)
            .finish_non_exhaustive()
    }
}

impl ThrottleLayer {
    /// A layer whose rules use `backend` unless their throttle has its own.
    pub fn new(backend: impl IntoBackend) -> Self {
        ThrottleLayer {
            config: Arc::new(LayerConfig {
                backend: Some(backend.into_backend()),
                ..LayerConfig::default()
            }),
            mode: PhantomData,
        }
    }

    /// A layer without a backend of its own: rules use their throttle's
    /// backend, else the innermost [`backend::scope`](crate::backend::scope).
    pub fn scoped() -> Self {
        ThrottleLayer {
            config: Arc::default(),
            mode: PhantomData,
        }
    }
}

impl<M> ThrottleLayer<M> {
    /// Lets the layer wrap a service answering in any body type `B`: its
    /// responses then use [`ResponseBody<B>`](crate::ResponseBody), which
    /// holds either `B` or the body of traffik's own answers. Needed when
    /// `B` does not implement [`FromBoxBody`](crate::body::FromBoxBody), as
    /// with a plain Hyper service's `Full<Bytes>`; not needed, and slower,
    /// under an axum `Router`.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use bytes::Bytes;
    /// use http::{Request, Response};
    /// use http_body_util::Full;
    /// use tower::ServiceBuilder;
    /// use traffik::{backend::InMemoryBackend, HttpThrottle, MiddlewareThrottle, ThrottleLayer};
    ///
    /// let throttle = HttpThrottle::builder().rate("5/s").build().unwrap();
    /// let service = ServiceBuilder::new()
    ///     .layer(ThrottleLayer::new(InMemoryBackend::new()).rule(MiddlewareThrottle::new(throttle)).any_body())
    ///     .service_fn(|_: Request<Full<Bytes>>| async {
    ///         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hello"))))
    ///     });
    /// # drop(service);
    /// ```
    pub fn any_body(self) -> ThrottleLayer<AnyBody> {
        ThrottleLayer {
            config: self.config,
            mode: PhantomData,
        }
    }

    /// Adds a rule (evaluated after the ones already added).
    pub fn rule(mut self, rule: MiddlewareThrottle) -> Self {
        Arc::make_mut(&mut self.config).rules.push(rule);
        self
    }

    /// Adds rules in order.
    pub fn rules(mut self, rules: impl IntoIterator<Item = MiddlewareThrottle>) -> Self {
        Arc::make_mut(&mut self.config).rules.extend(rules);
        self
    }

    /// The response for throttled requests whose throttle has no
    /// `on_throttled` of its own.
    pub fn on_throttled<F, B>(mut self, f: F) -> Self
    where
        F: Fn(&Throttled) -> Response<B> + Send + Sync + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Arc::make_mut(&mut self.config).on_throttled = Some(responder(f));
        self
    }
}

impl HttpThrottle {
    /// A layer applying this throttle to every request of the service it
    /// wraps — per route with Axum's `route_layer` (FastAPI's
    /// `Depends(throttle)`). Without a backend of its own the throttle uses
    /// the innermost [`backend::scope`](crate::backend::scope); with none,
    /// requests get a 500 naming the fix.
    ///
    /// ```
    /// # #[cfg(feature = "axum")] {
    /// use axum::{routing::get, Router};
    /// use traffik::{backend::InMemoryBackend, HttpThrottle};
    ///
    /// let throttle = HttpThrottle::builder()
    ///     .rate("5/10s")
    ///     .backend(InMemoryBackend::new())
    ///     .build()
    ///     .unwrap();
    /// let app: Router = Router::new()
    ///     .route("/hello", get(|| async { "hello" }).route_layer(throttle.layer()));
    /// # }
    /// ```
    pub fn layer(&self) -> ThrottleLayer {
        ThrottleLayer::scoped().rule(MiddlewareThrottle::new(self.clone()))
    }
}

impl<S, M> Layer<S> for ThrottleLayer<M> {
    type Service = ThrottleService<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        ThrottleService {
            inner,
            config: Arc::clone(&self.config),
            mode: PhantomData,
        }
    }
}

/// The service of [`ThrottleLayer`]. `M` is its [body mode](crate::body).
///
/// A request whose check takes time (a hook, a backend that answers later,
/// [`Exceeded::Wait`](crate::Exceeded::Wait)) holds the inner service that
/// `poll_ready` made ready until its check ends, as any Tower middleware
/// that awaits before calling does. Behind a concurrency limit inside the
/// throttle, waiting requests hold its permits: put such limits outside
/// (before) the throttle. An axum `Router` is always ready.
pub struct ThrottleService<S, M = InnerBody> {
    inner: S,
    config: Arc<LayerConfig>,
    mode: PhantomData<fn() -> M>,
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

/// What the rules decided.
struct Outcome {
    infos: Vec<RateLimitInfo>,
    error: Option<Error>,
}

#[inline]
fn record(infos: &mut Vec<RateLimitInfo>, verdict: Verdict) {
    if let Some(info) = verdict.info {
        infos.push(*info);
    }
}

impl LayerConfig {
    /// Runs the rules in order, synchronously, recording header infos.
    /// `Ok(None)`: every matching rule allowed the request; `Ok(Some(error))`:
    /// one refused it; `Err((index, pending))`: continue asynchronously at
    /// rule `index` (a hook to await), after awaiting `pending` (the check of
    /// rule `index - 1` that a backend answers later), if any.
    fn run_sync(
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
                .check(request, self.backend.as_ref(), Mode::Hit)
            {
                Check::Ready(Ok(verdict)) => record(infos, verdict),
                Check::Ready(Err(error)) => return Ok(Some(error)),
                Check::Pending(pending) => return Err((index + 1, Some(pending))),
            }
        }
        Ok(None)
    }

    async fn run_async(
        self: Arc<Self>,
        parts: Parts,
        start: usize,
        pending: Option<PendingCheck>,
        mut infos: Vec<RateLimitInfo>,
    ) -> (Parts, Outcome) {
        if let Some(pending) = pending {
            match pending.await {
                Ok(verdict) => record(&mut infos, verdict),
                Err(error) => {
                    let error = Some(error);
                    return (parts, Outcome { infos, error });
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
            let check = rule
                .throttle
                .inner
                .check(&parts, self.backend.as_ref(), Mode::Hit);
            match check.wait().await {
                Ok(verdict) => record(&mut infos, verdict),
                Err(error) => {
                    let error = Some(error);
                    return (parts, Outcome { infos, error });
                }
            }
        }
        (parts, Outcome { infos, error: None })
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
    fn reject(&self, error: &Error) -> Response<BoxBody> {
        match error {
            Error::Configuration(_) | Error::AnonymousConnection => {
                tracing::error!(error = %crate::error::Chain(error), "traffik cannot throttle this request")
            }
            _ => {}
        }
        error_response(error, self.on_throttled.as_ref())
    }
}

pin_project! {
    /// Response future of [`ThrottleService`].
    pub struct ResponseFuture<S, ReqBody, M = InnerBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
        infos: Vec<RateLimitInfo>,
        mode: PhantomData<fn() -> M>,
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
struct Checking<S, ReqBody> {
    check: Pin<Box<dyn Future<Output = (Parts, Outcome)> + Send>>,
    body: Option<ReqBody>,
    service: Option<S>,
    config: Arc<LayerConfig>,
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
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
                    *this.infos = outcome.infos;
                    let next = match outcome.error {
                        Some(error) => State::Done {
                            response: Some(Box::new(config.reject(&error))),
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
                    for info in this.infos.iter() {
                        info.apply(response.headers_mut());
                    }
                    return Poll::Ready(Ok(response.map(M::inner)));
                }
                StateProj::Done { response } => {
                    let mut response = *response.take().expect("polled after completion");
                    for info in this.infos.iter() {
                        info.apply(response.headers_mut());
                    }
                    return Poll::Ready(Ok(response.map(M::made)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{normalized, path_matches};
    use regex::Regex;

    #[test]
    fn paths_are_normalized() {
        for (raw, seen) in [
            ("//files/secret.txt", Some("/files/secret.txt")),
            ("/files/./secret.txt", Some("/files/secret.txt")),
            ("/x/../files/secret.txt", Some("/files/secret.txt")),
            ("/api//", Some("/api/")),
            ("/..", Some("/")),
            ("/api/items", None),
            ("/", None),
        ] {
            assert_eq!(normalized(raw).as_deref(), seen, "{raw}");
        }
    }

    /// A rule counts a path as sent, decoded, or decoded and normalized.
    #[test]
    fn rules_match_any_form_of_the_path() {
        let api = Regex::new("/api/").unwrap();
        let admin = Regex::new("/users/admin/login").unwrap();
        let one_segment = Regex::new("/files/[^/]+$").unwrap();
        for (regex, path) in [
            // As sent: the router routes these to /api/{id} or /files/{name}.
            (&api, "/api/.."),
            (&api, "/api/%2e%2e"),
            (&api, "/api/x/.."),
            (&api, "/api/..%2Fsecret"),
            (&api, "/api/x%2F..%2F..%2Fpublic"),
            (&api, "/api/."),
            (&one_segment, "/files/a%2Fb"),
            // Decoded, or decoded and normalized.
            (&admin, "/users/%61dmin/login"),
            (&admin, "/users/%61%64min/login"),
            (&admin, "//users/./admin/login"),
            (&admin, "/x/../users/admin/login"),
        ] {
            assert!(path_matches(regex, path), "{} on {path}", regex.as_str());
        }
        for (regex, path) in [
            (&api, "/v1/api/x"),
            (&admin, "/users/bob/login"),
            (&api, "/ap%69"),
        ] {
            assert!(!path_matches(regex, path), "{} on {path}", regex.as_str());
        }
    }
}
