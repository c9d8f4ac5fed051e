//! The guarded socket: a stream of the messages within the limit and a sink
//! to the same socket, deciding each data message as it is read.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_util::stream::FusedStream;
use futures_util::{Sink, Stream};
use pin_project_lite::pin_project;

use super::{WsInner, WsMessage, INTERNAL_ERROR, MAX_CLOSE_REASON, POLICY_VIOLATION};
use crate::backend::{BoxFuture, DynBackend};
use crate::key::OwnedKey;
use crate::pipeline::{Admitted, Answer, Ask};
use crate::{Error, Exceeded, Quota};

/// What a guarded socket counts against.
pub(super) enum Target {
    /// Nothing: unlimited identity or rate, or cost 0.
    Exempt { throttle: Arc<WsInner> },
    /// No backend could be resolved (a configuration error): every message
    /// is dropped with a notice, except in shadow mode.
    Unavailable { throttle: Arc<WsInner> },
    Counted {
        throttle: Arc<WsInner>,
        backend: DynBackend,
        key: OwnedKey,
        /// The key's text, for [`GuardedSocket::key`].
        text: String,
        quotas: Arc<[Quota]>,
    },
}

/// The guard's progress through one message.
enum State<M> {
    /// Reading the next message from the socket.
    Reading,
    /// A data message waits for its decision (a network backend or
    /// [`Exceeded::Wait`]). Meanwhile the socket is still read, so that a
    /// client that leaves is noticed and control frames pass (pings get
    /// their pongs), but at most one more data message, kept in `ahead`.
    Deciding {
        check: BoxFuture<Result<Admitted, Error>>,
        message: M,
    },
    /// Sending a notice or close frame to the client.
    Sending { message: Option<M>, then: After },
    /// Flushing it.
    Flushing { then: After },
    /// The stream has ended.
    Done,
}

/// What comes after a notice or close frame is flushed (or fails).
#[derive(Clone, Copy)]
enum After {
    Read,
    End,
}

impl After {
    fn state<M>(self) -> State<M> {
        match self {
            After::Read => State::Reading,
            After::End => State::Done,
        }
    }
}

pin_project! {
    /// A throttled WebSocket: the stream of the messages within the limit and
    /// a sink to the same socket. Made by [`WebSocketThrottle::guard`].
    ///
    /// Notices and close frames are sent from within `poll_next`, through the
    /// socket's own sink; an error while sending them is yielded by the
    /// stream. Dropping the guard drops the socket; no task is left behind.
    pub struct GuardedSocket<S, M> {
        #[pin]
        socket: S,
        target: Target,
        state: State<M>,
        // A data message read while another waited for its decision, to
        // decide next.
        ahead: Option<M>,
    }
}

impl<S, M> fmt::Debug for GuardedSocket<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = match &self.target {
            Target::Counted { text, .. } => Some(text.as_str()),
            _ => None,
        };
        f.debug_struct("GuardedSocket")
            .field("key", &key)
            .finish_non_exhaustive()
    }
}

impl<S, M> GuardedSocket<S, M> {
    pub(super) fn new(socket: S, target: Target) -> Self {
        GuardedSocket {
            socket,
            target,
            state: State::Reading,
            ahead: None,
        }
    }

    /// The socket.
    pub fn get_ref(&self) -> &S {
        &self.socket
    }

    /// The socket, mutably (reading from it directly bypasses the throttle).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.socket
    }

    /// The socket back (a message waiting for its decision, and one read
    /// behind it, are lost).
    pub fn into_inner(self) -> S {
        self.socket
    }

    /// The backend key this socket counts under; `None` when exempt (or
    /// without a backend).
    pub fn key(&self) -> Option<&str> {
        match &self.target {
            Target::Counted { text, .. } => Some(text),
            _ => None,
        }
    }
}

/// What to do with a data message once decided.
enum Outcome<M> {
    Deliver(M),
    Send(M, After),
    /// Dropped without a notice; read on.
    Drop,
}

fn settle<M: WsMessage>(
    throttle: &WsInner,
    result: Result<Admitted, Error>,
    message: M,
) -> Outcome<M> {
    match result {
        Ok(_) => Outcome::Deliver(message),
        Err(Error::Throttled(throttled)) => match &throttle.core.exceeded {
            Exceeded::Close { reason } => Outcome::Send(
                M::close(POLICY_VIOLATION, truncate(reason, MAX_CLOSE_REASON)),
                After::End,
            ),
            Exceeded::Reject | Exceeded::Wait { .. } => {
                let notice = match &throttle.notice {
                    Some(notice) => notice(&throttled),
                    None => format!(
                        r#"{{"type":"rate_limit","error":"Too many messages","retry_after":{}}}"#,
                        throttled.retry_after_secs()
                    ),
                };
                if notice.is_empty() {
                    return Outcome::Drop;
                }
                Outcome::Send(M::text(notice), After::Read)
            }
        },
        // A configuration error (a quota the backend cannot hold) is the
        // server's to fix, not a limit for the client to retry: the socket
        // closes with 1011 (internal error). Failing open would turn the
        // throttle off. Never in shadow mode.
        Err(Error::Configuration(_)) => misconfigured(),
        // A backend error reaches here in FailureMode::Closed.
        Err(_) => Outcome::Send(M::text(unavailable_notice()), After::Read),
    }
}

