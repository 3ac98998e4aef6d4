//! `warren perf`: a load generator for any AMQP 0-9-1 broker (Warren or
//! RabbitMQ), in the spirit of RabbitMQ PerfTest. Scenarios so far:
//! `throughput` (publishers, consumers, body size, confirm window, prefetch,
//! autoack or ack every N, persistent) and `latency` (one publisher at a
//! fixed rate, end-to-end latency percentiles from an HDR histogram).
//! Progress goes to stderr each second, one JSON line of results to stdout.
//! Only loopback brokers unless `--allow-remote`: a load test pointed at a
//! production host by mistake is worse than a refusal.

pub mod client;

use client::{Conn, Uri};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// As many messages as the broker takes, from `--publishers` to `--consumers`.
    Throughput,
    /// One publisher at `--rate` msg/s; latency from publish to delivery.
    Latency,
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
    /// How long to measure.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 16)]
    pub size: usize,
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
    /// Persistent messages (delivery mode 2) to a durable queue.
    #[arg(long)]
    pub persistent: bool,
    /// `latency`: messages per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// The queue (default: a fresh one, deleted at the end).
    #[arg(long)]
    pub queue: Option<String>,
    /// The broker's process id: its CPU time per message is reported (/proc).
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// No progress lines, only the result.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Default)]
struct Stats {
    published: AtomicU64,
    confirmed: AtomicU64,
    nacked: AtomicU64,
    consumed: AtomicU64,
}

/// Runs the scenario; `Ok` is the result line, `Err` why it could not run.
pub async fn run(args: PerfArgs) -> Result<serde_json::Value, String> {
    let uri = Uri::parse(&args.uri)?;
    check_loopback(&uri, args.allow_remote).await?;
    let queue = args.queue.clone().unwrap_or_else(|| format!("warren-perf-{}", std::process::id()));
    let io = |e: std::io::Error| format!("{}:{}: {e}", uri.host, uri.port);
    let mut setup = Conn::open(&uri).await.map_err(io)?;
    setup.declare(&queue, args.persistent).await.map_err(io)?;

    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let latency = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).map_err(|e| e.to_string())?,
    ));
    let epoch = Instant::now();
    let mut consumers = Vec::new();
    for _ in 0..args.consumers {
        let c = Conn::open(&uri).await.map_err(io)?;
        consumers.push(tokio::spawn(consumer(
            c,
            args.clone(),
            queue.clone(),
            stats.clone(),
            latency.clone(),
            epoch,
        )));
    }
    let publishers = match args.scenario {
        Scenario::Throughput => args.publishers,
        Scenario::Latency => 1,
    };
    let mut conns = Vec::new();
    for _ in 0..publishers {
        conns.push(Conn::open(&uri).await.map_err(io)?);
    }
    let cpu_before = args.broker_pid.and_then(cpu_seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in conns {
        tasks.push(tokio::spawn(publisher(
            c,
            args.clone(),
            queue.clone(),
            stats.clone(),
            stop.clone(),
            epoch,
        )));
    }
    // Progress each second until the end of the window.
    let window = Duration::from_secs(args.seconds.max(1));
    let mut last = [0u64; 3];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while started.elapsed() < window {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep(window.saturating_sub(started.elapsed())) => break,
        }
        let now = [
            stats.published.load(Ordering::Relaxed),
            stats.confirmed.load(Ordering::Relaxed),
            stats.consumed.load(Ordering::Relaxed),
        ];
        if !args.quiet {
            eprintln!(
                "[{:>4}s] published {:>9} msg/s  confirmed {:>9} msg/s  consumed {:>9} msg/s",
                started.elapsed().as_secs(),
                now[0] - last[0],
                now[1] - last[1],
                now[2] - last[2]
            );
        }
        last = now;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let published = stats.published.load(Ordering::Relaxed);
    let confirmed = stats.confirmed.load(Ordering::Relaxed);
    let consumed = stats.consumed.load(Ordering::Relaxed);
    let cpu = match (cpu_before, args.broker_pid.and_then(cpu_seconds)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("publisher: {e}")),
            Err(e) => return Err(format!("publisher task: {e}")),
        }
    }
    for c in &consumers {
        c.abort();
    }
    if args.queue.is_none() {
        let _ = setup.delete(&queue).await;
    }
    setup.close().await;

    let per_s = |n: u64| (n as f64 / elapsed).round();
    let counted = if consumed > 0 { consumed } else { published };
    let mut result = json!({
        "scenario": format!("{:?}", args.scenario).to_lowercase(),
        "uri_host": uri.host,
        "seconds": (elapsed * 1000.0).round() / 1000.0,
        "publishers": publishers,
        "consumers": args.consumers,
        "size": args.size,
        "confirm": args.confirm,
        "prefetch": args.prefetch,
        "autoack": args.autoack || args.scenario == Scenario::Latency,
        "persistent": args.persistent,
        "published": published,
        "confirmed": confirmed,
        "nacked": stats.nacked.load(Ordering::Relaxed),
        "consumed": consumed,
        "published_per_s": per_s(published),
        "confirmed_per_s": per_s(confirmed),
        "consumed_per_s": per_s(consumed),
    });
    if let Some(cpu) = cpu
        && counted > 0
    {
        result["broker_cpu_s"] = json!((cpu * 1000.0).round() / 1000.0);
        result["broker_cpu_us_per_msg"] = json!((cpu * 1e6 / counted as f64 * 100.0).round() / 100.0);
    }
    if args.scenario == Scenario::Latency {
        let h = latency.lock();
        let us = |q: f64| (h.value_at_quantile(q) as f64 / 1000.0).round();
        result["rate"] = json!(args.rate);
        result["latency_us"] = json!({
            "samples": h.len(),
            "p50": us(0.5), "p90": us(0.9), "p99": us(0.99), "p999": us(0.999),
            "max": (h.max() as f64 / 1000.0).round(),
        });
    }
    Ok(result)
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

