//! Policies and operator policies: set over the management API, applied at
//! once to existing queues and exchanges, combined with queue arguments as
//! RabbitMQ 3.13 does (numeric limits: the lowest wins; dead-lettering and
//! overflow: the argument wins; operator overflow beats the user policy),
//! highest priority wins, RabbitMQ's validation texts, kept across restarts.

use crate::common;

use amq_protocol::types::AMQPValue;
use common::*;
use serde_json::{Value, json};
use std::time::Duration;

async fn queue(s: &TestServer, name: &str) -> Value {
    http(mgmt(s), "GET", &format!("/api/queues/%2F/{name}"), GUEST, None).await.json()
}

fn ready(s: &TestServer, name: &str) -> u32 {
    s.broker().vhost("/").unwrap().queue(name).map(|q| q.message_count()).unwrap_or(0)
}

#[tokio::test]
async fn a_policy_applies_ttl_and_dead_lettering_to_an_existing_queue() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "p-work").await;
    r.declare(1, "p-dead").await;
    // Before the policy: messages stay.
    r.send_to(1, "p-work", b"before").await;
    let status = put(
        &s,
        "/api/policies/%2F/expire-work",
        json!({"pattern": "^p-work$", "apply-to": "queues", "priority": 1,
               "definition": {"message-ttl": 50, "dead-letter-exchange": "", "dead-letter-routing-key": "p-dead"}}),
    )
    .await;
    assert_eq!(status, 201);
    let q = queue(&s, "p-work").await;
    assert_eq!(q["policy"], "expire-work");
    assert_eq!(q["operator_policy"], Value::Null);
    assert_eq!(q["effective_policy_definition"]["message-ttl"], 50);
    // A message published now expires after 50 ms and is dead-lettered with
    // reason "expired"; the earlier one keeps the deadline it was given.
    r.send_to(1, "p-work", b"after").await;
    eventually("expired message dead-lettered", Duration::from_secs(5), || ready(&s, "p-dead") == 1).await;
    assert_eq!(ready(&s, "p-work"), 1, "the message queued before the policy has no TTL");
    r.call(1, m::consume("p-dead", "d", true, false, Default::default())).await;
    let msg = r.next_message().await;
    assert_eq!(msg.body, b"after");
    let props = amq_protocol::protocol::basic::parse_properties(&msg.props[..]).expect("props").1;
    let headers = props.headers().clone().expect("headers");
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else { panic!("x-death") };
    let AMQPValue::FieldTable(first) = &deaths.as_slice()[0] else { panic!("x-death entry") };
    assert_eq!(first.inner().get("reason"), Some(&AMQPValue::LongString("expired".into())));
    assert_eq!(first.inner().get("queue"), Some(&AMQPValue::LongString("p-work".into())));
    // Deleting the policy stops it: a new message stays.
    assert_eq!(http(mgmt(&s), "DELETE", "/api/policies/%2F/expire-work", GUEST, None).await.status, 204);
    assert_eq!(queue(&s, "p-work").await["policy"], Value::Null);
    r.send_to(1, "p-work", b"later").await;
    eventually("published", Duration::from_secs(5), || ready(&s, "p-work") == 2).await;
}

