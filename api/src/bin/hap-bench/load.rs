//! The load every run applies: a closed loop of concurrent clients, each sending its next
//! operation as soon as the previous one is answered, first for a warm-up that is not counted,
//! then for the measured window.
//!
//! A closed loop measures what the system sustains at a given concurrency; it cannot overload
//! it, so latency reflects queueing at that concurrency, not an arrival rate the system
//! cannot keep up with.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use hdrhistogram::Histogram;
use sqlx::PgPool;
use tokio::task::{JoinHandle, JoinSet};

/// Warm-up before every measured window: connections opened, caches and statements prepared.
pub const WARMUP: Duration = Duration::from_secs(1);

/// Highest latency the histograms tell apart (larger ones are recorded as this), in µs. HAP
/// answers 503 after 30 s, so a minute covers anything that is answered at all.
const MAX_LATENCY_US: u64 = 60_000_000;

/// When a run's warm-up ends and its measured window ends.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    pub measure_from: Instant,
    pub until: Instant,
}

impl Timeline {
    pub fn starting_now(warmup: Duration, measure: Duration) -> Self {
        let measure_from = Instant::now() + warmup;
        Self {
            measure_from,
            until: measure_from + measure,
        }
    }
}

/// What one run measured; operations of the warm-up are not in it.
pub struct Outcome {
    pub ok: u64,
    pub errors: u64,
    /// The first failure's message, to tell what went wrong without a log.
    pub first_error: Option<String>,
    /// From the end of the warm-up until the last counted operation was answered. Operations
    /// started before the window closed are counted whole, so this runs slightly past it.
    pub elapsed: Duration,
    /// Latency of every counted operation, successful or not, in µs.
    pub latency_us: Histogram<u64>,
}

impl Outcome {
    fn empty() -> Self {
        Self {
            ok: 0,
            errors: 0,
            first_error: None,
            elapsed: Duration::ZERO,
            latency_us: latency_histogram(),
        }
    }

    /// Successful operations per second of the measured window.
    pub fn rate(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.ok as f64 / seconds
        } else {
            0.0
        }
    }

    /// The latency at quantile `q` (0.5 for the median), in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    /// Folds another client's outcome into this one.
    fn merge(&mut self, other: Outcome) -> anyhow::Result<()> {
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.elapsed = self.elapsed.max(other.elapsed);
        self.latency_us
            .add(&other.latency_us)
            .map_err(|e| anyhow!("Failed to merge latency histograms: {e:?}"))
    }
}

fn latency_histogram() -> Histogram<u64> {
    // The bounds are constants within what hdrhistogram accepts (1 ≤ low, 2·low ≤ high,
    // 3 significant figures ≤ 5), so this cannot fail.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

/// Runs `clients` concurrent loops of `op(client, n)` over `timeline`, where `n` counts the
/// client's operations from 0 across warm-up and measured window, so `(client, n)` is unique
/// within a run. Each loop starts its next operation as soon as the previous one is answered,
/// and none is started once the window has closed.
pub async fn closed_loop<F, Fut>(
    clients: usize,
    timeline: Timeline,
    op: F,
) -> anyhow::Result<Outcome>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut tasks = JoinSet::new();
    for client in 0..clients {
        let op = op.clone();
        tasks.spawn(async move {
            // Each client keeps its own histogram so that recording needs no lock; they are
            // merged once at the end.
            let mut outcome = Outcome::empty();
            let mut n = 0;
            loop {
                let started = Instant::now();
                if started >= timeline.until {
                    break;
                }
                let result = op(client, n).await;
                n += 1;
                if started < timeline.measure_from {
                    continue;
                }
                let answered = Instant::now();
                let micros = u64::try_from((answered - started).as_micros()).unwrap_or(u64::MAX);
                outcome.latency_us.saturating_record(micros.max(1));
                outcome.elapsed = answered - timeline.measure_from;
                match result {
                    Ok(()) => outcome.ok += 1,
                    Err(error) => {
                        outcome.errors += 1;
                        if outcome.first_error.is_none() {
                            outcome.first_error = Some(format!("{error:#}"));
                        }
                    }
                }
            }
            outcome
        });
    }
    let mut total = Outcome::empty();
    while let Some(joined) = tasks.join_next().await {
        total.merge(joined.context("A load client panicked")?)?;
    }
    Ok(total)
}

/// How busy a connection pool was during a measured window.
#[derive(Debug, Clone, Copy)]
pub struct PoolUsage {
    /// Mean number of open connections.
    pub open: f64,
    /// Mean number of idle ones: near 0 means requests were waiting for a connection.
    pub idle: f64,
}

/// Samples `pool` every 10 ms during the measured window of `timeline`. The pool keeps no
/// statistics of its own, and this is how to tell a run limited by its connections (idle
/// near 0) from one limited by something else.
pub fn sample_pool(pool: PgPool, timeline: Timeline) -> JoinHandle<PoolUsage> {
    tokio::spawn(async move {
        tokio::time::sleep_until(timeline.measure_from.into()).await;
        let mut ticks = tokio::time::interval(Duration::from_millis(10));
        let (mut samples, mut open, mut idle) = (0u64, 0u64, 0u64);
        while Instant::now() < timeline.until {
            ticks.tick().await;
            samples += 1;
            open += u64::from(pool.size());
            idle += pool.num_idle() as u64;
        }
        let samples = samples.max(1) as f64;
        PoolUsage {
            open: open as f64 / samples,
            idle: idle as f64 / samples,
        }
    })
}
