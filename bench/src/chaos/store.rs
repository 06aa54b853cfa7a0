//! What the event store says happened, read with plain SQL and folded here rather than by
//! HAP's own code, so that a wrong fold in HAP cannot hide what it folds wrongly: each
//! consultation's status and slot, the slots held on the physicians' days, the deactivations.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use chrono::{DateTime, Utc};
use domain::consultation::Status;
use domain::event::{
    ConsultationCancellationRequested, ConsultationCancelled, ConsultationDone,
    ConsultationRecordCreated, ConsultationRecordUpdated, ConsultationScheduled,
    ConsultationSchedulingFailed, ConsultationSchedulingStarted, PatientDeactivated,
    PhysicianAvailabilityConfirmed, PhysicianDeactivated, PhysicianSlotReleased,
};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// The consultation events that set its status, and the status each sets.
const STATUS_EVENTS: [(&str, Status); 6] = [
    (STARTED, Status::Requested),
    (SCHEDULED, Status::Scheduled),
    (FAILED, Status::Failed),
    (
        ConsultationCancellationRequested::EVENT_TYPE,
        Status::CancellationRequested,
    ),
    (ConsultationCancelled::EVENT_TYPE, Status::Cancelled),
    (ConsultationDone::EVENT_TYPE, Status::Done),
];
const STARTED: &str = ConsultationSchedulingStarted::EVENT_TYPE;
pub const SCHEDULED: &str = ConsultationScheduled::EVENT_TYPE;
const FAILED: &str = ConsultationSchedulingFailed::EVENT_TYPE;
/// A slot held on, and given back to, a physician's day.
const HELD: &str = PhysicianAvailabilityConfirmed::EVENT_TYPE;
const RELEASED: &str = PhysicianSlotReleased::EVENT_TYPE;
const DEACTIVATED: [&str; 2] = [
    PatientDeactivated::EVENT_TYPE,
    PhysicianDeactivated::EVENT_TYPE,
];
/// The record events the workload's record commands append.
pub const RECORD_EVENTS: [&str; 2] = [
    ConsultationRecordCreated::EVENT_TYPE,
    ConsultationRecordUpdated::EVENT_TYPE,
];

/// The statuses a consultation may rest in: the saga has nothing left to do.
pub const TERMINAL: [Status; 4] = [
    Status::Scheduled,
    Status::Failed,
    Status::Cancelled,
    Status::Done,
];

/// One consultation as its stream tells it.
#[derive(Debug, Clone)]
pub struct Consultation {
    pub id: Uuid,
    pub tenant: String,
    pub patient: Uuid,
    pub physician: Uuid,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub status: Status,
    /// `ConsultationScheduled` events in the stream, and when the first was written.
    pub scheduled: u32,
    pub scheduled_at: Option<DateTime<Utc>>,
    /// `ConsultationSchedulingFailed` events, and the first one's reason.
    pub failed: u32,
    pub failure: Option<String>,
}

impl Consultation {
    /// Whether it holds its slot: scheduled, or done in it.
    pub fn holds_slot(&self) -> bool {
        matches!(self.status, Status::Scheduled | Status::Done)
    }
}

/// Every consultation, in id order.
pub async fn consultations(pool: &PgPool) -> anyhow::Result<Vec<Consultation>> {
    let rows: Vec<(Uuid, String, String, DateTime<Utc>, String)> = sqlx::query_as(
        "select stream_id, tenant_id, event_type, occurred_at, payload::text from events
          where aggregate_type = 'consultation'
          order by stream_id, version",
    )
    .fetch_all(pool)
    .await
    .context("Failed to read the consultations' events")?;
    fold_consultations(rows)
}

