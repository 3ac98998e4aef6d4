//! Open connections and their channels, as management sees them. Each
//! connection registers itself after the handshake and refreshes its
//! channel summaries when a channel-level setting changes (open, close,
//! confirm, tx, qos: rare events), so listing never touches a reader task.

use crate::protocol::FieldTable;
use crate::queue::sink::Outbox;
use dashmap::DashMap;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Notify;

/// One channel's settings (counts come from the connection's outbox).
#[derive(Debug, Clone, Default)]
pub struct ChannelInfo {
    pub confirm: bool,
    pub transactional: bool,
    /// `basic.qos(global=false)`: the prefetch given to new consumers.
    pub prefetch_count: u16,
    pub global_prefetch_count: u32,
}

#[derive(Debug)]
pub struct ConnectionInfo {
    pub id: u64,
    /// RabbitMQ's name: `"<peer ip>:<port> -> <server ip>:<port>"`.
    pub name: String,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub user: String,
    pub vhost: String,
    pub client_properties: FieldTable,
    /// ms since the epoch.
    pub connected_at: u64,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat: u16,
    pub auth_mechanism: String,
    pub outbox: Arc<Outbox>,
    /// Bytes read from the socket.
    pub recv_oct: AtomicU64,
    /// Reads put off by a timer tick so that the next one takes a bigger
    /// batch (see `amqp.read_coalesce_bytes`).
    pub reads_deferred: AtomicU64,
    pub channels: Mutex<BTreeMap<u16, ChannelInfo>>,
    /// Sampled `recv_oct`/`send_oct` rates.
    pub rates: super::rates::ConnectionRates,
    /// Why management (or vhost deletion) asked the connection to close.
    close_reason: Mutex<Option<String>>,
    close: Notify,
    /// Held by a resource alarm (management shows state "blocked").
    pub blocked: std::sync::atomic::AtomicBool,
    /// Flow control: when the connection last waited for the persister (ms
    /// since the epoch; `u64::MAX` while it waits, 0 never). Management
    /// shows state "flow" during a wait and for a second after it, as
    /// RabbitMQ's `credit_flow:state/0` does.
    pub flow_at: AtomicU64,
    /// Set for AMQPS connections: (protocol version, cipher suite).
    pub tls: std::sync::OnceLock<(String, String)>,
}

impl ConnectionInfo {
    /// Management's `state`: "blocked" by an alarm, "flow" (see `flow_at`),
    /// or "running".
    pub fn state(&self) -> &'static str {
        if self.blocked.load(Ordering::Relaxed) {
            return "blocked";
        }
        match self.flow_at.load(Ordering::Relaxed) {
            0 => "running",
            u64::MAX => "flow",
            at if crate::queue::now_ms().saturating_sub(at) < 1000 => "flow",
            _ => "running",
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        peer: SocketAddr,
        local: SocketAddr,
        user: String,
        vhost: String,
        client_properties: FieldTable,
        frame_max: u32,
        channel_max: u16,
        heartbeat: u16,
        auth_mechanism: String,
        outbox: Arc<Outbox>,
    ) -> Self {
        ConnectionInfo {
            id,
            name: format!("{peer} -> {local}"),
            peer,
            local,
            user,
            vhost,
            client_properties,
            connected_at: crate::queue::now_ms(),
            frame_max,
            channel_max,
            heartbeat,
            auth_mechanism,
            outbox,
            recv_oct: AtomicU64::new(0),
            reads_deferred: AtomicU64::new(0),
            channels: Mutex::new(BTreeMap::new()),
            rates: Default::default(),
            close_reason: Mutex::new(None),
            close: Notify::new(),
            blocked: Default::default(),
            flow_at: AtomicU64::new(0),
            tls: Default::default(),
        }
    }

    /// Samples the connection's byte counters and its channels' message
    /// counters (kept in the outbox) for management's rates.
    pub fn sample_rates(&self, now: std::time::Instant) {
        use std::sync::atomic::Ordering;
        self.rates.sample(now, [self.recv_oct.load(Ordering::Relaxed), self.outbox.sent_bytes()]);
        self.outbox.with(|st| {
            for d in st.channels.values() {
                d.rates.sample(now, d.counters.values());
            }
        });
    }

    /// Asks the connection to close with 320 CONNECTION_FORCED and `reason`.
    pub fn force_close(&self, reason: &str) {
        *self.close_reason.lock() = Some(reason.to_string());
        self.close.notify_one();
    }

    /// Resolves when `force_close` was called; returns the reason.
    pub async fn closed_by_broker(&self) -> String {
        self.close.notified().await;
        self.close_reason.lock().clone().unwrap_or_default()
    }
}

/// Every open connection, by id.
#[derive(Debug, Default)]
pub struct Registry {
    pub connections: DashMap<u64, Arc<ConnectionInfo>>,
}

impl Registry {
    pub fn add(&self, c: Arc<ConnectionInfo>) {
        self.connections.insert(c.id, c);
    }

    pub fn remove(&self, id: u64) {
        self.connections.remove(&id);
    }

    /// A snapshot sorted by name.
    pub fn all(&self) -> Vec<Arc<ConnectionInfo>> {
        let mut v: Vec<Arc<ConnectionInfo>> = self.connections.iter().map(|c| c.clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn by_name(&self, name: &str) -> Option<Arc<ConnectionInfo>> {
        self.connections.iter().find(|c| c.name == name).map(|c| c.clone())
    }
}
