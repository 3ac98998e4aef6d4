//! Queue features for task queues: TTL (queue and message, expiring wherever
//! the message sits), dead-lettering with reasons expired / maxlen /
//! delivery_limit, length limits and overflow modes, x-expires, single active
//! consumer, delivery limits. Time-based behaviour is awaited by polling with
//! a deadline, never by a fixed sleep.

use crate::common;

use amq_protocol::protocol::basic::{AMQPProperties, parse_properties};
use amq_protocol::protocol::{AMQPClass, basic};
use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use std::time::Duration;

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(v.into())
}

fn int(v: i64) -> AMQPValue {
    AMQPValue::LongLongInt(v)
}

fn expiring(ms: &str) -> Vec<u8> {
    props(AMQPProperties::default().with_expiration(ms.into()))
}

fn headers_of(m: &Msg) -> FieldTable {
    let (_, p) = parse_properties(&m.props[..]).expect("properties decode");
    p.headers().clone().unwrap_or_default()
}

fn death(m: &Msg, i: usize) -> FieldTable {
    match headers_of(m).inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => match &a.as_slice()[i] {
            AMQPValue::FieldTable(t) => t.clone(),
            other => panic!("x-death entry {other:?}"),
        },
        other => panic!("no x-death: {other:?}"),
    }
}

/// Waits (polling) until `q` holds `n` ready messages.
async fn until_count(r: &mut Raw, q: &str, n: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if r.counts(1, q).await.0 == n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "queue {q} never reached {n} messages");
        tokio::time::sleep(Duration::from_millis(10)).await; // poll interval
    }
}

async fn get_body(r: &mut Raw, q: &str) -> Option<Msg> {
    r.method(1, m::get(q, true)).await;
    let msg = r.next_message().await;
    match msg.method {
        AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_)) => None,
        _ => Some(msg),
    }
}

/// A queue with a dead-letter exchange "" routing to `dlq`.
async fn with_dlq(r: &mut Raw, q: &str, dlq: &str, extra: &[(&str, AMQPValue)]) {
    r.declare(1, dlq).await;
    let mut args = vec![("x-dead-letter-exchange", s("")), ("x-dead-letter-routing-key", s(dlq))];
    args.extend(extra.iter().cloned());
    r.call(1, m::qdecl(q, false, false, false, false, table(&args))).await;
}

#[tokio::test]
async fn queue_ttl_expires_and_dead_letters_with_reason_expired() {
    let srv = start().await;
    let mut r = Raw::open(srv.addr()).await;
    with_dlq(&mut r, "ttlq", "ttl-dlq", &[("x-message-ttl", int(100))]).await;
    r.send_to(1, "ttlq", b"short-lived").await;
    until_count(&mut r, "ttl-dlq", 1).await;
    assert_eq!(r.counts(1, "ttlq").await.0, 0);
    let dead = get_body(&mut r, "ttl-dlq").await.unwrap();
    assert_eq!(dead.body, b"short-lived");
    let d = death(&dead, 0);
    assert_eq!(d.inner().get("reason"), Some(&s("expired")));
    assert_eq!(d.inner().get("queue"), Some(&s("ttlq")));
    assert_eq!(d.inner().get("count"), Some(&int(1)));
    assert!(d.inner().get("original-expiration").is_none(), "queue TTL is not a per-message expiration");
    assert_eq!(headers_of(&dead).inner().get("x-first-death-reason"), Some(&s("expired")));
}

#[tokio::test]
async fn per_message_ttl_expires_behind_a_long_lived_message() {
    // Warren goes further than RabbitMQ classic queues: a short-TTL message
    // behind a long-TTL one expires on time, not when it reaches the head.
    let srv = start().await;
    let mut r = Raw::open(srv.addr()).await;
    with_dlq(&mut r, "mixed", "mixed-dlq", &[]).await;
    r.publish(1, "", "mixed", false, &expiring("600000"), b"long").await;
    r.publish(1, "", "mixed", false, &expiring("50"), b"short").await;
    until_count(&mut r, "mixed-dlq", 1).await;
    let dead = get_body(&mut r, "mixed-dlq").await.unwrap();
    assert_eq!(dead.body, b"short");
    assert_eq!(death(&dead, 0).inner().get("original-expiration"), Some(&s("50")));
    let (_, p) = parse_properties(&dead.props[..]).unwrap();
    assert!(p.expiration().is_none(), "expiration removed when dead-lettered");
    assert_eq!(get_body(&mut r, "mixed").await.unwrap().body, b"long");
}

