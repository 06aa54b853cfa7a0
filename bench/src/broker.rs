//! The scratch broker namespace of the subcommands that use RabbitMQ: a fresh exchange prefix
//! (`bench<random>`), so that nothing they declare meets another run's or a real HAP's names,
//! and the HAP pieces they start in the background, which are stopped before every exchange
//! and queue under the prefix is deleted at the end, whatever happened.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, anyhow};
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use messaging::AmqpUrls;
use messaging::QueueNames;
use messaging::Topology;
use projections::queues::QUEUES;
use tokio_util::sync::CancellationToken;

/// The servers a subcommand runs against.
#[derive(Debug, clap::Args)]
pub struct Servers {
    /// PostgreSQL server to benchmark on; a scratch database is created there and dropped.
    #[arg(
        long,
        env = "HAP_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,

    /// RabbitMQ to benchmark on (the URL of each node, comma-separated); everything declared
    /// there is under a scratch prefix and deleted at the end.
    #[arg(
        long,
        env = "HAP_BENCH_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: AmqpUrls,
}

/// How long the background pieces get to stop before their queues are deleted anyway.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ScratchBroker {
    url: AmqpUrls,
    prefix: String,
    /// Queues to delete at the end, named before they are declared, so that a run failing
    /// half-way still deletes what it got to.
    queues: Mutex<Vec<String>>,
    /// Parent of every background piece's token: cancelled first at the end.
    shutdown: CancellationToken,
    /// One token per background piece, cancelled when it has returned (or panicked).
    finished: Mutex<Vec<CancellationToken>>,
}

/// A HAP piece (publisher, projectors) running in the background on the scratch broker.
pub struct Background {
    stop: CancellationToken,
    finished: CancellationToken,
}

impl Background {
    /// Asks the piece to stop and waits until it has.
    pub async fn stop(self) {
        self.stop.cancel();
        self.finished.cancelled().await;
    }
}

impl ScratchBroker {
    /// Picks a fresh prefix on the broker at `url`; nothing is declared yet.
    pub fn new(url: &AmqpUrls) -> Self {
        let prefix = hap_support::broker::scratch_prefix("bench");
        let unrouted = messaging::Topology::new(&prefix).unrouted();
        Self {
            url: url.clone(),
            prefix,
            // The publisher declares the unrouted queue beside the exchanges.
            queues: Mutex::new(vec![unrouted]),
            shutdown: CancellationToken::new(),
            finished: Mutex::new(vec![]),
        }
    }

    pub fn url(&self) -> &AmqpUrls {
        &self.url
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn topology(&self) -> Topology {
        messaging::Topology::new(&self.prefix)
    }

    /// `{prefix}.bench.{name}`: a queue of the bench's own, deleted at the end.
    pub fn bench_queue(&self, name: &str) -> String {
        let queue = format!("{}.bench.{name}", self.prefix);
        self.delete_at_end(queue.clone());
        queue
    }

    /// Marks every queue of `instance` (main, retry and dead-letter of each projector) for
    /// deletion at the end; call before anything declares them.
    pub fn instance_queues(&self, instance: &str) {
        for spec in &QUEUES {
            let names = QueueNames::new(&self.prefix, spec.service.name(), instance);
            for queue in [names.main, names.retry, names.dead_letters] {
                self.delete_at_end(queue);
            }
        }
    }

    /// Marks the saga services' shared queues (`{prefix}.{service}.saga`, with their retry and
    /// dead-letter queues) for deletion at the end. Every run's are: a publisher declares them
    /// when it starts, whether or not saga services run (as it declares the unrouted queue,
    /// marked in `new`).
    fn saga_queues(&self) {
        for service in domain::service::Service::ALL {
            let names = QueueNames::shared(&self.prefix, service.name());
            for queue in [names.main, names.retry, names.dead_letters] {
                self.delete_at_end(queue);
            }
        }
    }

    /// Declares every queue of `instance` and, with `sagas`, the saga services' queues, each
    /// bound as HAP binds it; all are deleted at the end. HAP's consumers declare their queues
    /// too, but only once they have connected: declared first, no early message goes unrouted.
    pub async fn declare_queues(&self, instance: &str, sagas: bool) -> anyhow::Result<()> {
        self.instance_queues(instance);
        let topology = self.topology();
        let mut declared = QUEUES
            .iter()
            .map(|spec| {
                let names = QueueNames::new(&self.prefix, spec.service.name(), instance);
                (spec.bindings(), names)
            })
            .collect::<Vec<_>>();
        if sagas {
            declared.extend(domain::service::Service::ALL.into_iter().map(|service| {
                let names = QueueNames::shared(&self.prefix, service.name());
                (messaging::queues::saga_bindings(service), names)
            }));
        }
        let connection = self.connect("setup").await?;
        for (bindings, names) in &declared {
            messaging::queues::declare_bound(&connection, &topology, bindings, names)
                .await
                .with_context(|| format!("Failed to declare {}", names.main))?;
        }
        connection.close(200, "done".into()).await.ok();
        Ok(())
    }

    fn delete_at_end(&self, queue: String) {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if !queues.contains(&queue) {
            queues.push(queue);
        }
    }

    /// A connection of the bench's own, named so that it is recognisable in the management UI.
    pub async fn connect(&self, name: &str) -> anyhow::Result<Connection> {
        messaging::broker::connect(&self.url, &format!("hap-bench {name}"))
            .await
            .with_context(|| format!("Failed to connect to RabbitMQ at {}", self.url))
    }

    /// Runs `piece(token)` in the background until the token is cancelled: by
    /// [`Background::stop`], or at the end of the run, before the queues are deleted (a HAP
    /// consumer left running would declare its queue again).
    pub fn spawn<F, Fut>(&self, piece: F) -> Background
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stop = self.shutdown.child_token();
        let finished = CancellationToken::new();
        let future = piece(stop.clone());
        let done = finished.clone().drop_guard();
        tokio::spawn(async move {
            // Dropped when the piece returns or panics: either way it has finished.
            let _done = done;
            future.await;
        });
        self.finished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(finished.clone());
        Background { stop, finished }
    }

