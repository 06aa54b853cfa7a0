//! Every event HAP records, its payload, and where it travels on the broker.
//!
//! An event is serialised as `{"eventType": "...", "payload": {...}}`; the store keeps the two
//! parts in separate columns and [`Event::from_parts`] puts them back together (readers go through
//! [`crate::versions::decode`], which raises an older shape first). Payloads carry
//! the aggregate id plus what changed, in camelCase, and only plain data types: events are facts
//! already accepted, so reading them never re-applies today's validation rules.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{ConsultationId, PatientId, PhysicianId, RecordId};
use crate::names::named_enum;

/// Declares every event type once, with where it travels: from this one table come the
/// [`Event`] enum (serde's tag is the variant's name), [`Event::event_type`], each payload's
/// `EVENT_TYPE`, [`EVENTS`] and [`route`]. Each variant's payload is the struct of the same
/// name.
macro_rules! events {
    ($($name:ident => $exchange:ident, $routing_key:literal, $aggregate:ident, saga: $saga:literal;)*) => {
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "eventType", content = "payload")]
        pub enum Event {
            $($name($name),)*
        }

        impl Event {
            pub fn event_type(&self) -> &'static str {
                match self {
                    $(Self::$name(_) => $name::EVENT_TYPE,)*
                }
            }

            /// The event of type `event_type`, its payload decoded by `decode` straight into
            /// that type's struct; `None` for a type HAP does not know.
            fn decoded<D: PayloadDecoder>(
                event_type: &str,
                payload: D,
            ) -> Option<Result<Self, serde_json::Error>> {
                Some(match event_type {
                    $(stringify!($name) => payload.decode().map(Self::$name),)*
                    _ => return None,
                })
            }
        }

        $(impl $name {
            /// The name this event is stored and sent under.
            pub const EVENT_TYPE: &'static str = stringify!($name);
        })*

        /// Every event type and its route, in the order of the table.
        pub const EVENTS: &[EventSpec] = &[
            $(EventSpec {
                name: stringify!($name),
                route: Route {
                    exchange: Exchange::$exchange,
                    routing_key: $routing_key,
                    aggregate: AggregateKind::$aggregate,
                    saga: $saga,
                },
            },)*
        ];
    };
}

events! {
    PatientRegistered => Patients, "patient.registered", Patient, saga: false;
    PatientUpdated => Patients, "patient.updated", Patient, saga: false;
    PatientDeactivated => Patients, "patient.deactivated", Patient, saga: false;
    PatientErased => Patients, "patient.erased", Patient, saga: false;
    PatientValidatedForConsultation => Patients, "patient.validated.for.consultation", Patient, saga: true;
    PatientValidationFailed => Patients, "patient.validation.failed", Patient, saga: true;
    PhysicianRegistered => Physicians, "physician.registered", Physician, saga: false;
    PhysicianUpdated => Physicians, "physician.updated", Physician, saga: false;
    PhysicianDeactivated => Physicians, "physician.deactivated", Physician, saga: false;
    PhysicianErased => Physicians, "physician.erased", Physician, saga: false;
    PhysicianAvailabilityConfirmed => Physicians, "physician.availability.confirmed", PhysicianSchedule, saga: true;
    PhysicianAvailabilityRejected => Physicians, "physician.availability.rejected", PhysicianSchedule, saga: true;
    PhysicianSlotReleased => Physicians, "physician.slot.released", PhysicianSchedule, saga: true;
    ConsultationSchedulingStarted => Consultations, "consultation.scheduling.started", Consultation, saga: true;
    ConsultationScheduled => Consultations, "consultation.scheduled", Consultation, saga: true;
    ConsultationSchedulingFailed => Consultations, "consultation.scheduling.failed", Consultation, saga: true;
    ConsultationUpdated => Consultations, "consultation.updated", Consultation, saga: false;
    ConsultationCancellationRequested => Consultations, "consultation.cancellation.requested", Consultation, saga: true;
    ConsultationCancelled => Consultations, "consultation.cancelled", Consultation, saga: true;
    ConsultationDone => Consultations, "consultation.done", Consultation, saga: false;
    ConsultationRecordCreated => Records, "record.created", ClinicalRecord, saga: false;
    ConsultationRecordUpdated => Records, "record.updated", ClinicalRecord, saga: false;
    ConsultationRecordsVoided => Records, "record.voided", ClinicalRecord, saga: true;
}

