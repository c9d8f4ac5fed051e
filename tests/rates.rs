//! Several rates decided all or nothing, reservations and refunds: the pure
//! decision against single-rate decisions composed by hand, the in-memory
//! and Redis backends under concurrency, the Redis scripts against the pure
//! decision, and `refund_when` through a real Axum server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::ws::Message;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use proptest::prelude::*;
use proptest::strategy::Strategy as _;
use traffik::backend::{InMemoryBackend, Op};
use traffik::clock::ManualClock;
use traffik::key::{Key, Scope};
use traffik::strategy::{self, State};
use traffik::{Decision, Error, HttpThrottle, Quota, Rate, Strategy, WebSocketThrottle};

const STRATEGIES: [Strategy; 5] = [
    Strategy::TokenBucket,
    Strategy::FixedWindow,
    Strategy::SlidingWindowCounter,
    Strategy::SlidingWindowLog,
    Strategy::Gcra,
];

fn quota(rate: &str, strategy: Strategy) -> Quota {
    Quota::new(rate.parse::<Rate>().unwrap(), strategy).unwrap()
}

// ------------------------------------------------------------------------
// The pure decision: several rates are every single rate's decision,
// counted on all of them or on none.

#[derive(Debug, Clone)]
enum Step {
    Advance(u64),
    Hit(u64),
    Peek(u64),
    /// Refunds the `n`th hit still held (modulo their number).
    Refund(usize),
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    prop_oneof![
        3 => (0u64..2_000_000).prop_map(Step::Advance),
        5 => (1u64..4).prop_map(Step::Hit),
        1 => (1u64..4).prop_map(Step::Peek),
        2 => (0usize..8).prop_map(Step::Refund),
    ]
}

/// The binding decision of several single-rate decisions, as the contract
/// states it.
fn binding(each: &[Decision]) -> Decision {
    let allowed = each.iter().all(|d| d.allowed);
    let binds = each
        .iter()
        .min_by_key(|d| (d.allowed, std::cmp::Reverse(d.retry_after), d.remaining))
        .unwrap();
    Decision {
        allowed,
        limit: binds.limit,
        remaining: each.iter().map(|d| d.remaining).min().unwrap(),
        reset_after: binds.reset_after,
        retry_after: each.iter().map(|d| d.retry_after).max().unwrap(),
    }
}

