//! Hand-coded codecs for the per-message methods (publish, ack in; deliver,
//! get-ok, return, confirm out). amq-protocol allocates a `String` per short
//! string and builds a flag map per encode; these slice the frame instead.
//! Round-trip tests against amq-protocol keep them honest.

use super::frame::{FRAME_METHOD, begin, finish};
use bytes::{BufMut, Bytes, BytesMut};

pub const CLASS_BASIC: u16 = 60;
pub const BASIC_PUBLISH: u16 = 40;
pub const BASIC_ACK: u16 = 80;

/// `basic.publish` with its names as slices of the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub exchange: Bytes,
    pub routing_key: Bytes,
    pub mandatory: bool,
    pub immediate: bool,
}

/// `basic.ack` (client → server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub delivery_tag: u64,
    pub multiple: bool,
}

/// Class and method ids of a method payload, if it has them.
pub fn method_ids(payload: &[u8]) -> Option<(u16, u16)> {
    if payload.len() < 4 {
        return None;
    }
    Some((u16::from_be_bytes([payload[0], payload[1]]), u16::from_be_bytes([payload[2], payload[3]])))
}

fn short_str(p: &Bytes, at: &mut usize) -> Option<Bytes> {
    let len = *p.get(*at)? as usize;
    let start = *at + 1;
    let end = start + len;
    if end > p.len() {
        return None;
    }
    *at = end;
    Some(p.slice(start..end))
}

/// Parses a `basic.publish` payload (ids included). `None` = cannot decode.
pub fn parse_publish(p: &Bytes) -> Option<Publish> {
    let mut at = 6; // class, method, ticket
    if p.len() < at {
        return None;
    }
    let exchange = short_str(p, &mut at)?;
    let routing_key = short_str(p, &mut at)?;
    let bits = *p.get(at)?;
    if at + 1 != p.len() {
        return None;
    }
    Some(Publish { exchange, routing_key, mandatory: bits & 1 != 0, immediate: bits & 2 != 0 })
}

/// Parses a `basic.ack` payload (ids included).
pub fn parse_ack(p: &[u8]) -> Option<Ack> {
    if p.len() != 13 {
        return None;
    }
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&p[4..12]);
    Some(Ack { delivery_tag: u64::from_be_bytes(tag), multiple: p[12] & 1 != 0 })
}

#[inline]
fn put_short(out: &mut BytesMut, s: &[u8]) {
    // Short strings on the wire are at most 255 bytes; every name that reaches
    // here came from a short string or was validated to fit.
    let len = s.len().min(255);
    out.put_u8(len as u8);
    out.extend_from_slice(&s[..len]);
}

/// `basic.deliver` method frame.
pub fn encode_deliver(
    out: &mut BytesMut,
    channel: u16,
    consumer_tag: &[u8],
    delivery_tag: u64,
    redelivered: bool,
    exchange: &[u8],
    routing_key: &[u8],
) {
    let at = begin(out, FRAME_METHOD, channel);
    out.put_u16(CLASS_BASIC);
    out.put_u16(60);
    put_short(out, consumer_tag);
    out.put_u64(delivery_tag);
    out.put_u8(redelivered as u8);
    put_short(out, exchange);
    put_short(out, routing_key);
    finish(out, at);
}

/// `basic.get-ok` method frame.
pub fn encode_get_ok(
    out: &mut BytesMut,
    channel: u16,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &[u8],
    routing_key: &[u8],
    message_count: u32,
) {
    let at = begin(out, FRAME_METHOD, channel);
    out.put_u16(CLASS_BASIC);
    out.put_u16(71);
    out.put_u64(delivery_tag);
    out.put_u8(redelivered as u8);
    put_short(out, exchange);
    put_short(out, routing_key);
    out.put_u32(message_count);
    finish(out, at);
}

/// `basic.return` method frame.
pub fn encode_return(
    out: &mut BytesMut,
    channel: u16,
    code: u16,
    text: &str,
    exchange: &[u8],
    routing_key: &[u8],
) {
    let at = begin(out, FRAME_METHOD, channel);
    out.put_u16(CLASS_BASIC);
    out.put_u16(50);
    out.put_u16(code);
    put_short(out, text.as_bytes());
    put_short(out, exchange);
    put_short(out, routing_key);
    finish(out, at);
}

/// Publisher confirm: `basic.ack` or `basic.nack` (requeue=false) to the publisher.
pub fn encode_confirm(out: &mut BytesMut, channel: u16, seq: u64, multiple: bool, ack: bool) {
    let at = begin(out, FRAME_METHOD, channel);
    out.put_u16(CLASS_BASIC);
    out.put_u16(if ack { 80 } else { 120 });
    out.put_u64(seq);
    out.put_u8(multiple as u8);
    finish(out, at);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::decode;
    use amq_protocol::protocol::{AMQPClass, basic, parse_class};

    fn encode(c: &AMQPClass) -> Bytes {
        Bytes::from(cookie_factory::gen_simple(amq_protocol::protocol::gen_class(c), Vec::new()).unwrap())
    }

    #[test]
    fn publish_matches_amq_protocol() {
        let m = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "ex".into(),
            routing_key: "a.b".into(),
            mandatory: true,
            immediate: false,
        }));
        let p = parse_publish(&encode(&m)).unwrap();
        assert_eq!(
            (&p.exchange[..], &p.routing_key[..], p.mandatory, p.immediate),
            (&b"ex"[..], &b"a.b"[..], true, false)
        );
        assert_eq!(parse_publish(&Bytes::from_static(&[0, 60, 0, 40, 0, 0, 5, b'a'])), None);
    }

    #[test]
    fn ack_matches_amq_protocol() {
        let m = AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack { delivery_tag: 77, multiple: true }));
        assert_eq!(parse_ack(&encode(&m)), Some(Ack { delivery_tag: 77, multiple: true }));
    }

    #[test]
    fn deliver_and_friends_parse_with_amq_protocol() {
        let mut out = BytesMut::new();
        encode_deliver(&mut out, 5, b"ctag", 9, true, b"x", b"rk");
        encode_get_ok(&mut out, 5, 10, false, b"", b"q", 3);
        encode_return(&mut out, 5, 312, "NO_ROUTE", b"x", b"rk");
        encode_confirm(&mut out, 5, 11, true, false);
        let mut got = Vec::new();
        while let Some(f) = decode(&mut out, 131072).unwrap() {
            got.push(parse_class(&f.payload[..]).unwrap().1);
        }
        assert_eq!(
            got[0],
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: "ctag".into(),
                delivery_tag: 9,
                redelivered: true,
                exchange: "x".into(),
                routing_key: "rk".into()
            }))
        );
        assert_eq!(
            got[1],
            AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                delivery_tag: 10,
                redelivered: false,
                exchange: "".into(),
                routing_key: "q".into(),
                message_count: 3
            }))
        );
        assert!(matches!(&got[2], AMQPClass::Basic(basic::AMQPMethod::Return(r)) if r.reply_code == 312));
        assert!(
            matches!(&got[3], AMQPClass::Basic(basic::AMQPMethod::Nack(n)) if n.delivery_tag == 11 && n.multiple && !n.requeue)
        );
    }
}
