//! Whether each part of a process runs, for `/health/ready`: every role registers its parts
//! (each consumer, the publisher, the timer) when it is set up, not ready, and raises or lowers
//! its flag as it goes (a consumer is not ready again while it reconnects). The process is
//! ready when every registered part is.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The parts of one process, by name. Cheap to clone; clones share the parts.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    parts: Arc<Mutex<Vec<(String, Part)>>>,
}

/// One part's flag, set by the part itself. The default flag belongs to no [`Readiness`]: for
/// a part that nobody asks about (a test's, a benchmark's).
#[derive(Debug, Clone, Default)]
pub struct Part(Arc<AtomicBool>);

impl Readiness {
    /// Registers a part named `name`, not ready yet, and returns its flag. Register before the
    /// part starts running, so that readiness never answers before it has heard of it.
    pub fn part(&self, name: impl Into<String>) -> Part {
        let part = Part::default();
        self.parts
            .lock()
            // A panic elsewhere cannot leave the list half-changed: every change is one push.
            .unwrap_or_else(PoisonError::into_inner)
            .push((name.into(), part.clone()));
        part
    }

    /// The names of the parts that are not ready, in the order they were registered.
    pub fn not_ready(&self) -> Vec<String> {
        self.parts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, part)| !part.is_ready())
            .map(|(name, _)| name.clone())
            .collect()
    }
}

impl Part {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_ready_when_every_part_says_so() {
        let readiness = Readiness::default();
        let publisher = readiness.part("publisher");
        let consumer = readiness.part("hap.patient-service.a.events");
        assert_eq!(
            readiness.not_ready(),
            ["publisher", "hap.patient-service.a.events"]
        );

        publisher.set(true);
        consumer.set(true);
        assert!(readiness.not_ready().is_empty());

        consumer.set(false);
        assert_eq!(readiness.not_ready(), ["hap.patient-service.a.events"]);
    }
}
