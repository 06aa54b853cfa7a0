//! HAP's pieces wired as `hap serve` wires them (`api/src/cli.rs`), for callers that start
//! them in-process.

use anyhow::Context;
use eventstore::{EventStore, Metadata};
use messaging::{AmqpUrls, Publisher, PublisherSettings, Topology};
use projections::ReadModel;
use projections::schema::Plans;
use uuid::Uuid;

/// HAP's publisher over `store`, to the exchanges under `prefix`, with production settings
/// (its quorum queues created on as many nodes as the broker's default says).
pub fn publisher(store: EventStore, amqp_url: &AmqpUrls, prefix: &str) -> Publisher {
    Publisher::new(
        store,
        PublisherSettings::new(amqp_url.clone(), Topology::new(prefix)),
    )
}

/// The read model of `instance` in the database at `url`, migrated: what `hap serve` opens.
pub async fn read_model(url: &str, instance: &str, size: u32) -> anyhow::Result<ReadModel> {
    let schema = projections::schema::schema_name(instance);
    let pool = projections::schema::connect(url, &schema, size, Plans::Cached)
        .await
        .with_context(|| format!("Failed to connect to the read model (schema {schema})"))?;
    projections::schema::migrate(&pool)
        .await
        .with_context(|| format!("Failed to migrate the read model (schema {schema})"))?;
    Ok(ReadModel::new(pool))
}

/// What HAP stores beside the events of a request without an `X-Correlation-Id`.
pub fn metadata() -> Metadata {
    Metadata {
        tenant_id: api::auth::INSECURE_TENANT.into(),
        correlation_id: Uuid::now_v7().to_string(),
        causation_id: None,
        actor_id: None,
    }
}
