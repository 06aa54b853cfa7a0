//! The command side of the HTTP API: one module per resource, and [`execute`], which runs a
//! request's command through the command pipeline (`commands::Pipeline`) and maps its outcome
//! to a response: status, body, `ETag`, `Location`, problem+json.

pub mod consultations;
pub mod patients;
pub mod physicians;
pub mod records;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use commands::{CommandError, CommandMeta, Outcome, Remembered, Target};
use domain::Aggregate;
use domain::values::{Invalid, Reason};
use serde::Serialize;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, FieldError};
use crate::extract::CommandContext;
use crate::state::AppState;

/// What every successful command answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CommandResponse {
    pub id: Uuid,
    /// The aggregate's stream version after the command.
    pub version: u64,
    /// Opaque token for `X-Min-Position`.
    pub position: Option<String>,
    /// Only when a consultation is requested: `requested`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
}

/// How a command answers when it succeeds: the first time, from what it did, and on a repeat
/// under the same idempotency key, from what the key remembered of that.
pub struct Reply {
    pub status: StatusCode,
    /// The status when the command changed nothing (an erasure repeated), if it differs.
    pub unchanged: Option<StatusCode>,
    /// The resource's id (a record's, even though its stream is the record book's).
    pub id: Uuid,
    /// Where a created resource's collection is (`/patients`): its `Location` is in it.
    pub collection: Option<&'static str>,
    /// The consultation status to report (`requested` when scheduling starts).
    pub consultation_status: Option<&'static str>,
}

impl Reply {
    pub fn ok(id: Uuid) -> Self {
        Self {
            status: StatusCode::OK,
            unchanged: None,
            id,
            collection: None,
            consultation_status: None,
        }
    }

    pub fn created(id: Uuid, collection: &'static str) -> Self {
        Self {
            status: StatusCode::CREATED,
            collection: Some(collection),
            ..Self::ok(id)
        }
    }

    /// 202 for a command whose effects go on after the answer (an erasure cancels the
    /// person's future consultations), 200 when it changed nothing.
    pub fn accepted(id: Uuid) -> Self {
        Self {
            status: StatusCode::ACCEPTED,
            unchanged: Some(StatusCode::OK),
            ..Self::ok(id)
        }
    }

    /// The response to a command whose outcome is `outcome`. On a repeat, the id is the one
    /// the first request created, not the one this request would have.
    fn respond(&self, outcome: &Remembered) -> Response {
        let status = match self.unchanged {
            Some(unchanged) if !outcome.changed => unchanged,
            _ => self.status,
        };
        let body = CommandResponse {
            id: outcome.id,
            version: outcome.version.value(),
            position: outcome.position.map(|p| p.to_string()),
            status: self.consultation_status,
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::ETAG,
            HeaderValue::from_str(&format!("\"{}\"", outcome.version)).expect("an ETag is ASCII"),
        );
        if let Some(collection) = self.collection {
            headers.insert(
                header::LOCATION,
                HeaderValue::from_str(&format!("{collection}/{}", outcome.id))
                    .expect("locations are ASCII paths"),
            );
        }
        response
    }
}

/// Runs a request's command against the existing aggregate `id`: 200 with its new version.
pub async fn execute_on<A>(
    app: &AppState,
    caller: &Caller,
    context: &CommandContext,
    id: Uuid,
    command: A::Command,
) -> Result<Response, ApiError>
where
    A: Aggregate,
    A::Command: Clone,
{
    let target = Target::Existing(id);
    execute::<A>(app, caller, context, target, command, Reply::ok(id)).await
}

