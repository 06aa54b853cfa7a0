//! The contract of a projector, and the one way every batch is applied: deduplicated by event
//! id, in order per stream, with gaps filled from the event store, atomically with the
//! projector's writes. The common batch is one statement: marks, rows and versions together.

use std::collections::{HashMap, HashSet};

use futures::future::BoxFuture;
use sqlx::error::ErrorKind;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{Arguments, PgConnection, PgPool, Postgres};
use uuid::Uuid;

use crate::ById;
use crate::copy::CopyRows;
use crate::envelope::{Envelope, Poison};
use crate::progress::Touched;
use eventstore::{EventStore, StreamVersion};

/// Turns events into read-model rows.
pub trait Projector: Send + Sync + 'static {
    /// The name recorded with its processed events (`patients`, …).
    fn name(&self) -> &'static str;

    /// Folds the batch's events and writes the rows they change together with its
    /// bookkeeping, in **one statement** made with [`batch_statement!`] and
    /// [`Bookkeeping::arguments`] (always, even with no rows to write), and says which rows
    /// changed. It may read the rows it needs first. Every event is new to this projection,
    /// and each stream's events are contiguous and in version order (the runtime sees to it),
    /// so a projector only folds.
    fn apply<'a>(&'a self, batch: Batch<'a>) -> Applying<'a>;

    /// An empty copy of the projection's rows in memory, for a rebuild to fold one chunk of
    /// the history into and write in bulk, rather than reading and writing rows batch by
    /// batch.
    fn in_memory(&self) -> Box<dyn InMemory>;

    /// A statement a rebuild runs on the shadow once every chunk is written if a chunk
    /// [changed earlier ones](InMemory::changes_earlier_chunks), to bring their rows up to
    /// date without holding them (the consultations' names); `None` if nothing needs it.
    fn after_chunks(&self) -> Option<&'static str> {
        None
    }
}

/// What a projector is given to apply: one batch, borrowed from the runtime.
pub struct Batch<'a> {
    /// Where to write. Not always in a transaction: for a batch of fresh events that continue
    /// the versions applied, the projector's statement is the batch's only write and its own
    /// transaction, so a failure leaves nothing behind.
    pub conn: &'a mut PgConnection,
    pub events: &'a [Envelope],
    /// The runtime's marks and versions, which the projector's statement writes too.
    pub bookkeeping: &'a Bookkeeping,
}

/// What [`Projector::apply`] returns: the rows the batch changed, once they are written.
pub type Applying<'a> = BoxFuture<'a, Result<Vec<Touched>, ApplyError>>;

/// What [`InMemory::load`] returns: done once the rows are read back.
pub type Loading<'a> = BoxFuture<'a, Result<(), sqlx::Error>>;

/// A projection's rows of one chunk of a rebuild held in memory, folded by the same code as
/// the live batches.
pub trait InMemory: Send {
    /// Reads back from the shadow schema what earlier chunks wrote and this one needs: the
    /// rows of the streams it continues, and anything else folding reads (names, say).
    fn load<'a>(&'a mut self, conn: &'a mut PgConnection, chunk: &'a Chunk<'a>) -> Loading<'a>;

    /// Folds one event; the events of a stream come once each, in version order.
    fn fold(&mut self, event: &Envelope);

    /// Whether the chunk changed what rows of earlier chunks show, so that
    /// [`Projector::after_chunks`] must run.
    fn changes_earlier_chunks(&self) -> bool {
        false
    }

    /// The rows, encoded for the projection's tables, each table's replacing the rows
    /// [`InMemory::load`] read from it.
    fn into_rows(self: Box<Self>) -> Vec<CopyRows>;
}

/// The events of one chunk of a rebuild that a projection receives, and the streams among
/// them that earlier chunks began: those whose first event here is past version 1.
pub struct Chunk<'a> {
    pub events: Vec<&'a Envelope>,
    continued: HashSet<Uuid>,
}

impl<'a> Chunk<'a> {
    /// `events` in store order.
    pub fn new(events: Vec<&'a Envelope>) -> Self {
        let mut first: ById<i64> = ById::default();
        for event in &events {
            first.entry(event.stream_id).or_insert(event.version);
        }
        let continued = first
            .into_iter()
            .filter(|(_, version)| *version > 1)
            .map(|(id, _)| id)
            .collect();
        Self { events, continued }
    }

    /// Whether earlier chunks began `stream`.
    pub fn continues(&self, stream: Uuid) -> bool {
        self.continued.contains(&stream)
    }

    /// The streams earlier chunks began, sorted, to bind as an array.
    pub fn continued(&self) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = self.continued.iter().copied().collect();
        ids.sort_unstable();
        ids
    }
}

