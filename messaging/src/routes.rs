//! Where each stored event goes on the broker, from the domain's tables: the exchange and
//! routing key of its type, the service that publishes it, and the saga it takes part in.

use domain::service::Service;
use eventstore::RecordedEvent;

/// Where an event goes and what it says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRoute {
    /// The exchange without its prefix (`patients`).
    pub exchange: &'static str,
    pub routing_key: &'static str,
    /// `sourceService` in the body.
    pub source_service: &'static str,
    /// The saga the event takes part in (`x-saga-id`), if any.
    pub saga_id: Option<String>,
}

/// The route of an event type HAP does not know: such an event goes to the unrouted queue
/// rather than being dropped.
pub const UNKNOWN: MessageRoute = MessageRoute {
    exchange: "unrouted",
    routing_key: "unknown",
    source_service: "unknown",
    saga_id: None,
};

/// The one payload field a saga's messages are keyed by.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SagaKey {
    consultation_id: Option<String>,
}

/// The route of `event`; `None` for an event type this version of HAP does not know.
pub fn route(event: &RecordedEvent) -> Option<MessageRoute> {
    let route = domain::event::route(&event.event_type)?;
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
        source_service: Service::publishing(route.exchange).source_service(),
        saga_id,
    })
}
