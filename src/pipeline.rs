//! The one decision path, for every HTTP hit and peek, every WebSocket
//! message: the request's parts ([`Input`]: identity, scope, rates) → the
//! backend → [`Core::decide`] → [`Core::settle`] (failure mode, shadow mode,
//! waiting, the 429).
//!
//! A part that is not known at once (a custom identifier, a dynamic rate, a
//! backend that answers later) moves the rest of the path into a future
//! that owns what it needs; when every part is known and the backend
//! answers at once (the in-memory backend), the whole path runs
//! synchronously, without allocating.
//!
//! The path is here; settling the backend's answer is in `settle`, the
//! failure and excess modes a throttle is built with in `modes`.

use std::hash::RandomState;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use http::request::Parts;

use crate::backend::{self, BackendFuture, BoxFuture, DynBackend, UidLease};
use crate::key::{Key, KeyIdentity, OwnedIdentity, OwnedKey, OwnedScope, Scope};
use crate::line::Lines;
use crate::metrics::{Outcome, ThrottleMetrics};
use crate::permit::Permit;
use crate::reservation::CountedHit;
use crate::response::{Policy, RateLimitInfo};
use crate::strategy::Op;
use crate::{Decision, Error, Identity, Quota, Rate, Strategy};

mod modes;
mod settle;

pub use modes::{Exceeded, FailureMode};

pub(crate) type IdentifierFn =
    Arc<dyn Fn(&Parts) -> BoxFuture<Result<Identity, Error>> + Send + Sync>;
pub(crate) type RateFn = Arc<dyn Fn(&Parts) -> BoxFuture<Vec<Rate>> + Send + Sync>;
pub(crate) type DecisionFn = Arc<dyn Fn(&Decision) + Send + Sync>;

/// Where a throttle's backend comes from.
#[derive(Clone)]
pub(crate) enum BackendChoice {
    /// `.backend(b)`.
    Fixed(DynBackend),
    /// `.dynamic_backend()`: the innermost [`backend::scope`].
    Dynamic,
    /// Nothing set: the layer's backend, else the innermost scope.
    Inherit,
}

/// A throttle's limit.
#[derive(Clone)]
pub(crate) enum Limit {
    /// No limit: every request is exempt.
    Unlimited,
    /// The same rates for every request.
    Static(Arc<[Quota]>),
    /// A rate computed per request.
    Dynamic(RateFn),
    /// At most `max` requests of a key in progress at once, on places that
    /// last `lease` unless renewed (backends whose places expire).
    InFlight { max: u64, lease: Duration },
}

/// What HTTP and WebSocket throttles share: the limit, the backend and what
/// to do with a decision.
pub(crate) struct Core {
    pub(crate) uid: Arc<str>,
    /// The uid was generated (no `.uid(..)`).
    pub(crate) generated_uid: bool,
    /// Tells live throttles apart when they register their uid on a backend.
    pub(crate) id: usize,
    pub(crate) limit: Limit,
    pub(crate) strategy: Strategy,
    pub(crate) burst: Option<u64>,
    pub(crate) cost: u64,
    pub(crate) backend: BackendChoice,
    pub(crate) failure_mode: FailureMode,
    pub(crate) shadow: bool,
    pub(crate) exceeded: Exceeded,
    /// Hits waiting now under [`Exceeded::Wait`], and the most allowed.
    pub(crate) waiting: AtomicUsize,
    pub(crate) max_waiting: usize,
    pub(crate) on_decision: Option<DecisionFn>,
    pub(crate) policy: Policy,
    /// The uid's registration on the throttle's own backend.
    pub(crate) _uid_lease: Option<UidLease>,
    /// Requests waiting for their turn, by key.
    pub(crate) lines: Arc<Lines>,
    /// Deciding on the fallback backend since the last failure.
    pub(crate) falling_back: AtomicBool,
    /// Its series (feature `metrics`).
    pub(crate) metrics: ThrottleMetrics,
}

/// What a decision is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ask {
    /// Count a hit.
    Hit,
    /// Look without counting.
    Peek,
    /// Count a hit, keeping what a refund of it needs.
    Reserve,
    /// Take an in-flight place.
    Acquire,
}

impl Ask {
    fn op(self) -> Op {
        match self {
            Ask::Hit | Ask::Reserve | Ask::Acquire => Op::Hit,
            Ask::Peek => Op::Peek,
        }
    }
}

/// A part of a decision, known now or still to come.
pub(crate) enum Soon<T, F> {
    Now(T),
    Later(F),
}

