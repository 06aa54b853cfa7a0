//! `hap rebuild` against a running system: rebuilding while commands flow, verifying, a
//! projector killed mid-stream whose read model must still equal a fresh rebuild, and every
//! kind of event folded by a rebuild as the live projectors apply it.

use std::time::Duration;

use domain::Event;
use domain::event::{
    ConsultationCancelled, ConsultationDone, ConsultationRecordsVoided,
    ConsultationSchedulingFailed, FailureReason,
};
use domain::ids::ConsultationId;
use domain::record::RecordBook;
use eventstore::EventStore;
use hap_tests::broker::{delete_instance_queues, unique_prefix, wait_for_queue};
use hap_tests::process::{hap_binary, spawn_hap};
use hap_tests::{TestApp, TestDb, caught_up, eventually, start_projectors, start_publisher};
use messaging::QueueNames;
use projections::ReadModel;
use projections::patients::Patients;
use projections::projector::apply_batch;
use projections::rebuild::{CHUNK_EVENTS, all_projections, rebuild};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(60);

/// Issues commands until `stop` is cancelled: registrations, renames and consultations.
fn keep_commanding(app: &TestApp, stop: tokio_util::sync::CancellationToken) -> JoinHandle<()> {
    let app = app.clone();
    tokio::spawn(async move {
        let physician = app
            .register_physician(&format!("CRM-{}", uuid::Uuid::now_v7()))
            .await;
        let mut n = 0;
        while !stop.is_cancelled() {
            let patient = app
                .register_patient(&format!("DOC-{}", uuid::Uuid::now_v7()))
                .await;
            app.patch(
                &format!("/patients/{patient}"),
                json!({"name": format!("Renamed {n}")}),
            )
            .await;
            app.request_consultation(patient, physician).await;
            n += 1;
        }
    })
}

/// Rebuilds (or, with `verify`, checks) as `hap rebuild` does by default, without a progress
/// bar.
async fn rebuild_with_defaults(
    store: &EventStore,
    url: &str,
    schema: &str,
    projections: &[&str],
    verify: bool,
) -> Result<projections::rebuild::Report, projections::rebuild::RebuildError> {
    rebuild(store, url, schema, projections, verify, false, CHUNK_EVENTS).await
}

async fn wait_for_instance(prefix: &str, instance: &str) {
    for service in [
        "patient-service",
        "physician-service",
        "scheduling-service",
        "clinical-records",
    ] {
        wait_for_queue(&QueueNames::new(prefix, service, instance).main).await;
    }
}

/// Instance `instance`'s projectors and the publisher running in-process over a database of
/// the test's own, with the API in front: the live system a rebuild runs beside.
struct Live {
    instance: &'static str,
    prefix: String,
    read: ReadModel,
    app: TestApp,
    projectors: CancellationToken,
    publisher: CancellationToken,
    /// Last, so that it is dropped last: dropping it drops the database.
    db: TestDb,
}

impl Live {
    /// Returns once the instance's queues are bound, so that no event is missed.
    async fn start(instance: &'static str) -> Self {
        let db = TestDb::new().await;
        let prefix = unique_prefix();
        let (read, projectors) = start_projectors(&db, &prefix, instance).await;
        wait_for_instance(&prefix, instance).await;
        let publisher = start_publisher(&db.pool, &prefix);
        let app = TestApp::start(&db).await;
        Self {
            instance,
            prefix,
            read,
            app,
            projectors,
            publisher,
            db,
        }
    }

    /// Stops the projectors and the publisher and deletes the instance's queues.
    async fn stop(self) {
        self.projectors.cancel();
        self.publisher.cancel();
        delete_instance_queues(&self.prefix, self.instance).await;
    }
}

