//! Access control: users, vhosts, permissions and topic permissions set over
//! the management API, enforced over AMQP with RabbitMQ 3.13's reply codes
//! and texts, checked by a user's existing connections as soon as they
//! change, and persisted across a restart.

use crate::common;

use amq_protocol::protocol::{AMQPClass, channel, connection};
use common::*;
use serde_json::{Value, json};

/// A user `name`/`pw` with the given permissions on "/".
async fn user_with(s: &TestServer, name: &str, tags: &str, perms: (&str, &str, &str)) {
    assert_eq!(put(s, &format!("/api/users/{name}"), json!({"password": "pw", "tags": tags})).await, 201);
    let (c, w, r) = perms;
    let body = json!({"configure": c, "write": w, "read": r});
    assert_eq!(put(s, &format!("/api/permissions/%2F/{name}"), body).await, 201);
}

/// Logs in as `user` and opens channel 1.
async fn open_as(s: &TestServer, user: &str) -> Raw {
    let mut r = Raw::open_as(s.addr(), user, "pw", "/").await;
    match r.recv().await {
        In::Method(0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))) => {}
        other => panic!("expected open-ok, got {other:?}"),
    }
    r.open_channel(1).await;
    r
}

/// Sends `m` on channel 1, expects a channel.close, reopens the channel and
/// returns (code, text, class, method).
async fn refused(r: &mut Raw, m: AMQPClass) -> (u16, String, u16, u16) {
    match r.call(1, m).await {
        AMQPClass::Channel(channel::AMQPMethod::Close(c)) => {
            r.method(1, m::ch_close_ok()).await;
            r.open_channel(1).await;
            (c.reply_code, c.reply_text.to_string(), c.class_id, c.method_id)
        }
        other => panic!("expected channel.close, got {other:?}"),
    }
}

async fn publish_refused(r: &mut Raw, exchange: &str, key: &str) -> (u16, String) {
    r.publish(1, exchange, key, false, &[], b"x").await;
    let (code, text, class, method) = r.expect_channel_close(1).await;
    assert_eq!((class, method), (60, 40), "the failing method is basic.publish");
    r.open_channel(1).await;
    (code, text)
}

#[tokio::test]
async fn permissions_are_enforced_with_rabbitmq_texts() {
    let s = start().await;
    user_with(&s, "worker", "", ("^w-", "^w-", "^w-")).await;
    let mut guest = Raw::open(s.addr()).await;
    guest.declare(1, "guest-q").await;
    guest.call(1, m::x("guest-x", "direct")).await;

    let mut r = open_as(&s, "worker").await;
    // configure on queue.declare
    assert_eq!(
        refused(&mut r, m::q("other")).await,
        (
            403,
            "ACCESS_REFUSED - configure access to queue 'other' in vhost '/' refused for user 'worker'"
                .into(),
            50,
            10
        )
    );
    r.declare(1, "w-q").await;
    // configure on exchange.declare
    let (code, text, _, _) = refused(&mut r, m::x("x-other", "fanout")).await;
    assert_eq!(code, 403);
    assert_eq!(
        text,
        "ACCESS_REFUSED - configure access to exchange 'x-other' in vhost '/' refused for user 'worker'"
    );
    r.call(1, m::x("w-x", "fanout")).await;
    // read on the source of a binding
    let (_, text, _, _) = refused(&mut r, m::qbind("w-q", "guest-x", "k", Default::default())).await;
    assert_eq!(
        text,
        "ACCESS_REFUSED - read access to exchange 'guest-x' in vhost '/' refused for user 'worker'"
    );
    r.call(1, m::qbind("w-q", "w-x", "", Default::default())).await;
    // read on consume / get / purge of someone else's queue
    let (_, text, _, _) =
        refused(&mut r, m::consume("guest-q", "c1", false, false, Default::default())).await;
    assert_eq!(
        text,
        "ACCESS_REFUSED - read access to queue 'guest-q' in vhost '/' refused for user 'worker'"
    );
    let (_, text, _, _) = refused(&mut r, m::get("guest-q", true)).await;
    assert!(text.starts_with("ACCESS_REFUSED - read access to queue 'guest-q'"), "{text}");
    // configure on delete
    let (_, text, _, _) = refused(&mut r, m::qdelete("guest-q", false, false)).await;
    assert!(text.starts_with("ACCESS_REFUSED - configure access to queue 'guest-q'"), "{text}");
    // write on publish: the default exchange is checked as amq.default, and
    // the check comes before the exchange lookup (403, not 404).
    assert_eq!(
        publish_refused(&mut r, "", "w-q").await,
        (
            403,
            "ACCESS_REFUSED - write access to exchange 'amq.default' in vhost '/' refused for user 'worker'"
                .into()
        )
    );
    assert_eq!(publish_refused(&mut r, "no-such-x", "k").await.0, 403);
    // Allowed operations work end to end.
    r.publish(1, "w-x", "", false, &[], b"hello").await;
    eventually("message routed", std::time::Duration::from_secs(5), || {
        s.broker().vhost("/").unwrap().queue("w-q").unwrap().message_count() == 1
    })
    .await;
    // Passive declares need no permission.
    assert_eq!(guest.counts(1, "guest-q").await, (0, 0));
    assert_eq!(r.counts(1, "guest-q").await, (0, 0));

    // Revoking write applies to the open connection at once.
    put(&s, "/api/permissions/%2F/worker", json!({"configure": "^w-", "write": "", "read": "^w-"})).await;
    let (_, text) = publish_refused(&mut r, "w-x", "").await;
    assert_eq!(
        text,
        "ACCESS_REFUSED - write access to exchange 'w-x' in vhost '/' refused for user 'worker'"
    );
}

