//! The segment log's on-disk format. Pure functions over bytes and paths.
//!
//! A segment file `NNNNNNNNNNNNNNNNNNNN.seg` starts with a 16-byte header
//! (`SEGMENT_MAGIC`, then the segment id) followed by records:
//! `len: u32 | tag: u32 | crc32(tag, payload): u32 | payload`, payload =
//! `queue_id: u64 | deadline: u64 | exchange: short | routing_key: short | props_len: u32 | props | body`
//! (deadline: when the message expires, ms since the epoch, 0 = never).
//! `tag` is the low 32 bits of the segment's id. Settled segment files are
//! recycled (renamed to a later id and overwritten in place, as PostgreSQL
//! recycles WAL segments), so the bytes after the last record written in a
//! file's current life may be records of an earlier life: their tag names
//! an older (smaller) segment id, and a scan ends there. A fresh,
//! zero-filled file ends at the first all-zero header. A header with a tag
//! of 0 or above the segment's own is damage, like a bad checksum.
//!
//! Files written before recycling existed have no segment header and
//! records of `len | crc32(payload) | payload` (`Format::Untagged`); they
//! are still read, and never recycled.
//!
//! Its companion `NNNN….ack` is a sequence of u32 entries, one per event on
//! a record of that segment: the record's offset, with the top bit set for
//! "delivered at least once" and clear for "settled" (acked, dropped, purged).
//! A segment and its ack file are removed once every record is settled.

use bytes::{BufMut, Bytes, BytesMut};
use std::path::{Path, PathBuf};

/// First bytes of a tagged segment. As an untagged record header this
/// would be a length of 4 GiB - 1, which no record has.
pub const SEGMENT_MAGIC: [u8; 8] = [0xFF, 0xFF, 0xFF, 0xFF, b'W', b'L', b'0', b'2'];
/// Bytes before a tagged segment's first record.
pub const SEGMENT_HEADER: usize = 16;
/// Bytes before a record's payload (tagged format).
pub const RECORD_HEADER: usize = 12;
/// Ack-file flag: the record was delivered (a redelivery hint after a crash).
pub const DELIVERED_FLAG: u32 = 1 << 31;

/// How a segment file's records are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Segment header, records tagged with the segment id.
    Tagged { tag: u32 },
    /// No segment header, `len | crc | payload` records (older files).
    Untagged,
}

impl Format {
    /// The format of segment `id`, from the file's first bytes.
    pub fn of(id: u64, first: &[u8]) -> Format {
        if first.starts_with(&SEGMENT_MAGIC) { Format::Tagged { tag: tag_of(id) } } else { Format::Untagged }
    }

    fn record_header(self) -> usize {
        match self {
            Format::Tagged { .. } => RECORD_HEADER,
            Format::Untagged => 8,
        }
    }

    /// Whether a record header's tag belongs to this segment (untagged
    /// files have no tags to compare).
    fn owns(self, tag: Option<u32>) -> bool {
        match (self, tag) {
            (Format::Tagged { tag: mine }, Some(t)) => t == mine,
            _ => true,
        }
    }

    fn first_record(self) -> usize {
        match self {
            Format::Tagged { .. } => SEGMENT_HEADER,
            Format::Untagged => 0,
        }
    }
}

/// The tag records of segment `id` carry.
pub fn tag_of(id: u64) -> u32 {
    id as u32
}

/// The header a tagged segment starts with.
pub fn segment_header(id: u64) -> [u8; SEGMENT_HEADER] {
    let mut h = [0u8; SEGMENT_HEADER];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..].copy_from_slice(&id.to_be_bytes());
    h
}

fn checksum(tag: Option<u32>, payload: &[u8]) -> u32 {
    match tag {
        Some(t) => {
            let mut h = crc32fast::Hasher::new();
            h.update(&t.to_be_bytes());
            h.update(payload);
            h.finalize()
        }
        None => crc32fast::hash(payload),
    }
}

/// A record header as read: (payload length, tag if tagged, checksum).
fn header_at(data: &[u8], at: usize, f: Format) -> Option<(usize, Option<u32>, u32)> {
    let h = data.get(at..at.checked_add(f.record_header())?)?;
    let word = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    Some(match f {
        Format::Tagged { .. } => (word(0) as usize, Some(word(4)), word(8)),
        Format::Untagged => (word(0) as usize, None, word(4)),
    })
}

/// One message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub queue_id: u64,
    pub deadline: u64,
    pub exchange: Bytes,
    pub routing_key: Bytes,
    pub properties: Bytes,
    pub body: Bytes,
}

