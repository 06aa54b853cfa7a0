//! The pause before trying the broker (or the database) again after a failure: it doubles
//! with each failure in a row, up to a ceiling, and starts afresh once things work.

use std::time::Duration;

const FIRST: Duration = Duration::from_millis(250);
const CEILING: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: FIRST }
    }
}

impl Backoff {
    /// The pause to make now; the next one is twice as long.
    pub(crate) fn next(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(CEILING);
        pause
    }

    /// Sleeps for the pause to make now.
    pub(crate) async fn sleep(&mut self) {
        tokio::time::sleep(self.next()).await;
    }

    /// Starts afresh: things work again.
    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }
}
