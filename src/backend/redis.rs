//! The Redis backend (feature `redis`): one Lua script per strategy, one round
//! trip per decision, on a single multiplexed, auto-reconnecting connection.
//! Redis Cluster is supported.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, RedisError, RedisFuture, Script, Value};

use super::{BackendFuture, BoxFuture, ThrottleBackend, Uids};
use breaker::{Breaker, Outcome};
use cluster::Cluster;

mod breaker;
mod cluster;
use crate::key::Key;
use crate::strategy::{Decisions, Op, STRATEGIES};
use crate::{Decision, Error, Quota, Strategy};

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
/// Longer key texts are stored as their first [`KEPT_OF_LONG_KEY`] bytes in
/// the braces, then `#` and the SHA-1 of the whole.
const MAX_STORED_KEY: usize = 256;
const KEPT_OF_LONG_KEY: usize = 128;
/// Keys asked for per SCAN call during a reset.
const SCAN_COUNT: usize = 1_000;

/// Bounds for the scripts that decide on plain Lua numbers (doubles, exact
/// up to 2^53) at every quota: GCRA, the fixed window and the sliding window
/// log. They keep every intermediate under 2^53 with the server's clock
/// (Unix microseconds, about 2^50.6) added. The token bucket and the sliding
/// window counter need none: past 2^53 their scripts switch to exact
/// integers of any size, so they take every quota [`Quota::new`] takes.
const LUA_MAX_PRODUCT: u128 = 1 << 51;
const LUA_MAX_PERIOD: u64 = 1 << 50;

const PRELUDE: &str = include_str!("redis/prelude.lua");
const DRIVER: &str = include_str!("redis/driver.lua");

/// A strategy's script: the shared helpers, the strategy's functions, the
/// driver that runs them for every rate.
fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}\n{DRIVER}"))
}

static TOKEN_BUCKET: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("redis/token_bucket.lua")));
static FIXED_WINDOW: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("redis/fixed_window.lua")));
static SLIDING_WINDOW_COUNTER: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("redis/sliding_window_counter.lua")));
static SLIDING_WINDOW_LOG: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("redis/sliding_window_log.lua")));
static GCRA: LazyLock<Script> = LazyLock::new(|| script(include_str!("redis/gcra.lua")));
static IN_FLIGHT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("redis/in_flight.lua")));

fn script_for(strategy: Strategy) -> &'static Script {
    match strategy {
        Strategy::TokenBucket => &TOKEN_BUCKET,
        Strategy::FixedWindow => &FIXED_WINDOW,
        Strategy::SlidingWindowCounter => &SLIDING_WINDOW_COUNTER,
        Strategy::SlidingWindowLog => &SLIDING_WINDOW_LOG,
        Strategy::Gcra => &GCRA,
    }
}

/// Short tag appended to stored keys, so that a throttle whose strategy
/// changes between deployments starts from fresh state instead of misreading
/// another strategy's state.
fn strategy_tag(strategy: Strategy) -> &'static str {
    match strategy {
        Strategy::TokenBucket => "tb",
        Strategy::FixedWindow => "fw",
        Strategy::SlidingWindowCounter => "swc",
        Strategy::SlidingWindowLog => "swl",
        Strategy::Gcra => "gcra",
    }
}

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

/// The connection in use, and how many times it was replaced.
struct Current {
    conn: Conn,
    generation: u64,
}

/// The connection: one multiplexed connection to a server, or a cluster
/// connection (one per node, see [`cluster`]).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(Cluster),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
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

/// Builds the [`Decisions`] from a script's `{at, then allowed, remaining,
/// reset_after_us, retry_after_us per rate}`.
fn decisions_from_reply(quotas: &[Quota], reply: &[i64]) -> Result<Decisions, Error> {
    let micros = |n: i64| Duration::from_micros(n.max(0) as u64);
    let (Some(&at), rest) = (reply.first(), reply.get(1..).unwrap_or_default()) else {
        return Err(Error::backend(
            "Redis answered a decision with an empty reply",
        ));
    };
    if rest.len() != quotas.len() * 4 {
        return Err(Error::backend(format!(
            "Redis answered a decision on {} rates with {} numbers",
            quotas.len(),
            reply.len()
        )));
    }
    let each = rest.chunks(4).zip(quotas).map(|(numbers, quota)| {
        let allowed = numbers[0] == 1;
        Decision {
            allowed,
            limit: quota.capacity(),
            remaining: numbers[1].max(0) as u64,
            reset_after: micros(numbers[2]),
            retry_after: if allowed {
                Duration::ZERO
            } else {
                micros(numbers[3])
            },
        }
    });
    Ok(Decisions::new(micros(at), each))
}

