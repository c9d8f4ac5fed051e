//! Time sources: the [`Clock`] trait, the monotonic [`SystemClock`], and for
//! tests the [`ManualClock`] and Tokio's clock ([`TokioClock`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A monotonic time source for the in-memory backend.
///
/// `now()` is the time elapsed since the clock's own origin; only differences
/// and multiples of a period matter to the strategies. Windows of
/// [`Strategy::SlidingWindowCounter`](crate::Strategy::SlidingWindowCounter)
/// are aligned to multiples of the period since that origin.
pub trait Clock: Send + Sync + 'static {
    /// Time since the clock's origin. Must never go backwards.
    fn now(&self) -> Duration;
}

/// The default clock: a TSC-based monotonic clock (`quanta`) since the clock was created.
#[derive(Debug, Clone)]
pub struct SystemClock {
    clock: quanta::Clock,
    origin_raw: u64,
}

impl SystemClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        let origin_raw = clock.raw();
        SystemClock { clock, origin_raw }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl SystemClock {
    /// Whole microseconds since the clock was made, straight from the raw
    /// counter (no `Duration` arithmetic): the in-memory backend's hot path.
    #[inline]
    pub(crate) fn now_micros(&self) -> u64 {
        self.clock.delta_as_nanos(self.origin_raw, self.clock.raw()) / 1_000
    }
}

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> Duration {
        Duration::from_nanos(self.clock.delta_as_nanos(self.origin_raw, self.clock.raw()))
    }
}

/// A clock that only moves when told to: for tests that check limits without
/// sleeping. Clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use traffik::clock::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// assert_eq!(clock.now(), Duration::ZERO);
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(clock.now(), Duration::from_secs(2));
/// ```
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    micros: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at time zero.
    pub fn new() -> Self {
        ManualClock::default()
    }

    /// A clock at `start`.
    pub fn starting_at(start: Duration) -> Self {
        let clock = ManualClock::new();
        clock.set(start);
        clock
    }

    /// Moves the clock forward by `by` (microsecond resolution).
    pub fn advance(&self, by: Duration) {
        self.micros
            .fetch_add(by.as_micros() as u64, Ordering::SeqCst);
    }

    /// Sets the clock to `to`; a time before the current one is ignored, so
    /// the clock never goes backwards.
    pub fn set(&self, to: Duration) {
        self.micros
            .fetch_max(to.as_micros() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_micros(self.micros.load(Ordering::SeqCst))
    }
}

/// Tokio's clock: for tests of an app under `#[tokio::test(start_paused =
/// true)]` (or `tokio::time::pause()`), where time moves only when the
/// runtime is idle or told to (`tokio::time::advance`), and where waiting
/// ([`Exceeded::Wait`](crate::Exceeded::Wait), which sleeps on Tokio's timer)
/// must see time move. A [`ManualClock`] never moves by itself, so a
/// request waiting on it waits until its `max` and gets its 429.
///
/// ```
/// use std::time::Duration;
/// use traffik::backend::InMemoryBackend;
/// use traffik::clock::TokioClock;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// tokio::time::pause();
/// let memory = InMemoryBackend::builder().clock(TokioClock::new()).build();
/// tokio::time::advance(Duration::from_secs(60)).await;   // the backend sees it
/// # drop(memory); }
/// ```
#[derive(Debug, Clone)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock whose origin is Tokio's now. Needs a Tokio runtime (with its
    /// time driver) when read, and is made after `pause()` when paused.
    pub fn new() -> Self {
        TokioClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Duration {
        tokio::time::Instant::now().saturating_duration_since(self.origin)
    }
}

impl<C: Clock> Clock for Arc<C> {
    fn now(&self) -> Duration {
        (**self).now()
    }
}
