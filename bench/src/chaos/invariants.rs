//! The books, checked once the system is quiet: what must hold whatever was broken on the
//! way. The event store is the truth; each check counts what it examined and what breaks it,
//! and keeps a line for each breach (the ids, so that a finding can be followed in the store).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use messaging::AmqpUrls;
use sqlx::PgPool;
use uuid::Uuid;

use super::ledger::{Ledger, Stream};
use super::processes::{Hap, INSTANCES};
use super::settle::consumed_queues;
use super::store::{self, Consultation, Stored, TERMINAL};

/// One invariant's result.
#[derive(Debug)]
pub struct Check {
    pub name: String,
    /// What it examined (commands, consultations, queues…).
    pub checked: usize,
    /// One line per breach.
    pub breaches: Vec<String>,
}

impl Check {
    fn new(name: impl Into<String>, checked: usize, breaches: Vec<String>) -> Self {
        Self {
            name: name.into(),
            checked,
            breaches,
        }
    }

    pub fn holds(&self) -> bool {
        self.breaches.is_empty()
    }
}

/// Everything the checks need besides the store.
pub struct Context<'a> {
    pub pool: &'a PgPool,
    pub ledger: &'a Ledger,
    pub hap: &'a Hap,
    pub amqp_url: &'a AmqpUrls,
    pub prefix: &'a str,
    /// How many processes ran, and those that exited without being killed.
    pub processes: usize,
    pub exits: &'a [String],
}

/// Runs every check.
pub async fn check(context: &Context<'_>) -> anyhow::Result<Vec<Check>> {
    let pool = context.pool;
    let consultations = store::consultations(pool).await?;
    let held = store::held_slots(pool).await?;
    let deactivations = store::deactivations(pool).await?;
    let mut checks = vec![
        accepted_commands_stored(pool, context.ledger).await?,
        Check::new(
            "every request's outcome is known",
            context
                .ledger
                .by_kind
                .values()
                .map(|k| k.requests as usize)
                .sum(),
            context
                .ledger
                .unanswered
                .iter()
                .map(|u| {
                    format!(
                        "{} {} (key {}): no answer",
                        u.call.method,
                        u.call.path,
                        u.call.key.as_deref().unwrap_or("-")
                    )
                })
                .collect(),
        ),
        Check::new(
            "a request repeated with its key gets the first answer",
            context.ledger.replays as usize + context.ledger.replay_mismatches.len(),
            context.ledger.replay_mismatches.clone(),
        ),
        at_rest(&consultations),
        no_overlaps(&consultations),
        slots_match(&consultations, &held),
        Check::new(
            "no consultation is scheduled twice",
            consultations.len(),
            consultations
                .iter()
                .filter(|c| c.scheduled > 1)
                .map(|c| {
                    format!(
                        "consultation {} has {} ConsultationScheduled",
                        c.id, c.scheduled
                    )
                })
                .collect(),
        ),
        Check::new(
            "no consultation is both scheduled and failed",
            consultations.len(),
            consultations
                .iter()
                .filter(|c| c.scheduled > 0 && c.failed > 0)
                .map(|c| {
                    format!(
                        "consultation {} ({}) was scheduled and failed ({})",
                        c.id,
                        c.tenant,
                        c.failure.as_deref().unwrap_or("-")
                    )
                })
                .collect(),
        ),
        deadlines_not_overdue(pool).await?,
        no_deactivated_person_scheduled(pool, &consultations, &deactivations).await?,
        one_tenant_per_stream(pool).await?,
    ];
    for instance in INSTANCES {
        checks.push(read_model_rebuilds_equal(context.hap, instance).await?);
    }
    checks.push(dead_letters(context.amqp_url, context.prefix).await?);
    checks.push(Check::new(
        "no process exited by itself",
        context.processes,
        context.exits.to_vec(),
    ));
    Ok(checks)
}

