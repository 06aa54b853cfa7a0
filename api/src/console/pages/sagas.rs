//! `GET /console/sagas`: the scheduling sagas. Consultations still `requested` with their
//! last step and age, those past their deadline first and marked; the deadlines' counts; and
//! the failures of the last day by reason. Of the operator's tenant, unless a platform
//! operator's.

use std::collections::HashMap;

use axum::extract::State;
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use uuid::Uuid;

use crate::console::layout::{age, card, frame, moment};
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

/// Failures of one reason in the last hour, six hours and day.
#[derive(Debug, sqlx::FromRow)]
struct Failures {
    reason: Option<String>,
    last_hour: i64,
    last_six_hours: i64,
    last_day: i64,
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

async fn failures(app: &AppState, tenant: Option<&str>) -> Result<Vec<Failures>, ApiError> {
    Ok(sqlx::query_as(
        "select c.failure_reason as reason,
                count(*) filter (where c.updated_at > now() - interval '1 hour') as last_hour,
                count(*) filter (where c.updated_at > now() - interval '6 hours') as last_six_hours,
                count(*) as last_day
           from consultations c
           join stream_versions t on t.stream_id = c.id and t.projection = 'consultations'
          where c.status = 'failed' and c.updated_at > now() - interval '1 day'
            and ($1::text is null or t.tenant_id = $1)
          group by c.failure_reason order by last_day desc",
    )
    .bind(tenant)
    .fetch_all(&app.read.pool)
    .await?)
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
    let failures = failures(&app, tenant).await?;
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
                tr { th { "Reason" } th.num { "Last hour" } th.num { "Last 6 hours" } th.num { "Last day" } }
                @for failure in &failures {
                    tr {
                        td { (failure.reason.as_deref().unwrap_or("(none given)")) }
                        td.num { (failure.last_hour) }
                        td.num { (failure.last_six_hours) }
                        td.num { (failure.last_day) }
                    }
                }
            }
        }
    };
    Ok(frame("Sagas", Some(&operator.0), body))
}
