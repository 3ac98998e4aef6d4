//! Management HTTP API (axum): RabbitMQ's paths and JSON shapes, HTTP basic
//! auth against the broker's users, JSON errors `{"error","reason"}` with the
//! status RabbitMQ uses. This is the first slice of the API (see `api`).

mod access_api;
mod api;
mod conn_api;
pub mod definitions;
mod messages_api;
pub mod metrics;
mod node_api;
pub mod values;

use crate::broker::Broker;
use crate::broker::access::{Access, checked_exchange_name, refused};
use crate::broker::users::User;
use crate::error::AmqpError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/", get(node_api::index))
        .route("/app.js", get(node_api::app_js))
        .route("/app.css", get(node_api::app_css))
        .route("/api/overview", get(api::overview))
        .route("/api/nodes", get(node_api::nodes))
        .route("/api/nodes/{node}", get(node_api::node_detail))
        .route("/api/cluster-name", get(node_api::cluster_name))
        .route("/api/extensions", get(node_api::extensions))
        .route("/api/auth", get(node_api::auth))
        .route("/api/auth/attempts/{node}", get(node_api::auth_attempts))
        .route("/api/auth/attempts/{node}/source", get(node_api::auth_attempts_source))
        .route("/api/health/checks/certificate-expiration/{within}/{unit}", get(api::health_ok))
        .route("/api/feature-flags", get(node_api::feature_flags))
        .route("/api/global-parameters", get(node_api::global_parameters))
        .route("/api/parameters", get(node_api::empty_list))
        .route("/api/vhost-limits", get(node_api::empty_list))
        .route("/api/user-limits", get(node_api::empty_list))
        .route("/api/aliveness-test/{vhost}", get(node_api::aliveness))
        .route("/api/whoami", get(api::whoami))
        .route("/api/users", get(access_api::users))
        .route("/api/users/without-permissions", get(access_api::users_without_permissions))
        .route("/api/users/bulk-delete", post(access_api::users_bulk_delete))
        .route(
            "/api/users/{user}",
            get(access_api::user_detail).put(access_api::user_put).delete(access_api::user_delete),
        )
        .route("/api/users/{user}/permissions", get(access_api::user_permissions))
        .route("/api/users/{user}/topic-permissions", get(access_api::user_topic_permissions))
        .route("/api/vhosts", get(api::vhosts))
        .route(
            "/api/vhosts/{vhost}",
            get(api::vhost_detail).put(access_api::vhost_put).delete(access_api::vhost_delete),
        )
        .route("/api/vhosts/{vhost}/permissions", get(access_api::vhost_permissions))
        .route("/api/vhosts/{vhost}/topic-permissions", get(access_api::vhost_topic_permissions))
        .route("/api/permissions", get(access_api::permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(access_api::permission_detail)
                .put(access_api::permission_put)
                .delete(access_api::permission_delete),
        )
        .route("/api/topic-permissions", get(access_api::topic_permissions))
        .route(
            "/api/topic-permissions/{vhost}/{user}",
            get(access_api::topic_permission_detail)
                .put(access_api::topic_permission_put)
                .delete(access_api::topic_permission_delete),
        )
        .route("/api/policies", get(access_api::policies))
        .route("/api/policies/{vhost}", get(access_api::policies_in))
        .route(
            "/api/policies/{vhost}/{name}",
            get(access_api::policy_detail).put(access_api::policy_put).delete(access_api::policy_delete),
        )
        .route("/api/operator-policies", get(access_api::operator_policies))
        .route("/api/operator-policies/{vhost}", get(access_api::operator_policies_in))
        .route(
            "/api/operator-policies/{vhost}/{name}",
            get(access_api::operator_policy_detail)
                .put(access_api::operator_policy_put)
                .delete(access_api::operator_policy_delete),
        )
        .route("/api/connections", get(conn_api::connections))
        .route(
            "/api/connections/username/{user}",
            get(conn_api::user_connections).delete(conn_api::user_connections_delete),
        )
        .route(
            "/api/connections/{name}",
            get(conn_api::connection_detail).delete(conn_api::connection_delete),
        )
        .route("/api/connections/{name}/channels", get(conn_api::connection_channels))
        .route("/api/vhosts/{vhost}/connections", get(conn_api::vhost_connections))
        .route("/api/channels", get(conn_api::channels))
        .route("/api/channels/{name}", get(conn_api::channel_detail))
        .route("/api/vhosts/{vhost}/channels", get(conn_api::vhost_channels))
        .route("/api/consumers", get(conn_api::consumers))
        .route("/api/consumers/{vhost}", get(conn_api::vhost_consumers))
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
        .route("/api/bindings", get(messages_api::bindings))
        .route("/api/bindings/{vhost}", get(messages_api::bindings_in))
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}",
            get(messages_api::binding_list).post(messages_api::binding_create),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}",
            get(messages_api::binding_detail).delete(messages_api::binding_delete),
        )
        .route("/api/exchanges/{vhost}/{name}/bindings/source", get(messages_api::exchange_bindings_source))
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/destination",
            get(messages_api::exchange_bindings_destination),
        )
        .route("/api/exchanges/{vhost}/{name}/publish", post(messages_api::exchange_publish))
        .route("/api/queues/{vhost}/{name}/bindings", get(messages_api::queue_bindings))
        .route("/api/queues/{vhost}/{name}/get", post(messages_api::queue_get))
        .route("/api/definitions", get(definitions::export_all).post(definitions::import_all))
        .route("/api/definitions/{vhost}", get(definitions::export_vhost).post(definitions::import_vhost))
        .route("/api/health/checks/alarms", get(api::health_cluster_alarms))
        .route("/api/health/checks/local-alarms", get(api::health_local_alarms))
        .route("/api/health/checks/virtual-hosts", get(api::health_ok))
        .route("/api/health/checks/node-is-quorum-critical", get(api::health_single_node))
        .route("/api/health/checks/port-listener/{port}", get(api::health_port))
        .route("/api/health/checks/protocol-listener/{proto}", get(api::health_protocol))
        .fallback(|| async { ApiError::not_found() })
        .with_state(broker)
}

