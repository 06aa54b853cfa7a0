//! `/console/dead-letters`: the dead letters of this instance's queues, grouped by queue and
//! failure (an error fingerprint), and replaying or discarding one of them after a
//! confirmation (`ops:write`). Each action is logged with the operator who took it and
//! counted in `hap_console_dead_letter_actions_total`.
//!
//! Reading a dead-letter queue takes every message and puts it back, over a connection of its
//! own: the page costs one connection per queue, so it is read only when asked for, never by
//! the live overview. An operator of one clinic sees the messages of its tenant only; a
//! message whose body names no tenant shows to platform operators alone.

use std::collections::BTreeMap;

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use domain::service::Service;
use maud::{Markup, html};
use messaging::QueueNames;
use messaging::dlq::{self, Action, DeadLetter};
use serde::Deserialize;

use crate::auth::{OpsWrite, Scope};
use crate::console::layout::frame;
use crate::console::session::{Operator, cross_site, forbidden, same_site};
use crate::queries::Params;
use crate::state::AppState;

/// What an operator may do to a dead letter.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resolution {
    Replay,
    Discard,
}

impl Resolution {
    fn name(self) -> &'static str {
        match self {
            Self::Replay => "replay",
            Self::Discard => "discard",
        }
    }

    fn action(self) -> Action {
        match self {
            Self::Replay => Action::Replay,
            Self::Discard => Action::Discard,
        }
    }
}

/// One dead letter, named: the query of the confirmation page and the form it posts.
#[derive(Debug, Deserialize)]
pub struct Choice {
    queue: String,
    event: String,
    action: Resolution,
}

/// The main queues of this instance whose dead letters the console shows: its projectors' and
/// the saga queues every instance shares.
fn queues(app: &AppState) -> Vec<String> {
    let prefix = &app.settings.exchange_prefix;
    Service::ALL
        .into_iter()
        .flat_map(|service| {
            [
                QueueNames::new(prefix, service.name(), &app.settings.instance).main,
                QueueNames::shared(prefix, service.name()).main,
            ]
        })
        .collect()
}

/// What tells failures apart: the error with every word that holds a digit (ids, positions,
/// counts) replaced by `#`, so that the same failure of different messages groups together.
fn fingerprint(error: Option<&str>) -> String {
    let Some(error) = error else {
        return "(no error recorded)".to_owned();
    };
    let mut words = Vec::new();
    for word in error.split_whitespace() {
        if word.bytes().any(|b| b.is_ascii_digit()) {
            words.push("#");
        } else {
            words.push(word);
        }
    }
    words.join(" ").chars().take(200).collect()
}

/// Whether `operator` may see `letter`.
fn visible(operator: &Operator, letter: &DeadLetter) -> bool {
    match (operator.tenant(), &letter.tenant_id) {
        (None, _) => true,
        (Some(mine), Some(theirs)) => mine == theirs,
        (Some(_), None) => false,
    }
}

/// `GET /console/dead-letters`.
pub async fn page(State(app): State<AppState>, operator: Operator) -> Markup {
    let amqp = &app.settings.amqp_url;
    let names = queues(&app);
    let read = futures::future::join_all(names.iter().map(|queue| dlq::list(amqp, queue))).await;
    let mut groups: BTreeMap<(&str, String), Vec<DeadLetter>> = BTreeMap::new();
    let mut unread = Vec::new();
    for (queue, letters) in names.iter().zip(read) {
        match letters {
            Ok(letters) => {
                for letter in letters.into_iter().filter(|l| visible(&operator, l)) {
                    let key = (queue.as_str(), fingerprint(letter.error.as_deref()));
                    groups.entry(key).or_default().push(letter);
                }
            }
            // Most often a queue no consumer of this instance has declared.
            Err(_) => unread.push(queue.as_str()),
        }
    }
    let may_act = operator.0.may(OpsWrite::NAME);
    let body = html! {
        h1 { "Dead letters" }
        @if groups.is_empty() {
            p { "None: every message of this instance's queues was applied." }
        }
        @for ((queue, failure), letters) in &groups {
            h2.bad { code { (queue) } " · " (letters.len()) " × " (failure) }
            table {
                tr { th { "Event" } th { "Type" } th.num { "Retries" } th.num { "Bytes" } th { "" } }
                @for letter in letters {
                    @let id = letter.event_id.as_deref().unwrap_or("");
                    tr {
                        td { code { (id) } }
                        td { (letter.event_type.as_deref().unwrap_or("?")) }
                        td.num { (letter.retries.unwrap_or(0)) }
                        td.num { (letter.size) }
                        td {
                            @if !may_act {
                                span.muted { "needs ops:write" }
                            } @else if !id.is_empty() {
                                @for action in ["replay", "discard"] {
                                    a href=(confirmation(queue, id, action)) { (action) "…" }
                                    " "
                                }
                            }
                        }
                    }
                }
            }
        }
        @if !unread.is_empty() {
            p.muted { "Not found or not reachable: " (unread.join(", ")) }
        }
    };
    frame("Dead letters", Some(&operator.0), body)
}

