//! [`ThrottleBuilder`]: the options every throttle has, and those only HTTP
//! throttles have ([`HttpOptions`]); the WebSocket ones are in [`crate::ws`].

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;

use super::{HttpInner, HttpThrottle, Identifier, RefundWhen};
use crate::backend::{BoxFuture, DynBackend, IntoBackend, UidLease};
use crate::identity::{AddressIdentity, IntoIdentity};
use crate::metrics::ThrottleMetrics;
use crate::pipeline::{quotas, BackendChoice, Core, DecisionFn, IdentifierFn, Limit, RateFn};
use crate::rate::{IntoRate, IntoRates};
use crate::response::{
    error_responder, responder, ErrorResponder, Policy, RateLimitHeaders, ThrottledResponder,
};
use crate::{
    BoxError, Decision, Error, Exceeded, FailureMode, Identity, Rate, Strategy, Throttled,
    TrustedProxies,
};

/// Builder of an [`HttpThrottle`].
pub type HttpThrottleBuilder = ThrottleBuilder<HttpOptions>;

/// The builder of [`HttpThrottle`] ([`HttpThrottleBuilder`]) and
/// [`WebSocketThrottle`](crate::WebSocketThrottle)
/// ([`WebSocketThrottleBuilder`](crate::WebSocketThrottleBuilder)): the
/// options every throttle has. `K` holds the options of one kind, whose
/// methods only its builder has.
#[must_use = "call .build() to get the throttle"]
#[derive(Clone)]
pub struct ThrottleBuilder<K> {
    uid: Option<String>,
    limit: Option<u64>,
    period: Duration,
    rates: Option<Vec<Result<Rate, Error>>>,
    strategy: Strategy,
    burst: Option<u64>,
    cost: u64,
    backend: BackendChoice,
    failure_mode: FailureMode,
    shadow: bool,
    exceeded: Exceeded,
    max_waiting: usize,
    on_decision: Option<DecisionFn>,
    errors: Vec<Error>,
    pub(crate) kind: K,
}

impl<K> ThrottleBuilder<K> {
    pub(crate) fn new(kind: K) -> Self {
        ThrottleBuilder {
            uid: None,
            limit: None,
            period: Duration::ZERO,
            rates: None,
            strategy: Strategy::default(),
            burst: None,
            cost: 1,
            backend: BackendChoice::Inherit,
            failure_mode: FailureMode::default(),
            shadow: false,
            exceeded: Exceeded::default(),
            max_waiting: DEFAULT_MAX_WAITING,
            on_decision: None,
            errors: Vec::new(),
            kind,
        }
    }

    /// The throttle's name in its keys, logs and headers (default: one
    /// generated in creation order, `http-1`, `ws-2`…). Unique per backend:
    /// a second live throttle with the same uid on the same backend is
    /// [`Error::Configuration`], since the two would share counters. A
    /// persistent backend (Redis, by default) needs it set: a generated uid
    /// shifts when throttles are added, which would move their counters.
    pub fn uid(mut self, uid: impl Into<String>) -> Self {
        self.uid = Some(uid.into());
        self
    }

    /// Hits allowed per period; add the period with the unit methods.
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    fn add_period(mut self, unit: Duration, n: u64) -> Self {
        const NANOS_PER_SEC: u128 = 1_000_000_000;
        let add = unit
            .as_nanos()
            .checked_mul(u128::from(n))
            .and_then(|nanos| {
                let secs = u64::try_from(nanos / NANOS_PER_SEC).ok()?;
                Some(Duration::new(secs, (nanos % NANOS_PER_SEC) as u32))
            })
            .and_then(|d| self.period.checked_add(d));
        match add {
            Some(period) => self.period = period,
            None => self.errors.push(Error::configuration(format!(
                "the period is too long (adding {n} × {unit:?})"
            ))),
        }
        self
    }

    /// Adds `n` milliseconds to the period.
    pub fn milliseconds(self, n: u64) -> Self {
        self.add_period(Duration::from_millis(1), n)
    }

    /// Adds `n` seconds to the period.
    pub fn seconds(self, n: u64) -> Self {
        self.add_period(Duration::from_secs(1), n)
    }