/// The start of a batch's one write statement: the runtime's bookkeeping as common table
/// expressions, bound to `$1`–`$9` by [`Bookkeeping::arguments`], followed by the projector's
/// own (`, rows as (…) …`, its parameters from `$10`) and its final statement.
///
/// - `marked` records the events as processed, with a plain insert: one processed before
///   fails the statement with a unique violation.
/// - `versions_continued` moves each continued stream's version on only from the version
///   the batch was built on; `versions_new` inserts the new streams' versions with their
///   tenant (whose rows the queries show to that tenant only), which fails on
///   the key if a stream has one after all, and a null version for every continued stream
///   whose version moved (or went) meanwhile, which fails on `not null`. The statement
///   commits only if the batch was built on what is there.
#[macro_export]
macro_rules! batch_statement {
    ($projector:literal) => {
        concat!(
            "with marked as (
                 insert into processed_events (projection, event_id, position)
                 select $1, * from unnest($2::uuid[], $3::bigint[])
             ), versions_continued as (
                 update stream_versions s set version = c.version
                   from unnest($6::uuid[], $7::bigint[], $8::bigint[])
                        as c(stream_id, applied, version)
                  where s.projection = $1 and s.stream_id = c.stream_id
                    and s.version = c.applied
                 returning s.stream_id
             ), versions_new as (
                 insert into stream_versions (projection, stream_id, version, tenant_id)
                 select $1, * from unnest($4::uuid[], $5::bigint[], $9::text[])
                 union all
                 select $1, c.stream_id, null::bigint, null::text
                   from unnest($6::uuid[]) as c(stream_id)
                  where c.stream_id not in (select stream_id from versions_continued)
             )",
            $projector
        )
    };
}
pub use batch_statement;

/// What the runtime writes with a projector's rows, in the same statement: the events to
/// mark processed, and the stream versions the batch reaches.
#[derive(Debug, Default)]
pub struct Bookkeeping {
    projection: &'static str,
    /// Marked in the statement; empty when the batch marked its events first (the careful
    /// path, which skips those processed before).
    marks: Vec<Uuid>,
    positions: Vec<i64>,
    /// Streams without a version row, the version they reach, and their tenant.
    new_ids: Vec<Uuid>,
    new_versions: Vec<i64>,
    new_tenants: Vec<String>,
    /// Streams with one, the version the batch was built on, and the one it reaches.
    continued_ids: Vec<Uuid>,
    continued_from: Vec<i64>,
    continued_to: Vec<i64>,
}

impl Bookkeeping {
    fn new(projection: &'static str) -> Self {
        Self {
            projection,
            ..Self::default()
        }
    }

    fn mark(&mut self, event: &Envelope) {
        self.marks.push(event.event_id);
        self.positions.push(event.position);
    }

    /// Records that `stream` (of `tenant`) reaches `version`, from `applied` (none: no
    /// version row).
    fn stream(&mut self, stream: Uuid, applied: Option<i64>, version: i64, tenant: &str) {
        if let Some(applied) = applied {
            self.continued_ids.push(stream);
            self.continued_from.push(applied);
            self.continued_to.push(version);
        } else {
            self.new_ids.push(stream);
            self.new_versions.push(version);
            self.new_tenants.push(tenant.to_owned());
        }
    }

    fn streams(&self) -> Vec<(Uuid, i64)> {
        let new = self.new_ids.iter().zip(&self.new_versions);
        let continued = self.continued_ids.iter().zip(&self.continued_to);
        new.chain(continued).map(|(id, v)| (*id, *v)).collect()
    }

    /// The arguments `$1`–`$9` of a [`batch_statement!`]; the projector adds its own.
    pub fn arguments(&self) -> Result<PgArguments, sqlx::Error> {
        let mut arguments = PgArguments::default();
        bind(&mut arguments, self.projection)?;
        bind(&mut arguments, &self.marks)?;
        bind(&mut arguments, &self.positions)?;
        bind(&mut arguments, &self.new_ids)?;
        bind(&mut arguments, &self.new_versions)?;
        bind(&mut arguments, &self.continued_ids)?;
        bind(&mut arguments, &self.continued_from)?;
        bind(&mut arguments, &self.continued_to)?;
        bind(&mut arguments, &self.new_tenants)?;
        Ok(arguments)
    }
}

/// Each stream's tenant, from its events.
fn tenants_of<'e>(events: impl IntoIterator<Item = &'e Envelope>) -> HashMap<Uuid, &'e str> {
    events
        .into_iter()
        .map(|e| (e.stream_id, e.tenant_id.as_str()))
        .collect()
}

