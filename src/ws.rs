//! WebSocket throttling: [`WebSocketThrottle`] counts the messages a client
//! sends through a WebSocket and acts on the ones over the limit.
//!
//! [`WebSocketThrottle::guard`] wraps a socket — anything that is a
//! `Stream<Item = Result<M, E>> + Sink<M>` whose message type `M` implements
//! [`WsMessage`]: axum's [`WebSocket`](https://docs.rs/axum/0.8/axum/extract/ws/struct.WebSocket.html) (feature
//! `axum`, default) and tokio-tungstenite's `WebSocketStream` (feature
//! `tungstenite` for 0.29, `tungstenite-0-28` for 0.28) — and returns a [`GuardedSocket`], which is a stream and a
//! sink of the same messages. Every data message (text or binary) the client
//! sends is one hit; ping, pong and close frames are never counted.
//!
//! What happens to a message over the limit follows the throttle's
//! [`Exceeded`] policy:
//!
//! | policy | the message | the client |
//! |---|---|---|
//! | [`Exceeded::Reject`] (default) | dropped: never reaches the handler | gets one notice per dropped message, `{"type":"rate_limit","error":"Too many messages","retry_after":N}` (N: whole seconds, rounded up, at least 1); the socket stays open |
//! | [`Exceeded::Close`] | dropped | gets a close frame with code 1008 (policy violation) and the reason; the guarded stream then ends |
//! | [`Exceeded::Wait`] | held until allowed, then delivered; meanwhile at most one more data message is read from the socket (backpressure), control frames pass, and a client that closes or leaves is noticed at once (the waiting message is dropped). A message that would wait longer than `max`, or while `.max_waiting(n)` messages of the throttle already wait, is treated as `Reject` | nothing |
//!
//! The handshake itself is an ordinary `GET` request: throttle it with an
//! [`HttpThrottle`](crate::HttpThrottle) rule in a
//! [`ThrottleLayer`](crate::ThrottleLayer) or a `route_layer`, like any
//! request (a refused upgrade is an HTTP 429).
//!
//! ```
//! # #[cfg(feature = "axum")] {
//! use std::net::SocketAddr;
//!
//! use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
//! use axum::extract::ConnectInfo;
//! use axum::response::Response;
//! use axum::routing::get;
//! use axum::Router;
//! use futures_util::{SinkExt, StreamExt};
//! use traffik::backend::InMemoryBackend;
//! use traffik::{Identity, WebSocketThrottle};
//!
//! let ws_t = WebSocketThrottle::builder()
//!     .limit(3)
//!     .seconds(10)
//!     .backend(InMemoryBackend::new())
//!     .build()
//!     .unwrap();
//!
//! let app: Router = Router::new().route(
//!     "/ws",
//!     get(move |upgrade: WebSocketUpgrade, ConnectInfo(addr): ConnectInfo<SocketAddr>| {
//!         let ws_t = ws_t.clone();
//!         async move {
//!             upgrade.on_upgrade(move |socket: WebSocket| async move {
//!                 // The client address, IPv6 grouped by its /64 (`Identity::client_ip`).
//!                 let mut socket = ws_t.guard(socket, Identity::client_ip(addr.ip()));
//!                 // Only messages within the limit arrive here.
//!                 while let Some(Ok(message)) = socket.next().await {
//!                     if let Message::Text(text) = message {
//!                         if socket.send(Message::Text(text)).await.is_err() {
//!                             break;
//!                         }
//!                     }
//!                 }
//!             })
//!         }
//!     }),
//! );
//! # let _: Router = app;
//! # }
//! ```

use std::fmt;
use std::sync::Arc;

use futures_util::{Sink, Stream};

use crate::key::{Key, Scope};
use crate::pipeline::{Core, Limit};
use crate::throttle::builder::HttpOnly;
use crate::throttle::ThrottleBuilder;
#[cfg(doc)]
use crate::Exceeded;
use crate::{Error, Identity, Quota, Throttled};

mod guarded;

pub use guarded::GuardedSocket;
use guarded::Target;

/// The WebSocket close code sent by [`Exceeded::Close`]: 1008, policy
/// violation.
pub const POLICY_VIOLATION: u16 = 1008;

/// The close code of a socket whose throttle is misconfigured: 1011,
/// internal error.
pub const INTERNAL_ERROR: u16 = 1011;

/// The longest close reason a close frame carries (125-byte control frame
/// payload minus the 2-byte code).
const MAX_CLOSE_REASON: usize = 123;

