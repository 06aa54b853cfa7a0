//! Rebuilding read models from the event store while the service keeps running: fold the
//! stored events into memory with the projectors' own code a chunk at a time, copying each
//! chunk's rows into a shadow schema in bulk before the next (what a chunk continues is read
//! back from the shadow, so memory does not grow with the store), catch up batch by batch as
//! the live projectors do, then, under a lock that pauses only the live projectors' writes,
//! catch up the last events and swap in one transaction. Rebuilding every
//! projection swaps whole schemas by renaming them (instant, whatever the size); rebuilding
//! some moves their tables across and copies their bookkeeping rows. Queries keep reading the
//! old rows until the swap commits. `--verify` builds the same shadow and compares instead.

use std::time::Duration;

use crate::projections_of_event;
use eventstore::read::Fence;
use eventstore::scan::{ScanError, ScanPage};
use eventstore::{EventStore, GlobalCheckpoint, RecordedEvent, Stored};
use futures::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgConnection, PgPool, Postgres};
use tokio::sync::SemaphorePermit;
use uuid::Uuid;

use crate::ById;
use crate::copy::CopyRows;
use crate::envelope::Envelope;
use crate::progress;
use crate::projector::{ApplyError, Chunk, InMemory, Projector, apply_batch};
use crate::queues::QUEUES;
use crate::schema;

/// Events read from the store per page by the catch-up, which applies each page as the live
/// projectors apply a batch.
const PAGE: i64 = 5000;
/// Events per page of the bulk load's scan: each page is decoded on a thread of its own while
/// the one before is folded.
const BULK_PAGE: usize = 20_000;
/// Tables copied into the shadow at once.
const WRITERS: usize = 4;
/// Connections of the shadow's pool: the copies', and a few for index builds beside them.
const SHADOW_CONNECTIONS: usize = WRITERS + 2;
/// Events a rebuild folds in memory at most before writing them out, unless told otherwise
/// (`hap rebuild --chunk-events`): about 60 MB of rows, and few enough round trips to the
/// shadow per million events that reading rows back costs little (docs/design.md, Rebuild).
pub const CHUNK_EVENTS: usize = 100_000;

/// The tables each projection owns (besides its rows in the bookkeeping tables).
fn tables_of(projection: &str) -> &'static [&'static str] {
    match projection {
        crate::PATIENTS => &["patients"],
        crate::PHYSICIANS => &["physicians"],
        crate::CONSULTATIONS => &["consultations", "people"],
        crate::RECORDS => &["records"],
        _ => &[],
    }
}

/// Every projection name, in the order of the queues.
pub fn all_projections() -> Vec<&'static str> {
    QUEUES.iter().map(|q| (q.projector)().name()).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("unknown projection {0:?} (known: patients, physicians, consultations, records)")]
    UnknownProjection(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Scan(#[from] ScanError),
}

/// One difference `--verify` found: rows only in the live table, and only in the rebuilt one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub table: &'static str,
    pub only_live: i64,
    pub only_rebuilt: i64,
}

/// What a rebuild did.
#[derive(Debug, Clone)]
pub struct Report {
    pub events: u64,
    pub elapsed: Duration,
    /// Empty after a rebuild; the differences found by a verification.
    pub differences: Vec<Difference>,
    /// The process's peak resident memory so far, in bytes, where the system tells it.
    pub peak_rss: Option<u64>,
}

/// The process's peak resident set size (`getrusage`'s `ru_maxrss`, in KiB on Linux).
fn peak_rss() -> Option<u64> {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).ok()?;
    u64::try_from(usage.max_rss()).ok().map(|kib| kib * 1024)
}

