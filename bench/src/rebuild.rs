//! `hap-bench rebuild`: how fast HAP rebuilds an instance's read model from the event store,
//! against the plain paged read of the same store that the rebuild reads through.
//!
//! The store is filled with `--events` events by bulk SQL (`generate_series`), shaped exactly
//! as HAP stores them: per-stream versions from 1 without gaps, time-ordered (v7-like) ids, and
//! payloads as the domain serialises them, which is checked by decoding and re-encoding one
//! event of each type. The mix, in blocks of 20 events: 4 patients registered, 1 physician
//! registered, 10 consultations requested (`ConsultationSchedulingStarted`, naming those
//! patients and that physician), then the 4 patients updated (a new phone number) and the
//! physician renamed (which the consultations projection copies into their consultations).
//! The personal fields are then sealed under each person's key, as `hap migrate-events` seals
//! a store of an earlier release, so the rebuild opens them as it would in production. The
//! table is vacuumed before the runs, so neither pays for setting hint bits.
//!
//! - **HAP run**: `projections::rebuild::rebuild` of every projection of a fresh instance, as
//!   `hap rebuild --all` runs it (a store pool of 4): a shadow schema, the store read with one
//!   binary `COPY` (`EventStore::scan`), decoded and folded in memory `--chunk-events` at a
//!   time, each chunk's rows copied in, the catch-up, the final catch-up under the lock and the
//!   schema swap. Row counts and names are checked afterwards, and the process's peak memory
//!   printed. The mix is stored 50,000 events per statement (`BLOCKS_PER_CHUNK`), so chunks of
//!   a multiple of 50,000 (the default's) begin no stream an earlier chunk began; any other
//!   size makes chunks read rows and names back from the shadow.
//! - **Raw run**: a plain keyset scan of the same table by position, in pages of the same
//!   size, decoded into the same `RecordedEvent`s: reading every event, and nothing else.
//! - **read_all alone**: the pages the rebuild reads, through `EventStore::read_all`, and
//!   nothing else; shown beside the others to tell reading from projecting in HAP's time.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use domain::event::{
    ConsultationSchedulingStarted, PatientRegistered, PatientUpdated, PhysicianRegistered,
    PhysicianUpdated,
};
use domain::{AggregateKind, Event};
use eventstore::{EventStore, GlobalCheckpoint, RecordedEvent};
use privacy::{MasterKey, Vault};
use serde_json::Value;
use sqlx::PgPool;

use crate::broker::Servers;
use crate::cpu::{CpuWindow, machine_cpu, settle};
use crate::database::ScratchDatabase;
use crate::load::Drained;
use crate::profile::Profile;
use crate::report::{Facts, Table};
use crate::system::{self, INSTANCE, POOL_SIZE};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events in the store (rounded down to a multiple of 20, the size of one block of the mix).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(20..))]
    events: u64,

    /// Events the rebuild folds in memory at most before writing them out, as `hap rebuild
    /// --chunk-events`.
    #[arg(long, default_value_t = projections::rebuild::CHUNK_EVENTS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    chunk_events: usize,

    #[command(flatten)]
    servers: Servers,
}

/// The target from the design, in events per second of HAP's rebuild.
const TARGET_RATE: f64 = 150_000.0;
/// Events per block of the mix; see the module documentation.
const BLOCK: u64 = 20;
const PATIENTS_PER_BLOCK: u64 = 4;
const CONSULTATIONS_PER_BLOCK: u64 = 10;
/// Blocks stored per group of statements, each statement its own transaction.
const BLOCKS_PER_CHUNK: u64 = 2500;
/// The page size of the raw scan: the rebuild's.
const PAGE: i64 = 5000;
/// The connections of the store's pool in `hap rebuild`.
const REBUILD_POOL: u32 = 4;
/// Events sealed per transaction when the store is sealed.
const SEAL_BATCH: i64 = 10_000;

pub async fn run(args: Args) -> anyhow::Result<()> {
    let database = ScratchDatabase::new(&args.servers.database_url)?;
    eprintln!("hap-bench rebuild: scratch database {}", database.name());
    database
        .run(async |database| bench(&args, database).await)
        .await
}

