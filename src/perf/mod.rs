//! `warren perf`: a load generator for any AMQP 0-9-1 broker (Warren or
//! RabbitMQ), in the spirit of RabbitMQ PerfTest and lavinmqperf.
//!
//! Scenarios: `throughput` (publishers, consumers, body size, confirm
//! window, prefetch, autoack or ack every N, persistent), `latency` (one
//! publisher at a fixed rate, end-to-end percentiles from an HDR histogram),
//! `fanout` (a fanout exchange bound to N queues, a consumer on each),
//! `backlog` (fill a queue with no consumer, then drain it; broker RSS per
//! queued message), `connections` (open N idle connections with a channel
//! each; open rate and broker RSS per connection), `churn` (connections
//! opened and closed in a loop) and `queues` (N queues declared and bound,
//! then deleted; rates and broker RSS per queue).
//!
//! Progress goes to stderr each second, one JSON line of results to stdout.
//! With `--broker-pid`, the broker's CPU time and resident set are read from
//! /proc. Only loopback brokers unless `--allow-remote`: a load test pointed
//! at a production host by mistake is worse than a refusal.

mod backlog;
pub mod client;
mod connections;
mod procfs;
mod queues;
mod throughput;

use client::Uri;
use std::time::{Duration, Instant};

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// As many messages as the broker takes, from `--publishers` to `--consumers`.
    Throughput,
    /// One publisher at `--rate` msg/s; latency from publish to delivery.
    Latency,
    /// One publisher to a fanout exchange bound to `--queues` queues (default
    /// 10), one autoack consumer per queue; CPU per delivery.
    Fanout,
    /// `--messages` (default 1,000,000) of `--size` (default 100) into a
    /// queue with no consumer, then drained by one autoack consumer.
    Backlog,
    /// `--connections` opened `--parallel` at a time, one channel each, held
    /// idle `--hold` seconds, then closed.
    Connections,
    /// Connections (with a channel) opened and closed in a loop by
    /// `--parallel` lanes for `--seconds`.
    Churn,
    /// `--queues` (default 100,000) declared and bound to a direct exchange,
    /// `--pipeline` calls in flight on each of `--parallel` connections, then
    /// deleted.
    Queues,
}

#[derive(clap::Args, Debug, Clone)]
pub struct PerfArgs {
    /// What to run.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// The broker.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub uri: String,
    /// Allow a broker that is not on a loopback address.
    #[arg(long)]
    pub allow_remote: bool,
    /// How long to measure (throughput, latency, fanout, churn).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Body size in bytes (default 16; 100 for `backlog`).
    #[arg(long)]
    pub size: Option<usize>,
    /// Publisher confirms with this many messages in flight per publisher (0: off).
    #[arg(long, default_value_t = 0)]
    pub confirm: u32,
    /// Consumer prefetch (basic.qos; 0: unlimited).
    #[arg(long, default_value_t = 100)]
    pub prefetch: u16,
    /// Consume with no-ack (autoack) instead of manual acks.
    #[arg(long)]
    pub autoack: bool,
    /// With manual acks: one multiple ack every N deliveries.
    #[arg(long, default_value_t = 1)]
    pub ack_every: u64,
    /// Persistent messages (delivery mode 2) to durable queues.
    #[arg(long)]
    pub persistent: bool,
    /// `latency`: messages per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// The queue (default: a fresh one, deleted at the end).
    #[arg(long)]
    pub queue: Option<String>,
    /// `fanout`: queues bound (default 10); `queues`: queues declared (default 100,000).
    #[arg(long)]
    pub queues: Option<usize>,
    /// `backlog`: messages to queue before draining.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// `connections`: connections to hold open.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// `connections`, `churn`, `queues`: connections working at once.
    #[arg(long, default_value_t = 16)]
    pub parallel: usize,
    /// `connections`: seconds to hold them open before reading the broker's RSS.
    #[arg(long, default_value_t = 2)]
    pub hold: u64,
    /// `queues`: calls in flight per connection.
    #[arg(long, default_value_t = 100)]
    pub pipeline: usize,
    /// Limit in seconds for any one waiting phase (fill, drain, open, declare).
    #[arg(long, default_value_t = 300)]
    pub phase_timeout: u64,
    /// The broker's process id: its CPU time and resident set are reported (/proc).
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// No progress lines, only the result.
    #[arg(long)]
    pub quiet: bool,
}

impl PerfArgs {
    fn size(&self) -> usize {
        self.size.unwrap_or(if self.scenario == Scenario::Backlog { 100 } else { 16 })
    }

    fn phase_deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs(self.phase_timeout.max(1))
    }

    /// Names this run's queues and exchanges: unique per process.
    fn prefix(&self) -> String {
        format!("warren-perf-{}", std::process::id())
    }
}

/// Runs the scenario; `Ok` is the result line, `Err` why it could not run.
pub async fn run(args: PerfArgs) -> Result<serde_json::Value, String> {
    let uri = Uri::parse(&args.uri)?;
    check_loopback(&uri, args.allow_remote).await?;
    let mut result = match args.scenario {
        Scenario::Throughput | Scenario::Latency | Scenario::Fanout => throughput::run(&args, &uri).await?,
        Scenario::Backlog => backlog::run(&args, &uri).await?,
        Scenario::Connections => connections::hold(&args, &uri).await?,
        Scenario::Churn => connections::churn(&args, &uri).await?,
        Scenario::Queues => queues::run(&args, &uri).await?,
    };
    result["scenario"] = format!("{:?}", args.scenario).to_lowercase().into();
    result["uri_host"] = uri.host.clone().into();
    Ok(result)
}

/// An I/O error on a connection to the broker, as the result's error text.
fn io_error(uri: &Uri) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{}:{}: {e}", uri.host, uri.port)
}

/// A progress line on stderr, unless `--quiet`.
fn progress(args: &PerfArgs, started: Instant, line: std::fmt::Arguments) {
    if !args.quiet {
        eprintln!("[{:>4}s] {line}", started.elapsed().as_secs());
    }
}

/// Rounds to `digits` decimals for the result line.
fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

async fn check_loopback(uri: &Uri, allow_remote: bool) -> Result<(), String> {
    if allow_remote {
        return Ok(());
    }
    let addrs: Vec<_> = tokio::net::lookup_host((uri.host.as_str(), uri.port))
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", uri.host))?
        .collect();
    match addrs.iter().find(|a| !a.ip().is_loopback()) {
        Some(a) => Err(format!(
            "{} resolves to {}, not a loopback address: pass --allow-remote to load a remote broker",
            uri.host,
            a.ip()
        )),
        None => Ok(()),
    }
}
