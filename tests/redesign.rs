//! What the one-pipeline, typed-key redesign promises:
//!
//! * the in-memory backend lets two keys share a counter exactly when their
//!   texts are equal, as Redis does (a property test over random uids,
//!   identities, client addresses and scopes: a text identity that spells
//!   a client address is that address);
//! * a backend that wraps the `InMemoryBackend` and forwards the trait
//!   counts exactly like it, through a `ThrottleLayer` and per-route
//!   layers alike (nothing bypasses the wrapper);
//! * uids are unique per backend: the same app can be built many times in
//!   one process, concurrently, each build on its own backend, and each
//!   counts on its own; built twice on one backend, the second build fails
//!   with the duplicate-uid error.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use common::{at, request, send, statuses, STRATEGIES};
use http::request::Parts;
use http::Method;
use proptest::prelude::*;
use proptest::strategy::Strategy as _;
use traffik::backend::{BackendFuture, BoxFuture, InMemoryBackend, Op, ThrottleBackend, Uids};
use traffik::clock::ManualClock;
use traffik::key::{Key, Scope};
use traffik::{
    Error, HttpThrottle, Identity, MiddlewareThrottle, Quota, Rate, RateLimitHeaders, Strategy,
    ThrottleLayer,
};

async fn ok() -> &'static str {
    "ok"
}

// ------------------------------------------------ distinct texts, distinct counters

/// Who a generated key counts.
#[derive(Debug, Clone)]
enum IdentitySpec {
    /// An identifier's text.
    Text(String),
    /// A client address and the IPv6 prefix bits it is keyed with.
    Client(IpAddr, u8),
}

/// Where a generated key counts.
#[derive(Debug, Clone)]
enum ScopeSpec {
    Shared,
    Http(Method, String),
    WebSocket(String, String),
}

#[derive(Debug, Clone)]
struct KeySpec {
    uid: String,
    identity: IdentitySpec,
    scope: ScopeSpec,
}

impl KeySpec {
    fn key(&self) -> Key<'_> {
        let scope = match &self.scope {
            ScopeSpec::Shared => Scope::shared(),
            ScopeSpec::Http(method, route) => Scope::http(method, route),
            ScopeSpec::WebSocket(path, context) => Scope::websocket(path, context),
        };
        match &self.identity {
            IdentitySpec::Text(text) => Key::new(&self.uid, text, scope),
            IdentitySpec::Client(ip, bits) => Key::client(&self.uid, *ip, *bits, scope),
        }
    }
}

/// Short texts over an alphabet that makes collisions likely: the key
/// separator `:`, the escape `%` (and what escapes look like), `*`, `/`,
/// unicode, and pieces of key texts (`http`, `ws`, method names).
fn part() -> impl proptest::strategy::Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "", "a", "b", ":", "%", "%3A", "%25", "*", "/", "é", "日本", "http", "ws", "GET", "OTHER",
        "10.0.0.1", "::1", "x:ws", "http:*",
    ]);
    prop::collection::vec(piece, 0..4).prop_map(|pieces| pieces.concat())
}

fn client() -> impl proptest::strategy::Strategy<Value = IdentitySpec> {
    let v4 = (0u8..3, prop::sample::select(vec![0u8, 32, 64, 128])).prop_map(|(last, bits)| {
        IdentitySpec::Client(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)), bits)
    });
    // Addresses that differ in their first, 48th to 64th and last bits,
    // keyed with prefixes that keep or drop those differences.
    let v6 = (
        prop::sample::select(vec![0u16, 0x2001]),
        0u16..3,
        0u16..3,
        prop::sample::select(vec![0u8, 1, 16, 48, 63, 64, 65, 127, 128, 200]),
    )
        .prop_map(|(first, fourth, last, bits)| {
            let ip = Ipv6Addr::new(first, 0xdb8, 0, fourth, 0, 0, 0, last);
            IdentitySpec::Client(IpAddr::V6(ip), bits)
        });
    // An IPv4-mapped address is an IPv6 address to a key.
    let mapped = (0u8..2).prop_map(|last| {
        IdentitySpec::Client(
            IpAddr::V6(Ipv4Addr::new(10, 0, 0, last).to_ipv6_mapped()),
            128,
        )
    });
    // Inside the NAT64 prefix 64:ff9b::/96 (an IPv4 address to a key), and
    // beside it in its /64.
    let nat64 = (
        prop::sample::select(vec![
            Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0xa00, 1),
            Ipv6Addr::new(0x64, 0xff9b, 0, 0, 1, 0, 0, 1),
        ]),
        prop::sample::select(vec![64u8, 128]),
    )
        .prop_map(|(ip, bits)| IdentitySpec::Client(IpAddr::V6(ip), bits));
    prop_oneof![v4, v6, mapped, nat64]
}

