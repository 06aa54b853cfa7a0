//! The consultations projection: one row per consultation with the current names of its
//! patient and physician, which also serves each physician's agenda (a range of the
//! `(physician_id, starts_at)` index). Its queue carries patient and physician events too: the
//! names come from them, kept in `people` and copied into every consultation on a rename.

use chrono::{DateTime, Utc};
use domain::Event;
use domain::consultation::Status;
use futures::FutureExt;
use sqlx::PgConnection;
use sqlx::postgres::PgArguments;
use uuid::Uuid;

use crate::ById;
use crate::copy::CopyRows;
use crate::envelope::Envelope;
use crate::progress::Touched;
use crate::projector::{
    Applying, Batch, Bookkeeping, Chunk, InMemory, Loading, Projector, batch_statement, bind, each,
    load_continued,
};

pub struct Consultations;

#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    id: Uuid,
    patient_id: Uuid,
    patient_name: Option<String>,
    physician_id: Uuid,
    physician_name: Option<String>,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    status: String,
    reason: Option<String>,
    notes: Option<String>,
    failure_reason: Option<String>,
    failure_detail: Option<String>,
    cancellation_reason: Option<String>,
    version: i64,
    updated_at: DateTime<Utc>,
}

/// A person's name as of this batch, and whether the batch changed it.
struct Name {
    /// None once the person is erased.
    name: Option<String>,
    renamed: bool,
    /// Whether this batch holds the person's registration: fresh to this projection, so the
    /// person has no row yet.
    registered: bool,
}

/// The name a patient or physician event sets, if any: None for an erasure (and for a
/// registration read after one).
fn name_set_by(event: &Event) -> Option<(Uuid, Option<&str>)> {
    match event {
        Event::PatientRegistered(e) => Some((e.patient_id.as_uuid(), e.name.as_deref())),
        Event::PatientUpdated(e) => e.name.as_deref().map(|n| (e.patient_id.as_uuid(), Some(n))),
        Event::PatientErased(e) => Some((e.patient_id.as_uuid(), None)),
        Event::PhysicianRegistered(e) => Some((e.physician_id.as_uuid(), e.name.as_deref())),
        Event::PhysicianUpdated(e) => e
            .name
            .as_deref()
            .map(|n| (e.physician_id.as_uuid(), Some(n))),
        Event::PhysicianErased(e) => Some((e.physician_id.as_uuid(), None)),
        _ => None,
    }
}

/// Consultations' rows and people's names by id: those a batch or a chunk of a rebuild
/// touches.
#[derive(Default)]
struct Rows {
    /// Boxed: a chunk of a rebuild holds many consultations, and a map of rows this wide would
    /// copy and fault in tens of megabytes each time it grows.
    consultations: ById<Box<Row>>,
    people: ById<Name>,
    /// In a rebuild, the consultations read back from the shadow, and the people whose
    /// streams earlier chunks began (their names may be there already).
    loaded: Vec<Uuid>,
    people_continued: Vec<Uuid>,
}

impl Rows {
    /// Folds one stored event; returns the consultation whose row it changed.
    fn apply(&mut self, envelope: &Envelope) -> Option<Uuid> {
        let mut changed = None;
        for event in &envelope.events {
            changed = self.apply_event(envelope, event).or(changed);
        }
        changed
    }

