//! Which body type [`ThrottleService`](crate::ThrottleService) answers in.
//!
//! A middleware that may answer by itself (429, 500, 503) must give its
//! responses one body type, whether the inner service answered or traffik
//! did. There are two ways, chosen by the layer's body mode:
//!
//! - [`InnerBody`] (the default): responses keep the inner service's own body
//!   type, and traffik builds its answers in it. That type must implement
//!   [`FromBoxBody`]: axum's `Body` (with the `axum` feature; what every
//!   `Router::layer`, `route_layer` and `MethodRouter::layer` wraps),
//!   http-body-util's [`UnsyncBoxBody`] and [`ResponseBody`]. Axum then
//!   passes the responses on as they are: wrapping them in another type would
//!   make it box every response again.
//! - [`AnyBody`] ([`ThrottleLayer::any_body`](crate::ThrottleLayer::any_body)):
//!   responses use [`ResponseBody<B>`], which holds either the inner body `B`
//!   or traffik's own. It works with any body (a plain Hyper service's
//!   `Full<Bytes>`, `String`, hyper's `Incoming`, tower-http's bodies).
//!
//! Layer order matters in a `ServiceBuilder`: layers listed after the
//! throttle wrap the service it sees. Behind tower-http's compression or
//! tracing layers its inner body is theirs, not axum's `Body`; list those
//! layers before the throttle (they then wrap its responses, and the
//! throttle keeps `Body`), or call `.any_body()`.
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{Layer, ServiceBuilder};
//! use traffik::body::ResponseBody;
//! use traffik::{backend::InMemoryBackend, HttpThrottle, MiddlewareThrottle, ThrottleLayer};
//!
//! let throttle = HttpThrottle::builder().rate("5/s").build().unwrap();
//! let layer = ThrottleLayer::new(InMemoryBackend::new())
//!     .rule(MiddlewareThrottle::new(throttle))
//!     .any_body(); // the inner service answers in `Full<Bytes>`
//! let service = ServiceBuilder::new().layer(layer).service_fn(|_: Request<Full<Bytes>>| async {
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hello"))))
//! });
//! # fn responds_in<S: tower::Service<Request<Full<Bytes>>, Response = Response<ResponseBody<Full<Bytes>>>>>(_: &S) {}
//! # responds_in(&service);
//! ```

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use pin_project_lite::pin_project;

use crate::response::BoxBody;
use crate::{BoxError, Permit};

/// A response body type that traffik can build its own answers (429, 500,
/// 503) in, so that a [`ThrottleLayer`](crate::ThrottleLayer) in its default
/// [`InnerBody`] mode can keep it as its responses' body type.
///
/// For any other body type, call
/// [`.any_body()`](crate::ThrottleLayer::any_body) on the layer. A type of
/// your own can implement this trait:
///
/// ```
/// use traffik::body::FromBoxBody;
/// use traffik::response::BoxBody;
///
/// struct MyBody(BoxBody);
///
/// impl FromBoxBody for MyBody {
///     fn from_box_body(body: BoxBody) -> Self {
///         MyBody(body)
///     }
/// }
/// ```
///
/// A body that cannot hold traffik's answers does not compile without
/// `.any_body()`:
///
/// ```compile_fail,E0277
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower::{Service, ServiceBuilder};
/// use traffik::{backend::InMemoryBackend, ThrottleLayer};
///
/// fn is_service<S: Service<Request<()>>>(_: S) {}
/// is_service(ServiceBuilder::new().layer(ThrottleLayer::new(InMemoryBackend::new())).service_fn(
///     |_: Request<()>| async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) },
/// ));
/// ```
#[diagnostic::on_unimplemented(
    message = "traffik cannot answer 429s in `{Self}`, the inner service's response body type",
    label = "traffik's answers cannot be built in this body type",
    note = "call `.any_body()` on the ThrottleLayer (or on `throttle.layer()`): its responses then use `traffik::body::ResponseBody<{Self}>`, which works with any body"
)]
pub trait FromBoxBody: Sized {
    /// Wraps the body of a response traffik made.
    fn from_box_body(body: BoxBody) -> Self;
}

#[cfg(feature = "axum")]
impl FromBoxBody for axum::body::Body {
    fn from_box_body(body: BoxBody) -> Self {
        axum::body::Body::new(body)
    }
}

/// tonic's server body: what `Server::builder().layer(..)` wraps, and what
/// a tonic service answers in (per service, through
/// `tonic::service::LayerExt::named_layer`).
#[cfg(feature = "tonic")]
impl FromBoxBody for tonic::body::Body {
    fn from_box_body(body: BoxBody) -> Self {
        tonic::body::Body::new(body)
    }
}

impl<E> FromBoxBody for UnsyncBoxBody<Bytes, E>
where
    E: From<BoxError> + 'static,
{
    fn from_box_body(body: BoxBody) -> Self {
        body.map_err(E::from).boxed_unsync()
    }
}

