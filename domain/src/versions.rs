//! The versions an event's payload has been written in, and how a reader raises an older one to
//! the shape today's code knows: the upcaster chain.
//!
//! Events are kept forever, so a payload written years ago must still read. Rather than teach
//! every payload struct every shape it once had, each change of shape is one [`Step`] from a
//! version to the next, keyed by (event type, version): it may rename or reshape fields, split
//! one stored event into several, or drop an event no reader needs any more. A reader runs the
//! steps from the stored version up to the chain's current one and decodes what comes out. A
//! version a step does not name kept its shape: it passes through unchanged.
//!
//! Version 2 is the one at which the store seals personal fields ([`crate::personal`]); it
//! needs no step: readers get a sealed payload opened, in version 1's shape.
//!
//! Every reader (aggregate loading, the publisher, the projectors, their rebuild, history)
//! decodes with [`decode`], so no reader can see an older shape.

use serde_json::Value;
use smallvec::SmallVec;

use crate::event::{DecodeError, Event};
use crate::personal::SEALED_VERSION;

/// What one stored event reads as today: usually one event, none if a step dropped it, several
/// if a step split it. The parts of a split share the stored event's id, version and position.
pub type Upcast = SmallVec<[Event; 1]>;

/// A payload at some version, as a step takes and gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    pub event_type: String,
    pub payload: Value,
}

impl Versioned {
    pub fn new(event_type: impl Into<String>, payload: Value) -> Self {
        Self {
            event_type: event_type.into(),
            payload,
        }
    }
}

/// Raises a payload of `event_type` from version `from` to `from + 1`: the events it stands for
/// at the next version, in order (none to drop it).
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub event_type: &'static str,
    pub from: i32,
    pub raise: fn(Value) -> Vec<Versioned>,
}

/// The steps, and the version they raise to.
#[derive(Debug, Clone, Copy)]
pub struct Chain {
    pub current: i32,
    pub steps: &'static [Step],
}

/// HAP's chain. Add a step here when an event's shape changes (docs/design.md tells how).
pub const CHAIN: Chain = Chain {
    current: SEALED_VERSION,
    steps: &[],
};

/// The event(s) a stored or published payload of `event_type`, written at `schema_version`,
/// reads as today.
pub fn decode(event_type: &str, schema_version: i32, payload: &str) -> Result<Upcast, DecodeError> {
    CHAIN.decode(event_type, schema_version, payload)
}

impl Chain {
    /// As [`decode`], along this chain.
    pub fn decode(
        &self,
        event_type: &str,
        schema_version: i32,
        payload: &str,
    ) -> Result<Upcast, DecodeError> {
        if !(1..=self.current).contains(&schema_version) {
            return Err(DecodeError::UnknownVersion {
                event_type: event_type.to_owned(),
                schema_version,
            });
        }
        if !self.raises(event_type, schema_version) {
            // The common case, and the hot path: the stored shape is today's.
            return Ok(smallvec::smallvec![Event::from_parts(event_type, payload)?]);
        }
        let payload = serde_json::from_str(payload).map_err(|source| DecodeError::BadPayload {
            event_type: event_type.to_owned(),
            source,
        })?;
        self.raise(Versioned::new(event_type, payload), schema_version)
            .into_iter()
            .map(|v| Event::from_value(&v.event_type, v.payload))
            .collect()
    }

    /// Whether a step applies to `event_type` at `version` or later.
    fn raises(&self, event_type: &str, version: i32) -> bool {
        self.steps
            .iter()
            .any(|s| s.event_type == event_type && s.from >= version)
    }

    /// Runs the steps from `version` up to the current one; the events a split gives are raised
    /// on each along their own types' steps.
    fn raise(&self, stored: Versioned, version: i32) -> Vec<Versioned> {
        let mut at = vec![stored];
        for from in version..self.current {
            at = at
                .into_iter()
                .flat_map(|v| match self.step(&v.event_type, from) {
                    Some(step) => (step.raise)(v.payload),
                    None => vec![v],
                })
                .collect();
        }
        at
    }

