//! The contract every aggregate follows, and the ways a command can be refused.

use crate::event::{AggregateKind, Event};

/// An aggregate: a consistency boundary whose state is the fold of its stream's events.
pub trait Aggregate: Default + Clone + Send + Sync + 'static {
    type Command;
    const KIND: AggregateKind;

    /// Decides what a command means for the current state: the events to append (none when
    /// the command changes nothing) or the rule it breaks. Never has side effects.
    fn decide(&self, command: Self::Command) -> Result<Vec<Event>, DomainError>;

    /// Applies one event of this aggregate's stream. Events of other kinds leave it unchanged.
    fn evolve(self, event: &Event) -> Self;

    /// Whose personal data this stream's events carry (see [`crate::personal`]): the key that
    /// seals them. None for streams that hold no personal data.
    fn data_subject(&self) -> Option<uuid::Uuid> {
        None
    }

    /// Folds a whole stream from the empty state.
    fn replay<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        events.into_iter().fold(Self::default(), Self::evolve)
    }
}

/// Why a command was refused. Each variant is a rule of the domain, not a technical failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0} already exists")]
    AlreadyExists(&'static str),
    #[error("{0} is deactivated and cannot be changed")]
    Deactivated(&'static str),
    #[error("{0} is erased and cannot be changed")]
    Erased(&'static str),
    #[error("a consultation that is {status} cannot be {action}")]
    ConsultationNotModifiable {
        status: &'static str,
        action: &'static str,
    },
    #[error("records cannot be added to a consultation that is {0}")]
    RecordsNotAllowed(&'static str),
    #[error("the record was voided and cannot be changed")]
    RecordVoided,
    /// A command names another aggregate that does not exist (`field` is the request field).
    #[error("{field}: no such {what}")]
    UnknownReference {
        field: &'static str,
        what: &'static str,
    },
}

/// Test helper: the state after each command was accepted and its events applied.
#[cfg(test)]
pub(crate) fn given<A: Aggregate>(commands: impl IntoIterator<Item = A::Command>) -> A
where
    A::Command: std::fmt::Debug,
{
    commands.into_iter().fold(A::default(), |state, command| {
        let description = format!("{command:?}");
        let events = state
            .decide(command)
            .unwrap_or_else(|e| panic!("{description} was refused: {e}"));
        events.iter().fold(state, |s, e| s.evolve(e))
    })
}
