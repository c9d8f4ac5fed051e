//! Redis Cluster topology changes under load (`cargo test --features
//! redis`): a graceful failover, a live resharding and a crashed master
//! (`kill -9`), each while 64 concurrent callers decide through an
//! `HttpThrottle` on the cluster.
//!
//! Each test starts a cluster of its own (3 masters with a replica each, on
//! free loopback ports: `redis-server` and `redis-cli --cluster create`,
//! `cluster-node-timeout 1000`, `cluster-require-full-coverage no`), so that
//! it disturbs no other cluster, and stops it at the end; the tests run one
//! at a time. Without `redis-server` and `redis-cli` they print `SKIPPED:
//! ...` and return, except under `CI=true`, where they fail.
#![cfg(feature = "redis")]

mod redis_common;
mod redis_servers;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_servers::{info_field, Server};
use tokio::task::JoinHandle;
use traffik::backend::RedisBackend;
use traffik::{Error, FailureMode, HttpThrottle, Identity, Strategy};

/// Concurrent callers.
const CALLERS: usize = 64;
/// Identities decided on, spread over every master.
const KEYS: usize = 192;
/// The backend's timeout (the default).
const TIMEOUT: Duration = Duration::from_secs(1);

/// One test at a time: each drives 64 callers on 6 servers.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------- cluster

/// A node as `CLUSTER NODES` shows it.
#[derive(Debug, Clone)]
struct NodeView {
    port: u16,
    id: String,
    master: bool,
    /// The master of a replica.
    master_id: Option<String>,
    myself: bool,
    failed: bool,
    slots: Vec<(u16, u16)>,
}

impl NodeView {
    fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }
}

/// Three masters with a replica each, killed on drop.
struct Cluster {
    servers: Vec<Server>,
}

impl Cluster {
    async fn start() -> Option<Cluster> {
        if !redis_servers::installed() {
            return None;
        }
        let mut servers = Vec::new();
        for _ in 0..6 {
            servers.push(
                Server::start(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    // A replica takes over however long it was cut off.
                    "--cluster-replica-validity-factor",
                    "0",
                    // The other masters serve while one is down.
                    "--cluster-require-full-coverage",
                    "no",
                ])
                .await,
            );
        }
        let addresses: Vec<String> = servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let output = tokio::task::spawn_blocking(move || {
            Command::new("redis-cli")
                .args(["--cluster", "create"])
                .args(&addresses)
                .args(["--cluster-replicas", "1", "--cluster-yes"])
                .output()
        })
        .await
        .unwrap()
        .expect("redis-cli runs");
        assert!(
            output.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = Cluster { servers };
        cluster.wait_settled().await;
        Some(cluster)
    }

    fn urls(&self) -> Vec<String> {
        self.servers.iter().map(Server::url).collect()
    }

    fn server(&mut self, port: u16) -> &mut Server {
        self.servers.iter_mut().find(|s| s.port == port).unwrap()
    }

    async fn cli(&self, port: u16, args: &[&str]) -> redis::RedisResult<String> {
        let server = self.servers.iter().find(|s| s.port == port).unwrap();
        let mut conn = server.conn().await;
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        let value: redis::Value = cmd.query_async(&mut conn).await?;
        Ok(match value {
            redis::Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            redis::Value::SimpleString(text) => text,
            redis::Value::VerbatimString { text, .. } => text,
            redis::Value::Int(n) => n.to_string(),
            redis::Value::Okay => "OK".to_owned(),
            other => format!("{other:?}"),
        })
    }

