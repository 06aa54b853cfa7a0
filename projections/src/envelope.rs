//! An event as a projector sees it, read from a message body or from the event store.

use chrono::{DateTime, Utc};
use domain::Event;
use eventstore::RecordedEvent;
use eventstore::scan::ScannedEvent;
use serde::Deserialize;
use uuid::Uuid;

/// A decoded event with what the runtime needs to order and deduplicate it.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub event_id: Uuid,
    pub stream_id: Uuid,
    pub version: i64,
    pub position: i64,
    pub occurred_at: DateTime<Utc>,
    /// The tenant (clinic) whose stream the event belongs to: every read-model row is shown
    /// only to it.
    pub tenant_id: String,
    pub event: Event,
}

/// Why a message can never be applied, however often it is retried.
#[derive(Debug, thiserror::Error)]
pub enum Poison {
    #[error("the body is not a HAP event message: {0}")]
    NotAnEvent(String),
    #[error(transparent)]
    Undecodable(#[from] domain::event::DecodeError),
}

/// Where a message's event came from, as its body says: what a saga step carries on into the
/// commands it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub tenant_id: String,
    pub correlation_id: String,
    /// Who acted (`actorId`), when the message says.
    pub actor_id: Option<String>,
}

/// The fields of a message body the consumers use (the others are for other systems).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    event_id: Uuid,
    // Checked by the consumers that need them (saga steps), so that a message without them
    // is still judged by its event first.
    #[serde(default)]
    tenant_id: String,
    #[serde(default)]
    correlation_id: String,
    #[serde(default)]
    actor_id: Option<String>,
    event_type: String,
    occurred_at: DateTime<Utc>,
    aggregate_id: Uuid,
    version: i64,
    position: String,
    payload: Box<serde_json::value::RawValue>,
}

impl Envelope {
    /// The event of a message body, and where it came from.
    pub fn from_message(body: &[u8]) -> Result<(Self, Origin), Poison> {
        let body: Body =
            serde_json::from_slice(body).map_err(|e| Poison::NotAnEvent(e.to_string()))?;
        let position = body
            .position
            .parse()
            .map_err(|_| Poison::NotAnEvent(format!("position {:?}", body.position)))?;
        let envelope = Self {
            event_id: body.event_id,
            stream_id: body.aggregate_id,
            version: body.version,
            position,
            occurred_at: body.occurred_at,
            tenant_id: body.tenant_id.clone(),
            event: Event::from_parts(&body.event_type, body.payload.get())?,
        };
        let origin = Origin {
            tenant_id: body.tenant_id,
            correlation_id: body.correlation_id,
            actor_id: body.actor_id,
        };
        Ok((envelope, origin))
    }

    pub fn from_scanned(scanned: &ScannedEvent<'_>) -> Result<Self, Poison> {
        Ok(Self {
            event_id: scanned.event_id,
            stream_id: scanned.stream_id,
            version: scanned.version,
            position: scanned.checkpoint.position,
            occurred_at: scanned.occurred_at,
            tenant_id: scanned.tenant_id.to_owned(),
            event: Event::from_parts(scanned.event_type, scanned.payload)?,
        })
    }

    pub fn from_recorded(recorded: RecordedEvent) -> Result<Self, Poison> {
        Ok(Self {
            event_id: recorded.event_id,
            stream_id: recorded.stream_id,
            version: recorded.version,
            position: recorded.position,
            occurred_at: recorded.occurred_at,
            event: Event::from_parts(&recorded.event_type, recorded.payload.get())?,
            tenant_id: recorded.tenant_id,
        })
    }
}
