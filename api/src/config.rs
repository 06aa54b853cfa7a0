//! Settings: every one has a default, a `HAP_*` environment variable and a flag, in that order
//! of precedence (flag over variable over default).

use std::ffi::OsStr;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use eventstore::readiness::Readiness;
use messaging::consumer::ConsumerSettings;
use messaging::{AmqpUrls, Topology};

/// The settings every subcommand shares.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// PostgreSQL holding the event store (created if missing).
    #[arg(
        long,
        env = "HAP_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/hap",
        global = true
    )]
    pub database_url: String,

    /// PostgreSQL holding this instance's read model; the event store's by default.
    #[arg(long, env = "HAP_READ_DATABASE_URL", global = true)]
    pub read_database_url: Option<String>,

    /// RabbitMQ: the AMQP URL of each node of the cluster, comma-separated, tried in order.
    #[arg(
        long,
        env = "HAP_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true,
        value_parser = Unquoted::<AmqpUrls>::new(),
        global = true
    )]
    pub amqp_url: AmqpUrls,

    /// How many nodes hold a copy of each quorum queue HAP creates; by default as many as there
    /// are URLs in HAP_AMQP_URL, up to three.
    #[arg(long, env = "HAP_QUORUM_SIZE", global = true,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub quorum_size: Option<u16>,

    /// Prefix of every exchange and queue name, so that systems sharing a broker stay apart.
    #[arg(
        long,
        env = "HAP_EXCHANGE_PREFIX",
        default_value = "hap",
        global = true
    )]
    pub exchange_prefix: String,

    /// This instance's id: names its read-model schema and its queues.
    #[arg(
        long,
        env = "HAP_INSTANCE",
        default_value = "instance-1",
        global = true
    )]
    pub instance: String,

    /// Deadline of the scheduling saga, in milliseconds.
    #[arg(
        long,
        env = "HAP_SCHEDULING_TIMEOUT_MS",
        default_value_t = 30_000,
        global = true
    )]
    pub scheduling_timeout_ms: u64,

    /// How often a message is retried before it is dead-lettered.
    #[arg(long, env = "HAP_MAX_RETRIES", default_value_t = 5, global = true)]
    pub max_retries: u32,

    /// How long a query with `X-Min-Position` waits for the read model, in milliseconds.
    #[arg(
        long,
        env = "HAP_CONSISTENCY_WAIT_MS",
        default_value_t = 5_000,
        global = true
    )]
    pub consistency_wait_ms: u64,

    /// The HS256 secret that tokens are signed with (and that `hap token` signs with).
    #[arg(long, env = "HAP_AUTH_SECRET", hide_env_values = true, global = true,
          value_parser = Unquoted::<Secret>::new())]
    pub auth_secret: Option<Secret>,

    /// A PEM file with the public key (RSA or EC P-256) of an identity provider whose RS256 or
    /// ES256 tokens are accepted.
    #[arg(long, env = "HAP_AUTH_PUBLIC_KEY_FILE", global = true)]
    pub auth_public_key_file: Option<PathBuf>,

    /// The `iss` every token must carry, when set.
    #[arg(long, env = "HAP_AUTH_ISSUER", global = true)]
    pub auth_issuer: Option<String>,

    /// The `aud` every token must carry, when set.
    #[arg(long, env = "HAP_AUTH_AUDIENCE", global = true)]
    pub auth_audience: Option<String>,

    /// The master key of personal data (32 random bytes, base64: `openssl rand -base64 32`).
    /// Uniqueness claims keep a keyed hash of document and license numbers made with it. Keep
    /// it apart from the database and its backups.
    #[arg(long, env = "HAP_DATA_KEY", hide_env_values = true, global = true,
          value_parser = Unquoted::<DataKey>::new())]
    pub data_key: Option<DataKey>,

    /// A file holding the master key of personal data, as `HAP_DATA_KEY` would.
    #[arg(long, env = "HAP_DATA_KEY_FILE", global = true)]
    pub data_key_file: Option<PathBuf>,

    /// Serve every request as tenant `default` with every scope, without a token: for local
    /// experiments and tests only.
    #[arg(long, env = "HAP_INSECURE_NO_AUTH", global = true)]
    pub insecure_no_auth: bool,

    /// Connections in each of the process's two pools (event store and read model).
    #[arg(long, env = "HAP_DB_POOL_SIZE", default_value_t = 16, global = true)]
    pub db_pool_size: u32,

    /// How long an idempotency key is remembered (`24h`, `7days`, `90min`): the `timer` role
    /// then forgets it, and a request repeating it is a new request. Deadlines that stopped
    /// running are deleted as long after.
    #[arg(
        long,
        env = "HAP_IDEMPOTENCY_RETENTION",
        default_value = "24h",
        value_parser = humantime::parse_duration,
        global = true
    )]
    pub idempotency_retention: Duration,
}

