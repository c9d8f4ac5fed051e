//! [`Error`]: everything that can go wrong, with messages that say how to fix it.

use std::fmt;
use std::sync::Arc;

use crate::response::Throttled;

/// Boxed error type used for sources and bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors returned by traffik.
///
/// With the `axum` feature (default), `Error` implements
/// `axum::response::IntoResponse`, so `throttle.hit(&req).await?` works in a
/// handler that returns `Result<_, traffik::Error>`:
///
/// | variant | response |
/// |---|---|
/// | [`Error::Throttled`] | the throttle's 429 (or its `on_throttled` response) |
/// | [`Error::Backend`] | 503 with `Retry-After` (only reached in [`FailureMode::Closed`](crate::FailureMode::Closed)) |
/// | [`Error::AnonymousConnection`] | 500 whose body says how to fix the server setup |
/// | [`Error::Configuration`] | 500 naming the configuration problem |
///
/// More variants may come: a `match` needs a catch-all arm.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The throttle, rate, rule or backend was configured wrongly. The message
    /// names the bad input and how to fix it.
    Configuration(String),
    /// No client identity could be found for a request: no peer address (the
    /// server was not started with connect info) and no custom identifier.
    AnonymousConnection,
    /// The request exceeded its rate limit.
    Throttled(Throttled),
    /// The backend failed (connection lost, timeout, no room for a new key,
    /// ...).
    Backend(BackendError),
}

impl Error {
    /// Builds an [`Error::Configuration`].
    pub fn configuration(message: impl Into<String>) -> Self {
        Error::Configuration(message.into())
    }

    /// Builds an [`Error::Backend`] from a message.
    pub fn backend(message: impl Into<String>) -> Self {
        Error::Backend(BackendError::new(message))
    }

    /// Builds an [`Error::Backend`] from a message and a source error.
    pub fn backend_with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Backend(BackendError::with_source(message, source))
    }

    /// `true` for [`Error::Throttled`].
    pub fn is_throttled(&self) -> bool {
        matches!(self, Error::Throttled(_))
    }
}

/// How to fix an anonymous connection; part of the 500 body and `Display`.
pub(crate) const ANONYMOUS_HELP: &str = "traffik could not identify the client: the request carries no peer address. \
Serve the app with `axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())` \
(or insert a `std::net::SocketAddr` request extension in a plain Hyper service), \
or give the throttle a custom `.identifier(..)`.";

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Configuration(message) => write!(f, "traffik configuration error: {message}"),
            Error::AnonymousConnection => f.write_str(ANONYMOUS_HELP),
            Error::Throttled(throttled) => write!(
                f,
                "too many requests: retry in {} seconds",
                throttled.retry_after_secs()
            ),
            Error::Backend(error) => write!(f, "traffik backend error: {error}"),
        }
    }
}

/// The chain of causes is given by `source()`, not repeated in `Display`
/// (error reporters that walk the chain print each cause once): an
/// `Error::Backend` shows its message, and its `source()` is the backend's
/// own cause (the Redis error, say).
impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Backend(error) => std::error::Error::source(error),
            _ => None,
        }
    }
}

impl From<BackendError> for Error {
    fn from(error: BackendError) -> Self {
        Error::Backend(error)
    }
}

/// An error and its causes on one line (`message: cause: cause`), for logs.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}

/// A backend failure: a message and, where there is one, the underlying error.
#[derive(Debug, Clone)]
pub struct BackendError {
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
    /// The backend is known to be down and failed at once (a circuit
    /// breaker): the outage was reported when it began, so throttles log
    /// this at DEBUG rather than once per request.
    known_outage: bool,
}

impl BackendError {
    /// A backend error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        BackendError {
            message: message.into(),
            source: None,
            known_outage: false,
        }
    }

    /// A backend error with a message and its cause.
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        BackendError {
            message: message.into(),
            source: Some(Arc::new(source)),
            known_outage: false,
        }
    }

    /// A failure of a backend known to be down, answered at once without
    /// trying (a circuit breaker's refusal). Throttles log it at DEBUG, not
    /// WARN: a backend that fails this way reports the outage itself, once,
    /// when it begins, instead of a warning per request.
    ///
    /// ```
    /// use traffik::BackendError;
    /// let error = BackendError::known_outage("the store is down; not retried before 12:00:05");
    /// assert!(error.is_known_outage());
    /// assert!(!BackendError::new("timed out").is_known_outage());
    /// ```
    pub fn known_outage(message: impl Into<String>) -> Self {
        BackendError {
            known_outage: true,
            ..BackendError::new(message)
        }
    }

    /// Whether this is a [`known_outage`](BackendError::known_outage).
    pub fn is_known_outage(&self) -> bool {
        self.known_outage
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The message; the cause is [`source()`](std::error::Error::source).
impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|source| source.as_ref() as &(dyn std::error::Error + 'static))
    }
}
