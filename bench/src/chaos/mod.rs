//! `hap-bench chaos`: the whole clinic as separate `hap serve` processes, broken on purpose
//! while a workload runs, then the books checked.
//!
//! The run, in order:
//! 1. A scratch database and exchange prefix (as every subcommand's), both instances' and the
//!    sagas' queues declared, tokens for `--tenants` clinics signed with a random secret.
//! 2. Eight processes ([`processes`]): two API processes (commands, queries, projectors) on
//!    instances `chaos-a` and `chaos-b`, two publishers, two saga processes, two timers.
//! 3. The clinic's workload ([`workload`]) at `--rate` for `--seconds`, while the injector
//!    ([`faults`]) follows a schedule drawn from `--seed`: every process killed with SIGKILL
//!    and started again, every fault the servers offer ([`services`]). Faults stop
//!    `--calm-secs` before the workload does. Each fault is printed as it happens.
//! 4. Commands still unanswered are sent again with their keys; then the system is given up
//!    to `--settle-secs` to go quiet ([`settle`]).
//! 5. The invariants ([`invariants`]) are checked on the store, the read models (through
//!    `hap rebuild --verify`) and the dead-letter queues, and the report printed
//!    ([`report`]).
//!
//! Exit status 0 only when every invariant holds. The processes' logs are kept in a temporary
//! directory (printed) when one does not, or with `--keep-logs`.
//!
//! # Layout
//! - [`processes`]: `hap serve` processes started, killed and started again; `hap` commands.
//! - [`services`]: the PostgreSQL and RabbitMQ servers and their faults.
//! - [`faults`]: the seeded schedule and the injector.
//! - [`client`]: HTTP with retries under the same idempotency key across the API processes.
//! - [`workload`]: the clinic's mix of commands, and what it learns from the answers.
//! - [`ledger`]: the commands sent and how each ended.
//! - [`metrics`]: HAP's counters summed over processes and restarts.
//! - [`settle`]: waiting for quiet.
//! - [`store`]: the store's facts, folded independently of HAP's code.
//! - [`invariants`]: the checks.
//! - [`report`]: the tables.

mod client;
mod faults;
mod invariants;
mod ledger;
mod metrics;
mod processes;
mod report;
mod services;
mod settle;
mod store;
mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use crate::broker::ScratchBroker;
use crate::database::ScratchDatabase;
use crate::report::Facts;
use client::Api;
use faults::{Fault, Injector};
use processes::{Cluster, Hap, INSTANCES};
use services::{Broker, Services};
use workload::Workload;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds of workload; faults are injected in all but the first two and the last
    /// `--calm-secs`.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,

    /// Requests per second (commands; the pollers' queries come on top).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    rate: u64,

    /// Seed of the fault schedule and of the workload's choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Clinics (tenants) sending requests, each with its own token.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=50))]
    tenants: u64,

    /// Seconds at the end of the workload without faults.
    #[arg(long, default_value_t = 8)]
    calm_secs: u64,

    /// Seconds to wait at most for the system to go quiet before checking anyway.
    #[arg(long, default_value_t = 60)]
    settle_secs: u64,

    /// The scheduling saga's deadline in the processes (`HAP_SCHEDULING_TIMEOUT_MS`): short,
    /// so that deadlines fire within the run.
    #[arg(long, default_value_t = 5_000)]
    scheduling_timeout_ms: u64,

    /// Connections in each of a process's two pools (`HAP_DB_POOL_SIZE`): eight processes
    /// share the server.
    #[arg(long, default_value_t = 4)]
    pool_size: u32,

    /// The `hap` binary; by default the one beside `hap-bench`.
    #[arg(long, env = "HAP_BENCH_HAP_BIN")]
    hap_bin: Option<PathBuf>,

    /// `RUST_LOG` of the processes.
    #[arg(long, default_value = "info,sqlx=warn")]
    hap_log: String,

    /// Keep the processes' logs even when every invariant holds.
    #[arg(long)]
    keep_logs: bool,

    /// A PostgreSQL server to run on (server level; a scratch database is made there, and
    /// database faults only cut that database's connections). By default a private server of
    /// the run's own, which database faults crash and restart.
    #[arg(long)]
    database_url: Option<String>,

    /// RabbitMQ to run on: one URL, or a cluster's nodes comma-separated (everything declared
    /// there is under a scratch prefix and deleted at the end, and broker faults only close
    /// the run's own connections, through `rabbitmqctl`). By default a private cluster of the
    /// run's own (`scripts/cluster.sh`), whose nodes broker faults kill and start again.
    #[arg(long)]
    amqp_url: Option<String>,

    /// Nodes of the private RabbitMQ cluster.
    #[arg(
        long,
        default_value_t = 1,
        conflicts_with = "amqp_url",
        value_parser = clap::value_parser!(u16).range(1..=9)
    )]
    cluster_nodes: u16,
}

