//! Bindings, publishing and getting messages over HTTP
//! (`rabbit_mgmt_wm_binding(s)`, `_exchange_publish`, `_queue_get`), in
//! RabbitMQ's shapes: bindings carry a `properties_key` that names them in
//! URLs; publish answers `{"routed": bool}` once a persistent message is on
//! disk; get hands messages out and settles them as `ackmode` says.

use super::{ApiError, Authed, Writes, values};
use crate::broker::Broker;
use crate::broker::access::Access;
use crate::broker::dead_letter::dead_letter;
use crate::broker::vhost::VHost;
use crate::exchange::{DELAY_QUEUE_PREFIX, Destination};
use crate::message::Message;
use crate::protocol::properties;
use crate::queue::{Queue, Reason};
use crate::store::Durable;
use amq_protocol::protocol::basic::AMQPProperties;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

type ApiResult = Result<Response, ApiError>;

/// The management API names the default exchange `amq.default`.
fn exchange_name(name: &str) -> &str {
    if name == "amq.default" { "" } else { name }
}

fn not_found(reason: String) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", reason)
}

/// `application/x-www-form-urlencoded` quoting (`rabbit_http_util:quote_plus`)
/// with `~` escaped, as RabbitMQ quotes binding keys.
fn quote_plus(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// URL path quoting of a segment (RFC 3986 unreserved characters kept).
fn quote_path(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// RabbitMQ's `properties_key`: `~` for an empty key without arguments,
/// the quoted key, or `key~<hash of the arguments>` (opaque to clients).
pub fn properties_key(routing_key: &str, arguments: &Value) -> String {
    let empty_args = arguments.as_object().is_none_or(|m| m.is_empty());
    match (routing_key.is_empty(), empty_args) {
        (true, true) => "~".to_string(),
        (_, true) => quote_plus(routing_key),
        _ => {
            // FNV-1a over the canonical JSON (serde_json sorts object keys).
            let mut h: u32 = 0x811c_9dc5;
            for b in arguments.to_string().bytes() {
                h = (h ^ b as u32).wrapping_mul(0x0100_0193);
            }
            let hash = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(h.to_be_bytes());
            format!("{}~{}", quote_plus(routing_key), hash)
        }
    }
}

fn binding_json(vhost: &str, source: &str, dest: &str, dest_type: &str, key: &str, args: Value) -> Value {
    json!({"source": source, "vhost": vhost, "destination": dest, "destination_type": dest_type,
           "routing_key": key, "arguments": args.clone(), "properties_key": properties_key(key, &args)})
}

/// Every binding of a vhost, the default exchange's implicit ones first
/// (RabbitMQ lists them too).
pub fn bindings_of(v: &VHost) -> Vec<Value> {
    let mut queues: Vec<String> =
        v.queues.iter().map(|q| q.name.clone()).filter(|n| !n.starts_with(DELAY_QUEUE_PREFIX)).collect();
    queues.sort();
    let mut out: Vec<Value> =
        queues.iter().map(|q| binding_json(&v.name, "", q, "queue", q, json!({}))).collect();
    let mut exchanges: Vec<_> = v.exchanges.iter().map(|x| x.clone()).collect();
    exchanges.sort_by(|a, b| a.name.cmp(&b.name));
    for x in exchanges {
        for b in x.bindings() {
            let (dest, kind) = match &b.destination {
                Destination::Queue(q) => (q.name.clone(), "queue"),
                Destination::Exchange(e) => (e.clone(), "exchange"),
            };
            out.push(binding_json(
                &v.name,
                &x.name,
                &dest,
                kind,
                &b.routing_key,
                values::table(&b.arguments),
            ));
        }
    }
    out
}

pub async fn bindings(State(b): State<Arc<Broker>>, a: Authed) -> ApiResult {
    let mut out = Vec::new();
    let mut names: Vec<String> =
        b.vhosts.iter().filter(|v| a.can_access(&b, &v.name)).map(|v| v.name.clone()).collect();
    names.sort();
    for n in names {
        if let Some(v) = b.vhost(&n) {
            out.extend(bindings_of(&v));
        }
    }
    Ok(Json(out).into_response())
}

pub async fn bindings_in(State(b): State<Arc<Broker>>, a: Authed, Path(vh): Path<String>) -> ApiResult {
    let v = a.vhost(&b, &vh)?;
    Ok(Json(bindings_of(&v)).into_response())
}

fn filtered(v: &VHost, keep: impl Fn(&Value) -> bool) -> Vec<Value> {
    bindings_of(v).into_iter().filter(|b| keep(b)).collect()
}

pub async fn exchange_bindings_source(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path((vh, x)): Path<(String, String)>,
) -> ApiResult {
    let v = a.vhost(&b, &vh)?;
    let name = exchange_name(&x).to_string();
    v.exchange(&name).map_err(|_| ApiError::not_found())?;
    Ok(Json(filtered(&v, |j| j["source"] == name.as_str())).into_response())
}

pub async fn exchange_bindings_destination(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path((vh, x)): Path<(String, String)>,
) -> ApiResult {
    let v = a.vhost(&b, &vh)?;
    let name = exchange_name(&x).to_string();
    v.exchange(&name).map_err(|_| ApiError::not_found())?;
    Ok(Json(filtered(&v, |j| j["destination_type"] == "exchange" && j["destination"] == name.as_str()))
        .into_response())
}

pub async fn queue_bindings(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path((vh, q)): Path<(String, String)>,
) -> ApiResult {
    let v = a.vhost(&b, &vh)?;
    v.queue(&q).map_err(|_| ApiError::not_found())?;
    Ok(Json(filtered(&v, |j| j["destination_type"] == "queue" && j["destination"] == q.as_str()))
        .into_response())
}

/// `e/{source}/{q|e}/{destination}`: which kind the destination is.
fn dest_kind(kind: &str) -> Result<&'static str, ApiError> {
    match kind {
        "q" => Ok("queue"),
        "e" => Ok("exchange"),
        _ => Err(ApiError::not_found()),
    }
}

pub async fn binding_list(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path((vh, src, kind, dest)): Path<(String, String, String, String)>,
) -> ApiResult {
    let v = a.vhost(&b, &vh)?;
    let kind = dest_kind(&kind)?;
    let src = exchange_name(&src).to_string();
    v.exchange(&src).map_err(|_| not_found(format!("no exchange '{src}' in vhost '{vh}'")))?;
    let out = filtered(&v, |j| {
        j["source"] == src.as_str() && j["destination_type"] == kind && j["destination"] == dest.as_str()
    });
    Ok(Json(out).into_response())
}

/// AMQP refusals as the binding endpoints answer them.
fn binding_error(e: crate::error::AmqpError) -> ApiError {
    match e.code {
        404 => not_found(e.explanation),
        403 => ApiError::new(StatusCode::UNAUTHORIZED, "not_authorised", "Access refused."),
        _ => ApiError::from_amqp(e),
    }
}

pub async fn binding_create(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path((vh, src, kind, dest)): Path<(String, String, String, String)>,
    body: axum::body::Bytes,
) -> ApiResult {
    a.0.require_write()?;
    let v = a.vhost(&b, &vh)?;
    let kind = dest_kind(&kind)?;
    let spec: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&body).map_err(ApiError::bad_json)?
    };
    let key = spec.get("routing_key").and_then(Value::as_str).unwrap_or_default().to_string();
    let args_json = spec.get("arguments").cloned().filter(|a| !a.is_null()).unwrap_or_else(|| json!({}));
    let arguments =
        values::to_table(&args_json).ok_or_else(|| ApiError::bad_request("arguments must be an object"))?;
    let src_name = exchange_name(&src);
    // queue.bind / exchange.bind as the user: write on the destination,
    // read on the source.
    a.permit(&b, &vh, Access::Write, kind, &dest)?;
    a.permit(&b, &vh, Access::Read, "exchange", src_name)?;
    let r = if kind == "queue" {
        v.bind_queue(&dest, src_name, &key, arguments, u64::MAX)
    } else {
        v.bind_exchange(&dest, src_name, &key, arguments)
    };
    r.map_err(binding_error)?;
    // Relative to the request path, every segment quoted (the properties
    // key a second time), as RabbitMQ answers.
    let location = format!("{}/{}", quote_path(&dest), quote_path(&properties_key(&key, &args_json)));
    Ok((StatusCode::CREATED, [(header::LOCATION, location)]).into_response())
}

