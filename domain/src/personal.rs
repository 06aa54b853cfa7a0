//! Which parts of an event are a person's personal data, and whose.
//!
//! The store keeps these fields sealed under a key of their data subject (the patient or the
//! physician) and erasing the subject deletes the key: crypto-shredding. An event type named here
//! is written at [`SEALED_VERSION`]; what a reader gets back is the same shape, with the fields
//! null once their subject is erased. Everything else of an event (ids, times, statuses) stays in
//! clear, so the store's audit trail, sagas and projections keep working after an erasure.

use uuid::Uuid;

use crate::event::Event;

/// The version of an event type whose personal fields the store seals (version 1 kept them in
/// clear); its payload, once opened, has version 1's shape with those fields nullable.
pub const SEALED_VERSION: i32 = 2;

/// Whose key seals an event's personal fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// The payload field (camelCase) holding the subject's id.
    Field(&'static str),
    /// The subject of the event's stream ([`crate::Aggregate::data_subject`]): the payload does
    /// not name it.
    Stream,
}

/// One event type's personal fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Personal {
    pub event_type: &'static str,
    pub subject: Subject,
    /// Payload fields (camelCase) sealed under the subject's key.
    pub fields: &'static [&'static str],
}

/// Every event type that carries personal data.
pub const PERSONAL: &[Personal] = &[
    Personal {
        event_type: "PatientRegistered",
        subject: Subject::Field("patientId"),
        fields: &["name", "birthDate", "documentNumber", "email", "phone"],
    },
    Personal {
        event_type: "PatientUpdated",
        subject: Subject::Field("patientId"),
        fields: &["name", "email", "phone"],
    },
    Personal {
        event_type: "PhysicianRegistered",
        subject: Subject::Field("physicianId"),
        fields: &["name", "licenseNumber"],
    },
    Personal {
        event_type: "PhysicianUpdated",
        subject: Subject::Field("physicianId"),
        fields: &["name"],
    },
    Personal {
        event_type: "ConsultationRecordCreated",
        subject: Subject::Field("patientId"),
        fields: &["content"],
    },
    Personal {
        event_type: "ConsultationRecordUpdated",
        subject: Subject::Stream,
        fields: &["content"],
    },
];

/// The personal fields of `event_type`, if it has any.
pub fn personal(event_type: &str) -> Option<&'static Personal> {
    PERSONAL.iter().find(|p| p.event_type == event_type)
}

/// The version an event of `event_type` is written at today.
pub fn schema_version(event_type: &str) -> i32 {
    if personal(event_type).is_some() {
        SEALED_VERSION
    } else {
        1
    }
}

impl Event {
    /// The data subject this event erases: the store deletes their key, and releases their
    /// uniqueness claims, in the same transaction.
    pub fn erases_subject(&self) -> Option<Uuid> {
        match self {
            Event::PatientErased(e) => Some(e.patient_id.as_uuid()),
            Event::PhysicianErased(e) => Some(e.physician_id.as_uuid()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::route;

    #[test]
    fn every_personal_event_type_is_a_known_event() {
        for p in PERSONAL {
            assert!(route(p.event_type).is_some(), "{}", p.event_type);
            assert_eq!(schema_version(p.event_type), SEALED_VERSION);
        }
        assert_eq!(schema_version("ConsultationScheduled"), 1);
    }
}
