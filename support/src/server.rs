//! HAP's HTTP API served in-process on a free local port, as `hap serve` serves it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running server; dropping it stops it as [`HttpServer::stop`] does, without waiting.
pub struct HttpServer {
    pub address: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl HttpServer {
    /// Serves `api::router(app, commands, queries)` on `127.0.0.1:0`.
    pub async fn start(app: api::AppState, commands: bool, queries: bool) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("Failed to bind a local port for HAP")?;
        let address = listener
            .local_addr()
            .context("Failed to read HAP's local address")?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(
                api::without_delay(listener),
                api::router(app, commands, queries),
            )
            .with_graceful_shutdown(async {
                // A dropped sender means the same as a sent stop.
                let _ = stopped.await;
            })
            .await
        });
        Ok(Self {
            address,
            stop,
            task,
        })
    }

    /// `http://{address}`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Stops the server once its clients are gone (no keep-alive connection holds it).
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(joined) => joined
                .context("HAP's server task panicked")?
                .context("HAP's server failed"),
            // Requests are all answered by now; a server slow to close is not worth failing for.
            Err(_) => {
                tracing::warn!("HAP's server did not shut down within 5 s");
                Ok(())
            }
        }
    }
}
