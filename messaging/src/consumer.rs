//! The consumer runtime: takes deliveries from a queue in batches, hands each batch to a
//! [`Handler`] (a projector, a saga service), and acks only once the handler is done. Messages
//! that can never be handled go to the dead-letter queue at once; failures that may pass are
//! retried with growing delay through the retry queue, counting in `x-retry-count`, then
//! dead-lettered. A failing batch is split so that one bad message never holds back the ones
//! beside it.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use eventstore::readiness::{Part, Readiness};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use domain::service::Service;

use crate::backoff::Backoff;
use crate::broker::{self, AmqpUrls};
use crate::envelope::{Envelope, Origin};
use crate::fed::CommittedFed;
use crate::headers;
use crate::queues::{self, Binding, QueueNames};
use crate::topology::Topology;

/// How the consumers of a process behave.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub amqp_url: AmqpUrls,
    pub topology: Topology,
    pub instance: String,
    /// Retries of a message whose failure may pass, before it is dead-lettered.
    pub max_retries: u32,
    /// Unacknowledged deliveries the broker may send ahead: four batches, so that a backlog
    /// gives full batches. With two, the broker refilled what one batch's ack freed only while
    /// the next was applied, and the consumer waited for deliveries (docs/benchmarks.md).
    pub prefetch: u16,
    /// Deliveries handled in one batch at most.
    pub batch: usize,
    /// Where each consumer registers, by its queue's name, and says whether it consumes.
    pub readiness: Readiness,
}

impl ConsumerSettings {
    /// Settings with the default prefetch and batch, and a readiness of their own.
    pub fn new(amqp_url: &AmqpUrls, topology: Topology, instance: &str, max_retries: u32) -> Self {
        Self {
            amqp_url: amqp_url.clone(),
            topology,
            instance: instance.to_owned(),
            max_retries,
            prefetch: 2000,
            batch: 500,
            readiness: Readiness::default(),
        }
    }

    /// The names of this instance's own queue for `service`'s projector.
    pub fn queue_names(&self, service: Service) -> QueueNames {
        QueueNames::new(self.topology.prefix(), service.name(), &self.instance)
    }
}

/// One message as a handler gets it: the event, and where it came from (as its message body
/// says, or as the command that appended it said, for an event of the local feed).
#[derive(Debug, Clone)]
pub struct Message {
    pub envelope: Envelope,
    pub origin: Origin,
    /// Handed over by this process's local feed: a failure lets it go (its broker copy comes
    /// later and is handled then). A delivery, on the contrary, may repeat an event a handler
    /// somewhere has already taken from its own feed.
    pub fed: bool,
}

/// Why a handler could not handle a batch.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// Nothing will ever make it pass (an undecodable event, a payload that does not fit):
    /// dead-letter it.
    #[error("{0}")]
    Poison(String),
    /// It may pass later (the database is down, a lock timed out): retry it.
    #[error("{0}")]
    Transient(String),
}

/// What a consumer does with its queue's messages: a projector, a saga service.
pub trait Handler: Send + Sync + 'static {
    /// For logs and metrics (`patients`, `scheduling-service`).
    fn name(&self) -> &'static str;

    /// Handles a batch (in delivery order, fed events after deliveries); the runtime acks the
    /// batch's deliveries when it returns `Ok`. On an error the runtime handles each message
    /// alone, so handling must be idempotent: a message may come again after it succeeded.
    fn handle<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Result<(), HandleError>>;

    /// The events this process feeds the handler straight after appending them
    /// ([`crate::local`]), if it takes any: taken once, when the consumer starts.
    fn local_feed(&self) -> Option<mpsc::Receiver<Message>> {
        None
    }

    /// Told when the queue was found empty: whatever lag it reports is none now.
    fn caught_up(&self) {}
}

