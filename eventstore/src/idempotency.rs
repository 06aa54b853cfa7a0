//! Reading back the outcome remembered under an idempotency key.

use serde_json::Value;

use crate::EventStore;

/// The outcome of the first request made with an idempotency key, as its sender gave it to
/// remember (see [`crate::Remember`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredOutcome {
    pub request_hash: String,
    pub outcome: Value,
}

impl EventStore {
    #[tracing::instrument(skip(self, key), err)]
    pub async fn remembered_outcome(
        &self,
        tenant_id: &str,
        key: &str,
    ) -> Result<Option<StoredOutcome>, sqlx::Error> {
        let row: Option<(String, Value)> = sqlx::query_as(
            "select request_hash, outcome from idempotency_keys
              where tenant_id = $1 and key = $2",
        )
        .bind(tenant_id)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(request_hash, outcome)| StoredOutcome {
            request_hash,
            outcome,
        }))
    }
}
