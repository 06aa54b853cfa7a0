//! The OpenAPI document: routes register themselves through `utoipa_axum`, so the document
//! cannot miss one; this module holds what they share.

use std::ops::RangeInclusive;

use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{Object, ObjectBuilder, SchemaType, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{IntoParams, Modify, OpenApi};

use crate::error::PROBLEM_JSON;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "HAP",
        description = "Event-sourced clinic scheduling: patients, physicians, consultations \
                       and clinical records. Every route but health, metrics and this document \
                       needs `Authorization: Bearer <JWT>` whose `scope` grants the route's \
                       scope; the token's `tenant` scopes everything. Commands answer \
                       `{id, version, position}`; errors are `application/problem+json`."
    ),
    modifiers(&BearerScheme)
)]
pub struct ApiDoc;

/// The `bearer` security scheme each route's `security(("bearer" = [scope]))` names.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.bearer_format = Some("JWT".to_owned());
        components.add_security_scheme("bearer", SecurityScheme::Http(http));
    }
}

/// Documents every error answer as `application/problem+json`, which is what
/// `problem_response` serves (the routes declare their `Problem` bodies with utoipa's JSON
/// default), and adds the answers any request to an operation can get, which the routes leave
/// out: 400 for a header, path, query string or body that cannot be parsed; where a token is
/// needed, 401, 403 and 503 (the database unavailable); and for a command (it takes an
/// `Idempotency-Key`), 422. Every 503 carries `Retry-After`. A schema-driven
/// client (or fuzzer) then expects what HAP answers. Applied once the routes have added their
/// operations (`api::split`), not as one of `ApiDoc`'s modifiers, which run before there are
/// any.
pub(crate) struct ProblemAnswers;

impl Modify for ProblemAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let takes_input = operation.parameters.as_ref().is_some_and(|p| !p.is_empty())
                    || operation.request_body.is_some();
                let needs_token = operation.security.as_ref().is_some_and(|s| !s.is_empty());
                let is_command = operation.parameters.iter().flatten().any(
                    |parameter| matches!(parameter, RefOr::T(p) if p.name == "Idempotency-Key"),
                );
                let answers = &mut operation.responses.responses;
                if takes_input {
                    answers.entry("400".into()).or_insert_with(|| {
                        problem("A header, the path, the query string or the body cannot be parsed")
                    });
                }
                if is_command {
                    answers.entry("422".into()).or_insert_with(|| {
                        problem(
                            "A field is invalid, or the Idempotency-Key was used with another \
                             request",
                        )
                    });
                }
                if needs_token {
                    answers.entry("401".into()).or_insert_with(|| {
                        problem(
                            "The bearer token is missing, malformed, expired or not for this API",
                        )
                    });
                    answers
                        .entry("403".into())
                        .or_insert_with(|| problem("The token's scope does not grant this route"));
                    // Every route behind a token reads or writes PostgreSQL.
                    answers.entry("503".into()).or_insert_with(|| {
                        problem(
                            "The database is unavailable (down, restarting, out of connections); \
                             try again after `Retry-After`",
                        )
                    });
                }
                for (status, answer) in answers.iter_mut() {
                    if let RefOr::T(response) = answer {
                        as_problem_json(response);
                        if status == "503" {
                            response
                                .headers
                                .insert("Retry-After".into(), retry_after().into());
                        }
                    }
                }
            }
        }
    }
}

/// The `Retry-After` header every 503 carries.
fn retry_after() -> Header {
    HeaderBuilder::new()
        .schema(Some(ObjectBuilder::new().schema_type(Type::Integer)))
        .description(Some("Seconds to wait before trying again"))
        .build()
}

/// An error answer with a `Problem` body.
fn problem(description: &str) -> RefOr<Response> {
    let body = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("Problem")))
        .build();
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(PROBLEM_JSON, body)
            .build(),
    )
}

