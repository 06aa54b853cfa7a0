//! Appending events to one stream: all of them or none, at the version the writer expected.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::EventStore;
use crate::position::{Position, StreamVersion};

/// An event not yet stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub payload: Value,
    pub occurred_at: DateTime<Utc>,
}

/// What is stored beside every event of one append.
#[derive(Debug, Clone)]
pub struct Metadata {
    pub tenant_id: String,
    pub correlation_id: String,
    pub causation_id: Option<Uuid>,
    pub schema_version: i32,
}

/// A value the appended stream takes for itself, unique per tenant and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub kind: String,
    pub value: String,
}

/// The response to remember under an idempotency key, in the same transaction as the events.
/// If `body` has a `position` member and events were appended, it is set to the position of the
/// last one, which is only known once they are inserted.
#[derive(Debug, Clone)]
pub struct Remember {
    pub key: String,
    pub request_hash: String,
    pub status: u16,
    pub body: Value,
    pub headers: Value,
}

/// One append: events for one stream, expected to be at `expected` beforehand.
#[derive(Debug, Clone)]
pub struct Append {
    pub stream_id: Uuid,
    pub aggregate_type: String,
    pub expected: StreamVersion,
    pub events: Vec<NewEvent>,
    pub claims: Vec<Claim>,
    pub remember: Option<Remember>,
    pub metadata: Metadata,
}

/// The outcome of a successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The stream's version after the append.
    pub version: StreamVersion,
    /// The position of the last event appended; `None` when there were no events.
    pub position: Option<Position>,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer appended to the stream since `expected` was read; nothing was appended.
    #[error("stream {stream} is no longer at version {expected}")]
    Conflict {
        stream: Uuid,
        expected: StreamVersion,
    },
    /// A claimed value belongs to another stream already; nothing was appended.
    #[error("{kind} {value:?} is already taken")]
    ClaimTaken { kind: String, value: String },
    /// The idempotency key was used by a request that committed first; nothing was appended.
    #[error("idempotency key already used")]
    KeyTaken,
    #[error("appending to the event store failed")]
    Database(#[source] sqlx::Error),
}

/// One statement does the whole append, so it runs as a single implicit transaction in one
/// round trip: the events (versions `expected + 1 …`), the claims, and the remembered response.
/// A concurrent writer of the same version, claim or key makes it fail as a whole on the
/// matching unique constraint.
const APPEND: &str = r#"
with appended as (
    insert into events (event_id, stream_id, aggregate_type, version, event_type, payload,
                        tenant_id, correlation_id, causation_id, schema_version, occurred_at)
    select e.event_id, $2, $3, $4 + e.n, e.event_type, e.payload, $5, $6, $7, $8, e.occurred_at
    from unnest($1::uuid[], $9::text[], $10::jsonb[], $11::timestamptz[]) with ordinality
         as e(event_id, event_type, payload, occurred_at, n)
    returning position
),
claimed as (
    insert into unique_claims (tenant_id, kind, value, owner_id)
    select $5, c.kind, c.value, $2 from unnest($12::text[], $13::text[]) as c(kind, value)
),
remembered as (
    insert into idempotency_keys (tenant_id, key, request_hash, response_status,
                                  response_body, response_headers)
    select $5, $14, $15, $16,
           case when $17::jsonb ? 'position' and exists (select 1 from appended)
                then jsonb_set($17, '{position}', to_jsonb((select max(position) from appended)::text))
                else $17 end,
           $18
    where $14::text is not null
)
select max(position) from appended
"#;

