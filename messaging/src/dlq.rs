//! Operating on dead-letter queues: list what is there and why, send messages back to the queue
//! they came from, or drop them. Messages are taken with manual acknowledgement, and one that is
//! not acted on is returned to the dead-letter queue untouched.

use chrono::{DateTime, Utc};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, ConfirmSelectOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};

use crate::broker::{self, AmqpUrls};
use crate::headers;
use crate::message::EventMessage;
use crate::queues::move_delivery;

/// The dead-letter queue of `queue`: `queue` itself if it ends in `.dlq`, else `queue.dlq`.
pub fn dead_letter_queue(queue: &str) -> String {
    if queue.ends_with(".dlq") {
        queue.to_owned()
    } else {
        format!("{queue}.dlq")
    }
}

/// A dead letter as an operator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub error: Option<String>,
    pub original_queue: Option<String>,
    pub retries: Option<i64>,
    /// The tenant whose event it carries, when the body is a HAP event message: what an
    /// operator of one clinic may see of it.
    pub tenant_id: Option<String>,
    /// The kind of aggregate whose event it carries, when the body is a HAP event message:
    /// whether its payload is clinical-record content.
    pub aggregate_type: Option<String>,
    /// When it was dead-lettered (last), if the consumer said so.
    pub dead_lettered_at: Option<DateTime<Utc>>,
    /// How many times it was replayed before.
    pub replays: i64,
    /// The routing key it was last published with.
    pub routing_key: String,
    /// Every AMQP header it carries, HAP's and the broker's.
    pub headers: FieldTable,
    /// The message's body as it is.
    pub body: Vec<u8>,
}

impl DeadLetter {
    /// Its headers as an operator reads them, by name: texts and numbers as they are, anything
    /// else (the broker's `x-death` record, say) in its debug form.
    pub fn header_texts(&self) -> Vec<(String, String)> {
        (self.headers.inner().iter())
            .map(|(name, value)| {
                let shown = match value {
                    AMQPValue::LongString(s) => s.to_string(),
                    AMQPValue::ShortString(s) => s.to_string(),
                    AMQPValue::LongLongInt(n) => n.to_string(),
                    AMQPValue::LongInt(n) => n.to_string(),
                    other => format!("{other:?}"),
                };
                (name.to_string(), shown)
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error("the broker did not store the message sent back to {0}")]
    NotStored(String),
}

fn text(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn number(headers: &FieldTable, name: &str) -> Option<i64> {
    match headers.inner().get(name)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

/// What to do with each message taken from a dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Leave it in the dead-letter queue.
    Keep,
    /// Send it back to its queue, without its error and retry count, its replays counted.
    Replay,
    /// Drop it for good.
    Discard,
}

/// Takes every message of `dlq` once, decides with `choose`, and returns the kept ones to the
/// queue when the channel closes. Returns the dead letters seen and how many were replayed or
/// discarded.
async fn visit(
    amqp_url: &AmqpUrls,
    dlq: &str,
    choose: impl FnMut(&DeadLetter) -> Action,
) -> Result<(Vec<DeadLetter>, usize), DlqError> {
    let connection = broker::connect(amqp_url, "hap-dlq").await?;
    let visited = visit_on(&connection, dlq, choose).await?;
    connection.close(200, "done".into()).await.ok();
    Ok(visited)
}

/// [`visit`] over an open connection, on channels of its own.
async fn visit_on(
    connection: &lapin::Connection,
    dlq: &str,
    mut choose: impl FnMut(&DeadLetter) -> Action,
) -> Result<(Vec<DeadLetter>, usize), DlqError> {
    let channel = connection.create_channel().await?;
    let publish = connection.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    // Only what is there now: a replayed message that fails again comes back to this queue,
    // and must not be taken a second time.
    let waiting = crate::topology::look_up(&channel, dlq)
        .await?
        .message_count();
    let mut seen = Vec::new();
    let mut resolved = 0;
    let mut kept = Vec::new();
    while seen.len() < waiting as usize {
        let Some(message) = channel
            .basic_get(dlq.into(), BasicGetOptions { no_ack: false })
            .await?
        else {
            break;
        };
        let delivery = message.delivery;
        let fields = delivery.properties.headers().clone().unwrap_or_default();
        let event = EventMessage::read(&delivery.data).ok();
        let letter = DeadLetter {
            event_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string()),
            event_type: delivery.properties.kind().as_ref().map(|s| s.to_string()),
            error: text(&fields, headers::ERROR),
            original_queue: text(&fields, headers::ORIGINAL_QUEUE),
            retries: number(&fields, headers::RETRY_COUNT),
            tenant_id: event.as_ref().map(|m| m.tenant_id.to_string()),
            aggregate_type: event.as_ref().map(|m| m.aggregate_type.to_string()),
            dead_lettered_at: number(&fields, headers::DEAD_LETTERED_AT)
                .and_then(DateTime::from_timestamp_millis),
            replays: number(&fields, headers::REPLAY_COUNT).unwrap_or(0),
            routing_key: delivery.routing_key.to_string(),
            headers: fields,
            body: delivery.data.clone(),
        };
        match choose(&letter) {
            Action::Keep => kept.push(delivery.delivery_tag),
            Action::Replay => {
                let target = letter
                    .original_queue
                    .clone()
                    .unwrap_or_else(|| dlq.trim_end_matches(".dlq").to_owned());
                // A fresh start: the retry count and the last error go; the replays are
                // counted one more.
                let mut fresh = FieldTable::default();
                for (name, value) in letter.headers.inner() {
                    if ![
                        headers::ERROR,
                        headers::RETRY_COUNT,
                        headers::ORIGINAL_QUEUE,
                        headers::DEATH,
                        headers::DEAD_LETTERED_AT,
                        headers::REPLAY_COUNT,
                    ]
                    .contains(&name.as_str())
                    {
                        fresh.insert(name.clone(), value.clone());
                    }
                }
                fresh.insert(
                    headers::REPLAY_COUNT.into(),
                    AMQPValue::LongLongInt(letter.replays + 1),
                );
                let properties = delivery.properties.clone().with_headers(fresh);
                if !move_delivery(&publish, &delivery, &target, properties).await? {
                    return Err(DlqError::NotStored(target));
                }
                resolved += 1;
            }
            Action::Discard => {
                delivery.ack(BasicAckOptions::default()).await?;
                resolved += 1;
            }
        }
        seen.push(letter);
    }
    for tag in kept {
        channel
            .basic_nack(
                tag,
                BasicNackOptions {
                    multiple: false,
                    requeue: true,
                },
            )
            .await?;
    }
    channel.close(200, "done".into()).await.ok();
    publish.close(200, "done".into()).await.ok();
    Ok((seen, resolved))
}

/// Every dead letter of `queue`, left in place.
pub async fn list(amqp_url: &AmqpUrls, queue: &str) -> Result<Vec<DeadLetter>, DlqError> {
    let dlq = dead_letter_queue(queue);
    visit(amqp_url, &dlq, |_| Action::Keep)
        .await
        .map(|(seen, _)| seen)
}

/// Sends dead letters back to their queue: the one with `event_id`, or all of them (`None`).
/// Returns how many were sent.
pub async fn replay(
    amqp_url: &AmqpUrls,
    queue: &str,
    event_id: Option<&str>,
) -> Result<usize, DlqError> {
    resolve(amqp_url, queue, Action::Replay, |letter| {
        event_id.is_none_or(|id| letter.event_id.as_deref() == Some(id))
    })
    .await
}

/// Does `action` to each dead letter of `queue` that `pick` picks, and keeps the others.
/// Returns how many were picked.
pub async fn resolve(
    amqp_url: &AmqpUrls,
    queue: &str,
    action: Action,
    pick: impl FnMut(&DeadLetter) -> bool,
) -> Result<usize, DlqError> {
    resolve_each(amqp_url, &[queue], action, pick).await
}

/// Whether the broker refused because the queue does not exist (404 NOT_FOUND).
fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(refusal) if refusal.get_id() == 404)
}

