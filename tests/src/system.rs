//! The whole of HAP in the test's process: the HTTP API, the publisher, the projectors of
//! instance `test`, and (as asked) the saga services and the deadlines' timer, under an
//! exchange prefix of the test's own.

use std::time::Duration;

use messaging::QueueNames;
use messaging::consumer::ConsumerSettings;
use reqwest::Method;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::broker::{amqp_urls, delete_instance_queues, unique_prefix, wait_for_queue};
use crate::{TestApp, TestDb, start_publisher_on};

/// What runs beside the API, publisher and projectors.
#[derive(Debug, Clone, Copy)]
pub struct Parts {
    pub sagas: bool,
    pub timer: bool,
}

impl Parts {
    pub const ALL: Self = Self {
        sagas: true,
        timer: true,
    };
}

pub struct System {
    pub app: TestApp,
    pub state: api::AppState,
    pub prefix: String,
    pub settings: ConsumerSettings,
    /// Stops the publisher alone (a test of what runs without the broker's copies).
    pub publisher: CancellationToken,
    shutdown: CancellationToken,
}

impl System {
    /// Starts a system whose scheduling deadline is `timeout`, with authentication off.
    pub async fn start(db: &TestDb, timeout: Duration, parts: Parts) -> Self {
        Self::start_with(db, timeout, parts, crate::insecure_settings()).await
    }

    /// Starts a system with `settings` (their prefix and deadline replaced).
    pub async fn start_with(
        db: &TestDb,
        timeout: Duration,
        parts: Parts,
        mut settings: api::config::Settings,
    ) -> Self {
        api::telemetry::metrics_handle();
        let prefix = unique_prefix();
        settings.exchange_prefix = prefix.clone();
        settings.scheduling_timeout_ms = timeout.as_millis() as u64;
        let max_retries = settings.max_retries;
        let (app, state) = TestApp::start_state(db, settings).await;
        let consumers = ConsumerSettings::new(
            &amqp_urls(),
            messaging::Topology::new(&prefix),
            "test",
            max_retries,
        );
        let shutdown = CancellationToken::new();
        tokio::spawn(projections::live::run_all(
            state.read.clone(),
            state.commands.store().clone(),
            consumers.clone(),
            shutdown.child_token(),
        ));
        let system = Self {
            app,
            state,
            prefix,
            settings: consumers,
            publisher: CancellationToken::new(),
            shutdown,
        };
        if parts.sagas {
            system.start_sagas();
        }
        if parts.timer {
            system.start_timer();
        }
        // Consumers bind their queues as they start; events published before would be lost
        // to them (kept only in the unrouted queue).
        wait_for_queue(&QueueNames::new(&system.prefix, "scheduling-service", "test").main).await;
        if parts.sagas {
            for service in domain::service::Service::ALL {
                wait_for_queue(&QueueNames::shared(&system.prefix, service.name()).main).await;
            }
        }
        let publisher = start_publisher_on(system.state.commands.store().clone(), &system.prefix);
        Self {
            publisher,
            ..system
        }
    }

    /// Starts the saga services in this process (again, or for the first time).
    pub fn start_sagas(&self) {
        tokio::spawn(sagas::run_all(
            self.state.commands.clone(),
            self.state.read.local.clone(),
            self.settings.clone(),
            self.shutdown.child_token(),
        ));
    }

    pub fn start_timer(&self) {
        let timer = sagas::Timer {
            pipeline: self.state.commands.clone(),
            retention: self.state.settings.idempotency_retention,
            ready: Default::default(),
        };
        tokio::spawn(timer.run(self.shutdown.child_token()));
    }

    /// `GET /consultations/{id}`, once the read model shows it.
    pub async fn consultation(&self, id: Uuid) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let response = self
                .app
                .request(Method::GET, &format!("/consultations/{id}"))
                .send()
                .await
                .expect("query sent");
            if response.status() == 200 {
                return response.json().await.expect("a JSON body");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "consultation {id} never showed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The consultation once its status is `wanted` (or whatever it is after `timeout`).
    pub async fn wait_for_status(&self, id: Uuid, wanted: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let consultation = self.consultation(id).await;
            if consultation["status"] == wanted || tokio::time::Instant::now() > deadline {
                return consultation;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the consultation's status is `wanted`, reading it with `token`.
    pub async fn wait_for_status_as(&self, id: Uuid, wanted: &str, token: &str, timeout: Duration) {
        let reached = crate::eventually(timeout, || async {
            let response = self
                .app
                .request(Method::GET, &format!("/consultations/{id}"))
                .bearer_auth(token)
                .send()
                .await
                .expect("query sent");
            response.status() == 200
                && response.json::<Value>().await.expect("a JSON body")["status"] == wanted
        })
        .await;
        assert!(reached, "consultation {id} never became {wanted}");
    }

    /// The consultation once scheduling has ended, one way or the other.
    pub async fn settled(&self, id: Uuid) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let consultation = self.consultation(id).await;
            if consultation["status"] != "requested" || tokio::time::Instant::now() > deadline {
                return consultation;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops everything and deletes every queue and exchange of the prefix.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.publisher.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
        delete_instance_queues(&self.prefix, "test").await;
    }
}
