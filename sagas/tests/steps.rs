//! Every saga step and the timer's firing, given events, when the step runs, then these
//! events: over a store in memory, no services.

use chrono::{DateTime, TimeDelta, Utc};
use commands::testing::{DEADLINE, Given, TENANT, Then, given};
use commands::{CommandError, Pipeline};
use domain::Event;
use domain::consultation::Consultation;
use domain::event::{
    ConsultationCancellationRequested, ConsultationCancelled, ConsultationRecordsVoided,
    ConsultationScheduled, ConsultationSchedulingFailed, ConsultationSchedulingStarted,
    FailureReason, PatientDeactivated, PatientRegistered, PatientValidatedForConsultation,
    PatientValidationFailed, PhysicianAvailabilityConfirmed, PhysicianRegistered,
    PhysicianSlotReleased,
};
use domain::ids::{ConsultationId, PatientId, PhysicianId};
use domain::patient::Patient;
use domain::physician::Physician;
use domain::saga::{Person, Step};
use domain::schedule::DaySchedule;
use eventstore::{DeadlineState, MemoryStore};
use sagas::Timer;
use sagas::send::{StepError, Trigger};
use sagas::steps::Steps;
use uuid::Uuid;

/// A consultation between a registered patient and physician, and the events that tell it.
struct Booking {
    consultation: ConsultationId,
    patient: PatientId,
    physician: PhysicianId,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
}

impl Booking {
    fn new() -> Self {
        // Whole seconds: events keep what their JSON keeps.
        let starts_at =
            DateTime::from_timestamp(Utc::now().timestamp(), 0).expect("now") + TimeDelta::days(3);
        Self {
            consultation: ConsultationId::new(),
            patient: PatientId::new(),
            physician: PhysicianId::new(),
            starts_at,
            ends_at: starts_at + TimeDelta::minutes(30),
        }
    }

    fn stream(&self) -> Uuid {
        self.consultation.as_uuid()
    }

    fn day(&self) -> Uuid {
        DaySchedule::stream_id(self.physician, self.starts_at.date_naive())
    }

    /// The patient and the physician registered, and the consultation requested (which starts
    /// its deadline).
    fn requested(&self) -> Given {
        let patient = Event::PatientRegistered(PatientRegistered {
            patient_id: self.patient,
            name: "Ana Lima".into(),
            birth_date: chrono::NaiveDate::from_ymd_opt(1990, 1, 2).expect("a date"),
            document_number: format!("DOC-{}", self.patient),
            email: None,
            phone: None,
        });
        let physician = Event::PhysicianRegistered(PhysicianRegistered {
            physician_id: self.physician,
            name: "Rui Carvalho".into(),
            specialty: "cardiology".into(),
            license_number: format!("CRM-{}", self.physician),
        });
        let request = Event::ConsultationSchedulingStarted(ConsultationSchedulingStarted {
            consultation_id: self.consultation,
            patient_id: self.patient,
            physician_id: self.physician,
            starts_at: self.starts_at,
            ends_at: self.ends_at,
            reason: None,
        });
        given()
            .events::<Patient>(self.patient.as_uuid(), [patient])
            .events::<Physician>(self.physician.as_uuid(), [physician])
            .events::<Consultation>(self.stream(), [request])
    }

    fn held(&self) -> Event {
        Event::PhysicianAvailabilityConfirmed(PhysicianAvailabilityConfirmed {
            physician_id: self.physician,
            consultation_id: self.consultation,
            starts_at: self.starts_at,
            ends_at: self.ends_at,
        })
    }

    fn released(&self) -> Event {
        Event::PhysicianSlotReleased(PhysicianSlotReleased {
            physician_id: self.physician,
            consultation_id: self.consultation,
            starts_at: self.starts_at,
        })
    }

    fn scheduled(&self) -> Event {
        Event::ConsultationScheduled(ConsultationScheduled {
            consultation_id: self.consultation,
            patient_id: self.patient,
            physician_id: self.physician,
            starts_at: self.starts_at,
            ends_at: self.ends_at,
        })
    }

    fn failed(&self, reason: FailureReason, detail: &str) -> Event {
        Event::ConsultationSchedulingFailed(ConsultationSchedulingFailed {
            consultation_id: self.consultation,
            reason,
            detail: detail.into(),
        })
    }

    fn cancellation_requested(&self, reason: &str) -> Event {
        Event::ConsultationCancellationRequested(ConsultationCancellationRequested {
            consultation_id: self.consultation,
            reason: reason.into(),
        })
    }

