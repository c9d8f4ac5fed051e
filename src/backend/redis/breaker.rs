//! Failing fast while Redis is unreachable: a circuit breaker.
//!
//! After a command fails to reach Redis (a timeout or a refused
//! connection), hits fail at once for a pause, without a round trip, so that
//! `FailureMode::Open` lets requests through at once and `Closed` answers
//! 503 at once, instead of each waiting for the timeout. After the pause one
//! hit (the probe) is let through to test the connection; the others still
//! fail at once until it ends. It closes the breaker when it succeeds, and
//! starts a new pause when it fails.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::BackendError;
use crate::Error;

pub(super) struct Breaker {
    /// The backend's prefix, in logs.
    name: String,
    /// How long hits fail at once after a failure; zero: never.
    pause: Duration,
    /// Zero while closed; else the time (µs since `origin`) until which
    /// hits fail at once, after which one probe is let through.
    open_until: AtomicU64,
    /// A probe is under way.
    probing: AtomicBool,
    /// The failure that opened the breaker, for the errors of the hits it
    /// refuses.
    last_failure: Mutex<String>,
    origin: Instant,
}

/// What a hit may do.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admission {
    /// Ask Redis (the breaker is closed).
    Go,
    /// Ask Redis, as the probe of an open breaker.
    Probe,
    /// Fail at once.
    Refuse,
}

/// A hit let through: report how it went with [`Breaker::record`]. A probe
/// dropped before it is recorded (its future cancelled) lets the next hit
/// probe instead.
pub(super) struct Ticket<'a> {
    breaker: &'a Breaker,
    probe: bool,
}

/// How a hit let through went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Redis answered.
    Reached,
    /// Redis could not be reached (a timeout, a refused connection).
    Unreachable,
    /// Another error (a script error, a connection lost and being
    /// reconnected, a failure on a connection already replaced): says
    /// nothing of whether Redis can be reached now.
    Other,
}

impl Breaker {
    pub(super) fn new(name: impl Into<String>, pause: Duration) -> Breaker {
        let name = name.into();
        if !pause.is_zero() {
            crate::metrics::breaker_open(&name, false);
        }
        Breaker {
            name,
            pause,
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            last_failure: Mutex::new(String::new()),
            origin: Instant::now(),
        }
    }

    pub(super) fn pause(&self) -> Duration {
        self.pause
    }

    /// Now, in µs since the origin, never zero (zero means closed).
    fn now(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64 + 1
    }

    /// Whether a hit may ask Redis now: a ticket, or the error to fail with.
    #[inline]
    pub(super) fn admit(&self) -> Result<Ticket<'_>, Error> {
        // The closed breaker costs one load.
        if self.open_until.load(Ordering::Acquire) == 0 {
            return Ok(Ticket {
                breaker: self,
                probe: false,
            });
        }
        match self.admit_at(self.now()) {
            Admission::Go => Ok(Ticket {
                breaker: self,
                probe: false,
            }),
            Admission::Probe => Ok(Ticket {
                breaker: self,
                probe: true,
            }),
            Admission::Refuse => Err(self.refusal()),
        }
    }

    pub(super) fn admit_at(&self, now: u64) -> Admission {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Admission::Go;
        }
        if now < until {
            return Admission::Refuse;
        }
        match self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Admission::Probe,
            Err(_) => Admission::Refuse,
        }
    }

    /// Records how a hit let through went, at `now`.
    pub(super) fn record_at(
        &self,
        now: u64,
        probe: bool,
        outcome: Outcome,
        failure: &dyn Fn() -> String,
    ) {
        match outcome {
            Outcome::Reached => {
                if self.open_until.load(Ordering::Acquire) != 0
                    && self.open_until.swap(0, Ordering::AcqRel) != 0
                {
                    self.show_state();
                    tracing::info!(
                        prefix = self.name.as_str(),
                        "traffik: Redis answers again; hits go to Redis"
                    );
                }
            }
            Outcome::Unreachable if !self.pause.is_zero() => {
                let failure = failure();
                let pause = self.pause.as_micros().min(u128::from(u64::MAX / 2)) as u64;
                let was = {
                    let mut last = self
                        .last_failure
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    last.clone_from(&failure);
                    self.open_until.swap(now + pause, Ordering::AcqRel)
                };
                if was == 0 {
                    self.show_state();
                    // Once per outage; the hits it refuses log at DEBUG.
                    tracing::warn!(
                        prefix = self.name.as_str(),
                        %failure,
                        pause = ?self.pause,
                        "traffik: Redis cannot be reached; hits fail at once until a test hit gets through"
                    );
                }
            }
            Outcome::Unreachable | Outcome::Other => {}
        }
        if probe {
            self.probing.store(false, Ordering::Release);
        }
    }

    /// Sets the `traffik_redis_breaker_open` gauge to the breaker's state,
    /// read under the lock: of an opening and a closing that race, the
    /// gauge ends on the state that stays.
    fn show_state(&self) {
        let _serialized = self
            .last_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let open = self.open_until.load(Ordering::Acquire) != 0;
        crate::metrics::breaker_open(&self.name, open);
    }

    fn refusal(&self) -> Error {
        let last = self
            .last_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Error::Backend(BackendError::known_outage(format!(
            "Redis is unreachable ({last}): hits fail at once, without a round trip, until a test hit \
             reaches it again (one every {:?}; RedisBackendBuilder::circuit_breaker)",
            self.pause
        )))
    }
}

