//! What the saga steps look up in the store besides aggregates' streams, as a trait over
//! PostgreSQL and the store in memory: a person's consultations (for the deactivation
//! follow-up) and what is stored of a consultation's scheduling (for scheduling's last step).
//! Both read events, the saga's only state, through partial indexes of their own.

use std::future::Future;

use domain::Event;
use domain::event::ConsultationSchedulingFailed;
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

/// The types of a consultation's stored answers and failure. The event types are written out,
/// not bound, so that the planner can use the partial index they define
/// (`events_consultation_answers_idx`) in every plan; a test holds them to [`Confirmation`]'s.
const ANSWERS: &str = "select event_type from events
  where event_type in ('PatientValidatedForConsultation', 'PhysicianAvailabilityConfirmed',
                       'ConsultationSchedulingFailed')
    and tenant_id = $1 and (payload ->> 'consultationId') = $2";

/// What is stored of a consultation's scheduling, as committed when asked: the confirmations
/// that have arrived, and whether it failed (a refusal, its deadline, the follow-up).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answers {
    pub confirmations: Vec<Confirmation>,
    pub failed: bool,
}

impl Answers {
    /// Both sides confirmed.
    pub fn confirmed(&self) -> bool {
        Confirmation::ALL
            .iter()
            .all(|c| self.confirmations.contains(c))
    }

    /// The slot is held for it (unless released since, which only a failure does).
    pub fn slot_held(&self) -> bool {
        self.confirmations.contains(&Confirmation::SlotHeld)
    }

    fn with(mut self, event_type: &str) -> Self {
        match Confirmation::stored_as(event_type) {
            Some(confirmation) => self.confirmations.push(confirmation),
            None => self.failed |= event_type == ConsultationSchedulingFailed::EVENT_TYPE,
        }
        self
    }
}

/// What the saga steps need of a store besides what the pipeline needs.
pub trait SagaStore: Store {
    /// The consultations ever requested for `person`, in `tenant`.
    fn consultations_of(
        &self,
        tenant: &str,
        person: Person,
    ) -> impl Future<Output = Result<Vec<Uuid>, sqlx::Error>> + Send;

    /// What is stored of `consultation`'s scheduling, in `tenant`.
    fn answers(
        &self,
        tenant: &str,
        consultation: ConsultationId,
    ) -> impl Future<Output = Result<Answers, sqlx::Error>> + Send;
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

    async fn answers(
        &self,
        tenant: &str,
        consultation: ConsultationId,
    ) -> Result<Answers, sqlx::Error> {
        let types: Vec<String> = sqlx::query_scalar(ANSWERS)
            .bind(tenant)
            .bind(consultation.to_string())
            .fetch_all(self.pool())
            .await?;
        Ok(types.iter().fold(Answers::default(), |a, t| a.with(t)))
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

    async fn answers(
        &self,
        tenant: &str,
        consultation: ConsultationId,
    ) -> Result<Answers, sqlx::Error> {
        let stored = in_tenant(self, tenant).filter_map(|(_, event)| {
            let about = match &event {
                Event::ConsultationSchedulingFailed(e) => e.consultation_id,
                other => Confirmation::given_by(other)?.0,
            };
            // The type read today, as the SQL lookup's partial index names them.
            (about == consultation).then_some(event.event_type())
        });
        Ok(stored.fold(Answers::default(), Answers::with))
    }
}

/// The events in memory of `tenant`, each with what it decodes to (those that do not decode
/// are left out: no lookup is about them).
fn in_tenant<'a>(
    store: &MemoryStore,
    tenant: &'a str,
) -> impl Iterator<Item = (RecordedEvent, Event)> + 'a {
    store
        .events()
        .into_iter()
        .filter_map(move |recorded| {
            if recorded.tenant_id != tenant {
                return None;
            }
            let events = domain::versions::decode(
                &recorded.event_type,
                recorded.schema_version,
                recorded.payload.get(),
            );
            Some(
                events
                    .ok()?
                    .into_iter()
                    .map(move |event| (recorded.clone(), event)),
            )
        })
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answers_query_names_every_confirmation_and_the_failure() {
        let types = Confirmation::ALL.map(Confirmation::event_type);
        for event_type in types
            .iter()
            .chain([&ConsultationSchedulingFailed::EVENT_TYPE])
        {
            let quoted = format!("'{event_type}'");
            assert!(ANSWERS.contains(&quoted), "{quoted}");
        }
    }

    #[test]
    fn answers_fold_from_event_types() {
        let answers = [
            "PhysicianAvailabilityConfirmed",
            "ConsultationSchedulingFailed",
        ]
        .into_iter()
        .fold(Answers::default(), Answers::with);
        assert!(answers.slot_held() && answers.failed && !answers.confirmed());
        let answers = [
            "PhysicianAvailabilityConfirmed",
            "PatientValidatedForConsultation",
        ]
        .into_iter()
        .fold(Answers::default(), Answers::with);
        assert!(answers.confirmed() && !answers.failed);
    }
}