fn check_composed(quotas: &[Quota], steps: &[Step]) {
    let mut states = vec![State::new(); quotas.len()];
    let mut model = vec![State::new(); quotas.len()];
    let mut now = Duration::from_secs(1_000);
    let mut held: Vec<(Duration, u64)> = Vec::new();
    for step in steps {
        match *step {
            Step::Advance(us) => now += Duration::from_micros(us),
            Step::Hit(cost) | Step::Peek(cost) => {
                let hit = matches!(step, Step::Hit(_));
                let op = if hit { Op::Hit } else { Op::Peek };
                let got = strategy::decide(quotas, &mut states, now, cost, op);
                let mut each: Vec<Decision> = quotas
                    .iter()
                    .zip(&model)
                    .map(|(q, s)| q.peek(s, now, cost))
                    .collect();
                if hit && !each.iter().all(|d| d.allowed) {
                    // Refused: a rate that would have allowed the hit took
                    // nothing, and says what it still holds: `cost` more
                    // than counting would have left, back to full no later.
                    for (would, got) in each.iter_mut().zip(got.iter()) {
                        if would.allowed {
                            assert_eq!(got.remaining, would.remaining + cost, "{step:?}");
                            assert!(got.allowed && got.retry_after.is_zero());
                            assert!(got.reset_after <= would.reset_after, "{step:?}");
                            *would = *got;
                        }
                    }
                }
                let expected = binding(&each);
                assert_eq!(got.binding(), expected, "{step:?} at {now:?}");
                assert_eq!(got.iter().copied().collect::<Vec<_>>(), each);
                assert_eq!(got.at(), now);
                if hit && expected.allowed {
                    for (q, s) in quotas.iter().zip(&mut model) {
                        assert!(q.decide(s, now, cost).allowed);
                    }
                    held.push((now, cost));
                }
            }
            Step::Refund(n) if !held.is_empty() => {
                let (at, cost) = held.remove(n % held.len());
                strategy::decide(quotas, &mut states, now, cost, Op::Refund { at });
                for (q, s) in quotas.iter().zip(&mut model) {
                    q.refund(s, now, cost, at);
                }
            }
            Step::Refund(_) => {}
        }
        assert_eq!(states, model, "after {step:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// All or nothing: the states change exactly as each rate's own
    /// decisions would when every rate allows the hit, and not at all
    /// otherwise; the decision is the binding one.
    #[test]
    fn several_rates_are_each_rate_decided_all_or_nothing(
        strategy in proptest::sample::select(STRATEGIES.to_vec()),
        fast in 1u64..6,
        slow in 3u64..20,
        steps in proptest::collection::vec(step(), 1..80),
    ) {
        let quotas = [
            quota(&format!("{fast}/s"), strategy),
            quota(&format!("{slow}/10s"), strategy),
        ];
        check_composed(&quotas, &steps);
    }
}

// ------------------------------------------------------------------------
// Refunds on one rate, against a reference model of what a refund gives
// back (written here, sharing no formula with the crate).

/// What the state holds of a hit of `cost` made at `at`, seen at `now`.
fn still_held(strategy: Strategy, period: u64, at: u64, now: u64) -> bool {
    match strategy {
        // A token goes back while the bucket is not full again (checked by
        // `remaining` below); GCRA moves back not before now.
        Strategy::TokenBucket | Strategy::Gcra => true,
        Strategy::FixedWindow | Strategy::SlidingWindowLog => now < at + period,
        Strategy::SlidingWindowCounter => now - now % period <= at - at % period + period,
        _ => unreachable!(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// A hit and its refund at once leave the state as it was (for the
    /// windows and the log), and never give more than the capacity back;
    /// a refund after the hit's window changes nothing.
    #[test]
    fn a_refund_gives_back_what_the_state_still_holds(
        strategy in proptest::sample::select(STRATEGIES.to_vec()),
        limit in 1u64..8,
        before in proptest::collection::vec((0u64..3_000_000, 1u64..3), 0..10),
        cost in 1u64..3,
        wait in 0u64..25_000_000,
    ) {
        let q = quota(&format!("{limit}/10s"), strategy);
        let period = q.period_micros();
        let mut state = State::new();
        let mut now = 1_000_000_000u64;
        for (gap, c) in before {
            now += gap;
            q.decide_micros(&mut state, now, c);
        }
        let untouched = state.clone();
        let (hit, _) = q.decide_micros(&mut state, now, cost);
        prop_assume!(hit.allowed);
        let at = Duration::from_micros(now);
        // At once: the state the hit found (tokens and windows alike).
        let mut refunded = state.clone();
        q.refund(&mut refunded, at, cost, at);
        let fresh = |s: &State| q.peek(s, at, 1);
        prop_assert_eq!(fresh(&refunded), fresh(&untouched), "{} refund at once", strategy);
        // Later: as the model says.
        let later = now + wait;
        let mut after = state.clone();
        let decision = q.refund(&mut after, Duration::from_micros(later), cost, at);
        prop_assert!(decision.remaining <= q.capacity());
        let without = q.peek(&state, Duration::from_micros(later), 1);
        let with = q.peek(&after, Duration::from_micros(later), 1);
        if still_held(strategy, period, now, later) && without.remaining < q.capacity() {
            prop_assert!(with.remaining >= without.remaining, "{} {:?} {:?}", strategy, with, without);
        }
        if !still_held(strategy, period, now, later) {
            prop_assert_eq!(with, without, "{} refund after the window", strategy);
        }
    }
}

// ------------------------------------------------------------------------
// The in-memory backend: one lock for every rate.

fn key(identity: &str) -> Key<'_> {
    Key::new("rates", identity, Scope::shared())
}

#[test]
fn concurrent_hits_on_two_rates_admit_exactly_the_binding_limit_in_memory() {
    for strategy in STRATEGIES {
        let memory = InMemoryBackend::builder().clock(ManualClock::new()).build();
        let quotas = [quota("7/s", strategy), quota("20/h", strategy)];
        let admitted = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..10 {
                        let d = memory.decide(&key("c"), &quotas, 1, Op::Hit).unwrap();
                        admitted.fetch_add(usize::from(d.binding().allowed), Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(admitted.into_inner(), 7, "{strategy}");
    }
}

/// A hit refused by the fast rate is not counted by the slow one: once the
/// fast window has passed, the slow rate still has the refused hits' places.
#[test]
fn a_refused_hit_changes_no_counter() {
    for strategy in STRATEGIES {
        let clock = ManualClock::new();
        let memory = InMemoryBackend::builder().clock(clock.clone()).build();
        let quotas = [quota("2/s", strategy), quota("5/h", strategy)];
        let hit = || {
            memory
                .decide(&key("c"), &quotas, 1, Op::Hit)
                .unwrap()
                .binding()
        };
        assert!(hit().allowed && hit().allowed);
        for _ in 0..10 {
            let refused = hit();
            assert!(!refused.allowed, "{strategy}");
        }
        clock.advance(Duration::from_secs(2));
        // 3 of the slow rate's 5 are left: the 10 refused hits took none.
        let mut allowed = 0;
        for _ in 0..3 {
            allowed += usize::from(hit().allowed);
            clock.advance(Duration::from_secs(1));
        }
        assert_eq!(allowed, 3, "{strategy}");
        assert!(!hit().allowed, "{strategy}: the slow rate is spent");
    }
}

// ------------------------------------------------------------------------
// Through a throttle and a real Axum server.

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

async fn post_login(addr: SocketAddr, password: &str) -> StatusCode {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<String>();
    let request = http::Request::post(format!("http://{addr}/login"))
        .body(password.to_owned())
        .unwrap();
    client.request(request).await.unwrap().status()
}

/// Counting only failed logins: any number of successes, then exactly
/// `limit` failures, then 429 (for a success too: the limit is reached).
#[tokio::test]
async fn refund_when_counts_only_failed_logins() {
    let logins = HttpThrottle::builder()
        .uid("login")
        .rate("3/min")
        .refund_when(|status| status.is_success())
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/login",
            post(|body: String| async move {
                if body == "secret" {
                    StatusCode::OK
                } else {
                    StatusCode::UNAUTHORIZED
                }
            }),
        )
        .route_layer(logins.layer());
    let addr = serve(app).await;
    for _ in 0..10 {
        assert_eq!(post_login(addr, "secret").await, StatusCode::OK);
    }
    for _ in 0..3 {
        assert_eq!(post_login(addr, "guess").await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        post_login(addr, "guess").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        post_login(addr, "secret").await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// `reserve` counts like `hit`, and a refund gives the place back.
#[tokio::test]
async fn reserve_counts_and_refund_gives_back() {
    let memory = InMemoryBackend::builder().clock(ManualClock::new()).build();
    let throttle = HttpThrottle::builder()
        .uid("reserve")
        .rates(["2/s", "10/min"])
        .backend(memory)
        .build()
        .unwrap();
    let request = http::Request::builder()
        .extension(SocketAddr::from(([10, 0, 0, 1], 1)))
        .body(())
        .unwrap();
    let first = throttle.reserve(&request).await.unwrap();
    assert_eq!(first.decision().remaining, 1);
    let second = throttle.reserve(&request).await.unwrap();
    assert!(matches!(
        throttle.reserve(&request).await,
        Err(Error::Throttled(_))
    ));
    second.refund().await.unwrap();
    drop(first); // kept
    let again = throttle.reserve(&request).await.unwrap();
    assert_eq!(again.decision().remaining, 0);
    assert!(throttle.hit(&request).await.is_err());
}

/// A handler counting a hit itself, and a route with two rates: the 429
/// waits for the rate that binds, and the headers list both rates.
#[tokio::test]
async fn several_rates_through_a_layer_list_every_policy() {
    let api = HttpThrottle::builder()
        .uid("api")
        .rates(["2/s", "3/min"])
        .headers(traffik::RateLimitHeaders::Ietf)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .route_layer(api.layer());
    let call = |app: Router| async move {
        use tower::ServiceExt;
        let request = Request::get("/")
            .extension(axum::extract::ConnectInfo(SocketAddr::from((
                [10, 0, 0, 2],
                1,
            ))))
            .body(axum::body::Body::empty())
            .unwrap();
        app.oneshot(request).await.unwrap()
    };
    let response = call(app.clone()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["ratelimit-policy"],
        r#""api-1";q=2;w=1, "api-2";q=3;w=60"#
    );
    assert_eq!(
        response.headers()["ratelimit"],
        r#""api-1";r=1;t=1, "api-2";r=2;t=20"#
    );
    call(app.clone()).await;
    let refused = call(app.clone()).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "1");
}

fn parsed(text: &str) -> Rate {
    text.parse().unwrap()
}

/// `GET /` through `app` from `peer`, with `headers`.
async fn call_from(
    app: &Router,
    peer: [u8; 4],
    headers: &[(&str, &str)],
) -> http::Response<axum::body::Body> {
    use tower::ServiceExt;
    let mut request = Request::get("/");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .extension(axum::extract::ConnectInfo(SocketAddr::from((peer, 1))))
        .body(axum::body::Body::empty())
        .unwrap();
    app.clone().oneshot(request).await.unwrap()
}

fn header<'a>(response: &'a http::Response<axum::body::Body>, name: &str) -> &'a str {
    response.headers()[name].to_str().unwrap()
}

/// A dynamic rate giving several rates (an array per tier): a hit counts on
/// every rate or on none, the 429 waits for the rate that binds, and the
/// headers list each rate as its own policy.
#[tokio::test]
async fn a_dynamic_rate_with_several_rates_is_decided_all_or_nothing() {
    let clock = ManualClock::new();
    let api = HttpThrottle::builder()
        .uid("tiers")
        .dynamic_rate(|parts: &http::request::Parts| {
            let pro = parts.headers.contains_key("x-pro");
            async move {
                if pro {
                    [parsed("4/s"), parsed("6/min")]
                } else {
                    [parsed("2/s"), parsed("3/min")]
                }
            }
        })
        .headers(traffik::RateLimitHeaders::Ietf)
        .backend(InMemoryBackend::builder().clock(clock.clone()).build())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .route_layer(api.layer());
    let free = [10, 0, 0, 5];

    let first = call_from(&app, free, &[]).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        header(&first, "ratelimit-policy"),
        r#""tiers-1";q=2;w=1, "tiers-2";q=3;w=60"#
    );
    assert_eq!(
        header(&first, "ratelimit"),
        r#""tiers-1";r=1;t=1, "tiers-2";r=2;t=20"#
    );
    assert_eq!(call_from(&app, free, &[]).await.status(), StatusCode::OK);
    // The per-second rate refuses; the per-minute one keeps its last place.
    for _ in 0..5 {
        let refused = call_from(&app, free, &[]).await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&refused, "retry-after"), "1");
        assert_eq!(
            header(&refused, "ratelimit-policy"),
            r#""tiers-1";q=2;w=1, "tiers-2";q=3;w=60"#
        );
    }
    clock.advance(Duration::from_secs(1));
    // The five refused hits took nothing from the per-minute rate.
    let third = call_from(&app, free, &[]).await;
    assert_eq!(third.status(), StatusCode::OK);
    // Now the per-minute rate binds: 0.95 of a token at 3/min is 19 s away,
    // though the per-second rate would allow.
    let refused = call_from(&app, free, &[]).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "retry-after"), "19");
    assert!(
        header(&refused, "ratelimit").ends_with(r#", "tiers-2";r=0;t=59"#),
        "{refused:?}"
    );
    clock.advance(Duration::from_secs(19));
    assert_eq!(call_from(&app, free, &[]).await.status(), StatusCode::OK);

    // The other tier's rates, each its own policy too.
    let pro = call_from(&app, [10, 0, 0, 6], &[("x-pro", "1")]).await;
    assert_eq!(pro.status(), StatusCode::OK);
    assert_eq!(
        header(&pro, "ratelimit-policy"),
        r#""tiers-1";q=4;w=1, "tiers-2";q=6;w=60"#
    );
}