async fn bench(args: &Args, database: &ScratchDatabase) -> anyhow::Result<()> {
    let pool = database.create(POOL_SIZE).await?;
    let facts = Facts::gather(&pool).await?;
    let blocks = args.events / BLOCK;

    eprintln!("storing {} events…", blocks * BLOCK);
    let filling = Instant::now();
    let mut first = 0;
    while first < blocks {
        let last = (first + BLOCKS_PER_CHUNK).min(blocks);
        fill(&pool, first, last).await?;
        first = last;
    }
    sqlx::raw_sql("vacuum (analyze) events")
        .execute(&pool)
        .await
        .context("Failed to vacuum the events table")?;
    let stored: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&pool)
        .await
        .context("Failed to count the stored events")?;
    let stored = u64::try_from(stored).unwrap_or(0);
    eprintln!(
        "stored {stored} events in {:.1} s",
        filling.elapsed().as_secs_f64()
    );
    check_payloads(&pool).await?;
    // As HAP keeps them today: the personal fields sealed under each person's key, by the
    // sealing `hap migrate-events` runs over a store of an earlier release.
    let master = Arc::new(MasterKey::insecure_development());
    let sealing = Instant::now();
    let sealed = seal(&pool, &Vault::new(pool.clone(), master.clone())).await?;
    eprintln!(
        "sealed the personal fields of {sealed} events in {:.1} s",
        sealing.elapsed().as_secs_f64()
    );
    pool.close().await;

    // The live read model must exist: the rebuild locks it for its last stretch and swaps.
    let read = system::read_model(database).await?;
    let schema = projections::schema::schema_name(INSTANCE);
    let store_pool = api::db::connect(database.url(), REBUILD_POOL, false)
        .await
        .context("Failed to connect to the store for the rebuild")?;
    let vault = Vault::new(store_pool.clone(), master);
    let store = EventStore::new(store_pool).opening_with(Arc::new(vault));
    let projections = projections::rebuild::all_projections();

    settle().await;
    eprintln!("HAP run: rebuild --all of {stored} events…");
    let profile = Profile::start("hap").await?;
    let hap_cpu = CpuWindow::open();
    let started = Instant::now();
    let report = projections::rebuild::rebuild(
        &store,
        database.url(),
        &schema,
        &projections,
        false,
        false,
        args.chunk_events,
    )
    .await
    .context("The rebuild failed")?;
    let hap = Drained {
        count: report.events,
        elapsed: started.elapsed(),
    };
    let hap_cpu = hap_cpu.close();
    profile.finish().await?;
    let rows = check_read_model(&read.pool, blocks).await?;
    read.pool.close().await;

    settle().await;
    eprintln!("raw run: keyset scan of {stored} events…");
    let profile = Profile::start_baseline("raw").await?;
    let raw_cpu = CpuWindow::open();
    let raw = keyset_scan(store.pool()).await?;
    let raw_cpu = raw_cpu.close();
    profile.finish().await?;
    settle().await;
    eprintln!("read_all alone: {stored} events…");
    let read_all = scan(&store).await?;
    store.pool().close().await;

    let mut table = Table::drains("events");
    table.drain_row("HAP", &hap);
    table.drain_row("raw", &raw);
    table.drain_row("read_all alone", &read_all);
    println!("hap-bench rebuild · {facts}");
    println!(
        "{stored} events: {} patients and {} physicians registered and updated, {} consultations \
         requested · rebuild --all vs a keyset scan by position ({PAGE} a page)",
        blocks * PATIENTS_PER_BLOCK,
        blocks,
        blocks * CONSULTATIONS_PER_BLOCK
    );
    println!();
    print!("{table}");
    println!();
    println!(
        "HAP rate: {:.0} events/s   (target ≥ {TARGET_RATE:.0})",
        hap.rate()
    );
    println!("ratio (HAP / raw): {:.2}", hap.rate() / raw.rate());
    println!("{}", machine_cpu(hap_cpu, raw_cpu));
    println!("rebuilt read model: {rows}");
    if let Some(peak) = report.peak_rss {
        println!(
            "peak memory of the bench's process by the end of HAP's rebuild: {} MiB resident, \
             folding {} events at a time",
            peak / (1024 * 1024),
            args.chunk_events
        );
    }
    Ok(())
}

/// `(lpad(to_hex(…)))::uuid` of a v7-like id: 48 bits of milliseconds (a fixed instant plus
/// `n`), version 7, `kind` in the next 12 bits, the variant, and `n` again in the last 60 bits,
/// so ids are unique per kind and sort by creation as HAP's v7 ids do.
fn v7(kind: u16, n: &str) -> String {
    format!(
        "(lpad(to_hex(1795000000000 + {n}), 12, '0') || '7' || '{kind:03x}' || '8' \
         || lpad(to_hex({n}::bigint), 15, '0'))::uuid"
    )
}

/// Id kinds: one per stream kind, and one per event type for event ids.
const PATIENT: u16 = 1;
const PHYSICIAN: u16 = 2;
const CONSULTATION: u16 = 3;
const EVENT: u16 = 0x100;

