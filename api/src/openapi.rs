//! The OpenAPI document: routes register themselves through `utoipa_axum`, so the document
//! cannot miss one; this module holds what they share.

use utoipa::{IntoParams, OpenApi};

#[derive(OpenApi)]
#[openapi(info(
    title = "HAP",
    description = "Event-sourced clinic scheduling: patients, physicians, consultations and \
                   clinical records. Commands answer `{id, version, position}`; errors are \
                   `application/problem+json`."
))]
pub struct ApiDoc;

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
