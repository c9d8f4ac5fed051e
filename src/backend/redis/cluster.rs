//! The Redis Cluster connection of the Redis backend: one multiplexed
//! connection per node, each command sent to the master of its key's slot,
//! `MOVED` and `ASK` followed per command, and the slot map refreshed in the
//! background.
//!
//! The `redis` crate's own cluster client (`cluster_async`) is not used: it
//! stops polling the commands in flight while it refreshes its slot map, and
//! the refresh waits for a lock that such a command can hold (a task out of
//! its cooperative budget keeps a lock permit it has taken, since tokio
//! 1.54). Under load a topology change (a failover, the end of a reshard)
//! then stalled every command on every slot until the connection was
//! dropped: one backend timeout. Here nothing waits for a refresh: a command
//! follows its redirect at once, and a refresh swaps the map when it is done.
//!
//! A node whose connection breaks (a crashed master) fails the commands on
//! its own slots at once, without a round trip, while it is reconnected in
//! the background and the slot map is read again until a replica has taken
//! its slots over; the other nodes are not affected.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{
    Arg, AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};
use tokio::sync::Notify;

/// Hash slots of a Redis Cluster.
const SLOTS: usize = 16_384;
/// A slot no known master serves.
const UNSERVED: u16 = u16::MAX;
/// Redirects and retries one command follows at most.
const MAX_ATTEMPTS: u32 = 16;
/// Slot map refreshes are at least this far apart: during a failover every
/// command on the moved slots answers `MOVED` until the new map is in.
const REFRESH_GAP: Duration = Duration::from_millis(20);
/// A node that cannot be reached is tried again after this, then twice as
/// late each time up to [`RECONNECT_MAX`]; each try also reads the slot map
/// again, so that a replica taking over its slots is seen within that.
const RECONNECT_FIRST: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_millis(200);

/// A Redis Cluster connection (cheap to clone: the clones share it).
#[derive(Clone)]
pub(super) struct Cluster {
    router: Arc<Router>,
}

/// A node of the cluster, for commands sent to it by address (`SCAN` on
/// each master during a reset).
pub(super) struct NodeHandle(Arc<Node>);

impl NodeHandle {
    pub(super) fn address(&self) -> String {
        self.0.address()
    }
}

struct Router {
    /// The nodes given at build, asked for the slot map when no known node
    /// answers.
    seeds: Vec<ConnectionInfo>,
    timeout: Duration,
    connect_timeout: Duration,
    topology: RwLock<Arc<Topology>>,
    /// Nodes a redirect named that the slot map does not list (yet).
    strays: Mutex<HashMap<(String, u16), Arc<Node>>>,
    /// Wakes the refresh task.
    refresh: Arc<Notify>,
    /// Where the next refresh asks first (the nodes take turns).
    turn: AtomicUsize,
    /// The backend's prefix, in logs.
    name: String,
}

impl Drop for Router {
    fn drop(&mut self) {
        // Lets the refresh task see that the connection is gone, and end.
        self.refresh.notify_one();
    }
}

/// The slot map: which master serves each slot, and the replicas.
struct Topology {
    /// An index into `masters` per slot, or [`UNSERVED`].
    slots: Box<[u16]>,
    masters: Vec<Arc<Node>>,
    replicas: Vec<Arc<Node>>,
}

