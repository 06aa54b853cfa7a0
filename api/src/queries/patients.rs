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
use super::pagination::{self, Page, PageRequest};
use super::single;
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
    ($($rest:expr),+ $(,)?) => {
        concat!(
            "select id, name, birth_date, document_number, email, phone, status, version,
                    updated_at
               from patients ",
            $($rest),+
        )
    };
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Patient {
    pub id: Uuid,
    /// The personal fields are null once the patient is erased.
    pub name: Option<String>,
    pub birth_date: Option<NaiveDate>,
    pub document_number: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    #[schema(value_type = PersonStatus)]
    pub status: String,
    /// The patient's stream version; the `ETag`.
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

single::resource!(Patient, "patient");

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

single::get_one! {
    /// A patient as the read model has it.
    fn get_patient() -> Patient, Authorized<PatientsRead>, Consistent<Patients>,
    get "/patients/{id}", tag "patients", scope "patients:read",
    select_patients!("where id = $1 and ", in_tenant!("patients.id", "patients", "$2"))
}

pagination::list! {
    /// Patients in creation order, a page at a time.
    fn list_patients(PatientFilter) -> Page<Patient>, Authorized<PatientsRead>,
    Consistent<Patients>, get "/patients", tag "patients", scope "patients:read",
    |filter, page, caller| sqlx::query_as::<_, Patient>(select_patients!(
        "where ($1::text is null or status = $1)
           and ($2::text is null or lower(name) like lower($2))
           and ($3::uuid is null or id > $3)
           and ",
        in_tenant!("patients.id", "patients", "$5"),
        " order by id limit $4"
    ))
        .bind(filter.status.map(PersonStatus::as_str))
        .bind(filter.name.as_deref().map(like_prefix))
        .bind(page.after)
        .bind(page.fetch())
        .bind(&caller.tenant_id)
}
