//! The node and its settings (`/api/nodes`, cluster name, extensions,
//! feature flags, auth, parameters, limits, aliveness), read from /proc
//! where RabbitMQ reads Erlang VM figures, and the embedded web UI.

use super::api::{node, rate};
use super::{ApiError, Authed};
use crate::broker::{Broker, alarms};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;

type ApiResult = Result<Response, ApiError>;

/// The web UI, compiled into the binary so that any deployment (a scratch
/// container included) serves the same files.
const INDEX_HTML: &str = include_str!("../../static/index.html");
const APP_JS: &str = include_str!("../../static/app.js");
const APP_CSS: &str = include_str!("../../static/app.css");

pub async fn index() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], INDEX_HTML)
        .into_response()
}

pub async fn app_js() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], APP_JS)
        .into_response()
}

pub async fn app_css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], APP_CSS)
        .into_response()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

fn fd_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1024)
}

fn node_json(b: &Broker) -> Value {
    let types: Vec<Value> = ["direct", "fanout", "headers", "topic", "x-delayed-message"]
        .iter()
        .map(|t| json!({"name": t, "description": format!("AMQP {t} exchange"), "enabled": true}))
        .collect();
    let c = &b.counters;
    let al = &b.alarms;
    let active = al.active();
    let io = b.store.messages.io();
    json!({
        "name": node(b),
        "type": "disc",
        "running": true,
        "being_drained": false,
        "mem_used": crate::broker::alarms::rss_bytes(),
        "mem_used_details": rate(),
        "mem_limit": al.mem_limit.load(Ordering::Relaxed),
        "mem_alarm": active & alarms::MEMORY != 0,
        "mem_calculation_strategy": "rss",
        "disk_free": alarms::disk_free(&b.config.storage.data_dir).unwrap_or(0),
        "disk_free_details": rate(),
        "disk_free_limit": al.disk_free_limit.load(Ordering::Relaxed),
        "disk_free_alarm": active & alarms::DISK != 0,
        "fd_used": open_fds(),
        "fd_used_details": rate(),
        "fd_total": fd_limit(),
        "sockets_used": c.connections.load(Ordering::Relaxed),
        "sockets_used_details": rate(),
        "sockets_total": fd_limit(),
        "proc_used": 0,
        "proc_used_details": rate(),
        "proc_total": 0,
        "uptime": b.started.elapsed().as_millis() as u64,
        "run_queue": 0,
        "processors": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "partitions": [],
        "rates_mode": "basic",
        "net_ticktime": 60,
        "enabled_plugins": ["rabbitmq_management", "rabbitmq_prometheus"],
        "exchange_types": types,
        "auth_mechanisms": [
            {"name": "AMQPLAIN", "description": "QPid AMQPLAIN mechanism", "enabled": true},
            {"name": "PLAIN", "description": "SASL PLAIN authentication mechanism", "enabled": true}
        ],
        "applications": [{"name": "warren", "description": "Warren AMQP 0-9-1 broker", "version": env!("CARGO_PKG_VERSION")}],
        "contexts": [],
        "log_files": [],
        "db_dir": b.config.storage.data_dir.display().to_string(),
        "config_files": [],
        "cluster_links": [],
        "metrics_gc_queue_length": {},
        "os_pid": std::process::id().to_string(),
        "connection_created": c.connections_opened.load(Ordering::Relaxed),
        "connection_created_details": rate(),
        "connection_closed": c.connections_closed.load(Ordering::Relaxed),
        "connection_closed_details": rate(),
        "io_read_count": io.read_ops.load(Ordering::Relaxed),
        "io_read_count_details": rate(),
        "io_read_bytes": io.read_bytes.load(Ordering::Relaxed),
        "io_read_bytes_details": rate(),
        "io_write_count": io.write_ops.load(Ordering::Relaxed),
        "io_write_count_details": rate(),
        "io_write_bytes": io.write_bytes.load(Ordering::Relaxed),
        "io_write_bytes_details": rate(),
        "io_sync_count": io.sync_ops.load(Ordering::Relaxed),
        "io_sync_count_details": rate(),
    })
}

pub async fn nodes(State(b): State<Arc<Broker>>, a: Authed) -> ApiResult {
    a.require_monitor()?;
    Ok(Json(json!([node_json(&b)])).into_response())
}

