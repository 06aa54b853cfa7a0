//! `/health/live`, `/health/ready` and `/metrics`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(live))
        .routes(routes!(ready))
        .routes(routes!(metrics))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    status: &'static str,
    /// Dependencies that do not answer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    failing: Vec<&'static str>,
    /// Parts of this process that do not run (yet, or again): a consumer by its queue's name,
    /// `publisher`, `timer`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    not_ready: Vec<String>,
}

/// 200 while the process runs.
#[utoipa::path(get, path = "/health/live", tag = "operations",
    responses((status = 200, body = Health)))]
async fn live() -> Json<Health> {
    Json(Health {
        status: "live",
        failing: vec![],
        not_ready: vec![],
    })
}

/// 200 when PostgreSQL and RabbitMQ answer and every role of the process runs: each consumer
/// consumes, the publisher leads with a broker connection or stands by, the timer has looked
/// for due deadlines. Else 503, naming what does not.
#[utoipa::path(get, path = "/health/ready", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
async fn ready(State(app): State<AppState>) -> impl IntoResponse {
    let mut failing = vec![];
    let ping = sqlx::query("select 1").execute(app.pool());
    if !matches!(
        tokio::time::timeout(Duration::from_secs(2), ping).await,
        Ok(Ok(_))
    ) {
        failing.push("postgresql");
    }
    if !app.broker.is_connected().await {
        failing.push("rabbitmq");
    }
    let not_ready = app.readiness.not_ready();
    let ready = failing.is_empty() && not_ready.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        status: if ready { "ready" } else { "unavailable" },
        failing,
        not_ready,
    };
    (status, Json(body))
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain", body = String)))]
async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}
