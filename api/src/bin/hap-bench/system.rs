//! HAP's pieces as the subcommands start them in-process, wired as `hap serve` wires them
//! (`api/src/cli.rs`), and the helpers that fill the store and tell when a piece is done.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use chrono::{DateTime, Utc};
use domain::Event;
use eventstore::{
    Append, Claim, EventStore, GlobalCheckpoint, Metadata, NewEvent, Publisher, PublisherSettings,
    StreamVersion,
};
use futures::{StreamExt, TryStreamExt};
use projections::ReadModel;
use projections::consumer::ConsumerSettings;
use projections::schema::Plans;
use sqlx::PgPool;
use uuid::Uuid;

use crate::broker::{Background, ScratchBroker};
use crate::database::ScratchDatabase;

/// Connections of every pool HAP itself opens here: `HAP_DB_POOL_SIZE`'s default.
pub const POOL_SIZE: u32 = 16;

/// The instance whose queues and read model the subcommands use.
pub const INSTANCE: &str = "bench";

/// The event store over `pool` as `hap serve` configures it (group commit included).
pub fn store(pool: &PgPool) -> EventStore {
    api::db::event_store(pool.clone(), POOL_SIZE)
}

/// HAP's publisher on the scratch prefix, with production settings.
pub fn publisher(broker: &ScratchBroker, store: &EventStore) -> Background {
    let publisher = Publisher::new(
        store.clone(),
        Arc::new(api::routing::DomainRouter),
        PublisherSettings::new(broker.url(), broker.prefix()),
    );
    broker.spawn(|stop| publisher.run(stop))
}

/// The consumer settings of [`INSTANCE`] on the scratch prefix, as `hap serve` makes them.
pub fn consumer_settings(broker: &ScratchBroker) -> ConsumerSettings {
    let max_retries = api::config::Settings::defaults().max_retries;
    ConsumerSettings::new(broker.url(), broker.prefix(), INSTANCE, max_retries)
}

/// Every projector of [`INSTANCE`], consuming its queues into `read`.
pub fn projectors(broker: &ScratchBroker, read: &ReadModel, store: &EventStore) -> Background {
    broker.instance_queues(INSTANCE);
    let settings = consumer_settings(broker);
    let (read, store) = (read.clone(), store.clone());
    broker.spawn(|stop| projections::live::run_all(read, store, settings, stop))
}

/// The read model of [`INSTANCE`] in the scratch database, migrated: what `hap serve` opens.
pub async fn read_model(database: &ScratchDatabase) -> anyhow::Result<ReadModel> {
    let schema = projections::schema::schema_name(INSTANCE);
    let pool = projections::schema::connect(database.url(), &schema, POOL_SIZE, Plans::Cached)
        .await
        .with_context(|| format!("Failed to connect to the read model (schema {schema})"))?;
    projections::schema::migrate(&pool)
        .await
        .with_context(|| format!("Failed to migrate the read model (schema {schema})"))?;
    Ok(ReadModel::new(pool))
}

/// What HAP stores beside the events of a request without an `X-Correlation-Id`.
pub fn metadata() -> Metadata {
    Metadata {
        tenant_id: api::state::TENANT.into(),
        correlation_id: Uuid::now_v7().to_string(),
        causation_id: None,
        schema_version: 1,
    }
}

/// An append of domain `events` to a new stream, with the claims HAP would take for them.
pub fn new_stream(stream_id: Uuid, events: &[Event]) -> Append {
    let aggregate_type = events
        .first()
        .and_then(|e| domain::event::route(e.event_type()))
        .map_or("unknown", |r| r.aggregate.as_str());
    Append {
        stream_id,
        aggregate_type: aggregate_type.into(),
        expected: StreamVersion::EMPTY,
        events: events
            .iter()
            .map(|event| {
                let (event_type, payload) = event.into_parts();
                NewEvent {
                    event_id: Uuid::now_v7(),
                    event_type: event_type.into(),
                    payload,
                    occurred_at: now_micros(),
                }
            })
            .collect(),
        claims: events
            .iter()
            .flat_map(Event::claims)
            .map(|(kind, value)| Claim {
                kind: kind.into(),
                value,
            })
            .collect(),
        remember: None,
        metadata: metadata(),
        deadlines: vec![],
        fires: None,
    }
}

