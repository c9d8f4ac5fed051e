//! [`ThrottleLayer`]: Tower middleware that runs an ordered list of
//! [`MiddlewareThrottle`] rules before the inner service. The layer is
//! here; its [`rule`]s, [`service`], response [`future`] and [`body`]
//! types each have their module.

use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http_body::Body;
use tower_layer::Layer;

use crate::backend::{DynBackend, IntoBackend, UidLease};
use crate::pipeline::BackendChoice;
use crate::response::{error_responder, responder, ErrorResponder, ThrottledResponder};
use crate::throttle::builder::register_uid;
use crate::{BoxError, Error, HttpThrottle, Throttled};

pub mod body;
pub(crate) mod future;
pub(crate) mod rule;
pub(crate) mod service;

use body::{AnyBody, InnerBody};
pub use future::ResponseFuture;
pub use rule::MiddlewareThrottle;
pub use service::ThrottleService;

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

/// What a layer and its services share.
#[derive(Clone, Default)]
pub(crate) struct LayerConfig {
    pub(crate) backend: Option<DynBackend>,
    pub(crate) rules: Vec<MiddlewareThrottle>,
    pub(crate) on_throttled: Option<ThrottledResponder>,
    pub(crate) on_error: Option<ErrorResponder>,
    /// The uids of the rules' throttles that count on the layer's backend,
    /// registered there while the layer lives.
    uid_leases: Vec<UidLease>,
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
    /// responses then use [`ResponseBody<B>`](crate::body::ResponseBody), which
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
    ///
    /// # Panics
    ///
    /// When the rule's throttle has no backend of its own and cannot count
    /// on the layer's: another live throttle already counts under its uid
    /// there, or its uid was generated and the backend is persistent (the
    /// message names the fix). Like an invalid route in axum's router, this
    /// is a mistake in the app's setup, found when the app is built.
    #[track_caller]
    pub fn rule(mut self, rule: MiddlewareThrottle) -> Self {
        let config = Arc::make_mut(&mut self.config);
        let core = &rule.throttle.inner.core;
        if let (Some(backend), BackendChoice::Inherit) = (&config.backend, &core.backend) {
            match register_uid(backend, &core.uid, core.id, core.generated_uid) {
                Ok(lease) => config.uid_leases.extend(lease),
                Err(error) => panic!("ThrottleLayer::rule: {error}"),
            }
        }
        config.rules.push(rule);
        self
    }

    /// Adds rules in order (see [`rule`](Self::rule)).
    #[track_caller]
    pub fn rules(self, rules: impl IntoIterator<Item = MiddlewareThrottle>) -> Self {
        rules.into_iter().fold(self, Self::rule)
    }

    /// The response for throttled requests of this layer's rules whose
    /// throttle has no `on_throttled` of its own. It does not reach
    /// throttles applied elsewhere (a throttle's own `.layer()` in a
    /// `route_layer` is another layer): give those their `.on_throttled(..)`.
    pub fn on_throttled<F, B>(mut self, f: F) -> Self
    where
        F: Fn(&Throttled) -> Response<B> + Send + Sync + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Arc::make_mut(&mut self.config).on_throttled = Some(responder(f));
        self
    }

    /// The response for the other errors of rules whose throttle has no
    /// `on_error` of its own: a configuration error, an anonymous
    /// connection (500s), a backend failure under `FailureMode::Closed`
    /// (503). `Cache-Control: no-store` is set, and `Retry-After: 1` on a
    /// backend failure's answer that lacks one.
    ///
    /// ```
    /// use http::{Response, StatusCode};
    /// use traffik::{backend::InMemoryBackend, Error, ThrottleLayer};
    /// let layer = ThrottleLayer::new(InMemoryBackend::new()).on_error(|error: &Error| {
    ///     let status = match error {
    ///         Error::Backend(_) => StatusCode::SERVICE_UNAVAILABLE,
    ///         _ => StatusCode::INTERNAL_SERVER_ERROR,
    ///     };
    ///     let mut response = Response::new(String::from("please try again later"));
    ///     *response.status_mut() = status;
    ///     response
    /// });
    /// # drop(layer);
    /// ```
    pub fn on_error<F, B>(mut self, f: F) -> Self
    where
        F: Fn(&Error) -> Response<B> + Send + Sync + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Arc::make_mut(&mut self.config).on_error = Some(error_responder(f));
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