    /// The nodes as `port` sees them.
    async fn nodes(&self, port: u16) -> Vec<NodeView> {
        let text = self.cli(port, &["CLUSTER", "NODES"]).await.unwrap();
        text.lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.len() < 8 {
                    return None;
                }
                let flags: Vec<&str> = fields[2].split(',').collect();
                let port = fields[1]
                    .split('@')
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()?;
                let slots = fields[8..]
                    .iter()
                    .filter(|range| !range.starts_with('['))
                    .map(|range| match range.split_once('-') {
                        Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                        None => (range.parse().unwrap(), range.parse().unwrap()),
                    })
                    .collect();
                Some(NodeView {
                    port,
                    id: fields[0].to_owned(),
                    master: flags.contains(&"master"),
                    master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
                    myself: flags.contains(&"myself"),
                    failed: flags.contains(&"fail") || flags.contains(&"fail?"),
                    slots,
                })
            })
            .collect()
    }

    /// Waits until every node sees the six, says `cluster_state:ok`, and
    /// every replica is in sync with its master.
    async fn wait_settled(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        'wait: loop {
            assert!(Instant::now() < deadline, "the cluster did not settle");
            tokio::time::sleep(Duration::from_millis(100)).await;
            for server in &self.servers {
                let info = self.cli(server.port, &["CLUSTER", "INFO"]).await.unwrap();
                if info_field(&info, "cluster_state") != Some("ok") {
                    continue 'wait;
                }
                let nodes = self.nodes(server.port).await;
                if nodes.len() != 6 || nodes.iter().any(|n| n.failed) {
                    continue 'wait;
                }
                let replication = self
                    .cli(server.port, &["INFO", "replication"])
                    .await
                    .unwrap();
                if info_field(&replication, "role") == Some("slave")
                    && (info_field(&replication, "master_link_status") != Some("up")
                        || info_field(&replication, "master_sync_in_progress") != Some("0"))
                {
                    continue 'wait;
                }
            }
            return;
        }
    }

    /// The master serving `slot`, and its replica, as `port` sees them.
    async fn master_and_replica(&self, port: u16, slot: u16) -> (NodeView, NodeView) {
        let nodes = self.nodes(port).await;
        let master = nodes
            .iter()
            .find(|n| n.master && n.serves(slot))
            .cloned()
            .unwrap();
        let replica = nodes
            .iter()
            .find(|n| n.master_id.as_deref() == Some(&master.id))
            .cloned()
            .unwrap();
        (master, replica)
    }

    /// Waits until `replica` says it is a master serving `slot`.
    async fn wait_promoted(&self, replica: u16, slot: u16, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let me = self
                .nodes(replica)
                .await
                .into_iter()
                .find(|n| n.myself)
                .unwrap();
            if me.master && me.serves(slot) {
                return;
            }
            assert!(Instant::now() < deadline, "the replica was not promoted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The hash slot of a stored key.
fn slot(key: &str) -> u16 {
    let key = key.as_bytes();
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &byte in hashed {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16_384
}

// ---------------------------------------------------------------- load

/// The throttle under test: the identity is the `x-key` header.
fn throttle(redis: &RedisBackend, rate: &str) -> HttpThrottle {
    HttpThrottle::builder()
        .uid("t")
        .rate(rate)
        .strategy(Strategy::TokenBucket)
        .failure_mode(FailureMode::Closed)
        .shared_across_routes()
        .backend(redis.clone())
        .identifier(|parts: &http::request::Parts| {
            let key = parts
                .headers
                .get("x-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned();
            async move { Identity::key(key) }
        })
        .build()
        .unwrap()
}

/// The slot of an identity's counter.
fn slot_of(redis: &RedisBackend, identity: &str) -> u16 {
    let key = format!("{}:t:{identity}:http:*", redis.prefix());
    slot(&redis.storage_key(&key, Strategy::TokenBucket))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Allowed,
    Denied,
    Failed,
}

#[derive(Debug, Clone, Copy)]
struct Outcome {
    key: usize,
    /// When the hit was sent, since the load started.
    sent: Duration,
    took: Duration,
    answer: Answer,
}

async fn decide(throttle: &HttpThrottle, identity: &str) -> Result<Answer, String> {
    let request = http::Request::builder()
        .uri("/")
        .header("x-key", identity)
        .body(())
        .unwrap();
    match throttle.hit(&request).await {
        Ok(decision) if decision.allowed => Ok(Answer::Allowed),
        Ok(_) | Err(Error::Throttled(_)) => Ok(Answer::Denied),
        Err(error) => Err(error.to_string()),
    }
}

/// [`CALLERS`] tasks deciding on the keys in turn until stopped.
struct Load {
    start: Instant,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<(Vec<Outcome>, Vec<String>)>>,
}

impl Load {
    fn start(throttle: &HttpThrottle, keys: &[String]) -> Load {
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let keys = Arc::new(keys.to_vec());
        let tasks = (0..CALLERS)
            .map(|caller| {
                let (throttle, keys, stop) = (throttle.clone(), keys.clone(), stop.clone());
                tokio::spawn(async move {
                    let (mut outcomes, mut errors) = (Vec::new(), Vec::new());
                    let mut i = caller * 3;
                    while !stop.load(Ordering::Relaxed) {
                        i = (i + 37) % keys.len();
                        let sent = start.elapsed();
                        let answer = match decide(&throttle, &keys[i]).await {
                            Ok(answer) => answer,
                            Err(error) => {
                                errors.push(error);
                                Answer::Failed
                            }
                        };
                        let took = start.elapsed() - sent;
                        // A hit failed at once (an unreachable node) does
                        // not yield to the runtime by itself.
                        tokio::task::yield_now().await;
                        outcomes.push(Outcome {
                            key: i,
                            sent,
                            took,
                            answer,
                        });
                    }
                    (outcomes, errors)
                })
            })
            .collect();
        Load { start, stop, tasks }
    }

    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    async fn finish(self) -> (Vec<Outcome>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut outcomes, mut errors) = (Vec::new(), Vec::new());
        for task in self.tasks {
            let (o, e) = task.await.unwrap();
            outcomes.extend(o);
            errors.extend(e);
        }
        (outcomes, errors)
    }
}

fn max_took<'a>(outcomes: impl Iterator<Item = &'a Outcome>) -> Duration {
    outcomes.map(|o| o.took).max().unwrap_or_default()
}

/// How long a decision may take during a topology change: well below the
/// timeout (a stalled connection waits the whole of it), and not much above
/// what it took before the change.
fn latency_bound(before: Duration) -> Duration {
    (before * 3).max(Duration::from_millis(300))
}

fn summary(what: &str, outcomes: &[Outcome], elapsed: Duration) {
    let failed = outcomes
        .iter()
        .filter(|o| o.answer == Answer::Failed)
        .count();
    println!(
        "{what}: {} decisions in {elapsed:.1?} ({:.0}/s), {failed} failed",
        outcomes.len(),
        outcomes.len() as f64 / elapsed.as_secs_f64()
    );
}

async fn cluster_backend(cluster: &Cluster, test: &str) -> RedisBackend {
    RedisBackend::cluster_builder(cluster.urls())
        .prefix(redis_servers::unique(test))
        .persistent(false)
        .timeout(TIMEOUT)
        .build()
        .await
        .unwrap()
}

// ---------------------------------------------------------------- tests

/// `CLUSTER FAILOVER` on a replica while 64 callers decide: no decision
/// fails, none is miscounted (exactly the limit is admitted per key), and
/// decisions on the other masters' slots are not slowed down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_failover_under_load_loses_no_decision() {
    let _serial = SERIAL.lock().await;
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let redis = cluster_backend(&cluster, "failover").await;
    const LIMIT: usize = 20;
    let throttle = throttle(&redis, "20/hour");
    let keys: Vec<String> = (0..KEYS).map(|i| format!("k{i}")).collect();
    let slots: Vec<u16> = keys.iter().map(|k| slot_of(&redis, k)).collect();
    let load = Load::start(&throttle, &keys);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let seed = cluster.servers[0].port;
    let (master, replica) = cluster.master_and_replica(seed, slots[0]).await;
    let affected: Vec<bool> = slots.iter().map(|&s| master.serves(s)).collect();
    let failover_at = load.elapsed();
    assert_eq!(
        cluster
            .cli(replica.port, &["CLUSTER", "FAILOVER"])
            .await
            .unwrap(),
        "OK"
    );
    cluster
        .wait_promoted(replica.port, slots[0], Duration::from_secs(10))
        .await;
    let promoted_at = load.elapsed();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let elapsed = load.elapsed();
    let (outcomes, errors) = load.finish().await;
    summary("graceful failover", &outcomes, elapsed);
    println!("failover at {failover_at:?}, promoted at {promoted_at:?}");

    assert!(
        errors.is_empty(),
        "{} failed decisions, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );
    let mut hits = vec![0usize; KEYS];
    let mut allowed = vec![0usize; KEYS];
    for outcome in &outcomes {
        hits[outcome.key] += 1;
        allowed[outcome.key] += usize::from(outcome.answer == Answer::Allowed);
    }
    for key in 0..KEYS {
        assert!(hits[key] > LIMIT, "key {key}: {} hits", hits[key]);
        assert_eq!(allowed[key], LIMIT, "key {key}: admitted exactly the limit");
    }
    let unaffected = |o: &&Outcome| !affected[o.key];
    let before = max_took(
        outcomes
            .iter()
            .filter(unaffected)
            .filter(|o| o.sent < failover_at),
    );
    let window = failover_at..promoted_at + Duration::from_millis(500);
    let during = max_took(
        outcomes
            .iter()
            .filter(unaffected)
            .filter(|o| window.contains(&o.sent)),
    );
    let moved = max_took(
        outcomes
            .iter()
            .filter(|o| affected[o.key] && window.contains(&o.sent)),
    );
    println!(
        "slowest decision on other masters: {before:?} before, {during:?} during; \
         on the failed-over slots: {moved:?}"
    );
    assert!(during <= latency_bound(before), "{during:?} vs {before:?}");
    assert!(moved < TIMEOUT / 2, "{moved:?}");
    redis.close().await.unwrap();
}

/// `kill -9` of a master while 64 callers decide on keys already at their
/// limit: only the hits on its slots fail, each at once (no timeout), and
/// none past the promotion of its replica plus one timeout; its slots are
/// decided again afterwards (no restart), and no key admits a hit over its
/// limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_only_its_own_slots_and_at_once_until_its_replica_takes_over() {
    let _serial = SERIAL.lock().await;
    let Some(mut cluster) = Cluster::start().await else {
        return;
    };
    let redis = cluster_backend(&cluster, "kill").await;
    const LIMIT: usize = 5;
    let throttle = throttle(&redis, "5/hour");
    let keys: Vec<String> = (0..KEYS).map(|i| format!("k{i}")).collect();
    let slots: Vec<u16> = keys.iter().map(|k| slot_of(&redis, k)).collect();
    // Every key at its limit, and the counts on the replicas.
    let exhaust = keys.iter().map(|key| {
        let throttle = throttle.clone();
        async move {
            let mut allowed = 0;
            for _ in 0..=LIMIT {
                allowed += usize::from(decide(&throttle, key).await.unwrap() == Answer::Allowed);
            }
            allowed
        }
    });
    for allowed in futures_util::future::join_all(exhaust).await {
        assert_eq!(allowed, LIMIT);
    }
    let seed = cluster.servers[0].port;
    for node in cluster.nodes(seed).await.iter().filter(|n| n.master) {
        let acked = cluster
            .cli(node.port, &["WAIT", "1", "5000"])
            .await
            .unwrap();
        assert_eq!(acked, "1", "replicated");
    }

    let load = Load::start(&throttle, &keys);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (master, replica) = cluster.master_and_replica(seed, slots[0]).await;
    let affected: Vec<bool> = slots.iter().map(|&s| master.serves(s)).collect();
    let killed_at = load.elapsed();
    cluster.server(master.port).kill();
    cluster
        .wait_promoted(replica.port, slots[0], Duration::from_secs(20))
        .await;
    let promoted_at = load.elapsed();
    tokio::time::sleep(TIMEOUT + Duration::from_millis(1500)).await;
    let elapsed = load.elapsed();
    let (outcomes, errors) = load.finish().await;
    summary("kill -9 of a master", &outcomes, elapsed);
    println!("killed at {killed_at:?}, replica promoted at {promoted_at:?}");
    if let Some(error) = errors.first() {
        println!("e.g. {error}");
    }

    let failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.answer == Answer::Failed)
        .collect();
    let last_failure = failed.iter().map(|o| o.sent).max().unwrap_or_default();
    println!(
        "{} failed (last sent at {last_failure:?}), the slowest in {:?}",
        failed.len(),
        max_took(failed.iter().copied())
    );
    for outcome in &failed {
        assert!(
            affected[outcome.key],
            "a failure on a healthy master's slot: {outcome:?}"
        );
        assert!(
            outcome.took < TIMEOUT / 2,
            "a failure that waited: {outcome:?}"
        );
        assert!(
            outcome.sent <= promoted_at + TIMEOUT,
            "a failure past the promotion: {outcome:?}"
        );
    }
    assert!(
        !failed.is_empty(),
        "the killed master's slots failed for a while"
    );
    let recovered = outcomes
        .iter()
        .filter(|o| affected[o.key] && o.sent > promoted_at + TIMEOUT)
        .filter(|o| o.answer == Answer::Denied)
        .count();
    assert!(recovered > 0, "its slots are decided again");
    assert!(
        outcomes.iter().all(|o| o.answer != Answer::Allowed),
        "a key admitted a hit over its limit"
    );
    let healthy = |o: &&Outcome| !affected[o.key];
    let before = max_took(
        outcomes
            .iter()
            .filter(healthy)
            .filter(|o| o.sent < killed_at),
    );
    let during = max_took(
        outcomes
            .iter()
            .filter(healthy)
            .filter(|o| o.sent >= killed_at && o.sent <= promoted_at + TIMEOUT),
    );
    println!("slowest decision on the healthy masters: {before:?} before, {during:?} during");
    assert!(during <= latency_bound(before), "{during:?} vs {before:?}");
}

