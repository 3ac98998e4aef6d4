//! The group-commit persister: one thread that owns the segment files.
//! It blocks for one operation, drains whatever else is pending (so batches
//! grow with load and a lone publish is synced at once), writes the batch with
//! one `write`, `fdatasync`s it, then tells every waiter. Settlements go to
//! per-segment ack files in the same pass; a segment whose records are all
//! settled loses its ack file and is recycled as a spare (or removed).

use super::segment::{self, DELIVERED_FLAG};
use super::{Loc, Op, Recovered, Shared, TRANSIENT_BIT, loc, message_of, split};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

/// Most bytes gathered before a commit is forced even if more work is pending.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

struct Current {
    id: u64,
    file: File,
    /// Bytes already written to the file: the segment header and records
    /// (a spare is longer: they overwrite its zeros or an earlier life).
    len: u64,
}

pub(super) struct Persister {
    shared: Arc<Shared>,
    spares: Option<Arc<super::spare::Spares>>,
    current: Option<Current>,
    next_id: u64,
    /// Segments from this id on were written by this process (tagged, so
    /// they may be recycled); older ones may be untagged and are removed.
    first_own: u64,
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
    /// The last write failed: waiters of this batch are nacked.
    failed: bool,
    /// `buf` holds a durable record: the write is followed by an
    /// fdatasync. Pages of transient messages alone are only written
    /// (recovery drops them anyway, and a later sync of the file covers
    /// them), so a backlog pages out without a disk flush per batch.
    must_sync: bool,
}

impl Persister {
    pub(super) fn new(
        shared: Arc<Shared>,
        spares: Option<Arc<super::spare::Spares>>,
        next_id: u64,
        live: HashMap<u64, u64>,
    ) -> Self {
        Persister {
            shared,
            spares,
            current: None,
            next_id,
            first_own: next_id,
            buf: BytesMut::with_capacity(256 * 1024),
            live,
            acks: HashMap::new(),
            ack_files: HashMap::new(),
            dirty_acks: Vec::new(),
            waiters: Vec::new(),
            failed: false,
            must_sync: false,
        }
    }

    pub(super) fn run(mut self, inbox: &super::Inbox) {
        let mut syncs: Vec<mpsc::Sender<()>> = Vec::new();
        let mut ops: Vec<Op> = Vec::with_capacity(1024);
        loop {
            inbox.take(&mut ops);
            if ops.is_empty() {
                // An idle tick with nothing pending.
                if let Some(s) = &self.spares {
                    s.trim();
                }
                continue;
            }
            let mut stop = false;
            // Footprint of the pages in this batch not yet written.
            let mut pages = 0u64;
            for o in ops.drain(..) {
                match o {
                    Op::Sync(reply) => syncs.push(reply),
                    Op::Stop => stop = true,
                    other => {
                        if let Op::Append { paged, .. } = &other {
                            pages += *paged as u64;
                        }
                        self.apply(other)
                    }
                }
                // Very large batches are written as they grow.
                if self.buf.len() >= MAX_BATCH_BYTES {
                    self.write_and_sync_current();
                    self.release_waiters();
                    self.shared.paged_out(std::mem::take(&mut pages));
                }
            }
            self.commit(!syncs.is_empty() || stop);
            self.shared.paged_out(pages);
            for s in syncs.drain(..) {
                let _ = s.send(());
            }
            if stop {
                if let Some(s) = &self.spares {
                    s.stop();
                }
                inbox.close();
                return;
            }
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Append { loc: l, queue_id, deadline, msg, waiter, .. } => {
                let (seg, offset) = split(l);
                *self.live.entry(seg).or_insert(0) += 1;
                if self.shared.broken.load(Ordering::Acquire) == seg {
                    // Allocated before the failure was seen: its place in the
                    // file is unreliable, so it is not written and is nacked.
                    self.failed = true;
                    self.waiters.extend(waiter);
                    return;
                }
                // Moving to a new segment syncs the old one and releases the
                // waiters it covers: this record's waiter joins only after,
                // so it is never released before its own record is synced.
                if let Err(e) = self.position(seg, offset as u64) {
                    tracing::error!(error = %e, segment = seg, "message store: cannot open a segment");
                    self.shared.broken.store(seg, Ordering::Release);
                    self.failed = true;
                    self.waiters.extend(waiter);
                    return;
                }
                self.waiters.extend(waiter);
                self.must_sync |= queue_id & super::TRANSIENT_BIT == 0;
                segment::encode(
                    &mut self.buf,
                    segment::tag_of(seg),
                    queue_id,
                    deadline,
                    &msg.exchange,
                    &msg.routing_key,
                    &msg.properties,
                    &msg.body,
                );
            }
            Op::Settle(l) => {
                let (seg, offset) = split(l);
                self.acks.entry(seg).or_default().extend_from_slice(&offset.to_be_bytes());
                if let Some(n) = self.live.get_mut(&seg) {
                    *n = n.saturating_sub(1);
                }
            }
            Op::Delivered(l) => {
                let (seg, offset) = split(l);
                self.acks.entry(seg).or_default().extend_from_slice(&(offset | DELIVERED_FLAG).to_be_bytes());
            }
            Op::Sync(_) | Op::Stop => {}
        }
    }