fn identity() -> impl proptest::strategy::Strategy<Value = IdentitySpec> {
    // Texts that are also the texts of client addresses: they count with
    // those addresses.
    let address_text = prop::sample::select(vec![
        "10.0.0.1",
        "10.0.0.0",
        "2001:db8:0:1::/64",
        "2001:db8::2",
        "::/0",
        "64:ff9b::/64",
    ])
    .prop_map(|text| IdentitySpec::Text(text.to_owned()));
    prop_oneof![2 => part().prop_map(IdentitySpec::Text), 1 => address_text, 2 => client()]
}

fn scope() -> impl proptest::strategy::Strategy<Value = ScopeSpec> {
    let method = prop::sample::select(vec![
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::from_bytes(b"get").unwrap(),
        Method::from_bytes(b"PURGE").unwrap(),
        Method::from_bytes(b"BREW").unwrap(),
    ]);
    prop_oneof![
        Just(ScopeSpec::Shared),
        (method, part()).prop_map(|(method, route)| ScopeSpec::Http(method, route)),
        (part(), part()).prop_map(|(path, context)| ScopeSpec::WebSocket(path, context)),
    ]
}

fn key_spec() -> impl proptest::strategy::Strategy<Value = KeySpec> {
    let uid = prop_oneof![
        4 => prop::sample::select(vec!["t", "a:b", "a%3Ab"]).prop_map(str::to_owned),
        1 => part(),
    ];
    (uid, identity(), scope()).prop_map(|(uid, identity, scope)| KeySpec {
        uid,
        identity,
        scope,
    })
}

/// One rate (any strategy: the in-memory backend keeps sliding-window logs
/// apart from the others) or two (a table of its own), allowing one hit per
/// hour: a key's second hit is refused exactly when it shares a counter.
fn quotas() -> impl proptest::strategy::Strategy<Value = Vec<Quota>> {
    let one = prop::sample::select(STRATEGIES.to_vec())
        .prop_map(|strategy| vec![Quota::new(Rate::per_hour(1).unwrap(), strategy).unwrap()]);
    let two = prop::sample::select(STRATEGIES.to_vec()).prop_map(|strategy| {
        vec![
            Quota::new(Rate::per_hour(1).unwrap(), strategy).unwrap(),
            Quota::new(Rate::per_day(5).unwrap(), strategy).unwrap(),
        ]
    });
    prop_oneof![3 => one, 1 => two]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        // The properties are about keys, not files: nothing to persist.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Each key is hit once, in order, on a fresh backend at one hour per
    /// hit: a hit is allowed exactly when no earlier key has the same text.
    /// So two keys whose texts differ never share a counter, and two keys
    /// with one text always do (a text identity and the client address it
    /// spells included), as on Redis, which stores the text.
    #[test]
    fn keys_whose_texts_differ_never_share_a_counter(
        pool in prop::collection::vec(key_spec(), 1..12),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 1..24),
        quotas in quotas(),
        prefix in prop::sample::select(vec!["traffik", "p:q", "%"]),
    ) {
        let memory = InMemoryBackend::builder()
            .prefix(prefix)
            .clock(ManualClock::starting_at(Duration::from_secs(3_600)))
            .build();
        // Keys from a small pool: some come back, others look alike.
        let specs: Vec<&KeySpec> = picks.iter().map(|pick| pick.get(&pool)).collect();
        let keys: Vec<Key<'_>> = specs.iter().map(|spec| spec.key()).collect();
        let texts: Vec<String> = keys.iter().map(|key| key.text(prefix)).collect();
        for (i, key) in keys.iter().enumerate() {
            let shares = (0..i).find(|&j| texts[j] == texts[i]);
            let decision = memory.decide(key, &quotas, 1, Op::Hit).unwrap().binding();
            prop_assert_eq!(
                decision.allowed,
                shares.is_none(),
                "key {} ({:?}) {} a counter with {:?}",
                texts[i],
                specs[i],
                if decision.allowed { "does not share" } else { "shares" },
                shares.map(|j| (&texts[j], &specs[j]))
            );
            // A spent key is spent: its next hit is refused.
            let again = memory.decide(key, &quotas, 1, Op::Peek).unwrap().binding();
            prop_assert!(!again.allowed, "{}", texts[i]);
        }
        // Stored: one key per counter.
        let mut counters: Vec<&String> = texts.iter().collect();
        counters.sort();
        counters.dedup();
        prop_assert_eq!(memory.len(), counters.len());
    }
}

