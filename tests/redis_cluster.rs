//! The Redis backend on a Redis Cluster (`cargo test --features redis`).
//!
//! Start one with `scripts/redis-cluster.sh start` (3 masters on
//! 127.0.0.1:7101-7103) and stop it with `scripts/redis-cluster.sh stop`.
//! Tests read `REDIS_CLUSTER_URLS` (comma separated; default the three
//! loopback ports). Without a cluster they print `SKIPPED: ...` and return,
//! except under `CI=true`, where they fail.
#![cfg(feature = "redis")]

mod redis_common;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use traffik::backend::{RedisBackend, ThrottleBackend};
use traffik::{Quota, Rate, Strategy};

fn cluster_urls() -> Vec<String> {
    std::env::var("REDIS_CLUSTER_URLS")
        .unwrap_or_else(|_| {
            "redis://127.0.0.1:7101,redis://127.0.0.1:7102,redis://127.0.0.1:7103".to_owned()
        })
        .split(',')
        .map(|url| url.trim().to_owned())
        .filter(|url| !url.is_empty())
        .collect()
}

fn unique_prefix(test: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    format!("traffik-test-{test}-{:016x}", hasher.finish())
}

/// A non-persistent cluster backend with a fresh prefix, or `None` (skipped).
async fn backend(test: &str) -> Option<RedisBackend> {
    let urls = cluster_urls();
    match RedisBackend::cluster_builder(urls.clone())
        .prefix(unique_prefix(test))
        .persistent(false)
        .build()
        .await
    {
        Ok(backend) => {
            assert!(backend.is_cluster());
            // One breaker would cover every node: off on a cluster by default.
            assert_eq!(backend.circuit_breaker(), std::time::Duration::ZERO);
            Some(backend)
        }
        Err(error) => {
            let what = format!(
                "no Redis Cluster at {} ({error}); start one with scripts/redis-cluster.sh start",
                urls.join(",")
            );
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true but {what}");
            }
            // Written to the stderr handle itself: libtest captures eprintln!.
            let _ = writeln!(
                std::io::stderr(),
                "\n!!!!!!!!!! SKIPPED: {what} !!!!!!!!!!\n"
            );
            None
        }
    }
}

fn quota(rate: &str, strategy: Strategy) -> Quota {
    Quota::new(rate.parse::<Rate>().unwrap(), strategy).unwrap()
}

/// A plain connection to every master, from `CLUSTER NODES`.
async fn masters() -> Vec<redis::aio::MultiplexedConnection> {
    let first = redis::Client::open(cluster_urls()[0].as_str()).unwrap();
    let mut conn = first.get_multiplexed_async_connection().await.unwrap();
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut masters = Vec::new();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 3 || !fields[2].split(',').any(|f| f == "master") {
            continue;
        }
        let address = fields[1].split(['@', ',']).next().unwrap();
        let client = redis::Client::open(format!("redis://{address}")).unwrap();
        masters.push(client.get_multiplexed_async_connection().await.unwrap());
    }
    assert!(masters.len() >= 2, "a cluster of several masters");
    masters
}

/// Runs a command on one key on the master that holds its slot (the others
/// answer MOVED).
async fn on_its_master(masters: &mut [redis::aio::MultiplexedConnection], cmd: &redis::Cmd) {
    for master in masters.iter_mut() {
        match cmd.query_async::<redis::Value>(master).await {
            Ok(_) => return,
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::Moved) => {}
            Err(error) => panic!("{error}"),
        }
    }
    panic!("no master holds the key");
}

async fn count_on(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> usize {
    let mut n = 0;
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .unwrap();
        n += keys.len();
        cursor = next;
        if cursor == 0 {
            return n;
        }
    }
}