/// Runs a request's command against the aggregate in `target` and answers as `reply` says.
pub async fn execute<A>(
    app: &AppState,
    caller: &Caller,
    context: &CommandContext,
    target: Target,
    command: A::Command,
    reply: Reply,
) -> Result<Response, ApiError>
where
    A: Aggregate,
    A::Command: Clone,
{
    let meta = CommandMeta {
        idempotency: context.idempotency.clone(),
        subject: Some(reply.id),
        expected: context.if_match,
        actor_id: Some(caller.subject.clone()),
        ..CommandMeta::new(&caller.tenant_id, context.correlation_id.clone())
    };
    match app.commands.execute::<A>(&meta, target, command).await {
        Ok(Outcome::Done(done)) => Ok(reply.respond(&Remembered::of(&done, Some(reply.id)))),
        Ok(Outcome::Replayed(remembered)) => Ok(reply.respond(&remembered)),
        Err(CommandError::ClaimTaken { kind, value }) => Err(claim_conflict(&kind, &value)),
        Err(error) => Err(error.into()),
    }
}

/// The 409 for a value another aggregate holds already.
fn claim_conflict(kind: &str, value: &str) -> ApiError {
    let what = match kind {
        "patient.documentNumber" => "a patient with this documentNumber",
        "physician.licenseNumber" => "a physician with this licenseNumber",
        _ => "a resource with this value",
    };
    ApiError::Conflict(format!("{what} ({value:?}) already exists"))
}

/// The body of the erasure commands.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Erase {
    /// Why, for the audit trail: no personal data.
    #[schema(schema_with = crate::openapi::text::<{ domain::values::Reason::MAX_CHARS }>)]
    reason: String,
}

/// Runs a request's erasure of the person `id`, whose aggregate's erase command `erase`
/// builds from the reason: 202, or 200 when they were erased already.
pub async fn erase<A>(
    app: &AppState,
    caller: &Caller,
    context: &CommandContext,
    id: Uuid,
    body: &Erase,
    erase: impl FnOnce(Reason) -> A::Command,
) -> Result<Response, ApiError>
where
    A: Aggregate,
    A::Command: Clone,
{
    let mut fields = Fields::default();
    let reason = fields.check("reason", Reason::parse(&body.reason));
    fields.finish()?;
    let command = erase(reason.expect(CHECKED));
    let reply = Reply::accepted(id);
    let response = execute::<A>(app, caller, context, Target::Existing(id), command, reply).await?;
    // Who erased whom, and when: never the reason, which is free text.
    if response.status() == StatusCode::ACCEPTED {
        tracing::info!(person = %id, actor = %caller.subject, tenant = %caller.tenant_id,
            kind = A::KIND.as_str(), "a person's personal data was erased");
    }
    Ok(response)
}

/// The `…/deactivate` and `…/erase` routes of a person (a patient or a physician), which run
/// `$command::Deactivate` and `$command::Erase` on the `$person` aggregate `id`. Both kinds of
/// person answer them the same way, so their OpenAPI answers are written here once. The
/// caller's module imports the names used here.
macro_rules! person_routes {
    (
        $(#[doc = $deactivate_doc:tt])*
        fn deactivate() -> $person:ident, $command:ident, Authorized<$write:ident>,
        post $deactivate_path:tt, scope $write_scope:tt;
        $(#[doc = $erase_doc:tt])*
        fn erase() -> Authorized<$erase:ident>, post $erase_path:tt, scope $erase_scope:tt;
        tag $tag:tt $(,)?
    ) => {
        $(#[doc = $deactivate_doc])*
        #[utoipa::path(post, path = $deactivate_path, tag = $tag,
            security(("bearer" = [$write_scope])),
            request_body(content = Option<Deactivate>, description = "Optional"),
            params(("id" = uuid::Uuid, Path), crate::openapi::CommandHeaders),
            responses(
                (status = 200, body = CommandResponse),
                (status = 404, body = Problem),
                (status = 412, body = Problem),
            ))]
        async fn deactivate(
            State(app): State<AppState>,
            caller: Authorized<$write>,
            PathId(id): PathId,
            Command { body, context }: Command<Option<Deactivate>>,
        ) -> Result<Response, ApiError> {
            let command = $command::Deactivate {
                reason: deactivation_reason(body)?,
            };
            execute_on::<$person>(&app, &caller, &context, id, command).await
        }

        $(#[doc = $erase_doc])*
        #[utoipa::path(post, path = $erase_path, tag = $tag,
            security(("bearer" = [$erase_scope])), request_body = Erase,
            params(("id" = uuid::Uuid, Path), crate::openapi::CommandHeaders),
            responses(
                (status = 202, description = "Erased; the future consultations are being cancelled", body = CommandResponse),
                (status = 200, description = "Erased already: nothing changed", body = CommandResponse),
                (status = 404, body = Problem),
                (status = 412, body = Problem),
                (status = 422, description = "The reason is missing or invalid", body = Problem),
            ))]
        async fn erase(
            State(app): State<AppState>,
            caller: Authorized<$erase>,
            PathId(id): PathId,
            Command { body, context }: Command<Erase>,
        ) -> Result<Response, ApiError> {
            let erase = |reason| $command::Erase { reason };
            super::erase::<$person>(&app, &caller, &context, id, &body, erase).await
        }
    };
}
use person_routes;

