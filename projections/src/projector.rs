//! The contract of a projector, and the one way every batch is applied: deduplicated by event
//! id, in order per stream, with gaps filled from the event store, in one transaction with
//! the projector's writes.

use std::collections::{HashMap, HashSet};

use futures::future::BoxFuture;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::copy::CopyRows;
use crate::envelope::{Envelope, Poison};
use crate::is_unique_violation;
use crate::progress::Touched;
use eventstore::{EventStore, StreamVersion};

/// Turns events into read-model rows.
pub trait Projector: Send + Sync + 'static {
    /// The name recorded with its processed events (`patients`, …).
    fn name(&self) -> &'static str;

    /// Applies `events` inside the caller's transaction and says which rows changed. Every
    /// event is new to this projection, and each stream's events are contiguous and in
    /// version order (the runtime sees to it), so a projector only folds.
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        events: &'a [Envelope],
    ) -> BoxFuture<'a, Result<Vec<Touched>, ApplyError>>;

    /// An empty copy of the projection's rows in memory, for a rebuild to fold the whole
    /// history into and write in bulk, rather than reading and writing rows batch by batch.
    fn in_memory(&self) -> Box<dyn InMemory>;
}

/// A projection's rows held in memory, folded by the same code as the live batches.
pub trait InMemory: Send {
    /// Folds one event; the events of a stream come once each, in version order.
    fn fold(&mut self, event: &Envelope);

