//! # traffik
//!
//! Rate limiting ("throttling") for Tower services: Axum routers, Hyper
//! services and WebSocket message streams, with counters in memory or in
//! Redis (Redis Cluster included).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod backend;
pub mod clock;
mod error;
pub mod identity;
mod layer;
pub mod rate;
pub mod response;
pub mod strategy;
mod throttle;
pub mod ws;

pub use error::{BackendError, BoxError, Error};
pub use identity::{Identity, TrustedProxies};
pub use layer::{MiddlewareThrottle, ResponseBody, ResponseFuture, ThrottleLayer, ThrottleService};
pub use rate::Rate;
pub use response::{RateLimitHeaders, Throttled};
pub use strategy::{Decision, Quota, Strategy};
pub use throttle::{
    Exceeded, FailureMode, HttpOptions, HttpThrottle, HttpThrottleBuilder, RequestHead,
    ThrottleBuilder,
};
pub use ws::{
    GuardOptions, GuardedSocket, WebSocketThrottle, WebSocketThrottleBuilder, WsMessage, WsOptions,
};
