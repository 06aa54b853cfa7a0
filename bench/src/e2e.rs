//! `hap-bench e2e`: how long a client waits to read its own write through the whole system, at
//! a steady rate of writes.
//!
//! - **HAP run**: the whole system in-process as `hap serve` wires it (command and query
//!   routes on one local port, the append notifier, the publisher, the projectors of the
//!   instance whose read model the query routes read). At `--rate` per second, a client sends
//!   `POST /patients` and, as soon as it is answered, `GET /patients/{id}` with
//!   `X-Min-Position` set to the command's `position`, so the query waits until the patients
//!   projection has applied the registration: database, publisher, broker, projector, database,
//!   query. Each pair runs in a task of its own, so that a slow one delays no other.
//! - **Raw SQL run**: the same schedule on the floor of any write followed by a read: a
//!   one-row `INSERT` of the same event into a copy of `events`, then a `SELECT` of it by id,
//!   from a pool of as many connections as HAP's, with no HTTP and no broker.
//! - **Raw pipeline run** ([`pipeline`]): the floor of the same trip through a broker, in plain
//!   SQL and plain lapin: the `INSERT`, a publish with confirm to one quorum queue, a plain
//!   consumer that writes the row and acks, then the `SELECT`. It tells how much of HAP's
//!   latency the machine itself imposes on database, broker, database.
//!
//! Latency counts from when the pair was due (it is sent then, unless the bench falls
//! behind) until the query's answer has been read, and is the figure the targets are about.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use domain::ids::PatientId;
use hdrhistogram::Histogram;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::broker::{ScratchBroker, Servers};
use crate::cpu::settle;
use crate::database::ScratchDatabase;
use crate::load::{
    Outcome, Pace, PaceArgs, PoolUsage, WARMUP, keep_alive_client, latency_histogram, paced,
    sample_pool,
};
use crate::patient::BenchPatient;
use crate::profile::Profile;
use crate::raw;
use crate::report::Table;
use crate::scratch::Scratch;
use crate::system::{self, Hap, POOL_SIZE};

mod pipeline;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pace: PaceArgs,

    /// Pairs in flight at most; past it the schedule slips (and the achieved rate shows it).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    max_in_flight: u32,

    #[command(flatten)]
    pub servers: Servers,
}

/// The targets from the design: read-your-writes through the whole system, p50 and p99.
const TARGET_P50_MS: f64 = 5.0;
const TARGET_P99_MS: f64 = 25.0;

