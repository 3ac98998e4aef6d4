//! The ready list: messages waiting for a consumer, highest priority first and
//! FIFO within a priority. Requeued messages go back to their original place
//! (ordered by the queue-local sequence number they got at enqueue).
//! An entry is small (32 bytes): a paged-out message is only its log location.

use crate::message::Message;
use crate::store::{Loc, NO_LOC};
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

const REDELIVERED: u8 = 1;
const PERSISTENT: u8 = 2;

/// One message in one queue.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    pub seq: u64,
    /// The message, or `None` while it is paged out to the log.
    pub msg: Option<Arc<Message>>,
    /// Its record in the log, or `NO_LOC`.
    pub loc: Loc,
    pub body_size: u32,
    pub priority: u8,
    /// `REDELIVERED` and `PERSISTENT`: two bools would not fit in 40 bytes.
    flags: u8,
    /// Times it was handed out (for `x-delivery-limit`).
    pub deliveries: u16,
    /// When it expires (ms since the epoch); 0 = never. Fixed at enqueue.
    pub deadline: u64,
}

impl QueuedMessage {
    pub fn in_memory(seq: u64, msg: Arc<Message>, loc: Loc) -> Self {
        QueuedMessage {
            seq,
            body_size: msg.body.len() as u32,
            priority: msg.priority(),
            msg: Some(msg),
            loc,
            flags: 0,
            deliveries: 0,
            deadline: 0,
        }
    }

    pub fn paged(seq: u64, loc: Loc, body_size: u32, priority: u8) -> Self {
        QueuedMessage {
            seq,
            msg: None,
            loc,
            body_size,
            priority,
            flags: 0,
            deliveries: 0,
            deadline: 0,
        }
    }

    /// Delivered before (the `redelivered` flag of its next delivery).
    pub fn redelivered(&self) -> bool {
        self.flags & REDELIVERED != 0
    }

    pub fn set_redelivered(&mut self, yes: bool) {
        self.flags = if yes { self.flags | REDELIVERED } else { self.flags & !REDELIVERED };
    }

    /// Persistent in RabbitMQ's sense: `delivery_mode` 2 in a durable queue,
    /// so its record in the log survives a restart.
    pub fn persistent(&self) -> bool {
        self.flags & PERSISTENT != 0
    }

    pub fn with_persistent(mut self, yes: bool) -> Self {
        if yes {
            self.flags |= PERSISTENT;
        }
        self
    }

    pub fn has_record(&self) -> bool {
        self.loc != NO_LOC
    }

    /// What an expired message leaves in its place until it reaches a front.
    fn tombstone(seq: u64) -> Self {
        QueuedMessage {
            seq,
            msg: None,
            loc: NO_LOC,
            body_size: 0,
            priority: 0,
            flags: 0,
            deliveries: u16::MAX,
            deadline: 0,
        }
    }

    fn is_tombstone(&self) -> bool {
        self.deliveries == u16::MAX && self.loc == NO_LOC && self.msg.is_none()
    }
}

/// A count of messages and their body bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub count: u64,
    pub bytes: u64,
}

impl Tally {
    pub fn add(&mut self, count: u64, bytes: u64) {
        self.count += count;
        self.bytes += bytes;
    }

    pub fn sub(&mut self, count: u64, bytes: u64) {
        self.count = self.count.saturating_sub(count);
        self.bytes = self.bytes.saturating_sub(bytes);
    }
}

#[derive(Debug)]
pub struct ReadyList {
    /// Index = priority level; a queue without `x-max-priority` has one level.
    levels: Vec<VecDeque<QueuedMessage>>,
    len: usize,
    bytes: u64,
    /// How many of them (and their body bytes) are persistent, and how many
    /// are paged out to the log: management's `messages_persistent` and
    /// `messages_paged_out`.
    persistent: Tally,
    paged: Tally,
    /// Messages with a deadline, soonest first: (deadline, seq, level). Lets
    /// a message expire wherever it sits, not only at the head.
    expiry: BTreeSet<(u64, u64, u8)>,
}

