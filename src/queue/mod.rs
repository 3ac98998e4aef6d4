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
use crate::store::{Durable, MessageStore, NO_LOC, footprint};
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
    /// The message log: persistent messages of a persisted queue go there,
    /// and any message paged out of memory.
    pub store: Arc<MessageStore>,
    /// This queue's id in log records.
    pub store_id: u64,
    /// The definition is persisted (durable, not exclusive, not auto-delete).
    pub persisted: bool,
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
    pub store: Arc<MessageStore>,
    pub store_id: u64,
    pub persisted: bool,
}

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
            store_id,
            persisted,
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
            store_id,
            persisted,
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
    /// persistent message in a persisted queue is appended to the log first;
    /// `waiter` (the publisher's confirm) hears when that append is synced.
    /// Behind a backlog, once the broker's in-memory budget is spent, the
    /// message is paged out: only its log location stays in the queue.
    pub fn publish(self: &Arc<Self>, msg: Arc<Message>, waiter: Option<&Arc<dyn Durable>>) {
        let mut st = self.state.lock();
        if st.deleted {
            return;
        }
        let durable = self.persisted && msg.persistent();
        let page = !st.ready.is_empty() && self.store.over_budget();
        let loc = if durable || page {
            self.store.append(self.store_id, &msg, durable, if durable { waiter.cloned() } else { None })
        } else {
            NO_LOC
        };
        st.next_seq += 1;
        let qm = if page {
            QueuedMessage::paged(st.next_seq, loc, msg.body.len() as u32, msg.priority())
        } else {
            self.store.resident_add(footprint(msg.body.len() as u32));
            QueuedMessage::in_memory(st.next_seq, msg, loc)
        };
        st.ready.push(qm);
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        self.dispatch_locked(&mut st);
    }

    /// Brings the head's body back from the log if it was paged out. A record
    /// that cannot be read is dropped with an error (it cannot be delivered).
    fn page_in_head(&self, st: &mut QueueState) -> bool {
        loop {
            let Some(head) = st.ready.peek_mut() else {
                return false;
            };
            if head.msg.is_some() {
                return true;
            }
            match self.store.read(head.loc) {
                Ok(m) => {
                    head.msg = Some(Arc::new(m));
                    self.store.resident_add(footprint(head.body_size));
                    return true;
                }
                Err(e) => {
                    tracing::error!(queue = %self.name, error = %e, "cannot read a paged-out message; dropped");
                    if let Some(qm) = st.ready.pop() {
                        self.store.settle(qm.loc);
                    }
                }
            }
        }
    }

    /// Takes the head off the ready list (its bytes leave the memory budget).
    fn pop_ready(&self, st: &mut QueueState) -> Option<QueuedMessage> {
        let qm = st.ready.pop()?;
        if qm.msg.is_some() {
            self.store.resident_sub(footprint(qm.body_size));
        }
        Some(qm)
    }

    /// Re-runs delivery (after acks freed credit or a socket drained).
    pub fn dispatch(self: &Arc<Self>) {
        let mut st = self.state.lock();
        self.dispatch_locked(&mut st);
    }

    fn dispatch_locked(self: &Arc<Self>, st: &mut QueueState) {
        while !st.consumers.is_empty() {
            if !self.page_in_head(st) {
                break;
            }
            let Some(head) = st.ready.peek() else { break };
            let mut taken = None;
            for (i, c) in st.consumers.iter().enumerate() {
                match c.outbox.deliver(c.channel, &c.tag, &c.credit, c.no_ack, self, head) {
                    Ok(()) => {
                        taken = Some(i);
                        break;
                    }
                    Err(Refused::Busy) | Err(Refused::Gone) => continue,
                }
            }
            let Some(i) = taken else { break };
            if let Some(qm) = self.pop_ready(st) {
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
        if no_ack {
            self.store.settle(qm.loc);
        } else if !qm.redelivered {
            self.store.delivered(qm.loc);
        }
    }

    /// Settles messages in the log (acked, dropped, purged, deleted).
    fn forget(&self, msgs: &[QueuedMessage]) {
        for qm in msgs {
            self.store.settle(qm.loc);
        }
    }

    /// Empties the ready list (purge, delete), settling its records.
    fn drain_ready(&self, st: &mut QueueState) -> Vec<QueuedMessage> {
        let gone = st.ready.drain();
        let resident: u64 = gone.iter().filter(|m| m.msg.is_some()).map(|m| footprint(m.body_size)).sum();
        self.store.resident_sub(resident);
        self.forget(&gone);
        gone
    }

    /// Puts recovered messages (in log order) on the ready list.
    pub fn recover(&self, msgs: Vec<crate::store::Recovered>) {
        let mut st = self.state.lock();
        for r in msgs {
            st.next_seq += 1;
            let seq = st.next_seq;
            let mut qm = match r.message {
                Some(m) => QueuedMessage::in_memory(seq, Arc::new(m), r.loc),
                None => QueuedMessage::paged(seq, r.loc, r.body_size, r.priority),
            };
            qm.redelivered = r.delivered;
            st.ready.push(qm);
        }
    }

    /// Adds a consumer. `registered` runs under the queue lock once the
    /// consumer is accepted and before anything is delivered to it (the
    /// channel writes `consume-ok` there, so it precedes the first delivery).
    pub fn add_consumer(self: &Arc<Self>, c: Consumer, registered: impl FnOnce()) -> AmqpResult<()> {
        let mut st = self.state.lock();
        if st.deleted {
            return Err(AmqpError::not_found(format!("no {}", self.resource())));
        }
        if st.consumers.iter().any(|x| x.exclusive) || (c.exclusive && !st.consumers.is_empty()) {
            return Err(AmqpError::access_refused(format!("{} in exclusive use", self.resource())));
        }
        let at = st.consumers.iter().take_while(|x| x.priority >= c.priority).count();
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
        st.consumers.retain(|c| !(c.outbox.conn_id == conn_id && c.channel == channel && &c.tag[..] == tag));
        self.auto_delete && st.had_consumer && st.consumers.is_empty() && !st.deleted
    }

    /// `basic.get`: hands the head message to `outbox`. Returns whether one was sent.
    pub fn get(self: &Arc<Self>, outbox: &Outbox, channel: u16, no_ack: bool) -> bool {
        let mut st = self.state.lock();
        if !self.page_in_head(&mut st) {
            return false;
        }
        let Some(qm) = self.pop_ready(&mut st) else {
            return false;
        };
        let remaining = st.ready.len() as u32;
        let (l, first) = (qm.loc, !qm.redelivered);
        match outbox.get_ok(channel, no_ack, self, qm, remaining) {
            Ok(()) => {
                if no_ack {
                    self.store.settle(l);
                } else {
                    st.unacked += 1;
                    if first {
                        self.store.delivered(l);
                    }
                }
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(qm) => {
                self.store.resident_add(footprint(qm.body_size));
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
            if qm.msg.is_some() {
                self.store.resident_add(footprint(qm.body_size));
            }
            st.ready.requeue(qm);
        }
        self.dispatch_locked(&mut st);
    }

    pub fn purge(&self) -> u32 {
        let mut st = self.state.lock();
        self.drain_ready(&mut st).len() as u32
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
        (st.ready.len() as u64, st.unacked, st.consumers.len() as u64, st.ready.bytes())
    }

    pub fn is_deleted(&self) -> bool {
        self.state.lock().deleted
    }

    /// Marks the queue deleted; returns its consumers (to be told) and the
    /// number of ready messages dropped.
    pub fn mark_deleted(&self) -> (Vec<Consumer>, u32) {
        let mut st = self.state.lock();
        st.deleted = true;
        let gone = self.drain_ready(&mut st);
        (std::mem::take(&mut st.consumers), gone.len() as u32)
    }
}
