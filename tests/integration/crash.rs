//! The real binary under confirmed persistent load: `kill -9` five times
//! mid-stream and every confirmed message is still there (duplicates are
//! allowed and counted); a graceful restart loses nothing and duplicates
//! nothing; SIGTERM while publishers are mid-stream exits 0 within the
//! configured time and loses no confirmed message; a drained
//! million-message backlog leaves at most two segments; segments recycled
//! after settling bring none of their old messages back after `kill -9`.

use crate::common;

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::protocol::{AMQPClass, basic};
use amq_protocol::types::FieldTable;
use bytes::BytesMut;
use common::*;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

const QUEUE: &str = "crash-q";

fn persistent() -> Vec<u8> {
    props(AMQPProperties::default().with_delivery_mode(2))
}

/// Publishes `prefix-N` persistent messages with confirms (≤ 256 in flight)
/// until `stop` or the socket dies; returns the confirmed bodies.
async fn publisher(
    addr: std::net::SocketAddr,
    prefix: String,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> HashSet<String> {
    padded_publisher(addr, prefix, 0, stop, count).await
}

/// `publisher` with bodies `prefix-NNNNNNNN` padded with dots to `size`.
async fn padded_publisher(
    addr: std::net::SocketAddr,
    prefix: String,
    size: usize,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> HashSet<String> {
    let mut confirmed = HashSet::new();
    let mut r = Raw::open(addr).await;
    r.call(1, m::confirm_select()).await;
    let p = persistent();
    let mut sent: HashMap<u64, String> = HashMap::new();
    let mut seq = 0u64;
    'outer: while !stop.load(Ordering::Relaxed) {
        let mut out = BytesMut::new();
        while sent.len() < 256 {
            seq += 1;
            let mut body = format!("{prefix}-{seq:08}");
            while body.len() < size {
                body.push('.');
            }
            encode_publish(&mut out, 1, "", QUEUE, &p, body.as_bytes());
            sent.insert(seq, body);
        }
        if !r.try_send(&out).await {
            break;
        }
        loop {
            match r.try_recv(Duration::from_millis(200)).await {
                Some(In::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(a)))) => {
                    let tags: Vec<u64> = if a.multiple {
                        sent.keys().copied().filter(|s| *s <= a.delivery_tag).collect()
                    } else {
                        vec![a.delivery_tag]
                    };
                    for s in tags {
                        if let Some(b) = sent.remove(&s) {
                            confirmed.insert(b);
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if sent.len() < 128 {
                        break;
                    }
                }
                Some(In::Method(1, AMQPClass::Basic(basic::AMQPMethod::Nack(n)))) => {
                    panic!("unexpected nack {}", n.delivery_tag)
                }
                Some(_) => {}
                None if r.eof => break 'outer, // broker gone
                None if stop.load(Ordering::Relaxed) => break 'outer,
                None => continue, // slow (the machine is busy): keep waiting
            }
        }
    }
    confirmed
}

/// Declares the durable `QUEUE` and starts three confirming publishers;
/// returns once `at_least` messages are confirmed.
async fn three_publishers_past(
    addr: std::net::SocketAddr,
    prefix: &str,
    at_least: u64,
) -> (Arc<AtomicBool>, Vec<tokio::task::JoinHandle<HashSet<String>>>) {
    {
        let mut r = Raw::open(addr).await;
        r.call(1, m::qdecl(QUEUE, false, true, false, false, FieldTable::default())).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let tasks = (0..3)
        .map(|p| tokio::spawn(publisher(addr, format!("{prefix}-p{p}"), stop.clone(), count.clone())))
        .collect();
    while count.load(Ordering::Relaxed) < at_least {
        tokio::time::sleep(Duration::from_millis(5)).await; // poll
    }
    (stop, tasks)
}

/// Consumes everything in `QUEUE` (acking), returning body → times seen.
async fn drain(addr: std::net::SocketAddr) -> HashMap<String, u32> {
    let mut r = Raw::open(addr).await;
    r.call(1, m::qos(1000, false)).await;
    r.call(1, m::consume(QUEUE, "drain", false, false, FieldTable::default())).await;
    let mut seen: HashMap<String, u32> = HashMap::new();
    while let Some(msg) = r.try_next_message(Duration::from_millis(1500)).await {
        *seen.entry(String::from_utf8(msg.body.clone()).unwrap()).or_default() += 1;
        r.method(1, m::ack(msg.delivery_tag(), false)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_five_times_loses_no_confirmed_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut confirmed_all: HashSet<String> = HashSet::new();
    for round in 0..5 {
        let child = Child::spawn(&data);
        if round == 0 {
            let mut r = Raw::open(child.amqp).await;
            r.call(1, m::qdecl(QUEUE, false, true, false, false, FieldTable::default())).await;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for p in 0..3 {
            tasks.push(tokio::spawn(publisher(
                child.amqp,
                format!("r{round}-p{p}"),
                stop.clone(),
                count.clone(),
            )));
        }
        // Let a few thousand confirms happen, then kill mid-stream.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while count.load(Ordering::Relaxed) < 3000 {
            assert!(tokio::time::Instant::now() < deadline, "publishers made no progress");
            tokio::time::sleep(Duration::from_millis(5)).await; // poll until the deadline
        }
        child.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            confirmed_all.extend(t.await.expect("publisher task"));
        }
    }
    let child = Child::spawn(&data);
    let seen = drain(child.amqp).await;
    let missing: Vec<&String> = confirmed_all.iter().filter(|b| !seen.contains_key(*b)).collect();
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "crash test: {} confirmed over 5 kills, {} received, {} duplicates, {} missing",
        confirmed_all.len(),
        seen.len(),
        duplicates,
        missing.len()
    );
    assert!(confirmed_all.len() >= 15_000);
    assert!(missing.is_empty(), "confirmed but lost: {:?}", &missing[..missing.len().min(10)]);
    assert_eq!(child.terminate().code(), Some(0));
}

/// Spare files in `msgs` that are recycled segments (they start with the
/// tagged segment header; zero-filled spares start with zeros): inodes.
fn recycled_spares(msgs: &std::path::Path) -> HashSet<u64> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let mut out = HashSet::new();
    for e in std::fs::read_dir(msgs).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("spare-") && name.ends_with(".tmp")) {
            continue;
        }
        let mut head = [0u8; 8];
        // A spare may be renamed into place between listing and opening.
        if let Ok(mut f) = std::fs::File::open(e.path())
            && f.read_exact(&mut head).is_ok()
            && head == [0xFF, 0xFF, 0xFF, 0xFF, b'W', b'L', b'0', b'2']
            && let Ok(m) = f.metadata()
        {
            out.insert(m.ino());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycled_segments_bring_back_no_settled_message_after_kill_dash_nine() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let msgs = data.join("messages");
    // 64 KiB segments: a few thousand 1 KiB messages go through many.
    let small = ["--set", "storage.segment_size=65536"];
    let child = Child::spawn_with(&data, &small);
    let mut r = Raw::open(child.amqp).await;
    r.call(1, m::qdecl(QUEUE, false, true, false, false, FieldTable::default())).await;
    // Only a segment that was a spare is a segment long, and only those are
    // recycled. The helper's first spare is written at startup; on a busy
    // machine it may not be ready before the first publish, and then no
    // old segment could ever be recycled. Wait for it (a spare gets its
    // `.tmp` name only once it is ready).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_dir(&msgs)
        .is_ok_and(|d| d.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".tmp")))
    {
        assert!(std::time::Instant::now() < deadline, "no spare segment was prepared");
        tokio::time::sleep(Duration::from_millis(5)).await; // poll until the deadline
    }
    // Old and new messages have records of one size, so the records after
    // a recycled file's new tail start exactly where a new one would: only
    // their tag tells them apart.
    const SIZE: usize = 1000;
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let old = tokio::spawn(padded_publisher(child.amqp, "old-p0".into(), SIZE, stop.clone(), count.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::Relaxed) < 3000 {
        assert!(std::time::Instant::now() < deadline, "old messages not confirmed");
        tokio::time::sleep(Duration::from_millis(5)).await; // poll until the deadline
    }
    stop.store(true, Ordering::Relaxed);
    let old_confirmed = old.await.unwrap();
    // Consume and ack every old message: their segments settle and become
    // spares.
    r.open_channel(2).await;
    r.call(2, m::qos(500, false)).await;
    r.call(2, m::consume(QUEUE, "old", false, false, FieldTable::default())).await;
    let mut consumed = 0;
    while let Some(msg) = r.try_next_message(Duration::from_secs(2)).await {
        assert!(msg.body.starts_with(b"old-"));
        r.method(2, m::ack(msg.delivery_tag(), false)).await;
        consumed += 1;
    }
    assert!(consumed >= old_confirmed.len(), "{consumed} consumed, {} confirmed", old_confirmed.len());
    r.call(2, m::ch_close()).await;
    assert_eq!(r.counts(1, QUEUE).await, (0, 0), "everything acked");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let recycled = loop {
        let found = recycled_spares(&msgs);
        if !found.is_empty() {
            break found;
        }
        if std::time::Instant::now() >= deadline {
            let files: Vec<(String, u64)> = std::fs::read_dir(&msgs)
                .unwrap()
                .flatten()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().map_or(0, |m| m.len())))
                .collect();
            panic!("no settled segment was recycled; files: {files:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // poll until the deadline
    };
    // New messages, ten at a time with confirms, until the segment being
    // written is a recycled file holding some of them; then kill -9, so
    // that the rest of that file is its old life's records.
    r.call(1, m::confirm_select()).await;
    let p = persistent();
    let current_inode = || {
        use std::os::unix::fs::MetadataExt;
        let mut segs: Vec<_> = std::fs::read_dir(&msgs)
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
            .map(|e| e.path())
            .collect();
        segs.sort();
        segs.last().and_then(|s| std::fs::metadata(s).ok()).map(|m| m.ino())
    };
    let mut confirmed: HashSet<String> = HashSet::new();
    let mut seq = 0u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut out = BytesMut::new();
        let mut batch = Vec::new();
        for _ in 0..10 {
            seq += 1;
            let mut body = format!("new-p0-{seq:08}");
            while body.len() < SIZE {
                body.push('.');
            }
            encode_publish(&mut out, 1, "", QUEUE, &p, body.as_bytes());
            batch.push(body);
        }
        r.send(&out).await;
        let mut acked = 0;
        while acked < seq {
            match r.recv().await {
                In::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(a))) => acked = a.delivery_tag,
                In::Method(1, AMQPClass::Basic(basic::AMQPMethod::Nack(n))) => {
                    panic!("nack {}", n.delivery_tag)
                }
                _ => {}
            }
        }
        confirmed.extend(batch);
        if current_inode().is_some_and(|i| recycled.contains(&i)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no recycled file was written to");
    }
    child.kill9();
    let reused = std::fs::read_dir(&msgs)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .filter(|e| {
            use std::os::unix::fs::MetadataExt;
            e.metadata().is_ok_and(|m| recycled.contains(&m.ino()))
        })
        .count();
    assert!(reused > 0, "no recycled file holds new records");
    let child = Child::spawn_with(&data, &small);
    let seen = drain(child.amqp).await;
    let old: Vec<&String> = seen.keys().filter(|b| b.starts_with("old-")).collect();
    let missing: Vec<&String> = confirmed.iter().filter(|b| !seen.contains_key(*b)).collect();
    eprintln!(
        "recycling: {} recycled files reused, {} confirmed, {} received, {} old, {} missing",
        reused,
        confirmed.len(),
        seen.len(),
        old.len(),
        missing.len()
    );
    assert!(old.is_empty(), "settled messages came back from recycled files: {:?}", &old[..old.len().min(5)]);
    assert!(missing.is_empty(), "confirmed but lost: {:?}", &missing[..missing.len().min(5)]);
    assert_eq!(child.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_confirmed_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let child = Child::spawn_with(&data, &["--set", "lifecycle.shutdown_timeout_ms=5000"]);
    let (stop, tasks) = three_publishers_past(child.amqp, "t", 3000).await;
    // SIGTERM with the publishers still sending: they are closed with 320
    // and see their sockets end; the broker syncs and exits 0.
    let started = std::time::Instant::now();
    assert_eq!(child.terminate().code(), Some(0), "SIGTERM under load exits 0");
    assert!(started.elapsed() < Duration::from_secs(15), "exit took {:?}", started.elapsed());
    let mut confirmed: HashSet<String> = HashSet::new();
    for t in tasks {
        confirmed.extend(t.await.unwrap());
    }
    assert!(!stop.load(Ordering::Relaxed), "the publishers ended because the broker closed them");
    let child = Child::spawn(&data);
    let seen = drain(child.amqp).await;
    let missing: Vec<&String> = confirmed.iter().filter(|b| !seen.contains_key(*b)).collect();
    eprintln!(
        "SIGTERM under load: {} confirmed, {} received, {} missing",
        confirmed.len(),
        seen.len(),
        missing.len()
    );
    assert!(missing.is_empty(), "confirmed before SIGTERM, lost: {:?}", &missing[..missing.len().min(5)]);
    child.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let child = Child::spawn(&data);
    let (stop, tasks) = three_publishers_past(child.amqp, "g", 3000).await;
    stop.store(true, Ordering::Relaxed);
    let mut confirmed: HashSet<String> = HashSet::new();
    for t in tasks {
        confirmed.extend(t.await.unwrap());
    }
    // Consume and ack part of it before the restart.
    let mut consumed: HashSet<String> = HashSet::new();
    {
        let mut r = Raw::open(child.amqp).await;
        for _ in 0..1000 {
            r.method(1, m::get(QUEUE, false)).await;
            let msg = r.next_message().await;
            r.method(1, m::ack(msg.delivery_tag(), false)).await;
            consumed.insert(String::from_utf8(msg.body).unwrap());
        }
        r.counts(1, QUEUE).await; // a round trip: the acks above were processed
    }
    assert_eq!(child.terminate().code(), Some(0), "SIGTERM exits 0");
    let child = Child::spawn(&data);
    let seen = drain(child.amqp).await;
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    assert_eq!(duplicates, 0);
    for b in &consumed {
        assert!(!seen.contains_key(b), "acked before the restart but came back: {b}");
    }
    for b in confirmed.difference(&consumed) {
        assert!(seen.contains_key(b), "confirmed, never consumed, lost: {b}");
    }
    child.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_million_message_backlog_leaves_at_most_two_segments() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let child = Child::spawn(&data);
    let total: u64 = 1_000_000;
    let mut publisher = Raw::open(child.amqp).await;
    publisher.call(1, m::qdecl(QUEUE, false, true, false, false, FieldTable::default())).await;
    let mut consumer = Raw::open(child.amqp).await;
    consumer.call(1, m::qos(2000, false)).await;
    consumer.call(1, m::consume(QUEUE, "c", false, false, FieldTable::default())).await;
    let p = persistent();
    let body = vec![b'x'; 1024];
    let consume = tokio::spawn(async move {
        let mut n = 0u64;
        while n < total {
            let msg =
                consumer.try_next_message(Duration::from_secs(30)).await.expect("deliveries keep coming");
            n += 1;
            if n.is_multiple_of(500) || n == total {
                consumer.method(1, m::ack(msg.delivery_tag(), true)).await;
            }
        }
        consumer.counts(1, QUEUE).await
    });
    let mut sent = 0u64;
    while sent < total {
        let mut out = BytesMut::with_capacity(1100 * 500);
        for _ in 0..500 {
            encode_publish(&mut out, 1, "", QUEUE, &p, &body);
        }
        publisher.send(&out).await;
        sent += 500;
    }
    let (ready, _) =
        tokio::time::timeout(Duration::from_secs(600), consume).await.expect("drained in time").unwrap();
    assert_eq!(ready, 0);
    let msgs = data.join("messages");
    let count = |suffix: &str| {
        std::fs::read_dir(&msgs)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(suffix))
            .count()
    };
    // Segments in use, and spare files (recycled or zero-filled): an idle
    // log keeps one spare.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while count(".seg") > 2 || count(".tmp") > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} segments and {} spares left after draining",
            count(".seg"),
            count(".tmp")
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // poll until the deadline
    }
    eprintln!("after 1,000,000 × 1 KiB drained: {} segments, {} spare on disk", count(".seg"), count(".tmp"));
    assert_eq!(child.terminate().code(), Some(0));
}
