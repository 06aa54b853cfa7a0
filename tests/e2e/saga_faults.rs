//! The scheduling saga when a step fails part-way: a confirmation whose write fails, one whose
//! message ends in the dead-letter queue, and a deactivation that lands while a consultation
//! is still being scheduled. Every consultation still ends, with no slot left held.
//!
//! The failures are real database failures: a trigger on `events` in the test's own database
//! refuses (or first holds up) the insert of `ConsultationScheduled`, the confirmation's write.

use std::time::Duration;

use chrono::{DateTime, Duration as Span, Utc};
use hap_tests::system::{Parts, System};
use hap_tests::{TestDb, eventually};
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

/// A deadline long enough never to fire in a test that is not about deadlines.
const NEVER: Duration = Duration::from_secs(600);

fn tomorrow_at(hour: u32) -> DateTime<Utc> {
    (Utc::now() + Span::days(1))
        .date_naive()
        .and_hms_opt(hour, 0, 0)
        .expect("a valid time")
        .and_utc()
}

/// Registers a patient and a physician, and requests a consultation between them tomorrow at
/// 9:00.
async fn consultation_tomorrow_at_nine(system: &System) -> Uuid {
    let (patient, physician) = system.app.register_patient_and_physician().await;
    system
        .app
        .request_consultation_at(patient, physician, tomorrow_at(9))
        .await
}

/// Makes every write that schedules a consultation fail, after holding its transaction open
/// for `hold` (a transient error to HAP: the step is retried).
async fn fail_confirmations(db: &TestDb, hold: Duration) {
    let body = format!(
        "begin perform pg_sleep({}); raise exception 'the confirmation fails (test)' using errcode = '40001'; end",
        hold.as_secs_f64()
    );
    // The hold is a number this test chose, not input.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "create function fail_confirmation() returns trigger language plpgsql as $$ {body} $$"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "create trigger fail_confirmation before insert on events for each row
           when (new.event_type = 'ConsultationScheduled') execute function fail_confirmation()",
    )
    .execute(&db.pool)
    .await
    .unwrap();
}

/// From here on, the database also refuses to let a paused deadline run again: it went away
/// between the confirmation's writes, and the step can undo nothing it wrote before.
async fn refuse_undoing_a_pause(db: &TestDb) {
    sqlx::query(
        "create function refuse_resume() returns trigger language plpgsql as $$
           begin raise exception 'the database is gone (test)' using errcode = '57P01'; end $$",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "create trigger refuse_resume before update on deadlines for each row
           when (old.state = 'paused' and new.state = 'running') execute function refuse_resume()",
    )
    .execute(&db.pool)
    .await
    .unwrap();
}

async fn let_confirmations_pass(db: &TestDb) {
    sqlx::query("drop trigger fail_confirmation on events")
        .execute(&db.pool)
        .await
        .unwrap();
}

/// Whether the consultation's physician's day holds its slot: confirmed and not released.
async fn holds_slot(db: &TestDb, consultation: Uuid) -> bool {
    let types: Vec<String> = sqlx::query_scalar(
        "select event_type from events
          where event_type in ('PhysicianAvailabilityConfirmed', 'PhysicianSlotReleased')
            and payload ->> 'consultationId' = $1
          order by position",
    )
    .bind(consultation.to_string())
    .fetch_all(&db.pool)
    .await
    .unwrap();
    types
        .last()
        .is_some_and(|t| t == "PhysicianAvailabilityConfirmed")
}

/// Whether the consultation's patient was validated for it.
async fn validated(db: &TestDb, consultation: Uuid) -> bool {
    db.scalar(
        "select exists(select 1 from events
          where event_type = 'PatientValidatedForConsultation'
            and payload ->> 'consultationId' = $1)",
        consultation.to_string(),
    )
    .await
}

/// Waits until the consultation's slot is free again: released, or never held.
async fn slot_released(db: &TestDb, consultation: Uuid) -> bool {
    eventually(Duration::from_secs(20), || async {
        !holds_slot(db, consultation).await
    })
    .await
}

