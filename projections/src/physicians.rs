//! The physicians projection: one row per physician, as `GET /physicians` shows it. The
//! physicians queue also carries the day-schedule events (slots held and released), which
//! belong to other streams and change no row here.

use chrono::{DateTime, Utc};
use domain::Event;
use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::ById;
use crate::copy::CopyRows;
use crate::envelope::Envelope;
use crate::progress::Touched;
use crate::projector::{
    ApplyError, Bookkeeping, InMemory, Projector, batch_statement, bind, column, fold_stream_rows,
};

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

/// Physicians' rows by id: the few a batch touches, or every one during a rebuild.
#[derive(Default)]
struct Rows(ById<Row>);

/// Folds one event into `rows`; returns the physician whose row it changed.
fn fold(rows: &mut ById<Row>, envelope: &Envelope) -> Option<Uuid> {
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
    // Day-schedule streams have no row here.
    let row = rows.get_mut(&id)?;
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
    Some(id)
}

impl InMemory for Rows {
    fn fold(&mut self, event: &Envelope) {
        fold(&mut self.0, event);
    }

    fn into_rows(self: Box<Self>) -> Vec<CopyRows> {
        let mut rows: Vec<Row> = self.0.into_values().collect();
        rows.sort_unstable_by_key(|r| r.id);
        let mut copy = CopyRows::new(
            "physicians",
            "id, name, specialty, license_number, status, version, updated_at",
        );
        for r in &rows {
            copy.row(&[
                &r.id,
                &r.name,
                &r.specialty,
                &r.license_number,
                &r.status,
                &r.version,
                &r.updated_at,
            ]);
        }
        vec![copy]
    }
}

impl Projector for Physicians {
    fn name(&self) -> &'static str {
        crate::PHYSICIANS
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: &'a [Envelope],
        batch: &'a Bookkeeping,
    ) -> BoxFuture<'a, Result<Vec<Touched>, ApplyError>> {
        async move {
            let (touched, rows) = fold_stream_rows(
                conn,
                events,
                "select * from physicians where id = any($1)",
                "physician",
                |row: &Row| row.id,
                fold,
            )
            .await?;
            let rows: Vec<(&Row, bool)> = rows.iter().map(|(row, stored)| (row, *stored)).collect();
            save(conn, batch, &rows).await?;
            Ok(touched)
        }
        .boxed()
    }

    fn in_memory(&self) -> Box<dyn InMemory> {
        Box::new(Rows::default())
    }
}

/// Writes `rows` with the batch's bookkeeping, each row marked with whether it was read from
/// the table: an update for those, a plain insert for the rest (new physicians: the batch
/// holds their registration, fresh to this projection, so no row can exist), which costs
/// PostgreSQL about half of an upsert. A row read and gone since (deleted by hand) is
/// inserted again as the batch folded it.
async fn save(
    conn: &mut PgConnection,
    batch: &Bookkeeping,
    rows: &[(&Row, bool)],
) -> Result<(), sqlx::Error> {
    let mut arguments = batch.arguments()?;
    bind(&mut arguments, column(rows, |r| r.id))?;
    bind(&mut arguments, column(rows, |r| r.name.as_str()))?;
    bind(&mut arguments, column(rows, |r| r.specialty.as_str()))?;
    bind(&mut arguments, column(rows, |r| r.license_number.as_str()))?;
    bind(&mut arguments, column(rows, |r| r.status.as_str()))?;
    bind(&mut arguments, column(rows, |r| r.version))?;
    bind(&mut arguments, column(rows, |r| r.updated_at))?;
    bind(
        &mut arguments,
        rows.iter().map(|(_, stored)| *stored).collect::<Vec<_>>(),
    )?;
    sqlx::query_with(
        batch_statement!(
            ", changed as (
                 select * from unnest($10::uuid[], $11::text[], $12::text[], $13::text[],
                                      $14::text[], $15::bigint[], $16::timestamptz[], $17::bool[])
                     as c(id, name, specialty, license_number, status, version, updated_at,
                          stored)
             ), updated as (
                 update physicians p set
                     name = c.name, specialty = c.specialty, license_number = c.license_number,
                     status = c.status, version = c.version, updated_at = c.updated_at
                   from changed c
                  where c.stored and p.id = c.id
                 returning p.id
             )
             insert into physicians (id, name, specialty, license_number, status, version,
                                     updated_at)
             select id, name, specialty, license_number, status, version, updated_at
               from changed where not stored or id not in (select id from updated)"
        ),
        arguments,
    )
    .execute(conn)
    .await
    .map(|_| ())
}
