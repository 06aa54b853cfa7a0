//! The `hap` command line.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;

use std::net::SocketAddr;
use std::time::Duration;

use eventstore::processes::{self, ProcessInfo};
use eventstore::readiness::Readiness;
use eventstore::{EventStore, wakeup};
use messaging::consumer::ConsumerSettings;
use messaging::{AmqpUrls, Publisher, PublisherSettings};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use projections::ReadModel;
use projections::schema::Plans;

use crate::config::{Role, ServeSettings, Settings};
use crate::{AppState, db, router};

#[derive(Debug, Parser)]
#[command(
    name = "hap",
    version,
    about = "Event-sourced clinic scheduling backend"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (creates the database and applies migrations first).
    Serve(ServeSettings),
    /// Create the database if needed, apply migrations and exit.
    Migrate,
    /// Rebuild read models from the event store while the service keeps running.
    Rebuild(RebuildArgs),
    /// Seal the personal data of events that earlier releases stored in clear, in batches,
    /// while the service keeps running; safe to stop and run again.
    MigrateEvents(MigrateEventsArgs),
    /// Inspect, re-deliver or drop dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Fill a fresh system with realistic sample data through the command path.
    Demo(DemoArgs),
    /// Print a bearer token signed with HAP_AUTH_SECRET.
    Token(TokenArgs),
}

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The tenant (clinic) the token acts in.
    #[arg(long)]
    pub tenant: String,
    /// Who acts: stored with every event the token's requests cause.
    #[arg(long)]
    pub sub: String,
    /// Space-separated scopes, e.g. "patients:read patients:write".
    #[arg(long, default_value = "")]
    pub scope: String,
    /// How long the token is valid, e.g. 1h, 30m, 7d.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: std::time::Duration,
}

#[derive(Debug, clap::Args)]
pub struct MigrateEventsArgs {
    /// Events sealed per transaction.
    #[arg(long, default_value_t = 500,
          value_parser = clap::builder::RangedI64ValueParser::<i64>::new().range(1..))]
    pub batch: i64,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How long to wait, in seconds, for the sagas of a running `hap serve` to schedule the
    /// demo's consultations (0: do not wait).
    #[arg(long, default_value_t = 30)]
    pub settle_secs: u64,
    /// The tenant (clinic) the sample data belongs to.
    #[arg(long, default_value = crate::auth::INSECURE_TENANT)]
    pub tenant: String,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List the dead letters of a queue (they stay where they are).
    List {
        /// The queue (its `.dlq` is read) or the dead-letter queue itself.
        #[arg(long)]
        queue: String,
    },
    /// Send dead letters back to the queue they came from.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["event_id", "all"])))]
    Replay {
        #[arg(long)]
        queue: String,
        /// Only the message of this event.
        #[arg(long)]
        event_id: Option<String>,
        /// Every message.
        #[arg(long)]
        all: bool,
    },
    /// Drop every dead letter of a queue.
    Purge {
        #[arg(long)]
        queue: String,
    },
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["projection", "all"])))]
pub struct RebuildArgs {
    /// A projection to rebuild (patients, physicians, consultations, records); repeatable.
    #[arg(long)]
    pub projection: Vec<String>,
    /// Rebuild every projection.
    #[arg(long)]
    pub all: bool,
    /// Compare the live read model with a fresh rebuild and report differences, changing
    /// nothing; exits 1 if there is any.
    #[arg(long)]
    pub verify: bool,
    /// Events folded in memory at most before they are written out: peak memory grows with
    /// this, not with the store.
    #[arg(long, default_value_t = projections::rebuild::CHUNK_EVENTS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub chunk_events: usize,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(serve_settings) => serve(cli.settings, serve_settings).await,
        Command::Migrate => {
            let pool = db::connect(&cli.settings.database_url, 2, true).await?;
            db::migrate(&pool).await?;
            hash_clear_claims(&pool, &cli.settings).await?;
            println!(
                "migrations applied to {}",
                redact(&cli.settings.database_url)
            );
            Ok(())
        }
        Command::Rebuild(args) => rebuild(cli.settings, args).await,
        Command::MigrateEvents(args) => migrate_events(cli.settings, args).await,
        Command::Dlq(command) => dlq(&cli.settings.amqp_url, command).await,
        Command::Token(args) => {
            let unknown: Vec<&str> = args
                .scope
                .split_whitespace()
                .filter(|s| !crate::auth::SCOPES.contains(s))
                .collect();
            anyhow::ensure!(
                unknown.is_empty(),
                "unknown scopes {unknown:?}; HAP knows {}",
                crate::auth::SCOPES.join(" ")
            );
            let request = crate::auth::TokenRequest {
                tenant: args.tenant,
                subject: args.sub,
                scope: args.scope,
                ttl: args.ttl,
            };
            println!("{}", crate::auth::mint(&cli.settings, &request)?);
            Ok(())
        }
        Command::Demo(args) => {
            let pool = db::connect(&cli.settings.database_url, 4, true).await?;
            db::migrate(&pool).await?;
            let pipeline = crate::state::pipeline(db::event_store(pool), &cli.settings)?;
            crate::demo::run_demo(
                &pipeline,
                &args.tenant,
                Duration::from_secs(args.settle_secs),
            )
            .await
        }
    }
}

