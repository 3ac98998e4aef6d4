//! Behaviours a differential probe found different from RabbitMQ (the same
//! operations against RabbitMQ 3.10.8 and Warren, every frame compared),
//! each checked against RabbitMQ 3.13.7's source before it was changed here:
//! the routing-key shortcut of `queue.bind`, CR/LF in names, the bare
//! direct reply-to name, per-message `expiration` parsing, methods on channel
//! 0, headers-exchange integer widths, argument types and texts.

use crate::common;

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::protocol::{AMQPClass, queue};
use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use std::time::Duration;

fn declare_ok(r: AMQPClass) -> queue::DeclareOk {
    match r {
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => ok,
        other => panic!("expected declare-ok, got {other:?}"),
    }
}

/// `queue.bind` with queue `""` and routing key `""` binds the channel's
/// last queue with its own name as the key (`expand_routing_key_shortcut`).
#[tokio::test]
async fn bind_shortcut_uses_the_queue_name_as_routing_key() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    declare_ok(r.call(1, m::q("shortcut-q")).await);
    r.call(1, m::qbind("", "amq.direct", "", FieldTable::default())).await;
    r.publish(1, "amq.direct", "", false, &[], b"empty key").await;
    r.publish(1, "amq.direct", "shortcut-q", false, &[], b"named key").await;
    r.method(1, m::get("shortcut-q", true)).await;
    assert_eq!(r.next_message().await.body, b"named key");
    assert_eq!(r.counts(1, "shortcut-q").await.0, 0, "the empty-key publish was not routed");
}

/// CR and LF are dropped from names in declare, delete and bind
/// (`strip_cr_lf`), not kept as part of the name.
#[tokio::test]
async fn cr_and_lf_are_stripped_from_declared_names() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    let ok = declare_ok(r.call(1, m::q("crlf\r\nq")).await);
    assert_eq!(ok.queue.as_str(), "crlfq");
    declare_ok(r.call(1, m::qdecl("crlfq", true, false, false, false, FieldTable::default())).await);
    r.call(1, m::x("crlf\nx", "fanout")).await;
    r.call(1, m::qbind("crlfq\r", "crlf\r\nx", "", FieldTable::default())).await;
    r.publish(1, "crlfx", "", false, &[], b"through").await;
    assert_eq!(r.counts(1, "crlfq").await.0, 1);
    let deleted = r.call(1, m::qdelete("crlfq\n", false, false)).await;
    assert!(matches!(deleted, AMQPClass::Queue(queue::AMQPMethod::DeleteOk(d)) if d.message_count == 1));
}

/// The bare `amq.rabbitmq.reply-to` pseudo-queue always "exists" with one
/// consumer (`declare_fast_reply_to/1`).
#[tokio::test]
async fn declaring_the_reply_to_pseudo_queue_answers_one_consumer() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    for passive in [false, true] {
        let ok = declare_ok(
            r.call(1, m::qdecl("amq.rabbitmq.reply-to", passive, false, false, false, FieldTable::default()))
                .await,
        );
        assert_eq!((ok.queue.as_str(), ok.message_count, ok.consumer_count), ("amq.rabbitmq.reply-to", 0, 1));
    }
}

/// Per-message `expiration` is read as `string:to_integer/1` reads it (a
/// leading sign allowed) and capped at ten years (`check_expiry/1`); `-0`
/// is zero, so the message expires at once.
#[tokio::test]
async fn expiration_parsing_follows_rabbitmq() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "exp").await;
    let with = |e: &str| props(AMQPProperties::default().with_expiration(e.into()));
    r.publish(1, "", "exp", false, &with("+100000"), b"plus").await;
    r.publish(1, "", "exp", false, &with("-0"), b"minus zero").await;
    r.publish(1, "", "exp", false, &with("315360000000"), b"ten years").await;
    eventually("the -0 message gone, the others kept", Duration::from_secs(5), || {
        s.broker().vhost("/").unwrap().queue("exp").unwrap().counts().0 == 2
    })
    .await;
    r.method(1, m::get("exp", true)).await;
    assert_eq!(r.next_message().await.body, b"plus");
    for (value, why) in [
        ("315360000001", "{value_too_large,315360000001}"),
        // Erlang's ~p wraps a term that would reach column 79, as RabbitMQ
        // 3.10.8 answered these on this machine.
        ("99999999999999999999", "{value_too_large,\n                                            99999999999999999999}"),
        ("9999999999999999999", "{value_too_large,\n                                           9999999999999999999}"),
        ("0009999999999999999", "{value_too_large,9999999999999999}"),
        ("1.5", "{leftover_string,\".5\"}"),
        ("-7", "{value_negative,-7}"),
        ("", "no_integer"),
    ] {
        r.publish(1, "", "exp", false, &with(value), b"x").await;
        let (code, text, _, _) = r.expect_channel_close(1).await;
        assert_eq!(
            (code, text),
            (406, format!("PRECONDITION_FAILED - invalid expiration '{value}': {why}")),
            "{value}"
        );
        r.open_channel(1).await;
    }
}

/// A channel method on channel 0 after the handshake closes the connection
/// with 504 (`rabbit_reader:handle_method0/2`).
#[tokio::test]
async fn a_channel_method_on_channel_0_is_a_channel_error() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.method(0, m::qos(10, false)).await;
    let (code, text, class, method) = r.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (504, "CHANNEL_ERROR - unexpected method in connection state running", 60, 10)
    );
}

