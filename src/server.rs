//! Binds the listeners, accepts connections and runs them until shutdown.
//! Bind first, spawn second: tests bind port 0 and read the address back.

use crate::broker::Broker;
use crate::config::Config;
use crate::connection;
use crate::tls::Tls;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running broker.
pub struct ServerHandle {
    /// The plain AMQP listener (port 0 when `amqp.listen_plain` is off).
    pub amqp_addr: SocketAddr,
    /// The AMQPS listener, when `[tls]` is configured.
    pub amqps_addr: Option<SocketAddr>,
    pub mgmt_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub broker: Arc<Broker>,
    /// The TLS configuration AMQPS and HTTPS take, reloadable.
    tls: Option<Arc<Tls>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

async fn bind(what: &str, host: &str, port: u16) -> std::io::Result<TcpListener> {
    if host == "::" {
        match bind_dual_stack(port) {
            Ok(l) => return Ok(l),
            // No IPv6 on this host (a container with it switched off): IPv4 only.
            Err(e) if no_ipv6(&e) => {
                tracing::info!(listener = what, error = %e, "no IPv6 here; listening on 0.0.0.0 instead of ::");
                return bind_at(what, "0.0.0.0", port).await;
            }
            Err(e) => {
                return Err(std::io::Error::new(e.kind(), format!("cannot bind {what} [::]:{port}: {e}")));
            }
        }
    }
    bind_at(what, host, port).await
}

async fn bind_at(what: &str, host: &str, port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind((host, port))
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot bind {what} {host}:{port}: {e}")))
}

/// One IPv6 socket that also takes IPv4 clients (as IPv4-mapped addresses,
/// which the connection code turns back into IPv4), whatever the host's
/// `net.ipv6.bindv6only` says: RabbitMQ's default listener.
fn bind_dual_stack(port: u16) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    sock.set_only_v6(false)?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into())?;
    sock.listen(1024)?;
    TcpListener::from_std(sock.into())
}

fn no_ipv6(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL) | Some(libc::EPROTONOSUPPORT)
    )
}

/// Starts a broker with `config`; returns once the listeners are bound.
/// Imports `storage.load_definitions` (RabbitMQ's `load_definitions`).
fn load_definitions(broker: &Broker, path: &str) -> Result<(), String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read definitions file {path}: {e}"))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("definitions file {path} is not valid JSON: {e}"))?;
    crate::mgmt::definitions::import(broker, &doc, None, "load_definitions")
        .map_err(|e| format!("definitions file {path}: {e}"))?;
    tracing::info!(file = %path, "definitions loaded");
    Ok(())
}

