//! Dynamic backends: make a backend the current one for a task, so that
//! throttles built with `.dynamic_backend()` (and layers without a backend of
//! their own) use it. Scopes nest; the innermost wins.

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

/// Runs `future` with `backend` as the current backend.
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
pub async fn scope<B: IntoBackend, F: Future>(backend: B, future: F) -> F::Output {
    CURRENT.scope(backend.into_backend(), future).await
}

/// The innermost scoped backend of the current task, if any.
pub fn current() -> Option<DynBackend> {
    CURRENT.try_with(Arc::clone).ok()
}

/// A Tower layer that picks a backend for each request and runs the rest of
/// the stack (including the inner service's `call`) inside its [`scope`].
///
/// ```
/// use traffik::backend::{BackendScopeLayer, InMemoryBackend};
///
/// let free = InMemoryBackend::builder().prefix("free").build();
/// let paid = InMemoryBackend::builder().prefix("paid").build();
/// let layer = BackendScopeLayer::new(move |parts: &http::request::Parts| {
///     if parts.headers.contains_key("x-paid") { paid.clone() } else { free.clone() }
/// });
/// # let _ = layer;
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
    /// Response future of [`BackendScopeService`]: polls the inner future
    /// inside the scope.
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
