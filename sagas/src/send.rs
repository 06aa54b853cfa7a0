//! How a saga step sends its commands through the pipeline, and what it makes of their
//! answers: the trigger it acts for, what became of each command, and why a step failed.

use commands::{CommandError, CommandMeta, Idempotency, Outcome, Pipeline, Target};
use domain::consultation::{Consultation, ConsultationData};
use domain::ids::ConsultationId;
use domain::{Aggregate, DomainError};
use eventstore::Store;
use uuid::Uuid;

/// What a step knows of the event that triggered it.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub event_id: Uuid,
    pub tenant_id: String,
    pub correlation_id: String,
    /// Who started the saga; every step acts for them.
    pub actor_id: Option<String>,
    /// The broker's copy of the event, not the local feed's: with several saga processes it is
    /// most often a repeat of a step that the appending process already ran from its feed.
    pub delivered: bool,
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
    /// The broker did not answer (looking through dead letters): retry the message.
    #[error("{0}")]
    Broker(#[source] messaging::dlq::DlqError),
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

/// What became of a command a step sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Appended,
    /// It changed nothing (the state had it already), or it was sent before (a redelivery).
    Unchanged,
    /// A rule refused it: the saga's state had moved on.
    Refused(DomainError),
    /// The deadline it would have paused had fired first.
    TooLate,
}

/// Sends `command` to the aggregate in `stream` on behalf of `trigger`. A refusal by a rule
/// is an answer, not an error.
pub async fn send<A, S: Store>(
    pipeline: &Pipeline<S>,
    trigger: &Trigger,
    stream: Uuid,
    command: A::Command,
) -> Result<Sent, StepError>
where
    A: Aggregate,
    A::Command: Clone,
{
    // One key per trigger and target: a redelivered trigger replays, and appends nothing. A
    // broker's copy looks its key up first: its step has often run already, from the feed of
    // the process that appended the trigger, and the lookup is cheaper than deciding again.
    let key = format!("saga:{}:{}:{stream}", trigger.event_id, A::KIND.as_str());
    let meta = CommandMeta {
        causation_id: Some(trigger.event_id),
        actor_id: trigger.actor_id.clone(),
        idempotency: Some(Idempotency {
            request_hash: key.clone(),
            key,
            check_first: trigger.delivered,
        }),
        ..CommandMeta::new(&trigger.tenant_id, &trigger.correlation_id)
    };
    let outcome = pipeline
        .execute::<A>(&meta, Target::Existing(stream), command)
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

/// The consultation as of now, if it exists in the trigger's tenant.
pub async fn consultation<S: Store>(
    pipeline: &Pipeline<S>,
    trigger: &Trigger,
    id: ConsultationId,
) -> Result<Option<ConsultationData>, StepError> {
    let loaded = pipeline
        .aggregates()
        .current_in::<Consultation>(&trigger.tenant_id, id.as_uuid())
        .await
        .map_err(CommandError::from)?;
    Ok(loaded.state.data().cloned())
}

/// Counts how a saga ended.
pub(crate) fn outcome(saga: &'static str, outcome: &'static str) {
    metrics::counter!("hap_saga_outcomes_total", "saga" => saga, "outcome" => outcome).increment(1);
}
