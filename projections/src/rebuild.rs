//! Rebuilding read models from the event store while the service keeps running: fold every
//! stored event into memory with the projectors' own code and copy the rows into a shadow
//! schema in bulk, catch up batch by batch as the live projectors do, then, under a lock that
//! pauses only the live projectors' writes, catch up the last events and swap in one
//! transaction. Rebuilding every
//! projection swaps whole schemas by renaming them (instant, whatever the size); rebuilding
//! some moves their tables across and copies their bookkeeping rows. Queries keep reading the
//! old rows until the swap commits. `--verify` builds the same shadow and compares instead.

use std::collections::HashMap;
use std::time::Duration;

use crate::projections_of_event;
use eventstore::read::Fence;
use eventstore::scan::{ScanError, ScanPage};
use eventstore::{EventStore, GlobalCheckpoint, RecordedEvent};
use futures::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool, Postgres};
use tokio::sync::SemaphorePermit;
use uuid::Uuid;

use crate::ById;
use crate::copy::CopyRows;
use crate::envelope::Envelope;
use crate::progress;
use crate::projector::{ApplyError, InMemory, Projector, apply_batch};
use crate::queues::QUEUES;
use crate::schema;

/// Events read from the store per page by the catch-up, which applies each page as the live
/// projectors apply a batch.
const PAGE: i64 = 5000;
/// Events per page of the bulk load's scan: each page is decoded on a thread of its own while
/// the one before is folded.
const BULK_PAGE: usize = 20_000;
/// Pages decoded ahead of the one being folded (the scan reads further ahead on its own).
const READ_AHEAD: usize = 4;
/// Tables copied into the shadow at once.
const WRITERS: usize = 4;
/// Connections of the shadow's pool: the copies', and a few for index builds beside them.
const SHADOW_CONNECTIONS: usize = WRITERS + 2;

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
}

/// Rebuilds (or, with `verify`, checks) `projections` of the read model in `live_schema`.
pub async fn rebuild(
    store: &EventStore,
    read_url: &str,
    live_schema: &str,
    projections: &[&str],
    verify: bool,
    show_progress: bool,
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

    let total: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(store.pool())
        .await?;
    let mut build = ShadowBuild {
        store,
        shadow: &shadow,
        projectors: &projectors,
        checkpoint: GlobalCheckpoint::START,
        bar: progress_bar(total, show_progress),
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
    })
}

/// One projection being rebuilt in memory, with the last version it folded of each stream.
struct Folding {
    name: &'static str,
    rows: Box<dyn InMemory>,
    /// Each stream's last version folded, and its tenant.
    versions: ById<(i64, String)>,
}

/// Every projection's stream versions as one table's rows, in the order of its primary key
/// `(stream_id, projection)`, so that the key is built over rows already in order.
fn stream_versions(folded: Vec<(&'static str, ById<(i64, String)>)>) -> CopyRows {
    let mut versions: Vec<(Uuid, &str, i64, String)> = folded
        .into_iter()
        .flat_map(|(name, versions)| {
            versions
                .into_iter()
                .map(move |(id, (v, tenant))| (id, name, v, tenant))
        })
        .collect();
    versions.sort_unstable();
    let mut copy = CopyRows::new(
        "stream_versions",
        "stream_id, projection, version, tenant_id",
    );
    for (stream, projection, version, tenant) in &versions {
        copy.row(&[stream, projection, version, tenant]);
    }
    copy
}

/// A rebuild's work on its shadow schema: where it reads and writes, and how far it has read.
struct ShadowBuild<'a> {
    store: &'a EventStore,
    shadow: &'a PgPool,
    projectors: &'a [Box<dyn Projector>],
    /// The last event read.
    checkpoint: GlobalCheckpoint,
    bar: ProgressBar,
}

