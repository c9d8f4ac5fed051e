//! The Redis backend (feature `redis`): one Lua script per strategy, one round
//! trip per decision, on a single multiplexed, auto-reconnecting connection.
//! Redis Cluster is supported.

use std::fmt;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::{BackendFuture, BoxFuture, ThrottleBackend, Uids};
use crate::key::Key;
use crate::strategy::{Op, STRATEGIES};
use crate::{Decision, Error, Quota, Strategy};
use breaker::Breaker;
use connection::{Current, Opener, Target};
use deny_cache::DenyCache;
use scripts::{check_quota, decisions_from_reply, script_for, IN_FLIGHT};
use storage_keys::{rate_key, storage_key, storage_key_tagged};

mod breaker;
mod builder;
mod cluster;
mod connection;
mod deny_cache;
mod eviction_warning;
mod reset;
mod scripts;
mod storage_keys;

pub use builder::RedisBackendBuilder;

/// Counters in Redis (or Redis Cluster), shared by every app instance that
/// uses the same server and prefix.
///
/// * **One round trip per decision.** Each [`Strategy`] is one Lua script run
///   with `EVALSHA` (reloaded by itself after a `SCRIPT FLUSH` or a restart),
///   using the server's `TIME`, never the app's clock, so instances with
///   skewed clocks agree. The arithmetic is the integer microsecond
///   arithmetic of [`Quota::decide`], step for step: the same decisions,
///   `remaining`, `reset_after` and `retry_after`. Keys expire by themselves
///   (`SET ... PX`, or `PEXPIRE` for the log's sorted set) once their state
///   is equivalent to a fresh one.
/// * **Exact numbers.** Lua numbers are doubles, exact up to 2^53. The
///   token bucket and the sliding window counter decide on them while their
///   numbers stay under 2^53, and on exact multi-limb integers past it (a
///   slower path, taken only by such quotas), so they take every quota
///   [`Quota::new`] takes: capacity (or limit) × period ≤ 2^62 in
///   microseconds, about 53 million a day or 1.28 billion an hour. For the
///   other strategies a quota whose numbers could take an intermediate past
///   2^53 is refused with [`Error::Configuration`]: by the throttle's
///   `build()` when the throttle has this backend and a static rate, else by
///   [`decide`](ThrottleBackend::decide). Their bounds, in microseconds: GCRA
///   burst × emission interval ≤ 2^50, a fixed window or log limit ≤ 2^51,
///   a period ≤ 2^50 (about 35 years). GCRA with its default burst takes
///   any limit.
/// * **One connection.** A single multiplexed connection
///   ([`redis::aio::ConnectionManager`]) that reconnects by itself after an
///   outage, and is replaced in the background when a command times out on
///   it (a connection left open but silent is never dropped by the client);
///   no pool. Clones share it: `RedisBackend` is an `Arc` inside. On a
///   cluster, one multiplexed connection per node: each decision goes to
///   its key's master, following `MOVED` and `ASK` by itself, while the
///   slot map is read again in the background (nothing waits for it), so
///   that a failover or a resharding costs no decision and slows no other
///   slot; a master that cannot be reached fails the hits on its own slots
///   at once until a replica takes them over.
/// * **Bounded waits.** Every command is bounded by the response timeout
///   (default 1 s); failures and timeouts are [`Error::Backend`] naming Redis
///   and the cause, and the throttle's
///   [`FailureMode`](crate::FailureMode) decides what the request gets.
///   While Redis cannot be reached, hits fail at once (see
///   [`circuit_breaker`](RedisBackendBuilder::circuit_breaker)).
///   [`connect`](RedisBackend::connect) fails within the connect timeout
///   (default 1 s) when no server answers.
/// * **Keys.** The throttle's key `{prefix}:{uid}:{identity}:{scope}` is
///   stored as `{prefix}:{{uid}:{identity}:{scope}}:{strategy}` (for example
///   `traffik:{api:10.0.0.1:http:GET:/hello}:tb`): the braces are a Redis
///   Cluster hash tag, so everything a decision touches lives in one slot.
///   A key longer than 256 bytes is stored as its first 128 bytes (in the
///   braces), then `#` and the SHA-1 of the whole: Redis does not hold
///   whatever a client sends.
/// * **Lifecycle.** [`build`](RedisBackendBuilder::build) connects, loads the
///   scripts and calls [`initialize`](RedisBackend::initialize) (never lazily
///   on the first hit). Persistent by default (a shared store outlives one
///   app instance); `persistent(false)` clears the prefix's keys on
///   `initialize()` and `close()`. [`reset`](RedisBackend::reset) clears
///   them on demand with `SCAN MATCH {prefix}:*` and `UNLINK` in batches
///   (never `KEYS`), on every master of a cluster; other prefixes are never
///   touched.
/// * **Deny cache** (off by default): with
///   [`deny_cache(true)`](RedisBackendBuilder::deny_cache), a denied key is
///   answered locally, without a round trip, until its `retry_after` has
///   passed. Denials never change a key's state, so this is exact for the
///   decision; the cached `remaining` is the one of the original denial, with
///   `retry_after` and `reset_after` counted down.
///
/// * **Several rates and refunds.** A throttle's rates are decided by one
///   script, every rate's key in the same hash slot (a rate's key adds
///   `:{limit}/{period_us}` when there are several): the script decides
///   every rate, then writes only a hit every rate allows, or a refund. A
///   refused hit writes nothing.
/// * **In-flight places** (`.max_in_flight(n)`) are leases: a sorted set per
///   key, `{prefix}:{{uid}:{identity}:{scope}}:if`, of the places held,
///   scored by when their lease ends; held places are renewed, given-back
///   ones removed, and those of a crashed app instance expire.
///
/// Redis commands used (for an ACL, tested): `PING`, `EVALSHA`, `SCRIPT
/// LOAD`, `SCAN`, `UNLINK`, and inside the scripts `TIME`, `GET`, `SET`,
/// `DEL`, `PEXPIRE`, `ZADD`, `ZCARD`, `ZCOUNT`, `ZRANGEBYSCORE`,
/// `ZREMRANGEBYSCORE`, `ZREVRANGE`, `ZREVRANGEBYSCORE`, `ZREM`, on keys
/// `{prefix}:*`; on a cluster also `CLUSTER SLOTS` and `ASKING` (during a
/// resharding), and `SELECT` with a database other than 0 in the URL:
///
/// ```text
/// ACL SETUSER traffik on >password resetkeys ~traffik:* resetchannels -@all
///     +ping +evalsha +script|load +scan +unlink +time +get +set +del +pexpire
///     +zadd +zcard +zcount +zrangebyscore +zremrangebyscore +zrevrange
///     +zrevrangebyscore +zrem      (+cluster|slots +asking on a cluster)
/// ```
///
/// ```no_run
/// use std::time::Duration;
/// use traffik::backend::RedisBackend;
///
/// # async fn run() -> Result<(), traffik::Error> {
/// let redis = RedisBackend::connect("redis://127.0.0.1:6379/0").await?;
///
/// let custom = RedisBackend::builder("redis://127.0.0.1:6379/0")
///     .prefix("myapp")
///     .timeout(Duration::from_millis(200))
///     .deny_cache(true)
///     .build()
///     .await?;
///
/// let cluster = RedisBackend::cluster([
///     "redis://127.0.0.1:7101",
///     "redis://127.0.0.1:7102",
///     "redis://127.0.0.1:7103",
/// ])
/// .await?;
/// # let _ = (redis, custom, cluster);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Shared>,
}