/// A dynamic rate may give a `Vec` of any length: one rate is one policy
/// named by the uid, several are `{uid}-1`, `{uid}-2`…
#[tokio::test]
async fn a_dynamic_rate_may_give_a_vec_of_rates() {
    let clock = ManualClock::new();
    let api = HttpThrottle::builder()
        .uid("plans")
        .dynamic_rate(|parts: &http::request::Parts| {
            let plans: Vec<Rate> = match parts.headers.get("x-plan").map(|v| v.as_bytes()) {
                Some(b"three") => vec![parsed("1/s"), parsed("5/min"), parsed("10/h")],
                _ => vec![parsed("2/min")],
            };
            async move { plans }
        })
        .headers(traffik::RateLimitHeaders::Ietf)
        .backend(InMemoryBackend::builder().clock(clock.clone()).build())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .route_layer(api.layer());

    let one = call_from(&app, [10, 0, 1, 1], &[]).await;
    assert_eq!(header(&one, "ratelimit-policy"), r#""plans";q=2;w=60"#);
    let three = call_from(&app, [10, 0, 1, 2], &[("x-plan", "three")]).await;
    assert_eq!(
        header(&three, "ratelimit-policy"),
        r#""plans-1";q=1;w=1, "plans-2";q=5;w=60, "plans-3";q=10;w=3600"#
    );
    assert_eq!(
        header(&three, "ratelimit"),
        r#""plans-1";r=0;t=1, "plans-2";r=4;t=12, "plans-3";r=9;t=360"#
    );
    // The per-second rate binds and refuses: the other two count nothing
    // either, as the next allowed hit shows (one more taken from each, less
    // a second's refill).
    let refused = call_from(&app, [10, 0, 1, 2], &[("x-plan", "three")]).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "retry-after"), "1");
    clock.advance(Duration::from_secs(1));
    let next = call_from(&app, [10, 0, 1, 2], &[("x-plan", "three")]).await;
    assert_eq!(next.status(), StatusCode::OK);
    assert_eq!(
        header(&next, "ratelimit"),
        r#""plans-1";r=0;t=1, "plans-2";r=3;t=23, "plans-3";r=8;t=719"#
    );
}