#[tokio::test]
async fn a_max_length_policy_trims_the_head_at_once_and_arguments_combine() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "len-q").await;
    for i in 0..10 {
        r.send_to(1, "len-q", format!("m{i}").as_bytes()).await;
    }
    eventually("10 queued", Duration::from_secs(5), || ready(&s, "len-q") == 10).await;
    put(&s, "/api/policies/%2F/short", json!({"pattern": "^len-", "definition": {"max-length": 3}})).await;
    assert_eq!(ready(&s, "len-q"), 3, "drop-head trims when the policy is applied");
    r.method(1, m::get("len-q", true)).await;
    let first = r.next_message().await;
    assert_eq!(first.body, b"m7", "the head was dropped, the newest kept");

    // The argument and the policy: the lower max-length wins either way.
    let five = table(&[("x-max-length", AMQPValue::LongInt(5))]);
    r.call(1, m::qdecl("len-arg5", false, false, false, false, five)).await;
    let two = table(&[("x-max-length", AMQPValue::LongInt(2))]);
    r.call(1, m::qdecl("len-arg2", false, false, false, false, two)).await;
    for q in ["len-arg5", "len-arg2"] {
        for i in 0..6 {
            r.send_to(1, q, format!("{i}").as_bytes()).await;
        }
    }
    eventually("limits applied", Duration::from_secs(5), || {
        ready(&s, "len-arg5") == 3 && ready(&s, "len-arg2") == 2
    })
    .await;
    // The declared argument wins for dead-lettering; the policy fills in
    // what the arguments leave out.
    let mine = table(&[("x-dead-letter-exchange", AMQPValue::LongString("mine".into()))]);
    r.call(1, m::qdecl("len-dlx", false, false, false, false, mine)).await;
    put(
        &s,
        "/api/policies/%2F/short",
        json!({"pattern": "^len-", "definition": {"max-length": 3, "dead-letter-exchange": "theirs"}}),
    )
    .await;
    let q = s.broker().vhost("/").unwrap().queue("len-dlx").unwrap();
    assert_eq!(q.args().dead_letter_exchange.as_deref(), Some("mine"));
    let plain = s.broker().vhost("/").unwrap().queue("len-q").unwrap();
    assert_eq!(plain.args().dead_letter_exchange.as_deref(), Some("theirs"));
}

#[tokio::test]
async fn operator_policies_cap_user_policies_and_the_highest_priority_wins() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "op-q").await;
    put(
        &s,
        "/api/policies/%2F/low",
        json!({"pattern": "^op", "priority": 1, "definition": {"max-length": 50, "message-ttl": 60000}}),
    )
    .await;
    put(
        &s,
        "/api/policies/%2F/high",
        json!({"pattern": "^op-", "priority": 2, "definition": {"max-length": 20}}),
    )
    .await;
    put(
        &s,
        "/api/operator-policies/%2F/cap",
        json!({"pattern": ".*", "apply-to": "queues", "definition": {"max-length": 10, "overflow": "reject-publish"}}),
    )
    .await;
    let q = queue(&s, "op-q").await;
    assert_eq!(q["policy"], "high", "only the highest-priority policy applies");
    assert_eq!(q["operator_policy"], "cap");
    assert_eq!(q["effective_policy_definition"], json!({"max-length": 10, "overflow": "reject-publish"}));
    let args = s.broker().vhost("/").unwrap().queue("op-q").unwrap().args();
    assert_eq!(args.max_length, Some(10));
    assert_eq!(args.message_ttl, None, "the lower-priority policy contributes nothing");
    assert_eq!(args.overflow.as_deref(), Some("reject-publish"));
    // Operator policies accept only their keys, with RabbitMQ's text (not HTML-escaped).
    let bad = http(
        mgmt(&s),
        "PUT",
        "/api/operator-policies/%2F/bad",
        GUEST,
        Some(r#"{"pattern":".*","definition":{"dead-letter-exchange":"d"}}"#),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.json()["reason"],
        "Validation failed\n\n[{<<\"dead-letter-exchange\">>,<<\"d\">>}] are not recognised policy settings\n"
    );
    let listed = http(mgmt(&s), "GET", "/api/policies/%2F", GUEST, None).await.json();
    let names: Vec<&str> = listed.as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["low", "high"], "sorted by priority");
    assert_eq!(
        listed[1],
        json!({"vhost": "/", "name": "high", "pattern": "^op-", "apply-to": "all", "definition": {"max-length": 20}, "priority": 2})
    );
}

#[tokio::test]
async fn an_alternate_exchange_policy_catches_unroutable_messages() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.call(1, m::x("orders", "direct")).await;
    r.call(1, m::x("unrouted", "fanout")).await;
    r.declare(1, "lost").await;
    r.call(1, m::qbind("lost", "unrouted", "", Default::default())).await;
    put(&s, "/api/policies/%2F/ae", json!({"pattern": "^orders$", "apply-to": "exchanges", "definition": {"alternate-exchange": "unrouted"}}))
        .await;
    let x = http(mgmt(&s), "GET", "/api/exchanges/%2F/orders", GUEST, None).await.json();
    assert_eq!(x["policy"], "ae");
    r.publish(1, "orders", "nobody-bound", false, &[], b"x").await;
    eventually("caught by the AE", Duration::from_secs(5), || ready(&s, "lost") == 1).await;
    let plain = http(mgmt(&s), "GET", "/api/exchanges/%2F/unrouted", GUEST, None).await.json();
    assert!(plain.get("policy").is_none(), "no policy key where none applies, as RabbitMQ");
}

