//! Loading aggregates from the event store, with a moka cache of their state in front.
//!
//! The cache can be stale (another process may have appended since), and that is safe by
//! construction: a command decided on a cached state is appended at the cached version, so a
//! stale entry ends in a version conflict, a reload and a fresh decision. Facts read from
//! *other* aggregates are not protected by that check, so they are always caught up first
//! ([`Aggregates::current`]).

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use domain::event::DecodeError;
use domain::{Aggregate, versions};
use eventstore::{EventStore, Position, Store, StreamVersion};
use moka::future::Cache;
use uuid::Uuid;

/// An aggregate's state as of a version of its stream.
#[derive(Debug, Clone, Default)]
pub struct Loaded<A> {
    pub state: A,
    pub version: StreamVersion,
    /// The position of the stream's last event (the token a no-op command returns).
    pub position: Option<Position>,
    /// The tenant the stream belongs to (`None` while it has no event).
    pub tenant_id: Option<String>,
}

impl<A> Loaded<A> {
    /// Whether `tenant` may see this aggregate: it is theirs, or it does not exist yet.
    pub fn belongs_to(&self, tenant: &str) -> bool {
        self.tenant_id.as_deref().is_none_or(|t| t == tenant)
    }
}

/// Why an aggregate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading the stream failed")]
    Store(#[from] sqlx::Error),
    /// A stored event this version of HAP cannot read: nothing a retry would fix.
    #[error("a stored event cannot be decoded")]
    Undecodable(#[from] DecodeError),
}

/// The aggregates in a store (PostgreSQL's, unless a test gives another).
#[derive(Clone)]
pub struct Aggregates<S = EventStore> {
    store: S,
    /// Stream id → `Loaded<A>` of the stream's aggregate type. Stream ids are unique across
    /// types, so one cache serves all of them.
    cache: Cache<Uuid, Arc<dyn Any + Send + Sync>>,
}

impl<S: Store> Aggregates<S> {
    pub fn new(store: S, capacity: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(capacity)
            .time_to_idle(Duration::from_secs(600))
            .build();
        Self { store, cache }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// The cached state, which may be stale: only for the aggregate a command is appended
    /// to, whose version check catches a stale entry.
    pub async fn cached<A: Aggregate>(&self, id: Uuid) -> Option<Loaded<A>> {
        let entry = self.cache.get(&id).await?;
        entry.downcast_ref::<Loaded<A>>().cloned()
    }

    /// The state as of now: the cached state (or the empty one) caught up with the stream.
    #[tracing::instrument(skip(self), fields(aggregate = A::KIND.as_str()), err)]
    pub async fn current<A: Aggregate>(&self, id: Uuid) -> Result<Loaded<A>, LoadError> {
        let mut loaded = self.cached::<A>(id).await.unwrap_or_default();
        let tail = self.store.read_stream(id, loaded.version).await?;
        if tail.is_empty() {
            return Ok(loaded);
        }
        for recorded in tail {
            let events = versions::decode(
                &recorded.event_type,
                recorded.schema_version,
                recorded.payload.get(),
            )?;
            for event in &events {
                loaded.state = loaded.state.evolve(event);
            }
            loaded.version = recorded.version();
            loaded.position = Some(recorded.position());
            loaded.tenant_id = Some(recorded.tenant_id);
        }
        self.remember(id, loaded.clone()).await;
        Ok(loaded)
    }

    /// The state as of now as `tenant` sees it: the empty state if the stream is another
    /// tenant's. For facts a command needs from other aggregates.
    pub async fn current_in<A: Aggregate>(
        &self,
        tenant: &str,
        id: Uuid,
    ) -> Result<Loaded<A>, LoadError> {
        let loaded = self.current::<A>(id).await?;
        Ok(if loaded.belongs_to(tenant) {
            loaded
        } else {
            Loaded::default()
        })
    }

    /// Caches a state the caller knows to be current (it just appended it).
    pub async fn remember<A: Aggregate>(&self, id: Uuid, loaded: Loaded<A>) {
        self.cache.insert(id, Arc::new(loaded)).await;
    }
}
