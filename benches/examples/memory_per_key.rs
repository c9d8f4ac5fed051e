//! Resident memory per live key of the in-memory backend, and reclaiming of
//! expired keys.
//!
//! ```sh
//! cargo run -p traffik-benches --release --example memory_per_key            # 1,000,000 keys
//! cargo run -p traffik-benches --release --example memory_per_key -- 200000  # another count
//! ```
//!
//! Inserts N distinct client keys (text `traffik:api:10.x.y.z:http:GET:/hello`)
//! for each of GCRA and TokenBucket (1 hit each, period 1 hour) into a backend
//! built with `.max_keys(2_000_000)` and a `ManualClock`, and reads the
//! process's resident memory (`VmRSS` in `/proc/self/status`) before and
//! after. Then it moves the clock past the period, calls `purge_expired()`
//! and prints `len()` and the resident memory again. The allocator may keep
//! freed pages, so RSS need not shrink: `len()` says whether keys were
//! reclaimed; a second round of inserts shows whether the memory is reused.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use http::Method;
use traffik::backend::InMemoryBackend;
use traffik::clock::ManualClock;
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

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status (Linux)");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS value");
    kb * 1024
}

/// The `i`th client's key, as the default identity keys it.
fn key(i: usize) -> Key<'static> {
    let ip = Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8);
    Key::client(
        "api",
        IpAddr::V4(ip),
        64,
        Scope::http(&Method::GET, "/hello"),
    )
}

fn fill(memory: &InMemoryBackend, quota: &Quota, n: usize) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        let decision = memory.hit(&key(i), quota, 1).expect("below max_keys");
        assert!(decision.allowed);
    }
    start.elapsed()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    // One process per strategy, so that one run's freed memory does not
    // flatter the next.
    if let Some(name) = args.iter().find_map(|a| a.strip_prefix("--strategy=")) {
        let strategy = STRATEGIES
            .into_iter()
            .find(|s| s.name() == name)
            .expect("a strategy name");
        measure(strategy, n);
        return;
    }
    println!("in-memory backend, {n} distinct keys, 1 hit each, period 1 hour\n");
    println!(
        "| strategy | live keys | RSS growth | bytes per live key | insert time | after purge: len() | RSS after purge | RSS after refill |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let exe = std::env::current_exe().expect("current exe");
    for strategy in [Strategy::Gcra, Strategy::TokenBucket] {
        let status = std::process::Command::new(&exe)
            .arg(n.to_string())
            .arg(format!("--strategy={}", strategy.name()))
            .status()
            .expect("run self");
        assert!(status.success());
    }
    println!(
        "\nRSS: VmRSS of the process; bytes per key = RSS growth / live keys \
         (includes the hash tables' spare capacity)."
    );
}

fn measure(strategy: Strategy, n: usize) {
    let clock = ManualClock::starting_at(Duration::from_secs(1));
    let memory = InMemoryBackend::builder()
        .max_keys(2_000_000)
        .clock(clock.clone())
        .build();
    let quota = Quota::new(Rate::per_hour(100).unwrap(), strategy).unwrap();

    let before = rss_bytes();
    let took = fill(&memory, &quota, n);
    let after = rss_bytes();
    let live = memory.len();
    let growth = after.saturating_sub(before);

    clock.advance(Duration::from_secs(3601));
    memory.purge_expired();
    let left = memory.len();
    let after_purge = rss_bytes();

    // As many new keys again: reuses the freed space (or not).
    fill(&memory, &quota, n);
    let after_refill = rss_bytes();

    println!(
        "| {} | {} | {:.1} MiB | {:.0} | {:.0} ns/key | {} | {:.1} MiB | {:.1} MiB |",
        strategy.name(),
        live,
        mib(growth),
        growth as f64 / live as f64,
        took.as_nanos() as f64 / n as f64,
        left,
        mib(after_purge),
        mib(after_refill),
    );
}
