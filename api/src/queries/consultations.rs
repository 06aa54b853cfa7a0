//! `GET /consultations/{id}`, `GET /consultations`, and the consultations of one person:
//! `GET /patients/{id}/consultations`, `GET /physicians/{id}/agenda`.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use domain::consultation::Status;
use projections::{PATIENTS, PHYSICIANS};
use serde::{Deserialize, Serialize};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{IntoParams, PartialSchema, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::consistency::{Consistent, Consultations, PatientConsultations, PhysicianAgenda};
use super::pagination::{self, Page, PageRequest};
use super::{Items, Params, QueryHeaders, ensure_found, items, single};
use crate::auth::{Authorized, ConsultationsRead};
use crate::error::{ApiError, Problem};
use crate::extract::PathId;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_consultation))
        .routes(routes!(list_consultations))
        .routes(routes!(patient_consultations))
        .routes(routes!(physician_agenda))
}

/// A `select` of every consultation column, followed by `$rest`.
macro_rules! select_consultations {
    ($($rest:expr),+ $(,)?) => {
        concat!(
            "select id, patient_id, patient_name, physician_id, physician_name, starts_at,
                    ends_at, status, reason, notes, failure_reason, failure_detail,
                    cancellation_reason, version, updated_at
               from consultations ",
            $($rest),+
        )
    };
}

/// The OpenAPI schema of a consultation's `status`: the names of the domain's [`Status`],
/// which the projector writes and the filter parses. Only documents; nothing holds one.
pub struct ConsultationStatus;

impl PartialSchema for ConsultationStatus {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("Where a consultation is in its life."))
            .enum_values(Some(Status::NAMES.iter().copied()))
            .into()
    }
}

impl ToSchema for ConsultationStatus {}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Consultation {
    pub id: Uuid,
    pub patient_id: Uuid,
    /// The patient's current name; `null` until the read model has it.
    pub patient_name: Option<String>,
    pub physician_id: Uuid,
    /// The physician's current name; `null` until the read model has it.
    pub physician_name: Option<String>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    #[schema(value_type = ConsultationStatus)]
    pub status: String,
    pub reason: Option<String>,
    pub notes: Option<String>,
    pub failure_reason: Option<String>,
    pub failure_detail: Option<String>,
    pub cancellation_reason: Option<String>,
    /// The consultation's stream version; the `ETag`.
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

single::resource!(Consultation, "consultation");

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConsultationFilter {
    patient_id: Option<Uuid>,
    physician_id: Option<Uuid>,
    #[param(value_type = Option<ConsultationStatus>)]
    status: Option<Status>,
    /// Consultations starting at or after this instant (RFC 3339).
    from: Option<DateTime<Utc>>,
    /// Consultations starting before this instant (RFC 3339).
    to: Option<DateTime<Utc>>,
    /// 1 to 200; 50 by default.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// The `nextCursor` of the previous page.
    #[param(nullable = false, pattern = "^[A-Za-z0-9_-]{21}[AQgw]$")]
    cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AgendaDay {
    /// The UTC day, as YYYY-MM-DD.
    date: NaiveDate,
}

/// A physician's consultations on one day.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Agenda {
    pub physician_id: Uuid,
    pub date: NaiveDate,
    /// In order of `startsAt`.
    pub consultations: Vec<AgendaEntry>,
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgendaEntry {
    pub id: Uuid,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    #[schema(value_type = ConsultationStatus)]
    pub status: String,
    pub patient_id: Uuid,
    pub patient_name: Option<String>,
}

single::get_one! {
    /// A consultation as the read model has it.
    fn get_consultation() -> Consultation, Authorized<ConsultationsRead>, Consistent<Consultations>,
    get "/consultations/{id}", tag "consultations", scope "consultations:read",
    select_consultations!(
        "where id = $1 and ",
        in_tenant!("consultations.id", "consultations", "$2")
    )
}

pagination::list! {
    /// Consultations in creation order, a page at a time.
    fn list_consultations(ConsultationFilter) -> Page<Consultation>,
    Authorized<ConsultationsRead>, Consistent<Consultations>,
    get "/consultations", tag "consultations", scope "consultations:read",
    |filter, page, caller| sqlx::query_as::<_, Consultation>(select_consultations!(
        "where ($1::uuid is null or patient_id = $1)
           and ($2::uuid is null or physician_id = $2)
           and ($3::text is null or status = $3)
           and ($4::timestamptz is null or starts_at >= $4)
           and ($5::timestamptz is null or starts_at < $5)
           and ($6::uuid is null or id > $6)
           and ",
        in_tenant!("consultations.id", "consultations", "$8"),
        " order by id limit $7"
    ))
        .bind(filter.patient_id)
        .bind(filter.physician_id)
        .bind(filter.status.map(Status::as_str))
        .bind(filter.from)
        .bind(filter.to)
        .bind(page.after)
        .bind(page.fetch())
        .bind(&caller.tenant_id)
}

items::get_items! {
    /// A patient's consultations, the latest `startsAt` first.
    fn patient_consultations() -> Items<Consultation>,
    Authorized<ConsultationsRead>, Consistent<PatientConsultations>,
    get "/patients/{id}/consultations", tag "patients", scope "consultations:read",
    of "patient" in PATIENTS,
    select_consultations!("where patient_id = $1 order by starts_at desc, id desc")
}

/// A physician's consultations starting on one UTC day, in order.
#[utoipa::path(get, path = "/physicians/{id}/agenda", tag = "physicians",
    security(("bearer" = ["consultations:read"])),
    params(("id" = uuid::Uuid, Path), AgendaDay, QueryHeaders),
    responses(
        (status = 200, body = Agenda),
        (status = 400, description = "The id, the date or `X-Min-Position` cannot be parsed", body = Problem),
        (status = 404, description = "The physician is not in this instance's read model", body = Problem),
        (status = 503, description = "The read model did not reach `X-Min-Position` in time; see `Retry-After`", body = Problem),
    ))]
async fn physician_agenda(
    State(app): State<AppState>,
    caller: Authorized<ConsultationsRead>,
    PathId(id): PathId,
    Params(AgendaDay { date }): Params<AgendaDay>,
    _consistent: Consistent<PhysicianAgenda>,
) -> Result<Json<Agenda>, ApiError> {
    let (start, end) = utc_day(date)?;
    let pool = &app.read.pool;
    ensure_found(pool, PHYSICIANS, "physician", id, &caller.tenant_id).await?;
    let consultations = sqlx::query_as::<_, AgendaEntry>(
        "select id, starts_at, ends_at, status, patient_id, patient_name
           from consultations
          where physician_id = $1 and starts_at >= $2 and starts_at < $3
          order by starts_at, id",
    )
    .bind(id)
    .bind(start)
    .bind(end)
    .fetch_all(pool)
    .await?;
    Ok(Json(Agenda {
        physician_id: id,
        date,
        consultations,
    }))
}

/// The first instant of `date` and of the next day, in UTC. Years beyond four digits are
/// refused: PostgreSQL cannot hold all of them.
fn utc_day(date: NaiveDate) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
    let next = date
        .succ_opt()
        .filter(|_| (1..=9999).contains(&date.year()))
        .ok_or_else(|| ApiError::BadRequest(format!("date {date} is out of range")))?;
    Ok((
        date.and_time(chrono::NaiveTime::MIN).and_utc(),
        next.and_time(chrono::NaiveTime::MIN).and_utc(),
    ))
}
