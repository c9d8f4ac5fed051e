//! The in-memory backend: exact under concurrency for every strategy, reclaims
//! expired keys, holds at most `max_keys`, lifecycle, sharing, peek.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use traffik::backend::{InMemoryBackend, Op, ThrottleBackend};
use traffik::clock::ManualClock;
use traffik::key::{Key, Scope};
use traffik::{Decision, Quota, Rate, Strategy};

/// Every strategy (`Strategy` is `#[non_exhaustive]` and keeps no public list).
const STRATEGIES: [Strategy; 5] = [
    Strategy::TokenBucket,
    Strategy::FixedWindow,
    Strategy::SlidingWindowCounter,
    Strategy::SlidingWindowLog,
    Strategy::Gcra,
];

fn quota(text: &str, strategy: Strategy) -> Quota {
    Quota::new(text.parse::<Rate>().unwrap(), strategy).unwrap()
}

/// The key of the identity `identity` for the throttle `t`, counted on
/// every route (text `traffik:t:{identity}:http:*`).
fn key(identity: &str) -> Key<'_> {
    Key::new("t", identity, Scope::shared())
}

/// Through the trait (as throttles call it): one rate, `op`.
async fn through_trait(
    backend: &dyn ThrottleBackend,
    identity: &str,
    quota: &Quota,
    cost: u64,
    op: Op,
) -> Decision {
    backend
        .decide(&key(identity), std::slice::from_ref(quota), cost, op)
        .await
        .unwrap()
        .binding()
}

fn manual() -> (ManualClock, InMemoryBackend) {
    let clock = ManualClock::starting_at(Duration::from_secs(1_000));
    let backend = InMemoryBackend::builder().clock(clock.clone()).build();
    (clock, backend)
}

/// Long enough for every strategy to forget a hit made `period` ago
/// (the sliding window counter remembers up to two aligned windows).
fn forget(clock: &ManualClock, quota: &Quota) {
    clock.advance(Duration::from_micros(3 * quota.period_micros()));
}

const LIMIT: u64 = 1000;
const THREADS: usize = 8;
const HITS: usize = 500;

/// 8 OS threads × 500 hits on one key while a ninth thread moves the clock
/// forward a microsecond at a time: exactly `LIMIT` admitted.
fn hammer(backend: &InMemoryBackend, clock: Option<&ManualClock>, strategy: Strategy) {
    let quota = quota("1000/d", strategy);
    let admitted = AtomicU64::new(0);
    let denied = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let barrier = Barrier::new(THREADS + 1);
    thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                barrier.wait();
                for _ in 0..HITS {
                    let d = backend.hit(&key("client"), &quota, 1).unwrap();
                    assert_eq!(d.limit, LIMIT);
                    if d.allowed {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    } else {
                        assert!(d.retry_after > Duration::ZERO);
                        assert!(d.retry_after <= Duration::from_secs(86_400));
                        denied.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        s.spawn(|| {
            barrier.wait();
            while !done.load(Ordering::Relaxed) {
                if let Some(clock) = clock {
                    clock.advance(Duration::from_micros(1));
                }
                thread::yield_now();
            }
        });
        // Signal the ticker once every hitter is done.
        while admitted.load(Ordering::Relaxed) + denied.load(Ordering::Relaxed)
            < (THREADS * HITS) as u64
        {
            thread::yield_now();
        }
        done.store(true, Ordering::Relaxed);
    });
    assert_eq!(
        admitted.load(Ordering::Relaxed),
        LIMIT,
        "{strategy}: admitted exactly the limit"
    );
    assert_eq!(
        denied.load(Ordering::Relaxed),
        (THREADS * HITS) as u64 - LIMIT
    );
    assert_eq!(backend.len(), 1);
}

#[test]
fn exact_under_os_thread_contention_with_a_ticking_manual_clock() {
    for strategy in STRATEGIES {
        let (clock, backend) = manual();
        hammer(&backend, Some(&clock), strategy);
    }
}

#[test]
fn exact_under_os_thread_contention_with_the_system_clock() {
    for strategy in STRATEGIES {
        hammer(&InMemoryBackend::new(), None, strategy);
    }
}

