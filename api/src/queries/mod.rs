//! The query side of the HTTP API: every `GET` that answers from this instance's read model.
//!
//! - [`consistency`]: `X-Min-Position`, waiting until the projections a route reads have
//!   applied the client's last write.
//! - [`positions`]: what the event at a position was, remembered for `X-Min-Position`.
//! - [`cache`]: single-resource reads, which must never be older than what the projectors
//!   committed, and [`cache::QueryCaches`], all the query side keeps in memory.
//! - [`single`]: answering one resource with its `ETag`, through the cache; [`items`]: the
//!   whole collection that belongs to one resource.
//! - [`pagination`]: `limit` and the opaque `cursor` of keyset pagination.
//! - One module per resource, with its rows and routes.
//! - [`history`]: an aggregate's audit trail, from the event store.
//! - [`status_stream`]: a consultation's status pushed as Server-Sent Events.

/// The SQL condition that the row whose stream is `$stream` (a column) belongs to the tenant in
/// parameter `$tenant`, as projection `$projection` recorded the stream: rows carry no tenant of
/// their own. Defined before the modules below, so that they see it.
macro_rules! in_tenant {
    ($stream:literal, $projection:literal, $tenant:literal) => {
        concat!(
            "exists (select 1 from stream_versions t where t.stream_id = ",
            $stream,
            " and t.projection = '",
            $projection,
            "' and t.tenant_id = ",
            $tenant,
            ")"
        )
    };
}

pub mod cache;
pub mod consistency;
pub mod consultations;
pub mod history;
pub mod items;
pub mod pagination;
pub mod patients;
pub mod physicians;
pub mod positions;
pub mod records;
pub mod single;
pub mod status_stream;

pub use crate::openapi::QueryHeaders;
pub use items::{Items, ensure_found};

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;
use crate::extract::or_bad_request;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(patients::router())
        .merge(physicians::router())
        .merge(consultations::router())
        .merge(records::router())
        .merge(history::router())
        .merge(status_stream::router())
}

/// The query string parsed as `T`; anything that does not fit is a 400.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(params) = or_bad_request(parts, state, "the query string is invalid").await?;
        Ok(Self(params))
    }
}

/// Whether a patient or physician may still take part in new consultations.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PersonStatus {
    Active,
    Inactive,
    /// Their personal data is erased: every personal field is null.
    Erased,
}

impl PersonStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Inactive => "inactive",
            Self::Erased => "erased",
        }
    }
}

/// A `like` pattern matching values that start with `prefix` taken literally: `%`, `_` and
/// the escape character `\` in it match only themselves.
pub fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_like_prefix_takes_wildcards_literally() {
        assert_eq!(like_prefix("An"), "An%");
        assert_eq!(like_prefix("50%_a\\"), "50\\%\\_a\\\\%");
    }
}
