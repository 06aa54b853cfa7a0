//! Where each stored event goes on the broker: the domain's routing table, given to the
//! event store's publisher, which knows nothing clinical itself.

use domain::event::route;
use eventstore::{MessageRoute, RecordedEvent, Router};

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
