//! `/console`: the operators' web console, served by every process with the `query` role.
//!
//! Pages are rendered on the server (maud) from the event store and this instance's read
//! model; the stylesheet and the little script that follows the live numbers are compiled
//! into the binary, so the console needs neither a build step nor the internet. Every page
//! needs an operator (`ops:read`), and shows only the operator's tenant unless the token is
//! a platform operator's.
//!
//! - [`session`]: who the operator is (bearer token or session cookie), signing in and out,
//!   and refusing cross-site writes.
//! - [`pages`]: the overview, sagas, streams and dead-letters pages.
//! - [`layout`]: the frame every page shares, and the pieces pages are made of.
//! - [`live`]: the overview's numbers pushed as Server-Sent Events.
//! - [`actions`]: the record of who replayed or discarded which dead letters.
//! - [`assets`]: the embedded stylesheet and script.

pub mod actions;
pub mod assets;
pub mod layout;
pub mod live;
pub mod pages;
pub mod session;

use axum::Router;
use axum::routing::{get, post};

use crate::state::AppState;

/// The console's routes. They stay out of the OpenAPI document: they answer HTML for
/// browsers, not JSON for clients.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(pages::overview::page))
        .route("/console/sagas", get(pages::sagas::page))
        .route("/console/streams", get(pages::streams::find))
        .route("/console/streams/{id}", get(pages::streams::page))
        .route("/console/dead-letters", get(pages::dead_letters::page))
        .route(
            "/console/dead-letters/message",
            get(pages::dead_letters::message),
        )
        .route(
            "/console/dead-letters/confirm",
            get(pages::dead_letters::confirm),
        )
        .route(
            "/console/dead-letters/resolve",
            post(pages::dead_letters::resolve),
        )
        .route("/console/live", get(live::overview))
        .route("/console/session", post(session::sign_in))
        .route("/console/session/end", post(session::sign_out))
        .route("/console/assets/console.css", get(assets::stylesheet))
        .route("/console/assets/live.js", get(assets::script))
}
