//! The broker side of the contract: exchange names, their alternate exchange, the unrouted
//! queue, and how quorum queues are declared (on how many nodes; an existing queue used as it
//! is). Declared at start and after every reconnect; declaring is idempotent. The exchanges
//! are the domain's, one per aggregate family (`domain::event::Exchange`).

use domain::event::Exchange;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind, Queue};

/// The queue argument that says how many members a quorum queue starts with.
const QUORUM_SIZE_ARGUMENT: &str = "x-quorum-initial-group-size";

/// Names under one prefix (`hap` unless configured otherwise), and how quorum queues are made.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    /// How many nodes hold a copy of each quorum queue created; `None` leaves it to the broker
    /// (RabbitMQ's default is up to three).
    quorum_size: Option<u16>,
}

impl Topology {
    /// HAP's exchanges under `prefix`, with quorum queues sized by the broker.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            quorum_size: None,
        }
    }

    /// The same names, with every quorum queue created on `size` nodes.
    pub fn with_quorum_size(self, size: u16) -> Self {
        Self {
            quorum_size: Some(size),
            ..self
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{prefix}.{suffix}`, e.g. `hap.patients`.
    pub fn exchange(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.prefix)
    }

    /// Every topic exchange's full name.
    pub fn exchanges(&self) -> impl Iterator<Item = String> + '_ {
        Exchange::ALL
            .into_iter()
            .map(|exchange| self.exchange(exchange.suffix()))
    }

    /// The alternate exchange and the queue behind it, both `{prefix}.unrouted`: messages no
    /// queue is bound for land there instead of being dropped.
    pub fn unrouted(&self) -> String {
        format!("{}.unrouted", self.prefix)
    }

    /// Declares the exchanges, the alternate exchange and the unrouted queue.
    pub async fn declare(&self, connection: &Connection) -> lapin::Result<()> {
        let channel = connection.create_channel().await?;
        let unrouted = self.unrouted();
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                unrouted.clone().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        self.declare_quorum_queue(connection, &unrouted, FieldTable::default())
            .await?;
        channel
            .queue_bind(
                unrouted.clone().into(),
                unrouted.clone().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut arguments = FieldTable::default();
        arguments.insert(
            "alternate-exchange".into(),
            AMQPValue::LongString(unrouted.into()),
        );
        for exchange in self.exchanges() {
            channel
                .exchange_declare(
                    exchange.into(),
                    ExchangeKind::Topic,
                    durable,
                    arguments.clone(),
                )
                .await?;
        }
        close(channel).await
    }

    /// Declares a durable quorum queue with extra `arguments` (e.g. dead-lettering), created
    /// on [`Self::with_quorum_size`] nodes. A queue that exists already with other arguments
    /// is kept as it is, with a warning: RabbitMQ refuses to declare it again otherwise, and a
    /// consumer that cannot declare its queue cannot consume at all. That is how queues made
    /// by an earlier HAP live on: without a replication factor (which only counts at creation
    /// anyway), or a retry queue that was a classic queue. Its own channels, since a refused
    /// declaration closes the one it was made on.
    pub async fn declare_quorum_queue(
        &self,
        connection: &Connection,
        name: &str,
        mut arguments: FieldTable,
    ) -> lapin::Result<()> {
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        if let Some(size) = self.quorum_size {
            arguments.insert(
                QUORUM_SIZE_ARGUMENT.into(),
                AMQPValue::LongInt(i32::from(size)),
            );
        }
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let channel = connection.create_channel().await?;
        let refusal = match channel.queue_declare(name.into(), durable, arguments).await {
            Ok(_) => return close(channel).await,
            Err(error) => match inequivalent_arguments(&error) {
                Some(refusal) => refusal,
                None => return Err(error),
            },
        };
        if refusal.contains(QUORUM_SIZE_ARGUMENT) {
            tracing::debug!(queue = name, %refusal, "an existing queue keeps its replication factor");
        } else {
            tracing::warn!(queue = name, %refusal, "an existing queue keeps the arguments it was declared with; delete it (once empty) to have it declared anew");
        }
        let channel = connection.create_channel().await?;
        look_up(&channel, name).await?;
        close(channel).await
    }
}

/// Looks `queue` up by declaring it passively: its message and consumer counts if it exists;
/// nothing is created. A failure (404 NOT_FOUND if it does not exist) closes `channel`.
pub async fn look_up(channel: &Channel, queue: &str) -> lapin::Result<Queue> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
}

/// RabbitMQ's words when it refused a declaration because the queue exists with other
/// arguments (406 PRECONDITION_FAILED, "inequivalent arg …").
fn inequivalent_arguments(error: &lapin::Error) -> Option<String> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(refusal) if refusal.get_id() == 406 => {
            let text = refusal.get_message().as_str();
            text.contains("inequivalent arg").then(|| text.to_owned())
        }
        _ => None,
    }
}

/// Closes a channel that declared what it had to.
async fn close(channel: Channel) -> lapin::Result<()> {
    channel.close(200, "declared".into()).await
}