    /// The rows, encoded for the projection's tables.
    fn into_rows(self: Box<Self>) -> Vec<CopyRows>;
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// May pass (database down, lock timeout): retry later.
    #[error("the read model could not be written: {0}")]
    Database(#[from] sqlx::Error),
    /// A predecessor read from the event store cannot be decoded: nothing will fix it.
    #[error("a stored event cannot be decoded: {0}")]
    Poison(#[from] Poison),
    /// Another transaction kept applying the same stream's events while this batch did.
    #[error("another transaction kept applying the same events")]
    Raced,
}

/// The rows of a projection keyed by stream that `events` continue, read with `select`
/// (`… where id = any($1)`, bound to their ids). A stream whose first event is in the batch
/// has no row yet, so a batch of new streams reads nothing before it writes.
pub async fn load_continued<R>(
    tx: &mut PgConnection,
    events: &[Envelope],
    select: &'static str,
) -> Result<Vec<R>, sqlx::Error>
where
    R: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin,
{
    let ids = continued_streams(events);
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(select).bind(&ids).fetch_all(tx).await
}

/// The streams of `events` that may have a row already: those with an event past version 1.
fn continued_streams(events: &[Envelope]) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = events
        .iter()
        .filter(|e| e.version > 1)
        .map(|e| e.stream_id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Checks that an update of rows (or stream versions) read at the start of the batch found
/// every one: one gone since means the projection changed under the batch, which then starts
/// again from what is there now.
pub fn all_updated(updated: i64, expected: usize) -> Result<(), ApplyError> {
    if usize::try_from(updated) == Ok(expected) {
        Ok(())
    } else {
        Err(ApplyError::Raced)
    }
}

/// One column of the rows a projector writes (each with whether it was loaded), to bind as
/// an array.
pub fn column<'r, R, T>(rows: &[(&'r R, bool)], field: impl Fn(&'r R) -> T) -> Vec<T> {
    rows.iter().map(|(row, _)| field(row)).collect()
}

/// Attempts at a batch that another transaction raced before [`ApplyError::Raced`] is given up.
const RACE_ATTEMPTS: usize = 3;

/// What a batch changed.
#[derive(Debug, Default)]
pub struct Applied {
    /// Events applied (new ones, and predecessors filled in from the store).
    pub events: usize,
    /// Each stream moved, with the version it reached.
    pub streams: Vec<(Uuid, i64)>,
    pub touched: Vec<Touched>,
}

/// Applies a batch of events (in any order, possibly repeated or already applied) to the
/// projection in one transaction.
pub async fn apply_batch(
    read: &PgPool,
    store: &EventStore,
    projector: &dyn Projector,
    events: &[Envelope],
) -> Result<Applied, ApplyError> {
    let mut attempt = 1;
    loop {
        match try_apply(read, store, projector, events).await {
            Err(ApplyError::Raced) if attempt < RACE_ATTEMPTS => attempt += 1,
            outcome => return outcome,
        }
    }
}

/// One attempt at [`apply_batch`]; `Raced` when it must start again.
async fn try_apply(
    read: &PgPool,
    store: &EventStore,
    projector: &dyn Projector,
    events: &[Envelope],
) -> Result<Applied, ApplyError> {
    let name = projector.name();
    let mut tx = read.begin().await?;
    let Marked { fresh, applied } =
        match mark_processed(&mut tx, name, events, Duplicates::Unexpected).await {
            // Some were processed before (a redelivery): mark again, keeping those out.
            Err(error) if is_unique_violation(&error) => {
                tx.rollback().await?;
                tx = read.begin().await?;
                mark_processed(&mut tx, name, events, Duplicates::Expected).await?
            }
            marked => marked?,
        };
    let mut events: Vec<&Envelope> = events
        .iter()
        .filter(|e| fresh.contains(&e.event_id))
        .collect();
    if events.is_empty() {
        tx.commit().await?;
        return Ok(Applied::default());
    }
    events.sort_by_key(|e| (e.stream_id, e.version));

    let mut to_apply: Vec<Envelope> = Vec::with_capacity(events.len());
    let mut filled: Vec<Envelope> = Vec::new();
    let mut versions: HashMap<Uuid, i64> = HashMap::new();
    for event in events {
        let current = versions
            .get(&event.stream_id)
            .or(applied.get(&event.stream_id))
            .copied()
            .unwrap_or(0);
        if event.version <= current {
            continue; // older than what is applied: already reflected
        }
        if event.version > current + 1 {
            // A predecessor has not arrived (a retry overtaken by its successor): the event
            // store has it.
            let missing = store
                .read_stream(event.stream_id, StreamVersion::new(current as u64))
                .await?;
            for recorded in missing.into_iter().filter(|r| r.version < event.version) {
                filled.push(Envelope::from_recorded(recorded)?);
            }
        }
        versions.insert(event.stream_id, event.version);
        to_apply.push(event.clone());
    }
    if !filled.is_empty() {
        // The versions read above are not locked: another transaction may have applied a
        // predecessor meanwhile (committed before our mark, or making it wait until it
        // committed). They are stale then: start again from what it committed. Every way two
        // transactions can apply one stream's events at once leads here: an event they both
        // hold is fresh for one only, and one that runs ahead of the versions it read fills
        // in, and so marks, the events in between.
        let marked = mark_processed(&mut tx, name, &filled, Duplicates::Expected).await?;
        if filled.iter().any(|e| !marked.fresh.contains(&e.event_id)) {
            return Err(ApplyError::Raced);
        }
        to_apply.extend(filled);
    }
    // Position order is version order within a stream, and the order things happened across
    // streams (a patient is registered before a consultation names them).
    to_apply.sort_by_key(|e| e.position);

    let touched = projector.apply(&mut tx, &to_apply).await?;

    let streams: Vec<(Uuid, i64)> = versions.into_iter().collect();
    // A stream without a version row is new to the projection. It had no rows when the batch
    // read the versions: every writer (these batches, a rebuild) writes a stream's rows and
    // its version row in one transaction. And no other transaction can be adding them now:
    // this one has marked the stream's events it applies, from its first, and another
    // applying them would have had to mark them too, which one of the two finds taken (a
    // rebuild's swap waits for this transaction under its lock). The projectors' row writes
    // rest on the same reasoning. Plain updates and inserts cost PostgreSQL less than an
    // upsert.
    let tenants: HashMap<Uuid, &str> = to_apply
        .iter()
        .map(|e| (e.stream_id, e.tenant_id.as_str()))
        .collect();
    let (mut continued_ids, mut continued_versions) = (Vec::new(), Vec::new());
    let (mut new_ids, mut new_versions, mut new_tenants) = (Vec::new(), Vec::new(), Vec::new());
    for &(id, version) in &streams {
        if applied.contains_key(&id) {
            continued_ids.push(id);
            continued_versions.push(version);
        } else {
            new_ids.push(id);
            new_versions.push(version);
            new_tenants.push(tenants[&id]);
        }
    }
    let continued = continued_ids.len();
    let updated: i64 = sqlx::query_scalar(
        "with continued as (
             update stream_versions s set version = c.version
               from unnest($2::uuid[], $3::bigint[]) as c(stream_id, version)
              where s.projection = $1 and s.stream_id = c.stream_id
             returning 1
         ), new as (
             insert into stream_versions (projection, stream_id, version, tenant_id)
             select $1, * from unnest($4::uuid[], $5::bigint[], $6::text[])
         )
         select count(*) from continued",
    )
    .bind(name)
    .bind(continued_ids)
    .bind(continued_versions)
    .bind(new_ids)
    .bind(new_versions)
    .bind(new_tenants)
    .fetch_one(&mut *tx)
    .await?;
    all_updated(updated, continued)?;
    tx.commit().await?;
    Ok(Applied {
        events: to_apply.len(),
        streams,
        touched,
    })
}

