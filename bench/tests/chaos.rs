//! `hap-bench chaos` in the suite: the clinic as eight `hap` processes under a workload for
//! 40 seconds while every process is killed and restarted and the database and broker fail
//! under it; then every invariant must hold. Against the same PostgreSQL and RabbitMQ as the
//! rest of the suite (the run's faults touch only its own database and connections), and it
//! must leave neither its database nor its queues behind.

mod common;

use std::process::Command;

use common::{assert_database_dropped, assert_no_queues_left, database, prefix};
use hap_tests::admin_url;
use hap_tests::broker::amqp_url;
use hap_tests::process::hap_binary;

/// The instances of the run's two API processes (`processes::INSTANCES` in the binary).
const INSTANCES: [&str; 2] = ["chaos-a", "chaos-b"];

#[test]
fn every_invariant_holds_through_kills_and_failing_servers() {
    let output = Command::new(env!("CARGO_BIN_EXE_hap-bench"))
        .args([
            "chaos",
            "--seconds",
            "40",
            "--rate",
            "15",
            "--seed",
            "1",
            "--calm-secs",
            "8",
            "--settle-secs",
            "45",
        ])
        .arg("--hap-bin")
        .arg(hap_binary())
        .env("HAP_BENCH_DATABASE_URL", admin_url())
        .env("HAP_BENCH_AMQP_URL", amqp_url())
        .output()
        .expect("hap-bench starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Whatever the verdict, the run cleans up after itself.
    assert_no_queues_left(prefix(&stderr), &INSTANCES);
    assert_database_dropped(database(&stderr));

    assert!(
        output.status.success(),
        "hap-bench chaos failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("every accepted command's event is in the store")
            && !stdout.contains("VIOLATED"),
        "the report shows a violation, or no invariants:\n{stdout}"
    );
    let faults = table(&stdout, "fault injected");
    for kind in [
        "kill -9 api",
        "kill -9 publisher",
        "kill -9 saga",
        "kill -9 timer",
    ] {
        assert!(
            faults
                .iter()
                .any(|(name, count)| name == kind && *count > 0),
            "no {kind} in:\n{stdout}"
        );
    }
    for server in ["PostgreSQL", "RabbitMQ"] {
        assert!(
            faults
                .iter()
                .any(|(name, count)| name.contains(server) && *count > 0),
            "no {server} fault in:\n{stdout}"
        );
    }
}

/// The rows of the two-column table whose header starts with `header`: (name, count).
fn table(report: &str, header: &str) -> Vec<(String, u64)> {
    report
        .lines()
        .skip_while(|line| !line.starts_with(header))
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| {
            let (name, count) = line.trim_end().rsplit_once(' ')?;
            Some((name.trim().to_owned(), count.parse().ok()?))
        })
        .collect()
}
