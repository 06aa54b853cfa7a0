//! Each projector of an instance with the service whose queue feeds it; the queues' names and
//! bindings come from that service's row of the domain's table (`messaging::queues`).

use domain::service::Service;
use messaging::queues::{Binding, projector_bindings};

use crate::consultations::Consultations;
use crate::patients::Patients;
use crate::physicians::Physicians;
use crate::projector::Projector;
use crate::records::Records;

/// One projector and its queue.
pub struct QueueSpec {
    /// Whose queue it is (`{prefix}.{service}.{instance}.events`).
    pub service: Service,
    pub projector: fn() -> Box<dyn Projector>,
}

impl QueueSpec {
    /// What the queue is bound to, as (exchange suffix, binding key) pairs.
    pub fn bindings(&self) -> Vec<Binding> {
        projector_bindings(self.service)
    }
}

/// Every projector of an instance with its queue.
pub const QUEUES: [QueueSpec; 4] = [
    QueueSpec {
        service: Service::Patients,
        projector: || Box::new(Patients),
    },
    QueueSpec {
        service: Service::Physicians,
        projector: || Box::new(Physicians),
    },
    QueueSpec {
        service: Service::Scheduling,
        projector: || Box::new(Consultations),
    },
    QueueSpec {
        service: Service::Records,
        projector: || Box::new(Records),
    },
];
