//! Direct reply-to (with RabbitMQ's misuse texts), dead-lettering on reject,
//! and remaining error rows: delivery_mode, shutdown 320, cancel capability,
//! the consumer's negotiated frame_max.

use crate::common;

use amq_protocol::protocol::basic::{AMQPProperties, parse_properties};
use amq_protocol::protocol::{AMQPClass, basic, connection, queue};
use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use std::time::Duration;

fn headers_of(m: &Msg) -> FieldTable {
    let (_, p) = parse_properties(&m.props[..]).expect("properties decode");
    p.headers().clone().unwrap_or_default()
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(v.into())
}

#[tokio::test]
async fn direct_reply_to_round_trip_and_liveness_check() {
    let srv = start().await;
    let mut client = Raw::open(srv.addr()).await;
    let mut server = Raw::open(srv.addr()).await;
    server.declare(1, "rpc").await;
    let ok =
        client.call(1, m::consume("amq.rabbitmq.reply-to", "", true, false, FieldTable::default())).await;
    assert!(matches!(ok, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))));
    let p = props(
        AMQPProperties::default()
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_correlation_id("c1".into()),
    );
    client.publish(1, "", "rpc", false, &p, b"ping").await;
    server.method(1, m::get("rpc", true)).await;
    let req = server.next_message().await;
    let (_, rp) = parse_properties(&req.props[..]).unwrap();
    let reply_to = rp.reply_to().clone().expect("reply_to kept").to_string();
    assert!(reply_to.starts_with("amq.rabbitmq.reply-to."), "{reply_to}");
    assert_eq!(rp.correlation_id().as_ref().map(|c| c.as_str()), Some("c1"));
    // The server can check the requester is alive.
    let alive = server.call(1, m::qdecl(&reply_to, true, false, false, false, FieldTable::default())).await;
    assert!(matches!(alive, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) if ok.consumer_count == 1));
    server
        .publish(
            1,
            "",
            &reply_to,
            false,
            &props(AMQPProperties::default().with_correlation_id("c1".into())),
            b"pong",
        )
        .await;
    let reply = client.next_message().await;
    assert_eq!(reply.body, b"pong");
    match &reply.method {
        AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) => {
            assert_eq!((d.exchange.as_str(), d.routing_key.as_str()), ("", reply_to.as_str()));
            assert!(!d.redelivered);
        }
        other => panic!("{other:?}"),
    }
    // After the requester goes, the name is gone.
    drop(client);
    let mut gone = false;
    for _ in 0..200 {
        server.method(1, m::qdecl(&reply_to, true, false, false, false, FieldTable::default())).await;
        match server.recv().await {
            In::Method(1, AMQPClass::Channel(amq_protocol::protocol::channel::AMQPMethod::Close(c))) => {
                assert_eq!(c.reply_code, 404);
                server.method(1, m::ch_close_ok()).await;
                gone = true;
                break;
            }
            _ => {
                tokio::time::sleep(Duration::from_millis(10)).await; // poll (bounded retries)
            }
        }
    }
    assert!(gone, "reply name must disappear with its connection");
}

/// RabbitMQ 3.13 delivers a reply to a direct reply-to name and, because
/// no queue took it, also returns it to a `mandatory` publisher and confirms
/// it at once (`rabbit_channel`: the virtual reply queue is dropped by
/// `lookup_many`; rabbitmq-server#6124). The return comes before the ack.
#[tokio::test]
async fn mandatory_direct_reply_is_delivered_and_returned() {
    let srv = start().await;
    let mut client = Raw::open(srv.addr()).await;
    let mut server = Raw::open(srv.addr()).await;
    server.declare(1, "rpc2").await;
    client.call(1, m::consume("amq.rabbitmq.reply-to", "", true, false, FieldTable::default())).await;
    let p = props(AMQPProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()));
    client.publish(1, "", "rpc2", false, &p, b"ping").await;
    server.method(1, m::get("rpc2", true)).await;
    let req = server.next_message().await;
    let (_, rp) = parse_properties(&req.props[..]).unwrap();
    let reply_to = rp.reply_to().clone().expect("reply_to kept").to_string();
    let ok = server.call(1, m::confirm_select()).await;
    assert!(matches!(ok, AMQPClass::Confirm(_)), "{ok:?}");
    server.publish(1, "", &reply_to, true, &[], b"pong").await;
    let returned = server.next_message().await;
    match &returned.method {
        AMQPClass::Basic(basic::AMQPMethod::Return(r)) => {
            assert_eq!(
                (r.reply_code, r.reply_text.as_str(), r.exchange.as_str(), r.routing_key.as_str()),
                (312, "NO_ROUTE", "", reply_to.as_str())
            );
        }
        other => panic!("expected basic.return, got {other:?}"),
    }
    assert_eq!(returned.body, b"pong");
    match server.recv().await {
        In::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(a))) => {
            assert_eq!((a.delivery_tag, a.multiple), (1, false))
        }
        other => panic!("expected basic.ack after the return, got {other:?}"),
    }
    let reply = client.next_message().await;
    assert!(matches!(reply.method, AMQPClass::Basic(basic::AMQPMethod::Deliver(_))), "{:?}", reply.method);
    assert_eq!(reply.body, b"pong", "delivered to the requester as well");
    // Without `mandatory` it is delivered and dropped from the statistics'
    // point of view: no return.
    server.publish(1, "", &reply_to, false, &[], b"pong2").await;
    match server.recv().await {
        In::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(a))) => assert_eq!(a.delivery_tag, 2),
        other => panic!("expected only basic.ack, got {other:?}"),
    }
    assert_eq!(client.next_message().await.body, b"pong2");
}

