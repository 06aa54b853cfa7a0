//! `hap-bench saga`: how long a client waits from requesting a consultation until it reads it
//! `scheduled`, how many consultations the scheduling saga schedules per second, and how that
//! compares with the plainest trip through the same system.
//!
//! HAP runs in-process with every role of `hap serve` ([`Hap`]): the routes, the append
//! notifier, the publisher, the projectors of instance `bench`, the saga services and the
//! deadline timer, all over one event store. Physicians and patients are registered first
//! through the API, one physician per [`PER_PHYSICIAN`] consultations. Consultation `n` goes to
//! physician `n` mod P on a 30-minute slot of its own, so every request can be scheduled (an
//! overlapping one would be refused by design) and consecutive requests hold slots on
//! different physician-day streams, as a clinic's many physicians would.
//!
//! - **Paced**: at `--rate` per second, `POST /consultations`, then wait until it is
//!   scheduled. Latency counts from when the request was due (it is sent then, unless the
//!   bench falls behind) until the API has answered `status: scheduled`.
//! - **Saturated**: `--burst` requests, `--concurrency` `POST`s in flight at once, each then
//!   waiting as above; the rate is consultations scheduled from the first request sent to the
//!   last one read `scheduled`.
//! - **Floor**: `hap-bench e2e`'s HAP run at the same rate, on the same database and prefix:
//!   `POST /patients`, then `GET` with `X-Min-Position`. In one process that trip is an append
//!   and one projector transaction (the local feed), with no broker in it. A consultation's
//!   request is such an append, but its saga then takes two hops, each a saga step's commands
//!   (taken from the same local feed): the patient's validation and the slot's hold side by
//!   side, then the confirmation once both are stored; the ratio of the medians says what those
//!   hops cost.
//!
//! **What "scheduled" is measured as.** The consultation's stream holds its request at version
//! 1, then the saga's outcome at version 2 (scheduled, or failed). The client waits until this
//! process's consultations projection has committed version 2, woken by that commit as a query
//! with `X-Min-Position` is (`Progress::wait_for`: no polling, so no polling interval in the
//! figures), then reads `GET /consultations/{id}` once, as a client would, and counts the
//! consultation only if it answers `scheduled`. The saga's deadline is set far beyond any wait
//! here ([`SCHEDULING_TIMEOUT`]), so a consultation that is not scheduled is an error, not a
//! timeout the figures hide.
//!
//! Where the time goes is read back from the store afterwards: the requests carry a
//! correlation id of the bench's (`paced-{n}`), which every saga step carries on, so each of a
//! saga's events is timed from its request's `occurredAt`. The validation and the hold run side
//! by side, so the two are timed from the same start; scheduled comes after the later of them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{SecondsFormat, Utc};
use futures::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use projections::ReadModel;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::broker::Servers;
use crate::cpu::{CpuWindow, MachineCpu, settle};
use crate::e2e;
use crate::load::{
    Drained, Outcome, Pace, PaceArgs, WARMUP, keep_alive_client, latency_histogram, paced,
};
use crate::profile::Profile;
use crate::report::{Facts, Table};
use crate::scratch::Scratch;
use crate::system::{self, Hap, POOL_SIZE};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The paced phase's and its floor's rate and length; the default rate is
    /// [`DEFAULT_RATE`], set where the subcommand is declared.
    #[command(flatten)]
    pace: PaceArgs,

    /// Paced requests in flight at most; past it the schedule slips (the achieved rate shows it).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    max_in_flight: u32,

    /// Consultations requested in the saturated phase.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1..))]
    burst: u64,

    /// `POST /consultations` in flight at once in the saturated phase.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,

    #[command(flatten)]
    pub servers: Servers,
}

/// `--rate`'s default here: a consultation's trip is longer than `e2e`'s pair, and the target
/// below is set at this rate.
pub const DEFAULT_RATE: &str = "100";

