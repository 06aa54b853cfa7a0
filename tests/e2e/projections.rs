//! The read side against real PostgreSQL and RabbitMQ: duplicate and out-of-order deliveries,
//! poison messages, transient failures, and two instances building the same read model.

use std::time::Duration;

use chrono::Utc;
use eventstore::{EventStore, NewEvent, RecordedEvent, StreamVersion};
use hap_tests::broker::{
    close_connection, connections_named, dead_letter, delete_instance_queues, drain, header,
    publish_to_queue, queue_counts, unique_prefix, wait_for_queue,
};
use hap_tests::{
    TestApp, TestDb, caught_up, eventually, plain_append, start_projectors, start_publisher,
};
use lapin::BasicProperties;
use messaging::{Envelope, Outgoing, QueueNames};
use projections::ReadModel;
use projections::patients::Patients;
use projections::projector::apply_batch;
use projections::records::Records;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const PATIENCE: Duration = Duration::from_secs(30);

fn patients_queue(prefix: &str, instance: &str) -> String {
    QueueNames::new(prefix, "patient-service", instance).main
}

/// Projectors of instance `a` under a fresh prefix, once their patients queue is declared:
/// the prefix, the read model, the token that stops them, and that queue's name.
async fn patients_projector(db: &TestDb) -> (String, ReadModel, CancellationToken, String) {
    let prefix = unique_prefix();
    let (read, projectors) = start_projectors(db, &prefix, "a").await;
    let queue = patients_queue(&prefix, "a");
    wait_for_queue(&queue).await;
    (prefix, read, projectors, queue)
}

/// Appends patient events to a fresh stream, as the command side would, and returns them as
/// stored.
async fn patient_history(store: &EventStore, names: &[&str]) -> Vec<RecordedEvent> {
    let stream = Uuid::now_v7();
    let mut events = vec![NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "PatientRegistered".into(),
        payload: json!({"patientId": stream, "name": names[0], "birthDate": "1990-01-01",
                        "documentNumber": format!("D-{stream}")}),
        occurred_at: Utc::now(),
        schema_version: 1,
    }];
    for name in &names[1..] {
        events.push(NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "PatientUpdated".into(),
            payload: json!({"patientId": stream, "name": name}),
            occurred_at: Utc::now(),
            schema_version: 1,
        });
    }
    let append = plain_append(stream, "patient", StreamVersion::EMPTY, events);
    store.append(append).await.unwrap();
    store
        .read_stream(stream, StreamVersion::EMPTY)
        .await
        .unwrap()
}

/// Puts a stored event's message straight into a queue, bypassing the publisher.
async fn deliver(queue: &str, event: &RecordedEvent) {
    let route = messaging::routes::route(event).unwrap();
    let message = Outgoing::new(event, &route, "unused".into());
    publish_to_queue(queue, &message.body, message.properties).await;
}

