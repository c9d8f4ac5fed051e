//! A `tracing` subscriber that records every event (spans are ignored),
//! installed for one test's thread. Shared by the suites that check what
//! traffik logs.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// One recorded event: its level and its fields as `name=value` text.
pub type Logged = (Level, String);

/// Records every event; spans are ignored.
#[derive(Clone, Default)]
pub struct Recorder {
    pub events: Arc<Mutex<Vec<Logged>>>,
}

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        self.events
            .lock()
            .unwrap()
            .push((*event.metadata().level(), fields.0));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

impl Recorder {
    /// Installs a recorder for this thread (the current-thread runtime of
    /// `#[tokio::test]` polls every future here) until the guard drops.
    pub fn install() -> (Recorder, tracing::dispatcher::DefaultGuard) {
        let recorder = Recorder::default();
        let guard = tracing::dispatcher::set_default(&tracing::Dispatch::new(recorder.clone()));
        (recorder, guard)
    }

    /// The events whose text holds `needle`.
    pub fn with(&self, needle: &str) -> Vec<Logged> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, text)| text.contains(needle))
            .cloned()
            .collect()
    }
}