struct Node {
    host: String,
    port: u16,
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

enum Link {
    /// Never connected: the first command connects.
    Idle,
    /// Being connected: commands wait for it (within their timeout).
    Connecting(Connecting),
    Up(MultiplexedConnection, u64),
    /// Unreachable, and why: commands fail at once while a task reconnects.
    Down(String),
}

/// Where a command goes.
enum Target {
    /// The master of a slot.
    Slot(u16),
    /// Any master (a command on no key).
    AnyMaster,
    /// Every node, masters and replicas (`SCRIPT LOAD`, `SCRIPT FLUSH`):
    /// a replica that becomes a master has the scripts already.
    AllNodes,
}

impl Cluster {
    /// Connects through the first of `urls` that answers with a slot map,
    /// then to every master.
    pub(super) async fn connect(
        urls: &[String],
        timeout: Duration,
        connect_timeout: Duration,
        name: &str,
    ) -> Result<Cluster, crate::Error> {
        let mut seeds = Vec::with_capacity(urls.len());
        for url in urls {
            let info = url.as_str().into_connection_info().map_err(|e| {
                crate::Error::configuration(format!(
                    "invalid Redis Cluster URL for RedisBackend: {e}"
                ))
            })?;
            if !matches!(
                info.addr(),
                ConnectionAddr::Tcp(..) | ConnectionAddr::TcpTls { .. }
            ) {
                return Err(crate::Error::configuration(
                    "Redis Cluster nodes are reached over TCP (redis:// or rediss:// URLs)",
                ));
            }
            seeds.push(info);
        }
        let refresh = Arc::new(Notify::new());
        let router = Arc::new(Router {
            seeds,
            timeout,
            connect_timeout,
            topology: RwLock::new(Arc::new(Topology {
                slots: vec![UNSERVED; SLOTS].into_boxed_slice(),
                masters: Vec::new(),
                replicas: Vec::new(),
            })),
            strays: Mutex::new(HashMap::new()),
            refresh: Arc::clone(&refresh),
            turn: AtomicUsize::new(0),
            name: name.to_owned(),
        });
        router.refresh().await.map_err(|e| {
            crate::Error::backend_with_source("could not read the Redis Cluster's slot map", e)
        })?;
        // Connect to every master now: the first hits find them ready. A
        // master down (or silent) at build fails its own slots until a
        // replica takes over, like one down later, and is not waited for
        // past half the connect timeout; none reachable is an error.
        let masters = router.topology().masters.clone();
        let connect_all =
            futures_util::future::join_all(masters.iter().map(|node| node.connection(&router)));
        if let Ok(connected) = tokio::time::timeout(connect_timeout / 2, connect_all).await {
            if connected.iter().all(Result::is_err) {
                if let Some(Err(error)) = connected.into_iter().next() {
                    return Err(crate::Error::backend_with_source(
                        "could not connect to any Redis Cluster master",
                        error,
                    ));
                }
            }
        }
        tokio::spawn(refresh_task(Arc::downgrade(&router), refresh));
        Ok(Cluster { router })
    }

    /// The masters, as the slot map knows them.
    pub(super) fn masters(&self) -> Vec<NodeHandle> {
        self.router
            .topology()
            .masters
            .iter()
            .map(|node| NodeHandle(Arc::clone(node)))
            .collect()
    }

