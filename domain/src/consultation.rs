//! A consultation and its life: requested → scheduled or failed; scheduled → done, or
//! cancellation requested → cancelled. Scheduling and cancellation are sagas; this aggregate
//! holds their outcome, and the saga steps drive it with the `Confirm…`/`Fail…` commands.

use chrono::{DateTime, Utc};

use crate::aggregate::{Aggregate, DomainError};
use crate::event::{self, AggregateKind, Event, FailureReason};
use crate::ids::{ConsultationId, PatientId, PhysicianId};
use crate::names::named_enum;
use crate::patient::changed;
use crate::values::{DurationMinutes, Notes, Reason, StartsAt};

named_enum! {
    /// Where a consultation is in its life. Its name is what the read model stores, the query
    /// API shows and filters on, and the rules' messages use.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Status {
        /// Waiting for the patient's and the physician's checks.
        Requested = "requested",
        Scheduled = "scheduled",
        /// A check refused it; see the failure reason.
        Failed = "failed",
        CancellationRequested = "cancellation_requested",
        Cancelled = "cancelled",
        Done = "done",
    }
}

impl Status {
    /// Whether the consultation's status can no longer change.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Failed | Self::Cancelled | Self::Done)
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum Consultation {
    #[default]
    Unrequested,
    Requested(ConsultationData),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConsultationData {
    pub id: ConsultationId,
    pub patient_id: PatientId,
    pub physician_id: PhysicianId,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub status: Status,
    pub reason: Option<String>,
    pub notes: Option<String>,
}

#[derive(Debug, Clone)]
pub enum ConsultationCommand {
    /// Starts the scheduling saga. Whether the patient and physician exist is read from their
    /// streams first; whether they are active and the slot free is the saga's question.
    Request {
        id: ConsultationId,
        patient_id: PatientId,
        patient_exists: bool,
        physician_id: PhysicianId,
        physician_exists: bool,
        starts_at: StartsAt,
        duration: DurationMinutes,
        reason: Option<Reason>,
    },
    /// Fields left `None` are not changed.
    Update {
        reason: Option<Reason>,
        notes: Option<Notes>,
    },
    Cancel {
        reason: Reason,
    },
    Complete,
    /// Scheduling saga: the patient is valid and the slot is held.
    ConfirmScheduling,
    /// Scheduling saga: a participant refused, or the deadline passed.
    FailScheduling {
        reason: FailureReason,
        detail: String,
    },
    /// Cancellation saga: the records are voided.
    ConfirmCancellation,
}

const WHAT: &str = "consultation";

impl Consultation {
    pub fn data(&self) -> Option<&ConsultationData> {
        match self {
            Self::Unrequested => None,
            Self::Requested(c) => Some(c),
        }
    }

    /// The consultation, provided it is in `allowed` (else the rule it breaks for `action`).
    fn in_status(
        &self,
        allowed: &[Status],
        action: &'static str,
    ) -> Result<&ConsultationData, DomainError> {
        let c = self.data().ok_or(DomainError::NotFound(WHAT))?;
        if allowed.contains(&c.status) {
            Ok(c)
        } else {
            Err(DomainError::ConsultationNotModifiable {
                status: c.status.as_str(),
                action,
            })
        }
    }

    /// Decides a move on from status `from`: the event `moved` makes of the consultation. At
    /// one of `done` the move was decided before and the command repeats it: no event. From
    /// any other status, the rule it breaks for `action`.
    fn move_from(
        &self,
        from: Status,
        done: &[Status],
        action: &'static str,
        moved: impl FnOnce(&ConsultationData) -> Event,
    ) -> Result<Vec<Event>, DomainError> {
        let c = self.data().ok_or(DomainError::NotFound(WHAT))?;
        if c.status == from {
            Ok(vec![moved(c)])
        } else if done.contains(&c.status) {
            Ok(vec![])
        } else {
            Err(DomainError::ConsultationNotModifiable {
                status: c.status.as_str(),
                action,
            })
        }
    }
}

impl Aggregate for Consultation {
    type Command = ConsultationCommand;
    const KIND: AggregateKind = AggregateKind::Consultation;

    fn decide(&self, command: ConsultationCommand) -> Result<Vec<Event>, DomainError> {
        use ConsultationCommand as C;
        use Status as S;
        match command {
            C::Request {
                id,
                patient_id,
                patient_exists,
                physician_id,
                physician_exists,
                starts_at,
                duration,
                reason,
            } => {
                if self.data().is_some() {
                    return Err(DomainError::AlreadyExists(WHAT));
                }
                if !patient_exists {
                    return Err(DomainError::UnknownReference {
                        field: "patientId",
                        what: "patient",
                    });
                }
                if !physician_exists {
                    return Err(DomainError::UnknownReference {
                        field: "physicianId",
                        what: "physician",
                    });
                }
                let starts_at = starts_at.at();
                let ends_at = starts_at + chrono::Duration::minutes(duration.minutes().into());
                Ok(vec![Event::ConsultationSchedulingStarted(
                    event::ConsultationSchedulingStarted {
                        consultation_id: id,
                        patient_id,
                        physician_id,
                        starts_at,
                        ends_at,
                        reason: reason.map(|r| r.as_str().to_owned()),
                    },
                )])
            }
            C::Update { reason, notes } => {
                let c = self.in_status(&[S::Scheduled], "updated")?;
                let update = event::ConsultationUpdated {
                    consultation_id: c.id,
                    reason: changed(reason, c.reason.as_deref()),
                    notes: changed(notes, c.notes.as_deref()),
                };
                if update.reason.is_none() && update.notes.is_none() {
                    return Ok(vec![]);
                }
                Ok(vec![Event::ConsultationUpdated(update)])
            }
            C::Cancel { reason } => self.move_from(
                S::Scheduled,
                &[S::CancellationRequested, S::Cancelled],
                "cancelled",
                |c| {
                    Event::ConsultationCancellationRequested(
                        event::ConsultationCancellationRequested {
                            consultation_id: c.id,
                            reason: reason.as_str().to_owned(),
                        },
                    )
                },
            ),
            C::Complete => self.move_from(S::Scheduled, &[S::Done], "completed", |c| {
                Event::ConsultationDone(event::ConsultationDone {
                    consultation_id: c.id,
                })
            }),
            C::ConfirmScheduling => {
                self.move_from(S::Requested, &[S::Scheduled], "scheduled", |c| {
                    Event::ConsultationScheduled(event::ConsultationScheduled {
                        consultation_id: c.id,
                        patient_id: c.patient_id,
                        physician_id: c.physician_id,
                        starts_at: c.starts_at,
                        ends_at: c.ends_at,
                    })
                })
            }
            C::FailScheduling { reason, detail } => {
                self.move_from(S::Requested, &[S::Failed], "failed", |c| {
                    Event::ConsultationSchedulingFailed(event::ConsultationSchedulingFailed {
                        consultation_id: c.id,
                        reason,
                        detail,
                    })
                })
            }
            C::ConfirmCancellation => self.move_from(
                S::CancellationRequested,
                &[S::Cancelled],
                "cancelled",
                |c| {
                    Event::ConsultationCancelled(event::ConsultationCancelled {
                        consultation_id: c.id,
                        reason: "cancellation completed".into(),
                    })
                },
            ),
        }
    }

    fn evolve(self, event: &Event) -> Self {
        let mut c = match (self, event) {
            (Self::Unrequested, Event::ConsultationSchedulingStarted(e)) => {
                return Self::Requested(ConsultationData {
                    id: e.consultation_id,
                    patient_id: e.patient_id,
                    physician_id: e.physician_id,
                    starts_at: e.starts_at,
                    ends_at: e.ends_at,
                    status: Status::Requested,
                    reason: e.reason.clone(),
                    notes: None,
                });
            }
            (Self::Requested(c), _) => c,
            (state, _) => return state,
        };
        match event {
            Event::ConsultationScheduled(_) => c.status = Status::Scheduled,
            Event::ConsultationSchedulingFailed(_) => c.status = Status::Failed,
            Event::ConsultationCancellationRequested(_) => c.status = Status::CancellationRequested,
            Event::ConsultationCancelled(_) => c.status = Status::Cancelled,
            Event::ConsultationDone(_) => c.status = Status::Done,
            Event::ConsultationUpdated(e) => {
                if let Some(reason) = &e.reason {
                    c.reason = Some(reason.clone());
                }
                if let Some(notes) = &e.notes {
                    c.notes = Some(notes.clone());
                }
            }
            _ => {}
        }
        Self::Requested(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::given;
    use ConsultationCommand as C;

    fn request() -> C {
        let now = Utc::now();
        C::Request {
            id: ConsultationId::new(),
            patient_id: PatientId::new(),
            patient_exists: true,
            physician_id: PhysicianId::new(),
            physician_exists: true,
            starts_at: StartsAt::parse(now + chrono::Duration::days(1), now).unwrap(),
            duration: DurationMinutes::DEFAULT,
            reason: None,
        }
    }

    fn status(c: &Consultation) -> Status {
        c.data().unwrap().status
    }

    fn cancel() -> C {
        C::Cancel {
            reason: Reason::parse("patient asked").unwrap(),
        }
    }

    fn update_notes() -> C {
        C::Update {
            reason: None,
            notes: Some(Notes::parse("bring exams").unwrap()),
        }
    }

    #[test]
    fn a_request_starts_scheduling_with_the_end_time() {
        let events = Consultation::default().decide(request()).unwrap();
        let [Event::ConsultationSchedulingStarted(e)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(e.ends_at - e.starts_at, chrono::Duration::minutes(30));
        let c: Consultation = given([request()]);
        assert_eq!(status(&c), Status::Requested);
    }

    #[test]
    fn unknown_participants_are_named_by_field() {
        let C::Request {
            id,
            patient_id,
            physician_id,
            starts_at,
            duration,
            ..
        } = request()
        else {
            unreachable!()
        };
        let without_patient = C::Request {
            id,
            patient_id,
            patient_exists: false,
            physician_id,
            physician_exists: true,
            starts_at,
            duration,
            reason: None,
        };
        assert_eq!(
            Consultation::default().decide(without_patient),
            Err(DomainError::UnknownReference {
                field: "patientId",
                what: "patient"
            })
        );
        let without_physician = C::Request {
            id,
            patient_id,
            patient_exists: true,
            physician_id,
            physician_exists: false,
            starts_at,
            duration,
            reason: None,
        };
        assert_eq!(
            Consultation::default().decide(without_physician),
            Err(DomainError::UnknownReference {
                field: "physicianId",
                what: "physician"
            })
        );
    }

    #[test]
    fn only_a_scheduled_consultation_can_be_updated_completed_or_cancelled() {
        let requested: Consultation = given([request()]);
        for command in [update_notes(), C::Complete, cancel()] {
            assert!(matches!(
                requested.decide(command),
                Err(DomainError::ConsultationNotModifiable {
                    status: "requested",
                    ..
                })
            ));
        }
        let scheduled: Consultation = given([request(), C::ConfirmScheduling]);
        assert!(matches!(
            scheduled.decide(update_notes()).unwrap().as_slice(),
            [Event::ConsultationUpdated(_)]
        ));
        assert!(matches!(
            scheduled.decide(C::Complete).unwrap().as_slice(),
            [Event::ConsultationDone(_)]
        ));
        assert!(matches!(
            scheduled.decide(cancel()).unwrap().as_slice(),
            [Event::ConsultationCancellationRequested(_)]
        ));
    }

    #[test]
    fn a_cancelled_consultation_cannot_be_updated_or_completed() {
        let cancelled: Consultation = given([
            request(),
            C::ConfirmScheduling,
            cancel(),
            C::ConfirmCancellation,
        ]);
        assert_eq!(status(&cancelled), Status::Cancelled);
        assert!(cancelled.decide(update_notes()).is_err());
        assert!(cancelled.decide(C::Complete).is_err());
        assert_eq!(
            cancelled.decide(cancel()),
            Ok(vec![]),
            "cancelling again changes nothing"
        );
    }

    #[test]
    fn completing_twice_appends_nothing_the_second_time() {
        let done: Consultation = given([request(), C::ConfirmScheduling, C::Complete]);
        assert_eq!(status(&done), Status::Done);
        assert_eq!(done.decide(C::Complete), Ok(vec![]));
        assert!(
            done.decide(cancel()).is_err(),
            "a done consultation cannot be cancelled"
        );
    }

    #[test]
    fn a_failed_consultation_is_never_scheduled() {
        let failed: Consultation = given([
            request(),
            C::FailScheduling {
                reason: FailureReason::TimedOut,
                detail: "deadline passed".into(),
            },
        ]);
        assert_eq!(status(&failed), Status::Failed);
        assert!(failed.decide(C::ConfirmScheduling).is_err());
        let scheduled: Consultation = given([request(), C::ConfirmScheduling]);
        assert!(
            scheduled
                .decide(C::FailScheduling {
                    reason: FailureReason::TimedOut,
                    detail: String::new()
                })
                .is_err()
        );
    }

    #[test]
    fn an_update_that_changes_nothing_appends_nothing() {
        let c: Consultation = given([request(), C::ConfirmScheduling, update_notes()]);
        assert_eq!(c.decide(update_notes()), Ok(vec![]));
    }

    #[test]
    fn an_unknown_consultation_is_not_found() {
        assert_eq!(
            Consultation::default().decide(C::Complete),
            Err(DomainError::NotFound("consultation"))
        );
    }
}
