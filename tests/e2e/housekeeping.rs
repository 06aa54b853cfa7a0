//! The timer's housekeeping: idempotency keys older than the retention and deadlines that
//! stopped running as long ago are deleted, in batches; recent ones and running deadlines stay,
//! and a request repeating a forgotten key is a new request.

use std::time::Duration;

use hap_tests::{TestDb, id_of, patient, start_app};
use reqwest::{Method, StatusCode};
use uuid::Uuid;

const RETENTION: Duration = Duration::from_secs(3600);

/// A timer over the test's database keeping keys and finished deadlines for [`RETENTION`].
fn timer(db: &TestDb) -> sagas::Timer {
    api::telemetry::metrics_handle();
    let store = db.plain_store();
    sagas::Timer {
        pipeline: commands::Pipeline::new(store, 100, Duration::from_secs(30)),
        retention: RETENTION,
        ready: Default::default(),
    }
}

async fn insert_key(db: &TestDb, key: &str, age: &str) {
    sqlx::query(
        "insert into idempotency_keys
             (tenant_id, key, request_hash, outcome, created_at)
         values ('default', $1, 'hash', '{}', now() - $2::interval)",
    )
    .bind(key)
    .bind(age)
    .execute(&db.pool)
    .await
    .expect("key inserted");
}

async fn insert_deadline(db: &TestDb, state: &str, unchanged_for: &str) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "insert into deadlines (id, tenant_id, kind, due_at, state, correlation_id, updated_at)
         values ($1, 'default', 'scheduling', now(), $2, 'corr', now() - $3::interval)",
    )
    .bind(id)
    .bind(state)
    .bind(unchanged_for)
    .execute(&db.pool)
    .await
    .expect("deadline inserted");
    id
}

async fn keys(db: &TestDb) -> Vec<String> {
    sqlx::query_scalar("select key from idempotency_keys order by key")
        .fetch_all(&db.pool)
        .await
        .expect("keys read")
}

async fn deadline_exists(db: &TestDb, id: Uuid) -> bool {
    db.scalar("select exists (select 1 from deadlines where id = $1)", id)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_round_forgets_old_keys_and_finished_deadlines_and_keeps_the_rest() {
    let db = TestDb::new().await;
    insert_key(&db, "old", "2 hours").await;
    insert_key(&db, "recent", "10 minutes").await;
    let old_fired = insert_deadline(&db, "fired", "2 hours").await;
    let old_paused = insert_deadline(&db, "paused", "2 hours").await;
    let old_running = insert_deadline(&db, "running", "2 hours").await;
    let recent_fired = insert_deadline(&db, "fired", "10 minutes").await;
    // A process killed long ago, and one that beat a moment ago.
    for (instance, silent_for) in [("killed", "2 hours"), ("alive", "5 seconds")] {
        sqlx::query(
            "insert into processes (id, instance, roles, version, host, pid, http_addr, heartbeat_at)
             values ($1, $2, '{timer}', '0', 'h', 1, 'a', now() - $3::interval)",
        )
        .bind(Uuid::now_v7())
        .bind(instance)
        .bind(silent_for)
        .execute(&db.pool)
        .await
        .expect("process inserted");
    }

    let forgotten = timer(&db).housekeep().await.expect("housekeeping ran");

    assert_eq!(forgotten.idempotency_keys, 1);
    assert_eq!(forgotten.deadlines, 2);
    assert_eq!(forgotten.processes, 1);
    let left: Vec<String> = sqlx::query_scalar("select instance from processes")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, ["alive"]);
    assert_eq!(keys(&db).await, ["recent"]);
    assert!(!deadline_exists(&db, old_fired).await);
    assert!(!deadline_exists(&db, old_paused).await);
    assert!(
        deadline_exists(&db, old_running).await,
        "a running deadline is never deleted, however old"
    );
    assert!(deadline_exists(&db, recent_fired).await);
    let metrics = api::telemetry::metrics_handle().render();
    assert!(
        metrics.contains("hap_housekeeping_deleted_total{what=\"idempotency_keys\"}")
            && metrics.contains("hap_housekeeping_deleted_total{what=\"deadlines\"}"),
        "deletions are counted: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_a_batch_is_forgotten_whole() {
    let db = TestDb::new().await;
    let backlog = eventstore::housekeeping::BATCH * 2 + 500;
    sqlx::query(
        "insert into idempotency_keys
             (tenant_id, key, request_hash, outcome, created_at)
         select 'default', 'key-' || n, 'hash', '{}', now() - interval '2 hours'
           from generate_series(1, $1) as n",
    )
    .bind(backlog)
    .execute(&db.pool)
    .await
    .expect("backlog inserted");

    let forgotten = timer(&db).housekeep().await.expect("housekeeping ran");

    assert_eq!(forgotten.idempotency_keys, backlog as u64);
    assert!(keys(&db).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_repeating_a_forgotten_key_is_a_new_request() {
    let (db, app) = start_app().await;
    let register = |document: &str| {
        app.request(Method::POST, "/patients")
            .header("Idempotency-Key", "once")
            .json(&patient(document))
            .send()
    };
    let first = register("DOC-1").await.expect("request sent");
    assert_eq!(first.status(), StatusCode::CREATED);
    let first = id_of(first).await;
    let reused = register("DOC-2").await.expect("request sent");
    assert_eq!(
        reused.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "a remembered key with another request is refused"
    );

    sqlx::query("update idempotency_keys set created_at = now() - interval '2 hours'")
        .execute(&db.pool)
        .await
        .expect("key aged");
    timer(&db).housekeep().await.expect("housekeeping ran");
    let again = register("DOC-2").await.expect("request sent");

    assert_eq!(again.status(), StatusCode::CREATED);
    assert_ne!(
        id_of(again).await,
        first,
        "a new patient, not the first answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_timer_keeps_house_as_it_starts() {
    let db = TestDb::new().await;
    insert_key(&db, "old", "2 hours").await;
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(timer(&db).run(stop.clone()));

    let forgotten = hap_tests::eventually(Duration::from_secs(10), || async {
        keys(&db).await.is_empty()
    })
    .await;
    stop.cancel();
    running.await.expect("the timer stops when told");

    assert!(forgotten, "the old key is deleted by the first round");
}
