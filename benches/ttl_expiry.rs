//! Benchmark (issue 5): a queue holding 1,000,000 messages with mixed TTLs
//! (1–10 s) expires them as they fall due, wherever they sit, while live
//! messages on another queue keep flowing. Reports the expiry lag (messages
//! still present that should have expired) and the delivery latency of live
//! messages during expiry. Run: `cargo bench --bench ttl_expiry`.

#[path = "../tests/integration/common/mod.rs"]
mod common;

use amq_protocol::protocol::basic::AMQPProperties;
use bytes::BytesMut;
use common::*;
use std::time::{Duration, Instant};

const N: u64 = 1_000_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let s = start().await;
    let mut setup = Raw::open(s.addr()).await;
    setup.declare(1, "mixed").await;
    setup.declare(1, "live").await;
    let q = s.broker().vhost("/").unwrap().queue("mixed").unwrap();

    // Fill: TTLs spread over 1..10 s, interleaved so short ones sit behind long ones.
    let mut publisher = Raw::open(s.addr()).await;
    let t0 = Instant::now();
    let mut sent = 0u64;
    while sent < N {
        let mut out = BytesMut::with_capacity(64 * 1024);
        for _ in 0..1000 {
            let ttl = 1000 + (sent * 7919 % 9000);
            let p = props(AMQPProperties::default().with_expiration(ttl.to_string().into()));
            encode_publish(&mut out, 1, "", "mixed", &p, b"0123456789abcdef");
            sent += 1;
        }
        publisher.send(&out).await;
    }
    publisher.counts(1, "mixed").await;
    let filled = t0.elapsed();
    eprintln!("filled {N} in {:.2}s", filled.as_secs_f64());

    // Live traffic at 1,000 msg/s while the backlog expires.
    let mut consumer = Raw::open(s.addr()).await;
    consumer.call(1, m::consume("live", "c", true, false, Default::default())).await;
    let mut live = Raw::open(s.addr()).await;
    let mut lat_us: Vec<u64> = Vec::new();
    let mut worst_lag: i64 = 0;
    let start = Instant::now();
    let mut next_sample = Duration::ZERO;
    while q.counts().0 > 0 && start.elapsed() < Duration::from_secs(60) {
        let sent_at = Instant::now();
        live.send_to(1, "live", &start.elapsed().as_nanos().to_le_bytes()).await;
        if consumer.try_next_message(Duration::from_secs(5)).await.is_some() {
            lat_us.push(sent_at.elapsed().as_micros() as u64);
        }
        // Expected remaining: message i was enqueued at about i/N of the fill
        // time and expires ttl_i later; count those not yet due (250 ms grace).
        if start.elapsed() >= next_sample {
            let now_ms = (filled + start.elapsed()).as_millis() as f64 - 250.0;
            let fill_ms = filled.as_millis() as f64;
            let expected = (0..N)
                .filter(|i| *i as f64 / N as f64 * fill_ms + (1000 + (i * 7919 % 9000)) as f64 > now_ms)
                .count() as i64;
            worst_lag = worst_lag.max(q.counts().0 as i64 - expected);
            next_sample += Duration::from_millis(500);
        }
        let spent = sent_at.elapsed();
        if spent < Duration::from_millis(1) {
            tokio::time::sleep(Duration::from_millis(1) - spent).await; // pace at ~1,000 msg/s
        }
    }
    let emptied = start.elapsed() + filled;
    lat_us.sort_unstable();
    let pct = |p: f64| lat_us[((lat_us.len() as f64 * p) as usize).min(lat_us.len() - 1)];
    println!(
        "{{\"bench\":\"ttl_expiry\",\"messages\":{N},\"fill_s\":{:.2},\"empty_after_s\":{:.2},\"last_deadline_s\":{:.2},\"worst_lag_msgs_beyond_250ms\":{},\"live_msgs\":{},\"live_p50_us\":{},\"live_p99_us\":{},\"live_max_us\":{}}}",
        filled.as_secs_f64(),
        emptied.as_secs_f64(),
        filled.as_secs_f64() + 10.0,
        worst_lag.max(0),
        lat_us.len(),
        pct(0.50),
        pct(0.99),
        lat_us[lat_us.len() - 1]
    );
    assert_eq!(q.counts().0, 0, "every message expired");
}
