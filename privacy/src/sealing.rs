//! A payload's personal fields sealed under their data subject's key, and put back: the JSON
//! side of the vault, with no key lookups.
//!
//! A sealed payload keeps every clear field, and in place of the personal ones present (not
//! null) one member:
//!
//! ```json
//! "sealed": {"subject": "<uuid>", "fields": ["name", "email"], "data": "<base64 nonce||ct>"}
//! ```
//!
//! `data` seals a JSON object of those fields under the subject's key, bound to the event type
//! and the subject (a sealed part copied onto another event or subject does not open). Opened
//! without the key (the subject was erased), each field named reads as null.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use domain::personal::{Personal, Subject};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::gcm::Key;

/// The member of a payload holding its sealed fields.
pub const SEALED: &str = "sealed";

/// Why a payload could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("a {0} payload is not a JSON object")]
    NotAnObject(String),
    #[error("a {0} payload names no data subject to seal its personal fields under")]
    NoSubject(String),
}

/// Why a stored payload could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("a stored {event_type} payload is not what was sealed: {reason}")]
    Malformed { event_type: String, reason: String },
    /// The key is there but does not open it: the payload was altered, or sealed under
    /// another master key's subject key.
    #[error("the sealed fields of a stored {0} do not open under their subject's key")]
    Unopenable(String),
}

/// The sealed member of a payload.
#[derive(Debug, Serialize, Deserialize)]
struct Sealed {
    subject: Uuid,
    fields: Vec<String>,
    data: String,
}

/// The data subject whose key seals `payload` of `personal`'s type: the payload's subject
/// field, or `stream_subject` (the subject of the event's stream).
pub fn subject_of(
    personal: &Personal,
    payload: &Map<String, Value>,
    stream_subject: Option<Uuid>,
) -> Option<Uuid> {
    match personal.subject {
        Subject::Field(field) => payload.get(field)?.as_str()?.parse().ok(),
        Subject::Stream => stream_subject,
    }
}

/// Seals `personal`'s fields present in `payload` under `key` of `subject`, in place; leaves
/// the payload as it is when none is present.
pub fn seal(personal: &Personal, payload: &mut Map<String, Value>, subject: Uuid, key: &Key) {
    let mut sealed = Map::new();
    for field in personal.fields {
        // An absent or null field has nothing personal in it: it stays as it is.
        if payload.get(*field).is_some_and(|v| !v.is_null())
            && let Some(value) = payload.remove(*field)
        {
            sealed.insert((*field).to_owned(), value);
        }
    }
    if sealed.is_empty() {
        return;
    }
    let fields = sealed.keys().cloned().collect();
    let plaintext = Value::Object(sealed).to_string();
    let data = key.seal(&aad(personal.event_type, subject), plaintext.as_bytes());
    let sealed = Sealed {
        subject,
        fields,
        data: STANDARD.encode(data),
    };
    payload.insert(
        SEALED.to_owned(),
        serde_json::to_value(sealed).expect("a sealed member is plain JSON"),
    );
}

/// `payload` of `event_type` as it reads once its subject is erased: its personal fields
/// present set to null, nothing sealed (for clear events of a subject erased already).
pub fn erased(event_type: &str, mut payload: Value) -> Value {
    if let (Some(personal), Some(fields)) = (
        domain::personal::personal(event_type),
        payload.as_object_mut(),
    ) {
        for field in personal.fields {
            if let Some(value) = fields.get_mut(*field) {
                *value = Value::Null;
            }
        }
    }
    payload
}

/// A stored payload with sealed fields, parsed no further than its top-level members: what
/// opening needs, without building a tree of every value only to write it out again.
pub struct SealedPayload<'a> {
    event_type: &'a str,
    /// Every member but the sealed one, as stored.
    members: BTreeMap<Name<'a>, &'a RawValue>,
    sealed: SealedMember<'a>,
}

/// A member's name, borrowed from the stored text unless it has escapes.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(transparent)]
struct Name<'a>(#[serde(borrow)] Cow<'a, str>);

/// The sealed member, as stored.
#[derive(Deserialize)]
struct SealedMember<'a> {
    subject: Uuid,
    #[serde(borrow)]
    fields: Vec<Name<'a>>,
    #[serde(borrow)]
    data: Cow<'a, str>,
}