pub async fn node_detail(State(b): State<Arc<Broker>>, a: Authed, Path(name): Path<String>) -> ApiResult {
    a.require_monitor()?;
    if name != node(&b) {
        return Err(ApiError::not_found());
    }
    Ok(Json(node_json(&b)).into_response())
}

pub async fn cluster_name(State(b): State<Arc<Broker>>, _: Authed) -> ApiResult {
    Ok(Json(json!({"name": node(&b)})).into_response())
}

pub async fn extensions(_: Authed) -> ApiResult {
    Ok(Json(json!([])).into_response())
}

pub async fn empty_list(_: Authed) -> ApiResult {
    Ok(Json(json!([])).into_response())
}

pub async fn auth(_: Authed) -> ApiResult {
    Ok(Json(json!({"oauth_enabled": false, "oauth_client_id": "", "oauth_provider_url": ""})).into_response())
}

fn attempts(
    protocol: &str,
    (good, bad): &(std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64),
) -> Value {
    let (ok, failed) = (good.load(Ordering::Relaxed), bad.load(Ordering::Relaxed));
    json!({"protocol": protocol, "auth_attempts": ok + failed, "auth_attempts_failed": failed,
           "auth_attempts_succeeded": ok})
}

/// `GET /api/auth/attempts/{node}`: login attempts per protocol.
pub async fn auth_attempts(State(b): State<Arc<Broker>>, _: Authed, Path(name): Path<String>) -> ApiResult {
    if name != node(&b) {
        return Err(ApiError::not_found());
    }
    let c = &b.counters;
    Ok(Json(json!([attempts("http", &c.auth_http), attempts("amqp091", &c.auth_amqp)])).into_response())
}

/// Per-source attempts are not tracked (RabbitMQ too, unless enabled).
pub async fn auth_attempts_source(
    State(b): State<Arc<Broker>>,
    _: Authed,
    Path(name): Path<String>,
) -> ApiResult {
    if name != node(&b) {
        return Err(ApiError::not_found());
    }
    Ok(Json(json!([])).into_response())
}

pub async fn global_parameters(State(b): State<Arc<Broker>>, _: Authed) -> ApiResult {
    Ok(Json(json!([{"name": "cluster_name", "value": node(&b)}])).into_response())
}

pub async fn feature_flags(_: Authed) -> ApiResult {
    let flags: Vec<Value> = ["classic_queue_type_delivery_support", "drop_unroutable_metric", "empty_basic_get_metric",
        "implicit_default_bindings", "maintenance_mode_status", "user_limits", "virtual_host_metadata"]
        .iter()
        .map(|n| json!({"name": n, "desc": "", "doc_url": "", "state": "enabled", "stability": "stable", "provided_by": "rabbit"}))
        .collect();
    Ok(Json(flags).into_response())
}

/// `GET /api/aliveness-test/{vhost}`: declares `aliveness-test`, publishes
/// and gets a message, as RabbitMQ does.
pub async fn aliveness(State(b): State<Arc<Broker>>, a: Authed, Path(vh): Path<String>) -> ApiResult {
    let v = a.vhost(&b, &vh)?;
    let (q, _) = v
        .declare_queue(crate::broker::vhost::QueueDeclare {
            name: "aliveness-test",
            server_named: false,
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            arguments: Default::default(),
            conn_id: 0,
        })
        .map_err(ApiError::from_amqp)?;
    let raw = bytes::Bytes::from_static(&[0, 0]);
    let scanned = crate::protocol::properties::scan(&raw).unwrap_or_default();
    let msg = crate::message::Message::new(
        bytes::Bytes::new(),
        bytes::Bytes::from_static(b"aliveness-test"),
        raw,
        bytes::Bytes::from_static(b"test_message"),
        scanned,
    );
    q.publish(Arc::new(msg), None);
    match q.fetch() {
        Some((qm, _)) if qm.msg.as_ref().is_some_and(|m| &m.body[..] == b"test_message") => {
            q.settled(&[qm]);
            Ok(Json(json!({"status": "ok"})).into_response())
        }
        other => {
            if let Some((qm, _)) = other {
                q.settled(&[qm]);
            }
            Ok((
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "failed", "reason": "aliveness-test queue is empty"})),
            )
                .into_response())
        }
    }
}