    /// Makes `seg` the current segment (the allocator moved on to it).
    fn position(&mut self, seg: u64, offset: u64) -> std::io::Result<()> {
        let _ = offset; // records arrive in allocation order (sent under the allocation lock)
        if self.current.as_ref().is_some_and(|c| c.id == seg) {
            return Ok(());
        }
        // Finish the old segment before records of the new one are written,
        // and answer the publishes it covers.
        self.write_and_sync_current();
        self.release_waiters();
        let path = segment::seg_path(&self.shared.dir, seg);
        let file = match self.spares.as_ref().and_then(|s| s.take(&path)) {
            Some(f) => f,
            // Never over an existing file: its records would be overwritten.
            None => OpenOptions::new().create_new(true).write(true).open(&path)?,
        };
        // The header goes out with the segment's first batch, at offset 0.
        self.buf.extend_from_slice(&segment::segment_header(seg));
        self.current = Some(Current { id: seg, file, len: 0 });
        self.live.entry(seg).or_insert(0);
        self.next_id = self.next_id.max(seg + 1);
        Ok(())
    }

    fn write_and_sync_current(&mut self) {
        let Some(cur) = self.current.as_mut() else {
            self.buf.clear();
            return;
        };
        if self.buf.is_empty() {
            return;
        }
        use std::os::unix::fs::FileExt;
        let sync = std::mem::take(&mut self.must_sync);
        let io = &self.shared.io;
        let written = cur.file.write_all_at(&self.buf, cur.len).inspect(|_| io.write(self.buf.len()));
        match written.and_then(|_| if sync { cur.file.sync_data().inspect(|_| io.sync()) } else { Ok(()) }) {
            Ok(()) => {
                cur.len += self.buf.len() as u64;
                self.shared
                    .written
                    .fetch_max(loc(cur.id, cur.len.min(u32::MAX as u64) as u32), Ordering::AcqRel);
            }
            Err(e) => {
                tracing::error!(error = %e, segment = cur.id, "message store: write/sync failed; this batch's publishes are nacked");
                self.failed = true;
                // Keep the file consistent with what was acknowledged, and
                // make the allocator move on: records already allocated in
                // this segment are not written (and are nacked).
                let _ = cur.file.set_len(cur.len);
                self.shared.broken.store(cur.id, Ordering::Release);
            }
        }
        self.buf.clear();
    }

    /// Writes the batch, syncs, releases waiters, writes ack entries,
    /// unlinks fully settled segments. `sync_acks` also syncs ack files.
    fn commit(&mut self, sync_acks: bool) {
        self.write_and_sync_current();
        self.release_waiters();
        let pending: Vec<(u64, Vec<u8>)> = self.acks.drain().collect();
        for (seg, bytes) in pending {
            if let Err(e) = self.write_acks(seg, &bytes) {
                tracing::error!(error = %e, segment = seg, "message store: cannot write ack file");
            }
        }
        if sync_acks {
            for seg in std::mem::take(&mut self.dirty_acks) {
                if let Some(f) = self.ack_files.get(&seg)
                    && let Err(e) = f.sync_data().inspect(|_| self.shared.io.sync())
                {
                    tracing::error!(error = %e, segment = seg, "message store: cannot sync ack file");
                }
            }
        }
        self.unlink_settled();
    }

    /// Confirms (or, after a failed write, nacks) every publish written so far.
    fn release_waiters(&mut self) {
        let ok = !std::mem::take(&mut self.failed);
        let mut streams: Vec<((usize, u16), Arc<dyn super::Durable>)> = Vec::new();
        for w in self.waiters.drain(..) {
            if w.done(ok) {
                let key = w.stream();
                if !streams.iter().any(|(k, _)| *k == key) {
                    streams.push((key, w));
                }
            }
        }
        for (_, w) in streams {
            w.flush();
        }
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
                    .open(segment::ack_path(&self.shared.dir, seg))?,
            ),
        };
        f.write_all(bytes)?;
        self.shared.io.write(bytes.len());
        if !self.dirty_acks.contains(&seg) {
            self.dirty_acks.push(seg);
        }
        Ok(())
    }

    fn unlink_settled(&mut self) {
        let current = self.current.as_ref().map(|c| c.id);
        let done: Vec<u64> =
            self.live.iter().filter(|(id, n)| **n == 0 && Some(**id) != current).map(|(id, _)| *id).collect();
        let mut gone = Vec::with_capacity(done.len());
        for id in done {
            self.live.remove(&id);
            self.ack_files.remove(&id);
            self.shared.readers.lock().remove(&id);
            self.dirty_acks.retain(|s| *s != id);
            // The segment first: if only the ack file went, its records
            // would come back as unsettled. A tagged segment becomes a
            // spare: the next segment overwrites it instead of a freshly
            // zero-filled file (no zeros to write and sync).
            let path = segment::seg_path(&self.shared.dir, id);
            let recycled = id >= self.first_own && self.spares.as_ref().is_some_and(|s| s.recycle(&path));
            if !recycled && let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(error = %e, segment = id, "message store: cannot remove segment");
                continue;
            }
            gone.push(id);
        }
        remove_ack_files(&self.shared.dir, &gone, &self.shared.io);
    }
}