/// A WebSocket message type the guard can work with: it tells data messages
/// (counted) from control frames (not counted), and makes the notices and
/// close frames the guard sends.
///
/// Implemented for axum's [`Message`](https://docs.rs/axum/0.8/axum/extract/ws/enum.Message.html) (feature
/// `axum`, default) and tungstenite's `Message`, the type tokio-tungstenite's
/// `WebSocketStream` carries: feature `tungstenite` for tungstenite 0.29
/// (tokio-tungstenite 0.29, the version axum 0.8 uses), `tungstenite-0-28`
/// for 0.28. The trait is public: implement it for another message type.
///
/// ```
/// use traffik::ws::WsMessage;
/// # #[cfg(feature = "axum")] {
/// use axum::extract::ws::Message;
///
/// assert!(Message::Text("hello".into()).is_data());
/// assert!(!Message::Ping(Default::default()).is_data());
/// let close = <Message as WsMessage>::close(1008, "slow down");
/// assert!(matches!(close, Message::Close(Some(frame)) if frame.code == 1008));
/// # }
/// ```
pub trait WsMessage: Sized {
    /// `true` for the messages that count as hits: text and binary.
    fn is_data(&self) -> bool;

    /// `true` for a close frame: a client that sends one while its message
    /// waits for a decision has left, and the message is dropped. The
    /// default, `false`, keeps such messages waiting.
    fn is_close(&self) -> bool {
        false
    }

    /// A text message.
    fn text(text: String) -> Self;

    /// A close frame with `code` and `reason` (the guard keeps reasons within
    /// the 123 bytes a close frame allows).
    fn close(code: u16, reason: &str) -> Self;
}

#[cfg(feature = "axum")]
impl WsMessage for axum::extract::ws::Message {
    fn is_data(&self) -> bool {
        matches!(self, Self::Text(_) | Self::Binary(_))
    }

    fn is_close(&self) -> bool {
        matches!(self, Self::Close(_))
    }

    fn text(text: String) -> Self {
        Self::Text(text.into())
    }

    fn close(code: u16, reason: &str) -> Self {
        Self::Close(Some(axum::extract::ws::CloseFrame {
            code,
            reason: reason.into(),
        }))
    }
}

/// `WsMessage` for a version of tungstenite's `Message`, under its feature
/// (on the impl itself, so that docs.rs marks it).
macro_rules! tungstenite_message {
    ($tungstenite:ident, $feature:literal) => {
        #[cfg(feature = $feature)]
        impl WsMessage for $tungstenite::Message {
            fn is_data(&self) -> bool {
                matches!(self, Self::Text(_) | Self::Binary(_))
            }

            fn is_close(&self) -> bool {
                matches!(self, Self::Close(_))
            }

            fn text(text: String) -> Self {
                Self::Text(text.into())
            }

            fn close(code: u16, reason: &str) -> Self {
                Self::Close(Some($tungstenite::protocol::CloseFrame {
                    code: code.into(),
                    reason: reason.into(),
                }))
            }
        }
    };
}

tungstenite_message!(tungstenite, "tungstenite");
tungstenite_message!(tungstenite028, "tungstenite-0-28");

type NoticeFn = Arc<dyn Fn(&Throttled) -> String + Send + Sync>;

/// Options only WebSocket throttles have (see [`WebSocketThrottleBuilder`]).
#[derive(Clone, Default)]
pub struct WsOptions {
    context: Option<String>,
    notice: Option<NoticeFn>,
}

impl fmt::Debug for WsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsOptions")
            .field("context", &self.context)
            .field("notice", &self.notice.is_some())
            .finish()
    }
}

/// Builder of a [`WebSocketThrottle`]: the options every throttle has (see
/// [`ThrottleBuilder`]), plus [`context`](Self::context) and
/// [`notice`](Self::notice).
///
/// Options that only mean something for HTTP are not on this builder:
/// `.headers(..)` and `.on_throttled(..)` (a socket gets
/// [`notice`](Self::notice) texts, not HTTP responses), `.dynamic_rate(..)`
/// (a rate computed from `&Parts` has no request head to read once the
/// socket is open: build one throttle per tier instead and pick it in the
/// upgrade handler) and the identifier options (a socket's identity is
/// passed to [`guard`](WebSocketThrottle::guard)).
///
/// ```compile_fail,E0599
/// use traffik::{RateLimitHeaders, WebSocketThrottle};
/// let ws_t = WebSocketThrottle::builder().rate("3/s").headers(RateLimitHeaders::Ietf);
/// ```
pub type WebSocketThrottleBuilder = ThrottleBuilder<WsOptions>;

impl ThrottleBuilder<WsOptions> {
    /// The default context of every socket this throttle guards (a room, a
    /// channel...): part of the key, so different contexts count separately.
    /// [`GuardOptions::context`] overrides it per socket. Default: none.
    pub fn context(mut self, context: impl Into<String>) -> Self {
        self.kind.context = Some(context.into());
        self
    }

