//! The basic class: publish (mandatory, immediate), consume (tags, no-ack,
//! exclusive, priorities), cancel (client and server), get, ack/nack/reject,
//! recover, qos, publisher confirms, transactions, and their error rows.

use crate::common;

use amq_protocol::protocol::{AMQPClass, basic, confirm, tx};
use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use futures_lite::StreamExt;
use std::time::Duration;

const SHORT: Duration = Duration::from_millis(300);

#[tokio::test]
async fn lapin_publish_consume_ack_roundtrip_with_properties() {
    let s = start().await;
    let conn = lapin(&s).await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare("lq".into(), lapin::options::QueueDeclareOptions::default(), FieldTable::default())
        .await
        .unwrap();
    ch.confirm_select(lapin::options::ConfirmSelectOptions::default()).await.unwrap();
    let props = lapin::BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_correlation_id("c-1".into())
        .with_headers(table(&[("n", AMQPValue::LongLongInt(7))]));
    let conf = ch
        .basic_publish(
            "".into(),
            "lq".into(),
            lapin::options::BasicPublishOptions::default(),
            b"hello",
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(conf.is_ack());
    let mut consumer = ch
        .basic_consume(
            "lq".into(),
            "".into(),
            lapin::options::BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert!(consumer.tag().as_str().starts_with("amq.ctag-"));
    let d = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(d.data, b"hello");
    assert_eq!(d.properties.correlation_id().as_ref().map(|c| c.as_str()), Some("c-1"));
    assert_eq!(d.properties.headers().as_ref().unwrap().inner().get("n"), Some(&AMQPValue::LongLongInt(7)));
    assert!(!d.redelivered);
    d.ack(lapin::options::BasicAckOptions::default()).await.unwrap();
    eventually("ack settles", Duration::from_secs(5), || {
        s.broker().vhost("/").unwrap().queue("lq").unwrap().counts() == (0, 0, 1, 0)
    })
    .await;
}

#[tokio::test]
async fn mandatory_unroutable_is_returned_before_the_confirm() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.call(1, m::confirm_select()).await;
    r.publish(1, "amq.direct", "nowhere", true, &[], b"lost").await;
    let ret = r.next_message().await;
    match &ret.method {
        AMQPClass::Basic(basic::AMQPMethod::Return(rt)) => {
            assert_eq!((rt.reply_code, rt.reply_text.as_str()), (312, "NO_ROUTE"));
            assert_eq!((rt.exchange.as_str(), rt.routing_key.as_str()), ("amq.direct", "nowhere"));
        }
        other => panic!("expected basic.return, got {other:?}"),
    }
    assert_eq!(ret.body, b"lost");
    match r.recv().await {
        In::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(a))) => assert_eq!(a.delivery_tag, 1),
        other => panic!("expected confirm ack, got {other:?}"),
    }
    // Not mandatory: dropped silently, still confirmed.
    r.publish(1, "amq.direct", "nowhere", false, &[], b"dropped").await;
    match r.recv().await {
        In::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(a))) => assert_eq!(a.delivery_tag, 2),
        other => panic!("expected confirm ack, got {other:?}"),
    }
}

#[tokio::test]
async fn immediate_is_540_connection_error() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: false,
            immediate: true,
        })),
    )
    .await;
    let (code, text, class, method) = r.expect_connection_close().await;
    assert_eq!((code, text.as_str(), class, method), (540, "NOT_IMPLEMENTED - immediate=true", 60, 40));
}

#[tokio::test]
async fn confirms_are_numbered_and_coalesced() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "cq").await;
    r.call(1, m::confirm_select()).await;
    for _ in 0..100 {
        r.send_to(1, "cq", b"x").await;
    }
    let mut confirmed = 0u64;
    while confirmed < 100 {
        match r.recv().await {
            In::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(a))) => {
                assert!(a.delivery_tag > confirmed, "{a:?} after {confirmed}");
                // RabbitMQ's shape: `multiple` exactly when the ack covers
                // more than one message (`rabbit_channel:send_confirms`).
                assert_eq!(a.multiple, a.delivery_tag > confirmed + 1, "{a:?} after {confirmed}");
                confirmed = a.delivery_tag;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(confirmed, 100);
}

