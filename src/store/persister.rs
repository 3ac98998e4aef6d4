//! The group-commit persister: one thread that owns the segment files.
//! It blocks for one operation, drains whatever else is pending (so batches
//! grow with load and a lone publish is synced at once), writes the batch with
//! one `write`, `fdatasync`s it, then tells every waiter. Settlements go to
//! per-segment ack files in the same pass; a segment whose records are all
//! settled is unlinked with its ack file.

use super::segment::{self, DELIVERED_FLAG};
use super::{Op, Recovered, Slot, message_of};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;

/// Most bytes gathered before a commit is forced even if more work is pending.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

struct Current {
    id: u64,
    file: File,
    /// Bytes already written to the file.
    len: u64,
}

pub(super) struct Persister {
    dir: PathBuf,
    segment_size: u64,
    next_id: u64,
    current: Option<Current>,
    /// Encoded records not yet written to `current`.
    buf: BytesMut,
    /// Unsettled records per segment.
    live: HashMap<u64, u64>,
    /// Ack-file entries not yet written, per segment.
    acks: HashMap<u64, Vec<u8>>,
    ack_files: HashMap<u64, File>,
    /// Ack files written since their last sync.
    dirty_acks: Vec<u64>,
    waiters: Vec<Arc<dyn super::Durable>>,
    /// Set after a failed write: the current segment cannot be trusted.
    broken: bool,
}

impl Persister {
    pub(super) fn new(dir: PathBuf, segment_size: u64, next_id: u64, live: HashMap<u64, u64>) -> Self {
        Persister {
            dir,
            segment_size: segment_size.max(4096),
            next_id,
            current: None,
            buf: BytesMut::with_capacity(256 * 1024),
            live,
            acks: HashMap::new(),
            ack_files: HashMap::new(),
            dirty_acks: Vec::new(),
            waiters: Vec::new(),
            broken: false,
        }
    }

    pub(super) fn run(mut self, rx: mpsc::Receiver<Op>) {
        let mut syncs: Vec<mpsc::Sender<()>> = Vec::new();
        while let Ok(first) = rx.recv() {
            let mut stop = false;
            let mut op = Some(first);
            while let Some(o) = op.take() {
                match o {
                    Op::Sync(reply) => syncs.push(reply),
                    Op::Stop => stop = true,
                    other => self.apply(other),
                }
                if self.buf.len() < MAX_BATCH_BYTES && !stop {
                    op = rx.try_recv().ok();
                }
            }
            self.commit(!syncs.is_empty() || stop);
            for s in syncs.drain(..) {
                let _ = s.send(());
            }
            if stop {
                return;
            }
        }
        self.commit(true);
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Append {
                queue_id,
                msg,
                slot,
                waiter,
            } => {
                let size =
                    segment::encoded_len(&msg.exchange, &msg.routing_key, &msg.properties, &msg.body) as u64;
                if let Err(e) = self.make_room(size) {
                    tracing::error!(error = %e, "message store: cannot open a segment");
                    if let Some(w) = waiter {
                        w.done(false);
                    }
                    return;
                }
                let Some(cur) = self.current.as_ref() else {
                    return;
                };
                let offset = cur.len + self.buf.len() as u64;
                let id = cur.id;
                segment::encode(
                    &mut self.buf,
                    queue_id,
                    &msg.exchange,
                    &msg.routing_key,
                    &msg.properties,
                    &msg.body,
                );
                slot.loc
                    .store(id << 32 | offset, std::sync::atomic::Ordering::Release);
                *self.live.entry(id).or_insert(0) += 1;
                if let Some(w) = waiter {
                    self.waiters.push(w);
                }
            }
            Op::Settle(slot) => {
                let Some((seg, offset)) = slot.location() else {
                    return;
                };
                self.acks
                    .entry(seg)
                    .or_default()
                    .extend_from_slice(&offset.to_be_bytes());
                if let Some(n) = self.live.get_mut(&seg) {
                    *n = n.saturating_sub(1);
                }
            }
            Op::Delivered(slot) => {
                let Some((seg, offset)) = slot.location() else {
                    return;
                };
                self.acks
                    .entry(seg)
                    .or_default()
                    .extend_from_slice(&(offset | DELIVERED_FLAG).to_be_bytes());
            }
            Op::Sync(_) | Op::Stop => {}
        }
    }

    /// Ensures the current segment can take `size` more bytes, rolling to a
    /// new one when it is full (a record larger than a segment gets its own).
    fn make_room(&mut self, size: u64) -> std::io::Result<()> {
        let full = match &self.current {
            None => true,
            Some(c) => {
                let used = c.len + self.buf.len() as u64;
                self.broken || (used > 0 && used + size > self.segment_size) || used + size > u32::MAX as u64
            }
        };
        if !full {
            return Ok(());
        }
        if self.current.is_some() {
            // Finish the old segment: its bytes must be synced before waiters
            // of later records are released (they are all released together).
            self.write_and_sync_current()?;
        }
        let id = self.next_id;
        self.next_id += 1;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment::seg_path(&self.dir, id))?;
        self.current = Some(Current { id, file, len: 0 });
        self.live.entry(id).or_insert(0);
        self.broken = false;
        Ok(())
    }

    fn write_and_sync_current(&mut self) -> std::io::Result<()> {
        let Some(cur) = self.current.as_mut() else {
            return Ok(());
        };
        if self.buf.is_empty() {
            return Ok(());
        }
        let r = cur.file.write_all(&self.buf).and_then(|_| cur.file.sync_data());
        match r {
            Ok(()) => {
                cur.len += self.buf.len() as u64;
                self.buf.clear();
                Ok(())
            }
            Err(e) => {
                self.buf.clear();
                self.broken = true;
                Err(e)
            }
        }
    }

    /// Writes the batch, syncs, releases waiters, writes ack entries,
    /// unlinks fully settled segments. `sync_acks` also syncs ack files.
    fn commit(&mut self, sync_acks: bool) {
        let ok = match self.write_and_sync_current() {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "message store: write/sync failed; publishes in this batch are nacked");
                false
            }
        };
        for w in self.waiters.drain(..) {
            w.done(ok);
        }
        let pending: Vec<(u64, Vec<u8>)> = self.acks.drain().collect();
        for (seg, bytes) in pending {
            if let Err(e) = self.write_acks(seg, &bytes) {
                tracing::error!(error = %e, segment = seg, "message store: cannot write ack file");
            }
        }
        if sync_acks {
            for seg in std::mem::take(&mut self.dirty_acks) {
                if let Some(f) = self.ack_files.get(&seg)
                    && let Err(e) = f.sync_data()
                {
                    tracing::error!(error = %e, segment = seg, "message store: cannot sync ack file");
                }
            }
        }
        self.unlink_settled();
    }

    fn write_acks(&mut self, seg: u64, bytes: &[u8]) -> std::io::Result<()> {
        if !self.live.contains_key(&seg) {
            return Ok(()); // segment already gone
        }
        let f = match self.ack_files.entry(seg) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(segment::ack_path(&self.dir, seg))?,
            ),
        };
        f.write_all(bytes)?;
        if !self.dirty_acks.contains(&seg) {
            self.dirty_acks.push(seg);
        }
        Ok(())
    }

    fn unlink_settled(&mut self) {
        let current = self.current.as_ref().map(|c| c.id);
        let done: Vec<u64> = self
            .live
            .iter()
            .filter(|(id, n)| **n == 0 && Some(**id) != current)
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            self.live.remove(&id);
            self.ack_files.remove(&id);
            self.dirty_acks.retain(|s| *s != id);
            // The segment first: if only the ack file went, its records
            // would come back as unsettled.
            if let Err(e) = std::fs::remove_file(segment::seg_path(&self.dir, id)) {
                tracing::warn!(error = %e, segment = id, "message store: cannot remove segment");
                continue;
            }
            let _ = std::fs::remove_file(segment::ack_path(&self.dir, id));
        }
    }
}

