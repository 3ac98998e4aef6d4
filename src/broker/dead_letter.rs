//! Dead-lettering (`rabbit_dead_letter.erl`): republishes a message that died
//! in a queue to the queue's dead-letter exchange, with the x-death array and
//! the `x-first-death-*` / `x-last-death-*` headers as RabbitMQ 3.13 writes them.

use super::vhost::VHost;
use crate::message::Message;
use crate::protocol::properties;
use crate::protocol::{AMQPValue, FieldArray, FieldTable, LongString};
use crate::queue::{Queue, Reason};
use amq_protocol::protocol::basic::{AMQPProperties, gen_properties, parse_properties};
use amq_protocol::types::generation::{gen_field_table, gen_short_string, gen_value};
use bytes::Bytes;
use std::sync::Arc;

fn ls(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn str_of(v: Option<&AMQPValue>) -> Option<String> {
    crate::queue::args::as_str(v?)
}

/// Dead-letters `msg`, which died in `queue`, if the queue has a DLX.
/// A missing DLX drops the message, as in RabbitMQ.
pub fn dead_letter(vhost: &VHost, queue: &Queue, msg: &Message, reason: Reason) {
    let args = queue.args();
    let Some(dlx_name) = args.dead_letter_exchange.as_deref() else {
        return;
    };
    let Ok(dlx) = vhost.exchange(dlx_name) else {
        tracing::debug!(queue = %queue.name, dlx = dlx_name, "dead-letter exchange missing; message dropped");
        return;
    };
    let props = match parse_properties(&msg.properties[..]) {
        Ok((_, p)) => p,
        Err(_) => AMQPProperties::default(),
    };
    let mut headers = props.headers().clone().unwrap_or_default();
    let cc: Vec<String> = match headers.inner().get("CC") {
        Some(AMQPValue::FieldArray(a)) => {
            a.as_slice().iter().filter_map(crate::queue::args::as_str).collect()
        }
        _ => Vec::new(),
    };
    let original_key = String::from_utf8_lossy(&msg.routing_key).into_owned();
    let mut death_keys = vec![original_key.clone()];
    death_keys.extend(cc.iter().cloned());
    let exchange = String::from_utf8_lossy(&msg.exchange).into_owned();
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);

    let mut info = FieldTable::default();
    info.insert("reason".into(), ls(reason.as_str()));
    info.insert("queue".into(), ls(&queue.name));
    info.insert("time".into(), AMQPValue::Timestamp(now));
    info.insert("exchange".into(), ls(&exchange));
    info.insert(
        "routing-keys".into(),
        AMQPValue::FieldArray(FieldArray::from(death_keys.iter().map(|k| ls(k)).collect::<Vec<_>>())),
    );
    if let Some(exp) = props.expiration() {
        info.insert("original-expiration".into(), ls(exp.as_str()));
    }

    let previous: Option<Vec<AMQPValue>> = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => Some(a.as_slice().to_vec()),
        _ => None,
    };
    let mut deaths: Vec<AMQPValue> = previous.clone().unwrap_or_default();
    let same = |t: &FieldTable| {
        str_of(t.inner().get("queue")).as_deref() == Some(queue.name.as_str())
            && str_of(t.inner().get("reason")).as_deref() == Some(reason.as_str())
    };
    let found = deaths.iter().position(|d| matches!(d, AMQPValue::FieldTable(t) if same(t)));
    match found {
        Some(i) => {
            let mut entry = match deaths.remove(i) {
                AMQPValue::FieldTable(t) => t,
                _ => FieldTable::default(),
            };
            let count = entry.inner().get("count").and_then(crate::queue::args::as_int).unwrap_or(0) as i64;
            entry.insert("count".into(), AMQPValue::LongLongInt(count + 1));
            deaths.insert(0, AMQPValue::FieldTable(entry));
        }
        None => {
            let mut entry = info.clone();
            entry.insert("count".into(), AMQPValue::LongLongInt(1));
            deaths.insert(0, AMQPValue::FieldTable(entry));
        }
    }
    if previous.is_none() || !headers.inner().contains_key("x-first-death-reason") {
        headers.insert("x-first-death-reason".into(), ls(reason.as_str()));
        headers.insert("x-first-death-queue".into(), ls(&queue.name));
        headers.insert("x-first-death-exchange".into(), ls(&exchange));
    }
    headers.insert("x-last-death-reason".into(), ls(reason.as_str()));
    headers.insert("x-last-death-queue".into(), ls(&queue.name));
    headers.insert("x-last-death-exchange".into(), ls(&exchange));
    headers.insert("x-death".into(), AMQPValue::FieldArray(FieldArray::from(deaths.clone())));

    // With a dead-letter routing key the CC header goes; otherwise the
    // message keeps all its original keys.
    let dlrk = args.dead_letter_routing_key.clone();
    let keys: Vec<String> = match &dlrk {
        Some(k) => {
            headers.inner_mut_remove("CC");
            vec![k.clone()]
        }
        None => death_keys.clone(),
    };
    let new_props = rebuild_without_expiration(&props, headers.clone());
    let raw = match cookie_factory::gen_simple(gen_properties(&new_props), Vec::new()) {
        Ok(mut v) => {
            order_death_entries(&mut v, &new_props, &headers);
            Bytes::from(v)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot encode dead-lettered properties; message dropped");
            return;
        }
    };
    let Some(scanned) = properties::scan(&raw) else {
        return;
    };
    let routing_key = Bytes::from(keys.first().cloned().unwrap_or_default().into_bytes());
    let dead = Arc::new(Message::new(
        Bytes::from(dlx_name.as_bytes().to_vec()),
        routing_key,
        raw,
        msg.body.clone(),
        scanned,
    ));

    let key_refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    let mut targets = Vec::new();
    vhost.route(&dlx, &key_refs, Some(&headers), &mut targets);
    for q in targets {
        if reason != Reason::Rejected && cycles_back(&deaths, &q.name) {
            tracing::warn!(queue = %q.name, "Message dropped. Dead-letter queues cycle detected");
            continue;
        }
        q.publish(dead.clone(), None);
    }
}

