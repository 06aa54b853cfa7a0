//! A scratch database: a fresh name on a given server, created and migrated through HAP's own
//! code (`api::db`), so that what runs in it sees exactly the schema `hap serve` makes.

use std::str::FromStr;

use anyhow::Context;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgPool};
use url::Url;

/// A database named `hap_{label}_{random}` on the server of a URL. Nothing drops it by itself:
/// its owner calls [`ScratchDatabase::destroy`] (a test's from `Drop`, the bench's also after a
/// failure or an interruption).
#[derive(Debug, Clone)]
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
    pub fn new(server_url: &str, label: &str) -> anyhow::Result<Self> {
        let mut url =
            Url::parse(server_url).with_context(|| format!("{server_url} is not a URL"))?;
        let admin = PgConnectOptions::from_str(server_url)
            .with_context(|| format!("{server_url} is not a PostgreSQL URL"))?
            .database("postgres");
        // 12 hex digits of a v4 UUID: enough that two runs on one server never meet, short
        // enough to read in `\l`.
        let name = format!(
            "hap_{label}_{}",
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

    /// Drops the database, disconnecting whoever is still on it. Safe to call when it was never
    /// created.
    pub async fn destroy(&self) -> anyhow::Result<()> {
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
