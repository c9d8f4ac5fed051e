//! A custom backend: throttle counters in SQLite (through `rusqlite`).
//!
//! `SqliteBackend` implements [`ThrottleBackend`] with the crate's own pure
//! strategy functions: each hit is one SQLite transaction that reads the
//! key's states (one per rate of the throttle), runs
//! [`strategy::decide`] and writes the new states back (an UPSERT), or
//! deletes a rate's row when its new state is as good as fresh. A refused
//! hit changes nothing, so nothing is written. Every strategy works, since
//! [`State`] converts to plain numbers: two integers ([`State::words`]) or,
//! for the sliding window log, a blob of timestamps ([`State::log`]). Each
//! row carries an `expires_at` column; expired rows are deleted every N
//! hits and by a periodic task.
//!
//! ```sh
//! cargo run -p traffik-integrations --example custom_backend              # demo, then keeps serving on PORT (default 3010)
//! cargo run -p traffik-integrations --example custom_backend -- --once    # demo, then exits
//! cargo run -p traffik-integrations --example custom_backend -- --once --db /tmp/traffik.sqlite3   # a file instead of :memory:
//! ```
//!
//! # Blocking work: why `spawn_blocking`
//!
//! rusqlite is synchronous. A decision on an in-memory database takes a few
//! microseconds, but on a file it may wait for the disk (a commit syncs the
//! write-ahead log) or for another process's lock (`busy_timeout`), and a
//! Tokio worker blocked that long stalls every other request scheduled on
//! it. So the connection lives in a `std::sync::Mutex<Connection>` (one
//! connection serialises all decisions of this process, which also makes them
//! atomic with each other) and every decision runs inside
//! `tokio::task::spawn_blocking`. The `BEGIN IMMEDIATE` transaction makes the
//! read-decide-write atomic against *other processes* sharing the file too.
//! For an in-memory-only database you could instead decide inline and answer
//! with `BackendFuture::ready`, as traffik's `InMemoryBackend` does.

#[path = "../../examples/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::{routing::get, Router};
use rusqlite::{params, Connection, TransactionBehavior};
use traffik::backend::{BackendFuture, BoxFuture, Op, ThrottleBackend, Uids};
use traffik::key::{Key, Scope};
use traffik::strategy::{self, Decisions, State};
use traffik::{
    Decision, Error, HttpThrottle, MiddlewareThrottle, Quota, RateLimitHeaders, Strategy,
    ThrottleLayer,
};

/// Every strategy (`Strategy` is `#[non_exhaustive]` and keeps no public list).
const STRATEGIES: [Strategy; 5] = [
    Strategy::TokenBucket,
    Strategy::FixedWindow,
    Strategy::SlidingWindowCounter,
    Strategy::SlidingWindowLog,
    Strategy::Gcra,
];

/// Counters in a SQLite database. Cheap to clone; clones share the
/// connection.
#[derive(Clone)]
pub struct SqliteBackend {
    inner: Arc<Inner>,
}

struct Inner {
    prefix: String,
    persistent: bool,
    conn: Mutex<Connection>,
    /// Hits since the database was opened, to clean up every `cleanup_every`.
    hits: AtomicU64,
    cleanup_every: u64,
    /// The uids of the throttles counting here (shared by the clones), so
    /// that two live throttles with one uid are refused at build.
    uids: Uids,
}

