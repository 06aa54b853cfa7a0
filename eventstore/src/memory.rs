//! An event store in memory, for unit tests of what runs on the store (the command pipeline,
//! the saga steps, the timer's firing): small, and strict about the same rules as PostgreSQL
//! where commands depend on them. An append is all or nothing, and is refused when its stream
//! moved past `expected`, a claimed value is taken, its idempotency key is used, or the
//! deadline it ends no longer runs; its remembered outcome gets the position of its last event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use serde_json::Value;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::deadlines::{DeadlineState, Due, Ending};
use crate::idempotency::StoredOutcome;
use crate::store::Store;
use crate::{Append, AppendError, Appended, Position, RecordedEvent, StreamVersion};

/// A deadline as the memory store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadline {
    pub due: Due,
    pub state: DeadlineState,
}

#[derive(Debug, Default)]
struct Contents {
    /// Every event, in position order (position = index + 1).
    events: Vec<RecordedEvent>,
    /// (tenant, kind, value) → the stream that claimed it.
    claims: HashMap<(String, String, String), Uuid>,
    /// (tenant, key) → what the key remembers.
    keys: HashMap<(String, String), StoredOutcome>,
    deadlines: HashMap<Uuid, Deadline>,
}

/// The store; clones share their contents.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    contents: Arc<Mutex<Contents>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Contents> {
        // A test that panicked while holding the lock fails anyway; its contents stay readable.
        self.contents.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every event stored, in position order.
    pub fn events(&self) -> Vec<RecordedEvent> {
        self.lock().events.clone()
    }

    /// A deadline, if one with this id was ever started.
    pub fn deadline(&self, id: Uuid) -> Option<Deadline> {
        self.lock().deadlines.get(&id).cloned()
    }

    /// Puts a running deadline in place, as the append of the event that starts it would.
    pub fn start_deadline(&self, due: Due) {
        let id = due.id;
        let deadline = Deadline {
            due,
            state: DeadlineState::Running,
        };
        self.lock().deadlines.insert(id, deadline);
    }

    /// The append, at once (see the module's rules).
    pub fn append_now(&self, append: Append) -> Result<Appended, AppendError> {
        let mut contents = self.lock();
        let contents = &mut *contents;
        let tenant = &append.metadata.tenant_id;
        if let Some(end) = append.ends {
            let state = contents.deadlines.get(&end.id).map(|d| d.state);
            // A pause passes where there is no deadline (a saga from before deadlines).
            let passes = state == Some(DeadlineState::Running)
                || (state.is_none() && end.how == Ending::Paused);
            if !passes {
                return Err(AppendError::DeadlineNotRunning(end.id));
            }
        }
        let version = stream_version(&contents.events, append.stream_id);
        if version != append.expected {
            return Err(AppendError::Conflict {
                stream: append.stream_id,
                expected: append.expected,
            });
        }
        if let Some(remember) = &append.remember
            && contents
                .keys
                .contains_key(&(tenant.clone(), remember.key.clone()))
        {
            return Err(AppendError::KeyTaken);
        }
        if let Some(taken) = append.claims.iter().find(|claim| {
            let key = (tenant.clone(), claim.kind.clone(), claim.value.clone());
            contents.claims.contains_key(&key)
        }) {
            return Err(AppendError::ClaimTaken {
                kind: taken.kind.clone(),
                value: taken.value.clone(),
            });
        }
        Ok(write(contents, append))
    }
}

