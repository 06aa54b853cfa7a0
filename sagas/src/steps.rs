//! Each saga step carried out as commands through the pipeline.

use commands::{CommandError, Deadlines, Pipeline};
use domain::consultation::{Consultation, ConsultationCommand, ConsultationData, Status};
use domain::ids::ConsultationId;
use domain::patient::{Patient, PatientCommand};
use domain::physician::Physician;
use domain::record::{RecordBook, RecordCommand};
use domain::saga::Step;
use domain::schedule::{DaySchedule, ScheduleCommand};
use eventstore::EventStore;

use crate::follow_up;
use crate::forget::{self, DeadLetters};
use crate::lookups::SagaStore;
use crate::send::{self, Sent, StepError, Trigger, consultation, outcome};

/// Carries out sagas' steps, over a store (PostgreSQL's, unless a test gives another).
#[derive(Clone)]
pub struct Steps<S = EventStore> {
    pub pipeline: Pipeline<S>,
    /// The broker's dead letters, which an erasure reaches; None where there is no broker
    /// (the given/when/then tests), so none to forget.
    pub dead_letters: Option<DeadLetters>,
}

impl<S> Steps<S> {
    /// Steps with no broker around them: an erasure has no dead letters to forget.
    pub fn without_broker(pipeline: Pipeline<S>) -> Self {
        Self {
            pipeline,
            dead_letters: None,
        }
    }
}

impl<S: SagaStore> Steps<S> {
    /// Carries out `step`, triggered by `trigger`. A rule that refuses a command is an
    /// answer, not a failure: the saga's state already moved on (a deadline fired first, a
    /// consultation was cancelled meanwhile).
    pub async fn run(&self, step: &Step, trigger: &Trigger) -> Result<(), StepError> {
        match step {
            Step::ValidatePatient {
                patient_id,
                consultation_id,
            } => {
                let command = PatientCommand::ValidateForConsultation {
                    consultation_id: *consultation_id,
                };
                self.send::<Patient>(trigger, patient_id.as_uuid(), command)
                    .await?;
            }
            Step::HoldSlot { consultation_id } => {
                let Some(consultation) = self.requested(trigger, *consultation_id).await? else {
                    // Failed (the patient refused, the deadline fired) before its slot was asked
                    // for: hold nothing.
                    return Ok(());
                };
                let physician = self
                    .pipeline
                    .aggregates()
                    .current_in::<Physician>(
                        &trigger.tenant_id,
                        consultation.physician_id.as_uuid(),
                    )
                    .await
                    .map_err(CommandError::from)?;
                let day = consultation.starts_at.date_naive();
                let command = ScheduleCommand::Hold {
                    physician_id: consultation.physician_id,
                    physician_active: physician.state.is_active(),
                    consultation_id: consultation.id,
                    starts_at: consultation.starts_at,
                    ends_at: consultation.ends_at,
                };
                let stream = DaySchedule::stream_id(consultation.physician_id, day);
                self.send::<DaySchedule>(trigger, stream, command).await?;
            }
            Step::ReleaseSlot { consultation_id } => {
                self.release(trigger, *consultation_id).await?;
            }
            Step::ConfirmScheduling { consultation_id } => {
                self.confirm_scheduling(trigger, *consultation_id).await?;
            }
            Step::FailScheduling {
                consultation_id,
                reason,
                detail,
            } => {
                let command = ConsultationCommand::FailScheduling {
                    reason: *reason,
                    detail: detail.clone(),
                };
                let sent = self
                    .send::<Consultation>(trigger, consultation_id.as_uuid(), command)
                    .await?;
                if sent == Sent::Appended {
                    outcome("scheduling", reason.as_str());
                }
            }
            Step::VoidRecords { consultation_id } => {
                let command = RecordCommand::VoidAll {
                    consultation_id: *consultation_id,
                };
                let book = RecordBook::stream_id(*consultation_id);
                self.send::<RecordBook>(trigger, book, command).await?;
            }
            Step::ConfirmCancellation { consultation_id } => {
                let command = ConsultationCommand::ConfirmCancellation;
                let sent = self
                    .send::<Consultation>(trigger, consultation_id.as_uuid(), command)
                    .await?;
                if sent == Sent::Appended {
                    outcome("cancellation", "cancelled");
                }
            }
            Step::CancelFutureConsultations(person) => {
                follow_up::cancel_future_consultations(&self.pipeline, trigger, *person).await?;
            }
            Step::ForgetDeadLetters(person) => {
                if let Some(dead_letters) = &self.dead_letters {
                    let store = self.pipeline.store();
                    forget::forget_dead_letters(dead_letters, store, trigger, *person).await?;
                }
            }
        }
        Ok(())
    }

