//! The publisher against real PostgreSQL and RabbitMQ: the wire format, order, late commits,
//! a killed leader and a broker connection closed under it. Each test owns its database and
//! its exchange prefix.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::event::route;
use eventstore::read::Fence;
use eventstore::{Append, EventStore, GlobalCheckpoint, NewEvent, RecordedEvent, StreamVersion};
use futures::future::join_all;
use hap_tests::broker::{
    Capture, Captured, body, close_connection, connections_named, header, topology_exists,
    unique_prefix,
};
use hap_tests::process::spawn_hap;
use hap_tests::publishing::Publishing;
use hap_tests::{TestApp, TestDb, plain_append, start_publisher};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

const PATIENCE: Duration = Duration::from_secs(60);

/// `count` PhysicianUpdated events for one stream, from version `after + 1`.
fn renames(stream: Uuid, after: u64, count: u64) -> Append {
    let events = (after + 1..=after + count)
        .map(|v| NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "PhysicianUpdated".into(),
            payload: json!({"physicianId": stream, "name": format!("Dr. {v}")}),
            occurred_at: Utc::now(),
            schema_version: 1,
        })
        .collect();
    plain_append(stream, "physician", StreamVersion::new(after), events)
}

/// Keeps appending (40 appends of 25 events on fresh streams, 25 ms apart) while a test breaks
/// something under the publisher.
fn append_in_background(store: &EventStore) -> tokio::task::JoinHandle<()> {
    let store = store.clone();
    tokio::spawn(async move {
        for _ in 0..40 {
            store.append(renames(Uuid::now_v7(), 0, 25)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
}

fn event_ids(messages: &[Captured]) -> HashSet<String> {
    messages
        .iter()
        .map(|m| body(m)["eventId"].as_str().unwrap().to_owned())
        .collect()
}

async fn stored_ids(pool: &PgPool) -> HashSet<String> {
    let ids: Vec<Uuid> = sqlx::query_scalar("select event_id from events")
        .fetch_all(pool)
        .await
        .unwrap();
    ids.iter().map(Uuid::to_string).collect()
}

/// Appends five events and waits for their messages: the publisher runs and has caught up.
async fn five_published(run: &Publishing) {
    let append = renames(Uuid::now_v7(), 0, 5);
    run.store.append(append).await.unwrap();
    run.capture.wait_until(PATIENCE, |m| m.len() >= 5).await;
}

/// Asserts that the test's `stored` events are in the store and that each of them arrives, at
/// least once.
async fn assert_every_event_arrives(pool: &PgPool, capture: &Capture, stored: usize) {
    let expected = stored_ids(pool).await;
    assert_eq!(expected.len(), stored);
    let messages = capture
        .wait_until(PATIENCE, |m| event_ids(m).len() >= expected.len())
        .await;
    assert_eq!(event_ids(&messages), expected, "every event arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_the_api_produces_is_published_in_the_contract_format() {
    let run = Publishing::start().await;
    let app = TestApp::start(&run.db).await;
    // Every command answers with a 2xx; those that create answer with the new id.
    let send = |method: Method, path: String, body: Value| {
        let sent = app
            .request(method, &path)
            .header("X-Correlation-Id", "wire-test")
            .json(&body)
            .send();
        async move { sent.await.unwrap().error_for_status().unwrap() }
    };
    let create = |path: String, body: Value| {
        let sent = send(Method::POST, path, body);
        async move { hap_tests::id_of(sent.await).await }
    };

    // Every command of the API, so that every event type it can produce is published.
    let patient = create("/patients".into(), hap_tests::patient("D1")).await;
    let phone = json!({"phone": "+55 11 91234-5678"});
    send(Method::PATCH, format!("/patients/{patient}"), phone).await;
    let doctor = json!({"name": "Dr. Rui", "specialty": "cardiology", "licenseNumber": "CRM-1"});
    let physician = create("/physicians".into(), doctor).await;
    let specialty = json!({"specialty": "neurology"});
    send(Method::PATCH, format!("/physicians/{physician}"), specialty).await;
    let starts_at = (Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let request = json!({"patientId": patient, "physicianId": physician, "startsAt": starts_at});
    let first = create("/consultations".into(), request.clone()).await;
    let second = create("/consultations".into(), request).await;
    for consultation in [first, second] {
        let scheduled =
            domain::Event::ConsultationScheduled(domain::event::ConsultationScheduled {
                consultation_id: consultation.into(),
                patient_id: patient.into(),
                physician_id: physician.into(),
                starts_at: Utc::now() + chrono::Duration::days(1),
                ends_at: Utc::now() + chrono::Duration::days(1) + chrono::Duration::minutes(30),
            });
        app.append_event(consultation, &scheduled).await;
    }
    let notes = json!({"notes": "fasting"});
    send(Method::PATCH, format!("/consultations/{first}"), notes).await;
    let record = json!({"content": "BP 12/8"});
    let record = create(format!("/consultations/{first}/records"), record).await;
    for (method, path, body) in [
        (
            Method::PATCH,
            format!("/records/{record}"),
            json!({"content": "BP 13/8"}),
        ),
        (
            Method::POST,
            format!("/consultations/{first}/complete"),
            json!({}),
        ),
        (
            Method::POST,
            format!("/consultations/{second}/cancel"),
            json!({"reason": "ill"}),
        ),
        (
            Method::POST,
            format!("/patients/{patient}/deactivate"),
            json!({}),
        ),
        (
            Method::POST,
            format!("/physicians/{physician}/deactivate"),
            json!({}),
        ),
    ] {
        send(method, path, body).await;
    }

    // As readers get them: sealed personal fields opened.
    let stored: Vec<RecordedEvent> = hap_tests::store(&run.db.pool)
        .read_all_fenced(GlobalCheckpoint::START, 10_000, Fence::None)
        .await
        .unwrap();
    let messages = run
        .capture
        .wait_until(PATIENCE, |m| m.len() >= stored.len())
        .await;
    assert_eq!(messages.len(), stored.len(), "one message per event");
    let by_id: HashMap<String, &Captured> = messages
        .iter()
        .map(|m| (body(m)["eventId"].as_str().unwrap().to_owned(), m))
        .collect();

    let types: HashSet<&str> = stored.iter().map(|s| s.event_type.as_str()).collect();
    for expected in [
        "PatientRegistered",
        "PatientUpdated",
        "PatientDeactivated",
        "PhysicianRegistered",
        "PhysicianUpdated",
        "PhysicianDeactivated",
        "ConsultationSchedulingStarted",
        "ConsultationScheduled",
        "ConsultationUpdated",
        "ConsultationCancellationRequested",
        "ConsultationDone",
        "ConsultationRecordCreated",
        "ConsultationRecordUpdated",
    ] {
        assert!(types.contains(expected), "{expected} was produced");
    }
    for event in &stored {
        let RecordedEvent {
            event_id,
            event_type,
            stream_id: stream,
            aggregate_type,
            version,
            position,
            payload,
            occurred_at,
            schema_version,
            ..
        } = event;
        let message = by_id[&event_id.to_string()];
        let payload: Value = serde_json::from_str(payload.get()).unwrap();
        let route = route(event_type).unwrap();
        let body = body(message);
        let properties = &message.properties;

        assert_eq!(
            message.exchange,
            format!("{}.{}", run.prefix, route.exchange.suffix())
        );
        assert_eq!(message.routing_key, route.routing_key);
        assert_eq!(
            properties.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(*properties.delivery_mode(), Some(2), "persistent");
        assert_eq!(
            properties.message_id().as_ref().unwrap().as_str(),
            event_id.to_string()
        );
        assert_eq!(properties.kind().as_ref().unwrap().as_str(), event_type);
        assert_eq!(
            *properties.timestamp(),
            Some(occurred_at.timestamp() as u64)
        );

        let correlation = header(message, "x-correlation-id").expect("always sent");
        let from_api = !matches!(event_type.as_str(), "ConsultationScheduled");
        if from_api {
            assert_eq!(
                correlation, "wire-test",
                "{event_type} carries the request's id"
            );
        }
        assert_eq!(header(message, "x-causation-id"), None);
        let saga = header(message, "x-saga-id");
        if route.saga {
            assert_eq!(
                saga.as_deref(),
                payload["consultationId"].as_str(),
                "{event_type}"
            );
        } else {
            assert_eq!(saga, None, "{event_type} is in no saga");
        }

        assert_eq!(body["eventId"], event_id.to_string());
        assert_eq!(body["eventType"], *event_type);
        let sent_at: DateTime<Utc> = body["occurredAt"].as_str().unwrap().parse().unwrap();
        assert_eq!(sent_at.timestamp_millis(), occurred_at.timestamp_millis());
        assert_eq!(
            body["sourceService"],
            domain::service::Service::publishing(route.exchange).source_service()
        );
        assert_eq!(body["aggregateType"], *aggregate_type);
        assert_eq!(body["aggregateType"], route.aggregate.as_str());
        assert_eq!(body["aggregateId"], stream.to_string());
        assert_eq!(body["version"], *version);
        assert_eq!(body["position"], position.to_string());
        assert_eq!(body["tenantId"], "default");
        assert_eq!(body["correlationId"], correlation);
        assert_eq!(body["causationId"], Value::Null);
        // Requests in insecure mode act as `anonymous`; the saga events this test appends
        // itself (`append_event`) have no actor.
        assert!(
            body["actorId"] == "anonymous" || body["actorId"].is_null(),
            "{}",
            body["actorId"]
        );
        // The version as stored (2 for the sealed types), the payload opened.
        assert_eq!(
            *schema_version,
            domain::personal::schema_version(event_type)
        );
        assert_eq!(body["schemaVersion"], *schema_version);
        assert_eq!(body["payload"], payload);
    }
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_aggregates_messages_leave_in_version_order_under_concurrent_appends() {
    let run = Publishing::start().await;
    let streams: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();

    // 20 writers, each appending 10 rounds of 5 events to its own stream, all at once.
    join_all(streams.iter().map(|&stream| {
        let store = run.store.clone();
        async move {
            for round in 0..10 {
                store.append(renames(stream, round * 5, 5)).await.unwrap();
            }
        }
    }))
    .await;

    let messages = run.capture.wait_until(PATIENCE, |m| m.len() >= 1000).await;
    assert_eq!(messages.len(), 1000);
    let mut versions: HashMap<String, Vec<i64>> = HashMap::new();
    for message in &messages {
        let body = body(message);
        versions
            .entry(body["aggregateId"].as_str().unwrap().to_owned())
            .or_default()
            .push(body["version"].as_i64().unwrap());
    }
    for stream in &streams {
        assert_eq!(versions[&stream.to_string()], (1..=50).collect::<Vec<_>>());
    }
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_transaction_commits_late_is_published() {
    let run = Publishing::start().await;
    let late_stream = Uuid::now_v7();

    let mut slow = run.db.pool.begin().await.unwrap();
    sqlx::query(
        "insert into events (event_id, stream_id, aggregate_type, version, event_type, payload,
                             tenant_id, correlation_id, schema_version, occurred_at)
         values ($1, $2, 'physician', 1, 'PhysicianUpdated', $3, 'default', 'late', 1, now())",
    )
    .bind(Uuid::now_v7())
    .bind(late_stream)
    .bind(json!({"physicianId": late_stream, "name": "Dr. Late"}))
    .execute(&mut *slow)
    .await
    .unwrap();
    for _ in 0..5 {
        run.store
            .append(renames(Uuid::now_v7(), 0, 2))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    slow.commit().await.unwrap();

    let messages = run.capture.wait_until(PATIENCE, |m| m.len() >= 11).await;
    assert_eq!(
        event_ids(&messages),
        stored_ids(&run.db.pool).await,
        "the late event too"
    );
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_nothing_is_lost() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let prefix = unique_prefix();
    let capture = Capture::start(&prefix).await;
    let store = EventStore::new(pool.clone());
    let mut leader = spawn_hap(&db, &prefix, "publisher", "p");
    store.append(renames(Uuid::now_v7(), 0, 10)).await.unwrap();
    capture.wait_until(PATIENCE, |m| m.len() >= 10).await;
    // The first process leads now; the second waits for the lock.
    let mut follower = spawn_hap(&db, &prefix, "publisher", "p");

    let writer = append_in_background(&store);
    tokio::time::sleep(Duration::from_millis(300)).await;
    leader.start_kill().unwrap(); // SIGKILL: no clean shutdown, the lock goes with the socket
    leader.wait().await.unwrap();
    writer.await.unwrap();

    assert_every_event_arrives(&pool, &capture, 1010).await;
    follower.start_kill().unwrap();
    capture.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_declares_the_topology_before_the_first_event() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    assert!(
        !topology_exists(&prefix).await,
        "a fresh prefix has nothing"
    );

    let publisher = start_publisher(&db.pool, &prefix);
    let declared = hap_tests::eventually(PATIENCE, || topology_exists(&prefix)).await;

    let events: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(events, 0, "nothing was appended");
    assert!(declared, "the exchanges and the unrouted queue exist");
    publisher.cancel();
    // Its clean-up deletes the prefix's exchanges and unrouted queue.
    Capture::start(&prefix).await.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_connection_closed_mid_stream_loses_nothing() {
    let run = Publishing::start().await;
    five_published(&run).await;

    let writer = append_in_background(&run.store);
    // Only this test's publisher connection: others' tests keep theirs.
    let connections = connections_named(&format!("hap-publisher {}", run.prefix));
    assert_eq!(connections.len(), 1, "the publisher's connection is found");
    close_connection(&connections[0]);
    writer.await.unwrap();

    assert_every_event_arrives(&run.db.pool, &run.capture, 1005).await;
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_database_connections_lose_nothing() {
    let run = Publishing::start().await;
    five_published(&run).await;

    // Every connection to this test's database ends, the publisher's lock connection too.
    sqlx::query(
        "select pg_terminate_backend(pid) from pg_stat_activity
          where datname = current_database() and pid <> pg_backend_pid()",
    )
    .execute(&run.db.pool)
    .await
    .unwrap();
    for _ in 0..10 {
        // The pool may hand out a connection that was just terminated: retry such appends.
        let append = renames(Uuid::now_v7(), 0, 10);
        while run.store.append(append.clone()).await.is_err() {}
    }

    assert_every_event_arrives(&run.db.pool, &run.capture, 105).await;
    run.finish().await;
}
