//! RabbitMQ-compatible management resources (first slice): overview,
//! whoami, vhosts, users, exchanges and queues (list, detail, declare,
//! delete, purge), health checks. Shapes follow rabbitmq_management 3.x
//! key for key (`../shared/docs/mgmt-samples/`); statistics are read from
//! counters, never by locking hot state for long.

use super::values;
use super::{ApiError, Authed, Writes};
use crate::broker::Broker;
use crate::broker::access::Access;
use crate::broker::rates::{OVERVIEW_RATES, QUEUE_RATES, VHOST_RATES, rate_of};
use crate::broker::vhost::{QueueDeclare, VHost};
use crate::exchange::{DELAY_QUEUE_PREFIX, Exchange};
use crate::queue::Queue;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

type ApiResult = Result<Response, ApiError>;

pub(super) fn rate() -> Value {
    json!({"rate": 0.0})
}

/// The overview's message_stats: every counter with its sampled rate.
fn message_stats(counters: &[u64; 24], rates: &[f64; 24]) -> Value {
    let mut m = serde_json::Map::new();
    for (i, k) in OVERVIEW_RATES.iter().enumerate().take(14) {
        m.insert(k.to_string(), json!(counters[i]));
        m.insert(format!("{k}_details"), json!({"rate": rates[i]}));
    }
    Value::Object(m)
}

/// `{"<key>": n, "<key>_details": {"rate": r}}` for some of a cell's keys.
pub(super) fn with_rates<const N: usize>(
    keys: &[&str; N],
    counters: &[u64; N],
    rates: &[f64; N],
    pick: &[&str],
) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    for k in pick {
        if let Some(i) = keys.iter().position(|x| x == k) {
            m.insert(k.to_string(), json!(counters[i]));
            m.insert(format!("{k}_details"), json!({"rate": rates[i]}));
        }
    }
    m
}

pub(super) fn node(b: &Broker) -> String {
    b.config.identity.cluster_name.clone()
}

fn vhost(b: &Broker, name: &str) -> Result<Arc<VHost>, ApiError> {
    b.vhost(name).ok_or_else(ApiError::not_found)
}

/// Queues a client may see (the delayed exchanges' internal queues are not).
fn visible(q: &Queue) -> bool {
    !q.name.starts_with(DELAY_QUEUE_PREFIX)
}

#[derive(Serialize)]
struct Rate {
    rate: f64,
}

const RATE: Rate = Rate { rate: 0.0 };

fn r(rate: f64) -> Rate {
    Rate { rate }
}

#[derive(Serialize)]
struct BackingQueueStatus {
    avg_ack_egress_rate: f64,
    avg_ack_ingress_rate: f64,
    avg_egress_rate: f64,
    avg_ingress_rate: f64,
    delta: (&'static str, &'static str, u8, u8, &'static str),
    len: u64,
    mode: &'static str,
    next_deliver_seq_id: u64,
    next_seq_id: u64,
    q1: u8,
    q2: u8,
    q3: u8,
    q4: u8,
    target_ram_count: &'static str,
    version: u8,
}

#[derive(Serialize)]
struct QueueMessageStats {
    publish: u64,
    publish_details: Rate,
    deliver: u64,
    deliver_details: Rate,
    deliver_no_ack: u64,
    deliver_no_ack_details: Rate,
    get: u64,
    get_details: Rate,
    get_no_ack: u64,
    get_no_ack_details: Rate,
    deliver_get: u64,
    deliver_get_details: Rate,
    ack: u64,
    ack_details: Rate,
    redeliver: u64,
    redeliver_details: Rate,
}

/// One queue as `GET /api/queues` shows it (rabbitmq_management's keys).
/// A struct rather than a `json!` map: listing 1,000 queues serializes
/// straight into the response without building 70 maps per queue.
#[derive(Serialize)]
pub struct QueueItem<'a> {
    arguments: Value,
    auto_delete: bool,
    backing_queue_status: BackingQueueStatus,
    consumer_capacity: f64,
    consumer_utilisation: f64,
    consumers: u64,
    durable: bool,
    effective_policy_definition: serde_json::Map<String, Value>,
    exclusive: bool,
    exclusive_consumer_tag: Option<&'a str>,
    head_message_timestamp: Option<u64>,
    idle_since: &'a str,
    memory: u64,
    message_bytes: u64,
    message_bytes_paged_out: u64,
    message_bytes_persistent: u64,
    message_bytes_ram: u64,
    message_bytes_ready: u64,
    message_bytes_unacknowledged: u64,
    message_stats: QueueMessageStats,
    messages: u64,
    messages_details: Rate,
    messages_paged_out: u64,
    messages_persistent: u64,
    messages_ram: u64,
    messages_ready: u64,
    messages_ready_details: Rate,
    messages_ready_ram: u64,
    messages_unacknowledged: u64,
    messages_unacknowledged_details: Rate,
    messages_unacknowledged_ram: u64,
    name: &'a str,
    node: &'a str,
    operator_policy: Option<String>,
    policy: Option<String>,
    recoverable_slaves: Option<u8>,
    reductions: u64,
    reductions_details: Rate,
    single_active_consumer_tag: Option<String>,
    state: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    vhost: &'a str,
}

