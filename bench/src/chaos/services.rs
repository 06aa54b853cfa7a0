//! The PostgreSQL server and the RabbitMQ broker a run uses, and what can be done to them.
//!
//! By default both are the run's own: a private PostgreSQL ([`LocalPostgres`]), which a fault
//! crashes (an immediate stop: connections reset, no checkpoint) and starts again after a
//! pause, recovering from its write-ahead log; and a RabbitMQ cluster of `--cluster-nodes`
//! nodes ([`LocalCluster`], `scripts/cluster.sh`), each of which a fault kills with `kill -9`
//! and starts again after a pause. A server given with `--database-url` or `--amqp-url` serves
//! others too, so a fault there never stops it: PostgreSQL terminates the connections to the
//! run's own database instead, and RabbitMQ closes the run's own connections (those whose name
//! holds the run's exchange prefix, which is how HAP names them), which is what a restart does
//! to its clients. Each kind of server is one variant here, with its faults beside it.

use anyhow::{Context, bail};
use hap_support::postgres::{LocalPostgres, Shutdown};
use sqlx::{ConnectOptions, Connection};

use hap_support::cluster::LocalCluster;
use messaging::AmqpUrls;

/// A fault of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceFault {
    /// The private PostgreSQL is stopped at once, as if it crashed, and started again after
    /// the pause.
    PostgresCrashed,
    /// Every connection to the run's database is terminated by the server.
    DatabaseConnectionsDropped,
    /// This node of the private cluster (from 1) is killed with `kill -9`, and started again
    /// after the pause.
    BrokerNodeKilled(u16),
    /// The broker closes every connection of the run's processes.
    BrokerConnectionsDropped,
}

impl ServiceFault {
    /// What the report calls it.
    pub fn name(self) -> String {
        match self {
            Self::PostgresCrashed => "PostgreSQL crashes and restarts".to_owned(),
            Self::DatabaseConnectionsDropped => "PostgreSQL drops the run's connections".to_owned(),
            Self::BrokerNodeKilled(node) => format!("kill -9 RabbitMQ node {node}"),
            Self::BrokerConnectionsDropped => "RabbitMQ closes the run's connections".to_owned(),
        }
    }
}

/// Where the run's database lives.
enum Database {
    /// A server of the run's own.
    Private(LocalPostgres),
    /// A server other runs use too: faults touch only the run's database.
    Shared { server_url: String },
}

/// Which broker a run asks for.
pub enum Broker<'a> {
    /// The one at these URLs (a cluster's comma-separated), which others use too.
    Given(&'a str),
    /// A private cluster of this many nodes.
    Cluster(u16),
}

/// Where the run's messages go.
enum Messaging {
    /// A cluster of the run's own.
    Private(LocalCluster),
    /// A broker (or cluster) other runs use too: faults touch only the run's connections.
    Shared { urls: String },
}

/// The servers of a run. A private server is removed when this is dropped.
pub struct Services {
    database: Database,
    broker: Messaging,
    /// The broker's URLs as the bench connects to them.
    amqp: AmqpUrls,
}

impl Services {
    /// The PostgreSQL server at `database_url` (server level; the run creates its database
    /// there), or a private one when `None`; and `broker`.
    pub async fn start(database_url: Option<&str>, broker: Broker<'_>) -> anyhow::Result<Self> {
        let database = match database_url {
            Some(url) => Database::Shared {
                server_url: url.to_owned(),
            },
            None => {
                let postgres = LocalPostgres::new()
                    .await
                    .context("Failed to start a private PostgreSQL (or pass --database-url)")?;
                eprintln!("started a private PostgreSQL on port {}", postgres.port());
                Database::Private(postgres)
            }
        };
        let broker = match broker {
            Broker::Given(urls) => Messaging::Shared {
                urls: urls.to_owned(),
            },
            Broker::Cluster(nodes) => {
                let cluster = LocalCluster::new(nodes).await?;
                cluster
                    .up()
                    .await
                    .context("Failed to start a private RabbitMQ cluster (or pass --amqp-url)")?;
                eprintln!(
                    "started a private RabbitMQ cluster of {nodes} nodes: {}",
                    cluster.urls()
                );
                Messaging::Private(cluster)
            }
        };
        let amqp = match &broker {
            Messaging::Private(cluster) => cluster.urls(),
            Messaging::Shared { urls } => urls,
        }
        .parse()
        .context("--amqp-url")?;
        Ok(Self {
            database,
            broker,
            amqp,
        })
    }

    /// The server-level PostgreSQL URL the scratch database is made on.
    pub fn database_url(&self) -> String {
        match &self.database {
            Database::Private(postgres) => postgres.url(),
            Database::Shared { server_url } => server_url.clone(),
        }
    }

    /// The broker URLs as HAP's processes get them (`HAP_AMQP_URL`), comma-separated.
    pub fn amqp_env(&self) -> &str {
        match &self.broker {
            Messaging::Private(cluster) => cluster.urls(),
            Messaging::Shared { urls } => urls,
        }
    }

    /// The broker URLs, for the bench's own connections.
    pub fn amqp_urls(&self) -> &AmqpUrls {
        &self.amqp
    }