/// Why a payload could not be read back as an event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("{event_type} at schema version {schema_version}, which this release does not know")]
    UnknownVersion {
        event_type: String,
        schema_version: i32,
    },
    #[error("payload of {event_type} does not fit: {source}")]
    BadPayload {
        event_type: String,
        source: serde_json::Error,
    },
}

/// A payload as a reader holds it (text or parsed), decoded into whichever struct its event
/// type names.
trait PayloadDecoder {
    fn decode<T: serde::de::DeserializeOwned>(self) -> Result<T, serde_json::Error>;
}

impl PayloadDecoder for &str {
    fn decode<T: serde::de::DeserializeOwned>(self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self)
    }
}

impl PayloadDecoder for serde_json::Value {
    fn decode<T: serde::de::DeserializeOwned>(self) -> Result<T, serde_json::Error> {
        serde_json::from_value(self)
    }
}

impl Event {
    /// Rebuilds an event from its stored type name and payload (JSON text, parsed once and
    /// straight into the event's struct: no intermediate `Value`, no tagged copy of the text).
    pub fn from_parts(event_type: &str, payload: &str) -> Result<Self, DecodeError> {
        Self::from_decoder(event_type, payload)
    }

    /// Rebuilds an event from its type name and a payload already parsed (an upcaster's).
    pub fn from_value(event_type: &str, payload: serde_json::Value) -> Result<Self, DecodeError> {
        Self::from_decoder(event_type, payload)
    }

    fn from_decoder(event_type: &str, payload: impl PayloadDecoder) -> Result<Self, DecodeError> {
        Self::decoded(event_type, payload)
            .ok_or_else(|| DecodeError::UnknownType(event_type.to_owned()))?
            .map_err(|source| DecodeError::BadPayload {
                event_type: event_type.to_owned(),
                source,
            })
    }

    /// The event's type name and payload, as stored and sent.
    pub fn into_parts(&self) -> (&'static str, serde_json::Value) {
        let mut tagged = serde_json::to_value(self).expect("events serialise to JSON");
        let payload = tagged
            .get_mut("payload")
            .map(serde_json::Value::take)
            .expect("every event has a payload");
        (self.event_type(), payload)
    }

    /// Values this event takes for its stream alone, as (kind, value): they must be unique per
    /// tenant at once, so the store claims them in the append's transaction.
    pub fn claims(&self) -> Vec<(&'static str, String)> {
        match self {
            Event::PatientRegistered(e) => e
                .document_number
                .iter()
                .map(|n| ("patient.documentNumber", n.clone()))
                .collect(),
            Event::PhysicianRegistered(e) => e
                .license_number
                .iter()
                .map(|n| ("physician.licenseNumber", n.clone()))
                .collect(),
            // Not a rule but a lookup: which record book holds a record.
            Event::ConsultationRecordCreated(e) => vec![("record", e.record_id.to_string())],
            _ => vec![],
        }
    }

    /// The consultation whose scheduling or cancellation saga this event takes part in; sent
    /// as the `x-saga-id` header.
    pub fn saga_id(&self) -> Option<ConsultationId> {
        let (event_type, payload) = self.into_parts();
        route(event_type)
            .filter(|r| r.saga)
            .and_then(|_| serde_json::from_value(payload["consultationId"].clone()).ok())
    }
}

/// The topic exchanges, one per aggregate family; each name is prefixed (`hap.patients`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exchange {
    Patients,
    Physicians,
    Consultations,
    Records,
}

impl Exchange {
    pub const ALL: [Exchange; 4] = [
        Exchange::Patients,
        Exchange::Physicians,
        Exchange::Consultations,
        Exchange::Records,
    ];

