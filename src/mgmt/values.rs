//! AMQP field tables ⇄ JSON, as RabbitMQ's management API renders them
//! (arguments of queues, exchanges and bindings).

use crate::protocol::{AMQPValue, FieldArray, FieldTable, LongString};
use serde_json::{Map, Value, json};

pub fn value(v: &AMQPValue) -> Value {
    use crate::queue::args::as_int;
    match v {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::Float(f) => json!(f),
        AMQPValue::Double(d) => json!(d),
        AMQPValue::DecimalValue(d) => json!(d.value as f64 / 10f64.powi(d.scale as i32)),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value).collect()),
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::FieldTable(t) => table(t),
        AMQPValue::ByteArray(b) => json!(String::from_utf8_lossy(b.as_slice())),
        AMQPValue::Void => Value::Null,
        other => as_int(other).map(|i| json!(i as i64)).unwrap_or(Value::Null),
    }
}

pub fn table(t: &FieldTable) -> Value {
    let mut m = Map::new();
    for (k, v) in t.inner() {
        m.insert(k.to_string(), value(v));
    }
    Value::Object(m)
}

/// JSON arguments from an HTTP request as an AMQP table (integers become
/// signed 64-bit, as RabbitMQ's management plugin does). `None` if `v` is
/// not an object.
pub fn to_table(v: &Value) -> Option<FieldTable> {
    let obj = v.as_object()?;
    let mut t = FieldTable::default();
    for (k, v) in obj {
        if k.len() > 255 {
            return None;
        }
        t.insert(crate::protocol::short(k), to_value(v));
    }
    Some(t)
}

fn to_value(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
        Value::Array(a) => {
            AMQPValue::FieldArray(FieldArray::from(a.iter().map(to_value).collect::<Vec<_>>()))
        }
        Value::Object(_) => AMQPValue::FieldTable(to_table(v).unwrap_or_default()),
    }
}
