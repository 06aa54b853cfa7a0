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
/// That member's name as written in a payload.
const SEALED_NAME: &str = "\"sealed\"";

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
#[derive(Debug, Serialize)]
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

/// A stored payload with sealed fields: its text, split around the sealed member. Opening
/// splices the opened fields into that text, so that no reader pays for a tree of every value
/// built only to be written out again.
pub struct SealedPayload<'a> {
    event_type: &'a str,
    /// The payload's text before the sealed member (and its comma) and after it.
    clear: (&'a str, &'a str),
    sealed: SealedMember<'a>,
}

/// The sealed member, as stored.
#[derive(Deserialize)]
struct SealedMember<'a> {
    subject: Uuid,
    #[serde(borrow)]
    fields: Vec<Cow<'a, str>>,
    #[serde(borrow)]
    data: Cow<'a, str>,
}

impl<'a> SealedPayload<'a> {
    /// `payload` (JSON text) of `event_type`, if it has sealed fields.
    pub fn parse(event_type: &'a str, payload: &'a str) -> Result<Option<Self>, OpenError> {
        // Only an object can have been sealed; anything else reads as stored.
        if !payload.trim_start().starts_with('{') {
            return Ok(None);
        }
        let members: Members<'a> =
            serde_json::from_str(payload).map_err(|e| malformed(event_type, &e.to_string()))?;
        let Some(sealed) = members.sealed else {
            return Ok(None);
        };
        let clear = without_member(payload, sealed).ok_or_else(|| {
            malformed(event_type, "the sealed member is not where it was written")
        })?;
        let sealed = serde_json::from_str(sealed.get())
            .map_err(|e| malformed(event_type, &e.to_string()))?;
        Ok(Some(Self {
            event_type,
            clear,
            sealed,
        }))
    }

    /// The data subject whose key opens the sealed fields.
    pub fn subject(&self) -> Uuid {
        self.sealed.subject
    }

    /// The payload's text with its sealed fields back in place, opened with `key`; without
    /// one (the subject was erased) each of them null.
    pub fn open(&self, key: Option<&Key>) -> Result<String, OpenError> {
        let event_type = self.event_type;
        let Some(key) = key else {
            let nulls: Vec<String> = self
                .sealed
                .fields
                .iter()
                .map(|name| format!("{}:null", Value::from(name.as_ref())))
                .collect();
            return Ok(self.spliced(&nulls.join(",")));
        };
        let data = STANDARD
            .decode(self.sealed.data.as_bytes())
            .map_err(|e| malformed(event_type, &e.to_string()))?;
        let plaintext = key
            .open(&aad(event_type, self.sealed.subject), data)
            .map_err(|_| OpenError::Unopenable(event_type.to_owned()))?;
        // What was sealed is an object [`seal`] wrote, and the cipher vouches that it is
        // unaltered: its members go in as they are.
        let members = std::str::from_utf8(&plaintext)
            .ok()
            .and_then(|object| object.trim().strip_prefix('{')?.strip_suffix('}'))
            .ok_or_else(|| malformed(event_type, "the sealed fields are not an object"))?;
        Ok(self.spliced(members))
    }

    /// The clear text with `members` (comma-separated, possibly none) first in its object.
    fn spliced(&self, members: &str) -> String {
        let (before, after) = self.clear;
        let mut text = String::with_capacity(before.len() + members.len() + after.len() + 1);
        // `before` holds at least the object's opening brace.
        let (brace, rest) = before.split_at(before.find('{').map_or(0, |at| at + 1));
        text.push_str(brace);
        let members = members.trim();
        if !members.is_empty() {
            text.push_str(members);
            let empty = rest.trim().is_empty() && after.trim_start().starts_with('}');
            if !empty {
                text.push(',');
            }
        }
        text.push_str(rest);
        text.push_str(after);
        text
    }
}

