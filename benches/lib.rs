//! Nothing here: this package (`traffik-benches`, not published) holds the
//! benchmarks and measurement programs that compare traffik with its peers
//! (governor, tower_governor), so that their dependencies stay out of
//! traffik's own dev-dependencies, which every `cargo run --example` builds.
//!
//! - `memory.rs`, `layer.rs`: `cargo bench -p traffik-benches` (tables:
//!   `scripts/bench.sh`);
//! - `redis.rs`: `cargo bench -p traffik-benches --features redis --bench
//!   redis` (beside the server's ceiling: `scripts/bench-redis.sh`);
//! - `examples/callgrind_layer.rs`: instructions per request
//!   (`scripts/callgrind-layer.sh`);
//! - `examples/load_server.rs`: the server `scripts/load.sh` loads;
//! - `examples/memory_per_key.rs`: resident memory per live key.
