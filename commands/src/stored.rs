//! The one way a domain event becomes an event to store: its type name and payload, a fresh
//! id, the time it happened, and the values it claims.

use chrono::{DateTime, Utc};
use domain::{Aggregate, Event};
use eventstore::{Append, Claim, Metadata, NewEvent, StreamVersion};
use uuid::Uuid;

/// `event` as the store keeps it, with a new id, happening now, at the version its type is
/// written at today (its personal fields still in clear: the pipeline seals them).
pub fn new_event(event: &Event) -> NewEvent {
    let (event_type, payload) = event.into_parts();
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: event_type.to_owned(),
        payload,
        occurred_at: now(),
        schema_version: domain::personal::schema_version(event_type),
    }
}

/// Now, truncated to microseconds, what PostgreSQL keeps, so that the stored and the published
/// time are the same instant.
pub fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros())
        .expect("now is a valid timestamp")
}

/// The values `events` take for their stream alone, to claim in the same transaction.
pub fn claims(events: &[Event]) -> Vec<Claim> {
    events
        .iter()
        .flat_map(Event::claims)
        .map(|(kind, value)| Claim {
            kind: kind.to_owned(),
            value,
        })
        .collect()
}

/// An append of `events` to the stream of aggregate `A` at `expected`, with their claims and
/// nothing else: no idempotency key, no deadline. The command pipeline adds those it needs.
pub fn append<A: Aggregate>(
    stream_id: Uuid,
    expected: StreamVersion,
    events: &[Event],
    metadata: Metadata,
) -> Append {
    Append {
        stream_id,
        aggregate_type: A::KIND.as_str().to_owned(),
        expected,
        events: events.iter().map(new_event).collect(),
        claims: claims(events),
        remember: None,
        metadata,
        deadlines: Vec::new(),
        ends: None,
        erases: None,
        new_keys: vec![],
    }
}
