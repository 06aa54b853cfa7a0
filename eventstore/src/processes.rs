//! The processes that run HAP, as each records itself: what it is (instance, roles, version,
//! where it listens), when it started, and a heartbeat every [`HEARTBEAT`]. Operators list
//! them; a row whose heartbeat is older than [`GONE_AFTER`] is a process that died.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::EventStore;
use crate::rounds::Rounds;
use crate::samples::Vitals;

/// How often a process says it still runs.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long without a heartbeat before a process counts as gone: three beats missed.
pub const GONE_AFTER: Duration = Duration::from_secs(15);

/// What a process says of itself.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ProcessInfo {
    pub instance: String,
    pub roles: Vec<String>,
    pub version: String,
    pub host: String,
    pub pid: i32,
    pub http_addr: String,
}

/// A recorded process.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RecordedProcess {
    pub id: Uuid,
    #[sqlx(flatten)]
    pub info: ProcessInfo,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
}

impl RecordedProcess {
    /// Whether its heartbeat stopped as of `now`.
    pub fn is_gone(&self, now: DateTime<Utc>) -> bool {
        (now - self.heartbeat_at).to_std().unwrap_or_default() > GONE_AFTER
    }
}

impl EventStore {
    /// Records process `id`, or refreshes its row: also after the database lost it (a restore,
    /// or housekeeping that took a long pause for a death).
    pub async fn record_process(&self, id: Uuid, info: &ProcessInfo) -> Result<(), sqlx::Error> {
        sqlx::query(
            "insert into processes (id, instance, roles, version, host, pid, http_addr)
             values ($1, $2, $3, $4, $5, $6, $7)
             on conflict (id) do update set heartbeat_at = now()",
        )
        .bind(id)
        .bind(&info.instance)
        .bind(&info.roles)
        .bind(&info.version)
        .bind(&info.host)
        .bind(info.pid)
        .bind(&info.http_addr)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes process `id`'s row: it stops cleanly.
    pub async fn forget_process(&self, id: Uuid) -> Result<(), sqlx::Error> {
        sqlx::query("delete from processes where id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every recorded process, by instance and start.
    pub async fn processes(&self) -> Result<Vec<RecordedProcess>, sqlx::Error> {
        sqlx::query_as(
            "select id, instance, roles, version, host, pid, http_addr, started_at, heartbeat_at
               from processes order by instance, started_at",
        )
        .fetch_all(&self.pool)
        .await
    }
}

/// Records this process and beats its heart every [`HEARTBEAT`] until `shutdown`, then deletes
/// its row. Each beat also records what `measure` says of the process. A beat that fails (the
/// database is away) is only logged: the next one records the process again.
pub async fn keep_recorded(
    store: EventStore,
    info: ProcessInfo,
    measure: impl Fn() -> Vitals + Send,
    shutdown: CancellationToken,
) {
    let id = Uuid::now_v7();
    let mut beats = Rounds::new(HEARTBEAT, &shutdown);
    while beats.next().await {
        let recorded = match store.record_process(id, &info).await {
            Ok(()) => store.record_sample(id, &measure()).await,
            Err(error) => Err(error),
        };
        if let Err(error) = recorded {
            tracing::debug!(%error, "recording this process's heartbeat failed");
        }
    }
    if let Err(error) = store.forget_process(id).await {
        tracing::debug!(%error, "could not delete this process's row on shutdown");
    }
}
