//! HAP's personal data at rest.
//!
//! The master key of HAP's configuration (`HAP_DATA_KEY`) never reaches the store; keys derived
//! from it protect what the store keeps of a person. Today that is the uniqueness claims of
//! document and license numbers, which keep a keyed hash of the value, never the value.
//!
//! # Layout
//! - [`master`]: the master key, and the keys derived from it.
//! - [`claims`]: what uniqueness claims keep of personal values.

pub mod claims;
pub mod master;

pub use master::{MasterKey, MasterKeyError};