/// The targets: at 100 requests/s, request → scheduled within three times the floor's median;
/// saturated, at least 400 consultations scheduled per second. (They were 4× and 300/s while
/// scheduling took three hops one after another.)
const TARGET_RATIO: f64 = 3.0;
const TARGET_SATURATED: f64 = 400.0;

/// Consultations per physician; each physician gets this many slots.
const PER_PHYSICIAN: u64 = 100;
/// Patients the consultations take turns among: each validation appends to its patient's
/// stream, so one patient for all would make every validation conflict with the others.
const PATIENTS: u64 = 200;
const SLOT_MINUTES: i64 = 30;
/// The saga's deadline here: far beyond how long a burst takes to work off, so that no
/// consultation times out and every one counted is one the saga scheduled.
const SCHEDULING_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a client waits for its consultation's outcome before counting an error.
const SETTLED_WITHIN: Duration = Duration::from_secs(330);
/// The consultation's stream version that holds the saga's outcome (after the request).
const OUTCOME_VERSION: i64 = 2;
/// Registrations in flight at once while the clinic is set up.
const SETUP_CONCURRENCY: usize = 16;

/// Runs the benchmark on the scratch servers that [`scratch::run`] opened.
pub async fn run(args: &Args, scratch: Scratch<'_>) -> anyhow::Result<()> {
    let Scratch {
        database,
        broker,
        pool,
        facts,
    } = scratch;

    let mut settings = system::settings(database, broker);
    settings.scheduling_timeout_ms = SCHEDULING_TIMEOUT.as_millis() as u64;
    let hap = Hap::start(broker, database, &pool, settings, true).await?;
    let pace = args.pace.with_in_flight(args.max_in_flight);
    let client = keep_alive_client(pace.max_in_flight)?;
    let base: Arc<str> = hap.server.base_url().into();

    // Paced operations are numbered from 0 and due before the end of their window; the burst's
    // come after them, so that no two consultations ask for the same slot.
    let paced_count = pace.rate * (WARMUP.as_secs() + pace.seconds);
    let consultations = paced_count + args.burst;
    let physicians = consultations.div_ceil(PER_PHYSICIAN);
    eprintln!("registering {physicians} physicians and {PATIENTS} patients…");
    let clinic = Arc::new(Clinic::register(&client, &base, physicians).await?);
    let ctx = Client {
        http: client,
        base,
        read: hap.app.read.clone(),
        clinic,
    };

    settle().await;
    pace.announce("paced", "requests");
    let (scheduling, posts) = paced_run(pace, &ctx).await?;
    let hops = hops(&pool).await?;
    let inside = inside_hops(&ctx).await?;

    settle().await;
    eprintln!(
        "saturated: {} requests, {} at a time…",
        args.burst, args.concurrency
    );
    let burst = saturated(&ctx, paced_count, args.burst, args.concurrency).await?;
    // No keep-alive connection may hold the server as it stops.
    drop(ctx);
    hap.stop().await?;

    settle().await;
    pace.announce("floor (e2e's HAP run)", "pairs");
    let floor_pool = database.connect(POOL_SIZE).await?;
    let (floor, _) = e2e::hap_run(pace, database, broker, floor_pool).await?;
    pool.close().await;

    report(
        args,
        &facts,
        &Figures {
            physicians,
            scheduling,
            posts,
            hops,
            inside,
            burst,
            floor,
        },
    );
    Ok(())
}

/// The physicians and patients registered, and the request each consultation makes.
struct Clinic {
    physicians: Vec<Uuid>,
    patients: Vec<Uuid>,
    /// The first slot: midnight UTC after tomorrow's, so every slot is in the future
    /// throughout the run.
    first_slot: chrono::DateTime<Utc>,
}

