//! Reading events back: one stream in version order, or all streams in commit-safe order.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use sqlx::PgPool;
use sqlx::postgres::PgArguments;
use uuid::Uuid;

use crate::EventStore;
use crate::opener::{Opener, Stored};
use crate::position::{GlobalCheckpoint, Position, StreamVersion};

/// An event as stored, with everything the publisher and the projectors need.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RecordedEvent {
    pub position: i64,
    pub transaction_id: i64,
    pub event_id: Uuid,
    pub stream_id: Uuid,
    pub aggregate_type: String,
    pub version: i64,
    pub event_type: String,
    /// JSON text as stored, opened (see [`crate::opener`]): the publisher copies it into
    /// messages as it is and the projectors parse it straight into events.
    pub payload: Box<RawValue>,
    pub tenant_id: String,
    pub correlation_id: String,
    pub causation_id: Option<Uuid>,
    /// Who acted (a token's `sub`); `None` for events stored before authentication.
    pub actor_id: Option<String>,
    pub schema_version: i32,
    pub occurred_at: DateTime<Utc>,
}

/// How many events of one type, with one value of a payload field, occurred in an hour.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct HourlyCount {
    /// The hour's start.
    pub hour: DateTime<Utc>,
    /// The field's text, `None` where the payload lacks it.
    pub value: Option<String>,
    pub count: i64,
}

impl RecordedEvent {
    pub fn position(&self) -> Position {
        Position::new(self.position)
    }

    pub fn version(&self) -> StreamVersion {
        StreamVersion::from_i64(self.version)
    }

    /// The checkpoint of a reader that has taken this event.
    pub fn checkpoint(&self) -> GlobalCheckpoint {
        GlobalCheckpoint {
            transaction_id: self.transaction_id,
            position: self.position,
        }
    }
}

/// The columns of a [`RecordedEvent`], in a macro so that `concat!` can build whole
/// `&'static str` queries from it (sqlx takes only static or explicitly vetted SQL).
macro_rules! recorded_event_columns {
    () => {
        "position, transaction_id::text::bigint as transaction_id, event_id, stream_id, \
         aggregate_type, version, event_type, payload, tenant_id, correlation_id, causation_id, \
         actor_id, schema_version, occurred_at"
    };
}

/// The same columns as one string, for SQL built outside this crate (the benchmarks' plain
/// scan of the store).
pub const RECORDED_EVENT_COLUMNS: &str = recorded_event_columns!();

/// [`READ_MODEL_APPLICATION`] in a macro, so that `concat!` can put it into statements that
/// take no parameters.
macro_rules! read_model_application {
    () => {
        "hap-read-model"
    };
}
pub(crate) use read_model_application;

/// The `application_name` of every connection that writes read models. Their transactions
/// never insert events, so the gap-safe read does not wait for them (a projector's batch would
/// otherwise hold every publisher back for as long as it runs).
pub const READ_MODEL_APPLICATION: &str = read_model_application!();

/// The fence of the gap-safe read, as a scalar subquery; `$name` is an SQL expression for
/// [`READ_MODEL_APPLICATION`] (a parameter, or the literal):
/// the oldest transaction running at the statement's snapshot that could still insert events,
/// or the snapshot's horizon when there is none. Every event of an older transaction is
/// visible already or will never exist.
///
/// The snapshot's running transactions (`pg_snapshot_xip`) are all the server's; two kinds
/// are left out because they cannot write this database's `events`: those of another
/// database, and those of read-model connections. A running transaction is left out only when
/// the backends' activity (`pg_stat_activity`'s function, which plans in a fraction of the
/// view's time), read after the snapshot was taken, shows its very id on such a backend; one
/// that ended in between is not found and so still counts, which only delays a read.
macro_rules! writer_fence {
    ($name:expr) => {
        concat!(
            "select coalesce(min(running), pg_snapshot_xmax(pg_current_snapshot())) \
               from pg_snapshot_xip(pg_current_snapshot()) as running \
              where running::xid not in ( \
                    select backend_xid from pg_stat_get_activity(null) as backend \
                     where backend_xid is not null \
                       and (datid <> (select oid from pg_database where datname = current_database()) \
                            or application_name = ",
            $name,
            "))"
        )
    };
}
pub(crate) use writer_fence;

impl EventStore {
    /// The events of one stream after `after`, in version order.
    #[tracing::instrument(skip(self), err)]
    pub async fn read_stream(
        &self,
        stream_id: Uuid,
        after: StreamVersion,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        let query = sqlx::query_as(concat!(
            "select ",
            recorded_event_columns!(),
            " from events where stream_id = $1 and version > $2 order by version"
        ))
        .bind(stream_id)
        .bind(after.as_i64());
        fetch_opened(&self.pool, self.opener.as_deref(), query).await
    }