async fn patient(read: &PgPool, id: Uuid) -> Option<(String, i64)> {
    sqlx::query_as("select name, version from patients where id = $1")
        .bind(id)
        .fetch_optional(read)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_delivered_twice_has_one_effect() {
    let db = TestDb::new().await;
    let (prefix, read, projectors, queue) = patients_projector(&db).await;
    let history = patient_history(&db.plain_store(), &["Ana", "Ana Souza"]).await;

    for event in [&history[0], &history[0], &history[1], &history[1]] {
        deliver(&queue, event).await;
    }

    let id = history[0].stream_id;
    assert!(
        eventually(PATIENCE, || async {
            patient(&read.pool, id).await.is_some_and(|p| p.1 == 2)
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await; // let the repeats arrive too
    assert_eq!(patient(&read.pool, id).await, Some(("Ana Souza".into(), 2)));
    assert_eq!(processed_count(&read.pool, "patients").await, 2);
    projectors.cancel();
    delete_instance_queues(&prefix, "a").await;
}

/// A batch first marks its events processed with a plain insert; one that holds events
/// processed before (here, the same event twice as well) must fall back to skipping them and
/// apply the rest, not fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_holding_events_processed_before_applies_only_the_new_ones() {
    let db = TestDb::new().await;
    let store = db.plain_store();
    let read = hap_tests::read_model(&db, "dup").await;
    let history = patient_history(&store, &["Ana", "Bia", "Carla"]).await;
    let envelopes: Vec<Envelope> = history
        .iter()
        .map(|e| Envelope::from_recorded(e.clone()).unwrap())
        .collect();

    let first = apply_batch(&read.pool, &store, &Patients, &envelopes[..2])
        .await
        .unwrap();
    assert_eq!(first.events, 2);
    let batch = [&envelopes[0], &envelopes[1], &envelopes[2], &envelopes[0]].map(Clone::clone);
    let second = apply_batch(&read.pool, &store, &Patients, &batch)
        .await
        .unwrap();
    assert_eq!(second.events, 1, "only the new event is applied");

    let id = history[0].stream_id;
    assert_eq!(patient(&read.pool, id).await, Some(("Carla".into(), 3)));
    assert_eq!(processed_count(&read.pool, "patients").await, 3);
}

/// A record's first event, delivered again after it was applied (a publisher restart, a
/// closed connection), finds its row in the book: applying it again changes nothing and fails
/// nothing, where it once failed for ever and was dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_first_event_delivered_again_changes_nothing() {
    use domain::event::{ConsultationRecordCreated, Event};
    use domain::ids::{ConsultationId, PatientId, PhysicianId, RecordId};
    let db = TestDb::new().await;
    let store = db.plain_store();
    let read = hap_tests::read_model(&db, "again").await;
    let consultation = ConsultationId::new();
    let book = domain::record::RecordBook::stream_id(consultation);
    let app = hap_tests::TestApp::start(&db).await;
    app.append_event(
        book,
        &Event::ConsultationRecordCreated(ConsultationRecordCreated {
            record_id: RecordId::new(),
            consultation_id: consultation,
            patient_id: PatientId::new(),
            physician_id: PhysicianId::new(),
            content: Some("BP 12/8".into()),
        }),
    )
    .await;
    let created = Envelope::from_recorded(
        store
            .read_stream(book, eventstore::StreamVersion::EMPTY)
            .await
            .unwrap()
            .remove(0),
    )
    .unwrap();

    let first = apply_batch(&read.pool, &store, &Records, std::slice::from_ref(&created))
        .await
        .unwrap();
    let again = apply_batch(&read.pool, &store, &Records, &[created])
        .await
        .unwrap();

    assert_eq!((first.events, again.events), (1, 0));
    let rows: i64 = sqlx::query_scalar("select count(*) from rm_again.records")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}

/// Queries waiting for a write hold read-model connections; the projector that makes the
/// write must not queue behind them for one (it has its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projectors_keep_applying_while_queries_hold_every_read_model_connection() {
    let db = TestDb::new().await;
    let (prefix, read, projectors, queue) = patients_projector(&db).await;
    let mut held = Vec::new();
    for _ in 0..read.pool.options().get_max_connections() {
        held.push(read.pool.acquire().await.unwrap());
    }
    let history = patient_history(&db.plain_store(), &["Ana"]).await;

    deliver(&queue, &history[0]).await;

    // Looked at through the event store's pool: the read model's is all taken.
    let applied = eventually(Duration::from_secs(10), || async {
        let sql = "select count(*) from rm_a.patients where id = $1";
        db.scalar::<i64, _>(sql, history[0].stream_id).await == 1
    })
    .await;
    drop(held);
    assert!(
        applied,
        "the projector applied the event while every query connection was held"
    );
    projectors.cancel();
    delete_instance_queues(&prefix, "a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_update_redelivered_after_a_newer_one_changes_nothing() {
    let db = TestDb::new().await;
    let (prefix, read, projectors, queue) = patients_projector(&db).await;
    let history = patient_history(&db.plain_store(), &["Ana", "Bia", "Carla"]).await;
    let id = history[0].stream_id;
    for event in &history {
        deliver(&queue, event).await;
    }
    assert!(
        eventually(PATIENCE, || async {
            patient(&read.pool, id).await.is_some_and(|p| p.1 == 3)
        })
        .await
    );

    deliver(&queue, &history[1]).await; // the older rename, again
    let marker = patient_history(&db.plain_store(), &["Marker"]).await;
    deliver(&queue, &marker[0]).await; // arrives after it, so once it is in, the old one was seen

    let marker_id = marker[0].stream_id;
    assert!(
        eventually(PATIENCE, || async {
            patient(&read.pool, marker_id).await.is_some()
        })
        .await
    );
    assert_eq!(
        patient(&read.pool, id).await,
        Some(("Carla".into(), 3)),
        "the newer name stays"
    );
    projectors.cancel();
    delete_instance_queues(&prefix, "a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_predecessor_is_read_from_the_event_store() {
    let db = TestDb::new().await;
    let (prefix, read, projectors, queue) = patients_projector(&db).await;
    let history = patient_history(&db.plain_store(), &["Ana", "Bia", "Carla"]).await;

    // Only the last event arrives (its predecessors are, say, still waiting to be retried).
    deliver(&queue, &history[2]).await;

    let id = history[0].stream_id;
    assert!(
        eventually(PATIENCE, || async {
            patient(&read.pool, id).await.is_some()
        })
        .await
    );
    assert_eq!(patient(&read.pool, id).await, Some(("Carla".into(), 3)));
    // The predecessors, arriving late, change nothing.
    deliver(&queue, &history[0]).await;
    deliver(&queue, &history[1]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(patient(&read.pool, id).await, Some(("Carla".into(), 3)));
    projectors.cancel();
    delete_instance_queues(&prefix, "a").await;
}

/// A batch that fills in a predecessor which another transaction is applying at that moment
/// (a new stream has no version row to lock) waits for it, then starts again from what it
/// committed rather than applying the predecessor a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_predecessor_applied_meanwhile_by_another_transaction_is_not_applied_again() {
    let db = TestDb::new().await;
    let store = db.plain_store();
    let read = hap_tests::read_model(&db, "race").await;
    let history = patient_history(&store, &["Ana", "Bia"]).await;
    let (registered, updated) = (&history[0], &history[1]);
    let id = registered.stream_id;

    // The other transaction has applied the registration, and not yet committed.
    let mut other = read.pool.begin().await.unwrap();
    sqlx::query(
        "insert into processed_events (projection, event_id, position) values ('patients', $1, $2)",
    )
    .bind(registered.event_id)
    .bind(registered.position)
    .execute(&mut *other)
    .await
    .unwrap();
    let batch = {
        let (pool, store) = (read.pool.clone(), store.clone());
        let update = Envelope::from_recorded(updated.clone()).unwrap();
        tokio::spawn(async move { apply_batch(&pool, &store, &Patients, &[update]).await })
    };
    let waiting = "select count(*) from pg_stat_activity
                    where datname = current_database() and wait_event_type = 'Lock'";
    assert!(
        eventually(PATIENCE, || async {
            sqlx::query_scalar::<_, i64>(waiting)
                .fetch_one(&db.pool)
                .await
                .unwrap()
                > 0
        })
        .await,
        "the batch waits for the other transaction's mark"
    );
    sqlx::query(
        "insert into patients (id, name, birth_date, document_number, status, version, updated_at)
         values ($1, 'Ana', '1990-01-01', 'D', 'active', 1, now())",
    )
    .bind(id)
    .execute(&mut *other)
    .await
    .unwrap();
    sqlx::query(
        "insert into stream_versions (projection, stream_id, version, tenant_id)
         values ('patients', $1, 1, 'default')",
    )
    .bind(id)
    .execute(&mut *other)
    .await
    .unwrap();
    other.commit().await.unwrap();

    let applied = batch.await.unwrap().unwrap();
    assert_eq!(applied.events, 1, "only the update is applied");
    assert_eq!(applied.streams, [(id, 2)]);
    assert_eq!(patient(&read.pool, id).await, Some(("Bia".into(), 2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_those_behind_them_applied() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let (read, projectors) = start_projectors(&db, &prefix, "a").await;
    let names = QueueNames::new(&prefix, "patient-service", "a");
    wait_for_queue(&names.main).await;
    let history = patient_history(&db.plain_store(), &["Ana"]).await;
    let unknown = json!({
        "eventId": Uuid::now_v7(), "eventType": "PatientTeleported", "occurredAt": Utc::now(),
        "sourceService": "patient-service", "aggregateType": "patient",
        "aggregateId": Uuid::now_v7(), "version": 1, "position": "1", "payload": {}
    });

    publish_to_queue(&names.main, b"not json at all", BasicProperties::default()).await;
    publish_to_queue(
        &names.main,
        unknown.to_string().as_bytes(),
        BasicProperties::default(),
    )
    .await;
    deliver(&names.main, &history[0]).await;

    let id = history[0].stream_id;
    assert!(
        eventually(PATIENCE, || async {
            patient(&read.pool, id).await.is_some()
        })
        .await
    );
    let mut dead = vec![];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while dead.len() < 2 && tokio::time::Instant::now() < deadline {
        dead.extend(drain(&names.dead_letters).await);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].data, b"not json at all", "the body is kept");
    for message in &dead {
        assert!(header(message, "x-error").is_some_and(|e| !e.is_empty()));
        assert_eq!(
            header(message, "x-original-queue").as_deref(),
            Some(names.main.as_str())
        );
    }
    assert!(
        header(&dead[1], "x-error")
            .unwrap()
            .contains("PatientTeleported")
    );
    projectors.cancel();
    delete_instance_queues(&prefix, "a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_retried_then_applied() {
    let db = TestDb::new().await;
    let (prefix, read, projectors, queue) = patients_projector(&db).await;
    let history = patient_history(&db.plain_store(), &["Ana"]).await;

    // The projector's table is locked for longer than its lock timeout.
    let mut blocker = read.pool.begin().await.unwrap();
    sqlx::query("lock table patients in access exclusive mode")
        .execute(&mut *blocker)
        .await
        .unwrap();
    deliver(&queue, &history[0]).await;
    let retried = format!("hap_messages_retried_total{{queue=\"{queue}\"}}");
    assert!(
        eventually(PATIENCE, || async {
            api::telemetry::metrics_handle().render().contains(&retried)
        })
        .await,
        "the failure was retried"
    );
    blocker.rollback().await.unwrap();

    let id = history[0].stream_id;
    assert!(
        eventually(PATIENCE, || async {
            patient(&read.pool, id).await.is_some()
        })
        .await
    );
    projectors.cancel();
    delete_instance_queues(&prefix, "a").await;
}

/// What a broker restart does to a consumer: its connection closes under it while deliveries
/// are unacknowledged. The projectors reconnect, the broker delivers again what was not acked,
/// and every event is applied, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projectors_whose_broker_connections_close_mid_stream_miss_nothing() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let (read, projectors) = start_projectors(&db, &prefix, "a").await;
    for service in ["patient-service", "scheduling-service"] {
        wait_for_queue(&QueueNames::new(&prefix, service, "a").main).await;
    }
    let publisher = start_publisher(&db.pool, &prefix);
    let store = db.plain_store();
    let first = patient_history(&store, &["Ana"]).await[0].stream_id;
    assert!(
        eventually(PATIENCE, || async {
            patient(&read.pool, first).await.is_some()
        })
        .await,
        "the projectors are consuming"
    );

    let writer = tokio::spawn(async move {
        for _ in 0..40 {
            patient_history(&store, &["Bia", "Carla"]).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Only this test's projector connections: other tests keep theirs.
    let connections = connections_named(&format!("hap-consumer {prefix}."));
    assert_eq!(connections.len(), 4, "one connection per projector");
    for connection in &connections {
        close_connection(connection);
    }
    writer.await.unwrap();

    let all_applied = eventually(PATIENCE, || async {
        let mut counts = vec![];
        for projection in [projections::PATIENTS, projections::CONSULTATIONS] {
            counts.push(processed_count(&read.pool, projection).await);
        }
        let updated: i64 = sqlx::query_scalar("select count(*) from patients where version = 2")
            .fetch_one(&read.pool)
            .await
            .unwrap();
        counts == [81, 81] && updated == 40
    })
    .await;
    assert!(
        all_applied,
        "every patient at version 2, every event processed once by both"
    );
    publisher.cancel();
    projectors.cancel();
    delete_instance_queues(&prefix, "a").await;
}

/// Every table of a read model, as sorted JSON rows, to compare two of them.
pub async fn snapshot(read: &PgPool) -> Vec<(String, Vec<Value>)> {
    let mut tables = vec![];
    for table in [
        "patients",
        "physicians",
        "people",
        "consultations",
        "records",
    ] {
        let rows: Vec<Value> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "select to_jsonb(t) from {table} t order by id"
        )))
        .fetch_all(read)
        .await
        .unwrap();
        tables.push((table.to_owned(), rows));
    }
    tables
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_build_identical_read_models() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let (a, stop_a) = start_projectors(&db, &prefix, "a").await;
    let (b, stop_b) = start_projectors(&db, &prefix, "b").await;
    for instance in ["a", "b"] {
        wait_for_queue(&QueueNames::new(&prefix, "clinical-records", instance).main).await;
    }
    let publisher = start_publisher(&db.pool, &prefix);
    let app = TestApp::start(&db).await;

    let physician = app.register_physician("CRM-1").await;
    for n in 0..5 {
        let patient = app.register_patient(&format!("DOC-{n}")).await;
        app.patch(
            &format!("/patients/{patient}"),
            json!({"name": format!("Patient {n}")}),
        )
        .await;
        let consultation = app.request_consultation(patient, physician).await;
        if n % 2 == 0 {
            app.post(&format!("/patients/{patient}/deactivate"), json!({}))
                .await;
        }
        let _ = consultation;
    }
    app.patch(
        &format!("/physicians/{physician}"),
        json!({"name": "Dr. Renamed"}),
    )
    .await;

    // Every projection of each instance has applied every event it receives (counting the
    // ids processed by any projection would be satisfied by the consultations projection
    // alone, which receives every event here).
    for read in [&a, &b] {
        assert!(eventually(PATIENCE, || caught_up(&db, read)).await);
    }
    let snapshot_a = snapshot(&a.pool).await;
    assert_eq!(snapshot_a, snapshot(&b.pool).await, "row for row");
    let names: Vec<String> =
        sqlx::query_scalar("select distinct physician_name from consultations")
            .fetch_all(&a.pool)
            .await
            .unwrap();
    assert_eq!(
        names,
        ["Dr. Renamed"],
        "a rename reaches existing consultations"
    );
    stop_a.cancel();
    stop_b.cancel();
    publisher.cancel();
    delete_instance_queues(&prefix, "a").await;
    delete_instance_queues(&prefix, "b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_replayed_by_event_id_swept_and_purged() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let (read, projectors) = start_projectors(&db, &prefix, "a").await;
    let names = QueueNames::new(&prefix, "patient-service", "a");
    wait_for_queue(&names.main).await;
    let url = hap_tests::broker::amqp_urls();
    // Two messages that failed earlier (say, while the read database was down for good).
    let history = patient_history(&db.plain_store(), &["Ana"]).await;
    let other = patient_history(&db.plain_store(), &["Bia"]).await;
    for event in [&history[0], &other[0]] {
        dead_letter(&names, event, "database down").await;
    }

    let listed = messaging::dlq::list(&url, &names.main).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].error.as_deref(), Some("database down"));
    assert_eq!(listed[0].event_type.as_deref(), Some("PatientRegistered"));
    assert_eq!(
        messaging::dlq::list(&url, &names.main).await.unwrap().len(),
        2,
        "listing keeps them"
    );

    let event_id = history[0].event_id.to_string();
    assert_eq!(
        messaging::dlq::replay(&url, &names.main, Some(&event_id))
            .await
            .unwrap(),
        1
    );
    let id = history[0].stream_id;
    assert!(
        eventually(PATIENCE, || async {
            patient(&read.pool, id).await.is_some()
        })
        .await
    );
    // A sweep of many queues (an erasure's) counts one that does not exist as empty, and goes
    // on to the next.
    let missing = format!("{prefix}.no-such-service.a.events");
    let queues = [missing.as_str(), names.main.as_str()];
    let swept =
        messaging::dlq::resolve_each(&url, &queues, messaging::dlq::Action::Discard, |_| true);
    assert_eq!(swept.await.unwrap(), 1, "the other one");
    assert_eq!(messaging::dlq::purge(&url, &names.main).await.unwrap(), 0);
    assert!(
        messaging::dlq::list(&url, &names.main)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(patient(&read.pool, other[0].stream_id).await, None);
    projectors.cancel();
    delete_instance_queues(&prefix, "a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_followed_at_once_by_a_query_with_its_position_sees_the_write_every_time() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let app = TestApp::start(&db).await;
    let shutdown = project_the_apps_read_model(&db, &app, &prefix).await;
    let publisher = start_publisher(&db.pool, &prefix);

    for n in 0..50 {
        let created = app
            .post("/patients", hap_tests::patient(&format!("DOC-{n}")))
            .await;
        let body: Value = created.json().await.unwrap();
        let (id, position) = (
            body["id"].as_str().unwrap(),
            body["position"].as_str().unwrap(),
        );
        let renamed = app
            .request(reqwest::Method::PATCH, &format!("/patients/{id}"))
            .json(&json!({"name": format!("Name {n}")}))
            .send()
            .await
            .unwrap();
        let position_after = renamed.json::<Value>().await.unwrap()["position"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_ne!(position, position_after);

        let read = app
            .request(reqwest::Method::GET, &format!("/patients/{id}"))
            .header("X-Min-Position", &position_after)
            .send()
            .await
            .unwrap();

        assert_eq!(read.status(), 200, "write {n} is visible");
        let patient: Value = read.json().await.unwrap();
        assert_eq!(patient["name"], format!("Name {n}"));
        assert_eq!(patient["version"], 2);
    }
    shutdown.cancel();
    publisher.cancel();
    delete_instance_queues(&prefix, "test").await;
}

/// The app's read model (instance "test") projected in this process, as `hap serve` does with
/// every role: the app's commands feed their events straight to these projectors.
async fn project_the_apps_read_model(
    db: &TestDb,
    app: &TestApp,
    prefix: &str,
) -> tokio_util::sync::CancellationToken {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let settings = messaging::consumer::ConsumerSettings::new(
        &hap_tests::broker::amqp_urls(),
        messaging::Topology::new(prefix),
        "test",
        5,
    );
    tokio::spawn(projections::live::run_all(
        app.read.clone(),
        db.plain_store(),
        settings,
        shutdown.clone(),
    ));
    wait_for_queue(&patients_queue(prefix, "test")).await;
    shutdown
}

/// How many events the publisher has recorded as confirmed by the broker.
async fn published(store: &PgPool) -> i64 {
    sqlx::query_scalar(
        "select count(*) from events e join publisher_checkpoints c
             on (e.transaction_id::text::bigint, e.position) <= (c.transaction_id, c.position)",
    )
    .fetch_one(store)
    .await
    .unwrap()
}

/// How many events `projection` has recorded as processed.
async fn processed_count(read: &PgPool, projection: &str) -> i64 {
    sqlx::query_scalar("select count(*) from processed_events where projection = $1")
        .bind(projection)
        .fetch_one(read)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_visible_to_its_own_instance_before_the_broker_carries_it_and_the_copy_changes_nothing()
 {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let app = TestApp::start(&db).await;
    let projectors = project_the_apps_read_model(&db, &app, &prefix).await;

    // No publisher yet: nothing reaches the queues, only what this process feeds itself.
    let created: Value = app
        .post("/patients", hap_tests::patient("DOC-FED"))
        .await
        .json()
        .await
        .unwrap();
    let (id, position) = (
        created["id"].as_str().unwrap(),
        created["position"].as_str().unwrap(),
    );
    let read = app
        .request(reqwest::Method::GET, &format!("/patients/{id}"))
        .header("X-Min-Position", position)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200, "{:?}", read.text().await);
    let before: Vec<(String, i64)> =
        sqlx::query_as("select name, version from patients order by id")
            .fetch_all(&app.read.pool)
            .await
            .unwrap();
    assert_eq!(processed_count(&app.read.pool, "patients").await, 1);

    // Now the broker delivers the same event: it is acknowledged and changes nothing.
    let publisher = start_publisher(&db.pool, &prefix);
    assert!(
        eventually(PATIENCE, || async { published(&db.pool).await >= 1 }).await,
        "the broker confirmed the copy"
    );
    let queue = patients_queue(&prefix, "test");
    assert!(
        eventually(PATIENCE, || async { queue_counts(&queue) == (0, 0) }).await,
        "the copy was delivered and acknowledged"
    );
    let after: Vec<(String, i64)> =
        sqlx::query_as("select name, version from patients order by id")
            .fetch_all(&app.read.pool)
            .await
            .unwrap();
    assert_eq!(after, before);
    assert_eq!(processed_count(&app.read.pool, "patients").await, 1);
    assert!(caught_up(&db, &app.read).await);
    projectors.cancel();
    publisher.cancel();
    delete_instance_queues(&prefix, "test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_feed_fails_to_apply_still_arrives_through_the_queue() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let app = TestApp::start(&db).await;
    let projectors = project_the_apps_read_model(&db, &app, &prefix).await;

    // The fed batch waits for the table past the read model's lock timeout (1 s), and fails.
    let mut blocker = app.read.pool.begin().await.unwrap();
    sqlx::query("lock table patients in access exclusive mode")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let id = app.register_patient("DOC-DROPPED").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    blocker.rollback().await.unwrap();
    assert_eq!(
        patient(&app.read.pool, id).await,
        None,
        "the feed let the event go"
    );

    let publisher = start_publisher(&db.pool, &prefix);
    assert!(
        eventually(PATIENCE, || async {
            patient(&app.read.pool, id).await.is_some()
        })
        .await,
        "the queue's copy applied it"
    );
    projectors.cancel();
    publisher.cancel();
    delete_instance_queues(&prefix, "test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_an_earlier_version_declared_are_consumed_as_they_are() {
    use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};

    let db = TestDb::new().await;
    let prefix = unique_prefix();
    // As HAP declared them before: quorum queues without a replication factor, and classic
    // retry queues.
    let connection = lapin::Connection::connect(
        &hap_tests::broker::amqp_url(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("RabbitMQ is reachable");
    let before = messaging::Topology::new(&prefix);
    for spec in &projections::queues::QUEUES {
        let names = QueueNames::new(&prefix, spec.service.name(), "old");
        messaging::queues::declare_bound(&connection, &before, &spec.bindings(), &names)
            .await
            .expect("declared");
        let channel = connection.create_channel().await.expect("a channel");
        channel
            .queue_delete(names.retry.as_str().into(), QueueDeleteOptions::default())
            .await
            .expect("deleted");
        let retry = messaging::queues::string_arguments(&[
            ("x-dead-letter-exchange", ""),
            ("x-dead-letter-routing-key", names.main.as_str()),
        ]);
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(names.retry.as_str().into(), durable, retry)
            .await
            .expect("a classic retry queue");
    }
    connection.close(200, "done".into()).await.ok();

    // This version declares them with a replication factor, and retry queues as quorum queues.
    let mut settings = hap_tests::insecure_settings();
    settings.exchange_prefix = prefix.clone();
    settings.instance = "old".into();
    let readiness = eventstore::readiness::Readiness::default();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(projections::live::run_all(
        hap_tests::read_model(&db, "old").await,
        db.plain_store(),
        settings.consumers(&readiness),
        shutdown.clone(),
    ));

    let consuming = eventually(PATIENCE, || async { readiness.not_ready().is_empty() }).await;
    assert!(consuming, "not consuming: {:?}", readiness.not_ready());
    shutdown.cancel();
    delete_instance_queues(&prefix, "old").await;
}