#[tokio::test]
async fn lower_of_queue_and_message_ttl_applies_and_expired_is_never_delivered() {
    let srv = start().await;
    let mut r = Raw::open(srv.addr()).await;
    r.call(1, m::qdecl("low", false, false, false, false, table(&[("x-message-ttl", int(60_000))]))).await;
    r.publish(1, "", "low", false, &expiring("30"), b"message-ttl-wins").await;
    r.publish(1, "", "low", false, &[], b"queue-ttl").await;
    until_count(&mut r, "low", 1).await;
    assert_eq!(get_body(&mut r, "low").await.unwrap().body, b"queue-ttl");
    // basic.get never returns an expired message, even before the timer runs.
    r.call(1, m::qdecl("never", false, false, false, false, FieldTable::default())).await;
    r.publish(1, "", "never", false, &expiring("1"), b"gone").await;
    let t0 = tokio::time::Instant::now();
    while t0.elapsed() < Duration::from_millis(5) {
        tokio::task::yield_now().await; // let the 1 ms deadline pass (poll)
    }
    assert!(get_body(&mut r, "never").await.is_none());
}

#[tokio::test]
async fn ttl_zero_delivers_only_to_a_ready_consumer() {
    let srv = start().await;
    let mut r = Raw::open(srv.addr()).await;
    with_dlq(&mut r, "zero", "zero-dlq", &[]).await;
    r.publish(1, "", "zero", false, &expiring("0"), b"nobody-home").await;
    until_count(&mut r, "zero-dlq", 1).await;
    assert_eq!(r.counts(1, "zero").await.0, 0);
    r.call(1, m::consume("zero", "c", true, false, FieldTable::default())).await;
    r.publish(1, "", "zero", false, &expiring("0"), b"taken-at-once").await;
    assert_eq!(r.next_message().await.body, b"taken-at-once");
    assert_eq!(r.counts(1, "zero-dlq").await.0, 1);
}

#[tokio::test]
async fn x_expires_deletes_an_unused_queue_only() {
    let srv = start().await;
    let mut r = Raw::open(srv.addr()).await;
    r.call(1, m::qdecl("fleeting", false, false, false, false, table(&[("x-expires", int(150))]))).await;
    r.call(1, m::qdecl("kept", false, false, false, false, table(&[("x-expires", int(150))]))).await;
    r.call(1, m::consume("kept", "c", true, false, FieldTable::default())).await;
    let vhost = srv.broker().vhost("/").unwrap();
    eventually("x-expires removes the unused queue", Duration::from_secs(10), || {
        !vhost.queues.contains_key("fleeting")
    })
    .await;
    assert!(vhost.queues.contains_key("kept"), "a queue with a consumer is in use");
    // Once its consumer goes, it expires too.
    r.call(1, m::cancel("c")).await;
    eventually("x-expires after the last consumer left", Duration::from_secs(10), || {
        !vhost.queues.contains_key("kept")
    })
    .await;
}

#[tokio::test]
async fn max_length_drop_head_dead_letters_maxlen() {
    let srv = start().await;
    let mut r = Raw::open(srv.addr()).await;
    with_dlq(&mut r, "capped", "capped-dlq", &[("x-max-length", int(2))]).await;
    for b in ["m1", "m2", "m3"] {
        r.send_to(1, "capped", b.as_bytes()).await;
    }
    assert_eq!(r.counts(1, "capped").await.0, 2);
    until_count(&mut r, "capped-dlq", 1).await;
    let dead = get_body(&mut r, "capped-dlq").await.unwrap();
    assert_eq!(dead.body, b"m1");
    assert_eq!(death(&dead, 0).inner().get("reason"), Some(&s("maxlen")));
    assert_eq!(get_body(&mut r, "capped").await.unwrap().body, b"m2");
    // Bytes limit: 10 bytes of bodies at most.
    r.call(1, m::qdecl("bytes", false, false, false, false, table(&[("x-max-length-bytes", int(10))]))).await;
    for b in ["aaaa", "bbbb", "cccc"] {
        r.send_to(1, "bytes", b.as_bytes()).await;
    }
    assert_eq!(get_body(&mut r, "bytes").await.unwrap().body, b"bbbb");
}