impl<'a> SealedPayload<'a> {
    /// `payload` (JSON text) of `event_type`, if it has sealed fields.
    pub fn parse(event_type: &'a str, payload: &'a str) -> Result<Option<Self>, OpenError> {
        let mut members: BTreeMap<Name<'a>, &'a RawValue> =
            serde_json::from_str(payload).map_err(|e| malformed(event_type, &e.to_string()))?;
        let Some(sealed) = members.remove(&Name(Cow::Borrowed(SEALED))) else {
            return Ok(None);
        };
        let sealed = serde_json::from_str(sealed.get())
            .map_err(|e| malformed(event_type, &e.to_string()))?;
        Ok(Some(Self {
            event_type,
            members,
            sealed,
        }))
    }

    /// The data subject whose key opens the sealed fields.
    pub fn subject(&self) -> Uuid {
        self.sealed.subject
    }

    /// The payload with its sealed fields back in place, opened with `key`; without one (the
    /// subject was erased) each of them null.
    pub fn open(&self, key: Option<&Key>) -> Result<Box<RawValue>, OpenError> {
        let event_type = self.event_type;
        let clear = self.members.iter().map(|(name, value)| (name, *value));
        let Some(key) = key else {
            let nulls = self.sealed.fields.iter().map(|name| (name, RawValue::NULL));
            return written(event_type, clear.chain(nulls));
        };
        let data = STANDARD
            .decode(self.sealed.data.as_bytes())
            .map_err(|e| malformed(event_type, &e.to_string()))?;
        let plaintext = key
            .open(&aad(event_type, self.sealed.subject), &data)
            .map_err(|_| OpenError::Unopenable(event_type.to_owned()))?;
        let opened: BTreeMap<Name<'_>, &RawValue> = serde_json::from_slice(&plaintext)
            .map_err(|e| malformed(event_type, &e.to_string()))?;
        written(event_type, clear.chain(opened.iter().map(|(n, v)| (n, *v))))
    }
}

/// `members` written out as one JSON object.
fn written<'n>(
    event_type: &str,
    members: impl Iterator<Item = (&'n Name<'n>, &'n RawValue)>,
) -> Result<Box<RawValue>, OpenError> {
    let object: BTreeMap<&str, &RawValue> = members.map(|(name, v)| (&*name.0, v)).collect();
    serde_json::value::to_raw_value(&object).map_err(|e| malformed(event_type, &e.to_string()))
}

/// What the sealed data is bound to: its event type and subject.
fn aad(event_type: &str, subject: Uuid) -> Vec<u8> {
    let mut aad = Vec::with_capacity(event_type.len() + 17);
    aad.extend_from_slice(event_type.as_bytes());
    aad.push(0);
    aad.extend_from_slice(subject.as_bytes());
    aad
}

