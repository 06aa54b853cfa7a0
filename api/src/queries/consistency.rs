//! Read-your-writes: a command answers a `position`, and a query carrying it as
//! `X-Min-Position` waits until the projections it reads have applied that event.
//!
//! Only the projections that both receive the event and fill the route's tables are waited
//! for: a query of physicians need not wait for a patient's update.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use eventstore::Position;
use moka::future::Cache;
use projections::{CONSULTATIONS, PATIENTS, PHYSICIANS, RECORDS, projections_of_event};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

pub const MIN_POSITION: &str = "x-min-position";

/// How many positions' projections are remembered.
const POSITIONS_CAPACITY: u64 = 10_000;

/// The projections whose tables a route reads.
pub trait Reads {
    const PROJECTIONS: &'static [&'static str];
}

pub enum Patients {}
pub enum Physicians {}
pub enum Consultations {}
pub enum Records {}
/// A patient's consultations: 404 comes from the patients table, the list from the
/// consultations table, so both must have applied the event.
pub enum PatientConsultations {}
/// A physician's agenda: as for [`PatientConsultations`].
pub enum PhysicianAgenda {}
/// A consultation's records: as for [`PatientConsultations`].
pub enum ConsultationRecords {}

impl Reads for Patients {
    const PROJECTIONS: &'static [&'static str] = &[PATIENTS];
}
impl Reads for Physicians {
    const PROJECTIONS: &'static [&'static str] = &[PHYSICIANS];
}
impl Reads for Consultations {
    const PROJECTIONS: &'static [&'static str] = &[CONSULTATIONS];
}
impl Reads for Records {
    const PROJECTIONS: &'static [&'static str] = &[RECORDS];
}
impl Reads for PatientConsultations {
    const PROJECTIONS: &'static [&'static str] = &[PATIENTS, CONSULTATIONS];
}
impl Reads for PhysicianAgenda {
    const PROJECTIONS: &'static [&'static str] = &[PHYSICIANS, CONSULTATIONS];
}
impl Reads for ConsultationRecords {
    const PROJECTIONS: &'static [&'static str] = &[CONSULTATIONS, RECORDS];
}

/// Extracting it waits for `X-Min-Position`, if the request has one, in the projections `R`
/// reads: the handler then reads a read model that includes that event. Extract it after the
/// path and query string, so that a malformed request is refused without waiting.
pub struct Consistent<R> {
    /// The position the request waited for.
    pub min_position: Option<Position>,
    reads: PhantomData<R>,
}

impl<R: Reads> FromRequestParts<AppState> for Consistent<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let min_position = min_position(parts)?;
        if let Some(position) = min_position {
            // Only the caller's tenant's positions can be waited for: another tenant's is as
            // unknown as one no event has.
            let caller = app.auth.authenticate(&parts.headers)?;
            wait_for::<R>(app, &caller.tenant_id, position).await?;
        }
        Ok(Self {
            min_position,
            reads: PhantomData,
        })
    }
}

fn min_position(parts: &Parts) -> Result<Option<Position>, ApiError> {
    let Some(value) = parts.headers.get(MIN_POSITION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|token| Position::parse(token.trim()))
        .map(Some)
        .ok_or_else(|| {
            ApiError::BadRequest(
                "X-Min-Position must be a position a command returned, such as \"42\"".into(),
            )
        })
}

async fn wait_for<R: Reads>(
    app: &AppState,
    tenant: &str,
    position: Position,
) -> Result<(), ApiError> {
    let event = app
        .queries
        .positions
        .event_at(app.pool(), tenant, position)
        .await?;
    let waited: Vec<&str> = R::PROJECTIONS
        .iter()
        .copied()
        .filter(|p| event.receiving.contains(p))
        .collect();
    let timeout = Duration::from_millis(app.settings.consistency_wait_ms);
    let reached = app
        .read
        .progress
        .wait_for(
            &app.read.pool,
            &waited,
            event.written,
            timeout,
            event.just_fed(),
        )
        .await?;
    if reached {
        Ok(())
    } else {
        Err(ApiError::ReadModelBehind(position))
    }
}

/// The event at a position, as far as waiting for it goes.
#[derive(Clone)]
struct Written {
    /// The tenant whose event it is.
    tenant_id: Arc<str>,
    /// Its stream and version.
    written: (Uuid, i64),
    /// The projections that receive it.
    receiving: &'static [&'static str],
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
    fn just_fed(&self) -> bool {
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
    async fn event_at(
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
