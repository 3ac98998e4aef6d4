//! The consumer side of a queue: a connection's outbound buffer plus the
//! per-channel delivery bookkeeping (delivery tags, unacked messages, prefetch
//! credit, consumers). Queues encode deliveries straight into it under one
//! short lock. The bytes reach the socket from the thread that produced
//! them when the connection's writer task is idle (at the end of a reader's
//! batch, or from the persister for the confirms it releases), otherwise
//! through the writer task.
//!
//! Lock order: a queue's lock may be held while taking an outbox lock, never
//! the reverse. Code holding an outbox lock must not call into a queue.

use super::Queue;
use super::ready::QueuedMessage;
use crate::channel_map::ChannelMap;
use crate::protocol::fast;
use crate::protocol::frame;
use crate::store::Durable;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use tokio::sync::Notify;

/// Per-consumer prefetch (RabbitMQ's `global=false` QoS). Changed only under
/// the owning outbox's lock; atomics just make it shareable.
#[derive(Debug, Default)]
pub struct ConsumerCredit {
    pub limit: AtomicU32,
    pub unacked: AtomicU32,
}

/// A delivery awaiting ack on a channel.
#[derive(Debug)]
pub struct Unacked {
    pub queue: Arc<Queue>,
    pub qm: QueuedMessage,
    /// The consumer's credit, or `None` for `basic.get`.
    pub credit: Option<Arc<ConsumerCredit>>,
    /// When it was delivered (ms since the epoch), for the consumer timeout.
    pub at: u64,
}

#[derive(Debug)]
pub struct ConsumerEntry {
    pub queue: Arc<Queue>,
    pub credit: Arc<ConsumerCredit>,
    pub no_ack: bool,
}

/// Publisher confirms of one channel. Sequence numbers whose message went to
/// the log wait in `waiting` until the persister has synced it; everything
/// else is confirmable as soon as the reader has routed it. Confirms go out
/// as `basic.ack(multiple)` up to the first still-waiting number.
#[derive(Debug, Default)]
pub struct ConfirmTracker {
    /// Highest sequence number the reader has finished routing.
    pub published: u64,
    /// Still waiting for the log, ascending.
    pub waiting: VecDeque<u64>,
    /// Completed but failed: nacked instead of acked.
    pub failed: BTreeSet<u64>,
    /// Confirms have been sent up to here.
    pub confirmed: u64,
}

impl ConfirmTracker {
    /// Marks `seq` as written (or failed).
    pub fn complete(&mut self, seq: u64, ok: bool) {
        if let Some(pos) = self.waiting.iter().position(|s| *s == seq) {
            self.waiting.remove(pos);
        }
        if !ok {
            self.failed.insert(seq);
        }
    }

    /// Encodes the confirms that became sendable; returns how many.
    pub fn flush(&mut self, channel: u16, buf: &mut BytesMut) -> u64 {
        let upto = match self.waiting.front() {
            Some(w) => (w - 1).min(self.published),
            None => self.published,
        };
        if upto <= self.confirmed {
            return 0;
        }
        if self.failed.is_empty() {
            // One confirm goes out with `multiple` unset, several as one
            // `multiple` ack: what RabbitMQ sends (`rabbit_channel:send_confirms`).
            fast::encode_confirm(buf, channel, upto, upto - self.confirmed > 1, true);
        } else {
            for s in self.confirmed + 1..=upto {
                let ok = !self.failed.remove(&s);
                fast::encode_confirm(buf, channel, s, false, ok);
            }
        }
        let n = upto - self.confirmed;
        self.confirmed = upto;
        n
    }
}

/// The confirm of one persistent publish: released when every log append
/// it waits for is synced. Created with one hold, released by the channel
/// once routing is done, so it cannot complete half-way through routing.
pub struct ConfirmWaiter {
    pub outbox: Arc<Outbox>,
    pub channel: u16,
    pub seq: u64,
    remaining: AtomicUsize,
    ok: AtomicBool,
}

impl ConfirmWaiter {
    pub fn new(outbox: Arc<Outbox>, channel: u16, seq: u64) -> Self {
        ConfirmWaiter { outbox, channel, seq, remaining: AtomicUsize::new(1), ok: AtomicBool::new(true) }
    }
}

