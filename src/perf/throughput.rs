//! The message-flow scenarios: `throughput` (publishers → one queue →
//! consumers), `latency` (one publisher at a fixed rate, autoack) and
//! `fanout` (one publisher → a fanout exchange → N queues, a consumer on
//! each). Rates are counted over the measured window; the broker's CPU is
//! divided by the messages delivered in it (deliveries, for fanout).

use super::client::{self, Conn, Uri};
use super::{PerfArgs, Scenario, io_error, procfs, progress, round};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

#[derive(Default)]
struct Stats {
    published: AtomicU64,
    confirmed: AtomicU64,
    nacked: AtomicU64,
    consumed: AtomicU64,
}

/// Where publishers send and where consumers read.
struct Topology {
    exchange: String,
    routing_key: String,
    queues: Vec<String>,
}

async fn set_up(args: &PerfArgs, setup: &mut Conn) -> std::io::Result<Topology> {
    if args.scenario == Scenario::Fanout {
        let exchange = format!("{}-fanout", args.prefix());
        setup.declare_exchange(&exchange, "fanout").await?;
        let mut queues = Vec::new();
        for i in 0..args.queues.unwrap_or(10).max(1) {
            let q = format!("{}-{i}", args.prefix());
            setup.declare(&q, args.persistent).await?;
            setup.bind(&q, &exchange, "").await?;
            queues.push(q);
        }
        return Ok(Topology { exchange, routing_key: String::new(), queues });
    }
    let queue = args.queue.clone().unwrap_or_else(|| args.prefix());
    setup.declare(&queue, args.persistent).await?;
    Ok(Topology { exchange: String::new(), routing_key: queue.clone(), queues: vec![queue] })
}

async fn tear_down(args: &PerfArgs, setup: &mut Conn, t: &Topology) {
    // A queue named with --queue is the user's (fanout always makes its own).
    if args.queue.is_some() && args.scenario != Scenario::Fanout {
        return;
    }
    for q in &t.queues {
        let _ = setup.delete(q).await;
    }
    if !t.exchange.is_empty() {
        let _ = setup.delete_exchange(&t.exchange).await;
    }
}

