//! Resource alarms on the real binary: a memory watermark and a disk free
//! limit set (by SIGHUP) just above what the broker uses now; a publisher
//! fills the broker until it gets `connection.blocked` with RabbitMQ's
//! reason and is no longer read, the health check, /api/nodes and the
//! metrics report the alarm, a consumer on another connection drains the
//! queue, and the publisher gets `connection.unblocked` and is read again
//! (every message it wrote arrives).

// The alarm tests read machine-wide quantities (free space on the data
// disk, resident memory), so they run in their own test binary: cargo runs
// test binaries one after another, so no other test writes beside them.
// Within this binary they take turns (`SERIAL`): the memory test's broker
// removing its files when it stops frees space on the disk whose free space
// the disk test's alarm watches, and cleared that alarm mid-test.
#[path = "integration/common/mod.rs"]
mod common;

use amq_protocol::protocol::{AMQPClass, connection};
use common::{Child, In, Raw, http, m};
use lapin::types::FieldTable;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::protocol::frame;

const GUEST: Option<(&str, &str)> = Some(("guest", "guest"));

/// Held by each test for its whole run (see the note at the top).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn node(child: &Child) -> serde_json::Value {
    let r = http(child.mgmt, "GET", "/api/nodes", GUEST, None).await;
    assert_eq!(r.status, 200);
    r.json()[0].clone()
}

/// Polls `f` every 20 ms until it holds (deadline `secs`).
async fn until<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await; // poll until the deadline
    }
}

/// Rewrites the config file and sends SIGHUP; waits until `/api/nodes`
/// shows `key` = `value`.
async fn reload(child: &Child, file: &std::path::Path, toml: &str, key: &str, value: u64) {
    std::fs::write(file, toml).unwrap();
    child.signal("HUP");
    until(&format!("{key} = {value} after SIGHUP"), 20, || async { node(child).await[key] == value }).await;
}

