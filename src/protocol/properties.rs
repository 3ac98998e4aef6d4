//! Content properties kept raw: the broker re-sends the publisher's bytes
//! unchanged and only scans out the few fields it acts on.

use amq_protocol::types::{AMQPValue, FieldTable};

const F_CONTENT_TYPE: u16 = 1 << 15;
const F_CONTENT_ENCODING: u16 = 1 << 14;
const F_HEADERS: u16 = 1 << 13;
const F_DELIVERY_MODE: u16 = 1 << 12;
const F_PRIORITY: u16 = 1 << 11;
const F_CORRELATION_ID: u16 = 1 << 10;
const F_REPLY_TO: u16 = 1 << 9;
const F_EXPIRATION: u16 = 1 << 8;
const F_MESSAGE_ID: u16 = 1 << 7;
const F_TIMESTAMP: u16 = 1 << 6;
const F_TYPE: u16 = 1 << 5;
const F_USER_ID: u16 = 1 << 4;
const F_APP_ID: u16 = 1 << 3;
const F_CLUSTER_ID: u16 = 1 << 2;

/// A byte range `start..end` in the raw properties. `u32` is enough (they
/// come in one frame, whose size is a `u32`) and halves what every queued
/// message carries: this struct lives in each `Message`.
pub type Span = (u32, u32);

/// The fields the broker needs, as byte ranges into the raw properties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scanned {
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    /// Range of the headers table (without its length prefix).
    pub headers: Option<Span>,
    pub expiration: Option<Span>,
    pub user_id: Option<Span>,
    pub reply_to: Option<Span>,
}

impl Scanned {
    /// The bytes of `span` in `raw` (the properties it was scanned from).
    pub fn get(raw: &[u8], span: Option<Span>) -> Option<&[u8]> {
        span.and_then(|(a, b)| raw.get(a as usize..b as usize))
    }
}

/// Walks the property list once. `None` if the bytes are malformed.
pub fn scan(raw: &[u8]) -> Option<Scanned> {
    if raw.len() > u32::MAX as usize {
        return None;
    }
    let mut at = 0usize;
    let flags = u16::from_be_bytes([*raw.first()?, *raw.get(1)?]);
    at += 2;
    if flags & 1 != 0 {
        return None; // continuation flag words are not defined for class basic
    }
    let mut s = Scanned::default();
    // Offsets fit a u32: `raw` is no longer (checked above).
    let span = |start: usize, end: usize| (start as u32, end as u32);
    let short = |at: &mut usize| -> Option<Span> {
        let len = *raw.get(*at)? as usize;
        let start = *at + 1;
        let end = start + len;
        (end <= raw.len()).then(|| {
            *at = end;
            span(start, end)
        })
    };
    if flags & F_CONTENT_TYPE != 0 {
        short(&mut at)?;
    }
    if flags & F_CONTENT_ENCODING != 0 {
        short(&mut at)?;
    }
    if flags & F_HEADERS != 0 {
        let len = u32::from_be_bytes(raw.get(at..at + 4)?.try_into().ok()?) as usize;
        let start = at + 4;
        let end = start.checked_add(len)?;
        if end > raw.len() {
            return None;
        }
        s.headers = Some(span(start, end));
        at = end;
    }
    if flags & F_DELIVERY_MODE != 0 {
        s.delivery_mode = Some(*raw.get(at)?);
        at += 1;
    }
    if flags & F_PRIORITY != 0 {
        s.priority = Some(*raw.get(at)?);
        at += 1;
    }
    if flags & F_CORRELATION_ID != 0 {
        short(&mut at)?;
    }
    if flags & F_REPLY_TO != 0 {
        s.reply_to = Some(short(&mut at)?);
    }
    if flags & F_EXPIRATION != 0 {
        s.expiration = Some(short(&mut at)?);
    }
    if flags & F_MESSAGE_ID != 0 {
        short(&mut at)?;
    }
    if flags & F_TIMESTAMP != 0 {
        raw.get(at..at + 8)?;
        at += 8;
    }
    if flags & F_TYPE != 0 {
        short(&mut at)?;
    }
    if flags & F_USER_ID != 0 {
        s.user_id = Some(short(&mut at)?);
    }
    if flags & F_APP_ID != 0 {
        short(&mut at)?;
    }
    if flags & F_CLUSTER_ID != 0 {
        short(&mut at)?;
    }
    (at == raw.len()).then_some(s)
}

/// Parses a field table body (the bytes after its length prefix).
pub fn parse_table(body: &[u8]) -> Option<FieldTable> {
    let mut framed = Vec::with_capacity(body.len() + 4);
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(body);
    match amq_protocol::types::parsing::parse_field_table(&framed[..]) {
        Ok(([], t)) => Some(t),
        _ => None,
    }
}

/// Looks a header up by name.
pub fn header<'a>(table: &'a FieldTable, key: &str) -> Option<&'a AMQPValue> {
    table.inner().get(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::basic::{AMQPProperties, gen_properties};

    #[test]
    fn scan_finds_fields_written_by_amq_protocol() {
        let mut headers = FieldTable::default();
        headers.insert("k".into(), AMQPValue::LongString("v".into()));
        let props = AMQPProperties::default()
            .with_content_type("text/plain".into())
            .with_headers(headers)
            .with_delivery_mode(2)
            .with_priority(7)
            .with_reply_to("r".into())
            .with_expiration("1000".into())
            .with_timestamp(5)
            .with_user_id("guest".into());
        let raw = cookie_factory::gen_simple(gen_properties(&props), Vec::new()).unwrap();
        let s = scan(&raw).unwrap();
        assert_eq!(s.delivery_mode, Some(2));
        assert_eq!(s.priority, Some(7));
        assert_eq!(Scanned::get(&raw, s.expiration), Some(&b"1000"[..]));
        assert_eq!(Scanned::get(&raw, s.user_id), Some(&b"guest"[..]));
        let t = parse_table(Scanned::get(&raw, s.headers).unwrap()).unwrap();
        assert_eq!(header(&t, "k"), Some(&AMQPValue::LongString("v".into())));
        assert_eq!(scan(&raw[..raw.len() - 1]), None);
        assert_eq!(scan(&[0, 0]), Some(Scanned::default()));
    }
}
