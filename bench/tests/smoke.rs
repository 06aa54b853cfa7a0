//! Every `hap-bench` subcommand run end to end at a tiny size, against the same PostgreSQL and
//! RabbitMQ as the rest of the suite: a bench that no longer runs (a column the store gained, a
//! queue it no longer cleans up) fails here rather than on the day someone measures. Nothing
//! here looks at a figure; the machine is busy with the other tests.

use std::process::Command;

use hap_tests::admin_url;
use hap_tests::broker::{amqp_url, queue_exists};
use lapin::{Connection, ConnectionProperties};
use messaging::QueueNames;
use projections::queues::QUEUES;

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

/// The scratch exchange prefix a run announced on stderr.
fn prefix(stderr: &str) -> &str {
    stderr
        .split("exchange prefix ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no exchange prefix in:\n{stderr}"))
}

/// Checks that none of the queues a run can declare under `prefix` is left on the broker: the
/// instance queues of the bench's HAP and raw consumers (named as `system::INSTANCE` and
/// `project::RAW_INSTANCE` name them in the binary), the bench's own queues, the saga services'
/// shared queues and the unrouted queue.
fn assert_no_queues_left(prefix: &str) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(look_for_queues(prefix));
}

async fn look_for_queues(prefix: &str) {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ is reachable");
    let instances = QUEUES.iter().flat_map(|spec| {
        ["bench", "raw"].map(|instance| QueueNames::new(prefix, spec.service.name(), instance))
    });
    let sagas = domain::service::Service::ALL
        .into_iter()
        .map(|service| QueueNames::shared(prefix, service.name()));
    let own = ["all", "pipeline"].map(|name| format!("{prefix}.bench.{name}"));
    let queues = instances
        .chain(sagas)
        .flat_map(|names| [names.main, names.retry, names.dead_letters])
        .chain(own)
        .chain([messaging::Topology::new(prefix).unrouted()]);
    for queue in queues {
        assert!(
            !queue_exists(&connection, &queue).await,
            "{queue} was left behind"
        );
    }
    connection.close(200, "done".into()).await.ok();
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
    assert_no_queues_left(prefix(&stderr));
}

#[test]
fn project_runs_and_cleans_up() {
    let stderr = bench(&["project", "--events", "100"]);
    assert_no_queues_left(prefix(&stderr));
}

#[test]
fn e2e_runs_and_cleans_up() {
    let stderr = bench(&["e2e", "--rate", "50", "--seconds", "1"]);
    assert_no_queues_left(prefix(&stderr));
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
    assert_no_queues_left(prefix(&stderr));
}

/// `--profile` draws a flame graph of the timed HAP run, in which HAP's own code shows.
#[test]
fn a_profiled_run_draws_a_flame_graph_of_hap() {
    if let Some(reason) = perf_cannot_record() {
        eprintln!("skipped: perf cannot record here ({reason})");
        return;
    }
    let directory = tempfile::tempdir().expect("a temporary directory");
    let profile_dir = directory.path().to_str().expect("a UTF-8 path");
    let stderr = bench(&[
        "--profile",
        "--profile-dir",
        profile_dir,
        "append",
        "--clients",
        "2",
        "--seconds",
        "1",
    ]);
    let svg = stderr
        .split("flame graph written to ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .unwrap_or_else(|| panic!("no flame graph announced in:\n{stderr}"));
    assert!(
        svg.starts_with(profile_dir),
        "{svg} is not in {profile_dir}"
    );
    let svg = std::fs::read_to_string(svg).expect("the flame graph was written");
    assert!(
        svg.starts_with("<?xml"),
        "not an SVG: {}",
        &svg[..svg.len().min(200)]
    );
    // The command pipeline's and the store's frames: the HAP run is what was recorded.
    for hap in ["commands::", "eventstore::"] {
        assert!(svg.contains(hap), "no {hap} frame in the flame graph");
    }
}

/// Why `perf` cannot record a process here, if it cannot.
fn perf_cannot_record() -> Option<String> {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let output = Command::new("perf")
        .args(["record", "--quiet", "-o"])
        .arg(directory.path().join("perf.data"))
        .args(["--", "true"])
        .output();
    match output {
        Err(error) => Some(format!("perf does not start: {error}")),
        Ok(output) if !output.status.success() => {
            Some(String::from_utf8_lossy(&output.stderr).trim().to_owned())
        }
        Ok(_) => None,
    }
}

#[test]
fn rebuild_runs() {
    bench(&["rebuild", "--events", "200"]);
}