/// The cases the generator above is built to find, spelled out.
#[test]
fn look_alike_keys_count_apart() {
    let memory = InMemoryBackend::builder().clock(ManualClock::new()).build();
    let quota = Quota::new(Rate::per_hour(1).unwrap(), Strategy::FixedWindow).unwrap();
    let v6: IpAddr = "2001:db8:1:2::1".parse().unwrap();
    let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
    let get = Method::GET;
    let keys = [
        // The uid "a" with the identity "b:x", the uid "a:b" with "x".
        Key::new("a", "b:x", Scope::shared()),
        Key::new("a:b", "x", Scope::shared()),
        Key::new("a%3Ab", "x", Scope::shared()),
        // An identity that ends like a scope, against that scope.
        Key::new("t", "u:http:GET:/x", Scope::http(&get, "/y")),
        Key::new("t", "u", Scope::http(&get, "/x:http:GET:/y")),
        Key::new("t", "u", Scope::websocket("/chat", "room:1")),
        Key::new("t", "u", Scope::websocket("/chat:room", "1")),
        // One address, as a /64 and whole; another /64.
        Key::client("t", v6, 64, Scope::shared()),
        Key::client("t", v6, 128, Scope::shared()),
        Key::client("t", other_64, 64, Scope::shared()),
        // A made-up method shares `OTHER`, apart from the standard ones.
        Key::new(
            "t",
            "u",
            Scope::http(&Method::from_bytes(b"PURGE").unwrap(), "/"),
        ),
        Key::new("t", "u", Scope::http(&Method::POST, "/")),
    ];
    let texts: Vec<String> = keys.iter().map(|key| key.text("traffik")).collect();
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            texts.iter().filter(|text| **text == texts[i]).count(),
            1,
            "{}",
            texts[i]
        );
        assert!(memory.hit(key, &quota, 1).unwrap().allowed, "{}", texts[i]);
    }
    assert_eq!(memory.len(), keys.len());
    // The same keys again: each is spent. HEAD counts as GET, and a method
    // sent in lowercase as that method.
    for key in &keys {
        assert!(!memory.hit(key, &quota, 1).unwrap().allowed);
    }
    let head = Key::new("t", "u:http:GET:/x", Scope::http(&Method::HEAD, "/y"));
    assert!(!memory.hit(&head, &quota, 1).unwrap().allowed);
    let brew = Key::new(
        "t",
        "u",
        Scope::http(&Method::from_bytes(b"BREW").unwrap(), "/"),
    );
    assert!(!memory.hit(&brew, &quota, 1).unwrap().allowed);
    let post = Key::new(
        "t",
        "u",
        Scope::http(&Method::from_bytes(b"post").unwrap(), "/"),
    );
    assert!(!memory.hit(&post, &quota, 1).unwrap().allowed);
    assert_eq!(memory.len(), keys.len());
}