impl Durable for ConfirmWaiter {
    fn add(&self) {
        self.remaining.fetch_add(1, Ordering::AcqRel);
    }

    fn done(&self, ok: bool) -> bool {
        if !ok {
            self.ok.store(false, Ordering::Release);
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return false;
        }
        let ok = self.ok.load(Ordering::Acquire);
        let (ch, seq) = (self.channel, self.seq);
        self.outbox.with(|st| {
            if let Some(d) = st.channels.get_mut(ch) {
                d.confirms.complete(seq, ok);
            }
        });
        true
    }

    fn stream(&self) -> (usize, u16) {
        (Arc::as_ptr(&self.outbox) as usize, self.channel)
    }

    fn flush(&self) {
        let ch = self.channel;
        let direct = self.outbox.with(|st| {
            let from = st.buf.len();
            let OutState { buf, channels, .. } = st;
            if let Some(d) = channels.get_mut(ch) {
                let n = d.confirms.flush(ch, buf);
                d.counters.confirm += n;
                self.outbox.count_confirms(n);
            }
            st.write_direct(from)
        });
        self.outbox.add_sent(direct);
    }
}

/// What one channel's deliveries share between the queues and the reader.
#[derive(Debug, Default)]
pub struct ChannelDeliveries {
    /// Message counters (management's channel `message_stats`) and rates.
    pub counters: ChannelCounters,
    pub rates: crate::broker::rates::ChannelRates,
    pub confirms: ConfirmTracker,
    pub next_tag: u64,
    pub unacked: BTreeMap<u64, Unacked>,
    /// RabbitMQ's `global=true` QoS: shared by the channel's consumers.
    pub global_limit: u32,
    pub global_unacked: u32,
    pub consumers: HashMap<Bytes, ConsumerEntry>,
}

#[derive(Debug)]
pub struct OutState {
    pub buf: BytesMut,
    /// No more deliveries: the connection is going away.
    pub closed: bool,
    /// Flush what is buffered, then close the socket.
    pub shutdown: bool,
    pub frame_max: u32,
    pub channels: ChannelMap<ChannelDeliveries>,
    /// A queue skipped this connection because `buf` was over the high water
    /// mark; the writer re-dispatches the consumers' queues once it drains.
    pub starved: bool,
    /// The client announced `consumer_cancel_notify`.
    pub cancel_notify: bool,
    /// With `shutdown`: the client asked to close, so the socket is not shut
    /// for writing after `close-ok`; as RabbitMQ, the broker waits for the
    /// client to close first.
    pub keep_open: bool,
    /// The writer task holds bytes it took from `buf` and has not finished
    /// writing them: nothing may be written to the socket past it.
    pub writing: bool,
    /// A second handle on a plain TCP socket, for writes from outside the
    /// writer task (see `OutState::write_direct`); `None` for TLS, and once
    /// the connection ends (so the socket closes when the reader drops it).
    pub direct: Option<Arc<tokio::net::TcpStream>>,
}

#[derive(Debug)]
pub struct Outbox {
    pub conn_id: u64,
    /// This outbox itself, for the held-wake list (`Batch`).
    me: std::sync::Weak<Outbox>,
    /// The broker's and the vhost's confirm counters (management, metrics).
    confirmed_total: [Arc<AtomicU64>; 2],
    state: Mutex<OutState>,
    notify: Notify,
    /// Signalled by the writer after each write (readers waiting for room).
    drained: Notify,
    high_water: usize,
    /// Bytes the writer has written to the socket (management).
    sent: AtomicU64,
}

/// Why a delivery did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No credit (prefetch) or the socket buffer is full: try another consumer.
    Busy,
    /// The consumer's channel or connection is gone.
    Gone,
}

thread_local! {
    /// Outboxes that got bytes during the current reader batch on this
    /// thread (`None` outside a batch).
    static HELD: std::cell::RefCell<Option<Vec<Arc<Outbox>>>> = const { std::cell::RefCell::new(None) };
}

