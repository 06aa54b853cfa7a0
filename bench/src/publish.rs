//! `hap-bench publish`: how fast HAP's publisher moves committed events to RabbitMQ, against
//! the plainest publisher of the same messages, and how long an event takes from its commit to
//! a consumer at a steady rate.
//!
//! - **HAP run**: `--events` `PhysicianUpdated` events are stored first (appends of 100, the
//!   publisher not running), then HAP's `Publisher` runs in-process and drains them: the
//!   leader lock, gap-safe reads of pages of 1000, message building, publishing with confirms
//!   (a whole page outstanding, all confirmed before the next page is read) and checkpoint
//!   saves. Done when its checkpoint reaches the last event, which means the broker confirmed
//!   every message.
//! - **Raw run**: the same messages, built by HAP's own `Outgoing::new` before the clock starts,
//!   published by plain lapin on one confirm-mode channel with a sliding window of the same
//!   1000 outstanding confirms, to the same exchanges and into the same queue, emptied between
//!   the runs. Both clocks include connecting to the broker.
//! - **Latency**: with the publisher running, single-event appends at `--rate` per second;
//!   for each event, from when `append` returned to when a consumer of the bench queue (no
//!   acks) received its message: "commit → delivered", one broker hop more than the publisher's
//!   confirm.
//!
//! Every message goes to one quorum queue bound to the four exchanges with `#`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use domain::Event;
use domain::event::PhysicianUpdated;
use domain::ids::PhysicianId;
use eventstore::{EventStore, GlobalCheckpoint};
use futures::StreamExt;
use hap_support::broker::{confirmed, consume_without_acks};
use lapin::options::{BasicPublishOptions, QueueBindOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use messaging::{Outgoing, PublisherSettings};
use uuid::Uuid;

use crate::broker::{ScratchBroker, Servers, open_channel, open_confirm_channel};
use crate::cpu::settle;
use crate::load::{Drained, Pace, PaceArgs, WARMUP, latency_histogram, paced, wait_until};
use crate::profile::Profile;
use crate::report::{self, Table};
use crate::scratch::Scratch;
use crate::system;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events stored and then published by each run.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..))]
    events: u64,

    /// The latency part's rate and length.
    #[command(flatten)]
    pace: PaceArgs,

    #[command(flatten)]
    pub servers: Servers,
}

/// The target from the design: HAP's publisher keeps up with a plain confirmed publisher.
const TARGET_RATIO: f64 = 0.8;
/// Events per append when filling the store: big appends, so that filling is quick.
const EVENTS_PER_APPEND: u64 = 100;
/// Appends in flight when filling the store.
const FILL_CONCURRENCY: usize = 16;
/// How often the bench looks at the publisher's checkpoint; small next to a run of seconds.
const POLL: Duration = Duration::from_millis(5);
/// A drain that takes longer than this is reported as a failure rather than waited for.
const DRAIN_DEADLINE: Duration = Duration::from_secs(1800);
/// Appends in flight at most in the latency part (at 1000/s, a second's worth).
const MAX_IN_FLIGHT: u32 = 1000;
/// How long the latency part waits for the last messages after the last append.
const DELIVERY_GRACE: Duration = Duration::from_secs(30);

