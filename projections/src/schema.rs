//! Where an instance's read model lives: schema `rm_{instance}` on the read database, reached
//! through a pool whose `search_path` is that schema, so the same unqualified SQL serves the
//! live schema and a rebuild's shadow schema alike.

use std::str::FromStr;
use std::time::Duration;

use eventstore::read::READ_MODEL_APPLICATION;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

/// The read model's migrations (`migrations/readmodel`), applied per schema.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/readmodel");

/// `rm_{instance}`, with every character other than a letter, digit or `_` turned into `_`
/// and lower-cased, so that it is a plain identifier.
pub fn schema_name(instance: &str) -> String {
    let cleaned: String = instance
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("rm_{cleaned}")
}

/// How a pool's statements are planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plans {
    /// Cached, as PostgreSQL does by default: for the query routes, whose cached statements
    /// look rows up by key, an index probe whatever the tables held when it was planned (the
    /// catch-all list queries are planned per call by their own choice). Planning each call
    /// cost PostgreSQL more than running the lookups.
    Cached,
    /// Planned once per connection, with only key access to choose from: for projector
    /// batches, whose statements reach every row they read or change through its key.
    /// Planning them per call cost PostgreSQL more than running them (docs/benchmarks.md,
    /// 2026-12-03). A plan made once must not depend on
    /// what the tables held then: read models start empty, and the plan of `id = any($1)` made
    /// on an empty table would scan it whole once it had grown. So sequential scans, hash and
    /// merge joins are ruled out, which leaves index probes and nested loops, right for one
    /// event and for a batch of 500 alike.
    ByKey,
}

impl Plans {
    /// `options` with this way of planning.
    pub fn apply(self, options: PgConnectOptions) -> PgConnectOptions {
        match self {
            Plans::Cached => options,
            Plans::ByKey => options.options([
                ("plan_cache_mode", "force_generic_plan"),
                ("enable_seqscan", "off"),
                ("enable_hashjoin", "off"),
                ("enable_mergejoin", "off"),
            ]),
        }
    }
}

/// A pool on `url` whose connections see `schema` (created if missing) and nothing else.
pub async fn connect(
    url: &str,
    schema: &str,
    size: u32,
    plans: Plans,
) -> Result<PgPool, sqlx::Error> {
    let options = connect_options(url, schema, plans).await?;
    eventstore::pool::options()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
}

/// The options of a connection on `url` that sees `schema` (created if missing) and nothing
/// else, with the read model's settings.
pub async fn connect_options(
    url: &str,
    schema: &str,
    plans: Plans,
) -> Result<PgConnectOptions, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?;
    create_schema(&options, schema).await?;
    // A projector that meets a lock held too long fails and retries later rather than holding
    // its batch (and its queue) hostage.
    // Index probes priced as the memory reads they are: with the default (a disk seek), a
    // batch's `id = any($1)` of a few hundred ids scanned the whole table instead, until
    // autovacuum's first analyze, several times slower (docs/benchmarks.md).
    // Named so that the event store's gap-safe read knows these transactions never write
    // events and does not wait for them.
    // No JIT: it pays off for long analytical queries, never for these short ones, and a plan
    // priced high (as one with a ruled-out strategy left in is) spent longer compiling than
    // any of these statements takes to run.
    let options = options.application_name(READ_MODEL_APPLICATION).options([
        ("search_path", schema),
        ("lock_timeout", "1s"),
        ("random_page_cost", "1.1"),
        ("jit", "off"),
    ]);
    Ok(plans.apply(options))
}

async fn create_schema(options: &PgConnectOptions, schema: &str) -> Result<(), sqlx::Error> {
    use sqlx::{ConnectOptions, Connection};
    let mut connection = options.connect().await?;
    // `schema` comes from `schema_name` (or a suffix of it): a plain identifier, quoted anyway.
    let statement = format!("create schema if not exists \"{schema}\"");
    let created = sqlx::query(sqlx::AssertSqlSafe(statement))
        .execute(&mut connection)
        .await;
    connection.close().await.ok();
    match created {
        Ok(_) => Ok(()),
        // Two processes creating it at once: the loser sees a unique violation.
        Err(e) if crate::is_unique_violation(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Applies the read model's migrations to the pool's schema.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

#[cfg(test)]
mod tests {
    use super::schema_name;

    #[test]
    fn instance_ids_become_plain_identifiers() {
        assert_eq!(schema_name("instance-1"), "rm_instance_1");
        assert_eq!(schema_name("A.b c"), "rm_a_b_c");
    }
}
