//! `POST /patients`, `PATCH /patients/{id}`, `POST /patients/{id}/deactivate`,
//! `POST /patients/{id}/erase`.

use axum::extract::State;
use axum::response::Response;
use chrono::{NaiveDate, Utc};
use domain::ids::PatientId;
use domain::patient::{Patient, PatientCommand};
use domain::values::{BirthDate, DocumentNumber, Email, PersonName, Phone};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use commands::Target;

use super::{
    CHECKED, CommandResponse, Deactivate, Erase, Fields, Reply, deactivation_reason, execute,
    execute_on, person_routes,
};
use crate::auth::{Authorized, PatientsErase, PatientsWrite};
use crate::error::{ApiError, Problem};
use crate::extract::{Command, PathId};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(update))
        .routes(routes!(deactivate))
        .routes(routes!(erase))
}

/// `documentNumber` is unique per tenant. (A field's own description is lost where its
/// schema comes from `schema_with`.)
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterPatient {
    /// 1 to 200 characters.
    #[schema(schema_with = crate::openapi::text::<{ domain::values::PersonName::MAX_CHARS }>)]
    name: String,
    /// Not in the future, not before 1900.
    birth_date: NaiveDate,
    /// 1 to 40 characters, unique per tenant.
    #[schema(schema_with = crate::openapi::text::<{ domain::values::DocumentNumber::MAX_CHARS }>)]
    document_number: String,
    #[schema(schema_with = crate::openapi::email::<true>)]
    email: Option<String>,
    #[schema(schema_with = crate::openapi::phone::<true>)]
    phone: Option<String>,
}

/// At least one field; an absent field is left as it is.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(min_properties = 1)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdatePatient {
    #[schema(schema_with = crate::openapi::text::<{ domain::values::PersonName::MAX_CHARS }>)]
    name: Option<String>,
    #[schema(schema_with = crate::openapi::email::<false>)]
    email: Option<String>,
    #[schema(schema_with = crate::openapi::phone::<false>)]
    phone: Option<String>,
}

/// Registers a patient.
#[utoipa::path(post, path = "/patients", tag = "patients",
    security(("bearer" = ["patients:write"])), request_body = RegisterPatient,
    params(crate::openapi::CommandHeaders),
    responses(
        (status = 201, description = "Registered; `Location` names the patient", body = CommandResponse),
        (status = 409, description = "The document number is registered already", body = Problem),
        (status = 422, description = "A field is missing, unknown or invalid", body = Problem),
    ))]
async fn register(
    State(app): State<AppState>,
    caller: Authorized<PatientsWrite>,
    Command { body, context }: Command<RegisterPatient>,
) -> Result<Response, ApiError> {
    let today = Utc::now().date_naive();
    let mut fields = Fields::default();
    let name = fields.check("name", PersonName::parse(&body.name));
    let birth_date = fields.check("birthDate", BirthDate::parse(body.birth_date, today));
    let document_number = fields.check(
        "documentNumber",
        DocumentNumber::parse(&body.document_number),
    );
    let email = fields.check_optional("email", body.email.as_deref(), Email::parse);
    let phone = fields.check_optional("phone", body.phone.as_deref(), Phone::parse);
    fields.finish()?;

    let id = PatientId::new();
    let command = PatientCommand::Register {
        id,
        name: name.expect(CHECKED),
        birth_date: birth_date.expect(CHECKED),
        document_number: document_number.expect(CHECKED),
        email: email.expect(CHECKED),
        phone: phone.expect(CHECKED),
    };
    let reply = Reply::created(id.as_uuid(), "/patients");
    let target = Target::New(id.as_uuid());
    execute::<Patient>(&app, &caller, &context, target, command, reply).await
}

/// Changes a patient's name, e-mail or phone; only what changed is recorded.
#[utoipa::path(patch, path = "/patients/{id}", tag = "patients",
    security(("bearer" = ["patients:write"])), request_body = UpdatePatient,
    params(("id" = uuid::Uuid, Path), crate::openapi::CommandHeaders),
    responses(
        (status = 200, body = CommandResponse),
        (status = 404, body = Problem),
        (status = 409, description = "The patient is deactivated", body = Problem),
        (status = 412, description = "`If-Match` names another version", body = Problem),
        (status = 422, body = Problem),
    ))]
async fn update(
    State(app): State<AppState>,
    caller: Authorized<PatientsWrite>,
    PathId(id): PathId,
    Command { body, context }: Command<UpdatePatient>,
) -> Result<Response, ApiError> {
    let mut fields = Fields::default();
    fields.require_any(&[
        ("name", body.name.is_some()),
        ("email", body.email.is_some()),
        ("phone", body.phone.is_some()),
    ]);
    let name = fields.check_optional("name", body.name.as_deref(), PersonName::parse);
    let email = fields.check_optional("email", body.email.as_deref(), Email::parse);
    let phone = fields.check_optional("phone", body.phone.as_deref(), Phone::parse);
    fields.finish()?;

    let command = PatientCommand::Update {
        name: name.expect(CHECKED),
        email: email.expect(CHECKED),
        phone: phone.expect(CHECKED),
    };
    execute_on::<Patient>(&app, &caller, &context, id, command).await
}

person_routes! {
    /// Deactivates a patient for good; deactivating again changes nothing.
    fn deactivate() -> Patient, PatientCommand, Authorized<PatientsWrite>,
    post "/patients/{id}/deactivate", scope "patients:write";
    /// Erases a patient's personal data for good: their key is deleted with the `PatientErased`
    /// event, so every personal field and record content sealed under it reads as null from then
    /// on, and their future consultations are cancelled. Erasing again changes nothing (200).
    fn erase() -> Authorized<PatientsErase>, post "/patients/{id}/erase", scope "patients:erase";
    tag "patients",
}
