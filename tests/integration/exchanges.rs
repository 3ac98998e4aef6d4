//! Exchanges: predeclared set, declare/delete rules and texts, routing by type,
//! exchange-to-exchange bindings with cycles, alternate exchanges.

use crate::common;

use amq_protocol::protocol::{AMQPClass, exchange};
use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use std::time::Duration;

fn declare_ok(r: &AMQPClass) -> bool {
    matches!(r, AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(_)))
}

/// Drains queue `q` with basic.get; returns bodies.
async fn drain(r: &mut Raw, ch: u16, q: &str) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        r.method(ch, m::get(q, true)).await;
        let msg = r.next_message().await;
        if matches!(msg.method, AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::GetEmpty(_))) {
            return out;
        }
        out.push(String::from_utf8(msg.body).unwrap());
    }
}

#[tokio::test]
async fn predeclared_exchanges_exist_and_are_protected() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    for (name, kind) in [
        ("amq.direct", "direct"),
        ("amq.fanout", "fanout"),
        ("amq.topic", "topic"),
        ("amq.headers", "headers"),
        ("amq.match", "headers"),
    ] {
        let reply = r.call(1, m::xdecl(name, kind, true, false, false, false, FieldTable::default())).await;
        assert!(declare_ok(&reply), "{name}");
        // Redeclaring with the same properties is fine.
        let reply = r.call(1, m::xdecl(name, kind, false, true, false, false, FieldTable::default())).await;
        assert!(declare_ok(&reply), "{name} redeclare");
    }
    r.method(1, m::xdelete("amq.direct", false)).await;
    let (code, text, class, method) = r.expect_channel_close(1).await;
    assert_eq!((code, class, method), (403, 40, 20));
    assert_eq!(text, "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed");
    r.open_channel(2).await;
    r.method(2, m::x("", "direct")).await;
    let (code, text, _, _) = r.expect_channel_close(2).await;
    assert_eq!(
        (code, text.as_str()),
        (403, "ACCESS_REFUSED - operation not permitted on the default exchange")
    );
    r.open_channel(3).await;
    r.method(3, m::x("amq.custom", "direct")).await;
    let (code, text, _, _) = r.expect_channel_close(3).await;
    assert_eq!(
        (code, text.as_str()),
        (403, "ACCESS_REFUSED - exchange name 'amq.custom' contains reserved prefix 'amq.*'")
    );
    r.open_channel(4).await;
    r.declare(4, "dq").await;
    r.method(4, m::qbind("dq", "", "dq", FieldTable::default())).await;
    let (code, _, class, method) = r.expect_channel_close(4).await;
    assert_eq!((code, class, method), (403, 50, 20));
}

#[tokio::test]
async fn declare_passive_equivalence_and_unknown_type() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.method(1, m::xdecl("missing", "direct", true, false, false, false, FieldTable::default())).await;
    let (code, text, class, method) = r.expect_channel_close(1).await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (404, "NOT_FOUND - no exchange 'missing' in vhost '/'", 40, 10)
    );

    r.open_channel(1).await;
    assert!(declare_ok(
        &r.call(1, m::xdecl("e1", "direct", false, true, false, false, FieldTable::default())).await
    ));
    r.method(1, m::xdecl("e1", "fanout", false, true, false, false, FieldTable::default())).await;
    let (code, text, _, _) = r.expect_channel_close(1).await;
    assert_eq!(code, 406);
    assert_eq!(
        text,
        "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'e1' in vhost '/': received 'fanout' but current is 'direct'"
    );
    r.open_channel(1).await;
    r.method(1, m::xdecl("e1", "direct", false, false, false, false, FieldTable::default())).await;
    let (code, text, _, _) = r.expect_channel_close(1).await;
    assert_eq!(code, 406);
    assert_eq!(
        text,
        "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange 'e1' in vhost '/': received 'false' but current is 'true'"
    );

    // An unknown type is a channel error 406 since RabbitMQ 3.13.3 (pika's
    // own suite expects it), checked before the name: the default exchange
    // with a bad type gets the same answer.
    for name in ["e2", ""] {
        r.open_channel(1).await;
        r.method(1, m::x(name, "no-such-type")).await;
        let (code, text, class, method) = r.expect_channel_close(1).await;
        assert_eq!(
            (code, text.as_str(), class, method),
            (406, "PRECONDITION_FAILED - unknown exchange type 'no-such-type'", 40, 10)
        );
    }
    // The connection stays open.
    r.open_channel(1).await;
    r.call(1, m::x("e3", "topic")).await;
}

