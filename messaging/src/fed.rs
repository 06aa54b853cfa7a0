//! Events a process fed its own handlers straight after appending them: once a handler has
//! committed one, the copy that comes later through the queue is acknowledged without it.

use uuid::Uuid;

use crate::recent::Recent;

/// Fed events a consumer remembers having committed until their copies arrive; past it the
/// oldest are forgotten (their copies then cost a handling that finds them applied).
const REMEMBERED: usize = 4 * 4096;

/// The ids of fed events a handler has committed, until their copies come through the queue:
/// a copy found here is applied already, and is acknowledged without asking the database.
#[derive(Debug, Default)]
pub(crate) struct CommittedFed(Recent<(), REMEMBERED>);

impl CommittedFed {
    /// Remembers fed events whose batch has committed.
    pub(crate) fn insert(&mut self, ids: Vec<Uuid>) {
        for id in ids {
            self.0.entry(id);
        }
    }

    /// Whether the event was fed and committed; forgets it (its copy comes once).
    pub(crate) fn take(&mut self, id: Uuid) -> bool {
        self.0.remove(&id).is_some()
    }
}
