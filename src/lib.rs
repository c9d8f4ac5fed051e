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
pub mod rate;
pub mod response;
pub mod strategy;

pub use error::{BackendError, BoxError, Error};
pub use identity::{Identity, TrustedProxies};
pub use rate::Rate;
pub use response::Throttled;
pub use strategy::{Decision, Quota, Strategy};
