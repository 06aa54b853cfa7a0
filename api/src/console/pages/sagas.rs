//! `GET /console/sagas`: the scheduling sagas. Consultations still `requested` with their
//! last step and age, those past their deadline first and marked; the deadlines' counts; and
//! the failures of the last day by reason, charted per hour. Of the operator's tenant, unless a platform
//! operator's.

use std::collections::HashMap;

use axum::extract::State;
use chrono::{DateTime, Utc};
use eventstore::read::HourlyCount;
use maud::{Markup, html};
use uuid::Uuid;

use crate::console::layout::{age, bars, card, frame, moment};
use crate::console::session::Operator;
use crate::error::ApiError;
use crate::state::AppState;

/// How many consultations in flight the page lists.
const IN_FLIGHT_SHOWN: i64 = 200;

/// A consultation whose saga has not finished.
#[derive(Debug, sqlx::FromRow)]
struct InFlight {
    id: Uuid,
    tenant_id: String,
    version: i64,
    updated_at: DateTime<Utc>,
}

/// How many hours back the failures are charted.
const FAILURE_HOURS: i32 = 24;

/// The failures of one reason, per hour of the last [`FAILURE_HOURS`] (oldest first).
#[derive(Debug, PartialEq)]
struct Failures {
    reason: String,
    per_hour: Vec<f64>,
    total: i64,
}

/// One row of the page: a consultation in flight with what the event store says of it.
struct Row {
    consultation: InFlight,
    step: Option<String>,
    due_at: Option<DateTime<Utc>>,
    deadline: Option<String>,
}

impl Row {
    fn is_stuck(&self, now: DateTime<Utc>) -> bool {
        self.due_at.is_some_and(|due| due < now)
    }
}

async fn in_flight(app: &AppState, tenant: Option<&str>) -> Result<Vec<InFlight>, ApiError> {
    Ok(sqlx::query_as(
        "select c.id, t.tenant_id, c.version, c.updated_at
           from consultations c
           join stream_versions t on t.stream_id = c.id and t.projection = 'consultations'
          where c.status = 'requested' and ($1::text is null or t.tenant_id = $1)
          order by c.updated_at limit $2",
    )
    .bind(tenant)
    .bind(IN_FLIGHT_SHOWN)
    .fetch_all(&app.read.pool)
    .await?)
}

