//! `backlog`: `--messages` published to a queue with no consumer, as fast
//! as the broker reads them, until the broker reports (passive declare)
//! that the queue holds them all; then one autoack consumer drains it. The
//! broker's resident set is sampled every 50 ms: its growth per queued
//! message is what a deep backlog costs in memory.

use super::client::{self, Conn, Uri};
use super::{PerfArgs, io_error, procfs, progress, round};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

pub async fn run(args: &PerfArgs, uri: &Uri) -> Result<serde_json::Value, String> {
    let io = io_error(uri);
    let queue = args.queue.clone().unwrap_or_else(|| args.prefix());
    let messages = args.messages.max(1);
    let mut setup = Conn::open(uri).await.map_err(&io)?;
    setup.declare(&queue, args.persistent).await.map_err(&io)?;
    let already = setup.message_count(&queue).await.map_err(&io)? as u64;
    let target = already + messages;

    // The resident set, sampled until the drain ends.
    let rss_before = args.broker_pid.and_then(procfs::rss_bytes);
    let peak = Arc::new(AtomicU64::new(rss_before.unwrap_or(0)));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = args.broker_pid.map(|pid| {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                if let Some(rss) = procfs::rss_bytes(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    });

    // Fill.
    let cpu_before = args.broker_pid.and_then(procfs::cpu_seconds);
    let started = Instant::now();
    let publisher = Conn::open(uri).await.map_err(&io)?;
    let sent = Arc::new(AtomicU64::new(0));
    let mut writer = Some(tokio::spawn(fill(publisher, args.clone(), queue.clone(), messages, sent.clone())));
    let mut publisher = None;
    let deadline = args.phase_deadline();
    let mut sent_all_at = None;
    let mut last_report = Instant::now();
    let queued = loop {
        if let Some(w) = writer.as_mut().filter(|w| w.is_finished()) {
            publisher = Some(finished(w.await)?);
            writer = None;
            sent_all_at = Some(started.elapsed());
        }
        let n = setup.message_count(&queue).await.map_err(&io)? as u64;
        if n >= target {
            break n;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "fill: {} of {messages} queued after --phase-timeout",
                n.saturating_sub(already)
            ));
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            let s = sent.load(Ordering::Relaxed);
            progress(args, started, format_args!("sent {s:>9}  queued {:>9}", n.saturating_sub(already)));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let fill_s = started.elapsed().as_secs_f64();
    if let Some(w) = writer {
        publisher = Some(finished(w.await)?);
    }
    if let Some(p) = publisher {
        p.close().await;
    }
    let send_s = sent_all_at.unwrap_or(started.elapsed()).as_secs_f64();
    let rss_full = args.broker_pid.and_then(procfs::rss_bytes);
    let fill_cpu = procfs::cpu_between(cpu_before, args.broker_pid);

    // Drain.
    let cpu_before = args.broker_pid.and_then(procfs::cpu_seconds);
    let drain_started = Instant::now();
    let mut consumer = Conn::open(uri).await.map_err(&io)?;
    consumer.consume(&queue, 0, true).await.map_err(&io)?;
    let mut drained = 0u64;
    let mut last_report = Instant::now();
    while drained < queued {
        let left = deadline_left(args, drain_started)?;
        let f = tokio::time::timeout(left, consumer.reader.frame())
            .await
            .map_err(|_| format!("drain: {drained} of {queued} after --phase-timeout"))?
            .map_err(&io)?;
        if f.kind == crate::protocol::frame::FRAME_METHOD
            && crate::protocol::fast::method_ids(&f.payload) == Some((60, 60))
        {
            drained += 1;
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            progress(args, started, format_args!("drained {drained:>9} of {queued}"));
        }
    }
    let drain_s = drain_started.elapsed().as_secs_f64();
    let drain_cpu = procfs::cpu_between(cpu_before, args.broker_pid);
    sampling.store(false, Ordering::Relaxed);
    if let Some(s) = sampler {
        let _ = s.await;
    }
    consumer.close().await;
    if args.queue.is_none() {
        let _ = setup.delete(&queue).await;
    }
    setup.close().await;

    let mut result = json!({
        "messages": messages,
        "size": args.size(),
        "persistent": args.persistent,
        "fill_s": round(fill_s, 3),
        "publish_per_s": (messages as f64 / fill_s).round(),
        "client_send_per_s": (messages as f64 / send_s.max(1e-9)).round(),
        "drain_s": round(drain_s, 3),
        "drain_per_s": (queued as f64 / drain_s).round(),
    });
    if let (Some(before), Some(full)) = (rss_before, rss_full) {
        let peak = peak.load(Ordering::Relaxed).max(full);
        result["rss_before_kib"] = json!(before / 1024);
        result["rss_full_kib"] = json!(full / 1024);
        result["rss_peak_kib"] = json!(peak / 1024);
        // What each queued message costs in the broker's memory, measured
        // when the queue holds them all.
        result["rss_bytes_per_msg"] = json!(round(full.saturating_sub(before) as f64 / messages as f64, 1));
    }
    if let Some(cpu) = fill_cpu {
        result["fill_cpu_us_per_msg"] = json!(round(cpu * 1e6 / messages as f64, 2));
    }
    if let Some(cpu) = drain_cpu {
        result["drain_cpu_us_per_msg"] = json!(round(cpu * 1e6 / queued.max(1) as f64, 2));
    }
    Ok(result)
}

fn finished(r: Result<std::io::Result<Conn>, tokio::task::JoinError>) -> Result<Conn, String> {
    match r {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("publisher: {e}")),
        Err(e) => Err(format!("publisher task: {e}")),
    }
}

fn deadline_left(args: &PerfArgs, since: Instant) -> Result<Duration, String> {
    Duration::from_secs(args.phase_timeout.max(1))
        .checked_sub(since.elapsed())
        .ok_or_else(|| "drain: --phase-timeout passed".to_string())
}

/// Writes `messages` publishes in batches of 64, as fast as TCP takes them;
/// hands the connection back, to be closed once they are all queued.
async fn fill(
    mut conn: Conn,
    args: PerfArgs,
    queue: String,
    messages: u64,
    sent: Arc<AtomicU64>,
) -> std::io::Result<Conn> {
    let frame_max = conn.frame_max;
    let body = vec![0u8; args.size()];
    let mut out = bytes::BytesMut::with_capacity(64 * 1024);
    let mut done = 0u64;
    while done < messages {
        let batch = (messages - done).min(64);
        out.clear();
        for _ in 0..batch {
            client::encode_publish(&mut out, "", &queue, args.persistent, &body, frame_max);
        }
        conn.wr.write_all(&out).await?;
        done += batch;
        sent.store(done, Ordering::Relaxed);
    }
    conn.wr.flush().await?;
    Ok(conn)
}
