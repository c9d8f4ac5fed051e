//! Where counters live: the [`ThrottleBackend`] trait, the
//! [`InMemoryBackend`], the `RedisBackend` (feature `redis`) and the
//! dynamic-backend [`scope`].
//!
//! A backend stores one [`State`](crate::strategy::State) per key and decides
//! each hit atomically, in one call: the in-memory backend under a shard lock,
//! Redis in one Lua script. A custom backend implements the trait and can reuse
//! the pure strategy functions ([`Quota::decide`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::{Decision, Error, Quota};

mod memory;
#[cfg(feature = "redis")]
mod redis;
mod scope;

pub use memory::{InMemoryBackend, InMemoryBackendBuilder};
#[cfg(feature = "redis")]
pub use redis::{RedisBackend, RedisBackendBuilder};
pub use scope::{current, scope, BackendScope, BackendScopeLayer, BackendScopeService};

/// A boxed, `Send`, `'static` future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Storage for throttle counters.
///
/// Implementations must decide each hit atomically (exact under concurrency)
/// and should answer within a bounded time: traffik puts no deadline of its
/// own on a custom backend's futures, so a store that can stall should bound
/// its calls (e.g. with `tokio::time::timeout`) and answer
/// [`Error::backend`](crate::Error::backend) on timeout, which the
/// throttle's [`FailureMode`](crate::FailureMode) then handles. The trait is
/// object safe: the throttles hold backends as `Arc<dyn ThrottleBackend>`.
///
/// Keys passed to [`hit`](ThrottleBackend::hit) already start with
/// [`prefix`](ThrottleBackend::prefix): `{prefix}:{uid}:{identity}:{scope}`.
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::{Arc, Mutex};
/// use std::time::Instant;
/// use traffik::backend::{BackendFuture, BoxFuture, ThrottleBackend};
/// use traffik::{strategy::State, Error, Quota};
///
/// /// A minimal backend: one mutex-protected map.
/// #[derive(Clone)]
/// struct MapBackend { start: Instant, map: Arc<Mutex<HashMap<String, State>>> }
///
/// impl ThrottleBackend for MapBackend {
///     fn prefix(&self) -> &str { "map" }
///     fn hit(&self, key: &str, quota: &Quota, cost: u64) -> BackendFuture {
///         let mut map = self.map.lock().unwrap();
///         let state = map.entry(key.to_owned()).or_default();
///         BackendFuture::ready(Ok(quota.decide(state, self.start.elapsed(), cost)))
///     }
///     fn peek(&self, key: &str, quota: &Quota, cost: u64) -> BackendFuture {
///         let map = self.map.lock().unwrap();
///         let state = map.get(key).cloned().unwrap_or_default();
///         BackendFuture::ready(Ok(quota.peek(&state, self.start.elapsed(), cost)))
///     }
///     fn reset(&self) -> BoxFuture<Result<(), Error>> {
///         self.map.lock().unwrap().clear();
///         Box::pin(async { Ok(()) })
///     }
/// }
/// ```
pub trait ThrottleBackend: Send + Sync + 'static {
    /// The namespace every key of this backend starts with.
    fn prefix(&self) -> &str;

    /// Decides a hit of `cost` (≥ 1) on `key` and records it.
    fn hit(&self, key: &str, quota: &Quota, cost: u64) -> BackendFuture;

    /// Decides a hit of `cost` on `key` without recording anything.
    fn peek(&self, key: &str, quota: &Quota, cost: u64) -> BackendFuture;

    /// Removes every key of this backend's prefix.
    fn reset(&self) -> BoxFuture<Result<(), Error>>;

    /// Prepares the backend; a non-persistent backend clears its keys.
    fn initialize(&self) -> BoxFuture<Result<(), Error>> {
        if self.persistent() {
            Box::pin(async { Ok(()) })
        } else {
            self.reset()
        }
    }

    /// Shuts the backend down; a non-persistent backend clears its keys.
    fn close(&self) -> BoxFuture<Result<(), Error>> {
        if self.persistent() {
            Box::pin(async { Ok(()) })
        } else {
            self.reset()
        }
    }

    /// Whether keys outlive [`initialize`](ThrottleBackend::initialize) and
    /// [`close`](ThrottleBackend::close).
    fn persistent(&self) -> bool {
        false
    }

    /// Whether this backend can decide `quota`. A throttle's `build()` asks
    /// its own backend (`.backend(..)`) for a static rate, so that a quota
    /// the backend cannot hold fails at startup with
    /// [`Error::Configuration`] rather than on every hit. The default
    /// accepts every quota; a backend that refuses some should still refuse
    /// them in [`hit`](ThrottleBackend::hit) too (a layer's or a scope's
    /// backend is only known then).
    fn check_quota(&self, quota: &Quota) -> Result<(), Error> {
        let _ = quota;
        Ok(())
    }

    /// Internal: lets throttles call the in-memory backend directly (no
    /// text key, no future). Keep the default. A wrapper that forwards it is
    /// bypassed: throttles then skip the wrapper's `hit` and `peek` for
    /// every key.
    #[doc(hidden)]
    fn as_in_memory(&self) -> Option<&InMemoryBackend> {
        None
    }
}

