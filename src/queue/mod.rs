//! A queue: its ready list, consumers and counters behind one short lock.
//! Publishers push inline from their connection task and the queue encodes
//! deliveries straight into consumers' outboxes (see `sink`), so nothing here
//! awaits and no task sits between the two sockets.

pub mod args;
pub mod ready;
pub mod sink;

use crate::error::{AmqpError, AmqpResult, rs};
use crate::message::Message;
use crate::protocol::FieldTable;
use crate::store::{Durable, MessageStore};
use args::QueueArgs;
use bytes::Bytes;
use parking_lot::Mutex;
use ready::{QueuedMessage, ReadyList};
use sink::{ConsumerCredit, Outbox, Refused};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A consumer as the queue sees it.
#[derive(Debug, Clone)]
pub struct Consumer {
    pub tag: Bytes,
    pub outbox: Arc<Outbox>,
    pub channel: u16,
    pub no_ack: bool,
    pub exclusive: bool,
    pub priority: i32,
    pub credit: Arc<ConsumerCredit>,
}

#[derive(Debug)]
struct QueueState {
    ready: ReadyList,
    /// Sorted by priority, highest first; rotated within a priority for round robin.
    consumers: Vec<Consumer>,
    unacked: u64,
    next_seq: u64,
    /// Auto-delete only happens once a consumer has existed.
    had_consumer: bool,
    deleted: bool,
}

/// Monotonic counters read by management and metrics.
#[derive(Debug, Default)]
pub struct QueueStats {
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub acked: AtomicU64,
    pub redelivered: AtomicU64,
}

#[derive(Debug)]
pub struct Queue {
    pub name: String,
    pub vhost: String,
    pub durable: bool,
    pub auto_delete: bool,
    /// The connection that owns an exclusive queue.
    pub exclusive_owner: Option<u64>,
    pub arguments: FieldTable,
    pub args: QueueArgs,
    pub stats: QueueStats,
    /// Set for queues whose definition is persisted: their persistent
    /// messages go to the log under `store_id`.
    pub store: Option<(u64, Arc<MessageStore>)>,
    state: Mutex<QueueState>,
}

/// What a queue is made from: its name and declared properties.
pub struct QueueSpec {
    pub name: String,
    pub vhost: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub exclusive_owner: Option<u64>,
    pub arguments: FieldTable,
    pub args: QueueArgs,
    pub store: Option<(u64, Arc<MessageStore>)>,
}

/// A message recovered from the log: the message, its slot, whether it had
/// been delivered before the restart.
pub type RecoveredMessage = (Arc<Message>, Arc<crate::store::Slot>, bool);

impl Queue {
    pub fn new(spec: QueueSpec) -> Self {
        let QueueSpec {
            name,
            vhost,
            durable,
            auto_delete,
            exclusive_owner,
            arguments,
            args,
            store,
        } = spec;
        let ready = ReadyList::new(args.max_priority.filter(|p| *p > 0));
        Queue {
            name,
            vhost,
            durable,
            auto_delete,
            exclusive_owner,
            arguments,
            args,
            stats: QueueStats::default(),
            store,
            state: Mutex::new(QueueState {
                ready,
                consumers: Vec::new(),
                unacked: 0,
                next_seq: 0,
                had_consumer: false,
                deleted: false,
            }),
        }
    }

    pub fn resource(&self) -> String {
        rs("queue", &self.name, &self.vhost)
    }

    /// Enqueues a routed message and hands out what consumers can take. A
    /// persistent message in a durable queue is appended to the log first;
    /// `waiter` (the publisher's confirm) hears when that append is synced.
    pub fn publish(self: &Arc<Self>, msg: Arc<Message>, waiter: Option<&Arc<dyn Durable>>) {
        let mut st = self.state.lock();
        if st.deleted {
            return;
        }
        let slot = match &self.store {
            Some((id, store)) if msg.persistent() => Some(store.append(*id, &msg, waiter.cloned())),
            _ => None,
        };
        st.next_seq += 1;
        let qm = QueuedMessage {
            seq: st.next_seq,
            msg,
            redelivered: false,
            slot,
        };
        st.ready.push(qm);
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        self.dispatch_locked(&mut st);
    }

    /// Re-runs delivery (after acks freed credit or a socket drained).
    pub fn dispatch(self: &Arc<Self>) {
        let mut st = self.state.lock();
        self.dispatch_locked(&mut st);
    }

    fn dispatch_locked(self: &Arc<Self>, st: &mut QueueState) {
        while !st.consumers.is_empty() {
            let Some(head) = st.ready.peek() else { break };
            let mut taken = None;
            for (i, c) in st.consumers.iter().enumerate() {
                match c
                    .outbox
                    .deliver(c.channel, &c.tag, &c.credit, c.no_ack, self, head)
                {
                    Ok(()) => {
                        taken = Some(i);
                        break;
                    }
                    Err(Refused::Busy) | Err(Refused::Gone) => continue,
                }
            }
            let Some(i) = taken else { break };
            if let Some(qm) = st.ready.pop() {
                if qm.redelivered {
                    self.stats.redelivered.fetch_add(1, Ordering::Relaxed);
                }
                self.after_delivery(&qm, st.consumers[i].no_ack);
            }
            self.stats.delivered.fetch_add(1, Ordering::Relaxed);
            if !st.consumers[i].no_ack {
                st.unacked += 1;
            }
            // Round robin among consumers of equal priority.
            let p = st.consumers[i].priority;
            let end = st.consumers[i..].iter().take_while(|c| c.priority == p).count() + i;
            st.consumers[i..end].rotate_left(1);
        }
    }

