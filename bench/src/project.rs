//! `hap-bench project`: how fast HAP's projectors apply a backlog of messages, against plain
//! consuming of the same messages with acks.
//!
//! `--events` events (a `PatientRegistered` and a `PatientUpdated` for each of half as many
//! patients) are stored, then published by HAP's publisher into the queues of a fresh instance
//! while its projectors are not running. Two queues take patient events: the patient-service
//! queue (patients projection) and the scheduling-service queue (the consultations projection
//! keeps names from them), so the backlog is `--events` messages in each. Two plain queues with
//! the same arguments and bindings (the same queues of another instance) get copies.
//!
//! - **HAP run**: every projector of the instance starts (`consumer::run_all`, as `hap serve`
//!   runs it) and works both queues off concurrently: decoding, deduplication, stream-order
//!   checks, the projection's writes and its bookkeeping in one transaction per batch, acks
//!   after commit. A queue is done when its projection has recorded the last message's
//!   position; the counts are checked afterwards.
//! - **Raw run**: one plain lapin consumer per copy, each on a connection of its own as HAP's
//!   are, with HAP's prefetch, taking deliveries in HAP's batches and acking each batch with
//!   one multiple ack, with no decoding and no database.
//!
//! Both clocks start before connecting to the broker. The ratio compares both queues together;
//! the patient-service queue's own time is shown too (its projector shares the machine with the
//! other one throughout).

use std::cell::Cell;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use domain::Event;
use domain::event::PatientUpdated;
use domain::ids::PatientId;
use domain::service::Service;
use eventstore::EventStore;
use futures::{FutureExt, StreamExt};
use lapin::Channel;
use lapin::options::BasicAckOptions;
use messaging::QueueNames;
use messaging::queues::declare_bound;
use projections::queues::{QUEUES, QueueSpec};
use sqlx::PgPool;
use uuid::Uuid;

use crate::broker::{ScratchBroker, Servers, consume_with_acks, open_channel};
use crate::cpu::{CpuWindow, machine_cpu, settle};
use crate::load::{Drained, wait_until};
use crate::patient::BenchPatient;
use crate::profile::Profile;
use crate::report::Table;
use crate::scratch::Scratch;
use crate::system::{self, INSTANCE};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Messages in each projected queue: a registration and an update per patient.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(2..))]
    events: u64,

    #[command(flatten)]
    pub servers: Servers,
}

/// The target from the design: HAP's projectors keep up with plain consuming.
const TARGET_RATIO: f64 = 0.7;
/// The instance whose queues get the plain copies.
const RAW_INSTANCE: &str = "raw";
/// The queues that receive patient events, by service, and the projection each feeds.
const PATIENT_QUEUES: [(Service, &str); 2] = [
    (Service::Patients, projections::PATIENTS),
    (Service::Scheduling, projections::CONSULTATIONS),
];
/// Appends in flight when filling the store.
const FILL_CONCURRENCY: usize = 16;
/// How often the bench looks at the read model or the queues.
const POLL: Duration = Duration::from_millis(5);
/// A drain that takes longer than this is reported as a failure rather than waited for.
const DRAIN_DEADLINE: Duration = Duration::from_secs(1800);