#[tokio::test]
async fn reject_publish_nacks_and_reject_publish_dlx_also_dead_letters() {
    let srv = start().await;
    let mut r = Raw::open(srv.addr()).await;
    r.declare(1, "rp-dlq").await;
    let args = table(&[
        ("x-max-length", int(2)),
        ("x-overflow", s("reject-publish")),
        ("x-dead-letter-exchange", s("")),
        ("x-dead-letter-routing-key", s("rp-dlq")),
    ]);
    r.call(1, m::qdecl("rp", false, false, false, false, args)).await;
    let args = table(&[
        ("x-max-length", int(1)),
        ("x-overflow", s("reject-publish-dlx")),
        ("x-dead-letter-exchange", s("")),
        ("x-dead-letter-routing-key", s("rp-dlq")),
    ]);
    r.call(1, m::qdecl("rpd", false, false, false, false, args)).await;
    r.call(1, m::confirm_select()).await;
    for b in ["1", "2", "3"] {
        r.send_to(1, "rp", b.as_bytes()).await;
    }
    r.send_to(1, "rpd", b"kept").await;
    r.send_to(1, "rpd", b"refused").await;
    let (mut acked, mut nacked) = (Vec::new(), Vec::new());
    while acked.len() + nacked.len() < 5 {
        match r.recv().await {
            In::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(a))) => {
                let from = acked.iter().chain(nacked.iter()).max().copied().unwrap_or(0) + 1;
                if a.multiple {
                    acked.extend((from..=a.delivery_tag).filter(|t| !nacked.contains(t)));
                } else {
                    acked.push(a.delivery_tag);
                }
            }
            In::Method(1, AMQPClass::Basic(basic::AMQPMethod::Nack(n))) => nacked.push(n.delivery_tag),
            _ => {}
        }
    }
    acked.sort();
    nacked.sort();
    assert_eq!((acked, nacked), (vec![1, 2, 4], vec![3, 5]));
    assert_eq!(r.counts(1, "rp").await.0, 2);
    assert_eq!(r.counts(1, "rpd").await.0, 1);
    // Only reject-publish-dlx dead-letters the refused message.
    until_count(&mut r, "rp-dlq", 1).await;
    let dead = get_body(&mut r, "rp-dlq").await.unwrap();
    assert_eq!(dead.body, b"refused");
    assert_eq!(death(&dead, 0).inner().get("reason"), Some(&s("maxlen")));
}

#[tokio::test]
async fn priority_ttl_and_max_length_together() {
    let srv = start().await;
    let mut r = Raw::open(srv.addr()).await;
    let args = table(&[("x-max-priority", int(5)), ("x-max-length", int(3)), ("x-message-ttl", int(60_000))]);
    r.call(1, m::qdecl("ptm", false, false, false, false, args)).await;
    let p = |prio: u8, exp: Option<&str>| {
        let mut pr = AMQPProperties::default().with_priority(prio);
        if let Some(e) = exp {
            pr = pr.with_expiration(e.into());
        }
        props(pr)
    };
    r.publish(1, "", "ptm", false, &p(1, None), b"low").await;
    r.publish(1, "", "ptm", false, &p(3, Some("30")), b"mid-short").await;
    r.publish(1, "", "ptm", false, &p(9, None), b"top").await; // above max: treated as 5
    r.publish(1, "", "ptm", false, &p(5, None), b"high").await;
    // Four messages, max-length 3: drop-head drops the head, which in a
    // priority queue is the oldest of the highest priority ("top").
    assert_eq!(r.counts(1, "ptm").await.0, 3);
    // mid-short expires where it sits; the rest come out by priority.
    until_count(&mut r, "ptm", 2).await;
    let first = get_body(&mut r, "ptm").await.unwrap().body;
    let second = get_body(&mut r, "ptm").await.unwrap().body;
    assert_eq!((first, second), (b"high".to_vec(), b"low".to_vec()));
}

#[tokio::test]
async fn dead_letter_chain_across_two_queues_counts_deaths() {
    // work (DLX → retry) → consumer rejects → retry (TTL 50, DLX → work) →
    // expires → back to work → rejected again → expires again.
    let srv = start().await;
    let mut r = Raw::open(srv.addr()).await;
    let work = table(&[("x-dead-letter-exchange", s("")), ("x-dead-letter-routing-key", s("retry"))]);
    r.call(1, m::qdecl("work", false, false, false, false, work)).await;
    let retry = table(&[
        ("x-message-ttl", int(50)),
        ("x-dead-letter-exchange", s("")),
        ("x-dead-letter-routing-key", s("work")),
    ]);
    r.call(1, m::qdecl("retry", false, false, false, false, retry)).await;
    r.send_to(1, "work", b"task").await;
    for round in 1..=2 {
        until_count(&mut r, "work", 1).await;
        r.method(1, m::get("work", false)).await;
        let msg = r.next_message().await;
        if round == 2 {
            let newest = death(&msg, 0);
            assert_eq!(newest.inner().get("queue"), Some(&s("retry")));
            assert_eq!(newest.inner().get("reason"), Some(&s("expired")));
            assert_eq!(newest.inner().get("count"), Some(&int(1)));
            let older = death(&msg, 1);
            assert_eq!(older.inner().get("queue"), Some(&s("work")));
            assert_eq!(older.inner().get("reason"), Some(&s("rejected")));
        }
        r.method(1, m::reject(msg.delivery_tag(), false)).await;
    }
    until_count(&mut r, "work", 1).await;
    let third = get_body(&mut r, "work").await.unwrap();
    let h = headers_of(&third);
    assert_eq!(h.inner().get("x-first-death-queue"), Some(&s("work")));
    assert_eq!(h.inner().get("x-first-death-reason"), Some(&s("rejected")));
    assert_eq!(h.inner().get("x-last-death-reason"), Some(&s("expired")));
    assert_eq!(death(&third, 0).inner().get("count"), Some(&int(2)), "retry/expired counted twice");
    assert_eq!(death(&third, 1).inner().get("count"), Some(&int(2)), "work/rejected counted twice");
}

