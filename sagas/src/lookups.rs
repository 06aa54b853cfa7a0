//! What the saga steps look up in the store besides aggregates' streams, as a trait over
//! PostgreSQL and the store in memory: a person's consultations (for the deactivation
//! follow-up) and the confirmations stored for a consultation (for scheduling's last step).
//! Both read events, the saga's only state, through partial indexes of their own.

use std::future::Future;

use domain::Event;
use domain::ids::ConsultationId;
use domain::saga::{Confirmation, Person};
use eventstore::{EventStore, MemoryStore, RecordedEvent, Store};
use uuid::Uuid;

/// The consultations ever requested for a patient, in the trigger's tenant.
const OF_PATIENT: &str = "select stream_id from events
  where event_type = 'ConsultationSchedulingStarted'
    and tenant_id = $1 and (payload ->> 'patientId') = $2";

/// The same for a physician (each lookup has a partial index of its own).
const OF_PHYSICIAN: &str = "select stream_id from events
  where event_type = 'ConsultationSchedulingStarted'
    and tenant_id = $1 and (payload ->> 'physicianId') = $2";

/// The types of the confirmations stored for a consultation. The event types are written out,
/// not bound, so that the planner can use the partial index they define
/// (`events_consultation_confirmations_idx`) in every plan; a test holds them to
/// [`Confirmation::event_type`].
const CONFIRMATIONS: &str = "select event_type from events
  where event_type in ('PatientValidatedForConsultation', 'PhysicianAvailabilityConfirmed')
    and tenant_id = $1 and (payload ->> 'consultationId') = $2";

/// What the saga steps need of a store besides what the pipeline needs.
pub trait SagaStore: Store {
    /// The consultations ever requested for `person`, in `tenant`.
    fn consultations_of(
        &self,
        tenant: &str,
        person: Person,
    ) -> impl Future<Output = Result<Vec<Uuid>, sqlx::Error>> + Send;

    /// The confirmations stored for `consultation`, in `tenant`, as committed when asked.
    fn confirmations(
        &self,
        tenant: &str,
        consultation: ConsultationId,
    ) -> impl Future<Output = Result<Vec<Confirmation>, sqlx::Error>> + Send;
}

impl SagaStore for EventStore {
    async fn consultations_of(
        &self,
        tenant: &str,
        person: Person,
    ) -> Result<Vec<Uuid>, sqlx::Error> {
        let (query, id) = match person {
            Person::Patient(id) => (OF_PATIENT, id.as_uuid()),
            Person::Physician(id) => (OF_PHYSICIAN, id.as_uuid()),
        };
        sqlx::query_scalar(query)
            .bind(tenant)
            .bind(id.to_string())
            .fetch_all(self.pool())
            .await
    }

    async fn confirmations(
        &self,
        tenant: &str,
        consultation: ConsultationId,
    ) -> Result<Vec<Confirmation>, sqlx::Error> {
        let types: Vec<String> = sqlx::query_scalar(CONFIRMATIONS)
            .bind(tenant)
            .bind(consultation.to_string())
            .fetch_all(self.pool())
            .await?;
        Ok(types
            .iter()
            .filter_map(|t| Confirmation::stored_as(t))
            .collect())
    }
}

/// The same lookups over the events in memory.
impl SagaStore for MemoryStore {
    async fn consultations_of(
        &self,
        tenant: &str,
        person: Person,
    ) -> Result<Vec<Uuid>, sqlx::Error> {
        let requested = in_tenant(self, tenant).filter_map(|(recorded, event)| {
            let Event::ConsultationSchedulingStarted(started) = event else {
                return None;
            };
            let of = match person {
                Person::Patient(id) => started.patient_id == id,
                Person::Physician(id) => started.physician_id == id,
            };
            of.then_some(recorded.stream_id)
        });
        Ok(requested.collect())
    }

    async fn confirmations(
        &self,
        tenant: &str,
        consultation: ConsultationId,
    ) -> Result<Vec<Confirmation>, sqlx::Error> {
        let stored = in_tenant(self, tenant)
            .filter_map(|(_, event)| Confirmation::given_by(&event))
            .filter(|(id, _)| *id == consultation)
            .map(|(_, confirmation)| confirmation);
        Ok(stored.collect())
    }
}

/// The events in memory of `tenant`, each with what it decodes to (those that do not decode
/// are left out: no lookup is about them).
fn in_tenant<'a>(
    store: &MemoryStore,
    tenant: &'a str,
) -> impl Iterator<Item = (RecordedEvent, Event)> + 'a {
    store.events().into_iter().filter_map(move |recorded| {
        if recorded.tenant_id != tenant {
            return None;
        }
        let event = Event::from_parts(&recorded.event_type, recorded.payload.get()).ok()?;
        Some((recorded, event))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_confirmations_query_names_every_confirmation() {
        for confirmation in Confirmation::ALL {
            let quoted = format!("'{}'", confirmation.event_type());
            assert!(CONFIRMATIONS.contains(&quoted), "{quoted}");
        }
    }
}
