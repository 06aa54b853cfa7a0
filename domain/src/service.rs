//! HAP's services, in one table: every name a service goes by on the broker comes from here,
//! and so do the exchange it publishes and the exchanges its read model follows. The
//! messaging layer builds its exchanges, queues and routes from this table.

use crate::event::Exchange;

/// A service of the clinic. Each publishes the events of one exchange, keeps a read model of
/// its own (one projector queue per instance) and runs saga steps (from one queue every
/// process shares).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Patients,
    Physicians,
    Scheduling,
    Records,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceSpec {
    pub service: Service,
    /// How queues (`{prefix}.{name}.{instance}.events`, `{prefix}.{name}.saga`) and metrics
    /// name the service.
    pub name: &'static str,
    /// How message bodies name the service that published them (`sourceService`). The
    /// contract spells the records service differently here than in its queues' names; both
    /// spellings are on the wire, so both are kept, side by side.
    pub source_service: &'static str,
    /// The exchange of the events it publishes.
    pub publishes: Exchange,
    /// The exchanges whose events its read model follows: its projector queue's bindings.
    pub reads: &'static [Exchange],
}

/// Every service, in the order of [`Service::ALL`].
pub const SERVICES: [ServiceSpec; 4] = [
    ServiceSpec {
        service: Service::Patients,
        name: "patient-service",
        source_service: "patient-service",
        publishes: Exchange::Patients,
        reads: &[Exchange::Patients],
    },
    ServiceSpec {
        service: Service::Physicians,
        name: "physician-service",
        source_service: "physician-service",
        publishes: Exchange::Physicians,
        reads: &[Exchange::Physicians],
    },
    ServiceSpec {
        service: Service::Scheduling,
        name: "scheduling-service",
        source_service: "scheduling-service",
        publishes: Exchange::Consultations,
        // The agenda shows patients' and physicians' names.
        reads: &[
            Exchange::Consultations,
            Exchange::Patients,
            Exchange::Physicians,
        ],
    },
    ServiceSpec {
        service: Service::Records,
        name: "clinical-records",
        source_service: "clinical-records-service",
        publishes: Exchange::Records,
        reads: &[Exchange::Records],
    },
];

impl Service {
    pub const ALL: [Service; 4] = [
        Service::Patients,
        Service::Physicians,
        Service::Scheduling,
        Service::Records,
    ];

    /// The service's row of [`SERVICES`].
    pub fn spec(self) -> &'static ServiceSpec {
        &SERVICES[self as usize]
    }

    /// How queues and metrics name it (`patient-service`, `clinical-records`).
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// How message bodies name it (`sourceService`: `clinical-records-service`).
    pub fn source_service(self) -> &'static str {
        self.spec().source_service
    }

    /// The service that publishes `exchange`'s events.
    pub fn publishing(exchange: Exchange) -> Service {
        match exchange {
            Exchange::Patients => Service::Patients,
            Exchange::Physicians => Service::Physicians,
            Exchange::Consultations => Service::Scheduling,
            Exchange::Records => Service::Records,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_the_order_of_all_and_each_service_publishes_its_exchange() {
        for (index, service) in Service::ALL.into_iter().enumerate() {
            assert_eq!(SERVICES[index].service, service);
            assert_eq!(Service::publishing(service.spec().publishes), service);
            assert!(service.spec().reads.contains(&service.spec().publishes));
        }
    }

    #[test]
    fn names_on_the_wire_are_those_of_the_contract() {
        let names: Vec<_> = Service::ALL.map(Service::name).into();
        assert_eq!(
            names,
            [
                "patient-service",
                "physician-service",
                "scheduling-service",
                "clinical-records"
            ]
        );
        assert_eq!(
            Service::Records.source_service(),
            "clinical-records-service"
        );
    }
}