    /// The exchange name without its prefix.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Patients => "patients",
            Self::Physicians => "physicians",
            Self::Consultations => "consultations",
            Self::Records => "records",
        }
    }

    /// The binding key that takes every event of this exchange (`patient.#`).
    pub fn every_event(self) -> &'static str {
        match self {
            Self::Patients => "patient.#",
            Self::Physicians => "physician.#",
            Self::Consultations => "consultation.#",
            Self::Records => "record.#",
        }
    }
}

/// Where one event type goes on the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub exchange: Exchange,
    pub routing_key: &'static str,
    pub aggregate: AggregateKind,
    /// The event takes part in a scheduling or cancellation saga; its payload's
    /// `consultationId` is the saga id (the `x-saga-id` header).
    pub saga: bool,
}

/// One row of the routing table: an event type's name and its route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSpec {
    pub name: &'static str,
    pub route: Route,
}

/// The route of `event_type`, or `None` for a name HAP does not know.
pub fn route(event_type: &str) -> Option<Route> {
    EVENTS
        .iter()
        .find(|spec| spec.name == event_type)
        .map(|spec| spec.route)
}

/// The kinds of event stream HAP keeps; each stream belongs to exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AggregateKind {
    Patient,
    Physician,
    /// One physician's bookings on one calendar day (UTC): the unit that holds slots, so two
    /// consultations racing for the same hour conflict on one small stream.
    PhysicianSchedule,
    Consultation,
    /// The clinical record book of one consultation: its records, and whether they were voided.
    ClinicalRecord,
}

impl AggregateKind {
    pub const ALL: [Self; 5] = [
        Self::Patient,
        Self::Physician,
        Self::PhysicianSchedule,
        Self::Consultation,
        Self::ClinicalRecord,
    ];

