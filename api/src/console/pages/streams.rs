//! `GET /console/streams/{id}`: one aggregate's events, whatever its kind, and for a
//! consultation its causal trail: the events of every stream that carry the correlation id
//! of its request (request → validations → scheduled), in the order they were stored.
//! Another tenant's stream is not found, unless the operator is a platform operator.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use domain::{AggregateKind, versions};
use eventstore::{RecordedEvent, StreamVersion};
use maud::{Markup, html};
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::{RecordsRead, Scope};
use crate::console::layout::{frame, moment};
use crate::console::session::Operator;
use crate::error::ApiError;
use crate::extract::PathId;
use crate::queries::Params;
use crate::state::AppState;

/// How many events of a stream, or of a trail, the page shows.
const EVENTS_SHOWN: i64 = 500;

#[derive(Deserialize)]
pub struct Find {
    id: Option<String>,
}

/// `GET /console/streams`: a form asking for an aggregate's id, which leads to its page.
pub async fn find(operator: Operator, Params(find): Params<Find>) -> Response {
    let wanted = find
        .id
        .as_deref()
        .map(str::trim)
        .filter(|id| !id.is_empty());
    let problem = match wanted.map(Uuid::parse_str) {
        Some(Ok(id)) => return Redirect::to(&format!("/console/streams/{id}")).into_response(),
        Some(Err(_)) => Some("That is not an aggregate id (a UUID)."),
        None => None,
    };
    let body = html! {
        h1 { "Streams" }
        @if let Some(problem) = problem { p.notice { (problem) } }
        form method="get" action="/console/streams" {
            input name="id" size="40" placeholder="aggregate id" required;
            " " button type="submit" { "Show its events" }
        }
    };
    frame("Streams", Some(&operator.0), body).into_response()
}

/// `GET /console/streams/{id}`.
pub async fn page(
    State(app): State<AppState>,
    operator: Operator,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    let store = app.commands.store();
    let tenant = operator.tenant();
    let events = store
        .read_history(tenant, None, id, StreamVersion::EMPTY, EVENTS_SHOWN)
        .await?;
    let Some(first) = events.first() else {
        let body = html! {
            h1 { "Not found" }
            p { "No stream " code { (id) } " has events you may see." }
        };
        return Ok((
            StatusCode::NOT_FOUND,
            frame("Not found", Some(&operator.0), body),
        )
            .into_response());
    };
    let trail = if first.aggregate_type == AggregateKind::Consultation.as_str() {
        store
            .read_correlated(tenant, &first.correlation_id, EVENTS_SHOWN)
            .await?
    } else {
        Vec::new()
    };
    let body = html! {
        h1 { (first.aggregate_type) " " code { (id) } }
        p.muted { "Tenant " (first.tenant_id) " · " (events.len()) " events" }
        table {
            tr { th.num { "Version" } th { "Type" } th { "Time (UTC)" } th { "Actor" }
                 th { "Correlation" } th { "Causation" } th { "Payload" } }
            @for event in &events {
                tr {
                    td.num { (event.version) }
                    td { (event.event_type) }
                    td { (moment(event.occurred_at)) }
                    td { (event.actor_id.as_deref().unwrap_or("")) }
                    td { code { (event.correlation_id) } }
                    td { @if let Some(causation) = event.causation_id { code { (causation) } } }
                    td { (payload(&operator, &event.aggregate_type, &read_today(event))) }
                }
            }
        }
        @if !trail.is_empty() {
            h2 { "Causal trail of " code { (first.correlation_id) } }
            table {
                tr { th { "Time (UTC)" } th { "Stream" } th.num { "Version" } th { "Type" }
                     th { "Actor" } th { "Causation" } }
                @for event in &trail {
                    tr {
                        td { (moment(event.occurred_at)) }
                        td {
                            (event.aggregate_type) " "
                            a href={ "/console/streams/" (event.stream_id) } { code { (event.stream_id) } }
                        }
                        td.num { (event.version) }
                        td { (event.event_type) }
                        td { (event.actor_id.as_deref().unwrap_or("")) }
                        td { @if let Some(causation) = event.causation_id { code { (causation) } } }
                    }
                }
            }
        }
    };
    Ok(frame("Stream", Some(&operator.0), body).into_response())
}

/// A stored event's payload as HAP reads it today (an older version raised; the parts of a
/// split as an array); as stored if it does not read.
fn read_today(event: &RecordedEvent) -> String {
    let read = versions::decode(&event.event_type, event.schema_version, event.payload.get());
    match read {
        Ok(read) if read.len() == 1 => read[0].into_parts().1.to_string(),
        Ok(read) => serde_json::Value::from_iter(read.iter().map(|e| e.into_parts().1)).to_string(),
        Err(_) => event.payload.get().to_owned(),
    }
}

/// Whether `operator` may read the content of an aggregate of `aggregate_type`: a clinical
/// record's only with `records:read`, as the API's own history asks. So may a body of no kind
/// HAP knows (a dead letter that did not parse may be a record's): the rule fails closed.
pub fn may_read(operator: &Operator, aggregate_type: &str) -> bool {
    operator.0.may(RecordsRead::NAME)
        || AggregateKind::parse(aggregate_type)
            .is_some_and(|kind| kind != AggregateKind::ClinicalRecord)
}

/// An event's payload (`json`, of an aggregate of `aggregate_type`), pretty-printed, if
/// [`may_read`] lets the operator see it. The dead-letters page shows a message's body with it
/// too.
pub fn payload(operator: &Operator, aggregate_type: &str, json: &str) -> Markup {
    if !may_read(operator, aggregate_type) {
        return html! { span.muted { "hidden: needs records:read" } };
    }
    let text = serde_json::from_str::<serde_json::Value>(json)
        .and_then(|value| serde_json::to_string_pretty(&value))
        .unwrap_or_else(|_| json.to_owned());
    html! { pre { (text) } }
}
