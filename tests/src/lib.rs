//! Shared helpers for HAP's end-to-end tests: each test gets its own database ([`TestDb`], a
//! scratch database dropped with it, whether the test passed or not) and, where it needs one,
//! its own HTTP server on port 0 running the real router, or its own RabbitMQ cluster
//! ([`cluster`]); [`publishing::Publishing`] adds a publisher and a capture of what it sends.
//! What the benchmarks need as well lives in `hap-support`.

pub mod broker;
pub mod cluster;
pub mod process;
pub mod publishing;
pub mod system;
pub mod tokens;

use std::future::Future;
use std::sync::Arc;

use chrono::Utc;
use eventstore::{Append, EventStore, NewEvent, StreamVersion};
use hap_support::database::ScratchDatabase;
use hap_support::server::HttpServer;
use hap_support::system::metadata;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

/// An append of `count` opaque events to `stream`, as a writer at `expected` would make it.
pub fn test_append(stream: Uuid, expected: StreamVersion, count: usize) -> Append {
    let events = (0..count)
        .map(|i| NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "TestHappened".into(),
            payload: serde_json::json!({ "n": i }),
            occurred_at: Utc::now(),
            schema_version: 1,
        })
        .collect();
    plain_append(stream, "test", expected, events)
}

/// An append of `events` to `stream` (an `aggregate_type`) at `expected` and nothing else: no
/// claim, idempotency key, deadline or erasure, in a system's own metadata.
pub fn plain_append(
    stream: Uuid,
    aggregate_type: &str,
    expected: StreamVersion,
    events: Vec<NewEvent>,
) -> Append {
    Append {
        stream_id: stream,
        aggregate_type: aggregate_type.into(),
        expected,
        events,
        claims: vec![],
        remember: None,
        metadata: metadata(),
        deadlines: vec![],
        ends: None,
        erases: None,
        new_keys: vec![],
    }
}

/// A database of the test's own, migrated, and dropped (forcibly) when the value is dropped,
/// whatever connections the test left open to it.
pub struct TestDb {
    pub pool: PgPool,
    pub url: String,
    scratch: ScratchDatabase,
}

/// The server-level URL tests create their databases through (`DATABASE_URL`).
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The streams [`TestDb::insert_earlier_release`] writes.
#[derive(Debug, Clone, Copy)]
pub struct EarlierRelease {
    pub patient: Uuid,
    pub physician: Uuid,
    pub consultation: Uuid,
    pub record: Uuid,
    /// The consultation's record book, the stream of the record's events.
    pub book: Uuid,
}

impl EarlierRelease {
    fn new() -> Self {
        let consultation = Uuid::now_v7();
        Self {
            patient: Uuid::now_v7(),
            physician: Uuid::now_v7(),
            consultation,
            record: Uuid::now_v7(),
            book: domain::record::RecordBook::stream_id(consultation.into()),
        }
    }
}