/// What the clones of a backend share. Its methods are with their concern:
/// `connection` (running commands), `reset`, `eviction_warning`.
struct Shared {
    /// Replaced by a new connection after a command times out (see
    /// [`Shared::replace_connection`]).
    conn: RwLock<Current>,
    /// How to open a connection again.
    opener: Opener,
    /// A new connection is being opened.
    replacing: AtomicBool,
    breaker: Breaker,
    prefix: String,
    persistent: bool,
    timeout: Duration,
    deny_cache: Option<DenyCache>,
    uids: Uids,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.inner.prefix)
            .field("persistent", &self.inner.persistent)
            .field("cluster", &self.is_cluster())
            .field("timeout", &self.inner.timeout)
            .field("deny_cache", &self.inner.deny_cache.is_some())
            .finish()
    }
}

impl RedisBackend {
    /// Connects to the server at `url` (`redis://[user:password@]host:port[/db]`,
    /// `rediss://` with a TLS feature of the `redis` crate, `unix://`) with the
    /// defaults: prefix `"traffik"`, persistent, 1 s timeouts, no deny cache.
    ///
    /// Fails with [`Error::Backend`] within the connect timeout when no server
    /// answers, and with [`Error::Configuration`] on a malformed URL.
    pub async fn connect(url: impl Into<String>) -> Result<RedisBackend, Error> {
        RedisBackend::builder(url).build().await
    }