/// The Redis key of one rate of a decision: [`storage_key`], and for a
/// throttle with several rates, the rate (`:{limit}/{period_us}`), so that
/// each rate keeps its counter whatever the order of the others.
fn rate_key(prefix: &str, key: &str, quota: &Quota, rates: usize) -> String {
    let mut stored = storage_key(prefix, key, quota.strategy());
    if rates > 1 {
        stored.push_str(&format!(":{}/{}", quota.limit(), quota.period_micros()));
    }
    stored
}

/// `{prefix}:{{rest}}:{tag}`, where `rest` is `key` without its
/// `{prefix}:` (the whole key if it does not start with it).
fn storage_key(prefix: &str, key: &str, strategy: Strategy) -> String {
    storage_key_tagged(prefix, key, strategy_tag(strategy))
}

/// [`storage_key`] with another tag (`if`: in-flight places).
fn storage_key_tagged(prefix: &str, key: &str, tag: &str) -> String {
    let rest = key
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix(':'))
        .unwrap_or(key);
    // A key is as long as a client makes it (an identity from a header, an
    // unrouted path): past a bound, Redis stores its start and the SHA-1 of
    // the whole, not every byte, the same on every app instance. The digest
    // goes after the closing brace, where no short key's stored form has
    // anything but the tag (`{prefix}:{rest}:{tag}` always has `}:` before
    // its tag): a short key cannot be written to equal a long one's.
    let mut stored = String::with_capacity(prefix.len() + rest.len().min(256) + tag.len() + 48);
    stored.push_str(prefix);
    stored.push_str(":{");
    if rest.len() > MAX_STORED_KEY {
        let mut cut = KEPT_OF_LONG_KEY;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        stored.push_str(&rest[..cut]);
        stored.push_str("}#");
        stored.push_str(&sha1_smol::Sha1::from(rest).digest().to_string());
        stored.push(':');
    } else {
        stored.push_str(rest);
        stored.push_str("}:");
    }
    stored.push_str(tag);
    stored
}

/// Refuses quotas whose numbers could take a Lua (double) intermediate past
/// 2^53, where the scripts would no longer be exact. The token bucket and the
/// sliding window counter take any quota (their scripts switch to exact
/// integers past 2^53); [`Quota::new`] bounds them (products ≤ 2^62).
fn check_quota(quota: &Quota) -> Result<(), Error> {
    let period = quota.period_micros();
    let too_big = |what: &str| {
        Err(Error::configuration(format!(
            "rate {} with {:?} is too large for the Redis backend's exact arithmetic \
             (Lua numbers are doubles, exact below 2^53): {what}; \
             use a shorter period or a smaller limit",
            quota.rate(),
            quota.strategy()
        )))
    };
    let product = |a: u64, b: u64| u128::from(a) * u128::from(b);
    match quota.strategy() {
        Strategy::TokenBucket | Strategy::SlidingWindowCounter => {}
        Strategy::Gcra => {
            if period > LUA_MAX_PERIOD {
                return too_big("the period exceeds 2^50 microseconds (about 35 years)");
            }
            if product(quota.capacity(), quota.emission_interval()) > u128::from(LUA_MAX_PERIOD) {
                return too_big("burst × emission interval in microseconds exceeds 2^50");
            }
        }
        Strategy::FixedWindow | Strategy::SlidingWindowLog => {
            if period > LUA_MAX_PERIOD {
                return too_big("the period exceeds 2^50 microseconds (about 35 years)");
            }
            if u128::from(quota.limit()) > LUA_MAX_PRODUCT {
                return too_big("the limit exceeds 2^51");
            }
        }
    }
    Ok(())
}

/// Why a command failed.
enum Failure {
    /// No answer in time (the backend's timeout, or the client's).
    TimedOut(Error),
    /// A connection refused: the server is not there.
    Refused(Error),
    /// Anything else: a script or server error, or a connection lost (the
    /// client reconnects at once, and a server that is really gone shows
    /// on the next hits as refusals or timeouts).
    Other(Error),
}

impl Failure {
    fn into_error(self) -> Error {
        match self {
            Failure::TimedOut(error) | Failure::Refused(error) | Failure::Other(error) => error,
        }
    }
}

/// A failure as the circuit breaker's refusals name it.
fn failure_text(error: &Error) -> String {
    match error {
        Error::Backend(backend) => crate::error::Chain(backend).to_string(),
        other => other.to_string(),
    }
}

/// Lets a new connection be opened again when the task opening one ends,
/// or is dropped unfinished (its runtime shut down).
struct Replacing(Arc<Shared>);