#[test]
fn exact_with_a_single_shard_and_many_keys() {
    // Every key on one lock: per-key counts still exact.
    for strategy in STRATEGIES {
        let backend = InMemoryBackend::builder()
            .clock(ManualClock::new())
            .shards(1)
            .build();
        let quota = quota("50/h", strategy);
        let admitted: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(0)).collect();
        thread::scope(|s| {
            for t in 0..THREADS {
                let (backend, quota, admitted) = (&backend, &quota, &admitted);
                s.spawn(move || {
                    for i in 0..400 {
                        let k = (i + t) % 4;
                        if backend
                            .hit(&key(&format!("k{k}")), quota, 1)
                            .unwrap()
                            .allowed
                        {
                            admitted[k].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        for (k, n) in admitted.iter().enumerate() {
            assert_eq!(n.load(Ordering::Relaxed), 50, "{strategy} key {k}");
        }
        assert_eq!(backend.len(), 4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exact_under_tokio_tasks_through_the_trait() {
    for strategy in STRATEGIES {
        let (clock, backend) = manual();
        let backend: Arc<dyn ThrottleBackend> = Arc::new(backend);
        let quota = quota("1000/d", strategy);
        let mut tasks = Vec::new();
        for _ in 0..THREADS {
            let (backend, clock) = (backend.clone(), clock.clone());
            tasks.push(tokio::spawn(async move {
                let mut admitted = 0u64;
                for i in 0..HITS {
                    let d = through_trait(&*backend, "client", &quota, 1, Op::Hit).await;
                    admitted += u64::from(d.allowed);
                    if i % 7 == 0 {
                        clock.advance(Duration::from_micros(3));
                        tokio::task::yield_now().await;
                    }
                }
                admitted
            }));
        }
        let mut admitted = 0;
        for task in tasks {
            admitted += task.await.unwrap();
        }
        assert_eq!(admitted, LIMIT, "{strategy}");
        // Peeks through the trait agree: nothing left.
        let d = through_trait(&*backend, "client", &quota, 1, Op::Peek).await;
        assert!(!d.allowed, "{strategy}");
        assert_eq!(d.remaining, 0, "{strategy}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn costs_above_one_are_exact_under_contention() {
    for strategy in STRATEGIES {
        let (_clock, backend) = manual();
        let quota = quota("999/d", strategy);
        let mut tasks = Vec::new();
        for _ in 0..THREADS {
            let backend = backend.clone();
            tasks.push(tokio::spawn(async move {
                let mut units = 0u64;
                for _ in 0..200 {
                    if through_trait(&backend, "key", &quota, 3, Op::Hit)
                        .await
                        .allowed
                    {
                        units += 3;
                    }
                }
                units
            }));
        }
        let mut units = 0;
        for task in tasks {
            units += task.await.unwrap();
        }
        assert_eq!(units, 999, "{strategy}");
    }
}

#[test]
fn purge_expired_reclaims_expired_keys() {
    for strategy in STRATEGIES {
        let (clock, backend) = manual();
        let quota = quota("5/10s", strategy);
        for i in 0..500 {
            assert!(
                backend
                    .hit(&key(&format!("old{i}")), &quota, 1)
                    .unwrap()
                    .allowed
            );
        }
        assert_eq!(backend.len(), 500);
        forget(&clock, &quota);
        for i in 0..100 {
            assert!(
                backend
                    .hit(&key(&format!("new{i}")), &quota, 1)
                    .unwrap()
                    .allowed
            );
        }
        // Some shards may have swept themselves already; purge does the rest.
        assert!(backend.len() >= 100);
        backend.purge_expired();
        assert_eq!(backend.len(), 100, "{strategy}: only the live keys remain");
        // A reclaimed key starts afresh.
        let d = backend.hit(&key("old0"), &quota, 1).unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, 4, "{strategy}");
        forget(&clock, &quota);
        backend.purge_expired();
        assert_eq!(backend.len(), 0, "{strategy}");
        assert!(backend.is_empty());
    }
}

#[test]
fn expired_keys_are_reclaimed_by_use_alone() {
    let clock = ManualClock::starting_at(Duration::from_secs(50));
    let backend = InMemoryBackend::builder()
        .clock(clock.clone())
        .sweep_interval(Duration::from_secs(1))
        .build();
    let quota = quota("3/2s", Strategy::SlidingWindowLog);
    for i in 0..1000 {
        backend.hit(&key(&format!("old{i}")), &quota, 1).unwrap();
    }
    assert_eq!(backend.len(), 1000);
    // Past the period and the sweep interval, hits on other keys sweep the
    // shards they land on; 2000 keys touch all 64 shards.
    clock.advance(Duration::from_secs(3));
    for i in 0..2000 {
        backend.hit(&key(&format!("new{i}")), &quota, 1).unwrap();
    }
    assert_eq!(backend.len(), 2000);
}

#[test]
fn memory_stays_bounded_under_a_stream_of_new_keys() {
    let clock = ManualClock::new();
    let backend = InMemoryBackend::builder()
        .clock(clock.clone())
        .sweep_interval(Duration::from_millis(500))
        .build();
    let quota = quota("1/s", Strategy::FixedWindow);
    let mut peak = 0;
    // 100,000 distinct keys over 20 s; each lives 1 s.
    for step in 0..2000 {
        clock.advance(Duration::from_millis(10));
        for i in 0..50 {
            backend
                .hit(&key(&format!("k{step}:{i}")), &quota, 1)
                .unwrap();
        }
        peak = peak.max(backend.len());
    }
    // At most (1 s of life + 0.5 s of sweep lag) × 5,000 keys/s, with slack.
    assert!(peak <= 10_000, "peak {peak}");
    clock.advance(Duration::from_secs(2));
    backend.purge_expired();
    assert_eq!(backend.len(), 0);
}

/// What a hit on `key` would leave: `limit - 1` for a key the backend does
/// not hold (or holds fresh), less for one it counts.
fn remaining_after_peek(backend: &InMemoryBackend, identity: &str, quota: &Quota) -> u64 {
    futures_executor(through_trait(backend, identity, quota, 1, Op::Peek)).remaining
}

#[test]
fn key_cap_drops_the_keys_closest_to_their_reset() {
    for strategy in STRATEGIES {
        let clock = ManualClock::starting_at(Duration::from_secs(7));
        // One shard: the eviction order is the whole backend's.
        let backend = InMemoryBackend::builder()
            .clock(clock.clone())
            .shards(1)
            .max_keys(100)
            .build();
        let quota = quota("2/10s", strategy);
        // k0 first, k99 last, 10 ms apart: k0 expires first for every
        // strategy (the sliding window counter's windows are aligned, so
        // a whole period separates the oldest keys from the rest).
        for i in 0..100 {
            if i == 50 && strategy == Strategy::SlidingWindowCounter {
                clock.advance(Duration::from_secs(10));
            }
            clock.advance(Duration::from_millis(10));
            assert!(
                backend
                    .hit(&key(&format!("k{i}")), &quota, 1)
                    .unwrap()
                    .allowed
            );
        }
        assert_eq!(backend.len(), 100);
        for i in 0..100 {
            assert_eq!(remaining_after_peek(&backend, &format!("k{i}"), &quota), 0);
        }
        // The 101st key is counted: the backend drops an eighth of its keys
        // (13), those closest to their reset, to make room.
        assert!(backend.hit(&key("new"), &quota, 1).unwrap().allowed);
        assert_eq!(backend.len(), 88, "{strategy}");
        let dropped: Vec<usize> = (0..100)
            .filter(|i| remaining_after_peek(&backend, &format!("k{i}"), &quota) == 1)
            .collect();
        let expected: Vec<usize> = match strategy {
            // Its oldest 50 expire together (a window end); 13 of them go.
            Strategy::SlidingWindowCounter => dropped.iter().copied().filter(|&i| i < 50).collect(),
            _ => (0..13).collect(),
        };
        assert_eq!(dropped.len(), 13, "{strategy}: {dropped:?}");
        assert_eq!(dropped, expected, "{strategy}");
        // The new key and the kept keys are counted.
        assert!(
            !backend.hit(&key("new"), &quota, 2).unwrap().allowed,
            "{strategy}"
        );
        assert!(backend.hit(&key("new"), &quota, 1).unwrap().allowed);
        assert!(
            !backend.hit(&key("new"), &quota, 1).unwrap().allowed,
            "{strategy}"
        );
        assert!(backend.hit(&key("k99"), &quota, 1).unwrap().allowed);
        assert!(
            !backend.hit(&key("k99"), &quota, 1).unwrap().allowed,
            "{strategy}"
        );

        // Through the async entry point too, and never past the cap.
        for i in 0..200 {
            let key = format!("more{i}");
            let d = futures_executor(through_trait(&backend, &key, &quota, 1, Op::Hit));
            assert!(d.allowed, "{strategy}: {key}");
            assert!(backend.len() <= 100, "{strategy}: {}", backend.len());
        }
    }
}

/// A client spends its 10 hits, then `later` passes and a flood of one-hit
/// keys, twenty times the cap, holds the backend at its cap. Returns how
/// many hits the client then has left.
fn hits_left_after_a_flood(strategy: Strategy, later: Duration) -> u64 {
    let clock = ManualClock::starting_at(Duration::from_secs(7));
    let backend = InMemoryBackend::builder()
        .clock(clock.clone())
        .max_keys(1_000)
        .build();
    let quota = quota("10/min", strategy);
    for _ in 0..10 {
        assert!(backend.hit(&key("spent"), &quota, 1).unwrap().allowed);
    }
    assert!(!backend.hit(&key("spent"), &quota, 1).unwrap().allowed);
    clock.advance(later);
    for i in 0..20_000 {
        if i % 100 == 0 {
            clock.advance(Duration::from_millis(1));
        }
        assert!(
            backend
                .hit(&key(&format!("flood{i}")), &quota, 1)
                .unwrap()
                .allowed
        );
        assert!(backend.len() <= 1_000);
    }
    (0..20)
        .take_while(|_| backend.hit(&key("spent"), &quota, 1).unwrap().allowed)
        .count() as u64
}

#[test]
fn key_cap_keeps_the_clients_that_spent_their_quota_under_token_bucket_and_gcra() {
    // A spent bucket (or a far theoretical arrival time) is the latest
    // expiry: the flood's keys go first.
    for strategy in [Strategy::TokenBucket, Strategy::Gcra] {
        for later in [Duration::ZERO, Duration::from_secs(30)] {
            // 30 s refill 5 of the 10 (GCRA: the same, one per 6 s).
            let refilled = later.as_secs() / 6;
            assert_eq!(
                hits_left_after_a_flood(strategy, later),
                refilled,
                "{strategy}, {later:?} later"
            );
        }
    }
}

#[test]
fn key_cap_drops_the_oldest_windows_first_under_windows_and_logs() {
    // A key expires a period after its window or its last counted hit:
    // keys made later outlive it, so a flood at the cap drops it, spent or
    // not, and its client starts afresh (as documented).
    for strategy in [
        Strategy::FixedWindow,
        Strategy::SlidingWindowCounter,
        Strategy::SlidingWindowLog,
    ] {
        // Into the next (aligned) window for the counter; half a period on
        // for the others, while the spent key is still live.
        let later = Duration::from_secs(if strategy == Strategy::SlidingWindowCounter {
            54
        } else {
            30
        });
        assert_eq!(hits_left_after_a_flood(strategy, later), 10, "{strategy}");
    }
}

#[test]
fn key_cap_holds_under_contention() {
    let backend = InMemoryBackend::builder()
        .clock(ManualClock::new())
        .max_keys(100)
        .build();
    let quota = quota("1/min", Strategy::TokenBucket);
    let barrier = Barrier::new(THREADS);
    thread::scope(|s| {
        for t in 0..THREADS {
            let (backend, quota, barrier) = (&backend, &quota, &barrier);
            s.spawn(move || {
                barrier.wait();
                for i in 0..1_000 {
                    // Every new key is stored (room is made for it)...
                    let d = backend.hit(&key(&format!("t{t}:{i}")), quota, 1).unwrap();
                    assert!(d.allowed);
                    // ...and the count never passes the cap.
                    assert!(backend.len() <= 100, "len {}", backend.len());
                }
            });
        }
    });
    assert!(
        backend.len() <= 100 && backend.len() > 50,
        "{}",
        backend.len()
    );
}

/// Polls a future that the in-memory backend answers at once.
fn futures_executor<F: std::future::Future>(future: F) -> F::Output {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("the in-memory backend should answer at once"),
    }
}

#[tokio::test]
async fn reset_clears_every_key() {
    let (_clock, backend) = manual();
    let quota = quota("1/min", Strategy::FixedWindow);
    for i in 0..10 {
        backend.hit(&key(&format!("k{i}")), &quota, 1).unwrap();
    }
    assert!(!backend.hit(&key("k0"), &quota, 1).unwrap().allowed);
    backend.reset().await.unwrap();
    assert_eq!(backend.len(), 0);
    assert!(backend.hit(&key("k0"), &quota, 1).unwrap().allowed);
    ThrottleBackend::reset(&backend).await.unwrap();
    assert!(backend.is_empty());
    assert!(backend.hit(&key("k0"), &quota, 1).unwrap().allowed);
}

#[tokio::test]
async fn lifecycle_of_a_non_persistent_backend() {
    let clock = ManualClock::new();
    let backend = InMemoryBackend::builder().clock(clock).build();
    assert!(!ThrottleBackend::persistent(&backend));
    let quota = quota("1/min", Strategy::Gcra);
    backend.hit(&key("a"), &quota, 1).unwrap();
    backend.initialize().await.unwrap();
    assert_eq!(backend.len(), 0);
    assert!(backend.hit(&key("a"), &quota, 1).unwrap().allowed);
    backend.close().await.unwrap();
    assert_eq!(backend.len(), 0);
    backend.hit(&key("a"), &quota, 1).unwrap();
    ThrottleBackend::initialize(&backend).await.unwrap();
    assert_eq!(backend.len(), 0);
    backend.hit(&key("a"), &quota, 1).unwrap();
    ThrottleBackend::close(&backend).await.unwrap();
    assert_eq!(backend.len(), 0);
}

#[tokio::test]
async fn lifecycle_of_a_persistent_backend() {
    let backend = InMemoryBackend::builder()
        .clock(ManualClock::new())
        .persistent(true)
        .build();
    assert!(ThrottleBackend::persistent(&backend));
    let quota = quota("1/min", Strategy::SlidingWindowLog);
    backend.hit(&key("a"), &quota, 1).unwrap();
    backend.initialize().await.unwrap();
    backend.close().await.unwrap();
    ThrottleBackend::initialize(&backend).await.unwrap();
    ThrottleBackend::close(&backend).await.unwrap();
    assert_eq!(backend.len(), 1);
    assert!(
        !backend.hit(&key("a"), &quota, 1).unwrap().allowed,
        "kept its count"
    );
    // reset() clears on demand, persistent or not.
    backend.reset().await.unwrap();
    assert_eq!(backend.len(), 0);
    assert!(backend.hit(&key("a"), &quota, 1).unwrap().allowed);
}

#[test]
fn instances_are_independent_and_clones_share() {
    let quota = quota("1/h", Strategy::TokenBucket);
    let a = InMemoryBackend::new();
    let b = InMemoryBackend::new();
    let a2 = a.clone();
    assert!(a.hit(&key("key"), &quota, 1).unwrap().allowed);
    assert!(
        b.hit(&key("key"), &quota, 1).unwrap().allowed,
        "new() instances do not share"
    );
    assert!(
        !a2.hit(&key("key"), &quota, 1).unwrap().allowed,
        "clones share"
    );
    assert_eq!(a2.len(), 1);
    assert_eq!(b.len(), 1);
    let default = InMemoryBackend::default();
    assert!(default.hit(&key("key"), &quota, 1).unwrap().allowed);
    assert_eq!(a.prefix(), "traffik");
    assert_eq!(ThrottleBackend::prefix(&a), "traffik");
    let custom = InMemoryBackend::builder().prefix("myapp").build();
    assert_eq!(custom.prefix(), "myapp");
    assert!(format!("{custom:?}").contains("myapp"));
}

#[tokio::test]
async fn peek_does_not_consume() {
    for strategy in STRATEGIES {
        let (_clock, backend) = manual();
        let quota = quota("2/min", strategy);
        for _ in 0..5 {
            let d = through_trait(&backend, "key", &quota, 1, Op::Peek).await;
            assert!(d.allowed, "{strategy}");
            assert_eq!(d.remaining, 1, "{strategy}: as if hit once");
        }
        assert_eq!(backend.len(), 0, "{strategy}: a peek stores nothing");
        assert!(
            through_trait(&backend, "key", &quota, 1, Op::Hit)
                .await
                .allowed
        );
        for _ in 0..5 {
            let d = through_trait(&backend, "key", &quota, 1, Op::Peek).await;
            assert!(d.allowed, "{strategy}");
            assert_eq!(d.remaining, 0, "{strategy}");
        }
        let d = through_trait(&backend, "key", &quota, 2, Op::Peek).await;
        assert!(!d.allowed, "{strategy}");
        assert!(
            through_trait(&backend, "key", &quota, 1, Op::Hit)
                .await
                .allowed
        );
        let peek = through_trait(&backend, "key", &quota, 1, Op::Peek).await;
        let hit = through_trait(&backend, "key", &quota, 1, Op::Hit).await;
        assert!(!peek.allowed);
        assert_eq!(peek, hit, "{strategy}: a peek predicts the next hit");
        assert_eq!(backend.len(), 1);
    }
}

#[test]
fn the_backend_future_is_ready_at_once() {
    let backend = InMemoryBackend::new();
    let quota = quota("1/s", Strategy::TokenBucket);
    let ready = ThrottleBackend::decide(&backend, &key("k"), &[quota], 1, Op::Hit).into_ready();
    assert!(ready.expect("ready").unwrap().binding().allowed);
}

#[test]
fn a_key_rebuilt_with_another_strategy_starts_fresh() {
    let backend = InMemoryBackend::new();
    let bucket = quota("100/min", Strategy::TokenBucket);
    for _ in 0..100 {
        assert!(backend.hit(&key("k"), &bucket, 1).unwrap().allowed);
    }
    assert!(!backend.hit(&key("k"), &bucket, 1).unwrap().allowed);
    // The same key under another strategy (a throttle rebuilt with the same
    // uid) must not read the token bucket's state as its own.
    let window = quota("100/min", Strategy::SlidingWindowCounter);
    let decision = backend.hit(&key("k"), &window, 1).unwrap();
    assert!(decision.allowed, "{decision:?}");
    assert_eq!(decision.remaining, 99);
}

/// Word-sized states and sliding-window logs live in separate tables of a
/// shard: `len()`, the key cap, `reset()` and the sweep see both.
#[tokio::test]
async fn every_strategy_shares_one_count_of_keys_and_one_cap() {
    let clock = ManualClock::starting_at(Duration::from_secs(1_000));
    let backend = InMemoryBackend::builder()
        .clock(clock.clone())
        .shards(1)
        .max_keys(STRATEGIES.len())
        .build();
    let quotas: Vec<Quota> = STRATEGIES
        .iter()
        .map(|&strategy| quota("1/min", strategy))
        .collect();
    for quota in &quotas {
        assert!(backend.hit(&key("k"), quota, 1).unwrap().allowed);
        assert!(!backend.hit(&key("k"), quota, 1).unwrap().allowed);
    }
    assert_eq!(backend.len(), STRATEGIES.len());
    // The cap counts logs and words alike: one more key of either kind
    // takes the place of another.
    for quota in &quotas {
        assert!(backend.hit(&key("other"), quota, 1).unwrap().allowed);
        assert_eq!(backend.len(), STRATEGIES.len());
    }
    backend.reset().await.unwrap();
    assert!(backend.is_empty());
    for quota in &quotas {
        assert!(backend.hit(&key("k"), quota, 1).unwrap().allowed);
    }
    forget(&clock, &quotas[0]);
    backend.purge_expired();
    assert!(backend.is_empty(), "{} keys left", backend.len());
}

/// An identifier that returns a client address as text counts on that
/// client's counter, in memory as on Redis (where both are the same text).
#[test]
fn a_text_identity_spelling_an_address_shares_its_counter() {
    let backend = InMemoryBackend::new();
    let once = quota("1/min", Strategy::TokenBucket);
    let text = Key::new("api", "10.0.0.1", Scope::shared());
    let client = Key::client("api", "10.0.0.1".parse().unwrap(), 64, Scope::shared());
    assert!(backend.hit(&text, &once, 1).unwrap().allowed);
    assert!(!backend.hit(&client, &once, 1).unwrap().allowed);
    let other = Key::new("api", "10.0.0.2", Scope::shared());
    assert!(backend.hit(&other, &once, 1).unwrap().allowed);
}
