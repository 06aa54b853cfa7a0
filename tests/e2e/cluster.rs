//! HAP against several RabbitMQ nodes: a real `hap serve` on a three-node cluster of the test's
//! own (`scripts/cluster.sh`), which is ready only once its roles run, creates its quorum queues
//! on every node, and loses no accepted command when the node it is connected to is killed;
//! and a list whose first nodes refuse or never answer, on the machine's broker.

use std::collections::BTreeSet;
use std::time::Duration;

use domain::service::Service;
use hap_tests::broker::{amqp_url, delete_instance_queues, unique_prefix};
use hap_tests::cluster::Cluster;
use hap_tests::process::{free_address, serve};
use hap_tests::{TestDb, eventually, patient};
use messaging::QueueNames;
use projections::queues::QUEUES;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::process::Child;

/// Long enough for a killed node's queues to elect new leaders and for every connection to
/// move to another node (consumers and the publisher wait up to 5 s between tries).
const FAILOVER: Duration = Duration::from_secs(60);

const INSTANCE: &str = "c";

/// A `hap serve` process and a client of its HTTP API.
struct Hap {
    base: String,
    client: reqwest::Client,
    _process: Child,
}

impl Hap {
    /// Every role, on the broker nodes `urls`.
    fn start(db: &TestDb, prefix: &str, roles: &str, urls: &str) -> Self {
        let address = free_address();
        let process = serve(db, prefix, roles, INSTANCE, &address.to_string())
            .env("HAP_AMQP_URL", urls)
            .spawn()
            .expect("hap starts");
        Self {
            base: format!("http://{address}"),
            client: reqwest::Client::new(),
            _process: process,
        }
    }

    /// `/health/ready`'s status and body, once the process answers at all.
    async fn readiness(&self) -> (StatusCode, Value) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = self
                .client
                .get(format!("{}/health/ready", self.base))
                .send()
                .await
            {
                let status = response.status();
                return (status, response.json().await.expect("a JSON body"));
            }
            assert!(tokio::time::Instant::now() < deadline, "hap never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn becomes_ready(&self, within: Duration) {
        let ready = eventually(within, || async {
            self.readiness().await.0 == StatusCode::OK
        })
        .await;
        assert!(ready, "not ready: {:?}", self.readiness().await.1);
    }

    /// Registers a patient; the answer must be 201. Returns its id and position.
    async fn register(&self, document_number: &str) -> (String, String) {
        let response = self
            .client
            .post(format!("{}/patients", self.base))
            .json(&patient(document_number))
            .send()
            .await
            .expect("request sent");
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.expect("a JSON body");
        let text = |field: &str| body[field].as_str().expect("a text field").to_owned();
        (text("id"), text("position"))
    }

    /// Whether the patient reads back with its command's position.
    async fn shows(&self, (id, position): &(String, String)) -> bool {
        let response = self
            .client
            .get(format!("{}/patients/{id}", self.base))
            .header("X-Min-Position", position)
            .send()
            .await;
        matches!(response, Ok(r) if r.status() == StatusCode::OK)
    }

    /// Asserts that every one of `patients` reads back (each given up to `within`).
    async fn shows_all(&self, patients: &[(String, String)], within: Duration) {
        for registered in patients {
            assert!(
                eventually(within, || self.shows(registered)).await,
                "patient {} (position {}) never became visible",
                registered.0,
                registered.1
            );
        }
    }
}

