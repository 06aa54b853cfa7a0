//! Reading back the response remembered under an idempotency key.

use serde_json::Value;

use crate::EventStore;

/// The first successful response to a request made with an idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    pub request_hash: String,
    pub status: u16,
    pub body: Value,
    pub headers: Value,
}

impl EventStore {
    #[tracing::instrument(skip(self, key), err)]
    pub async fn remembered_response(
        &self,
        tenant_id: &str,
        key: &str,
    ) -> Result<Option<StoredResponse>, sqlx::Error> {
        let row: Option<(String, i16, Value, Value)> = sqlx::query_as(
            "select request_hash, response_status, response_body, response_headers
             from idempotency_keys where tenant_id = $1 and key = $2",
        )
        .bind(tenant_id)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            row.map(|(request_hash, status, body, headers)| StoredResponse {
                request_hash,
                status: u16::try_from(status).expect("stored statuses are HTTP statuses"),
                body,
                headers,
            }),
        )
    }
}