/// The keys of an x-death entry in the order RabbitMQ 3.13 writes them
/// (`mc_amqpl:death_table/7`); any other keys follow, sorted.
const DEATH_KEY_ORDER: [&str; 7] =
    ["original-expiration", "count", "reason", "queue", "time", "exchange", "routing-keys"];

/// `FieldTable` keeps its keys sorted, so the encoded headers carry each
/// x-death entry's keys alphabetically. RabbitMQ sorts the headers table
/// too (`rabbit_misc:set_table_value/4`) but not the entries inside x-death.
/// The same entries in another order encode to the same number of octets,
/// so the headers table is rewritten in place within the encoded
/// properties: after the 2-octet flags and the content-type and
/// content-encoding short strings, where `gen_properties` puts it.
fn order_death_entries(raw: &mut [u8], props: &AMQPProperties, headers: &FieldTable) {
    let Ok(sorted) = cookie_factory::gen_simple(gen_field_table(headers), Vec::new()) else {
        return;
    };
    let mut ordered = Vec::with_capacity(sorted.len());
    if encode_headers_ordered(headers, &mut ordered).is_err() || ordered.len() != sorted.len() {
        return;
    }
    let short = |s: Option<&crate::protocol::ShortString>| s.map_or(0, |s| 1 + s.as_str().len());
    let at = 2 + short(props.content_type().as_ref()) + short(props.content_encoding().as_ref());
    if raw.get(at..at + sorted.len()) == Some(&sorted[..]) {
        raw[at..at + ordered.len()].copy_from_slice(&ordered);
    }
}

