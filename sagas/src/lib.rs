//! HAP's sagas: scheduling and cancelling consultations across the patient, physician,
//! scheduling and records services, with a durable deadline, and cancelling a deactivated
//! person's future consultations. What to do is the domain's (`domain::saga`); this crate
//! carries it out.
//!
//! Every step is a command through the same pipeline as an HTTP request
//! (`commands::Pipeline`), with the triggering event as its causation, its correlation id
//! carried on, and an idempotency key made of the step and the triggering event, so a
//! redelivered or duplicated message has no second effect. Saga state is the events
//! themselves (the consultation's stream, the physician's day), so it is rebuilt like any
//! aggregate and never disagrees with them.
//!
//! # Layout
//! - [`service`]: a saga service as a handler of `messaging`'s consumer runtime, on its queue
//!   `{prefix}.{service}.saga`, shared by every process (competing consumers); the queues
//!   themselves are declared from the domain's table of services, by `messaging`.
//! - [`steps`]: each step as commands.
//! - [`send`]: how a step sends a command through the pipeline, and what became of it.
//! - [`lookups`]: what steps look up in the store besides streams ([`lookups::SagaStore`], on
//!   PostgreSQL and in memory): a person's consultations, what is stored of a consultation's
//!   scheduling.
//! - [`follow_up`]: the deactivation follow-up's cancellations (an erasure's too).
//! - [`forget`]: an erasure's dead letters, dropped from every queue.
//! - [`timer`]: the `timer` role: firing due deadlines (as `commands::deadlines` says), once
//!   each, from any number of processes.

pub mod follow_up;
pub mod forget;
pub mod lookups;
pub mod send;
pub mod service;
pub mod steps;
pub mod timer;

pub use service::run_all;
pub use timer::Timer;
