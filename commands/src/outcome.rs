//! What a command comes to when it is carried out, and what its idempotency key remembers of
//! that: an outcome, not an answer in any transport's terms. Each sender (the HTTP API, a saga
//! step) makes its own answer from it, the first time and on a repeat alike.

use eventstore::{Position, StreamVersion};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A command carried out: the stream's version and last position after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    pub stream_id: Uuid,
    pub version: StreamVersion,
    /// The position of the stream's last event (`None` for a stream with none).
    pub position: Option<Position>,
    /// How many events the command appended (0: it changed nothing).
    pub appended: usize,
}

/// What an idempotency key keeps of the command first carried out under it, stored as JSON
/// with the command's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    /// What the command made or changed: its stream, unless its sender named something in
    /// the stream (`CommandMeta::subject`).
    pub id: Uuid,
    pub version: StreamVersion,
    /// The position of the stream's last event after the command; the store fills it in
    /// once the events have one.
    pub position: Option<Position>,
    /// Whether the command appended anything (an erasure repeated did not); keys remembered
    /// before this was kept read as changed.
    #[serde(default = "changed_before_it_was_kept")]
    pub changed: bool,
}

fn changed_before_it_was_kept() -> bool {
    true
}

impl Remembered {
    /// What to remember of `done`, a command on `subject` (or on its stream if `None`).
    pub fn of(done: &Done, subject: Option<Uuid>) -> Self {
        Self {
            id: subject.unwrap_or(done.stream_id),
            version: done.version,
            position: done.position,
            changed: done.appended > 0,
        }
    }
}

#[derive(Debug)]
pub enum Outcome {
    Done(Done),
    /// The idempotency key was used before with the same request: what it remembered.
    Replayed(Remembered),
}
