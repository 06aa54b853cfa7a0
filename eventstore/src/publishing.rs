//! What the store keeps for the publisher (which streams it to the broker, from the
//! `messaging` crate): its durable checkpoint per publisher name, and how far behind it is.

use crate::EventStore;
use crate::position::GlobalCheckpoint;

/// How far a publisher is behind the store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lag {
    /// Events committed past the checkpoint.
    pub events: i64,
    /// How long the oldest of them has been waiting; 0 when there are none.
    pub seconds: f64,
}

impl EventStore {
    /// The checkpoint of `publisher`: where it resumes ([`GlobalCheckpoint::START`] at first).
    pub async fn publisher_checkpoint(
        &self,
        publisher: &str,
    ) -> Result<GlobalCheckpoint, sqlx::Error> {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "select transaction_id, position from publisher_checkpoints where publisher = $1",
        )
        .bind(publisher)
        .fetch_optional(self.pool())
        .await?;
        Ok(
            row.map_or(GlobalCheckpoint::START, |(transaction_id, position)| {
                GlobalCheckpoint {
                    transaction_id,
                    position,
                }
            }),
        )
    }

    /// Moves `publisher`'s checkpoint forward only: a deposed leader that saves late cannot
    /// move it back.
    pub async fn save_publisher_checkpoint(
        &self,
        publisher: &str,
        checkpoint: GlobalCheckpoint,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "insert into publisher_checkpoints (publisher, transaction_id, position)
             values ($1, $2, $3)
             on conflict (publisher) do update
                set transaction_id = excluded.transaction_id,
                    position = excluded.position,
                    updated_at = now()
              where (publisher_checkpoints.transaction_id, publisher_checkpoints.position)
                  < (excluded.transaction_id, excluded.position)",
        )
        .bind(publisher)
        .bind(checkpoint.transaction_id)
        .bind(checkpoint.position)
        .execute(self.pool())
        .await
        .map(|_| ())
    }

    /// The lag of a publisher at `checkpoint`: events committed past it, and their age.
    pub async fn lag_behind(&self, checkpoint: GlobalCheckpoint) -> Result<Lag, sqlx::Error> {
        let (events, seconds): (i64, f64) = sqlx::query_as(
            "select count(*),
                    coalesce(extract(epoch from now() - min(occurred_at)), 0)::float8
               from events where (transaction_id, position) > ($1::text::xid8, $2)",
        )
        .bind(checkpoint.transaction_id.to_string())
        .bind(checkpoint.position)
        // Planned for this checkpoint each time, as `read_all` is: a generic plan scans all.
        .persistent(false)
        .fetch_one(self.pool())
        .await?;
        Ok(Lag {
            events,
            seconds: seconds.max(0.0),
        })
    }

    /// The age in seconds of the oldest open write transaction that holds every reader of the
    /// global order back: this database's, bar the read models'.
    pub async fn oldest_write_transaction(&self) -> Result<f64, sqlx::Error> {
        sqlx::query_scalar(
            "select coalesce(extract(epoch from now() - min(xact_start)), 0)::float8
               from pg_stat_activity
              where backend_xid is not null and datname = current_database()
                and application_name is distinct from $1",
        )
        .bind(crate::read::READ_MODEL_APPLICATION)
        .fetch_one(self.pool())
        .await
    }
}
