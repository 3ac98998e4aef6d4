//! Connection scenarios. `connections`: `--connections` opened (TCP,
//! handshake, one channel) by `--parallel` lanes, held idle for `--hold`
//! seconds, the broker's resident set read, then all closed. `churn`:
//! `--parallel` lanes open a connection and a channel and close it again,
//! over and over, for `--seconds`.

use super::client::{Conn, Uri};
use super::{PerfArgs, io_error, procfs, progress, round};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn histogram() -> Result<Histogram<u64>, String> {
    Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).map_err(|e| e.to_string())
}

/// Milliseconds at a quantile of a histogram of microseconds.
fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    round(h.value_at_quantile(q) as f64 / 1000.0, 2)
}

pub async fn hold(args: &PerfArgs, uri: &Uri) -> Result<serde_json::Value, String> {
    let io = io_error(uri);
    let target = args.connections.max(1);
    let rss_before = args.broker_pid.and_then(procfs::rss_bytes);
    let cpu_before = args.broker_pid.and_then(procfs::cpu_seconds);
    let next = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(Mutex::new(Vec::with_capacity(target)));
    let latency = Arc::new(Mutex::new(histogram()?));
    let started = Instant::now();
    let mut lanes = Vec::new();
    for _ in 0..args.parallel.clamp(1, target) {
        let (next, open, latency, uri) = (next.clone(), open.clone(), latency.clone(), uri.clone());
        lanes.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < target {
                let t = Instant::now();
                let c = Conn::open(&uri).await?;
                let _ = latency.lock().record(t.elapsed().as_micros().max(1) as u64);
                open.lock().push(c);
            }
            Ok::<Instant, std::io::Error>(Instant::now())
        }));
    }
    let deadline = args.phase_deadline();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while !lanes.iter().all(|l| l.is_finished()) {
        if Instant::now() > deadline {
            return Err(format!("open: {} of {target} after --phase-timeout", open.lock().len()));
        }
        tokio::select! {
            _ = tick.tick() => progress(args, started, format_args!("open {:>7} of {target}", open.lock().len())),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    let mut last = started;
    for l in lanes {
        match l.await {
            Ok(Ok(finished)) => last = last.max(finished),
            Ok(Err(e)) => return Err(format!("after {} connections: {}", open.lock().len(), io(e))),
            Err(e) => return Err(format!("connection task: {e}")),
        }
    }
    let open_s = last.duration_since(started).as_secs_f64();
    let open_cpu = procfs::cpu_between(cpu_before, args.broker_pid);
    // Idle: what an open connection costs at rest.
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let rss_held = args.broker_pid.and_then(procfs::rss_bytes);
    progress(args, started, format_args!("{target} open; closing"));

    let conns = std::mem::take(&mut *open.lock());
    let closing = Instant::now();
    let mut closers = Vec::new();
    let per_lane = target.div_ceil(args.parallel.clamp(1, target));
    let mut conns = conns.into_iter();
    loop {
        let chunk: Vec<Conn> = conns.by_ref().take(per_lane).collect();
        if chunk.is_empty() {
            break;
        }
        closers.push(tokio::spawn(async move {
            for c in chunk {
                c.close().await;
            }
        }));
    }
    for c in closers {
        let _ = c.await;
    }
    let close_s = closing.elapsed().as_secs_f64();

    let h = latency.lock();
    let mut result = json!({
        "connections": target,
        "parallel": args.parallel,
        "open_s": round(open_s, 3),
        "open_per_s": (target as f64 / open_s).round(),
        "open_p50_ms": ms(&h, 0.5),
        "open_p99_ms": ms(&h, 0.99),
        "open_max_ms": round(h.max() as f64 / 1000.0, 2),
        "close_s": round(close_s, 3),
    });
    if let (Some(before), Some(held)) = (rss_before, rss_held) {
        result["rss_before_kib"] = json!(before / 1024);
        result["rss_held_kib"] = json!(held / 1024);
        result["rss_kib_per_conn"] =
            json!(round(held.saturating_sub(before) as f64 / 1024.0 / target as f64, 2));
    }
    if let Some(cpu) = open_cpu {
        result["open_cpu_us_per_conn"] = json!(round(cpu * 1e6 / target as f64, 1));
    }
    Ok(result)
}

pub async fn churn(args: &PerfArgs, uri: &Uri) -> Result<serde_json::Value, String> {
    let io = io_error(uri);
    let cycles = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let latency = Arc::new(Mutex::new(histogram()?));
    let cpu_before = args.broker_pid.and_then(procfs::cpu_seconds);
    let started = Instant::now();
    let mut lanes = Vec::new();
    for _ in 0..args.parallel.max(1) {
        let (cycles, stop, latency, uri) = (cycles.clone(), stop.clone(), latency.clone(), uri.clone());
        lanes.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                Conn::open(&uri).await?.close().await;
                let _ = latency.lock().record(t.elapsed().as_micros().max(1) as u64);
                cycles.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), std::io::Error>(())
        }));
    }
    let window = Duration::from_secs(args.seconds.max(1));
    let mut last = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while started.elapsed() < window {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep(window.saturating_sub(started.elapsed())) => break,
        }
        let now = cycles.load(Ordering::Relaxed);
        progress(args, started, format_args!("opened and closed {:>7} connections/s", now - last));
        last = now;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let done = cycles.load(Ordering::Relaxed);
    let cpu = procfs::cpu_between(cpu_before, args.broker_pid);
    stop.store(true, Ordering::Relaxed);
    for l in lanes {
        match l.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("after {done} connections: {}", io(e))),
            Err(e) => return Err(format!("connection task: {e}")),
        }
    }
    let h = latency.lock();
    let mut result = json!({
        "seconds": round(elapsed, 3),
        "parallel": args.parallel,
        "connections": done,
        "connections_per_s": (done as f64 / elapsed).round(),
        "cycle_p50_ms": ms(&h, 0.5),
        "cycle_p99_ms": ms(&h, 0.99),
    });
    if let Some(cpu) = cpu
        && done > 0
    {
        result["broker_cpu_us_per_conn"] = json!(round(cpu * 1e6 / done as f64, 1));
    }
    Ok(result)
}
