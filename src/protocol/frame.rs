//! Frame splitting and encoding. Pure: no tokio, no broker types.
//!
//! `decode` takes whole frames off the front of the read buffer with
//! `split_to`, so a body payload is a zero-copy `Bytes` slice of what was read.
//! Encoders append complete frames to an outbound `BytesMut`.

use crate::error::AmqpError;
use amq_protocol::protocol::AMQPClass;
use bytes::{BufMut, Bytes, BytesMut};

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
/// type + channel + size, before the payload.
pub const FRAME_HEADER_SIZE: usize = 7;
/// Header and end octet: what a frame adds to its payload.
pub const FRAME_OVERHEAD: usize = 8;
/// The frame size limit before `connection.tune-ok` (spec minimum).
pub const FRAME_MIN_SIZE: u32 = 4096;

pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub channel: u16,
    pub payload: Bytes,
}

/// Takes one frame off `buf`. `Ok(None)` means more bytes are needed.
/// `frame_max` is the negotiated frame size (whole frame, as in `tune`).
pub fn decode(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, AmqpError> {
    if buf.len() < FRAME_HEADER_SIZE {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
    // RabbitMQ lets a payload run up to `frame_max` itself, 8 octets past the
    // limit, because "quite a few [clients] get it wrong"
    // (`rabbit_reader`'s FRAME_SIZE_FUDGE); the text names the real limit.
    let max_payload = frame_max.saturating_sub(FRAME_OVERHEAD as u32);
    if frame_max != 0 && size > frame_max {
        return Err(AmqpError::frame_error(format!(
            "type {kind}, all octets = <<>>: {{frame_too_large,{size},{max_payload}}}"
        )));
    }
    let total = FRAME_OVERHEAD + size as usize;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let end = buf[total - 1];
    if end != FRAME_END {
        let octets = crate::error::frame_octets(kind, &buf[FRAME_HEADER_SIZE..total - 1]);
        return Err(AmqpError::frame_error(format!("{octets}: {{invalid_frame_end_marker,{end}}}")));
    }
    // A frame of an unknown type is whole and well ended here: the
    // connection refuses it (501 unknown_frame) with its octets, as RabbitMQ.
    let frame = buf.split_to(total).freeze();
    let payload = frame.slice(FRAME_HEADER_SIZE..total - 1);
    Ok(Some(Frame { kind, channel, payload }))
}

/// Starts a frame, returning the offset of its size field for `finish`.
#[inline]
pub fn begin(out: &mut BytesMut, kind: u8, channel: u16) -> usize {
    out.put_u8(kind);
    out.put_u16(channel);
    let at = out.len();
    out.put_u32(0);
    at
}

/// Back-patches the size written by `begin` and appends the end octet.
#[inline]
pub fn finish(out: &mut BytesMut, size_at: usize) {
    let size = (out.len() - size_at - 4) as u32;
    out[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    out.put_u8(FRAME_END);
}

/// Encodes any method with amq-protocol's generator (control path, not hot).
pub fn encode_method(out: &mut BytesMut, channel: u16, method: &AMQPClass) {
    let at = begin(out, FRAME_METHOD, channel);
    match cookie_factory::gen_simple(amq_protocol::protocol::gen_class(method), Vec::with_capacity(64)) {
        Ok(bytes) => out.extend_from_slice(&bytes),
        Err(e) => {
            // Only reachable with a value that cannot be encoded (e.g. a table
            // over 4 GiB); drop the frame rather than send a corrupt one.
            out.truncate(at - 3);
            tracing::error!(error = %e, "cannot encode method frame");
            return;
        }
    }
    finish(out, at);
}

pub fn encode_heartbeat(out: &mut BytesMut) {
    out.extend_from_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

/// Content header frame: class 60, weight 0, body size, then the properties
/// exactly as the publisher sent them.
pub fn encode_content_header(out: &mut BytesMut, channel: u16, body_size: u64, raw_properties: &[u8]) {
    let at = begin(out, FRAME_HEADER, channel);
    out.put_u16(60);
    out.put_u16(0);
    out.put_u64(body_size);
    out.extend_from_slice(raw_properties);
    finish(out, at);
}

/// Body frames, split so no frame exceeds `frame_max`.
pub fn encode_body(out: &mut BytesMut, channel: u16, body: &[u8], frame_max: u32) {
    let chunk = if frame_max == 0 { usize::MAX } else { frame_max as usize - FRAME_OVERHEAD };
    for part in body.chunks(chunk.max(1)) {
        out.reserve(part.len() + FRAME_OVERHEAD);
        let at = begin(out, FRAME_BODY, channel);
        out.extend_from_slice(part);
        finish(out, at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kind: u8, channel: u16, payload: &[u8], end: u8) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u8(kind);
        b.put_u16(channel);
        b.put_u32(payload.len() as u32);
        b.extend_from_slice(payload);
        b.put_u8(end);
        b
    }

    #[test]
    fn splits_whole_frames_and_waits_for_partial() {
        let mut b = raw(FRAME_BODY, 3, b"hello", FRAME_END);
        b.extend_from_slice(&raw(FRAME_HEARTBEAT, 0, b"", FRAME_END)[..4]);
        let f = decode(&mut b, 131072).unwrap().unwrap();
        assert_eq!((f.kind, f.channel, &f.payload[..]), (FRAME_BODY, 3, &b"hello"[..]));
        assert_eq!(decode(&mut b, 131072).unwrap(), None);
    }

    #[test]
    fn rejects_bad_end_and_oversize_and_splits_unknown_types() {
        let e = decode(&mut raw(FRAME_BODY, 1, b"x", 0), 131072).unwrap_err();
        assert_eq!(e.code, 501);
        assert!(e.explanation.contains("invalid_frame_end_marker"));
        assert_eq!(e.explanation, "type 3, all octets = <<\"x\">>: {invalid_frame_end_marker,0}");
        let e = decode(&mut raw(FRAME_BODY, 1, &[0u8; 5000], FRAME_END), 4096).unwrap_err();
        assert!(e.explanation.contains("frame_too_large,5000,4088"), "{}", e.explanation);
        let e = decode(&mut raw(FRAME_BODY, 1, &[0u8; 4097], FRAME_END), 4096).unwrap_err();
        assert!(e.explanation.contains("frame_too_large,4097,4088"), "{}", e.explanation);
        // Up to frame_max itself is let through, as RabbitMQ does.
        let f = decode(&mut raw(FRAME_BODY, 1, &[0u8; 4096], FRAME_END), 4096).unwrap().unwrap();
        assert_eq!(f.payload.len(), 4096);
        // Unknown types are split off whole; the connection refuses them.
        let f = decode(&mut raw(9, 1, b"xx", FRAME_END), 4096).unwrap().unwrap();
        assert_eq!((f.kind, &f.payload[..]), (9, &b"xx"[..]));
    }

    #[test]
    fn body_is_split_by_frame_max() {
        let mut out = BytesMut::new();
        encode_body(&mut out, 1, &[7u8; 10000], 4096);
        let mut n = 0;
        let mut total = 0;
        while let Some(f) = decode(&mut out, 4096).unwrap() {
            n += 1;
            total += f.payload.len();
        }
        assert_eq!((n, total), (3, 10000));
    }
}