    /// Adds `n` minutes to the period.
    pub fn minutes(self, n: u64) -> Self {
        self.add_period(Duration::from_secs(60), n)
    }

    /// Adds `n` hours to the period.
    pub fn hours(self, n: u64) -> Self {
        self.add_period(Duration::from_secs(3600), n)
    }

    /// Adds `n` days to the period.
    pub fn days(self, n: u64) -> Self {
        self.add_period(Duration::from_secs(86_400), n)
    }

    /// The rate as a [`Rate`] or a string: `"100/min"`, `"2/5s"`,
    /// `"10 per second"`, `Rate::unlimited()`. The same as
    /// [`rates([rate])`](Self::rates); the last of `rate` and `rates` wins.
    pub fn rate(mut self, rate: impl IntoRate) -> Self {
        self.rates = Some(vec![rate.into_rate()]);
        self
    }

    /// Several rates, decided **all or nothing**: a hit counts on every
    /// rate or, when one of them refuses it, on none, in one backend call
    /// (one lock in memory, one script on Redis, one slot on a cluster).
    /// The request gets the binding decision: allowed only if every rate
    /// allows it, the smallest `remaining`, and a `retry_after` after which
    /// every rate allows it. An empty list is [`Error::Configuration`], and
    /// so is `.burst(..)` with several rates.
    ///
    /// ```
    /// use traffik::HttpThrottle;
    /// // Bursts of at most 10 a minute, and 100 an hour in all.
    /// let api = HttpThrottle::builder().uid("api").rates(["10/min", "100/h"]).build().unwrap();
    /// # drop(api);
    /// ```
    pub fn rates<I>(mut self, rates: I) -> Self
    where
        I: IntoIterator,
        I::Item: IntoRate,
    {
        self.rates = Some(rates.into_iter().map(IntoRate::into_rate).collect());
        self
    }

    /// The algorithm (default [`Strategy::TokenBucket`]).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// The bucket capacity for [`Strategy::TokenBucket`] and
    /// [`Strategy::Gcra`] (default: the limit).
    pub fn burst(mut self, burst: u64) -> Self {
        self.burst = Some(burst);
        self
    }

    /// What one hit costs (default 1). Cost 0 never touches the backend.
    pub fn cost(mut self, cost: u64) -> Self {
        self.cost = cost;
        self
    }

    /// The backend holding the counters (any backend; clones share state).
    pub fn backend(mut self, backend: impl IntoBackend) -> Self {
        self.backend = BackendChoice::Fixed(backend.into_backend());
        self
    }

    /// Use the innermost [`traffik::backend::scope`](crate::backend::scope)
    /// at each call; no scope is [`Error::Configuration`].
    pub fn dynamic_backend(mut self) -> Self {
        self.backend = BackendChoice::Dynamic;
        self
    }

    /// What happens when the backend fails (default [`FailureMode::Open`]).
    pub fn failure_mode(mut self, mode: FailureMode) -> Self {
        self.failure_mode = mode;
        self
    }

    /// Shadow mode: decide, count, log with `tracing::info!`, never reject.
    /// `hit()` then returns `Ok` with `allowed == false` for a request over
    /// its limit. A backend that fails is logged (`tracing::warn!`, or
    /// `tracing::error!` for a quota it cannot hold) and the request let
    /// through, whatever the [`FailureMode`].
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// What happens to a hit over the limit (default [`Exceeded::Reject`]).
    pub fn on_exceeded(mut self, exceeded: Exceeded) -> Self {
        self.exceeded = exceeded;
        self
    }