pub fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

pub fn ack_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.ack"))
}

/// Segment ids present in `dir`, ascending.
pub fn list(dir: &Path) -> std::io::Result<Vec<u64>> {
    ids_with_suffix(dir, ".seg")
}

/// Ids of the ack files in `dir`, in order.
pub fn list_acks(dir: &Path) -> std::io::Result<Vec<u64>> {
    ids_with_suffix(dir, ".ack")
}

fn ids_with_suffix(dir: &Path, suffix: &str) -> std::io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(suffix)
            && let Ok(id) = stem.parse::<u64>()
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Size of the encoded (tagged) record.
pub fn encoded_len(exchange: &[u8], routing_key: &[u8], properties: &[u8], body: &[u8]) -> usize {
    RECORD_HEADER
        + 16
        + 1
        + exchange.len().min(255)
        + 1
        + routing_key.len().min(255)
        + 4
        + properties.len()
        + body.len()
}

/// Appends one record of the segment tagged `tag` to `out`.
#[allow(clippy::too_many_arguments)]
pub fn encode(
    out: &mut BytesMut,
    tag: u32,
    queue_id: u64,
    deadline: u64,
    exchange: &[u8],
    routing_key: &[u8],
    properties: &[u8],
    body: &[u8],
) {
    let start = out.len();
    out.put_u32(0);
    out.put_u32(tag);
    out.put_u32(0);
    let payload_start = out.len();
    out.put_u64(queue_id);
    out.put_u64(deadline);
    let ex = &exchange[..exchange.len().min(255)];
    out.put_u8(ex.len() as u8);
    out.extend_from_slice(ex);
    let rk = &routing_key[..routing_key.len().min(255)];
    out.put_u8(rk.len() as u8);
    out.extend_from_slice(rk);
    out.put_u32(properties.len() as u32);
    out.extend_from_slice(properties);
    out.extend_from_slice(body);
    let len = (out.len() - payload_start) as u32;
    let crc = checksum(Some(tag), &out[payload_start..]);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    out[start + 8..start + 12].copy_from_slice(&crc.to_be_bytes());
}

/// Why scanning stopped before the end of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// Fewer bytes than a header or than the length says: a torn write.
    Torn { offset: usize },
    /// The checksum does not match, or the payload does not parse.
    Corrupt { offset: usize },
}

/// Decodes a payload (after the header).
pub fn decode_payload(p: &Bytes) -> Option<Record> {
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Option<Bytes> {
        let end = at.checked_add(n)?;
        if end > p.len() {
            return None;
        }
        let b = p.slice(*at..end);
        *at = end;
        Some(b)
    };
    let qid = take(&mut at, 8)?;
    let queue_id = u64::from_be_bytes(qid[..].try_into().ok()?);
    let dl = take(&mut at, 8)?;
    let deadline = u64::from_be_bytes(dl[..].try_into().ok()?);
    let n = take(&mut at, 1)?[0] as usize;
    let exchange = take(&mut at, n)?;
    let n = take(&mut at, 1)?[0] as usize;
    let routing_key = take(&mut at, n)?;
    let pl = take(&mut at, 4)?;
    let n = u32::from_be_bytes(pl[..].try_into().ok()?) as usize;
    let properties = take(&mut at, n)?;
    let body = p.slice(at..);
    Some(Record { queue_id, deadline, exchange, routing_key, properties, body })
}

/// Walks the records of segment `id`'s bytes: `(offset, record)` for each
/// good one, and where it stopped if the tail is damaged.
pub fn scan(id: u64, data: &Bytes) -> (Vec<(u32, Record)>, Option<Damage>) {
    let f = Format::of(id, data);
    let mut out = Vec::new();
    let mut at = f.first_record();
    while at < data.len() {
        let Some((len, tag, crc)) = header_at(data, at, f) else {
            return (out, Some(Damage::Torn { offset: at }));
        };
        if len == 0 && tag.unwrap_or(0) == 0 && crc == 0 {
            // The zero-filled rest of a preallocated segment: no record is
            // empty, so this is where the log ends.
            return (out, None);
        }
        if !f.owns(tag) {
            // Ids only grow: a smaller tag is a record of this file's
            // earlier life, where the current one ends. Any other tag is a
            // header torn or damaged in writing.
            let earlier = matches!((f, tag), (Format::Tagged { tag: mine }, Some(t)) if t != 0 && t < mine);
            return (out, if earlier { None } else { Some(Damage::Corrupt { offset: at }) });
        }
        let start = at + f.record_header();
        let Some(end) = start.checked_add(len).filter(|e| *e <= data.len()) else {
            return (out, Some(Damage::Torn { offset: at }));
        };
        let payload = data.slice(start..end);
        if checksum(tag, &payload) != crc {
            return (out, Some(Damage::Corrupt { offset: at }));
        }
        match decode_payload(&payload) {
            Some(r) => out.push((at as u32, r)),
            None => return (out, Some(Damage::Corrupt { offset: at })),
        }
        at = end;
    }
    (out, None)
}