    /// Stops every background piece, then deletes the queues and exchanges under the prefix.
    /// Carries on past failures, and reports the first.
    pub async fn destroy(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.saga_queues();
        let finished =
            std::mem::take(&mut *self.finished.lock().unwrap_or_else(|e| e.into_inner()));
        let all_stopped = futures::future::join_all(finished.iter().map(|f| f.cancelled()));
        if tokio::time::timeout(STOP_TIMEOUT, all_stopped)
            .await
            .is_err()
        {
            tracing::warn!("HAP's background tasks did not stop within {STOP_TIMEOUT:?}");
        }

        let connection = self.connect("clean-up").await?;
        let mut first_error: Option<anyhow::Error> = None;
        let mut channel: Option<Channel> = None;
        let queues = std::mem::take(&mut *self.queues.lock().unwrap_or_else(|e| e.into_inner()));
        let topology = self.topology();
        let exchanges = topology.exchanges().chain([topology.unrouted()]);
        let deletions = queues
            .into_iter()
            .map(|q| (q, true))
            .chain(exchanges.map(|e| (e, false)));
        for (name, is_queue) in deletions {
            // A failed operation closes its channel: the next one gets a fresh channel.
            let current = match channel.take() {
                Some(current) => current,
                None => connection
                    .create_channel()
                    .await
                    .context("Failed to open a channel to delete the bench's queues")?,
            };
            let deleted = if is_queue {
                current
                    .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                    .await
                    .map(|_| ())
            } else {
                current
                    .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                    .await
            };
            match deleted {
                Ok(()) => channel = Some(current),
                Err(error) => {
                    first_error.get_or_insert(anyhow!("Failed to delete {name}: {error}"));
                }
            }
        }
        connection.close(200, "done".into()).await.ok();
        match first_error {
            Some(error) => Err(error.context(format!(
                "RabbitMQ objects under prefix {} are left behind; delete them by hand",
                self.prefix
            ))),
            None => Ok(()),
        }
    }
}

/// Consumes `queue` on `channel` with manual acks, letting the broker send up to `prefetch`
/// deliveries ahead: how the raw consumers take their messages, as HAP's do.
pub async fn consume_with_acks(
    channel: &Channel,
    queue: &str,
    prefetch: u16,
) -> anyhow::Result<Consumer> {
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .context("basic.qos failed")?;
    channel
        .basic_consume(
            queue.into(),
            "hap-bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("Failed to consume {queue}"))
}

/// A channel on `connection`.
pub async fn open_channel(connection: &Connection) -> anyhow::Result<Channel> {
    connection
        .create_channel()
        .await
        .context("Failed to open a channel")
}

/// A channel on `connection` in confirm mode, as HAP's publisher publishes.
pub async fn open_confirm_channel(connection: &Connection) -> anyhow::Result<Channel> {
    let channel = open_channel(connection).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("Failed to put the channel in confirm mode")?;
    Ok(channel)
}
