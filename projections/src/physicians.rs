//! The physicians projection: one row per physician, as `GET /physicians` shows it. The
//! physicians queue also carries the day-schedule events (slots held and released), which
//! belong to other streams and change no row here.

use domain::Event;
use sqlx::postgres::PgArguments;

use crate::copy::CopyValue;
use crate::projector::{bind, column};
use crate::registry::Registry;

pub struct Physicians;

/// What a physician's row holds besides the columns every registry has.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Details {
    specialty: String,
    license_number: Option<String>,
}

impl Registry for Physicians {
    type Details = Details;
    const TABLE: &'static str = crate::PHYSICIANS;
    const KIND: &'static str = "physician";
    const DETAILS: &'static [(&'static str, &'static str)] =
        &[("specialty", "text"), ("license_number", "text")];

    fn registered(event: &Event) -> Option<(Option<String>, Details)> {
        let Event::PhysicianRegistered(e) = event else {
            return None;
        };
        let details = Details {
            specialty: e.specialty.clone(),
            license_number: e.license_number.clone(),
        };
        Some((e.name.clone(), details))
    }

    fn update(event: &Event, name: &mut Option<String>, details: &mut Details) {
        let Event::PhysicianUpdated(e) = event else {
            return;
        };
        if let Some(new) = &e.name {
            *name = Some(new.clone());
        }
        if let Some(specialty) = &e.specialty {
            details.specialty.clone_from(specialty);
        }
    }

    fn deactivates(event: &Event) -> bool {
        matches!(event, Event::PhysicianDeactivated(_))
    }

    fn erases(event: &Event) -> bool {
        matches!(event, Event::PhysicianErased(_))
    }

    /// The specialty is the clinic's, not the physician's personal data: it stays.
    fn erase(details: &mut Details) {
        details.license_number = None;
    }

    fn values(d: &Details) -> Vec<&dyn CopyValue> {
        vec![&d.specialty, &d.license_number]
    }

    fn bind(arguments: &mut PgArguments, rows: &[(&Details, bool)]) -> Result<(), sqlx::Error> {
        bind(arguments, column(rows, |d| d.specialty.as_str()))?;
        bind(arguments, column(rows, |d| d.license_number.as_deref()))
    }
}