/// Rebuilds (or, with `verify`, checks) `projections` of the read model in `live_schema`,
/// folding at most `chunk_events` events in memory at a time.
pub async fn rebuild(
    store: &EventStore,
    read_url: &str,
    live_schema: &str,
    projections: &[&str],
    verify: bool,
    show_progress: bool,
    chunk_events: usize,
) -> Result<Report, RebuildError> {
    let projectors: Vec<Box<dyn Projector>> = projections
        .iter()
        .map(|name| {
            QUEUES
                .iter()
                .map(|q| (q.projector)())
                .find(|p| p.name() == *name)
                .ok_or_else(|| RebuildError::UnknownProjection((*name).to_owned()))
        })
        .collect::<Result<_, _>>()?;
    let started = std::time::Instant::now();
    let shadow_schema = format!("{live_schema}_rebuild");
    let mut admin = PgConnection::connect(read_url).await?;
    // A shadow left by an interrupted rebuild is stale: start over.
    execute(
        &mut admin,
        &format!("drop schema if exists {shadow_schema} cascade"),
    )
    .await?;
    let shadow = connect_shadow(read_url, &shadow_schema).await?;
    schema::migrate(&shadow).await?;

    let bar = if show_progress {
        // Counting reads the whole table: only a bar someone sees pays for it.
        let total: i64 = sqlx::query_scalar("select count(*) from events")
            .fetch_one(store.pool())
            .await?;
        progress_bar(total)
    } else {
        ProgressBar::hidden()
    };
    let mut build = ShadowBuild {
        store,
        shadow: &shadow,
        projectors: &projectors,
        chunk_events: chunk_events.max(1),
        checkpoint: GlobalCheckpoint::START,
        bar,
    };
    let mut events = build.bulk_load().await?;
    events += build.catch_up(Fence::GapSafe).await?;

    // The final stretch, with the live projectors' writes paused: nothing they apply can be
    // missing from the shadow after this. It reads every committed event, even those the
    // gap-safe read still holds back behind an older running transaction: the live projectors
    // may have applied them already (fed by their own process), and the swap must not take
    // them away. The older transaction's events reach the new tables the way any event does.
    let mut tx = admin.begin().await?;
    execute(
        &mut tx,
        &format!("lock table {live_schema}.processed_events in exclusive mode"),
    )
    .await?;
    events += build.catch_up(Fence::None).await?;
    build.bar.finish_and_clear();

    shadow.close().await;

    let mut differences = vec![];
    if verify {
        for projector in &projectors {
            for table in tables_of(projector.name()) {
                let difference = compare(&mut tx, live_schema, &shadow_schema, table).await?;
                if difference.only_live + difference.only_rebuilt > 0 {
                    differences.push(difference);
                }
            }
        }
        tx.rollback().await?;
    } else {
        if projectors.len() == QUEUES.len() {
            swap_schemas(&mut tx, live_schema, &shadow_schema).await?;
        } else {
            for projector in &projectors {
                move_tables(&mut tx, live_schema, &shadow_schema, projector.name()).await?;
            }
        }
        // Delivered at commit, to the running services' caches of this read model.
        sqlx::query("select pg_notify($1, $2)")
            .bind(progress::REPLACED_CHANNEL)
            .bind(live_schema)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    execute(
        &mut admin,
        &format!("drop schema if exists {shadow_schema} cascade"),
    )
    .await?;
    admin.close().await.ok();
    Ok(Report {
        events,
        elapsed: started.elapsed(),
        differences,
        peak_rss: peak_rss(),
    })
}

/// One projection's chunk being rebuilt in memory, with the last version it folded of each
/// stream of the chunk.
struct Folding {
    name: &'static str,
    rows: Box<dyn InMemory>,
    /// Each stream's last version folded, and its tenant.
    versions: ById<(i64, String)>,
    /// The streams earlier chunks began, whose versions the shadow holds already.
    continued: Vec<Uuid>,
}

/// One projection's stream versions of a chunk, in the order of the table's primary key
/// `(stream_id, projection)`, replacing those of the streams earlier chunks began.
fn stream_versions(
    projection: &'static str,
    versions: ById<(i64, String)>,
    continued: Vec<Uuid>,
) -> CopyRows {
    let mut versions: Vec<(Uuid, (i64, String))> = versions.into_iter().collect();
    versions.sort_unstable_by_key(|(id, _)| *id);
    let copy = CopyRows::new(
        "stream_versions",
        "stream_id, projection, version, tenant_id",
    );
    let mut copy = copy.replacing(
        "stream_id",
        // A projection name is one of HAP's constants.
        &format!("projection = '{projection}'"),
        continued,
    );
    for (stream, (version, tenant)) in &versions {
        copy.row(&[stream, &projection, version, tenant]);
    }
    copy
}

/// A rebuild's work on its shadow schema: where it reads and writes, and how far it has read.
struct ShadowBuild<'a> {
    store: &'a EventStore,
    shadow: &'a PgPool,
    projectors: &'a [Box<dyn Projector>],
    /// Events folded in memory at most before they are written to the shadow.
    chunk_events: usize,
    /// The last event read.
    checkpoint: GlobalCheckpoint,
    bar: ProgressBar,
}