    /// Under [`Exceeded::Wait`], the most hits this throttle holds at once,
    /// over all keys (default 1,024). A hit that would wait while `n`
    /// already do is rejected at once, as under [`Exceeded::Reject`]. Every
    /// held request keeps its connection and its future: the default bounds
    /// what a flood of clients can make the throttle hold, and
    /// `usize::MAX` removes the bound. Waiters of one key wait in line and
    /// are served in arrival order; only the first asks the backend, so
    /// `n` waiters cost O(n) decisions and no CPU while they wait. Without
    /// `Exceeded::Wait` it has no effect; `max_waiting(0)` rejects like
    /// `Reject`. A WebSocket message holds its place until the guard is
    /// polled again after its wait (or dropped).
    ///
    /// ```
    /// use std::time::Duration;
    /// use traffik::{Exceeded, HttpThrottle};
    ///
    /// let shaped = HttpThrottle::builder()
    ///     .rate("10/s")
    ///     .on_exceeded(Exceeded::Wait { max: Duration::from_secs(2) })
    ///     .max_waiting(1_000)
    ///     .build()
    ///     .unwrap();
    /// # let _ = shaped;
    /// ```
    pub fn max_waiting(mut self, n: usize) -> Self {
        self.max_waiting = n;
        self
    }

    /// Called with every decision that counted a hit (metrics).
    pub fn on_decision<F>(mut self, f: F) -> Self
    where
        F: Fn(&Decision) + Send + Sync + 'static,
    {
        self.on_decision = Some(Arc::new(f));
        self
    }

    /// Validates everything, and registers the uid on the throttle's own
    /// backend. `http` holds the HTTP-only parts of the limit and policy.
    pub(crate) fn build_core(self, kind: &str, http: HttpOnly) -> Result<(Core, K), Error> {
        if let Some(error) = self.errors.into_iter().next() {
            return Err(error);
        }
        let unit_rate = match (self.limit, self.period.is_zero()) {
            (Some(limit), false) => Some(Rate::new(limit, self.period)),
            (Some(limit), true) => {
                return Err(Error::configuration(format!(
                    "limit({limit}) needs a period: add .seconds(n), .minutes(n), ... (or use .rate(\"{limit}/min\"))"
                )))
            }
            (None, false) => {
                return Err(Error::configuration(format!(
                    "a period of {:?} needs a limit: add .limit(n)",
                    self.period
                )))
            }
            (None, true) => None,
        };
        if let Some((max, _)) = http.in_flight {
            if self.rates.is_some() || unit_rate.is_some() || http.dynamic_rate.is_some() {
                return Err(Error::configuration(format!(
                    "max_in_flight({max}) is instead of a rate: a throttle limits requests in progress or \
                     hits per period, not both; use two throttles (two rules, or two route layers)"
                )));
            }
            if max == 0 {
                return Err(Error::configuration(
                    "max_in_flight(0) would refuse every request: allow at least 1",
                ));
            }
        }
        let rates = match (self.rates, unit_rate, &http.dynamic_rate) {
            (Some(_), _, Some(_)) => {
                return Err(Error::configuration(
                    "set either .rate(..) or .dynamic_rate(..), not both",
                ))
            }
            (Some(_), Some(_), _) => {
                return Err(Error::configuration(
                    "set either .rate(..) or .limit(n) with time units, not both",
                ))
            }
            (None, Some(_), Some(_)) => {
                return Err(Error::configuration(
                    "set either .dynamic_rate(..) or .limit(n) with time units, not both",
                ))
            }
            (None, None, None) if http.in_flight.is_some() => None,
            (None, None, None) => {
                return Err(Error::configuration(
                    "no rate: set .limit(n).seconds(n), .rate(\"5/10s\"), .rates([..]), .rate(Rate::unlimited()) or .dynamic_rate(..)",
                ))
            }
            (Some(rates), None, None) => Some(rates.into_iter().collect::<Result<Vec<Rate>, Error>>()?),
            (None, Some(rate), None) => Some(vec![rate?]),
            (None, None, Some(_)) => None,
        };
        if let Some(burst) = self.burst {
            if !matches!(self.strategy, Strategy::TokenBucket | Strategy::Gcra) {
                return Err(Error::configuration(format!(
                    "burst({burst}) applies to Strategy::TokenBucket and Strategy::Gcra only, not {:?}",
                    self.strategy
                )));
            }
        }
        let limit = match (rates, http.dynamic_rate) {
            (Some(rates), _) => {
                match quotas(&rates, self.strategy, self.burst)? {
                    None => Limit::Unlimited,
                    Some(quotas) => {
                        for quota in quotas.iter() {
                            if self.cost > quota.capacity() {
                                return Err(Error::configuration(format!(
                                    "cost {} exceeds the capacity {} of rate {}: such a hit could never be admitted",
                                    self.cost,
                                    quota.capacity(),
                                    quota.rate()
                                )));
                            }
                            // A quota the throttle's own backend cannot hold
                            // fails now, not on every request (in shadow mode
                            // too: it is a configuration error, not an
                            // outage). Cost 0 never asks.
                            if let BackendChoice::Fixed(backend) = &self.backend {
                                if self.cost > 0 {
                                    backend.check_quota(quota)?;
                                }
                            }
                        }
                        Limit::Static(quotas)
                    }
                }
            }
            (None, Some(dynamic)) => Limit::Dynamic(dynamic),
            (None, None) => match http.in_flight {
                Some((max, lease)) => Limit::InFlight { max, lease },
                None => unreachable!("checked above"),
            },
        };
        let generated = self.uid.is_none();
        let uid: Arc<str> = match self.uid {
            Some(uid) if uid.is_empty() => {
                return Err(Error::configuration("a throttle uid cannot be empty"))
            }
            Some(uid) => uid.into(),
            None => format!("{kind}-{}", NEXT_UID.fetch_add(1, Ordering::Relaxed)).into(),
        };
        let id = NEXT_THROTTLE.fetch_add(1, Ordering::Relaxed);
        let uid_lease = match &self.backend {
            BackendChoice::Fixed(backend) => register_uid(backend, &uid, id, generated)?,
            _ => None,
        };
        let uid_for_metrics = Arc::clone(&uid);
        let policy = Policy {
            name: Arc::clone(&uid),
            headers: http.headers,
            responder: http.on_throttled,
            on_error: http.on_error,
        };
        let core = Core {
            uid,
            generated_uid: generated,
            id,
            limit,
            strategy: self.strategy,
            burst: self.burst,
            cost: self.cost,
            backend: self.backend,
            failure_mode: self.failure_mode,
            shadow: self.shadow,
            exceeded: self.exceeded,
            waiting: AtomicUsize::new(0),
            max_waiting: self.max_waiting,
            on_decision: self.on_decision,
            policy,
            _uid_lease: uid_lease,
            lines: Arc::default(),
            falling_back: Default::default(),
            metrics: ThrottleMetrics::new(&uid_for_metrics),
        };
        Ok((core, self.kind))
    }
}

