//! Each saga step carried out as commands through the pipeline.

use commands::{
    CommandError, CommandMeta, Done, Idempotency, Outcome, Pipeline, Remembered, Target,
};
use domain::consultation::{Consultation, ConsultationCommand, ConsultationData, Status};
use domain::ids::ConsultationId;
use domain::patient::{Patient, PatientCommand};
use domain::physician::Physician;
use domain::record::{RecordBook, RecordCommand};
use domain::saga::Step;
use domain::schedule::{DaySchedule, ScheduleCommand};
use domain::{Aggregate, DomainError};
use uuid::Uuid;

use crate::follow_up;

/// What a step knows of the event that triggered it.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub event_id: Uuid,
    pub tenant_id: String,
    pub correlation_id: String,
    /// Who started the saga; every step acts for them.
    pub actor_id: Option<String>,
}

/// Why a step did not complete.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// It may pass later (the database, a race that kept conflicting): retry the message.
    #[error("{0}")]
    Transient(#[source] CommandError),
    /// It never will (a stored event that cannot be read): dead-letter the message.
    #[error("{0}")]
    Permanent(#[source] CommandError),
}

impl From<CommandError> for StepError {
    fn from(error: CommandError) -> Self {
        if error.is_transient() {
            Self::Transient(error)
        } else {
            Self::Permanent(error)
        }
    }
}

/// Carries out sagas' steps for one tenant's triggers.
#[derive(Clone)]
pub struct Steps {
    pub pipeline: Pipeline,
}

impl Steps {
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
                    // Failed (timed out) before its slot was asked for: hold nothing.
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
            Step::ConfirmScheduling {
                consultation_id, ..
            } => self.confirm_scheduling(trigger, *consultation_id).await?,
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
                follow_up::cancel_future_consultations(self, trigger, *person).await?;
            }
        }
        Ok(())
    }

    /// The last hop of scheduling: schedule, which pauses the deadline in the same write.
    /// Whichever of that write and the deadline's firing takes the deadline's row first wins.
    /// A consultation that can no longer be scheduled (it timed out, or failed otherwise)
    /// gives back the slot it was just given. A write that fails rolls its pause back with it:
    /// the deadline counts again while the message waits for its retry (or for ever, in the
    /// dead-letter queue), and fires at once if it is overdue by then.
    async fn confirm_scheduling(
        &self,
        trigger: &Trigger,
        consultation_id: ConsultationId,
    ) -> Result<(), StepError> {
        let stream = consultation_id.as_uuid();
        let scheduled = self
            .send::<Consultation>(trigger, stream, ConsultationCommand::ConfirmScheduling)
            .await;
        match scheduled {
            Ok(Sent::Appended) => outcome("scheduling", "scheduled"),
            Ok(Sent::Unchanged) => {}
            Ok(Sent::Refused(_) | Sent::TooLate) => {
                return self.release(trigger, consultation_id).await;
            }
            Err(error) => {
                metrics::counter!("hap_deadlines_total", "transition" => "resumed").increment(1);
                return Err(error);
            }
        }
        Ok(())
    }

    /// Releases the slot the consultation's physician's day holds for it, if any.
    async fn release(
        &self,
        trigger: &Trigger,
        consultation_id: ConsultationId,
    ) -> Result<(), StepError> {
        let Some(consultation) = self.consultation(trigger, consultation_id).await? else {
            return Ok(());
        };
        let day = consultation.starts_at.date_naive();
        let stream = DaySchedule::stream_id(consultation.physician_id, day);
        let command = ScheduleCommand::Release {
            physician_id: consultation.physician_id,
            consultation_id,
        };
        self.send::<DaySchedule>(trigger, stream, command).await?;
        Ok(())
    }

    /// The consultation if it is still waiting to be scheduled.
    async fn requested(
        &self,
        trigger: &Trigger,
        id: ConsultationId,
    ) -> Result<Option<ConsultationData>, StepError> {
        Ok(self
            .consultation(trigger, id)
            .await?
            .filter(|c| c.status == Status::Requested))
    }

    pub(crate) async fn consultation(
        &self,
        trigger: &Trigger,
        id: ConsultationId,
    ) -> Result<Option<ConsultationData>, StepError> {
        let loaded = self
            .pipeline
            .aggregates()
            .current_in::<Consultation>(&trigger.tenant_id, id.as_uuid())
            .await
            .map_err(CommandError::from)?;
        Ok(loaded.state.data().cloned())
    }

    /// Sends `command` to the aggregate in `stream` on behalf of `trigger`. A refusal by a
    /// rule is an answer, not an error.
    pub(crate) async fn send<A>(
        &self,
        trigger: &Trigger,
        stream: Uuid,
        command: A::Command,
    ) -> Result<Sent, StepError>
    where
        A: Aggregate,
        A::Command: Clone,
    {
        // One key per trigger and target: a redelivered trigger replays, and appends nothing.
        let key = format!("saga:{}:{}:{stream}", trigger.event_id, A::KIND.as_str());
        let meta = CommandMeta {
            causation_id: Some(trigger.event_id),
            actor_id: trigger.actor_id.clone(),
            idempotency: Some(Idempotency {
                request_hash: key.clone(),
                key,
                check_first: false,
            }),
            ..CommandMeta::new(&trigger.tenant_id, &trigger.correlation_id)
        };
        let outcome = self
            .pipeline
            .execute::<A>(&meta, Target::Existing(stream), command, remembered)
            .await;
        match outcome {
            Ok(Outcome::Done(done)) if done.appended > 0 => Ok(Sent::Appended),
            Ok(_) => Ok(Sent::Unchanged),
            Err(CommandError::Rejected(rule)) => {
                tracing::debug!(%rule, aggregate = A::KIND.as_str(), %stream, "a saga command was refused");
                Ok(Sent::Refused(rule))
            }
            Err(CommandError::DeadlineNotRunning) => Ok(Sent::TooLate),
            Err(error) => Err(error.into()),
        }
    }
}

/// What became of a command a step sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sent {
    Appended,
    /// It changed nothing (the state had it already), or it was sent before (a redelivery).
    Unchanged,
    /// A rule refused it: the saga's state had moved on.
    Refused(DomainError),
    /// The deadline it would have paused had fired first.
    TooLate,
}

/// What a saga step remembers under its idempotency key: only that it happened.
pub(crate) fn remembered(done: &Done) -> Remembered {
    Remembered {
        status: 200,
        body: serde_json::json!({ "version": done.version.value() }),
        headers: serde_json::json!({}),
    }
}

/// Counts how a saga ended.
pub(crate) fn outcome(saga: &'static str, outcome: &'static str) {
    metrics::counter!("hap_saga_outcomes_total", "saga" => saga, "outcome" => outcome).increment(1);
}
