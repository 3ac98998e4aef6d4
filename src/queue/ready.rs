//! The ready list: messages waiting for a consumer, highest priority first and
//! FIFO within a priority. Requeued messages go back to their original place
//! (ordered by the queue-local sequence number they got at enqueue).
//! An entry is small (32 bytes): a paged-out message is only its log location.

use crate::message::Message;
use crate::store::{Loc, NO_LOC};
use std::collections::VecDeque;
use std::sync::Arc;

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
    pub redelivered: bool,
}

impl QueuedMessage {
    pub fn in_memory(seq: u64, msg: Arc<Message>, loc: Loc) -> Self {
        QueuedMessage {
            seq,
            body_size: msg.body.len() as u32,
            priority: msg.priority(),
            msg: Some(msg),
            loc,
            redelivered: false,
        }
    }

    pub fn paged(seq: u64, loc: Loc, body_size: u32, priority: u8) -> Self {
        QueuedMessage {
            seq,
            msg: None,
            loc,
            body_size,
            priority,
            redelivered: false,
        }
    }

    pub fn has_record(&self) -> bool {
        self.loc != NO_LOC
    }
}

#[derive(Debug)]
pub struct ReadyList {
    /// Index = priority level; a queue without `x-max-priority` has one level.
    levels: Vec<VecDeque<QueuedMessage>>,
    len: usize,
    bytes: u64,
}

impl ReadyList {
    pub fn new(max_priority: Option<u8>) -> Self {
        let n = max_priority.map(|p| p as usize + 1).unwrap_or(1);
        ReadyList {
            levels: (0..n).map(|_| VecDeque::new()).collect(),
            len: 0,
            bytes: 0,
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

    fn level(&self, priority: u8) -> usize {
        (priority as usize).min(self.levels.len() - 1)
    }

    pub fn push(&mut self, qm: QueuedMessage) {
        let l = self.level(qm.priority);
        self.len += 1;
        self.bytes += qm.body_size as u64;
        self.levels[l].push_back(qm);
    }

    /// Puts a message back where its sequence number says it belongs.
    pub fn requeue(&mut self, qm: QueuedMessage) {
        let l = self.level(qm.priority);
        self.len += 1;
        self.bytes += qm.body_size as u64;
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
        self.levels.iter().rev().find_map(|l| l.front())
    }

    /// The head, mutably (to page its body back in).
    pub fn peek_mut(&mut self) -> Option<&mut QueuedMessage> {
        self.levels.iter_mut().rev().find_map(|l| l.front_mut())
    }

    pub fn pop(&mut self) -> Option<QueuedMessage> {
        let qm = self.levels.iter_mut().rev().find_map(|l| l.pop_front())?;
        self.len -= 1;
        self.bytes -= qm.body_size as u64;
        Some(qm)
    }

    /// Empties the list, returning what was in it.
    pub fn drain(&mut self) -> Vec<QueuedMessage> {
        let mut out = Vec::with_capacity(self.len);
        for l in &mut self.levels {
            out.extend(l.drain(..));
        }
        self.len = 0;
        self.bytes = 0;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::properties::Scanned;
    use bytes::Bytes;

    fn qm(seq: u64, prio: Option<u8>) -> QueuedMessage {
        let scanned = Scanned {
            priority: prio,
            ..Default::default()
        };
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
        assert!(
            std::mem::size_of::<QueuedMessage>() <= 40,
            "{}",
            std::mem::size_of::<QueuedMessage>()
        );
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