/// Faults start this long after the workload.
const FAULTS_FROM: Duration = Duration::from_secs(2);

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.seconds < FAULTS_FROM.as_secs() + args.calm_secs + 1 {
        bail!(
            "--seconds must leave room for faults: more than {} (2 + --calm-secs)",
            FAULTS_FROM.as_secs() + args.calm_secs
        );
    }
    let broker = match &args.amqp_url {
        Some(urls) => Broker::Given(urls),
        None => Broker::Cluster(args.cluster_nodes),
    };
    let services = Services::start(args.database_url.as_deref(), broker).await?;
    let database = ScratchDatabase::new(&services.database_url())?;
    let broker = ScratchBroker::new(services.amqp_urls());
    eprintln!(
        "hap-bench chaos: seed {}, scratch database {}, exchange prefix {}",
        args.seed,
        database.name(),
        broker.prefix()
    );
    database
        .run_with_broker(broker, async |database, broker| {
            chaos(&args, &services, database, broker).await
        })
        .await
}

async fn chaos(
    args: &Args,
    services: &Services,
    database: &ScratchDatabase,
    broker: &ScratchBroker,
) -> anyhow::Result<()> {
    let pool = database.create(args.pool_size).await?;
    let facts = Facts::gather(&pool).await?;
    for instance in INSTANCES {
        broker.declare_queues(instance, true).await?;
    }
    let logs = std::env::temp_dir().join(format!("hap-chaos-{}", broker.prefix()));
    std::fs::create_dir_all(&logs)
        .with_context(|| format!("Failed to create {}", logs.display()))?;
    let secret = secret();
    let hap = Hap::new(
        args.hap_bin.clone(),
        vec![
            ("HAP_DATABASE_URL".into(), database.url().to_owned()),
            ("HAP_AMQP_URL".into(), services.amqp_env().to_owned()),
            ("HAP_EXCHANGE_PREFIX".into(), broker.prefix().to_owned()),
            ("HAP_AUTH_SECRET".into(), secret.clone()),
            ("HAP_DATA_KEY".into(), data_key()),
            (
                "HAP_SCHEDULING_TIMEOUT_MS".into(),
                args.scheduling_timeout_ms.to_string(),
            ),
            ("HAP_DB_POOL_SIZE".into(), args.pool_size.to_string()),
            ("RUST_LOG".into(), args.hap_log.clone()),
        ],
        logs.clone(),
    )?;
    let run = Run {
        args,
        services,
        database,
        broker,
        pool: &pool,
        hap: &hap,
        tenants: tokens(&secret, args.tenants, args.seconds + args.settle_secs)?,
        facts: &facts,
    };
    let mut cluster = Cluster::new();
    let outcome = async {
        cluster.start(&hap).await?;
        run.exercise(&mut cluster).await
    }
    .await;
    // Nothing may consume (and declare queues again) once the broker's clean-up starts.
    cluster.stop().await;
    pool.close().await;
    if matches!(outcome, Ok(0)) && !args.keep_logs {
        std::fs::remove_dir_all(&logs).ok();
    } else {
        eprintln!("the processes' logs are in {}", logs.display());
    }
    match outcome? {
        0 => Ok(()),
        violated => bail!(
            "{violated} invariants violated (seed {}); the report is on stdout",
            args.seed
        ),
    }
}

