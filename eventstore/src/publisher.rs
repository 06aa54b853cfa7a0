//! The publisher: streams committed events to RabbitMQ in the gap-safe global order, and moves
//! its durable checkpoint only past events the broker confirmed. A crash can therefore repeat
//! messages (those published but not yet checkpointed) but never lose one.
//!
//! Any number of processes may run it; an advisory lock lets exactly one publish
//! ([`crate::leader`]). Messages are sent on one channel in store order, so each aggregate's
//! messages leave in version order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Confirmation, Connection, PublisherConfirm};
use tokio_util::sync::CancellationToken;

use crate::EventStore;
use crate::broker::{self, AmqpUrls};
use crate::leader;
use crate::message::{Message, MessageRoute, Router};
use crate::position::GlobalCheckpoint;
use crate::read::{RecordedEvent, TailReader};
use crate::readiness::Part;
use crate::topology::Topology;
use crate::wakeup::Wakeups;

/// Declares more of the application's topology on a connection (queues that must exist before
/// the first message is published, so that nothing they are bound for goes unrouted).
pub type DeclareAlso = Arc<
    dyn for<'a> Fn(&'a Connection) -> futures::future::BoxFuture<'a, lapin::Result<()>>
        + Send
        + Sync,
>;

/// How the publisher behaves; the defaults suit production.
#[derive(Clone)]
pub struct PublisherSettings {
    pub amqp_url: AmqpUrls,
    pub topology: Topology,
    /// Declared with the topology on every connection, before anything is published.
    pub declare_also: Option<DeclareAlso>,
    /// Events read per page; also the number of unconfirmed publishes in flight.
    pub window: i64,
    /// The slowest poll, when nothing wakes the publisher.
    pub idle_poll: Duration,
    /// Ready while this process stands by (it tried the leader lock and another process holds
    /// it) or leads with a connection to the broker.
    pub ready: Part,
}

impl PublisherSettings {
    pub fn new(amqp_url: AmqpUrls, topology: Topology) -> Self {
        Self {
            amqp_url,
            topology,
            declare_also: None,
            window: 1000,
            idle_poll: Duration::from_secs(1),
            ready: Part::default(),
        }
    }
}

/// Wait before retrying after the broker or the database failed.
const BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often lag metrics are refreshed.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// How often, at most, the checkpoint is written.
const SAVE_EVERY: Duration = Duration::from_millis(100);

/// A message sent and not yet confirmed.
struct InFlight {
    /// The checkpoint once it is confirmed (and all before it).
    checkpoint: GlobalCheckpoint,
    sent_at: Instant,
    confirm: PublisherConfirm,
}

