//! The publisher: streams committed events to RabbitMQ in the gap-safe global order, and moves
//! its durable checkpoint only past events the broker confirmed. A crash can therefore repeat
//! messages (those published but not yet checkpointed) but never lose one.
//!
//! Any number of processes may run it; an advisory lock lets exactly one publish
//! ([`crate::leader`]). Messages are sent on one channel in store order, so each aggregate's
//! messages leave in version order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Confirmation, Connection};
use tokio_util::sync::CancellationToken;

use crate::EventStore;
use crate::leader;
use crate::message::{Message, MessageRoute, Router};
use crate::position::GlobalCheckpoint;
use crate::read::RecordedEvent;
use crate::topology::{self, Topology};
use crate::wakeup::Wakeups;

/// How the publisher behaves; the defaults suit production.
#[derive(Debug, Clone)]
pub struct PublisherSettings {
    pub amqp_url: String,
    pub topology: Topology,
    /// Events read per page; also the number of unconfirmed publishes in flight.
    pub window: i64,
    /// The slowest poll, when nothing wakes the publisher.
    pub idle_poll: Duration,
}

impl PublisherSettings {
    pub fn new(amqp_url: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            amqp_url: amqp_url.into(),
            topology: Topology::new(prefix),
            window: 1000,
            idle_poll: Duration::from_secs(1),
        }
    }
}

/// After activity, empty reads are retried this soon, then ever more slowly up to the idle
/// poll: events held back by a transaction that does not wake us (another database's, say)
/// are still published within milliseconds of it ending.
const FIRST_RETRY: Duration = Duration::from_millis(2);
/// Wait before retrying after the broker or the database failed.
const BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often lag metrics are refreshed.
const REPORT_EVERY: Duration = Duration::from_secs(1);

pub struct Publisher {
    store: EventStore,
    router: Arc<dyn Router>,
    settings: PublisherSettings,
}

/// A connection with a channel in confirm mode on which the topology has been declared.
struct Link {
    connection: Connection,
    channel: Channel,
}

impl Publisher {
    pub fn new(store: EventStore, router: Arc<dyn Router>, settings: PublisherSettings) -> Self {
        Self {
            store,
            router,
            settings,
        }
    }

    fn name(&self) -> String {
        self.settings.topology.prefix().to_owned()
    }