/// `redis-cli --cluster reshard` of 200 slots holding counters while 64
/// callers decide, with the least-privilege ACL of the README (plus the
/// cluster's `+cluster|slots +asking`): no decision fails, none is
/// miscounted, decisions on other slots are not slowed down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_reshard_under_load_loses_no_decision() {
    let _serial = SERIAL.lock().await;
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    const MOVED_SLOTS: u16 = 200;
    let seed = cluster.servers[0].port;
    let nodes = cluster.nodes(seed).await;
    let mut masters: Vec<&NodeView> = nodes.iter().filter(|n| n.master).collect();
    masters.sort_by_key(|n| n.slots[0].0);
    let (source, target) = (masters[0].clone(), masters[1].clone());
    // redis-cli moves the source's lowest slots.
    let first = source.slots[0].0;
    let moving = |slot: u16| slot >= first && slot < first + MOVED_SLOTS;

    let prefix = redis_servers::unique("reshard");
    let user = format!("traffik-acl-{}", &prefix[prefix.len() - 8..]);
    let (mut grants, _) = redis_common::readme_acl();
    grants.extend(["+cluster|slots".to_owned(), "+asking".to_owned()]);
    for server in &cluster.servers {
        let mut setuser = redis::cmd("ACL");
        setuser
            .arg("SETUSER")
            .arg(&user)
            .arg("on")
            .arg(">secret")
            .arg("resetkeys")
            .arg(format!("~{prefix}:*"))
            .arg("resetchannels")
            .arg("-@all")
            .arg(&grants);
        let _: () = setuser.query_async(&mut server.conn().await).await.unwrap();
    }
    let urls: Vec<String> = cluster
        .urls()
        .iter()
        .map(|url| url.replacen("redis://", &format!("redis://{user}:secret@"), 1))
        .collect();
    let redis = RedisBackend::cluster_builder(urls)
        .prefix(prefix.clone())
        .persistent(false)
        .timeout(TIMEOUT)
        .build()
        .await
        .unwrap();
    const LIMIT: usize = 20;
    let throttle = throttle(&redis, "20/hour");
    // Half the keys on the slots that move, half elsewhere.
    let (mut on_moving, mut elsewhere) = (Vec::new(), Vec::new());
    for i in 0.. {
        let key = format!("k{i}");
        if moving(slot_of(&redis, &key)) {
            if on_moving.len() < KEYS / 2 {
                on_moving.push(key);
            }
        } else if elsewhere.len() < KEYS / 2 {
            elsewhere.push(key);
        }
        if on_moving.len() == KEYS / 2 && elsewhere.len() == KEYS / 2 {
            break;
        }
    }
    let keys: Vec<String> = on_moving.into_iter().chain(elsewhere).collect();
    let affected: Vec<bool> = keys.iter().map(|k| moving(slot_of(&redis, k))).collect();
    let load = Load::start(&throttle, &keys);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let reshard_at = load.elapsed();
    let (from, to) = (source.id.clone(), target.id.clone());
    let output = tokio::task::spawn_blocking(move || {
        Command::new("redis-cli")
            .args(["--cluster", "reshard", &format!("127.0.0.1:{seed}")])
            .args(["--cluster-from", &from, "--cluster-to", &to])
            .args(["--cluster-slots", &MOVED_SLOTS.to_string(), "--cluster-yes"])
            .output()
    })
    .await
    .unwrap()
    .expect("redis-cli runs");
    let resharded_at = load.elapsed();
    assert!(
        output.status.success(),
        "redis-cli --cluster reshard: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let elapsed = load.elapsed();
    let (outcomes, errors) = load.finish().await;
    summary("live reshard", &outcomes, elapsed);
    println!("reshard of {MOVED_SLOTS} slots from {reshard_at:?} to {resharded_at:?}");

    // The slots did move, with the counters on them.
    let now = cluster.nodes(seed).await;
    let owner = now.iter().find(|n| n.id == target.id).unwrap();
    assert!(owner.serves(first) && owner.serves(first + MOVED_SLOTS - 1));
    let mut moved_keys: HashMap<u16, usize> = HashMap::new();
    for (key, _) in keys.iter().zip(&affected).filter(|(_, &a)| a) {
        *moved_keys.entry(slot_of(&redis, key)).or_default() += 1;
    }
    assert!(
        moved_keys.len() > 20,
        "{} slots with keys",
        moved_keys.len()
    );

    assert!(
        errors.is_empty(),
        "{} failed decisions, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );
    let mut hits = vec![0usize; KEYS];
    let mut allowed = vec![0usize; KEYS];
    for outcome in &outcomes {
        hits[outcome.key] += 1;
        allowed[outcome.key] += usize::from(outcome.answer == Answer::Allowed);
    }
    for key in 0..KEYS {
        assert!(hits[key] > LIMIT, "key {key}: {} hits", hits[key]);
        assert_eq!(allowed[key], LIMIT, "key {key}: admitted exactly the limit");
    }
    let others = |o: &&Outcome| !affected[o.key];
    let before = max_took(
        outcomes
            .iter()
            .filter(others)
            .filter(|o| o.sent < reshard_at),
    );
    let window = reshard_at..resharded_at + Duration::from_millis(500);
    let during = max_took(
        outcomes
            .iter()
            .filter(others)
            .filter(|o| window.contains(&o.sent)),
    );
    let migrating = max_took(
        outcomes
            .iter()
            .filter(|o| affected[o.key] && window.contains(&o.sent)),
    );
    println!(
        "slowest decision on other slots: {before:?} before, {during:?} during; \
         on the moving slots: {migrating:?}"
    );
    assert!(during <= latency_bound(before), "{during:?} vs {before:?}");
    assert!(migrating < TIMEOUT / 2, "{migrating:?}");
    redis.close().await.unwrap();
}
