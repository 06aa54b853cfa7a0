//! RabbitMQ: scratch exchange prefixes, and publishing straight into a queue with a confirm.

use anyhow::{Context, bail};
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Consumer, PublisherConfirm};

/// `{label}{random}`: an exchange prefix no other test or run uses (12 hex digits of a v4 UUID,
/// as for scratch databases).
pub fn scratch_prefix(label: &str) -> String {
    format!(
        "{label}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Publishes `body` into `queue` through the default exchange as a mandatory message (an absent
/// queue fails it rather than dropping it), and waits for the broker's confirm. `channel` must
/// be in confirm mode.
pub async fn publish_to_queue(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    properties: BasicProperties,
) -> anyhow::Result<()> {
    let stored = messaging::queues::publish_to_queue(channel, queue, body, properties)
        .await
        .with_context(|| format!("basic.publish to {queue} failed"))?;
    anyhow::ensure!(stored, "{queue} did not take the message");
    Ok(())
}

/// Consumes `queue` on `channel` as `tag`, without acks: a delivery is taken as it is sent,
/// which is all a listener that only looks at what arrives needs.
pub async fn consume_without_acks(
    channel: &Channel,
    queue: &str,
    tag: &str,
) -> anyhow::Result<Consumer> {
    let options = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    channel
        .basic_consume(queue.into(), tag.into(), options, FieldTable::default())
        .await
        .with_context(|| format!("Failed to consume {queue}"))
}

/// Waits for a publish's confirm; anything but a plain ack is an error.
pub async fn confirmed(confirm: PublisherConfirm) -> anyhow::Result<()> {
    match confirm.await.context("Waiting for a confirm failed")? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => bail!("a message was returned as unroutable"),
        Confirmation::Nack(_) => bail!("the broker nacked a message"),
        Confirmation::NotRequested => bail!("the channel is not in confirm mode"),
    }
}