/// Consumes `names` (declared with its `bindings`) with `handler` until `shutdown`,
/// reconnecting after broker failures. The consumer is registered with the settings'
/// readiness, under its queue's name, at once: ready while it consumes.
pub fn consume(
    handler: Arc<dyn Handler>,
    names: QueueNames,
    bindings: Vec<Binding>,
    settings: ConsumerSettings,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let consumer = Consumer {
        ready: settings.readiness.part(names.main.clone()),
        handler,
        names,
        bindings,
        settings,
    };
    consumer.run(shutdown)
}

/// Why a consumer's connection was given up (it reconnects and carries on).
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error("the broker ended the consumer")]
    Ended,
    #[error("the broker did not store a copy sent to {0}")]
    NotStored(String),
}

/// How often queue depths are reported.
const REPORT_EVERY: Duration = Duration::from_secs(5);

struct Consumer {
    handler: Arc<dyn Handler>,
    names: QueueNames,
    bindings: Vec<Binding>,
    settings: ConsumerSettings,
    /// Set once the queue is declared, bound and consumed; cleared when the connection goes.
    ready: Part,
}

/// The channels of one connection: one to consume, one in confirm mode to move messages to
/// the retry and dead-letter queues (moved first, acked after the broker confirmed the copy).
struct Channels {
    consume: Channel,
    publish: Channel,
}

