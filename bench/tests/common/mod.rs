//! What the bench's test suites share: reading what a run announced, and checking that it
//! left nothing behind.

use hap_tests::broker::{amqp_url, queue_exists};
use lapin::{Connection, ConnectionProperties};
use projections::queues::{QUEUES, QueueNames};

/// The word after `label ` in a run's stderr (`exchange prefix`, `scratch database`).
fn announced<'a>(stderr: &'a str, label: &str) -> &'a str {
    stderr
        .split(&format!("{label} "))
        .nth(1)
        .and_then(|rest| rest.split([' ', ',', '\n']).next())
        .unwrap_or_else(|| panic!("no {label} in:\n{stderr}"))
}

/// The scratch exchange prefix a run announced on stderr.
pub fn prefix(stderr: &str) -> &str {
    announced(stderr, "exchange prefix")
}

/// Checks that none of the queues a run can declare under `prefix` is left on the broker: the
/// queues of `instances` (as the binary names its instances), the bench's own queues, the saga
/// services' shared queues and the unrouted queue.
pub fn assert_no_queues_left(prefix: &str, instances: &[&str]) {
    runtime().block_on(look_for_queues(prefix, instances));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

async fn look_for_queues(prefix: &str, instances: &[&str]) {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ is reachable");
    let instances = QUEUES.iter().flat_map(|spec| {
        instances
            .iter()
            .map(|instance| QueueNames::new(prefix, spec.service, instance))
    });
    let sagas = domain::saga::SagaService::ALL
        .into_iter()
        .map(|service| QueueNames::shared(prefix, service.name()));
    let own = ["all", "pipeline"].map(|name| format!("{prefix}.bench.{name}"));
    let queues = instances
        .chain(sagas)
        .flat_map(|names| [names.main, names.retry, names.dead_letters])
        .chain(own)
        .chain([projections::topology(prefix).unrouted()]);
    for queue in queues {
        assert!(
            !queue_exists(&connection, &queue).await,
            "{queue} was left behind"
        );
    }
    connection.close(200, "done".into()).await.ok();
}