/// Every index and constraint of the read model's schema (primary keys included), as
/// PostgreSQL defines them.
async fn indexes_of(db: &TestDb, schema: &str) -> Vec<String> {
    sqlx::query_scalar(
        "select * from (
             select indexdef from pg_indexes where schemaname = $1
             union all
             select format('%s %s %s', conrelid::regclass, conname, pg_get_constraintdef(oid))
               from pg_constraint where connamespace = $1::regnamespace
         ) definitions order by 1",
    )
    .bind(schema)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilding_while_commands_flow_then_verifying_finds_no_difference() {
    let live = Live::start("r").await;
    let (db, read, app) = (&live.db, &live.read, &live.app);
    let store = hap_tests::store(&db.pool);
    let schema = projections::schema::schema_name("r");
    let all = all_projections();
    let indexes = indexes_of(db, &schema).await;
    assert!(indexes.len() > 10, "the migrations' indexes: {indexes:?}");

    let stop = tokio_util::sync::CancellationToken::new();
    let writer = keep_commanding(app, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rebuilt = rebuild_with_defaults(&store, &db.url, &schema, &all, false)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    writer.await.unwrap();

    assert!(rebuilt.events > 0);
    assert!(
        eventually(PATIENCE, || caught_up(db, read)).await,
        "the live projectors caught up"
    );
    let verified = rebuild_with_defaults(&store, &db.url, &schema, &all, true)
        .await
        .unwrap();
    assert_eq!(verified.differences, vec![], "live equals rebuilt");
    let patients: i64 = sqlx::query_scalar("select count(*) from patients")
        .fetch_one(&read.pool)
        .await
        .unwrap();
    assert!(patients > 0, "the swapped-in model is the one queries read");
    assert_eq!(
        indexes_of(db, &schema).await,
        indexes,
        "the rebuilt tables have every index and key the migrations gave them"
    );
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_a_tampered_read_model_and_a_rebuild_of_its_projection_mends_it() {
    let live = Live::start("v").await;
    let (db, read, app) = (&live.db, &live.read, &live.app);
    for n in 0..3 {
        app.register_patient(&format!("DOC-{n}")).await;
    }
    app.register_physician("CRM-1").await;
    assert!(eventually(PATIENCE, || caught_up(db, read)).await);
    let store = hap_tests::store(&db.pool);
    let schema = projections::schema::schema_name("v");
    let indexes = indexes_of(db, &schema).await;

    sqlx::query("update patients set name = 'Tampered' where id = (select id from patients order by id limit 1)")
        .execute(&read.pool)
        .await
        .unwrap();
    let verified = rebuild_with_defaults(&store, &db.url, &schema, &all_projections(), true)
        .await
        .unwrap();
    assert_eq!(verified.differences.len(), 1);
    assert_eq!(verified.differences[0].table, "patients");
    assert_eq!(
        (
            verified.differences[0].only_live,
            verified.differences[0].only_rebuilt
        ),
        (1, 1)
    );

    rebuild_with_defaults(&store, &db.url, &schema, &["patients"], false)
        .await
        .unwrap();
    let after = rebuild_with_defaults(&store, &db.url, &schema, &all_projections(), true)
        .await
        .unwrap();
    assert_eq!(after.differences, vec![]);
    let physicians: i64 = sqlx::query_scalar("select count(*) from physicians")
        .fetch_one(&read.pool)
        .await
        .unwrap();
    assert_eq!(physicians, 1, "the other projections were left alone");
    assert_eq!(indexes_of(db, &schema).await, indexes);
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_killed_mid_stream_and_restarted_matches_a_fresh_rebuild() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let mut projector = spawn_hap(&db, &prefix, "projector", "k");
    wait_for_instance(&prefix, "k").await;
    let publisher = start_publisher(&db.pool, &prefix);
    let app = TestApp::start(&db).await;

    let stop = tokio_util::sync::CancellationToken::new();
    let writer = keep_commanding(&app, stop.clone());
    tokio::time::sleep(Duration::from_millis(700)).await;
    projector.start_kill().unwrap(); // SIGKILL, mid-batch as likely as not
    projector.wait().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut restarted = spawn_hap(&db, &prefix, "projector", "k");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    writer.await.unwrap();

    let read = hap_tests::read_model(&db, "k").await;
    assert!(
        eventually(PATIENCE, || caught_up(&db, &read)).await,
        "the restarted projector caught up"
    );
    // In chunks of 50 events: the history interleaves many streams, continued across chunks.
    let verify = tokio::process::Command::new(hap_binary())
        .args(["rebuild", "--all", "--verify", "--instance", "k"])
        .args(["--chunk-events", "50"])
        .env("HAP_DATABASE_URL", &db.url)
        // It opens what the insecure servers sealed: with their development key.
        .env("HAP_INSECURE_NO_AUTH", "true")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(stdout.contains("no differences"), "{stdout}");
    assert!(stdout.contains("peak memory: "), "{stdout}");
    restarted.start_kill().unwrap();
    publisher.cancel();
    delete_instance_queues(&prefix, "k").await;
}

/// Every kind of event each projection folds, through the live projectors; then a rebuild
/// (which folds the history in memory a chunk at a time and copies the rows) must produce the
/// very same rows, down to names copied into consultations, record versions and timestamps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_folds_every_kind_of_event_as_the_live_projectors_do() {
    fold_every_kind_of_event("e", CHUNK_EVENTS).await;
}

/// As above, folding 2 events at a time: every stream, record book and name crosses chunk
/// boundaries, so each chunk reads back from the shadow what earlier ones wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_in_tiny_chunks_folds_every_kind_of_event_as_the_live_projectors_do() {
    fold_every_kind_of_event("tiny", 2).await;
}