impl ShadowBuild<'_> {
    /// Folds every event after `checkpoint` in chunks of about `chunk_events`, each folded in
    /// memory and copied into the shadow before the next is folded, so that memory holds one
    /// chunk however long the history is: what a chunk continues (a row an earlier chunk wrote,
    /// a name it set) is read back from the shadow. Returns how many events were read. The
    /// next pages are read and decoded (on other threads) while a chunk is folded and written.
    async fn bulk_load(&mut self) -> Result<u64, RebuildError> {
        let Self {
            store,
            shadow,
            projectors,
            ..
        } = *self;
        let started = std::time::Instant::now();
        // The tables are loaded without their secondary indexes: building an index over loaded
        // rows costs a fraction of growing it row by row (docs/benchmarks.md, 2026-12-02).
        // Keys stay, and the indexes a chunk reads through: chunks look rows up by them.
        let indexes = drop_secondary_indexes(shadow).await?;
        let writers = &Writers {
            pool: shadow,
            slots: tokio::sync::Semaphore::new(SHADOW_CONNECTIONS),
        };
        // The scan reads ahead on its own while the pages before are opened and decoded (each
        // in a task of its own, on other threads than the fold) and folded here.
        let decoded = store
            .scan(self.checkpoint, BULK_PAGE)
            .await?
            .map(|page| {
                let store = store.clone();
                async move {
                    let page = page?;
                    tokio::spawn(async move {
                        let opened = open_scanned(&store, &page).await?;
                        tokio::task::spawn_blocking(move || decode_scanned(&page, &opened))
                            .await
                            .expect("decoding does not panic")
                    })
                    .await
                    .expect("opening does not panic")
                }
            })
            // A whole chunk's pages and one more are opened and decoded while a chunk is
            // folded and written, so that the next can be folded as soon as this one is written
            // (the scan reads further ahead on its own).
            .buffered(self.chunk_events.div_ceil(BULK_PAGE) + 1);
        let mut decoded = std::pin::pin!(decoded);
        let mut read = 0;
        let mut chunk = Vec::new();
        // By projector: whether a chunk changed what earlier ones wrote.
        let mut after_chunks = vec![false; projectors.len()];
        loop {
            let page = decoded.next().await.transpose()?;
            if let Some(page) = &page {
                read += page.events;
                self.bar.inc(page.events);
                if let Some(last) = page.last {
                    self.checkpoint = last;
                }
            }
            let ended = page.is_none();
            chunk.extend(page.into_iter().flat_map(|page| page.envelopes));
            // Whole chunks, and at the end what is left.
            let whole = if ended {
                chunk.len()
            } else {
                chunk.len() / self.chunk_events * self.chunk_events
            };
            for part in chunk[..whole].chunks(self.chunk_events) {
                let changed = write_chunk(projectors, writers, part).await?;
                for (after, changed) in after_chunks.iter_mut().zip(changed) {
                    *after |= changed;
                }
            }
            chunk.drain(..whole);
            if ended {
                break;
            }
        }
        tracing::debug!(events = read, elapsed = ?started.elapsed(), "rebuild: history written");

        self.bar.set_message("indexing");
        let due = projectors.iter().zip(after_chunks).filter(|(_, due)| *due);
        for statement in due.filter_map(|(p, _)| p.after_chunks()) {
            let (_slot, mut connection) = writers.connection().await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(&mut *connection)
                .await?;
        }
        futures::future::try_join_all(indexes.iter().map(|index| writers.execute(index))).await?;
        tracing::debug!(elapsed = ?started.elapsed(), "rebuild: rows indexed");
        self.bar.set_message("");
        Ok(read)
    }

    /// Projects every event after `checkpoint` into the shadow batch by batch, as the live
    /// projectors do; returns how many were read.
    async fn catch_up(&mut self, fence: Fence) -> Result<u64, RebuildError> {
        let Self {
            store,
            shadow,
            projectors,
            ..
        } = *self;
        let mut read = 0;
        loop {
            let page = store.read_all_fenced(self.checkpoint, PAGE, fence).await?;
            let Some(last) = page.last() else {
                return Ok(read);
            };
            self.checkpoint = last.checkpoint();
            let (count, envelopes) = decode_page(page);
            read += count;
            self.bar.inc(count);
            for projector in projectors {
                let mine: Vec<Envelope> = envelopes
                    .iter()
                    .filter(|(_, projections)| projections.contains(&projector.name()))
                    .map(|(e, _)| e.clone())
                    .collect();
                if !mine.is_empty() {
                    apply_batch(shadow, store, projector.as_ref(), &mine).await?;
                }
            }
            if (count as i64) < PAGE {
                return Ok(read);
            }
        }
    }
}

