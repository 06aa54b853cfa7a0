//! `GET /consultations/{id}/status/stream`: a consultation's status pushed to the client as
//! Server-Sent Events, instead of the client polling `GET /consultations/{id}`.
//!
//! The stream sends the current status at once, then each change the read model shows, and
//! ends after a final status (`failed`, `cancelled`, `done`). A change is noticed as soon as
//! this process's projectors commit it, or within [`POLL`] when another process projects (a
//! `query`-only process, or a missed notice).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use domain::consultation::Status;
use futures::Stream;
use projections::progress::Touched;
use serde_json::json;
use tokio::sync::broadcast::{self, error::RecvError};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::consultations::Consultation;
use super::single::Resource;
use crate::auth::{Authorized, ConsultationsRead};
use crate::error::{ApiError, Problem};
use crate::extract::PathId;
use crate::state::AppState;

/// How often the read model is read again when no projector of this process reports a change.
const POLL: Duration = Duration::from_millis(500);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(status_stream))
}

/// What each event of the stream says.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Current {
    status: String,
    failure_reason: Option<String>,
    version: i64,
}

impl Current {
    fn is_final(&self) -> bool {
        Status::parse(&self.status).is_some_and(Status::is_final)
    }

    fn event(&self) -> Event {
        let body = json!({
            "status": self.status,
            "failureReason": self.failure_reason,
            "version": self.version,
        });
        Event::default().event("status").data(body.to_string())
    }
}

/// One client's view of one consultation.
struct Watch {
    app: AppState,
    id: Uuid,
    tenant_id: String,
    touched: broadcast::Receiver<Arc<Vec<Touched>>>,
    /// The status to send next, before waiting for a change.
    pending: Option<Current>,
    sent_version: i64,
}

impl Watch {
    /// The consultation's status now; `None` if the caller's tenant has no such consultation
    /// in this read model.
    async fn read(&self) -> Result<Option<Current>, sqlx::Error> {
        sqlx::query_as(concat!(
            "select status, failure_reason, version from consultations where id = $1 and ",
            in_tenant!("consultations.id", "consultations", "$2")
        ))
        .bind(self.id)
        .bind(&self.tenant_id)
        .fetch_optional(&self.app.read.pool)
        .await
    }

    /// Waits until the read model shows a newer version than the one sent last.
    async fn next_change(&mut self) -> Current {
        loop {
            self.touched_or_poll().await;
            match self.read().await {
                Ok(Some(current)) if current.version > self.sent_version => return current,
                Ok(_) => {}
                // The database is away for a moment: the client keeps its stream and gets the
                // change once it is back.
                Err(error) => tracing::debug!(%error, "reading a consultation's status failed"),
            }
        }
    }

    /// Resolves when this process's projectors touched the consultation, or after [`POLL`].
    async fn touched_or_poll(&mut self) {
        let poll = tokio::time::sleep(POLL);
        tokio::pin!(poll);
        loop {
            tokio::select! {
                () = &mut poll => return,
                touched = self.touched.recv() => match touched {
                    Ok(rows) if rows.iter().any(|row| {
                        row.resource == Consultation::NAME && row.id == self.id
                    }) => return,
                    Ok(_) => {}
                    // Notices were dropped: one of them may have been ours.
                    Err(RecvError::Lagged(_)) => return,
                    Err(RecvError::Closed) => {
                        poll.as_mut().await;
                        return;
                    }
                },
            }
        }
    }
}

/// A consultation's status as Server-Sent Events: event `status`, with data
/// `{"status", "failureReason", "version"}`, now and at each change; the stream ends after a
/// final status.
#[utoipa::path(get, path = "/consultations/{id}/status/stream", tag = "consultations",
    security(("bearer" = ["consultations:read"])),
    params(("id" = uuid::Uuid, Path)),
    responses(
        (status = 200, description = "`status` events: `{\"status\": \"scheduled\", \"failureReason\": null, \"version\": 3}`", content_type = "text/event-stream", body = String),
        (status = 400, description = "The id cannot be parsed", body = Problem),
        (status = 404, description = "Not in this instance's read model", body = Problem),
    ))]
async fn status_stream(
    State(app): State<AppState>,
    caller: Authorized<ConsultationsRead>,
    PathId(id): PathId,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // Listening before the first read: a change committed in between is not missed.
    let touched = app.read.progress.subscribe_touched();
    let mut watch = Watch {
        app,
        id,
        tenant_id: caller.tenant_id.clone(),
        touched,
        pending: None,
        sent_version: 0,
    };
    let current = watch
        .read()
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("consultation {id} is not in the read model")))?;
    watch.pending = Some(current);
    let events = futures::stream::unfold(Some(watch), |watch| async move {
        let mut watch = watch?;
        let current = match watch.pending.take() {
            Some(current) => current,
            None => watch.next_change().await,
        };
        watch.sent_version = current.version;
        let more = !current.is_final();
        Some((Ok(current.event()), more.then_some(watch)))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