/// Every kind of event through the live projectors, then a verification and a rebuild of
/// `instance`'s read model folding `chunk_events` at a time: the rebuilt tables and stream
/// versions equal the live ones, and hold the history.
async fn fold_every_kind_of_event(instance: &'static str, chunk_events: usize) {
    let live = Live::start(instance).await;
    let (db, read, app) = (&live.db, &live.read, &live.app);

    let patient = app.register_patient("DOC-1").await;
    let other = app.register_patient("DOC-2").await;
    let physician = app.register_physician("CRM-1").await;
    let consultations = [
        app.request_consultation(patient, physician).await,
        app.request_consultation(other, physician).await,
        app.request_consultation(patient, physician).await,
        app.request_consultation(patient, physician).await,
    ];
    let [first, second, third, fourth] = consultations;
    app.schedule(first, patient, physician).await;
    app.schedule(second, other, physician).await;
    app.schedule(third, patient, physician).await;
    let failed = Event::ConsultationSchedulingFailed(ConsultationSchedulingFailed {
        consultation_id: fourth.into(),
        reason: FailureReason::PhysicianUnavailable,
        detail: "the slot is taken".into(),
    });
    app.append_event(fourth, &failed).await;
    // Renames after the consultations were requested must reach them; the patient's name
    // has every character COPY's text format would have to escape.
    for (path, changes) in [
        (
            format!("/patients/{patient}"),
            json!({"name": "Ana\tSouza \\ \"Lima\"\nSegunda", "phone": "+55 11 5555-0000"}),
        ),
        (
            format!("/physicians/{physician}"),
            json!({"name": "Dr. Rui Costa Filho", "specialty": "cardiology"}),
        ),
        (
            format!("/consultations/{first}"),
            json!({"notes": "bring the exams"}),
        ),
    ] {
        app.patch_expecting(&path, changes, 200).await;
    }
    let record = app.write_record(first, "BP 12/8").await;
    let path = format!("/records/{record}");
    app.patch_expecting(&path, json!({"content": "BP 13/8"}), 200)
        .await;
    for (consultation, content) in [(first, "second note"), (second, "to be voided")] {
        app.write_record(consultation, content).await;
    }
    // The cancellation saga's steps, by hand.
    let path = format!("/consultations/{second}/cancel");
    app.post_expecting(&path, json!({"reason": "travel"}), 202)
        .await;
    let book = ConsultationId::from(second);
    let voided = Event::ConsultationRecordsVoided(ConsultationRecordsVoided {
        consultation_id: book,
        record_ids: vec![],
    });
    app.append_event(RecordBook::stream_id(book), &voided).await;
    let cancelled = Event::ConsultationCancelled(ConsultationCancelled {
        consultation_id: book,
        reason: "travel".into(),
    });
    app.append_event(second, &cancelled).await;
    let done = Event::ConsultationDone(ConsultationDone {
        consultation_id: third.into(),
    });
    app.append_event(third, &done).await;
    let path = format!("/patients/{other}/deactivate");
    app.post_expecting(&path, json!({}), 200).await;
    assert!(eventually(PATIENCE, || caught_up(db, read)).await);

    let store = hap_tests::store(&db.pool);
    let schema = projections::schema::schema_name(instance);
    let verified = rebuild(
        &store,
        &db.url,
        &schema,
        &all_projections(),
        true,
        false,
        chunk_events,
    )
    .await
    .unwrap();
    assert_eq!(verified.differences, vec![], "rebuilt equals live");
    let versions = async || -> Vec<(uuid::Uuid, String, i64, String)> {
        sqlx::query_as(
            "select stream_id, projection::text, version, tenant_id from stream_versions
              order by 1, 2",
        )
        .fetch_all(&read.pool)
        .await
        .unwrap()
    };
    let live_versions = versions().await;
    rebuild(
        &store,
        &db.url,
        &schema,
        &all_projections(),
        false,
        false,
        chunk_events,
    )
    .await
    .unwrap();
    assert_eq!(
        versions().await,
        live_versions,
        "the rebuilt stream versions are the live ones"
    );
    // What follows reads the rebuilt model.
    let statuses: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "select status, patient_name, physician_name from consultations order by id",
    )
    .fetch_all(&read.pool)
    .await
    .unwrap();
    let ana = Some("Ana\tSouza \\ \"Lima\"\nSegunda".to_owned());
    let rui = Some("Dr. Rui Costa Filho".to_owned());
    let other_name = statuses[1].1.clone();
    assert_eq!(
        statuses,
        vec![
            ("scheduled".into(), ana.clone(), rui.clone()),
            ("cancelled".into(), other_name, rui.clone()),
            ("done".into(), ana.clone(), rui.clone()),
            ("failed".into(), ana, rui),
        ],
        "the history reached the consultations"
    );
    let records: (i64, i64) =
        sqlx::query_as("select count(*), count(*) filter (where status = 'voided') from records")
            .fetch_one(&read.pool)
            .await
            .unwrap();
    assert_eq!(records, (3, 1), "and the records");
    live.stop().await;
}