impl ShadowBuild<'_> {
    /// Folds every event after `checkpoint` into memory, then copies the rows (and each stream's
    /// version) into the shadow; returns how many events were read. The work is pipelined: the
    /// next pages are read and decoded (on other threads) while one is folded, and each
    /// projection's tables are written as soon as they are encoded.
    async fn bulk_load(&mut self) -> Result<u64, RebuildError> {
        let Self {
            store,
            shadow,
            projectors,
            ..
        } = *self;
        let started = std::time::Instant::now();
        let mut folding: Vec<Folding> = projectors
            .iter()
            .map(|p| Folding {
                name: p.name(),
                rows: p.in_memory(),
                versions: ById::default(),
            })
            .collect();
        // The scan reads ahead on its own while the pages before are decoded (each on a thread
        // of its own) and folded here.
        let decoded = store
            .scan(self.checkpoint, BULK_PAGE)
            .await?
            .map(|page| async move {
                let page = page?;
                tokio::task::spawn_blocking(move || decode_scanned(&page))
                    .await
                    .expect("decoding does not panic")
            })
            .buffered(READ_AHEAD);
        let mut decoded = std::pin::pin!(decoded);
        let mut read = 0;
        while let Some(page) = decoded.next().await {
            let page = page?;
            read += page.events;
            self.bar.inc(page.events);
            if let Some(last) = page.last {
                self.checkpoint = last;
            }
            for (envelope, receiving) in &page.envelopes {
                for projection in folding.iter_mut().filter(|f| receiving.contains(&f.name)) {
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
        }
        tracing::debug!(events = read, elapsed = ?started.elapsed(), "rebuild: history folded");

        self.bar.set_message("writing the rows");
        // The tables are loaded bare: building an index over loaded rows costs a fraction of
        // growing it row by row (docs/benchmarks.md, 2026-12-02). Each table's indexes are
        // built as soon as its rows are in, while other tables are still being copied.
        let indexes = std::sync::Mutex::new(drop_indexes(shadow).await?);
        let indexes = &indexes;
        let writers = &Writers {
            pool: shadow,
            slots: tokio::sync::Semaphore::new(SHADOW_CONNECTIONS),
        };
        let (rows, versions): (Vec<_>, Vec<_>) = folding
            .into_iter()
            .map(|f| (f.rows, (f.name, f.versions)))
            .unzip();
        let encoding = rows
            .into_iter()
            .map(|rows| tokio::task::spawn_blocking(move || rows.into_rows()))
            .chain([tokio::task::spawn_blocking(move || {
                vec![stream_versions(versions)]
            })]);
        futures::stream::iter(encoding)
            .buffer_unordered(projectors.len() + 1)
            .flat_map(|tables| futures::stream::iter(tables.expect("encoding does not panic")))
            .map(|table| async move {
                let name = table.table();
                writers.copy(table).await?;
                // Each table is one copy (all stream versions are one), so its rows are all in.
                let of_table = indexes.lock().expect("no panic").remove(name);
                of_table.unwrap_or_default().build(writers).await
            })
            .buffer_unordered(WRITERS)
            .try_collect::<Vec<()>>()
            .await?;
        // The indexes of tables that had no rows to copy.
        let left = std::mem::take(&mut *indexes.lock().expect("no panic"));
        for of_table in left.into_values() {
            of_table.build(writers).await?;
        }
        tracing::debug!(elapsed = ?started.elapsed(), "rebuild: rows written and indexed");
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
    PgPoolOptions::new()
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

/// The statements that build one table's indexes.
#[derive(Default)]
struct TableIndexes {
    primary_key: Option<String>,
    secondary: Vec<String>,
}

impl TableIndexes {
    /// Builds the primary key, then the other indexes side by side, each on a connection of
    /// its own (adding the key locks the table, so it goes alone).
    async fn build(self, writers: &Writers<'_>) -> Result<(), sqlx::Error> {
        if let Some(key) = &self.primary_key {
            writers.execute(key).await?;
        }
        futures::future::try_join_all(self.secondary.iter().map(|d| writers.execute(d))).await?;
        Ok(())
    }
}

/// Drops the shadow's indexes, primary keys included; returns the statements that build them
/// again, by table.
async fn drop_indexes(shadow: &PgPool) -> Result<HashMap<String, TableIndexes>, sqlx::Error> {
    let indexes: Vec<(String, bool, String, String)> = sqlx::query_as(
        "select c.conrelid::regclass::text, true,
                format('alter table %s drop constraint %I', c.conrelid::regclass, c.conname),
                format('alter table %s add constraint %I %s', c.conrelid::regclass, c.conname,
                       pg_get_constraintdef(c.oid))
           from pg_constraint c
          where c.connamespace = current_schema()::regnamespace and c.contype = 'p'
         union all
         select i.tablename::text, false, format('drop index %I.%I', i.schemaname, i.indexname),
                i.indexdef
           from pg_indexes i
          where i.schemaname = current_schema()
            and not exists (select 1 from pg_constraint c
                             where c.conname = i.indexname
                               and c.connamespace = current_schema()::regnamespace)",
    )
    .fetch_all(shadow)
    .await?;
    let mut by_table: HashMap<String, TableIndexes> = HashMap::new();
    for (table, primary_key, drop, definition) in indexes {
        execute(&mut *shadow.acquire().await?, &drop).await?;
        let of_table = by_table.entry(table).or_default();
        if primary_key {
            of_table.primary_key = Some(definition);
        } else {
            of_table.secondary.push(definition);
        }
    }
    Ok(by_table)
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

fn decode_scanned(page: &ScanPage) -> Result<Decoded, ScanError> {
    let mut decoded = Decoded {
        events: page.len() as u64,
        last: None,
        envelopes: Vec::with_capacity(page.len()),
    };
    for scanned in page.events() {
        let scanned = scanned?;
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

fn progress_bar(total: i64, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total.max(0) as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} events, {per_sec}, ETA {eta} {msg}",
        )
        .expect("the template is valid"),
    );
    bar
}