/// Stores blocks `first..last` of the mix, one statement per event type, in the mix's order.
async fn fill(pool: &PgPool, first: u64, last: u64) -> anyhow::Result<()> {
    let blocks = first..last;
    let patients = Streams::of(AggregateKind::Patient, PATIENT, PATIENTS_PER_BLOCK, &blocks);
    let physicians = Streams::of(AggregateKind::Physician, PHYSICIAN, 1, &blocks);
    let consultations = Streams::of(
        AggregateKind::Consultation,
        CONSULTATION,
        CONSULTATIONS_PER_BLOCK,
        &blocks,
    );
    let requested = consultation_requested();
    let statements = [
        insert(
            &patients,
            PatientRegistered::EVENT_TYPE,
            1,
            PATIENT_REGISTERED,
        ),
        insert(
            &physicians,
            PhysicianRegistered::EVENT_TYPE,
            1,
            PHYSICIAN_REGISTERED,
        ),
        insert(
            &consultations,
            ConsultationSchedulingStarted::EVENT_TYPE,
            1,
            &requested,
        ),
        insert(&patients, PatientUpdated::EVENT_TYPE, 2, PATIENT_UPDATED),
        insert(
            &physicians,
            PhysicianUpdated::EVENT_TYPE,
            2,
            PHYSICIAN_UPDATED,
        ),
    ];
    for statement in statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(pool)
            .await
            .context("Failed to store the bench's events")?;
    }
    Ok(())
}

/// The payloads of the mix's events, as SQL over `n` (the stream's number) and `stream_id`
/// (see [`insert`]); [`check_payloads`] checks them against the domain's.
const PATIENT_REGISTERED: &str = "jsonb_build_object('patientId', stream_id, \
     'name', 'Bench Patient ' || n, 'birthDate', '1980-05-17'::text, \
     'documentNumber', 'bench-' || n, 'email', 'bench-' || n || '@example.org', \
     'phone', '+55 11 5555-0100'::text)";
const PHYSICIAN_REGISTERED: &str = "jsonb_build_object('physicianId', stream_id, \
     'name', 'Dr. Bench ' || n, 'specialty', 'cardiology'::text, 'licenseNumber', 'CRM-' || n)";
const PATIENT_UPDATED: &str =
    "jsonb_build_object('patientId', stream_id, 'phone', '+55 11 5555-0199'::text)";
const PHYSICIAN_UPDATED: &str =
    "jsonb_build_object('physicianId', stream_id, 'name', 'Dr. Bench ' || n || ' Jr.')";

/// The payload of a consultation's request, as SQL over `n`, `stream_id` and `starts_at`:
/// consultation n of block b names patient b·4 + n mod 4 and physician b.
fn consultation_requested() -> String {
    format!(
        "jsonb_build_object('consultationId', stream_id, \
         'patientId', {patient}, 'physicianId', {physician}, \
         'startsAt', to_char(starts_at at time zone 'UTC', \
                             'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
         'endsAt', to_char((starts_at + interval '30 minutes') at time zone 'UTC', \
                           'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
         'reason', 'check-up'::text)",
        patient = v7(
            PATIENT,
            &format!(
                "(n / {CONSULTATIONS_PER_BLOCK} * {PATIENTS_PER_BLOCK} + n % {PATIENTS_PER_BLOCK})"
            )
        ),
        physician = v7(PHYSICIAN, &format!("(n / {CONSULTATIONS_PER_BLOCK})")),
    )
}

/// The streams of one kind that a group of blocks of the mix writes: their aggregate, the kind
/// in their ids (see [`v7`]) and their numbers, `first..last`.
struct Streams {
    aggregate: AggregateKind,
    kind: u16,
    first: u64,
    last: u64,
}

impl Streams {
    /// The streams of `blocks`, `per_block` of them in each.
    fn of(aggregate: AggregateKind, kind: u16, per_block: u64, blocks: &Range<u64>) -> Self {
        Self {
            aggregate,
            kind,
            first: blocks.start * per_block,
            last: blocks.end * per_block,
        }
    }
}

/// Seals every clear personal event, a batch of [`SEAL_BATCH`] at a time, then vacuums again;
/// how many it sealed.
async fn seal(pool: &PgPool, vault: &Vault) -> anyhow::Result<u64> {
    let mut sealed = 0;
    loop {
        match privacy::migration::seal_clear_events(pool, vault, SEAL_BATCH)
            .await
            .context("Failed to seal the personal events")?
        {
            0 => break,
            batch => sealed += batch,
        }
    }
    sqlx::raw_sql("vacuum (analyze) events")
        .execute(pool)
        .await
        .context("Failed to vacuum the events table")?;
    Ok(sealed)
}

