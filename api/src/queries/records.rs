//! `GET /records/{id}`, `GET /consultations/{id}/records`.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Utc};
use projections::CONSULTATIONS;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::consistency::{Consistent, ConsultationRecords, Records};
use super::{Items, QueryHeaders, ensure_found, items, single};
use crate::auth::{Authorized, RecordsRead};
use crate::error::{ApiError, Problem};
use crate::extract::PathId;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_record))
        .routes(routes!(consultation_records))
}

/// A `select` of every record column, followed by `$rest`.
macro_rules! select_records {
    ($($rest:expr),+ $(,)?) => {
        concat!(
            "select id, consultation_id, patient_id, physician_id, content, status, version,
                    updated_at
               from records ",
            $($rest),+
        )
    };
}

/// Whether a record still counts; voiding is for good.
#[derive(Debug, Clone, Copy, ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum RecordStatus {
    Active,
    Voided,
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub id: Uuid,
    pub consultation_id: Uuid,
    pub patient_id: Uuid,
    pub physician_id: Uuid,
    /// Null once the patient is erased.
    pub content: Option<String>,
    #[schema(value_type = RecordStatus)]
    pub status: String,
    /// The record's version; the `ETag`.
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

single::resource!(Record, "record");

single::get_one! {
    /// A clinical record as the read model has it.
    fn get_record() -> Record, Authorized<RecordsRead>, Consistent<Records>,
    get "/records/{id}", tag "records", scope "records:read",
    // A record's tenant is its consultation's.
    select_records!(
        "where id = $1 and ",
        in_tenant!("records.consultation_id", "consultations", "$2")
    )
}

items::get_items! {
    /// A consultation's records, in creation order, voided ones included.
    fn consultation_records() -> Items<Record>,
    Authorized<RecordsRead>, Consistent<ConsultationRecords>,
    get "/consultations/{id}/records", tag "consultations", scope "records:read",
    of "consultation" in CONSULTATIONS,
    select_records!("where consultation_id = $1 order by id")
}