/// Whether a confirm lets the checkpoint move past its message; records its latency and count.
fn settled(outcome: lapin::Result<Confirmation>, sent_at: Instant) -> Result<(), String> {
    match outcome {
        Ok(Confirmation::Ack(None)) => {
            metrics::histogram!("hap_publisher_confirm_seconds")
                .record(sent_at.elapsed().as_secs_f64());
            metrics::counter!("hap_publisher_published_total").increment(1);
            Ok(())
        }
        Ok(Confirmation::Ack(Some(_))) => Err("returned as unroutable".into()),
        Ok(Confirmation::Nack(_)) => Err("nacked by the broker".into()),
        Ok(Confirmation::NotRequested) => Err("the channel is not in confirm mode".into()),
        Err(error) => Err(format!("confirm failed: {error}")),
    }
}

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
        let reader = self.store.tail_reader();
        let ready = &self.settings.ready;
        while let Some(mut leadership) =
            leader::acquire(self.store.pool(), &lock, &shutdown, ready).await
        {
            // Not ready again until connected.
            ready.set(false);
            tracing::info!(publisher = %self.name(), "leading: publishing events");
            metrics::gauge!("hap_publisher_leader").set(1.0);
            self.store.set_publishing_here(true);
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = leadership.lost() => tracing::warn!("lost the publisher lock; following"),
                () = self.publish(&reader, &mut wakeups) => {}
            }
            self.store.set_publishing_here(false);
            metrics::gauge!("hap_publisher_leader").set(0.0);
            if shutdown.is_cancelled() {
                break;
            }
        }
        reader.close().await;
    }

    /// Publishes forever. Events are sent as soon as they can be read, with up to a window of
    /// them awaiting the broker's confirm: a slow confirm (a quorum queue writes to disk first)
    /// delays the checkpoint, never the next messages. The checkpoint follows the oldest
    /// unconfirmed event; on any failure, everything after it is sent again on a new channel.
    async fn publish(&self, reader: &TailReader, wakeups: &mut Wakeups) {
        let mut backoff = BACKOFF;
        let mut confirmed = loop {
            match self.load_checkpoint().await {
                Ok(checkpoint) => break checkpoint,
                Err(error) => {
                    tracing::warn!(%error, "could not read the publisher checkpoint");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
        let (mut saved, mut saved_at) = (confirmed, Instant::now());
        let mut sent = confirmed;
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut link: Option<Link> = None;
        // Where a read last came back with less than it asked for, everything committed was
        // sent: reading again finds nothing new until an append wakes us.
        let mut caught_up_at: Option<GlobalCheckpoint> = None;
        let mut reported = Instant::now() - REPORT_EVERY;
        loop {
            if reported.elapsed() >= REPORT_EVERY {
                self.report_lag(confirmed).await;
                reported = Instant::now();
            }
            // Settle the confirms that have arrived, oldest first.
            let mut failure = None;
            while let Some(front) = in_flight.front_mut() {
                let Some(outcome) = (&mut front.confirm).now_or_never() else {
                    break;
                };
                match settled(outcome, front.sent_at) {
                    Ok(()) => confirmed = front.checkpoint,
                    Err(reason) => {
                        failure = Some(reason);
                        break;
                    }
                }
                in_flight.pop_front();
            }
            // The checkpoint is one write (and one flush to disk) per save, so at most every
            // SAVE_EVERY, however many confirms came in between: a crash only repeats messages.
            if confirmed != saved && saved_at.elapsed() >= SAVE_EVERY {
                match self.save_checkpoint(confirmed).await {
                    Ok(()) => (saved, saved_at) = (confirmed, Instant::now()),
                    Err(error) => {
                        tracing::warn!(%error, "could not save the checkpoint");
                        // Tried again when the next save is due, not at once.
                        saved_at = Instant::now();
                    }
                }
            }
            if let Some(reason) = failure {
                self.restart(
                    &reason,
                    &mut link,
                    &mut in_flight,
                    &mut sent,
                    confirmed,
                    &mut backoff,
                )
                .await;
                caught_up_at = None;
                continue;
            }

            // Connected before anything is read, and again at once after every failure: the
            // connection declares the topology, so the exchanges exist from the moment this
            // publisher leads, not from its first event, and a consumer that starts before
            // any event is appended finds them.
            if link.is_none() {
                match self.connect().await {
                    Ok(fresh) => {
                        link = Some(fresh);
                        self.settings.ready.set(true);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "could not reach RabbitMQ; retrying");
                        metrics::counter!("hap_publisher_failures_total", "reason" => "connect")
                            .increment(1);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }

            // Read only when a good part of the window is free: topping it up one event at a
            // time would turn a backlog into many tiny reads.
            let room = self.settings.window - in_flight.len() as i64;
            let reading = caught_up_at != Some(sent) && room >= (self.settings.window / 4).max(1);
            let events = if reading {
                match reader.read(sent, room).await {
                    Ok(events) => events,
                    Err(error) => {
                        tracing::warn!(%error, "could not read events to publish");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            } else {
                vec![]
            };
            if !events.is_empty() {
                let channel = &link.as_ref().expect("connected before reading").channel;
                let mut sent_all = true;
                for event in &events {
                    match self.send(channel, event).await {
                        Ok(confirm) => {
                            in_flight.push_back(InFlight {
                                checkpoint: event.checkpoint(),
                                sent_at: Instant::now(),
                                confirm,
                            });
                            sent = event.checkpoint();
                        }
                        Err(error) => {
                            self.restart(
                                &error,
                                &mut link,
                                &mut in_flight,
                                &mut sent,
                                confirmed,
                                &mut backoff,
                            )
                            .await;
                            sent_all = false;
                            break;
                        }
                    }
                }
                caught_up_at = (sent_all && (events.len() as i64) < room).then_some(sent);
                continue;
            }
            if reading {
                caught_up_at = Some(sent);
            }
            backoff = BACKOFF;
            // Nothing new to send: wait for the oldest confirm, or for new events. A read that
            // found nothing although events were committed was held back by an append still
            // running, and that append wakes us when it ends, committed or refused: no need to
            // poll for it. (Only a writer outside HAP does not, and the idle poll covers it.)
            let idle_poll = self.settings.idle_poll;
            match in_flight.front_mut() {
                Some(front) => {
                    tokio::select! {
                        outcome = &mut front.confirm => {
                            match settled(outcome, front.sent_at) {
                                Ok(()) => {
                                    confirmed = front.checkpoint;
                                    in_flight.pop_front();
                                }
                                Err(reason) => {
                                    self.restart(&reason, &mut link, &mut in_flight, &mut sent, confirmed, &mut backoff)
                                        .await;
                                    caught_up_at = None;
                                }
                            }
                        }
                        () = wakeups.wait(idle_poll) => caught_up_at = None,
                    }
                }
                None => {
                    // Or until the checkpoint is due, when there is one to save.
                    let save_due = SAVE_EVERY.saturating_sub(saved_at.elapsed());
                    wakeups
                        .wait(if confirmed == saved {
                            idle_poll
                        } else {
                            save_due
                        })
                        .await;
                    caught_up_at = None;
                }
            }
        }
    }

    /// After a publishing failure (`reason`): count it, drop the connection (whatever broke,
    /// none of it is reused), forget what awaited confirms, and send again from the last
    /// confirmed event after a pause.
    async fn restart(
        &self,
        reason: &(dyn std::fmt::Display + Sync),
        link: &mut Option<Link>,
        in_flight: &mut VecDeque<InFlight>,
        sent: &mut GlobalCheckpoint,
        confirmed: GlobalCheckpoint,
        backoff: &mut Duration,
    ) {
        tracing::warn!(%reason, "publishing stopped short; reconnecting");
        self.settings.ready.set(false);
        metrics::counter!("hap_publisher_failures_total", "reason" => "publish").increment(1);
        in_flight.clear();
        *sent = confirmed;
        if let Some(old) = link.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                old.connection.close(320, "reconnecting".into()),
            )
            .await;
        }
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
    }

    /// Publishes one event; the returned future resolves with the broker's confirm.
    async fn send(
        &self,
        channel: &Channel,
        event: &RecordedEvent,
    ) -> lapin::Result<PublisherConfirm> {
        let message = self.message(event);
        channel
            .basic_publish(
                message.exchange.into(),
                message.routing_key.into(),
                BasicPublishOptions {
                    // Refused rather than dropped if even the alternate exchange cannot take it.
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &message.body,
                message.properties,
            )
            .await
    }

    async fn connect(&self) -> lapin::Result<Link> {
        let connection = broker::connect(
            &self.settings.amqp_url,
            &format!("hap-publisher {}", self.settings.topology.prefix()),
        )
        .await?;
        self.settings.topology.declare(&connection).await?;
        if let Some(declare) = &self.settings.declare_also {
            declare(&connection).await?;
        }
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Link {
            connection,
            channel,
        })
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
    /// transaction that holds every reader of the global order back.
    async fn report_lag(&self, checkpoint: GlobalCheckpoint) {
        let lag: Result<(i64, f64), _> = sqlx::query_as(
            "select count(*),
                    coalesce(extract(epoch from now() - min(occurred_at)), 0)::float8
               from events where (transaction_id, position) > ($1::text::xid8, $2)",
        )
        .bind(checkpoint.transaction_id.to_string())
        .bind(checkpoint.position)
        // Planned for this checkpoint each time, as `read_all` is: a generic plan scans all.
        .persistent(false)
        .fetch_one(self.store.pool())
        .await;
        if let Ok((count, seconds)) = lag {
            metrics::gauge!("hap_publisher_lag_events").set(count as f64);
            metrics::gauge!("hap_publisher_lag_seconds").set(seconds.max(0.0));
        }
        // The transactions the gap-safe read waits for: this database's, bar the read models'.
        let oldest: Result<f64, _> = sqlx::query_scalar(
            "select coalesce(extract(epoch from now() - min(xact_start)), 0)::float8
               from pg_stat_activity
              where backend_xid is not null and datname = current_database()
                and application_name is distinct from $1",
        )
        .bind(crate::read::READ_MODEL_APPLICATION)
        .fetch_one(self.store.pool())
        .await;
        if let Ok(seconds) = oldest {
            metrics::gauge!("hap_oldest_write_transaction_seconds").set(seconds);
        }
    }
}
