//! Prometheus text exposition on its own listener (RabbitMQ: port 15692),
//! with rabbitmq_prometheus's metric names so existing dashboards and alerts
//! work: `/metrics` aggregated, `/metrics/per-object` with per-queue labels.

use crate::broker::Broker;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/metrics", get(aggregated))
        .route("/metrics/per-object", get(per_object))
        .with_state(broker)
}

/// Serves the metrics until shutdown (HTTPS when `tls` is given).
pub async fn serve(
    broker: Arc<Broker>,
    listener: TcpListener,
    tls: Option<Arc<crate::tls::Tls>>,
    handshake_timeout: std::time::Duration,
    shutdown: watch::Receiver<bool>,
) {
    super::serve_http("metrics", router(broker), listener, tls, handshake_timeout, shutdown).await
}

/// One metric family: HELP, TYPE, then samples.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP rabbitmq_{name} {help}");
        let _ = writeln!(self.out, "# TYPE rabbitmq_{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: f64) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "rabbitmq_{name} {value}");
        } else {
            let _ = writeln!(self.out, "rabbitmq_{name}{{{labels}}} {value}");
        }
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, labels: &str, value: f64) {
        self.header(name, kind, help);
        self.sample(name, labels, value);
    }
}

/// One queue's figures for the per-object families.
struct Row {
    vhost: String,
    queue: String,
    ready: u64,
    unacked: u64,
    consumers: u64,
    ready_bytes: u64,
    unacked_bytes: u64,
    published: u64,
    persistent: crate::queue::Tally,
    paged: crate::queue::Tally,
    disk_reads: u64,
    disk_writes: u64,
}

