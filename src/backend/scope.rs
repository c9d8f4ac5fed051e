//! Dynamic backends: make a backend the current one for a task, so that
//! throttles built with `.dynamic_backend()` (and layers without a backend of
//! their own) use it. Scopes nest; the innermost wins.
//!
//! The scope is a Tokio task-local value:
//!
//! * **Per request**: [`BackendScopeLayer`] picks a backend from the request
//!   (a tenant header, a token, a host name) and runs everything inside it
//!   in the scope — the `call` of the inner services and their response
//!   futures, so [`ThrottleLayer::scoped()`](crate::ThrottleLayer::scoped),
//!   per-route `throttle.layer()`s and `throttle.hit(&req)` in handlers all
//!   see it. With Axum, add the scope layer *after* (outside) the throttle
//!   layers: `.layer(throttle_layer).layer(BackendScopeLayer::new(..))`.
//! * **In code**: [`scope`] runs a future in the scope.
//! * A throttle looks the scope up when `hit`/`peek` is called and, if there
//!   is none then, again when its future is first polled: both
//!   `scope(backend, async { throttle.hit(&req).await })` and
//!   `scope(backend, throttle.hit(&req))` work. A scope present at call time
//!   wins.
//! * `tokio::spawn`ed tasks start outside any scope. Carry it over with
//!   `tokio::spawn(scope(current().unwrap(), future))`.
//! * A throttle built with `.dynamic_backend()` that finds no scope fails
//!   with [`Error::Configuration`](crate::Error::Configuration) (a 500 from
//!   a layer) whose message names this module's fixes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::request::Parts;
use http::Request;
use tower_layer::Layer;
use tower_service::Service;

use super::{DynBackend, IntoBackend};

tokio::task_local! {
    static CURRENT: DynBackend;
}

/// Runs `future` with `backend` as the current backend (the innermost scope
/// while it runs).
///
/// `backend` is taken by value, like `.backend(..)`: pass a clone
/// (`InMemoryBackend` and the other backends are cheap to clone and clones
/// share state) or an `Arc<dyn ThrottleBackend>`. For a backend per request,
/// use [`BackendScopeLayer`].
///
/// * A throttle looks the scope up when `hit`/`peek` is called, and if
///   there is none then, when its future is first polled: both
///   `scope(backend, async { throttle.hit(&req).await })` and
///   `scope(backend, throttle.hit(&req))` work.
/// * The scope is a Tokio task-local: `tokio::spawn`ed tasks start outside
///   any scope. Carry it over with `tokio::spawn(scope(current().unwrap(), future))`.
/// * A throttle built with `.dynamic_backend()` that finds no scope fails
///   with [`Error::Configuration`](crate::Error::Configuration) (a 500 from a
///   layer).
///
/// ```
/// use traffik::backend::{self, InMemoryBackend};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let tenant_a = InMemoryBackend::builder().prefix("tenant-a").build();
/// let prefix = backend::scope(tenant_a, async {
///     backend::current().map(|b| b.prefix().to_owned())
/// }).await;
/// assert_eq!(prefix.as_deref(), Some("tenant-a"));
/// assert!(backend::current().is_none());
/// # }
/// ```
///
/// With a throttle:
///
/// ```
/// use std::net::SocketAddr;
/// use traffik::backend::{self, InMemoryBackend};
/// use traffik::HttpThrottle;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), traffik::Error> {
/// let throttle = HttpThrottle::builder().rate("2/min").dynamic_backend().build()?;
/// let request = http::Request::builder()
///     .extension(SocketAddr::from(([127, 0, 0, 1], 9000)))
///     .body(())
///     .unwrap();
/// let tenant = InMemoryBackend::new();
/// let decision = backend::scope(tenant.clone(), async { throttle.hit(&request).await }).await?;
/// assert_eq!(decision.remaining, 1);
/// assert_eq!(tenant.len(), 1);
/// # Ok(()) }
/// ```
pub fn scope<B: IntoBackend, F: Future>(backend: B, future: F) -> BackendScope<F> {
    BackendScope {
        future: CURRENT.scope(backend.into_backend(), future),
    }
}

/// The innermost scoped backend of the current task, if any.
pub fn current() -> Option<DynBackend> {
    CURRENT.try_with(Arc::clone).ok()
}