/// Serves the management API until shutdown (HTTPS when `tls` is given).
pub async fn serve(
    broker: Arc<Broker>,
    listener: TcpListener,
    tls: Option<Arc<crate::tls::Tls>>,
    handshake_timeout: std::time::Duration,
    shutdown: watch::Receiver<bool>,
) {
    serve_http("management", router(broker), listener, tls, handshake_timeout, shutdown).await
}

/// Serves `app` over HTTP, or HTTPS when `tls` is given, until shutdown.
pub(crate) async fn serve_http(
    what: &'static str,
    app: Router,
    listener: TcpListener,
    tls: Option<Arc<crate::tls::Tls>>,
    handshake_timeout: std::time::Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    let app = app.into_make_service_with_connect_info::<Peer>();
    let served = match tls {
        None => axum::serve(listener, app).with_graceful_shutdown(stop).await,
        Some(tls) => match crate::tls::HttpsListener::new(listener, tls, handshake_timeout) {
            Ok(l) => axum::serve(l, app).with_graceful_shutdown(stop).await,
            Err(e) => Err(e),
        },
    };
    if let Err(e) = served {
        tracing::error!(error = %e, "{what} server failed");
    }
}

/// The address an HTTP request came from (plain or TLS listener), for the
/// loopback-only users (`auth.loopback_users`, guest by default).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub std::net::SocketAddr);