impl<'a> QueueItem<'a> {
    pub fn new(q: &'a Queue, node: &'a str, now: &'a str) -> Self {
        let (ready, unacked, consumers, _) = q.counts();
        let (ready_bytes, unacked_bytes) = q.message_bytes();
        let (persistent, paged) = q.storage();
        let s = &q.stats;
        let rates = s.rates.get();
        let rate = |k: &str| r(rate_of(&QUEUE_RATES, &rates, k));
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let applied = q.applied.read().clone();
        let busy = if consumers > 0 { 1.0 } else { 0.0 };
        QueueItem {
            arguments: values::table(&q.arguments),
            auto_delete: q.auto_delete,
            backing_queue_status: BackingQueueStatus {
                avg_ack_egress_rate: 0.0,
                avg_ack_ingress_rate: 0.0,
                avg_egress_rate: 0.0,
                avg_ingress_rate: 0.0,
                delta: ("delta", "undefined", 0, 0, "undefined"),
                len: ready,
                mode: "default",
                next_deliver_seq_id: 0,
                next_seq_id: 0,
                q1: 0,
                q2: 0,
                q3: 0,
                q4: 0,
                target_ram_count: "infinity",
                version: 2,
            },
            consumer_capacity: busy,
            consumer_utilisation: busy,
            consumers,
            durable: q.durable,
            effective_policy_definition: applied.definition,
            exclusive: q.exclusive_owner.is_some(),
            exclusive_consumer_tag: None,
            head_message_timestamp: None,
            idle_since: now,
            memory: 1024 + ready_bytes.saturating_sub(paged.bytes),
            message_bytes: ready_bytes + unacked_bytes,
            message_bytes_paged_out: paged.bytes,
            message_bytes_persistent: persistent.bytes,
            message_bytes_ram: (ready_bytes + unacked_bytes).saturating_sub(paged.bytes),
            message_bytes_ready: ready_bytes,
            message_bytes_unacknowledged: unacked_bytes,
            message_stats: QueueMessageStats {
                publish: l(&s.published),
                publish_details: rate("publish"),
                deliver: l(&s.deliver),
                deliver_details: rate("deliver"),
                deliver_no_ack: l(&s.deliver_no_ack),
                deliver_no_ack_details: rate("deliver_no_ack"),
                get: l(&s.get),
                get_details: rate("get"),
                get_no_ack: l(&s.get_no_ack),
                get_no_ack_details: rate("get_no_ack"),
                deliver_get: s.deliver_get(),
                deliver_get_details: rate("deliver_get"),
                ack: l(&s.acked),
                ack_details: rate("ack"),
                redeliver: l(&s.redelivered),
                redeliver_details: rate("redeliver"),
            },
            messages: ready + unacked,
            messages_details: rate("messages"),
            messages_paged_out: paged.count,
            messages_persistent: persistent.count,
            messages_ram: (ready + unacked).saturating_sub(paged.count),
            messages_ready: ready,
            messages_ready_details: rate("messages_ready"),
            messages_ready_ram: ready.saturating_sub(paged.count),
            messages_unacknowledged: unacked,
            messages_unacknowledged_details: rate("messages_unacknowledged"),
            messages_unacknowledged_ram: unacked,
            name: &q.name,
            node,
            operator_policy: applied.operator_policy,
            policy: applied.policy,
            recoverable_slaves: None,
            reductions: 0,
            reductions_details: RATE,
            single_active_consumer_tag: q.active_consumer().map(|t| String::from_utf8_lossy(&t).into_owned()),
            state: "running",
            kind: "classic",
            vhost: &q.vhost,
        }
    }
}