/// Runs the benchmark on the scratch servers that [`scratch::run`] opened.
pub async fn run(args: &Args, scratch: Scratch<'_>) -> anyhow::Result<()> {
    let (broker, pool) = (scratch.broker, scratch.pool);
    // Installed as `hap serve` installs it, so the publisher pays for its metrics as in
    // production.
    api::telemetry::metrics_handle();
    let store = system::store(&pool);
    let window = PublisherSettings::new(broker.url().clone(), broker.topology()).window;

    let setup = broker.connect("setup").await?;
    let channel = open_channel(&setup).await?;
    let queue = broker.bench_queue("all");
    declare_bench_queue(broker, &setup, &channel, &queue).await?;

    eprintln!("storing {} events…", args.events);
    let stored = fill(&store, args.events).await?;
    let last = system::last_checkpoint(&pool).await?;

    settle().await;
    eprintln!("HAP run: the publisher drains {stored} events…");
    let profile = Profile::start("hap-drain").await?;
    let started = Instant::now();
    let publisher = system::publisher(broker, &store);
    let elapsed = wait_until(started, POLL, DRAIN_DEADLINE, || {
        system::publisher_reached(&pool, broker.prefix(), last)
    })
    .await
    .context("HAP's publisher did not drain the store")?;
    profile.finish().await?;
    publisher.stop().await;
    let hap = Drained {
        count: stored,
        elapsed,
    };
    let hap_queued = empty_queue(&channel, &queue).await?;

    settle().await;
    eprintln!("raw run: lapin publishes the same {stored} messages…");
    // Timed on its own, for the reader: the part of the publisher's work that is not publishing.
    let reading = Instant::now();
    let messages = messages(&store, broker, window).await?;
    let read = Drained {
        count: messages.len() as u64,
        elapsed: reading.elapsed(),
    };
    let profile = Profile::start_baseline("raw-drain").await?;
    let raw = raw_run(broker, &messages, window as usize).await?;
    profile.finish().await?;
    drop(messages);
    let raw_queued = empty_queue(&channel, &queue).await?;

    let pace = args.pace.with_in_flight(MAX_IN_FLIGHT);
    pace.announce("latency", "appends");
    let latency = latency_run(pace, broker, &store, &queue).await?;

    setup.close(200, "done".into()).await.ok();

    let mut table = Table::drains("events");
    table.drain_row("HAP", &hap);
    table.drain_row("raw", &raw);
    println!("hap-bench publish · {}", scratch.facts);
    println!(
        "{stored} PhysicianUpdated events · one quorum queue bound to every exchange with # · \
         confirms, {window} outstanding · HAP's publisher vs plain lapin"
    );
    report::print_with_ratio(&table, hap.rate(), raw.rate(), TARGET_RATIO);
    println!(
        "messages in the queue after each run: HAP {hap_queued}, raw {raw_queued} (of {stored})"
    );
    println!(
        "reading the store and building the messages alone, as the publisher does (read_all in \
         pages of {window}, Outgoing::new): {:.2} s, {:.0} events/s",
        read.elapsed.as_secs_f64(),
        read.rate()
    );
    println!();
    println!(
        "commit → delivered: {} single-event appends/s, {} s measured after {} s warm-up; \
         delivered = a no-ack consumer of the queue received the message",
        args.pace.rate,
        args.pace.seconds,
        WARMUP.as_secs()
    );
    println!();
    print!("{}", latency.table);
    println!(
        "achieved: {:.0} appends/s, {} failed",
        latency.achieved, latency.errors
    );
    if latency.missing > 0 {
        println!(
            "{} of {} measured events never arrived within {} s",
            latency.missing,
            latency.measured,
            DELIVERY_GRACE.as_secs()
        );
    }
    if latency.early > 0 {
        println!(
            "{} messages arrived before their append returned (counted as 0 ms)",
            latency.early
        );
    }
    if let Some(error) = &latency.first_error {
        println!("first append error: {error}");
    }
    Ok(())
}

/// The bench's queue: a quorum queue bound to every HAP exchange with `#`, so that it receives
/// every message the publisher sends.
async fn declare_bench_queue(
    broker: &ScratchBroker,
    connection: &Connection,
    channel: &Channel,
    queue: &str,
) -> anyhow::Result<()> {
    let topology = broker.topology();
    topology
        .declare(connection)
        .await
        .context("Failed to declare HAP's exchanges")?;
    topology
        .declare_quorum_queue(connection, queue, FieldTable::default())
        .await
        .with_context(|| format!("Failed to declare {queue}"))?;
    for exchange in topology.exchanges() {
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("Failed to bind {queue}"))?;
    }
    Ok(())
}

/// Stores `count` PhysicianUpdated events, `EVENTS_PER_APPEND` per stream.
async fn fill(store: &EventStore, count: u64) -> anyhow::Result<u64> {
    let appends = (0..count.div_ceil(EVENTS_PER_APPEND)).map(move |stream| {
        let events = EVENTS_PER_APPEND.min(count - stream * EVENTS_PER_APPEND);
        let physician_id = PhysicianId::new();
        let renames: Vec<Event> = (1..=events).map(|v| rename(physician_id, v)).collect();
        system::new_stream(physician_id.as_uuid(), &renames)
    });
    system::append_all(store, appends, FILL_CONCURRENCY).await
}

/// A physician's `n`-th rename.
fn rename(physician_id: PhysicianId, n: u64) -> Event {
    Event::PhysicianUpdated(PhysicianUpdated {
        physician_id,
        name: Some(format!("Dr. Bench {n}")),
        specialty: None,
    })
}

/// How many messages `queue` holds; it is emptied.
async fn empty_queue(channel: &Channel, queue: &str) -> anyhow::Result<u32> {
    channel
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await
        .with_context(|| format!("Failed to purge {queue}"))
}

/// Every stored event as HAP's publisher sends it: read in its order and pages of `page_size`,
/// routed and built as the publisher does (`messaging::routes::route`, `Outgoing::new`).
async fn messages(
    store: &EventStore,
    broker: &ScratchBroker,
    page_size: i64,
) -> anyhow::Result<Vec<Outgoing>> {
    let topology = broker.topology();
    let mut messages = Vec::new();
    let mut checkpoint = GlobalCheckpoint::START;
    loop {
        let page = store
            .read_all(checkpoint, page_size)
            .await
            .context("Failed to read the stored events")?;
        let Some(last) = page.last() else {
            return Ok(messages);
        };
        checkpoint = last.checkpoint();
        for event in &page {
            let route = messaging::routes::route(event)
                .with_context(|| format!("{} has no route", event.event_type))?;
            messages.push(Outgoing::new(
                event,
                &route,
                topology.exchange(route.exchange),
            ));
        }
    }
}

