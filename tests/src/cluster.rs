//! A RabbitMQ cluster of the test's own (`scripts/cluster.sh`), in a scratch directory and on
//! ports no other cluster or service uses, brought down when dropped, whether the test passed
//! or not.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Output;

use tokio::process::Command;

/// The script, from this crate's directory.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh")
}

/// A cluster of the test's own; `down` when dropped.
pub struct Cluster {
    dir: PathBuf,
    nodes: u16,
    base_port: u16,
    /// Its nodes' AMQP URLs, comma-separated: what `HAP_AMQP_URL` takes.
    pub urls: String,
}

impl Cluster {
    /// A cluster of `nodes` nodes on ports free now, not started yet (its URLs are known).
    pub async fn new(nodes: u16) -> Self {
        // Guarded from here on: a failed `up` may leave nodes running.
        let mut cluster = Self {
            dir: std::env::temp_dir().join(format!("hap-cluster-{}", uuid::Uuid::new_v4())),
            nodes,
            base_port: free_base_port(nodes),
            urls: String::new(),
        };
        cluster.watch_over();
        let output = cluster.run(&["urls"]).await;
        cluster.urls = String::from_utf8(output.stdout)
            .expect("URLs are text")
            .trim()
            .to_owned();
        cluster
    }

    /// Brings the cluster down when this process ends however it ends, `Drop` or not (a test
    /// killed for taking too long unwinds nothing): a watcher in a session of its own, out of
    /// reach of the signals the test runner sends, polls for this process and then runs `down`.
    fn watch_over(&self) {
        let watcher = "while kill -0 \"$0\" 2>/dev/null; do sleep 1; done; exec bash \"$1\" --dir \"$2\" down";
        // `setsid -f` returns at once, leaving the watcher to run on.
        let started = std::process::Command::new("setsid")
            .args(["-f", "bash", "-c", watcher])
            .arg(std::process::id().to_string())
            .arg(script())
            .arg(&self.dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("setsid runs");
        assert!(started.success(), "the cluster's watcher did not start");
    }

    /// Starts every node and waits until all run in one cluster.
    pub async fn up(&self) {
        self.run(&["up"]).await;
    }

    /// kill -9 of node `node`'s Erlang VM (nodes count from 1).
    pub async fn kill(&self, node: u16) {
        self.run(&["kill", &node.to_string()]).await;
    }

    /// Starts node `node` again and waits until it is back in the cluster.
    pub async fn start(&self, node: u16) {
        self.run(&["start", &node.to_string()]).await;
    }

    /// Node `node`'s Erlang node name, as `status` shows it.
    pub async fn node_name(&self, node: u16) -> String {
        let output = self.run(&["status"]).await;
        let status = String::from_utf8_lossy(&output.stdout);
        status
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|fields| fields.first() == Some(&node.to_string().as_str()))
            .and_then(|fields| fields.get(1).map(|name| name.to_string()))
            .unwrap_or_else(|| panic!("no node {node} in:\n{status}"))
    }

    /// `rabbitmqctl` against node `node`: what it printed.
    pub async fn ctl(&self, node: u16, arguments: &[&str]) -> String {
        let node = node.to_string();
        let all: Vec<&str> = ["ctl", node.as_str()]
            .into_iter()
            .chain(arguments.iter().copied())
            .collect();
        let output = self.run(&all).await;
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs the script on this cluster; panics, with what it said, if it fails.
    async fn run(&self, arguments: &[&str]) -> Output {
        let output = Command::new("bash")
            .arg(script())
            .arg("--dir")
            .arg(&self.dir)
            .args(["--nodes", &self.nodes.to_string()])
            .args(["--base-port", &self.base_port.to_string()])
            .args(arguments)
            .output()
            .await
            .expect("bash runs scripts/cluster.sh");
        assert!(
            output.status.success(),
            "scripts/cluster.sh {} failed: {}",
            arguments.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Blocking, and so safe in any runtime: `down` kills the nodes and takes a moment.
        let _ = std::process::Command::new("bash")
            .arg(script())
            .arg("--dir")
            .arg(&self.dir)
            .arg("down")
            .status();
    }
}

/// A base port whose nodes' AMQP and distribution ports are all free now. They are taken below
/// the kernel's ephemeral range (32768 and up), where no outgoing connection can take one
/// before the nodes do, and picked at random so that clusters of tests running at once differ.
fn free_base_port(nodes: u16) -> u16 {
    for _ in 0..100 {
        let offset = (uuid::Uuid::new_v4().as_u128() % 2500) as u16;
        let base = 10_000 + offset;
        let ports = (0..nodes).flat_map(|i| [base + i, base + i + 20_000]);
        if ports
            .into_iter()
            .all(|port| TcpListener::bind(("127.0.0.1", port)).is_ok())
        {
            return base;
        }
    }
    panic!("no free ports for a cluster of {nodes} nodes between 10000 and 32767");
}
