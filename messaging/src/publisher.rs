//! The publisher: streams committed events to RabbitMQ in the gap-safe global order, and moves
//! its durable checkpoint only past events the broker confirmed. A crash can therefore repeat
//! messages (those published but not yet checkpointed) but never lose one.
//!
//! Any number of processes may run it; an advisory lock lets exactly one publish
//! ([`eventstore::leader`]). Messages are sent on one channel in store order, so each
//! aggregate's messages leave in version order.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use eventstore::read::TailReader;
use eventstore::readiness::Part;
use eventstore::wakeup::Wakeups;
use eventstore::{EventStore, GlobalCheckpoint, RecordedEvent, leader};
use futures::FutureExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Confirmation, Connection, PublisherConfirm};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::broker::{self, AmqpUrls};
use crate::message::Outgoing;
use crate::queues;
use crate::routes;
use crate::topology::Topology;

/// How the publisher behaves; the defaults suit production.
#[derive(Clone)]
pub struct PublisherSettings {
    pub amqp_url: AmqpUrls,
    /// Declared on every connection before anything is published, with the saga queues: they
    /// are the cluster's, not an instance's, and must exist before the first trigger is
    /// published, whether or not a saga process has started.
    pub topology: Topology,
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
            window: 1000,
            idle_poll: Duration::from_secs(1),
            ready: Part::default(),
        }
    }
}

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
    settings: PublisherSettings,
}

/// What one leadership's publishing holds between its steps.
struct Publishing {
    /// The checkpoint past every confirmed event (the oldest unconfirmed one's predecessor).
    confirmed: GlobalCheckpoint,
    /// The checkpoint last saved, and when.
    saved: GlobalCheckpoint,
    saved_at: Instant,
    /// The checkpoint past every event sent.
    sent: GlobalCheckpoint,
    /// Sent and awaiting the broker's confirm, oldest first.
    in_flight: VecDeque<InFlight>,
    /// `None` until connected, and again after every failure.
    link: Option<Link>,
    /// Where a read last came back with less than it asked for, everything committed was
    /// sent: reading again finds nothing new until an append wakes us.
    caught_up_at: Option<GlobalCheckpoint>,
    backoff: Backoff,
    /// When lag was last reported.
    reported: Instant,
}

impl Publishing {
    /// Publishing from `checkpoint`, not connected yet.
    fn from(checkpoint: GlobalCheckpoint, backoff: Backoff) -> Self {
        Self {
            confirmed: checkpoint,
            saved: checkpoint,
            saved_at: Instant::now(),
            sent: checkpoint,
            in_flight: VecDeque::new(),
            link: None,
            caught_up_at: None,
            backoff,
            reported: Instant::now() - REPORT_EVERY,
        }
    }

    /// Settles the confirms that have arrived, oldest first; why the first that failed did.
    fn settle_arrived(&mut self) -> Option<String> {
        while let Some(front) = self.in_flight.front_mut() {
            let outcome = (&mut front.confirm).now_or_never()?;
            if let Err(reason) = settled(outcome, front.sent_at) {
                return Some(reason);
            }
            self.confirmed = front.checkpoint;
            self.in_flight.pop_front();
        }
        None
    }

    /// How long until the checkpoint is due to be saved; `None` when it is saved already.
    fn save_due(&self) -> Option<Duration> {
        (self.confirmed != self.saved).then(|| SAVE_EVERY.saturating_sub(self.saved_at.elapsed()))
    }
}

/// A connection with a channel in confirm mode on which the topology has been declared.
struct Link {
    connection: Connection,
    channel: Channel,
}

impl Publisher {
    pub fn new(store: EventStore, settings: PublisherSettings) -> Self {
        Self { store, settings }
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
        let mut state = self.resume().await;
        loop {
            self.report_lag_if_due(&mut state).await;
            let failure = state.settle_arrived();
            self.save_if_due(&mut state).await;
            if let Some(reason) = failure {
                self.restart(&mut state, &reason).await;
                continue;
            }
            if !self.connected(&mut state).await || self.send_next_page(&mut state, reader).await {
                continue;
            }
            state.backoff.reset();
            self.wait(&mut state, wakeups).await;
        }
    }

    /// Publishing from the saved checkpoint, read again until the database answers.
    async fn resume(&self) -> Publishing {
        let mut backoff = Backoff::default();
        loop {
            match self.store.publisher_checkpoint(&self.name()).await {
                Ok(checkpoint) => return Publishing::from(checkpoint, backoff),
                Err(error) => {
                    tracing::warn!(%error, "could not read the publisher checkpoint");
                    backoff.sleep().await;
                }
            }
        }
    }

    async fn report_lag_if_due(&self, state: &mut Publishing) {
        if state.reported.elapsed() >= REPORT_EVERY {
            self.report_lag(state.confirmed).await;
            state.reported = Instant::now();
        }
    }

    /// Saves the checkpoint if it moved. It is one write (and one flush to disk) per save, so
    /// at most every SAVE_EVERY, however many confirms came in between: a crash only repeats
    /// messages.
    async fn save_if_due(&self, state: &mut Publishing) {
        if state.confirmed == state.saved || state.saved_at.elapsed() < SAVE_EVERY {
            return;
        }
        match self
            .store
            .save_publisher_checkpoint(&self.name(), state.confirmed)
            .await
        {
            Ok(()) => (state.saved, state.saved_at) = (state.confirmed, Instant::now()),
            Err(error) => {
                tracing::warn!(%error, "could not save the checkpoint");
                // Tried again when the next save is due, not at once.
                state.saved_at = Instant::now();
            }
        }
    }