    /// Up to `limit` events of stream `stream_id` after version `after`, in version order: a
    /// page of its history. Only of tenant `tenant_id` and of kind `aggregate_type` when they
    /// are given (`None`: a platform operator's view, or any kind); another tenant's stream, or
    /// another kind's, reads as empty.
    #[tracing::instrument(skip(self), err)]
    pub async fn read_history(
        &self,
        tenant_id: Option<&str>,
        aggregate_type: Option<&str>,
        stream_id: Uuid,
        after: StreamVersion,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        let query = sqlx::query_as(concat!(
            "select ",
            recorded_event_columns!(),
            " from events where stream_id = $1 and version > $2
                and ($3::text is null or tenant_id = $3)
                and ($4::text is null or aggregate_type = $4)
              order by version limit $5"
        ))
        .bind(stream_id)
        .bind(after.as_i64())
        .bind(tenant_id)
        .bind(aggregate_type)
        .bind(limit);
        fetch_opened(&self.pool, self.opener.as_deref(), query).await
    }

    /// The type of the last event of each of the streams `ids` (those that have events).
    #[tracing::instrument(skip(self), err)]
    pub async fn last_event_types(&self, ids: &[Uuid]) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
        sqlx::query_as(
            "select distinct on (stream_id) stream_id, event_type from events
              where stream_id = any($1) order by stream_id, version desc",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await
    }

    /// How many events of type `event_type` occurred in each hour of the last `hours`, by the
    /// text of payload field `field`, oldest hour first, hours without such events left out.
    /// Tenant-scoped as [`Self::read_history`].
    #[tracing::instrument(skip(self), err)]
    pub async fn hourly_counts(
        &self,
        tenant_id: Option<&str>,
        event_type: &str,
        field: &str,
        hours: i32,
    ) -> Result<Vec<HourlyCount>, sqlx::Error> {
        sqlx::query_as(
            "select date_trunc('hour', occurred_at) as hour, payload ->> $2 as value,
                    count(*) as count
               from events
              where event_type = $1 and occurred_at > now() - make_interval(hours => $3)
                and ($4::text is null or tenant_id = $4)
              group by 1, 2 order by 1, 2",
        )
        .bind(event_type)
        .bind(field)
        .bind(hours)
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await
    }

    /// Up to `limit` events of every stream that carry `correlation_id`, in the order they
    /// were stored: the causal trail of one request across streams. Tenant-scoped as
    /// [`Self::read_history`].
    #[tracing::instrument(skip(self), err)]
    pub async fn read_correlated(
        &self,
        tenant_id: Option<&str>,
        correlation_id: &str,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        let query = sqlx::query_as(concat!(
            "select ",
            recorded_event_columns!(),
            " from events where correlation_id = $1 and ($2::text is null or tenant_id = $2)
              order by position limit $3"
        ))
        .bind(correlation_id)
        .bind(tenant_id)
        .bind(limit);
        fetch_opened(&self.pool, self.opener.as_deref(), query).await
    }

    /// Up to `limit` committed events after `after`, in (transaction id, position) order. (The
    /// `order by` names the table's columns: the output column `transaction_id` is a cast,
    /// and sorting by it would sort every remaining row instead of walking the index.)
    ///
    /// Only events of transactions older than the oldest one still running that could write
    /// events are returned (see `writer_fence!`). A transaction that inserted early but
    /// commits late is therefore still "running" while younger events wait behind it, and its
    /// events come out in their place once it commits: no event is ever skipped, and none
    /// needs a timer or gap detection.
    #[tracing::instrument(skip(self), err)]
    pub async fn read_all(
        &self,
        after: GlobalCheckpoint,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        self.read_all_fenced(after, limit, Fence::GapSafe).await
    }

    /// Up to `limit` committed events after `after`, in the order of [`read_all`], with or
    /// without its fence (see [`Fence`]).
    ///
    /// [`read_all`]: EventStore::read_all
    #[tracing::instrument(skip(self), err)]
    pub async fn read_all_fenced(
        &self,
        after: GlobalCheckpoint,
        limit: i64,
        fence: Fence,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        let query = match fence {
            Fence::GapSafe => gap_safe_read(after, limit),
            Fence::None => sqlx::query_as(concat!(
                "select ",
                recorded_event_columns!(),
                " from events \
                 where (transaction_id, position) > ($1::text::xid8, $2) \
                 order by events.transaction_id, events.position \
                 limit $3"
            ))
            .bind(after.transaction_id.to_string())
            .bind(after.position)
            .bind(limit),
        };
        // Not a cached prepared statement: on a connection planning as PostgreSQL does by
        // default, it would soon switch to a generic plan, which is free to scan the whole
        // table instead of its tail (a `TailReader` rules that out on a connection of its own).
        let query = query.persistent(false);
        fetch_opened(&self.pool, self.opener.as_deref(), query).await
    }

