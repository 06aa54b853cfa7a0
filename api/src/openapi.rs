//! The OpenAPI document: routes register themselves through `utoipa_axum`, so the document
//! cannot miss one; this module holds what they share.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi};

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

/// The headers every command understands.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct CommandHeaders {
    /// Echoed on the response and stored with every event the request causes; generated when
    /// absent.
    #[param(rename = "X-Correlation-Id")]
    correlation_id: Option<String>,
    /// Repeating a request with the same key returns the first response and appends nothing.
    #[param(rename = "Idempotency-Key")]
    idempotency_key: Option<String>,
    /// The version the aggregate must be at, as an ETag (`"3"`); otherwise 412.
    #[param(rename = "If-Match")]
    if_match: Option<String>,
}