// ---------------------------------------------------------- a wrapper backend

/// A backend around an `InMemoryBackend` that forwards every method of the
/// trait and counts its decisions.
#[derive(Clone)]
struct Wrapper {
    inner: InMemoryBackend,
    decisions: Arc<AtomicUsize>,
}

impl Wrapper {
    fn new(inner: InMemoryBackend) -> Self {
        Wrapper {
            inner,
            decisions: Arc::default(),
        }
    }
}

impl ThrottleBackend for Wrapper {
    fn prefix(&self) -> &str {
        ThrottleBackend::prefix(&self.inner)
    }
    fn decide(&self, key: &Key<'_>, quotas: &[Quota], cost: u64, op: Op) -> BackendFuture {
        self.decisions.fetch_add(1, Ordering::SeqCst);
        ThrottleBackend::decide(&self.inner, key, quotas, cost, op)
    }
    fn reset(&self) -> BoxFuture<Result<(), Error>> {
        ThrottleBackend::reset(&self.inner)
    }
    fn initialize(&self) -> BoxFuture<Result<(), Error>> {
        ThrottleBackend::initialize(&self.inner)
    }
    fn close(&self) -> BoxFuture<Result<(), Error>> {
        ThrottleBackend::close(&self.inner)
    }
    fn persistent(&self) -> bool {
        ThrottleBackend::persistent(&self.inner)
    }
    fn check_quota(&self, quota: &Quota) -> Result<(), Error> {
        self.inner.check_quota(quota)
    }
    fn uids(&self) -> Option<&Uids> {
        self.inner.uids()
    }
}

/// An app with a per-route throttle of two rates (its own backend), and a
/// layer on `backend` with a rule for writes (one counter per client for
/// every route) and a rule per user on `/api/`. Returns the per-route
/// throttle too, for hits in code.
fn layered_app(backend: impl ThrottleBackend + Clone) -> (Router, HttpThrottle) {
    let route = HttpThrottle::builder()
        .uid("route")
        .rates(["2/s", "3/min"])
        .strategy(Strategy::FixedWindow)
        .headers(RateLimitHeaders::Ietf)
        .backend(backend.clone())
        .build()
        .unwrap();
    let writes = HttpThrottle::builder()
        .uid("writes")
        .rate("2/min")
        .shared_across_routes()
        .headers(RateLimitHeaders::Legacy)
        .build()
        .unwrap();
    let users = HttpThrottle::builder()
        .uid("users")
        .rate("4/min")
        .strategy(Strategy::SlidingWindowLog)
        .cost(2)
        .headers(RateLimitHeaders::Ietf)
        .identifier(|parts: &Parts| {
            let user = parts
                .headers
                .get("x-user")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            async move { user.map_or(Identity::Unlimited, Identity::key) }
        })
        .build()
        .unwrap();
    let app = Router::new()
        .route("/route", get(ok).post(ok).route_layer(route.layer()))
        .route("/api/items", get(ok).post(ok))
        .route("/free", get(ok))
        .layer(
            ThrottleLayer::new(backend)
                .rule(MiddlewareThrottle::new(writes).methods([Method::POST]))
                .rule(MiddlewareThrottle::new(users).path("^/api/")),
        );
    (app, route)
}

/// What a run saw of each answer: the status and the rate-limit headers.
type Seen = Vec<(u16, Vec<(String, String)>)>;

