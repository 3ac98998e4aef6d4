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
/// body plus the message's bookkeeping (the `Message` and its slices of the
/// frames it came in, measured at roughly 250 bytes).
pub const MESSAGE_OVERHEAD: u64 = 256;

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

    /// Queues a record for the next group commit and returns its location.
    /// `durable = false` marks a transient message paged out of memory.
    /// `waiter` hears when the record is synced.
    pub fn append(
        &self,
        queue_id: u64,
        msg: &Arc<Message>,
        durable: bool,
        deadline: u64,
        waiter: Option<Arc<dyn Durable>>,
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
        // Sent under the allocation lock: the persister sees records in
        // location order.
        let urgent = waiter.is_some();
        let r = self.inbox.send(Op::Append { loc: l, queue_id, deadline, msg: msg.clone(), waiter }, urgent);
        drop(a);
        if let Err(Op::Append { waiter: Some(w), .. }) = r
            && w.done(false)
        {
            w.flush(); // the persister is gone: never confirm
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
                    n => got += n,
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
            store.append(1, &msg, true, 0, Some(w.clone() as Arc<dyn Durable>));
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
}
