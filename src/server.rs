//! Binds the listeners, accepts connections and runs them until shutdown.
//! Bind first, spawn second: tests bind port 0 and read the address back.

use crate::broker::Broker;
use crate::config::Config;
use crate::connection;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running broker.
pub struct ServerHandle {
    pub amqp_addr: SocketAddr,
    pub mgmt_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub broker: Arc<Broker>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
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
    let amqp = TcpListener::bind((config.amqp.bind.as_str(), config.amqp.port)).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot bind AMQP {}:{}: {e}", config.amqp.bind, config.amqp.port),
        )
    })?;
    let mgmt =
        TcpListener::bind((config.management.bind.as_str(), config.management.port)).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot bind management {}:{}: {e}", config.management.bind, config.management.port),
            )
        })?;
    let prom =
        TcpListener::bind((config.prometheus.bind.as_str(), config.prometheus.port)).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot bind prometheus {}:{}: {e}", config.prometheus.bind, config.prometheus.port),
            )
        })?;
    let amqp_addr = amqp.local_addr()?;
    let mgmt_addr = mgmt.local_addr()?;
    let metrics_addr = prom.local_addr()?;
    // Recovery happens before anything is accepted on the listeners.
    let broker = tokio::task::spawn_blocking(move || Broker::open(config))
        .await
        .map_err(|e| std::io::Error::other(format!("recovery task failed: {e}")))?
        .map_err(std::io::Error::other)?;
    let defs_file = broker.config.storage.load_definitions.clone();
    if !defs_file.is_empty() {
        let b = broker.clone();
        tokio::task::spawn_blocking(move || load_definitions(&b, &defs_file))
            .await
            .map_err(|e| std::io::Error::other(format!("definitions task failed: {e}")))?
            .map_err(std::io::Error::other)?;
    }
    let _ = broker.ports.set((amqp_addr.port(), mgmt_addr.port(), metrics_addr.port()));
    let (tx, rx) = watch::channel(false);
    let accept = tokio::spawn(accept_loop(broker.clone(), amqp, rx.clone()));
    let http = tokio::spawn(crate::mgmt::serve(broker.clone(), mgmt, rx.clone()));
    let metrics = tokio::spawn(crate::mgmt::metrics::serve(broker.clone(), prom, rx));
    let every = Duration::from_millis(broker.config.management.sample_interval_ms);
    tokio::spawn(crate::broker::rates::sampler(Arc::downgrade(&broker), every));
    tracing::info!(%amqp_addr, %mgmt_addr, %metrics_addr, "Warren started");
    Ok(ServerHandle {
        amqp_addr,
        mgmt_addr,
        metrics_addr,
        broker,
        shutdown: tx,
        tasks: vec![accept, http, metrics],
    })
}

async fn accept_loop(broker: Arc<Broker>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
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
                    tokio::spawn(connection::serve(broker.clone(), sock, peer, shutdown.clone()));
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
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.broker.counters.connections.load(Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let broker = self.broker.clone();
        let _ = tokio::task::spawn_blocking(move || broker.sync_store()).await;
        tracing::info!("Warren stopped");
    }
}
