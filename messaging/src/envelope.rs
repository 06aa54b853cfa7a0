//! An event as its consumers (projectors, saga steps) see it, read from a message body or
//! from the event store.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use domain::versions::{self, Upcast};
use eventstore::RecordedEvent;
use eventstore::scan::ScannedEvent;
use uuid::Uuid;

use crate::message::EventMessage;

/// A decoded event with what the runtime needs to order and deduplicate it. Its events are what
/// the stored one reads as today ([`versions::decode`]): usually one, none when an upcaster
/// dropped it, several when one split it; they share the stored event's id, version and place.
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
    pub events: Upcast,
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

impl Envelope {
    /// The event of a message body, and where it came from.
    pub fn from_message(body: &[u8]) -> Result<(Self, Origin), Poison> {
        let body = EventMessage::read(body).map_err(|e| Poison::NotAnEvent(e.to_string()))?;
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
            tenant_id: body.tenant_id.clone().into_owned(),
            events: versions::decode(&body.event_type, body.schema_version, body.payload.get())?,
        };
        let origin = Origin {
            tenant_id: body.tenant_id.into_owned(),
            correlation_id: body.correlation_id.into_owned(),
            actor_id: body.actor_id.map(Cow::into_owned),
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
            events: versions::decode(scanned.event_type, scanned.schema_version, scanned.payload)?,
        })
    }

    pub fn from_recorded(recorded: RecordedEvent) -> Result<Self, Poison> {
        Ok(Self {
            event_id: recorded.event_id,
            stream_id: recorded.stream_id,
            version: recorded.version,
            position: recorded.position,
            occurred_at: recorded.occurred_at,
            events: versions::decode(
                &recorded.event_type,
                recorded.schema_version,
                recorded.payload.get(),
            )?,
            tenant_id: recorded.tenant_id,
        })
    }
}
