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
//! - [`message`]: the message an event becomes on RabbitMQ, and the [`Router`] that says where.
//! - [`topology`]: exchange and queue names under a prefix, and declaring them.
//! - [`publisher`]: streaming committed events to RabbitMQ with confirms, one leader at a time
//!   ([`leader`]), woken soon after commits ([`wakeup`]).

pub mod append;
pub mod idempotency;
pub mod leader;
pub mod message;
pub mod position;
pub mod publisher;
pub mod read;
pub mod topology;
pub mod wakeup;

pub use append::{Append, AppendError, Appended, Claim, Metadata, NewEvent, Remember};
pub use idempotency::StoredResponse;
pub use message::{MessageRoute, Router};
pub use position::{GlobalCheckpoint, Position, StreamVersion};
pub use publisher::{Publisher, PublisherSettings};
pub use read::RecordedEvent;

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::watch;

/// The event store's migrations (`migrations/eventstore`), applied by `hap migrate` and by
/// every test database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/eventstore");

/// A handle on the event store; cheap to clone (it is a connection pool).
#[derive(Clone, Debug)]
pub struct EventStore {
    pool: PgPool,
    /// Bumped after every committed append, to wake readers in this process at once.
    appended: Arc<watch::Sender<u64>>,
}

impl EventStore {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            appended: Arc::new(watch::Sender::new(0)),
        }
    }

    /// A receiver that changes after each committed append made through this store (or a
    /// clone of it).
    pub fn subscribe_appended(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}