/// Settings of `hap serve` alone.
#[derive(Debug, Clone, Args)]
pub struct ServeSettings {
    /// Address the HTTP API listens on; port 0 picks a free port.
    #[arg(long, env = "HAP_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// Which parts this process runs, comma-separated: command, query, publisher, projector,
    /// saga, timer.
    #[arg(
        long,
        env = "HAP_ROLES",
        value_delimiter = ',',
        default_value = "command,query,publisher,projector,saga,timer"
    )]
    pub roles: Vec<Role>,

    /// Do not create the database or apply migrations at start.
    #[arg(long, env = "HAP_NO_MIGRATE")]
    pub no_migrate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Command,
    Query,
    Publisher,
    Projector,
    Saga,
    Timer,
}

/// Quorum queues' default replication: one copy per node up to this many, as RabbitMQ's own
/// default, so that the loss of any one node of three loses nothing and leaves a majority.
const DEFAULT_MAX_QUORUM_SIZE: usize = 3;

impl Settings {
    /// How many nodes each quorum queue is created on: `quorum_size`, else one per node of
    /// `amqp_url`, up to three.
    pub fn quorum_size(&self) -> u16 {
        self.quorum_size.unwrap_or_else(|| {
            let nodes = self.amqp_url.node_count().min(DEFAULT_MAX_QUORUM_SIZE);
            u16::try_from(nodes).expect("at most three")
        })
    }

    /// The exchanges and queues under `exchange_prefix`, declared as every role declares them.
    pub fn topology(&self) -> Topology {
        Topology::new(&self.exchange_prefix).with_quorum_size(self.quorum_size())
    }

    /// How this instance's consumers (projectors and saga services) run; each registers with
    /// `readiness`.
    pub fn consumers(&self, readiness: &Readiness) -> ConsumerSettings {
        ConsumerSettings {
            readiness: readiness.clone(),
            ..ConsumerSettings::new(
                &self.amqp_url,
                self.topology(),
                &self.instance,
                self.max_retries,
            )
        }
    }

    /// Settings as they are when no flag or variable is given; what tests start from.
    pub fn defaults() -> Self {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            settings: Settings,
        }
        // Parsing an empty command line yields the declared defaults (and the environment's
        // HAP_* values, which is what a test run configures).
        <Defaults as clap::Parser>::parse_from(["hap"]).settings
    }
}

/// Parses a setting that may hold a password or a secret: clap's own refusal quotes the value
/// given, this one says only what is wrong with it.
#[derive(Clone)]
struct Unquoted<T>(PhantomData<fn() -> T>);

impl<T> Unquoted<T> {
    fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T> TypedValueParser for Unquoted<T>
where
    T: FromStr + Clone + Send + Sync + 'static,
    T::Err: std::fmt::Display,
{
    type Value = T;

    fn parse_ref(
        &self,
        command: &clap::Command,
        argument: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let refuse = |reason: &dyn std::fmt::Display| {
            let name = argument.map_or_else(|| "a setting".to_owned(), ToString::to_string);
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("invalid value for '{name}': {reason}\n"),
            )
            .with_cmd(command)
        };
        let text = value.to_str().ok_or_else(|| refuse(&"not valid UTF-8"))?;
        text.parse().map_err(|error: T::Err| refuse(&error))
    }
}

/// A secret from the command line or the environment; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The master key of personal data, checked as it is read.
#[derive(Clone)]
pub struct DataKey(std::sync::Arc<privacy::MasterKey>);

impl DataKey {
    pub fn master(&self) -> &std::sync::Arc<privacy::MasterKey> {
        &self.0
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(***)")
    }
}

impl std::str::FromStr for DataKey {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        privacy::MasterKey::from_base64(value)
            .map(|key| Self(std::sync::Arc::new(key)))
            .map_err(|e| e.to_string())
    }
}

impl Settings {
    /// The master key of personal data, from `HAP_DATA_KEY` or the file `HAP_DATA_KEY_FILE`;
    /// `None` when neither is set.
    pub fn master_key(&self) -> Result<Option<std::sync::Arc<privacy::MasterKey>>, String> {
        if let Some(key) = &self.data_key {
            return Ok(Some(key.master().clone()));
        }
        let Some(path) = &self.data_key_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("HAP_DATA_KEY_FILE {}: {e}", path.display()))?;
        let key: DataKey = text
            .parse()
            .map_err(|e| format!("HAP_DATA_KEY_FILE {}: {e}", path.display()))?;
        Ok(Some(key.master().clone()))
    }
}

impl std::str::FromStr for Secret {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        // HS256 with a short secret can be brute-forced offline from any token.
        if value.len() < 32 {
            return Err("the secret must be at least 32 characters long".into());
        }
        Ok(Self(value.to_owned()))
    }
}