impl EventStore {
    /// Appends `append.events` to the stream if it is still at `append.expected`, together with
    /// the claims and the remembered response. With no events it only remembers the response.
    // Refusals (conflicts, taken claims) are part of normal operation: logged at debug level.
    #[tracing::instrument(skip_all, fields(stream = %append.stream_id, expected = %append.expected), err(level = "debug"))]
    pub async fn append(&self, append: Append) -> Result<Appended, AppendError> {
        let Append {
            stream_id,
            aggregate_type,
            expected,
            events,
            claims,
            remember,
            metadata,
        } = append;
        let count = events.len() as u64;
        let (ids, types, payloads, times) = events.iter().fold(
            (vec![], vec![], vec![], vec![]),
            |(mut ids, mut types, mut payloads, mut times), e| {
                ids.push(e.event_id);
                types.push(e.event_type.clone());
                payloads.push(e.payload.clone());
                times.push(e.occurred_at);
                (ids, types, payloads, times)
            },
        );
        let (kinds, values): (Vec<String>, Vec<String>) = claims
            .iter()
            .map(|c| (c.kind.clone(), c.value.clone()))
            .unzip();
        let (key, hash, status, body, headers) = match remember {
            Some(r) => (
                Some(r.key),
                Some(r.request_hash),
                Some(i16::try_from(r.status).expect("HTTP status fits in i16")),
                Some(r.body),
                Some(r.headers),
            ),
            None => (None, None, None, None, None),
        };
        let result = sqlx::query_scalar::<_, Option<i64>>(APPEND)
            .bind(ids)
            .bind(stream_id)
            .bind(aggregate_type)
            .bind(expected.as_i64())
            .bind(&metadata.tenant_id)
            .bind(&metadata.correlation_id)
            .bind(metadata.causation_id)
            .bind(metadata.schema_version)
            .bind(&types)
            .bind(payloads)
            .bind(times)
            .bind(kinds)
            .bind(values)
            .bind(key)
            .bind(hash)
            .bind(status)
            .bind(body)
            .bind(headers)
            .fetch_one(&self.pool)
            .await;
        match result {
            Ok(position) => {
                if count > 0 {
                    self.appended.send_modify(|n| *n = n.wrapping_add(1));
                }
                for event_type in types {
                    metrics::counter!("hap_events_appended_total", "event_type" => event_type)
                        .increment(1);
                }
                Ok(Appended {
                    version: StreamVersion::new(expected.value() + count),
                    position: position.map(Position::new),
                })
            }
            Err(error) => Err(self
                .explain(error, stream_id, expected, &metadata, &claims)
                .await),
        }
    }

    /// Turns a failed append into the rule it broke, by the unique constraint that fired.
    async fn explain(
        &self,
        error: sqlx::Error,
        stream: Uuid,
        expected: StreamVersion,
        metadata: &Metadata,
        claims: &[Claim],
    ) -> AppendError {
        let constraint = error
            .as_database_error()
            .filter(|e| e.is_unique_violation())
            .and_then(|e| e.constraint().map(str::to_owned));
        match constraint.as_deref() {
            Some("events_stream_version_key") => AppendError::Conflict { stream, expected },
            Some("idempotency_keys_pkey") => AppendError::KeyTaken,
            Some("unique_claims_pkey") => {
                // Report the claim that is taken; the error's text names it only in prose.
                for claim in claims {
                    match self
                        .claim_owner(&metadata.tenant_id, &claim.kind, &claim.value)
                        .await
                    {
                        Ok(Some(_)) | Err(_) => {
                            return AppendError::ClaimTaken {
                                kind: claim.kind.clone(),
                                value: claim.value.clone(),
                            };
                        }
                        Ok(None) => {}
                    }
                }
                AppendError::Database(error)
            }
            _ => AppendError::Database(error),
        }
    }

    /// The stream that holds a claimed value, if any.
    #[tracing::instrument(skip(self), err)]
    pub async fn claim_owner(
        &self,
        tenant_id: &str,
        kind: &str,
        value: &str,
    ) -> Result<Option<Uuid>, sqlx::Error> {
        sqlx::query_scalar(
            "select owner_id from unique_claims where tenant_id = $1 and kind = $2 and value = $3",
        )
        .bind(tenant_id)
        .bind(kind)
        .bind(value)
        .fetch_optional(&self.pool)
        .await
    }
}
