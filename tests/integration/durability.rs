//! Durability across restarts of the in-process broker on one data
//! directory: definitions, persistent messages (order, properties,
//! redelivered flag), what must not survive, and a damaged log tail.

use crate::common;

use amq_protocol::protocol::basic::{AMQPProperties, parse_properties};
use amq_protocol::protocol::{AMQPClass, basic, queue};
use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use std::time::Duration;

fn persistent() -> Vec<u8> {
    props(AMQPProperties::default().with_delivery_mode(2))
}

async fn exists_queue(r: &mut Raw, name: &str) -> bool {
    r.method(1, m::qdecl(name, true, false, false, false, FieldTable::default())).await;
    loop {
        match r.recv().await {
            In::Method(1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))) => return true,
            In::Method(1, AMQPClass::Channel(amq_protocol::protocol::channel::AMQPMethod::Close(c))) => {
                assert_eq!(c.reply_code, 404);
                r.method(1, m::ch_close_ok()).await;
                r.open_channel(1).await;
                return false;
            }
            _ => continue,
        }
    }
}

async fn drain_bodies(r: &mut Raw, q: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    loop {
        r.method(1, m::get(q, true)).await;
        let msg = r.next_message().await;
        if matches!(msg.method, AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_))) {
            return out;
        }
        let redelivered = msg.redelivered();
        out.push((String::from_utf8(msg.body).unwrap(), redelivered));
    }
}

/// Declares the durable queue `q` and publishes `m0`..`m{n-1}` to it as
/// persistent messages, waiting until every one is confirmed.
async fn publish_confirmed(r: &mut Raw, q: &str, n: u64) {
    r.call(1, m::qdecl(q, false, true, false, false, FieldTable::default())).await;
    r.call(1, m::confirm_select()).await;
    for i in 0..n {
        r.publish(1, "", q, false, &persistent(), format!("m{i}").as_bytes()).await;
    }
    let mut confirmed = 0;
    while confirmed < n {
        if let In::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(a))) = r.recv().await {
            confirmed = a.delivery_tag;
        }
    }
}

#[tokio::test]
async fn definitions_survive_restart_and_transient_ones_do_not() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    let args =
        table(&[("x-max-priority", AMQPValue::LongInt(5)), ("x-message-ttl", AMQPValue::LongInt(60000))]);
    r.call(1, m::qdecl("dq", false, true, false, false, args.clone())).await;
    r.call(1, m::qdecl("tq", false, false, false, false, FieldTable::default())).await;
    r.call(1, m::qdecl("adq", false, true, false, true, FieldTable::default())).await;
    r.call(1, m::qdecl("exq", false, true, true, false, FieldTable::default())).await;
    r.call(1, m::xdecl("dx", "topic", false, true, false, false, FieldTable::default())).await;
    r.call(1, m::xdecl("dx2", "fanout", false, true, false, false, FieldTable::default())).await;
    r.call(1, m::x("tx", "direct")).await;
    r.call(1, m::qbind("dq", "dx", "a.#", FieldTable::default())).await;
    r.call(1, m::xbind("dx2", "dx", "b.*")).await;
    r.call(1, m::qbind("dq", "dx2", "", FieldTable::default())).await;
    r.call(1, m::qbind("dq", "tx", "k", FieldTable::default())).await; // transient end: not kept
    r.call(1, m::qbind("tq", "dx", "t", FieldTable::default())).await; // transient queue: not kept
    drop(r);
    let s = s.restart().await;
    let mut r = Raw::open(s.addr()).await;
    assert!(exists_queue(&mut r, "dq").await);
    assert!(!exists_queue(&mut r, "tq").await);
    assert!(!exists_queue(&mut r, "adq").await);
    assert!(!exists_queue(&mut r, "exq").await);
    // Same arguments: an equivalent redeclare is accepted, a different one is not.
    r.call(1, m::qdecl("dq", false, true, false, false, args)).await;
    r.method(1, m::qdecl("dq", false, true, false, false, FieldTable::default())).await;
    assert_eq!(r.expect_channel_close(1).await.0, 406);
    r.open_channel(1).await;
    // Bindings: dx a.# → dq; dx b.* → dx2 → dq.
    r.publish(1, "dx", "a.x.y", false, &[], b"via-topic").await;
    r.publish(1, "dx", "b.z", false, &[], b"via-e2e").await;
    let got: Vec<String> = drain_bodies(&mut r, "dq").await.into_iter().map(|(b, _)| b).collect();
    assert_eq!(got, vec!["via-topic", "via-e2e"]);
    r.method(1, m::xdecl("tx", "direct", true, false, false, false, FieldTable::default())).await;
    assert_eq!(r.expect_channel_close(1).await.0, 404, "transient exchange gone");
    r.open_channel(1).await;
    // Deleted definitions stay deleted.
    r.call(1, m::qdelete("dq", false, false)).await;
    r.call(1, m::xdelete("dx2", false)).await;
    drop(r);
    let s = s.restart().await;
    let mut r = Raw::open(s.addr()).await;
    assert!(!exists_queue(&mut r, "dq").await);
    r.method(1, m::xdecl("dx2", "fanout", true, false, false, false, FieldTable::default())).await;
    assert_eq!(r.expect_channel_close(1).await.0, 404);
    s.stop().await;
}