/// The shadow's pool. Nothing but the rebuild touches the shadow, so its connections wait for
/// locks as long as it takes (autovacuum may be at a freshly loaded table when its key is
/// added, and yields only after a second). They commit without waiting for the flush: the
/// swap's commit is synchronous and flushes everything logged before it.
async fn connect_shadow(read_url: &str, shadow_schema: &str) -> Result<PgPool, sqlx::Error> {
    let options = schema::connect_options(read_url, shadow_schema, schema::Plans::ByKey)
        .await?
        .options([("lock_timeout", "0"), ("synchronous_commit", "off")]);
    eventstore::pool::options()
        .max_connections(SHADOW_CONNECTIONS as u32)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await
}

/// The shadow's connections as the bulk load shares them between copies and index builds:
/// each holds a slot, and there are as many slots as connections, so none waits on the pool
/// (whose wait times out) behind a long copy. It waits for a slot instead, however long the
/// copy takes; the pool's timeout is left for a server that does not answer.
struct Writers<'a> {
    pool: &'a PgPool,
    slots: tokio::sync::Semaphore,
}

impl Writers<'_> {
    async fn copy(&self, table: CopyRows) -> Result<(), sqlx::Error> {
        let (_slot, mut connection) = self.connection().await?;
        table.write(&mut connection).await?;
        Ok(())
    }

    async fn execute(&self, statement: &str) -> Result<(), sqlx::Error> {
        let (_slot, mut connection) = self.connection().await?;
        execute(&mut connection, statement).await
    }

    /// A slot, then a connection: the connection goes back to the pool before the slot.
    async fn connection(
        &self,
    ) -> Result<(SemaphorePermit<'_>, PoolConnection<Postgres>), sqlx::Error> {
        let slot = self
            .slots
            .acquire()
            .await
            .expect("the slots are never closed");
        Ok((slot, self.pool.acquire().await?))
    }
}

