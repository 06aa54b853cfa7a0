//! HAP's event store on PostgreSQL: appending events to streams with optimistic concurrency,
//! reading a stream, and reading every event in a global order that never skips one whose
//! transaction commits late. The `events` table is also the outbox the publisher streams to
//! RabbitMQ. Nothing here is clinical: events are typed by name and carry JSON payloads.
//!
//! # Layout
//! - [`position`]: the value types of the store (`StreamVersion`, `Position`, `GlobalCheckpoint`).
//! - [`append`]: one append, all-or-nothing, with its uniqueness claims and idempotency key.
//! - [`read`]: reading one stream and the gap-safe read of all streams.
//! - [`idempotency`]: looking up the remembered response to an idempotency key.

pub mod append;
pub mod idempotency;
pub mod position;
pub mod read;

pub use append::{Append, AppendError, Appended, Claim, Metadata, NewEvent, Remember};
pub use idempotency::StoredResponse;
pub use position::{GlobalCheckpoint, Position, StreamVersion};
pub use read::RecordedEvent;

use sqlx::PgPool;

/// The event store's migrations (`migrations/eventstore`), applied by `hap migrate` and by
/// every test database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/eventstore");

/// A handle on the event store; cheap to clone (it is a connection pool).
#[derive(Clone, Debug)]
pub struct EventStore {
    pool: PgPool,
}

impl EventStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}
