//! Queues: declare variants, equivalence texts, exclusivity, reserved names,
//! server-named queues, the channel's last declared queue, purge, delete.

use crate::common;

use amq_protocol::protocol::{AMQPClass, connection, queue};
use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use std::time::Duration;

fn declare_ok(r: AMQPClass) -> queue::DeclareOk {
    match r {
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => ok,
        other => panic!("expected declare-ok, got {other:?}"),
    }
}

const LOCKED: &str = "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'mine' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.";

#[tokio::test]
async fn server_named_queue_and_last_declared_queue() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    let ok = declare_ok(r.call(1, m::q("")).await);
    let name = ok.queue.to_string();
    assert!(name.starts_with("amq.gen-"), "{name}");
    assert_eq!(name.len(), "amq.gen-".len() + 22);
    assert!(name["amq.gen-".len()..].chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    // "" now means that queue for bind, publish via binding, get, purge, consume, delete.
    r.call(1, m::qbind("", "amq.direct", "lastq", FieldTable::default())).await;
    r.publish(1, "amq.direct", "lastq", false, &[], b"one").await;
    r.publish(1, "amq.direct", "lastq", false, &[], b"two").await;
    r.method(1, m::get("", true)).await;
    assert_eq!(r.next_message().await.body, b"one");
    let purged = r.call(1, m::qpurge("")).await;
    assert!(matches!(purged, AMQPClass::Queue(queue::AMQPMethod::PurgeOk(p)) if p.message_count == 1));
    let deleted = r.call(1, m::qdelete("", false, false)).await;
    assert!(matches!(deleted, AMQPClass::Queue(queue::AMQPMethod::DeleteOk(_))));
    // queue.declare is not among the methods RabbitMQ expands "" for: a
    // passive declare of "" looks for a queue named "" (3.10.8 answers so;
    // `rabbit_channel:expand_shortcuts/2` in 3.13 has no queue.declare).
    declare_ok(r.call(1, m::q("bound-by-name")).await);
    r.method(1, m::qdecl("", true, false, false, false, FieldTable::default())).await;
    let (code, text, class, method) = r.expect_channel_close(1).await;
    assert_eq!((code, text.as_str(), class, method), (404, "NOT_FOUND - no queue '' in vhost '/'", 50, 10));

    // A fresh channel has no last declared queue.
    r.open_channel(2).await;
    r.method(2, m::get("", true)).await;
    let (code, text, class, method) = r.expect_channel_close(2).await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (404, "NOT_FOUND - no previously declared queue", 60, 70)
    );
}

#[tokio::test]
async fn passive_declare_missing_and_counts() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.method(1, m::qdecl("nothere", true, false, false, false, FieldTable::default())).await;
    let (code, text, class, method) = r.expect_channel_close(1).await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (404, "NOT_FOUND - no queue 'nothere' in vhost '/'", 50, 10)
    );
    r.open_channel(1).await;
    r.declare(1, "counted").await;
    r.send_to(1, "counted", b"a").await;
    r.send_to(1, "counted", b"b").await;
    r.method(1, m::consume("counted", "c1", false, false, FieldTable::default())).await;
    r.next_message().await;
    r.next_message().await;
    // declare-ok counts ready messages only (both are unacked now) and consumers.
    assert_eq!(r.counts(1, "counted").await, (0, 1));
}

