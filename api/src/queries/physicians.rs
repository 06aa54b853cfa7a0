//! `GET /physicians/{id}`, `GET /physicians`.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::consistency::{Consistent, Physicians};
use super::pagination::{Page, PageRequest};
use super::single::{self, Resource};
use super::{Params, PersonStatus, QueryHeaders};
use crate::auth::{Authorized, PhysiciansRead};
use crate::error::{ApiError, Problem};
use crate::extract::PathId;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_physician))
        .routes(routes!(list_physicians))
}

/// A `select` of every physician column, followed by `$rest`.
macro_rules! select_physicians {
    ($rest:literal) => {
        concat!(
            "select id, name, specialty, license_number, status, version, updated_at
               from physicians ",
            $rest
        )
    };
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Physician {
    pub id: Uuid,
    pub name: String,
    pub specialty: String,
    pub license_number: String,
    #[schema(value_type = PersonStatus)]
    pub status: String,
    /// The physician's stream version; the `ETag`.
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

impl Resource for Physician {
    const NAME: &'static str = "physician";

    fn version(&self) -> i64 {
        self.version
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PhysicianFilter {
    /// Exactly this specialty.
    specialty: Option<String>,
    status: Option<PersonStatus>,
    /// 1 to 200; 50 by default.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// The `nextCursor` of the previous page.
    #[param(nullable = false, pattern = "^[A-Za-z0-9_-]{21}[AQgw]$")]
    cursor: Option<String>,
}

/// A physician as the read model has it.
#[utoipa::path(get, path = "/physicians/{id}", tag = "physicians",
    security(("bearer" = ["physicians:read"])),
    params(("id" = uuid::Uuid, Path), QueryHeaders),
    responses(
        (status = 200, body = Physician, headers(("ETag" = String, description = "The version, as `\"3\"`"))),
        (status = 304, description = "`If-None-Match` names the current version"),
        (status = 400, description = "The id or `X-Min-Position` cannot be parsed", body = Problem),
        (status = 404, description = "Not in this instance's read model", body = Problem),
        (status = 503, description = "The read model did not reach `X-Min-Position` in time; see `Retry-After`", body = Problem),
    ))]
async fn get_physician(
    State(app): State<AppState>,
    caller: Authorized<PhysiciansRead>,
    PathId(id): PathId,
    consistent: Consistent<Physicians>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    single::answer(&app, &caller, id, &consistent, &headers, || {
        sqlx::query_as::<_, Physician>(select_physicians!(
            "where id = $1
               and exists (select 1 from stream_versions t where t.stream_id = physicians.id
                              and t.projection = 'physicians' and t.tenant_id = $2)"
        ))
        .bind(id)
        .bind(&caller.tenant_id)
        .fetch_optional(&app.read.pool)
    })
    .await
}

/// Physicians in creation order, a page at a time.
#[utoipa::path(get, path = "/physicians", tag = "physicians",
    security(("bearer" = ["physicians:read"])),
    params(PhysicianFilter, QueryHeaders),
    responses(
        (status = 200, body = Page<Physician>),
        (status = 400, description = "A parameter cannot be parsed", body = Problem),
        (status = 503, description = "The read model did not reach `X-Min-Position` in time; see `Retry-After`", body = Problem),
    ))]
async fn list_physicians(
    State(app): State<AppState>,
    caller: Authorized<PhysiciansRead>,
    Params(filter): Params<PhysicianFilter>,
    _consistent: Consistent<Physicians>,
) -> Result<Json<Page<Physician>>, ApiError> {
    let page = PageRequest::parse(filter.limit, filter.cursor.as_deref())?;
    let rows = sqlx::query_as::<_, Physician>(select_physicians!(
        "where ($1::text is null or specialty = $1)
           and ($2::text is null or status = $2)
           and ($3::uuid is null or id > $3)
           and exists (select 1 from stream_versions t where t.stream_id = physicians.id
                              and t.projection = 'physicians' and t.tenant_id = $5)
         order by id
         limit $4"
    ))
    .bind(filter.specialty)
    .bind(filter.status.map(PersonStatus::as_str))
    .bind(page.after)
    .bind(page.fetch())
    .bind(&caller.tenant_id)
    // Planned per call: a cached plan could not drop the filters that were not given.
    .persistent(false)
    .fetch_all(&app.read.pool)
    .await?;
    Ok(Json(page.page(rows, |physician| physician.id)))
}
