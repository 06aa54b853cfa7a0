//! The command side of the HTTP API: one module per resource, and the pipeline every command
//! goes through ([`execute`]): replay a remembered response, load, check `If-Match`, decide,
//! append with claims and the idempotency key in one statement, retry on a version conflict.

pub mod consultations;
pub mod patients;
pub mod physicians;
pub mod records;

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use domain::values::{Invalid, Reason};
use domain::{Aggregate, Event};
use eventstore::{
    Append, AppendError, Appended, Claim, Metadata, NewEvent, Remember, StoredResponse,
    StreamVersion,
};
use projections::envelope::Envelope;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::aggregates::Loaded;
use crate::error::{ApiError, FieldError};
use crate::extract::CommandContext;
use crate::state::{AppState, TENANT};

/// How many times a command is decided again after another writer got to its stream first.
/// Each retry reloads only the events appended meanwhile.
const ATTEMPTS: usize = 10;

/// What every successful command answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CommandResponse {
    pub id: Uuid,
    /// The aggregate's stream version after the command.
    pub version: u64,
    /// Opaque token for `X-Min-Position`.
    pub position: Option<String>,
    /// Only when a consultation is requested: `requested`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
}

/// How a command answers when it succeeds.
pub struct Reply {
    pub status: StatusCode,
    /// The resource's id (a record's, even though its stream is the record book's).
    pub id: Uuid,
    pub location: Option<String>,
    /// The consultation status to report (`requested` when scheduling starts).
    pub consultation_status: Option<&'static str>,
}

impl Reply {
    pub fn ok(id: Uuid) -> Self {
        Self {
            status: StatusCode::OK,
            id,
            location: None,
            consultation_status: None,
        }
    }

    pub fn created(id: Uuid, location: String) -> Self {
        Self {
            status: StatusCode::CREATED,
            location: Some(location),
            ..Self::ok(id)
        }
    }
}

/// The stream a command is appended to.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    /// A stream whose id the server generated for this command (a UUIDv7 no one else can
    /// know yet): it is empty, and reading it would only cost a round trip.
    New(Uuid),
    Existing(Uuid),
}

