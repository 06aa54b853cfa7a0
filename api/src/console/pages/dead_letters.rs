//! `/console/dead-letters`: the dead letters of this instance's queues, grouped by queue and
//! failure (an error fingerprint) with their count, first and last seen and replays, and
//! replaying or discarding one of them or a whole group after a confirmation (`ops:write`).
//! Each action is recorded with the operator who took it ([`actions`], listed at the foot of
//! the page), logged and counted in `hap_console_dead_letter_actions_total`. A replay adds
//! one to the message's `x-replay-count` header, which stays with it if it fails again; the
//! page shows that count, or the replays recorded of the message if they are more (its
//! header is gone once a replayed message was applied, should it ever come back).
//! One message's page shows its headers, error and body (a clinical record's content only
//! with `records:read`, as on the streams page), and leads to replaying or discarding it.
//!
//! Reading a dead-letter queue takes every message and puts it back, over a connection of its
//! own: the page costs one connection per queue, so it is read only when asked for, never by
//! the live overview. An operator of one clinic sees (and acts on) the messages of its tenant
//! only; a message whose body names no tenant shows to platform operators alone.

use std::collections::BTreeMap;

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use domain::service::Service;
use maud::{Markup, html};
use messaging::QueueNames;
use messaging::dlq::{self, Action, DeadLetter, DlqError};
use serde::Deserialize;

use crate::auth::{OpsWrite, Scope};
use crate::console::actions::{self, Recorded, Taken};
use crate::console::layout::{frame, moment};
use crate::console::pages::streams::{may_read, payload};
use crate::console::session::{Operator, cross_site, forbidden, same_site};
use crate::queries::Params;
use crate::state::AppState;

/// What an operator may do to dead letters.
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

/// The dead letters an action is for, in a queue: one (`event`) or a whole failure group
/// (`failure`, its fingerprint). The query of the confirmation page and the form it posts.
#[derive(Debug, Deserialize)]
pub struct Choice {
    queue: String,
    event: Option<String>,
    failure: Option<String>,
    action: Resolution,
}

impl Choice {
    /// Whether `letter` is one of the chosen (which then `operator` must also see). A choice
    /// naming neither a message nor a group chooses none.
    fn picks(&self, operator: &Operator, letter: &DeadLetter) -> bool {
        let named = match (&self.event, &self.failure) {
            (Some(event), None) => letter.event_id.as_ref() == Some(event),
            (None, Some(failure)) => &fingerprint(letter.error.as_deref()) == failure,
            _ => false,
        };
        named && visible(operator, letter)
    }

    /// The chosen dead letters, in words.
    fn describe(&self) -> Markup {
        html! {
            @if let Some(event) = &self.event {
                "the dead letter " code { (event) }
            } @else {
                "every dead letter that failed with " code { (self.failure.as_deref().unwrap_or("")) }
            }
            " of " code { (self.queue) }
        }
    }
}

/// The dead letters of one queue that failed the same way.
struct Group<'a> {
    queue: &'a str,
    failure: String,
    letters: Vec<DeadLetter>,
}

