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

/// A small bar chart of `values` (oldest first) as inline SVG, so that plots need no script:
/// each bar's height is its share of the largest value, and `title` says what the bars are
/// (shown on hover, and read by screen readers).
pub fn bars(values: &[f64], title: &str) -> Markup {
    const WIDTH: f64 = 240.0;
    const HEIGHT: f64 = 40.0;
    let largest = values.iter().copied().fold(0.0, f64::max);
    let width = WIDTH / values.len().max(1) as f64;
    html! {
        svg.bars width=(WIDTH) height=(HEIGHT) viewBox={ "0 0 " (WIDTH) " " (HEIGHT) }
            role="img" aria-label=(title) {
            title { (title) }
            line x1="0" y1=(HEIGHT) x2=(WIDTH) y2=(HEIGHT) {}
            @for (i, value) in values.iter().enumerate() {
                @if *value > 0.0 {
                    @let height = (value / largest * (HEIGHT - 2.0)).max(1.0);
                    rect x=(format!("{:.1}", i as f64 * width)) y=(format!("{:.1}", HEIGHT - height))
                        width=(format!("{:.1}", (width - 1.0).max(1.0))) height=(format!("{height:.1}")) {
                        title { (format!("{value:.2}")) }
                    }
                }
            }
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

    #[test]
    fn a_bar_is_drawn_for_each_value_above_zero_the_largest_full_height() {
        let chart = bars(&[0.0, 2.0, 4.0], "commands per second").into_string();
        assert_eq!(chart.matches("<rect").count(), 2, "{chart}");
        assert!(
            chart.contains(r#"y="2.0" width="79.0" height="38.0""#),
            "{chart}"
        );
        assert!(
            chart.contains(r#"y="21.0" width="79.0" height="19.0""#),
            "{chart}"
        );
        assert!(
            chart.contains("<title>commands per second</title>"),
            "{chart}"
        );
        assert_eq!(bars(&[], "none").into_string().matches("<rect").count(), 0);
    }
}