impl ReadyList {
    pub fn new(max_priority: Option<u8>) -> Self {
        let n = max_priority.map(|p| p as usize + 1).unwrap_or(1);
        ReadyList {
            levels: (0..n).map(|_| VecDeque::new()).collect(),
            len: 0,
            bytes: 0,
            persistent: Tally::default(),
            paged: Tally::default(),
            expiry: BTreeSet::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Persistent ready messages and their body bytes.
    pub fn persistent(&self) -> Tally {
        self.persistent
    }

    /// Ready messages paged out to the log and their body bytes.
    pub fn paged(&self) -> Tally {
        self.paged
    }

    /// A message in the list had its body read back from the log.
    pub fn paged_in(&mut self, count: u64, bytes: u64) {
        self.paged.sub(count, bytes);
    }

    fn tally_in(&mut self, qm: &QueuedMessage) {
        self.len += 1;
        self.bytes += qm.body_size as u64;
        if qm.persistent() {
            self.persistent.add(1, qm.body_size as u64);
        }
        if qm.msg.is_none() {
            self.paged.add(1, qm.body_size as u64);
        }
    }

    fn tally_out(&mut self, qm: &QueuedMessage) {
        self.len -= 1;
        self.bytes -= qm.body_size as u64;
        if qm.persistent() {
            self.persistent.sub(1, qm.body_size as u64);
        }
        if qm.msg.is_none() {
            self.paged.sub(1, qm.body_size as u64);
        }
    }

    fn level(&self, priority: u8) -> usize {
        (priority as usize).min(self.levels.len() - 1)
    }

    pub fn push(&mut self, qm: QueuedMessage) {
        let l = self.level(qm.priority);
        if qm.deadline != 0 {
            self.expiry.insert((qm.deadline, qm.seq, l as u8));
        }
        self.tally_in(&qm);
        self.levels[l].push_back(qm);
    }

    /// Puts a message back where its sequence number says it belongs.
    pub fn requeue(&mut self, qm: QueuedMessage) {
        let l = self.level(qm.priority);
        if qm.deadline != 0 {
            self.expiry.insert((qm.deadline, qm.seq, l as u8));
        }
        self.tally_in(&qm);
        let level = &mut self.levels[l];
        match level.back() {
            Some(last) if last.seq > qm.seq => {
                let at = level.partition_point(|m| m.seq < qm.seq);
                level.insert(at, qm);
            }
            _ => level.push_back(qm),
        }
    }

    pub fn peek(&self) -> Option<&QueuedMessage> {
        self.levels.iter().rev().find_map(|l| l.iter().find(|m| !m.is_tombstone()))
    }

    /// Drops tombstones at the front of every level.
    fn clean_fronts(&mut self) {
        for l in &mut self.levels {
            while l.front().is_some_and(|m| m.is_tombstone()) {
                l.pop_front();
            }
        }
    }

    /// The head, mutably (to page its body back in).
    pub fn peek_mut(&mut self) -> Option<&mut QueuedMessage> {
        self.clean_fronts();
        self.levels.iter_mut().rev().find_map(|l| l.front_mut())
    }

    /// The head and the messages queued behind it at the same priority
    /// level, in delivery order (to page a run of them back in at once).
    pub fn head_run_mut(&mut self) -> impl Iterator<Item = &mut QueuedMessage> {
        self.clean_fronts();
        self.levels.iter_mut().rev().find(|l| !l.is_empty()).into_iter().flat_map(|l| l.iter_mut())
    }

    pub fn pop(&mut self) -> Option<QueuedMessage> {
        self.clean_fronts();
        let (l, qm) =
            self.levels.iter_mut().enumerate().rev().find_map(|(i, l)| l.pop_front().map(|m| (i, m)))?;
        self.taken(&qm, l);
        Some(qm)
    }

    fn taken(&mut self, qm: &QueuedMessage, level: usize) {
        self.tally_out(qm);
        if qm.deadline != 0 {
            self.expiry.remove(&(qm.deadline, qm.seq, level as u8));
        }
    }

    /// The soonest deadline of any ready message.
    pub fn next_deadline(&self) -> Option<u64> {
        self.expiry.first().map(|(d, _, _)| *d)
    }

    /// Removes every message whose deadline is at or before `now`, wherever
    /// it sits; returned in deadline order.
    pub fn take_expired(&mut self, now: u64) -> Vec<QueuedMessage> {
        let mut out = Vec::new();
        while let Some(&(deadline, seq, level)) = self.expiry.first() {
            if deadline > now {
                break;
            }
            self.expiry.pop_first();
            let lv = &mut self.levels[level as usize];
            let Ok(at) = lv.binary_search_by_key(&seq, |m| m.seq) else { continue };
            // Leave a tombstone rather than shifting the deque: expiring
            // messages scattered through a long queue stays O(log n) each.
            let Some(slot) = lv.get_mut(at) else { continue };
            if slot.is_tombstone() {
                continue;
            }
            let qm = std::mem::replace(slot, QueuedMessage::tombstone(seq));
            self.tally_out(&qm);
            out.push(qm);
        }
        out
    }

    /// Empties the list, returning what was in it.
    pub fn drain(&mut self) -> Vec<QueuedMessage> {
        let mut out = Vec::with_capacity(self.len);
        for l in &mut self.levels {
            out.extend(l.drain(..).filter(|m| !m.is_tombstone()));
        }
        self.len = 0;
        self.bytes = 0;
        self.persistent = Tally::default();
        self.paged = Tally::default();
        self.expiry.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::properties::Scanned;
    use bytes::Bytes;

    fn qm(seq: u64, prio: Option<u8>) -> QueuedMessage {
        let scanned = Scanned { priority: prio, ..Default::default() };
        let msg = Arc::new(Message::new(
            Bytes::new(),
            Bytes::new(),
            Bytes::new(),
            Bytes::from_static(b"x"),
            scanned,
        ));
        QueuedMessage::in_memory(seq, msg, NO_LOC)
    }

    #[test]
    fn entries_stay_small() {
        assert!(std::mem::size_of::<QueuedMessage>() <= 40, "{}", std::mem::size_of::<QueuedMessage>());
    }

    #[test]
    fn fifo_and_requeue_position() {
        let mut r = ReadyList::new(None);
        for s in 1..=4 {
            r.push(qm(s, None));
        }
        let a = r.pop().unwrap();
        let b = r.pop().unwrap();
        r.requeue(b);
        r.requeue(a);
        let order: Vec<u64> = std::iter::from_fn(|| r.pop()).map(|m| m.seq).collect();
        assert_eq!(order, vec![1, 2, 3, 4]);
        assert_eq!((r.len(), r.bytes()), (0, 0));
    }

    #[test]
    fn expiry_takes_messages_from_anywhere() {
        let mut r = ReadyList::new(Some(3));
        for (seq, deadline, prio) in
            [(1, 0, None), (2, 50, Some(2)), (3, 10, None), (4, 0, Some(3)), (5, 10, Some(3))]
        {
            let mut m = qm(seq, prio);
            m.deadline = deadline;
            r.push(m);
        }
        assert_eq!(r.next_deadline(), Some(10));
        let gone: Vec<u64> = r.take_expired(20).into_iter().map(|m| m.seq).collect();
        assert_eq!(gone, vec![3, 5]);
        assert_eq!(r.len(), 3);
        let order: Vec<u64> = std::iter::from_fn(|| r.pop()).map(|m| m.seq).collect();
        assert_eq!(order, vec![4, 2, 1]);
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn persistent_and_paged_tallies_follow_the_list() {
        let mut r = ReadyList::new(None);
        r.push(qm(1, None).with_persistent(true));
        r.push(QueuedMessage::paged(2, 7, 10, 0).with_persistent(true));
        let mut expiring = QueuedMessage::paged(3, 8, 20, 0);
        expiring.deadline = 5;
        r.push(expiring);
        assert_eq!(r.persistent(), Tally { count: 2, bytes: 11 });
        assert_eq!(r.paged(), Tally { count: 2, bytes: 30 });
        assert_eq!(r.take_expired(10).len(), 1);
        assert_eq!(r.paged(), Tally { count: 1, bytes: 10 });
        let head = r.pop().unwrap();
        assert!(head.persistent() && !head.redelivered());
        assert_eq!(r.persistent(), Tally { count: 1, bytes: 10 });
        r.paged_in(1, 10);
        assert_eq!(r.paged(), Tally::default());
        let mut back = head;
        back.set_redelivered(true);
        r.requeue(back);
        assert_eq!(r.persistent(), Tally { count: 2, bytes: 11 });
        assert!(r.peek().unwrap().redelivered() && r.peek().unwrap().persistent());
        r.drain();
        assert_eq!((r.persistent(), r.paged()), (Tally::default(), Tally::default()));
    }

    #[test]
    fn priorities_highest_first_capped_at_max() {
        let mut r = ReadyList::new(Some(5));
        r.push(qm(1, None));
        r.push(qm(2, Some(9)));
        r.push(qm(3, Some(5)));
        r.push(qm(4, Some(2)));
        let order: Vec<u64> = std::iter::from_fn(|| r.pop()).map(|m| m.seq).collect();
        assert_eq!(order, vec![2, 3, 4, 1]);
    }
}
