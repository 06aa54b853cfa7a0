//! Request extractors that turn every way a request can be malformed into the contract's
//! status codes (400, 413, 415, 422) with a problem+json body, before any handler runs.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use commands::Idempotency;
use eventstore::StreamVersion;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{ApiError, FieldError};

pub const CORRELATION_ID: &str = "x-correlation-id";
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Largest request body accepted, in bytes.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Largest body of the record routes: a record may hold 20,000 characters, which JSON may spell
/// with up to six bytes each (`\uXXXX`).
pub const RECORD_BODY_LIMIT: usize = 128 * 1024;

/// A command request: its body parsed as `T`, and what the headers ask of its execution.
/// An empty body reads as JSON `null`, so `T = Option<…>` makes the body optional.
pub struct Command<T> {
    pub body: T,
    pub context: CommandContext,
}

/// What a command's headers ask for.
#[derive(Debug, Clone)]
pub struct CommandContext {
    pub correlation_id: String,
    /// The `Idempotency-Key`, with the digest of the request ([`request_hash`]): the same key
    /// with a different request is refused. Without a key there is nothing to compare, and
    /// the digest (the body written out again, hashed and hex-encoded) is not computed.
    pub idempotency: Option<Idempotency>,
    /// The version the client expects the aggregate to be at (`If-Match`).
    pub if_match: Option<StreamVersion>,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Command<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        let headers = &parts.headers;
        let correlation_id = correlation_id(headers)?;
        let idempotency_key = idempotency_key(headers)?;
        let if_match = if_match(headers)?;
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| {
                let v = v.trim().to_ascii_lowercase();
                v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
            })
            .unwrap_or(false);
        let method = parts.method.clone();
        let path = parts.uri.path().to_owned();

        let bytes = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    let limit = if path.starts_with("/records") || path.ends_with("/records") {
                        RECORD_BODY_LIMIT
                    } else {
                        BODY_LIMIT
                    };
                    ApiError::PayloadTooLarge { limit }
                } else {
                    ApiError::BadRequest(format!("the body could not be read: {rejection}"))
                }
            })?;
        let value: serde_json::Value = if bytes.iter().all(u8::is_ascii_whitespace) {
            serde_json::Value::Null
        } else if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        } else {
            serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))?
        };

        // A client's repeat must get the first answer even where deciding again would now
        // fail differently, so the key is looked up before deciding.
        let idempotency = idempotency_key.map(|key| Idempotency {
            key,
            request_hash: request_hash(method.as_str(), &path, &value),
            check_first: true,
        });
        let body = parse_body(value)?;
        Ok(Self {
            body,
            context: CommandContext {
                correlation_id,
                idempotency,
                if_match,
            },
        })
    }
}

/// The digest an idempotency key is remembered with: of the method, the path and the body, so
/// that the same key with another request is refused.
pub fn request_hash(method: &str, path: &str, body: &serde_json::Value) -> String {
    let mut digest = Sha256::new();
    digest.update(method);
    digest.update(b" ");
    digest.update(path.as_bytes());
    digest.update(b"\n");
    digest.update(body.to_string().as_bytes());
    format!("{:x}", digest.finalize())
}

/// Deserialises a JSON body, naming the field at fault when it does not fit.
fn parse_body<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    if value.is_null() {
        return serde_json::from_value(value)
            .map_err(|_| ApiError::validation("body", "a JSON object is required"));
    }
    serde_path_to_error::deserialize(value).map_err(|error| {
        let message = error.inner().to_string();
        // serde names missing and unknown fields only in its message; prefer that name over
        // the path of the object that holds them.
        let named = ["missing field `", "unknown field `"]
            .iter()
            .find_map(|prefix| message.strip_prefix(prefix))
            .and_then(|rest| rest.split('`').next());
        let path = error.path().to_string();
        // The path ends at an unknown field already, but stops at the parent of a missing one.
        let field = match (named, path.as_str()) {
            (Some(name), ".") => name.to_owned(),
            (Some(name), path) if path == name || path.ends_with(&format!(".{name}")) => {
                path.to_owned()
            }
            (Some(name), parent) => format!("{parent}.{name}"),
            (None, ".") => "body".to_owned(),
            (None, path) => path.to_owned(),
        };
        ApiError::Validation(vec![FieldError::new(field, message)])
    })
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::BadRequest(format!("{name} must be visible ASCII")))
        })
        .transpose()
}