/// Scans every segment: unsettled records in log order, live counts per
/// segment, and the next segment id. A damaged tail of the last segment is
/// cut off with a warning; damage elsewhere ends that segment's scan.
pub(super) fn recover(dir: &std::path::Path) -> std::io::Result<(Vec<Recovered>, HashMap<u64, u64>, u64)> {
    let ids = segment::list(dir)?;
    let mut out = Vec::new();
    let mut live = HashMap::new();
    let last = ids.last().copied();
    for id in &ids {
        let path = segment::seg_path(dir, *id);
        let data = Bytes::from(std::fs::read(&path)?);
        let acks = std::fs::read(segment::ack_path(dir, *id)).unwrap_or_default();
        let (settled, delivered) = segment::parse_acks(&acks);
        let (records, damage) = segment::scan(&data);
        if let Some(d) = damage {
            let offset = match d {
                segment::Damage::Torn { offset } | segment::Damage::Corrupt { offset } => offset,
            };
            if Some(*id) == last {
                tracing::warn!(segment = id, offset, damage = ?d, "message store: cutting off a damaged tail");
                OpenOptions::new()
                    .write(true)
                    .open(&path)?
                    .set_len(offset as u64)?;
            } else {
                tracing::warn!(segment = id, offset, damage = ?d, "message store: damaged record; the rest of this segment is skipped");
            }
        }
        let mut n = 0u64;
        for (offset, rec) in records {
            if settled.contains(&offset) {
                continue;
            }
            let queue_id = rec.queue_id;
            let Some(message) = message_of(rec) else {
                tracing::warn!(
                    segment = id,
                    offset,
                    "message store: record with bad properties skipped"
                );
                continue;
            };
            n += 1;
            let was_delivered = delivered.contains(&offset);
            let slot = Slot::at(*id, offset);
            slot.delivered
                .store(was_delivered, std::sync::atomic::Ordering::Relaxed);
            out.push(Recovered {
                queue_id,
                message,
                slot: Arc::new(slot),
                delivered: was_delivered,
            });
        }
        if n == 0 {
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(segment::ack_path(dir, *id));
        } else {
            live.insert(*id, n);
        }
    }
    let next = last.map(|l| l + 1).unwrap_or(1);
    Ok((out, live, next))
}
