//! The API's one error type and its problem+json (RFC 9457) rendering. Internal details are
//! logged with the request's correlation id and never sent to the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use commands::{CommandError, LoadError};
use domain::DomainError;
use eventstore::Position;
use serde::Serialize;

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not JSON, or a path, query or header value cannot be parsed.
    #[error("{0}")]
    BadRequest(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409: a rule of the domain forbids the command.
    #[error("{0}")]
    Conflict(String),
    /// 412: `If-Match` names another version than the current one.
    #[error("the resource is at version {current}, not {expected}")]
    PreconditionFailed { expected: u64, current: u64 },
    /// 413.
    #[error("the body is larger than this route accepts ({limit} bytes)")]
    PayloadTooLarge { limit: usize },
    /// 415.
    #[error("the body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    /// 422: well-formed JSON whose fields are missing, unknown or invalid.
    #[error("the request has invalid fields")]
    Validation(Vec<FieldError>),
    /// 422: an idempotency key reused with a different request.
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyKeyReused,
    /// 401 with `WWW-Authenticate: Bearer`: no token, or why the token is not accepted.
    #[error("{}", .0.unwrap_or("this route needs a bearer token"))]
    Unauthorized(Option<&'static str>),
    /// 403: a valid token without the scope the route needs.
    #[error("the token does not grant the scope {0}")]
    Forbidden(&'static str),
    /// 503 with `Retry-After`: a dependency does not answer (the database is down,
    /// restarting or out of connections).
    #[error("{0}")]
    Unavailable(String),
    /// 503 with `Retry-After`: the read model did not apply the event at the position the
    /// client asked for (`X-Min-Position`) within the wait.
    #[error("the read model has not reached position {0} yet")]
    ReadModelBehind(Position),
    /// 500: anything else; the cause is logged, not sent.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI reference naming the kind of problem, e.g. `/problems/validation`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Validation(_) | Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) | Self::ReadModelBehind(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad-request",
            Self::NotFound(_) => "not-found",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::Conflict(_) => "conflict",
            Self::PreconditionFailed { .. } => "precondition-failed",
            Self::PayloadTooLarge { .. } => "payload-too-large",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::Validation(_) => "validation",
            Self::IdempotencyKeyReused => "idempotency-key-reused",
            Self::Unavailable(_) => "unavailable",
            Self::ReadModelBehind(_) => "read-model-behind",
            Self::Internal(_) => "internal",
        }
    }

    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }

    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        Self::Internal(error.into())
    }
}