/// What a decision needs from a request.
pub(crate) struct Input<'r> {
    pub(crate) identity: Soon<KeyIdentity<'r>, BoxFuture<Result<Identity, Error>>>,
    pub(crate) scope: Scope<'r>,
    pub(crate) quotas: Soon<&'r Arc<[Quota]>, BoxFuture<Vec<Rate>>>,
}

/// [`Input`] owned, with the backend if it is known: for a future that
/// outlives the request.
pub(crate) struct OwnedInput {
    identity: Soon<OwnedIdentity, BoxFuture<Result<Identity, Error>>>,
    scope: OwnedScope,
    quotas: Soon<Arc<[Quota]>, BoxFuture<Vec<Rate>>>,
    /// The backend found now, or the layer's to fall back on later.
    backend: Result<DynBackend, Option<DynBackend>>,
}

/// What an admitted request gets: the decision that let it through and the
/// rate-limit headers its throttle adds.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub(crate) decision: Decision,
    /// Boxed: admissions are moved around on the hot path.
    pub(crate) headers: Option<Box<RateLimitInfo>>,
    /// For [`Ask::Reserve`]: the hit, if one was counted.
    pub(crate) hit: Option<Box<CountedHit>>,
    /// For an in-flight limit: the place taken.
    pub(crate) permit: Option<Box<Permit>>,
}

impl Admitted {
    /// An exempt request (or one let through by a failed backend): allowed,
    /// unlimited, no headers.
    pub(crate) fn exempt() -> Admitted {
        Admitted {
            decision: Decision::unlimited(),
            headers: None,
            hit: None,
            permit: None,
        }
    }
}

/// A decision's outcome now, or later. Rejections are
/// `Err(Error::Throttled)`.
pub(crate) enum Answer {
    Now(Result<Admitted, Error>),
    Later(BoxFuture<Result<Admitted, Error>>),
}

impl Answer {
    pub(crate) async fn finish(self) -> Result<Admitted, Error> {
        match self {
            Answer::Now(result) => result,
            Answer::Later(future) => future.await,
        }
    }
}

impl Core {
    pub(crate) fn uid(&self) -> &str {
        &self.uid
    }

    /// The quotas of a dynamic rate, with this throttle's strategy and
    /// burst; `None` for an unlimited rate.
    pub(crate) fn quotas_for(&self, rates: Vec<Rate>) -> Result<Option<Arc<[Quota]>>, Error> {
        quotas(&rates, self.strategy, self.burst)
    }

    /// The backend known now: the throttle's own, the layer's (`lent`), or
    /// the innermost scope's.
    #[inline]
    fn backend_now<'b>(&'b self, lent: Option<&'b DynBackend>) -> Option<BackendRef<'b>> {
        match (&self.backend, lent) {
            (BackendChoice::Fixed(backend), _) | (BackendChoice::Inherit, Some(backend)) => {
                Some(BackendRef::Borrowed(backend))
            }
            _ => backend::current().map(BackendRef::Owned),
        }
    }

    /// The backend, or the error that names the fixes.
    pub(crate) fn resolve_backend(&self, lent: Option<&DynBackend>) -> Result<DynBackend, Error> {
        if let Some(backend) = self.backend_now(lent) {
            return Ok(backend.into_owned());
        }
        Err(match self.backend {
            BackendChoice::Dynamic => Error::configuration(format!(
                "throttle {:?} uses .dynamic_backend() but no backend is in scope: run the request inside \
                 traffik::backend::scope(backend, future) or add a BackendScopeLayer outside the \
                 throttle's layer (with Router::layer or ServiceBuilder, the layer added after it; \
                 a BackendScopeLayer inside the throttle's layer has not run yet when the throttle asks)",
                self.uid()
            )),
            _ => Error::configuration(format!(
                "throttle {:?} has no backend: give it one with .backend(InMemoryBackend::new()), \
                 add it as a .rule(MiddlewareThrottle::new(..)) of a ThrottleLayer::new(backend) \
                 (a layer lends its backend to its own rules only, not to a throttle's .layer() \
                 in a route_layer under it), or run it inside traffik::backend::scope(..) \
                 or a BackendScopeLayer",
                self.uid()
            )),
        })
    }

    /// Decides `input` with the backend known now or, when a part of the
    /// decision is not known yet, in a future.
    #[inline]
    pub(crate) fn run(
        self: &Arc<Self>,
        input: Input<'_>,
        lent: Option<&DynBackend>,
        ask: Ask,
    ) -> Answer {
        // Taken apart, so that what is left to drop is known to hold no
        // future on the way out (dropping the whole input was an
        // out-of-line call: 31 instructions per request,
        // scripts/callgrind-layer.sh, mode ip).
        let Input {
            identity,
            scope,
            quotas,
        } = input;
        if let (Soon::Now(identity), Soon::Now(quotas)) = (&identity, &quotas) {
            if let Some(backend) = self.backend_now(lent) {
                let key = Key {
                    throttle: &self.uid,
                    identity: *identity,
                    scope,
                };
                return self.decide(&backend, &key, quotas, ask);
            }
        }
        let input = Input {
            identity,
            scope,
            quotas,
        };
        let input = self.owned(input, lent);
        Answer::Later(Box::pin(Arc::clone(self).decide_later(input, ask)))
    }