    /// Replaces the text message sent to the client for each dropped message
    /// (default: `{"type":"rate_limit","error":"Too many messages","retry_after":N}`).
    /// An empty text sends nothing: the message is dropped silently, and a
    /// flooding client gets no frame back per message.
    ///
    /// ```
    /// use traffik::{Throttled, WebSocketThrottle};
    ///
    /// let ws_t = WebSocketThrottle::builder()
    ///     .rate("10/s")
    ///     .notice(|t: &Throttled| format!("slow down: retry in {}s", t.retry_after_secs()))
    ///     .build()
    ///     .unwrap();
    /// # drop(ws_t);
    /// ```
    pub fn notice<F>(mut self, notice: F) -> Self
    where
        F: Fn(&Throttled) -> String + Send + Sync + 'static,
    {
        self.kind.notice = Some(Arc::new(notice));
        self
    }

    /// Builds the throttle; [`Error::Configuration`] names any bad input.
    pub fn build(self) -> Result<WebSocketThrottle, Error> {
        let (core, options) = self.build_core("ws", HttpOnly::default())?;
        let quotas = match &core.limit {
            Limit::Static(quotas) => Some(Arc::clone(quotas)),
            Limit::Unlimited | Limit::Dynamic(_) | Limit::InFlight { .. } => None,
        };
        Ok(WebSocketThrottle {
            inner: Arc::new(WsInner {
                core: Arc::new(core),
                quotas,
                context: options.context,
                notice: options.notice,
            }),
        })
    }
}

/// Throttles the messages clients send through WebSockets. Cheap to clone;
/// clones share everything.
///
/// Built like an [`HttpThrottle`](crate::HttpThrottle) (see
/// [`WebSocketThrottleBuilder`]); [`guard`](Self::guard) wraps a socket. Keys
/// are `{prefix}:{uid}:{identity}:ws:{path}:{context}`, where `identity` is
/// the one passed to `guard`, `path` the socket's path (default `/`) and
/// `context` an optional room or channel (empty when none), both set with
/// [`guard_with`](Self::guard_with) or, for the context, the builder's
/// `.context(..)`. Sockets with the same identity, path and context share one
/// counter.
/// (`%` and `:` in the uid, path and context are written `%25` and `%3A`:
/// different keys never share a text).
///
/// See the [module documentation](crate::ws) for the policies and a complete
/// axum handler.
///
/// ```
/// use traffik::{backend::InMemoryBackend, Exceeded, WebSocketThrottle};
///
/// let ws_t = WebSocketThrottle::builder()
///     .uid("chat")
///     .limit(3)
///     .seconds(10)
///     .on_exceeded(Exceeded::Close { reason: "too many messages".into() })
///     .backend(InMemoryBackend::new())
///     .build()
///     .unwrap();
/// assert_eq!(ws_t.uid(), "chat");
/// ```
#[derive(Clone)]
pub struct WebSocketThrottle {
    inner: Arc<WsInner>,
}

struct WsInner {
    core: Arc<Core>,
    /// `None` for an unlimited rate.
    quotas: Option<Arc<[Quota]>>,
    context: Option<String>,
    notice: Option<NoticeFn>,
}

impl fmt::Debug for WebSocketThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketThrottle")
            .field("uid", &self.uid())
            .field("strategy", &self.inner.core.strategy)
            .field("context", &self.inner.context)
            .finish_non_exhaustive()
    }
}

/// Where a guarded socket counts: its path and context (see
/// [`WebSocketThrottle::guard_with`]).
///
/// ```
/// use traffik::ws::GuardOptions;
///
/// let options = GuardOptions::new().path("/chat").context("room-42");
/// let same = GuardOptions { path: Some("/chat".into()), context: Some("room-42".into()) };
/// assert_eq!(options, same);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuardOptions {
    /// The socket's path in the key (default `/`). Axum handlers can pass the
    /// route (`MatchedPath`) or the request path.
    pub path: Option<String>,
    /// The context in the key (a room, a channel...); overrides the
    /// builder's `.context(..)`. Default: the builder's, else none.
    pub context: Option<String>,
}

impl GuardOptions {
    /// No path (`/`) and the throttle's default context.
    pub fn new() -> Self {
        GuardOptions::default()
    }

    /// The route of the upgrade request (axum's `MatchedPath`, else its
    /// path): sockets count per route, as HTTP requests do. Without it,
    /// [`guard`](WebSocketThrottle::guard) counts every socket of an
    /// identity under the path `/`.
    ///
    /// ```
    /// use traffik::ws::GuardOptions;
    /// let (parts, ()) = http::Request::get("/chat/42").body(()).unwrap().into_parts();
    /// assert_eq!(GuardOptions::route(&parts).path.as_deref(), Some("/chat/42"));
    /// ```
    pub fn route(parts: &http::request::Parts) -> Self {
        GuardOptions {
            path: Some(crate::throttle::route_of(&parts.extensions, &parts.uri).to_owned()),
            context: None,
        }
    }