impl Group<'_> {
    fn first_seen(&self) -> Option<DateTime<Utc>> {
        self.letters.iter().filter_map(|l| l.dead_lettered_at).min()
    }

    fn last_seen(&self) -> Option<DateTime<Utc>> {
        self.letters.iter().filter_map(|l| l.dead_lettered_at).max()
    }

    fn replays(&self) -> i64 {
        self.letters.iter().map(|l| l.replays).sum()
    }
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
    let mut read =
        futures::future::join_all(names.iter().map(|queue| dlq::list(amqp, queue))).await;
    // The letters come from the broker alone: with the database away (as when its failures
    // are what fills the dead-letter queues) the page still shows them, without the record.
    let recorded = async {
        count_recorded_replays(&app, &mut read).await?;
        actions::recent(app.pool(), operator.tenant()).await
    };
    let recent = recorded.await.inspect_err(|error| {
        tracing::warn!(%error, "the dead-letters page shows no recorded actions");
    });
    let mut groups: BTreeMap<(&str, String), Group> = BTreeMap::new();
    let mut unread = Vec::new();
    for (queue, letters) in names.iter().zip(read) {
        match letters {
            Ok(letters) => {
                for letter in letters.into_iter().filter(|l| visible(&operator, l)) {
                    let failure = fingerprint(letter.error.as_deref());
                    let group =
                        (groups.entry((queue.as_str(), failure.clone()))).or_insert_with(|| {
                            Group {
                                queue,
                                failure,
                                letters: Vec::new(),
                            }
                        });
                    group.letters.push(letter);
                }
            }
            // Most often a queue no consumer of this instance has declared.
            Err(_) => unread.push(queue.as_str()),
        }
    }
    let may_act = operator.0.may(OpsWrite::NAME);
    // A message dead-lettered by the broker itself (its delivery limit) carries no moment.
    let seen = |at: Option<DateTime<Utc>>| {
        at.map(|at| format!("{} UTC", moment(at)))
            .unwrap_or_else(|| "unknown".to_owned())
    };
    let body = html! {
        h1 { "Dead letters" }
        @if groups.is_empty() {
            p { "None: every message of this instance's queues was applied." }
        }
        @for group in groups.values() {
            section.group {
                h2.bad { code { (group.queue) } " · " (group.letters.len()) " × " (group.failure) }
                p {
                    "First seen " span.first-seen { (seen(group.first_seen())) } ", last seen "
                    span.last-seen { (seen(group.last_seen())) } "; replayed "
                    span.replays { (group.replays()) } " times before. "
                    @if may_act {
                        @for action in ["replay", "discard"] {
                            a href=(confirmation(group.queue, ("failure", &group.failure), action)) {
                                (action) " all " (group.letters.len()) "…"
                            }
                            " "
                        }
                    }
                }
                table {
                    tr { th { "Event" } th { "Type" } th { "Dead-lettered" } th.num { "Retries" }
                         th.num { "Replays" } th.num { "Bytes" } th { "" } }
                    @for letter in &group.letters {
                        @let id = letter.event_id.as_deref().unwrap_or("");
                        tr {
                            td { a href=(address(group.queue, id)) { code { (id) } } }
                            td { (letter.event_type.as_deref().unwrap_or("?")) }
                            td { (seen(letter.dead_lettered_at)) }
                            td.num { (letter.retries.unwrap_or(0)) }
                            td.num.replays { (letter.replays) }
                            td.num { (letter.body.len()) }
                            td {
                                @if !may_act {
                                    span.muted { "needs ops:write" }
                                } @else if !id.is_empty() {
                                    @for action in ["replay", "discard"] {
                                        a href=(confirmation(group.queue, ("event", id), action)) { (action) "…" }
                                        " "
                                    }
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
        @match &recent {
            Ok(recent) => (recent_actions(&operator, recent)),
            Err(_) => p.bad { "The database did not answer: replays recorded earlier and recent actions are not shown." },
        }
    };
    frame("Dead letters", Some(&operator.0), body)
}

/// Raises each letter's replay count to the replays recorded of it, if they are more: its
/// header lost count if it was applied after a replay and came back as a new message.
async fn count_recorded_replays(
    app: &AppState,
    read: &mut [Result<Vec<DeadLetter>, DlqError>],
) -> Result<(), sqlx::Error> {
    let letters = || read.iter().flatten().flatten();
    let ids: Vec<String> = letters().filter_map(|l| l.event_id.clone()).collect();
    let recorded = actions::replays_of(app.pool(), &ids).await?;
    for letter in read.iter_mut().flatten().flatten() {
        if let Some(count) = (letter.event_id.as_ref()).and_then(|id| recorded.get(id)) {
            letter.replays = letter.replays.max(*count);
        }
    }
    Ok(())
}

/// The latest replays and discards of the operator's tenant (of every tenant for a platform
/// operator), with who took them.
fn recent_actions(operator: &Operator, recent: &[Recorded]) -> Markup {
    let every_tenant = operator.tenant().is_none();
    html! {
        h2 { "Recent actions" }
        @if recent.is_empty() {
            p.muted { "No replay or discard yet." }
        } @else {
            table.actions {
                tr {
                    th { "At (UTC)" } th { "Operator" }
                    @if every_tenant { th { "Tenant" } }
                    th { "Action" } th { "Queue" } th { "Of" } th.num { "Messages" }
                }
                @for action in recent {
                    tr {
                        td { (moment(action.at)) }
                        td.actor { (action.actor) }
                        @if every_tenant { td { (action.tenant_id) } }
                        td { (action.action) }
                        td { code { (action.queue) } }
                        td {
                            @if let Some(event) = &action.event_id {
                                "the dead letter " code { (event) }
                            } @else {
                                "the failure " code { (action.failure.as_deref().unwrap_or("")) }
                            }
                        }
                        td.num { (action.messages) }
                    }
                }
            }
        }
    }
}

/// The address of the page that confirms `action` on the dead letters of `queue` that
/// `chosen` names: `("event", id)` or `("failure", fingerprint)`.
fn confirmation(queue: &str, chosen: (&str, &str), action: &str) -> String {
    link("confirm", &[("queue", queue), chosen, ("action", action)])
}

/// The address of the console's `/console/dead-letters/{page}`, `pairs` its query.
fn link(page: &str, pairs: &[(&str, &str)]) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    format!("/console/dead-letters/{page}?{query}")
}

/// `GET /console/dead-letters/confirm`: asks before acting, saying how many it would touch.
pub async fn confirm(
    State(app): State<AppState>,
    operator: Operator,
    Params(choice): Params<Choice>,
) -> Response {
    if !operator.0.may(OpsWrite::NAME) {
        return forbidden(OpsWrite::NAME);
    }
    let action = choice.action.name();
    let count = (read(&app, &choice.queue).await)
        .map(|letters| {
            letters
                .iter()
                .filter(|l| choice.picks(&operator, l))
                .count()
        })
        .unwrap_or(0);
    if count == 0 {
        return not_found(&operator, choice.describe());
    }
    let body = html! {
        h1 { "Confirm" }
        p { (action) " " (choice.describe()) " (" (count) " now)?" }
        form method="post" action="/console/dead-letters/resolve" {
            input type="hidden" name="queue" value=(choice.queue);
            @if let Some(event) = &choice.event {
                input type="hidden" name="event" value=(event);
            }
            @if let Some(failure) = &choice.failure {
                input type="hidden" name="failure" value=(failure);
            }
            input type="hidden" name="action" value=(action);
            button type="submit" { "Yes, " (action) }
            " " a href="/console/dead-letters" { "Cancel" }
        }
    };
    frame("Confirm", Some(&operator.0), body).into_response()
}

/// The 404 page of dead letters (`what`, in words) none of which is the operator's.
fn not_found(operator: &Operator, what: Markup) -> Response {
    let body = html! {
        h1 { "Not found" }
        p { "None of your dead letters is " (what) "." }
    };
    (
        StatusCode::NOT_FOUND,
        frame("Not found", Some(&operator.0), body),
    )
        .into_response()
}

/// `POST /console/dead-letters/resolve`: replays or discards the chosen dead letters of the
/// operator's tenant: one, or a whole group.
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
    let mut event_ids = Vec::new();
    let resolved = if queues(&app).contains(&choice.queue) {
        dlq::resolve(
            &app.settings.amqp_url,
            &choice.queue,
            choice.action.action(),
            |letter| {
                let picked = choice.picks(&operator, letter);
                if picked && let Some(id) = &letter.event_id {
                    event_ids.push(id.clone());
                }
                picked
            },
        )
        .await
    } else {
        Ok(0)
    };
    let action = choice.action.name();
    match resolved {
        Ok(0) => not_found(&operator, choice.describe()),
        Ok(count) => {
            // Who and what only: the message's body may hold a patient's data. The failure is
            // the error as the consumer already logged it, its numbers left out.
            tracing::info!(
                actor = %operator.0.subject,
                tenant = %operator.0.tenant_id,
                queue = %choice.queue,
                event_id = choice.event.as_deref(),
                failure = choice.failure.as_deref(),
                action,
                count,
                "an operator resolved dead letters from the console"
            );
            metrics::counter!("hap_console_dead_letter_actions_total", "action" => action)
                .increment(count as u64);
            let taken = Taken {
                actor: &operator.0.subject,
                tenant_id: &operator.0.tenant_id,
                action,
                queue: &choice.queue,
                event_id: choice.event.as_deref(),
                failure: choice.failure.as_deref(),
                messages: count,
                event_ids: &event_ids,
            };
            if let Err(error) = actions::record(app.pool(), &taken).await {
                // Done and logged, but not recorded: the operator is told.
                tracing::error!(%error, actor = %operator.0.subject, action, count,
                                "recording an operator's action on dead letters failed");
                return unrecorded(&operator, action, count);
            }
            Redirect::to("/console/dead-letters").into_response()
        }
        Err(error) => {
            tracing::warn!(%error, queue = %choice.queue, "resolving dead letters failed");
            unavailable(&operator, &format!("complete the {action}"), &error)
        }
    }
}

/// The 500 page of an action done (`count` messages) that could not be recorded.
fn unrecorded(operator: &Operator, action: &str, count: usize) -> Response {
    let body = html! {
        h1 { "Done, not recorded" }
        p { "The " (action) " of " (count) " dead letters was done, but the database did not \
             record it: only the log says who did it." }
    };
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        frame("Not recorded", Some(&operator.0), body),
    )
        .into_response()
}

/// The 503 page of something (`what`) the broker did not do.
fn unavailable(operator: &Operator, what: &str, error: &DlqError) -> Response {
    let body = html! {
        h1 { "Not done" }
        p { "The broker did not " (what) ": " (error) }
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        frame("Not done", Some(&operator.0), body),
    )
        .into_response()
}

/// The dead letters of `queue`, left in place; none if it is not one of the console's queues
/// (the address names it, so it may be anything).
async fn read(app: &AppState, queue: &str) -> Result<Vec<DeadLetter>, DlqError> {
    if !queues(app).iter().any(|known| known == queue) {
        return Ok(Vec::new());
    }
    dlq::list(&app.settings.amqp_url, queue).await
}

/// One dead letter: the query of its page.
#[derive(Debug, Deserialize)]
pub struct Opened {
    queue: String,
    event: String,
}

/// The address of the page of the dead letter `event` of `queue`.
fn address(queue: &str, event: &str) -> String {
    link("message", &[("queue", queue), ("event", event)])
}

/// `GET /console/dead-letters/message`: one dead letter's headers, error and body. Reading it
/// takes the queue's messages and puts them back, as the list does: it stays where it was.
pub async fn message(
    State(app): State<AppState>,
    operator: Operator,
    Params(opened): Params<Opened>,
) -> Response {
    let letters = match read(&app, &opened.queue).await {
        Ok(letters) => letters,
        Err(error) => return unavailable(&operator, "hand over the dead letters", &error),
    };
    let Some(letter) = letters.into_iter().find(|letter| {
        letter.event_id.as_deref() == Some(opened.event.as_str()) && visible(&operator, letter)
    }) else {
        let what =
            html! { "the dead letter " code { (opened.event) } " of " code { (opened.queue) } };
        return not_found(&operator, what);
    };
    let may_act = operator.0.may(OpsWrite::NAME);
    let body = String::from_utf8_lossy(&letter.body);
    let kind = letter.aggregate_type.as_deref().unwrap_or("");
    let readable = may_read(&operator, kind);
    let page = html! {
        h1 { "Dead letter " code { (opened.event) } }
        p.muted {
            "In " code { (opened.queue) } " · " (letter.event_type.as_deref().unwrap_or("?"))
            " · tenant " (letter.tenant_id.as_deref().unwrap_or("unknown"))
        }
        p {
            @if may_act {
                @for action in ["replay", "discard"] {
                    a href=(confirmation(&opened.queue, ("event", &opened.event), action)) { (action) "…" }
                    " "
                }
            } @else {
                span.muted { "Replaying or discarding it needs ops:write." }
            }
        }
        h2 { "Error" }
        // A decoding error quotes what it could not read: it is shown under the body's rule.
        @if readable {
            pre.error { (letter.error.as_deref().unwrap_or("(no error recorded)")) }
        } @else {
            span.muted { "hidden: needs records:read" }
        }
        h2 { "Headers" }
        table.headers {
            tr { th { "routing key" } td { code { (letter.routing_key) } } }
            @for (name, value) in letter.header_texts().into_iter().filter(|(name, _)| readable || name != messaging::headers::ERROR) {
                tr {
                    th { (name) }
                    td {
                        code { (value) }
                        @if name == messaging::headers::DEAD_LETTERED_AT {
                            @if let Some(at) = letter.dead_lettered_at { " (" (moment(at)) " UTC)" }
                        }
                    }
                }
            }
        }
        h2 { "Body" }
        (payload(&operator, kind, &body))
    };
    frame("Dead letter", Some(&operator.0), page).into_response()
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
