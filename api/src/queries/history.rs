//! `GET /{patients|physicians|consultations}/{id}/history`: the audit trail of one aggregate,
//! every event of its stream with who, when and what it changed, oldest first.
//!
//! The trail is read from the event store, not the read model: it is the record itself, and
//! always complete. A clinical record's content lives on the record's own stream, which has no
//! history route here, so no trail shows it.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use domain::{AggregateKind, versions};
use eventstore::{RecordedEvent, StreamVersion};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::Params;
use super::pagination::{DEFAULT_LIMIT, MAX_LIMIT};
use crate::auth::{Authorized, Caller, ConsultationsRead, PatientsRead, PhysiciansRead};
use crate::error::{ApiError, Problem};
use crate::extract::PathId;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(patient_history))
        .routes(routes!(physician_history))
        .routes(routes!(consultation_history))
}

/// One event of the trail.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// The stream's version after the event: 1 for the first.
    pub version: i64,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    /// Who acted (a token's `sub`); `null` for events stored before authentication.
    pub actor_id: Option<String>,
    /// The request (or saga) the event belongs to.
    pub correlation_id: String,
    /// The event that caused this one, when a saga step or a job wrote it.
    pub causation_id: Option<Uuid>,
    /// The fields the event set, as HAP reads them today (an older version raised to today's
    /// shape; one stored event split in two shows as two items of the same version).
    #[schema(value_type = Object)]
    pub changes: serde_json::Value,
}

/// A page of a trail.
#[derive(Debug, Serialize, ToSchema)]
pub struct History {
    pub items: Vec<Change>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryPage {
    /// Events per page, 1–200 (default 50).
    limit: Option<u32>,
    /// The `next` of the previous page.
    cursor: Option<String>,
}

/// Which events a request asks for: after version `after`, at most `limit`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Window {
    after: u64,
    limit: u32,
}

impl Window {
    fn parse(page: &HistoryPage) -> Result<Self, ApiError> {
        let limit = page.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::BadRequest(format!(
                "limit must be between 1 and {MAX_LIMIT}, not {limit}"
            )));
        }
        // The cursor is the last version of the previous page; opaque to clients all the same.
        let after = match &page.cursor {
            None => 0,
            Some(cursor) => cursor
                .parse::<u64>()
                .ok()
                .filter(|version| *version > 0)
                .ok_or_else(|| {
                    ApiError::BadRequest("cursor is not one this API returned".into())
                })?,
        };
        Ok(Self { after, limit })
    }
}

async fn history(
    app: &AppState,
    caller: &Caller,
    kind: AggregateKind,
    id: Uuid,
    page: &HistoryPage,
) -> Result<Json<History>, ApiError> {
    let window = Window::parse(page)?;
    let mut events = app
        .commands
        .store()
        .read_history(
            Some(&caller.tenant_id),
            Some(kind.as_str()),
            id,
            StreamVersion::new(window.after),
            i64::from(window.limit) + 1,
        )
        .await?;
    if events.is_empty() && window.after == 0 {
        return Err(ApiError::NotFound(format!(
            "{} {id} has no events",
            kind.as_str()
        )));
    }
    let more = events.len() > window.limit as usize;
    events.truncate(window.limit as usize);
    let next = more
        .then(|| events.last().map(|event| event.version.to_string()))
        .flatten();
    let mut items = Vec::with_capacity(events.len());
    for event in &events {
        items.extend(changes(event)?);
    }
    Ok(Json(History { items, next }))
}

/// The items one stored event shows as: the events it reads as today.
fn changes(event: &RecordedEvent) -> Result<impl Iterator<Item = Change>, ApiError> {
    let read = versions::decode(&event.event_type, event.schema_version, event.payload.get())
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(read.into_iter().map(|read| {
        let (event_type, changes) = read.into_parts();
        Change {
            changes,
            version: event.version,
            event_type: event_type.to_owned(),
            occurred_at: event.occurred_at,
            actor_id: event.actor_id.clone(),
            correlation_id: event.correlation_id.clone(),
            causation_id: event.causation_id,
        }
    }))
}

/// A `GET /{resources}/{id}/history` route: `$name` answers the trail of the `$kind` aggregate
/// `id` (a `$owner` in its 404) through [`history`]. Every trail answers the same way, so its
/// OpenAPI answers are written here once.
macro_rules! history_route {
    (
        $(#[doc = $doc:tt])*
        fn $name:ident() -> Authorized<$read:ident>, AggregateKind::$kind:ident,
        get $path:tt, tag $tag:tt, scope $scope:tt, of $owner:tt $(,)?
    ) => {
        $(#[doc = $doc])*
        #[utoipa::path(get, path = $path, tag = $tag,
            security(("bearer" = [$scope])),
            params(("id" = uuid::Uuid, Path), HistoryPage),
            responses(
                (status = 200, body = History),
                (status = 400, description = "The id, `limit` or `cursor` cannot be parsed", body = Problem),
                (status = 404, description = concat!("No ", $owner, " of the caller's tenant has this id"), body = Problem),
            ))]
        async fn $name(
            State(app): State<AppState>,
            caller: Authorized<$read>,
            PathId(id): PathId,
            Params(page): Params<HistoryPage>,
        ) -> Result<Json<History>, ApiError> {
            history(&app, &caller, AggregateKind::$kind, id, &page).await
        }
    };
}

history_route! {
    /// A patient's audit trail.
    fn patient_history() -> Authorized<PatientsRead>, AggregateKind::Patient,
    get "/patients/{id}/history", tag "patients", scope "patients:read",
    of "patient",
}

history_route! {
    /// A physician's audit trail.
    fn physician_history() -> Authorized<PhysiciansRead>, AggregateKind::Physician,
    get "/physicians/{id}/history", tag "physicians", scope "physicians:read",
    of "physician",
}

history_route! {
    /// A consultation's audit trail: its request, the saga's steps on it, and what came after.
    fn consultation_history() -> Authorized<ConsultationsRead>, AggregateKind::Consultation,
    get "/consultations/{id}/history", tag "consultations", scope "consultations:read",
    of "consultation",
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(limit: Option<u32>, cursor: Option<&str>) -> HistoryPage {
        HistoryPage {
            limit,
            cursor: cursor.map(str::to_owned),
        }
    }

    #[test]
    fn a_window_starts_after_the_cursors_version() {
        assert_eq!(
            Window::parse(&page(None, None)).unwrap(),
            Window {
                after: 0,
                limit: 50
            }
        );
        assert_eq!(
            Window::parse(&page(Some(2), Some("7"))).unwrap(),
            Window { after: 7, limit: 2 }
        );
    }

    #[test]
    fn a_bad_limit_or_cursor_is_refused() {
        for bad in [page(Some(0), None), page(Some(201), None)] {
            assert!(Window::parse(&bad).is_err());
        }
        for cursor in ["", "0", "-3", "x", "AAAAAAAAAAAAAAAAAAAAAA"] {
            assert!(
                Window::parse(&page(None, Some(cursor))).is_err(),
                "{cursor}"
            );
        }
    }
}