impl<B> FromBoxBody for ResponseBody<B> {
    fn from_box_body(body: BoxBody) -> Self {
        ResponseBody::traffik(body)
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::InnerBody {}
    impl Sealed for super::AnyBody {}
}

/// How a [`ThrottleService`](crate::ThrottleService) whose inner service
/// answers in `B` gives its responses one body type: [`InnerBody`] or
/// [`AnyBody`]. Sealed.
pub trait BodyMode<B>: sealed::Sealed {
    /// The body of the service's responses.
    type Body;

    /// The body of a response of the inner service.
    #[doc(hidden)]
    fn inner(body: B) -> Self::Body;

    /// The body of a response traffik made.
    #[doc(hidden)]
    fn made(body: BoxBody) -> Self::Body;

    /// The body of a response of the inner service, holding in-flight
    /// places until it has been sent in full or dropped.
    #[doc(hidden)]
    fn holding(body: B, places: Places) -> Self::Body;
}

/// The in-flight places a response body holds.
#[doc(hidden)]
pub type Places = Vec<Permit>;

pin_project! {
    /// A body that gives its in-flight places back once it has been sent in
    /// full (or failed), or when dropped.
    pub(crate) struct Holding<B> {
        #[pin]
        body: B,
        places: Option<Places>,
    }
}

impl<B: Body> Body for Holding<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.body.poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            this.places.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Body mode (the default): responses keep the inner service's body type,
/// which must implement [`FromBoxBody`] (axum's `Body` does).
#[derive(Debug, Clone, Copy, Default)]
pub struct InnerBody;

/// Body mode for any inner body `B`: responses use [`ResponseBody<B>`]. Set
/// with [`ThrottleLayer::any_body`](crate::ThrottleLayer::any_body).
#[derive(Debug, Clone, Copy, Default)]
pub struct AnyBody;

impl<B> BodyMode<B> for InnerBody
where
    B: FromBoxBody + Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Body = B;

    #[inline]
    fn inner(body: B) -> B {
        body
    }

    fn made(body: BoxBody) -> B {
        B::from_box_body(body)
    }

    fn holding(body: B, places: Places) -> B {
        B::from_box_body(body.map_err(Into::into).boxed_unsync().hold(places))
    }
}

/// A boxed body that holds places.
trait Hold {
    fn hold(self, places: Places) -> BoxBody;
}

impl Hold for BoxBody {
    fn hold(self, places: Places) -> BoxBody {
        Holding {
            body: self,
            places: Some(places),
        }
        .boxed_unsync()
    }
}

impl<B> BodyMode<B> for AnyBody
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Body = ResponseBody<B>;

    #[inline]
    fn inner(body: B) -> ResponseBody<B> {
        ResponseBody::new(body)
    }

    fn made(body: BoxBody) -> ResponseBody<B> {
        ResponseBody::traffik(body)
    }

    fn holding(body: B, places: Places) -> ResponseBody<B> {
        ResponseBody {
            kind: BodyKind::Holding {
                body: Holding {
                    body,
                    places: Some(places),
                },
            },
        }
    }
}

pin_project! {
    /// Body of [`ThrottleService`](crate::ThrottleService) responses in [`AnyBody`] mode: the inner service's body, or the
    /// body of a response traffik made (429, 500, 503).
    pub struct ResponseBody<B> {
        #[pin]
        kind: BodyKind<B>,
    }
}

pin_project! {
    #[project = BodyKindProj]
    enum BodyKind<B> {
        Inner {
            #[pin]
            body: B,
        },
        Traffik {
            #[pin]
            body: BoxBody,
        },
        Holding {
            #[pin]
            body: Holding<B>,
        },
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            BodyKind::Inner { body }
            | BodyKind::Holding {
                body: Holding { body, .. },
            } => f.debug_tuple("ResponseBody::Inner").field(body).finish(),
            BodyKind::Traffik { .. } => f.write_str("ResponseBody::Traffik(..)"),
        }
    }
}

impl<B> ResponseBody<B> {
    /// Wraps a body of the inner service.
    pub fn new(body: B) -> Self {
        ResponseBody {
            kind: BodyKind::Inner { body },
        }
    }

    fn traffik(body: BoxBody) -> Self {
        ResponseBody {
            kind: BodyKind::Traffik { body },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            BodyKindProj::Inner { body } => body.poll_frame(cx).map_err(Into::into),
            BodyKindProj::Traffik { body } => body.poll_frame(cx),
            BodyKindProj::Holding { body } => body.poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Inner { body } => body.is_end_stream(),
            BodyKind::Traffik { body } => body.is_end_stream(),
            BodyKind::Holding { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Inner { body } => body.size_hint(),
            BodyKind::Traffik { body } => body.size_hint(),
            BodyKind::Holding { body } => body.size_hint(),
        }
    }
}