impl TestDb {
    /// Appends `payload` of `event_type` to `stream` in clear at version 1 of its type, as a
    /// release before sealing stored it (tenant `default`).
    pub async fn insert_clear(
        &self,
        stream: Uuid,
        aggregate: &str,
        version: i64,
        event_type: &str,
        payload: Value,
    ) {
        sqlx::query(
            "insert into events (event_id, stream_id, aggregate_type, version, event_type,
                                 payload, tenant_id, correlation_id, schema_version, occurred_at)
             values ($1, $2, $3, $4, $5, $6::json, 'default', 'earlier-release', 1, now())",
        )
        .bind(Uuid::now_v7())
        .bind(stream)
        .bind(aggregate)
        .bind(version)
        .bind(event_type)
        .bind(payload.to_string())
        .execute(&self.pool)
        .await
        .expect("a clear event inserted");
    }

    /// Stores in clear, as the release before sealing did, an event of every personal type: a
    /// patient registered (`OLD-NAME`, document `OLD-PATIENT-DOC`, `old@example.org`) and
    /// updated (phone `+55 OLD-PHONE`), a physician registered (`OLD-DOCTOR`, license
    /// `OLD-CRM`), and a record of their consultation created (`OLD-CONTENT-1`) and updated
    /// (`OLD-CONTENT-2`): five events to seal.
    pub async fn insert_earlier_release(&self) -> EarlierRelease {
        let ids = EarlierRelease::new();
        let EarlierRelease {
            patient,
            physician,
            consultation,
            record,
            book,
        } = ids;
        let clear = [
            (
                patient,
                "patient",
                1,
                "PatientRegistered",
                json!({"patientId": patient, "name": "OLD-NAME", "birthDate": "1970-01-02",
                    "documentNumber": "OLD-PATIENT-DOC", "email": "old@example.org"}),
            ),
            (
                patient,
                "patient",
                2,
                "PatientUpdated",
                json!({"patientId": patient, "phone": "+55 OLD-PHONE"}),
            ),
            (
                physician,
                "physician",
                1,
                "PhysicianRegistered",
                json!({"physicianId": physician, "name": "OLD-DOCTOR", "specialty": "cardiology",
                    "licenseNumber": "OLD-CRM"}),
            ),
            (
                book,
                "record",
                1,
                "ConsultationRecordCreated",
                json!({"recordId": record, "consultationId": consultation, "patientId": patient,
                    "physicianId": physician, "content": "OLD-CONTENT-1"}),
            ),
            (
                book,
                "record",
                2,
                "ConsultationRecordUpdated",
                json!({"recordId": record, "consultationId": consultation,
                    "content": "OLD-CONTENT-2"}),
            ),
        ];
        for (stream, aggregate, version, event_type, payload) in clear {
            self.insert_clear(stream, aggregate, version, event_type, payload)
                .await;
        }
        ids
    }

    /// The event store over this database reading events as they are stored: sealed personal
    /// fields stay sealed. [`store`] opens them, as HAP's readers do.
    pub fn plain_store(&self) -> EventStore {
        EventStore::new(self.pool.clone())
    }

    /// The event types of a stream, in order.
    pub async fn stream_events(&self, stream: Uuid) -> Vec<String> {
        sqlx::query_scalar("select event_type from events where stream_id = $1 order by version")
            .bind(stream)
            .fetch_all(&self.pool)
            .await
            .expect("events read")
    }

    /// How many events of `event_type` are stored.
    pub async fn events_of_type(&self, event_type: &str) -> i64 {
        self.scalar(
            "select count(*) from events where event_type = $1",
            event_type,
        )
        .await
    }

    /// How many stored events hold `text` in their payload as it is stored: in clear.
    pub async fn events_holding(&self, text: &str) -> i64 {
        self.scalar(
            "select count(*) from events where strpos(payload::text, $1) > 0",
            text,
        )
        .await
    }

    /// The one value `sql` selects, with `bind` as `$1`.
    pub async fn scalar<'q, T, B>(&self, sql: &'static str, bind: B) -> T
    where
        T: Send + Unpin,
        (T,): for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
        B: 'q + sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        sqlx::query_scalar(sql)
            .bind(bind)
            .fetch_one(&self.pool)
            .await
            .expect(sql)
    }

    pub async fn new() -> Self {
        Self::on(&admin_url()).await
    }

    /// A database of the test's own on the server of `server_url` (a private server that the
    /// test may stop, say).
    pub async fn on(server_url: &str) -> Self {
        let scratch = ScratchDatabase::new(server_url, "test").expect("the server URL is a URL");
        let pool = scratch
            .create(16)
            .await
            .expect("PostgreSQL is reachable at the server URL");
        Self {
            pool,
            url: scratch.url().to_owned(),
            scratch,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let scratch = self.scratch.clone();
        // Drop cannot await, and the test's runtime may be single-threaded: a thread with a
        // runtime of its own does the clean-up, and is joined so it finishes before the test.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            // Best effort: a database left behind only costs disk space.
            let _ = runtime.block_on(scratch.destroy());
        });
        let _ = cleanup.join();
    }
}

/// A database of the test's own and the API over it, as [`TestApp::start`] runs it. Keep the
/// database as long as the API: dropping it drops the database.
pub async fn start_app() -> (TestDb, TestApp) {
    let db = TestDb::new().await;
    let app = TestApp::start(&db).await;
    (db, app)
}