/// Runs the benchmark on the scratch servers that [`scratch::run`] opened.
pub async fn run(args: &Args, scratch: Scratch<'_>) -> anyhow::Result<()> {
    let pace = args.pace.with_in_flight(args.max_in_flight);
    settle().await;
    pace.announce("HAP run", "pairs");
    let (hap, legs) = hap_run(pace, scratch.database, scratch.broker, scratch.pool).await?;

    // As many connections as HAP's.
    let raw_pool = raw::events_pool(scratch.database, POOL_SIZE, Duration::from_secs(30)).await?;
    settle().await;
    pace.announce("raw SQL run", "pairs");
    let raw = raw_run(pace, &raw_pool).await?;
    settle().await;
    pace.announce("raw pipeline run", "pairs");
    let raw_pipeline = pipeline::run(pace, scratch.broker, &raw_pool).await?;
    raw_pool.close().await;

    let mut table = Table::paced();
    table.paced_row("HAP", pace.rate, &hap);
    table.paced_row("raw SQL", pace.rate, &raw);
    table.paced_row("raw pipeline", pace.rate, &raw_pipeline);
    println!("hap-bench e2e · {}", scratch.facts);
    println!(
        "{} pairs/s · {} s measured after {} s warm-up · up to {} in flight · HAP: POST \
         /patients, then GET /patients/{{id}} with X-Min-Position · raw SQL: INSERT, then \
         SELECT · raw pipeline: INSERT, publish with confirm to one quorum queue, a plain \
         consumer writes the row and acks, then SELECT",
        pace.rate,
        pace.seconds,
        WARMUP.as_secs(),
        pace.max_in_flight
    );
    println!();
    print!("{table}");
    println!();
    println!(
        "HAP p50 {:.2} ms (target ≤ {TARGET_P50_MS:.0}), p99 {:.2} ms (target ≤ {TARGET_P99_MS:.0})",
        hap.latency_ms(0.5),
        hap.latency_ms(0.99)
    );
    println!(
        "ratio (HAP / raw pipeline): p50 {:.2}, p99 {:.2}",
        hap.latency_ms(0.5) / raw_pipeline.latency_ms(0.5),
        hap.latency_ms(0.99) / raw_pipeline.latency_ms(0.99)
    );
    let mut breakdown = Table::new(["HAP leg", "count", "p50 ms", "p99 ms", "max ms"]);
    for (name, histogram) in [
        ("POST /patients (sent → 201)", &legs.command),
        ("GET with X-Min-Position (sent → 200)", &legs.query),
    ] {
        let ms = |micros: u64| format!("{:.2}", micros as f64 / 1000.0);
        breakdown.row(vec![
            name.to_owned(),
            histogram.len().to_string(),
            ms(histogram.value_at_quantile(0.5)),
            ms(histogram.value_at_quantile(0.99)),
            ms(histogram.max()),
        ]);
    }
    println!();
    print!("{breakdown}");
    if let Some((store, read)) = legs.pools {
        println!(
            "HAP pools during the run: event store {:.1} of {POOL_SIZE} connections open, {:.1} \
             idle; read model {:.1} open, {:.1} idle (on average)",
            store.open, store.idle, read.open, read.idle
        );
    }
    for (name, outcome) in [
        ("HAP", &hap),
        ("raw SQL", &raw),
        ("raw pipeline", &raw_pipeline),
    ] {
        if let Some(error) = &outcome.first_error {
            println!("first {name} error: {error}");
        }
    }
    Ok(())
}

/// Latency of each leg of HAP's successful pairs in the measured window, in µs, and how busy
/// HAP's pools were (event store, read model).
pub struct Legs {
    command: Histogram<u64>,
    query: Histogram<u64>,
    pools: Option<(PoolUsage, PoolUsage)>,
}

impl Legs {
    fn new() -> Self {
        Self {
            command: latency_histogram(),
            query: latency_histogram(),
            pools: None,
        }
    }

    fn record(&mut self, command: Duration, query: Duration) {
        for (histogram, took) in [(&mut self.command, command), (&mut self.query, query)] {
            let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
            histogram.saturating_record(micros.max(1));
        }
    }
}

/// The whole system in-process, driven by paced pairs over HTTP/1.1 keep-alive. Closes `pool`
/// at the end.
pub async fn hap_run(
    pace: Pace,
    database: &ScratchDatabase,
    broker: &ScratchBroker,
    pool: PgPool,
) -> anyhow::Result<(Outcome, Legs)> {
    let hap = Hap::start(
        broker,
        database,
        &pool,
        system::settings(database, broker),
        false,
    )
    .await?;
    let address = hap.server.address;
    let read_pool = hap.app.read.pool.clone();

    // One client for all pairs.
    let client = keep_alive_client(pace.max_in_flight)?;
    let base: Arc<str> = format!("http://{address}").into();
    let legs = Arc::new(Mutex::new(Legs::new()));

    let timeline = pace.timeline();
    // Both of HAP's pools, to tell a run limited by connections (idle near 0) from one
    // limited by something else.
    let store_sampler = sample_pool(pool.clone(), timeline);
    let read_sampler = sample_pool(read_pool, timeline);
    let profile = Profile::over("hap", timeline);
    let outcome = {
        let legs = Arc::clone(&legs);
        paced(pace, timeline, move |n, measured| {
            let (client, base, legs) = (client.clone(), Arc::clone(&base), Arc::clone(&legs));
            async move {
                let (command, query) = pair(&client, &base, n).await?;
                if measured {
                    legs.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .record(command, query);
                }
                Ok(())
            }
        })
        .await
    };

    let store_usage = store_sampler.await.context("The pool sampler panicked")?;
    let read_usage = read_sampler.await.context("The pool sampler panicked")?;
    profile.finish().await?;

    // The client went with the load closure, so no keep-alive connection holds the server.
    let stopped = hap.stop().await;
    pool.close().await;
    let outcome = outcome?;
    stopped?;
    let mut legs = std::mem::replace(
        &mut *legs.lock().unwrap_or_else(|e| e.into_inner()),
        Legs::new(),
    );
    legs.pools = Some((store_usage, read_usage));
    Ok((outcome, legs))
}