/// The statement of [`mark_processed`], with what to do on a conflict.
macro_rules! mark_processed_sql {
    ($on_conflict:literal) => {
        concat!(
            "with fresh as (
                 insert into processed_events (projection, event_id, position)
                 select $1, * from unnest($2::uuid[], $3::bigint[]) ",
            $on_conflict,
            " returning event_id
             ), applied as (
                 select stream_id, version from stream_versions
                  where projection = $1 and stream_id = any($4)
             )
             select event_id, null::bigint from fresh
             union all
             select stream_id, version from applied"
        )
    };
}

/// What [`mark_processed`] found.
struct Marked {
    /// The events not processed before.
    fresh: HashSet<Uuid>,
    /// The version the projection had applied of each of the events' streams it has seen,
    /// as of the statement's start (no lock: see the gap filling in [`try_apply`]).
    applied: HashMap<Uuid, i64>,
}

/// Whether some of the events marked may have been processed before.
#[derive(Clone, Copy)]
enum Duplicates {
    /// Rarely (a batch of new deliveries): a plain insert, which costs PostgreSQL about half
    /// of one that skips conflicts, and fails with a unique violation if any was.
    Unexpected,
    /// Likely (a batch that met a duplicate; predecessors read from the store): conflicts are
    /// skipped, and only the events inserted come back as fresh.
    Expected,
}

/// Records `events` as processed by `projection` and reads the versions applied of their
/// streams, in one round trip.
async fn mark_processed(
    tx: &mut PgConnection,
    projection: &str,
    events: &[Envelope],
    duplicates: Duplicates,
) -> Result<Marked, sqlx::Error> {
    // An event twice in one batch (delivered and fed, or delivered twice) is marked once, so
    // that only events processed by earlier batches make the plain insert fail.
    let mut seen = HashSet::with_capacity(events.len());
    let (ids, positions): (Vec<Uuid>, Vec<i64>) = events
        .iter()
        .filter(|e| seen.insert(e.event_id))
        .map(|e| (e.event_id, e.position))
        .unzip();
    let streams: Vec<Uuid> = events.iter().map(|e| e.stream_id).collect();
    let statement = match duplicates {
        Duplicates::Unexpected => mark_processed_sql!(""),
        Duplicates::Expected => mark_processed_sql!("on conflict do nothing"),
    };
    // An event id comes back with no version, a stream with its version.
    let rows: Vec<(Uuid, Option<i64>)> = sqlx::query_as(statement)
        .bind(projection)
        .bind(ids)
        .bind(positions)
        .bind(streams)
        .fetch_all(tx)
        .await?;
    let mut marked = Marked {
        fresh: HashSet::new(),
        applied: HashMap::new(),
    };
    for (id, version) in rows {
        if let Some(version) = version {
            marked.applied.insert(id, version);
        } else {
            marked.fresh.insert(id);
        }
    }
    Ok(marked)
}