#[tokio::test]
async fn consume_tags_reuse_and_exclusive() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "cx").await;
    let ok = r.call(1, m::consume("cx", "mytag", false, false, FieldTable::default())).await;
    assert!(
        matches!(ok, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(c)) if c.consumer_tag.as_str() == "mytag")
    );
    r.method(1, m::consume("cx", "mytag", false, false, FieldTable::default())).await;
    let (code, text, class, method) = r.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (530, "NOT_ALLOWED - attempt to reuse consumer tag 'mytag'", 60, 20)
    );

    let mut a = Raw::open(s.addr()).await;
    a.declare(1, "ex").await;
    a.call(1, m::consume("ex", "only", false, true, FieldTable::default())).await;
    let mut b = Raw::open(s.addr()).await;
    b.method(1, m::consume("ex", "second", false, false, FieldTable::default())).await;
    let (code, text, _, _) = b.expect_channel_close(1).await;
    assert_eq!((code, text.as_str()), (403, "ACCESS_REFUSED - queue 'ex' in vhost '/' in exclusive use"));
    // Exclusive consume on a queue that already has a consumer.
    b.open_channel(1).await;
    b.declare(1, "ex2").await;
    b.call(1, m::consume("ex2", "plain", false, false, FieldTable::default())).await;
    a.method(1, m::consume("ex2", "excl", false, true, FieldTable::default())).await;
    assert_eq!(a.expect_channel_close(1).await.0, 403);
}

#[tokio::test]
async fn consume_on_missing_queue_is_404() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.method(1, m::consume("ghost", "", false, false, FieldTable::default())).await;
    let (code, text, class, method) = r.expect_channel_close(1).await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (404, "NOT_FOUND - no queue 'ghost' in vhost '/'", 60, 20)
    );
}

#[tokio::test]
async fn round_robin_and_consumer_priorities() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "rr").await;
    r.call(1, m::consume("rr", "a", true, false, FieldTable::default())).await;
    r.call(1, m::consume("rr", "b", true, false, FieldTable::default())).await;
    for i in 0..4 {
        r.send_to(1, "rr", format!("{i}").as_bytes()).await;
    }
    let mut tags = Vec::new();
    for _ in 0..4 {
        tags.push(r.next_message().await.consumer_tag());
    }
    assert_eq!(tags.iter().filter(|t| *t == "a").count(), 2, "{tags:?}");
    assert_eq!(tags.iter().filter(|t| *t == "b").count(), 2, "{tags:?}");

    // x-priority: the high-priority consumer gets everything while it has credit.
    r.open_channel(2).await;
    r.declare(2, "prio").await;
    r.call(2, m::qos(1, false)).await;
    r.call(2, m::consume("prio", "low", false, false, table(&[("x-priority", AMQPValue::LongInt(1))]))).await;
    r.call(2, m::consume("prio", "high", false, false, table(&[("x-priority", AMQPValue::LongInt(10))])))
        .await;
    r.send_to(2, "prio", b"1").await;
    let first = r.next_message().await;
    assert_eq!(first.consumer_tag(), "high");
    // high is now full (prefetch 1): the next goes to low.
    r.send_to(2, "prio", b"2").await;
    assert_eq!(r.next_message().await.consumer_tag(), "low");
}

#[tokio::test]
async fn cancel_and_server_sent_cancel_on_queue_delete() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "cc").await;
    r.call(1, m::consume("cc", "t", true, false, FieldTable::default())).await;
    let ok = r.call(1, m::cancel("t")).await;
    assert!(matches!(ok, AMQPClass::Basic(basic::AMQPMethod::CancelOk(c)) if c.consumer_tag.as_str() == "t"));
    r.send_to(1, "cc", b"after-cancel").await;
    assert!(r.try_next_message(SHORT).await.is_none());
    r.call(1, m::consume("cc", "t2", true, false, FieldTable::default())).await;
    assert_eq!(r.next_message().await.body, b"after-cancel");

    let mut other = Raw::open(s.addr()).await;
    other.call(1, m::qdelete("cc", false, false)).await;
    match r.recv().await {
        In::Method(1, AMQPClass::Basic(basic::AMQPMethod::Cancel(c))) => {
            assert_eq!(c.consumer_tag.as_str(), "t2")
        }
        other => panic!("expected basic.cancel, got {other:?}"),
    }
}