    /// Folds one of the events a stored one reads as. A rename is only noted in `people`: the
    /// caller copies it into the consultations.
    fn apply_event(&mut self, envelope: &Envelope, event: &Event) -> Option<Uuid> {
        if let Some((id, name)) = name_set_by(event) {
            let registration = matches!(
                event,
                Event::PatientRegistered(_) | Event::PhysicianRegistered(_)
            );
            let registered = registration || self.people.get(&id).is_some_and(|p| p.registered);
            self.people.insert(
                id,
                Name {
                    name: name.map(str::to_owned),
                    renamed: true,
                    registered,
                },
            );
            return None;
        }
        let id = envelope.stream_id;
        if let Event::ConsultationSchedulingStarted(e) = event {
            let name_of = |person: Uuid| self.people.get(&person).and_then(|p| p.name.clone());
            let row = Row {
                id,
                patient_id: e.patient_id.as_uuid(),
                patient_name: name_of(e.patient_id.as_uuid()),
                physician_id: e.physician_id.as_uuid(),
                physician_name: name_of(e.physician_id.as_uuid()),
                starts_at: e.starts_at,
                ends_at: e.ends_at,
                status: Status::Requested.as_str().into(),
                reason: e.reason.clone(),
                notes: None,
                failure_reason: None,
                failure_detail: None,
                cancellation_reason: None,
                version: 0,
                updated_at: envelope.occurred_at,
            };
            self.consultations.insert(id, Box::new(row));
        }
        let row = self.consultations.get_mut(&id)?;
        match event {
            Event::ConsultationScheduled(_) => row.status = Status::Scheduled.as_str().into(),
            Event::ConsultationSchedulingFailed(e) => {
                row.status = Status::Failed.as_str().into();
                row.failure_reason = Some(e.reason.as_str().into());
                row.failure_detail = Some(e.detail.clone());
            }
            Event::ConsultationUpdated(e) => {
                if let Some(reason) = &e.reason {
                    row.reason = Some(reason.clone());
                }
                if let Some(notes) = &e.notes {
                    row.notes = Some(notes.clone());
                }
            }
            Event::ConsultationCancellationRequested(e) => {
                row.status = Status::CancellationRequested.as_str().into();
                row.cancellation_reason = Some(e.reason.clone());
            }
            Event::ConsultationCancelled(_) => row.status = Status::Cancelled.as_str().into(),
            Event::ConsultationDone(_) => row.status = Status::Done.as_str().into(),
            _ => {}
        }
        row.version = envelope.version;
        row.updated_at = envelope.occurred_at;
        Some(id)
    }
}

/// A person's latest name (none once erased), or the one a row shows when the person is not
/// known.
fn latest_name<'a>(
    people: &'a ById<Name>,
    person: &Uuid,
    shown: &'a Option<String>,
) -> Option<&'a str> {
    match people.get(person) {
        Some(known) => known.name.as_deref(),
        None => shown.as_deref(),
    }
}

impl InMemory for Rows {
    /// The consultations earlier chunks began, and the names of the people the chunk's new
    /// consultations name: a name set in an earlier chunk is read back, not held.
    fn load<'a>(&'a mut self, conn: &'a mut PgConnection, chunk: &'a Chunk<'a>) -> Loading<'a> {
        async move {
            let continued = chunk.continued();
            if !continued.is_empty() {
                let stored: Vec<Row> = sqlx::query_as(SELECT_ROWS)
                    .bind(&continued)
                    .fetch_all(&mut *conn)
                    .await?;
                for row in stored {
                    self.loaded.push(row.id);
                    self.consultations.insert(row.id, Box::new(row));
                }
            }
            self.people_continued = chunk
                .events
                .iter()
                .filter(|e| {
                    chunk.continues(e.stream_id)
                        && e.events.iter().any(|e| name_set_by(e).is_some())
                })
                .map(|e| e.stream_id)
                .collect();
            self.people_continued.sort_unstable();
            self.people_continued.dedup();
            // Names the chunk sets itself need no reading back: the latest one is what its
            // rows show.
            let set_here: ById<()> = chunk
                .events
                .iter()
                .flat_map(|e| e.events.iter().filter_map(name_set_by))
                .map(|(id, _)| (id, ()))
                .collect();
            let mut named = named_by(chunk.events.iter().copied());
            named.retain(|id| !set_here.contains_key(id));
            self.people = load_names(conn, &named).await?;
            Ok(())
        }
        .boxed()
    }

    fn fold(&mut self, event: &Envelope) {
        self.apply(event);
    }

