//! Every running process is recorded with a heartbeat, so that operators see what runs and
//! what died: a clean stop deletes the row, a killed process's heartbeat stops. Each beat
//! records what the process measured of itself, and the rates come from those samples.

use std::time::Duration;

use eventstore::EventStore;
use eventstore::processes::{GONE_AFTER, ProcessInfo, keep_recorded};
use eventstore::samples::Vitals;
use hap_tests::{TestDb, eventually};
use tokio_util::sync::CancellationToken;

fn info(instance: &str) -> ProcessInfo {
    ProcessInfo {
        instance: instance.into(),
        roles: vec!["command".into(), "query".into()],
        version: "0.1.0".into(),
        host: "test-host".into(),
        pid: 4242,
        http_addr: "127.0.0.1:8080".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_is_listed_while_it_beats_and_deleted_when_it_stops() {
    let db = TestDb::new().await;
    let store = db.plain_store();
    let shutdown = CancellationToken::new();
    let vitals = Vitals {
        commands: 12,
        command_errors: 1,
        publisher_leader: true,
        projector_lag_seconds: 0.25,
        queue_depth: 3,
        dead_letters: 2,
    };
    let measured = vitals.clone();
    let running = tokio::spawn(keep_recorded(
        store.clone(),
        info("i-1"),
        move || measured.clone(),
        shutdown.clone(),
    ));

    // The heartbeat writes the process's row, then its sample: wait for both.
    let listed = eventually(Duration::from_secs(10), || async {
        store.processes().await.unwrap().len() == 1
            && store.latest_samples().await.unwrap().len() == 1
    })
    .await;
    assert!(listed);
    let process = &store.processes().await.unwrap()[0];
    assert_eq!(process.info.instance, "i-1");
    assert_eq!(process.info.roles, ["command", "query"]);
    assert_eq!(
        (process.info.pid, process.info.host.as_str()),
        (4242, "test-host")
    );
    assert!(!process.is_gone(chrono::Utc::now()));
    let samples = store.latest_samples().await.unwrap();
    assert_eq!(samples.len(), 1);
    assert_eq!(
        (samples[0].process_id, &samples[0].vitals),
        (process.id, &vitals)
    );

    // A heartbeat that stopped reads as gone.
    let later = process.heartbeat_at + GONE_AFTER + chrono::Duration::seconds(1);
    assert!(process.is_gone(later));

    shutdown.cancel();
    running.await.unwrap();
    assert!(store.processes().await.unwrap().is_empty());
    assert!(
        store.latest_samples().await.unwrap().is_empty(),
        "the samples go with their process"
    );
}

/// Records process `id` with a sample of `commands` and `errors` so far.
async fn sample(store: &EventStore, id: uuid::Uuid, commands: i64, errors: i64) {
    store.record_process(id, &info("rates")).await.unwrap();
    let vitals = Vitals {
        commands,
        command_errors: errors,
        ..Vitals::default()
    };
    store.record_sample(id, &vitals).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_rates_add_what_each_process_did_between_its_samples() {
    let db = TestDb::new().await;
    let store = db.plain_store();
    let step = Duration::from_secs(3600);
    let span = Duration::from_secs(3600);
    let nothing = store.command_rates(span, step).await.unwrap();
    assert!(nothing.len() >= 2, "{nothing:?}");
    assert!(nothing.iter().all(|r| r.commands_per_second == 0.0));

    // Two processes: one did 30 commands (3 failed) between its samples, the other 6; their
    // first samples count nothing, whatever their totals were when they started.
    let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    sample(&store, a, 100, 10).await;
    sample(&store, b, 7, 0).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    sample(&store, a, 130, 13).await;
    sample(&store, b, 13, 0).await;
    let rates = store.command_rates(span, step).await.unwrap();
    let counted: f64 = rates.iter().map(|r| r.commands_per_second).sum();
    let errors: f64 = rates.iter().map(|r| r.errors_per_second).sum();
    let seconds = step.as_secs_f64();
    assert_eq!(
        ((counted * seconds).round(), (errors * seconds).round()),
        (36.0, 3.0),
        "{rates:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_whose_row_was_lost_records_itself_again() {
    let db = TestDb::new().await;
    let store = db.plain_store();
    let id = uuid::Uuid::now_v7();
    store.record_process(id, &info("i-2")).await.unwrap();
    let first = store.processes().await.unwrap()[0].clone();
    tokio::time::sleep(Duration::from_millis(20)).await;
    store.record_process(id, &info("i-2")).await.unwrap();
    let beat = store.processes().await.unwrap()[0].clone();
    assert_eq!(beat.started_at, first.started_at);
    assert!(beat.heartbeat_at > first.heartbeat_at);

    sqlx::query("delete from processes")
        .execute(&db.pool)
        .await
        .unwrap();
    store.record_process(id, &info("i-2")).await.unwrap();
    assert_eq!(store.processes().await.unwrap()[0].id, id);
}

/// The rows of `instance`'s processes.
async fn rows_of(
    store: &EventStore,
    instance: &str,
) -> Vec<eventstore::processes::RecordedProcess> {
    let all = store.processes().await.unwrap();
    all.into_iter()
        .filter(|p| p.info.instance == instance)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hap_serve_records_itself_and_deletes_its_row_when_stopped_but_not_when_killed() {
    let db = TestDb::new().await;
    let store = db.plain_store();
    let prefix = hap_tests::broker::unique_prefix();

    let stopped = hap_tests::process::spawn_hap(&db, &prefix, "timer,query", "proc-a");
    let pid = stopped.id().expect("a running child");
    let recorded = eventually(Duration::from_secs(30), || async {
        rows_of(&store, "proc-a").await.len() == 1
    })
    .await;
    assert!(recorded, "hap serve recorded itself");
    let row = &rows_of(&store, "proc-a").await[0];
    assert_eq!(row.info.roles, ["timer", "query"]);
    assert_eq!(row.info.pid, pid as i32);
    assert_eq!(row.info.version, env!("CARGO_PKG_VERSION"));
    assert!(
        row.info.http_addr.starts_with("127.0.0.1:"),
        "{}",
        row.info.http_addr
    );

    // SIGTERM, even before it serves: a clean stop deletes the row.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deleted = eventually(Duration::from_secs(30), || async {
        rows_of(&store, "proc-a").await.is_empty()
    })
    .await;
    assert!(deleted, "a stopped process's row is deleted");

    // kill -9: the row stays, and its heartbeat stops.
    let mut killed = hap_tests::process::spawn_hap(&db, &prefix, "timer", "proc-b");
    let recorded = eventually(Duration::from_secs(30), || async {
        rows_of(&store, "proc-b").await.len() == 1
    })
    .await;
    assert!(recorded);
    killed.kill().await.unwrap();
    let last_beat = rows_of(&store, "proc-b").await[0].heartbeat_at;
    tokio::time::sleep(eventstore::processes::HEARTBEAT + Duration::from_secs(1)).await;
    let rows = rows_of(&store, "proc-b").await;
    assert_eq!(rows.len(), 1, "a killed process leaves its row");
    assert_eq!(rows[0].heartbeat_at, last_beat, "and its heartbeat stops");
}