/// Runs one command against the aggregate in `stream`. `command` may be decided
/// several times (after conflicts), always on a state at least as new as the last one.
pub async fn execute<A>(
    app: &AppState,
    context: &CommandContext,
    stream: Stream,
    command: A::Command,
    reply: Reply,
) -> Result<Response, ApiError>
where
    A: Aggregate,
    A::Command: Clone,
{
    if let Some(replayed) = replay(app, context).await? {
        return Ok(replayed);
    }
    let aggregates = &app.aggregates;
    // `current` says whether `loaded` was read from the store just now, or may be a stale
    // cache entry. Only an append of events is protected by the version check; a refusal, a
    // no-op or a 412 decided on a stale entry would be wrong, so those are decided again on
    // the current state before they are answered.
    let (stream_id, (mut loaded, mut current)) = match stream {
        Stream::New(id) => (id, (Loaded::<A>::default(), true)),
        Stream::Existing(id) => match aggregates.cached::<A>(id).await {
            Some(hit) => (id, (hit, false)),
            None => (id, (aggregates.current::<A>(id).await?, true)),
        },
    };
    let mut conflicts = 0;
    loop {
        let decision = loaded.state.decide(command.clone());
        // On a stream that does not exist the command's own rule answers (404), not If-Match.
        let precondition_failed = loaded.version != StreamVersion::EMPTY
            && context.if_match.is_some_and(|v| v != loaded.version);
        let accepted = matches!(&decision, Ok(events) if !events.is_empty());
        if !current && (precondition_failed || !accepted) {
            loaded = aggregates.current(stream_id).await?;
            current = true;
            continue;
        }
        if let Some(expected) = context.if_match.filter(|_| precondition_failed) {
            return Err(ApiError::PreconditionFailed {
                expected: expected.value(),
                current: loaded.version.value(),
            });
        }
        let events = decision?;
        let version = loaded.version.value() + events.len() as u64;
        let body = CommandResponse {
            id: reply.id,
            version,
            position: loaded.position.map(|p| p.to_string()),
            status: reply.consultation_status,
        };
        if events.is_empty() && context.idempotency_key.is_none() {
            return Ok(respond(&reply, &body));
        }
        let stored: Vec<NewEvent> = events.iter().map(new_event).collect();
        let identities: Vec<(Uuid, DateTime<Utc>)> =
            stored.iter().map(|e| (e.event_id, e.occurred_at)).collect();
        let append = Append {
            stream_id,
            aggregate_type: A::KIND.as_str().to_owned(),
            expected: loaded.version,
            events: stored,
            claims: events
                .iter()
                .flat_map(Event::claims)
                .map(|(kind, value)| Claim {
                    kind: kind.to_owned(),
                    value,
                })
                .collect(),
            remember: context.idempotency_key.clone().map(|key| Remember {
                key,
                request_hash: context.request_hash.clone(),
                status: reply.status.as_u16(),
                body: serde_json::to_value(&body).expect("responses serialise"),
                headers: stored_headers(&reply, version),
            }),
            metadata: Metadata {
                tenant_id: TENANT.to_owned(),
                correlation_id: context.correlation_id.clone(),
                causation_id: None,
                schema_version: 1,
            },
        };
        match app.aggregates.store().append(append).await {
            Ok(appended) => {
                app.read
                    .local
                    .offer(|| fed(stream_id, &events, &identities, &appended));
                if let (Some(position), Some(last)) = (appended.position(), events.last()) {
                    let written = (stream_id, appended.version.as_i64());
                    app.queries
                        .positions
                        .remember(position, last.event_type(), written)
                        .await;
                }
                let state = events.iter().fold(loaded.state, |s, e| s.evolve(e));
                let position = appended.position().or(loaded.position);
                aggregates
                    .remember(
                        stream_id,
                        Loaded {
                            state,
                            version: appended.version,
                            position,
                        },
                    )
                    .await;
                let body = CommandResponse {
                    position: position.map(|p| p.to_string()),
                    ..body
                };
                return Ok(respond(&reply, &body));
            }
            Err(AppendError::Conflict { .. }) => {
                conflicts += 1;
                tracing::debug!(conflicts, "version conflict, deciding again");
                if conflicts == ATTEMPTS {
                    break;
                }
                loaded = aggregates.current(stream_id).await?;
                current = true;
            }
            Err(AppendError::KeyTaken) => {
                // A request with the same key committed first: answer as it did.
                return replay(app, context).await?.ok_or_else(|| {
                    ApiError::internal(anyhow::anyhow!("idempotency key vanished"))
                });
            }
            Err(AppendError::ClaimTaken { kind, value }) => {
                return Err(claim_conflict(&kind, &value));
            }
            Err(other) => return Err(other.into()),
        }
    }
    Err(ApiError::Conflict(
        "the resource kept changing concurrently; try again".into(),
    ))
}

/// The remembered response to this request's idempotency key, if there is one.
async fn replay(app: &AppState, context: &CommandContext) -> Result<Option<Response>, ApiError> {
    let Some(key) = &context.idempotency_key else {
        return Ok(None);
    };
    let Some(stored) = app
        .aggregates
        .store()
        .remembered_response(TENANT, key)
        .await?
    else {
        return Ok(None);
    };
    if stored.request_hash != context.request_hash {
        return Err(ApiError::IdempotencyKeyReused);
    }
    Ok(Some(replayed(stored)))
}

fn replayed(stored: StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).expect("stored statuses are valid");
    let mut response = (status, axum::Json(stored.body)).into_response();
    if let Value::Object(headers) = stored.headers {
        for (name, value) in headers {
            if let (Ok(name), Some(Ok(value))) = (
                HeaderName::try_from(name),
                value.as_str().map(HeaderValue::from_str),
            ) {
                response.headers_mut().insert(name, value);
            }
        }
    }
    response
}

fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

fn stored_headers(reply: &Reply, version: u64) -> Value {
    let mut headers = json!({ "etag": etag(version) });
    if let Some(location) = &reply.location {
        headers["location"] = json!(location);
    }
    headers
}

fn respond(reply: &Reply, body: &CommandResponse) -> Response {
    let mut response = (reply.status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(&etag(body.version)).expect("an ETag is ASCII"),
    );
    if let Some(location) = &reply.location {
        headers.insert(
            header::LOCATION,
            HeaderValue::from_str(location).expect("locations are ASCII paths"),
        );
    }
    response
}

/// The events just appended, as this process's own projectors take them: they need not wait
/// for the broker's copies to apply them.
fn fed(
    stream_id: Uuid,
    events: &[Event],
    identities: &[(Uuid, DateTime<Utc>)],
    appended: &Appended,
) -> Vec<Envelope> {
    let first = appended.version.as_i64() - events.len() as i64 + 1;
    let stored = events.iter().zip(identities).zip(&appended.positions);
    (first..)
        .zip(stored)
        .map(
            |(version, ((event, &(event_id, occurred_at)), position))| Envelope {
                event_id,
                stream_id,
                version,
                position: position.value(),
                occurred_at,
                event: event.clone(),
            },
        )
        .collect()
}

fn new_event(event: &Event) -> NewEvent {
    let (event_type, payload) = event.into_parts();
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: event_type.to_owned(),
        payload,
        // Truncated to microseconds, what PostgreSQL keeps, so the stored and the
        // published time are the same instant.
        occurred_at: chrono::DateTime::from_timestamp_micros(Utc::now().timestamp_micros())
            .expect("now is a valid timestamp"),
    }
}

/// The 409 for a value another aggregate holds already.
fn claim_conflict(kind: &str, value: &str) -> ApiError {
    let what = match kind {
        "patient.documentNumber" => "a patient with this documentNumber",
        "physician.licenseNumber" => "a physician with this licenseNumber",
        _ => "a resource with this value",
    };
    ApiError::Conflict(format!("{what} ({value:?}) already exists"))
}

/// The optional body of the deactivation commands.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Deactivate {
    reason: Option<String>,
}

fn deactivation_reason(body: Option<Deactivate>) -> Result<Option<Reason>, ApiError> {
    let mut fields = Fields::default();
    let reason = fields.check_optional(
        "reason",
        body.as_ref().and_then(|b| b.reason.as_deref()),
        Reason::parse,
    );
    fields.finish()?;
    Ok(reason.expect(CHECKED))
}

/// Collects the field errors of a request body, so that one 422 lists all of them.
#[derive(Default)]
pub struct Fields(Vec<FieldError>);

/// The message of the `expect` after [`Fields::finish`]: every `None` was recorded as an error.
pub const CHECKED: &str = "Fields::finish returned Ok, so every checked value is Some";

impl Fields {
    /// The value, or `None` with the error recorded under `field`.
    pub fn check<T>(&mut self, field: &str, result: Result<T, Invalid>) -> Option<T> {
        result
            .map_err(|Invalid(message)| self.0.push(FieldError::new(field, message)))
            .ok()
    }

    /// Like [`Fields::check`] for an optional field: `Some(None)` when it is absent.
    pub fn check_optional<T>(
        &mut self,
        field: &str,
        value: Option<&str>,
        parse: impl FnOnce(&str) -> Result<T, Invalid>,
    ) -> Option<Option<T>> {
        match value {
            None => Some(None),
            Some(value) => self.check(field, parse(value)).map(Some),
        }
    }

    /// Records an error that involves no single parsed value.
    pub fn reject(&mut self, field: &str, message: &str) {
        self.0.push(FieldError::new(field, message));
    }

    /// `Err(422)` listing every recorded error, if there is any.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.0))
        }
    }
}
