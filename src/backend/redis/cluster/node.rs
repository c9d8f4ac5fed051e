//! A node of the cluster: its one multiplexed connection, opened on first
//! use, and the node failing its commands at once while it cannot be
//! reached (a broken connection, or silence for a whole timeout) and a task
//! reconnects it.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, ConnectionInfo, RedisError, RedisResult};

use super::Router;

/// A node that cannot be reached is tried again after this, then twice as
/// late each time up to [`RECONNECT_MAX`]; each try also reads the slot map
/// again, so that a replica taking over its slots is seen within that.
const RECONNECT_FIRST: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_millis(200);

pub(super) struct Node {
    pub(super) host: String,
    pub(super) port: u16,
    info: ConnectionInfo,
    link: Mutex<Link>,
    /// Numbers the connections opened to the node: an error on a connection
    /// already replaced says nothing of the current one.
    generations: AtomicU64,
    /// A reconnection task is running.
    reconnecting: AtomicBool,
    /// When the node last answered a command ([`now_us`]).
    heard: AtomicU64,
}

type Connecting = Shared<BoxFuture<'static, Result<(MultiplexedConnection, u64), RedisError>>>;

pub(super) enum Link {
    /// Never connected: the first command connects.
    Idle,
    /// Being connected: commands wait for it (within their timeout).
    Connecting(Connecting),
    Up(MultiplexedConnection, u64),
    /// Unreachable, and why: commands fail at once while a task reconnects.
    Down(String),
}

impl Node {
    pub(super) fn new(info: ConnectionInfo, host: &str, port: u16) -> Node {
        Node {
            host: host.to_owned(),
            port,
            info,
            link: Mutex::new(Link::Idle),
            generations: AtomicU64::new(0),
            reconnecting: AtomicBool::new(false),
            heard: AtomicU64::new(0),
        }
    }

    pub(super) fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection if it is up.
    pub(super) fn connected(&self) -> Option<(MultiplexedConnection, u64)> {
        match &*self.lock() {
            Link::Up(conn, generation) => Some((conn.clone(), *generation)),
            _ => None,
        }
    }

    /// Starts connecting a node never connected.
    pub(super) fn warm(self: &Arc<Self>, router: &Arc<Router>) {
        let mut link = self.lock();
        if matches!(*link, Link::Idle) {
            *link = Link::Connecting(self.start_connecting(router));
        }
    }

    /// The connection to use: at once if up, after the connection under way,
    /// or an error at once if the node cannot be reached.
    pub(super) async fn connection(
        self: &Arc<Self>,
        router: &Arc<Router>,
    ) -> RedisResult<(MultiplexedConnection, u64)> {
        let connecting = {
            let mut link = self.lock();
            match &*link {
                Link::Up(conn, generation) => return Ok((conn.clone(), *generation)),
                Link::Down(why) => return Err(self.unreachable(why)),
                Link::Connecting(connecting) => connecting.clone(),
                Link::Idle => {
                    let connecting = self.start_connecting(router);
                    *link = Link::Connecting(connecting.clone());
                    connecting
                }
            }
        };
        connecting.await
    }