/// A Tower layer that picks a backend for each request and runs the rest of
/// the stack (including the inner service's `call`) inside its [`scope`].
///
/// `select` gets the request head and returns the backend by value (clone
/// it out of the closure's captures). It runs for every request, on the
/// request path: keep it to a lookup (parse a header, index a map). Layers
/// nest like scopes: an inner `BackendScopeLayer` (a `route_layer`, say)
/// overrides an outer one for the requests it sees.
///
/// With Axum, the scope layer goes *outside* the throttle layers, that is
/// after them in `.layer(..)` calls:
///
/// ```
/// # #[cfg(feature = "axum")]
/// # fn main() -> Result<(), traffik::Error> {
/// use axum::{routing::get, Router};
/// use http::request::Parts;
/// use traffik::backend::{BackendScopeLayer, InMemoryBackend};
/// use traffik::{HttpThrottle, MiddlewareThrottle, ThrottleLayer};
///
/// let free = InMemoryBackend::builder().prefix("free").build();
/// let paid = InMemoryBackend::builder().prefix("paid").build();
/// let per_route = HttpThrottle::builder().rate("5/min").dynamic_backend().build()?;
/// let global = HttpThrottle::builder().rate("100/min").build()?; // no backend: the scope's
/// let app: Router = Router::new()
///     .route("/search", get(|| async { "results" }).route_layer(per_route.layer()))
///     .layer(ThrottleLayer::scoped().rule(MiddlewareThrottle::new(global)))
///     .layer(BackendScopeLayer::new(move |parts: &Parts| {
///         if parts.headers.contains_key("x-paid") { paid.clone() } else { free.clone() }
///     }));
/// # Ok(()) }
/// # #[cfg(not(feature = "axum"))] fn main() {}
/// ```
pub struct BackendScopeLayer<F> {
    select: Arc<F>,
}

impl<F> Clone for BackendScopeLayer<F> {
    fn clone(&self) -> Self {
        BackendScopeLayer {
            select: Arc::clone(&self.select),
        }
    }
}

impl<F, B> BackendScopeLayer<F>
where
    F: Fn(&Parts) -> B + Send + Sync + 'static,
    B: IntoBackend,
{
    /// A layer selecting the backend with `select`.
    pub fn new(select: F) -> Self {
        BackendScopeLayer {
            select: Arc::new(select),
        }
    }
}

impl<S, F> Layer<S> for BackendScopeLayer<F> {
    type Service = BackendScopeService<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        BackendScopeService {
            inner,
            select: Arc::clone(&self.select),
        }
    }
}

impl<F> std::fmt::Debug for BackendScopeLayer<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendScopeLayer").finish_non_exhaustive()
    }
}

/// The service of [`BackendScopeLayer`].
pub struct BackendScopeService<S, F> {
    inner: S,
    select: Arc<F>,
}

impl<S: Clone, F> Clone for BackendScopeService<S, F> {
    fn clone(&self) -> Self {
        BackendScopeService {
            inner: self.inner.clone(),
            select: Arc::clone(&self.select),
        }
    }
}

impl<S: std::fmt::Debug, F> std::fmt::Debug for BackendScopeService<S, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendScopeService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, F, B, ReqBody> Service<Request<ReqBody>> for BackendScopeService<S, F>
where
    S: Service<Request<ReqBody>>,
    F: Fn(&Parts) -> B + Send + Sync + 'static,
    B: IntoBackend,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BackendScope<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (parts, body) = request.into_parts();
        let backend = (self.select)(&parts).into_backend();
        let request = Request::from_parts(parts, body);
        let inner = &mut self.inner;
        let future = CURRENT.sync_scope(Arc::clone(&backend), || inner.call(request));
        BackendScope {
            future: CURRENT.scope(backend, future),
        }
    }
}

pin_project_lite::pin_project! {
    /// A future polled inside a backend scope: returned by [`scope`] and by
    /// [`BackendScopeService`].
    pub struct BackendScope<Fut: Future> {
        #[pin]
        future: tokio::task::futures::TaskLocalFuture<DynBackend, Fut>,
    }
}

impl<Fut: Future> Future for BackendScope<Fut> {
    type Output = Fut::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().future.poll(cx)
    }
}