impl Drop for Replacing {
    fn drop(&mut self) {
        self.0.replacing.store(false, Ordering::Release);
    }
}

impl Shared {
    /// The current connection (cheap: a clone of handles).
    fn conn(&self) -> Conn {
        self.current().0
    }

    /// The current connection and its generation.
    fn current(&self) -> (Conn, u64) {
        let current = self.conn.read().unwrap_or_else(PoisonError::into_inner);
        (current.conn.clone(), current.generation)
    }

    /// Opens a new connection in the background, and uses it from then on,
    /// unless one is already being opened. Called when a command times out:
    /// the client reconnects by itself when a connection is refused or
    /// closed, but not when it stays open and silent, which a dead proxy or
    /// NAT entry can leave behind.
    /// `generation` is the connection the command timed out on: once it
    /// has been replaced, nothing is done.
    ///
    /// A cluster connection is not replaced: it notices a node that stopped
    /// answering by itself, and reconnects that node alone.
    fn replace_connection(self: &Arc<Self>, generation: u64) {
        if matches!(self.current().0, Conn::Cluster(_)) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.current().1 != generation || self.replacing.swap(true, Ordering::AcqRel) {
            return;
        }
        // Moved into the task: dropped with it, run or not.
        let guard = Replacing(Arc::clone(self));
        runtime.spawn(async move {
            let shared = &guard.0;
            let opened =
                tokio::time::timeout(shared.opener.connect_timeout, shared.opener.open()).await;
            match opened {
                Ok(Ok(conn)) => {
                    let mut current = shared.conn.write().unwrap_or_else(PoisonError::into_inner);
                    if current.generation == generation {
                        *current = Current {
                            conn,
                            generation: generation + 1,
                        };
                    }
                    drop(current);
                    tracing::info!(
                        prefix = shared.prefix.as_str(),
                        "traffik: opened a new Redis connection after a command timed out"
                    );
                }
                Ok(Err(error)) => tracing::warn!(
                    prefix = shared.prefix.as_str(),
                    error = %crate::error::Chain(&error),
                    "traffik: could not open a new Redis connection after a command timed out"
                ),
                Err(_) => tracing::warn!(
                    prefix = shared.prefix.as_str(),
                    "traffik: could not open a new Redis connection within the connect timeout"
                ),
            }
        });
    }

    /// Runs a script: failing at once while Redis cannot be reached (see
    /// `breaker`), and replacing a connection that stopped answering.
    async fn evaluate(
        self: &Arc<Self>,
        invocation: redis::ScriptInvocation<'static>,
    ) -> Result<Vec<i64>, Error> {
        let ticket = self.breaker.admit()?;
        let (mut conn, generation) = self.current();
        let reply: Result<Vec<i64>, Failure> = self
            .attempt("EVALSHA", async {
                // `invoke_async` loads the script on NOSCRIPT and retries
                // once; a second SCRIPT FLUSH in between gets one more try.
                match invocation.invoke_async(&mut conn).await {
                    Err(e)
                        if e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                    {
                        invocation.invoke_async(&mut conn).await
                    }
                    result => result,
                }
            })
            .await;
        // A failure on a connection already replaced says nothing of the
        // new one: the hits that were in flight on a silent connection
        // neither replace its successor nor reopen the breaker once a test
        // hit has closed it. Read on failures only: a success needs no
        // second lock.
        let stale = || self.current().1 != generation;
        match &reply {
            Ok(_) => ticket.record(Outcome::Reached, &String::new),
            Err(Failure::TimedOut(error)) if !stale() => {
                ticket.record(Outcome::Unreachable, &|| failure_text(error));
                // A connection that stopped answering (a dead proxy or NAT
                // entry) is never dropped by the client: replace it.
                self.replace_connection(generation);
            }
            Err(Failure::Refused(error)) if !stale() => {
                ticket.record(Outcome::Unreachable, &|| failure_text(error))
            }
            Err(_) => ticket.record(Outcome::Other, &String::new),
        }
        reply.map_err(Failure::into_error)
    }