#[tokio::test]
async fn concurrent_hits_admit_exactly_the_limit_for_every_strategy() {
    let Some(redis) = backend("cluster-exact").await else {
        return;
    };
    const LIMIT: u64 = 20;
    for strategy in Strategy::ALL {
        let q = quota(&format!("{LIMIT}/day"), strategy);
        // Several keys, so that several slots (and nodes) are exercised.
        for k in 0..6 {
            let key = format!("{}:u:key-{k}:{strategy}", redis.prefix());
            let tasks: Vec<_> = (0..64)
                .map(|_| {
                    let redis = redis.clone();
                    let key = key.clone();
                    tokio::spawn(async move { redis.hit(&key, &q, 1).await.unwrap().allowed })
                })
                .collect();
            let mut allowed = 0;
            for task in tasks {
                allowed += u64::from(task.await.unwrap());
            }
            assert_eq!(allowed, LIMIT, "{strategy} key {k}");
            let peeked = redis.peek(&key, &q, 1).await.unwrap();
            assert!(!peeked.allowed && peeked.remaining == 0, "{strategy}");
        }
    }
    redis.close().await.unwrap();
}

#[tokio::test]
async fn two_cluster_backends_share_the_count() {
    let Some(first) = backend("cluster-shared").await else {
        return;
    };
    let second = RedisBackend::cluster_builder(cluster_urls())
        .prefix(first.prefix())
        .build()
        .await
        .unwrap();
    for strategy in Strategy::ALL {
        let q = quota("7/day", strategy);
        let key = format!("{}:u:shared:{strategy}", first.prefix());
        let mut allowed = 0;
        for i in 0..20 {
            let backend = if i % 2 == 0 { &first } else { &second };
            allowed += u64::from(backend.hit(&key, &q, 1).await.unwrap().allowed);
        }
        assert_eq!(allowed, 7, "{strategy}");
    }
    first.close().await.unwrap();
}

#[tokio::test]
async fn reset_clears_the_prefix_on_every_master_and_nothing_else() {
    let Some(redis) = backend("cluster-reset").await else {
        return;
    };
    let prefix = redis.prefix().to_owned();
    let pattern = format!("{prefix}:*");
    let mut masters = masters().await;
    // A foreign key on every master (hash tags pick the slots).
    let mut foreign = Vec::new();
    for i in 0..60 {
        foreign.push(format!("other-{prefix}:{{{i}}}"));
    }
    for key in &foreign {
        let mut set = redis::cmd("SET");
        set.arg(key).arg("1").arg("EX").arg(60);
        on_its_master(&mut masters, &set).await;
    }
    let q = quota("5/min", Strategy::SlidingWindowLog);
    for i in 0..1500 {
        redis
            .hit(&format!("{prefix}:u:{i}:s"), &q, 1)
            .await
            .unwrap();
    }
    let mut total = 0;
    for master in &mut masters {
        let n = count_on(master, &pattern).await;
        assert!(n > 0, "keys on every master");
        total += n;
    }
    assert_eq!(total, 1500);
    redis.reset().await.unwrap();
    for master in &mut masters {
        assert_eq!(
            count_on(master, &pattern).await,
            0,
            "cleared on every master"
        );
    }
    let mut surviving = 0;
    for master in &mut masters {
        surviving += count_on(master, &format!("other-{prefix}:*")).await;
    }
    assert_eq!(surviving, foreign.len(), "foreign keys survive");
    // A second non-persistent backend on the prefix clears it when built.
    redis.hit(&format!("{prefix}:u:x:s"), &q, 1).await.unwrap();
    let _again = RedisBackend::cluster_builder(cluster_urls())
        .prefix(prefix.clone())
        .persistent(false)
        .build()
        .await
        .unwrap();
    for master in &mut masters {
        assert_eq!(count_on(master, &pattern).await, 0);
    }
    for key in &foreign {
        on_its_master(&mut masters, redis::cmd("DEL").arg(key)).await;
    }
}

