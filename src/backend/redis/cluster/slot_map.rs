//! The slot map: the hash slot of a key, which master serves each slot and
//! the replicas, read with `CLUSTER SLOTS` and read again in the background
//! whenever a redirect or a failure says it changed.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{ConnectionAddr, ErrorKind, RedisError, RedisResult, ServerErrorKind, Value};
use tokio::sync::Notify;

use super::node::{connect, Node};
use super::Router;

/// Hash slots of a Redis Cluster.
pub(super) const SLOTS: usize = 16_384;
/// A slot no known master serves.
pub(super) const UNSERVED: u16 = u16::MAX;

/// Slot map refreshes are at least this far apart: during a failover every
/// command on the moved slots answers `MOVED` until the new map is in.
const REFRESH_GAP: Duration = Duration::from_millis(20);

/// The slot map: which master serves each slot, and the replicas.
pub(super) struct Topology {
    /// An index into `masters` per slot, or [`UNSERVED`].
    pub(super) slots: Box<[u16]>,
    pub(super) masters: Vec<Arc<Node>>,
    pub(super) replicas: Vec<Arc<Node>>,
}

impl Router {
    pub(super) fn topology(&self) -> Arc<Topology> {
        Arc::clone(&self.topology.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub(super) fn request_refresh(&self) {
        self.refresh.notify_one();
    }

    /// Whether the slot map (or a redirect) still names `node`.
    pub(super) fn holds(&self, node: &Arc<Node>) -> bool {
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

    /// Reads the slot map from a node that answers (the known nodes in
    /// turn, then the seeds) and installs it.
    pub(super) async fn refresh(self: &Arc<Self>) -> RedisResult<()> {
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
pub(super) async fn refresh_task(router: Weak<Router>, refresh: Arc<Notify>) {
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

/// The hash slot of a key: CRC16 (XMODEM) of its hash tag (the text between
/// the first `{` and the next `}`, when not empty), else of the whole key.
pub(in crate::backend::redis) fn slot(key: &[u8]) -> u16 {
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
