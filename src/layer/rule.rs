//! [`MiddlewareThrottle`]: a throttle with the filters that choose the
//! requests it counts (methods, a path pattern, a hook).

use std::future::Future;
use std::sync::Arc;

use http::request::Parts;
use regex::Regex;

use crate::backend::BoxFuture;
use crate::pipeline::Ask;
use crate::throttle::RequestHead;
use crate::{Error, HttpThrottle};

pub(crate) type HookFn = Arc<dyn Fn(&Parts) -> BoxFuture<bool> + Send + Sync>;

/// A throttle with filters, for [`ThrottleLayer`](crate::ThrottleLayer): it applies to a request
/// when all its filters match — `methods` (case-insensitive), `path` (a regex
/// matched at the start of the path), and `hook` (an async predicate, checked
/// last).
///
/// ```
/// use http::Method;
/// use traffik::{HttpThrottle, MiddlewareThrottle};
///
/// let writes = HttpThrottle::builder().rate("10/min").build().unwrap();
/// let rule = MiddlewareThrottle::new(writes)
///     .methods([Method::POST, Method::PUT, Method::DELETE])
///     .path(r"/api/")
///     .hook(|parts: &http::request::Parts| {
///         let authed = parts.headers.contains_key(http::header::AUTHORIZATION);
///         async move { !authed }
///     });
/// # drop(rule);
/// ```
#[derive(Clone)]
pub struct MiddlewareThrottle {
    pub(crate) throttle: HttpThrottle,
    methods: Option<Arc<[String]>>,
    path: Option<Regex>,
    pub(crate) hook: Option<HookFn>,
}

impl std::fmt::Debug for MiddlewareThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiddlewareThrottle")
            .field("throttle", &self.throttle.uid())
            .field("methods", &self.methods)
            .field("path", &self.path.as_ref().map(Regex::as_str))
            .field("hook", &self.hook.is_some())
            .finish()
    }
}

impl MiddlewareThrottle {
    /// A rule applying `throttle` to every request (until filters are added).
    pub fn new(throttle: impl Into<HttpThrottle>) -> Self {
        MiddlewareThrottle {
            throttle: throttle.into(),
            methods: None,
            path: None,
            hook: None,
        }
    }

    /// Only requests with one of these methods (case-insensitive). `GET`
    /// also covers `HEAD`, which axum answers with the GET handler.
    ///
    /// A name outside the nine standard methods (`PROPFIND`, say) is
    /// accepted with a `tracing::warn!`, in case it is a typo: a rule on
    /// `"PSOT"` would never match.
    ///
    /// # Panics
    ///
    /// On a name that is no HTTP method at all (empty, or with a space or
    /// another character a method cannot hold), with a message naming it.
    #[track_caller]
    pub fn methods<I, M>(mut self, methods: I) -> Self
    where
        I: IntoIterator<Item = M>,
        M: AsRef<str>,
    {
        let methods: Arc<[String]> = methods
            .into_iter()
            .map(|m| m.as_ref().to_ascii_uppercase())
            .collect();
        for name in methods.iter() {
            match http::Method::from_bytes(name.as_bytes()) {
                Err(_) => panic!(
                    "invalid HTTP method {name:?} in MiddlewareThrottle::methods for throttle {:?}: \
                     use names such as \"POST\", or http::Method::POST",
                    self.throttle.uid()
                ),
                Ok(method) if !crate::key::is_standard_method(&method) => tracing::warn!(
                    throttle = self.throttle.uid(),
                    method = name.as_str(),
                    "MiddlewareThrottle::methods: {name:?} is not a standard HTTP method; \
                     the rule matches only requests with this method (in any case)"
                ),
                Ok(_) => {}
            }
        }
        self.methods = Some(methods);
        self
    }

    /// Only requests whose path matches `pattern` at its start (`"/api/"` is a
    /// prefix; add `$` to match the whole path). The rule matches the path as
    /// sent, percent-decoded, or decoded with its empty, `.` and `..`
    /// segments resolved, any of them (`/users/%61dmin` and
    /// `//users/./admin` count under `/users/admin`; `/api/..` under
    /// `/api/`), so that writing it another way does not step around it.
    ///
    /// # Panics
    ///
    /// On an invalid regex, with a message naming it — like Axum's router
    /// with an invalid route. Use [`try_path`](Self::try_path) for patterns
    /// known only at run time.
    #[track_caller]
    pub fn path(self, pattern: &str) -> Self {
        match self.try_path(pattern) {
            Ok(rule) => rule,
            Err(error) => panic!("{error}"),
        }
    }

    /// Like [`path`](Self::path), returning [`Error::Configuration`] for an
    /// invalid regex.
    pub fn try_path(mut self, pattern: &str) -> Result<Self, Error> {
        let invalid = |error: regex::Error| {
            Error::configuration(format!(
                "invalid path pattern {pattern:?} for throttle {:?}: {error}",
                self.throttle.uid()
            ))
        };
        // Compiled as written (errors point into what the user wrote) and
        // anchored when matching (see `matches`): wrapping it in `^(?:..)`
        // would let `a)|(b` escape the group, or `(?x)/a # note` comment the
        // group's end out.
        let regex = Regex::new(pattern).map_err(invalid)?;
        self.path = Some(regex);
        Ok(self)
    }

