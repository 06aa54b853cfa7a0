//! The command pipeline, given events, when a command runs, then these events or this error:
//! over a store in memory, with the same rules as PostgreSQL's (versions, claims, keys,
//! deadlines).

use chrono::{NaiveDate, TimeDelta, Utc};
use commands::testing::{TENANT, given, meta};
use commands::{CommandError, CommandMeta, Idempotency, Outcome, Remembered, Target};
use domain::consultation::{Consultation, ConsultationCommand};
use domain::event::{
    ConsultationScheduled, ConsultationSchedulingFailed, ConsultationSchedulingStarted,
    FailureReason, PatientDeactivated, PatientRegistered, PatientUpdated,
};
use domain::ids::{ConsultationId, PatientId, PhysicianId};
use domain::patient::{Patient, PatientCommand};
use domain::values::{BirthDate, DocumentNumber, PersonName};
use domain::{DomainError, Event};
use eventstore::{DeadlineState, Store, StreamVersion};

fn registered(id: PatientId, document: &str) -> Event {
    Event::PatientRegistered(PatientRegistered {
        patient_id: id,
        name: Some("Ana Lima".into()),
        birth_date: NaiveDate::from_ymd_opt(1990, 1, 2),
        document_number: Some(document.into()),
        email: None,
        phone: None,
    })
}

fn register(id: PatientId, document: &str) -> PatientCommand {
    PatientCommand::Register {
        id,
        name: PersonName::parse("Ana Lima").expect("a name"),
        birth_date: BirthDate::parse(
            NaiveDate::from_ymd_opt(1990, 1, 2).expect("a date"),
            Utc::now().date_naive(),
        )
        .expect("a birth date"),
        document_number: DocumentNumber::parse(document).expect("a document number"),
        email: None,
        phone: None,
    }
}

fn rename(name: &str) -> PatientCommand {
    PatientCommand::Update {
        name: Some(PersonName::parse(name).expect("a name")),
        email: None,
        phone: None,
    }
}

fn renamed(id: PatientId, name: &str) -> Event {
    Event::PatientUpdated(PatientUpdated {
        patient_id: id,
        name: Some(name.into()),
        email: None,
        phone: None,
    })
}

fn with_key(key: &str, request: &str) -> CommandMeta {
    CommandMeta {
        idempotency: Some(Idempotency {
            key: key.into(),
            request_hash: request.into(),
            check_first: true,
        }),
        ..meta()
    }
}

#[tokio::test]
async fn a_command_on_a_new_stream_appends_its_events() {
    let id = PatientId::new();
    given()
        .when_command::<Patient>(meta(), Target::New(id.as_uuid()), register(id, "DOC-1"))
        .await
        .then_events([registered(id, "DOC-1")])
        .then_ok(|outcome| {
            matches!(outcome, Outcome::Done(done) if done.version == StreamVersion::new(1) && done.appended == 1)
        });
}

#[tokio::test]
async fn each_event_is_stored_at_the_version_of_its_type() {
    // Given a registered patient (a personal type, sealed at rest from version 2)
    let id = PatientId::new();
    let deactivate = PatientCommand::Deactivate { reason: None };
    let then = given()
        .events::<Patient>(id.as_uuid(), [registered(id, "DOC-1")])
        // When they are deactivated (a type with nothing personal)
        .when_command::<Patient>(meta(), Target::Existing(id.as_uuid()), deactivate)
        .await;
    // Then each event records its own type's version
    let versions: Vec<(String, i32)> = then
        .store()
        .events()
        .into_iter()
        .map(|e| (e.event_type, e.schema_version))
        .collect();
    assert_eq!(
        versions,
        [
            ("PatientRegistered".to_owned(), 2),
            ("PatientDeactivated".to_owned(), 1)
        ]
    );
}

#[tokio::test]
async fn a_command_that_changes_nothing_appends_nothing() {
    let id = PatientId::new();
    given()
        .events::<Patient>(id.as_uuid(), [registered(id, "DOC-1")])
        .when_command::<Patient>(meta(), Target::Existing(id.as_uuid()), rename("Ana Lima"))
        .await
        .then_no_events()
        .then_ok(|outcome| matches!(outcome, Outcome::Done(done) if done.appended == 0));
}

