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
pub use ready::Tally;
use ready::{QueuedMessage, ReadyList};
use sink::{ConsumerCredit, Outbox, Refused};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

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

/// Why a message left a queue dead (the `reason` of its x-death entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Rejected,
    Expired,
    Maxlen,
    DeliveryLimit,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::Maxlen => "maxlen",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// Calls a queue back at a time (ms since the epoch): message expiry,
/// dead-lettering, `x-expires`. Implemented by the broker's timer thread, so
/// the queue needs no task of its own.
pub trait Timer: Send + Sync + std::fmt::Debug {
    fn schedule(&self, at_ms: u64, queue: Weak<Queue>);
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug)]
struct QueueState {
    ready: ReadyList,
    /// Sorted by priority, highest first; rotated within a priority for round
    /// robin. With single active consumer: registration order, no rotation.
    consumers: Vec<Consumer>,
    unacked: u64,
    /// Body bytes of the unacked deliveries (management's
    /// `message_bytes_unacknowledged`).
    unacked_bytes: u64,
    /// The persistent ones among the unacked deliveries.
    unacked_persistent: Tally,
    next_seq: u64,
    /// Auto-delete only happens once a consumer has existed.
    had_consumer: bool,
    deleted: bool,
    /// Messages that died here, waiting for the timer thread to dead-letter
    /// them (never done under this lock: the target may be another queue).
    dead: Vec<(Arc<Message>, Reason)>,
    /// The earliest time the timer will call this queue back; 0 = none.
    armed: u64,
    /// Last consume, get or redeclare (for `x-expires`).
    last_used: u64,
    /// Effective settings: arguments combined with policies.
    args: Arc<QueueArgs>,
}

/// Monotonic counters read by management and metrics.
#[derive(Debug, Default)]
pub struct QueueStats {
    pub published: AtomicU64,
    /// Deliveries to consumers, with and without acknowledgement.
    pub deliver: AtomicU64,
    pub deliver_no_ack: AtomicU64,
    /// `basic.get` (and management gets), with and without acknowledgement.
    pub get: AtomicU64,
    pub get_no_ack: AtomicU64,
    pub acked: AtomicU64,
    pub redelivered: AtomicU64,
    pub expired: AtomicU64,
    pub dropped: AtomicU64,
    /// Messages written to the log (persistent, or paged out on arrival)
    /// and read back from it: management's `disk_writes` and `disk_reads`.
    pub disk_writes: AtomicU64,
    pub disk_reads: AtomicU64,
    /// Sampled rates (management), see `broker::rates`.
    pub rates: crate::broker::rates::QueueRates,
}