pub fn queue_json(b: &Broker, q: &Queue) -> Value {
    let (node, now) = (node(b), chrono_like_now());
    serde_json::to_value(QueueItem::new(q, &node, &now)).unwrap_or(Value::Null)
}

/// An ISO-8601 timestamp of now (UTC, milliseconds), as RabbitMQ prints.
fn chrono_like_now() -> String {
    let ms = crate::queue::now_ms();
    let (secs, millis) = (ms / 1000, ms % 1000);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{millis:03}+00:00")
}

pub fn exchange_json(x: &Exchange) -> Value {
    let mut j = json!({
        "arguments": values::table(&x.arguments),
        "auto_delete": x.auto_delete,
        "durable": x.durable,
        "internal": x.internal,
        "message_stats": {
            "publish_in": x.publish_in.load(Ordering::Relaxed), "publish_in_details": {"rate": x.rates.get()[0]},
            "publish_out": x.publish_out.load(Ordering::Relaxed), "publish_out_details": {"rate": x.rates.get()[1]}
        },
        "name": x.name,
        "type": x.type_name(),
        "user_who_performed_action": "rmq-internal",
        "vhost": x.vhost,
    });
    // RabbitMQ shows `policy` on an exchange only when one applies.
    if let Some(p) = x.policy.read().clone() {
        j["policy"] = json!(p);
    }
    j
}

/// Object counts for the overview: visible queues, exchanges, consumers.
fn totals(b: &Broker) -> (usize, usize, u64) {
    let (mut queues, mut exchanges, mut consumers) = (0, 0, 0);
    for v in b.vhosts.iter() {
        exchanges += v.exchanges.len();
        for q in v.queues.iter().filter(|q| visible(q)) {
            queues += 1;
            consumers += q.counts().2;
        }
    }
    (queues, exchanges, consumers)
}

pub async fn overview(State(b): State<Arc<Broker>>, _: Authed) -> ApiResult {
    let (amqp_port, mgmt_port) = b.listen_ports();
    let c = &b.counters;
    let (queues, exchanges, consumers) = totals(&b);
    let id = &b.config.identity;
    let counters = b.overview_counters();
    let rates = b.rates.get();
    let stats = message_stats(&counters, &rates);
    let pick = |keys: &[&str]| Value::Object(with_rates(&OVERVIEW_RATES, &counters, &rates, keys));
    let churn = pick(&[
        "connection_created",
        "connection_closed",
        "channel_created",
        "channel_closed",
        "queue_created",
        "queue_declared",
        "queue_deleted",
    ]);
    let queue_totals = pick(&["messages", "messages_ready", "messages_unacknowledged"]);
    let types: Vec<Value> = ["direct", "fanout", "headers", "topic", "x-delayed-message"]
        .iter()
        .map(|t| json!({"name": t, "description": format!("AMQP {t} exchange"), "enabled": true}))
        .collect();
    Ok(Json(json!({
        "management_version": id.version,
        "rates_mode": "basic",
        "sample_retention_policies": {"global": [600, 3600, 28800, 86400], "basic": [600, 3600], "detailed": [600]},
        "exchange_types": types,
        "product_version": id.version,
        "product_name": id.product,
        "rabbitmq_version": id.version,
        "cluster_name": id.cluster_name,
        "erlang_version": "n/a (Warren)",
        "erlang_full_version": format!("Warren {} (Rust)", env!("CARGO_PKG_VERSION")),
        "release_series_support_status": "supported",
        "disable_stats": false,
        "enable_queue_totals": false,
        "message_stats": stats,
        "churn_rates": churn,
        "queue_totals": queue_totals,
        "object_totals": {
            "channels": c.channels.load(Ordering::Relaxed),
            "connections": c.connections.load(Ordering::Relaxed),
            "consumers": consumers,
            "exchanges": exchanges,
            "queues": queues
        },
        "statistics_db_event_queue": 0,
        "node": node(&b),
        "listeners": [
            {"node": node(&b), "protocol": "amqp", "ip_address": b.config.amqp.bind, "port": amqp_port,
             "socket_opts": {"backlog": 1024, "nodelay": true, "linger": [true, 0], "exit_on_close": false}},
            {"node": node(&b), "protocol": "http", "ip_address": b.config.management.bind, "port": mgmt_port,
             "socket_opts": {"cowboy_opts": {"sendfile": false}, "port": mgmt_port}}
        ],
        "contexts": [{"ssl_opts": [], "node": node(&b), "description": "RabbitMQ Management", "path": "/",
                      "cowboy_opts": "[]", "port": mgmt_port.to_string()}]
    }))
    .into_response())
}

