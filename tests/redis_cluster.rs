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

use std::collections::BTreeMap;
use std::time::Duration;

use traffik::backend::{Op, RedisBackend, ThrottleBackend};
use traffik::key::{Key, Scope};
use traffik::{Decision, Error, HttpThrottle, Identity, Quota, Rate, Strategy};

/// Every strategy (`Strategy` is `#[non_exhaustive]` and keeps no public list).
const STRATEGIES: [Strategy; 5] = [
    Strategy::TokenBucket,
    Strategy::FixedWindow,
    Strategy::SlidingWindowCounter,
    Strategy::SlidingWindowLog,
    Strategy::Gcra,
];

/// The key of `identity` for the throttle `u`, counted on every route
/// (text `{prefix}:u:{identity}:http:*`).
fn key_of(identity: &str) -> Key<'_> {
    Key::new("u", identity, Scope::shared())
}

/// The decision a hit would get (through the trait, as throttles ask).
async fn peek(redis: &RedisBackend, key: &Key<'_>, q: &Quota) -> Result<Decision, Error> {
    let decisions =
        ThrottleBackend::decide(redis, key, std::slice::from_ref(q), 1, Op::Peek).await?;
    Ok(decisions.binding())
}

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
    keys_on(conn, pattern).await.len()
}

async fn keys_on(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut found = Vec::new();
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
        found.extend(keys);
        cursor = next;
        if cursor == 0 {
            return found;
        }
    }
}