fn malformed(event_type: &str, reason: &str) -> OpenError {
    OpenError::Malformed {
        event_type: event_type.to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use domain::personal::personal;
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    /// `payload` as a reader of the store gets it, its sealed fields opened with `key`.
    fn open(
        event_type: &str,
        payload: &Map<String, Value>,
        key: Option<&Key>,
    ) -> Result<Map<String, Value>, OpenError> {
        let text = Value::Object(payload.clone()).to_string();
        let opened = match SealedPayload::parse(event_type, &text)? {
            Some(sealed) => sealed.open(key)?.get().to_owned(),
            None => text,
        };
        Ok(object(serde_json::from_str(&opened).unwrap()))
    }

    fn registered(patient: Uuid) -> Map<String, Value> {
        object(
            json!({"patientId": patient, "name": "Ana Souza", "birthDate": "1980-05-01",
                      "documentNumber": "123.456.789-00", "email": null}),
        )
    }

    #[test]
    fn sealing_hides_present_fields_and_opening_gives_them_back() {
        let patient = Uuid::new_v4();
        let personal = personal("PatientRegistered").unwrap();
        let key = Key::new(&[5; 32]);
        let clear = registered(patient);
        let mut payload = clear.clone();
        assert_eq!(subject_of(personal, &payload, None), Some(patient));
        seal(personal, &mut payload, patient, &key);
        let text = Value::Object(payload.clone()).to_string();
        assert!(!text.contains("Ana") && !text.contains("123.456"), "{text}");
        // Absent (phone) and null (email) fields are not sealed; the null stays.
        assert_eq!(
            payload[SEALED]["fields"],
            json!(["birthDate", "documentNumber", "name"])
        );
        assert_eq!(payload["email"], Value::Null);
        let stored = Value::Object(payload.clone()).to_string();
        let parsed = SealedPayload::parse("PatientRegistered", &stored).unwrap();
        assert_eq!(parsed.map(|p| p.subject()), Some(patient));
        assert_eq!(
            open("PatientRegistered", &payload, Some(&key)).unwrap(),
            clear
        );
    }

    #[test]
    fn an_erased_subjects_fields_open_as_null() {
        let patient = Uuid::new_v4();
        let personal = personal("PatientRegistered").unwrap();
        let mut payload = registered(patient);
        seal(personal, &mut payload, patient, &Key::new(&[5; 32]));
        assert_eq!(
            Value::Object(open("PatientRegistered", &payload, None).unwrap()),
            json!({"patientId": patient, "name": null, "birthDate": null,
                   "documentNumber": null, "email": null})
        );
    }

    #[test]
    fn escaped_names_and_values_read_as_stored() {
        let patient = Uuid::new_v4();
        let key = Key::new(&[5; 32]);
        let mut clear = registered(patient);
        clear.insert("note \"quoted\"".into(), json!("line\nbreak, é"));
        clear.insert("name".into(), json!("Ana \"Nica\" Souza"));
        let mut payload = clear.clone();
        seal(
            personal("PatientRegistered").unwrap(),
            &mut payload,
            patient,
            &key,
        );
        assert_eq!(
            open("PatientRegistered", &payload, Some(&key)).unwrap(),
            clear
        );
    }

    #[test]
    fn an_erased_subjects_clear_fields_are_nulled() {
        let patient = Uuid::new_v4();
        let erased = erased("PatientRegistered", Value::Object(registered(patient)));
        assert_eq!(
            erased,
            json!({"patientId": patient, "name": null, "birthDate": null,
                   "documentNumber": null, "email": null})
        );
    }

    #[test]
    fn another_key_or_event_type_does_not_open() {
        let patient = Uuid::new_v4();
        let key = Key::new(&[5; 32]);
        let mut payload = registered(patient);
        seal(
            personal("PatientRegistered").unwrap(),
            &mut payload,
            patient,
            &key,
        );
        let wrong_key = open("PatientRegistered", &payload, Some(&Key::new(&[6; 32])));
        assert!(matches!(wrong_key, Err(OpenError::Unopenable(_))));
        // The same sealed member under another event type (AAD binds the type).
        let moved = open("PatientUpdated", &payload, Some(&key));
        assert!(matches!(moved, Err(OpenError::Unopenable(_))));
        // Or claiming another subject (AAD binds the subject).
        payload[SEALED]["subject"] = json!(Uuid::new_v4());
        let other_subject = open("PatientRegistered", &payload, Some(&key));
        assert!(matches!(other_subject, Err(OpenError::Unopenable(_))));
    }

    #[test]
    fn a_payload_with_nothing_personal_present_stays_as_it_is() {
        let patient = Uuid::new_v4();
        let clear = object(json!({"patientId": patient, "phone": null}));
        let mut payload = clear.clone();
        let personal = personal("PatientUpdated").unwrap();
        seal(personal, &mut payload, patient, &Key::new(&[5; 32]));
        assert_eq!(payload, clear);
        assert_eq!(open("PatientUpdated", &payload, None).unwrap(), clear);
    }

    #[test]
    fn a_stream_subject_is_taken_from_the_stream() {
        let patient = Uuid::new_v4();
        let personal = personal("ConsultationRecordUpdated").unwrap();
        let payload = object(json!({"recordId": Uuid::new_v4(), "content": "x"}));
        assert_eq!(subject_of(personal, &payload, Some(patient)), Some(patient));
        assert_eq!(subject_of(personal, &payload, None), None);
    }
}
