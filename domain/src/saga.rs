//! The sagas' decisions: which service reacts to which event, and with what step. Pure, like
//! the rest of the domain: the steps are carried out elsewhere, each as a command.
//!
//! **Scheduling** fans out: the consultation is requested (and its deadline starts) → the
//! patient service validates the patient and, at the same time, the physician service holds
//! the slot on the physician's day → the scheduling service confirms (pausing the deadline)
//! once both have answered, in whichever order they arrive: it reacts to each answer with the
//! same step, which confirms only when it finds the other answer stored too. Any refusal fails
//! the consultation, and a failed consultation releases whatever slot it holds, also one held
//! after it failed. A deadline that fires first fails it with `timed_out`.
//!
//! **Cancellation**: cancellation requested → the records service voids the consultation's
//! records → the scheduling service confirms the cancellation → the physician service releases
//! the slot.
//!
//! **Follow-up on deactivation**: a deactivated patient's or physician's future scheduled
//! consultations are cancelled, each through the cancellation saga.

use crate::event::{self, Event, FailureReason};
use crate::ids::{ConsultationId, PatientId, PhysicianId};
use crate::service::Service;

/// The kind of deadline a scheduling saga runs under.
pub const SCHEDULING_DEADLINE: &str = "scheduling";

/// What each service does in the sagas: it runs its steps from a queue shared by all of its
/// processes.
impl Service {
    /// The event types this service reacts to: its queue's bindings.
    pub fn triggers(self) -> &'static [&'static str] {
        match self {
            Self::Patients => &["ConsultationSchedulingStarted", "PatientErased"],
            Self::Physicians => &[
                "ConsultationSchedulingStarted",
                "ConsultationSchedulingFailed",
                "ConsultationCancelled",
                "PhysicianErased",
            ],
            Self::Scheduling => &[
                "PatientValidatedForConsultation",
                "PatientValidationFailed",
                "PhysicianAvailabilityConfirmed",
                "PhysicianAvailabilityRejected",
                "ConsultationRecordsVoided",
                "PatientDeactivated",
                "PhysicianDeactivated",
                "PatientErased",
                "PhysicianErased",
            ],
            Self::Records => &["ConsultationCancellationRequested"],
        }
    }

    /// What this service does about `event`; `None` when it does not concern it.
    pub fn react(self, event: &Event) -> Option<Step> {
        use Event as E;
        let step = match (self, event) {
            (Self::Patients, E::ConsultationSchedulingStarted(e)) => Step::ValidatePatient {
                patient_id: e.patient_id,
                consultation_id: e.consultation_id,
            },
            (Self::Patients, E::PatientErased(e)) => {
                Step::ForgetDeadLetters(Person::Patient(e.patient_id))
            }
            (Self::Physicians, E::PhysicianErased(e)) => {
                Step::ForgetDeadLetters(Person::Physician(e.physician_id))
            }
            (Self::Physicians, E::ConsultationSchedulingStarted(e)) => Step::HoldSlot {
                consultation_id: e.consultation_id,
            },
            (Self::Physicians, E::ConsultationSchedulingFailed(e)) => Step::ReleaseSlot {
                consultation_id: e.consultation_id,
            },
            (Self::Physicians, E::ConsultationCancelled(e)) => Step::ReleaseSlot {
                consultation_id: e.consultation_id,
            },
            (Self::Scheduling, E::PatientValidationFailed(e)) => Step::FailScheduling {
                consultation_id: e.consultation_id,
                reason: FailureReason::PatientInvalid,
                detail: e.reason.clone(),
            },
            (Self::Scheduling, E::PhysicianAvailabilityRejected(e)) => Step::FailScheduling {
                consultation_id: e.consultation_id,
                reason: FailureReason::PhysicianUnavailable,
                detail: e.reason.clone(),
            },
            (Self::Scheduling, E::PatientValidatedForConsultation(e)) => Step::ConfirmScheduling {
                consultation_id: e.consultation_id,
            },
            (Self::Scheduling, E::PhysicianAvailabilityConfirmed(e)) => Step::ConfirmScheduling {
                consultation_id: e.consultation_id,
            },
            (Self::Scheduling, E::ConsultationRecordsVoided(e)) => Step::ConfirmCancellation {
                consultation_id: e.consultation_id,
            },
            (Self::Scheduling, E::PatientDeactivated(e)) => {
                Step::CancelFutureConsultations(Person::Patient(e.patient_id))
            }
            (Self::Scheduling, E::PhysicianDeactivated(e)) => {
                Step::CancelFutureConsultations(Person::Physician(e.physician_id))
            }
            // An erased person is deactivated too; if they were already, this finds nothing.
            (Self::Scheduling, E::PatientErased(e)) => {
                Step::CancelFutureConsultations(Person::Patient(e.patient_id))
            }
            (Self::Scheduling, E::PhysicianErased(e)) => {
                Step::CancelFutureConsultations(Person::Physician(e.physician_id))
            }
            (Self::Records, E::ConsultationCancellationRequested(e)) => Step::VoidRecords {
                consultation_id: e.consultation_id,
            },
            _ => return None,
        };
        Some(step)
    }
}