/// A reader's batch: from `begin` until the guard drops, writers are not
/// woken for the bytes queues and confirms put in outboxes; at the end each
/// touched outbox is written once, from this thread, when its writer is
/// idle. One read of a publisher's socket so becomes one write per consumer
/// connection without a task wake-up per write. The guard is not `Send`, so
/// it cannot be held across an `.await` (the batch is synchronous code).
pub struct Batch {
    /// This guard started the batch (a nested one leaves it to the outer).
    outer: bool,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Batch {
    pub fn begin() -> Self {
        let outer = HELD.with(|h| {
            let mut h = h.borrow_mut();
            let outer = h.is_none();
            if outer {
                *h = Some(Vec::new());
            }
            outer
        });
        Batch { outer, _not_send: std::marker::PhantomData }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if !self.outer {
            return;
        }
        let held = HELD.with(|h| h.borrow_mut().take()).unwrap_or_default();
        for o in held {
            o.flush_held();
        }
    }
}

impl OutState {
    /// Writes `buf` to the socket from the calling thread when that cannot
    /// overtake anything: the writer task is idle and `buf` held nothing
    /// before `from` (the caller's new bytes). Whatever the socket does not
    /// take at once stays in `buf` for the writer. Used at the end of a
    /// reader's batch and by the persister for the confirms it releases: the
    /// client gets the bytes without waiting for the writer task to be
    /// woken and run. Returns bytes written.
    pub fn write_direct(&mut self, from: usize) -> usize {
        if from != 0 || self.writing || self.buf.is_empty() {
            return 0;
        }
        let Some(sock) = self.direct.as_ref() else { return 0 };
        // Non-blocking; callable from any thread.
        match sock.try_write(&self.buf) {
            Ok(n) => {
                let _ = self.buf.split_to(n);
                n
            }
            // WouldBlock and errors: the writer takes the bytes and sees the error.
            Err(_) => 0,
        }
    }
}

impl Outbox {
    pub fn new(conn_id: u64, high_water: usize, confirmed_total: [Arc<AtomicU64>; 2]) -> Arc<Self> {
        Arc::new_cyclic(|me| Outbox {
            conn_id,
            me: me.clone(),
            confirmed_total,
            state: Mutex::new(OutState {
                buf: BytesMut::with_capacity(4096),
                closed: false,
                shutdown: false,
                frame_max: frame::FRAME_MIN_SIZE,
                channels: ChannelMap::new(),
                starved: false,
                cancel_notify: false,
                keep_open: false,
                writing: false,
                direct: None,
            }),
            notify: Notify::new(),
            drained: Notify::new(),
            high_water,
            sent: AtomicU64::new(0),
        })
    }