    /// Runs one command under the response timeout, saying why it failed.
    async fn attempt<T>(
        &self,
        what: &str,
        command: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.timeout, command).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                let timed_out = error.is_timeout();
                let refused = error.is_connection_refusal();
                let error = redis_error(what, error);
                Err(if timed_out {
                    Failure::TimedOut(error)
                } else if refused {
                    Failure::Refused(error)
                } else {
                    Failure::Other(error)
                })
            }
            Err(_) => Err(Failure::TimedOut(Error::backend(format!(
                "Redis did not answer {what} within {:?} (the RedisBackend timeout)",
                self.timeout
            )))),
        }
    }

    /// Runs one command under the response timeout, mapping errors.
    async fn bounded<T>(
        &self,
        what: &str,
        command: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, Error> {
        self.attempt(what, command)
            .await
            .map_err(Failure::into_error)
    }

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

    /// Warns (once, at build) when Redis may evict traffik's keys to make
    /// room: with `maxmemory` set and a `maxmemory-policy` other than
    /// `noeviction` (the `allkeys-*` policies evict any key, the
    /// `volatile-*` ones any key with a TTL, which every traffik key has).
    /// An evicted counter starts again from zero: its key admits up to a
    /// whole limit more. Read with `CONFIG GET` on the server or on every
    /// master; a refusal (an ACL, a managed Redis) is ignored.
    async fn warn_if_counters_can_be_evicted(&self) {
        let mut config = redis::cmd("CONFIG");
        config.arg("GET").arg("maxmemory*");
        let conn = self.conn();
        let answers: Vec<(String, Option<Value>)> = match &conn {
            Conn::Single(_) => {
                let mut conn = conn.clone();
                let answer = self
                    .bounded("CONFIG GET", config.query_async::<Value>(&mut conn))
                    .await
                    .ok();
                vec![(self.opener.describe_target(), answer)]
            }
            Conn::Cluster(cluster) => {
                let masters = cluster.masters();
                let reads = masters.iter().map(|node| async {
                    let answer = self
                        .bounded("CONFIG GET", async {
                            cluster.on_node(node, &config).await?.extract_error()
                        })
                        .await
                        .ok();
                    (node.address(), answer)
                });
                futures_util::future::join_all(reads).await
            }
        };
        let evicting: Vec<String> = answers
            .into_iter()
            .filter_map(|(server, answer)| {
                let settings = config_pairs(&answer?);
                let policy = settings.get("maxmemory-policy")?;
                let limited = settings.get("maxmemory").is_some_and(|bytes| bytes != "0");
                (limited && policy != "noeviction").then(|| format!("{server}: {policy}"))
            })
            .collect();
        if !evicting.is_empty() {
            tracing::warn!(
                prefix = self.prefix.as_str(),
                policy = %evicting.join(", "),
                "traffik: Redis may evict rate-limit counters when its memory is full \
                 (maxmemory is set and maxmemory-policy is not noeviction): an evicted counter \
                 starts again from zero, admitting up to a whole limit more; use noeviction, \
                 or a Redis of its own for the counters"
            );
        }
    }

    async fn reset(&self) -> Result<(), Error> {
        // Stored keys are `{prefix}:{...}`: matching the brace keeps a
        // backend whose prefix starts with this one ("app:t1" for "app") safe.
        let pattern = format!("{}:{{*", glob_escape(&self.prefix));
        let conn = self.conn();
        let nodes = match &conn {
            Conn::Single(_) => vec![None],
            Conn::Cluster(cluster) => {
                let masters = cluster.masters();
                if masters.is_empty() {
                    return Err(Error::backend("the Redis Cluster's slot map has no master"));
                }
                masters.into_iter().map(Some).collect()
            }
        };
        for node in nodes {
            let mut cursor: u64 = 0;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT);
                let (next, keys): (u64, Vec<String>) = match (&conn, &node) {
                    (Conn::Cluster(cluster), Some(node)) => {
                        let value = self
                            .bounded("SCAN", async {
                                cluster.on_node(node, &scan).await?.extract_error()
                            })
                            .await?;
                        redis::from_redis_value(value).map_err(|e| redis_error("SCAN", e.into()))?
                    }
                    _ => {
                        let mut conn = conn.clone();
                        self.bounded("SCAN", scan.query_async(&mut conn)).await?
                    }
                };
                match &conn {
                    Conn::Cluster(_) if !keys.is_empty() => {
                        // One UNLINK per slot: a cluster refuses keys of
                        // several slots in one command.
                        let mut by_slot: HashMap<u16, Vec<&String>> = HashMap::new();
                        for key in &keys {
                            by_slot
                                .entry(cluster::slot(key.as_bytes()))
                                .or_default()
                                .push(key);
                        }
                        let unlinks = by_slot.into_values().map(|keys| {
                            let mut conn = conn.clone();
                            async move {
                                self.bounded(
                                    "UNLINK",
                                    redis::cmd("UNLINK").arg(keys).query_async::<i64>(&mut conn),
                                )
                                .await
                            }
                        });
                        futures_util::future::try_join_all(unlinks).await?;
                    }
                    _ if !keys.is_empty() => {
                        let mut conn = conn.clone();
                        let _: i64 = self
                            .bounded(
                                "UNLINK",
                                redis::cmd("UNLINK").arg(&keys).query_async(&mut conn),
                            )
                            .await?;
                    }
                    _ => {}
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        if let Some(cache) = &self.deny_cache {
            cache.clear();
        }
        Ok(())
    }
}

/// The name/value pairs of a `CONFIG GET` reply (a flat array in RESP2, a
/// map in RESP3).
fn config_pairs(value: &Value) -> HashMap<String, String> {
    let text = |value: &Value| match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) | Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    };
    let pairs: Vec<(&Value, &Value)> = match value {
        Value::Array(items) => items
            .chunks_exact(2)
            .map(|pair| (&pair[0], &pair[1]))
            .collect(),
        Value::Map(entries) => entries.iter().map(|(k, v)| (k, v)).collect(),
        _ => Vec::new(),
    };
    pairs
        .into_iter()
        .filter_map(|(name, value)| Some((text(name)?.to_ascii_lowercase(), text(value)?)))
        .collect()
}

