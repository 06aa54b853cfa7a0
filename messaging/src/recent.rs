//! A map that remembers only the ids inserted last: what a process knows about its own recent
//! work (fed events committed, versions reached), kept in bounded memory.

use std::collections::VecDeque;

use uuid::Uuid;

/// The ids are UUIDs that HAP made, so a hash built to resist crafted keys buys nothing here
/// (see `projections::ById`).
type ById<V> = std::collections::HashMap<Uuid, V, foldhash::fast::RandomState>;

/// Up to `CAPACITY` ids with their values; inserting one more forgets the oldest.
#[derive(Debug)]
pub struct Recent<V, const CAPACITY: usize> {
    values: ById<V>,
    /// Oldest first; may name ids removed since (forgetting them again is harmless).
    order: VecDeque<Uuid>,
}

impl<V, const CAPACITY: usize> Default for Recent<V, CAPACITY> {
    fn default() -> Self {
        Self {
            values: ById::default(),
            order: VecDeque::new(),
        }
    }
}

impl<V: Default, const CAPACITY: usize> Recent<V, CAPACITY> {
    /// The value of `id`, inserted as the default if it is not remembered.
    pub fn entry(&mut self, id: Uuid) -> &mut V {
        if !self.values.contains_key(&id) {
            if self.order.len() == CAPACITY
                && let Some(oldest) = self.order.pop_front()
            {
                self.values.remove(&oldest);
            }
            self.order.push_back(id);
        }
        self.values.entry(id).or_default()
    }
}

impl<V, const CAPACITY: usize> Recent<V, CAPACITY> {
    pub fn get(&self, id: &Uuid) -> Option<&V> {
        self.values.get(id)
    }

    pub fn remove(&mut self, id: &Uuid) -> Option<V> {
        self.values.remove(id)
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}
