//! `POST /consultations/{id}/records` and `PATCH /records/{id}`. Records live in their
//! consultation's record book (one stream per consultation); a claim maps each record id to
//! its book.

use axum::extract::{DefaultBodyLimit, State};
use axum::response::Response;
use domain::consultation::Consultation;
use domain::ids::{ConsultationId, RecordId};
use domain::record::{ConsultationFacts, RecordBook, RecordCommand};
use domain::values::RecordContent;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use commands::Target;

use super::{CHECKED, CommandResponse, Fields, Reply, execute};
use crate::auth::{Authorized, RecordsWrite};
use crate::error::{ApiError, Problem};
use crate::extract::{Command, PathId, RECORD_BODY_LIMIT};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create))
        .routes(routes!(update))
        .layer(DefaultBodyLimit::max(RECORD_BODY_LIMIT))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecordBody {
    /// 1 to 20,000 characters.
    #[schema(schema_with = crate::openapi::text::<{ domain::values::RecordContent::MAX_CHARS }>)]
    content: String,
}

fn content(body: &RecordBody) -> Result<RecordContent, ApiError> {
    let mut fields = Fields::default();
    let content = fields.check("content", RecordContent::parse(&body.content));
    fields.finish()?;
    Ok(content.expect(CHECKED))
}

/// Writes a clinical record for a scheduled or done consultation.
#[utoipa::path(post, path = "/consultations/{id}/records", tag = "records",
    security(("bearer" = ["records:write"])),
    request_body = RecordBody,
    params(("id" = uuid::Uuid, Path), crate::openapi::CommandHeaders),
    responses(
        (status = 201, description = "`Location: /records/{recordId}`", body = CommandResponse),
        (status = 404, body = Problem),
        (status = 409, description = "The consultation is neither scheduled nor done", body = Problem),
        (status = 422, body = Problem),
    ))]
async fn create(
    State(app): State<AppState>,
    caller: Authorized<RecordsWrite>,
    PathId(consultation_id): PathId,
    Command { body, context }: Command<RecordBody>,
) -> Result<Response, ApiError> {
    let content = content(&body)?;
    let consultation = app
        .commands
        .aggregates()
        .current_in::<Consultation>(&caller.tenant_id, consultation_id)
        .await?;
    let Some(facts) = consultation.state.data() else {
        return Err(ApiError::NotFound("consultation not found".into()));
    };
    let id = RecordId::new();
    let command = RecordCommand::Create {
        id,
        consultation: ConsultationFacts {
            id: facts.id,
            status: facts.status,
            patient_id: facts.patient_id,
            physician_id: facts.physician_id,
        },
        content,
    };
    let book = RecordBook::stream_id(ConsultationId::from(consultation_id));
    let reply = Reply::created(id.as_uuid(), "/records");
    let target = Target::Existing(book);
    execute::<RecordBook>(&app, &caller, &context, target, command, reply).await
}

/// Replaces a record's content, unless the record was voided.
#[utoipa::path(patch, path = "/records/{id}", tag = "records",
    security(("bearer" = ["records:write"])), request_body = RecordBody,
    params(("id" = uuid::Uuid, Path), crate::openapi::CommandHeaders),
    responses(
        (status = 200, description = "`version` is the record book's", body = CommandResponse),
        (status = 404, body = Problem),
        (status = 409, description = "The record was voided", body = Problem),
        (status = 412, body = Problem),
        (status = 422, body = Problem),
    ))]
async fn update(
    State(app): State<AppState>,
    caller: Authorized<RecordsWrite>,
    PathId(id): PathId,
    Command { body, context }: Command<RecordBody>,
) -> Result<Response, ApiError> {
    let content = content(&body)?;
    let store = app.commands.store();
    let Some(book) = store
        .claim_owner(&caller.tenant_id, "record", &id.to_string())
        .await?
    else {
        return Err(ApiError::NotFound("record not found".into()));
    };
    let loaded = app
        .commands
        .aggregates()
        .current_in::<RecordBook>(&caller.tenant_id, book)
        .await?;
    let consultation_id = loaded
        .state
        .consultation_id
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("record book {book} has no records")))?;
    let command = RecordCommand::Update {
        id: RecordId::from(id),
        consultation_id,
        content,
    };
    let target = Target::Existing(book);
    execute::<RecordBook>(&app, &caller, &context, target, command, Reply::ok(id)).await
}
