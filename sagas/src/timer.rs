//! The `timer` role: fires the deadlines that fall due. Any number of processes may run it: a
//! deadline's failure is appended only together with its conditional move from running to
//! fired (`CommandMeta::fires`), so it fires once, and never after its saga paused it.
//!
//! A fired deadline is a request, not a verdict: the consultation's own state decides. One
//! already scheduled or failed refuses the failure, and the deadline is retired unchanged.
//!
//! The timer also keeps the store tidy, beside the firing and without delaying it: once at
//! start and every [`HOUSEKEEPING`] it forgets idempotency keys older than the retention and
//! deadlines that stopped running as long ago ([`eventstore::EventStore::forget_older_than`]),
//! and counts the deadlines left running past due, for operators' alerts.

use std::time::Duration;

use commands::{CommandError, CommandMeta, Deadlines, Outcome, Pipeline, Target};
use domain::consultation::Consultation;
use domain::event::FailureReason;
use eventstore::housekeeping::Forgotten;
use eventstore::readiness::Part;
use eventstore::rounds::Rounds;
use eventstore::{Due, EventStore, Store};
use tokio_util::sync::CancellationToken;

use crate::send::outcome;

/// How often a timer looks for due deadlines when nothing wakes it: deadlines started by other
/// processes are found this late at most.
const POLL: Duration = Duration::from_millis(250);
/// The shortest wait between rounds: a due deadline that a round could not take is held by a
/// confirmation (or another timer) for a moment, and looking again at once would spin.
const BUSY: Duration = Duration::from_millis(20);
/// Due deadlines fired per round.
const ROUND: i64 = 100;
/// How often old idempotency keys and finished deadlines are deleted.
pub const HOUSEKEEPING: Duration = Duration::from_secs(60);
/// How often the overdue deadlines are counted (`hap_deadlines_overdue`), and how far past due
/// a deadline must be to count: a healthy timer fires one within a poll or two.
const OVERDUE: Duration = Duration::from_secs(5);

/// The timer over a store (PostgreSQL's, unless a test gives another); the deadlines' length
/// is its pipeline's.
#[derive(Clone)]
pub struct Timer<S = EventStore> {
    pub pipeline: Pipeline<S>,
    /// How long idempotency keys, and deadlines that stopped running, are kept.
    pub retention: Duration,
    /// Ready once a round of looking for due deadlines has worked, until one fails.
    pub ready: Part,
}

impl Timer {
    /// Fires due deadlines, and keeps house, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        tokio::join!(
            self.fire_until(&shutdown),
            self.keep_house_until(&shutdown),
            self.count_overdue_until(&shutdown)
        );
    }

    /// Sets `hap_deadlines_overdue` every [`OVERDUE`], apart from the firing, so that a timer
    /// stuck in a round still reports the deadlines it leaves behind.
    async fn count_overdue_until(&self, shutdown: &CancellationToken) {
        let mut rounds = Rounds::new(OVERDUE, shutdown);
        while rounds.next().await {
            match self.pipeline.store().overdue_deadlines(OVERDUE).await {
                Ok(count) => metrics::gauge!("hap_deadlines_overdue").set(count as f64),
                Err(error) => tracing::debug!(%error, "counting overdue deadlines failed"),
            }
        }
    }

    /// Deletes what the retention let go of now, then every [`HOUSEKEEPING`].
    async fn keep_house_until(&self, shutdown: &CancellationToken) {
        let mut rounds = Rounds::new(HOUSEKEEPING, shutdown);
        while rounds.next().await {
            // A backlog takes many batches; shutting down need not wait for them all.
            let round = tokio::select! {
                () = shutdown.cancelled() => return,
                round = self.housekeep() => round,
            };
            match round {
                Ok(forgotten) if forgotten != Forgotten::default() => tracing::info!(
                    idempotency_keys = forgotten.idempotency_keys,
                    deadlines = forgotten.deadlines,
                    processes = forgotten.processes,
                    "forgot what the retention let go of"
                ),
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "housekeeping failed; trying again at the next round");
                }
            }
        }
    }

    /// One round of housekeeping: deletes idempotency keys older than the retention, and
    /// deadlines that stopped running longer ago than that.
    pub async fn housekeep(&self) -> Result<Forgotten, sqlx::Error> {
        self.pipeline
            .store()
            .forget_older_than(self.retention)
            .await
    }

    async fn fire_until(&self, shutdown: &CancellationToken) {
        let store = self.pipeline.store().clone();
        loop {
            let round = self.fire_due().await;
            self.ready.set(round.is_ok());
            let fired_all = match round {
                Ok(count) => count < ROUND as usize,
                Err(error) => {
                    tracing::warn!(%error, "firing deadlines failed; trying again");
                    true
                }
            };
            if !fired_all {
                continue;
            }
            let wait = match store.next_deadline().await {
                Ok(Some(due)) => (due - chrono::Utc::now())
                    .to_std()
                    .unwrap_or_default()
                    .clamp(BUSY, POLL),
                _ => POLL,
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                () = store.deadlines_changed() => {}
            }
        }
    }
}

impl<S: Store> Timer<S> {
    /// Fires one round of due deadlines; how many were due.
    pub async fn fire_due(&self) -> Result<usize, sqlx::Error> {
        let due = self.pipeline.store().due_deadlines(ROUND).await?;
        let count = due.len();
        for deadline in due {
            if let Err(error) = self.fire(&deadline).await {
                tracing::warn!(deadline = %deadline.id, %error, "a deadline could not fire; it will be tried again");
            }
        }
        Ok(count)
    }

    /// Fires `due`: appends the failure it causes together with its move to fired, or
    /// retires it if its saga has ended already.
    pub async fn fire(&self, due: &Due) -> Result<(), CommandError> {
        let store = self.pipeline.store();
        let Some(firing) = self.pipeline.deadlines().firing(due) else {
            tracing::error!(deadline = %due.id, kind = %due.kind, "a deadline of an unknown kind is retired");
            return Deadlines::retire(store, due.id)
                .await
                .map_err(CommandError::Store);
        };
        let meta = CommandMeta {
            fires: Some(due.id),
            actor_id: due.actor_id.clone(),
            ..CommandMeta::new(&due.tenant_id, &due.correlation_id)
        };
        let result = self
            .pipeline
            .execute::<Consultation>(&meta, Target::Existing(firing.stream), firing.command)
            .await;
        match result {
            Ok(Outcome::Done(done)) if done.appended > 0 => {
                outcome("scheduling", FailureReason::TimedOut.as_str());
                Ok(())
            }
            // The consultation decided: it had already ended one way or the other.
            Ok(_) | Err(CommandError::Rejected(_)) => Deadlines::retire(store, due.id)
                .await
                .map_err(CommandError::Store),
            // Paused by its saga, or fired by another timer, first.
            Err(CommandError::DeadlineNotRunning) => Ok(()),
            Err(error) => Err(error),
        }
    }
}
