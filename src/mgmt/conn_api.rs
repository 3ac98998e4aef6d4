//! Connections, channels and consumers over HTTP, in rabbitmq_management's
//! shapes (`tests/samples/` holds real RabbitMQ responses they are checked
//! against). Read from the connection registry and the outboxes' channel
//! state; nothing here waits on a connection's task.

use super::api::{node, rate, sorted};
use super::values;
use super::{ApiError, Authed};
use crate::broker::Broker;
use crate::broker::rates::CHANNEL_RATES;
use crate::broker::registry::ConnectionInfo;
use crate::queue::sink::ChannelDeliveries;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

type ApiResult = Result<Response, ApiError>;

fn connection_json(b: &Broker, c: &ConnectionInfo) -> Value {
    let channels = c.channels.lock().len();
    let oct_rates = c.rates.get();
    let mut j = json!({
        "auth_mechanism": c.auth_mechanism,
        "channel_max": c.channel_max,
        "channels": channels,
        "client_properties": values::table(&c.client_properties),
        "connected_at": c.connected_at,
        "frame_max": c.frame_max,
        "garbage_collection": {"fullsweep_after": 0, "max_heap_size": 0, "min_bin_vheap_size": 0, "min_heap_size": 0, "minor_gcs": 0},
        "host": c.local.ip().to_string(),
        "name": c.name,
        "node": node(b),
        "peer_cert_issuer": Value::Null,
        "peer_cert_subject": Value::Null,
        "peer_cert_validity": Value::Null,
        "peer_host": c.peer.ip().to_string(),
        "peer_port": c.peer.port(),
        "port": c.local.port(),
        "protocol": "AMQP 0-9-1",
        "recv_cnt": 0,
        "recv_oct": c.recv_oct.load(Ordering::Relaxed),
        "recv_oct_details": {"rate": oct_rates[0]},
        "reductions": 0,
        "reductions_details": rate(),
        "send_cnt": 0,
        "send_oct": c.outbox.sent_bytes(),
        "send_oct_details": {"rate": oct_rates[1]},
        "send_pend": 0,
        "ssl": false,
        "ssl_cipher": Value::Null,
        "ssl_hash": Value::Null,
        "ssl_key_exchange": Value::Null,
        "ssl_protocol": Value::Null,
        "state": c.state(),
        "timeout": c.heartbeat,
        "type": "network",
        "user": c.user,
        "user_who_performed_action": c.user,
        "vhost": c.vhost,
    });
    if let Some((protocol, cipher)) = c.tls.get() {
        j["ssl"] = json!(true);
        j["ssl_protocol"] = json!(protocol);
        j["ssl_cipher"] = json!(cipher);
    }
    // A client-chosen name shows as `user_provided_name`, as in RabbitMQ.
    if let Some(n) = c.client_properties.inner().get("connection_name").and_then(crate::queue::args::as_str) {
        j["user_provided_name"] = json!(n);
    }
    j
}

fn connections_where(b: &Broker, keep: impl Fn(&ConnectionInfo) -> bool) -> Vec<Value> {
    b.registry.all().iter().filter(|c| keep(c)).map(|c| connection_json(b, c)).collect()
}

/// Monitoring users see every connection and channel, others their own
/// (`filter_conn_ch_list`).
fn sees(a: &Authed, c: &ConnectionInfo) -> bool {
    a.is_monitor() || a.0.name == c.user
}

/// One connection's resources: its owner, or a monitoring user
/// (`is_authorized_user`).
fn may_see(a: &Authed, c: &ConnectionInfo) -> Result<(), ApiError> {
    if sees(a, c) { Ok(()) } else { Err(not_authorised_object()) }
}

fn not_authorised_object() -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "not_authorised", "User not authorised to access object")
}

pub async fn connections(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    Ok(Json(sorted(connections_where(&b, |c| sees(&a, c)), &q)).into_response())
}

pub async fn vhost_connections(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path(vh): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    a.vhost(&b, &vh)?;
    Ok(Json(sorted(connections_where(&b, |c| c.vhost == vh && sees(&a, c)), &q)).into_response())
}

pub async fn user_connections(State(b): State<Arc<Broker>>, a: Authed, Path(u): Path<String>) -> ApiResult {
    Ok(Json(connections_where(&b, |c| c.user == u && sees(&a, c))).into_response())
}

pub async fn connection_detail(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path(name): Path<String>,
) -> ApiResult {
    let c = b.registry.by_name(&name).ok_or_else(ApiError::not_found)?;
    may_see(&a, &c)?;
    Ok(Json(connection_json(&b, &c)).into_response())
}

