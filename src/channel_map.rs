//! Per-channel state of one connection, indexed by channel id.
//!
//! Every frame names its channel, so the reader looks its channel up once or
//! more per frame, and the sink once per delivery. With a `HashMap<u16, _>`
//! that was a SipHash each time: 10% of the transient path's instructions
//! under callgrind. Channel ids are small integers below the negotiated
//! `channel_max` (2047 by default, 65535 at most), so a vector indexed by id
//! finds a channel with one bounds check. The slots hold boxes, so the vector
//! costs 8 bytes per id up to the highest one used (16 KiB for a client that
//! opens channel 2047), and a channel's state does not move when it grows.

/// A map from channel id to `V`, iterated in id order.
#[derive(Debug)]
pub struct ChannelMap<V> {
    slots: Vec<Option<Box<V>>>,
    len: usize,
}

impl<V> Default for ChannelMap<V> {
    fn default() -> Self {
        ChannelMap { slots: Vec::new(), len: 0 }
    }
}

impl<V> ChannelMap<V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, id: u16) -> Option<&V> {
        self.slots.get(id as usize).and_then(|s| s.as_deref())
    }

    pub fn get_mut(&mut self, id: u16) -> Option<&mut V> {
        self.slots.get_mut(id as usize).and_then(|s| s.as_deref_mut())
    }

    pub fn contains_key(&self, id: u16) -> bool {
        self.get(id).is_some()
    }

    /// Puts `value` at `id`, returning what was there.
    pub fn insert(&mut self, id: u16, value: V) -> Option<V> {
        let i = id as usize;
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, || None);
        }
        let old = self.slots[i].replace(Box::new(value));
        if old.is_none() {
            self.len += 1;
        }
        old.map(|b| *b)
    }

    /// The value at `id`, inserting `make()` first if there is none.
    pub fn get_or_insert_with(&mut self, id: u16, make: impl FnOnce() -> V) -> &mut V {
        let i = id as usize;
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, || None);
        }
        let slot = &mut self.slots[i];
        if slot.is_none() {
            self.len += 1;
        }
        slot.get_or_insert_with(|| Box::new(make()))
    }

    pub fn remove(&mut self, id: u16) -> Option<V> {
        let old = self.slots.get_mut(id as usize).and_then(|s| s.take());
        if old.is_some() {
            self.len -= 1;
            // Trailing empty slots are dropped so that a connection that once
            // used a high id does not keep the vector at that length.
            while matches!(self.slots.last(), Some(None)) {
                self.slots.pop();
            }
        }
        old.map(|b| *b)
    }

    pub fn clear(&mut self) {
        self.slots.clear();
        self.len = 0;
    }

    pub fn ids(&self) -> impl Iterator<Item = u16> + '_ {
        self.iter().map(|(id, _)| id)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.slots.iter().filter_map(|s| s.as_deref())
    }

    pub fn iter(&self) -> impl Iterator<Item = (u16, &V)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| s.as_deref().map(|v| (i as u16, v)))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u16, &mut V)> {
        self.slots.iter_mut().enumerate().filter_map(|(i, s)| s.as_deref_mut().map(|v| (i as u16, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::ChannelMap;

    #[test]
    fn inserts_finds_removes_and_counts_by_id() {
        let mut m = ChannelMap::new();
        assert!(m.is_empty());
        assert_eq!(m.insert(3, "c"), None);
        assert_eq!(m.insert(1, "a"), None);
        assert_eq!(m.insert(65535, "z"), None);
        assert_eq!(m.insert(1, "A"), Some("a"));
        assert_eq!(m.len(), 3);
        assert_eq!(m.get(1), Some(&"A"));
        assert_eq!(m.get(2), None);
        assert!(!m.contains_key(0));
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![(1, &"A"), (3, &"c"), (65535, &"z")]);
        assert_eq!(m.remove(65535), Some("z"));
        assert_eq!(m.remove(65535), None);
        assert_eq!(m.len(), 2);
        // The vector shrinks back to the highest id still in use.
        assert_eq!(m.slots.len(), 4);
        *m.get_or_insert_with(2, || "b") = "B";
        assert_eq!(*m.get_or_insert_with(2, || "x"), "B");
        assert_eq!(m.ids().collect::<Vec<_>>(), vec![1, 2, 3]);
        for (_, v) in m.iter_mut() {
            *v = "same";
        }
        assert!(m.values().all(|v| *v == "same"));
        m.clear();
        assert_eq!((m.len(), m.get(1)), (0, None));
    }
}
