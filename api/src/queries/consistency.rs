//! Read-your-writes: a command answers a `position`, and a query carrying it as
//! `X-Min-Position` waits until the projections it reads have applied that event.
//!
//! Only the projections that both receive the event and fill the route's tables are waited
//! for: a query of physicians need not wait for a patient's update.

use std::marker::PhantomData;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use eventstore::Position;
use projections::{CONSULTATIONS, PATIENTS, PHYSICIANS, RECORDS};

use crate::error::ApiError;
use crate::state::AppState;

pub const MIN_POSITION: &str = "x-min-position";

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
