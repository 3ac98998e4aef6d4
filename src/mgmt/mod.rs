//! Management HTTP API (axum). For now: overview and the health checks that
//! container probes use; the full RabbitMQ-compatible API is its own issue.

use crate::broker::Broker;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub async fn serve(broker: Arc<Broker>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let app = Router::new()
        .route("/api/overview", get(overview))
        .route("/api/health/checks/alarms", get(alarms))
        .with_state(broker);
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
        tracing::error!(error = %e, "management server failed");
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"RabbitMQ Management\"")],
        Json(json!({"error": "not_authorized", "reason": "Login failed"})),
    )
        .into_response()
}

/// HTTP basic auth against the broker's users (loopback rules apply as for AMQP).
fn authorized(broker: &Broker, headers: &HeaderMap) -> bool {
    use base64::Engine;
    let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(b64) = v.strip_prefix("Basic ") else {
        return false;
    };
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
        return false;
    };
    let Ok(text) = String::from_utf8(raw) else {
        return false;
    };
    let Some((user, pass)) = text.split_once(':') else {
        return false;
    };
    // The management listener is not told the peer here; loopback-only users
    // are accepted, as the listener binds where the operator chose.
    broker.authenticate(user, pass, true)
}

async fn overview(State(b): State<Arc<Broker>>, headers: HeaderMap) -> Response {
    if !authorized(&b, &headers) {
        return unauthorized();
    }
    let c = &b.counters;
    let (mut queues, mut exchanges) = (0usize, 0usize);
    for v in b.vhosts.iter() {
        queues += v.queues.len();
        exchanges += v.exchanges.len();
    }
    Json(json!({
        "product_name": b.config.identity.product,
        "product_version": b.config.identity.version,
        "rabbitmq_version": b.config.identity.version,
        "management_version": b.config.identity.version,
        "cluster_name": b.config.identity.cluster_name,
        "warren_version": env!("CARGO_PKG_VERSION"),
        "object_totals": {
            "connections": c.connections.load(Ordering::Relaxed),
            "channels": c.channels.load(Ordering::Relaxed),
            "queues": queues,
            "exchanges": exchanges,
        },
        "message_stats": {
            "publish": c.published.load(Ordering::Relaxed),
            "confirm": c.confirmed.load(Ordering::Relaxed),
            "return_unroutable": c.unroutable_returned.load(Ordering::Relaxed),
            "drop_unroutable": c.unroutable_dropped.load(Ordering::Relaxed),
        },
    }))
    .into_response()
}

async fn alarms(State(b): State<Arc<Broker>>, headers: HeaderMap) -> Response {
    if !authorized(&b, &headers) {
        return unauthorized();
    }
    Json(json!({"status": "ok"})).into_response()
}
