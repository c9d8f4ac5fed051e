//! In-memory decisions: traffik's `InMemoryBackend::hit` for every
//! strategy beside governor's keyed `check_key` (GCRA, default clock), at 1
//! key and 100k keys, on 1 and 2 threads; one hot key on 16 threads; a
//! decision with two rates beside one with one rate, and an in-flight place
//! taken and given back; and a hit through a scoped (dynamic) backend
//! against a hit on a fixed one.
//!
//! ```sh
//! cargo bench -p traffik-benches --bench memory
//! cargo bench -p traffik-benches --bench memory -- --warm-up-time 1 --measurement-time 3   # quicker
//! ```
//!
//! Limits are chosen so that every decision is *allowed* (the common case of a
//! healthy service), on both sides:
//!
//! * traffik TokenBucket, FixedWindow, SlidingWindowCounter: 1,000,000,000/s.
//! * traffik SlidingWindowLog: 1,000,000 per 10 ms (its limit is capped at
//!   1,000,000 per period; a short period keeps a hot key allowed, and keeps
//!   its log short: this measures the log's bookkeeping, not a long scan).
//! * traffik Gcra and governor: 1,000,000/s with a burst of 2^32 - 1, the same
//!   GCRA on both sides (emission interval 1 µs, tolerance ~71 min).
//!
//! The 2-thread figures are wall time / total decisions (both threads run the
//! same number of decisions over the same keys, offset by half the key set).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use governor::{Quota as GQuota, RateLimiter};
use http::Method;
use traffik::backend::{self, InMemoryBackend};
use traffik::key::{Key, Scope};
use traffik::{HttpThrottle, Quota, Rate, Strategy};

/// Every strategy (`Strategy` is `#[non_exhaustive]` and keeps no public list).
const STRATEGIES: [Strategy; 5] = [
    Strategy::TokenBucket,
    Strategy::FixedWindow,
    Strategy::SlidingWindowCounter,
    Strategy::SlidingWindowLog,
    Strategy::Gcra,
];

const KEY_COUNTS: [usize; 2] = [1, 100_000];

fn key_strings(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "traffik:api:10.{}.{}.{}:http:GET:/hello",
                (i >> 16) & 0xff,
                (i >> 8) & 0xff,
                i & 0xff
            )
        })
        .collect()
}

/// traffik's keys of the same clients (texts `traffik:api:10.x.y.z:http:GET:/hello`).
fn keys(n: usize) -> Vec<Key<'static>> {
    key_ips(n)
        .into_iter()
        .map(|ip| Key::client("api", ip, 64, Scope::http(&Method::GET, "/hello")))
        .collect()
}

fn key_ips(n: usize) -> Vec<IpAddr> {
    (0..n)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + i as u32)))
        .collect()
}

fn quota(strategy: Strategy) -> Quota {
    match strategy {
        Strategy::SlidingWindowLog => Quota::new(
            Rate::new(1_000_000, Duration::from_millis(10)).unwrap(),
            strategy,
        )
        .unwrap(),
        Strategy::Gcra => Quota::new(Rate::per_second(1_000_000).unwrap(), strategy)
            .unwrap()
            .with_burst(u64::from(u32::MAX))
            .unwrap(),
        _ => Quota::new(Rate::per_second(1_000_000_000).unwrap(), strategy).unwrap(),
    }
}

fn governor_quota() -> GQuota {
    GQuota::per_second(NonZeroU32::new(1_000_000).unwrap()).allow_burst(NonZeroU32::MAX)
}

fn memory_backend() -> InMemoryBackend {
    // Room for every key of every case: the default cap is 1,000,000.
    InMemoryBackend::builder().max_keys(4_000_000).build()
}

/// Runs `iters` decisions round-robin over keys `0..n` on each of `threads`
/// threads (thread t starts at key `t * n / 2`) and returns wall time /
/// threads, i.e. the time per decision of the whole process.
fn threaded<F>(threads: usize, n: usize, iters: u64, op: F) -> Duration
where
    F: Fn(usize) + Sync,
{
    // No `%` in the loop: a division would cost as much as a small decision.
    let run = |mut k: usize| {
        for _ in 0..iters {
            op(k);
            k += 1;
            if k == n {
                k = 0;
            }
        }
    };
    if threads == 1 {
        let start = Instant::now();
        run(0);
        return start.elapsed();
    }
    let barrier = std::sync::Barrier::new(threads + 1);
    let run = &run;
    let barrier = &barrier;
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                barrier.wait();
                run((t * n / 2) % n);
            });
        }
        barrier.wait();
        let start = Instant::now();
        // Joined when the scope ends.
        start
    })
    .elapsed()
        / threads as u32
}