/// One pair: registers patient `n`, then reads it back at the command's position. Returns how
/// long each request took.
async fn pair(
    client: &reqwest::Client,
    base: &str,
    n: u64,
) -> anyhow::Result<(Duration, Duration)> {
    let sent = Instant::now();
    let body = system::post_patient(
        client,
        &format!("{base}/patients"),
        None,
        &patient(n).request(),
    )
    .await?;
    let created: Value =
        serde_json::from_slice(&body).context("POST /patients answered something not JSON")?;
    let (Some(id), Some(position)) = (created["id"].as_str(), created["position"].as_str()) else {
        bail!("POST /patients answered no id or position: {created}");
    };
    let command = sent.elapsed();

    let sent = Instant::now();
    let request = client
        .get(format!("{base}/patients/{id}"))
        .header("X-Min-Position", position);
    let body = system::send(request, "GET /patients/{id}", 200).await?;
    let patient: Value =
        serde_json::from_slice(&body).context("GET /patients/{id} answered something not JSON")?;
    if patient["id"].as_str() != Some(id) {
        bail!("GET /patients/{id} answered another patient: {patient}");
    }
    Ok((command, sent.elapsed()))
}

/// Patient `n` of a run; the document number is unique per run.
fn patient(n: u64) -> BenchPatient {
    BenchPatient::new("e2e", n)
}

/// The raw run's read, after the same event row as HAP's first append writes
/// ([`raw::insert_registration`]): the row by its id, as the query reads a patient by its id.
const RAW_SELECT: &str = "select payload from raw_events where event_id = $1";

/// Inserts patient `n`'s registration into `raw_events` in a transaction of its own, as HAP's
/// first append of it would store it; returns the event's id, the patient's id and the payload.
async fn insert_raw_event(pool: &PgPool, n: u64) -> anyhow::Result<(Uuid, Uuid, Value)> {
    let patient_id = PatientId::new();
    let payload = patient(n).event_payload(patient_id);
    let event_id = Uuid::now_v7();
    raw::insert_registration(pool, event_id, patient_id.as_uuid(), &payload).await?;
    Ok((event_id, patient_id.as_uuid(), payload))
}

/// The read that ends a raw pair: `select`, of one payload by the id bound as `$1`, for `id`.
async fn read_back(pool: &PgPool, select: &'static str, id: Uuid) -> anyhow::Result<()> {
    let _: Value = sqlx::query_scalar(select)
        .bind(id)
        .fetch_one(pool)
        .await
        .with_context(|| format!("{select} failed"))?;
    Ok(())
}

/// Paced INSERT-then-SELECT pairs on `raw_events`.
async fn raw_run(pace: Pace, pool: &PgPool) -> anyhow::Result<Outcome> {
    let pool = pool.clone();
    paced(pace, pace.timeline(), move |n, _| {
        let pool = pool.clone();
        async move {
            let (event_id, _, _) = insert_raw_event(&pool, n).await?;
            read_back(&pool, RAW_SELECT, event_id).await
        }
    })
    .await
}