    /// `input`, owned: what [`decide_later`](Core::decide_later) takes.
    pub(crate) fn owned(&self, input: Input<'_>, lent: Option<&DynBackend>) -> OwnedInput {
        OwnedInput {
            identity: match input.identity {
                Soon::Now(identity) => Soon::Now(identity.into_owned()),
                Soon::Later(future) => Soon::Later(future),
            },
            scope: input.scope.into_owned(),
            quotas: match input.quotas {
                Soon::Now(quotas) => Soon::Now(Arc::clone(quotas)),
                Soon::Later(future) => Soon::Later(future),
            },
            // Scoped backends are looked up at call time; failing that, when
            // the future is first polled (`scope(b, t.hit(&req))` works too).
            backend: match self.backend_now(lent) {
                Some(backend) => Ok(backend.into_owned()),
                None => Err(lent.cloned()),
            },
        }
    }

    /// The rest of the path once every part of `input` is known.
    pub(crate) async fn decide_later(
        self: Arc<Self>,
        input: OwnedInput,
        ask: Ask,
    ) -> Result<Admitted, Error> {
        let identity = match input.identity {
            Soon::Now(identity) => identity,
            Soon::Later(future) => match future.await? {
                Identity::Unlimited => return Ok(self.exempt(ask)),
                Identity::Key(key) => OwnedIdentity::from_text(key),
            },
        };
        let quotas = match input.quotas {
            Soon::Now(quotas) => quotas,
            Soon::Later(future) => match self.quotas_for(future.await)? {
                Some(quotas) => quotas,
                None => return Ok(self.exempt(ask)),
            },
        };
        let backend = match input.backend {
            Ok(backend) => backend,
            Err(lent) => self.resolve_backend(lent.as_ref())?,
        };
        let key = OwnedKey::new(Arc::clone(&self.uid), identity, input.scope);
        self.decide(&backend, &key.as_key(), &quotas, ask)
            .finish()
            .await
    }

    /// Asks the backend, then [`settle`](Core::settle)s its answer.
    #[inline]
    pub(crate) fn decide(
        self: &Arc<Self>,
        backend: &DynBackend,
        key: &Key<'_>,
        quotas: &Arc<[Quota]>,
        ask: Ask,
    ) -> Answer {
        let place = match self.limit {
            Limit::InFlight { .. } => place_id(),
            _ => 0,
        };
        let asked = Asked {
            backend,
            key: *key,
            quotas,
            ask,
            place,
            fallback: false,
        };
        self.ask_and_settle(&asked)
    }

    /// Asks the backend what `asked` says, and settles its answer, at once
    /// or in a future that owns what it needs. Inlined: the answer of a
    /// backend that answers at once is settled where it is read (34
    /// instructions per request, `scripts/callgrind-layer.sh`, mode ip).
    #[inline]
    fn ask_and_settle(self: &Arc<Self>, asked: &Asked<'_>) -> Answer {
        match self.ask_backend(asked).into_ready() {
            Ok(result) => self.settle(result, asked),
            Err(pending) => {
                let core = Arc::clone(self);
                let asked = asked.owned(&self.uid);
                Answer::Later(Box::pin(async move {
                    let result = pending.await;
                    core.settle(result, &asked.borrowed()).finish().await
                }))
            }
        }
    }

    /// The backend's answer: a decision on the rates, or an in-flight place.
    #[inline]
    fn ask_backend(&self, asked: &Asked<'_>) -> BackendFuture {
        let answer = match self.limit {
            Limit::InFlight { max, lease } => {
                asked.backend.acquire(&asked.key, asked.place, max, lease)
            }
            _ => asked
                .backend
                .decide(&asked.key, asked.quotas, self.cost, asked.ask.op()),
        };
        if cfg!(feature = "metrics") {
            return timed(answer, asked.backend.kind());
        }
        answer
    }

    /// An exempt request's admission, counted (peeks are not).
    pub(crate) fn exempt(&self, ask: Ask) -> Admitted {
        if ask != Ask::Peek {
            self.metrics.decision(Outcome::Exempt);
        }
        Admitted::exempt()
    }
}

