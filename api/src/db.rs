//! Connecting to PostgreSQL, creating the database when it is missing, and migrating it.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgPool};

/// A pool on `url`, creating the database first when `create` is set and it does not exist.
pub async fn connect(url: &str, size: u32, create: bool) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url)
        .with_context(|| format!("HAP_DATABASE_URL is not a PostgreSQL URL: {url}"))?;
    if create {
        create_database(&options).await?;
    }
    eventstore::pool::options()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(5))
        // Never the read models' name, whatever the URL or PGAPPNAME say: the gap-safe read
        // does not wait for transactions of that name, and these write events.
        .connect_with(options.application_name("hap"))
        .await
        .context("Failed to connect to PostgreSQL")
}

async fn create_database(options: &PgConnectOptions) -> anyhow::Result<()> {
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut admin = options
        .clone()
        .database("postgres")
        .connect()
        .await
        .context("Failed to connect to PostgreSQL (database postgres) to create the database")?;
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .context("Failed to look the database up")?;
    if !exists {
        // An identifier cannot be a bound parameter; quoting it (doubling any quote) makes any
        // name safe.
        let statement = format!("create database \"{}\"", name.replace('"', "\"\""));
        match sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut admin)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created the database"),
            // Another process created it meanwhile.
            Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42P04") => {}
            Err(e) => return Err(e).context(format!("Failed to create database {name}")),
        }
    }
    admin.close().await.ok();
    Ok(())
}

/// Appends written together per transaction at most (group commit).
const GROUP_COMMIT_BATCH: usize = 64;

/// Append statements in flight at once (group commit's writers). Two: while one statement
/// waits for its commit, the appends arriving meanwhile gather into the other's batch, and
/// more load makes batches larger rather than statements more. More writers make batches
/// smaller: more statements, each with its commit, for the same appends, more of them at once
/// on the database's cores. With 16 clients on a 2-core machine, 8 writers (half the
/// default pool) appended 6,800–7,800 commands/s, 3 writers 7,500, 2 writers 9,800–11,300
/// (2026-12-07, docs/benchmarks.md).
const GROUP_COMMIT_WRITERS: usize = 2;

/// The event store as `hap serve` runs it: with group commit.
pub fn event_store(pool: PgPool) -> eventstore::EventStore {
    eventstore::EventStore::new(pool).with_group_commit(GROUP_COMMIT_WRITERS, GROUP_COMMIT_BATCH)
}

/// Applies the event store's migrations.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    eventstore::MIGRATOR
        .run(pool)
        .await
        .context("Failed to apply the event store's migrations")
}
