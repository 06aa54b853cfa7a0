//! A map that remembers only the ids inserted last: what a process knows about its own recent
//! work (fed events committed, versions reached), kept in bounded memory.

use std::collections::VecDeque;

use uuid::Uuid;

use crate::ById;

/// Up to `CAPACITY` ids with their values; inserting one more forgets the oldest.
#[derive(Debug)]
pub(crate) struct Recent<V, const CAPACITY: usize> {
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
    pub(crate) fn entry(&mut self, id: Uuid) -> &mut V {
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
    pub(crate) fn get(&self, id: &Uuid) -> Option<&V> {
        self.values.get(id)
    }

    pub(crate) fn remove(&mut self, id: &Uuid) -> Option<V> {
        self.values.remove(id)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }
}