/// The quotas of `rates` under `strategy` (and `burst`, for one rate);
/// `None` when every rate is unlimited.
pub(crate) fn quotas(
    rates: &[Rate],
    strategy: Strategy,
    burst: Option<u64>,
) -> Result<Option<Arc<[Quota]>>, Error> {
    match rates {
        [] => Err(Error::configuration(
            "an empty list of rates: give .rates([..]) at least one rate",
        )),
        [rate] if rate.is_unlimited() => Ok(None),
        [rate] => {
            let mut quota = Quota::new(*rate, strategy)?;
            if let Some(burst) = burst {
                quota = quota.with_burst(burst)?;
            }
            Ok(Some(Arc::new([quota])))
        }
        rates => {
            if let Some(burst) = burst {
                return Err(Error::configuration(format!(
                    "burst({burst}) with several rates: a burst is the capacity of one rate; \
                     use one rate with .burst(..), or add a short rate to .rates([..]) for bursts"
                )));
            }
            if rates.iter().any(Rate::is_unlimited) {
                return Err(Error::configuration(
                    "Rate::unlimited() among several rates: an unlimited rate limits nothing; \
                     leave it out of .rates([..])",
                ));
            }
            let quotas: Result<Vec<Quota>, Error> = rates
                .iter()
                .map(|rate| Quota::new(*rate, strategy))
                .collect();
            Ok(Some(quotas?.into()))
        }
    }
}

/// The quotas of a throttle without rates (an in-flight limit).
pub(crate) fn no_quotas() -> &'static Arc<[Quota]> {
    static NONE: LazyLock<Arc<[Quota]>> = LazyLock::new(|| Arc::new([]));
    &NONE
}

/// What one decision is about: the backend asked, the key, the rates, what
/// the request asks for, and the id of the in-flight place it would take.
#[derive(Clone, Copy)]
struct Asked<'a> {
    backend: &'a DynBackend,
    key: Key<'a>,
    quotas: &'a Arc<[Quota]>,
    ask: Ask,
    /// 0 for a throttle with rates.
    place: u64,
    /// The backend asked is the failure mode's fallback.
    fallback: bool,
}

impl Asked<'_> {
    /// What was asked, owned, for a future (the throttle's uid is `uid`).
    fn owned(&self, uid: &Arc<str>) -> AskedOwned {
        AskedOwned {
            backend: Arc::clone(self.backend),
            key: self.key.owned(uid),
            quotas: Arc::clone(self.quotas),
            ask: self.ask,
            place: self.place,
            fallback: self.fallback,
        }
    }
}

/// [`Asked`] owned.
struct AskedOwned {
    backend: DynBackend,
    key: OwnedKey,
    quotas: Arc<[Quota]>,
    ask: Ask,
    place: u64,
    fallback: bool,
}

impl AskedOwned {
    fn borrowed(&self) -> Asked<'_> {
        Asked {
            backend: &self.backend,
            key: self.key.as_key(),
            quotas: &self.quotas,
            ask: self.ask,
            place: self.place,
            fallback: self.fallback,
        }
    }
}

/// A new in-flight place's id: random-looking and unique in the process,
/// so that places of different app instances on one Redis do not collide.
fn place_id() -> u64 {
    use std::hash::BuildHasher;
    static SEED: LazyLock<RandomState> = LazyLock::new(RandomState::new);
    static NEXT: AtomicU64 = AtomicU64::new(1);
    SEED.hash_one(NEXT.fetch_add(1, Ordering::Relaxed)).max(1)
}

/// `answer`, its time recorded when it comes later (feature `metrics`).
fn timed(answer: BackendFuture, kind: &'static str) -> BackendFuture {
    match answer.into_ready() {
        Ok(result) => BackendFuture::ready(result),
        Err(pending) => {
            let start = std::time::Instant::now();
            BackendFuture::new(async move {
                let result = pending.await;
                crate::metrics::backend_seconds(kind, start.elapsed().as_secs_f64());
                result
            })
        }
    }
}

/// A backend borrowed from its throttle or layer, or owned (from a scope).
enum BackendRef<'b> {
    Borrowed(&'b DynBackend),
    Owned(DynBackend),
}

impl BackendRef<'_> {
    fn into_owned(self) -> DynBackend {
        match self {
            BackendRef::Borrowed(backend) => Arc::clone(backend),
            BackendRef::Owned(backend) => backend,
        }
    }
}

impl std::ops::Deref for BackendRef<'_> {
    type Target = DynBackend;
    fn deref(&self) -> &DynBackend {
        match self {
            BackendRef::Borrowed(backend) => backend,
            BackendRef::Owned(backend) => backend,
        }
    }
}