impl Consumer {
    async fn run(self, shutdown: CancellationToken) {
        let mut local = self.handler.local_feed();
        let mut backoff = Backoff::default();
        loop {
            let ended = self.session(&shutdown, &mut local).await;
            // A session that got to consume starts the backoff afresh: the node it was on may
            // be gone, and the next one answers at once.
            if self.ready.is_ready() {
                backoff.reset();
            }
            self.ready.set(false);
            match ended {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(queue = %self.names.main, %error, "consumer stopped; reconnecting");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = backoff.sleep() => {}
                    }
                }
            }
        }
    }

    /// One connection's life: declare, consume, handle (with the events this process's own
    /// commands fed it meanwhile); returns on shutdown or a broker error (unacknowledged
    /// deliveries are then redelivered, and deduplicated on arrival).
    async fn session(
        &self,
        shutdown: &CancellationToken,
        local: &mut Option<mpsc::Receiver<Message>>,
    ) -> Result<(), SessionError> {
        let name = format!("hap-consumer {}", self.names.main);
        let connection = broker::connect(&self.settings.amqp_url, &name).await?;
        queues::declare_bound(
            &connection,
            &self.settings.topology,
            &self.bindings,
            &self.names,
        )
        .await?;
        let consume = connection.create_channel().await?;
        consume
            .basic_qos(self.settings.prefetch, BasicQosOptions::default())
            .await?;
        let publish = connection.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let channels = Channels { consume, publish };
        let mut deliveries = channels
            .consume
            .basic_consume(
                self.names.main.as_str().into(),
                format!("hap-{}", self.settings.instance).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(queue = %self.names.main, "consuming");
        self.ready.set(true);
        let mut report = tokio::time::interval(REPORT_EVERY);
        let mut committed_fed = CommittedFed::default();
        loop {
            let (mut batch, mut fed) = (Vec::new(), Vec::new());
            tokio::select! {
                () = shutdown.cancelled() => {
                    connection.close(200, "shutting down".into()).await.ok();
                    return Ok(());
                }
                _ = report.tick() => {
                    self.report_depth(&channels.consume).await;
                    continue;
                }
                next = deliveries.next() => match next {
                    Some(delivery) => batch.push(delivery?),
                    None => return Err(SessionError::Ended),
                },
                Some(event) = next_fed(local) => fed.push(event),
            }
            // Take what has already arrived, without waiting for more: batches grow with load
            // and cost no latency when it is light. One of each in turn, so that a backlog in
            // the queue does not keep fed events (queries wait for them) out of the batch.
            while batch.len() + fed.len() < self.settings.batch {
                let event = local.as_mut().and_then(|l| l.try_recv().ok());
                let delivery = deliveries.next().now_or_never().flatten();
                if event.is_none() && delivery.is_none() {
                    break;
                }
                fed.extend(event);
                if let Some(delivery) = delivery {
                    batch.push(delivery?);
                }
            }
            self.handle(&channels, batch, fed, &mut committed_fed)
                .await?;
        }
    }

    /// Handles the deliveries of `batch` and the events `fed` by this process together, and
    /// acknowledges the deliveries once the handler is done. A delivery that is the copy of an
    /// event fed and handled before is acknowledged without the handler.
    async fn handle(
        &self,
        channels: &Channels,
        batch: Vec<Delivery>,
        fed: Vec<Message>,
        committed_fed: &mut CommittedFed,
    ) -> Result<(), SessionError> {
        let mut good = Vec::with_capacity(batch.len());
        for delivery in batch {
            match Envelope::from_message(&delivery.data) {
                Ok((envelope, origin)) => good.push((
                    delivery,
                    Message {
                        envelope,
                        origin,
                        fed: false,
                    },
                )),
                Err(poison) => {
                    self.dead_letter(channels, &delivery, &poison.to_string())
                        .await?
                }
            }
        }
        let last_tag = good.last().map(|(d, _)| d.delivery_tag);
        let fed = without_delivered(fed, &good);
        let (known, good): (Vec<_>, Vec<_>) = good
            .into_iter()
            .partition(|(_, m)| committed_fed.take(m.envelope.event_id));
        let fed_ids: Vec<Uuid> = fed.iter().map(|m| m.envelope.event_id).collect();
        let mut messages: Vec<Message> = good.iter().map(|(_, m)| m.clone()).collect();
        messages.extend(fed);
        let outcome = if messages.is_empty() {
            Ok(())
        } else {
            self.handler.handle(&messages).await
        };
        let error = match outcome {
            Ok(()) => {
                if let Some(tag) = last_tag {
                    channels
                        .consume
                        .basic_ack(tag, BasicAckOptions { multiple: true })
                        .await?;
                }
                committed_fed.insert(fed_ids);
                return Ok(());
            }
            Err(error) => error,
        };
        // The fed events are let go: their copies are on the way through the queue.
        if !fed_ids.is_empty() {
            tracing::debug!(queue = %self.names.main, %error, fed = fed_ids.len(), "a batch with fed events failed; their copies follow");
        }
        for (delivery, _) in known {
            delivery.ack(BasicAckOptions::default()).await?;
        }
        if let [(delivery, _)] = good.as_slice()
            && fed_ids.is_empty()
        {
            return self.fail(channels, delivery, &error).await;
        }
        if good.is_empty() {
            return Ok(());
        }
        // Split the batch: handle each delivery alone, so only the failing ones wait or go.
        tracing::warn!(queue = %self.names.main, %error, "batch failed; handling one by one");
        for (delivery, message) in good {
            match self.handler.handle(std::slice::from_ref(&message)).await {
                Ok(()) => {
                    delivery.ack(BasicAckOptions::default()).await?;
                }
                Err(error) => self.fail(channels, &delivery, &error).await?,
            }
        }
        Ok(())
    }

    async fn fail(
        &self,
        channels: &Channels,
        delivery: &Delivery,
        error: &HandleError,
    ) -> Result<(), SessionError> {
        match error {
            HandleError::Poison(reason) => self.dead_letter(channels, delivery, reason).await,
            HandleError::Transient(reason) => self.retry_later(channels, delivery, reason).await,
        }
    }

    /// Sends a copy to the retry queue, to come back after a delay that doubles with each
    /// retry; past `max_retries`, to the dead-letter queue instead.
    async fn retry_later(
        &self,
        channels: &Channels,
        delivery: &Delivery,
        error: &str,
    ) -> Result<(), SessionError> {
        let retries = retry_count(delivery) + 1;
        if retries > self.settings.max_retries {
            let reason = format!(
                "gave up after {} retries: {error}",
                self.settings.max_retries
            );
            return self.dead_letter(channels, delivery, &reason).await;
        }
        let delay = Duration::from_millis(500) * 2u32.pow(retries - 1);
        let mut fields = delivery.properties.headers().clone().unwrap_or_default();
        fields.insert(
            headers::RETRY_COUNT.into(),
            AMQPValue::LongLongInt(i64::from(retries)),
        );
        let properties = delivery
            .properties
            .clone()
            .with_headers(fields)
            .with_expiration(
                delay
                    .min(Duration::from_secs(60))
                    .as_millis()
                    .to_string()
                    .into(),
            );
        self.move_to(channels, delivery, &self.names.retry, properties)
            .await?;
        tracing::info!(queue = %self.names.main, retries, ?delay, %error, "retrying later");
        metrics::counter!("hap_messages_retried_total", "queue" => self.names.main.clone())
            .increment(1);
        Ok(())
    }

    /// Sends a copy, with `x-error`, `x-original-queue` and `x-dead-lettered-at`, to the
    /// dead-letter queue.
    async fn dead_letter(
        &self,
        channels: &Channels,
        delivery: &Delivery,
        reason: &str,
    ) -> Result<(), SessionError> {
        let mut fields = delivery.properties.headers().clone().unwrap_or_default();
        fields.insert(headers::ERROR.into(), AMQPValue::LongString(reason.into()));
        fields.insert(
            headers::ORIGINAL_QUEUE.into(),
            AMQPValue::LongString(self.names.main.as_str().into()),
        );
        fields.insert(
            headers::DEAD_LETTERED_AT.into(),
            AMQPValue::LongLongInt(chrono::Utc::now().timestamp_millis()),
        );
        let properties = delivery.properties.clone().with_headers(fields);
        self.move_to(channels, delivery, &self.names.dead_letters, properties)
            .await?;
        tracing::warn!(queue = %self.names.main, %reason, "dead-lettered a message");
        metrics::counter!("hap_messages_dead_lettered_total", "queue" => self.names.main.clone())
            .increment(1);
        Ok(())
    }

    async fn move_to(
        &self,
        channels: &Channels,
        delivery: &Delivery,
        queue: &str,
        properties: lapin::BasicProperties,
    ) -> Result<(), SessionError> {
        if queues::move_delivery(&channels.publish, delivery, queue, properties).await? {
            Ok(())
        } else {
            Err(SessionError::NotStored(queue.to_owned()))
        }
    }

    async fn report_depth(&self, channel: &Channel) {
        for (queue, metric) in [
            (&self.names.main, "hap_projector_queue_depth"),
            (&self.names.dead_letters, "hap_dead_letter_queue_depth"),
        ] {
            if let Ok(declared) = crate::topology::look_up(channel, queue).await {
                let depth = declared.message_count();
                metrics::gauge!(metric, "queue" => queue.clone()).set(f64::from(depth));
                if queue == &self.names.main && depth == 0 {
                    self.handler.caught_up();
                }
            }
        }
    }
}

