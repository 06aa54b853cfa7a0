//! A private RabbitMQ cluster (`scripts/cluster.sh`), for tests and benchmarks that kill
//! broker nodes under HAP. The machine's shared RabbitMQ must never be touched that way; this
//! one belongs to its owner alone: a scratch directory, ports no other cluster or service
//! uses, and `down` when dropped, or when the owning process ends without dropping it (a
//! watcher in a session of its own sees to that).
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use hap_support::cluster::LocalCluster;
//! let cluster = LocalCluster::new(3).await?; // URLs known, nothing started
//! cluster.up().await?;
//! let urls = cluster.urls(); // what HAP_AMQP_URL takes
//! cluster.kill(1).await?;    // kill -9 of node 1
//! cluster.start(1).await?;   // back in the cluster
//! # Ok(()) }
//! ```

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};
use tokio::process::Command;

/// The script, from the repository this crate is built in.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh")
}

/// A cluster of its owner's; `down` when dropped.
pub struct LocalCluster {
    dir: PathBuf,
    nodes: u16,
    base_port: u16,
    /// Its nodes' AMQP URLs, comma-separated: what `HAP_AMQP_URL` takes.
    urls: String,
}

impl LocalCluster {
    /// A cluster of `nodes` nodes on ports free now, not started yet (its URLs are known).
    pub async fn new(nodes: u16) -> anyhow::Result<Self> {
        // Guarded from here on: a failed `up` may leave nodes running.
        let mut cluster = Self {
            dir: std::env::temp_dir().join(format!("hap-cluster-{}", uuid::Uuid::new_v4())),
            nodes,
            base_port: free_base_port(nodes)?,
            urls: String::new(),
        };
        cluster.watch_over()?;
        cluster.urls = cluster.run(&["urls"]).await?.trim().to_owned();
        Ok(cluster)
    }

    /// Its nodes' AMQP URLs, comma-separated: what `HAP_AMQP_URL` takes.
    pub fn urls(&self) -> &str {
        &self.urls
    }

    pub fn nodes(&self) -> u16 {
        self.nodes
    }

    /// Brings the cluster down when this process ends however it ends, `Drop` or not (a
    /// process killed outright unwinds nothing): a watcher in a session of its own, out of
    /// reach of the signals a test runner sends to the process group, polls for this process
    /// and then runs `down`.
    fn watch_over(&self) -> anyhow::Result<()> {
        let watcher = "while kill -0 \"$0\" 2>/dev/null; do sleep 1; done; exec bash \"$1\" --dir \"$2\" down";
        // `setsid -f` returns at once, leaving the watcher to run on.
        let started = std::process::Command::new("setsid")
            .args(["-f", "bash", "-c", watcher])
            .arg(std::process::id().to_string())
            .arg(script())
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("Failed to run setsid (util-linux) for the cluster's watcher")?;
        if !started.success() {
            bail!("the cluster's watcher did not start");
        }
        Ok(())
    }

    /// Starts every node and waits until all run in one cluster.
    pub async fn up(&self) -> anyhow::Result<()> {
        self.run(&["up"]).await.map(drop)
    }

    /// `kill -9` of node `node`'s Erlang VM (nodes count from 1).
    pub async fn kill(&self, node: u16) -> anyhow::Result<()> {
        self.run(&["kill", &node.to_string()]).await.map(drop)
    }

    /// Starts node `node` again and waits until it is back in the cluster.
    pub async fn start(&self, node: u16) -> anyhow::Result<()> {
        self.run(&["start", &node.to_string()]).await.map(drop)
    }

    /// Node `node`'s Erlang node name, as `status` shows it.
    pub async fn node_name(&self, node: u16) -> anyhow::Result<String> {
        let status = self.run(&["status"]).await?;
        status
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|fields| fields.first() == Some(&node.to_string().as_str()))
            .and_then(|fields| fields.get(1).map(|name| name.to_string()))
            .with_context(|| format!("no node {node} in:\n{status}"))
    }

    /// `rabbitmqctl` against node `node`: what it printed.
    pub async fn ctl(&self, node: u16, arguments: &[&str]) -> anyhow::Result<String> {
        let node = node.to_string();
        let all: Vec<&str> = ["ctl", node.as_str()]
            .into_iter()
            .chain(arguments.iter().copied())
            .collect();
        self.run(&all).await
    }

    /// Runs the script on this cluster; returns what it printed on stdout, or fails with
    /// what it said on stderr.
    async fn run(&self, arguments: &[&str]) -> anyhow::Result<String> {
        let output = Command::new("bash")
            .arg(script())
            .arg("--dir")
            .arg(&self.dir)
            .args(["--nodes", &self.nodes.to_string()])
            .args(["--base-port", &self.base_port.to_string()])
            .args(arguments)
            .output()
            .await
            .context("Failed to run scripts/cluster.sh")?;
        if !output.status.success() {
            bail!(
                "scripts/cluster.sh {} failed: {}",
                arguments.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // Blocking, and so safe in any runtime: `down` kills the nodes and takes a moment.
        let _ = std::process::Command::new("bash")
            .arg(script())
            .arg("--dir")
            .arg(&self.dir)
            .arg("down")
            .output();
    }
}

/// A base port whose nodes' AMQP and distribution ports (20,000 above) are all free now.
/// They are taken below the kernel's ephemeral range (32768 and up), where no outgoing
/// connection can take one before the nodes do, and picked at random so that clusters
/// started at once differ.
fn free_base_port(nodes: u16) -> anyhow::Result<u16> {
    for _ in 0..100 {
        let base = 10_000 + (uuid::Uuid::new_v4().as_u128() % 2_500) as u16;
        let free = (0..nodes)
            .flat_map(|i| [base + i, base + i + 20_000])
            .all(|port| TcpListener::bind(("127.0.0.1", port)).is_ok());
        if free {
            return Ok(base);
        }
    }
    bail!("no free ports for a cluster of {nodes} nodes between 10000 and 32767")
}
