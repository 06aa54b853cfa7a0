//! Answering one resource: through the read cache, with its version as `ETag`, and 304 when
//! `If-None-Match` names that version.

use std::future::Future;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use uuid::Uuid;

use super::cache::Cached;
use super::consistency::Consistent;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// A read-model row that is answered on its own.
pub trait Resource: Serialize {
    /// The resource as projectors name it when they report a change (`patient`, …).
    const NAME: &'static str;

    fn version(&self) -> i64;
}

/// `impl Resource` for a row whose `version` column is its stream version.
macro_rules! resource {
    ($row:ident, $name:literal) => {
        impl single::Resource for $row {
            const NAME: &'static str = $name;

            fn version(&self) -> i64 {
                self.version
            }
        }
    };
}
pub(crate) use resource;

/// A `GET …/{id}` route: `$name` answers one `$row` through [`answer`], loaded by `sql` with the
/// id as `$1` and the caller's tenant as `$2`. Every resource answers the same way, so its
/// OpenAPI answers are written here once. The caller's module imports the names used here.
macro_rules! get_one {
    (
        $(#[doc = $doc:tt])*
        fn $name:ident() -> $row:ident, Authorized<$read:ident>, Consistent<$consistency:ident>,
        get $path:tt, tag $tag:tt, scope $scope:tt,
        $sql:expr $(,)?
    ) => {
        $(#[doc = $doc])*
        #[utoipa::path(get, path = $path, tag = $tag,
            security(("bearer" = [$scope])),
            params(("id" = uuid::Uuid, Path), QueryHeaders),
            responses(
                (status = 200, body = $row, headers(("ETag" = String, description = "The version, as `\"3\"`"))),
                (status = 304, description = "`If-None-Match` names the current version"),
                (status = 400, description = "The id or `X-Min-Position` cannot be parsed", body = Problem),
                (status = 404, description = "Not in this instance's read model", body = Problem),
                (status = 503, description = "The read model did not reach `X-Min-Position` in time; see `Retry-After`", body = Problem),
            ))]
        async fn $name(
            State(app): State<AppState>,
            caller: Authorized<$read>,
            PathId(id): PathId,
            consistent: Consistent<$consistency>,
            headers: HeaderMap,
        ) -> Result<Response, ApiError> {
            single::answer(&app, &caller, id, &consistent, &headers, || {
                sqlx::query_as::<_, $row>($sql)
                    .bind(id)
                    .bind(&caller.tenant_id)
                    .fetch_optional(&app.read.pool)
            })
            .await
        }
    };
}
pub(crate) use get_one;

/// Answers resource `id`, from the cache or from `load`. A request that waited for a
/// position skips the cache: the freshest row is what it asked for.
pub async fn answer<T, R, F, Fut>(
    app: &AppState,
    caller: &Caller,
    id: Uuid,
    consistent: &Consistent<R>,
    headers: &HeaderMap,
    load: F,
) -> Result<Response, ApiError>
where
    T: Resource,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Option<T>, sqlx::Error>>,
{
    let cache = &app.queries.reads;
    let key = (T::NAME, id);
    let not_found = || ApiError::NotFound(format!("{} {id} is not in the read model", T::NAME));
    if consistent.min_position.is_none()
        && let Some(entry) = cache.get(key).await
    {
        // A row belongs to one tenant: an entry cached for another is a resource this caller
        // cannot see.
        if entry.tenant_id != caller.tenant_id {
            return Err(not_found());
        }
        return Ok(respond(entry, headers));
    }
    let ticket = cache.ticket(&app.read.progress).await;
    // `load` finds only the caller's tenant's row.
    let row = load().await?.ok_or_else(not_found)?;
    let entry = Cached {
        body: serde_json::to_vec(&row).map_err(ApiError::internal)?.into(),
        version: row.version(),
        tenant_id: caller.tenant_id.clone(),
    };
    cache
        .insert(key, entry.clone(), ticket, &app.read.progress)
        .await;
    Ok(respond(entry, headers))
}

fn respond(entry: Cached, headers: &HeaderMap) -> Response {
    let etag = format!("\"{}\"", entry.version);
    let etag_header = HeaderValue::from_str(&etag).expect("a number in quotes is a header value");
    if none_match(headers, &etag) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag_header)]).into_response();
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, etag_header),
        ],
        entry.body,
    )
        .into_response()
}

/// Whether `If-None-Match` names `etag` (weakly compared, as RFC 9110 asks) or is `*`.
fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim())
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(if_none_match: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, if_none_match.parse().unwrap());
        headers
    }

    #[test]
    fn if_none_match_is_compared_weakly_and_as_a_list() {
        assert!(none_match(&headers("\"3\""), "\"3\""));
        assert!(none_match(&headers("W/\"3\""), "\"3\""));
        assert!(none_match(&headers("\"1\", \"3\""), "\"3\""));
        assert!(none_match(&headers("*"), "\"3\""));
        assert!(!none_match(&headers("\"2\""), "\"3\""));
        assert!(!none_match(&HeaderMap::new(), "\"3\""));
    }
}
