//! # traffik
//!
//! Rate limiting ("throttling") for Tower services: Axum routers, Hyper and
//! tonic services, and WebSocket message streams, with counters in memory
//! or in Redis (Redis Cluster and Valkey included). A Rust take on the
//! Python library Traffik. The [`guide`] walks through everything.
//!
//! ```
//! # #[cfg(feature = "axum")]
//! # fn main() -> Result<(), traffik::Error> {
//! use axum::{routing::get, Router};
//! use http::Method;
//! use traffik::backend::InMemoryBackend;
//! use traffik::{HttpThrottle, MiddlewareThrottle, ThrottleLayer};
//!
//! let memory = InMemoryBackend::new();
//!
//! // Per route: 5 requests per 10 seconds per client IP.
//! let hello = HttpThrottle::builder()
//!     .uid("hello")
//!     .limit(5)
//!     .seconds(10)
//!     .backend(memory.clone())
//!     .build()?;
//!
//! // Global rules, evaluated in order. A rule counts per client, method and
//! // route; `.shared_across_routes()` makes it one counter per client.
//! let writes = HttpThrottle::builder()
//!     .uid("writes")
//!     .rate("10/min")
//!     .shared_across_routes()
//!     .build()?;
//! let api = HttpThrottle::builder().uid("api").rate("100/min").build()?;
//! let layer = ThrottleLayer::new(memory.clone())
//!     .rule(MiddlewareThrottle::new(writes).methods([Method::POST, Method::PUT, Method::DELETE]))
//!     .rule(MiddlewareThrottle::new(api).path(r"/api/"));
//!
//! let app: Router = Router::new()
//!     .route("/hello", get(|| async { "hello" }).route_layer(hello.layer()))
//!     .route("/api/items", get(|| async { "[]" }))
//!     .layer(layer);
//! // Serve with connect info so the default identifier sees client addresses:
//! // axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
//! # let _ = app;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "axum"))] fn main() {}
//! ```
//!
//! Data flows one way, and the modules follow it:
//!
//! | step | where |
//! |---|---|
//! | rule matching: which throttles apply | [`ThrottleLayer`], [`MiddlewareThrottle`], [`body`] |
//! | the throttle and its options | [`HttpThrottle`], [`WebSocketThrottle`] and [`ws`], [`rate`] |
//! | who the request comes from | [`identity`] |
//! | the counter it reads | [`key`] |
//! | the decision: every rate at once, all or nothing | [`backend`], [`strategy`], [`clock`] |
//! | what the request keeps | [`Reservation`] (a hit to refund), [`Permit`] (an in-flight place) |
//! | the answer: pass through, or a 429 with `Retry-After` | [`response`], [`Error`] |
//! | what operators see | [`metrics`] (feature `metrics`), `tracing` events |
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backend;
pub mod clock;
mod error;
pub mod guide;
pub mod identity;
pub mod key;
mod layer;
mod line;
#[cfg_attr(not(feature = "metrics"), allow(unused))]
pub mod metrics;
mod permit;
mod pipeline;
pub mod rate;
mod reservation;
pub mod response;
pub mod strategy;
mod throttle;
pub mod ws;

/// The README's code, compiled as a doctest (its quick start is an axum app).
#[cfg(all(doctest, feature = "axum"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use error::{BackendError, BoxError, Error};
pub use identity::{Identity, TrustedProxies};
pub use layer::body;
pub use layer::{MiddlewareThrottle, ResponseFuture, ThrottleLayer, ThrottleService};
pub use permit::Permit;
pub use pipeline::{Exceeded, FailureMode};
pub use rate::Rate;
pub use reservation::Reservation;
pub use response::{RateLimitHeaders, RateLimitReport, Throttled};
pub use strategy::{Decision, Quota, Strategy};
pub use throttle::{HttpOptions, HttpThrottle, HttpThrottleBuilder, ThrottleBuilder};
pub use ws::{WebSocketThrottle, WebSocketThrottleBuilder};
