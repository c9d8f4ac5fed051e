//! Waiting in line: the requests of one key held under
//! [`Exceeded::Wait`](crate::Exceeded::Wait) take turns in arrival order.
//! Only the one whose turn it is asks the backend; the others sleep until
//! the turn passes to them, so `n` waiters cost O(n) decisions and no CPU
//! while they wait.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{oneshot, Notify};

use crate::key::OwnedKey;

/// The lines of one throttle, by key (a key has a line while a request of
/// it waits).
#[derive(Default)]
pub(crate) struct Lines {
    lines: Mutex<HashMap<OwnedKey, Line>>,
    next_ticket: AtomicU64,
}

struct Line {
    /// The requests after the one whose turn it is, in arrival order.
    waiting: VecDeque<(u64, oneshot::Sender<()>)>,
    /// Woken when a place of the key is given back (in-flight limits).
    freed: Arc<Notify>,
}

/// The turn of a key's line, held while its request asks the backend;
/// dropping it passes the turn on.
pub(crate) struct Turn {
    lines: Arc<Lines>,
    key: OwnedKey,
    /// Notified when a place of the key is given back.
    pub(crate) freed: Arc<Notify>,
    /// The request waited behind others for the turn (what it was told
    /// before is stale).
    pub(crate) waited: bool,
}

impl Lines {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OwnedKey, Line>> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Joins the line of `key` and waits for its turn (at once when no
    /// other request of the key waits). Cancel-safe: a request dropped
    /// while in line leaves it, and one dropped just as the turn reached
    /// it passes the turn on.
    pub(crate) async fn turn(self: &Arc<Self>, key: &OwnedKey) -> Turn {
        let (ticket, receiver, freed) = {
            let mut lines = self.lock();
            match lines.get_mut(key) {
                None => {
                    let freed = Arc::new(Notify::new());
                    let line = Line {
                        waiting: VecDeque::new(),
                        freed: Arc::clone(&freed),
                    };
                    lines.insert(key.clone(), line);
                    return self.turn_of(key, freed, false);
                }
                Some(line) => {
                    let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
                    let (sender, receiver) = oneshot::channel();
                    line.waiting.push_back((ticket, sender));
                    (ticket, receiver, Arc::clone(&line.freed))
                }
            }
        };
        let mut place = InLine {
            lines: self,
            key,
            ticket,
            receiver,
        };
        // The sender is dropped only after sending (a line is removed once
        // empty), so an error cannot happen; either way the turn is ours.
        let _ = (&mut place.receiver).await;
        place.ticket = u64::MAX;
        self.turn_of(key, freed, true)
    }

    fn turn_of(self: &Arc<Self>, key: &OwnedKey, freed: Arc<Notify>, waited: bool) -> Turn {
        Turn {
            lines: Arc::clone(self),
            key: key.clone(),
            freed,
            waited,
        }
    }

    /// Passes the turn of `key`'s line to the next request that still
    /// waits, or removes the line.
    fn pass(&self, key: &OwnedKey) {
        let mut lines = self.lock();
        let Some(line) = lines.get_mut(key) else {
            return;
        };
        while let Some((_, sender)) = line.waiting.pop_front() {
            if sender.send(()).is_ok() {
                return;
            }
        }
        lines.remove(key);
    }

    /// Tells the request whose turn it is in `key`'s line that a place was
    /// given back.
    pub(crate) fn freed(&self, key: &OwnedKey) {
        if let Some(line) = self.lock().get(key) {
            line.freed.notify_one();
        }
    }

    /// Requests in every line (waiting for their turn or holding it).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock()
            .values()
            .map(|line| line.waiting.len() + 1)
            .sum()
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.lines.pass(&self.key);
    }
}

/// A request waiting for its turn.
struct InLine<'a> {
    lines: &'a Arc<Lines>,
    key: &'a OwnedKey,
    /// `u64::MAX` once the turn is ours.
    ticket: u64,
    receiver: oneshot::Receiver<()>,
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        if self.ticket == u64::MAX {
            return;
        }
        // Given the turn as the request was dropped: pass it on.
        if self.receiver.try_recv().is_ok() {
            self.lines.pass(self.key);
            return;
        }
        let mut lines = self.lines.lock();
        if let Some(line) = lines.get_mut(self.key) {
            line.waiting.retain(|(ticket, _)| *ticket != self.ticket);
        }
        drop(lines);
        // The turn may have been sent between `try_recv` and the lock.
        if self.receiver.try_recv().is_ok() {
            self.lines.pass(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{Key, Scope};
    use std::time::Duration;

    fn key(identity: &str) -> OwnedKey {
        let uid: Arc<str> = "t".into();
        Key::new("t", identity, Scope::shared()).owned(&uid)
    }

    #[tokio::test(start_paused = true)]
    async fn turns_go_in_arrival_order_and_survive_dropped_waiters() {
        let lines = Arc::new(Lines::default());
        let a = key("a");
        let first = lines.turn(&a).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (lines, a, order) = (Arc::clone(&lines), a.clone(), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                let turn = lines.turn(&a).await;
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(turn);
            }));
            // In arrival order.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The third waiter leaves the line before its turn.
        tasks.remove(2).abort();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(lines.len(), 5);
        drop(first);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 3, 4]);
        assert_eq!(lines.len(), 0, "the line is gone once empty");
        // Another key never waited.
        drop(lines.turn(&key("b")).await);
    }
}