    /// Adds a consumer. `registered` runs under the queue lock once the
    /// consumer is accepted and before anything is delivered to it (the
    /// channel writes `consume-ok` there, so it precedes the first delivery).
    /// Log bookkeeping once a message left the ready list for a consumer.
    fn after_delivery(&self, qm: &QueuedMessage, no_ack: bool) {
        if let (Some((_, store)), Some(slot)) = (&self.store, &qm.slot) {
            if no_ack {
                store.settle(slot);
            } else {
                store.delivered(slot);
            }
        }
    }

    /// Settles messages in the log (acked, dropped, purged, deleted).
    fn forget(&self, msgs: &[QueuedMessage]) {
        if let Some((_, store)) = &self.store {
            for qm in msgs {
                if let Some(slot) = &qm.slot {
                    store.settle(slot);
                }
            }
        }
    }

    /// Puts recovered messages (in log order) on the ready list.
    pub fn recover(&self, msgs: Vec<RecoveredMessage>) {
        let mut st = self.state.lock();
        for (msg, slot, delivered) in msgs {
            st.next_seq += 1;
            let seq = st.next_seq;
            st.ready.push(QueuedMessage {
                seq,
                msg,
                redelivered: delivered,
                slot: Some(slot),
            });
        }
    }

    pub fn add_consumer(self: &Arc<Self>, c: Consumer, registered: impl FnOnce()) -> AmqpResult<()> {
        let mut st = self.state.lock();
        if st.deleted {
            return Err(AmqpError::not_found(format!("no {}", self.resource())));
        }
        if st.consumers.iter().any(|x| x.exclusive) || (c.exclusive && !st.consumers.is_empty()) {
            return Err(AmqpError::access_refused(format!(
                "{} in exclusive use",
                self.resource()
            )));
        }
        let at = st
            .consumers
            .iter()
            .take_while(|x| x.priority >= c.priority)
            .count();
        st.consumers.insert(at, c);
        st.had_consumer = true;
        registered();
        self.dispatch_locked(&mut st);
        Ok(())
    }

    /// Removes a consumer. Returns true when an auto-delete queue just lost
    /// its last consumer and should now be deleted.
    pub fn remove_consumer(&self, conn_id: u64, channel: u16, tag: &[u8]) -> bool {
        let mut st = self.state.lock();
        st.consumers
            .retain(|c| !(c.outbox.conn_id == conn_id && c.channel == channel && &c.tag[..] == tag));
        self.auto_delete && st.had_consumer && st.consumers.is_empty() && !st.deleted
    }

    /// `basic.get`: hands the head message to `outbox`. Returns whether one was sent.
    pub fn get(self: &Arc<Self>, outbox: &Outbox, channel: u16, no_ack: bool) -> bool {
        let mut st = self.state.lock();
        let Some(qm) = st.ready.pop() else {
            return false;
        };
        let remaining = st.ready.len() as u32;
        let slot = qm.slot.clone();
        match outbox.get_ok(channel, no_ack, self, qm, remaining) {
            Ok(()) => {
                if let (Some((_, store)), Some(slot)) = (&self.store, &slot) {
                    if no_ack {
                        store.settle(slot);
                    } else {
                        store.delivered(slot);
                    }
                }
                if !no_ack {
                    st.unacked += 1;
                }
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(qm) => {
                st.ready.requeue(qm);
                false
            }
        }
    }

    /// Deliveries settled without requeue (acked, or rejected and dropped).
    pub fn settled(self: &Arc<Self>, msgs: &[QueuedMessage]) {
        self.forget(msgs);
        let n = msgs.len() as u64;
        let mut st = self.state.lock();
        st.unacked = st.unacked.saturating_sub(n);
        self.stats.acked.fetch_add(n, Ordering::Relaxed);
        self.dispatch_locked(&mut st);
    }

    /// Puts delivered messages back in their original positions, redelivered.
    pub fn requeue(self: &Arc<Self>, msgs: Vec<QueuedMessage>) {
        let mut st = self.state.lock();
        st.unacked = st.unacked.saturating_sub(msgs.len() as u64);
        if st.deleted {
            drop(st);
            self.forget(&msgs);
            return;
        }
        for mut qm in msgs {
            qm.redelivered = true;
            st.ready.requeue(qm);
        }
        self.dispatch_locked(&mut st);
    }

    pub fn purge(&self) -> u32 {
        let gone = self.state.lock().ready.drain();
        self.forget(&gone);
        gone.len() as u32
    }

    pub fn message_count(&self) -> u32 {
        self.state.lock().ready.len() as u32
    }

    pub fn consumer_count(&self) -> u32 {
        self.state.lock().consumers.len() as u32
    }

    /// (ready, unacked, consumers, ready bytes) in one lock.
    pub fn counts(&self) -> (u64, u64, u64, u64) {
        let st = self.state.lock();
        (
            st.ready.len() as u64,
            st.unacked,
            st.consumers.len() as u64,
            st.ready.bytes(),
        )
    }

    pub fn is_deleted(&self) -> bool {
        self.state.lock().deleted
    }

    /// Marks the queue deleted; returns its consumers (to be told) and the
    /// number of ready messages dropped.
    pub fn mark_deleted(&self) -> (Vec<Consumer>, u32) {
        let mut st = self.state.lock();
        st.deleted = true;
        let gone = st.ready.drain();
        let consumers = std::mem::take(&mut st.consumers);
        drop(st);
        self.forget(&gone);
        (consumers, gone.len() as u32)
    }
}