impl<B: ThrottleBackend + ?Sized> ThrottleBackend for Arc<B> {
    fn prefix(&self) -> &str {
        (**self).prefix()
    }
    fn hit(&self, key: &str, quota: &Quota, cost: u64) -> BackendFuture {
        (**self).hit(key, quota, cost)
    }
    fn peek(&self, key: &str, quota: &Quota, cost: u64) -> BackendFuture {
        (**self).peek(key, quota, cost)
    }
    fn reset(&self) -> BoxFuture<Result<(), Error>> {
        (**self).reset()
    }
    fn initialize(&self) -> BoxFuture<Result<(), Error>> {
        (**self).initialize()
    }
    fn close(&self) -> BoxFuture<Result<(), Error>> {
        (**self).close()
    }
    fn persistent(&self) -> bool {
        (**self).persistent()
    }
    fn check_quota(&self, quota: &Quota) -> Result<(), Error> {
        (**self).check_quota(quota)
    }
    fn as_in_memory(&self) -> Option<&InMemoryBackend> {
        (**self).as_in_memory()
    }
}

/// A shared, type-erased backend.
pub type DynBackend = Arc<dyn ThrottleBackend>;

/// Anything usable as a backend (any [`ThrottleBackend`], `Arc<dyn ThrottleBackend>` included).
pub trait IntoBackend {
    /// Converts.
    fn into_backend(self) -> DynBackend;
}

impl<B: ThrottleBackend> IntoBackend for B {
    fn into_backend(self) -> DynBackend {
        Arc::new(self)
    }
}

impl<T> Unpin for BackendFuture<T> {}

/// The answer of a backend: ready at once (the in-memory backend, no
/// allocation) or a boxed future (network backends).
#[must_use = "futures do nothing unless polled"]
pub struct BackendFuture<T = Decision> {
    inner: Inner<T>,
}

enum Inner<T> {
    Ready(Option<Result<T, Error>>),
    Boxed(BoxFuture<Result<T, Error>>),
}

impl<T> BackendFuture<T> {
    /// An answer known now.
    pub fn ready(result: Result<T, Error>) -> Self {
        BackendFuture {
            inner: Inner::Ready(Some(result)),
        }
    }

    /// An answer still to come.
    pub fn new(future: impl Future<Output = Result<T, Error>> + Send + 'static) -> Self {
        BackendFuture {
            inner: Inner::Boxed(Box::pin(future)),
        }
    }

    /// The answer if it is already known, else the future back.
    pub fn into_ready(self) -> Result<Result<T, Error>, Self> {
        match self.inner {
            Inner::Ready(Some(result)) => Ok(result),
            inner => Err(BackendFuture { inner }),
        }
    }
}

impl<T> Future for BackendFuture<T> {
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().inner {
            Inner::Ready(result) => Poll::Ready(
                result
                    .take()
                    .expect("BackendFuture polled after completion"),
            ),
            Inner::Boxed(future) => future.as_mut().poll(cx),
        }
    }
}

impl<T> std::fmt::Debug for BackendFuture<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.inner {
            Inner::Ready(_) => f.write_str("BackendFuture::Ready"),
            Inner::Boxed(_) => f.write_str("BackendFuture::Pending"),
        }
    }
}
