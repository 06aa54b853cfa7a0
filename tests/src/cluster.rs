//! A RabbitMQ cluster of the test's own (`hap_support::cluster::LocalCluster`, through
//! `scripts/cluster.sh`), in a scratch directory and on ports no other cluster or service
//! uses, brought down when dropped, whether the test passed or not. A failure of the script
//! fails the test, with what the script said.

use hap_support::cluster::LocalCluster;

/// A cluster of the test's own; `down` when dropped.
pub struct Cluster {
    cluster: LocalCluster,
    /// Its nodes' AMQP URLs, comma-separated: what `HAP_AMQP_URL` takes.
    pub urls: String,
}

impl Cluster {
    /// A cluster of `nodes` nodes on ports free now, not started yet (its URLs are known).
    pub async fn new(nodes: u16) -> Self {
        let cluster = LocalCluster::new(nodes)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        Self {
            urls: cluster.urls().to_owned(),
            cluster,
        }
    }

    /// Starts every node and waits until all run in one cluster.
    pub async fn up(&self) {
        self.cluster.up().await.unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// kill -9 of node `node`'s Erlang VM (nodes count from 1).
    pub async fn kill(&self, node: u16) {
        self.cluster
            .kill(node)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Starts node `node` again and waits until it is back in the cluster.
    pub async fn start(&self, node: u16) {
        self.cluster
            .start(node)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Node `node`'s Erlang node name, as `status` shows it.
    pub async fn node_name(&self, node: u16) -> String {
        self.cluster
            .node_name(node)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `rabbitmqctl` against node `node`: what it printed.
    pub async fn ctl(&self, node: u16, arguments: &[&str]) -> String {
        self.cluster
            .ctl(node, arguments)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }
}