#[tokio::test]
async fn a_rule_that_refuses_is_the_error_and_appends_nothing() {
    let id = PatientId::new();
    let deactivated = Event::PatientDeactivated(PatientDeactivated {
        patient_id: id,
        reason: None,
    });
    given()
        .events::<Patient>(id.as_uuid(), [registered(id, "DOC-1"), deactivated])
        .when_command::<Patient>(meta(), Target::Existing(id.as_uuid()), rename("Bia Lima"))
        .await
        .then_no_events()
        .then_error(|e| matches!(e, CommandError::Rejected(DomainError::Deactivated(_))));
}

#[tokio::test]
async fn another_tenants_aggregate_is_not_found_and_untouched() {
    let id = PatientId::new();
    given()
        .events_in::<Patient>("tenant-b", id.as_uuid(), [registered(id, "DOC-1")])
        .when_command::<Patient>(meta(), Target::Existing(id.as_uuid()), rename("Bia Lima"))
        .await
        .then_no_events()
        .then_error(|e| matches!(e, CommandError::Rejected(DomainError::NotFound(_))));
}

#[tokio::test]
async fn a_value_claimed_by_another_aggregate_is_taken() {
    let (first, second) = (PatientId::new(), PatientId::new());
    given()
        .events::<Patient>(first.as_uuid(), [registered(first, "DOC-1")])
        .when_command::<Patient>(meta(), Target::New(second.as_uuid()), register(second, "DOC-1"))
        .await
        .then_no_events()
        .then_error(|e| matches!(e, CommandError::ClaimTaken { kind, .. } if kind == "patient.documentNumber"));
}

#[tokio::test]
async fn an_expected_version_that_is_not_the_current_one_fails_the_precondition() {
    let id = PatientId::new();
    let meta = CommandMeta {
        expected: Some(StreamVersion::new(1)),
        ..meta()
    };
    given()
        .events::<Patient>(id.as_uuid(), [registered(id, "DOC-1"), renamed(id, "Bia Lima")])
        .when_command::<Patient>(meta, Target::Existing(id.as_uuid()), rename("Cris Lima"))
        .await
        .then_no_events()
        .then_error(|e| {
            matches!(e, CommandError::PreconditionFailed { current, .. } if *current == StreamVersion::new(2))
        });
}

#[tokio::test]
async fn a_command_decided_on_a_stale_cache_entry_conflicts_and_is_decided_again() {
    let id = PatientId::new();
    let given = given();
    // The pipeline caches the registration; another writer then appends behind its back.
    let registering = given
        .pipeline()
        .execute::<Patient>(&meta(), Target::New(id.as_uuid()), register(id, "DOC-1"))
        .await;
    assert!(registering.is_ok(), "{registering:?}");
    let given = given.events::<Patient>(id.as_uuid(), [renamed(id, "Bia Lima")]);
    given
        .when_command::<Patient>(meta(), Target::Existing(id.as_uuid()), rename("Cris Lima"))
        .await
        .then_events([renamed(id, "Cris Lima")])
        .then_ok(|outcome| {
            matches!(outcome, Outcome::Done(done) if done.version == StreamVersion::new(3))
        });
}

#[tokio::test]
async fn a_repeated_key_replays_the_first_outcome_and_appends_once() {
    let id = PatientId::new();
    let then = given()
        .when(|pipeline| async move {
            let meta = with_key("key-1", "register DOC-1");
            let target = Target::New(id.as_uuid());
            let first = pipeline
                .execute::<Patient>(&meta, target, register(id, "DOC-1"))
                .await;
            // The repeat would now be refused (the document number is taken): it replays.
            let again = pipeline
                .execute::<Patient>(&meta, target, register(id, "DOC-1"))
                .await;
            (first, again)
        })
        .await
        .then_events([registered(id, "DOC-1")]);
    let (first, again) = &then.result;
    let Ok(Outcome::Done(done)) = first else {
        panic!("the first request is carried out: {first:?}");
    };
    let remembered = Remembered {
        id: id.as_uuid(),
        version: StreamVersion::new(1),
        position: done.position,
        changed: true,
    };
    assert!(done.position.is_some());
    assert!(
        matches!(again, Ok(Outcome::Replayed(r)) if *r == remembered),
        "{again:?}"
    );
}