    /// Configures a backend for the server at `url`.
    pub fn builder(url: impl Into<String>) -> RedisBackendBuilder {
        RedisBackendBuilder::new(Target::Url(url.into()))
    }

    /// Configures a backend on an existing [`redis::Client`] (for TLS or
    /// connection settings made with the `redis` crate).
    pub fn builder_with_client(client: redis::Client) -> RedisBackendBuilder {
        RedisBackendBuilder::new(Target::Client(Box::new(client)))
    }

    /// Connects with an existing [`redis::Client`] and the defaults.
    pub async fn from_client(client: redis::Client) -> Result<RedisBackend, Error> {
        RedisBackend::builder_with_client(client).build().await
    }

    /// Connects to a Redis Cluster through any of its nodes (`redis://host:port`
    /// each), with the defaults.
    pub async fn cluster<I, S>(urls: I) -> Result<RedisBackend, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisBackend::cluster_builder(urls).build().await
    }

    /// Configures a backend on a Redis Cluster reached through any of its
    /// nodes (`redis://host:port` each).
    pub fn cluster_builder<I, S>(urls: I) -> RedisBackendBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisBackendBuilder::new(Target::Cluster(urls.into_iter().map(Into::into).collect()))
    }

    /// The SHA1 under which `strategy`'s script runs (`EVALSHA <sha> 1 <key>
    /// ...`): for preloading with `SCRIPT LOAD` in a locked-down deployment,
    /// or for `redis-benchmark` (scripts/bench-redis.sh).
    ///
    /// ```
    /// use traffik::{backend::RedisBackend, Strategy};
    /// assert_eq!(RedisBackend::script_sha(Strategy::TokenBucket).len(), 40);
    /// ```
    pub fn script_sha(strategy: Strategy) -> &'static str {
        script_for(strategy).get_hash()
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Whether keys survive [`initialize`](RedisBackend::initialize) and
    /// [`close`](RedisBackend::close) (default `true`).
    pub fn persistent(&self) -> bool {
        self.inner.persistent
    }

    /// Whether this backend talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.opener.target, Target::Cluster(_))
    }

    /// The bound on every command.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// How long hits fail at once after Redis could not be reached (zero:
    /// never); see [`RedisBackendBuilder::circuit_breaker`].
    pub fn circuit_breaker(&self) -> Duration {
        self.inner.breaker.pause()
    }

    /// Checks the connection, loads the scripts and, when not persistent,
    /// clears the prefix's keys. [`build`](RedisBackendBuilder::build) calls
    /// it; calling it again is harmless.
    pub async fn initialize(&self) -> Result<(), Error> {
        self.inner.initialize().await
    }

    /// Removes every key of this backend's prefix (on every master of a
    /// cluster) and empties the deny cache.
    pub async fn reset(&self) -> Result<(), Error> {
        self.inner.reset().await
    }

    /// Clears the prefix's keys when not persistent. The connection itself
    /// closes when the last clone is dropped.
    pub async fn close(&self) -> Result<(), Error> {
        if self.inner.persistent {
            Ok(())
        } else {
            self.inner.reset().await
        }
    }

    /// Counts a hit of `cost` on `key` for one rate: [`ThrottleBackend::decide`]
    /// with [`Op::Hit`], for code that calls the backend itself.
    pub async fn hit(&self, key: &Key<'_>, quota: &Quota, cost: u64) -> Result<Decision, Error> {
        let decisions =
            ThrottleBackend::decide(self, key, std::slice::from_ref(quota), cost, Op::Hit).await?;
        Ok(decisions.binding())
    }

    /// The Redis key that holds the state of `key` under `strategy`.
    ///
    /// ```
    /// # async fn run(redis: traffik::backend::RedisBackend) {
    /// use traffik::Strategy;
    /// // With the default prefix:
    /// assert_eq!(
    ///     redis.storage_key("traffik:api:1.2.3.4:http:GET:/", Strategy::TokenBucket),
    ///     "traffik:{api:1.2.3.4:http:GET:/}:tb",
    /// );
    /// # }
    /// ```
    pub fn storage_key(&self, key: &str, strategy: Strategy) -> String {
        storage_key(&self.inner.prefix, key, strategy)
    }

    fn decide_inner(&self, key: &str, quotas: &[Quota], cost: u64, op: Op) -> BackendFuture {
        if let Err(error) = quotas.iter().try_for_each(check_quota) {
            return BackendFuture::ready(Err(error));
        }
        let Some(strategy) = quotas.first().map(Quota::strategy) else {
            return BackendFuture::ready(Err(Error::configuration("a decision needs a rate")));
        };
        // One script decides every rate: the strategy of the first.
        if quotas.iter().any(|quota| quota.strategy() != strategy) {
            return BackendFuture::ready(Err(Error::configuration(
                "the Redis backend decides several rates with one strategy:                  give every Quota of one decision the same Strategy",
            )));
        }
        let cost = cost.max(1);
        let started = Instant::now();
        // The key's digest, computed once: looked up now, cached under later.
        let digest = self
            .inner
            .deny_cache
            .as_ref()
            .map(|cache| cache.digest(key));
        if let (Some(cache), Some(digest)) = (&self.inner.deny_cache, digest) {
            match op {
                // A refund may let in a hit that was refused: this
                // instance's denials of the key are dropped (another
                // instance's refund only ends its denials when they expire,
                // so they refuse longer, never admit more).
                Op::Refund { .. } => cache.forget(digest),
                _ => {
                    if let Some(decisions) = cache.get(digest, quotas, cost, started) {
                        return BackendFuture::ready(Ok(decisions));
                    }
                }
            }
        }
        let shared = self.inner.clone();
        let mut invocation = script_for(strategy).prepare_invoke();
        for quota in quotas {
            invocation.key(rate_key(&shared.prefix, key, quota, quotas.len()));
        }
        let (name, hit) = match op {
            Op::Hit => ("hit", 0),
            Op::Peek => ("peek", 0),
            Op::Refund { at } => ("refund", at.as_micros() as u64),
        };
        invocation.arg(name).arg(cost).arg(hit);
        for quota in quotas {
            match strategy {
                Strategy::TokenBucket => {
                    invocation
                        .arg(quota.limit())
                        .arg(quota.period_micros())
                        .arg(quota.capacity());
                }
                Strategy::Gcra => {
                    invocation
                        .arg(quota.emission_interval())
                        .arg(quota.capacity())
                        .arg(quota.period_micros());
                }
                _ => {
                    invocation.arg(quota.limit()).arg(quota.period_micros());
                }
            }
        }
        let cache_key = shared
            .deny_cache
            .as_ref()
            .zip(digest)
            .filter(|_| op == Op::Hit)
            .map(|(cache, digest)| (digest, cache.generation()));
        let quotas: Box<[Quota]> = quotas.into();
        BackendFuture::new(async move {
            let reply = shared.evaluate(invocation).await?;
            let decisions = decisions_from_reply(&quotas, &reply)?;
            if let (Some((key, generation)), Some(cache)) = (cache_key, &shared.deny_cache) {
                if !decisions.binding().allowed {
                    let now = Instant::now();
                    cache.insert_at(
                        key,
                        &quotas,
                        cost,
                        started,
                        decisions.clone(),
                        now,
                        generation,
                    );
                }
            }
            Ok(decisions)
        })
    }
}