/// A running HAP HTTP API on its own port, over the test's database.
#[derive(Clone)]
pub struct TestApp {
    pub base: String,
    /// Shared by the clones; the server stops when the last one is dropped.
    _server: Arc<HttpServer>,
    pub client: reqwest::Client,
    pub pool: PgPool,
    /// The app's own read model (schema `rm_test`): its `progress` is the one the app's
    /// queries wait on and its cache follows.
    pub read: projections::ReadModel,
}

impl TestApp {
    /// The API with authentication switched off (`--insecure-no-auth`): every request acts as
    /// tenant `default` with every scope. The tests of authentication configure a key.
    pub async fn start(db: &TestDb) -> Self {
        Self::start_with(db, insecure_settings()).await
    }

    pub async fn start_with(db: &TestDb, settings: api::config::Settings) -> Self {
        Self::start_state(db, settings).await.0
    }

    /// Starts the HTTP API and returns it with the state it serves, for a test that runs more
    /// of the system (projectors, sagas) on the same state.
    pub async fn start_state(
        db: &TestDb,
        settings: api::config::Settings,
    ) -> (Self, api::AppState) {
        let pool = db.pool.clone();
        let read = read_model(db, "test").await;
        let state = api::AppState::new(
            api::db::event_store(pool.clone()),
            read.clone(),
            settings,
            Default::default(),
        )
        .expect("authentication is configured");
        let server = HttpServer::start(state.clone(), true, true)
            .await
            .expect("HAP serves on a free port");
        let app = Self {
            base: server.base_url(),
            _server: Arc::new(server),
            client: reqwest::Client::new(),
            pool,
            read,
        };
        (app, state)
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    /// `GET path`, its body as JSON, whatever the status.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path).await.json().await.expect("a JSON body")
    }

    /// `GET path`, its body as text, whatever the status.
    pub async fn get_text(&self, path: &str) -> String {
        self.get(path).await.text().await.expect("a text body")
    }

