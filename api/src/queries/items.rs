//! The whole collection that belongs to one resource, such as a consultation's records:
//! answered only for a resource the read model has in the caller's tenant.

use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;

/// A whole collection that belongs to one resource, such as a consultation's records.
#[derive(Debug, Serialize, ToSchema)]
pub struct Items<T> {
    pub items: Vec<T>,
}

/// 404 unless `projection` has the `what` with `id` for `tenant`: a list that belongs to a
/// resource is not answered for one the read model does not have, nor for another tenant's.
pub async fn ensure_found(
    pool: &PgPool,
    projection: &'static str,
    what: &str,
    id: Uuid,
    tenant: &str,
) -> Result<(), ApiError> {
    let found: bool = sqlx::query_scalar(
        "select exists (select 1 from stream_versions
                         where stream_id = $1 and projection = $2 and tenant_id = $3)",
    )
    .bind(id)
    .bind(projection)
    .bind(tenant)
    .fetch_one(pool)
    .await?;
    if found {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!(
            "{what} {id} is not in the read model"
        )))
    }
}

/// A `GET /{resources}/{id}/{items}` route: `$name` answers every `$row` that belongs to
/// `$owner` `id` as [`Items`], loaded by `sql` with the id as `$1`, once projection `$projection`
/// has the owner in the caller's tenant ([`ensure_found`]). Every such list answers the same
/// way, so its OpenAPI answers are written here once. The caller's module imports the names
/// used here.
macro_rules! get_items {
    (
        $(#[doc = $doc:tt])*
        fn $name:ident() -> Items<$row:ident>, Authorized<$read:ident>, Consistent<$consistency:ident>,
        get $path:tt, tag $tag:tt, scope $scope:tt,
        of $owner:tt in $projection:ident,
        $sql:expr $(,)?
    ) => {
        $(#[doc = $doc])*
        #[utoipa::path(get, path = $path, tag = $tag,
            security(("bearer" = [$scope])),
            params(("id" = uuid::Uuid, Path), QueryHeaders),
            responses(
                (status = 200, body = Items<$row>),
                (status = 400, description = "The id or `X-Min-Position` cannot be parsed", body = Problem),
                (status = 404, description = concat!("The ", $owner, " is not in this instance's read model"), body = Problem),
                (status = 503, description = "The read model did not reach `X-Min-Position` in time; see `Retry-After`", body = Problem),
            ))]
        async fn $name(
            State(app): State<AppState>,
            caller: Authorized<$read>,
            PathId(id): PathId,
            _consistent: Consistent<$consistency>,
        ) -> Result<Json<Items<$row>>, ApiError> {
            let pool = &app.read.pool;
            ensure_found(pool, $projection, $owner, id, &caller.tenant_id).await?;
            let items = sqlx::query_as::<_, $row>($sql)
                .bind(id)
                .fetch_all(pool)
                .await?;
            Ok(Json(Items { items }))
        }
    };
}
pub(crate) use get_items;