/// Folds consultation events, in stream and version order, into consultations.
fn fold_consultations(
    rows: Vec<(Uuid, String, String, DateTime<Utc>, String)>,
) -> anyhow::Result<Vec<Consultation>> {
    let mut consultations: Vec<Consultation> = vec![];
    for (id, tenant, event_type, occurred_at, payload) in rows {
        let payload: Value = serde_json::from_str(&payload)
            .with_context(|| format!("consultation {id}: a payload that is not JSON"))?;
        if event_type == STARTED {
            consultations.push(Consultation {
                id,
                tenant,
                patient: uuid_field(&payload, "patientId")?,
                physician: uuid_field(&payload, "physicianId")?,
                starts_at: time_field(&payload, "startsAt")?,
                ends_at: time_field(&payload, "endsAt")?,
                status: Status::Requested,
                scheduled: 0,
                scheduled_at: None,
                failed: 0,
                failure: None,
            });
            continue;
        }
        let Some(consultation) = consultations.last_mut().filter(|c| c.id == id) else {
            anyhow::bail!("consultation {id}: {event_type} before {STARTED}");
        };
        if let Some((_, status)) = STATUS_EVENTS.iter().find(|(t, _)| *t == event_type) {
            consultation.status = *status;
        }
        if event_type == SCHEDULED {
            consultation.scheduled += 1;
            consultation.scheduled_at.get_or_insert(occurred_at);
        } else if event_type == FAILED {
            consultation.failed += 1;
            if consultation.failure.is_none() {
                consultation.failure = payload["reason"].as_str().map(str::to_owned);
            }
        }
    }
    Ok(consultations)
}

/// How many slots each consultation holds on the physicians' days: each day's stream folded
/// (a hold adds the consultation's slot, a release removes it), summed over the days.
pub async fn held_slots(pool: &PgPool) -> anyhow::Result<BTreeMap<Uuid, u32>> {
    let rows: Vec<(Uuid, String, String)> = sqlx::query_as(
        "select stream_id, event_type, payload::text from events
          where aggregate_type = 'physician-schedule' and event_type = any($1)
          order by stream_id, version",
    )
    .bind([HELD, RELEASED])
    .fetch_all(pool)
    .await
    .context("Failed to read the physicians' days")?;
    fold_days(rows)
}

/// Folds the days' hold and release events, in stream and version order, into the slots each
/// consultation holds.
fn fold_days(rows: Vec<(Uuid, String, String)>) -> anyhow::Result<BTreeMap<Uuid, u32>> {
    let mut days: BTreeMap<Uuid, Vec<Uuid>> = BTreeMap::new();
    for (day, event_type, payload) in rows {
        let payload: Value = serde_json::from_str(&payload)
            .with_context(|| format!("day {day}: a payload that is not JSON"))?;
        let consultation = uuid_field(&payload, "consultationId")?;
        let slots = days.entry(day).or_default();
        if event_type == HELD {
            slots.push(consultation);
        } else {
            slots.retain(|c| *c != consultation);
        }
    }
    let mut held = BTreeMap::new();
    for consultation in days.into_values().flatten() {
        *held.entry(consultation).or_default() += 1;
    }
    Ok(held)
}

/// When each deactivated patient or physician was first deactivated.
pub async fn deactivations(pool: &PgPool) -> anyhow::Result<BTreeMap<Uuid, DateTime<Utc>>> {
    let rows: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "select stream_id, min(occurred_at) from events
          where event_type = any($1)
          group by stream_id",
    )
    .bind(DEACTIVATED)
    .fetch_all(pool)
    .await
    .context("Failed to read the deactivations")?;
    Ok(rows.into_iter().collect())
}

/// An event as the check of accepted commands needs it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub version: i64,
    pub event_type: String,
    pub tenant: String,
}