/// Parses an ack file: (settled offsets, delivered offsets). A torn last
/// entry (fewer than 4 bytes) is ignored.
pub fn parse_acks(data: &[u8]) -> (std::collections::HashSet<u32>, std::collections::HashSet<u32>) {
    let mut settled = std::collections::HashSet::new();
    let mut delivered = std::collections::HashSet::new();
    for c in data.chunks_exact(4) {
        let v = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        if v & DELIVERED_FLAG != 0 {
            delivered.insert(v & !DELIVERED_FLAG);
        } else {
            settled.insert(v);
        }
    }
    (settled, delivered)
}

/// The record of a segment in format `f` at `at` of `buf` (tag and
/// checksum verified); `None` if it does not lie wholly inside `buf`.
pub fn record_in(buf: &Bytes, at: usize, f: Format) -> Option<std::io::Result<Record>> {
    let (len, tag, crc) = header_at(buf, at, f)?;
    let start = at + f.record_header();
    let end = start.checked_add(len).filter(|e| *e <= buf.len())?;
    Some(verified(f, tag, crc, buf.slice(start..end)))
}

/// Reads one record at `offset` of an open segment in format `f` (tag and
/// checksum verified).
pub fn read_at(file: &std::fs::File, offset: u64, f: Format) -> std::io::Result<Record> {
    use std::os::unix::fs::FileExt;
    let mut head = [0u8; RECORD_HEADER];
    let head = &mut head[..f.record_header()];
    file.read_exact_at(head, offset)?;
    let Some((len, tag, crc)) = header_at(head, 0, f) else {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "short record header"));
    };
    if !f.owns(tag) {
        // Checked before the length is trusted: in a recycled file these
        // bytes may be anything.
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "record of a recycled segment"));
    }
    let mut payload = vec![0u8; len];
    file.read_exact_at(&mut payload, offset + f.record_header() as u64)?;
    verified(f, tag, crc, Bytes::from(payload))
}

fn verified(f: Format, tag: Option<u32>, crc: u32, payload: Bytes) -> std::io::Result<Record> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    if !f.owns(tag) {
        // The file was recycled: this record is gone.
        return Err(bad("record of a recycled segment"));
    }
    if checksum(tag, &payload) != crc {
        return Err(bad("record checksum mismatch"));
    }
    decode_payload(&payload).ok_or_else(|| bad("undecodable record"))
}

