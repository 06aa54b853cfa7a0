//! The AMQP headers HAP reads and writes, each name spelled once.

/// The event's correlation id, on every message the publisher sends.
pub const CORRELATION_ID: &str = "x-correlation-id";
/// The event that caused this one, when there is one.
pub const CAUSATION_ID: &str = "x-causation-id";
/// The saga (consultation) a saga event takes part in.
pub const SAGA_ID: &str = "x-saga-id";
/// Retries so far (1, 2, …), set when a message is sent to its retry queue.
pub const RETRY_COUNT: &str = "x-retry-count";
/// Why a message was dead-lettered.
pub const ERROR: &str = "x-error";
/// The queue a dead letter came from, where a replay sends it back.
pub const ORIGINAL_QUEUE: &str = "x-original-queue";
/// When a message was dead-lettered, in milliseconds since the Unix epoch: what tells operators
/// since when a failure has been happening.
pub const DEAD_LETTERED_AT: &str = "x-dead-lettered-at";
/// How many times operators have replayed the message from its dead-letter queue; kept across
/// dead-letterings, so that a message replayed and failed again shows it.
pub const REPLAY_COUNT: &str = "x-replay-count";
/// RabbitMQ's own record of a message's dead-letterings.
pub const DEATH: &str = "x-death";