/// The fed events whose copies are not in the batch already: a copy that came as fast as the
/// event itself is handled once, as the delivery (which is acknowledged after).
fn without_delivered(mut fed: Vec<Message>, delivered: &[(Delivery, Message)]) -> Vec<Message> {
    if !fed.is_empty() && !delivered.is_empty() {
        let ids: HashSet<Uuid> = delivered.iter().map(|(_, m)| m.envelope.event_id).collect();
        fed.retain(|m| !ids.contains(&m.envelope.event_id));
    }
    fed
}

/// The next event fed by this process, if the handler takes any (else never).
async fn next_fed(local: &mut Option<mpsc::Receiver<Message>>) -> Option<Message> {
    match local {
        Some(local) => local.recv().await,
        None => std::future::pending().await,
    }
}

/// Retries so far, from the `x-retry-count` header (0 when absent).
fn retry_count(delivery: &Delivery) -> u32 {
    let value = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(headers::RETRY_COUNT).cloned());
    let count = match value {
        Some(AMQPValue::LongLongInt(n)) => n,
        Some(AMQPValue::LongInt(n)) => i64::from(n),
        Some(AMQPValue::ShortInt(n)) => i64::from(n),
        Some(AMQPValue::LongUInt(n)) => i64::from(n),
        _ => 0,
    };
    u32::try_from(count.max(0)).unwrap_or(u32::MAX)
}