pub async fn whoami(Authed(user): Authed) -> ApiResult {
    Ok(Json(json!({"name": user.name, "tags": user.tags})).into_response())
}

fn vhost_json(b: &Broker, v: &VHost) -> Value {
    // The vhost's statistics are its queues' summed (counters and rates).
    let mut counters = [0u64; QUEUE_RATES.len()];
    let mut rates = [0f64; QUEUE_RATES.len()];
    for q in v.queues.iter() {
        let (r, u, _, _) = q.counts();
        let s = &q.stats;
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let now = [
            l(&s.published),
            l(&s.deliver),
            l(&s.deliver_no_ack),
            l(&s.get),
            l(&s.get_no_ack),
            s.deliver_get(),
            l(&s.acked),
            l(&s.redelivered),
            r + u,
            r,
            u,
        ];
        for (i, (n, r)) in now.iter().zip(s.rates.get()).enumerate() {
            counters[i] += n;
            rates[i] += r;
        }
    }
    let mut stats = with_rates(&QUEUE_RATES, &counters, &rates, &QUEUE_RATES[..8]);
    stats.extend(with_rates(&VHOST_RATES, &v.msg.values(), &v.msg.rates.get(), &VHOST_RATES));
    let depth = with_rates(&QUEUE_RATES, &counters, &rates, &QUEUE_RATES[8..]);
    let mut cluster = serde_json::Map::new();
    cluster.insert(node(b), json!("running"));
    let meta = v.meta.read().clone();
    let (mut oct, mut oct_rate) = ([0u64; 2], [0f64; 2]);
    for c in b.registry.all().iter().filter(|c| c.vhost == v.name) {
        oct[0] += c.recv_oct.load(Ordering::Relaxed);
        oct[1] += c.outbox.sent_bytes();
        let r = c.rates.get();
        oct_rate[0] += r[0];
        oct_rate[1] += r[1];
    }
    let mut j = json!({
        "cluster_state": cluster,
        "default_queue_type": "classic",
        "description": meta.description,
        "message_stats": stats,
        "metadata": {"description": meta.description, "tags": meta.tags},
        "name": v.name,
        "recv_oct": oct[0], "recv_oct_details": {"rate": oct_rate[0]},
        "send_oct": oct[1], "send_oct_details": {"rate": oct_rate[1]},
        "tags": meta.tags,
        "tracing": false,
    });
    if let Value::Object(m) = &mut j {
        m.extend(depth);
    }
    j
}

/// Monitoring users learn of every vhost; others see those they may use
/// (`list_visible_vhosts`).
fn visible_vhost(b: &Broker, a: &Authed, name: &str) -> bool {
    a.is_monitor() || a.can_access(b, name)
}