/// The address of the page that confirms `action` on dead letter `event` of `queue`.
fn confirmation(queue: &str, event: &str, action: &str) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("queue", queue)
        .append_pair("event", event)
        .append_pair("action", action)
        .finish();
    format!("/console/dead-letters/confirm?{query}")
}

/// `GET /console/dead-letters/confirm`: asks before acting.
pub async fn confirm(operator: Operator, Params(choice): Params<Choice>) -> Response {
    if !operator.0.may(OpsWrite::NAME) {
        return forbidden(OpsWrite::NAME);
    }
    let action = choice.action.name();
    let body = html! {
        h1 { "Confirm" }
        p { (action) " the dead letter " code { (choice.event) } " of " code { (choice.queue) } "?" }
        form method="post" action="/console/dead-letters/resolve" {
            input type="hidden" name="queue" value=(choice.queue);
            input type="hidden" name="event" value=(choice.event);
            input type="hidden" name="action" value=(action);
            button type="submit" { "Yes, " (action) }
            " " a href="/console/dead-letters" { "Cancel" }
        }
    };
    frame("Confirm", Some(&operator.0), body).into_response()
}

/// `POST /console/dead-letters/resolve`: replays or discards one dead letter of the operator's
/// tenant.
pub async fn resolve(
    State(app): State<AppState>,
    headers: HeaderMap,
    operator: Operator,
    Form(choice): Form<Choice>,
) -> Response {
    if !same_site(&headers) {
        return cross_site();
    }
    if !operator.0.may(OpsWrite::NAME) {
        return forbidden(OpsWrite::NAME);
    }
    let resolved = if queues(&app).contains(&choice.queue) {
        dlq::resolve(
            &app.settings.amqp_url,
            &choice.queue,
            choice.action.action(),
            |letter| {
                letter.event_id.as_deref() == Some(&choice.event) && visible(&operator, letter)
            },
        )
        .await
    } else {
        Ok(0)
    };
    let action = choice.action.name();
    match resolved {
        Ok(0) => {
            let body = html! {
                h1 { "Not found" }
                p { "No dead letter " code { (choice.event) } " of yours is in " code { (choice.queue) } "." }
            };
            (
                StatusCode::NOT_FOUND,
                frame("Not found", Some(&operator.0), body),
            )
                .into_response()
        }
        Ok(count) => {
            // Who and what only: the message's body may hold a patient's data.
            tracing::info!(
                actor = %operator.0.subject,
                tenant = %operator.0.tenant_id,
                queue = %choice.queue,
                event_id = %choice.event,
                action,
                "an operator resolved a dead letter from the console"
            );
            metrics::counter!("hap_console_dead_letter_actions_total", "action" => action)
                .increment(count as u64);
            Redirect::to("/console/dead-letters").into_response()
        }
        Err(error) => {
            tracing::warn!(%error, queue = %choice.queue, "resolving a dead letter failed");
            let body = html! {
                h1 { "Not done" }
                p { "The broker did not complete the " (action) ": " (error) }
            };
            (
                StatusCode::SERVICE_UNAVAILABLE,
                frame("Not done", Some(&operator.0), body),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failures_fingerprint_leaves_out_its_numbers() {
        assert_eq!(
            fingerprint(Some("unknown event type Foo at position 42 (id 0190ab)")),
            "unknown event type Foo at position # (id #"
        );
        assert_eq!(
            fingerprint(Some("unknown event type Foo at position 7 (id 77)")),
            fingerprint(Some("unknown event type Foo at position 42 (id 0190ab)"))
        );
        assert_eq!(fingerprint(None), "(no error recorded)");
    }
}
