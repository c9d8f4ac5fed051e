//! Clearing the backend's keys: `SCAN MATCH {prefix}:{*` and `UNLINK` in
//! batches (never `KEYS`), on the server or on every master of a cluster;
//! other prefixes' keys are never touched.

use std::collections::HashMap;

use super::cluster;
use super::connection::{redis_error, Conn};
use super::Shared;
use crate::Error;

/// Keys asked for per SCAN call during a reset.
const SCAN_COUNT: usize = 1_000;

impl Shared {
    pub(super) async fn reset(&self) -> Result<(), Error> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