impl Peer {
    /// Loopback, IPv4-mapped IPv6 loopback (a dual-stack listener) included.
    pub fn is_loopback(&self) -> bool {
        self.0.ip().to_canonical().is_loopback()
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TcpListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, crate::tls::HttpsListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, crate::tls::HttpsListener>) -> Self {
        Peer(*stream.remote_addr())
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
    pub fn new(status: StatusCode, error: &'static str, reason: impl Into<String>) -> Self {
        ApiError { status, error, reason: reason.into() }
    }
    pub fn internal(reason: impl Into<String>) -> Self {
        ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, error: "internal_error", reason: reason.into() }
    }
    /// A user lacking the tag an operation needs (RabbitMQ: 401 not_authorised).
    pub fn reason(&self) -> String {
        self.reason.clone()
    }
    fn not_authorised(reason: &str) -> Self {
        ApiError { status: StatusCode::UNAUTHORIZED, error: "not_authorised", reason: reason.into() }
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

    /// Users, vhosts, permissions, operator policies: administrators only.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.has(&["administrator"]) {
            Ok(())
        } else {
            Err(ApiError::not_authorised("Not administrator user"))
        }
    }

    /// Monitoring tags see every vhost's existence and everyone's connections.
    pub fn is_monitor(&self) -> bool {
        self.has(&["administrator", "monitoring"])
    }

    /// RabbitMQ's `check_vhost_access` as management applies it:
    /// administrators, and users with permissions in the vhost.
    pub fn can_access(&self, b: &Broker, vhost: &str) -> bool {
        self.has(&["administrator"]) || b.access.get(&self.0.name, vhost).is_some()
    }

    /// A vhost-scoped resource (`is_authorized_vhost`): a vhost the user
    /// cannot use answers 404, as in RabbitMQ.
    pub fn vhost(&self, b: &Broker, name: &str) -> Result<Arc<crate::broker::vhost::VHost>, ApiError> {
        match b.vhost(name) {
            Some(v) if self.can_access(b, name) => Ok(v),
            _ => Err(ApiError::not_found()),
        }
    }

    /// A change made over HTTP runs with the user's AMQP permissions, as
    /// RabbitMQ's `direct_request` does: refused → 401 "Access refused.".
    pub fn permit(
        &self,
        b: &Broker,
        vhost: &str,
        access: Access,
        kind: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        self.check(b, vhost, access, kind, name).map_err(|_| ApiError::not_authorised("Access refused."))
    }

    /// Publish and get over HTTP open a channel as the user
    /// (`with_channel`): a refusal answers 401 with the AMQP text.
    pub fn permit_channel(
        &self,
        b: &Broker,
        vhost: &str,
        access: Access,
        kind: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        self.check(b, vhost, access, kind, name).map_err(|e| ApiError::not_authorised(&e.reply_text()))
    }

    /// The AMQP check itself (the default exchange is checked as `amq.default`).
    fn check(
        &self,
        b: &Broker,
        vhost: &str,
        access: Access,
        kind: &str,
        name: &str,
    ) -> Result<(), AmqpError> {
        let name = if kind == "exchange" { checked_exchange_name(name) } else { name };
        match b.access.get(&self.0.name, vhost) {
            Some(p) if p.allows(access, name) => Ok(()),
            _ => Err(refused(access, kind, name, vhost, &self.0.name)),
        }
    }

    /// Node details: monitoring users and administrators.
    pub fn require_monitor(&self) -> Result<(), ApiError> {
        if self.is_monitor() { Ok(()) } else { Err(ApiError::not_authorised("Not monitor user")) }
    }

    /// Policies: policymakers and administrators.
    pub fn require_policymaker(&self) -> Result<(), ApiError> {
        if self.has(&["administrator", "policymaker"]) {
            Ok(())
        } else {
            Err(ApiError::not_authorised("Not policymaker user"))
        }
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
        let ok = broker.authenticate(user, pass, true);
        broker.counters.count_auth(false, ok);
        if !ok {
            return Err(ApiError::unauthorized().into_response());
        }
        // As RabbitMQ's management plugin: the password is checked first,
        // then a loopback-only user (guest) coming from elsewhere is refused
        // with its own reason. A request without a known peer (never from a
        // listener) counts as remote.
        let loopback = parts
            .extensions
            .get::<axum::extract::ConnectInfo<Peer>>()
            .is_some_and(|axum::extract::ConnectInfo(p)| p.is_loopback());
        if !loopback && broker.config.auth.loopback_users.iter().any(|l| l == user) {
            tracing::warn!(user, "HTTP access denied: user can only log in via localhost");
            return Err(ApiError {
                status: StatusCode::UNAUTHORIZED,
                error: "not_authorized",
                reason: "User can only log in via localhost".into(),
            }
            .into_response());
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
