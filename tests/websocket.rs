//! WebSocket throttling: the message guard over a real axum server and a real
//! tokio-tungstenite client, the guard over an in-memory socket, and the
//! handshake throttled by a layer rule.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query};
use axum::routing::get;
use axum::Router;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message as TMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use traffik::backend::{BackendFuture, BoxFuture, InMemoryBackend, Op, ThrottleBackend};
use traffik::clock::ManualClock;
use traffik::key::Key;
use traffik::ws::GuardOptions;
use traffik::{
    Error, Exceeded, FailureMode, HttpThrottle, Identity, MiddlewareThrottle, Quota, Strategy,
    ThrottleLayer, Throttled, WebSocketThrottle,
};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

const TIMEOUT: Duration = Duration::from_secs(10);

fn notice(retry_after: u64) -> String {
    format!(r#"{{"type":"rate_limit","error":"Too many messages","retry_after":{retry_after}}}"#)
}

/// What the handler saw: every message it received, then `None` when its
/// stream ended.
type Seen = mpsc::UnboundedReceiver<Option<Message>>;

/// An echo server whose socket is guarded by `ws_t`, identified by client IP,
/// with the `room` query parameter as the context.
async fn echo_server(ws_t: WebSocketThrottle, layer: Option<ThrottleLayer>) -> (SocketAddr, Seen) {
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let handler = move |upgrade: WebSocketUpgrade,
                        ConnectInfo(addr): ConnectInfo<SocketAddr>,
                        Query(query): Query<HashMap<String, String>>| {
        let ws_t = ws_t.clone();
        let seen_tx = seen_tx.clone();
        async move {
            upgrade.on_upgrade(move |socket: WebSocket| async move {
                let mut options = GuardOptions::new().path("/ws");
                if let Some(room) = query.get("room") {
                    options = options.context(room.clone());
                }
                let mut socket = ws_t.guard_with(socket, addr.ip(), options);
                while let Some(Ok(message)) = socket.next().await {
                    let _ = seen_tx.send(Some(message.clone()));
                    if let Message::Text(text) = message {
                        let echo = format!("echo: {}", text.as_str());
                        if socket.send(Message::Text(echo.into())).await.is_err() {
                            break;
                        }
                    }
                }
                let _ = seen_tx.send(None);
            })
        }
    };
    let mut app = Router::new().route("/ws", get(handler));
    if let Some(layer) = layer {
        app = app.layer(layer);
    }
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
    (addr, seen)
}

async fn connect(addr: SocketAddr, query: &str) -> Client {
    let (client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws{query}"))
        .await
        .expect("websocket handshake");
    client
}

/// The next text, close or error the client receives (pings and pongs skipped).
async fn next_frame(client: &mut Client) -> TMessage {
    loop {
        let message = tokio::time::timeout(TIMEOUT, client.next())
            .await
            .expect("a message within the timeout")
            .expect("the connection is open")
            .expect("no websocket error");
        match message {
            TMessage::Ping(_) | TMessage::Pong(_) => continue,
            message => return message,
        }
    }
}

async fn next_text(client: &mut Client) -> String {
    match next_frame(client).await {
        TMessage::Text(text) => text.as_str().to_owned(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

async fn send(client: &mut Client, text: &str) {
    client.send(TMessage::text(text)).await.unwrap();
}

/// The data messages the handler has received so far.
fn received(seen: &mut Seen) -> Vec<String> {
    let mut texts = Vec::new();
    while let Ok(Some(message)) = seen.try_recv() {
        if let Message::Text(text) = message {
            texts.push(text.as_str().to_owned());
        }
    }
    texts
}

#[tokio::test]
async fn reject_drops_excess_messages_sends_notices_and_keeps_the_socket_open() {
    let clock = ManualClock::new();
    let memory = InMemoryBackend::builder().clock(clock.clone()).build();
    let ws_t = WebSocketThrottle::builder()
        .limit(3)
        .seconds(10)
        .backend(memory)
        .build()
        .unwrap();
    let (addr, mut seen) = echo_server(ws_t, None).await;
    let mut client = connect(addr, "").await;

    for i in 1..=5 {
        send(&mut client, &format!("m{i}")).await;
    }
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(next_text(&mut client).await);
    }
    // 3 per 10 s, token bucket: the next token comes in 10/3 s → 4 seconds.
    assert_eq!(
        answers,
        ["echo: m1", "echo: m2", "echo: m3", &notice(4), &notice(4)]
    );
    assert_eq!(received(&mut seen), ["m1", "m2", "m3"]);

    // After the window the same socket works again.
    clock.advance(Duration::from_secs(10));
    send(&mut client, "later").await;
    assert_eq!(next_text(&mut client).await, "echo: later");
    assert_eq!(received(&mut seen), ["later"]);
}

#[tokio::test]
async fn reject_with_a_short_period_lets_messages_through_after_the_window() {
    // A fixed window starting at the first message: the 5 messages only need
    // to arrive within 500 ms of each other.
    let ws_t = WebSocketThrottle::builder()
        .limit(3)
        .milliseconds(500)
        .strategy(Strategy::FixedWindow)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let (addr, mut seen) = echo_server(ws_t, None).await;
    let mut client = connect(addr, "").await;
    for i in 1..=5 {
        send(&mut client, &format!("m{i}")).await;
    }
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(next_text(&mut client).await);
    }
    assert_eq!(answers.iter().filter(|a| a.starts_with("echo:")).count(), 3);
    assert_eq!(answers.iter().filter(|a| **a == notice(1)).count(), 2);
    tokio::time::sleep(Duration::from_millis(550)).await;
    send(&mut client, "later").await;
    assert_eq!(next_text(&mut client).await, "echo: later");
    assert_eq!(received(&mut seen).len(), 4);
}

#[tokio::test]
async fn close_policy_sends_1008_with_the_reason_and_ends_the_stream() {
    let ws_t = WebSocketThrottle::builder()
        .limit(3)
        .seconds(10)
        .on_exceeded(Exceeded::Close {
            reason: "too many messages".into(),
        })
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let (addr, mut seen) = echo_server(ws_t, None).await;
    let mut client = connect(addr, "").await;
    for i in 1..=5 {
        // The server may close before the last sends; their errors don't matter.
        let _ = client.send(TMessage::text(format!("m{i}"))).await;
    }
    for i in 1..=3 {
        assert_eq!(next_text(&mut client).await, format!("echo: m{i}"));
    }
    match next_frame(&mut client).await {
        TMessage::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 1008);
            assert_eq!(frame.reason.as_str(), "too many messages");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    // The handler saw exactly 3 messages, then its stream ended.
    let mut texts = Vec::new();
    loop {
        match tokio::time::timeout(TIMEOUT, seen.recv()).await.unwrap() {
            Some(Some(Message::Text(text))) => texts.push(text.as_str().to_owned()),
            Some(Some(_)) => {}
            Some(None) | None => break,
        }
    }
    assert_eq!(texts, ["m1", "m2", "m3"]);
}

#[tokio::test]
async fn wait_policy_delivers_every_message_in_order() {
    let ws_t = WebSocketThrottle::builder()
        .limit(2)
        .milliseconds(200)
        // No upper bound: `Duration::MAX` means "as long as it takes".
        .on_exceeded(Exceeded::Wait { max: Duration::MAX })
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let (addr, mut seen) = echo_server(ws_t, None).await;
    let mut client = connect(addr, "").await;
    let start = Instant::now();
    for i in 1..=5 {
        send(&mut client, &format!("m{i}")).await;
    }
    for i in 1..=5 {
        assert_eq!(next_text(&mut client).await, format!("echo: m{i}"));
    }
    // Three messages waited for a token each (100 ms apart); only a lower bound.
    assert!(start.elapsed() >= Duration::from_millis(250));
    assert_eq!(received(&mut seen), ["m1", "m2", "m3", "m4", "m5"]);
}

#[tokio::test]
async fn connections_from_one_client_share_the_key_unless_a_context_separates_them() {
    let ws_t = WebSocketThrottle::builder()
        .limit(3)
        .seconds(10)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let (addr, _seen) = echo_server(ws_t, None).await;

    // Same client, same path, no context: one counter.
    let mut a = connect(addr, "").await;
    let mut b = connect(addr, "").await;
    send(&mut a, "a1").await;
    send(&mut a, "a2").await;
    assert_eq!(next_text(&mut a).await, "echo: a1");
    assert_eq!(next_text(&mut a).await, "echo: a2");
    send(&mut b, "b1").await;
    send(&mut b, "b2").await;
    assert_eq!(next_text(&mut b).await, "echo: b1");
    assert_eq!(next_text(&mut b).await, notice(4));

    // Different contexts (rooms): separate counters.
    let mut red = connect(addr, "?room=red").await;
    let mut blue = connect(addr, "?room=blue").await;
    for i in 1..=3 {
        send(&mut red, &format!("r{i}")).await;
        send(&mut blue, &format!("u{i}")).await;
    }
    for i in 1..=3 {
        assert_eq!(next_text(&mut red).await, format!("echo: r{i}"));
        assert_eq!(next_text(&mut blue).await, format!("echo: u{i}"));
    }
    send(&mut red, "r4").await;
    assert_eq!(next_text(&mut red).await, notice(4));
}

#[tokio::test]
async fn pings_are_not_hits() {
    let ws_t = WebSocketThrottle::builder()
        .limit(3)
        .seconds(10)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let (addr, _seen) = echo_server(ws_t, None).await;
    let mut client = connect(addr, "").await;
    for _ in 0..5 {
        client.send(TMessage::Ping(vec![1].into())).await.unwrap();
    }
    for i in 1..=3 {
        send(&mut client, &format!("m{i}")).await;
    }
    for i in 1..=3 {
        assert_eq!(next_text(&mut client).await, format!("echo: m{i}"));
    }
}

#[tokio::test]
async fn handshake_is_throttled_by_a_layer_rule() {
    let memory = InMemoryBackend::new();
    let handshakes = HttpThrottle::builder()
        .limit(3)
        .seconds(10)
        .build()
        .unwrap();
    let layer =
        ThrottleLayer::new(memory.clone()).rule(MiddlewareThrottle::new(handshakes).path("/ws$"));
    let ws_t = WebSocketThrottle::builder()
        .limit(100)
        .seconds(10)
        .backend(memory)
        .build()
        .unwrap();
    let (addr, _seen) = echo_server(ws_t, Some(layer)).await;

    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(connect(addr, "").await);
    }
    match tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            assert!(response.headers().contains_key("retry-after"));
        }
        Err(other) => panic!("expected an HTTP 429, got {other:?}"),
        Ok(_) => panic!("the 4th handshake should be refused"),
    }
    // The 3 open sockets still work.
    for client in &mut open {
        send(client, "hi").await;
        assert_eq!(next_text(client).await, "echo: hi");
    }
}