/// A live projector may hold an event the gap-safe read still holds back: its own process fed
/// it the moment its append committed, while an older write transaction was still running.
/// A rebuild that swaps in the meantime must not take that event away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_keeps_what_the_live_projector_applied_past_an_older_running_writer() {
    let db = TestDb::new().await;
    let read = hap_tests::read_model(&db, "fed").await;
    let store = hap_tests::store(&db.pool);

    // The older writer: its transaction id is lower, and it is still running.
    let mut older = db.pool.begin().await.unwrap();
    sqlx::query(
        "insert into events (event_id, stream_id, aggregate_type, version, event_type, payload,
                             tenant_id, correlation_id, schema_version, occurred_at)
         values ($1, $1, 'test', 1, 'TestHappened', '{}', 'default', 'older', 1, now())",
    )
    .bind(uuid::Uuid::now_v7())
    .execute(&mut *older)
    .await
    .unwrap();
    // A younger registration commits, and is applied live as the feed applies it.
    let app = TestApp::start(&db).await;
    let id = app.register_patient("DOC-FED").await;
    let registered = store
        .read_stream(id, eventstore::StreamVersion::EMPTY)
        .await
        .unwrap();
    let fed = messaging::Envelope::from_recorded(registered[0].clone()).unwrap();
    apply_batch(&read.pool, &store, &Patients, &[fed])
        .await
        .unwrap();
    assert!(
        store
            .read_all(eventstore::GlobalCheckpoint::START, 10)
            .await
            .unwrap()
            .is_empty(),
        "the gap-safe read still holds the registration back"
    );

    let schema = projections::schema::schema_name("fed");
    rebuild_with_defaults(&store, &db.url, &schema, &all_projections(), false)
        .await
        .unwrap();
    let patients: i64 = sqlx::query_scalar("select count(*) from patients where id = $1")
        .bind(id)
        .fetch_one(&read.pool)
        .await
        .unwrap();
    assert_eq!(patients, 1, "the rebuilt read model has it");
    older.rollback().await.unwrap();
}
