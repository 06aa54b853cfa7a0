//! Read-your-writes without the trip through the broker. A process that both takes commands
//! and projects hands each event it has just appended (and committed) straight to its own
//! projectors, which apply it with their next batch. The broker's copy arrives later and is
//! deduplicated like any redelivery.
//!
//! The feed only ever makes things earlier, never different: what it drops (a projector that
//! is not keeping up, a batch that failed) still arrives through the queue, and an event it
//! hands over out of order is put in order as any delivery is (gaps filled from the store).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use messaging::Envelope;
use tokio::sync::mpsc;

use crate::projections_of_event;

/// Events waiting for one projector at most; past it they are dropped and come by the queue.
/// (The consumer runtime remembers four times as many committed, until their copies come.)
const CAPACITY: usize = 4096;

/// The projectors of this process that take events straight from its commands; cheap to
/// clone.
#[derive(Clone, Debug, Default)]
pub struct LocalFeed {
    projectors: Arc<Mutex<HashMap<&'static str, mpsc::Sender<Envelope>>>>,
}

impl LocalFeed {
    /// Called by the projector of `projection` when it starts: the events offered from then on
    /// come to the receiver. A later call for the same projection takes over the feed.
    pub fn subscribe(&self, projection: &'static str) -> mpsc::Receiver<Envelope> {
        let (sender, receiver) = mpsc::channel(CAPACITY);
        self.lock().insert(projection, sender);
        receiver
    }

    /// Hands the events `appended` makes, appended and committed by this process, to the
    /// projectors here that receive them; makes them only if there are any (a process that
    /// only takes commands pays nothing). Never waits.
    pub fn offer(&self, appended: impl FnOnce() -> Vec<Envelope>) {
        let projectors = self.lock();
        if projectors.is_empty() {
            return;
        }
        for envelope in appended() {
            // The events of one appended now are always the one written.
            let Some(event) = envelope.events.first() else {
                continue;
            };
            let receiving = projections_of_event(event.event_type()).unwrap_or(&[]);
            for projection in receiving {
                let Some(projector) = projectors.get(projection) else {
                    continue;
                };
                if projector.try_send(envelope.clone()).is_err() {
                    metrics::counter!("hap_local_feed_dropped_total", "projection" => *projection)
                        .increment(1);
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, mpsc::Sender<Envelope>>> {
        // A panic elsewhere while holding it leaves the map whole: senders are inserted or
        // read, never half-written.
        self.projectors.lock().unwrap_or_else(|e| e.into_inner())
    }
}