/// Folds one chunk of events into memory, each projection starting from what it reads back
/// of the streams earlier chunks began, and copies the rows into the shadow (each table's on a
/// connection of its own). Returns, by projector, whether the chunk changed what earlier ones
/// wrote.
async fn write_chunk(
    projectors: &[Box<dyn Projector>],
    writers: &Writers<'_>,
    events: &[(Envelope, &'static [&'static str])],
) -> Result<Vec<bool>, RebuildError> {
    let chunks: Vec<Chunk<'_>> = projectors
        .iter()
        .map(|p| {
            let mine = events
                .iter()
                .filter(|(_, receiving)| receiving.contains(&p.name()))
                .map(|(envelope, _)| envelope)
                .collect();
            Chunk::new(mine)
        })
        .collect();
    let mut folding: Vec<Folding> = futures::future::try_join_all(
        projectors.iter().zip(&chunks).map(|(p, chunk)| async move {
            let mut rows = p.in_memory();
            let (_slot, mut connection) = writers.connection().await?;
            rows.load(&mut connection, chunk).await?;
            Ok::<_, sqlx::Error>(Folding {
                name: p.name(),
                rows,
                versions: ById::default(),
                continued: chunk.continued(),
            })
        }),
    )
    .await?;
    for (projection, chunk) in folding.iter_mut().zip(&chunks) {
        for envelope in &chunk.events {
            projection.rows.fold(envelope);
            match projection.versions.entry(envelope.stream_id) {
                std::collections::hash_map::Entry::Occupied(mut known) => {
                    known.get_mut().0 = envelope.version
                }
                std::collections::hash_map::Entry::Vacant(new) => {
                    new.insert((envelope.version, envelope.tenant_id.clone()));
                }
            }
        }
    }
    drop(chunks);
    let changed = folding
        .iter()
        .map(|f| f.rows.changes_earlier_chunks())
        .collect();
    let encoding = folding.into_iter().map(|f| {
        tokio::task::spawn_blocking(move || {
            let mut tables = f.rows.into_rows();
            tables.push(stream_versions(f.name, f.versions, f.continued));
            tables
        })
    });
    futures::stream::iter(encoding)
        .buffer_unordered(projectors.len())
        .flat_map(|tables| futures::stream::iter(tables.expect("encoding does not panic")))
        .map(|table| writers.copy(table))
        .buffer_unordered(WRITERS)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(changed)
}

/// Indexes a chunk of a bulk load reads rows through, besides the primary keys.
const LOOKUP_INDEXES: &[&str] = &["records_consultation_idx"];

/// Drops the shadow's indexes but its primary keys and [`LOOKUP_INDEXES`]; returns the
/// statements that build them again.
async fn drop_secondary_indexes(shadow: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "select format('drop index %I.%I', i.schemaname, i.indexname), i.indexdef
           from pg_indexes i
          where i.schemaname = current_schema()
            and i.indexname <> all($1)
            and not exists (select 1 from pg_constraint c
                             where c.conname = i.indexname
                               and c.connamespace = current_schema()::regnamespace)",
    )
    .bind(LOOKUP_INDEXES)
    .fetch_all(shadow)
    .await?;
    let mut definitions = Vec::with_capacity(indexes.len());
    for (drop, definition) in indexes {
        execute(&mut *shadow.acquire().await?, &drop).await?;
        definitions.push(definition);
    }
    Ok(definitions)
}

/// The page's size and its events as projectors see them, with the projections that receive
/// each. An event of an unknown type, or one that cannot be decoded, is skipped, as the live
/// projectors dead-letter it: the rebuilt model must match the live one.
fn decode_page(page: Vec<RecordedEvent>) -> (u64, Vec<(Envelope, &'static [&'static str])>) {
    (
        page.len() as u64,
        page.into_iter()
            .filter_map(|recorded| {
                let receiving = projections_of_event(&recorded.event_type)?;
                let envelope = Envelope::from_recorded(recorded).ok()?;
                Some((envelope, receiving))
            })
            .collect(),
    )
}

/// A page of the bulk scan, decoded.
struct Decoded {
    /// Events read, including those no projection takes.
    events: u64,
    /// The checkpoint after the page's last event.
    last: Option<GlobalCheckpoint>,
    envelopes: Vec<(Envelope, &'static [&'static str])>,
}

