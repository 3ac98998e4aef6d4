//! Management API (first slice): responses compared key by key (and JSON
//! type by type) with real RabbitMQ samples in ../shared/docs/mgmt-samples,
//! CRUD of queues and exchanges, errors (401, 404, 400), read-only monitoring
//! users, health checks.

use crate::common;

use common::*;
use serde_json::Value;

fn sample(name: &str) -> Value {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/docs/mgmt-samples").join(name);
    serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .expect("sample JSON")
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every key of `want` is in `got` with the same JSON type, recursively.
/// Maps keyed by data rather than by field (node names, arguments) are only
/// checked for being objects.
fn same_shape(path: &str, want: &Value, got: &Value, problems: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            if ["cluster_state", "arguments", "effective_policy_definition", "client_properties"]
                .iter()
                .any(|k| path.ends_with(k))
            {
                return;
            }
            for (k, wv) in w {
                match g.get(k) {
                    None => problems.push(format!("{path}.{k}: missing")),
                    Some(gv) => same_shape(&format!("{path}.{k}"), wv, gv, problems),
                }
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            if let (Some(wf), Some(gf)) = (w.first(), g.first()) {
                same_shape(&format!("{path}[0]"), wf, gf, problems);
            }
        }
        (w, g) if kind(w) != kind(g) && !matches!(w, Value::Null) => {
            problems.push(format!("{path}: {} in RabbitMQ, {} in Warren", kind(w), kind(g)))
        }
        _ => {}
    }
}

fn assert_shape(name: &str, want: &Value, got: &Value) {
    let mut problems = Vec::new();
    same_shape(name, want, got, &mut problems);
    assert!(problems.is_empty(), "{name} differs from RabbitMQ's sample:\n{}", problems.join("\n"));
}

async fn get(s: &TestServer, path: &str) -> Value {
    let r = http(mgmt(s), "GET", path, GUEST, None).await;
    assert_eq!(r.status, 200, "GET {path}: {}", String::from_utf8_lossy(&r.body));
    r.json()
}

#[tokio::test]
async fn shapes_match_rabbitmq_samples() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    let args = table(&[
        ("x-dead-letter-exchange", amq_protocol::types::AMQPValue::LongString("dlx".into())),
        ("x-message-ttl", amq_protocol::types::AMQPValue::LongInt(300)),
    ]);
    r.call(1, m::qdecl("shaped", false, false, false, true, args)).await;
    r.send_to(1, "shaped", b"x").await;

    assert_shape("overview", &sample("api-overview.json"), &get(&s, "/api/overview").await);
    assert_shape("whoami", &sample("api-whoami.json"), &get(&s, "/api/whoami").await);
    assert_shape("users", &sample("api-users.json"), &get(&s, "/api/users").await);
    assert_shape("vhosts", &sample("api-vhosts.json"), &get(&s, "/api/vhosts").await);
    assert_shape("exchanges", &sample("api-exchanges-predeclared.json"), &get(&s, "/api/exchanges").await);
    let queues = get(&s, "/api/queues").await;
    let item =
        queues.as_array().unwrap().iter().find(|q| q["name"] == "shaped").expect("queue listed").clone();
    assert_shape("queue item", &sample("api-queues-item-classic-dlx.json"), &item);
    assert_eq!(item["messages_ready"], 1);
    assert_eq!(item["arguments"]["x-message-ttl"], 300);
    assert_eq!(item["arguments"]["x-dead-letter-exchange"], "dlx");
    let detail = get(&s, "/api/queues/%2F/shaped").await;
    assert_shape("queue detail", &sample("api-queues-item-classic-dlx.json"), &detail);
    assert!(detail["consumer_details"].is_array());
    let default_x = get(&s, "/api/exchanges/%2F/amq.default").await;
    assert_eq!((default_x["name"].as_str(), default_x["type"].as_str()), (Some(""), Some("direct")));
    let whoami = get(&s, "/api/whoami").await;
    assert_eq!(whoami["name"], "guest");
    assert_eq!(whoami["tags"], serde_json::json!(["administrator"]));
}

