//! Where each command goes: the master of its key's slot (`MOVED` and
//! `ASK` followed, refusals for now retried), any master, or every node.

use std::io;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{
    Arg, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, RedisError, RedisResult, ServerErrorKind,
    Value,
};

use super::node::{Flight, Link, Node};
use super::slot_map::{slot, UNSERVED};
use super::Router;

/// Redirects and retries one command follows at most.
const MAX_ATTEMPTS: u32 = 16;

/// Where a command goes.
pub(super) enum Target {
    /// The master of a slot.
    Slot(u16),
    /// Any master (a command on no key).
    AnyMaster,
    /// Every node, masters and replicas (`SCRIPT LOAD`, `SCRIPT FLUSH`):
    /// a replica that becomes a master has the scripts already.
    AllNodes,
}

impl Router {
    pub(super) fn master_of(&self, slot: u16) -> RedisResult<Arc<Node>> {
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
    pub(super) fn any_master(&self) -> RedisResult<Arc<Node>> {
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
    pub(super) fn node_info(&self, host: &str, port: u16) -> ConnectionInfo {
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

    /// Runs a command where it belongs.
    pub(super) async fn execute(self: &Arc<Self>, cmd: &Cmd) -> RedisResult<Value> {
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
    pub(super) async fn send(self: &Arc<Self>, node: &Arc<Node>, cmd: &Cmd) -> RedisResult<Value> {
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
}

/// Where a command goes: `EVAL`/`EVALSHA` by their first key, `SCRIPT LOAD`
/// and `SCRIPT FLUSH` to every node, commands on no key to any master, the
/// others by their first argument.
pub(super) fn target_of(cmd: &Cmd) -> Target {
    let mut args = cmd.args_iter().map(|arg| match arg {
        Arg::Simple(bytes) => bytes,
        _ => &b""[..],
    });
    let Some(name) = args.next() else {
        return Target::AnyMaster;
    };
    // Upper-cased on the stack (no command routed by name is longer).
    let mut upper = [0u8; 12];
    let Some(upper) = upper.get_mut(..name.len()) else {
        return match args.next() {
            Some(key) => Target::Slot(slot(key)),
            None => Target::AnyMaster,
        };
    };
    upper.copy_from_slice(name);
    upper.make_ascii_uppercase();
    match &*upper {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