/// What each event of `page` reads as where that is not as stored: its sealed fields opened
/// (see `eventstore::opener`).
async fn open_scanned(
    store: &EventStore,
    page: &ScanPage,
) -> Result<Vec<Option<String>>, ScanError> {
    let rows = page
        .events()
        .map(|scanned| {
            scanned.map(|s| Stored {
                event_type: s.event_type,
                schema_version: s.schema_version,
                payload: s.payload,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(store.open(&rows).await?)
}

/// `page` decoded, each payload as `opened` says where it does not read as stored.
fn decode_scanned(page: &ScanPage, opened: &[Option<String>]) -> Result<Decoded, ScanError> {
    let mut decoded = Decoded {
        events: page.len() as u64,
        last: None,
        envelopes: Vec::with_capacity(page.len()),
    };
    for (scanned, opened) in page.events().zip(opened) {
        let mut scanned = scanned?;
        if let Some(payload) = opened {
            scanned.payload = payload;
        }
        decoded.last = Some(scanned.checkpoint);
        if let Some(receiving) = projections_of_event(scanned.event_type)
            && let Ok(envelope) = Envelope::from_scanned(&scanned)
        {
            decoded.envelopes.push((envelope, receiving));
        }
    }
    Ok(decoded)
}

/// Puts the shadow schema in the live one's place. Live connections find tables by name
/// through their search path, so their next statement sees the rebuilt tables.
async fn swap_schemas(tx: &mut PgConnection, live: &str, shadow: &str) -> Result<(), sqlx::Error> {
    let old = format!("{live}_old");
    execute(tx, &format!("drop schema if exists {old} cascade")).await?;
    execute(tx, &format!("alter schema {live} rename to {old}")).await?;
    execute(tx, &format!("alter schema {shadow} rename to {live}")).await?;
    execute(tx, &format!("drop schema {old} cascade")).await
}

/// Puts one projection's rebuilt tables in place of the live ones, and its bookkeeping rows.
async fn move_tables(
    tx: &mut PgConnection,
    live: &str,
    shadow: &str,
    projection: &str,
) -> Result<(), sqlx::Error> {
    for table in ["processed_events", "stream_versions"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "delete from {live}.{table} where projection = $1"
        )))
        .bind(projection)
        .execute(&mut *tx)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "insert into {live}.{table} select * from {shadow}.{table} where projection = $1"
        )))
        .bind(projection)
        .execute(&mut *tx)
        .await?;
    }
    for table in tables_of(projection) {
        // The old table and its indexes go before the new one enters, so no names collide.
        execute(tx, &format!("drop table {live}.{table}")).await?;
        execute(
            tx,
            &format!("alter table {shadow}.{table} set schema {live}"),
        )
        .await?;
    }
    Ok(())
}

async fn compare(
    tx: &mut PgConnection,
    live: &str,
    shadow: &str,
    table: &'static str,
) -> Result<Difference, sqlx::Error> {
    let count = |from: &str, minus: &str| {
        format!(
            "select count(*) from (select to_jsonb(t) from {from}.{table} t
                                   except select to_jsonb(t) from {minus}.{table} t) d"
        )
    };
    let only_live: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count(live, shadow)))
        .fetch_one(&mut *tx)
        .await?;
    let only_rebuilt: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count(shadow, live)))
        .fetch_one(&mut *tx)
        .await?;
    Ok(Difference {
        table,
        only_live,
        only_rebuilt,
    })
}

/// Runs a statement built from identifiers HAP made itself (schema and table names).
async fn execute(connection: &mut PgConnection, statement: &str) -> Result<(), sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
        .execute(connection)
        .await
        .map(|_| ())
}

fn progress_bar(total: i64) -> ProgressBar {
    let bar = ProgressBar::new(total.max(0) as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} events, {per_sec}, ETA {eta} {msg}",
        )
        .expect("the template is valid"),
    );
    bar
}