/// Removes the ack files of segments already removed (or renamed to spares),
/// after a sync of the directory: a filesystem without a journal may write
/// directory changes in any order, and a segment that outlived its ack file
/// in a power loss would bring its settled messages back. If the sync fails
/// the ack files stay; startup removes ack files without a segment.
fn remove_ack_files(dir: &std::path::Path, ids: &[u64], io: &super::IoStats) {
    if ids.is_empty() {
        return;
    }
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()).inspect(|_| io.sync()) {
        tracing::warn!(error = %e, "message store: cannot sync the log directory; ack files of removed segments are kept until restart");
        return;
    }
    for id in ids {
        let _ = std::fs::remove_file(segment::ack_path(dir, *id));
    }
}

/// What recovery found: unsettled durable records in log order, live
/// counts per segment, the next segment id, and transient records (to settle).
type Found = (Vec<Recovered>, HashMap<u64, u64>, u64, Vec<Loc>);

/// Scans every segment. A damaged tail of the last segment is cut off with a
/// warning; damage elsewhere ends that segment's scan. Bodies are kept in
/// memory up to `budget` bytes; the rest stay paged out.
pub(super) fn recover(dir: &std::path::Path, budget: u64) -> std::io::Result<Found> {
    let ids = segment::list(dir)?;
    let mut out = Vec::new();
    let mut transient = Vec::new();
    let mut live = HashMap::new();
    let mut resident = 0u64;
    let last = ids.last().copied();
    let mut emptied = Vec::new();
    for id in &ids {
        let path = segment::seg_path(dir, *id);
        let data = Bytes::from(std::fs::read(&path)?);
        let acks = std::fs::read(segment::ack_path(dir, *id)).unwrap_or_default();
        let (settled, delivered) = segment::parse_acks(&acks);
        let (records, damage) = segment::scan(*id, &data);
        if let Some(d) = damage {
            let offset = match d {
                segment::Damage::Torn { offset } | segment::Damage::Corrupt { offset } => offset,
            };
            if Some(*id) == last {
                tracing::warn!(segment = id, offset, damage = ?d, "message store: cutting off a damaged tail");
                OpenOptions::new().write(true).open(&path)?.set_len(offset as u64)?;
            } else {
                tracing::warn!(segment = id, offset, damage = ?d, "message store: damaged record; the rest of this segment is skipped");
            }
        }
        let mut n = 0u64;
        for (offset, rec) in records {
            if settled.contains(&offset) {
                continue;
            }
            n += 1;
            let l = loc(*id, offset);
            if rec.queue_id & TRANSIENT_BIT != 0 {
                transient.push(l);
                continue;
            }
            let queue_id = rec.queue_id;
            let deadline = rec.deadline;
            let body_size = rec.body.len() as u32;
            let Some(message) = message_of(rec) else {
                tracing::warn!(segment = id, offset, "message store: record with bad properties skipped");
                transient.push(l);
                continue;
            };
            let priority = message.priority();
            let keep = resident + super::footprint(body_size) <= budget;
            if keep {
                resident += super::footprint(body_size);
            }
            out.push(Recovered {
                queue_id,
                loc: l,
                // Copy the kept body out of the segment buffer, so the
                // buffer is freed once recovery is done.
                message: keep.then(|| {
                    let m = message;
                    crate::message::Message::new(
                        Bytes::copy_from_slice(&m.exchange),
                        Bytes::copy_from_slice(&m.routing_key),
                        Bytes::copy_from_slice(&m.properties),
                        Bytes::copy_from_slice(&m.body),
                        m.scanned,
                    )
                }),
                body_size,
                priority,
                delivered: delivered.contains(&offset),
                deadline,
            });
        }
        if n == 0 {
            if std::fs::remove_file(&path).is_ok() {
                emptied.push(*id);
            }
        } else {
            live.insert(*id, n);
        }
    }
    // Recovery's I/O is not counted (the counters start with the broker).
    remove_ack_files(dir, &emptied, &super::IoStats::default());
    // Ack files whose segment is gone (a crash or a failed directory sync
    // between the two removals): nothing can come back through them.
    for id in segment::list_acks(dir)? {
        if ids.binary_search(&id).is_err() {
            let _ = std::fs::remove_file(segment::ack_path(dir, id));
        }
    }
    let next = last.map(|l| l + 1).unwrap_or(1);
    Ok((out, live, next, transient))
}
