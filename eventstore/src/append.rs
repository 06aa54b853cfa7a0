//! Appending events to one stream: all of them or none, at the version the writer expected.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::EventStore;
use crate::deadlines::{DeadlineEnd, DeadlineStart, DeadlineState};
use crate::position::{Position, StreamVersion};

/// An event not yet stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub payload: Value,
    pub occurred_at: DateTime<Utc>,
    /// The version of its event type's payload it is written at.
    pub schema_version: i32,
}

/// What is stored beside every event of one append.
#[derive(Debug, Clone)]
pub struct Metadata {
    pub tenant_id: String,
    pub correlation_id: String,
    pub causation_id: Option<Uuid>,
    /// Who acted (a token's `sub`).
    pub actor_id: Option<String>,
}

/// A value the appended stream takes for itself, unique per tenant and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub kind: String,
    pub value: String,
}

/// The outcome to remember under an idempotency key, in the same transaction as the events.
/// If `outcome` has a `position` member and events were appended, it is set to the position of
/// the last one (as text), which is only known once they are inserted.
#[derive(Debug, Clone)]
pub struct Remember {
    pub key: String,
    pub request_hash: String,
    pub outcome: Value,
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
    /// Deadlines the appended events start (a saga's), stored with them.
    pub deadlines: Vec<DeadlineStart>,
    /// The running deadline this append ends (fires, or pauses because its saga confirmed):
    /// the append takes place only if it moves that deadline out of running, in the same
    /// statement, under its row lock.
    pub ends: Option<DeadlineEnd>,
    /// The data subject the appended events erase: in the same statement, their key is
    /// deleted (what was sealed under it no longer opens) and their claims of these kinds
    /// released (the values may be claimed again).
    pub erases: Option<Erasure>,
    /// Keys of the data subjects this append makes (a person's registration), wrapped: stored
    /// with the events sealed under them, so that a subject's key exists exactly when their
    /// stream does, at no round trip of its own.
    pub new_keys: Vec<SubjectKey>,
}

/// A data subject's key, wrapped under the master key, as `subject_keys` keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectKey {
    pub subject: Uuid,
    pub tenant_id: String,
    pub wrapped: Vec<u8>,
}

/// A data subject to erase with an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    pub subject: Uuid,
    /// The claim kinds of the subject's stream that hold the subject's personal values.
    pub claim_kinds: Vec<String>,
}

/// The outcome of a successful append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The stream's version after the append.
    pub version: StreamVersion,
    /// The position of each event appended, in the order they were given.
    pub positions: Vec<Position>,
}

