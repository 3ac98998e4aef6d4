//! Persistence: durable definitions in sled (`definitions`) and persistent
//! messages in an append-only segment log (`segment`) written by one
//! group-commit persister thread (`persister`).
//!
//! The promise: a publisher confirm for a persistent message routed to a
//! durable queue leaves only after the fdatasync that covers its record.
//! Settlements (acks, drops, purges) ride the next commit; a crash before
//! their ack file is synced re-delivers the message (at-least-once).

pub mod definitions;
mod persister;
pub mod segment;

use crate::message::Message;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;

/// A publisher confirm waiting for log appends: `add` is called once per
/// append it is attached to, `done` once per append when it is on disk
/// (`true`) or failed.
pub trait Durable: Send + Sync {
    fn add(&self);
    fn done(&self, ok: bool);
}

/// Where a persistent message's record lives, filled in by the persister.
#[derive(Debug)]
pub struct Slot {
    /// `segment id << 32 | offset`; `UNSET` until written.
    loc: AtomicU64,
    settled: AtomicBool,
    delivered: AtomicBool,
}

const UNSET: u64 = u64::MAX;

impl Slot {
    fn new() -> Self {
        Slot {
            loc: AtomicU64::new(UNSET),
            settled: AtomicBool::new(false),
            delivered: AtomicBool::new(false),
        }
    }

    fn at(seg: u64, offset: u32) -> Self {
        let s = Slot::new();
        s.loc.store(seg << 32 | offset as u64, Ordering::Release);
        s
    }

    fn location(&self) -> Option<(u64, u32)> {
        let v = self.loc.load(Ordering::Acquire);
        (v != UNSET).then_some((v >> 32, (v & 0xFFFF_FFFF) as u32))
    }
}

pub(crate) enum Op {
    Append {
        queue_id: u64,
        msg: Arc<Message>,
        slot: Arc<Slot>,
        waiter: Option<Arc<dyn Durable>>,
    },
    Settle(Arc<Slot>),
    Delivered(Arc<Slot>),
    /// Write and sync everything (ack files included), then answer.
    Sync(mpsc::Sender<()>),
    /// Final commit, then the thread exits.
    Stop,
}

/// A recovered message: its queue, the message, its slot, whether it had
/// been delivered before the restart.
pub struct Recovered {
    pub queue_id: u64,
    pub message: Message,
    pub slot: Arc<Slot>,
    pub delivered: bool,
}

/// Both stores of a data directory.
#[derive(Debug)]
pub struct Stores {
    pub defs: definitions::Definitions,
    pub messages: Arc<MessageStore>,
}

pub struct MessageStore {
    tx: mpsc::Sender<Op>,
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
    pub dir: PathBuf,
}

impl std::fmt::Debug for MessageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageStore").field("dir", &self.dir).finish()
    }
}

impl MessageStore {
    /// Opens the log in `dir`, recovering every unsettled record (in log
    /// order), and starts the persister.
    pub fn open(dir: &Path, segment_size: u64) -> std::io::Result<(Arc<Self>, Vec<Recovered>)> {
        std::fs::create_dir_all(dir)?;
        let (recovered, live, next_id) = persister::recover(dir)?;
        let (tx, rx) = mpsc::channel();
        let p = persister::Persister::new(dir.to_path_buf(), segment_size, next_id, live);
        let thread = std::thread::Builder::new()
            .name("warren-persister".into())
            .spawn(move || p.run(rx))?;
        let store = Arc::new(MessageStore {
            tx,
            thread: parking_lot::Mutex::new(Some(thread)),
            dir: dir.to_path_buf(),
        });
        Ok((store, recovered))
    }

    /// Queues a record for the next group commit. `waiter` hears when it is synced.
    pub fn append(&self, queue_id: u64, msg: &Arc<Message>, waiter: Option<Arc<dyn Durable>>) -> Arc<Slot> {
        let slot = Arc::new(Slot::new());
        if let Some(w) = &waiter {
            w.add();
        }
        let op = Op::Append {
            queue_id,
            msg: msg.clone(),
            slot: slot.clone(),
            waiter,
        };
        if let Err(mpsc::SendError(Op::Append { waiter: Some(w), .. })) = self.tx.send(op) {
            w.done(false); // the persister is gone: never confirm
        }
        slot
    }

    /// The message is gone from its queue for good (acked, dropped, purged).
    pub fn settle(&self, slot: &Arc<Slot>) {
        if !slot.settled.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(Op::Settle(slot.clone()));
        }
    }

    /// The message was handed to a consumer (redelivery hint after a crash).
    pub fn delivered(&self, slot: &Arc<Slot>) {
        if !slot.delivered.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(Op::Delivered(slot.clone()));
        }
    }

    /// Blocks until everything sent so far is written and synced.
    pub fn sync(&self) {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Op::Sync(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// Syncs everything and stops the persister (graceful shutdown).
    pub fn close(&self) {
        self.sync();
        let _ = self.tx.send(Op::Stop);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

/// Rebuilds a message from its record.
pub(crate) fn message_of(r: segment::Record) -> Option<Message> {
    let scanned = crate::protocol::properties::scan(&r.properties)?;
    Some(Message::new(
        r.exchange,
        r.routing_key,
        r.properties,
        r.body,
        scanned,
    ))
}
