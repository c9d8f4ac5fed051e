//! Redis decisions: `RedisBackend::hit` for every strategy on one backend
//! (one multiplexed connection), with 1 and 64 callers in flight.
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379 cargo bench -p traffik-benches --features redis --bench redis
//! scripts/bench-redis.sh     # this, plus redis-benchmark's ceiling for the same script
//! ```
//!
//! Criterion measures the time per decision (64 in flight: wall time / total
//! decisions). After the criterion groups, a summary measures each
//! configuration for `TRAFFIK_BENCH_SECS` seconds (default 2) and prints
//! decisions/s with the p50 and p99 latency of single decisions, one line per
//! configuration, starting with `redis-bench:` (scripts/bench-redis.sh reads
//! them); the summary also measures a token-bucket throttle with two rates
//! (one script, one round trip) and an in-flight place taken and given back
//! (two round trips).
//!
//! Limits are chosen so that every decision is *allowed* (the common case):
//! 1,000,000/s for token bucket and GCRA, 1,000,000,000/s for the fixed
//! window and the sliding window counter, and 1,000,000 per 100 ms for the
//! sliding window log (its sorted set holds about the last 100 ms of hits).
//! Every caller hits the same key: the server's work per decision does not
//! depend on the key, and one hot key is the worst case for contention.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use tokio::runtime::Runtime;
use traffik::backend::{Op, RedisBackend, ThrottleBackend};
use traffik::key::{Key, Scope};
use traffik::{Quota, Rate, Strategy};

/// Every strategy (`Strategy` is `#[non_exhaustive]` and keeps no public list).
const STRATEGIES: [Strategy; 5] = [
    Strategy::TokenBucket,
    Strategy::FixedWindow,
    Strategy::SlidingWindowCounter,
    Strategy::SlidingWindowLog,
    Strategy::Gcra,
];

const IN_FLIGHT: [usize; 2] = [1, 64];

