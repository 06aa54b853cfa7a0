//! The raw floor of read-your-writes through a broker, in plain SQL and plain lapin: a pair
//! inserts an event (one transaction), publishes it with a confirm to one quorum queue, and
//! reads back the row a plain consumer wrote for it. The consumer takes what has arrived (up to
//! a batch), writes the rows in one statement, acks them with one multiple ack and wakes the
//! pairs waiting for them. No HTTP, no outbox read, no deduplication, one queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::{FutureExt, StreamExt};
use hap_support::broker::publish_to_queue;
use lapin::options::BasicAckOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::{insert_raw_event, read_back};
use crate::broker::{ScratchBroker, consume_with_acks, open_channel, open_confirm_channel};
use crate::load::{Outcome, Pace, paced};

/// Deliveries the consumer may hold and the most it writes at once: HAP's consumer settings.
const PREFETCH: u16 = 2000;
const BATCH: usize = 500;

/// How long a pair waits for its row before it counts as failed (the consumer may have
/// stopped: it says why in the log).
const WAIT_LIMIT: Duration = Duration::from_secs(30);

const INSERT_ROWS: &str = "insert into raw_patients (id, payload) \
    select id, payload::jsonb from unnest($1::uuid[], $2::text[]) as row(id, payload)";
const SELECT_ROW: &str = "select payload from raw_patients where id = $1";

/// The pairs waiting for the consumer to have written their row, by patient id.
type Waiting = Arc<Mutex<HashMap<Uuid, oneshot::Sender<()>>>>;

/// Paced insert → publish → consume and write → select pairs; `pool` holds `raw_events`.
pub async fn run(pace: Pace, broker: &ScratchBroker, pool: &PgPool) -> anyhow::Result<Outcome> {
    sqlx::query("create table raw_patients (id uuid primary key, payload jsonb not null)")
        .execute(pool)
        .await
        .context("Failed to create raw_patients")?;
    let queue = broker.bench_queue("pipeline");
    let connection = broker.connect("raw pipeline").await?;
    broker
        .topology()
        .declare_quorum_queue(&connection, &queue, FieldTable::default())
        .await
        .with_context(|| format!("Failed to declare {queue}"))?;
    let publish = open_confirm_channel(&connection).await?;
    let waiting = Waiting::default();
    let consuming = open_channel(&connection).await?;
    let consumer = consume(&consuming, &queue, pool.clone(), Arc::clone(&waiting)).await?;

    let queue: Arc<str> = queue.into();
    let pool = pool.clone();
    let outcome = paced(pace, pace.timeline(), move |n, _| {
        let (pool, publish, queue) = (pool.clone(), publish.clone(), Arc::clone(&queue));
        let waiting = Arc::clone(&waiting);
        async move {
            let (_, patient_id, payload) = insert_raw_event(&pool, n).await?;
            let (written, seen) = oneshot::channel();
            waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(patient_id, written);
            send(&publish, &queue, patient_id, &payload).await?;
            tokio::time::timeout(WAIT_LIMIT, seen)
                .await
                .context("The raw consumer wrote no row in time")?
                .context("The raw consumer stopped before writing the row")?;
            read_back(&pool, SELECT_ROW, patient_id).await
        }
    })
    .await;
    // The consumer's channel first, which ends it: closing the connection under a running
    // consumer makes lapin log an error.
    consuming.close(200, "done".into()).await.ok();
    consumer.await.ok();
    connection.close(200, "done".into()).await.ok();
    outcome
}

/// Publishes the event as a persistent, mandatory message to `queue`, as HAP's publisher
/// does, and waits for its confirm.
async fn send(channel: &Channel, queue: &str, id: Uuid, payload: &Value) -> anyhow::Result<()> {
    let body = serde_json::to_vec(payload).context("Failed to encode the payload")?;
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(id.to_string().into());
    publish_to_queue(channel, queue, &body, properties).await
}

/// Starts the consumer of `queue` on `channel`; it ends when the channel closes.
async fn consume(
    channel: &Channel,
    queue: &str,
    pool: PgPool,
    waiting: Waiting,
) -> anyhow::Result<JoinHandle<()>> {
    let channel = channel.clone();
    let mut deliveries = consume_with_acks(&channel, queue, PREFETCH).await?;
    Ok(tokio::spawn(async move {
        while let Some(Ok(first)) = deliveries.next().await {
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match deliveries.next().now_or_never() {
                    Some(Some(Ok(delivery))) => batch.push(delivery),
                    _ => break,
                }
            }
            if let Err(error) = write(&channel, &pool, &waiting, batch).await {
                tracing::warn!(%error, "the raw consumer failed");
                return;
            }
        }
    }))
}

/// Writes a batch's rows, acks the batch and wakes the pairs waiting for those rows.
async fn write(
    channel: &Channel,
    pool: &PgPool,
    waiting: &Waiting,
    batch: Vec<lapin::message::Delivery>,
) -> anyhow::Result<()> {
    let mut ids = Vec::with_capacity(batch.len());
    let mut payloads = Vec::with_capacity(batch.len());
    for delivery in &batch {
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .and_then(|id| Uuid::parse_str(id.as_str()).ok())
            .context("a message without a patient id")?;
        ids.push(id);
        payloads.push(String::from_utf8_lossy(&delivery.data).into_owned());
    }
    sqlx::query(INSERT_ROWS)
        .bind(&ids)
        .bind(payloads)
        .execute(pool)
        .await
        .context("insert into raw_patients failed")?;
    let last = batch.last().map(|d| d.delivery_tag).unwrap_or_default();
    channel
        .basic_ack(last, BasicAckOptions { multiple: true })
        .await
        .context("basic.ack failed")?;
    let mut waiting = waiting.lock().unwrap_or_else(|e| e.into_inner());
    for id in ids {
        if let Some(written) = waiting.remove(&id) {
            let _ = written.send(());
        }
    }
    Ok(())
}