    /// Requested, held and scheduled.
    fn scheduled_given(&self) -> Given {
        self.requested()
            .events::<DaySchedule>(self.day(), [self.held()])
            .events::<Consultation>(self.stream(), [self.scheduled()])
    }
}

fn trigger() -> Trigger {
    Trigger {
        event_id: Uuid::now_v7(),
        tenant_id: TENANT.into(),
        correlation_id: "saga".into(),
        actor_id: None,
    }
}

/// The `when` of a step's test.
trait WhenStep {
    /// When `step` runs once, as the saga's consumer runs it for a fresh trigger; then it
    /// succeeded.
    async fn when_step(self, step: Step) -> Then<Result<(), StepError>>;

    /// When the timer fires the deadline of saga `id`; then that went through.
    async fn when_deadline_fires(self, id: Uuid) -> Then<Result<(), CommandError>>;
}

impl WhenStep for Given {
    async fn when_step(self, step: Step) -> Then<Result<(), StepError>> {
        let run = |pipeline| async move { Steps { pipeline }.run(&step, &trigger()).await };
        self.when(run).await.then_ok(|_| true)
    }

    async fn when_deadline_fires(self, id: Uuid) -> Then<Result<(), CommandError>> {
        let deadline = self.store().deadline(id).expect("a deadline was started");
        let fire = |pipeline| async move { timer(pipeline).fire(&deadline.due).await };
        self.when(fire).await.then_ok(|_| true)
    }
}

#[tokio::test]
async fn validate_patient_validates_an_active_patient() {
    let b = Booking::new();
    let step = Step::ValidatePatient {
        patient_id: b.patient,
        consultation_id: b.consultation,
    };
    b.requested()
        .when_step(step)
        .await
        .then_events([Event::PatientValidatedForConsultation(
            PatientValidatedForConsultation {
                patient_id: b.patient,
                consultation_id: b.consultation,
            },
        )]);
}

#[tokio::test]
async fn validate_patient_fails_a_deactivated_patient() {
    let b = Booking::new();
    let deactivated = Event::PatientDeactivated(PatientDeactivated {
        patient_id: b.patient,
        reason: None,
    });
    let step = Step::ValidatePatient {
        patient_id: b.patient,
        consultation_id: b.consultation,
    };
    b.requested()
        .events::<Patient>(b.patient.as_uuid(), [deactivated])
        .when_step(step)
        .await
        .then_events([Event::PatientValidationFailed(PatientValidationFailed {
            patient_id: b.patient,
            consultation_id: b.consultation,
            reason: "patient is deactivated".into(),
        })]);
}

#[tokio::test]
async fn hold_slot_holds_the_slot_of_a_requested_consultation() {
    let b = Booking::new();
    let step = Step::HoldSlot {
        consultation_id: b.consultation,
    };
    b.requested().when_step(step).await.then_events([b.held()]);
}

#[tokio::test]
async fn hold_slot_holds_nothing_for_a_consultation_that_already_failed() {
    let b = Booking::new();
    let failed = b.failed(FailureReason::TimedOut, "late");
    let step = Step::HoldSlot {
        consultation_id: b.consultation,
    };
    b.requested()
        .events::<Consultation>(b.stream(), [failed])
        .when_step(step)
        .await
        .then_no_events();
}

#[tokio::test]
async fn release_slot_releases_a_held_slot_and_nothing_else() {
    let b = Booking::new();
    let step = Step::ReleaseSlot {
        consultation_id: b.consultation,
    };
    b.requested()
        .events::<DaySchedule>(b.day(), [b.held()])
        .when_step(step.clone())
        .await
        .then_events([b.released()]);
    b.requested().when_step(step).await.then_no_events();
}

#[tokio::test]
async fn confirm_scheduling_schedules_and_pauses_the_deadline() {
    let b = Booking::new();
    let step = Step::ConfirmScheduling {
        consultation_id: b.consultation,
        physician_id: b.physician,
    };
    b.requested()
        .events::<DaySchedule>(b.day(), [b.held()])
        .when_step(step)
        .await
        .then_events([b.scheduled()])
        .then_deadline(b.stream(), DeadlineState::Paused);
}

#[tokio::test]
async fn confirm_scheduling_after_the_deadline_fired_gives_the_slot_back() {
    let b = Booking::new();
    let timed_out = b.failed(FailureReason::TimedOut, "late");
    let step = Step::ConfirmScheduling {
        consultation_id: b.consultation,
        physician_id: b.physician,
    };
    b.requested()
        .events::<DaySchedule>(b.day(), [b.held()])
        .events::<Consultation>(b.stream(), [timed_out])
        .when_step(step)
        .await
        .then_events([b.released()]);
}