#[tokio::test]
async fn direct_reply_to_misuse_texts() {
    let srv = start().await;
    let mut r = Raw::open(srv.addr()).await;
    r.declare(1, "rq").await;
    let p = props(AMQPProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()));
    r.publish(1, "", "rq", false, &p, b"x").await;
    let (code, text, class, method) = r.expect_channel_close(1).await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (406, "PRECONDITION_FAILED - fast reply consumer does not exist", 60, 40)
    );
    r.open_channel(1).await;
    r.method(1, m::consume("amq.rabbitmq.reply-to", "", false, false, FieldTable::default())).await;
    let (code, text, _, _) = r.expect_channel_close(1).await;
    assert_eq!((code, text.as_str()), (406, "PRECONDITION_FAILED - reply consumer cannot acknowledge"));
    r.open_channel(1).await;
    r.call(1, m::consume("amq.rabbitmq.reply-to", "a", true, false, FieldTable::default())).await;
    r.method(1, m::consume("amq.rabbitmq.reply-to", "b", true, false, FieldTable::default())).await;
    let (code, text, _, _) = r.expect_channel_close(1).await;
    assert_eq!((code, text.as_str()), (406, "PRECONDITION_FAILED - reply consumer already set"));
}

#[tokio::test]
async fn reject_dead_letters_with_x_death() {
    let srv = start().await;
    let mut r = Raw::open(srv.addr()).await;
    r.declare(1, "dlq").await;
    r.call(1, m::x("dlx", "fanout")).await;
    r.call(1, m::qbind("dlq", "dlx", "", FieldTable::default())).await;
    let args = table(&[("x-dead-letter-exchange", s("dlx"))]);
    r.call(1, m::qdecl("work", false, false, false, false, args)).await;
    let p = props(
        AMQPProperties::default().with_headers(table(&[("k", s("v"))])).with_expiration("60000".into()),
    );
    r.publish(1, "", "work", false, &p, b"doomed").await;
    r.method(1, m::get("work", false)).await;
    let tag = r.next_message().await.delivery_tag();
    r.method(1, m::reject(tag, false)).await;
    r.method(1, m::get("dlq", true)).await;
    let dead = r.next_message().await;
    assert_eq!(dead.body, b"doomed");
    let h = headers_of(&dead);
    assert_eq!(h.inner().get("k"), Some(&s("v")));
    assert_eq!(h.inner().get("x-first-death-reason"), Some(&s("rejected")));
    assert_eq!(h.inner().get("x-first-death-queue"), Some(&s("work")));
    assert_eq!(h.inner().get("x-first-death-exchange"), Some(&s("")));
    assert_eq!(h.inner().get("x-last-death-reason"), Some(&s("rejected")));
    let Some(AMQPValue::FieldArray(deaths)) = h.inner().get("x-death") else { panic!("no x-death") };
    let AMQPValue::FieldTable(d) = &deaths.as_slice()[0] else { panic!("entry") };
    assert_eq!(d.inner().get("count"), Some(&AMQPValue::LongLongInt(1)));
    assert_eq!(d.inner().get("reason"), Some(&s("rejected")));
    assert_eq!(d.inner().get("queue"), Some(&s("work")));
    assert_eq!(d.inner().get("exchange"), Some(&s("")));
    assert_eq!(d.inner().get("routing-keys"), Some(&AMQPValue::FieldArray(vec![s("work")].into())));
    assert_eq!(d.inner().get("original-expiration"), Some(&s("60000")));
    assert!(matches!(d.inner().get("time"), Some(AMQPValue::Timestamp(_))));
    let (_, p) = parse_properties(&dead.props[..]).unwrap();
    assert!(p.expiration().is_none(), "expiration removed");
    match &dead.method {
        AMQPClass::Basic(basic::AMQPMethod::GetOk(g)) => assert_eq!(g.exchange.as_str(), "dlx"),
        other => panic!("{other:?}"),
    }

    // Dead-lettered again from the same queue: count goes to 2, still one entry.
    let args = table(&[("x-dead-letter-exchange", s("")), ("x-dead-letter-routing-key", s("work"))]);
    r.call(1, m::qdecl("bounce", false, false, false, false, args)).await;
    r.call(1, m::qunbind("dlq", "dlx", "")).await;
    let args_work2 = table(&[("x-dead-letter-exchange", s("")), ("x-dead-letter-routing-key", s("bounce"))]);
    r.call(1, m::qdecl("work2", false, false, false, false, args_work2)).await;
    // work2 → (reject) → bounce → (reject) → work → (reject) → dlx (unbound: dropped)
    r.send_to(1, "work2", b"loop").await;
    for q in ["work2", "bounce"] {
        r.method(1, m::get(q, false)).await;
        let tag = r.next_message().await.delivery_tag();
        r.method(1, m::reject(tag, false)).await;
    }
    r.method(1, m::get("work", true)).await;
    let m3 = r.next_message().await;
    let h = headers_of(&m3);
    let Some(AMQPValue::FieldArray(deaths)) = h.inner().get("x-death") else { panic!("no x-death") };
    let queues: Vec<AMQPValue> = deaths
        .as_slice()
        .iter()
        .map(|d| match d {
            AMQPValue::FieldTable(t) => t.inner().get("queue").cloned().unwrap(),
            _ => AMQPValue::Void,
        })
        .collect();
    assert_eq!(queues, vec![s("bounce"), s("work2")], "newest first");
    assert_eq!(h.inner().get("x-first-death-queue"), Some(&s("work2")));
    assert_eq!(h.inner().get("x-last-death-queue"), Some(&s("bounce")));
}