    /// Whether there is a connection, opening one if not (after a pause when that fails).
    /// Connected before anything is read, and again at once after every failure: the
    /// connection declares the topology, so the exchanges exist from the moment this publisher
    /// leads, not from its first event, and a consumer that starts before any event is
    /// appended finds them.
    async fn connected(&self, state: &mut Publishing) -> bool {
        if state.link.is_some() {
            return true;
        }
        match self.connect().await {
            Ok(link) => {
                state.link = Some(link);
                self.settings.ready.set(true);
                true
            }
            Err(error) => {
                tracing::warn!(%error, "could not reach RabbitMQ; retrying");
                metrics::counter!("hap_publisher_failures_total", "reason" => "connect")
                    .increment(1);
                state.backoff.sleep().await;
                false
            }
        }
    }

    /// Reads the next page of events and sends it, when a good part of the window is free:
    /// topping it up one event at a time would turn a backlog into many tiny reads. Whether to
    /// go round again at once (it sent a page, or failed to read one, after a pause), rather
    /// than wait.
    async fn send_next_page(&self, state: &mut Publishing, reader: &TailReader) -> bool {
        let window = self.settings.window;
        let room = window - state.in_flight.len() as i64;
        if state.caught_up_at == Some(state.sent) || room < (window / 4).max(1) {
            return false;
        }
        let events = match reader.read(state.sent, room).await {
            Ok(events) => events,
            Err(error) => {
                tracing::warn!(%error, "could not read events to publish");
                state.backoff.sleep().await;
                return true;
            }
        };
        if events.is_empty() {
            state.caught_up_at = Some(state.sent);
            return false;
        }
        let sent_all = self.send_page(state, &events).await;
        state.caught_up_at = (sent_all && (events.len() as i64) < room).then_some(state.sent);
        true
    }

    /// Sends `events` in order; whether all went (else publishing restarted).
    async fn send_page(&self, state: &mut Publishing, events: &[RecordedEvent]) -> bool {
        let Some(link) = &state.link else {
            return false;
        };
        let channel = link.channel.clone();
        for event in events {
            match self.send(&channel, event).await {
                Ok(confirm) => {
                    state.in_flight.push_back(InFlight {
                        checkpoint: event.checkpoint(),
                        sent_at: Instant::now(),
                        confirm,
                    });
                    state.sent = event.checkpoint();
                }
                Err(error) => {
                    self.restart(state, &error).await;
                    return false;
                }
            }
        }
        true
    }

    /// Nothing new to send: waits for the oldest confirm, or for new events. A read that found
    /// nothing although events were committed was held back by an append still running, and
    /// that append wakes us when it ends, committed or refused: no need to poll for it. (Only a
    /// writer outside HAP does not, and the idle poll covers it.) With nothing awaiting a
    /// confirm, waits at most until the checkpoint is due, when there is one to save.
    async fn wait(&self, state: &mut Publishing, wakeups: &mut Wakeups) {
        let idle_poll = self.settings.idle_poll;
        let Some(front) = state.in_flight.front_mut() else {
            wakeups.wait(state.save_due().unwrap_or(idle_poll)).await;
            state.caught_up_at = None;
            return;
        };
        let confirmed = tokio::select! {
            outcome = &mut front.confirm => Some(settled(outcome, front.sent_at)),
            () = wakeups.wait(idle_poll) => None,
        };
        match confirmed {
            Some(Ok(())) => {
                state.confirmed = front.checkpoint;
                state.in_flight.pop_front();
            }
            Some(Err(reason)) => self.restart(state, &reason).await,
            None => state.caught_up_at = None,
        }
    }

    /// After a publishing failure (`reason`): count it, drop the connection (whatever broke,
    /// none of it is reused), forget what awaited confirms, and send again from the last
    /// confirmed event after a pause.
    async fn restart(&self, state: &mut Publishing, reason: &(dyn std::fmt::Display + Sync)) {
        tracing::warn!(%reason, "publishing stopped short; reconnecting");
        self.settings.ready.set(false);
        metrics::counter!("hap_publisher_failures_total", "reason" => "publish").increment(1);
        state.in_flight.clear();
        state.sent = state.confirmed;
        state.caught_up_at = None;
        if let Some(old) = state.link.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                old.connection.close(320, "reconnecting".into()),
            )
            .await;
        }
        state.backoff.sleep().await;
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
        let topology = &self.settings.topology;
        let connection = broker::connect(
            &self.settings.amqp_url,
            &format!("hap-publisher {}", topology.prefix()),
        )
        .await?;
        topology.declare(&connection).await?;
        queues::declare_saga_queues(&connection, topology).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Link {
            connection,
            channel,
        })
    }

    fn message(&self, event: &RecordedEvent) -> Outgoing {
        let topology = &self.settings.topology;
        match routes::route(event) {
            Some(route) => Outgoing::new(event, &route, topology.exchange(route.exchange)),
            None => {
                // Unknown to this version of the application: kept, not dropped.
                tracing::error!(event_type = %event.event_type, "no route; sending to unrouted");
                Outgoing::new(event, &routes::UNKNOWN, topology.unrouted())
            }
        }
    }

    /// Lag in events (committed but not confirmed) and in seconds (how long the oldest of them
    /// has been waiting; 0 when there are none), and the age of the oldest open write
    /// transaction that holds every reader of the global order back.
    async fn report_lag(&self, checkpoint: GlobalCheckpoint) {
        if let Ok(lag) = self.store.lag_behind(checkpoint).await {
            metrics::gauge!("hap_publisher_lag_events").set(lag.events as f64);
            metrics::gauge!("hap_publisher_lag_seconds").set(lag.seconds);
        }
        if let Ok(seconds) = self.store.oldest_write_transaction().await {
            metrics::gauge!("hap_oldest_write_transaction_seconds").set(seconds);
        }
    }
}