/// Writes an append whose rules have all passed.
fn write(contents: &mut Contents, append: Append) -> Appended {
    let meta = &append.metadata;
    if let Some(end) = append.ends
        && let Some(deadline) = contents.deadlines.get_mut(&end.id)
    {
        deadline.state = end.how.state();
    }
    let mut positions = Vec::with_capacity(append.events.len());
    for (offset, event) in append.events.into_iter().enumerate() {
        let position = contents.events.len() as i64 + 1;
        positions.push(Position::new(position));
        contents.events.push(RecordedEvent {
            position,
            transaction_id: position,
            event_id: event.event_id,
            stream_id: append.stream_id,
            aggregate_type: append.aggregate_type.clone(),
            version: append.expected.as_i64() + offset as i64 + 1,
            event_type: event.event_type,
            payload: RawValue::from_string(event.payload.to_string())
                .expect("a JSON value is valid JSON text"),
            tenant_id: meta.tenant_id.clone(),
            correlation_id: meta.correlation_id.clone(),
            causation_id: meta.causation_id,
            actor_id: meta.actor_id.clone(),
            schema_version: event.schema_version,
            occurred_at: event.occurred_at,
        });
    }
    for claim in append.claims {
        let key = (meta.tenant_id.clone(), claim.kind, claim.value);
        contents.claims.insert(key, append.stream_id);
    }
    // Payloads are kept in clear here: an erasure only releases the claims.
    if let Some(erasure) = &append.erases {
        contents.claims.retain(|(_, kind, _), owner| {
            *owner != erasure.subject || !erasure.claim_kinds.contains(kind)
        });
    }
    for start in append.deadlines {
        let due = Due {
            id: start.id,
            tenant_id: meta.tenant_id.clone(),
            kind: start.kind,
            correlation_id: meta.correlation_id.clone(),
            actor_id: meta.actor_id.clone(),
            due_at: start.due_at,
        };
        let deadline = Deadline {
            due,
            state: DeadlineState::Running,
        };
        contents.deadlines.insert(start.id, deadline);
    }
    if let Some(remember) = append.remember {
        let mut outcome = remember.outcome;
        if let (Some(last), Value::Object(members)) = (positions.last(), &mut outcome)
            && members.contains_key("position")
        {
            members.insert("position".into(), Value::String(last.to_string()));
        }
        let stored = StoredOutcome {
            request_hash: remember.request_hash,
            outcome,
        };
        contents
            .keys
            .insert((meta.tenant_id.clone(), remember.key), stored);
    }
    Appended {
        version: StreamVersion::new(append.expected.value() + positions.len() as u64),
        positions,
    }
}

fn stream_version(events: &[RecordedEvent], stream_id: Uuid) -> StreamVersion {
    let last = events.iter().rev().find(|e| e.stream_id == stream_id);
    last.map_or(StreamVersion::EMPTY, RecordedEvent::version)
}

impl Store for MemoryStore {
    async fn read_stream(
        &self,
        stream_id: Uuid,
        after: StreamVersion,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        let contents = self.lock();
        let events = contents.events.iter();
        Ok(events
            .filter(|e| e.stream_id == stream_id && e.version() > after)
            .cloned()
            .collect())
    }

    async fn append(&self, append: Append) -> Result<Appended, AppendError> {
        self.append_now(append)
    }

    async fn remembered_outcome(
        &self,
        tenant_id: &str,
        key: &str,
    ) -> Result<Option<StoredOutcome>, sqlx::Error> {
        let key = (tenant_id.to_owned(), key.to_owned());
        Ok(self.lock().keys.get(&key).cloned())
    }

    async fn due_deadlines(&self, limit: i64) -> Result<Vec<Due>, sqlx::Error> {
        let now: DateTime<Utc> = Utc::now();
        let contents = self.lock();
        let mut due: Vec<Due> = contents
            .deadlines
            .values()
            .filter(|d| d.state == DeadlineState::Running && d.due.due_at <= now)
            .map(|d| d.due.clone())
            .collect();
        due.sort_by_key(|d| d.due_at);
        due.truncate(usize::try_from(limit).unwrap_or(0));
        Ok(due)
    }

