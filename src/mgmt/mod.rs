//! Management HTTP API (axum): RabbitMQ's paths and JSON shapes, HTTP basic
//! auth against the broker's users, JSON errors `{"error","reason"}` with the
//! status RabbitMQ uses. This is the first slice of the API (see `api`).

mod api;
pub mod metrics;
pub mod values;

use crate::broker::Broker;
use crate::broker::users::User;
use crate::error::AmqpError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/api/overview", get(api::overview))
        .route("/api/whoami", get(api::whoami))
        .route("/api/users", get(api::users))
        .route("/api/vhosts", get(api::vhosts))
        .route("/api/vhosts/{vhost}", get(api::vhost_detail))
        .route("/api/queues", get(api::queues))
        .route("/api/queues/{vhost}", get(api::queues_in))
        .route(
            "/api/queues/{vhost}/{name}",
            get(api::queue_detail).put(api::queue_put).delete(api::queue_delete),
        )
        .route("/api/queues/{vhost}/{name}/contents", axum::routing::delete(api::queue_purge))
        .route("/api/exchanges", get(api::exchanges))
        .route("/api/exchanges/{vhost}", get(api::exchanges_in))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(api::exchange_detail).put(api::exchange_put).delete(api::exchange_delete),
        )
        .route("/api/health/checks/alarms", get(api::health_ok))
        .route("/api/health/checks/local-alarms", get(api::health_ok))
        .route("/api/health/checks/virtual-hosts", get(api::health_ok))
        .route("/api/health/checks/node-is-quorum-critical", get(api::health_ok))
        .route("/api/health/checks/port-listener/{port}", get(api::health_port))
        .route("/api/health/checks/protocol-listener/{proto}", get(api::health_protocol))
        .fallback(|| async { ApiError::not_found() })
        .with_state(broker)
}

pub async fn serve(broker: Arc<Broker>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    if let Err(e) = axum::serve(listener, router(broker)).with_graceful_shutdown(stop).await {
        tracing::error!(error = %e, "management server failed");
    }
}

/// An API error: status plus RabbitMQ's `{"error", "reason"}` body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    reason: String,
}

impl ApiError {
    pub fn not_found() -> Self {
        ApiError { status: StatusCode::NOT_FOUND, error: "Object Not Found", reason: "Not Found".into() }
    }
    pub fn bad_request(reason: impl Into<String>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, error: "bad_request", reason: reason.into() }
    }
    pub fn bad_json(e: serde_json::Error) -> Self {
        Self::bad_request(format!("invalid JSON: {e}"))
    }
    fn unauthorized() -> Self {
        ApiError { status: StatusCode::UNAUTHORIZED, error: "not_authorized", reason: "Login failed".into() }
    }
    fn forbidden() -> Self {
        ApiError {
            status: StatusCode::FORBIDDEN,
            error: "not_authorized",
            reason: "Not management user".into(),
        }
    }
    /// AMQP refusals map as RabbitMQ's management plugin maps them.
    pub fn from_amqp(e: AmqpError) -> Self {
        let status = match e.code {
            404 => StatusCode::NOT_FOUND,
            403 => StatusCode::FORBIDDEN,
            405 => StatusCode::LOCKED,
            _ => StatusCode::BAD_REQUEST,
        };
        let error = if status == StatusCode::NOT_FOUND { "Object Not Found" } else { "bad_request" };
        ApiError { status, error, reason: e.reply_text() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status == StatusCode::UNAUTHORIZED {
            return (
                self.status,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"RabbitMQ Management\"")],
                Json(json!({"error": self.error, "reason": self.reason})),
            )
                .into_response();
        }
        (self.status, Json(json!({"error": self.error, "reason": self.reason}))).into_response()
    }
}

/// A request with valid credentials of a user allowed into management.
pub struct Authed(pub User);

impl Authed {
    fn has(&self, tags: &[&str]) -> bool {
        self.0.tags.iter().any(|t| tags.contains(&t.as_str()))
    }
}

trait Writes {
    fn require_write(&self) -> Result<(), ApiError>;
}

impl Writes for User {
    /// Monitoring users may look but not change anything.
    fn require_write(&self) -> Result<(), ApiError> {
        if self.tags.iter().any(|t| matches!(t.as_str(), "administrator" | "policymaker" | "management")) {
            Ok(())
        } else {
            Err(ApiError::forbidden())
        }
    }
}

impl FromRequestParts<Arc<Broker>> for Authed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, broker: &Arc<Broker>) -> Result<Self, Self::Rejection> {
        use base64::Engine;
        let Some(value) = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            // No credentials at all: 401 with an empty body, as RabbitMQ.
            return Err((
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"RabbitMQ Management\"")],
            )
                .into_response());
        };
        let creds = value
            .strip_prefix("Basic ")
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
            .and_then(|raw| String::from_utf8(raw).ok());
        let Some((user, pass)) = creds.as_deref().and_then(|c| c.split_once(':')) else {
            return Err(ApiError::unauthorized().into_response());
        };
        // The management listener is bound where the operator chose; the
        // loopback restriction on guest applies to AMQP connections.
        if !broker.authenticate(user, pass, true) {
            return Err(ApiError::unauthorized().into_response());
        }
        let Some(u) = broker.users.get(user).map(|u| u.clone()) else {
            return Err(ApiError::unauthorized().into_response());
        };
        let authed = Authed(u);
        if !authed.has(&["administrator", "monitoring", "policymaker", "management"]) {
            return Err(ApiError::forbidden().into_response());
        }
        Ok(authed)
    }
}