impl RedisBackend {
    /// Runs the in-flight script: `op` on the place `place` of `key`.
    fn places(
        &self,
        key: &Key<'_>,
        op: &'static str,
        place: u64,
        max: u64,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<i64>, Error>> + Send + 'static {
        let shared = self.inner.clone();
        let mut invocation = IN_FLIGHT.prepare_invoke();
        invocation
            .key(storage_key_tagged(
                &shared.prefix,
                &key.text(&shared.prefix),
                "if",
            ))
            .arg(op)
            .arg(format!("{place:016x}"))
            .arg(max)
            .arg(lease.as_micros() as u64);
        async move { shared.evaluate(invocation).await }
    }
}

impl ThrottleBackend for RedisBackend {
    fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    fn decide(&self, key: &Key<'_>, quotas: &[Quota], cost: u64, op: Op) -> BackendFuture {
        self.decide_inner(&key.text(&self.inner.prefix), quotas, cost, op)
    }

    fn acquire(&self, key: &Key<'_>, place: u64, max: u64, lease: Duration) -> BackendFuture {
        let future = self.places(key, "acquire", place, max, lease);
        BackendFuture::new(async move {
            let reply = future.await?;
            let (allowed, remaining, at) = match reply[..] {
                [allowed, remaining, at] => {
                    (allowed == 1, remaining.max(0) as u64, at.max(0) as u64)
                }
                _ => {
                    return Err(Error::backend(
                        "Redis answered an in-flight place with a malformed reply",
                    ))
                }
            };
            Ok(super::place_decision(at, allowed, max, remaining))
        })
    }

