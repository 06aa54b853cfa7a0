//! What the query side waits on for read-your-writes (`X-Min-Position`): a projection has
//! applied an event once its `stream_versions` row for the event's stream has reached the
//! event's version (which holds for every event a rebuild folded as well).
//!
//! A projector commit in this process wakes exactly the queries waiting for the streams it
//! applied (waking every waiting query on every commit made them re-check the database
//! thousands of times a second under load). Across processes, and as a safety net for writes
//! that report nothing (a rebuild's swap), a waiting query polls.
//!
//! A rebuild (another process) announces each swap with a notification
//! ([`REPLACED_CHANNEL`]); [`follow_replacements`] counts it in [`Progress::replacements`],
//! on which caches drop everything.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{broadcast, oneshot, watch};
use uuid::Uuid;

use messaging::recent::Recent;

/// How soon a waiting query first re-checks when projectors run in another process.
const POLL: Duration = Duration::from_millis(10);
/// How soon it first re-checks when projectors here wake it, in case a write came from
/// elsewhere (another process projecting this instance, a rebuild's swap), both rare. Each
/// waiting query re-checks on its own clock: at 100 ms, a thousand queries waiting through a
/// burst re-checked thousands of times a second exactly when the database had least to spare,
/// which kept the projectors they were waiting for behind (docs/benchmarks.md).
pub const SAFETY_POLL: Duration = Duration::from_millis(500);
/// Each re-check waits twice as long as the one before, up to this many times the first: when
/// the projectors fall behind, a thousand waiting queries re-checking at a fixed pace would
/// add the most load exactly when there is least to spare.
const POLL_GROWTH_LIMIT: u32 = 8;
/// Waiters kept before the ones whose query gave up are swept out.
const SWEEP_ABOVE: usize = 10_000;
/// Streams whose latest versions applied here are remembered (the oldest forgotten first).
const RECENT_STREAMS: usize = 16_384;
/// The notification channel on which a rebuild names the schema whose tables it swapped.
pub const REPLACED_CHANNEL: &str = "hap_read_model_replaced";
/// Wait before listening again after the connection was lost.
const RELISTEN_AFTER: Duration = Duration::from_secs(1);

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

/// What one projector commit applied, as the projector reports it.
#[derive(Debug, Default)]
pub struct Commit {
    pub projection: &'static str,
    /// Each stream the commit moved, with the version it reached.
    pub streams: Vec<(Uuid, i64)>,
    /// The rows it changed.
    pub touched: Vec<Touched>,
}

/// A query waiting for a projection to reach a version of a stream.
#[derive(Debug)]
struct Waiter {
    projection: String,
    version: i64,
    wake: oneshot::Sender<()>,
}

/// The queries waiting, by stream, and what the latest commits applied: one lock for both,
/// so that a query registers either before a commit (which then wakes it) or after it (and
/// finds its version here).
#[derive(Debug, Default)]
struct Waiting {
    by_stream: HashMap<Uuid, Vec<Waiter>>,
    /// The version each projection reached of the streams committed here lately: a query
    /// arriving just after the commit it needs (typically its own command's, fed to the
    /// projectors here) is answered without waiting or asking the database.
    recent: Recent<Vec<(&'static str, i64)>, RECENT_STREAMS>,
}

impl Waiting {
    fn applied(&mut self, projection: &'static str, stream: Uuid, version: i64) {
        let reached = self.recent.entry(stream);
        match reached.iter_mut().find(|(p, _)| *p == projection) {
            Some((_, v)) => *v = (*v).max(version),
            None => reached.push((projection, version)),
        }
    }

    /// Whether `projection` is known to have applied `version` of `stream` here.
    fn reached(&self, projection: &str, stream: Uuid, version: i64) -> bool {
        self.recent
            .get(&stream)
            .and_then(|reached| reached.iter().find(|(p, _)| *p == projection))
            .is_some_and(|(_, v)| *v >= version)
    }
}

/// Counts projector commits in this process, says which rows they changed and wakes the
/// queries waiting for what they applied; cheap to clone.
#[derive(Clone, Debug)]
pub struct Progress {
    commits: Arc<watch::Sender<u64>>,
    touched: broadcast::Sender<Arc<Vec<Touched>>>,
    waiting: Arc<Mutex<Waiting>>,
    /// Whether projectors of this read model run in this process. Only then are commits (and
    /// the rows they touched) reported here, so only then may a cache rely on the reports.
    projecting: Arc<AtomicBool>,
    /// Counts the times the read model's tables were replaced wholesale (a rebuild's swap),
    /// or may have been while nobody listened: every row may have changed then.
    replacements: Arc<watch::Sender<u64>>,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            commits: Arc::new(watch::Sender::new(0)),
            touched: broadcast::Sender::new(1024),
            waiting: Arc::default(),
            projecting: Arc::new(AtomicBool::new(false)),
            replacements: Arc::new(watch::Sender::new(0)),
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
    /// Called after each projector commit.
    pub fn committed(&self, commit: Commit) {
        if !commit.touched.is_empty() {
            // No receiver (no cache) is fine.
            let _ = self.touched.send(Arc::new(commit.touched));
        }
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
        if commit.streams.is_empty() {
            return;
        }
        let mut waiting = self
            .waiting
            .lock()
            .expect("no panic while holding the lock");
        let waiters = &mut *waiting;
        for (stream, version) in &commit.streams {
            waiters.applied(commit.projection, *stream, *version);
            let Some(waiting) = waiters.by_stream.get_mut(stream) else {
                continue;
            };
            let (reached, still): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(waiting)
                .into_iter()
                .filter(|w| !w.wake.is_closed())
                .partition(|w| w.projection == commit.projection && w.version <= *version);
            for waiter in reached {
                let _ = waiter.wake.send(());
            }
            if still.is_empty() {
                waiters.by_stream.remove(stream);
            } else {
                *waiting = still;
            }
        }
    }

