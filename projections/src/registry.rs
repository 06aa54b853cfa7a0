//! The registries: projections with one row per registered person (patients, physicians), as
//! `GET /patients` and `GET /physicians` show them. A registration inserts the row, updates
//! change its name and details, a deactivation marks it inactive, an erasure marks it erased
//! and empties every personal column, and every event of the stream moves its version, as the command side counts it. What differs between registries
//! (the events, the detail columns) is a [`Registry`]; the rest is here, once.

use chrono::{DateTime, Utc};
use domain::Event;
use futures::FutureExt;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{AssertSqlSafe, FromRow, PgConnection, Row as _};
use uuid::Uuid;

use crate::ById;
use crate::copy::{CopyRows, CopyValue};
use crate::envelope::Envelope;
use crate::progress::Touched;
use crate::projector::{
    Applying, Batch, Bookkeeping, Chunk, InMemory, Loading, Projector, batch_statement, bind,
    column, fold_stream_rows,
};

/// What one registry adds to the common rows and rules.
pub trait Registry: Send + Sync + 'static {
    /// The columns between `name` and `status`.
    type Details: for<'r> FromRow<'r, PgRow> + Send + Sync + Unpin + 'static;
    /// The projection's name (as recorded in `processed_events`) and its table.
    const TABLE: &'static str;
    /// What its rows are reported as to the query side's cache.
    const KIND: &'static str;
    /// The detail columns and their SQL types, in the order of [`Registry::values`] and
    /// [`Registry::bind`].
    const DETAILS: &'static [(&'static str, &'static str)];

    /// The name and details a registration event sets (the name is None when the event is
    /// read after the person's erasure).
    fn registered(event: &Event) -> Option<(Option<String>, Self::Details)>;
    /// Applies an update event to a row's name and details; other events change neither.
    fn update(event: &Event, name: &mut Option<String>, details: &mut Self::Details);
    fn deactivates(event: &Event) -> bool;
    fn erases(event: &Event) -> bool;
    /// Empties the personal details of an erased person.
    fn erase(details: &mut Self::Details);
    /// What else of this instance's read model holds the erased people's data, as a statement
    /// over their ids (`$1`) returning the ids of the rows it emptied, of the resource given.
    const ERASES_ELSEWHERE: Option<(&'static str, &'static str)> = None;
    /// The details' values, for a rebuild's `COPY`.
    fn values(details: &Self::Details) -> Vec<&dyn CopyValue>;
    /// Binds the details of `rows`, one array per column.
    fn bind(
        arguments: &mut PgArguments,
        rows: &[(&Self::Details, bool)],
    ) -> Result<(), sqlx::Error>;
}

const ACTIVE: &str = "active";
const INACTIVE: &str = "inactive";
const ERASED: &str = "erased";

/// One person's row.
#[derive(Debug, Clone)]
pub struct Row<D> {
    id: Uuid,
    name: Option<String>,
    details: D,
    status: String,
    version: i64,
    updated_at: DateTime<Utc>,
}

impl<'r, D: FromRow<'r, PgRow>> FromRow<'r, PgRow> for Row<D> {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            details: D::from_row(row)?,
            status: row.try_get("status")?,
            version: row.try_get("version")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

/// Folds one stored event into `rows`; returns the person whose row it changed.
fn fold<R: Registry>(rows: &mut ById<Row<R::Details>>, envelope: &Envelope) -> Option<Uuid> {
    let mut changed = None;
    for event in &envelope.events {
        changed = fold_event::<R>(rows, envelope, event).or(changed);
    }
    changed
}