    fn release(&self, key: &Key<'_>, place: u64) -> BackendFuture<()> {
        let future = self.places(key, "release", place, 0, Duration::ZERO);
        BackendFuture::new(async move { future.await.map(drop) })
    }

    fn renew(&self, key: &Key<'_>, place: u64, lease: Duration) -> BackendFuture<()> {
        let future = self.places(key, "renew", place, 0, lease);
        BackendFuture::new(async move { future.await.map(drop) })
    }

    fn places_expire(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn reset(&self) -> BoxFuture<Result<(), Error>> {
        let shared = self.inner.clone();
        Box::pin(async move { shared.reset().await })
    }

    fn initialize(&self) -> BoxFuture<Result<(), Error>> {
        let shared = self.inner.clone();
        Box::pin(async move { shared.initialize().await })
    }

    fn close(&self) -> BoxFuture<Result<(), Error>> {
        let backend = self.clone();
        Box::pin(async move { backend.close().await })
    }

    fn persistent(&self) -> bool {
        self.inner.persistent
    }

    fn check_quota(&self, quota: &Quota) -> Result<(), Error> {
        check_quota(quota)
    }

    fn uids(&self) -> Option<&Uids> {
        Some(&self.inner.uids)
    }
}

impl Shared {
    async fn initialize(&self) -> Result<(), Error> {
        let mut conn = self.conn();
        let pong: String = self
            .bounded("PING", redis::cmd("PING").query_async(&mut conn))
            .await?;
        if pong != "PONG" {
            return Err(Error::backend(format!("Redis answered PING with {pong:?}")));
        }
        for strategy in STRATEGIES {
            let script = script_for(strategy);
            let mut conn = self.conn();
            let sha: String = self
                .bounded("SCRIPT LOAD", script.prepare_invoke().load_async(&mut conn))
                .await?;
            if sha != script.get_hash() {
                return Err(Error::backend(format!(
                    "Redis SCRIPT LOAD returned SHA1 {sha} for the {strategy} script, expected {}",
                    script.get_hash()
                )));
            }
        }
        if !self.persistent {
            self.reset().await?;
        }
        Ok(())
    }
}
