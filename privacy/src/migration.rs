//! Sealing what releases before sealing stored in clear: the events of personal types written
//! at version 1 (`hap migrate-events`).
//!
//! It goes by position, oldest first, a batch per transaction: each row's payload is sealed
//! and its `schema_version` set to 2, nothing else, so readers (which open a sealed payload to
//! what it read as before) and the publisher (whose checkpoint is a position, which does not
//! change) go on unaffected while HAP serves. A row is updated only while still at version 1
//! and locked until its batch commits, so a run can be stopped and started again, or run
//! beside another: it continues where the last committed batch ended, and never touches a
//! row twice.
//!
//! A subject erased while their events were still in clear has no key to seal under: their
//! personal fields are written as null instead, as they would read had they been sealed.

use std::collections::HashSet;

use domain::event::{PatientErased, PhysicianErased};
use domain::personal::{PERSONAL, SEALED_VERSION, Subject};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::sealing;
use crate::vault::{Vault, VaultError};

/// The event types that erase their stream's subject.
const ERASING: &[&str] = &[PatientErased::EVENT_TYPE, PhysicianErased::EVENT_TYPE];

/// A batch's rows: position, type, payload, tenant, and for a type whose payload names no
/// subject, the subject of its stream. A record book's (the only such stream today) is the
/// patient its records were created for: the `patientId` of its `ConsultationRecordCreated`.
const BATCH: &str = "
select e.position, e.event_type, e.payload::text, e.tenant_id,
       case when e.event_type = any($3) then
           (select c.payload ->> 'patientId' from events c
             where c.stream_id = e.stream_id and c.event_type = 'ConsultationRecordCreated'
             order by c.version limit 1)
       end as stream_subject
  from events e
 where e.schema_version = 1 and e.event_type = any($1)
 order by e.position
 limit $2
   for update of e";

/// A row of a batch, read.
struct Clear {
    position: i64,
    event_type: String,
    payload: Value,
    tenant: String,
    /// The subject of its stream, for a type whose payload names none.
    stream_subject: Option<Uuid>,
    /// Whose personal data it holds, when it names them.
    subject: Option<Uuid>,
}

/// Seals up to `batch` events of personal types still stored in clear, the oldest first, in
/// one transaction; returns how many it sealed (0: none is left).
pub async fn seal_clear_events(
    pool: &PgPool,
    vault: &Vault,
    batch: i64,
) -> Result<u64, VaultError> {
    let personal: Vec<&str> = PERSONAL.iter().map(|p| p.event_type).collect();
    let by_stream: Vec<&str> = PERSONAL
        .iter()
        .filter(|p| p.subject == Subject::Stream)
        .map(|p| p.event_type)
        .collect();
    let mut tx = pool.begin().await?;
    let rows: Vec<(i64, String, String, String, Option<String>)> = sqlx::query_as(BATCH)
        .bind(&personal)
        .bind(batch)
        .bind(&by_stream)
        .fetch_all(&mut *tx)
        .await?;
    let mut clear = Vec::with_capacity(rows.len());
    for (position, event_type, payload, tenant, stream_subject) in rows {
        let payload: Value = serde_json::from_str(&payload)?;
        let stream_subject = stream_subject.and_then(|s| s.parse::<Uuid>().ok());
        let subject = match (domain::personal::personal(&event_type), &payload) {
            (Some(personal), Value::Object(fields)) => {
                sealing::subject_of(personal, fields, stream_subject)
            }
            _ => None,
        };
        clear.push(Clear {
            position,
            event_type,
            payload,
            tenant,
            stream_subject,
            subject,
        });
    }
    // A subject's erasure is in their own stream (the stream of a patient or physician is
    // their id).
    let subjects: Vec<Uuid> = clear.iter().filter_map(|row| row.subject).collect();
    let erased: HashSet<Uuid> = sqlx::query_scalar(
        "select distinct stream_id from events where stream_id = any($1) and event_type = any($2)",
    )
    .bind(&subjects)
    .bind(ERASING)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let (mut positions, mut payloads) = (Vec::with_capacity(clear.len()), Vec::new());
    for row in clear {
        let sealed = if row.subject.is_some_and(|s| erased.contains(&s)) {
            sealing::erased(&row.event_type, row.payload)
        } else {
            vault
                .seal(
                    &row.tenant,
                    &row.event_type,
                    row.payload,
                    row.stream_subject,
                )
                .await?
        };
        positions.push(row.position);
        payloads.push(sealed.to_string());
    }
    let sealed = sqlx::query(
        "update events e set payload = s.payload::json, schema_version = $3
           from unnest($1::bigint[], $2::text[]) as s(position, payload)
          where e.position = s.position and e.schema_version = 1",
    )
    .bind(&positions)
    .bind(&payloads)
    .bind(SEALED_VERSION)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(sealed)
}
