//! The scratch database every subcommand runs in: created fresh on the given server, migrated
//! by HAP's own code, and dropped at the end whatever happened.

use std::str::FromStr;

use anyhow::{Context, anyhow};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgPool};
use tokio::signal::unix::{SignalKind, signal};
use url::Url;

use crate::broker::ScratchBroker;

/// A database named `hap_bench_<random>` on the server of the URL given on the command line.
pub struct ScratchDatabase {
    name: String,
    /// The server's URL with the scratch database in place of the given one.
    url: String,
    /// Where to connect to drop it: the server's `postgres` database, which `api::db` also uses
    /// to create it (the database named in the given URL need not exist).
    admin: PgConnectOptions,
}

impl ScratchDatabase {
    /// Picks a fresh name on the server of `server_url`; nothing is created yet.
    pub fn new(server_url: &str) -> anyhow::Result<Self> {
        let mut url = Url::parse(server_url)
            .with_context(|| format!("--database-url is not a URL: {server_url}"))?;
        let admin = PgConnectOptions::from_str(server_url)
            .with_context(|| format!("--database-url is not a PostgreSQL URL: {server_url}"))?
            .database("postgres");
        // 12 hex digits of a v4 UUID: enough that two runs on one server never meet, short
        // enough to read in `\l`.
        let name = format!(
            "hap_bench_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        url.set_path(&format!("/{name}"));
        Ok(Self {
            name,
            url: url.into(),
            admin,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Creates and migrates the database through HAP's own code, and returns a pool of `size`
    /// connections on it: the pool HAP itself would run with.
    pub async fn create(&self, size: u32) -> anyhow::Result<PgPool> {
        let pool = api::db::connect(&self.url, size, true)
            .await
            .with_context(|| format!("Failed to create database {}", self.name))?;
        api::db::migrate(&pool).await?;
        Ok(pool)
    }

    /// Runs `bench` on this database and drops it afterwards, also when `bench` fails or the
    /// process is interrupted (Ctrl-C, SIGTERM). Dropping is best effort after a failure: the
    /// failure is the one error reported.
    pub async fn run(
        self,
        bench: impl AsyncFnOnce(&ScratchDatabase) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let result = until_interrupted(bench(&self)).await;
        self.finish(result).await
    }

    /// As [`ScratchDatabase::run`], with a scratch broker prefix as well: its background pieces
    /// are stopped and its queues and exchanges deleted first (the pieces also use the
    /// database), then the database is dropped.
    pub async fn run_with_broker(
        self,
        broker: ScratchBroker,
        bench: impl AsyncFnOnce(&ScratchDatabase, &ScratchBroker) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let result = until_interrupted(bench(&self, &broker)).await;
        let prefix = broker.prefix().to_owned();
        let cleaned = broker.destroy().await;
        if cleaned.is_ok() {
            eprintln!("deleted the exchanges and queues under prefix {prefix}");
        }
        // The bench's own failure, if any, is the one reported.
        self.finish(result.and(cleaned)).await
    }

    /// Drops the database after `result`; a failure to drop is reported only if `result` is
    /// a success.
    async fn finish(self, result: anyhow::Result<()>) -> anyhow::Result<()> {
        let name = self.name.clone();
        let destroyed = self.destroy().await;
        match (result, destroyed) {
            (Err(error), _) => Err(error),
            (Ok(()), Err(error)) => {
                Err(error.context(format!("database {name} is left behind; drop it by hand")))
            }
            (Ok(()), Ok(())) => Ok(()),
        }
    }

    /// Drops the database, disconnecting whoever is still on it. Safe to call when it was never
    /// created.
    async fn destroy(self) -> anyhow::Result<()> {
        let mut admin =
            self.admin.connect().await.context(
                "Failed to connect to PostgreSQL (database postgres) to drop the database",
            )?;
        // The name is ours and only [a-z0-9_], but quote it as any identifier must be.
        let statement = format!(
            "drop database if exists \"{}\" with (force)",
            self.name.replace('"', "\"\"")
        );
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut admin)
            .await
            .with_context(|| format!("Failed to drop database {}", self.name))?;
        admin.close().await.ok();
        Ok(())
    }
}

/// `bench`'s result, or an error if the process is interrupted first (the bench is then
/// dropped where it stands, and the clean-up runs).
async fn until_interrupted(bench: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::select! {
        result = bench => result,
        () = interrupted() => Err(anyhow!("interrupted")),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn interrupted() {
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            // No handler could be installed: never report a signal that did not come.
            Err(_) => std::future::pending().await,
        }
    };
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = terminate => {}
        () = ctrl_c => {}
    }
}