#[tokio::test]
async fn single_active_consumer_fails_over_in_order() {
    let srv = start().await;
    let mut a = Raw::open(srv.addr()).await;
    let mut b = Raw::open(srv.addr()).await;
    a.call(
        1,
        m::qdecl(
            "sac",
            false,
            false,
            false,
            false,
            table(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
        ),
    )
    .await;
    a.call(1, m::consume("sac", "first", false, false, FieldTable::default())).await;
    b.call(1, m::consume("sac", "second", false, false, FieldTable::default())).await;
    for i in 0..4 {
        a.send_to(1, "sac", format!("{i}").as_bytes()).await;
    }
    let mut got = Vec::new();
    for _ in 0..4 {
        let m = a.next_message().await;
        assert_eq!(m.consumer_tag(), "first");
        got.push(m.delivery_tag());
    }
    assert!(
        b.try_next_message(Duration::from_millis(200)).await.is_none(),
        "the waiting consumer gets nothing"
    );
    // The active consumer goes away without acking: its messages and the
    // role pass to the next one.
    drop(a);
    for _ in 0..4 {
        let m = b.next_message().await;
        assert_eq!(m.consumer_tag(), "second");
        assert!(m.redelivered());
    }
}

#[tokio::test]
async fn delivery_limit_counts_and_dead_letters() {
    let srv = start().await;
    let mut r = Raw::open(srv.addr()).await;
    with_dlq(&mut r, "limited", "limited-dlq", &[("x-delivery-limit", int(1))]).await;
    r.send_to(1, "limited", b"poison").await;
    r.method(1, m::get("limited", false)).await;
    let first = r.next_message().await;
    assert!(headers_of(&first).inner().get("x-delivery-count").is_none(), "first delivery carries no count");
    r.method(1, m::nack(first.delivery_tag(), false, true)).await;
    r.method(1, m::get("limited", false)).await;
    let second = r.next_message().await;
    assert!(second.redelivered());
    assert_eq!(headers_of(&second).inner().get("x-delivery-count"), Some(&int(1)));
    r.method(1, m::nack(second.delivery_tag(), false, true)).await;
    // Delivered twice, limit 1: dead-lettered instead of requeued.
    until_count(&mut r, "limited-dlq", 1).await;
    assert_eq!(r.counts(1, "limited").await.0, 0);
    let dead = get_body(&mut r, "limited-dlq").await.unwrap();
    assert_eq!(death(&dead, 0).inner().get("reason"), Some(&s("delivery_limit")));
}

#[tokio::test]
async fn consumer_timeout_closes_the_channel_with_rabbitmq_text() {
    let srv = start().await;
    let mut r = Raw::open(srv.addr()).await;
    r.call(1, m::qdecl("slow", false, false, false, false, table(&[("x-consumer-timeout", int(200))]))).await;
    r.send_to(1, "slow", b"never-acked").await;
    r.call(1, m::consume("slow", "c", false, false, FieldTable::default())).await;
    let first = r.next_message().await;
    assert!(!first.redelivered());
    let (code, text, class, method) = r.expect_channel_close(1).await;
    assert_eq!((code, class, method), (406, 0, 0));
    assert_eq!(
        text,
        "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. Timeout value used: 200 ms. This timeout value can be configured, see consumers doc guide to learn more"
    );
    // The message went back to the queue.
    r.open_channel(2).await;
    r.method(2, m::get("slow", true)).await;
    let again = r.next_message().await;
    assert!(again.redelivered());
    assert_eq!(again.body, b"never-acked");
}

#[tokio::test]
async fn bcc_routes_but_is_stripped() {
    let srv = start().await;
    let mut r = Raw::open(srv.addr()).await;
    r.declare(1, "to").await;
    r.declare(1, "hidden").await;
    let bcc = AMQPValue::FieldArray(vec![s("hidden")].into());
    let p = props(AMQPProperties::default().with_headers(table(&[("BCC", bcc), ("keep", s("yes"))])));
    r.publish(1, "", "to", false, &p, b"memo").await;
    for q in ["to", "hidden"] {
        let m = get_body(&mut r, q).await.unwrap();
        assert_eq!(m.body, b"memo");
        let h = headers_of(&m);
        assert!(!h.inner().contains_key("BCC"), "BCC stripped in {q}");
        assert_eq!(h.inner().get("keep"), Some(&s("yes")));
    }
}

#[tokio::test]
async fn delayed_message_exchange_holds_then_routes_and_survives_restart() {
    let srv = start().await;
    let mut r = Raw::open(srv.addr()).await;
    r.method(
        1,
        m::xdecl("bad-delayed", "x-delayed-message", false, false, false, false, FieldTable::default()),
    )
    .await;
    let (code, text, _, _) = r.expect_channel_close(1).await;
    assert_eq!(
        (code, text.as_str()),
        (406, "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must be an existing exchange type")
    );
    r.open_channel(1).await;
    let args = table(&[("x-delayed-type", s("direct"))]);
    r.call(1, m::xdecl("later", "x-delayed-message", false, true, false, false, args)).await;
    r.call(1, m::qdecl("due", false, true, false, false, FieldTable::default())).await;
    r.call(1, m::qbind("due", "later", "k", FieldTable::default())).await;
    let delayed = |ms: i64, persistent: bool| {
        let mut p = AMQPProperties::default().with_headers(table(&[("x-delay", int(ms))]));
        if persistent {
            p = p.with_delivery_mode(2);
        }
        props(p)
    };
    r.publish(1, "later", "k", false, &delayed(150, false), b"in-150ms").await;
    r.publish(1, "later", "k", false, &[], b"no-delay").await;
    assert_eq!(get_body(&mut r, "due").await.unwrap().body, b"no-delay");
    assert!(get_body(&mut r, "due").await.is_none(), "the delayed one waits");
    until_count(&mut r, "due", 1).await;
    assert_eq!(get_body(&mut r, "due").await.unwrap().body, b"in-150ms");
    // Persistent delayed messages of a durable delayed exchange survive a restart.
    r.publish(1, "later", "k", false, &delayed(1500, true), b"after-restart").await;
    r.counts(1, "due").await; // round trip: the publish was handled
    drop(r);
    let srv = srv.restart().await;
    let mut r = Raw::open(srv.addr()).await;
    assert_eq!(r.counts(1, "due").await.0, 0);
    until_count(&mut r, "due", 1).await;
    assert_eq!(get_body(&mut r, "due").await.unwrap().body, b"after-restart");
    srv.stop().await;
}

#[tokio::test]
async fn expired_only_dead_letter_cycle_is_dropped() {
    // A (TTL 30) → B (TTL 30) → A again: a cycle with no rejection, so the
    // message is dropped the second time, as RabbitMQ does. A control message
    // takes a longer path C → D → E without a cycle and must arrive: the
    // timer thread handles deadlines in order, so once the control is in E
    // the cycling message's fate is decided.
    let srv = start().await;
    let mut r = Raw::open(srv.addr()).await;
    let to = |q: &str, ttl: i64| {
        table(&[
            ("x-message-ttl", int(ttl)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s(q)),
        ])
    };
    r.call(1, m::qdecl("cyc-a", false, false, false, false, to("cyc-b", 30))).await;
    r.call(1, m::qdecl("cyc-b", false, false, false, false, to("cyc-a", 30))).await;
    r.call(1, m::qdecl("ctl-c", false, false, false, false, to("ctl-d", 30))).await;
    r.call(1, m::qdecl("ctl-d", false, false, false, false, to("ctl-e", 200))).await;
    r.declare(1, "ctl-e").await;
    r.send_to(1, "cyc-a", b"cycling").await;
    r.send_to(1, "ctl-c", b"control").await;
    until_count(&mut r, "ctl-e", 1).await;
    let v = srv.broker().vhost("/").unwrap();
    let (a, b) = (v.queue("cyc-a").unwrap(), v.queue("cyc-b").unwrap());
    assert_eq!(b.stats.expired.load(std::sync::atomic::Ordering::Relaxed), 1, "expired from B");
    assert_eq!(a.stats.published.load(std::sync::atomic::Ordering::Relaxed), 1, "never re-entered A");
    assert_eq!(r.counts(1, "cyc-a").await.0 + r.counts(1, "cyc-b").await.0, 0);
}
