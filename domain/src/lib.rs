//! HAP's clinical domain: what patients, physicians, consultations and clinical records are,
//! which commands they accept and which events those commands produce.
//!
//! Everything here is pure and synchronous: no database, no broker, no clock. A decision takes
//! the aggregate's current state and a command whose facts (the current time, whether a
//! referenced patient exists, …) were gathered beforehand by the caller, and answers with the
//! events to append or the rule it would break. State is rebuilt by folding events with
//! [`Aggregate::evolve`], so the same events always give the same state.
//!
//! # Layout
//! - [`aggregate`]: the [`Aggregate`] contract and [`DomainError`], the rules' verdicts.
//! - [`ids`]: typed identifiers, one per aggregate.
//! - [`values`]: parse-don't-validate value types (names, dates, document numbers, …).
//! - [`event`]: every event type, its payload, the kind of stream it belongs to
//!   ([`AggregateKind`]), and where it travels on the broker.
//! - `names`: enums whose variants travel as names, each name written once.
//! - [`patient`], [`physician`], [`schedule`], [`consultation`], [`record`]: the aggregates.
//! - [`service`]: the table of services, and every name they go by on the broker.
//! - [`personal`]: which fields of which events are a person's personal data, sealed under
//!   their key at rest, and which events erase a person.
//! - [`versions`]: the upcaster chain, which raises a payload of an older version to today's
//!   shape; every reader decodes through it.
//! - [`saga`]: which service reacts to which event in the scheduling and cancellation sagas,
//!   and the deactivation follow-up, with what step.

pub mod aggregate;
pub mod consultation;
pub mod event;
pub mod ids;
mod names;
pub mod patient;
pub mod personal;
pub mod physician;
pub mod record;
pub mod saga;
pub mod schedule;
pub mod service;
pub mod values;
pub mod versions;

pub use aggregate::{Aggregate, DomainError};
pub use event::{AggregateKind, Event};