fn find_binding(v: &VHost, src: &str, kind: &str, dest: &str, props: &str) -> Result<Value, ApiError> {
    filtered(v, |j| {
        j["source"] == src
            && j["destination_type"] == kind
            && j["destination"] == dest
            && j["properties_key"] == props
    })
    .into_iter()
    .next()
    .ok_or_else(ApiError::not_found)
}

pub async fn binding_detail(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path((vh, src, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> ApiResult {
    let v = a.vhost(&b, &vh)?;
    let kind = dest_kind(&kind)?;
    Ok(Json(find_binding(&v, exchange_name(&src), kind, &dest, &props)?).into_response())
}

pub async fn binding_delete(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path((vh, src, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> ApiResult {
    a.0.require_write()?;
    let v = a.vhost(&b, &vh)?;
    let kind = dest_kind(&kind)?;
    let found = find_binding(&v, exchange_name(&src), kind, &dest, &props)?;
    let key = found["routing_key"].as_str().unwrap_or_default().to_string();
    let arguments = values::to_table(&found["arguments"]).unwrap_or_default();
    a.permit(&b, &vh, Access::Write, kind, &dest)?;
    a.permit(&b, &vh, Access::Read, "exchange", exchange_name(&src))?;
    let r = if kind == "queue" {
        v.unbind_queue(&dest, exchange_name(&src), &key, &arguments, u64::MAX)
    } else {
        v.unbind_exchange(&dest, exchange_name(&src), &key, &arguments)
    };
    r.map_err(binding_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------- publish

/// Content properties from the API's JSON (`rabbit_mgmt_format:to_basic_properties`).
fn properties_from_json(p: &Value) -> Result<AMQPProperties, ApiError> {
    let Some(m) = p.as_object() else {
        return Err(ApiError::bad_request("properties must be an object"));
    };
    let s = |k: &str| m.get(k).and_then(Value::as_str).map(crate::protocol::short);
    let mut props = AMQPProperties::default();
    if let Some(v) = s("content_type") {
        props = props.with_content_type(v);
    }
    if let Some(v) = s("content_encoding") {
        props = props.with_content_encoding(v);
    }
    if let Some(h) = m.get("headers") {
        let t = values::to_table(h).ok_or_else(|| ApiError::bad_request("headers must be an object"))?;
        props = props.with_headers(t);
    }
    if let Some(d) = m.get("delivery_mode").and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok())) {
        props = props.with_delivery_mode(d.min(255) as u8);
    }
    if let Some(d) = m.get("priority").and_then(Value::as_u64) {
        props = props.with_priority(d.min(255) as u8);
    }
    if let Some(v) = s("correlation_id") {
        props = props.with_correlation_id(v);
    }
    if let Some(v) = s("reply_to") {
        props = props.with_reply_to(v);
    }
    if let Some(v) = s("expiration") {
        props = props.with_expiration(v);
    }
    if let Some(v) = s("message_id") {
        props = props.with_message_id(v);
    }
    if let Some(t) = m.get("timestamp").and_then(Value::as_u64) {
        props = props.with_timestamp(t);
    }
    if let Some(v) = s("type") {
        props = props.with_type(v);
    }
    if let Some(v) = s("user_id") {
        props = props.with_user_id(v);
    }
    if let Some(v) = s("app_id") {
        props = props.with_app_id(v);
    }
    Ok(props)
}

/// Waits for the log to sync a published message (an HTTP publish of a
/// persistent message answers once it is on disk, like a confirm).
struct HttpWaiter {
    remaining: AtomicUsize,
    ok: AtomicBool,
    tx: parking_lot::Mutex<Option<tokio::sync::oneshot::Sender<bool>>>,
}

impl Durable for HttpWaiter {
    fn add(&self) {
        self.remaining.fetch_add(1, Ordering::AcqRel);
    }
    fn done(&self, ok: bool) -> bool {
        if !ok {
            self.ok.store(false, Ordering::Release);
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return false;
        }
        if let Some(tx) = self.tx.lock().take() {
            let _ = tx.send(self.ok.load(Ordering::Acquire));
        }
        true
    }
    fn stream(&self) -> (usize, u16) {
        (self as *const Self as usize, 0)
    }
    fn flush(&self) {}
}

pub async fn exchange_publish(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path((vh, x)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult {
    a.0.require_write()?;
    let v = a.vhost(&b, &vh)?;
    let spec: Value = serde_json::from_slice(&body).map_err(ApiError::bad_json)?;
    let missing: Vec<String> = ["routing_key", "properties", "payload", "payload_encoding"]
        .iter()
        .filter(|k| spec.get(**k).is_none())
        .map(|k| format!("{{key_missing,{k}}}"))
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::bad_request(format!("[{}]", missing.join(","))));
    }
    let x = v.exchange(exchange_name(&x)).map_err(|_| ApiError::not_found())?;
    a.permit_channel(&b, &vh, Access::Write, "exchange", &x.name)?;
    let key = spec["routing_key"].as_str().unwrap_or_default().to_string();
    let payload = spec["payload"].as_str().unwrap_or_default();
    let body = match spec["payload_encoding"].as_str() {
        Some("string") => Bytes::from(payload.as_bytes().to_vec()),
        Some("base64") => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(payload)
                .map_err(|_| ApiError::bad_request("payload is not valid base64"))?,
        ),
        _ => return Err(ApiError::bad_request("payload_encoding must be \"string\" or \"base64\"")),
    };
    let props = properties_from_json(&spec["properties"])?;
    let raw = cookie_factory::gen_simple(amq_protocol::protocol::basic::gen_properties(&props), Vec::new())
        .map_err(|_| ApiError::bad_request("cannot encode properties"))?;
    let raw = Bytes::from(raw);
    let scanned = properties::scan(&raw).ok_or_else(|| ApiError::bad_request("cannot encode properties"))?;
    let msg = Arc::new(Message::new(
        Bytes::from(x.name.clone().into_bytes()),
        Bytes::from(key.clone().into_bytes()),
        raw,
        body,
        scanned,
    ));
    let headers = msg.headers();
    let mut routed: Vec<Arc<Queue>> = Vec::new();
    v.route(&x, &[key.as_bytes()], headers.as_ref(), &mut routed);
    b.counters.published.fetch_add(1, Ordering::Relaxed);
    x.publish_in.fetch_add(1, Ordering::Relaxed);
    if routed.is_empty() {
        b.counters.unroutable_dropped.fetch_add(1, Ordering::Relaxed);
        v.msg.drop_unroutable.fetch_add(1, Ordering::Relaxed);
        return Ok(Json(json!({"routed": false})).into_response());
    }
    x.publish_out.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let waiter = Arc::new(HttpWaiter {
        remaining: AtomicUsize::new(1),
        ok: AtomicBool::new(true),
        tx: parking_lot::Mutex::new(Some(tx)),
    });
    let w: Arc<dyn Durable> = waiter.clone();
    for q in &routed {
        q.publish(msg.clone(), Some(&w));
    }
    waiter.done(true);
    if !rx.await.unwrap_or(false) {
        return Err(ApiError::internal("the message could not be written to disk"));
    }
    Ok(Json(json!({"routed": true})).into_response())
}

// ---------------------------------------------------------------- get

fn message_json(
    m: &Message,
    redelivered: bool,
    remaining: u32,
    encoding: &str,
    truncate: Option<usize>,
) -> Value {
    let props = amq_protocol::protocol::basic::parse_properties(&m.properties[..])
        .map(|(_, p)| p)
        .unwrap_or_default();
    let mut pj = serde_json::Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            pj.insert(k.to_string(), v);
        }
    };
    put("content_type", props.content_type().as_ref().map(|s| json!(s.as_str())));
    put("content_encoding", props.content_encoding().as_ref().map(|s| json!(s.as_str())));
    put("headers", props.headers().as_ref().map(values::table));
    put("delivery_mode", props.delivery_mode().map(|d| json!(d)));
    put("priority", props.priority().map(|d| json!(d)));
    put("correlation_id", props.correlation_id().as_ref().map(|s| json!(s.as_str())));
    put("reply_to", props.reply_to().as_ref().map(|s| json!(s.as_str())));
    put("expiration", props.expiration().as_ref().map(|s| json!(s.as_str())));
    put("message_id", props.message_id().as_ref().map(|s| json!(s.as_str())));
    put("timestamp", props.timestamp().map(|d| json!(d)));
    put("type", props.kind().as_ref().map(|s| json!(s.as_str())));
    put("user_id", props.user_id().as_ref().map(|s| json!(s.as_str())));
    put("app_id", props.app_id().as_ref().map(|s| json!(s.as_str())));
    let body = match truncate {
        Some(n) if n < m.body.len() => &m.body[..n],
        _ => &m.body[..],
    };
    let (payload, enc) = match (encoding, std::str::from_utf8(body)) {
        ("auto", Ok(s)) => (s.to_string(), "string"),
        _ => (base64::engine::general_purpose::STANDARD.encode(body), "base64"),
    };
    json!({
        "payload_bytes": m.body.len(),
        "redelivered": redelivered,
        "exchange": String::from_utf8_lossy(&m.exchange),
        "routing_key": String::from_utf8_lossy(&m.routing_key),
        "message_count": remaining,
        "properties": pj,
        "payload": payload,
        "payload_encoding": enc,
    })
}

pub async fn queue_get(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path((vh, q)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult {
    a.0.require_write()?;
    let v = a.vhost(&b, &vh)?;
    let q = v.queue(&q).map_err(|_| ApiError::not_found())?;
    a.permit_channel(&b, &vh, Access::Read, "queue", &q.name)?;
    let spec: Value = serde_json::from_slice(&body).map_err(ApiError::bad_json)?;
    let missing: Vec<String> = ["count", "ackmode", "encoding"]
        .iter()
        .filter(|k| spec.get(**k).is_none())
        .map(|k| format!("{{key_missing,{k}}}"))
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::bad_request(format!("[{}]", missing.join(","))));
    }
    let count = spec["count"].as_u64().or_else(|| spec["count"].as_str()?.parse().ok()).unwrap_or(1);
    let ackmode = spec["ackmode"].as_str().unwrap_or_default().to_string();
    let (requeue, reject) = match ackmode.as_str() {
        "ack_requeue_true" => (true, false),
        "ack_requeue_false" => (false, false),
        "reject_requeue_true" => (true, true),
        "reject_requeue_false" => (false, true),
        other => return Err(ApiError::bad_request(format!("Unknown ackmode: {other}"))),
    };
    let encoding = spec["encoding"].as_str().unwrap_or("auto").to_string();
    if encoding != "auto" && encoding != "base64" {
        return Err(ApiError::bad_request(format!("Unknown encoding: {encoding}")));
    }
    let truncate = spec.get("truncate").and_then(|t| t.as_u64().or_else(|| t.as_str()?.parse().ok()));
    let mut out = Vec::new();
    let mut taken = Vec::new();
    for _ in 0..count {
        let Some((qm, remaining)) = q.fetch() else { break };
        if let Some(m) = &qm.msg {
            out.push(message_json(m, qm.redelivered(), remaining, &encoding, truncate.map(|t| t as usize)));
        }
        taken.push(qm);
    }
    // Requeued messages go back to their places, redelivered, after all were
    // taken (as RabbitMQ's get loop holds them until it is done).
    if requeue {
        q.requeue(taken);
    } else {
        if reject {
            for qm in &taken {
                if let Some(m) = &qm.msg {
                    dead_letter(&v, &q, m, Reason::Rejected);
                }
            }
        }
        q.settled(&taken);
    }
    Ok(Json(out).into_response())
}