#[tokio::test]
async fn errors_are_rabbitmq_json() {
    let s = start().await;
    let no_auth = http(mgmt(&s), "GET", "/api/overview", None, None).await;
    assert_eq!(no_auth.status, 401);
    assert_eq!(no_auth.header("www-authenticate"), Some("Basic realm=\"RabbitMQ Management\""));
    assert!(no_auth.body.is_empty());
    let wrong = http(mgmt(&s), "GET", "/api/whoami", Some(("guest", "nope")), None).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json(), serde_json::json!({"error": "not_authorized", "reason": "Login failed"}));
    let missing = http(mgmt(&s), "GET", "/api/queues/%2F/no-such-queue", GUEST, None).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json(), serde_json::json!({"error": "Object Not Found", "reason": "Not Found"}));
    let bad = http(mgmt(&s), "PUT", "/api/exchanges/%2F/x1", GUEST, Some("{not json")).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"], "bad_request");
}

#[tokio::test]
async fn declare_purge_delete_over_http() {
    let s = start().await;
    let m = mgmt(&s);
    let put = http(
        m,
        "PUT",
        "/api/queues/%2F/web-q",
        GUEST,
        Some(r#"{"durable":true,"arguments":{"x-max-length":5}}"#),
    )
    .await;
    assert_eq!(put.status, 201);
    let again = http(
        m,
        "PUT",
        "/api/queues/%2F/web-q",
        GUEST,
        Some(r#"{"durable":true,"arguments":{"x-max-length":5}}"#),
    )
    .await;
    assert_eq!(again.status, 204);
    let clash = http(m, "PUT", "/api/queues/%2F/web-q", GUEST, Some(r#"{"durable":false}"#)).await;
    assert_eq!(clash.status, 400, "inequivalent redeclare");
    assert!(clash.json()["reason"].as_str().unwrap().contains("inequivalent arg 'durable'"));
    let x =
        http(m, "PUT", "/api/exchanges/%2F/web-x", GUEST, Some(r#"{"type":"fanout","durable":true}"#)).await;
    assert_eq!(x.status, 201);
    // The broker sees them: bind and publish over AMQP.
    let mut r = Raw::open(s.addr()).await;
    r.call(1, common::m::qbind("web-q", "web-x", "", Default::default())).await;
    r.publish(1, "web-x", "", false, &[], b"via-http-declared").await;
    assert_eq!(r.counts(1, "web-q").await.0, 1);
    assert_eq!(get(&s, "/api/queues/%2F/web-q").await["messages"], 1);
    assert_eq!(http(m, "DELETE", "/api/queues/%2F/web-q/contents", GUEST, None).await.status, 204);
    assert_eq!(r.counts(1, "web-q").await.0, 0);
    assert_eq!(http(m, "DELETE", "/api/queues/%2F/web-q", GUEST, None).await.status, 204);
    assert_eq!(http(m, "DELETE", "/api/queues/%2F/web-q", GUEST, None).await.status, 404);
    assert_eq!(http(m, "DELETE", "/api/exchanges/%2F/web-x", GUEST, None).await.status, 204);
}

#[tokio::test]
async fn monitoring_users_cannot_change_anything() {
    let s = start().await;
    s.broker().users.insert(
        "watcher".into(),
        warren::broker::users::User::new("watcher", "pw", vec!["monitoring".into()]),
    );
    let m = mgmt(&s);
    let who = Some(("watcher", "pw"));
    assert_eq!(http(m, "GET", "/api/queues", who, None).await.status, 200);
    let put = http(m, "PUT", "/api/queues/%2F/nope", who, Some("{}")).await;
    assert_eq!(put.status, 403);
    assert_eq!(
        http(m, "PUT", "/api/exchanges/%2F/nope", who, Some(r#"{"type":"direct"}"#)).await.status,
        403
    );
    assert!(!s.broker().vhost("/").unwrap().queues.contains_key("nope"));
}

#[tokio::test]
async fn health_checks() {
    let s = start().await;
    let port = s.addr().port();
    for path in [
        "/api/health/checks/alarms".to_string(),
        "/api/health/checks/local-alarms".to_string(),
        "/api/health/checks/virtual-hosts".to_string(),
        "/api/health/checks/protocol-listener/amqp".to_string(),
    ] {
        assert_eq!(get(&s, &path).await["status"], "ok", "{path}");
    }
    // The bound port (the config says 0) is the one checked and listed.
    let ok = get(&s, &format!("/api/health/checks/port-listener/{port}")).await;
    assert_eq!(ok, serde_json::json!({"status": "ok", "port": port}));
    let o = get(&s, "/api/overview").await;
    assert_eq!(o["listeners"][0]["port"], port);
    let r = http(mgmt(&s), "GET", "/api/health/checks/port-listener/1", GUEST, None).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["status"], "failed");
}

#[tokio::test]
async fn overview_counts_confirms_released_by_the_persister() {
    use amq_protocol::protocol::{AMQPClass, basic};
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.call(1, common::m::qdecl("durable-q", false, true, false, false, Default::default())).await;
    r.call(1, common::m::confirm_select()).await;
    let p = props(amq_protocol::protocol::basic::AMQPProperties::default().with_delivery_mode(2));
    for _ in 0..3 {
        r.publish(1, "", "durable-q", false, &p, b"persistent").await;
    }
    let mut confirmed = 0;
    while confirmed < 3 {
        if let In::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(a))) = r.recv().await {
            confirmed = a.delivery_tag;
        }
    }
    let o = get(&s, "/api/overview").await;
    assert_eq!(o["message_stats"]["confirm"], 3);
    assert_eq!(o["message_stats"]["publish"], 3);
}

/// A real RabbitMQ 3.10.8 response captured for this project (tests/samples).
fn captured(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/samples").join(name);
    serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .expect("sample JSON")
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn connections_channels_and_consumers_match_rabbitmq_and_close_with_x_reason() {
    let s = start().await;
    let mut r = Raw::open(s.addr()).await;
    r.declare(1, "cq").await;
    r.call(1, common::m::qos(7, false)).await;
    let prio = table(&[("x-priority", amq_protocol::types::AMQPValue::LongInt(3))]);
    r.call(1, common::m::consume("cq", "ctag-x", false, false, prio)).await;
    r.open_channel(2).await;
    r.call(2, common::m::confirm_select()).await;
    // Channel summaries are refreshed after the batch that changed them.
    eventually_json(&s, "/api/channels", |v| v.as_array().is_some_and(|a| a.len() == 2)).await;

    let conns = get(&s, "/api/connections").await;
    let mut conns_sample = captured("api-connections-3.10.8.json");
    // Shown only when the client names its connection (checked below).
    conns_sample[0].as_object_mut().expect("object").remove("user_provided_name");
    assert_shape("connections", &conns_sample, &conns);
    let c = &conns[0];
    assert_eq!(c["channels"], 2);
    assert_eq!(c["user"], "guest");
    assert_eq!(c["protocol"], "AMQP 0-9-1");
    let name = c["name"].as_str().expect("name").to_string();
    assert!(name.contains(" -> 127.0.0.1:"), "{name}");
    let one = get(&s, &format!("/api/connections/{}", urlencode(&name))).await;
    assert_eq!(one["name"], name);

    let chans = get(&s, "/api/channels").await;
    assert_shape("channels", &captured("api-channels-3.10.8.json"), &chans);
    let ch1 = chans.as_array().unwrap().iter().find(|c| c["number"] == 1).expect("channel 1");
    assert_eq!((ch1["prefetch_count"].clone(), ch1["consumer_count"].clone()), (7.into(), 1.into()));
    let ch2 = chans.as_array().unwrap().iter().find(|c| c["number"] == 2).expect("channel 2");
    assert_eq!(ch2["confirm"], true);
    assert_eq!(ch1["name"], format!("{name} (1)"));
    let detail = get(&s, &format!("/api/channels/{}", urlencode(&format!("{name} (1)")))).await;
    assert_shape("channel detail", &captured("api-channel-detail-3.10.8.json"), &detail);
    assert_eq!(detail["consumer_details"][0]["consumer_tag"], "ctag-x");

    let consumers = get(&s, "/api/consumers").await;
    assert_shape("consumers", &captured("api-consumers-3.10.8.json"), &consumers);
    assert_eq!(consumers[0]["arguments"], serde_json::json!({"x-priority": 3}));
    assert_eq!(consumers[0]["prefetch_count"], 7);
    assert_eq!(consumers[0]["queue"], serde_json::json!({"name": "cq", "vhost": "/"}));

    // DELETE closes the connection with 320 and the X-Reason text.
    let del = http_with(
        mgmt(&s),
        "DELETE",
        &format!("/api/connections/{}", urlencode(&name)),
        GUEST,
        None,
        &[("X-Reason", "bye now")],
    )
    .await;
    assert_eq!(del.status, 204);
    let (code, text, _, _) = r.expect_connection_close().await;
    assert_eq!((code, text.as_str()), (320, "CONNECTION_FORCED - bye now"));
    // Without the header: RabbitMQ's default reason.
    let mut r2 = Raw::open(s.addr()).await;
    let conns = eventually_json(&s, "/api/connections", |v| v.as_array().is_some_and(|a| a.len() == 1)).await;
    let name2 = conns[0]["name"].as_str().unwrap().to_string();
    let del = http(mgmt(&s), "DELETE", &format!("/api/connections/{}", urlencode(&name2)), GUEST, None).await;
    assert_eq!(del.status, 204);
    let (code, text, _, _) = r2.expect_connection_close().await;
    assert_eq!((code, text.as_str()), (320, "CONNECTION_FORCED - Closed via management plugin"));
    assert_eq!(http(mgmt(&s), "DELETE", "/api/connections/nope", GUEST, None).await.status, 404);
    // A client-chosen connection name: `user_provided_name`, as RabbitMQ.
    let named = lapin::Connection::connect(
        &s.uri(),
        lapin::ConnectionProperties::default().with_connection_name("my-conn".into()),
    )
    .await
    .expect("lapin connects");
    let conns = eventually_json(&s, "/api/connections", |v| v.as_array().is_some_and(|a| a.len() == 1)).await;
    assert_eq!(conns[0]["user_provided_name"], "my-conn");
    assert_eq!(conns[0]["client_properties"]["connection_name"], "my-conn");
    drop(named);
}

/// Polls a GET until `ok` holds (summaries refresh asynchronously).
async fn eventually_json(s: &TestServer, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let v = get(s, path).await;
        if ok(&v) {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{path} never satisfied the condition: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// This host's address on its default route, if it has one (no packet is
/// sent: connecting a UDP socket only picks the source address).
fn non_loopback_ipv4() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// As RabbitMQ's management plugin: a loopback-only user (guest) gets 401
/// "User can only log in via localhost" from any other address, after its
/// password was checked; from loopback, and for other users, nothing changes.
#[tokio::test]
async fn guest_is_refused_over_http_from_a_non_loopback_address() {
    let Some(ip) = non_loopback_ipv4() else {
        eprintln!("this host has no non-loopback IPv4 address; nothing to check");
        return;
    };
    let s = start_with(|c| c.management.bind = "0.0.0.0".into()).await;
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], mgmt(&s).port()));
    let remote = std::net::SocketAddr::new(ip, mgmt(&s).port());

    let r = http(local, "GET", "/api/whoami", Some(("guest", "guest")), None).await;
    assert_eq!(r.status, 200, "guest from loopback");

    let r = http(remote, "GET", "/api/whoami", Some(("guest", "guest")), None).await;
    assert_eq!(r.status, 401, "guest from {ip}");
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "not_authorized", "reason": "User can only log in via localhost"})
    );
    // A wrong password is a plain login failure, wherever it comes from.
    let r = http(remote, "GET", "/api/whoami", Some(("guest", "nope")), None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["reason"], "Login failed");

    let body = r#"{"password":"s3cret","tags":"administrator"}"#;
    let r = http(local, "PUT", "/api/users/ops", Some(("guest", "guest")), Some(body)).await;
    assert!(r.status == 201 || r.status == 204, "create user: {}", r.status);
    let r = http(remote, "GET", "/api/whoami", Some(("ops", "s3cret")), None).await;
    assert_eq!(r.status, 200, "another user from {ip}");
    assert_eq!(r.json()["name"], "ops");
}
