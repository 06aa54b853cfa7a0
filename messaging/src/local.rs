//! The local feed: each event a process has just appended (and committed) handed straight to
//! the handlers of the same process that take it, without the trip through the broker. Its
//! projectors apply it with their next batch (a query here waits for one read-model
//! transaction); its saga services run the step it triggers at once (a scheduling's hops cost
//! no broker round trip each).
//!
//! The feed only ever makes things earlier, never different: what it drops (a handler that is
//! not keeping up, a batch that failed) still arrives through the queue, which stays the
//! guarantee. The broker's copy of an event a handler here took is acknowledged without it
//! when it comes to this process ([`crate::fed`]), and handled again, idempotently, when it
//! comes to another one (a saga queue's competing consumer).

use std::fmt;
use std::sync::{Arc, Mutex};

use domain::Event;
use tokio::sync::mpsc;

use crate::consumer::Message;

/// Events waiting for one handler at most; past it they are dropped and come by the queue.
/// (The consumer runtime remembers four times as many committed, until their copies come.)
const CAPACITY: usize = 4096;

/// Which events a handler takes from the feed: those its queue is bound to.
type Takes = Arc<dyn Fn(&Event) -> bool + Send + Sync>;

#[derive(Clone)]
struct Subscriber {
    name: &'static str,
    takes: Takes,
    sender: mpsc::Sender<Message>,
}

/// The handlers of this process that take events straight from its appends; cheap to clone.
#[derive(Clone, Default)]
pub struct LocalFeed {
    /// Replaced whole when a handler subscribes (rarely), read on every commit: a commit holds
    /// the lock only to take its own reference, not while it makes and sends its messages.
    subscribers: Arc<Mutex<Arc<Vec<Subscriber>>>>,
}

impl LocalFeed {
    /// Called by the handler `name` when its consumer starts: the events offered from then on
    /// that it `takes` come to the receiver. A later call for the same name takes over.
    pub fn subscribe(
        &self,
        name: &'static str,
        takes: impl Fn(&Event) -> bool + Send + Sync + 'static,
    ) -> mpsc::Receiver<Message> {
        let (sender, receiver) = mpsc::channel(CAPACITY);
        let mut subscribers = self.lock();
        let mut changed: Vec<Subscriber> = subscribers
            .iter()
            .filter(|s| s.name != name)
            .cloned()
            .collect();
        changed.push(Subscriber {
            name,
            takes: Arc::new(takes),
            sender,
        });
        *subscribers = Arc::new(changed);
        receiver
    }

    /// Hands the messages `appended` makes, appended and committed by this process, to the
    /// handlers here that take them; makes them only if there are any (a process that only
    /// takes commands pays nothing). Never waits.
    pub fn offer(&self, appended: impl FnOnce() -> Vec<Message>) {
        let subscribers = self.lock().clone();
        if subscribers.is_empty() {
            return;
        }
        for message in appended() {
            // The events of one appended now are always the one written.
            let Some(event) = message.envelope.events.first() else {
                continue;
            };
            for subscriber in subscribers.iter().filter(|s| (s.takes)(event)) {
                if subscriber.sender.try_send(message.clone()).is_err() {
                    metrics::counter!("hap_local_feed_dropped_total", "handler" => subscriber.name)
                        .increment(1);
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Arc<Vec<Subscriber>>> {
        // A panic elsewhere while holding it leaves the list whole: it is replaced or read,
        // never half-written.
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl fmt::Debug for LocalFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.lock().iter().map(|s| s.name).collect();
        f.debug_struct("LocalFeed")
            .field("subscribers", &names)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use domain::event::{PatientDeactivated, PhysicianDeactivated};
    use domain::ids::{PatientId, PhysicianId};
    use uuid::Uuid;

    use super::*;
    use crate::{Envelope, Origin};

    fn message(event: Event) -> Message {
        Message {
            envelope: Envelope {
                event_id: Uuid::now_v7(),
                stream_id: Uuid::now_v7(),
                version: 1,
                position: 1,
                occurred_at: Utc::now(),
                tenant_id: "clinic".into(),
                events: [event].into(),
            },
            origin: Origin {
                tenant_id: "clinic".into(),
                correlation_id: "c-1".into(),
                actor_id: Some("dr-who".into()),
            },
            fed: true,
        }
    }

    fn patient_deactivated() -> Event {
        Event::PatientDeactivated(PatientDeactivated {
            patient_id: PatientId::new(),
            reason: None,
        })
    }

    fn physician_deactivated() -> Event {
        Event::PhysicianDeactivated(PhysicianDeactivated {
            physician_id: PhysicianId::new(),
            reason: None,
        })
    }

    fn is_patients(event: &Event) -> bool {
        matches!(event, Event::PatientDeactivated(_))
    }

    #[test]
    fn each_handler_gets_what_it_takes_with_its_origin() {
        let feed = LocalFeed::default();
        let mut patients = feed.subscribe("patients", is_patients);
        let mut everything = feed.subscribe("everything", |_| true);
        feed.offer(|| {
            vec![
                message(patient_deactivated()),
                message(physician_deactivated()),
            ]
        });
        let got = patients.try_recv().expect("the patient's event");
        assert_eq!(got.origin.actor_id.as_deref(), Some("dr-who"));
        assert!(patients.try_recv().is_err(), "not the physician's");
        assert!(everything.try_recv().is_ok() && everything.try_recv().is_ok());
    }

    #[test]
    fn nothing_is_made_without_subscribers_and_a_later_subscriber_takes_over() {
        let feed = LocalFeed::default();
        feed.offer(|| unreachable!("no handler takes anything"));
        let mut first = feed.subscribe("patients", is_patients);
        let mut second = feed.subscribe("patients", is_patients);
        feed.offer(|| vec![message(patient_deactivated())]);
        assert!(second.try_recv().is_ok());
        assert!(first.try_recv().is_err());
    }

    #[test]
    fn a_full_handler_loses_the_event_to_its_queue_not_the_others() {
        let feed = LocalFeed::default();
        let mut stalled = feed.subscribe("stalled", |_| true);
        let mut other = feed.subscribe("physicians", |e| !is_patients(e));
        feed.offer(|| {
            (0..CAPACITY)
                .map(|_| message(patient_deactivated()))
                .collect()
        });
        feed.offer(|| vec![message(physician_deactivated())]);
        assert!(other.try_recv().is_ok(), "the other handler has room");
        let mut taken = 0;
        while stalled.try_recv().is_ok() {
            taken += 1;
        }
        assert_eq!(
            taken, CAPACITY,
            "the full one dropped what came past its room"
        );
    }
}