/// The scheduling failures of the last day by reason and hour, from the event store (the
/// read model keeps only each consultation's last status), most frequent reason first.
async fn failures(
    app: &AppState,
    tenant: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Vec<Failures>, ApiError> {
    let counts = (app.commands.store())
        .hourly_counts(
            tenant,
            "ConsultationSchedulingFailed",
            "reason",
            FAILURE_HOURS,
        )
        .await?;
    Ok(by_reason(counts, now))
}

/// Spreads the counts of each reason over one bar per hour, ending with the hour of `now`.
fn by_reason(counts: Vec<HourlyCount>, now: DateTime<Utc>) -> Vec<Failures> {
    let hours = FAILURE_HOURS as usize + 1;
    let mut reasons: HashMap<String, Failures> = HashMap::new();
    for HourlyCount { hour, value, count } in counts {
        let reason = value.unwrap_or_else(|| "(none given)".to_owned());
        let failures = reasons.entry(reason.clone()).or_insert_with(|| Failures {
            reason,
            per_hour: vec![0.0; hours],
            total: 0,
        });
        let ago = (now - hour).num_hours().clamp(0, hours as i64 - 1) as usize;
        failures.per_hour[hours - 1 - ago] += count as f64;
        failures.total += count;
    }
    let mut failures: Vec<Failures> = reasons.into_values().collect();
    failures.sort_by(|a, b| b.total.cmp(&a.total).then(a.reason.cmp(&b.reason)));
    failures
}

/// The consultations in flight with their last event's type and their deadline, stuck ones
/// (past their deadline) first.
async fn rows(
    app: &AppState,
    tenant: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Vec<Row>, ApiError> {
    let consultations = in_flight(app, tenant).await?;
    let ids: Vec<Uuid> = consultations.iter().map(|c| c.id).collect();
    let store = app.commands.store();
    let mut deadlines: HashMap<Uuid, _> = (store.deadlines_of(&ids).await?)
        .into_iter()
        .map(|d| (d.id, d))
        .collect();
    let mut steps: HashMap<Uuid, String> =
        store.last_event_types(&ids).await?.into_iter().collect();
    let mut rows: Vec<Row> = consultations
        .into_iter()
        .map(|consultation| {
            let deadline = deadlines.remove(&consultation.id);
            Row {
                step: steps.remove(&consultation.id),
                due_at: deadline.as_ref().map(|d| d.due_at),
                deadline: deadline.map(|d| d.state),
                consultation,
            }
        })
        .collect();
    rows.sort_by_key(|row| !row.is_stuck(now));
    Ok(rows)
}

pub async fn page(State(app): State<AppState>, operator: Operator) -> Result<Markup, ApiError> {
    let now = Utc::now();
    let tenant = operator.tenant();
    let rows = rows(&app, tenant, now).await?;
    let counts = app.commands.store().deadline_counts(tenant).await?;
    let failures = failures(&app, tenant, now).await?;
    let stuck = rows.iter().filter(|row| row.is_stuck(now)).count() as i64;
    let body = html! {
        h1 { "Sagas and deadlines" }
        div.cards {
            (card("in flight", rows.len() as i64, "inFlight", false))
            (card("stuck past their deadline", stuck, "stuck", true))
            (card("deadlines overdue", counts.overdue, "deadlinesOverdue", true))
            (card("deadlines running", counts.running, "deadlinesRunning", false))
            (card("deadlines paused", counts.paused, "deadlinesPaused", false))
        }
        h2 { "Consultations in flight" }
        @if rows.is_empty() {
            p.muted { "None: every consultation is scheduled or finished." }
        } @else {
            table {
                tr { th { "Consultation" } th { "Tenant" } th { "Last step" } th.num { "Version" }
                     th { "Since" } th { "Deadline" } th { "State" } }
                @for row in &rows {
                    @let stuck = row.is_stuck(now);
                    tr.bad[stuck] {
                        td { a href={ "/console/streams/" (row.consultation.id) } { code { (row.consultation.id) } } }
                        td { (row.consultation.tenant_id) }
                        td { (row.step.as_deref().unwrap_or("?")) }
                        td.num { (row.consultation.version) }
                        td { (age(row.consultation.updated_at, now)) }
                        td {
                            @match row.due_at {
                                Some(due) => { (moment(due)) },
                                None => { span.muted { "none" } },
                            }
                        }
                        td {
                            @if stuck { strong { "stuck: past its deadline" } }
                            @else { (row.deadline.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
        h2 { "Failures by reason" }
        @if failures.is_empty() {
            p.muted { "No consultation failed in the last day." }
        } @else {
            table {
                tr { th { "Reason" } th.num { "Last day" } th { "Per hour, oldest first" } }
                @for failure in &failures {
                    tr {
                        td { (failure.reason) }
                        td.num { (failure.total) }
                        td { (bars(&failure.per_hour, &format!("{} failures per hour", failure.reason))) }
                    }
                }
            }
        }
    };
    Ok(frame("Sagas", Some(&operator.0), body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_spread_over_the_hours_ending_now_most_frequent_reason_first() {
        let now = Utc::now();
        let hour = |ago| now - chrono::TimeDelta::hours(ago);
        let count = |hour, value: Option<&str>, count| HourlyCount {
            hour,
            value: value.map(str::to_owned),
            count,
        };
        let failures = by_reason(
            vec![
                count(hour(24), Some("timeout"), 1),
                count(hour(2), Some("patientInactive"), 1),
                count(hour(0), Some("timeout"), 3),
                count(hour(0), None, 1),
            ],
            now,
        );
        let reasons: Vec<&str> = failures.iter().map(|f| f.reason.as_str()).collect();
        assert_eq!(reasons, ["timeout", "(none given)", "patientInactive"]);
        let timeout = &failures[0];
        assert_eq!(timeout.total, 4);
        assert_eq!(timeout.per_hour.len(), 25);
        assert_eq!((timeout.per_hour[0], timeout.per_hour[24]), (1.0, 3.0));
        assert_eq!(failures[2].per_hour[22], 1.0);
    }
}