    fn step(&self, event_type: &str, from: i32) -> Option<&Step> {
        self.steps
            .iter()
            .find(|s| s.event_type == event_type && s.from == from)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::{PatientDeactivated, PatientRegistered, PatientUpdated};
    use crate::ids::PatientId;

    /// A chain at version 3 with one step of each kind a change of shape can need.
    const CHAIN: Chain = Chain {
        current: 3,
        steps: &[
            // Version 1 called the phone `mobile`.
            Step {
                event_type: "PatientUpdated",
                from: 1,
                raise: |mut payload| {
                    if let Some(mobile) = payload.as_object_mut().and_then(|p| p.remove("mobile")) {
                        payload["phone"] = mobile;
                    }
                    vec![Versioned::new("PatientUpdated", payload)]
                },
            },
            // Version 1 kept the name in two parts.
            Step {
                event_type: "PatientRegistered",
                from: 1,
                raise: |mut payload| {
                    let name = format!(
                        "{} {}",
                        payload["firstName"].as_str().unwrap_or_default(),
                        payload["lastName"].as_str().unwrap_or_default()
                    );
                    if let Some(fields) = payload.as_object_mut() {
                        fields.remove("firstName");
                        fields.remove("lastName");
                        fields.insert("name".into(), name.into());
                    }
                    vec![Versioned::new("PatientRegistered", payload)]
                },
            },
            // Version 2 could register a patient already inactive; today that is two events.
            Step {
                event_type: "PatientRegistered",
                from: 2,
                raise: |mut payload| {
                    let inactive = payload
                        .as_object_mut()
                        .and_then(|p| p.remove("inactive"))
                        .is_some_and(|i| i == true);
                    let deactivated = json!({"patientId": payload["patientId"]});
                    let mut events = vec![Versioned::new("PatientRegistered", payload)];
                    if inactive {
                        events.push(Versioned::new("PatientDeactivated", deactivated));
                    }
                    events
                },
            },
            // Versions 1 and 2 recorded every view of a patient; nothing reads it any more.
            Step {
                event_type: "PatientViewed",
                from: 2,
                raise: |_| vec![],
            },
        ],
    };

    fn registered(id: PatientId, name: &str) -> Event {
        Event::PatientRegistered(PatientRegistered {
            patient_id: id,
            name: Some(name.into()),
            birth_date: "1980-05-01".parse().ok(),
            document_number: Some("123".into()),
            email: None,
            phone: None,
        })
    }

    #[test]
    fn a_renamed_field_reads_under_its_new_name() {
        // Given a version 1 update that called the phone `mobile`
        let id = PatientId::new();
        let stored = json!({"patientId": id, "mobile": "+55 11 5555"}).to_string();
        // When it is read today
        let events = CHAIN.decode("PatientUpdated", 1, &stored).unwrap();
        // Then it carries the phone
        let expected = Event::PatientUpdated(PatientUpdated {
            patient_id: id,
            name: None,
            email: None,
            phone: Some("+55 11 5555".into()),
        });
        assert_eq!(events.as_slice(), [expected]);
    }

    #[test]
    fn a_reshaped_field_reads_in_its_new_shape_and_later_steps_follow() {
        // Given a version 1 registration with the name in two parts
        let id = PatientId::new();
        let stored = json!({"patientId": id, "firstName": "Ana", "lastName": "Souza",
                            "birthDate": "1980-05-01", "documentNumber": "123"});
        // When it is read today
        let events = CHAIN
            .decode("PatientRegistered", 1, &stored.to_string())
            .unwrap();
        // Then the name is whole, and the version 2 step (no `inactive` here) kept one event
        assert_eq!(events.as_slice(), [registered(id, "Ana Souza")]);
    }

    #[test]
    fn a_split_event_reads_as_its_parts_in_order() {
        // Given a version 2 registration of a patient already inactive
        let id = PatientId::new();
        let stored = json!({"patientId": id, "name": "Ana", "birthDate": "1980-05-01",
                            "documentNumber": "123", "inactive": true});
        // When it is read today
        let events = CHAIN
            .decode("PatientRegistered", 2, &stored.to_string())
            .unwrap();
        // Then it is a registration, then a deactivation
        let deactivated = Event::PatientDeactivated(PatientDeactivated {
            patient_id: id,
            reason: None,
        });
        assert_eq!(events.as_slice(), [registered(id, "Ana"), deactivated]);
    }

    #[test]
    fn a_dropped_event_reads_as_nothing() {
        // Given a view recorded at version 1, a type today's code does not know
        let stored = json!({"patientId": PatientId::new()}).to_string();
        // When it is read today
        let events = CHAIN.decode("PatientViewed", 1, &stored).unwrap();
        // Then no event comes out, and no error
        assert!(events.is_empty());
    }

    #[test]
    fn the_current_version_reads_as_stored() {
        // Given a registration written today
        let event = registered(PatientId::new(), "Ana");
        let (event_type, payload) = event.into_parts();
        // When it is read at the current version
        let events = CHAIN.decode(event_type, 3, &payload.to_string()).unwrap();
        // Then it is the event written
        assert_eq!(events.as_slice(), [event]);
    }

    #[test]
    fn a_version_from_a_later_release_is_refused() {
        // Given a payload of a version this release does not know
        let stored = json!({"patientId": PatientId::new()}).to_string();
        // When it is read
        let refused = CHAIN.decode("PatientDeactivated", 4, &stored);
        // Then it is an error, not a guess
        assert!(matches!(
            refused,
            Err(DecodeError::UnknownVersion {
                schema_version: 4,
                ..
            })
        ));
    }

    #[test]
    fn hap_reads_its_own_events_at_the_current_version() {
        // Given any event HAP writes today, when read through HAP's chain, at the version it
        // is written at today or in clear at version 1, then it is itself
        let event = registered(PatientId::new(), "Ana");
        let (event_type, payload) = event.into_parts();
        for version in [crate::personal::schema_version(event_type), 1] {
            let events = decode(event_type, version, &payload.to_string()).unwrap();
            assert_eq!(events.as_slice(), std::slice::from_ref(&event));
        }
    }
}
