//! `GET /console`: is anything wrong, and where? The processes and their heartbeats, which
//! one leads the publisher and its lag, each instance's projector lag, the deadlines; for a
//! platform operator also how many events wait to be published, every instance's queue depths
//! and the rates of commands and errors over the last minutes.
//!
//! Every figure comes from the database, where each process records its own with its
//! heartbeat ([`eventstore::samples`]): the console is served by any query process, and must
//! show the same whichever one the operator reaches. The events waiting to be published,
//! queue depths, dead letters and command rates count every tenant's events, messages and
//! requests, so a clinic's operator does not see them; processes, leadership and lags (in
//! seconds) are the health of what every tenant shares.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::State;
use chrono::{DateTime, Utc};
use eventstore::processes::RecordedProcess;
use eventstore::samples::{Rate, Vitals};
use eventstore::{DeadlineCounts, Lag};
use maud::{Markup, html};
use serde::Serialize;
use uuid::Uuid;

use crate::console::layout::{age, bars, card, frame, moment};
use crate::console::session::Operator;
use crate::error::ApiError;
use crate::state::AppState;

/// How far back the plots of commands and errors reach, and the width of each bar.
const PLOTTED: Duration = Duration::from_secs(10 * 60);
const STEP: Duration = Duration::from_secs(30);

/// A recorded process with its latest figures, if it has recorded any yet.
pub struct Process {
    pub recorded: RecordedProcess,
    pub vitals: Option<Vitals>,
}

/// What the overview shows, read in one go.
pub struct Snapshot {
    pub now: DateTime<Utc>,
    pub processes: Vec<Process>,
    pub lag: Lag,
    /// Of the operator's tenant, or of every tenant for a platform operator.
    pub deadlines: DeadlineCounts,
    /// Commands and errors per second of every process, oldest step first; only for a
    /// platform operator.
    pub rates: Option<Vec<Rate>>,
}

/// The overview's numbers, as `/console/live` sends them: the names are the page's
/// `data-live` attributes. Those of every tenant are left out for a clinic's operator.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Numbers {
    pub processes_up: i64,
    pub processes_gone: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_events: Option<i64>,
    pub lag_seconds: i64,
    pub deadlines_running: i64,
    pub deadlines_paused: i64,
    pub deadlines_overdue: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letters: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commands_per_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors_per_second: Option<f64>,
}

impl Snapshot {
    pub async fn read(app: &AppState, operator: &Operator) -> Result<Self, ApiError> {
        let store = app.commands.store();
        // The publisher keeps its checkpoint under the exchange prefix it publishes to.
        let checkpoint = store
            .publisher_checkpoint(&app.settings.exchange_prefix)
            .await?;
        let mut latest: HashMap<Uuid, Vitals> = (store.latest_samples().await?)
            .into_iter()
            .map(|sample| (sample.process_id, sample.vitals))
            .collect();
        let processes = (store.processes().await?)
            .into_iter()
            .map(|recorded| Process {
                vitals: latest.remove(&recorded.id),
                recorded,
            })
            .collect();
        let rates = match operator.tenant() {
            None => Some(store.command_rates(PLOTTED, STEP).await?),
            Some(_) => None,
        };
        Ok(Self {
            now: Utc::now(),
            processes,
            lag: store.lag_behind(checkpoint).await?,
            deadlines: store.deadline_counts(operator.tenant()).await?,
            rates,
        })
    }

    /// The processes still beating.
    fn up(&self) -> impl Iterator<Item = &Process> {
        (self.processes.iter()).filter(|p| !p.recorded.is_gone(self.now))
    }

    /// The running process that holds the publisher's leader lock, as it last said.
    pub fn leader(&self) -> Option<&Process> {
        self.up()
            .find(|p| p.vitals.as_ref().is_some_and(|v| v.publisher_leader))
    }

    /// The last full step's rates: the current step is still filling.
    fn current_rate(&self) -> Option<&Rate> {
        let rates = self.rates.as_ref()?;
        rates.iter().rev().nth(1).or(rates.last())
    }

    pub fn numbers(&self) -> Numbers {
        let up = self.up().count() as i64;
        let platform = self.rates.is_some();
        Numbers {
            processes_up: up,
            processes_gone: self.processes.len() as i64 - up,
            lag_events: platform.then_some(self.lag.events),
            lag_seconds: self.lag.seconds.round() as i64,
            deadlines_running: self.deadlines.running,
            deadlines_paused: self.deadlines.paused,
            deadlines_overdue: self.deadlines.overdue,
            dead_letters: platform.then(|| {
                self.up()
                    .filter_map(|p| p.vitals.as_ref())
                    .map(|v| v.dead_letters)
                    .sum()
            }),
            commands_per_second: self.current_rate().map(|r| round(r.commands_per_second)),
            errors_per_second: self.current_rate().map(|r| round(r.errors_per_second)),
        }
    }
}

/// To two decimals, as the page shows rates.
fn round(rate: f64) -> f64 {
    (rate * 100.0).round() / 100.0
}