/// The optional body of the deactivation commands.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Deactivate {
    #[schema(schema_with = crate::openapi::text::<{ domain::values::Reason::MAX_CHARS }>)]
    reason: Option<String>,
}

fn deactivation_reason(body: Option<Deactivate>) -> Result<Option<Reason>, ApiError> {
    let mut fields = Fields::default();
    let reason = fields.check_optional(
        "reason",
        body.as_ref().and_then(|b| b.reason.as_deref()),
        Reason::parse,
    );
    fields.finish()?;
    Ok(reason.expect(CHECKED))
}

/// Collects the field errors of a request body, so that one 422 lists all of them.
#[derive(Default)]
pub struct Fields(Vec<FieldError>);

/// The message of the `expect` after [`Fields::finish`]: every `None` was recorded as an error.
pub const CHECKED: &str = "Fields::finish returned Ok, so every checked value is Some";

impl Fields {
    /// The value, or `None` with the error recorded under `field`.
    pub fn check<T>(&mut self, field: &str, result: Result<T, Invalid>) -> Option<T> {
        result
            .map_err(|Invalid(message)| self.0.push(FieldError::new(field, message)))
            .ok()
    }

    /// Like [`Fields::check`] for an optional field: `Some(None)` when it is absent.
    pub fn check_optional<T>(
        &mut self,
        field: &str,
        value: Option<&str>,
        parse: impl FnOnce(&str) -> Result<T, Invalid>,
    ) -> Option<Option<T>> {
        match value {
            None => Some(None),
            Some(value) => self.check(field, parse(value)).map(Some),
        }
    }

    /// Records an error unless the body has at least one of the optional `fields` (each a name,
    /// and whether the body has it): an update must change something.
    pub fn require_any(&mut self, fields: &[(&str, bool)]) {
        if !fields.iter().any(|(_, present)| *present) {
            let names: Vec<&str> = fields.iter().map(|(name, _)| *name).collect();
            let message = format!("at least one of {} is required", names.join(", "));
            self.reject("body", &message);
        }
    }

    /// Records an error that involves no single parsed value.
    pub fn reject(&mut self, field: &str, message: &str) {
        self.0.push(FieldError::new(field, message));
    }

    /// `Err(422)` listing every recorded error, if there is any.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(fields: Fields) -> Vec<(String, String)> {
        match fields.finish() {
            Ok(()) => vec![],
            Err(ApiError::Validation(errors)) => {
                errors.into_iter().map(|e| (e.field, e.message)).collect()
            }
            Err(other) => panic!("not a validation error: {other:?}"),
        }
    }

    #[test]
    fn an_update_naming_no_field_is_refused_with_every_field_named() {
        let mut none = Fields::default();
        none.require_any(&[("name", false), ("email", false), ("phone", false)]);
        let message = "at least one of name, email, phone is required";
        assert_eq!(errors(none), [("body".to_owned(), message.to_owned())]);

        let mut one = Fields::default();
        one.require_any(&[("name", false), ("email", true), ("phone", false)]);
        assert!(errors(one).is_empty());
    }
}