/// Publishes until `stop`: as fast as the confirm window (or TCP) allows,
/// or at `--rate` for `latency`, stamping each body with its send time.
async fn publisher(
    conn: Conn,
    args: PerfArgs,
    queue: String,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    epoch: Instant,
) -> std::io::Result<()> {
    let mut conn = conn;
    let window = args.confirm as usize;
    if window > 0 {
        conn.confirm_select().await?;
    }
    let Conn { reader, mut wr, frame_max } = conn;
    let permits = Arc::new(Semaphore::new(window));
    let confirms = (window > 0).then(|| tokio::spawn(confirm_reader(reader, permits.clone(), stats.clone())));
    let mut body = vec![0u8; args.size.max(8)];
    let mut out = bytes::BytesMut::with_capacity(256 * 1024);
    let latency = args.scenario == Scenario::Latency;
    let started = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let batch = if latency {
            // Messages due by now at the fixed rate, at most 64 at once.
            let due = (started.elapsed().as_secs_f64() * args.rate as f64) as u64;
            if due <= sent {
                tokio::time::sleep(Duration::from_micros(200)).await;
                continue;
            }
            (due - sent).min(64) as usize
        } else {
            64
        };
        let batch = if window > 0 {
            let want = batch.min(window) as u32;
            match tokio::time::timeout(Duration::from_millis(100), permits.acquire_many(want)).await {
                Ok(Ok(p)) => p.forget(),
                Ok(Err(_)) => break, // the confirm reader ended: the connection is gone
                Err(_) => continue,  // window full: look at `stop` again
            }
            want as usize
        } else {
            batch
        };
        out.clear();
        for _ in 0..batch {
            let stamp = epoch.elapsed().as_nanos() as u64;
            body[..8].copy_from_slice(&stamp.to_be_bytes());
            client::encode_publish(&mut out, &queue, args.persistent, &body[..args.size.max(8)], frame_max);
        }
        wr.write_all(&out).await?;
        sent += batch as u64;
        stats.published.fetch_add(batch as u64, Ordering::Relaxed);
    }
    if let Some(c) = confirms {
        c.abort();
    }
    Ok(())
}

