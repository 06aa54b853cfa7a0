//! `hap-bench chaos` in the suite: the clinic as eight `hap` processes under a workload for
//! 40 seconds (90 on a three-node cluster) while every process is killed and restarted and
//! the database and broker fail under it; then every invariant must hold. The database is on a private PostgreSQL of the
//! run's own and the broker a private one-node RabbitMQ cluster (`scripts/cluster.sh`), which
//! the run crashes and restarts: the suite's shared servers are not touched. It must leave no
//! process or server behind.

use std::process::Command;

use hap_tests::process::hap_binary;

#[test]
fn every_invariant_holds_through_kills_and_failing_servers() {
    run_chaos(
        1,
        &["--seconds", "40", "--seed", "1", "--settle-secs", "45"],
    );
}

/// The same clinic on a private three-node RabbitMQ cluster, each node killed (`kill -9` of
/// its Erlang VM) and started again in turn: HAP moves to the nodes that are up, and nothing
/// is lost or left unfinished.
#[test]
fn a_three_node_cluster_loses_nothing_when_each_node_is_killed_and_restarted() {
    run_chaos(
        3,
        &["--seconds", "90", "--seed", "2", "--settle-secs", "60"],
    );
}

/// Runs `hap-bench chaos` at 15 requests/s on a private cluster of `nodes` with `args`, and
/// holds it to its verdict: every invariant, every fault kind injected, nothing left behind.
fn run_chaos(nodes: u32, args: &[&str]) {
    let output = Command::new(env!("CARGO_BIN_EXE_hap-bench"))
        .args(["chaos", "--rate", "15", "--calm-secs", "8"])
        .args(["--cluster-nodes", &nodes.to_string()])
        .args(args)
        .arg("--hap-bin")
        .arg(hap_binary())
        .output()
        .expect("hap-bench starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Whatever the verdict, the run cleans up after itself.
    assert_processes_gone(&stderr);
    assert_nothing_listens(&stderr, "a private PostgreSQL on port ");
    assert_nothing_listens(
        &stderr,
        &format!("a private RabbitMQ cluster of {nodes} nodes: amqp://guest:guest@127.0.0.1:"),
    );

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
    for server in ["PostgreSQL crashes", "kill -9 RabbitMQ node"] {
        assert!(
            faults
                .iter()
                .any(|(name, count)| name.contains(server) && *count > 0),
            "no {server} fault in:\n{stdout}"
        );
    }
}

/// Checks that every `hap` process the run announced (`… pid N`) is gone.
fn assert_processes_gone(stderr: &str) {
    let pids: Vec<&str> = stderr
        .split("pid ")
        .skip(1)
        .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .filter(|pid| !pid.is_empty())
        .collect();
    assert!(!pids.is_empty(), "no process announced in:\n{stderr}");
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} was left running"
        );
    }
}

/// Checks that the server announced as `announced` followed by its port no longer listens.
fn assert_nothing_listens(stderr: &str, announced: &str) {
    let port: u16 = stderr
        .split(announced)
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no {announced}… in:\n{stderr}"));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "{announced}{port} was left running"
    );
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