/// What one run works with.
struct Run<'a> {
    args: &'a Args,
    services: &'a Services,
    database: &'a ScratchDatabase,
    broker: &'a ScratchBroker,
    pool: &'a sqlx::PgPool,
    hap: &'a Hap,
    /// Each clinic's name and token.
    tenants: Vec<(String, String)>,
    facts: &'a Facts,
}

impl Run<'_> {
    /// The workload under faults, the settling and the checks; returns how many invariants
    /// were violated.
    async fn exercise(&self, cluster: &mut Cluster) -> anyhow::Result<usize> {
        let api = Arc::new(Api::new(cluster.api_endpoints())?);
        let scraper = metrics::Scraper::new(
            cluster
                .processes
                .iter()
                .map(|p| p.endpoint.clone())
                .collect(),
        )?;
        let workload = Arc::new(Workload::new(
            Arc::clone(&api),
            self.tenants.clone(),
            self.args.seed,
        ));
        eprintln!("registering each clinic's first physicians and patients…");
        workload.set_up().await;
        let plan = self.plan(cluster);
        let scraping = CancellationToken::new();
        let run = async {
            // However this ends, the scraper stops with it.
            let _stop_scraping = scraping.clone().drop_guard();
            self.under_faults(cluster, &workload, &plan).await
        };
        let (ran, ()) = tokio::join!(run, scraper.run(scraping.clone()));
        let (injected, settled) = ran?;
        scraper.scrape().await;

        eprintln!("checking the invariants…");
        let ledger = workload.ledger();
        let checks = invariants::check(&invariants::Context {
            pool: self.pool,
            ledger: &ledger,
            hap: self.hap,
            amqp_url: self.services.amqp_urls(),
            prefix: self.broker.prefix(),
            processes: cluster.processes.len(),
            exits: &injected.unexpected_exits,
        })
        .await?;
        let events: i64 = sqlx::query_scalar("select count(*) from events")
            .fetch_one(self.pool)
            .await
            .context("Failed to count the events")?;
        let report = report::Report {
            ledger: &ledger,
            attempt_failures: &api.failures(),
            injected: &injected,
            duplicates: report::Duplicates {
                published: scraper.total("hap_publisher_published_total", &[]),
                events: u64::try_from(events).unwrap_or(0),
                saga_steps_retried: scraper.total("hap_saga_steps_total", &["outcome=\"retried\""]),
                messages_retried: scraper.total("hap_messages_retried_total", &[]),
            },
            outcomes: outcomes(&store::consultations(self.pool).await?),
            checks: &checks,
        };
        println!("hap-bench chaos · {}", self.facts);
        println!("{}", self.header(&settled));
        report.print();
        Ok(checks.iter().filter(|c| !c.holds()).count())
    }

    /// When the calm at the end of the workload starts, from its start: no fault after it.
    fn calm_from(&self) -> Duration {
        Duration::from_secs(self.args.seconds.saturating_sub(self.args.calm_secs))
    }

    /// The fault schedule for the seed, printed.
    fn plan(&self, cluster: &Cluster) -> Vec<faults::Planned> {
        let args = self.args;
        let window = FAULTS_FROM..self.calm_from();
        let plan = faults::plan(
            args.seed,
            cluster.processes.len(),
            &self.services.faults(),
            window,
        );
        eprintln!("fault schedule for seed {}:", args.seed);
        for planned in &plan {
            let what = match planned.fault {
                Fault::Kill(index) => format!("kill -9 {}", cluster.processes[index].name),
                Fault::Service(fault) => fault.name(),
            };
            eprintln!(
                "  at {:5.1} s: {what} (pause {:.1} s){}",
                planned.at.as_secs_f64(),
                planned.pause.as_secs_f64(),
                if planned.required {
                    ""
                } else {
                    ", extra: left out if the run is behind"
                }
            );
        }
        plan
    }

    /// The workload with the faults of `plan`, then the unanswered commands sent again, then
    /// the wait for quiet.
    async fn under_faults(
        &self,
        cluster: &mut Cluster,
        workload: &Arc<Workload>,
        plan: &[faults::Planned],
    ) -> anyhow::Result<(faults::Injected, settle::Settled)> {
        let args = self.args;
        let duration = Duration::from_secs(args.seconds);
        eprintln!(
            "workload: {} requests/s for {} s from {} clinics…",
            args.rate, args.seconds, args.tenants
        );
        let mut injector = Injector {
            cluster: &mut *cluster,
            hap: self.hap,
            services: self.services,
            database: self.database.name(),
            prefix: self.broker.prefix(),
            started: Instant::now(),
        };
        let calm_from = duration.saturating_sub(Duration::from_secs(args.calm_secs));
        let (mut injected, ()) =
            tokio::try_join!(injector.run(plan, calm_from, duration), async {
                workload.run(args.rate, duration).await;
                Ok(())
            })?;
        workload.resolve().await;
        eprintln!(
            "waiting up to {} s for the system to go quiet…",
            args.settle_secs
        );
        let limit = Duration::from_secs(args.settle_secs);
        let settled = settle::wait_for_quiet(self.pool, self.broker, limit).await?;
        // The injector watched for crashes until the workload ended; the rest of the run is
        // looked at here.
        for process in &mut cluster.processes {
            if let Some(status) = process.exited() {
                injected
                    .unexpected_exits
                    .push(format!("{} exited by itself ({status})", process.name));
            }
        }
        if settled.quiet {
            eprintln!("quiet after {:.1} s", settled.waited.as_secs_f64());
        } else {
            eprintln!(
                "not quiet after {:.1} s: {}",
                settled.waited.as_secs_f64(),
                settled.pending.join("; ")
            );
        }
        Ok((injected, settled))
    }

    /// The report's second line: what ran, and how it settled.
    fn header(&self, settled: &settle::Settled) -> String {
        let args = self.args;
        let quiet = if settled.quiet {
            format!(
                "quiet {:.1} s after the workload",
                settled.waited.as_secs_f64()
            )
        } else {
            format!(
                "NOT quiet after {:.0} s: {}",
                settled.waited.as_secs_f64(),
                settled.pending.join("; ")
            )
        };
        format!(
            "seed {} · {} s at {} requests/s from {} clinics · 8 processes: API on {} and {} \
             (command, query, projector), 2 publishers, 2 saga, 2 timer · saga deadline {} ms · \
             faults from {} s to {} s · {quiet}",
            args.seed,
            args.seconds,
            args.rate,
            args.tenants,
            INSTANCES[0],
            INSTANCES[1],
            args.scheduling_timeout_ms,
            FAULTS_FROM.as_secs(),
            args.seconds - args.calm_secs,
        )
    }
}

