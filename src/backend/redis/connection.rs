//! The backend's connection: what it connects to and how it opens a
//! connection (one server, or a Redis Cluster), every command bounded by the
//! response timeout, scripts run through the circuit breaker, and a
//! connection that stopped answering replaced in the background.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, RedisError, RedisFuture, Value};

use super::breaker::Outcome;
use super::cluster::Cluster;
use super::Shared;
use crate::Error;

#[derive(Clone)]
pub(super) enum Target {
    Url(String),
    Client(Box<redis::Client>),
    Cluster(Vec<String>),
}

/// What opening a connection takes: at build, and again to replace a
/// connection that stopped answering.
pub(super) struct Opener {
    pub(super) target: Target,
    pub(super) timeout: Duration,
    pub(super) connect_timeout: Duration,
    /// The backend's prefix, in logs.
    pub(super) prefix: String,
}

impl Opener {
    pub(super) fn describe_target(&self) -> String {
        match &self.target {
            Target::Url(url) => match redis::Client::open(url.as_str()) {
                Ok(client) => client.get_connection_info().addr().to_string(),
                Err(_) => "an invalid URL".to_owned(),
            },
            Target::Client(client) => client.get_connection_info().addr().to_string(),
            Target::Cluster(urls) => format!("a cluster of {} node URL(s)", urls.len()),
        }
    }

    pub(super) async fn open(&self) -> Result<Conn, Error> {
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

/// The connection in use, and how many times it was replaced.
pub(super) struct Current {
    pub(super) conn: Conn,
    pub(super) generation: u64,
}

/// The connection: one multiplexed connection to a server, or a cluster
/// connection (one per node, see [`cluster`](super::cluster)).
#[derive(Clone)]
pub(super) enum Conn {
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
    pub(super) fn conn(&self) -> Conn {
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
    pub(super) async fn evaluate(
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
    pub(super) async fn bounded<T>(
        &self,
        what: &str,
        command: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, Error> {
        self.attempt(what, command)
            .await
            .map_err(Failure::into_error)
    }
}

pub(super) fn redis_error(what: &str, error: RedisError) -> Error {
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
