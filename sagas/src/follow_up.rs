//! The follow-up on deactivation: a deactivated patient's or physician's future scheduled
//! consultations are cancelled, each through the cancellation saga.
//!
//! It runs as a saga step of the scheduling service, triggered by the deactivation's message
//! on the shared saga queue: a queued job that survives a restart (the message stays until
//! the step is done) and runs once in the cluster. Each cancellation is a command with its
//! own idempotency key, so a job run again after a crash cancels nothing twice.

use chrono::Utc;
use commands::CommandError;
use domain::consultation::Consultation;
use domain::consultation::{ConsultationCommand, Status};
use domain::ids::ConsultationId;
use domain::saga::Person;
use domain::values::Reason;
use uuid::Uuid;

use crate::steps::{Sent, StepError, Steps, Trigger};

/// The consultations ever requested for a patient, in the trigger's tenant.
const OF_PATIENT: &str = "select stream_id from events
  where event_type = 'ConsultationSchedulingStarted'
    and tenant_id = $1 and (payload ->> 'patientId') = $2";

/// The same for a physician (each lookup has a partial index of its own).
const OF_PHYSICIAN: &str = "select stream_id from events
  where event_type = 'ConsultationSchedulingStarted'
    and tenant_id = $1 and (payload ->> 'physicianId') = $2";

/// Cancels `person`'s scheduled consultations that have not started yet; how many it asked to
/// cancel.
pub async fn cancel_future_consultations(
    steps: &Steps,
    trigger: &Trigger,
    person: Person,
) -> Result<usize, StepError> {
    let (query, id, reason) = match person {
        Person::Patient(id) => (OF_PATIENT, id.as_uuid(), "the patient was deactivated"),
        Person::Physician(id) => (OF_PHYSICIAN, id.as_uuid(), "the physician was deactivated"),
    };
    let consultations: Vec<Uuid> = sqlx::query_scalar(query)
        .bind(&trigger.tenant_id)
        .bind(id.to_string())
        .fetch_all(steps.pipeline.store().pool())
        .await
        .map_err(|e| StepError::Transient(CommandError::Store(e)))?;
    let reason = Reason::parse(reason).expect("a valid reason");
    let now = Utc::now();
    let mut cancelled = 0;
    for id in consultations {
        let id = ConsultationId::from(id);
        let Some(consultation) = steps.consultation(trigger, id).await? else {
            continue;
        };
        if consultation.status != Status::Scheduled || consultation.starts_at <= now {
            continue;
        }
        let command = ConsultationCommand::Cancel {
            reason: reason.clone(),
        };
        if steps
            .send::<Consultation>(trigger, id.as_uuid(), command)
            .await?
            == Sent::Appended
        {
            cancelled += 1;
        }
    }
    if cancelled > 0 {
        tracing::info!(
            cancelled,
            "cancelled the future consultations of a deactivated person"
        );
    }
    Ok(cancelled)
}
