//! CPU time of requests waiting in line: 8,000 requests from one client
//! under `Exceeded::Wait { max: 20 s }`, held by a 100/s throttle (in
//! memory) around a `tower::service_fn`, on a 2-thread runtime. For 10 s it
//! counts the requests admitted and the CPU time the process used
//! (`/proc/self/stat`), and prints both with the decisions the backend made.
//!
//! ```sh
//! cargo run -p traffik-benches --release --example waiters_cpu
//! cargo run -p traffik-benches --release --example waiters_cpu -- 8000 10   # waiters, seconds
//! ```
//!
//! Waiters of one key stand in a FIFO line in the app instance: only the
//! first asks the backend, once per free slot, so n waiters cost O(n)
//! decisions and an idle line costs no CPU.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use http::{Request, Response};
use tower::{Layer, ServiceExt};
use traffik::backend::{BackendFuture, BoxFuture, InMemoryBackend, Op, ThrottleBackend};
use traffik::key::Key;
use traffik::{Error, Exceeded, HttpThrottle, Quota};

/// The in-memory backend, counting the decisions asked of it.
#[derive(Clone)]
struct Counting {
    memory: InMemoryBackend,
    decisions: Arc<AtomicU64>,
}

impl ThrottleBackend for Counting {
    fn prefix(&self) -> &str {
        self.memory.prefix()
    }
    fn decide(&self, key: &Key<'_>, quotas: &[Quota], cost: u64, op: Op) -> BackendFuture {
        self.decisions.fetch_add(1, Ordering::Relaxed);
        ThrottleBackend::decide(&self.memory, key, quotas, cost, op)
    }
    fn reset(&self) -> BoxFuture<Result<(), Error>> {
        ThrottleBackend::reset(&self.memory)
    }
}

/// User + system CPU time of the whole process, from `/proc/self/stat`
/// (clock ticks of 10 ms, the Linux default).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("Linux /proc");
    // Fields after the command name (which is in parentheses).
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let waiters = args.first().copied().unwrap_or(8_000);
    let seconds = args.get(1).copied().unwrap_or(10);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let decisions = Arc::new(AtomicU64::new(0));
        let backend = Counting {
            memory: InMemoryBackend::new(),
            decisions: decisions.clone(),
        };
        let throttle = HttpThrottle::builder()
            .uid("waiters")
            .rate("100/s")
            .on_exceeded(Exceeded::Wait {
                max: Duration::from_secs(20),
            })
            .max_waiting(usize::MAX)
            .backend(backend)
            .build()?;
        let service = throttle.layer().layer(tower::service_fn(|_: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }));
        let admitted = Arc::new(AtomicU64::new(0));
        let start_cpu = cpu_time();
        let start = Instant::now();
        for _ in 0..waiters {
            let service = service.clone();
            let admitted = admitted.clone();
            tokio::spawn(async move {
                let mut request = Request::new(Body::empty());
                request
                    .extensions_mut()
                    .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 1], 40_000))));
                let Ok(response) = service.oneshot(request).await;
                if response.status().is_success() {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let cpu = cpu_time() - start_cpu;
        let wall = start.elapsed();
        println!(
            "{waiters} waiters, {:.1} s: {} admitted, {} decisions, CPU {:.2} s ({:.0}% of one core)",
            wall.as_secs_f64(),
            admitted.load(Ordering::Relaxed),
            decisions.load(Ordering::Relaxed),
            cpu.as_secs_f64(),
            100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
        );
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    // The waiters still in line are dropped with the runtime.
    std::process::exit(0);
}
