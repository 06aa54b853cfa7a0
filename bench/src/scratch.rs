//! What every benchmark that uses the broker opens with: a scratch database and exchange
//! prefix, cleaned up whatever happens, a pool of HAP's size on the database, and the facts of
//! the machine for the report.

use sqlx::PgPool;

use crate::broker::{ScratchBroker, Servers};
use crate::database::ScratchDatabase;
use crate::report::Facts;
use crate::system::POOL_SIZE;

/// The scratch servers of one benchmark, as [`run`] hands them over.
pub struct Scratch<'a> {
    pub database: &'a ScratchDatabase,
    pub broker: &'a ScratchBroker,
    /// HAP's pool on `database`, migrated.
    pub pool: PgPool,
    pub facts: Facts,
}

/// Runs `bench` (the subcommand `name`, with its `args`) on a scratch database and exchange
/// prefix of `servers`, then deletes both.
pub async fn run<A>(
    name: &str,
    servers: &Servers,
    args: &A,
    bench: impl AsyncFnOnce(&A, Scratch<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let database = ScratchDatabase::new(&servers.database_url)?;
    let broker = ScratchBroker::new(&servers.amqp_url);
    eprintln!(
        "hap-bench {name}: scratch database {}, exchange prefix {}",
        database.name(),
        broker.prefix()
    );
    database
        .run_with_broker(broker, async |database, broker| {
            let pool = database.create(POOL_SIZE).await?;
            let facts = Facts::gather(&pool).await?;
            let scratch = Scratch {
                database,
                broker,
                pool,
                facts,
            };
            bench(args, scratch).await
        })
        .await
}