#[tokio::test]
async fn persistent_messages_come_back_in_order_with_properties() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.call(1, m::qdecl("pq", false, true, false, false, FieldTable::default())).await;
    r.call(1, m::qdecl("nd", false, false, false, false, FieldTable::default())).await;
    r.call(1, m::confirm_select()).await;
    let p = props(
        AMQPProperties::default()
            .with_delivery_mode(2)
            .with_content_type("text/plain".into())
            .with_headers(table(&[("h", AMQPValue::LongString("v".into()))])),
    );
    for i in 0..50 {
        r.publish(1, "", "pq", false, &p, format!("p{i}").as_bytes()).await;
        r.publish(1, "", "pq", false, &[], format!("t{i}").as_bytes()).await; // transient
    }
    r.publish(1, "", "nd", false, &p, b"in-a-transient-queue").await;
    // Wait for every confirm (101 publishes).
    let mut confirmed = 0;
    while confirmed < 101 {
        if let In::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(a))) = r.recv().await {
            confirmed = a.delivery_tag;
        }
    }
    // Deliver (and leave unacked) the first two persistent messages.
    r.method(1, m::get("pq", false)).await;
    assert_eq!(r.next_message().await.body, b"p0");
    r.method(1, m::get("pq", false)).await;
    assert_eq!(r.next_message().await.body, b"t0");
    drop(r);
    let s = s.restart().await;
    let mut r = Raw::open(s.addr()).await;
    assert!(!exists_queue(&mut r, "nd").await);
    r.method(1, m::get("pq", true)).await;
    let first = r.next_message().await;
    assert_eq!(first.body, b"p0");
    assert!(first.redelivered(), "delivered before the restart");
    let (_, props) = parse_properties(&first.props[..]).unwrap();
    assert_eq!(props.content_type().as_ref().map(|c| c.as_str()), Some("text/plain"));
    assert_eq!(props.headers().as_ref().unwrap().inner().get("h"), Some(&AMQPValue::LongString("v".into())));
    let rest = drain_bodies(&mut r, "pq").await;
    let expected: Vec<(String, bool)> = (1..50).map(|i| (format!("p{i}"), false)).collect();
    assert_eq!(rest, expected, "only persistent ones, in order, never delivered");
    s.stop().await;
}

#[tokio::test]
async fn acked_messages_stay_gone_after_graceful_restart() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.call(1, m::qdecl("aq", false, true, false, false, FieldTable::default())).await;
    for i in 0..20 {
        r.publish(1, "", "aq", false, &persistent(), format!("m{i}").as_bytes()).await;
    }
    r.call(1, m::consume("aq", "c", false, false, FieldTable::default())).await;
    let mut last = 0;
    for _ in 0..15 {
        last = r.next_message().await.delivery_tag();
    }
    r.method(1, m::ack(last, true)).await;
    eventually("acks applied", Duration::from_secs(5), || {
        s.broker().vhost("/").unwrap().queue("aq").unwrap().counts().1 == 5
    })
    .await;
    drop(r);
    let s = s.restart().await;
    let mut r = Raw::open(s.addr()).await;
    let got = drain_bodies(&mut r, "aq").await;
    let expected: Vec<(String, bool)> = (15..20).map(|i| (format!("m{i}"), true)).collect();
    assert_eq!(got, expected);
    // Purged and deleted queues' messages do not come back either.
    for i in 0..5 {
        r.publish(1, "", "aq", false, &persistent(), format!("x{i}").as_bytes()).await;
    }
    r.call(1, m::qpurge("aq")).await;
    drop(r);
    let s = s.restart().await;
    let mut r = Raw::open(s.addr()).await;
    assert!(drain_bodies(&mut r, "aq").await.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn torn_log_tail_is_cut_off_and_the_rest_recovered() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    publish_confirmed(&mut r, "tt", 10).await;
    drop(r);
    let dir = s.dir.path().join("messages");
    if let Some(h) = s.handle.as_ref() {
        let _ = h; // keep running until stop below
    }
    let s = {
        let mut s = s;
        if let Some(h) = s.handle.take() {
            h.shutdown().await;
        }
        s
    };
    // Write half a record right after the last one in the newest segment, as
    // a crash mid-write would (a segment may be zero-filled ahead of its
    // records: the log ends at the first all-zero record header). A segment
    // is a 16-byte header, then records of `len | tag | crc | payload`.
    let mut segs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    let last = segs.last().expect("a segment").clone();
    let data = std::fs::read(&last).unwrap();
    assert_eq!(&data[..4], &[0xFF; 4], "a tagged segment");
    let mut end = 16usize;
    while end + 12 <= data.len() && data[end..end + 12] != [0u8; 12] {
        end += 12 + u32::from_be_bytes([data[end], data[end + 1], data[end + 2], data[end + 3]]) as usize;
    }
    assert!(end > 16, "records in the newest segment");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
        f.write_all_at(&[0, 0, 1, 0, 0xde, 0xad], end as u64).unwrap();
    }
    let s = s.restart().await;
    assert_eq!(std::fs::metadata(&last).unwrap().len(), end as u64, "torn tail cut off");
    let mut r = Raw::open(s.addr()).await;
    let got: Vec<String> = drain_bodies(&mut r, "tt").await.into_iter().map(|(b, _)| b).collect();
    assert_eq!(got, (0..10).map(|i| format!("m{i}")).collect::<Vec<_>>());
    s.stop().await;
}

