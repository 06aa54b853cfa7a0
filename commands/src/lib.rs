//! HAP's command side without HTTP: the pipeline every command goes through, whoever sends
//! it, and the typed outcome or error it answers. The HTTP layer maps these to status codes;
//! saga steps, deadlines and jobs act on them directly.
//!
//! # Layout
//! - [`pipeline`]: [`Pipeline::execute`]: replay, load, decide, append (with claims,
//!   deadlines and the idempotency key in one statement), retry on conflict.
//! - [`outcome`]: what a command comes to, and what its idempotency key remembers of it.
//! - [`deadlines`]: saga deadlines in one place: their duration, and the appends that start,
//!   pause and fire them; what a due one sends; retiring and resuming one.
//! - [`aggregates`]: loading aggregates, with the moka cache in front.
//! - [`stored`]: the one conversion of domain events into events to store.
//! - `testing` (feature `testing`): given/when/then tests over a store in memory.
//! - [`observer`]: what the pipeline tells its process after each committed append.

pub mod aggregates;
pub mod deadlines;
pub mod observer;
pub mod outcome;
pub mod pipeline;
pub mod stored;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use aggregates::{Aggregates, LoadError, Loaded};
pub use deadlines::{Deadlines, Firing};
pub use observer::{AppendObserver, Committed, CommittedEvent};
pub use outcome::{Done, Outcome, Remembered};
pub use pipeline::{CommandError, CommandMeta, Idempotency, Pipeline, Target};