fn decisions(c: &mut Criterion) {
    for threads in [1usize, 2] {
        let mut group = c.benchmark_group(format!("decide_{threads}t"));
        for &n in &KEY_COUNTS {
            let typed = keys(n);
            let keys = key_strings(n);
            let ips = key_ips(n);

            for strategy in STRATEGIES {
                let memory = memory_backend();
                let quota = quota(strategy);
                for key in &typed {
                    assert!(memory.hit(key, &quota, 1).unwrap().allowed);
                }
                group.bench_function(
                    BenchmarkId::new(format!("traffik_{}", strategy.name()), n),
                    |b| {
                        b.iter_custom(|iters| {
                            threaded(threads, n, iters, |i| {
                                let d = memory.hit(&typed[i], &quota, 1).unwrap();
                                debug_assert!(d.allowed);
                                black_box(d);
                            })
                        })
                    },
                );
            }

            let limiter = RateLimiter::keyed(governor_quota());
            for key in &keys {
                assert!(limiter.check_key(key).is_ok());
            }
            group.bench_function(BenchmarkId::new("governor_string", n), |b| {
                b.iter_custom(|iters| {
                    threaded(threads, n, iters, |i| {
                        let _ = black_box(limiter.check_key(&keys[i]));
                    })
                })
            });
            drop(limiter);

            let limiter = RateLimiter::<u64, _, _>::keyed(governor_quota());
            for i in 0..n as u64 {
                assert!(limiter.check_key(&i).is_ok());
            }
            group.bench_function(BenchmarkId::new("governor_u64", n), |b| {
                b.iter_custom(|iters| {
                    threaded(threads, n, iters, |i| {
                        let _ = black_box(limiter.check_key(&(i as u64)));
                    })
                })
            });
            drop(limiter);

            let limiter = RateLimiter::keyed(governor_quota());
            for ip in &ips {
                assert!(limiter.check_key(ip).is_ok());
            }
            group.bench_function(BenchmarkId::new("governor_ip", n), |b| {
                b.iter_custom(|iters| {
                    threaded(threads, n, iters, |i| {
                        let _ = black_box(limiter.check_key(&ips[i]));
                    })
                })
            });
        }
        group.finish();
    }
}

/// One hot key hammered by more threads than cores (16 on this project's 2
/// vCPUs): lock holders get preempted, and waiters must not burn their time
/// slices spinning (traffik's shards are `std::sync::Mutex`es).
fn oversubscribed(c: &mut Criterion) {
    const THREADS: usize = 16;
    let mut group = c.benchmark_group("oversubscribed_16t");
    let typed = keys(1);
    let keys = key_strings(1);
    for strategy in [Strategy::Gcra, Strategy::TokenBucket] {
        let memory = memory_backend();
        let quota = quota(strategy);
        group.bench_function(format!("traffik_{}", strategy.name()), |b| {
            b.iter_custom(|iters| {
                threaded(THREADS, 1, iters, |i| {
                    black_box(memory.hit(&typed[i], &quota, 1).unwrap());
                })
            })
        });
    }
    let limiter = RateLimiter::keyed(governor_quota());
    group.bench_function("governor_string", |b| {
        b.iter_custom(|iters| {
            threaded(THREADS, 1, iters, |i| {
                let _ = black_box(limiter.check_key(&keys[i]));
            })
        })
    });
    group.finish();
}