#[tokio::test]
async fn get_get_empty_and_message_count() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "g").await;
    r.send_to(1, "g", b"1").await;
    r.send_to(1, "g", b"2").await;
    r.method(1, m::get("g", false)).await;
    let msg = r.next_message().await;
    match &msg.method {
        AMQPClass::Basic(basic::AMQPMethod::GetOk(g)) => {
            assert_eq!((g.message_count, g.delivery_tag, g.redelivered), (1, 1, false));
            assert_eq!((g.exchange.as_str(), g.routing_key.as_str()), ("", "g"));
        }
        other => panic!("{other:?}"),
    }
    r.method(1, m::get("g", true)).await;
    assert_eq!(r.next_message().await.body, b"2");
    r.method(1, m::get("g", true)).await;
    assert!(matches!(r.next_message().await.method, AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_))));
}

#[tokio::test]
async fn nack_requeue_keeps_position_and_sets_redelivered() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "order").await;
    for i in 1..=4 {
        r.send_to(1, "order", format!("m{i}").as_bytes()).await;
    }
    let mut tags = Vec::new();
    for _ in 0..2 {
        r.method(1, m::get("order", false)).await;
        tags.push(r.next_message().await.delivery_tag());
    }
    // Requeue both (multiple): they go back to the head in their order.
    r.method(1, m::nack(tags[1], true, true)).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        r.method(1, m::get("order", true)).await;
        let msg = r.next_message().await;
        seen.push((String::from_utf8(msg.body.clone()).unwrap(), msg.redelivered()));
    }
    assert_eq!(
        seen,
        vec![("m1".into(), true), ("m2".into(), true), ("m3".into(), false), ("m4".into(), false)]
    );
}

#[tokio::test]
async fn ack_multiple_reject_and_unknown_tag() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "acks").await;
    for i in 0..5 {
        r.send_to(1, "acks", format!("{i}").as_bytes()).await;
    }
    r.call(1, m::consume("acks", "c", false, false, FieldTable::default())).await;
    let mut tags = Vec::new();
    for _ in 0..5 {
        tags.push(r.next_message().await.delivery_tag());
    }
    assert_eq!(tags, vec![1, 2, 3, 4, 5]);
    r.method(1, m::ack(3, true)).await; // 1..=3
    r.method(1, m::reject(4, false)).await; // dropped
    r.method(1, m::reject(5, true)).await; // requeued → redelivered to the consumer
    let again = r.next_message().await;
    assert!(again.redelivered());
    assert_eq!(again.delivery_tag(), 6);
    r.method(1, m::ack(6, false)).await;
    eventually("all settled", Duration::from_secs(5), || {
        s.broker().vhost("/").unwrap().queue("acks").unwrap().counts().0 == 0
            && s.broker().vhost("/").unwrap().queue("acks").unwrap().counts().1 == 0
    })
    .await;
    r.method(1, m::ack(2, false)).await; // already acked
    let (code, text, class, method) = r.expect_channel_close(1).await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (406, "PRECONDITION_FAILED - unknown delivery tag 2", 60, 80)
    );
    r.open_channel(1).await;
    r.method(1, m::nack(99, false, true)).await;
    let (code, _, class, method) = r.expect_channel_close(1).await;
    assert_eq!((code, class, method), (406, 60, 120));
}

/// `multiple` does not make an unknown tag acceptable: RabbitMQ's
/// `collect_acks` fails when the tag itself is not outstanding, and the
/// channel's close requeues everything still unacked, the deliveries below
/// the tag included.
#[tokio::test]
async fn ack_multiple_past_the_last_delivery_is_an_unknown_tag() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "accm").await;
    for i in 0..3 {
        r.send_to(1, "accm", format!("{i}").as_bytes()).await;
    }
    r.call(1, m::qos(2, false)).await;
    r.call(1, m::consume("accm", "c", false, false, FieldTable::default())).await;
    let tags = [r.next_message().await.delivery_tag(), r.next_message().await.delivery_tag()];
    assert_eq!(tags, [1, 2]);
    r.method(1, m::ack(5, true)).await;
    let (code, text, class, method) = r.expect_channel_close(1).await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (406, "PRECONDITION_FAILED - unknown delivery tag 5", 60, 80)
    );
    r.open_channel(1).await;
    assert_eq!(r.counts(1, "accm").await.0, 3, "nothing acked: all three ready again");
    // An already-acked tag with `multiple`, and nack's method id.
    r.call(1, m::consume("accm", "d", false, false, FieldTable::default())).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(r.next_message().await.delivery_tag());
    }
    r.method(1, m::ack(got[1], true)).await;
    r.method(1, m::nack(got[1], true, true)).await;
    let (code, text, class, method) = r.expect_channel_close(1).await;
    assert_eq!(
        (code, text, class, method),
        (406, format!("PRECONDITION_FAILED - unknown delivery tag {}", got[1]), 60, 120)
    );
    r.open_channel(1).await;
    assert_eq!(r.counts(1, "accm").await.0, 1, "two acked, the third requeued");
}

