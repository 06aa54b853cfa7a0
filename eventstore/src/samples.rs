//! What each process measured of itself, recorded with its heartbeat ([`Vitals`]), so that
//! the console, served by any process, shows the figures of all of them: who leads the
//! publisher, each instance's projector lag and queue depths, and the rates of commands and
//! errors over the last minutes. Samples are kept for [`KEPT`] only.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::EventStore;

/// How long samples are kept: a little more than the console plots.
pub const KEPT: Duration = Duration::from_secs(15 * 60);

/// One process's own figures at one moment. The counters are totals since it started.
#[derive(Debug, Clone, Default, PartialEq, sqlx::FromRow)]
pub struct Vitals {
    pub commands: i64,
    /// Commands answered with a server error (5xx): HAP's failures, not the clients'.
    pub command_errors: i64,
    /// Whether it holds the publisher's leader lock.
    pub publisher_leader: bool,
    /// The largest lag of its projectors.
    pub projector_lag_seconds: f64,
    /// Messages waiting in its projectors' queues.
    pub queue_depth: i64,
    /// Messages in its projectors' dead-letter queues.
    pub dead_letters: i64,
}

/// A process's latest sample.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Latest {
    pub process_id: Uuid,
    pub sampled_at: DateTime<Utc>,
    #[sqlx(flatten)]
    pub vitals: Vitals,
}

/// The rates of every process together over one step of time.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Rate {
    /// Where the step starts.
    pub at: DateTime<Utc>,
    pub commands_per_second: f64,
    pub errors_per_second: f64,
}

impl EventStore {
    /// Records a sample of process `id` (recorded already) and forgets every sample older
    /// than [`KEPT`]: each beat of each process trims a little, so no job is needed for it.
    pub async fn record_sample(&self, id: Uuid, vitals: &Vitals) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "insert into process_samples (process_id, commands, command_errors,
                    publisher_leader, projector_lag_seconds, queue_depth, dead_letters)
             values ($1, $2, $3, $4, $5, $6, $7)
             on conflict do nothing",
        )
        .bind(id)
        .bind(vitals.commands)
        .bind(vitals.command_errors)
        .bind(vitals.publisher_leader)
        .bind(vitals.projector_lag_seconds)
        .bind(vitals.queue_depth)
        .bind(vitals.dead_letters)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "delete from process_samples where sampled_at < now() - $1 * interval '1 second'",
        )
        .bind(KEPT.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// The latest sample of every recorded process that has one.
    pub async fn latest_samples(&self) -> Result<Vec<Latest>, sqlx::Error> {
        sqlx::query_as(
            "select distinct on (process_id) process_id, sampled_at, commands, command_errors,
                    publisher_leader, projector_lag_seconds, queue_depth, dead_letters
               from process_samples order by process_id, sampled_at desc",
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Commands and errors per second of every process together, in steps of `step` over
    /// the last `span`, oldest first; a step without samples counts none. Each process's
    /// counters are differenced sample to sample, so a process that starts or stops within
    /// the span adds only what it did meanwhile.
    pub async fn command_rates(
        &self,
        span: Duration,
        step: Duration,
    ) -> Result<Vec<Rate>, sqlx::Error> {
        sqlx::query_as(
            "with differences as (
                 select sampled_at,
                        commands - lag(commands) over by_process as commands,
                        command_errors - lag(command_errors) over by_process as errors
                   from process_samples
                  where sampled_at > now() - ($1 + $2) * interval '1 second'
                 window by_process as (partition by process_id order by sampled_at)
             ),
             steps as (
                 select generate_series(
                            date_bin($2 * interval '1 second', now() - $1 * interval '1 second',
                                     timestamptz '2000-01-01'),
                            date_bin($2 * interval '1 second', now(), timestamptz '2000-01-01'),
                            $2 * interval '1 second') as at
             )
             select steps.at,
                    coalesce(sum(greatest(d.commands, 0)), 0)::float8 / $2 as commands_per_second,
                    coalesce(sum(greatest(d.errors, 0)), 0)::float8 / $2 as errors_per_second
               from steps
               left join differences d
                 on date_bin($2 * interval '1 second', d.sampled_at, timestamptz '2000-01-01')
                    = steps.at
              group by steps.at order by steps.at",
        )
        .bind(span.as_secs_f64())
        .bind(step.as_secs_f64())
        .fetch_all(&self.pool)
        .await
    }
}