// ---------------------------------------------------------------------------
// The guard over an in-memory socket.

/// A socket whose incoming messages come from a channel and whose outgoing
/// messages are recorded.
struct MockSocket {
    incoming: mpsc::UnboundedReceiver<Message>,
    sent: Arc<Mutex<Vec<Message>>>,
    reads: Arc<AtomicUsize>,
}

struct MockPeer {
    to_socket: mpsc::UnboundedSender<Message>,
    sent: Arc<Mutex<Vec<Message>>>,
    /// How many messages the socket has handed out so far.
    reads: Arc<AtomicUsize>,
}

impl MockPeer {
    fn send_text(&self, text: &str) {
        self.to_socket.send(Message::Text(text.into())).unwrap();
    }

    fn sent_texts(&self) -> Vec<String> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .filter_map(|m| match m {
                Message::Text(t) => Some(t.as_str().to_owned()),
                _ => None,
            })
            .collect()
    }
}

fn mock_socket() -> (MockSocket, MockPeer) {
    let (to_socket, incoming) = mpsc::unbounded_channel();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let reads = Arc::new(AtomicUsize::new(0));
    (
        MockSocket {
            incoming,
            sent: Arc::clone(&sent),
            reads: Arc::clone(&reads),
        },
        MockPeer {
            to_socket,
            sent,
            reads,
        },
    )
}