pub async fn vhosts(State(b): State<Arc<Broker>>, a: Authed) -> ApiResult {
    let mut out: Vec<Value> =
        b.vhosts.iter().filter(|v| visible_vhost(&b, &a, &v.name)).map(|v| vhost_json(&b, &v)).collect();
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(Json(out).into_response())
}

pub async fn vhost_detail(State(b): State<Arc<Broker>>, a: Authed, Path(name): Path<String>) -> ApiResult {
    let v = vhost(&b, &name)?;
    if !visible_vhost(&b, &a, &name) {
        return Err(ApiError::not_found());
    }
    Ok(Json(vhost_json(&b, &v)).into_response())
}

/// A list answer with RabbitMQ's query parameters: `sort` (dotted path),
/// `sort_reverse`, `name` (+ `use_regex`), `columns` (dotted paths) and
/// pagination (`page`, `page_size`, default 100, at most 500), which wraps the
/// items in `{filtered_count, item_count, items, page, page_count,
/// page_size, total_count}`.
pub(super) fn sorted(items: Vec<Value>, q: &HashMap<String, String>) -> Value {
    let at = |v: &Value, path: &str| -> Value {
        path.split('.').try_fold(v, |v, k| v.get(k)).cloned().unwrap_or(Value::Null)
    };
    let key = q.get("sort").cloned().unwrap_or_else(|| "name".into());
    // Sort keys computed once per item, not once per comparison.
    let mut keyed: Vec<((Option<f64>, String), Value)> = items
        .into_iter()
        .map(|i| {
            let k = at(&i, &key);
            let sk = match (k.as_f64(), k.as_str()) {
                (Some(n), _) => (Some(n), String::new()),
                (None, Some(s)) => (None, s.to_string()),
                (None, None) => (None, k.to_string()),
            };
            (sk, i)
        })
        .collect();
    keyed.sort_by(|(a, _), (b, _)| match (a.0, b.0) {
        (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
        _ => a.1.cmp(&b.1),
    });
    let mut items: Vec<Value> = keyed.into_iter().map(|(_, i)| i).collect();
    if q.get("sort_reverse").is_some_and(|v| v == "true") {
        items.reverse();
    }
    let total = items.len();
    if let Some(filter) = q.get("name").filter(|n| !n.is_empty()) {
        let regex = q.get("use_regex").is_some_and(|v| v == "true");
        let re = if regex { regex::Regex::new(filter).ok() } else { None };
        items.retain(|i| {
            let name = i["name"].as_str().unwrap_or_default();
            match &re {
                Some(r) => r.is_match(name),
                None if regex => false,
                None => name.contains(filter.as_str()),
            }
        });
    }
    if let Some(cols) = q.get("columns").filter(|c| !c.is_empty()) {
        let cols: Vec<&str> = cols.split(',').map(str::trim).collect();
        items = items
            .into_iter()
            .map(|i| {
                let mut out = serde_json::Map::new();
                for c in &cols {
                    let v = at(&i, c);
                    if v.is_null() && c.split('.').try_fold(&i, |v, k| v.get(k)).is_none() {
                        continue;
                    }
                    // Nested columns keep their nesting (`message_stats.publish`).
                    let mut parts = c.split('.').peekable();
                    let mut cur = &mut out;
                    while let Some(p) = parts.next() {
                        if parts.peek().is_none() {
                            cur.insert(p.to_string(), v.clone());
                        } else {
                            let next = cur.entry(p.to_string()).or_insert_with(|| json!({}));
                            match next.as_object_mut() {
                                Some(m) => cur = m,
                                None => break,
                            }
                        }
                    }
                }
                Value::Object(out)
            })
            .collect();
    }
    let Some(page) = q.get("page") else {
        return Value::Array(items);
    };
    let page: usize = page.parse().unwrap_or(1).max(1);
    let page_size: usize = q.get("page_size").and_then(|p| p.parse().ok()).unwrap_or(100).clamp(1, 500);
    let filtered = items.len();
    let page_count = filtered.div_ceil(page_size).max(1);
    let slice: Vec<Value> = items.into_iter().skip((page - 1) * page_size).take(page_size).collect();
    json!({
        "filtered_count": filtered,
        "item_count": slice.len(),
        "items": slice,
        "page": page,
        "page_count": page_count,
        "page_size": page_size,
        "total_count": total,
    })
}

/// The visible queues of one vhost or all, sorted by (vhost, name).
fn queue_list(b: &Broker, a: &Authed, only: Option<&str>) -> Vec<Arc<Queue>> {
    let mut out = Vec::new();
    for v in b.vhosts.iter() {
        if only.is_some_and(|o| o != v.name) || !a.can_access(b, &v.name) {
            continue;
        }
        out.extend(v.queues.iter().filter(|q| visible(q)).map(|q| q.clone()));
    }
    out.sort_by(|a, b| (&a.name, &a.vhost).cmp(&(&b.name, &b.vhost)));
    out
}

/// `GET /api/queues[/{vhost}]`. A plain listing (what dashboards and the
/// UI poll) is serialized straight from the queues, already in name order;
/// sorting by another key, filtering, `columns` and pagination go through
/// the generic list path.
fn queues_response(b: &Broker, a: &Authed, only: Option<&str>, q: &HashMap<String, String>) -> Response {
    let queues = queue_list(b, a, only);
    let (node, now) = (node(b), chrono_like_now());
    let plain = q.get("sort").is_none_or(|s| s == "name")
        && !["columns", "page", "name", "sort_reverse"].iter().any(|k| q.contains_key(*k));
    if plain {
        let items: Vec<QueueItem<'_>> = queues.iter().map(|x| QueueItem::new(x, &node, &now)).collect();
        return Json(items).into_response();
    }
    let by_name = q.get("sort").is_none_or(|s| s == "name") && !q.contains_key("name");
    if by_name && let Some(page) = q.get("page") {
        // Pagination in name order: build only the page's items.
        let page: usize = page.parse().unwrap_or(1).max(1);
        let size: usize = q.get("page_size").and_then(|p| p.parse().ok()).unwrap_or(100).clamp(1, 500);
        let total = queues.len();
        let reverse = q.get("sort_reverse").is_some_and(|v| v == "true");
        let ordered: Box<dyn Iterator<Item = &Arc<Queue>>> =
            if reverse { Box::new(queues.iter().rev()) } else { Box::new(queues.iter()) };
        let items: Vec<Value> = ordered
            .skip((page - 1) * size)
            .take(size)
            .map(|x| serde_json::to_value(QueueItem::new(x, &node, &now)).unwrap_or(Value::Null))
            .collect();
        // The slice is already sorted and paged: only `columns` remains.
        let mut rest = HashMap::new();
        if let Some(c) = q.get("columns") {
            rest.insert("columns".to_string(), c.clone());
        }
        let Value::Array(items) = sorted(items, &rest) else { return Json(json!([])).into_response() };
        return Json(json!({
            "filtered_count": total, "item_count": items.len(), "items": items, "page": page,
            "page_count": total.div_ceil(size).max(1), "page_size": size, "total_count": total,
        }))
        .into_response();
    }
    let items: Vec<Value> = queues
        .iter()
        .map(|x| serde_json::to_value(QueueItem::new(x, &node, &now)).unwrap_or(Value::Null))
        .collect();
    Json(sorted(items, q)).into_response()
}

pub async fn queues(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    Ok(queues_response(&b, &a, None, &q))
}

pub async fn queues_in(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path(vh): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    a.vhost(&b, &vh)?;
    Ok(queues_response(&b, &a, Some(&vh), &q))
}

fn find_queue(b: &Broker, a: &Authed, vh: &str, name: &str) -> Result<(Arc<VHost>, Arc<Queue>), ApiError> {
    let v = a.vhost(b, vh)?;
    let q = v.queue(name).map_err(|_| ApiError::not_found())?;
    if !visible(&q) {
        return Err(ApiError::not_found());
    }
    Ok((v, q))
}

pub async fn queue_detail(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path((vh, name)): Path<(String, String)>,
) -> ApiResult {
    let (_, q) = find_queue(&b, &a, &vh, &name)?;
    let mut j = queue_json(&b, &q);
    j["consumer_details"] = json!(super::conn_api::consumers_of_queue(&b, &q));
    j["incoming"] = json!([]);
    j["deliveries"] = json!([]);
    Ok(Json(j).into_response())
}

pub async fn queue_put(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path((vh, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult {
    a.0.require_write()?;
    let v = a.vhost(&b, &vh)?;
    let spec: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&body).map_err(ApiError::bad_json)?
    };
    let arguments = match spec.get("arguments") {
        None | Some(Value::Null) => Default::default(),
        Some(a) => values::to_table(a).ok_or_else(|| ApiError::bad_request("arguments must be an object"))?,
    };
    let existed = v.queues.contains_key(&name);
    a.permit(&b, &vh, Access::Configure, "queue", &name)?;
    if !existed {
        // A new queue's dead-letter exchange: read on the queue, write on
        // the exchange (3.13's `check_dlx_permissions`).
        if let Some(dlx) =
            arguments.inner().get("x-dead-letter-exchange").and_then(crate::queue::args::as_str)
        {
            a.permit(&b, &vh, Access::Read, "queue", &name)?;
            a.permit(&b, &vh, Access::Write, "exchange", &dlx)?;
        }
    }
    v.declare_queue(QueueDeclare {
        server_named: false,
        name: &name,
        passive: false,
        durable: spec.get("durable").and_then(Value::as_bool).unwrap_or(true),
        exclusive: false,
        auto_delete: spec.get("auto_delete").and_then(Value::as_bool).unwrap_or(false),
        arguments,
        conn_id: 0,
    })
    .map_err(ApiError::from_amqp)?;
    Ok(if existed { StatusCode::NO_CONTENT } else { StatusCode::CREATED }.into_response())
}

pub async fn queue_delete(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path((vh, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    a.0.require_write()?;
    let (v, _) = find_queue(&b, &a, &vh, &name)?;
    a.permit(&b, &vh, Access::Configure, "queue", &name)?;
    let flag = |k: &str| q.get(k).is_some_and(|v| v == "true");
    v.delete_queue(&name, flag("if-unused"), flag("if-empty"), u64::MAX).map_err(ApiError::from_amqp)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn queue_purge(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path((vh, name)): Path<(String, String)>,
) -> ApiResult {
    a.0.require_write()?;
    let (_, q) = find_queue(&b, &a, &vh, &name)?;
    a.permit(&b, &vh, Access::Read, "queue", &name)?;
    q.purge();
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn exchanges_of(b: &Broker, a: &Authed, only: Option<&str>) -> Vec<Value> {
    let mut out = Vec::new();
    for v in b.vhosts.iter() {
        if only.is_some_and(|o| o != v.name) || !a.can_access(b, &v.name) {
            continue;
        }
        out.extend(v.exchanges.iter().map(|x| exchange_json(&x)));
    }
    out
}

pub async fn exchanges(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    Ok(Json(sorted(exchanges_of(&b, &a, None), &q)).into_response())
}

pub async fn exchanges_in(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path(vh): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    a.vhost(&b, &vh)?;
    Ok(Json(sorted(exchanges_of(&b, &a, Some(&vh)), &q)).into_response())
}

/// The management API names the default exchange `amq.default`.
fn exchange_name(name: &str) -> &str {
    if name == "amq.default" { "" } else { name }
}

pub async fn exchange_detail(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path((vh, name)): Path<(String, String)>,
) -> ApiResult {
    let v = a.vhost(&b, &vh)?;
    let x = v.exchange(exchange_name(&name)).map_err(|_| ApiError::not_found())?;
    let mut j = exchange_json(&x);
    j["incoming"] = json!([]);
    j["outgoing"] = json!([]);
    Ok(Json(j).into_response())
}

pub async fn exchange_put(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path((vh, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult {
    a.0.require_write()?;
    let v = a.vhost(&b, &vh)?;
    let spec: Value = serde_json::from_slice(&body).map_err(ApiError::bad_json)?;
    let kind =
        spec.get("type").and_then(Value::as_str).ok_or_else(|| ApiError::bad_request("type is required"))?;
    let arguments = match spec.get("arguments") {
        None | Some(Value::Null) => Default::default(),
        Some(a) => values::to_table(a).ok_or_else(|| ApiError::bad_request("arguments must be an object"))?,
    };
    let existed = v.exchanges.contains_key(&name);
    a.permit(&b, &vh, Access::Configure, "exchange", &name)?;
    if !existed {
        // A new exchange's alternate exchange: read on it, write on the AE.
        if let Some(ae) = arguments.inner().get("alternate-exchange").and_then(crate::queue::args::as_str) {
            a.permit(&b, &vh, Access::Read, "exchange", &name)?;
            a.permit(&b, &vh, Access::Write, "exchange", &ae)?;
        }
    }
    v.declare_exchange(
        &name,
        kind,
        false,
        spec.get("durable").and_then(Value::as_bool).unwrap_or(true),
        spec.get("auto_delete").and_then(Value::as_bool).unwrap_or(false),
        spec.get("internal").and_then(Value::as_bool).unwrap_or(false),
        arguments,
    )
    .map_err(ApiError::from_amqp)?;
    Ok(if existed { StatusCode::NO_CONTENT } else { StatusCode::CREATED }.into_response())
}

pub async fn exchange_delete(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path((vh, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    a.0.require_write()?;
    let v = a.vhost(&b, &vh)?;
    v.exchange(exchange_name(&name)).map_err(|_| ApiError::not_found())?;
    a.permit(&b, &vh, Access::Configure, "exchange", exchange_name(&name))?;
    let if_unused = q.get("if-unused").is_some_and(|v| v == "true");
    v.delete_exchange(exchange_name(&name), if_unused).map_err(ApiError::from_amqp)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn ok() -> ApiResult {
    Ok(Json(json!({"status": "ok"})).into_response())
}

pub async fn health_ok(_: Authed) -> ApiResult {
    ok()
}

/// `/api/health/checks/alarms` and `local-alarms` (one node: the same
/// alarms): 503 listing them while any is on, as RabbitMQ.
async fn health_alarms(b: &Broker, reason: &str) -> ApiResult {
    let on = b.alarms.resources();
    if on.is_empty() {
        return ok();
    }
    let node = node(b);
    let alarms: Vec<Value> = on.iter().map(|r| json!({"node": node, "resource": r})).collect();
    Ok((
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "failed", "reason": reason, "alarms": alarms})),
    )
        .into_response())
}

pub async fn health_cluster_alarms(State(b): State<Arc<Broker>>, _: Authed) -> ApiResult {
    health_alarms(&b, "There are alarms in effect in the cluster").await
}

pub async fn health_local_alarms(State(b): State<Arc<Broker>>, _: Authed) -> ApiResult {
    health_alarms(&b, "There are alarms in effect on the node").await
}

/// Quorum-critical checks on a single node pass, saying why (as RabbitMQ).
pub async fn health_single_node(_: Authed) -> ApiResult {
    Ok(Json(json!({"status": "ok", "reason": "single node cluster"})).into_response())
}

pub async fn health_port(State(b): State<Arc<Broker>>, _: Authed, Path(port): Path<u16>) -> ApiResult {
    let (amqp_port, mgmt_port) = b.listen_ports();
    if port == amqp_port || port == mgmt_port {
        return Ok(Json(json!({"status": "ok", "port": port})).into_response());
    }
    Ok((
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "failed", "reason": format!("No active listener on port {port}"), "missing": port})),
    )
        .into_response())
}

pub async fn health_protocol(_: Authed, Path(proto): Path<String>) -> ApiResult {
    if matches!(proto.as_str(), "amqp" | "amqp091" | "amqp0-9-1" | "http") {
        return Ok(Json(json!({"status": "ok", "protocol": proto})).into_response());
    }
    Ok((
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "failed", "reason": format!("No active listener for protocol {proto}"), "missing": proto})),
    )
        .into_response())
}