    /// Sends a command to one node (no redirect followed).
    pub(super) async fn on_node(&self, node: &NodeHandle, cmd: &Cmd) -> RedisResult<Value> {
        self.router.send(&node.0, cmd).await
    }
}

impl ConnectionLike for Cluster {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(self.router.execute(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            // The whole pipeline goes where its first command on a key goes
            // (its keys must share a slot); redirects are not followed.
            let target = pipeline
                .cmd_iter()
                .map(target_of)
                .find(|target| matches!(target, Target::Slot(_)))
                .unwrap_or(Target::AnyMaster);
            let node = match target {
                Target::Slot(slot) => self.router.master_of(slot)?,
                _ => self.router.any_master()?,
            };
            let (mut conn, generation) = node.connection(&self.router).await?;
            let flight = Flight::new(&self.router, &node, generation);
            let reply = conn.req_packed_commands(pipeline, offset, count).await;
            flight.land(&reply);
            reply
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

impl Router {
    fn topology(&self) -> Arc<Topology> {
        Arc::clone(&self.topology.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn request_refresh(&self) {
        self.refresh.notify_one();
    }

    fn master_of(&self, slot: u16) -> RedisResult<Arc<Node>> {
        let topology = self.topology();
        match topology.slots[usize::from(slot)] {
            UNSERVED => {
                self.request_refresh();
                Err(RedisError::from((
                    ErrorKind::Server(ServerErrorKind::ClusterDown),
                    "no known Redis Cluster master serves the slot",
                    format!("slot {slot}"),
                )))
            }
            index => Ok(Arc::clone(&topology.masters[usize::from(index)])),
        }
    }

    /// A master for a command on no key: a connected one if any.
    fn any_master(&self) -> RedisResult<Arc<Node>> {
        let topology = self.topology();
        let reachable = topology
            .masters
            .iter()
            .find(|node| !matches!(*node.lock(), Link::Down(_)));
        reachable
            .or_else(|| topology.masters.first())
            .cloned()
            .ok_or_else(|| {
                RedisError::from((
                    ErrorKind::ClusterConnectionNotFound,
                    "the Redis Cluster's slot map has no master",
                ))
            })
    }

    /// The node at `host:port`: from the slot map, else one a redirect named
    /// before, else a new one.
    fn node_at(&self, host: &str, port: u16) -> Arc<Node> {
        let topology = self.topology();
        let known = topology
            .masters
            .iter()
            .chain(&topology.replicas)
            .find(|node| node.host == host && node.port == port);
        if let Some(node) = known {
            return Arc::clone(node);
        }
        let mut strays = self.strays.lock().unwrap_or_else(PoisonError::into_inner);
        let node = strays
            .entry((host.to_owned(), port))
            .or_insert_with(|| Arc::new(Node::new(self.node_info(host, port), host, port)));
        Arc::clone(node)
    }

    /// How to reach `host:port`: the first seed's settings (user, password,
    /// TLS, protocol) at that address.
    fn node_info(&self, host: &str, port: u16) -> ConnectionInfo {
        let seed = &self.seeds[0];
        let addr = match seed.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        seed.clone().set_addr(addr)
    }

    /// Whether the slot map (or a redirect) still names `node`.
    fn holds(&self, node: &Arc<Node>) -> bool {
        let topology = self.topology();
        let listed = topology
            .masters
            .iter()
            .chain(&topology.replicas)
            .any(|known| Arc::ptr_eq(known, node));
        listed
            || self
                .strays
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .any(|known| Arc::ptr_eq(known, node))
    }

    /// Runs a command where it belongs.
    async fn execute(self: &Arc<Self>, cmd: &Cmd) -> RedisResult<Value> {
        match target_of(cmd) {
            Target::Slot(slot) => self.execute_on_slot(cmd, slot).await,
            Target::AnyMaster => {
                let node = self.any_master()?;
                self.send(&node, cmd).await
            }
            Target::AllNodes => self.broadcast(cmd).await,
        }
    }

    /// Sends a command on a key to its slot's master, following `MOVED` and
    /// `ASK`, and retrying (a little later) a command the node refused for
    /// now (`TRYAGAIN`, `LOADING`, a write to a master just demoted). Never
    /// retried: a command that may have run (its connection broke, or it
    /// timed out), and one refused because the cluster is down.
    async fn execute_on_slot(self: &Arc<Self>, cmd: &Cmd, slot: u16) -> RedisResult<Value> {
        let mut node = self.master_of(slot)?;
        let mut asking = false;
        let mut pause = Duration::from_millis(5);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (mut conn, generation) = node.connection(self).await?;
            let flight = Flight::new(self, &node, generation);
            let reply = if asking {
                let mut pipeline = redis::pipe();
                pipeline.cmd("ASKING").add_command(cmd.clone());
                // ASKING's own refusal (an ACL without it) is the answer.
                conn.req_packed_commands(&pipeline, 0, 2)
                    .await
                    .map(|values| {
                        let mut values = values.into_iter();
                        match (values.next(), values.next()) {
                            (Some(Value::ServerError(error)), _) => Value::ServerError(error),
                            (_, Some(value)) => value,
                            _ => Value::Nil,
                        }
                    })
            } else {
                conn.req_packed_command(cmd).await
            };
            flight.land(&reply);
            let error = match reply? {
                Value::ServerError(error) => error,
                value => return Ok(value),
            };
            let kind = error.kind();
            if attempt >= MAX_ATTEMPTS {
                return Ok(Value::ServerError(error));
            }
            match kind {
                Some(ServerErrorKind::Moved | ServerErrorKind::Ask) => {
                    let moved = kind == Some(ServerErrorKind::Moved);
                    let Some((host, port)) = redirect_address(error.details(), &node.host) else {
                        return Ok(Value::ServerError(error));
                    };
                    if moved {
                        // The whole map may have changed (a failover, the
                        // end of a slot's migration).
                        self.request_refresh();
                    }
                    node = self.node_at(&host, port);
                    asking = !moved;
                }
                Some(ServerErrorKind::ClusterDown | ServerErrorKind::MasterDown) => {
                    // A master failed and no replica has taken over yet
                    // (with `cluster-require-full-coverage yes`, every node
                    // refuses every slot meanwhile): answered at once, for
                    // the failure mode to decide, not retried until the
                    // timeout.
                    self.request_refresh();
                    return Ok(Value::ServerError(error));
                }
                Some(
                    ServerErrorKind::TryAgain
                    | ServerErrorKind::BusyLoading
                    | ServerErrorKind::ReadOnly,
                ) => {
                    if kind == Some(ServerErrorKind::ReadOnly) {
                        // A master just demoted: the map is stale.
                        self.request_refresh();
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                    node = self.master_of(slot)?;
                    asking = false;
                }
                _ => return Ok(Value::ServerError(error)),
            }
        }
    }

    /// Sends a command to one node.
    async fn send(self: &Arc<Self>, node: &Arc<Node>, cmd: &Cmd) -> RedisResult<Value> {
        let (mut conn, generation) = node.connection(self).await?;
        let flight = Flight::new(self, node, generation);
        let reply = conn.req_packed_command(cmd).await;
        flight.land(&reply);
        reply
    }

    /// Sends a command to every node that can be reached, and answers with
    /// a master's reply: an error if a master answered with one, or if no
    /// master could be reached. Replicas that fail are ignored.
    async fn broadcast(self: &Arc<Self>, cmd: &Cmd) -> RedisResult<Value> {
        let topology = self.topology();
        let sends = topology
            .masters
            .iter()
            .chain(&topology.replicas)
            .map(|node| async move {
                if matches!(*node.lock(), Link::Down(_)) {
                    return None;
                }
                Some(
                    tokio::time::timeout(self.timeout, self.send(node, cmd))
                        .await
                        .unwrap_or_else(|_| {
                            Err(RedisError::from(io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!("Redis Cluster node {} did not answer", node.address()),
                            )))
                        }),
                )
            });
        let replies = futures_util::future::join_all(sends).await;
        let mut answer = None;
        let mut failure = None;
        for reply in replies.into_iter().take(topology.masters.len()).flatten() {
            match reply {
                Ok(Value::ServerError(error)) => return Ok(Value::ServerError(error)),
                Ok(value) => {
                    answer.get_or_insert(value);
                }
                Err(error) => failure = Some(error),
            }
        }
        match (answer, failure) {
            (Some(value), _) => Ok(value),
            (None, Some(error)) => Err(error),
            (None, None) => Err(RedisError::from((
                ErrorKind::ClusterConnectionNotFound,
                "no Redis Cluster master can be reached",
            ))),
        }
    }

    /// Reads the slot map from a node that answers (the known nodes in
    /// turn, then the seeds) and installs it.
    async fn refresh(self: &Arc<Self>) -> RedisResult<()> {
        let topology = self.topology();
        let known: Vec<&Arc<Node>> = topology.masters.iter().chain(&topology.replicas).collect();
        let first = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut failure = None;
        for i in 0..known.len() {
            let node = known[(first + i) % known.len()];
            let Some((mut conn, _)) = node.connected() else {
                continue;
            };
            match self.read_slots(&mut conn, &node.host).await {
                Ok(ranges) => return self.install(ranges),
                Err(error) => failure = Some(error),
            }
        }
        for seed in &self.seeds {
            let host = match seed.addr() {
                ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host.clone(),
                _ => continue,
            };
            let read = async {
                let mut conn = connect(seed, self.connect_timeout, self.timeout).await?;
                self.read_slots(&mut conn, &host).await
            };
            match read.await {
                Ok(ranges) => return self.install(ranges),
                Err(error) => failure = Some(error),
            }
        }
        Err(failure.unwrap_or_else(|| {
            RedisError::from((
                ErrorKind::ClusterConnectionNotFound,
                "no Redis Cluster node to read the slot map from",
            ))
        }))
    }

    async fn read_slots(
        &self,
        conn: &mut MultiplexedConnection,
        host: &str,
    ) -> RedisResult<Vec<SlotRange>> {
        let mut command = redis::cmd("CLUSTER");
        command.arg("SLOTS");
        let value = tokio::time::timeout(self.timeout, conn.req_packed_command(&command))
            .await
            .unwrap_or_else(|_| {
                Err(RedisError::from(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no answer to CLUSTER SLOTS",
                )))
            })?
            .extract_error()?;
        let ranges = parse_slots(&value, host)?;
        if ranges.is_empty() {
            return Err(RedisError::from((
                ErrorKind::Server(ServerErrorKind::ClusterDown),
                "CLUSTER SLOTS listed no slot",
            )));
        }
        Ok(ranges)
    }

    /// Replaces the slot map, keeping the nodes (and connections) it had.
    fn install(self: &Arc<Self>, ranges: Vec<SlotRange>) -> RedisResult<()> {
        let old = self.topology();
        let mut strays = self.strays.lock().unwrap_or_else(PoisonError::into_inner);
        let mut known: HashMap<(String, u16), Arc<Node>> = old
            .masters
            .iter()
            .chain(&old.replicas)
            .map(|node| ((node.host.clone(), node.port), Arc::clone(node)))
            .collect();
        for (address, node) in strays.drain() {
            known.entry(address).or_insert(node);
        }
        drop(strays);
        let mut node = |host: &str, port: u16| {
            Arc::clone(
                known
                    .entry((host.to_owned(), port))
                    .or_insert_with(|| Arc::new(Node::new(self.node_info(host, port), host, port))),
            )
        };
        let mut slots = vec![UNSERVED; SLOTS].into_boxed_slice();
        let mut masters: Vec<Arc<Node>> = Vec::new();
        let mut replicas: Vec<Arc<Node>> = Vec::new();
        for range in &ranges {
            let master = node(&range.master.0, range.master.1);
            let index = match masters.iter().position(|m| Arc::ptr_eq(m, &master)) {
                Some(index) => index,
                None => {
                    masters.push(master);
                    masters.len() - 1
                }
            };
            for slot in range.start..=range.end.min(SLOTS as u16 - 1) {
                slots[usize::from(slot)] = index as u16;
            }
            for (host, port) in &range.replicas {
                let replica = node(host, *port);
                if !replicas.iter().any(|r| Arc::ptr_eq(r, &replica)) {
                    replicas.push(replica);
                }
            }
        }
        // A node listed as a master for some slots is no replica.
        replicas.retain(|r| !masters.iter().any(|m| Arc::ptr_eq(m, r)));
        let changed = old.masters.len() != masters.len()
            || old.slots[..] != slots[..]
            || old
                .masters
                .iter()
                .zip(&masters)
                .any(|(a, b)| !Arc::ptr_eq(a, b));
        let topology = Arc::new(Topology {
            slots,
            masters,
            replicas,
        });
        *self
            .topology
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::clone(&topology);
        if changed && !old.masters.is_empty() {
            tracing::info!(
                prefix = self.name.as_str(),
                masters = %topology
                    .masters
                    .iter()
                    .map(|m| m.address())
                    .collect::<Vec<_>>()
                    .join(","),
                "traffik: the Redis Cluster's slot map changed"
            );
        }
        // New masters are connected now, not by the first hit on them.
        for master in &topology.masters {
            master.warm(self);
        }
        Ok(())
    }
}

/// Reads the slot map again whenever asked, at most every [`REFRESH_GAP`];
/// ends with the connection.
async fn refresh_task(router: Weak<Router>, refresh: Arc<Notify>) {
    loop {
        refresh.notified().await;
        let Some(router) = router.upgrade() else {
            return;
        };
        if let Err(error) = router.refresh().await {
            tracing::debug!(
                prefix = router.name.as_str(),
                %error,
                "traffik: could not read the Redis Cluster's slot map"
            );
        }
        drop(router);
        tokio::time::sleep(REFRESH_GAP).await;
    }
}

impl Node {
    fn new(info: ConnectionInfo, host: &str, port: u16) -> Node {
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

    fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn lock(&self) -> MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection if it is up.
    fn connected(&self) -> Option<(MultiplexedConnection, u64)> {
        match &*self.lock() {
            Link::Up(conn, generation) => Some((conn.clone(), *generation)),
            _ => None,
        }
    }

    /// Starts connecting a node never connected.
    fn warm(self: &Arc<Self>, router: &Arc<Router>) {
        let mut link = self.lock();
        if matches!(*link, Link::Idle) {
            *link = Link::Connecting(self.start_connecting(router));
        }
    }

    /// The connection to use: at once if up, after the connection under way,
    /// or an error at once if the node cannot be reached.
    async fn connection(
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
struct Flight<'a> {
    router: &'a Arc<Router>,
    node: &'a Arc<Node>,
    generation: u64,
    sent: u64,
    landed: bool,
}

impl<'a> Flight<'a> {
    fn new(router: &'a Arc<Router>, node: &'a Arc<Node>, generation: u64) -> Flight<'a> {
        Flight {
            router,
            node,
            generation,
            sent: now_us(),
            landed: false,
        }
    }

    fn land<T>(mut self, reply: &RedisResult<T>) {
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
async fn connect(
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

/// Where a command goes: `EVAL`/`EVALSHA` by their first key, `SCRIPT LOAD`
/// and `SCRIPT FLUSH` to every node, commands on no key to any master, the
/// others by their first argument.
fn target_of(cmd: &Cmd) -> Target {
    let mut args = cmd.args_iter().map(|arg| match arg {
        Arg::Simple(bytes) => bytes,
        _ => &b""[..],
    });
    let Some(name) = args.next() else {
        return Target::AnyMaster;
    };
    let name = name.to_ascii_uppercase();
    match name.as_slice() {
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            let _script = args.next();
            let keys = args
                .next()
                .and_then(|n| std::str::from_utf8(n).ok()?.parse::<u64>().ok());
            match (keys, args.next()) {
                (Some(1..), Some(key)) => Target::Slot(slot(key)),
                _ => Target::AnyMaster,
            }
        }
        b"SCRIPT" => match args.next().map(<[u8]>::to_ascii_uppercase).as_deref() {
            Some(b"LOAD" | b"FLUSH") => Target::AllNodes,
            _ => Target::AnyMaster,
        },
        b"PING" | b"ECHO" | b"TIME" | b"INFO" | b"CONFIG" | b"CLUSTER" | b"SCAN" | b"DBSIZE"
        | b"ACL" | b"CLIENT" | b"COMMAND" | b"HELLO" | b"AUTH" => Target::AnyMaster,
        b"MEMORY" | b"OBJECT" => match args.nth(1) {
            Some(key) => Target::Slot(slot(key)),
            None => Target::AnyMaster,
        },
        _ => match args.next() {
            Some(key) => Target::Slot(slot(key)),
            None => Target::AnyMaster,
        },
    }
}

/// The hash slot of a key: CRC16 (XMODEM) of its hash tag (the text between
/// the first `{` and the next `}`, when not empty), else of the whole key.
pub(super) fn slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS as u16
}

/// The `host:port` of a `MOVED`/`ASK` (`<slot> <host>:<port>`); an empty
/// host is the node that sent it.
fn redirect_address(details: Option<&str>, origin: &str) -> Option<(String, u16)> {
    let address = details?.split_ascii_whitespace().nth(1)?;
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host.is_empty() || host == "?" {
        origin
    } else {
        host
    };
    Some((host.to_owned(), port))
}

/// A range of slots, its master and replicas, from `CLUSTER SLOTS`.
#[derive(Debug, PartialEq)]
struct SlotRange {
    start: u16,
    end: u16,
    master: (String, u16),
    replicas: Vec<(String, u16)>,
}

/// Parses `CLUSTER SLOTS`: `[[start, end, [host, port, id, ...], [replica
/// host, port, ...]...]...]`. A node listed without a host (`""` or `"?"`)
/// is at `origin`, the host of the node that answered.
fn parse_slots(value: &Value, origin: &str) -> RedisResult<Vec<SlotRange>> {
    let malformed = || {
        RedisError::from((
            ErrorKind::Parse,
            "unexpected CLUSTER SLOTS reply",
            format!("{value:?}"),
        ))
    };
    let int = |value: &Value| match value {
        Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    };
    let text = |value: &Value| match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    };
    let node = |value: &Value| -> Option<(String, u16)> {
        let Value::Array(fields) = value else {
            return None;
        };
        let host = text(fields.first()?)?;
        let port = int(fields.get(1)?)?;
        let host = if host.is_empty() || host == "?" {
            origin.to_owned()
        } else {
            host
        };
        Some((host, port))
    };
    let Value::Array(entries) = value else {
        return Err(malformed());
    };
    let mut ranges = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(fields) = entry else {
            return Err(malformed());
        };
        let (Some(start), Some(end), Some(master)) = (
            fields.first().and_then(int),
            fields.get(1).and_then(int),
            fields.get(2).and_then(node),
        ) else {
            return Err(malformed());
        };
        let replicas = fields[3..].iter().filter_map(node).collect();
        ranges.push(SlotRange {
            start,
            end,
            master,
            replicas,
        });
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_hash_tag() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{foo}.x"), 12182);
        assert_eq!(slot(b"x{foo}y{bar}"), 12182);
        // An empty tag hashes the whole key.
        assert_eq!(slot(b"{}foo"), 9500);
        assert_eq!(slot(b"{foo"), 13308);
        assert_eq!(slot(b"123456789"), 12739);
    }

    #[test]
    fn commands_are_routed_by_their_key() {
        let slot_of = |cmd: &Cmd| match target_of(cmd) {
            Target::Slot(slot) => Some(slot),
            _ => None,
        };
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha.arg("abc").arg(1).arg("t:{foo}:tb").arg("1");
        assert_eq!(slot_of(&evalsha), Some(12182));
        let mut no_key = redis::cmd("evalsha");
        no_key.arg("abc").arg(0).arg("x");
        assert!(matches!(target_of(&no_key), Target::AnyMaster));
        let mut load = redis::cmd("SCRIPT");
        load.arg("load").arg("return 1");
        assert!(matches!(target_of(&load), Target::AllNodes));
        assert!(matches!(target_of(&redis::cmd("PING")), Target::AnyMaster));
        let mut unlink = redis::cmd("UNLINK");
        unlink.arg("{bar}a").arg("{bar}b");
        assert_eq!(slot_of(&unlink), Some(5061));
        let mut usage = redis::cmd("MEMORY");
        usage.arg("USAGE").arg("foo");
        assert_eq!(slot_of(&usage), Some(12182));
    }

    #[test]
    fn redirects_are_parsed() {
        assert_eq!(
            redirect_address(Some("3999 127.0.0.1:6381"), "origin"),
            Some(("127.0.0.1".to_owned(), 6381))
        );
        assert_eq!(
            redirect_address(Some("3999 :6381"), "10.0.0.7"),
            Some(("10.0.0.7".to_owned(), 6381))
        );
        assert_eq!(
            redirect_address(Some("3999 ::1:6381"), "origin"),
            Some(("::1".to_owned(), 6381))
        );
        assert_eq!(redirect_address(Some("3999"), "origin"), None);
        assert_eq!(redirect_address(None, "origin"), None);
    }

    #[test]
    fn cluster_slots_replies_are_parsed() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                bulk(host),
                Value::Int(port),
                bulk("id"),
                Value::Array(vec![]),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7001),
                node("127.0.0.1", 7004),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node("", 7002)]),
        ]);
        assert_eq!(
            parse_slots(&reply, "10.0.0.1").unwrap(),
            vec![
                SlotRange {
                    start: 0,
                    end: 5460,
                    master: ("127.0.0.1".to_owned(), 7001),
                    replicas: vec![("127.0.0.1".to_owned(), 7004)],
                },
                SlotRange {
                    start: 5461,
                    end: 16383,
                    master: ("10.0.0.1".to_owned(), 7002),
                    replicas: vec![],
                },
            ]
        );
        assert!(parse_slots(&Value::Int(1), "h").is_err());
        assert!(parse_slots(&Value::Array(vec![Value::Int(1)]), "h").is_err());
    }
}