    /// The last hop of scheduling, run for each of the two confirmations as it arrives:
    /// schedules once both are stored.
    ///
    /// Of two confirmations committed one after the other, the step of the later one always
    /// finds both: it runs after its trigger committed, so after the earlier one too (for both
    /// steps to miss the other, each would have had to read before the other's trigger
    /// committed, and so before its own). Both steps may find both; then both send the
    /// confirmation to the consultation's stream, and one of them finds it scheduled already.
    ///
    /// A consultation that can no longer be scheduled gives back its slot once it has failed
    /// (the patient refused, the deadline fired, the follow-up ended it). The slot may have
    /// been held after the failure, when the release that the failure set off found nothing to
    /// release. Of the hold and the failure, the later to commit is found by the other's step:
    /// this one, looking up the failure after the hold committed, or that release, reading the
    /// day after the failure committed. So the slot ends free either way. The failure comes
    /// with the same lookup as the answers, so a step that waits reads nothing else.
    async fn confirm_scheduling(
        &self,
        trigger: &Trigger,
        consultation_id: ConsultationId,
    ) -> Result<(), StepError> {
        let answers = self
            .pipeline
            .store()
            .answers(&trigger.tenant_id, consultation_id)
            .await
            .map_err(|e| StepError::Transient(CommandError::Store(e)))?;
        if answers.confirmed() && !answers.failed {
            if self.schedule(trigger, consultation_id).await? {
                return Ok(());
            }
            // Refused, or too late: it failed meanwhile, or the other step scheduled it.
            return self.release_if_failed(trigger, consultation_id).await;
        }
        if answers.failed && answers.slot_held() {
            return self.release_if_failed(trigger, consultation_id).await;
        }
        // Waiting for the other answer (which confirms it, or fails it), or nothing held.
        Ok(())
    }

    /// Schedules, which pauses the deadline in the same write; whether the consultation is
    /// scheduled now. Whichever of that write and the deadline's firing takes the deadline's
    /// row first wins. Not scheduled: it was refused, or the deadline no longer ran, which may
    /// also mean that the other confirmation's step scheduled it first (a step deciding on a
    /// cached state meets the paused deadline before the stream's version); the caller decides
    /// on the consultation as stored then. A write that fails rolls its pause back with it:
    /// the deadline counts again while the message waits for its retry (or for ever, in the
    /// dead-letter queue), and fires at once if it is overdue by then.
    async fn schedule(
        &self,
        trigger: &Trigger,
        consultation_id: ConsultationId,
    ) -> Result<bool, StepError> {
        let stream = consultation_id.as_uuid();
        let scheduled = self
            .send::<Consultation>(trigger, stream, ConsultationCommand::ConfirmScheduling)
            .await;
        match scheduled {
            Ok(Sent::Appended) => {
                outcome("scheduling", "scheduled");
                Ok(true)
            }
            Ok(Sent::Unchanged) => Ok(true),
            Ok(Sent::Refused(_) | Sent::TooLate) => Ok(false),
            Err(error) => {
                Deadlines::resumed();
                Err(error)
            }
        }
    }

    /// Releases the slot the consultation's physician's day holds for it if the consultation
    /// has failed, as stored now (a scheduled one keeps it).
    async fn release_if_failed(
        &self,
        trigger: &Trigger,
        consultation_id: ConsultationId,
    ) -> Result<(), StepError> {
        let failed = consultation(&self.pipeline, trigger, consultation_id)
            .await?
            .filter(|c| c.status == Status::Failed);
        match failed {
            Some(failed) => self.release_slot_of(trigger, &failed).await,
            None => Ok(()),
        }
    }

    /// Releases the slot the consultation's physician's day holds for it, if any.
    async fn release(
        &self,
        trigger: &Trigger,
        consultation_id: ConsultationId,
    ) -> Result<(), StepError> {
        match consultation(&self.pipeline, trigger, consultation_id).await? {
            Some(consultation) => self.release_slot_of(trigger, &consultation).await,
            None => Ok(()),
        }
    }

    /// Releases the slot `consultation`'s physician's day holds for it, if any.
    async fn release_slot_of(
        &self,
        trigger: &Trigger,
        consultation: &ConsultationData,
    ) -> Result<(), StepError> {
        let day = consultation.starts_at.date_naive();
        let stream = DaySchedule::stream_id(consultation.physician_id, day);
        let command = ScheduleCommand::Release {
            physician_id: consultation.physician_id,
            consultation_id: consultation.id,
        };
        self.send::<DaySchedule>(trigger, stream, command).await?;
        Ok(())
    }

    /// Sends `command` to the aggregate in `stream` for `trigger` (see [`send::send`]).
    async fn send<A>(
        &self,
        trigger: &Trigger,
        stream: uuid::Uuid,
        command: A::Command,
    ) -> Result<Sent, StepError>
    where
        A: domain::Aggregate,
        A::Command: Clone,
    {
        send::send::<A, S>(&self.pipeline, trigger, stream, command).await
    }

    /// The consultation if it is still waiting to be scheduled.
    async fn requested(
        &self,
        trigger: &Trigger,
        id: ConsultationId,
    ) -> Result<Option<ConsultationData>, StepError> {
        Ok(consultation(&self.pipeline, trigger, id)
            .await?
            .filter(|c| c.status == Status::Requested))
    }
}