impl Clinic {
    async fn register(
        client: &reqwest::Client,
        base: &str,
        physicians: u64,
    ) -> anyhow::Result<Self> {
        let physicians = register_all(client, base, "physicians", physicians, |n| {
            json!({
                "name": format!("Bench Physician {n}"),
                "specialty": "cardiology",
                "licenseNumber": format!("saga-{n}"),
            })
        })
        .await?;
        let patients = register_all(client, base, "patients", PATIENTS, |n| {
            json!({
                "name": format!("Bench Patient {n}"),
                "birthDate": "1980-05-17",
                "documentNumber": format!("saga-{n}"),
            })
        })
        .await?;
        let tomorrow = (Utc::now() + chrono::Duration::days(2)).date_naive();
        Ok(Self {
            physicians,
            patients,
            first_slot: tomorrow.and_time(chrono::NaiveTime::MIN).and_utc(),
        })
    }

    /// The body of consultation `n`'s request: physician `n` mod P, on slot `n` / P of that
    /// physician's, so consecutive requests go to different physicians.
    fn request(&self, n: u64) -> Value {
        let per_slot = self.physicians.len() as u64;
        let physician = self.physicians[(n % per_slot) as usize];
        let patient = self.patients[(n % self.patients.len() as u64) as usize];
        let slot = i64::try_from(n / per_slot).unwrap_or(i64::MAX);
        let starts_at = self.first_slot + chrono::Duration::minutes(SLOT_MINUTES * slot);
        json!({
            "patientId": patient,
            "physicianId": physician,
            "startsAt": starts_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            "durationMinutes": SLOT_MINUTES,
            "reason": "check-up",
        })
    }
}

/// Registers `count` resources through `POST /{route}`, with the bodies `body(n)` gives;
/// returns their ids in order.
async fn register_all(
    client: &reqwest::Client,
    base: &str,
    route: &str,
    count: u64,
    body: impl Fn(u64) -> Value,
) -> anyhow::Result<Vec<Uuid>> {
    let url = format!("{base}/{route}");
    let what = format!("POST /{route}");
    futures::stream::iter(0..count)
        .map(|n| {
            let request = client.post(&url).json(&body(n));
            let what = &what;
            async move {
                let answer = system::send(request, what, 201).await?;
                created_id(&answer, what)
            }
        })
        .buffered(SETUP_CONCURRENCY)
        .try_collect()
        .await
}

/// The `id` of a command's JSON answer.
fn created_id(answer: &[u8], what: &str) -> anyhow::Result<Uuid> {
    let created: Value =
        serde_json::from_slice(answer).with_context(|| format!("{what} answered no JSON"))?;
    created["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .with_context(|| format!("{what} answered no id: {created}"))
}

/// What every request needs: cheap to clone into each task.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: Arc<str>,
    /// HAP's read model, whose projector commits tell when a consultation's outcome is in.
    read: ReadModel,
    clinic: Arc<Clinic>,
}

impl Client {
    /// Requests consultation `n` under `correlation`; returns its id.
    async fn request(&self, n: u64, correlation: &str) -> anyhow::Result<Uuid> {
        let request = self
            .http
            .post(format!("{}/consultations", self.base))
            .header("X-Correlation-Id", correlation)
            .json(&self.clinic.request(n));
        let answer = system::send(request, "POST /consultations", 202).await?;
        created_id(&answer, "POST /consultations")
    }

    /// Waits until consultation `id`'s outcome is projected here, then reads it through the
    /// API; anything but `scheduled` is an error.
    async fn scheduled(&self, id: Uuid) -> anyhow::Result<()> {
        let settled = self
            .read
            .progress
            .wait_for(
                &self.read.pool,
                &["consultations"],
                (id, OUTCOME_VERSION),
                SETTLED_WITHIN,
                true,
            )
            .await
            .context("Failed to wait for the consultations projection")?;
        if !settled {
            bail!("consultation {id} still requested after {SETTLED_WITHIN:?}");
        }
        let request = self.http.get(format!("{}/consultations/{id}", self.base));
        let body = system::send(request, &format!("GET /consultations/{id}"), 200).await?;
        let consultation: Value = serde_json::from_slice(&body)
            .context("GET /consultations/{id} answered something not JSON")?;
        if consultation["status"] != "scheduled" {
            bail!("consultation {id} is not scheduled: {consultation}");
        }
        Ok(())
    }
}

