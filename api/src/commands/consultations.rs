//! `POST /consultations` (starts the scheduling saga), `PATCH /consultations/{id}`,
//! `POST /consultations/{id}/cancel` (starts the cancellation saga) and `…/complete`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use domain::consultation::{Consultation, ConsultationCommand, Status};
use domain::ids::{ConsultationId, PatientId, PhysicianId};
use domain::patient::Patient;
use domain::physician::Physician;
use domain::values::{DurationMinutes, Notes, Reason, StartsAt};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use commands::Target;

use super::{CHECKED, CommandResponse, Fields, Reply, execute, execute_on};
use crate::auth::{Authorized, ConsultationsWrite};
use crate::error::{ApiError, Problem};
use crate::extract::{Command, PathId};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(request))
        .routes(routes!(update))
        .routes(routes!(cancel))
        .routes(routes!(complete))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestConsultation {
    patient_id: Uuid,
    physician_id: Uuid,
    /// In the future.
    starts_at: DateTime<Utc>,
    /// 5 to 240; 30 when absent.
    #[schema(minimum = 5, maximum = 240)]
    duration_minutes: Option<i64>,
    #[schema(schema_with = crate::openapi::text::<{ domain::values::Reason::MAX_CHARS }>)]
    reason: Option<String>,
}

/// At least one field; an absent field is left as it is.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(min_properties = 1)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateConsultation {
    #[schema(schema_with = crate::openapi::text::<{ domain::values::Reason::MAX_CHARS }>)]
    reason: Option<String>,
    #[schema(schema_with = crate::openapi::text::<{ domain::values::Notes::MAX_CHARS }>)]
    notes: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CancelConsultation {
    #[schema(schema_with = crate::openapi::text::<{ domain::values::Reason::MAX_CHARS }>)]
    reason: String,
}

/// Requests a consultation. Answers 202: whether the patient is active and the physician free
/// is decided by the scheduling saga, and shows as the consultation's status.
#[utoipa::path(post, path = "/consultations", tag = "consultations",
    security(("bearer" = ["consultations:write"])),
    request_body = RequestConsultation,
    params(crate::openapi::CommandHeaders),
    responses(
        (status = 202, description = "Scheduling started; status is `requested`", body = CommandResponse),
        (status = 422, description = "A field is invalid, or the patient or physician does not exist", body = Problem),
    ))]
async fn request(
    State(app): State<AppState>,
    caller: Authorized<ConsultationsWrite>,
    Command { body, context }: Command<RequestConsultation>,
) -> Result<Response, ApiError> {
    let now = Utc::now();
    let mut fields = Fields::default();
    let starts_at = fields.check("startsAt", StartsAt::parse(body.starts_at, now));
    let duration = match body.duration_minutes {
        None => Some(DurationMinutes::DEFAULT),
        Some(minutes) => fields.check("durationMinutes", DurationMinutes::parse(minutes)),
    };
    let reason = fields.check_optional("reason", body.reason.as_deref(), Reason::parse);
    fields.finish()?;

    // Facts from other streams: read current, never from the cache alone.
    let (patient, physician) = tokio::try_join!(
        app.commands
            .aggregates()
            .current_in::<Patient>(&caller.tenant_id, body.patient_id),
        app.commands
            .aggregates()
            .current_in::<Physician>(&caller.tenant_id, body.physician_id),
    )?;
    let id = ConsultationId::new();
    let command = ConsultationCommand::Request {
        id,
        patient_id: PatientId::from(body.patient_id),
        patient_exists: patient.state != Patient::Unregistered,
        physician_id: PhysicianId::from(body.physician_id),
        physician_exists: physician.state != Physician::Unregistered,
        starts_at: starts_at.expect(CHECKED),
        duration: duration.expect(CHECKED),
        reason: reason.expect(CHECKED),
    };
    let reply = Reply {
        status: StatusCode::ACCEPTED,
        consultation_status: Some(Status::Requested.as_str()),
        ..Reply::created(id.as_uuid(), "/consultations")
    };
    let target = Target::New(id.as_uuid());
    execute::<Consultation>(&app, &caller, &context, target, command, reply).await
}

/// Changes a scheduled consultation's reason or notes.
#[utoipa::path(patch, path = "/consultations/{id}", tag = "consultations",
    security(("bearer" = ["consultations:write"])),
    request_body = UpdateConsultation,
    params(("id" = uuid::Uuid, Path), crate::openapi::CommandHeaders),
    responses(
        (status = 200, body = CommandResponse),
        (status = 404, body = Problem),
        (status = 409, description = "The consultation is not scheduled", body = Problem),
        (status = 412, body = Problem),
        (status = 422, body = Problem),
    ))]
async fn update(
    State(app): State<AppState>,
    caller: Authorized<ConsultationsWrite>,
    PathId(id): PathId,
    Command { body, context }: Command<UpdateConsultation>,
) -> Result<Response, ApiError> {
    let mut fields = Fields::default();
    fields.require_any(&[
        ("reason", body.reason.is_some()),
        ("notes", body.notes.is_some()),
    ]);
    let reason = fields.check_optional("reason", body.reason.as_deref(), Reason::parse);
    let notes = fields.check_optional("notes", body.notes.as_deref(), Notes::parse);
    fields.finish()?;

    let command = ConsultationCommand::Update {
        reason: reason.expect(CHECKED),
        notes: notes.expect(CHECKED),
    };
    execute_on::<Consultation>(&app, &caller, &context, id, command).await
}

/// Requests the cancellation of a scheduled consultation (the cancellation saga voids its
/// records, then cancels it and releases the slot).
#[utoipa::path(post, path = "/consultations/{id}/cancel", tag = "consultations",
    security(("bearer" = ["consultations:write"])),
    request_body = CancelConsultation,
    params(("id" = uuid::Uuid, Path), crate::openapi::CommandHeaders),
    responses(
        (status = 202, description = "Cancellation started", body = CommandResponse),
        (status = 404, body = Problem),
        (status = 409, body = Problem),
        (status = 412, body = Problem),
        (status = 422, body = Problem),
    ))]
async fn cancel(
    State(app): State<AppState>,
    caller: Authorized<ConsultationsWrite>,
    PathId(id): PathId,
    Command { body, context }: Command<CancelConsultation>,
) -> Result<Response, ApiError> {
    let mut fields = Fields::default();
    let reason = fields.check("reason", Reason::parse(&body.reason));
    fields.finish()?;

    let command = ConsultationCommand::Cancel {
        reason: reason.expect(CHECKED),
    };
    let reply = Reply {
        status: StatusCode::ACCEPTED,
        ..Reply::ok(id)
    };
    let target = Target::Existing(id);
    execute::<Consultation>(&app, &caller, &context, target, command, reply).await
}

/// Marks a scheduled consultation as done.
#[utoipa::path(post, path = "/consultations/{id}/complete", tag = "consultations",
    security(("bearer" = ["consultations:write"])),
    params(("id" = uuid::Uuid, Path), crate::openapi::CommandHeaders),
    responses(
        (status = 200, body = CommandResponse),
        (status = 404, body = Problem),
        (status = 409, body = Problem),
        (status = 412, body = Problem),
    ))]
async fn complete(
    State(app): State<AppState>,
    caller: Authorized<ConsultationsWrite>,
    PathId(id): PathId,
    Command { context, .. }: Command<Option<serde_json::Map<String, serde_json::Value>>>,
) -> Result<Response, ApiError> {
    let command = ConsultationCommand::Complete;
    execute_on::<Consultation>(&app, &caller, &context, id, command).await
}
