//! Helpers shared by the HTTP test suites (`http_oneshot`, `http_server`,
//! `http_errors`).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use http::{HeaderMap, Request, StatusCode};
use tower::ServiceExt;
use traffik::backend::{BackendFuture, BoxFuture, Op, ThrottleBackend};
use traffik::key::Key;
use traffik::{Error, Quota, Strategy};

/// Every strategy (`Strategy` is `#[non_exhaustive]`: the crate keeps no
/// public list).
pub const STRATEGIES: [Strategy; 5] = [
    Strategy::TokenBucket,
    Strategy::FixedWindow,
    Strategy::SlidingWindowCounter,
    Strategy::SlidingWindowLog,
    Strategy::Gcra,
];

/// A socket address from `"1.2.3.4:5678"` or `"[2001:db8::1]:80"`.
pub fn addr(text: &str) -> SocketAddr {
    text.parse().expect("a socket address")
}

/// A request from `peer` (as axum's `ConnectInfo`), or an anonymous one.
pub fn request(
    method: &str,
    path: &str,
    peer: Option<&str>,
    headers: &[(&str, &str)],
) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let mut req = builder.body(Body::empty()).expect("a valid request");
    if let Some(peer) = peer {
        req.extensions_mut().insert(ConnectInfo(addr(peer)));
    }
    req
}

/// `GET path` from `peer`.
pub fn at(path: &str, peer: &str) -> Request<Body> {
    request("GET", path, Some(peer), &[])
}

/// What came back.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// A header as a string (`None` when absent).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header"))
    }

    /// `Retry-After` as a number.
    pub fn retry_after(&self) -> u64 {
        self.header("retry-after")
            .expect("a Retry-After header")
            .parse()
            .expect("Retry-After in integer seconds")
    }
}

/// Sends one request through a clone of `app` with `oneshot`.
pub async fn send(app: &Router, req: Request<Body>) -> Reply {
    let response = app.clone().oneshot(req).await.expect("infallible router");
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .expect("a readable body");
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(bytes.to_vec()).expect("utf-8 body"),
    }
}

/// Sends `n` requests built by `make` one after another; returns the statuses.
pub async fn statuses(app: &Router, n: usize, make: impl Fn() -> Request<Body>) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(send(app, make()).await.status.as_u16());
    }
    out
}

/// A backend whose every answer is an error (a dead store). Counts its calls.
#[derive(Clone, Default)]
pub struct FailingBackend {
    pub calls: Arc<AtomicUsize>,
}

impl ThrottleBackend for FailingBackend {
    fn prefix(&self) -> &str {
        "failing"
    }
    fn decide(&self, _key: &Key<'_>, _quotas: &[Quota], _cost: u64, _op: Op) -> BackendFuture {
        self.calls.fetch_add(1, Ordering::SeqCst);
        BackendFuture::ready(Err(Error::backend("down")))
    }
    fn reset(&self) -> BoxFuture<Result<(), Error>> {
        Box::pin(async { Err(Error::backend("down")) })
    }
}

/// A backend whose store never answers; it gives up after its own timeout,
/// like a network backend would.
#[derive(Clone)]
pub struct HangingBackend {
    pub timeout: Duration,
}

impl HangingBackend {
    fn answer(&self) -> BackendFuture {
        let timeout = self.timeout;
        BackendFuture::new(async move {
            match tokio::time::timeout(timeout, std::future::pending::<()>()).await {
                Ok(()) => unreachable!("the store never answers"),
                Err(_) => Err(Error::backend("timed out")),
            }
        })
    }
}

impl ThrottleBackend for HangingBackend {
    fn prefix(&self) -> &str {
        "hanging"
    }
    fn decide(&self, _key: &Key<'_>, _quotas: &[Quota], _cost: u64, _op: Op) -> BackendFuture {
        self.answer()
    }
    fn reset(&self) -> BoxFuture<Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
}

/// The crate's Tokio clock (kept under this name for the tests).
#[allow(unused_imports)]
pub use traffik::clock::TokioClock;

/// Parses a structured-field item `"uid";a=1;b=2` into its name and params.
pub fn sf_item(item: &str) -> (String, Vec<(String, u64)>) {
    let mut pieces = item.trim().split(';');
    let name = pieces.next().expect("a name").trim().to_owned();
    let params = pieces
        .map(|p| {
            let (k, v) = p.split_once('=').expect("key=value");
            (k.trim().to_owned(), v.trim().parse().expect("an integer"))
        })
        .collect();
    (name, params)
}

/// The value of parameter `key` of an item.
pub fn sf_param(params: &[(String, u64)], key: &str) -> u64 {
    params
        .iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("parameter {key} in {params:?}"))
        .1
}