impl QueueStats {
    /// RabbitMQ's `deliver_get`: deliveries and gets of both kinds.
    pub fn deliver_get(&self) -> u64 {
        [&self.deliver, &self.deliver_no_ack, &self.get, &self.get_no_ack]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
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
    /// What the arguments say (x-max-priority, single active consumer and
    /// consumer timeout come only from here); the effective settings, with
    /// policies applied, live in the state.
    pub declared: QueueArgs,
    /// Names and merged definition of the policies that apply (management).
    pub applied: parking_lot::RwLock<crate::broker::policy::Applied>,
    /// The effective consumer timeout (ms), `u64::MAX` for "use the
    /// broker's default"; an atomic because connections read it often.
    consumer_timeout: AtomicU64,
    pub stats: QueueStats,
    /// The message log: persistent messages of a persisted queue go there,
    /// and any message paged out of memory.
    pub store: Arc<MessageStore>,
    /// This queue's id in log records.
    pub store_id: u64,
    /// The definition is persisted (durable, not exclusive, not auto-delete).
    pub persisted: bool,
    /// Set for a delayed exchange's delay queue: expired messages are routed
    /// by that exchange instead of being dead-lettered.
    pub delay_for: Option<String>,
    timer: Option<Arc<dyn Timer>>,
    /// `state.deleted`, readable without the lock: connections check it
    /// before they use a queue they remembered (their route cache).
    gone: AtomicBool,
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
    pub timer: Option<Arc<dyn Timer>>,
    pub delay_for: Option<String>,
}

/// Parses a (validated) `expiration` property.
fn expiration_ms(m: &Message) -> Option<u64> {
    crate::message::parse_expiration(m.expiration()?).ok()
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
            timer,
            delay_for,
        } = spec;
        let ready = ReadyList::new(args.max_priority.filter(|p| *p > 0));
        Queue {
            name,
            vhost,
            durable,
            auto_delete,
            exclusive_owner,
            arguments,
            declared: args.clone(),
            applied: Default::default(),
            consumer_timeout: AtomicU64::new(args.consumer_timeout.unwrap_or(u64::MAX)),
            stats: QueueStats::default(),
            store,
            store_id,
            persisted,
            delay_for,
            timer,
            gone: AtomicBool::new(false),
            state: Mutex::new(QueueState {
                ready,
                consumers: Vec::new(),
                unacked: 0,
                unacked_bytes: 0,
                unacked_persistent: Tally::default(),
                next_seq: 0,
                had_consumer: false,
                deleted: false,
                dead: Vec::new(),
                armed: 0,
                last_used: now_ms(),
                args: Arc::new(args),
            }),
        }
    }

    pub fn resource(&self) -> String {
        rs("queue", &self.name, &self.vhost)
    }

    /// The consumer timeout set for this queue (argument or policy), if any.
    pub fn consumer_timeout(&self) -> Option<u64> {
        Some(self.consumer_timeout.load(Ordering::Relaxed)).filter(|t| *t != u64::MAX)
    }

    /// The effective settings (arguments with policies applied).
    pub fn args(&self) -> Arc<QueueArgs> {
        self.state.lock().args.clone()
    }

    /// Applies a policy change: new effective settings take effect at once,
    /// for messages already queued too where RabbitMQ does so (length
    /// limits trim the head; a new `x-expires` re-arms). A message keeps the
    /// deadline it was given when it was enqueued.
    pub fn set_policy(self: &Arc<Self>, args: QueueArgs, applied: crate::broker::policy::Applied) {
        *self.applied.write() = applied;
        self.consumer_timeout.store(args.consumer_timeout.unwrap_or(u64::MAX), Ordering::Relaxed);
        let mut st = self.state.lock();
        if *st.args == args {
            return;
        }
        st.args = Arc::new(args);
        if st.deleted {
            return;
        }
        if st.args.overflow.as_deref().unwrap_or("drop-head") == "drop-head" {
            let over = |st: &QueueState| {
                st.args.max_length.is_some_and(|m| st.ready.len() as u64 > m)
                    || st.args.max_length_bytes.is_some_and(|m| st.ready.bytes() > m)
            };
            while over(&st) {
                let Some(head) = self.pop_ready(&mut st) else { break };
                self.kill(&mut st, head, Reason::Maxlen);
            }
        }
        // With reject-publish[-dlx] a lowered limit only refuses new
        // messages (`maybe_drop_head` leaves the queue as it is).
        if let Some(exp) = st.args.expires
            && st.consumers.is_empty()
        {
            let at = st.last_used + exp;
            self.arm(&mut st, at);
        }
    }

    /// Asks the timer to call back at `at` unless it already will earlier.
    fn arm(self: &Arc<Self>, st: &mut QueueState, at: u64) {
        if let Some(t) = &self.timer
            && (st.armed == 0 || at < st.armed)
        {
            st.armed = at;
            t.schedule(at, Arc::downgrade(self));
        }
    }

    /// Arms the `x-expires` check (after creation, recovery, last consumer gone).
    pub fn start_timers(self: &Arc<Self>) {
        let mut st = self.state.lock();
        if let Some(exp) = st.args.expires
            && st.consumers.is_empty()
        {
            let at = st.last_used + exp;
            self.arm(&mut st, at);
        }
        if let Some(d) = st.ready.next_deadline() {
            self.arm(&mut st, d);
        }
    }

    /// Marks the queue used (redeclare) for `x-expires`.
    pub fn touch(&self) {
        self.state.lock().last_used = now_ms();
    }

    /// A queued message's body, read back from the log if it was paged out.
    fn materialize(&self, qm: &QueuedMessage) -> Option<Arc<Message>> {
        match &qm.msg {
            Some(m) => Some(m.clone()),
            None => match self.store.read(qm.loc) {
                Ok(m) => Some(Arc::new(m)),
                Err(e) => {
                    tracing::error!(queue = %self.name, error = %e, "cannot read a paged-out message");
                    None
                }
            },
        }
    }

    /// A message that left the ready list dead: settled in the log and, if
    /// the queue has a dead-letter exchange, handed to the timer thread.
    fn kill(self: &Arc<Self>, st: &mut QueueState, qm: QueuedMessage, reason: Reason) {
        self.store.settle(qm.loc);
        match reason {
            Reason::Expired => self.stats.expired.fetch_add(1, Ordering::Relaxed),
            _ => self.stats.dropped.fetch_add(1, Ordering::Relaxed),
        };
        if (st.args.dead_letter_exchange.is_some() || self.delay_for.is_some())
            && let Some(m) = self.materialize(&qm)
        {
            st.dead.push((m, reason));
            let now = now_ms();
            self.arm(st, now);
        }
    }

    /// Removes what has expired, wherever it sits; it is never delivered.
    fn expire(self: &Arc<Self>, st: &mut QueueState, now: u64) {
        if st.ready.next_deadline().is_none_or(|d| d > now) {
            return;
        }
        for qm in st.ready.take_expired(now) {
            if qm.msg.is_some() {
                self.store.resident_sub(footprint(qm.body_size));
            }
            self.kill(st, qm, Reason::Expired);
        }
    }

    /// Enqueues a routed message and hands out what consumers can take.
    /// Returns false if `x-overflow` refused it (`reject-publish[-dlx]`).
    ///
    /// A persistent message in a persisted queue is appended to the log
    /// first; `waiter` (the publisher's confirm) hears when that append is
    /// synced. Behind a backlog, once the broker's in-memory budget is spent,
    /// the message is paged out: only its log location stays in the queue.
    pub fn publish(self: &Arc<Self>, msg: Arc<Message>, waiter: Option<&Arc<dyn Durable>>) -> bool {
        self.publish_with_ttl(msg, waiter, None)
    }

    /// `publish` with a TTL that replaces the queue's and the message's
    /// (a delayed exchange's `x-delay`).
    pub fn publish_with_ttl(
        self: &Arc<Self>,
        msg: Arc<Message>,
        waiter: Option<&Arc<dyn Durable>>,
        ttl_override: Option<u64>,
    ) -> bool {
        let mut st = self.state.lock();
        if st.deleted {
            return true;
        }
        let size = msg.body.len() as u64;
        let args = st.args.clone();
        let full = |st: &QueueState, extra: u64, bytes: u64| {
            args.max_length.is_some_and(|m| st.ready.len() as u64 + extra > m)
                || args.max_length_bytes.is_some_and(|m| st.ready.bytes() + bytes > m)
        };
        let overflow = args.overflow.as_deref().unwrap_or("drop-head");
        let ttl = match (args.message_ttl, expiration_ms(&msg)) {
            _ if ttl_override.is_some() => ttl_override,
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // The clock is read only when something here depends on it: most
        // queues see neither TTLs nor dead-lettered overflow, and reading
        // it per publish was 1% of the transient path.
        let now = if ttl.is_some() || st.ready.next_deadline().is_some() || overflow == "reject-publish-dlx" {
            now_ms()
        } else {
            0
        };
        if overflow != "drop-head" && full(&st, 1, size) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            if overflow == "reject-publish-dlx" && args.dead_letter_exchange.is_some() {
                st.dead.push((msg, Reason::Maxlen));
                self.arm(&mut st, now);
            }
            return false;
        }
        // The deadline is fixed at enqueue (and kept across requeues). 0 is
        // reserved for "never", so TTL 0 means "already due".
        let deadline = ttl.map(|t| (now + t).max(1)).unwrap_or(0);
        let durable = self.persisted && msg.persistent();
        let page = !st.ready.is_empty() && self.store.over_budget();
        let loc = if durable || page {
            self.stats.disk_writes.fetch_add(1, Ordering::Relaxed);
            self.store.append(
                self.store_id,
                &msg,
                durable,
                deadline,
                if durable { waiter.cloned() } else { None },
                page,
            )
        } else {
            NO_LOC
        };
        st.next_seq += 1;
        let mut qm = if page {
            QueuedMessage::paged(st.next_seq, loc, size as u32, msg.priority())
        } else {
            self.store.resident_add(footprint(size as u32));
            QueuedMessage::in_memory(st.next_seq, msg, loc)
        }
        .with_persistent(durable);
        qm.deadline = deadline;
        // Expire what is due before this message joins, so that a TTL-0
        // message can still go to a consumer that takes it right now.
        self.expire(&mut st, now);
        st.ready.push(qm);
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        while overflow == "drop-head" && full(&st, 0, 0) {
            let Some(head) = self.pop_ready(&mut st) else { break };
            self.kill(&mut st, head, Reason::Maxlen);
        }
        if !st.consumers.is_empty() {
            self.deliver_ready(&mut st);
        }
        if deadline != 0 {
            // TTL 0: delivered above if a consumer could take it, else gone.
            self.expire(&mut st, now);
            if deadline > now {
                self.arm(&mut st, deadline);
            }
        }
        true
    }

    /// Brings the head's body back from the log if it was paged out. A record
    /// that cannot be read is dropped with an error (it cannot be delivered).
    fn page_in_head(&self, st: &mut QueueState) -> bool {
        /// Most messages and bytes of log read back in one go.
        const RUN: usize = 128;
        const RUN_BYTES: u32 = 256 * 1024;
        loop {
            let Some(head) = st.ready.peek_mut() else { return false };
            if head.msg.is_some() {
                return true;
            }
            // The head and the paged-out messages right behind it in the
            // same segment come back with one read.
            let (seg, first) = crate::store::split(head.loc);
            let mut locs = Vec::with_capacity(RUN);
            for qm in st.ready.head_run_mut() {
                let (s, off) = crate::store::split(qm.loc);
                let follows = locs.last().is_none_or(|l| *l < qm.loc);
                if qm.msg.is_some() || qm.loc == NO_LOC || s != seg || !follows || off - first > RUN_BYTES {
                    break;
                }
                locs.push(qm.loc);
                if locs.len() == RUN {
                    break;
                }
            }
            let mut read = self.store.read_run(&locs).into_iter();
            let mut head_failed = None;
            let (mut count, mut bytes) = (0, 0);
            for (i, qm) in st.ready.head_run_mut().take(locs.len()).enumerate() {
                match read.next() {
                    Some(Ok(m)) => {
                        qm.msg = Some(Arc::new(m));
                        self.store.resident_add(footprint(qm.body_size));
                        (count, bytes) = (count + 1, bytes + qm.body_size as u64);
                    }
                    // Behind the head, a failed read is retried when its turn comes.
                    Some(Err(e)) if i == 0 => head_failed = Some(e),
                    _ => {}
                }
            }
            st.ready.paged_in(count, bytes);
            self.stats.disk_reads.fetch_add(count, Ordering::Relaxed);
            let Some(e) = head_failed else { return true };
            tracing::error!(queue = %self.name, error = %e, "cannot read a paged-out message; dropped");
            if let Some(qm) = st.ready.pop() {
                self.store.settle(qm.loc);
            }
        }
    }

    /// With `x-delivery-limit`, a redelivered message carries the number of
    /// earlier deliveries in its `x-delivery-count` header.
    fn stamp_delivery_count(&self, st: &mut QueueState) {
        if st.args.delivery_limit.is_none() {
            return;
        }
        let Some(head) = st.ready.peek_mut() else { return };
        if head.deliveries == 0 {
            return;
        }
        if let Some(m) = &head.msg
            && let Some(stamped) = m.with_header("x-delivery-count", head.deliveries as i64)
        {
            head.msg = Some(Arc::new(stamped));
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
        if st.consumers.is_empty() || st.ready.is_empty() {
            return;
        }
        let now = now_ms();
        self.expire(st, now);
        self.deliver_ready(st);
    }

    /// Hands ready messages to consumers with credit (no expiry check).
    fn deliver_ready(self: &Arc<Self>, st: &mut QueueState) {
        let single = self.declared.single_active_consumer;
        while !st.consumers.is_empty() {
            if !self.page_in_head(st) {
                break;
            }
            self.stamp_delivery_count(st);
            let Some(head) = st.ready.peek() else { break };
            let mut taken = None;
            // Single active consumer: only the first registered one receives.
            let candidates = if single { &st.consumers[..1] } else { &st.consumers[..] };
            for (i, c) in candidates.iter().enumerate() {
                match c.outbox.deliver(c.channel, &c.tag, &c.credit, c.no_ack, self, head) {
                    Ok(()) => {
                        taken = Some(i);
                        break;
                    }
                    Err(Refused::Busy) | Err(Refused::Gone) => continue,
                }
            }
            let Some(i) = taken else { break };
            let (mut size, mut persistent) = (0, false);
            if let Some(qm) = self.pop_ready(st) {
                if qm.redelivered() {
                    self.stats.redelivered.fetch_add(1, Ordering::Relaxed);
                }
                (size, persistent) = (qm.body_size as u64, qm.persistent());
                self.after_delivery(&qm, st.consumers[i].no_ack);
            }
            let s = &self.stats;
            if st.consumers[i].no_ack { &s.deliver_no_ack } else { &s.deliver }
                .fetch_add(1, Ordering::Relaxed);
            if !st.consumers[i].no_ack {
                st.unacked += 1;
                st.unacked_bytes += size;
                if persistent {
                    st.unacked_persistent.add(1, size);
                }
            }
            if !single {
                // Round robin among consumers of equal priority.
                let p = st.consumers[i].priority;
                let end = st.consumers[i..].iter().take_while(|c| c.priority == p).count() + i;
                st.consumers[i..end].rotate_left(1);
            }
        }
    }

    /// Log bookkeeping once a message left the ready list for a consumer.
    fn after_delivery(&self, qm: &QueuedMessage, no_ack: bool) {
        if no_ack {
            self.store.settle(qm.loc);
        } else if !qm.redelivered() {
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
            }
            // Only persistent messages come back from the log.
            .with_persistent(true);
            qm.set_redelivered(r.delivered);
            qm.deadline = r.deadline;
            st.ready.push(qm);
        }
    }

    /// The timer's call: dead-letters what died, expires what is due, and
    /// says whether `x-expires` says the queue should go now.
    pub fn on_timer(self: &Arc<Self>) -> (Vec<(Arc<Message>, Reason)>, bool) {
        let mut st = self.state.lock();
        if st.deleted {
            return (Vec::new(), false);
        }
        let now = now_ms();
        st.armed = 0;
        self.expire(&mut st, now);
        let dead = std::mem::take(&mut st.dead);
        let mut delete = false;
        if let Some(exp) = st.args.expires
            && st.consumers.is_empty()
        {
            let at = st.last_used + exp;
            if at <= now {
                delete = true;
            } else {
                self.arm(&mut st, at);
            }
        }
        if let Some(d) = st.ready.next_deadline() {
            self.arm(&mut st, d);
        }
        if !st.dead.is_empty() {
            self.arm(&mut st, now);
        }
        (dead, delete)
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
        let at = if self.declared.single_active_consumer {
            st.consumers.len()
        } else {
            st.consumers.iter().take_while(|x| x.priority >= c.priority).count()
        };
        st.consumers.insert(at, c);
        st.had_consumer = true;
        st.last_used = now_ms();
        registered();
        self.dispatch_locked(&mut st);
        Ok(())
    }

    /// Removes a consumer. Returns true when an auto-delete queue just lost
    /// its last consumer and should now be deleted. With single active
    /// consumer, the next one in line takes over.
    pub fn remove_consumer(self: &Arc<Self>, conn_id: u64, channel: u16, tag: &[u8]) -> bool {
        let mut st = self.state.lock();
        st.consumers.retain(|c| !(c.outbox.conn_id == conn_id && c.channel == channel && &c.tag[..] == tag));
        if st.consumers.is_empty() {
            st.last_used = now_ms();
            if let Some(exp) = st.args.expires {
                let at = st.last_used + exp;
                self.arm(&mut st, at);
            }
        } else {
            self.dispatch_locked(&mut st);
        }
        self.auto_delete && st.had_consumer && st.consumers.is_empty() && !st.deleted
    }

    /// Which consumer tag is the single active one, if any.
    pub fn active_consumer(&self) -> Option<Bytes> {
        let st = self.state.lock();
        if self.declared.single_active_consumer { st.consumers.first().map(|c| c.tag.clone()) } else { None }
    }

    /// `basic.get`: hands the head message to `outbox`. Returns whether one was sent.
    pub fn get(self: &Arc<Self>, outbox: &Outbox, channel: u16, no_ack: bool) -> bool {
        let mut st = self.state.lock();
        st.last_used = now_ms();
        let now = st.last_used;
        self.expire(&mut st, now);
        if !self.page_in_head(&mut st) {
            return false;
        }
        self.stamp_delivery_count(&mut st);
        let Some(qm) = self.pop_ready(&mut st) else { return false };
        let remaining = st.ready.len() as u32;
        let (l, first, size, persistent) = (qm.loc, !qm.redelivered(), qm.body_size as u64, qm.persistent());
        match outbox.get_ok(channel, no_ack, self, qm, remaining) {
            Ok(()) => {
                if no_ack {
                    self.store.settle(l);
                } else {
                    st.unacked += 1;
                    st.unacked_bytes += size;
                    if persistent {
                        st.unacked_persistent.add(1, size);
                    }
                    if first {
                        self.store.delivered(l);
                    }
                }
                let s = &self.stats;
                if no_ack { &s.get_no_ack } else { &s.get }.fetch_add(1, Ordering::Relaxed);
                if !first {
                    s.redelivered.fetch_add(1, Ordering::Relaxed);
                }
                true
            }
            Err(qm) => {
                self.store.resident_add(footprint(qm.body_size));
                st.ready.requeue(qm);
                false
            }
        }
    }

    /// Takes the head message as an unacked delivery for an inspector (the
    /// management API's "get messages"), which settles or requeues it.
    /// Returns the message and how many stay ready.
    pub fn fetch(self: &Arc<Self>) -> Option<(QueuedMessage, u32)> {
        let mut st = self.state.lock();
        st.last_used = now_ms();
        let now = st.last_used;
        self.expire(&mut st, now);
        if !self.page_in_head(&mut st) {
            return None;
        }
        self.stamp_delivery_count(&mut st);
        let mut qm = self.pop_ready(&mut st)?;
        if qm.redelivered() {
            self.stats.redelivered.fetch_add(1, Ordering::Relaxed);
        } else {
            self.store.delivered(qm.loc);
        }
        qm.deliveries = qm.deliveries.saturating_add(1);
        st.unacked += 1;
        st.unacked_bytes += qm.body_size as u64;
        if qm.persistent() {
            st.unacked_persistent.add(1, qm.body_size as u64);
        }
        self.stats.get.fetch_add(1, Ordering::Relaxed);
        Some((qm, st.ready.len() as u32))
    }

    /// Samples this queue's counters for management's rates.
    pub fn sample_rates(&self, now: std::time::Instant) {
        let (ready, unacked, _, _) = self.counts();
        let s = &self.stats;
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        s.rates.sample(
            now,
            [
                c(&s.published),
                c(&s.deliver),
                c(&s.deliver_no_ack),
                c(&s.get),
                c(&s.get_no_ack),
                s.deliver_get(),
                c(&s.acked),
                c(&s.redelivered),
                ready + unacked,
                ready,
                unacked,
            ],
        );
    }

    /// Deliveries settled without requeue (acked, or rejected and dropped).
    pub fn settled(self: &Arc<Self>, msgs: &[QueuedMessage]) {
        self.forget(msgs);
        let n = msgs.len() as u64;
        let mut st = self.state.lock();
        st.unacked = st.unacked.saturating_sub(n);
        st.unacked_bytes = st.unacked_bytes.saturating_sub(body_bytes(msgs));
        let (count, bytes) = persistent_tally(msgs);
        st.unacked_persistent.sub(count, bytes);
        self.stats.acked.fetch_add(n, Ordering::Relaxed);
        self.dispatch_locked(&mut st);
    }

    /// Puts delivered messages back in their original positions, redelivered.
    /// Past `x-delivery-limit`, a message is dead-lettered instead.
    pub fn requeue(self: &Arc<Self>, msgs: Vec<QueuedMessage>) {
        let mut st = self.state.lock();
        st.unacked = st.unacked.saturating_sub(msgs.len() as u64);
        st.unacked_bytes = st.unacked_bytes.saturating_sub(body_bytes(&msgs));
        let (count, bytes) = persistent_tally(&msgs);
        st.unacked_persistent.sub(count, bytes);
        if st.deleted {
            drop(st);
            self.forget(&msgs);
            return;
        }
        for mut qm in msgs {
            qm.set_redelivered(true);
            if let Some(limit) = st.args.delivery_limit
                && qm.deliveries as u64 > limit
            {
                self.kill(&mut st, qm, Reason::DeliveryLimit);
                continue;
            }
            if qm.msg.is_some() {
                self.store.resident_add(footprint(qm.body_size));
            }
            st.ready.requeue(qm);
        }
        self.dispatch_locked(&mut st);
        if let Some(d) = st.ready.next_deadline() {
            self.arm(&mut st, d);
        }
    }

    pub fn purge(&self) -> u32 {
        let mut st = self.state.lock();
        self.drain_ready(&mut st).len() as u32
    }

    pub fn message_count(&self) -> u32 {
        self.state.lock().ready.len() as u32
    }

    /// The consumers and, with single active consumer, the active one's tag.
    pub fn consumers(&self) -> (Vec<Consumer>, Option<Bytes>) {
        let st = self.state.lock();
        let active = if self.declared.single_active_consumer {
            st.consumers.first().map(|c| c.tag.clone())
        } else {
            None
        };
        (st.consumers.clone(), active)
    }

    pub fn consumer_count(&self) -> u32 {
        self.state.lock().consumers.len() as u32
    }

    /// (ready, unacked, consumers, ready bytes) in one lock.
    pub fn counts(&self) -> (u64, u64, u64, u64) {
        let st = self.state.lock();
        (st.ready.len() as u64, st.unacked, st.consumers.len() as u64, st.ready.bytes())
    }

    /// Body bytes of the ready and of the unacked messages.
    pub fn message_bytes(&self) -> (u64, u64) {
        let st = self.state.lock();
        (st.ready.bytes(), st.unacked_bytes)
    }

    /// Persistent messages (ready and unacked) and ready messages paged out
    /// to the log, each with their body bytes.
    pub fn storage(&self) -> (Tally, Tally) {
        let st = self.state.lock();
        let mut persistent = st.ready.persistent();
        persistent.add(st.unacked_persistent.count, st.unacked_persistent.bytes);
        (persistent, st.ready.paged())
    }

    pub fn is_deleted(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    /// Marks the queue deleted; returns its consumers (to be told) and the
    /// number of ready messages dropped (queue deletion never dead-letters).
    pub fn mark_deleted(&self) -> (Vec<Consumer>, u32) {
        let mut st = self.state.lock();
        st.deleted = true;
        self.gone.store(true, Ordering::Release);
        let gone = self.drain_ready(&mut st);
        st.dead.clear();
        (std::mem::take(&mut st.consumers), gone.len() as u32)
    }
}

/// The body bytes of `msgs`.
fn body_bytes(msgs: &[QueuedMessage]) -> u64 {
    msgs.iter().map(|m| m.body_size as u64).sum()
}

/// How many of `msgs` are persistent, and their body bytes.
fn persistent_tally(msgs: &[QueuedMessage]) -> (u64, u64) {
    msgs.iter().filter(|m| m.persistent()).fold((0, 0), |(n, b), m| (n + 1, b + m.body_size as u64))
}