/// Escapes Redis glob characters so that a prefix matches only itself.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

fn redis_error(what: &str, error: RedisError) -> Error {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connection_refusal() {
        "was refused a connection"
    } else if error.is_io_error() || error.is_connection_dropped() {
        "lost its connection"
    } else {
        "failed"
    };
    Error::backend_with_source(format!("Redis {what} {kind}"), error)
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
            let decision = Decision {
                allowed,
                limit: max,
                remaining,
                reset_after: Duration::ZERO,
                retry_after: if allowed {
                    Duration::ZERO
                } else {
                    super::memory::PLACE_RETRY
                },
            };
            Ok(Decisions::one(Duration::from_micros(at), decision))
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

/// Denied keys answered locally until their `retry_after`.
struct DenyCache {
    capacity: usize,
    /// Keys are held as keyed digests: a key's text can be as long as a
    /// client makes it (an identity from a header, an unrouted path), and a
    /// cache of texts would hold the bytes of every denied one.
    hasher: std::hash::RandomState,
    state: Mutex<DenyState>,
    /// Bumped by every `clear()` (under the state's lock): a denial decided
    /// before a reset must not be cached after it. Read without the lock
    /// when a request is sent.
    generation: AtomicU64,
}

/// A full cache is swept at most this often (a sweep reads every entry);
/// meanwhile new denials are not cached (the cache only spares round trips).
const DENY_SWEEP_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Default)]
struct DenyState {
    /// Denials by key digest; a key rarely has more than one quota and
    /// cost.
    map: HashMap<u64, Vec<CachedDeny>>,
    /// Entries in `map`.
    len: usize,
    /// A full cache is not swept before this.
    next_sweep: Option<Instant>,
    /// Sweeps so far (for tests).
    sweeps: u64,
}

struct CachedDeny {
    quotas: Box<[Quota]>,
    cost: u64,
    /// When the request that got the denial was sent: the server decided
    /// later, so `sent + retry_after` is never later than the real time the
    /// same hit is allowed.
    sent: Instant,
    decisions: Decisions,
}

impl CachedDeny {
    fn live_at(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.sent) < self.decisions.binding().retry_after
    }
}