/// Every accepted command's event is in the store, in the command's tenant: at the answered
/// version for a creation; for a command that may have changed nothing, an event stands at
/// the answered version and one of the command's type at or below it.
async fn accepted_commands_stored(pool: &PgPool, ledger: &Ledger) -> anyhow::Result<Check> {
    let own: BTreeSet<Uuid> = ledger
        .accepted
        .iter()
        .filter(|a| a.kind.stream() == Stream::Own)
        .map(|a| a.id)
        .collect();
    let streams = store::streams(pool, &own).await?;
    let records = store::record_events(pool).await?;
    let mut breaches = vec![];
    for accepted in &ledger.accepted {
        let (events, at_version) = match accepted.kind.stream() {
            Stream::Own => {
                let events = streams.get(&accepted.id).map_or(&[][..], Vec::as_slice);
                let at = events.iter().find(|e| e.version == accepted.version);
                (events, at)
            }
            // A record's events stand in its book at their own versions; the answered
            // version is the book's, which only the record's own event is sure to have.
            Stream::RecordBook => {
                let events = records.get(&accepted.id).map_or(&[][..], Vec::as_slice);
                let at = events.iter().find(|e| e.version == accepted.version);
                (events, at)
            }
        };
        let wanted = accepted.kind.event_type();
        let found = if accepted.kind.creates() || accepted.kind.stream() == Stream::RecordBook {
            at_version.filter(|e| e.event_type == wanted)
        } else {
            at_version.and(
                events
                    .iter()
                    .find(|e: &&Stored| e.event_type == wanted && e.version <= accepted.version),
            )
        };
        match found {
            Some(event) if event.tenant == accepted.tenant => {}
            Some(event) => breaches.push(format!(
                "{} {} v{} ({}): stored in tenant {} instead of {}",
                accepted.kind.route(),
                accepted.id,
                accepted.version,
                accepted.correlation,
                event.tenant,
                accepted.tenant
            )),
            None => breaches.push(format!(
                "{} {} v{} ({}): no {wanted} at that version in the store",
                accepted.kind.route(),
                accepted.id,
                accepted.version,
                accepted.correlation
            )),
        }
    }
    Ok(Check::new(
        "every accepted command's event is in the store",
        ledger.accepted.len(),
        breaches,
    ))
}

fn at_rest(consultations: &[Consultation]) -> Check {
    let names: Vec<&str> = TERMINAL.iter().map(|s| s.as_str()).collect();
    Check::new(
        format!("every consultation is at rest ({})", names.join(", ")),
        consultations.len(),
        consultations
            .iter()
            .filter(|c| !TERMINAL.contains(&c.status))
            .map(|c| {
                format!(
                    "consultation {} ({}) is {}",
                    c.id,
                    c.tenant,
                    c.status.as_str()
                )
            })
            .collect(),
    )
}

fn no_overlaps(consultations: &[Consultation]) -> Check {
    let mut by_physician: BTreeMap<Uuid, Vec<&Consultation>> = BTreeMap::new();
    for c in consultations.iter().filter(|c| c.holds_slot()) {
        by_physician.entry(c.physician).or_default().push(c);
    }
    let mut breaches = vec![];
    for (physician, mut held) in by_physician {
        held.sort_by_key(|c| c.starts_at);
        for pair in held.windows(2) {
            if pair[1].starts_at < pair[0].ends_at {
                breaches.push(format!(
                    "physician {physician}: consultations {} and {} overlap at {}",
                    pair[0].id, pair[1].id, pair[1].starts_at
                ));
            }
        }
    }
    Check::new(
        "no physician has overlapping scheduled consultations",
        consultations.iter().filter(|c| c.holds_slot()).count(),
        breaches,
    )
}

/// The slots the physicians' days hold are exactly the scheduled (or done) consultations',
/// one each.
fn slots_match(consultations: &[Consultation], held: &BTreeMap<Uuid, u32>) -> Check {
    let holding: BTreeMap<Uuid, &Consultation> = consultations
        .iter()
        .filter(|c| c.holds_slot())
        .map(|c| (c.id, c))
        .collect();
    let status: BTreeMap<Uuid, &str> = consultations
        .iter()
        .map(|c| (c.id, c.status.as_str()))
        .collect();
    let mut breaches = vec![];
    for (id, count) in held {
        if !holding.contains_key(id) {
            breaches.push(format!(
                "consultation {id} is {} but holds {count} slot(s)",
                status.get(id).unwrap_or(&"unknown")
            ));
        } else if *count > 1 {
            breaches.push(format!("consultation {id} holds {count} slots"));
        }
    }
    for (id, c) in &holding {
        if !held.contains_key(id) {
            breaches.push(format!(
                "consultation {id} ({}) is {} but holds no slot",
                c.tenant,
                c.status.as_str()
            ));
        }
    }
    Check::new(
        "slots held equal consultations scheduled",
        held.len().max(holding.len()),
        breaches,
    )
}

