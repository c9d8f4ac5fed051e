//! The compile errors the README promises, checked by compiling small
//! crates that use traffik wrongly (`cargo check`, offline, with this
//! project's lock file, in a target directory of their own under
//! `target/tmp`) and reading what rustc says.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Checks a one-file crate using traffik (axum feature on) and returns
/// rustc's diagnostics; panics if it compiles, or fails with no error of
/// the `code` expected (`"E0277"`).
fn compile_error(name: &str, code: &str, main_rs: &str) -> String {
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
        stderr.contains(&format!("error[{code}]")),
        "{name}: no error {code} (did the check itself fail?):\n{stderr}"
    );
    stderr
}

#[test]
fn a_body_traffik_cannot_answer_in_says_to_call_any_body() {
    let stderr = compile_error(
        "needs_any_body",
        "E0277",
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

/// A WebSocket builder option that does not exist: `method` is HTTP-only
/// (`call` is how the HTTP builder takes it). The only error is that the
/// method is not found on the WebSocket builder.
fn websocket_builder_lacks(method: &str, call: &str) {
    let stderr = compile_error(
        &format!("ws_without_{method}"),
        "E0599",
        &format!(
            r#"
use traffik::WebSocketThrottle;

fn main() {{
    let built = WebSocketThrottle::builder()
        .uid("ws")
        .rate("10/s")
        .{call}
        .build();
    let _ = built;
}}
"#
        ),
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("error["))
        .collect();
    assert_eq!(
        errors,
        [format!(
            "error[E0599]: no method named `{method}` found for struct `ThrottleBuilder<WsOptions>` in the current scope"
        )],
        "{stderr}"
    );
}

#[test]
fn a_websocket_throttle_has_no_dynamic_rate() {
    websocket_builder_lacks(
        "dynamic_rate",
        "dynamic_rate(|_: &http::request::Parts| async { traffik::Rate::per_minute(10).unwrap() })",
    );
}

#[test]
fn a_websocket_throttle_has_no_rate_limit_headers() {
    websocket_builder_lacks("headers", "headers(traffik::RateLimitHeaders::Ietf)");
}

#[test]
fn a_websocket_throttle_has_no_429_responder() {
    websocket_builder_lacks(
        "on_throttled",
        "on_throttled(|_: &traffik::Throttled| http::Response::new(String::new()))",
    );
}