/// The consumers of every role of `prefix`'s instance, by queue: what readiness names.
fn consumer_queues(prefix: &str) -> Vec<String> {
    let projectors = QUEUES
        .iter()
        .map(|spec| QueueNames::new(prefix, spec.service.name(), INSTANCE));
    let sagas = Service::ALL
        .into_iter()
        .map(|service| QueueNames::shared(prefix, service.name()));
    projectors.chain(sagas).map(|names| names.main).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hap_on_a_cluster_is_ready_once_its_roles_run_and_keeps_every_command_when_its_node_dies() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let cluster = Cluster::new(3).await;
    let roles = "command,query,publisher,projector,saga,timer";
    let hap = Hap::start(&db, &prefix, roles, &cluster.urls);

    // No node runs yet: the process serves, but says which of its parts do not run.
    let mut waiting: BTreeSet<String> = consumer_queues(&prefix).into_iter().collect();
    waiting.insert("publisher".into());
    let named = eventually(Duration::from_secs(30), || async {
        let (status, body) = hap.readiness().await;
        let not_ready: BTreeSet<String> = body["notReady"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|name| name.as_str().map(str::to_owned))
            .collect();
        status == StatusCode::SERVICE_UNAVAILABLE
            && body["failing"] == serde_json::json!(["rabbitmq"])
            && not_ready == waiting
    })
    .await;
    assert!(
        named,
        "readiness does not name every consumer and the publisher: {:?}",
        hap.readiness().await.1
    );

    // Started again once the whole cluster runs: a queue created while a node is still
    // joining would have no member there (RabbitMQ does not add one later by itself).
    drop(hap);
    cluster.up().await;
    let hap = Hap::start(&db, &prefix, roles, &cluster.urls);
    hap.becomes_ready(FAILOVER).await;
    let mut patients = vec![];
    for n in 0..3 {
        patients.push(hap.register(&format!("BEFORE-{n}")).await);
    }
    hap.shows_all(&patients, FAILOVER).await;

    // Every queue (each consumer's, with its retry and dead-letter queues, and the unrouted
    // one) is a quorum queue with a member on each of the three nodes.
    let listing = cluster
        .ctl(
            2,
            &[
                "list_queues",
                "-q",
                "--no-table-headers",
                "name",
                "type",
                "members",
            ],
        )
        .await;
    let quorum_queues = consumer_queues(&prefix)
        .into_iter()
        .flat_map(|queue| [format!("{queue}.dlq"), format!("{queue}.retry"), queue])
        .chain([format!("{prefix}.unrouted")]);
    for queue in quorum_queues {
        let line = listing
            .lines()
            .find(|line| line.split_whitespace().next() == Some(queue.as_str()))
            .unwrap_or_else(|| panic!("{queue} is not on the cluster:\n{listing}"));
        assert!(line.contains("quorum"), "{line}");
        assert_eq!(line.matches("@localhost").count(), 3, "{line}");
    }

    // HAP connected to the first node, which answered; it goes.
    let first = format!("<{}.", cluster.node_name(1).await);
    let connections = cluster
        .ctl(
            2,
            &[
                "list_connections",
                "-q",
                "--no-table-headers",
                "pid",
                "client_properties",
            ],
        )
        .await;
    let haps: Vec<&str> = connections
        .lines()
        .filter(|line| line.contains("hap-publisher") || line.contains("hap-consumer"))
        .collect();
    assert_eq!(
        haps.len(),
        9,
        "the publisher and 8 consumers:\n{connections}"
    );
    assert!(
        haps.iter().all(|line| line.starts_with(&first)),
        "{connections}"
    );
    cluster.kill(1).await;
    for n in 0..3 {
        patients.push(hap.register(&format!("AFTER-{n}")).await);
    }
    hap.shows_all(&patients, FAILOVER).await;
    hap.becomes_ready(FAILOVER).await;

    cluster.start(1).await;
    patients.push(hap.register("RESTARTED").await);
    hap.shows_all(&patients, FAILOVER).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_refuse_or_never_answer_are_passed_over_for_the_next() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    // Accepts connections (the kernel does, into its backlog) and never says a word.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let silent = listener.local_addr().expect("an address");
    // Nothing listens there.
    let closed = free_address();
    let urls = format!(
        "amqp://guest:guest@{silent}/%2f,amqp://guest:guest@{closed}/%2f,{}",
        amqp_url()
    );

    let hap = Hap::start(&db, &prefix, "publisher,projector,saga", &urls);

    hap.becomes_ready(FAILOVER).await;
    drop((hap, listener));
    delete_instance_queues(&prefix, INSTANCE).await;
}