/// Files a `Problem` body declared as JSON under `application/problem+json`.
fn as_problem_json(response: &mut Response) {
    let is_problem = |content: &RefOr<utoipa::openapi::Content>| match content {
        RefOr::T(content) => matches!(
            &content.schema,
            Some(RefOr::Ref(schema)) if schema.ref_location.ends_with("/Problem")
        ),
        RefOr::Ref(_) => false,
    };
    if response.content.get(JSON).is_some_and(is_problem)
        && let Some(body) = response.content.shift_remove(JSON)
    {
        response.content.insert(PROBLEM_JSON.to_owned(), body);
    }
}

/// The media type utoipa gives a declared body.
const JSON: &str = "application/json";

/// The headers every command understands.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct CommandHeaders {
    /// Echoed on the response and stored with every event the request causes; generated when
    /// absent.
    #[param(
        rename = "X-Correlation-Id",
        nullable = false,
        min_length = 1,
        max_length = 128,
        pattern = r"^[!-~]([ -~]*[!-~])?$"
    )]
    correlation_id: Option<String>,
    /// Repeating a request with the same key returns the first response and appends nothing.
    #[param(
        rename = "Idempotency-Key",
        nullable = false,
        min_length = 1,
        max_length = 255,
        pattern = r"^[!-~]([ -~]*[!-~])?$"
    )]
    idempotency_key: Option<String>,
    /// The version the aggregate must be at, as an ETag (`"3"`); otherwise 412. `*`: any.
    #[param(
        rename = "If-Match",
        nullable = false,
        pattern = r#"^(\*|(W/)?"[0-9]{1,18}"|[0-9]{1,18})$"#
    )]
    if_match: Option<String>,
}

/// The headers every query understands.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct QueryHeaders {
    /// A `position` a command of the caller's tenant answered: the response then includes
    /// that command's effect, or is a 503 with `Retry-After` if the read model does not catch
    /// up in time. A position no event of the tenant has is a 400.
    #[param(
        rename = "X-Min-Position",
        nullable = false,
        pattern = "^0*[1-9][0-9]{0,17}$"
    )]
    min_position: Option<String>,
}

/// What the domain's text values accept (`domain::values`), as a pattern: no control character
/// but tab and newline, and something besides white space.
const TEXT: &str =
    r"^[^\x00-\x08\x0B-\x1F\x7F-\x9F]*[^\s\x00-\x1F\x7F-\x9F][^\x00-\x08\x0B-\x1F\x7F-\x9F]*$";

/// The schema of a text field of at most `MAX` characters, for `#[schema(schema_with =
/// text::<{Type::MAX_CHARS}>)]`: one definition of the rule, with each field's length taken
/// from its value type.
pub fn text<const MAX: usize>() -> Object {
    string(false, 1..=MAX, TEXT)
}

/// The schema of a patient's e-mail (`domain::values::Email`), for `schema_with`: `null` is
/// among its types where a request may send it (a registration) and not where an absent field
/// is the only way to leave it as it is (an update).
pub fn email<const NULLABLE: bool>() -> Object {
    string(
        NULLABLE,
        3..=254,
        r"^\s*[^@\s]+@[^@\s.][^@\s]*\.[^@\s]*[^@\s.]\s*$",
    )
}

/// The schema of a patient's phone (`domain::values::Phone`), `null` as in [`email`].
pub fn phone<const NULLABLE: bool>() -> Object {
    string(
        NULLABLE,
        1..=30,
        r"^\s*[ +\-.()]*([0-9][ +\-.()]*){6,20}\s*$",
    )
}

/// A string of `length` characters that matches `pattern`, or `null` too where `nullable`.
fn string(nullable: bool, length: RangeInclusive<usize>, pattern: &str) -> Object {
    let types = if nullable {
        SchemaType::from_iter([Type::String, Type::Null])
    } else {
        SchemaType::new(Type::String)
    };
    ObjectBuilder::new()
        .schema_type(types)
        .min_length(Some(*length.start()))
        .max_length(Some(*length.end()))
        .pattern(Some(pattern))
        .build()
}
