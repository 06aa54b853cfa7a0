//! `/metrics` shows what an operator needs: commands, queries, appends, publisher lag and
//! confirms, projector progress and lag, and dead-letter queue depth.

use std::time::Duration;

use hap_tests::broker::{delete_instance_queues, unique_prefix, wait_for_queue};
use hap_tests::{TestApp, TestDb, caught_up, eventually, start_projectors, start_publisher};
use messaging::QueueNames;
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_commands_queries_publisher_projectors_and_dead_letters() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let (read, projectors) = start_projectors(&db, &prefix, "m").await;
    let dlq = QueueNames::new(&prefix, "patient-service", "m").dead_letters;
    wait_for_queue(&dlq).await;
    let publisher = start_publisher(&db.pool, &prefix);
    let app = TestApp::start(&db).await;

    app.register_patient("DOC-1").await;
    app.register_physician("CRM-1").await;
    assert!(eventually(Duration::from_secs(30), || caught_up(&db, &read)).await);
    let listed = app.request(Method::GET, "/patients").send().await.unwrap();
    assert_eq!(listed.status(), 200);

    let expected = [
        "hap_commands_total{route=\"POST /patients\",status=\"201\"}".to_owned(),
        "hap_command_duration_seconds_bucket{route=\"POST /patients\"".to_owned(),
        "hap_queries_total{route=\"GET /patients\",status=\"200\"}".to_owned(),
        "hap_query_duration_seconds_bucket{route=\"GET /patients\"".to_owned(),
        "hap_events_appended_total{event_type=\"PatientRegistered\"}".to_owned(),
        "hap_publisher_published_total".to_owned(),
        "hap_publisher_confirm_seconds_bucket".to_owned(),
        "hap_publisher_lag_events".to_owned(),
        "hap_publisher_lag_seconds".to_owned(),
        "hap_publisher_leader 1".to_owned(),
        "hap_oldest_write_transaction_seconds".to_owned(),
        "hap_projector_events_total{projection=\"patients\",instance=\"m\"}".to_owned(),
        "hap_projector_lag_seconds{projection=\"patients\",instance=\"m\"}".to_owned(),
        format!("hap_dead_letter_queue_depth{{queue=\"{dlq}\"}} 0"),
    ];
    // Lag and depth gauges are refreshed periodically: poll until all are there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut text = String::new();
    while tokio::time::Instant::now() < deadline {
        text = app.get_text("/metrics").await;
        if expected.iter().all(|m| text.contains(m.as_str())) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let missing: Vec<_> = expected
        .iter()
        .filter(|m| !text.contains(m.as_str()))
        .collect();
    assert!(missing.is_empty(), "missing from /metrics: {missing:?}");
    projectors.cancel();
    publisher.cancel();
    delete_instance_queues(&prefix, "m").await;
}