/// Where the time of one decision goes: reading the clock, and a decision
/// with a clock that costs one atomic load.
fn clocks(c: &mut Criterion) {
    use governor::clock::Clock as _;
    use traffik::clock::{Clock as _, ManualClock, SystemClock};

    let mut group = c.benchmark_group("clock");
    let system = SystemClock::new();
    group.bench_function("traffik_system_clock_now", |b| {
        b.iter(|| black_box(system.now()))
    });
    let quanta = governor::clock::DefaultClock::default();
    group.bench_function("governor_default_clock_now", |b| {
        b.iter(|| black_box(quanta.now()))
    });
    let manual = ManualClock::starting_at(Duration::from_secs(1));
    group.bench_function("traffik_manual_clock_now", |b| {
        b.iter(|| black_box(manual.now()))
    });
    for strategy in [Strategy::TokenBucket, Strategy::Gcra] {
        let memory = InMemoryBackend::builder()
            .clock(ManualClock::starting_at(Duration::from_secs(1)))
            .build();
        let quota = quota(strategy);
        let key = &keys(1)[0];
        group.bench_function(
            format!("traffik_{}_1key_manual_clock", strategy.name()),
            |b| b.iter(|| black_box(memory.hit(key, &quota, 1).unwrap())),
        );
    }
    group.finish();
}

fn scoped(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut request = http::Request::new(());
    *request.uri_mut() = "/hello".parse().unwrap();
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(SocketAddr::from((
            [10, 0, 0, 1],
            40_000,
        ))));
    let memory = InMemoryBackend::new();
    let direct = HttpThrottle::builder()
        .rate("1000000000/s")
        .backend(memory.clone())
        .build()
        .unwrap();
    let dynamic = HttpThrottle::builder()
        .rate("1000000000/s")
        .dynamic_backend()
        .build()
        .unwrap();

    let mut group = c.benchmark_group("hit");
    group.bench_function("direct_backend", |b| {
        b.to_async(&rt).iter(|| {
            let hit = direct.hit(&request);
            async move { black_box(hit.await.unwrap()) }
        })
    });
    group.bench_function("scoped_dynamic_backend", |b| {
        b.to_async(&rt).iter(|| {
            let memory = memory.clone();
            let dynamic = &dynamic;
            let request = &request;
            async move {
                black_box(
                    backend::scope(memory, async { dynamic.hit(request).await })
                        .await
                        .unwrap(),
                )
            }
        })
    });
    group.finish();
}

/// What several rates and in-flight places cost beside one decision, on 1
/// thread at 1 and 100k keys: one rate, two rates decided all or nothing
/// (one lock, one state per rate), and a place taken and given back (two
/// calls, each a lock of the key's shard).
fn rates_and_places(c: &mut Criterion) {
    use traffik::backend::{Op, ThrottleBackend};
    let per_second = Quota::new(
        Rate::per_second(1_000_000_000).unwrap(),
        Strategy::TokenBucket,
    )
    .unwrap();
    let per_hour = Quota::new(
        Rate::new(1_000_000_000, Duration::from_secs(3600)).unwrap(),
        Strategy::TokenBucket,
    )
    .unwrap();
    let one = [per_second];
    let two = [per_second, per_hour];
    let mut group = c.benchmark_group("rates_and_places");
    for &n in &KEY_COUNTS {
        let typed = keys(n);
        for (name, quotas) in [("one_rate", &one[..]), ("two_rates", &two[..])] {
            let memory = memory_backend();
            for key in &typed {
                assert!(
                    memory
                        .decide(key, quotas, 1, Op::Hit)
                        .unwrap()
                        .binding()
                        .allowed
                );
            }
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter_custom(|iters| {
                    threaded(1, n, iters, |i| {
                        black_box(memory.decide(&typed[i], quotas, 1, Op::Hit).unwrap());
                    })
                })
            });
        }
        let memory = memory_backend();
        let lease = Duration::from_secs(30);
        group.bench_function(BenchmarkId::new("place_take_and_give_back", n), |b| {
            b.iter_custom(|iters| {
                threaded(1, n, iters, |i| {
                    let key = &typed[i];
                    let taken = memory.acquire(key, 1, 1_000, lease).into_ready();
                    assert!(matches!(taken, Ok(Ok(_))));
                    let given = memory.release(key, 1).into_ready();
                    assert!(matches!(given, Ok(Ok(()))));
                })
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    decisions,
    oversubscribed,
    rates_and_places,
    clocks,
    scoped
);
criterion_main!(benches);
