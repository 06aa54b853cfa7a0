//! The follow-up on deactivation: a deactivated patient's or physician's consultations that are
//! still to come end: scheduled ones are cancelled, each through the cancellation saga, and
//! ones still being scheduled fail. An erasure deactivates too, and runs the same follow-up
//! (its consultations carry the deactivation's reason: the erasure's own stays with the
//! erased event, for the audit trail).
//!
//! It runs as a saga step of the scheduling service, triggered by the deactivation's message
//! on the shared saga queue: a queued job that survives a restart (the message stays until
//! the step is done), or at once from the local feed of the process that appended it. Each
//! cancellation is a command with its own idempotency key, so a job run again (after a crash,
//! or from the broker's copy in another process) cancels nothing twice.

use chrono::Utc;
use commands::{CommandError, Pipeline};
use domain::consultation::Consultation;
use domain::consultation::{ConsultationCommand, Status};
use domain::event::FailureReason;
use domain::ids::ConsultationId;
use domain::saga::Person;
use domain::values::Reason;

use crate::lookups::SagaStore;
use crate::send::{Sent, StepError, Trigger, consultation, outcome, send};

/// How many times one consultation is read again when its status changed between the read and
/// the command (a confirmation racing the follow-up).
const ATTEMPTS: usize = 3;

/// Ends `person`'s consultations that are still to come: those still being scheduled fail,
/// scheduled ones that have not started are cancelled. How many it ended.
pub async fn cancel_future_consultations<S: SagaStore>(
    pipeline: &Pipeline<S>,
    trigger: &Trigger,
    person: Person,
) -> Result<usize, StepError> {
    let consultations = pipeline
        .store()
        .consultations_of(&trigger.tenant_id, person)
        .await
        .map_err(|e| StepError::Transient(CommandError::Store(e)))?;
    let mut ended = 0;
    for id in consultations {
        if end(pipeline, trigger, person, ConsultationId::from(id)).await? {
            ended += 1;
        }
    }
    if ended > 0 {
        tracing::info!(
            ended,
            "ended the future consultations of a deactivated or erased person"
        );
    }
    Ok(ended)
}

/// Ends one consultation of a deactivated `person` if it is still to come; whether it did.
///
/// One still being scheduled fails, with the reason its own saga would have given: the saga's
/// validation and hold may both have passed before the deactivation, so only this step can
/// stop it. Its confirmation may race this: both are commands on the consultation's stream, so
/// one of them is refused. A refused failure means it was scheduled meanwhile: it is read
/// again and cancelled.
async fn end<S: SagaStore>(
    pipeline: &Pipeline<S>,
    trigger: &Trigger,
    person: Person,
    id: ConsultationId,
) -> Result<bool, StepError> {
    let (failure, why) = match person {
        Person::Patient(_) => (FailureReason::PatientInvalid, "the patient was deactivated"),
        Person::Physician(_) => (
            FailureReason::PhysicianUnavailable,
            "the physician was deactivated",
        ),
    };
    for _ in 0..ATTEMPTS {
        let Some(consultation) = consultation(pipeline, trigger, id).await? else {
            return Ok(false);
        };
        let command = match consultation.status {
            Status::Requested => ConsultationCommand::FailScheduling {
                reason: failure,
                detail: why.to_owned(),
            },
            Status::Scheduled if consultation.starts_at > Utc::now() => {
                ConsultationCommand::Cancel {
                    reason: Reason::parse(why).expect("a valid reason"),
                }
            }
            _ => return Ok(false),
        };
        match send::<Consultation, S>(pipeline, trigger, id.as_uuid(), command).await? {
            Sent::Appended => {
                if matches!(consultation.status, Status::Requested) {
                    outcome("scheduling", failure.as_str());
                }
                return Ok(true);
            }
            Sent::Unchanged => return Ok(false),
            Sent::Refused(_) | Sent::TooLate => {}
        }
    }
    Err(StepError::Transient(CommandError::KeptChanging))
}
