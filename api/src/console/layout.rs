//! The frame every console page shares, and the small pieces pages are made of: moments,
//! ages and the number cards of the overview.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use crate::auth::Caller;

/// A whole page: `body` under the console's navigation, which names the operator's view
/// (their tenant, or every tenant) when someone is signed in.
pub fn frame(title: &str, operator: Option<&Caller>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · HAP console" }
                link rel="stylesheet" href="/console/assets/console.css";
            }
            body {
                header {
                    strong { "HAP" }
                    @if let Some(operator) = operator {
                        a href="/console" { "Overview" }
                        a href="/console/sagas" { "Sagas" }
                        a href="/console/streams" { "Streams" }
                        a href="/console/dead-letters" { "Dead letters" }
                        span.muted {
                            (operator.subject) " · "
                            @if operator.is_platform_operator() { "every tenant" }
                            @else { "tenant " (operator.tenant_id) }
                        }
                        form method="post" action="/console/session/end" {
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A moment, to the second, in UTC.
pub fn moment(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// How long ago `at` was, as `now` sees it: `42s`, `3m 5s`, `2h 10m`, `3d 4h`.
pub fn age(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (now - at).num_seconds().max(0);
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m {}s", seconds / 60, seconds % 60),
        3600..86400 => format!("{}h {}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d {}h", seconds / 86400, seconds % 86400 / 3600),
    }
}

/// A number on a card; `zero_is_good` marks the card when it is not zero (and lets the live
/// script keep that mark current). `live` names the number in `/console/live`'s events.
pub fn card(label: &str, value: i64, live: &str, zero_is_good: bool) -> Markup {
    html! {
        div.card.bad[zero_is_good && value > 0] data-zero-is-good=[zero_is_good.then_some("")] {
            b data-live=(live) { (value) }
            (label)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_at_a_glance() {
        let now = Utc::now();
        let ago = |seconds| age(now - chrono::TimeDelta::seconds(seconds), now);
        assert_eq!(ago(42), "42s");
        assert_eq!(ago(185), "3m 5s");
        assert_eq!(ago(2 * 3600 + 600), "2h 10m");
        assert_eq!(ago(3 * 86400 + 4 * 3600), "3d 4h");
        assert_eq!(age(now + chrono::TimeDelta::seconds(5), now), "0s");
    }
}
