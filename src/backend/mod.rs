//! Where counters live: the [`ThrottleBackend`] trait, the
//! [`InMemoryBackend`], the `RedisBackend` (feature `redis`) and the
//! dynamic-backend [`scope`].
//!
//! A backend stores the [`State`](crate::strategy::State)s of each [`Key`]
//! and decides each request atomically, in one call, for every rate of the
//! throttle at once: the in-memory backend under a shard lock, Redis in one
//! Lua script. A custom backend implements the trait and can reuse the pure
//! strategy functions ([`strategy::decide`](crate::strategy::decide)).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::key::Key;
use crate::strategy::Decisions;
use crate::{Error, Quota};

mod memory;
#[cfg(feature = "redis")]
mod redis;
mod scope;
mod uids;

pub use crate::strategy::Op;
pub use memory::{InMemoryBackend, InMemoryBackendBuilder};
#[cfg(feature = "redis")]
pub use redis::{RedisBackend, RedisBackendBuilder};
pub use scope::{current, scope, BackendScope, BackendScopeLayer, BackendScopeService};
pub(crate) use uids::UidLease;
pub use uids::Uids;

/// A boxed, `Send`, `'static` future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Storage for throttle counters.
///
/// One method decides: [`decide`](ThrottleBackend::decide) gets the key, the
/// throttle's rates ([`Quota`]s, one or more) and the hit's cost, and does
/// what its [`Op`] says: count a hit on every rate or, if one refuses it, on
/// none ([`Op::Hit`]), only look ([`Op::Peek`]), or give a hit back
/// ([`Op::Refund`]). It must do so atomically (exact under concurrency).
///
/// It should answer within a bounded time: traffik puts no deadline of its
/// own on a custom backend's futures, so a store that can stall should
/// bound its calls (e.g. with `tokio::time::timeout`) and answer
/// [`Error::backend`](crate::Error::backend) on timeout, which the
/// throttle's [`FailureMode`](crate::FailureMode) then handles. The trait is
/// object safe: the throttles hold backends as `Arc<dyn ThrottleBackend>`.
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::{Arc, Mutex};
/// use std::time::Instant;
/// use traffik::backend::{BackendFuture, BoxFuture, Op, ThrottleBackend};
/// use traffik::key::Key;
/// use traffik::strategy::{self, State};
/// use traffik::{Error, Quota};
///
/// /// A minimal backend: one mutex-protected map of key texts.
/// #[derive(Clone)]
/// struct MapBackend { start: Instant, map: Arc<Mutex<HashMap<String, Vec<State>>>> }
///
/// impl ThrottleBackend for MapBackend {
///     fn prefix(&self) -> &str { "map" }
///     fn decide(&self, key: &Key<'_>, quotas: &[Quota], cost: u64, op: Op) -> BackendFuture {
///         let mut map = self.map.lock().unwrap();
///         let states = map.entry(key.text(self.prefix())).or_default();
///         states.resize(quotas.len(), State::new());
///         let now = self.start.elapsed();
///         BackendFuture::ready(Ok(strategy::decide(quotas, states, now, cost, op)))
///     }
///     fn reset(&self) -> BoxFuture<Result<(), Error>> {
///         self.map.lock().unwrap().clear();
///         Box::pin(async { Ok(()) })
///     }
/// }
/// ```
pub trait ThrottleBackend: Send + Sync + 'static {
    /// The namespace of this backend's keys (the start of their text).
    fn prefix(&self) -> &str;

    /// Decides `op` for a hit of `cost` (at least 1) on `key`, for every
    /// rate of `quotas` (at least one) at once: see [`Op`] and
    /// [`strategy::decide`](crate::strategy::decide), whose meaning every
    /// backend shares.
    fn decide(&self, key: &Key<'_>, quotas: &[Quota], cost: u64, op: Op) -> BackendFuture;

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
    /// [`close`](ThrottleBackend::close). A persistent backend refuses
    /// throttles without an explicit `.uid(..)`: a generated uid shifts
    /// when throttles are added, which would move their counters.
    fn persistent(&self) -> bool {
        false
    }

    /// Whether this backend can decide `quota`. A throttle's `build()` asks
    /// its own backend (`.backend(..)`) for a static rate, so that a quota
    /// the backend cannot hold fails at startup with
    /// [`Error::Configuration`] rather than on every hit. The default
    /// accepts every quota; a backend that refuses some should still refuse
    /// them in [`decide`](ThrottleBackend::decide) too (a layer's or a
    /// scope's backend is only known then).
    fn check_quota(&self, quota: &Quota) -> Result<(), Error> {
        let _ = quota;
        Ok(())
    }

    /// Takes one of `max` places of `key` for the request in progress
    /// identified by `place` (an id the throttle made, unique among the
    /// requests that may hold places), for an in-flight limit
    /// (`.max_in_flight(n)`): allowed when a place was free. On a backend
    /// whose places expire ([`places_expire`](ThrottleBackend::places_expire)),
    /// the place lasts `lease` unless renewed. The default refuses: a
    /// custom backend holds no places unless it implements this,
    /// [`release`](ThrottleBackend::release) and, if its places expire,
    /// [`renew`](ThrottleBackend::renew).
    fn acquire(&self, key: &Key<'_>, place: u64, max: u64, lease: Duration) -> BackendFuture {
        let _ = (key, place, max, lease);
        BackendFuture::ready(Err(Error::configuration(
            "this backend holds no in-flight places: implement ThrottleBackend::acquire and \
             release, or use the in-memory or Redis backend for .max_in_flight(..)",
        )))
    }

    /// Gives back the place `place` took on `key`.
    fn release(&self, key: &Key<'_>, place: u64) -> BackendFuture<()> {
        let _ = (key, place);
        BackendFuture::ready(Ok(()))
    }

    /// Extends the lease of the place `place` holds on `key` to `lease`
    /// from now (backends whose places expire).
    fn renew(&self, key: &Key<'_>, place: u64, lease: Duration) -> BackendFuture<()> {
        let _ = (key, place, lease);
        BackendFuture::ready(Ok(()))
    }

    /// Whether places expire unless renewed (a store shared by app
    /// instances, where an instance that crashes must not keep its places):
    /// held places are then renewed in the background. Default `false`.
    fn places_expire(&self) -> bool {
        false
    }

    /// A short name of the backend's kind (`memory`, `redis`; default
    /// `custom`): the `backend` label of the `traffik_backend_seconds`
    /// metric (feature `metrics`).
    fn kind(&self) -> &'static str {
        "custom"
    }

    /// The uids of the live throttles counting on this backend, which keep
    /// them unique: two throttles with one uid on one backend would share
    /// counters, so the second is refused. A backend whose clones share
    /// their state keeps one [`Uids`] there (the in-memory and Redis
    /// backends do); a wrapper returns its inner backend's. The default,
    /// `None`, checks nothing.
    fn uids(&self) -> Option<&Uids> {
        None
    }
}