/// The same requests, at the same (manual) times, through an app on
/// `backend`; `clock` is the backend's.
async fn run(backend: impl ThrottleBackend + Clone, clock: &ManualClock) -> (Seen, Vec<String>) {
    let (app, route) = layered_app(backend);
    let peers = ["10.0.0.1:1000", "10.0.0.2:2000"];
    let mut seen = Seen::new();
    let mut decisions = Vec::new();
    for step in 0..60usize {
        let peer = peers[step % 3 % 2];
        let user = ["alice", "bob"][step % 5 % 2];
        let req = match step % 6 {
            0 | 1 => request("GET", "/route", Some(peer), &[]),
            2 => request("POST", "/route", Some(peer), &[]),
            3 => request("GET", "/api/items", Some(peer), &[("x-user", user)]),
            4 => request("POST", "/api/items", Some(peer), &[("x-user", user)]),
            _ => request("GET", "/free", Some(peer), &[]),
        };
        let reply = send(&app, req).await;
        let mut headers: Vec<(String, String)> = reply
            .headers
            .iter()
            .filter(|(name, _)| {
                let name = name.as_str();
                name.starts_with("ratelimit")
                    || name.starts_with("x-ratelimit")
                    || name == "retry-after"
            })
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
            .collect();
        headers.sort();
        seen.push((reply.status.as_u16(), headers));
        // In code too: a peek and a hit of the per-route throttle.
        if step % 10 == 9 {
            let req = at("/route", peer);
            decisions.push(format!("{:?}", route.peek(&req).await));
            decisions.push(format!(
                "{:?}",
                route.hit(&req).await.map_err(|e| e.to_string())
            ));
        }
        clock.advance(Duration::from_millis(if step % 20 == 19 {
            61_000
        } else {
            300
        }));
    }
    (seen, decisions)
}

fn manual_backend() -> (ManualClock, InMemoryBackend) {
    let clock = ManualClock::starting_at(Duration::from_secs(1_000));
    let backend = InMemoryBackend::builder().clock(clock.clone()).build();
    (clock, backend)
}

#[tokio::test]
async fn a_wrapper_backend_counts_exactly_like_the_backend_it_wraps() {
    let (clock, bare) = manual_backend();
    let (bare_seen, bare_decisions) = run(bare.clone(), &clock).await;

    let (clock, inner) = manual_backend();
    let wrapper = Wrapper::new(inner.clone());
    let (wrapped_seen, wrapped_decisions) = run(wrapper.clone(), &clock).await;

    assert_eq!(wrapped_seen, bare_seen);
    assert_eq!(wrapped_decisions, bare_decisions);
    assert_eq!(inner.len(), bare.len());
    // The run means something: some answers are 429s, some pass, and every
    // decision went through the wrapper (nothing bypasses it).
    let statuses: Vec<u16> = bare_seen.iter().map(|(status, _)| *status).collect();
    assert!(
        statuses.contains(&429) && statuses.contains(&200),
        "{statuses:?}"
    );
    assert!(bare_seen
        .iter()
        .any(|(_, headers)| headers.iter().any(|(n, _)| n == "x-ratelimit-limit")));
    assert!(bare_seen
        .iter()
        .any(|(_, headers)| headers.iter().any(|(n, _)| n == "ratelimit")));
    let asked = wrapper.decisions.load(Ordering::SeqCst);
    // At least one per request to a throttled route (50), and 12 in code.
    assert!(asked >= 62, "{asked} decisions through the wrapper");

    // reset() reaches the wrapped backend.
    assert!(!inner.is_empty());
    ThrottleBackend::reset(&wrapper).await.unwrap();
    assert!(inner.is_empty());
}

#[tokio::test]
async fn a_wrapper_shares_the_uids_of_the_backend_it_wraps() {
    let inner = InMemoryBackend::new();
    let wrapper = Wrapper::new(inner.clone());
    let on_inner = HttpThrottle::builder()
        .uid("wrapped")
        .rate("5/min")
        .backend(inner.clone())
        .build()
        .unwrap();
    // The same uid on the wrapper counts on the same store: refused.
    let error = HttpThrottle::builder()
        .uid("wrapped")
        .rate("5/min")
        .backend(wrapper.clone())
        .build()
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("duplicate throttle uid \"wrapped\""),
        "{error}"
    );
    drop(on_inner);
    let on_wrapper = HttpThrottle::builder()
        .uid("wrapped")
        .rate("5/min")
        .backend(wrapper)
        .build()
        .unwrap();
    assert!(HttpThrottle::builder()
        .uid("wrapped")
        .rate("5/min")
        .backend(inner)
        .build()
        .is_err());
    drop(on_wrapper);
}

