//! What the store's readers get of a payload stored sealed: the store hands every row it reads
//! to an [`Opener`] (the `privacy` crate's vault, in a HAP process), which puts the sealed
//! fields back, so that no reader (aggregates, the publisher, rebuilds, history) sees a stored
//! payload that is not what its event type reads as. The store itself knows nothing of which
//! fields are sealed, or how.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::EventStore;

/// The columns of a stored event an opener reads.
#[derive(Debug, Clone, Copy)]
pub struct Stored<'a> {
    pub event_type: &'a str,
    pub schema_version: i32,
    /// JSON text, as stored.
    pub payload: &'a str,
}

/// Opens stored payloads, many at once (an opener may look keys up for a whole page in one
/// query).
pub trait Opener: std::fmt::Debug + Send + Sync + 'static {
    /// What each of `rows` reads as, in order: `None` where it reads as stored. An error is
    /// the database's, or a sealed payload that does not open (another master key).
    fn open<'a>(
        &'a self,
        rows: &'a [Stored<'a>],
    ) -> BoxFuture<'a, Result<Vec<Option<String>>, sqlx::Error>>;
}

impl EventStore {
    /// The same store, its reads opening every payload with `opener`.
    pub fn opening_with(mut self, opener: Arc<dyn Opener>) -> Self {
        self.opener = Some(opener);
        self
    }

    /// What each of `rows` reads as (`None`: as stored); all as stored without an opener.
    pub async fn open(&self, rows: &[Stored<'_>]) -> Result<Vec<Option<String>>, sqlx::Error> {
        open(self.opener.as_deref(), rows).await
    }
}

pub(crate) async fn open(
    opener: Option<&dyn Opener>,
    rows: &[Stored<'_>],
) -> Result<Vec<Option<String>>, sqlx::Error> {
    match opener {
        Some(opener) => opener.open(rows).await,
        None => Ok(vec![None; rows.len()]),
    }
}