impl<B: ThrottleBackend + ?Sized> ThrottleBackend for Arc<B> {
    fn prefix(&self) -> &str {
        (**self).prefix()
    }
    fn decide(&self, key: &Key<'_>, quotas: &[Quota], cost: u64, op: Op) -> BackendFuture {
        (**self).decide(key, quotas, cost, op)
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
    fn acquire(&self, key: &Key<'_>, place: u64, max: u64, lease: Duration) -> BackendFuture {
        (**self).acquire(key, place, max, lease)
    }
    fn release(&self, key: &Key<'_>, place: u64) -> BackendFuture<()> {
        (**self).release(key, place)
    }
    fn renew(&self, key: &Key<'_>, place: u64, lease: Duration) -> BackendFuture<()> {
        (**self).renew(key, place, lease)
    }
    fn places_expire(&self) -> bool {
        (**self).places_expire()
    }
    fn kind(&self) -> &'static str {
        (**self).kind()
    }
    fn uids(&self) -> Option<&Uids> {
        (**self).uids()
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
pub struct BackendFuture<T = Decisions> {
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

/// The answer to a request for an in-flight place, at `at` microseconds:
/// taken (`remaining` of `max` places left) or refused, told to retry in a
/// second (`Retry-After: 1`): a place frees when a request ends, which no
/// clock foretells.
pub(crate) fn place_decision(at: u64, taken: bool, max: u64, remaining: u64) -> Decisions {
    let decision = crate::Decision {
        allowed: taken,
        limit: max,
        remaining,
        reset_after: Duration::ZERO,
        retry_after: if taken {
            Duration::ZERO
        } else {
            Duration::from_secs(1)
        },
    };
    Decisions::one(Duration::from_micros(at), decision)
}
