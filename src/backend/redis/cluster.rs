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
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, Pipeline, RedisError,
    RedisFuture, RedisResult, Value,
};
use tokio::sync::Notify;

use node::Node;
pub(super) use slot_map::slot;
use slot_map::{refresh_task, Topology, SLOTS, UNSERVED};

mod node;
mod routing;
mod slot_map;

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

/// What the clones of a [`Cluster`] share. Its methods are with their
/// concern: `routing` (where a command goes) and `slot_map` (reading it).
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

    /// traffik sends no pipeline through the cluster (a script is one
    /// command; the `ASKING` pair goes to a node's own connection).
    fn req_packed_commands<'a>(
        &'a mut self,
        _pipeline: &'a Pipeline,
        _offset: usize,
        _count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async {
            Err(RedisError::from((
                ErrorKind::Client,
                "traffik's Redis Cluster connection sends commands one at a time, not pipelines",
            )))
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}
