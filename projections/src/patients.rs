//! The patients projection: one row per patient, as `GET /patients` shows it.

use chrono::{DateTime, NaiveDate, Utc};
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

pub struct Patients;

#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    id: Uuid,
    name: String,
    birth_date: NaiveDate,
    document_number: String,
    email: Option<String>,
    phone: Option<String>,
    status: String,
    version: i64,
    updated_at: DateTime<Utc>,
}

/// Patients' rows by id: the few a batch touches, or every one during a rebuild.
#[derive(Default)]
struct Rows(ById<Row>);

/// Folds one event into `rows`; returns the patient whose row it changed.
fn fold(rows: &mut ById<Row>, envelope: &Envelope) -> Option<Uuid> {
    let id = envelope.stream_id;
    if let Event::PatientRegistered(e) = &envelope.event {
        rows.insert(
            id,
            Row {
                id,
                name: e.name.clone(),
                birth_date: e.birth_date,
                document_number: e.document_number.clone(),
                email: e.email.clone(),
                phone: e.phone.clone(),
                status: "active".into(),
                version: 0,
                updated_at: envelope.occurred_at,
            },
        );
    }
    // Events of streams this projection has no row for (none yet) change nothing.
    let row = rows.get_mut(&id)?;
    match &envelope.event {
        Event::PatientUpdated(e) => {
            if let Some(name) = &e.name {
                row.name = name.clone();
            }
            if let Some(email) = &e.email {
                row.email = Some(email.clone());
            }
            if let Some(phone) = &e.phone {
                row.phone = Some(phone.clone());
            }
        }
        Event::PatientDeactivated(_) => row.status = "inactive".into(),
        _ => {}
    }
    // Every event of the stream moves its version, as the command side counts it.
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
            "patients",
            "id, name, birth_date, document_number, email, phone, status, version, updated_at",
        );
        for r in &rows {
            copy.row(&[
                &r.id,
                &r.name,
                &r.birth_date,
                &r.document_number,
                &r.email,
                &r.phone,
                &r.status,
                &r.version,
                &r.updated_at,
            ]);
        }
        vec![copy]
    }
}

impl Projector for Patients {
    fn name(&self) -> &'static str {
        crate::PATIENTS
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
                "select * from patients where id = any($1)",
                "patient",
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
/// the table: an update for those, a plain insert for the rest (new patients: the batch holds
/// their registration, fresh to this projection, so no row can exist), which costs
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
    bind(&mut arguments, column(rows, |r| r.birth_date))?;
    bind(&mut arguments, column(rows, |r| r.document_number.as_str()))?;
    bind(&mut arguments, column(rows, |r| r.email.as_deref()))?;
    bind(&mut arguments, column(rows, |r| r.phone.as_deref()))?;
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
                 select * from unnest($10::uuid[], $11::text[], $12::date[], $13::text[],
                                      $14::text[], $15::text[], $16::text[], $17::bigint[],
                                      $18::timestamptz[], $19::bool[])
                     as c(id, name, birth_date, document_number, email, phone, status, version,
                          updated_at, stored)
             ), updated as (
                 update patients p set
                     name = c.name, birth_date = c.birth_date,
                     document_number = c.document_number, email = c.email, phone = c.phone,
                     status = c.status, version = c.version, updated_at = c.updated_at
                   from changed c
                  where c.stored and p.id = c.id
                 returning p.id
             )
             insert into patients (id, name, birth_date, document_number, email, phone, status,
                                   version, updated_at)
             select id, name, birth_date, document_number, email, phone, status, version,
                    updated_at
               from changed where not stored or id not in (select id from updated)"
        ),
        arguments,
    )
    .execute(conn)
    .await
    .map(|_| ())
}