/// Headers exchange: a binding's integer matches a header integer of any
/// width, not a float or a string (`=:=` on the decoded values).
#[tokio::test]
async fn headers_exchange_matches_integers_of_any_width() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "hq").await;
    r.call(1, m::x("hx", "headers")).await;
    r.call(1, m::qbind("hq", "hx", "", table(&[("a", AMQPValue::LongLongInt(1))]))).await;
    let values = [
        (AMQPValue::ShortShortInt(1), true),
        (AMQPValue::ShortInt(1), true),
        (AMQPValue::LongInt(1), true),
        (AMQPValue::LongLongInt(1), true),
        (AMQPValue::Double(1.0), false),
        (AMQPValue::LongString("1".into()), false),
    ];
    for (v, _) in &values {
        let p = props(AMQPProperties::default().with_headers(table(&[("a", v.clone())])));
        r.publish(1, "hx", "", false, &p, format!("{v:?}").as_bytes()).await;
    }
    let want = values.iter().filter(|(_, hit)| *hit).count() as u32;
    assert_eq!(r.counts(1, "hq").await.0, want);
    // Bad x-match types name the type, as RabbitMQ's validate_binding.
    r.method(1, m::qbind("hq", "hx", "", table(&[("x-match", AMQPValue::LongInt(1))]))).await;
    let (code, text, _, _) = r.expect_channel_close(1).await;
    assert_eq!(
        (code, text.as_str()),
        (406, "PRECONDITION_FAILED - Invalid x-match field type signedint (value 1); expected longstr")
    );
}

/// Argument types and texts: an exchange-naming argument that is not a
/// string, an integer argument of another type, a bad overflow mode, and a
/// redeclare with another value.
#[tokio::test]
async fn argument_type_errors_use_rabbitmq_texts() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    let cases: [(&str, AMQPValue, &str); 4] = [
        (
            "x-dead-letter-exchange",
            AMQPValue::LongInt(5),
            "invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue 'args-q' in vhost '/'",
        ),
        (
            "x-max-length",
            AMQPValue::LongString("ten".into()),
            "invalid arg 'x-max-length' for queue 'args-q' in vhost '/': \"expected integer, got longstr\"",
        ),
        (
            "x-overflow",
            AMQPValue::LongString("bogus".into()),
            "invalid arg 'x-overflow' for queue 'args-q' in vhost '/': invalid_overflow",
        ),
        (
            "x-message-ttl",
            AMQPValue::LongLongInt(315_360_000_001),
            "invalid arg 'x-message-ttl' for queue 'args-q' in vhost '/': {value_too_large,315360000001}",
        ),
    ];
    for (key, value, text) in cases {
        r.method(1, m::qdecl("args-q", false, false, false, false, table(&[(key, value)]))).await;
        let (code, got, _, _) = r.expect_channel_close(1).await;
        assert_eq!((code, got), (406, format!("PRECONDITION_FAILED - {text}")), "{key}");
        r.open_channel(1).await;
    }
    r.method(
        1,
        m::xdecl(
            "ae-x",
            "direct",
            false,
            false,
            false,
            false,
            table(&[("alternate-exchange", AMQPValue::LongInt(5))]),
        ),
    )
    .await;
    let (_, got, _, _) = r.expect_channel_close(1).await;
    assert_eq!(
        got,
        "PRECONDITION_FAILED - invalid type 'signedint' for arg 'alternate-exchange' in exchange 'ae-x' in vhost '/'"
    );
    r.open_channel(1).await;
    r.call(
        1,
        m::qdecl("ttl-q", false, false, false, false, table(&[("x-message-ttl", AMQPValue::LongInt(1000))])),
    )
    .await;
    r.method(
        1,
        m::qdecl("ttl-q", false, false, false, false, table(&[("x-message-ttl", AMQPValue::LongInt(2000))])),
    )
    .await;
    let (_, got, _, _) = r.expect_channel_close(1).await;
    assert_eq!(
        got,
        "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'ttl-q' in vhost '/': received '2000' but current is '1000'"
    );
}

/// Single active consumer: when the active consumer's channel closes with a
/// delivery unacked, the consumer that takes over gets that delivery again
/// first (redelivered), then the message never delivered; RabbitMQ's queue
/// requeues a channel's deliveries as it removes its consumers.
#[tokio::test]
async fn single_active_consumer_takes_over_the_unacked_first() {
    let s = start().await;
    let mut a = Raw::open(s.addr()).await;
    let mut b = Raw::open(s.addr()).await;
    let args = table(&[("x-single-active-consumer", AMQPValue::Boolean(true))]);
    declare_ok(a.call(1, m::qdecl("sac-q", false, false, false, false, args)).await);
    a.call(1, m::qos(1, false)).await;
    a.call(1, m::consume("sac-q", "A", false, false, FieldTable::default())).await;
    b.call(1, m::consume("sac-q", "B", false, false, FieldTable::default())).await;
    a.send_to(1, "sac-q", b"m1").await;
    let first = a.next_message().await;
    assert_eq!(first.body, b"m1");
    a.send_to(1, "sac-q", b"m2").await;
    assert_eq!(a.counts(1, "sac-q").await.0, 1, "m2 waits: A has its one unacked");
    a.call(1, m::ch_close()).await;
    let again = b.next_message().await;
    assert_eq!((again.body.as_slice(), again.redelivered()), (&b"m1"[..], true));
    b.method(1, m::ack(again.delivery_tag(), false)).await;
    let next = b.next_message().await;
    assert_eq!((next.body.as_slice(), next.redelivered()), (&b"m2"[..], false));
}
