//! Every `hap-bench` subcommand run end to end at a tiny size, against the same PostgreSQL and
//! RabbitMQ as the rest of the suite: a bench that no longer runs (a column the store gained, a
//! queue it no longer cleans up) fails here rather than on the day someone measures. Nothing
//! here looks at a figure; the machine is busy with the other tests.

mod common;

use std::process::Command;

use common::{assert_no_queues_left, prefix};
use hap_tests::admin_url;
use hap_tests::broker::amqp_url;

/// The instances whose queues the subcommands declare (`system::INSTANCE` and
/// `project::RAW_INSTANCE` in the binary).
const INSTANCES: [&str; 2] = ["bench", "raw"];

/// Runs `hap-bench` with `args`, starting each timed run at once, and returns its stderr (the
/// progress, which names the scratch prefix) after checking that it succeeded and reported a
/// ratio.
fn bench(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_hap-bench"))
        .args(args)
        .args(["--settle-limit", "0"])
        .env("HAP_BENCH_DATABASE_URL", admin_url())
        .env("HAP_BENCH_AMQP_URL", amqp_url())
        .output()
        .expect("hap-bench starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "hap-bench {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("ratio"),
        "hap-bench {args:?} reported no ratio:\n{stdout}"
    );
    stderr.into_owned()
}

#[test]
fn append_runs() {
    bench(&["append", "--clients", "2", "--seconds", "1"]);
}

#[test]
fn publish_runs_and_cleans_up() {
    let stderr = bench(&[
        "publish",
        "--events",
        "100",
        "--rate",
        "50",
        "--seconds",
        "1",
    ]);
    assert_no_queues_left(prefix(&stderr), &INSTANCES);
}

#[test]
fn project_runs_and_cleans_up() {
    let stderr = bench(&["project", "--events", "100"]);
    assert_no_queues_left(prefix(&stderr), &INSTANCES);
}

#[test]
fn e2e_runs_and_cleans_up() {
    let stderr = bench(&["e2e", "--rate", "50", "--seconds", "1"]);
    assert_no_queues_left(prefix(&stderr), &INSTANCES);
}

#[test]
fn saga_runs_and_cleans_up() {
    let stderr = bench(&[
        "saga",
        "--rate",
        "10",
        "--seconds",
        "1",
        "--burst",
        "10",
        "--concurrency",
        "4",
    ]);
    assert_no_queues_left(prefix(&stderr), &INSTANCES);
}

#[test]
fn rebuild_runs() {
    bench(&["rebuild", "--events", "200"]);
}