#[tokio::test]
async fn a_key_used_with_another_request_is_refused() {
    let id = PatientId::new();
    given()
        .when(|pipeline| async move {
            let target = Target::New(id.as_uuid());
            let first = with_key("key-1", "register DOC-1");
            let _ = pipeline
                .execute::<Patient>(&first, target, register(id, "DOC-1"))
                .await;
            let other = with_key("key-1", "register DOC-2");
            pipeline
                .execute::<Patient>(&other, target, register(id, "DOC-2"))
                .await
        })
        .await
        .then_events([registered(id, "DOC-1")])
        .then_error(|e| matches!(e, CommandError::KeyReused));
}

fn requested(id: ConsultationId) -> Event {
    let starts_at = Utc::now() + TimeDelta::days(3);
    Event::ConsultationSchedulingStarted(ConsultationSchedulingStarted {
        consultation_id: id,
        patient_id: PatientId::new(),
        physician_id: PhysicianId::new(),
        starts_at,
        ends_at: starts_at + TimeDelta::minutes(30),
        reason: None,
    })
}

#[tokio::test]
async fn scheduling_pauses_the_deadline_its_request_started() {
    let id = ConsultationId::new();
    let given = given().events::<Consultation>(id.as_uuid(), [requested(id)]);
    let Some(Event::ConsultationSchedulingStarted(started)) =
        given.store().events().first().map(|recorded| {
            let events = domain::versions::decode(
                &recorded.event_type,
                recorded.schema_version,
                recorded.payload.get(),
            );
            events.expect("an event").remove(0)
        })
    else {
        panic!("the request is stored");
    };
    given
        .when_command::<Consultation>(
            meta(),
            Target::Existing(id.as_uuid()),
            ConsultationCommand::ConfirmScheduling,
        )
        .await
        .then_events([Event::ConsultationScheduled(ConsultationScheduled {
            consultation_id: id,
            patient_id: started.patient_id,
            physician_id: started.physician_id,
            starts_at: started.starts_at,
            ends_at: started.ends_at,
        })])
        .then_deadline(id.as_uuid(), DeadlineState::Paused);
}

#[tokio::test]
async fn a_confirmation_after_its_deadline_fired_is_too_late_and_appends_nothing() {
    let id = ConsultationId::new();
    let given = given().events::<Consultation>(id.as_uuid(), [requested(id)]);
    // The deadline fired in a race the confirmation lost: it no longer runs.
    let retired = given.store().retire_deadline(id.as_uuid()).await;
    assert!(retired.is_ok());
    given
        .when_command::<Consultation>(
            meta(),
            Target::Existing(id.as_uuid()),
            ConsultationCommand::ConfirmScheduling,
        )
        .await
        .then_no_events()
        .then_error(|e| matches!(e, CommandError::DeadlineNotRunning))
        .then_deadline(id.as_uuid(), DeadlineState::Fired);
}

#[tokio::test]
async fn a_failure_that_fires_the_deadline_appends_with_it_once() {
    let id = ConsultationId::new();
    let fires = CommandMeta {
        fires: Some(id.as_uuid()),
        ..CommandMeta::new(TENANT, "timer")
    };
    let fail = ConsultationCommand::FailScheduling {
        reason: FailureReason::TimedOut,
        detail: "too late".into(),
    };
    given()
        .events::<Consultation>(id.as_uuid(), [requested(id)])
        .when_command::<Consultation>(fires, Target::Existing(id.as_uuid()), fail)
        .await
        .then_events([Event::ConsultationSchedulingFailed(
            ConsultationSchedulingFailed {
                consultation_id: id,
                reason: FailureReason::TimedOut,
                detail: "too late".into(),
            },
        )])
        .then_deadline(id.as_uuid(), DeadlineState::Fired);
}
