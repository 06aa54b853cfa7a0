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
use super::pagination::{self, Page, PageRequest};
use super::single;
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
    ($($rest:expr),+ $(,)?) => {
        concat!(
            "select id, name, specialty, license_number, status, version, updated_at
               from physicians ",
            $($rest),+
        )
    };
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Physician {
    pub id: Uuid,
    /// The personal fields are null once the physician is erased.
    pub name: Option<String>,
    pub specialty: String,
    pub license_number: Option<String>,
    #[schema(value_type = PersonStatus)]
    pub status: String,
    /// The physician's stream version; the `ETag`.
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

single::resource!(Physician, "physician");

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

single::get_one! {
    /// A physician as the read model has it.
    fn get_physician() -> Physician, Authorized<PhysiciansRead>, Consistent<Physicians>,
    get "/physicians/{id}", tag "physicians", scope "physicians:read",
    select_physicians!("where id = $1 and ", in_tenant!("physicians.id", "physicians", "$2"))
}

pagination::list! {
    /// Physicians in creation order, a page at a time.
    fn list_physicians(PhysicianFilter) -> Page<Physician>, Authorized<PhysiciansRead>,
    Consistent<Physicians>, get "/physicians", tag "physicians", scope "physicians:read",
    |filter, page, caller| sqlx::query_as::<_, Physician>(select_physicians!(
        "where ($1::text is null or specialty = $1)
           and ($2::text is null or status = $2)
           and ($3::uuid is null or id > $3)
           and ",
        in_tenant!("physicians.id", "physicians", "$5"),
        " order by id limit $4"
    ))
        .bind(filter.specialty)
        .bind(filter.status.map(PersonStatus::as_str))
        .bind(page.after)
        .bind(page.fetch())
        .bind(&caller.tenant_id)
}