    /// Every fault these servers can suffer; a run injects each at least once.
    pub fn faults(&self) -> Vec<ServiceFault> {
        let database = match self.database {
            Database::Private(_) => ServiceFault::PostgresCrashed,
            Database::Shared { .. } => ServiceFault::DatabaseConnectionsDropped,
        };
        let broker = match &self.broker {
            Messaging::Private(cluster) => (1..=cluster.nodes())
                .map(ServiceFault::BrokerNodeKilled)
                .collect(),
            Messaging::Shared { .. } => vec![ServiceFault::BrokerConnectionsDropped],
        };
        std::iter::once(database).chain(broker).collect()
    }

    /// Injects `fault` into the servers of the run whose database is `database` and whose
    /// exchange prefix is `prefix`. Returns what was done, for the log of faults.
    pub async fn inject(
        &self,
        fault: ServiceFault,
        database: &str,
        prefix: &str,
    ) -> anyhow::Result<String> {
        match (fault, &self.database, &self.broker) {
            (ServiceFault::PostgresCrashed, Database::Private(postgres), _) => {
                postgres.stop(Shutdown::Immediate).await?;
                Ok("stopped immediately".to_owned())
            }
            (ServiceFault::DatabaseConnectionsDropped, Database::Shared { server_url }, _) => {
                let dropped = terminate_connections(server_url, database).await?;
                Ok(format!("terminated {dropped} connections to {database}"))
            }
            (ServiceFault::BrokerNodeKilled(node), _, Messaging::Private(cluster)) => {
                cluster.kill(node).await?;
                Ok("killed".to_owned())
            }
            (ServiceFault::BrokerConnectionsDropped, _, Messaging::Shared { .. }) => {
                let closed = close_connections(prefix).await?;
                Ok(format!("closed {closed} broker connections under {prefix}"))
            }
            (fault, _, _) => bail!("{} is not a fault of this run's servers", fault.name()),
        }
    }

    /// Undoes `fault` after its pause: starts again what it stopped. Returns what was done,
    /// or `None` when the fault left nothing down (cut connections come back by themselves).
    pub async fn recover(&self, fault: ServiceFault) -> anyhow::Result<Option<String>> {
        match (fault, &self.database, &self.broker) {
            (ServiceFault::PostgresCrashed, Database::Private(postgres), _) => {
                postgres.start().await?;
                Ok(Some(
                    "PostgreSQL started again (after crash recovery)".to_owned(),
                ))
            }
            (ServiceFault::BrokerNodeKilled(node), _, Messaging::Private(cluster)) => {
                cluster.start(node).await?;
                Ok(Some(format!("RabbitMQ node {node} is back in the cluster")))
            }
            _ => Ok(None),
        }
    }
}

/// Has PostgreSQL terminate every backend connected to `database`; how many it terminated.
async fn terminate_connections(server_url: &str, database: &str) -> anyhow::Result<i64> {
    let options: sqlx::postgres::PgConnectOptions = server_url
        .parse()
        .with_context(|| format!("{server_url} is not a PostgreSQL URL"))?;
    let mut admin = options
        .database("postgres")
        .connect()
        .await
        .context("Failed to connect to PostgreSQL to drop the run's connections")?;
    let terminated: i64 = sqlx::query_scalar(
        "select count(*) filter (where pg_terminate_backend(pid)) from pg_stat_activity
          where datname = $1 and pid <> pg_backend_pid()",
    )
    .bind(database)
    .fetch_one(&mut admin)
    .await
    .context("Failed to terminate the run's connections")?;
    admin.close().await.ok();
    Ok(terminated)
}

/// Has the broker close every connection whose name holds `prefix` (HAP names its publisher
/// and consumer connections after their exchange prefix or queue), as a restart would close
/// them; how many it closed. One `rabbitmqctl eval` does it: a `rabbitmqctl` call per
/// connection takes a second each.
async fn close_connections(prefix: &str) -> anyhow::Result<usize> {
    // The prefix is embedded in Erlang source: it must be a plain name.
    if !prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        bail!("exchange prefix {prefix} is not a plain name");
    }
    let program = format!(
        "Named = fun(P) ->
             [{{client_properties, Props}}] = rabbit_networking:connection_info(P, [client_properties]),
             case lists:keyfind(<<\"connection_name\">>, 1, Props) of
                 {{_, longstr, Name}} -> binary:match(Name, <<\"{prefix}\">>) =/= nomatch;
                 _ -> false
             end
         end,
         Ours = [P || P <- rabbit_networking:connections(), Named(P)],
         [rabbit_networking:close_connection(P, \"hap-bench chaos\") || P <- Ours],
         length(Ours)."
    );
    let output = tokio::process::Command::new("rabbitmqctl")
        .args(["eval", &program])
        .output()
        .await
        .context("Failed to run rabbitmqctl (it comes with rabbitmq-server)")?;
    let printed = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "rabbitmqctl eval failed: {}{}",
            printed.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    printed
        .trim()
        .parse()
        .with_context(|| format!("rabbitmqctl eval printed {printed}"))
}