#[tokio::test]
async fn delete_if_unused_and_missing() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.call(1, m::x("del", "fanout")).await;
    r.declare(1, "delq").await;
    r.call(1, m::qbind("delq", "del", "", FieldTable::default())).await;
    r.method(1, m::xdelete("del", true)).await;
    let (code, text, _, _) = r.expect_channel_close(1).await;
    assert_eq!((code, text.as_str()), (406, "PRECONDITION_FAILED - exchange 'del' in vhost '/' in use"));
    r.open_channel(1).await;
    assert!(matches!(
        r.call(1, m::xdelete("del", false)).await,
        AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(_))
    ));
    // Deleting a missing exchange is ok in RabbitMQ 3.x.
    assert!(matches!(
        r.call(1, m::xdelete("del", false)).await,
        AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(_))
    ));
    r.method(1, m::xdecl("del", "fanout", true, false, false, false, FieldTable::default())).await;
    assert_eq!(r.expect_channel_close(1).await.0, 404);
}

#[tokio::test]
async fn direct_fanout_topic_headers_routing() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    for q in ["d1", "d2", "f1", "f2", "t1", "t2", "t3", "hall", "hany"] {
        r.declare(1, q).await;
    }
    r.call(1, m::x("dx", "direct")).await;
    r.call(1, m::x("fx", "fanout")).await;
    r.call(1, m::x("tx", "topic")).await;
    r.call(1, m::x("hx", "headers")).await;
    r.call(1, m::qbind("d1", "dx", "a", FieldTable::default())).await;
    r.call(1, m::qbind("d2", "dx", "b", FieldTable::default())).await;
    r.call(1, m::qbind("f1", "fx", "ignored", FieldTable::default())).await;
    r.call(1, m::qbind("f2", "fx", "", FieldTable::default())).await;
    r.call(1, m::qbind("t1", "tx", "*.orange.*", FieldTable::default())).await;
    r.call(1, m::qbind("t2", "tx", "*.*.rabbit", FieldTable::default())).await;
    r.call(1, m::qbind("t2", "tx", "lazy.#", FieldTable::default())).await;
    r.call(1, m::qbind("t3", "tx", "#", FieldTable::default())).await;
    let s_ = |v: &str| AMQPValue::LongString(v.into());
    r.call(1, m::qbind("hall", "hx", "", table(&[("x-match", s_("all")), ("a", s_("1")), ("b", s_("2"))])))
        .await;
    r.call(1, m::qbind("hany", "hx", "", table(&[("x-match", s_("any")), ("a", s_("1")), ("b", s_("2"))])))
        .await;

    r.publish(1, "dx", "a", false, &[], b"to-d1").await;
    r.publish(1, "fx", "whatever", false, &[], b"to-fans").await;
    for (key, body) in [
        ("quick.orange.rabbit", "qor"),
        ("lazy.orange.elephant", "loe"),
        ("quick.orange.fox", "qof"),
        ("lazy.brown.fox", "lbf"),
        ("lazy", "l"),
        ("quick.brown.fox", "qbf"),
    ] {
        r.publish(1, "tx", key, false, &[], body.as_bytes()).await;
    }
    let with_headers = |pairs: &[(&str, AMQPValue)]| {
        props(amq_protocol::protocol::basic::AMQPProperties::default().with_headers(table(pairs)))
    };
    r.publish(1, "hx", "", false, &with_headers(&[("a", s_("1")), ("b", s_("2"))]), b"both").await;
    r.publish(1, "hx", "", false, &with_headers(&[("a", s_("1"))]), b"only-a").await;
    r.publish(1, "hx", "", false, &with_headers(&[("c", s_("3"))]), b"neither").await;

    assert_eq!(drain(&mut r, 1, "d1").await, vec!["to-d1"]);
    assert!(drain(&mut r, 1, "d2").await.is_empty());
    assert_eq!(drain(&mut r, 1, "f1").await, vec!["to-fans"]);
    assert_eq!(drain(&mut r, 1, "f2").await, vec!["to-fans"]);
    assert_eq!(drain(&mut r, 1, "t1").await, vec!["qor", "loe", "qof"]);
    assert_eq!(drain(&mut r, 1, "t2").await, vec!["qor", "loe", "lbf", "l"]);
    assert_eq!(drain(&mut r, 1, "t3").await, vec!["qor", "loe", "qof", "lbf", "l", "qbf"]);
    assert_eq!(drain(&mut r, 1, "hall").await, vec!["both"]);
    assert_eq!(drain(&mut r, 1, "hany").await, vec!["both", "only-a"]);

    // Invalid x-match on bind → 406.
    r.method(1, m::qbind("hall", "hx", "", table(&[("x-match", s_("bogus"))]))).await;
    let (code, text, _, _) = r.expect_channel_close(1).await;
    assert_eq!(code, 406);
    assert!(text.contains("Invalid x-match field value"), "{text}");
}