    /// Runs until `shutdown`: waits for leadership, then publishes while it lasts.
    pub async fn run(self, shutdown: CancellationToken) {
        let lock = format!("hap.publisher:{}", self.name());
        let mut wakeups = Wakeups::new(&self.store);
        while let Some(mut leadership) = leader::acquire(self.store.pool(), &lock, &shutdown).await
        {
            tracing::info!(publisher = %self.name(), "leading: publishing events");
            metrics::gauge!("hap_publisher_leader").set(1.0);
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = leadership.lost() => tracing::warn!("lost the publisher lock; following"),
                () = self.publish(&mut wakeups) => {}
            }
            metrics::gauge!("hap_publisher_leader").set(0.0);
            if shutdown.is_cancelled() {
                return;
            }
        }
    }

    /// Publishes forever (returns only if it cannot even read its checkpoint table's schema).
    async fn publish(&self, wakeups: &mut Wakeups) {
        let mut backoff = BACKOFF;
        let mut checkpoint = loop {
            match self.load_checkpoint().await {
                Ok(checkpoint) => break checkpoint,
                Err(error) => {
                    tracing::warn!(%error, "could not read the publisher checkpoint");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
        let mut link: Option<Link> = None;
        let mut retry = FIRST_RETRY;
        let mut reported = Instant::now() - REPORT_EVERY;
        loop {
            if reported.elapsed() >= REPORT_EVERY {
                self.report_lag(checkpoint).await;
                reported = Instant::now();
            }
            let events = match self.store.read_all(checkpoint, self.settings.window).await {
                Ok(events) => events,
                Err(error) => {
                    tracing::warn!(%error, "could not read events to publish");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            if events.is_empty() {
                let woken = wakeups.wait(retry).await;
                retry = if woken {
                    FIRST_RETRY
                } else {
                    (retry * 2).min(self.settings.idle_poll)
                };
                continue;
            }
            retry = FIRST_RETRY;
            let current = match link.take() {
                Some(current) => current,
                None => match self.connect().await {
                    Ok(fresh) => fresh,
                    Err(error) => {
                        tracing::warn!(%error, "could not reach RabbitMQ; retrying");
                        metrics::counter!("hap_publisher_failures_total", "reason" => "connect")
                            .increment(1);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                },
            };
            let (confirmed, failure) = self.publish_page(&current.channel, &events).await;
            if let Some(last) = confirmed.checked_sub(1).map(|i| &events[i]) {
                match self.save_checkpoint(last.checkpoint()).await {
                    Ok(()) => checkpoint = last.checkpoint(),
                    // Not fatal: the events are confirmed, so publishing them again after a
                    // restart only repeats them.
                    Err(error) => tracing::warn!(%error, "could not save the checkpoint"),
                }
            }
            match failure {
                None => {
                    link = Some(current);
                    backoff = BACKOFF;
                }
                Some(reason) => {
                    tracing::warn!(%reason, confirmed, "publishing stopped short; reconnecting");
                    metrics::counter!("hap_publisher_failures_total", "reason" => "publish")
                        .increment(1);
                    // A fresh connection and channel: whatever broke, none of it is reused.
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        current.connection.close(320, "reconnecting".into()),
                    )
                    .await;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn connect(&self) -> lapin::Result<Link> {
        let connection = topology::connect(
            &self.settings.amqp_url,
            &format!("hap-publisher {}", self.settings.topology.prefix()),
            false,
        )
        .await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        self.settings.topology.declare(&channel).await?;
        Ok(Link {
            connection,
            channel,
        })
    }

    /// Publishes `events` in order with up to a page of confirms outstanding. Returns how many
    /// events, from the first, the broker confirmed, and why it stopped short if it did.
    async fn publish_page(
        &self,
        channel: &Channel,
        events: &[RecordedEvent],
    ) -> (usize, Option<String>) {
        let mut pending = Vec::with_capacity(events.len());
        let mut failure = None;
        for event in events {
            let message = self.message(event);
            let sent_at = Instant::now();
            let publish = channel
                .basic_publish(
                    message.exchange.into(),
                    message.routing_key.into(),
                    BasicPublishOptions {
                        // Refused rather than dropped if even the alternate exchange cannot
                        // take it.
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &message.body,
                    message.properties,
                )
                .await;
            match publish {
                Ok(confirm) => pending.push((sent_at, confirm)),
                Err(error) => {
                    failure = Some(format!("publish failed: {error}"));
                    break;
                }
            }
        }
        let mut confirmed = 0;
        for (sent_at, confirm) in pending {
            let outcome = match confirm.await {
                Ok(Confirmation::Ack(None)) => Ok(()),
                Ok(Confirmation::Ack(Some(_))) => Err("returned as unroutable".to_owned()),
                Ok(Confirmation::Nack(_)) => Err("nacked by the broker".to_owned()),
                Ok(Confirmation::NotRequested) => Err("the channel is not in confirm mode".into()),
                Err(error) => Err(format!("confirm failed: {error}")),
            };
            match outcome {
                Ok(()) => {
                    confirmed += 1;
                    metrics::histogram!("hap_publisher_confirm_seconds")
                        .record(sent_at.elapsed().as_secs_f64());
                }
                Err(reason) => {
                    failure.get_or_insert(reason);
                    break;
                }
            }
        }
        metrics::counter!("hap_publisher_published_total").increment(confirmed as u64);
        (confirmed, failure)
    }

    fn message(&self, event: &RecordedEvent) -> Message {
        let topology = &self.settings.topology;
        match self.router.route(event) {
            Some(route) => Message::new(event, &route, topology.exchange(route.exchange)),
            None => {
                // Unknown to this version of the application: kept, not dropped.
                tracing::error!(event_type = %event.event_type, "no route; sending to unrouted");
                let route = MessageRoute {
                    exchange: "unrouted",
                    routing_key: "unknown",
                    source_service: "unknown",
                    saga_id: None,
                };
                Message::new(event, &route, topology.unrouted())
            }
        }
    }

    async fn load_checkpoint(&self) -> Result<GlobalCheckpoint, sqlx::Error> {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "select transaction_id, position from publisher_checkpoints where publisher = $1",
        )
        .bind(self.name())
        .fetch_optional(self.store.pool())
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

    /// Moves the checkpoint forward only: a deposed leader that saves late cannot move it back.
    async fn save_checkpoint(&self, checkpoint: GlobalCheckpoint) -> Result<(), sqlx::Error> {
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
        .bind(self.name())
        .bind(checkpoint.transaction_id)
        .bind(checkpoint.position)
        .execute(self.store.pool())
        .await
        .map(|_| ())
    }

    /// Lag in events (committed but not confirmed) and in seconds (how long the oldest of them
    /// has been waiting; 0 when there are none), and the age of the oldest open write
    /// transaction on the server, which holds every reader of the global order back.
    async fn report_lag(&self, checkpoint: GlobalCheckpoint) {
        let lag: Result<(i64, f64), _> = sqlx::query_as(
            "select count(*),
                    coalesce(extract(epoch from now() - min(occurred_at)), 0)::float8
               from events where (transaction_id, position) > ($1::text::xid8, $2)",
        )
        .bind(checkpoint.transaction_id.to_string())
        .bind(checkpoint.position)
        .fetch_one(self.store.pool())
        .await;
        if let Ok((count, seconds)) = lag {
            metrics::gauge!("hap_publisher_lag_events").set(count as f64);
            metrics::gauge!("hap_publisher_lag_seconds").set(seconds.max(0.0));
        }
        let oldest: Result<f64, _> = sqlx::query_scalar(
            "select coalesce(extract(epoch from now() - min(xact_start)), 0)::float8
               from pg_stat_activity where backend_xid is not null",
        )
        .fetch_one(self.store.pool())
        .await;
        if let Ok(seconds) = oldest {
            metrics::gauge!("hap_oldest_write_transaction_seconds").set(seconds);
        }
    }
}