/// The two answers scheduling waits for, one from each side. They arrive in either order; the
/// consultation is scheduled once both are stored. Each is an event on its own side's stream
/// (the patient's, the physician's day), so the saga keeps no state of its own: whether an
/// answer has arrived is whether its event is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    /// The patient is active (`PatientValidatedForConsultation`).
    PatientValid,
    /// The slot is held on the physician's day (`PhysicianAvailabilityConfirmed`).
    SlotHeld,
}

impl Confirmation {
    pub const ALL: [Self; 2] = [Self::PatientValid, Self::SlotHeld];

    /// The type of the event that stores this answer.
    pub fn event_type(self) -> &'static str {
        match self {
            Self::PatientValid => event::PatientValidatedForConsultation::EVENT_TYPE,
            Self::SlotHeld => event::PhysicianAvailabilityConfirmed::EVENT_TYPE,
        }
    }

    /// The answer an event of type `event_type` stores, if it stores one.
    pub fn stored_as(event_type: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.event_type() == event_type)
    }

    /// The answer `event` gives, and the consultation it answers for.
    pub fn given_by(event: &Event) -> Option<(ConsultationId, Self)> {
        match event {
            Event::PatientValidatedForConsultation(e) => {
                Some((e.consultation_id, Self::PatientValid))
            }
            Event::PhysicianAvailabilityConfirmed(e) => Some((e.consultation_id, Self::SlotHeld)),
            _ => None,
        }
    }
}

/// Someone whose deactivation or erasure cancels their future consultations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Person {
    Patient(PatientId),
    Physician(PhysicianId),
}

/// One step of a saga, to be carried out as one or more commands.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Is the patient active? (`PatientValidatedForConsultation` or `…ValidationFailed`.)
    ValidatePatient {
        patient_id: PatientId,
        consultation_id: ConsultationId,
    },
    /// Hold the consultation's slot on its physician's day, unless the consultation is no
    /// longer waiting for it. Runs beside the patient's validation, not after it.
    HoldSlot {
        consultation_id: ConsultationId,
    },
    /// Release the consultation's slot, if its physician's day holds one for it.
    ReleaseSlot {
        consultation_id: ConsultationId,
    },
    /// The step for either confirmation: once both [`Confirmation`]s are stored, schedule the
    /// consultation, pausing its deadline in the same write; if it can no longer be scheduled
    /// (the deadline fired first, or a refusal), release the slot. While one is missing, wait
    /// for it (its own arrival runs this step again), unless the consultation has failed
    /// already: then release the slot, which may have been held after the failure.
    ConfirmScheduling {
        consultation_id: ConsultationId,
    },
    FailScheduling {
        consultation_id: ConsultationId,
        reason: FailureReason,
        detail: String,
    },
    VoidRecords {
        consultation_id: ConsultationId,
    },
    ConfirmCancellation {
        consultation_id: ConsultationId,
    },
    CancelFutureConsultations(Person),
    /// Drop the dead letters that carry the erased person's personal data, in every queue of
    /// every instance: the store forgot them, and a dead letter would still show them.
    ForgetDeadLetters(Person),
}

impl Step {
    /// The name metrics and logs know the step by.
    pub fn name(&self) -> &'static str {
        match self {
            Self::ValidatePatient { .. } => "validate_patient",
            Self::HoldSlot { .. } => "hold_slot",
            Self::ReleaseSlot { .. } => "release_slot",
            Self::ConfirmScheduling { .. } => "confirm_scheduling",
            Self::FailScheduling { .. } => "fail_scheduling",
            Self::VoidRecords { .. } => "void_records",
            Self::ConfirmCancellation { .. } => "confirm_cancellation",
            Self::CancelFutureConsultations(_) => "cancel_future_consultations",
            Self::ForgetDeadLetters(_) => "forget_dead_letters",
        }
    }
}