fn quota(strategy: Strategy) -> Quota {
    let rate = match strategy {
        Strategy::TokenBucket | Strategy::Gcra => Rate::new(1_000_000, Duration::from_secs(1)),
        Strategy::FixedWindow | Strategy::SlidingWindowCounter => {
            Rate::new(1_000_000_000, Duration::from_secs(1))
        }
        Strategy::SlidingWindowLog => Rate::new(1_000_000, Duration::from_millis(100)),
        other => panic!("no benchmark rate for {other:?}"),
    };
    Quota::new(rate.unwrap(), strategy).unwrap()
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// What each call of a run does.
#[derive(Clone)]
enum Work {
    /// One decision of these rates (one script).
    Decide(Vec<Quota>),
    /// An in-flight place taken, then given back (two scripts).
    Place,
}

/// Runs `total` calls of `work` from `in_flight` concurrent callers; returns
/// the wall time and, if asked, every call's latency.
async fn run(
    redis: &RedisBackend,
    key: Key<'static>,
    work: Work,
    total: u64,
    in_flight: usize,
    latencies: bool,
) -> (Duration, Vec<Duration>) {
    let started = Instant::now();
    let per_caller = total.div_ceil(in_flight as u64);
    let tasks: Vec<_> = (0..in_flight as u64)
        .map(|caller| {
            let redis = redis.clone();
            let work = work.clone();
            tokio::spawn(async move {
                let mut samples =
                    Vec::with_capacity(if latencies { per_caller as usize } else { 0 });
                for i in 0..per_caller {
                    let t = Instant::now();
                    match &work {
                        Work::Decide(quotas) => {
                            let decisions =
                                ThrottleBackend::decide(&redis, &key, quotas, 1, Op::Hit)
                                    .await
                                    .expect("a decision");
                            assert!(decisions.binding().allowed);
                        }
                        Work::Place => {
                            let place = caller << 32 | i;
                            let taken = redis
                                .acquire(&key, place, 1_000, Duration::from_secs(30))
                                .await
                                .expect("a place");
                            assert!(taken.binding().allowed);
                            redis.release(&key, place).await.expect("given back");
                        }
                    }
                    if latencies {
                        samples.push(t.elapsed());
                    }
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.unwrap());
    }
    (started.elapsed(), samples)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn main() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let rt = runtime();
    let redis = match rt.block_on(
        RedisBackend::builder(url.clone())
            .prefix("traffik-bench")
            .persistent(false)
            .build(),
    ) {
        Ok(redis) => redis,
        Err(error) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true but no Redis at {url}: {error}");
            }
            eprintln!("\n!!!!!!!!!! SKIPPED: no Redis at {url} ({error}) !!!!!!!!!!\n");
            return;
        }
    };
    // Text `traffik-bench:bench:10.0.0.1:http:GET:/hello`.
    let key = Key::client(
        "bench",
        [10, 0, 0, 1].into(),
        64,
        Scope::http(&http::Method::GET, "/hello"),
    );

    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10)
        .configure_from_args();
    for strategy in STRATEGIES {
        let q = quota(strategy);
        let mut group = criterion.benchmark_group(format!("redis/{strategy}"));
        group.throughput(Throughput::Elements(1));
        for in_flight in IN_FLIGHT {
            group.bench_function(BenchmarkId::new("in_flight", in_flight), |b| {
                b.iter_custom(|iters| {
                    let work = Work::Decide(vec![q]);
                    let (wall, _) = rt.block_on(run(&redis, key, work, iters, in_flight, false));
                    // `run` rounds up to whole batches per caller.
                    let done = iters.div_ceil(in_flight as u64) * in_flight as u64;
                    wall.mul_f64(iters as f64 / done as f64)
                });
            });
        }
        group.finish();
    }
    criterion.final_summary();

    // The summary: decisions/s, p50 and p99 per configuration.
    let secs: f64 = std::env::var("TRAFFIK_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    println!();
    println!("redis-bench: server {url}, one RedisBackend (one multiplexed connection), current-thread runtime");
    println!(
        "redis-bench: token_bucket script sha {}",
        RedisBackend::script_sha(Strategy::TokenBucket)
    );
    println!(
        "redis-bench: {:<24} {:>9} {:>14} {:>10} {:>10}",
        "case", "in_flight", "calls/s", "p50", "p99"
    );
    let token_bucket = quota(Strategy::TokenBucket);
    let per_hour = Quota::new(
        Rate::new(1_000_000_000, Duration::from_secs(3600)).unwrap(),
        Strategy::TokenBucket,
    )
    .unwrap();
    let mut cases: Vec<(String, Work)> = STRATEGIES
        .into_iter()
        .map(|strategy| {
            (
                strategy.name().to_owned(),
                Work::Decide(vec![quota(strategy)]),
            )
        })
        .collect();
    cases.push((
        "token_bucket_two_rates".to_owned(),
        Work::Decide(vec![token_bucket, per_hour]),
    ));
    cases.push(("place_take_and_give_back".to_owned(), Work::Place));
    for (name, work) in cases {
        for in_flight in IN_FLIGHT {
            rt.block_on(async {
                // Calibrate a batch to about the wanted duration.
                let (probe, _) = run(&redis, key, work.clone(), 2_000, in_flight, false).await;
                let rate = 2_000.0 / probe.as_secs_f64();
                let total = ((rate * secs) as u64).max(1_000);
                let (wall, mut samples) =
                    run(&redis, key, work.clone(), total, in_flight, true).await;
                samples.sort_unstable();
                let per_sec = samples.len() as f64 / wall.as_secs_f64();
                println!(
                    "redis-bench: {:<24} {:>9} {:>14.0} {:>10.1?} {:>10.1?}",
                    name,
                    in_flight,
                    per_sec,
                    percentile(&samples, 0.50),
                    percentile(&samples, 0.99),
                );
            });
        }
    }
    rt.block_on(redis.close()).unwrap();
}
