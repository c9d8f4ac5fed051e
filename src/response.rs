//! The default 429, the error responses and the rate-limit headers.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

use crate::error::ANONYMOUS_HELP;
use crate::strategy::ceil_secs;
use crate::strategy::Decisions;
use crate::{BoxError, Decision, Error, Quota};

/// The body of responses traffik makes itself (429, 500, 503).
pub type BoxBody = UnsyncBoxBody<Bytes, BoxError>;

/// Which rate-limit headers a throttle adds to every response it saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateLimitHeaders {
    /// No rate-limit headers (default). `Retry-After` is always on a 429.
    #[default]
    None,
    /// IETF draft-ietf-httpapi-ratelimit-headers-10 structured fields:
    /// `RateLimit-Policy: "api";q=100;w=60` and `RateLimit: "api";r=42;t=13`.
    /// A throttle with several rates lists each as its own policy, named
    /// `"{uid}-1"`, `"{uid}-2"`… in the order of `.rates([..])`.
    Ietf,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`
    /// (reset in delta seconds).
    Legacy,
}

/// Builds a custom response for a throttled request (see `.on_throttled`).
pub type ThrottledResponder = Arc<dyn Fn(&Throttled) -> Response<BoxBody> + Send + Sync>;

/// Wraps a user closure into a [`ThrottledResponder`].
pub(crate) fn responder<F, B>(f: F) -> ThrottledResponder
where
    F: Fn(&Throttled) -> Response<B> + Send + Sync + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Arc::new(move |throttled: &Throttled| f(throttled).map(box_body))
}

pub(crate) fn box_body<B>(body: B) -> BoxBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

fn text_body(text: impl Into<Bytes>) -> BoxBody {
    box_body(Full::new(text.into()))
}

/// What a throttle says about itself in headers and 429s.
#[derive(Clone)]
pub(crate) struct Policy {
    pub(crate) name: Arc<str>,
    pub(crate) headers: RateLimitHeaders,
    pub(crate) responder: Option<ThrottledResponder>,
    /// `.on_error(..)`: the answer to the errors other than a 429.
    pub(crate) on_error: Option<ErrorResponder>,
}

/// A request that exceeded its rate limit: the [`Decision`] and the throttle
/// that made it. Carried by [`Error::Throttled`] and passed to
/// `.on_throttled(..)` closures.
#[derive(Clone)]
pub struct Throttled(Box<ThrottledInner>);

#[derive(Clone)]
struct ThrottledInner {
    info: RateLimitInfo,
    responder: Option<ThrottledResponder>,
}

impl fmt::Debug for Throttled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Throttled")
            .field("throttle", &self.0.info.name)
            .field("decision", &self.0.info.decision)
            .finish()
    }
}

impl Throttled {
    pub(crate) fn new(info: RateLimitInfo, policy: Policy) -> Self {
        Throttled(Box::new(ThrottledInner {
            info,
            responder: policy.responder,
        }))
    }

    /// The decision that rejected the request (with several rates, the
    /// binding one: see [`Decisions::binding`](crate::strategy::Decisions::binding)).
    pub fn decision(&self) -> &Decision {
        &self.0.info.decision
    }

    /// The exact wait until the request would be allowed.
    pub fn retry_after(&self) -> Duration {
        self.0.info.decision.retry_after
    }

    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.0.info.decision.retry_after_secs()
    }

    /// The uid of the throttle that rejected the request.
    pub fn throttle(&self) -> &str {
        &self.0.info.name
    }

    /// The period of the rate that rejected the request (zero for an
    /// in-flight limit).
    pub fn window(&self) -> Duration {
        self.0.info.window.unwrap_or_default()
    }

    /// The response for this rejection: the throttle's `on_throttled`
    /// response if it has one, else the default 429.
    pub fn to_response(&self) -> Response<BoxBody> {
        self.response_with(None, false)
    }

    /// The response, with a fallback responder (a layer's `on_throttled`)
    /// used when the throttle has none of its own; for a gRPC request, a
    /// gRPC status unless a responder answers.
    pub(crate) fn response_with(
        &self,
        fallback: Option<&ThrottledResponder>,
        grpc: bool,
    ) -> Response<BoxBody> {
        let response = match self.0.responder.as_ref().or(fallback) {
            Some(responder) => responder(self),
            None if grpc => grpc_429(self),
            None => default_429(self),
        };
        self.with_headers(response)
    }

    /// `Retry-After` (unless there), `Cache-Control` and the rate-limit
    /// headers, on an answer to this rejection.
    fn with_headers(&self, mut response: Response<BoxBody>) -> Response<BoxBody> {
        let headers = response.headers_mut();
        if !headers.contains_key(RETRY_AFTER) {
            headers.insert(RETRY_AFTER, HeaderValue::from(self.retry_after_secs()));
        }
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        self.0.info.apply(headers);
        response
    }
}

/// The default 429: `Retry-After: N` and `Too many requests. Retry in N seconds.`
pub fn default_429(throttled: &Throttled) -> Response<BoxBody> {
    let secs = throttled.retry_after_secs();
    let mut response = Response::new(text_body(format!(
        "Too many requests. Retry in {secs} seconds."
    )));
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(RETRY_AFTER, HeaderValue::from(secs));
    response
}

/// Builds a custom response for an error other than a throttled request
/// (see `.on_error`).
pub type ErrorResponder = Arc<dyn Fn(&Error) -> Response<BoxBody> + Send + Sync>;

/// Wraps a user closure into an [`ErrorResponder`].
pub(crate) fn error_responder<F, B>(f: F) -> ErrorResponder
where
    F: Fn(&Error) -> Response<B> + Send + Sync + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Arc::new(move |error: &Error| f(error).map(box_body))
}

/// Whether a request is a gRPC call (`application/grpc`,
/// `application/grpc+proto`...): its client reads the status from
/// `grpc-status`, and would read an HTTP error's text body as a message.
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    headers.get(CONTENT_TYPE).is_some_and(|value| {
        let value = value.as_bytes();
        value.len() >= GRPC.len() && value[..GRPC.len()].eq_ignore_ascii_case(GRPC)
    })
}

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// gRPC's retry pushback (gRFC A6): clients with a retry policy wait this
/// long before retrying.
static GRPC_RETRY_PUSHBACK_MS: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// gRPC status codes traffik answers with.
const GRPC_RESOURCE_EXHAUSTED: u8 = 8;
const GRPC_INTERNAL: u8 = 13;
const GRPC_UNAVAILABLE: u8 = 14;

/// `grpc-message` escaping: `%`, and bytes outside printable ASCII.
const GRPC_MESSAGE_SET: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// A gRPC "trailers-only" answer: HTTP 200, the status in `grpc-status` and
/// `grpc-message`, an empty body. Other headers (`retry-after`, the
/// rate-limit headers) reach the client as the status' metadata.
fn grpc_status(code: u8, message: &str) -> Response<BoxBody> {
    let mut response = Response::new(box_body(http_body_util::Empty::<Bytes>::new()));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(GRPC_STATUS.clone(), HeaderValue::from(u16::from(code)));
    let message = percent_encoding::utf8_percent_encode(message, GRPC_MESSAGE_SET).to_string();
    if let Ok(message) = HeaderValue::from_str(&message) {
        headers.insert(GRPC_MESSAGE.clone(), message);
    }
    response
}

/// The default gRPC answer to a throttled call: RESOURCE_EXHAUSTED naming
/// the wait, with `retry-after` and `grpc-retry-pushback-ms` metadata.
pub fn grpc_429(throttled: &Throttled) -> Response<BoxBody> {
    let secs = throttled.retry_after_secs();
    let mut response = grpc_status(
        GRPC_RESOURCE_EXHAUSTED,
        &format!("Too many requests. Retry in {secs} seconds."),
    );
    let headers = response.headers_mut();
    headers.insert(RETRY_AFTER, HeaderValue::from(secs));
    let millis = u64::try_from(throttled.retry_after().as_millis()).unwrap_or(u64::MAX);
    headers.insert(GRPC_RETRY_PUSHBACK_MS.clone(), HeaderValue::from(millis));
    response
}

/// The response for an error: a throttled request's 429 (or its
/// `on_throttled` response, else `throttled`'s), else `on_error`'s response,
/// else a 500 or 503 (a gRPC status for a gRPC request).
pub(crate) fn error_response(
    error: &Error,
    throttled: Option<&ThrottledResponder>,
    on_error: Option<&ErrorResponder>,
    grpc: bool,
) -> Response<BoxBody> {
    if let Error::Throttled(refused) = error {
        return refused.response_with(throttled, grpc);
    }
    let backend = matches!(error, Error::Backend(_));
    let mut response = match on_error {
        Some(responder) => responder(error),
        None => default_error(error, grpc),
    };
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if backend && !headers.contains_key(RETRY_AFTER) {
        headers.insert(RETRY_AFTER, HeaderValue::from(1u64));
    }
    response
}

/// A 500 naming the problem, or a 503 for a backend that failed under
/// `FailureMode::Closed`.
fn default_error(error: &Error, grpc: bool) -> Response<BoxBody> {
    let (status, code, body) = match error {
        Error::AnonymousConnection => (
            StatusCode::INTERNAL_SERVER_ERROR,
            GRPC_INTERNAL,
            ANONYMOUS_HELP.to_owned(),
        ),
        Error::Backend(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            GRPC_UNAVAILABLE,
            "Service temporarily unavailable: the rate limiter's backend is not answering. Retry in 1 second."
                .to_owned(),
        ),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, GRPC_INTERNAL, error.to_string()),
    };
    if grpc {
        let mut response = grpc_status(code, &body);
        if code == GRPC_UNAVAILABLE {
            response
                .headers_mut()
                .insert(GRPC_RETRY_PUSHBACK_MS.clone(), HeaderValue::from(1000u64));
        }
        return response;
    }
    let mut response = Response::new(text_body(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for Error {
    fn into_response(self) -> axum::response::Response {
        match &self {
            Error::Configuration(_) | Error::AnonymousConnection => {
                tracing::error!(error = %self, "traffik cannot throttle this request")
            }
            Error::Backend(_) => tracing::warn!(error = %self, "traffik backend failed"),
            _ => {}
        }
        error_response(&self, None, None, false).map(axum::body::Body::new)
    }
}

/// `throttle.hit(..).await?` in a tonic handler: RESOURCE_EXHAUSTED (with
/// `retry-after` metadata), UNAVAILABLE for a backend failure, INTERNAL for
/// a configuration error.
#[cfg(feature = "tonic")]
impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        // Not the throttle's `on_throttled` response: a `Status` carries
        // gRPC's own answer only (its code, message and metadata).
        let response = match &error {
            Error::Throttled(throttled) => throttled.with_headers(grpc_429(throttled)),
            error => error_response(error, None, None, true),
        };
        tonic::Status::from_header_map(response.headers())
            .unwrap_or_else(|| tonic::Status::internal(error.to_string()))
    }
}

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for Throttled {
    fn into_response(self) -> axum::response::Response {
        self.to_response().map(axum::body::Body::new)
    }
}

/// The rate-limit header values of one throttle's decision.
#[derive(Debug, Clone)]
pub(crate) struct RateLimitInfo {
    name: Arc<str>,
    mode: RateLimitHeaders,
    /// The decision the request got, and its rate's period (`None` for an
    /// in-flight limit, which has none).
    decision: Decision,
    window: Option<Duration>,
    /// Each rate's decision and period (several rates only).
    rates: Vec<(Decision, Option<Duration>)>,
}

static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

impl RateLimitInfo {
    pub(crate) fn new(policy: &Policy, decisions: &Decisions, quotas: &[Quota]) -> Self {
        let window = |quota: &Quota| Some(quota.rate().period());
        let rates = match quotas {
            [] | [_] => Vec::new(),
            quotas => decisions
                .iter()
                .copied()
                .zip(quotas.iter().map(window))
                .collect(),
        };
        RateLimitInfo {
            name: Arc::clone(&policy.name),
            mode: policy.headers,
            decision: decisions.binding(),
            window: quotas.get(decisions.binding_index()).and_then(window),
            rates,
        }
    }

    /// Adds this throttle's headers. IETF fields are lists: several throttles
    /// (and several rates of one throttle) append their own items. Legacy
    /// headers keep the most restrictive (lowest remaining) throttle.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        let d = &self.decision;
        match self.mode {
            RateLimitHeaders::None => {}
            RateLimitHeaders::Ietf => {
                let one = [(self.decision, self.window)];
                let rates = if self.rates.is_empty() {
                    &one[..]
                } else {
                    &self.rates[..]
                };
                for (index, (d, window)) in rates.iter().enumerate() {
                    let name = if rates.len() == 1 {
                        sf_string(&self.name)
                    } else {
                        sf_string(&format!("{}-{}", self.name, index + 1))
                    };
                    // An in-flight limit has no window and no reset.
                    let (policy, state) = match window {
                        Some(window) => (
                            format!("{name};q={};w={}", d.limit, ceil_secs(*window).max(1)),
                            format!("{name};r={};t={}", d.remaining, d.reset_after_secs()),
                        ),
                        None => (
                            format!("{name};q={}", d.limit),
                            format!("{name};r={}", d.remaining),
                        ),
                    };
                    append_list(headers, &RATELIMIT_POLICY, policy);
                    append_list(headers, &RATELIMIT, state);
                }
            }
            RateLimitHeaders::Legacy => {
                let current = headers
                    .get(&X_REMAINING)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if current.is_none_or(|remaining| d.remaining < remaining) {
                    headers.insert(X_LIMIT.clone(), HeaderValue::from(d.limit));
                    headers.insert(X_REMAINING.clone(), HeaderValue::from(d.remaining));
                    headers.insert(X_RESET.clone(), HeaderValue::from(d.reset_after_secs()));
                }
            }
        }
    }
}

/// A hit's [`Decision`] with its throttle's rate-limit headers, for
/// handlers that count hits themselves
/// ([`HttpThrottle::hit_with_headers`](crate::HttpThrottle::hit_with_headers))
/// and want the same headers on their allowed responses as the layers add.
///
/// The throttle's [`.headers(..)`](crate::ThrottleBuilder::headers) setting
/// decides which headers (none by default). As in the layers, a request the
/// throttle let through without counting gets none, and its decision is
/// [`Decision::unlimited()`] (`remaining == u64::MAX`): an exempt request
/// (an unlimited identity or rate, cost 0), and one whose backend failed
/// under [`FailureMode::Open`](crate::FailureMode::Open) or in shadow mode.
/// With the `axum` feature it is `IntoResponseParts` (return it in a tuple
/// before the body) and `IntoResponse` (an empty 200 with the headers).
/// [`HttpThrottle::peek_with_headers`](crate::HttpThrottle::peek_with_headers)
/// and [`hit_parts_with_headers`](crate::HttpThrottle::hit_parts_with_headers)
/// give one too.
///
/// ```
/// # #[cfg(feature = "axum")] {
/// use axum::{extract::Request, routing::get, Router};
/// use traffik::{backend::InMemoryBackend, HttpThrottle, RateLimitHeaders};
///
/// let throttle = HttpThrottle::builder()
///     .uid("search")
///     .rate("5/10s")
///     .headers(RateLimitHeaders::Ietf)
///     .backend(InMemoryBackend::new())
///     .build()
///     .unwrap();
/// let app: Router = Router::new().route("/search", get(move |req: Request| {
///     let throttle = throttle.clone();
///     async move {
///         // Over the limit: `?` answers the 429 (with the headers too).
///         let report = throttle.hit_with_headers(&req).await?;
///         // Allowed: `RateLimit-Policy` and `RateLimit` on the 200.
///         Ok::<_, traffik::Error>((report, "results"))
///     }
/// }));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RateLimitReport {
    decision: Decision,
    info: Option<Box<RateLimitInfo>>,
}