pub async fn start(config: Config) -> std::io::Result<ServerHandle> {
    std::fs::create_dir_all(&config.storage.data_dir).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot create data dir {}: {e}", config.storage.data_dir.display()),
        )
    })?;
    // TLS material is read before anything binds: a bad file stops startup.
    let tls = if config.tls.enabled() {
        Some(Arc::new(Tls::load(&config.tls).map_err(std::io::Error::other)?))
    } else {
        None
    };
    let amqp = if config.amqp.listen_plain {
        Some(bind("AMQP", &config.amqp.bind, config.amqp.port).await?)
    } else {
        None
    };
    let amqps = match tls {
        Some(_) => Some(bind("AMQPS", &config.amqp.bind, config.amqp.tls_port).await?),
        None => None,
    };
    let mgmt = bind("management", &config.management.bind, config.management.port).await?;
    let prom = bind("prometheus", &config.prometheus.bind, config.prometheus.port).await?;
    let unbound = SocketAddr::from(([0, 0, 0, 0], 0));
    let amqp_addr = match &amqp {
        Some(l) => l.local_addr()?,
        None => unbound,
    };
    let amqps_addr = match &amqps {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let mgmt_addr = mgmt.local_addr()?;
    let metrics_addr = prom.local_addr()?;
    // Recovery happens before anything is accepted on the listeners.
    // Recovery blocks on the disk: `blocking` runs it right here (a
    // multi-threaded runtime's worker is handed over first), so no extra
    // thread outlives startup.
    let broker = crate::store::blocking(move || Broker::open(config)).map_err(std::io::Error::other)?;
    let defs_file = broker.config.storage.load_definitions.clone();
    if !defs_file.is_empty() {
        let b = broker.clone();
        crate::store::blocking(move || load_definitions(&b, &defs_file)).map_err(std::io::Error::other)?;
    }
    let _ = broker.ports.set((amqp_addr.port(), mgmt_addr.port(), metrics_addr.port()));
    let _ = broker.amqps_port.set(amqps_addr.map(|a| a.port()));
    let (tx, rx) = watch::channel(false);
    let mut tasks = Vec::new();
    if let Some(l) = amqp {
        tasks.push(tokio::spawn(accept_loop(broker.clone(), l, None, rx.clone())));
    }
    if let (Some(l), Some(t)) = (amqps, &tls) {
        tasks.push(tokio::spawn(accept_loop(broker.clone(), l, Some(t.clone()), rx.clone())));
    }
    let https = |on: bool| if on { tls.clone() } else { None };
    let handshake = Duration::from_millis(broker.config.amqp.handshake_timeout_ms);
    tasks.push(tokio::spawn(crate::mgmt::serve(
        broker.clone(),
        mgmt,
        https(broker.config.management.tls),
        handshake,
        rx.clone(),
    )));
    tasks.push(tokio::spawn(crate::mgmt::metrics::serve(
        broker.clone(),
        prom,
        https(broker.config.prometheus.tls),
        handshake,
        rx,
    )));
    let every = Duration::from_millis(broker.config.management.sample_interval_ms);
    tokio::spawn(crate::broker::rates::sampler(Arc::downgrade(&broker), every));
    tracing::info!(%amqp_addr, ?amqps_addr, %mgmt_addr, %metrics_addr, "Warren started");
    Ok(ServerHandle { amqp_addr, amqps_addr, mgmt_addr, metrics_addr, broker, tls, shutdown: tx, tasks })
}

async fn accept_loop(
    broker: Arc<Broker>,
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((sock, peer)) => {
                    let max = broker.config.amqp.max_connections;
                    if max != 0 && broker.counters.connections.load(Ordering::Relaxed) >= max {
                        tracing::warn!(%peer, max, "connection limit reached; refusing");
                        drop(sock);
                        continue;
                    }
                    match &tls {
                        None => tokio::spawn(connection::serve(broker.clone(), sock, peer, shutdown.clone())),
                        Some(t) => tokio::spawn(connection::serve_tls(
                            broker.clone(),
                            sock,
                            peer,
                            t.acceptor(),
                            shutdown.clone(),
                        )),
                    };
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

impl ServerHandle {
    /// Graceful shutdown: stop accepting, close clients with 320, wait for
    /// connections to finish (bounded).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let grace = Duration::from_millis(self.broker.config.lifecycle.shutdown_timeout_ms);
        let deadline = tokio::time::Instant::now() + grace;
        while self.broker.counters.connections.load(Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = self.broker.counters.connections.load(Ordering::Relaxed);
        if left > 0 {
            tracing::warn!(connections = left, "shutdown timeout reached; dropping the connections left");
        }
        let broker = self.broker.clone();
        let _ = tokio::task::spawn_blocking(move || broker.sync_store()).await;
        tracing::info!("Warren stopped");
    }

    /// Applies what can change while running (SIGHUP): the TLS
    /// certificate, key and CA (new handshakes take them; open connections
    /// keep theirs) and the alarm limits. Settings that need a restart
    /// (ports, data directory, ...) are left as they are, with a warning.
    pub fn reload(&self, new: &Config) -> Result<(), String> {
        if let Some(t) = &self.tls {
            t.reload(&new.tls)?;
            tracing::info!(cert = %new.tls.cert_file, "TLS certificate and key reloaded");
        } else if new.tls.enabled() {
            tracing::warn!("TLS was not configured at start; enabling it needs a restart");
        }
        self.broker.alarms.set_limits(&new.alarms);
        self.broker.alarms.check(&self.broker.config.storage.data_dir);
        Ok(())
    }
}