/// Paced requests, each waited for until scheduled; also returns how long each measured
/// `POST` took (sent → 202), in µs.
async fn paced_run(pace: Pace, ctx: &Client) -> anyhow::Result<(Outcome, Histogram<u64>)> {
    let timeline = pace.timeline();
    let profile = Profile::over("paced", timeline);
    let posts = Arc::new(Mutex::new(latency_histogram()));
    let outcome = {
        let (ctx, posts) = (ctx.clone(), Arc::clone(&posts));
        paced(pace, timeline, move |n, measured| {
            let (ctx, posts) = (ctx.clone(), Arc::clone(&posts));
            async move {
                // Only the measured sagas are read back for their hops.
                let correlation = if measured {
                    format!("paced-{n}")
                } else {
                    format!("warm-up-{n}")
                };
                let sent = Instant::now();
                let id = ctx.request(n, &correlation).await?;
                if measured {
                    let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                    posts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .saturating_record(micros.max(1));
                }
                ctx.scheduled(id).await
            }
        })
        .await?
    };
    profile.finish().await?;
    let posts = std::mem::replace(
        &mut *posts.lock().unwrap_or_else(|e| e.into_inner()),
        latency_histogram(),
    );
    Ok((outcome, posts))
}

/// One event of the measured sagas, timed from the saga's request.
struct Hop {
    event: String,
    count: i64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// How long after its request each event of the measured sagas was appended, by event type, in
/// the order the sagas append them. (Timed from the previous event instead, the hold's gap
/// would end up measured from the validation whenever that came first: they run side by side.)
async fn hops(pool: &PgPool) -> anyhow::Result<Vec<Hop>> {
    let rows: Vec<(String, i64, f64, f64, f64)> = sqlx::query_as(
        "select event_type, count(*),
                percentile_cont(0.5) within group (order by gap_ms),
                percentile_cont(0.99) within group (order by gap_ms),
                max(gap_ms)
           from (select event_type, position,
                        extract(epoch from occurred_at - first_value(occurred_at)
                                over (partition by correlation_id order by position))::float8
                          * 1000 as gap_ms
                   from events
                  where correlation_id like 'paced-%') saga
          where event_type <> 'ConsultationSchedulingStarted'
          group by event_type
          order by min(position)",
    )
    .fetch_all(pool)
    .await
    .context("Failed to read the sagas' hops from the store")?;
    Ok(rows
        .into_iter()
        .map(|(event, count, p50_ms, p99_ms, max_ms)| Hop {
            event,
            count,
            p50_ms,
            p99_ms,
            max_ms,
        })
        .collect())
}

/// Something HAP's own metrics time, on average.
struct Timed {
    what: String,
    count: u64,
    mean_ms: f64,
}

/// What HAP's metrics time inside a hop, from its `/metrics` so far: each saga step's commands
/// (`hap_saga_step_seconds`, by step), and the broker's confirm of a published message
/// (`hap_publisher_confirm_seconds`). The rest of a hop is the publisher's wake-up and read,
/// the delivery and the consumer's turn. Prometheus histograms give no exact quantiles, so
/// means.
async fn inside_hops(ctx: &Client) -> anyhow::Result<Vec<Timed>> {
    let response = ctx
        .http
        .get(format!("{}/metrics", ctx.base))
        .send()
        .await
        .context("GET /metrics failed")?;
    let text = response
        .text()
        .await
        .context("Failed to read the response of GET /metrics")?;
    let sample = |line: &str, suffix: &str| -> Option<(String, f64)> {
        let (name, value) = line.rsplit_once(' ')?;
        let (metric, labels) = name.split_once('{').map_or((name, ""), |(m, l)| (m, l));
        let metric = metric.strip_suffix(suffix)?;
        let wanted = ["hap_saga_step_seconds", "hap_publisher_confirm_seconds"];
        if !wanted.contains(&metric) {
            return None;
        }
        let labels = labels.trim_end_matches('}');
        let what = if labels.is_empty() {
            metric.to_owned()
        } else {
            format!("{metric} {labels}")
        };
        Some((what, value.parse().ok()?))
    };
    let mut timed = vec![];
    for line in text.lines() {
        let Some((what, sum)) = sample(line, "_sum") else {
            continue;
        };
        let count = text
            .lines()
            .filter_map(|l| sample(l, "_count"))
            .find(|(w, _)| *w == what)
            .map_or(0.0, |(_, count)| count);
        if count > 0.0 {
            timed.push(Timed {
                what,
                count: count as u64,
                mean_ms: sum / count * 1000.0,
            });
        }
    }
    Ok(timed)
}

/// The saturated phase's result.
struct Burst {
    scheduled: Drained,
    /// Request → scheduled of every consultation, successful or not, in µs.
    latency_us: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    cpu: Option<MachineCpu>,
}

/// Requests consultations `first..first + count`, `concurrency` `POST`s at a time, each
/// waited for until scheduled in a task of its own.
async fn saturated(
    ctx: &Client,
    first: u64,
    count: u64,
    concurrency: u32,
) -> anyhow::Result<Burst> {
    let profile = Profile::start("saturated").await?;
    let cpu = CpuWindow::open();
    let started = Instant::now();
    let posting = Arc::new(Semaphore::new(concurrency as usize));
    let mut tasks = JoinSet::new();
    for n in first..first + count {
        let permit: OwnedSemaphorePermit = Arc::clone(&posting)
            .acquire_owned()
            .await
            .context("The POST limit was closed")?;
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let sent = Instant::now();
            let result = async {
                let id = ctx.request(n, &format!("burst-{n}")).await;
                // The next request may go once this one is answered; the wait takes no slot.
                drop(permit);
                ctx.scheduled(id?).await
            }
            .await;
            (sent, Instant::now(), result)
        });
    }
    let mut burst = Burst {
        scheduled: Drained {
            count: 0,
            elapsed: Duration::ZERO,
        },
        latency_us: latency_histogram(),
        errors: 0,
        first_error: None,
        cpu: None,
    };
    while let Some(joined) = tasks.join_next().await {
        let (sent, answered, result) = joined.context("A consultation's task panicked")?;
        let micros = u64::try_from((answered - sent).as_micros()).unwrap_or(u64::MAX);
        burst.latency_us.saturating_record(micros.max(1));
        match result {
            Ok(()) => {
                burst.scheduled.count += 1;
                burst.scheduled.elapsed = burst.scheduled.elapsed.max(answered - started);
            }
            Err(error) => {
                burst.errors += 1;
                burst.first_error.get_or_insert(format!("{error:#}"));
            }
        }
    }
    burst.cpu = cpu.close();
    profile.finish().await?;
    Ok(burst)
}

