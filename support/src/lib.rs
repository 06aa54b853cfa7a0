//! What HAP's end-to-end tests (`tests/`) and its benchmarks (`bench/`) both need, written
//! once: both run HAP's real pieces in-process against real PostgreSQL and RabbitMQ, each in a
//! namespace of its own.
//!
//! Errors are `anyhow`: every caller is a test, which fails on them, or the bench's binary,
//! which prints them; none tells one failure from another.
//!
//! # Layout
//! - [`database`]: a scratch database on a server, created and migrated by HAP's own code,
//!   and dropped by whoever made it.
//! - [`server`]: HAP's HTTP API served in-process on a free local port.
//! - [`broker`]: scratch exchange prefixes and publishing straight into a queue with a confirm.
//! - [`system`]: HAP's pieces wired as `hap serve` wires them.
//! - [`postgres`]: a private PostgreSQL server to stop, restart and crash under HAP.
//! - [`cluster`]: a private RabbitMQ cluster (`scripts/cluster.sh`) whose nodes can be killed
//!   under HAP.

pub mod broker;
pub mod cluster;
pub mod database;
pub mod postgres;
pub mod server;
pub mod system;
