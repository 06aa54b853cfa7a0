//! A watched connection to RabbitMQ, for `/health/ready`: kept open and re-opened in the
//! background, so that readiness answers at once without connecting per request.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::RwLock;

use crate::broker::{self, AmqpUrls};

#[derive(Clone)]
pub struct BrokerHealth {
    connection: Arc<RwLock<Option<lapin::Connection>>>,
}

impl BrokerHealth {
    /// Starts watching the broker at `urls` (connected to the first node that answers), for as
    /// long as the Tokio runtime runs.
    pub fn watch(urls: AmqpUrls) -> Self {
        let health = Self {
            connection: Arc::new(RwLock::new(None)),
        };
        let slot = health.connection.clone();
        tokio::spawn(async move {
            loop {
                let connected = slot
                    .read()
                    .await
                    .as_ref()
                    .is_some_and(|c| c.status().connected());
                if !connected {
                    let fresh = broker::connect(&urls, "hap-health").await;
                    *slot.write().await = fresh.ok();
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        health
    }

    pub async fn is_connected(&self) -> bool {
        self.connection
            .read()
            .await
            .as_ref()
            .is_some_and(|c| c.status().connected())
    }
}