/// How many requests a throttle holds under `Exceeded::Wait` by default.
const DEFAULT_MAX_WAITING: usize = 1_024;

/// Numbers for generated uids, in creation order.
static NEXT_UID: AtomicUsize = AtomicUsize::new(1);
/// Numbers that tell live throttles apart when they register their uid.
static NEXT_THROTTLE: AtomicUsize = AtomicUsize::new(1);

/// Registers the uid of the throttle `id` on `backend`: refused when
/// another live throttle holds it there, or when it was generated and the
/// backend is persistent.
pub(crate) fn register_uid(
    backend: &DynBackend,
    uid: &Arc<str>,
    id: usize,
    generated: bool,
) -> Result<Option<UidLease>, Error> {
    if generated && backend.persistent() {
        return Err(Error::configuration(format!(
            "throttle {uid:?} counts on a persistent backend (prefix {:?}) under a generated uid: \
             generated uids follow the order throttles are built in, so adding a throttle would \
             move the others' counters; name it with .uid(\"...\")",
            backend.prefix()
        )));
    }
    backend
        .uids()
        .map(|uids| uids.register(uid, id))
        .transpose()
}

/// The parts of a throttle's build that only HTTP throttles set.
#[derive(Default)]
pub(crate) struct HttpOnly {
    pub(crate) dynamic_rate: Option<RateFn>,
    pub(crate) headers: RateLimitHeaders,
    pub(crate) on_throttled: Option<ThrottledResponder>,
    pub(crate) on_error: Option<ErrorResponder>,
    /// `.max_in_flight(n)` and `.lease(..)`.
    pub(crate) in_flight: Option<(u64, Duration)>,
}

