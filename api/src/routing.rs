//! Where each stored event goes on the broker: the domain's routing table, given to the
//! event store's publisher, which knows nothing clinical itself.

use domain::event::route;
use eventstore::{MessageRoute, RecordedEvent, Router};

pub struct DomainRouter;

impl Router for DomainRouter {
    fn route(&self, event: &RecordedEvent) -> Option<MessageRoute> {
        let route = route(&event.event_type)?;
        let saga_id = route
            .saga
            .then(|| event.payload["consultationId"].as_str().map(str::to_owned))
            .flatten();
        Some(MessageRoute {
            exchange: route.exchange.suffix(),
            routing_key: route.routing_key,
            source_service: route.exchange.source_service(),
            saga_id,
        })
    }
}
