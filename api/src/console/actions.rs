//! The record of what operators did to dead letters from the console (`operator_actions`
//! in the event store's database, which every process shares): who replayed or discarded
//! which messages, and when. The dead-letters page lists the recent ones, and reads from it
//! how often a message was replayed once its own `x-replay-count` header is gone.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// How many of the latest actions the dead-letters page lists.
pub const RECENT: i64 = 20;

/// An action an operator just took, to record.
pub struct Taken<'a> {
    /// The token's subject, and its tenant (`*` for a platform operator).
    pub actor: &'a str,
    pub tenant_id: &'a str,
    /// `replay` or `discard`.
    pub action: &'a str,
    pub queue: &'a str,
    /// One message, or else a failure group.
    pub event_id: Option<&'a str>,
    pub failure: Option<&'a str>,
    pub messages: usize,
    /// The event ids of the messages it took, of those that had one.
    pub event_ids: &'a [String],
}

/// An action as recorded.
#[derive(Debug, sqlx::FromRow)]
pub struct Recorded {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub tenant_id: String,
    pub action: String,
    pub queue: String,
    pub event_id: Option<String>,
    pub failure: Option<String>,
    pub messages: i32,
}

/// Records `taken`.
pub async fn record(pool: &PgPool, taken: &Taken<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into operator_actions
                (actor, tenant_id, action, queue, event_id, failure, messages, event_ids)
         values ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(taken.actor)
    .bind(taken.tenant_id)
    .bind(taken.action)
    .bind(taken.queue)
    .bind(taken.event_id)
    // Kept for good, and an erasure cannot tell whose it is: a decoding error quotes the value
    // it refused (a name, a document number), so the record keeps the failure without it.
    .bind(taken.failure.map(without_quoted))
    .bind(i32::try_from(taken.messages).unwrap_or(i32::MAX))
    .bind(taken.event_ids)
    .execute(pool)
    .await?;
    Ok(())
}

/// `text` with whatever stands between quotes (double, single, backticks) or parentheses (where
/// PostgreSQL names a key's value) replaced by `…`; an unclosed one hides the rest.
fn without_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut closing: Option<char> = None;
    for c in text.chars() {
        match closing {
            Some(close) if c == close => {
                out.push(c);
                closing = None;
            }
            Some(_) => {}
            None => {
                out.push(c);
                closing = match c {
                    '"' | '`' | '\'' => Some(c),
                    '(' => Some(')'),
                    _ => None,
                };
                if closing.is_some() {
                    out.push('…');
                }
            }
        }
    }
    out
}

/// The latest [`RECENT`] actions taken by operators of `tenant` (every one's for `None`, a
/// platform operator), newest first.
pub async fn recent(pool: &PgPool, tenant: Option<&str>) -> Result<Vec<Recorded>, sqlx::Error> {
    sqlx::query_as(
        "select at, actor, tenant_id, action, queue, event_id, failure, messages
           from operator_actions
          where $1::text is null or tenant_id = $1
          order by at desc, id desc
          limit $2",
    )
    .bind(tenant)
    .bind(RECENT)
    .fetch_all(pool)
    .await
}

/// How many times each of `event_ids` was replayed from the console, whoever replayed it;
/// those never replayed are left out.
pub async fn replays_of(
    pool: &PgPool,
    event_ids: &[String],
) -> Result<HashMap<String, i64>, sqlx::Error> {
    if event_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "select touched.event, count(*)
           from operator_actions, unnest(event_ids) as touched (event)
          where action = 'replay' and event_ids && $1 and touched.event = any($1)
          group by touched.event",
    )
    .bind(event_ids)
    .fetch_all(pool)
    .await?;
    Ok(counts.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_failure_keeps_no_quoted_value() {
        let refused = |value: &str| {
            without_quoted(&format!(
                "invalid type: string \"{value}\", expected a date at line 1 column 40; unknown variant `{value}`"
            ))
        };
        assert_eq!(
            refused("Ana Lima"),
            "invalid type: string \"…\", expected a date at line 1 column 40; unknown variant `…`"
        );
        assert_eq!(refused("Ana Lima"), refused("123.456.789-00"));
        assert!(!refused("Ana Lima").contains("Ana"));
        assert_eq!(
            without_quoted("Key (document_number)=(123.456.789-00) already exists; 'Ana'"),
            "Key (…)=(…) already exists; '…'"
        );
    }
}
