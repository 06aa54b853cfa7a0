//! The scratch database every subcommand runs in: created fresh on the given server, migrated
//! by HAP's own code, and dropped at the end whatever happened.

use anyhow::anyhow;
use hap_support::database::ScratchDatabase as Scratch;
use sqlx::PgPool;
use tokio::signal::unix::{SignalKind, signal};

use crate::broker::ScratchBroker;

/// A database named `hap_bench_<random>` on the server of the URL given on the command line.
pub struct ScratchDatabase(Scratch);

impl ScratchDatabase {
    /// Picks a fresh name on the server of `server_url`; nothing is created yet.
    pub fn new(server_url: &str) -> anyhow::Result<Self> {
        Scratch::new(server_url, "bench")
            .map(Self)
            .map_err(|e| e.context("--database-url"))
    }

    pub fn name(&self) -> &str {
        self.0.name()
    }

    pub fn url(&self) -> &str {
        self.0.url()
    }

    /// Creates and migrates the database through HAP's own code, and returns a pool of `size`
    /// connections on it: the pool HAP itself would run with.
    pub async fn create(&self, size: u32) -> anyhow::Result<PgPool> {
        self.0.create(size).await
    }

    /// Another pool of `size` connections on the database [`ScratchDatabase::create`] made, as
    /// HAP opens it: for a run after one that closed its pool.
    pub async fn connect(&self, size: u32) -> anyhow::Result<PgPool> {
        api::db::connect(self.url(), size, false).await
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
        let name = self.name().to_owned();
        let destroyed = self.0.destroy().await;
        match (result, destroyed) {
            (Err(error), _) => Err(error),
            (Ok(()), Err(error)) => {
                Err(error.context(format!("database {name} is left behind; drop it by hand")))
            }
            (Ok(()), Ok(())) => Ok(()),
        }
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
