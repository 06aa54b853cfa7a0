//! HAP's HTTP API, command line and wiring. `main.rs` only parses the command line and calls
//! [`cli::run`]; everything else is here so that tests can start the real thing.
//!
//! # Layout
//! - [`cli`]: the `hap` subcommands.
//! - [`auth`]: the scope each route needs, checked against the caller's bearer token;
//!   verifying and minting tokens in [`auth::token`].
//! - [`config`]: settings from flags, `HAP_*` variables and defaults.
//! - [`db`]: connecting, creating the database, migrating.
//! - [`demo`]: sample data through the command path.
//! - [`state`]: [`AppState`], shared by every handler.
//! - [`commands`]: the command routes, which run through the `commands` crate's pipeline.
//! - [`observers`]: what this process does after each append (feeding its own projectors).
//! - [`queries`]: the query routes over the read model, read-your-writes and their caches.
//! - [`console`]: `/console`, the operators' web console (server-rendered HTML, live numbers
//!   over Server-Sent Events), served with the query routes.
//! - [`extract`]: request extractors (body, headers, path ids) that map malformed input to
//!   400/413/415/422.
//! - [`error`]: [`error::ApiError`] and its problem+json form.
//! - [`vitals`]: this process's own figures, recorded with its heartbeat for the console.
//! - [`health`], [`openapi`], [`telemetry`]: operations (the broker's health is watched by
//!   `messaging::health`).

pub mod auth;
pub mod cli;
pub mod commands;
pub mod config;
pub mod console;
pub mod db;
pub mod demo;
pub mod error;
pub mod extract;
pub mod health;
pub mod observers;
pub mod openapi;
pub mod queries;
pub mod state;
pub mod telemetry;
pub mod vitals;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

pub use state::AppState;

use error::ApiError;
use extract::{BODY_LIMIT, CORRELATION_ID};

/// Every HAP process allocates through mimalloc: under load, glibc's malloc (its arenas,
/// consolidation and frees across threads) took as much of the process's own CPU time as the
/// handlers themselves (docs/benchmarks.md). It is built without transparent huge pages: each
/// page it takes fresh from the system would be a 2 MiB one the kernel zeroes whole, which was
/// a quarter of a rebuild's CPU time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long a request may take before it is answered with 503.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `listener` with `TCP_NODELAY` on every connection it accepts, so that an answer leaves as
/// soon as it is written: with Nagle's algorithm on, a small write that follows another one
/// waits for the client's delayed acknowledgement (tens of milliseconds) on a kept-alive
/// connection.
pub fn without_delay(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY on a connection");
        }
    })
}

/// The whole HTTP API with its middleware. Command routes are served when `commands` is set,
/// query routes and the console when `queries` is.
pub fn router(app: AppState, commands: bool, queries: bool) -> Router {
    let (mut routes, openapi) = split(api_routes(commands, queries));
    if queries {
        routes = routes.merge(console::router());
    }
    let openapi = Arc::new(openapi);
    let correlation = HeaderName::from_static(CORRELATION_ID);
    routes
        .route(
            "/openapi.json",
            get(move || {
                let openapi = Arc::clone(&openapi);
                async move { Json(openapi) }
            }),
        )
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(correlation.clone(), MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
                        let correlation_id = request
                            .headers()
                            .get(CORRELATION_ID)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default();
                        tracing::info_span!(
                            "request",
                            method = %request.method(),
                            // The path only: a query string can carry a patient's name.
                            path = %request.uri().path(),
                            correlation_id,
                        )
                    }),
                )
                .layer(PropagateRequestIdLayer::new(correlation))
                .layer(axum::middleware::map_response(
                    error::problem_for_bare_errors,
                ))
                .layer(axum::middleware::from_fn(telemetry::track_requests))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::SERVICE_UNAVAILABLE,
                    REQUEST_TIMEOUT,
                ))
                .layer(CatchPanicLayer::new())
                .layer(DefaultBodyLimit::max(BODY_LIMIT)),
        )
        .with_state(app)
}

/// Every documented route, so that the OpenAPI document is generated from the same list.
fn api_routes(commands: bool, queries: bool) -> OpenApiRouter<AppState> {
    let mut routes =
        OpenApiRouter::with_openapi(openapi::ApiDoc::openapi()).merge(health::router());
    if commands {
        routes = routes
            .merge(commands::patients::router())
            .merge(commands::physicians::router())
            .merge(commands::consultations::router())
            .merge(commands::records::router());
    }
    if queries {
        routes = routes.merge(queries::router());
    }
    routes
}

/// The OpenAPI document of the full API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    split(api_routes(true, true)).1
}

/// The router and its OpenAPI document, with the answers every operation shares filled in.
fn split(routes: OpenApiRouter<AppState>) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (routes, mut openapi) = routes.split_for_parts();
    openapi::ProblemAnswers.modify(&mut openapi);
    (routes, openapi)
}
