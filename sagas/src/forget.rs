//! Erasure's reach into the broker: the dead letters that carry an erased person's personal
//! data are dropped. The store forgot that data with the person's key; a dead letter was
//! published before, in clear, and would otherwise keep showing it in the console and
//! `hap dlq`.
//!
//! It runs as a saga step of the person's own service, triggered by the erasure's message, so
//! it survives a restart and runs once in the cluster. It looks in the saga queues every
//! instance shares and in the projector queues of every instance that records itself in
//! `processes`: an instance that has not run since the timer's housekeeping forgot it is not
//! reached (the README says so).

use commands::CommandError;
use domain::personal;
use domain::saga::Person;
use eventstore::EventStore;
use messaging::dlq::{self, Action, DeadLetter};
use messaging::{AmqpUrls, QueueNames};

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
/// that carries personal fields which name the person, or one of their consultations (a
/// record's update names only its consultation). How many it dropped.
pub async fn forget_dead_letters<S: SagaStore>(
    dead_letters: &DeadLetters,
    store: &S,
    trigger: &Trigger,
    person: Person,
) -> Result<usize, StepError> {
    let person_id = match person {
        Person::Patient(id) => id.as_uuid(),
        Person::Physician(id) => id.as_uuid(),
    };
    let mut needles = vec![person_id.to_string()];
    let consultations = store
        .consultations_of(&trigger.tenant_id, person)
        .await
        .map_err(|e| StepError::Transient(CommandError::Store(e)))?;
    needles.extend(consultations.iter().map(ToString::to_string));
    let names_them = |letter: &DeadLetter| {
        let personal = letter
            .event_type
            .as_deref()
            .is_some_and(|t| personal::personal(t).is_some());
        let body = String::from_utf8_lossy(&letter.body);
        personal
            && letter.tenant_id.as_deref() == Some(trigger.tenant_id.as_str())
            && needles.iter().any(|needle| body.contains(needle.as_str()))
    };
    let mut dropped = 0;
    for queue in queues(dead_letters).await? {
        dropped += dlq::resolve(&dead_letters.amqp_url, &queue, Action::Discard, names_them)
            .await
            .map_err(StepError::Broker)?;
    }
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
