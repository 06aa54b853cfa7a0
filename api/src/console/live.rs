//! `GET /console/live`: the overview's numbers as Server-Sent Events (event `overview`),
//! now and every [`EVERY`], so that an open overview follows what happens without reloading.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use tokio::time::MissedTickBehavior;

use super::pages::overview::Snapshot;
use super::session::Operator;
use crate::state::AppState;

/// How often the numbers are read again and sent.
const EVERY: Duration = Duration::from_secs(2);

pub async fn overview(
    State(app): State<AppState>,
    operator: Operator,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let events = futures::stream::unfold(
        (app, operator, ticks),
        |(app, operator, mut ticks)| async move {
            loop {
                ticks.tick().await;
                match Snapshot::read(&app, &operator).await {
                    Ok(snapshot) => {
                        let data = serde_json::to_string(&snapshot.numbers())
                            .unwrap_or_else(|_| "{}".to_owned());
                        let event = Event::default().event("overview").data(data);
                        return Some((Ok(event), (app, operator, ticks)));
                    }
                    // The database is away for a moment: the page keeps its last numbers,
                    // and the next tick tries again.
                    Err(error) => tracing::debug!(%error, "reading the console's numbers failed"),
                }
            }
        },
    );
    Sse::new(events).keep_alive(KeepAlive::default())
}