/// Publishes `messages` in order on one confirm-mode channel with up to `window` confirms
/// outstanding, as mandatory messages, like HAP's; timed from connecting to the last confirm.
async fn raw_run(
    broker: &ScratchBroker,
    messages: &[Outgoing],
    window: usize,
) -> anyhow::Result<Drained> {
    let started = Instant::now();
    let connection = broker.connect("raw publisher").await?;
    let channel = open_confirm_channel(&connection).await?;
    let mut outstanding = VecDeque::with_capacity(window);
    for message in messages {
        if outstanding.len() == window
            && let Some(confirm) = outstanding.pop_front()
        {
            confirmed(confirm).await?;
        }
        let confirm = channel
            .basic_publish(
                message.exchange.as_str().into(),
                message.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &message.body,
                message.properties.clone(),
            )
            .await
            .context("basic.publish failed")?;
        outstanding.push_back(confirm);
    }
    for confirm in outstanding {
        confirmed(confirm).await?;
    }
    let elapsed = started.elapsed();
    connection.close(200, "done".into()).await.ok();
    Ok(Drained {
        count: messages.len() as u64,
        elapsed,
    })
}

/// What the latency part measured.
struct Latency {
    table: Table,
    /// Appends per second achieved in the measured window.
    achieved: f64,
    errors: u64,
    measured: u64,
    missing: u64,
    early: u64,
    first_error: Option<String>,
}

/// Appends one event at a time at `pace`, with the publisher running and a consumer on
/// `queue`, and pairs each append's return with its message's arrival.
async fn latency_run(
    pace: Pace,
    broker: &ScratchBroker,
    store: &EventStore,
    queue: &str,
) -> anyhow::Result<Latency> {
    let arrivals: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
    let consumer = broker.connect("latency consumer").await?;
    let channel = open_channel(&consumer).await?;
    let mut deliveries = consume_without_acks(&channel, queue, "hap-bench").await?;
    let sink = Arc::clone(&arrivals);
    let receiving = tokio::spawn(async move {
        while let Some(Ok(delivery)) = deliveries.next().await {
            let arrived = Instant::now();
            // HAP's message id is the event id.
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .and_then(|id| Uuid::parse_str(id.as_str()).ok());
            if let Some(id) = id {
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, arrived);
            }
        }
    });

    let publisher = system::publisher(broker, store);
    let commits: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
    let timeline = pace.timeline();
    let profile = Profile::over("hap-latency", timeline);
    let appends = {
        let commits = Arc::clone(&commits);
        let store = store.clone();
        paced(pace, timeline, move |_, measured| {
            let (store, commits) = (store.clone(), Arc::clone(&commits));
            async move {
                let physician_id = PhysicianId::new();
                let append = system::new_stream(physician_id.as_uuid(), &[rename(physician_id, 1)]);
                let event_id = append.events[0].event_id;
                store.append(append).await.context("append failed")?;
                let committed = Instant::now();
                if measured {
                    commits
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(event_id, committed);
                }
                Ok(())
            }
        })
        .await?
    };
    profile.finish().await?;

    let commits = std::mem::take(&mut *commits.lock().unwrap_or_else(|e| e.into_inner()));
    let measured = commits.len() as u64;
    let all_arrived = || {
        let arrivals = arrivals.lock().unwrap_or_else(|e| e.into_inner());
        commits.keys().all(|id| arrivals.contains_key(id))
    };
    let waited = Instant::now();
    while !all_arrived() && waited.elapsed() < DELIVERY_GRACE {
        tokio::time::sleep(POLL).await;
    }
    publisher.stop().await;
    consumer.close(200, "done".into()).await.ok();
    receiving.abort();

    let arrivals = arrivals.lock().unwrap_or_else(|e| e.into_inner());
    let mut delivered = latency_histogram();
    let (mut missing, mut early) = (0, 0);
    for (id, committed) in &commits {
        match arrivals.get(id) {
            Some(arrived) => {
                if arrived < committed {
                    early += 1;
                }
                let micros = arrived.saturating_duration_since(*committed).as_micros();
                delivered.saturating_record(u64::try_from(micros).unwrap_or(u64::MAX).max(1));
            }
            None => missing += 1,
        }
    }
    let ms = |micros: u64| format!("{:.2}", micros as f64 / 1000.0);
    let mut table = Table::new(["measure", "count", "p50 ms", "p99 ms", "max ms"]);
    table.row(vec![
        "append (due → returned)".into(),
        appends.ok.to_string(),
        format!("{:.2}", appends.latency_ms(0.5)),
        format!("{:.2}", appends.latency_ms(0.99)),
        format!("{:.2}", appends.latency_ms(1.0)),
    ]);
    table.row(vec![
        "commit → delivered".into(),
        delivered.len().to_string(),
        ms(delivered.value_at_quantile(0.5)),
        ms(delivered.value_at_quantile(0.99)),
        ms(delivered.max()),
    ]);
    Ok(Latency {
        table,
        achieved: appends.rate(),
        errors: appends.errors,
        measured,
        missing,
        early,
        first_error: appends.first_error,
    })
}