impl Stream for MockSocket {
    type Item = Result<Message, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.incoming.poll_recv(cx);
        if let Poll::Ready(Some(_)) = next {
            self.reads.fetch_add(1, Ordering::SeqCst);
        }
        next.map(|m| m.map(Ok))
    }
}

impl Sink<Message> for MockSocket {
    type Error = Infallible;

    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Infallible> {
        self.sent.lock().unwrap().push(item);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
}

/// Sends `texts`, closes the peer, and collects what the guard yields.
async fn run<S>(mut socket: S, peer: &MockPeer, texts: &[&str]) -> Vec<String>
where
    S: Stream<Item = Result<Message, Infallible>> + Unpin,
{
    for text in texts {
        peer.send_text(text);
    }
    let mut delivered = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_millis(200), socket.next()).await;
        match next {
            Ok(Some(Ok(Message::Text(text)))) => delivered.push(text.as_str().to_owned()),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(never))) => match never {},
            Ok(None) | Err(_) => return delivered,
        }
    }
}

#[tokio::test]
async fn guard_counts_data_messages_and_answers_excess_with_notices() {
    let memory = InMemoryBackend::new();
    let ws_t = WebSocketThrottle::builder()
        .uid("mock-basic")
        .limit(3)
        .seconds(10)
        .backend(memory.clone())
        .build()
        .unwrap();
    let (socket, peer) = mock_socket();
    let guarded = ws_t.guard_with(
        socket,
        "alice",
        GuardOptions::new().path("/chat").context("room-1"),
    );
    assert_eq!(
        guarded.key(),
        Some("traffik:mock-basic:alice:ws:/chat:room-1")
    );
    peer.to_socket.send(Message::Ping(vec![1].into())).unwrap();
    peer.to_socket.send(Message::Pong(vec![1].into())).unwrap();
    let delivered = run(guarded, &peer, &["1", "2", "3", "4", "5"]).await;
    assert_eq!(delivered, ["1", "2", "3"]);
    assert_eq!(peer.sent_texts(), [notice(4), notice(4)]);
}

/// The guard spawns no task, and dropping it drops the socket (nothing is
/// left behind), even with a dropped message and its notice in flight.
#[tokio::test]
async fn the_guard_spawns_nothing_and_dropping_it_releases_the_socket() {
    use futures_util::FutureExt as _;
    let ws_t = WebSocketThrottle::builder()
        .limit(1)
        .seconds(10)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    // Polled with `now_or_never` only: this test never yields to the
    // scheduler, so a task the guard spawned would still be alive below.
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();
    let (socket, peer) = mock_socket();
    let mut guarded = ws_t.guard(socket, "dropper");
    peer.send_text("1");
    peer.send_text("2");
    let first = guarded
        .next()
        .now_or_never()
        .expect("ready")
        .unwrap()
        .unwrap();
    assert_eq!(first, Message::Text("1".into()));
    // The second is dropped and its notice sent; then the socket is empty.
    assert!(guarded.next().now_or_never().is_none());
    assert_eq!(peer.sent_texts(), [notice(10)]);
    assert_eq!(
        metrics.num_alive_tasks(),
        tasks_before,
        "a task was spawned"
    );
    // The socket (which holds the peer's `sent` log) is only inside the guard.
    assert_eq!(Arc::strong_count(&peer.sent), 2);
    drop(guarded);
    assert_eq!(
        Arc::strong_count(&peer.sent),
        1,
        "the socket outlived its guard"
    );
    assert_eq!(metrics.num_alive_tasks(), tasks_before);
}