/// Options only HTTP throttles have (see [`HttpThrottleBuilder`]).
#[derive(Clone)]
pub struct HttpOptions {
    identifier: Option<IdentifierFn>,
    address: AddressIdentity,
    shared_across_routes: bool,
    dynamic_rate: Option<RateFn>,
    headers: RateLimitHeaders,
    on_throttled: Option<ThrottledResponder>,
    refund_when: Option<RefundWhen>,
    on_error: Option<ErrorResponder>,
    max_in_flight: Option<u64>,
    lease: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            identifier: None,
            address: AddressIdentity::default(),
            shared_across_routes: false,
            dynamic_rate: None,
            headers: RateLimitHeaders::None,
            on_throttled: None,
            refund_when: None,
            on_error: None,
            max_in_flight: None,
            lease: DEFAULT_LEASE,
        }
    }
}

/// The default lease of an in-flight place on a backend whose places expire.
const DEFAULT_LEASE: Duration = Duration::from_secs(30);

impl std::fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpOptions")
            .field("identifier", &self.identifier.is_some())
            .field("ipv6_prefix", &self.address.ipv6_prefix)
            .field("trusted_proxies", &!self.address.proxies.is_empty())
            .field("shared_across_routes", &self.shared_across_routes)
            .field("dynamic_rate", &self.dynamic_rate.is_some())
            .field("headers", &self.headers)
            .field("on_throttled", &self.on_throttled.is_some())
            .field("refund_when", &self.refund_when.is_some())
            .field("on_error", &self.on_error.is_some())
            .field("max_in_flight", &self.max_in_flight)
            .field("lease", &self.lease)
            .finish()
    }
}

impl<K: std::fmt::Debug> std::fmt::Debug for ThrottleBuilder<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThrottleBuilder")
            .field("uid", &self.uid)
            .field("limit", &self.limit)
            .field("period", &self.period)
            .field("rates", &self.rates)
            .field("strategy", &self.strategy)
            .field("burst", &self.burst)
            .field("cost", &self.cost)
            .field("failure_mode", &self.failure_mode)
            .field("shadow", &self.shadow)
            .field("exceeded", &self.exceeded)
            .field("max_waiting", &self.max_waiting)
            .field("on_decision", &self.on_decision.is_some())
            .field("errors", &self.errors)
            .field("options", &self.kind)
            .finish_non_exhaustive()
    }
}

impl ThrottleBuilder<HttpOptions> {
    /// A rate computed per request (tenant tiers, plans...), or several
    /// rates (a `Vec<Rate>` or an array, decided all or nothing as with
    /// [`rates`](Self::rates)). The closure gets the request head and
    /// returns a `Send + 'static` future: clone what you need before
    /// `async move`. An unlimited rate exempts the request.
    ///
    /// ```
    /// use traffik::{HttpThrottle, Rate};
    /// let throttle = HttpThrottle::builder()
    ///     .dynamic_rate(|parts: &http::request::Parts| {
    ///         let premium = parts.headers.contains_key("x-premium");
    ///         async move { if premium { "1000/min".parse().unwrap() } else { Rate::per_minute(10).unwrap() } }
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # drop(throttle);
    /// ```
    pub fn dynamic_rate<F, Fut>(mut self, rate: F) -> Self
    where
        F: Fn(&Parts) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: IntoRates,
    {
        self.kind.dynamic_rate = Some(Arc::new(move |parts: &Parts| -> BoxFuture<Vec<Rate>> {
            let rates = rate(parts);
            Box::pin(async move { rates.await.into_rates() })
        }));
        self
    }

    /// Rate-limit headers on every response this throttle saw (default none).
    pub fn headers(mut self, headers: RateLimitHeaders) -> Self {
        self.kind.headers = headers;
        self
    }

