//! What this process does after each command it appended: the one place where the command
//! side is wired to the read side of the same process.

use commands::{AppendObserver, Committed};
use futures::future::BoxFuture;
use messaging::consumer::Message;
use messaging::{Envelope, Origin};
use projections::ReadModel;

use crate::queries::cache::QueryCaches;

/// Hands committed events to this process's own handlers through the local feed (so a query
/// here waits for one read-model transaction, not for the broker, and a saga's next step runs
/// at once) and remembers the last event's position for read-your-writes.
pub struct ReadSideObserver {
    pub read: ReadModel,
    pub queries: QueryCaches,
}

impl AppendObserver for ReadSideObserver {
    fn committed<'a>(&'a self, committed: &'a Committed) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.read.local.offer(|| {
                let origin = Origin {
                    tenant_id: committed.tenant_id.clone(),
                    correlation_id: committed.correlation_id.clone(),
                    actor_id: committed.actor_id.clone(),
                };
                committed
                    .events
                    .iter()
                    .map(|e| Message {
                        envelope: Envelope {
                            event_id: e.event_id,
                            stream_id: committed.stream_id,
                            version: e.version,
                            position: e.position.value(),
                            occurred_at: e.occurred_at,
                            tenant_id: committed.tenant_id.clone(),
                            events: [e.event.clone()].into(),
                        },
                        origin: origin.clone(),
                        fed: true,
                    })
                    .collect()
            });
            if let Some(last) = committed.events.last() {
                let written = (committed.stream_id, last.version);
                self.queries
                    .positions
                    .remember(
                        last.position,
                        last.event.event_type(),
                        written,
                        &committed.tenant_id,
                    )
                    .await;
            }
        })
    }
}
