//! The physicians projection: one row per physician, as `GET /physicians` shows it. The
//! physicians queue also carries the day-schedule events (slots held and released), which
//! belong to other streams and change no row here.

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

pub struct Physicians;

#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    id: Uuid,
    name: String,
    specialty: String,
    license_number: String,
    status: String,
    version: i64,
    updated_at: DateTime<Utc>,
}

impl Projector for Physicians {
    fn name(&self) -> &'static str {
        crate::PHYSICIANS
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        events: &'a [Envelope],
    ) -> BoxFuture<'a, Result<Vec<Touched>, sqlx::Error>> {
        async move {
            let ids: Vec<Uuid> = events.iter().map(|e| e.stream_id).collect();
            let mut rows: HashMap<Uuid, Row> =
                sqlx::query_as::<_, Row>("select * from physicians where id = any($1)")
                    .bind(&ids)
                    .fetch_all(&mut *tx)
                    .await?
                    .into_iter()
                    .map(|row| (row.id, row))
                    .collect();
            let mut changed = Vec::new();
            for envelope in events {
                let id = envelope.stream_id;
                if let Event::PhysicianRegistered(e) = &envelope.event {
                    rows.insert(
                        id,
                        Row {
                            id,
                            name: e.name.clone(),
                            specialty: e.specialty.clone(),
                            license_number: e.license_number.clone(),
                            status: "active".into(),
                            version: 0,
                            updated_at: envelope.occurred_at,
                        },
                    );
                }
                let Some(row) = rows.get_mut(&id) else {
                    continue;
                };
                match &envelope.event {
                    Event::PhysicianUpdated(e) => {
                        if let Some(name) = &e.name {
                            row.name = name.clone();
                        }
                        if let Some(specialty) = &e.specialty {
                            row.specialty = specialty.clone();
                        }
                    }
                    Event::PhysicianDeactivated(_) => row.status = "inactive".into(),
                    _ => {}
                }
                row.version = envelope.version;
                row.updated_at = envelope.occurred_at;
                changed.push(id);
            }
            let touched = Touched::rows("physician", changed);
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
        "insert into physicians (id, name, specialty, license_number, status, version, updated_at)
         select * from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                              $6::bigint[], $7::timestamptz[])
         on conflict (id) do update set
             name = excluded.name, specialty = excluded.specialty,
             license_number = excluded.license_number, status = excluded.status,
             version = excluded.version, updated_at = excluded.updated_at",
    )
    .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.name.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.specialty.clone()).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.license_number.clone())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.status.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>())
    .execute(tx)
    .await
    .map(|_| ())
}