#[tokio::test]
async fn concurrent_hits_admit_exactly_the_limit_for_every_strategy() {
    let Some(redis) = backend("cluster-exact").await else {
        return;
    };
    const LIMIT: u64 = 20;
    for strategy in STRATEGIES {
        let q = quota(&format!("{LIMIT}/day"), strategy);
        // Several keys, so that several slots (and nodes) are exercised.
        for k in 0..6 {
            let identity = format!("key-{k}-{strategy}");
            let key = key_of(&identity);
            let tasks: Vec<_> = (0..64)
                .map(|_| {
                    let redis = redis.clone();
                    let identity = identity.clone();
                    tokio::spawn(async move {
                        let key = key_of(&identity);
                        redis.hit(&key, &q, 1).await.unwrap().allowed
                    })
                })
                .collect();
            let mut allowed = 0;
            for task in tasks {
                allowed += u64::from(task.await.unwrap());
            }
            assert_eq!(allowed, LIMIT, "{strategy} key {k}");
            let peeked = peek(&redis, &key, &q).await.unwrap();
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
    for strategy in STRATEGIES {
        let q = quota("7/day", strategy);
        let key = Key::new("shared", strategy.name(), Scope::shared());
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
        let identity = i.to_string();
        redis.hit(&key_of(&identity), &q, 1).await.unwrap();
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
    redis.hit(&key_of("x"), &q, 1).await.unwrap();
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
    let identities =
        |strategy| -> Vec<String> { (0..4).map(|k| format!("flush-{k}-{strategy}")).collect() };
    for strategy in STRATEGIES {
        let q = quota("5/min", strategy);
        for identity in &identities(strategy) {
            assert!(redis.hit(&key_of(identity), &q, 1).await.unwrap().allowed);
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
    for strategy in STRATEGIES {
        let q = quota("5/min", strategy);
        for identity in &identities(strategy) {
            let d = redis.hit(&key_of(identity), &q, 1).await.unwrap();
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
        after.starts_with("```\n\nAdd `+cluster|slots +asking` on a cluster"),
        "the README's cluster grant moved: update this test"
    );
    commands.extend(["+cluster|slots".to_owned(), "+asking".to_owned()]);
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
    for strategy in STRATEGIES {
        let q = quota("2/min", strategy);
        for client in 0..6 {
            let identity = format!("client-{client}-{strategy}");
            let key = key_of(&identity);
            assert!(redis.hit(&key, &q, 1).await.unwrap().allowed, "{strategy}");
            assert!(redis.hit(&key, &q, 1).await.unwrap().allowed, "{strategy}");
            assert!(!redis.hit(&key, &q, 1).await.unwrap().allowed, "{strategy}");
            assert!(!peek(&redis, &key, &q).await.unwrap().allowed, "{strategy}");
        }
    }
    let mut stored = Vec::new();
    for master in &mut masters {
        stored.push(count_on(master, &format!("{prefix}:*")).await);
    }
    assert_eq!(stored.iter().sum::<usize>(), 6 * STRATEGIES.len());
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

// ------------------------------------------------------------------------
// Several rates, in-flight places and refunds on a cluster, through the
// throttle.

/// A request from the client named `client` (see [`by_client`]).
fn request_from(client: &str) -> http::Request<()> {
    http::Request::get("/")
        .header("x-client", client)
        .body(())
        .unwrap()
}

/// A throttle on `redis` identifying requests by their `x-client` header,
/// one counter per client for every route.
fn by_client(redis: &RedisBackend, uid: String) -> traffik::HttpThrottleBuilder {
    HttpThrottle::builder()
        .uid(uid)
        .shared_across_routes()
        .identifier(|parts: &http::request::Parts| {
            let client = parts.headers["x-client"].to_str().unwrap().to_owned();
            async move { Identity::key(client) }
        })
        .backend(redis.clone())
}

/// Every key of `prefix` on every master, grouped by hash tag (the part in
/// braces: one throttle key).
async fn keys_by_tag(
    masters: &mut [redis::aio::MultiplexedConnection],
    prefix: &str,
) -> (BTreeMap<String, Vec<String>>, Vec<usize>) {
    let mut by_tag: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut per_master = Vec::new();
    for master in masters.iter_mut() {
        let keys = keys_on(master, &format!("{prefix}:*")).await;
        per_master.push(keys.len());
        for key in keys {
            let open = key.find('{').unwrap();
            let close = open + key[open..].find('}').unwrap();
            by_tag
                .entry(key[open + 1..close].to_owned())
                .or_default()
                .push(key);
        }
    }
    (by_tag, per_master)
}

async fn keyslot(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap()
}

/// Two rates (`7/min` and `20/h`): 64 concurrent hits of one client admit
/// exactly the 7 of the binding rate, for every strategy and several
/// clients (several slots, several masters); each client's two rate keys
/// are in one hash slot.
#[tokio::test]
async fn concurrent_hits_on_two_rates_admit_exactly_the_binding_limit_on_a_cluster() {
    let Some(redis) = backend("cluster-rates").await else {
        return;
    };
    const CLIENTS: usize = 4;
    for strategy in STRATEGIES {
        let throttle = by_client(&redis, format!("rates-{strategy}"))
            .rates(["7/min", "20/h"])
            .strategy(strategy)
            .build()
            .unwrap();
        for client in 0..CLIENTS {
            let name = format!("client-{client}");
            let tasks: Vec<_> = (0..64)
                .map(|_| {
                    let (throttle, name) = (throttle.clone(), name.clone());
                    tokio::spawn(async move {
                        match throttle.hit(&request_from(&name)).await {
                            Ok(decision) => {
                                assert!(decision.allowed);
                                assert!(decision.remaining < 7);
                                true
                            }
                            Err(Error::Throttled(throttled)) => {
                                let decision = throttled.decision();
                                assert_eq!(decision.remaining, 0);
                                // The per-minute rate binds.
                                assert_eq!(decision.limit, 7);
                                assert!(throttled.retry_after() <= Duration::from_secs(60));
                                false
                            }
                            Err(other) => panic!("{strategy}: {other}"),
                        }
                    })
                })
                .collect();
            let mut admitted = 0;
            for task in tasks {
                admitted += usize::from(task.await.unwrap());
            }
            assert_eq!(admitted, 7, "{strategy} {name}");
            let peeked = throttle.peek(&request_from(&name)).await.unwrap();
            assert!(!peeked.allowed && peeked.remaining == 0, "{strategy}");
        }
    }
    // One throttle key per strategy and client, each with one Redis key per
    // rate, both in the slot of its hash tag.
    let mut masters = masters().await;
    let (by_tag, per_master) = keys_by_tag(&mut masters, redis.prefix()).await;
    assert_eq!(by_tag.len(), STRATEGIES.len() * CLIENTS, "{by_tag:?}");
    assert!(
        per_master.iter().filter(|&&n| n > 0).count() >= 2,
        "keys on several masters: {per_master:?}"
    );
    for (tag, keys) in &by_tag {
        assert_eq!(keys.len(), 2, "one key per rate: {keys:?}");
        let tagged = keyslot(&mut masters[0], &format!("{{{tag}}}")).await;
        for key in keys {
            assert_eq!(keyslot(&mut masters[0], key).await, tagged, "{key}");
        }
    }
    redis.close().await.unwrap();
}

/// `max_in_flight(3)` on a cluster: of 24 concurrent `acquire`s of one
/// client exactly 3 get a permit; once they are dropped (the places are
/// given back in the background), exactly 3 more get in.
#[tokio::test]
async fn in_flight_places_are_exact_on_a_cluster() {
    let Some(redis) = backend("cluster-inflight").await else {
        return;
    };
    const MAX: usize = 3;
    let throttle = by_client(&redis, "uploads".to_owned())
        .max_in_flight(MAX as u64)
        .build()
        .unwrap();
    let acquire = |throttle: &HttpThrottle, name: &str| {
        let permit = throttle.acquire(&request_from(name));
        async move {
            match permit.await {
                Ok(permit) => Some(permit),
                Err(Error::Throttled(throttled)) => {
                    assert_eq!(throttled.decision().remaining, 0);
                    None
                }
                Err(other) => panic!("{other}"),
            }
        }
    };
    // Several clients: places on several slots.
    for client in 0..4 {
        let name = format!("client-{client}");
        let tasks: Vec<_> = (0..24)
            .map(|_| tokio::spawn(acquire(&throttle, &name)))
            .collect();
        let mut permits = Vec::new();
        for task in tasks {
            permits.extend(task.await.unwrap());
        }
        assert_eq!(permits.len(), MAX, "{name}");
        assert!(acquire(&throttle, &name).await.is_none(), "{name}");
        drop(permits);
        let mut again = Vec::new();
        for _ in 0..500 {
            if again.len() == MAX {
                break;
            }
            match acquire(&throttle, &name).await {
                Some(permit) => again.push(permit),
                None => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        assert_eq!(again.len(), MAX, "{name}: the places came back");
        assert!(
            acquire(&throttle, &name).await.is_none(),
            "{name}: no more than {MAX}"
        );
    }
    drop(throttle);
    redis.close().await.unwrap();
}

/// `reserve()` then `refund()` on a cluster gives the hit back, for every
/// strategy, with one rate and with two.
#[tokio::test]
async fn a_refund_gives_the_place_back_on_a_cluster() {
    let Some(redis) = backend("cluster-refund").await else {
        return;
    };
    let sets: [&[&str]; 2] = [&["2/min"], &["2/min", "5/h"]];
    for strategy in STRATEGIES {
        for (s, rates) in sets.iter().enumerate() {
            let throttle = by_client(&redis, format!("refund-{strategy}-{s}"))
                .rates(rates.iter().copied())
                .strategy(strategy)
                .build()
                .unwrap();
            for client in 0..3 {
                let request = request_from(&format!("client-{client}"));
                let what = format!("{strategy} {rates:?} client {client}");
                let first = throttle.reserve(&request).await.unwrap();
                assert_eq!(first.decision().remaining, 1, "{what}");
                let second = throttle.reserve(&request).await.unwrap();
                assert_eq!(second.decision().remaining, 0, "{what}");
                assert!(
                    matches!(throttle.reserve(&request).await, Err(Error::Throttled(_))),
                    "{what}"
                );
                first.refund().await.unwrap();
                let peeked = throttle.peek(&request).await.unwrap();
                assert!(peeked.allowed, "{what}: the place is back");
                assert_eq!(peeked.remaining, 0, "{what}");
                let hit = throttle.hit(&request).await.unwrap();
                assert_eq!(hit.remaining, 0, "{what}");
                assert!(throttle.hit(&request).await.is_err(), "{what}");
                drop(second); // kept
            }
        }
    }
    redis.close().await.unwrap();
}