/// RabbitMQ's reason when no `X-Reason` header is given.
fn reason(headers: &HeaderMap) -> String {
    headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| "Closed via management plugin".to_string())
}

/// Administrators may close any connection, other users their own.
fn may_close(a: &Authed, c: &ConnectionInfo) -> Result<(), ApiError> {
    if a.0.tags.iter().any(|t| t == "administrator") || a.0.name == c.user {
        Ok(())
    } else {
        Err(not_authorised_object())
    }
}

pub async fn connection_delete(
    State(b): State<Arc<Broker>>,
    a: Authed,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    let c = b.registry.by_name(&name).ok_or_else(ApiError::not_found)?;
    may_close(&a, &c)?;
    c.force_close(&reason(&headers));
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn user_connections_delete(
    State(b): State<Arc<Broker>>,
    a: Authed,
    headers: HeaderMap,
    Path(u): Path<String>,
) -> ApiResult {
    let why = reason(&headers);
    for c in b.registry.all().iter().filter(|c| c.user == u) {
        may_close(&a, c)?;
        c.force_close(&why);
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn consumer_json(
    b: &Broker,
    conn: &ConnectionInfo,
    channel: u16,
    c: &crate::queue::Consumer,
    q: &crate::queue::Queue,
    active: Option<&bytes::Bytes>,
) -> Value {
    let status = match active {
        None => "up",
        Some(t) if *t == c.tag => "single_active",
        Some(_) => "waiting",
    };
    let mut args = serde_json::Map::new();
    if c.priority != 0 {
        args.insert("x-priority".into(), json!(c.priority));
    }
    let timeout = q.consumer_timeout().unwrap_or(b.config.consumers.consumer_timeout_ms);
    json!({
        "ack_required": !c.no_ack,
        "active": status != "waiting",
        "activity_status": status,
        "arguments": args,
        "channel_details": {
            "connection_name": conn.name,
            "name": format!("{} ({channel})", conn.name),
            "node": node(b),
            "number": channel,
            "peer_host": conn.peer.ip().to_string(),
            "peer_port": conn.peer.port(),
            "user": conn.user,
        },
        "consumer_tag": String::from_utf8_lossy(&c.tag),
        "consumer_timeout": timeout,
        "exclusive": c.exclusive,
        "prefetch_count": c.credit.limit.load(Ordering::Relaxed),
        "queue": {"name": q.name, "vhost": q.vhost},
    })
}

/// Every consumer in the vhosts `a` may use, optionally of one vhost,
/// optionally on one channel.
fn consumers_where(b: &Broker, a: &Authed, vhost: Option<&str>, on: Option<(u64, u16)>) -> Vec<Value> {
    let mut out = Vec::new();
    for v in b.vhosts.iter() {
        if vhost.is_some_and(|x| x != v.name) || !a.can_access(b, &v.name) {
            continue;
        }
        for q in v.queues.iter() {
            let (consumers, active) = q.consumers();
            for c in &consumers {
                if on.is_some_and(|(id, ch)| id != c.outbox.conn_id || ch != c.channel) {
                    continue;
                }
                if let Some(conn) = b.registry.connections.get(&c.outbox.conn_id) {
                    out.push(consumer_json(b, &conn, c.channel, c, &q, active.as_ref()));
                }
            }
        }
    }
    out
}

/// The consumers of one queue (queue detail's `consumer_details`).
pub fn consumers_of_queue(b: &Broker, q: &Arc<crate::queue::Queue>) -> Vec<Value> {
    let (consumers, active) = q.consumers();
    consumers
        .iter()
        .filter_map(|c| {
            let conn = b.registry.connections.get(&c.outbox.conn_id)?;
            Some(consumer_json(b, &conn, c.channel, c, q, active.as_ref()))
        })
        .collect()
}

pub async fn consumers(State(b): State<Arc<Broker>>, a: Authed) -> ApiResult {
    Ok(Json(consumers_where(&b, &a, None, None)).into_response())
}

pub async fn vhost_consumers(State(b): State<Arc<Broker>>, a: Authed, Path(vh): Path<String>) -> ApiResult {
    a.vhost(&b, &vh)?;
    Ok(Json(consumers_where(&b, &a, Some(&vh), None)).into_response())
}

/// What the outbox knows of a channel: consumers, unacked, unconfirmed,
/// its message stats.
type ChannelStats = (usize, usize, usize, Value);

fn channel_stats(d: Option<&ChannelDeliveries>) -> ChannelStats {
    match d {
        Some(d) => (
            d.consumers.len(),
            d.unacked.len(),
            d.confirms.waiting.len(),
            channel_message_stats(&d.counters.values(), &d.rates.get()),
        ),
        None => (0, 0, 0, channel_message_stats(&[0; 12], &[0.0; 12])),
    }
}

fn channels_of(b: &Broker, c: &ConnectionInfo) -> Vec<Value> {
    let infos = c.channels.lock().clone();
    let mut stats: HashMap<u16, ChannelStats> =
        c.outbox.with(|st| infos.keys().map(|ch| (*ch, channel_stats(st.channels.get(*ch)))).collect());
    infos
        .iter()
        .map(|(ch, i)| {
            let (consumers, unacked, unconfirmed, message_stats) =
                stats.remove(ch).unwrap_or_else(|| channel_stats(None));
            json!({
                "acks_uncommitted": 0,
                "confirm": i.confirm,
                "connection_details": {"name": c.name, "peer_host": c.peer.ip().to_string(), "peer_port": c.peer.port()},
                "consumer_count": consumers,
                "garbage_collection": {"fullsweep_after": 0, "max_heap_size": 0, "min_bin_vheap_size": 0, "min_heap_size": 0, "minor_gcs": 0},
                "global_prefetch_count": i.global_prefetch_count,
                "message_stats": message_stats,
                "messages_unacknowledged": unacked,
                "messages_uncommitted": 0,
                "messages_unconfirmed": unconfirmed,
                "name": format!("{} ({ch})", c.name),
                "node": node(b),
                "number": ch,
                "pending_raft_commands": 0,
                "prefetch_count": i.prefetch_count,
                "reductions": 0,
                "reductions_details": rate(),
                "state": "running",
                "transactional": i.transactional,
                "user": c.user,
                "user_who_performed_action": c.user,
                "vhost": c.vhost,
            })
        })
        .collect()
}

/// A channel's message counters and rates in RabbitMQ's shape: a channel
/// that published shows the publishing keys, one that consumed or got the
/// delivery keys (both if it did both), as RabbitMQ's channel stats do.
fn channel_message_stats(counters: &[u64; 12], rates: &[f64; 12]) -> Value {
    let published = counters[0] > 0;
    let consumed = counters[2..10].iter().any(|n| *n > 0);
    let mut keys = Vec::new();
    if published {
        keys.extend(["confirm", "drop_unroutable", "publish", "return_unroutable"]);
    }
    if consumed || !published {
        keys.extend([
            "ack",
            "deliver",
            "deliver_get",
            "deliver_no_ack",
            "get",
            "get_empty",
            "get_no_ack",
            "redeliver",
        ]);
    }
    Value::Object(super::api::with_rates(&CHANNEL_RATES, counters, rates, &keys))
}

fn channels_where(b: &Broker, keep: impl Fn(&ConnectionInfo) -> bool) -> Vec<Value> {
    b.registry.all().iter().filter(|c| keep(c)).flat_map(|c| channels_of(b, c)).collect()
}

pub async fn channels(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    Ok(Json(sorted(channels_where(&b, |c| sees(&a, c)), &q)).into_response())
}

pub async fn vhost_channels(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path(vh): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    a.vhost(&b, &vh)?;
    Ok(Json(sorted(channels_where(&b, |c| c.vhost == vh && sees(&a, c)), &q)).into_response())
}

pub async fn connection_channels(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path(name): Path<String>,
) -> ApiResult {
    let c = b.registry.by_name(&name).ok_or_else(ApiError::not_found)?;
    may_see(&a, &c)?;
    Ok(Json(channels_of(&b, &c)).into_response())
}

/// `"<connection name> (<number>)"` → the connection and the number.
fn split_channel_name(name: &str) -> Option<(&str, u16)> {
    let (conn, rest) = name.rsplit_once(" (")?;
    Some((conn, rest.strip_suffix(')')?.parse().ok()?))
}

pub async fn channel_detail(State(b): State<Arc<Broker>>, a: Authed, Path(name): Path<String>) -> ApiResult {
    let (conn, number) = split_channel_name(&name).ok_or_else(ApiError::not_found)?;
    let c = b.registry.by_name(conn).ok_or_else(ApiError::not_found)?;
    may_see(&a, &c)?;
    let mut j = channels_of(&b, &c)
        .into_iter()
        .find(|j| j["number"] == json!(number))
        .ok_or_else(ApiError::not_found)?;
    j["consumer_details"] = json!(consumers_where(&b, &a, None, Some((c.id, number))));
    j["deliveries"] = json!([]);
    j["publishes"] = json!([]);
    Ok(Json(j).into_response())
}