/// One `insert … select … from generate_series` of `event_type` events at `version` of
/// `streams`, with `payload` built from `n` (the stream's number), `stream_id` and `starts_at`
/// (a slot in the future, for consultations).
fn insert(streams: &Streams, event_type: &str, version: u16, payload: &str) -> String {
    let (kind, first, last) = (streams.kind, streams.first, streams.last);
    let aggregate_type = streams.aggregate.as_str();
    // Event ids: a kind per event type (stream kind and version), numbered like the streams.
    let event_kind = EVENT + kind * 16 + version;
    format!(
        "insert into events (event_id, stream_id, aggregate_type, version, event_type, payload,
                             tenant_id, correlation_id, schema_version, occurred_at)
         select {event_id}, stream_id, '{aggregate_type}', {version}, '{event_type}', {payload},
                'default', gen_random_uuid()::text, 1, now()
           from (select n, {stream_id} as stream_id,
                        date_trunc('hour', now()) + interval '1 day'
                            + (n % 5000) * interval '30 minutes' as starts_at
                   from generate_series({first}::bigint, {last}::bigint - 1) as n) s
          order by n",
        event_id = v7(event_kind, "n"),
        stream_id = v7(kind, "n"),
    )
}

/// Checks that one stored event of each type decodes as a domain event and encodes back to the
/// same payload: the bulk insert wrote what HAP would have.
async fn check_payloads(pool: &PgPool) -> anyhow::Result<()> {
    let samples: Vec<(String, Value)> = sqlx::query_as(
        "select distinct on (event_type) event_type, payload from events
          order by event_type, position",
    )
    .fetch_all(pool)
    .await
    .context("Failed to read sample events")?;
    for (event_type, payload) in samples {
        let event = Event::from_parts(&event_type, &payload.to_string())
            .with_context(|| format!("A stored {event_type} does not decode: {payload}"))?;
        let (_, encoded) = event.into_parts();
        if encoded != payload {
            bail!("A stored {event_type} is not as HAP writes it: {payload}, not {encoded}");
        }
    }
    Ok(())
}

/// Checks the rebuilt read model's row counts against the mix; returns them as words.
async fn check_read_model(read: &PgPool, blocks: u64) -> anyhow::Result<String> {
    let count = async |table: &str| -> anyhow::Result<u64> {
        let count: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from {table}")))
                .fetch_one(read)
                .await
                .with_context(|| format!("Failed to count the rebuilt {table}"))?;
        Ok(u64::try_from(count).unwrap_or(0))
    };
    let (patients, physicians, consultations) = (
        count("patients").await?,
        count("physicians").await?,
        count("consultations").await?,
    );
    let renamed: i64 =
        sqlx::query_scalar("select count(*) from consultations where physician_name like '% Jr.'")
            .fetch_one(read)
            .await
            .context("Failed to count the renamed consultations")?;
    let expected = (
        blocks * PATIENTS_PER_BLOCK,
        blocks,
        blocks * CONSULTATIONS_PER_BLOCK,
    );
    if (patients, physicians, consultations) != expected
        || u64::try_from(renamed).unwrap_or(0) != expected.2
    {
        bail!(
            "the rebuilt read model has {patients} patients, {physicians} physicians and \
             {consultations} consultations ({renamed} with the physician's new name), not \
             {} / {} / {}: some events did not decode or apply",
            expected.0,
            expected.1,
            expected.2
        );
    }
    Ok(format!(
        "{patients} patients, {physicians} physicians, {consultations} consultations (all with \
         the physician's new name), as expected"
    ))
}

/// Reads every event in pages of `PAGE` by a plain keyset scan of the primary key.
async fn keyset_scan(pool: &PgPool) -> anyhow::Result<Drained> {
    // Every column of `RecordedEvent`, as the store names them, a page after a position.
    let keyset_page = format!(
        "select {} from events where position > $1 order by position limit $2",
        eventstore::RECORDED_EVENT_COLUMNS
    );
    let started = Instant::now();
    let mut after = 0_i64;
    let mut count = 0;
    loop {
        let page: Vec<RecordedEvent> = sqlx::query_as(sqlx::AssertSqlSafe(keyset_page.as_str()))
            .bind(after)
            .bind(PAGE)
            .fetch_all(pool)
            .await
            .context("Failed to read the events")?;
        count += page.len() as u64;
        let Some(last) = page.last() else {
            break;
        };
        after = last.position;
        if (page.len() as i64) < PAGE {
            break;
        }
    }
    Ok(Drained {
        count,
        elapsed: started.elapsed(),
    })
}

/// Reads every event in pages of `PAGE` through `EventStore::read_all`, as the rebuild does.
async fn scan(store: &EventStore) -> anyhow::Result<Drained> {
    let started = Instant::now();
    let mut checkpoint = GlobalCheckpoint::START;
    let mut count = 0;
    loop {
        let page = store
            .read_all(checkpoint, PAGE)
            .await
            .context("Failed to read the events")?;
        count += page.len() as u64;
        let Some(last) = page.last() else {
            break;
        };
        checkpoint = last.checkpoint();
        if (page.len() as i64) < PAGE {
            break;
        }
    }
    Ok(Drained {
        count,
        elapsed: started.elapsed(),
    })
}