/// Runs the scenario: `arm` sets the limit, then a publisher sends
/// `body_size` messages (persistent ones to a durable queue if `durable`)
/// until it is blocked with `reason`; a consumer drains; it is unblocked.
async fn blocked_until_drained(
    child: &Child,
    durable: bool,
    body_size: usize,
    reason: &str,
    resource: &str,
    metric: &str,
    arm: impl std::future::Future<Output = ()>,
) {
    let queue = "alarm-q";
    let mut consumer = Raw::open(child.amqp).await;
    consumer.call(1, m::qdecl(queue, false, durable, false, false, FieldTable::default())).await;
    arm.await;

    let r = Raw::open_caps(child.amqp, &["connection.blocked", "publisher_confirms"]).await;
    let (mut rd, mut wr) = r.sock.into_split();
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    // The publisher writes until told to stop; its writes stall while the
    // broker does not read it.
    let writer = {
        let (stop, written) = (stop.clone(), written.clone());
        tokio::spawn(async move {
            let props: &[u8] = if durable { &[0x10, 0x00, 2] } else { &[0, 0] }; // delivery-mode 2
            let mut out = bytes::BytesMut::new();
            let body = vec![b'x'; body_size];
            while !stop.load(Ordering::Relaxed) {
                out.clear();
                common::encode_publish(&mut out, 1, "", queue, props, &body);
                if wr.write_all(&out).await.is_err() {
                    break;
                }
                written.fetch_add(1, Ordering::Relaxed);
            }
            wr
        })
    };
    // Frames from the broker on the publisher's connection.
    let (tx, mut frames) = tokio::sync::mpsc::unbounded_channel::<AMQPClass>();
    tokio::spawn(async move {
        let mut buf = bytes::BytesMut::new();
        loop {
            while let Ok(Some(f)) = frame::decode(&mut buf, 0) {
                if f.kind == frame::FRAME_METHOD
                    && let Ok((_, m)) = amq_protocol::protocol::parse_class(&f.payload[..])
                {
                    let _ = tx.send(m);
                }
            }
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    let first = tokio::time::timeout(Duration::from_secs(120), frames.recv()).await;
    match first {
        Ok(Some(AMQPClass::Connection(connection::AMQPMethod::Blocked(b)))) => {
            assert_eq!(b.reason.as_str(), reason)
        }
        other => panic!("expected connection.blocked, got {other:?}"),
    }

    // The alarm is visible: health check 503 naming it, node, metrics,
    // the connection's state.
    let h = http(child.mgmt, "GET", "/api/health/checks/local-alarms", GUEST, None).await;
    assert_eq!(h.status, 503);
    let j = h.json();
    assert_eq!(j["status"], "failed");
    assert_eq!(j["alarms"][0]["resource"], resource, "{j}");
    let n = node(child).await;
    let flag = if resource == "memory" { "mem_alarm" } else { "disk_free_alarm" };
    assert_eq!(n[flag], true, "{n}");
    let metrics = http(child.metrics, "GET", "/metrics", None, None).await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    assert!(text.contains(&format!("\nrabbitmq_{metric} 1\n")), "{metric} not 1");
    let conns = http(child.mgmt, "GET", "/api/connections", GUEST, None).await.json();
    assert!(conns.as_array().unwrap().iter().any(|c| c["state"] == "blocked"), "{conns}");

    // Not read while blocked: the queue stops growing although the
    // publisher keeps writing (its socket buffers fill). A negative check
    // needs a fixed wait.
    let (depth, _) = consumer.counts(1, queue).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (later, _) = consumer.counts(1, queue).await;
    assert_eq!(depth, later, "a blocked publisher's messages still arrive");
    assert!(depth > 0);

    // Consumers are not blocked: drain (manual acks) until unblocked.
    consumer.method(1, m::qos(200, false)).await;
    consumer.call(1, m::consume(queue, "drain", false, false, FieldTable::default())).await;
    let mut consumed = 0u64;
    let unblocked = loop {
        if let Ok(m) = frames.try_recv() {
            break m;
        }
        if let Some(msg) = consumer.try_next_message(Duration::from_millis(200)).await {
            consumed += 1;
            consumer.method(1, m::ack(msg.delivery_tag(), false)).await;
        } else {
            // Drained: wait for the alarm to clear.
            match tokio::time::timeout(Duration::from_secs(60), frames.recv()).await {
                Ok(Some(m)) => break m,
                other => panic!("no connection.unblocked after draining {consumed}: {other:?}"),
            }
        }
    };
    assert!(
        matches!(unblocked, AMQPClass::Connection(connection::AMQPMethod::Unblocked(_))),
        "expected connection.unblocked, got {unblocked:?}"
    );
    assert!(consumed > 0);

    // Read again: the publisher's pending writes go through (so it stops
    // once they do), and everything it wrote arrives. While they land the
    // alarm may flip on again (RabbitMQ's would too); once the consumer has
    // drained them it is off for good and the health check says so.
    stop.store(true, Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !writer.is_finished() {
        assert!(tokio::time::Instant::now() < deadline, "the publisher's pending writes did not go through");
        if let Some(msg) = consumer.try_next_message(Duration::from_millis(100)).await {
            consumed += 1;
            consumer.method(1, m::ack(msg.delivery_tag(), false)).await;
        }
    }
    let _wr = writer.await.unwrap();
    let total = written.load(Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while consumed < total {
        assert!(tokio::time::Instant::now() < deadline, "{consumed} of {total} arrived");
        if let Some(msg) = consumer.try_next_message(Duration::from_millis(200)).await {
            consumed += 1;
            consumer.method(1, m::ack(msg.delivery_tag(), false)).await;
        }
    }
    assert_eq!(consumed, total);
    assert!(matches!(consumer.try_recv(Duration::from_millis(100)).await, None | Some(In::Heartbeat)));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let h = http(child.mgmt, "GET", "/api/health/checks/local-alarms", GUEST, None).await;
        if h.status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the alarm did not clear after the drain: {}",
            String::from_utf8_lossy(&h.body)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_alarm_blocks_publishers_until_consumers_drain() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("warren.toml");
    // Messages stay in memory (a budget far above the test's volume).
    let base = "[memory]\nqueue_budget = 4294967296\n[alarms]\ncheck_interval_ms = 50\n";
    std::fs::write(&file, base).unwrap();
    let child = Child::spawn_with(&dir.path().join("data"), &["--config", file.to_str().unwrap()]);
    let arm = async {
        // 48 MiB above what the broker holds now: a fixed figure would
        // depend on the build and the machine.
        let limit = child.rss() + (48 << 20);
        let toml = format!("{base}memory_high_watermark_bytes = {limit}\n");
        reload(&child, &file, &toml, "mem_limit", limit).await;
        assert_eq!(node(&child).await["mem_alarm"], false);
    };
    blocked_until_drained(
        &child,
        false,
        64 * 1024,
        "low on memory",
        "memory",
        "alarms_memory_used_watermark",
        arm,
    )
    .await;
    assert!(child.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_alarm_blocks_publishers_until_consumers_drain() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("warren.toml");
    let base = "[storage]\nsegment_size = 4194304\n[alarms]\ncheck_interval_ms = 50\n";
    std::fs::write(&file, base).unwrap();
    let child = Child::spawn_with(&dir.path().join("data"), &["--config", file.to_str().unwrap()]);
    let arm = async {
        // 96 MiB below the free space now: persistent messages written to
        // the log cross it; the log shrinks back to a segment or two once
        // they are acked.
        let free = node(&child).await["disk_free"].as_u64().unwrap();
        let limit = free - (96 << 20);
        let toml = format!("{base}disk_free_limit = {limit}\n");
        reload(&child, &file, &toml, "disk_free_limit", limit).await;
        assert_eq!(node(&child).await["disk_free_alarm"], false);
    };
    blocked_until_drained(
        &child,
        true,
        16 * 1024,
        "low on disk",
        "disk space",
        "alarms_free_disk_space_watermark",
        arm,
    )
    .await;
    assert!(child.terminate().success());
}
