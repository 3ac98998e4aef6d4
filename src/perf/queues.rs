//! `queues`: `--queues` declared and each bound to a direct exchange by its
//! name, with `--pipeline` calls in flight on each of `--parallel`
//! connections; the broker's resident set read once they all exist; then
//! all deleted the same way. What a broker with very many queues costs.

use super::client::{self, Conn, Uri};
use super::{PerfArgs, io_error, procfs, progress, round};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Queue `i`'s name.
fn name(prefix: &str, i: usize) -> String {
    format!("{prefix}-q{i}")
}

/// Runs `calls(i)` for every queue index, `--parallel` connections each
/// keeping `--pipeline` calls in flight; returns the seconds it took.
async fn phase(
    args: &PerfArgs,
    uri: &Uri,
    what: &str,
    calls: fn(&str, &str, usize, bool) -> Vec<crate::protocol::AMQPClass>,
    exchange: &str,
) -> Result<f64, String> {
    let io = io_error(uri);
    let total = args.queues.unwrap_or(100_000).max(1);
    let lanes = args.parallel.clamp(1, total);
    let batch = args.pipeline.max(1);
    let done = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    // Connections first: the clock times the calls only.
    let mut conns = Vec::new();
    for _ in 0..lanes {
        conns.push(Conn::open(uri).await.map_err(&io)?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut c in conns {
        let (done, next, prefix, exchange) =
            (done.clone(), next.clone(), args.prefix(), exchange.to_string());
        let durable = args.persistent;
        tasks.push(tokio::spawn(async move {
            loop {
                let from = next.fetch_add(batch, Ordering::Relaxed);
                if from >= total {
                    break;
                }
                let methods: Vec<_> = (from..(from + batch).min(total))
                    .flat_map(|i| calls(&prefix, &exchange, i, durable))
                    .collect();
                c.pipeline(&methods).await?;
                done.fetch_add((from + batch).min(total) - from, Ordering::Relaxed);
            }
            let finished = Instant::now();
            c.close().await;
            Ok::<Instant, std::io::Error>(finished)
        }));
    }
    let deadline = args.phase_deadline();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while !tasks.iter().all(|t| t.is_finished()) {
        if Instant::now() > deadline {
            return Err(format!("{what}: {} of {total} after --phase-timeout", done.load(Ordering::Relaxed)));
        }
        tokio::select! {
            _ = tick.tick() => progress(args, started, format_args!("{what} {:>8} of {total}", done.load(Ordering::Relaxed))),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    let mut last = started;
    for t in tasks {
        match t.await {
            Ok(Ok(finished)) => last = last.max(finished),
            Ok(Err(e)) => return Err(format!("{what}: after {}: {}", done.load(Ordering::Relaxed), io(e))),
            Err(e) => return Err(format!("{what} task: {e}")),
        }
    }
    Ok(last.duration_since(started).as_secs_f64())
}

fn declare_and_bind(
    prefix: &str,
    exchange: &str,
    i: usize,
    durable: bool,
) -> Vec<crate::protocol::AMQPClass> {
    let q = name(prefix, i);
    vec![client::declare_queue(&q, durable), client::bind_queue(&q, exchange, &q)]
}

fn delete(prefix: &str, _: &str, i: usize, _: bool) -> Vec<crate::protocol::AMQPClass> {
    vec![client::delete_queue(&name(prefix, i))]
}

pub async fn run(args: &PerfArgs, uri: &Uri) -> Result<serde_json::Value, String> {
    let io = io_error(uri);
    let total = args.queues.unwrap_or(100_000).max(1);
    let exchange = format!("{}-direct", args.prefix());
    let mut setup = Conn::open(uri).await.map_err(&io)?;
    setup.declare_exchange(&exchange, "direct").await.map_err(&io)?;

    let rss_before = args.broker_pid.and_then(procfs::rss_bytes);
    let cpu_before = args.broker_pid.and_then(procfs::cpu_seconds);
    let declare_s = phase(args, uri, "declared and bound", declare_and_bind, &exchange).await?;
    let declare_cpu = procfs::cpu_between(cpu_before, args.broker_pid);
    let rss_full = args.broker_pid.and_then(procfs::rss_bytes);
    let cpu_before = args.broker_pid.and_then(procfs::cpu_seconds);
    let delete_s = phase(args, uri, "deleted", delete, &exchange).await?;
    let delete_cpu = procfs::cpu_between(cpu_before, args.broker_pid);
    let _ = setup.delete_exchange(&exchange).await;
    setup.close().await;

    let mut result = json!({
        "queues": total,
        "durable": args.persistent,
        "parallel": args.parallel,
        "pipeline": args.pipeline,
        "declare_bind_s": round(declare_s, 3),
        "declared_per_s": (total as f64 / declare_s).round(),
        "delete_s": round(delete_s, 3),
        "deleted_per_s": (total as f64 / delete_s).round(),
    });
    if let (Some(before), Some(full)) = (rss_before, rss_full) {
        result["rss_before_kib"] = json!(before / 1024);
        result["rss_full_kib"] = json!(full / 1024);
        result["rss_bytes_per_queue"] = json!(round(full.saturating_sub(before) as f64 / total as f64, 1));
    }
    if let Some(cpu) = declare_cpu {
        result["declare_cpu_us_per_queue"] = json!(round(cpu * 1e6 / total as f64, 1));
    }
    if let Some(cpu) = delete_cpu {
        result["delete_cpu_us_per_queue"] = json!(round(cpu * 1e6 / total as f64, 1));
    }
    Ok(result)
}
