//! The load every run applies: a closed loop of concurrent clients, each sending its next
//! operation as soon as the previous one is answered, first for a warm-up that is not counted,
//! then for the measured window.
//!
//! A closed loop measures what the system sustains at a given concurrency; it cannot overload
//! it, so latency reflects queueing at that concurrency, not an arrival rate the system
//! cannot keep up with. Latency at a given arrival rate is what [`paced`] measures: an open
//! loop that starts operations on a fixed schedule, however long earlier ones take.
//!
//! Runs that drain a fixed amount of work (a backlog of events or messages) report a
//! [`Drained`] instead: how many, and how long it took.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use hdrhistogram::Histogram;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

use crate::cpu::{CpuWindow, MachineCpu};

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
    /// How busy the machine was during the measured window, where it can be read.
    pub cpu: Option<MachineCpu>,
}

impl Outcome {
    fn empty() -> Self {
        Self {
            ok: 0,
            errors: 0,
            first_error: None,
            elapsed: Duration::ZERO,
            latency_us: latency_histogram(),
            cpu: None,
        }
    }

    /// Successful operations per second of the measured window.
    pub fn rate(&self) -> f64 {
        per_second(self.ok, self.elapsed)
    }

    /// The latency at quantile `q` (0.5 for the median), in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    /// Counts one operation of the measured window that was answered at `answered`, `latency`
    /// after it started (or was due).
    pub fn record(
        &mut self,
        timeline: Timeline,
        answered: Instant,
        latency: Duration,
        result: anyhow::Result<()>,
    ) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.saturating_record(micros.max(1));
        self.elapsed = self
            .elapsed
            .max(answered.saturating_duration_since(timeline.measure_from));
        match result {
            Ok(()) => self.ok += 1,
            Err(error) => {
                self.errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(format!("{error:#}"));
                }
            }
        }
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

pub fn latency_histogram() -> Histogram<u64> {
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
                outcome.record(timeline, answered, answered - started, result);
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

/// The options of the paced runs, flattened into the arguments of each subcommand that has
/// some (`publish`, `e2e`, `saga`), so that `--rate` and `--seconds` are read and checked in one
/// place. `saga` sets a lower default rate of its own, where its subcommand is declared.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct PaceArgs {
    /// Operations started per second in each paced run (publish: single-event appends; e2e:
    /// command-then-query pairs; saga: consultation requests, and pairs of its floor).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: u64,

    /// Measured seconds of each paced run, after a 1-second warm-up each.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub seconds: u64,
}

impl PaceArgs {
    /// The pace these options ask for, with at most `max_in_flight` operations in flight.
    pub fn with_in_flight(self, max_in_flight: u32) -> Pace {
        Pace {
            rate: self.rate,
            seconds: self.seconds,
            max_in_flight,
        }
    }
}

/// How a paced run is driven; `hap-bench saga` drives `e2e`'s HAP run at its own pace, as its
/// floor.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Started per second.
    pub rate: u64,
    /// Measured seconds, after [`WARMUP`].
    pub seconds: u64,
    /// In flight at most.
    pub max_in_flight: u32,
}

impl Pace {
    /// Says on stderr that a run at this pace starts: `{run}: {rate} {per}/s, 1 s warm-up +
    /// {seconds} s…`.
    pub fn announce(&self, run: &str, per: &str) {
        eprintln!(
            "{run}: {} {per}/s, {} s warm-up + {} s…",
            self.rate,
            WARMUP.as_secs(),
            self.seconds
        );
    }

    /// The warm-up and measured window of a run at this pace that starts now.
    pub fn timeline(&self) -> Timeline {
        Timeline::starting_now(WARMUP, Duration::from_secs(self.seconds))
    }
}

/// The HTTP client of a paced run: HTTP/1.1, keeping up to `max_in_flight` connections open
/// between requests, so that connection set-up is not measured (beyond the warm-up's first
/// requests).
pub fn keep_alive_client(max_in_flight: u32) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .pool_max_idle_per_host(max_in_flight as usize)
        .build()
        .context("Failed to build the HTTP client")
}

/// Runs `op(n)` at `pace`'s steady rate per second over `timeline`: operation `n` is due
/// `n / rate` seconds after the start and is started then, in a task of its own, whether or not
/// earlier ones have been answered, up to the pace's `max_in_flight` at once (beyond that the
/// schedule slips, and the achieved rate shows it). Latency counts from when an operation was due, not from when it
/// was started, so that a stall delays the operations queued behind it in the figures too (no
/// coordinated omission). Operations due during the warm-up are not counted; `op(n, measured)`
/// is told whether it counts, for measurements of its own.
pub async fn paced<F, Fut>(pace: Pace, timeline: Timeline, op: F) -> anyhow::Result<Outcome>
where
    F: Fn(u64, bool) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let start = Instant::now();
    let cpu = sample_cpu(timeline);
    let rate = pace.rate as f64;
    let slots = Arc::new(Semaphore::new(pace.max_in_flight as usize));
    let mut tasks = JoinSet::new();
    let mut outcome = Outcome::empty();
    let mut take =
        |joined: Result<(Instant, Instant, anyhow::Result<()>), _>| -> anyhow::Result<()> {
            let (due, answered, result) = joined.context("A paced operation panicked")?;
            if due >= timeline.measure_from {
                outcome.record(timeline, answered, answered - due, result);
            }
            Ok(())
        };
    for n in 0u64.. {
        let due = start + Duration::from_secs_f64(n as f64 / rate);
        if due >= timeline.until {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let slot = Arc::clone(&slots)
            .acquire_owned()
            .await
            .context("The in-flight limit was closed")?;
        let operation = op(n, due >= timeline.measure_from);
        tasks.spawn(async move {
            let result = operation.await;
            let answered = Instant::now();
            drop(slot);
            (due, answered, result)
        });
        // Collect what has finished, so the set stays as small as what is in flight.
        while let Some(joined) = tasks.try_join_next() {
            take(joined)?;
        }
    }
    while let Some(joined) = tasks.join_next().await {
        take(joined)?;
    }
    outcome.cpu = cpu.await.context("The CPU sampler panicked")?;
    Ok(outcome)
}

/// A backlog worked off: how many items, in how long.
#[derive(Debug, Clone, Copy)]
pub struct Drained {
    pub count: u64,
    pub elapsed: Duration,
}

impl Drained {
    /// Items per second.
    pub fn rate(&self) -> f64 {
        per_second(self.count, self.elapsed)
    }
}

/// `count` over `elapsed`, in items per second; 0 for no time at all rather than a division by
/// zero.
fn per_second(count: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// Polls `done` every `every` until it answers true, and returns how long that took from
/// `started`. Polling resolution is `every`; use one that is small next to the run.
pub async fn wait_until<F, Fut>(
    started: Instant,
    every: Duration,
    deadline: Duration,
    mut done: F,
) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    loop {
        if done().await? {
            return Ok(started.elapsed());
        }
        if started.elapsed() > deadline {
            anyhow::bail!("not done after {deadline:?}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Reads the machine's CPU counters when the measured window of `timeline` opens and when it
/// closes.
pub fn sample_cpu(timeline: Timeline) -> JoinHandle<Option<MachineCpu>> {
    tokio::spawn(async move {
        tokio::time::sleep_until(timeline.measure_from.into()).await;
        let window = CpuWindow::open();
        tokio::time::sleep_until(timeline.until.into()).await;
        window.close()
    })
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