    /// A name set for a person earlier chunks knew may be shown by their consultations, and a
    /// consultation naming a person not known yet shows no name until a later chunk registers
    /// them.
    fn changes_earlier_chunks(&self) -> bool {
        let unnamed = |person: &Uuid, shown: &Option<String>| {
            latest_name(&self.people, person, shown).is_none()
        };
        !self.people_continued.is_empty()
            || self.consultations.values().any(|r| {
                unnamed(&r.patient_id, &r.patient_name)
                    || unnamed(&r.physician_id, &r.physician_name)
            })
    }

    /// Every consultation shows its people's latest names as of the chunk, as the live
    /// renames leave it; [`FRESH_NAMES`] brings those of earlier chunks up to date. Only the
    /// names the chunk set are written, each replacing the one an earlier chunk wrote.
    fn into_rows(self: Box<Self>) -> Vec<CopyRows> {
        let Rows {
            consultations,
            people,
            loaded,
            people_continued,
        } = *self;
        // Sorted by the key they are stored under, without reaching into every boxed row.
        let mut rows: Vec<(Uuid, Box<Row>)> = consultations.into_iter().collect();
        rows.sort_unstable_by_key(|(id, _)| *id);
        let mut copy = CopyRows::new(
            "consultations",
            "id, patient_id, patient_name, physician_id, physician_name, starts_at, ends_at, \
             status, reason, notes, failure_reason, failure_detail, cancellation_reason, \
             version, updated_at",
        );
        for (_, r) in &rows {
            copy.row(&[
                &r.id,
                &r.patient_id,
                &latest_name(&people, &r.patient_id, &r.patient_name),
                &r.physician_id,
                &latest_name(&people, &r.physician_id, &r.physician_name),
                &r.starts_at,
                &r.ends_at,
                &r.status,
                &r.reason,
                &r.notes,
                &r.failure_reason,
                &r.failure_detail,
                &r.cancellation_reason,
                &r.version,
                &r.updated_at,
            ]);
        }
        let mut people: Vec<(Uuid, Name)> = people.into_iter().filter(|(_, p)| p.renamed).collect();
        people.sort_unstable_by_key(|(id, _)| *id);
        let mut names = CopyRows::new("people", "id, name");
        for (id, person) in &people {
            names.row(&[id, &person.name]);
        }
        vec![
            copy.replacing("id", "true", loaded),
            names.replacing("id", "true", people_continued),
        ]
    }
}

/// A consultation's rows by id (`$1`).
const SELECT_ROWS: &str = "select * from consultations where id = any($1)";

/// Gives every consultation its people's names as the `people` table holds them, where they
/// differ: a chunk of a rebuild writes the names as of itself, and a person renamed (or
/// registered) in a later chunk reaches the consultations of earlier ones here, in one pass
/// over the table rather than one lookup per rename. A person with no row keeps the name
/// shown, as [`latest_name`] leaves it.
const FRESH_NAMES: &str = "
    update consultations c set patient_name = p.name
      from people p
     where p.id = c.patient_id and c.patient_name is distinct from p.name;
    update consultations c set physician_name = p.name
      from people p
     where p.id = c.physician_id and c.physician_name is distinct from p.name";

/// The people named by the consultations `events` start, each once: their names are copied
/// into the new rows.
fn named_by<'a>(events: impl Iterator<Item = &'a Envelope>) -> Vec<Uuid> {
    let mut named: Vec<Uuid> = events
        .flat_map(|envelope| &envelope.events)
        .filter_map(|event| match event {
            Event::ConsultationSchedulingStarted(e) => {
                Some([e.patient_id.as_uuid(), e.physician_id.as_uuid()])
            }
            _ => None,
        })
        .flatten()
        .collect();
    named.sort_unstable();
    named.dedup();
    named
}

