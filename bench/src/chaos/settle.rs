//! Waiting for the system to go quiet after the workload: every consultation at rest, no
//! deadline still running, every event published, every queue empty, and both read models caught up
//! with the store, three checks in a row a second apart with no new event in between.

use std::time::{Duration, Instant};

use anyhow::Context;
use domain::event::EVENTS;
use messaging::QueueNames;
use projections::queues::{QUEUES, QueueSpec};
use sqlx::PgPool;

use super::processes::INSTANCES;
use super::store;
use crate::broker::{ScratchBroker, open_channel};
use crate::system;

const EVERY: Duration = Duration::from_secs(1);
/// Checks in a row that must find nothing pending and no new event.
const QUIET_CHECKS: u32 = 3;

/// How the wait ended.
pub struct Settled {
    pub quiet: bool,
    pub waited: Duration,
    /// What was still pending at the last check (empty when quiet).
    pub pending: Vec<String>,
}

/// Waits up to `limit` for the system to go quiet.
pub async fn wait_for_quiet(
    pool: &PgPool,
    broker: &ScratchBroker,
    limit: Duration,
) -> anyhow::Result<Settled> {
    let started = Instant::now();
    let mut calm = 0;
    let mut last_position = None;
    loop {
        let pending = pending(pool, broker).await?;
        let position: Option<i64> = sqlx::query_scalar("select max(position) from events")
            .fetch_one(pool)
            .await
            .context("Failed to read the last position")?;
        calm = if pending.is_empty() && position == last_position {
            calm + 1
        } else {
            0
        };
        last_position = position;
        let waited = started.elapsed();
        if calm >= QUIET_CHECKS || waited >= limit {
            return Ok(Settled {
                quiet: calm >= QUIET_CHECKS,
                waited,
                pending,
            });
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// What keeps the system from being quiet, one line each.
async fn pending(pool: &PgPool, broker: &ScratchBroker) -> anyhow::Result<Vec<String>> {
    let mut pending = vec![];
    let unsettled = store::consultations(pool)
        .await?
        .into_iter()
        .filter(|c| !store::TERMINAL.contains(&c.status))
        .count();
    if unsettled > 0 {
        pending.push(format!("{unsettled} consultations not at rest"));
    }
    // A consultation that failed before its deadline leaves the deadline running until due
    // (only scheduling pauses it), so quiet waits for every one to fire: otherwise the
    // invariants could look a moment after a due time the timers have not yet polled past.
    let running: i64 = sqlx::query_scalar("select count(*) from deadlines where state = 'running'")
        .fetch_one(pool)
        .await
        .context("Failed to read the deadlines")?;
    if running > 0 {
        pending.push(format!("{running} deadlines still running"));
    }
    let last = system::last_checkpoint(pool).await?;
    if !system::publisher_reached(pool, broker.prefix(), last).await? {
        pending.push("events not yet published".to_owned());
    }
    for (queue, ready) in ready_messages(broker).await? {
        if ready > 0 {
            pending.push(format!("{ready} messages ready in {queue}"));
        }
    }
    for instance in INSTANCES {
        for spec in &QUEUES {
            let behind = streams_behind(pool, instance, spec).await?;
            if behind > 0 {
                let projection = (spec.projector)().name();
                pending.push(format!(
                    "{behind} streams behind in {instance}'s {projection} projection"
                ));
            }
        }
    }
    Ok(pending)
}

/// The queues a run consumes from (both instances' and the sagas', each with its retry
/// queue), with how many messages wait in each.
async fn ready_messages(broker: &ScratchBroker) -> anyhow::Result<Vec<(String, u32)>> {
    let connection = broker.connect("settle").await?;
    let channel = open_channel(&connection).await?;
    let mut counts = vec![];
    for names in consumed_queues(broker.prefix()) {
        for queue in [names.main, names.retry] {
            let declared = messaging::topology::look_up(&channel, &queue)
                .await
                .with_context(|| format!("Failed to look at {queue}"))?;
            counts.push((queue, declared.message_count()));
        }
    }
    connection.close(200, "done".into()).await.ok();
    Ok(counts)
}

/// Every queue of the run that a process consumes: each instance's projector queues and the
/// saga services' shared queues.
pub fn consumed_queues(prefix: &str) -> Vec<QueueNames> {
    INSTANCES
        .iter()
        .flat_map(|instance| {
            QUEUES
                .iter()
                .map(move |spec| QueueNames::new(prefix, spec.service.name(), instance))
        })
        .chain(
            domain::service::Service::ALL
                .into_iter()
                .map(|service| QueueNames::shared(prefix, service.name())),
        )
        .collect()
}

/// Streams whose last version in the store `instance`'s projection of `spec` has not reached
/// (by its `stream_versions`): the streams of every aggregate whose events its queue is bound
/// to receive.
async fn streams_behind(pool: &PgPool, instance: &str, spec: &QueueSpec) -> anyhow::Result<i64> {
    let mut aggregates: Vec<&str> = EVENTS
        .iter()
        .filter(|event| {
            spec.bindings()
                .iter()
                .any(|(exchange, _)| *exchange == event.route.exchange.suffix())
        })
        .map(|event| event.route.aggregate.as_str())
        .collect();
    aggregates.sort_unstable();
    aggregates.dedup();
    let schema = projections::schema::schema_name(instance);
    let projection = (spec.projector)().name();
    // The schema name is HAP's own cleaned form of a constant instance name.
    let statement = format!(
        "select count(*) from (
             select stream_id, max(version) as version from events
              where aggregate_type = any($1)
              group by stream_id) s
          left join {schema}.stream_versions v
                 on v.projection = $2 and v.stream_id = s.stream_id
         where v.version is distinct from s.version"
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(statement))
        .bind(aggregates)
        .bind(projection)
        .fetch_one(pool)
        .await
        .with_context(|| format!("Failed to compare {schema} with the store"))
}
