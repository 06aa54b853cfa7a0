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
    PatientValidationFailed, PhysicianAvailabilityConfirmed, PhysicianAvailabilityRejected,
    PhysicianRegistered, PhysicianSlotReleased,
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
            name: Some("Ana Lima".into()),
            birth_date: chrono::NaiveDate::from_ymd_opt(1990, 1, 2),
            document_number: Some(format!("DOC-{}", self.patient)),
            email: None,
            phone: None,
        });
        let physician = Event::PhysicianRegistered(PhysicianRegistered {
            physician_id: self.physician,
            name: Some("Rui Carvalho".into()),
            specialty: "cardiology".into(),
            license_number: Some(format!("CRM-{}", self.physician)),
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

    fn validated(&self) -> Event {
        Event::PatientValidatedForConsultation(PatientValidatedForConsultation {
            patient_id: self.patient,
            consultation_id: self.consultation,
        })
    }

    fn patient_refused(&self) -> Event {
        Event::PatientValidationFailed(PatientValidationFailed {
            patient_id: self.patient,
            consultation_id: self.consultation,
            reason: "patient is deactivated".into(),
        })
    }

    fn rejected(&self) -> Event {
        Event::PhysicianAvailabilityRejected(PhysicianAvailabilityRejected {
            physician_id: self.physician,
            consultation_id: self.consultation,
            reason: "booked".into(),
        })
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

    /// Failed because its patient refused (as the refusal's step fails it).
    fn patient_invalid(&self) -> Event {
        self.failed(FailureReason::PatientInvalid, "patient is deactivated")
    }

    /// Failed by its deadline (the detail is the test's own).
    fn timed_out(&self) -> Event {
        self.failed(FailureReason::TimedOut, "late")
    }

    fn cancellation_requested(&self, reason: &str) -> Event {
        Event::ConsultationCancellationRequested(ConsultationCancellationRequested {
            consultation_id: self.consultation,
            reason: reason.into(),
        })
    }

    /// Requested, validated, held and scheduled.
    fn scheduled_given(&self) -> Given {
        self.requested()
            .events::<Patient>(self.patient.as_uuid(), [self.validated()])
            .events::<DaySchedule>(self.day(), [self.held()])
            .events::<Consultation>(self.stream(), [self.scheduled()])
    }

    /// The patient service's step for the request.
    fn validate(&self) -> Step {
        Step::ValidatePatient {
            patient_id: self.patient,
            consultation_id: self.consultation,
        }
    }

    /// The physician service's step for the request.
    fn hold(&self) -> Step {
        Step::HoldSlot {
            consultation_id: self.consultation,
        }
    }

    /// The scheduling service's step for a refusal.
    fn fail_for(&self, reason: FailureReason, detail: &str) -> Step {
        Step::FailScheduling {
            consultation_id: self.consultation,
            reason,
            detail: detail.into(),
        }
    }

    /// The scheduling service's step for either confirmation.
    fn confirm(&self) -> Step {
        Step::ConfirmScheduling {
            consultation_id: self.consultation,
        }
    }
}

fn trigger() -> Trigger {
    Trigger {
        event_id: Uuid::now_v7(),
        tenant_id: TENANT.into(),
        correlation_id: "saga".into(),
        actor_id: None,
        delivered: true,
    }
}

/// The `when` of a step's test.
trait WhenStep {
    /// When `step` runs once, as the saga's consumer runs it for a fresh trigger; then it
    /// succeeded.
    async fn when_step(self, step: Step) -> Then<Result<(), StepError>>;

    /// When `steps` run one after the other, each for a fresh trigger, as the saga's
    /// consumers run them in that order; then every one succeeded.
    async fn when_steps(self, steps: impl IntoIterator<Item = Step>)
    -> Then<Result<(), StepError>>;

    /// When the timer fires the deadline of saga `id`; then that went through.
    async fn when_deadline_fires(self, id: Uuid) -> Then<Result<(), CommandError>>;
}

impl WhenStep for Given {
    async fn when_step(self, step: Step) -> Then<Result<(), StepError>> {
        let run =
            |pipeline| async move { Steps::without_broker(pipeline).run(&step, &trigger()).await };
        self.when(run).await.then_ok(|_| true)
    }

    async fn when_steps(
        self,
        steps: impl IntoIterator<Item = Step>,
    ) -> Then<Result<(), StepError>> {
        let steps: Vec<Step> = steps.into_iter().collect();
        let run = |pipeline| async move {
            let runner = Steps::without_broker(pipeline);
            for step in &steps {
                runner.run(step, &trigger()).await?;
            }
            Ok(())
        };
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
async fn hold_slot_holds_the_slot_of_a_requested_consultation_before_any_validation() {
    let b = Booking::new();
    b.requested()
        .when_step(b.hold())
        .await
        .then_events([b.held()]);
}

#[tokio::test]
async fn hold_slot_holds_nothing_for_a_consultation_that_already_failed() {
    let b = Booking::new();
    b.requested()
        .events::<Consultation>(b.stream(), [b.timed_out()])
        .when_step(b.hold())
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
async fn confirm_scheduling_with_both_confirmations_schedules_and_pauses_the_deadline() {
    let b = Booking::new();
    b.requested()
        .events::<Patient>(b.patient.as_uuid(), [b.validated()])
        .events::<DaySchedule>(b.day(), [b.held()])
        .when_step(b.confirm())
        .await
        .then_events([b.scheduled()])
        .then_deadline(b.stream(), DeadlineState::Paused);
}

#[tokio::test]
async fn confirm_scheduling_with_one_confirmation_waits_for_the_other() {
    let b = Booking::new();
    b.requested()
        .events::<Patient>(b.patient.as_uuid(), [b.validated()])
        .when_step(b.confirm())
        .await
        .then_no_events()
        .then_deadline(b.stream(), DeadlineState::Running);
    b.requested()
        .events::<DaySchedule>(b.day(), [b.held()])
        .when_step(b.confirm())
        .await
        .then_no_events()
        .then_deadline(b.stream(), DeadlineState::Running);
}

#[tokio::test]
async fn confirm_scheduling_after_the_deadline_fired_gives_the_slot_back() {
    let b = Booking::new();
    b.requested()
        .events::<Patient>(b.patient.as_uuid(), [b.validated()])
        .events::<DaySchedule>(b.day(), [b.held()])
        .events::<Consultation>(b.stream(), [b.timed_out()])
        .when_step(b.confirm())
        .await
        .then_events([b.released()]);
}

// The interleavings of the fan-out: both sides answer the request at once, in either order,
// each answer runs the confirming step, and duplicates, refusals and the deadline may fall
// anywhere in between.

#[tokio::test]
async fn either_answer_first_or_both_before_any_confirmation_schedules_once() {
    let b = Booking::new();
    let (validated, held, scheduled) = (b.validated(), b.held(), b.scheduled());
    let orders = [
        // Validated first: its confirmation waits, the hold's confirms.
        (
            [b.validate(), b.confirm(), b.hold(), b.confirm()],
            [&validated, &held],
        ),
        // Held first: its confirmation waits, the validation's confirms.
        (
            [b.hold(), b.confirm(), b.validate(), b.confirm()],
            [&held, &validated],
        ),
        // Both stored before either step: both find both, one schedules.
        (
            [b.validate(), b.hold(), b.confirm(), b.confirm()],
            [&validated, &held],
        ),
    ];
    // Each order over a store of its own.
    for (steps, [first, second]) in orders {
        b.requested()
            .when_steps(steps)
            .await
            .then_events([first.clone(), second.clone(), scheduled.clone()])
            .then_deadline(b.stream(), DeadlineState::Paused);
    }
}

/// Runs the confirming step for `triggers` in this order (a trigger named twice is its
/// message delivered twice); whether each run succeeded.
async fn confirm_for(given: Given, b: &Booking, triggers: &[&Trigger]) -> Then<Vec<bool>> {
    let step = b.confirm();
    given
        .when(|pipeline| async move {
            let steps = Steps::without_broker(pipeline);
            let mut results = Vec::new();
            for trigger in triggers {
                results.push(steps.run(&step, trigger).await.is_ok());
            }
            results
        })
        .await
}

#[tokio::test]
async fn a_duplicated_confirmation_changes_nothing_before_or_after_the_other() {
    let b = Booking::new();
    let (validated, held) = (trigger(), trigger());
    // Before the other answer: each confirmation's message twice waits twice.
    let only_validated = b
        .requested()
        .events::<Patient>(b.patient.as_uuid(), [b.validated()]);
    let then = confirm_for(only_validated, &b, &[&validated, &validated]).await;
    assert_eq!(then.then_no_events().result, [true; 2]);
    let only_held = b.requested().events::<DaySchedule>(b.day(), [b.held()]);
    let then = confirm_for(only_held, &b, &[&held, &held]).await;
    assert_eq!(then.then_no_events().result, [true; 2]);
    // After it: both steps, each twice, schedule once.
    let both = b
        .requested()
        .events::<Patient>(b.patient.as_uuid(), [b.validated()])
        .events::<DaySchedule>(b.day(), [b.held()]);
    let then = confirm_for(both, &b, &[&validated, &held, &validated, &held]).await;
    let then = then
        .then_events([b.scheduled()])
        .then_deadline(b.stream(), DeadlineState::Paused);
    assert_eq!(then.result, [true; 4]);
}

#[tokio::test]
async fn the_second_of_two_racing_confirmations_keeps_the_slot_of_the_scheduled_consultation() {
    let b = Booking::new();
    let given = b
        .requested()
        .events::<Patient>(b.patient.as_uuid(), [b.validated()])
        .events::<DaySchedule>(b.day(), [b.held()]);
    // Another process's step read the consultation still requested, and decides on that
    // (cached) state after this one scheduled it: its pause finds the deadline paused.
    let other = Pipeline::new(given.store().clone(), 1_000, DEADLINE);
    other
        .aggregates()
        .current::<Consultation>(b.stream())
        .await
        .expect("the consultation loads");
    let step = b.confirm();
    let then = given
        .when(|pipeline| async move {
            let first = Steps::without_broker(pipeline).run(&step, &trigger()).await;
            let second = Steps::without_broker(other).run(&step, &trigger()).await;
            (first, second)
        })
        .await
        .then_events([b.scheduled()])
        .then_deadline(b.stream(), DeadlineState::Paused);
    assert!(then.result.0.is_ok() && then.result.1.is_ok());
}

#[tokio::test]
async fn the_request_delivered_twice_to_each_side_answers_once_each() {
    let b = Booking::new();
    let steps = [b.validate(), b.hold(), b.validate(), b.hold()];
    let then = b
        .requested()
        .when(|pipeline| async move {
            let runner = Steps::without_broker(pipeline);
            let started = trigger();
            let mut results = Vec::new();
            for step in &steps {
                results.push(runner.run(step, &started).await.is_ok());
            }
            results
        })
        .await
        .then_events([b.validated(), b.held()]);
    assert_eq!(then.result, [true; 4]);
}

#[tokio::test]
async fn the_patient_refused_before_the_hold_holds_nothing() {
    let b = Booking::new();
    b.requested()
        .events::<Patient>(b.patient.as_uuid(), [b.patient_refused()])
        .when_steps([
            b.fail_for(FailureReason::PatientInvalid, "patient is deactivated"),
            Step::ReleaseSlot {
                consultation_id: b.consultation,
            },
            b.hold(),
        ])
        .await
        .then_events([b.patient_invalid()]);
}

#[tokio::test]
async fn the_patient_refused_after_the_hold_releases_the_slot() {
    let b = Booking::new();
    b.requested()
        .events::<DaySchedule>(b.day(), [b.held()])
        .events::<Patient>(b.patient.as_uuid(), [b.patient_refused()])
        .when_steps([
            // The hold's confirmation ran before the refusal: it waits.
            b.confirm(),
            b.fail_for(FailureReason::PatientInvalid, "patient is deactivated"),
            Step::ReleaseSlot {
                consultation_id: b.consultation,
            },
        ])
        .await
        .then_events([b.patient_invalid(), b.released()]);
}

#[tokio::test]
async fn a_hold_that_lands_after_the_failure_and_its_release_is_released_by_its_confirmation() {
    let b = Booking::new();
    // The hold step read the consultation still requested; the refusal failed it, and the
    // release for that failure found nothing held; then the hold committed.
    b.requested()
        .events::<Patient>(b.patient.as_uuid(), [b.patient_refused()])
        .events::<Consultation>(b.stream(), [b.patient_invalid()])
        .events::<DaySchedule>(b.day(), [b.held()])
        .when_step(b.confirm())
        .await
        .then_events([b.released()]);
}

#[tokio::test]
async fn the_physician_rejected_before_or_after_the_validation_fails_and_holds_nothing() {
    let b = Booking::new();
    let fail = b.fail_for(FailureReason::PhysicianUnavailable, "booked");
    let failed = b.failed(FailureReason::PhysicianUnavailable, "booked");
    // Rejected first: the validation still answers, and its confirmation finds nothing to do.
    b.requested()
        .events::<DaySchedule>(b.day(), [b.rejected()])
        .when_steps([fail.clone(), b.validate(), b.confirm()])
        .await
        .then_events([failed.clone(), b.validated()]);
    // Validated first: its confirmation waits, then the rejection fails the consultation.
    b.requested()
        .when_steps([b.validate(), b.confirm()])
        .await
        .then_events([b.validated()]);
    b.requested()
        .events::<Patient>(b.patient.as_uuid(), [b.validated()])
        .events::<DaySchedule>(b.day(), [b.rejected()])
        .when_step(fail)
        .await
        .then_events([failed]);
}

#[tokio::test]
async fn a_deadline_fired_between_the_answers_leaves_nothing_held_or_scheduled() {
    let b = Booking::new();
    // Validated, then timed out, then the hold comes: it holds nothing.
    let validated = b
        .requested()
        .events::<Patient>(b.patient.as_uuid(), [b.validated()]);
    let timed_out = validated
        .when_deadline_fires(b.stream())
        .await
        .then_deadline(b.stream(), DeadlineState::Fired);
    assert!(matches!(
        timed_out.appended().as_slice(),
        [Event::ConsultationSchedulingFailed(f)] if f.reason == FailureReason::TimedOut
    ));
    let timed_out = b.timed_out();
    b.requested()
        .events::<Patient>(b.patient.as_uuid(), [b.validated()])
        .events::<Consultation>(b.stream(), [timed_out.clone()])
        .when_steps([b.hold(), b.confirm()])
        .await
        .then_no_events();
    // Held, then timed out (the release found the slot), then validated: nothing to confirm.
    b.requested()
        .events::<DaySchedule>(b.day(), [b.held()])
        .events::<Consultation>(b.stream(), [timed_out.clone()])
        .when_steps([
            Step::ReleaseSlot {
                consultation_id: b.consultation,
            },
            b.validate(),
            b.confirm(),
        ])
        .await
        .then_events([b.released(), b.validated()]);
    // Held and validated, the deadline fired before the confirmation: it gives the slot back.
    b.requested()
        .events::<DaySchedule>(b.day(), [b.held()])
        .events::<Patient>(b.patient.as_uuid(), [b.validated()])
        .events::<Consultation>(b.stream(), [timed_out])
        .when_steps([b.confirm(), b.confirm()])
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
    let step = b.hold();
    let trigger = trigger();
    let then = b
        .requested()
        .when(|pipeline| async move {
            let steps = Steps::without_broker(pipeline);
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