    /// Only requests for which `hook` resolves to `true`; checked after the
    /// other filters. The closure returns a `Send + 'static` future: clone
    /// what you need before `async move`.
    pub fn hook<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(&Parts) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        self.hook = Some(Arc::new(move |parts: &Parts| -> BoxFuture<bool> {
            Box::pin(hook(parts))
        }));
        self
    }

    /// The throttle.
    pub fn throttle(&self) -> &HttpThrottle {
        &self.throttle
    }

    /// What the rule asks of its throttle: a hit, kept for a refund when
    /// the throttle gives hits back by response status.
    pub(crate) fn ask(&self) -> Ask {
        match self.throttle.inner.refund_when {
            Some(_) => Ask::Reserve,
            None => Ask::Hit,
        }
    }

    /// The method and path filters. HEAD counts as GET (axum answers it
    /// with the GET handler), so a rule on GET covers HEAD too. Inlined
    /// into the rule loop, the filters' work apart: a rule without filters
    /// costs no call (30 instructions per request,
    /// `scripts/callgrind-layer.sh`, mode ip).
    #[inline]
    pub(crate) fn matches(&self, request: &impl RequestHead) -> bool {
        let method = |methods: &Arc<[String]>| listed(methods, request.method());
        let path = |path: &Regex| path_matches(path, request.uri().path());
        self.methods.as_ref().is_none_or(method) && self.path.as_ref().is_none_or(path)
    }
}

/// Whether `method` is among `methods` (upper case), HEAD as GET.
fn listed(methods: &[String], method: &http::Method) -> bool {
    let listed = |name: &str| methods.iter().any(|m| m.eq_ignore_ascii_case(name));
    listed(method.as_str()) || (method == http::Method::HEAD && listed("GET"))
}

/// Whether `regex` matches `path` at its start (the leftmost match starts
/// at 0 exactly when some match does), as sent or as a handler may read it:
/// percent-decoded (`/users/%61dmin` is `/users/admin` to axum's `Path`
/// extractor), or decoded with its empty, `.` and `..` segments resolved
/// (`//files/./x` is `/files/x` to a static-file handler). Any of them
/// counts: the router itself routes the path as sent (`/api/..` and
/// `/api/a%2Fb` reach `/api/{id}`), so no single form is the one a handler
/// sees, and writing the path another way must not step around a rule. A
/// path with no `%` and no such segment is matched once, without a copy.
fn path_matches(regex: &Regex, path: &str) -> bool {
    let at_start = |path: &str| regex.find(path).is_some_and(|found| found.start() == 0);
    if at_start(path) {
        return true;
    }
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    if matches!(decoded, std::borrow::Cow::Owned(_)) && at_start(&decoded) {
        return true;
    }
    normalized(&decoded).is_some_and(|normal| at_start(&normal))
}

/// `path` with its empty and `.` segments dropped and `..` resolved, or
/// `None` when it has none.
fn normalized(path: &str) -> Option<String> {
    let needs_normalizing = path.contains("//")
        || path.contains("/./")
        || path.contains("/../")
        || path.ends_with("/.")
        || path.ends_with("/..");
    if !needs_normalizing {
        return None;
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            segment => segments.push(segment),
        }
    }
    let trailing = path.ends_with('/') && !segments.is_empty();
    let mut normal = String::with_capacity(path.len());
    for segment in &segments {
        normal.push('/');
        normal.push_str(segment);
    }
    if trailing || normal.is_empty() {
        normal.push('/');
    }
    Some(normal)
}

#[cfg(test)]
mod tests {
    use super::{normalized, path_matches};
    use regex::Regex;

    #[test]
    fn paths_are_normalized() {
        for (raw, seen) in [
            ("//files/secret.txt", Some("/files/secret.txt")),
            ("/files/./secret.txt", Some("/files/secret.txt")),
            ("/x/../files/secret.txt", Some("/files/secret.txt")),
            ("/api//", Some("/api/")),
            ("/..", Some("/")),
            ("/api/items", None),
            ("/", None),
        ] {
            assert_eq!(normalized(raw).as_deref(), seen, "{raw}");
        }
    }

    /// A rule counts a path as sent, decoded, or decoded and normalized.
    #[test]
    fn rules_match_any_form_of_the_path() {
        let api = Regex::new("/api/").unwrap();
        let admin = Regex::new("/users/admin/login").unwrap();
        let one_segment = Regex::new("/files/[^/]+$").unwrap();
        for (regex, path) in [
            // As sent: the router routes these to /api/{id} or /files/{name}.
            (&api, "/api/.."),
            (&api, "/api/%2e%2e"),
            (&api, "/api/x/.."),
            (&api, "/api/..%2Fsecret"),
            (&api, "/api/x%2F..%2F..%2Fpublic"),
            (&api, "/api/."),
            (&one_segment, "/files/a%2Fb"),
            // Decoded, or decoded and normalized.
            (&admin, "/users/%61dmin/login"),
            (&admin, "/users/%61%64min/login"),
            (&admin, "//users/./admin/login"),
            (&admin, "/x/../users/admin/login"),
        ] {
            assert!(path_matches(regex, path), "{} on {path}", regex.as_str());
        }
        for (regex, path) in [
            (&api, "/v1/api/x"),
            (&admin, "/users/bob/login"),
            (&api, "/ap%69"),
        ] {
            assert!(!path_matches(regex, path), "{} on {path}", regex.as_str());
        }
    }
}