#[tokio::test]
async fn policy_validation_answers_rabbitmq_texts() {
    let s = start().await;
    let m = mgmt(&s);
    let cases = [
        (
            r#"{"pattern":".*","definition":{"foo":"bar"}}"#,
            "Validation failed\n\n[{&lt;&lt;\"foo\"&gt;&gt;,&lt;&lt;\"bar\"&gt;&gt;}] are not recognised policy settings\n",
        ),
        (
            r#"{"pattern":".*","definition":{"message-ttl":"abc"}}"#,
            "Validation failed\n\n&lt;&lt;\"abc\"&gt;&gt; is not a valid message TTL\n",
        ),
        (
            r#"{"pattern":".*","definition":{"expires":0}}"#,
            "Validation failed\n\n0 is not a valid queue expiry\n",
        ),
        (
            r#"{"pattern":".*","definition":{"overflow":"nope"}}"#,
            "Validation failed\n\n&lt;&lt;\"nope\"&gt;&gt; is not a valid overflow value\n",
        ),
        (r#"{"pattern":".*","definition":{}}"#, "Validation failed\n\nno policy provided\n"),
        (
            r#"{"pattern":".*","priority":"high","definition":{"max-length":1}}"#,
            "Validation failed\n\npriority should be a number, actually was &lt;&lt;\"high\"&gt;&gt;\n",
        ),
        (r#"{"definition":{"max-length":1}}"#, "[{key_missing,pattern}]"),
        (r#"{"pattern":".*"}"#, "[{key_missing,definition}]"),
    ];
    for (body, reason) in cases {
        let r = http(m, "PUT", "/api/policies/%2F/p", GUEST, Some(body)).await;
        assert_eq!((r.status, r.json()), (400, json!({"error": "bad_request", "reason": reason})), "{body}");
    }
    let r = http(
        m,
        "PUT",
        "/api/policies/novhost/p",
        GUEST,
        Some(r#"{"pattern":".*","definition":{"max-length":1}}"#),
    )
    .await;
    assert_eq!((r.status, r.json()), (404, json!({"error": "not_found", "reason": "vhost_not_found"})));
    assert_eq!(http(m, "GET", "/api/policies/%2F/p", GUEST, None).await.status, 404);
}

#[tokio::test]
async fn policies_survive_a_restart_and_apply_to_recovered_queues() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.call(1, m::qdecl("kept-q", false, true, false, false, Default::default())).await;
    drop(r);
    put(&s, "/api/policies/%2F/keep", json!({"pattern": "^kept-", "definition": {"max-length": 7}})).await;
    put(
        &s,
        "/api/operator-policies/%2F/op",
        json!({"pattern": "^kept-", "definition": {"message-ttl": 999}}),
    )
    .await;
    let s = s.restart().await;
    let q = queue(&s, "kept-q").await;
    assert_eq!((q["policy"].clone(), q["operator_policy"].clone()), (json!("keep"), json!("op")));
    let args = s.broker().vhost("/").unwrap().queue("kept-q").unwrap().args();
    assert_eq!((args.max_length, args.message_ttl), (Some(7), Some(999)));
}

#[tokio::test]
async fn an_expires_policy_deletes_an_unused_queue() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "idle-q").await;
    r.declare(1, "busy-q").await;
    r.call(1, m::consume("busy-q", "c", true, false, Default::default())).await;
    put(
        &s,
        "/api/policies/%2F/idle",
        json!({"pattern": "-q$", "apply-to": "queues", "definition": {"expires": 100}}),
    )
    .await;
    let v = s.broker().vhost("/").unwrap();
    eventually("the unused queue expires", Duration::from_secs(5), || !v.queues.contains_key("idle-q")).await;
    assert!(v.queues.contains_key("busy-q"), "a queue with a consumer is in use");
}
