//! Persistence: durable definitions in sled (`definitions`) and messages in an
//! append-only segment log (`segment`) written by one group-commit persister
//! thread (`persister`).
//!
//! The promise: a publisher confirm for a persistent message routed to a
//! durable queue leaves only after the fdatasync that covers its record.
//! Settlements (acks, drops, purges) ride the next commit; a crash before
//! their ack file is synced re-delivers the message (at-least-once).
//!
//! The log also holds message bodies paged out of memory: once the bytes of
//! ready messages held in RAM pass `memory.queue_budget`, new arrivals are
//! written to the log (transient ones flagged so recovery drops them) and the
//! queue keeps only their location. Record locations are allocated here, in
//! the caller, under one short lock together with the send to the persister,
//! so a queue knows where its message lives at once and needs no per-message
//! heap object to find it.
//!
//! Until the persister has written a page, the message stays in memory as
//! the send's payload. Publishers faster than the disk would pile those up,
//! so the store keeps count of the bytes waiting (`paging`), and past a
//! quarter of the budget (`flow_limit`) a publishing connection stops
//! reading its socket until the persister catches up: RabbitMQ's credit
//! flow, with the connection shown in state `flow`.

pub mod definitions;
mod persister;
pub mod segment;
mod spare;

use crate::message::Message;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

/// A record's place in the log: `segment id << 32 | offset`.
pub type Loc = u64;
/// "No record".
pub const NO_LOC: Loc = u64::MAX;
/// Set in a record's queue id when the message is transient: it is in the
/// log only because it was paged out, and recovery drops it.
pub const TRANSIENT_BIT: u64 = 1 << 63;

pub fn loc(seg: u64, offset: u32) -> Loc {
    seg << 32 | offset as u64
}

pub fn split(l: Loc) -> (u64, u32) {
    (l >> 32, (l & 0xFFFF_FFFF) as u32)
}

/// What a ready message held in memory costs, for the memory budget: its
/// body plus the message's bookkeeping (the `Message`, and the frame bytes
/// its slices keep alive). Measured: 80,000 messages of 100 bytes from pika
/// grew the resident set by 435 bytes each, of which 40 are the queue entry
/// (kept when a message is paged out, so not counted here) and 100 the body.
pub const MESSAGE_OVERHEAD: u64 = 296;

pub fn footprint(body_size: u32) -> u64 {
    body_size as u64 + MESSAGE_OVERHEAD
}

/// A publisher confirm waiting for log appends: `add` is called once per
/// append it is attached to, `done` once per append when it is on disk
/// (`true`) or failed, returning true for the last one. Confirms are sent by
/// `flush`, called once per `stream` (a publisher's channel) after a batch,
/// so one commit yields one `basic.ack(multiple)` per channel.
pub trait Durable: Send + Sync {
    fn add(&self);
    fn done(&self, ok: bool) -> bool;
    fn stream(&self) -> (usize, u16);
    fn flush(&self);
}

pub(crate) enum Op {
    Append {
        loc: Loc,
        queue_id: u64,
        deadline: u64,
        msg: Arc<Message>,
        waiter: Option<Arc<dyn Durable>>,
        /// The footprint counted in `Shared::paging` (a page-out), else 0.
        paged: u32,
    },
    Settle(Loc),
    Delivered(Loc),
    /// Write and sync everything (ack files included), then answer.
    Sync(mpsc::Sender<()>),
    /// Final commit, then the thread exits.
    Stop,
}

/// Runs `f`, which blocks on the disk, from async code that must wait for
/// it. On a worker of the multi-threaded runtime the worker is handed over
/// first (`block_in_place`), so the other tasks it serves go on meanwhile;
/// elsewhere (no runtime, a current-thread runtime, the thread running
/// `block_on`) `f` simply runs here.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The persister's inbox. Senders push under a short lock and wake the
/// persister only for work somebody waits on (a publisher confirm, a read of
/// a paged-out message, shutdown); settlements, delivery marks and pages of
/// transient messages ride along with the next commit, at the latest after
/// one idle tick. This keeps the persister from being woken for every ack.
pub(crate) struct Inbox {
    ops: Mutex<Vec<Op>>,
    ready: parking_lot::Condvar,
    closed: std::sync::atomic::AtomicBool,
}