#[tokio::test]
async fn dead_letter_and_alternate_exchanges_need_write_when_created() {
    let s = start().await;
    user_with(&s, "w", "", ("^w-", "^w-", "^w-")).await;
    let mut r = open_as(&s, "w").await;
    let dlx = table(&[("x-dead-letter-exchange", amq_protocol::types::AMQPValue::LongString("dlx".into()))]);
    let (_, text, _, _) = refused(&mut r, m::qdecl("w-dl", false, false, false, false, dlx)).await;
    assert_eq!(text, "ACCESS_REFUSED - write access to exchange 'dlx' in vhost '/' refused for user 'w'");
    let ae = table(&[("alternate-exchange", amq_protocol::types::AMQPValue::LongString("ae".into()))]);
    let (_, text, _, _) = refused(&mut r, m::xdecl("w-ae", "direct", false, false, false, false, ae)).await;
    assert_eq!(text, "ACCESS_REFUSED - write access to exchange 'ae' in vhost '/' refused for user 'w'");
}

#[tokio::test]
async fn vhost_access_is_checked_at_connection_open() {
    let s = start().await;
    assert_eq!(put(&s, "/api/users/nobody", json!({"password": "pw", "tags": ""})).await, 201);
    let mut r = Raw::open_as(s.addr(), "nobody", "pw", "/").await;
    let (code, text, class, method) = r.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (530, "NOT_ALLOWED - access to vhost '/' refused for user 'nobody'", 10, 40)
    );
    // A new vhost: its creator (guest) gets full access; others need a grant.
    assert_eq!(put(&s, "/api/vhosts/tenant", json!({"description": "t"})).await, 201);
    let mut g = Raw::open_as(s.addr(), "guest", "guest", "tenant").await;
    assert!(matches!(
        g.recv().await,
        In::Method(0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)))
    ));
    put(&s, "/api/permissions/tenant/nobody", json!({"configure": "", "write": "", "read": ""})).await;
    // Any permission entry opens the vhost, even an empty one.
    let mut n = Raw::open_as(s.addr(), "nobody", "pw", "tenant").await;
    assert!(matches!(
        n.recv().await,
        In::Method(0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)))
    ));
    // Deleting the vhost closes its connections with 320.
    assert_eq!(http(mgmt(&s), "DELETE", "/api/vhosts/tenant", GUEST, None).await.status, 204);
    let (code, text, _, _) = g.expect_connection_close().await;
    assert_eq!((code, text.as_str()), (320, "CONNECTION_FORCED - vhost deleted"));
}