async fn deadlines_not_overdue(pool: &PgPool) -> anyhow::Result<Check> {
    let rows: Vec<(Uuid, String, DateTime<Utc>)> = sqlx::query_as(
        "select id, tenant_id, due_at from deadlines
          where state = 'running' and due_at < now()
          order by due_at",
    )
    .fetch_all(pool)
    .await?;
    let total: i64 = sqlx::query_scalar("select count(*) from deadlines")
        .fetch_one(pool)
        .await?;
    Ok(Check::new(
        "no deadline is running past its due time",
        usize::try_from(total).unwrap_or(0),
        rows.into_iter()
            .map(|(id, tenant, due)| format!("deadline {id} ({tenant}) was due at {due}"))
            .collect(),
    ))
}

async fn no_deactivated_person_scheduled(
    pool: &PgPool,
    consultations: &[Consultation],
    deactivations: &BTreeMap<Uuid, DateTime<Utc>>,
) -> anyhow::Result<Check> {
    let mut checked = 0;
    let mut breaches = vec![];
    for c in consultations {
        for (role, person) in [("patient", c.patient), ("physician", c.physician)] {
            let Some(deactivated) = deactivations.get(&person) else {
                continue;
            };
            if c.starts_at <= *deactivated {
                continue;
            }
            checked += 1;
            if c.status == domain::consultation::Status::Scheduled {
                let timeline = timeline(pool, c.id, *deactivated).await?;
                breaches.push(format!(
                    "consultation {} ({}) is scheduled for {role} {person}, deactivated while \
                     it was being scheduled: {timeline}",
                    c.id, c.tenant,
                ));
            }
        }
    }
    Ok(Check::new(
        "no deactivated person's future consultation is scheduled",
        checked,
        breaches,
    ))
}

/// The saga of `consultation` as its events tell it, with the deactivation at
/// `deactivated` in its place, each at its time from the request (`+12 ms`).
async fn timeline(
    pool: &PgPool,
    consultation: Uuid,
    deactivated: DateTime<Utc>,
) -> anyhow::Result<String> {
    let mut events: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        "select event_type, occurred_at from events
          where stream_id = $1 or (payload ->> 'consultationId') = $1::text
          order by occurred_at, position",
    )
    .bind(consultation)
    .fetch_all(pool)
    .await?;
    let Some(requested) = events.first().map(|(_, at)| *at) else {
        return Ok("no events".to_owned());
    };
    // The saga ends at the consultation's scheduling; what follows is the workload's.
    if let Some(end) = events.iter().position(|(t, _)| t == store::SCHEDULED) {
        events.truncate(end + 1);
    }
    events.push(("(deactivated)".to_owned(), deactivated));
    events.sort_by_key(|(_, at)| *at);
    Ok(events
        .iter()
        .map(|(event_type, at)| {
            format!("{event_type} +{} ms", (*at - requested).num_milliseconds())
        })
        .collect::<Vec<_>>()
        .join(", "))
}

async fn one_tenant_per_stream(pool: &PgPool) -> anyhow::Result<Check> {
    let (streams, mixed): (i64, Vec<Uuid>) = (
        sqlx::query_scalar("select count(distinct stream_id) from events")
            .fetch_one(pool)
            .await?,
        sqlx::query_scalar(
            "select stream_id from events group by stream_id
              having count(distinct tenant_id) > 1",
        )
        .fetch_all(pool)
        .await?,
    );
    Ok(Check::new(
        "every stream stays in one tenant",
        usize::try_from(streams).unwrap_or(0),
        mixed
            .into_iter()
            .map(|id| format!("stream {id} has events of several tenants"))
            .collect(),
    ))
}

