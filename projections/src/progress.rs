//! What the query side waits on for read-your-writes (`X-Min-Position`): a projection has
//! applied an event once its `stream_versions` row for the event's stream has reached the
//! event's version (which holds for every event a rebuild folded as well).
//! Projector commits in this process bump a counter, so a waiting query re-checks at once;
//! across processes the query polls.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

/// How often a waiting query re-checks when no commit in this process wakes it.
const POLL: Duration = Duration::from_millis(10);

/// A read-model row a commit changed: `resource` is `patient`, `physician`, `consultation`
/// or `record`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Touched {
    pub resource: &'static str,
    pub id: Uuid,
}

impl Touched {
    /// Each of `ids` once, as rows of `resource`.
    pub fn rows(resource: &'static str, mut ids: Vec<Uuid>) -> Vec<Touched> {
        ids.sort();
        ids.dedup();
        ids.into_iter().map(|id| Touched { resource, id }).collect()
    }
}

/// Counts projector commits in this process and says which rows they changed; cheap to clone.
#[derive(Clone, Debug)]
pub struct Progress {
    commits: Arc<watch::Sender<u64>>,
    touched: broadcast::Sender<Arc<Vec<Touched>>>,
    /// Whether projectors of this read model run in this process. Only then are commits (and
    /// the rows they touched) reported here, so only then may a cache rely on the reports.
    projecting: Arc<AtomicBool>,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            commits: Arc::new(watch::Sender::new(0)),
            touched: broadcast::Sender::new(1024),
            projecting: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Progress {
    /// Called when this process starts projecting into the read model.
    pub fn start_projecting(&self) {
        self.projecting.store(true, Ordering::SeqCst);
    }

    /// Whether this process projects into the read model (and so reports every commit).
    pub fn projected_here(&self) -> bool {
        self.projecting.load(Ordering::SeqCst)
    }
    /// Called after each projector commit, with the rows it changed.
    pub fn committed(&self, touched: Vec<Touched>) {
        if !touched.is_empty() {
            // No receiver (no cache) is fine.
            let _ = self.touched.send(Arc::new(touched));
        }
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The rows each commit changed, for caches to invalidate. A receiver that lags behind
    /// gets `RecvError::Lagged` and must drop everything it cached.
    pub fn subscribe_touched(&self) -> broadcast::Receiver<Arc<Vec<Touched>>> {
        self.touched.subscribe()
    }

    /// The number of commits so far: a generation for caches, which may keep an entry only if
    /// no commit happened between reading it and storing it.
    pub fn generation(&self) -> u64 {
        *self.commits.borrow()
    }

    /// Waits until every projection in `projections` has applied version `version` of stream
    /// `stream`, or `timeout` passes (then `Ok(false)`).
    pub async fn wait_for(
        &self,
        pool: &PgPool,
        projections: &[&str],
        (stream, version): (Uuid, i64),
        timeout: Duration,
    ) -> Result<bool, sqlx::Error> {
        if projections.is_empty() {
            return Ok(true);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut commits = self.commits.subscribe();
        let names: Vec<String> = projections.iter().map(|p| (*p).to_owned()).collect();
        loop {
            let applied: i64 = sqlx::query_scalar(
                "select count(*) from stream_versions
                  where projection = any($1) and stream_id = $2 and version >= $3",
            )
            .bind(&names)
            .bind(stream)
            .bind(version)
            .fetch_one(pool)
            .await?;
            if applied as usize == names.len() {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            commits.mark_unchanged();
            tokio::select! {
                _ = commits.changed() => {}
                () = tokio::time::sleep(POLL) => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }
}
