//! RabbitMQ helpers: a unique prefix per test, a queue that captures everything published
//! under it, and clean-up of what the test declared.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use hap_support::broker::consume_without_acks;
use lapin::options::{
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use messaging::topology::look_up;

/// What a test sees of a delivered message.
#[derive(Debug, Clone)]
pub struct Captured {
    pub exchange: String,
    pub routing_key: String,
    pub properties: BasicProperties,
    pub data: Vec<u8>,
}

/// The broker the tests use (`HAP_AMQP_URL`, else the local default): one node.
pub fn amqp_url() -> String {
    std::env::var("HAP_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// [`amqp_url`] as HAP takes it.
pub fn amqp_urls() -> messaging::AmqpUrls {
    amqp_url().parse().expect("HAP_AMQP_URL is an AMQP URL")
}

/// An exchange prefix no other test (or run) uses.
pub fn unique_prefix() -> String {
    hap_support::broker::scratch_prefix("t")
}

/// A queue bound to every HAP exchange under `prefix` with `#`, collecting what arrives.
pub struct Capture {
    prefix: String,
    channel: Channel,
    _connection: Connection,
    messages: Arc<Mutex<Vec<Captured>>>,
}

impl Capture {
    pub async fn start(prefix: &str) -> Self {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ is reachable");
        let channel = connection.create_channel().await.expect("a channel");
        messaging::Topology::new(prefix)
            .declare(&connection)
            .await
            .expect("topology declared");
        let queue = format!("{prefix}.capture");
        // Exclusive: deleted with the connection, so nothing is left behind.
        channel
            .queue_declare(
                queue.clone().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("capture queue");
        for exchange in messaging::Topology::new(prefix).exchanges() {
            channel
                .queue_bind(
                    queue.clone().into(),
                    exchange.into(),
                    "#".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("bound");
        }
        let mut consumer = consume_without_acks(&channel, &queue, "capture")
            .await
            .expect("consuming");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                sink.lock().expect("not poisoned").push(Captured {
                    exchange: delivery.exchange.to_string(),
                    routing_key: delivery.routing_key.to_string(),
                    properties: delivery.properties,
                    data: delivery.data,
                });
            }
        });
        Self {
            prefix: prefix.to_owned(),
            channel,
            _connection: connection,
            messages,
        }
    }

    /// Everything captured so far.
    pub fn messages(&self) -> Vec<Captured> {
        self.messages.lock().expect("not poisoned").clone()
    }

    /// Waits (up to `timeout`) until `done` holds for the captured messages.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[Captured]) -> bool,
    ) -> Vec<Captured> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if done(&messages) || tokio::time::Instant::now() > deadline {
                return messages;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Deletes what the prefix declared outside any instance: the exchanges, the unrouted
    /// queue and the shared saga queues (a publisher declares them when it starts).
    pub async fn clean_up(self) {
        delete_shared(&self.channel, &self.prefix).await;
    }
}

/// The JSON body of a delivery.
pub fn body(delivery: &Captured) -> serde_json::Value {
    serde_json::from_slice(&delivery.data).expect("bodies are JSON")
}

/// A header of a delivery, as text.
pub fn header(delivery: &Captured, name: &str) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    headers.inner().get(name).and_then(|v| match v {
        lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
        lapin::types::AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    })
}

/// Publishes `body` straight into `queue` (through the default exchange), confirmed, as a
/// broker redelivery or a stray producer would put it there.
pub async fn publish_to_queue(queue: &str, body: &[u8], properties: BasicProperties) {
    use lapin::options::ConfirmSelectOptions;
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ is reachable");
    let channel = connection.create_channel().await.expect("a channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    hap_support::broker::publish_to_queue(&channel, queue, body, properties)
        .await
        .unwrap_or_else(|error| panic!("{queue} did not take it: {error:#}"));
    connection.close(200, "done".into()).await.ok();
}

/// Puts the message of `event` into the dead-letter queue of `names`, as its consumer would
/// have after failing on it with `error` (when it was, say, the read database that failed).
pub async fn dead_letter(
    names: &messaging::QueueNames,
    event: &eventstore::RecordedEvent,
    error: &str,
) {
    use lapin::types::AMQPValue;
    use messaging::headers;
    let route = messaging::routes::route(event).expect("the event is routed");
    let message = messaging::Outgoing::new(event, &route, "unused".into());
    let mut fields = message.properties.headers().clone().unwrap_or_default();
    fields.insert(headers::ERROR.into(), AMQPValue::LongString(error.into()));
    fields.insert(
        headers::ORIGINAL_QUEUE.into(),
        AMQPValue::LongString(names.main.as_str().into()),
    );
    fields.insert(
        headers::DEAD_LETTERED_AT.into(),
        AMQPValue::LongLongInt(chrono::Utc::now().timestamp_millis()),
    );
    let properties = message.properties.with_headers(fields);
    publish_to_queue(&names.dead_letters, &message.body, properties).await;
}

/// Waits until `queue` exists (its consumer declares it on start).
pub async fn wait_for_queue(queue: &str) {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ is reachable");
    for _ in 0..400 {
        // A failed passive declare closes the channel, so each try gets a new one.
        let channel = connection.create_channel().await.expect("a channel");
        if look_up(&channel, queue).await.is_ok() {
            connection.close(200, "done".into()).await.ok();
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{queue} was never declared");
}

/// Whether `queue` exists, by declaring it passively: nothing is created. Panics if the broker
/// cannot say (any failure but 404 NOT_FOUND), so that a broken connection never reads as
/// "gone".
pub async fn queue_exists(connection: &Connection, queue: &str) -> bool {
    // A failed passive declare closes the channel, so each check gets a new one.
    let channel = connection.create_channel().await.expect("a channel");
    match look_up(&channel, queue).await {
        Ok(_) => true,
        Err(error) => {
            let gone =
                matches!(error.kind(), lapin::ErrorKind::ProtocolError(e) if e.get_id() == 404);
            assert!(gone, "could not look for {queue}: {error}");
            false
        }
    }
}

/// Whether every exchange of `prefix` (the topic exchanges and the unrouted one) and the
/// unrouted queue exist, by declaring them passively: nothing is created.
pub async fn topology_exists(prefix: &str) -> bool {
    use lapin::options::ExchangeDeclareOptions;
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ is reachable");
    let topology = messaging::Topology::new(prefix);
    let mut exists = true;
    for exchange in topology.exchanges().chain([topology.unrouted()]) {
        // A failed passive declare closes the channel, so each check gets a new one.
        let channel = connection.create_channel().await.expect("a channel");
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        exists &= channel
            .exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Topic,
                passive,
                FieldTable::default(),
            )
            .await
            .is_ok();
    }
    let channel = connection.create_channel().await.expect("a channel");
    exists &= look_up(&channel, &topology.unrouted()).await.is_ok();
    connection.close(200, "done".into()).await.ok();
    exists
}

/// Takes every message waiting in `queue` (acknowledging them).
pub async fn drain(queue: &str) -> Vec<Captured> {
    use lapin::options::BasicGetOptions;
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ is reachable");
    let channel = connection.create_channel().await.expect("a channel");
    let mut taken = Vec::new();
    while let Ok(Some(message)) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
    {
        let delivery = message.delivery;
        taken.push(Captured {
            exchange: delivery.exchange.to_string(),
            routing_key: delivery.routing_key.to_string(),
            properties: delivery.properties,
            data: delivery.data,
        });
    }
    connection.close(200, "done".into()).await.ok();
    taken
}

/// Deletes every queue of `instance` under `prefix` (main, retry and dead-letter), the
/// prefix's saga queues (a publisher declares them), exchanges and unrouted queue, so that a
/// test leaves nothing on the broker.
pub async fn delete_instance_queues(prefix: &str, instance: &str) {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ is reachable");
    let channel = connection.create_channel().await.expect("a channel");
    for spec in projections::queues::QUEUES {
        let names = messaging::QueueNames::new(prefix, spec.service.name(), instance);
        delete_queues(&channel, names).await;
    }
    delete_shared(&channel, prefix).await;
    connection.close(200, "done".into()).await.ok();
}

/// Deletes the saga queues, the unrouted queue and the exchanges of `prefix`; a queue or
/// exchange already gone is no error.
async fn delete_shared(channel: &Channel, prefix: &str) {
    for service in domain::service::Service::ALL {
        delete_queues(
            channel,
            messaging::QueueNames::shared(prefix, service.name()),
        )
        .await;
    }
    let topology = messaging::Topology::new(prefix);
    let _ = channel
        .queue_delete(topology.unrouted().into(), QueueDeleteOptions::default())
        .await;
    for exchange in topology.exchanges().chain([topology.unrouted()]) {
        let _ = channel
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await;
    }
}

async fn delete_queues(channel: &Channel, names: messaging::QueueNames) {
    for queue in [names.main, names.retry, names.dead_letters] {
        let _ = channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
    }
}

/// Finds the broker connections whose client properties contain `needle` (HAP names each
/// connection after what it serves), through `rabbitmqctl`.
pub fn connections_named(needle: &str) -> Vec<String> {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-q",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl runs (it comes with rabbitmq-server)");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains(needle))
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// The messages of `queue` waiting to be delivered and those delivered but not yet
/// acknowledged, through `rabbitmqctl` (a consumer's unacknowledged ones are invisible to AMQP).
pub fn queue_counts(queue: &str) -> (u64, u64) {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ])
        .output()
        .expect("rabbitmqctl runs (it comes with rabbitmq-server)");
    let listing = String::from_utf8_lossy(&output.stdout);
    let counts = listing
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&queue))
        .unwrap_or_else(|| panic!("{queue} is not on the broker"));
    let count = |i: usize| counts[i].parse().expect("a count");
    (count(1), count(2))
}

/// Has the broker close a connection, as it does to every client when it restarts.
pub fn close_connection(pid: &str) {
    let closed = std::process::Command::new("rabbitmqctl")
        .args(["close_connection", pid, "test: closed by the broker"])
        .status()
        .expect("rabbitmqctl runs");
    assert!(closed.success(), "rabbitmqctl closed {pid}");
}