    /// A reader of the tail of the global order, for the publisher, which reads it at every
    /// wake-up.
    pub fn tail_reader(&self) -> TailReader {
        TailReader::new(self)
    }
}

/// A bound query of [`RecordedEvent`]s.
type EventsQuery<'q> = sqlx::query::QueryAs<'q, sqlx::Postgres, RecordedEvent, PgArguments>;

/// The events `query` selects on `pool`, their payloads opened by `opener`: what every read of
/// whole events returns.
async fn fetch_opened(
    pool: &PgPool,
    opener: Option<&dyn Opener>,
    query: EventsQuery<'_>,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    let events = query.fetch_all(pool).await?;
    opened(opener, events).await
}

/// The gap-safe read of [`EventStore::read_all`], bound.
fn gap_safe_read<'q>(after: GlobalCheckpoint, limit: i64) -> EventsQuery<'q> {
    sqlx::query_as(concat!(
        "select ",
        recorded_event_columns!(),
        " from events \
         where (transaction_id, position) > ($1::text::xid8, $2) \
           and transaction_id < (",
        writer_fence!("$4"),
        ") order by events.transaction_id, events.position \
         limit $3"
    ))
    .bind(after.transaction_id.to_string())
    .bind(after.position)
    .bind(limit)
    .bind(READ_MODEL_APPLICATION)
}

/// Reads what [`EventStore::read_all`] reads, on a connection of its own whose statement is
/// planned once, walking the `(transaction_id, position)` index: the only plan it is left
/// (sequential and bitmap scans and sorts are ruled out), right whatever the table held when
/// it was made. Parsed and planned on every call, the read cost PostgreSQL many times more
/// than running it, at every wake-up of the publisher (docs/benchmarks.md).
#[derive(Debug)]
pub struct TailReader {
    pool: PgPool,
    opener: Option<Arc<dyn Opener>>,
}

impl TailReader {
    fn new(store: &EventStore) -> Self {
        let options = (*store.pool.connect_options()).clone().options([
            ("plan_cache_mode", "force_generic_plan"),
            ("enable_seqscan", "off"),
            ("enable_bitmapscan", "off"),
            ("enable_sort", "off"),
            // Plans ruled out cost 10^10, which would otherwise compile the rest to no end.
            ("jit", "off"),
        ]);
        let pool = crate::pool::options()
            .max_connections(1)
            .connect_lazy_with(options);
        Self {
            pool,
            opener: store.opener.clone(),
        }
    }

    /// Up to `limit` committed events after `after`, as [`EventStore::read_all`] returns them.
    pub async fn read(
        &self,
        after: GlobalCheckpoint,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        let query = gap_safe_read(after, limit);
        fetch_opened(&self.pool, self.opener.as_deref(), query).await
    }

    /// Closes the connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Whether a read of the global order stops at the fence of `writer_fence!`.
#[derive(Debug, Clone, Copy)]
pub enum Fence {
    /// Only events older than every transaction still running that could write events, so
    /// that a reader going on from the checkpoint it leaves skips nothing
    /// ([`EventStore::read_all`]).
    GapSafe,
    /// Every committed event, even while an older transaction still runs. Only for a last
    /// read: a reader that went on from the checkpoint this leaves would skip the events of
    /// that older transaction when it commits. A rebuild's final catch-up reads this way,
    /// because the live projectors may already hold such events (their own process fed them,
    /// see `projections::local`).
    None,
}

/// `events` as their readers get them: each payload opened.
pub(crate) async fn opened(
    opener: Option<&dyn Opener>,
    mut events: Vec<RecordedEvent>,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    let Some(opener) = opener else {
        return Ok(events);
    };
    let rows: Vec<Stored<'_>> = events
        .iter()
        .map(|e| Stored {
            event_type: &e.event_type,
            schema_version: e.schema_version,
            payload: e.payload.get(),
        })
        .collect();
    let opened = opener.open(&rows).await?;
    for (event, opened) in events.iter_mut().zip(opened) {
        if let Some(text) = opened {
            event.payload =
                RawValue::from_string(text).map_err(|e| sqlx::Error::Decode(e.into()))?;
        }
    }
    Ok(events)
}
