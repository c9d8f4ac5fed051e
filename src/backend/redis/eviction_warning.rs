//! The warning, once at build, when Redis may evict the backend's counters
//! to make room (`maxmemory` set, with a policy other than `noeviction`).

use std::collections::HashMap;

use redis::Value;

use super::connection::Conn;
use super::Shared;

impl Shared {
    /// Warns (once, at build) when Redis may evict traffik's keys to make
    /// room: with `maxmemory` set and a `maxmemory-policy` other than
    /// `noeviction` (the `allkeys-*` policies evict any key, the
    /// `volatile-*` ones any key with a TTL, which every traffik key has).
    /// An evicted counter starts again from zero: its key admits up to a
    /// whole limit more. Read with `CONFIG GET` on the server or on every
    /// master; a refusal (an ACL, a managed Redis) is ignored.
    pub(super) async fn warn_if_counters_can_be_evicted(&self) {
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
