//! The sagas as a clinic meets them: consultations scheduled, refused, timed out and
//! cancelled through the API alone, with every process the sagas need running for real
//! against PostgreSQL and RabbitMQ.

use std::time::Duration;

use chrono::{DateTime, Duration as Span, Utc};
use hap_tests::system::{Parts, System};
use hap_tests::{TestDb, eventually};
use serde_json::{Value, json};
use uuid::Uuid;

/// A deadline long enough never to fire in a test that is not about deadlines.
const NEVER: Duration = Duration::from_secs(600);

/// Tomorrow at `hour`:`minute` UTC: a slot no other test of the same system takes.
fn tomorrow_at(hour: u32, minute: u32) -> DateTime<Utc> {
    (Utc::now() + Span::days(1))
        .date_naive()
        .and_hms_opt(hour, minute, 0)
        .expect("a valid time")
        .and_utc()
}

/// Requests consultation `n` of a burst in the `n`th half hour from 04:00 tomorrow: a slot of
/// its own for each.
async fn request_in_slot(system: &System, patient: Uuid, physician: Uuid, n: u32) -> Uuid {
    let at = tomorrow_at(4 + n / 2, (n % 2) * 30);
    system
        .app
        .request_consultation_at(patient, physician, at)
        .await
}

/// A database of the test's own and every process of the system over it, deadlines never
/// firing. Keep the database as long as the system: dropping it drops the database.
async fn start() -> (TestDb, System) {
    let db = TestDb::new().await;
    let system = System::start(&db, NEVER, Parts::ALL).await;
    (db, system)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consultation_is_scheduled_through_the_api_alone() {
    let (db, system) = start().await;
    let (patient, physician) = system.app.register_patient_and_physician().await;
    let at = tomorrow_at(9, 0);

    let id = scheduled(&system, patient, physician, at).await;

    let consultation = system.consultation(id).await;
    assert_eq!(consultation["failureReason"], Value::Null, "{consultation}");
    let agenda: Value = system
        .app
        .get_json(&format!(
            "/physicians/{physician}/agenda?date={}",
            at.date_naive()
        ))
        .await;
    assert_eq!(
        agenda["consultations"][0]["status"], "scheduled",
        "{agenda}"
    );
    // Both sides answered the request itself, side by side; the confirmation was caused by
    // whichever answer came second (or by either, when both steps found both). Every event
    // carries the request's correlation id.
    let trail: Vec<(String, String, Option<Uuid>, Uuid)> = sqlx::query_as(
        "select event_type, correlation_id, causation_id, event_id from events
          where event_type in ('ConsultationSchedulingStarted', 'PatientValidatedForConsultation',
                               'PhysicianAvailabilityConfirmed', 'ConsultationScheduled')
          order by position",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let of = |event_type: &str| {
        trail
            .iter()
            .find(|t| t.0 == event_type)
            .unwrap_or_else(|| panic!("{event_type} in {trail:?}"))
    };
    let started = of("ConsultationSchedulingStarted");
    let answers = [
        of("PatientValidatedForConsultation"),
        of("PhysicianAvailabilityConfirmed"),
    ];
    for answer in answers {
        assert_eq!(answer.2, Some(started.3), "the request caused {}", answer.0);
    }
    let scheduled = of("ConsultationScheduled");
    assert!(
        answers.iter().any(|a| scheduled.2 == Some(a.3)),
        "an answer caused the confirmation: {trail:?}"
    );
    assert_eq!(trail.len(), 4, "{trail:?}");
    assert!(
        trail.iter().all(|t| t.1 == started.1),
        "the correlation id is carried on"
    );
    let deadline: String = sqlx::query_scalar("select state from deadlines where id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(deadline, "paused", "confirming paused the deadline");
    let metrics = system.app.get_text("/metrics").await;
    for expected in [
        "hap_saga_outcomes_total{saga=\"scheduling\",outcome=\"scheduled\"} 1",
        "hap_deadlines_total{transition=\"paused\"} 1",
        "hap_saga_step_seconds_bucket{service=\"physician-service\",step=\"hold_slot\"",
        "hap_saga_steps_total{service=\"patient-service\",step=\"validate_patient\",outcome=\"done\"} 1",
    ] {
        assert!(metrics.contains(expected), "{expected} in /metrics");
    }
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inactive_patient_or_physician_fails_the_consultation_with_its_reason() {
    let (db, system) = start().await;
    let ([patient, inactive_patient], [physician, inactive_physician]) =
        system.app.register_two_of_each().await;
    for path in [
        format!("/patients/{inactive_patient}/deactivate"),
        format!("/physicians/{inactive_physician}/deactivate"),
    ] {
        system.app.post_expecting(&path, json!({}), 200).await;
    }

    let by_patient = system
        .app
        .request_consultation_at(inactive_patient, physician, tomorrow_at(9, 0))
        .await;
    let by_physician = system
        .app
        .request_consultation_at(patient, inactive_physician, tomorrow_at(9, 0))
        .await;

    let failed = system.settled(by_patient).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["failureReason"], "patient_invalid");
    let failed = system.settled(by_physician).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["failureReason"], "physician_unavailable");
    // Nothing was held for the inactive physician. For the inactive patient the hold ran beside
    // the validation, so it may have held the physician's 09:00: then it is given back.
    let day =
        domain::schedule::DaySchedule::stream_id(physician.into(), tomorrow_at(9, 0).date_naive());
    let free = eventually(Duration::from_secs(20), || async {
        let held = db.stream_events(day).await;
        let count = |t: &str| held.iter().filter(|e| *e == t).count();
        count("PhysicianAvailabilityConfirmed") == count("PhysicianSlotReleased")
    })
    .await;
    assert!(free, "the physician's 09:00 is free again");
    let again = system
        .app
        .request_consultation_at(patient, physician, tomorrow_at(9, 0))
        .await;
    assert_eq!(system.settled(again).await["status"], "scheduled");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_slot_requested_twenty_times_at_once_is_scheduled_once() {
    let (_db, system) = start().await;
    let physician = system.app.register_physician("CRM-1").await;
    let mut patients = Vec::new();
    for n in 0..20 {
        patients.push(system.app.register_patient(&format!("DOC-{n}")).await);
    }
    let at = tomorrow_at(10, 0);

    let requests = patients
        .iter()
        .map(|p| system.app.request_consultation_at(*p, physician, at));
    let ids = futures::future::join_all(requests).await;

    let mut statuses = std::collections::HashMap::<String, usize>::new();
    for id in ids {
        let c = system.settled(id).await;
        let key = format!("{} {}", c["status"], c["failureReason"]);
        *statuses.entry(key).or_default() += 1;
    }
    assert_eq!(statuses.get("\"scheduled\" null"), Some(&1), "{statuses:?}");
    assert_eq!(
        statuses.get("\"failed\" \"physician_unavailable\""),
        Some(&19),
        "{statuses:?}"
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_fires_with_no_saga_process_and_a_later_saga_neither_schedules_nor_holds() {
    let db = TestDb::new().await;
    let timeout = Duration::from_millis(300);
    let system = System::start(
        &db,
        timeout,
        Parts {
            sagas: false,
            timer: true,
        },
    )
    .await;
    let (patient, physician) = system.app.register_patient_and_physician().await;
    let at = tomorrow_at(11, 0);

    let id = system
        .app
        .request_consultation_at(patient, physician, at)
        .await;
    let failed = system
        .wait_for_status(id, "failed", Duration::from_secs(20))
        .await;
    assert_eq!(failed["failureReason"], "timed_out", "{failed}");
    let metrics = system.app.get_text("/metrics").await;
    assert!(
        metrics.contains("hap_deadlines_total{transition=\"fired\"} 1"),
        "{metrics}"
    );

    // The saga process comes up late and works through the messages waiting for it.
    system.start_sagas();
    let drained = eventually(Duration::from_secs(20), || async {
        domain::service::Service::ALL.iter().all(|service| {
            let queue = messaging::QueueNames::shared(&system.prefix, service.name());
            hap_tests::broker::queue_counts(&queue.main) == (0, 0)
        })
    })
    .await;
    assert!(drained, "the saga queues were worked through");
    assert_eq!(system.consultation(id).await["status"], "failed");
    assert_eq!(db.events_of_type("ConsultationScheduled").await, 0);
    let day = domain::schedule::DaySchedule::stream_id(physician.into(), at.date_naive());
    let held = db.stream_events(day).await;
    assert!(
        held.iter().all(|e| e != "PhysicianAvailabilityConfirmed")
            || held.iter().any(|e| e == "PhysicianSlotReleased"),
        "the timed-out consultation keeps no slot: {held:?}"
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_fire_race_and_never_both_schedule_and_time_out() {
    let db = TestDb::new().await;
    // How long the saga's hops take here, measured on a system whose deadline never fires...
    let calm = System::start(&db, NEVER, Parts::ALL).await;
    let (patient, physician) = calm.app.register_patient_and_physician().await;
    let mut latencies = Vec::new();
    for n in 0..3 {
        let started = std::time::Instant::now();
        scheduled(&calm, patient, physician, tomorrow_at(20 + n, 0)).await;
        latencies.push(started.elapsed());
    }
    calm.stop().await;
    latencies.sort();
    // ... then a deadline about that long, so that pause and fire meet.
    let timeout = latencies[2];
    let system = System::start(&db, timeout, Parts::ALL).await;

    let mut ids = Vec::new();
    for n in 0..30 {
        // Each on its own slot: only the deadline can fail them.
        ids.push(request_in_slot(&system, patient, physician, n).await);
    }
    let mut outcomes = std::collections::HashMap::<String, usize>::new();
    for id in &ids {
        let c = system.settled(*id).await;
        *outcomes
            .entry(c["status"].as_str().unwrap().to_owned())
            .or_default() += 1;
        let events = db.stream_events(*id).await;
        let scheduled = events.iter().any(|e| e == "ConsultationScheduled");
        let failed = events.iter().any(|e| e == "ConsultationSchedulingFailed");
        assert!(!(scheduled && failed), "{id}: {events:?}");
        assert!(scheduled || failed, "{id} settled: {events:?}");
    }
    eprintln!("deadline {timeout:?}, outcomes: {outcomes:?}");
    // Every slot of a timed-out consultation is free again (released when the hold came
    // after the failure, or never taken).
    let free = eventually(Duration::from_secs(20), || async {
        let holds: Vec<(Uuid, String)> = sqlx::query_as(
            "select (payload ->> 'consultationId')::uuid, event_type from events
              where event_type in ('PhysicianAvailabilityConfirmed', 'PhysicianSlotReleased')
              order by position",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        let mut held = std::collections::HashSet::new();
        for (consultation, event_type) in holds {
            if event_type == "PhysicianAvailabilityConfirmed" {
                held.insert(consultation);
            } else {
                held.remove(&consultation);
            }
        }
        let scheduled: std::collections::HashSet<Uuid> = sqlx::query_scalar(
            "select stream_id from events where event_type = 'ConsultationScheduled'",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
        held == scheduled
    })
    .await;
    assert!(free, "every slot held belongs to a scheduled consultation");
    system.stop().await;
}

/// Schedules a consultation and waits until it is.
async fn scheduled(system: &System, patient: Uuid, physician: Uuid, at: DateTime<Utc>) -> Uuid {
    let id = system
        .app
        .request_consultation_at(patient, physician, at)
        .await;
    let c = system.settled(id).await;
    assert_eq!(c["status"], "scheduled", "{c}");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_voids_the_records_and_frees_the_slot() {
    let (db, system) = start().await;
    let (patient, physician) = system.app.register_patient_and_physician().await;
    let with_records = scheduled(&system, patient, physician, tomorrow_at(9, 0)).await;
    let without = scheduled(&system, patient, physician, tomorrow_at(10, 0)).await;
    let record = system
        .app
        .write_record(with_records, "allergic to penicillin")
        .await;

    for id in [with_records, without] {
        let path = format!("/consultations/{id}/cancel");
        let body = json!({"reason": "travel"});
        system.app.post_expecting(&path, body, 202).await;
    }
    for id in [with_records, without] {
        let c = system
            .wait_for_status(id, "cancelled", Duration::from_secs(30))
            .await;
        assert_eq!(c["status"], "cancelled", "{c}");
        assert_eq!(c["cancellationReason"], "travel");
    }
    let voided = eventually(Duration::from_secs(10), || async {
        let r: Value = system.app.get_json(&format!("/records/{record}")).await;
        r["status"] == "voided"
    })
    .await;
    assert!(voided, "the record is voided");
    assert_eq!(db.events_of_type("ConsultationRecordsVoided").await, 2);
    // Both slots are free again.
    let released = eventually(Duration::from_secs(10), || async {
        db.events_of_type("PhysicianSlotReleased").await == 2
    })
    .await;
    assert!(released);
    scheduled(&system, patient, physician, tomorrow_at(9, 0)).await;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivating_a_physician_or_a_patient_cancels_their_future_consultations() {
    let (_db, system) = start().await;
    let ([patient, other_patient], [physician, other_physician]) =
        system.app.register_two_of_each().await;
    let mut of_physician = Vec::new();
    for hour in [8, 9, 10] {
        of_physician.push(scheduled(&system, other_patient, physician, tomorrow_at(hour, 0)).await);
    }
    let of_patient = scheduled(&system, patient, other_physician, tomorrow_at(12, 0)).await;
    let untouched = scheduled(&system, other_patient, other_physician, tomorrow_at(13, 0)).await;

    let retired = json!({"reason": "retired"});
    for (path, body) in [
        (format!("/physicians/{physician}/deactivate"), retired),
        (format!("/patients/{patient}/deactivate"), json!({})),
    ] {
        system.app.post_expecting(&path, body, 200).await;
    }

    for id in of_physician.iter().chain([&of_patient]) {
        let c = system
            .wait_for_status(*id, "cancelled", Duration::from_secs(30))
            .await;
        assert_eq!(c["status"], "cancelled", "{c}");
    }
    assert_eq!(system.consultation(untouched).await["status"], "scheduled");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduling_runs_in_the_process_that_appended_it_and_the_brokers_copies_change_nothing() {
    let (db, system) = start().await;
    let (patient, physician) = system.app.register_patient_and_physician().await;
    // No copy of anything reaches the broker from here on: every step below is taken from
    // the local feed.
    system.publisher.cancel();

    let id = scheduled(&system, patient, physician, tomorrow_at(9, 0)).await;
    let events: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&db.pool)
        .await
        .unwrap();

    // The copies now go out; each comes back to the process that ran its step, which
    // acknowledges it without running the step again.
    let publisher = hap_tests::start_publisher_on(db.plain_store(), &system.prefix);
    let delivered = hap_tests::eventually(Duration::from_secs(20), || async {
        // Published first: an empty queue before that says nothing.
        published_all(&db).await
            && domain::service::Service::ALL.iter().all(|service| {
                let queue = messaging::QueueNames::shared(&system.prefix, service.name()).main;
                hap_tests::broker::queue_counts(&queue) == (0, 0)
            })
    })
    .await;
    assert!(delivered, "the copies were published and taken");
    // Taken, and handled: a queue's counts may lag its consumer by a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(after, events, "no copy appended anything");
    assert_eq!(system.consultation(id).await["status"], "scheduled");
    let metrics = system.app.get_text("/metrics").await;
    for step in [
        "service=\"patient-service\",step=\"validate_patient\",outcome=\"done\"} 1\n",
        "service=\"physician-service\",step=\"hold_slot\",outcome=\"done\"} 1\n",
    ] {
        assert!(metrics.contains(step), "each step ran once: {step}");
    }
    publisher.cancel();
    system.stop().await;
}

/// Whether the publisher has published every stored event (the test's system is the only
/// publisher on its database).
async fn published_all(db: &TestDb) -> bool {
    let (checkpoint, last): (Option<i64>, Option<i64>) = sqlx::query_as(
        "select (select max(position) from publisher_checkpoints),
                (select max(position) from events)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    checkpoint.is_some() && checkpoint == last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_message_published_twice_by_hand_has_no_second_effect() {
    use lapin::BasicProperties;
    let (db, system) = start().await;
    let (patient, physician) = system.app.register_patient_and_physician().await;
    let id = scheduled(&system, patient, physician, tomorrow_at(9, 0)).await;
    let before: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&db.pool)
        .await
        .unwrap();

    // Both answers, each of which runs the confirmation, exactly as the publisher sent them,
    // twice more; and the request, which would otherwise validate the patient and hold the
    // slot again.
    let store = db.plain_store();
    for (event_type, service) in [
        ("PhysicianAvailabilityConfirmed", "scheduling-service"),
        ("PatientValidatedForConsultation", "scheduling-service"),
        ("ConsultationSchedulingStarted", "patient-service"),
        ("ConsultationSchedulingStarted", "physician-service"),
    ] {
        let (stream, version): (Uuid, i64) =
            sqlx::query_as("select stream_id, version from events where event_type = $1")
                .bind(event_type)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        let recorded = store
            .read_stream(stream, eventstore::StreamVersion::new(version as u64 - 1))
            .await
            .unwrap()
            .remove(0);
        let route = messaging::routes::route(&recorded).expect("a route");
        let message = messaging::Outgoing::new(&recorded, &route, String::new());
        let queue = messaging::QueueNames::shared(&system.prefix, service).main;
        for _ in 0..2 {
            hap_tests::broker::publish_to_queue(
                &queue,
                &message.body,
                BasicProperties::default()
                    .with_headers(message.properties.headers().clone().unwrap_or_default()),
            )
            .await;
        }
    }
    // Give the steps time to run (they find their keys used and append nothing).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(after, before, "no event was appended twice");
    assert_eq!(system.consultation(id).await["status"], "scheduled");
    for service in domain::service::Service::ALL {
        let dlq = messaging::QueueNames::shared(&system.prefix, service.name());
        assert_eq!(
            hap_tests::broker::queue_counts(&dlq.dead_letters).0,
            0,
            "nothing dead-lettered"
        );
    }
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_saga_processes_one_killed_mid_flight_settle_every_consultation_once() {
    use hap_tests::process::spawn_hap;
    let db = TestDb::new().await;
    let system = System::start(
        &db,
        NEVER,
        Parts {
            sagas: false,
            timer: true,
        },
    )
    .await;
    let mut first = spawn_hap(&db, &system.prefix, "saga", "saga-a");
    let mut second = spawn_hap(&db, &system.prefix, "saga", "saga-b");
    for service in domain::service::Service::ALL {
        hap_tests::broker::wait_for_queue(
            &messaging::QueueNames::shared(&system.prefix, service.name()).main,
        )
        .await;
    }
    let (patient, physician) = system.app.register_patient_and_physician().await;

    let mut ids = Vec::new();
    for n in 0..30 {
        ids.push(request_in_slot(&system, patient, physician, n).await);
        if n == 10 {
            first.start_kill().expect("killed");
            first.wait().await.ok();
        }
        if n == 20 {
            first = spawn_hap(&db, &system.prefix, "saga", "saga-a");
        }
    }

    for id in &ids {
        let c = system.settled(*id).await;
        assert_eq!(c["status"], "scheduled", "{c}");
    }
    let per_consultation: Vec<(String, i64)> = sqlx::query_as(
        "select event_type, count(*) from events
          where event_type in ('ConsultationScheduled', 'PhysicianAvailabilityConfirmed',
                               'PatientValidatedForConsultation')
          group by event_type, payload ->> 'consultationId'
         having count(*) > 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        per_consultation.is_empty(),
        "nothing happened twice: {per_consultation:?}"
    );
    for service in domain::service::Service::ALL {
        let names = messaging::QueueNames::shared(&system.prefix, service.name());
        assert_eq!(hap_tests::broker::queue_counts(&names.dead_letters).0, 0);
    }
    first.start_kill().ok();
    second.start_kill().ok();
    system.stop().await;
}
