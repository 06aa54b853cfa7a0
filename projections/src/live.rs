//! The live projectors of an instance: each is a [`Handler`] of the consumer runtime over its
//! own queue, applying batches with [`apply_batch`] and reporting what they committed to the
//! queries of the same process.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use eventstore::EventStore;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::progress::Commit;
use crate::projector::{Applied, ApplyError, Projector, apply_batch};
use crate::queues::QUEUES;
use crate::schema::Plans;
use crate::{ReadModel, projections_of_event};
use messaging::Envelope;
use messaging::consumer::{self, ConsumerSettings, HandleError, Handler, Message};

/// Runs the consumers of every projection of the instance until `shutdown`. They are
/// registered with the settings' readiness at once, before the returned future first runs.
pub fn run_all(
    read: ReadModel,
    store: EventStore,
    settings: ConsumerSettings,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    read.progress.start_projecting();
    // The projectors' own connections, one per queue, with the read model's settings and
    // statements planned once, for key access only (see `Plans`). In the pool the queries
    // share, a batch queued for a connection behind the very queries that wait for it to
    // commit (under load, hundreds of them), which stretched read-your-writes waits into
    // seconds.
    let projecting = ReadModel {
        pool: eventstore::pool::options()
            .max_connections(QUEUES.len() as u32)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(Plans::ByKey.apply((*read.pool.connect_options()).clone())),
        ..read.clone()
    };
    let consumers: Vec<_> = QUEUES
        .iter()
        .map(|spec| {
            let handler = LiveProjector {
                projector: (spec.projector)(),
                read: projecting.clone(),
                store: store.clone(),
                instance: settings.instance.clone(),
            };
            consumer::consume(
                Arc::new(handler),
                settings.queue_names(spec.service),
                spec.bindings(),
                settings.clone(),
                shutdown.clone(),
            )
        })
        .collect();
    async move {
        futures::future::join_all(consumers).await;
        projecting.pool.close().await;
    }
}

/// One projector, live.
struct LiveProjector {
    projector: Box<dyn Projector>,
    read: ReadModel,
    store: EventStore,
    instance: String,
}

impl Handler for LiveProjector {
    fn name(&self) -> &'static str {
        self.projector.name()
    }

    fn handle<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Result<(), HandleError>> {
        Box::pin(async move {
            let envelopes: Vec<Envelope> = batch.iter().map(|m| m.envelope.clone()).collect();
            let applied = apply_batch(
                &self.read.pool,
                &self.store,
                self.projector.as_ref(),
                &envelopes,
            )
            .await
            .map_err(|error| match error {
                ApplyError::Poison(_) => HandleError::Poison(error.to_string()),
                ApplyError::Database(_) | ApplyError::Raced => {
                    HandleError::Transient(error.to_string())
                }
            })?;
            self.committed(applied);
            self.report_lag(&envelopes);
            Ok(())
        })
    }

    fn local_feed(&self) -> Option<mpsc::Receiver<Message>> {
        let name = self.projector.name();
        let takes = move |event: &domain::Event| {
            projections_of_event(event.event_type()).is_some_and(|p| p.contains(&name))
        };
        Some(self.read.local.subscribe(name, takes))
    }

    fn caught_up(&self) {
        self.lag().set(0.0);
    }
}

impl LiveProjector {
    fn committed(&self, applied: Applied) {
        metrics::counter!(
            "hap_projector_events_total",
            "projection" => self.projector.name(),
            "instance" => self.instance.clone()
        )
        .increment(applied.events as u64);
        self.read.progress.committed(Commit {
            projection: self.projector.name(),
            streams: applied.streams,
            touched: applied.touched,
        });
    }

    fn report_lag(&self, applied: &[Envelope]) {
        if let Some(newest) = applied.iter().map(|e| e.occurred_at).max() {
            let lag = (chrono::Utc::now() - newest).num_milliseconds().max(0) as f64 / 1000.0;
            self.lag().set(lag);
        }
    }

    fn lag(&self) -> metrics::Gauge {
        metrics::gauge!(
            "hap_projector_lag_seconds",
            "projection" => self.projector.name(),
            "instance" => self.instance.clone()
        )
    }
}
