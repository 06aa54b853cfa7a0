//! The saga services as handlers of the shared consumer runtime: each consumes its queue
//! `{prefix}.{service}.saga`, shared by every process that runs the `saga` role, so each step
//! runs once in the cluster for each copy the broker delivers.
//!
//! Each also takes the events its own process appends from the local feed, and runs their
//! steps at once: a scheduling's request, its validation and hold, and its confirmation follow
//! one another without waiting for the broker between them. The broker's copy stays the
//! guarantee (a step the feed dropped or failed runs from it); when it comes back to this
//! process after the fed step committed it is acknowledged without a second run, and in
//! another process the step runs again, looks up its commands' idempotency keys (the
//! trigger's) first and changes nothing.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use commands::Pipeline;
use domain::Event;
use domain::service::Service;
use futures::future::{BoxFuture, join_all};
use messaging::consumer::{self, ConsumerSettings, HandleError, Handler, Message};
use messaging::queues::saga_bindings;
use messaging::{LocalFeed, QueueNames};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::forget::DeadLetters;
use crate::send::{StepError, Trigger};
use crate::steps::Steps;

/// Saga messages taken in one batch at most; their steps run side by side.
const BATCH: usize = 64;

/// Runs every saga service's consumer until `shutdown`. They are registered with the settings'
/// readiness at once, before the returned future first runs.
pub fn run_all(
    pipeline: Pipeline,
    feed: LocalFeed,
    settings: ConsumerSettings,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let settings = ConsumerSettings {
        batch: BATCH,
        prefetch: (BATCH * 4) as u16,
        ..settings
    };
    let consumers: Vec<_> = Service::ALL
        .into_iter()
        .map(|service| {
            let handler = SagaHandler {
                service,
                feed: feed.clone(),
                steps: Steps {
                    pipeline: pipeline.clone(),
                    dead_letters: Some(DeadLetters {
                        amqp_url: settings.amqp_url.clone(),
                        prefix: settings.topology.prefix().to_owned(),
                        store: pipeline.store().clone(),
                    }),
                },
            };
            consumer::consume(
                Arc::new(handler),
                QueueNames::shared(settings.topology.prefix(), service.name()),
                saga_bindings(service),
                settings.clone(),
                shutdown.clone(),
            )
        })
        .collect();
    async move {
        join_all(consumers).await;
    }
}

struct SagaHandler {
    service: Service,
    /// This process's appends, of which the service takes those its queue is bound to.
    feed: LocalFeed,
    steps: Steps,
}

impl Handler for SagaHandler {
    fn name(&self) -> &'static str {
        self.service.name()
    }

    fn handle<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Result<(), HandleError>> {
        Box::pin(async move {
            // Steps of different sagas are independent; one saga's side by side steps (the
            // validation and the hold, or the confirmation of each answer) write different
            // streams, or meet on the consultation's, where the version check orders them.
            let outcomes = join_all(batch.iter().map(|m| self.step(m))).await;
            outcomes.into_iter().collect()
        })
    }

    fn local_feed(&self) -> Option<mpsc::Receiver<Message>> {
        let service = self.service;
        let takes = move |event: &Event| service.triggers().contains(&event.event_type());
        Some(self.feed.subscribe(service.name(), takes))
    }
}

impl SagaHandler {
    async fn step(&self, message: &Message) -> Result<(), HandleError> {
        // A split event's parts share its id, which keys the step: the first part a service
        // reacts to is the one that triggers it.
        let reaction = message
            .envelope
            .events
            .iter()
            .find_map(|e| self.service.react(e));
        let Some(step) = reaction else {
            return Ok(());
        };
        let origin = &message.origin;
        if origin.tenant_id.is_empty() {
            return Err(HandleError::Poison(
                "a saga step needs the message's tenantId".into(),
            ));
        }
        let trigger = Trigger {
            event_id: message.envelope.event_id,
            tenant_id: origin.tenant_id.clone(),
            correlation_id: origin.correlation_id.clone(),
            actor_id: origin.actor_id.clone(),
            delivered: !message.fed,
        };
        let started = Instant::now();
        let result = self.steps.run(&step, &trigger).await;
        let outcome = match &result {
            Ok(()) => "done",
            // Its broker copy runs it again, and counts what becomes of it.
            Err(_) if message.fed => "let_go",
            Err(StepError::Transient(_) | StepError::Broker(_)) => "retried",
            Err(StepError::Permanent(_)) => "dead_lettered",
        };
        metrics::histogram!("hap_saga_step_seconds", "service" => self.service.name(), "step" => step.name())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("hap_saga_steps_total", "service" => self.service.name(), "step" => step.name(), "outcome" => outcome)
            .increment(1);
        result.map_err(|error| match error {
            StepError::Transient(e) => HandleError::Transient(e.to_string()),
            StepError::Broker(e) => HandleError::Transient(e.to_string()),
            StepError::Permanent(e) => HandleError::Poison(e.to_string()),
        })
    }
}
