//! What the events at positions were, as far as waiting for them goes: the tenant, the stream
//! and version, and the projections that receive them. Events never change, so the answers are
//! remembered; a command of this process tells its own events as it appends them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventstore::Position;
use moka::future::Cache;
use projections::projections_of_event;
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::ApiError;

/// How many positions' projections are remembered.
const POSITIONS_CAPACITY: u64 = 10_000;

/// The event at a position, as far as waiting for it goes.
#[derive(Clone)]
pub struct Written {
    /// The tenant whose event it is.
    tenant_id: Arc<str>,
    /// Its stream and version.
    pub written: (Uuid, i64),
    /// The projections that receive it.
    pub receiving: &'static [&'static str],
    /// When a command of this process appended it (and fed it to the projectors here).
    appended_here: Option<Instant>,
}

/// How long after a command of this process appended an event a query waiting for it relies
/// on the feed's commit to wake it, rather than asking the database first. Later, the event
/// is likely applied already (or the projectors are far behind): asking is cheaper then.
const JUST_APPENDED: Duration = Duration::from_millis(100);

impl Written {
    fn new(event_type: &str, written: (Uuid, i64), tenant_id: &str) -> Self {
        Self {
            tenant_id: tenant_id.into(),
            written,
            receiving: projections_of_event(event_type).unwrap_or(&[]),
            appended_here: None,
        }
    }

    /// Whether this process appended it a moment ago, so its own projectors have it in hand.
    pub fn just_fed(&self) -> bool {
        self.appended_here
            .is_some_and(|at| at.elapsed() < JUST_APPENDED)
    }
}

/// The events at positions, remembered: events never change, so neither does the answer.
#[derive(Clone)]
pub struct Positions {
    cache: Cache<i64, Written>,
}

impl Default for Positions {
    fn default() -> Self {
        Self::new()
    }
}

impl Positions {
    pub fn new() -> Self {
        Self {
            cache: Cache::new(POSITIONS_CAPACITY),
        }
    }

    /// Asks the event store (`store`); a position no event has is a 400. An event no
    /// projection follows needs no wait.
    pub async fn event_at(
        &self,
        store: &PgPool,
        tenant: &str,
        position: Position,
    ) -> Result<Written, ApiError> {
        let unknown = || {
            ApiError::BadRequest(format!(
                "X-Min-Position {position} names no event; use a position a command returned"
            ))
        };
        if let Some(event) = self.cache.get(&position.value()).await {
            return if &*event.tenant_id == tenant {
                Ok(event)
            } else {
                Err(unknown())
            };
        }
        let stored: Option<(String, Uuid, i64, String)> = sqlx::query_as(
            "select event_type, stream_id, version, tenant_id from events where position = $1",
        )
        .bind(position.value())
        .fetch_optional(store)
        .await?;
        // Not remembered: a position is unknown only until its event commits.
        let (event_type, stream, version, owner) = stored.ok_or_else(unknown)?;
        let event = Written::new(&event_type, (stream, version), &owner);
        self.cache.insert(position.value(), event.clone()).await;
        if owner != tenant {
            return Err(unknown());
        }
        Ok(event)
    }

    /// Remembers the event a command of this process just appended at `position`, so that a
    /// query waiting for it need not ask the event store what it was.
    pub async fn remember(
        &self,
        position: Position,
        event_type: &str,
        written: (Uuid, i64),
        tenant: &str,
    ) {
        let event = Written {
            appended_here: Some(Instant::now()),
            ..Written::new(event_type, written, tenant)
        };
        self.cache.insert(position.value(), event).await;
    }
}
