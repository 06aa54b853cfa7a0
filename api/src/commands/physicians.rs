//! `POST /physicians`, `PATCH /physicians/{id}`, `POST /physicians/{id}/deactivate`,
//! `POST /physicians/{id}/erase`.

use axum::extract::State;
use axum::response::Response;
use domain::ids::PhysicianId;
use domain::physician::{Physician, PhysicianCommand};
use domain::values::{LicenseNumber, PersonName, Specialty};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use commands::Target;

use super::{
    CHECKED, CommandResponse, Deactivate, Erase, Fields, Reply, deactivation_reason, execute,
    execute_on, person_routes,
};
use crate::auth::{Authorized, PhysiciansErase, PhysiciansWrite};
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

/// `licenseNumber` is unique per tenant. (A field's own description is lost where its schema
/// comes from `schema_with`.)
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterPhysician {
    #[schema(schema_with = crate::openapi::text::<{ domain::values::PersonName::MAX_CHARS }>)]
    name: String,
    #[schema(schema_with = crate::openapi::text::<{ domain::values::Specialty::MAX_CHARS }>)]
    specialty: String,
    /// Unique per tenant.
    #[schema(schema_with = crate::openapi::text::<{ domain::values::LicenseNumber::MAX_CHARS }>)]
    license_number: String,
}

/// At least one field; an absent field is left as it is.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(min_properties = 1)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdatePhysician {
    #[schema(schema_with = crate::openapi::text::<{ domain::values::PersonName::MAX_CHARS }>)]
    name: Option<String>,
    #[schema(schema_with = crate::openapi::text::<{ domain::values::Specialty::MAX_CHARS }>)]
    specialty: Option<String>,
}

/// Registers a physician.
#[utoipa::path(post, path = "/physicians", tag = "physicians",
    security(("bearer" = ["physicians:write"])), request_body = RegisterPhysician,
    params(crate::openapi::CommandHeaders),
    responses(
        (status = 201, body = CommandResponse),
        (status = 409, description = "The license number is registered already", body = Problem),
        (status = 422, body = Problem),
    ))]
async fn register(
    State(app): State<AppState>,
    caller: Authorized<PhysiciansWrite>,
    Command { body, context }: Command<RegisterPhysician>,
) -> Result<Response, ApiError> {
    let mut fields = Fields::default();
    let name = fields.check("name", PersonName::parse(&body.name));
    let specialty = fields.check("specialty", Specialty::parse(&body.specialty));
    let license_number = fields.check("licenseNumber", LicenseNumber::parse(&body.license_number));
    fields.finish()?;

    let id = PhysicianId::new();
    let command = PhysicianCommand::Register {
        id,
        name: name.expect(CHECKED),
        specialty: specialty.expect(CHECKED),
        license_number: license_number.expect(CHECKED),
    };
    let reply = Reply::created(id.as_uuid(), "/physicians");
    let target = Target::New(id.as_uuid());
    execute::<Physician>(&app, &caller, &context, target, command, reply).await
}

/// Changes a physician's name or specialty.
#[utoipa::path(patch, path = "/physicians/{id}", tag = "physicians",
    security(("bearer" = ["physicians:write"])), request_body = UpdatePhysician,
    params(("id" = uuid::Uuid, Path), crate::openapi::CommandHeaders),
    responses(
        (status = 200, body = CommandResponse),
        (status = 404, body = Problem),
        (status = 409, body = Problem),
        (status = 412, body = Problem),
        (status = 422, body = Problem),
    ))]
async fn update(
    State(app): State<AppState>,
    caller: Authorized<PhysiciansWrite>,
    PathId(id): PathId,
    Command { body, context }: Command<UpdatePhysician>,
) -> Result<Response, ApiError> {
    let mut fields = Fields::default();
    fields.require_any(&[
        ("name", body.name.is_some()),
        ("specialty", body.specialty.is_some()),
    ]);
    let name = fields.check_optional("name", body.name.as_deref(), PersonName::parse);
    let specialty = fields.check_optional("specialty", body.specialty.as_deref(), Specialty::parse);
    fields.finish()?;

    let command = PhysicianCommand::Update {
        name: name.expect(CHECKED),
        specialty: specialty.expect(CHECKED),
    };
    execute_on::<Physician>(&app, &caller, &context, id, command).await
}

person_routes! {
    /// Deactivates a physician for good.
    fn deactivate() -> Physician, PhysicianCommand, Authorized<PhysiciansWrite>,
    post "/physicians/{id}/deactivate", scope "physicians:write";
    /// Erases a physician's personal data (name, license number) for good, as a patient's; their
    /// future consultations are cancelled. Erasing again changes nothing (200).
    fn erase() -> Authorized<PhysiciansErase>, post "/physicians/{id}/erase", scope "physicians:erase";
    tag "physicians",
}