// ------------------------------------------------------------ several rates

/// `.rates([..])`: a hit counts on every rate or, when one refuses it, on
/// none; the request gets the binding decision.
#[tokio::test]
async fn several_rates_are_all_or_nothing() {
    let (clock, memory) = manual_backend();
    let t = HttpThrottle::builder()
        .uid("burst-and-minute")
        .rates(["2/s", "3/min"])
        .strategy(Strategy::FixedWindow)
        .backend(memory.clone())
        .build()
        .unwrap();
    let req = at("/r", "10.3.0.1:1");
    let first = t.hit(&req).await.unwrap();
    assert_eq!(
        (first.limit, first.remaining),
        (2, 1),
        "the per-second rate binds"
    );
    assert_eq!(t.hit(&req).await.unwrap().remaining, 0);
    // Refused by the per-second rate: counted on neither.
    let Err(Error::Throttled(throttled)) = t.hit(&req).await else {
        panic!("the third hit in a second is refused");
    };
    assert_eq!(throttled.decision().limit, 2);
    assert_eq!(throttled.retry_after(), Duration::from_secs(1));
    clock.advance(Duration::from_secs(1));
    // The minute counted 2 of 3 (not the refused hit): one more passes.
    let third = t.hit(&req).await.unwrap();
    assert_eq!(
        (third.limit, third.remaining),
        (3, 0),
        "the per-minute rate binds"
    );
    clock.advance(Duration::from_secs(1));
    let Err(Error::Throttled(throttled)) = t.hit(&req).await else {
        panic!("the fourth hit in a minute is refused");
    };
    assert_eq!(throttled.decision().limit, 3);
    assert_eq!(throttled.retry_after(), Duration::from_secs(58));
    assert_eq!(memory.len(), 1, "one key holds both rates");

    // The same through the backend: each rate's decision, in order.
    let key = Key::new("direct", "client", Scope::shared());
    let quotas = [
        Quota::new("1/s".parse().unwrap(), Strategy::TokenBucket).unwrap(),
        Quota::new("5/min".parse().unwrap(), Strategy::TokenBucket).unwrap(),
    ];
    let decisions = memory.decide(&key, &quotas, 1, Op::Hit).unwrap();
    assert_eq!(decisions.iter().count(), 2);
    assert_eq!(decisions.get(0).unwrap().remaining, 0);
    assert_eq!(decisions.get(1).unwrap().remaining, 4);
    assert_eq!(decisions.binding().remaining, 0);
    let refused = memory.decide(&key, &quotas, 1, Op::Hit).unwrap();
    assert!(!refused.binding().allowed);
    assert!(!refused.get(0).unwrap().allowed && refused.get(1).unwrap().allowed);
    let peeked = memory.decide(&key, &quotas, 1, Op::Peek).unwrap();
    assert_eq!(
        peeked.get(1).unwrap().remaining,
        3,
        "the refused hit counted nowhere"
    );
}

#[test]
fn rates_are_checked_at_build() {
    let error = HttpThrottle::builder()
        .rates(Vec::<&str>::new())
        .build()
        .unwrap_err();
    assert!(matches!(error, Error::Configuration(_)), "{error:?}");
    let error = HttpThrottle::builder()
        .rates(["2/s", "nonsense"])
        .build()
        .unwrap_err();
    assert!(matches!(error, Error::Configuration(_)), "{error:?}");
    let error = HttpThrottle::builder()
        .rates(["2/s", "100/h"])
        .burst(5)
        .build()
        .unwrap_err();
    assert!(matches!(error, Error::Configuration(_)), "{error:?}");
    // `.rate(r)` is `.rates([r])`; the last of the two wins.
    assert!(HttpThrottle::builder()
        .rates(["2/s", "100/h"])
        .rate("5/min")
        .burst(5)
        .build()
        .is_ok());
}