#[tokio::test]
async fn fail_scheduling_fails_a_requested_consultation() {
    let b = Booking::new();
    let step = Step::FailScheduling {
        consultation_id: b.consultation,
        reason: FailureReason::PhysicianUnavailable,
        detail: "booked".into(),
    };
    b.requested()
        .when_step(step)
        .await
        .then_events([b.failed(FailureReason::PhysicianUnavailable, "booked")]);
}

#[tokio::test]
async fn void_records_voids_the_consultations_record_book() {
    let b = Booking::new();
    let step = Step::VoidRecords {
        consultation_id: b.consultation,
    };
    b.scheduled_given()
        .events::<Consultation>(b.stream(), [b.cancellation_requested("ill")])
        .when_step(step)
        .await
        .then_events([Event::ConsultationRecordsVoided(
            ConsultationRecordsVoided {
                consultation_id: b.consultation,
                record_ids: vec![],
            },
        )]);
}

#[tokio::test]
async fn confirm_cancellation_cancels() {
    let b = Booking::new();
    let step = Step::ConfirmCancellation {
        consultation_id: b.consultation,
    };
    b.scheduled_given()
        .events::<Consultation>(b.stream(), [b.cancellation_requested("ill")])
        .when_step(step)
        .await
        .then_events([Event::ConsultationCancelled(ConsultationCancelled {
            consultation_id: b.consultation,
            reason: "cancellation completed".into(),
        })]);
}

#[tokio::test]
async fn the_follow_up_cancels_a_deactivated_patients_scheduled_consultation() {
    let b = Booking::new();
    let step = Step::CancelFutureConsultations(Person::Patient(b.patient));
    b.scheduled_given()
        .when_step(step)
        .await
        .then_events([b.cancellation_requested("the patient was deactivated")]);
}

#[tokio::test]
async fn the_follow_up_fails_a_deactivated_physicians_consultation_still_being_scheduled() {
    let b = Booking::new();
    let step = Step::CancelFutureConsultations(Person::Physician(b.physician));
    b.requested().when_step(step).await.then_events([b.failed(
        FailureReason::PhysicianUnavailable,
        "the physician was deactivated",
    )]);
}

#[tokio::test]
async fn a_redelivered_trigger_has_no_second_effect() {
    let b = Booking::new();
    let step = Step::HoldSlot {
        consultation_id: b.consultation,
    };
    let trigger = trigger();
    let then = b
        .requested()
        .when(|pipeline| async move {
            let steps = Steps { pipeline };
            let first = steps.run(&step, &trigger).await;
            let again = steps.run(&step, &trigger).await;
            (first, again)
        })
        .await
        .then_events([b.held()]);
    assert!(then.result.0.is_ok() && then.result.1.is_ok());
}

fn timer(pipeline: Pipeline<MemoryStore>) -> Timer<MemoryStore> {
    Timer {
        pipeline,
        retention: DEADLINE,
        ready: Default::default(),
    }
}

#[tokio::test]
async fn a_due_deadline_fails_its_consultation_and_fires() {
    let b = Booking::new();
    let given = b.requested();
    let mut due = given
        .store()
        .deadline(b.stream())
        .expect("the request started a deadline")
        .due;
    due.due_at = Utc::now() - TimeDelta::seconds(1);
    given.store().start_deadline(due);
    let detail = format!(
        "the consultation was not confirmed within {} ms",
        DEADLINE.as_millis()
    );
    given
        .when(|p| async move { timer(p).fire_due().await.ok() })
        .await
        .then_events([b.failed(FailureReason::TimedOut, &detail)])
        .then_deadline(b.stream(), DeadlineState::Fired);
}

#[tokio::test]
async fn a_deadline_whose_consultation_already_failed_is_retired_without_events() {
    let b = Booking::new();
    let failed = b.failed(FailureReason::PatientInvalid, "inactive");
    let given = b.requested().events::<Consultation>(b.stream(), [failed]);
    given
        .when_deadline_fires(b.stream())
        .await
        .then_no_events()
        .then_deadline(b.stream(), DeadlineState::Fired);
}

#[tokio::test]
async fn a_paused_deadline_does_not_fire() {
    let b = Booking::new();
    let given = b.scheduled_given();
    given
        .when_deadline_fires(b.stream())
        .await
        .then_no_events()
        .then_deadline(b.stream(), DeadlineState::Paused);
}