#[tokio::test]
async fn redeclare_equivalence_texts() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.call(1, m::qdecl("eq", false, true, false, false, FieldTable::default())).await;
    r.method(1, m::qdecl("eq", false, false, false, false, FieldTable::default())).await;
    let (code, text, _, _) = r.expect_channel_close(1).await;
    assert_eq!(code, 406);
    assert_eq!(
        text,
        "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'eq' in vhost '/': received 'false' but current is 'true'"
    );
    r.open_channel(1).await;
    r.method(1, m::qdecl("eq", false, true, false, true, FieldTable::default())).await;
    let (_, text, _, _) = r.expect_channel_close(1).await;
    assert_eq!(
        text,
        "PRECONDITION_FAILED - inequivalent arg 'auto_delete' for queue 'eq' in vhost '/': received 'true' but current is 'false'"
    );
    r.open_channel(1).await;
    let ttl = table(&[("x-message-ttl", AMQPValue::LongInt(10))]);
    r.method(1, m::qdecl("eq", false, true, false, false, ttl)).await;
    let (_, text, _, _) = r.expect_channel_close(1).await;
    assert_eq!(
        text,
        "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'eq' in vhost '/': received the value '10' of type 'signedint' but current is none"
    );
    // Unknown arguments are not compared.
    r.open_channel(1).await;
    let other = table(&[("x-custom", AMQPValue::LongInt(1))]);
    declare_ok(r.call(1, m::qdecl("eq", false, true, false, false, other)).await);
}

#[tokio::test]
async fn argument_validation_and_celery_arguments() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.method(
        1,
        m::qdecl("p", false, false, false, false, table(&[("x-max-priority", AMQPValue::LongInt(300))])),
    )
    .await;
    let (code, text, _, _) = r.expect_channel_close(1).await;
    assert_eq!(code, 406);
    assert_eq!(
        text,
        "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'p' in vhost '/': {max_value_exceeded,300}"
    );
    r.open_channel(1).await;
    r.method(1, m::qdecl("e", false, false, false, false, table(&[("x-expires", AMQPValue::LongInt(0))])))
        .await;
    let (code, text, _, _) = r.expect_channel_close(1).await;
    assert_eq!(
        (code, text.as_str()),
        (406, "PRECONDITION_FAILED - invalid arg 'x-expires' for queue 'e' in vhost '/': {value_zero,0}")
    );
    r.open_channel(1).await;
    r.method(
        1,
        m::qdecl(
            "d",
            false,
            false,
            false,
            false,
            table(&[("x-dead-letter-routing-key", AMQPValue::LongString("k".into()))]),
        ),
    )
    .await;
    let (code, text, _, _) = r.expect_channel_close(1).await;
    assert_eq!(code, 406);
    assert!(text.ends_with("routing_key_but_no_dlx_defined"), "{text}");
    // What Celery's remote control declares is accepted.
    r.open_channel(1).await;
    let celery =
        table(&[("x-message-ttl", AMQPValue::LongInt(300000)), ("x-expires", AMQPValue::LongInt(10000))]);
    declare_ok(r.call(1, m::qdecl("celery@host.celery.pidbox", false, false, false, true, celery)).await);
}

#[tokio::test]
async fn reserved_prefix_is_403() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.method(1, m::q("amq.mine")).await;
    let (code, text, class, method) = r.expect_channel_close(1).await;
    assert_eq!((code, class, method), (403, 50, 10));
    assert_eq!(text, "ACCESS_REFUSED - queue name 'amq.mine' contains reserved prefix 'amq.*'");
    // `amq_` (aio-pika's robust channels) is not reserved.
    r.open_channel(1).await;
    r.declare(1, "amq_not_reserved").await;
}

