//! `hap rebuild` against a running system: rebuilding while commands flow, verifying, and a
//! projector killed mid-stream whose read model must still equal a fresh rebuild.

use std::time::Duration;

use eventstore::EventStore;
use hap_tests::broker::{delete_instance_queues, unique_prefix, wait_for_queue};
use hap_tests::process::{hap_binary, spawn_hap};
use hap_tests::{TestApp, TestDb, caught_up, eventually, start_projectors, start_publisher};
use projections::queues::QueueNames;
use projections::rebuild::{all_projections, rebuild};
use serde_json::json;
use tokio::task::JoinHandle;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilding_while_commands_flow_then_verifying_finds_no_difference() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let (read, projectors) = start_projectors(&db, &prefix, "r").await;
    wait_for_instance(&prefix, "r").await;
    let publisher = start_publisher(&db.pool, &prefix);
    let app = TestApp::start(&db).await;
    let store = EventStore::new(db.pool.clone());
    let schema = projections::schema::schema_name("r");
    let all = all_projections();

    let stop = tokio_util::sync::CancellationToken::new();
    let writer = keep_commanding(&app, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rebuilt = rebuild(&store, &db.url, &schema, &all, false, false)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    writer.await.unwrap();

    assert!(rebuilt.events > 0);
    assert!(
        eventually(PATIENCE, || caught_up(&db, &read)).await,
        "the live projectors caught up"
    );
    let verified = rebuild(&store, &db.url, &schema, &all, true, false)
        .await
        .unwrap();
    assert_eq!(verified.differences, vec![], "live equals rebuilt");
    let patients: i64 = sqlx::query_scalar("select count(*) from patients")
        .fetch_one(&read.pool)
        .await
        .unwrap();
    assert!(patients > 0, "the swapped-in model is the one queries read");
    projectors.cancel();
    publisher.cancel();
    delete_instance_queues(&prefix, "r").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_a_tampered_read_model_and_a_rebuild_of_its_projection_mends_it() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let (read, projectors) = start_projectors(&db, &prefix, "v").await;
    wait_for_instance(&prefix, "v").await;
    let publisher = start_publisher(&db.pool, &prefix);
    let app = TestApp::start(&db).await;
    for n in 0..3 {
        app.register_patient(&format!("DOC-{n}")).await;
    }
    app.register_physician("CRM-1").await;
    assert!(eventually(PATIENCE, || caught_up(&db, &read)).await);
    let store = EventStore::new(db.pool.clone());
    let schema = projections::schema::schema_name("v");

    sqlx::query("update patients set name = 'Tampered' where id = (select id from patients order by id limit 1)")
        .execute(&read.pool)
        .await
        .unwrap();
    let verified = rebuild(&store, &db.url, &schema, &all_projections(), true, false)
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

    rebuild(&store, &db.url, &schema, &["patients"], false, false)
        .await
        .unwrap();
    let after = rebuild(&store, &db.url, &schema, &all_projections(), true, false)
        .await
        .unwrap();
    assert_eq!(after.differences, vec![]);
    let physicians: i64 = sqlx::query_scalar("select count(*) from physicians")
        .fetch_one(&read.pool)
        .await
        .unwrap();
    assert_eq!(physicians, 1, "the other projections were left alone");
    projectors.cancel();
    publisher.cancel();
    delete_instance_queues(&prefix, "v").await;
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
    let verify = tokio::process::Command::new(hap_binary())
        .args(["rebuild", "--all", "--verify", "--instance", "k"])
        .env("HAP_DATABASE_URL", &db.url)
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
    restarted.start_kill().unwrap();
    publisher.cancel();
    delete_instance_queues(&prefix, "k").await;
}