// ------------------------------------------------- one app, built many times

/// An app whose throttles have explicit uids: a per-route throttle on
/// `backend`, and a layer on `backend` with a rule for writes. Built twice
/// on one backend, it fails with the duplicate-uid error.
fn app(backend: &InMemoryBackend) -> Result<Router, Error> {
    let hello = HttpThrottle::builder()
        .uid("hello")
        .rate("3/min")
        .backend(backend.clone())
        .build()?;
    let writes = HttpThrottle::builder()
        .uid("writes")
        .rate("2/min")
        .shared_across_routes()
        .build()?;
    Ok(Router::new()
        .route("/hello", get(ok).route_layer(hello.layer()))
        .route("/items", get(ok).post(ok))
        .layer(
            ThrottleLayer::new(backend.clone())
                .rule(MiddlewareThrottle::new(writes).methods([Method::POST])),
        ))
}

/// Spends a client's quotas on one build of the app: 3 of 5 on `/hello`,
/// 2 of 3 writes.
async fn spend(app: &Router, peer: &'static str) {
    assert_eq!(
        statuses(app, 5, || at("/hello", peer)).await,
        [200, 200, 200, 429, 429]
    );
    assert_eq!(
        statuses(app, 3, || request("POST", "/items", Some(peer), &[])).await,
        [200, 200, 429]
    );
    assert_eq!(statuses(app, 2, || at("/items", peer)).await, [200, 200]);
}

/// Two `#[tokio::test]`s build the app at the same time (libtest runs
/// them on parallel threads), each on its own backend.
#[tokio::test]
async fn the_app_built_by_one_test() {
    let backend = InMemoryBackend::new();
    let app = app(&backend).expect("the app builds on a backend of its own");
    spend(&app, "10.9.0.1:1").await;
}

#[tokio::test]
async fn the_app_built_by_another_test() {
    let backend = InMemoryBackend::new();
    let app = app(&backend).expect("the app builds on a backend of its own");
    spend(&app, "10.9.0.1:1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_app_built_concurrently_on_separate_backends_counts_independently() {
    let builds: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async {
                let backend = InMemoryBackend::new();
                let app = app(&backend).expect("the app builds on a backend of its own");
                // The same client on every build: each build counts it afresh.
                spend(&app, "10.9.0.2:2").await;
                (backend, app)
            })
        })
        .collect();
    let mut built = Vec::new();
    for build in builds {
        built.push(build.await.unwrap());
    }
    // Each build keeps its own counts: spent on each, whatever the others do.
    for (backend, app) in &built {
        assert_eq!(backend.len(), 2);
        assert_eq!(statuses(app, 1, || at("/hello", "10.9.0.2:2")).await, [429]);
        assert_eq!(statuses(app, 1, || at("/hello", "10.9.0.3:3")).await, [200]);
    }

    // Built again on a backend in use: the duplicate-uid error, naming the
    // uid and the fix.
    let (backend, first) = built.pop().unwrap();
    let error = app(&backend).unwrap_err();
    assert!(matches!(error, Error::Configuration(_)), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("duplicate throttle uid \"hello\""),
        "{message}"
    );
    assert!(message.contains("its own backend"), "{message}");
    // A clone of the backend is the same backend.
    assert!(app(&backend.clone()).is_err());
    // Dropping the first build frees its uids on that backend.
    drop(first);
    let again = app(&backend).expect("the uids are free once the first build is dropped");
    // It counts on the same store: the client is still spent there.
    assert_eq!(
        statuses(&again, 1, || at("/hello", "10.9.0.2:2")).await,
        [429]
    );
}
