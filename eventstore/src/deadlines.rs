//! Durable deadlines: a row per saga deadline, started with the event that starts the saga
//! and moved out of running only by conditional updates.
//!
//! Pausing and firing are not done here: the append of the saga's confirmation pauses its
//! deadline, and a timer's append of the failure a deadline causes fires it, each in the same
//! statement as its events ([`crate::Append::ends`]). Both update only a running deadline, so
//! whichever takes the row lock first wins and the other appends nothing. What starts, pauses,
//! fires and retires a deadline, and for how long it runs, is the command side's
//! (`commands::deadlines`).

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

/// How an append ends a running deadline (see [`crate::Append::ends`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadlineEnd {
    /// The saga's id.
    pub id: Uuid,
    pub how: Ending,
}

/// The state an append moves a running deadline to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Its saga confirmed first: it never fires. The pause commits with the confirmation, so
    /// a confirmation that fails leaves the deadline running (an overdue one then fires at
    /// once), and no pause outlives the step that took it.
    Paused,
    /// It fell due, and the failure it causes is the append.
    Fired,
}

impl Ending {
    /// The deadline's state afterwards.
    pub fn state(self) -> DeadlineState {
        match self {
            Self::Paused => DeadlineState::Paused,
            Self::Fired => DeadlineState::Fired,
        }
    }

    /// The state's name, as the `deadlines` table and metrics give it.
    pub fn as_str(self) -> &'static str {
        self.state().as_str()
    }
}

/// The running state's name in a macro, for SQL that `concat!` builds whole (housekeeping's).
macro_rules! running {
    () => {
        "running"
    };
}
pub(crate) use running;

/// Where a deadline is: the one place its states are named (SQL binds these names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineState {
    /// Counting down; only a running deadline can be paused or fired.
    Running,
    Paused,
    Fired,
}

impl DeadlineState {
    /// As the `deadlines` table stores it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => running!(),
            Self::Paused => "paused",
            Self::Fired => "fired",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [Self::Running, Self::Paused, Self::Fired]
            .into_iter()
            .find(|state| state.as_str() == name)
    }
}

/// How many deadlines are in each state an operator watches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct DeadlineCounts {
    pub running: i64,
    pub paused: i64,
    /// Running past their due time: no timer has fired them yet.
    pub overdue: i64,
}

/// One saga's deadline, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeadlineRow {
    pub id: Uuid,
    pub due_at: DateTime<Utc>,
    pub state: String,
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
    /// Marks a running deadline fired without appending anything: its saga had ended already,
    /// so the failure it would cause is refused by the saga's own state.
    #[tracing::instrument(skip(self), err)]
    pub async fn retire_deadline(&self, id: Uuid) -> Result<(), sqlx::Error> {
        sqlx::query(
            "update deadlines set state = $2, updated_at = now() where id = $1 and state = $3",
        )
        .bind(id)
        .bind(DeadlineState::Fired.as_str())
        .bind(DeadlineState::Running.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Running deadlines due by now, oldest first. Rows another timer is firing right now
    /// are skipped, so several timers share the work; a row read by two still fires once
    /// (see [`crate::Append::ends`]).
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn due_deadlines(&self, limit: i64) -> Result<Vec<Due>, sqlx::Error> {
        // The state is spelled out, not bound: only then does the planner use the partial
        // index of running deadlines.
        sqlx::query_as(concat!(
            "select id, tenant_id, kind, correlation_id, actor_id, due_at from deadlines
              where state = '",
            running!(),
            "' and due_at <= now()
              order by due_at
              limit $1
              for update skip locked"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// When the next running deadline falls due, if any runs.
    pub async fn next_deadline(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        sqlx::query_scalar(concat!(
            "select min(due_at) from deadlines where state = '",
            running!(),
            "'"
        ))
        .fetch_one(&self.pool)
        .await
    }

    /// How many running deadlines are more than `grace` past due: ones no timer has fired.
    pub async fn overdue_deadlines(&self, grace: std::time::Duration) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(concat!(
            "select count(*) from deadlines where state = '",
            running!(),
            "' and due_at < now() - make_interval(secs => $1)"
        ))
        .bind(grace.as_secs_f64())
        .fetch_one(&self.pool)
        .await
    }

    /// How many deadlines run, are paused or are overdue (running past due), of tenant
    /// `tenant_id` or (`None`) of every tenant.
    pub async fn deadline_counts(
        &self,
        tenant_id: Option<&str>,
    ) -> Result<DeadlineCounts, sqlx::Error> {
        sqlx::query_as(concat!(
            "select count(*) filter (where state = '",
            running!(),
            "') as running,
                    count(*) filter (where state = 'paused') as paused,
                    count(*) filter (where state = '",
            running!(),
            "' and due_at < now()) as overdue
               from deadlines where $1::text is null or tenant_id = $1"
        ))
        .bind(tenant_id)
        .fetch_one(&self.pool)
        .await
    }

    /// The deadlines of the sagas `ids` (those that have one), as operators see them.
    pub async fn deadlines_of(&self, ids: &[Uuid]) -> Result<Vec<DeadlineRow>, sqlx::Error> {
        sqlx::query_as("select id, due_at, state from deadlines where id = any($1)")
            .bind(ids)
            .fetch_all(&self.pool)
            .await
    }

    /// The state of a deadline (`running`, `paused`, `fired`), for tests and operators.
    pub async fn deadline_state(&self, id: Uuid) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("select state from deadlines where id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
    }

    /// Resolves when a deadline was started through this store (or a clone), so a timer in
    /// this process need not wait for its next poll.
    pub async fn deadlines_changed(&self) {
        self.deadlines_changed.notified().await;
    }
}