/// Everything one run measured.
struct Figures {
    physicians: u64,
    /// Paced request → scheduled.
    scheduling: Outcome,
    /// Paced `POST /consultations`, sent → 202, in µs.
    posts: Histogram<u64>,
    hops: Vec<Hop>,
    inside: Vec<Timed>,
    burst: Burst,
    /// e2e's HAP run at the same rate.
    floor: Outcome,
}

fn report(args: &Args, facts: &Facts, figures: &Figures) {
    let Figures {
        physicians,
        scheduling,
        posts,
        hops,
        inside,
        burst,
        floor,
    } = figures;
    let ms = |micros: u64| micros as f64 / 1000.0;
    println!("hap-bench saga · {facts}");
    println!(
        "{} requests/s · {} s measured after {} s warm-up · {physicians} physicians, {PATIENTS} \
         patients, each consultation on a 30-minute slot of its own · saga deadline {} s · \
         scheduled: the consultations projection here committed the saga's outcome (woken as \
         X-Min-Position is), then GET /consultations/{{id}} answered `scheduled` · floor: \
         e2e's HAP run, POST /patients then GET with X-Min-Position",
        args.pace.rate,
        args.pace.seconds,
        WARMUP.as_secs(),
        SCHEDULING_TIMEOUT.as_secs()
    );
    println!();
    let mut table = Table::paced();
    table.paced_row("HAP: request → scheduled", args.pace.rate, scheduling);
    table.paced_row("floor: e2e command → visible", args.pace.rate, floor);
    print!("{table}");
    println!();
    let ratio = scheduling.latency_ms(0.5) / floor.latency_ms(0.5);
    let met = if ratio <= TARGET_RATIO { "✔" } else { "✘" };
    println!(
        "request → scheduled p50 {:.2} ms, p99 {:.2} ms; floor p50 {:.2} ms; ratio (p50) {ratio:.2} \
         (target ≤ {TARGET_RATIO:.0}) {met}",
        scheduling.latency_ms(0.5),
        scheduling.latency_ms(0.99),
        floor.latency_ms(0.5)
    );

    let mut legs = Table::new(["paced leg", "count", "p50 ms", "p99 ms", "max ms"]);
    legs.row(vec![
        "POST /consultations (sent → 202)".to_owned(),
        posts.len().to_string(),
        format!("{:.2}", ms(posts.value_at_quantile(0.5))),
        format!("{:.2}", ms(posts.value_at_quantile(0.99))),
        format!("{:.2}", ms(posts.max())),
    ]);
    for hop in hops {
        legs.row(vec![
            format!("request → {} (occurredAt)", hop.event),
            hop.count.to_string(),
            format!("{:.2}", hop.p50_ms),
            format!("{:.2}", hop.p99_ms),
            format!("{:.2}", hop.max_ms),
        ]);
    }
    println!();
    print!("{legs}");

    let mut means = Table::new([
        "inside the hops (HAP's metrics, to the paced phase's end)",
        "count",
        "mean ms",
    ]);
    for timed in inside {
        means.row(vec![
            timed.what.clone(),
            timed.count.to_string(),
            format!("{:.2}", timed.mean_ms),
        ]);
    }
    println!();
    print!("{means}");

    let mut saturated = Table::drains("consultations");
    saturated.drain_row("HAP: scheduled, saturated", &burst.scheduled);
    println!();
    println!(
        "saturated: {} requests, {} POSTs in flight at once, from the first sent to the last \
         read scheduled",
        args.burst, args.concurrency
    );
    print!("{saturated}");
    let met = if burst.scheduled.rate() >= TARGET_SATURATED {
        "✔"
    } else {
        "✘"
    };
    println!(
        "saturated {:.0} consultations scheduled/s (target ≥ {TARGET_SATURATED:.0}) {met}; \
         request → scheduled p50 {:.0} ms, p99 {:.0} ms; {} errors; CPU busy / steal % {}, \
         PostgreSQL / RabbitMQ / hap-bench % {}",
        burst.scheduled.rate(),
        ms(burst.latency_us.value_at_quantile(0.5)),
        ms(burst.latency_us.value_at_quantile(0.99)),
        burst.errors,
        burst.cpu.map_or("?".to_owned(), |cpu| cpu.to_string()),
        burst.cpu.map_or("?".to_owned(), |cpu| cpu.by_process()),
    );
    for (name, error) in [
        ("paced", &scheduling.first_error),
        ("saturated", &burst.first_error),
        ("floor", &floor.first_error),
    ] {
        if let Some(error) = error {
            println!("first {name} error: {error}");
        }
    }
}