impl From<DomainError> for ApiError {
    fn from(error: DomainError) -> Self {
        match error {
            DomainError::NotFound(_) => Self::NotFound(error.to_string()),
            DomainError::UnknownReference { field, what } => {
                Self::validation(field, format!("no {what} has this id"))
            }
            DomainError::AlreadyExists(_)
            | DomainError::Deactivated(_)
            | DomainError::Erased(_)
            | DomainError::ConsultationNotModifiable { .. }
            | DomainError::RecordsNotAllowed(_)
            | DomainError::RecordVoided => Self::Conflict(error.to_string()),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if eventstore::is_unavailable(&error) {
            tracing::warn!(%error, "database unavailable");
            Self::Unavailable("the database is not answering; try again shortly".into())
        } else {
            Self::internal(error)
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(error: CommandError) -> Self {
        match error {
            CommandError::Rejected(rule) => rule.into(),
            CommandError::PreconditionFailed { expected, current } => Self::PreconditionFailed {
                expected: expected.value(),
                current: current.value(),
            },
            CommandError::ClaimTaken { kind, value } => {
                Self::Conflict(format!("{kind} {value:?} already exists"))
            }
            CommandError::KeyReused => Self::IdempotencyKeyReused,
            CommandError::KeptChanging => {
                Self::Conflict("the resource kept changing concurrently; try again".into())
            }
            CommandError::Load(LoadError::Store(e)) | CommandError::Store(e) => e.into(),
            other => Self::internal(other),
        }
    }
}

impl From<LoadError> for ApiError {
    fn from(error: LoadError) -> Self {
        CommandError::Load(error).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let kind = self.kind();
        // The projectors are usually a moment behind, not stuck, and a database restart takes
        // seconds: a retry soon is likely to succeed.
        let retry_after = status == StatusCode::SERVICE_UNAVAILABLE;
        // RFC 6750: a request without credentials gets the bare challenge; a bad token gets
        // `error="invalid_token"` too.
        let challenge = match &self {
            Self::Unauthorized(None) => Some(HeaderValue::from_static("Bearer")),
            Self::Unauthorized(Some(_)) => {
                Some(HeaderValue::from_static("Bearer error=\"invalid_token\""))
            }
            _ => None,
        };
        let detail = match &self {
            Self::Internal(cause) => {
                // The span carries the correlation id, so the log line can be matched to the
                // client's request without exposing the cause.
                tracing::error!(error = ?cause, "request failed");
                "an unexpected error occurred; it has been logged".to_owned()
            }
            other => other.to_string(),
        };
        let errors = match self {
            Self::Validation(errors) => errors,
            _ => vec![],
        };
        let problem = Problem {
            kind: format!("/problems/{kind}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            errors,
        };
        let mut response = problem_response(status, &problem);
        if retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
        }
        if let Some(challenge) = challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

/// The media type of every error answer (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Seconds every 503 asks the client to wait before trying again (`Retry-After`).
pub const RETRY_AFTER: &str = "1";

pub fn problem_response(status: StatusCode, problem: &Problem) -> Response {
    let body = serde_json::to_vec(problem).expect("problems serialise");
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))],
        body,
    )
        .into_response()
}

/// Gives a problem+json body to error responses that were made without one: those of the
/// framework and of middleware (405 for a known path with another method, the request timeout,
/// a caught panic). Every error a client sees then has the same shape.
pub async fn problem_for_bare_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.headers().contains_key(header::CONTENT_TYPE)
    {
        return response;
    }
    let (kind, detail) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            "method-not-allowed",
            "this path does not accept that method",
        ),
        StatusCode::SERVICE_UNAVAILABLE => ("unavailable", "the request took too long; try again"),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload-too-large", "the body is too large"),
        _ if status.is_server_error() => (
            "internal",
            "an unexpected error occurred; it has been logged",
        ),
        _ => ("bad-request", "the request cannot be served"),
    };
    let problem = Problem {
        kind: format!("/problems/{kind}"),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        detail: detail.to_owned(),
        errors: vec![],
    };
    let mut fresh = problem_response(status, &problem);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        fresh
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
    }
    // Keep what the middleware set (the correlation id, Allow on a 405).
    for (name, value) in response.headers() {
        fresh.headers_mut().entry(name).or_insert(value.clone());
    }
    fresh
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(error: impl Into<ApiError>) -> Response {
        error.into().into_response()
    }

    fn retry_after(response: &Response) -> Option<&str> {
        response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
    }

    #[test]
    fn a_database_that_does_not_answer_is_a_503_with_retry_after() {
        let refused = || {
            sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "refused",
            ))
        };
        for response in [
            answer(sqlx::Error::PoolTimedOut),
            answer(refused()),
            answer(CommandError::Store(refused())),
            answer(CommandError::Load(LoadError::Store(
                sqlx::Error::PoolClosed,
            ))),
        ] {
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(retry_after(&response), Some(RETRY_AFTER));
        }
    }

    #[test]
    fn a_database_error_of_the_request_or_the_code_stays_a_500_without_retry_after() {
        let response = answer(CommandError::Store(sqlx::Error::RowNotFound));
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(retry_after(&response), None);
    }

    #[test]
    fn a_read_model_behind_is_a_503_with_retry_after() {
        let response = answer(ApiError::ReadModelBehind(Position::parse("7").unwrap()));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after(&response), Some(RETRY_AFTER));
    }

    #[tokio::test]
    async fn a_bare_503_of_the_middleware_gets_retry_after_too() {
        let bare = StatusCode::SERVICE_UNAVAILABLE.into_response();
        let response = problem_for_bare_errors(bare).await;
        assert_eq!(retry_after(&response), Some(RETRY_AFTER));
    }
}