/// Folds one of the events a stored one reads as.
fn fold_event<R: Registry>(
    rows: &mut ById<Row<R::Details>>,
    envelope: &Envelope,
    event: &Event,
) -> Option<Uuid> {
    let id = envelope.stream_id;
    if let Some((name, details)) = R::registered(event) {
        rows.insert(
            id,
            Row {
                id,
                name,
                details,
                status: ACTIVE.into(),
                version: 0,
                updated_at: envelope.occurred_at,
            },
        );
    }
    // Events of streams this projection has no row for (none yet, or a physician's day
    // schedule) change nothing.
    let row = rows.get_mut(&id)?;
    if R::erases(event) {
        row.status = ERASED.into();
        row.name = None;
        R::erase(&mut row.details);
    } else if R::deactivates(event) {
        row.status = INACTIVE.into();
    } else {
        R::update(event, &mut row.name, &mut row.details);
    }
    row.version = envelope.version;
    row.updated_at = envelope.occurred_at;
    Some(id)
}

/// A registry's rows of one chunk of a rebuild, and which of them were read back from the
/// shadow.
struct Rows<R: Registry> {
    rows: ById<Row<R::Details>>,
    loaded: Vec<Uuid>,
}

impl<R: Registry> InMemory for Rows<R> {
    fn load<'a>(&'a mut self, conn: &'a mut PgConnection, chunk: &'a Chunk<'a>) -> Loading<'a> {
        async move {
            let continued = chunk.continued();
            if continued.is_empty() {
                return Ok(());
            }
            let stored: Vec<Row<R::Details>> = sqlx::query_as(select::<R>())
                .bind(&continued)
                .fetch_all(conn)
                .await?;
            for row in stored {
                self.loaded.push(row.id);
                self.rows.insert(row.id, row);
            }
            Ok(())
        }
        .boxed()
    }

    fn fold(&mut self, event: &Envelope) {
        fold::<R>(&mut self.rows, event);
    }

    fn into_rows(self: Box<Self>) -> Vec<CopyRows> {
        let Rows { rows, loaded } = *self;
        let mut rows: Vec<Row<R::Details>> = rows.into_values().collect();
        rows.sort_unstable_by_key(|r| r.id);
        let mut copy = CopyRows::new(R::TABLE, columns::<R>().join(", "));
        for r in &rows {
            let mut values: Vec<&dyn CopyValue> = vec![&r.id, &r.name];
            values.extend(R::values(&r.details));
            values.extend([&r.status as &dyn CopyValue, &r.version, &r.updated_at]);
            copy.row(&values);
        }
        vec![copy.replacing("id", "true", loaded)]
    }
}

/// The rows of the registry whose ids are `$1`; built from the registry's constants only.
fn select<R: Registry>() -> AssertSqlSafe<String> {
    AssertSqlSafe(format!("select * from {} where id = any($1)", R::TABLE))
}

/// Every column of a registry's table, in the order rows give them.
fn columns<R: Registry>() -> Vec<&'static str> {
    let details = R::DETAILS.iter().map(|(column, _)| *column);
    ["id", "name"]
        .into_iter()
        .chain(details)
        .chain(["status", "version", "updated_at"])
        .collect()
}

impl<R: Registry> Projector for R {
    fn name(&self) -> &'static str {
        R::TABLE
    }

    fn apply<'a>(&'a self, batch: Batch<'a>) -> Applying<'a> {
        async move {
            let (touched, rows) = fold_stream_rows(
                batch.conn,
                batch.events,
                select::<R>(),
                R::KIND,
                |row: &Row<R::Details>| row.id,
                fold::<R>,
            )
            .await?;
            let rows: Vec<(&Row<R::Details>, bool)> =
                rows.iter().map(|(row, stored)| (row, *stored)).collect();
            save::<R>(batch.conn, batch.bookkeeping, &rows).await?;
            Ok(touched
                .into_iter()
                .chain(erase_elsewhere::<R>(batch.conn, batch.events).await?)
                .collect())
        }
        .boxed()
    }

    fn in_memory(&self) -> Box<dyn InMemory> {
        Box::new(Rows::<R> {
            rows: ById::default(),
            loaded: Vec::new(),
        })
    }
}

