//! The segment log's on-disk format. Pure functions over bytes and paths.
//!
//! A segment file `NNNNNNNNNNNNNNNNNNNN.seg` is a sequence of records:
//! `len: u32 | crc32(payload): u32 | payload`, payload =
//! `queue_id: u64 | deadline: u64 | exchange: short | routing_key: short | props_len: u32 | props | body`
//! (deadline: when the message expires, ms since the epoch, 0 = never).
//! Its companion `NNNN….ack` is a sequence of u32 entries, one per event on
//! a record of that segment: the record's offset, with the top bit set for
//! "delivered at least once" and clear for "settled" (acked, dropped, purged).
//! A segment and its ack file are unlinked once every record is settled.

use bytes::{BufMut, Bytes, BytesMut};
use std::path::{Path, PathBuf};

/// Bytes before a record's payload.
pub const RECORD_HEADER: usize = 8;
/// Ack-file flag: the record was delivered (a redelivery hint after a crash).
pub const DELIVERED_FLAG: u32 = 1 << 31;

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
    let mut ids = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".seg")
            && let Ok(id) = stem.parse::<u64>()
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Size of the encoded record.
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

/// Appends one record to `out`.
pub fn encode(
    out: &mut BytesMut,
    queue_id: u64,
    deadline: u64,
    exchange: &[u8],
    routing_key: &[u8],
    properties: &[u8],
    body: &[u8],
) {
    let start = out.len();
    out.put_u32(0);
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
    let crc = crc32fast::hash(&out[payload_start..]);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
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

/// Walks the records of a segment's bytes: `(offset, record)` for each good
/// one, and where it stopped if the tail is damaged.
pub fn scan(data: &Bytes) -> (Vec<(u32, Record)>, Option<Damage>) {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        if data.len() - at < RECORD_HEADER {
            return (out, Some(Damage::Torn { offset: at }));
        }
        let len = u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
        let crc = u32::from_be_bytes([data[at + 4], data[at + 5], data[at + 6], data[at + 7]]);
        if len == 0 && crc == 0 {
            // The zero-filled rest of a preallocated segment: no record is
            // empty, so this is where the log ends.
            return (out, None);
        }
        let start = at + RECORD_HEADER;
        let Some(end) = start.checked_add(len).filter(|e| *e <= data.len()) else {
            return (out, Some(Damage::Torn { offset: at }));
        };
        let payload = data.slice(start..end);
        if crc32fast::hash(&payload) != crc {
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

/// The record at `at` of `buf` (checksum verified); `None` if it does not
/// lie wholly inside `buf`.
pub fn record_in(buf: &Bytes, at: usize) -> Option<std::io::Result<Record>> {
    let head = buf.get(at..at.checked_add(RECORD_HEADER)?)?;
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    let start = at + RECORD_HEADER;
    let end = start.checked_add(len).filter(|e| *e <= buf.len())?;
    let payload = buf.slice(start..end);
    if crc32fast::hash(&payload) != crc {
        return Some(Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "record checksum mismatch")));
    }
    Some(
        decode_payload(&payload)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "undecodable record")),
    )
}

/// Reads one record at `offset` of an open segment (checksum verified).
pub fn read_at(file: &std::fs::File, offset: u64) -> std::io::Result<Record> {
    use std::os::unix::fs::FileExt;
    let mut head = [0u8; RECORD_HEADER];
    file.read_exact_at(&mut head, offset)?;
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    let mut payload = vec![0u8; len];
    file.read_exact_at(&mut payload, offset + RECORD_HEADER as u64)?;
    if crc32fast::hash(&payload) != crc {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "record checksum mismatch"));
    }
    decode_payload(&Bytes::from(payload))
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "undecodable record"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_found() {
        let mut b = BytesMut::new();
        encode(&mut b, 7, 0, b"x", b"rk", b"\x00\x00", b"body-1");
        let second = b.len();
        encode(&mut b, 8, 99, b"", b"q", b"\x10\x00\x02", b"");
        let data = b.clone().freeze();
        let (recs, damage) = scan(&data);
        assert_eq!(damage, None);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].0, 0);
        assert_eq!(recs[1].0 as usize, second);
        assert_eq!(&recs[0].1.body[..], b"body-1");
        assert_eq!((recs[1].1.queue_id, recs[1].1.deadline), (8, 99));
        assert_eq!(encoded_len(b"x", b"rk", b"\x00\x00", b"body-1"), second);

        // A zero-filled (preallocated) tail is the clean end of the log.
        let mut padded = b.clone();
        padded.extend_from_slice(&[0u8; 4096]);
        let (recs, damage) = scan(&padded.freeze());
        assert_eq!((recs.len(), damage), (2, None));

        // A torn tail keeps the good prefix.
        let torn = data.slice(..data.len() - 3);
        let (recs, damage) = scan(&torn);
        assert_eq!((recs.len(), damage), (1, Some(Damage::Torn { offset: second })));
        // A flipped byte is corruption.
        let mut bad = b.clone();
        bad[second + 12] ^= 0xFF;
        let (recs, damage) = scan(&bad.freeze());
        assert_eq!((recs.len(), damage), (1, Some(Damage::Corrupt { offset: second })));
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
