//! Durable deadlines: a row per saga deadline, started with the event that starts the saga
//! and moved between running, paused and fired only by conditional updates.
//!
//! Firing is not done here: a timer appends the event a deadline causes through
//! [`crate::Append::fires`], which moves the deadline to fired in the same statement as the
//! append. Pausing and firing both update only a running deadline, so whichever takes the row
//! lock first wins and the other changes nothing.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::EventStore;

/// A deadline to start with an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadlineStart {
    /// The saga's id: one deadline per saga.
    pub id: Uuid,
    /// What falls due (`scheduling`).
    pub kind: String,
    pub due_at: DateTime<Utc>,
}

/// What an attempt to pause a deadline found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// It was running and is paused now, or was paused already (a repeated confirmation).
    Paused,
    /// It fired first: the saga has timed out.
    Fired,
    /// There is no such deadline.
    Missing,
}

/// A deadline that has fallen due, as a timer needs it to fire.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Due {
    pub id: Uuid,
    pub tenant_id: String,
    pub kind: String,
    pub correlation_id: String,
    /// Who started the saga: the failure a firing appends is theirs too.
    pub actor_id: Option<String>,
    pub due_at: DateTime<Utc>,
}

impl EventStore {
    /// Pauses a running deadline, so that it cannot fire while its saga confirms.
    #[tracing::instrument(skip(self), err)]
    pub async fn pause_deadline(&self, id: Uuid) -> Result<Pause, sqlx::Error> {
        loop {
            // The update waits for a firing that holds the row, then re-checks the state the
            // firing left: one of the two wins.
            let paused = sqlx::query(
                "update deadlines set state = 'paused', updated_at = now()
                  where id = $1 and state = 'running'",
            )
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected()
                == 1;
            if paused {
                metrics::counter!("hap_deadlines_total", "transition" => "paused").increment(1);
                return Ok(Pause::Paused);
            }
            // Read what won, in a statement of its own so that its snapshot includes the
            // winner's commit. A deadline paused already (a repeated step) stays paused; one
            // resumed in between is paused again.
            match self.deadline_state(id).await?.as_deref() {
                Some("paused") => return Ok(Pause::Paused),
                Some("fired") => return Ok(Pause::Fired),
                Some(_) => continue,
                None => return Ok(Pause::Missing),
            }
        }
    }

    /// Lets a paused deadline run again (the confirmation it waited for failed). Returns
    /// whether it was paused; a deadline already overdue then falls due at once.
    #[tracing::instrument(skip(self), err)]
    pub async fn resume_deadline(&self, id: Uuid) -> Result<bool, sqlx::Error> {
        let resumed = sqlx::query(
            "update deadlines set state = 'running', updated_at = now()
              where id = $1 and state = 'paused'",
        )
        .bind(id)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        if resumed {
            metrics::counter!("hap_deadlines_total", "transition" => "resumed").increment(1);
            self.deadlines_changed.notify_waiters();
        }
        Ok(resumed)
    }

    /// Marks a running deadline fired without appending anything: its saga had ended already,
    /// so the failure it would cause is refused by the saga's own state.
    #[tracing::instrument(skip(self), err)]
    pub async fn retire_deadline(&self, id: Uuid) -> Result<(), sqlx::Error> {
        sqlx::query(
            "update deadlines set state = 'fired', updated_at = now()
              where id = $1 and state = 'running'",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Running deadlines due by now, oldest first. Rows another timer is firing right now
    /// are skipped, so several timers share the work; a row read by two still fires once
    /// (see [`crate::Append::fires`]).
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn due_deadlines(&self, limit: i64) -> Result<Vec<Due>, sqlx::Error> {
        sqlx::query_as(
            "select id, tenant_id, kind, correlation_id, actor_id, due_at from deadlines
              where state = 'running' and due_at <= now()
              order by due_at
              limit $1
              for update skip locked",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// When the next running deadline falls due, if any runs.
    pub async fn next_deadline(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        sqlx::query_scalar("select min(due_at) from deadlines where state = 'running'")
            .fetch_one(&self.pool)
            .await
    }

    /// The state of a deadline (`running`, `paused`, `fired`), for tests and operators.
    pub async fn deadline_state(&self, id: Uuid) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("select state from deadlines where id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
    }

    /// Resolves when a deadline was started or resumed through this store (or a clone), so a
    /// timer in this process need not wait for its next poll.
    pub async fn deadlines_changed(&self) {
        self.deadlines_changed.notified().await;
    }
}