#[tokio::test]
async fn corrupt_definitions_store_stops_startup_without_touching_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let h = warren::start(test_config(dir.path())).await.unwrap();
        h.shutdown().await;
    }
    let db = dir.path().join("definitions").join("db");
    let mut bytes = std::fs::read(&db).unwrap();
    for b in bytes.iter_mut() {
        *b ^= 0x5A;
    }
    std::fs::write(&db, &bytes).unwrap();
    let err = match warren::start(test_config(dir.path())).await {
        Ok(_) => panic!("a corrupt definitions store must stop startup"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("definitions"), "{err}");
    assert_eq!(std::fs::read(&db).unwrap(), bytes, "the store is left as it was");
}

#[tokio::test]
async fn backlog_beyond_the_memory_budget_is_paged_to_the_log() {
    let s = start_with(|c| c.memory.queue_budget = 20_000).await;
    let mut r = Raw::open(s.addr()).await;
    r.call(1, m::qdecl("deep", false, false, false, false, FieldTable::default())).await; // transient queue
    r.call(1, m::qdecl("deepd", false, true, false, false, FieldTable::default())).await; // durable
    let body = |i: usize| format!("{i:0>100}");
    for i in 0..5000 {
        r.publish(1, "", "deep", false, &[], body(i).as_bytes()).await;
        r.publish(1, "", "deepd", false, &persistent(), body(i).as_bytes()).await;
    }
    assert_eq!(r.counts(1, "deep").await.0, 5000);
    assert_eq!(r.counts(1, "deepd").await.0, 5000);
    let store = s.broker().store.messages.clone();
    assert!(store.resident() <= 20_000 + 400, "resident bytes {} over budget", store.resident());
    // Everything comes back, in order, bodies intact.
    r.call(1, m::qos(500, false)).await;
    r.call(1, m::consume("deep", "c", false, false, FieldTable::default())).await;
    for i in 0..5000 {
        let msg = r.next_message().await;
        assert_eq!(msg.body, body(i).as_bytes(), "message {i}");
        r.method(1, m::ack(msg.delivery_tag(), false)).await;
    }
    drop(r);
    // The durable queue's paged persistent messages survive a restart, and
    // recovery keeps them paged beyond the budget.
    let s = s.restart().await;
    let mut r = Raw::open(s.addr()).await;
    assert_eq!(r.counts(1, "deepd").await.0, 5000);
    let store = s.broker().store.messages.clone();
    // (test_config uses the default budget; a restart with a small one pages too)
    let _ = store;
    for i in 0..5000 {
        r.method(1, m::get("deepd", true)).await;
        assert_eq!(r.next_message().await.body, body(i).as_bytes(), "durable message {i}");
    }
    s.stop().await;
}