/// The format of an open segment file (its first bytes).
pub fn format_of_file(file: &std::fs::File, id: u64) -> std::io::Result<Format> {
    use std::os::unix::fs::FileExt;
    let mut first = [0u8; SEGMENT_MAGIC.len()];
    let mut got = 0;
    while got < first.len() {
        match file.read_at(&mut first[got..], got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    Ok(Format::of(id, &first[..got]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tagged segment `id` holding the given (queue id, body) records.
    fn segment(id: u64, records: &[(u64, &[u8])]) -> (BytesMut, Vec<usize>) {
        let mut b = BytesMut::new();
        b.extend_from_slice(&segment_header(id));
        let mut offsets = Vec::new();
        for (q, body) in records {
            offsets.push(b.len());
            encode(&mut b, tag_of(id), *q, 0, b"x", b"rk", b"\x00\x00", body);
        }
        (b, offsets)
    }

    #[test]
    fn records_round_trip_and_damage_is_found() {
        let (mut b, offsets) = segment(3, &[(7, b"body-1")]);
        let second = b.len();
        encode(&mut b, tag_of(3), 8, 99, b"", b"q", b"\x10\x00\x02", b"");
        let data = b.clone().freeze();
        let (recs, damage) = scan(3, &data);
        assert_eq!(damage, None);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].0 as usize, offsets[0]);
        assert_eq!(offsets[0], SEGMENT_HEADER);
        assert_eq!(recs[1].0 as usize, second);
        assert_eq!(&recs[0].1.body[..], b"body-1");
        assert_eq!((recs[1].1.queue_id, recs[1].1.deadline), (8, 99));
        assert_eq!(encoded_len(b"x", b"rk", b"\x00\x00", b"body-1"), second - SEGMENT_HEADER);

        // A zero-filled (preallocated) tail is the clean end of the log.
        let mut padded = b.clone();
        padded.extend_from_slice(&[0u8; 4096]);
        let (recs, damage) = scan(3, &padded.freeze());
        assert_eq!((recs.len(), damage), (2, None));

        // A torn tail keeps the good prefix.
        let torn = data.slice(..data.len() - 3);
        let (recs, damage) = scan(3, &torn);
        assert_eq!((recs.len(), damage), (1, Some(Damage::Torn { offset: second })));
        // A flipped byte is corruption.
        let mut bad = b.clone();
        bad[second + 16] ^= 0xFF;
        let (recs, damage) = scan(3, &bad.freeze());
        assert_eq!((recs.len(), damage), (1, Some(Damage::Corrupt { offset: second })));
    }

    #[test]
    fn a_recycled_file_ends_where_its_current_life_ends() {
        // The file's earlier life as segment 5: three records.
        let (old, _) = segment(5, &[(1, b"old-a"), (1, b"old-b"), (1, b"old-c")]);
        // Renamed to segment 9 and overwritten from the start with one
        // record of the same size: the old second and third follow it.
        let (new, offsets) = segment(9, &[(2, b"new-a")]);
        let mut file = old.clone();
        file[..new.len()].copy_from_slice(&new);
        let file = file.freeze();
        let (recs, damage) = scan(9, &file);
        assert_eq!(damage, None);
        assert_eq!(recs.len(), 1);
        assert_eq!(&recs[0].1.body[..], b"new-a");
        // Freshly renamed, before anything is written: no records at all.
        assert_eq!(scan(9, &old.clone().freeze()), (Vec::new(), None));
        // A header torn before its tag was written (zeros) or with a tag
        // from no earlier life is damage, not the end of the log.
        let end = new.len();
        for bad_tag in [0u32, 10, 0xdead_0000] {
            let mut torn = file.to_vec();
            torn[end + 4..end + 8].copy_from_slice(&bad_tag.to_be_bytes());
            let (recs, damage) = scan(9, &Bytes::from(torn));
            assert_eq!((recs.len(), damage), (1, Some(Damage::Corrupt { offset: end })), "tag {bad_tag}");
        }
        // A read of an offset the current life has not written is refused.
        let f = Format::of(9, &file);
        let at = offsets[0] + encoded_len(b"x", b"rk", b"\x00\x00", b"new-a");
        let err = record_in(&file, at, f).expect("whole record").expect_err("stale");
        assert!(err.to_string().contains("recycled"), "{err}");
        assert_eq!(&record_in(&file, offsets[0], f).expect("whole").expect("good").body[..], b"new-a");
    }

    #[test]
    fn untagged_files_of_earlier_versions_are_read() {
        // `len | crc32(payload) | payload`, no segment header.
        let mut b = BytesMut::new();
        let mut tagged = BytesMut::new();
        encode(&mut tagged, 0, 4, 0, b"", b"q", b"\x00\x00", b"legacy");
        let payload = &tagged[RECORD_HEADER..];
        b.put_u32(payload.len() as u32);
        b.put_u32(crc32fast::hash(payload));
        b.extend_from_slice(payload);
        b.extend_from_slice(&[0u8; 64]);
        let data = b.freeze();
        assert_eq!(Format::of(1, &data), Format::Untagged);
        let (recs, damage) = scan(1, &data);
        assert_eq!(damage, None);
        assert_eq!((recs.len(), recs[0].0, &recs[0].1.body[..]), (1, 0, &b"legacy"[..]));
        let r = record_in(&data, 0, Format::Untagged).expect("whole").expect("good");
        assert_eq!(r.queue_id, 4);
    }

    #[test]
    fn ack_entries() {
        let mut v = Vec::new();
        v.extend_from_slice(&5u32.to_be_bytes());
        v.extend_from_slice(&(9u32 | DELIVERED_FLAG).to_be_bytes());
        v.extend_from_slice(&[1, 2]); // torn
        let (s, d) = parse_acks(&v);
        assert!(s.contains(&5) && d.contains(&9) && s.len() == 1 && d.len() == 1);
    }
}