#[tokio::test]
async fn headers_with_x_modes_and_void_presence() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.call(1, m::x("hx", "headers")).await;
    for q in ["allx", "anyx", "void"] {
        r.declare(1, q).await;
    }
    let s_ = |v: &str| AMQPValue::LongString(v.into());
    r.call(1, m::qbind("allx", "hx", "", table(&[("x-match", s_("all-with-x")), ("x-k", s_("1"))]))).await;
    r.call(
        1,
        m::qbind("anyx", "hx", "", table(&[("x-match", s_("any-with-x")), ("x-k", s_("1")), ("z", s_("9"))])),
    )
    .await;
    r.call(1, m::qbind("void", "hx", "", table(&[("present", AMQPValue::Void)]))).await;
    let h = |pairs: &[(&str, AMQPValue)]| {
        props(amq_protocol::protocol::basic::AMQPProperties::default().with_headers(table(pairs)))
    };
    r.publish(1, "hx", "", false, &h(&[("x-k", s_("1"))]), b"xk").await;
    r.publish(1, "hx", "", false, &h(&[("present", AMQPValue::LongLongInt(5))]), b"present").await;
    assert_eq!(drain(&mut r, 1, "allx").await, vec!["xk"]);
    assert_eq!(drain(&mut r, 1, "anyx").await, vec!["xk"]);
    assert_eq!(drain(&mut r, 1, "void").await, vec!["present"]);
}

#[tokio::test]
async fn exchange_to_exchange_bindings_cycles_and_one_copy() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.call(1, m::x("a", "fanout")).await;
    r.call(1, m::x("b", "fanout")).await;
    r.call(1, m::x("c", "topic")).await;
    r.declare(1, "q").await;
    // a → b → a (cycle), a → c, b → q, c → q: q must get exactly one copy.
    r.call(1, m::xbind("b", "a", "")).await;
    r.call(1, m::xbind("a", "b", "")).await;
    r.call(1, m::xbind("c", "a", "")).await;
    r.call(1, m::qbind("q", "b", "", FieldTable::default())).await;
    r.call(1, m::qbind("q", "c", "#", FieldTable::default())).await;
    r.publish(1, "a", "k", false, &[], b"once").await;
    assert_eq!(drain(&mut r, 1, "q").await, vec!["once"]);
    // Unbind b from a: only a → c → q remains.
    r.call(1, m::xunbind("b", "a", "")).await;
    r.publish(1, "a", "k", false, &[], b"via-c").await;
    assert_eq!(drain(&mut r, 1, "q").await, vec!["via-c"]);
    // Unbinding something that is not bound is ok.
    r.call(1, m::xunbind("b", "a", "")).await;
    r.call(1, m::xunbind("nope", "a", "")).await;
    // exchange.bind to a missing exchange → 404.
    r.method(1, m::xbind("nope", "a", "")).await;
    assert_eq!(r.expect_channel_close(1).await.0, 404);
}

#[tokio::test]
async fn auto_delete_exchange_goes_with_its_last_binding() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.call(1, m::xdecl("ad", "direct", false, false, true, false, FieldTable::default())).await;
    r.declare(1, "adq").await;
    r.call(1, m::qbind("adq", "ad", "k", FieldTable::default())).await;
    r.call(1, m::qunbind("adq", "ad", "k")).await;
    r.method(1, m::xdecl("ad", "direct", true, false, false, false, FieldTable::default())).await;
    assert_eq!(r.expect_channel_close(1).await.0, 404);
}