#[tokio::test]
async fn failed_sync_nacks_the_publishes_it_covered() {
    let s = start_with(|c| c.storage.segment_size = 65536).await;
    let mut r = Raw::open(s.addr()).await;
    r.call(1, m::qdecl("dq", false, true, false, false, FieldTable::default())).await;
    r.call(1, m::confirm_select()).await;
    // The next segments are /dev/full: every write to them fails (ENOSPC).
    let dir = s.dir.path().join("messages");
    for id in 2..40u64 {
        std::os::unix::fs::symlink("/dev/full", dir.join(format!("{id:020}.seg"))).unwrap();
    }
    let body = vec![7u8; 4000];
    let (mut acks, mut nacks) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    for _ in 0..40 {
        r.publish(1, "", "dq", false, &persistent(), &body).await;
    }
    while acks.len() + nacks.len() < 40 {
        match r.recv().await {
            In::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(a))) => {
                let tags: Vec<u64> = if a.multiple {
                    (1..=a.delivery_tag).filter(|t| !acks.contains(t) && !nacks.contains(t)).collect()
                } else {
                    vec![a.delivery_tag]
                };
                acks.extend(tags);
            }
            In::Method(1, AMQPClass::Basic(basic::AMQPMethod::Nack(n))) => {
                assert!(!n.multiple);
                nacks.insert(n.delivery_tag);
            }
            _ => {}
        }
    }
    // The first segment took ~16 messages; everything after it failed.
    assert!(!acks.is_empty(), "publishes written to the good segment are acked");
    assert!(!nacks.is_empty(), "publishes whose sync failed are nacked");
    assert!(acks.iter().max() < nacks.iter().min(), "acks {acks:?} nacks {nacks:?}");
    s.stop().await;
}

/// New segments are zero-filled spares renamed into place (a sync then
/// flushes data only); recovery reads their records up to the zeros.
#[tokio::test]
async fn records_in_zero_filled_spare_segments_come_back_in_order() {
    let s = start_with(|c| c.storage.segment_size = 65536).await;
    let mut r = Raw::open(s.addr()).await;
    r.call(1, m::qdecl("spared", false, true, false, false, FieldTable::default())).await;
    r.call(1, m::confirm_select()).await;
    let dir = s.dir.path().join("messages");
    let preallocated = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .any(|p| std::fs::metadata(&p).unwrap().len() == 65536)
    };
    // Publish in rounds of 60 × 1 KiB (about one segment each) until a
    // segment in use is a full-size spare, then a few more rounds.
    let body = |i: usize| {
        format!("{i:06}").into_bytes().into_iter().chain(std::iter::repeat_n(b'.', 1018)).collect::<Vec<u8>>()
    };
    let mut sent = 0;
    let mut extra = 3;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while extra > 0 {
        for _ in 0..60 {
            r.publish(1, "", "spared", false, &persistent(), &body(sent)).await;
            sent += 1;
        }
        let mut confirmed = 0;
        while confirmed < sent as u64 {
            if let In::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(a))) = r.recv().await {
                confirmed = a.delivery_tag;
            }
        }
        if preallocated() {
            extra -= 1;
        }
        assert!(std::time::Instant::now() < deadline, "no spare segment was used");
    }
    drop(r);
    let s = s.restart().await;
    let mut r = Raw::open(s.addr()).await;
    let got = drain_bodies(&mut r, "spared").await;
    assert_eq!(got.len(), sent);
    for (i, (b, _)) in got.iter().enumerate() {
        assert_eq!(&b[..6], format!("{i:06}"), "message {i} in order");
    }
    s.stop().await;
}

#[tokio::test]
async fn ack_file_without_its_segment_is_removed_at_startup() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    publish_confirmed(&mut r, "oa", 10).await;
    // Four settled: the live segment gets an ack file.
    for i in 0..4 {
        r.method(1, m::get("oa", true)).await;
        let msg = r.next_message().await;
        assert_eq!(msg.body, format!("m{i}").as_bytes());
    }
    drop(r);
    let mut s = s;
    if let Some(h) = s.handle.take() {
        h.shutdown().await;
    }
    let dir = s.dir.path().join("messages");
    let names = |dir: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before = names(&dir);
    let live_acks: Vec<&String> = before.iter().filter(|n| n.ends_with(".ack")).collect();
    assert_eq!(live_acks.len(), 1, "the live segment's ack file: {before:?}");
    // What a crash between a segment's removal and its ack file's leaves:
    // an ack file for a segment that is gone.
    let orphan = dir.join(format!("{:020}.ack", 0));
    std::fs::write(&orphan, 16u32.to_be_bytes()).unwrap();
    let s = s.restart().await;
    assert!(!orphan.exists(), "orphan ack file removed: {:?}", names(&dir));
    assert!(dir.join(live_acks[0]).exists(), "the live segment keeps its ack file");
    let mut r = Raw::open(s.addr()).await;
    let got: Vec<String> = drain_bodies(&mut r, "oa").await.into_iter().map(|(b, _)| b).collect();
    assert_eq!(got, (4..10).map(|i| format!("m{i}")).collect::<Vec<_>>());
    s.stop().await;
}