impl RateLimitReport {
    pub(crate) fn new(decision: Decision, info: Option<Box<RateLimitInfo>>) -> Self {
        RateLimitReport { decision, info }
    }

    /// The decision of the hit.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// Adds the throttle's rate-limit headers to `headers`, as the layers do:
    /// IETF fields are lists (other throttles' items are kept), legacy
    /// headers keep the lowest remaining.
    pub fn apply(&self, headers: &mut HeaderMap) {
        if let Some(info) = &self.info {
            info.apply(headers);
        }
    }

    /// The throttle's rate-limit headers alone (empty when it adds none).
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        self.apply(&mut headers);
        headers
    }
}

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for RateLimitReport {
    fn into_response(self) -> axum::response::Response {
        (self, ()).into_response()
    }
}

#[cfg(feature = "axum")]
impl axum::response::IntoResponseParts for RateLimitReport {
    type Error = std::convert::Infallible;

    fn into_response_parts(
        self,
        mut parts: axum::response::ResponseParts,
    ) -> Result<axum::response::ResponseParts, Self::Error> {
        self.apply(parts.headers_mut());
        Ok(parts)
    }
}

/// Appends an item to a structured-field list header (one line).
fn append_list(headers: &mut HeaderMap, name: &HeaderName, item: String) {
    let value = match headers.get(name).and_then(|v| v.to_str().ok()) {
        Some(existing) if !lists_item(existing, &item) => format!("{existing}, {item}"),
        Some(_) => return,
        None => item,
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(name.clone(), value);
    }
}