#[tokio::test]
async fn exclusive_queue_is_locked_to_its_connection_and_deleted_with_it() {
    let s = start().await;
    let mut owner = Raw::open(s.addr()).await;
    owner.call(1, m::qdecl("mine", false, false, true, false, FieldTable::default())).await;
    let mut other = Raw::open(s.addr()).await;
    let attempts = [
        m::qdecl("mine", true, false, false, false, FieldTable::default()),
        m::qdecl("mine", false, false, true, false, FieldTable::default()),
        m::consume("mine", "", false, false, FieldTable::default()),
        m::get("mine", false),
        m::qpurge("mine"),
        m::qbind("mine", "amq.fanout", "", FieldTable::default()),
        m::qdelete("mine", false, false),
    ];
    for a in attempts {
        other.method(1, a).await;
        let (code, text, _, _) = other.expect_channel_close(1).await;
        assert_eq!((code, text.as_str()), (405, LOCKED));
        other.open_channel(1).await;
    }
    // Unbinding: RabbitMQ looks for the binding first, so removing one that
    // does not exist succeeds; removing one that does is refused.
    owner.call(1, m::qbind("mine", "amq.fanout", "k", FieldTable::default())).await;
    let ok = other.call(1, m::qunbind("mine", "amq.fanout", "not-bound")).await;
    assert!(matches!(ok, AMQPClass::Queue(queue::AMQPMethod::UnbindOk(_))), "{ok:?}");
    other.method(1, m::qunbind("mine", "amq.fanout", "k")).await;
    let (code, text, _, _) = other.expect_channel_close(1).await;
    assert_eq!((code, text.as_str()), (405, LOCKED));
    // The owner redeclaring it non-exclusive is also refused.
    owner.method(1, m::q("mine")).await;
    assert_eq!(owner.expect_channel_close(1).await.0, 405);
    drop(owner);
    eventually("exclusive queue deleted with its connection", Duration::from_secs(5), || {
        !s.broker().vhost("/").expect("vhost").queues.contains_key("mine")
    })
    .await;
}

/// RabbitMQ deletes a connection's exclusive queues before it answers
/// `connection.close`: a client that reconnects on close-ok can declare the
/// same exclusive queues at once instead of getting 405 RESOURCE_LOCKED.
/// A guard of that order: it passed before the deletion moved ahead of
/// close-ok too (the reader deleted them right after queueing close-ok, and
/// no client saw close-ok first in practice); two runtime threads let the
/// second connection run while the first tears down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queues_are_gone_when_close_ok_arrives() {
    let s = start().await;
    let mut owner = Raw::open(s.addr()).await;
    const N: usize = 3000;
    for i in 0..N {
        owner.call(1, m::qdecl(&format!("ex{i}"), false, false, true, false, FieldTable::default())).await;
    }
    let mut next = Raw::open(s.addr()).await;
    let close = AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
        reply_code: 200,
        reply_text: "bye".into(),
        class_id: 0,
        method_id: 0,
    }));
    let reply = owner.call(0, close).await;
    assert!(matches!(reply, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))));
    let last = format!("ex{}", N - 1);
    let ok =
        declare_ok(next.call(1, m::qdecl(&last, false, false, true, false, FieldTable::default())).await);
    assert_eq!(ok.queue.as_str(), last);
    assert!(!s.broker().vhost("/").expect("vhost").queues.contains_key("ex0"));
}

#[tokio::test]
async fn auto_delete_only_after_a_consumer_existed() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.call(1, m::qdecl("ad", false, false, false, true, FieldTable::default())).await;
    r.send_to(1, "ad", b"x").await;
    assert_eq!(r.counts(1, "ad").await, (1, 0)); // never consumed: stays
    r.call(1, m::consume("ad", "t1", true, false, FieldTable::default())).await;
    r.next_message().await;
    r.call(1, m::cancel("t1")).await;
    r.method(1, m::qdecl("ad", true, false, false, false, FieldTable::default())).await;
    assert_eq!(r.expect_channel_close(1).await.0, 404);
}