#[tokio::test]
async fn unacked_are_requeued_on_channel_close_and_recover() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "rq").await;
    r.send_to(1, "rq", b"x").await;
    r.call(1, m::consume("rq", "c", false, false, FieldTable::default())).await;
    let first = r.next_message().await;
    assert!(!first.redelivered());
    // basic.recover(requeue=true): redelivered to the same channel.
    let ok = r.call(1, m::recover(true)).await;
    assert!(matches!(ok, AMQPClass::Basic(basic::AMQPMethod::RecoverOk(_))));
    let again = r.next_message().await;
    assert!(again.redelivered());
    // Closing the channel requeues it for others.
    r.call(1, m::ch_close()).await;
    let mut other = Raw::open(s.addr()).await;
    other.method(1, m::get("rq", true)).await;
    let got = other.next_message().await;
    assert!(got.redelivered());
    assert_eq!(got.body, b"x");
    // recover(requeue=false) is not implemented (connection error 540).
    other.method(1, m::recover(false)).await;
    let (code, text, _, _) = other.expect_connection_close().await;
    assert_eq!((code, text.as_str()), (540, "NOT_IMPLEMENTED - requeue=false"));
}

#[tokio::test]
async fn qos_per_consumer_and_global() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "qa").await;
    r.declare(1, "qb").await;
    for i in 0..5 {
        r.send_to(1, "qa", format!("a{i}").as_bytes()).await;
        r.send_to(1, "qb", format!("b{i}").as_bytes()).await;
    }
    // Per-consumer limit 2 (applies to consumers created after).
    r.call(1, m::qos(2, false)).await;
    r.call(1, m::consume("qa", "ca", false, false, FieldTable::default())).await;
    r.call(1, m::consume("qb", "cb", false, false, FieldTable::default())).await;
    let mut got = Vec::new();
    while let Some(msg) = r.try_next_message(SHORT).await {
        got.push(msg);
    }
    assert_eq!(got.len(), 4, "2 per consumer");
    // Global limit 3 on the channel: after acking everything, at most 3 in flight.
    r.call(1, m::qos(3, true)).await;
    r.method(1, m::ack(0, true)).await;
    let mut more = Vec::new();
    while let Some(msg) = r.try_next_message(SHORT).await {
        more.push(msg);
    }
    assert_eq!(more.len(), 3, "channel-wide limit");
    // prefetch_size != 0 is a connection error 540.
    let payload = [0u8, 60, 0, 10, 0, 0, 0, 5, 0, 0, 0];
    r.send(&raw_frame(1, 1, &payload, 0xCE)).await;
    let (code, text, class, method) = r.expect_connection_close().await;
    assert_eq!((code, text.as_str(), class, method), (540, "NOT_IMPLEMENTED - prefetch_size!=0 (5)", 60, 10));
}

#[tokio::test]
async fn no_ack_consumers_ignore_prefetch() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "na").await;
    r.call(1, m::qos(1, false)).await;
    r.call(1, m::consume("na", "c", true, false, FieldTable::default())).await;
    for _ in 0..10 {
        r.send_to(1, "na", b"x").await;
    }
    for _ in 0..10 {
        r.next_message().await;
    }
}