/// The request's correlation id (set by the request-id layer when the client sent none).
pub fn correlation_id(headers: &HeaderMap) -> Result<String, ApiError> {
    match header_text(headers, CORRELATION_ID)? {
        Some(id) if (1..=128).contains(&id.len()) => Ok(id.to_owned()),
        Some(_) => Err(ApiError::BadRequest(
            "X-Correlation-Id must have 1 to 128 characters".into(),
        )),
        None => Ok(Uuid::now_v7().to_string()),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match header_text(headers, IDEMPOTENCY_KEY)? {
        Some(key) if (1..=255).contains(&key.len()) => Ok(Some(key.to_owned())),
        Some(_) => Err(ApiError::BadRequest(
            "Idempotency-Key must have 1 to 255 characters".into(),
        )),
        None => Ok(None),
    }
}

/// `If-Match: "3"` (or `W/"3"`, or a bare `3`); `*` means any existing version.
fn if_match(headers: &HeaderMap) -> Result<Option<StreamVersion>, ApiError> {
    let Some(value) = header_text(headers, header::IF_MATCH.as_str())? else {
        return Ok(None);
    };
    let value = value.trim();
    if value == "*" {
        return Ok(None);
    }
    let bare = value.trim_start_matches("W/").trim_matches('"');
    bare.parse::<u64>()
        .map(|v| Some(StreamVersion::new(v)))
        .map_err(|_| {
            ApiError::BadRequest(format!(
                "If-Match must be a version ETag such as \"3\", not {value}"
            ))
        })
}

/// An aggregate id in the path; anything but a UUID is a 400.
pub struct PathId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = or_bad_request(parts, state, "the id in the path is not a UUID").await?;
        Ok(Self(id))
    }
}

/// What one of axum's extractors takes from the request, or a 400 problem saying `what` is
/// wrong and why (axum's own rejection is plain text).
pub async fn or_bad_request<E, S>(parts: &mut Parts, state: &S, what: &str) -> Result<E, ApiError>
where
    E: FromRequestParts<S>,
    E::Rejection: std::fmt::Display,
    S: Send + Sync,
{
    E::from_request_parts(parts, state)
        .await
        .map_err(|e| ApiError::BadRequest(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Body {
        name: String,
        birth_date: chrono::NaiveDate,
    }

    fn field_of(value: serde_json::Value) -> String {
        match parse_body::<Body>(value) {
            Err(ApiError::Validation(errors)) => errors[0].field.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_faulty_field_is_named() {
        assert_eq!(
            field_of(serde_json::json!({"birthDate": "2000-01-01"})),
            "name"
        );
        assert_eq!(
            field_of(serde_json::json!({"name": "A", "birthDate": "2000-01-01", "x": 1})),
            "x"
        );
        assert_eq!(
            field_of(serde_json::json!({"name": "A", "birthDate": "yesterday"})),
            "birthDate"
        );
        assert_eq!(field_of(serde_json::json!(5)), "body");
    }

    #[test]
    fn if_match_accepts_strong_weak_and_bare_versions() {
        for value in ["\"3\"", "W/\"3\"", "3"] {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_MATCH, value.parse().unwrap());
            assert_eq!(if_match(&headers).unwrap(), Some(StreamVersion::new(3)));
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_MATCH, "\"abc\"".parse().unwrap());
        assert!(if_match(&headers).is_err());
    }
}