impl Ticket<'_> {
    /// Reports how the hit went; `failure` describes an unreachable Redis.
    pub(super) fn record(self, outcome: Outcome, failure: &dyn Fn() -> String) {
        let breaker = self.breaker;
        let probe = self.probe;
        std::mem::forget(self);
        breaker.record_at(breaker.now(), probe, outcome, failure);
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        // Dropped unrecorded: a cancelled hit says nothing of Redis, but a
        // probe must hand its turn to the next hit.
        if self.probe {
            self.breaker.probing.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAUSE: Duration = Duration::from_millis(500);

    fn failure() -> String {
        "Redis EVALSHA timed out".to_owned()
    }

    #[test]
    fn a_closed_breaker_lets_everything_through() {
        let breaker = Breaker::new("test", PAUSE);
        assert_eq!(breaker.admit_at(1), Admission::Go);
        breaker.record_at(1, false, Outcome::Reached, &failure);
        breaker.record_at(2, false, Outcome::Other, &failure);
        assert_eq!(breaker.admit_at(3), Admission::Go);
    }

    #[test]
    fn a_failure_refuses_hits_for_the_pause_then_lets_one_probe() {
        let breaker = Breaker::new("test", PAUSE);
        breaker.record_at(1_000, false, Outcome::Unreachable, &failure);
        // During the pause: refused.
        assert_eq!(breaker.admit_at(1_001), Admission::Refuse);
        assert_eq!(breaker.admit_at(500_999), Admission::Refuse);
        // After it: one probe; the others are still refused while it runs.
        assert_eq!(breaker.admit_at(501_000), Admission::Probe);
        assert_eq!(breaker.admit_at(501_001), Admission::Refuse);
        assert_eq!(breaker.admit_at(900_000), Admission::Refuse);
        // The probe fails: a new pause from its end.
        breaker.record_at(1_000_000, true, Outcome::Unreachable, &failure);
        assert_eq!(breaker.admit_at(1_400_000), Admission::Refuse);
        assert_eq!(breaker.admit_at(1_500_000), Admission::Probe);
        // The probe succeeds: closed.
        breaker.record_at(1_500_100, true, Outcome::Reached, &failure);
        assert_eq!(breaker.admit_at(1_500_101), Admission::Go);
        assert_eq!(breaker.admit_at(1_500_102), Admission::Go);
    }

    #[test]
    fn a_probe_that_says_nothing_of_the_connection_hands_on_its_turn() {
        let breaker = Breaker::new("test", PAUSE);
        breaker.record_at(1, false, Outcome::Unreachable, &failure);
        assert_eq!(breaker.admit_at(600_000), Admission::Probe);
        breaker.record_at(600_001, true, Outcome::Other, &failure);
        // Still open (nothing was learnt), and the next hit probes.
        assert_eq!(breaker.admit_at(600_002), Admission::Probe);
    }

    #[test]
    fn a_dropped_probe_hands_on_its_turn() {
        let breaker = Breaker::new("test", PAUSE);
        breaker.record_at(1, false, Outcome::Unreachable, &failure);
        // Far past the pause in real time: `admit` probes.
        breaker
            .open_until
            .store(1, std::sync::atomic::Ordering::Release);
        let ticket = breaker.admit().unwrap();
        assert!(ticket.probe);
        assert!(breaker.admit().is_err(), "one probe at a time");
        drop(ticket);
        let again = breaker.admit().unwrap();
        assert!(again.probe);
        again.record(Outcome::Reached, &failure);
        assert!(!breaker.admit().unwrap().probe);
    }

    #[test]
    fn refusals_name_the_failure_and_the_setting() {
        let breaker = Breaker::new("test", PAUSE);
        breaker.record_at(breaker.now(), false, Outcome::Unreachable, &failure);
        let Err(error) = breaker.admit() else {
            panic!("refused during the pause");
        };
        let message = error.to_string();
        assert!(message.contains("Redis EVALSHA timed out"), "{message}");
        assert!(message.contains("circuit_breaker"), "{message}");
        assert!(message.contains("500ms"), "{message}");
    }

    #[test]
    fn a_zero_pause_never_opens() {
        let breaker = Breaker::new("test", Duration::ZERO);
        breaker.record_at(1, false, Outcome::Unreachable, &failure);
        assert_eq!(breaker.admit_at(2), Admission::Go);
        assert!(breaker.admit().is_ok());
    }
}
