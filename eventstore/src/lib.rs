//! HAP's event store on PostgreSQL: appending events to streams with optimistic concurrency,
//! reading a stream, and reading every event in a global order that never skips one whose
//! transaction commits late. The `events` table is also the outbox that the publisher (in the
//! `messaging` crate) streams to RabbitMQ; what the publisher needs of the store and of the
//! process stays here: its checkpoint, its leadership, its wakeups, and readiness, all
//! PostgreSQL or process concerns that know no broker. Nothing here is clinical: events are
//! typed by name and carry JSON payloads.
//!
//! # Layout
//! - [`position`]: the value types of the store (`StreamVersion`, `Position`, `GlobalCheckpoint`).
//! - [`append`]: one append, all-or-nothing, with its uniqueness claims and idempotency key;
//!   `group_commit` lets concurrent appends share a transaction.
//! - [`read`]: reading one stream and the gap-safe read of all streams (for the publisher, on
//!   a connection of its own: `TailReader`), and the operators' reads (any stream by id, a
//!   request's events across streams); [`scan`]: the same read of the whole store in
//!   bulk, for rebuilds.
//! - [`opener`]: what readers get of a sealed payload: the [`Opener`] a process gives the
//!   store opens every row read.
//! - [`store`]: the [`Store`] trait, what commands need of a store; [`memory`]: a store in
//!   memory with the same rules, for unit tests.
//! - [`idempotency`]: looking up the outcome remembered under an idempotency key.
//! - [`housekeeping`]: forgetting old idempotency keys and finished deadlines, in small batches.
//! - [`unavailable`]: which database errors mean PostgreSQL is unavailable for now
//!   ([`is_unavailable`]), the one classification every layer uses.
//! - [`pool`]: the options every connection pool of a process starts from (when a
//!   connection taken from the pool is pinged first).
//! - [`deadlines`]: durable saga deadlines' rows and their states ([`DeadlineState`]),
//!   started and ended with appends, and their counts for operators.
//! - [`publishing`]: the publisher's durable checkpoint and its lag; the publisher leads one at
//!   a time ([`leader`]) and is woken soon after commits ([`wakeup`]).
//! - [`readiness`]: which parts of a process run, for its readiness check.
//! - [`processes`]: every running process recorded with its heartbeat, for operators, and
//!   [`samples`]: what each measured of itself with each beat (commands, errors, lags).
//! - [`rounds`]: the rhythm of background rounds such as the heartbeat, until shutdown.

pub mod append;
pub mod deadlines;
mod group_commit;
pub mod housekeeping;
pub mod idempotency;
pub mod leader;
pub mod memory;
pub mod opener;
pub mod pool;
pub mod position;
pub mod processes;
pub mod publishing;
pub mod read;
pub mod readiness;
pub mod rounds;
pub mod samples;
pub mod scan;
pub mod store;
pub mod unavailable;
pub mod wakeup;

pub use append::{
    Append, AppendError, Appended, Claim, Erasure, Metadata, NewEvent, Remember, SubjectKey,
};
pub use deadlines::{
    DeadlineCounts, DeadlineEnd, DeadlineRow, DeadlineStart, DeadlineState, Due, Ending,
};
pub use idempotency::StoredOutcome;
pub use memory::MemoryStore;
pub use opener::{Opener, Stored};
pub use position::{GlobalCheckpoint, Position, StreamVersion};
pub use publishing::Lag;
pub use read::{RECORDED_EVENT_COLUMNS, RecordedEvent};
pub use store::Store;
pub use unavailable::is_unavailable;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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
    /// When set, appends go through group commit.
    group_commit: Option<Arc<group_commit::GroupCommit>>,
    /// How many publishers lead from this process: while one does, [`Self::appended`] wakes
    /// it, and appends need not also notify other processes.
    publishing_here: Arc<AtomicUsize>,
    /// Woken when an append here starts a deadline or a deadline is resumed, so that a timer
    /// in this process looks again at once.
    deadlines_changed: Arc<tokio::sync::Notify>,
    /// Opens the payloads every read returns; `None`: they read as stored.
    opener: Option<Arc<dyn Opener>>,
}

impl EventStore {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            appended: Arc::new(watch::Sender::new(0)),
            group_commit: None,
            publishing_here: Arc::default(),
            deadlines_changed: Arc::default(),
            opener: None,
        }
    }

    /// The same store with group commit: concurrent appends share transactions, written by
    /// `workers` tasks (each holding a pool connection while it writes) in batches of up to
    /// `batch`. Needs a Tokio runtime.
    pub fn with_group_commit(mut self, workers: usize, batch: usize) -> Self {
        let plain = Self {
            group_commit: None,
            ..self.clone()
        };
        self.group_commit = Some(Arc::new(group_commit::GroupCommit::start(
            plain, workers, batch,
        )));
        self
    }

    /// A receiver that changes after each committed append made through this store (or a
    /// clone of it).
    pub fn subscribe_appended(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Told by a publisher when it starts and stops leading from this process.
    pub fn set_publishing_here(&self, leading: bool) {
        if leading {
            self.publishing_here.fetch_add(1, Ordering::SeqCst);
        } else {
            self.publishing_here.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Whether a leading publisher runs in this process.
    pub fn publishing_here(&self) -> bool {
        self.publishing_here.load(Ordering::SeqCst) > 0
    }
}