    /// The kind whose `aggregateType` is `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// The `aggregateType` written with every event and sent on the broker.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Patient => "patient",
            Self::Physician => "physician",
            Self::PhysicianSchedule => "physician-schedule",
            Self::Consultation => "consultation",
            Self::ClinicalRecord => "record",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatientRegistered {
    pub patient_id: PatientId,
    /// The personal fields are null only once the patient is erased ([`crate::personal`]).
    pub name: Option<String>,
    pub birth_date: Option<NaiveDate>,
    pub document_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}

/// Only the fields that changed are present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatientUpdated {
    pub patient_id: PatientId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatientDeactivated {
    pub patient_id: PatientId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The patient's personal data is erased: their key is deleted with this event, so every
/// personal field sealed under it reads as null from now on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatientErased {
    pub patient_id: PatientId,
    /// Why, as the data protection officer gave it (no personal data).
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatientValidatedForConsultation {
    pub patient_id: PatientId,
    pub consultation_id: ConsultationId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatientValidationFailed {
    pub patient_id: PatientId,
    pub consultation_id: ConsultationId,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PhysicianRegistered {
    pub physician_id: PhysicianId,
    /// The personal fields are null only once the physician is erased ([`crate::personal`]).
    pub name: Option<String>,
    pub specialty: String,
    pub license_number: Option<String>,
}

/// Only the fields that changed are present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PhysicianUpdated {
    pub physician_id: PhysicianId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specialty: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PhysicianDeactivated {
    pub physician_id: PhysicianId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The slot is now held for the consultation on the physician's day schedule.
/// The physician's personal data is erased, as [`PatientErased`] for a patient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PhysicianErased {
    pub physician_id: PhysicianId,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PhysicianAvailabilityConfirmed {
    pub physician_id: PhysicianId,
    pub consultation_id: ConsultationId,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PhysicianAvailabilityRejected {
    pub physician_id: PhysicianId,
    pub consultation_id: ConsultationId,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PhysicianSlotReleased {
    pub physician_id: PhysicianId,
    pub consultation_id: ConsultationId,
    pub starts_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsultationSchedulingStarted {
    pub consultation_id: ConsultationId,
    pub patient_id: PatientId,
    pub physician_id: PhysicianId,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsultationScheduled {
    pub consultation_id: ConsultationId,
    pub patient_id: PatientId,
    pub physician_id: PhysicianId,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
}

named_enum! {
    /// Why scheduling failed, as events carry it and the query API reports it in
    /// `failureReason`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum FailureReason {
        PatientInvalid = "patient_invalid",
        PhysicianUnavailable = "physician_unavailable",
        TimedOut = "timed_out",
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsultationSchedulingFailed {
    pub consultation_id: ConsultationId,
    pub reason: FailureReason,
    /// Words for a person: which rule failed and why.
    pub detail: String,
}

/// Only the fields that changed are present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsultationUpdated {
    pub consultation_id: ConsultationId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsultationCancellationRequested {
    pub consultation_id: ConsultationId,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsultationCancelled {
    pub consultation_id: ConsultationId,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsultationDone {
    pub consultation_id: ConsultationId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsultationRecordCreated {
    pub record_id: RecordId,
    pub consultation_id: ConsultationId,
    pub patient_id: PatientId,
    pub physician_id: PhysicianId,
    /// Null only once the patient is erased ([`crate::personal`]).
    pub content: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsultationRecordUpdated {
    pub record_id: RecordId,
    pub consultation_id: ConsultationId,
    /// Null only once the patient is erased.
    pub content: Option<String>,
}

/// Every record of the consultation is void; sent even when it had none, since the
/// cancellation saga waits for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsultationRecordsVoided {
    pub consultation_id: ConsultationId,
    pub record_ids: Vec<RecordId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_key_follows_the_event_type() {
        assert_eq!(
            route("PatientValidatedForConsultation")
                .unwrap()
                .routing_key,
            "patient.validated.for.consultation"
        );
        assert_eq!(
            route("ConsultationRecordsVoided").unwrap().routing_key,
            "record.voided"
        );
        assert_eq!(
            route("ConsultationCancellationRequested").unwrap().exchange,
            Exchange::Consultations
        );
        assert!(route("PatientDeleted").is_none());
    }

    #[test]
    fn every_routing_key_names_its_exchange() {
        for EventSpec { name, route } in EVENTS {
            let noun = route.routing_key.split('.').next().unwrap();
            let expected_noun = match route.exchange {
                Exchange::Patients => "patient",
                Exchange::Physicians => "physician",
                Exchange::Consultations => "consultation",
                Exchange::Records => "record",
            };
            assert_eq!(noun, expected_noun, "{name}");
        }
    }

    #[test]
    fn saga_events_name_their_consultation() {
        let consultation_id = ConsultationId::new();
        let started = Event::ConsultationDone(ConsultationDone { consultation_id });
        assert_eq!(started.saga_id(), None, "completing is not part of a saga");
        let voided = Event::ConsultationRecordsVoided(ConsultationRecordsVoided {
            consultation_id,
            record_ids: vec![],
        });
        assert_eq!(voided.saga_id(), Some(consultation_id));
    }

    #[test]
    fn an_event_survives_the_store_round_trip() {
        let event = Event::PatientUpdated(PatientUpdated {
            patient_id: PatientId::new(),
            name: Some("Ana".into()),
            email: None,
            phone: None,
        });
        let (event_type, payload) = event.into_parts();
        assert_eq!(event_type, "PatientUpdated");
        assert!(
            payload.get("email").is_none(),
            "unchanged fields are left out"
        );
        assert_eq!(
            Event::from_parts(event_type, &payload.to_string()).unwrap(),
            event
        );
    }

    #[test]
    fn a_failure_reason_travels_as_its_name() {
        for reason in FailureReason::ALL {
            let json = serde_json::to_value(reason).unwrap();
            assert_eq!(json, reason.as_str());
            assert_eq!(
                serde_json::from_value::<FailureReason>(json).unwrap(),
                *reason
            );
        }
        let unknown = serde_json::from_str::<FailureReason>(r#""bored""#).unwrap_err();
        assert!(
            unknown
                .to_string()
                .starts_with("unknown variant `bored`, expected one of"),
            "{unknown}"
        );
    }

    #[test]
    fn unknown_types_and_misfit_payloads_are_refused() {
        assert!(matches!(
            Event::from_parts("PatientDeleted", "{}"),
            Err(DecodeError::UnknownType(_))
        ));
        assert!(matches!(
            Event::from_parts("PatientDeactivated", r#"{"patientId": 3}"#),
            Err(DecodeError::BadPayload { .. })
        ));
    }
}
