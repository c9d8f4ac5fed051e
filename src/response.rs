//! The default 429 and rate-limit headers.
use crate::Decision;

/// A throttled request.
#[derive(Debug, Clone)]
pub struct Throttled {
    decision: Decision,
}

impl Throttled {
    /// The decision.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }
    /// Retry-After seconds.
    pub fn retry_after_secs(&self) -> u64 {
        self.decision.retry_after_secs()
    }
}
