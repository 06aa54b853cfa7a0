//! Shared helpers for HAP's end-to-end tests: each test gets its own database (through
//! `#[sqlx::test]`) and, where it needs one, its own running HTTP server on port 0.

use chrono::Utc;
use eventstore::{Append, Metadata, NewEvent, StreamVersion};
use uuid::Uuid;

/// An append of `count` opaque events to `stream`, as a writer at `expected` would make it.
pub fn test_append(stream: Uuid, expected: StreamVersion, count: usize) -> Append {
    Append {
        stream_id: stream,
        aggregate_type: "test".into(),
        expected,
        events: (0..count)
            .map(|i| NewEvent {
                event_id: Uuid::now_v7(),
                event_type: "TestHappened".into(),
                payload: serde_json::json!({ "n": i }),
                occurred_at: Utc::now(),
            })
            .collect(),
        claims: vec![],
        remember: None,
        metadata: Metadata {
            tenant_id: "default".into(),
            correlation_id: Uuid::now_v7().to_string(),
            causation_id: None,
            schema_version: 1,
        },
    }
}
