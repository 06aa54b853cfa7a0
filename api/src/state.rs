//! The state every handler shares: cheap clones of pools, caches and settings.

use std::sync::Arc;

use eventstore::EventStore;
use metrics_exporter_prometheus::PrometheusHandle;
use projections::ReadModel;
use sqlx::PgPool;

use crate::aggregates::Aggregates;
use crate::broker::BrokerHealth;
use crate::config::Settings;
use crate::queries::QueryCaches;

/// The tenant every request acts for. The store and the messages carry a tenant id so that
/// more can be added; the API has no way yet to name another one.
pub const TENANT: &str = "default";

/// How many aggregate states the command side keeps in memory.
const AGGREGATE_CACHE_CAPACITY: u64 = 100_000;

#[derive(Clone)]
pub struct AppState {
    pub aggregates: Aggregates,
    pub settings: Arc<Settings>,
    /// Renders `/metrics`; the recorder behind it is global to the process.
    pub metrics: PrometheusHandle,
    /// For `/health/ready`.
    pub broker: BrokerHealth,
    /// This instance's read model, which answers every query.
    pub read: ReadModel,
    /// The query side's caches, which follow `read`'s projector commits.
    pub queries: QueryCaches,
}

impl AppState {
    /// Needs a Tokio runtime: it starts watching the broker.
    pub fn new(store: EventStore, read: ReadModel, settings: Settings) -> Self {
        Self {
            queries: QueryCaches::new(&read),
            read,
            aggregates: Aggregates::new(store, AGGREGATE_CACHE_CAPACITY),
            broker: BrokerHealth::watch(settings.amqp_url.clone()),
            settings: Arc::new(settings),
            metrics: crate::telemetry::metrics_handle(),
        }
    }

    pub fn pool(&self) -> &PgPool {
        self.aggregates.store().pool()
    }
}
