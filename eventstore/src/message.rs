//! The message an event becomes on the broker: body, properties and headers.

use chrono::SecondsFormat;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::read::RecordedEvent;

/// Where an event goes and what it says about itself; given by the application, which knows
/// what its event types mean (the store does not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRoute {
    /// The exchange without its prefix (`patients`).
    pub exchange: &'static str,
    pub routing_key: &'static str,
    pub source_service: &'static str,
    /// The saga the event takes part in (`x-saga-id`), if any.
    pub saga_id: Option<String>,
}

/// Maps stored events to their routes.
pub trait Router: Send + Sync + 'static {
    /// `None` for an event type the application does not know; such an event is sent to the
    /// unrouted queue rather than dropped.
    fn route(&self, event: &RecordedEvent) -> Option<MessageRoute>;
}

/// The JSON body: the first five fields are the messaging document's, the rest additions.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    event_id: Uuid,
    event_type: &'a str,
    occurred_at: String,
    source_service: &'a str,
    aggregate_type: &'a str,
    aggregate_id: Uuid,
    version: i64,
    position: String,
    tenant_id: &'a str,
    correlation_id: &'a str,
    causation_id: Option<Uuid>,
    actor_id: Option<&'a str>,
    schema_version: i32,
    payload: &'a RawValue,
}

/// A message ready to publish.
#[derive(Debug, Clone)]
pub struct Message {
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

impl Message {
    /// The message for `event`; `exchange` is the full exchange name.
    pub fn new(event: &RecordedEvent, route: &MessageRoute, exchange: String) -> Self {
        let occurred_at = event
            .occurred_at
            .to_rfc3339_opts(SecondsFormat::Micros, true);
        let body = Body {
            event_id: event.event_id,
            event_type: &event.event_type,
            occurred_at,
            source_service: route.source_service,
            aggregate_type: &event.aggregate_type,
            aggregate_id: event.stream_id,
            version: event.version,
            position: event.position.to_string(),
            tenant_id: &event.tenant_id,
            correlation_id: &event.correlation_id,
            causation_id: event.causation_id,
            actor_id: event.actor_id.as_deref(),
            schema_version: event.schema_version,
            payload: &event.payload,
        };
        let mut headers = FieldTable::default();
        headers.insert(
            "x-correlation-id".into(),
            AMQPValue::LongString(event.correlation_id.as_str().into()),
        );
        if let Some(causation) = event.causation_id {
            headers.insert(
                "x-causation-id".into(),
                AMQPValue::LongString(causation.to_string().into()),
            );
        }
        if let Some(saga) = &route.saga_id {
            headers.insert(
                "x-saga-id".into(),
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
            .with_headers(headers);
        Self {
            exchange,
            routing_key: route.routing_key.to_owned(),
            body: serde_json::to_vec(&body).expect("a message body serialises"),
            properties,
        }
    }
}