#[tokio::test]
async fn alternate_exchange_gets_unroutable_messages() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.call(1, m::x("ae", "fanout")).await;
    r.declare(1, "unrouted").await;
    r.call(1, m::qbind("unrouted", "ae", "", FieldTable::default())).await;
    let args = table(&[("alternate-exchange", AMQPValue::LongString("ae".into()))]);
    r.call(1, m::xdecl("main", "direct", false, false, false, false, args)).await;
    r.declare(1, "routed").await;
    r.call(1, m::qbind("routed", "main", "yes", FieldTable::default())).await;
    r.publish(1, "main", "yes", true, &[], b"r").await;
    r.publish(1, "main", "no", true, &[], b"u").await; // mandatory: via AE counts as routed
    assert_eq!(drain(&mut r, 1, "routed").await, vec!["r"]);
    assert_eq!(drain(&mut r, 1, "unrouted").await, vec!["u"]);
    assert!(r.try_next_message(Duration::from_millis(200)).await.is_none(), "no basic.return for AE-routed");
    // Redeclare with a different AE → 406.
    let other = table(&[("alternate-exchange", AMQPValue::LongString("other".into()))]);
    r.method(1, m::xdecl("main", "direct", false, false, false, false, other)).await;
    let (code, text, _, _) = r.expect_channel_close(1).await;
    assert_eq!(code, 406);
    assert!(text.contains("inequivalent arg 'alternate-exchange'"), "{text}");
}

#[tokio::test]
async fn internal_exchange_refuses_publish_but_routes_e2e() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.call(1, m::xdecl("inner", "fanout", false, false, false, true, FieldTable::default())).await;
    r.call(1, m::x("outer", "fanout")).await;
    r.call(1, m::xbind("inner", "outer", "")).await;
    r.declare(1, "iq").await;
    r.call(1, m::qbind("iq", "inner", "", FieldTable::default())).await;
    r.publish(1, "outer", "", false, &[], b"through").await;
    assert_eq!(drain(&mut r, 1, "iq").await, vec!["through"]);
    r.publish(1, "inner", "", false, &[], b"direct").await;
    let (code, text, class, method) = r.expect_channel_close(1).await;
    assert_eq!((code, class, method), (403, 60, 40));
    assert_eq!(text, "ACCESS_REFUSED - cannot publish to internal exchange 'inner' in vhost '/'");
}

#[tokio::test]
async fn publish_to_missing_exchange_is_404() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.publish(1, "ghost", "k", false, &[], b"x").await;
    let (code, text, class, method) = r.expect_channel_close(1).await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (404, "NOT_FOUND - no exchange 'ghost' in vhost '/'", 60, 40)
    );
}

/// One channel publishes on while the exchange and the queue it reaches are
/// deleted and declared again: each publish goes where the definitions of
/// that moment say (the connection remembers its last exchange and
/// default-exchange queue, and must not use a deleted one).
#[tokio::test]
async fn publishes_follow_deletes_and_redeclares_on_one_channel() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    let mut admin = Raw::open(s.addr()).await;
    r.declare(1, "rc.a").await;
    r.declare(1, "rc.b").await;
    // Default exchange: a queue deleted and declared again by another
    // connection gets the later publishes; in between they are unroutable.
    r.publish(1, "", "rc.a", false, &[], b"1").await;
    admin.call(1, m::qdelete("rc.a", false, false)).await;
    r.publish(1, "", "rc.a", true, &[], b"2").await;
    let returned = r.next_message().await;
    assert!(
        matches!(returned.method, AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Return(_))),
        "{:?}",
        returned.method
    );
    assert_eq!(returned.body, b"2");
    admin.declare(1, "rc.a").await;
    r.publish(1, "", "rc.a", false, &[], b"3").await;
    assert_eq!(drain(&mut r, 1, "rc.a").await, vec!["3"]);

    // A named exchange deleted and declared again with another type and
    // other bindings routes by the new one.
    assert!(declare_ok(&r.call(1, m::x("rc.x", "direct")).await));
    r.call(1, m::qbind("rc.a", "rc.x", "k", FieldTable::default())).await;
    r.publish(1, "rc.x", "k", false, &[], b"4").await;
    admin.call(1, m::xdelete("rc.x", false)).await;
    assert!(declare_ok(&admin.call(1, m::x("rc.x", "fanout")).await));
    admin.call(1, m::qbind("rc.b", "rc.x", "", FieldTable::default())).await;
    r.publish(1, "rc.x", "k", false, &[], b"5").await;
    assert_eq!(drain(&mut r, 1, "rc.a").await, vec!["4"]);
    assert_eq!(drain(&mut r, 1, "rc.b").await, vec!["5"]);

    // Deleted and not declared again: 404 on the channel.
    admin.call(1, m::xdelete("rc.x", false)).await;
    r.publish(1, "rc.x", "k", false, &[], b"6").await;
    let (code, text, class, method) = r.expect_channel_close(1).await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (404, "NOT_FOUND - no exchange 'rc.x' in vhost '/'", 60, 40)
    );
}