#[tokio::test]
async fn topic_permissions_check_routing_and_binding_keys() {
    let s = start().await;
    user_with(&s, "t", "", (".*", ".*", ".*")).await;
    put(
        &s,
        "/api/topic-permissions/%2F/t",
        json!({"exchange": "amq.topic", "write": "^{username}\\.", "read": "^public\\."}),
    )
    .await;
    let mut r = open_as(&s, "t").await;
    r.declare(1, "tq").await;
    r.publish(1, "amq.topic", "t.news", false, &[], b"ok").await;
    assert_eq!(
        publish_refused(&mut r, "amq.topic", "other.news").await,
        (
            403,
            "ACCESS_REFUSED - write access to topic 'other.news' in exchange 'amq.topic' in vhost '/' refused for user 't'"
                .into()
        )
    );
    r.call(1, m::qbind("tq", "amq.topic", "public.#", Default::default())).await;
    let (_, text, _, _) = refused(&mut r, m::qbind("tq", "amq.topic", "secret.#", Default::default())).await;
    assert_eq!(
        text,
        "ACCESS_REFUSED - read access to topic 'secret.#' in exchange 'amq.topic' in vhost '/' refused for user 't'"
    );
    // Other exchanges (no topic permission for them) are not restricted.
    r.publish(1, "amq.fanout", "anything", false, &[], b"ok").await;
    r.call(1, m::qbind("tq", "amq.direct", "secret", Default::default())).await;
    let listed = http(mgmt(&s), "GET", "/api/topic-permissions/%2F/t", GUEST, None).await.json();
    assert_eq!(
        listed,
        json!([{"user": "t", "vhost": "/", "exchange": "amq.topic", "write": "^{username}\\.", "read": "^public\\."}])
    );
}