/// `hap rebuild --all --verify` on `instance`: exit 0 means its read model equals a fresh
/// rebuild from the store.
async fn read_model_rebuilds_equal(hap: &Hap, instance: &str) -> anyhow::Result<Check> {
    let (equal, output) = hap.run(instance, &["rebuild", "--all", "--verify"]).await?;
    let breaches = if equal {
        vec![]
    } else {
        output
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| format!("{instance}: {line}"))
            .collect()
    };
    Ok(Check::new(
        format!("{instance}'s read model equals a rebuild"),
        1,
        breaches,
    ))
}

/// Every dead-letter queue of the run is empty; each message found is a breach, listed with
/// the reason HAP gave it (`x-error`), or none when the broker dead-lettered it itself.
async fn dead_letters(amqp_url: &AmqpUrls, prefix: &str) -> anyhow::Result<Check> {
    let queues = consumed_queues(prefix);
    let mut breaches = vec![];
    for names in &queues {
        let letters = messaging::dlq::list(amqp_url, &names.main).await?;
        for letter in letters {
            breaches.push(format!(
                "{}: {} {} after {} retries: {}",
                names.dead_letters,
                letter.event_type.as_deref().unwrap_or("?"),
                letter.event_id.as_deref().unwrap_or("?"),
                letter.retries.unwrap_or(0),
                letter
                    .error
                    .as_deref()
                    .unwrap_or("no x-error (dead-lettered by the broker)")
            ));
        }
    }
    Ok(Check::new(
        "the dead-letter queues are empty",
        queues.len(),
        breaches,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::consultation::Status;

    fn consultation(id: u128, physician: u128, hour: u32, status: Status) -> Consultation {
        let at = |h: u32, m: u32| {
            chrono::NaiveDate::from_ymd_opt(2030, 1, 7)
                .and_then(|d| d.and_hms_opt(h, m, 0))
                .map(|t| t.and_utc())
                .expect("a valid time")
        };
        Consultation {
            id: Uuid::from_u128(id),
            tenant: "clinic-1".into(),
            patient: Uuid::from_u128(100),
            physician: Uuid::from_u128(physician),
            starts_at: at(hour, 0),
            ends_at: at(hour, 45),
            status,
            scheduled: u32::from(status == Status::Scheduled),
            scheduled_at: None,
            failed: 0,
            failure: None,
        }
    }

    #[test]
    fn overlapping_scheduled_consultations_of_one_physician_are_found() {
        let apart = [
            consultation(1, 7, 9, Status::Scheduled),
            consultation(2, 7, 10, Status::Scheduled),
            // Another physician, or not holding the slot: no overlap.
            consultation(3, 8, 9, Status::Scheduled),
            consultation(4, 7, 9, Status::Failed),
        ];
        assert!(no_overlaps(&apart).holds());
        let overlapping = [
            consultation(1, 7, 9, Status::Scheduled),
            consultation(2, 7, 9, Status::Done),
        ];
        assert_eq!(no_overlaps(&overlapping).breaches.len(), 1);
    }

    #[test]
    fn slots_must_be_held_by_exactly_the_scheduled_consultations_once() {
        let consultations = [
            consultation(1, 7, 9, Status::Scheduled),
            consultation(2, 7, 10, Status::Cancelled),
            consultation(3, 7, 11, Status::Scheduled),
        ];
        let (one, two, three) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let right = BTreeMap::from([(one, 1), (three, 1)]);
        assert!(slots_match(&consultations, &right).holds());
        // A cancelled one still holding, a scheduled one without, one holding twice.
        let wrong = BTreeMap::from([(one, 2), (two, 1)]);
        assert_eq!(slots_match(&consultations, &wrong).breaches.len(), 3);
    }

    #[test]
    fn a_consultation_left_requested_or_cancelling_is_not_at_rest() {
        let consultations = [
            consultation(1, 7, 9, Status::Scheduled),
            consultation(2, 7, 10, Status::Requested),
            consultation(3, 7, 11, Status::CancellationRequested),
        ];
        assert_eq!(at_rest(&consultations).breaches.len(), 2);
    }
}