/// Runs the benchmark on the scratch servers that [`scratch::run`] opened.
pub async fn run(args: &Args, scratch: Scratch<'_>) -> anyhow::Result<()> {
    let (database, broker, pool) = (scratch.database, scratch.broker, scratch.pool);
    api::telemetry::metrics_handle();
    let store = system::store(&pool);
    let read = system::read_model(database).await?;
    let settings = system::consumer_settings(broker);

    // Every queue exists before anything is published, so that no message goes unrouted.
    broker.instance_queues(INSTANCE);
    broker.instance_queues(RAW_INSTANCE);
    let setup = broker.connect("setup").await?;
    let channel = open_channel(&setup).await?;
    let topology = broker.topology();
    for spec in &QUEUES {
        let names = QueueNames::new(broker.prefix(), spec.service.name(), INSTANCE);
        declare_bound(&setup, &topology, &spec.bindings(), &names)
            .await
            .with_context(|| format!("Failed to declare {}", names.main))?;
    }
    let raw_queues: Vec<String> = PATIENT_QUEUES
        .iter()
        .map(|(service, _)| QueueNames::new(broker.prefix(), service.name(), RAW_INSTANCE).main)
        .collect();
    for (service, _) in PATIENT_QUEUES {
        let names = QueueNames::new(broker.prefix(), service.name(), RAW_INSTANCE);
        declare_bound(&setup, &topology, &spec_of(service)?.bindings(), &names)
            .await
            .with_context(|| format!("Failed to declare {}", names.main))?;
    }

    let patients = args.events / 2;
    eprintln!("storing {} events of {patients} patients…", patients * 2);
    let stored = fill(&store, patients).await?;
    let last = system::last_checkpoint(&pool).await?;
    let last_event: (Uuid, i64) =
        sqlx::query_as("select stream_id, version from events where position = $1")
            .bind(last.position)
            .fetch_one(&pool)
            .await
            .context("Failed to read the last stored event")?;

    eprintln!("publishing them into the queues (not timed)…");
    let publisher = system::publisher(broker, &store);
    let published = Instant::now();
    wait_until(published, POLL, DRAIN_DEADLINE, || {
        system::publisher_reached(&pool, broker.prefix(), last)
    })
    .await
    .context("HAP's publisher did not publish the events")?;
    publisher.stop().await;
    let hap_queues: Vec<String> = PATIENT_QUEUES
        .iter()
        .map(|(service, _)| QueueNames::new(broker.prefix(), service.name(), INSTANCE).main)
        .collect();
    for queue in hap_queues.iter().chain(&raw_queues) {
        let depth = depth(&channel, queue).await?;
        if u64::from(depth) != stored {
            bail!("{queue} holds {depth} messages, not the {stored} published");
        }
    }
    eprintln!(
        "published {stored} messages into each of 4 queues in {:.1} s",
        published.elapsed().as_secs_f64()
    );

    settle().await;
    eprintln!("HAP run: the projectors work off both queues…");
    let profile = Profile::start("hap").await?;
    let hap_cpu = CpuWindow::open();
    let started = Instant::now();
    let projectors = system::projectors(broker, &read, &store);
    // When each queue's projection applied its last message.
    let done: [Cell<Option<Duration>>; 2] = Default::default();
    let finished = wait_until(started, POLL, DRAIN_DEADLINE, || {
        let (done, read) = (&done, &read.pool);
        async move {
            for (slot, (_, projection)) in done.iter().zip(PATIENT_QUEUES) {
                if slot.get().is_none() && applied(read, projection, last_event).await? {
                    slot.set(Some(started.elapsed()));
                }
            }
            Ok(done.iter().all(|slot| slot.get().is_some()))
        }
    })
    .await
    .context("HAP's projectors did not work off their queues")?;
    let hap_cpu = hap_cpu.close();
    profile.finish().await?;
    projectors.stop().await;
    for (_, projection) in PATIENT_QUEUES {
        let count = processed(&read.pool, projection).await?;
        if count != stored {
            bail!(
                "the {projection} projection applied {count} events, not {stored}: some failed \
                 (see the log)"
            );
        }
    }
    let patient_rows: i64 = sqlx::query_scalar("select count(*) from patients")
        .fetch_one(&read.pool)
        .await
        .context("Failed to count the projected patients")?;
    let hap_patients = Drained {
        count: stored,
        elapsed: done[0].get().unwrap_or(finished),
    };
    let hap_both = Drained {
        count: stored * 2,
        elapsed: finished,
    };

    settle().await;
    eprintln!("raw run: plain consumers work off the copies…");
    let profile = Profile::start_baseline("raw").await?;
    let raw_cpu = CpuWindow::open();
    let started = Instant::now();
    let consumers = raw_queues.iter().map(|queue| {
        drain(
            broker,
            queue,
            stored,
            settings.prefetch,
            settings.batch,
            started,
        )
    });
    let times = futures::future::try_join_all(consumers).await?;
    let raw_cpu = raw_cpu.close();
    profile.finish().await?;
    let raw_patients = Drained {
        count: stored,
        elapsed: times[0],
    };
    let raw_both = Drained {
        count: stored * 2,
        elapsed: times.iter().copied().max().unwrap_or_default(),
    };
    setup.close(200, "done".into()).await.ok();

    let mut table = Table::drains("messages");
    table.drain_row("HAP, patient-service queue", &hap_patients);
    table.drain_row("HAP, both queues", &hap_both);
    table.drain_row("raw, patient-service copy", &raw_patients);
    table.drain_row("raw, both copies", &raw_both);
    println!("hap-bench project · {}", scratch.facts);
    println!(
        "{patients} patients × (PatientRegistered + PatientUpdated) = {stored} messages in each \
         of the patient-service and scheduling-service queues · prefetch {}, batches of {} · \
         HAP's projectors vs plain consume + multiple ack",
        settings.prefetch, settings.batch
    );
    println!();
    print!("{table}");
    println!();
    println!(
        "ratio (HAP / raw), both queues: {:.2}   (target ≥ {TARGET_RATIO:.1})",
        hap_both.rate() / raw_both.rate()
    );
    println!(
        "ratio (HAP / raw), patient-service queue: {:.2}",
        hap_patients.rate() / raw_patients.rate()
    );
    println!("{}", machine_cpu(hap_cpu, raw_cpu));
    println!(
        "read model afterwards: {patient_rows} patients; {stored} events in processed_events \
         for each of patients and consultations"
    );
    Ok(())
}

