//! The console's stylesheet and script, compiled into the binary: the console works where
//! the operator's browser reaches HAP and nothing else.

use axum::http::header;
use axum::response::IntoResponse;

/// Small and plain: state is told by colour and by words, so that a glance finds what is
/// wrong.
const STYLESHEET: &str = r#"
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d2430; background: #f6f7f9; }
header { display: flex; gap: 1.5em; align-items: center; padding: .6em 1.2em; background: #1d2430; color: #fff; }
header a { color: #cfe0ff; text-decoration: none; }
header form { margin-left: auto; }
main { padding: 1em 1.2em; max-width: 80em; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; background: #fff; width: 100%; }
th, td { text-align: left; padding: .3em .6em; border-bottom: 1px solid #e1e4e8; vertical-align: top; }
th { background: #eef0f3; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.cards { display: flex; flex-wrap: wrap; gap: .8em; }
.card { background: #fff; border: 1px solid #e1e4e8; border-left: .4em solid #2e9d52; padding: .5em .9em; min-width: 9em; }
.card b { display: block; font-size: 1.6em; }
.bad, tr.bad td { background: #fdecea; }
.card.bad { border-left-color: #c62828; }
.muted { color: #6a737d; }
pre { margin: 0; white-space: pre-wrap; word-break: break-all; font-size: 12px; }
code { font-size: 12px; }
svg.bars { vertical-align: middle; background: #fff; } svg.bars rect { fill: #3b6fd4; } svg.bars line { stroke: #c9ced6; }
.notice { background: #fff8e1; border: 1px solid #f0d58c; padding: .5em .9em; }
"#;

/// Follows `/console/live` and writes each number into the elements that show it
/// (`data-live`), marking the card when a number that should be zero is not.
const SCRIPT: &str = r#"
const source = new EventSource("/console/live");
source.addEventListener("overview", (message) => {
  const numbers = JSON.parse(message.data);
  for (const [name, value] of Object.entries(numbers)) {
    for (const element of document.querySelectorAll(`[data-live="${name}"]`)) {
      element.textContent = value;
      const card = element.closest("[data-zero-is-good]");
      if (card) card.classList.toggle("bad", Number(value) > 0);
    }
  }
});
"#;

pub async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLESHEET,
    )
}

pub async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}