/// The events of `streams`, by stream, in version order.
pub async fn streams(
    pool: &PgPool,
    streams: &BTreeSet<Uuid>,
) -> anyhow::Result<BTreeMap<Uuid, Vec<Stored>>> {
    let ids: Vec<Uuid> = streams.iter().copied().collect();
    let rows: Vec<(Uuid, i64, String, String)> = sqlx::query_as(
        "select stream_id, version, event_type, tenant_id from events
          where stream_id = any($1)
          order by stream_id, version",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
    .context("Failed to read the accepted commands' streams")?;
    Ok(group(rows.into_iter()))
}

/// The record events, by the record they are about (the payload's `recordId`), in version
/// order of their record book.
pub async fn record_events(pool: &PgPool) -> anyhow::Result<BTreeMap<Uuid, Vec<Stored>>> {
    let rows: Vec<(String, i64, String, String)> = sqlx::query_as(
        "select payload ->> 'recordId', version, event_type, tenant_id from events
          where aggregate_type = 'record' and event_type = any($1)
          order by stream_id, version",
    )
    .bind(RECORD_EVENTS)
    .fetch_all(pool)
    .await
    .context("Failed to read the record events")?;
    Ok(group(rows.into_iter().filter_map(
        |(record, version, event_type, tenant)| {
            Some((record.parse().ok()?, version, event_type, tenant))
        },
    )))
}

fn group(rows: impl Iterator<Item = (Uuid, i64, String, String)>) -> BTreeMap<Uuid, Vec<Stored>> {
    let mut grouped: BTreeMap<Uuid, Vec<Stored>> = BTreeMap::new();
    for (key, version, event_type, tenant) in rows {
        grouped.entry(key).or_default().push(Stored {
            version,
            event_type,
            tenant,
        });
    }
    grouped
}

fn uuid_field(payload: &Value, field: &str) -> anyhow::Result<Uuid> {
    payload[field]
        .as_str()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("a payload without a valid {field}: {payload}"))
}

fn time_field(payload: &Value, field: &str) -> anyhow::Result<DateTime<Utc>> {
    payload[field]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .with_context(|| format!("a payload without a valid {field}: {payload}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        id: Uuid,
        event_type: &str,
        payload: Value,
    ) -> (Uuid, String, String, DateTime<Utc>, String) {
        (
            id,
            "clinic-1".into(),
            event_type.into(),
            Utc::now(),
            payload.to_string(),
        )
    }

    fn requested(id: Uuid) -> (Uuid, String, String, DateTime<Utc>, String) {
        row(
            id,
            STARTED,
            serde_json::json!({
                "consultationId": id,
                "patientId": Uuid::nil(),
                "physicianId": Uuid::nil(),
                "startsAt": "2030-01-07T09:00:00Z",
                "endsAt": "2030-01-07T09:30:00Z",
            }),
        )
    }

    #[test]
    fn a_consultation_folds_to_its_last_status_and_counts_its_outcomes() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let folded = fold_consultations(vec![
            requested(a),
            row(a, SCHEDULED, serde_json::json!({})),
            row(a, "ConsultationUpdated", serde_json::json!({})),
            row(a, FAILED, serde_json::json!({ "reason": "timed_out" })),
            requested(b),
        ])
        .unwrap();
        assert_eq!(folded.len(), 2);
        assert_eq!(folded[0].status, Status::Failed);
        assert_eq!((folded[0].scheduled, folded[0].failed), (1, 1));
        assert_eq!(folded[0].failure.as_deref(), Some("timed_out"));
        assert_eq!(folded[1].status, Status::Requested);
    }

    #[test]
    fn a_released_slot_is_no_longer_held_and_a_slot_held_on_two_days_counts_twice() {
        let (day1, day2) = (Uuid::from_u128(10), Uuid::from_u128(11));
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let event = |day, event_type: &str, consultation: Uuid| {
            (
                day,
                event_type.to_owned(),
                serde_json::json!({ "consultationId": consultation }).to_string(),
            )
        };
        let held = fold_days(vec![
            event(day1, HELD, a),
            event(day1, HELD, b),
            event(day1, RELEASED, a),
            event(day2, HELD, b),
        ])
        .unwrap();
        assert_eq!(held, BTreeMap::from([(b, 2)]));
    }

    #[test]
    fn every_event_type_read_here_is_one_hap_knows() {
        let named = STATUS_EVENTS
            .iter()
            .map(|(t, _)| *t)
            .chain([HELD, RELEASED])
            .chain(DEACTIVATED)
            .chain(RECORD_EVENTS)
            .chain(
                super::super::ledger::Kind::ALL
                    .iter()
                    .map(|k| k.event_type()),
            );
        for event_type in named {
            assert!(
                domain::event::route(event_type).is_some(),
                "{event_type} is not an event type of HAP's"
            );
        }
    }
}
