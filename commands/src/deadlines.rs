//! Saga deadlines on the command side, all in one place: how long one runs, the appends that
//! start, pause and fire one (each in the same statement as its events), what a due one sends,
//! retiring one whose saga has ended, and counting a pause that was undone.
//!
//! The rows themselves, and the guard that lets only one of a pause and a firing through, are
//! the store's (`eventstore::deadlines`).

use std::time::Duration;

use domain::Event;
use domain::consultation::ConsultationCommand;
use domain::event::FailureReason;
use domain::saga::SCHEDULING_DEADLINE;
use eventstore::{DeadlineEnd, DeadlineStart, Due, Ending, Store};
use uuid::Uuid;

use crate::stored;

/// The deadlines that events start, and how long they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// How long a saga deadline runs after the event that starts it.
    duration: Duration,
}

/// What a due deadline sends when it fires: the failure it causes, to its saga's stream.
#[derive(Debug, Clone)]
pub struct Firing {
    pub stream: Uuid,
    pub command: ConsultationCommand,
}

impl Deadlines {
    pub fn new(duration: Duration) -> Self {
        Self { duration }
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Start: the deadlines `events` start, due one duration from now.
    pub fn started_by(&self, events: &[Event]) -> Vec<DeadlineStart> {
        let due_at = stored::now()
            + chrono::TimeDelta::from_std(self.duration).unwrap_or(chrono::TimeDelta::MAX);
        events
            .iter()
            .filter_map(Event::starts_deadline)
            .map(|(id, kind)| DeadlineStart {
                id,
                kind: kind.to_owned(),
                due_at,
            })
            .collect()
    }

    /// Pause or fire: the running deadline an append of `events` ends. The timer's append of
    /// the failure fires the deadline it `fires`; a saga's confirmation pauses its own.
    pub fn ended_by(fires: Option<Uuid>, events: &[Event]) -> Option<DeadlineEnd> {
        let fired = fires.map(|id| DeadlineEnd {
            id,
            how: Ending::Fired,
        });
        let paused = || {
            events
                .iter()
                .find_map(Event::pauses_deadline)
                .map(|id| DeadlineEnd {
                    id,
                    how: Ending::Paused,
                })
        };
        fired.or_else(paused)
    }

    /// Fire: what `due` sends when it fires, or `None` for a kind this version does not
    /// know (to retire).
    pub fn firing(&self, due: &Due) -> Option<Firing> {
        (due.kind == SCHEDULING_DEADLINE).then(|| Firing {
            stream: due.id,
            command: ConsultationCommand::FailScheduling {
                reason: FailureReason::TimedOut,
                detail: format!(
                    "the consultation was not confirmed within {} ms",
                    self.duration.as_millis()
                ),
            },
        })
    }

    /// Retire: marks a running deadline fired without appending anything, its saga having
    /// ended already (the failure it would cause is refused by the saga's own state).
    pub async fn retire<S: Store>(store: &S, id: Uuid) -> Result<(), sqlx::Error> {
        store.retire_deadline(id).await
    }

    /// Resume: a confirmation whose write failed took its pause back with it, so the deadline
    /// runs again (and fires at once if it is overdue by then). Counted, as pauses and
    /// firings are.
    pub fn resumed() {
        metrics::counter!("hap_deadlines_total", "transition" => "resumed").increment(1);
    }
}
