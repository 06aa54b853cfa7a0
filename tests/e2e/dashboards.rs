//! The Grafana dashboard and the Prometheus alerts in `deploy/` name only metrics that a running
//! HAP exports, and the alerts are valid Prometheus rules.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hap_tests::TestDb;
use hap_tests::system::{Parts, System};
use reqwest::Method;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

/// Every `hap_…` metric name in `text`, as written (so `…_bucket` for a histogram's buckets).
fn metric_names(text: &str) -> BTreeSet<String> {
    text.match_indices("hap_")
        .filter(|(at, _)| {
            let before = text[..*at].chars().next_back();
            !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect()
}

/// The PromQL of every panel of the dashboard.
fn dashboard_queries() -> String {
    let text = std::fs::read_to_string(deploy("grafana/hap.json")).expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    panels
        .iter()
        .flat_map(|panel| panel["targets"].as_array().expect("targets").iter())
        .map(|target| {
            target["expr"]
                .as_str()
                .expect("a PromQL expression")
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `expr:` lines of the alert rules.
fn alert_queries() -> String {
    let text = std::fs::read_to_string(deploy("prometheus/alerts.yml")).expect("the alerts");
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("expr:"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `/metrics` has a sample or a type line of `name`.
fn exported(metrics: &str, name: &str) -> bool {
    metrics.lines().any(|line| {
        let line = line.strip_prefix("# TYPE ").unwrap_or(line);
        line.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with(['{', ' ']))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_on_the_dashboard_and_in_the_alerts_is_exported() {
    let wanted: BTreeSet<String> = metric_names(&dashboard_queries())
        .into_iter()
        .chain(metric_names(&alert_queries()))
        .collect();
    assert!(wanted.len() >= 10, "{wanted:?}");

    let db = TestDb::new().await;
    let system = System::start(&db, Duration::from_secs(600), Parts::ALL).await;
    // A scheduling, a rejected command and reads of one consultation give
    // every labelled counter its first sample.
    let patient = system.app.register_patient("DOC-DASH").await;
    let physician = system.app.register_physician("CRM-DASH").await;
    let consultation = system.app.request_consultation(patient, physician).await;
    system
        .wait_for_status(consultation, "scheduled", Duration::from_secs(30))
        .await;
    system.consultation(consultation).await;
    system
        .app
        .post_expecting("/patients", serde_json::json!({}), 422)
        .await;

    // Gauges are refreshed every few seconds by the parts that own them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let missing = loop {
        let metrics = system
            .app
            .request(Method::GET, "/metrics")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let missing: Vec<_> = wanted
            .iter()
            .filter(|name| !exported(&metrics, name))
            .collect();
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        missing.is_empty(),
        "named in deploy/ but not exported: {missing:?}"
    );
    system.stop().await;
}

#[test]
fn the_alerts_are_valid_prometheus_rules() {
    let rules = deploy("prometheus/alerts.yml");
    let Ok(output) = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
    else {
        eprintln!("promtool is not installed: the rules are checked where it is");
        return;
    };
    assert!(
        output.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