#[tokio::test]
async fn close_frames_are_not_hits_and_pass_through() {
    let ws_t = WebSocketThrottle::builder()
        .limit(1)
        .seconds(10)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let (socket, peer) = mock_socket();
    let mut guarded = ws_t.guard(socket, "closer");
    peer.to_socket.send(Message::Close(None)).unwrap();
    peer.send_text("1");
    let frame = axum::extract::ws::CloseFrame {
        code: 1000,
        reason: "bye".into(),
    };
    peer.to_socket.send(Message::Close(Some(frame))).unwrap();
    peer.send_text("2");
    let mut seen = Vec::new();
    for _ in 0..3 {
        match guarded.next().await {
            Some(Ok(Message::Close(frame))) => seen.push(format!("close {frame:?}")),
            Some(Ok(Message::Text(text))) => seen.push(text.as_str().to_owned()),
            other => panic!("unexpected {other:?}"),
        }
    }
    // Both close frames reach the handler and the first text is allowed: the
    // closes were not counted. The second text is over the limit.
    assert_eq!(seen[0], "close None");
    assert_eq!(seen[1], "1");
    assert!(seen[2].starts_with("close Some"), "{seen:?}");
    // The peer goes away: "2" was dropped with a notice, not delivered.
    let sent = Arc::clone(&peer.sent);
    drop(peer);
    assert!(guarded.next().await.is_none());
    let sent = sent.lock().unwrap();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(matches!(&sent[0], Message::Text(t) if t.as_str() == notice(10)));
}

/// While a message waits, the socket is still read (a client that leaves is
/// noticed, control frames pass) but at most one more data message is read
/// ahead: the rest stays in the socket (backpressure).
#[tokio::test(start_paused = true)]
async fn wait_reads_at_most_one_message_ahead_while_a_message_waits() {
    let ws_t = WebSocketThrottle::builder()
        .limit(1)
        .seconds(2)
        .on_exceeded(Exceeded::Wait {
            max: Duration::from_secs(10),
        })
        .backend(
            InMemoryBackend::builder()
                .clock(common::TokioClock::new())
                .build(),
        )
        .build()
        .unwrap();
    let (socket, peer) = mock_socket();
    let mut guarded = ws_t.guard(socket, "waiter");
    for text in ["1", "2", "3", "4"] {
        peer.send_text(text);
    }
    let text = |m: Option<Result<Message, Infallible>>| match m {
        Some(Ok(Message::Text(t))) => t.as_str().to_owned(),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(text(guarded.next().await), "1");
    assert_eq!(peer.reads.load(Ordering::SeqCst), 1);
    // "2" is read and must wait 2 s (Tokio's paused clock does not move
    // here); "3" is read behind it, "4" stays in the socket.
    assert!(futures_util::FutureExt::now_or_never(guarded.next()).is_none());
    assert_eq!(peer.reads.load(Ordering::SeqCst), 3);
    let start = tokio::time::Instant::now();
    assert_eq!(text(guarded.next().await), "2");
    assert!(start.elapsed() >= Duration::from_millis(1_900));
    assert_eq!(peer.reads.load(Ordering::SeqCst), 3);
    // In order: "3" waits its turn, with "4" read behind it.
    assert_eq!(text(guarded.next().await), "3");
    assert!(start.elapsed() >= Duration::from_millis(3_900));
    assert_eq!(peer.reads.load(Ordering::SeqCst), 4);
    assert_eq!(text(guarded.next().await), "4");
    assert!(peer.sent_texts().is_empty());
}

/// A client that leaves while its message waits is noticed at once: the
/// message is dropped, the stream ends, and the `max_waiting` place is given
/// back; a ping or a close frame from a client whose message waits passes at
/// once.
#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_while_its_message_waits_frees_its_place() {
    let ws_t = WebSocketThrottle::builder()
        .limit(1)
        .seconds(60)
        .on_exceeded(Exceeded::Wait {
            max: Duration::from_secs(600),
        })
        .max_waiting(1)
        .backend(
            InMemoryBackend::builder()
                .clock(common::TokioClock::new())
                .build(),
        )
        .build()
        .unwrap();

    // A client spends its message, then one waits; a ping passes meanwhile.
    let (socket, peer) = mock_socket();
    let mut first = ws_t.guard(socket, "leaver");
    peer.send_text("1");
    peer.send_text("2");
    assert!(matches!(first.next().await, Some(Ok(Message::Text(_)))));
    assert!(
        futures_util::FutureExt::now_or_never(first.next()).is_none(),
        "\"2\" waits"
    );
    peer.to_socket
        .send(Message::Ping(Default::default()))
        .unwrap();
    assert!(matches!(
        futures_util::FutureExt::now_or_never(first.next()),
        Some(Some(Ok(Message::Ping(_))))
    ));
    // It leaves: the stream ends at once, without "2".
    drop(peer);
    assert!(matches!(
        futures_util::FutureExt::now_or_never(first.next()),
        Some(None)
    ));

    // Its place is free: another client's message waits instead of being
    // refused with a notice.
    let (socket, other) = mock_socket();
    let mut second = ws_t.guard(socket, "stayer");
    other.send_text("a");
    other.send_text("b");
    assert!(matches!(second.next().await, Some(Ok(Message::Text(_)))));
    assert!(
        futures_util::FutureExt::now_or_never(second.next()).is_none(),
        "\"b\" waits"
    );
    assert!(other.sent_texts().is_empty(), "not refused");

    // A close frame while "b" waits: it reaches the handler at once and "b"
    // is dropped.
    other.to_socket.send(Message::Close(None)).unwrap();
    assert!(matches!(
        futures_util::FutureExt::now_or_never(second.next()),
        Some(Some(Ok(Message::Close(None))))
    ));
    drop(other);
    assert!(matches!(
        futures_util::FutureExt::now_or_never(second.next()),
        Some(None)
    ));
}

