//! A RabbitMQ cluster of the run's own, through `scripts/cluster.sh`: in a scratch directory,
//! on ports no other cluster or service uses, and brought down when dropped, whatever
//! happened.

use std::net::TcpListener;
use std::path::PathBuf;

use anyhow::{Context, bail};
use tokio::process::Command;

/// The script, where the bench was built from.
fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh")
}

/// A running cluster; `down` when dropped.
pub struct Cluster {
    dir: PathBuf,
    nodes: u16,
    base_port: u16,
    /// Its nodes' AMQP URLs, comma-separated: what `HAP_AMQP_URL` takes.
    urls: String,
}

impl Cluster {
    /// Starts a cluster of `nodes` nodes on ports free now, and waits until every node runs
    /// in it.
    pub async fn up(nodes: u16) -> anyhow::Result<Self> {
        // From here on the value brings the nodes down when dropped: a failed `up` may leave
        // some running.
        let mut cluster = Self {
            dir: std::env::temp_dir().join(format!(
                "hap-chaos-cluster-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            )),
            nodes,
            base_port: free_base_port(nodes)?,
            urls: String::new(),
        };
        let printed = cluster.run(&["up"]).await?;
        cluster.urls = printed.trim().to_owned();
        Ok(cluster)
    }

    pub fn urls(&self) -> &str {
        &self.urls
    }

    pub fn nodes(&self) -> u16 {
        self.nodes
    }

    /// `kill -9` of node `node`'s Erlang VM (nodes count from 1).
    pub async fn kill(&self, node: u16) -> anyhow::Result<()> {
        self.run(&["kill", &node.to_string()]).await.map(drop)
    }

    /// Starts node `node` again and waits until it is back in the cluster.
    pub async fn start(&self, node: u16) -> anyhow::Result<()> {
        self.run(&["start", &node.to_string()]).await.map(drop)
    }

    /// Runs the script on this cluster; returns what it printed on stdout.
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

impl Drop for Cluster {
    fn drop(&mut self) {
        // Blocking, so that the nodes are gone before the process ends, in any runtime.
        let _ = std::process::Command::new("bash")
            .arg(script())
            .arg("--dir")
            .arg(&self.dir)
            .arg("down")
            .output();
    }
}

/// A base port whose nodes' AMQP ports and distribution ports (20,000 above) are all free now,
/// below the kernel's ephemeral range (32768 and up), where no outgoing connection takes one
/// before the nodes do; drawn at random, so that runs at once differ.
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
    bail!("no free ports for a RabbitMQ cluster of {nodes} nodes between 10000 and 32767")
}
