//! What the command pipeline and the saga steps need of an event store, as a trait: PostgreSQL
//! ([`crate::EventStore`]) in every process, and an in-memory store ([`crate::memory`]) in
//! the unit tests of the commands and the sagas, which need no services.
//!
//! The pipeline is generic over it with PostgreSQL as the default: calls are static, with no
//! boxing on the hot path.

use std::future::Future;

use uuid::Uuid;

use crate::deadlines::Due;
use crate::idempotency::StoredOutcome;
use crate::{Append, AppendError, Appended, EventStore, RecordedEvent, StreamVersion};

/// An event store as commands use it. Each implementation keeps the same promises: an append
/// takes place whole or not at all, and not if its stream moved past `expected`
/// ([`AppendError::Conflict`]), a claimed value is taken, its idempotency key is used, or the
/// deadline it ends no longer runs.
pub trait Store: Clone + Send + Sync + 'static {
    /// The events of one stream after `after`, in version order.
    fn read_stream(
        &self,
        stream_id: Uuid,
        after: StreamVersion,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, sqlx::Error>> + Send;

    /// Appends events with their claims, deadlines and remembered outcome (see [`Append`]).
    fn append(&self, append: Append) -> impl Future<Output = Result<Appended, AppendError>> + Send;

    /// The outcome remembered under a tenant's idempotency key.
    fn remembered_outcome(
        &self,
        tenant_id: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<StoredOutcome>, sqlx::Error>> + Send;

    /// Running deadlines due by now, oldest first, up to `limit`.
    fn due_deadlines(
        &self,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<Due>, sqlx::Error>> + Send;

    /// Moves a running deadline to fired without appending anything.
    fn retire_deadline(&self, id: Uuid) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

impl Store for EventStore {
    fn read_stream(
        &self,
        stream_id: Uuid,
        after: StreamVersion,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, sqlx::Error>> + Send {
        EventStore::read_stream(self, stream_id, after)
    }

    fn append(&self, append: Append) -> impl Future<Output = Result<Appended, AppendError>> + Send {
        EventStore::append(self, append)
    }

    fn remembered_outcome(
        &self,
        tenant_id: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<StoredOutcome>, sqlx::Error>> + Send {
        EventStore::remembered_outcome(self, tenant_id, key)
    }

    fn due_deadlines(
        &self,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<Due>, sqlx::Error>> + Send {
        EventStore::due_deadlines(self, limit)
    }

    fn retire_deadline(&self, id: Uuid) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        EventStore::retire_deadline(self, id)
    }
}
