//! Property: whatever commands were accepted, folding the stream's events from the start gives
//! the same state as the one built up while deciding; and a refused command emits nothing.

use chrono::NaiveDate;
use domain::Aggregate;
use domain::consultation::{Consultation, ConsultationCommand};
use domain::event::FailureReason;
use domain::ids::{ConsultationId, PatientId, PhysicianId};
use domain::patient::{Patient, PatientCommand};
use domain::values::{
    BirthDate, DocumentNumber, DurationMinutes, Email, Notes, PersonName, Phone, Reason, StartsAt,
};
use proptest::prelude::*;

fn patient_command() -> impl Strategy<Value = PatientCommand> {
    let today = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
    let name = prop_oneof![Just("Ana"), Just("Bia"), Just("Carla")];
    prop_oneof![
        name.clone().prop_map(move |n| PatientCommand::Register {
            id: PatientId::new(),
            name: PersonName::parse(n).unwrap(),
            birth_date: BirthDate::parse(NaiveDate::from_ymd_opt(1990, 1, 1).unwrap(), today)
                .unwrap(),
            document_number: DocumentNumber::parse("123").unwrap(),
            email: None,
            phone: None,
        }),
        (
            proptest::option::of(name),
            proptest::option::of(Just("a@example.org")),
            proptest::option::of(Just("+55 11 91234-5678")),
        )
            .prop_map(|(n, e, p)| PatientCommand::Update {
                name: n.map(|n| PersonName::parse(n).unwrap()),
                email: e.map(|e| Email::parse(e).unwrap()),
                phone: p.map(|p| Phone::parse(p).unwrap()),
            }),
        Just(PatientCommand::Deactivate { reason: None }),
        Just(PatientCommand::ValidateForConsultation {
            consultation_id: ConsultationId::new()
        }),
    ]
}

fn consultation_command() -> impl Strategy<Value = ConsultationCommand> {
    let now = chrono::Utc::now();
    prop_oneof![
        Just(ConsultationCommand::Request {
            id: ConsultationId::new(),
            patient_id: PatientId::new(),
            patient_exists: true,
            physician_id: PhysicianId::new(),
            physician_exists: true,
            starts_at: StartsAt::parse(now + chrono::Duration::days(1), now).unwrap(),
            duration: DurationMinutes::DEFAULT,
            reason: None,
        }),
        Just(ConsultationCommand::ConfirmScheduling),
        Just(ConsultationCommand::FailScheduling {
            reason: FailureReason::TimedOut,
            detail: "late".into()
        }),
        prop_oneof![Just("x"), Just("y")].prop_map(|n| ConsultationCommand::Update {
            reason: None,
            notes: Some(Notes::parse(n).unwrap()),
        }),
        Just(ConsultationCommand::Cancel {
            reason: Reason::parse("ill").unwrap()
        }),
        Just(ConsultationCommand::ConfirmCancellation),
        Just(ConsultationCommand::Complete),
    ]
}

/// Runs the commands, keeping the accepted events; checks the replay property on the way.
fn check<A: Aggregate + PartialEq + std::fmt::Debug>(commands: Vec<A::Command>) {
    let mut state = A::default();
    let mut history = vec![];
    for command in commands {
        if let Ok(events) = state.decide(command) {
            state = events.iter().fold(state, |s, e| s.evolve(e));
            history.extend(events);
        }
        assert_eq!(A::replay(&history), state);
    }
}

proptest! {
    #[test]
    fn replaying_a_patient_stream_rebuilds_the_same_state(
        commands in proptest::collection::vec(patient_command(), 0..30)
    ) {
        check::<Patient>(commands);
    }

    #[test]
    fn replaying_a_consultation_stream_rebuilds_the_same_state(
        commands in proptest::collection::vec(consultation_command(), 0..30)
    ) {
        check::<Consultation>(commands);
    }

    #[test]
    fn events_survive_the_trip_through_type_name_and_payload(
        commands in proptest::collection::vec(patient_command(), 0..30)
    ) {
        let mut state = Patient::default();
        for command in commands {
            for event in state.decide(command).unwrap_or_default() {
                let (event_type, payload) = event.into_parts();
                let read = domain::versions::decode(event_type, domain::personal::schema_version(event_type), &payload.to_string()).unwrap();
                prop_assert_eq!(read.as_slice(), std::slice::from_ref(&event));
                state = state.evolve(&event);
            }
        }
    }
}