#[tokio::test]
async fn transactions_commit_rollback_and_mode_errors() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "txq").await;
    assert!(matches!(r.call(1, m::tx_select()).await, AMQPClass::Tx(tx::AMQPMethod::SelectOk(_))));
    r.send_to(1, "txq", b"rolled-back").await;
    assert!(matches!(r.call(1, m::tx_rollback()).await, AMQPClass::Tx(tx::AMQPMethod::RollbackOk(_))));
    assert_eq!(r.counts(1, "txq").await.0, 0);
    r.send_to(1, "txq", b"committed").await;
    assert_eq!(r.counts(1, "txq").await.0, 0, "not visible before commit");
    assert!(matches!(r.call(1, m::tx_commit()).await, AMQPClass::Tx(tx::AMQPMethod::CommitOk(_))));
    assert_eq!(r.counts(1, "txq").await.0, 1);
    // Acks inside a transaction apply at commit.
    r.method(1, m::get("txq", false)).await;
    let tag = r.next_message().await.delivery_tag();
    r.method(1, m::ack(tag, false)).await;
    r.call(1, m::tx_rollback()).await;
    let q = s.broker().vhost("/").unwrap().queue("txq").unwrap();
    assert_eq!(q.counts().1, 1, "ack rolled back: still unacked");
    r.method(1, m::ack(tag, false)).await;
    r.call(1, m::tx_commit()).await;
    eventually("ack committed", Duration::from_secs(5), || q.counts().1 == 0).await;

    r.method(1, m::confirm_select()).await;
    let (code, text, _, _) = r.expect_channel_close(1).await;
    assert_eq!((code, text.as_str()), (406, "PRECONDITION_FAILED - cannot switch from tx to confirm mode"));
    r.open_channel(1).await;
    assert!(matches!(
        r.call(1, m::confirm_select()).await,
        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))
    ));
    r.method(1, m::tx_select()).await;
    let (code, text, _, _) = r.expect_channel_close(1).await;
    assert_eq!((code, text.as_str()), (406, "PRECONDITION_FAILED - cannot switch from confirm to tx mode"));
    r.open_channel(1).await;
    r.method(1, m::tx_commit()).await;
    let (code, text, class, method) = r.expect_channel_close(1).await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (406, "PRECONDITION_FAILED - channel is not transactional", 90, 20)
    );
}

#[tokio::test]
async fn publish_property_checks() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "pp").await;
    let p = props(amq_protocol::protocol::basic::AMQPProperties::default().with_user_id("mallory".into()));
    r.publish(1, "", "pp", false, &p, b"x").await;
    let (code, text, class, method) = r.expect_channel_close(1).await;
    assert_eq!((code, class, method), (406, 60, 40));
    assert_eq!(
        text,
        "PRECONDITION_FAILED - user_id property set to 'mallory' but authenticated user was 'guest'"
    );
    r.open_channel(1).await;
    let p = props(amq_protocol::protocol::basic::AMQPProperties::default().with_user_id("guest".into()));
    r.publish(1, "", "pp", false, &p, b"ok").await;
    assert_eq!(r.counts(1, "pp").await.0, 1);
    let p = props(amq_protocol::protocol::basic::AMQPProperties::default().with_expiration("abc".into()));
    r.publish(1, "", "pp", false, &p, b"x").await;
    let (code, text, _, _) = r.expect_channel_close(1).await;
    assert_eq!((code, text.as_str()), (406, "PRECONDITION_FAILED - invalid expiration 'abc': no_integer"));
    r.open_channel(1).await;
    let p = props(amq_protocol::protocol::basic::AMQPProperties::default().with_expiration("-1".into()));
    r.publish(1, "", "pp", false, &p, b"x").await;
    let (_, text, _, _) = r.expect_channel_close(1).await;
    assert_eq!(text, "PRECONDITION_FAILED - invalid expiration '-1': {value_negative,-1}");
    r.open_channel(1).await;
    let p = props(
        amq_protocol::protocol::basic::AMQPProperties::default()
            .with_headers(table(&[("CC", AMQPValue::LongString("x".into()))])),
    );
    r.publish(1, "", "pp", false, &p, b"x").await;
    let (code, text, _, _) = r.expect_channel_close(1).await;
    assert_eq!(code, 406);
    assert!(text.contains("unacceptable_type_in_header"), "{text}");
}

#[tokio::test]
async fn cc_header_adds_routing_keys() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "k1").await;
    r.declare(1, "k2").await;
    let cc = AMQPValue::FieldArray(vec![AMQPValue::LongString("k2".into())].into());
    let p =
        props(amq_protocol::protocol::basic::AMQPProperties::default().with_headers(table(&[("CC", cc)])));
    r.publish(1, "", "k1", false, &p, b"both").await;
    assert_eq!(r.counts(1, "k1").await.0, 1);
    assert_eq!(r.counts(1, "k2").await.0, 1);
}

#[tokio::test]
async fn large_message_is_split_into_frames_and_reassembled() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "big").await;
    let body: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    r.send_to(1, "big", &body).await;
    r.method(1, m::get("big", true)).await;
    assert_eq!(r.next_message().await.body, body);
}

#[tokio::test]
async fn flow_false_is_540() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.method(1, m::flow(false)).await;
    let (code, text, class, method) = r.expect_connection_close().await;
    assert_eq!((code, text.as_str(), class, method), (540, "NOT_IMPLEMENTED - active=false", 20, 20));
}
