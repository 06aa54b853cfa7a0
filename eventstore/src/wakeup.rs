//! Waking the publisher soon after a commit without a `NOTIFY` inside the append transaction
//! (which would serialise every writer on the notification queue's lock at commit).
//!
//! Within a process, appends bump a watch channel ([`EventStore::subscribe_appended`]). For
//! publishers in other processes, [`forward_appends`] sends one `NOTIFY` *after* commits,
//! coalescing all appends that happen while one is in flight, unless the leading publisher
//! runs in this process. A listener misses notifications
//! while it reconnects, so readers also poll, as the safety net.

use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::EventStore;

/// The PostgreSQL notification channel (per database).
pub const CHANNEL: &str = "hap_events_appended";

/// Sends a `NOTIFY` after appends made through `store`, until `shutdown`.
pub async fn forward_appends(store: EventStore, shutdown: CancellationToken) {
    let mut appended = store.subscribe_appended();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = appended.changed() => if changed.is_err() { return },
        }
        if store.publishing_here() {
            // The leader is woken in-process; a notification would only wake it twice. (Just
            // after it lost the lead, a new leader elsewhere then misses these: it polls.)
            continue;
        }
        let notify = sqlx::query("select pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(store.pool())
            .await;
        if let Err(error) = notify {
            // Readers poll as well; a lost wake-up only costs latency.
            tracing::debug!(%error, "could not send the append notification");
        }
    }
}

/// What a reader of the global order waits on: appends in this process, notifications from
/// others, or a timeout.
pub struct Wakeups {
    store: EventStore,
    appended: watch::Receiver<u64>,
    /// `None` while PostgreSQL cannot be reached; reconnected on the next wait.
    listener: Option<PgListener>,
}

impl Wakeups {
    pub fn new(store: &EventStore) -> Self {
        Self {
            store: store.clone(),
            appended: store.subscribe_appended(),
            listener: None,
        }
    }

    async fn listen(store: &EventStore) -> Option<PgListener> {
        let mut listener = PgListener::connect_with(store.pool()).await.ok()?;
        listener.listen(CHANNEL).await.ok()?;
        Some(listener)
    }

    /// Waits for an append or `timeout`.
    pub async fn wait(&mut self, timeout: Duration) {
        if self.listener.is_none() {
            self.listener = Self::listen(&self.store).await;
        }
        let Self {
            appended, listener, ..
        } = self;
        let notified = async {
            match listener {
                Some(l) => l.recv().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // It fails only once the store is gone, and this holds a handle on it.
            _ = appended.changed() => {}
            ok = notified => if !ok {
                self.listener = None;
            },
            () = tokio::time::sleep(timeout) => {}
        }
    }
}