    /// The first connection to the node, driven by a task of its own (a
    /// command that stops waiting does not stop it).
    fn start_connecting(self: &Arc<Self>, router: &Arc<Router>) -> Connecting {
        let node = Arc::clone(self);
        let weak = Arc::downgrade(router);
        let (connect_timeout, timeout) = (router.connect_timeout, router.timeout);
        let connecting = async move {
            let result = connect(&node.info, connect_timeout, timeout).await;
            match result {
                Ok(conn) => {
                    let generation = node.generations.fetch_add(1, Ordering::Relaxed) + 1;
                    *node.lock() = Link::Up(conn.clone(), generation);
                    Ok((conn, generation))
                }
                Err(error) => {
                    *node.lock() = Link::Down(error.to_string());
                    if let Some(router) = weak.upgrade() {
                        node.reconnect(&router);
                    }
                    Err(node.unreachable(&error.to_string()))
                }
            }
        }
        .boxed()
        .shared();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(connecting.clone().map(drop));
        }
        connecting
    }

    /// Marks the node unreachable, if `generation` is still its connection:
    /// commands on its slots fail at once while a task reconnects it and
    /// reads the slot map again.
    fn mark_down(self: &Arc<Self>, router: &Arc<Router>, generation: u64, why: String) {
        {
            let mut link = self.lock();
            if !matches!(*link, Link::Up(_, current) if current == generation) {
                return;
            }
            tracing::warn!(
                prefix = router.name.as_str(),
                node = %self.address(),
                failure = %why,
                "traffik: a Redis Cluster node cannot be reached; hits on its slots fail at once \
                 until it answers again or a replica takes them over"
            );
            *link = Link::Down(why);
        }
        router.request_refresh();
        self.reconnect(router);
    }

    /// Reconnects the node in the background, reading the slot map again at
    /// each try, until it answers or leaves the map.
    fn reconnect(self: &Arc<Self>, router: &Arc<Router>) {
        if self.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.reconnecting.store(false, Ordering::Release);
            return;
        };
        let node = Arc::clone(self);
        let weak = Arc::downgrade(router);
        runtime.spawn(async move {
            let mut pause = RECONNECT_FIRST;
            loop {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RECONNECT_MAX);
                let Some(router) = weak.upgrade() else {
                    break;
                };
                router.request_refresh();
                if !router.holds(&node) {
                    // Its slots have a new master: nothing routes to it.
                    break;
                }
                let (connect_timeout, timeout) = (router.connect_timeout, router.timeout);
                let name = router.name.clone();
                drop(router);
                match connect(&node.info, connect_timeout, timeout).await {
                    Ok(conn) => {
                        let generation = node.generations.fetch_add(1, Ordering::Relaxed) + 1;
                        *node.lock() = Link::Up(conn, generation);
                        tracing::info!(
                            prefix = name.as_str(),
                            node = %node.address(),
                            "traffik: a Redis Cluster node answers again"
                        );
                        break;
                    }
                    Err(error) => *node.lock() = Link::Down(error.to_string()),
                }
            }
            node.reconnecting.store(false, Ordering::Release);
        });
    }

    /// The error of a command sent to an unreachable node: a refused
    /// connection, made without a round trip.
    fn unreachable(&self, why: &str) -> RedisError {
        RedisError::from(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!(
                "Redis Cluster node {} cannot be reached ({why}); its slots fail at once \
                 until it answers again or a replica takes them over",
                self.address()
            ),
        ))
    }
}

/// Microseconds since the first use, for the nodes' last answers.
fn now_us() -> u64 {
    static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);
    ORIGIN.elapsed().as_micros() as u64
}

/// A command sent to a node, until it is answered or abandoned. It notes
/// the node's answers, and marks the node unreachable when its connection
/// broke (an I/O error: not a timeout, not an error answer), or when the
/// command waited about a whole timeout (the backend's own timeout drops it
/// then) while the node answered nothing at all: a node that stopped
/// answering, whose connection stays open (a host gone silent, a dead NAT
/// entry), which the client never closes by itself.
pub(super) struct Flight<'a> {
    router: &'a Arc<Router>,
    node: &'a Arc<Node>,
    generation: u64,
    sent: u64,
    landed: bool,
}

impl<'a> Flight<'a> {
    pub(super) fn new(router: &'a Arc<Router>, node: &'a Arc<Node>, generation: u64) -> Flight<'a> {
        Flight {
            router,
            node,
            generation,
            sent: now_us(),
            landed: false,
        }
    }

    pub(super) fn land<T>(mut self, reply: &RedisResult<T>) {
        self.landed = true;
        match reply {
            Ok(_) => self.node.heard.store(now_us(), Ordering::Relaxed),
            Err(error) if error.is_timeout() => self.check_silence(),
            Err(error) if error.is_io_error() => {
                self.node
                    .mark_down(self.router, self.generation, error.to_string())
            }
            Err(_) => {}
        }
    }

    fn check_silence(&self) {
        let waited = now_us().saturating_sub(self.sent);
        let timeout = self.router.timeout.as_micros() as u64;
        if waited >= timeout - timeout / 10 && self.node.heard.load(Ordering::Relaxed) < self.sent {
            self.node.mark_down(
                self.router,
                self.generation,
                format!(
                    "no answer to anything for {:?}",
                    Duration::from_micros(waited)
                ),
            );
        }
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        if !self.landed {
            self.check_silence();
        }
    }
}

/// Opens a connection and checks it with `PING`.
pub(super) async fn connect(
    info: &ConnectionInfo,
    connect_timeout: Duration,
    timeout: Duration,
) -> RedisResult<MultiplexedConnection> {
    let client = redis::Client::open(info.clone())?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(timeout));
    let open = async {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        conn.req_packed_command(&redis::cmd("PING"))
            .await?
            .extract_error()?;
        Ok(conn)
    };
    tokio::time::timeout(connect_timeout + timeout, open)
        .await
        .unwrap_or_else(|_| {
            Err(RedisError::from(io::Error::new(
                io::ErrorKind::TimedOut,
                "no connection within the connect timeout",
            )))
        })
}
