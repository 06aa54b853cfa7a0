//! The rhythm of a background round (a heartbeat, housekeeping, a count for operators): one
//! at once, then one every period until shutdown.

use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// Rounds every `period`, the first at once, until `shutdown`. A round that overruns its period
/// delays the next one rather than letting missed rounds run back to back.
pub struct Rounds {
    every: Interval,
    shutdown: CancellationToken,
}

impl Rounds {
    pub fn new(period: Duration, shutdown: &CancellationToken) -> Self {
        let mut every = tokio::time::interval(period);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            every,
            shutdown: shutdown.clone(),
        }
    }

    /// Waits until the next round is due: `true` then, `false` once shutdown was asked for.
    pub async fn next(&mut self) -> bool {
        tokio::select! {
            () = self.shutdown.cancelled() => false,
            _ = self.every.tick() => true,
        }
    }
}
