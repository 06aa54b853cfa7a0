//! The console's pages, one module each.
//!
//! - [`overview`]: processes, publisher lag, deadlines and queue depths at a glance.
//! - [`sagas`]: consultations in flight, stuck ones first, deadlines and failures by reason.
//! - [`streams`]: one aggregate's events, and a consultation's causal trail.
//! - [`dead_letters`]: dead letters grouped by failure, one message's headers, error and
//!   body; replaying or discarding one or a group.

pub mod dead_letters;
pub mod overview;
pub mod sagas;
pub mod streams;