/// `max_waiting` bounds the messages held at once over all sockets: past
/// it, a message that would wait is dropped with a notice, as under Reject.
#[tokio::test(start_paused = true)]
async fn max_waiting_drops_messages_past_the_bound_with_a_notice() {
    let ws_t = WebSocketThrottle::builder()
        .limit(1)
        .seconds(2)
        .on_exceeded(Exceeded::Wait {
            max: Duration::from_secs(10),
        })
        .max_waiting(1)
        .backend(
            InMemoryBackend::builder()
                .clock(common::TokioClock::new())
                .build(),
        )
        .build()
        .unwrap();
    let (first_socket, first_peer) = mock_socket();
    let (second_socket, second_peer) = mock_socket();
    // One client, two sockets: one counter.
    let mut first = ws_t.guard(first_socket, "twice");
    let mut second = ws_t.guard(second_socket, "twice");
    first_peer.send_text("a1");
    assert_eq!(
        first.next().await.unwrap().unwrap(),
        Message::Text("a1".into())
    );
    // "a2" waits (the one place)...
    first_peer.send_text("a2");
    assert!(futures_util::FutureExt::now_or_never(first.next()).is_none());
    // ...so "b1", which would wait too, is dropped with a notice.
    second_peer.send_text("b1");
    assert!(futures_util::FutureExt::now_or_never(second.next()).is_none());
    assert_eq!(second_peer.sent_texts(), [notice(2)]);
    assert!(first_peer.sent_texts().is_empty());
    // "a2" is delivered in its turn; the place is free again, so "b2" waits
    // and is delivered in its own turn.
    let text = |m: Option<Result<Message, Infallible>>| match m {
        Some(Ok(Message::Text(t))) => t.as_str().to_owned(),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(text(first.next().await), "a2");
    second_peer.send_text("b2");
    let start = tokio::time::Instant::now();
    assert_eq!(text(second.next().await), "b2");
    assert!(start.elapsed() >= Duration::from_millis(1_900));
    assert_eq!(second_peer.sent_texts(), [notice(2)]);
}

#[tokio::test]
async fn default_key_uses_root_path_and_the_builder_context() {
    let ws_t = WebSocketThrottle::builder()
        .uid("mock-keys")
        .rate("3/10s")
        .context("lobby")
        .backend(InMemoryBackend::builder().prefix("app").build())
        .build()
        .unwrap();
    let (socket, _peer) = mock_socket();
    assert_eq!(
        ws_t.guard(socket, "bob").key(),
        Some("app:mock-keys:bob:ws:/:lobby")
    );
    let (socket, _peer) = mock_socket();
    let plain = WebSocketThrottle::builder()
        .uid("mock-keys-plain")
        .rate("3/10s")
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    assert_eq!(
        plain.guard(socket, "bob").key(),
        Some("traffik:mock-keys-plain:bob:ws:/:")
    );
}

/// A `:` in the uid, the path or the context cannot make two keys equal:
/// they are escaped (the identity is not: IPv6 addresses stay readable).
#[tokio::test]
async fn colons_in_key_parts_are_escaped() {
    let ws_t = WebSocketThrottle::builder()
        .uid("mock:esc")
        .rate("3/10s")
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let key = |identity: Identity, path: &str, context: &str| {
        let (socket, _peer) = mock_socket();
        let options = GuardOptions::new().path(path).context(context);
        ws_t.guard_with(socket, identity, options)
            .key()
            .map(str::to_owned)
    };
    let ip = Identity::client_ip("2001:db8::1".parse().unwrap());
    assert_eq!(
        key(ip, "/a:b", "c").as_deref(),
        Some("traffik:mock%3Aesc:2001:db8::/64:ws:/a%3Ab:c")
    );
    // Unescaped, both would be `...:u:ws:/a:b:c`.
    let first = key(Identity::key("u"), "/a:b", "c");
    let second = key(Identity::key("u"), "/a", "b:c");
    assert_eq!(first.as_deref(), Some("traffik:mock%3Aesc:u:ws:/a%3Ab:c"));
    assert_eq!(second.as_deref(), Some("traffik:mock%3Aesc:u:ws:/a:b%3Ac"));
    assert_eq!(
        key(Identity::key("u"), "/100%", "").as_deref(),
        Some("traffik:mock%3Aesc:u:ws:/100%25:")
    );
}

/// The README's recipe behind a reverse proxy: the socket is keyed on the
/// client the proxy forwarded for, not on the proxy.
#[tokio::test]
async fn behind_a_proxy_sockets_are_keyed_on_the_forwarded_client() {
    let ws_t = WebSocketThrottle::builder()
        .uid("mock-proxied")
        .rate("3/10s")
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let proxies = traffik::TrustedProxies::new(["10.0.0.0/8"]).unwrap();
    let proxy: std::net::IpAddr = "10.0.0.2".parse().unwrap();
    let key = |forwarded_for: &str| {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-forwarded-for", forwarded_for.parse().unwrap());
        let identity = Identity::client_ip(proxies.client_ip(proxy, &headers));
        let (socket, _peer) = mock_socket();
        ws_t.guard(socket, identity).key().map(str::to_owned)
    };
    assert_eq!(
        key("203.0.113.7").as_deref(),
        Some("traffik:mock-proxied:203.0.113.7:ws:/:")
    );
    // A client's own forged entry, left of what the proxy saw, is ignored;
    // IPv6 clients are grouped by their /64 as over HTTP.
    assert_eq!(
        key("1.1.1.1, 2001:db8:1:2::99").as_deref(),
        Some("traffik:mock-proxied:2001:db8:1:2::/64:ws:/:")
    );
}

/// `.notice(|_| String::new())`: excess messages are dropped silently, with
/// no frame back for each.
#[tokio::test]
async fn an_empty_notice_drops_messages_silently() {
    let ws_t = WebSocketThrottle::builder()
        .uid("mock-silent-notice")
        .rate("1/10s")
        .notice(|_: &traffik::Throttled| String::new())
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let (socket, peer) = mock_socket();
    let mut guarded = ws_t.guard(socket, "quiet");
    for text in ["1", "2", "3"] {
        peer.send_text(text);
    }
    assert!(matches!(guarded.next().await, Some(Ok(Message::Text(t))) if t.as_str() == "1"));
    // "2" and "3" are read and dropped; nothing is delivered or sent.
    assert!(futures_util::FutureExt::now_or_never(guarded.next()).is_none());
    assert_eq!(peer.reads.load(Ordering::SeqCst), 3);
    assert!(peer.sent.lock().unwrap().is_empty());
}

#[tokio::test]
async fn unlimited_identity_touches_no_storage() {
    let memory = InMemoryBackend::new();
    let ws_t = WebSocketThrottle::builder()
        .limit(1)
        .seconds(10)
        .backend(memory.clone())
        .build()
        .unwrap();
    let (socket, peer) = mock_socket();
    let guarded = ws_t.guard(socket, Identity::Unlimited);
    assert_eq!(guarded.key(), None);
    let delivered = run(guarded, &peer, &["1", "2", "3"]).await;
    assert_eq!(delivered.len(), 3);
    assert!(memory.is_empty());
    assert!(peer.sent_texts().is_empty());
}

#[tokio::test]
async fn custom_notice() {
    let ws_t = WebSocketThrottle::builder()
        .limit(1)
        .seconds(10)
        .notice(|t: &Throttled| format!("slow down ({}s)", t.retry_after_secs()))
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let (socket, peer) = mock_socket();
    let delivered = run(ws_t.guard(socket, "carol"), &peer, &["1", "2"]).await;
    assert_eq!(delivered, ["1"]);
    assert_eq!(peer.sent_texts(), ["slow down (10s)"]);
}

#[tokio::test]
async fn wait_longer_than_max_is_rejected() {
    let ws_t = WebSocketThrottle::builder()
        .limit(1)
        .seconds(10)
        .on_exceeded(Exceeded::Wait {
            max: Duration::from_millis(50),
        })
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let (socket, peer) = mock_socket();
    let delivered = run(ws_t.guard(socket, "dave"), &peer, &["1", "2"]).await;
    assert_eq!(delivered, ["1"]);
    assert_eq!(peer.sent_texts(), [notice(10)]);
}

#[tokio::test]
async fn close_policy_over_a_mock_socket() {
    let ws_t = WebSocketThrottle::builder()
        .limit(1)
        .seconds(10)
        .on_exceeded(Exceeded::Close {
            reason: "x".repeat(200),
        })
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    let (socket, peer) = mock_socket();
    let mut guarded = ws_t.guard(socket, "erin");
    peer.send_text("1");
    peer.send_text("2");
    peer.send_text("3");
    assert!(matches!(guarded.next().await, Some(Ok(Message::Text(_)))));
    assert!(guarded.next().await.is_none());
    assert!(guarded.next().await.is_none());
    let sent = peer.sent.lock().unwrap();
    match sent.as_slice() {
        [Message::Close(Some(frame))] => {
            assert_eq!(frame.code, 1008);
            // Close reasons are cut to the 123 bytes a close frame allows.
            assert_eq!(frame.reason.as_str(), "x".repeat(123));
        }
        other => panic!("expected one close frame, got {other:?}"),
    }
}

// `.dynamic_rate(..)`, `.headers(..)` and `.on_throttled(..)` are
// HTTP-only: the WebSocket builder does not have them (compile errors,
// checked in `tests/compile_errors.rs`).

/// A backend that always fails, answering later (like a network backend).
struct DeadBackend;

impl ThrottleBackend for DeadBackend {
    fn prefix(&self) -> &str {
        "dead"
    }
    fn decide(&self, _: &Key<'_>, _: &[Quota], _: u64, _: Op) -> BackendFuture {
        BackendFuture::new(async { Err(Error::backend("connection refused")) })
    }
    fn reset(&self) -> BoxFuture<Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn backend_failure_follows_the_failure_mode() {
    let open = WebSocketThrottle::builder()
        .rate("1/10s")
        .backend(DeadBackend)
        .build()
        .unwrap();
    let (socket, peer) = mock_socket();
    assert_eq!(
        run(open.guard(socket, "f"), &peer, &["1", "2"]).await.len(),
        2
    );
    assert!(peer.sent_texts().is_empty());

    let closed = WebSocketThrottle::builder()
        .rate("1/10s")
        .failure_mode(FailureMode::Closed)
        .backend(DeadBackend)
        .build()
        .unwrap();
    let (socket, peer) = mock_socket();
    assert!(run(closed.guard(socket, "f"), &peer, &["1", "2"])
        .await
        .is_empty());
    assert_eq!(peer.sent_texts().len(), 2);
    assert!(peer.sent_texts()[0].contains(r#""type":"rate_limit""#));
}

/// No backend is a configuration error, as over HTTP (a 500 whatever the
/// failure mode): messages are dropped with a notice even under Open, which
/// would otherwise silently turn the throttle off.
#[tokio::test]
async fn no_backend_closes_the_socket_as_a_server_error_and_scopes_are_used() {
    // A server misconfiguration, not a limit for the client to retry: the
    // socket closes at its first message with 1011 (internal error),
    // whatever the failure mode.
    let closes_with_1011 = |peer: &MockPeer| {
        let sent = peer.sent.lock().unwrap();
        matches!(sent.as_slice(), [Message::Close(Some(frame))] if frame.code == 1011)
    };
    let open = WebSocketThrottle::builder().rate("1/10s").build().unwrap();
    let (socket, peer) = mock_socket();
    assert!(run(open.guard(socket, "g"), &peer, &["1", "2"])
        .await
        .is_empty());
    assert!(closes_with_1011(&peer), "{:?}", peer.sent.lock().unwrap());

    let closed = WebSocketThrottle::builder()
        .rate("1/10s")
        .failure_mode(FailureMode::Closed)
        .build()
        .unwrap();
    let (socket, peer) = mock_socket();
    assert!(run(closed.guard(socket, "g"), &peer, &["1"])
        .await
        .is_empty());
    assert!(closes_with_1011(&peer));

    // Shadow mode never drops a message, whatever the failure mode.
    let shadow = WebSocketThrottle::builder()
        .rate("1/10s")
        .failure_mode(FailureMode::Closed)
        .shadow(true)
        .build()
        .unwrap();
    let (socket, peer) = mock_socket();
    assert_eq!(
        run(shadow.guard(socket, "g"), &peer, &["1", "2"]).await,
        ["1", "2"]
    );
    assert!(peer.sent_texts().is_empty());

    // Inside a scope the scoped backend counts.
    let scoped = InMemoryBackend::builder().prefix("scoped").build();
    let (socket, peer) = mock_socket();
    let guarded =
        traffik::backend::scope(scoped.clone(), async { closed.guard(socket, "g") }).await;
    assert_eq!(guarded.key().map(|k| k.starts_with("scoped:")), Some(true));
    assert_eq!(run(guarded, &peer, &["1", "2"]).await, ["1"]);
    assert_eq!(peer.sent_texts(), [notice(10)]);
}

/// A backend answering later, counting in an in-memory backend.
struct SlowBackend {
    memory: InMemoryBackend,
    calls: Arc<AtomicUsize>,
}

impl ThrottleBackend for SlowBackend {
    fn prefix(&self) -> &str {
        "slow"
    }
    fn decide(&self, key: &Key<'_>, quotas: &[Quota], cost: u64, op: Op) -> BackendFuture {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let answer = self.memory.decide(key, quotas, cost, op);
        BackendFuture::new(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            answer
        })
    }
    fn reset(&self) -> BoxFuture<Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn pending_backend_decisions_are_polled_inside_the_guard() {
    let calls = Arc::new(AtomicUsize::new(0));
    let ws_t = WebSocketThrottle::builder()
        .limit(3)
        .seconds(10)
        .backend(SlowBackend {
            memory: InMemoryBackend::new(),
            calls: Arc::clone(&calls),
        })
        .build()
        .unwrap();
    let (socket, peer) = mock_socket();
    peer.to_socket.send(Message::Ping(vec![].into())).unwrap();
    let delivered = run(ws_t.guard(socket, "h"), &peer, &["1", "2", "3", "4", "5"]).await;
    assert_eq!(delivered, ["1", "2", "3"]);
    assert_eq!(peer.sent_texts(), [notice(4), notice(4)]);
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn a_client_ip_identity_groups_ipv6_clients_by_their_64() {
    let ws_t = WebSocketThrottle::builder()
        .limit(2)
        .seconds(10)
        .backend(InMemoryBackend::new())
        .build()
        .unwrap();
    // A fresh socket guarded under `identity`: what it delivered of `texts`,
    // and the notices it sent.
    let socket_of = async |identity: Identity, texts: &[&str]| {
        let (socket, peer) = mock_socket();
        let delivered = run(ws_t.guard(socket, identity), &peer, texts).await;
        (delivered, peer.sent_texts())
    };
    let client = |text: &str| Identity::client_ip(text.parse().unwrap());
    // Two addresses of one /64 share a counter...
    let (first, _) = socket_of(client("2001:db8:1:2::a"), &["1"]).await;
    assert_eq!(first, ["1"]);
    let (second, notices) = socket_of(client("2001:db8:1:2:ffff::b"), &["2", "3"]).await;
    assert_eq!(second, ["2"]);
    assert_eq!(notices, [notice(5)]);
    // ...another /64 has its own.
    let (other, _) = socket_of(client("2001:db8:1:3::a"), &["4", "5"]).await;
    assert_eq!(other, ["4", "5"]);
    // A plain `IpAddr` identity is the exact address: its own counter.
    let exact_ip: std::net::IpAddr = "2001:db8:1:2::c".parse().unwrap();
    let (exact, _) = socket_of(exact_ip.into(), &["e1"]).await;
    assert_eq!(exact, ["e1"]);
    // IPv4 and its IPv4-mapped form are one client.
    let (v4, _) = socket_of(client("192.0.2.1"), &["6", "7"]).await;
    assert_eq!(v4, ["6", "7"]);
    let (mapped, _) = socket_of(client("::ffff:192.0.2.1"), &["8"]).await;
    assert!(mapped.is_empty());
}

// ---------------------------------------------------------------------------
// tokio-tungstenite's WebSocketStream guarded directly: 0.29 (feature
// `tungstenite`) and 0.28 (feature `tungstenite-0-28`), each against a 0.29
// client.

macro_rules! guards_a_tokio_tungstenite_server_socket {
    ($name:ident, $feature:literal, $server:ident) => {
        #[cfg(feature = $feature)]
        #[tokio::test]
        async fn $name() {
            let ws_t = WebSocketThrottle::builder()
                .limit(3)
                .seconds(10)
                .backend(InMemoryBackend::new())
                .build()
                .unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (count_tx, mut count_rx) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                let (tcp, peer) = listener.accept().await.unwrap();
                let socket = $server::accept_async(tcp).await.unwrap();
                let mut socket = ws_t.guard(socket, peer.ip());
                while let Some(Ok(message)) = socket.next().await {
                    if message.is_text() {
                        let _ = count_tx.send(message.clone());
                        socket.send(message).await.unwrap();
                    }
                }
            });
            let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
                .await
                .unwrap();
            for i in 1..=5 {
                send(&mut client, &format!("m{i}")).await;
            }
            let mut answers = Vec::new();
            for _ in 0..5 {
                answers.push(next_text(&mut client).await);
            }
            assert_eq!(answers, ["m1", "m2", "m3", &notice(4), &notice(4)]);
            let mut delivered = 0;
            while count_rx.try_recv().is_ok() {
                delivered += 1;
            }
            assert_eq!(delivered, 3);
        }
    };
}

guards_a_tokio_tungstenite_server_socket!(
    guards_a_tokio_tungstenite_server_socket,
    "tungstenite",
    tokio_tungstenite
);
guards_a_tokio_tungstenite_server_socket!(
    guards_a_tokio_tungstenite_0_28_server_socket,
    "tungstenite-0-28",
    tokio_tungstenite_028
);

// ---------------------------------------------------------------------------
// The same counts with the Redis backend (feature `redis`).

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_backend_gives_the_same_counts() {
    use traffik::backend::RedisBackend;

    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("traffik-ws-test-{}", std::process::id());
    let redis = match RedisBackend::builder(url.clone())
        .prefix(prefix)
        .build()
        .await
    {
        Ok(redis) => redis,
        Err(error) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("Redis at {url} is required under CI=true: {error}");
            }
            eprintln!("\n*** SKIPPED redis_backend_gives_the_same_counts: no Redis at {url} ({error}) ***\n");
            return;
        }
    };
    // Redis is persistent: its throttles are named (a generated uid is refused).
    let ws_t = WebSocketThrottle::builder()
        .uid("ws-redis")
        .limit(3)
        .seconds(10)
        .backend(redis.clone())
        .build()
        .unwrap();
    let (addr, mut seen) = echo_server(ws_t, None).await;
    let mut client = connect(addr, "").await;
    for i in 1..=5 {
        send(&mut client, &format!("m{i}")).await;
    }
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(next_text(&mut client).await);
    }
    assert_eq!(
        answers,
        ["echo: m1", "echo: m2", "echo: m3", &notice(4), &notice(4)]
    );
    assert_eq!(received(&mut seen), ["m1", "m2", "m3"]);
    redis.reset().await.unwrap();
}
