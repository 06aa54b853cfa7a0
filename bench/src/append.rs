//! `hap-bench append`: how fast HAP's command side records new facts, against the plainest
//! way to record the same row.
//!
//! - **HAP run**: the real router in-process, driven over HTTP/1.1 keep-alive with
//!   `POST /patients`: verifying the client's bearer token (each client has its own, HS256, as
//!   `hap token` makes them; `--no-auth` runs without), extraction, validation, loading the
//!   new patient's stream (a cache miss, so one read that finds nothing), the one-statement
//!   append (event and document-number claim), metrics, response.
//! - **Raw run**: one-row autocommit inserts of the same event into a table shaped exactly like
//!   `events`, from a pool with one connection per client.
//!
//! Both runs use the same scratch database, concurrency and duration, one after the other in
//! one process, so the ratio between them is comparable across machines where the absolute
//! rates are not.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use api::config::Settings;
use domain::ids::PatientId;
use futures::future::try_join_all;
use hap_support::server::HttpServer;
use sqlx::PgPool;
use uuid::Uuid;

use crate::cpu::settle;
use crate::database::ScratchDatabase;
use crate::load::{Outcome, PoolUsage, Timeline, WARMUP, closed_loop, sample_pool};
use crate::patient::BenchPatient;
use crate::profile::Profile;
use crate::raw;
use crate::report::{self, Facts, Table};
use crate::system;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Concurrent clients in each run; the raw run also opens this many connections.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    clients: u32,

    /// Measured seconds of each run, after a 1-second warm-up.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,

    /// PostgreSQL server to benchmark on; a scratch database is created there and dropped.
    #[arg(
        long,
        env = "HAP_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,

    /// Connections in HAP's own pool (what `HAP_DB_POOL_SIZE` sets in production).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pool_size: u32,

    /// Run HAP with authentication off (`--insecure-no-auth`) instead of a token per client.
    #[arg(long)]
    no_auth: bool,
}

impl Args {
    fn clients(&self) -> usize {
        self.clients as usize
    }

    fn measure(&self) -> Duration {
        Duration::from_secs(self.seconds)
    }
}

/// The target from the design: HAP's command side keeps up with raw inserts.
const TARGET_RATIO: f64 = 1.0;

pub async fn run(args: Args) -> anyhow::Result<()> {
    let database = ScratchDatabase::new(&args.database_url)?;
    eprintln!("hap-bench append: scratch database {}", database.name());
    database
        .run(async |database| bench(&args, database).await)
        .await
}

async fn bench(args: &Args, database: &ScratchDatabase) -> anyhow::Result<()> {
    let pool = database.create(args.pool_size).await?;
    let facts = Facts::gather(&pool).await?;

    settle().await;
    eprintln!(
        "HAP run: {} clients, {} s warm-up + {} s…",
        args.clients,
        WARMUP.as_secs(),
        args.seconds
    );
    let (hap, hap_pool) = hap_run(args, database, pool).await?;
    require_success("HAP run", &hap)?;

    settle().await;
    eprintln!(
        "raw run: {} clients, {} s warm-up + {} s…",
        args.clients,
        WARMUP.as_secs(),
        args.seconds
    );
    let raw = raw_run(args, database).await?;
    require_success("raw run", &raw)?;

    let mut table = Table::runs();
    let hap_row = if args.no_auth {
        "HAP (no auth)"
    } else {
        "HAP (tokens)"
    };
    table.run_row(hap_row, args.clients(), args.pool_size, &hap);
    table.run_row("raw", args.clients(), args.clients, &raw);
    println!("hap-bench append · {facts}");
    println!(
        "{} clients · {} s measured after {} s warm-up · POST /patients vs one-row INSERT",
        args.clients,
        args.seconds,
        WARMUP.as_secs()
    );
    report::print_with_ratio(&table, hap.rate(), raw.rate(), TARGET_RATIO);
    println!(
        "HAP pool during the run: {:.1} of {} connections open, {:.1} idle on average",
        hap_pool.open, args.pool_size, hap_pool.idle
    );
    for (name, outcome) in [("HAP", &hap), ("raw", &raw)] {
        if let Some(error) = &outcome.first_error {
            println!("first {name} error: {error}");
        }
    }
    Ok(())
}

/// A run where nothing succeeded measured nothing; its first error is the one line to show.
fn require_success(run: &str, outcome: &Outcome) -> anyhow::Result<()> {
    if outcome.ok > 0 {
        return Ok(());
    }
    match &outcome.first_error {
        Some(error) => bail!("{run}: no operation succeeded; the first failed: {error}"),
        None => bail!("{run}: no operation completed"),
    }
}