async fn dlq(amqp_url: &AmqpUrls, command: DlqCommand) -> anyhow::Result<()> {
    use messaging::dlq;
    match command {
        DlqCommand::List { queue } => {
            let letters = dlq::list(amqp_url, &queue).await?;
            println!(
                "{} dead letters in {}",
                letters.len(),
                dlq::dead_letter_queue(&queue)
            );
            for letter in letters {
                println!(
                    "{}  {}  retries={}  from={}  error={}",
                    letter.event_id.as_deref().unwrap_or("-"),
                    letter.event_type.as_deref().unwrap_or("-"),
                    letter.retries.unwrap_or(0),
                    letter.original_queue.as_deref().unwrap_or("-"),
                    letter.error.as_deref().unwrap_or("-"),
                );
            }
        }
        DlqCommand::Replay {
            queue, event_id, ..
        } => {
            let replayed = dlq::replay(amqp_url, &queue, event_id.as_deref()).await?;
            println!(
                "replayed {replayed} dead letters from {}",
                dlq::dead_letter_queue(&queue)
            );
            if replayed == 0 && event_id.is_some() {
                anyhow::bail!("no dead letter with that event id");
            }
        }
        DlqCommand::Purge { queue } => {
            let purged = dlq::purge(amqp_url, &queue).await?;
            println!(
                "purged {purged} dead letters from {}",
                dlq::dead_letter_queue(&queue)
            );
        }
    }
    Ok(())
}

async fn rebuild(settings: Settings, args: RebuildArgs) -> anyhow::Result<()> {
    let projections: Vec<String> = if args.all {
        projections::rebuild::all_projections()
            .into_iter()
            .map(str::to_owned)
            .collect()
    } else {
        args.projection
    };
    let names: Vec<&str> = projections.iter().map(String::as_str).collect();
    let pool = db::connect(&settings.database_url, 4, false).await?;
    let vault = crate::state::vault(&pool, &settings)?;
    let store = EventStore::new(pool).opening_with(std::sync::Arc::new(vault));
    // Make sure the live read model exists (a rebuild may be the first thing run).
    read_model(&settings, true).await?.pool.close().await;
    let read_url = settings
        .read_database_url
        .as_deref()
        .unwrap_or(&settings.database_url);
    let schema = projections::schema::schema_name(&settings.instance);
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let report = projections::rebuild::rebuild(
        &store,
        read_url,
        &schema,
        &names,
        args.verify,
        interactive,
        args.chunk_events,
    )
    .await
    .context("The rebuild failed")?;
    let rate = report.events as f64 / report.elapsed.as_secs_f64().max(1e-9);
    let action = if args.verify { "verified" } else { "rebuilt" };
    println!(
        "{action} {} in schema {schema} from {} events in {:.1?} ({rate:.0} events/s)",
        names.join(", "),
        report.events,
        report.elapsed,
    );
    if let Some(peak) = report.peak_rss {
        println!("peak memory: {} MiB resident", peak / (1024 * 1024));
    }
    if report.differences.is_empty() {
        if args.verify {
            println!("no differences");
        }
        return Ok(());
    }
    for d in &report.differences {
        println!(
            "{}: {} rows only in the live model, {} only in the rebuilt one",
            d.table, d.only_live, d.only_rebuilt
        );
    }
    anyhow::bail!("the live read model differs from a rebuild")
}

