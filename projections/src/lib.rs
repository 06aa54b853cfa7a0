//! HAP's read side: each instance projects the events it receives from its own RabbitMQ queues
//! into its own read model, idempotently, and can rebuild it from the event store.
//!
//! # Layout
//! - [`schema`]: the read model's schema per instance, its pool and migrations.
//! - [`projector`]: the projector contract and how every batch is applied (deduplicated, in
//!   stream order, gaps filled from the store, atomically: the common batch in one statement).
//! - [`queues`]: each projector of an instance with the service whose queue feeds it.
//! - [`live`]: the instance's projectors as handlers of `messaging`'s consumer runtime, which
//!   hands them each event as a `messaging::Envelope`.
//! - [`rebuild`]: rebuilding (or verifying) read models from the event store, live; [`copy`]:
//!   its bulk writes.
//! - [`patients`], [`physicians`], [`consultations`] (also the agenda), [`records`]: the
//!   projectors; [`registry`]: what the patients and physicians projectors share.
//! - [`progress`]: read-your-writes: waiting until a projection applied a position, and which
//!   rows each commit changed. The projectors also take this process's own appends from the
//!   local feed (`messaging::local`), so that waiting for them does not wait for the broker.

pub mod consultations;
pub mod copy;
pub mod live;
pub mod patients;
pub mod physicians;
pub mod progress;
pub mod projector;
pub mod queues;
pub mod rebuild;
pub mod records;
pub mod registry;
pub mod schema;

// Every projector takes events as the consumer runtime hands them over, as
// `crate::envelope::Envelope`.
use messaging::envelope;
use sqlx::PgPool;
use uuid::Uuid;

/// Rows or versions by id. The ids are UUIDs that HAP made, so a hash built to resist crafted
/// keys buys nothing here, and a rebuild inserts into these maps once or twice per event:
/// foldhash took a good part of a rebuild's own CPU time off what the default hasher cost
/// (docs/benchmarks.md).
pub(crate) type ById<V> = std::collections::HashMap<Uuid, V, foldhash::fast::RandomState>;

/// Whether `error` is PostgreSQL refusing a row that a unique index already holds.
pub(crate) fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}

/// The projections, by the name they record in `processed_events`.
pub const PATIENTS: &str = "patients";
pub const PHYSICIANS: &str = "physicians";
pub const CONSULTATIONS: &str = "consultations";
pub const RECORDS: &str = "records";

/// The projections that receive the events of an exchange (by suffix): the consultations
/// projection also follows patients and physicians, for their names.
pub fn projections_of_exchange(exchange: &str) -> &'static [&'static str] {
    match exchange {
        "patients" => &[PATIENTS, CONSULTATIONS],
        "physicians" => &[PHYSICIANS, CONSULTATIONS],
        "consultations" => &[CONSULTATIONS],
        "records" => &[RECORDS],
        _ => &[],
    }
}

/// The projections that receive events of `event_type`; `None` for a type HAP does not know.
pub fn projections_of_event(event_type: &str) -> Option<&'static [&'static str]> {
    domain::event::route(event_type).map(|r| projections_of_exchange(r.exchange.suffix()))
}

/// One instance's read model: the pool that sees its schema, its projectors' progress, and
/// the local feed of this process's appends (its projectors take from it, and so do the saga
/// services of the process: one feed for all its handlers).
#[derive(Clone, Debug)]
pub struct ReadModel {
    pub pool: PgPool,
    pub progress: progress::Progress,
    pub local: messaging::LocalFeed,
}

impl ReadModel {
    /// The read model `pool` sees, with no projector running yet.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            progress: Default::default(),
            local: Default::default(),
        }
    }
}
