//! The broker side of the contract: exchange names, their alternate exchange, and the
//! unrouted queue. Declared at start and after every reconnect; declaring is idempotent. Which
//! exchanges there are is the application's to say (HAP's domain has one per aggregate
//! family); this module only prefixes and declares them.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

/// Names under one prefix (`hap` unless configured otherwise).
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    /// The topic exchanges, by suffix, as the application names them.
    exchanges: Vec<String>,
}

impl Topology {
    pub fn new<S: Into<String>>(
        prefix: impl Into<String>,
        exchanges: impl IntoIterator<Item = S>,
    ) -> Self {
        Self {
            prefix: prefix.into(),
            exchanges: exchanges.into_iter().map(Into::into).collect(),
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
        self.exchanges.iter().map(|suffix| self.exchange(suffix))
    }

    /// The alternate exchange and the queue behind it, both `{prefix}.unrouted`: messages no
    /// queue is bound for land there instead of being dropped.
    pub fn unrouted(&self) -> String {
        format!("{}.unrouted", self.prefix)
    }

    /// Declares the exchanges, the alternate exchange and the unrouted queue.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
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
        declare_quorum_queue(channel, &unrouted, FieldTable::default()).await?;
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
        Ok(())
    }
}

/// Declares a durable quorum queue with extra `arguments` (e.g. dead-lettering).
pub async fn declare_quorum_queue(
    channel: &Channel,
    name: &str,
    mut arguments: FieldTable,
) -> lapin::Result<()> {
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .map(|_| ())
}

/// A named connection. With `auto_recover`, lapin re-establishes it (and its channels and
/// consumers) by itself after a network failure or a broker restart; without, the caller
/// reconnects, as the publisher does to keep its confirm bookkeeping simple.
pub async fn connect(
    url: &str,
    name: &str,
    auto_recover: bool,
) -> lapin::Result<lapin::Connection> {
    let mut properties = lapin::ConnectionProperties::default().with_connection_name(name.into());
    if auto_recover {
        properties = properties.enable_auto_recover();
    }
    lapin::Connection::connect(url, properties).await
}
