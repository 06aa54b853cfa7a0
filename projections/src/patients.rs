//! The patients projection: one row per patient, as `GET /patients` shows it.

use chrono::NaiveDate;
use domain::Event;
use sqlx::postgres::PgArguments;

use crate::copy::CopyValue;
use crate::projector::{bind, column};
use crate::registry::Registry;

pub struct Patients;

/// What a patient's row holds besides the columns every registry has.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Details {
    birth_date: Option<NaiveDate>,
    document_number: Option<String>,
    email: Option<String>,
    phone: Option<String>,
}

impl Registry for Patients {
    type Details = Details;
    const TABLE: &'static str = crate::PATIENTS;
    const KIND: &'static str = "patient";
    const DETAILS: &'static [(&'static str, &'static str)] = &[
        ("birth_date", "date"),
        ("document_number", "text"),
        ("email", "text"),
        ("phone", "text"),
    ];

    fn registered(event: &Event) -> Option<(Option<String>, Details)> {
        let Event::PatientRegistered(e) = event else {
            return None;
        };
        let details = Details {
            birth_date: e.birth_date,
            document_number: e.document_number.clone(),
            email: e.email.clone(),
            phone: e.phone.clone(),
        };
        Some((e.name.clone(), details))
    }

    fn update(event: &Event, name: &mut Option<String>, details: &mut Details) {
        let Event::PatientUpdated(e) = event else {
            return;
        };
        if let Some(new) = &e.name {
            *name = Some(new.clone());
        }
        if let Some(email) = &e.email {
            details.email = Some(email.clone());
        }
        if let Some(phone) = &e.phone {
            details.phone = Some(phone.clone());
        }
    }

    fn deactivates(event: &Event) -> bool {
        matches!(event, Event::PatientDeactivated(_))
    }

    fn erases(event: &Event) -> bool {
        matches!(event, Event::PatientErased(_))
    }

    fn erase(details: &mut Details) {
        *details = Details {
            birth_date: None,
            document_number: None,
            email: None,
            phone: None,
        };
    }

    /// A patient's records are sealed under the patient's key, and go with it.
    const ERASES_ELSEWHERE: Option<(&'static str, &'static str)> = Some((
        "update records set content = null
          where patient_id = any($1) and content is not null
         returning id",
        "record",
    ));

    fn values(d: &Details) -> Vec<&dyn CopyValue> {
        vec![&d.birth_date, &d.document_number, &d.email, &d.phone]
    }

    fn bind(arguments: &mut PgArguments, rows: &[(&Details, bool)]) -> Result<(), sqlx::Error> {
        bind(arguments, column(rows, |d| d.birth_date))?;
        bind(arguments, column(rows, |d| d.document_number.as_deref()))?;
        bind(arguments, column(rows, |d| d.email.as_deref()))?;
        bind(arguments, column(rows, |d| d.phone.as_deref()))
    }
}
