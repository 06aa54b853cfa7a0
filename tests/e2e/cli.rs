//! The `hap` command line as a user runs it: exit codes, messages, and that each subcommand
//! does its work against a real database.

use hap_tests::TestDb;
use hap_tests::process::hap_binary;
use tokio::process::Command;

async fn hap(db: &TestDb, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(hap_binary())
        .args(args)
        .env("HAP_DATABASE_URL", &db.url)
        // The data key every process of one HAP shares: what the demo seals, a rebuild opens.
        .env("HAP_DATA_KEY", hap_tests::tokens::DATA_KEY)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("hap runs");
    (
        output.status.code().expect("hap exits"),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_fills_the_system_through_the_command_path() {
    let db = TestDb::new().await;

    let (code, stdout, stderr) = hap(&db, &["demo", "--settle-secs", "0"]).await;

    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("registered patient"), "{stdout}");
    let events: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(events >= 25, "{events} events");
    let (again, _, stderr) = hap(&db, &["demo", "--settle-secs", "0"]).await;
    assert_eq!(again, 0, "the demo runs twice without conflicts: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_a_missing_database() {
    let db = TestDb::new().await;
    let name = format!("hap_cli_{}", uuid::Uuid::new_v4().simple());
    let mut url = url::Url::parse(&db.url).unwrap();
    url.set_path(&name);

    let output = Command::new(hap_binary())
        .args(["migrate", "--database-url", url.as_str()])
        .output()
        .await
        .unwrap();

    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let exists: bool = db
        .scalar(
            "select exists (select 1 from pg_database where datname = $1)",
            &name,
        )
        .await;
    assert!(exists);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "drop database {name} with (force)"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_usage_exits_2_and_failures_exit_1_with_one_line() {
    let db = TestDb::new().await;

    let (usage, _, _) = hap(&db, &["rebuild"]).await;
    assert_eq!(usage, 2, "rebuild needs --all or --projection");
    let (unknown, _, _) = hap(&db, &["frobnicate"]).await;
    assert_eq!(unknown, 2);
    // A refused setting that may hold a password is not quoted back.
    for refused in [
        [
            "--amqp-url",
            "amqp://guest:hunter2hunter2@127.0.0.1:5672,http://x:hunter2@h",
        ],
        ["--auth-secret", "hunter2hunter2"],
    ] {
        let (code, _, stderr) = hap(&db, &[&refused[..], &["migrate"]].concat()).await;
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains(refused[0]) && !stderr.contains("hunter2"),
            "{stderr}"
        );
    }

    let (failed, _, stderr) = hap(&db, &["rebuild", "--projection", "nope"]).await;
    assert_eq!(failed, 1);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("hap: ") && last.contains("unknown projection"),
        "{stderr}"
    );

    let unreachable = Command::new(hap_binary())
        .args([
            "migrate",
            "--database-url",
            "postgres://postgres@127.0.0.1:1/hap",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_events_seals_clear_events_batch_by_batch_and_reports_each() {
    let db = TestDb::new().await;
    // Three registrations as a release before sealing stored them: in clear, at version 1.
    for n in 0..3 {
        let patient = uuid::Uuid::now_v7();
        sqlx::query(
            "insert into events (event_id, stream_id, aggregate_type, version, event_type,
                                 payload, tenant_id, correlation_id, schema_version, occurred_at)
             values ($1, $2, 'patient', 1, 'PatientRegistered', $3::json, 'default', 'old', 1,
                     now())",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(patient)
        .bind(
            serde_json::json!({"patientId": patient, "name": format!("CLEAR-NAME-{n}"),
                               "birthDate": "1990-01-02", "documentNumber": format!("D-{n}")})
            .to_string(),
        )
        .execute(&db.pool)
        .await
        .unwrap();
    }

    let (code, stdout, stderr) = hap(&db, &["migrate-events", "--batch", "2"]).await;

    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("sealed 2 events (2 in all)"), "{stdout}");
    assert!(stdout.contains("sealed 1 events (3 in all)"), "{stdout}");
    assert_eq!(db.events_holding("CLEAR-NAME").await, 0);
    let (again, stdout, _) = hap(&db, &["migrate-events"]).await;
    assert_eq!(again, 0);
    assert!(stdout.contains("0 sealed by this run"), "{stdout}");
}