pub async fn page(State(app): State<AppState>, operator: Operator) -> Result<Markup, ApiError> {
    let snapshot = Snapshot::read(&app, &operator).await?;
    let numbers = snapshot.numbers();
    let now = snapshot.now;
    let leader = snapshot.leader();
    let body = html! {
        h1 { "Overview" }
        div.cards {
            (card("processes up", numbers.processes_up, "processesUp", false))
            (card("processes gone", numbers.processes_gone, "processesGone", true))
            @if let Some(lag_events) = numbers.lag_events {
                (card("events not yet published", lag_events, "lagEvents", false))
            }
            (card("seconds of publisher lag", numbers.lag_seconds, "lagSeconds", false))
            (card("deadlines overdue", numbers.deadlines_overdue, "deadlinesOverdue", true))
            (card("deadlines running", numbers.deadlines_running, "deadlinesRunning", false))
            (card("deadlines paused", numbers.deadlines_paused, "deadlinesPaused", false))
            @if let Some(dead_letters) = numbers.dead_letters {
                (card("dead letters", dead_letters, "deadLetters", true))
            }
        }
        h2 { "Publisher" }
        @match leader {
            Some(leader) => p #leader {
                "Leader: " strong { (leader.recorded.info.instance) } " on "
                (leader.recorded.info.host) " (pid " (leader.recorded.info.pid) "), "
                @if let Some(lag_events) = numbers.lag_events { (lag_events) " events and " }
                span.lag-seconds { (format!("{:.1}", snapshot.lag.seconds)) } " s behind the store."
            },
            None => p #leader .notice {
                "No running process says it leads the publisher: events wait to be published"
                @if let Some(lag_events) = numbers.lag_events { " (" (lag_events) " now)" }
                "."
            },
        }
        h2 { "Processes" }
        table {
            tr { th { "Instance" } th { "Roles" } th { "Version" } th { "Host" } th { "Listens on" }
                 th { "Started" } th { "Last heartbeat" } th { "State" } th.num { "Projector lag (s)" } }
            @for process in &snapshot.processes {
                @let recorded = &process.recorded;
                @let gone = recorded.is_gone(now);
                tr.bad[gone] {
                    td { (recorded.info.instance) }
                    td { (recorded.info.roles.join(", ")) }
                    td { (recorded.info.version) }
                    td { (recorded.info.host) " (pid " (recorded.info.pid) ")" }
                    td { code { (recorded.info.http_addr) } }
                    td { (moment(recorded.started_at)) }
                    td { (age(recorded.heartbeat_at, now)) " ago" }
                    td {
                        @if gone { "gone" } @else { "up" }
                        @if process.vitals.as_ref().is_some_and(|v| v.publisher_leader) && !gone {
                            ", publisher leader"
                        }
                    }
                    td.num {
                        @if let Some(vitals) = &process.vitals {
                            (format!("{:.1}", vitals.projector_lag_seconds))
                        }
                    }
                }
            }
        }
        @if let Some(rates) = &snapshot.rates {
            (every_tenant(&snapshot, rates, &numbers))
        } @else {
            p.muted { "The events waiting to be published, queue depths, dead letters and the \
                       rates of commands count every tenant's events and messages: they are \
                       shown to platform operators only." }
        }
        p.muted { "Numbers follow live; the tables are as of " (moment(now)) " UTC." }
        script src="/console/assets/live.js" defer {}
    };
    Ok(frame("Overview", Some(&operator.0), body))
}

/// The figures that count every tenant: the rates of commands and errors with their plots,
/// and each running process's queues.
fn every_tenant(snapshot: &Snapshot, rates: &[Rate], numbers: &Numbers) -> Markup {
    let commands: Vec<f64> = rates.iter().map(|r| r.commands_per_second).collect();
    let errors: Vec<f64> = rates.iter().map(|r| r.errors_per_second).collect();
    let minutes = PLOTTED.as_secs() / 60;
    let step = STEP.as_secs();
    html! {
        h2 { "Commands, last " (minutes) " minutes" }
        table.rates {
            tr { th { "" } th.num { "Per second now" } th { "Every " (step) " s" } }
            tr {
                td { "Commands" }
                td.num data-live="commandsPerSecond" { (numbers.commands_per_second.unwrap_or(0.0)) }
                td { (bars(&commands, "commands per second")) }
            }
            tr {
                td { "Errors (5xx)" }
                td.num data-live="errorsPerSecond" { (numbers.errors_per_second.unwrap_or(0.0)) }
                td { (bars(&errors, "errors per second")) }
            }
        }
        h2 { "Queues per instance" }
        table {
            tr { th { "Instance" } th { "Host" } th.num { "Waiting in its projectors' queues" }
                 th.num { "Dead letters" } }
            @for process in snapshot.up() {
                @if let Some(vitals) = &process.vitals {
                    tr.bad[vitals.dead_letters > 0] {
                        td { (process.recorded.info.instance) }
                        td { (process.recorded.info.host) " (pid " (process.recorded.info.pid) ")" }
                        td.num { (vitals.queue_depth) }
                        td.num { (vitals.dead_letters) }
                    }
                }
            }
        }
    }
}
