//! HAP's pieces as the subcommands start them in-process, wired as `hap serve` wires them
//! (`api/src/cli.rs`), and the helpers that fill the store and tell when a piece is done.

use std::time::Instant;

use anyhow::Context;
use api::config::Settings;
use chrono::{DateTime, Utc};
use domain::Event;
use eventstore::{Append, Claim, EventStore, GlobalCheckpoint, NewEvent, StreamVersion};
use futures::{StreamExt, TryStreamExt};
use hap_support::server::HttpServer;
use messaging::consumer::ConsumerSettings;
use projections::ReadModel;
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
    api::db::event_store(pool.clone())
}

/// HAP's publisher on the scratch prefix, with production settings.
pub fn publisher(broker: &ScratchBroker, store: &EventStore) -> Background {
    let publisher = hap_support::system::publisher(store.clone(), broker.url(), broker.prefix());
    broker.spawn(|stop| publisher.run(stop))
}

/// The consumer settings of [`INSTANCE`] on the scratch prefix, as `hap serve` makes them.
pub fn consumer_settings(broker: &ScratchBroker) -> ConsumerSettings {
    let max_retries = api::config::Settings::defaults().max_retries;
    ConsumerSettings::new(broker.url(), broker.topology(), INSTANCE, max_retries)
}

/// Every projector of [`INSTANCE`], consuming its queues into `read`.
pub fn projectors(broker: &ScratchBroker, read: &ReadModel, store: &EventStore) -> Background {
    broker.instance_queues(INSTANCE);
    let settings = consumer_settings(broker);
    let (read, store) = (read.clone(), store.clone());
    broker.spawn(|stop| projections::live::run_all(read, store, settings, stop))
}

/// `hap serve`'s settings on the scratch database and prefix, for [`INSTANCE`].
pub fn settings(database: &ScratchDatabase, broker: &ScratchBroker) -> Settings {
    let mut settings = Settings::defaults();
    // These runs measure the data path; `append` measures it with tokens.
    settings.insecure_no_auth = true;
    settings.database_url = database.url().to_owned();
    settings.amqp_url = broker.url().clone();
    settings.exchange_prefix = broker.prefix().to_owned();
    settings.instance = INSTANCE.to_owned();
    settings.db_pool_size = POOL_SIZE;
    settings
}

/// The whole of HAP in-process, as `hap serve` runs it: command and query routes on one local
/// port, the append notifier, the publisher and the projectors of [`INSTANCE`] over the same
/// event store as the routes (so an append wakes the publisher at once and is fed to the
/// projectors), and, when asked, the saga services and the deadlines' timer.
pub struct Hap {
    pub app: api::AppState,
    pub server: HttpServer,
    /// Stopped after the server, first to last: what consumes before what feeds it.
    pieces: Vec<Background>,
}

impl Hap {
    /// Starts HAP on `pool` with `settings` (see [`settings`]); with `sagas`, the saga services
    /// and the timer too, their deadlines `settings.scheduling_timeout_ms` long.
    pub async fn start(
        broker: &ScratchBroker,
        database: &ScratchDatabase,
        pool: &PgPool,
        settings: Settings,
        sagas: bool,
    ) -> anyhow::Result<Self> {
        // Installed first, as `hap serve` does: what is recorded before it exists is lost.
        api::telemetry::metrics_handle();
        let read = read_model(database).await?;
        broker.declare_queues(INSTANCE, sagas).await?;
        let mut pieces = vec![];
        let app = api::AppState::new(store(pool), read.clone(), settings, Default::default())?;
        // The routes' store, which opens sealed payloads with the process's vault.
        let store = app.commands.store().clone();
        if sagas {
            // Steps and deadlines run their commands through the routes' pipeline, whose
            // appends are fed to this process's projectors and saga services as the routes'
            // are.
            let (pipeline, feed) = (app.commands.clone(), read.local.clone());
            let settings = consumer_settings(broker);
            pieces.push(broker.spawn(|stop| sagas::run_all(pipeline, feed, settings, stop)));
            let timer = sagas::Timer {
                pipeline: app.commands.clone(),
                retention: app.settings.idempotency_retention,
                ready: Default::default(),
            };
            pieces.push(broker.spawn(|stop| timer.run(stop)));
        }
        pieces.push(projectors(broker, &read, &store));
        pieces.push(publisher(broker, &store));
        pieces.push(broker.spawn(|stop| eventstore::wakeup::forward_appends(store, stop)));
        let server = HttpServer::start(app.clone(), true, true).await?;
        Ok(Self {
            app,
            server,
            pieces,
        })
    }

    /// Stops the server (once no client holds a keep-alive connection to it), then every
    /// piece; the server's failure, if any, is reported after all have stopped.
    pub async fn stop(self) -> anyhow::Result<()> {
        let stopped = self.server.stop().await;
        for piece in self.pieces {
            piece.stop().await;
        }
        stopped
    }
}

/// The read model of [`INSTANCE`] in the scratch database, migrated: what `hap serve` opens.
pub async fn read_model(database: &ScratchDatabase) -> anyhow::Result<ReadModel> {
    hap_support::system::read_model(database.url(), INSTANCE, POOL_SIZE).await
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
                    schema_version: 1,
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
        metadata: hap_support::system::metadata(),
        deadlines: vec![],
        ends: None,
        erases: None,
        new_keys: vec![],
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

/// Sends `POST /patients` with `body`; anything but 201 is an error.
pub async fn post_patient(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: &serde_json::Value,
) -> anyhow::Result<axum::body::Bytes> {
    let mut request = client.post(url).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    send(request, "POST /patients", 201).await
}

/// Sends `request` (named `what` in errors); any status but `expected` is an error. The
/// response body is read to its end even when unused: an unread body makes the client drop
/// the connection instead of reusing it.
pub async fn send(
    request: reqwest::RequestBuilder,
    what: &str,
    expected: u16,
) -> anyhow::Result<axum::body::Bytes> {
    let response = request
        .send()
        .await
        .with_context(|| format!("{what} failed"))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .with_context(|| format!("Failed to read the response of {what}"))?;
    if status.as_u16() != expected {
        anyhow::bail!(
            "{what} answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(bytes)
}