#[tokio::test]
async fn permission_api_shapes_and_errors() {
    let s = start().await;
    let m = mgmt(&s);
    let sample: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../shared/docs/mgmt-samples/api-permissions.json"),
        )
        .expect("sample"),
    )
    .expect("json");
    let got = http(m, "GET", "/api/permissions", GUEST, None).await.json();
    assert_eq!(got, sample, "the default grant is RabbitMQ's, key for key");
    let one = http(m, "GET", "/api/permissions/%2F/guest", GUEST, None).await.json();
    assert_eq!(one, sample[0]);
    let r = http(
        m,
        "PUT",
        "/api/permissions/%2F/ghost",
        GUEST,
        Some(r#"{"configure":".*","write":".*","read":".*"}"#),
    )
    .await;
    assert_eq!(
        (r.status, r.json()),
        (400, json!({"error": "bad_request", "reason": "vhost_or_user_not_found"}))
    );
    put(&s, "/api/users/u1", json!({"password": "pw", "tags": ["management"]})).await;
    let r =
        http(m, "PUT", "/api/permissions/%2F/u1", GUEST, Some(r#"{"configure":".*","write":".*"}"#)).await;
    assert_eq!((r.status, r.json()["reason"].clone()), (400, json!("[{key_missing,read}]")));
    let r =
        http(m, "PUT", "/api/permissions/%2F/u1", GUEST, Some(r#"{"configure":"(","write":"","read":""}"#))
            .await;
    assert_eq!(r.status, 400, "an invalid regex is refused");
    // Administrator-only resources answer 401 not_authorised to others.
    let r = http(m, "GET", "/api/users", Some(("u1", "pw")), None).await;
    assert_eq!(
        (r.status, r.json()),
        (401, json!({"error": "not_authorised", "reason": "Not administrator user"}))
    );
    assert_eq!(http(m, "DELETE", "/api/permissions/%2F/u1", GUEST, None).await.status, 404);
    let users = http(m, "GET", "/api/users/without-permissions", GUEST, None).await.json();
    assert_eq!(users.as_array().map(|a| a.len()), Some(1));
    assert_eq!(users[0]["name"], "u1");
    assert_eq!(users[0]["tags"], json!(["management"]));
    assert_eq!(http(m, "DELETE", "/api/users/u1", GUEST, None).await.status, 204);
    assert_eq!(http(m, "GET", "/api/users/u1", GUEST, None).await.status, 404);
}

#[tokio::test]
async fn a_monitoring_user_cannot_change_anything_over_http() {
    let s = start().await;
    user_with(&s, "mon", "monitoring", (".*", ".*", ".*")).await;
    let m = mgmt(&s);
    let who = Some(("mon", "pw"));
    assert_eq!(http(m, "GET", "/api/queues", who, None).await.status, 200);
    for (method, path, body) in [
        ("PUT", "/api/queues/%2F/mq", "{}"),
        ("PUT", "/api/exchanges/%2F/mx", r#"{"type":"direct"}"#),
        ("PUT", "/api/users/evil", r#"{"password":"x","tags":"administrator"}"#),
        ("PUT", "/api/vhosts/evil", "{}"),
        ("PUT", "/api/permissions/%2F/mon", r#"{"configure":".*","write":".*","read":".*"}"#),
        ("PUT", "/api/policies/%2F/p", r#"{"pattern":".*","definition":{"max-length":1}}"#),
        ("DELETE", "/api/queues/%2F/amq.x", ""),
        ("DELETE", "/api/users/guest", ""),
    ] {
        let r = http(m, method, path, who, Some(body)).await;
        assert!(r.status == 401 || r.status == 403, "{method} {path} by a monitoring user: {}", r.status);
    }
    let b = s.broker();
    assert!(!b.vhost("/").unwrap().queues.contains_key("mq"));
    assert!(!b.users.contains_key("evil") && b.users.contains_key("guest") && b.vhost("evil").is_none());
}

#[tokio::test]
async fn users_vhosts_and_permissions_survive_a_restart() {
    let s = start().await;
    user_with(&s, "keeper", "policymaker", ("^k", "^k", "^k")).await;
    put(&s, "/api/vhosts/kept", json!({"description": "stays", "tags": "a,b"})).await;
    put(&s, "/api/permissions/kept/keeper", json!({"configure": "", "write": "^x", "read": ""})).await;
    put(
        &s,
        "/api/topic-permissions/kept/keeper",
        json!({"exchange": "amq.topic", "write": "^a", "read": "^b"}),
    )
    .await;
    let s = s.restart().await;
    let m = mgmt(&s);
    let perms = http(m, "GET", "/api/users/keeper/permissions", GUEST, None).await.json();
    assert_eq!(perms.as_array().map(|a| a.len()), Some(2), "{perms}");
    let v = http(m, "GET", "/api/vhosts/kept", GUEST, None).await.json();
    assert_eq!((v["description"].clone(), v["tags"].clone()), (json!("stays"), json!(["a", "b"])));
    let t = http(m, "GET", "/api/topic-permissions/kept/keeper", GUEST, None).await.json();
    assert_eq!(t[0]["write"], "^a");
    // The password survives too (stored as RabbitMQ's salted hash).
    let mut r = open_as(&s, "keeper").await;
    r.declare(1, "k-q").await;
}

/// The HTTP API applies the user's AMQP permissions as RabbitMQ's
/// management plugin does: vhosts without permissions are invisible (404),
/// changes run as the user (401 "Access refused."), publish/get refusals
/// carry the AMQP text, non-monitoring users see only their own connections.
#[tokio::test]
async fn the_http_api_applies_amqp_permissions_and_vhost_visibility() {
    let s = start().await;
    user_with(&s, "mgr", "management", ("^mine", "^mine", "^mine")).await;
    assert_eq!(put(&s, "/api/vhosts/other", json!({})).await, 201);
    assert_eq!(put(&s, "/api/queues/%2F/theirs", json!({"durable": false})).await, 201);
    let m = mgmt(&s);
    let who = Some(("mgr", "pw"));
    let names = |v: Value, key: &str| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|i| i[key].as_str().unwrap_or("").to_string()).collect())
            .unwrap_or_default()
    };

    // Visibility: only "/", where mgr has permissions.
    assert_eq!(names(http(m, "GET", "/api/vhosts", who, None).await.json(), "name"), vec!["/"]);
    assert_eq!(http(m, "GET", "/api/vhosts/other", who, None).await.status, 404);
    assert_eq!(http(m, "GET", "/api/queues/other", who, None).await.status, 404);
    assert_eq!(http(m, "GET", "/api/exchanges/other/amq.direct", who, None).await.status, 404);
    let all_vhosts: Vec<String> = names(http(m, "GET", "/api/exchanges", who, None).await.json(), "vhost");
    assert!(!all_vhosts.is_empty() && all_vhosts.iter().all(|v| v == "/"), "{all_vhosts:?}");
    assert_eq!(names(http(m, "GET", "/api/queues", who, None).await.json(), "name"), vec!["theirs"]);

    // Changes run with mgr's AMQP permissions.
    let refused = json!({"error": "not_authorised", "reason": "Access refused."});
    let r = http(m, "PUT", "/api/queues/%2F/not-mine", who, Some("{}")).await;
    assert_eq!((r.status, r.json()), (401, refused.clone()));
    assert_eq!(http(m, "PUT", "/api/queues/%2F/mine-q", who, Some(r#"{"durable":false}"#)).await.status, 201);
    let r = http(m, "DELETE", "/api/queues/%2F/theirs", who, None).await;
    assert_eq!((r.status, r.json()), (401, refused.clone()));
    assert!(s.broker().vhost("/").unwrap().queues.contains_key("theirs"));
    let r = http(m, "DELETE", "/api/queues/%2F/theirs/contents", who, None).await;
    assert_eq!(r.status, 401);
    let r = http(m, "PUT", "/api/exchanges/%2F/x-not-mine", who, Some(r#"{"type":"fanout"}"#)).await;
    assert_eq!((r.status, r.json()), (401, refused.clone()));
    // Binding: write on the queue is fine, read on amq.direct is not.
    let r =
        http(m, "POST", "/api/bindings/%2F/e/amq.direct/q/mine-q", who, Some(r#"{"routing_key":"k"}"#)).await;
    assert_eq!((r.status, r.json()), (401, refused));
    let r = http(
        m,
        "POST",
        "/api/exchanges/%2F/amq.default/publish",
        who,
        Some(r#"{"routing_key":"theirs","properties":{},"payload":"x","payload_encoding":"string"}"#),
    )
    .await;
    assert_eq!(
        (r.status, r.json()),
        (
            401,
            json!({"error": "not_authorised",
                   "reason": "ACCESS_REFUSED - write access to exchange 'amq.default' in vhost '/' refused for user 'mgr'"})
        )
    );
    let r = http(
        m,
        "POST",
        "/api/queues/%2F/theirs/get",
        who,
        Some(r#"{"count":1,"ackmode":"ack_requeue_true","encoding":"auto"}"#),
    )
    .await;
    assert_eq!(
        r.json()["reason"],
        "ACCESS_REFUSED - read access to queue 'theirs' in vhost '/' refused for user 'mgr'"
    );
    // An administrator also needs permissions in a vhost to change it (the
    // creator of a vhost is granted them, as in RabbitMQ: revoke them here).
    assert_eq!(http(m, "DELETE", "/api/permissions/other/guest", GUEST, None).await.status, 204);
    let r = http(m, "PUT", "/api/queues/other/q", GUEST, Some("{}")).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        put(&s, "/api/permissions/other/guest", json!({"configure": ".*", "write": ".*", "read": ".*"}))
            .await,
        201
    );
    assert_eq!(http(m, "PUT", "/api/queues/other/q", GUEST, Some("{}")).await.status, 201);

    // Connections: mgr sees its own, not guest's; monitoring data is refused.
    let _guest_conn = Raw::open(s.addr()).await;
    let _mgr_conn = open_as(&s, "mgr").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while names(http(m, "GET", "/api/connections", GUEST, None).await.json(), "user").len() < 2 {
        assert!(std::time::Instant::now() < deadline, "connections not listed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(names(http(m, "GET", "/api/connections", who, None).await.json(), "user"), vec!["mgr"]);
    let all = http(m, "GET", "/api/connections", GUEST, None).await.json();
    let guests =
        all.as_array().unwrap().iter().find(|c| c["user"] == "guest").expect("guest connection").clone();
    let path = format!(
        "/api/connections/{}",
        guests["name"].as_str().unwrap().replace(' ', "%20").replace('>', "%3E")
    );
    let r = http(m, "GET", &path, who, None).await;
    assert_eq!(
        (r.status, r.json()),
        (401, json!({"error": "not_authorised", "reason": "User not authorised to access object"}))
    );
    let r = http(m, "GET", "/api/nodes", who, None).await;
    assert_eq!((r.status, r.json()), (401, json!({"error": "not_authorised", "reason": "Not monitor user"})));
}