    /// Replaces the 429 response. `Retry-After` is added when the response
    /// lacks it, and `Cache-Control: no-store` is always set (a 429 is never
    /// cacheable).
    ///
    /// ```
    /// # #[cfg(feature = "axum")] {
    /// use axum::response::IntoResponse;
    /// use traffik::{HttpThrottle, Throttled};
    /// let throttle = HttpThrottle::builder()
    ///     .rate("1/s")
    ///     .on_throttled(|t: &Throttled| {
    ///         (http::StatusCode::TOO_MANY_REQUESTS, format!("slow down for {}s", t.retry_after_secs()))
    ///             .into_response()
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # drop(throttle);
    /// # }
    /// ```
    pub fn on_throttled<F, B>(mut self, f: F) -> Self
    where
        F: Fn(&Throttled) -> http::Response<B> + Send + Sync + 'static,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.kind.on_throttled = Some(responder(f));
        self
    }

    /// Replaces the answers to the errors other than a 429, as
    /// [`on_throttled`](Self::on_throttled) replaces the 429: a
    /// configuration error or an anonymous connection (500s) and a backend
    /// failure under [`FailureMode::Closed`] (503), when this throttle is
    /// used as a layer or a rule (in a handler, the error is yours to
    /// answer). `Cache-Control: no-store` is set, and `Retry-After: 1` on a
    /// backend failure's answer that lacks one.
    ///
    /// ```
    /// use http::{Response, StatusCode};
    /// use traffik::{Error, HttpThrottle};
    /// let throttle = HttpThrottle::builder()
    ///     .rate("10/s")
    ///     .on_error(|_: &Error| {
    ///         let mut response = Response::new(String::from("temporarily unavailable"));
    ///         *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    ///         response
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # drop(throttle);
    /// ```
    pub fn on_error<F, B>(mut self, f: F) -> Self
    where
        F: Fn(&Error) -> http::Response<B> + Send + Sync + 'static,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.kind.on_error = Some(error_responder(f));
        self
    }

    /// How requests are identified (default: the client IP). The closure gets
    /// the request head and returns a `Send + 'static` future of an
    /// [`Identity`] (or a `Result<Identity, Error>`); [`Identity::Unlimited`]
    /// exempts the request. [`Identity::client`] (or, behind a proxy,
    /// [`TrustedProxies::client_identity`]) gives the default identity, for
    /// an identifier that falls back on it. `.trusted_proxies(..)` and
    /// `.ipv6_prefix(..)` shape the default identity only: with an
    /// identifier, they are [`Error::Configuration`].
    ///
    /// ```
    /// use traffik::{HttpThrottle, Identity};
    /// let throttle = HttpThrottle::builder()
    ///     .rate("100/min")
    ///     .identifier(|parts: &http::request::Parts| {
    ///         let user = parts.headers.get("x-user").and_then(|v| v.to_str().ok()).map(str::to_owned);
    ///         async move {
    ///             match user.as_deref() {
    ///                 Some("admin") => Identity::Unlimited,
    ///                 Some(user) => Identity::key(user),
    ///                 None => Identity::key("anonymous"),
    ///             }
    ///         }
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # drop(throttle);
    /// ```
    pub fn identifier<F, Fut>(mut self, identifier: F) -> Self
    where
        F: Fn(&Parts) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: IntoIdentity,
    {
        self.kind.identifier = Some(Arc::new(
            move |parts: &Parts| -> BoxFuture<Result<Identity, Error>> {
                let identity = identifier(parts);
                Box::pin(async move { identity.await.into_identity() })
            },
        ));
        self
    }

    /// Proxies whose forwarding headers are believed (default: none).
    pub fn trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.kind.address.proxies = proxies;
        self
    }

    /// The prefix length IPv6 client addresses are masked to (default 64;
    /// 128 keeps whole addresses).
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        if bits > 128 {
            self.errors.push(Error::configuration(format!(
                "ipv6_prefix({bits}) must be between 0 and 128"
            )));
        }
        self.kind.address.ipv6_prefix = bits.min(128);
        self
    }

    /// One counter per identity for every route this throttle covers
    /// (default: one counter per method and route).
    pub fn shared_across_routes(mut self) -> Self {
        self.kind.shared_across_routes = true;
        self
    }

    /// Gives a hit back when the response's status matches, for a throttle
    /// used as a layer ([`HttpThrottle::layer`]) or a
    /// [`ThrottleLayer`](crate::ThrottleLayer) rule: once the inner service
    /// has answered, a hit whose status makes `refund` true is given back
    /// (see [`Reservation::refund`](crate::Reservation::refund) for what a
    /// refund does under each strategy). A request refused by the throttle
    /// never reaches the inner service and has no hit to give back; an
    /// inner service that fails keeps the hit.
    ///
    /// ```
    /// use traffik::HttpThrottle;
    /// // Count only failed logins: 5 a minute.
    /// let logins = HttpThrottle::builder()
    ///     .uid("login")
    ///     .rate("5/min")
    ///     .refund_when(|status| status.is_success())
    ///     .build()
    ///     .unwrap();
    /// # drop(logins);
    /// ```
    pub fn refund_when<F>(mut self, refund: F) -> Self
    where
        F: Fn(http::StatusCode) -> bool + Send + Sync + 'static,
    {
        self.kind.refund_when = Some(Arc::new(refund));
        self
    }

    /// Instead of a rate: at most `n` requests of one identity in progress
    /// at once (nginx's `limit_conn`, per client). A place is taken when a
    /// request is admitted and given back when its response body has been
    /// sent in full or dropped (a client that disconnects gives it back
    /// too), or, in a handler, when the [`Permit`](crate::Permit) of
    /// [`acquire`](HttpThrottle::acquire) is dropped. Over the limit: 429
    /// with `Retry-After: 1`. A rate and `max_in_flight` on one throttle,
    /// or `max_in_flight(0)`, are [`Error::Configuration`].
    ///
    /// ```
    /// use traffik::HttpThrottle;
    /// // At most 2 uploads at once per client.
    /// let uploads = HttpThrottle::builder().uid("uploads").max_in_flight(2).build().unwrap();
    /// # drop(uploads);
    /// ```
    pub fn max_in_flight(mut self, n: u64) -> Self {
        self.kind.max_in_flight = Some(n);
        self
    }

    /// How long an in-flight place held on a backend whose places expire
    /// (Redis) lives without being renewed (default 30 s). Held places are
    /// renewed every third of it; the places of an app instance that
    /// crashes come back by themselves within one lease.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.kind.lease = lease;
        self
    }

    /// Builds the throttle; [`Error::Configuration`] names any bad input.
    pub fn build(mut self) -> Result<HttpThrottle, Error> {
        let http = HttpOnly {
            dynamic_rate: self.kind.dynamic_rate.take(),
            headers: self.kind.headers,
            on_throttled: self.kind.on_throttled.take(),
            on_error: self.kind.on_error.take(),
            in_flight: self.kind.max_in_flight.map(|max| (max, self.kind.lease)),
        };
        let custom = self.kind.identifier.is_some();
        if custom && (!self.kind.address.proxies.is_empty() || self.kind.address.ipv6_prefix != 64)
        {
            return Err(Error::configuration(
                ".trusted_proxies(..) and .ipv6_prefix(..) shape the default identity, which a custom \
                 .identifier(..) replaces: call proxies.client_identity(parts) (or \
                 Identity::client(parts)) inside the identifier instead",
            ));
        }
        let (core, options) = self.build_core("http", http)?;
        let identifier = match options.identifier {
            Some(identifier) => Identifier::Custom(identifier),
            None => Identifier::Client(options.address),
        };
        Ok(HttpThrottle {
            inner: Arc::new(HttpInner {
                core: Arc::new(core),
                identifier,
                shared_across_routes: options.shared_across_routes,
                refund_when: options.refund_when,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn period_units_take_any_u64_and_refuse_overflow_with_a_message() {
        // 5,000,000,000 ms (about 58 days): above u32::MAX, as "5000000000ms" is.
        let builder = HttpThrottle::builder().milliseconds(5_000_000_000);
        assert_eq!(builder.period, Duration::from_secs(5_000_000));
        assert!(builder.errors.is_empty());
        let builder = HttpThrottle::builder().hours(u64::MAX);
        assert_eq!(builder.errors.len(), 1);
        assert!(builder.errors[0]
            .to_string()
            .contains("the period is too long"));
        let sum = HttpThrottle::builder().seconds(1).milliseconds(500);
        assert_eq!(sum.period, Duration::from_millis(1_500));
    }
}