    /// Sets the path.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Sets the context.
    pub fn context(mut self, context: impl Into<String>) -> Self {
        self.context = Some(context.into());
        self
    }
}

impl WebSocketThrottle {
    /// Starts a builder.
    pub fn builder() -> WebSocketThrottleBuilder {
        ThrottleBuilder::new(WsOptions::default())
    }

    /// The throttle's uid.
    pub fn uid(&self) -> &str {
        self.inner.core.uid()
    }

    /// Wraps `socket`: every data message received through the returned
    /// [`GuardedSocket`] is one hit for `identity`, on path `/` with the
    /// throttle's default context. [`Identity::Unlimited`] exempts the socket.
    ///
    /// The backend is resolved now: the throttle's own, else the innermost
    /// [`backend::scope`](crate::backend::scope) of the calling task. With
    /// none, it is a configuration error, as over HTTP (where it is a 500
    /// whatever the failure mode): a `tracing::error!` names the fix, and
    /// the socket is closed at its first message with code 1011 (internal
    /// error), even under [`FailureMode::Open`](crate::FailureMode::Open),
    /// which would otherwise silently turn the throttle off; in shadow mode
    /// messages are delivered. Note that axum's
    /// `on_upgrade` callback runs in a new task, outside the request's scope:
    /// read [`backend::current()`](crate::backend::current) in the handler,
    /// before `on_upgrade`, move it into the callback and call `guard` inside
    /// [`backend::scope`](crate::backend::scope) with it, or give the
    /// throttle a backend of its own.
    pub fn guard<S, M, E>(&self, socket: S, identity: impl Into<Identity>) -> GuardedSocket<S, M>
    where
        S: Stream<Item = Result<M, E>> + Sink<M>,
        M: WsMessage,
    {
        self.guard_with(socket, identity, GuardOptions::default())
    }

    /// Like [`guard`](Self::guard), with the socket's path and context.
    ///
    /// ```
    /// # #[cfg(feature = "axum")] {
    /// use axum::extract::ws::WebSocket;
    /// use traffik::ws::{GuardOptions, GuardedSocket};
    /// use traffik::WebSocketThrottle;
    ///
    /// fn guard_room(ws_t: &WebSocketThrottle, socket: WebSocket, user: String, room: &str)
    ///     -> GuardedSocket<WebSocket, axum::extract::ws::Message>
    /// {
    ///     ws_t.guard_with(socket, user, GuardOptions::new().path("/chat").context(room))
    /// }
    /// # }
    /// ```
    pub fn guard_with<S, M, E>(
        &self,
        socket: S,
        identity: impl Into<Identity>,
        options: GuardOptions,
    ) -> GuardedSocket<S, M>
    where
        S: Stream<Item = Result<M, E>> + Sink<M>,
        M: WsMessage,
    {
        GuardedSocket::new(socket, self.target(identity.into(), options))
    }

    fn target(&self, identity: Identity, options: GuardOptions) -> Target {
        let inner = &self.inner;
        let (Identity::Key(identity), Some(quotas)) = (identity, &inner.quotas) else {
            return Target::Exempt {
                throttle: Arc::clone(inner),
            };
        };
        if inner.core.cost == 0 {
            return Target::Exempt {
                throttle: Arc::clone(inner),
            };
        }
        let backend = match inner.core.resolve_backend(None) {
            Ok(backend) => backend,
            Err(_) => {
                tracing::error!(
                    throttle = self.uid(),
                    "traffik cannot throttle this WebSocket: the throttle has no backend; give it one \
                     with .backend(InMemoryBackend::new()), or call guard inside \
                     traffik::backend::scope(backend, ..) (axum's on_upgrade runs in a task of its own: \
                     read traffik::backend::current() in the handler and move it into the callback)"
                );
                return Target::Unavailable {
                    throttle: Arc::clone(inner),
                };
            }
        };
        let path = options.path.as_deref().unwrap_or("/");
        let context = options
            .context
            .as_deref()
            .or(inner.context.as_deref())
            .unwrap_or("");
        let key = Key::new(&inner.core.uid, &identity, Scope::websocket(path, context))
            .owned(&inner.core.uid);
        let text = key.as_key().text(backend.prefix());
        Target::Counted {
            throttle: Arc::clone(inner),
            backend,
            key,
            text,
            quotas: Arc::clone(quotas),
        }
    }
}
