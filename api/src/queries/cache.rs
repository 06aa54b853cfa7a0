//! The cache of single-resource reads, keyed by (resource, id), holding the JSON body as sent.
//!
//! It must never answer with a row older than what a projector has committed. Projectors
//! report the rows each commit changed ([`Progress::subscribe_touched`]) after committing, so:
//! - every entry a commit touched is invalidated before any lookup that starts after the
//!   commit is reported: lookups apply the pending reports first, and a task applies them
//!   eagerly so that memory is not held by dead entries;
//! - a row read before a commit may be cached only if no report and no commit came between
//!   the read and the insert ([`Ticket`]); otherwise the old row could be inserted after its
//!   invalidation and outlive it.
//!
//! Applying reports and inserting share one lock, so no report can slip between the check and
//! the insert. A process that does not run the projectors gets no reports, so there the cache
//! is bypassed. A rebuild's swap reports no rows but replaces them all
//! ([`Progress::replacements`]): the cache then drops everything.
//!
//! [`QueryCaches`] holds it together with the [`Positions`] that read-your-writes waits for:
//! all the query side keeps in memory.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use moka::future::Cache;
use projections::progress::{Progress, Touched};
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{Mutex, MutexGuard};
use uuid::Uuid;

use super::positions::Positions;

const CAPACITY: u64 = 10_000;
/// A backstop only: invalidation is what keeps entries current.
const TIME_TO_LIVE: Duration = Duration::from_secs(60);

/// What the query side keeps in memory; cheap to clone.
#[derive(Clone)]
pub struct QueryCaches {
    pub reads: ReadCache,
    pub positions: Positions,
}

impl QueryCaches {
    /// Needs a Tokio runtime: the read cache starts following the projectors' commits, and
    /// the rebuilds' swaps of `read`.
    pub fn new(read: &projections::ReadModel) -> Self {
        tokio::spawn(projections::progress::follow_replacements(
            read.pool.clone(),
            read.progress.clone(),
        ));
        Self {
            reads: ReadCache::new(&read.progress),
            positions: Positions::new(),
        }
    }
}

/// The resource (as named in [`Touched`]) and its id.
pub type Key = (&'static str, Uuid);

/// A resource's JSON body and the version its `ETag` names.
#[derive(Debug, Clone)]
pub struct Cached {
    pub body: Bytes,
    pub version: i64,
    /// The tenant the row belongs to.
    pub tenant_id: String,
}

#[derive(Clone)]
pub struct ReadCache {
    entries: Cache<Key, Cached>,
    reports: Arc<Mutex<Reports>>,
    /// Says whether the projectors run in this process; when they do not, nothing reports
    /// their commits here, and the cache stays out of the way.
    progress: Progress,
}

/// The projectors' reports not yet applied to the cache.
struct Reports {
    pending: Receiver<Arc<Vec<Touched>>>,
    /// The read model's replacements (rebuild swaps) already applied: all entries went.
    replacements: u64,
    /// How many reports (or lags) have been applied: an insert checks that none came since
    /// its row was read.
    applied: u64,
}

/// Taken before reading a row from the read model; see [`ReadCache::insert`].
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    generation: u64,
    applied: u64,
}

impl ReadCache {
    /// Needs a Tokio runtime: it spawns the task that invalidates entries as projectors
    /// commit. The task ends when every [`Progress`] handle is dropped.
    pub fn new(progress: &Progress) -> Self {
        let cache = Self {
            entries: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(TIME_TO_LIVE)
                .build(),
            reports: Arc::new(Mutex::new(Reports {
                pending: progress.subscribe_touched(),
                replacements: progress.replacements(),
                applied: 0,
            })),
            progress: progress.clone(),
        };
        tokio::spawn(
            cache
                .clone()
                .invalidate_as_reported(progress.subscribe_touched()),
        );
        cache
    }

    /// A resource's entry. Counted as a hit or a miss.
    pub async fn get(&self, key: Key) -> Option<Cached> {
        if !self.progress.projected_here() {
            return None;
        }
        drop(self.apply_reports().await);
        let entry = self.entries.get(&key).await;
        let result = if entry.is_some() { "hit" } else { "miss" };
        metrics::counter!("hap_query_cache_total", "result" => result).increment(1);
        entry
    }

    /// To be taken before reading the row that will be inserted.
    pub async fn ticket(&self, progress: &Progress) -> Ticket {
        let reports = self.apply_reports().await;
        Ticket {
            generation: progress.generation(),
            applied: reports.applied,
        }
    }

    /// Caches a row read after `ticket` was taken, unless a projector committed since: the
    /// row may be older than that commit.
    pub async fn insert(&self, key: Key, entry: Cached, ticket: Ticket, progress: &Progress) {
        let reports = self.apply_reports().await;
        if self.progress.projected_here()
            && reports.applied == ticket.applied
            && progress.generation() == ticket.generation
        {
            self.entries.insert(key, entry).await;
        }
        drop(reports);
    }

    /// Applies every pending report; the guard keeps others from applying or inserting.
    async fn apply_reports(&self) -> MutexGuard<'_, Reports> {
        let mut reports = self.reports.lock().await;
        let replacements = self.progress.replacements();
        if replacements != reports.replacements {
            // A rebuild swapped the tables: any row may have changed, none was reported.
            self.entries.invalidate_all();
            reports.replacements = replacements;
            reports.applied += 1;
        }
        loop {
            match reports.pending.try_recv() {
                Ok(touched) => {
                    for row in touched.iter() {
                        self.entries.invalidate(&(row.resource, row.id)).await;
                    }
                }
                // Reports were lost: any entry may be stale.
                Err(TryRecvError::Lagged(_)) => self.entries.invalidate_all(),
                Err(TryRecvError::Empty | TryRecvError::Closed) => return reports,
            }
            reports.applied += 1;
        }
    }

    /// Applies reports as they come, with a receiver of its own that only says when.
    async fn invalidate_as_reported(self, mut wake: Receiver<Arc<Vec<Touched>>>) {
        loop {
            match wake.recv().await {
                Ok(_) | Err(RecvError::Lagged(_)) => drop(self.apply_reports().await),
                Err(RecvError::Closed) => return,
            }
        }
    }
}