/// How long settlements may wait for a commit when nothing urgent comes.
pub(crate) const IDLE_TICK: std::time::Duration = std::time::Duration::from_millis(50);

impl Inbox {
    fn new() -> Self {
        Inbox {
            ops: Mutex::new(Vec::with_capacity(1024)),
            ready: parking_lot::Condvar::new(),
            closed: Default::default(),
        }
    }

    /// Queues `op`; gives it back if the persister has stopped.
    fn send(&self, op: Op, urgent: bool) -> Result<(), Op> {
        if self.closed.load(Ordering::Acquire) {
            return Err(op);
        }
        self.ops.lock().push(op);
        if urgent {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Takes everything queued, waiting for work (at most one idle tick).
    pub(crate) fn take(&self, into: &mut Vec<Op>) {
        let mut ops = self.ops.lock();
        if ops.is_empty() {
            self.ready.wait_for(&mut ops, IDLE_TICK);
        }
        std::mem::swap(&mut *ops, into);
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

/// A recovered message.
pub struct Recovered {
    pub queue_id: u64,
    pub loc: Loc,
    /// `None` when recovery left it paged out (over the memory budget).
    pub message: Option<Message>,
    pub body_size: u32,
    pub priority: u8,
    pub delivered: bool,
    /// When it expires (ms since the epoch); 0 = never.
    pub deadline: u64,
}

/// Where the next record goes.
struct Alloc {
    seg: u64,
    offset: u64,
}

/// State shared by the store's users and the persister thread.
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    /// Everything below this location is written (monotonic).
    pub(crate) written: AtomicU64,
    /// Read handles of segments that still hold live records.
    pub(crate) readers: Mutex<HashMap<u64, (Arc<File>, segment::Format)>>,
    /// A segment whose write failed: nothing more is allocated in it.
    pub(crate) broken: AtomicU64,
    /// Footprint of the paged-out messages sent to the persister and not
    /// yet written (they are held in memory until then).
    paging: AtomicU64,
    /// Woken when the persister has written pages (`paging` fell).
    room: tokio::sync::Notify,
    pub(crate) io: IoStats,
}

/// The message store's file I/O since start: RabbitMQ's `io_*` node
/// statistics (`rabbitmq_io_*_total` in Prometheus). Writes and syncs are
/// the persister's (segments, ack files, the log directory), reads are of
/// paged-out messages; recovery's reads at startup are not counted.
#[derive(Debug, Default)]
pub struct IoStats {
    pub read_ops: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_ops: AtomicU64,
    pub write_bytes: AtomicU64,
    pub sync_ops: AtomicU64,
}

impl IoStats {
    pub(crate) fn read(&self, bytes: usize) {
        self.read_ops.fetch_add(1, Ordering::Relaxed);
        self.read_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn write(&self, bytes: usize) {
        self.write_ops.fetch_add(1, Ordering::Relaxed);
        self.write_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn sync(&self) {
        self.sync_ops.fetch_add(1, Ordering::Relaxed);
    }
}

impl Shared {
    /// The persister wrote pages of `bytes` footprint: wake the publishers
    /// held back by flow control.
    pub(crate) fn paged_out(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let _ =
            self.paging.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(v.saturating_sub(bytes)));
        self.room.notify_waiters();
    }
}

/// Publishers wait while more than this many bytes of pages are waiting for
/// the persister: a quarter of the memory budget, at least 4 MiB, so that
/// the pages in flight stay small next to what the budget keeps in memory.
pub fn flow_limit(budget: u64) -> u64 {
    (budget / 4).max(4 << 20)
}

pub struct MessageStore {
    inbox: Arc<Inbox>,
    alloc: Mutex<Alloc>,
    segment_size: u64,
    shared: Arc<Shared>,
    /// Bytes of ready messages held in memory, all queues together.
    resident: AtomicU64,
    /// Ids for queues whose definition is not persisted.
    next_transient_id: AtomicU64,
    budget: u64,
    /// `flow_limit(budget)`.
    flow_limit: u64,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub dir: PathBuf,
}

impl std::fmt::Debug for MessageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageStore").field("dir", &self.dir).finish()
    }
}

/// Both stores of a data directory.
#[derive(Debug)]
pub struct Stores {
    pub defs: definitions::Definitions,
    pub messages: Arc<MessageStore>,
}

impl MessageStore {
    /// Opens the log in `dir`, recovering every unsettled durable record (in
    /// log order; beyond `budget` bytes they stay paged out), and starts the
    /// persister. Transient records are settled.
    pub fn open(dir: &Path, segment_size: u64, budget: u64) -> std::io::Result<(Arc<Self>, Vec<Recovered>)> {
        std::fs::create_dir_all(dir)?;
        let segment_size = segment_size.max(4096);
        let (recovered, live, next_id, transient) = persister::recover(dir, budget)?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            written: AtomicU64::new(loc(next_id, 0)),
            readers: Mutex::new(HashMap::new()),
            broken: AtomicU64::new(u64::MAX),
            paging: AtomicU64::new(0),
            room: tokio::sync::Notify::new(),
            io: IoStats::default(),
        });
        let inbox = Arc::new(Inbox::new());
        let spares = match spare::Spares::start(dir, segment_size) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "message store: no spare segments (new segments are appended)");
                None
            }
        };
        let p = persister::Persister::new(shared.clone(), spares, next_id, live);
        let rx = inbox.clone();
        let thread = std::thread::Builder::new().name("warren-persister".into()).spawn(move || p.run(&rx))?;
        let resident = recovered.iter().filter(|r| r.message.is_some()).map(|r| footprint(r.body_size)).sum();
        let store = Arc::new(MessageStore {
            inbox,
            alloc: Mutex::new(Alloc { seg: next_id, offset: segment::SEGMENT_HEADER as u64 }),
            segment_size,
            shared,
            resident: AtomicU64::new(resident),
            next_transient_id: AtomicU64::new(1 << 48),
            budget,
            flow_limit: flow_limit(budget),
            thread: Mutex::new(Some(thread)),
            dir: dir.to_path_buf(),
        });
        for l in transient {
            store.settle(l);
        }
        Ok((store, recovered))
    }

    /// A log id for a queue whose definition is not persisted (its records
    /// are all transient-flagged, so no restart ever looks it up).
    pub fn transient_id(&self) -> u64 {
        self.next_transient_id.fetch_add(1, Ordering::Relaxed)
    }

    /// True when new ready messages should be paged out rather than kept.
    pub fn over_budget(&self) -> bool {
        self.resident.load(Ordering::Relaxed) >= self.budget
    }

    /// Accounts ready bytes entering (`+`) or leaving (`-`) memory.
    pub fn resident_add(&self, bytes: u64) {
        self.resident.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn resident_sub(&self, bytes: u64) {
        let _ = self
            .resident
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(bytes)));
    }

    pub fn resident(&self) -> u64 {
        self.resident.load(Ordering::Relaxed)
    }

    /// Pages waiting for the persister have passed the flow limit:
    /// publishing connections should stop reading until `wait_for_room`.
    pub fn congested(&self) -> bool {
        self.shared.paging.load(Ordering::Acquire) >= self.flow_limit
    }

    /// Waits until the pages waiting for the persister are under the flow
    /// limit.
    pub async fn wait_for_room(&self) {
        loop {
            let notified = self.shared.room.notified();
            tokio::pin!(notified);
            // Registered before the check, so a wake-up in between is kept.
            notified.as_mut().enable();
            if !self.congested() {
                return;
            }
            notified.await;
        }
    }

    /// Counts `bytes` as pages in flight, as a page-out does; `release_pages`
    /// takes them back as the persister does. For tests that need flow
    /// control engaged for as long as they choose.
    #[doc(hidden)]
    pub fn hold_pages(&self, bytes: u64) {
        self.shared.paging.fetch_add(bytes, Ordering::AcqRel);
    }

    #[doc(hidden)]
    pub fn release_pages(&self, bytes: u64) {
        self.shared.paged_out(bytes);
    }

    /// The flow limit in bytes (`flow_limit` of the budget).
    pub fn flow_limit(&self) -> u64 {
        self.flow_limit
    }

    /// Footprint of the pages waiting for the persister.
    pub fn pages_in_flight(&self) -> u64 {
        self.shared.paging.load(Ordering::Acquire)
    }

    /// File I/O counters.
    pub fn io(&self) -> &IoStats {
        &self.shared.io
    }

    /// Queues a record for the next group commit and returns its location.
    /// `durable = false` marks a transient message paged out of memory.
    /// `waiter` hears when the record is synced. `paged`: the queue keeps
    /// only the location, so until the record is written the send holds the
    /// message's only copy (counted for flow control).
    pub fn append(
        &self,
        queue_id: u64,
        msg: &Arc<Message>,
        durable: bool,
        deadline: u64,
        waiter: Option<Arc<dyn Durable>>,
        paged: bool,
    ) -> Loc {
        let size = segment::encoded_len(&msg.exchange, &msg.routing_key, &msg.properties, &msg.body) as u64;
        if let Some(w) = &waiter {
            w.add();
        }
        let queue_id = if durable { queue_id } else { queue_id | TRANSIENT_BIT };
        let mut a = self.alloc.lock();
        let first = segment::SEGMENT_HEADER as u64;
        if self.shared.broken.load(Ordering::Acquire) == a.seg {
            a.seg += 1;
            a.offset = first;
        }
        if a.offset > first && (a.offset + size > self.segment_size || a.offset + size > u32::MAX as u64) {
            a.seg += 1;
            a.offset = first;
        }
        let l = loc(a.seg, a.offset as u32);
        a.offset += size;
        let paged = if paged { footprint(msg.body.len() as u32).min(u32::MAX as u64) as u32 } else { 0 };
        // A page-out wakes the persister once pages pass the flow limit,
        // not only at its next idle tick: publishers are waiting on it.
        let urgent = waiter.is_some()
            || (paged > 0
                && self.shared.paging.fetch_add(paged as u64, Ordering::AcqRel) + paged as u64
                    >= self.flow_limit);
        // Sent under the allocation lock: the persister sees records in
        // location order.
        let r = self
            .inbox
            .send(Op::Append { loc: l, queue_id, deadline, msg: msg.clone(), waiter, paged }, urgent);
        drop(a);
        if let Err(Op::Append { waiter, paged, .. }) = r {
            // The persister is gone: nothing will write this page.
            self.shared.paged_out(paged as u64);
            if let Some(w) = waiter
                && w.done(false)
            {
                w.flush(); // never confirm
            }
        }
        l
    }

    /// The record's message left the broker for good (acked, dropped, purged).
    pub fn settle(&self, l: Loc) {
        if l != NO_LOC {
            let _ = self.inbox.send(Op::Settle(l), false);
        }
    }

    /// The message was handed to a consumer (a redelivery hint after a crash).
    pub fn delivered(&self, l: Loc) {
        if l != NO_LOC {
            let _ = self.inbox.send(Op::Delivered(l), false);
        }
    }

    /// Reads a paged-out message back. Waits for the persister if its record
    /// has not been written yet.
    pub fn read(&self, l: Loc) -> std::io::Result<Message> {
        if self.shared.written.load(Ordering::Acquire) <= l {
            self.sync();
        }
        let (seg, offset) = split(l);
        let (file, format) = self.reader(seg)?;
        segment::read_at(&file, offset as u64, format)
            .inspect(|r| {
                self.shared.io.read(segment::encoded_len(&r.exchange, &r.routing_key, &r.properties, &r.body))
            })
            .and_then(|r| message_of(r).ok_or_else(|| std::io::Error::other("record with bad properties")))
    }

    /// Reads several records of one segment, ascending, with one `pread` of
    /// the span they cover (a paged-out backlog is read back in runs, not a
    /// message at a time). A record the span does not hold whole is read
    /// alone.
    pub fn read_run(&self, locs: &[Loc]) -> Vec<std::io::Result<Message>> {
        use std::os::unix::fs::FileExt;
        /// Read past the last record's start (most records are smaller).
        const TAIL: u64 = 16 * 1024;
        let (Some(first), Some(last)) = (locs.first(), locs.last()) else { return Vec::new() };
        if self.shared.written.load(Ordering::Acquire) <= *last {
            self.sync();
        }
        let (seg, start) = split(*first);
        let span = (split(*last).1 - start) as u64 + TAIL;
        let buf = self.reader(seg).and_then(|(f, format)| {
            let mut buf = vec![0u8; span as usize];
            let mut got = 0usize;
            // Short reads only at the end of the file.
            while got < buf.len() {
                match f.read_at(&mut buf[got..], start as u64 + got as u64)? {
                    0 => break,
                    n => {
                        self.shared.io.read(n);
                        got += n
                    }
                }
            }
            buf.truncate(got);
            Ok((bytes::Bytes::from(buf), format))
        });
        locs.iter()
            .map(|l| {
                let (_, offset) = split(*l);
                let in_buf =
                    buf.as_ref().ok().and_then(|(b, f)| segment::record_in(b, (offset - start) as usize, *f));
                match in_buf {
                    Some(r) => r.and_then(|r| {
                        message_of(r).ok_or_else(|| std::io::Error::other("record with bad properties"))
                    }),
                    None => self.read(*l),
                }
            })
            .collect()
    }

    fn reader(&self, seg: u64) -> std::io::Result<(Arc<File>, segment::Format)> {
        let mut readers = self.shared.readers.lock();
        if let Some((f, format)) = readers.get(&seg) {
            return Ok((f.clone(), *format));
        }
        // Only written records are read, so a tagged file's header is there.
        let f = File::open(segment::seg_path(&self.shared.dir, seg))?;
        let format = segment::format_of_file(&f, seg)?;
        let f = Arc::new(f);
        readers.insert(seg, (f.clone(), format));
        Ok((f, format))
    }

    /// Blocks until everything sent so far is written and synced.
    pub fn sync(&self) {
        let (tx, rx) = mpsc::channel();
        if self.inbox.send(Op::Sync(tx), true).is_ok() {
            let _ = rx.recv();
        }
    }

    /// Syncs everything and stops the persister (graceful shutdown).
    pub fn close(&self) {
        self.sync();
        let _ = self.inbox.send(Op::Stop, true);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

/// Rebuilds a message from its record.
pub(crate) fn message_of(r: segment::Record) -> Option<Message> {
    let scanned = crate::protocol::properties::scan(&r.properties)?;
    Some(Message::new(r.exchange, r.routing_key, r.properties, r.body, scanned))
}

#[cfg(test)]
mod tests {
    use super::{Durable, MessageStore};
    use crate::message::Message;
    use bytes::Bytes;
    use parking_lot::Mutex;
    use std::path::PathBuf;
    use std::sync::Arc;

    /// A confirm waiter that, when released, looks for its own record in the
    /// segment files: a waiter released before its record is written fails.
    struct Witness {
        dir: PathBuf,
        body: Vec<u8>,
        released: Mutex<Option<(bool, bool)>>,
    }

    impl Durable for Witness {
        fn add(&self) {}
        fn done(&self, ok: bool) -> bool {
            let on_disk = std::fs::read_dir(&self.dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
                .filter_map(|e| std::fs::read(e.path()).ok())
                .any(|data| data.windows(self.body.len()).any(|w| w == &self.body[..]));
            *self.released.lock() = Some((ok, on_disk));
            true
        }
        fn stream(&self) -> (usize, u16) {
            (self as *const Self as usize, 0)
        }
        fn flush(&self) {}
    }

    /// Records cross a segment boundary every few appends; moving to a new
    /// segment syncs the old one and releases its waiters, and must not
    /// release the waiter of the record that caused the move (it is not
    /// written yet). Deterministic: every boundary exercises it.
    #[test]
    fn no_waiter_is_released_before_its_record_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, recovered) = MessageStore::open(dir.path(), 4096, 1 << 20).expect("open");
        assert!(recovered.is_empty());
        let props = Bytes::from_static(&[0x10, 0x00, 2]); // delivery-mode 2
        let scanned = crate::protocol::properties::scan(&props).expect("properties");
        let mut witnesses = Vec::new();
        for i in 0..40u32 {
            let body: Vec<u8> =
                (0..900u32).map(|j| ((i * 7 + j) % 251) as u8).chain(i.to_be_bytes()).collect();
            let w = Arc::new(Witness {
                dir: dir.path().to_path_buf(),
                body: body.clone(),
                released: Mutex::new(None),
            });
            let msg = Arc::new(Message::new(
                Bytes::new(),
                Bytes::from_static(b"q"),
                props.clone(),
                Bytes::from(body),
                scanned.clone(),
            ));
            store.append(1, &msg, true, 0, Some(w.clone() as Arc<dyn Durable>), false);
            witnesses.push(w);
        }
        store.sync();
        let segments = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
            .count();
        assert!(segments >= 8, "the records span many segments ({segments})");
        for (i, w) in witnesses.iter().enumerate() {
            assert_eq!(
                *w.released.lock(),
                Some((true, true)),
                "record {i}: (confirmed, on disk when released)"
            );
        }
        store.close();
    }

    fn message(props: &'static [u8], body: Vec<u8>) -> Arc<Message> {
        let props = Bytes::from_static(props);
        let scanned = crate::protocol::properties::scan(&props).expect("properties");
        Arc::new(Message::new(Bytes::new(), Bytes::from_static(b"q"), props, Bytes::from(body), scanned))
    }

    /// Pages count towards flow control until the persister has written
    /// them; pages of transient messages are written without an fdatasync,
    /// a durable record with one; reading a page back is counted.
    #[test]
    fn pages_are_counted_until_written_and_only_durable_records_are_synced() {
        use std::sync::atomic::Ordering::Relaxed;
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = MessageStore::open(dir.path(), 1 << 20, 0).expect("open");
        assert_eq!(store.flow_limit(), 4 << 20, "the floor applies to a zero budget");
        let transient = message(&[0x00, 0x00], vec![7u8; 1000]);
        let io = store.io();
        let syncs = io.sync_ops.load(Relaxed);
        let mut last = super::NO_LOC;
        for _ in 0..50 {
            last = store.append(1, &transient, false, 0, None, true);
        }
        store.sync();
        assert_eq!(store.pages_in_flight(), 0);
        assert!(!store.congested());
        assert!(io.write_bytes.load(Relaxed) >= 50 * 1000, "{io:?}");
        assert_eq!(io.sync_ops.load(Relaxed), syncs, "transient pages are not synced");
        // Not a page (the queue keeps the message): not counted.
        let durable = message(&[0x10, 0x00, 2], vec![9u8; 100]);
        store.append(1, &durable, true, 0, None, false);
        assert_eq!(store.pages_in_flight(), 0);
        store.sync();
        assert_eq!(io.sync_ops.load(Relaxed), syncs + 1, "a durable record is synced");
        let back = store.read(last).expect("page read back");
        assert_eq!(back.body, transient.body);
        assert_eq!(io.read_ops.load(Relaxed), 1);
        store.close();
    }

    /// A publisher held by flow control wakes when pages are written.
    #[tokio::test]
    async fn wait_for_room_ends_when_the_pages_are_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = MessageStore::open(dir.path(), 1 << 20, 0).expect("open");
        let limit = store.flow_limit();
        store.hold_pages(limit);
        assert!(store.congested());
        let waiting = tokio::spawn({
            let store = store.clone();
            async move { store.wait_for_room().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "returned while congested");
        store.release_pages(limit);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken when the pages are written")
            .expect("task");
        assert!(!store.congested());
        store.close();
    }
}
