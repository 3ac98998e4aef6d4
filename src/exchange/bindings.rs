//! An exchange's bindings, indexed so that binding, unbinding and deleting a
//! queue cost the few bindings involved, not all of them: 100,000 queues
//! bound to one exchange, each by its own key or all by the same one (a
//! fanout), must not make each declaration or deletion scan the rest.

use super::{Binding, Destination, DestinationKey};
use crate::protocol::FieldTable;
use std::collections::HashMap;

/// Below this many bindings under one key, a scan is cheaper than a hash.
const SCAN_LIMIT: usize = 16;

/// The bindings that share one routing key.
#[derive(Debug, Default)]
pub(super) struct KeyBindings {
    /// In no particular order (removal swaps the last one in); routing reads it.
    pub(super) list: Vec<Binding>,
    /// Where each destination's bindings sit in `list`, once it is long.
    at: Option<HashMap<DestinationKey, Vec<usize>>>,
}

impl KeyBindings {
    fn positions(&self, destination: &Destination) -> Vec<usize> {
        match &self.at {
            Some(at) => at.get(&destination.key()).cloned().unwrap_or_default(),
            None => (0..self.list.len()).filter(|&i| self.list[i].destination.same(destination)).collect(),
        }
    }

    fn find(&self, destination: &Destination, arguments: &FieldTable) -> Option<usize> {
        self.positions(destination).into_iter().find(|&i| &self.list[i].arguments == arguments)
    }

    fn push(&mut self, b: Binding) {
        let i = self.list.len();
        if let Some(at) = &mut self.at {
            at.entry(b.destination.key()).or_default().push(i);
        }
        self.list.push(b);
        if self.at.is_none() && self.list.len() > SCAN_LIMIT {
            let mut at: HashMap<DestinationKey, Vec<usize>> = HashMap::new();
            for (i, b) in self.list.iter().enumerate() {
                at.entry(b.destination.key()).or_default().push(i);
            }
            self.at = Some(at);
        }
    }

    fn remove_at(&mut self, i: usize) {
        let last = self.list.len() - 1;
        let removed = self.list.swap_remove(i);
        let Some(at) = &mut self.at else { return };
        let key = removed.destination.key();
        if let Some(v) = at.get_mut(&key) {
            v.retain(|&p| p != i);
            if v.is_empty() {
                at.remove(&key);
            }
        }
        if i != last
            && let Some(v) = at.get_mut(&self.list[i].destination.key())
            && let Some(p) = v.iter_mut().find(|p| **p == last)
        {
            *p = i; // the last binding moved into the gap
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Bindings {
    /// By routing key: a direct exchange routes with one lookup.
    pub(super) by_key: HashMap<String, KeyBindings>,
    /// The routing keys each destination is bound with (once per binding).
    pub(super) by_destination: HashMap<DestinationKey, Vec<String>>,
    pub(super) len: usize,
    next_seq: u64,
}

impl Bindings {
    pub(super) fn all(&self) -> impl Iterator<Item = &Binding> {
        self.by_key.values().flat_map(|k| k.list.iter())
    }

    /// Adds a binding unless the same one exists; true if added.
    pub(super) fn add(&mut self, mut b: Binding) -> bool {
        let key = self.by_key.entry(b.routing_key.clone()).or_default();
        if key.find(&b.destination, &b.arguments).is_some() {
            return false;
        }
        self.by_destination.entry(b.destination.key()).or_default().push(b.routing_key.clone());
        b.seq = self.next_seq;
        self.next_seq += 1;
        self.len += 1;
        key.push(b);
        true
    }

    /// Removes one binding; true if it existed.
    pub(super) fn remove(
        &mut self,
        destination: &Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> bool {
        let Some(key) = self.by_key.get_mut(routing_key) else { return false };
        let Some(i) = key.find(destination, arguments) else { return false };
        key.remove_at(i);
        if key.list.is_empty() {
            self.by_key.remove(routing_key);
        }
        self.len -= 1;
        let dk = destination.key();
        if let Some(keys) = self.by_destination.get_mut(&dk) {
            if let Some(i) = keys.iter().position(|k| k == routing_key) {
                keys.swap_remove(i);
            }
            if keys.is_empty() {
                self.by_destination.remove(&dk);
            }
        }
        true
    }

    /// Removes every binding to `destination`; returns how many.
    pub(super) fn remove_destination(&mut self, destination: &Destination) -> usize {
        let Some(mut keys) = self.by_destination.remove(&destination.key()) else { return 0 };
        keys.sort_unstable();
        keys.dedup();
        let mut n = 0;
        for k in keys {
            let Some(key) = self.by_key.get_mut(&k) else { continue };
            let mut at = key.positions(destination);
            // Highest first: a swap only ever moves in a binding kept.
            at.sort_unstable_by(|a, b| b.cmp(a));
            for i in &at {
                key.remove_at(*i);
            }
            n += at.len();
            if key.list.is_empty() {
                self.by_key.remove(&k);
            }
        }
        self.len -= n;
        n
    }
}
