//! HAP's personal data at rest.
//!
//! The master key of HAP's configuration (`HAP_DATA_KEY`) never reaches the store; keys derived
//! from it protect what the store keeps of a person: the personal fields of events are sealed
//! under a key of their data subject (erasing the subject deletes it: crypto-shredding), and
//! uniqueness claims of document and license numbers keep a keyed hash of the value.
//!
//! # Layout
//! - [`master`]: the master key, and the keys derived from it (one wraps subject keys).
//! - [`gcm`]: AES-256-GCM with random nonces, what wraps and seals.
//! - [`sealing`]: a payload's personal fields sealed, and opened, with a subject's key.
//! - [`vault`]: the subject keys in the store, cached, and the [`Vault`] that seals payloads
//!   for appends and opens them for every reader of the store.
//! - [`migration`]: sealing the clear events of earlier releases (`hap migrate-events`).
//! - [`claims`]: what uniqueness claims keep of personal values.

pub mod claims;
pub mod gcm;
pub mod master;
pub mod migration;
pub mod sealing;
pub mod vault;

pub use master::{MasterKey, MasterKeyError};
pub use vault::{Sealer, Vault, VaultError};