    async fn retire_deadline(&self, id: Uuid) -> Result<(), sqlx::Error> {
        if let Some(deadline) = self.lock().deadlines.get_mut(&id)
            && deadline.state == DeadlineState::Running
        {
            deadline.state = DeadlineState::Fired;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Claim, DeadlineEnd, Metadata, NewEvent, Remember};

    fn append(stream: Uuid, expected: u64, claims: &[&str]) -> Append {
        Append {
            stream_id: stream,
            aggregate_type: "test".into(),
            expected: StreamVersion::new(expected),
            events: vec![NewEvent {
                event_id: Uuid::now_v7(),
                event_type: "TestHappened".into(),
                payload: serde_json::json!({}),
                occurred_at: Utc::now(),
                schema_version: 1,
            }],
            claims: claims
                .iter()
                .map(|value| Claim {
                    kind: "test".into(),
                    value: (*value).into(),
                })
                .collect(),
            remember: None,
            metadata: Metadata {
                tenant_id: "t".into(),
                correlation_id: "c".into(),
                causation_id: None,
                actor_id: None,
            },
            deadlines: vec![],
            ends: None,
            erases: None,
            new_keys: vec![],
        }
    }

    #[test]
    fn a_refused_append_writes_nothing_of_itself() {
        let store = MemoryStore::new();
        let stream = Uuid::now_v7();
        assert!(store.append_now(append(stream, 0, &["a"])).is_ok());
        let stale = store.append_now(append(stream, 0, &[]));
        assert!(matches!(stale, Err(AppendError::Conflict { .. })));
        // The claim of "b" is refused with the taken "a": neither is written.
        let taken = store.append_now(append(Uuid::now_v7(), 0, &["b", "a"]));
        assert!(matches!(taken, Err(AppendError::ClaimTaken { value, .. }) if value == "a"));
        assert!(store.append_now(append(Uuid::now_v7(), 0, &["b"])).is_ok());
        assert_eq!(store.events().len(), 2);
    }

    #[test]
    fn an_erasure_releases_its_subjects_claims_of_the_kinds_named() {
        let store = MemoryStore::new();
        let subject = Uuid::now_v7();
        assert!(store.append_now(append(subject, 0, &["a"])).is_ok());
        let mut erase = append(subject, 1, &[]);
        erase.erases = Some(crate::Erasure {
            subject,
            claim_kinds: vec!["test".into()],
        });
        assert!(store.append_now(erase).is_ok());
        assert!(store.append_now(append(Uuid::now_v7(), 0, &["a"])).is_ok());
    }

    #[test]
    fn a_key_is_taken_once_and_remembers_the_last_position() {
        let store = MemoryStore::new();
        let remembered = |outcome| Remember {
            key: "k".into(),
            request_hash: "h".into(),
            outcome,
        };
        let mut first = append(Uuid::now_v7(), 0, &[]);
        first.remember = Some(remembered(serde_json::json!({ "position": null })));
        assert!(store.append_now(first).is_ok());
        let mut again = append(Uuid::now_v7(), 0, &[]);
        again.remember = Some(remembered(serde_json::json!({})));
        assert!(matches!(
            store.append_now(again),
            Err(AppendError::KeyTaken)
        ));
        let key = ("t".to_owned(), "k".to_owned());
        let stored = store.lock().keys.get(&key).cloned().map(|k| k.outcome);
        assert_eq!(stored, Some(serde_json::json!({ "position": "1" })));
    }

    #[test]
    fn only_a_running_deadline_is_ended_and_only_with_its_append() {
        let store = MemoryStore::new();
        let id = Uuid::now_v7();
        store.start_deadline(Due {
            id,
            tenant_id: "t".into(),
            kind: "scheduling".into(),
            correlation_id: "c".into(),
            actor_id: None,
            due_at: Utc::now(),
        });
        let ending = |how, expected| Append {
            ends: Some(DeadlineEnd { id, how }),
            ..append(id, expected, &[])
        };
        // A conflict takes the pause back with it.
        let stale = store.append_now(ending(Ending::Paused, 1));
        assert!(matches!(stale, Err(AppendError::Conflict { .. })));
        assert!(store.append_now(ending(Ending::Paused, 0)).is_ok());
        let late = store.append_now(ending(Ending::Fired, 1));
        assert!(matches!(late, Err(AppendError::DeadlineNotRunning(_))));
        assert_eq!(
            store.deadline(id).map(|d| d.state),
            Some(DeadlineState::Paused)
        );
        assert_eq!(store.events().len(), 1);
    }
}
