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
    /// The payload's version for its event type; a body without it has the first.
    #[serde(default = "first_version")]
    pub schema_version: i32,
    #[serde(borrow)]
    pub payload: &'a RawValue,
}

fn first_version() -> i32 {
    1
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

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::envelope::{Envelope, Poison};

    fn recorded() -> RecordedEvent {
        RecordedEvent {
            position: 42,
            transaction_id: 7,
            event_id: Uuid::from_u128(1),
            stream_id: Uuid::from_u128(2),
            aggregate_type: "patient".into(),
            version: 3,
            event_type: "PatientDeactivated".into(),
            payload: RawValue::from_string(format!(r#"{{"patientId":"{}"}}"#, Uuid::from_u128(2)))
                .unwrap(),
            tenant_id: "clinic-1".into(),
            correlation_id: "corr-1".into(),
            causation_id: None,
            actor_id: Some("dr-who".into()),
            schema_version: 1,
            occurred_at: Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
        }
    }

    #[test]
    fn the_body_keeps_its_field_order_and_formats() {
        let event = recorded();
        let route = crate::routes::route(&event).unwrap();
        let message = Outgoing::new(&event, &route, "hap.patients".into());
        let expected = concat!(
            r#"{"eventId":"00000000-0000-0000-0000-000000000001","#,
            r#""eventType":"PatientDeactivated","occurredAt":"2026-01-02T03:04:05.000000Z","#,
            r#""sourceService":"patient-service","aggregateType":"patient","#,
            r#""aggregateId":"00000000-0000-0000-0000-000000000002","version":3,"#,
            r#""position":"42","tenantId":"clinic-1","correlationId":"corr-1","#,
            r#""causationId":null,"actorId":"dr-who","schemaVersion":1,"#,
            r#""payload":{"patientId":"00000000-0000-0000-0000-000000000002"}}"#,
        );
        assert_eq!(std::str::from_utf8(&message.body).unwrap(), expected);
        assert_eq!(message.routing_key, "patient.deactivated");
    }

    #[test]
    fn what_is_written_reads_back_as_the_same_event() {
        let event = recorded();
        let route = crate::routes::route(&event).unwrap();
        let message = Outgoing::new(&event, &route, String::new());
        let read = EventMessage::read(&message.body).unwrap();
        assert_eq!(read.source_service, "patient-service");
        assert_eq!(read.schema_version, 1);
        let (envelope, origin) = Envelope::from_message(&message.body).unwrap();
        assert_eq!(envelope.event_id, event.event_id);
        assert_eq!(envelope.position, 42);
        assert_eq!(envelope.occurred_at, event.occurred_at);
        assert_eq!(origin.tenant_id, "clinic-1");
        assert_eq!(origin.actor_id.as_deref(), Some("dr-who"));
    }

    #[test]
    fn a_body_with_only_the_event_and_its_place_is_read() {
        let body = format!(
            r#"{{"eventId":"{id}","eventType":"PatientDeactivated",
                "occurredAt":"2026-01-02T03:04:05Z","aggregateId":"{id}","version":1,
                "position":"5","payload":{{"patientId":"{id}"}}}}"#,
            id = Uuid::from_u128(9)
        );
        let (envelope, origin) = Envelope::from_message(body.as_bytes()).unwrap();
        assert_eq!(envelope.position, 5);
        assert_eq!(origin.tenant_id, "");
        assert_eq!(origin.actor_id, None);
    }

    #[test]
    fn a_bad_position_is_poison() {
        let body = recorded_body_with_position("five");
        let error = Envelope::from_message(body.as_bytes()).unwrap_err();
        assert!(matches!(error, Poison::NotAnEvent(_)));
        assert_eq!(
            error.to_string(),
            r#"the body is not a HAP event message: position "five""#
        );
    }

    fn recorded_body_with_position(position: &str) -> String {
        let event = recorded();
        let mut body = EventMessage::of(&event, "patient-service");
        body.position = Cow::Borrowed(position);
        serde_json::to_string(&body).unwrap()
    }
}
