//! `GET /console`: is anything wrong, and where? The processes and their heartbeats, the
//! publisher's lag, the deadlines, and the depth of this instance's queues.

use axum::extract::State;
use chrono::{DateTime, Utc};
use eventstore::processes::RecordedProcess;
use eventstore::{DeadlineCounts, Lag};
use maud::{Markup, html};
use serde::Serialize;

use crate::console::layout::{age, card, frame, moment};
use crate::console::session::Operator;
use crate::error::ApiError;
use crate::state::AppState;

/// What the overview shows, read in one go.
pub struct Snapshot {
    pub now: DateTime<Utc>,
    pub processes: Vec<RecordedProcess>,
    pub lag: Lag,
    /// Of the operator's tenant, or of every tenant for a platform operator.
    pub deadlines: DeadlineCounts,
    pub queues: Vec<QueueDepth>,
}

/// A queue's depth as this process's consumers last measured it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDepth {
    pub queue: String,
    pub messages: i64,
    pub dead_letters: bool,
}

/// The overview's numbers, as `/console/live` sends them: the names are the page's
/// `data-live` attributes.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Numbers {
    pub processes_up: i64,
    pub processes_gone: i64,
    pub lag_events: i64,
    pub lag_seconds: i64,
    pub deadlines_running: i64,
    pub deadlines_paused: i64,
    pub deadlines_overdue: i64,
    pub dead_letters: i64,
}

impl Snapshot {
    pub async fn read(app: &AppState, operator: &Operator) -> Result<Self, ApiError> {
        let store = app.commands.store();
        // The publisher keeps its checkpoint under the exchange prefix it publishes to.
        let checkpoint = store
            .publisher_checkpoint(&app.settings.exchange_prefix)
            .await?;
        Ok(Self {
            now: Utc::now(),
            processes: store.processes().await?,
            lag: store.lag_behind(checkpoint).await?,
            deadlines: store.deadline_counts(operator.tenant()).await?,
            queues: queue_depths(&app.metrics.render(), &app.settings.exchange_prefix),
        })
    }

    pub fn numbers(&self) -> Numbers {
        let gone = self
            .processes
            .iter()
            .filter(|p| p.is_gone(self.now))
            .count() as i64;
        Numbers {
            processes_up: self.processes.len() as i64 - gone,
            processes_gone: gone,
            lag_events: self.lag.events,
            lag_seconds: self.lag.seconds.round() as i64,
            deadlines_running: self.deadlines.running,
            deadlines_paused: self.deadlines.paused,
            deadlines_overdue: self.deadlines.overdue,
            dead_letters: (self.queues.iter())
                .filter(|q| q.dead_letters)
                .map(|q| q.messages)
                .sum(),
        }
    }
}

/// The queue depths under `prefix` in this process's metrics (`metrics` is their Prometheus
/// text): what its consumers measured last, without a round trip to the broker. A process
/// without consumers (`query` only) has none.
fn queue_depths(metrics: &str, prefix: &str) -> Vec<QueueDepth> {
    let ours = format!("{prefix}.");
    let mut depths: Vec<QueueDepth> = metrics
        .lines()
        .filter_map(|line| {
            let (dead_letters, rest) =
                if let Some(rest) = line.strip_prefix("hap_dead_letter_queue_depth{queue=\"") {
                    (true, rest)
                } else {
                    (
                        false,
                        line.strip_prefix("hap_projector_queue_depth{queue=\"")?,
                    )
                };
            let (queue, value) = rest.split_once("\"} ")?;
            Some(QueueDepth {
                queue: queue.to_owned(),
                messages: value.trim().parse::<f64>().ok()? as i64,
                dead_letters,
            })
        })
        .filter(|depth| depth.queue.starts_with(&ours))
        .collect();
    depths.sort_by(|a, b| a.queue.cmp(&b.queue));
    depths
}

pub async fn page(State(app): State<AppState>, operator: Operator) -> Result<Markup, ApiError> {
    let snapshot = Snapshot::read(&app, &operator).await?;
    let numbers = snapshot.numbers();
    let now = snapshot.now;
    let body = html! {
        h1 { "Overview" }
        div.cards {
            (card("processes up", numbers.processes_up, "processesUp", false))
            (card("processes gone", numbers.processes_gone, "processesGone", true))
            (card("events not yet published", numbers.lag_events, "lagEvents", false))
            (card("seconds of publisher lag", numbers.lag_seconds, "lagSeconds", false))
            (card("deadlines overdue", numbers.deadlines_overdue, "deadlinesOverdue", true))
            (card("deadlines running", numbers.deadlines_running, "deadlinesRunning", false))
            (card("deadlines paused", numbers.deadlines_paused, "deadlinesPaused", false))
            (card("dead letters", numbers.dead_letters, "deadLetters", true))
        }
        h2 { "Processes" }
        table {
            tr { th { "Instance" } th { "Roles" } th { "Version" } th { "Host" } th { "Listens on" }
                 th { "Started" } th { "Last heartbeat" } th { "State" } }
            @for process in &snapshot.processes {
                @let gone = process.is_gone(now);
                tr.bad[gone] {
                    td { (process.info.instance) }
                    td { (process.info.roles.join(", ")) }
                    td { (process.info.version) }
                    td { (process.info.host) " (pid " (process.info.pid) ")" }
                    td { code { (process.info.http_addr) } }
                    td { (moment(process.started_at)) }
                    td { (age(process.heartbeat_at, now)) " ago" }
                    td { @if gone { "gone" } @else { "up" } }
                }
            }
        }
        h2 { "Queues of this instance" }
        @if snapshot.queues.is_empty() {
            p.muted { "This process runs no consumers, so it has measured no queue." }
        } @else {
            table {
                tr { th { "Queue" } th.num { "Messages" } }
                @for depth in &snapshot.queues {
                    tr.bad[depth.dead_letters && depth.messages > 0] {
                        td { code { (depth.queue) } }
                        td.num { (depth.messages) }
                    }
                }
            }
        }
        p.muted { "Numbers follow live; the tables are as of " (moment(now)) " UTC." }
        script src="/console/assets/live.js" defer {}
    };
    Ok(frame("Overview", Some(&operator.0), body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_depths_are_read_from_this_instances_metrics() {
        let metrics = "\
# TYPE hap_dead_letter_queue_depth gauge
hap_dead_letter_queue_depth{queue=\"hap.scheduling-service.i1.events.dlq\"} 3
hap_projector_queue_depth{queue=\"hap.scheduling-service.i1.events\"} 0
hap_dead_letter_queue_depth{queue=\"other.scheduling-service.i1.events.dlq\"} 9
hap_commands_total{route=\"x\"} 1
";
        let depths = queue_depths(metrics, "hap");
        assert_eq!(
            depths,
            vec![
                QueueDepth {
                    queue: "hap.scheduling-service.i1.events".into(),
                    messages: 0,
                    dead_letters: false
                },
                QueueDepth {
                    queue: "hap.scheduling-service.i1.events.dlq".into(),
                    messages: 3,
                    dead_letters: true
                },
            ]
        );
    }
}
