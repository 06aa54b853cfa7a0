//! Shared helpers for HAP's end-to-end tests: each test gets its own database (through
//! `#[sqlx::test]`, which drops it after a passing test) and, where it needs one, its own HTTP
//! server on port 0 running the real router.

pub mod broker;
pub mod process;

use std::future::{Future, IntoFuture};
use std::sync::Arc;

use chrono::Utc;
use eventstore::{Append, EventStore, Metadata, NewEvent, StreamVersion};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;
use sqlx::PgPool;
use tokio::net::TcpListener;
use uuid::Uuid;

/// An append of `count` opaque events to `stream`, as a writer at `expected` would make it.
pub fn test_append(stream: Uuid, expected: StreamVersion, count: usize) -> Append {
    Append {
        stream_id: stream,
        aggregate_type: "test".into(),
        expected,
        events: (0..count)
            .map(|i| NewEvent {
                event_id: Uuid::now_v7(),
                event_type: "TestHappened".into(),
                payload: serde_json::json!({ "n": i }),
                occurred_at: Utc::now(),
            })
            .collect(),
        claims: vec![],
        remember: None,
        metadata: metadata(),
    }
}

fn metadata() -> Metadata {
    Metadata {
        tenant_id: "default".into(),
        correlation_id: Uuid::now_v7().to_string(),
        causation_id: None,
        schema_version: 1,
    }
}

/// A running HAP HTTP API on its own port, over the test's database.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
}

impl TestApp {
    pub async fn start(pool: PgPool) -> Self {
        let state = api::AppState::new(
            EventStore::new(pool.clone()),
            api::config::Settings::defaults(),
        );
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("port 0 is free");
        let base = format!("http://{}", listener.local_addr().expect("bound"));
        tokio::spawn(axum::serve(listener, api::router(state, true)).into_future());
        Self {
            base,
            client: reqwest::Client::new(),
            pool,
        }
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    /// Sends a JSON body; the future borrows neither `self` nor `path`, so many can run at once.
    pub fn send(
        &self,
        method: Method,
        path: &str,
        body: Value,
    ) -> impl Future<Output = Response> + use<> {
        let request = self.request(method, path).json(&body).send();
        async move { request.await.expect("request sent") }
    }

    pub fn post(&self, path: &str, body: Value) -> impl Future<Output = Response> + use<> {
        self.send(Method::POST, path, body)
    }

    pub fn patch(&self, path: &str, body: Value) -> impl Future<Output = Response> + use<> {
        self.send(Method::PATCH, path, body)
    }

    /// How many events the store holds: what a rejected command must leave unchanged.
    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("select count(*) from events")
            .fetch_one(&self.pool)
            .await
            .expect("events counted")
    }

    /// Registers a patient and returns its id.
    pub async fn register_patient(&self, document_number: &str) -> Uuid {
        let response = self.post("/patients", patient(document_number)).await;
        assert_eq!(response.status(), 201, "{:?}", response.text().await);
        id_of(response).await
    }

    /// Registers a physician and returns its id.
    pub async fn register_physician(&self, license_number: &str) -> Uuid {
        let body = serde_json::json!({
            "name": "Dr. Rui Costa", "specialty": "cardiology", "licenseNumber": license_number
        });
        let response = self.post("/physicians", body).await;
        assert_eq!(response.status(), 201, "{:?}", response.text().await);
        id_of(response).await
    }

    /// Requests a consultation tomorrow and returns its id.
    pub async fn request_consultation(&self, patient: Uuid, physician: Uuid) -> Uuid {
        let body = serde_json::json!({
            "patientId": patient,
            "physicianId": physician,
            "startsAt": (Utc::now() + chrono::Duration::days(1)).to_rfc3339(),
        });
        let response = self.post("/consultations", body).await;
        assert_eq!(response.status(), 202, "{:?}", response.text().await);
        id_of(response).await
    }

    /// Appends an event to a stream as a saga step would (the sagas run elsewhere).
    pub async fn append_event(&self, stream: Uuid, event: &domain::Event) {
        let store = EventStore::new(self.pool.clone());
        let version = store
            .read_stream(stream, StreamVersion::EMPTY)
            .await
            .unwrap()
            .len();
        let (event_type, payload) = event.into_parts();
        let kind = domain::event::route(event_type)
            .expect("a known event")
            .aggregate;
        store
            .append(Append {
                stream_id: stream,
                aggregate_type: kind.as_str().into(),
                expected: StreamVersion::new(version as u64),
                events: vec![NewEvent {
                    event_id: Uuid::now_v7(),
                    event_type: event_type.into(),
                    payload,
                    occurred_at: Utc::now(),
                }],
                claims: vec![],
                remember: None,
                metadata: metadata(),
            })
            .await
            .expect("appended");
    }
}

/// Runs an in-process publisher over `pool` to exchanges under `prefix`, until the returned
/// token is cancelled.
pub fn start_publisher(pool: &PgPool, prefix: &str) -> tokio_util::sync::CancellationToken {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let publisher = eventstore::Publisher::new(
        EventStore::new(pool.clone()),
        Arc::new(api::routing::DomainRouter),
        eventstore::PublisherSettings::new(broker::amqp_url(), prefix),
    );
    tokio::spawn(publisher.run(shutdown.clone()));
    shutdown
}

/// A valid registration body.
pub fn patient(document_number: &str) -> Value {
    serde_json::json!({
        "name": "Ana Lima",
        "birthDate": "1990-05-01",
        "documentNumber": document_number,
        "email": "ana@example.org",
    })
}

/// The `id` of a command response.
pub async fn id_of(response: Response) -> Uuid {
    let body: Value = response.json().await.expect("a JSON body");
    body["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("an id")
}