/// Adds the next parameter of a statement.
pub fn bind<'t, T>(arguments: &mut PgArguments, value: T) -> Result<(), sqlx::Error>
where
    T: sqlx::Encode<'t, Postgres> + sqlx::Type<Postgres>,
{
    arguments.add(value).map_err(sqlx::Error::Encode)
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
    select: impl sqlx::SqlSafeStr,
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

/// What a projection with one row per stream (patients, physicians) writes for a batch: the
/// rows `events` continue, read with `select` ([`load_continued`]), folded with `fold` (which
/// answers the stream whose row an event changed), and each changed row with whether it was
/// read from the table (an update) or is new (an insert).
pub async fn fold_stream_rows<R>(
    conn: &mut PgConnection,
    events: &[Envelope],
    select: impl sqlx::SqlSafeStr,
    kind: &'static str,
    id: fn(&R) -> Uuid,
    fold: fn(&mut ById<R>, &Envelope) -> Option<Uuid>,
) -> Result<(Vec<Touched>, Vec<(R, bool)>), sqlx::Error>
where
    R: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin,
{
    let existing: Vec<R> = load_continued(conn, events, select).await?;
    let stored: HashSet<Uuid> = existing.iter().map(id).collect();
    let mut rows: ById<R> = existing.into_iter().map(|row| (id(&row), row)).collect();
    let changed = events.iter().filter_map(|e| fold(&mut rows, e)).collect();
    let touched = Touched::rows(kind, changed);
    let written = touched
        .iter()
        .filter_map(|t| rows.remove(&t.id).map(|row| (row, stored.contains(&t.id))))
        .collect();
    Ok((touched, written))
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

/// One column of the rows a projector writes (each with whether it was loaded), to bind as
/// an array.
pub fn column<'r, R, T>(rows: &[(&'r R, bool)], field: impl Fn(&'r R) -> T) -> Vec<T> {
    rows.iter().map(|(row, _)| field(row)).collect()
}

/// One field of each of `rows`, to bind as an array.
pub fn each<'r, R, T>(rows: &[&'r R], field: impl Fn(&'r R) -> T) -> Vec<T> {
    rows.iter().map(|row| field(row)).collect()
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
    match apply_at_once(read, projector, events).await? {
        Some(applied) => Ok(applied),
        None => apply_carefully(read, store, projector, events).await,
    }
}

