//! [`Publishing`]: a test's own database and exchange prefix, with a publisher running on them
//! and a capture of everything it publishes.

use eventstore::EventStore;
use tokio_util::sync::CancellationToken;

use crate::TestDb;
use crate::broker::{Capture, unique_prefix};

pub struct Publishing {
    pub db: TestDb,
    /// A store of its own: appends through it reach the publisher as another process's would.
    pub store: EventStore,
    pub prefix: String,
    pub capture: Capture,
    publisher: CancellationToken,
}

impl Publishing {
    /// A fresh database and prefix; the capture is bound before the publisher starts, so it
    /// sees every message.
    pub async fn start() -> Self {
        let db = TestDb::new().await;
        let prefix = unique_prefix();
        let capture = Capture::start(&prefix).await;
        let publisher = crate::start_publisher(&db.pool, &prefix);
        let store = db.plain_store();
        Self {
            db,
            store,
            prefix,
            capture,
            publisher,
        }
    }

    /// Stops the publisher and deletes what the prefix declared on the broker.
    pub async fn finish(self) {
        self.publisher.cancel();
        self.capture.clean_up().await;
    }
}