/// [`resolve`] for each of `queues` in turn, over one connection (a sweep of many queues
/// pays for the broker's handshake once). A queue that does not exist counts as empty; one that
/// fails does not stop the sweep: the others are still resolved, and the first failure is the
/// result.
pub async fn resolve_each(
    amqp_url: &AmqpUrls,
    queues: &[impl AsRef<str>],
    action: Action,
    mut pick: impl FnMut(&DeadLetter) -> bool,
) -> Result<usize, DlqError> {
    let connection = broker::connect(amqp_url, "hap-dlq").await?;
    let mut resolved = 0;
    let mut failed = None;
    for queue in queues {
        let dlq = dead_letter_queue(queue.as_ref());
        let choose = |letter: &DeadLetter| if pick(letter) { action } else { Action::Keep };
        match visit_on(&connection, &dlq, choose).await {
            Ok((_, count)) => resolved += count,
            // No such queue: nothing of it to resolve (an instance's queues deleted).
            Err(DlqError::Broker(error)) if is_not_found(&error) => {}
            Err(error) => {
                failed.get_or_insert(error);
            }
        }
    }
    connection.close(200, "done".into()).await.ok();
    failed.map_or(Ok(resolved), Err)
}

/// Drops every dead letter of `queue`; returns how many there were.
pub async fn purge(amqp_url: &AmqpUrls, queue: &str) -> Result<u32, DlqError> {
    let connection = broker::connect(amqp_url, "hap-dlq").await?;
    let channel = connection.create_channel().await?;
    let purged = channel
        .queue_purge(
            dead_letter_queue(queue).as_str().into(),
            QueuePurgeOptions::default(),
        )
        .await?;
    connection.close(200, "done".into()).await.ok();
    Ok(purged)
}
