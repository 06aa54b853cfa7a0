//! Leadership among processes by a PostgreSQL advisory lock: exactly one holder at a time, and
//! the lock is released by PostgreSQL itself when the holder's connection ends, which is what
//! a killed process leaves behind.

use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::readiness::Part;

/// How often a follower tries to take the lock, and a leader checks it still holds it.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// A held lock; dropping it closes the connection and so releases the lock.
pub struct Leadership {
    connection: PgConnection,
}

/// Waits until this process holds the lock `name`, or `shutdown` (then `None`). Meanwhile
/// `standing_by` says whether the last try worked (and found the lock held elsewhere).
pub async fn acquire(
    pool: &PgPool,
    name: &str,
    shutdown: &CancellationToken,
    standing_by: &Part,
) -> Option<Leadership> {
    loop {
        match try_acquire(pool, name).await {
            Ok(Some(leadership)) => return Some(leadership),
            Ok(None) => standing_by.set(true),
            Err(error) => {
                standing_by.set(false);
                tracing::warn!(%error, lock = name, "could not try the leader lock");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}

async fn try_acquire(pool: &PgPool, name: &str) -> Result<Option<Leadership>, sqlx::Error> {
    // A connection of its own, outside the pool: the lock lives exactly as long as it does.
    let mut connection = PgConnection::connect_with(&pool.connect_options()).await?;
    let acquired: bool = sqlx::query_scalar("select pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(name)
        .fetch_one(&mut connection)
        .await?;
    if acquired {
        Ok(Some(Leadership { connection }))
    } else {
        connection.close().await.ok();
        Ok(None)
    }
}

impl Leadership {
    /// Resolves when the lock's connection stops answering: PostgreSQL has released the lock
    /// (or soon will), and another process may take over, so this one must stop leading.
    pub async fn lost(&mut self) {
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let ping = tokio::time::timeout(CHECK_EVERY * 4, self.connection.ping()).await;
            if !matches!(ping, Ok(Ok(()))) {
                return;
            }
        }
    }
}