/// Counts publisher confirms (single and multiple acks/nacks) and returns
/// their window permits.
async fn confirm_reader(mut reader: client::Reader, permits: Arc<Semaphore>, stats: Arc<Stats>) {
    // Everything up to `upto` is settled; `beyond` holds single settles above it.
    let mut upto = 0u64;
    let mut beyond: BTreeSet<u64> = BTreeSet::new();
    while let Ok(f) = reader.frame().await {
        let Some((60, method @ (80 | 120))) = crate::protocol::fast::method_ids(&f.payload) else {
            continue;
        };
        let Some(a) = crate::protocol::fast::parse_ack(&f.payload) else { continue };
        let n = if a.multiple {
            if a.delivery_tag <= upto {
                0
            } else {
                let already = beyond.range(..=a.delivery_tag).count() as u64;
                beyond = beyond.split_off(&(a.delivery_tag + 1));
                let n = a.delivery_tag - upto - already;
                upto = a.delivery_tag;
                n
            }
        } else if a.delivery_tag > upto && beyond.insert(a.delivery_tag) {
            while beyond.first() == Some(&(upto + 1)) {
                beyond.pop_first();
                upto += 1;
            }
            1
        } else {
            0
        };
        if method == 80 {
            stats.confirmed.fetch_add(n, Ordering::Relaxed);
        } else {
            stats.nacked.fetch_add(n, Ordering::Relaxed);
        }
        permits.add_permits(n as usize);
    }
}

/// Consumes until aborted, acking every `--ack-every` deliveries (multiple)
/// unless autoack; records latency from the body's stamp.
async fn consumer(
    conn: Conn,
    args: PerfArgs,
    queue: String,
    stats: Arc<Stats>,
    latency: Arc<Mutex<Histogram<u64>>>,
    epoch: Instant,
) -> std::io::Result<()> {
    let mut conn = conn;
    let autoack = args.autoack || args.scenario == Scenario::Latency;
    conn.consume(&queue, args.prefetch, autoack).await?;
    let Conn { mut reader, mut wr, .. } = conn;
    let mut unacked = 0u64;
    let mut stamp_next_body = false;
    let mut acks = bytes::BytesMut::new();
    loop {
        let f = reader.frame().await?;
        match f.kind {
            crate::protocol::frame::FRAME_METHOD => {
                if crate::protocol::fast::method_ids(&f.payload) != Some((60, 60)) {
                    continue;
                }
                // basic.deliver: class, method, consumer tag (short string), delivery tag.
                let p = &f.payload[..];
                let tag_at = 5 + *p.get(4).unwrap_or(&0) as usize;
                let Some(tag) = p.get(tag_at..tag_at + 8) else { continue };
                let last_tag = u64::from_be_bytes(tag.try_into().unwrap_or([0; 8]));
                stats.consumed.fetch_add(1, Ordering::Relaxed);
                stamp_next_body = true;
                if !autoack {
                    unacked += 1;
                    if unacked >= args.ack_every.max(1) {
                        acks.clear();
                        client::encode_ack(&mut acks, last_tag, true);
                        wr.write_all(&acks).await?;
                        unacked = 0;
                    }
                }
            }
            crate::protocol::frame::FRAME_BODY if stamp_next_body => {
                stamp_next_body = false;
                if let Some(b) = f.payload.get(..8) {
                    let sent = u64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
                    let now = epoch.elapsed().as_nanos() as u64;
                    let _ = latency.lock().record(now.saturating_sub(sent).max(1));
                }
            }
            _ => {}
        }
    }
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some((utime + stime) / if ticks > 0 { ticks as f64 } else { 100.0 })
}