/// On a hit one rate refuses, the headers give each other rate what it
/// still holds (the hit took nothing from it): `Decision::remaining` is
/// "hits of cost 1 still allowed right now after this decision".
#[tokio::test]
async fn a_refused_hit_reports_what_the_other_rates_still_hold() {
    let api = HttpThrottle::builder()
        .uid("held")
        .rates(["1/s", "5/min"])
        .headers(traffik::RateLimitHeaders::Ietf)
        .backend(InMemoryBackend::builder().clock(ManualClock::new()).build())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .route_layer(api.layer());
    let allowed = call_from(&app, [10, 0, 2, 1], &[]).await;
    assert_eq!(
        header(&allowed, "ratelimit"),
        r#""held-1";r=0;t=1, "held-2";r=4;t=12"#
    );
    let refused = call_from(&app, [10, 0, 2, 1], &[]).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        header(&refused, "ratelimit"),
        r#""held-1";r=0;t=1, "held-2";r=4;t=12"#
    );
}

// ------------------------------------------------------------------------
// Several rates on a WebSocket throttle.

/// An in-memory socket: what the client sends comes from a channel, what
/// the guard sends back is recorded.
struct MockSocket {
    incoming: tokio::sync::mpsc::UnboundedReceiver<Message>,
    sent: std::sync::Arc<std::sync::Mutex<Vec<Message>>>,
}