/// The schema: one row per live key and rate (`rate`: its index in the
/// throttle's rates). `w0`/`w1` hold [`State::words`] (as SQLite's signed
/// 64-bit integers, bit for bit), `log` the little-endian timestamps of
/// [`State::log`]; times are microseconds since the Unix epoch, so a
/// file-backed database stays meaningful across restarts and processes.
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS traffik_counters (
        key        TEXT NOT NULL,
        rate       INTEGER NOT NULL,
        w0         INTEGER,
        w1         INTEGER,
        log        BLOB,
        expires_at INTEGER NOT NULL,
        PRIMARY KEY (key, rate)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS traffik_counters_expires_at
        ON traffik_counters (expires_at);
";

impl SqliteBackend {
    /// Opens (or creates) the database at `path` (`":memory:"` for a private
    /// in-memory one) and initializes the backend: a non-persistent backend
    /// starts empty.
    pub async fn open(
        path: impl Into<PathBuf>,
        prefix: &str,
        persistent: bool,
    ) -> Result<SqliteBackend, Error> {
        let path = path.into();
        let conn = tokio::task::spawn_blocking(move || -> rusqlite::Result<Connection> {
            let conn = Connection::open(&path)?;
            // Wait up to 1 s for another process's write lock, then fail
            // (the throttle's failure mode decides what happens next).
            conn.busy_timeout(Duration::from_secs(1))?;
            // WAL: readers never block the writer; NORMAL sync is durable
            // enough for counters and much faster than FULL.
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.execute_batch(SCHEMA)?;
            Ok(conn)
        })
        .await
        .map_err(|e| Error::backend(format!("opening the SQLite database: {e}")))?
        .map_err(|e| sql_error("opening the SQLite database", e))?;
        let backend = SqliteBackend {
            inner: Arc::new(Inner {
                prefix: prefix.to_owned(),
                persistent,
                conn: Mutex::new(conn),
                hits: AtomicU64::new(0),
                cleanup_every: 1_000,
                uids: Uids::new(),
            }),
        };
        // As the contract asks of `connect`/`build`: initialize now, not
        // lazily on the first hit.
        backend.initialize().await?;
        Ok(backend)
    }

    /// Deletes the rows of expired keys (of every prefix); returns how many.
    pub async fn purge_expired(&self) -> Result<usize, Error> {
        self.blocking(|inner| {
            let conn = inner.lock();
            conn.execute(
                "DELETE FROM traffik_counters WHERE expires_at <= ?1",
                [now_micros() as i64],
            )
        })
        .await
    }

    /// Rows of this backend's prefix: `(key, w0, w1, log entries, expires in)`,
    /// for the demo.
    pub async fn rows(&self) -> Result<Vec<(String, i64, i64, usize, Duration)>, Error> {
        self.blocking(|inner| {
            let conn = inner.lock();
            let (low, high) = inner.key_range();
            let mut statement = conn.prepare(
                "SELECT key || '#' || rate, coalesce(w0, 0), coalesce(w1, 0), length(log),
                        expires_at
                 FROM traffik_counters WHERE key >= ?1 AND key < ?2 ORDER BY key, rate",
            )?;
            let now = now_micros() as i64;
            let rows = statement.query_map([low, high], |row| {
                let log_bytes: Option<i64> = row.get(3)?;
                let expires_at: i64 = row.get(4)?;
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    log_bytes.unwrap_or(0) as usize / 8,
                    Duration::from_micros(expires_at.saturating_sub(now).max(0) as u64),
                ))
            })?;
            rows.collect()
        })
        .await
    }

    /// Runs `work` on Tokio's blocking pool.
    async fn blocking<T, F>(&self, work: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> rusqlite::Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|e| Error::backend(format!("SQLite task failed: {e}")))?
            .map_err(|e| sql_error("SQLite", e))
    }

    /// A hit of `cost` on `key` for one rate, for code that calls the
    /// backend itself.
    pub async fn hit(&self, key: &Key<'_>, quota: &Quota, cost: u64) -> Result<Decision, Error> {
        let decisions = self.decide(key, &[*quota], cost, Op::Hit).await?;
        Ok(decisions.binding())
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-written
        // decision behind: the transaction rolls back when dropped.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `[low, high)` covering every key starting with `{prefix}:` (`;` is
    /// the character after `:`), so that `reset` uses the primary key index.
    fn key_range(&self) -> (String, String) {
        (format!("{}:", self.prefix), format!("{};", self.prefix))
    }

    /// One decision for every rate of `quotas`: SELECT the states, decide,
    /// UPSERT (or DELETE) — in one `BEGIN IMMEDIATE` transaction unless
    /// peeking.
    fn decide(
        &self,
        key: &str,
        quotas: &[Quota],
        cost: u64,
        op: Op,
    ) -> rusqlite::Result<Decisions> {
        let now = now_micros();
        let at = Duration::from_micros(now);
        let mut conn = self.lock();
        if op == Op::Peek {
            let mut states = load(&conn, key, quotas.len(), now)?;
            return Ok(strategy::decide(quotas, &mut states, at, cost, op));
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut states = load(&tx, key, quotas.len(), now)?;
        let decisions = strategy::decide(quotas, &mut states, at, cost, op);
        // A refused hit leaves every state as it was: nothing to write.
        if op != Op::Hit || decisions.binding().allowed {
            for (rate, (state, decision)) in states.iter().zip(decisions.iter()).enumerate() {
                // A rate's state is as good as fresh once its quota is
                // full again (`reset_after`).
                let expires_at = now + decision.reset_after.as_micros() as u64;
                if expires_at > now {
                    let (w0, w1, log) = encode(state);
                    tx.prepare_cached(
                        "INSERT INTO traffik_counters (key, rate, w0, w1, log, expires_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT (key, rate) DO UPDATE SET
                             w0 = excluded.w0, w1 = excluded.w1, log = excluded.log,
                             expires_at = excluded.expires_at",
                    )?
                    .execute(params![
                        key,
                        rate as i64,
                        w0,
                        w1,
                        log,
                        expires_at as i64
                    ])?;
                } else {
                    // The new state is equivalent to a fresh one: no row needed.
                    tx.prepare_cached("DELETE FROM traffik_counters WHERE key = ?1 AND rate = ?2")?
                        .execute(params![key, rate as i64])?;
                }
            }
        }
        tx.commit()?;
        // Every N hits, reclaim expired rows (cheap: an index range scan).
        if self.hits.fetch_add(1, Ordering::Relaxed) % self.cleanup_every == self.cleanup_every - 1
        {
            conn.prepare_cached("DELETE FROM traffik_counters WHERE expires_at <= ?1")?
                .execute([now as i64])?;
        }
        Ok(decisions)
    }
}

/// The stored states of `key`'s first `rates` rates, fresh ones where
/// absent or expired.
fn load(conn: &Connection, key: &str, rates: usize, now: u64) -> rusqlite::Result<Vec<State>> {
    let mut states = vec![State::new(); rates];
    let mut statement = conn.prepare_cached(
        "SELECT rate, w0, w1, log FROM traffik_counters
         WHERE key = ?1 AND rate < ?2 AND expires_at > ?3",
    )?;
    let rows = statement.query_map(params![key, rates as i64, now as i64], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, Option<i64>>(1)?,
            row.get::<_, Option<i64>>(2)?,
            row.get::<_, Option<Vec<u8>>>(3)?,
        ))
    })?;
    for row in rows {
        let (rate, w0, w1, log) = row?;
        states[rate as usize] = match (w0, w1, log) {
            (Some(w0), Some(w1), _) => State::from_words([w0 as u64, w1 as u64]),
            (_, _, Some(log)) => State::from_log(
                log.chunks_exact(8)
                    .map(|b| u64::from_le_bytes(b.try_into().expect("8-byte chunk"))),
            ),
            _ => State::new(),
        };
    }
    Ok(states)
}