    /// Registers a wake-up for each of `projections` reaching `version` of `stream` that has
    /// not been seen to reach it here already; `None` when every one has.
    fn register(
        &self,
        projections: &[String],
        (stream, version): (Uuid, i64),
    ) -> Option<Vec<oneshot::Receiver<()>>> {
        let mut waiting = self
            .waiting
            .lock()
            .expect("no panic while holding the lock");
        let missing: Vec<&String> = projections
            .iter()
            .filter(|p| !waiting.reached(p, stream, version))
            .collect();
        if missing.is_empty() {
            return None;
        }
        let waiters = &mut waiting.by_stream;
        if waiters.len() > SWEEP_ABOVE {
            // Queries that gave up leave their waiter behind until its stream moves again.
            waiters.retain(|_, waiting| {
                waiting.retain(|w| !w.wake.is_closed());
                !waiting.is_empty()
            });
        }
        let waiting = waiters.entry(stream).or_default();
        let wakes = missing
            .into_iter()
            .map(|projection| {
                let (wake, woken) = oneshot::channel();
                waiting.push(Waiter {
                    projection: projection.clone(),
                    version,
                    wake,
                });
                woken
            })
            .collect();
        Some(wakes)
    }

    /// The rows each commit changed, for caches to invalidate. A receiver that lags behind
    /// gets `RecvError::Lagged` and must drop everything it cached.
    pub fn subscribe_touched(&self) -> broadcast::Receiver<Arc<Vec<Touched>>> {
        self.touched.subscribe()
    }

    /// How many times the tables were replaced so far: a cache that saw fewer drops everything.
    pub fn replacements(&self) -> u64 {
        *self.replacements.borrow()
    }

    /// The number of commits so far: a generation for caches, which may keep an entry only if
    /// no commit happened between reading it and storing it.
    pub fn generation(&self) -> u64 {
        *self.commits.borrow()
    }

