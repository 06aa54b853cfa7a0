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
pub struct Health {
    status: &'static str,
    /// Dependencies that do not answer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    failing: Vec<&'static str>,
}

/// 200 while the process runs.
#[utoipa::path(get, path = "/health/live", tag = "operations",
    responses((status = 200, body = Health)))]
async fn live() -> Json<Health> {
    Json(Health {
        status: "live",
        failing: vec![],
    })
}

/// 200 when PostgreSQL and RabbitMQ answer; 503 naming what does not.
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
    let status = if failing.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        status: if failing.is_empty() {
            "ready"
        } else {
            "unavailable"
        },
        failing,
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