/// `(w0, w1, log)` columns for a state. The `as i64` casts keep all 64 bits
/// (the sliding window counter packs two 32-bit counts in one word).
fn encode(state: &State) -> (Option<i64>, Option<i64>, Option<Vec<u8>>) {
    if let Some([w0, w1]) = state.words() {
        return (Some(w0 as i64), Some(w1 as i64), None);
    }
    let log = state
        .log()
        .map(|log| log.iter().flat_map(|t| t.to_le_bytes()).collect());
    (None, None, log)
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

fn sql_error(context: &str, error: rusqlite::Error) -> Error {
    Error::backend_with_source(format!("{context}: {error}"), error)
}

impl ThrottleBackend for SqliteBackend {
    fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    fn decide(&self, key: &Key<'_>, quotas: &[Quota], cost: u64, op: Op) -> BackendFuture {
        let (this, key, quotas) = (self.clone(), key.text(self.prefix()), quotas.to_vec());
        BackendFuture::new(async move {
            this.blocking(move |inner| inner.decide(&key, &quotas, cost, op))
                .await
        })
    }

    fn reset(&self) -> BoxFuture<Result<(), Error>> {
        let this = self.clone();
        Box::pin(async move {
            this.blocking(|inner| {
                let (low, high) = inner.key_range();
                inner.lock().execute(
                    "DELETE FROM traffik_counters WHERE key >= ?1 AND key < ?2",
                    [low, high],
                )
            })
            .await
            .map(drop)
        })
    }

    fn persistent(&self) -> bool {
        self.inner.persistent
    }

    fn uids(&self) -> Option<&Uids> {
        Some(&self.inner.uids)
    }
    // `initialize` and `close` keep the trait's defaults: clear the prefix
    // when not persistent, nothing otherwise.
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let db = args
        .iter()
        .position(|a| a == "--db")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| ":memory:".to_owned());
    println!("SQLite database: {db}");
    let sqlite = SqliteBackend::open(&db, "sqlite-demo", false).await?;

    // Reclaim expired rows periodically as well (every N hits is the other
    // half). The task stops with the process.
    let janitor = sqlite.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(30));
        loop {
            every.tick().await;
            if let Err(error) = janitor.purge_expired().await {
                eprintln!("purge failed: {error}");
            }
        }
    });

    // Per route: a fixed window, 3 requests per 10 seconds per client.
    let fixed = HttpThrottle::builder()
        .uid("fixed")
        .limit(3)
        .seconds(10)
        .strategy(Strategy::FixedWindow)
        .headers(RateLimitHeaders::Ietf)
        .backend(sqlite.clone())
        .build()?;
    // A global rule on /bucket: a token bucket of 2, refilled at 2 per 10 s.
    let bucket = HttpThrottle::builder()
        .uid("bucket")
        .rate("2/10s")
        .strategy(Strategy::TokenBucket)
        .headers(RateLimitHeaders::Ietf)
        .build()?;
    let app = Router::new()
        .route(
            "/fixed",
            get(|| async { "fixed window\n" }).route_layer(fixed.layer()),
        )
        .route("/bucket", get(|| async { "token bucket\n" }))
        .layer(
            ThrottleLayer::new(sqlite.clone())
                .rule(MiddlewareThrottle::new(bucket).path(r"^/bucket$")),
        );

    let server = common::serve(app, 3010).await?;
    let show = ["retry-after", "ratelimit"];
    let fixed_statuses = common::burst(
        server.addr,
        "5 × GET /fixed (FixedWindow 3 per 10 s, stored in SQLite):",
        5,
        "GET",
        "/fixed",
        &[],
        &show,
    )
    .await?;
    let bucket_statuses = common::burst(
        server.addr,
        "4 × GET /bucket (TokenBucket 2 per 10 s, stored in SQLite):",
        4,
        "GET",
        "/bucket",
        &[],
        &show,
    )
    .await?;

    // The demo doubles as a check (`--once` in CI).
    assert_eq!(fixed_statuses, [200, 200, 200, 429, 429]);
    assert_eq!(bucket_statuses, [200, 200, 429, 429]);

    // Every strategy, straight through the backend: exactly the limit
    // admitted, and the refusal says how long to wait.
    println!(
        "
Every strategy on SQLite, 4 hits at 3 per minute:"
    );
    for strategy in STRATEGIES {
        let quota = traffik::Quota::new("3/min".parse()?, strategy)?;
        let key = Key::new("demo", strategy.name(), Scope::shared());
        let mut admitted = Vec::new();
        let mut last = None;
        for _ in 0..4 {
            let decision = sqlite.hit(&key, &quota, 1).await?;
            admitted.push(decision.allowed);
            last = Some(decision);
        }
        let last = last.expect("four hits");
        println!(
            "{:<24} {admitted:?}, then retry after {:.1?}",
            strategy.name(),
            last.retry_after
        );
        assert_eq!(admitted, [true, true, true, false], "{strategy}");
        assert!(
            last.retry_after > Duration::ZERO && last.retry_after <= Duration::from_secs(60),
            "{strategy}: {:?}",
            last.retry_after
        );
    }

    println!("\nRows in traffik_counters:");
    println!(
        "{:<52} {:>18} {:>18} {:>4} expires in",
        "key", "w0", "w1", "log"
    );
    for (key, w0, w1, log, expires_in) in sqlite.rows().await? {
        println!("{key:<52} {w0:>18} {w1:>18} {log:>4} {expires_in:.1?}");
    }
    println!("expired rows purged now: {}", sqlite.purge_expired().await?);

    server.finish().await?;
    // Not persistent: close() clears this prefix's rows.
    sqlite.close().await?;
    Ok(())
}
