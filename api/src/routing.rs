//! Where each stored event goes on the broker: the domain's routing table, given to the
//! event store's publisher, which knows nothing clinical itself.

use domain::event::route;
use std::sync::Arc;

use eventstore::broker::AmqpUrls;
use eventstore::publisher::DeclareAlso;
use eventstore::topology::Topology;
use eventstore::{MessageRoute, PublisherSettings, RecordedEvent, Router};

pub struct DomainRouter;

/// The one payload field a saga's messages are keyed by.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SagaKey {
    consultation_id: Option<String>,
}

impl Router for DomainRouter {
    fn route(&self, event: &RecordedEvent) -> Option<MessageRoute> {
        let route = route(&event.event_type)?;
        let saga_id = route
            .saga
            .then(|| {
                serde_json::from_str::<SagaKey>(event.payload.get())
                    .ok()
                    .and_then(|key| key.consultation_id)
            })
            .flatten();
        Some(MessageRoute {
            exchange: route.exchange.suffix(),
            routing_key: route.routing_key,
            source_service: route.exchange.source_service(),
            saga_id,
        })
    }
}

/// The publisher's settings as HAP runs it: the domain's exchanges of `topology`, and the saga
/// queues declared with them. The saga queues are the cluster's, not an instance's: they must
/// exist before the first trigger is published, whether or not a saga process has started.
pub fn publisher_settings(amqp_url: &AmqpUrls, topology: Topology) -> PublisherSettings {
    let saga_topology = topology.clone();
    let declare_also: DeclareAlso = Arc::new(move |connection| {
        let topology = saga_topology.clone();
        Box::pin(async move { sagas::declare_queues(connection, &topology).await })
    });
    PublisherSettings {
        declare_also: Some(declare_also),
        ..PublisherSettings::new(amqp_url.clone(), topology)
    }
}