/// The names of the `named` people, as the `people` table holds them.
async fn load_names(conn: &mut PgConnection, named: &[Uuid]) -> Result<ById<Name>, sqlx::Error> {
    if named.is_empty() {
        return Ok(ById::default());
    }
    let names = sqlx::query_as::<_, (Uuid, Option<String>)>(
        "select id, name from people where id = any($1)",
    )
    .bind(named)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|(id, name)| {
        let name = Name {
            name,
            renamed: false,
            registered: false,
        };
        (id, name)
    })
    .collect();
    Ok(names)
}

impl Rows {
    /// The consultations `events` continue, and the people named by consultations started in
    /// this batch: their names are copied into the new rows.
    async fn load(conn: &mut PgConnection, events: &[Envelope]) -> Result<Self, sqlx::Error> {
        let consultations: ById<Box<Row>> = load_continued::<Row>(&mut *conn, events, SELECT_ROWS)
            .await?
            .into_iter()
            .map(|row| (row.id, Box::new(row)))
            .collect();
        let people = load_names(conn, &named_by(events.iter())).await?;
        Ok(Self {
            consultations,
            people,
            ..Self::default()
        })
    }
}

/// Makes the `changed` consultations show their people's latest names, so that the rows this
/// batch writes need no rename afterwards: the statement copies renames into the other
/// consultations only (a row changed twice by one statement keeps one change of the two).
fn show_latest_names(consultations: &mut ById<Box<Row>>, people: &ById<Name>, changed: &[Uuid]) {
    for id in changed {
        if let Some(row) = consultations.get_mut(id) {
            let names = (
                latest_name(people, &row.patient_id, &row.patient_name).map(str::to_owned),
                latest_name(people, &row.physician_id, &row.physician_name).map(str::to_owned),
            );
            (row.patient_name, row.physician_name) = names;
        }
    }
}

impl Projector for Consultations {
    fn name(&self) -> &'static str {
        crate::CONSULTATIONS
    }

    fn apply<'a>(&'a self, batch: Batch<'a>) -> Applying<'a> {
        async move {
            let mut rows = Rows::load(batch.conn, batch.events).await?;
            let mut changed: Vec<Uuid> =
                batch.events.iter().filter_map(|e| rows.apply(e)).collect();
            changed.sort();
            changed.dedup();
            let Rows {
                mut consultations,
                people,
                ..
            } = rows;
            show_latest_names(&mut consultations, &people, &changed);
            let changed_rows: Vec<&Row> = changed
                .iter()
                .filter_map(|id| consultations.get(id))
                .map(|row| &**row)
                .collect();
            let renamed: Vec<(Uuid, &Name)> = people
                .iter()
                .filter(|(_, p)| p.renamed)
                .map(|(id, p)| (*id, p))
                .collect();
            // Renames reach every consultation of the person, not only this batch's.
            let copied = save(batch.conn, batch.bookkeeping, &changed_rows, &renamed).await?;
            changed.extend(copied);
            Ok(Touched::rows("consultation", changed))
        }
        .boxed()
    }

    fn in_memory(&self) -> Box<dyn InMemory> {
        Box::new(Rows::default())
    }

    fn after_chunks(&self) -> Option<&'static str> {
        Some(FRESH_NAMES)
    }
}

/// Upserts `rows`, saves people's new names and copies them into their other
/// consultations (a registration's too: a consultation applied before its patient's
/// registration, after a retry, shows no name until then), with the batch's bookkeeping, in
/// one statement; returns the other consultations changed. The people registered in this
/// batch are inserted plainly (cheaper than an upsert, docs/benchmarks.md); renames are
/// upserted.
async fn save(
    conn: &mut PgConnection,
    batch: &Bookkeeping,
    rows: &[&Row],
    people: &[(Uuid, &Name)],
) -> Result<Vec<Uuid>, sqlx::Error> {
    let mut arguments = batch.arguments()?;
    bind_rows(&mut arguments, rows)?;
    bind_people(&mut arguments, people)?;
    sqlx::query_scalar_with(SAVE, arguments)
        .fetch_all(conn)
        .await
}

