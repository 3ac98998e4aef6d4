//! An immutable published message, shared by `Arc` between every queue it was
//! routed to. Names and body are slices of the frames they arrived in; the
//! content properties are kept exactly as the publisher encoded them.

use crate::protocol::properties::{self, Scanned};
use crate::protocol::{AMQPValue, FieldTable};
use bytes::Bytes;

#[derive(Debug)]
pub struct Message {
    /// The exchange the message was published to.
    pub exchange: Bytes,
    pub routing_key: Bytes,
    /// Raw content-header properties (flag word onwards).
    pub properties: Bytes,
    pub body: Bytes,
    pub scanned: Scanned,
}

impl Message {
    pub fn new(
        exchange: Bytes,
        routing_key: Bytes,
        properties: Bytes,
        body: Bytes,
        scanned: Scanned,
    ) -> Self {
        Message { exchange, routing_key, properties, body, scanned }
    }

    pub fn body_size(&self) -> u64 {
        self.body.len() as u64
    }

    pub fn persistent(&self) -> bool {
        self.scanned.delivery_mode == Some(2)
    }

    pub fn priority(&self) -> u8 {
        self.scanned.priority.unwrap_or(0)
    }

    fn range(&self, r: Option<properties::Span>) -> Option<&[u8]> {
        Scanned::get(&self.properties, r)
    }

    pub fn expiration(&self) -> Option<&[u8]> {
        self.range(self.scanned.expiration)
    }

    pub fn user_id(&self) -> Option<&[u8]> {
        self.range(self.scanned.user_id)
    }

    pub fn reply_to(&self) -> Option<&[u8]> {
        self.range(self.scanned.reply_to)
    }

    /// The headers table, parsed on demand (headers exchange, CC/BCC).
    pub fn headers(&self) -> Option<FieldTable> {
        self.range(self.scanned.headers).and_then(properties::parse_table)
    }
}

impl Message {
    /// A copy without one header (properties re-encoded; body shared).
    pub fn without_header(&self, key: &str) -> Option<Message> {
        use amq_protocol::protocol::basic::{gen_properties, parse_properties};
        let (_, props) = parse_properties(&self.properties[..]).ok()?;
        let mut headers = FieldTable::default();
        for (k, v) in props.headers().clone().unwrap_or_default().inner() {
            if k.as_str() != key {
                headers.insert(k.clone(), v.clone());
            }
        }
        let props = props.with_headers(headers);
        let raw = Bytes::from(cookie_factory::gen_simple(gen_properties(&props), Vec::new()).ok()?);
        let scanned = properties::scan(&raw)?;
        Some(Message::new(self.exchange.clone(), self.routing_key.clone(), raw, self.body.clone(), scanned))
    }

    /// A copy with one header set (properties re-encoded; body shared).
    pub fn with_header(&self, key: &str, value: i64) -> Option<Message> {
        use amq_protocol::protocol::basic::{gen_properties, parse_properties};
        let (_, props) = parse_properties(&self.properties[..]).ok()?;
        let mut headers = props.headers().clone().unwrap_or_default();
        headers.insert(key.into(), AMQPValue::LongLongInt(value));
        let props = props.with_headers(headers);
        let raw = Bytes::from(cookie_factory::gen_simple(gen_properties(&props), Vec::new()).ok()?);
        let scanned = properties::scan(&raw)?;
        Some(Message::new(self.exchange.clone(), self.routing_key.clone(), raw, self.body.clone(), scanned))
    }
}

/// CC/BCC routing keys from a headers table; `Err(name)` if a header is
/// present but is not an array of long strings (RabbitMQ: 406).
/// RabbitMQ's longest TTL: ten years in milliseconds (`rabbit_misc:check_expiry/1`).
pub const MAX_EXPIRY_MS: u64 = 315_360_000_000;

/// Parses a per-message `expiration` as RabbitMQ's
/// `rabbit_basic:parse_expiration/1` does (`string:to_integer`, then
/// `check_expiry`): an optional sign, decimal digits, nothing after them,
/// from 0 to ten years. The error is the reason RabbitMQ prints.
pub fn parse_expiration(raw: &[u8]) -> Result<u64, String> {
    let s = String::from_utf8_lossy(raw);
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(&s);
    let digits = unsigned.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err("no_integer".to_string());
    }
    let (num, rest) = unsigned.split_at(digits);
    if !rest.is_empty() {
        return Err(format!("{{leftover_string,\"{rest}\"}}"));
    }
    // Erlang prints the integer itself: no sign for a positive one, no
    // leading zeros.
    let trimmed = match num.trim_start_matches('0') {
        "" => "0",
        t => t,
    };
    let negative = s.starts_with('-') && trimmed != "0";
    if negative {
        return Err(format!("{{value_negative,-{trimmed}}}"));
    }
    match trimmed.parse::<u64>() {
        Ok(v) if v <= MAX_EXPIRY_MS => Ok(v),
        _ => Err(format!("{{value_too_large,{trimmed}}}")),
    }
}

pub fn cc_bcc(headers: &FieldTable) -> Result<Vec<Bytes>, &'static str> {
    let mut keys = Vec::new();
    for name in ["CC", "BCC"] {
        match properties::header(headers, name) {
            None => {}
            Some(AMQPValue::FieldArray(arr)) => {
                for v in arr.as_slice() {
                    match v {
                        AMQPValue::LongString(s) => keys.push(Bytes::copy_from_slice(s.as_bytes())),
                        _ => return Err(name),
                    }
                }
            }
            Some(_) => return Err(name),
        }
    }
    Ok(keys)
}
