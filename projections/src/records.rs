//! The records projection: one row per clinical record. Records live in their consultation's
//! record book stream, so a batch loads the books it touches, folds, and writes back.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::Event;
use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::envelope::Envelope;
use crate::progress::Touched;
use crate::projector::Projector;

pub struct Records;

#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    id: Uuid,
    consultation_id: Uuid,
    patient_id: Uuid,
    physician_id: Uuid,
    content: String,
    status: String,
    version: i64,
    updated_at: DateTime<Utc>,
}

fn consultation_of(event: &Event) -> Option<Uuid> {
    match event {
        Event::ConsultationRecordCreated(e) => Some(e.consultation_id.as_uuid()),
        Event::ConsultationRecordUpdated(e) => Some(e.consultation_id.as_uuid()),
        Event::ConsultationRecordsVoided(e) => Some(e.consultation_id.as_uuid()),
        _ => None,
    }
}

impl Projector for Records {
    fn name(&self) -> &'static str {
        crate::RECORDS
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        events: &'a [Envelope],
    ) -> BoxFuture<'a, Result<Vec<Touched>, sqlx::Error>> {
        async move {
            let books: Vec<Uuid> = events
                .iter()
                .filter_map(|e| consultation_of(&e.event))
                .collect();
            let mut rows: HashMap<Uuid, Row> =
                sqlx::query_as::<_, Row>("select * from records where consultation_id = any($1)")
                    .bind(&books)
                    .fetch_all(&mut *tx)
                    .await?
                    .into_iter()
                    .map(|row| (row.id, row))
                    .collect();
            let mut changed = Vec::new();
            for envelope in events {
                let (version, at) = (envelope.version, envelope.occurred_at);
                match &envelope.event {
                    Event::ConsultationRecordCreated(e) => {
                        let id = e.record_id.as_uuid();
                        rows.insert(
                            id,
                            Row {
                                id,
                                consultation_id: e.consultation_id.as_uuid(),
                                patient_id: e.patient_id.as_uuid(),
                                physician_id: e.physician_id.as_uuid(),
                                content: e.content.clone(),
                                status: "active".into(),
                                version,
                                updated_at: at,
                            },
                        );
                    }
                    Event::ConsultationRecordUpdated(e) => {
                        if let Some(row) = rows.get_mut(&e.record_id.as_uuid()) {
                            row.content = e.content.clone();
                            row.updated_at = at;
                        }
                    }
                    Event::ConsultationRecordsVoided(e) => {
                        let consultation = e.consultation_id.as_uuid();
                        for row in rows
                            .values_mut()
                            .filter(|r| r.consultation_id == consultation)
                        {
                            row.status = "voided".into();
                            row.updated_at = at;
                        }
                    }
                    _ => {}
                }
                // A record's version is its book's: the one `If-Match` is checked against when
                // it is changed. So every event of a book moves the version of all its records.
                if let Some(consultation) = consultation_of(&envelope.event) {
                    for row in rows
                        .values_mut()
                        .filter(|r| r.consultation_id == consultation)
                    {
                        row.version = version;
                        changed.push(row.id);
                    }
                }
            }
            let touched = Touched::rows("record", changed);
            let rows: Vec<&Row> = touched.iter().filter_map(|t| rows.get(&t.id)).collect();
            upsert(tx, &rows).await?;
            Ok(touched)
        }
        .boxed()
    }
}

async fn upsert(tx: &mut PgConnection, rows: &[&Row]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "insert into records (id, consultation_id, patient_id, physician_id, content, status,
                              version, updated_at)
         select * from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[],
                              $6::text[], $7::bigint[], $8::timestamptz[])
         on conflict (id) do update set
             content = excluded.content, status = excluded.status, version = excluded.version,
             updated_at = excluded.updated_at",
    )
    .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.consultation_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.patient_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.physician_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.content.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.status.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>())
    .execute(tx)
    .await
    .map(|_| ())
}
