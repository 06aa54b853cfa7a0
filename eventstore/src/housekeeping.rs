//! Forgetting what is no longer needed: idempotency keys older than the retention, and
//! deadlines that stopped running longer ago than that.
//!
//! Rows go in batches of [`BATCH`], each its own short statement: one `delete` of a whole
//! backlog would be one long write transaction, and every write transaction of this database
//! holds back the publisher's gap-safe read until it ends (docs/design.md).

use std::time::Duration;

use crate::EventStore;
use crate::deadlines::running;

/// Rows deleted by one statement.
pub const BATCH: i64 = 1_000;

/// What one round of housekeeping deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Forgotten {
    pub idempotency_keys: u64,
    pub deadlines: u64,
}

/// Keys stored before the cutoff. A key is looked up by `(tenant_id, key)`, so the batch is
/// picked by its creation time and deleted by its primary key.
const FORGET_KEYS: &str = "
delete from idempotency_keys
 where (tenant_id, key) in (
       select tenant_id, key from idempotency_keys
        where created_at < now() - make_interval(secs => $1)
        limit $2)";

/// Deadlines that no longer run (fired, paused, or any state a later version adds for a saga
/// that ended) and have not changed since the cutoff. A running deadline is never deleted: a
/// timer still has to fire it.
const FORGET_DEADLINES: &str = concat!(
    "delete from deadlines
 where id in (
       select id from deadlines
        where state <> '",
    running!(),
    "' and updated_at < now() - make_interval(secs => $1)
        limit $2)"
);

impl EventStore {
    /// Deletes idempotency keys stored more than `retention` ago and deadlines that stopped
    /// running more than `retention` ago (by the database's clock), [`BATCH`] rows per
    /// statement until none is left. Counted in `hap_housekeeping_deleted_total{what}` as
    /// each batch commits.
    pub async fn forget_older_than(&self, retention: Duration) -> Result<Forgotten, sqlx::Error> {
        Ok(Forgotten {
            idempotency_keys: self
                .delete_in_batches(FORGET_KEYS, "idempotency_keys", retention)
                .await?,
            deadlines: self
                .delete_in_batches(FORGET_DEADLINES, "deadlines", retention)
                .await?,
        })
    }

    async fn delete_in_batches(
        &self,
        statement: &'static str,
        what: &'static str,
        retention: Duration,
    ) -> Result<u64, sqlx::Error> {
        let mut deleted = 0;
        loop {
            let batch = sqlx::query(statement)
                .bind(retention.as_secs_f64())
                .bind(BATCH)
                .execute(&self.pool)
                .await?
                .rows_affected();
            metrics::counter!("hap_housekeeping_deleted_total", "what" => what).increment(batch);
            deleted += batch;
            if batch < BATCH as u64 {
                return Ok(deleted);
            }
        }
    }
}