/// A random HS256 secret of 48 characters.
/// A master key of personal data for one trial: 32 random bytes, base64.
fn data_key() -> String {
    use base64::Engine;
    let bytes = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()].map(|u| u.into_bytes());
    base64::engine::general_purpose::STANDARD.encode(bytes.concat())
}

fn secret() -> String {
    let random = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    random[..48].to_owned()
}

/// A token with every scope for each of `count` clinics (`clinic-1`…), valid `seconds` plus
/// a margin.
fn tokens(secret: &str, count: u64, seconds: u64) -> anyhow::Result<Vec<(String, String)>> {
    let mut settings = api::config::Settings::defaults();
    settings.auth_secret = Some(secret.parse().map_err(anyhow::Error::msg)?);
    settings.auth_issuer = None;
    settings.auth_audience = None;
    (1..=count)
        .map(|n| {
            let tenant = format!("clinic-{n}");
            let request = api::auth::TokenRequest {
                tenant: tenant.clone(),
                subject: format!("chaos-{tenant}"),
                scope: api::auth::SCOPES.join(" "),
                ttl: Duration::from_secs(seconds + 600),
            };
            let token = api::auth::mint(&settings, &request).context("Failed to sign a token")?;
            Ok((tenant, token))
        })
        .collect()
}

/// Consultations by final status, `failed` by reason.
fn outcomes(consultations: &[store::Consultation]) -> BTreeMap<String, usize> {
    let mut outcomes = BTreeMap::new();
    for c in consultations {
        let name = match (&c.failure, c.status) {
            (Some(reason), domain::consultation::Status::Failed) => format!("failed: {reason}"),
            _ => c.status.as_str().to_owned(),
        };
        *outcomes.entry(name).or_default() += 1;
    }
    outcomes
}