/// Applies a batch in one statement (the projector's, carrying the marks and versions) when
/// the batch is the common case: fresh events, each stream's contiguous and continuing the
/// version applied. A single statement is its own transaction, so there is no `begin` or
/// `commit` to send, and a batch of new streams costs one round trip in all. `None` when the
/// batch is not that case (some events processed before, a gap, old news, a race), and
/// nothing was written: the careful path takes it.
async fn apply_at_once(
    read: &PgPool,
    projector: &dyn Projector,
    events: &[Envelope],
) -> Result<Option<Applied>, ApplyError> {
    // An event twice in one batch (delivered and fed, or delivered twice) is applied once.
    let mut seen = HashSet::with_capacity(events.len());
    let mut events: Vec<&Envelope> = events.iter().filter(|e| seen.insert(e.event_id)).collect();
    events.sort_by_key(|e| (e.stream_id, e.version));
    // Each stream's first and last version in the batch.
    let mut streams: Vec<(Uuid, i64, i64)> = Vec::new();
    for event in &events {
        match streams.last_mut() {
            Some((stream, _, last)) if *stream == event.stream_id => {
                if event.version != *last + 1 {
                    return Ok(None); // a gap within the batch
                }
                *last = event.version;
            }
            _ => streams.push((event.stream_id, event.version, event.version)),
        }
    }
    let mut conn = read.acquire().await?;
    // A stream that starts in the batch has no version row: nothing to read. The others must
    // be exactly one version behind their first event here. Read without a lock: once a
    // stream's version is the one before an event this batch holds, only a transaction that
    // applies that event can move it, and its mark and ours collide.
    let continued: Vec<Uuid> = streams
        .iter()
        .filter(|(_, first, _)| *first > 1)
        .map(|(id, _, _)| *id)
        .collect();
    let applied: HashMap<Uuid, i64> = if continued.is_empty() {
        HashMap::new()
    } else {
        sqlx::query_as(
            "select stream_id, version from stream_versions
              where projection = $1 and stream_id = any($2)",
        )
        .bind(projector.name())
        .bind(&continued)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect()
    };
    let tenants = tenants_of(events.iter().copied());
    let mut bookkeeping = Bookkeeping::new(projector.name());
    for &(stream, first, last) in &streams {
        let before = (first > 1).then_some(first - 1);
        if applied.get(&stream).copied() != before {
            return Ok(None); // a gap before the batch, or old news
        }
        bookkeeping.stream(stream, before, last, tenants[&stream]);
    }
    for event in &events {
        bookkeeping.mark(event);
    }
    // Position order is version order within a stream, and the order things happened across
    // streams (a patient is registered before a consultation names them).
    let mut to_apply: Vec<Envelope> = events.into_iter().cloned().collect();
    to_apply.sort_by_key(|e| e.position);
    match projector
        .apply(Batch {
            conn: &mut conn,
            events: &to_apply,
            bookkeeping: &bookkeeping,
        })
        .await
    {
        Ok(touched) => Ok(Some(Applied {
            events: to_apply.len(),
            streams: bookkeeping.streams(),
            touched,
        })),
        // The statement failed whole: an event processed before, a stream's version moved
        // or present after all, or another batch of the same streams at the same moment.
        Err(ApplyError::Database(error)) if built_on_stale_state(&error) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Whether a batch statement failed because the batch was not built on what is there (see
/// [`batch_statement!`]), or deadlocked with another batch of the same events and streams.
fn built_on_stale_state(error: &sqlx::Error) -> bool {
    error.as_database_error().is_some_and(|e| {
        matches!(
            e.kind(),
            ErrorKind::UniqueViolation | ErrorKind::NotNullViolation
        ) || e.code().as_deref() == Some(DEADLOCK_DETECTED)
    })
}

/// PostgreSQL's SQLSTATE for a deadlock it broke by failing one transaction.
const DEADLOCK_DETECTED: &str = "40P01";

/// Applies a batch that may hold events processed before, old news or gaps, in one
/// transaction: mark first (skipping those processed before) and read the versions, then
/// fill the gaps from the store, then the projector's statement with the versions.
async fn apply_carefully(
    read: &PgPool,
    store: &EventStore,
    projector: &dyn Projector,
    events: &[Envelope],
) -> Result<Applied, ApplyError> {
    let name = projector.name();
    let mut tx = read.begin().await?;
    let Marked { fresh, applied } = mark_processed(&mut tx, name, events).await?;
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
        let marked = mark_processed(&mut tx, name, &filled).await?;
        if filled.iter().any(|e| !marked.fresh.contains(&e.event_id)) {
            return Err(ApplyError::Raced);
        }
        to_apply.extend(filled);
    }
    to_apply.sort_by_key(|e| e.position);

    // The events are marked already; the statement writes the versions, each continued one
    // only from the version read above (see `batch_statement!`).
    let tenants = tenants_of(&to_apply);
    let mut bookkeeping = Bookkeeping::new(name);
    for (&stream, &version) in &versions {
        bookkeeping.stream(
            stream,
            applied.get(&stream).copied(),
            version,
            tenants[&stream],
        );
    }
    let touched = match projector
        .apply(Batch {
            conn: &mut tx,
            events: &to_apply,
            bookkeeping: &bookkeeping,
        })
        .await
    {
        Err(ApplyError::Database(error)) if is_not_null_violation(&error) => {
            return Err(ApplyError::Raced); // a version moved since it was read
        }
        touched => touched?,
    };
    tx.commit().await?;
    Ok(Applied {
        events: to_apply.len(),
        streams: bookkeeping.streams(),
        touched,
    })
}

fn is_not_null_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.kind() == ErrorKind::NotNullViolation)
}

/// What [`mark_processed`] found.
struct Marked {
    /// The events not processed before.
    fresh: HashSet<Uuid>,
    /// The version the projection had applied of each of the events' streams it has seen,
    /// as of the statement's start (no lock: see the gap filling in [`apply_carefully`]).
    applied: HashMap<Uuid, i64>,
}

/// Records `events` as processed by `projection`, skipping those processed before, and reads
/// the versions applied of their streams, in one round trip.
async fn mark_processed(
    tx: &mut PgConnection,
    projection: &str,
    events: &[Envelope],
) -> Result<Marked, sqlx::Error> {
    // An event twice in one batch (delivered and fed, or delivered twice) is marked once.
    let mut seen = HashSet::with_capacity(events.len());
    let (ids, positions): (Vec<Uuid>, Vec<i64>) = events
        .iter()
        .filter(|e| seen.insert(e.event_id))
        .map(|e| (e.event_id, e.position))
        .unzip();
    let streams: Vec<Uuid> = events.iter().map(|e| e.stream_id).collect();
    // An event id comes back with no version, a stream with its version.
    let rows: Vec<(Uuid, Option<i64>)> = sqlx::query_as(
        "with fresh as (
             insert into processed_events (projection, event_id, position)
             select $1, * from unnest($2::uuid[], $3::bigint[])
             on conflict do nothing
             returning event_id
         ), applied as (
             select stream_id, version from stream_versions
              where projection = $1 and stream_id = any($4)
         )
         select event_id, null::bigint from fresh
         union all
         select stream_id, version from applied",
    )
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