async fn migrate_events(settings: Settings, args: MigrateEventsArgs) -> anyhow::Result<()> {
    let pool = db::connect(&settings.database_url, 2, false).await?;
    let vault = crate::state::vault(&pool, &settings)?;
    let mut total = 0;
    loop {
        let sealed = privacy::migration::seal_clear_events(&pool, &vault, args.batch)
            .await
            .context("Failed to seal a batch of events")?;
        if sealed == 0 {
            break;
        }
        total += sealed;
        println!("sealed {sealed} events ({total} in all)");
    }
    println!("no event of a personal type is left in clear; {total} sealed by this run");
    Ok(())
}

/// With a master key, replaces the clear document and license numbers that claims of earlier
/// releases hold by their keyed hashes.
async fn hash_clear_claims(pool: &sqlx::PgPool, settings: &Settings) -> anyhow::Result<()> {
    let Some(master) = settings.master_key().map_err(anyhow::Error::msg)? else {
        return Ok(());
    };
    let hashed = privacy::claims::hash_clear_claims(pool, &master)
        .await
        .context("Failed to hash the uniqueness claims of earlier releases")?;
    if hashed.replaced > 0 {
        tracing::info!(
            hashed = hashed.replaced,
            "uniqueness claims now keep keyed hashes"
        );
    }
    for owner in &hashed.duplicates {
        // A process of an earlier release claimed a value in clear after its hash was claimed:
        // both owners hold it. Logged by stream id only (the value is personal data).
        tracing::warn!(
            %owner,
            "a document or license number is claimed twice (in clear by an earlier release); \
             stop every older `hap` process and resolve the duplicate registration"
        );
    }
    Ok(())
}

async fn serve(settings: Settings, serve: ServeSettings) -> anyhow::Result<()> {
    // Installed before any task starts: what is recorded before the recorder exists is lost.
    crate::telemetry::metrics_handle();
    let migrate = !serve.no_migrate;
    let pool = db::connect(&settings.database_url, settings.db_pool_size, migrate).await?;
    if migrate {
        db::migrate(&pool).await?;
    }
    // Also with --no-migrate: a `hap migrate` run without the master key could not hash them.
    hash_clear_claims(&pool, &settings).await?;
    let listener = TcpListener::bind(serve.http_addr)
        .await
        .with_context(|| format!("Failed to listen on {}", serve.http_addr))?;
    let mut roles = Roles::new(&serve.roles);
    let read = read_model(&settings, migrate).await?;
    let app = AppState::new(
        db::event_store(pool),
        read.clone(),
        settings,
        roles.readiness.clone(),
    )?;
    // The pipeline's store: its reads open sealed payloads with the process's one vault.
    let store = app.commands.store().clone();
    roles.record_process(&store, &app.settings, listener.local_addr()?);
    roles.start_store_side(&store, &app.settings);
    // One set of consumer settings for projectors and saga services alike.
    let consumers = app.settings.consumers(&roles.readiness);
    roles.start_projectors(&read, &store, &consumers);
    if app.auth.is_insecure() {
        tracing::warn!(
            "authentication is OFF (--insecure-no-auth): every request acts as tenant `default` \
             with every scope; never expose this server to anyone"
        );
    }
    roles.start_saga_side(&app, consumers);
    roles.serve_http(listener, app).await
}

/// The roles a `hap serve` runs: the tasks it started for them, the readiness each
/// registered a part with, and the token that stops them all.
struct Roles {
    roles: Vec<Role>,
    shutdown: CancellationToken,
    /// Every role registers its parts here before it starts: `/health/ready` waits for them.
    readiness: Readiness,
    tasks: JoinSet<()>,
}

