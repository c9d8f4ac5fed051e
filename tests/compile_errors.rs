//! The compile errors the README promises, checked by compiling small
//! crates that use traffik wrongly (`cargo check`, offline, with this
//! project's lock file, in a target directory of their own under
//! `target/tmp`) and reading what rustc says.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Checks a one-file crate using traffik (axum feature on) and returns
/// rustc's diagnostics; panics if it compiles.
fn compile_error(name: &str, main_rs: &str) -> String {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.join("compile-errors").join(name);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = format!(
        r#"[package]
name = "{name}"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
traffik = {{ path = {path:?}, features = ["axum"] }}
bytes = "1"
http = "1"
http-body-util = "0.1"
tower = {{ version = "0.5", features = ["util"] }}

[workspace]
"#,
        path = manifest_dir.display().to_string(),
    );
    std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
    std::fs::write(dir.join("src/main.rs"), main_rs).unwrap();
    // The project's versions, so that nothing is resolved or fetched anew.
    std::fs::copy(manifest_dir.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    let target: PathBuf = tmp.join("compile-errors-target");
    let output = Command::new(env!("CARGO"))
        .args(["check", "--offline", "--quiet", "--color", "never"])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("cargo runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "{name} compiled, but should not:\n{stderr}"
    );
    assert!(
        stderr.contains("error[E0277]"),
        "{name}: not a trait-bound error (did the check itself fail?):\n{stderr}"
    );
    stderr
}

#[test]
fn a_body_traffik_cannot_answer_in_says_to_call_any_body() {
    let stderr = compile_error(
        "needs_any_body",
        r#"
use std::convert::Infallible;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Service, ServiceBuilder};
use traffik::{backend::InMemoryBackend, ThrottleLayer};

fn is_service<S: Service<Request<()>>>(_: S) {}

fn main() {
    is_service(ServiceBuilder::new().layer(ThrottleLayer::new(InMemoryBackend::new())).service_fn(
        |_: Request<()>| async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) },
    ));
}
"#,
    );
    // The headline names the body type (with or without its path); the
    // note says what to do.
    let headline = stderr
        .lines()
        .find(|line| line.starts_with("error[E0277]"))
        .unwrap();
    assert!(
        headline.contains("traffik cannot answer 429s in `")
            && headline.contains("Full<")
            && headline.ends_with("the inner service's response body type"),
        "{stderr}"
    );
    assert!(
        stderr.contains("call `.any_body()` on the ThrottleLayer"),
        "{stderr}"
    );
}