/// Stores `appends` through `EventStore::append`, `concurrency` at a time, printing progress;
/// returns how many events were stored.
pub async fn append_all(
    store: &EventStore,
    appends: impl Iterator<Item = Append> + Send,
    concurrency: usize,
) -> anyhow::Result<u64> {
    let started = Instant::now();
    let stored = futures::stream::iter(appends)
        .map(|append| async move {
            let count = append.events.len() as u64;
            store
                .append(append)
                .await
                .context("Failed to store the bench's events")?;
            anyhow::Ok(count)
        })
        .buffer_unordered(concurrency)
        .try_fold(0, |total, count| async move { Ok(total + count) })
        .await?;
    eprintln!(
        "stored {stored} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(stored)
}

/// The checkpoint of a reader that has taken every stored event.
pub async fn last_checkpoint(pool: &PgPool) -> anyhow::Result<GlobalCheckpoint> {
    let (transaction_id, position): (i64, i64) = sqlx::query_as(
        "select transaction_id::text::bigint, position from events
          order by transaction_id desc, position desc limit 1",
    )
    .fetch_one(pool)
    .await
    .context("Failed to read the last stored event")?;
    Ok(GlobalCheckpoint {
        transaction_id,
        position,
    })
}

/// Whether the publisher of `prefix` has saved a checkpoint at or past `target`: the broker has
/// then confirmed every event up to it. The checkpoint is saved after each confirmed page, so
/// this is exact at the end of a drain, where the last page holds the last event.
pub async fn publisher_reached(
    pool: &PgPool,
    prefix: &str,
    target: GlobalCheckpoint,
) -> anyhow::Result<bool> {
    let reached: Option<bool> = sqlx::query_scalar(
        "select (transaction_id, position) >= ($2, $3) from publisher_checkpoints
          where publisher = $1",
    )
    .bind(prefix)
    .bind(target.transaction_id)
    .bind(target.position)
    .fetch_optional(pool)
    .await
    .context("Failed to read the publisher's checkpoint")?;
    Ok(reached.unwrap_or(false))
}

/// Now at PostgreSQL's precision, as HAP stamps its events.
pub fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

/// HAP's HTTP API served in-process on a free local port, as `hap serve` serves it.
pub struct HttpServer {
    pub address: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl HttpServer {
    pub async fn start(app: api::AppState, commands: bool, queries: bool) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("Failed to bind a local port for HAP")?;
        let address = listener
            .local_addr()
            .context("Failed to read HAP's local address")?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, api::router(app, commands, queries))
                .with_graceful_shutdown(async {
                    // A dropped sender means the same as a sent stop.
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Self {
            address,
            stop,
            task,
        })
    }

    /// Stops the server once its clients are gone (no keep-alive connection holds it).
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        match tokio::time::timeout(std::time::Duration::from_secs(5), self.task).await {
            Ok(joined) => joined
                .context("HAP's server task panicked")?
                .context("HAP's server failed"),
            // Requests are all answered by now; a server slow to close is not worth failing for.
            Err(_) => {
                tracing::warn!("HAP's server did not shut down within 5 s");
                Ok(())
            }
        }
    }
}

/// Sends `POST /patients` with `body`; anything but 201 is an error. The response body is read
/// to its end even when unused: an unread body makes the client drop the connection instead of
/// reusing it.
pub async fn post_patient(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> anyhow::Result<axum::body::Bytes> {
    let response = client
        .post(url)
        .json(body)
        .send()
        .await
        .context("POST /patients failed")?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .context("Failed to read the response of POST /patients")?;
    if status.as_u16() != 201 {
        anyhow::bail!(
            "POST /patients answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(bytes)
}
