//! What the pipeline tells the rest of its process after an append has committed. The command
//! side knows nothing of the read side: the process wires observers (handing the events to its
//! own projectors, remembering positions for read-your-writes) in one place.

use chrono::{DateTime, Utc};
use domain::Event;
use eventstore::Position;
use futures::future::BoxFuture;
use uuid::Uuid;

/// One event just committed, with where it landed.
#[derive(Debug, Clone)]
pub struct CommittedEvent {
    pub event_id: Uuid,
    pub version: i64,
    pub position: Position,
    pub occurred_at: DateTime<Utc>,
    pub event: Event,
}

/// The events of one append, committed.
#[derive(Debug, Clone)]
pub struct Committed {
    pub stream_id: Uuid,
    pub tenant_id: String,
    pub correlation_id: String,
    pub causation_id: Option<Uuid>,
    /// Who acted, as the command said.
    pub actor_id: Option<String>,
    /// In stream order.
    pub events: Vec<CommittedEvent>,
}

/// Told of every append the pipeline commits, before the command answers.
pub trait AppendObserver: Send + Sync + 'static {
    fn committed<'a>(&'a self, committed: &'a Committed) -> BoxFuture<'a, ()>;
}