/// Empties what else of the read model holds the data of the people `events` erase (their
/// records' content, for patients), in the batch's transaction.
async fn erase_elsewhere<R: Registry>(
    conn: &mut PgConnection,
    events: &[Envelope],
) -> Result<Vec<Touched>, sqlx::Error> {
    let Some((statement, resource)) = R::ERASES_ELSEWHERE else {
        return Ok(vec![]);
    };
    let erased: Vec<Uuid> = events
        .iter()
        .filter(|e| e.events.iter().any(R::erases))
        .map(|e| e.stream_id)
        .collect();
    if erased.is_empty() {
        return Ok(vec![]);
    }
    let emptied: Vec<Uuid> = sqlx::query_scalar(statement)
        .bind(&erased)
        .fetch_all(conn)
        .await?;
    Ok(Touched::rows(resource, emptied))
}

/// Writes `rows` with the batch's bookkeeping, each row marked with whether it was read from
/// the table: an update for those, a plain insert for the rest (new people: the batch holds
/// their registration, fresh to this projection, so no row can exist), which costs
/// PostgreSQL about half of an upsert. A row read and gone since (deleted by hand) is
/// inserted again as the batch folded it.
async fn save<R: Registry>(
    conn: &mut PgConnection,
    batch: &Bookkeeping,
    rows: &[(&Row<R::Details>, bool)],
) -> Result<(), sqlx::Error> {
    let mut arguments = batch.arguments()?;
    bind(&mut arguments, column(rows, |r| r.id))?;
    bind(&mut arguments, column(rows, |r| r.name.as_deref()))?;
    let details: Vec<(&R::Details, bool)> = rows
        .iter()
        .map(|(r, stored)| (&r.details, *stored))
        .collect();
    R::bind(&mut arguments, &details)?;
    bind(&mut arguments, column(rows, |r| r.status.as_str()))?;
    bind(&mut arguments, column(rows, |r| r.version))?;
    bind(&mut arguments, column(rows, |r| r.updated_at))?;
    bind(
        &mut arguments,
        rows.iter().map(|(_, stored)| *stored).collect::<Vec<_>>(),
    )?;
    sqlx::query_with(AssertSqlSafe(save_statement::<R>()), arguments)
        .execute(conn)
        .await
        .map(|_| ())
}

/// The statement [`save`] runs, built from the registry's constants only: the batch's bookkeeping, then the rows as arrays from `$10`
/// (the bookkeeping takes `$1` to `$9`), updated where `stored` and inserted otherwise.
fn save_statement<R: Registry>() -> String {
    let types = [("id", "uuid"), ("name", "text")]
        .iter()
        .chain(R::DETAILS)
        .chain(&[
            ("status", "text"),
            ("version", "bigint"),
            ("updated_at", "timestamptz"),
        ])
        .map(|(_, sql_type)| *sql_type)
        .chain(["bool"]);
    let arrays: Vec<String> = types
        .enumerate()
        .map(|(i, sql_type)| format!("${}::{sql_type}[]", i + 10))
        .collect();
    let columns = columns::<R>();
    let set: Vec<String> = columns[1..]
        .iter()
        .map(|c| format!("{c} = c.{c}"))
        .collect();
    let (arrays, set, columns) = (arrays.join(", "), set.join(", "), columns.join(", "));
    let table = R::TABLE;
    format!(
        "{}, changed as (
             select * from unnest({arrays}) as c({columns}, stored)
         ), updated as (
             update {table} p set {set}
               from changed c
              where c.stored and p.id = c.id
             returning p.id
         )
         insert into {table} ({columns})
         select {columns} from changed where not stored or id not in (select id from updated)",
        batch_statement!("")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::physicians::Physicians;

    fn words(statement: &str) -> Vec<&str> {
        statement.split_whitespace().collect()
    }

    /// The statement as it was written by hand before the registries shared it.
    #[test]
    fn the_physicians_statement_updates_stored_rows_and_inserts_the_rest() {
        let expected = ", changed as (
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
               from changed where not stored or id not in (select id from updated)";
        let statement = save_statement::<Physicians>();
        let after_bookkeeping = &statement[batch_statement!("").len()..];
        assert_eq!(
            words(&after_bookkeeping.replace("( ", "(").replace(" )", ")")),
            words(&expected.replace("( ", "(").replace(" )", ")"))
        );
    }
}
