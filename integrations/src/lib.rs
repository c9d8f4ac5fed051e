//! Nothing here: this package holds the examples and tests of traffik that
//! need heavier third-party stacks, so that those stay out of traffik's own
//! dev-dependencies (which every `cargo run --example` builds):
//!
//! - `examples/grpc.rs`, `tests/grpc.rs`: a tonic server (feature `tonic`);
//! - `examples/metrics.rs`, `tests/metrics.rs`: the `metrics` facade with a
//!   Prometheus exporter and the debugging recorder (feature `metrics`);
//! - `examples/custom_backend.rs`: a `ThrottleBackend` on SQLite (rusqlite).
//!
//! ```sh
//! cargo run -p traffik-integrations --example grpc -- --once
//! cargo test -p traffik-integrations
//! ```
