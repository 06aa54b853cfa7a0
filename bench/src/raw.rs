//! `raw_events`, the table the raw baselines of `append` and `e2e` write: a copy of `events`
//! with its identity column, defaults, check and indexes (`including all` copies every one of
//! them, so each insert maintains the same indexes as HAP's), and the one-row insert of a
//! patient's registration as HAP's first append of it stores the row.

use std::time::Duration;

use anyhow::Context;
use domain::AggregateKind;
use domain::event::PatientRegistered;
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use crate::database::ScratchDatabase;
use crate::system::now_micros;

/// The columns HAP's append sets, one row, autocommit.
const INSERT: &str = "insert into raw_events (event_id, stream_id, aggregate_type, version, \
    event_type, payload, tenant_id, correlation_id, causation_id, schema_version, occurred_at) \
    values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

/// A pool of up to `connections` on the scratch database, which now holds `raw_events`. Setup
/// waits at most `acquire_timeout` for a connection.
pub async fn events_pool(
    database: &ScratchDatabase,
    connections: u32,
    acquire_timeout: Duration,
) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(acquire_timeout)
        .connect(database.url())
        .await
        .context("Failed to connect to PostgreSQL for the raw baseline")?;
    sqlx::query("create table raw_events (like events including all)")
        .execute(&pool)
        .await
        .context("Failed to create raw_events")?;
    Ok(pool)
}

/// Inserts event `event_id`, the registration of `patient_id` with `payload`, as version 1 of
/// the patient's stream, with what HAP stores for a request without `X-Correlation-Id`.
pub async fn insert_registration(
    pool: &PgPool,
    event_id: Uuid,
    patient_id: Uuid,
    payload: &Value,
) -> anyhow::Result<()> {
    sqlx::query(INSERT)
        .bind(event_id)
        .bind(patient_id)
        .bind(AggregateKind::Patient.as_str())
        .bind(1_i64)
        .bind(PatientRegistered::EVENT_TYPE)
        .bind(payload)
        .bind(api::auth::INSECURE_TENANT)
        .bind(Uuid::now_v7().to_string())
        .bind(None::<Uuid>)
        .bind(1_i32)
        .bind(now_micros())
        .execute(pool)
        .await
        .context("insert into raw_events failed")?;
    Ok(())
}
