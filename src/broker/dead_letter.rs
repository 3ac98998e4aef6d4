//! Dead-lettering (`rabbit_dead_letter.erl`): republishes a message that died
//! in a queue to the queue's dead-letter exchange, with the x-death array and
//! the `x-first-death-*` / `x-last-death-*` headers as RabbitMQ 3.13 writes them.

use super::vhost::VHost;
use crate::message::Message;
use crate::protocol::properties;
use crate::protocol::{AMQPValue, FieldArray, FieldTable, LongString};
use crate::queue::{Queue, Reason};
use amq_protocol::protocol::basic::{AMQPProperties, gen_properties, parse_properties};
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
        Ok(v) => Bytes::from(v),
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