fn misconfigured<M: WsMessage>() -> Outcome<M> {
    Outcome::Send(
        M::close(INTERNAL_ERROR, "rate limiter misconfigured on the server"),
        After::End,
    )
}

fn unavailable_notice() -> String {
    r#"{"type":"rate_limit","error":"Rate limiter unavailable","retry_after":1}"#.to_owned()
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl<S, M, E> Stream for GuardedSocket<S, M>
where
    S: Stream<Item = Result<M, E>> + Sink<M>,
    <S as Sink<M>>::Error: Into<E>,
    M: WsMessage,
{
    type Item = Result<M, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            let outcome = match this.state {
                State::Done => return Poll::Ready(None),
                State::Reading => {
                    let message = match this.ahead.take() {
                        Some(message) => message,
                        None => match ready!(this.socket.as_mut().poll_next(cx)) {
                            None => {
                                *this.state = State::Done;
                                return Poll::Ready(None);
                            }
                            Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                            Some(Ok(message)) => message,
                        },
                    };
                    if !message.is_data() {
                        return Poll::Ready(Some(Ok(message)));
                    }
                    match &*this.target {
                        Target::Exempt { throttle } => {
                            throttle
                                .core
                                .metrics
                                .decision(crate::metrics::Outcome::Exempt);
                            return Poll::Ready(Some(Ok(message)));
                        }
                        Target::Unavailable { throttle } => {
                            if throttle.core.shadow {
                                return Poll::Ready(Some(Ok(message)));
                            }
                            misconfigured()
                        }
                        Target::Counted {
                            throttle,
                            backend,
                            key,
                            quotas,
                            ..
                        } => {
                            let answer =
                                throttle
                                    .core
                                    .decide(backend, &key.as_key(), quotas, Ask::Hit);
                            match answer {
                                Answer::Now(result) => settle(throttle, result, message),
                                Answer::Later(check) => {
                                    *this.state = State::Deciding { check, message };
                                    continue;
                                }
                            }
                        }
                    }
                }
                State::Deciding { check, .. } => {
                    let result = match check.as_mut().poll(cx) {
                        Poll::Ready(result) => result,
                        Poll::Pending if this.ahead.is_some() => return Poll::Pending,
                        Poll::Pending => match ready!(this.socket.as_mut().poll_next(cx)) {
                            // The client left (or its socket failed) while
                            // its message waited: the message is dropped,
                            // and so is the wait, which gives back its
                            // `max_waiting` place.
                            None => {
                                *this.state = State::Done;
                                return Poll::Ready(None);
                            }
                            Some(Err(error)) => {
                                *this.state = State::Reading;
                                return Poll::Ready(Some(Err(error)));
                            }
                            Some(Ok(message)) if message.is_close() => {
                                *this.state = State::Reading;
                                return Poll::Ready(Some(Ok(message)));
                            }
                            // Pings and pongs pass while the data waits.
                            Some(Ok(message)) if !message.is_data() => {
                                return Poll::Ready(Some(Ok(message)));
                            }
                            Some(Ok(message)) => {
                                *this.ahead = Some(message);
                                return Poll::Pending;
                            }
                        },
                    };
                    let State::Deciding { message, .. } =
                        std::mem::replace(this.state, State::Reading)
                    else {
                        unreachable!("in the Deciding state")
                    };
                    let Target::Counted { throttle, .. } = &*this.target else {
                        unreachable!("only counted sockets decide")
                    };
                    settle(throttle, result, message)
                }
                State::Sending { message, then } => {
                    let then = *then;
                    if let Err(error) = ready!(this.socket.as_mut().poll_ready(cx)) {
                        *this.state = then.state();
                        return Poll::Ready(Some(Err(error.into())));
                    }
                    let message = message.take().expect("a message to send");
                    if let Err(error) = this.socket.as_mut().start_send(message) {
                        *this.state = then.state();
                        return Poll::Ready(Some(Err(error.into())));
                    }
                    *this.state = State::Flushing { then };
                    continue;
                }
                State::Flushing { then } => {
                    let then = *then;
                    let flushed = ready!(this.socket.as_mut().poll_flush(cx));
                    *this.state = then.state();
                    if let Err(error) = flushed {
                        return Poll::Ready(Some(Err(error.into())));
                    }
                    if let After::End = then {
                        return Poll::Ready(None);
                    }
                    continue;
                }
            };
            match outcome {
                Outcome::Deliver(message) => return Poll::Ready(Some(Ok(message))),
                Outcome::Drop => *this.state = State::Reading,
                Outcome::Send(message, then) => {
                    *this.state = State::Sending {
                        message: Some(message),
                        then,
                    }
                }
            }
        }
    }
}

impl<S, M, E> FusedStream for GuardedSocket<S, M>
where
    S: Stream<Item = Result<M, E>> + Sink<M>,
    <S as Sink<M>>::Error: Into<E>,
    M: WsMessage,
{
    fn is_terminated(&self) -> bool {
        matches!(self.state, State::Done)
    }
}

impl<S, M> Sink<M> for GuardedSocket<S, M>
where
    S: Sink<M>,
{
    type Error = S::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.project().socket.poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: M) -> Result<(), Self::Error> {
        self.project().socket.start_send(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.project().socket.poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.project().socket.poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncate_keeps_char_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abcdef", 3), "abc");
        assert_eq!(truncate("aé", 2), "a");
    }
}