#[tokio::test]
async fn script_flush_on_every_master_is_recovered_from() {
    let Some(redis) = backend("cluster-noscript").await else {
        return;
    };
    let mut masters = masters().await;
    let keys = |strategy| -> Vec<String> {
        (0..4)
            .map(|k| format!("{}:u:flush-{k}:{strategy}", redis.prefix()))
            .collect()
    };
    for strategy in Strategy::ALL {
        let q = quota("5/min", strategy);
        for key in &keys(strategy) {
            assert!(redis.hit(key, &q, 1).await.unwrap().allowed);
        }
    }
    // One flush per master (the tests share the cluster).
    for master in &mut masters {
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(master)
            .await
            .unwrap();
    }
    for strategy in Strategy::ALL {
        let q = quota("5/min", strategy);
        for key in &keys(strategy) {
            let d = redis.hit(key, &q, 1).await.unwrap();
            assert!(d.allowed, "{strategy}");
            assert_eq!(d.remaining, 3, "{strategy}");
        }
    }
    redis.close().await.unwrap();
}

/// The README's ACL plus the cluster grant its next sentence names.
fn readme_cluster_acl_commands() -> Vec<String> {
    let (mut commands, after) = redis_common::readme_acl();
    assert!(
        after.starts_with("```\n\nAdd `+cluster|slots` on a cluster"),
        "the README's cluster grant moved: update this test"
    );
    commands.push("+cluster|slots".to_owned());
    commands
}

#[tokio::test]
async fn the_documented_acl_is_enough_on_a_cluster() {
    // Skips (or fails under CI=true) like the others when no cluster runs.
    let Some(probe) = backend("cluster-acl-probe").await else {
        return;
    };
    probe.close().await.unwrap();
    let prefix = unique_prefix("cluster-acl");
    let user = format!("traffik-acl-{}", &prefix[prefix.len() - 8..]);
    let mut masters = masters().await;
    for master in &mut masters {
        let mut setuser = redis::cmd("ACL");
        setuser
            .arg("SETUSER")
            .arg(&user)
            .arg("on")
            .arg(">secret")
            .arg("resetkeys")
            .arg(format!("~{prefix}:*"))
            .arg("resetchannels")
            .arg("-@all");
        for command in readme_cluster_acl_commands() {
            setuser.arg(command);
        }
        let _: () = setuser.query_async(master).await.unwrap();
    }
    let urls: Vec<String> = cluster_urls()
        .iter()
        .map(|url| url.replacen("redis://", &format!("redis://{user}:secret@"), 1))
        .collect();
    let redis = RedisBackend::cluster_builder(urls)
        .prefix(prefix.clone())
        .persistent(false)
        .build()
        .await
        .unwrap();
    // Loading the scripts again (SCRIPT LOAD after NOSCRIPT) is covered too.
    for master in &mut masters {
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(master)
            .await
            .unwrap();
    }
    // Several identities per strategy: keys on several masters.
    for strategy in Strategy::ALL {
        let q = quota("2/min", strategy);
        for client in 0..6 {
            let key = format!("{prefix}:u:client-{client}:{strategy}");
            assert!(redis.hit(&key, &q, 1).await.unwrap().allowed, "{strategy}");
            assert!(redis.hit(&key, &q, 1).await.unwrap().allowed, "{strategy}");
            assert!(!redis.hit(&key, &q, 1).await.unwrap().allowed, "{strategy}");
            assert!(
                !redis.peek(&key, &q, 1).await.unwrap().allowed,
                "{strategy}"
            );
        }
    }
    let mut stored = Vec::new();
    for master in &mut masters {
        stored.push(count_on(master, &format!("{prefix}:*")).await);
    }
    assert_eq!(stored.iter().sum::<usize>(), 6 * Strategy::ALL.len());
    assert!(
        stored.iter().filter(|&&n| n > 0).count() >= 2,
        "keys on several masters: {stored:?}"
    );
    // reset() walks every master with SCAN + UNLINK under this user.
    redis.reset().await.unwrap();
    for master in &mut masters {
        assert_eq!(count_on(master, &format!("{prefix}:*")).await, 0);
    }
    redis.close().await.unwrap();
    for master in &mut masters {
        let _: () = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(&user)
            .query_async(master)
            .await
            .unwrap();
    }
}
