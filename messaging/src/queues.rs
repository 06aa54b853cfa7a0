//! The queues and their companions: each instance's projector queues and the saga queues all
//! instances share (their names and bindings, from the domain's table of services), the retry
//! and dead-letter queues beside every one, and moving a message from one queue to another.

use domain::event::route;
use domain::service::Service;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicPublishOptions, QueueBindOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use crate::topology::Topology;

/// How many times the broker delivers a message before dead-lettering it by itself: the net
/// under the consumer's own retry counting, for a message that crashes the consumer.
const DELIVERY_LIMIT: i64 = 20;

/// A queue's binding: (exchange suffix, binding key).
pub type Binding = (&'static str, &'static str);

/// What `service`'s projector queue is bound to: every event of each exchange its read model
/// follows.
pub fn projector_bindings(service: Service) -> Vec<Binding> {
    service
        .spec()
        .reads
        .iter()
        .map(|exchange| (exchange.suffix(), exchange.every_event()))
        .collect()
}

/// What `service`'s saga queue is bound to: the routing key of each event it reacts to.
pub fn saga_bindings(service: Service) -> Vec<Binding> {
    service
        .triggers()
        .iter()
        .map(|trigger| {
            let route = route(trigger).expect("saga triggers are known events");
            (route.exchange.suffix(), route.routing_key)
        })
        .collect()
}

/// The names of one instance's queue and its companions.
#[derive(Debug, Clone)]
pub struct QueueNames {
    /// `{prefix}.{service}.{instance}.events`
    pub main: String,
    /// Where messages that cannot be applied end, with `x-error`.
    pub dead_letters: String,
    /// Where a message waits out its retry delay before returning to `main`.
    pub retry: String,
}

impl QueueNames {
    /// The names of an instance's own queue for `service`'s projector:
    /// `{prefix}.{service}.{instance}.events`.
    pub fn new(prefix: &str, service: &str, instance: &str) -> Self {
        Self::of(format!("{prefix}.{service}.{instance}.events"))
    }

    /// The names of the queue `service`'s saga steps share across every instance (competing
    /// consumers): `{prefix}.{service}.saga`.
    pub fn shared(prefix: &str, service: &str) -> Self {
        Self::of(format!("{prefix}.{service}.saga"))
    }

    fn of(main: String) -> Self {
        Self {
            dead_letters: format!("{main}.dlq"),
            retry: format!("{main}.retry"),
            main,
        }
    }
}

/// Declares every saga queue under `topology` with its companions and bindings. The publisher
/// does this before it publishes anything, so a trigger appended before any saga process has
/// started waits in its queue instead of going unrouted.
pub async fn declare_saga_queues(
    connection: &Connection,
    topology: &Topology,
) -> lapin::Result<()> {
    for service in Service::ALL {
        let names = QueueNames::shared(topology.prefix(), service.name());
        declare_bound(connection, topology, &saga_bindings(service), &names).await?;
    }
    Ok(())
}

/// Declares the exchanges, the queue `names` with its dead-letter and retry queues, and its
/// `bindings` as (exchange suffix, binding key) pairs.
pub async fn declare_bound(
    connection: &Connection,
    topology: &Topology,
    bindings: &[Binding],
    names: &QueueNames,
) -> lapin::Result<()> {
    topology.declare(connection).await?;
    topology
        .declare_quorum_queue(connection, &names.dead_letters, FieldTable::default())
        .await?;

    let mut main = dead_lettering_to(&names.dead_letters);
    main.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DELIVERY_LIMIT),
    );
    topology
        .declare_quorum_queue(connection, &names.main, main)
        .await?;
    // A quorum queue too, so that retries outlive a node: a classic queue lives on one node,
    // and while that node is down it cannot even be declared, which kept every consumer and
    // the publisher from reconnecting. A message published into it with `expiration = delay`
    // returns to the main queue once it expires at the head of the queue (RabbitMQ 3.10 and
    // later honour per-message expiry in quorum queues as in classic ones), removed only once
    // the main queue has it.
    topology
        .declare_quorum_queue(connection, &names.retry, dead_lettering_to(&names.main))
        .await?;

    let channel = connection.create_channel().await?;
    for (exchange, key) in bindings {
        channel
            .queue_bind(
                names.main.as_str().into(),
                topology.exchange(exchange).into(),
                (*key).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    channel.close(200, "declared".into()).await
}

/// The arguments of a queue whose dead letters go to `queue` through the default exchange,
/// at least once: a message is removed only once `queue` has it. (RabbitMQ dead-letters at
/// least once only from a queue that refuses publishes when full.)
fn dead_lettering_to(queue: &str) -> FieldTable {
    string_arguments(&[
        ("x-dead-letter-exchange", ""),
        ("x-dead-letter-routing-key", queue),
        ("x-dead-letter-strategy", "at-least-once"),
        ("x-overflow", "reject-publish"),
    ])
}

/// Queue arguments (`x-…`) whose values are all strings, as most of RabbitMQ's are.
pub fn string_arguments(pairs: &[(&str, &str)]) -> FieldTable {
    let mut arguments = FieldTable::default();
    for (name, value) in pairs {
        arguments.insert((*name).into(), AMQPValue::LongString((*value).into()));
    }
    arguments
}

/// Moves a delivery to `queue`: publishes a copy (with `properties`) through the default
/// exchange on `publish`, a channel in confirm mode, and acks the original only once the broker
/// confirmed the copy, so that at worst the message exists twice, never zero times. Returns
/// false, leaving the original unacknowledged (to be redelivered), if the copy was not stored.
pub async fn move_delivery(
    publish: &Channel,
    delivery: &Delivery,
    queue: &str,
    properties: BasicProperties,
) -> lapin::Result<bool> {
    if !publish_to_queue(publish, queue, &delivery.data, properties).await? {
        return Ok(false);
    }
    delivery.ack(BasicAckOptions::default()).await?;
    Ok(true)
}

/// Publishes `body` into `queue` through the default exchange as a mandatory message (an absent
/// queue returns it rather than dropping it) on `channel`, in confirm mode, and waits for the
/// broker's confirm: whether the broker stored it.
pub async fn publish_to_queue(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    properties: BasicProperties,
) -> lapin::Result<bool> {
    let confirmation = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            properties,
        )
        .await?
        .await?;
    Ok(matches!(confirmation, Confirmation::Ack(None)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projector_queues_are_bound_as_the_contract_says() {
        let bound: Vec<_> = Service::ALL
            .into_iter()
            .map(|service| (service.name(), projector_bindings(service)))
            .collect();
        assert_eq!(
            bound,
            [
                ("patient-service", vec![("patients", "patient.#")]),
                ("physician-service", vec![("physicians", "physician.#")]),
                (
                    "scheduling-service",
                    vec![
                        ("consultations", "consultation.#"),
                        ("patients", "patient.#"),
                        ("physicians", "physician.#"),
                    ]
                ),
                ("clinical-records", vec![("records", "record.#")]),
            ]
        );
    }

    #[test]
    fn queue_names_follow_the_contract() {
        let names = QueueNames::new("hap", Service::Records.name(), "a");
        assert_eq!(names.main, "hap.clinical-records.a.events");
        assert_eq!(names.retry, "hap.clinical-records.a.events.retry");
        assert_eq!(names.dead_letters, "hap.clinical-records.a.events.dlq");
        let saga = QueueNames::shared("hap", Service::Scheduling.name());
        assert_eq!(saga.main, "hap.scheduling-service.saga");
    }
}