    async fn get(&self, path: &str) -> Response {
        let request = self.request(Method::GET, path).send();
        request.await.expect("request sent")
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

    /// Sends a JSON body and asserts the answer's status; on another status the panic shows
    /// the body, which says why.
    pub async fn send_expecting(
        &self,
        method: Method,
        path: &str,
        body: Value,
        status: u16,
    ) -> Response {
        let response = self.send(method.clone(), path, body).await;
        if response.status() != status {
            let got = response.status();
            let text = response.text().await.unwrap_or_default();
            panic!("{method} {path} answered {got}, not {status}: {text}");
        }
        response
    }

    /// `POST path` with `body`, asserting the answer's status.
    pub async fn post_expecting(&self, path: &str, body: Value, status: u16) -> Response {
        self.send_expecting(Method::POST, path, body, status).await
    }

    /// `PATCH path` with `body`, asserting the answer's status.
    pub async fn patch_expecting(&self, path: &str, body: Value, status: u16) -> Response {
        self.send_expecting(Method::PATCH, path, body, status).await
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
        let body = patient(document_number);
        id_of(self.post_expecting("/patients", body, 201).await).await
    }

    /// Registers a patient for the tenant of `token` and returns its id.
    pub async fn register_patient_as(&self, token: &str, document_number: &str) -> Uuid {
        let request = self.request(Method::POST, "/patients").bearer_auth(token);
        let response = request.json(&patient(document_number)).send().await;
        let response = response.expect("request sent");
        assert_eq!(response.status(), 201, "{:?}", response.text().await);
        id_of(response).await
    }

    /// Registers a patient (`DOC-1`) and a physician (`CRM-1`): what most consultations need.
    pub async fn register_patient_and_physician(&self) -> (Uuid, Uuid) {
        let patient = self.register_patient("DOC-1").await;
        (patient, self.register_physician("CRM-1").await)
    }

    /// Registers patients `DOC-1` and `DOC-2`, then physicians `CRM-1` and `CRM-2`: for a
    /// consultation whose people change while another pair's does not.
    pub async fn register_two_of_each(&self) -> ([Uuid; 2], [Uuid; 2]) {
        let patients = [
            self.register_patient("DOC-1").await,
            self.register_patient("DOC-2").await,
        ];
        let physicians = [
            self.register_physician("CRM-1").await,
            self.register_physician("CRM-2").await,
        ];
        (patients, physicians)
    }

    /// Registers a physician and returns its id.
    pub async fn register_physician(&self, license_number: &str) -> Uuid {
        let body = physician(license_number);
        id_of(self.post_expecting("/physicians", body, 201).await).await
    }

    /// Registers a physician for the tenant of `token` and returns its id.
    pub async fn register_physician_as(&self, token: &str, license_number: &str) -> Uuid {
        let body = physician(license_number);
        let request = self.request(Method::POST, "/physicians").bearer_auth(token);
        let response = request.json(&body).send().await.expect("request sent");
        assert_eq!(response.status(), 201, "{:?}", response.text().await);
        id_of(response).await
    }

    /// Requests a consultation tomorrow for the tenant of `token` and returns its id.
    pub async fn request_consultation_as(
        &self,
        token: &str,
        patient: Uuid,
        physician: Uuid,
    ) -> Uuid {
        let body = serde_json::json!({
            "patientId": patient,
            "physicianId": physician,
            "startsAt": (Utc::now() + chrono::Duration::days(1)).to_rfc3339(),
        });
        let request = self
            .request(Method::POST, "/consultations")
            .bearer_auth(token);
        let response = request.json(&body).send().await.expect("request sent");
        assert_eq!(response.status(), 202, "{:?}", response.text().await);
        id_of(response).await
    }

    /// Requests a consultation tomorrow and returns its id.
    pub async fn request_consultation(&self, patient: Uuid, physician: Uuid) -> Uuid {
        let tomorrow = Utc::now() + chrono::Duration::days(1);
        self.request_consultation_at(patient, physician, tomorrow)
            .await
    }

    /// Requests a 30-minute consultation at `at` and returns its id (202: the saga starts).
    pub async fn request_consultation_at(
        &self,
        patient: Uuid,
        physician: Uuid,
        at: chrono::DateTime<Utc>,
    ) -> Uuid {
        let body = serde_json::json!({
            "patientId": patient,
            "physicianId": physician,
            "startsAt": at.to_rfc3339(),
            "durationMinutes": 30,
        });
        id_of(self.post_expecting("/consultations", body, 202).await).await
    }

    /// Writes a clinical record for `consultation` (scheduled or done) and returns its id.
    pub async fn write_record(&self, consultation: Uuid, content: &str) -> Uuid {
        let path = format!("/consultations/{consultation}/records");
        let body = serde_json::json!({ "content": content });
        id_of(self.post_expecting(&path, body, 201).await).await
    }

    /// Appends an event to a stream as a saga step would (the sagas run elsewhere).
    pub async fn append_event(&self, stream: Uuid, event: &domain::Event) {
        let store = EventStore::new(self.pool.clone());
        let version = store
            .read_stream(stream, StreamVersion::EMPTY)
            .await
            .unwrap()
            .len();
        let kind = domain::event::route(event.event_type())
            .expect("a known event")
            .aggregate;
        let expected = StreamVersion::new(version as u64);
        let events = vec![commands::stored::new_event(event)];
        store
            .append(plain_append(stream, kind.as_str(), expected, events))
            .await
            .expect("appended");
    }
}

impl TestApp {
    /// Stands in for the scheduling saga (not part of HAP yet): the consultation is scheduled,
    /// starting tomorrow.
    pub async fn schedule(&self, consultation: Uuid, patient: Uuid, physician: Uuid) {
        let starts_at = Utc::now() + chrono::Duration::days(1);
        let scheduled =
            domain::Event::ConsultationScheduled(domain::event::ConsultationScheduled {
                consultation_id: consultation.into(),
                patient_id: patient.into(),
                physician_id: physician.into(),
                starts_at,
                ends_at: starts_at + chrono::Duration::minutes(30),
            });
        self.append_event(consultation, &scheduled).await;
    }
}

/// The store over `pool` as an app with [`insecure_settings`] reads it: sealed personal data
/// opened with the development key's vault.
pub fn store(pool: &PgPool) -> EventStore {
    let vault = api::state::vault(pool, &insecure_settings()).expect("authentication is off");
    EventStore::new(pool.clone()).opening_with(Arc::new(vault))
}

/// Runs an in-process publisher over `pool` to exchanges under `prefix`, until the returned
/// token is cancelled.
pub fn start_publisher(pool: &PgPool, prefix: &str) -> tokio_util::sync::CancellationToken {
    start_publisher_on(store(pool), prefix)
}

/// Runs an in-process publisher over `store`: appends through the same store (or a clone)
/// wake it at once, as in `hap serve`.
pub fn start_publisher_on(store: EventStore, prefix: &str) -> tokio_util::sync::CancellationToken {
    api::telemetry::metrics_handle();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let publisher = hap_support::system::publisher(store, &broker::amqp_urls(), prefix);
    tokio::spawn(publisher.run(shutdown.clone()));
    shutdown
}

/// The read model of `instance` in the test's database, migrated.
pub async fn read_model(db: &TestDb, instance: &str) -> projections::ReadModel {
    hap_support::system::read_model(&db.url, instance, 8)
        .await
        .expect("read model migrated")
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

/// A valid physician's registration body.
pub fn physician(license_number: &str) -> Value {
    serde_json::json!({
        "name": "Dr. Rui Costa", "specialty": "cardiology", "licenseNumber": license_number
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

/// Runs the projectors of `instance` in-process, consuming from queues under `prefix`, until
/// the returned token is cancelled.
pub async fn start_projectors(
    db: &TestDb,
    prefix: &str,
    instance: &str,
) -> (projections::ReadModel, tokio_util::sync::CancellationToken) {
    api::telemetry::metrics_handle();
    let read = read_model(db, instance).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut settings = messaging::consumer::ConsumerSettings::new(
        &broker::amqp_urls(),
        messaging::Topology::new(prefix),
        instance,
        5,
    );
    settings.batch = 50;
    tokio::spawn(projections::live::run_all(
        read.clone(),
        store(&db.pool),
        settings,
        shutdown.clone(),
    ));
    (read, shutdown)
}

/// Polls `check` every 25 ms until it holds or `timeout` passes; returns its last answer.
pub async fn eventually<F, Fut>(timeout: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// Whether every projection of `read` has applied every stored event routed to it: each
/// stream's last version, as the projection's `stream_versions` records it (a rebuild records
/// no processed ids for the history it folds, only these versions).
pub async fn caught_up(db: &TestDb, read: &projections::ReadModel) -> bool {
    let events: Vec<(String, uuid::Uuid, i64)> =
        sqlx::query_as("select event_type, stream_id, version from events")
            .fetch_all(&db.pool)
            .await
            .expect("events read");
    let mut expected: std::collections::HashMap<(&str, uuid::Uuid), i64> = Default::default();
    for (event_type, stream, version) in &events {
        let Some(route) = domain::event::route(event_type) else {
            continue;
        };
        for projection in projections::projections_of_exchange(route.exchange.suffix()) {
            let latest = expected.entry((projection, *stream)).or_default();
            *latest = (*latest).max(*version);
        }
    }
    let applied: Vec<(String, uuid::Uuid, i64)> =
        sqlx::query_as("select projection, stream_id, version from stream_versions")
            .fetch_all(&read.pool)
            .await
            .expect("stream versions read");
    let applied: std::collections::HashMap<(&str, uuid::Uuid), i64> = applied
        .iter()
        .map(|(projection, stream, version)| ((projection.as_str(), *stream), *version))
        .collect();
    expected
        .iter()
        .all(|(key, version)| applied.get(key) == Some(version))
}

/// Settings with authentication switched off, as `--insecure-no-auth` does.
pub fn insecure_settings() -> api::config::Settings {
    let mut settings = api::config::Settings::defaults();
    settings.insecure_no_auth = true;
    settings
}