#[tokio::test]
async fn missing_dlx_drops_and_malformed_x_death_is_replaced() {
    let srv = start().await;
    let mut r = Raw::open(srv.addr()).await;
    let args = table(&[("x-dead-letter-exchange", s("nowhere"))]);
    r.call(1, m::qdecl("lost", false, false, false, false, args)).await;
    r.send_to(1, "lost", b"x").await;
    r.method(1, m::get("lost", false)).await;
    let tag = r.next_message().await.delivery_tag();
    r.method(1, m::nack(tag, false, false)).await;
    assert_eq!(r.counts(1, "lost").await.0, 0);

    r.declare(1, "target").await;
    let args = table(&[("x-dead-letter-exchange", s("")), ("x-dead-letter-routing-key", s("target"))]);
    r.call(1, m::qdecl("src", false, false, false, false, args)).await;
    let p = props(AMQPProperties::default().with_headers(table(&[("x-death", s("not an array"))])));
    r.publish(1, "", "src", false, &p, b"y").await;
    r.method(1, m::get("src", false)).await;
    let tag = r.next_message().await.delivery_tag();
    r.method(1, m::reject(tag, false)).await;
    r.method(1, m::get("target", true)).await;
    let h = headers_of(&r.next_message().await);
    assert!(matches!(h.inner().get("x-death"), Some(AMQPValue::FieldArray(a)) if a.as_slice().len() == 1));
}

#[tokio::test]
async fn delivery_mode_must_be_1_or_2() {
    let srv = start().await;
    let mut r = Raw::open(srv.addr()).await;
    r.declare(1, "dm").await;
    r.publish(1, "", "dm", false, &props(AMQPProperties::default().with_delivery_mode(3)), b"x").await;
    let (code, text, _, _) = r.expect_channel_close(1).await;
    assert_eq!(
        (code, text.as_str()),
        (406, "PRECONDITION_FAILED - invalid message: {delivery_mode_unknown,3}")
    );
}

#[tokio::test]
async fn shutdown_closes_clients_with_320() {
    let srv = start().await;
    let mut r = Raw::open(srv.addr()).await;
    let stopper = tokio::spawn(srv.stop());
    let (code, text, _, _) = r.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str()),
        (320, "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'")
    );
    tokio::time::timeout(Duration::from_secs(15), stopper).await.expect("shutdown completes").unwrap();
}

#[tokio::test]
async fn no_cancel_notification_without_the_capability() {
    let srv = start().await;
    let mut r = Raw::login(srv.addr(), "guest", "guest", &[]).await;
    r.recv().await; // tune
    r.method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: 10,
            frame_max: 4096,
            heartbeat: 0,
        })),
    )
    .await;
    r.method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open { virtual_host: "/".into() })),
    )
    .await;
    r.recv().await;
    r.open_channel(1).await;
    r.declare(1, "nc").await;
    r.call(1, m::consume("nc", "t", true, false, FieldTable::default())).await;
    // frame_max 4096: a 10 000-byte body (published on a connection with a
    // larger frame_max) arrives in 3 body frames.
    let mut other = Raw::open(srv.addr()).await;
    other.send_to(1, "nc", &[9u8; 10_000]).await;
    let mut frames = 0;
    let mut total = 0;
    loop {
        match r.recv().await {
            In::Body(_, b) => {
                assert!(b.len() <= 4096 - 8);
                frames += 1;
                total += b.len();
                if total == 10_000 {
                    break;
                }
            }
            In::Method(..) | In::Header(..) | In::Heartbeat => {}
        }
    }
    assert_eq!(frames, 3);
    other.call(1, m::qdelete("nc", false, false)).await;
    assert!(
        r.try_recv(Duration::from_millis(300)).await.is_none(),
        "no basic.cancel without consumer_cancel_notify"
    );
}