    /// Counts bytes written to the socket.
    pub fn add_sent(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn sent_bytes(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Adds to the broker's count of confirms sent.
    pub fn count_confirms(&self, n: u64) {
        if n > 0 {
            for c in &self.confirmed_total {
                c.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Runs `f` on the locked state, waking the writer if it buffered bytes.
    pub fn with<R>(&self, f: impl FnOnce(&mut OutState) -> R) -> R {
        let mut st = self.state.lock();
        let before = st.buf.len();
        let r = f(&mut st);
        let shutdown = st.shutdown;
        let wake = before == 0 && !st.buf.is_empty();
        drop(st);
        if shutdown {
            self.notify.notify_one();
        } else if wake {
            self.wake();
        }
        r
    }

    /// Tells the writer there are bytes to write; inside a reader's `Batch`
    /// the wake is held until the batch ends, when the bytes are usually
    /// written directly (`flush_held`).
    fn wake(&self) {
        // Called when the buffer goes from empty to not, so an outbox is
        // listed once per batch (twice at most, if its writer emptied the
        // buffer meanwhile; a second flush finds nothing to do).
        let held = HELD.with(|h| {
            let mut h = h.borrow_mut();
            let Some(list) = h.as_mut() else { return false };
            if let Some(me) = self.me.upgrade() {
                list.push(me);
            }
            true
        });
        if !held {
            self.notify.notify_one();
        }
    }

    /// End of a reader batch: writes what this outbox holds from this
    /// thread when the writer task is idle, and wakes the writer only for
    /// what is left (a full socket, TLS, shutdown, starved consumers).
    fn flush_held(&self) {
        let mut st = self.state.lock();
        let n = if st.shutdown { 0 } else { st.write_direct(0) };
        let done = st.buf.is_empty() && !st.starved && !st.shutdown;
        drop(st);
        if n > 0 {
            self.add_sent(n);
            self.signal_drained();
        }
        if !done {
            self.notify.notify_one();
        }
    }

    /// Appends frames built by `f` to the outbound buffer.
    pub fn send(&self, f: impl FnOnce(&mut BytesMut)) {
        self.with(|st| {
            if !st.shutdown {
                f(&mut st.buf)
            }
        })
    }

    /// Waits until the outbound buffer is under the high water mark, so a
    /// peer that does not read its socket stops being read (credit flow).
    pub async fn wait_for_room(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            {
                let st = self.state.lock();
                if st.buf.len() < self.high_water || st.shutdown {
                    return;
                }
            }
            drained.await;
        }
    }

    /// Called by the writer after a write.
    pub fn signal_drained(&self) {
        self.drained.notify_waiters();
    }

    pub async fn wait(&self) {
        self.notify.notified().await
    }

    /// Swaps the buffered bytes out for the writer. Returns the starved flag.
    pub fn take(&self, spare: &mut BytesMut) -> (bool, bool) {
        let mut st = self.state.lock();
        std::mem::swap(&mut st.buf, spare);
        st.writing = !spare.is_empty();
        let starved = std::mem::take(&mut st.starved);
        (starved, st.shutdown)
    }

    /// Called by the writer once the bytes it took are written.
    pub fn written(&self, n: usize) {
        self.add_sent(n);
        self.state.lock().writing = false;
    }

    /// A consumer on this connection acknowledges (its next deliveries wait
    /// for the acks the connection sends), or a delivery awaits its ack.
    pub fn awaits_acks(&self) -> bool {
        let st = self.state.lock();
        st.channels.values().any(|c| !c.unacked.is_empty() || c.consumers.values().any(|e| !e.no_ack))
    }

    /// Queues whose consumers live on this connection (to re-dispatch).
    pub fn consumer_queues(&self) -> Vec<Arc<Queue>> {
        let st = self.state.lock();
        let mut out: Vec<Arc<Queue>> = Vec::new();
        for ch in st.channels.values() {
            for c in ch.consumers.values() {
                if !out.iter().any(|q| Arc::ptr_eq(q, &c.queue)) {
                    out.push(c.queue.clone());
                }
            }
        }
        out
    }

    /// Encodes a `basic.deliver` if the consumer has credit.
    pub fn deliver(
        &self,
        channel: u16,
        consumer_tag: &Bytes,
        credit: &Arc<ConsumerCredit>,
        no_ack: bool,
        queue: &Arc<Queue>,
        qm: &QueuedMessage,
    ) -> Result<(), Refused> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(Refused::Gone);
        }
        if st.buf.len() >= self.high_water {
            st.starved = true;
            return Err(Refused::Busy);
        }
        let was_empty = st.buf.is_empty();
        let OutState { buf, channels, frame_max, .. } = &mut *st;
        let Some(ch) = channels.get_mut(channel) else {
            return Err(Refused::Gone);
        };
        if !no_ack {
            let limit = credit.limit.load(Ordering::Relaxed);
            if limit != 0 && credit.unacked.load(Ordering::Relaxed) >= limit {
                return Err(Refused::Busy);
            }
            if ch.global_limit != 0 && ch.global_unacked >= ch.global_limit {
                return Err(Refused::Busy);
            }
        }
        ch.next_tag += 1;
        let tag = ch.next_tag;
        let Some(m) = &qm.msg else {
            return Err(Refused::Busy);
        };
        fast::encode_deliver(buf, channel, consumer_tag, tag, qm.redelivered(), &m.exchange, &m.routing_key);
        frame::encode_content_header(buf, channel, m.body_size(), &m.properties);
        frame::encode_body(buf, channel, &m.body, *frame_max);
        if no_ack {
            ch.counters.deliver_no_ack += 1;
        } else {
            ch.counters.deliver += 1;
        }
        ch.counters.redeliver += qm.redelivered() as u64;
        if !no_ack {
            credit.unacked.fetch_add(1, Ordering::Relaxed);
            ch.global_unacked += 1;
            ch.unacked.insert(
                tag,
                Unacked {
                    queue: queue.clone(),
                    qm: delivered_once_more(qm),
                    credit: Some(credit.clone()),
                    at: super::now_ms(),
                },
            );
        }
        drop(st);
        if was_empty {
            self.wake();
        }
        Ok(())
    }

    /// A direct reply-to delivery: no queue, no ack, no credit. Returns false
    /// if the channel is gone (the reply is then lost, as in RabbitMQ).
    pub fn deliver_direct(&self, channel: u16, consumer_tag: &[u8], msg: &crate::message::Message) -> bool {
        self.with(|st| {
            let OutState { buf, channels, frame_max, closed, .. } = st;
            let ch = match channels.get_mut(channel) {
                Some(ch) if !*closed => ch,
                _ => return false,
            };
            ch.next_tag += 1;
            fast::encode_deliver(
                buf,
                channel,
                consumer_tag,
                ch.next_tag,
                false,
                &msg.exchange,
                &msg.routing_key,
            );
            frame::encode_content_header(buf, channel, msg.body_size(), &msg.properties);
            frame::encode_body(buf, channel, &msg.body, *frame_max);
            ch.counters.deliver_no_ack += 1;
            true
        })
    }

    /// Encodes a `basic.get-ok` (never limited by prefetch).
    pub fn get_ok(
        &self,
        channel: u16,
        no_ack: bool,
        queue: &Arc<Queue>,
        qm: QueuedMessage,
        remaining: u32,
    ) -> Result<(), QueuedMessage> {
        self.with(|st| {
            let OutState { buf, channels, frame_max, closed, .. } = st;
            let ch = match channels.get_mut(channel) {
                Some(ch) if !*closed => ch,
                _ => return Err(qm),
            };
            let Some(m) = &qm.msg else { return Err(qm) };
            ch.next_tag += 1;
            let tag = ch.next_tag;
            fast::encode_get_ok(buf, channel, tag, qm.redelivered(), &m.exchange, &m.routing_key, remaining);
            frame::encode_content_header(buf, channel, m.body_size(), &m.properties);
            frame::encode_body(buf, channel, &m.body, *frame_max);
            if no_ack {
                ch.counters.get_no_ack += 1;
            } else {
                ch.counters.get += 1;
            }
            ch.counters.redeliver += qm.redelivered() as u64;
            if !no_ack {
                ch.unacked.insert(
                    tag,
                    Unacked {
                        queue: queue.clone(),
                        qm: delivered_once_more(&qm),
                        credit: None,
                        at: super::now_ms(),
                    },
                );
            }
            Ok(())
        })
    }
}

/// The unacked copy of a delivered message counts one more delivery.
fn delivered_once_more(qm: &QueuedMessage) -> QueuedMessage {
    let mut u = qm.clone();
    u.deliveries = u.deliveries.saturating_add(1);
    u
}

/// One channel's message counters, kept under the outbox lock that every
/// delivery, get, settlement and confirm of the channel takes anyway;
/// publishes are added once per read batch by the connection.
#[derive(Debug, Default, Clone, Copy)]
pub struct ChannelCounters {
    pub publish: u64,
    pub confirm: u64,
    pub ack: u64,
    pub deliver: u64,
    pub deliver_no_ack: u64,
    pub get: u64,
    pub get_no_ack: u64,
    pub get_empty: u64,
    pub redeliver: u64,
    pub return_unroutable: u64,
    pub drop_unroutable: u64,
}

impl ChannelCounters {
    /// In `rates::CHANNEL_RATES` order.
    pub fn values(&self) -> [u64; 12] {
        let deliver_get = self.deliver + self.deliver_no_ack + self.get + self.get_no_ack;
        [
            self.publish,
            self.confirm,
            self.ack,
            self.deliver,
            self.deliver_no_ack,
            self.get,
            self.get_no_ack,
            self.get_empty,
            deliver_get,
            self.redeliver,
            self.return_unroutable,
            self.drop_unroutable,
        ]
    }
}

impl ChannelDeliveries {
    /// Removes deliveries being acked/rejected: one tag, or all up to it with
    /// `multiple` (tag 0 + multiple = everything). `None` = unknown tag, also
    /// with `multiple`: RabbitMQ's `rabbit_channel:collect_acks/5` walks the
    /// unacked deliveries up to the tag and fails when the tag itself is not
    /// among them (then the channel closes and all of them are requeued).
    pub fn settle(&mut self, tag: u64, multiple: bool) -> Option<Vec<Unacked>> {
        let taken: Vec<Unacked> = if multiple {
            let keys: Vec<u64> = if tag == 0 {
                self.unacked.keys().copied().collect()
            } else {
                if !self.unacked.contains_key(&tag) {
                    return None;
                }
                self.unacked.range(..=tag).map(|(k, _)| *k).collect()
            };
            keys.into_iter().filter_map(|k| self.unacked.remove(&k)).collect()
        } else {
            vec![self.unacked.remove(&tag)?]
        };
        for u in &taken {
            self.release(u);
        }
        Some(taken)
    }

    /// Everything unacked (channel close, recover).
    pub fn take_all(&mut self) -> Vec<Unacked> {
        let all: Vec<Unacked> = std::mem::take(&mut self.unacked).into_values().collect();
        for u in &all {
            self.release(u);
        }
        all
    }

    fn release(&mut self, u: &Unacked) {
        if let Some(c) = &u.credit {
            c.unacked.fetch_sub(1, Ordering::Relaxed);
            self.global_unacked = self.global_unacked.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// An outbox whose direct handle is the server end of a loopback
    /// connection; the client end reads (blocking, with a timeout).
    async fn outbox_on_socket() -> (Arc<Outbox>, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let server = tokio::net::TcpStream::from_std(server).unwrap();
        // Direct writes go by tokio's readiness, known once the driver saw it.
        server.writable().await.unwrap();
        let outbox = Outbox::new(1, 1 << 20, [Arc::default(), Arc::default()]);
        outbox.with(|st| st.direct = Some(Arc::new(server)));
        client.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        (outbox, client)
    }

    #[tokio::test]
    async fn direct_writes_only_when_nothing_is_ahead() {
        let (outbox, mut client) = outbox_on_socket().await;
        // Idle writer, empty buffer: the bytes go straight to the socket.
        let n = outbox.with(|st| {
            st.buf.extend_from_slice(b"abc");
            st.write_direct(0)
        });
        assert_eq!(n, 3);
        assert!(outbox.with(|st| st.buf.is_empty()));
        let mut got = [0u8; 3];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abc");

        // Bytes already queued for the writer: the new ones wait behind them.
        let n = outbox.with(|st| {
            st.buf.extend_from_slice(b"old");
            let from = st.buf.len();
            st.buf.extend_from_slice(b"new");
            st.write_direct(from)
        });
        assert_eq!(n, 0);
        assert_eq!(outbox.with(|st| st.buf.to_vec()), b"oldnew");

        // The writer holds bytes it has not finished writing: nothing overtakes them.
        let mut spare = BytesMut::new();
        outbox.take(&mut spare);
        let n = outbox.with(|st| {
            st.buf.extend_from_slice(b"xyz");
            st.write_direct(0)
        });
        assert_eq!(n, 0);
        outbox.written(spare.len());
        let n = outbox.with(|st| st.write_direct(0));
        assert_eq!(n, 3);

        // After the connection ends there is no second handle to write through.
        outbox.with(|st| {
            st.direct = None;
            st.buf.extend_from_slice(b"late");
        });
        assert_eq!(outbox.with(|st| st.write_direct(0)), 0);
    }

    #[tokio::test]
    async fn a_batch_writes_what_it_held_when_it_ends() {
        let (outbox, mut client) = outbox_on_socket().await;
        {
            let _outer = Batch::begin();
            {
                let _inner = Batch::begin();
                outbox.send(|b| b.extend_from_slice(b"one"));
            }
            // The inner guard leaves the flush to the outer one.
            assert_eq!(outbox.with(|st| st.buf.to_vec()), b"one");
            outbox.send(|b| b.extend_from_slice(b"two"));
            assert_eq!(outbox.with(|st| st.buf.to_vec()), b"onetwo");
        }
        assert!(outbox.with(|st| st.buf.is_empty()));
        assert_eq!(outbox.sent_bytes(), 6);
        let mut got = [0u8; 6];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"onetwo");
        // Outside a batch nothing is written from here: the writer task would be woken.
        outbox.send(|b| b.extend_from_slice(b"three"));
        assert_eq!(outbox.with(|st| st.buf.to_vec()), b"three");
    }
}
