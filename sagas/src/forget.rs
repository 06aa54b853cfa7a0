//! Erasure's reach into the broker: the dead letters that carry an erased person's personal
//! data are dropped. The store forgot that data with the person's key; a dead letter was
//! published before, in clear, and would otherwise keep showing it in the console and
//! `hap dlq`.
//!
//! It runs as a saga step of the person's own service, triggered by the erasure's message, so
//! it survives a restart; it may run twice (from the local feed, then from the broker's copy in
//! another process), and a second sweep finds nothing more to drop. It looks in the saga queues every
//! instance shares and in the projector queues of every instance that records itself in
//! `processes`: an instance that has not run since the timer's housekeeping forgot it is not
//! reached (the README says so).

use commands::CommandError;
use domain::personal::{self, Subject};
use domain::saga::Person;
use eventstore::EventStore;
use messaging::dlq::{self, Action, DeadLetter};
use messaging::{AmqpUrls, EventMessage, QueueNames};
use serde_json::Value;

use crate::lookups::SagaStore;
use crate::send::{StepError, Trigger};

/// Where dead letters are: the broker and its prefix, and the store that lists the instances.
#[derive(Clone)]
pub struct DeadLetters {
    pub amqp_url: AmqpUrls,
    pub prefix: String,
    pub store: EventStore,
}

/// Drops `person`'s dead letters with personal data, in the trigger's tenant: those of a type
/// whose personal fields are the person's (the payload names them as its subject), and, for a
/// patient, the record updates of their consultations (whose subject is their book's patient,
/// named nowhere in the payload). Someone else's data in a letter that merely mentions the
/// person (a record naming its physician) stays. How many it dropped.
pub async fn forget_dead_letters<S: SagaStore>(
    dead_letters: &DeadLetters,
    store: &S,
    trigger: &Trigger,
    person: Person,
) -> Result<usize, StepError> {
    let consultations: Vec<String> = match person {
        Person::Patient(_) => store
            .consultations_of(&trigger.tenant_id, person)
            .await
            .map_err(|e| StepError::Transient(CommandError::Store(e)))?
            .iter()
            .map(ToString::to_string)
            .collect(),
        Person::Physician(_) => vec![],
    };
    let person_id = match person {
        Person::Patient(id) => id.as_uuid(),
        Person::Physician(id) => id.as_uuid(),
    }
    .to_string();
    let theirs = |letter: &DeadLetter| {
        let Ok(message) = EventMessage::read(&letter.body) else {
            return false;
        };
        let Some(personal) = personal::personal(&message.event_type) else {
            return false;
        };
        let Ok(payload) = serde_json::from_str::<Value>(message.payload.get()) else {
            return false;
        };
        let named = |field: &str| payload[field].as_str();
        let whose = match personal.subject {
            Subject::Field(field) => named(field) == Some(person_id.as_str()),
            Subject::Stream => named("consultationId")
                .is_some_and(|c| consultations.iter().any(|known| known == c)),
        };
        message.tenant_id == trigger.tenant_id.as_str() && whose
    };
    let queues = queues(dead_letters).await?;
    let dropped = dlq::resolve_each(&dead_letters.amqp_url, &queues, Action::Discard, theirs)
        .await
        .map_err(StepError::Broker)?;
    if dropped > 0 {
        tracing::info!(dropped, "dropped the dead letters of an erased person");
    }
    Ok(dropped)
}

/// The main queues whose dead letters may hold personal data: every service's shared saga
/// queue, and every service's projector queue of each instance that runs projectors.
async fn queues(dead_letters: &DeadLetters) -> Result<Vec<String>, StepError> {
    let processes = dead_letters
        .store
        .processes()
        .await
        .map_err(|e| StepError::Transient(CommandError::Store(e)))?;
    let mut instances: Vec<String> = processes
        .into_iter()
        .filter(|p| p.info.roles.iter().any(|role| role == "projector"))
        .map(|p| p.info.instance)
        .collect();
    instances.sort_unstable();
    instances.dedup();
    let prefix = &dead_letters.prefix;
    let services = domain::service::Service::ALL.map(|s| s.name());
    let shared = services.map(|service| QueueNames::shared(prefix, service).main);
    let of_instances = instances.iter().flat_map(|instance| {
        services.map(|service| QueueNames::new(prefix, service, instance).main)
    });
    Ok(shared.into_iter().chain(of_instances).collect())
}