#[tokio::test]
async fn purge_and_delete_rules() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "pd").await;
    for _ in 0..3 {
        r.send_to(1, "pd", b"m").await;
    }
    r.method(1, m::qdelete("pd", false, true)).await;
    let (code, text, class, method) = r.expect_channel_close(1).await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (406, "PRECONDITION_FAILED - queue 'pd' in vhost '/' not empty", 50, 40)
    );
    r.open_channel(1).await;
    let purged = r.call(1, m::qpurge("pd")).await;
    assert!(matches!(purged, AMQPClass::Queue(queue::AMQPMethod::PurgeOk(p)) if p.message_count == 3));
    r.call(1, m::consume("pd", "c", false, false, FieldTable::default())).await;
    r.open_channel(2).await;
    r.method(2, m::qdelete("pd", true, false)).await;
    let (code, text, _, _) = r.expect_channel_close(2).await;
    assert_eq!((code, text.as_str()), (406, "PRECONDITION_FAILED - queue 'pd' in vhost '/' in use"));
    r.open_channel(2).await;
    r.send_to(2, "pd", b"unacked").await;
    let deleted = r.call(2, m::qdelete("pd", false, false)).await;
    assert!(matches!(deleted, AMQPClass::Queue(queue::AMQPMethod::DeleteOk(_))));
    // Deleting a missing queue is ok with 0 messages.
    let again = r.call(2, m::qdelete("pd", false, false)).await;
    assert!(matches!(again, AMQPClass::Queue(queue::AMQPMethod::DeleteOk(d)) if d.message_count == 0));
}

#[tokio::test]
async fn bind_and_unbind_queue() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "bq").await;
    r.call(1, m::qbind("bq", "amq.topic", "a.*", FieldTable::default())).await;
    r.publish(1, "amq.topic", "a.b", false, &[], b"bound").await;
    r.call(1, m::qunbind("bq", "amq.topic", "a.*")).await;
    r.publish(1, "amq.topic", "a.b", false, &[], b"unbound").await;
    assert_eq!(r.counts(1, "bq").await.0, 1);
    // Unbinding a binding that does not exist is ok.
    r.call(1, m::qunbind("bq", "amq.topic", "never")).await;
    r.method(1, m::qbind("missing", "amq.topic", "k", FieldTable::default())).await;
    let (code, text, _, _) = r.expect_channel_close(1).await;
    assert_eq!((code, text.as_str()), (404, "NOT_FOUND - no queue 'missing' in vhost '/'"));
    r.open_channel(1).await;
    r.method(1, m::qbind("bq", "missing-x", "k", FieldTable::default())).await;
    let (code, text, _, _) = r.expect_channel_close(1).await;
    assert_eq!((code, text.as_str()), (404, "NOT_FOUND - no exchange 'missing-x' in vhost '/'"));
}

#[tokio::test]
async fn deleting_a_consumed_queue_answers_delete_ok_before_the_cancel() {
    use amq_protocol::protocol::basic;
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "dq").await;
    r.call(1, m::consume("dq", "own", true, false, FieldTable::default())).await;
    r.open_channel(2).await;
    r.call(2, m::consume("dq", "other", true, false, FieldTable::default())).await;
    r.method(1, m::qdelete("dq", false, false)).await;
    // RabbitMQ's channel answers the delete first and learns of the queue's
    // end afterwards: on the deleting channel delete-ok comes before the
    // cancel (py-amqp's queue_delete() raises ConsumerCancelled otherwise);
    // the consumer on channel 2 is cancelled too.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match r.try_recv(Duration::from_secs(5)).await {
            Some(In::Method(ch, AMQPClass::Queue(queue::AMQPMethod::DeleteOk(d)))) => {
                assert_eq!(d.message_count, 0);
                seen.push((ch, "delete-ok".to_string()));
            }
            Some(In::Method(ch, AMQPClass::Basic(basic::AMQPMethod::Cancel(c)))) => {
                assert!(c.nowait);
                seen.push((ch, format!("cancel {}", c.consumer_tag.as_str())));
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("only {seen:?} within 5 s"),
        }
    }
    let own: Vec<&str> = seen.iter().filter(|(ch, _)| *ch == 1).map(|(_, what)| what.as_str()).collect();
    assert_eq!(own, ["delete-ok", "cancel own"], "{seen:?}");
    assert!(seen.contains(&(2, "cancel other".to_string())), "{seen:?}");
    // Both channels are still usable.
    r.declare(1, "dq2").await;
    r.declare(2, "dq3").await;
}