/// The consultations' columns, as `$10` to `$24` of [`SAVE`].
fn bind_rows(arguments: &mut PgArguments, rows: &[&Row]) -> Result<(), sqlx::Error> {
    bind(arguments, each(rows, |r| r.id))?;
    bind(arguments, each(rows, |r| r.patient_id))?;
    bind(arguments, each(rows, |r| r.patient_name.as_deref()))?;
    bind(arguments, each(rows, |r| r.physician_id))?;
    bind(arguments, each(rows, |r| r.physician_name.as_deref()))?;
    bind(arguments, each(rows, |r| r.starts_at))?;
    bind(arguments, each(rows, |r| r.ends_at))?;
    bind(arguments, each(rows, |r| r.status.as_str()))?;
    bind(arguments, each(rows, |r| r.reason.as_deref()))?;
    bind(arguments, each(rows, |r| r.notes.as_deref()))?;
    bind(arguments, each(rows, |r| r.failure_reason.as_deref()))?;
    bind(arguments, each(rows, |r| r.failure_detail.as_deref()))?;
    bind(arguments, each(rows, |r| r.cancellation_reason.as_deref()))?;
    bind(arguments, each(rows, |r| r.version))?;
    bind(arguments, each(rows, |r| r.updated_at))
}

/// The people's ids, names and whether this batch registered them, as `$25` to `$27` of
/// [`SAVE`].
fn bind_people(arguments: &mut PgArguments, people: &[(Uuid, &Name)]) -> Result<(), sqlx::Error> {
    let people: Vec<&(Uuid, &Name)> = people.iter().collect();
    bind(arguments, each(&people, |(id, _)| *id))?;
    bind(arguments, each(&people, |(_, p)| p.name.as_deref()))?;
    bind(arguments, each(&people, |(_, p)| p.registered))
}

// Each name is looked up on its own (a null one is an erasure, so it replaces the name shown
// rather than falling back to it): a join would match a consultation whose patient and
// physician were both renamed twice, and an update applies only one match per row. The
// consultations are found through their patient and physician indexes (`= any($24)`): an
// `in (select … from renamed)` there scanned the whole table for every batch of names
// (docs/benchmarks.md, 2026-12-03).
const SAVE: &str = batch_statement!(
    ", upserted as (
             insert into consultations (id, patient_id, patient_name, physician_id,
                                        physician_name, starts_at, ends_at, status, reason,
                                        notes, failure_reason, failure_detail,
                                        cancellation_reason, version, updated_at)
             select * from unnest($10::uuid[], $11::uuid[], $12::text[], $13::uuid[],
                                  $14::text[], $15::timestamptz[], $16::timestamptz[],
                                  $17::text[], $18::text[], $19::text[], $20::text[],
                                  $21::text[], $22::text[], $23::bigint[],
                                  $24::timestamptz[])
             on conflict (id) do update set
                 patient_name = excluded.patient_name,
                 physician_name = excluded.physician_name, status = excluded.status,
                 reason = excluded.reason, notes = excluded.notes,
                 failure_reason = excluded.failure_reason,
                 failure_detail = excluded.failure_detail,
                 cancellation_reason = excluded.cancellation_reason,
                 version = excluded.version, updated_at = excluded.updated_at
         ), renamed as (
             select * from unnest($25::uuid[], $26::text[], $27::bool[])
                 as r(id, name, registered)
         ), new_people as (
             insert into people (id, name) select id, name from renamed where registered
         ), saved as (
             insert into people (id, name) select id, name from renamed where not registered
             on conflict (id) do update set name = excluded.name
         )
         update consultations c
            set patient_name = case when c.patient_id = any($25)
                                    then (select name from renamed where id = c.patient_id)
                                    else c.patient_name end,
                physician_name = case when c.physician_id = any($25)
                                      then (select name from renamed
                                             where id = c.physician_id)
                                      else c.physician_name end
          where (c.patient_id = any($25) or c.physician_id = any($25))
            and c.id <> all($10)
         returning c.id"
);