impl DenyCache {
    fn new(capacity: usize) -> Self {
        DenyCache {
            capacity: capacity.max(1),
            hasher: std::hash::RandomState::new(),
            state: Mutex::new(DenyState::default()),
            generation: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DenyState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The digest a key is cached under (SipHash with this cache's own
    /// random key: clients cannot make two keys collide on purpose).
    fn digest(&self, key: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key)
    }

    /// A live denial of the key whose [`digest`](DenyCache::digest) is `key`.
    fn get(&self, key: u64, quotas: &[Quota], cost: u64, now: Instant) -> Option<Decisions> {
        let mut state = self.lock();
        let entries = state.map.get_mut(&key)?;
        let index = entries
            .iter()
            .position(|e| *e.quotas == *quotas && e.cost == cost)?;
        let entry = &entries[index];
        let elapsed = now.saturating_duration_since(entry.sent);
        if elapsed >= entry.decisions.binding().retry_after {
            entries.swap_remove(index);
            if entries.is_empty() {
                state.map.remove(&key);
            }
            state.len -= 1;
            return None;
        }
        Some(entry.decisions.later_by(elapsed))
    }

    /// The current generation, to pass to [`insert_at`](DenyCache::insert_at) for a
    /// request about to be sent.
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Caches a denial; `now` is the current time, `generation` the cache's
    /// when the request was sent (a `clear()` since then drops the denial:
    /// the server state it came from is gone). A full cache drops its
    /// expired entries, at most once per [`DENY_SWEEP_INTERVAL`], and skips
    /// the denial when no room is left.
    #[allow(clippy::too_many_arguments)]
    fn insert_at(
        &self,
        key: u64,
        quotas: &[Quota],
        cost: u64,
        sent: Instant,
        decisions: Decisions,
        now: Instant,
        generation: u64,
    ) {
        if decisions.binding().retry_after.is_zero() {
            return;
        }
        let entry = CachedDeny {
            quotas: quotas.into(),
            cost,
            sent,
            decisions,
        };
        let mut state = self.lock();
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if let Some(entries) = state.map.get_mut(&key) {
            if let Some(old) = entries
                .iter_mut()
                .find(|e| *e.quotas == *quotas && e.cost == cost)
            {
                *old = entry;
                return;
            }
        }
        if state.len >= self.capacity {
            if state.next_sweep.is_some_and(|next| now < next) {
                return;
            }
            let state = &mut *state;
            state.map.retain(|_, entries| {
                entries.retain(|e| e.live_at(now));
                !entries.is_empty()
            });
            state.len = state.map.values().map(Vec::len).sum();
            state.next_sweep = Some(now + DENY_SWEEP_INTERVAL);
            state.sweeps += 1;
            if state.len >= self.capacity {
                return;
            }
        }
        state.map.entry(key).or_default().push(entry);
        state.len += 1;
    }

    /// Drops the denials of the key whose digest is `key`.
    fn forget(&self, key: u64) {
        let mut state = self.lock();
        if let Some(entries) = state.map.remove(&key) {
            state.len -= entries.len();
        }
    }

    fn clear(&self) {
        let mut state = self.lock();
        state.map.clear();
        state.len = 0;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

#[derive(Clone)]
enum Target {
    Url(String),
    Client(Box<redis::Client>),
    Cluster(Vec<String>),
}

/// What opening a connection takes: at build, and again to replace a
/// connection that stopped answering.
struct Opener {
    target: Target,
    timeout: Duration,
    connect_timeout: Duration,
    /// The backend's prefix, in logs.
    prefix: String,
}

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
    fn new(target: Target) -> Self {
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

impl Opener {
    fn describe_target(&self) -> String {
        match &self.target {
            Target::Url(url) => match redis::Client::open(url.as_str()) {
                Ok(client) => client.get_connection_info().addr().to_string(),
                Err(_) => "an invalid URL".to_owned(),
            },
            Target::Client(client) => client.get_connection_info().addr().to_string(),
            Target::Cluster(urls) => format!("a cluster of {} node URL(s)", urls.len()),
        }
    }

    async fn open(&self) -> Result<Conn, Error> {
        match &self.target {
            Target::Url(url) => {
                let client = redis::Client::open(url.as_str()).map_err(|e| {
                    Error::configuration(format!("invalid Redis URL for RedisBackend: {e}"))
                })?;
                self.open_single(client).await
            }
            Target::Client(client) => self.open_single((**client).clone()).await,
            Target::Cluster(urls) => {
                if urls.is_empty() {
                    return Err(Error::configuration(
                        "RedisBackend::cluster needs at least one node URL",
                    ));
                }
                let cluster =
                    Cluster::connect(urls, self.timeout, self.connect_timeout, &self.prefix)
                        .await?;
                Ok(Conn::Cluster(cluster))
            }
        }
    }

    async fn open_single(&self, client: redis::Client) -> Result<Conn, Error> {
        let address = client.get_connection_info().addr().to_string();
        // One attempt first, so that a server that is not there fails now with
        // its real cause instead of after the manager's retries.
        let probe = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.timeout));
        drop(
            client
                .get_multiplexed_async_connection_with_config(&probe)
                .await
                .map_err(|e| {
                    Error::backend_with_source(
                        format!("could not connect to Redis at {address}"),
                        e,
                    )
                })?,
        );
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.timeout))
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| {
                Error::backend_with_source(format!("could not connect to Redis at {address}"), e)
            })?;
        Ok(Conn::Single(manager))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rate;

    fn denied(retry_after_ms: u64) -> Decisions {
        Decisions::one(
            Duration::ZERO,
            Decision {
                allowed: false,
                limit: 1,
                remaining: 0,
                reset_after: Duration::from_millis(retry_after_ms),
                retry_after: Duration::from_millis(retry_after_ms),
            },
        )
    }

    fn per_minute(limit: u64) -> Quota {
        Quota::new(
            Rate::new(limit, Duration::from_secs(60)).unwrap(),
            Strategy::TokenBucket,
        )
        .unwrap()
    }

    /// A key of any length is held as a digest (the map's key type), and is
    /// found again by its text, and only by it.
    /// A long key is stored as its start and the SHA-1 of the whole: short,
    /// the same for the same text, different for another.
    #[test]
    fn long_keys_are_stored_under_a_digest() {
        let short = "api:10.0.0.1:http:GET:/hello";
        assert_eq!(
            storage_key("p", &format!("p:{short}"), Strategy::Gcra),
            format!("p:{{{short}}}:gcra")
        );
        let long = |fill: &str| format!("p:api:{}:http:GET:/", fill.repeat(100_000));
        let a = storage_key("p", &long("a"), Strategy::TokenBucket);
        assert!(a.len() < 200, "{}", a.len());
        assert!(
            a.starts_with("p:{api:aaaa") && a.contains("}#") && a.ends_with(":tb"),
            "{a}"
        );
        assert_eq!(a, storage_key("p", &long("a"), Strategy::TokenBucket));
        assert_ne!(a, storage_key("p", &long("b"), Strategy::TokenBucket));
        // Two keys with the same start differ by their digest.
        let (x, y) = (long("a") + "x", long("a") + "y");
        assert_ne!(
            storage_key("p", &x, Strategy::TokenBucket),
            storage_key("p", &y, Strategy::TokenBucket)
        );
        // A short key written as a long key's stored form is stored apart.
        let long_key = long("a");
        let rest = &long_key["p:".len()..];
        let forged = format!(
            "p:{}#{}",
            &rest[..128],
            sha1_smol::Sha1::from(rest).digest()
        );
        assert!(forged.len() - 2 <= MAX_STORED_KEY);
        assert_ne!(storage_key("p", &forged, Strategy::TokenBucket), a);
        // Cut at a character boundary.
        let wide = format!("p:api:{}:http:GET:/", "é".repeat(1_000));
        assert!(storage_key("p", &wide, Strategy::Gcra).starts_with("p:{api:é"));
    }

    #[test]
    fn long_keys_are_cached_by_digest() {
        let cache = DenyCache::new(10);
        let quota = Quota::new("1/min".parse().unwrap(), Strategy::TokenBucket).unwrap();
        let key = "x".repeat(300_000);
        let t0 = Instant::now();
        cache.insert_at(cache.digest(&key), &[quota], 1, t0, denied(10_000), t0, 0);
        assert!(cache.get(cache.digest(&key), &[quota], 1, t0).is_some());
        assert!(cache
            .get(cache.digest(&key[1..]), &[quota], 1, t0)
            .is_none());
    }

    #[test]
    fn a_full_deny_cache_is_swept_at_most_once_per_interval() {
        let cache = DenyCache::new(100);
        let quota = per_minute(1);
        let t0 = Instant::now();
        for i in 0..100 {
            cache.insert_at(
                cache.digest(&format!("k{i}")),
                &[quota],
                1,
                t0,
                denied(10_000),
                t0,
                0,
            );
        }
        assert_eq!(cache.lock().len, 100);
        // Full of live entries: one sweep finds nothing to drop; the next
        // thousand denials are not cached and sweep nothing.
        for i in 100..1100 {
            cache.insert_at(
                cache.digest(&format!("k{i}")),
                &[quota],
                1,
                t0,
                denied(10_000),
                t0,
                0,
            );
        }
        assert_eq!(cache.lock().sweeps, 1);
        assert_eq!(cache.lock().len, 100);
        assert!(cache.get(cache.digest("k1000"), &[quota], 1, t0).is_none());
        assert!(cache.get(cache.digest("k5"), &[quota], 1, t0).is_some());
        // Once the entries expire and the interval passes, a sweep makes room.
        let later = t0 + Duration::from_secs(11);
        cache.insert_at(
            cache.digest("fresh"),
            &[quota],
            1,
            later,
            denied(10_000),
            later,
            0,
        );
        assert_eq!(cache.lock().sweeps, 2);
        assert_eq!(cache.lock().len, 1);
        assert!(cache
            .get(cache.digest("fresh"), &[quota], 1, later)
            .is_some());
    }

    /// A denial decided before a `clear()` (a reset) but inserted after it
    /// is dropped: the server state it came from is gone.
    #[test]
    fn the_deny_cache_drops_denials_from_before_a_clear() {
        let cache = DenyCache::new(10);
        let quota = per_minute(1);
        let t0 = Instant::now();
        let before = cache.generation();
        cache.clear();
        cache.insert_at(
            cache.digest("k"),
            &[quota],
            1,
            t0,
            denied(1_000),
            t0,
            before,
        );
        assert_eq!(cache.get(cache.digest("k"), &[quota], 1, t0), None);
        assert_eq!(cache.lock().len, 0);
        // One sent after the clear is cached.
        let after = cache.generation();
        assert_ne!(after, before);
        cache.insert_at(cache.digest("k"), &[quota], 1, t0, denied(1_000), t0, after);
        assert!(cache.get(cache.digest("k"), &[quota], 1, t0).is_some());
    }

    #[test]
    fn the_deny_cache_keeps_one_entry_per_key_quota_and_cost() {
        let cache = DenyCache::new(10);
        let quota = per_minute(1);
        let other = per_minute(2);
        let t0 = Instant::now();
        cache.insert_at(cache.digest("k"), &[quota], 1, t0, denied(1_000), t0, 0);
        cache.insert_at(cache.digest("k"), &[quota], 1, t0, denied(2_000), t0, 0);
        cache.insert_at(cache.digest("k"), &[other], 1, t0, denied(3_000), t0, 0);
        cache.insert_at(cache.digest("k"), &[quota], 2, t0, denied(4_000), t0, 0);
        assert_eq!(cache.lock().len, 3);
        let at = |q: &Quota, cost| {
            cache
                .get(cache.digest("k"), &[*q], cost, t0)
                .map(|d| d.binding().retry_after.as_millis())
        };
        assert_eq!(at(&quota, 1), Some(2_000));
        assert_eq!(at(&other, 1), Some(3_000));
        assert_eq!(at(&quota, 2), Some(4_000));
        assert_eq!(at(&other, 2), None);
        // An expired entry is dropped when looked up.
        let later = t0 + Duration::from_millis(2_500);
        assert_eq!(cache.get(cache.digest("k"), &[quota], 1, later), None);
        assert_eq!(cache.lock().len, 2);
        cache.clear();
        assert_eq!(cache.lock().len, 0);
        assert_eq!(cache.get(cache.digest("k"), &[other], 1, t0), None);
    }

    #[test]
    fn storage_keys_are_hash_tagged() {
        assert_eq!(
            storage_key("traffik", "traffik:api:1.2.3.4:http:GET:/x", Strategy::Gcra),
            "traffik:{api:1.2.3.4:http:GET:/x}:gcra"
        );
        assert_eq!(
            storage_key("p", "other", Strategy::SlidingWindowLog),
            "p:{other}:swl"
        );
    }

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn lua_bounds_are_checked() {
        let quota = Quota::new("100/min".parse().unwrap(), Strategy::TokenBucket).unwrap();
        assert!(check_quota(&quota).is_ok());
        // A period past 2^50 µs (40 years): refused where the scripts use
        // doubles only, taken by the token bucket and the sliding window
        // counter, whose scripts switch to exact integers.
        let rate = crate::Rate::new(1000, Duration::from_secs(86_400 * 365 * 40)).unwrap();
        for strategy in STRATEGIES {
            let quota = Quota::new(rate, strategy).unwrap();
            let exact = matches!(
                strategy,
                Strategy::TokenBucket | Strategy::SlidingWindowCounter
            );
            match check_quota(&quota) {
                Ok(()) => assert!(exact, "{strategy}"),
                Err(Error::Configuration(message)) => {
                    assert!(!exact, "{strategy}: {message}");
                    assert!(message.contains("2^50"), "{message}");
                }
                Err(other) => panic!("{other}"),
            }
        }
        // The documented daily bounds: the token bucket and the sliding
        // window counter take what Quota::new takes (× period ≤ 2^62).
        let daily = |limit: u64, strategy| {
            let rate = crate::Rate::new(limit, Duration::from_secs(86_400)).unwrap();
            Quota::new(rate, strategy).map(|quota| check_quota(&quota).is_ok())
        };
        for strategy in [Strategy::TokenBucket, Strategy::SlidingWindowCounter] {
            assert!(daily(1_000_000, strategy).unwrap());
            assert!(daily(53_375_995, strategy).unwrap());
            assert!(daily(53_375_996, strategy).is_err());
        }
        assert!(daily(10_000_000, Strategy::Gcra).unwrap());
        assert!(daily(10_000_000, Strategy::FixedWindow).unwrap());
        // GCRA's burst × emission interval past 2^50.
        let gcra = Quota::new("1000/day".parse().unwrap(), Strategy::Gcra).unwrap();
        assert!(check_quota(&gcra.with_burst(13_031_248).unwrap()).is_ok());
        assert!(check_quota(&gcra.with_burst(13_031_249).unwrap()).is_err());
    }
}