impl futures_util::Stream for MockSocket {
    type Item = Result<Message, std::convert::Infallible>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.incoming.poll_recv(cx).map(|m| m.map(Ok))
    }
}

impl futures_util::Sink<Message> for MockSocket {
    type Error = std::convert::Infallible;
    fn poll_ready(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn start_send(self: std::pin::Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        self.sent.lock().unwrap().push(item);
        Ok(())
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
}

fn ws_notice(retry_after: u64) -> String {
    format!(r#"{{"type":"rate_limit","error":"Too many messages","retry_after":{retry_after}}}"#)
}

/// The client sends `texts`, then a ping (never a hit) as a marker; returns
/// the texts the handler received, and the texts the client got back.
async fn exchange<S>(
    guarded: &mut S,
    client: &tokio::sync::mpsc::UnboundedSender<Message>,
    sent: &std::sync::Mutex<Vec<Message>>,
    texts: &[&str],
) -> (Vec<String>, Vec<String>)
where
    S: futures_util::Stream<Item = Result<Message, std::convert::Infallible>> + Unpin,
{
    use futures_util::StreamExt;
    for text in texts {
        client.send(Message::Text((*text).into())).unwrap();
    }
    client.send(Message::Ping(Default::default())).unwrap();
    let mut delivered = Vec::new();
    loop {
        match guarded.next().await {
            Some(Ok(Message::Text(text))) => delivered.push(text.as_str().to_owned()),
            Some(Ok(Message::Ping(_))) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let replies = std::mem::take(&mut *sent.lock().unwrap())
        .into_iter()
        .map(|m| match m {
            Message::Text(text) => text.as_str().to_owned(),
            other => panic!("unexpected reply {other:?}"),
        })
        .collect();
    (delivered, replies)
}

/// `.rates([..])` on a WebSocket throttle: a message refused by one rate is
/// dropped and not counted by the other, and the notice waits for the rate
/// that binds.
#[tokio::test]
async fn websocket_rates_do_not_count_a_message_another_rate_refused() {
    let clock = ManualClock::new();
    let ws_t = WebSocketThrottle::builder()
        .uid("ws-rates")
        .rates(["2/s", "3/min"])
        .backend(InMemoryBackend::builder().clock(clock.clone()).build())
        .build()
        .unwrap();
    let (client, incoming) = tokio::sync::mpsc::unbounded_channel();
    let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let socket = MockSocket {
        incoming,
        sent: std::sync::Arc::clone(&sent),
    };
    let mut guarded = ws_t.guard(socket, "alice");

    let (delivered, replies) =
        exchange(&mut guarded, &client, &sent, &["1", "2", "3", "4", "5"]).await;
    assert_eq!(delivered, ["1", "2"]);
    assert_eq!(replies, [ws_notice(1), ws_notice(1), ws_notice(1)]);

    clock.advance(Duration::from_secs(1));
    // The per-minute rate still has its third place: the three dropped
    // messages took none. Then it binds, 19 s away (0.95 of a token at 3/min).
    let (delivered, replies) = exchange(&mut guarded, &client, &sent, &["6", "7"]).await;
    assert_eq!(delivered, ["6"]);
    assert_eq!(replies, [ws_notice(19)]);

    clock.advance(Duration::from_secs(19));
    let (delivered, replies) = exchange(&mut guarded, &client, &sent, &["8"]).await;
    assert_eq!(delivered, ["8"]);
    assert!(replies.is_empty(), "{replies:?}");
}

#[test]
fn several_rates_with_a_burst_or_none_are_configuration_errors() {
    let burst = HttpThrottle::builder()
        .rates(["2/s", "3/min"])
        .burst(5)
        .build()
        .unwrap_err();
    assert!(
        burst.to_string().contains("burst(5) with several rates"),
        "{burst}"
    );
    let empty = HttpThrottle::builder()
        .rates(Vec::<Rate>::new())
        .build()
        .unwrap_err();
    assert!(empty.to_string().contains("empty list of rates"), "{empty}");
    // The last of `.rate` and `.rates` wins.
    let last = HttpThrottle::builder()
        .rates(["2/s", "3/min"])
        .rate("1/s")
        .build();
    assert!(last.is_ok());
}

// ------------------------------------------------------------------------
// Redis: the same decisions, one script, one slot.

#[cfg(feature = "redis")]
mod redis_backend {
    use super::*;
    use std::sync::Arc;
    use traffik::backend::RedisBackend;
    use traffik::backend::ThrottleBackend;
    use traffik::strategy::Decisions;

    fn redis_url() -> String {
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
    }

    async fn backend(test: &str) -> Option<RedisBackend> {
        let prefix = format!("traffik-test-rates-{test}-{}", std::process::id());
        match RedisBackend::builder(redis_url())
            .prefix(prefix)
            .persistent(false)
            .build()
            .await
        {
            Ok(redis) => Some(redis),
            Err(error) => {
                let what = format!("no Redis at {} ({error})", redis_url());
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("CI=true but {what}");
                }
                eprintln!("\n!!!!!!!!!! SKIPPED: {what} !!!!!!!!!!\n");
                None
            }
        }
    }

    /// The scripts with the server's clock replaced by a time passed in:
    /// every decision of several rates, peeks and refunds included, equals
    /// the pure decision's, and so do the states they leave.
    #[tokio::test]
    async fn several_rates_and_refunds_mirror_the_pure_decision() {
        let Some(redis) = backend("mirror").await else {
            return;
        };
        let prelude = include_str!("../src/backend/redis/prelude.lua")
            .replace("redis.call('TIME')", "{ARGV[#ARGV - 1], ARGV[#ARGV]}")
            // The test's clock runs faster than the server's: keep keys alive
            // (a state past its expiry is equivalent to a fresh one anyway).
            .replace(
                "return int(cdiv(us, 1000) + 1)",
                "return int(cdiv(us, 1000) + 600000)",
            );
        assert!(prelude.contains("ARGV[#ARGV]") && prelude.contains("600000"));
        let driver = include_str!("../src/backend/redis/driver.lua");
        let body = |strategy| match strategy {
            Strategy::TokenBucket => include_str!("../src/backend/redis/token_bucket.lua"),
            Strategy::FixedWindow => include_str!("../src/backend/redis/fixed_window.lua"),
            Strategy::SlidingWindowCounter => {
                include_str!("../src/backend/redis/sliding_window_counter.lua")
            }
            Strategy::SlidingWindowLog => {
                include_str!("../src/backend/redis/sliding_window_log.lua")
            }
            _ => include_str!("../src/backend/redis/gcra.lua"),
        };
        let mut conn = redis::Client::open(redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let sets: [&[&str]; 4] = [
            &["3/s", "5/10s"],
            &["2/500ms", "4/2s", "9/min"],
            &["7/300ms", "10/3s"],
            &["1/s", "2/s"],
        ];
        // The token bucket and the sliding window counter decide quotas
        // whose numbers pass 2^53 on exact integers: refunds too.
        let exact: [&[&str]; 3] = [
            &["1000003/day", "53375993/day"],
            &["1000003/86399999us", "3643/14610d"],
            // A small rate that refuses while the exact one would allow:
            // the exact rate reports what it holds (cost 0).
            &["2/s", "1000003/day"],
        ];
        for strategy in STRATEGIES {
            let script = redis::Script::new(&format!("{prelude}\n{}\n{driver}", body(strategy)));
            let big = matches!(
                strategy,
                Strategy::TokenBucket | Strategy::SlidingWindowCounter
            );
            let sets = sets.iter().chain(exact.iter().filter(|_| big));
            for (r, rates) in sets.enumerate() {
                let quotas: Vec<Quota> = rates.iter().map(|rate| quota(rate, strategy)).collect();
                let keys: Vec<String> = (0..quotas.len())
                    .map(|i| format!("{}:{{mirror-{strategy}-{r}}}:{i}", redis.prefix()))
                    .collect();
                let mut states = vec![State::new(); quotas.len()];
                let mut now: u64 = 1_700_000_000_000_000 + next(1 << 40);
                let mut held: Vec<(u64, u64)> = Vec::new();
                for step in 0..200 {
                    now += match next(6) {
                        0 => 0,
                        1 => next(50),
                        2 => next(300_000),
                        3 => next(3_000_000),
                        _ => next(100_000),
                    };
                    let cost = 1 + next(3);
                    let (op, name, hit, cost) = match next(8) {
                        0 => (Op::Peek, "peek", 0, cost),
                        1 | 2 if !held.is_empty() => {
                            let (at, cost) = held.remove(next(held.len() as u64) as usize);
                            (
                                Op::Refund {
                                    at: Duration::from_micros(at),
                                },
                                "refund",
                                at,
                                cost,
                            )
                        }
                        _ => (Op::Hit, "hit", 0, cost),
                    };
                    let expected: Decisions = strategy::decide(
                        &quotas,
                        &mut states,
                        Duration::from_micros(now),
                        cost,
                        op,
                    );
                    if op == Op::Hit && expected.binding().allowed {
                        held.push((now, cost));
                    }
                    let mut invocation = script.prepare_invoke();
                    for key in &keys {
                        invocation.key(key);
                    }
                    invocation.arg(name).arg(cost).arg(hit);
                    for q in &quotas {
                        match strategy {
                            Strategy::TokenBucket => {
                                invocation
                                    .arg(q.limit())
                                    .arg(q.period_micros())
                                    .arg(q.capacity());
                            }
                            Strategy::Gcra => {
                                invocation
                                    .arg(q.emission_interval())
                                    .arg(q.capacity())
                                    .arg(q.period_micros());
                            }
                            _ => {
                                invocation.arg(q.limit()).arg(q.period_micros());
                            }
                        }
                    }
                    invocation.arg(now / 1_000_000).arg(now % 1_000_000);
                    let reply: Vec<i64> = invocation.invoke_async(&mut conn).await.unwrap();
                    let what =
                        format!("{strategy} {rates:?} step {step} {name} cost {cost} now {now}");
                    assert_eq!(reply[0] as u64, now, "{what}");
                    for (i, expected) in expected.iter().enumerate() {
                        let got = &reply[1 + 4 * i..5 + 4 * i];
                        assert_eq!(got[0] == 1, expected.allowed, "{what} rate {i}");
                        assert_eq!(got[1] as u64, expected.remaining, "{what} rate {i}");
                        assert_eq!(
                            Duration::from_micros(got[2] as u64),
                            expected.reset_after,
                            "{what} rate {i}"
                        );
                        if !expected.allowed {
                            assert_eq!(
                                Duration::from_micros(got[3] as u64),
                                expected.retry_after,
                                "{what} rate {i}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn concurrent_hits_on_two_rates_admit_exactly_the_binding_limit_on_redis() {
        let Some(redis) = backend("concurrent").await else {
            return;
        };
        for strategy in STRATEGIES {
            let quotas: Arc<[Quota]> =
                Arc::new([quota("7/min", strategy), quota("20/h", strategy)]);
            let identity = format!("c-{strategy}");
            let tasks: Vec<_> = (0..64)
                .map(|_| {
                    let (redis, quotas, identity) =
                        (redis.clone(), quotas.clone(), identity.clone());
                    tokio::spawn(async move {
                        let key = Key::new("rates", &identity, Scope::shared());
                        redis
                            .decide(&key, &quotas, 1, Op::Hit)
                            .await
                            .unwrap()
                            .binding()
                            .allowed
                    })
                })
                .collect();
            let mut admitted = 0;
            for task in tasks {
                admitted += usize::from(task.await.unwrap());
            }
            assert_eq!(admitted, 7, "{strategy}");
        }
    }

    #[tokio::test]
    async fn a_refused_hit_changes_no_counter_on_redis() {
        let Some(redis) = backend("refused").await else {
            return;
        };
        for strategy in STRATEGIES {
            let quotas = [quota("2/300ms", strategy), quota("5/h", strategy)];
            let identity = format!("r-{strategy}");
            let key = Key::new("rates", &identity, Scope::shared());
            let hit = || async {
                redis
                    .decide(&key, &quotas, 1, Op::Hit)
                    .await
                    .unwrap()
                    .binding()
            };
            assert!(hit().await.allowed && hit().await.allowed, "{strategy}");
            for _ in 0..10 {
                assert!(!hit().await.allowed, "{strategy}");
            }
            let mut allowed = 0;
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(700)).await;
                allowed += usize::from(hit().await.allowed);
            }
            assert_eq!(allowed, 3, "{strategy}");
            assert!(!hit().await.allowed, "{strategy}: the slow rate is spent");
            // One key per rate, all in one hash slot.
            let tag = format!("{}:{{rates:{identity}:http:*}}", redis.prefix());
            let mut conn = redis::Client::open(redis_url())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{tag}*"))
                .query_async(&mut conn)
                .await
                .unwrap();
            assert_eq!(keys.len(), 2, "{strategy}: {keys:?}");
        }
    }

    /// Reservations on Redis: a refund gives the place back.
    #[tokio::test]
    async fn reservations_refund_on_redis() {
        let Some(redis) = backend("reserve").await else {
            return;
        };
        for strategy in STRATEGIES {
            let throttle = HttpThrottle::builder()
                .uid(format!("reserve-{strategy}"))
                .rates(["2/min", "5/h"])
                .strategy(strategy)
                .backend(redis.clone())
                .build()
                .unwrap();
            let request = http::Request::builder()
                .extension(SocketAddr::from(([10, 0, 0, 3], 1)))
                .body(())
                .unwrap();
            let first = throttle.reserve(&request).await.unwrap();
            let _second = throttle.reserve(&request).await.unwrap();
            assert!(throttle.reserve(&request).await.is_err(), "{strategy}");
            first.refund().await.unwrap();
            assert!(throttle.hit(&request).await.is_ok(), "{strategy}");
            assert!(throttle.hit(&request).await.is_err(), "{strategy}");
        }
    }
}
