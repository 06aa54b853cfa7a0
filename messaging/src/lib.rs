//! HAP on RabbitMQ: everything that knows the broker. The message an event becomes, the
//! exchanges and queues (named from the domain's table of services), the publisher that
//! streams the event store to the exchanges, and the consumer runtime that projectors and
//! saga services plug into, with its retries and dead letters.
//!
//! What the publisher needs of PostgreSQL and of the process stays in `eventstore`: its
//! checkpoint, its leadership (an advisory lock), its wakeups after commits, and the readiness
//! every part reports. Those know no broker, and the timer and the read side use them too; so
//! the store has no AMQP client, and this crate has no SQL.
//!
//! # Layout
//! - [`broker`]: the RabbitMQ nodes (`AmqpUrls`) and connecting to the first that answers;
//!   [`health`]: a connection kept open, for the readiness check.
//! - [`message`]: the message an event becomes ([`EventMessage`], its JSON body, written and
//!   read as one type); [`headers`]: the AMQP headers HAP reads and writes.
//! - [`envelope`]: an event as its consumers see it, read from a message or from the store.
//! - [`routes`]: where each event goes, from the domain's routing table.
//! - [`topology`]: exchange names under a prefix, declaring them and quorum queues, and
//!   looking a queue up;
//!   [`queues`]: the projector and saga queues, from the domain's table of services, with
//!   their retry and dead-letter companions.
//! - [`publisher`]: streaming committed events to the exchanges with confirms, one leader at a
//!   time.
//! - [`consumer`]: the consumer runtime (batches, ack after the handler is done, retries,
//!   dead letters); [`local`]: the local feed, a process's appends handed straight to its own
//!   handlers; `fed`: what the runtime remembers of the events it was fed; [`recent`]: the
//!   bounded map it remembers them in.
//! - [`dlq`]: listing, replaying and purging dead letters.
//! - `backoff`: the growing pause before trying again after a failure.

mod backoff;
pub mod broker;
pub mod consumer;
pub mod dlq;
pub mod envelope;
mod fed;
pub mod headers;
pub mod health;
pub mod local;
pub mod message;
pub mod publisher;
pub mod queues;
pub mod recent;
pub mod routes;
pub mod topology;

pub use broker::AmqpUrls;
pub use envelope::{Envelope, Origin, Poison};
pub use local::LocalFeed;
pub use message::{EventMessage, Outgoing};
pub use publisher::{Publisher, PublisherSettings};
pub use queues::QueueNames;
pub use routes::MessageRoute;
pub use topology::Topology;
