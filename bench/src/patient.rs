//! The patient the benchmarks register, the same in every run that registers one: as a
//! request body and as the event HAP stores for it.

use std::fmt::Display;

use chrono::NaiveDate;
use domain::Event;
use domain::event::PatientRegistered;
use domain::ids::PatientId;
use serde_json::{Value, json};

/// One patient to register: unique per `id` where it has to be (document number, e-mail),
/// and the same shape in every run so that all store events of the same size.
pub struct BenchPatient {
    name: String,
    birth_date: NaiveDate,
    document_number: String,
    email: String,
    phone: String,
}

impl BenchPatient {
    /// Patient `id` of a run whose document numbers start with `prefix` (`bench-7`).
    pub fn new(prefix: &str, id: impl Display) -> Self {
        Self {
            name: format!("Bench Patient {id}"),
            // A constant, valid calendar date.
            birth_date: NaiveDate::from_ymd_opt(1980, 5, 17).expect("1980-05-17 is a date"),
            document_number: format!("{prefix}-{id}"),
            email: format!("{prefix}-{id}@example.org"),
            phone: "+55 11 5555-0100".into(),
        }
    }

    /// The body of `POST /patients`.
    pub fn request(&self) -> Value {
        json!({
            "name": self.name,
            "birthDate": self.birth_date,
            "documentNumber": self.document_number,
            "email": self.email,
            "phone": self.phone,
        })
    }

    /// The event HAP stores when it registers this patient as `id`.
    pub fn event(&self, id: PatientId) -> Event {
        Event::PatientRegistered(PatientRegistered {
            patient_id: id,
            name: Some(self.name.clone()),
            birth_date: Some(self.birth_date),
            document_number: Some(self.document_number.clone()),
            email: Some(self.email.clone()),
            phone: Some(self.phone.clone()),
        })
    }

    /// The payload of [`BenchPatient::event`], built by the domain's own serialisation so that
    /// a raw run writes exactly the bytes HAP would.
    pub fn event_payload(&self, id: PatientId) -> Value {
        self.event(id).into_parts().1
    }
}
