//! The records projection: one row per clinical record. Records live in their consultation's
//! record book stream, so a batch loads the books it touches, folds, and writes back.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use domain::Event;
use futures::FutureExt;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::ById;
use crate::copy::CopyRows;
use crate::envelope::Envelope;
use crate::progress::Touched;
use crate::projector::{
    Applying, Batch, Bookkeeping, Chunk, InMemory, Loading, Projector, batch_statement, bind, each,
};

pub struct Records;

#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    id: Uuid,
    consultation_id: Uuid,
    patient_id: Uuid,
    physician_id: Uuid,
    content: Option<String>,
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

/// Records by their consultation's book: the books a batch or a chunk of a rebuild touches.
#[derive(Default)]
struct Books {
    by_consultation: ById<Vec<Row>>,
    /// The consultations whose books were read back from the table.
    loaded: Vec<Uuid>,
}

impl Books {
    /// Reads the books of `consultations` from the table.
    async fn load(
        &mut self,
        conn: &mut PgConnection,
        consultations: &[Uuid],
    ) -> Result<(), sqlx::Error> {
        if consultations.is_empty() {
            return Ok(());
        }
        let stored =
            sqlx::query_as::<_, Row>("select * from records where consultation_id = any($1)")
                .bind(consultations)
                .fetch_all(conn)
                .await?;
        for row in stored {
            let book = self.by_consultation.entry(row.consultation_id).or_default();
            if book.is_empty() {
                self.loaded.push(row.consultation_id);
            }
            book.push(row);
        }
        Ok(())
    }

    /// Folds one stored event; returns the records whose rows it changed.
    fn apply(&mut self, envelope: &Envelope) -> Vec<Uuid> {
        let mut changed = vec![];
        for event in &envelope.events {
            changed.extend(self.apply_event(envelope, event));
        }
        changed
    }

    /// Folds one of the events a stored one reads as.
    fn apply_event(&mut self, envelope: &Envelope, event: &Event) -> Vec<Uuid> {
        let Some(consultation) = consultation_of(event) else {
            return vec![];
        };
        let (version, at) = (envelope.version, envelope.occurred_at);
        let book = self.by_consultation.entry(consultation).or_default();
        match event {
            // A record the book holds already was created by this very event, delivered
            // again: the batch's statement then fails on the event's processed mark and the
            // careful path skips it. Two rows of one id would fail the statement first, on
            // the upsert, with an error no retry can mend.
            Event::ConsultationRecordCreated(e)
                if !book.iter().any(|r| r.id == e.record_id.as_uuid()) =>
            {
                book.push(Row {
                    id: e.record_id.as_uuid(),
                    consultation_id: consultation,
                    patient_id: e.patient_id.as_uuid(),
                    physician_id: e.physician_id.as_uuid(),
                    content: e.content.clone(),
                    status: "active".into(),
                    version,
                    updated_at: at,
                })
            }
            Event::ConsultationRecordUpdated(e) => {
                if let Some(row) = book.iter_mut().find(|r| r.id == e.record_id.as_uuid()) {
                    row.content = e.content.clone();
                    row.updated_at = at;
                }
            }
            Event::ConsultationRecordsVoided(_) => {
                for row in book.iter_mut() {
                    row.status = "voided".into();
                    row.updated_at = at;
                }
            }
            _ => {}
        }
        // A record's version is its book's: the one `If-Match` is checked against when it is
        // changed. So every event of a book moves the version of all its records.
        for row in book.iter_mut() {
            row.version = version;
        }
        book.iter().map(|r| r.id).collect()
    }
}

impl InMemory for Books {
    /// The books of the chunk's record book streams that earlier chunks began.
    fn load<'a>(&'a mut self, conn: &'a mut PgConnection, chunk: &'a Chunk<'a>) -> Loading<'a> {
        async move {
            let mut consultations: Vec<Uuid> = chunk
                .events
                .iter()
                .filter(|e| chunk.continues(e.stream_id))
                .flat_map(|e| e.events.iter().filter_map(consultation_of))
                .collect();
            consultations.sort_unstable();
            consultations.dedup();
            Books::load(self, conn, &consultations).await
        }
        .boxed()
    }

    fn fold(&mut self, event: &Envelope) {
        self.apply(event);
    }

    fn into_rows(self: Box<Self>) -> Vec<CopyRows> {
        let Books {
            by_consultation,
            loaded,
        } = *self;
        let mut rows: Vec<Row> = by_consultation.into_values().flatten().collect();
        rows.sort_unstable_by_key(|r| r.id);
        let mut copy = CopyRows::new(
            "records",
            "id, consultation_id, patient_id, physician_id, content, status, version, updated_at",
        );
        for r in &rows {
            copy.row(&[
                &r.id,
                &r.consultation_id,
                &r.patient_id,
                &r.physician_id,
                &r.content,
                &r.status,
                &r.version,
                &r.updated_at,
            ]);
        }
        vec![copy.replacing("consultation_id", "true", loaded)]
    }
}

impl Projector for Records {
    fn name(&self) -> &'static str {
        crate::RECORDS
    }

    fn apply<'a>(&'a self, batch: Batch<'a>) -> Applying<'a> {
        async move {
            let ids: Vec<Uuid> = batch
                .events
                .iter()
                .flat_map(|e| e.events.iter().filter_map(consultation_of))
                .collect();
            let mut books = Books::default();
            books.load(batch.conn, &ids).await?;
            let changed = batch.events.iter().flat_map(|e| books.apply(e)).collect();
            let touched = Touched::rows("record", changed);
            let changed: HashSet<Uuid> = touched.iter().map(|t| t.id).collect();
            let rows: Vec<&Row> = books
                .by_consultation
                .values()
                .flatten()
                .filter(|r| changed.contains(&r.id))
                .collect();
            upsert(batch.conn, batch.bookkeeping, &rows).await?;
            Ok(touched)
        }
        .boxed()
    }

    fn in_memory(&self) -> Box<dyn InMemory> {
        Box::new(Books::default())
    }
}

/// Upserts `rows` with the batch's bookkeeping, in one statement.
async fn upsert(
    conn: &mut PgConnection,
    batch: &Bookkeeping,
    rows: &[&Row],
) -> Result<(), sqlx::Error> {
    let mut arguments = batch.arguments()?;
    bind(&mut arguments, each(rows, |r| r.id))?;
    bind(&mut arguments, each(rows, |r| r.consultation_id))?;
    bind(&mut arguments, each(rows, |r| r.patient_id))?;
    bind(&mut arguments, each(rows, |r| r.physician_id))?;
    bind(&mut arguments, each(rows, |r| r.content.as_deref()))?;
    bind(&mut arguments, each(rows, |r| r.status.as_str()))?;
    bind(&mut arguments, each(rows, |r| r.version))?;
    bind(&mut arguments, each(rows, |r| r.updated_at))?;
    sqlx::query_with(
        batch_statement!(
            "
             insert into records (id, consultation_id, patient_id, physician_id, content, status,
                                  version, updated_at)
             select * from unnest($10::uuid[], $11::uuid[], $12::uuid[], $13::uuid[], $14::text[],
                                  $15::text[], $16::bigint[], $17::timestamptz[])
             on conflict (id) do update set
                 content = excluded.content, status = excluded.status,
                 version = excluded.version, updated_at = excluded.updated_at"
        ),
        arguments,
    )
    .execute(conn)
    .await
    .map(|_| ())
}