/// Whether the list `existing` already has an item named as `item`'s
/// (`"name";...`). Items start the list or follow `, `; inside a name a
/// quote is always escaped, so `, "` never starts inside one.
fn lists_item(existing: &str, item: &str) -> bool {
    // The end of the item's leading sf-string (its closing quote).
    let mut escaped = false;
    let close = item.char_indices().skip(1).find(|&(_, c)| {
        let closes = c == '"' && !escaped;
        escaped = c == '\\' && !escaped;
        closes
    });
    let Some((close, _)) = close else {
        return false;
    };
    let name = &item[..=close];
    existing.starts_with(&format!("{name};")) || existing.contains(&format!(", {name};"))
}

/// A structured-field string: `"name"` with `\` and `"` escaped, and `%`
/// and every byte outside printable ASCII percent-encoded (`é` → `%C3%A9`),
/// so that distinct names stay distinct.
fn sf_string(name: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '%' => out.push_str("%25"),
            ' '..='~' => out.push(c),
            _ => {
                let mut utf8 = [0; 4];
                for byte in c.encode_utf8(&mut utf8).bytes() {
                    let _ = write!(out, "%{byte:02X}");
                }
            }
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_one_to_one() {
        assert_eq!(sf_string("api"), r#""api""#);
        assert_eq!(sf_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(sf_string("api-é"), r#""api-%C3%A9""#);
        assert_eq!(sf_string("api-è"), r#""api-%C3%A8""#);
        assert_eq!(sf_string("100%"), r#""100%25""#);
        assert_eq!(sf_string("限流\n"), r#""%E9%99%90%E6%B5%81%0A""#);
        let mut headers = HeaderMap::new();
        for name in ["api-é", "api-è", "限流", "用户"] {
            append_list(
                &mut headers,
                &RATELIMIT,
                format!("{};r=1;t=1", sf_string(name)),
            );
        }
        assert_eq!(
            headers[&RATELIMIT]
                .to_str()
                .unwrap()
                .matches(";r=1")
                .count(),
            4
        );
    }

    #[test]
    fn list_items_are_matched_by_their_whole_name() {
        let mut headers = HeaderMap::new();
        for name in ["x\"api", "api", "api", "a;b", "api2"] {
            append_list(
                &mut headers,
                &RATELIMIT,
                format!("{};r=1;t=1", sf_string(name)),
            );
        }
        assert_eq!(
            headers[&RATELIMIT],
            r#""x\"api";r=1;t=1, "api";r=1;t=1, "a;b";r=1;t=1, "api2";r=1;t=1"#
        );
    }
}
