//! `GET /patients/{id}`, `GET /patients`.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::consistency::{Consistent, Patients};
use super::pagination::{Page, PageRequest};
use super::single::{self, Resource};
use super::{Params, PersonStatus, QueryHeaders, like_prefix};
use crate::auth::{Authorized, PatientsRead};
use crate::error::{ApiError, Problem};
use crate::extract::PathId;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_patient))
        .routes(routes!(list_patients))
}

/// A `select` of every patient column, followed by `$rest`.
macro_rules! select_patients {
    ($rest:literal) => {
        concat!(
            "select id, name, birth_date, document_number, email, phone, status, version,
                    updated_at
               from patients ",
            $rest
        )
    };
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Patient {
    pub id: Uuid,
    pub name: String,
    pub birth_date: NaiveDate,
    pub document_number: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    #[schema(value_type = PersonStatus)]
    pub status: String,
    /// The patient's stream version; the `ETag`.
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

impl Resource for Patient {
    const NAME: &'static str = "patient";

    fn version(&self) -> i64 {
        self.version
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PatientFilter {
    status: Option<PersonStatus>,
    /// Patients whose name starts with this, ignoring case.
    name: Option<String>,
    /// 1 to 200; 50 by default.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// The `nextCursor` of the previous page.
    #[param(nullable = false, pattern = "^[A-Za-z0-9_-]{21}[AQgw]$")]
    cursor: Option<String>,
}

/// A patient as the read model has it.
#[utoipa::path(get, path = "/patients/{id}", tag = "patients",
    security(("bearer" = ["patients:read"])),
    params(("id" = uuid::Uuid, Path), QueryHeaders),
    responses(
        (status = 200, body = Patient, headers(("ETag" = String, description = "The version, as `\"3\"`"))),
        (status = 304, description = "`If-None-Match` names the current version"),
        (status = 400, description = "The id or `X-Min-Position` cannot be parsed", body = Problem),
        (status = 404, description = "Not in this instance's read model", body = Problem),
        (status = 503, description = "The read model did not reach `X-Min-Position` in time; see `Retry-After`", body = Problem),
    ))]
async fn get_patient(
    State(app): State<AppState>,
    caller: Authorized<PatientsRead>,
    PathId(id): PathId,
    consistent: Consistent<Patients>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    single::answer(&app, &caller, id, &consistent, &headers, || {
        sqlx::query_as::<_, Patient>(select_patients!(
            "where id = $1
               and exists (select 1 from stream_versions t where t.stream_id = patients.id
                              and t.projection = 'patients' and t.tenant_id = $2)"
        ))
        .bind(id)
        .bind(&caller.tenant_id)
        .fetch_optional(&app.read.pool)
    })
    .await
}

/// Patients in creation order, a page at a time.
#[utoipa::path(get, path = "/patients", tag = "patients",
    security(("bearer" = ["patients:read"])),
    params(PatientFilter, QueryHeaders),
    responses(
        (status = 200, body = Page<Patient>),
        (status = 400, description = "A parameter cannot be parsed", body = Problem),
        (status = 503, description = "The read model did not reach `X-Min-Position` in time; see `Retry-After`", body = Problem),
    ))]
async fn list_patients(
    State(app): State<AppState>,
    caller: Authorized<PatientsRead>,
    Params(filter): Params<PatientFilter>,
    _consistent: Consistent<Patients>,
) -> Result<Json<Page<Patient>>, ApiError> {
    let page = PageRequest::parse(filter.limit, filter.cursor.as_deref())?;
    let rows = sqlx::query_as::<_, Patient>(select_patients!(
        "where ($1::text is null or status = $1)
           and ($2::text is null or lower(name) like lower($2))
           and ($3::uuid is null or id > $3)
           and exists (select 1 from stream_versions t where t.stream_id = patients.id
                          and t.projection = 'patients' and t.tenant_id = $5)
         order by id
         limit $4"
    ))
    .bind(filter.status.map(PersonStatus::as_str))
    .bind(filter.name.as_deref().map(like_prefix))
    .bind(page.after)
    .bind(page.fetch())
    .bind(&caller.tenant_id)
    // Planned per call: a cached plan could not drop the filters that were not given.
    .persistent(false)
    .fetch_all(&app.read.pool)
    .await?;
    Ok(Json(page.page(rows, |patient| patient.id)))
}