impl Appended {
    /// The position of the last event appended; `None` when there were no events.
    pub fn position(&self) -> Option<Position> {
        self.positions.last().copied()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer appended to the stream since `expected` was read; nothing was appended.
    #[error("stream {stream} is no longer at version {expected}")]
    Conflict {
        stream: Uuid,
        expected: StreamVersion,
    },
    /// A claimed value belongs to another stream already; nothing was appended. (The value,
    /// personal data, is not in the message: messages end up in logs.)
    #[error("a {kind} is already taken")]
    ClaimTaken { kind: String, value: String },
    /// The idempotency key was used by a request that committed first; nothing was appended.
    #[error("idempotency key already used")]
    KeyTaken,
    /// The deadline the append was to end is no longer running (its saga confirmed, or it
    /// fired first); nothing was appended.
    #[error("deadline {0} is not running")]
    DeadlineNotRunning(Uuid),
    #[error("appending to the event store failed")]
    Database(#[source] sqlx::Error),
}

/// One statement writes a batch of appends (often a batch of one), so it runs as a single
/// implicit transaction in one round trip: each append's events (versions `expected + 1 …`,
/// positions in batch order), its claims, the deadlines it starts, and its remembered outcome
/// with the position of its last event filled in. An append that ends a deadline is written
/// alone, and writes nothing unless its conditional update moved the deadline out of running
/// (`go` reads that update, so it runs before the inserts and holds the row lock until the
/// commit). A pause also passes when there is no deadline at all (a saga from before
/// deadlines). An append that makes a data subject stores their key (`keyed`); one that
/// erases a subject goes by [`ERASING`], which also deletes their key and releases their
/// personal claims. A concurrent writer of the same version, claim or key makes the whole
/// statement fail on the matching unique constraint, and nothing of it is written.
const APPEND: &str = r#"
with ended as (
    update deadlines set state = $30, updated_at = now()
     where id = $27 and state = $31
    returning id
),
go as (
    select $27::uuid is null
        or exists (select 1 from ended)
        or ($30 = $32 and not exists (select 1 from deadlines where id = $27)) as ok
),
input as (
    select * from unnest($1::int[], $2::uuid[], $3::uuid[], $4::text[], $5::bigint[],
                         $6::text[], $7::text[], $8::text[], $9::text[], $10::uuid[],
                         $11::int[], $12::timestamptz[], $29::text[]) with ordinality
        as i(batch_index, event_id, stream_id, aggregate_type, version, event_type, payload,
             tenant_id, correlation_id, causation_id, schema_version, occurred_at, actor_id, n)
     where (select ok from go)
),
appended as (
    insert into events (event_id, stream_id, aggregate_type, version, event_type, payload,
                        tenant_id, correlation_id, causation_id, schema_version, occurred_at,
                        actor_id)
    select event_id, stream_id, aggregate_type, version, event_type, payload::json, tenant_id,
           correlation_id, causation_id, schema_version, occurred_at, actor_id
      from input order by n
    returning position, stream_id, version
),
last_positions as (
    select i.batch_index, max(a.position) as position,
           array_agg(a.position order by a.version) as positions
      from appended a join input i on i.stream_id = a.stream_id and i.version = a.version
     group by i.batch_index
),
claimed as (
    insert into unique_claims (tenant_id, kind, value, owner_id)
    select * from unnest($13::text[], $14::text[], $15::text[], $16::uuid[])
     where (select ok from go)
),
started as (
    insert into deadlines (id, tenant_id, kind, due_at, correlation_id, actor_id)
    select * from unnest($22::uuid[], $23::text[], $24::text[], $25::timestamptz[], $26::text[],
                         $28::text[])
     where (select ok from go)
),
remembered as (
    insert into idempotency_keys (tenant_id, key, request_hash, outcome)
    select k.tenant_id, k.key, k.request_hash,
           case when k.outcome ? 'position' and p.position is not null
                then jsonb_set(k.outcome, '{position}', to_jsonb(p.position::text))
                else k.outcome end
      from unnest($17::int[], $18::text[], $19::text[], $20::text[], $21::jsonb[])
           as k(batch_index, tenant_id, key, request_hash, outcome)
      left join last_positions p using (batch_index)
     where (select ok from go)
),
keyed as (
    insert into subject_keys (subject_id, tenant_id, wrapped)
    select * from unnest($36::uuid[], $37::text[], $38::bytea[])
     where (select ok from go)
)"#;

/// What an append that erases a data subject also does, in its statement: delete their key
/// and release their personal claims. Apart, so that the statement of every other append
/// (nearly all of them) plans nothing that looks through `unique_claims`, which has no index
/// by owner: a cached plan for the deletes scans the whole table.
const ERASING: &str = r#",
shredded as (
    delete from subject_keys
     where subject_id = any($33::uuid[]) and (select ok from go)
),
released as (
    delete from unique_claims c
     using unnest($34::uuid[], $35::text[]) as r(owner_id, kind)
     where c.owner_id = r.owner_id and c.kind = r.kind and (select ok from go)
)"#;

/// What the statement returns: each append's positions.
const RETURNING: &str = "\nselect batch_index, positions from last_positions";

/// The statement of a batch with no erasure, and of one with.
static STATEMENT: LazyLock<String> = LazyLock::new(|| format!("{APPEND}{RETURNING}"));
static STATEMENT_ERASING: LazyLock<String> =
    LazyLock::new(|| format!("{APPEND}{ERASING}{RETURNING}"));

/// The statement's parameters, one array per column, built from a batch of appends.
#[derive(Default)]
struct Columns {
    event_index: Vec<i32>,
    event_ids: Vec<Uuid>,
    streams: Vec<Uuid>,
    aggregate_types: Vec<String>,
    versions: Vec<i64>,
    event_types: Vec<String>,
    /// As JSON text: the column keeps the text as it is.
    payloads: Vec<String>,
    tenants: Vec<String>,
    correlations: Vec<String>,
    causations: Vec<Option<Uuid>>,
    schema_versions: Vec<i32>,
    times: Vec<DateTime<Utc>>,
    claim_tenants: Vec<String>,
    claim_kinds: Vec<String>,
    claim_values: Vec<String>,
    claim_owners: Vec<Uuid>,
    key_index: Vec<i32>,
    key_tenants: Vec<String>,
    keys: Vec<String>,
    hashes: Vec<String>,
    outcomes: Vec<Value>,
    deadline_ids: Vec<Uuid>,
    deadline_tenants: Vec<String>,
    deadline_kinds: Vec<String>,
    deadline_due: Vec<DateTime<Utc>>,
    deadline_correlations: Vec<String>,
    deadline_actors: Vec<Option<String>>,
    actors: Vec<Option<String>>,
    erased_subjects: Vec<Uuid>,
    released_owners: Vec<Uuid>,
    released_kinds: Vec<String>,
    key_subjects: Vec<Uuid>,
    key_subject_tenants: Vec<String>,
    wrapped_keys: Vec<Vec<u8>>,
    /// Only ever set for a batch of one (see [`EventStore::append`]).
    ends: Option<DeadlineEnd>,
}

impl Columns {
    fn of(appends: &[Append]) -> Self {
        let mut c = Self::default();
        for (index, append) in appends.iter().enumerate() {
            let index = i32::try_from(index).expect("batches are small");
            let meta = &append.metadata;
            for (offset, event) in append.events.iter().enumerate() {
                c.event_index.push(index);
                c.event_ids.push(event.event_id);
                c.streams.push(append.stream_id);
                c.aggregate_types.push(append.aggregate_type.clone());
                c.versions
                    .push(append.expected.as_i64() + offset as i64 + 1);
                c.event_types.push(event.event_type.clone());
                c.payloads.push(event.payload.to_string());
                c.tenants.push(meta.tenant_id.clone());
                c.correlations.push(meta.correlation_id.clone());
                c.causations.push(meta.causation_id);
                c.actors.push(meta.actor_id.clone());
                c.schema_versions.push(event.schema_version);
                c.times.push(event.occurred_at);
            }
            for claim in &append.claims {
                c.claim_tenants.push(meta.tenant_id.clone());
                c.claim_kinds.push(claim.kind.clone());
                c.claim_values.push(claim.value.clone());
                c.claim_owners.push(append.stream_id);
            }
            if let Some(r) = &append.remember {
                c.key_index.push(index);
                c.key_tenants.push(meta.tenant_id.clone());
                c.keys.push(r.key.clone());
                c.hashes.push(r.request_hash.clone());
                c.outcomes.push(r.outcome.clone());
            }
            for deadline in &append.deadlines {
                c.deadline_ids.push(deadline.id);
                c.deadline_tenants.push(meta.tenant_id.clone());
                c.deadline_kinds.push(deadline.kind.clone());
                c.deadline_due.push(deadline.due_at);
                c.deadline_correlations.push(meta.correlation_id.clone());
                c.deadline_actors.push(meta.actor_id.clone());
            }
            for key in &append.new_keys {
                c.key_subjects.push(key.subject);
                c.key_subject_tenants.push(key.tenant_id.clone());
                c.wrapped_keys.push(key.wrapped.clone());
            }
            if let Some(erasure) = &append.erases {
                c.erased_subjects.push(erasure.subject);
                for kind in &erasure.claim_kinds {
                    c.released_owners.push(erasure.subject);
                    c.released_kinds.push(kind.clone());
                }
            }
            if append.ends.is_some() {
                assert_eq!(
                    appends.len(),
                    1,
                    "an append that ends a deadline is written alone"
                );
                c.ends = append.ends;
            }
        }
        c
    }
}

impl EventStore {
    /// Appends `append.events` to the stream if it is still at `append.expected`, together with
    /// the claims and the remembered outcome. With no events it only remembers the outcome.
    /// With group commit on ([`EventStore::with_group_commit`]), concurrent appends may share a
    /// transaction; the outcome of each is the same as alone.
    // Refusals (conflicts, taken claims) are part of normal operation: logged at debug level.
    #[tracing::instrument(skip_all, fields(stream = %append.stream_id, expected = %append.expected), err(level = "debug"))]
    pub async fn append(&self, append: Append) -> Result<Appended, AppendError> {
        match &self.group_commit {
            // A deadline's guard decides whether its append happens at all: it cannot share a
            // statement whose other appends must not depend on it.
            Some(group) if append.ends.is_none() => group.submit(append).await,
            _ => self.append_alone(append).await,
        }
    }

    /// One append in a statement of its own, and the precise reason when it fails.
    pub(crate) async fn append_alone(&self, append: Append) -> Result<Appended, AppendError> {
        match self.write(std::slice::from_ref(&append)).await {
            Ok(appended) if appended[0].positions.is_empty() && append.ends.is_some() => {
                let ended = append.ends.expect("checked by the guard above");
                Err(AppendError::DeadlineNotRunning(ended.id))
            }
            Ok(mut appended) => Ok(appended.remove(0)),
            Err(error) => Err(self.explain(error, &append).await),
        }
    }

    /// Writes a batch of appends in one statement: all of them, or none.
    pub(crate) async fn write(&self, appends: &[Append]) -> Result<Vec<Appended>, sqlx::Error> {
        let c = Columns::of(appends);
        let statement = if appends.iter().any(|a| a.erases.is_some()) {
            &STATEMENT_ERASING
        } else {
            &STATEMENT
        };
        let rows: Result<Vec<(i32, Vec<i64>)>, _> = sqlx::query_as(statement.as_str())
            .bind(c.event_index)
            .bind(c.event_ids)
            .bind(c.streams)
            .bind(c.aggregate_types)
            .bind(c.versions)
            .bind(&c.event_types)
            .bind(c.payloads)
            .bind(c.tenants)
            .bind(c.correlations)
            .bind(c.causations)
            .bind(c.schema_versions)
            .bind(c.times)
            .bind(c.claim_tenants)
            .bind(c.claim_kinds)
            .bind(c.claim_values)
            .bind(c.claim_owners)
            .bind(c.key_index)
            .bind(c.key_tenants)
            .bind(c.keys)
            .bind(c.hashes)
            .bind(c.outcomes)
            .bind(c.deadline_ids)
            .bind(c.deadline_tenants)
            .bind(c.deadline_kinds)
            .bind(c.deadline_due)
            .bind(c.deadline_correlations)
            .bind(c.ends.map(|e| e.id))
            .bind(c.deadline_actors)
            .bind(c.actors)
            .bind(c.ends.map(|e| e.how.as_str()))
            .bind(DeadlineState::Running.as_str())
            .bind(DeadlineState::Paused.as_str())
            .bind(c.erased_subjects)
            .bind(c.released_owners)
            .bind(c.released_kinds)
            .bind(c.key_subjects)
            .bind(c.key_subject_tenants)
            .bind(c.wrapped_keys)
            .fetch_all(&self.pool)
            .await;
        // Every write wakes the readers, refused ones too: while it ran it held back the
        // events of younger transactions from the gap-safe read, and a reader that found
        // nothing then waits for a wake-up.
        self.appended.send_modify(|n| *n = n.wrapping_add(1));
        let rows = rows?;
        if appends.iter().any(|a| !a.deadlines.is_empty()) {
            self.deadlines_changed.notify_waiters();
        }
        // A refused guard appended nothing.
        let guard_refused = c.ends.is_some() && rows.is_empty();
        if let Some(ended) = c.ends.filter(|_| !guard_refused) {
            metrics::counter!("hap_deadlines_total", "transition" => ended.how.as_str())
                .increment(1);
        }
        for event_type in c.event_types.into_iter().filter(|_| !guard_refused) {
            metrics::counter!("hap_events_appended_total", "event_type" => event_type).increment(1);
        }
        let mut positions: std::collections::HashMap<i32, Vec<i64>> = rows.into_iter().collect();
        Ok(appends
            .iter()
            .enumerate()
            .map(|(index, append)| Appended {
                version: StreamVersion::new(append.expected.value() + append.events.len() as u64),
                positions: positions
                    .remove(&(index as i32))
                    .unwrap_or_default()
                    .into_iter()
                    .map(Position::new)
                    .collect(),
            })
            .collect())
    }

    /// Turns a failed append into the rule it broke, by the unique constraint that fired.
    async fn explain(&self, error: sqlx::Error, append: &Append) -> AppendError {
        let (stream, expected) = (append.stream_id, append.expected);
        let (metadata, claims) = (&append.metadata, &append.claims);
        let constraint = error
            .as_database_error()
            .filter(|e| e.is_unique_violation())
            .and_then(|e| e.constraint().map(str::to_owned));
        match constraint.as_deref() {
            // A new subject's key is taken only where their stream was made meanwhile.
            Some("events_stream_version_key" | "subject_keys_pkey") => {
                AppendError::Conflict { stream, expected }
            }
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
    // The value is a document or license number: personal data stays out of the logs.
    #[tracing::instrument(skip(self, value), err)]
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