fn spec_of(service: Service) -> anyhow::Result<&'static QueueSpec> {
    QUEUES
        .iter()
        .find(|spec| spec.service == service)
        .with_context(|| format!("HAP has no {} queue", service.name()))
}

/// Stores a registration and an update (a new phone number) for each of `patients` patients,
/// one append per patient, with the document-number claim HAP takes.
async fn fill(store: &EventStore, patients: u64) -> anyhow::Result<u64> {
    let appends = (0..patients).map(|n| {
        let patient_id = PatientId::new();
        let events = [
            BenchPatient::new("bench", n).event(patient_id),
            Event::PatientUpdated(PatientUpdated {
                patient_id,
                name: None,
                email: None,
                phone: Some("+55 11 5555-0199".into()),
            }),
        ];
        system::new_stream(patient_id.as_uuid(), &events)
    });
    system::append_all(store, appends, FILL_CONCURRENCY).await
}

/// Messages ready in `queue`.
async fn depth(channel: &Channel, queue: &str) -> anyhow::Result<u32> {
    let declared = messaging::topology::look_up(channel, queue)
        .await
        .with_context(|| format!("Failed to read the depth of {queue}"))?;
    Ok(declared.message_count())
}

/// Whether `projection` has applied `event`, a stream and version (an index lookup, cheap
/// enough to poll).
async fn applied(read: &PgPool, projection: &str, event: (Uuid, i64)) -> anyhow::Result<bool> {
    sqlx::query_scalar(
        "select exists (select 1 from stream_versions
                         where projection = $1 and stream_id = $2 and version >= $3)",
    )
    .bind(projection)
    .bind(event.0)
    .bind(event.1)
    .fetch_one(read)
    .await
    .context("Failed to read the projection's progress")
}

/// How many events `projection` has applied.
async fn processed(read: &PgPool, projection: &str) -> anyhow::Result<u64> {
    let count: i64 =
        sqlx::query_scalar("select count(*) from processed_events where projection = $1")
            .bind(projection)
            .fetch_one(read)
            .await
            .context("Failed to count the projection's events")?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// Consumes `count` messages from `queue` with `prefetch` and acks them as HAP's consumer
/// does: the first delivery, then whatever has already arrived up to `batch`, then one
/// multiple ack for them all. Returns when the last ack was sent, measured from `started`.
async fn drain(
    broker: &ScratchBroker,
    queue: &str,
    count: u64,
    prefetch: u16,
    batch: usize,
    started: Instant,
) -> anyhow::Result<Duration> {
    let connection = broker.connect(&format!("raw consumer {queue}")).await?;
    let channel = open_channel(&connection).await?;
    let mut deliveries = consume_with_acks(&channel, queue, prefetch).await?;
    let consume = async {
        let mut taken = 0;
        while taken < count {
            let first = deliveries
                .next()
                .await
                .with_context(|| format!("The broker ended the consumer of {queue}"))?
                .context("A delivery failed")?;
            let mut last = first.delivery_tag;
            let mut in_batch = 1;
            taken += 1;
            while in_batch < batch && taken < count {
                match deliveries.next().now_or_never() {
                    Some(Some(delivery)) => {
                        last = delivery.context("A delivery failed")?.delivery_tag;
                        in_batch += 1;
                        taken += 1;
                    }
                    _ => break,
                }
            }
            channel
                .basic_ack(last, BasicAckOptions { multiple: true })
                .await
                .context("basic.ack failed")?;
        }
        anyhow::Ok(started.elapsed())
    };
    let elapsed = tokio::time::timeout(DRAIN_DEADLINE, consume)
        .await
        .with_context(|| format!("{queue} was not worked off within {DRAIN_DEADLINE:?}"))??;
    connection.close(200, "done".into()).await.ok();
    Ok(elapsed)
}