async fn deadline_state(db: &TestDb, id: Uuid) -> String {
    sqlx::query_scalar("select state from deadlines where id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn metrics(system: &System) -> String {
    let response = system.app.request(Method::GET, "/metrics").send().await;
    response.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_confirmation_lets_its_paused_deadline_run_again_and_an_overdue_one_fires_at_once()
{
    let db = TestDb::new().await;
    // The confirmation holds its write open well past the deadline, then fails.
    fail_confirmations(&db, Duration::from_secs(6)).await;
    let system = System::start(&db, Duration::from_secs(2), Parts::ALL).await;
    let id = consultation_tomorrow_at_nine(&system).await;

    // While the confirmation's write is open, it holds the deadline's row: paused.
    let confirming = eventually(Duration::from_secs(20), || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from pg_stat_activity
              where datname = current_database() and wait_event = 'PgSleep'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
            > 0
    })
    .await;
    assert!(confirming, "the confirmation started");
    let locked = sqlx::query("select 1 from deadlines where id = $1 for update nowait")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert_eq!(
        locked.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("55P03"),
        "the confirmation holds the deadline"
    );
    // Past due, the timer cannot fire it while the confirmation holds it.
    let overdue = eventually(Duration::from_secs(10), || async {
        sqlx::query_scalar::<_, bool>("select due_at < now() from deadlines where id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap()
    })
    .await;
    assert!(overdue);
    assert!(
        !db.stream_events(id)
            .await
            .contains(&"ConsultationSchedulingFailed".to_owned()),
        "nothing fires a paused deadline"
    );

    // The write fails: the pause is undone with it, and the overdue deadline fires at once.
    let failed = system
        .wait_for_status(id, "failed", Duration::from_secs(30))
        .await;
    assert_eq!(failed["failureReason"], "timed_out", "{failed}");
    assert_eq!(deadline_state(&db, id).await, "fired");
    let fired_after_the_pause: bool = sqlx::query_scalar(
        "select updated_at >= created_at + interval '6 seconds' from deadlines where id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        fired_after_the_pause,
        "it fired only once the confirmation let go"
    );
    let released = slot_released(&db, id).await;
    assert!(released, "the slot held for it is free again");
    assert!(
        !db.stream_events(id)
            .await
            .contains(&"ConsultationScheduled".to_owned())
    );
    assert!(
        metrics(&system)
            .await
            .contains("hap_deadlines_total{transition=\"resumed\"}")
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmation_dead_lettered_mid_flight_still_ends_its_consultation_by_the_deadline() {
    let db = TestDb::new().await;
    fail_confirmations(&db, Duration::ZERO).await;
    refuse_undoing_a_pause(&db).await;
    let mut settings = hap_tests::insecure_settings();
    settings.max_retries = 1;
    let system = System::start_with(&db, Duration::from_secs(4), Parts::ALL, settings).await;
    let id = consultation_tomorrow_at_nine(&system).await;

    let dead_letters =
        messaging::QueueNames::shared(&system.prefix, "scheduling-service").dead_letters;
    // One confirmation's step, or both (each answer's step may find both answers stored).
    let dead_lettered = eventually(Duration::from_secs(20), || async {
        hap_tests::broker::queue_counts(&dead_letters).0 >= 1
    })
    .await;
    assert!(dead_lettered, "the confirmation gave up");
    let failed = system
        .wait_for_status(id, "failed", Duration::from_secs(30))
        .await;
    assert_eq!(failed["failureReason"], "timed_out", "{failed}");
    let released = slot_released(&db, id).await;
    assert!(released, "the slot held for it is free again");
    assert_eq!(deadline_state(&db, id).await, "fired");
    hap_tests::broker::drain(&dead_letters).await;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consultation_whose_patient_or_physician_is_deactivated_while_it_is_scheduled_never_ends_scheduled()
 {
    let db = TestDb::new().await;
    // Confirmations keep failing (and are retried) until the deactivations are in.
    fail_confirmations(&db, Duration::ZERO).await;
    let system = System::start(&db, NEVER, Parts::ALL).await;
    let ([patient, other_patient], [physician, other_physician]) =
        system.app.register_two_of_each().await;
    let of_patient = system
        .app
        .request_consultation_at(patient, other_physician, tomorrow_at(9))
        .await;
    let of_physician = system
        .app
        .request_consultation_at(other_patient, physician, tomorrow_at(10))
        .await;
    // Both validated and holding their slots (the two answers come in either order): only
    // the confirmation is missing.
    for id in [of_patient, of_physician] {
        let answered = eventually(Duration::from_secs(20), || async {
            holds_slot(&db, id).await && validated(&db, id).await
        })
        .await;
        assert!(answered, "{id} is validated and holds its slot");
    }

    for path in [
        format!("/patients/{patient}/deactivate"),
        format!("/physicians/{physician}/deactivate"),
    ] {
        system.app.post_expecting(&path, json!({}), 200).await;
    }
    for (id, reason) in [
        (of_patient, "patient_invalid"),
        (of_physician, "physician_unavailable"),
    ] {
        let c = system
            .wait_for_status(id, "failed", Duration::from_secs(30))
            .await;
        assert_eq!(c["failureReason"], reason, "{c}");
    }
    // The confirmations may pass now: they find the consultations failed.
    let_confirmations_pass(&db).await;
    for id in [of_patient, of_physician] {
        let released = slot_released(&db, id).await;
        assert!(released, "{id}'s slot is free again");
        assert_eq!(system.consultation(id).await["status"], "failed");
        assert!(
            !db.stream_events(id)
                .await
                .contains(&"ConsultationScheduled".to_owned())
        );
    }
    system.stop().await;
}