    /// Waits until every projection in `projections` has applied version `version` of stream
    /// `stream`, or `timeout` passes (then `Ok(false)`). `fed` says the event was appended by
    /// this process a moment ago and handed to its own projectors (see [`crate::local`]):
    /// their commit will wake the wait, so the database is not asked before waiting, only at
    /// the safety poll.
    pub async fn wait_for(
        &self,
        pool: &PgPool,
        projections: &[&str],
        (stream, version): (Uuid, i64),
        timeout: Duration,
        fed: bool,
    ) -> Result<bool, sqlx::Error> {
        if projections.is_empty() {
            return Ok(true);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let names: Vec<String> = projections.iter().map(|p| (*p).to_owned()).collect();
        // Registered before the first look, so that a commit in between still wakes us. One
        // future waits for all the wake-ups across the loop's turns: a wake-up that came
        // before a poll is kept, not awaited again (a finished receiver must not be).
        let (wakes, first_poll) = if self.projected_here() {
            match self.register(&names, (stream, version)) {
                Some(wakes) => (wakes, SAFETY_POLL),
                None => return Ok(true),
            }
        } else {
            (vec![], POLL)
        };
        let waking = !wakes.is_empty();
        let mut woken = std::pin::pin!(futures::future::join_all(wakes));
        let mut poll = first_poll;
        let mut look = !(fed && waking);
        loop {
            if look {
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
            }
            look = true;
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::select! {
                // Every wake-up is sent after a commit that reached the version: no need to
                // ask the database again. (A receiver fails only once `self` is gone.)
                _ = &mut woken, if waking => return Ok(true),
                () = tokio::time::sleep(poll) => {
                    poll = (poll * 2).min(first_poll * POLL_GROWTH_LIMIT);
                }
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }
}

/// Listens for a rebuild's announcements that the tables of the read model behind `pool`
/// were swapped, and counts each in [`Progress::replacements`]. A swap announced while the
/// listener was not connected is missed, so every lost connection and every reconnection
/// counts as one too. Stops at the first wake-up after every other handle on `progress` is
/// gone.
pub async fn follow_replacements(pool: PgPool, progress: Progress) {
    let replacements = Arc::downgrade(&progress.replacements);
    drop(progress);
    let replaced = || match replacements.upgrade() {
        Some(count) => {
            count.send_modify(|n| *n = n.wrapping_add(1));
            true
        }
        None => false,
    };
    // The first listener starts with the process, before anything worth dropping is cached.
    let mut again = false;
    loop {
        let Err(error) = listen_for_swaps(&pool, &replaced, again).await else {
            return;
        };
        tracing::debug!(%error, "could not listen for rebuilds; trying again");
        again = true;
        if !replaced() {
            return;
        }
        tokio::time::sleep(RELISTEN_AFTER).await;
    }
}

/// Listens on one listener until `replaced` says nobody is left to tell (`Ok`) or the
/// listener cannot go on (`Err`). Listening `again` counts as a replacement once it listens:
/// a swap may have come while nobody did.
async fn listen_for_swaps(
    pool: &PgPool,
    replaced: &(dyn Fn() -> bool + Sync),
    again: bool,
) -> Result<(), sqlx::Error> {
    // The pool's connections see only the read model's schema, which the notifications name.
    let schema: String = sqlx::query_scalar("select current_schema()")
        .fetch_one(pool)
        .await?;
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(REPLACED_CHANNEL).await?;
    if again && !replaced() {
        return Ok(());
    }
    loop {
        // `None`: the connection was lost (the next call listens again on a new one), and
        // with it any notification sent meanwhile.
        let swapped = match listener.try_recv().await? {
            Some(notification) => notification.payload() == schema,
            None => true,
        };
        if swapped {
            tracing::info!(%schema, "the read model was (or may have been) rebuilt; dropping cached rows");
            if !replaced() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_wakes_only_the_waiters_it_satisfies() {
        let progress = Progress::default();
        let stream = Uuid::now_v7();
        let mut woken = progress
            .register(&["patients".to_owned()], (stream, 2))
            .expect("not applied yet");
        let commit = |projection, streams| Commit {
            projection,
            streams,
            touched: vec![],
        };

        progress.committed(commit("consultations", vec![(stream, 5)]));
        progress.committed(commit("patients", vec![(stream, 1), (Uuid::now_v7(), 9)]));
        assert!(woken[0].try_recv().is_err(), "not yet");

        progress.committed(commit("patients", vec![(stream, 2)]));
        assert!(woken[0].try_recv().is_ok());
        assert!(
            progress.waiting.lock().unwrap().by_stream.is_empty(),
            "nothing left behind"
        );
    }

    #[test]
    fn a_wait_registered_after_the_commit_it_needs_is_already_over() {
        let progress = Progress::default();
        let stream = Uuid::now_v7();
        progress.committed(Commit {
            projection: "patients",
            streams: vec![(stream, 2)],
            touched: vec![],
        });
        let patients = ["patients".to_owned()];
        assert!(progress.register(&patients, (stream, 2)).is_none());
        assert!(progress.register(&patients, (stream, 1)).is_none());
        assert!(
            progress.register(&patients, (stream, 3)).is_some(),
            "a later version"
        );
        let both = ["patients".to_owned(), "consultations".to_owned()];
        let wakes = progress.register(&both, (stream, 2)).expect("one missing");
        assert_eq!(wakes.len(), 1, "only consultations is waited for");
    }

    #[test]
    fn only_the_latest_streams_are_remembered() {
        let progress = Progress::default();
        let first = Uuid::now_v7();
        for stream in std::iter::once(first).chain((0..RECENT_STREAMS).map(|_| Uuid::now_v7())) {
            progress.committed(Commit {
                projection: "patients",
                streams: vec![(stream, 1)],
                touched: vec![],
            });
        }
        let waiting = progress.waiting.lock().unwrap();
        assert_eq!(waiting.recent.len(), RECENT_STREAMS);
        assert!(
            !waiting.reached("patients", first, 1),
            "the oldest is forgotten"
        );
    }

    #[test]
    fn waiters_whose_query_gave_up_are_dropped_when_their_stream_moves() {
        let progress = Progress::default();
        let stream = Uuid::now_v7();
        drop(progress.register(&["patients".to_owned()], (stream, 3)));
        progress.committed(Commit {
            projection: "patients",
            streams: vec![(stream, 1)],
            touched: vec![],
        });
        assert!(progress.waiting.lock().unwrap().by_stream.is_empty());
    }
}