impl Event {
    /// The deadline this event starts, as (saga id, kind): requesting a consultation starts
    /// its scheduling deadline.
    pub fn starts_deadline(&self) -> Option<(uuid::Uuid, &'static str)> {
        match self {
            Event::ConsultationSchedulingStarted(e) => {
                Some((e.consultation_id.as_uuid(), SCHEDULING_DEADLINE))
            }
            _ => None,
        }
    }

    /// The deadline this event pauses, by saga id: scheduling a consultation stops its
    /// scheduling deadline, in the same write, so that it can never also time out.
    pub fn pauses_deadline(&self) -> Option<uuid::Uuid> {
        match self {
            Event::ConsultationScheduled(e) => Some(e.consultation_id.as_uuid()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{self, route};

    #[test]
    fn every_trigger_is_a_known_event_that_its_service_reacts_to() {
        for service in Service::ALL {
            for trigger in service.triggers() {
                assert!(route(trigger).is_some(), "{trigger}");
            }
        }
    }

    #[test]
    fn a_requested_consultation_is_validated_and_its_slot_held_side_by_side() {
        let started = Event::ConsultationSchedulingStarted(event::ConsultationSchedulingStarted {
            consultation_id: ConsultationId::new(),
            patient_id: PatientId::new(),
            physician_id: PhysicianId::new(),
            starts_at: chrono::Utc::now(),
            ends_at: chrono::Utc::now(),
            reason: None,
        });
        let reacting: Vec<_> = Service::ALL
            .into_iter()
            .filter_map(|s| s.react(&started).map(|step| (s, step.name())))
            .collect();
        assert_eq!(
            reacting,
            [
                (Service::Patients, "validate_patient"),
                (Service::Physicians, "hold_slot")
            ],
            "both sides answer at once"
        );
        assert!(started.starts_deadline().is_some());
    }

    #[test]
    fn either_confirmation_runs_the_same_confirming_step() {
        let consultation_id = ConsultationId::new();
        let answers = [
            Event::PatientValidatedForConsultation(event::PatientValidatedForConsultation {
                patient_id: PatientId::new(),
                consultation_id,
            }),
            Event::PhysicianAvailabilityConfirmed(event::PhysicianAvailabilityConfirmed {
                physician_id: PhysicianId::new(),
                consultation_id,
                starts_at: chrono::Utc::now(),
                ends_at: chrono::Utc::now(),
            }),
        ];
        for (answer, confirmation) in answers.iter().zip(Confirmation::ALL) {
            assert_eq!(
                Service::Scheduling.react(answer),
                Some(Step::ConfirmScheduling { consultation_id })
            );
            assert_eq!(
                Confirmation::given_by(answer),
                Some((consultation_id, confirmation))
            );
            assert_eq!(
                Confirmation::stored_as(answer.event_type()),
                Some(confirmation)
            );
            let others = Service::ALL
                .into_iter()
                .filter(|s| *s != Service::Scheduling);
            assert!(others.filter_map(|s| s.react(answer)).next().is_none());
        }
    }

    #[test]
    fn refusals_fail_the_consultation_with_their_reason() {
        let consultation_id = ConsultationId::new();
        let rejected = Event::PhysicianAvailabilityRejected(event::PhysicianAvailabilityRejected {
            physician_id: PhysicianId::new(),
            consultation_id,
            reason: "booked".into(),
        });
        assert_eq!(
            Service::Scheduling.react(&rejected),
            Some(Step::FailScheduling {
                consultation_id,
                reason: FailureReason::PhysicianUnavailable,
                detail: "booked".into()
            })
        );
    }

    #[test]
    fn reactions_and_triggers_agree() {
        // A service reacts to an event exactly when its queue is bound to that event's type.
        let consultation_id = ConsultationId::new();
        let samples = [
            Event::ConsultationCancelled(event::ConsultationCancelled {
                consultation_id,
                reason: "x".into(),
            }),
            Event::ConsultationRecordsVoided(event::ConsultationRecordsVoided {
                consultation_id,
                record_ids: vec![],
            }),
            Event::ConsultationDone(event::ConsultationDone { consultation_id }),
        ];
        for service in Service::ALL {
            for sample in &samples {
                assert_eq!(
                    service.react(sample).is_some(),
                    service.triggers().contains(&sample.event_type()),
                    "{service:?} {}",
                    sample.event_type()
                );
            }
        }
    }
}