fn encode_headers_ordered(headers: &FieldTable, out: &mut Vec<u8>) -> Result<(), cookie_factory::GenError> {
    let mut body = Vec::new();
    for (k, v) in headers.inner() {
        body = cookie_factory::gen_simple(gen_short_string(k.as_str()), body)?;
        match v {
            AMQPValue::FieldArray(deaths) if k.as_str() == "x-death" => {
                let mut arr = Vec::new();
                for d in deaths.as_slice() {
                    match d {
                        AMQPValue::FieldTable(t) => {
                            arr.push(b'F');
                            let mut entry = Vec::new();
                            let known = DEATH_KEY_ORDER.iter().filter_map(|key| t.inner().get_key_value(*key));
                            let rest = t.inner().iter().filter(|(key, _)| !DEATH_KEY_ORDER.contains(&key.as_str()));
                            for (key, value) in known.chain(rest) {
                                entry = cookie_factory::gen_simple(gen_short_string(key.as_str()), entry)?;
                                entry = cookie_factory::gen_simple(gen_value(value), entry)?;
                            }
                            arr.extend_from_slice(&(entry.len() as u32).to_be_bytes());
                            arr.extend_from_slice(&entry);
                        }
                        other => arr = cookie_factory::gen_simple(gen_value(other), arr)?,
                    }
                }
                body.push(b'A');
                body.extend_from_slice(&(arr.len() as u32).to_be_bytes());
                body.extend_from_slice(&arr);
            }
            other => body = cookie_factory::gen_simple(gen_value(other), body)?,
        }
    }
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// RabbitMQ's cycle rule: drop for target `q` if it already appears in
/// x-death and no death since then (newest first) was a rejection.
fn cycles_back(deaths: &[AMQPValue], q: &str) -> bool {
    for d in deaths {
        let AMQPValue::FieldTable(t) = d else {
            continue;
        };
        if str_of(t.inner().get("reason")).as_deref() == Some("rejected") {
            return false;
        }
        if str_of(t.inner().get("queue")).as_deref() == Some(q) {
            return true;
        }
    }
    false
}

fn rebuild_without_expiration(p: &AMQPProperties, headers: FieldTable) -> AMQPProperties {
    let mut n = AMQPProperties::default().with_headers(headers);
    if let Some(v) = p.content_type() {
        n = n.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        n = n.with_content_encoding(v.clone());
    }
    if let Some(v) = p.delivery_mode() {
        n = n.with_delivery_mode(*v);
    }
    if let Some(v) = p.priority() {
        n = n.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        n = n.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        n = n.with_reply_to(v.clone());
    }
    if let Some(v) = p.message_id() {
        n = n.with_message_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        n = n.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        n = n.with_type(v.clone());
    }
    if let Some(v) = p.user_id() {
        n = n.with_user_id(v.clone());
    }
    if let Some(v) = p.app_id() {
        n = n.with_app_id(v.clone());
    }
    if let Some(v) = p.cluster_id() {
        n = n.with_cluster_id(v.clone());
    }
    n
}

/// `FieldTable` has no remove in amq-protocol; rebuild without a key.
trait RemoveKey {
    fn inner_mut_remove(&mut self, key: &str);
}

impl RemoveKey for FieldTable {
    fn inner_mut_remove(&mut self, key: &str) {
        let mut t = FieldTable::default();
        for (k, v) in self.inner() {
            if k.as_str() != key {
                t.insert(k.clone(), v.clone());
            }
        }
        *self = t;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(hay: &[u8], needle: &str) -> usize {
        hay.windows(needle.len()).position(|w| w == needle.as_bytes()).expect(needle)
    }

    #[test]
    fn death_entries_keep_rabbitmqs_key_order() {
        let mut entry = FieldTable::default();
        entry.insert("count".into(), AMQPValue::LongLongInt(1));
        entry.insert("reason".into(), ls("expired"));
        entry.insert("queue".into(), ls("q"));
        entry.insert("time".into(), AMQPValue::Timestamp(1_700_000_000));
        entry.insert("exchange".into(), ls(""));
        entry.insert("routing-keys".into(), AMQPValue::FieldArray(FieldArray::from(vec![ls("q")])));
        entry.insert("original-expiration".into(), ls("100"));
        entry.insert("zz-extra".into(), AMQPValue::Boolean(true));
        let mut headers = FieldTable::default();
        headers.insert("a".into(), ls("first"));
        headers.insert("x-death".into(), AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(entry)])));
        headers.insert("x-first-death-queue".into(), ls("q"));
        let props = AMQPProperties::default()
            .with_content_type("text/plain".into())
            .with_headers(headers.clone())
            .with_delivery_mode(2);
        let mut raw = cookie_factory::gen_simple(gen_properties(&props), Vec::new()).unwrap();
        let before = raw.clone();
        order_death_entries(&mut raw, &props, &headers);
        assert_ne!(raw, before, "the entry was alphabetical before");
        let order: Vec<usize> = DEATH_KEY_ORDER.iter().map(|k| position(&raw, k)).collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        assert!(position(&raw, "routing-keys") < position(&raw, "zz-extra"));
        // The same properties, only the order inside the entry differs.
        let (_, parsed) = parse_properties(&raw[..]).unwrap();
        assert_eq!(parsed, props);
    }
}