/// A payload's top level as far as opening needs it: every member checked to be JSON, the
/// sealed one kept as its text.
struct Members<'a> {
    sealed: Option<&'a RawValue>,
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Members<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut sealed = None;
                while let Some(IsSealed(is_sealed)) = map.next_key()? {
                    if is_sealed {
                        if sealed.is_some() {
                            return Err(serde::de::Error::duplicate_field(SEALED));
                        }
                        sealed = Some(map.next_value()?);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(Members { sealed })
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// Whether a member's name is [`SEALED`], read without copying it.
struct IsSealed(bool);

impl<'de> Deserialize<'de> for IsSealed {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = IsSealed;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a member name")
            }

            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<IsSealed, E> {
                Ok(IsSealed(name == SEALED))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// `payload` without the member whose value is the slice `value` of it: the text before the
/// member and after it, one comma between neighbours kept. `None` unless the member is
/// written `"sealed": <value>` (as [`seal`] writes it, whatever the spacing).
fn without_member<'a>(payload: &'a str, value: &'a RawValue) -> Option<(&'a str, &'a str)> {
    let value = value.get();
    let start = (value.as_ptr() as usize).checked_sub(payload.as_ptr() as usize)?;
    let end = start + value.len();
    let key = payload
        .get(..start)?
        .trim_end()
        .strip_suffix(':')?
        .trim_end()
        .strip_suffix(SEALED_NAME)?;
    let after = payload.get(end..)?;
    match key.trim_end().strip_suffix(',') {
        // A member before it: its comma goes with it.
        Some(before) => Some((before, after)),
        // The first member: the comma after it goes, if another follows.
        None => Some((key, after.trim_start().strip_prefix(',').unwrap_or(after))),
    }
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
            Some(sealed) => sealed.open(key)?,
            None => text,
        };
        Ok(object(serde_json::from_str(&opened).unwrap()))
    }

    /// `clear`, a PatientRegistered payload, as stored: sealed under `key` of `patient`.
    fn sealed_registration(
        clear: &Map<String, Value>,
        patient: Uuid,
        key: &Key,
    ) -> Map<String, Value> {
        let mut payload = clear.clone();
        seal(
            personal("PatientRegistered").unwrap(),
            &mut payload,
            patient,
            key,
        );
        payload
    }

    /// How `registered(patient)` reads once the patient is erased.
    fn registered_erased(patient: Uuid) -> Value {
        json!({"patientId": patient, "name": null, "birthDate": null, "documentNumber": null,
               "email": null})
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
        let payload = sealed_registration(&registered(patient), patient, &Key::new(&[5; 32]));
        assert_eq!(
            Value::Object(open("PatientRegistered", &payload, None).unwrap()),
            registered_erased(patient)
        );
    }

    #[test]
    fn the_sealed_member_opens_wherever_it_stands_and_however_spaced() {
        let patient = Uuid::new_v4();
        let key = Key::new(&[5; 32]);
        let personal_fields = ["birthDate", "documentNumber", "name"];
        let mut clear = registered(patient);
        // Escapes in names and values, sealed or clear, come back as they were.
        clear.insert("note \"quoted\"".into(), json!("line\nbreak, é"));
        clear.insert("name".into(), json!("Ana \"Nica\" Souza"));
        let payload = sealed_registration(&clear, patient, &key);
        let sealed = payload[SEALED].to_string();
        let mut others = payload.clone();
        others.remove(SEALED);
        let others = Value::Object(others).to_string();
        let compact = Value::Object(payload.clone()).to_string();
        let pretty = serde_json::to_string_pretty(&payload).unwrap();
        let first = format!(r#"{{ "sealed" : {sealed} , {}"#, &others[1..]);
        let mut after_email = payload.clone();
        after_email.remove(SEALED);
        after_email.remove("email");
        let after_email = Value::Object(after_email).to_string();
        let middle = format!(r#"{{"email":null, "sealed":{sealed},{}"#, &after_email[1..]);
        let alone = format!(r#"{{"sealed":{sealed}}}"#);
        let alone_clear = clear
            .iter()
            .filter(|(name, _)| personal_fields.contains(&name.as_str()));
        let alone_clear = Value::Object(alone_clear.map(|(n, v)| (n.clone(), v.clone())).collect());
        for (text, expected) in [
            (compact.as_str(), Value::Object(clear.clone())),
            (pretty.as_str(), Value::Object(clear.clone())),
            (first.as_str(), Value::Object(clear.clone())),
            (middle.as_str(), Value::Object(clear.clone())),
            (alone.as_str(), alone_clear),
        ] {
            let parsed = SealedPayload::parse("PatientRegistered", text)
                .unwrap()
                .unwrap();
            let opened: Value = serde_json::from_str(&parsed.open(Some(&key)).unwrap()).unwrap();
            assert_eq!(opened, expected, "{text}");
            let erased: Value = serde_json::from_str(&parsed.open(None).unwrap()).unwrap();
            let nulls = expected.as_object().unwrap().iter().map(|(name, value)| {
                let sealed = personal_fields.contains(&name.as_str());
                (
                    name.clone(),
                    if sealed { Value::Null } else { value.clone() },
                )
            });
            assert_eq!(erased, Value::Object(nulls.collect()), "{text}");
        }
    }

    #[test]
    fn a_payload_that_is_no_object_reads_as_stored_and_two_sealed_members_do_not_open() {
        assert!(
            SealedPayload::parse("PatientRegistered", " [1, 2]")
                .unwrap()
                .is_none()
        );
        let sealed = r#"{"subject":"00000000-0000-0000-0000-000000000000","fields":[],"data":""}"#;
        let twice = format!(r#"{{"sealed":{sealed},"sealed":{sealed}}}"#);
        assert!(matches!(
            SealedPayload::parse("PatientRegistered", &twice),
            Err(OpenError::Malformed { .. })
        ));
    }

    #[test]
    fn a_sealed_member_written_otherwise_does_not_open() {
        let text = r#"{"patientId":"x","se\u0061led":{"subject":"00000000-0000-0000-0000-000000000000","fields":[],"data":""}}"#;
        assert!(matches!(
            SealedPayload::parse("PatientRegistered", text),
            Err(OpenError::Malformed { .. })
        ));
    }

    #[test]
    fn an_erased_subjects_clear_fields_are_nulled() {
        let patient = Uuid::new_v4();
        let erased = erased("PatientRegistered", Value::Object(registered(patient)));
        assert_eq!(erased, registered_erased(patient));
    }

    #[test]
    fn another_key_or_event_type_does_not_open() {
        let patient = Uuid::new_v4();
        let key = Key::new(&[5; 32]);
        let mut payload = sealed_registration(&registered(patient), patient, &key);
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
