//! The message an event becomes on the broker. [`EventMessage`] is its JSON body, one type
//! both ways: the publisher writes it ([`Outgoing::new`]) and the consumers read it
//! ([`crate::envelope::Envelope::from_message`]).

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat, Utc};
use eventstore::RecordedEvent;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::headers;
use crate::routes::MessageRoute;

/// The JSON body of an event's message: the first five fields are the messaging document's,
/// the rest additions. Strings are borrowed from the event written or the body read wherever
/// they can be. A consumer needs only the event and its place (`eventId`, `eventType`,
/// `occurredAt`, `aggregateId`, `version`, `position`, `payload`); what a body leaves out of
/// the rest reads as empty, so that a message is judged by its event first.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventMessage<'a> {
    pub event_id: Uuid,
    #[serde(borrow)]
    pub event_type: Cow<'a, str>,
    #[serde(serialize_with = "micros")]
    pub occurred_at: DateTime<Utc>,
    #[serde(default, borrow)]
    pub source_service: Cow<'a, str>,
    #[serde(default, borrow)]
    pub aggregate_type: Cow<'a, str>,
    pub aggregate_id: Uuid,
    pub version: i64,
    /// The event's position in the store, as a decimal string.
    #[serde(borrow)]
    pub position: Cow<'a, str>,
    #[serde(default, borrow)]
    pub tenant_id: Cow<'a, str>,
    #[serde(default, borrow)]
    pub correlation_id: Cow<'a, str>,
    #[serde(default)]
    pub causation_id: Option<Uuid>,
    #[serde(default, borrow)]
    pub actor_id: Option<Cow<'a, str>>,
    #[serde(default)]
    pub schema_version: i32,
    #[serde(borrow)]
    pub payload: &'a RawValue,
}

/// `occurredAt` to the microsecond, always with six digits and `Z`.
fn micros<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Micros, true))
}

impl<'a> EventMessage<'a> {
    /// The body of `event`'s message, published by `source_service`.
    pub fn of(event: &'a RecordedEvent, source_service: &'a str) -> Self {
        Self {
            event_id: event.event_id,
            event_type: Cow::Borrowed(&event.event_type),
            occurred_at: event.occurred_at,
            source_service: Cow::Borrowed(source_service),
            aggregate_type: Cow::Borrowed(&event.aggregate_type),
            aggregate_id: event.stream_id,
            version: event.version,
            position: Cow::Owned(event.position.to_string()),
            tenant_id: Cow::Borrowed(&event.tenant_id),
            correlation_id: Cow::Borrowed(&event.correlation_id),
            causation_id: event.causation_id,
            actor_id: event.actor_id.as_deref().map(Cow::Borrowed),
            schema_version: event.schema_version,
            payload: &event.payload,
        }
    }

    /// Reads a message body.
    pub fn read(body: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

/// A message ready to publish: its exchange, routing key, body and properties.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

impl Outgoing {
    /// The message for `event` along `route`; `exchange` is the full exchange name.
    pub fn new(event: &RecordedEvent, route: &MessageRoute, exchange: String) -> Self {
        let body = EventMessage::of(event, route.source_service);
        let mut fields = FieldTable::default();
        fields.insert(
            headers::CORRELATION_ID.into(),
            AMQPValue::LongString(event.correlation_id.as_str().into()),
        );
        if let Some(causation) = event.causation_id {
            fields.insert(
                headers::CAUSATION_ID.into(),
                AMQPValue::LongString(causation.to_string().into()),
            );
        }
        if let Some(saga) = &route.saga_id {
            fields.insert(
                headers::SAGA_ID.into(),
                AMQPValue::LongString(saga.as_str().into()),
            );
        }
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(event.event_id.to_string().into())
            .with_type(event.event_type.as_str().into())
            .with_timestamp(event.occurred_at.timestamp().max(0) as u64)
            .with_app_id("hap".into())
            .with_headers(fields);
        Self {
            exchange,
            routing_key: route.routing_key.to_owned(),
            body: serde_json::to_vec(&body).expect("a message body serialises"),
            properties,
        }
    }
}