pub async fn run(args: &PerfArgs, uri: &Uri) -> Result<serde_json::Value, String> {
    if !autoack(args) && args.prefetch > 0 && args.ack_every > u64::from(args.prefetch) {
        return Err(format!(
            "--ack-every {} is above --prefetch {}: the consumer would stop at the prefetch limit, waiting to ack",
            args.ack_every, args.prefetch
        ));
    }
    let io = io_error(uri);
    let mut setup = Conn::open(uri).await.map_err(&io)?;
    let topology = set_up(args, &mut setup).await.map_err(&io)?;

    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let latency = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).map_err(|e| e.to_string())?,
    ));
    let epoch = Instant::now();
    // Fanout: one consumer per queue; otherwise `--consumers` on the queue.
    let consumer_queues: Vec<String> = match args.scenario {
        Scenario::Fanout => topology.queues.clone(),
        _ => vec![topology.queues[0].clone(); args.consumers],
    };
    let mut consumers = Vec::new();
    for q in consumer_queues.iter() {
        let c = Conn::open(uri).await.map_err(&io)?;
        consumers.push(tokio::spawn(consumer(
            c,
            args.clone(),
            q.clone(),
            stats.clone(),
            latency.clone(),
            epoch,
        )));
    }
    let publishers = match args.scenario {
        Scenario::Throughput => args.publishers,
        _ => 1,
    };
    let mut conns = Vec::new();
    for _ in 0..publishers {
        conns.push(Conn::open(uri).await.map_err(&io)?);
    }
    let cpu_before = args.broker_pid.and_then(procfs::cpu_seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in conns {
        let target = (topology.exchange.clone(), topology.routing_key.clone());
        tasks.push(tokio::spawn(publisher(c, args.clone(), target, stats.clone(), stop.clone(), epoch)));
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
        progress(
            args,
            started,
            format_args!(
                "published {:>9} msg/s  confirmed {:>9} msg/s  consumed {:>9} msg/s",
                now[0] - last[0],
                now[1] - last[1],
                now[2] - last[2]
            ),
        );
        last = now;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let published = stats.published.load(Ordering::Relaxed);
    let confirmed = stats.confirmed.load(Ordering::Relaxed);
    let consumed = stats.consumed.load(Ordering::Relaxed);
    let cpu = procfs::cpu_between(cpu_before, args.broker_pid);
    stop.store(true, Ordering::Relaxed);
    // A publisher stuck in a write (a broker that stopped reading it, as a
    // resource alarm does) is given up after --phase-timeout.
    let deadline = tokio::time::Instant::from_std(args.phase_deadline());
    for mut t in tasks {
        match tokio::time::timeout_at(deadline, &mut t).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(format!("publisher: {e}")),
            Ok(Err(e)) => return Err(format!("publisher task: {e}")),
            Err(_) => {
                t.abort();
                return Err(
                    "a publisher was still writing after --phase-timeout (is the broker reading?)".into()
                );
            }
        }
    }
    // Consumers run until aborted: one that ended on its own lost its
    // connection or channel.
    for c in consumers {
        if c.is_finished() {
            if let Ok(Err(e)) = c.await {
                return Err(format!("consumer: {e}"));
            }
        } else {
            c.abort();
        }
    }
    tear_down(args, &mut setup, &topology).await;
    setup.close().await;

    let per_s = |n: u64| (n as f64 / elapsed).round();
    let counted = if consumed > 0 { consumed } else { published };
    let mut result = json!({
        "seconds": round(elapsed, 3),
        "publishers": publishers,
        "consumers": consumer_queues.len(),
        "size": args.size().max(8),
        "confirm": args.confirm,
        "prefetch": args.prefetch,
        "autoack": autoack(args),
        "persistent": args.persistent,
        "published": published,
        "confirmed": confirmed,
        "nacked": stats.nacked.load(Ordering::Relaxed),
        "consumed": consumed,
        "published_per_s": per_s(published),
        "confirmed_per_s": per_s(confirmed),
        "consumed_per_s": per_s(consumed),
    });
    if args.scenario == Scenario::Fanout {
        result["queues"] = json!(topology.queues.len());
        result["routed_per_s"] = json!(per_s(consumed));
    }
    if let Some(cpu) = cpu
        && counted > 0
    {
        result["broker_cpu_s"] = json!(round(cpu, 3));
        // Per message delivered (per delivery for fanout: one message
        // routed to ten queues is ten deliveries).
        let key = if args.scenario == Scenario::Fanout {
            "broker_cpu_us_per_delivery"
        } else {
            "broker_cpu_us_per_msg"
        };
        result[key] = json!(round(cpu * 1e6 / counted as f64, 2));
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

fn autoack(args: &PerfArgs) -> bool {
    args.autoack || matches!(args.scenario, Scenario::Latency | Scenario::Fanout)
}

/// Publishes until `stop`: as fast as the confirm window (or TCP) allows,
/// or at `--rate` for `latency`, stamping each body with its send time.
async fn publisher(
    conn: Conn,
    args: PerfArgs,
    (exchange, routing_key): (String, String),
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
    // The highest delivery tag written so far (set before the write, so a
    // confirm can never be ahead of it).
    let tags = Arc::new(AtomicU64::new(0));
    let confirms = (window > 0)
        .then(|| tokio::spawn(confirm_reader(reader, permits.clone(), tags.clone(), stats.clone())));
    let size = args.size().max(8);
    let mut body = vec![0u8; size];
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
                Ok(Err(_)) if stop.load(Ordering::Relaxed) => break,
                Ok(Err(_)) => {
                    // The confirm reader ended: the connection is gone.
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "the broker closed the connection (no more confirms)",
                    ));
                }
                Err(_) => continue, // window full: look at `stop` again
            }
            want as usize
        } else {
            batch
        };
        out.clear();
        for _ in 0..batch {
            let stamp = epoch.elapsed().as_nanos() as u64;
            body[..8].copy_from_slice(&stamp.to_be_bytes());
            client::encode_publish(&mut out, &exchange, &routing_key, args.persistent, &body, frame_max);
        }
        tags.store(sent + batch as u64, Ordering::Release);
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
/// their window permits; closes the window when the connection ends. A tag
/// above any sent is taken as the highest sent (a broker's bug must not
/// inflate the count or overflow the window).
async fn confirm_reader(
    mut reader: client::Reader,
    permits: Arc<Semaphore>,
    tags: Arc<AtomicU64>,
    stats: Arc<Stats>,
) {
    // Everything up to `upto` is settled; `beyond` holds single settles above it.
    let mut upto = 0u64;
    let mut beyond: BTreeSet<u64> = BTreeSet::new();
    while let Ok(f) = reader.frame().await {
        let Some((60, method @ (80 | 120))) = crate::protocol::fast::method_ids(&f.payload) else {
            continue;
        };
        let Some(a) = crate::protocol::fast::parse_ack(&f.payload) else { continue };
        let tag = a.delivery_tag.min(tags.load(Ordering::Acquire));
        let n = if a.multiple {
            if tag <= upto {
                0
            } else {
                let already = beyond.range(..=tag).count() as u64;
                beyond = beyond.split_off(&(tag + 1));
                let n = tag - upto - already;
                upto = tag;
                n
            }
        } else if tag > upto && beyond.insert(tag) {
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
    permits.close();
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
    let autoack = autoack(&args);
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