/// Serves HAP's router on a free local port and drives it with `POST /patients`. Returns the
/// outcome and how busy HAP's pool was; the pool is closed before returning so that the raw
/// run has the server's connections to itself.
async fn hap_run(
    args: &Args,
    database: &ScratchDatabase,
    pool: PgPool,
) -> anyhow::Result<(Outcome, PoolUsage)> {
    let mut settings = Settings::defaults();
    if args.no_auth {
        settings.insecure_no_auth = true;
    } else {
        settings.auth_secret = Some(
            "hap-bench-secret-long-enough-for-hs256-0123456789"
                .parse()
                .map_err(anyhow::Error::msg)?,
        );
        // What a real deployment pays for hashing claims is part of the measure.
        settings.data_key = Some(
            "aGFwLWJlbmNoLW1hc3Rlci1rZXktMzItYnl0ZXMhISE="
                .parse()
                .map_err(anyhow::Error::msg)?,
        );
    }
    settings.database_url = database.url().to_owned();
    settings.db_pool_size = args.pool_size;
    // The command routes never read the read model; handing them the store's pool keeps this
    // run to the command side (a `command`-role instance), as the projector has a run of its own.
    let read = projections::ReadModel::new(pool.clone());
    // The event store as `hap serve` configures it, group commit included.
    let store = api::db::event_store(pool.clone());
    // One token per client, as `hap token` signs them.
    let tokens: Arc<Vec<Option<String>>> = Arc::new(
        (0..args.clients())
            .map(|client| {
                let request = api::auth::TokenRequest {
                    tenant: "bench".into(),
                    subject: format!("client-{client}"),
                    scope: "patients:write".into(),
                    ttl: Duration::from_secs(3600),
                };
                (!args.no_auth)
                    .then(|| api::auth::mint(&settings, &request))
                    .transpose()
            })
            .collect::<Result<_, _>>()?,
    );
    let app = api::AppState::new(store, read, settings, Default::default())?;

    let server = HttpServer::start(app, true, false).await?;
    let address = server.address;

    // One client for all tasks, like a fleet of keep-alive clients sharing a proxy: at most one
    // connection per task, kept open between requests, so connection set-up is not measured.
    let client = reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .pool_max_idle_per_host(args.clients())
        .build()
        .context("Failed to build the HTTP client")?;
    let url: Arc<str> = format!("http://{address}/patients").into();

    let timeline = Timeline::starting_now(WARMUP, args.measure());
    let sampler = sample_pool(pool.clone(), timeline);
    let profile = Profile::over("hap", timeline);
    let outcome = closed_loop(args.clients(), timeline, move |client_id, n| {
        let client = client.clone();
        let url = Arc::clone(&url);
        let tokens = Arc::clone(&tokens);
        async move {
            let body = BenchPatient::new("bench", format_args!("{client_id}-{n}")).request();
            let token = tokens[client_id].as_deref();
            system::post_patient(&client, &url, token, &body).await?;
            Ok(())
        }
    })
    .await;
    let usage = sampler.await;
    profile.finish().await?;

    // The client went with the load closure, so no keep-alive connection holds the server.
    let stopped = server.stop().await;
    pool.close().await;
    let outcome = outcome?;
    let usage = usage.context("The pool sampler panicked")?;
    stopped?;
    Ok((outcome, usage))
}

/// One-row inserts of a PatientRegistered event into `raw_events`, a copy of `events` with its
/// identity column, defaults, check and indexes (`including all` copies every one of them, so
/// each insert maintains the same four indexes).
async fn raw_run(args: &Args, database: &ScratchDatabase) -> anyhow::Result<Outcome> {
    // Only setup can wait for a connection (there is one per client): fail it soon.
    let pool = raw::events_pool(database, args.clients, Duration::from_secs(10)).await?;
    open_connections(&pool, args.clients).await?;

    let timeline = Timeline::starting_now(WARMUP, args.measure());
    let profile = Profile::over_baseline("raw", timeline);
    let load_pool = pool.clone();
    let outcome = closed_loop(args.clients(), timeline, move |client_id, n| {
        let pool = load_pool.clone();
        async move {
            let patient_id = PatientId::new();
            let payload = BenchPatient::new("bench", format_args!("{client_id}-{n}"))
                .event_payload(patient_id);
            raw::insert_registration(&pool, Uuid::now_v7(), patient_id.as_uuid(), &payload).await
        }
    })
    .await;
    profile.finish().await?;
    pool.close().await;
    outcome
}

/// Opens every connection of the raw pool before the clock starts, so that a server without
/// room for them fails here with one clear message rather than as errors in the table.
async fn open_connections(pool: &PgPool, count: u32) -> anyhow::Result<()> {
    // Read now: once the server is full, no connection is left to ask it with.
    let limit: String = sqlx::query_scalar("show max_connections")
        .fetch_one(pool)
        .await
        .context("Failed to read PostgreSQL's max_connections")?;
    try_join_all((0..count).map(|_| pool.acquire()))
        .await
        .with_context(|| {
            format!(
                "Failed to open {count} connections for the raw run (max_connections is \
                 {limit}, shared with every other client); try fewer --clients"
            )
        })?;
    Ok(())
}