impl Roles {
    /// Listens for Ctrl-C and SIGTERM from here on, so that a signal while the roles start
    /// still stops them cleanly (a killed process's row in `processes` would stay behind).
    fn new(roles: &[Role]) -> Self {
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            stop.cancel();
        });
        Self {
            roles: roles.to_vec(),
            shutdown,
            readiness: Readiness::default(),
            tasks: JoinSet::new(),
        }
    }

    fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Records this process for operators, with a heartbeat until it stops.
    fn record_process(&mut self, store: &EventStore, settings: &Settings, address: SocketAddr) {
        let info = ProcessInfo {
            instance: settings.instance.clone(),
            // As `--roles` names them.
            roles: (self.roles.iter())
                .filter_map(|role| role.to_possible_value())
                .map(|name| name.get_name().to_owned())
                .collect(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            host: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|name| name.trim().to_owned())
                .unwrap_or_else(|_| "unknown".to_owned()),
            pid: i32::try_from(std::process::id()).unwrap_or(-1),
            http_addr: address.to_string(),
        };
        let recorded = processes::keep_recorded(
            store.clone(),
            info,
            crate::vitals::measure,
            self.shutdown.clone(),
        );
        self.tasks.spawn(recorded);
    }

    /// What runs on the event store alone: the wakeups of other processes' publishers after
    /// this one's appends (commands, saga steps, fired deadlines), and the publisher.
    fn start_store_side(&mut self, store: &EventStore, settings: &Settings) {
        if [Role::Command, Role::Saga, Role::Timer]
            .into_iter()
            .any(|role| self.has(role))
        {
            let forward = wakeup::forward_appends(store.clone(), self.shutdown.clone());
            self.tasks.spawn(forward);
        }
        if self.has(Role::Publisher) {
            let publisher_settings = PublisherSettings {
                ready: self.readiness.part("publisher"),
                ..PublisherSettings::new(settings.amqp_url.clone(), settings.topology())
            };
            let publisher = Publisher::new(store.clone(), publisher_settings);
            self.tasks.spawn(publisher.run(self.shutdown.clone()));
        }
    }

    fn start_projectors(
        &mut self,
        read: &ReadModel,
        store: &EventStore,
        consumers: &ConsumerSettings,
    ) {
        if self.has(Role::Projector) {
            self.tasks.spawn(projections::live::run_all(
                read.clone(),
                store.clone(),
                consumers.clone(),
                self.shutdown.clone(),
            ));
        }
    }

    /// Saga steps and deadlines: they run commands through the same pipeline as the HTTP
    /// handlers, observers included.
    fn start_saga_side(&mut self, app: &AppState, consumers: ConsumerSettings) {
        if self.has(Role::Saga) {
            // The process's one local feed: steps take the events its commands append.
            let feed = app.read.local.clone();
            let sagas =
                sagas::run_all(app.commands.clone(), feed, consumers, self.shutdown.clone());
            self.tasks.spawn(sagas);
        }
        if self.has(Role::Timer) {
            let timer = sagas::Timer {
                pipeline: app.commands.clone(),
                retention: app.settings.idempotency_retention,
                ready: self.readiness.part("timer"),
            };
            self.tasks.spawn(timer.run(self.shutdown.clone()));
        }
    }

    /// Serves HTTP until Ctrl-C or SIGTERM, then stops every role's tasks and waits for them.
    async fn serve_http(mut self, listener: TcpListener, app: AppState) -> anyhow::Result<()> {
        let address = listener.local_addr()?;
        tracing::info!(%address, roles = ?self.roles, rabbitmq = %app.settings.amqp_url, "HAP is listening");
        let routes = router(app, self.has(Role::Command), self.has(Role::Query));
        let served = axum::serve(crate::without_delay(listener), routes)
            .with_graceful_shutdown(self.shutdown.clone().cancelled_owned())
            .await;
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        served.context("The HTTP server failed")
    }
}

/// This instance's read model: its schema on the read database, migrated unless told not to.
async fn read_model(settings: &Settings, migrate: bool) -> anyhow::Result<ReadModel> {
    let url = settings
        .read_database_url
        .as_deref()
        .unwrap_or(&settings.database_url);
    let schema = projections::schema::schema_name(&settings.instance);
    let pool = projections::schema::connect(url, &schema, settings.db_pool_size, Plans::Cached)
        .await
        .with_context(|| format!("Failed to connect to the read model (schema {schema})"))?;
    if migrate {
        projections::schema::migrate(&pool)
            .await
            .with_context(|| format!("Failed to migrate the read model (schema {schema})"))?;
    }
    Ok(ReadModel::new(pool))
}

/// Resolves on Ctrl-C or SIGTERM, so that in-flight requests finish before the process ends.
async fn shutdown_signal() {
    let ctrl_c = async {
        tokio::signal::ctrl_c().await.ok();
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}