/// Label values escaped as the exposition format requires.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn render(b: &Broker, per_object: bool) -> String {
    let mut out = String::with_capacity(4096);
    let c = &b.counters;
    let (mut ready, mut unacked, mut consumers, mut queues, mut published) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut rows = Vec::new();
    for v in b.vhosts.iter() {
        for q in v.queues.iter() {
            if q.name.starts_with(crate::exchange::DELAY_QUEUE_PREFIX) {
                continue;
            }
            let (r, u, cs, _) = q.counts();
            let (ready_bytes, unacked_bytes) = q.message_bytes();
            let p = q.stats.published.load(Ordering::Relaxed);
            queues += 1;
            ready += r;
            unacked += u;
            consumers += cs;
            published += p;
            if per_object {
                let (persistent, paged) = q.storage();
                rows.push(Row {
                    vhost: v.name.clone(),
                    queue: q.name.clone(),
                    ready: r,
                    unacked: u,
                    consumers: cs,
                    ready_bytes,
                    unacked_bytes,
                    published: p,
                    persistent,
                    paged,
                    disk_reads: q.stats.disk_reads.load(Ordering::Relaxed),
                    disk_writes: q.stats.disk_writes.load(Ordering::Relaxed),
                });
            }
        }
    }
    let mut f = Family { out: &mut out };
    let g = "gauge";
    let t = "counter";
    f.one("connections", g, "Connections currently open", "", c.connections.load(Ordering::Relaxed) as f64);
    f.one("channels", g, "Channels currently open", "", c.channels.load(Ordering::Relaxed) as f64);
    f.one("queues", g, "Queues available", "", queues as f64);
    f.one("consumers", g, "Consumers currently connected", "", consumers as f64);
    f.one(
        "connections_opened_total",
        t,
        "Total number of connections opened",
        "",
        c.connections_opened.load(Ordering::Relaxed) as f64,
    );
    f.one(
        "connections_closed_total",
        t,
        "Total number of connections closed or terminated",
        "",
        c.connections_closed.load(Ordering::Relaxed) as f64,
    );
    let proto = "protocol=\"amqp091\"";
    f.one(
        "global_messages_received_total",
        t,
        "Total number of messages received from publishers",
        proto,
        c.published.load(Ordering::Relaxed) as f64,
    );
    f.one(
        "global_messages_confirmed_total",
        t,
        "Total number of messages confirmed to publishers",
        proto,
        c.confirmed.load(Ordering::Relaxed) as f64,
    );
    f.one(
        "global_messages_unroutable_dropped_total",
        t,
        "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
        proto,
        c.unroutable_dropped.load(Ordering::Relaxed) as f64,
    );
    f.one("global_messages_unroutable_returned_total", t, "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable", proto, c.unroutable_returned.load(Ordering::Relaxed) as f64);
    let al = &b.alarms;
    let active = al.active();
    let rss = crate::broker::alarms::rss_bytes() as f64;
    f.one("process_resident_memory_bytes", g, "Memory used in bytes", "", rss);
    f.one(
        "resident_memory_limit_bytes",
        g,
        "Memory high watermark in bytes",
        "",
        al.mem_limit.load(Ordering::Relaxed) as f64,
    );
    let free = crate::broker::alarms::disk_free(&b.config.storage.data_dir).unwrap_or(0);
    f.one("disk_space_available_bytes", g, "Disk space available in bytes", "", free as f64);
    f.one(
        "disk_space_available_limit_bytes",
        g,
        "Free disk space low watermark in bytes",
        "",
        al.disk_free_limit.load(Ordering::Relaxed) as f64,
    );
    // RabbitMQ's `rabbitmq_io_*` families: the message store's file I/O.
    let io = b.store.messages.io();
    for (name, help, v) in [
        ("io_read_ops_total", "Total number of I/O read operations", &io.read_ops),
        ("io_read_bytes_total", "Total number of I/O bytes read", &io.read_bytes),
        ("io_write_ops_total", "Total number of I/O write operations", &io.write_ops),
        ("io_write_bytes_total", "Total number of I/O bytes written", &io.write_bytes),
        ("io_sync_ops_total", "Total number of I/O sync operations", &io.sync_ops),
    ] {
        f.one(name, t, help, "", v.load(Ordering::Relaxed) as f64);
    }
    let on = |bit: u8| if active & bit != 0 { 1.0 } else { 0.0 };
    f.one(
        "alarms_memory_used_watermark",
        g,
        "is set when a node has reached its memory high watermark",
        "",
        on(crate::broker::alarms::MEMORY),
    );
    f.one(
        "alarms_free_disk_space_watermark",
        g,
        "is set when a node has reached its free disk space low watermark",
        "",
        on(crate::broker::alarms::DISK),
    );
    f.one(
        "queue_messages_bytes_in_memory_budget",
        g,
        "Bytes of ready messages held in memory (Warren's paging budget)",
        "",
        b.store.messages.resident() as f64,
    );
    f.one(
        "build_info",
        "untyped",
        "Warren and RabbitMQ-compatible version info",
        &format!(
            "rabbitmq_version=\"{}\",product=\"warren\",warren_version=\"{}\"",
            esc(&b.config.identity.version),
            env!("CARGO_PKG_VERSION")
        ),
        1.0,
    );
    f.one(
        "identity_info",
        "untyped",
        "Node and cluster identity",
        &format!("rabbitmq_node=\"{0}\",rabbitmq_cluster=\"{0}\"", esc(&b.config.identity.cluster_name)),
        1.0,
    );
    if !per_object {
        f.one("queue_messages_ready", g, "Messages ready to be delivered to consumers", "", ready as f64);
        f.one(
            "queue_messages_unacked",
            g,
            "Messages delivered to consumers but not yet acknowledged",
            "",
            unacked as f64,
        );
        f.one(
            "queue_messages",
            g,
            "Sum of ready and unacknowledged messages - total queue depth",
            "",
            (ready + unacked) as f64,
        );
        f.one("queue_consumers", g, "Consumers on a queue", "", consumers as f64);
        f.one(
            "queue_messages_published_total",
            t,
            "Total number of messages published to queues",
            "",
            published as f64,
        );
        return out;
    }
    type Pick = fn(&Row) -> u64;
    // RabbitMQ 3.13's per-queue families (`prometheus_rabbitmq_core_metrics_collector`).
    let families: [(&str, &str, &str, Pick); 18] = [
        ("queue_messages_ready", g, "Messages ready to be delivered to consumers", |r| r.ready),
        ("queue_messages_unacked", g, "Messages delivered to consumers but not yet acknowledged", |r| r.unacked),
        ("queue_messages", g, "Sum of ready and unacknowledged messages - total queue depth", |r| {
            r.ready + r.unacked
        }),
        ("queue_consumers", g, "Consumers on a queue", |r| r.consumers),
        ("queue_messages_ram", g, "Ready and unacknowledged messages stored in memory", |r| {
            (r.ready + r.unacked).saturating_sub(r.paged.count)
        }),
        ("queue_messages_ram_bytes", g, "Size of ready and unacknowledged messages stored in memory", |r| {
            (r.ready_bytes + r.unacked_bytes).saturating_sub(r.paged.bytes)
        }),
        ("queue_messages_ready_ram", g, "Ready messages stored in memory", |r| r.ready.saturating_sub(r.paged.count)),
        ("queue_messages_unacked_ram", g, "Unacknowledged messages stored in memory", |r| r.unacked),
        ("queue_messages_persistent", g, "Persistent messages", |r| r.persistent.count),
        ("queue_messages_persistent_bytes", g, "Size in bytes of persistent messages", |r| r.persistent.bytes),
        ("queue_messages_bytes", g, "Size in bytes of ready and unacknowledged messages", |r| {
            r.ready_bytes + r.unacked_bytes
        }),
        ("queue_messages_ready_bytes", g, "Size in bytes of ready messages", |r| r.ready_bytes),
        ("queue_messages_unacked_bytes", g, "Size in bytes of all unacknowledged messages", |r| r.unacked_bytes),
        ("queue_messages_paged_out", g, "Messages paged out to disk", |r| r.paged.count),
        ("queue_messages_paged_out_bytes", g, "Size in bytes of messages paged out to disk", |r| r.paged.bytes),
        ("queue_disk_reads_total", t, "Total number of times queue read messages from disk", |r| r.disk_reads),
        ("queue_disk_writes_total", t, "Total number of times queue wrote messages to disk", |r| r.disk_writes),
        ("queue_messages_published_total", t, "Total number of messages published to queues", |r| r.published),
    ];
    for (name, kind, help, pick) in families {
        f.header(name, kind, help);
        for r in &rows {
            f.sample(name, &format!("vhost=\"{}\",queue=\"{}\"", esc(&r.vhost), esc(&r.queue)), pick(r) as f64);
        }
    }
    out
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

async fn aggregated(State(b): State<Arc<Broker>>) -> Response {
    text(render(&b, false))
}

async fn per_object(State(b): State<Arc<Broker>>) -> Response {
    text(render(&b, true))
}
