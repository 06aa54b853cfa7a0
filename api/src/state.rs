//! The state every handler shares: cheap clones of pools, caches and settings.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use commands::Pipeline;
use eventstore::EventStore;
use eventstore::readiness::Readiness;
use messaging::health::BrokerHealth;
use metrics_exporter_prometheus::PrometheusHandle;
use privacy::{MasterKey, Vault};
use projections::ReadModel;
use sqlx::PgPool;

use crate::auth::token::{AuthConfigError, Verifier};
use crate::config::Settings;
use crate::observers::ReadSideObserver;
use crate::queries::cache::QueryCaches;

/// How many aggregate states the command side keeps in memory.
const AGGREGATE_CACHE_CAPACITY: u64 = 100_000;

/// What the handlers share, behind one `Arc`: axum clones the state for every request, and
/// cloning the parts one by one (pools, caches, settings) was a dozen reference counts each
/// time (docs/benchmarks.md, "Figures behind choices in the code").
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The parts of an [`AppState`], which its handlers reach through `Deref`.
pub struct Shared {
    /// Runs every command, for the HTTP handlers as for the sagas of this process.
    pub commands: Pipeline,
    pub settings: Arc<Settings>,
    /// Renders `/metrics`; the recorder behind it is global to the process.
    pub metrics: PrometheusHandle,
    /// For `/health/ready`: the broker connection, and whether this process's roles run.
    pub broker: BrokerHealth,
    pub readiness: Readiness,
    /// This instance's read model, which answers every query.
    pub read: ReadModel,
    /// The query side's caches, which follow `read`'s projector commits.
    pub queries: QueryCaches,
    /// Verifies every request's bearer token.
    pub auth: Arc<Verifier>,
}

impl AppState {
    /// Needs a Tokio runtime: it starts watching the broker. Fails if `settings` configure no
    /// way to verify tokens and do not switch authentication off. `readiness` holds the parts
    /// of the process that `/health/ready` waits for (none, for a process of HTTP routes only).
    pub fn new(
        store: EventStore,
        read: ReadModel,
        settings: Settings,
        readiness: Readiness,
    ) -> Result<Self, AuthConfigError> {
        let auth = Arc::new(Verifier::from_settings(&settings)?);
        let queries = QueryCaches::new(&read);
        let commands = pipeline(store, &settings)?.observed_by(Arc::new(ReadSideObserver {
            read: read.clone(),
            queries: queries.clone(),
        }));
        Ok(Self(Arc::new(Shared {
            auth,
            queries,
            read,
            commands,
            broker: BrokerHealth::watch(settings.amqp_url.clone()),
            readiness,
            settings: Arc::new(settings),
            metrics: crate::telemetry::metrics_handle(),
        })))
    }

    pub fn pool(&self) -> &PgPool {
        self.commands.store().pool()
    }
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The command pipeline over `store` as `settings` configure it, with no observer yet: it
/// seals personal data with the process's vault ([`vault`]), which the store it returns
/// (`Pipeline::store`, for every other part of the process) opens every read with.
pub fn pipeline(store: EventStore, settings: &Settings) -> Result<Pipeline, AuthConfigError> {
    let vault = vault(store.pool(), settings)?;
    let store = store.opening_with(Arc::new(vault.clone()));
    let pipeline = Pipeline::new(
        store,
        AGGREGATE_CACHE_CAPACITY,
        Duration::from_millis(settings.scheduling_timeout_ms),
    )
    .sealing_with(vault);
    Ok(
        match settings.master_key().map_err(AuthConfigError::DataKey)? {
            Some(master) => pipeline.hashing_claims_with(master),
            None => pipeline,
        },
    )
}

/// The vault of a process over the store behind `pool`: subject keys wrapped under the
/// master key of `settings`, or, with authentication off and no key, under a fixed and public
/// development key. Build one per process: each keeps its own cache of keys.
pub fn vault(pool: &PgPool, settings: &Settings) -> Result<Vault, AuthConfigError> {
    match settings.master_key().map_err(AuthConfigError::DataKey)? {
        Some(master) => Ok(Vault::new(pool.clone(), master)),
        None if settings.insecure_no_auth => {
            tracing::warn!(
                "no data key (HAP_DATA_KEY): personal data is sealed under a fixed, PUBLIC \
                 development key and anyone with the store can read it; never keep real \
                 personal data this way"
            );
            Ok(Vault::new(
                pool.clone(),
                Arc::new(MasterKey::insecure_development()),
            ))
        }
        None => Err(AuthConfigError::NoDataKey),
    }
}
