//! Keyset pagination: lists are ordered by id (UUIDv7, so in creation order) and a page starts
//! after the last id of the previous one, so pages stay stable while rows are added. The
//! cursor is that id in base64url: opaque, so that clients do not build their own.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

/// A `GET` list route: `$name` answers a [`Page`] of `$row` in id order. The query, with every
/// parameter bound, is built from the filter, the [`PageRequest`] and the caller named between
/// the bars. Every list answers the same way, so its OpenAPI answers are written here once. The
/// caller's module imports the names used here.
macro_rules! list {
    (
        $(#[doc = $doc:tt])*
        fn $name:ident($filter:ident) -> Page<$row:ident>, Authorized<$read:ident>,
        Consistent<$consistency:ident>, get $path:tt, tag $tag:tt, scope $scope:tt,
        |$f:ident, $page:ident, $caller:ident| $query:expr $(,)?
    ) => {
        $(#[doc = $doc])*
        #[utoipa::path(get, path = $path, tag = $tag,
            security(("bearer" = [$scope])),
            params($filter, QueryHeaders),
            responses(
                (status = 200, body = Page<$row>),
                (status = 400, description = "A parameter cannot be parsed", body = Problem),
                (status = 503, description = "The read model did not reach `X-Min-Position` in time; see `Retry-After`", body = Problem),
            ))]
        async fn $name(
            State(app): State<AppState>,
            $caller: Authorized<$read>,
            Params($f): Params<$filter>,
            _consistent: Consistent<$consistency>,
        ) -> Result<Json<Page<$row>>, ApiError> {
            let $page = PageRequest::parse($f.limit, $f.cursor.as_deref())?;
            let rows = $query
                // Planned per call: a cached plan could not drop the filters that were not given.
                .persistent(false)
                .fetch_all(&app.read.pool)
                .await?;
            Ok(Json($page.page(rows, |row| row.id)))
        }
    };
}
pub(crate) use list;

/// Which page a list request asks for.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    pub limit: u32,
    /// Rows after this id; `None` for the first page.
    pub after: Option<Uuid>,
}

impl PageRequest {
    /// From the `limit` and `cursor` query parameters.
    pub fn parse(limit: Option<u32>, cursor: Option<&str>) -> Result<Self, ApiError> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::BadRequest(format!(
                "limit must be between 1 and {MAX_LIMIT}, not {limit}"
            )));
        }
        let after = cursor.map(decode).transpose()?;
        Ok(Self { limit, after })
    }

    /// How many rows to fetch: one more than a page, to know whether another page follows.
    pub fn fetch(self) -> i64 {
        i64::from(self.limit) + 1
    }

    /// The page of `rows` (fetched with [`Self::fetch`]), with the cursor of the next page if
    /// there is one.
    pub fn page<T>(self, mut rows: Vec<T>, id: impl Fn(&T) -> Uuid) -> Page<T> {
        let more = rows.len() > self.limit as usize;
        rows.truncate(self.limit as usize);
        let next_cursor = rows.last().filter(|_| more).map(|last| encode(id(last)));
        Page {
            items: rows,
            next_cursor,
        }
    }
}

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The id's 16 bytes in base64url without padding: 22 characters, the last of which carries
/// only two bits (one of `AQgw`), as the routes' `cursor` parameter says.
fn encode(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

fn decode(cursor: &str) -> Result<Uuid, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| Uuid::from_slice(&bytes).ok())
        .ok_or_else(|| ApiError::BadRequest("cursor is not one this API returned".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_its_id() {
        let id = Uuid::now_v7();
        assert_eq!(decode(&encode(id)).unwrap(), id);
        assert!(decode("not a cursor").is_err());
        assert!(decode(&URL_SAFE_NO_PAD.encode([1, 2, 3])).is_err());
    }

    #[test]
    fn every_cursor_is_22_characters_ending_in_one_of_aqgw() {
        for id in [Uuid::nil(), Uuid::max(), Uuid::now_v7()] {
            let cursor = encode(id);
            assert_eq!(cursor.len(), 22);
            assert!("AQgw".contains(cursor.chars().last().unwrap()), "{cursor}");
        }
        // And every such string is a cursor.
        for cursor in [
            "AAAAAAAAAAAAAAAAAAAAAA",
            "_____________________w",
            "abcdefghij-_012345678Q",
        ] {
            assert!(decode(cursor).is_ok(), "{cursor}");
        }
    }

    #[test]
    fn the_limit_is_between_1_and_200_and_50_by_default() {
        assert_eq!(PageRequest::parse(None, None).unwrap().limit, 50);
        assert_eq!(PageRequest::parse(Some(200), None).unwrap().limit, 200);
        assert!(PageRequest::parse(Some(0), None).is_err());
        assert!(PageRequest::parse(Some(201), None).is_err());
    }

    #[test]
    fn only_a_page_followed_by_more_rows_has_a_next_cursor() {
        let request = PageRequest::parse(Some(2), None).unwrap();
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let full = request.page(ids.clone(), |id| *id);
        assert_eq!(full.items, ids[..2]);
        assert_eq!(full.next_cursor, Some(encode(ids[1])));
        let last = request.page(ids[..2].to_vec(), |id| *id);
        assert_eq!(last.next_cursor, None);
    }
}
