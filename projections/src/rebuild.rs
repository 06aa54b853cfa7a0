//! Rebuilding read models from the event store while the service keeps running: project every
//! stored event into a shadow schema, catch up, then, under a lock that pauses only the live
//! projectors' writes, catch up the last events and swap in one transaction. Rebuilding every
//! projection swaps whole schemas by renaming them (instant, whatever the size); rebuilding
//! some moves their tables across and copies their bookkeeping rows. Queries keep reading the
//! old rows until the swap commits. `--verify` builds the same shadow and compares instead.

use std::time::Duration;

use domain::event::route;
use eventstore::{EventStore, GlobalCheckpoint};
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::{Connection, PgConnection, PgPool};

use crate::envelope::Envelope;
use crate::projector::{ApplyError, Projector, apply_batch};
use crate::queues::QUEUES;
use crate::schema;

/// Events read from the store per page.
const PAGE: i64 = 5000;

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
    let shadow = schema::connect(read_url, &shadow_schema, 4).await?;
    schema::migrate(&shadow).await?;

    let total: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(store.pool())
        .await?;
    let bar = progress_bar(total, show_progress);
    let mut checkpoint = GlobalCheckpoint::START;
    let mut events = catch_up(store, &shadow, &projectors, &mut checkpoint, &bar).await?;

    // The final stretch, with the live projectors' writes paused: nothing they apply can be
    // missing from the shadow after this.
    let mut tx = admin.begin().await?;
    execute(
        &mut tx,
        &format!("lock table {live_schema}.processed_events in exclusive mode"),
    )
    .await?;
    events += catch_up(store, &shadow, &projectors, &mut checkpoint, &bar).await?;
    bar.finish_and_clear();

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
    } else if projectors.len() == QUEUES.len() {
        swap_schemas(&mut tx, live_schema, &shadow_schema).await?;
        tx.commit().await?;
    } else {
        for projector in &projectors {
            move_tables(&mut tx, live_schema, &shadow_schema, projector.name()).await?;
        }
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

/// Projects every event after `checkpoint` into the shadow; returns how many were read.
async fn catch_up(
    store: &EventStore,
    shadow: &PgPool,
    projectors: &[Box<dyn Projector>],
    checkpoint: &mut GlobalCheckpoint,
    bar: &ProgressBar,
) -> Result<u64, RebuildError> {
    let mut read = 0;
    loop {
        let page = store.read_all(*checkpoint, PAGE).await?;
        let Some(last) = page.last() else {
            return Ok(read);
        };
        *checkpoint = last.checkpoint();
        read += page.len() as u64;
        bar.inc(page.len() as u64);
        let envelopes: Vec<(Envelope, &'static [&'static str])> = page
            .iter()
            .filter_map(|recorded| {
                let projections = route(&recorded.event_type)
                    .map(|r| crate::projections_of_exchange(r.exchange.suffix()))?;
                // An event that cannot be decoded is skipped here as the live projector
                // dead-letters it: the rebuilt model must match the live one.
                Envelope::from_recorded(recorded)
                    .ok()
                    .map(|e| (e, projections))
            })
            .collect();
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
        if (page.len() as i64) < PAGE {
            return Ok(read);
        }
    }
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
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} events, {per_sec}, ETA {eta}",
        )
        .expect("the template is valid"),
    );
    bar
}
