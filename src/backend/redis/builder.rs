//! [`RedisBackendBuilder`]: the backend's settings, their defaults, and
//! `build()`, which checks them, connects and initializes the backend.

use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::breaker::Breaker;
use super::connection::{Current, Opener, Target};
use super::deny_cache::DenyCache;
use super::{RedisBackend, Shared};
use crate::backend::Uids;
use crate::Error;

/// Default key prefix.
const DEFAULT_PREFIX: &str = "traffik";
/// Default bound on every command (and on each command of a reset).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default bound on establishing the connection.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default pause of the circuit breaker: how long hits fail at once after
/// Redis could not be reached.
const DEFAULT_BREAKER_PAUSE: Duration = Duration::from_millis(500);
/// Default number of denied keys the local deny cache remembers.
const DEFAULT_DENY_CACHE_CAPACITY: usize = 10_000;

/// Builder for [`RedisBackend`], from [`RedisBackend::builder`],
/// [`RedisBackend::cluster_builder`] or [`RedisBackend::builder_with_client`].
///
/// ```no_run
/// use std::time::Duration;
/// use traffik::backend::RedisBackend;
///
/// # async fn run() -> Result<(), traffik::Error> {
/// let redis = RedisBackend::builder("redis://127.0.0.1:6379/0")
///     .prefix("myapp")
///     .persistent(false)                     // clear myapp:* on start and close
///     .timeout(Duration::from_millis(250))   // every command
///     .connect_timeout(Duration::from_secs(2))
///     .deny_cache(true)
///     .build()
///     .await?;
/// # let _ = redis; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBackendBuilder {
    target: Target,
    prefix: String,
    persistent: bool,
    timeout: Duration,
    connect_timeout: Duration,
    /// `None`: the default, which depends on the target.
    circuit_breaker: Option<Duration>,
    deny_cache: bool,
    deny_cache_capacity: usize,
}

impl fmt::Debug for RedisBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackendBuilder")
            .field("prefix", &self.prefix)
            .field("persistent", &self.persistent)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("circuit_breaker", &self.circuit_breaker)
            .field("deny_cache", &self.deny_cache)
            .finish_non_exhaustive()
    }
}

impl RedisBackendBuilder {
    pub(super) fn new(target: Target) -> Self {
        RedisBackendBuilder {
            target,
            prefix: DEFAULT_PREFIX.to_owned(),
            persistent: true,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            circuit_breaker: None,
            deny_cache: false,
            deny_cache_capacity: DEFAULT_DENY_CACHE_CAPACITY,
        }
    }

    /// The key prefix (default `"traffik"`); not empty, without `{` or `}`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Keep keys across `initialize()`/`close()` (default `true`).
    pub fn persistent(mut self, persistent: bool) -> Self {
        self.persistent = persistent;
        self
    }

    /// The bound on every command, a decision's round trip included
    /// (default 1 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The bound on connecting in [`build`](RedisBackendBuilder::build)
    /// (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long hits fail at once after Redis could not be reached (a
    /// timeout or a refused connection; not a single lost connection, which
    /// the client reopens at once), default 500 ms (off on a
    /// cluster, see below): the
    /// throttle's [`FailureMode`](crate::FailureMode) then answers at once
    /// (`Open` lets the request through, `Closed` answers 503) instead of
    /// every request waiting for the timeout while Redis is down. After the
    /// pause one hit tests the connection (the others still fail at once
    /// until it ends); when it gets through, hits go to Redis again, else a
    /// new pause starts. `Duration::ZERO` sends every hit to Redis.
    ///
    /// On a Redis Cluster one breaker covers every node, so one master's
    /// failure would make hits on the healthy ones fail too: it is off there
    /// unless set. A cluster connection fails fast per node instead: a
    /// master whose connection breaks, or that does not answer a `PING`
    /// after a hit timed out, fails the hits on its own slots at once,
    /// without a round trip, until it answers again or a replica has taken
    /// its slots over (the slot map is read again meanwhile); hits on the
    /// other masters' slots are not affected.
    ///
    /// The breaker warns once when it opens, and its refusals are
    /// [known outages](crate::BackendError::known_outage), which throttles
    /// log at DEBUG. Whatever this setting, a connection on which a command
    /// times out is replaced by a new one in the background: the client
    /// reconnects by itself after a refused or closed connection, but not
    /// when one stays open and silent (a dead proxy or NAT entry). Only this
    /// backend's timeout sees such a connection: keep it below any timeout
    /// around the request.
    pub fn circuit_breaker(mut self, pause: Duration) -> Self {
        self.circuit_breaker = Some(pause);
        self
    }

    /// Answer denied keys locally until their `retry_after` (default `false`).
    pub fn deny_cache(mut self, enabled: bool) -> Self {
        self.deny_cache = enabled;
        self
    }

    /// How many denied keys the deny cache remembers at most (default
    /// 10,000); beyond it, new denials are not cached until old ones expire.
    /// A full cache drops its expired entries at most every 50 ms, so that
    /// a flood of distinct denied keys costs no scan per request.
    pub fn deny_cache_capacity(mut self, capacity: usize) -> Self {
        self.deny_cache_capacity = capacity;
        self
    }

    /// Connects (within the connect timeout), loads the scripts and calls
    /// [`initialize`](RedisBackend::initialize).
    pub async fn build(self) -> Result<RedisBackend, Error> {
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return Err(Error::configuration(format!(
                "invalid RedisBackend prefix {:?}: it must be non-empty and contain no '{{' or '}}' \
                 (braces are the Redis Cluster hash tag of each key)",
                self.prefix
            )));
        }
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::configuration(
                "RedisBackend timeouts must be longer than zero",
            ));
        }
        let breaker_pause = self.circuit_breaker.unwrap_or(match self.target {
            Target::Cluster(_) => Duration::ZERO,
            _ => DEFAULT_BREAKER_PAUSE,
        });
        let opener = Opener {
            target: self.target,
            timeout: self.timeout,
            connect_timeout: self.connect_timeout,
            prefix: self.prefix.clone(),
        };
        let deadline = self.connect_timeout;
        let conn = match tokio::time::timeout(deadline, opener.open()).await {
            Ok(conn) => conn?,
            Err(_) => {
                return Err(Error::backend(format!(
                    "could not connect to Redis at {} within {deadline:?} (the RedisBackend connect timeout)",
                    opener.describe_target()
                )))
            }
        };
        let backend = RedisBackend {
            inner: Arc::new(Shared {
                conn: RwLock::new(Current {
                    conn,
                    generation: 0,
                }),
                opener,
                replacing: AtomicBool::new(false),
                breaker: Breaker::new(self.prefix.clone(), breaker_pause),
                prefix: self.prefix,
                persistent: self.persistent,
                timeout: self.timeout,
                deny_cache: self
                    .deny_cache
                    .then(|| DenyCache::new(self.deny_cache_capacity)),
                uids: Uids::default(),
            }),
        };
        backend.initialize().await?;
        backend.inner.warn_if_counters_can_be_evicted().await;
        Ok(backend)
    }
}
